//! Captures values inside the running `orders` C fixture and checks each one against what the
//! fixture printed for the same round.

use std::time::Duration;

use detrix_e2e::{
    agent_bin, c_fixture_source, capped, capture_args, check_value as check, expected_text,
    marker_line, parse_events, parse_kv, printed_field as printed, require_root, run_agent, Event,
    Fixture, Kind, Running, Value, AGENT_TIMEOUT,
};

/// Delay between the fixture's rounds.
const DELAY_MS: u32 = 20;
/// How long to wait for the fixture to print the round an event came from.
const PRINT_WAIT: Duration = Duration::from_secs(5);

/// Asserts the events came from `fixture`, were reported at `at`, and have strictly increasing
/// `round`s; returns the rounds.
fn check_common(events: &[Event], fixture: &Fixture, at: &str, count: usize) -> Vec<i64> {
    assert_eq!(
        events.len(),
        count,
        "expected {count} events (--count {count}), got {}:\n{}",
        events.len(),
        events
            .iter()
            .map(|e| e.raw.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut rounds = Vec::new();
    for e in events {
        assert_eq!(
            e.at, at,
            "\"at\" should echo --at as given; event: {}",
            e.raw
        );
        assert_eq!(
            e.pid,
            u64::from(fixture.pid()),
            "pid differs from the fixture's; event: {}",
            e.raw
        );
        assert!(e.tid > 0, "tid must be positive; event: {}", e.raw);
        // orders is single-threaded: its only thread's tid is its pid.
        assert_eq!(
            e.tid, e.pid,
            "tid of single-threaded fixture should equal its pid; event: {}",
            e.raw
        );
        let round = i64::try_from(e.int("round")).expect("round fits i64");
        rounds.push(round);
    }
    assert!(
        rounds.windows(2).all(|w| w[0] < w[1]),
        "rounds should be strictly increasing, got {rounds:?}"
    );
    rounds
}

#[test]
fn process_line_values_match_printed() {
    require_root();
    agent_bin();
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let mut fixture = Fixture::orders(DELAY_MS);
    let at = format!("orders.c:{line}");

    // (expression, key in the printed line, kind)
    let exprs: &[(&str, &str, Kind)] = &[
        ("round", "round", Kind::Int),
        ("o->id", "id", Kind::Int),
        ("o->qty", "qty", Kind::Int),
        ("o->flags", "flags", Kind::Int),
        ("o->price", "price", Kind::Float),
        ("o->grade", "grade", Kind::Char),
        ("o->customer", "customer", Kind::Str),
        ("o->code", "code", Kind::Str),
        ("cost", "cost", Kind::Float),
        ("g_counter", "g_counter", Kind::Int),
        ("s_total", "s_total", Kind::Int),
        ("copy.qty", "copy.qty", Kind::Int),
        ("first", "first", Kind::Char),
        ("g_label", "label", Kind::Str),
    ];
    let names: Vec<&str> = exprs.iter().map(|(e, _, _)| *e).collect();
    let out = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &names,
        &["--count", "5", "--format", "json"],
    ));
    out.assert_success();
    let events = parse_events(&out);
    let rounds = check_common(&events, &fixture, &at, 5);

    for (event, round) in events.iter().zip(rounds) {
        assert_eq!(
            event.values.len(),
            exprs.len(),
            "event should hold exactly the {} requested expressions: {}",
            exprs.len(),
            event.raw
        );
        let printed_line = fixture.process_line(round, PRINT_WAIT);
        let kv = parse_kv(&printed_line);
        for (expr, key, kind) in exprs {
            let want = expected_text(*kind, key, &kv, &printed_line);
            check(event, expr, *kind, &want, &printed_line);
        }
    }

    fixture.assert_keeps_running(3);
}

