//! Project tasks for Detrix Agent, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! The eBPF object needs a nightly cargo with `-Z build-std=core` and bpf-linker, while
//! everything else builds on stable; these commands hide that split so that a fresh machine
//! needs only `cargo xtask demo` and `cargo xtask test`.

mod builds;
mod demo;
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
    /// Capture values from the C fixture with the agent and show them next to what it prints.
    Demo,
    /// Overhead benchmark (not implemented yet).
    Bench,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => util::workspace_root().and_then(|root| builds::ebpf(&root).map(drop)),
        Command::Test { args } => test::run(&args),
        Command::Demo => demo::run(),
        Command::Bench => {
            // An exit code distinct from a failure, and no invented numbers.
            println!("bench: not implemented yet (tracked in issue 5)");
            return ExitCode::from(2);
        }
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
