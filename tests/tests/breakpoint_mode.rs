//! Breakpoint mode end to end (issue #7), driven through `detrix-agent attach` by the daemon
//! emulator: plain breakpoints answered from in-kernel snapshots (exact frames of the fixture's
//! main → a → b → c chain, locals equal to what the program printed, the heartbeat thread's
//! largest gap no larger than without probes), function calls evaluated by a spawned lldb-dap /
//! Delve that is gone afterwards while the target keeps running, mixed modes in one file,
//! SafeMode, and the agent SIGKILLed while its debugger holds the target at the round's
//! breakpoint (issue #12 point 6).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{patched_code, req, set_bps, AttachedAgent, Dap, RestStub, STEP_TIMEOUT};
use detrix_e2e::{
    child_processes, descendants, fixtures_out_dir, line_of, require_root, round_printed,
    workspace_root, Fixture,
};
use serde_json::{json, Value};

const GO_GOLDEN: &str = "shared/go-delve.jsonl";
const RUST_GOLDEN: &str = "shared/rust-stub.jsonl";

fn src(name: &str) -> PathBuf {
    workspace_root()
        .join("tests/fixtures/bp")
        .join(name)
        .canonicalize()
        .expect("the bp fixture source exists")
}

/// Tests here take turns: they build the same fixtures, and the heartbeat measurement must not
/// share the machine with another test's debugger rounds.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn build(kind: &str) -> PathBuf {
    let out = fixtures_out_dir();
    std::fs::create_dir_all(&out).expect("create the fixtures directory");
    let run = |cmd: &mut Command| {
        let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(st.success(), "{cmd:?}: {st}");
    };
    match kind {
        "c" => {
            let exe = out.join("bp_chain_c");
            run(Command::new("gcc")
                .args(["-g", "-O0", "-pthread", "-o"])
                .arg(&exe)
                .arg(src("chain.c")));
            exe
        }
        _ => {
            let exe = out.join("bp_chain_go");
            run(Command::new("go")
                .args(["build", "-buildvcs=false", "-gcflags=all=-N -l", "-o"])
                .arg(&exe)
                .arg(src("chain.go"))
                .env("GOTOOLCHAIN", "local")
                .env("GOCACHE", out.join("gocache"))
                .current_dir(
                    src("chain.go")
                        .parent()
                        .expect("a source file has a directory"),
                ));
            exe
        }
    }
}

/// Largest gap between consecutive `beat ns=` lines printed after `from_line`.
fn largest_gap_ms(fixture: &Fixture, from_line: usize) -> f64 {
    let beats: Vec<i64> = fixture.stdout().snapshot()[from_line..]
        .iter()
        .filter_map(|l| l.strip_prefix("beat ns=")?.parse().ok())
        .collect();
    assert!(
        beats.len() > 20,
        "too few heartbeats ({}) to measure",
        beats.len()
    );
    beats
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .fold(0.0, f64::max)
}

fn status_of(pid: u32) -> (String, u32) {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let f = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .expect("/proc/PID/status has the field")
            .trim()
            .to_owned()
    };
    (
        f("State:"),
        f("TracerPid:").parse().expect("TracerPid is a number"),
    )
}

/// After a debugger round: no debugger child left, the target out of ptrace, running, and
/// still printing rounds.
fn assert_debugger_gone_and_target_running(agent: &AttachedAgent, fixture: &mut Fixture) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let kids = child_processes(agent.child.id());
        if kids.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "debugger processes left under the agent: {kids:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (state, tracer) = status_of(fixture.pid());
    assert_eq!(tracer, 0, "the target is still traced ({state})");
    assert!(
        !state.starts_with('t') && !state.starts_with('T'),
        "the target is stopped: {state}"
    );
    let n = fixture
        .stdout()
        .snapshot()
        .iter()
        .filter(|l| l.starts_with("c z="))
        .count();
    assert!(
        fixture
            .stdout()
            .wait_count(n + 3, Duration::from_secs(5), |l| l.starts_with("c z=")),
        "the target printed no new rounds after the debugger left"
    );
    assert!(fixture.is_running());
}

struct Session {
    fixture: Fixture,
    agent: AttachedAgent,
    dap: Dap,
    _stub: RestStub,
    /// Last: released after the fixture and the agent are gone.
    _turn: std::sync::MutexGuard<'static, ()>,
}

