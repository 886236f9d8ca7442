//! Captures values from each RUNNING multi-language fixture build (C/C++ -O0/-O2, Rust
//! debug/opt-level=3, Go 1.19/1.23 with `-N -l` and optimized) at every probe line, and checks
//! every captured value against what the fixture printed for the same hit. Where a build really
//! lost a value (optimized out, or in a register a uprobe cannot read), the capture must fail
//! with exactly the message `lang::probes` names. Go events must carry the goroutine id the
//! program printed for itself.

mod lang;

use std::collections::HashMap;
use std::time::Duration;

use detrix_e2e::{
    agent_bin, capture_args, json_int, require_root, run_agent, Fixture, Lines, Output, Value,
    LINE_TIMEOUT,
};
use lang::{error_text, marker_line, probes, Expect, FixtureBuild, Lang, Probe};

/// Delay between the fixture's rounds.
const DELAY_MS: &str = "20";
/// Hits captured per probe: three rounds of a line with two copies.
const COUNT: usize = 6;
/// How long to wait for the fixture to print the line of a captured hit.
const PRINT_WAIT: Duration = Duration::from_secs(5);

/// One hit as printed by `capture --format json` (`goid` for Go targets).
type Hit = detrix_e2e::Event;

/// The `key=value` fields of a printed line: tab-separated (C++, Rust, Go fixtures) or, for the
/// C fixture, space-separated. The first word (the probe name) has no `=` and is skipped.
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

/// A captured value as the fixture would print it in a key field (`round`, `site`, `what`).
fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn printed<'a>(f: &'a HashMap<String, String>, key: &str, line: &str) -> &'a str {
    f.get(key)
        .unwrap_or_else(|| panic!("printed line lacks `{key}=`: {line}"))
}

/// Checks one captured value against the printed line, panicking with both on a mismatch.
fn check(hit: &Hit, expr: &str, expect: Expect, f: &HashMap<String, String>, line: &str) {
    let v = hit
        .values
        .get(expr)
        .unwrap_or_else(|| panic!("event has no value for `{expr}`: {}", hit.raw));
    if let Some(err) = v.as_object().and_then(|o| o.get("error")) {
        panic!(
            "reading `{expr}` failed: {err}\n  event:   {}\n  printed: {line}",
            hit.raw
        );
    }
    let want: String = match expect {
        Expect::Int(k) => {
            let want: i128 = printed(f, k, line)
                .parse()
                .unwrap_or_else(|e| panic!("printed `{k}` is not an integer ({e}): {line}"));
            let got = json_int(v).unwrap_or_else(|| {
                panic!(
                    "`{expr}` = {v} is not a JSON integer\n  event:   {}\n  printed: {line}",
                    hit.raw
                )
            });
            assert_eq!(
                got, want,
                "`{expr}` captured {got}, program printed {want}\n  event:   {}\n  printed: {line}",
                hit.raw
            );
            return;
        }
        Expect::Float(k) => {
            let want: f64 = printed(f, k, line)
                .parse()
                .unwrap_or_else(|e| panic!("printed `{k}` is not a number ({e}): {line}"));
            let got = v.as_f64().unwrap_or_else(|| {
                panic!(
                    "`{expr}` = {v} is not a JSON number\n  event:   {}\n  printed: {line}",
                    hit.raw
                )
            });
            assert!(got.to_bits() == want.to_bits(), "`{expr}` captured {got:?}, program printed {want:?}\n  event:   {}\n  printed: {line}", hit.raw);
            return;
        }
        Expect::Bool(k) => {
            let want = match printed(f, k, line) {
                "true" => true,
                "false" => false,
                other => panic!("printed `{k}={other}` is not a bool: {line}"),
            };
            assert_eq!(
                v.as_bool(),
                Some(want),
                "`{expr}` captured {v}, program printed {want}\n  event:   {}\n  printed: {line}",
                hit.raw
            );
            return;
        }
        Expect::Text(k) => {
            let got = v.as_str().unwrap_or_else(|| {
                panic!(
                    "`{expr}` = {v} is not a JSON string\n  event:   {}\n  printed: {line}",
                    hit.raw
                )
            });
            assert_eq!(
                got,
                printed(f, k, line),
                "`{expr}` differs from what the program printed\n  event:   {}\n  printed: {line}",
                hit.raw
            );
            return;
        }
        Expect::Json(k) => {
            let got = v.to_string();
            assert_eq!(got, printed(f, k, line), "`{expr}` (as JSON) differs from the program's {{:?}}\n  event:   {}\n  printed: {line}", hit.raw);
            return;
        }
        Expect::GoInts(k) => format!(
            "[]int len: {}, cap: {}, [{}]",
            printed(f, &format!("{k}.len"), line),
            printed(f, &format!("{k}.cap"), line),
            printed(f, k, line)
        ),
        Expect::GoStrs(k) => format!(
            "[]string len: {}, cap: {}, [{}]",
            printed(f, &format!("{k}.len"), line),
            printed(f, &format!("{k}.cap"), line),
            printed(f, k, line)
        ),
        Expect::Fmt(template) => {
            let mut text = template.to_string();
            for (k, val) in f {
                text = text.replace(&format!("${k}"), val);
            }
            assert!(
                !text.contains('$'),
                "template {template} names a key the line lacks: {line}"
            );
            text
        }
        Expect::AgentBug(inner, _) => return check(hit, expr, *inner, f, line),
        Expect::Error(_) => unreachable!("errors are checked without a hit"),
    };
    let got = v.as_str().unwrap_or_else(|| {
        panic!(
            "`{expr}` = {v} is not a JSON string\n  event:   {}\n  printed: {line}",
            hit.raw
        )
    });
    assert_eq!(got, want, "`{expr}` differs from the rendering of what the program printed\n  event:   {}\n  printed: {line}", hit.raw);
}

