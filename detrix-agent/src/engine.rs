//! The long-lived capture engine for one target: logpoints come and go, hits stream out.
//!
//! Both front ends sit on it: the one-shot `capture` CLI and the DAP facade the daemon
//! drives. It chains the stages (resolve → plan → place → attach; ring → decode) and nothing
//! else does. It is split in two so a front end can wait for hits while it handles requests:
//! [`Engine`] owns the probes (and mutates them), [`HitReader`] owns the ring and decodes with
//! a shared table of the installed plans.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use detrix_common::Counters;
use tokio::io::unix::AsyncFd;

use crate::addr::{self, RuntimeAddr};
use crate::debuginfo::{Binary, Language, ProbePoint, ResolveError, Symbolizer};
use crate::decode::Node;
use crate::expr::{self, ExprError};
use crate::forward;
use crate::place::{self, Placement};
use crate::plan::{self, BuiltPlan, PlanError, PlanOptions, Value};
use crate::probe::{self, AttachSpec, LoadOptions, ProbeError, Probes};
use crate::target::{Target, TargetError};

/// Why the engine could not do what was asked. Messages name the object and the fix.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
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
    #[error("process {pid} exec'd another program; its probes cannot be attached")]
    BinaryChanged { pid: u32 },
    #[error("reading events: {0}")]
    Io(#[source] std::io::Error),
}

/// Knobs every logpoint shares.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    pub string_cap: u32,
    /// Most elements of a slice or `Vec` copied (see [`PlanOptions::elem_cap`]).
    pub elem_cap: u32,
    /// Events per second per probe (0 = unlimited), and burst.
    pub rate_per_sec: u32,
    pub burst: u32,
    /// Move probes to emulated instructions when the values allow (see [`place`]).
    pub placement: bool,
    /// Read values from registers that hold copies of their stack slots at the probe (see
    /// [`forward`]).
    pub forwarding: bool,
    pub load: LoadOptions,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            string_cap: 256,
            elem_cap: plan::DEFAULT_ELEM_CAP,
            rate_per_sec: 10_000,
            burst: 1_000,
            placement: true,
            forwarding: true,
            load: LoadOptions::default(),
        }
    }
}

/// What to capture at one line.
#[derive(Debug, Clone, Default)]
pub struct LogpointSpec {
    pub line: u32,
    pub exprs: Vec<String>,
    /// In-kernel filter (see [`expr::parse_condition`]).
    pub condition: Option<String>,
    /// Capture the user stack at each hit ([`Hit::stack`]): a frame-pointer walk in the kernel.
    pub capture_stack: bool,
    /// Capture every parameter and local in scope at each hit ([`Hit::locals`]).
    pub capture_locals: bool,
}

pub use crate::debuginfo::Frame;

/// Names one logpoint for as long as it is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogpointId(pub u64);

/// One resolved, planned and placed copy of a logpoint, not yet attached.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub point: ProbePoint,
    pub plan: BuiltPlan,
    pub placement: Placement,
    /// The object file the probe goes into: the executable, or a shared library it mapped.
    pub object: PathBuf,
}

/// An installed logpoint.
#[derive(Debug, Clone)]
pub struct Logpoint {
    pub id: LogpointId,
    pub file: String,
    pub line: u32,
    /// One per function copy (inlined, monomorphized) the line has code in.
    pub copies: Vec<Prepared>,
    slots: Vec<u32>,
}

/// One hit, decoded.
#[derive(Debug, Clone)]
pub struct Hit {
    pub logpoint: LogpointId,
    pub pid: u32,
    pub tid: u32,
    /// Goroutine id for Go targets, else 0.
    pub goid: u64,
    pub ktime_ns: u64,
    /// `(expression, value)` in the order asked, without hidden (condition-only) values.
    pub values: Vec<(String, Value)>,
    /// With [`LogpointSpec::capture_stack`]: the user stack, innermost first.
    pub stack: Vec<Frame>,
    /// With [`LogpointSpec::capture_locals`]: every parameter and local in scope, in scope
    /// order; ones that could not be captured carry [`Value::Error`] with the reason.
    pub locals: Vec<(String, Value)>,
    /// `values` decoded but not rendered, in the same order: `values` are these as the
    /// target's debugger shows them (for the DAP `output` the daemon parses), these are for
    /// the other renderers (the CLI's typed JSON, [`crate::render::json`]).
    pub value_trees: Vec<Node>,
    /// `locals` decoded but not rendered, in the same order.
    pub local_trees: Vec<Node>,
}

