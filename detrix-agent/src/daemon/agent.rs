//! The I/O shell around [`Lifecycle`]: performs its effects (HTTP calls to the daemon, the DAP
//! listener, probe removal), serves each DAP connection with a [`Facade`], and routes hits from
//! the one [`HitReader`] to the sessions.
//!
//! Shape: one actor task owns the lifecycle and handles control requests one at a time (so five
//! concurrent wakes give one registration and four `already_awake`); the control plane reads a
//! published [`View`] for `/status`, so it answers `waking` while a wake is under way. The DAP
//! listener runs in its own task, so the daemon's connect-back during `POST
//! /api/v1/connections` is served while the actor waits for the 201 (contract §0 rule 2).
//!
//! Sessions (issue #12 point 1): a connection is served only if [`DapGate`] admits its peer
//! (root or the daemon's user on loopback, a `--dap-allow-peer` address otherwise), and at most
//! one at a time: a second connection waits [`SECOND_SESSION_GRACE`] for the live one to end (a
//! daemon reconnecting, a connect-and-close probe) and is otherwise closed with a logged reason;
//! it never cancels the live one. Each session's probes go when it ends, whatever the reason.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::client::{DaemonClient, Registration};
use super::lifecycle::{Effect, Input, Lifecycle, SleepReply, WakeError, WakeReply};
use super::probes::Registry;
use super::AttachConfig;
use crate::dap::codec::{encode_frame, read_frame};
use crate::dap::facade::{Evaluated, Job, Options};
use crate::dap::template::Prefix;
use crate::dap::{Facade, ProbeSet};
use crate::debuginfo::Language;
use crate::engine::{Engine, EngineError, Hit, HitReader, LogpointId, LogpointSpec};
use crate::fallback::{self, Debugger};
use crate::peer::DapGate;
use crate::target;

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
}

/// What `/detrix/info` shows.
#[derive(Debug, Clone)]
pub struct Info {
    pub name: String,
    pub pid: u32,
    pub language: &'static str,
    pub executable: String,
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

    /// Records the control plane's bound port (known only after it binds).
    pub fn set_control_port(&self, port: u16) {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .control_port = port;
    }

    /// Whether a wake may name `url` (trailing `/` ignored).
    #[must_use]
    pub fn daemon_url_allowed(&self, url: &str) -> bool {
        let url = url.trim_end_matches('/');
        self.daemon_urls
            .iter()
            .any(|u| u.trim_end_matches('/') == url)
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

type SharedEngine = Arc<Mutex<Registry>>;

/// Writes every DAP message both ways as JSON lines, in the format of the shared transcripts
/// (`{"t", "dir", "msg"}`), so conversations with the real daemon can be kept as golden files.
#[derive(Clone)]
pub struct DapRecorder {
    out: Arc<Mutex<std::fs::File>>,
    start: std::time::Instant,
}

impl DapRecorder {
    /// Creates (truncates) `path`: mode 0600, never through a symlink ([`crate::privs`]).
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn create(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            out: Arc::new(Mutex::new(crate::privs::create_private(path)?)),
            start: std::time::Instant::now(),
        })
    }

    fn write(&self, dir: &str, msg: &Value) {
        use std::io::Write as _;
        let line = serde_json::json!({"t": (self.start.elapsed().as_secs_f64() * 10_000.0).round() / 10_000.0, "dir": dir, "msg": msg});
        let mut f = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = writeln!(f, "{line}") {
            tracing::warn!(error = %e, "writing the DAP recording failed");
        }
    }

    fn note(&self, note: &str, generation: u64) {
        self.write(
            "note",
            &serde_json::json!({"note": note, "conn": generation + 1}),
        );
    }
}

impl std::fmt::Debug for DapRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DapRecorder").finish_non_exhaustive()
    }
}

fn lock(engine: &SharedEngine) -> MutexGuard<'_, Registry> {
    engine.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The probes of one DAP session, on the shared engine.
struct EngineProbes {
    engine: SharedEngine,
}

impl ProbeSet for EngineProbes {
    fn add(&mut self, file: &str, spec: &LogpointSpec) -> Result<LogpointId, String> {
        let r = lock(&self.engine).add(file, spec);
        match &r {
            Ok(id) => {
                tracing::info!(file, line = spec.line, exprs = ?spec.exprs, logpoint = id.0, "logpoint installed")
            }
            Err(e) => {
                tracing::info!(file, line = spec.line, exprs = ?spec.exprs, error = %e, "logpoint refused")
            }
        }
        r.map_err(|e| e.to_string())
    }