fn start(kind: &str, extra: &[&str]) -> Session {
    require_root();
    let turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let exe = build(kind);
    let fixture = Fixture::start(&exe, &["20"]);
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let language = if kind == "go" { "go" } else { "rust" };
    let mut args = vec!["--daemon-url", &stub.url, "--language", language];
    args.extend_from_slice(extra);
    let agent = AttachedAgent::start(fixture.pid(), &args, &[]);
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!(s, 200, "{wake}\n{}", agent.stderr.text());
    let (_, dap) = stub.take_session();
    Session {
        _turn: turn,
        fixture,
        agent,
        dap,
        _stub: stub,
    }
}

/// One full stop cycle as the daemon runs it; returns (frames, locals by name).
/// What one stop shows: the frames (function, line), the locals by name, the evaluate results.
type Stop = (Vec<(String, u64)>, HashMap<String, String>, Vec<Value>);

fn stop_cycle(dap: &mut Dap, seq: &mut i64, eval: &[&str]) -> Stop {
    let stops = dap.events(1, STEP_TIMEOUT, |e| e["event"] == "stopped");
    assert_eq!(stops.len(), 1, "no stopped event");
    let thread = stops[0]["body"]["threadId"].clone();
    let mut next = || {
        *seq += 1;
        *seq
    };
    let top = dap.request(&req(
        next(),
        "stackTrace",
        json!({"threadId": thread, "startFrame": 0, "levels": 1}),
    ));
    let frame_id = top["body"]["stackFrames"][0]["id"].clone();
    let all = dap.request(&req(
        next(),
        "stackTrace",
        json!({"threadId": thread, "startFrame": 0, "levels": 1000}),
    ));
    let frames = all["body"]["stackFrames"]
        .as_array()
        .expect("stackTrace answers stackFrames")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().expect("a frame has a name").to_owned(),
                f["line"].as_u64().expect("a frame has a line"),
            )
        })
        .collect();
    let scopes = dap.request(&req(next(), "scopes", json!({"frameId": frame_id})));
    let r = scopes["body"]["scopes"][0]["variablesReference"].clone();
    let vars = dap.request(&req(
        next(),
        "variables",
        json!({"variablesReference": r, "count": 100}),
    ));
    let locals = vars["body"]["variables"]
        .as_array()
        .expect("variables answers variables")
        .iter()
        .map(|v| {
            (
                v["name"]
                    .as_str()
                    .expect("a variable has a name")
                    .to_owned(),
                v["value"]
                    .as_str()
                    .expect("a variable has a value")
                    .to_owned(),
            )
        })
        .collect();
    let mut evals = Vec::new();
    for e in eval {
        evals.push(dap.request(&req(next(), "evaluate", json!({"expression": e, "frameId": frame_id, "context": if e.starts_with("call ") { "repl" } else { "watch" }}))));
    }
    let c = dap.request(&req(next(), "continue", json!({"threadId": thread})));
    assert_eq!(c["success"], true);
    (frames, locals, evals)
}

