//! A line in a shared library the target mapped: the agent finds the library's debug info,
//! attaches in the library's file, and the captured values equal what the line printed.

use std::path::PathBuf;
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

fn build() -> PathBuf {
    let dir = fixtures_out_dir().join(format!("shared-lib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("fixture dir");
    run(Command::new("gcc")
        .args(["-g", "-O0", "-shared", "-fPIC", "-o"])
        .arg(dir.join("libtally.so"))
        .arg(c_fixture_source("libtally")));
    run(Command::new("gcc")
        .args(["-g", "-O0", "-o"])
        .arg(dir.join("tally_main"))
        .arg(c_fixture_source("tally_main"))
        .arg(format!("-L{}", dir.display()))
        .args(["-ltally", "-Wl,-rpath,$ORIGIN"]));
    dir.join("tally_main")
}

#[test]
fn captures_a_line_in_a_shared_library() {
    require_root();
    let exe = build();
    let mut fixture = Fixture::start(&exe, &["-1", "20"]);
    let src = c_fixture_source("libtally");
    let at = format!("libtally.c:{}", marker_line(&src, "tally"));
    let mut cmd = Command::new(agent_bin());
    cmd.args(capture_args(
        fixture.pid(),
        &at,
        &[
            "round",
            "t->count",
            "t->sum",
            "amount",
            "t->label",
            "tally_calls",
        ],
        &["--format", "json", "--count", "3"],
    ));
    let out = run_with_timeout(cmd, AGENT_TIMEOUT);
    out.assert_success();
    let events = parse_events(&out);
    assert_eq!(events.len(), 3, "{}", out.stderr);
    for e in events {
        let round = e.int("round");
        let line = fixture
            .stdout()
            .wait_for(Duration::from_secs(5), |l| {
                l.starts_with(&format!("tally round={round} "))
            })
            .expect("printed line");
        let kv = parse_kv(&line);
        // The probe runs at the start of the printf line: count, sum and calls are updated.
        assert_eq!(
            Some(e.int("t->count").to_string()),
            kv.get("count").cloned(),
            "{line}"
        );
        assert_eq!(
            e.value("t->sum").as_f64(),
            kv.get("sum").and_then(|s| s.parse().ok()),
            "{line}"
        );
        assert_eq!(
            e.value("amount").as_f64(),
            kv.get("amount").and_then(|s| s.parse().ok()),
            "{line}"
        );
        // A `char *` is its text.
        assert_eq!(
            e.value("t->label").as_str().map(str::to_owned),
            Some(kv["label"].clone()),
            "{line}"
        );
        assert_eq!(
            Some(e.int("tally_calls").to_string()),
            kv.get("calls").cloned(),
            "{line}"
        );
    }
    // The target lives on and keeps printing.
    let seen = fixture.stdout().len();
    assert!(
        fixture
            .stdout()
            .wait_count(seen + 3, Duration::from_secs(10), |l| l
                .starts_with("tally round=")),
        "fixture stopped printing"
    );
    assert!(fixture.is_running(), "fixture exited");
    let _ = std::fs::remove_dir_all(exe.parent().expect("dir"));
}
