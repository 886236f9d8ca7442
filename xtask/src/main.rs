//! Project tasks for Detrix Agent, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! The eBPF object needs a nightly cargo with `-Z build-std=core` and bpf-linker, while
//! everything else builds on stable; these commands hide that split so that a fresh machine
//! needs only `cargo xtask demo` and `cargo xtask test`.

mod builds;
mod demo;
mod fuzz;
mod lint;
mod server;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Detrix Agent project tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a fresh Debian 12 machine lacks (apt packages, rust-src, bpf-linker); idempotent, needs root.
    Setup,
    /// Build the eBPF object (nightly, bpfel-unknown-none, build-std=core).
    BuildEbpf,
    /// Build the eBPF object and the agent, then run every workspace test.
    ///
    /// Arguments after `--` go to the test binaries (`cargo xtask test -- --nocapture`).
    /// To pass options to `cargo test` itself, put them first and separate with a second
    /// `--`: `cargo xtask test -- -p detrix-e2e -- --nocapture`.
    Test {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt (check only) and clippy with `-D warnings` over every crate, detrix-ebpf included.
    Lint,
    /// Capture values from the C fixture with the agent and show them next to what it prints.
    ///
    /// With `--daemon URL`: attach the agent to the C fixture as a Detrix client of the daemon at
    /// URL, add metrics through the daemon's REST API and print the events as the daemon stored
    /// them, next to what the program printed.
    Demo {
        #[arg(long, value_name = "URL")]
        daemon: Option<String>,
    },
    /// Run the `cargo fuzz` targets in fuzz/ (nightly, libFuzzer), each for `--seconds`, and
    /// print executions and crashes per target. Without TARGET, all of them.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run: dap, template, expr, control, decode, elf.
        targets: Vec<String>,
    },
    /// Per-hit cost table: no probe, empty-program floor, agent captures (placement off/on,
    /// batched vs per-event wakeup), asleep, and an lldb-dap logpoint — one run, as ratios.
    Bench {
        /// Only the real-server section: Redis built `-O2 -g` from its Debian source (fetched
        /// and built under target/bench-server on first use) under `redis-benchmark`, with a
        /// 4-value logpoint on its request handler: throughput probed / unprobed, BPF ns per hit.
        #[arg(long)]
        server: bool,
    },
}

/// Builds the eBPF object, then runs the benchmarks, release builds, one table each:
/// per-hit cost of logpoints (`capture_cost`), of breakpoint-mode stack snapshots against
/// lldb-dap and Delve (`bp_bench`), and of resolving a line in a large binary
/// (`resolve_bench`; `DETRIX_BENCH_RESOLVE_BINARY` and `DETRIX_BENCH_RESOLVE_AT` name another
/// binary and line, e.g. one with more debug info than the agent's own debug build).
fn bench() -> anyhow::Result<()> {
    let root = util::workspace_root()?;
    let obj = builds::ebpf(&root)?;
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(&root)
        .args(["bench", "-p", "detrix-agent", "--bench", "capture_cost"])
        .env("DETRIX_EBPF_OBJ", &obj);
    util::run(&mut cmd)?;
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(&root)
        .args(["build", "--release", "-p", "detrix-agent"])
        .env("DETRIX_EBPF_OBJ", &obj);
    util::run(&mut cmd)?;
    let agent = util::target_dir(&root)?.join("release/detrix-agent");
    for bin in ["bp_bench", "resolve_bench"] {
        let mut cmd = std::process::Command::new("cargo");
        cmd.current_dir(&root)
            .args([
                "run",
                "--release",
                "-p",
                "detrix-e2e",
                "--bin",
                bin,
                "--",
                "--agent",
            ])
            .arg(&agent)
            .env("DETRIX_EBPF_OBJ", &obj);
        // The resolve goal is about ≥ 200 MB of debug info; the agent's own debug build (the
        // default target) has less. Any larger binary can be named here, with a line in it.
        if bin == "resolve_bench" {
            for (var, flag) in [
                ("DETRIX_BENCH_RESOLVE_BINARY", "--binary"),
                ("DETRIX_BENCH_RESOLVE_AT", "--at"),
            ] {
                if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                    cmd.arg(flag).arg(v);
                }
            }
        }
        util::run(&mut cmd)?;
    }
    Ok(())
}

/// `cargo xtask bench --server`: builds the agent (release) and Redis, then runs `server_bench`.
fn server_bench() -> anyhow::Result<()> {
    let root = util::workspace_root()?;
    let obj = builds::ebpf(&root)?;
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(&root)
        .args(["build", "--release", "-p", "detrix-agent"])
        .env("DETRIX_EBPF_OBJ", &obj);
    util::run(&mut cmd)?;
    let agent = util::target_dir(&root)?.join("release/detrix-agent");
    let redis = server::redis(&root)?;
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(&root)
        .args([
            "run",
            "--release",
            "-p",
            "detrix-e2e",
            "--bin",
            "server_bench",
            "--",
        ])
        .arg("--agent")
        .arg(&agent)
        .arg("--redis")
        .arg(&redis)
        .env("DETRIX_EBPF_OBJ", &obj);
    util::run(&mut cmd)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => util::workspace_root().and_then(|root| builds::ebpf(&root).map(drop)),
        Command::Test { args } => test::run(&args),
        Command::Lint => lint::run(),
        Command::Demo { daemon: None } => demo::run(),
        Command::Demo { daemon: Some(url) } => demo::run_with_daemon(&url),
        Command::Fuzz { seconds, targets } => fuzz::run(seconds, &targets),
        Command::Bench { server: false } => bench(),
        Command::Bench { server: true } => server_bench(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo xtask test -- a -- b` must keep the inner `--` for `test::split_extra`.
    #[test]
    fn test_args_keep_inner_separator() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--", "-p", "x", "--", "--nocapture"]).unwrap();
        let Command::Test { args } = cli.command else {
            panic!("not the test command")
        };
        assert_eq!(args, ["-p", "x", "--", "--nocapture"]);
    }
}
