//! Captures values from each RUNNING multi-language fixture build (C/C++ -O0/-O2, Rust
//! debug/opt-level=3, Go 1.19/1.23 with `-N -l` and optimized) at every probe line, and checks
//! every captured value against what the fixture printed for the same hit. Where a build really
//! lost a value (optimized out, or in a register a uprobe cannot read), every hit must carry
//! exactly the message `lang::probes` names as that value's `{"error": …}` next to the live
//! values; a name not in scope must fail the capture with its message. Go events must carry the
//! goroutine id the program printed for itself.

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
    let want: Value = match expect {
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
        Expect::Text(k) => Value::String(printed(f, k, line).to_owned()),
        Expect::Char(k) => {
            let p = printed(f, k, line);
            let c = p
                .strip_prefix('\'')
                .and_then(|c| c.strip_suffix('\''))
                .unwrap_or_else(|| panic!("printed `{k}={p}` is not a quoted char: {line}"));
            Value::String(c.to_owned())
        }
        Expect::Json(k) => parse_json(printed(f, k, line), line),
        Expect::RustDebug(k) => rust_debug(printed(f, k, line), line),
        Expect::GoInts(k) | Expect::GoStrs(k) => {
            parse_json(&format!("[{}]", printed(f, k, line)), line)
        }
        Expect::Fmt(template) => {
            let mut text = template.to_string();
            for (k, val) in f {
                // A C char is printed quoted, `'B'`: the template wants its character.
                let val = match val.strip_prefix('\'').and_then(|c| c.strip_suffix('\'')) {
                    Some(c) if c.chars().count() == 1 => c,
                    _ => val,
                };
                text = text.replace(&format!("${k}"), val);
            }
            assert!(
                !text.contains('$'),
                "template {template} names a key the line lacks: {line}"
            );
            parse_json(&text, line)
        }
        Expect::GoNested(k) => return check_go_nested(hit, expr, v, printed(f, k, line), line),
        Expect::AgentBug(inner, _) => return check(hit, expr, *inner, f, line),
        Expect::Error(_) => unreachable!("errors are checked without a hit"),
    };
    assert!(
        json_eq(v, &want),
        "`{expr}` differs from what the program printed\n  event:   {}\n  printed: {line}\n  want:    {want}",
        hit.raw
    );
}

/// JSON equality with numbers compared by value: a printed `40` equals a captured `40.0`.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || ((x.is_f64() || y.is_f64()) && x.as_f64() == y.as_f64())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// `text` read as JSON, panicking with the printed line when it is not.
fn parse_json(text: &str, line: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("`{text}` is not JSON ({e}); printed: {line}"))
}

/// A Rust enum's `{:?}` text as the agent's typed JSON shows the value.
fn rust_debug(text: &str, line: &str) -> Value {
    if text == "None" {
        return Value::Null;
    }
    match text.split_once('(') {
        Some(("Some", rest)) => parse_json(rest.strip_suffix(')').unwrap_or(rest), line),
        Some((name, rest)) => {
            let mut m = serde_json::Map::new();
            m.insert(
                name.to_owned(),
                parse_json(rest.strip_suffix(')').unwrap_or(rest), line),
            );
            Value::Object(m)
        }
        None => Value::String(text.to_owned()),
    }
}

/// Checks a Go composite's typed JSON against the Delve text the program printed for it:
/// `null` exactly for a nil, and every leaf of the value (a string Go-quoted, a number, a
/// bool, an address as `%#x`) found in that text.
fn check_go_nested(hit: &Hit, expr: &str, v: &Value, printed: &str, line: &str) {
    let ctx = || format!("\n  event:   {}\n  printed: {line}", hit.raw);
    let nil = printed.ends_with(" nil") && !printed.contains('{');
    assert_eq!(
        v.is_null(),
        nil,
        "`{expr}` = {v}: null exactly when the program printed a nil{}",
        ctx()
    );
    let mut leaves = Vec::new();
    go_leaves(v, &mut leaves);
    assert!(
        nil || !leaves.is_empty(),
        "`{expr}` = {v} holds no values{}",
        ctx()
    );
    for leaf in leaves {
        assert!(
            printed.contains(&leaf),
            "`{expr}`: `{leaf}` is not in what the program printed{}",
            ctx()
        );
    }
}

