//! Stacks captured at a hit without stopping the target: frames (function, line) equal the
//! fixture's known call chain, with frame pointers (-O0) and without them (-O2, where
//! `process` is inlined into `main` and only CFI can find the caller).

use std::process::Command;

use detrix_e2e::{agent_bin, build_c_fixture, c_fixture_source, capture_args, marker_line, require_root, run_with_timeout, Build, Fixture, AGENT_TIMEOUT};

/// `(function, line)` of each frame in the event's `stack`, up to the first frame outside the
/// executable.
fn frames(v: &serde_json::Value) -> Vec<(String, i64)> {
    let stack = v["stack"].as_array().cloned().unwrap_or_default();
    stack
        .iter()
        .take_while(|f| f["module"].is_null())
        .map(|f| (f["function"].as_str().unwrap_or("?").to_owned(), f["line"].as_i64().unwrap_or(0)))
        .collect()
}

fn check(build: Build) {
    require_root();
    let bin = agent_bin();
    let exe = build_c_fixture("orders", build);
    let mut fixture = Fixture::start(&exe, &["-1", "20"]);
    let src = c_fixture_source("orders");
    let at = format!("orders.c:{}", marker_line(&src, "process"));
    // The caller's frame is at main's call of process().
    let text = std::fs::read_to_string(&src).expect("fixture source");
    let call_line = text.lines().position(|l| l.contains("= process(&o, round);")).expect("call site in orders.c") + 1;
    let mut cmd = Command::new(bin);
    cmd.args(capture_args(fixture.pid(), &at, &["round"], &["--format", "json", "--count", "3", "--stack"]));
    let out = run_with_timeout(cmd, AGENT_TIMEOUT);
    out.assert_success();
    let events: Vec<serde_json::Value> = out.stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).expect("JSON event line")).collect();
    assert_eq!(events.len(), 3, "{}", out.stderr);
    for e in &events {
        let got = frames(e);
        let want = vec![("process".to_owned(), i64::from(marker_line(&src, "process"))), ("main".to_owned(), call_line as i64)];
        assert_eq!(got, want, "stack of {e} ({build:?})");
        // The first frame outside the executable is libc's, named by module.
        let stack = e["stack"].as_array().cloned().unwrap_or_default();
        assert!(stack.iter().any(|f| f["module"].as_str().is_some_and(|m| m.starts_with("libc"))), "libc frame in {e}");
    }
    fixture.assert_keeps_running(3);
}

#[test]
fn stack_with_frame_pointers_o0() {
    check(Build::Debug);
}

#[test]
fn stack_without_frame_pointers_o2_unwound_with_cfi() {
    check(Build::Optimized);
}
