//! The reading half of the engine: drains the event ring, decodes each record with the
//! installed probe's decoders into a [`Hit`] (values as decoded trees and as the debugger
//! shows them, locals, the stack symbolized by [`crate::debuginfo::Symbolizer`]).
//!
//! Why apart: a front end waits for hits while it handles requests, so the ring and the
//! decoders are owned here and the table of installed plans is shared with the [`Engine`].
//! Under `serve` the host's one ring is drained by [`super::kernel`], and a target's reader
//! receives its own hits from there instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::addr::RuntimeAddr;
use crate::debuginfo::Symbolizer;
use crate::decode::{DebuggerText, Node};
use crate::plan;
use crate::probe;

use super::{EngineError, Frame, Hit, LogpointId};

/// What the reader needs to decode one probe's records.
#[derive(Debug, Clone)]
pub(super) struct ProbeDecoder {
    /// The engine that installed the probe (one per target on a shared [`super::Kernel`]).
    pub(super) owner: u64,
    /// Symbolizes the owner's stacks.
    pub(super) symbolizer: Arc<Symbolizer>,
    pub(super) logpoint: LogpointId,
    pub(super) values: Vec<plan::ValueDecoder>,
    /// Locals that could not be planned, shown as errors in every hit.
    pub(super) local_errors: Vec<(String, String)>,
    /// Shown values that cannot be captured at this copy, put in place in every hit.
    pub(super) value_errors: Vec<plan::ValueError>,
}

pub(super) type DecoderTable = Arc<Mutex<HashMap<u32, ProbeDecoder>>>;

/// Reads and decodes hits.
pub struct HitReader {
    pub(super) source: Source,
}

/// Where a reader's hits come from.
pub(super) enum Source {
    /// Its own program's rings (`attach`, `capture`).
    Ring {
        /// Boxed: the rings and interval are large next to a channel.
        ring: Box<AsyncFd<probe::EventRings>>,
        decoders: DecoderTable,
        flush: tokio::time::Interval,
    },
    /// The host's reader, which routes each target its hits (`serve`).
    Routed {
        rx: mpsc::UnboundedReceiver<Vec<Hit>>,
        kernel: Arc<super::Kernel>,
        owner: u64,
    },
}

impl Drop for HitReader {
    fn drop(&mut self) {
        if let Source::Routed { kernel, owner, .. } = &self.source {
            kernel.unroute(*owner);
        }
    }
}

impl std::fmt::Debug for HitReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HitReader").finish_non_exhaustive()
    }
}

/// Most hits decoded per batch.
const MAX_BATCH: usize = 4096;

/// How often pending events are collected when no wakeup came (the batching latency bound).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

impl HitReader {
    /// Waits for a wakeup or the flush interval and returns every pending hit (possibly none).
    ///
    /// # Errors
    /// The ring's fd failed.
    pub async fn next_batch(&mut self) -> Result<Vec<Hit>, EngineError> {
        match &mut self.source {
            Source::Ring {
                ring,
                decoders,
                flush,
            } => tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.map_err(EngineError::Io)?;
                    let hits = hits_only(decode_all(guard.get_inner_mut(), decoders).0);
                    guard.clear_ready();
                    Ok(hits)
                }
                // Also what a wakeup's drain held back (newer than its clock read) comes here.
                _ = flush.tick() => Ok(hits_only(decode_all(ring.get_mut(), decoders).0)),
            },
            Source::Routed { rx, .. } => rx.recv().await.ok_or_else(|| {
                EngineError::Io(std::io::Error::other("the host's event reader stopped"))
            }),
        }
    }

    /// Everything pending now, without waiting. Meant for after a detach, when nothing
    /// refills the ring; while probes fire it returns once the ring is momentarily empty.
    pub fn drain_now(&mut self) -> Vec<Hit> {
        let mut out = Vec::new();
        // An empty drain that held records back (started after its clock read) is retried
        // once: the next drain's clock is later than they started.
        let mut retried = false;
        loop {
            let (batch, left) = match &mut self.source {
                Source::Ring { ring, decoders, .. } => {
                    let (hits, drained) = decode_all(ring.get_mut(), decoders);
                    (hits_only(hits), drained.left)
                }
                Source::Routed { rx, .. } => (rx.try_recv().unwrap_or_default(), false),
            };
            if batch.is_empty() {
                if !left || retried {
                    return out;
                }
                retried = true;
            }
            out.extend(batch);
        }
    }
}

fn hits_only(v: Vec<(u64, Hit)>) -> Vec<Hit> {
    v.into_iter().map(|(_, h)| h).collect()
}

