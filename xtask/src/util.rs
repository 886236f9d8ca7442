//! Small helpers shared by the tasks: paths, running commands, timing.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Variables that `cargo xtask` (through cargo and the rustup proxy) puts into our environment.
/// They pin the outer stable toolchain, so a nested `rustup run nightly cargo` would otherwise
/// build with stable's rustc and fail; they are removed from every toolchain-switching child.
const LEAKED_TOOLCHAIN_VARS: [&str; 7] = [
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTUP_TOOLCHAIN",
    "CARGO",
    "CARGO_ENCODED_RUSTFLAGS",
];

/// The workspace root, so every task works from any current directory.
pub fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the current directory, as cargo
/// reads it) or `<root>/target`. Absolute, so it can be handed to children running elsewhere.
pub fn target_dir(root: &Path) -> Result<PathBuf> {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                Ok(dir)
            } else {
                Ok(env::current_dir()
                    .context("reading the current directory")?
                    .join(dir))
            }
        }
        _ => Ok(root.join("target")),
    }
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`): where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("bin"));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo").join("bin"))
}

/// `PATH` with the cargo bin directory first, so a child finds the bpf-linker we checked.
pub fn path_with_cargo_bin() -> Result<OsString> {
    let mut dirs = vec![cargo_bin_dir()?];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).context("building PATH")
}

/// Removes the outer toolchain's variables (see [`LEAKED_TOOLCHAIN_VARS`]) from `cmd`.
pub fn scrub_toolchain_env(cmd: &mut Command) -> &mut Command {
    for var in LEAKED_TOOLCHAIN_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// A command line for messages (`program arg arg`), without Rust's debug quoting.
pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd` with inherited stdio and fails unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let status = cmd.status().with_context(|| format!("starting `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd`, returns its stdout; fails (with its stderr) unless it exits with status 0.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd.output().with_context(|| format!("starting `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Runs stage `index` of `total` of `task` between progress lines (`task: [i/n] name …`, then
/// `ok`/`FAILED` with its time), so a failure still says which stage and how long.
pub fn stage<T>(
    task: &str,
    (index, total): (usize, usize),
    name: &str,
    body: impl FnOnce() -> Result<T>,
) -> Result<T> {
    println!("{task}: [{index}/{total}] {name} …");
    let start = Instant::now();
    let result = body();
    let verdict = if result.is_ok() { "ok" } else { "FAILED" };
    println!(
        "{task}: [{index}/{total}] {name} {verdict} ({})",
        secs(start)
    );
    result.with_context(|| format!("{task} stage `{name}`"))
}

/// Seconds since `start`, formatted for progress lines.
pub fn secs(start: Instant) -> String {
    format!("{:.1} s", start.elapsed().as_secs_f64())
}
