//! ELF/DWARF resolution of a mutated fixture binary: the `orders` fixture with the input's
//! patches applied, parsed from memory, then what `detrix-agent resolve` does at one probe line
//! for one expression (planned, placed, explained) plus that line's scopes, types and
//! symbolization.
//!
//! The input is `[line: u8][expression: u8]` — indexes, modulo, into the fixture's probe lines
//! and [`detrix_fuzz::ORDERS_EXPRS`] — then a list of patches, `[offset: u32 le][len: u8][bytes…]`,
//! the offset taken modulo the binary's size; a final patch with length 0xff truncates there.
//! Patching a real binary reaches the DWARF parsers; random bytes rarely get past the ELF magic.
//! Why one line and one expression per input, not all of them: resolving every line for every
//! expression made an input cost ~30 ms (~33 inputs a second), so a run explored almost nothing;
//! the fuzzer reaches every line and expression through the two selector bytes instead.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use detrix_agent::debuginfo::Binary;
use detrix_agent::engine;
use libfuzzer_sys::fuzz_target;

fn original() -> &'static (Vec<u8>, Vec<u32>) {
    static F: OnceLock<(Vec<u8>, Vec<u32>)> = OnceLock::new();
    F.get_or_init(|| {
        let (_, bytes) = detrix_fuzz::orders_binary();
        (bytes, detrix_fuzz::orders_probe_lines())
    })
}

fuzz_target!(|data: &[u8]| {
    let (orig, lines) = original();
    let [pick_line, pick_expr, patches @ ..] = data else {
        return;
    };
    let (Some(&line), Some(&expr)) = (
        lines.get(usize::from(*pick_line) % lines.len().max(1)),
        detrix_fuzz::ORDERS_EXPRS.get(usize::from(*pick_expr) % detrix_fuzz::ORDERS_EXPRS.len()),
    ) else {
        return;
    };
    let mut bin = orig.clone();
    let mut rest = patches;
    while rest.len() >= 5 {
        let off = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize % bin.len();
        let len = usize::from(rest[4]);
        rest = &rest[5..];
        if len == 0xff {
            bin.truncate(off);
            break;
        }
        let n = len.min(rest.len()).min(bin.len() - off);
        bin[off..off + n].copy_from_slice(&rest[..n]);
        rest = &rest[len.min(rest.len())..];
    }
    let Ok(b) = Binary::from_bytes(Path::new("/fuzz/orders"), &bin) else {
        return;
    };
    let _ = b.language();
    let _ = b.source_files();
    let _ = engine::describe(&b, "orders.c", line, &[expr.to_owned()], "");
    for p in b.resolve_line("orders.c", line).unwrap_or_default() {
        let _ = b.locals_in_scope(&p);
        let _ = b.names_in_scope(&p);
        for e in ["o", "copy", "customers"] {
            if let Ok(v) = b.variable(&p, e) {
                let _ = b.display_type_name(v.ty);
                let _ = b.type_of(v.ty);
            }
        }
        let _ = b.symbolize(p.addr);
    }
});
