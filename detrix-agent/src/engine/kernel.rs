//! One loaded eBPF program for a whole host (`serve`): every target's [`Engine`] attaches its
//! probes to the same program and maps, and one reader drains the one set of rings and hands
//! each target the hits of its own probes.
//!
//! Why: loading and verifying the program takes one to four seconds on a busy host, and
//! `serve` used to pay it for every target it found — most of a restarted service's time
//! before its events resume. Shared, a new target costs only its DWARF and its attaches.
//!
//! Each target still sees only its own process: a probe is a perf-event uprobe scoped to the
//! target's pid, and its plan carries the target's tgid, which the program checks (a hit from
//! another process mapping the same binary is counted `other_process` and dropped). Probe ids
//! come from the one [`Probes`] table, so they are unique on the host and a record names its
//! owner through the shared decoder table.
//!
//! [`Engine`]: super::Engine

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::reader::{decode_all, DecoderTable};
use super::{EngineError, Hit, FLUSH_INTERVAL};
use crate::probe::{EventRings, LoadOptions, Probes};

/// The host's one eBPF program, its probe table and the routes of hits to targets.
pub struct Kernel {
    pub(super) probes: Arc<Mutex<Probes>>,
    pub(super) decoders: DecoderTable,
    routes: Mutex<HashMap<u64, mpsc::UnboundedSender<Vec<Hit>>>>,
    next_owner: AtomicU64,
    /// How long loading and verifying the program took.
    pub load_time: Duration,
    /// What probes are: `uprobe_multi` links, or `perf_event`s where the kernel has no such
    /// links (see `probe/multi.rs`).
    pub link_kind: &'static str,
    stats: RingStats,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("load_time", &self.load_time)
            .finish_non_exhaustive()
    }
}

/// What the host reader saw, for `/metrics`.
#[derive(Debug, Default)]
struct RingStats {
    /// Bytes waiting in the fullest CPU's ring at the last read.
    used_bytes: AtomicU64,
    /// The most ever waiting in one CPU's ring at a read.
    peak_bytes: AtomicU64,
    /// Records read from the rings and decoded.
    hits_read: AtomicU64,
    /// Decoded hits whose target had already gone (its reader was dropped).
    unrouted: AtomicU64,
}

/// The reader's view of the rings, as `/metrics` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingUse {
    /// Bytes of one CPU's ring.
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub peak_bytes: u64,
    pub hits_read: u64,
    pub unrouted: u64,
    /// Probes attached now, over every target, and the host's limit.
    pub probes_attached: u64,
    pub probes_max: u64,
}

impl Kernel {
    /// Loads the program once for the host and starts the reader that routes hits to the
    /// targets' [`super::HitReader`]s. Must run inside a tokio runtime; blocks for as long as
    /// the kernel verifies the program (call it from `spawn_blocking` on a busy loop).
    ///
    /// # Errors
    /// The kernel refused the program.
    pub fn load(opts: LoadOptions) -> Result<Arc<Self>, EngineError> {
        let t0 = Instant::now();
        let (probes, ring) = Probes::load(opts)?;
        let link_kind = if probes.multi_links() {
            "uprobe_multi"
        } else {
            "perf_event"
        };
        let kernel = Arc::new(Self {
            probes: Arc::new(Mutex::new(probes)),
            decoders: DecoderTable::default(),
            routes: Mutex::default(),
            next_owner: AtomicU64::new(1),
            load_time: t0.elapsed(),
            link_kind,
            stats: RingStats::default(),
        });
        #[allow(
            deprecated,
            reason = "tokio 1.54 deprecates AsyncFd::new for I/O-safety; the ring's fd lives as long as the AsyncFd (toolchain.md E7)"
        )]
        let ring = AsyncFd::new(ring).map_err(EngineError::Io)?;
        // The reader holds the kernel only weakly: when the host lets it go, the reader ends.
        tokio::spawn(pump(Arc::downgrade(&kernel), ring));
        Ok(kernel)
    }

    /// A new owner (one target's engine) and the channel its hits arrive on.
    pub(super) fn route(&self) -> (u64, mpsc::UnboundedReceiver<Vec<Hit>>) {
        let owner = self.next_owner.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes_lock().insert(owner, tx);
        (owner, rx)
    }

    /// Forgets `owner`'s route (its reader is gone).
    pub(super) fn unroute(&self, owner: u64) {
        self.routes_lock().remove(&owner);
    }

    fn routes_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Vec<Hit>>>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Targets with a route now.
    #[must_use]
    pub fn owners(&self) -> usize {
        self.routes_lock().len()
    }

    /// The rings and probe table as `/metrics` shows them.
    #[must_use]
    pub fn ring_use(&self) -> RingUse {
        let attached = self
            .probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slots()
            .len() as u64;
        RingUse {
            capacity_bytes: detrix_common::CPU_RING_BYTES as u64,
            used_bytes: self.stats.used_bytes.load(Ordering::Relaxed),
            peak_bytes: self.stats.peak_bytes.load(Ordering::Relaxed),
            hits_read: self.stats.hits_read.load(Ordering::Relaxed),
            unrouted: self.stats.unrouted.load(Ordering::Relaxed),
            probes_attached: attached,
            probes_max: u64::from(detrix_common::MAX_PROBES),
        }
    }

    /// Decodes what is pending and hands each target its hits.
    fn dispatch(&self, ring: &mut EventRings) {
        let used = ring.backlog_bytes();
        self.stats.used_bytes.store(used, Ordering::Relaxed);
        self.stats.peak_bytes.fetch_max(used, Ordering::Relaxed);
        let (hits, _) = decode_all(ring, &self.decoders);
        if hits.is_empty() {
            return;
        }
        self.stats
            .hits_read
            .fetch_add(hits.len() as u64, Ordering::Relaxed);
        let mut by_owner: HashMap<u64, Vec<Hit>> = HashMap::new();
        for (owner, hit) in hits {
            by_owner.entry(owner).or_default().push(hit);
        }
        let routes = self.routes_lock();
        for (owner, batch) in by_owner {
            let n = batch.len() as u64;
            let sent = routes.get(&owner).is_some_and(|tx| tx.send(batch).is_ok());
            if !sent {
                self.stats.unrouted.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// The host reader: waits for a wakeup or the flush interval, then dispatches. Ends when the
/// kernel is dropped or the rings' fd fails (logged: no more values would be delivered).
async fn pump(kernel: std::sync::Weak<Kernel>, mut ring: AsyncFd<EventRings>) {
    let mut flush = tokio::time::interval(FLUSH_INTERVAL);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => match guard {
                // Cleared before draining: a record published during the drain wakes again.
                Ok(mut g) => g.clear_ready(),
                Err(e) => {
                    tracing::error!(error = %e, "reading the host's event rings failed; no more values will be delivered");
                    return;
                }
            },
            _ = flush.tick() => {}
        }
        let Some(k) = kernel.upgrade() else { return };
        k.dispatch(ring.get_mut());
    }
}
