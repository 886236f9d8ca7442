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
use crate::plan::{self, BuiltPlan, PlanError, PlanOptions, Value};
use crate::probe::{self, AttachSpec, ProbeError, Probes};
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
    pub probes: Vec<(ProbePoint, detrix_common::Counters)>,
    /// Why it stopped.
    pub reason: StopReason,
}

/// Why the capture loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    CountReached,
    Signal,
    TargetExited,
}

/// A prepared (resolved and planned) capture, not yet attached.
#[derive(Debug)]
pub struct Prepared {
    target: Target,
    points: Vec<(ProbePoint, BuiltPlan)>,
}

impl Prepared {
    /// The probe points the request resolved to.
    pub fn points(&self) -> impl Iterator<Item = &ProbePoint> {
        self.points.iter().map(|(p, _)| p)
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
    let opts = PlanOptions { tgid: req.pid, load_bias, string_cap: req.string_cap };
    let mut planned = Vec::new();
    for p in points {
        let built = plan::build(&bin, &p, &req.exprs, opts)?;
        planned.push((p, built));
    }
    Ok(Prepared { target, points: planned })
}

/// Attaches, prints hits to `out` until the count, a signal, or the target's exit, then
/// removes every probe.
///
/// # Errors
/// Attach failures (after removing what was attached) and output errors.
pub async fn run(req: &Request, prepared: Prepared, out: &mut dyn Write) -> Result<Summary, CaptureError> {
    let (mut probes, ring) = Probes::load()?;
    if !prepared.target.same_binary() {
        return Err(CaptureError::BinaryChanged { pid: req.pid });
    }
    let mut by_slot: HashMap<u32, (ProbePoint, BuiltPlan)> = HashMap::new();
    for (point, built) in prepared.points {
        let spec = AttachSpec { binary: &prepared.target.exe, offset: point.file_offset, pid: req.pid };
        match probes.install(&built.plan, &spec) {
            Ok(slot) => {
                by_slot.insert(slot, (point, built));
            }
            Err(e) => {
                // Leave nothing behind.
                let _ = probes.remove_all();
                return Err(e.into());
            }
        }
    }
    let result = event_loop(req, ring, &by_slot, out).await;
    let mut summary_probes = Vec::new();
    for (slot, (point, _)) in &by_slot {
        let counters = probes.counters(*slot).unwrap_or_default();
        summary_probes.push((point.clone(), counters));
    }
    let removed = probes.remove_all();
    let (printed, reason) = result?;
    removed?;
    Ok(Summary { printed, probes: summary_probes, reason })
}

async fn event_loop(
    req: &Request,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    by_slot: &HashMap<u32, (ProbePoint, BuiltPlan)>,
    out: &mut dyn Write,
) -> Result<(u64, StopReason), CaptureError> {
    #[allow(deprecated, reason = "tokio 1.54 deprecates AsyncFd::new for I/O-safety; the ring's fd lives as long as the AsyncFd (toolchain.md E7)")]
    let mut ring = AsyncFd::new(ring).map_err(CaptureError::Runtime)?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(CaptureError::Runtime)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(CaptureError::Runtime)?;
    let mut liveness = tokio::time::interval(Duration::from_millis(200));
    let mut printed = 0u64;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(CaptureError::Runtime)?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    let Some((header, data)) = probe::parse_record(&item) else { continue };
                    let Some((point, built)) = by_slot.get(&header.probe_id) else { continue };
                    let values = plan::decode(&built.values, &header, data);
                    write_hit(out, req, &header, &built.values.iter().map(|v| v.expr.as_str()).collect::<Vec<_>>(), &values, point)
                        .map_err(CaptureError::Output)?;
                    printed += 1;
                    if req.count.is_some_and(|n| printed >= n) {
                        return Ok((printed, StopReason::CountReached));
                    }
                }
                guard.clear_ready();
            }
            _ = sigterm.recv() => return Ok((printed, StopReason::Signal)),
            _ = sigint.recv() => return Ok((printed, StopReason::Signal)),
            _ = liveness.tick() => {
                if !target::alive(req.pid) {
                    return Ok((printed, StopReason::TargetExited));
                }
            }
        }
    }
}

fn write_hit(
    out: &mut dyn Write,
    req: &Request,
    header: &detrix_common::EventHeader,
    exprs: &[&str],
    values: &[Value],
    _point: &ProbePoint,
) -> std::io::Result<()> {
    let at = format!("{}:{}", req.file, req.line);
    match req.format {
        Format::Json => {
            let mut map = serde_json::Map::new();
            for (e, v) in exprs.iter().zip(values) {
                map.insert((*e).to_owned(), v.to_json());
            }
            let obj = serde_json::json!({ "at": at, "pid": header.pid, "tid": header.tid, "values": map });
            writeln!(out, "{obj}")?;
        }
        Format::Text => {
            let mut line = format!("{at} pid={} tid={}", header.pid, header.tid);
            for (e, v) in exprs.iter().zip(values) {
                line.push_str(&format!(" {e}={v}"));
            }
            writeln!(out, "{line}")?;
        }
    }
    out.flush()
}
