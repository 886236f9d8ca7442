//! Stacks captured at a hit without stopping the target: frames (function, line) equal the
//! fixture's known call chain, with frame pointers (-O0) and without them (-O2, where
//! `process` is inlined into `main` and only CFI can find the caller), and in an optimized
//! Rust build every frame's file and line equal what binutils' addr2line says for its address,
//! inlined calls included.

mod lang;

use std::path::Path;
use std::process::Command;

use detrix_e2e::{
    agent_bin, build_c_fixture, c_fixture_source, capture_args, marker_line, require_root,
    run_with_timeout, Build, Fixture, AGENT_TIMEOUT,
};

/// `(function, line)` of each frame in the event's `stack`, up to the first frame outside the
/// executable.
fn frames(v: &serde_json::Value) -> Vec<(String, i64)> {
    let stack = v["stack"].as_array().cloned().unwrap_or_default();
    stack
        .iter()
        .take_while(|f| f["module"].is_null())
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("?").to_owned(),
                f["line"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn check(build: Build) {
    require_root();
    let bin = agent_bin();
    let exe = build_c_fixture("orders", build);
    let mut fixture = Fixture::start(&exe, &["-1", "20"]);
    let src = c_fixture_source("orders");
    let at = format!("orders.c:{}", marker_line(&src, "process"));
    // The caller's frame is at main's call of process().
    let text = std::fs::read_to_string(&src).expect("fixture source");
    let call_line = text
        .lines()
        .position(|l| l.contains("= process(&o, round);"))
        .expect("call site in orders.c")
        + 1;
    let mut cmd = Command::new(bin);
    cmd.args(capture_args(
        fixture.pid(),
        &at,
        &["round"],
        &["--format", "json", "--count", "3", "--stack"],
    ));
    let out = run_with_timeout(cmd, AGENT_TIMEOUT);
    out.assert_success();
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON event line"))
        .collect();
    assert_eq!(events.len(), 3, "{}", out.stderr);
    for e in &events {
        let got = frames(e);
        let want = vec![
            (
                "process".to_owned(),
                i64::from(marker_line(&src, "process")),
            ),
            ("main".to_owned(), call_line as i64),
        ];
        assert_eq!(got, want, "stack of {e} ({build:?})");
        // The first frame outside the executable is libc's, named by module.
        let stack = e["stack"].as_array().cloned().unwrap_or_default();
        assert!(
            stack
                .iter()
                .any(|f| f["module"].as_str().is_some_and(|m| m.starts_with("libc"))),
            "libc frame in {e}"
        );
    }
    fixture.assert_keeps_running(3);
}

#[test]
fn stack_with_frame_pointers_o0() {
    check(Build::Debug);
}

#[test]
fn stack_without_frame_pointers_o2_unwound_with_cfi() {
    check(Build::Optimized);
}

/// More than 64 values at one probe (issue #12 point 5; 16 before ABI 9): on an -O2 build
/// without frame pointers the stack takes 5 of the event's 64 value slots (registers and 4
/// stack chunks for CFI unwinding), so 60 expressions with `--stack` are refused with a
/// sentence naming the limit, and 56 (within the 128 plan steps too) are each captured
/// exactly, with the exact stack.
#[test]
fn sixty_values_and_a_cfi_stack_are_refused_and_fifty_six_are_exact() {
    require_root();
    let exe = build_c_fixture("orders", Build::Optimized);
    let mut fixture = Fixture::start(&exe, &["-1", "20"]);
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let at = format!("orders.c:{line}");
    // `round`, `(round)`, `((round))`, …: distinct expressions, one value.
    let exprs: Vec<String> = (0..60)
        .map(|k| format!("{}round{}", "(".repeat(k), ")".repeat(k)))
        .collect();
    let all: Vec<&str> = exprs.iter().map(String::as_str).collect();
    let run = |exprs: &[&str]| {
        let mut cmd = Command::new(agent_bin());
        cmd.args(capture_args(
            fixture.pid(),
            &at,
            exprs,
            &["--format", "json", "--count", "3", "--stack"],
        ));
        run_with_timeout(cmd, AGENT_TIMEOUT)
    };
    run(&all).assert_failure_with(
        "too much to capture at one point: 60 expressions and the stack (5 values) are 65 values (at most 64, so at most 59 expressions with the stack)",
    );
    let out = run(&all[..56]);
    out.assert_success();
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON event line"))
        .collect();
    assert_eq!(events.len(), 3, "{}", out.stderr);
    for e in &events {
        let round = e["values"]["round"]
            .as_i64()
            .unwrap_or_else(|| panic!("round in {e}"));
        for x in &all[..56] {
            assert_eq!(e["values"][x].as_i64(), Some(round), "{x} in {e}");
        }
        assert_eq!(
            e["values"].as_object().map(serde_json::Map::len),
            Some(56),
            "{e}"
        );
        // The round the fixture itself printed at that line.
        fixture.process_line(round, std::time::Duration::from_secs(10));
        let got = frames(e);
        assert_eq!(got[0], ("process".to_owned(), i64::from(line)), "{e}");
        assert_eq!(got.last().map(|f| f.0.as_str()), Some("main"), "{e}");
    }
    fixture.assert_keeps_running(3);
}

/// The reference symbolizer: binutils' addr2line, there wherever gcc builds the C fixtures
/// (llvm-symbolizer-22 agreed with it on every address of the Rust fixture checked when this
/// test was written).
const REFERENCE: &str = "addr2line";

/// Where file offset 0 of `exe` is mapped in process `pid`, minus its link address: runtime
/// address − bias = the link address addr2line takes. 0 for a non-PIE executable.
fn load_bias(pid: u32, exe: &Path) -> u64 {
    let elf = std::fs::read(exe).expect("read the fixture executable");
    let u16_at = |o: usize| u16::from_le_bytes(elf_bytes(&elf, o));
    let u32_at = |o: usize| u32::from_le_bytes(elf_bytes(&elf, o));
    let u64_at = |o: usize| u64::from_le_bytes(elf_bytes(&elf, o));
    // ELF64 little-endian: e_type at 16 (ET_DYN = 3), e_phoff at 32, e_phentsize at 54,
    // e_phnum at 56; a program header has p_type at 0 (PT_LOAD = 1), p_offset at 8, p_vaddr at 16.
    if u16_at(16) != 3 {
        return 0;
    }
    let (phoff, phsize, phnum) = (
        u64_at(32) as usize,
        usize::from(u16_at(54)),
        usize::from(u16_at(56)),
    );
    let link = (0..phnum)
        .map(|i| phoff + i * phsize)
        .find(|&ph| u32_at(ph) == 1 && u64_at(ph + 8) == 0)
        .map(|ph| u64_at(ph + 16))
        .expect("a PT_LOAD segment at file offset 0");
    let exe = exe.canonicalize().expect("canonical fixture path");
    let maps =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read the fixture's maps");
    let start = maps
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at_zero = f
                .get(2)
                .is_some_and(|o| u64::from_str_radix(o, 16) == Ok(0));
            (at_zero && f.get(5).is_some_and(|p| Path::new(p) == exe))
                .then(|| f[0].split('-').next().expect("a range"))
        })
        .unwrap_or_else(|| panic!("no mapping of {} at offset 0 in:\n{maps}", exe.display()));
    u64::from_str_radix(start, 16).expect("hex start address") - link
}

