//! Snapshots of `detrix-agent resolve` for every probe line of every multi-language fixture
//! build (C/C++ -O0/-O2, Rust debug/opt-level=3, Go 1.19/1.23 with `-N -l` and optimized):
//! probe points (inlined and monomorphized copies), addresses, placement, and per expression
//! the plan steps or the reason it cannot be captured. No process and no root needed.
//!
//! Source paths are shown relative to the fixture directory (`--strip-prefix`), so no machine
//! path is in a snapshot. No absolute address is either: where code and data land in a binary
//! moves with things no test controls (the standard library a toolchain build links, the linker's
//! section order), so every address is shown as the ELF symbol that holds it plus an offset
//! (`process+0x33`, `g_counter+0x0`; [`symbolic`]) and the file offset as its distance from the
//! address. What the snapshot pins is what the agent chose: which instruction of the function,
//! which registers, which plan steps. The toolchain is in each snapshot's description. Review a
//! change with `cargo insta review`, or rerun with `INSTA_UPDATE=always` and read the diff of
//! `tests/snapshots/`.

mod lang;

use std::path::Path;

use detrix_e2e::{run_agent, workspace_root, Value};
use lang::{error_text, marker_line, probes, Expect, FixtureBuild};
use object::{Object, ObjectSymbol, SymbolKind};

/// The binary's function and data symbols as `(start, size, name)`, sorted by start. Rust's
/// legacy mangling ends in a hash of the crate's metadata (`17h<16 hex>E`); it is cut so the
/// name is the same wherever the fixture was built.
fn symbols(exe: &Path) -> Vec<(u64, u64, String)> {
    let bytes = std::fs::read(exe).expect("read the fixture binary");
    let file = object::File::parse(&*bytes).expect("the fixture is an ELF file");
    let hash = |name: &str| -> String {
        match name.len().checked_sub(20) {
            Some(at) if name[at..].starts_with("17h") && name.ends_with('E') => {
                name[..at].to_string()
            }
            _ => name.to_string(),
        }
    };
    let mut out: Vec<(u64, u64, String)> = file
        .symbols()
        .filter(|s| matches!(s.kind(), SymbolKind::Text | SymbolKind::Data) && s.size() > 0)
        .filter_map(|s| Some((s.address(), s.size(), hash(s.name().ok()?))))
        .collect();
    out.sort();
    out
}

/// `addr` as `symbol+0xOFF` when a symbol holds it.
fn symbolic(syms: &[(u64, u64, String)], addr: u64) -> Option<String> {
    let i = syms.partition_point(|(start, _, _)| *start <= addr);
    syms[..i]
        .iter()
        .rev()
        .find(|(start, size, _)| addr < start + size)
        .map(|(start, _, name)| format!("{name}+{:#x}", addr - start))
}

