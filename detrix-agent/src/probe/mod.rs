//! The only module that talks to the kernel: loads the embedded eBPF object once, writes plans
//! into their slots, attaches the one program at each probe address with the slot as BPF
//! cookie, reads counters, and hands out the ring buffer.
//!
//! Probes go away in two ways only: [`Probes::remove`], or dropping [`Probes`] (the links
//! close). When the agent dies, even by SIGKILL, the kernel closes its fds and removes the
//! uprobes; nothing is pinned. A removed probe's link is closed on another thread
//! ([`closer`]: the kernel takes 50–100 ms to unregister a uprobe), and its slot is reused only
//! once that close is done. A probe is a `uprobe_multi` BPF link where the kernel has them
//! ([`multi`]: their closes overlap), a perf event otherwise.

mod closer;
mod multi;
mod ring;

pub use closer::{Ticket, Waiter};
pub use ring::{parse_record, Drained, EventRings};

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::os::fd::OwnedFd;
use std::path::Path;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{
    UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope,
};
use aya::programs::UProbe;
use detrix_common::{guard, op, Counters, Plan, RateState, Slot, StashKey, StashRegs, MAX_PROBES};

use crate::debuginfo::FileOffset;

/// The program built by `cargo xtask build-ebpf`, embedded by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detrix-ebpf"));

const PROGRAM: &str = "detrix_capture";
const PROGRAM_MISSING: &str = "detrix_capture program";
/// The bench's floor for a capture, attached instead of it ([`LoadOptions::handoff`]).
const HANDOFF: &str = "detrix_handoff";
const HANDOFF_MISSING: &str = "detrix_handoff program";
/// The empty program, for cost baselines.
const NOOP: &str = "detrix_noop";
const NOOP_MISSING: &str = "detrix_noop program";
/// The entry probe of a plan that reads entry values (`op::STASH`).
const STASH: &str = "detrix_stash";
const STASH_MISSING: &str = "detrix_stash program";

/// Why the kernel side failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot load the eBPF program: {0}; is this kernel built with CONFIG_BPF_EVENTS and CONFIG_UPROBE_EVENTS, and are you root?")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel refused the eBPF program: {0}")]
    Program(#[source] aya::programs::ProgramError),
    #[error("the eBPF object has no {0}; rebuild it with `cargo xtask build-ebpf`")]
    Missing(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot attach a uprobe at offset {offset} of {binary}: {source}")]
    Attach {
        binary: String,
        offset: FileOffset,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach a uprobe at offset {offset} of {binary}: {source}")]
    AttachLink {
        binary: String,
        offset: FileOffset,
        #[source]
        source: std::io::Error,
    },
    #[error("all {MAX_PROBES} probe slots are in use; remove some probes first")]
    NoSlot,
    #[error("no probe in slot {0}")]
    UnknownSlot(u32),
    #[error("cannot count the possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("cannot map the event rings into memory: {0}")]
    Mmap(#[source] std::io::Error),
    #[error("cannot start forwarding the program's log (--ebpf-log): {0}")]
    Log(#[source] std::io::Error),
}

/// Doorbell sizing and wakeup policy, fixed at load. (Events themselves go to one
/// [`CpuRing`] of `CPU_RING_BYTES` per CPU.)
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Doorbell ring size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Wake the reader when a CPU's backlog passes this many bytes; 0 = for every event.
    pub wakeup_bytes: u64,
    /// `--ebpf-log`: the program reports each faulting plan step ([`crate::ebpflog`]).
    pub ebpf_log: bool,
    /// `cargo xtask bench` only: probes run `detrix_handoff` (register values into the ring and
    /// nothing else; not safe with two threads on one CPU) instead of the capture program.
    pub handoff: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 1 << 16,
            wakeup_bytes: detrix_common::DEFAULT_WAKEUP_BYTES,
            ebpf_log: false,
            handoff: false,
        }
    }
}

/// An attached probe's link: a perf event aya holds (by id), or a `uprobe_multi` link.
#[derive(Debug)]
enum Attached {
    Perf(UProbeLinkId),
    Multi(OwnedFd),
}

/// A detached link on its way to the [`closer`]: dropping it closes it.
#[derive(Debug)]
enum Link {
    Perf(#[expect(dead_code, reason = "held to be dropped: its Drop closes the link")] UProbeLink),
    Multi(
        #[expect(
            dead_code,
            reason = "held to be dropped: closing it removes the uprobe"
        )]
        OwnedFd,
    ),
}

