//! Statements whose code an optimizing compiler splits into several row runs on different paths
//! (`tests/fixtures/split*`: a loop condition that calls, rotated by gcc/g++ -O2 and rustc
//! opt-level=2; a Go `append` that may grow the slice before the print on the next line): every
//! execution of the line must pass exactly one probe. Each probe line prints once per
//! execution, so the hits must be exactly the printed calls, in order, between the first and
//! the last hit, and every captured value equal to the printed one.

mod lang;

use std::collections::HashMap;
use std::time::Duration;

use detrix_e2e::{
    agent_bin, capture_args, json_int, require_root, run_agent, Event, Fixture, Value,
};
use lang::{marker_line, FixtureBuild};

/// Delay between the fixture's rounds.
const DELAY_MS: &str = "20";
/// How long to wait for the fixture to print the line of a captured hit.
const PRINT_WAIT: Duration = Duration::from_secs(5);

/// The `key=value` fields of a printed line (tab-separated, or space-separated for C).
fn fields(line: &str) -> HashMap<String, String> {
    let words: Vec<&str> = if line.contains('\t') {
        line.split('\t').collect()
    } else {
        line.split_whitespace().collect()
    };
    words
        .iter()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn first_word(line: &str) -> &str {
    line.split(['\t', ' ']).next().unwrap_or_default()
}

/// One probe of a split fixture: its marker, the first word of the line printed once per
/// execution, and the captured expressions with the printed key each must equal (integers).
struct SplitProbe {
    marker: &'static str,
    printed: &'static str,
    /// (expression, printed key); the first ones up to `keys` identify the printed line.
    exprs: &'static [(&'static str, &'static str)],
    keys: usize,
}

/// Captures `count` hits of `probe` in the running `build` and checks hits == printed calls
/// and every value.
fn check_probe(build: &FixtureBuild, fixture: &Fixture, probe: &SplitProbe, count: usize) {
    let line = marker_line(&build.source(), probe.marker);
    let at = format!("{}:{line}", build.file);
    let names: Vec<&str> = probe.exprs.iter().map(|(e, _)| *e).collect();
    let out = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &names,
        &["--count", &count.to_string(), "--format", "json"],
    ));
    out.assert_success();
    let hits: Vec<Event> = out
        .stdout_lines()
        .into_iter()
        .map(detrix_e2e::parse_event_allowing_goid)
        .collect();
    assert_eq!(
        hits.len(),
        count,
        "{}: {}\n{}",
        build.id,
        out.command,
        out.stdout
    );
    let key_of = |f: &HashMap<String, String>| -> Vec<String> {
        probe.exprs[..probe.keys]
            .iter()
            .map(|(_, k)| f.get(*k).cloned().unwrap_or_default())
            .collect()
    };
    let hit_key = |h: &Event| -> Vec<String> {
        probe.exprs[..probe.keys]
            .iter()
            .map(|(e, _)| {
                let v = h
                    .values
                    .get(*e)
                    .unwrap_or_else(|| panic!("event lacks `{e}`: {}", h.raw));
                json_int(v).map_or_else(|| v.to_string(), |n| n.to_string())
            })
            .collect()
    };
    // Every hit's printed line, and the values in it.
    let mut printed_index = Vec::new();
    for h in &hits {
        let want_key = hit_key(h);
        let printed = fixture
            .stdout()
            .wait_for(PRINT_WAIT, |l| {
                first_word(l) == probe.printed && key_of(&fields(l)) == want_key
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}: the fixture never printed a `{}` line with {want_key:?} for {}",
                    build.id, probe.printed, h.raw
                )
            });
        let f = fields(&printed);
        for (expr, key) in probe.exprs {
            let v: &Value = h
                .values
                .get(*expr)
                .unwrap_or_else(|| panic!("event lacks `{expr}`: {}", h.raw));
            // `#key`: the captured array's length is the printed `key`.
            let (key, got) = match key.strip_prefix('#') {
                Some(k) => (k, v.as_array().and_then(|a| i128::try_from(a.len()).ok())),
                None => (*key, json_int(v)),
            };
            let want: i128 = f
                .get(key)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("printed line lacks an integer `{key}=`: {printed}"));
            assert_eq!(
                got,
                Some(want),
                "{}: `{expr}` differs from what the program printed\n  event:   {}\n  printed: {printed}",
                build.id,
                h.raw
            );
        }
        let lines = fixture.stdout().snapshot();
        let idx = lines
            .iter()
            .position(|l| *l == printed)
            .expect("the printed line is in the output");
        printed_index.push(idx);
    }
    // Hits == calls: the printed calls between the first and the last hit, in order, are
    // exactly the hits (a missed run would leave a gap, a doubled one a repeat).
    // The copies of a line attach one after another: start at the second round seen, when
    // every probe is in.
    let round = |h: &Event| hit_key(h)[0].clone();
    let start = hits
        .iter()
        .position(|h| round(h) != round(&hits[0]))
        .unwrap_or_else(|| panic!("{}: all {count} hits are of one round", build.id));
    let hits = &hits[start..];
    let lines = fixture.stdout().snapshot();
    let (first, last) = (printed_index[start], printed_index[count - 1]);
    let calls: Vec<Vec<String>> = lines[first..=last]
        .iter()
        .filter(|l| first_word(l) == probe.printed)
        .map(|l| key_of(&fields(l)))
        .collect();
    let got: Vec<Vec<String>> = hits.iter().map(hit_key).collect();
    assert_eq!(
        got,
        calls,
        "{}: at {at} the hits are not exactly the calls the program printed ({} calls, {} hits)",
        build.id,
        calls.len(),
        got.len()
    );
}

