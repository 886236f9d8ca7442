//! The call-site tables (LSDA, `.gcc_except_table`) the agent reads from the Rust and C++
//! fixtures, entry by entry, as offsets from the function's start: the values were decoded by
//! hand from the section's bytes (`xxd`) at the LSDA each function's `.eh_frame` FDE names
//! (`readelf -wf`), and from them which calls a probe's block runs on across. No process and
//! no root needed.

mod lang;

use std::collections::HashSet;

use detrix_agent::codegen::block::CallFlow;
use detrix_agent::codegen::Function;
use detrix_agent::debuginfo::lsda::CallSites;
use detrix_agent::debuginfo::{Binary, ProbePoint};
use lang::{marker_line, FixtureBuild};

/// `(start, end, landing pad, action)` of each entry, relative to the function's start.
type Entries = Vec<(u64, u64, Option<u64>, u64)>;

/// A probe point, the tables of its function's code, and the call flow they give.
type Found = (ProbePoint, Vec<CallSites>, CallFlow);

/// The probe points of the line marked `marker` in `build`, each with the tables of its
/// function's code.
fn tables(build: FixtureBuild, marker: &str) -> Vec<Found> {
    tables_at(build, marker_line(&build.source(), marker))
}

/// As [`tables`], for the first line whose text contains `text`.
fn tables_at_text(build: FixtureBuild, text: &str) -> Vec<Found> {
    let src = std::fs::read_to_string(build.source()).expect("read the fixture source");
    let line = src
        .lines()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no line with {text}"));
    tables_at(build, u32::try_from(line + 1).expect("line fits"))
}

fn tables_at(build: FixtureBuild, line: u32) -> Vec<Found> {
    let exe = build.build();
    let bin = Binary::open(&exe).expect("open the fixture");
    bin.resolve_line(build.file, line)
        .expect("resolve the marker line")
        .into_iter()
        .map(|p| {
            let t = bin
                .unwind_tables(p.func_start.0, p.func_end.0)
                .expect("read the tables");
            let flow = CallFlow::from_tables(&Function::of(&bin, &p), &t);
            (p, t, flow)
        })
        .collect()
}

fn relative(t: &CallSites) -> Option<Entries> {
    t.sites.as_ref().map(|v| {
        v.iter()
            .map(|s| {
                (
                    s.start - t.func_start,
                    s.end - t.func_start,
                    s.landing_pad.map(|p| p - t.func_start),
                    s.action,
                )
            })
            .collect()
    })
}

/// rustc's debug build of `describe::<&str>`: LLVM's uleb128 table, the call that builds the
/// first argument and the rest of the body drop `value` in the pad at +0x5f; the code between
/// (the pad's own `_Unwind_Resume`) has none. `describe::<i32>` has no table: nothing to drop.
#[test]
fn rust_debug_describe_tables() {
    let found = tables(lang::RUST_DEBUG, "describe");
    let by_name = |n: &str| {
        found
            .iter()
            .find(|(p, _, _)| p.function == n)
            .unwrap_or_else(|| panic!("no copy {n}"))
    };
    for (name, table, pad) in [
        (
            "describe<&str>",
            vec![
                (0x43, 0x50, Some(0x5f), 0),
                (0x50, 0x7a, None, 0),
                (0x7a, 0x108, Some(0x5f), 0),
            ],
            0x5f,
        ),
        (
            "describe<i32>",
            vec![
                (0x3d, 0x4a, Some(0x59), 0),
                (0x4a, 0x74, None, 0),
                (0x74, 0xff, Some(0x59), 0),
            ],
            0x59,
        ),
    ] {
        let (p, t, flow) = by_name(name);
        assert_eq!(t.len(), 1, "{name}: one FDE covers the function");
        assert_eq!(t[0].func_start, p.func_start.0);
        assert_eq!(relative(&t[0]), Some(table), "{name}");
        // Every pad only drops `value` (action 0): no call ends a block.
        assert_eq!(
            *flow,
            CallFlow::Table {
                ends: HashSet::new(),
                pads: HashSet::from([p.func_start.0 + pad])
            },
            "{name}"
        );
    }
}

/// g++ -O2 splits `main` into a hot part and `main.cold` (its own FDE and LSDA).
#[test]
fn cpp_o2_main_tables() {
    let found = tables_at_text(lang::CPP_O2, "\"after round=");
    let (p, t, flow) = &found[0];
    assert_eq!(p.function, "main");
    let got: Vec<(u64, u64, Option<Entries>)> = t
        .iter()
        .map(|t| {
            (
                t.func_start - p.func_start.0,
                t.func_end - p.func_start.0,
                relative(t),
            )
        })
        .collect();
    // `main.cold` first (its one call leaves the frame when it unwinds), then `main`: the
    // string's destructor at +0x263 is the only pad, a cleanup.
    assert_eq!(
        got,
        vec![
            (0, 0x12, Some(vec![(0xd, 0x12, None, 0)])),
            (
                0x20,
                0x28b,
                Some(vec![
                    (0x2c, 0x3d, None, 0),
                    (0x13f, 0x1c6, Some(0x263), 0),
                    (0x247, 0x258, None, 0),
                ])
            ),
        ]
    );
    assert_eq!(
        *flow,
        CallFlow::Table {
            ends: HashSet::new(),
            pads: HashSet::from([p.func_start.0 + 0x20 + 0x263])
        }
    );
}

/// Go's runtime resumes a function whose deferred call recovered a panic at its
/// `runtime.deferreturn` call, a way in no branch shows: in Go 1.23's `runtime.main`, the
/// `throw` of proc.go:186 falls (through a `nop`) into that call, and the probe's block must end
/// before it.
#[test]
fn go_deferreturn_starts_a_block() {
    let exe = lang::GO123_OPT.build();
    let bin = Binary::open(&exe).expect("open the fixture");
    let deferreturn = bin
        .go_deferreturn
        .expect("the Go binary has runtime.deferreturn");
    let v = detrix_agent::engine::describe(&bin, "runtime/proc.go", 186, &[], "");
    let point = &v["points"][0];
    assert_eq!(point["function"], "runtime.main", "{v:#}");
    let candidates: Vec<String> = point["placement"]["candidates"]
        .as_array()
        .unwrap_or_else(|| panic!("no candidates: {v:#}"))
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    assert!(
        candidates.iter().any(|c| c.contains(" nop: same values")),
        "{candidates:#?}"
    );
    let into = format!("call {deferreturn:#018X}").replace("0X", "0x");
    assert!(
        !candidates.iter().any(|c| c.contains(&into)),
        "the deferreturn call is in the block: {candidates:#?}"
    );
}
