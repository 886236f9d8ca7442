//! The engine's one owner: probes under the names their sessions gave them ([`ProbeId`]),
//! kept while all of them are taken off the process and put back ([`Probes::suspend`],
//! [`Probes::resume`]), which a spawned debugger needs (both patch `int3` into the same text;
//! design.md §7).
//!
//! Shape: the [`Registry`] lives on its own thread and is reached only by messages through a
//! [`Probes`] handle — installs and removes from the sessions, suspend/resume from the debugger
//! worker, remove-all from the actor, and hit batches from the ring reader. One owner means no
//! lock that every task takes, and one order for everything that touches the probes: a hit
//! read after a remove is translated after it, and dropped. The thread, not a tokio task,
//! because an install resolves DWARF and may take a while.
//!
//! Ids: the engine names an attached logpoint with a [`LogpointId`] that changes on every
//! re-attach; sessions name probes with a [`ProbeId`]. [`Registry::translate`] is the one
//! place that maps the first to the second.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use detrix_common::Counters;
use tokio::sync::{mpsc, oneshot};

use crate::dap::{ProbeHit, ProbeId};
use crate::engine::{Engine, EngineError, Hit, LogpointId, LogpointSpec};

/// One attached probe's counters, as `/metrics` shows them.
#[derive(Debug, Clone)]
pub struct ProbeStats {
    pub probe: ProbeId,
    pub file: String,
    pub line: u32,
    pub counters: Counters,
    /// Estimated CPU cost since attached, ns ([`Engine::cost_ns`]).
    pub cost_ns: u64,
}

/// What a target's engine has counted: every probe attached now, the target's totals (removed
/// probes included) and the probes the CPU breaker switched off.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub probes: Vec<ProbeStats>,
    pub totals: Counters,
    pub switched_off: u64,
    /// The last probe switched off, with the reason.
    pub last_switched_off: Option<(ProbeId, String)>,
    /// Events read after their probe was removed, shown to no session: a removed probe's
    /// uprobe fires until the kernel has unregistered it (~100 ms, see `probe/closer.rs`),
    /// what it emitted before may still be in the ring, and a batch read before the removal
    /// may reach the session after it forgot the probe (counted by the session's shell).
    pub after_remove: u64,
}

#[derive(Debug)]
struct Entry {
    file: String,
    spec: LogpointSpec,
    /// The engine's id while attached; `None` while suspended.
    engine_id: Option<LogpointId>,
}

/// Probes by session-given id over one [`Engine`].
#[derive(Debug)]
pub struct Registry {
    engine: Engine,
    entries: BTreeMap<ProbeId, Entry>,
    by_engine: HashMap<LogpointId, ProbeId>,
    suspended: bool,
    switched_off: u64,
    last_switched_off: Option<(ProbeId, String)>,
    /// Switched off by the host's budget, not yet reported by [`Registry::enforce_budget`].
    unreported: Vec<(ProbeId, String)>,
    /// See [`Stats::after_remove`].
    after_remove: u64,
}