/// `N` bytes of `elf` at `at`.
fn elf_bytes<const N: usize>(elf: &[u8], at: usize) -> [u8; N] {
    elf.get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .unwrap_or_else(|| panic!("ELF field at {at} is past the end"))
}

/// addr2line's `file:line` for each frame (innermost first, inlined calls included) at each
/// link address.
fn reference_frames(exe: &Path, addrs: &[u64]) -> Vec<Vec<(String, i64)>> {
    let out = Command::new(REFERENCE)
        .args(["--addresses", "--inlines", "-e"])
        .arg(exe)
        .args(addrs.iter().map(|a| format!("{a:#x}")))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {REFERENCE} (binutils; `cargo xtask setup` installs gcc, which needs it): {e}"));
    assert!(
        out.status.success(),
        "{REFERENCE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all: Vec<Vec<(String, i64)>> = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if l.starts_with("0x") {
            all.push(Vec::new());
            continue;
        }
        // `file:line`, sometimes followed by ` (discriminator N)`; `??:?` or `??:0` when unknown.
        let l = l.split(" (discriminator").next().unwrap_or(l);
        let (file, line) = l
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{REFERENCE} printed {l:?}"));
        all.last_mut()
            .expect("an address line first")
            .push((file.to_owned(), line.parse().unwrap_or(0)));
    }
    assert_eq!(all.len(), addrs.len(), "{REFERENCE} answered every address");
    all
}

