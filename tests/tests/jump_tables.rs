//! Jump tables recovered from real compiler output ([`detrix_agent::codegen::jumptable`]): the
//! targets found for a `switch` (gcc -O2, bounds-checked, its default in a `.cold` part) are
//! exactly where the line table says each case's code starts — the truth taken from DWARF, not
//! from the recovery — and a Rust async fn's poll (rustc debug, a `match` on the future's state
//! with no bounds check) gets one target per state, the read stopping at the table's end.
//! No process and no root needed.

mod lang;

use std::collections::BTreeSet;
use std::path::Path;

use detrix_agent::codegen::{jumptable, Function};
use detrix_agent::debuginfo::{Binary, LinkAddr};
use detrix_e2e::{build_c_fixture, Build};
use object::{Object, ObjectSymbol};

/// `[start, end)` of the function symbol `name` (a Rust one with any hash: `name17h…E`).
fn function(exe: &Path, name: &str) -> (u64, u64) {
    let bytes = std::fs::read(exe).expect("read the binary");
    let file = object::File::parse(&*bytes).expect("an ELF file");
    let hashed = format!("{name}17h");
    file.symbols()
        .find(|s| s.name().is_ok_and(|n| n == name || n.starts_with(&hashed)) && s.size() > 0)
        .map(|s| (s.address(), s.address() + s.size()))
        .unwrap_or_else(|| panic!("no symbol {name} in {}", exe.display()))
}

/// The recovered tables of the function at `[start, end)`.
fn tables(bin: &Binary, (start, end): (u64, u64)) -> Vec<(u64, Vec<u64>)> {
    let code = bin
        .code(LinkAddr(start), LinkAddr(end))
        .expect("the function's code bytes");
    let f = Function::decode(code, start);
    let mut t: Vec<(u64, Vec<u64>)> =
        jumptable::recover(&f.instrs, |at, len| bin.read_only(LinkAddr(at), len))
            .into_iter()
            .collect();
    t.sort();
    t
}

/// Where the line table says line `line` of `file` starts, in the function at `[start, end)`.
fn line_starts(bin: &Binary, file: &str, line: u32, (start, end): (u64, u64)) -> BTreeSet<u64> {
    bin.resolve_line(file, line)
        .unwrap_or_else(|e| panic!("{file}:{line}: {e}"))
        .iter()
        .flat_map(|p| p.runs.iter().map(|r| r.addr.0))
        .filter(|a| (start..end).contains(a))
        .collect()
}

#[test]
fn a_gcc_switch_table_sends_each_case_to_its_line() {
    let exe = build_c_fixture("switch", Build::Optimized);
    let bin = Binary::open(&exe).expect("open the fixture");
    let pick = function(&exe, "pick");
    let found = tables(&bin, pick);
    assert_eq!(found.len(), 1, "one table in pick: {found:x?}");
    let targets: BTreeSet<u64> = found[0].1.iter().copied().collect();
    // Cases 0..=5 on lines 8..=13; the bounds check sends the rest to the default.
    let mut want = BTreeSet::new();
    for line in 8..=13 {
        let starts = line_starts(&bin, "switch.c", line, pick);
        assert_eq!(
            starts.len(),
            1,
            "line {line} starts once in pick: {starts:x?}"
        );
        want.extend(starts);
    }
    assert_eq!(
        targets, want,
        "the table's targets are the six cases' first instructions"
    );
}

#[test]
fn a_rust_async_state_table_sends_each_state_to_code_of_the_fn() {
    let exe = lang::RUST_DEBUG.build();
    let bin = Binary::open(&exe).expect("open the fixture");
    // `settle`'s future: its poll matches on the state (unresumed, returned, panicked, one
    // suspend point) through a table with no bounds check.
    let poll = function(&exe, "_ZN6orders6settle28_$u7b$$u7b$closure$u7d$$u7d$");
    let found = tables(&bin, poll);
    assert_eq!(found.len(), 1, "one table in the poll: {found:x?}");
    let targets = &found[0].1;
    assert_eq!(targets.len(), 4, "four states, four targets: {targets:x?}");
    assert!(
        targets.iter().all(|t| (poll.0..poll.1).contains(t)),
        "every state's code is in the poll {poll:x?}: {targets:x?}"
    );
    // The future once returned (or panicked) traps, on the fn's own line.
    let first = line_starts(&bin, "orders.rs", 106, poll);
    assert!(
        first.iter().any(|a| targets.contains(a)),
        "a target starts line 106 ({first:x?}): {targets:x?}"
    );
}