/// Resolves and plans against one process, without touching the kernel: every user error is
/// found here, before anything is attached.
#[derive(Debug)]
pub struct Resolver {
    pub target: Target,
    pub bin: Arc<Binary>,
    load_bias: u64,
    opts: EngineOptions,
    /// Shared objects the process maps, opened when a request names a file the executable's
    /// debug info does not have.
    libs: Vec<SharedObject>,
}

/// A shared library mapped by the target.
#[derive(Debug)]
struct SharedObject {
    /// Its path as the target sees it (from `/proc/PID/maps`).
    name: PathBuf,
    /// The same file through `/proc/PID/root`, valid across mount namespaces.
    path: PathBuf,
    /// Start of its mapping at file offset 0.
    base: RuntimeAddr,
    bin: std::sync::OnceLock<Option<Arc<Binary>>>,
}

impl SharedObject {
    /// The library's parsed debug info, or `None` when it has none (most system libraries).
    fn binary(&self) -> Option<&Arc<Binary>> {
        self.bin
            .get_or_init(|| {
                Binary::open_cached(&self.path, &self.name)
                    .ok()
                    .filter(|b| b.language().is_ok())
            })
            .as_ref()
    }
}

/// File-backed mappings at file offset 0 of objects other than the executable.
fn shared_objects(target: &Target) -> Vec<SharedObject> {
    let Ok(maps) = target.maps() else {
        return Vec::new();
    };
    let mut out: Vec<SharedObject> = Vec::new();
    for m in maps {
        if !m.path.starts_with('/') || m.offset != 0 || m.inode == target.dev_ino.1 {
            continue;
        }
        if out.iter().any(|o| o.name == Path::new(&m.path)) {
            continue;
        }
        out.push(SharedObject {
            path: PathBuf::from(format!("/proc/{}/root{}", target.pid, m.path)),
            name: PathBuf::from(m.path),
            base: m.start,
            bin: std::sync::OnceLock::new(),
        });
    }
    out
}

impl Resolver {
    /// Opens the process and its executable's debug info.
    ///
    /// # Errors
    /// No such process, no privileges, unreadable binary.
    pub fn open(pid: u32, opts: EngineOptions) -> Result<Self, EngineError> {
        let target = Target::open(pid)?;
        let bin = Binary::open_cached(&target.exe, &target.exe_name)?;
        let load_bias = if bin.is_dyn {
            target.load_bias(bin.first_segment_vaddr())?
        } else {
            0
        };
        let libs = shared_objects(&target);
        Ok(Self {
            target,
            bin,
            load_bias,
            opts,
            libs,
        })
    }

    /// Source language of the target (from its DWARF).
    ///
    /// # Errors
    /// No debug info.
    pub fn language(&self) -> Result<Language, EngineError> {
        Ok(self.bin.language()?)
    }

