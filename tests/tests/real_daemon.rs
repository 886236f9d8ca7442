//! End to end with the real, unchanged Detrix daemon (`DETRIX_BIN`, a `detrix` binary built from
//! flashus/detrix): the daemon runs on loopback with a scratch config (contract.md §15), the C,
//! Go and Rust fixtures run, `detrix-agent attach` wakes and registers, metrics are added
//! through the daemon's REST API, and the values the daemon stored must equal what the programs
//! printed. Then sleep: the connection is no longer connected and no probe is left in the
//! target. Plus the client conformance scenarios of contract.md §2.3 against that daemon.
//!
//! Without `DETRIX_BIN` it says plainly that it did not run (it cannot pass by accident: it
//! prints `NOT RUN`, which `cargo xtask test` output shows).
//!
//! `DETRIX_GOLDEN_REWRITE=1` also writes the DAP conversations, normalized, to
//! `tests/golden/real/` (the emulator replays them).

mod common;

use std::io::Write as _;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::intruder::{as_nobody, parse_http, DAP_INTRUDER, HTTP_INTRUDER};
use common::real::{build, events, value, Case};
use common::{daemon_bin, golden_dir, http, json_body, patched_code, AttachedAgent, Daemon};
use detrix_e2e::{marker_line, parse_kv, require_root, workspace_root, Fixture};
use serde_json::{json, Value};

fn normalize(text: &str, case: &Case, pid: u32) -> String {
    let dir = case
        .src
        .parent()
        .expect("a source file has a directory")
        .to_string_lossy()
        .into_owned();
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let text = if sysroot.is_empty() {
        text.to_string()
    } else {
        text.replace(&sysroot, "$RUST_SYSROOT")
    };
    text.replace(&dir, "$SRC")
        .replace(&format!("\"pid\":{pid}"), "\"pid\":\"$PID\"")
        .replace(&format!("[thread {pid}]"), "[thread $PID]")
}

fn run_case(d: &Daemon, kind: &'static str) {
    let case = build(kind);
    let mut fixture = Fixture::start(&case.exe, &["-1", "100"]);
    let pid = fixture.pid();
    let record = d.dir.join(format!("{kind}.jsonl"));
    let name = format!("real-{kind}");
    let ws = case
        .src
        .parent()
        .expect("a source file has a directory")
        .to_string_lossy()
        .into_owned();
    let record_s = record.to_string_lossy().into_owned();
    let mut agent = AttachedAgent::start(
        pid,
        &[
            "--daemon-url",
            &d.url,
            "--name",
            &name,
            "--workspace-root",
            &ws,
            "--dap-record",
            &record_s,
        ],
        &[],
    );
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!(
        (s, wake["status"].clone()),
        (200, json!("awake")),
        "{kind}: {wake}\nagent: {}",
        agent.stderr.text()
    );
    let id = wake["connection_id"]
        .as_str()
        .expect("wake answers a connection_id")
        .to_string();
    let (_, row) = d.get(&format!("/api/v1/connections/{id}"));
    let want_lang = if kind == "go" { "go" } else { "rust" };
    assert_eq!(
        (
            row["status"].clone(),
            row["language"].clone(),
            row["name"].clone()
        ),
        (json!(3), json!(want_lang), json!(name)),
        "{row}"
    );

    let src = case.src.to_string_lossy().into_owned();
    let single = format!("{kind}_order_id");
    let triple = format!("{kind}_after");
    for (metric, marker, exprs) in [
        (&single, "process", vec![case.id_expr]),
        (&triple, "after", case.after_exprs.to_vec()),
    ] {
        let line = marker_line(&case.src, marker);
        let (s, r) = d.post(
            "/api/v1/metrics",
            &json!({"name": metric, "connectionId": id, "location": format!("@{src}#{line}"), "expressions": exprs, "enabled": true}),
        );
        assert_eq!(s, 201, "{kind}: adding {metric}: {r}");
        let _ = writeln!(
            std::io::stderr(),
            "real-daemon {kind}: added {metric} at {}:{line} {exprs:?}: warnings {}",
            case.src.display(),
            r.get("warnings").unwrap_or(&Value::Null)
        );
    }

    // The single-expression metric: each stored id is one the program printed.
    let evs = events(d, &single, 3);
    for ev in evs.iter().take(5) {
        assert_eq!(ev["values"][0]["expression"], case.id_expr);
        assert!(ev["error"].is_null(), "{ev}");
        let idv = value(ev, 0)
            .as_i64()
            .unwrap_or_else(|| panic!("{kind}: id is not an integer: {ev}"));
        assert!(
            ev["values"][0]["typedValue"]["numericValue"].is_number(),
            "typed as a number: {ev}"
        );
        let round = idv - 1000;
        let printed = fixture.process_line(round, Duration::from_secs(5));
        assert_eq!(
            parse_kv(&printed)["id"],
            idv.to_string(),
            "{kind}: stored {ev}\nprinted {printed}"
        );
        let want_thread = if kind == "go" {
            "goroutine-1".to_string()
        } else {
            format!("thread-{pid}")
        };
        assert_eq!(ev["threadName"], want_thread, "{ev}");
    }
    // The three-expression metric: round, cost and customer of the same round as printed.
    let evs = events(d, &triple, 3);
    for ev in evs.iter().take(5) {
        assert_eq!(ev["values"].as_array().map(Vec::len), Some(3), "{ev}");
        let round = value(ev, 0)
            .as_i64()
            .unwrap_or_else(|| panic!("{kind}: round: {ev}"));
        let printed = fixture.process_line(round, Duration::from_secs(5));
        let kv = parse_kv(&printed);
        assert_eq!(
            value(ev, 1).as_f64(),
            Some(
                kv["cost"]
                    .parse::<f64>()
                    .expect("the printed cost is a number")
            ),
            "{kind} cost: stored {ev}\nprinted {printed}"
        );
        // A C `char *` as lldb-dap shows it: its address, then the quoted text (the C fixture
        // prints the address as `pcust`); Go and Rust strings are their text.
        let customer = match kv.get("pcust") {
            Some(p) if kind == "c" => format!("{p} \"{}\"", kv["customer"]),
            _ => kv["customer"].clone(),
        };
        assert_eq!(
            value(ev, 2),
            json!(customer),
            "{kind} customer: stored {ev}\nprinted {printed}"
        );
        assert_eq!(
            ev["values"][2]["typedValue"]["stringValue"],
            json!(customer),
            "typed as a string: {ev}"
        );
    }
    assert!(
        !patched_code(pid).is_empty(),
        "{kind}: probes are in the target while awake"
    );

    // Sleep: the row is disconnected, no probe is left, the program keeps running.
    agent.sleep_leaving_nothing(d, &id, pid, kind);
    fixture.assert_keeps_running(2);
    agent.terminate();

    let text = std::fs::read_to_string(&record).expect("read the DAP recording");
    if std::env::var_os("DETRIX_GOLDEN_REWRITE").is_some() {
        let dir = golden_dir().join("real");
        std::fs::create_dir_all(&dir).expect("create the golden directory");
        std::fs::write(
            dir.join(format!("agent-{kind}.jsonl")),
            normalize(&text, &case, pid),
        )
        .expect("write the golden recording");
    }
}