/// The line the fixture printed for `hit`: its first word is the probe's, and every key field
/// equals the captured key expression.
fn printed_line_of(out: &Lines, probe: &Probe, hit: &Hit) -> String {
    let keys: Vec<(&str, String)> = probe
        .keys
        .iter()
        .map(|(expr, key)| {
            let v = hit
                .values
                .get(*expr)
                .unwrap_or_else(|| panic!("event lacks the key expression `{expr}`: {}", hit.raw));
            (*key, key_text(v))
        })
        .collect();
    let first_word = |l: &str| l.split(['\t', ' ']).next().unwrap_or_default().to_string();
    out.wait_for(PRINT_WAIT, |l| {
        first_word(l) == probe.printed && {
            let f = fields(l);
            keys.iter().all(|(k, want)| f.get(*k) == Some(want))
        }
    })
    .unwrap_or_else(|| {
        let lines = out.snapshot();
        panic!(
            "the fixture never printed a `{}` line with {keys:?} within {PRINT_WAIT:?} for event {}; last lines:\n{}",
            probe.printed,
            hit.raw,
            lines[lines.len().saturating_sub(6)..].join("\n")
        )
    })
}

/// Captures `probe` and checks every value. With `known_bugs`, captures only the key
/// expressions and those marked [`Expect::AgentBug`] (nothing when there are none), checking
/// the latter against what they should be.
fn capture_probe(build: &FixtureBuild, fixture: &Fixture, probe: &Probe, known_bugs: bool) {
    let line = marker_line(&build.source(), probe.name);
    let at = format!("{}:{line}", build.file);
    let is_bug = |e: &Expect| matches!(e, Expect::AgentBug(..));
    let values: Vec<(&str, Expect)> = if known_bugs {
        if !probe.exprs.iter().any(|(_, e)| is_bug(e)) {
            return;
        }
        probe
            .exprs
            .iter()
            .copied()
            .filter(|(x, e)| is_bug(e) || probe.keys.iter().any(|(k, _)| k == x))
            .collect()
    } else {
        probe
            .exprs
            .iter()
            .copied()
            .filter(|(_, e)| !matches!(e, Expect::Error(_)) && !is_bug(e))
            .collect()
    };
    let names: Vec<&str> = values.iter().map(|(e, _)| *e).collect();
    // The copies of a line are attached one after another, tens of ms apart on a loaded
    // machine: with several copies, take enough hits that every copy fires after the last attach.
    let count = if probe.copies.is_empty() {
        COUNT
    } else {
        4 * COUNT
    };

    let out: Output = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &names,
        &["--count", &count.to_string(), "--format", "json"],
    ));
    out.assert_success();
    let hits: Vec<Hit> = out
        .stdout_lines()
        .into_iter()
        .map(detrix_e2e::parse_event_allowing_goid)
        .collect();
    assert_eq!(
        hits.len(),
        count,
        "{}: expected {count} events (--count {count}) from `{}`:\n{}",
        build.id,
        out.command,
        out.stdout
    );

    for hit in &hits {
        assert_eq!(hit.at, at, "\"at\" echoes --at: {}", hit.raw);
        assert_eq!(
            hit.pid,
            u64::from(fixture.pid()),
            "pid differs from the fixture's: {}",
            hit.raw
        );
        assert!(hit.tid > 0, "tid must be positive: {}", hit.raw);
        assert_eq!(
            hit.values.len(),
            names.len(),
            "event should hold exactly the {} requested expressions: {}",
            names.len(),
            hit.raw
        );
        let line = printed_line_of(fixture.stdout(), probe, hit);
        let f = fields(&line);
        if build.lang == Lang::Go {
            // The goroutine id the program parsed from runtime.Stack for itself.
            let want: u64 = printed(&f, "goid", &line)
                .parse()
                .unwrap_or_else(|e| panic!("printed goid is not a number ({e}): {line}"));
            assert_eq!(hit.goid, Some(want), "Go event's goid differs from the goroutine id the program printed\n  event:   {}\n  printed: {line}", hit.raw);
        } else {
            assert_eq!(hit.goid, None, "only Go events carry a goid: {}", hit.raw);
            // These fixtures are single-threaded: the only thread's tid is the pid.
            assert_eq!(
                hit.tid, hit.pid,
                "tid of a single-threaded fixture should equal its pid: {}",
                hit.raw
            );
        }
        for (expr, expect) in &values {
            check(hit, expr, *expect, &f, &line);
        }
    }
    for (expr, text) in probe.copies {
        assert!(
            hits.iter()
                .any(|h| h.values.get(*expr).map(key_text).as_deref() == Some(*text)),
            "{}: no hit with `{expr}` = {text}: that copy of {at} never fired; events:\n{}",
            build.id,
            out.stdout
        );
    }

    if known_bugs {
        return;
    }
    // What this build lost: capturing it must fail, naming why. Without --strip-prefix the
    // agent names the source by the absolute path the debug info records.
    let abs_at = format!("{}:{line}", build.debug_source().display());
    for (expr, expect) in &probe.exprs {
        if let Expect::Error(msg) = expect {
            let out = run_agent(&capture_args(
                fixture.pid(),
                &at,
                &[expr],
                &["--count", "1", "--format", "json"],
            ));
            let want = format!("error: {}", error_text(msg, &abs_at));
            out.assert_failure_with(&want);
            assert!(
                out.stderr.lines().any(|l| l == want),
                "`{}` should end with exactly this error line:\n{want}\n--- stderr ---\n{}",
                out.command,
                out.stderr
            );
            assert!(
                out.stdout.trim().is_empty(),
                "a failed capture prints no event: {}",
                out.stdout
            );
        }
    }
}

