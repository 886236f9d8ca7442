//! The two builds every other task needs: the eBPF object, then the agent that embeds it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::util;

/// Flags aya-build would pass: without both, the object has no `.BTF` and the verifier rejects
/// programs with subprograms (`missing btf func_info`, toolchain.md V1/V2).
const EBPF_RUSTFLAGS: &str = "-C debuginfo=2 -C link-arg=--btf";

/// Name of the env var through which detrix-agent's build.rs and the tests find the object.
pub const EBPF_OBJ_VAR: &str = "DETRIX_EBPF_OBJ";

/// Builds `detrix-ebpf` with nightly for `bpfel-unknown-none` and returns the object's path.
///
/// Nightly is needed for `-Z build-std=core` (there is no prebuilt `core` for the BPF target).
pub fn ebpf(root: &Path) -> Result<PathBuf> {
    let start = Instant::now();
    let mut cmd = ebpf_cargo(root, "build")?;
    cmd.arg("--bins");
    println!("build-ebpf: {}", util::describe(&cmd));
    util::run(&mut cmd).context("building the eBPF object (try `cargo xtask setup` first)")?;

    let obj = util::target_dir(root)?.join("bpfel-unknown-none/release/detrix-ebpf");
    let size = fs::metadata(&obj)
        .with_context(|| format!("the build succeeded but {} is missing", obj.display()))?
        .len();
    println!(
        "build-ebpf: object {} ({size} bytes), {}",
        obj.display(),
        util::secs(start)
    );
    Ok(obj)
}

/// `rustup run nightly cargo <subcommand> -p detrix-ebpf --release` for the BPF target, with the
/// flags and environment of the object's build, so `build` and `clippy` share one set of
/// artifacts for `core`.
pub fn ebpf_cargo(root: &Path, subcommand: &str) -> Result<Command> {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", subcommand])
        .args(["-p", "detrix-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .current_dir(root)
        .env("RUSTFLAGS", EBPF_RUSTFLAGS)
        .env("PATH", util::path_with_cargo_bin()?);
    util::scrub_toolchain_env(&mut cmd);
    Ok(cmd)
}

/// Builds the agent as `--release` builds it but with full debug info (variables and types:
/// the release profile's `debug = 1` has line tables only), into `target/own-debuginfo`;
/// returns the binary's path. What the coverage bench measures as "the agent's own binary".
pub fn agent_release_with_debuginfo(root: &Path, obj: &Path) -> Result<PathBuf> {
    let dir = util::target_dir(root)?.join("own-debuginfo");
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--release", "-p", "detrix-agent", "--target-dir"])
        .arg(&dir)
        .current_dir(root)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "2")
        .env(EBPF_OBJ_VAR, obj);
    println!("build: {}", util::describe(&cmd));
    util::run(&mut cmd).context("building detrix-agent (release, full debug info)")?;
    let bin = dir.join("release/detrix-agent");
    anyhow::ensure!(
        bin.is_file(),
        "the build succeeded but {} is missing",
        bin.display()
    );
    Ok(bin)
}

/// Builds the agent (debug) with the object embedded; returns the agent binary's path.
pub fn agent(root: &Path, obj: &Path) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "-p", "detrix-agent"])
        .current_dir(root)
        .env(EBPF_OBJ_VAR, obj);
    util::run(&mut cmd).context("building detrix-agent")?;
    let bin = util::target_dir(root)?.join("debug/detrix-agent");
    anyhow::ensure!(
        bin.is_file(),
        "the build succeeded but {} is missing",
        bin.display()
    );
    Ok(bin)
}
