//! The agent's actor: the I/O shell around [`Lifecycle`]. It owns the lifecycle and performs
//! its effects (HTTP calls to the daemon, the DAP listener, probe removal), publishes the
//! [`View`] the control plane reads, and wires the other parts together at start: the
//! registry thread that owns the engine ([`super::registry`]), the hit pump feeding it, the
//! [`Hub`], the debugger worker ([`super::debugger`]) and the sessions ([`super::session`]).
//!
//! Shape: one actor task handles control requests one at a time (so five concurrent wakes
//! give one registration and four `already_awake`); the control plane reads a published
//! [`View`] for `/status`, so it answers `waking` while a wake is under way. The DAP listener
//! runs in its own task, so the daemon's connect-back during `POST /api/v1/connections` is
//! served while the actor waits for the 201 (contract §0 rule 2).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::client::{DaemonClient, Registration};
use super::debugger::{spawn_fallback_worker, JobRequest};
use super::hub::Hub;
use super::lifecycle::{Effect, Input, Lifecycle, Phase, SleepReply, WakeError, WakeReply};
use super::recorder::DapRecorder;
use super::registry::{Probes, Registry, StatsHandle};
use super::session::{accept_loop, SessionCtx};
use super::AttachConfig;
use crate::dap::facade::Options;
use crate::dap::template::Prefix;
use crate::debuginfo::Language;
use crate::engine::{Engine, EngineError, HitReader};
use crate::target;

/// How often the CPU breaker looks at each probe's cost.
const BREAKER_WINDOW: Duration = Duration::from_secs(1);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A control request for the actor.
#[derive(Debug)]
pub enum Command {
    Wake {
        daemon_url: Option<String>,
        reply: oneshot::Sender<Result<WakeReply, WakeError>>,
    },
    Sleep {
        reply: oneshot::Sender<SleepReply>,
    },
}

/// What `/detrix/status` shows (contract §2.2 `StatusResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub state: &'static str,
    pub name: String,
    pub control_host: String,
    pub control_port: u16,
    pub debug_port: u16,
    pub debug_port_active: bool,
    pub daemon_url: String,
    pub connection_id: Option<String>,
    /// Awake, but the daemon's DAP session ended (it died or closed the socket): its probes are
    /// gone and the next wake registers again. Shown as `"daemon_session":"lost"`.
    pub session_lost: bool,
    /// Hits dropped because the daemon did not read its session fast enough (shown when > 0).
    pub dropped_hits: u64,
    /// Probes the CPU breaker switched off, and the last one's reason (shown when > 0).
    pub switched_off: u64,
    pub switched_off_reason: Option<String>,
}

/// What `/detrix/info` shows.
#[derive(Debug, Clone)]
pub struct Info {
    pub name: String,
    pub pid: u32,
    pub language: &'static str,
    pub executable: String,
    /// The registered `workspaceRoot`: what `/detrix/files/read` serves.
    pub workspace_root: String,
    pub build: crate::buildinfo::BuildInfo,
}

/// The control plane's side of the agent: send commands, read the view.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    tx: mpsc::Sender<Command>,
    view: Arc<Mutex<View>>,
    pub info: Arc<Info>,
    /// The token remote control-plane callers must present.
    pub token: Option<String>,
    /// The configured daemon URL and those named by `--allow-daemon-url`: the only URLs a wake
    /// may name (the token is sent to it).
    pub daemon_urls: Arc<[String]>,
    /// The engine's counters, per probe and for the target (`/metrics`).
    pub stats: StatsHandle,
    /// Wakes the agent's liveness check ([`AgentHandle::check_target`]).
    recheck: Arc<tokio::sync::Notify>,
}

impl AgentHandle {
    /// The current status.
    #[must_use]
    pub fn view(&self) -> View {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a wake may name `url` (trailing `/` ignored).
    #[must_use]
    pub fn daemon_url_allowed(&self, url: &str) -> bool {
        let url = url.trim_end_matches('/');
        self.daemon_urls
            .iter()
            .any(|u| u.trim_end_matches('/') == url)
    }

    /// Records the control plane's bound port (known only after it binds).
    pub fn set_control_port(&self, port: u16) {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .control_port = port;
    }

    /// Wakes the agent (or reports it already is).
    ///
    /// # Errors
    /// As [`WakeError`]; [`WakeError::TargetGone`] once the agent has stopped.
    pub async fn wake(&self, daemon_url: Option<String>) -> Result<WakeReply, WakeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Wake { daemon_url, reply })
            .await
            .map_err(|_| WakeError::TargetGone)?;
        rx.await.map_err(|_| WakeError::TargetGone)?
    }

    /// Asks the agent to look at its target now rather than at its next 200 ms check: `serve`
    /// calls it when discovery saw the process exit, so the agent announces the exit and
    /// unregisters at once (a restarted instance waits for that before it registers).
    pub fn check_target(&self) {
        self.recheck.notify_one();
    }

    /// Puts the agent to sleep (or reports it already is).
    pub async fn sleep(&self) -> SleepReply {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Sleep { reply }).await.is_err() {
            return SleepReply("already_sleeping");
        }
        rx.await.unwrap_or(SleepReply("already_sleeping"))
    }
}

