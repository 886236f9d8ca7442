//! `serve`'s `GET /metrics` per target and per probe (issue #13 point 8), end to end with the
//! daemon emulator: a logpoint set through the daemon's DAP session counts in the exposition
//! exactly as the engine counted — every hit accounted for by one outcome, every emitted event
//! one `output` the daemon received — and its target's totals keep it after it is removed.
//!
//! The program is stopped (SIGSTOP) while the counters are compared, so nothing moves between
//! the reads.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::serve::Serve;
use common::{set_bps, RestStub};
use detrix_e2e::{build_c_fixture, fixtures_out_dir, marker_line, require_root, Build, Fixture};
use serde_json::{json, Value};

/// One sample line: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the samples of a text exposition (labels unescaped), checking that every sample's
/// family was declared by `# TYPE` before it.
fn parse(text: &str) -> Vec<Sample> {
    let mut typed = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().expect("a family name").to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').expect("a sample has a value");
        let (name, labels) = match head.split_once('{') {
            None => (head.to_owned(), BTreeMap::new()),
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut m = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "label {key} quoted in {line}");
                    let mut v = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some('n') => v.push('\n'),
                                Some(o) => v.push(o),
                                None => panic!("dangling escape in {line}"),
                            },
                            '"' => break,
                            o => v.push(o),
                        }
                    }
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                    m.insert(key, v);
                }
                (n.to_owned(), m)
            }
        };
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .filter(|f| typed.contains(*f))
            .unwrap_or(&name);
        assert!(typed.contains(family), "{name} has no # TYPE before it");
        out.push((name, labels, value.parse().expect("a numeric value")));
    }
    out
}

/// The value of `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a child this test started.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

/// The ids the `output` events carry (`DETRICS:m=<id>`), in order.
fn ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| {
            let out = e["body"]["output"].as_str()?;
            let (_, v) = out.split_once("DETRICS:m=")?;
            v.trim().parse().ok()
        })
        .collect()
}

#[test]
fn metrics_count_each_probe_as_the_engine_did() {
    require_root();
    let src = build_c_fixture("orders", Build::Debug);
    let exe = fixtures_out_dir().join(format!("serve-metrics-{}", std::process::id()));
    std::fs::copy(&src, &exe).unwrap();
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let serve = Serve::start(
        &[
            "--select",
            &format!("exe={}", exe.display()),
            "--daemon-url",
            &stub.url,
        ],
        &[],
    );
    let f = Fixture::start(&exe, &["-1", "20"]);
    let pid = f.pid();
    let list = serve.wait_targets("the target sleeping", |t| {
        t.iter()
            .any(|x| x["pid"] == json!(pid) && x["state"] == "sleeping")
    });
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let (s, w) = serve.post(&format!("/detrix/targets/{id}/wake"), None);
    assert_eq!(s, 200, "{w}");
    let (_, mut dap) = stub.take_session();
    let c_src = detrix_e2e::c_fixture_source("orders");
    let line = marker_line(&c_src, "process");
    let path = c_src.display().to_string();
    let r = dap.request(&set_bps(
        1,
        &path,
        json!([{"line": line, "logMessage": "DETRICS:m={o->id}"}]),
    ));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], json!(true), "{r}");
    let is_output = |e: &Value| e["event"] == "output";
    let mut events = dap.events(5, Duration::from_secs(10), is_output);
    assert!(events.len() >= 5, "five hits reach the daemon: {events:?}");

    // Stop the program; once the reader has flushed, nothing moves.
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300));
    events.extend(dap.events(usize::MAX, Duration::from_millis(300), is_output));
    let (s, text) = common::http("GET", &format!("{}/metrics", serve.control), None);
    assert_eq!(s, 200);
    let m = parse(&text);
    let target = [("target", id.as_str()), ("pid", &pid.to_string())];
    let probe_labels = [
        ("target", id.as_str()),
        ("file", path.as_str()),
        ("line", &line.to_string()),
    ];
    let probe = |field: &str| {
        value(&m, &format!("detrix_probe_{field}_total"), &probe_labels).unwrap_or_else(|| {
            panic!("no detrix_probe_{field}_total for {probe_labels:?} in\n{text}")
        }) as u64
    };
    let hits = probe("hits");
    let outcomes = [
        "emitted",
        "dropped_ring_full",
        "rate_limited",
        "condition_false",
        "no_plan",
        "other_process",
    ]
    .map(probe);
    println!(
        "probe: hits {hits}, outcomes {outcomes:?}, read_faults {}",
        probe("read_faults")
    );
    assert_eq!(
        hits,
        outcomes.iter().sum::<u64>(),
        "every hit has one outcome:\n{text}"
    );
    let got = ids(&events);
    assert_eq!(
        probe("emitted"),
        got.len() as u64,
        "every emitted event reached the daemon once: {got:?}"
    );
    assert_eq!(
        got,
        (got[0]..got[0] + got.len() as i64).collect::<Vec<_>>(),
        "one event per call, in order"
    );
    assert_eq!(
        hits,
        got.len() as u64,
        "nothing dropped, limited or filtered at 50 calls/s"
    );
    assert_eq!(probe("read_faults"), 0);
    assert!(
        probe("bpf_nanoseconds") > 0,
        "time in the program is counted"
    );
    // The target's totals are its one probe's.
    for field in ["hits", "emitted", "bpf_nanoseconds"] {
        assert_eq!(
            value(&m, &format!("detrix_target_{field}_total"), &target).map(|v| v as u64),
            Some(probe(field)),
            "{field}"
        );
    }
    assert_eq!(
        value(&m, "detrix_serve_targets", &[("state", "awake")]),
        Some(1.0)
    );
    assert_eq!(value(&m, "detrix_probes_attached", &[]), Some(1.0));
    assert_eq!(value(&m, "detrix_ring_hits_unrouted_total", &[]), Some(0.0));
    assert!(value(&m, "detrix_ring_hits_read_total", &[]).unwrap() >= hits as f64);

    // Removed: the probe's series go, the target's totals keep its counts.
    let r = dap.request(&set_bps(2, &path, json!([])));
    assert_eq!(r["success"], json!(true), "{r}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let (_, text) = common::http("GET", &format!("{}/metrics", serve.control), None);
        let m = parse(&text);
        if value(&m, "detrix_probes_attached", &[]) == Some(0.0) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the probe is not removed:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(pid, libc::SIGCONT);
    assert!(
        !after
            .iter()
            .any(|(n, _, _)| n.starts_with("detrix_probe_hits")),
        "a removed probe has no series"
    );
    assert_eq!(
        value(&after, "detrix_target_hits_total", &target).map(|v| v as u64),
        Some(hits),
        "the target's total keeps the removed probe's hits"
    );
    drop(f);
    let _ = std::fs::remove_file(&exe);
}
