//! The reading side of the kernel: the per-CPU event rings the program writes and the
//! doorbell that wakes the reader ([`EventRings`]), and the one parser of a record's wire
//! header ([`parse_record`]).
//!
//! Apart from [`super::Probes`] because it is used apart: the ring goes to the hit reader's
//! thread at load, the probes stay with whoever installs and removes.

use aya::maps::{MapData, RingBuf};
use detrix_common::{
    metas_bytes, record_span, CpuRing, Event, EventHeader, ValueMeta, WireHeader, CPU_RING_BYTES,
    CPU_RING_DATA_OFFSET, MAX_VALUES, PLAN_ABI, RECORD_PREFIX_BYTES, WIRE_HEADER_BYTES,
};

use super::ProbeError;

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
    pub(super) fn map(
        doorbell: RingBuf<MapData>,
        rings: MapData,
        ncpus: usize,
    ) -> Result<Self, ProbeError> {
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
    /// data, for [`parse_record`]) in time order across CPUs, and frees their space.
    ///
    /// Only records that started before this call are handed over; the newer ones wait for the
    /// next call. Why: each CPU's ring is read at a slightly different instant, and a thread
    /// that moved from CPU a to CPU b may have its record on b published when a's was read
    /// and its earlier one on a published only after. A record on b that started before the
    /// clock read here cannot be: the same thread published its earlier record on a before it
    /// started the one on b, so before every ring was read. So the records handed over, and
    /// those handed over by every later call, keep each thread's order. The order within the
    /// call is [`merge`]'s.
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "the mapping is page-aligned, CpuRing a multiple of 4096 bytes and every record \
                  starts 8-aligned (`record_span`): the u64 reads are aligned"
    )]
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> Drained {
        use std::sync::atomic::{AtomicU64, Ordering};
        // The doorbell's records carry nothing: reading them re-arms the wakeup.
        while self.doorbell.next().is_some() {}
        // Read before any ring's head: see above.
        let watermark = monotonic_ns();
        let base = self.base.as_ptr();
        let ring_at = |cpu: usize| {
            // SAFETY: callers pass cpu < ncpus, so the ring lies inside the mapping.
            unsafe { base.add(cpu * std::mem::size_of::<CpuRing>()) }
        };
        let word = |cpu: usize, offset: usize| {
            // SAFETY: `head` and `tail` are aligned u64s of a ring inside the mapping.
            unsafe { AtomicU64::from_ptr(ring_at(cpu).add(offset).cast::<u64>()) }
        };
        // Per CPU: [tail, head) of published records, read once.
        let mut spans: Vec<(u64, u64)> = (0..self.ncpus)
            .map(|cpu| {
                let head = word(cpu, std::mem::offset_of!(CpuRing, head)).load(Ordering::Acquire);
                let tail = word(cpu, std::mem::offset_of!(CpuRing, tail)).load(Ordering::Relaxed);
                (tail, head)
            })
            .collect();
        // The record at a CPU's tail: where its event bytes start and how long they are.
        // `None` when the CPU has none left or its next one is corrupt (then its backlog is
        // given up rather than misread: cannot happen unless the protocol is broken).
        let record = |cpu: usize, spans: &mut [(u64, u64)]| -> Option<(*const u8, usize)> {
            let (tail, head) = spans[cpu];
            if tail >= head {
                return None;
            }
            let pos = (tail as usize) & (CPU_RING_BYTES - 1);
            // SAFETY: the program only writes bytes between `head` and `tail +
            // CPU_RING_BYTES`, so records between `tail` and `head` are stable until `tail`
            // moves past them; a record never wraps (`record_span`).
            unsafe {
                let at = ring_at(cpu).add(CPU_RING_DATA_OFFSET + pos);
                let len = std::ptr::read_volatile(at.cast::<u64>()) as usize;
                if !(WIRE_HEADER_BYTES..=std::mem::size_of::<Event>()).contains(&len) {
                    tracing::error!(
                        cpu,
                        len,
                        "corrupt event ring record; skipping this CPU's backlog"
                    );
                    spans[cpu].0 = head;
                    return None;
                }
                Some((at.add(RECORD_PREFIX_BYTES), len))
            }
        };
        let ktime = |at: *const u8| {
            // SAFETY: `at` starts a record of at least WIRE_HEADER_BYTES (checked by `record`).
            unsafe {
                std::ptr::read_unaligned(
                    at.add(std::mem::offset_of!(WireHeader, ktime_ns))
                        .cast::<u64>(),
                )
            }
        };
        let read_from: Vec<u64> = spans.iter().map(|&(tail, _)| tail).collect();
        let drained = merge(
            &mut spans,
            self.ncpus,
            max,
            watermark,
            |spans, cpu| record(cpu, spans).map(|(at, _)| ktime(at)),
            |spans, cpu| {
                if let Some((at, len)) = record(cpu, spans) {
                    // SAFETY: as in `record`.
                    f(unsafe { std::slice::from_raw_parts(at, len) });
                    spans[cpu].0 += record_span(len) as u64;
                }
            },
        );
        for (cpu, (&(tail, _), &was)) in spans.iter().zip(&read_from).enumerate() {
            if tail != was {
                word(cpu, std::mem::offset_of!(CpuRing, tail)).store(tail, Ordering::Release);
            }
        }
        drained
    }
}