impl Registry {
    #[must_use]
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            entries: BTreeMap::new(),
            by_engine: HashMap::new(),
            suspended: false,
            switched_off: 0,
            last_switched_off: None,
            unreported: Vec::new(),
            after_remove: 0,
        }
    }

    /// The counters of every attached probe and of the target.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let probes = self
            .entries
            .iter()
            .filter_map(|(probe, e)| {
                let eid = e.engine_id?;
                Some(ProbeStats {
                    probe: *probe,
                    file: e.file.clone(),
                    line: e.spec.line,
                    counters: self.engine.counters(eid)?,
                    cost_ns: self.engine.cost_ns(eid)?,
                })
            })
            .collect();
        Stats {
            probes,
            totals: self.engine.totals(),
            switched_off: self.switched_off,
            last_switched_off: self.last_switched_off.clone(),
            after_remove: self.after_remove,
        }
    }

    /// Switches `probe` off (removes it) for `why` — the host's CPU budget, which weighs every
    /// target's probes together. Nothing if it is not attached.
    pub fn switch_off(&mut self, probe: ProbeId, why: String) {
        let Some(eid) = self.entries.get(&probe).and_then(|e| e.engine_id) else {
            return;
        };
        self.by_engine.remove(&eid);
        self.entries.remove(&probe);
        // Not waiting for the kernel to unregister it: the registry thread serves on.
        if let Err(e) = self.engine.retire(eid) {
            tracing::warn!(error = %e, "removing a switched-off probe failed");
        }
        tracing::warn!(session = probe.session, probe = probe.n, %why, "probe switched off by the CPU breaker");
        self.switched_off += 1;
        self.last_switched_off = Some((probe, why.clone()));
        self.unreported.push((probe, why));
    }

    /// The CPU breaker: switches off (removes) every probe whose cost over `window` exceeds
    /// `budget` (a fraction of one CPU; see [`Engine::enforce_budget`]; 0 = none) and returns
    /// each with the reason, after those the host's budget switched off since the last call.
    pub fn enforce_budget(&mut self, window: Duration, budget: f64) -> Vec<(ProbeId, String)> {
        let mut out = std::mem::take(&mut self.unreported);
        if budget <= 0.0 {
            return out;
        }
        for (eid, why) in self.engine.enforce_budget(window, budget) {
            let Some(probe) = self.by_engine.remove(&eid) else {
                continue;
            };
            let why = format!("{why} per probe; raise it with --cpu-budget PERCENT (of one CPU; 0 = no breaker) or pick a colder line");
            self.entries.remove(&probe);
            tracing::warn!(session = probe.session, probe = probe.n, %why, "probe switched off by the CPU breaker");
            self.switched_off += 1;
            self.last_switched_off = Some((probe, why.clone()));
            out.push((probe, why));
        }
        out
    }

    /// The engine underneath (resolver, counters).
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Installs `probe` (only resolves and plans it while suspended; it is attached on
    /// [`Registry::resume`]).
    ///
    /// # Errors
    /// As [`Engine::add`].
    pub fn add(
        &mut self,
        probe: ProbeId,
        file: &str,
        spec: &LogpointSpec,
    ) -> Result<(), EngineError> {
        let engine_id = if self.suspended {
            self.engine.resolver().prepare(file, spec)?;
            None
        } else {
            Some(self.engine.add(file, spec)?)
        };
        if let Some(e) = engine_id {
            self.by_engine.insert(e, probe);
        }
        self.entries.insert(
            probe,
            Entry {
                file: file.to_owned(),
                spec: spec.clone(),
                engine_id,
            },
        );
        Ok(())
    }

    /// Removes a probe (nothing if unknown).
    ///
    /// # Errors
    /// A kernel error on detach.
    pub fn remove(&mut self, probe: ProbeId) -> Result<(), EngineError> {
        let Some(e) = self.entries.remove(&probe) else {
            return Ok(());
        };
        if let Some(eid) = e.engine_id {
            self.by_engine.remove(&eid);
            // Returns before the kernel has unregistered the uprobe (~100 ms): the install a
            // `setBreakpoints` queues behind this removal goes on at once.
            self.engine.retire(eid)?;
        }
        Ok(())
    }

    /// Removes every probe of session `session`; returns how many there were.
    ///
    /// # Errors
    /// The first detach error (the rest are still removed).
    pub fn remove_session(&mut self, session: u64) -> Result<usize, EngineError> {
        let ids: Vec<ProbeId> = self
            .entries
            .keys()
            .filter(|p| p.session == session)
            .copied()
            .collect();
        let mut first = Ok(ids.len());
        for id in ids {
            if let Err(e) = self.remove(id) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Removes every probe.
    ///
    /// # Errors
    /// The first detach error (the rest are still removed).
    pub fn remove_all(&mut self) -> Result<(), EngineError> {
        self.entries.clear();
        self.by_engine.clear();
        self.engine.remove_all()
    }

    /// Takes every uprobe off the process; the probes stay known.
    ///
    /// # Errors
    /// The first detach error.
    pub fn suspend(&mut self) -> Result<(), EngineError> {
        self.suspended = true;
        self.by_engine.clear();
        for e in self.entries.values_mut() {
            e.engine_id = None;
        }
        self.engine.remove_all()
    }

    /// Puts every probe back; returns the ones that could not be re-attached, with why.
    pub fn resume(&mut self) -> Vec<(ProbeId, String)> {
        self.suspended = false;
        let mut failed = Vec::new();
        for (id, e) in &mut self.entries {
            match self.engine.add(&e.file, &e.spec) {
                Ok(eid) => {
                    e.engine_id = Some(eid);
                    self.by_engine.insert(eid, *id);
                }
                Err(err) => failed.push((*id, err.to_string())),
            }
        }
        failed
    }

    /// Names `hits` by their sessions' ids, dropping (and counting, [`Stats::after_remove`])
    /// hits of probes no longer known. The one place engine ids become probe ids.
    pub fn translate(&mut self, hits: Vec<Hit>) -> Vec<ProbeHit> {
        let n = hits.len();
        let named: Vec<ProbeHit> = hits
            .into_iter()
            .filter_map(|hit| {
                let probe = *self.by_engine.get(&hit.logpoint)?;
                Some(ProbeHit { probe, hit })
            })
            .collect();
        self.after_remove += (n - named.len()) as u64;
        named
    }
}

/// A message for the registry's thread.
enum Request {
    Install {
        probe: ProbeId,
        file: String,
        spec: LogpointSpec,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Remove(ProbeId),
    AfterRemove(u64),
    RemoveSession(u64),
    RemoveAll(oneshot::Sender<()>),
    Suspend(oneshot::Sender<()>),
    Resume(oneshot::Sender<Vec<(ProbeId, String)>>),
    Hits(Vec<Hit>),
    Stats(oneshot::Sender<Stats>),
    SwitchOff(ProbeId, String),
    Budget {
        window: Duration,
        budget: f64,
        reply: oneshot::Sender<Vec<(ProbeId, String)>>,
    },
}

/// The handle every task holds to reach the registry. Cheap to clone; the thread ends when
/// the last handle is dropped (and the engine with it).
#[derive(Debug, Clone)]
pub struct Probes {
    tx: mpsc::UnboundedSender<Request>,
}

impl Probes {
    /// Moves `registry` onto its own thread; translated hit batches go to `publish` (never
    /// empty ones).
    ///
    /// # Panics
    /// The OS refuses to start a thread.
    pub fn spawn(
        mut registry: Registry,
        mut publish: impl FnMut(Vec<ProbeHit>) + Send + 'static,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("detrix-probes".into())
            .spawn(move || {
                while let Some(req) = rx.blocking_recv() {
                    serve(&mut registry, req, &mut publish);
                }
            })
            .expect("starting the probe registry thread");
        Self { tx }
    }

    /// Installs `probe`; `Err` is the sentence saying why not.
    pub async fn install(
        &self,
        probe: ProbeId,
        file: String,
        spec: LogpointSpec,
    ) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Install {
            probe,
            file,
            spec,
            reply,
        });
        rx.await
            .unwrap_or_else(|_| Err("the agent is shutting down; nothing is installed".into()))
    }

    /// Removes `probe` (asynchronously; later hits of it are dropped).
    pub fn remove(&self, probe: ProbeId) {
        self.send(Request::Remove(probe));
    }

    /// Removes every probe of `session` (asynchronously), including installs still queued.
    pub fn remove_session(&self, session: u64) {
        self.send(Request::RemoveSession(session));
    }

    /// Removes every probe and waits until they are off the process.
    pub async fn remove_all(&self) {
        let (reply, rx) = oneshot::channel();
        self.send(Request::RemoveAll(reply));
        let _ = rx.await;
    }

    /// Takes every probe off the process and waits until they are.
    pub async fn suspend(&self) {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Suspend(reply));
        let _ = rx.await;
    }

    /// Puts every probe back; returns the ones that could not be, with why.
    pub async fn resume(&self) -> Vec<(ProbeId, String)> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Resume(reply));
        rx.await.unwrap_or_default()
    }

    /// A batch of hits as the engine read them.
    pub fn hits(&self, batch: Vec<Hit>) {
        self.send(Request::Hits(batch));
    }

    /// Counts `n` hits a session dropped because its probe was removed ([`Stats::after_remove`]).
    pub fn count_after_remove(&self, n: u64) {
        if n > 0 {
            self.send(Request::AfterRemove(n));
        }
    }

    /// Runs the CPU breaker once (see [`Registry::enforce_budget`]).
    pub async fn enforce_budget(&self, window: Duration, budget: f64) -> Vec<(ProbeId, String)> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Budget {
            window,
            budget,
            reply,
        });
        rx.await.unwrap_or_default()
    }

    /// A handle that reads counters without keeping the registry (and its engine) alive.
    #[must_use]
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            tx: self.tx.downgrade(),
        }
    }

    fn send(&self, req: Request) {
        if self.tx.send(req).is_err() {
            tracing::debug!("the probe registry has stopped; request dropped");
        }
    }
}

