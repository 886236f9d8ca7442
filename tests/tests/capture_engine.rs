//! The capture engine around the values: in-kernel `--when` conditions, the rate limit and its
//! counters, probe placement, per-process scoping, and removing every breakpoint when the agent
//! ends (normally or by SIGKILL). Every captured value is checked against what the fixture
//! printed for the same round.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use detrix_e2e::{
    agent_bin, c_fixture_source, capture_args, check_value as check, expected_text, hex_bytes,
    load_bias, marker_line, parse_event, parse_events, parse_kv, parse_probe_line,
    printed_field as printed, read_file_bytes, read_process_mem, require_root, run_agent,
    run_with_timeout, single_probe_line, single_summary, Event, Fixture, Kind, Output, ProbeLine,
    Running, AGENT_TIMEOUT,
};

/// Delay between the fixture's rounds.
const DELAY_MS: u32 = 20;
/// How long to wait for the fixture to print the round an event came from.
const PRINT_WAIT: Duration = Duration::from_secs(5);
/// How long the kernel may take to put the original instruction back once the agent is gone.
const RESTORE_WAIT: Duration = Duration::from_secs(3);
/// The x86 breakpoint instruction a uprobe writes over the probed instruction's first byte.
const INT3: u8 = 0xCC;

/// (expression, key in the printed `process` line, kind)
type Col = (&'static str, &'static str, Kind);

const ROUND: Col = ("round", "round", Kind::Int);
const ID: Col = ("o->id", "id", Kind::Int);
const QTY: Col = ("o->qty", "qty", Kind::Int);
const PRICE: Col = ("o->price", "price", Kind::Float);
const CUSTOMER: Col = ("o->customer", "customer", Kind::Str);
const COST: Col = ("cost", "cost", Kind::Float);
const G_COUNTER: Col = ("g_counter", "g_counter", Kind::Int);
const S_TOTAL: Col = ("s_total", "s_total", Kind::Int);

fn process_at() -> String {
    let line = marker_line(&c_fixture_source("orders"), "process");
    format!("orders.c:{line}")
}

fn exprs(cols: &[Col]) -> Vec<&'static str> {
    cols.iter().map(|(e, _, _)| *e).collect()
}

/// The printed `process` line of the event's round, parsed.
fn printed_for(fixture: &Fixture, event: &Event) -> (String, HashMap<String, String>) {
    let round = i64::try_from(event.int("round")).expect("round fits i64");
    let line = fixture.process_line(round, PRINT_WAIT);
    let kv = parse_kv(&line);
    (line, kv)
}

/// Asserts `events` came from `fixture` at `at` in increasing rounds, each holding exactly the
/// `cols` values, each equal to what the fixture printed for that round. Returns each event's
/// printed line, parsed.
fn check_events(
    events: &[Event],
    fixture: &Fixture,
    at: &str,
    cols: &[Col],
) -> Vec<HashMap<String, String>> {
    let mut last_round = None;
    let mut out = Vec::new();
    for e in events {
        assert_eq!(e.at, at, "\"at\" should echo --at; event: {}", e.raw);
        assert_eq!(
            e.pid,
            u64::from(fixture.pid()),
            "pid differs from the fixture's; event: {}",
            e.raw
        );
        assert_eq!(
            e.tid, e.pid,
            "single-threaded fixture: tid should be its pid; event: {}",
            e.raw
        );
        let mut keys: Vec<&str> = e.values.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = exprs(cols);
        want.sort_unstable();
        assert_eq!(
            keys, want,
            "event should hold exactly the --expr values: {}",
            e.raw
        );
        let round = e.int("round");
        if let Some(prev) = last_round {
            assert!(
                round > prev,
                "rounds should increase: {prev} then {round}; event: {}",
                e.raw
            );
        }
        last_round = Some(round);
        let (line, kv) = printed_for(fixture, e);
        for (expr, key, kind) in cols {
            let want = expected_text(*kind, key, &kv, &line);
            check(e, expr, *kind, &want, &line);
        }
        out.push(kv);
    }
    out
}

fn assert_event_count(events: &[Event], n: usize, out: &Output) {
    assert_eq!(
        events.len(),
        n,
        "expected {n} events (--count {n}), got {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        events.len(),
        out.stdout,
        out.stderr
    );
}