/// `--locals` alone, no `--expr`: every parameter and local of `process` at the line, each
/// equal to what the fixture printed for that round; `capture: probes attached` comes before
/// any hit (a tool that starts the target itself waits for it).
#[test]
fn locals_without_expr_match_printed() {
    require_root();
    agent_bin();
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let fixture = Fixture::orders(DELAY_MS);
    let at = format!("orders.c:{line}");
    let out = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &[],
        &["--locals", "--count", "2", "--format", "json"],
    ));
    out.assert_success();
    let attached = out
        .stderr
        .lines()
        .position(|l| l == "capture: probes attached");
    let summary = out.stderr.lines().position(|l| l.contains(": hits="));
    assert!(
        attached.is_some() && attached < summary,
        "`capture: probes attached` should precede the summary:\n{}",
        out.stderr
    );
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 2, "two hits:\n{}", out.stdout);
    for l in lines {
        let hit: Value = serde_json::from_str(l).expect("a JSON event");
        assert_eq!(hit["values"], serde_json::json!({}), "no --expr: {l}");
        let locals = hit["locals"].as_object().expect("locals object");
        let mut names: Vec<&str> = locals.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["copy", "cost", "first", "o", "round"], "{l}");
        let round = locals["round"].as_i64().expect("round is an integer");
        let printed_line = fixture.process_line(round, PRINT_WAIT);
        let kv = parse_kv(&printed_line);
        assert_eq!(
            locals["cost"].as_f64().map(|c| c.to_string()),
            kv.get("cost")
                .map(|c| c.parse::<f64>().expect("printed cost").to_string()),
            "{l}\n{printed_line}"
        );
        assert_eq!(
            Some(locals["first"].as_str().unwrap_or_default()),
            kv.get("first").map(|f| f.trim_matches('\'')),
            "{l}\n{printed_line}"
        );
        assert_eq!(
            locals["o"].as_str(),
            kv.get("o").map(String::as_str),
            "{l}\n{printed_line}"
        );
        assert_eq!(
            locals["copy"]["qty"].as_i64().map(|q| q.to_string()),
            kv.get("copy.qty").cloned(),
            "{l}\n{printed_line}"
        );
        assert_eq!(
            locals["copy"]["id"].as_i64().map(|q| q.to_string()),
            kv.get("id").cloned(),
            "{l}\n{printed_line}"
        );
    }
}

/// Fields read through one pointer are one copy of the target's memory, not one each
/// (issue #15): `round` and the slot holding `o` are one read, `o`'s fields another, and the
/// string `o->customer` points to a third — where each value alone reads 12 times — and every
/// value is still exactly what the fixture printed. Forwarding is off so every read is a
/// memory read.
#[test]
fn coalesced_reads_keep_exact_values() {
    require_root();
    agent_bin();
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let mut fixture = Fixture::orders(DELAY_MS);
    let at = format!("orders.c:{line}");
    let exprs: &[(&str, &str, Kind)] = &[
        ("round", "round", Kind::Int),
        ("o->id", "id", Kind::Int),
        ("o->qty", "qty", Kind::Int),
        ("o->flags", "flags", Kind::Int),
        ("o->price", "price", Kind::Float),
        ("o->customer", "customer", Kind::Str),
    ];
    let names: Vec<&str> = exprs.iter().map(|(e, _, _)| *e).collect();
    let out = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &names,
        &[
            "--count",
            "5",
            "--format",
            "json",
            "--no-forwarding",
            "--explain",
        ],
    ));
    out.assert_success();
    let plan = out
        .stderr
        .lines()
        .find(|l| l.starts_with("capture: plan: "))
        .unwrap_or_else(|| panic!("--explain printed no plan line:\n{}", out.stderr));
    assert!(
        plan.contains(" 3 reads of the target's memory"),
        "expected 3 reads (the frame's slots, o's fields, the customer string): {plan}"
    );
    let events = parse_events(&out);
    let rounds = check_common(&events, &fixture, &at, 5);
    for (event, round) in events.iter().zip(rounds) {
        assert_eq!(event.values.len(), exprs.len(), "{}", event.raw);
        let printed_line = fixture.process_line(round, PRINT_WAIT);
        let kv = parse_kv(&printed_line);
        for (expr, key, kind) in exprs {
            let want = expected_text(*kind, key, &kv, &printed_line);
            check(event, expr, *kind, &want, &printed_line);
        }
    }
    fixture.assert_keeps_running(3);
}

/// Captures `round` and a value whose read faults (`o->customer[99999999]` reads 100 MB past a
/// string literal, where nothing is mapped) for three hits, with `extra` flags; returns the
/// output and, per hit, the value's error with the step and address it names, checked
/// against the printed `o->customer` plus that offset.
fn capture_fault(extra: &[&str]) -> (detrix_e2e::Output, Vec<(u64, u64)>) {
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let mut fixture = Fixture::orders(DELAY_MS);
    let at = format!("orders.c:{line}");
    let far = "o->customer[99999999]";
    let mut flags = vec!["--count", "3", "--format", "json", "--no-forwarding"];
    flags.extend_from_slice(extra);
    let out = run_agent(&capture_args(fixture.pid(), &at, &["round", far], &flags));
    out.assert_success();
    let events = parse_events(&out);
    let rounds = check_common(&events, &fixture, &at, 3);
    let mut faults = Vec::new();
    for (event, round) in events.iter().zip(rounds) {
        let printed_line = fixture.process_line(round, PRINT_WAIT);
        let kv = parse_kv(&printed_line);
        let pcust = kv
            .get("pcust")
            .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| panic!("no pcust in {printed_line}"));
        let err = event.values[far]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("`{far}` should be an error: {}", event.raw));
        let addr = pcust + 99_999_999;
        let want = format!("faulted at address {addr:#x}");
        assert!(
            err.contains("(`emit_mem 1 +99999999 @") && err.contains(&want),
            "the error should name the emit_mem step and {want}: {err}"
        );
        let step = err
            .split("step ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no step number in {err}"));
        faults.push((step, addr));
    }
    fixture.assert_keeps_running(3);
    (out, faults)
}

