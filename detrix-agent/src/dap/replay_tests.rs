//! Replays what the real daemon sent to Delve (`go`) and to the recording stub (`rust` + pid) —
//! `tests/golden/shared/*.jsonl`, recorded from upstream commit 054f25ff — into a [`Facade`] with
//! a recording probe set, and checks what the facade answers and installs. The adapter side of
//! those files is Delve's (authoritative for the output form) or a stub's (not authoritative),
//! so answers are compared with Delve's only.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use super::facade::{ProbeHit, ProbeId};
use super::fake::{Driven as Facade, FakeProbes};
use super::template::{output_text, Prefix};
use crate::decode::Node;
use crate::engine::{Hit, LogpointId, LogpointSpec};
use crate::plan::Value as V;

/// Records every add and remove; refuses `refuse_line`.
#[derive(Default)]
struct Recorder {
    live: HashMap<ProbeId, (String, u32, Vec<String>)>,
    adds: usize,
    removes: usize,
    refuse_line: Option<u32>,
}

impl FakeProbes for Recorder {
    fn add(&mut self, id: ProbeId, file: &str, spec: &LogpointSpec) -> Result<(), String> {
        if Some(spec.line) == self.refuse_line {
            return Err(format!(
                "{file}:{} has no code; nearest lines with code: 17, 18",
                spec.line
            ));
        }
        self.adds += 1;
        self.live
            .insert(id, (file.to_owned(), spec.line, spec.exprs.clone()));
        Ok(())
    }
    fn remove(&mut self, id: ProbeId) {
        assert!(
            self.live.remove(&id).is_some(),
            "removed logpoint {id:?} twice or never installed it"
        );
        self.removes += 1;
    }
}

fn golden(name: &str) -> Vec<Value> {
    let path = format!(
        "{}/../tests/golden/shared/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("golden transcript {path}: {e}"));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: bad line {l}: {e}")))
        .collect()
}

/// The daemon's messages per DAP session (split at the recorder's `daemon connected` notes).
fn daemon_sessions(lines: &[Value]) -> Vec<Vec<Value>> {
    let mut sessions: Vec<Vec<Value>> = Vec::new();
    for l in lines {
        match l["dir"].as_str() {
            Some("note") if l["msg"]["note"] == "daemon connected" => sessions.push(Vec::new()),
            Some("daemon->adapter") => sessions
                .last_mut()
                .expect("a message before any connection")
                .push(l["msg"].clone()),
            _ => {}
        }
    }
    sessions
}

/// The probes a `setBreakpoints` request asks for: (line, exprs) of its logpoint entries, and
/// (line, no exprs) for breakpoint-mode entries (stack and locals only). Expressions with a
/// call are not captured (on a Rust target nobody can evaluate them); a logpoint left with none
/// has no probe.
fn wanted(req: &Value) -> BTreeSet<(u32, Vec<String>)> {
    req["arguments"]["breakpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| {
            let line = u32::try_from(b["line"].as_u64().unwrap()).unwrap();
            match b["logMessage"].as_str() {
                None => Some((line, Vec::new())),
                Some(m) => {
                    let exprs: Vec<String> = super::template::parse(m)
                        .unwrap()
                        .exprs
                        .into_iter()
                        .filter(|e| !super::facade::has_call(e))
                        .collect();
                    (!exprs.is_empty()).then_some((line, exprs))
                }
            }
        })
        .collect()
}

