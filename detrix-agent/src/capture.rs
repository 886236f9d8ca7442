//! The one-shot capture session behind `detrix-agent capture`: resolve → plan → attach → print
//! one line per hit → detach. No daemon involved.
//!
//! Everything that can fail on user input (pid, file, line, names, types) is checked before
//! the first probe is attached, so a bad request never touches the target.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::debuginfo::{Binary, ProbePoint, ResolveError};
use crate::place::{self, Placement};
use crate::plan::{self, BuiltPlan, PlanError, PlanOptions, Value};
use crate::expr::{self, ExprError};
use crate::probe::{self, AttachSpec, LoadOptions, ProbeError, Probes};
use crate::target::{self, Target, TargetError};

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
    /// In-kernel filter, e.g. `o->qty > 10` (see [`expr::parse_condition`]).
    pub when: Option<String>,
    /// Emitted events per second per probe (0 = unlimited) and burst.
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Share of one CPU a probe may cost (BPF time + trap estimate) before it is switched off.
    pub cpu_budget: f64,
    /// Move probes to an emulated instruction of the same statement when the values allow.
    pub placement: bool,
}

/// Why a capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Expr(#[from] ExprError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("process {pid} exec'd another program before the probes were attached; nothing was attached")]
    BinaryChanged { pid: u32 },
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    #[error("event loop: {0}")]
    Runtime(#[source] std::io::Error),
}

/// How a capture ended.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Lines printed.
    pub printed: u64,
    /// Per probe point: where it was, and its counters at the end.
    pub probes: Vec<ProbeSummary>,
    /// Why it stopped.
    pub reason: StopReason,
}

/// One probe's end state.
#[derive(Debug, Clone)]
pub struct ProbeSummary {
    pub point: ProbePoint,
    pub counters: detrix_common::Counters,
    /// Why the circuit breaker switched it off, if it did.
    pub switched_off: Option<String>,
}

/// Why the capture loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    CountReached,
    Signal,
    TargetExited,
    /// Every probe was switched off by the CPU circuit breaker.
    OverBudget,
}

/// A prepared (resolved and planned) capture, not yet attached.
#[derive(Debug)]
pub struct Prepared {
    target: Target,
    points: Vec<(ProbePoint, BuiltPlan, Placement)>,
}

