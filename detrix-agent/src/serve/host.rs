//! The host's targets: every process a rule selects gets an entry here and a task running the
//! very agent `attach --pid` runs ([`Agent`] over its own [`Engine`]), so registration, DAP,
//! wake/sleep and exit behave exactly as for one target. The table is what the host control
//! plane reads and acts on; the run loop ([`run`]) feeds it from the discovery tracker.
//!
//! Every target's engine attaches to the host's one eBPF program ([`Kernel`], loaded once
//! when serve starts, off the event loop): a new target costs its debug info and attaches,
//! not a program load and verification.
//!
//! Lifetime of an entry: `starting` (debug info being read, off the event loop) → the agent's
//! own states (`sleeping`, `waking`, `awake`) → gone. When the process exits the agent sees it
//! (as under `attach`), sends the daemon `exited` + `terminated`, unregisters and drops every
//! probe; its task then ends and the entry is removed. A target that cannot be attached (no
//! debug info, unknown language) stays listed as `failed` with the reason until it exits.
//!
//! Connection names: the rule's template, rendered; when another live target already has that
//! name, `-2`, `-3`, … (the lowest free). The default template is `{exe}`, so one instance of
//! a service is `orders` however often it restarts (its old entry is gone before or shortly
//! after the new one appears, and the daemon's connection id — a hash of name, language,
//! working directory and host name — comes back with its stored metrics), and a second live
//! instance is `orders-2`. A blue/green restart, where the new instance starts before the old
//! exits, gets `-2` for that run: set a template with `{container}` or an argument-derived
//! name when that matters.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::budget::HostBudget;
use super::config::Config;
use super::metrics::{Histogram, ProbeCounters, Snapshot, TargetCounters};
use super::rule::{LanguageChoice, Rule, Wake};
use crate::daemon::{self, Agent, AgentHandle, AttachConfig};
use crate::dap::ProbeId;
use crate::discover::tracker::{ms_since, Change, Tracker};
use crate::discover::Process;
use crate::engine::{Engine, EngineOptions, Kernel, Resolver};

/// What every target's agent shares, from the command line and the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub control_host: String,
    /// The host control plane's bound port.
    pub control_port: u16,
    /// `http://host:port` of the host control plane, as shown.
    pub control_url: String,
    pub advertise_host: String,
    /// `--dap-allow-peer`: who may dial a non-loopback DAP port (a central daemon).
    pub dap_allow_peers: Vec<std::net::IpAddr>,
    pub hostname: String,
    pub token: Option<String>,
    pub health_timeout: Duration,
    pub register_timeout: Duration,
    pub unregister_timeout: Duration,
    /// Per-probe CPU budget (fraction of one CPU; 0 = no breaker), as `--cpu-budget`.
    pub cpu_budget: f64,
    /// Every target's probes together (fraction of one CPU; 0 = none), `--host-cpu-budget`.
    pub host_cpu_budget: f64,
}

/// Discovery counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryStats {
    pub started: u64,
    pub exited: u64,
    pub selected: u64,
    /// Exec → entry in the table.
    pub latency: Histogram,
}

/// One target as the control plane sees it.
#[derive(Debug)]
struct Entry {
    process: Process,
    name: String,
    rule: String,
    language: Option<&'static str>,
    handle: Option<AgentHandle>,
    error: Option<String>,
    /// Dropping it (or sending) stops the agent: it sleeps (unregisters) and ends.
    stop: Option<oneshot::Sender<()>>,
    exited: bool,
}

/// The host-wide breaker, over every target's probes by (target, probe).
type HostBreaker = HostBudget<(u64, ProbeId)>;

/// The table of targets.
#[derive(Debug)]
pub struct Host {
    targets: Mutex<BTreeMap<u64, Entry>>,
    next_id: std::sync::atomic::AtomicU64,
    settings: Settings,
    pub stats: Mutex<DiscoveryStats>,
    /// The host's one eBPF program, or why the kernel refused it.
    kernel: tokio::sync::OnceCell<Result<Arc<Kernel>, String>>,
    /// The host-wide CPU breaker, by (target, probe).
    budget: tokio::sync::Mutex<(HostBreaker, Option<tokio::time::Instant>)>,
}