/// Runs one capture with `--count count --format json` plus `extra` and checks the common
/// invariants: success, `count` events matching the printed lines, one probe line, one summary
/// whose hits are all accounted for, and `printed` == the number of events.
fn capture_checked(
    fixture: &Fixture,
    cols: &[Col],
    count: usize,
    extra: &[&str],
) -> (Vec<Event>, Vec<HashMap<String, String>>, Output) {
    let at = process_at();
    let mut args = vec![
        "--count".to_string(),
        count.to_string(),
        "--format".into(),
        "json".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_agent(&capture_args(fixture.pid(), &at, &exprs(cols), &args_ref));
    out.assert_success();
    let events = parse_events(&out);
    assert_event_count(&events, count, &out);
    let printed = check_events(&events, fixture, &at, cols);
    let probe = single_probe_line(&out.stderr);
    let summary = single_summary(&out.stderr);
    assert_eq!(
        summary.addr, probe.addr,
        "summary and probe line name different addresses:\n{}",
        out.stderr
    );
    summary.assert_hits_accounted();
    assert_eq!(
        summary.get("printed"),
        u64::try_from(count).expect("count fits u64"),
        "printed= should be the number of events printed; summary: {}",
        summary.raw
    );
    assert!(
        summary.get("emitted") >= summary.get("printed"),
        "emitted < printed: {}",
        summary.raw
    );
    (events, printed, out)
}

// ---------------------------------------------------------------------------------------------
// --when
// ---------------------------------------------------------------------------------------------

#[test]
fn when_int_condition_filters_in_kernel() {
    require_root();
    agent_bin();
    let mut fixture = Fixture::orders(DELAY_MS);
    let cols = [ROUND, QTY, ID];
    let (events, _, out) = capture_checked(&fixture, &cols, 3, &["--when", "o->qty > 7"]);
    for e in &events {
        assert!(
            e.int("o->qty") > 7,
            "--when 'o->qty > 7' let through {}",
            e.raw
        );
    }
    let summary = single_summary(&out.stderr);
    // qty cycles 3..=9, so at most 2 of 7 consecutive hits pass; 3 events need rejected hits.
    assert!(
        summary.get("condition_false") > 0,
        "3 events with qty > 7 cannot come without rejected hits; summary: {}",
        summary.raw
    );
    fixture.assert_keeps_running(3);
}

#[test]
fn when_string_prefix_and_equality() {
    require_root();
    agent_bin();
    let mut fixture = Fixture::orders(DELAY_MS);
    let cols = [ROUND, CUSTOMER, ID];
    let long = "carol-with-a-much-longer-name";

    let (events, _, out) =
        capture_checked(&fixture, &cols, 3, &["--when", r#"o->customer ^= "ca""#]);
    for e in &events {
        assert_eq!(
            e.value("o->customer").as_str(),
            Some(long),
            "^= \"ca\" let through {}",
            e.raw
        );
    }
    assert!(
        single_summary(&out.stderr).get("condition_false") > 0,
        "{}",
        out.stderr
    );

    let (events, _, out) =
        capture_checked(&fixture, &cols, 3, &["--when", r#"o->customer == "bob""#]);
    for e in &events {
        assert_eq!(
            e.value("o->customer").as_str(),
            Some("bob"),
            "== \"bob\" let through {}",
            e.raw
        );
    }
    assert!(
        single_summary(&out.stderr).get("condition_false") > 0,
        "{}",
        out.stderr
    );

    let (events, _, out) =
        capture_checked(&fixture, &cols, 4, &["--when", r#"o->customer != "bob""#]);
    let mut seen = BTreeSet::new();
    for e in &events {
        let c = e
            .value("o->customer")
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_ne!(c, "bob", "!= \"bob\" let through {}", e.raw);
        seen.insert(c);
    }
    assert!(
        seen.contains("alice") && seen.contains(long),
        "4 consecutive non-bob rounds should include alice and {long}; saw {seen:?}\n{}",
        out.stdout
    );
    assert!(
        single_summary(&out.stderr).get("condition_false") > 0,
        "{}",
        out.stderr
    );

    fixture.assert_keeps_running(3);
}

#[test]
fn when_double_condition() {
    require_root();
    agent_bin();
    let mut fixture = Fixture::orders(DELAY_MS);
    // Two printed consecutive prices give the step; aim ~250 rounds (~5 s) ahead, past the
    // agent's start-up, so earlier hits must be rejected in the kernel. On a loaded 2-core CI
    // machine the start-up once took longer than that (every hit was past the threshold and
    // nothing could be rejected): then once more, ~1500 rounds (~30 s) ahead. The last try's
    // rejection is asserted; every try's values are.
    for (attempt, ahead) in [250, 1500].into_iter().enumerate() {
        let last = attempt == 1;
        let now = fixture.last_round().unwrap_or(0).max(1);
        let p_prev = fixture.process_line(now - 1, PRINT_WAIT);
        let p_now = fixture.process_line(now, PRINT_WAIT);
        let price = |l: &str| -> f64 {
            printed(&parse_kv(l), "price", l)
                .parse()
                .unwrap_or_else(|e| panic!("printed price is not a number ({e}): {l}"))
        };
        let step = price(&p_now) - price(&p_prev);
        assert!(
            step > 0.0,
            "the fixture's price should grow per round:\n{p_prev}\n{p_now}"
        );
        let x = price(&p_now) + step * f64::from(ahead);
        let threshold_round = now + i64::from(ahead);
        let cond = format!("o->price >= {x:?}");

        let cols = [ROUND, PRICE, ID, QTY];
        let (events, printed_lines, out) = capture_checked(&fixture, &cols, 3, &["--when", &cond]);
        for (e, kv) in events.iter().zip(&printed_lines) {
            let got = e.value("o->price").as_f64().unwrap_or(f64::NAN);
            assert!(got >= x, "--when '{cond}' let through {}", e.raw);
            let printed_price: f64 = kv["price"].parse().unwrap_or(f64::NAN);
            assert!(
                printed_price >= x,
                "printed price {printed_price} < {x} for event {}",
                e.raw
            );
            assert!(
                e.int("round") >= i128::from(threshold_round),
                "round {} is before the first round with price >= {x} ({threshold_round}): {}",
                e.int("round"),
                e.raw
            );
        }
        let summary = single_summary(&out.stderr);
        if summary.get("condition_false") == 0 && !last {
            eprintln!(
                "the agent started after the threshold {ahead} rounds ahead (nothing to reject); \
                 once more further ahead: {}",
                summary.raw
            );
            continue;
        }
        assert!(
            summary.get("condition_false") > 0,
            "the threshold was {ahead} rounds ahead of the fixture when the agent started, so hits \
             before it should have been rejected; summary: {}",
            summary.raw
        );
        break;
    }
    fixture.assert_keeps_running(3);
}

#[test]
fn when_condition_on_hidden_expression() {
    require_root();
    agent_bin();
    let mut fixture = Fixture::orders(DELAY_MS);
    let cols = [ROUND, ID];
    let (events, printed_lines, out) =
        capture_checked(&fixture, &cols, 3, &["--when", "o->grade == 'B'"]);
    for (e, kv) in events.iter().zip(&printed_lines) {
        // check_events already asserted `values` has exactly round and o->id.
        assert!(
            !e.values.contains_key("o->grade"),
            "condition's expression leaked: {}",
            e.raw
        );
        assert_eq!(
            kv.get("grade").map(String::as_str),
            Some("'B'"),
            "--when \"o->grade == 'B'\" let through round {} whose printed grade is {:?}: {}",
            e.int("round"),
            kv.get("grade"),
            e.raw
        );
    }
    assert!(
        single_summary(&out.stderr).get("condition_false") > 0,
        "{}",
        out.stderr
    );
    fixture.assert_keeps_running(3);
}

// ---------------------------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------------------------

#[test]
fn rate_limit_counts_every_hit() {
    require_root();
    let bin = agent_bin();
    let mut fixture = Fixture::orders(1);
    let at = process_at();
    let rate: u64 = 20;
    let mut cmd = Command::new(bin);
    cmd.args(capture_args(
        fixture.pid(),
        &at,
        &["round"],
        &[
            "--format",
            "json",
            "--rate",
            &rate.to_string(),
            "--burst",
            "1",
        ],
    ));
    let agent = Running::spawn(cmd);
    if agent
        .stdout()
        .wait_for(AGENT_TIMEOUT / 2, |l| l.starts_with('{'))
        .is_none()
    {
        let out = agent.wait(Duration::from_millis(1));
        panic!(
            "no event within {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            AGENT_TIMEOUT / 2,
            out.stdout,
            out.stderr
        );
    }
    // The window starts at the first event: start-up time (resolution, loading) is not
    // rate-limited time.
    let started = Instant::now();
    thread::sleep(Duration::from_secs(2));
    agent.signal(libc::SIGTERM);
    let secs = started.elapsed().as_secs_f64();
    let out = agent.wait(Duration::from_secs(10));
    out.assert_success();

    let events = parse_events(&out);
    let mut last = None;
    for e in &events {
        assert_eq!(e.pid, u64::from(fixture.pid()), "pid differs: {}", e.raw);
        let (line, kv) = printed_for(&fixture, e);
        check(e, "round", Kind::Int, printed(&kv, "round", &line), &line);
        let r = e.int("round");
        assert!(
            last.is_none_or(|p| r > p),
            "rounds should increase: {last:?} then {r}"
        );
        last = Some(r);
    }
    let s = single_summary(&out.stderr);
    s.assert_hits_accounted();
    let emitted = s.get("emitted");
    assert!(
        s.get("rate_limited") > 0,
        "~1000 hits/s against --rate {rate} must be rate-limited: {}",
        s.raw
    );
    // Truncation is fine here: the bound is generous.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "small positive"
    )]
    let max = (2.0 * rate as f64 * secs) as u64 + 10;
    assert!(
        emitted <= max,
        "--rate {rate} --burst 1 over {secs:.2} s emitted {emitted} events (> {max}): {}",
        s.raw
    );
    // The limit is the probe's total whatever CPU its hits land on: a thread hitting ~1000
    // times a second must get close to the rate, not rate/ncpus.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "small positive"
    )]
    let min = (0.7 * rate as f64 * secs) as u64;
    assert!(
        emitted >= min,
        "--rate {rate} over {secs:.2} s emitted only {emitted} events (< {min}): {}",
        s.raw
    );
    assert_eq!(
        s.get("printed"),
        emitted,
        "an emitted event was not printed (lost silently): {}",
        s.raw
    );
    assert_eq!(
        u64::try_from(events.len()).expect("fits"),
        s.get("printed"),
        "printed= differs from the number of events on stdout: {}",
        s.raw
    );
    assert!(
        s.get("hits") > 10 * emitted,
        "the fixture ran ~1000 rounds/s; hits should dwarf emitted: {}",
        s.raw
    );
    fixture.assert_keeps_running(3);
}

// ---------------------------------------------------------------------------------------------
// No breakpoint left behind
// ---------------------------------------------------------------------------------------------

/// The probed instruction's bytes in the process and in the file.
fn probed_bytes(fixture: &Fixture, probe: &ProbeLine) -> (u64, Vec<u8>, Vec<u8>) {
    let runtime = probe.addr + load_bias(fixture.pid());
    let mem = read_process_mem(fixture.pid(), runtime, 8);
    let file = read_file_bytes(fixture.exe(), probe.file_offset, 8);
    (runtime, mem, file)
}

/// Starts a capture at the process line of a private fixture, waits for its first event and
/// checks the breakpoint is in the process's code; returns the fixture, the agent, the probe
/// line and the original bytes.
fn attached_capture(extra: &[&str]) -> (Fixture, Running, ProbeLine, Vec<u8>) {
    let bin = agent_bin();
    let fixture = Fixture::orders_private(DELAY_MS);
    let at = process_at();
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let mut cmd = Command::new(bin);
    cmd.args(capture_args(fixture.pid(), &at, &["round", "o->id"], &args));
    let agent = Running::spawn(cmd);
    let first = agent
        .stdout()
        .wait_for(AGENT_TIMEOUT / 2, |l| l.starts_with('{'));
    let Some(first) = first else {
        let out = agent.wait(Duration::from_millis(1));
        panic!(
            "no event within {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            AGENT_TIMEOUT / 2,
            out.stdout,
            out.stderr
        );
    };
    let e = parse_event(&first);
    let (line, kv) = printed_for(&fixture, &e);
    check(&e, "o->id", Kind::Int, printed(&kv, "id", &line), &line);

    let probe_line = agent
        .stderr()
        .wait_for(Duration::from_secs(1), |l| parse_probe_line(l).is_some())
        .unwrap_or_else(|| {
            panic!(
                "no `→` line on stderr while capturing:\n{}",
                agent.stderr().text()
            )
        });
    let probe = parse_probe_line(&probe_line).expect("matched above");
    let (runtime, mem, file) = probed_bytes(&fixture, &probe);
    assert_ne!(
        file[0], INT3,
        "test assumption broken: the file itself has int3 at {:#x}",
        probe.file_offset
    );
    assert_eq!(
        mem[0],
        INT3,
        "while the agent is attached, the probed instruction at {runtime:#x} ({}) should start \
         with int3; process has {}, file has {}",
        probe.raw,
        hex_bytes(&mem),
        hex_bytes(&file)
    );
    assert_eq!(
        mem[1..],
        file[1..],
        "only the first byte should differ while attached; process {} vs file {}",
        hex_bytes(&mem),
        hex_bytes(&file)
    );
    (fixture, agent, probe, file)
}

/// Waits up to [`RESTORE_WAIT`] for the probed bytes to equal the file's again.
fn assert_restored(fixture: &Fixture, probe: &ProbeLine, file: &[u8], how: &str) {
    let start = Instant::now();
    loop {
        let (runtime, mem, _) = probed_bytes(fixture, probe);
        if mem == file {
            return;
        }
        assert!(
            start.elapsed() < RESTORE_WAIT,
            "{RESTORE_WAIT:?} after the agent {how}, the probed instruction at {runtime:#x} ({}) \
             is still {} in the process; the file has {}",
            probe.raw,
            hex_bytes(&mem),
            hex_bytes(file)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_leaves_no_probe_behind() {
    require_root();
    let (mut fixture, agent, probe, file) = attached_capture(&[]);
    agent.signal(libc::SIGKILL);
    let out = agent.wait(Duration::from_secs(10));
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "agent should die of SIGKILL: {}",
        out.status
    );
    assert_restored(&fixture, &probe, &file, "was killed with SIGKILL");
    fixture.assert_keeps_running(3);
}

#[test]
fn normal_exit_restores_instructions() {
    require_root();
    let (mut fixture, agent, probe, file) = attached_capture(&["--count", "10"]);
    let out = agent.wait(AGENT_TIMEOUT);
    out.assert_success();
    assert_eq!(parse_events(&out).len(), 10, "--count 10:\n{}", out.stdout);
    assert_restored(&fixture, &probe, &file, "exited after --count 10");
    fixture.assert_keeps_running(3);
}

// ---------------------------------------------------------------------------------------------
// Placement
// ---------------------------------------------------------------------------------------------

#[test]
fn placement_moves_to_emulated_and_values_still_match() {
    require_root();
    agent_bin();
    let mut fixture = Fixture::orders(DELAY_MS);
    let cols = [ROUND, ID, QTY, COST, CUSTOMER, G_COUNTER, S_TOTAL];

    let (_, _, placed) = capture_checked(&fixture, &cols, 3, &["--explain"]);
    let (_, _, first) = capture_checked(&fixture, &cols, 3, &["--no-placement"]);
    let p = single_probe_line(&placed.stderr);
    let f = single_probe_line(&first.stderr);
    assert_eq!(
        p.kind, "Emulated",
        "default placement should pick an emulated instruction: {}",
        p.raw
    );
    assert_eq!(
        f.kind, "SingleStepped",
        "--no-placement probes the line's first instruction (a RIP-relative load, single-stepped): {}",
        f.raw
    );
    assert_ne!(
        p.addr, f.addr,
        "placement should have moved the probe off the first instruction:\n  placed: {}\n  first:  {}",
        p.raw, f.raw
    );
    assert_eq!(p.func, f.func, "both probes should be in the same function");

    // --explain: indented lines follow the probe line and end with `chose <addr>: …`.
    let lines: Vec<&str> = placed.stderr.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == p.raw)
        .expect("probe line is in stderr");
    let explain: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.starts_with(' '))
        .copied()
        .collect();
    // After the verdict come only the reads moved from memory to registers there.
    let chose = format!("chose {:#x}:", p.addr);
    let verdict = explain
        .iter()
        .rposition(|l| !l.trim_start().starts_with("forwarded "));
    assert!(
        verdict.is_some_and(|v| explain[v].trim_start().starts_with(&chose)),
        "--explain should end with `{chose} …` (then `forwarded …` lines); got:\n{}",
        explain.join("\n")
    );
    assert!(
        explain
            .iter()
            .any(|l| l.trim_start().starts_with(&format!("{:#x} ", f.addr))),
        "--explain should list the line's first instruction {:#x}:\n{}",
        f.addr,
        explain.join("\n")
    );
    fixture.assert_keeps_running(3);
}

/// At `-O0` the placed instruction finds `round` (and more) already loaded into registers: the
/// plan reads those instead of the stack slots, `--explain` says so per value, and the values
/// are the program's. `--no-forwarding` reads the slots, with the same values.
#[test]
fn forwarding_reads_registers_and_values_still_match() {
    require_root();
    agent_bin();
    let mut fixture = Fixture::orders(DELAY_MS);
    let cols = [ROUND, ID, QTY, COST, CUSTOMER, G_COUNTER, S_TOTAL];
    let (_, _, fwd) = capture_checked(&fixture, &cols, 3, &["--explain"]);
    let forwarded: Vec<&str> = fwd
        .stderr
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("forwarded v"))
        .collect();
    assert!(
        forwarded
            .iter()
            .any(|l| l.starts_with("forwarded v0: 4 bytes at rbp-")),
        "`round` (v0, an int in a stack slot) should be read from the register that holds it:\n{}",
        fwd.stderr
    );
    let (_, _, slots) = capture_checked(&fixture, &cols, 3, &["--explain", "--no-forwarding"]);
    assert!(
        !slots
            .stderr
            .lines()
            .any(|l| l.trim_start().starts_with("forwarded ")),
        "--no-forwarding must read every value where the debug info puts it:\n{}",
        slots.stderr
    );
    fixture.assert_keeps_running(3);
}

/// Forwarding never changes a value: at every line of `process` and of `main`'s loop, two
/// captures of every local in scope, one forwarding and one not, attached to the same process
/// at once (so they see the same hits), must agree on every value of every common round.
#[test]
fn forwarding_never_changes_a_value() {
    require_root();
    agent_bin();
    // Rounds slow enough, and captures long enough (40 hits = 4 s), that the two captures
    // share several hits even when one attaches seconds after the other, as on a loaded
    // two-core machine (with 6 hits, a 0.6 s window, they once shared none there; with 20, a
    // 2 s window, once none when one attached 2.4 s after the other, in a CI run beside a
    // release build).
    let fixture = Fixture::orders(100);
    let src = std::fs::read_to_string(c_fixture_source("orders")).expect("read orders.c");
    let lines: Vec<&str> = src.lines().collect();
    let start_of = |text: &str| {
        lines
            .iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("orders.c has no `{text}`"))
            + 1
    };
    // 1-based line numbers: the body of `process`, and `main`'s loop body.
    let process = (start_of("static double process(") + 1)..start_of("return cost;") + 1;
    let main_loop = (start_of("for (int round = 0;") + 1)..start_of("usleep(delay_ms") + 1;
    let by_round = |out: &Output| -> HashMap<i64, serde_json::Value> {
        out.stdout_lines()
            .into_iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .map(|v| {
                (
                    v["values"]["round"]
                        .as_i64()
                        .unwrap_or_else(|| panic!("no round: {v}")),
                    v["locals"].clone(),
                )
            })
            .collect()
    };
    let (mut lines_compared, mut values_compared, mut forwarded_lines) = (0, 0, 0);
    for line in process.chain(main_loop) {
        let at = format!("orders.c:{line}");
        let spawn = |extra: &[&str]| {
            let mut args = capture_args(
                fixture.pid(),
                &at,
                &["round"],
                &["--locals", "--count", "40", "--format", "json", "--explain"],
            );
            args.extend(extra.iter().map(ToString::to_string));
            let mut cmd = Command::new(agent_bin());
            cmd.args(args);
            Running::spawn(cmd)
        };
        let (fwd, slots) = (spawn(&[]), spawn(&["--no-forwarding"]));
        let (fwd, slots) = (fwd.wait(AGENT_TIMEOUT), slots.wait(AGENT_TIMEOUT));
        if !fwd.status.success() || !slots.status.success() {
            // A line without code (a continuation line): both must refuse it, for that reason.
            let first = |o: &Output| {
                o.stderr
                    .lines()
                    .find(|l| l.starts_with("error: "))
                    .unwrap_or_default()
                    .to_owned()
            };
            assert_eq!(
                first(&fwd),
                first(&slots),
                "at {at} the two captures disagree on whether the line can be captured"
            );
            assert!(
                first(&fwd).contains("has no code"),
                "at {at}: unexpected failure:\n{}",
                fwd.stderr
            );
            continue;
        }
        if fwd
            .stderr
            .lines()
            .any(|l| l.trim_start().starts_with("forwarded "))
        {
            forwarded_lines += 1;
        }
        let (a, b) = (by_round(&fwd), by_round(&slots));
        let common: Vec<i64> = a.keys().filter(|r| b.contains_key(r)).copied().collect();
        assert!(
            common.len() >= 2,
            "at {at} the two captures share too few hits ({common:?}):\n{}\n{}",
            fwd.stdout,
            slots.stdout
        );
        for r in common {
            assert_eq!(
                a[&r], b[&r],
                "at {at}, round {r}: the locals differ with and without forwarding"
            );
            values_compared += a[&r].as_object().map_or(0, serde_json::Map::len);
        }
        lines_compared += 1;
    }
    assert!(
        lines_compared >= 15,
        "only {lines_compared} lines could be compared"
    );
    assert!(
        forwarded_lines >= 5,
        "forwarding applied on only {forwarded_lines} lines; the comparison proves little"
    );
    eprintln!("compared {values_compared} values on {lines_compared} lines ({forwarded_lines} with forwarded reads)");
}

// ---------------------------------------------------------------------------------------------
// Per-process scoping
// ---------------------------------------------------------------------------------------------

#[test]
fn other_process_not_captured() {
    require_root();
    agent_bin();
    // Same binary, same code: B starts ~40 rounds after A, so their round numbers differ.
    let mut a = Fixture::orders(DELAY_MS);
    a.process_line(40, LINE_WAIT);
    let mut b = Fixture::orders(DELAY_MS);
    b.process_line(0, LINE_WAIT);

    let cols = [ROUND, ID, QTY, COST, G_COUNTER, S_TOTAL];
    let (events, _, out) = capture_checked(&a, &cols, 5, &[]);
    let b_last = b.last_round().unwrap_or(-1);
    for e in &events {
        assert_eq!(
            e.pid,
            u64::from(a.pid()),
            "event from a process other than --pid: {}",
            e.raw
        );
        assert!(
            e.int("round") > i128::from(b_last),
            "round {} is one B (pid {}) has printed too (B is at {b_last}); A is far ahead, so \
             this looks like B's hit: {}",
            e.int("round"),
            b.pid(),
            e.raw
        );
    }
    let s = single_summary(&out.stderr);
    assert!(s.get("hits") >= 5, "{}", s.raw);
    a.assert_keeps_running(3);
    b.assert_keeps_running(3);
}

const LINE_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// CPU circuit breaker
// ---------------------------------------------------------------------------------------------

#[test]
fn cpu_breaker_switches_a_hot_probe_off_and_says_why() {
    require_root();
    let bin = agent_bin();
    let mut fixture = Fixture::orders(1);
    let at = process_at();
    // ~1000 hits/s at several µs each is ~0.1-1 % of a CPU: far over a 0.01 % budget.
    let mut cmd = Command::new(bin);
    cmd.args(capture_args(
        fixture.pid(),
        &at,
        &["round"],
        &["--format", "json", "--cpu-budget", "0.01"],
    ));
    let out = run_with_timeout(cmd, AGENT_TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(3),
        "over-budget exit code\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("switched off: cost"),
        "reason printed: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("exceeds the 0.01% budget"),
        "budget named: {}",
        out.stderr
    );
    let s = single_summary(&out.stderr);
    assert!(
        s.raw.contains("switched_off=\""),
        "summary names the breaker: {}",
        s.raw
    );
    assert!(s.get("hits") > 0, "{}", s.raw);
    s.assert_hits_accounted();
    // What was printed before the switch-off is still exact.
    for e in parse_events(&out) {
        let round = e.int("round");
        let printed = fixture.process_line(
            i64::try_from(round).expect("round fits"),
            Duration::from_secs(5),
        );
        assert!(printed.contains(&format!("round={round} ")), "{printed}");
    }
    fixture.assert_keeps_running(3);
}