impl Prepared {
    /// The process the capture is for.
    #[must_use]
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Each point with its plan and placement (for tools that drive [`Probes`] themselves,
    /// such as the benchmark).
    pub fn plans(&self) -> impl Iterator<Item = (&ProbePoint, &BuiltPlan, &Placement)> {
        self.points.iter().map(|(p, b, pl)| (p, b, pl))
    }

    /// The probe points the request resolved to, with where each probe goes and why.
    pub fn points(&self) -> impl Iterator<Item = (&ProbePoint, &Placement)> {
        self.points.iter().map(|(p, _, pl)| (p, pl))
    }
}

/// Checks the request against the process and its debug info and builds one plan per point.
///
/// # Errors
/// Any [`CaptureError`] from the target, the resolver or the planner.
pub fn prepare(req: &Request) -> Result<Prepared, CaptureError> {
    let target = Target::open(req.pid)?;
    let bin = Binary::open_named(&target.exe, &target.exe_name)?;
    let points = bin.resolve_line(&req.file, req.line)?;
    let load_bias = if bin.is_dyn { target.load_bias(bin.first_segment_vaddr())? } else { 0 };
    let condition = req.when.as_deref().map(expr::parse_condition).transpose()?;
    let opts = PlanOptions {
        tgid: req.pid,
        load_bias,
        string_cap: req.string_cap,
        rate_per_sec: req.rate_per_sec,
        burst: req.burst,
    };
    let mut planned = Vec::new();
    for p in points {
        let built = plan::build(&bin, &p, &req.exprs, condition.as_ref(), opts)?;
        let placement = if req.placement {
            let rebuild = |q: &ProbePoint| plan::build(&bin, q, &req.exprs, condition.as_ref(), opts).ok().map(|b| b.plan);
            place::place(&bin, &p, &built.plan, &rebuild)
        } else {
            Placement { chosen: p.addr, kind: place::classify(&bin, &p), explain: vec![format!("placement off: probe at the line's first instruction {}", p.addr)] }
        };
        let point = if placement.chosen == p.addr { p } else { bin.point_at(&p, placement.chosen).unwrap_or(p) };
        planned.push((point, built, placement));
    }
    Ok(Prepared { target, points: planned })
}

/// Attaches, prints hits to `out` until the count, a signal, the target's exit or the CPU
/// budget, then removes every probe.
///
/// # Errors
/// Attach failures (after removing what was attached) and output errors.
pub async fn run(req: &Request, prepared: Prepared, out: &mut dyn Write) -> Result<Summary, CaptureError> {
    let (mut probes, ring) = Probes::load(LoadOptions::default())?;
    if !prepared.target.same_binary() {
        return Err(CaptureError::BinaryChanged { pid: req.pid });
    }
    let mut by_slot: HashMap<u32, (ProbePoint, BuiltPlan)> = HashMap::new();
    let mut trap_ns: HashMap<u32, u64> = HashMap::new();
    for (point, built, placement) in prepared.points {
        let spec = AttachSpec { binary: &prepared.target.exe, offset: point.file_offset, pid: req.pid };
        match probes.install(&built.plan, &spec) {
            Ok(slot) => {
                by_slot.insert(slot, (point, built));
                trap_ns.insert(slot, placement.kind.cost_ns());
            }
            Err(e) => {
                // Leave nothing behind.
                let _ = probes.remove_all();
                return Err(e.into());
            }
        }
    }
    let mut session = Session { req, by_slot, trap_ns, switched_off: HashMap::new(), printed: 0 };
    let result = session.event_loop(&mut probes, ring, out).await;
    // Detach before reading the counters: a hit still in flight would show in `hits` but not
    // yet in its outcome, and the summary's sum must be exact.
    let removed = probes.remove_all();
    let mut summary_probes = Vec::new();
    let mut slots: Vec<_> = session.by_slot.keys().copied().collect();
    slots.sort_unstable();
    for slot in slots {
        let counters = probes.counters(slot).unwrap_or_default();
        let point = session.by_slot[&slot].0.clone();
        summary_probes.push(ProbeSummary { point, counters, switched_off: session.switched_off.remove(&slot) });
    }
    let reason = result?;
    removed?;
    Ok(Summary { printed: session.printed, probes: summary_probes, reason })
}

/// The state of one running capture.
struct Session<'a> {
    req: &'a Request,
    by_slot: HashMap<u32, (ProbePoint, BuiltPlan)>,
    /// Estimated trap cost per hit of each probe, from its placement.
    trap_ns: HashMap<u32, u64>,
    switched_off: HashMap<u32, String>,
    printed: u64,
}

/// How often pending events are collected when no wakeup came (the batching latency bound).
const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// How often the circuit breaker looks at each probe's cost.
const BUDGET_WINDOW: Duration = Duration::from_secs(1);

