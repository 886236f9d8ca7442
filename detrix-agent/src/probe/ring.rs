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
