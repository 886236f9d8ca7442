//! The hub: the one live DAP session and the fan-out of hit batches to it.
//!
//! At most one session is live (issue #12 point 1): a second connection waits
//! [`SECOND_SESSION_GRACE`] for the live one to end (a daemon reconnecting, a connect-and-close
//! probe) and is otherwise refused; it never cancels the live one — contract Appendix B's
//! "newest wins" is deliberately not kept, because on a root agent it let any peer that got in
//! take the daemon's session over. The live session gets every batch (one `Arc`, no copy) and
//! keeps the hits of its own probes; a session that does not keep up loses batches rather than
//! slowing the reader. The session list is the only state here, behind a small lock held for a push,
//! a scan or a retain — never across I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::time::Duration;

use tokio::sync::mpsc;

use crate::dap::ProbeHit;

/// A batch of hits as the sessions receive it.
pub type HitBatch = Arc<Vec<ProbeHit>>;

/// One live DAP connection, as the hub knows it.
struct Slot {
    generation: u64,
    hits: mpsc::Sender<HitBatch>,
}

/// Routes hits to the live session (at most one).
#[derive(Default)]
pub struct Hub {
    slots: Mutex<Vec<Slot>>,
    next_generation: AtomicU64,
}

/// How many hit batches may wait for a slow session before newer ones are dropped.
const SESSION_HIT_QUEUE: usize = 1024;

/// How long a second DAP connection waits for the live session to end before it is refused.
pub const SECOND_SESSION_GRACE: Duration = Duration::from_secs(2);

impl Hub {
    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Becomes the one live session — its guard (carrying its number) and its hits — or
    /// `None` while another is live.
    pub fn join(self: &Arc<Self>) -> Option<(SlotGuard, mpsc::Receiver<HitBatch>)> {
        let mut slots = self.slots();
        if !slots.is_empty() {
            return None;
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (hits, hits_rx) = mpsc::channel(SESSION_HIT_QUEUE);
        slots.push(Slot { generation, hits });
        drop(slots);
        Some((
            SlotGuard {
                hub: self.clone(),
                generation,
            },
            hits_rx,
        ))
    }

    /// [`Hub::join`], waiting up to [`SECOND_SESSION_GRACE`] for a live session to end.
    pub async fn join_when_free(self: &Arc<Self>) -> Option<(SlotGuard, mpsc::Receiver<HitBatch>)> {
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
            if s.hits.try_send(batch.clone()).is_err() {
                tracing::debug!(
                    session = s.generation,
                    hits = batch.len(),
                    "session is not keeping up; hit batch dropped"
                );
            }
        }
    }

    /// How many sessions are live.
    pub fn live(&self) -> usize {
        self.slots().len()
    }
}

/// Removes a session's slot when the session ends, however it ends.
pub struct SlotGuard {
    hub: Arc<Hub>,
    pub generation: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.hub.slots().retain(|s| s.generation != self.generation);
    }
}
