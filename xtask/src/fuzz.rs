//! `cargo xtask fuzz [--seconds N] [TARGET…]`: runs the `cargo fuzz` targets of `fuzz/`
//! (libFuzzer, nightly, AddressSanitizer, release with debug info) one after another, each for N
//! seconds, and prints executions and crashes per target.
//!
//! Why a task: the targets need the eBPF object (the agent library embeds it) and the `orders`
//! fixture (decoders and ELF mutations start from its real DWARF); the committed seeds in
//! `fuzz/seeds/<target>` are only read, the corpus grows in `fuzz/target/corpus/<target>`, and
//! a crash's input lands in `fuzz/target/artifacts/<target>/`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{builds, util};

/// Every target, in the order they run.
pub const TARGETS: [&str; 6] = ["dap", "template", "expr", "control", "decode", "elf"];

/// One target's run.
struct Outcome {
    target: &'static str,
    execs: u64,
    per_sec: u64,
    crashed: bool,
}

/// Runs `targets` (all when empty) for `seconds` each.
pub fn run(seconds: u64, targets: &[String]) -> Result<()> {
    let root = util::workspace_root()?;
    let chosen: Vec<&'static str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        let mut v = Vec::new();
        for t in targets {
            match TARGETS.iter().find(|k| **k == t) {
                Some(k) => v.push(*k),
                None => bail!(
                    "no fuzz target `{t}`; the targets are {}",
                    TARGETS.join(", ")
                ),
            }
        }
        v
    };
    let fuzz_bin = util::cargo_bin_dir()?.join("cargo-fuzz");
    if !fuzz_bin.exists() {
        bail!(
            "{} is missing; run `cargo xtask setup` (it installs cargo-fuzz)",
            fuzz_bin.display()
        );
    }
    let obj = builds::ebpf(&root)?;
    let fuzz_dir = root.join("fuzz");
    let fixtures = fuzz_dir.join("target/fixtures");
    build_fixture(&root, &fixtures)?;

    let mut outcomes = Vec::new();
    for target in chosen {
        outcomes.push(run_one(&fuzz_dir, &obj, &fixtures, target, seconds)?);
    }
    println!(
        "fuzz: {:<9} {:>12} {:>9}  result",
        "target", "execs", "execs/s"
    );
    for o in &outcomes {
        println!(
            "fuzz: {:<9} {:>12} {:>9}  {}",
            o.target,
            o.execs,
            o.per_sec,
            if o.crashed { "CRASH" } else { "ok" }
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crashed)
        .map(|o| o.target)
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz target(s) {} crashed; the inputs are in fuzz/target/artifacts/<target>/ \
             (reproduce with `cargo +nightly fuzz run <target> <file>` in fuzz/)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// `tests/fixtures/c/orders.c` built as the capture tests build it (`gcc -g -O0`).
fn build_fixture(root: &Path, out_dir: &Path) -> Result<()> {
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let src = root.join("tests/fixtures/c/orders.c");
    let out = out_dir.join("orders");
    let mut cmd = Command::new("gcc");
    cmd.args(["-g", "-O0", "-o"]).arg(&out).arg(&src);
    util::run(&mut cmd).context("building the fuzz fixture (gcc; try `cargo xtask setup`)")
}

/// The longest input libFuzzer may build for `target`. Deep expressions and nested JSON are
/// inputs worth their length; a template is rendered once per expression with the whole input
/// as a value, so its cost grows with the square of the length, and past a few KiB the fuzzer
/// spent its time on a handful of huge inputs (726 execs/s at 64 KiB, measured at stop 21).
fn max_len(target: &str) -> usize {
    match target {
        "template" => 4096,
        _ => 65536,
    }
}

fn run_one(
    fuzz_dir: &Path,
    obj: &Path,
    fixtures: &Path,
    target: &'static str,
    seconds: u64,
) -> Result<Outcome> {
    let corpus = fuzz_dir.join("target/corpus").join(target);
    let artifacts = fuzz_dir.join("target/artifacts").join(target);
    for d in [&corpus, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = fuzz_dir.join("seeds").join(target);
    let dict = fuzz_dir.join("dict").join(format!("{target}.dict"));
    let start = Instant::now();
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz", "run", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg(format!("-max_len={}", max_len(target)))
        .arg("-rss_limit_mb=4096");
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.current_dir(fuzz_dir)
        .env("DETRIX_EBPF_OBJ", obj)
        .env("DETRIX_FUZZ_FIXTURES", fixtures)
        .env("PATH", util::path_with_cargo_bin()?)
        .stderr(Stdio::piped());
    util::scrub_toolchain_env(&mut cmd);
    println!("fuzz: {}", util::describe(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("starting cargo fuzz for `{target}`"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stat = |name: &str| -> u64 {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let crashed = !out.status.success();
    if crashed {
        // The last lines say what crashed and where the input was written.
        let lines: Vec<&str> = stderr.lines().collect();
        for l in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("fuzz: {target}: {l}");
        }
    }
    let o = Outcome {
        target,
        execs: stat("number_of_executed_units"),
        per_sec: stat("average_exec_per_sec"),
        crashed,
    };
    println!(
        "fuzz: {target}: {} execs ({}/s) in {}{}",
        o.execs,
        o.per_sec,
        util::secs(start),
        if crashed { ", CRASHED" } else { "" }
    );
    Ok(o)
}
