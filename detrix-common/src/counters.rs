//! The exact per-probe counters the program keeps ([`Counters`]) and the one list of their
//! names and meanings ([`Counters::FIELDS`]) that `/metrics`, `capture` and `/detrix/status`
//! show.
//!
//! Why the names live beside the layout: a counter added to the struct and not to the list
//! would be counted and never shown; here the two are read together.

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
    /// Passes of a probe on a conditional branch into the line's block that went the other
    /// way (`detrix_common::guard`): not hits — the line did not run — but each still a trap,
    /// which the CPU breaker counts as cost.
    pub other_way: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 80);

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
        self.other_way += other.other_way;
    }

    /// What was counted since `earlier` (a reading of the same counters), field by field;
    /// never below zero.
    #[must_use]
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            hits: self.hits.saturating_sub(earlier.hits),
            emitted: self.emitted.saturating_sub(earlier.emitted),
            dropped_ring_full: self
                .dropped_ring_full
                .saturating_sub(earlier.dropped_ring_full),
            read_faults: self.read_faults.saturating_sub(earlier.read_faults),
            rate_limited: self.rate_limited.saturating_sub(earlier.rate_limited),
            condition_false: self.condition_false.saturating_sub(earlier.condition_false),
            no_plan: self.no_plan.saturating_sub(earlier.no_plan),
            other_process: self.other_process.saturating_sub(earlier.other_process),
            bpf_ns: self.bpf_ns.saturating_sub(earlier.bpf_ns),
            other_way: self.other_way.saturating_sub(earlier.other_way),
        }
    }

    /// Every field, in the order they are shown: the one list of counter names and what they
    /// count, for `/metrics`, `capture`'s summary line and `/detrix/status`.
    pub const FIELDS: [CounterField; 10] = [
        CounterField::new("hits", "hits_total", "Times the probe's uprobe fired."),
        CounterField::new("emitted", "emitted_total", "Events written to the ring."),
        CounterField::new(
            "dropped_ring_full",
            "dropped_ring_full_total",
            "Hits dropped because the CPU's ring was full.",
        ),
        CounterField::new(
            "rate_limited",
            "rate_limited_total",
            "Hits dropped by the per-probe rate limit.",
        ),
        CounterField::new(
            "condition_false",
            "condition_false_total",
            "Hits whose condition was false.",
        ),
        CounterField::new(
            "read_faults",
            "read_faults_total",
            "Emitted events with a value that could not be read.",
        ),
        CounterField::new(
            "no_plan",
            "no_plan_total",
            "Hits racing a detach (no plan in the slot).",
        ),
        CounterField::new(
            "other_process",
            "other_process_total",
            "Hits from another process mapping the binary, filtered in the kernel.",
        ),
        CounterField::new(
            "bpf_ns",
            "bpf_nanoseconds_total",
            "Nanoseconds spent in the eBPF program.",
        ),
        CounterField::new(
            "other_way",
            "other_way_total",
            "Passes of a probe on a conditional branch that went the other way (not hits; each a trap).",
        ),
    ];

    /// The values, in the order of [`Counters::FIELDS`].
    #[must_use]
    pub const fn values(&self) -> [u64; 10] {
        [
            self.hits,
            self.emitted,
            self.dropped_ring_full,
            self.rate_limited,
            self.condition_false,
            self.read_faults,
            self.no_plan,
            self.other_process,
            self.bpf_ns,
            self.other_way,
        ]
    }

    /// Each field with its value, in the order of [`Counters::FIELDS`].
    pub fn named(&self) -> impl Iterator<Item = (&'static CounterField, u64)> {
        Self::FIELDS.iter().zip(self.values())
    }
}

/// One field of [`Counters`] as it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterField {
    /// The field's name, as `capture` and `/detrix/status` print it.
    pub name: &'static str,
    /// Its Prometheus metric name, after `detrix_probe_` / `detrix_target_`.
    pub metric: &'static str,
    /// What it counts (the metric's help).
    pub help: &'static str,
}

impl CounterField {
    const fn new(name: &'static str, metric: &'static str, help: &'static str) -> Self {
        Self { name, metric, help }
    }
}
