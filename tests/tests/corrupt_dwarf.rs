//! Debug info a target's owner can write is outside input: a corrupt or crafted binary must
//! get a sentence, never a panic of the root agent. Each test takes a real fixture, damages
//! one field the way fuzz/elf found it, and resolves a line in it. No process and no root
//! needed.

use std::path::Path;

use detrix_agent::debuginfo::Binary;
use detrix_e2e::{build_c_fixture, Build};
use object::{Object, ObjectSection, ObjectSymbol};

/// Parses the damaged `orders` bytes and resolves a line of its `main`, which must fail:
/// the parsed binary and the error.
fn resolve_in_main(bytes: &[u8]) -> (Binary, detrix_agent::debuginfo::ResolveError) {
    let bin = Binary::from_bytes(Path::new("/corrupt/orders"), bytes).expect("the ELF parses");
    let src =
        std::fs::read_to_string(detrix_e2e::c_fixture_source("orders")).expect("read orders.c");
    let line = src
        .lines()
        .position(|l| l.contains("int delay_ms"))
        .map(|i| u32::try_from(i + 1).expect("line fits"))
        .expect("a line in main");
    let err = bin
        .resolve_line("orders.c", line)
        .expect_err("main's line resolves through the damaged field");
    (bin, err)
}

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
    let (bin, err) = resolve_in_main(&bytes);
    assert!(
        err.to_string().contains("address overflow"),
        "the sentence names the problem: {err}"
    );
    // Symbolizing an address of main goes through the same ranges: no panic, no name.
    let _ = bin.symbolize(detrix_agent::debuginfo::LinkAddr(start + 4));
}

/// The `PT_LOAD` holding `main` with a `p_offset` near the top of the address space: the file
/// offset of an address in it (`addr - p_vaddr + p_offset`) overflows (fuzz/elf crashed on
/// `attempt to add with overflow` in `file_offset`; wrapped, in a release build, the probe would
/// have named another instruction). Resolving a line of main says the header is corrupt.
#[test]
fn a_segment_offset_past_the_address_space_is_an_error_not_a_panic() {
    let exe = build_c_fixture("orders", Build::Debug);
    let mut bytes = std::fs::read(&exe).expect("read the fixture");
    let main = {
        let file = object::File::parse(&*bytes).expect("an ELF file");
        file.symbols()
            .find(|s| s.name() == Ok("main") && s.size() > 0)
            .expect("a main symbol with a size")
            .address()
    };
    // ELF64 header: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38; in each program
    // header p_type at 0, p_offset at 8, p_vaddr at 16, p_memsz at 40.
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let phoff = usize::try_from(u64_at(&bytes, 0x20)).expect("offset fits");
    let (size, count) = (u16_at(&bytes, 0x36), u16_at(&bytes, 0x38));
    let header = (0..count)
        .map(|i| phoff + i * size)
        .find(|&h| {
            let (kind, vaddr, memsz) = (
                u32::from_le_bytes(bytes[h..h + 4].try_into().expect("4 bytes")),
                u64_at(&bytes, h + 16),
                u64_at(&bytes, h + 40),
            );
            kind == 1 && (vaddr..vaddr + memsz).contains(&main) && main > vaddr
        })
        .expect("a PT_LOAD holding main, past its start");
    bytes[header + 8..header + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    let (_, err) = resolve_in_main(&bytes);
    assert!(
        err.to_string()
            .contains("program header of the one that does is corrupt"),
        "the sentence names the problem: {err}"
    );
}
