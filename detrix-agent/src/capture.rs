//! The one-shot capture session behind `detrix-agent capture`: one logpoint on the
//! [`engine`](crate::engine), one output line per hit, then everything detached. No daemon.
//!
//! Everything that can fail on user input (pid, file, line, names, types) is checked by
//! [`prepare`] before the eBPF program is even loaded, so a bad request never touches the target.

use std::io::Write;
use std::time::Duration;

use crate::engine::{self, Engine, EngineError, EngineOptions, LogpointSpec, Resolver};
use crate::place::Placement;
use crate::plan::Value;
use crate::render::{self, json};
use crate::target;

pub use crate::engine::PreparedCopy;

/// Output format of the capture CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per hit and line.
    Json,
    /// `FILE:LINE pid=P tid=T expr=value …`
    Text,
}

/// What to capture.
#[derive(Debug, Clone)]
pub struct Request {
    pub pid: u32,
    /// `FILE` as the user wrote it (absolute, path suffix or basename).
    pub file: String,
    pub line: u32,
    pub exprs: Vec<String>,
    /// Stop after this many printed hits.
    pub count: Option<u64>,
    pub format: Format,
    pub string_cap: u32,
    /// Most elements of a slice or `Vec` copied; the rest show as `...+N more`.
    pub elem_cap: u32,
    /// In-kernel filter, e.g. `o->qty > 10` (see [`crate::expr::parse_condition`]).
    pub when: Option<String>,
    /// Emitted events per second per probe (0 = unlimited) and burst.
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Share of one CPU a probe may cost (BPF time + trap estimate) before it is switched off.
    pub cpu_budget: f64,
    /// Move probes to an emulated instruction of the same statement when the values allow.
    pub placement: bool,
    /// Read values from registers holding copies of their stack slots at the probe.
    pub forwarding: bool,
    /// Also capture the user stack at each hit.
    pub stack: bool,
    /// Also capture every parameter and local in scope at each hit.
    pub locals: bool,
    /// `--ebpf-log`: the program reports each faulting plan step on stderr.
    pub ebpf_log: bool,
}

/// Why a capture failed.
pub type CaptureError = EngineError;

/// How a capture ended.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Lines printed.
    pub printed: u64,
    /// Counters summed over the logpoint's copies, after detaching (exact).
    pub counters: detrix_common::Counters,
    /// Why the circuit breaker switched the logpoint off, if it did.
    pub switched_off: Option<String>,
    /// Why it stopped.
    pub reason: StopReason,
}

/// Why the capture loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    CountReached,
    Signal,
    TargetExited,
    /// The CPU circuit breaker switched the logpoint off.
    OverBudget,
}

/// A resolved and planned capture, not yet attached.
#[derive(Debug)]
pub struct Prepared {
    resolver: Resolver,
    copies: Vec<engine::PreparedCopy>,
}

impl Prepared {
    /// The process the capture is for.
    #[must_use]
    pub fn target(&self) -> &target::Target {
        &self.resolver.target
    }

    /// Each copy of the line: point, plan and placement (for tools that drive
    /// [`crate::probe::Probes`] themselves, such as the benchmark).
    pub fn plans(
        &self,
    ) -> impl Iterator<
        Item = (
            &crate::debuginfo::ProbePoint,
            &crate::plan::BuiltPlan,
            &Placement,
        ),
    > {
        self.copies
            .iter()
            .map(|c| (&c.point, &c.plan, &c.placement))
    }

    /// The probe points the request resolved to, with where each probe goes and why.
    pub fn points(&self) -> impl Iterator<Item = (&crate::debuginfo::ProbePoint, &Placement)> {
        self.copies.iter().map(|c| (&c.point, &c.placement))
    }
}

fn options(req: &Request) -> EngineOptions {
    EngineOptions {
        string_cap: req.string_cap,
        elem_cap: req.elem_cap,
        rate_per_sec: req.rate_per_sec,
        burst: req.burst,
        placement: req.placement,
        forwarding: req.forwarding,
        load: crate::probe::LoadOptions {
            ebpf_log: req.ebpf_log,
            ..crate::probe::LoadOptions::default()
        },
    }
}

fn spec(req: &Request) -> LogpointSpec {
    LogpointSpec {
        line: req.line,
        exprs: req.exprs.clone(),
        condition: req.when.clone(),
        capture_stack: req.stack,
        capture_locals: req.locals,
    }
}

/// Checks the request against the process and its debug info and builds one plan per copy.
///
/// # Errors
/// Any [`EngineError`] from the target, the resolver or the planner.
pub fn prepare(req: &Request) -> Result<Prepared, CaptureError> {
    let resolver = Resolver::open(req.pid, options(req))?;
    let copies = resolver.prepare(&req.file, &spec(req))?;
    Ok(Prepared { resolver, copies })
}

/// How often the CPU breaker looks at the logpoint's cost.
const BUDGET_WINDOW: Duration = Duration::from_secs(1);