fn replay(file: &str, language: &str) -> usize {
    let lines = golden(file);
    let mut requests = 0;
    for session in daemon_sessions(&lines) {
        // The recorded rust session's target is a Rust program (orders.rs).
        let mut opts = super::facade::Options::for_language(language);
        if language == "rust" {
            opts.target = crate::debuginfo::Language::Rust;
        }
        let mut f = Facade::with_options(Recorder::default(), opts);
        let mut last_seq = 0;
        for req in &session {
            let out = f.handle(req);
            requests += 1;
            for m in &out {
                let seq = m["seq"].as_i64().expect("integer seq on every message");
                assert!(seq > last_seq, "seq must increase: {seq} after {last_seq}");
                last_seq = seq;
            }
            let responses: Vec<&Value> = out.iter().filter(|m| m["type"] == "response").collect();
            assert_eq!(
                responses.len(),
                1,
                "exactly one response to {req}, got {out:?}"
            );
            let r = responses[0];
            assert_eq!(r["request_seq"], req["seq"]);
            assert_eq!(r["command"], req["command"]);
            let cmd = req["command"].as_str().unwrap();
            match cmd {
                "initialize" | "attach" | "configurationDone" | "continue" | "setBreakpoints" => {
                    assert_eq!(r["success"], true, "{cmd} must succeed: {r}");
                }
                // No hit arrives in this replay, so nothing is stopped: the stop requests fail at
                // once with a sentence, never time out.
                "stackTrace" | "scopes" | "variables" | "evaluate" => {
                    assert_eq!(r["success"], false, "{r}");
                    assert!(
                        r["message"]
                            .as_str()
                            .unwrap()
                            .starts_with("no thread is stopped"),
                        "{r}"
                    );
                }
                other => {
                    panic!("the daemon sent `{other}`, which the contract says it never sends")
                }
            }
            if cmd == "initialize" {
                assert_eq!(out.len(), 2);
                assert_eq!(out[1]["event"], "initialized");
            }
            if cmd == "setBreakpoints" {
                let asked = req["arguments"]["breakpoints"].as_array().unwrap();
                let got = r["body"]["breakpoints"].as_array().unwrap();
                assert_eq!(
                    asked.len(),
                    got.len(),
                    "one answer per requested breakpoint"
                );
                for (a, g) in asked.iter().zip(got) {
                    assert_eq!(a["line"], g["line"], "answers in request order");
                    assert_eq!(
                        g["verified"], true,
                        "logpoints and breakpoint-mode entries alike: {g}"
                    );
                    assert_eq!(g["source"]["path"], req["arguments"]["source"]["path"]);
                }
                let live: BTreeSet<(u32, Vec<String>)> = f
                    .probes()
                    .live
                    .values()
                    .map(|(_, l, e)| (*l, e.clone()))
                    .collect();
                assert_eq!(
                    live,
                    wanted(req),
                    "after {req} the installed probes are exactly the file's logpoints"
                );
            }
        }
        let before = f.probes().live.len();
        f.close();
        assert!(
            f.probes().live.is_empty(),
            "closing the session removes all {before} probes"
        );
    }
    requests
}

#[test]
fn replays_the_daemons_go_session_with_delve() {
    assert!(replay("go-delve.jsonl", "go") > 300);
}

#[test]
fn replays_the_daemons_rust_pid_session() {
    assert!(replay("rust-stub.jsonl", "rust") > 100);
}

#[test]
fn replays_the_startup_retry_and_the_eof_and_badframe_runs() {
    for f in [
        "go-delve-startup-retry.jsonl",
        "rust-stub-eof.jsonl",
        "rust-stub-badframe.jsonl",
    ] {
        assert!(
            replay(f, if f.starts_with("go") { "go" } else { "rust" }) >= 4,
            "{f}"
        );
    }
}

#[test]
fn setbreakpoints_answers_have_delves_shape() {
    // Delve's answer to the first setBreakpoints of go-delve.jsonl, paths as recorded.
    let lines = golden("go-delve.jsonl");
    let req = lines
        .iter()
        .find(|l| l["dir"] == "daemon->adapter" && l["msg"]["command"] == "setBreakpoints")
        .unwrap()["msg"]
        .clone();
    let delve = lines
        .iter()
        .find(|l| l["dir"] == "adapter->daemon" && l["msg"]["request_seq"] == req["seq"])
        .unwrap()["msg"]
        .clone();
    let mut f = Facade::new(Recorder::default(), "go");
    f.handle(&json!({"type":"request","seq":1,"command":"initialize","arguments":{}}));
    let ours = f.handle(&req).remove(0);
    assert_eq!(
        ours["body"], delve["body"],
        "same body as Delve for the same request"
    );
}

#[test]
fn unchanged_entries_keep_their_probe_and_failures_carry_the_resolvers_message() {
    let mut f = Facade::new(
        Recorder {
            refuse_line: Some(20),
            ..Recorder::default()
        },
        "rust",
    );
    let src = json!({"path": "/src/orders.c", "name": "/src/orders.c"});
    let req = |seq: i64, bps: Value| json!({"type":"request","seq":seq,"command":"setBreakpoints","arguments":{"source":src,"breakpoints":bps,"sourceModified":false}});
    let r = f.handle(&req(
        1,
        json!([{"line":33,"logMessage":"DETRICS:a={(round)}"}]),
    ));
    assert_eq!(r[0]["body"]["breakpoints"][0]["verified"], true);
    let r = f.handle(&req(2, json!([{"line":20,"logMessage":"DETRICS:b={x}"},{"line":33,"logMessage":"DETRICS:a={(round)}"},{"line":34}])));
    assert_eq!(
        r[0]["body"]["breakpoints"],
        json!([
            {"verified":false,"line":20,"message":"/src/orders.c:20 has no code; nearest lines with code: 17, 18"},
            {"id":1,"verified":true,"line":33,"source":{"name":"orders.c","path":"/src/orders.c"}},
            {"id":2,"verified":true,"line":34,"source":{"name":"orders.c","path":"/src/orders.c"}},
        ])
    );
    assert_eq!(
        (f.probes().adds, f.probes().removes),
        (2, 0),
        "the unchanged line-33 probe stays attached"
    );
    // A changed template on the same line replaces its probe (and the dropped line-34
    // breakpoint goes); an empty list removes them all.
    f.handle(&req(
        3,
        json!([{"line":33,"logMessage":"DETRICS:a={(round)}\u{1f}{(cost)}"}]),
    ));
    assert_eq!((f.probes().adds, f.probes().removes), (3, 2));
    let r = f.handle(&req(4, json!([])));
    assert_eq!(r[0]["body"], json!({"breakpoints": []}));
    assert!(f.probes().live.is_empty());
    // A malformed template is refused with the parser's sentence, not installed.
    let r = f.handle(&req(5, json!([{"line":33,"logMessage":"hello {x}"}])));
    assert_eq!(r[0]["body"]["breakpoints"][0]["message"], "logMessage `hello {x}` does not start with `DETRICS:`; only Detrix metric templates are supported");
}