impl Session<'_> {
    async fn event_loop(
        &mut self,
        probes: &mut Probes,
        ring: aya::maps::RingBuf<aya::maps::MapData>,
        out: &mut dyn Write,
    ) -> Result<StopReason, CaptureError> {
        #[allow(deprecated, reason = "tokio 1.54 deprecates AsyncFd::new for I/O-safety; the ring's fd lives as long as the AsyncFd (toolchain.md E7)")]
        let mut ring = AsyncFd::new(ring).map_err(CaptureError::Runtime)?;
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(CaptureError::Runtime)?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(CaptureError::Runtime)?;
        let mut flush = tokio::time::interval(FLUSH_INTERVAL);
        let mut liveness = tokio::time::interval(Duration::from_millis(200));
        let mut budget = tokio::time::interval_at(tokio::time::Instant::now() + BUDGET_WINDOW, BUDGET_WINDOW);
        let mut last: HashMap<u32, (u64, u64)> = HashMap::new();
        let mut last_at = std::time::Instant::now();
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.map_err(CaptureError::Runtime)?;
                    let done = self.drain(guard.get_inner_mut(), out)?;
                    guard.clear_ready();
                    if done {
                        return Ok(StopReason::CountReached);
                    }
                }
                _ = flush.tick() => {
                    if self.drain(ring.get_mut(), out)? {
                        return Ok(StopReason::CountReached);
                    }
                }
                _ = sigterm.recv() => return Ok(StopReason::Signal),
                _ = sigint.recv() => return Ok(StopReason::Signal),
                _ = liveness.tick() => {
                    if !target::alive(self.req.pid) {
                        self.drain(ring.get_mut(), out)?;
                        return Ok(StopReason::TargetExited);
                    }
                }
                _ = budget.tick() => {
                    let now = std::time::Instant::now();
                    let window_ns = now.duration_since(last_at).as_nanos().max(1) as f64;
                    last_at = now;
                    for slot in probes.slots() {
                        let Ok(c) = probes.counters(slot) else { continue };
                        let (h0, b0) = last.insert(slot, (c.hits, c.bpf_ns)).unwrap_or((0, 0));
                        let (dh, db) = (c.hits - h0, c.bpf_ns - b0);
                        let trap = self.trap_ns.get(&slot).copied().unwrap_or(place::TrapKind::Unknown.cost_ns());
                        let cost = (db + dh * trap) as f64 / window_ns;
                        if cost > self.req.cpu_budget {
                            let why = format!(
                                "cost {:.2}% of a CPU over the last {:.1} s ({} hits, {} ns in BPF, ~{} ns per trap) exceeds the {:.2}% budget",
                                cost * 100.0, window_ns / 1e9, dh, db, trap, self.req.cpu_budget * 100.0
                            );
                            tracing::warn!(slot, %why, "probe switched off");
                            eprintln!("capture: probe {slot} switched off: {why}");
                            probes.remove(slot)?;
                            self.switched_off.insert(slot, why);
                        }
                    }
                    if probes.slots().is_empty() {
                        self.drain(ring.get_mut(), out)?;
                        return Ok(StopReason::OverBudget);
                    }
                }
            }
        }
    }

    /// Prints every pending record; `true` once the requested count is reached.
    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>, out: &mut dyn Write) -> Result<bool, CaptureError> {
        while let Some(item) = ring.next() {
            let Some((header, data)) = probe::parse_record(&item) else { continue };
            let Some((point, built)) = self.by_slot.get(&header.probe_id) else { continue };
            let values = plan::decode(&built.values, &header, data);
            write_hit(out, self.req, &header, &built.values, &values, point).map_err(CaptureError::Output)?;
            self.printed += 1;
            if self.req.count.is_some_and(|n| self.printed >= n) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn write_hit(
    out: &mut dyn Write,
    req: &Request,
    header: &detrix_common::EventHeader,
    decoders: &[plan::ValueDecoder],
    values: &[Value],
    _point: &ProbePoint,
) -> std::io::Result<()> {
    let shown = || decoders.iter().zip(values).filter(|(d, _)| !d.hidden).map(|(d, v)| (d.expr.as_str(), v));
    let at = format!("{}:{}", req.file, req.line);
    match req.format {
        Format::Json => {
            let mut map = serde_json::Map::new();
            for (e, v) in shown() {
                map.insert(e.to_owned(), v.to_json());
            }
            let obj = serde_json::json!({ "at": at, "pid": header.pid, "tid": header.tid, "values": map });
            writeln!(out, "{obj}")?;
        }
        Format::Text => {
            let mut line = format!("{at} pid={} tid={}", header.pid, header.tid);
            for (e, v) in shown() {
                line.push_str(&format!(" {e}={v}"));
            }
            writeln!(out, "{line}")?;
        }
    }
    out.flush()
}
