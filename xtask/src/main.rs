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
    ///
    /// SECTION picks some: capture, bp, resolve, coverage, availability (values on every
    /// statement line of the optimized fixtures against lldb-22), serve (one host agent: exec →
    /// target, wake, setBreakpoints, many probes, idle RSS, per-hit cost with many targets), fleet
    /// (200 simulated pods, DETRIX_BENCH_FLEET_PODS, over two node agents: staged fleet wake per
    /// stage, the CLI's requests, idle API requests),
    /// server (Redis built `-O2 -g` from its Debian source, fetched and built under
    /// target/bench-server on first use, under `redis-benchmark` with a 4-value logpoint on its
    /// request handler: throughput probed / unprobed, BPF ns per hit). Without one, all of them.
    Bench { sections: Vec<String> },
}

/// Builds the eBPF object, then runs the benchmarks, release builds, one table each:
/// per-hit cost of logpoints (`capture_cost`), of breakpoint-mode stack snapshots against
/// lldb-dap and Delve (`bp_bench`), and of resolving a line in a large binary
/// (`resolve_bench`; `DETRIX_BENCH_RESOLVE_BINARY` and `DETRIX_BENCH_RESOLVE_AT` name another
/// binary and line, e.g. one with more debug info than the agent's own debug build), the
/// share of probe points placement puts on an emulated instruction (`coverage_bench`), values
/// available on every statement line of the optimized fixtures against lldb-22 (`avail_bench`),
/// `serve` on one host (`serve_bench`: exec → target, wake, setBreakpoints, attach of many
/// probes, RSS with idle targets, per-hit cost with many targets), and a staged fleet wake of
/// 200 simulated pods over two node agents (`fleet_bench`), and a real server under a real load
/// generator (`server_bench`: Redis and `redis-benchmark`). `sections` (capture, bp, resolve,
/// coverage, availability, serve, fleet, server) runs only those.
fn bench(sections: &[String]) -> anyhow::Result<()> {
    const ALL: [&str; 8] = [
        "capture",
        "bp",
        "resolve",
        "coverage",
        "availability",
        "serve",
        "fleet",
        "server",
    ];
    if let Some(bad) = sections.iter().find(|s| !ALL.contains(&s.as_str())) {
        anyhow::bail!("`{bad}` is not a bench section; use {}", ALL.join(", "));
    }
    let on = |s: &str| sections.is_empty() || sections.iter().any(|x| x == s);
    let root = util::workspace_root()?;
    let obj = builds::ebpf(&root)?;
    if on("capture") {
        let mut cmd = std::process::Command::new("cargo");
        cmd.current_dir(&root)
            .args(["bench", "-p", "detrix-agent", "--bench", "capture_cost"])
            .env("DETRIX_EBPF_OBJ", &obj);
        util::run(&mut cmd)?;
    }
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(&root)
        .args(["build", "--release", "-p", "detrix-agent"])
        .env("DETRIX_EBPF_OBJ", &obj);
    util::run(&mut cmd)?;
    let agent = util::target_dir(&root)?.join("release/detrix-agent");
    for (section, bin) in [
        ("bp", "bp_bench"),
        ("resolve", "resolve_bench"),
        ("coverage", "coverage_bench"),
        ("availability", "avail_bench"),
        ("serve", "serve_bench"),
        ("fleet", "fleet_bench"),
        ("server", "server_bench"),
    ] {
        if !on(section) {
            continue;
        }
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
        // The fleet's size and idle window (defaults: 200 pods, 300 s).
        if bin == "fleet_bench" {
            for (var, flag) in [
                ("DETRIX_BENCH_FLEET_PODS", "--pods"),
                ("DETRIX_BENCH_FLEET_IDLE_SECONDS", "--idle-seconds"),
            ] {
                if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                    cmd.arg(flag).arg(v);
                }
            }
        }
        // The agent's own release binary, measured with every local in scope: the release
        // profile keeps line tables only (`debug = 1`: no variables), so the measured copy is
        // the same optimized build with full debug info, in a target directory of its own.
        if bin == "coverage_bench" {
            cmd.arg("--own")
                .arg(builds::agent_release_with_debuginfo(&root, &obj)?);
        }
        // Redis is fetched (apt-get source) and built on first use, then reused.
        if bin == "server_bench" {
            cmd.arg("--redis").arg(server::redis(&root)?);
        }
        util::run(&mut cmd)?;
    }
    Ok(())
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
        Command::Bench { sections } => bench(&sections),
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
