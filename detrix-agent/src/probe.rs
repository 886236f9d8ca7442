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

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::UProbe;
use detrix_common::{Counters, EventHeader, Plan, RateState, EVENT_HEADER_BYTES, MAX_PROBES, PLAN_ABI};

use crate::debuginfo::FileOffset;

/// The program built by `cargo xtask build-ebpf`, embedded by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detrix-ebpf"));

const PROGRAM: &str = "detrix_capture";
/// The empty program, for cost baselines.
const NOOP: &str = "detrix_noop";

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
    Map { name: &'static str, #[source] source: aya::maps::MapError },
    #[error("cannot attach a uprobe at offset {offset} of {binary}: {source}")]
    Attach { binary: String, offset: FileOffset, #[source] source: aya::programs::ProgramError },
    #[error("all {MAX_PROBES} probe slots are in use; remove some probes first")]
    NoSlot,
    #[error("no probe in slot {0}")]
    UnknownSlot(u32),
    #[error("cannot count the possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
}

/// Ring-buffer sizing and wakeup policy, fixed at load.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Ring size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Force a reader wakeup every this many events per CPU; 0 = the kernel's default.
    pub wakeup_every: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { ring_bytes: 1 << 22, wakeup_every: detrix_common::DEFAULT_WAKEUP_EVERY }
    }
}