/// What one [`EventRings::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Records handed over.
    pub handed: usize,
    /// Published records left for a later call: past the cap, or newer than the call's clock.
    pub left: bool,
}

/// Takes records from `n` in-order sources oldest first, at most `max`, never one that started
/// at or after `watermark`. `peek(state, i)` is the start time of source `i`'s next record
/// (`None`: none), `take(state, i)` consumes it. A k-way merge: the batch is a prefix, in time
/// order, of what the sources hold below the watermark, so a cap never leaves an older record
/// behind a newer one handed over.
pub(crate) fn merge<S: ?Sized>(
    state: &mut S,
    n: usize,
    max: usize,
    watermark: u64,
    mut peek: impl FnMut(&mut S, usize) -> Option<u64>,
    mut take: impl FnMut(&mut S, usize),
) -> Drained {
    use std::cmp::Reverse;
    let mut out = Drained::default();
    let mut heads = std::collections::BinaryHeap::with_capacity(n);
    // Queues source `i`'s next record if it is below the watermark; says if one is held back.
    let mut offer =
        |state: &mut S, i: usize, heads: &mut std::collections::BinaryHeap<_>| match peek(state, i)
        {
            Some(t) if t < watermark => {
                heads.push(Reverse((t, i)));
                false
            }
            Some(_) => true,
            None => false,
        };
    for i in 0..n {
        out.left |= offer(state, i, &mut heads);
    }
    while let Some(Reverse((_, i))) = heads.pop() {
        if out.handed >= max {
            out.left = true;
            break;
        }
        take(state, i);
        out.handed += 1;
        out.left |= offer(state, i, &mut heads);
    }
    out
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`, which stamps records.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the timespec passed; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
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

#[cfg(test)]
mod tests {
    use super::{merge, Drained};
    use std::collections::VecDeque;

    /// Runs [`merge`] over in-memory sources of start times; returns (source, time) taken.
    fn run(
        sources: &mut [VecDeque<u64>],
        max: usize,
        watermark: u64,
    ) -> (Vec<(usize, u64)>, Drained) {
        let mut taken = Vec::new();
        let n = sources.len();
        let d = merge(
            sources,
            n,
            max,
            watermark,
            |s, i| s[i].front().copied(),
            |s, i| taken.push((i, s[i].pop_front().unwrap_or(u64::MAX))),
        );
        (taken, d)
    }

    #[test]
    fn records_of_every_cpu_come_out_in_time_order() {
        let mut s = vec![
            VecDeque::from([1, 4, 6]),
            VecDeque::from([2, 3, 7]),
            VecDeque::new(),
        ];
        let (taken, d) = run(&mut s, 100, 1000);
        assert_eq!(taken, [(0, 1), (1, 2), (1, 3), (0, 4), (0, 6), (1, 7)]);
        assert_eq!(
            d,
            Drained {
                handed: 6,
                left: false
            }
        );
    }

    #[test]
    fn records_from_the_watermark_on_wait_for_the_next_drain() {
        let mut s = vec![VecDeque::from([1, 4, 6]), VecDeque::from([2, 3, 7])];
        let (taken, d) = run(&mut s, 100, 5);
        assert_eq!(taken, [(0, 1), (1, 2), (1, 3), (0, 4)]);
        assert_eq!(
            d,
            Drained {
                handed: 4,
                left: true
            }
        );
        assert_eq!(s, [VecDeque::from([6]), VecDeque::from([7])]);
    }

    #[test]
    fn a_capped_drain_leaves_no_older_record_behind_a_newer_one() {
        // Per CPU in bounded batches (the old drain) would hand over 1, 4, 6 of CPU 0 first,
        // and 2 and 3 of CPU 1 only in the next batch: out of order across batches.
        let mut s = vec![VecDeque::from([1, 4, 6]), VecDeque::from([2, 3, 7])];
        let (first, d) = run(&mut s, 3, 1000);
        assert_eq!(first, [(0, 1), (1, 2), (1, 3)]);
        assert_eq!(
            d,
            Drained {
                handed: 3,
                left: true
            }
        );
        let (second, d) = run(&mut s, 3, 1000);
        assert_eq!(second, [(0, 4), (0, 6), (1, 7)]);
        assert_eq!(
            d,
            Drained {
                handed: 3,
                left: false
            }
        );
    }

    #[test]
    fn a_thread_that_moved_cpus_keeps_its_order_across_drains() {
        // A thread's hit at 10 on CPU 0 is published only after CPU 0 was read; its next hit,
        // at 20 on CPU 1, is published before CPU 1 is read. The drain's clock (15) was read
        // before both rings, so 20 waits, and the next drain hands over 10 before 20.
        let mut s = vec![VecDeque::new(), VecDeque::from([20])];
        let (taken, d) = run(&mut s, 100, 15);
        assert!(taken.is_empty(), "{taken:?}");
        assert_eq!(
            d,
            Drained {
                handed: 0,
                left: true
            }
        );
        s[0].push_back(10);
        let (taken, d) = run(&mut s, 100, 30);
        assert_eq!(taken, [(0, 10), (1, 20)]);
        assert_eq!(
            d,
            Drained {
                handed: 2,
                left: false
            }
        );
    }
}
