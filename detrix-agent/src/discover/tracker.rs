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
//! Memory is bounded by the host's process count: one `(pid, start time)` entry per live
//! process, removed on its exit. No thread, one file descriptor.

use std::collections::{HashMap, VecDeque};

use super::connector::{monotonic_ns, Event, Watcher};
use super::{scan, ProcError, Process};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A process is there: found by the start scan or a rescan (`exec_ns: None`), or it just
    /// ran `execve` (`exec_ns`: `CLOCK_MONOTONIC` of the exec).
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
}

/// See the module header.
#[derive(Debug)]
pub struct Tracker {
    watcher: Watcher,
    /// pid → start time of every process reported started and not yet exited.
    known: HashMap<u32, u64>,
    pending: VecDeque<Change>,
    events: Vec<Event>,
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
            self.watcher.next(&mut events).await?;
            for &ev in &events {
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