/// Set to `perf` to attach probes as perf events even where `uprobe_multi` links exist (to
/// compare the two in one run, or on a kernel where the links misbehave).
pub const LINKS_ENV: &str = "DETRIX_UPROBE_LINKS";

/// The loaded program, its maps and the attached probes.
pub struct Probes {
    ebpf: aya::Ebpf,
    /// The programs loaded for `uprobe_multi` links; `None`: probes are perf events.
    multi: Option<multi::Programs>,
    /// Per CPU: each slot's counters and its copy of the plan (`detrix_common::Slot`).
    slots: PerCpuArray<MapData, Slot>,
    rate: Array<MapData, RateState>,
    /// By probe id (see [`Probes::install`]): its uprobes (one, or one per branch into its
    /// block), with the pid they were scoped to.
    links: BTreeMap<u32, (Vec<Attached>, u32)>,
    /// Removed probes whose links [`Probes::closer`] is still closing, by probe id: their slots
    /// are not reused until then.
    retiring: BTreeMap<u32, Retiring>,
    /// Counted by removed probes' slots between [`Probes::remove`] and the end of their
    /// unregistration, by target pid (see [`Probes::late`]).
    late: BTreeMap<u32, Counters>,
    /// Final counters of the probes [`Probes::remove_wait`] is removing, by probe id (filled
    /// and drained within that call).
    waited: BTreeMap<u32, Counters>,
    closer: closer::Closer<Link>,
    /// Saved entry registers (see `detrix-ebpf/src/stash.rs`).
    stash: HashMap<MapData, StashKey, StashRegs>,
    /// The entry probe of a probe whose plan reads entry values, by probe id, with its stash id.
    entry_links: BTreeMap<u32, (Attached, u64)>,
    /// The last stash id given out: each entry probe gets a new one, so a slot an earlier
    /// probe left is never read by a later one.
    stash_ids: u64,
    noop_links: Vec<Attached>,
    /// The program probes run (name, what to say if the object lacks it): the capture, or in
    /// the bench the handoff.
    program: (&'static str, &'static str),
    /// Bumped per install, so a reused slot gets a new probe id.
    generation: u32,
    ncpus: usize,
    /// `--ebpf-log`'s reader, when on.
    _log: Option<crate::ebpflog::Forwarder>,
}

impl Drop for Probes {
    /// Removes every probe still attached and waits for the closer, so the links it holds and
    /// the ones still attached go in one queue, before the eBPF object and its maps (the
    /// kernel unregisters them one at a time, ~100 ms each, however they are closed).
    fn drop(&mut self) {
        let _ = self.remove_all();
    }
}

/// A removed probe whose uprobe the kernel is still unregistering.
#[derive(Debug, Clone, Copy)]
struct Retiring {
    pid: u32,
    /// Its counters when [`Probes::remove`] returned them.
    at_remove: Counters,
    /// The stash id of its entry probe, if it had one.
    stash: Option<u64>,
    /// Removed by [`Probes::remove_wait`] or [`Probes::begin_remove`], whose caller takes its
    /// final counters ([`Probes::take_waited`]).
    wait: bool,
    /// Where its close is in the closer's order.
    ticket: Ticket,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attached", &self.links.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Where to attach one probe.
#[derive(Debug, Clone)]
pub struct AttachSpec<'a> {
    /// The object file (`/proc/PID/exe` for the main executable).
    pub binary: &'a Path,
    pub offset: FileOffset,
    /// Only this process triggers the uprobe.
    pub pid: u32,
    /// When not empty, the probe's uprobes go on these branches into the block at `offset`
    /// instead of at `offset` itself (see `crate::place::Edge`): one uprobe each, one probe id.
    pub edges: &'a [Site],
}