#[test]
fn launch_and_unknown_requests_fail_at_once() {
    let mut f = Facade::new(Recorder::default(), "rust");
    let r = f.handle(
        &json!({"type":"request","seq":9,"command":"launch","arguments":{"program":"/bin/x"}}),
    );
    assert_eq!(
        (r[0]["success"].clone(), r[0]["request_seq"].clone()),
        (json!(false), json!(9))
    );
    let r = f.handle(&json!({"type":"request","seq":10,"command":"threads"}));
    assert_eq!(r[0]["message"], "unsupported");
    assert!(f
        .handle(&json!({"type":"event","seq":11,"event":"x"}))
        .is_empty());
}

#[test]
fn hits_become_the_exact_output_delve_sent() {
    // Every distinct DETRICS output Delve sent, re-rendered from its own values.
    let lines = golden("go-delve.jsonl");
    let mut checked = 0;
    for l in &lines {
        let Some(text) = l["msg"]["body"]["output"]
            .as_str()
            .filter(|t| t.contains("DETRICS:"))
        else {
            continue;
        };
        let rest = text.strip_prefix("> [Go ").unwrap();
        let (goid, rest) = rest.split_once("]: DETRICS:").unwrap();
        let (name, vals) = rest.trim_end().split_once('=').unwrap();
        let values: Vec<V> = vals
            .split('\u{1f}')
            .map(|v| match serde_json::from_str::<Value>(v).unwrap() {
                Value::String(s) => V::Str {
                    text: s,
                    truncated: false,
                },
                Value::Number(n) if n.is_i64() => V::Int(n.as_i64().unwrap()),
                Value::Number(n) => V::Float(n.as_f64().unwrap()),
                other => panic!("unexpected value {other}"),
            })
            .collect();
        assert_eq!(
            output_text(Prefix::Go, goid.parse().unwrap(), name, &values),
            text
        );
        checked += 1;
    }
    assert!(checked > 50, "only {checked} outputs checked");

    // And through the facade: a hit on an installed logpoint, with the goroutine id.
    let mut f = Facade::new(Recorder::default(), "go");
    let req = json!({"type":"request","seq":1,"command":"setBreakpoints","arguments":{"source":{"path":"/s/orders.go"},"breakpoints":[{"line":18,"logMessage":"DETRICS:order_details={name}\u{1f}{price}\u{1f}{o.Qty}"}]}});
    f.handle(&req);
    // The probe the facade named for that logpoint.
    let probe = *f.probes().live.keys().next().unwrap();
    let hit = Hit {
        logpoint: LogpointId(1),
        pid: 7,
        tid: 8,
        goid: 1,
        ktime_ns: 0,
        values: vec![
            (
                "name".into(),
                Node::Text {
                    type_name: "string".into(),
                    go: true,
                    len: 5,
                    bytes: b"carol".to_vec(),
                    loaded: true,
                },
            ),
            (
                "price".into(),
                Node::Float {
                    value: 21.25,
                    size: 8,
                },
            ),
            ("o.Qty".into(), Node::Int(3)),
        ],
        stack: Vec::new(),
        locals: Vec::new(),
    };
    let stray = ProbeHit {
        probe: ProbeId { n: 99, ..probe },
        hit: hit.clone(),
    };
    let out = f.on_hits(&[ProbeHit { probe, hit }, stray]);
    assert_eq!(
        out.len(),
        1,
        "hits of logpoints this session does not own are dropped"
    );
    assert_eq!(f.stray_hits(), 1, "and counted, for `hits_after_remove`");
    assert_eq!(
        out[0]["body"],
        json!({"category":"console","output":"> [Go 1]: DETRICS:order_details=\"carol\"\u{1f}21.25\u{1f}3\n"})
    );
    let end = f.target_exited();
    assert_eq!(
        (end[0]["event"].clone(), end[1]["event"].clone()),
        (json!("exited"), json!("terminated"))
    );
}
