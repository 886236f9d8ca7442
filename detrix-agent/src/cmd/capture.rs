//! `detrix-agent capture`: the flags of one logpoint captured without a daemon, the call into
//! `detrix_agent::capture`, and what it prints (each probe's placement, `--explain`, the
//! summary line of counters on exit). Here, not in `main.rs`, because it is the longest
//! subcommand; the work itself is the library's.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::ValueEnum;
use detrix_agent::capture::{self, Format, StopReason};

use crate::parse_at;

#[derive(clap::Args, Debug)]
pub struct CaptureArgs {
    /// Process to capture from.
    #[arg(long)]
    pid: u32,
    /// Source location: FILE:LINE, FILE absolute, a path suffix, or a unique basename.
    #[arg(long, value_name = "FILE:LINE")]
    at: String,
    /// Expression to capture (repeatable): x, a.b, p->f, *p, a[3]. Optional with --locals or
    /// --stack.
    #[arg(long = "expr", value_name = "EXPR", required_unless_present_any = ["locals", "stack"])]
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
    /// Most elements of a slice or Vec captured; the rest show as `...+N more`.
    #[arg(long, default_value_t = detrix_agent::plan::DEFAULT_ELEM_CAP, value_parser = clap::value_parser!(u32).range(1..=256))]
    max_elements: u32,
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
    /// Read every value from where the debug info says it is, even when a register holds a
    /// copy at the probe (saves a user-memory read per value; `--explain` lists each).
    #[arg(long)]
    no_forwarding: bool,
    /// Print, for each probe, the instructions considered and why its address was chosen.
    #[arg(long)]
    explain: bool,
    /// Also capture the user stack at each hit (function, file, line per frame).
    #[arg(long)]
    stack: bool,
    /// Also capture every parameter and local in scope at each hit.
    #[arg(long)]
    locals: bool,
    /// Print each plan step that faults, as the eBPF program reports it (off: no cost).
    #[arg(long)]
    ebpf_log: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum OutputFormat {
    Json,
    Text,
}

/// Runs `capture`: prepares the logpoint, prints where each probe went, captures until the
/// count, a signal or the target's exit, and prints the counters.
pub fn run(args: CaptureArgs) -> anyhow::Result<ExitCode> {
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
        elem_cap: args.max_elements,
        when: args.when,
        rate_per_sec: args.rate,
        burst: args.burst,
        cpu_budget: args.cpu_budget / 100.0,
        placement: !args.no_placement,
        forwarding: !args.no_forwarding,
        stack: args.stack,
        locals: args.locals,
        ebpf_log: args.ebpf_log,
    };
    let prepared = capture::prepare(&req)?;
    for (p, built, placement) in prepared.plans() {
        eprintln!(
            "capture: {}:{} → {} at {} (file offset {}, {:?})",
            req.file, req.line, p.function, p.addr, p.file_offset, placement.kind
        );
        if args.explain {
            for line in &placement.explain {
                eprintln!("  {line}");
            }
            let steps = detrix_agent::plan::describe_ops(&built.plan);
            eprintln!(
                "capture: plan: {} steps, {} reads of the target's memory: {}",
                steps.len(),
                detrix_agent::plan::memory_reads(&built.plan),
                steps.join("; ")
            );
        }
    }
    let functions = prepared
        .points()
        .map(|(p, _)| p.function.clone())
        .collect::<Vec<_>>()
        .join(",");
    let addrs = prepared
        .points()
        .map(|(p, _)| p.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the event loop")?;
    let stdout = std::io::stdout();
    // Buffered: `run` flushes once per batch of hits, not once per line.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let summary = rt.block_on(capture::run(&req, prepared, &mut out))?;
    drop(out);
    // The counters by name, `printed` (what reached stdout) after `emitted`.
    let mut counts = String::new();
    for (f, v) in summary.counters.named() {
        let _ = write!(counts, " {}={v}", f.name);
        if f.name == "emitted" {
            let _ = write!(counts, " printed={}", summary.printed);
        }
    }
    eprintln!(
        "capture: {functions} @ {addrs}:{counts}{}",
        summary
            .switched_off
            .as_ref()
            .map(|w| format!(" switched_off=\"{w}\""))
            .unwrap_or_default()
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
