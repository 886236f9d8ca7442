//! The event ABI: what the program writes at a hit and the agent reads — the record
//! ([`WireHeader`], data, [`ValueMeta`]s), the per-value and per-event flags, and the
//! per-CPU ring the record is built in ([`CpuRing`]) with its wakeup policy.
//!
//! Why one file: the program→agent half of the contract, read together whenever a record's
//! layout changes (bump [`crate::PLAN_ABI`]); the agent→program half is `plan.rs`.

use crate::{EVENT_DATA_BYTES, MAX_COPY_BYTES, MAX_VALUES};

/// Per-value flags in [`ValueMeta::flags`].
pub mod value_flags {
    /// All ops of the value ran.
    pub const OK: u16 = 1;
    /// A user-memory read failed (bad pointer, page not present); the data is not valid. The
    /// meta's `len` is then the index of the step that faulted ([`FAULT_STACK`] for the stack
    /// copy), and the value's first 8 bytes the address it could not read (ABI 7).
    pub const READ_FAULT: u16 = 2;
    /// `ValueMeta::len` of a faulted value whose fault was the user stack copy.
    pub const FAULT_STACK: u16 = 0xffff;
    /// The copy hit its bound; the data is a prefix.
    pub const TRUNCATED: u16 = 4;
}

/// Per-event flags in [`EventHeader::flags`].
pub mod event_flags {
    /// At least one value has `READ_FAULT`.
    pub const READ_FAULT: u32 = 1;
    /// At least one value has `TRUNCATED`.
    pub const TRUNCATED: u32 = 2;
}

/// Wakeup policy, set by the agent before load (a global in the object): the program rings the
/// doorbell when a CPU's backlog of unread events grows past this many bytes, once per
/// crossing; the agent's flush timer collects everything else. 0 = ring for every event.
///
/// Why so rarely: a wakeup costs 3–7 µs here (toolchain.md §8; `cargo xtask bench`, "wakeup
/// per event"); even one per 64 events added ~100 ns to every hit, more than the rest of the
/// program. A quarter of the ring leaves room for three more quarters to arrive before the
/// agent, woken, has drained it.
pub const DEFAULT_WAKEUP_BYTES: u64 = (CPU_RING_BYTES / 4) as u64;

/// Length and flags of one captured value inside [`Event::data`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ValueMeta {
    /// Bytes written (for strings: without the NUL).
    pub len: u16,
    /// [`value_flags`].
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<ValueMeta>() == 4);

/// Fixed part of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// [`PLAN_ABI`](crate::PLAN_ABI), so a decoder never misreads a record from another build.
    pub abi: u32,
    /// The uprobe's cookie: plan slot in the low 16 bits, a generation above.
    pub probe_id: u32,
    pub pid: u32,
    pub tid: u32,
    /// `bpf_ktime_get_ns()` at the hit (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Goroutine id for Go targets, else 0.
    pub goid: u64,
    /// [`event_flags`].
    pub flags: u32,
    pub n_values: u32,
    pub values: [ValueMeta; MAX_VALUES],
}
impl Default for EventHeader {
    /// All zero (core has no `Default` for arrays of more than 32).
    fn default() -> Self {
        Self {
            abi: 0,
            probe_id: 0,
            pid: 0,
            tid: 0,
            ktime_ns: 0,
            goid: 0,
            flags: 0,
            n_values: 0,
            values: [ValueMeta { len: 0, flags: 0 }; MAX_VALUES],
        }
    }
}
/// Size of [`EventHeader`], the header as the agent hands it on: the [`WireHeader`] fields and
/// every value's [`ValueMeta`]. (On the wire the metas follow the data; see [`WireHeader`].)
pub const EVENT_HEADER_BYTES: usize = 40 + 4 * MAX_VALUES;
const _: () = assert!(core::mem::size_of::<EventHeader>() == EVENT_HEADER_BYTES);
const _: () = assert!(core::mem::offset_of!(EventHeader, ktime_ns) == 16);
const _: () = assert!(core::mem::offset_of!(EventHeader, goid) == 24);
const _: () = assert!(core::mem::offset_of!(EventHeader, flags) == 32);
const _: () = assert!(core::mem::offset_of!(EventHeader, values) == 40);