fn capture_build(build: FixtureBuild) {
    capture_build_checking(build, false);
}

fn capture_build_checking(build: FixtureBuild, known_bugs: bool) {
    require_root();
    agent_bin();
    let exe = build.build();
    let mut fixture = Fixture::start(&exe, &["-1", DELAY_MS]);
    for probe in probes(&build) {
        capture_probe(&build, &fixture, &probe, known_bugs);
    }
    // The fixture survived: still running and still printing rounds.
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
        "{}: the fixture stopped running or printing after the captures",
        build.id
    );
}

#[test]
fn capture_c_o0() {
    capture_build(lang::C_O0);
}

#[test]
fn capture_c_o2() {
    capture_build(lang::C_O2);
}

#[test]
fn capture_c_optimized_o2() {
    capture_build(lang::C_OPTIMIZED_O2);
}

/// Expressions a past agent bug broke ([`Expect::AgentBug`]: a struct assembled from
/// DW_OP_piece registers read its second piece as 0), checked against what they should be.
#[test]
fn capture_c_optimized_o2_known_bugs() {
    capture_build_checking(lang::C_OPTIMIZED_O2, true);
}

#[test]
fn capture_cpp_o0() {
    capture_build(lang::CPP_O0);
}

#[test]
fn capture_cpp_o2() {
    capture_build(lang::CPP_O2);
}

