//! Binaries whose DWARF was stripped into a separate file, as distributions ship them: the
//! agent finds it by `.gnu_debuglink` beside the binary and by build-id under a debug root,
//! and the captured values equal what the program printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use detrix_e2e::{
    agent_bin, c_fixture_source, capture_args, fixtures_out_dir, marker_line, parse_events,
    parse_kv, require_root, run_with_timeout, Fixture, AGENT_TIMEOUT,
};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds orders.c with -g into `dir`, moves its DWARF into `orders.debug`, strips the binary.
fn split_build(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("fixture dir");
    let exe = dir.join("orders");
    let dbg = dir.join("orders.debug");
    run(Command::new("gcc")
        .args(["-g", "-O0", "-o"])
        .arg(&exe)
        .arg(c_fixture_source("orders")));
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&exe)
        .arg(&dbg));
    run(Command::new("strip").arg("-g").arg(&exe));
    (exe, dbg)
}

fn build_id(exe: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(exe)
        .output()
        .expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("a build-id note")
        .trim()
        .to_owned()
}

fn capture_and_compare(exe: &Path, env: &[(&str, &Path)]) {
    let fixture = Fixture::start(exe, &["-1", "20"]);
    let src = c_fixture_source("orders");
    let at = format!("orders.c:{}", marker_line(&src, "process"));
    let mut cmd = Command::new(agent_bin());
    cmd.args(capture_args(
        fixture.pid(),
        &at,
        &["round", "o->id", "o->customer", "g_counter"],
        &["--format", "json", "--count", "3"],
    ));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_timeout(cmd, AGENT_TIMEOUT);
    out.assert_success();
    let events = parse_events(&out);
    assert_eq!(events.len(), 3, "{}", out.stderr);
    for e in events {
        let round = i64::try_from(e.int("round")).expect("round fits");
        let line = fixture.process_line(round, Duration::from_secs(5));
        let kv = parse_kv(&line);
        assert_eq!(
            Some(e.int("o->id").to_string()),
            kv.get("id").cloned(),
            "{line}"
        );
        // A `char *` is its text.
        assert_eq!(
            e.value("o->customer").as_str().map(str::to_owned),
            Some(kv["customer"].clone()),
            "{line}"
        );
        assert_eq!(
            Some(e.int("g_counter").to_string()),
            kv.get("g_counter").cloned(),
            "{line}"
        );
    }
}

#[test]
fn finds_dwarf_by_gnu_debuglink() {
    require_root();
    let dir = fixtures_out_dir().join("separate-debuglink");
    let (exe, dbg) = split_build(&dir);
    run(Command::new("objcopy")
        .arg(format!("--add-gnu-debuglink={}", dbg.display()))
        .arg(&exe)
        .current_dir(&dir));
    capture_and_compare(&exe, &[]);
}

#[test]
fn finds_dwarf_by_build_id() {
    require_root();
    let dir = fixtures_out_dir().join("separate-buildid");
    let (exe, dbg) = split_build(&dir);
    let id = build_id(&exe);
    let root = dir.join("debug-root");
    let target = root
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(target.parent().expect("parent")).expect("debug root");
    std::fs::rename(&dbg, &target).expect("move the debug file under the build-id tree");
    capture_and_compare(&exe, &[("DETRIX_DEBUG_ROOT", &root)]);
}
