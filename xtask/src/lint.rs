//! `cargo xtask lint`: rustfmt and clippy over every crate, warnings as errors (`.ci/run`).
//!
//! Two clippy runs because the crates build two ways: detrix-ebpf only with nightly for the BPF
//! target (its flags as in `builds::ebpf`, so the `core` it built is reused), everything else
//! with stable — and the agent's build.rs embeds the eBPF object, so that is built first. Run
//! after `cargo xtask test`, clippy finds the object and the dependencies already built.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::{builds, util};

const STAGES: usize = 3;

/// Names the components a fresh toolchain may lack, when one is missing.
const COMPONENTS: &str =
    "needs rustfmt and clippy: `rustup component add rustfmt clippy --toolchain stable` \
     (and `--toolchain nightly` for the eBPF crate)";

/// Fails with [`COMPONENTS`] when `cargo SUB --version` does not run (on `toolchain` if given):
/// so that a failed stage afterwards means the code, not the machine.
fn require(sub: &str, toolchain: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("cargo");
    if let Some(t) = toolchain {
        cmd.arg(format!("+{t}"));
    }
    let ok = cmd
        .args([sub, "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    anyhow::ensure!(ok, "`cargo {sub}` is not installed: {COMPONENTS}");
    Ok(())
}

pub fn run() -> Result<()> {
    let start = Instant::now();
    let root = util::workspace_root()?;
    require("fmt", None)?;
    require("clippy", None)?;
    require("clippy", Some("nightly"))?;
    util::stage("lint", (1, STAGES), "cargo fmt --check", || {
        let mut cmd = Command::new("cargo");
        cmd.args(["fmt", "--all", "--check"]).current_dir(&root);
        util::run(&mut cmd)
            .context("the code is not formatted (the diff is above): run `cargo fmt --all`")
    })?;
    util::stage(
        "lint",
        (2, STAGES),
        "clippy detrix-ebpf (nightly, BPF)",
        || {
            let mut cmd = builds::ebpf_cargo(&root, "clippy")?;
            cmd.args(["--", "-D", "warnings"]);
            util::run(&mut cmd).context("clippy found problems in the eBPF crate (above): fix them")
        },
    )?;
    util::stage(
        "lint",
        (3, STAGES),
        "clippy workspace --all-targets",
        || {
            let obj = builds::ebpf(&root)?;
            let mut cmd = Command::new("cargo");
            cmd.args([
                "clippy",
                "--workspace",
                "--exclude",
                "detrix-ebpf",
                "--all-targets",
            ])
            .args(["--", "-D", "warnings"])
            .current_dir(&root)
            .env(builds::EBPF_OBJ_VAR, &obj);
            util::run(&mut cmd).context("clippy found problems (above): fix them")
        },
    )?;
    println!("lint: all stages passed ({})", util::secs(start));
    Ok(())
}
