//! Faults (issue #12 point 6), each against the real agent, the daemon emulator and a C
//! fixture: the daemon killed mid-session and restarted, the target's pid reused by another
//! process, the target exec()ing another program, and the target's binary replaced on disk
//! while it runs. Two more are unit tests where they can be exact: a library truncated under
//! the agent (`debuginfo::bytes`: files a target's user can write are copied, never mapped, so
//! no SIGBUS) and a daemon that stops reading (`daemon::hub`: at most `MAX_QUEUED_HITS` wait,
//! the rest are counted and shown as `dropped_hits` in `/detrix/status`; end to end, with the
//! exact accounting, in `slow_daemon.rs`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{patched_code, set_bps, AttachedAgent, RestStub, STEP_TIMEOUT};
use detrix_e2e::{
    build_c_fixture, c_fixture_source, fixtures_out_dir, marker_line, require_root, Build, Fixture,
};
use serde_json::{json, Value};

const GO_GOLDEN: &str = "shared/go-delve.jsonl";
const RUST_GOLDEN: &str = "shared/rust-stub.jsonl";

/// `process round=R`'s `round` as the daemon would read it from an `output` event
/// (`[thread N] DETRICS:name=R…`).
fn output_round(e: &Value) -> Option<i64> {
    let text = e["body"]["output"].as_str()?;
    let (_, vals) = text.split_once('=')?;
    vals.split('\u{1f}').next()?.trim().parse().ok()
}

fn is_output(e: &Value) -> bool {
    e["event"] == "output"
        && e["body"]["output"]
            .as_str()
            .is_some_and(|t| t.contains("DETRICS:"))
}

/// An agent attached to `pid` as a `rust` connection of a fresh emulated daemon.
fn agent_for(pid: u32, stub: &RestStub, name: &str) -> AttachedAgent {
    AttachedAgent::start(
        pid,
        &[
            "--daemon-url",
            &stub.url,
            "--name",
            name,
            "--language",
            "rust",
        ],
        &[],
    )
}

/// A private copy of a built fixture (its own inode: no other test's probes land in it).
fn private_copy(exe: &std::path::Path, tag: &str) -> PathBuf {
    let copy = fixtures_out_dir().join(format!(".{tag}-{}", std::process::id()));
    let status = Command::new("cp")
        .arg(exe)
        .arg(&copy)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp {} failed", exe.display());
    copy
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn orders_logpoint(dap: &mut common::Dap, seq: i64, name: &str) {
    let src = c_fixture_source("orders");
    let path = src.to_string_lossy().into_owned();
    let line = marker_line(&src, "process");
    let r = dap.request(&set_bps(
        seq,
        &path,
        json!([{"line": line, "logMessage": format!("DETRICS:{name}={{round}}\u{1f}{{(*o).id}}")}]),
    ));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
}

#[test]
fn the_daemon_killed_mid_session_then_restarted_gets_the_agent_back_on_the_next_wake() {
    require_root();
    let fixture = Fixture::orders_private(20);
    let pid = fixture.pid();
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = agent_for(pid, &stub, "fault-restart");
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!((s, wake["status"].clone()), (200, json!("awake")), "{wake}");
    let (id, mut dap) = stub.take_session();
    orders_logpoint(&mut dap, 10, "before");
    assert_eq!(
        dap.events(2, STEP_TIMEOUT, is_output).len(),
        2,
        "values flow"
    );
    assert!(!patched_code(pid).is_empty(), "the probe is in the target");

    // The daemon dies: its socket closes, no unregistration, no sleep.
    dap.close();
    drop(dap);
    assert!(
        wait_until(STEP_TIMEOUT, || patched_code(pid).is_empty()),
        "the lost session's probes are removed"
    );
    assert!(
        wait_until(STEP_TIMEOUT, || agent.get("/detrix/status").1
            ["daemon_session"]
            == "lost"),
        "status reports the lost session: {}",
        agent.get("/detrix/status").1
    );
    let (_, status) = agent.get("/detrix/status");
    assert_eq!(
        (status["state"].clone(), status["connection_id"].clone()),
        (json!("awake"), json!(id)),
        "{status}"
    );

    // The daemon is back (same URL); the next wake registers again instead of "already awake".
    let (s, wake2) = agent.post("/detrix/wake", None);
    assert_eq!(s, 200, "{wake2}");
    assert_eq!(
        wake2["status"], "awake",
        "a wake after a lost session registers: {wake2}"
    );
    assert_eq!(wake2["connection_id"], json!(id), "same identity, same id");
    assert_eq!(stub.lock().registrations.len(), 2);
    let (_, mut dap2) = stub.take_session();
    orders_logpoint(&mut dap2, 20, "after");
    assert_eq!(
        dap2.events(2, STEP_TIMEOUT, is_output).len(),
        2,
        "values flow again"
    );
    let (_, status) = agent.get("/detrix/status");
    assert_eq!(status.get("daemon_session"), None, "{status}");
    assert_eq!(status["state"], "awake");
}

#[test]
fn a_pid_reused_by_another_process_never_gets_the_probes() {
    require_root();
    let exe = private_copy(&build_c_fixture("orders", Build::Debug), "orders-reuse");
    let mut first = Fixture::start(&exe, &["-1", "20"]);
    let pid = first.pid();
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let mut agent = agent_for(pid, &stub, "fault-reuse");
    assert_eq!(agent.post("/detrix/wake", None).0, 200);
    let (_, mut dap) = stub.take_session();
    orders_logpoint(&mut dap, 10, "reuse");
    assert!(
        wait_until(STEP_TIMEOUT, || first.last_round().is_some_and(|r| r >= 40)),
        "the first process runs 40 rounds"
    );
    assert!(!dap.events(1, STEP_TIMEOUT, is_output).is_empty());

    // Kill and reap the first process, then make the kernel hand its pid to a second process
    // running the same binary (ns_last_pid: the next pid is this one + 1).
    // SAFETY: kill has no memory-safety preconditions; pid is our child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(wait_until(STEP_TIMEOUT, || !first.is_running()));
    // Take every value the first process produced before the second one exists: its rounds
    // are below 40 too, and those still unread on the connection would pass for the second's.
    let _ = dap.events(100_000, Duration::from_secs(1), is_output);
    let mut second = None;
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write ns_last_pid (root)");
        let f = Fixture::start(&exe, &["-1", "20"]);
        if f.pid() == pid {
            second = Some(f);
            break;
        }
    }
    let Some(second) = second else {
        panic!("could not start a second process with pid {pid} in 50 tries");
    };
    // The agent sees that the pid names another process: exited + terminated, and it exits.
    let ends = dap.events(2, STEP_TIMEOUT, |e| {
        e["event"] == "exited" || e["event"] == "terminated"
    });
    assert_eq!(ends.len(), 2, "agent stderr:\n{}", agent.stderr.text());
    assert_eq!(
        agent.wait_exit(STEP_TIMEOUT),
        Some(0),
        "{}",
        agent.stderr.text()
    );
    // Rounds restart at 0 in the second process: no value from it reached the daemon.
    let outputs = dap.events(100_000, Duration::from_millis(200), is_output);
    let from_second: Vec<i64> = outputs
        .iter()
        .filter_map(output_round)
        .filter(|r| *r < 40)
        .collect();
    assert!(
        from_second.is_empty(),
        "values of the second process were delivered: rounds {from_second:?}"
    );
    assert!(
        patched_code(second.pid()).is_empty(),
        "no probe left in the second process"
    );
    drop(second);
    let _ = std::fs::remove_file(&exe);
}

