//! The only module that talks to the kernel: loads the embedded eBPF object once, writes plans
//! into their slots, attaches the one program at each probe address with the slot as BPF
//! cookie, reads counters, and hands out the ring buffer.
//!
//! Probes go away in two ways only: [`Probes::remove`], or dropping [`Probes`] (the perf-event
//! links close). When the agent dies, even by SIGKILL, the kernel closes its fds and removes the
//! uprobes; nothing is pinned.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::UProbe;
use detrix_common::{
    metas_bytes, op, record_span, Counters, CpuRing, Event, EventHeader, Plan, RateState, Slot,
    StashKey, StashRegs, ValueMeta, WireHeader, CPU_RING_BYTES, CPU_RING_DATA_OFFSET, MAX_PROBES,
    MAX_VALUES, PLAN_ABI, RECORD_PREFIX_BYTES, WIRE_HEADER_BYTES,
};

use crate::debuginfo::FileOffset;

/// The program built by `cargo xtask build-ebpf`, embedded by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detrix-ebpf"));

const PROGRAM: &str = "detrix_capture";
const PROGRAM_MISSING: &str = "detrix_capture program";
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
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 1 << 16,
            wakeup_bytes: detrix_common::DEFAULT_WAKEUP_BYTES,
            ebpf_log: false,
        }
    }
}

/// Where the program's events arrive: one memory-mapped [`CpuRing`] per CPU, and the doorbell
/// ring whose fd becomes readable when the program wants the reader awake.
pub struct EventRings {
    doorbell: RingBuf<MapData>,
    /// Kept open: the mapping belongs to this map.
    _rings: MapData,
    base: std::ptr::NonNull<u8>,
    len: usize,
    ncpus: usize,
}

// SAFETY: the mapping is owned by this value and only touched through `&mut self`.
unsafe impl Send for EventRings {}

impl std::fmt::Debug for EventRings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRings")
            .field("cpus", &self.ncpus)
            .finish_non_exhaustive()
    }
}

impl std::os::fd::AsRawFd for EventRings {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.doorbell.as_raw_fd()
    }
}

