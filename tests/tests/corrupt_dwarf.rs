//! Debug info a target's owner can write is outside input: a corrupt or crafted binary must
//! get a sentence, never a panic of the root agent. Each test takes a real fixture, damages
//! one field the way fuzz/elf found it, and resolves a line in it. No process and no root
//! needed.

use std::path::Path;

use detrix_agent::debuginfo::Binary;
use detrix_e2e::{build_c_fixture, Build};
use object::{Object, ObjectSection, ObjectSymbol};

/// A subprogram's `DW_AT_high_pc` holding a size that runs past the end of the address space:
/// gimli adds it to `DW_AT_low_pc` unchecked (fuzz/elf crashed on `attempt to add with
/// overflow` in `die_ranges`). Resolving a line of that function says so instead.
#[test]
fn a_function_size_past_the_address_space_is_an_error_not_a_panic() {
    let exe = build_c_fixture("orders", Build::Debug);
    let mut bytes = std::fs::read(&exe).expect("read the fixture");
    let (at, start) = {
        let file = object::File::parse(&*bytes).expect("an ELF file");
        let main = file
            .symbols()
            .find(|s| s.name() == Ok("main") && s.size() > 0)
            .expect("a main symbol with a size");
        let (off, len) = file
            .section_by_name(".debug_info")
            .and_then(|s| s.file_range())
            .expect("a .debug_info section in the file");
        // gcc writes `main`'s DIE with DW_AT_low_pc (its address, DW_FORM_addr) followed by
        // DW_AT_high_pc (its size, DW_FORM_data8).
        let mut pattern = main.address().to_le_bytes().to_vec();
        pattern.extend_from_slice(&main.size().to_le_bytes());
        let info = &bytes[off as usize..(off + len) as usize];
        let hits: Vec<usize> = info
            .windows(pattern.len())
            .enumerate()
            .filter(|(_, w)| *w == pattern.as_slice())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(hits.len(), 1, "main's low_pc/high_pc pair found once");
        (off as usize + hits[0] + 8, main.address())
    };
    let huge = u64::MAX - start + 16;
    bytes[at..at + 8].copy_from_slice(&huge.to_le_bytes());
    let bin = Binary::from_bytes(Path::new("/corrupt/orders"), &bytes).expect("the ELF parses");
    let src =
        std::fs::read_to_string(detrix_e2e::c_fixture_source("orders")).expect("read orders.c");
    let line = src
        .lines()
        .position(|l| l.contains("int delay_ms"))
        .map(|i| u32::try_from(i + 1).expect("line fits"))
        .expect("a line in main");
    let err = bin
        .resolve_line("orders.c", line)
        .expect_err("main's ranges are corrupt");
    assert!(
        err.to_string().contains("address overflow"),
        "the sentence names the problem: {err}"
    );
    // Symbolizing an address of main goes through the same ranges: no panic, no name.
    let _ = bin.symbolize(detrix_agent::debuginfo::LinkAddr(start + 4));
}