    /// Resolves, plans and places one logpoint: one [`Prepared`] per copy of the line.
    ///
    /// # Errors
    /// Any resolution, expression, type or budget error, naming the object.
    pub fn prepare(&self, file: &str, spec: &LogpointSpec) -> Result<Vec<Prepared>, EngineError> {
        // The executable first; a file it does not know may be a shared library's.
        let (bin, load_bias, object, points) = match self.bin.resolve_line(file, spec.line) {
            Ok(points) => (&self.bin, self.load_bias, self.target.exe.clone(), points),
            Err(unknown @ ResolveError::UnknownFile { .. }) => {
                let found = self.libs.iter().find_map(|lib| {
                    let b = lib.binary()?;
                    match b.resolve_line(file, spec.line) {
                        Err(ResolveError::UnknownFile { .. }) => None,
                        other => Some((lib, b, other)),
                    }
                });
                match found {
                    Some((lib, b, points)) => (
                        b,
                        addr::load_bias(lib.base, b.first_segment_vaddr()),
                        lib.path.clone(),
                        points?,
                    ),
                    None => return Err(unknown.into()),
                }
            }
            Err(other) => return Err(other.into()),
        };
        let condition = spec
            .condition
            .as_deref()
            .map(expr::parse_condition)
            .transpose()?;
        let opts = PlanOptions {
            tgid: self.target.pid,
            load_bias,
            string_cap: self.opts.string_cap,
            elem_cap: self.opts.elem_cap,
            rate_per_sec: self.opts.rate_per_sec,
            burst: self.opts.burst,
        };
        let mut out = Vec::new();
        for p in points {
            let extras = plan::Extras {
                locals: if spec.capture_locals {
                    bin.locals_in_scope(&p)?
                } else {
                    Vec::new()
                },
                stack: spec.capture_stack,
            };
            let mut built =
                plan::build_with(&bin, &p, &spec.exprs, condition.as_ref(), &extras, opts)?;
            let mut placement = if self.opts.placement {
                let rebuild = |q: &ProbePoint| {
                    plan::build_with(&bin, q, &spec.exprs, condition.as_ref(), &extras, opts)
                        .ok()
                        .map(|b| b.plan)
                };
                place::place(&bin, &p, &built.plan, &rebuild)
            } else {
                Placement {
                    chosen: p.addr,
                    kind: place::classify(&bin, &p),
                    explain: vec![format!(
                        "placement off: probe at the line's first instruction {}",
                        p.addr
                    )],
                }
            };
            let point = if placement.chosen == p.addr {
                p
            } else {
                bin.point_at(&p, placement.chosen).unwrap_or(p)
            };
            if self.opts.forwarding {
                placement
                    .explain
                    .extend(forward::forward(&bin, &point, &mut built.plan));
            }
            out.push(Prepared {
                point,
                plan: built,
                placement,
                object: object.clone(),
            });
        }
        Ok(out)
    }
}

/// What resolving `file:line` and each expression gives on `bin`, without a process: points
/// (function, address, file offset, placement) and per expression the plan ops or the error.
/// Paths are shown relative to `strip_prefix` so the result is stable across machines.
///
/// This is what `detrix-agent resolve` prints and what the snapshot tests pin.
#[must_use]
pub fn describe(
    bin: &Binary,
    file: &str,
    line: u32,
    exprs: &[String],
    strip_prefix: &str,
) -> serde_json::Value {
    let rel = |s: &str| {
        if strip_prefix.is_empty() {
            return s.to_owned();
        }
        s.strip_prefix(strip_prefix)
            .map_or_else(|| s.to_owned(), |r| r.trim_start_matches('/').to_owned())
    };
    // Machine paths out of messages, so the output is the same on every machine.
    let scrub = |s: String| {
        if strip_prefix.is_empty() {
            s
        } else {
            s.replace(&format!("{strip_prefix}/"), "")
                .replace(strip_prefix, "")
        }
    };
    let points = match bin.resolve_line(file, line) {
        Ok(p) => p,
        Err(e) => {
            return serde_json::json!({ "at": format!("{file}:{line}"), "error": scrub(e.to_string()) })
        }
    };
    let opts = PlanOptions {
        tgid: 0,
        load_bias: 0,
        string_cap: 64,
        elem_cap: plan::DEFAULT_ELEM_CAP,
        rate_per_sec: 0,
        burst: 0,
    };
    let mut out = Vec::new();
    for p in &points {
        let mut values = serde_json::Map::new();
        let mut ok: Vec<String> = Vec::new();
        for e in exprs {
            let v = match plan::build(bin, p, std::slice::from_ref(e), None, opts) {
                Ok(b) => {
                    ok.push(e.clone());
                    serde_json::json!({ "ops": plan::describe_ops(&b.plan) })
                }
                Err(err) => serde_json::json!({ "error": scrub(err.to_string()) }),
            };
            values.insert(e.clone(), v);
        }
        // Placement for the expressions that can be captured (what an attach would use).
        let plan_all = plan::build(bin, p, &ok, None, opts).ok();
        let placement = plan_all.as_ref().map(|b| {
            let rebuild = |q: &ProbePoint| plan::build(bin, q, &ok, None, opts).ok().map(|b| b.plan);
            let pl = place::place(bin, p, &b.plan, &rebuild);
            let mut placed = b.plan.clone();
            let forwarded = bin.point_at(p, pl.chosen).map(|q| forward::forward(bin, &q, &mut placed)).unwrap_or_default();
            if forwarded.is_empty() {
                serde_json::json!({ "chosen": pl.chosen.to_string(), "kind": format!("{:?}", pl.kind) })
            } else {
                serde_json::json!({ "chosen": pl.chosen.to_string(), "kind": format!("{:?}", pl.kind), "forwarded": forwarded })
            }
        });
        out.push(serde_json::json!({
            "function": p.function,
            "file": rel(&p.file),
            "line": p.line,
            "addr": p.addr.to_string(),
            "file_offset": p.file_offset.to_string(),
            "placement": placement,
            "values": values,
        }));
    }
    serde_json::json!({ "at": format!("{file}:{line}"), "copies": points.len(), "points": out })
}