#[test]
fn a_target_that_execs_another_program_ends_the_session_and_keeps_running() {
    require_root();
    let exe = build_c_fixture("exec_later", Build::Debug);
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("sleep(1) is installed");
    let mut fixture = Fixture::start(&exe, &[sleep, "30"]);
    let pid = fixture.pid();
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let mut agent = agent_for(pid, &stub, "fault-exec");
    assert_eq!(agent.post("/detrix/wake", None).0, 200);
    let (_, mut dap) = stub.take_session();
    let src = c_fixture_source("exec_later");
    let path = src.to_string_lossy().into_owned();
    let r = dap.request(&set_bps(
        10,
        &path,
        json!([{"line": marker_line(&src, "tick"), "logMessage": "DETRICS:tick={seen}"}]),
    ));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    assert!(!dap.events(2, STEP_TIMEOUT, is_output).is_empty());

    // SAFETY: kill has no memory-safety preconditions; pid is our child.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let ends = dap.events(2, STEP_TIMEOUT, |e| {
        e["event"] == "exited" || e["event"] == "terminated"
    });
    assert_eq!(
        ends.iter().map(|e| e["event"].clone()).collect::<Vec<_>>(),
        vec![json!("exited"), json!("terminated")],
        "agent stderr:\n{}",
        agent.stderr.text()
    );
    assert_eq!(
        agent.wait_exit(STEP_TIMEOUT),
        Some(0),
        "{}",
        agent.stderr.text()
    );
    assert!(
        agent.stderr.text().contains("exec'd another program"),
        "the log says why: {}",
        agent.stderr.text()
    );
    // The process runs on as the new program, untouched.
    assert!(fixture.is_running(), "the exec'd process still runs");
    let exe_now = std::fs::read_link(format!("/proc/{pid}/exe")).expect("read exe");
    assert!(
        exe_now.to_string_lossy().contains("sleep")
            || exe_now.to_string_lossy().contains("coreutils"),
        "the process now runs {}",
        exe_now.display()
    );
    assert!(patched_code(pid).is_empty());
}

#[test]
fn the_targets_binary_replaced_on_disk_while_it_runs_is_still_resolved_from_the_running_copy() {
    require_root();
    let exe = private_copy(&build_c_fixture("orders", Build::Debug), "orders-replaced");
    let fixture = Fixture::start(&exe, &["-1", "20"]);
    let pid = fixture.pid();
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = agent_for(pid, &stub, "fault-replaced");
    // A deploy replaces the file (new inode under the old name) while the old program runs.
    let other = private_copy(&build_c_fixture("exec_later", Build::Debug), "orders-new");
    std::fs::rename(&other, &exe).expect("rename over the running binary");
    assert_eq!(agent.post("/detrix/wake", None).0, 200);
    let (_, mut dap) = stub.take_session();
    orders_logpoint(&mut dap, 10, "replaced");
    let outs = dap.events(3, STEP_TIMEOUT, is_output);
    assert_eq!(outs.len(), 3, "values from the running program");
    for o in &outs {
        let text = o["body"]["output"].as_str().unwrap_or("");
        let round = output_round(o).unwrap_or(-1);
        let id: i64 = text
            .trim_end()
            .rsplit('\u{1f}')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        assert_eq!(id, 1000 + round, "o->id is 1000 + round in {text:?}");
        fixture.process_line(round, Duration::from_secs(5));
    }
    drop(agent);
    let _ = std::fs::remove_file(&exe);
}