impl Drop for EventRings {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are the mapping made in `EventRings::map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl EventRings {
    fn map(doorbell: RingBuf<MapData>, rings: MapData, ncpus: usize) -> Result<Self, ProbeError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let len = std::mem::size_of::<CpuRing>() * ncpus;
        let fd = rings.fd().as_fd().as_raw_fd();
        // SAFETY: maps the BPF_F_MMAPABLE array map's values, `ncpus` × size_of::<CpuRing>()
        // bytes (a whole number of pages), shared with the kernel; checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(ProbeError::Mmap(std::io::Error::last_os_error()));
        }
        let base = std::ptr::NonNull::new(p.cast::<u8>())
            .ok_or_else(|| ProbeError::Mmap(std::io::Error::other("mmap returned null")))?;
        Ok(Self {
            doorbell,
            _rings: rings,
            base,
            len,
            ncpus,
        })
    }

    /// Bytes published and not yet read in the fullest CPU's ring (of `CPU_RING_BYTES`).
    #[must_use]
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "the mapping is page-aligned and CpuRing a multiple of 4096 bytes: the u64 \
                  reads are aligned"
    )]
    pub fn backlog_bytes(&self) -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        (0..self.ncpus)
            .map(|cpu| {
                // SAFETY: cpu < ncpus, so the ring lies inside the mapping; `head` and `tail`
                // are aligned u64s of the ring, only read here.
                unsafe {
                    let ring = self.base.as_ptr().add(cpu * std::mem::size_of::<CpuRing>());
                    let head = AtomicU64::from_ptr(ring.cast::<u64>()).load(Ordering::Acquire);
                    let tail = AtomicU64::from_ptr(
                        ring.add(std::mem::offset_of!(CpuRing, tail)).cast::<u64>(),
                    )
                    .load(Ordering::Relaxed);
                    head.saturating_sub(tail)
                }
            })
            .max()
            .unwrap_or(0)
    }

    /// Hands at most `max` published records to `f` (the [`Event`] bytes of each: header and
    /// data, for [`parse_record`]), oldest first within each CPU, and frees their space.
    /// Returns how many it handed over.
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "the mapping is page-aligned, CpuRing a multiple of 4096 bytes and every record \
                  starts 8-aligned (`record_span`): the u64 reads are aligned"
    )]
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        use std::sync::atomic::{AtomicU64, Ordering};
        // The doorbell's records carry nothing: reading them re-arms the wakeup.
        while self.doorbell.next().is_some() {}
        let mut n = 0;
        for cpu in 0..self.ncpus {
            if n >= max {
                break;
            }
            // SAFETY: cpu < ncpus, so the ring lies inside the mapping; `head` and `tail` are
            // aligned u64s of the ring. The program only writes bytes between `head` and
            // `tail + CPU_RING_BYTES`, so records between `tail` and `head` are stable until
            // `tail` moves past them.
            unsafe {
                let ring = self.base.as_ptr().add(cpu * std::mem::size_of::<CpuRing>());
                let head = AtomicU64::from_ptr(ring.cast::<u64>()).load(Ordering::Acquire);
                let tail_word = AtomicU64::from_ptr(
                    ring.add(std::mem::offset_of!(CpuRing, tail)).cast::<u64>(),
                );
                let mut tail = tail_word.load(Ordering::Relaxed);
                let data = ring.add(CPU_RING_DATA_OFFSET);
                while tail < head && n < max {
                    let pos = (tail as usize) & (CPU_RING_BYTES - 1);
                    let len = std::ptr::read_volatile(data.add(pos).cast::<u64>()) as usize;
                    if !(WIRE_HEADER_BYTES..=std::mem::size_of::<Event>()).contains(&len) {
                        // Never written by the program: give up on this CPU's backlog rather
                        // than misread it (cannot happen unless the protocol is broken).
                        tracing::error!(
                            cpu,
                            len,
                            "corrupt event ring record; skipping this CPU's backlog"
                        );
                        tail = head;
                        break;
                    }
                    f(std::slice::from_raw_parts(
                        data.add(pos + RECORD_PREFIX_BYTES),
                        len,
                    ));
                    tail += record_span(len) as u64;
                    n += 1;
                }
                tail_word.store(tail, Ordering::Release);
            }
        }
        n
    }
}

/// The loaded program, its maps and the attached probes.
pub struct Probes {
    ebpf: aya::Ebpf,
    /// Per CPU: each slot's counters and its copy of the plan (`detrix_common::Slot`).
    slots: PerCpuArray<MapData, Slot>,
    rate: Array<MapData, RateState>,
    /// By probe id (see [`Probes::install`]).
    links: BTreeMap<u32, UProbeLinkId>,
    /// Saved entry registers (see `detrix-ebpf/src/stash.rs`).
    stash: HashMap<MapData, StashKey, StashRegs>,
    /// The entry probe of a probe whose plan reads entry values, by probe id, with its stash id.
    entry_links: BTreeMap<u32, (UProbeLinkId, u64)>,
    /// The last stash id given out: each entry probe gets a new one, so a slot an earlier
    /// probe left is never read by a later one.
    stash_ids: u64,
    noop_links: Vec<UProbeLinkId>,
    /// Bumped per install, so a reused slot gets a new probe id.
    generation: u32,
    ncpus: usize,
    /// `--ebpf-log`'s reader, when on.
    _log: Option<crate::ebpflog::Forwarder>,
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
        for (name, missing) in [
            (PROGRAM, PROGRAM_MISSING),
            (NOOP, NOOP_MISSING),
            (STASH, STASH_MISSING),
        ] {
            uprobe(&mut ebpf, name, missing)?
                .load()
                .map_err(ProbeError::Program)?;
        }
        Ok((
            Self {
                ebpf,
                slots,
                rate,
                links: BTreeMap::new(),
                stash,
                entry_links: BTreeMap::new(),
                stash_ids: 0,
                noop_links: Vec::new(),
                generation: 0,
                ncpus,
                _log: log,
            },
            ring,
        ))
    }

    fn program(&mut self) -> Result<&mut UProbe, ProbeError> {
        uprobe(&mut self.ebpf, PROGRAM, PROGRAM_MISSING)
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
                let link = self.attach(STASH, STASH_MISSING, spec, offset, id)?;
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
        cookie: u64,
    ) -> Result<UProbeLinkId, ProbeError> {
        let pid =
            NonZeroU32::new(spec.pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset.0),
            cookie: Some(cookie),
        };
        uprobe(&mut self.ebpf, name, missing)?
            .attach(point, spec.binary, pid)
            .map_err(|source| ProbeError::Attach {
                binary: spec.binary.display().to_string(),
                offset,
                source,
            })
    }

    /// Detaches an entry probe and deletes the slots it saved (the map's LRU bound would evict
    /// them anyway; this frees the room now).
    fn drop_entry(&mut self, link: UProbeLinkId, id: u64) {
        if let Ok(p) = uprobe(&mut self.ebpf, STASH, STASH_MISSING) {
            if let Err(e) = p.detach(link) {
                tracing::warn!(stash = id, error = %e, "detaching an entry probe failed");
            }
        }
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
        let slot = (0..MAX_PROBES)
            .find(|s| !self.links.keys().any(|id| slot_of(*id) == *s))
            .ok_or(ProbeError::NoSlot)?;
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
        let link = self.attach(PROGRAM, PROGRAM_MISSING, spec, spec.offset, u64::from(id))?;
        tracing::debug!(slot, id, "uprobe attached");
        self.links.insert(id, link);
        Ok(id)
    }

    /// Attaches the empty program at `spec` (a cost baseline; see `cargo xtask bench`).
    ///
    /// # Errors
    /// The kernel refused the attach.
    pub fn install_noop(&mut self, spec: &AttachSpec<'_>) -> Result<(), ProbeError> {
        let noop = uprobe(&mut self.ebpf, NOOP, NOOP_MISSING)?;
        let pid =
            NonZeroU32::new(spec.pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(spec.offset.0),
            cookie: None,
        };
        let link = noop
            .attach(point, spec.binary, pid)
            .map_err(|source| ProbeError::Attach {
                binary: spec.binary.display().to_string(),
                offset: spec.offset,
                source,
            })?;
        self.noop_links.push(link);
        Ok(())
    }

    /// Detaches every empty-program probe.
    ///
    /// # Errors
    /// A kernel error on detach.
    pub fn remove_noops(&mut self) -> Result<(), ProbeError> {
        let links = std::mem::take(&mut self.noop_links);
        let noop = uprobe(&mut self.ebpf, NOOP, NOOP_MISSING)?;
        for l in links {
            noop.detach(l).map_err(ProbeError::Program)?;
        }
        Ok(())
    }

    /// Detaches the probe in `slot` and invalidates its plan.
    ///
    /// # Errors
    /// Unknown slot or a kernel error on detach.
    pub fn remove(&mut self, id: u32) -> Result<(), ProbeError> {
        let link = self.links.remove(&id).ok_or(ProbeError::UnknownSlot(id))?;
        let detached = self.program()?.detach(link).map_err(ProbeError::Program);
        if let Some((entry, stash)) = self.entry_links.remove(&id) {
            self.drop_entry(entry, stash);
        }
        detached?;
        // The counters stay readable (a removed logpoint's totals); only the plan goes.
        let mut per_cpu = self.read_slot(slot_of(id))?;
        for s in &mut per_cpu {
            s.plan.abi = 0;
        }
        self.write_slot(slot_of(id), per_cpu)
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

    /// Removes every probe.
    ///
    /// # Errors
    /// The first detach error (the rest are still attempted).
    pub fn remove_all(&mut self) -> Result<(), ProbeError> {
        let slots: Vec<u32> = self.links.keys().copied().collect();
        let mut first = Ok(());
        for s in slots {
            if let Err(e) = self.remove(s) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Frames whose entry registers the stash holds now, over every entry probe: bounded by
    /// the live frames of probed functions (a frame's slot is reused by the next call at the
    /// same depth) and by `STASH_SLOTS`; 0 once every entry probe is removed.
    #[must_use]
    pub fn stash_slots(&self) -> usize {
        self.stash.keys().filter(Result::is_ok).count()
    }

    /// Possible CPUs (the per-CPU maps' width).
    #[must_use]
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    /// Slots with an attached probe.
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

/// Splits one record (the [`Event`] bytes [`EventRings::drain`] hands over) into its header,
/// with every value's meta, and its data. `None` for a record that is too short or from
/// another ABI (never misread).
#[must_use]
pub fn parse_record(bytes: &[u8]) -> Option<(EventHeader, &[u8])> {
    if bytes.len() < WIRE_HEADER_BYTES {
        return None;
    }
    // SAFETY: WireHeader is repr(C) plain integers (every bit pattern valid), and the slice
    // holds at least WIRE_HEADER_BYTES; read_unaligned copes with any alignment.
    let w = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<WireHeader>()) };
    if w.abi != PLAN_ABI {
        return None;
    }
    let n = usize::try_from(w.n_values)
        .ok()
        .filter(|&n| n <= MAX_VALUES)?;
    let metas_at = bytes
        .len()
        .checked_sub(metas_bytes(n))
        .filter(|&at| at >= WIRE_HEADER_BYTES)?;
    let mut values = [ValueMeta::default(); MAX_VALUES];
    for (i, v) in values.iter_mut().take(n).enumerate() {
        let m = &bytes[metas_at + 4 * i..metas_at + 4 * i + 4];
        *v = ValueMeta {
            len: u16::from_le_bytes([m[0], m[1]]),
            flags: u16::from_le_bytes([m[2], m[3]]),
        };
    }
    let header = EventHeader {
        abi: w.abi,
        probe_id: w.probe_id,
        pid: w.pid,
        tid: w.tid,
        ktime_ns: w.ktime_ns,
        goid: w.goid,
        flags: w.flags,
        n_values: w.n_values,
        values,
    };
    Some((header, &bytes[WIRE_HEADER_BYTES..metas_at]))
}