#[test]
fn c_breakpoint_answers_from_the_snapshot_without_pausing() {
    let mut s = start("c", &[]);
    let path = src("chain.c");
    let p = path.to_string_lossy().into_owned();
    let want: Vec<(String, u64)> = [
        ("c", "PROBE:c"),
        ("b", "CALL:b"),
        ("a", "CALL:a"),
        ("main", "CALL:main"),
    ]
    .iter()
    .map(|(f, m)| ((*f).to_owned(), line_of(&path, m)))
    .collect();
    // Baseline: the heartbeat's largest gap with no probe at all.
    let mark = s.fixture.stdout().len();
    std::thread::sleep(Duration::from_millis(1500));
    let baseline = largest_gap_ms(&s.fixture, mark);

    let r = s.dap.request(&set_bps(1, &p, json!([{"line": want[0].1}])));
    assert_eq!(
        r["body"]["breakpoints"][0]["verified"],
        true,
        "{r}\n{}",
        s.agent.stderr.text()
    );
    let mark = s.fixture.stdout().len();
    let mut seq = 10;
    let started = Instant::now();
    let mut cycles = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let (frames, locals, evals) = stop_cycle(&mut s.dap, &mut seq, &["(w)", "z"]);
        assert_eq!(
            &frames[..4],
            &want[..],
            "frames c → b → a → main with their lines: {frames:?}"
        );
        let z: i64 = locals["z"]
            .parse()
            .unwrap_or_else(|_| panic!("z: {locals:?}"));
        let kv = round_printed(&s.fixture, z);
        assert_eq!(locals["w"], kv["w"], "w as printed");
        // A `char *` as lldb-dap shows it: its address and its quoted text.
        assert_eq!(
            locals["name"],
            format!("{} \"{}\"", kv["pname"], kv["name"]),
            "name as printed: {locals:?}"
        );
        assert_eq!(evals[0]["body"]["result"], json!(kv["w"]), "{:?}", evals[0]);
        assert_eq!(evals[1]["body"]["result"], json!(z.to_string()));
        cycles += 1;
    }
    let during = largest_gap_ms(&s.fixture, mark);
    assert!(cycles >= 10, "only {cycles} stop cycles in 1.5 s");
    // A debugger stop shows as a gap of hundreds of ms (attach alone is 0.2–0.4 s); snapshots
    // leave the heartbeat alone. The margin is this 2-core VM's scheduling noise with other
    // test binaries running, not time the target spent paused.
    assert!(
        during <= baseline + 25.0,
        "largest heartbeat gap {during:.2} ms during capture vs {baseline:.2} ms without probes"
    );
    assert!(
        !patched_code(s.fixture.pid()).is_empty(),
        "the probe is a uprobe in the target"
    );
    let _ = writeln(&format!("c breakpoint: {cycles} stop cycles, heartbeat gap {during:.2} ms (baseline {baseline:.2} ms)"));
}

fn writeln(s: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stderr(), "{s}")
}

#[test]
fn c_call_logpoint_uses_lldb_then_detaches_and_logpoints_in_the_same_file_keep_working() {
    let mut s = start("c", &[]);
    let path = src("chain.c");
    let p = path.to_string_lossy().into_owned();
    let probe = line_of(&path, "PROBE:c");
    let call_b = line_of(&path, "CALL:b");
    // Mixed modes in one file: a call logpoint (debugger), a plain logpoint (eBPF), a breakpoint (snapshot).
    let r = s.dap.request(&set_bps(
        1,
        &p,
        json!([
            {"line": probe, "logMessage": "DETRICS:name_len={(z)}\u{1f}{(long)strlen(name)}"},
            {"line": call_b, "logMessage": "DETRICS:y={(y)}"},
            {"line": line_of(&path, "CALL:a")},
        ]),
    ));
    for b in r["body"]["breakpoints"].as_array().unwrap() {
        assert_eq!(b["verified"], true, "{r}");
    }
    let outs = s.dap.events(2, Duration::from_secs(20), |e| {
        e["event"] == "output"
            && e["body"]["output"]
                .as_str()
                .unwrap_or("")
                .contains("name_len=")
    });
    assert!(
        outs.len() >= 2,
        "two debugger rounds; agent stderr:\n{}",
        s.agent.stderr.text()
    );
    for o in &outs {
        let text = o["body"]["output"].as_str().unwrap();
        let vals: Vec<i64> = text
            .trim_end()
            .split_once('=')
            .unwrap()
            .1
            .split('\u{1f}')
            .map(|v| v.parse().unwrap())
            .collect();
        let kv = round_printed(&s.fixture, vals[0]);
        assert_eq!(
            vals[1].to_string(),
            kv["len"],
            "strlen(name) as the program computed it: {text:?}"
        );
    }
    let ys = s.dap.events(3, STEP_TIMEOUT, |e| {
        e["event"] == "output"
            && e["body"]["output"]
                .as_str()
                .unwrap_or("")
                .contains("DETRICS:y=")
    });
    assert!(
        ys.len() >= 3,
        "the eBPF logpoint keeps producing events between debugger rounds"
    );
    // For contrast with the snapshot test: a debugger round does pause the target.
    let _ = writeln(&format!(
        "c call logpoint: heartbeat gap {:.1} ms with lldb rounds",
        largest_gap_ms(&s.fixture, 0)
    ));
    let stops = s.dap.events(1, STEP_TIMEOUT, |e| e["event"] == "stopped");
    assert_eq!(
        stops.len(),
        1,
        "the breakpoint in the same file produces stops"
    );
    // Remove the call logpoint; the rest stays and the debugger is gone.
    s.dap.request(&set_bps(
        2,
        &p,
        json!([{"line": call_b, "logMessage": "DETRICS:y={(y)}"}]),
    ));
    std::thread::sleep(Duration::from_millis(1500));
    assert_debugger_gone_and_target_running(&s.agent, &mut s.fixture);
    let ys = s.dap.events(3, STEP_TIMEOUT, |e| {
        e["event"] == "output"
            && e["body"]["output"]
                .as_str()
                .unwrap_or("")
                .contains("DETRICS:y=")
    });
    assert!(ys.len() >= 3);
}

