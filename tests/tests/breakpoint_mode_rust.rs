//! Breakpoint mode on a Rust target (issue #7), driven through `detrix-agent attach` by the
//! daemon emulator as a `rust` + pid connection: plain breakpoints on the Rust call-chain
//! fixture (`tests/fixtures/bp/chain.rs`, main → a → b → c, built with
//! `-C force-frame-pointers=yes`) are answered from in-kernel snapshots whose frames and locals
//! equal what the program printed, and a Rust function call — in an `evaluate` of a stop or in
//! a logpoint template — gets the sentence saying lldb cannot evaluate Rust calls, without any
//! debugger being spawned.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use common::{patched_code, req, set_bps, AttachedAgent, Dap, RestStub, STEP_TIMEOUT};
use detrix_e2e::{
    child_processes, fixtures_out_dir, line_of, require_root, round_printed, workspace_root,
    Fixture,
};
use serde_json::json;

const GO_GOLDEN: &str = "shared/go-delve.jsonl";
const RUST_GOLDEN: &str = "shared/rust-stub.jsonl";

/// The agent's answer to a Rust call (`RUST_CALL_MESSAGE` in detrix-agent/src/dap/facade.rs).
const RUST_CALL_MESSAGE: &str = "function calls in Rust expressions cannot be evaluated: lldb has no Rust expression \
     evaluator (lldb-dap answers `Expression evaluation in Rust not supported`); capture the values the function would \
     read instead";

/// Tests here take turns: they build and run the same fixture binary.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn src() -> PathBuf {
    workspace_root()
        .join("tests/fixtures/bp/chain.rs")
        .canonicalize()
        .expect("the Rust bp fixture source exists")
}

/// Debug build with frame pointers forced: the agent's stack walk follows frame pointers, and
/// without them rustc's x86_64 code loses b, a and main from the walk.
fn build() -> PathBuf {
    let out = fixtures_out_dir();
    std::fs::create_dir_all(&out).expect("create the fixtures directory");
    let exe = out.join("bp_chain_rs");
    let st = Command::new("rustc")
        .args([
            "-g",
            "-C",
            "opt-level=0",
            "-C",
            "force-frame-pointers=yes",
            "-o",
        ])
        .arg(&exe)
        .arg(src())
        .status()
        .expect("run rustc");
    assert!(st.success(), "rustc {}: {st}", src().display());
    exe
}

struct Session {
    fixture: Fixture,
    agent: AttachedAgent,
    dap: Dap,
    _stub: RestStub,
    /// Last: released after the fixture and the agent are gone.
    _turn: std::sync::MutexGuard<'static, ()>,
}

fn start() -> Session {
    require_root();
    let turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let exe = build();
    let fixture = Fixture::start(&exe, &["20"]);
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = AttachedAgent::start(fixture.pid(), &["--daemon-url", &stub.url], &[]);
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!(s, 200, "{wake}\n{}", agent.stderr.text());
    assert_eq!(
        stub.lock().registrations[0]["language"],
        "rust",
        "a Rust target registers as rust + pid"
    );
    let (_, dap) = stub.take_session();
    Session {
        _turn: turn,
        fixture,
        agent,
        dap,
        _stub: stub,
    }
}

