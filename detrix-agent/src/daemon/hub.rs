//! The hub: the one live DAP session and the fan-out of hit batches to it, and of the CPU
//! breaker's switch-offs ([`Hub::switched_off`]), which the session reports to the daemon.
//!
//! At most one session is live (issue #12 point 1): a second connection waits
//! [`SECOND_SESSION_GRACE`] for the live one to end (a daemon reconnecting, a connect-and-close
//! probe) and is otherwise refused; it never cancels the live one — contract Appendix B's
//! "newest wins" is deliberately not kept, because on a root agent it let any peer that got in
//! take the daemon's session over. The live session gets every batch (one `Arc`, no copy) and
//! keeps the hits of its own probes; a session that does not keep up loses batches rather than
//! slowing the reader, and the hits waiting for it are bounded by count ([`MAX_QUEUED_HITS`]), not
//! only by batches (a batch holds up to thousands), so a daemon that stops reading costs bounded
//! memory; what is dropped is counted ([`Hub::dropped_hits`], shown by `/detrix/status`). The
//! session list is the only state here, behind a small lock held for a push, a scan or a
//! retain — never across I/O.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::time::Duration;

use tokio::sync::mpsc;

use crate::dap::{ProbeHit, ProbeId};

/// A batch of hits as the sessions receive it.
pub type HitBatch = Arc<Vec<ProbeHit>>;

/// One live DAP connection, as the hub knows it.
struct Slot {
    generation: u64,
    hits: mpsc::Sender<HitBatch>,
    /// Hits sent and not yet received.
    queued: Arc<AtomicUsize>,
    /// Probes the CPU breaker switched off, with the reason (a handful over a session's life,
    /// at most one per probe: unbounded costs nothing, and none is ever dropped).
    switched_off: mpsc::UnboundedSender<(ProbeId, String)>,
}

/// A session's end of its hit queue.
pub struct HitQueue {
    rx: mpsc::Receiver<HitBatch>,
    queued: Arc<AtomicUsize>,
}

impl HitQueue {
    /// The next batch; `None` once the hub dropped the session.
    pub async fn recv(&mut self) -> Option<HitBatch> {
        let b = self.rx.recv().await?;
        self.queued.fetch_sub(b.len(), Ordering::Relaxed);
        Some(b)
    }
}

/// Routes hits to the live session (at most one).
#[derive(Default)]
pub struct Hub {
    slots: Mutex<Vec<Slot>>,
    next_generation: AtomicU64,
    /// Sessions that have ended, however (for the actor to notice a lost daemon).
    ended: AtomicU64,
    /// Hits a session was too slow to take.
    dropped: AtomicU64,
}

/// How many hit batches may wait for a slow session before newer ones are dropped.
const SESSION_HIT_QUEUE: usize = 1024;

/// How many hits may wait for a slow session (a few KiB each at most: values as text, a
/// stack) before newer batches are dropped: tens of MiB, whatever the daemon does.
pub const MAX_QUEUED_HITS: usize = 16_384;

/// How long a second DAP connection waits for the live session to end before it is refused.
pub const SECOND_SESSION_GRACE: Duration = Duration::from_secs(2);

impl Hub {
    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Becomes the one live session — its guard (carrying its number) and its hits — or
    /// `None` while another is live.
    pub fn join(self: &Arc<Self>) -> Option<(SlotGuard, HitQueue)> {
        let mut slots = self.slots();
        if !slots.is_empty() {
            return None;
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (hits, rx) = mpsc::channel(SESSION_HIT_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let (switched_off, switched_off_rx) = mpsc::unbounded_channel();
        slots.push(Slot {
            generation,
            hits,
            queued: queued.clone(),
            switched_off,
        });
        drop(slots);
        Some((
            SlotGuard {
                hub: self.clone(),
                generation,
                switched_off: switched_off_rx,
            },
            HitQueue { rx, queued },
        ))
    }

    /// [`Hub::join`], waiting up to [`SECOND_SESSION_GRACE`] for a live session to end.
    pub async fn join_when_free(self: &Arc<Self>) -> Option<(SlotGuard, HitQueue)> {
        let deadline = tokio::time::Instant::now() + SECOND_SESSION_GRACE;
        loop {
            if let Some(j) = self.join() {
                return Some(j);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Hands `batch` to every live session.
    pub fn publish(&self, batch: &HitBatch) {
        for s in self.slots().iter() {
            let n = batch.len();
            let full = s.queued.load(Ordering::Relaxed) + n > MAX_QUEUED_HITS;
            if full || s.hits.try_send(batch.clone()).is_err() {
                let before = self.dropped.fetch_add(n as u64, Ordering::Relaxed);
                if before == 0 {
                    tracing::warn!(session = s.generation, hits = n, "the daemon is not reading its DAP session fast enough; hits are dropped (counted in /detrix/status `dropped_hits`)");
                }
                tracing::debug!(
                    session = s.generation,
                    hits = batch.len(),
                    "session is not keeping up; hit batch dropped"
                );
            } else {
                s.queued.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Tells every live session that the CPU breaker switched these probes off (each session
    /// reports its own and ignores the rest).
    pub fn switched_off(&self, off: &[(ProbeId, String)]) {
        for s in self.slots().iter() {
            for (probe, why) in off {
                let _ = s.switched_off.send((*probe, why.clone()));
            }
        }
    }

    /// How many sessions are live.
    pub fn live(&self) -> usize {
        self.slots().len()
    }

    /// How many sessions have ended since the agent started.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    /// Hits dropped because a session was not keeping up ([`MAX_QUEUED_HITS`]).
    pub fn dropped_hits(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Removes a session's slot when the session ends, however it ends; carries the session's end
/// of [`Hub::switched_off`].
pub struct SlotGuard {
    hub: Arc<Hub>,
    pub generation: u64,
    pub switched_off: mpsc::UnboundedReceiver<(ProbeId, String)>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.hub.slots().retain(|s| s.generation != self.generation);
        self.hub.ended.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Hit, LogpointId};

    fn batch(n: usize) -> HitBatch {
        let hit = |i: usize| ProbeHit {
            probe: ProbeId { session: 0, n: 1 },
            hit: Hit {
                logpoint: LogpointId(1),
                pid: 1,
                tid: 1,
                goid: 0,
                ktime_ns: i as u64,
                values: Vec::new(),
                stack: Vec::new(),
                locals: Vec::new(),
            },
        };
        Arc::new((0..n).map(hit).collect())
    }

    #[tokio::test]
    async fn a_session_that_does_not_read_holds_at_most_max_queued_hits_and_the_rest_are_counted() {
        let hub = Arc::new(Hub::default());
        let (guard, mut queue) = hub.join().expect("first session joins");
        // 4096 hits a batch, as the reader's largest: 4 fit, the other 6 are dropped.
        for _ in 0..10 {
            hub.publish(&batch(4096));
        }
        assert_eq!(hub.dropped_hits(), 6 * 4096);
        // Reading frees room again.
        assert_eq!(queue.recv().await.map(|b| b.len()), Some(4096));
        hub.publish(&batch(4096));
        assert_eq!(hub.dropped_hits(), 6 * 4096);
        hub.publish(&batch(1));
        assert_eq!(hub.dropped_hits(), 6 * 4096 + 1);
        assert_eq!((hub.live(), hub.ended()), (1, 0));
        drop(guard);
        assert_eq!((hub.live(), hub.ended()), (0, 1));
    }
}