/// Reads a registry's counters ([`Registry::stats`]) for as long as it runs.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    tx: mpsc::WeakUnboundedSender<Request>,
}

impl StatsHandle {
    /// The counters now; `None` once the registry has stopped.
    pub async fn stats(&self) -> Option<Stats> {
        let (reply, rx) = oneshot::channel();
        self.tx.upgrade()?.send(Request::Stats(reply)).ok()?;
        rx.await.ok()
    }

    /// Switches `probe` off for `why` ([`Registry::switch_off`]); nothing once stopped.
    pub fn switch_off(&self, probe: ProbeId, why: String) {
        if let Some(tx) = self.tx.upgrade() {
            let _ = tx.send(Request::SwitchOff(probe, why));
        }
    }
}

fn serve(registry: &mut Registry, req: Request, publish: &mut impl FnMut(Vec<ProbeHit>)) {
    match req {
        Request::AfterRemove(n) => registry.after_remove += n,
        Request::Hits(batch) => {
            let hits = registry.translate(batch);
            if !hits.is_empty() {
                publish(hits);
            }
        }
        Request::Install {
            probe,
            file,
            spec,
            reply,
        } => {
            let r = registry.add(probe, &file, &spec);
            match &r {
                Ok(()) => {
                    tracing::info!(file, line = spec.line, exprs = ?spec.exprs, session = probe.session, probe = probe.n, "logpoint installed");
                }
                Err(e) => {
                    tracing::info!(file, line = spec.line, exprs = ?spec.exprs, error = %e, "logpoint refused");
                }
            }
            let r = r.map_err(|e| e.to_string());
            if let (Err(_), Ok(())) = (reply.send(r.clone()), &r) {
                // The session is gone (aborted mid-install): nobody will remove it.
                let _ = registry.remove(probe);
            }
        }
        Request::Remove(probe) => {
            if let Err(e) = registry.remove(probe) {
                tracing::warn!(session = probe.session, probe = probe.n, error = %e, "removing a logpoint failed");
            }
        }
        Request::RemoveSession(session) => match registry.remove_session(session) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                session,
                probes = n,
                "removed the probes an ended session left"
            ),
            Err(e) => tracing::warn!(session, error = %e, "removing a session's probes failed"),
        },
        Request::RemoveAll(reply) => {
            if let Err(e) = registry.remove_all() {
                tracing::warn!(error = %e, "removing probes failed");
            }
            let _ = reply.send(());
        }
        Request::Suspend(reply) => {
            if let Err(e) = registry.suspend() {
                tracing::warn!(error = %e, "taking the uprobes off before a debugger round failed");
            }
            let _ = reply.send(());
        }
        Request::Resume(reply) => {
            let _ = reply.send(registry.resume());
        }
        Request::Stats(reply) => {
            let _ = reply.send(registry.stats());
        }
        Request::SwitchOff(probe, why) => registry.switch_off(probe, why),
        Request::Budget {
            window,
            budget,
            reply,
        } => {
            let _ = reply.send(registry.enforce_budget(window, budget));
        }
    }
}