#[test]
fn real_daemon_stores_the_values_the_programs_printed() {
    let Some(bin) = daemon_bin("real_daemon_stores_the_values_the_programs_printed") else {
        return;
    };
    require_root();
    let d = Daemon::start(
        &bin,
        "values",
        &workspace_root().join("tests").join("fixtures"),
    );
    for kind in ["c", "go", "rust"] {
        run_case(&d, kind);
    }
}

#[test]
fn real_daemon_client_conformance() {
    let Some(bin) = daemon_bin("real_daemon_client_conformance") else {
        return;
    };
    require_root();
    let d = Daemon::start(
        &bin,
        "conformance",
        &workspace_root().join("tests").join("fixtures"),
    );
    let fixture = Fixture::orders_private(50);
    let agent = AttachedAgent::start(
        fixture.pid(),
        // EH001 below wakes towards an unreachable daemon: only a URL the operator allowed
        // may be named in a wake (issue #12), so allow that one.
        &[
            "--daemon-url",
            &d.url,
            "--name",
            "conformance",
            "--allow-daemon-url",
            "http://127.0.0.1:1",
        ],
        &[],
    );
    // ST001 / EP001 / EP002
    let (s, st) = agent.get("/detrix/status");
    assert_eq!(
        (s, st["state"].clone(), st["connection_id"].clone()),
        (200, json!("sleeping"), Value::Null)
    );
    assert!(st["control_port"].as_u64().unwrap() > 0);
    assert_eq!(
        agent.get("/detrix/health"),
        (200, json!({"status":"ok","service":"detrix-client"}))
    );
    // EH001
    let (s, e) = agent.post(
        "/detrix/wake",
        Some(r#"{"daemon_url":"http://127.0.0.1:1"}"#),
    );
    assert_eq!(s, 503, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .starts_with("daemon not reachable at http://127.0.0.1:1: "),
        "{e}"
    );
    assert_eq!(agent.get("/detrix/status").1["state"], "sleeping");
    // CC001: five concurrent wakes, one awake, one connected row.
    let url = format!("{}/detrix/wake", agent.control);
    let hs: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || json_body(&http("POST", &url, None).1))
        })
        .collect();
    let rs: Vec<Value> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        rs.iter().filter(|r| r["status"] == "awake").count(),
        1,
        "{rs:?}"
    );
    assert_eq!(
        rs.iter().filter(|r| r["status"] == "already_awake").count(),
        4,
        "{rs:?}"
    );
    let id = rs[0]["connection_id"].as_str().unwrap().to_string();
    // ST002: listed by the daemon
    let (_, rows) = d.get("/api/v1/connections");
    let ours: Vec<&Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "conformance")
        .collect();
    assert_eq!(ours.len(), 1, "{rows}");
    assert_eq!(
        (ours[0]["connectionId"].clone(), ours[0]["status"].clone()),
        (json!(id), json!(3))
    );
    // ST004 / ST005 / ST003
    assert_eq!(
        agent.post("/detrix/wake", None).1["status"],
        "already_awake"
    );
    assert_eq!(
        agent.post("/detrix/sleep", None),
        (200, json!({"status":"sleeping"}))
    );
    assert_eq!(
        agent.post("/detrix/sleep", None),
        (200, json!({"status":"already_sleeping"}))
    );
    assert_eq!(d.get(&format!("/api/v1/connections/{id}")).1["status"], 1);
}