/// Attaches, prints hits to `out` until the count, a signal, the target's exit or the CPU
/// budget, then removes every probe. `out` is flushed after each batch of hits (give it a
/// buffer: a line-buffered stdout writes once per hit).
///
/// # Errors
/// Attach failures (nothing is left attached) and output errors.
pub async fn run(
    req: &Request,
    prepared: Prepared,
    out: &mut dyn Write,
) -> Result<Summary, CaptureError> {
    let (mut engine, mut reader) = Engine::start(prepared.resolver)?;
    let id = engine.install(&req.file, req.line, prepared.copies)?;
    // Tools that start the target themselves wait for this line before letting it run.
    eprintln!("capture: probes attached");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(EngineError::Io)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(EngineError::Io)?;
    let mut liveness = tokio::time::interval(Duration::from_millis(200));
    let mut budget =
        tokio::time::interval_at(tokio::time::Instant::now() + BUDGET_WINDOW, BUDGET_WINDOW);
    let mut printed = 0u64;
    let mut switched_off = None;
    // One flush per batch read from the rings, not per hit: on a hot line a write per event
    // was a system call per hit, CPU taken from the target's machine.
    let mut emit = |hits: Vec<engine::Hit>, printed: &mut u64| -> Result<bool, CaptureError> {
        let mut reached = false;
        for h in hits {
            write_hit(out, req, &h).map_err(EngineError::Io)?;
            *printed += 1;
            if req.count.is_some_and(|n| *printed >= n) {
                reached = true;
                break;
            }
        }
        out.flush().map_err(EngineError::Io)?;
        Ok(reached)
    };
    let reason = loop {
        tokio::select! {
            hits = reader.next_batch() => {
                if emit(hits?, &mut printed)? {
                    break StopReason::CountReached;
                }
            }
            _ = sigterm.recv() => break StopReason::Signal,
            _ = sigint.recv() => break StopReason::Signal,
            _ = liveness.tick() => {
                if !target::alive(req.pid) {
                    break StopReason::TargetExited;
                }
            }
            _ = budget.tick() => {
                if let Some((_, why)) = engine.enforce_budget(BUDGET_WINDOW, req.cpu_budget).into_iter().next() {
                    eprintln!("capture: probe switched off: {why}");
                    switched_off = Some(why);
                    break StopReason::OverBudget;
                }
            }
        }
    };
    // Detach before reading the counters: a hit still in flight would show in `hits` but not
    // yet in its outcome, and the summary's sum must be exact.
    let counters = if switched_off.is_some() {
        None
    } else {
        engine.remove(id)?
    };
    let counters = counters
        .or_else(|| engine.last_removed(id))
        .unwrap_or_default();
    // What was emitted before the detach is still in the ring: print it, or it would be lost
    // silently (only a reached --count leaves events unprinted, and the summary shows them).
    if reason != StopReason::CountReached {
        emit(reader.drain_now(), &mut printed)?;
    }
    Ok(Summary {
        printed,
        counters,
        switched_off,
        reason,
    })
}

fn write_hit(out: &mut dyn Write, req: &Request, hit: &engine::Hit) -> std::io::Result<()> {
    let at = format!("{}:{}", req.file, req.line);
    match req.format {
        Format::Json => {
            let mut map = serde_json::Map::new();
            // Typed values for programs, not the debugger's text (that is for the daemon).
            for (e, n) in &hit.values {
                map.insert(e.clone(), json::value(n));
            }
            let mut obj =
                serde_json::json!({ "at": at, "pid": hit.pid, "tid": hit.tid, "values": map });
            if hit.goid != 0 {
                obj["goid"] = hit.goid.into();
            }
            if req.stack {
                obj["stack"] = hit
                    .stack
                    .iter()
                    .map(|f| serde_json::json!({ "function": f.function, "file": f.file, "line": f.line, "pc": f.pc.to_string(), "module": f.module }))
                    .collect();
            }
            if req.locals {
                obj["locals"] = hit
                    .locals
                    .iter()
                    .map(|(n, t)| (n.clone(), json::value(t)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            writeln!(out, "{obj}")?;
        }
        Format::Text => {
            let mut line = format!("{at} pid={} tid={}", hit.pid, hit.tid);
            if hit.goid != 0 {
                line.push_str(&format!(" goid={}", hit.goid));
            }
            for (e, n) in &hit.values {
                // A value that cannot be read here: the agent's sentence, not the debugger's.
                let text = match n {
                    crate::decode::Node::Unavailable { message, .. } => {
                        format!("<error: {message}>")
                    }
                    _ => display(&render::debugger(n)),
                };
                line.push_str(&format!(" {e}={text}"));
            }
            for (e, n) in &hit.locals {
                line.push_str(&format!(" local:{e}={}", display(&render::debugger(n))));
            }
            for (i, f) in hit.stack.iter().enumerate() {
                let at = match (&f.file, f.line) {
                    (Some(file), Some(l)) => format!(
                        "{}:{l}",
                        std::path::Path::new(file)
                            .file_name()
                            .map_or_else(|| file.clone(), |n| n.to_string_lossy().into_owned())
                    ),
                    _ => f.module.clone().unwrap_or_else(|| f.pc.to_string()),
                };
                line.push_str(&format!(" #{i}={}@{at}", f.function));
            }
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

fn display(v: &Value) -> String {
    v.to_string()
}