/// The loaded program, its maps and the attached probes.
pub struct Probes {
    ebpf: aya::Ebpf,
    plans: Array<MapData, Plan>,
    counters: PerCpuArray<MapData, Counters>,
    rate: Array<MapData, RateState>,
    /// By probe id (see [`Probes::install`]).
    links: BTreeMap<u32, UProbeLinkId>,
    noop_links: Vec<UProbeLinkId>,
    /// Bumped per install, so a reused slot gets a new probe id.
    generation: u32,
    ncpus: usize,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").field("attached", &self.links.keys().collect::<Vec<_>>()).finish_non_exhaustive()
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

impl Probes {
    /// Loads and verifies the program, and takes its ring buffer out for the reader.
    ///
    /// # Errors
    /// [`ProbeError::Load`] / [`ProbeError::Program`] when the kernel refuses.
    pub fn load(opts: LoadOptions) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        let mut ebpf = aya::EbpfLoader::new()
            .map_max_entries("EVENTS", opts.ring_bytes)
            .override_global("WAKEUP_EVERY", &opts.wakeup_every, true)
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Load)?;
        let plans = Array::try_from(ebpf.take_map("PLANS").ok_or(ProbeError::Missing("PLANS map"))?)
            .map_err(|source| ProbeError::Map { name: "PLANS", source })?;
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").ok_or(ProbeError::Missing("COUNTERS map"))?)
            .map_err(|source| ProbeError::Map { name: "COUNTERS", source })?;
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or(ProbeError::Missing("EVENTS map"))?)
            .map_err(|source| ProbeError::Map { name: "EVENTS", source })?;
        let rate = Array::try_from(ebpf.take_map("RATE").ok_or(ProbeError::Missing("RATE map"))?)
            .map_err(|source| ProbeError::Map { name: "RATE", source })?;
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| ProbeError::Cpus(e))?;
        let program: &mut UProbe = ebpf
            .program_mut(PROGRAM)
            .ok_or(ProbeError::Missing("detrix_capture program"))?
            .try_into()
            .map_err(ProbeError::Program)?;
        program.load().map_err(ProbeError::Program)?;
        let noop: &mut UProbe = ebpf.program_mut(NOOP).ok_or(ProbeError::Missing("detrix_noop program"))?.try_into().map_err(ProbeError::Program)?;
        noop.load().map_err(ProbeError::Program)?;
        Ok((Self { ebpf, plans, counters, rate, links: BTreeMap::new(), noop_links: Vec::new(), generation: 0, ncpus }, ring))
    }

    fn program(&mut self) -> Result<&mut UProbe, ProbeError> {
        self.ebpf
            .program_mut(PROGRAM)
            .ok_or(ProbeError::Missing("detrix_capture program"))?
            .try_into()
            .map_err(ProbeError::Program)
    }

    /// Writes `plan` into a free slot and attaches a uprobe there, scoped to `spec.pid`.
    /// Returns the probe id: the BPF cookie and `EventHeader::probe_id`, the slot in its low
    /// 16 bits and a generation above, so records still in the ring from a removed probe are
    /// never decoded with the plan of the next probe in the same slot.
    ///
    /// # Errors
    /// No free slot, map write failure, or the kernel refused the attach.
    #[tracing::instrument(skip_all, fields(pid = spec.pid, offset = %spec.offset))]
    pub fn install(&mut self, plan: &Plan, spec: &AttachSpec<'_>) -> Result<u32, ProbeError> {
        let slot = (0..MAX_PROBES).find(|s| !self.links.keys().any(|id| slot_of(*id) == *s)).ok_or(ProbeError::NoSlot)?;
        self.generation = (self.generation + 1) & 0xffff;
        let id = slot | (self.generation << 16);
        // Counters and the rate limiter start from zero for every new probe in the slot.
        let zero = aya::maps::PerCpuValues::try_from(vec![Counters::default(); self.ncpus]).map_err(ProbeError::Cpus)?;
        self.counters.set(slot, zero, 0).map_err(|source| ProbeError::Map { name: "COUNTERS", source })?;
        self.rate.set(slot, RateState::default(), 0).map_err(|source| ProbeError::Map { name: "RATE", source })?;
        self.plans.set(slot, plan, 0).map_err(|source| ProbeError::Map { name: "PLANS", source })?;
        let pid = NonZeroU32::new(spec.pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let point = UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(spec.offset.0), cookie: Some(u64::from(id)) };
        let binary = spec.binary.to_owned();
        let link = self.program()?.attach(point, &binary, pid).map_err(|source| ProbeError::Attach {
            binary: binary.display().to_string(),
            offset: spec.offset,
            source,
        })?;
        tracing::debug!(slot, id, "uprobe attached");
        self.links.insert(id, link);
        Ok(id)
    }

    /// Attaches the empty program at `spec` (a cost baseline; see `cargo xtask bench`).
    ///
    /// # Errors
    /// The kernel refused the attach.
    pub fn install_noop(&mut self, spec: &AttachSpec<'_>) -> Result<(), ProbeError> {
        let noop: &mut UProbe = self.ebpf.program_mut(NOOP).ok_or(ProbeError::Missing("detrix_noop program"))?.try_into().map_err(ProbeError::Program)?;
        let pid = NonZeroU32::new(spec.pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let point = UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(spec.offset.0), cookie: None };
        let link = noop.attach(point, spec.binary, pid).map_err(|source| ProbeError::Attach {
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
        let noop: &mut UProbe = self.ebpf.program_mut(NOOP).ok_or(ProbeError::Missing("detrix_noop program"))?.try_into().map_err(ProbeError::Program)?;
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
        self.program()?.detach(link).map_err(ProbeError::Program)?;
        let mut dead = Plan::empty();
        dead.abi = 0;
        self.plans.set(slot_of(id), dead, 0).map_err(|source| ProbeError::Map { name: "PLANS", source })?;
        Ok(())
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
        let per_cpu = self.counters.get(&slot_of(id), 0).map_err(|source| ProbeError::Map { name: "COUNTERS", source })?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }
}

/// The map slot of a probe id.
#[must_use]
pub fn slot_of(id: u32) -> u32 {
    id & 0xffff
}

/// Splits one ring-buffer record into its header and data. `None` for a record that is too
/// short or from another ABI (never misread).
#[must_use]
pub fn parse_record(bytes: &[u8]) -> Option<(EventHeader, &[u8])> {
    if bytes.len() < EVENT_HEADER_BYTES {
        return None;
    }
    // SAFETY: EventHeader is repr(C) plain integers (every bit pattern valid), and the slice
    // holds at least EVENT_HEADER_BYTES; read_unaligned copes with any alignment.
    let header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<EventHeader>()) };
    if header.abi != PLAN_ABI {
        return None;
    }
    Some((header, &bytes[EVENT_HEADER_BYTES..]))
}
