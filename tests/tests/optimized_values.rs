//! Values of optimized builds that a debugger shows and the agent must too (issue #16): every
//! local of a line with more than the old 16-value plan (a breakpoint-mode snapshot is all
//! locals plus the stack), and structs the compiler split into pieces of which some have no
//! location (the members that have one, the others `optimized out`, never zero-filled). Each
//! value is compared with what the running fixture printed for the same hit.

mod lang;

use std::collections::HashMap;
use std::time::Duration;

use detrix_e2e::{
    agent_bin, capture_args, json_int, require_root, run_agent, Fixture, Value, LINE_TIMEOUT,
};
use lang::marker_line;

/// Delay between the fixture's rounds.
const DELAY_MS: &str = "20";
/// How long to wait for the fixture to print the line of a captured hit.
const PRINT_WAIT: Duration = Duration::from_secs(5);

/// The space-separated `key=value` fields of a printed line.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The JSON events of a `capture --format json` run.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The line the fixture printed starting with `prefix` (`family round=7 `).
fn printed_line(fixture: &Fixture, prefix: &str) -> String {
    fixture
        .stdout()
        .wait_for(PRINT_WAIT, |l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("the fixture never printed `{prefix}...`"))
}

/// The 20 parameters and locals of `family` (c/dwexpr.c, `-O2`) at its printf, where the
/// fixture prints each: 16 computed by DWARF expressions, 4 parameters.
const FAMILY: [&str; 20] = [
    "round", "x", "y", "u", "nz", "eqy", "lt", "sum", "diff", "twice", "masked", "ored", "flipped",
    "inv", "negx", "shl", "shr", "shra", "quot", "rem",
];

/// `--locals` at a line with 20 locals, alone and with the CFI stack (5 more values): all 20,
/// each exactly what the fixture printed (the plan held 16 values before ABI 9, so 4 of them,
/// 9 with the stack, were left out).
#[test]
fn twenty_locals_each_exact_with_and_without_the_stack() {
    require_root();
    agent_bin();
    let build = lang::C_DWEXPR_O2;
    let exe = build.build();
    let line = marker_line(&build.debug_source(), "family");
    let mut fixture = Fixture::start(&exe, &["-1", DELAY_MS]);
    let at = format!("dwexpr.c:{line}");
    for extra in [&[][..], &["--stack"][..]] {
        let mut flags = vec!["--locals", "--count", "3", "--format", "json"];
        flags.extend_from_slice(extra);
        let out = run_agent(&capture_args(fixture.pid(), &at, &[], &flags));
        out.assert_success();
        let hits = events(&out.stdout);
        assert_eq!(hits.len(), 3, "{extra:?}: {}\n{}", out.stdout, out.stderr);
        for hit in &hits {
            let locals = hit["locals"].as_object().expect("locals object");
            let mut names: Vec<&str> = locals.keys().map(String::as_str).collect();
            names.sort_unstable();
            let mut want = FAMILY.to_vec();
            want.sort_unstable();
            assert_eq!(names, want, "{extra:?}: {hit}");
            let round = json_int(&locals["round"]).expect("round is an integer");
            let printed = printed_line(&fixture, &format!("family round={round} "));
            let f = fields(&printed);
            for name in FAMILY {
                assert_eq!(
                    json_int(&locals[name]).map(|v| v.to_string()).as_deref(),
                    f.get(name).map(String::as_str),
                    "{extra:?}: `{name}` in {hit}\nprinted: {printed}"
                );
            }
            if extra.is_empty() {
                assert!(hit.get("stack").is_none(), "{hit}");
            } else {
                let top = &hit["stack"][0]["function"];
                assert_eq!(top.as_str(), Some("family"), "{hit}");
            }
        }
    }
    assert_survived(&mut fixture);
}

/// The fixture is still running and printing rounds after the captures.
fn assert_survived(fixture: &mut Fixture) {
    let done = fixture
        .stdout()
        .snapshot()
        .iter()
        .filter(|l| l.starts_with("after"))
        .count();
    let more = fixture
        .stdout()
        .wait_count(done + 3, LINE_TIMEOUT, |l| l.starts_with("after"));
    assert!(
        fixture.is_running() && more,
        "the fixture stopped running or printing after the captures"
    );
}
