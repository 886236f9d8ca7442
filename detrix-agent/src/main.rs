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
    /// Only hits where this holds, evaluated in the kernel: `EXPR OP CONST` with OP one of
    /// == != < <= > >= ^= (starts with), e.g. 'o->qty > 10' or 'name ^= "al"'.
    #[arg(long, value_name = "CONDITION")]
    when: Option<String>,
    /// Events per second each probe may emit (0 = unlimited); the rest are counted as rate-limited.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Events that may pass at once before the rate applies.
    #[arg(long, default_value_t = 1_000)]
    burst: u32,
    /// Percent of one CPU a probe may cost (BPF time + trap estimate) before it is switched off.
    #[arg(long, default_value_t = 20.0)]
    cpu_budget: f64,
    /// Keep each probe on its line's first instruction even when an emulated one would do.
    #[arg(long)]
    no_placement: bool,
    /// Print, for each probe, the instructions considered and why its address was chosen.
    #[arg(long)]
    explain: bool,
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
                when: args.when,
                rate_per_sec: args.rate,
                burst: args.burst,
                cpu_budget: args.cpu_budget / 100.0,
                placement: !args.no_placement,
            };
            let prepared = capture::prepare(&req)?;
            for (p, placement) in prepared.points() {
                eprintln!(
                    "capture: {}:{} → {} at {} (file offset {}, {:?})",
                    req.file, req.line, p.function, p.addr, p.file_offset, placement.kind
                );
                if args.explain {
                    for line in &placement.explain {
                        eprintln!("  {line}");
                    }
                }
            }
            let functions = prepared.points().map(|(p, _)| p.function.clone()).collect::<Vec<_>>().join(",");
            let addrs = prepared.points().map(|(p, _)| p.addr.to_string()).collect::<Vec<_>>().join(",");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the event loop")?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let summary = rt.block_on(capture::run(&req, prepared, &mut out))?;
            let c = &summary.counters;
            eprintln!(
                "capture: {} @ {}: hits={} emitted={} printed={} dropped_ring_full={} rate_limited={} condition_false={} \
                 read_faults={} no_plan={} other_process={} bpf_ns={}{}",
                functions,
                addrs,
                c.hits,
                c.emitted,
                summary.printed,
                c.dropped_ring_full,
                c.rate_limited,
                c.condition_false,
                c.read_faults,
                c.no_plan,
                c.other_process,
                c.bpf_ns,
                summary.switched_off.as_ref().map(|w| format!(" switched_off=\"{w}\"")).unwrap_or_default()
            );
            match summary.reason {
                StopReason::CountReached => Ok(ExitCode::SUCCESS),
                StopReason::Signal => {
                    eprintln!("capture: stopped by signal; all probes removed");
                    Ok(ExitCode::SUCCESS)
                }
                StopReason::TargetExited => {
                    eprintln!("capture: process {} exited; all probes removed", req.pid);
                    Ok(ExitCode::SUCCESS)
                }
                StopReason::OverBudget => {
                    eprintln!("capture: the logpoint exceeded its CPU budget and was switched off (raise --cpu-budget or pick a colder line)");
                    Ok(ExitCode::from(3))
                }
            }
        }
    }
}