/// Why [`Agent::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    TargetExited,
    Shutdown,
}

/// The agent for one target.
pub struct Agent {
    cfg: AttachConfig,
    life: Lifecycle,
    probes: Probes,
    hub: Arc<Hub>,
    client: DaemonClient,
    view: Arc<Mutex<View>>,
    listener: Option<JoinHandle<()>>,
    exit_tx: watch::Sender<bool>,
    pump: JoinHandle<()>,
    rx: mpsc::Receiver<Command>,
    control_url: Arc<Mutex<Option<String>>>,
    recorder: Option<DapRecorder>,
    fallback: mpsc::UnboundedSender<JobRequest>,
    session_opts: Options,
    /// The process attached to (pid + start time + executable), checked every 200 ms.
    target: target::Target,
    /// [`Hub::ended`] when last looked at: a change while awake with no live session is a
    /// lost daemon session.
    sessions_ended: u64,
    /// The CPU breaker's last run, while it waits for the registry.
    breaker: Option<JoinHandle<()>>,
    /// Notified by [`AgentHandle::check_target`].
    recheck: Arc<tokio::sync::Notify>,
}

impl Agent {
    /// Starts the engine-side tasks (the registry thread that owns the engine, the hit pump
    /// feeding it, the debugger worker) and returns the agent and its handle. Must run inside a
    /// tokio runtime.
    #[must_use]
    pub fn new(cfg: AttachConfig, engine: Engine, mut reader: HitReader) -> (Self, AgentHandle) {
        let executable = engine
            .resolver()
            .target
            .exe_name
            .to_string_lossy()
            .into_owned();
        let target_language = engine.resolver().language().unwrap_or(Language::Other);
        let target = engine.resolver().target.clone();
        let hub = Arc::new(Hub::default());
        let pump_hub = hub.clone();
        let probes = Probes::spawn(Registry::new(engine), move |hits| {
            pump_hub.publish(&Arc::new(hits));
        });
        let pump_probes = probes.clone();
        let pump_target = target.clone();
        let pump = tokio::spawn(async move {
            loop {
                match reader.next_batch().await {
                    Ok(hits) if hits.is_empty() => {}
                    // The probes filter by pid only: a later process given the target's pid
                    // (running the same binary) would be captured until the liveness check
                    // notices. Its hits are checked against the start time here, once a batch.
                    Ok(hits) if pump_target.gone().is_some() => {
                        tracing::info!(
                            hits = hits.len(),
                            "hits dropped: the target process is gone"
                        );
                    }
                    Ok(hits) => pump_probes.hits(hits),
                    Err(e) => {
                        tracing::error!(error = %e, "reading hits failed; no more values will be delivered");
                        break;
                    }
                }
            }
        });
        let life = Lifecycle::new(cfg.daemon_url.clone());
        let view = Arc::new(Mutex::new(View {
            state: life.phase.as_str(),
            name: cfg.name.clone(),
            control_host: cfg.control_host.clone(),
            control_port: 0,
            debug_port: 0,
            debug_port_active: false,
            daemon_url: cfg.daemon_url.clone(),
            connection_id: None,
            session_lost: false,
            dropped_hits: 0,
            switched_off: 0,
            switched_off_reason: None,
        }));
        let (tx, rx) = mpsc::channel(64);
        let recheck = Arc::new(tokio::sync::Notify::new());
        let info = Arc::new(Info {
            name: cfg.name.clone(),
            pid: cfg.pid,
            language: cfg.language,
            executable,
            workspace_root: cfg.workspace_root.clone(),
            build: cfg.build.clone(),
        });
        let handle = AgentHandle {
            tx,
            view: view.clone(),
            info,
            token: cfg.token.clone(),
            daemon_urls: std::iter::once(cfg.daemon_url.clone())
                .chain(cfg.allow_daemon_urls.iter().cloned())
                .collect(),
            stats: probes.stats_handle(),
            recheck: recheck.clone(),
        };
        let (exit_tx, _) = watch::channel(false);
        let client = DaemonClient::new(cfg.token.clone());
        let fallback = spawn_fallback_worker(probes.clone(), cfg.pid, target_language);
        let session_opts = Options {
            prefix: Prefix::for_language(cfg.language),
            target: target_language,
            safe_mode: cfg.safe_mode,
        };
        let agent = Self {
            cfg,
            life,
            probes,
            hub,
            client,
            view,
            listener: None,
            exit_tx,
            pump,
            rx,
            control_url: Arc::default(),
            recorder: None,
            fallback,
            session_opts,
            sessions_ended: 0,
            target,
            breaker: None,
            recheck,
        };
        (agent, handle)
    }