/// Issue #12 with the real daemon, as the issue found it: a root agent woken by the daemon and
/// delivering a metric; a local user (`nobody`) then connects to the DAP port and asks for a
/// logpoint, posts `/detrix/sleep`, and wakes the agent towards a server of its own. It gets no
/// byte from the DAP port, 401 twice, and the daemon's session keeps storing values.
#[test]
fn real_daemon_session_survives_a_local_stranger() {
    let Some(bin) = daemon_bin("real_daemon_session_survives_a_local_stranger") else {
        return;
    };
    require_root();
    let d = Daemon::start(
        &bin,
        "stranger",
        &workspace_root().join("tests").join("fixtures"),
    );
    let case = build("c");
    let fixture = Fixture::start(&case.exe, &["-1", "50"]);
    let ws = case.src.parent().unwrap().to_string_lossy().into_owned();
    let agent = AttachedAgent::start(
        fixture.pid(),
        &[
            "--daemon-url",
            &d.url,
            "--name",
            "real-stranger",
            "--workspace-root",
            &ws,
        ],
        &[("DETRIX_TOKEN", "s3cret")],
    );
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!(s, 200, "{wake}\n{}", agent.stderr.text());
    let id = wake["connection_id"].as_str().unwrap().to_string();
    let debug_port = wake["debug_port"].as_u64().unwrap().to_string();
    let src = case.src.to_string_lossy().into_owned();
    let line = marker_line(&case.src, "process");
    let (s, r) = d.post(
        "/api/v1/metrics",
        &json!({"name": "stranger_id", "connectionId": id, "location": format!("@{src}#{line}"), "expressions": [case.id_expr], "enabled": true}),
    );
    assert_eq!(s, 201, "adding the metric: {r}");
    let before = events(&d, "stranger_id", 3).len();

    // The DAP port: the stranger's initialize, attach and logpoint get nothing back.
    let msgs: Vec<String> = [
        json!({"seq":1,"type":"request","command":"initialize","arguments":{"adapterID":"lldb-dap"}}),
        json!({"seq":2,"type":"request","command":"attach","arguments":{"pid": fixture.pid()}}),
        json!({"seq":3,"type":"request","command":"setBreakpoints","arguments":{"source":{"path":src},
            "breakpoints":[{"line":line,"logMessage":"stolen={o->id}"}]}}),
    ]
    .iter()
    .map(|m| String::from_utf8(common::frame(m)).unwrap())
    .collect();
    let mut args = vec![debug_port.as_str()];
    args.extend(msgs.iter().map(String::as_str));
    let (code, got, err) = as_nobody(DAP_INTRUDER, &args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "",
        "the stranger got DAP bytes"
    );

    // The control plane: no sleep, no wake towards the stranger's own server.
    let port = agent.control.rsplit(':').next().unwrap().to_owned();
    for (path, body) in [
        ("/detrix/sleep", String::new()),
        (
            "/detrix/wake",
            json!({"daemon_url": "http://127.0.0.1:9"}).to_string(),
        ),
    ] {
        let (code, out, err) = as_nobody(HTTP_INTRUDER, &["POST", &port, path, &body, ""]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(parse_http(&out).0, 401, "{path} as nobody");
    }

    // The daemon's session went on: still connected, new values stored, the program untouched.
    let (_, row) = d.get(&format!("/api/v1/connections/{id}"));
    assert_eq!(row["status"], 3, "still connected: {row}");
    let after = events(&d, "stranger_id", before + 3).len();
    assert!(after >= before + 3, "{before} → {after}");
    assert_eq!(
        agent.get("/detrix/status").1["state"],
        json!("awake"),
        "{}",
        agent.stderr.text()
    );
}