#[test]
fn rust_breakpoint_answers_frames_and_locals_from_the_snapshot_and_refuses_calls() {
    let mut s = start();
    let path = src();
    let p = path.to_string_lossy().into_owned();
    let want: Vec<(String, u64)> = [
        ("chain::c", "PROBE:c"),
        ("chain::b", "CALL:b"),
        ("chain::a", "CALL:a"),
        ("chain::main", "CALL:main"),
    ]
    .iter()
    .map(|(f, m)| ((*f).to_owned(), line_of(&path, m)))
    .collect();
    let r = s.dap.request(&set_bps(1, &p, json!([{"line": want[0].1}])));
    assert_eq!(
        r["body"]["breakpoints"][0]["verified"],
        true,
        "{r}\n{}",
        s.agent.stderr.text()
    );
    let mut seq = 10;
    let mut next = || {
        seq += 1;
        seq
    };
    for _ in 0..5 {
        let stops = s.dap.events(1, STEP_TIMEOUT, |e| e["event"] == "stopped");
        assert_eq!(
            stops.len(),
            1,
            "no stopped event; agent stderr:\n{}",
            s.agent.stderr.text()
        );
        let stopped = &stops[0]["body"];
        assert_eq!(
            (
                stopped["reason"].clone(),
                stopped["allThreadsStopped"].clone()
            ),
            (json!("breakpoint"), json!(true)),
            "{stopped}"
        );
        // c runs on the main thread, whose tid is the pid.
        assert_eq!(stopped["threadId"], json!(s.fixture.pid()), "{stopped}");
        let thread = stopped["threadId"].clone();
        // The daemon's cycle (contract.md §9): stackTrace 1, stackTrace 1000, scopes, variables, evaluate…, continue.
        let top = s.dap.request(&req(
            next(),
            "stackTrace",
            json!({"threadId": thread, "startFrame": 0, "levels": 1}),
        ));
        assert_eq!(
            top["body"]["stackFrames"].as_array().map(Vec::len),
            Some(1),
            "{top}"
        );
        let frame_id = top["body"]["stackFrames"][0]["id"].clone();
        let all = s.dap.request(&req(
            next(),
            "stackTrace",
            json!({"threadId": thread, "startFrame": 0, "levels": 1000}),
        ));
        let frames = all["body"]["stackFrames"].as_array().unwrap();
        let got: Vec<(String, u64)> = frames
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_owned(),
                    f["line"].as_u64().unwrap(),
                )
            })
            .collect();
        assert!(got.len() >= 4, "{all}");
        assert_eq!(
            &got[..4],
            &want[..],
            "frames c → b → a → main with their lines: {got:?}"
        );
        for f in &frames[..4] {
            assert_eq!(f["source"]["path"], json!(p), "{f}");
        }
        let scopes = s
            .dap
            .request(&req(next(), "scopes", json!({"frameId": frame_id})));
        let vref = scopes["body"]["scopes"][0]["variablesReference"].clone();
        let vars = s.dap.request(&req(
            next(),
            "variables",
            json!({"variablesReference": vref, "count": 100}),
        ));
        let locals: HashMap<String, String> = vars["body"]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_owned(),
                    v["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let z: i64 = locals["z"]
            .parse()
            .unwrap_or_else(|_| panic!("z: {locals:?}"));
        let kv = round_printed(&s.fixture, z);
        assert_eq!(locals["w"], kv["w"], "w as printed: {locals:?}");
        assert_eq!(
            locals["name"],
            format!("\"{}\"", kv["name"]),
            "name as printed: {locals:?}"
        );
        let mut names: Vec<&str> = locals.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["name", "u", "w", "z"],
            "c's parameters and locals: {locals:?}"
        );
        let eval = |dap: &mut Dap, seq: i64, e: &str| {
            dap.request(&req(
                seq,
                "evaluate",
                json!({"expression": e, "frameId": frame_id, "context": "watch"}),
            ))
        };
        let w = eval(&mut s.dap, next(), "w");
        assert_eq!(
            (w["success"].clone(), w["body"]["result"].clone()),
            (json!(true), json!(kv["w"])),
            "{w}"
        );
        // A rust connection sends calls as plain `evaluate`s: lldb could not run them.
        for call in ["u.get_balance()", "name.len()"] {
            let r = eval(&mut s.dap, next(), call);
            assert_eq!(r["success"], false, "{r}");
            assert_eq!(r["message"], RUST_CALL_MESSAGE, "{r}");
            assert_eq!(
                r["body"]["error"]["format"], RUST_CALL_MESSAGE,
                "the daemon stores `<evaluation failed: {{error.format}}>`: {r}"
            );
        }
        let c = s
            .dap
            .request(&req(next(), "continue", json!({"threadId": thread})));
        assert_eq!(c["success"], true);
    }
    assert!(
        child_processes(s.agent.child.id()).is_empty(),
        "no debugger spawned for Rust calls: {:?}",
        child_processes(s.agent.child.id())
    );
    assert!(
        !patched_code(s.fixture.pid()).is_empty(),
        "the breakpoint is a uprobe in the target"
    );
    assert!(s.fixture.is_running());
}

#[test]
fn rust_call_in_a_logpoint_says_lldb_cannot_and_the_other_values_are_captured() {
    let mut s = start();
    let path = src();
    let p = path.to_string_lossy().into_owned();
    let probe = line_of(&path, "PROBE:c");
    let r = s.dap.request(&set_bps(1, &p, json!([{"line": probe, "logMessage": "DETRICS:rcall={z}\u{1f}{u.get_balance()}\u{1f}{name}"}])));
    assert_eq!(
        r["body"]["breakpoints"][0]["verified"],
        true,
        "{r}\n{}",
        s.agent.stderr.text()
    );
    let outs = s.dap.events(5, STEP_TIMEOUT, |e| {
        e["event"] == "output"
            && e["body"]["output"]
                .as_str()
                .unwrap_or("")
                .contains("DETRICS:rcall=")
    });
    assert_eq!(
        outs.len(),
        5,
        "five logpoint outputs; agent stderr:\n{}",
        s.agent.stderr.text()
    );
    let error_value = serde_json::to_string(&format!("<error: {RUST_CALL_MESSAGE}>")).unwrap();
    for o in &outs {
        let text = o["body"]["output"].as_str().unwrap();
        let prefix = format!("[thread {}] DETRICS:rcall=", s.fixture.pid());
        let rest = text
            .strip_prefix(&prefix)
            .and_then(|t| t.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("rust prefix, one line: {text:?}"));
        let vals: Vec<&str> = rest.split('\u{1f}').collect();
        assert_eq!(vals.len(), 3, "{text:?}");
        let kv = round_printed(&s.fixture, vals[0].parse().unwrap());
        assert_eq!(vals[1], error_value, "the call's value says why: {text:?}");
        assert_eq!(
            vals[2],
            format!("\"{}\"", kv["name"]),
            "name as printed: {text:?}"
        );
    }
    assert!(
        child_processes(s.agent.child.id()).is_empty(),
        "no debugger spawned for Rust calls"
    );
    assert!(s.fixture.is_running());
}