    /// Records every DAP message of every session to `recorder`.
    pub fn record_dap(&mut self, recorder: DapRecorder) {
        self.recorder = Some(recorder);
    }

    /// The control plane's URL, sent to the daemon as `controlPlaneUrl`.
    pub fn set_control_url(&self, url: String) {
        *self
            .control_url
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(url);
    }

    /// Handles control requests until the target exits or `shutdown` resolves; then sleeps
    /// (unregisters, removes every probe) and returns.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> ExitReason {
        tokio::pin!(shutdown);
        let mut liveness = tokio::time::interval(Duration::from_millis(200));
        let mut breaker =
            tokio::time::interval_at(tokio::time::Instant::now() + BREAKER_WINDOW, BREAKER_WINDOW);
        let recheck = self.recheck.clone();
        let reason = loop {
            tokio::select! {
                () = recheck.notified() => liveness.reset_immediately(),
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Wake { daemon_url, reply }) => {
                        let out = self.drive(Input::Wake { daemon_url }).await;
                        let _ = reply.send(out.wake.unwrap_or(Err(WakeError::InProgress)));
                    }
                    Some(Command::Sleep { reply }) => {
                        let out = self.drive(Input::Sleep).await;
                        let _ = reply.send(out.sleep.unwrap_or(SleepReply("already_sleeping")));
                    }
                    None => break ExitReason::Shutdown,
                },
                _ = liveness.tick() => {
                    if let Some(gone) = self.target.gone() {
                        tracing::info!(pid = self.cfg.pid, "{}", gone.describe());
                        self.drive(Input::TargetExited).await;
                        break ExitReason::TargetExited;
                    }
                    self.watch_sessions().await;
                }
                _ = breaker.tick() => self.enforce_budget(),
                () = &mut shutdown => {
                    self.drive(Input::Sleep).await;
                    break ExitReason::Shutdown;
                }
            }
        };
        self.pump.abort();
        if let Some(b) = self.breaker.take() {
            b.abort();
        }
        reason
    }

    /// The CPU breaker: every probe whose cost over the last window exceeds the per-probe
    /// budget is switched off; how many and why (those the host's budget switched off too)
    /// show in `/detrix/status` and `/metrics`, and the daemon's session gets a `breakpoint`
    /// event for each (`changed`, `verified:false`, the reason). On its own task: the registry may be busy with
    /// a long install, and wake and sleep must not wait for it.
    fn enforce_budget(&mut self) {
        if self.breaker.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let probes = self.probes.clone();
        let view = self.view.clone();
        let budget = self.cfg.cpu_budget;
        let hub = self.hub.clone();
        self.breaker = Some(tokio::spawn(async move {
            let off = probes.enforce_budget(BREAKER_WINDOW, budget).await;
            if let Some((_, why)) = off.last() {
                let mut v = view.lock().unwrap_or_else(PoisonError::into_inner);
                v.switched_off += off.len() as u64;
                v.switched_off_reason = Some(why.clone());
            }
            // The daemon's session reports each as a `breakpoint` event (`dap::facade`).
            hub.switched_off(&off);
        }));
    }

    /// Notices a daemon session that ended while awake (the daemon died, or closed the socket
    /// without a sleep) and one that came back by itself.
    async fn watch_sessions(&mut self) {
        let ended = self.hub.ended();
        let live = self.hub.live() > 0;
        if ended != self.sessions_ended && !live && self.life.phase == Phase::Awake {
            tracing::warn!(
                connection_id = self.life.connection_id.as_deref().unwrap_or(""),
                "the daemon's DAP session ended without a sleep; its probes are removed and the next wake registers again"
            );
            self.drive(Input::SessionLost).await;
        } else if live && self.life.session_lost {
            self.drive(Input::SessionResumed).await;
        }
        self.sessions_ended = ended;
        let dropped = self.hub.dropped_hits();
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dropped_hits = dropped;
    }

    fn publish_view(&self) {
        let mut v = self.view.lock().unwrap_or_else(PoisonError::into_inner);
        v.session_lost = self.life.session_lost;
        v.state = self.life.phase.as_str();
        v.debug_port = self.life.debug_port;
        v.debug_port_active = self.life.listening;
        v.connection_id = self.life.connection_id.clone();
        v.daemon_url = if self.life.connection_id.is_some() {
            self.life.active_url.clone()
        } else {
            self.life.daemon_url.clone()
        };
    }

    /// Steps the lifecycle and performs its effects until nothing is left to do.
    async fn drive(&mut self, input: Input) -> Outcome {
        let mut out = Outcome::default();
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let effects = self.life.step(input);
            self.publish_view();
            for fx in effects {
                tracing::debug!(?fx, "effect");
                match fx {
                    Effect::CheckHealth { url } => queue.push_back(Input::HealthChecked(
                        self.client.health(&url, self.cfg.health_timeout).await,
                    )),
                    Effect::StartListener => {
                        queue.push_back(Input::ListenerStarted(self.start_listener().await));
                    }
                    Effect::Register { url, port } => {
                        let reg = self.registration(port);
                        let r = self
                            .client
                            .register(&url, &reg, self.cfg.register_timeout)
                            .await;
                        match &r {
                            Ok(id) => tracing::info!(
                                url,
                                connection_id = id,
                                port,
                                "registered with the daemon"
                            ),
                            Err(e) => tracing::warn!(url, error = %e, "registration failed"),
                        }
                        queue.push_back(Input::Registered(r));
                    }
                    Effect::Unregister { url, connection_id } => {
                        match self
                            .client
                            .unregister(&url, &connection_id, self.cfg.unregister_timeout)
                            .await
                        {
                            Ok(()) => {
                                tracing::info!(url, connection_id, "unregistered from the daemon");
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "unregistering failed; the daemon will see the DAP socket close");
                            }
                        }
                    }
                    Effect::StopListener => self.stop_listener(),
                    Effect::DropProbes => self.probes.remove_all().await,
                    Effect::AnnounceExit => self.announce_exit().await,
                    Effect::ReplyWake(r) => out.wake = Some(r),
                    Effect::ReplySleep(r) => out.sleep = Some(r),
                    Effect::Exit => out.exit = true,
                }
            }
        }
        out
    }

    fn registration(&self, port: u16) -> Registration {
        Registration {
            host: self.cfg.advertise_host.clone(),
            port,
            language: self.cfg.language.to_owned(),
            name: self.cfg.name.clone(),
            workspace_root: self.cfg.workspace_root.clone(),
            hostname: self.cfg.hostname.clone(),
            pid: (self.cfg.language == "rust").then_some(self.cfg.pid),
            safe_mode: self.cfg.safe_mode,
            control_plane_url: self
                .control_url
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            build_commit: self.cfg.build.commit.clone(),
            build_tag: self.cfg.build.tag.clone(),
        }
    }

    async fn start_listener(&mut self) -> Result<u16, String> {
        let ip: IpAddr = self.cfg.advertise_host.parse().map_err(|_| {
            format!(
                "advertise host `{}` is not an IP address; pass an IP literal such as 127.0.0.1",
                self.cfg.advertise_host
            )
        })?;
        if !crate::peer::is_loopback(ip) && self.cfg.dap_allow_peers.is_empty() {
            return Err(format!("advertise host {ip} is not loopback: the DAP port would be open to the network; name the daemon's address with --dap-allow-peer ADDR"));
        }
        let addr = SocketAddr::new(ip, self.cfg.debug_port);
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            format!("binding {addr}: {e} (choose another --debug-port or 0 for any)")
        })?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        tracing::info!(%addr, port, "DAP listener serving");
        let hub = self.hub.clone();
        let probes = self.probes.clone();
        let ctx = SessionCtx {
            hub,
            probes,
            opts: self.session_opts,
            exit_rx: self.exit_tx.subscribe(),
            recorder: self.recorder.clone(),
            fallback: self.fallback.clone(),
            gate: crate::peer::DapGate {
                daemon_url: self.life.active_url.clone(),
                remote_peers: self.cfg.dap_allow_peers.clone(),
            },
        };
        self.listener = Some(tokio::spawn(accept_loop(listener, ctx)));
        Ok(port)
    }

    fn stop_listener(&mut self) {
        if let Some(l) = self.listener.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every session; each
            // session's facade then removes its probes as it is dropped.
            l.abort();
        }
    }

    /// Sends `exited` + `terminated` on every session and gives them a moment to flush.
    async fn announce_exit(&mut self) {
        let _ = self.exit_tx.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.hub.live() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    wake: Option<Result<WakeReply, WakeError>>,
    sleep: Option<SleepReply>,
    exit: bool,
}
