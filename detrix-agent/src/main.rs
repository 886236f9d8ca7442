//! The `detrix-agent` binary: argument parsing, logging setup, and error reporting. All the
//! work is in the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use detrix_agent::capture::{self, Format, StopReason};

#[derive(Parser, Debug)]
#[command(name = "detrix-agent", version, about = "Watch values inside a running native program at any source line, without stopping it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Capture values at a source line of a running process and print one line per hit.
    Capture(CaptureArgs),
}

#[derive(clap::Args, Debug)]
struct CaptureArgs {
    /// Process to capture from.
    #[arg(long)]
    pid: u32,
    /// Source location: FILE:LINE, FILE absolute, a path suffix, or a unique basename.
    #[arg(long, value_name = "FILE:LINE")]
    at: String,
    /// Expression to capture (repeatable): x, a.b, p->f, *p, a[3].
    #[arg(long = "expr", value_name = "EXPR", required = true)]
    exprs: Vec<String>,
    /// Stop after N hits (default: until Ctrl-C, SIGTERM, or the target exits).
    #[arg(long)]
    count: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Longest string captured, in bytes; longer strings end with `...(truncated)`.
    #[arg(long, default_value_t = 256)]
    string_cap: u32,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum OutputFormat {
    Json,
    Text,
}

fn parse_at(at: &str) -> anyhow::Result<(String, u32)> {
    let (file, line) = at
        .rsplit_once(':')
        .with_context(|| format!("--at `{at}` is not FILE:LINE (e.g. orders.c:42)"))?;
    let line: u32 = line.parse().with_context(|| format!("--at `{at}`: `{line}` is not a line number"))?;
    anyhow::ensure!(!file.is_empty() && line > 0, "--at `{at}` is not FILE:LINE with a line ≥ 1");
    Ok((file.to_owned(), line))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message already contains
/// (library errors embed their source in the sentence).
fn render_error(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Capture(args) => {
            let (file, line) = parse_at(&args.at)?;
            let req = capture::Request {
                pid: args.pid,
                file,
                line,
                exprs: args.exprs,
                count: args.count,
                format: match args.format {
                    OutputFormat::Json => Format::Json,
                    OutputFormat::Text => Format::Text,
                },
                string_cap: args.string_cap,
            };
            let prepared = capture::prepare(&req)?;
            for p in prepared.points() {
                eprintln!(
                    "capture: {}:{} → {} at {} (file offset {})",
                    req.file, req.line, p.function, p.addr, p.file_offset
                );
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the event loop")?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let summary = rt.block_on(capture::run(&req, prepared, &mut out))?;
            for (p, c) in &summary.probes {
                eprintln!(
                    "capture: {} @ {}: hits={} emitted={} printed={} dropped_ring_full={} read_faults={} other_process={} bpf_ns={}",
                    p.function, p.addr, c.hits, c.emitted, summary.printed, c.dropped_ring_full, c.read_faults, c.other_process, c.bpf_ns
                );
            }
            match summary.reason {
                StopReason::CountReached => {}
                StopReason::Signal => eprintln!("capture: stopped by signal; all probes removed"),
                StopReason::TargetExited => eprintln!("capture: process {} exited; all probes removed", req.pid),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
