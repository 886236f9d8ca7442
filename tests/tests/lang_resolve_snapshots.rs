//! Snapshots of `detrix-agent resolve` for every probe line of every multi-language fixture
//! build (C/C++ -O0/-O2, Rust debug/opt-level=3, Go 1.19/1.23 with `-N -l` and optimized):
//! probe points (inlined and monomorphized copies), addresses, placement, and per expression
//! the plan steps or the reason it cannot be captured. No process and no root needed.
//!
//! Source paths are shown relative to the fixture directory (`--strip-prefix`), so no machine
//! path is in a snapshot; addresses depend on the compilers, which the Debian image pins (the
//! toolchain is in each snapshot's description). Review a change with `cargo insta review`, or
//! rerun with `INSTA_UPDATE=always` and read the diff of `tests/snapshots/`.

mod lang;

use detrix_e2e::{run_agent, workspace_root, Value};
use lang::{error_text, marker_line, probes, Expect, FixtureBuild};

fn resolve_all(build: FixtureBuild) {
    let exe = build.build();
    let src_dir = build.debug_dir();
    let prefix = src_dir.to_str().expect("fixture path is UTF-8").to_string();
    let toolchain = build.toolchain();
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