#[test]
fn go_call_expressions_are_evaluated_by_delve_which_then_leaves() {
    let mut s = start("go", &[]);
    let path = src("chain.go");
    let p = path.to_string_lossy().into_owned();
    let want: Vec<(String, u64)> = [
        ("main.c", "PROBE:c"),
        ("main.b", "CALL:b"),
        ("main.a", "CALL:a"),
        ("main.main", "CALL:main"),
    ]
    .iter()
    .map(|(f, m)| ((*f).to_owned(), line_of(&path, m)))
    .collect();
    let r = s.dap.request(&set_bps(1, &p, json!([{"line": want[0].1}])));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    let mut seq = 10;
    let (frames, locals, evals) = stop_cycle(
        &mut s.dap,
        &mut seq,
        &[
            "call len(name)",
            "call u.GetBalance()",
            "call fmt.Sprintf(\"%d\", z)",
        ],
    );
    assert_eq!(&frames[..4], &want[..], "{frames:?}");
    let z: i64 = locals["z"].parse().unwrap();
    let kv = round_printed(&s.fixture, z);
    assert_eq!(locals["w"], kv["w"]);
    assert_eq!(
        evals[0]["body"]["result"],
        json!(kv["name"].len().to_string()),
        "len(name) from the snapshot"
    );
    // The call ran in a later round (the snapshot's round has passed): balance = (round+2)*10 = z*10.
    let bal: i64 = evals[1]["body"]["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{:?}\n{}", evals[1], s.agent.stderr.text()))
        .parse()
        .unwrap();
    assert!(
        bal % 10 == 0 && bal / 10 > z,
        "GetBalance() of a later round: {bal} after z={z}"
    );
    assert_eq!(
        round_printed(&s.fixture, bal / 10)["balance"],
        bal.to_string(),
        "as the program computed it"
    );
    assert_eq!(evals[2]["success"], false, "a variadic call fails in Delve");
    assert!(
        evals[2]["body"]["error"]["format"]
            .as_str()
            .unwrap()
            .starts_with("Unable to evaluate expression"),
        "Delve's message: {:?}",
        evals[2]
    );
    assert_debugger_gone_and_target_running(&s.agent, &mut s.fixture);
    // Snapshots keep working after the debugger left (the probe was put back).
    let (frames, _, _) = stop_cycle(&mut s.dap, &mut seq, &[]);
    assert_eq!(&frames[..4], &want[..]);
}

#[test]
fn safe_mode_refuses_calls_and_keeps_snapshots() {
    let mut s = start("c", &["--safe-mode"]);
    let path = src("chain.c");
    let p = path.to_string_lossy().into_owned();
    let probe = line_of(&path, "PROBE:c");
    let r = s.dap.request(&set_bps(
        1,
        &p,
        json!([
            {"line": probe},
            {"line": line_of(&path, "CALL:b"), "logMessage": "DETRICS:n={(long)strlen(name)}"},
        ]),
    ));
    let b = &r["body"]["breakpoints"];
    assert_eq!(b[0]["verified"], true, "{r}");
    assert_eq!(b[1]["verified"], false);
    assert!(
        b[1]["message"].as_str().unwrap().contains("SafeMode"),
        "{r}"
    );
    let mut seq = 10;
    let (frames, _, evals) = stop_cycle(&mut s.dap, &mut seq, &["(long)strlen(name)"]);
    assert_eq!(frames[0], ("c".to_owned(), probe));
    assert!(
        evals[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("SafeMode:"),
        "{:?}",
        evals[0]
    );
    assert!(
        child_processes(s.agent.child.id()).is_empty(),
        "SafeMode never spawns a debugger"
    );
}

/// Whether `pid` is gone: no such process, or a zombie (dead, holding nothing, waiting for a
/// parent to reap it; orphans here go to an init that may never do so).
fn is_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |t| {
        t.lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|s| s.trim_start().starts_with('Z'))
    })
}