/// A value whose read faults says which step of the plan faulted and at which address
/// (issue #16), and the other value still flows; without `--ebpf-log` the program reports
/// nothing itself.
#[test]
fn read_fault_names_the_step_and_address() {
    require_root();
    agent_bin();
    let (out, _) = capture_fault(&[]);
    assert!(
        !out.stderr.lines().any(|l| l.starts_with("ebpf:")),
        "no `ebpf:` line without --ebpf-log:\n{}",
        out.stderr
    );
}

/// `--ebpf-log` (issue #16): the program reports each faulting step through aya-log, one
/// `ebpf: probe P step S (emit_mem) faulted at ADDR` line per hit, with the exact step and
/// address the value's error names, all from the one probe.
#[test]
fn ebpf_log_reports_the_faulting_step() {
    require_root();
    agent_bin();
    let (out, faults) = capture_fault(&["--ebpf-log"]);
    let logged: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("ebpf:"))
        .collect();
    let mut probes = Vec::new();
    for (step, addr) in faults {
        let tail = format!(" step {step} (emit_mem) faulted at {addr:#x}");
        let line = logged
            .iter()
            .find(|l| l.ends_with(&tail))
            .unwrap_or_else(|| panic!("no `ebpf: …{tail}` line:\n{}", out.stderr));
        let probe = line
            .strip_prefix("ebpf: probe ")
            .and_then(|r| r.strip_suffix(tail.as_str()))
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("`{line}` should read `ebpf: probe N{tail}`"));
        probes.push(probe);
    }
    probes.dedup();
    assert_eq!(probes.len(), 1, "one probe reports: {logged:?}");
}

#[test]
fn after_line_values_match_printed() {
    require_root();
    agent_bin();
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "after");
    let mut fixture = Fixture::orders(DELAY_MS);
    let at = format!("orders.c:{line}");

    let out = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &["round", "cost", "s_total"],
        &["--count", "3", "--format", "json"],
    ));
    out.assert_success();
    let events = parse_events(&out);
    let rounds = check_common(&events, &fixture, &at, 3);

    for (event, round) in events.iter().zip(rounds) {
        let printed_line = fixture.after_line(round, PRINT_WAIT);
        let kv = parse_kv(&printed_line);
        check(
            event,
            "cost",
            Kind::Float,
            printed(&kv, "cost", &printed_line),
            &printed_line,
        );
        // `total` is assigned from s_total on this very line, so it prints s_total's value.
        check(
            event,
            "s_total",
            Kind::Int,
            printed(&kv, "total", &printed_line),
            &printed_line,
        );
    }

    fixture.assert_keeps_running(3);
}

/// Captures `round` and `o->id` at the process marker with `--at FILE:LINE` and checks them.
fn capture_with_file(file: &str) {
    require_root();
    agent_bin();
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let mut fixture = Fixture::orders(DELAY_MS);
    let at = format!("{file}:{line}");

    let out = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &["round", "o->id"],
        &["--count", "2", "--format", "json"],
    ));
    out.assert_success();
    let events = parse_events(&out);
    let rounds = check_common(&events, &fixture, &at, 2);
    for (event, round) in events.iter().zip(rounds) {
        let printed_line = fixture.process_line(round, PRINT_WAIT);
        let kv = parse_kv(&printed_line);
        check(
            event,
            "o->id",
            Kind::Int,
            printed(&kv, "id", &printed_line),
            &printed_line,
        );
    }

    fixture.assert_keeps_running(3);
}

#[test]
fn file_as_absolute_path() {
    let src = c_fixture_source("orders");
    let abs = src.to_str().expect("fixture path is UTF-8");
    assert!(abs.starts_with('/'), "{abs} should be absolute");
    capture_with_file(abs);
}

#[test]
fn file_as_path_suffix() {
    capture_with_file("fixtures/c/orders.c");
}

