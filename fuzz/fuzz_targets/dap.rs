//! The DAP side as the daemon reaches it: bytes → `codec::read_frame` → `Facade::step`, with
//! probe installs answered (alternately refused), debugger jobs answered, and a hit for every
//! installed probe after each request (values of every kind, a stack), so breakpoint-mode stops,
//! `output` events and the request queue all run. Every message the facade sends must encode.
#![no_main]

use std::collections::{BTreeMap, VecDeque};

use detrix_agent::dap::codec::{encode_frame, read_frame};
use detrix_agent::dap::facade::{Evaluated, Options};
use detrix_agent::dap::{Effect, Facade, Input, ProbeHit, ProbeId};
use detrix_agent::debuginfo::Frame;
use detrix_agent::decode::{DebuggerText, Node};
use detrix_agent::engine::{Hit, LogpointId, LogpointSpec};
use libfuzzer_sys::fuzz_target;

fn value_for(i: usize, expr: &str) -> Node {
    match (i + expr.len()) % 8 {
        0 => Node::Int(-(i as i64) - 1),
        1 => Node::UInt(u64::MAX - i as u64),
        2 => Node::Float {
            value: if i % 2 == 0 { f64::NAN } else { 1.5e300 },
            size: 8,
        },
        3 => Node::Bool(i % 2 == 0),
        4 => Node::CString {
            ptr: 0x5555_5555_6012,
            text: format!("\"{expr}\"\n\u{7f}é").into_bytes(),
            cut: i % 2 == 1,
        },
        5 => Node::Pointer(0x7fff_0000 + i as u64),
        6 => Node::Unavailable {
            message: format!("`{expr}` is optimized out here"),
            debugger: DebuggerText::Error(format!("couldn't get the value of variable {expr}")),
        },
        _ => Node::Error(format!("cannot read `{expr}`")),
    }
}

fn hit(probe: ProbeId, spec: &LogpointSpec) -> ProbeHit {
    let values: Vec<(String, Node)> = spec
        .exprs
        .iter()
        .enumerate()
        .map(|(i, e)| (e.clone(), value_for(i, e)))
        .collect();
    ProbeHit {
        probe,
        hit: Hit {
            logpoint: LogpointId(probe.n),
            pid: 4242,
            tid: 4243,
            goid: 7,
            ktime_ns: 1_000 + probe.n,
            values,
            stack: if spec.capture_stack {
                vec![Frame {
                    pc: detrix_agent::addr::RuntimeAddr(0x401000),
                    function: "process".into(),
                    file: Some("/src/orders.c".into()),
                    line: Some(spec.line),
                    module: None,
                }]
            } else {
                Vec::new()
            },
            locals: if spec.capture_locals {
                vec![("round".into(), Node::Int(3))]
            } else {
                Vec::new()
            },
        },
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the daemon's language and SafeMode; the rest is the byte stream.
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let mut opts = Options::for_language(if mode & 1 == 0 { "go" } else { "rust" });
    opts.safe_mode = mode & 2 != 0;
    let mut facade = Facade::new(1, opts);
    let mut installed: BTreeMap<ProbeId, LogpointSpec> = BTreeMap::new();
    let mut reader = tokio::io::BufReader::new(stream);
    let mut refuse = mode & 4 != 0;
    let mut frames = 0;
    while let Ok(Some(msg)) = detrix_fuzz::block_on(read_frame(&mut reader)) {
        frames += 1;
        if frames > 64 {
            break;
        }
        let mut inputs: VecDeque<Effect> = facade.step(Input::Request(&msg)).into();
        let mut rounds = 0;
        // A call logpoint asks for its next round as each one finishes: answer a few per
        // request, as a debugger taking its time would.
        let mut answered = 0;
        loop {
            while let Some(fx) = inputs.pop_front() {
                match fx {
                    Effect::Send(m) => {
                        let frame = encode_frame(&m);
                        assert!(frame.starts_with(b"Content-Length: "));
                    }
                    Effect::Install { probe, spec, .. } => {
                        refuse = !refuse;
                        let result = if refuse {
                            Err("no such line".to_owned())
                        } else {
                            installed.insert(probe, spec);
                            Ok(())
                        };
                        inputs.extend(facade.step(Input::Installed { probe, result }));
                    }
                    Effect::Remove(probe) => {
                        assert!(
                            installed.remove(&probe).is_some(),
                            "facade removed probe {probe:?} that was never installed"
                        );
                    }
                    Effect::Evaluate(_) if answered >= 4 => {}
                    Effect::Evaluate(job) => {
                        answered += 1;
                        let outcome = if job.token % 3 == 0 {
                            Err("the debugger could not attach".to_owned())
                        } else {
                            Ok(job
                                .exprs
                                .iter()
                                .enumerate()
                                .map(|(i, e)| -> Evaluated {
                                    if i % 2 == 0 {
                                        Ok((format!("{e}=1"), Some("int".into())))
                                    } else {
                                        Err(format!("no `{e}`"))
                                    }
                                })
                                .collect())
                        };
                        inputs.extend(facade.step(Input::Evaluated {
                            token: job.token,
                            outcome,
                        }));
                    }
                }
            }
            // One hit per installed probe, twice at most per request.
            rounds += 1;
            if rounds > 2 || installed.is_empty() {
                break;
            }
            let hits: Vec<ProbeHit> = installed.iter().map(|(p, s)| hit(*p, s)).collect();
            inputs.extend(facade.step(Input::Hits(&hits)));
        }
    }
    if mode & 8 != 0 {
        let _ = facade.step(Input::TargetExited);
    }
    for fx in facade.step(Input::Close) {
        if let Effect::Remove(p) = fx {
            assert!(
                installed.remove(&p).is_some(),
                "close removed unknown probe {p:?}"
            );
        }
    }
    assert!(
        installed.is_empty(),
        "probes left installed after Close: {:?}",
        installed.keys().collect::<Vec<_>>()
    );
    assert_eq!(facade.installed(), 0);
});