/// Whether one of the target's threads sits in a ptrace stop outside any system call: at the
/// debugger's breakpoint (the target's threads otherwise wait in `usleep`, `write` or, for Go,
/// `futex`). For C only the main thread runs `c()`.
fn stopped_at_breakpoint(pid: u32, any_thread: bool) -> bool {
    let traced = std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .is_some_and(|v| v.trim() != "0")
    });
    let tasks: Vec<String> = if any_thread {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        vec![pid.to_string()]
    };
    traced
        && tasks.iter().any(|t| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{t}/syscall"))
                .is_ok_and(|s| s.starts_with("-1 "))
        })
}

/// What the agent logs when its debugger reports the stop at the breakpoint
/// (`fallback::session`).
const STOP_SAID: &str = "debugger stopped the target at the breakpoint";

/// When, in a debugger round, the test kills the agent.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// As soon as the debugger process exists (before it attached).
    DebuggerStarted,
    /// As soon as the debugger traces the target (the attach under way).
    Attaching,
    /// While the debugger holds the target at the round's breakpoint (its calls running).
    Breakpoint,
}

/// The line round `z` prints, up to what varies between runs (C's `pname=` address):
/// `c()` gets `z = i + 2` in round `i`, with `names[i % 3]` (see the fixtures' headers).
fn expected_round(kind: &str, z: i64) -> String {
    let name = ["alice", "bob", "carol"][usize::try_from((z - 2) % 3).expect("z ≥ 2")];
    if kind == "go" {
        format!("c z={z} w={} name={name} balance={}", 3 * z, 10 * z)
    } else {
        format!(
            "c z={z} w={} name={name} len={} pname=0x",
            3 * z,
            name.len()
        )
    }
}