    fn remove(&mut self, id: LogpointId) {
        if let Err(e) = lock(&self.engine).remove(id) {
            tracing::warn!(logpoint = id.0, error = %e, "removing a logpoint failed");
        }
    }
}

/// One live DAP connection, as the hub knows it.
struct Slot {
    generation: u64,
    hits: mpsc::Sender<Arc<Vec<Hit>>>,
}

/// Routes hits to the live session (at most one).
#[derive(Default)]
struct Hub {
    slots: Mutex<Vec<Slot>>,
    next_generation: std::sync::atomic::AtomicU64,
}

/// How many hit batches may wait for a slow session before newer ones are dropped.
const SESSION_HIT_QUEUE: usize = 1024;

/// How long a second DAP connection waits for the live session to end before it is refused.
const SECOND_SESSION_GRACE: Duration = Duration::from_secs(2);

/// Most DAP connections held at once (the live session plus those being checked or waiting
/// for it); more are closed at accept, so thousands of idle connections cost nothing.
const MAX_DAP_CONNECTIONS: usize = 16;

/// A session that sends no request within this long after it is admitted is closed, so an
/// idle connection cannot hold the one session slot (the daemon sends `initialize` at once).
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Hub {
    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Becomes the one live session, or `None` while another is live.
    fn join(self: &Arc<Self>) -> Option<(SlotGuard, mpsc::Receiver<Arc<Vec<Hit>>>)> {
        let mut slots = self.slots();
        if !slots.is_empty() {
            return None;
        }
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    async fn join_when_free(
        self: &Arc<Self>,
    ) -> Option<(SlotGuard, mpsc::Receiver<Arc<Vec<Hit>>>)> {
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

    fn publish(&self, batch: &Arc<Vec<Hit>>) {
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

    fn live(&self) -> usize {
        self.slots().len()
    }
}

/// Removes a session's slot when the session ends, however it ends.
struct SlotGuard {
    hub: Arc<Hub>,
    generation: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.hub.slots().retain(|s| s.generation != self.generation);
    }
}

/// The agent for one target.
pub struct Agent {
    cfg: AttachConfig,
    life: Lifecycle,
    engine: SharedEngine,
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
}

impl Agent {
    /// Starts the engine-side tasks (hit pump) and returns the agent and its handle. Must run
    /// inside a tokio runtime.
    #[must_use]
    pub fn new(cfg: AttachConfig, engine: Engine, mut reader: HitReader) -> (Self, AgentHandle) {
        let executable = engine
            .resolver()
            .target
            .exe_name
            .to_string_lossy()
            .into_owned();
        let target_language = engine.resolver().language().unwrap_or(Language::Other);
        let engine = Arc::new(Mutex::new(Registry::new(engine)));
        let hub = Arc::new(Hub::default());
        let pump_hub = hub.clone();
        let pump_engine = engine.clone();
        let pump = tokio::spawn(async move {
            loop {
                match reader.next_batch().await {
                    Ok(hits) if hits.is_empty() => {}
                    Ok(hits) => {
                        let hits = lock(&pump_engine).translate(hits);
                        if !hits.is_empty() {
                            pump_hub.publish(&Arc::new(hits));
                        }
                    }
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
        }));
        let (tx, rx) = mpsc::channel(64);
        let info = Arc::new(Info {
            name: cfg.name.clone(),
            pid: cfg.pid,
            language: cfg.language,
            executable,
        });
        let handle = AgentHandle {
            tx,
            view: view.clone(),
            info,
            token: cfg.token.clone(),
            daemon_urls: std::iter::once(cfg.daemon_url.clone())
                .chain(cfg.allow_daemon_urls.iter().cloned())
                .collect(),
        };
        let (exit_tx, _) = watch::channel(false);
        let client = DaemonClient::new(cfg.token.clone());
        let fallback = spawn_fallback_worker(engine.clone(), cfg.pid, target_language);
        let session_opts = Options {
            prefix: Prefix::for_language(cfg.language),
            target: target_language,
            safe_mode: cfg.safe_mode,
        };
        let agent = Self {
            cfg,
            life,
            engine,
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
        let reason = loop {
            tokio::select! {
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
                    if !target::alive(self.cfg.pid) {
                        tracing::info!(pid = self.cfg.pid, "target process exited");
                        self.drive(Input::TargetExited).await;
                        break ExitReason::TargetExited;
                    }
                }
                () = &mut shutdown => {
                    self.drive(Input::Sleep).await;
                    break ExitReason::Shutdown;
                }
            }
        };
        self.pump.abort();
        reason
    }

    fn publish_view(&self) {
        let mut v = self.view.lock().unwrap_or_else(PoisonError::into_inner);
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
                        queue.push_back(Input::ListenerStarted(self.start_listener().await))
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
                                tracing::info!(url, connection_id, "unregistered from the daemon")
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "unregistering failed; the daemon will see the DAP socket close")
                            }
                        }
                    }
                    Effect::StopListener => self.stop_listener(),
                    Effect::DropProbes => {
                        if let Err(e) = lock(&self.engine).remove_all() {
                            tracing::warn!(error = %e, "removing probes failed");
                        }
                    }
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
        let engine = self.engine.clone();
        let ctx = SessionCtx {
            hub,
            engine,
            opts: self.session_opts,
            exit_rx: self.exit_tx.subscribe(),
            recorder: self.recorder.clone(),
            fallback: self.fallback.clone(),
            gate: DapGate {
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

/// What every session of a listener shares.
#[derive(Clone)]
struct SessionCtx {
    hub: Arc<Hub>,
    engine: SharedEngine,
    opts: Options,
    exit_rx: watch::Receiver<bool>,
    recorder: Option<DapRecorder>,
    fallback: mpsc::UnboundedSender<JobRequest>,
    gate: DapGate,
}

/// A debugger job and where its outcome goes.
struct JobRequest {
    job: Job,
    reply: mpsc::UnboundedSender<(u64, Result<Vec<Evaluated>, String>)>,
}

/// How long a debugger round waits for its line to run.
const FALLBACK_HIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs debugger jobs one at a time (one debugger per process at a time), taking the agent's
/// uprobes off the process for each and putting them back after.
fn spawn_fallback_worker(
    engine: SharedEngine,
    pid: u32,
    language: Language,
) -> mpsc::UnboundedSender<JobRequest> {
    let (tx, mut rx) = mpsc::unbounded_channel::<JobRequest>();
    tokio::spawn(async move {
        while let Some(JobRequest { job, reply }) = rx.recv().await {
            if reply.is_closed() {
                continue;
            }
            if !job.delay.is_zero() {
                tokio::time::sleep(job.delay).await;
                if reply.is_closed() {
                    continue;
                }
            }
            let debugger = if language == Language::Go {
                Debugger::Delve
            } else {
                Debugger::Lldb
            };
            let req = fallback::Request {
                pid,
                debugger,
                file: job.file.clone(),
                line: job.line,
                exprs: job.exprs.clone(),
                hit_timeout: FALLBACK_HIT_TIMEOUT,
            };
            if let Err(e) = lock(&engine).suspend() {
                tracing::warn!(error = %e, "taking the uprobes off before a debugger round failed");
            }
            let started = std::time::Instant::now();
            let outcome = fallback::evaluate_at(&req).await.map_err(|e| e.to_string());
            for (id, why) in lock(&engine).resume() {
                tracing::warn!(logpoint = id.0, %why, "a logpoint could not be put back after a debugger round");
            }
            tracing::info!(file = job.file, line = job.line, exprs = ?job.exprs, ms = started.elapsed().as_millis() as u64, ok = outcome.is_ok(), "debugger round done");
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, "debugger round failed");
            }
            let _ = reply.send((job.token, outcome));
        }
    });
    tx
}

async fn accept_loop(listener: TcpListener, ctx: SessionCtx) {
    let mut sessions = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_DAP_CONNECTIONS));
    let mut over_cap = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        over_cap += 1;
                        if over_cap.is_power_of_two() {
                            tracing::warn!(%peer, refused = over_cap, "DAP connection refused: {MAX_DAP_CONNECTIONS} connections are already open (MAX_DAP_CONNECTIONS)");
                        }
                        continue;
                    };
                    let ctx = ctx.clone();
                    sessions.spawn(async move {
                        let _permit = permit;
                        let local = stream.local_addr().unwrap_or(peer);
                        match ctx.gate.admit(local, peer) {
                            Ok(who) => tracing::info!(peer = who, "daemon connected to the DAP port"),
                            Err(why) => {
                                tracing::warn!(reason = why, "DAP connection refused");
                                return;
                            }
                        }
                        let _ = stream.set_nodelay(true);
                        serve_session(stream, ctx).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a DAP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next() => {}
        }
    }
}

