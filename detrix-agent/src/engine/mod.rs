//! The long-lived capture engine for one target: logpoints come and go, hits stream out.
//!
//! Both front ends sit on it: the one-shot `capture` CLI and the DAP facade the daemon
//! drives. It chains the stages (resolve → plan → place → attach; ring → decode) and nothing
//! else does. It is split in two so a front end can wait for hits while it handles requests:
//! [`Engine`] owns the probes (and mutates them), [`HitReader`] owns the ring and decodes with
//! a shared table of the installed plans.
//!
//! The modules: [`resolver`] (open a target, resolve a logpoint), [`pipeline`] (plan, place,
//! forward one copy of a line, shared with `describe`), [`reader`] (ring → hits), [`kernel`]
//! (one loaded program for every target of a host, `serve`).

pub mod coverage;
mod kernel;
mod pipeline;
mod reader;
mod resolver;

pub use kernel::{Kernel, RingUse};
pub use pipeline::describe;
use reader::{DecoderTable, ProbeDecoder, Source};
pub use reader::{HitReader, FLUSH_INTERVAL};
pub use resolver::Resolver;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// What [`Engine::remove`] and the status report per probe.
pub use detrix_common::Counters;
use tokio::io::unix::AsyncFd;

use crate::debuginfo::{ProbePoint, ResolveError, Symbolizer};
use crate::decode::Node;
use crate::expr::ExprError;
use crate::place::Placement;
use crate::plan::{self, BuiltPlan, PlanError};
use crate::probe::{AttachSpec, LoadOptions, ProbeError, Probes};
use crate::target::TargetError;

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
    /// The target is no longer the process the logpoint was resolved for: it exited (its pid
    /// perhaps reused), or exec'd another program. `what` is [`crate::target::Gone::describe`].
    #[error("process {pid}: {what}; nothing was attached")]
    TargetGone { pid: u32, what: &'static str },
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
pub struct PreparedCopy {
    pub point: ProbePoint,
    pub plan: BuiltPlan,
    pub placement: Placement,
    /// The object file the probe goes into: the executable, or a shared library it mapped.
    pub object: PathBuf,
    /// When the plan reads entry values (`DW_OP_entry_value`): the file offset of the
    /// function's first instruction, where an entry probe saves them.
    pub entry: Option<crate::debuginfo::FileOffset>,
    /// When placement put the probe on the branches into its block
    /// ([`Placement::edges`]): where they are in `object`. Empty: at `point`.
    pub sites: Vec<crate::probe::Site>,
}

/// An installed logpoint.
#[derive(Debug, Clone)]
pub struct Logpoint {
    pub id: LogpointId,
    pub file: String,
    pub line: u32,
    /// One per function copy (inlined, monomorphized) the line has code in.
    pub copies: Vec<PreparedCopy>,
    probe_ids: Vec<u32>,
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
    /// Decoded, not rendered: each consumer renders through [`crate::render`] (the DAP
    /// facade as the target's debugger shows it, the CLI as typed JSON or text).
    pub values: Vec<(String, Node)>,
    /// With [`LogpointSpec::capture_stack`]: the user stack, innermost first.
    pub stack: Vec<Frame>,
    /// With [`LogpointSpec::capture_locals`]: every parameter and local in scope, in scope
    /// order; ones that could not be captured are [`Node::Error`] with the reason.
    pub locals: Vec<(String, Node)>,
}

/// The attached half: owns the probes.
pub struct Engine {
    resolver: Resolver,
    /// This engine's own program, or the host's shared one (then other engines' probes are in
    /// it too; this one touches only its own ids).
    probes: Arc<Mutex<Probes>>,
    decoders: DecoderTable,
    /// Names this engine's probes in a shared decoder table.
    owner: u64,
    symbolizer: Arc<Symbolizer>,
    logpoints: BTreeMap<LogpointId, Logpoint>,
    next_id: u64,
    /// For the CPU breaker: (traps, hits, BPF ns) at the last look.
    last: HashMap<u32, (u64, u64, u64)>,
    /// Final counters of removed logpoints, read after detaching (exact).
    removed: HashMap<LogpointId, Counters>,
    /// The sum of every removed logpoint's final counters (for this target's totals).
    removed_total: Counters,
    /// The closer's ticket of this engine's last retired probe: [`Engine::remove_all`] waits
    /// for it, so every uprobe this engine ever attached is gone when it returns.
    last_retired: crate::probe::Ticket,
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
        let decoders: DecoderTable = Arc::default();
        let reader = HitReader {
            source: Source::Ring {
                ring: Box::new(ring),
                decoders: decoders.clone(),
                flush: tokio::time::interval(FLUSH_INTERVAL),
            },
        };
        Ok((
            Self::with(resolver, Arc::new(Mutex::new(probes)), decoders, 0),
            reader,
        ))
    }

    /// An engine for `resolver`'s target on the host's one program (`serve`): nothing is
    /// loaded, so this costs no more than the bookkeeping. The reader receives this target's
    /// hits from the host's reader.
    #[must_use]
    pub fn start_shared(resolver: Resolver, kernel: &Arc<Kernel>) -> (Self, HitReader) {
        let (owner, rx) = kernel.route();
        let reader = HitReader {
            source: Source::Routed {
                rx,
                kernel: kernel.clone(),
                owner,
            },
        };
        (
            Self::with(
                resolver,
                kernel.probes.clone(),
                kernel.decoders.clone(),
                owner,
            ),
            reader,
        )
    }

    fn with(
        resolver: Resolver,
        probes: Arc<Mutex<Probes>>,
        decoders: DecoderTable,
        owner: u64,
    ) -> Self {
        let symbolizer = Arc::new(Symbolizer::new(
            resolver.bin.clone(),
            resolver.load_bias,
            resolver.target.maps().unwrap_or_default(),
            resolver.target.dev_ino.1,
        ));
        Self {
            resolver,
            probes,
            decoders,
            owner,
            symbolizer,
            logpoints: BTreeMap::new(),
            next_id: 1,
            last: HashMap::new(),
            removed: HashMap::new(),
            removed_total: Counters::default(),
            last_retired: crate::probe::Ticket::default(),
            retired: Vec::new(),
        }
    }

    fn probes(&self) -> MutexGuard<'_, Probes> {
        self.probes.lock().unwrap_or_else(PoisonError::into_inner)
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
        copies: Vec<PreparedCopy>,
    ) -> Result<LogpointId, EngineError> {
        // An exited process used to be reported as exec'd: its `/proc/PID/exe` is gone too.
        let gone = self.resolver.target.gone().or_else(|| {
            (!self.resolver.target.same_binary()).then_some(crate::target::Gone::Execed)
        });
        if let Some(g) = gone {
            return Err(EngineError::TargetGone {
                pid: self.resolver.target.pid,
                what: g.describe(),
            });
        }
        let id = LogpointId(self.next_id);
        self.next_id += 1;
        let mut probe_ids = Vec::new();
        for c in &copies {
            let spec = AttachSpec {
                binary: &c.object,
                offset: c.point.file_offset,
                pid: self.resolver.target.pid,
                edges: &c.sites,
            };
            // The decode table is held across the attach: the reader drops a record whose
            // probe it does not know, and the first hits come as soon as the uprobe is live —
            // before this thread could insert the entry after the attach (the slow-daemon test
            // lost 4 of 83 406 hits that way).
            let mut table = self.decoders();
            let installed = self.probes().install_stashed(&c.plan.plan, &spec, c.entry);
            match installed {
                Ok(probe_id) => {
                    table.insert(
                        probe_id,
                        ProbeDecoder {
                            owner: self.owner,
                            symbolizer: self.symbolizer.clone(),
                            logpoint: id,
                            values: c.plan.values.clone(),
                            local_errors: c.plan.local_errors.clone(),
                            value_errors: c.plan.value_errors.clone(),
                        },
                    );
                    probe_ids.push(probe_id);
                }
                Err(e) => {
                    drop(table);
                    for s in probe_ids {
                        let _ = self.retire_probe(s);
                        self.decoders().remove(&s);
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
                probe_ids,
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

    /// Removes one logpoint, waits until the kernel has unregistered its uprobes (~100 ms),
    /// and returns its final counters (summed over copies): exact, no hit is in flight any more.
    ///
    /// # Errors
    /// A kernel error on detach.
    pub fn remove(&mut self, id: LogpointId) -> Result<Option<Counters>, EngineError> {
        self.take_off(id, true)
    }

    /// Removes one logpoint without waiting for the kernel to unregister its uprobes (see
    /// [`Probes::remove`]), so what is queued behind it — the next install — goes on at once.
    /// Returns its counters at this moment; what its probes count until they are gone is
    /// added to [`Engine::totals`].
    ///
    /// # Errors
    /// A kernel error on detach.
    pub fn retire(&mut self, id: LogpointId) -> Result<Option<Counters>, EngineError> {
        self.take_off(id, false)
    }

    /// Removes probe `s` without waiting ([`Probes::remove`]) and remembers its place in the
    /// closer's order for [`Engine::remove_all`].
    fn retire_probe(&mut self, s: u32) -> Result<Counters, ProbeError> {
        let mut probes = self.probes();
        let removed = probes.remove(s);
        let ticket = probes.ticket_of(&[s]);
        drop(probes);
        self.last_retired = self.last_retired.max(ticket);
        removed
    }

    fn take_off(&mut self, id: LogpointId, wait: bool) -> Result<Option<Counters>, EngineError> {
        let Some(lp) = self.logpoints.remove(&id) else {
            return Ok(None);
        };
        let (total, first_err) = if wait {
            // The wait is outside the lock: other targets' installs go on meanwhile.
            let (ticket, first_err, waiter) = {
                let mut probes = self.probes();
                let (ticket, first_err) = probes.begin_remove(&lp.probe_ids);
                (ticket, first_err, probes.waiter())
            };
            waiter.wait_until(ticket);
            (self.probes().take_waited(&lp.probe_ids), first_err)
        } else {
            let mut first_err = None;
            let mut total = Counters::default();
            for s in &lp.probe_ids {
                match self.retire_probe(*s) {
                    Ok(c) => total.add(&c),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            (total, first_err)
        };
        // Retired: what its probes count until the kernel has unregistered them is added to
        // `totals` later (`Probes::late`), so the sum stays exact.
        self.removed.insert(id, total);
        self.removed_total.add(&total);
        for s in &lp.probe_ids {
            self.last.remove(s);
        }
        // The decode entries stay a while: records emitted before the detach may still be in
        // the ring, and the reader must still turn them into hits. Probe ids are never reused
        // (generation), so a stale entry cannot decode another probe's records.
        let now = std::time::Instant::now();
        self.retired.extend(lp.probe_ids.iter().map(|s| (*s, now)));
        let expired: Vec<u32> = self
            .retired
            .iter()
            .filter(|(_, t)| now.duration_since(*t) > RETIRE_AFTER)
            .map(|(s, _)| *s)
            .collect();
        self.retired
            .retain(|(_, t)| now.duration_since(*t) <= RETIRE_AFTER);
        let mut table = self.decoders();
        for s in expired {
            table.remove(&s);
        }
        drop(table);
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(Some(total)),
        }
    }

    /// Removes every logpoint, and returns once the kernel has unregistered their uprobes and
    /// every one this engine removed before (one at a time, ~100 ms each; a debugger about to
    /// patch the same text, or shutdown, needs them gone).
    ///
    /// # Errors
    /// The first detach error (the rest are still removed).
    pub fn remove_all(&mut self) -> Result<(), EngineError> {
        let ids: Vec<LogpointId> = self.logpoints.keys().copied().collect();
        let mut first = Ok(());
        for id in ids {
            if let Err(e) = self.retire(id) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        // Every one of them handed to the closer, after any retired before: wait for the last,
        // outside the lock.
        let waiter = self.probes().waiter();
        waiter.wait_until(self.last_retired);
        self.probes().reap();
        first
    }

    /// Final counters of a removed logpoint (e.g. one the CPU breaker switched off).
    #[must_use]
    pub fn last_removed(&self, id: LogpointId) -> Option<Counters> {
        self.removed.get(&id).copied()
    }

    /// Frames whose entry registers the entry probes hold now (see [`Probes::stash_slots`]).
    #[must_use]
    pub fn stash_slots(&self) -> usize {
        self.probes().stash_slots()
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
            .map(|lp| self.sum_counters(&lp.probe_ids))
    }

    /// Estimated CPU cost of logpoint `id` since it was attached, in ns: time in the program
    /// plus each copy's traps (hits, and passes of a branch probe the other way) times its
    /// placement's trap estimate (what the CPU breaker weighs).
    #[must_use]
    pub fn cost_ns(&self, id: LogpointId) -> Option<u64> {
        let lp = self.logpoints.get(&id)?;
        let probes = self.probes();
        let mut ns = 0;
        for (s, c) in lp.probe_ids.iter().zip(&lp.copies) {
            let k = probes.counters(*s).unwrap_or_default();
            ns += k.bpf_ns + (k.hits + k.other_way) * c.placement.kind.cost_ns();
        }
        Some(ns)
    }

    /// Every counter of this target since its engine started: the logpoints attached now and
    /// every one removed (summed over copies and CPUs).
    #[must_use]
    pub fn totals(&self) -> Counters {
        let mut t = self.removed_total;
        t.add(&self.probes().late(self.resolver.target.pid));
        for lp in self.logpoints.values() {
            t.add(&self.sum_counters(&lp.probe_ids));
        }
        t
    }

    /// Counters of every installed logpoint, each summed over its copies and CPUs (for
    /// `/metrics`): `hits`, `emitted`, `dropped_ring_full`, `rate_limited`,
    /// `condition_false`, `read_faults`, `bpf_ns`, …
    #[must_use]
    pub fn all_counters(&self) -> Vec<(LogpointId, Counters)> {
        self.logpoints
            .values()
            .map(|lp| (lp.id, self.sum_counters(&lp.probe_ids)))
            .collect()
    }

    fn sum_counters(&self, probe_ids: &[u32]) -> Counters {
        let probes = self.probes();
        let mut t = Counters::default();
        for s in probe_ids {
            t.add(&probes.counters(*s).unwrap_or_default());
        }
        t
    }

    /// The CPU circuit breaker: removes every logpoint whose cost over the window since the
    /// last call (BPF time + estimated trap cost per hit) exceeds `budget` (a fraction of one
    /// CPU), returning each with the reason.
    pub fn enforce_budget(&mut self, window: Duration, budget: f64) -> Vec<(LogpointId, String)> {
        let window_ns = window.as_nanos().max(1) as f64;
        let mut over = Vec::new();
        let probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
        for lp in self.logpoints.values() {
            let (mut dh, mut db, mut trap_ns) = (0, 0, 0);
            for (s, c) in lp.probe_ids.iter().zip(&lp.copies) {
                let Ok(now) = probes.counters(*s) else {
                    continue;
                };
                // Traps: hits, and passes of a branch probe that went the other way.
                let traps = now.hits + now.other_way;
                let (t0, h0, b0) = self
                    .last
                    .insert(*s, (traps, now.hits, now.bpf_ns))
                    .unwrap_or((0, 0, 0));
                dh += now.hits.saturating_sub(h0);
                db += now.bpf_ns.saturating_sub(b0);
                trap_ns += traps.saturating_sub(t0) * c.placement.kind.cost_ns();
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
        drop(probes);
        for (id, why) in &over {
            tracing::warn!(logpoint = id.0, %why, "logpoint switched off");
            let _ = self.remove(*id);
        }
        over
    }

    fn decoders(&self) -> std::sync::MutexGuard<'_, HashMap<u32, ProbeDecoder>> {
        self.decoders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.remove_all();
        // Its late counts are read by no one any more (the probes are shared by every target
        // of a host: keep them from growing with every process that came and went).
        self.probes().forget_late(self.resolver.target.pid);
    }
}
