//! `cargo xtask setup`: installs what a fresh Debian 12 root machine lacks, following the
//! verified recipe in toolchain.md §1. Every step first checks, and changes something only when
//! the check fails, so a second run is a quick no-op.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use crate::util;

/// Go 1.23 comes only from bookworm-backports. A system-wide file, because a private sources
/// list loses its indexes at the next plain `apt-get update` (toolchain.md §1 notes).
const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/bookworm-backports.list";
const BACKPORTS_LINE: &str = "deb http://deb.debian.org/debian bookworm-backports main";

/// llvm-22-dev for bpf-linker, lldb-22/delve/Go for the debugger comparisons and Go fixtures,
/// gcc/g++ for the C/C++ fixtures.
const APT_PACKAGES: [&str; 8] = [
    "llvm-22-dev",
    "lldb-22",
    "delve",
    "golang-go",
    "golang-1.23-go",
    "gcc",
    "g++",
    "libc6-dev",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION_LINE: &str = "bpf-linker 0.13.0";
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe/type";

/// What a step found.
enum Outcome {
    /// Nothing to do; the text says what was found.
    Present(String),
    /// The step installed or wrote something; the text says what.
    Changed(String),
}

/// A step's place in the progress output (`setup: [2/6] apt packages … `).
struct Step {
    index: usize,
    total: usize,
    name: &'static str,
}

impl Step {
    /// A progress line; used before slow actions whose own output follows.
    fn say(&self, msg: &str) {
        println!(
            "setup: [{}/{}] {} … {msg}",
            self.index, self.total, self.name
        );
    }
}

type StepFn = fn(&Step) -> Result<Outcome>;

const STEPS: [(&str, StepFn); 7] = [
    ("backports source", backports_source),
    ("apt packages", apt_packages),
    ("rust-src (nightly)", rust_src),
    ("nightly LLVM", nightly_llvm),
    ("bpf-linker", bpf_linker),
    ("cargo-fuzz", cargo_fuzz),
    ("uprobe PMU", uprobe_pmu),
];

/// Runs every step in order; stops at the first failure.
pub fn run() -> Result<()> {
    ensure_root()?;
    let start = Instant::now();
    let mut changed = 0;
    for (i, (name, step_fn)) in STEPS.iter().enumerate() {
        let step = Step {
            index: i + 1,
            total: STEPS.len(),
            name,
        };
        let step_start = Instant::now();
        let outcome = step_fn(&step).with_context(|| format!("setup step `{name}`"))?;
        let text = match outcome {
            Outcome::Present(text) => text,
            Outcome::Changed(text) => {
                changed += 1;
                text
            }
        };
        step.say(&format!("{text} ({})", util::secs(step_start)));
    }
    if changed == 0 {
        println!(
            "setup: everything already present, nothing to do ({})",
            util::secs(start)
        );
    } else {
        println!(
            "setup: done, {changed} step(s) changed something ({})",
            util::secs(start)
        );
    }
    Ok(())
}

/// apt and `/etc` need root; say so up front instead of failing halfway through.
fn ensure_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    ensure!(
        euid == "0",
        "setup needs root for apt (and /etc/apt); run it as root (euid is {euid})"
    );
    Ok(())
}

/// (a) The bookworm-backports source, appended to the file if the line is missing.
fn backports_source(_: &Step) -> Result<Outcome> {
    let current = match fs::read_to_string(BACKPORTS_FILE) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {BACKPORTS_FILE}")),
    };
    if current.lines().any(|l| l.trim() == BACKPORTS_LINE) {
        return Ok(Outcome::Present(format!(
            "already present ({BACKPORTS_FILE})"
        )));
    }
    let mut text = current;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(BACKPORTS_LINE);
    text.push('\n');
    fs::write(BACKPORTS_FILE, text).with_context(|| format!("writing {BACKPORTS_FILE}"))?;
    Ok(Outcome::Changed(format!(
        "added `{BACKPORTS_LINE}` to {BACKPORTS_FILE}"
    )))
}

/// (b) Debian packages; `apt-get update` only when something is missing.
fn apt_packages(step: &Step) -> Result<Outcome> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(Outcome::Present(format!(
            "already present ({})",
            APT_PACKAGES.join(" ")
        )));
    }
    step.say(&format!("installing {}", missing.join(" ")));
    apt_get(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt_get(&install)?;
    let still_missing = missing_packages()?;
    ensure!(
        still_missing.is_empty(),
        "still not installed after apt-get: {}",
        still_missing.join(" ")
    );
    Ok(Outcome::Changed(format!("installed {}", missing.join(" "))))
}

fn missing_packages() -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for pkg in APT_PACKAGES {
        if !package_installed(pkg)? {
            missing.push(pkg);
        }
    }
    Ok(missing)
}

/// dpkg's own view; an unknown package (exit 1) counts as not installed.
fn package_installed(pkg: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

/// apt-get without prompts: CI runs with no stdin.
fn apt_get(args: &[&str]) -> Result<()> {
    util::run(
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()),
    )
}

/// (c) `rust-src` for nightly: `-Z build-std=core` compiles `core` for the BPF target from it.
fn rust_src(step: &Step) -> Result<Outcome> {
    if rust_src_installed()? {
        return Ok(Outcome::Present("already present".into()));
    }
    step.say("installing (rustup component add rust-src --toolchain nightly)");
    let mut add = Command::new("rustup");
    add.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    util::run(util::scrub_toolchain_env(&mut add))?;
    ensure!(
        rust_src_installed()?,
        "rust-src still not listed for nightly after installing it"
    );
    Ok(Outcome::Changed("installed".into()))
}

