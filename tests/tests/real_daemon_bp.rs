//! Breakpoint mode end to end with the real, unchanged Detrix daemon (`DETRIX_BIN`, issue #7):
//! the daemon runs on loopback with a scratch config (contract.md §15), the Go call-chain
//! fixture (`tests/fixtures/bp/chain.go`, main → a → b → c) runs, `detrix-agent attach` wakes
//! and registers, and upstream's wake scenario is added through the daemon's REST API
//! (contract.md §14; transcripts/README.md "How it was recorded"): a one-expression logpoint, a
//! three-expression logpoint, a function-call metric (`len(name)`, which a `go` connection turns
//! into a breakpoint plus `evaluate "call len(name)"`) and a `captureStackTrace` metric. Every
//! value the daemon stored must equal what the program printed in that round, and the stored
//! stack traces must be the fixture's call chain with its exact lines. Then sleep: the
//! connection is no longer connected, no int3 is left in the target, and it keeps running.
//!
//! Without `DETRIX_BIN` it says plainly that it did not run (`NOT RUN: …`, as real_daemon.rs).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{daemon_bin, patched_code, AttachedAgent, Daemon};
use detrix_e2e::{
    child_processes, fixtures_out_dir, line_of, require_root, round_printed, workspace_root,
    Fixture,
};
use serde_json::{json, Value};

fn chain_src() -> PathBuf {
    workspace_root()
        .join("tests/fixtures/bp/chain.go")
        .canonicalize()
        .expect("the Go bp fixture source exists")
}