/// `resolve` reports, for a copy with several runs, one sentence per run; the kept ones are
/// the copy's points.
fn check_resolve_runs(build: &FixtureBuild, marker: &str, gives_way: usize, kept: usize) {
    let exe = build.build();
    let line = marker_line(&build.source(), marker);
    let out = run_agent(&[
        "resolve".to_string(),
        "--binary".to_string(),
        exe.display().to_string(),
        "--at".to_string(),
        format!("{}:{line}", build.file),
    ]);
    out.assert_success();
    let v: Value = serde_json::from_str(&out.stdout).expect("resolve prints JSON");
    let points = v["points"].as_array().expect("points");
    assert_eq!(
        points.len(),
        kept,
        "{}: kept runs\n{}",
        build.id,
        out.stdout
    );
    for p in points {
        let runs: Vec<&str> = p["runs"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no `runs` in {p}", build.id))
            .iter()
            .map(|r| r.as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            runs.iter().filter(|r| r.contains(" gives way: ")).count(),
            gives_way,
            "{}: {runs:?}",
            build.id
        );
        assert_eq!(
            runs.iter().filter(|r| r.contains(" kept: ")).count(),
            kept,
            "{}: {runs:?}",
            build.id
        );
        let addr = p["addr"].as_str().unwrap_or_default();
        assert!(
            runs.iter()
                .any(|r| r.starts_with(&format!("run at {addr} kept: "))),
            "{}: the point at {addr} is not a kept run: {runs:?}",
            build.id
        );
    }
}

const MORE: SplitProbe = SplitProbe {
    marker: "more",
    printed: "more",
    exprs: &[("i", "i"), ("k", "k"), ("n", "n")],
    keys: 2,
};

fn run_split(build: FixtureBuild, probes: &[(&SplitProbe, usize)]) {
    require_root();
    agent_bin();
    let exe = build.build();
    let mut fixture = Fixture::start(&exe, &["-1", DELAY_MS]);
    for (probe, count) in probes {
        check_probe(&build, &fixture, probe, *count);
    }
    assert!(fixture.is_running(), "{}: the fixture stopped", build.id);
}

#[test]
fn split_c_o2_every_execution_once() {
    check_resolve_runs(&lang::SPLIT_C_O2, "more", 1, 1);
    let step = SplitProbe {
        marker: "step",
        printed: "step",
        exprs: &[("i", "i"), ("v", "v"), ("g_slow", "g_slow")],
        keys: 1,
    };
    run_split(lang::SPLIT_C_O2, &[(&MORE, 16), (&step, 8)]);
}

#[test]
fn split_cpp_o2_every_execution_once() {
    check_resolve_runs(&lang::SPLIT_CPP_O2, "more", 1, 1);
    let step = SplitProbe {
        marker: "step",
        printed: "step",
        exprs: &[("i", "i"), ("v", "v"), ("g_slow", "g_slow")],
        keys: 1,
    };
    run_split(lang::SPLIT_CPP_O2, &[(&MORE, 16), (&step, 8)]);
}

#[test]
fn split_rust_o2_every_execution_once() {
    // The condition's runs are on disjoint paths (the first test and the loop's latch): both
    // keep a probe.
    check_resolve_runs(&lang::SPLIT_RUST_O2, "more", 0, 2);
    let push = SplitProbe {
        marker: "push",
        printed: "push",
        exprs: &[("i", "i"), ("v", "v")],
        keys: 1,
    };
    run_split(lang::SPLIT_RUST_O2, &[(&MORE, 16), (&push, 10)]);
}

/// Rust release: `doubled` is optimized out on the print's line (its location list ends at the
/// call); it is that value's error on every hit, `i` and `t` next to it exact.
#[test]
fn rust_o2_optimized_out_value_is_an_error_next_to_live_ones() {
    require_root();
    agent_bin();
    let build = lang::SPLIT_RUST_O2;
    let exe = build.build();
    let fixture = Fixture::start(&exe, &["-1", DELAY_MS]);
    let line = marker_line(&build.source(), "tally");
    let at = format!("{}:{line}", build.file);
    let out = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &["i", "doubled", "t"],
        &["--count", "4", "--format", "json"],
    ));
    out.assert_success();
    let hits: Vec<Event> = out
        .stdout_lines()
        .into_iter()
        .map(detrix_e2e::parse_event_allowing_goid)
        .collect();
    assert_eq!(hits.len(), 4, "{}", out.stdout);
    let exprs: Vec<&str> = hits[0].values.keys().map(String::as_str).collect();
    assert_eq!(
        exprs,
        ["i", "doubled", "t"],
        "every value, in the order asked"
    );
    for h in &hits {
        let addr = h.values["doubled"]["error"]
            .as_str()
            .and_then(|e| e.split(" is optimized out at ").nth(1))
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("`doubled` is not an optimized-out error: {}", h.raw));
        assert_eq!(
            h.values["doubled"],
            serde_json::json!({ "error": format!("`doubled` is optimized out at {addr} ({}:{line}); try a line where it is live", build.debug_source().display()) }),
            "{}",
            h.raw
        );
        let i = json_int(&h.values["i"]).expect("i is an integer");
        let printed = fixture
            .stdout()
            .wait_for(PRINT_WAIT, |l| {
                first_word(l) == "tally" && fields(l).get("i") == Some(&i.to_string())
            })
            .unwrap_or_else(|| panic!("no `tally` line for {}", h.raw));
        let t: i128 = fields(&printed)["t"].parse().expect("printed t");
        assert_eq!(json_int(&h.values["t"]), Some(t), "{}\n{printed}", h.raw);
    }
}

#[test]
fn split_go_opt_every_execution_once() {
    // The print's piece on the growth path gives way to the run after the join.
    check_resolve_runs(&lang::SPLIT_GO123_OPT, "add", 1, 1);
    let add = SplitProbe {
        marker: "add",
        printed: "add",
        exprs: &[("i", "i"), ("v", "v"), ("a.Items", "#len")],
        keys: 1,
    };
    run_split(lang::SPLIT_GO123_OPT, &[(&add, 12)]);
}
