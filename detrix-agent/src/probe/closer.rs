//! Closes detached uprobe links off the caller's thread.
//!
//! Closing a uprobe's link returns only once the kernel has unregistered the uprobe, after an
//! RCU grace period: ~100 ms per perf-event link on this kernel, however idle the machine, and
//! the kernel does those one at a time (64 closed on 64 threads took 5.3 s, and an attach racing
//! them waited up to 0.8 s; measured by `cargo xtask bench serve`). Closed where
//! [`super::Probes::remove`] ran, that wait sat in front of everything queued behind a removal:
//! a `setBreakpoints` that replaced one logpoint by another went live after 120 ms instead of
//! under 1 ms (issue #13 point 11). So links are dropped here, on one thread, in order; an
//! attach then waits for at most the one close in progress. `uprobe_multi` links
//! ([`super::multi`]) wait for the grace period without the kernel's mutex: with `parallel`,
//! what is queued when the thread looks (up to [`BATCH`] removals) is closed side by side, one
//! thread each, so removing 50 probes costs about one grace period instead of 50.
//!
//! The owner keeps what a synchronous close guaranteed by not reusing a key (a probe slot)
//! until its close is reported ([`Closer::reap`]), and by waiting ([`Waiter::wait_until`]) where
//! a caller needs the uprobes gone from the target's text (a debugger about to patch the same
//! instructions, exact final counters, shutdown). A [`Waiter`] waits without the owner: the
//! owner sits behind a lock other targets' work needs.

use std::collections::BTreeSet;
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

/// What the thread has closed: the keys not yet reaped, and how many closes are done in all
/// (closes are done in the order they were handed over, so a count names a point in it).
#[derive(Debug, Default)]
struct Done {
    state: Mutex<(BTreeSet<u32>, u64)>,
    changed: Condvar,
}

impl Done {
    fn add(&self, key: u32) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0.insert(key);
        s.1 += 1;
        drop(s);
        self.changed.notify_all();
    }
}

/// The point in the closing order after which a key is closed ([`Closer::close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Ticket(u64);

/// Waits for closes, without holding the [`Closer`] (whose owner others need meanwhile).
#[derive(Debug, Clone)]
pub struct Waiter(Arc<Done>);

impl Waiter {
    /// Blocks until every close up to `ticket` is done.
    pub fn wait_until(&self, ticket: Ticket) {
        let mut s = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        while s.1 < ticket.0 {
            s = self
                .0
                .changed
                .wait(s)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Most removals closed side by side (threads at once) by a parallel [`Closer`].
pub const BATCH: usize = 64;

/// Drops each batch's items, one thread per key (one key's items in their order); what cannot
/// get a thread is dropped here.
fn drop_side_by_side<T: Send>(batch: &mut [(u32, Vec<T>)]) {
    std::thread::scope(|s| {
        for (_, items) in batch.iter_mut() {
            let items = std::mem::take(items);
            if let Err(e) = std::thread::Builder::new()
                .name("detrix-close1".into())
                .spawn_scoped(s, move || drop(items))
            {
                tracing::debug!(error = %e, "no thread for a parallel close; closing inline");
            }
        }
    });
}

/// A thread that drops what it is given, reporting each key once its items are dropped, in
/// the order given. `T` is dropped there, so its `Drop` (closing a link's fd) runs off the
/// caller.
pub struct Closer<T: Send + 'static> {
    tx: Option<mpsc::Sender<(u32, Vec<T>)>>,
    done: Arc<Done>,
    /// Keys handed over and not yet reaped.
    pending: BTreeSet<u32>,
    /// Closes handed over in all.
    handed: u64,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> std::fmt::Debug for Closer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closer")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Closer<T> {
    /// Starts the closing thread; `parallel`: batches are closed side by side. If the thread
    /// cannot be made, everything is dropped inline by [`Closer::close`] instead (slower, never
    /// wrong).
    #[must_use]
    pub fn start(parallel: bool) -> Self {
        let (tx, rx) = mpsc::channel::<(u32, Vec<T>)>();
        let done = Arc::new(Done::default());
        let reports = done.clone();
        let thread = std::thread::Builder::new()
            .name("detrix-close".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while parallel && batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    if batch.len() > 1 {
                        drop_side_by_side(&mut batch);
                    }
                    for (key, items) in batch {
                        drop(items);
                        reports.add(key);
                    }
                }
            });
        let (tx, thread) = match thread {
            Ok(t) => (Some(tx), Some(t)),
            Err(e) => {
                tracing::warn!(error = %e, "no thread to close uprobe links on; closing them inline");
                (None, None)
            }
        };
        Self {
            tx,
            done,
            pending: BTreeSet::new(),
            handed: 0,
            thread,
        }
    }