fn build_chain_go() -> PathBuf {
    let out = fixtures_out_dir();
    std::fs::create_dir_all(&out).expect("create the fixtures directory");
    let exe = out.join("bp_chain_go_real");
    let src = chain_src();
    let st = Command::new("go")
        .args(["build", "-buildvcs=false", "-gcflags=all=-N -l", "-o"])
        .arg(&exe)
        .arg(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", out.join("gocache"))
        .current_dir(src.parent().expect("a source file has a directory"))
        .status()
        .expect("run go build");
    assert!(st.success(), "go build {}: {st}", src.display());
    exe
}

/// Line `n` (1-based) of `path`, trimmed.
fn text_at(path: &Path, n: u64) -> String {
    std::fs::read_to_string(path)
        .expect("read the fixture source")
        .lines()
        .nth(usize::try_from(n - 1).expect("a line number fits usize"))
        .expect("the source has that line")
        .trim()
        .to_owned()
}

/// A stored value, parsed as JSON when it is JSON.
fn value(ev: &Value, i: usize) -> Value {
    let raw = ev["values"][i]["valueJson"]
        .as_str()
        .unwrap_or_else(|| panic!("no values[{i}].valueJson in {ev}"));
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

fn int(ev: &Value, i: usize) -> i64 {
    value(ev, i)
        .as_i64()
        .unwrap_or_else(|| panic!("values[{i}] is not an integer: {ev}"))
}

fn rounds_printed(fixture: &Fixture) -> usize {
    fixture
        .stdout()
        .snapshot()
        .iter()
        .filter(|l| l.starts_with("c z="))
        .count()
}

#[test]
fn real_daemon_breakpoint_mode_stores_what_the_go_program_printed() {
    let Some(bin) = daemon_bin("real_daemon_breakpoint_mode_stores_what_the_go_program_printed")
    else {
        return;
    };
    require_root();
    let src = chain_src();
    let exe = build_chain_go();
    let d = Daemon::start(&bin, "bp", src.parent().unwrap());
    let mut fixture = Fixture::start(&exe, &["50"]);
    let pid = fixture.pid();
    let ws = src.parent().unwrap().to_string_lossy().into_owned();
    let record = d.dir.join("bp-go.jsonl").to_string_lossy().into_owned();
    let mut agent = AttachedAgent::start(
        pid,
        &[
            "--daemon-url",
            &d.url,
            "--name",
            "real-bp-go",
            "--workspace-root",
            &ws,
            "--dap-record",
            &record,
        ],
        &[],
    );
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!(
        (s, wake["status"].clone()),
        (200, json!("awake")),
        "{wake}\nagent: {}",
        agent.stderr.text()
    );
    let id = wake["connection_id"].as_str().unwrap().to_string();
    let (_, row) = d.get(&format!("/api/v1/connections/{id}"));
    assert_eq!(
        (row["status"].clone(), row["language"].clone()),
        (json!(3), json!("go")),
        "{row}"
    );

    // Lines of the chain: c's first statement, its PROBE line and its return; the call sites.
    let probe_c = line_of(&src, "PROBE:c");
    let (assign_w, return_w) = (probe_c - 1, probe_c + 1);
    assert_eq!(
        (
            text_at(&src, assign_w).as_str(),
            text_at(&src, return_w).as_str()
        ),
        ("w := z * 3", "return w"),
        "chain.go changed shape"
    );
    let (call_b, call_a, call_main) = (
        line_of(&src, "CALL:b"),
        line_of(&src, "CALL:a"),
        line_of(&src, "CALL:main"),
    );
    let path = src.to_string_lossy().into_owned();
    let add = |name: &str, line: u64, exprs: &[&str], stack: bool| {
        let body = json!({"name": name, "connectionId": id, "location": format!("@{path}#{line}"), "expressions": exprs,
                          "enabled": true, "captureStackTrace": stack, "captureMemorySnapshot": false});
        let (s, r) = d.post("/api/v1/metrics", &body);
        assert_eq!(s, 201, "adding {name}: {r}\nagent: {}", agent.stderr.text());
        assert_eq!(
            (
                r["metric"]["language"].clone(),
                r["metric"]["captureStackTrace"].clone()
            ),
            (json!("go"), json!(stack)),
            "{r}"
        );
        let _ = writeln!(
            std::io::stderr(),
            "real-daemon bp: added {name} at chain.go:{line} {exprs:?} stack={stack}: warnings {}",
            r.get("warnings").unwrap_or(&Value::Null)
        );
    };
    // Upstream's wake scenario, on the chain: (a) one-expression logpoint, (b) three-expression
    // logpoint, (c) a call (breakpoint + `evaluate "call len(name)"` on a go connection), (d) a
    // stack trace (breakpoint + stackTrace levels 1000).
    add("bp_z", assign_w, &["z"], false);
    add("bp_details", return_w, &["z", "w", "name"], false);
    add("bp_name_len", call_b, &["y", "len(name)"], false);
    add("bp_stack", probe_c, &["z", "w"], true);

    // (a) every stored z is a round the program printed, as a number, on goroutine 1.
    for ev in d.events("bp_z", 5).iter().take(10) {
        assert!(ev["error"].is_null() && ev["stackTrace"].is_null(), "{ev}");
        assert_eq!(ev["values"][0]["expression"], "z");
        assert!(
            ev["values"][0]["typedValue"]["numericValue"].is_number(),
            "typed as a number: {ev}"
        );
        let z = int(ev, 0);
        assert_eq!(round_printed(&fixture, z)["z"], z.to_string());
        assert_eq!(ev["threadName"], "goroutine-1", "{ev}");
    }
    // (b) z, w and name of the same round as printed.
    for ev in d.events("bp_details", 5).iter().take(10) {
        assert!(ev["error"].is_null(), "{ev}");
        assert_eq!(ev["values"].as_array().map(Vec::len), Some(3), "{ev}");
        let kv = round_printed(&fixture, int(ev, 0));
        assert_eq!(
            int(ev, 1).to_string(),
            kv["w"],
            "w: stored {ev}\nprinted {kv:?}"
        );
        assert_eq!(
            value(ev, 2),
            json!(kv["name"]),
            "name: stored {ev}\nprinted {kv:?}"
        );
        assert_eq!(
            ev["values"][2]["typedValue"]["stringValue"],
            json!(kv["name"]),
            "typed as a string: {ev}"
        );
    }
    // (c) breakpoint mode: y is b's parameter (c gets y + 1), len(name) is the length of the
    // name the program printed in that round.
    for ev in d.events("bp_name_len", 5).iter().take(10) {
        assert!(ev["error"].is_null(), "{ev}");
        assert_eq!(
            (
                ev["values"][0]["expression"].clone(),
                ev["values"][1]["expression"].clone()
            ),
            (json!("y"), json!("len(name)")),
            "{ev}"
        );
        let kv = round_printed(&fixture, int(ev, 0) + 1);
        assert_eq!(
            int(ev, 1),
            i64::try_from(kv["name"].len()).unwrap(),
            "len(name): stored {ev}\nprinted {kv:?}"
        );
        assert!(
            ev["values"][1]["typedValue"]["numericValue"].is_number(),
            "typed as a number: {ev}"
        );
        assert!(ev["stackTrace"].is_null(), "no stack asked for: {ev}");
    }
    // (d) the stack is the fixture's chain c → b → a → main with the exact lines, in this file;
    // z and w as printed.
    let want: Vec<(String, u64)> = vec![
        ("main.c".into(), probe_c),
        ("main.b".into(), call_b),
        ("main.a".into(), call_a),
        ("main.main".into(), call_main),
    ];
    let stack_events = d.events("bp_stack", 5);
    for ev in stack_events.iter().take(10) {
        assert!(ev["error"].is_null(), "{ev}");
        let kv = round_printed(&fixture, int(ev, 0));
        assert_eq!(
            int(ev, 1).to_string(),
            kv["w"],
            "w: stored {ev}\nprinted {kv:?}"
        );
        let frames = ev["stackTrace"]["frames"]
            .as_array()
            .unwrap_or_else(|| panic!("no stackTrace.frames: {ev}"));
        let got: Vec<(String, u64)> = frames
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap_or("").to_owned(),
                    f["line"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert!(got.len() >= 4, "{got:?}");
        assert_eq!(
            &got[..4],
            &want[..],
            "frames c → b → a → main with their lines: {ev}"
        );
        for (i, f) in frames.iter().take(4).enumerate() {
            assert_eq!(
                (f["index"].as_u64(), f["file"].as_str()),
                (Some(i as u64), Some(path.as_str())),
                "frame {i}: {f}"
            );
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "real-daemon bp: stored stack trace: {}",
        stack_events[0]["stackTrace"]
    );
    // The daemon really took the breakpoint path for the call: `evaluate "call len(name)"` in
    // the repl context, answered with success (from the snapshot: no debugger was spawned).
    let rec: Vec<Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let calls: Vec<i64> = rec
        .iter()
        .filter(|l| {
            l["dir"] == "daemon->adapter"
                && l["msg"]["command"] == "evaluate"
                && l["msg"]["arguments"]["expression"] == "call len(name)"
        })
        .map(|l| {
            assert_eq!(l["msg"]["arguments"]["context"], "repl", "{l}");
            l["msg"]["seq"].as_i64().unwrap()
        })
        .collect();
    assert!(
        !calls.is_empty(),
        "the daemon sent no `call len(name)`; record {record}"
    );
    for l in rec.iter().filter(|l| {
        l["dir"] == "adapter->daemon"
            && l["msg"]["command"] == "evaluate"
            && calls.contains(&l["msg"]["request_seq"].as_i64().unwrap_or(-1))
    }) {
        assert_eq!(l["msg"]["success"], true, "{l}");
    }
    assert!(
        child_processes(agent.child.id()).is_empty(),
        "len(name) needs no debugger"
    );
    assert!(
        !patched_code(pid).is_empty(),
        "probes are in the target while awake"
    );

    // Sleep: the row is disconnected, no int3 is left, the program keeps running.
    agent.sleep_leaving_nothing(&d, &id, pid, "go");
    let n = rounds_printed(&fixture);
    assert!(
        fixture
            .stdout()
            .wait_count(n + 3, Duration::from_secs(5), |l| l.starts_with("c z=")),
        "the target printed no new rounds after sleep"
    );
    assert!(fixture.is_running());
    agent.terminate();
}