/// Writes messages as complete frames in one write, so a frame is never interleaved or cut.
async fn send(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    msgs: &[Value],
    recorder: Option<&DapRecorder>,
) -> std::io::Result<()> {
    if msgs.is_empty() {
        return Ok(());
    }
    if let Some(r) = recorder {
        for m in msgs {
            r.write("adapter->daemon", m);
        }
    }
    let mut buf = Vec::new();
    for m in msgs {
        buf.extend(encode_frame(m));
    }
    wr.write_all(&buf).await
}

async fn serve_session(stream: TcpStream, ctx: SessionCtx) {
    let SessionCtx {
        hub,
        engine,
        opts,
        mut exit_rx,
        recorder,
        fallback,
        gate: _,
    } = ctx;
    let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel();
    let Some((guard, mut hits_rx)) = hub.join_when_free().await else {
        tracing::warn!("DAP connection refused: a session is already live (one session per agent; it is not replaced)");
        return;
    };
    let generation = guard.generation;
    let rec = recorder.as_ref();
    if let Some(r) = rec {
        r.note("daemon connected", generation);
    }
    let (rd, mut wr) = stream.into_split();
    // Frames are read in their own task: reading one is not cancel-safe, and the loop below
    // also waits for hits and for the end of the session.
    let (frames_tx, mut frames_rx) = mpsc::channel(64);
    let reader = tokio::spawn(async move {
        let mut rd = BufReader::new(rd);
        loop {
            let f = read_frame(&mut rd).await;
            let end = !matches!(f, Ok(Some(_)));
            if frames_tx.send(f).await.is_err() || end {
                break;
            }
        }
    });
    let mut facade = Facade::with_options(EngineProbes { engine }, opts);
    let first_request = tokio::time::sleep(FIRST_REQUEST_TIMEOUT);
    tokio::pin!(first_request);
    let mut spoke = false;
    if *exit_rx.borrow() {
        let _ = send(&mut wr, &facade.target_exited(), rec).await;
        reader.abort();
        return;
    }
    loop {
        let out = tokio::select! {
            biased;
            () = &mut first_request, if !spoke => {
                tracing::warn!(session = generation, "DAP connection closed: no request within {FIRST_REQUEST_TIMEOUT:?} of connecting");
                break;
            }
            changed = exit_rx.changed() => {
                if changed.is_err() || *exit_rx.borrow() {
                    let _ = send(&mut wr, &facade.target_exited(), rec).await;
                    let _ = wr.shutdown().await;
                    break;
                }
                continue;
            }
            frame = frames_rx.recv() => match frame {
                Some(Ok(Some(msg))) => {
                    spoke = true;
                    if let Some(r) = rec {
                        r.write("daemon->adapter", &msg);
                    }
                    tracing::debug!(session = generation, command = msg.get("command").and_then(serde_json::Value::as_str).unwrap_or(""), "DAP request");
                    facade.handle(&msg)
                }
                Some(Ok(None)) | None => {
                    if let Some(r) = rec {
                        r.note("daemon closed its side (EOF)", generation);
                    }
                    tracing::info!(session = generation, probes = facade.installed(), "daemon closed the DAP connection; removing its probes");
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(session = generation, error = %e, "bad DAP frame from the daemon; closing the session");
                    break;
                }
            },
            Some(hits) = hits_rx.recv() => facade.on_hits(&hits),
            Some((token, outcome)) = jobs_rx.recv() => facade.job_done(token, outcome),
        };
        for job in facade.take_jobs() {
            tracing::info!(session = generation, file = job.file, line = job.line, exprs = ?job.exprs, "function call: a debugger round is queued");
            let _ = fallback.send(JobRequest {
                job,
                reply: jobs_tx.clone(),
            });
        }
        if let Err(e) = send(&mut wr, &out, rec).await {
            tracing::info!(session = generation, error = %e, "writing to the daemon failed; closing the session");
            break;
        }
    }
    reader.abort();
    facade.close();
    drop(guard);
}
