//! `cargo xtask test`: the tests need the eBPF object and the agent binary, which plain
//! `cargo test` cannot build (nightly + BPF target), so build them first and pass their paths.

use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use crate::{builds, util};

/// Env var through which the end-to-end tests find the agent binary.
const AGENT_BIN_VAR: &str = "DETRIX_AGENT_BIN";

const STAGES: usize = 3;

/// Builds, then runs `cargo test` over the workspace (minus the eBPF crate, E9).
pub fn run(extra: &[String]) -> Result<()> {
    let start = Instant::now();
    let root = util::workspace_root()?;

    let obj = stage(1, "build-ebpf", || builds::ebpf(&root))?;
    let agent = stage(2, "build detrix-agent", || builds::agent(&root, &obj))?;
    stage(3, "cargo test", || {
        let (cargo_args, test_args) = split_extra(extra);
        let mut cmd = Command::new("cargo");
        cmd.args([
            "test",
            "--workspace",
            "--exclude",
            "detrix-ebpf",
            "--no-fail-fast",
        ])
        .args(cargo_args)
        .current_dir(&root)
        .env(builds::EBPF_OBJ_VAR, &obj)
        .env(AGENT_BIN_VAR, &agent);
        if !test_args.is_empty() {
            cmd.arg("--").args(test_args);
        }
        util::run(&mut cmd)
    })?;
    println!("test: all stages passed ({})", util::secs(start));
    Ok(())
}

fn stage<T>(index: usize, name: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    util::stage("test", (index, STAGES), name, body)
}

/// `a -- b` → cargo gets `a`, the test binaries `b`; without an inner `--` everything goes to
/// the test binaries, so `cargo xtask test -- --nocapture` means what it says.
fn split_extra(extra: &[String]) -> (&[String], &[String]) {
    match extra.iter().position(|a| a == "--") {
        Some(i) => (&extra[..i], &extra[i + 1..]),
        None => (&[], extra),
    }
}

#[cfg(test)]
mod tests {
    use super::split_extra;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn args_without_separator_go_to_the_test_binaries() {
        let extra = strings(&["--nocapture"]);
        assert_eq!(split_extra(&extra), (&[][..], &extra[..]));
    }

    #[test]
    fn args_before_an_inner_separator_go_to_cargo() {
        let extra = strings(&["-p", "x", "--", "--nocapture"]);
        let (cargo, tests) = split_extra(&extra);
        assert_eq!((cargo, tests), (&extra[..2], &extra[3..]));
    }
}
