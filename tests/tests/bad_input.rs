//! Mistakes a user can make: each must end the agent with a non-zero exit and a message that
//! says what is wrong, and must leave the target program running.

use std::path::Path;
use std::process::Command;

use detrix_e2e::{
    agent_bin, build_c_fixture, c_fixture_source, capture_args, marker_line, require_root,
    run_agent, run_with_timeout, AgentCopy, Build, Fixture, AGENT_TIMEOUT,
};
use libc as _;
use serde_json as _;

const DELAY_MS: u32 = 20;

fn process_at() -> String {
    let line = marker_line(&c_fixture_source("orders"), "process");
    format!("orders.c:{line}")
}

#[test]
fn pid_not_found() {
    require_root();
    agent_bin();
    let pid: u32 = 4_194_000;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "test assumption broken: pid {pid} exists on this machine"
    );
    run_agent(&capture_args(
        pid,
        &process_at(),
        &["round"],
        &["--count", "1"],
    ))
    .assert_failure_with(&format!("no process with pid {pid}"));
}

#[test]
fn file_not_in_debug_info() {
    require_root();
    agent_bin();
    let mut fixture = Fixture::orders(DELAY_MS);
    run_agent(&capture_args(
        fixture.pid(),
        "nosuch.c:10",
        &["round"],
        &["--count", "1"],
    ))
    .assert_failure_with("no source file `nosuch.c`");
    fixture.assert_keeps_running(2);
}

#[test]
fn line_without_code() {
    require_root();
    agent_bin();
    let src = c_fixture_source("orders");
    let text = std::fs::read_to_string(&src).expect("read orders.c");
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.trim_start().starts_with("/*")),
        "test assumption broken: line 1 of {} should be a comment",
        src.display()
    );
    let mut fixture = Fixture::orders(DELAY_MS);
    run_agent(&capture_args(
        fixture.pid(),
        "orders.c:1",
        &["round"],
        &["--count", "1"],
    ))
    .assert_failure_with("has no code; nearest lines with code:");
    fixture.assert_keeps_running(2);
}

#[test]
fn variable_not_in_scope() {
    require_root();
    agent_bin();
    let mut fixture = Fixture::orders(DELAY_MS);
    let out = run_agent(&capture_args(
        fixture.pid(),
        &process_at(),
        &["nosuchvar"],
        &["--count", "1"],
    ));
    out.assert_failure_with("`nosuchvar` is not in scope at")
        .assert_failure_with("in scope:");
    let (_, listed) = out
        .stderr
        .split_once("in scope:")
        .expect("checked just above");
    assert!(
        listed
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == "cost"),
        "the in-scope list should name `cost`:\n{}",
        out.stderr
    );
    fixture.assert_keeps_running(2);
}

#[test]
fn no_debug_info() {
    require_root();
    agent_bin();
    let exe = build_c_fixture("orders", Build::NoDebugStripped);
    let mut fixture = Fixture::start(&exe, &["-1", &DELAY_MS.to_string()]);
    run_agent(&capture_args(
        fixture.pid(),
        "orders.c:30",
        &["round"],
        &["--count", "1"],
    ))
    .assert_failure_with("has no debug info");
    fixture.assert_keeps_running(2);
}

#[test]
fn not_root() {
    require_root();
    // `nobody` may not be able to reach the build tree; run a world-readable copy.
    let copy = AgentCopy::new();
    let mut fixture = Fixture::orders(DELAY_MS);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(copy.bin())
        .args(capture_args(
            fixture.pid(),
            &process_at(),
            &["round"],
            &["--count", "1"],
        ));
    run_with_timeout(cmd, AGENT_TIMEOUT)
        .assert_failure_with("needs root or CAP_BPF and CAP_PERFMON");
    fixture.assert_keeps_running(2);
}

#[test]
fn bad_expression_syntax() {
    require_root();
    agent_bin();
    let mut fixture = Fixture::orders(DELAY_MS);
    run_agent(&capture_args(
        fixture.pid(),
        &process_at(),
        &["o->"],
        &["--count", "1"],
    ))
    .assert_failure_with("expression");
    fixture.assert_keeps_running(2);
}