/// A branch a probe is attached on in place of the block it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    pub offset: FileOffset,
    /// For a conditional branch, the x86 condition (`detrix_common::guard`) under which it goes
    /// into the block: the program counts a hit only then.
    pub cc: Option<u8>,
}

/// The loaded object's uprobe program `name`; `missing` names it for the error.
fn uprobe<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &str,
    missing: &'static str,
) -> Result<&'a mut UProbe, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing(missing))?
        .try_into()
        .map_err(ProbeError::Program)
}

/// Takes map `name` out of the loaded object as a `T` (`Array`, `PerCpuArray`, `RingBuf`);
/// `missing` names it for the error when the object lacks it.
fn take_map<T>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    missing: &'static str,
) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Missing(missing))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

impl Probes {
    /// Loads and verifies the program, and takes its ring buffer out for the reader.
    ///
    /// # Errors
    /// [`ProbeError::Load`] / [`ProbeError::Program`] when the kernel refuses.
    pub fn load(opts: LoadOptions) -> Result<(Self, EventRings), ProbeError> {
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| ProbeError::Cpus(e))?;
        let mut ebpf = aya::EbpfLoader::new()
            .map_max_entries("EVENTS", opts.ring_bytes)
            .map_max_entries(
                "RINGS",
                u32::try_from(ncpus)
                    .map_err(|_| ProbeError::Cpus(std::io::Error::other("too many CPUs")))?,
            )
            .override_global("WAKEUP_BYTES", &opts.wakeup_bytes, true)
            .override_global(crate::ebpflog::GLOBAL, &u8::from(opts.ebpf_log), true)
            // Off: the log ring is never written; the smallest ring the kernel takes.
            .map_max_entries(
                crate::ebpflog::MAP,
                if opts.ebpf_log { 1 << 17 } else { 4096 },
            )
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Load)?;
        let program = if opts.handoff {
            (HANDOFF, HANDOFF_MISSING)
        } else {
            (PROGRAM, PROGRAM_MISSING)
        };
        // Before any map is taken out: the second load relocates against all of them.
        let multi = if std::env::var(LINKS_ENV).is_ok_and(|v| v == "perf") {
            None
        } else {
            match multi::Programs::load(&ebpf, EBPF_OBJECT, &[program.0, NOOP, STASH]) {
                Ok(p) => {
                    tracing::debug!("probes are uprobe_multi links");
                    Some(p)
                }
                Err(e) => {
                    tracing::info!(reason = %e, "no uprobe_multi links; probes are perf events (each removal ~100 ms, one at a time)");
                    None
                }
            }
        };
        let slots: PerCpuArray<_, _> = take_map(&mut ebpf, "SLOTS", "SLOTS map")?;
        let ring: RingBuf<_> = take_map(&mut ebpf, "EVENTS", "EVENTS map")?;
        let rate: Array<_, _> = take_map(&mut ebpf, "RATE", "RATE map")?;
        let stash: HashMap<_, _, _> = take_map(&mut ebpf, "STASH", "STASH map")?;
        let aya::maps::Map::Array(rings) = ebpf
            .take_map("RINGS")
            .ok_or(ProbeError::Missing("RINGS map"))?
        else {
            return Err(ProbeError::Missing("RINGS array map"));
        };
        let ring = EventRings::map(ring, rings, ncpus)?;
        let log = if opts.ebpf_log {
            Some(crate::ebpflog::Forwarder::start(&mut ebpf).map_err(ProbeError::Log)?)
        } else {
            None
        };
        // The perf-event path's programs, when it is the one taken.
        for (name, missing) in [program, (NOOP, NOOP_MISSING), (STASH, STASH_MISSING)] {
            if multi.is_none() {
                uprobe(&mut ebpf, name, missing)?
                    .load()
                    .map_err(ProbeError::Program)?;
            }
        }
        let parallel_closes = multi.is_some();
        Ok((
            Self {
                ebpf,
                multi,
                slots,
                rate,
                links: BTreeMap::new(),
                retiring: BTreeMap::new(),
                late: BTreeMap::new(),
                waited: BTreeMap::new(),
                closer: closer::Closer::start(parallel_closes),
                stash,
                entry_links: BTreeMap::new(),
                stash_ids: 0,
                noop_links: Vec::new(),
                program,
                generation: 0,
                ncpus,
                _log: log,
            },
            ring,
        ))
    }

    /// Whether probes are `uprobe_multi` links (else perf events).
    #[must_use]
    pub fn multi_links(&self) -> bool {
        self.multi.is_some()
    }

    /// Writes `plan` into a free slot and attaches a uprobe there, scoped to `spec.pid`.
    /// Returns the probe id: the BPF cookie and `EventHeader::probe_id`, the slot in its low
    /// 16 bits and a generation above, so records still in the ring from a removed probe are
    /// never decoded with the plan of the next probe in the same slot.
    ///
    /// # Errors
    /// No free slot, map write failure, or the kernel refused the attach.
    pub fn install(&mut self, plan: &Plan, spec: &AttachSpec<'_>) -> Result<u32, ProbeError> {
        self.install_stashed(plan, spec, None)
    }

    /// [`Probes::install`], and when the plan reads entry values (`op::STASH`) and `entry` is
    /// the function's first instruction, an entry probe there that saves them, attached first
    /// (so no call entered after the line probe is missed) and removed with the probe. Without
    /// `entry` those values are computed the other way the plan says, or fault.
    ///
    /// # Errors
    /// As [`Probes::install`]; nothing stays attached on failure.
    #[tracing::instrument(skip_all, fields(pid = spec.pid, offset = %spec.offset))]
    pub fn install_stashed(
        &mut self,
        plan: &Plan,
        spec: &AttachSpec<'_>,
        entry: Option<FileOffset>,
    ) -> Result<u32, ProbeError> {
        let stashes = plan.active_ops().iter().any(|o| o.kind == op::STASH);
        let entry = match entry {
            Some(offset) if stashes => {
                self.stash_ids += 1;
                let id = self.stash_ids;
                let link = self.attach(STASH, STASH_MISSING, spec, offset, Some(id))?;
                Some((link, id))
            }
            _ => None,
        };
        let mut plan = *plan;
        if let Some((_, id)) = entry {
            for o in plan.ops.iter_mut().take(plan.n_ops as usize) {
                if o.kind == op::STASH {
                    o.imm = id as i64;
                }
            }
        }
        match self.install_plan(&plan, spec) {
            Ok(probe) => {
                if let Some(e) = entry {
                    tracing::debug!(probe, stash = e.1, "entry probe attached");
                    self.entry_links.insert(probe, e);
                }
                Ok(probe)
            }
            Err(err) => {
                if let Some((link, id)) = entry {
                    self.drop_entry(link, id);
                }
                Err(err)
            }
        }
    }

    /// Attaches program `name` at `offset` of `spec.binary` with `cookie`.
    fn attach(
        &mut self,
        name: &str,
        missing: &'static str,
        spec: &AttachSpec<'_>,
        offset: FileOffset,
        cookie: Option<u64>,
    ) -> Result<Attached, ProbeError> {
        if let Some(m) = &self.multi {
            return m
                .attach(name, spec.binary, offset.0, cookie.unwrap_or(0), spec.pid)
                .map(Attached::Multi)
                .map_err(|source| ProbeError::AttachLink {
                    binary: spec.binary.display().to_string(),
                    offset,
                    source,
                });
        }
        let pid =
            NonZeroU32::new(spec.pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset.0),
            cookie,
        };
        uprobe(&mut self.ebpf, name, missing)?
            .attach(point, spec.binary, pid)
            .map(Attached::Perf)
            .map_err(|source| ProbeError::Attach {
                binary: spec.binary.display().to_string(),
                offset,
                source,
            })
    }

    /// Takes an attached link of program `name` out, to be closed by dropping it.
    fn take(&mut self, a: Attached, name: &str, missing: &'static str) -> Result<Link, ProbeError> {
        match a {
            Attached::Multi(fd) => Ok(Link::Multi(fd)),
            Attached::Perf(id) => uprobe(&mut self.ebpf, name, missing)?
                .take_link(id)
                .map(Link::Perf)
                .map_err(ProbeError::Program),
        }
    }

    /// Detaches an entry probe whose line probe was never attached, and deletes the slots it
    /// saved (at once: this is an install's failure path, nothing waits on it).
    fn drop_entry(&mut self, link: Attached, id: u64) {
        if let Err(e) = self.take(link, STASH, STASH_MISSING) {
            tracing::warn!(stash = id, error = %e, "detaching an entry probe failed");
        }
        self.drop_stashed(id);
    }

    /// Deletes the frames entry probe `id` saved (the map's LRU bound would evict them anyway;
    /// this frees the room now). Only once the entry probe is detached: it would save more.
    fn drop_stashed(&mut self, id: u64) {
        let stale: Vec<StashKey> = self
            .stash
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.id == id)
            .collect();
        for k in &stale {
            // Already evicted is fine.
            let _ = self.stash.remove(k);
        }
    }

    fn install_plan(&mut self, plan: &Plan, spec: &AttachSpec<'_>) -> Result<u32, ProbeError> {
        self.reap();
        let mut slot = self.free_slot();
        if slot.is_none() && !self.retiring.is_empty() {
            // Every slot is taken or still closing: wait for the closes (~100 ms).
            self.flush();
            slot = self.free_slot();
        }
        let slot = slot.ok_or(ProbeError::NoSlot)?;
        self.generation = (self.generation + 1) & 0xffff;
        let id = slot | (self.generation << 16);
        // Counters and the rate limiter start from zero for every new probe in the slot; every
        // CPU gets the same plan.
        self.rate
            .set(slot, RateState::default(), 0)
            .map_err(|source| ProbeError::Map {
                name: "RATE",
                source,
            })?;
        let fresh = Slot {
            counters: Counters::default(),
            plan: *plan,
        };
        self.write_slot(slot, vec![fresh; self.ncpus])?;
        let sites: Vec<(FileOffset, u64)> = if spec.edges.is_empty() {
            vec![(spec.offset, u64::from(id))]
        } else {
            spec.edges
                .iter()
                .map(|e| {
                    let cookie = e.cc.map_or(u64::from(id), |cc| guard::cookie(id, cc));
                    (e.offset, cookie)
                })
                .collect()
        };
        let mut links = Vec::with_capacity(sites.len());
        for (offset, cookie) in sites {
            let (name, missing) = self.program;
            match self.attach(name, missing, spec, offset, Some(cookie)) {
                Ok(l) => links.push(l),
                Err(e) => {
                    // All or nothing: the ones attached go (the slot was never taken).
                    for l in links {
                        if let Err(e) = self.take(l, name, missing) {
                            tracing::warn!(id, error = %e, "detaching a branch probe failed");
                        }
                    }
                    return Err(e);
                }
            }
        }
        tracing::debug!(slot, id, uprobes = links.len(), "probe attached");
        self.links.insert(id, (links, spec.pid));
        Ok(id)
    }

    /// The lowest slot neither attached nor still closing.
    fn free_slot(&self) -> Option<u32> {
        let used: std::collections::BTreeSet<u32> = self
            .links
            .keys()
            .chain(self.retiring.keys())
            .map(|id| slot_of(*id))
            .collect();
        (0..MAX_PROBES).find(|s| !used.contains(s))
    }

    /// Attaches the empty program at `spec` (a cost baseline; see `cargo xtask bench`).
    ///
    /// # Errors
    /// The kernel refused the attach.
    pub fn install_noop(&mut self, spec: &AttachSpec<'_>) -> Result<(), ProbeError> {
        let link = self.attach(NOOP, NOOP_MISSING, spec, spec.offset, None)?;
        self.noop_links.push(link);
        Ok(())
    }

    /// Detaches every empty-program probe.
    ///
    /// # Errors
    /// A kernel error on detach.
    pub fn remove_noops(&mut self) -> Result<(), ProbeError> {
        for l in std::mem::take(&mut self.noop_links) {
            drop(self.take(l, NOOP, NOOP_MISSING)?);
        }
        Ok(())
    }

    /// Detaches probe `id` and returns its counters (summed over CPUs) at this moment.
    ///
    /// Returns before the kernel has unregistered the uprobe (~100 ms; see [`closer`]): until
    /// then the probe may still fire and emit, as it could while a synchronous detach waited,
    /// and its records carry its own id. What its slot counts meanwhile is added to
    /// [`Probes::late`] once the close is done; only then is the slot's plan invalidated and
    /// the slot free for another probe. [`Probes::flush`] waits for that.
    ///
    /// # Errors
    /// Unknown probe, or a kernel error taking its link.
    pub fn remove(&mut self, id: u32) -> Result<Counters, ProbeError> {
        self.detach(id, false)
    }

    /// Removes probes `ids` and waits until the kernel has unregistered them (one at a time,
    /// ~100 ms each); returns their final counters, summed, and the first error (the rest are
    /// still removed). Exact: no hit is in flight any more.
    pub fn remove_wait(&mut self, ids: &[u32]) -> (Counters, Option<ProbeError>) {
        let (ticket, first) = self.begin_remove(ids);
        self.closer.waiter().wait_until(ticket);
        (self.take_waited(ids), first)
    }

    /// The first half of [`Probes::remove_wait`] for a caller that must not hold these probes
    /// while the kernel works (they sit behind a lock every target takes): removes `ids`, and
    /// returns the ticket to wait for with [`Probes::waiter`] — then
    /// [`Probes::take_waited`] — and the first error.
    pub fn begin_remove(&mut self, ids: &[u32]) -> (Ticket, Option<ProbeError>) {
        let mut first = None;
        let mut last = Ticket::default();
        for id in ids {
            match self.detach(*id, true) {
                Ok(_) => last = last.max(self.retiring.get(id).map_or(last, |r| r.ticket)),
                Err(e) => {
                    last = last.max(self.retiring.get(id).map_or(last, |r| r.ticket));
                    first.get_or_insert(e);
                }
            }
        }
        (last, first)
    }

    /// Drops what [`Probes::late`] kept for target `pid` (its engine is gone).
    pub fn forget_late(&mut self, pid: u32) {
        self.reap();
        self.late.remove(&pid);
    }

    /// The ticket after which every one of `ids` (removed, not yet reaped) is closed.
    #[must_use]
    pub fn ticket_of(&self, ids: &[u32]) -> Ticket {
        ids.iter()
            .filter_map(|id| self.retiring.get(id))
            .map(|r| r.ticket)
            .max()
            .unwrap_or_default()
    }

    /// Waits for closes without these probes.
    #[must_use]
    pub fn waiter(&self) -> Waiter {
        self.closer.waiter()
    }

    /// The final counters of `ids`, removed by [`Probes::begin_remove`], once their ticket is
    /// reached; summed.
    pub fn take_waited(&mut self, ids: &[u32]) -> Counters {
        self.reap();
        let mut total = Counters::default();
        for id in ids {
            if let Some(c) = self.waited.remove(id) {
                total.add(&c);
            }
        }
        total
    }

    fn detach(&mut self, id: u32, wait: bool) -> Result<Counters, ProbeError> {
        let (attached, pid) = self.links.remove(&id).ok_or(ProbeError::UnknownSlot(id))?;
        // The line probe first, its entry probe after: closed in this order, a line hit never
        // looks for registers its entry probe has stopped saving.
        let mut links = Vec::with_capacity(attached.len() + 1);
        let mut taken = Ok(());
        for link in attached {
            match self.take(link, self.program.0, self.program.1) {
                Ok(l) => links.push(l),
                Err(e) => taken = taken.and(Err(e)),
            }
        }
        let mut stash = None;
        if let Some((entry, stash_id)) = self.entry_links.remove(&id) {
            match self.take(entry, STASH, STASH_MISSING) {
                Ok(l) => links.push(l),
                Err(e) => {
                    tracing::warn!(stash = stash_id, error = %e, "taking an entry probe's link failed");
                }
            }
            stash = Some(stash_id);
        }
        let ticket = self.closer.close(id, links);
        let at_remove = self.counters(id).unwrap_or_default();
        self.retiring.insert(
            id,
            Retiring {
                pid,
                at_remove,
                stash,
                wait,
                ticket,
            },
        );
        taken.map(|()| at_remove)
    }

    /// Finishes the removals whose links are closed: what their slots counted since
    /// [`Probes::remove`] goes to [`Probes::late`], their plans are invalidated (nothing can
    /// fire there any more, so this write races no hit) and their entry probes' frames deleted.
    pub fn reap(&mut self) {
        let closed = self.closer.reap();
        self.finish(closed);
    }

    /// Waits until every removed probe's uprobe is unregistered, then finishes them as
    /// [`Probes::reap`] does: the target's text is free of them when this returns.
    pub fn flush(&mut self) {
        let closed = self.closer.flush();
        self.finish(closed);
    }

    fn finish(&mut self, closed: Vec<u32>) {
        for id in closed {
            let Some(r) = self.retiring.remove(&id) else {
                continue;
            };
            match self.read_slot(slot_of(id)) {
                Ok(mut per_cpu) => {
                    let mut now = Counters::default();
                    for s in &mut per_cpu {
                        now.add(&s.counters);
                        s.plan.abi = 0;
                    }
                    if r.wait {
                        self.waited.insert(id, now);
                    } else {
                        self.late
                            .entry(r.pid)
                            .or_default()
                            .add(&now.since(&r.at_remove));
                    }
                    if let Err(e) = self.write_slot(slot_of(id), per_cpu) {
                        tracing::warn!(probe = id, error = %e, "invalidating a removed probe's plan");
                    }
                }
                Err(e) => tracing::warn!(probe = id, error = %e, "reading a removed probe's slot"),
            }
            if let Some(stash) = r.stash {
                self.drop_stashed(stash);
            }
        }
    }

    /// What removed probes of target `pid` counted after [`Probes::remove`] returned their
    /// counters (hits in the time the kernel took to unregister them), for its totals.
    pub fn late(&mut self, pid: u32) -> Counters {
        self.reap();
        self.late.get(&pid).copied().unwrap_or_default()
    }

    fn read_slot(&self, slot: u32) -> Result<Vec<Slot>, ProbeError> {
        let per_cpu = self.slots.get(&slot, 0).map_err(|source| ProbeError::Map {
            name: "SLOTS",
            source,
        })?;
        Ok(per_cpu.iter().copied().collect())
    }

    fn write_slot(&mut self, slot: u32, per_cpu: Vec<Slot>) -> Result<(), ProbeError> {
        let values = aya::maps::PerCpuValues::try_from(per_cpu).map_err(ProbeError::Cpus)?;
        self.slots
            .set(slot, values, 0)
            .map_err(|source| ProbeError::Map {
                name: "SLOTS",
                source,
            })
    }

    /// Removes every probe, and waits until the kernel has unregistered them all
    /// ([`Probes::flush`]).
    ///
    /// # Errors
    /// The first detach error (the rest are still attempted).
    pub fn remove_all(&mut self) -> Result<(), ProbeError> {
        let ids: Vec<u32> = self.links.keys().copied().collect();
        match self.remove_wait(&ids) {
            (_, Some(e)) => Err(e),
            (_, None) => Ok(()),
        }
    }

    /// Frames whose entry registers the stash holds, over every entry probe: bounded by the
    /// live frames of probed functions (a frame's slot is reused by the next call at the same
    /// depth) and by `STASH_SLOTS`; 0 once every entry probe is removed. Waits for pending
    /// removals first ([`Probes::flush`]): a removed entry probe's frames go once it is
    /// unregistered.
    pub fn stash_slots(&mut self) -> usize {
        self.flush();
        self.stash.keys().filter(Result::is_ok).count()
    }

    /// Possible CPUs (the per-CPU maps' width).
    #[must_use]
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    /// Probe ids attached now.
    #[must_use]
    pub fn slots(&self) -> Vec<u32> {
        self.links.keys().copied().collect()
    }

    /// The counters of `slot`, summed over CPUs.
    ///
    /// # Errors
    /// Map read failure.
    pub fn counters(&self, id: u32) -> Result<Counters, ProbeError> {
        let mut sum = Counters::default();
        for s in self.read_slot(slot_of(id))? {
            sum.add(&s.counters);
        }
        Ok(sum)
    }
}

/// The map slot of a probe id.
#[must_use]
pub fn slot_of(id: u32) -> u32 {
    id & 0xffff
}
