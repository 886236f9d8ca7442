//! The exact per-probe counters the program keeps ([`Counters`]).
//!
//! Why a file of their own: they are neither the plan the agent writes nor the record the
//! program writes, but the third thing the two share, read by the agent at any time.

/// Exact per-probe counters, one copy per CPU (summed by the agent).
///
/// Invariant: `hits == emitted + dropped_ring_full + rate_limited + condition_false + no_plan
/// + other_process`. `read_faults` counts events (emitted ones) that carry a faulted value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub hits: u64,
    pub emitted: u64,
    /// Hits not emitted because this CPU's [`CpuRing`](crate::CpuRing) had no room for the event
    /// (or, on a preemptible kernel only, was being written by a run this one preempted).
    pub dropped_ring_full: u64,
    pub read_faults: u64,
    pub rate_limited: u64,
    pub condition_false: u64,
    /// Hits on a slot without a valid plan (a race with detach); never emitted.
    pub no_plan: u64,
    /// Hits from another process mapping the same binary; filtered in the kernel.
    pub other_process: u64,
    /// Nanoseconds spent in the program for this probe, estimated: one hit in eight (the first
    /// included) is timed and counts eight times (a clock read is a helper call; see the program).
    pub bpf_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 72);

impl Counters {
    /// Adds `other` field by field (summing CPUs, or a logpoint's copies).
    pub fn add(&mut self, other: &Counters) {
        self.hits += other.hits;
        self.emitted += other.emitted;
        self.dropped_ring_full += other.dropped_ring_full;
        self.read_faults += other.read_faults;
        self.rate_limited += other.rate_limited;
        self.condition_false += other.condition_false;
        self.no_plan += other.no_plan;
        self.other_process += other.other_process;
        self.bpf_ns += other.bpf_ns;
    }
}
