//! The live set of processes: one `/proc` scan, then the connector's exec and exit events,
//! turned into [`Change`]s — a process started (with its facts) or a known one exited.
//!
//! Order at start matters: the socket subscribes before the scan, so a process that starts
//! during the scan is reported by one or the other (or both; the second report is dropped
//! because the pid is known with the same start time). When the kernel drops events
//! ([`Event::Lost`]), the set is rebuilt from a fresh scan: unknown pids start, missing ones
//! exit. A pid that execs again (a new image in the same process) exits and starts again,
//! since every fact a rule matched may have changed.
//!
//! A forked child that does not exec — a pre-fork server's worker, which runs its parent's
//! binary — is a process of its own, as the start scan would have found it: probes are
//! attached per pid, so a worker no rule picked up would run unobserved. It is reported
//! [`FORK_SETTLE`] after its fork if it still runs its parent's executable then. Most children
//! exec at once (a shell, `posix_spawn`): those are reported by their exec alone, with the
//! facts of their new image, and cost two `readlink`s at most. A child that exec'd before the
//! settle looked but whose exec event is not read yet has another executable than its parent
//! and is left to that event, so no process is reported twice for one start.
//!
//! Memory is bounded by the host's process count: one `(pid, start time)` entry per live
//! process, removed on its exit, and the forks of the last [`FORK_SETTLE`] (at most
//! [`MAX_PENDING_FORKS`]). No thread, one file descriptor.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::connector::{monotonic_ns, Event, Watcher};
use super::{scan, ProcError, Process};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A process is there: found by the start scan, a rescan, or forked and still running its
    /// parent's image [`FORK_SETTLE`] later (`exec_ns: None`), or it just ran `execve`
    /// (`exec_ns`: `CLOCK_MONOTONIC` of the exec).
    Started {
        process: Process,
        exec_ns: Option<u64>,
    },
    /// A process reported by [`Change::Started`] exited.
    Exited { pid: u32 },
}

/// Counts since the tracker opened, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub exec_events: u64,
    pub exit_events: u64,
    /// Exec'd processes gone before their facts could be read.
    pub vanished: u64,
    /// Times the kernel dropped events and `/proc` was rescanned.
    pub rescans: u64,
    /// New processes forked (threads not counted).
    pub fork_events: u64,
    /// Forked children reported because they kept their parent's image.
    pub forks_kept: u64,
    /// Forks not followed because [`MAX_PENDING_FORKS`] were waiting (a fork storm); a rescan
    /// follows it, so those still running are found.
    pub forks_overflowed: u64,
}

/// How long a forked child has to exec before it is reported as a process running its
/// parent's image.
pub const FORK_SETTLE: Duration = Duration::from_millis(50);

/// Most forked children waiting out [`FORK_SETTLE`] at once (memory stays bounded under a
/// fork storm; past it, [`Stats::forks_overflowed`] and a rescan).
pub const MAX_PENDING_FORKS: usize = 65_536;

/// See the module header.
#[derive(Debug)]
pub struct Tracker {
    watcher: Watcher,
    /// pid → start time of every process reported started and not yet exited.
    known: HashMap<u32, u64>,
    pending: VecDeque<Change>,
    events: Vec<Event>,
    /// Forked children waiting out [`FORK_SETTLE`]: child, parent, when to look; in fork order.
    forked: VecDeque<(u32, u32, Instant)>,
    /// The children in `forked` that have neither exec'd nor exited since.
    still_forked: HashSet<u32>,
    /// A fork was not followed: rescan once the storm has passed.
    rescan_due: bool,
    pub stats: Stats,
}

impl Tracker {
    /// Subscribes to the connector, then scans `/proc`; the scan's processes are the first
    /// changes [`Tracker::next`] returns. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// The connector cannot be opened (see [`Watcher::open`]) or `/proc` cannot be read.
    pub fn open() -> std::io::Result<Self> {
        let watcher = Watcher::open()?;
        let mut t = Self {
            watcher,
            known: HashMap::new(),
            pending: VecDeque::new(),
            events: Vec::new(),
            forked: VecDeque::new(),
            still_forked: HashSet::new(),
            rescan_due: false,
            stats: Stats::default(),
        };
        t.rescan()?;
        Ok(t)
    }

    /// How many processes are known alive.
    #[must_use]
    pub fn known(&self) -> usize {
        self.known.len()
    }

    /// Whether `pid` is known alive (reported started, and not exited since).
    #[must_use]
    pub fn knows(&self, pid: u32) -> bool {
        self.known.contains_key(&pid)
    }