/// In an optimized Rust build, std code inlined into Rust code (and Rust code into std's) puts
/// caller and callee of one inlined call in different files: each frame's file and line must be
/// the reference's, the caller's frame at the call site (`DW_AT_call_file`/`DW_AT_call_line`).
#[test]
fn rust_opt_inlined_frames_match_addr2line() {
    require_root();
    let build = lang::RUST_O3;
    let exe = build.build();
    let src = build.source();
    let fixture = Fixture::start(&exe, &["-1", "20"]);
    let probe_line = lang::marker_line(&src, "process");
    let text = std::fs::read_to_string(&src).expect("fixture source");
    let call_line = text
        .lines()
        .position(|l| l.contains("= process(black_box(&o), round);"))
        .expect("call site in orders.rs")
        + 1;
    let at = format!("{}:{probe_line}", build.file);
    let mut cmd = Command::new(agent_bin());
    cmd.args(capture_args(
        fixture.pid(),
        &at,
        &["round"],
        &["--format", "json", "--count", "2", "--stack"],
    ));
    let out = run_with_timeout(cmd, AGENT_TIMEOUT);
    out.assert_success();
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON event line"))
        .collect();
    assert_eq!(events.len(), 2, "{}", out.stderr);
    let bias = load_bias(fixture.pid(), &exe);
    let src = build.debug_source().to_string_lossy().into_owned();
    for e in &events {
        // Frames in the executable, grouped by pc: one group per machine frame, several frames
        // in a group when its pc is in inlined code.
        let mut groups: Vec<(u64, Vec<(String, i64)>)> = Vec::new();
        for f in e["stack"]
            .as_array()
            .expect("a stack")
            .iter()
            .take_while(|f| f["module"].is_null())
        {
            let pc =
                u64::from_str_radix(f["pc"].as_str().expect("pc").trim_start_matches("0x"), 16)
                    .expect("hex pc");
            let frame = (
                f["file"].as_str().unwrap_or("??").to_owned(),
                f["line"].as_i64().unwrap_or(0),
            );
            match groups.last_mut() {
                Some((last, frames)) if *last == pc => frames.push(frame),
                _ => groups.push((pc, vec![frame])),
            }
        }
        // The hit's pc is the instruction itself; a return address follows its call.
        let addrs: Vec<u64> = groups
            .iter()
            .enumerate()
            .map(|(i, (pc, _))| pc - u64::from(i > 0) - bias)
            .collect();
        let got: Vec<Vec<(String, i64)>> = groups.into_iter().map(|(_, f)| f).collect();
        let want = reference_frames(&exe, &addrs);
        assert_eq!(got, want, "frames at link addresses {addrs:#x?} of {e}");
        // Not vacuous: the hit's frame and main's are where the source says, and at least one
        // machine frame holds an inlined call from one file into another (in std's start-up
        // code, which calls main).
        assert_eq!(
            got[0][0],
            (src.clone(), i64::from(probe_line)),
            "the hit's frame"
        );
        assert_eq!(
            got[1][got[1].len() - 1],
            (src.clone(), call_line as i64),
            "main's frame at the call of process"
        );
        assert!(
            got.iter().any(|g| g.windows(2).any(|w| w[0].0 != w[1].0)),
            "no inlined call across files among {got:?}"
        );
    }
}
