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
    let line = marker_line(&build.source(), "family");
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

/// The line of `src` that contains `text` (1-based), for a line without a PROBE marker.
fn line_with(src: &std::path::Path, text: &str) -> u32 {
    let body = std::fs::read_to_string(src).expect("fixture source");
    let at: Vec<usize> = body
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(text))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        at.len(),
        1,
        "`{text}` should be on one line of {}",
        src.display()
    );
    u32::try_from(at[0]).expect("line number")
}

/// The agent's sentence for a member without a location (`decode::OPTIMIZED_OUT`).
const OPTIMIZED_OUT: &str =
    "optimized out at this point (the compiler kept no location for these bytes of the value)";

/// Rust release (`opt-level=3`), inside the inlined `block_on`: values the compiler split into
/// pieces of which some have no location (lldb shows those bytes as zeros). `cx`
/// (`Context`): its two waker references are `optimized out`, its `ext` is there. `f`, the
/// `settle` future (an enum: the async fn's state): its state byte has a location, so the
/// variant is known (`0`, not yet polled), and its payload — the arguments `round` and `qty`
/// — equals what `settle` printed for that round.
#[test]
fn rust_values_partly_optimized_out_show_what_they_have() {
    require_root();
    agent_bin();
    let build = lang::RUST_O3;
    let exe = build.build();
    let src = build.source();
    let mut fixture = Fixture::start(&exe, &["-1", DELAY_MS]);
    let poll = line_with(&src, "f.as_mut().poll(&mut cx)");
    let out = run_agent(&capture_args(
        fixture.pid(),
        &format!("orders.rs:{poll}"),
        &["cx"],
        &["--count", "2", "--format", "json"],
    ));
    out.assert_success();
    let hits = events(&out.stdout);
    assert_eq!(hits.len(), 2, "{}\n{}", out.stdout, out.stderr);
    for hit in &hits {
        let cx = &hit["values"]["cx"];
        let mut names: Vec<&str> = cx
            .as_object()
            .expect("cx is a struct")
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["_marker", "_marker2", "ext", "local_waker", "waker"],
            "{hit}"
        );
        for gone in ["waker", "local_waker"] {
            assert_eq!(cx[gone]["error"].as_str(), Some(OPTIMIZED_OUT), "{hit}");
        }
        // `Context::from_waker` sets no extension: the variant `None`.
        assert!(cx["ext"]["__0"].get("None").is_some(), "{hit}");
    }
    let pinned = line_with(&src, "let mut f = std::pin::pin!(f);");
    let out = run_agent(&capture_args(
        fixture.pid(),
        &format!("orders.rs:{pinned}"),
        &[],
        &["--locals", "--count", "3", "--format", "json"],
    ));
    out.assert_success();
    let hits = events(&out.stdout);
    assert_eq!(hits.len(), 3, "{}\n{}", out.stdout, out.stderr);
    for hit in &hits {
        let f = &hit["locals"]["f"];
        let state = f
            .as_object()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.get("0"))
            .unwrap_or_else(|| panic!("`f` in its first state (`0`): {hit}"));
        let round = json_int(&state["round"]).expect("round");
        let printed = printed_line(&fixture, &format!("settle\tround={round}\t"));
        let qty = printed
            .split('\t')
            .find_map(|w| w.strip_prefix("qty="))
            .expect("printed qty");
        assert_eq!(
            json_int(&state["qty"]).map(|q| q.to_string()).as_deref(),
            Some(qty),
            "{hit}\nprinted: {printed}"
        );
        assert_eq!(
            state.as_object().map(serde_json::Map::len),
            Some(2),
            "{hit}"
        );
    }
    assert_survived(&mut fixture);
}

/// gcc `-O2`, `width` inlined into `spanned` with `&q` and `&k`, two `static const` locals it
/// folded away: `p` and `c` are `DW_OP_implicit_pointer`s to variables that exist only as
/// `DW_AT_const_value` — a struct's 16 bytes and the integer 5. `*p` (a struct), `p->lo`,
/// `p->hi` and `*c` read those bytes; `spanned`'s own `q` and `k` are the same constants. Each
/// equals what `spanned` printed for that round.
#[test]
fn implicit_pointers_to_a_constant_struct_and_integer_are_exact() {
    require_root();
    agent_bin();
    let build = lang::C_DWEXPR_O2;
    let exe = build.build();
    let src = build.source();
    let mut fixture = Fixture::start(&exe, &["-1", DELAY_MS]);
    let line = marker_line(&src, "spanned");
    let out = run_agent(&capture_args(
        fixture.pid(),
        &format!("dwexpr.c:{line}"),
        &["round", "*p", "p->lo", "p->hi", "*c"],
        &["--count", "3", "--format", "json"],
    ));
    out.assert_success();
    let hits = events(&out.stdout);
    assert_eq!(hits.len(), 3, "{}\n{}", out.stdout, out.stderr);
    for hit in &hits {
        let v = &hit["values"];
        let round = json_int(&v["round"]).expect("round");
        let printed = printed_line(&fixture, &format!("spanned round={round} "));
        let f = fields(&printed);
        let want = |k: &str| f.get(k).map(String::as_str);
        let got = |x: &Value| json_int(x).map(|n| n.to_string());
        assert_eq!(
            got(&v["*p"]["lo"]).as_deref(),
            want("lo"),
            "{hit}\n{printed}"
        );
        assert_eq!(
            got(&v["*p"]["hi"]).as_deref(),
            want("hi"),
            "{hit}\n{printed}"
        );
        assert_eq!(
            v["*p"].as_object().map(serde_json::Map::len),
            Some(2),
            "{hit}"
        );
        assert_eq!(got(&v["p->lo"]).as_deref(), want("lo"), "{hit}\n{printed}");
        assert_eq!(got(&v["p->hi"]).as_deref(), want("hi"), "{hit}\n{printed}");
        assert_eq!(got(&v["*c"]).as_deref(), want("k"), "{hit}\n{printed}");
    }
    let print = line_with(&src, "printf(\"spanned round=");
    let out = run_agent(&capture_args(
        fixture.pid(),
        &format!("dwexpr.c:{print}"),
        &["round", "q", "k"],
        &["--count", "2", "--format", "json"],
    ));
    out.assert_success();
    let hits = events(&out.stdout);
    assert_eq!(hits.len(), 2, "{}\n{}", out.stdout, out.stderr);
    for hit in &hits {
        let v = &hit["values"];
        let round = json_int(&v["round"]).expect("round");
        let printed = printed_line(&fixture, &format!("spanned round={round} "));
        let f = fields(&printed);
        let got = |x: &Value| json_int(x).map(|n| n.to_string());
        assert_eq!(got(&v["q"]["lo"]), f.get("lo").cloned(), "{hit}\n{printed}");
        assert_eq!(got(&v["q"]["hi"]), f.get("hi").cloned(), "{hit}\n{printed}");
        assert_eq!(got(&v["k"]), f.get("k").cloned(), "{hit}\n{printed}");
    }
    assert_survived(&mut fixture);
}