/// Rewrites every address in the resolve output (see the module header): the `addr` and
/// `chosen` fields, `file_offset` as `addr-0x…`, and every `0x…` of at least 0x1000 inside a
/// text (forwarding's "since", a global's `const`, an error's "at") that a symbol holds.
fn machine_independent(v: &mut Value, syms: &[(u64, u64, String)]) {
    let parse = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
    match v {
        Value::Object(map) => {
            let addr = map.get("addr").and_then(Value::as_str).and_then(parse);
            let offset = map
                .get("file_offset")
                .and_then(Value::as_str)
                .and_then(parse);
            if let (Some(a), Some(o)) = (addr, offset) {
                let delta = if a >= o {
                    format!("addr-{:#x}", a - o)
                } else {
                    format!("addr+{:#x}", o - a)
                };
                map.insert("file_offset".into(), Value::from(delta));
            }
            for (_, field) in map.iter_mut() {
                machine_independent(field, syms);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| machine_independent(x, syms)),
        Value::String(text) => {
            let mut out = String::with_capacity(text.len());
            let mut rest = text.as_str();
            while let Some(at) = rest.find("0x") {
                out.push_str(&rest[..at]);
                let digits = rest[at + 2..]
                    .find(|c: char| !c.is_ascii_hexdigit())
                    .map_or(rest.len(), |n| at + 2 + n);
                let token = &rest[at..digits];
                match parse(token)
                    .filter(|a| *a >= 0x1000)
                    .and_then(|a| symbolic(syms, a))
                {
                    Some(named) => out.push_str(&named),
                    None => out.push_str(token),
                }
                rest = &rest[digits..];
            }
            out.push_str(rest);
            *text = out;
        }
        _ => {}
    }
}

fn resolve_all(build: FixtureBuild) {
    let exe = build.build();
    let src_dir = build.debug_dir();
    let prefix = src_dir.to_str().expect("fixture path is UTF-8").to_string();
    let toolchain = build.toolchain();
    let syms = symbols(&exe);
    for probe in probes(&build) {
        let line = marker_line(&build.source(), probe.name);
        let at = format!("{}:{line}", build.file);
        let mut args: Vec<String> = vec![
            "resolve".into(),
            "--binary".into(),
            exe.to_str().expect("build path is UTF-8").into(),
            "--at".into(),
            at.clone(),
            "--strip-prefix".into(),
            prefix.clone(),
        ];
        for (expr, _) in &probe.exprs {
            args.push("--expr".into());
            args.push((*expr).into());
        }
        let out = run_agent(&args);
        out.assert_success();
        let ctx = || format!("`{}`\n--- stdout ---\n{}", out.command, out.stdout);

        let root = workspace_root();
        for machine_path in [
            root.to_str().expect("workspace path is UTF-8"),
            "/root/",
            "/home/",
            "/tmp/",
        ] {
            assert!(
                !out.stdout.contains(machine_path),
                "resolve output contains the machine path `{machine_path}` (--strip-prefix {prefix}): {}",
                ctx()
            );
        }

        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("resolve printed no JSON ({e}): {}", ctx()));
        assert_eq!(
            v["at"],
            Value::from(at.as_str()),
            "\"at\" echoes --at: {}",
            ctx()
        );
        let points = v["points"]
            .as_array()
            .unwrap_or_else(|| panic!("no \"points\" array: {}", ctx()));
        assert_eq!(
            points.len(),
            probe.points,
            "{}: expected {} probe point(s) (copies of the line): {}",
            build.id,
            probe.points,
            ctx()
        );
        assert_eq!(
            v["copies"],
            Value::from(probe.points),
            "\"copies\" counts the points: {}",
            ctx()
        );

        // Each expression has a plan, or exactly the error the build must give.
        for (i, point) in points.iter().enumerate() {
            assert_eq!(
                point["file"],
                Value::from(build.file),
                "point {i} file: {}",
                ctx()
            );
            assert_eq!(
                point["line"],
                Value::from(line),
                "point {i} line: {}",
                ctx()
            );
            for (expr, expect) in &probe.exprs {
                let got = &point["values"][*expr];
                match expect {
                    Expect::Error(msg) => assert_eq!(
                        got["error"],
                        Value::from(error_text(msg, &at)),
                        "{}: `{expr}` at point {i} must fail with exactly this message: {}",
                        build.id,
                        ctx()
                    ),
                    _ => assert!(
                        got["ops"].as_array().is_some_and(|ops| !ops.is_empty()),
                        "{}: `{expr}` at point {i} must resolve to plan ops, got {got}: {}",
                        build.id,
                        ctx()
                    ),
                }
            }
        }

        let mut v = v;
        machine_independent(&mut v, &syms);
        let name = format!("{}__{}", build.id, probe.name);
        insta::with_settings!({
            snapshot_path => "../snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
            description => format!("detrix-agent resolve --binary {} --at {at} --strip-prefix <fixture dir>; {toolchain}", build.id),
        }, {
            insta::assert_json_snapshot!(name, v);
        });
    }
}

#[test]
fn resolve_c_o0() {
    resolve_all(lang::C_O0);
}

#[test]
fn resolve_c_o2() {
    resolve_all(lang::C_O2);
}

/// DWARF expressions (`DW_OP_ne`, `mul`, `and`, `shra`, `div`, `mod`, …) evaluated in the
/// kernel at the hit, equal to what the program printed.
#[test]
fn resolve_c_dwexpr_o2() {
    resolve_all(lang::C_DWEXPR_O2);
}

/// Entry values read from an entry probe's stash (the `entry … of frame at acc` op).
#[test]
fn resolve_stash_c_o2() {
    resolve_all(lang::STASH_C_O2);
}

#[test]
fn resolve_stash_rust_o2() {
    resolve_all(lang::STASH_RUST_O2);
}

#[test]
fn resolve_c_optimized_o2() {
    resolve_all(lang::C_OPTIMIZED_O2);
}

#[test]
fn resolve_cpp_o0() {
    resolve_all(lang::CPP_O0);
}

#[test]
fn resolve_cpp_o2() {
    resolve_all(lang::CPP_O2);
}

#[test]
fn resolve_rust_debug() {
    resolve_all(lang::RUST_DEBUG);
}

#[test]
fn resolve_rust_o3() {
    resolve_all(lang::RUST_O3);
}

#[test]
fn resolve_go119_no_opt() {
    resolve_all(lang::GO119_NL);
}

#[test]
fn resolve_go119_opt() {
    resolve_all(lang::GO119_OPT);
}

#[test]
fn resolve_go123_no_opt() {
    resolve_all(lang::GO123_NL);
}

#[test]
fn resolve_go123_opt() {
    resolve_all(lang::GO123_OPT);
}