    /// Hands `items` over to be dropped; `key` is pending until reaped. Dropped here, at once,
    /// when the thread is gone. The ticket is what [`Waiter::wait_until`] waits for.
    pub fn close(&mut self, key: u32, items: Vec<T>) -> Ticket {
        self.pending.insert(key);
        self.handed += 1;
        let ticket = Ticket(self.handed);
        let items = match &self.tx {
            Some(tx) => match tx.send((key, items)) {
                Ok(()) => return ticket,
                Err(mpsc::SendError((_, items))) => items,
            },
            None => items,
        };
        drop(items);
        self.done.add(key);
        ticket
    }

    /// A handle that waits for closes without this closer.
    #[must_use]
    pub fn waiter(&self) -> Waiter {
        Waiter(self.done.clone())
    }

    /// The keys whose items are dropped now, without waiting; each is reported once.
    pub fn reap(&mut self) -> Vec<u32> {
        let keys = std::mem::take(
            &mut self
                .done
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .0,
        );
        for k in &keys {
            self.pending.remove(k);
        }
        keys.into_iter().collect()
    }

    /// Waits until every handed-over item is dropped; returns the keys, as [`Closer::reap`].
    pub fn flush(&mut self) -> Vec<u32> {
        self.waiter().wait_until(Ticket(self.handed));
        self.reap()
    }
}

impl<T: Send + 'static> Drop for Closer<T> {
    /// Ends the thread once it has dropped everything.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Sleeps in its drop, like a uprobe link waiting for the kernel.
    struct Slow(Arc<AtomicUsize>);
    impl Drop for Slow {
        fn drop(&mut self) {
            std::thread::sleep(Duration::from_millis(20));
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn close_returns_at_once_and_flush_waits_for_every_drop() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut c = Closer::start(false);
        let t0 = Instant::now();
        for k in 0..10 {
            c.close(k, vec![Slow(dropped.clone()), Slow(dropped.clone())]);
        }
        assert!(t0.elapsed() < Duration::from_millis(20), "close blocked");
        assert!(c.pending.contains(&7));
        assert_eq!(c.flush(), (0..10).collect::<Vec<_>>());
        assert_eq!(dropped.load(Ordering::SeqCst), 20);
        assert!(!c.pending.contains(&7));
        assert!(c.reap().is_empty(), "each key is reported once");
    }

    #[test]
    fn a_waiter_waits_for_its_ticket_only_and_reap_reports_only_finished_ones() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut c = Closer::start(false);
        c.close(3, vec![Slow(dropped.clone())]);
        let four = c.close(4, Vec::new());
        c.close(5, vec![Slow(dropped.clone()), Slow(dropped.clone())]);
        let mut all = c.reap();
        assert!(!all.contains(&5), "5 reported before its drops finished");
        let w = c.waiter();
        // Another owner reaping meanwhile does not make the waiter miss it.
        all.extend(c.reap());
        w.wait_until(four);
        assert!(
            dropped.load(Ordering::SeqCst) >= 1,
            "3 was dropped before 4"
        );
        all.extend(c.reap());
        all.extend(c.flush());
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, vec![3, 4, 5]);
        assert_eq!(dropped.load(Ordering::SeqCst), 3);
    }

    /// Counts drops in progress at once, like links the kernel is unregistering.
    struct Overlapping {
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }
    impl Drop for Overlapping {
        fn drop(&mut self) {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_parallel_closer_closes_a_batch_side_by_side_and_reports_in_order() {
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let item = || Overlapping {
            now: now.clone(),
            most: most.clone(),
        };
        for parallel in [false, true] {
            most.store(0, Ordering::SeqCst);
            let mut c = Closer::start(parallel);
            for k in 0..20 {
                c.close(k, vec![item(), item()]);
            }
            assert_eq!(c.flush(), (0..20).collect::<Vec<_>>());
            assert_eq!(now.load(Ordering::SeqCst), 0);
            let most = most.load(Ordering::SeqCst);
            if parallel {
                // The first key may go alone; the 19 queued behind it go side by side.
                assert!(most > 1, "a parallel closer closed one at a time");
            } else {
                assert_eq!(most, 1, "a serial closer closed two at once");
            }
        }
    }

    #[test]
    fn dropping_the_closer_drops_what_it_holds() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut c = Closer::start(false);
        c.close(1, vec![Slow(dropped.clone())]);
        drop(c);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}