/// What the reader needs to decode a slot's records.
#[derive(Debug, Clone)]
struct SlotInfo {
    logpoint: LogpointId,
    values: Vec<plan::ValueDecoder>,
    /// Locals that could not be planned, shown as errors in every hit.
    local_errors: Vec<(String, String)>,
}

type SlotTable = Arc<Mutex<HashMap<u32, SlotInfo>>>;

/// The attached half: owns the probes.
pub struct Engine {
    resolver: Resolver,
    probes: Probes,
    slots: SlotTable,
    logpoints: BTreeMap<LogpointId, Logpoint>,
    next_id: u64,
    /// For the CPU breaker: counters at the last look.
    last: HashMap<u32, (u64, u64)>,
    /// Final counters of removed logpoints, read after detaching (exact).
    removed: HashMap<LogpointId, Counters>,
    /// Probe ids removed recently, whose records may still be in the ring.
    retired: Vec<(u32, std::time::Instant)>,
}

/// How long a removed probe's records are still decoded.
const RETIRE_AFTER: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pid", &self.resolver.target.pid)
            .field("logpoints", &self.logpoints.len())
            .finish_non_exhaustive()
    }
}

/// Reads and decodes hits.
pub struct HitReader {
    ring: AsyncFd<probe::EventRings>,
    slots: SlotTable,
    symbolizer: Symbolizer,
    flush: tokio::time::Interval,
}

impl std::fmt::Debug for HitReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HitReader").finish_non_exhaustive()
    }
}

/// Most hits decoded per batch.
const MAX_BATCH: usize = 4096;

/// How often pending events are collected when no wakeup came (the batching latency bound).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

