//! Types shared, byte for byte, by the eBPF program (`detrix-ebpf`) and the agent.
//!
//! Why one crate: a layout written twice drifts; here each type exists once, is `#[repr(C)]`
//! with explicit, zeroed padding, and carries compile-time size/offset assertions that both
//! sides compile. Only integers and fixed arrays cross the boundary: no `bool`, `usize`,
//! `Option` or Rust enums (their layout is not a contract).
//!
//! A **plan** is data, not code: a bounded list of [`PlanOp`]s that the one prebuilt eBPF program
//! interprets at every hit of the uprobe whose BPF cookie names the plan's slot. Each op
//! works on one 64-bit accumulator; `EMIT_*` ops copy bytes into the event's data area at a
//! fixed offset chosen by the agent, so nothing is read from the target later (it would be
//! stale or gone).
//!
//! The layouts by direction, each in its own file and all re-exported here (a caller names
//! `detrix_common::Plan` wherever it lives): `plan` (agent → program: ops, condition, plan),
//! `event` (program → agent: records, flags, per-CPU rings), `counters` (what the program
//! counts, and their names), `stash` (entry values), [`alu`] (the DWARF arithmetic both run), [`guard`] (a probe on a
//! conditional branch: the condition in its cookie).
#![no_std]

/// Version of every layout in this crate. Bump on any change; the agent checks that the
/// embedded eBPF object was built with the same number.
pub const PLAN_ABI: u32 = 9;

/// Maximum number of probes (plan slots) one loaded program serves.
pub const MAX_PROBES: u32 = 512;
/// Maximum ops in one plan. The eBPF interpreter loop is bounded by this.
pub const MAX_OPS: usize = 128;
/// Maximum captured values per event: 64, so a breakpoint-mode snapshot holds every local of
/// a large function with the stack beside it (ABI 9; 16 before). At most 64: the program keeps
/// one bit per value in a `u64` (faulted, done), and only `n_values` metas go into a record,
/// so a small plan's events do not grow.
pub const MAX_VALUES: usize = 64;
/// Bytes of captured data per event (all values together).
pub const EVENT_DATA_BYTES: usize = 4096;
/// Largest single copy (one `EMIT_MEM` or `EMIT_STR`).
pub const MAX_COPY_BYTES: usize = 2048;
/// Number of registers in x86-64 `struct pt_regs`, the uprobe context.
pub const PT_REGS_COUNT: usize = 21;

mod counters;
mod event;
mod plan;
mod stash;

pub mod alu;
pub mod guard;

pub use counters::*;
pub use event::*;
pub use plan::*;
pub use stash::*;

/// One probe slot as the program sees it: this CPU's counters and a copy of the plan, in one
/// per-CPU map value (ABI 7).
///
/// Why together and per CPU: the hot path then does one map lookup for both (the plan was a
/// second, shared map), and the counters stay exact without atomics. The agent writes the same
/// plan into every CPU's copy and sums the counters over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub counters: Counters,
    pub plan: Plan,
}
const _: () = assert!(core::mem::offset_of!(Slot, plan) == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all four): repr(C), integers and arrays of integers only, no implicit padding
    // (asserted beside each type), every bit pattern valid.
    // SAFETY: see above.
    unsafe impl aya::Pod for super::PlanOp {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Plan {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Slot {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RateState {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::StashKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::StashRegs {}
}