/// Drains at most a batch of records and decodes each with its probe's decoder, naming the
/// owner of each hit; with what the drain left in the ring.
pub(super) fn decode_all(
    ring: &mut probe::EventRings,
    decoders: &DecoderTable,
) -> (Vec<(u64, Hit)>, probe::Drained) {
    let table = decoders.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = Vec::new();
    // Bounded: a hot probe refills the ring as fast as it is read, and an unbounded drain would
    // never return to the caller's loop (signals, the CPU breaker, DAP requests).
    let drained = ring.drain(MAX_BATCH, |item| {
        let Some((h, data)) = probe::parse_record(item) else {
            return;
        };
        // A record for a probe retired long ago is dropped here: its logpoint is gone.
        let Some(info) = table.get(&h.probe_id) else {
            return;
        };
        let sym = &*info.symbolizer;
        let decoded = crate::decode::decode(&info.values, &h, data);
        let mut hit = Hit {
            logpoint: info.logpoint,
            pid: h.pid,
            tid: h.tid,
            goid: h.goid,
            ktime_ns: h.ktime_ns,
            values: Vec::new(),
            stack: Vec::new(),
            locals: Vec::new(),
        };
        for (d, n) in info.values.iter().zip(decoded) {
            match d.role {
                plan::Role::Shown => hit.values.push((d.expr.clone(), n)),
                plan::Role::Hidden | plan::Role::UnwindStack(_) => {}
                plan::Role::Local => hit.locals.push((d.expr.clone(), n)),
                plan::Role::Stack => hit.stack = stack_frames(&info.values, d, &h, data, sym),
                plan::Role::UnwindRegs => hit.stack = unwind_frames(&info.values, &h, data, sym),
            }
        }
        // In ascending position: each insert lands where the value was asked.
        for e in &info.value_errors {
            let at = e.index.min(hit.values.len());
            let debugger = match &e.debugger {
                plan::Value::Error(t) => DebuggerText::Error(t.clone()),
                plan::Value::Text(t) => DebuggerText::Text(t.clone()),
                other => DebuggerText::Text(other.to_string()),
            };
            let node = Node::Unavailable {
                message: e.message.clone(),
                debugger,
            };
            hit.values.insert(at, (e.expr.clone(), node));
        }
        for (name, why) in &info.local_errors {
            hit.locals.push((name.clone(), Node::Error(why.clone())));
        }
        out.push((info.owner, hit));
    });
    // The drain merged the CPUs' rings in time order; a run that was preempted before it took
    // its CPU's ring (and so published after a later run there) is put back in order.
    out.sort_by_key(|(_, h)| h.ktime_ns);
    (out, drained)
}

/// Unwinds the captured registers and stack slices with the binary's CFI, innermost first.
fn unwind_frames(
    all: &[plan::ValueDecoder],
    h: &detrix_common::EventHeader,
    data: &[u8],
    sym: &Symbolizer,
) -> Vec<Frame> {
    let u64_at = |b: &[u8], o: usize| le_u64_at(b, o);
    let Some(ri) = all.iter().position(|d| d.role == plan::Role::UnwindRegs) else {
        return Vec::new();
    };
    let regs = plan::value_bytes(all, ri, h, data);
    let (Some(pc), Some(sp0), Some(bp)) = (u64_at(regs, 0), u64_at(regs, 8), u64_at(regs, 16))
    else {
        return Vec::new();
    };
    let mut chunks: Vec<(u64, &[u8])> = Vec::new();
    for (i, d) in all.iter().enumerate() {
        if let plan::Role::UnwindStack(k) = d.role {
            let b = plan::value_bytes(all, i, h, data);
            let start = sp0.checked_add((usize::from(k) * plan::UNWIND_CHUNK) as u64);
            if let (false, Some(start)) = (b.is_empty(), start) {
                chunks.push((start, b));
            }
        }
    }
    let read = |addr: u64| read_chunks(&chunks, addr);
    let pc = RuntimeAddr(pc);
    sym.unwind(crate::debuginfo::UnwindRegs { pc, sp: sp0, bp }, &read)
}

/// The little-endian u64 at byte `o` of `b`, if all eight bytes are there (any `o`: the
/// unwinder asks for addresses the stack copy may not hold, far past it included).
fn le_u64_at(b: &[u8], o: usize) -> Option<u64> {
    b.get(o..o.checked_add(8)?)
        .map(|x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])))
}

/// The u64 at runtime address `addr` in the stack copies `chunks` (start address, bytes).
fn read_chunks(chunks: &[(u64, &[u8])], addr: u64) -> Option<u64> {
    chunks.iter().find_map(|(start, b)| {
        let off = usize::try_from(addr.checked_sub(*start)?).ok()?;
        le_u64_at(b, off)
    })
}

/// The return addresses a stack value holds, symbolized.
fn stack_frames(
    all: &[plan::ValueDecoder],
    d: &plan::ValueDecoder,
    h: &detrix_common::EventHeader,
    data: &[u8],
    sym: &Symbolizer,
) -> Vec<Frame> {
    let idx = all.iter().position(|x| std::ptr::eq(x, d)).unwrap_or(0);
    sym.return_addresses(
        plan::value_bytes(all, idx, h, data)
            .chunks_exact(8)
            .map(|c| RuntimeAddr(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))),
    )
}

#[cfg(test)]
mod tests {
    use super::{le_u64_at, read_chunks};

    /// `cargo xtask fuzz decode` found the unwinder's reads overflowing `off + 8` on an
    /// address just below 2^64 past the stack copy (an add-overflow panic with debug
    /// assertions, a wrapped range otherwise): such an address is simply not in the copy.
    #[test]
    fn a_read_far_past_the_stack_copy_is_none_not_an_overflow() {
        let bytes: Vec<u8> = (0u8..24).collect();
        let chunks = [(0x7ffe_0000_u64, bytes.as_slice())];
        assert_eq!(
            read_chunks(&chunks, 0x7ffe_0008),
            Some(u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]))
        );
        assert_eq!(read_chunks(&chunks, 0x7ffe_0011), None, "only 7 bytes left");
        assert_eq!(read_chunks(&chunks, 0x7ffd_fff8), None, "below the copy");
        assert_eq!(read_chunks(&chunks, u64::MAX), None, "far past it");
        assert_eq!(read_chunks(&chunks, 0x7ffe_0000 + u64::MAX / 2), None);
        assert_eq!(le_u64_at(&bytes, usize::MAX - 3), None);
        assert_eq!(
            le_u64_at(&bytes, 16),
            Some(u64::from_le_bytes([16, 17, 18, 19, 20, 21, 22, 23]))
        );
    }
}