#[test]
fn text_format_matches_printed() {
    require_root();
    agent_bin();
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let mut fixture = Fixture::orders(DELAY_MS);
    let at = format!("orders.c:{line}");

    let out = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &["round", "o->id"],
        &["--count", "3", "--format", "text"],
    ));
    out.assert_success();
    let lines = out.stdout_lines();
    assert_eq!(
        lines.len(),
        3,
        "expected 3 text lines (--count 3), got:\n{}",
        out.stdout
    );

    let mut last_round = None;
    for l in lines {
        // FILE:LINE pid=P tid=T expr=value expr=value ...
        let first = l.split_whitespace().next().unwrap_or_default();
        assert_eq!(first, at, "text line should start with --at as given: {l}");
        let kv = parse_kv(l);
        let get = |k: &str| {
            kv.get(k)
                .unwrap_or_else(|| panic!("text line lacks `{k}=`: {l}"))
                .as_str()
        };
        assert_eq!(
            get("pid"),
            fixture.pid().to_string(),
            "pid in text line: {l}"
        );
        let tid: u64 = get("tid")
            .parse()
            .unwrap_or_else(|e| panic!("tid in `{l}` is not a number: {e}"));
        assert!(tid > 0, "tid must be positive: {l}");
        let round: i64 = get("round")
            .parse()
            .unwrap_or_else(|e| panic!("round in `{l}` is not a number: {e}"));
        if let Some(prev) = last_round {
            assert!(round > prev, "rounds should increase: {prev} then {round}");
        }
        last_round = Some(round);

        let printed_line = fixture.process_line(round, PRINT_WAIT);
        let pkv = parse_kv(&printed_line);
        assert_eq!(
            get("o->id"),
            printed(&pkv, "id", &printed_line),
            "o->id in text line differs from the printed id\n  text:    {l}\n  printed: {printed_line}"
        );
    }

    fixture.assert_keeps_running(3);
}

#[test]
fn string_cap_truncates_long_strings() {
    require_root();
    agent_bin();
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let mut fixture = Fixture::orders(DELAY_MS);
    let at = format!("orders.c:{line}");

    // Six consecutive hits cover every customer (they cycle with round % 3) even if one or two
    // hits were lost.
    let out = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &["round", "o->customer"],
        &["--count", "6", "--format", "json", "--string-cap", "5"],
    ));
    out.assert_success();
    let events = parse_events(&out);
    let rounds = check_common(&events, &fixture, &at, 6);

    let mut seen = Vec::new();
    for (event, round) in events.iter().zip(rounds) {
        let printed_line = fixture.process_line(round, PRINT_WAIT);
        let kv = parse_kv(&printed_line);
        let customer = printed(&kv, "customer", &printed_line);
        // The text, cut to 5 bytes and marked when it was longer.
        let want = capped(customer, 5);
        let got = event
            .value("o->customer")
            .as_str()
            .unwrap_or_else(|| panic!("o->customer is not a string: {}", event.raw));
        assert_eq!(
            got, want,
            "with --string-cap 5, `{customer}` should be captured as `{want}`\n  event:   {}\n  printed: {printed_line}",
            event.raw
        );
        seen.push(customer.to_string());
    }
    assert!(
        seen.iter().any(|c| c == "bob"),
        "no round with customer `bob` was captured: {seen:?}"
    );
    assert!(
        seen.iter().any(|c| c == "carol-with-a-much-longer-name"),
        "no round with the long customer name was captured: {seen:?}"
    );
    // The spec's two examples, literally.
    assert_eq!(
        capped("carol-with-a-much-longer-name", 5),
        "carol...(truncated)"
    );
    assert_eq!(capped("bob", 5), "bob");

    fixture.assert_keeps_running(3);
}

/// Without --count the agent runs until signalled; SIGTERM and SIGINT end it with exit 0 and
/// leave the traced program running.
fn stops_cleanly_on(signal: i32) {
    require_root();
    let bin = agent_bin();
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let mut fixture = Fixture::orders(DELAY_MS);
    let at = format!("orders.c:{line}");

    let mut cmd = std::process::Command::new(bin);
    cmd.args(capture_args(
        fixture.pid(),
        &at,
        &["round"],
        &["--format", "json"],
    ));
    let agent = Running::spawn(cmd);
    let first = agent
        .stdout()
        .wait_for(AGENT_TIMEOUT / 2, |l| l.starts_with('{'));
    if first.is_none() {
        let out = agent.wait(Duration::from_millis(1));
        panic!(
            "no event within {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            AGENT_TIMEOUT / 2,
            out.stdout,
            out.stderr
        );
    }
    agent.signal(signal);
    let out = agent.wait(Duration::from_secs(10));
    out.assert_success();
    let events = parse_events(&out);
    assert!(!events.is_empty(), "no events printed:\n{}", out.stdout);
    for e in &events {
        assert_eq!(
            e.pid,
            u64::from(fixture.pid()),
            "pid differs from the fixture's: {}",
            e.raw
        );
        match e.value("round") {
            Value::Number(_) => {}
            v => panic!("round should be a number, got {v}: {}", e.raw),
        }
    }

    fixture.assert_keeps_running(3);
}

#[test]
fn sigterm_ends_capture_with_exit_0() {
    stops_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_ends_capture_with_exit_0() {
    stops_cleanly_on(libc::SIGINT);
}