#[test]
fn capture_rust_debug() {
    capture_build(lang::RUST_DEBUG);
}

#[test]
fn capture_rust_o3() {
    capture_build(lang::RUST_O3);
}

#[test]
fn capture_go119_no_opt() {
    capture_build(lang::GO119_NL);
}

#[test]
fn capture_go119_opt() {
    capture_build(lang::GO119_OPT);
}

#[test]
fn capture_go123_no_opt() {
    capture_build(lang::GO123_NL);
}

#[test]
fn capture_go123_opt() {
    capture_build(lang::GO123_OPT);
}

/// Renders the first `cap` of `items` (comma-separated as printed) the agent's way, with the
/// count of the ones past the cap: Rust `[a, b, ...+N more]`, Go `[a,b,...+N more]`.
fn capped(items: &[&str], cap: usize, sep: &str, more_sep: &str) -> String {
    let shown = items.len().min(cap);
    let more = items.len() - shown;
    let tail = if more > 0 {
        format!("{more_sep}...+{more} more")
    } else {
        String::new()
    };
    format!("[{}{tail}]", items[..shown].join(sep))
}

/// `--max-elements N` copies N elements and says how many more there were, in the rendering
/// of the language's debugger.
fn max_elements_cut(build: FixtureBuild, expr: &str, key: &str) {
    require_root();
    agent_bin();
    let exe = build.build();
    let fixture = Fixture::start(&exe, &["-1", DELAY_MS]);
    let line = marker_line(&build.source(), "process");
    let at = format!("{}:{line}", build.file);
    let out: Output = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &["round", expr],
        &["--count", "8", "--format", "json", "--max-elements", "2"],
    ));
    out.assert_success();
    let probe = Probe {
        name: "process",
        printed: "process",
        keys: &[("round", "round")],
        copies: &[],
        points: 1,
        exprs: Vec::new(),
    };
    let mut longer = 0;
    for hit in out
        .stdout_lines()
        .into_iter()
        .map(detrix_e2e::parse_event_allowing_goid)
    {
        let line = printed_line_of(fixture.stdout(), &probe, &hit);
        let f = fields(&line);
        let got = hit
            .values
            .get(expr)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("`{expr}` is not text: {}", hit.raw));
        let want = if build.lang == Lang::Go {
            let items: Vec<&str> = printed(&f, key, &line).split(',').collect();
            format!(
                "[]int len: {}, cap: {}, {}",
                printed(&f, &format!("{key}.len"), &line),
                printed(&f, &format!("{key}.cap"), &line),
                capped(&items, 2, ",", ",")
            )
        } else {
            let printed = printed(&f, key, &line);
            let inner = printed.trim_start_matches('[').trim_end_matches(']');
            let items: Vec<&str> = inner.split(", ").collect();
            capped(&items, 2, ", ", ", ")
        };
        if want.contains("more") {
            longer += 1;
        }
        assert_eq!(
            got, want,
            "`{expr}` with --max-elements 2\n  event:   {}\n  printed: {line}",
            hit.raw
        );
    }
    assert!(
        longer > 0,
        "no hit had more than 2 elements, so the cut was never shown:\n{}",
        out.stdout
    );
}

#[test]
fn max_elements_cuts_rust_vec() {
    max_elements_cut(lang::RUST_DEBUG, "o.items", "items");
}

#[test]
fn max_elements_cuts_go_slice() {
    max_elements_cut(lang::GO123_NL, "o.Items", "items");
}