/// Fixed part of every record, as the program writes it: the [`EventHeader`] fields without the
/// metas. A record is this header, then the data (`Plan::data_len` bytes, padded to
/// [`meta_offset`]), then `n_values` [`ValueMeta`]s (padded to 8 bytes).
///
/// Why the metas go last and only `n_values` of them: a 1-int event is then 64 bytes with its
/// ring prefix, one cache line, instead of 120 with sixteen metas (296 with [`MAX_VALUES`]) mostly unused; the program
/// writes less per hit and a ring holds twice the events. Its fields repeat [`EventHeader`]'s
/// on purpose (two layouts of one header, `n_values` asserted at the same offset).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WireHeader {
    pub abi: u32,
    pub probe_id: u32,
    pub pid: u32,
    pub tid: u32,
    pub ktime_ns: u64,
    pub goid: u64,
    pub flags: u32,
    pub n_values: u32,
}
/// Size of [`WireHeader`].
pub const WIRE_HEADER_BYTES: usize = 40;
const _: () = assert!(core::mem::size_of::<WireHeader>() == WIRE_HEADER_BYTES);
const _: () = assert!(
    core::mem::offset_of!(WireHeader, n_values) == core::mem::offset_of!(EventHeader, n_values)
);

/// Where the metas start in a record's data area, for a plan with `data_len` bytes of values.
#[must_use]
pub const fn meta_offset(data_len: usize) -> usize {
    (data_len + 7) & !7
}

/// Bytes the metas of `n_values` values take at the end of a record.
#[must_use]
pub const fn metas_bytes(n_values: usize) -> usize {
    (4 * n_values + 7) & !7
}

/// A whole event as built in place in a [`CpuRing`]. `data` has [`MAX_COPY_BYTES`] of slack
/// past [`EVENT_DATA_BYTES`] so the verifier can prove `dst + len` in bounds from the two
/// separate masks, and room there for the metas after a full data area.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub header: WireHeader,
    pub data: [u8; EVENT_DATA_BYTES + MAX_COPY_BYTES],
}
const _: () = assert!(core::mem::offset_of!(Event, data) == WIRE_HEADER_BYTES);
const _: () = assert!(MAX_COPY_BYTES >= metas_bytes(MAX_VALUES));

/// Bytes of record space in each CPU's [`CpuRing`] (a power of two: positions are masked).
pub const CPU_RING_BYTES: usize = 1 << 19;
/// Bytes of a record's prefix in a [`CpuRing`]: the length of the [`Event`] bytes that follow.
pub const RECORD_PREFIX_BYTES: usize = 8;
/// Room past [`CPU_RING_BYTES`] so a record that starts near the end can be written (and read)
/// whole, without wrapping: the largest record is the prefix plus a whole [`Event`]. Sized so
/// the ring is a whole number of pages.
pub const CPU_RING_SLACK: usize = 8192 - 128;
const _: () = assert!(CPU_RING_SLACK >= RECORD_PREFIX_BYTES + core::mem::size_of::<Event>());

/// One CPU's event ring: a single-producer, single-consumer queue in a `BPF_F_MMAPABLE` array
/// map that the agent maps into its address space.
///
/// Why not `BPF_MAP_TYPE_RINGBUF` for every event: its reserve takes a spinlock with
/// interrupts off and copies the record, which measured here (`cargo xtask bench`, a
/// virtualized CPU with Safe-RET) at ~270 ns per event — a third of the whole uprobe. Here the
/// program builds the event **in place** at `head`, publishes it with one store of `head`, and
/// the ring buffer map is kept only as a doorbell that wakes the agent when the backlog passes
/// [`DEFAULT_WAKEUP_BYTES`].
///
/// Protocol. Producer (the program on this CPU; `busy` keeps a second run on the same CPU —
/// possible only on a preemptible kernel — out): if `head + len - tail > CPU_RING_BYTES` the
/// hit is dropped (counted); else it writes the record at `data[head % CPU_RING_BYTES..]`
/// (prefix: `len` as u64, then the [`Event`] bytes), then stores `head` plus the record's
/// rounded length (after every byte of the record: x86 keeps stores in order). Consumer (the
/// agent): reads `head`, reads every record from `tail` to it, then stores `tail`. `head` and
/// `tail` only grow; they live on separate cache lines.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CpuRing {
    /// Bytes ever published (producer-owned).
    pub head: u64,
    /// Nonzero while a program run owns this ring.
    pub busy: u64,
    pub _pad0: [u64; 6],
    /// Bytes ever consumed (consumer-owned).
    pub tail: u64,
    pub _pad1: [u64; 7],
    pub data: [u8; CPU_RING_BYTES + CPU_RING_SLACK],
}
/// Offset of [`CpuRing::data`].
pub const CPU_RING_DATA_OFFSET: usize = 128;
const _: () = assert!(core::mem::offset_of!(CpuRing, head) == 0);
const _: () = assert!(core::mem::offset_of!(CpuRing, tail) == 64);
const _: () = assert!(core::mem::offset_of!(CpuRing, data) == CPU_RING_DATA_OFFSET);
const _: () = assert!(core::mem::size_of::<CpuRing>().is_multiple_of(4096));

/// Length of a record holding `event_bytes` of [`Event`], as it advances `head`: 8-byte aligned.
#[must_use]
pub const fn record_span(event_bytes: usize) -> usize {
    (RECORD_PREFIX_BYTES + event_bytes + 7) & !7
}
