//! ELF/DWARF resolution of a mutated fixture binary: the `orders` fixture with the input's
//! patches applied, parsed from memory, then what `detrix-agent resolve` does (source files,
//! every probe line, every expression planned) plus scopes, types and symbolization.
//!
//! The input is a list of patches, `[offset: u32 le][len: u8][bytes…]`, the offset taken modulo
//! the binary's size; a final patch with length 0xff truncates there. Patching a real binary
//! reaches the DWARF parsers; random bytes rarely get past the ELF magic.
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
    let mut bin = orig.clone();
    let mut rest = data;
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
    let exprs: Vec<String> = detrix_fuzz::ORDERS_EXPRS
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for &line in lines {
        let _ = engine::describe(&b, "orders.c", line, &exprs, "");
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
    }
});