/// Issue #12 point 6: the agent SIGKILLed during a debugger round (`at`). Afterwards the
/// debugger (and anything it started) is gone, the target is out of ptrace, not stopped, and
/// keeps printing rounds: every round's line, before and after, exactly as the program computes
/// it, none missing: nothing the round patched or stopped is left.
fn agent_killed_mid_round(kind: &str, logpoint: &str, at: KillAt) {
    let mut s = start(kind, &[]);
    let file = if kind == "go" { "chain.go" } else { "chain.c" };
    let path = src(file);
    let p = path.to_string_lossy().into_owned();
    let probe = line_of(&path, "PROBE:c");
    let r = s.dap.request(&set_bps(
        1,
        &p,
        json!([{"line": probe, "logMessage": logpoint}]),
    ));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    let pid = s.fixture.pid();
    let debugger = if kind == "go" { "dlv" } else { "lldb-dap" };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut stops_said = 0;
    let remember = |seen: &mut Vec<(u32, String)>| {
        for d in descendants(s.agent.child.id()) {
            if !seen.contains(&d) {
                seen.push(d);
            }
        }
    };
    loop {
        remember(&mut seen);
        let now = match at {
            KillAt::DebuggerStarted => seen.iter().any(|(_, c)| c.starts_with(debugger)),
            KillAt::Attaching => status_of(pid).1 != 0,
            // The agent says when its debugger reported the stop at the breakpoint; the stop
            // lasts while the frame is asked for and the calls run. Polling /proc alone for
            // that stop missed it under load (CI, twice in ~8 runs).
            KillAt::Breakpoint => {
                let said =
                    s.agent
                        .stderr
                        .wait_count(stops_said + 1, Duration::from_millis(100), |l| {
                            l.contains(STOP_SAID)
                        });
                if said {
                    stops_said += 1;
                }
                said && stopped_at_breakpoint(pid, kind == "go")
            }
        };
        if now {
            remember(&mut seen);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the round never reached {at:?}; agent stderr:\n{}",
            s.agent.stderr.text()
        );
        if !matches!(at, KillAt::Breakpoint) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    unsafe { libc::kill(s.agent.child.id() as i32, libc::SIGKILL) };
    let _ = s.agent.wait_exit(Duration::from_secs(5));
    let _ = writeln(&format!(
        "{kind}: agent killed at {at:?}; debugger processes: {seen:?}"
    ));
    assert!(!seen.is_empty(), "a debugger was running");
    // Everything the debugger started, also after the agent died, must go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (p, _) in seen.clone() {
            for d in descendants(p) {
                if !seen.contains(&d) {
                    seen.push(d);
                }
            }
        }
        let left: Vec<_> = seen.iter().filter(|(p, _)| !is_gone(*p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "debugger processes outlived the agent by 10 s: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = s.fixture.exit_status() {
            panic!(
                "the target died after the agent ({st}; a debugger gone while its breakpoint \
                 is in the code leaves its trap behind)"
            );
        }
        let (state, tracer) = status_of(pid);
        if tracer == 0 && !state.starts_with('t') && !state.starts_with('T') {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after the agent died the target is {state} (tracer pid {tracer})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rounds = |l: &str| l.starts_with("c z=");
    let n = s
        .fixture
        .stdout()
        .snapshot()
        .iter()
        .filter(|l| rounds(l))
        .count();
    let printing = s
        .fixture
        .stdout()
        .wait_count(n + 5, Duration::from_secs(10), rounds);
    let lines: Vec<String> = s
        .fixture
        .stdout()
        .snapshot()
        .into_iter()
        .filter(|l| rounds(l))
        .collect();
    assert!(
        printing,
        "the target printed no 5 new rounds within 10 s after the agent died ({:?}); last rounds:\n{}",
        s.fixture.exit_status(),
        lines[lines.len().saturating_sub(5)..].join("\n")
    );
    let first: i64 = lines[0]
        .strip_prefix("c z=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|z| z.parse().ok())
        .expect("a round line starts with `c z=<z>`");
    for (k, line) in lines.iter().enumerate() {
        let want = expected_round(kind, first + k as i64);
        assert!(
            line.starts_with(&want) && (kind == "go" || line.len() == want.len() + 16),
            "round {k} after the first printed `{line}`, expected `{want}…`: a round lost or \
             changed ({} rounds, {n} before the agent died)",
            lines.len()
        );
    }
    let (state, tracer) = status_of(pid);
    assert!(
        s.fixture.is_running() && tracer == 0 && !state.starts_with(['t', 'T']),
        "the target is alive, untraced and not stopped: {state}, tracer pid {tracer}"
    );
    assert_eq!(
        patched_code(pid),
        Vec::<u64>::new(),
        "no breakpoint or probe left in the target's code"
    );
}

const LLDB_LOGPOINT: &str =
    "DETRICS:n={(z)}\u{1f}{(long)strlen(name)}\u{1f}{(long)strlen(name)}\u{1f}{(long)strlen(name)}";

/// lldb-dap whose client vanishes does not detach safely (`fallback::relay`'s header: the
/// target died of SIGTRAP in 3 of 10 runs when lldb-dap saw the agent go); the guard's relay
/// detaches on the agent's behalf.
#[test]
fn agent_killed_during_an_lldb_round_leaves_the_target_running_untraced() {
    agent_killed_mid_round("c", LLDB_LOGPOINT, KillAt::Breakpoint);
}

#[test]
fn agent_killed_while_lldb_attaches_leaves_the_target_running_untraced() {
    agent_killed_mid_round("c", LLDB_LOGPOINT, KillAt::Attaching);
}

#[test]
fn agent_killed_as_lldb_starts_leaves_the_target_running_untraced() {
    agent_killed_mid_round("c", LLDB_LOGPOINT, KillAt::DebuggerStarted);
}

#[test]
fn agent_killed_during_a_delve_round_leaves_the_target_running_untraced() {
    agent_killed_mid_round("go", DELVE_LOGPOINT, KillAt::Breakpoint);
}

const DELVE_LOGPOINT: &str =
    "DETRICS:n={z}\u{1f}{u.GetBalance()}\u{1f}{u.GetBalance()}\u{1f}{u.GetBalance()}";

/// Delve killed (with the agent and its guard) while it is attaching: ptrace stops of its
/// attach, no breakpoint of its own yet.
#[test]
fn agent_killed_while_delve_attaches_leaves_the_target_running_untraced() {
    agent_killed_mid_round("go", DELVE_LOGPOINT, KillAt::Attaching);
}

#[test]
fn agent_killed_as_delve_starts_leaves_the_target_running_untraced() {
    agent_killed_mid_round("go", DELVE_LOGPOINT, KillAt::DebuggerStarted);
}