impl Engine {
    /// Loads the eBPF program for `resolver`'s target. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// The kernel refused the program.
    pub fn start(resolver: Resolver) -> Result<(Self, HitReader), EngineError> {
        let (probes, ring) = Probes::load(resolver.opts.load)?;
        #[allow(
            deprecated,
            reason = "tokio 1.54 deprecates AsyncFd::new for I/O-safety; the ring's fd lives as long as the AsyncFd (toolchain.md E7)"
        )]
        let ring = AsyncFd::new(ring).map_err(EngineError::Io)?;
        let slots: SlotTable = Arc::default();
        let reader = HitReader {
            ring,
            slots: slots.clone(),
            symbolizer: Symbolizer::new(
                resolver.bin.clone(),
                resolver.load_bias,
                resolver.target.maps().unwrap_or_default(),
                resolver.target.dev_ino.1,
            ),
            flush: tokio::time::interval(FLUSH_INTERVAL),
        };
        Ok((
            Self {
                resolver,
                probes,
                slots,
                logpoints: BTreeMap::new(),
                next_id: 1,
                last: HashMap::new(),
                removed: HashMap::new(),
                retired: Vec::new(),
            },
            reader,
        ))
    }

    /// The resolver (target, binary) behind this engine.
    #[must_use]
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Attaches prepared copies as one logpoint. All or nothing: on failure nothing stays.
    ///
    /// # Errors
    /// The process exec'd, or the kernel refused an attach.
    pub fn install(
        &mut self,
        file: &str,
        line: u32,
        copies: Vec<Prepared>,
    ) -> Result<LogpointId, EngineError> {
        if !self.resolver.target.same_binary() {
            return Err(EngineError::BinaryChanged {
                pid: self.resolver.target.pid,
            });
        }
        let id = LogpointId(self.next_id);
        self.next_id += 1;
        let mut slots = Vec::new();
        for c in &copies {
            let spec = AttachSpec {
                binary: &c.object,
                offset: c.point.file_offset,
                pid: self.resolver.target.pid,
            };
            match self.probes.install(&c.plan.plan, &spec) {
                Ok(slot) => {
                    self.slot_table().insert(
                        slot,
                        SlotInfo {
                            logpoint: id,
                            values: c.plan.values.clone(),
                            local_errors: c.plan.local_errors.clone(),
                        },
                    );
                    slots.push(slot);
                }
                Err(e) => {
                    for s in slots {
                        let _ = self.probes.remove(s);
                        self.slot_table().remove(&s);
                    }
                    return Err(e.into());
                }
            }
        }
        self.logpoints.insert(
            id,
            Logpoint {
                id,
                file: file.to_owned(),
                line,
                copies,
                slots,
            },
        );
        Ok(id)
    }

    /// Resolves and installs one logpoint.
    ///
    /// # Errors
    /// As [`Resolver::prepare`] and [`Engine::install`].
    pub fn add(&mut self, file: &str, spec: &LogpointSpec) -> Result<LogpointId, EngineError> {
        let copies = self.resolver.prepare(file, spec)?;
        self.install(file, spec.line, copies)
    }

    /// Removes one logpoint and returns its final counters (summed over copies).
    ///
    /// # Errors
    /// A kernel error on detach.
    pub fn remove(&mut self, id: LogpointId) -> Result<Option<Counters>, EngineError> {
        let Some(lp) = self.logpoints.remove(&id) else {
            return Ok(None);
        };
        let mut first_err = None;
        for s in &lp.slots {
            if let Err(e) = self.probes.remove(*s) {
                first_err.get_or_insert(e);
            }
        }
        // Counters after detach: no hit is in flight any more, so the sum is exact.
        let total = self.sum_counters(&lp.slots);
        self.removed.insert(id, total);
        for s in &lp.slots {
            self.last.remove(s);
        }
        // The decode entries stay a while: records emitted before the detach may still be in
        // the ring, and the reader must still turn them into hits. Probe ids are never reused
        // (generation), so a stale entry cannot decode another probe's records.
        let now = std::time::Instant::now();
        self.retired.extend(lp.slots.iter().map(|s| (*s, now)));
        let expired: Vec<u32> = self
            .retired
            .iter()
            .filter(|(_, t)| now.duration_since(*t) > RETIRE_AFTER)
            .map(|(s, _)| *s)
            .collect();
        self.retired
            .retain(|(_, t)| now.duration_since(*t) <= RETIRE_AFTER);
        let mut table = self.slot_table();
        for s in expired {
            table.remove(&s);
        }
        drop(table);
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(Some(total)),
        }
    }

    /// Removes every logpoint.
    ///
    /// # Errors
    /// The first detach error (the rest are still removed).
    pub fn remove_all(&mut self) -> Result<(), EngineError> {
        let ids: Vec<LogpointId> = self.logpoints.keys().copied().collect();
        let mut first = Ok(());
        for id in ids {
            if let Err(e) = self.remove(id) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Final counters of a removed logpoint (e.g. one the CPU breaker switched off).
    #[must_use]
    pub fn last_removed(&self, id: LogpointId) -> Option<Counters> {
        self.removed.get(&id).copied()
    }

    /// Installed logpoints.
    pub fn logpoints(&self) -> impl Iterator<Item = &Logpoint> {
        self.logpoints.values()
    }

    /// Counters of a logpoint, summed over its copies and CPUs.
    #[must_use]
    pub fn counters(&self, id: LogpointId) -> Option<Counters> {
        self.logpoints
            .get(&id)
            .map(|lp| self.sum_counters(&lp.slots))
    }

    fn sum_counters(&self, slots: &[u32]) -> Counters {
        let mut t = Counters::default();
        for s in slots {
            t.add(&self.probes.counters(*s).unwrap_or_default());
        }
        t
    }

    /// The CPU circuit breaker: removes every logpoint whose cost over the window since the
    /// last call (BPF time + estimated trap cost per hit) exceeds `budget` (a fraction of one
    /// CPU), returning each with the reason.
    pub fn enforce_budget(&mut self, window: Duration, budget: f64) -> Vec<(LogpointId, String)> {
        let window_ns = window.as_nanos().max(1) as f64;
        let mut over = Vec::new();
        for lp in self.logpoints.values() {
            let (mut dh, mut db, mut trap_ns) = (0, 0, 0);
            for (s, c) in lp.slots.iter().zip(&lp.copies) {
                let Ok(now) = self.probes.counters(*s) else {
                    continue;
                };
                let (h0, b0) = self
                    .last
                    .insert(*s, (now.hits, now.bpf_ns))
                    .unwrap_or((0, 0));
                let h = now.hits - h0;
                dh += h;
                db += now.bpf_ns - b0;
                trap_ns += h * c.placement.kind.cost_ns();
            }
            let cost = (db + trap_ns) as f64 / window_ns;
            if cost > budget {
                over.push((
                    lp.id,
                    format!(
                        "cost {:.2}% of a CPU over the last {:.1} s ({} hits, {} ns in BPF, ~{} ns in traps) exceeds the {:.2}% budget",
                        cost * 100.0,
                        window_ns / 1e9,
                        dh,
                        db,
                        trap_ns,
                        budget * 100.0
                    ),
                ));
            }
        }
        for (id, why) in &over {
            tracing::warn!(logpoint = id.0, %why, "logpoint switched off");
            let _ = self.remove(*id);
        }
        over
    }

    fn slot_table(&self) -> std::sync::MutexGuard<'_, HashMap<u32, SlotInfo>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.remove_all();
    }
}