    fn start(&mut self, process: Process, exec_ns: Option<u64>) {
        if let Some(&t) = self.known.get(&process.pid) {
            if t == process.start_time && exec_ns.is_none() {
                return;
            }
            self.pending.push_back(Change::Exited { pid: process.pid });
        }
        self.known.insert(process.pid, process.start_time);
        self.pending.push_back(Change::Started { process, exec_ns });
    }

    fn exit(&mut self, pid: u32) {
        if self.known.remove(&pid).is_some() {
            self.pending.push_back(Change::Exited { pid });
        }
    }

    fn rescan(&mut self) -> std::io::Result<()> {
        let pids = scan()?;
        let gone: Vec<u32> = self
            .known
            .keys()
            .copied()
            .filter(|p| pids.binary_search(p).is_err())
            .collect();
        for pid in gone {
            self.exit(pid);
        }
        for pid in pids {
            if let Ok(p) = Process::read(pid) {
                self.start(p, None);
            }
        }
        Ok(())
    }

    /// Reports the forked children whose time to exec is up and that still run their parent's
    /// executable (one that exec'd is reported by its exec; one that exited, by nothing).
    fn settle_forks(&mut self) {
        let now = Instant::now();
        while let Some(&(pid, parent, due)) = self.forked.front() {
            if due > now {
                break;
            }
            self.forked.pop_front();
            if !self.still_forked.remove(&pid) || self.known.contains_key(&pid) {
                continue;
            }
            let exe = |p: u32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
            let Some(own) = exe(pid) else { continue };
            // A parent gone meanwhile cannot be compared with: the child's own facts decide.
            if exe(parent).is_some_and(|p| p != own) {
                continue;
            }
            if let Ok(p) = Process::read(pid) {
                self.stats.forks_kept += 1;
                self.start(p, None);
            }
        }
        if self.rescan_due && self.forked.is_empty() {
            self.rescan_due = false;
            self.stats.rescans += 1;
            if let Err(e) = self.rescan() {
                tracing::warn!(error = %e, "rescanning /proc after a fork storm failed");
            }
        }
    }

    /// The next change, waiting for the kernel when none is queued.
    ///
    /// # Errors
    /// The connector socket failed.
    pub async fn next(&mut self) -> std::io::Result<Change> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Ok(c);
            }
            let mut events = std::mem::take(&mut self.events);
            events.clear();
            // Cancel-safe: `Watcher::next` only awaits before it has read anything.
            match self.forked.front().map(|f| f.2) {
                None => self.watcher.next(&mut events).await?,
                Some(due) => tokio::select! {
                    r = self.watcher.next(&mut events) => r?,
                    () = tokio::time::sleep_until(due) => self.settle_forks(),
                },
            }
            for &ev in &events {
                // A forked child that exec'd or exited is not reported as its parent's image.
                if let Event::Exec { pid, .. } | Event::Exit { pid, .. } = ev {
                    self.still_forked.remove(&pid);
                }
                match ev {
                    Event::Exec { pid, at_ns } => {
                        self.stats.exec_events += 1;
                        match Process::read(pid) {
                            Ok(p) => self.start(p, Some(at_ns)),
                            Err(ProcError::Gone { .. }) => {
                                self.stats.vanished += 1;
                                self.exit(pid);
                            }
                            Err(e) => {
                                tracing::debug!(pid, error = %e, "an exec'd process could not be read");
                            }
                        }
                    }
                    Event::Exit { pid, .. } => {
                        self.stats.exit_events += 1;
                        self.exit(pid);
                    }
                    Event::Fork { pid, parent, .. } => {
                        self.stats.fork_events += 1;
                        if self.forked.len() < MAX_PENDING_FORKS {
                            self.forked
                                .push_back((pid, parent, Instant::now() + FORK_SETTLE));
                            self.still_forked.insert(pid);
                        } else {
                            self.stats.forks_overflowed += 1;
                            self.rescan_due = true;
                        }
                    }
                    Event::Lost => {
                        self.stats.rescans += 1;
                        tracing::warn!("the kernel dropped process events; rescanning /proc");
                        self.rescan()?;
                    }
                }
            }
            self.events = events;
        }
    }
}

/// Milliseconds from an exec (`CLOCK_MONOTONIC` ns) to now.
#[must_use]
pub fn ms_since(exec_ns: u64) -> f64 {
    monotonic_ns().saturating_sub(exec_ns) as f64 / 1e6
}
