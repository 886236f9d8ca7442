//! The hub: which DAP sessions are live, which one is current, and the fan-out of hit batches
//! to them.
//!
//! A connection becomes the current session when it sends its first request ([`Hub::claim`]);
//! older ones are then ended (newest wins, Appendix B), while a connect-and-close probe never
//! displaces anyone. Every live session gets every batch (one `Arc`, no copy) and keeps the
//! hits of its own probes; a session that does not keep up loses batches rather than slowing
//! the reader. The session list is the only state here, behind a small lock held for a push,
//! a scan or a retain — never across I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::dap::ProbeHit;

/// A batch of hits as the sessions receive it.
pub type HitBatch = Arc<Vec<ProbeHit>>;

/// One live DAP connection, as the hub knows it.
struct Slot {
    generation: u64,
    hits: mpsc::Sender<HitBatch>,
    /// Dropping it ends the session.
    cancel: Option<oneshot::Sender<()>>,
}

/// Routes hits to the live sessions and picks the current one.
#[derive(Default)]
pub struct Hub {
    slots: Mutex<Vec<Slot>>,
    next_generation: AtomicU64,
}

/// How many hit batches may wait for a slow session before newer ones are dropped.
const SESSION_HIT_QUEUE: usize = 1024;

impl Hub {
    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new session: its guard (carrying its number), its hits, and its end signal.
    pub fn join(self: &Arc<Self>) -> (SlotGuard, mpsc::Receiver<HitBatch>, oneshot::Receiver<()>) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (hits, hits_rx) = mpsc::channel(SESSION_HIT_QUEUE);
        let (cancel, cancel_rx) = oneshot::channel();
        self.slots().push(Slot {
            generation,
            hits,
            cancel: Some(cancel),
        });
        (
            SlotGuard {
                hub: self.clone(),
                generation,
            },
            hits_rx,
            cancel_rx,
        )
    }

    /// `generation` spoke first: every other session ends.
    pub fn claim(&self, generation: u64) {
        for s in self
            .slots()
            .iter_mut()
            .filter(|s| s.generation != generation)
        {
            if s.cancel.take().is_some() {
                tracing::info!(
                    old = s.generation,
                    new = generation,
                    "a newer DAP session replaces an older one"
                );
            }
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