impl HitReader {
    /// Waits for a wakeup or the flush interval and returns every pending hit (possibly none).
    ///
    /// # Errors
    /// The ring's fd failed.
    pub async fn next_batch(&mut self) -> Result<Vec<Hit>, EngineError> {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                let mut guard = guard.map_err(EngineError::Io)?;
                let hits = decode_all(guard.get_inner_mut(), &self.slots, &self.symbolizer);
                guard.clear_ready();
                Ok(hits)
            }
            _ = self.flush.tick() => Ok(decode_all(self.ring.get_mut(), &self.slots, &self.symbolizer)),
        }
    }

    /// Everything pending now, without waiting. Meant for after a detach, when nothing
    /// refills the ring; while probes fire it returns once the ring is momentarily empty.
    pub fn drain_now(&mut self) -> Vec<Hit> {
        let mut out = Vec::new();
        loop {
            let batch = decode_all(self.ring.get_mut(), &self.slots, &self.symbolizer);
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }
}

fn decode_all(ring: &mut probe::EventRings, slots: &SlotTable, sym: &Symbolizer) -> Vec<Hit> {
    let table = slots.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = Vec::new();
    // Bounded: a hot probe refills the ring as fast as it is read, and an unbounded drain would
    // never return to the caller's loop (signals, the CPU breaker, DAP requests).
    ring.drain(MAX_BATCH, |item| {
        let Some((h, data)) = probe::parse_record(item) else {
            return;
        };
        // A record for a probe retired long ago is dropped here: its logpoint is gone.
        let Some(info) = table.get(&h.probe_id) else {
            return;
        };
        let decoded = crate::decode::decode(&info.values, &h, data);
        let mut hit = Hit {
            logpoint: info.logpoint,
            pid: h.pid,
            tid: h.tid,
            goid: h.goid,
            ktime_ns: h.ktime_ns,
            values: Vec::new(),
            stack: Vec::new(),
            locals: Vec::new(),
            value_trees: Vec::new(),
            local_trees: Vec::new(),
        };
        for (d, n) in info.values.iter().zip(decoded) {
            match d.role {
                plan::Role::Shown => {
                    hit.values
                        .push((d.expr.clone(), crate::render::debugger(&n)));
                    hit.value_trees.push(n);
                }
                plan::Role::Hidden | plan::Role::UnwindStack(_) => {}
                plan::Role::Local => {
                    hit.locals
                        .push((d.expr.clone(), crate::render::debugger(&n)));
                    hit.local_trees.push(n);
                }
                plan::Role::Stack => hit.stack = stack_frames(&info.values, d, &h, data, sym),
                plan::Role::UnwindRegs => hit.stack = unwind_frames(&info.values, &h, data, sym),
            }
        }
        for (name, why) in &info.local_errors {
            hit.locals.push((name.clone(), Value::Error(why.clone())));
            hit.local_trees.push(Node::Error(why.clone()));
        }
        out.push(hit);
    });
    // Each CPU's ring is in time order; a thread that moved between CPUs is put back in order.
    out.sort_by_key(|h| h.ktime_ns);
    out
}