/// The leaves of a typed Go value as Delve prints them.
fn go_leaves(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Null => {}
        Value::String(s) => match s
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            Some(addr) => out.push(format!("{addr:#x}")),
            None => out.push(Value::String(s.clone()).to_string()),
        },
        Value::Array(items) => items.iter().for_each(|i| go_leaves(i, out)),
        // Go prints a float in its shortest form, an integral one without `.0`.
        Value::Number(n) if n.is_f64() => out.push(n.as_f64().unwrap_or_default().to_string()),
        Value::Object(m) => m.values().for_each(|i| go_leaves(i, out)),
        other => out.push(other.to_string()),
    }
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
    // What this build lost: a value lost at the line (optimized out, unreadable) is that
    // value's error on every hit while the others flow; a name not in scope fails the capture,
    // naming why. Without --strip-prefix the agent names the source by the absolute path the
    // debug info records.
    let abs_at = format!("{}:{line}", build.debug_source().display());
    for (expr, expect) in &probe.exprs {
        if let Expect::Error(msg) = expect {
            if lang::per_value(msg) {
                check_per_value_error(build, fixture, probe, &at, expr, &error_text(msg, &abs_at));
                continue;
            }
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

/// Captures the probe's keys with `expr`, which cannot be read at the line: every hit carries
/// exactly `{"error": want}` for it, and the keys equal what the program printed.
fn check_per_value_error(
    build: &FixtureBuild,
    fixture: &Fixture,
    probe: &Probe,
    at: &str,
    expr: &str,
    want: &str,
) {
    let mut names: Vec<&str> = probe.keys.iter().map(|(e, _)| *e).collect();
    names.push(expr);
    let out = run_agent(&capture_args(
        fixture.pid(),
        at,
        &names,
        &["--count", "2", "--format", "json"],
    ));
    out.assert_success();
    let hits: Vec<Hit> = out
        .stdout_lines()
        .into_iter()
        .map(detrix_e2e::parse_event_allowing_goid)
        .collect();
    assert_eq!(
        hits.len(),
        2,
        "{}: `{}`:\n{}",
        build.id,
        out.command,
        out.stdout
    );
    for hit in &hits {
        assert_eq!(
            hit.values.get(expr),
            Some(&serde_json::json!({ "error": want })),
            "{}: `{expr}` should be exactly this error on every hit: {want}\n  event: {}",
            build.id,
            hit.raw
        );
        let line = printed_line_of(fixture.stdout(), probe, hit);
        let f = fields(&line);
        for (key, printed_key) in probe.keys {
            let want = printed(&f, printed_key, &line);
            let got = hit.values.get(*key).map(key_text);
            assert_eq!(
                got.as_deref(),
                Some(want),
                "{}: `{key}` next to the error: {}",
                build.id,
                hit.raw
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

/// DWARF expressions (`DW_OP_ne`, `mul`, `and`, `shra`, `div`, `mod`, …) evaluated in the
/// kernel at the hit, equal to what the program printed.
#[test]
fn capture_c_dwexpr_o2() {
    capture_build(lang::C_DWEXPR_O2);
}

/// Parameters dead at the line (`DW_OP_entry_value`) with no call site describing them,
/// from the registers an entry probe saved; a recursive function's every level its own.
#[test]
fn capture_stash_c_o2() {
    capture_build(lang::STASH_C_O2);
}

/// A Rust release `&mut` parameter whose location at the line is `DW_OP_entry_value`.
#[test]
fn capture_stash_rust_o2() {
    capture_build(lang::STASH_RUST_O2);
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

/// `--max-elements N` copies N elements: the typed value is the array of the first N.
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
            .unwrap_or_else(|| panic!("event has no `{expr}`: {}", hit.raw));
        let printed = printed(&f, key, &line);
        let items: Vec<&str> = if build.lang == Lang::Go {
            printed.split(',').collect()
        } else {
            let inner = printed.trim_start_matches('[').trim_end_matches(']');
            inner.split(", ").collect()
        };
        if items.len() > 2 {
            longer += 1;
        }
        let want = parse_json(
            &format!("[{}]", items[..items.len().min(2)].join(",")),
            &line,
        );
        assert_eq!(
            *got, want,
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

/// Rust release: `*o` whole. Its scalar members equal what the fixture printed; its `String`,
/// `&str` and `Vec` members, whose contents the plan does not copy inside a struct, are errors
/// naming their printed lengths — never `"...(truncated)"` or `[]`, which `avail_bench` found
/// (a `Vec` of three shown as empty).
#[test]
fn rust_struct_members_not_copied_say_so_with_their_length() {
    require_root();
    agent_bin();
    let build = lang::RUST_O3;
    let exe = build.build();
    let fixture = Fixture::start(&exe, &["-1", DELAY_MS]);
    let line = marker_line(&build.source(), "process");
    let at = format!("{}:{line}", build.file);
    let out: Output = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &["round", "*o"],
        &["--count", "3", "--format", "json"],
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
    let hits: Vec<Hit> = out
        .stdout_lines()
        .into_iter()
        .map(detrix_e2e::parse_event)
        .collect();
    assert_eq!(hits.len(), 3, "{}", out.stdout);
    let not_copied = |ty: &str, n: usize| {
        format!("not copied inside a struct: {ty} of len {n}; capture the member itself as its own expression")
    };
    for hit in &hits {
        let line = printed_line_of(fixture.stdout(), &probe, hit);
        let f = fields(&line);
        let o = &hit.values["*o"];
        assert_eq!(o["id"].to_string(), printed(&f, "id", &line), "{}", hit.raw);
        assert_eq!(
            o["qty"].to_string(),
            printed(&f, "qty", &line),
            "{}",
            hit.raw
        );
        let customer = printed(&f, "customer", &line);
        assert_eq!(
            o["customer"]["error"],
            // A `String` is its `Vec<u8>`, named as the agent's lldb-style text names it.
            not_copied("Vec<u8, alloc::alloc::Global>", customer.len()),
            "{}",
            hit.raw
        );
        let note = printed(&f, "note", &line);
        assert_eq!(
            o["note"]["error"],
            not_copied("&str", note.len()),
            "{}",
            hit.raw
        );
        let items = printed(&f, "items", &line);
        let n = items
            .trim_matches(['[', ']'])
            .split(", ")
            .filter(|s| !s.is_empty())
            .count();
        let got = o["items"]["error"].as_str().unwrap_or_default();
        assert!(
            got.starts_with("not copied inside a struct: Vec<i32")
                && got.ends_with(&format!(
                    " of len {n}; capture the member itself as its own expression"
                )),
            "`items` printed {items}: {}",
            hit.raw
        );
    }
}