impl Host {
    #[must_use]
    pub fn new(settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            targets: Mutex::default(),
            next_id: std::sync::atomic::AtomicU64::new(1),
            stats: Mutex::default(),
            kernel: tokio::sync::OnceCell::new(),
            budget: tokio::sync::Mutex::new((HostBudget::new(settings.host_cpu_budget), None)),
            settings,
        })
    }

    /// The host-wide CPU breaker, once a window: weighs every target's probes together and
    /// switches the dearest off while they cost more than the host budget. A window in which
    /// a target's registry did not answer in time (busy with a long install) is not judged:
    /// the next one spans both, weighed over the time that really passed.
    pub async fn enforce_host_budget(&self) {
        let mut guard = self.budget.lock().await;
        let (budget, since) = &mut *guard;
        if budget.budget <= 0.0 {
            return;
        }
        let handles: Vec<(u64, AgentHandle)> = self
            .table()
            .iter()
            .filter_map(|(id, e)| Some((*id, e.handle.clone()?)))
            .collect();
        let mut costs = Vec::new();
        let mut by_target = HashMap::new();
        for (id, h) in handles {
            match tokio::time::timeout(STATS_WAIT, h.stats.stats()).await {
                Ok(Some(stats)) => {
                    costs.extend(stats.probes.iter().map(|p| ((id, p.probe), p.cost_ns)));
                    by_target.insert(id, h);
                }
                // Ended meanwhile: its probes are gone.
                Ok(None) => {}
                Err(_) => return,
            }
        }
        let now = tokio::time::Instant::now();
        let window = since.map_or(HOST_BUDGET_WINDOW, |t| now.duration_since(t));
        *since = Some(now);
        for ((id, probe), why) in budget.over(window, costs) {
            tracing::warn!(target = id, session = probe.session, probe = probe.n, %why, "host CPU budget exceeded; probe switched off");
            if let Some(h) = by_target.get(&id) {
                h.stats.switch_off(probe, format!("{why}; raise it with serve --host-cpu-budget PERCENT (of one CPU; 0 = no host budget)"));
            }
        }
    }

    /// Windows in which every target's probes together exceeded the host budget.
    pub async fn host_budget_trips(&self) -> u64 {
        self.budget.lock().await.0.trips
    }

    /// The host's eBPF program, loaded on first use (verification takes seconds on a busy
    /// host, so it runs on a blocking thread; callers meanwhile wait here).
    ///
    /// # Errors
    /// The sentence saying why the kernel refused the program.
    pub async fn kernel(&self) -> Result<Arc<Kernel>, String> {
        self.kernel
            .get_or_init(|| async {
                let loaded = tokio::task::spawn_blocking(|| {
                    Kernel::load(EngineOptions::default().load)
                })
                .await
                .map_err(|e| format!("loading the eBPF program failed: {e}"))
                .and_then(|r| r.map_err(|e| format!("loading the eBPF program: {e}")));
                match &loaded {
                    Ok(k) => tracing::info!(load_ms = k.load_time.as_millis(), "eBPF program loaded for the host"),
                    Err(e) => tracing::error!(error = %e, "the host's eBPF program could not be loaded; no target can be attached"),
                }
                loaded
            })
            .await
            .clone()
    }

    /// The host's program if it is loaded (for `/metrics`; never waits).
    #[must_use]
    pub fn loaded_kernel(&self) -> Option<Arc<Kernel>> {
        self.kernel.get().and_then(|r| r.as_ref().ok().cloned())
    }

    /// Starts loading the host's program now, so the first target does not wait for it.
    pub fn preload(self: &Arc<Self>) {
        let host = self.clone();
        tokio::spawn(async move {
            let _ = host.kernel().await;
        });
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.targets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The token remote control-plane callers must present.
    #[must_use]
    pub fn token(&self) -> Option<&str> {
        self.settings.token.as_deref()
    }

    /// Every target, in id order, as `GET /detrix/targets` lists them.
    #[must_use]
    pub fn list(&self) -> Vec<Value> {
        self.table()
            .iter()
            .map(|(id, e)| entry_json(*id, e))
            .collect()
    }

    /// Ids of the targets whose processes `select` selects (every target for `None`).
    #[must_use]
    pub fn select(&self, select: Option<&super::rule::Select>) -> Vec<u64> {
        self.table()
            .iter()
            .filter(|(_, e)| !e.exited && select.is_none_or(|s| s.matches(&e.process)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The agent handle of target `id`, if it is running.
    #[must_use]
    pub fn handle(&self, id: u64) -> Option<Result<AgentHandle, String>> {
        let t = self.table();
        let e = t.get(&id)?;
        Some(match (&e.handle, &e.error) {
            (Some(h), _) => Ok(h.clone()),
            (None, Some(err)) => Err(err.clone()),
            (None, None) => Err(format!("target {id} is still starting; try again shortly")),
        })
    }

    /// Counts of targets by state.
    #[must_use]
    pub fn by_state(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for e in self.table().values() {
            *m.entry(state_of(e)).or_default() += 1;
        }
        m
    }

    /// What `/metrics` shows now: discovery, and each running target's engine counters read
    /// through its registry.
    pub async fn metrics(&self) -> Snapshot {
        let st = self
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let running: Vec<(u64, String, u32, AgentHandle)> = self
            .table()
            .iter()
            .filter_map(|(id, e)| Some((*id, e.name.clone(), e.process.pid, e.handle.clone()?)))
            .collect();
        let mut targets = Vec::new();
        for (id, name, pid, handle) in running {
            // A target whose registry is busy (a long install) is left out of this scrape.
            let Ok(Some(stats)) = tokio::time::timeout(STATS_WAIT, handle.stats.stats()).await
            else {
                continue;
            };
            targets.push(TargetCounters {
                id,
                name,
                pid,
                totals: stats.totals,
                switched_off: stats.switched_off,
                after_remove: stats.after_remove,
                probes: stats
                    .probes
                    .into_iter()
                    .map(|p| ProbeCounters {
                        probe: format!("s{}p{}", p.probe.session, p.probe.n),
                        file: p.file,
                        line: p.line,
                        counters: p.counters,
                    })
                    .collect(),
            });
        }
        let kernel = self.loaded_kernel();
        Snapshot {
            processes_started: st.started,
            processes_exited: st.exited,
            targets_found: st.selected,
            targets_by_state: self.by_state().into_iter().collect(),
            latency: st.latency,
            targets,
            ring: kernel.as_ref().map(|k| k.ring_use()),
            load_seconds: kernel.as_ref().map(|k| k.load_time.as_secs_f64()),
            link_kind: kernel.map(|k| k.link_kind),
            host_budget_trips: self.host_budget_trips().await,
        }
    }

    fn unique_name(&self, wanted: &str) -> String {
        let t = self.table();
        let taken = |n: &str| t.values().any(|e| !e.exited && e.name == n);
        if !taken(wanted) {
            return wanted.to_owned();
        }
        (2..)
            .map(|i| format!("{wanted}-{i}"))
            .find(|n| !taken(n))
            .unwrap_or_else(|| wanted.to_owned())
    }

    /// Adds `process`, selected by `rule`, and starts its agent.
    pub fn add(self: &Arc<Self>, process: Process, rule: &Rule, cfg: &Config) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = process.pid;
        let name = self.unique_name(&rule.name.render(&process));
        let (stop, stop_rx) = oneshot::channel();
        tracing::info!(id, pid, name, rule = rule.origin, "target found");
        self.table().insert(
            id,
            Entry {
                process,
                name: name.clone(),
                rule: rule.origin.clone(),
                language: None,
                handle: None,
                error: None,
                stop: Some(stop),
                exited: false,
            },
        );
        let host = self.clone();
        let plan = TargetPlan {
            id,
            pid,
            name,
            language: rule.language,
            safe_mode: rule.safe_mode,
            daemon_url: rule
                .daemon_url
                .clone()
                .unwrap_or_else(|| cfg.daemon_url.clone()),
            wake: rule.wake.unwrap_or(cfg.wake),
            build: rule.build.clone(),
        };
        tokio::spawn(async move {
            host.run_target(plan, stop_rx).await;
        });
        id
    }

    /// Marks the target of `pid` exited. Its agent is asked to look now (rather than at its
    /// next 200 ms check), so it tells the daemon and unregisters at once; but when the pid is
    /// still alive the process ran `execve` — another program now, whose facts the tracker
    /// reports afresh — and the old target is let go.
    pub fn exited(&self, pid: u32) {
        let still_alive = crate::target::alive(pid);
        for e in self.table().values_mut() {
            if e.process.pid == pid && !e.exited {
                e.exited = true;
                if still_alive {
                    if let Some(stop) = e.stop.take() {
                        let _ = stop.send(());
                    }
                } else if let Some(h) = &e.handle {
                    h.check_target();
                }
            }
        }
    }

    /// Waits until no exited target named `name` (other than `id`) is still running its agent,
    /// at most `within`.
    ///
    /// Why: a restarted service gets its predecessor's name, hence its daemon connection id.
    /// Registering that id while the old agent still holds it does not connect the daemon to
    /// the new DAP port (the daemon keeps the adapter it has under that id), and the old
    /// agent's unregister, moments later, deletes the connection the new one just made: the
    /// restarted target would show `awake` and never get a DAP session (seen with the real
    /// daemon in about one restart in three). So the new target is handed out — woken, or
    /// wakeable through the control plane — only once the old one has unregistered and left.
    /// A predecessor that failed to attach never registered and is not waited for.
    async fn predecessor_gone(&self, id: u64, name: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let waiting = self
                .table()
                .iter()
                .any(|(o, e)| *o != id && e.exited && e.error.is_none() && e.name == name);
            if !waiting {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(target = id, name, "the previous target of this name has not unregistered in {within:?}; going on (the daemon may keep the old connection)");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn set(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.table().get_mut(&id) {
            f(e);
        }
    }

    async fn run_target(self: Arc<Self>, plan: TargetPlan, stop_rx: oneshot::Receiver<()>) {
        let id = plan.id;
        match self.start_agent(&plan).await {
            Ok((agent, handle)) => {
                // The old agent needs up to its liveness check, the daemon's answer to its
                // unregister and a little scheduling.
                let within = self.settings.unregister_timeout + PREDECESSOR_SLACK;
                self.predecessor_gone(id, &plan.name, within).await;
                self.set(id, |e| {
                    e.handle = Some(handle.clone());
                    e.language = Some(handle.info.language);
                });
                // One that exited meanwhile is not woken: its agent is about to notice.
                let exited = self.table().get(&id).is_none_or(|e| e.exited);
                if plan.wake == Wake::Auto && !exited {
                    tokio::spawn(auto_wake(id, handle));
                }
                let reason = agent
                    .run(async move {
                        let _ = stop_rx.await;
                    })
                    .await;
                tracing::info!(target = id, pid = plan.pid, ?reason, "target's agent ended");
                self.table().remove(&id);
            }
            Err(why) => {
                tracing::warn!(target = id, pid = plan.pid, error = %why, "target cannot be attached");
                self.set(id, |e| e.error = Some(why));
                // Listed as failed until the process exits or serve lets it go.
                let gone = async {
                    while crate::target::alive(plan.pid) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                };
                tokio::select! {
                    () = gone => {}
                    _ = stop_rx => {}
                }
                self.table().remove(&id);
            }
        }
    }

    async fn start_agent(&self, plan: &TargetPlan) -> Result<(Agent, AgentHandle), String> {
        let pid = plan.pid;
        let choice = plan.language;
        let resolved = tokio::task::spawn_blocking(move || {
            let resolver = Resolver::open(pid, EngineOptions::default())
                .map_err(|e| format!("attaching to process {pid}: {e}"))?;
            let language = match choice {
                LanguageChoice::Go => "go",
                LanguageChoice::Rust => "rust",
                LanguageChoice::Auto => resolver
                    .language()
                    .map_err(|e| {
                        format!("detecting the language of process {pid}: {e} (set `language` in the rule)")
                    })?
                    .daemon_name(),
            };
            Ok::<_, String>((resolver, language))
        })
        .await
        .map_err(|e| format!("reading the debug info of process {pid} failed: {e}"))??;
        let (resolver, language) = resolved;
        let kernel = self.kernel().await?;
        let (engine, reader) = Engine::start_shared(resolver, &kernel);
        let s = &self.settings;
        let cfg = AttachConfig {
            pid,
            name: plan.name.clone(),
            daemon_url: plan.daemon_url.clone(),
            control_host: s.control_host.clone(),
            control_port: s.control_port,
            debug_port: 0,
            safe_mode: plan.safe_mode,
            language,
            workspace_root: daemon::target_cwd(pid),
            advertise_host: s.advertise_host.clone(),
            hostname: s.hostname.clone(),
            token: s.token.clone(),
            health_timeout: s.health_timeout,
            register_timeout: s.register_timeout,
            unregister_timeout: s.unregister_timeout,
            // Build identity: the rule's `build_commit`/`build_tag`, then the target itself
            // (environment, Go build info, git checkout), in the Go client's order.
            build: crate::buildinfo::for_process(pid, &plan.build),
            // A wake through this host names no other daemon than the rule's.
            allow_daemon_urls: Vec::new(),
            // The DAP listener is on `advertise_host`; a non-loopback one is refused unless a
            // peer is named (`--dap-allow-peer`, the central daemon's address).
            dap_allow_peers: s.dap_allow_peers.clone(),
            cpu_budget: s.cpu_budget,
        };
        let (agent, handle) = Agent::new(cfg, engine, reader);
        handle.set_control_port(s.control_port);
        // The daemon reaches this target's own control plane under its prefix.
        agent.set_control_url(format!("{}/targets/{}", s.control_url, plan.id));
        Ok((agent, handle))
    }

    /// Stops every target (each sleeps: unregisters, drops its probes) and waits for the
    /// table to empty, at most `within`.
    pub async fn stop_all(&self, within: Duration) {
        for e in self.table().values_mut() {
            if let Some(s) = e.stop.take() {
                let _ = s.send(());
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline
            && self.table().values().any(|e| e.handle.is_some())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What a target's task needs to start its agent.
struct TargetPlan {
    id: u64,
    pid: u32,
    name: String,
    language: LanguageChoice,
    safe_mode: bool,
    daemon_url: String,
    wake: Wake,
    build: crate::buildinfo::Explicit,
}

fn state_of(e: &Entry) -> String {
    if e.exited {
        return "exited".to_owned();
    }
    match (&e.handle, &e.error) {
        (Some(h), _) => h.view().state.to_owned(),
        (None, Some(_)) => "failed".to_owned(),
        (None, None) => "starting".to_owned(),
    }
}

fn entry_json(id: u64, e: &Entry) -> Value {
    let view = e.handle.as_ref().map(AgentHandle::view);
    json!({
        "id": id.to_string(),
        "pid": e.process.pid,
        "ns_pid": e.process.ns_pid,
        "exe": e.process.exe,
        "comm": e.process.comm,
        "container": e.process.container,
        "language": e.language,
        "state": state_of(e),
        "name": e.name,
        "connection_id": view.as_ref().and_then(|v| v.connection_id.clone()),
        "debug_port": view.as_ref().map_or(0, |v| v.debug_port),
        "rule": e.rule,
        "error": e.error,
        // The build identity `/detrix/info` shows (issue #17), once the target's agent runs.
        "build_commit": e.handle.as_ref().and_then(|h| h.info.build.commit.clone()),
        "build_tag": e.handle.as_ref().and_then(|h| h.info.build.tag.clone()),
        "build_source": e.handle.as_ref().and_then(|h| h.info.build.source()),
        "build_id": e.handle.as_ref().and_then(|h| h.info.build.build_id.clone()),
    })
}

impl Host {
    /// Applies reloaded rules: targets no rule selects any more are let go (they sleep,
    /// unregister and leave); those still selected are not touched, whatever rule now
    /// selects them; running processes the new rules select become targets.
    pub fn reload(self: &Arc<Self>, cfg: &Config) {
        let mut kept = std::collections::HashSet::new();
        for e in self.table().values_mut() {
            if e.exited {
                continue;
            }
            if cfg.rules.iter().any(|r| r.select.matches(&e.process)) {
                kept.insert(e.process.pid);
            } else if let Some(stop) = e.stop.take() {
                tracing::info!(
                    pid = e.process.pid,
                    name = e.name,
                    "no rule selects this target any more; letting it go"
                );
                let _ = stop.send(());
            }
        }
        let me = std::process::id();
        for pid in crate::discover::scan().unwrap_or_default() {
            if pid == me || kept.contains(&pid) {
                continue;
            }
            let Ok(p) = Process::read(pid) else { continue };
            if let Some(rule) = cfg.rules.iter().find(|r| r.select.matches(&p)) {
                self.add(p, rule, cfg);
                self.stats
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .selected += 1;
            }
        }
    }
}

/// Feeds `host` from `tracker` until `shutdown` resolves, then stops every target. Each
/// config from `reloads` replaces the rules ([`Host::reload`]).
///
/// # Errors
/// The tracker's socket failed.
pub async fn run(
    host: Arc<Host>,
    mut cfg: Config,
    mut tracker: Tracker,
    mut reloads: tokio::sync::mpsc::Receiver<Config>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let me = std::process::id();
    let mut budget = tokio::time::interval_at(
        tokio::time::Instant::now() + HOST_BUDGET_WINDOW,
        HOST_BUDGET_WINDOW,
    );
    let mut breaker: Option<tokio::task::JoinHandle<()>> = None;
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            _ = budget.tick() => {
                // On its own task: a target's registry busy with a long install must not hold
                // up discovery.
                if breaker.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                    let h = host.clone();
                    breaker = Some(tokio::spawn(async move {
                        h.enforce_host_budget().await;
                    }));
                }
            }
            Some(new) = reloads.recv() => {
                host.reload(&new);
                cfg = new;
            }
            change = tracker.next() => match change {
                Err(e) => break Err(e),
                Ok(Change::Started { process, exec_ns }) => {
                    host.stats.lock().unwrap_or_else(PoisonError::into_inner).started += 1;
                    if process.pid == me {
                        continue;
                    }
                    let Some(rule) = cfg.rules.iter().find(|r| r.select.matches(&process)) else {
                        continue;
                    };
                    host.add(process, rule, &cfg);
                    let mut st = host.stats.lock().unwrap_or_else(PoisonError::into_inner);
                    st.selected += 1;
                    if let Some(ns) = exec_ns {
                        st.latency.observe(ms_since(ns) / 1000.0);
                    }
                }
                Ok(Change::Exited { pid }) => {
                    host.stats.lock().unwrap_or_else(PoisonError::into_inner).exited += 1;
                    host.exited(pid);
                }
            }
        }
    };
    if let Some(b) = breaker {
        b.abort();
    }
    host.stop_all(Duration::from_millis(1500)).await;
    result
}

/// How long `/metrics` and the host breaker wait for one target's counters.
const STATS_WAIT: Duration = Duration::from_millis(500);

/// Beyond the unregister timeout, how long a restarted target waits for its predecessor of
/// the same name to leave ([`Host::predecessor_gone`]).
const PREDECESSOR_SLACK: Duration = Duration::from_secs(2);

/// How often the host-wide CPU breaker weighs every probe.
const HOST_BUDGET_WINDOW: Duration = Duration::from_secs(1);

/// How many times `wake = auto` tries before it leaves the target asleep for an operator.
const AUTO_WAKE_ATTEMPTS: u32 = 8;
/// The longest pause between two automatic wakes.
const AUTO_WAKE_MAX_DELAY: Duration = Duration::from_secs(30);

/// `wake = auto`: wakes the target, and while the daemon is unreachable or refuses (it may be
/// starting, restarting or briefly overloaded — a busy daemon's `/health` timing out is the
/// common case), tries again after 1, 2, 4 … 30 s, [`AUTO_WAKE_ATTEMPTS`] times in all (about
/// three minutes). A target that exited, or whose DAP port cannot be opened, is not retried:
/// another try would fail the same way. Each failure is logged with its reason; the last one
/// says how to wake by hand.
async fn auto_wake(id: u64, handle: crate::daemon::AgentHandle) {
    use crate::daemon::lifecycle::WakeError;
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=AUTO_WAKE_ATTEMPTS {
        match handle.wake(None).await {
            Ok(_) => return,
            Err(e @ (WakeError::Daemon(_) | WakeError::InProgress))
                if attempt < AUTO_WAKE_ATTEMPTS =>
            {
                tracing::info!(target = id, attempt, retry_in = ?delay, error = %e, "automatic wake failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(AUTO_WAKE_MAX_DELAY);
            }
            Err(e) => {
                tracing::warn!(target = id, attempt, error = %e, "automatic wake failed; POST /detrix/targets/{id}/wake to retry");
                return;
            }
        }
    }
}