/// Unwinds the captured registers and stack slices with the binary's CFI, innermost first.
fn unwind_frames(
    all: &[plan::ValueDecoder],
    h: &detrix_common::EventHeader,
    data: &[u8],
    sym: &Symbolizer,
) -> Vec<Frame> {
    let u64_at = |b: &[u8], o: usize| {
        b.get(o..o + 8)
            .map(|x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])))
    };
    let Some(ri) = all.iter().position(|d| d.role == plan::Role::UnwindRegs) else {
        return Vec::new();
    };
    let regs = plan::value_bytes(all, ri, h, data);
    let (Some(pc), Some(sp0), Some(bp)) = (u64_at(regs, 0), u64_at(regs, 8), u64_at(regs, 16))
    else {
        return Vec::new();
    };
    let mut chunks: Vec<(u64, &[u8])> = Vec::new();
    for (i, d) in all.iter().enumerate() {
        if let plan::Role::UnwindStack(k) = d.role {
            let b = plan::value_bytes(all, i, h, data);
            if !b.is_empty() {
                chunks.push((sp0 + (usize::from(k) * plan::UNWIND_CHUNK) as u64, b));
            }
        }
    }
    let read = |addr: u64| -> Option<u64> {
        chunks.iter().find_map(|(start, b)| {
            let off = usize::try_from(addr.checked_sub(*start)?).ok()?;
            u64_at(b, off)
        })
    };
    sym.unwind(crate::debuginfo::UnwindRegs { pc, sp: sp0, bp }, &read)
}

/// The return addresses a stack value holds, symbolized.
fn stack_frames(
    all: &[plan::ValueDecoder],
    d: &plan::ValueDecoder,
    h: &detrix_common::EventHeader,
    data: &[u8],
    sym: &Symbolizer,
) -> Vec<Frame> {
    let idx = all.iter().position(|x| std::ptr::eq(x, d)).unwrap_or(0);
    sym.return_addresses(
        plan::value_bytes(all, idx, h, data)
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
    )
}