fn rust_src_installed() -> Result<bool> {
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed", "--toolchain", "nightly"]);
    let listed = util::stdout_of(util::scrub_toolchain_env(&mut list))
        .context("listing nightly's components (is the `nightly` toolchain installed?)")?;
    Ok(listed
        .lines()
        .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src-")))
}

/// (d) bpf-linker links Debian's LLVM 22 and cannot read bitcode from another LLVM major
/// (toolchain.md E5). A check only: toolchains are never installed from here.
fn nightly_llvm(_: &Step) -> Result<Outcome> {
    let mut cmd = Command::new("rustc");
    cmd.args(["+nightly", "-vV"]);
    let text = util::stdout_of(util::scrub_toolchain_env(&mut cmd))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("unknown")
            .to_string()
    };
    let llvm = field("LLVM version:");
    if !llvm.starts_with("22.") {
        bail!(
            "`rustc +nightly -vV` reports LLVM version {llvm}, but bpf-linker 0.13.0 is built \
             against Debian's LLVM 22 and needs a nightly on LLVM 22 (toolchain.md E5)"
        );
    }
    Ok(Outcome::Present(format!(
        "ok (rustc {}, LLVM {llvm})",
        field("release:")
    )))
}

/// (e) bpf-linker 0.13.0 built against `libLLVM.so.22`; `cargo install` only if that is not
/// what we find (≈ 50 s on 2 cores).
fn bpf_linker(step: &Step) -> Result<Outcome> {
    let problem = match find_bpf_linker()? {
        Some(path) => match check_bpf_linker(&path) {
            Ok(()) => {
                let msg = format!(
                    "already present ({BPF_LINKER_VERSION_LINE}, LLVM 22, {})",
                    path.display()
                );
                return Ok(Outcome::Present(msg));
            }
            Err(e) => format!("{e:#}"),
        },
        None => "not found".to_string(),
    };
    step.say(&format!(
        "{problem}; installing (cargo install, about a minute)"
    ));
    install_bpf_linker()?;
    let path = find_bpf_linker()?.context("bpf-linker not found after `cargo install`")?;
    check_bpf_linker(&path).context("the freshly installed bpf-linker")?;
    Ok(Outcome::Changed(format!(
        "installed {BPF_LINKER_VERSION_LINE} at {}",
        path.display()
    )))
}

/// Looks in the cargo bin directory first, then `PATH`: the order `build-ebpf` uses.
fn find_bpf_linker() -> Result<Option<PathBuf>> {
    let path = util::path_with_cargo_bin()?;
    Ok(std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file()))
}

fn check_bpf_linker(path: &Path) -> Result<()> {
    let version = util::stdout_of(Command::new(path).arg("--version"))?;
    ensure!(
        version.trim() == BPF_LINKER_VERSION_LINE,
        "{} reports `{}`, want `{BPF_LINKER_VERSION_LINE}`",
        path.display(),
        version.trim()
    );
    let libs = util::stdout_of(Command::new("ldd").arg(path))?;
    ensure!(
        libs.contains("libLLVM.so.22"),
        "{} is not linked against libLLVM.so.22",
        path.display()
    );
    Ok(())
}

/// `llvm-22` feature: the default (`llvm-23`) has no Debian LLVM (E1). `LLVM_PREFIX`: the
/// `llvm-config` on PATH is the image's LLVM 14 (E2). `--force`: we only get here when the
/// installed binary is wrong, and cargo would otherwise call it up to date.
fn install_bpf_linker() -> Result<()> {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "stable", "cargo", "install", "--locked", "--force"])
        .args([
            "bpf-linker@0.13.0",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .stdin(Stdio::null());
    util::run(util::scrub_toolchain_env(&mut cmd))
}

/// The version `cargo xtask fuzz` runs (libFuzzer through `cargo fuzz run`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// `cargo-fuzz` for `cargo xtask fuzz` (and CI's short fuzz stage).
fn cargo_fuzz(step: &Step) -> Result<Outcome> {
    let path = util::cargo_bin_dir()?.join("cargo-fuzz");
    let want = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    if path.is_file() {
        let version =
            util::stdout_of(Command::new(&path).args(["fuzz", "--version"])).unwrap_or_default();
        if version.trim() == want {
            return Ok(Outcome::Present(format!(
                "already present ({want}, {})",
                path.display()
            )));
        }
    }
    step.say("not found; installing (cargo install, about two minutes)");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "stable", "cargo", "install", "--locked", "--force"])
        .arg(format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"))
        .stdin(Stdio::null());
    util::run(util::scrub_toolchain_env(&mut cmd))?;
    Ok(Outcome::Changed(format!(
        "installed {want} at {}",
        path.display()
    )))
}

/// (f) The agent attaches through the kernel's uprobe PMU; without it nothing can work.
fn uprobe_pmu(_: &Step) -> Result<Outcome> {
    match fs::read_to_string(UPROBE_PMU) {
        Ok(pmu_type) => Ok(Outcome::Present(format!("ok (type {})", pmu_type.trim()))),
        Err(e) => bail!("{UPROBE_PMU}: {e}: this kernel has no uprobe PMU (CONFIG_UPROBE_EVENTS), uprobes cannot attach"),
    }
}
