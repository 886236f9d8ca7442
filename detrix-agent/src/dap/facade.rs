//! The DAP facade: answers the daemon's requests the way Delve (`go`) or lldb-dap (`rust`)
//! would, and turns hits into the `output` events and synthetic stops the daemon consumes.
//!
//! It is a pure state machine, like [`crate::daemon::lifecycle`]: an [`Input`] in (a request,
//! a batch of hits, the result of an effect), [`Effect`]s out (send a message, install or
//! remove a probe, evaluate with a debugger). No sockets, no engine, no clock: the shell in
//! [`crate::daemon`] performs the effects in order and feeds each result back as an input, so
//! the whole conversation is replayed from golden transcripts without a kernel
//! (`replay_tests.rs`, `bp_tests.rs` run the effects against a fake).
//!
//! The facade names its probes ([`ProbeId`], scoped by the session number it is given) before
//! they exist, so an install is one effect and one [`Input::Installed`] answer, and no id is
//! ever re-mapped on the way back: the registry maps the engine's ids to these names in one
//! place. A request that waits for install results answers once all are in; requests that
//! arrive meanwhile are held and handled in order after it.
//!
//! Rules it keeps (contract.md §0, §4–§6, §9, Appendix B):
//! * every request gets exactly one response, matched by `request_seq` (unknown commands get
//!   `success:false`, `"unsupported"`), so the daemon never waits out its 30 s timeout;
//! * `attach` is answered at once with success, for every argument shape and even after
//!   `configurationDone` (the daemon may not wait for it, §5.3);
//! * `setBreakpoints` replaces the probe set of one file and answers one entry per requested
//!   breakpoint, in order; unchanged entries keep their probe, so a replay never opens a gap;
//! * the session's probes are all removed when it ends ([`Input::Close`]);
//! * a probe the CPU breaker switched off is reported as DAP reports a breakpoint that changed
//!   under the client: a `breakpoint` event, reason `changed`, `verified:false` and a message
//!   naming the budget ([`Input::SwitchedOff`]). The daemon ignores events it does not consume
//!   (§4), so this costs it nothing; an `output` event is not used, because the daemon turns
//!   non-`DETRICS` output into an error event on an arbitrary metric (§8).
//!
//! Breakpoint mode (§9, design.md §7) without pausing: an entry without `logMessage` becomes a
//! probe that captures the stack and every local at each hit. Each hit becomes one synthetic
//! `stopped`; `stackTrace`, `scopes`, `variables` and `evaluate` are answered from that
//! snapshot ([`super::snapshot`]), and `continue` only moves to the next queued snapshot —
//! nothing was ever stopped. The daemon sends a breakpoint's expressions only as `evaluate`
//! requests, so an expression that is not a plain local is learned on first use: that stop
//! answers it with a failure, and the probe is re-installed to capture it in the kernel from
//! the next hit on.
//!
//! Only function calls need a real debugger ([`super::calls`]): for a `go` connection an
//! `evaluate "call …"`, for a `rust` connection a logpoint whose template calls a function
//! (C/C++ targets; lldb cannot call Rust functions, which the value then says). They become
//! [`Effect::Evaluate`] and come back as [`Input::Evaluated`]. SafeMode never asks for one.

mod breakpoints;
mod evaluate;

use std::collections::{HashMap, VecDeque};

use serde_json::{json, Map, Value};

use self::breakpoints::Awaiting;
pub use super::calls::{
    has_call, Evaluated, Job, CALL_LOGPOINT_INTERVAL, RUST_CALL_MESSAGE, SAFE_MODE_CALL_MESSAGE,
};
use super::snapshot::{self, Stop, NOT_STOPPED};
pub use super::snapshot::{FRAME_ID_BASE, LOCALS_REF};
use super::template::{self, Prefix};
use crate::debuginfo::Language;
use crate::decode::Node;
use crate::engine::{Hit, LogpointSpec};
use crate::plan::Value as V;
use crate::render;

/// How many snapshots may wait while the daemon works on one stop; later hits of
/// breakpoint-mode probes are counted in [`Facade::dropped_stops`] and dropped. The daemon
/// needs ~2 ms per stop, a hot line hits far more often.
pub const MAX_QUEUED_STOPS: usize = 32;

/// Most breakpoints one `setBreakpoints` may set in one file: each is a uprobe, and a peer
/// sending 10 000 must get an answer naming this limit, not an agent busy for minutes.
pub const MAX_BREAKPOINTS_PER_FILE: usize = 256;

/// A probe as a session names it: the session's number and a count within it. Stable while
/// the engine takes probes off and puts them back (the engine's own ids change then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId {
    pub session: u64,
    pub n: u64,
}

/// A hit of a probe, under the name its session gave the probe.
#[derive(Debug, Clone)]
pub struct ProbeHit {
    pub probe: ProbeId,
    pub hit: Hit,
}

/// What happened, for [`Facade::step`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A message from the daemon (only requests are acted on).
    Request(&'a Value),
    /// Hits of probes (of this session or not; others are dropped).
    Hits(&'a [ProbeHit]),
    /// The outcome of [`Effect::Install`]: `Err` is the sentence saying why not.
    Installed {
        probe: ProbeId,
        result: Result<(), String>,
    },
    /// The outcome of [`Effect::Evaluate`]: one result per expression, or why the debugger
    /// could not be used at all.
    Evaluated {
        token: u64,
        outcome: Result<Vec<Evaluated>, String>,
    },
    /// The CPU breaker switched `probe` off (it is gone from the kernel already); `why` names
    /// the budget and how to raise it.
    SwitchedOff { probe: ProbeId, why: &'a str },
    /// The target process exited.
    TargetExited,
    /// The session ends: remove every probe. Idempotent.
    Close,
}

/// What the shell must do, in order.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Send this message to the daemon.
    Send(Value),
    /// Install a logpoint capturing `spec.exprs` (and, as asked, stack and locals) at
    /// `file:spec.line` under the name `probe`; answer with [`Input::Installed`].
    Install {
        probe: ProbeId,
        file: String,
        spec: LogpointSpec,
    },
    /// Remove a probe whose install succeeded.
    Remove(ProbeId),
    /// Run a debugger job; answer with [`Input::Evaluated`].
    Evaluate(Job),
}

/// The target's language and the session's rules, as far as the facade needs them.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Language the daemon registered (`go` or `rust`): the output prefix.
    pub prefix: Prefix,
    /// Language of the target's code: which debugger a call needs, and whether one can.
    pub target: Language,
    /// Registered in SafeMode: never spawn a debugger, never pause.
    pub safe_mode: bool,
}

impl Options {
    /// Options for a connection registered as `daemon_language`, without SafeMode, for a
    /// target of the language the daemon name implies (go → Go, otherwise C).
    #[must_use]
    pub fn for_language(daemon_language: &str) -> Self {
        let prefix = Prefix::for_language(daemon_language);
        Self {
            prefix,
            target: if prefix == Prefix::Go {
                Language::Go
            } else {
                Language::C
            },
            safe_mode: false,
        }
    }
}

/// What a job is for.
#[derive(Debug, Clone)]
enum JobFor {
    /// Answer `evaluate` request `request_seq`.
    Evaluate { request_seq: i64, expr: String },
    /// A round of a call logpoint: emit one `output`.
    CallLogpoint { bp_id: i64 },
}

/// How one installed breakpoint entry is served.
#[derive(Debug, Clone)]
enum Kind {
    /// A template captured in the kernel.
    Logpoint { log_message: String },
    /// Breakpoint mode from in-kernel snapshots; `learned` are expressions the daemon asked
    /// for that are captured as values.
    Snapshot { learned: Vec<String> },
    /// A template with a function call, served by debugger rounds (no probe).
    CallLogpoint {
        log_message: String,
        name: String,
        exprs: Vec<String>,
    },
}

/// One installed entry of the session.
#[derive(Debug, Clone)]
struct Installed {
    line: u32,
    kind: Kind,
    logpoint: Option<ProbeId>,
    bp_id: i64,
    /// Switched off by the CPU breaker: the message its breakpoint carries from then on.
    off: Option<String>,
}

impl Installed {
    fn same_entry(&self, line: u32, log_message: Option<&str>) -> bool {
        self.line == line
            && match (&self.kind, log_message) {
                (
                    Kind::Logpoint { log_message: m } | Kind::CallLogpoint { log_message: m, .. },
                    Some(want),
                ) => m == want,
                (Kind::Snapshot { .. }, None) => true,
                _ => false,
            }
    }
}

/// Where a hit of a probe goes.
#[derive(Debug, Clone)]
enum Route {
    /// `exprs`: the template's expressions; the ones with calls are not captured.
    Output {
        name: String,
        exprs: Vec<String>,
    },
    Stop {
        path: String,
        line: u32,
        bp_id: i64,
    },
}

/// One DAP session's state.
#[derive(Debug)]
pub struct Facade {
    opts: Options,
    session: u64,
    next_probe: u64,
    seq: i64,
    /// By `source.path`: the file's current entries.
    files: HashMap<String, Vec<Installed>>,
    routes: HashMap<ProbeId, Route>,
    next_bp_id: i64,
    current: Option<Stop>,
    queued: VecDeque<Stop>,
    dropped_stops: u64,
    /// Hits of probes this session no longer routes (see [`Facade::stray_hits`]).
    stray: u64,
    pending: HashMap<u64, JobFor>,
    next_token: u64,
    awaiting: Option<Awaiting>,
    held: VecDeque<Value>,
    ended: bool,
}

impl Facade {
    /// A session numbered `session` (its probes are named `ProbeId { session, .. }`), with
    /// [`Options`].
    #[must_use]
    pub fn new(session: u64, opts: Options) -> Self {
        Self {
            opts,
            session,
            next_probe: 1,
            seq: 0,
            files: HashMap::new(),
            routes: HashMap::new(),
            next_bp_id: 1,
            current: None,
            queued: VecDeque::new(),
            dropped_stops: 0,
            stray: 0,
            pending: HashMap::new(),
            next_token: 1,
            awaiting: None,
            held: VecDeque::new(),
            ended: false,
        }
    }

    /// Number of probes this session has installed now.
    #[must_use]
    pub fn installed(&self) -> usize {
        self.routes.len()
    }

    /// Hits dropped because this session routes their probe no more: read before its removal
    /// reached the registry, and handed over after the session forgot it. The shell counts
    /// them with the registry's own (`hits_after_remove` in `/detrix/status`).
    #[must_use]
    pub fn stray_hits(&self) -> u64 {
        self.stray
    }

    /// Hits of breakpoint-mode probes dropped because [`MAX_QUEUED_STOPS`] were waiting.
    #[must_use]
    pub fn dropped_stops(&self) -> u64 {
        self.dropped_stops
    }

    /// Whether a synthetic stop is outstanding (between `stopped` and its `continue`).
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.current.is_some()
    }

    /// One transition: what to do, in order.
    pub fn step(&mut self, input: Input<'_>) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Request(msg) => {
                if self.awaiting.is_some() {
                    self.held.push_back(msg.clone());
                } else {
                    self.request(msg, &mut out);
                }
            }
            Input::Hits(hits) => self.on_hits(hits, &mut out),
            Input::Installed { probe, result } => self.installed_result(probe, result, &mut out),
            Input::Evaluated { token, outcome } => self.job_done(token, outcome, &mut out),
            Input::SwitchedOff { probe, why } => self.switched_off(probe, why, &mut out),
            Input::TargetExited => {
                // The exit code of a process we did not start is not knowable: 0.
                self.event("exited", Some(json!({"exitCode": 0})), &mut out);
                self.event("terminated", None, &mut out);
            }
            Input::Close => self.close(&mut out),
        }
        while self.awaiting.is_none() && !self.ended {
            let Some(msg) = self.held.pop_front() else {
                break;
            };
            self.request(&msg, &mut out);
        }
        out
    }

    fn next_seq(&mut self) -> i64 {
        self.seq += 1;
        self.seq
    }

    fn respond(
        &mut self,
        request_seq: i64,
        command: &str,
        result: Result<Option<Value>, String>,
        out: &mut Vec<Effect>,
    ) {
        let seq = self.next_seq();
        let mut m = Map::new();
        m.insert("seq".into(), seq.into());
        m.insert("type".into(), "response".into());
        m.insert("request_seq".into(), request_seq.into());
        m.insert("command".into(), command.into());
        match result {
            Ok(body) => {
                m.insert("success".into(), true.into());
                if let Some(b) = body {
                    m.insert("body".into(), b);
                }
            }
            Err(message) => {
                m.insert("success".into(), false.into());
                // `error.format` is what the daemon shows first (`<evaluation failed: …>`).
                m.insert(
                    "body".into(),
                    json!({"error": {"id": 1, "format": message}}),
                );
                m.insert("message".into(), message.into());
            }
        }
        out.push(Effect::Send(Value::Object(m)));
    }

    fn event(&mut self, event: &str, body: Option<Value>, out: &mut Vec<Effect>) {
        let seq = self.next_seq();
        let mut m = Map::new();
        m.insert("seq".into(), seq.into());
        m.insert("type".into(), "event".into());
        m.insert("event".into(), event.into());
        if let Some(b) = body {
            m.insert("body".into(), b);
        }
        out.push(Effect::Send(Value::Object(m)));
    }

    /// Handles one message from the daemon. Anything but a request (the daemon sends no
    /// others) is ignored. An `evaluate` that needs a debugger is answered later, on its
    /// [`Input::Evaluated`]; a `setBreakpoints` once its installs are answered.
    fn request(&mut self, msg: &Value, out: &mut Vec<Effect>) {
        if msg.get("type").and_then(Value::as_str) != Some("request") {
            tracing::debug!(?msg, "ignoring a DAP message that is not a request");
            return;
        }
        let request_seq = msg.get("seq").and_then(Value::as_i64).unwrap_or(0);
        let command = msg.get("command").and_then(Value::as_str).unwrap_or("");
        let null = Value::Null;
        let args = msg.get("arguments").unwrap_or(&null);
        match command {
            "initialize" => {
                let caps = json!({
                    "supportsConfigurationDoneRequest": true,
                    "supportsLogPoints": true,
                    "supportsConditionalBreakpoints": false,
                    "supportsHitConditionalBreakpoints": false,
                    "supportsFunctionBreakpoints": false,
                    "supportsEvaluateForHovers": false,
                });
                self.respond(request_seq, command, Ok(Some(caps)), out);
                self.event("initialized", None, out);
            }
            "attach" | "configurationDone" => self.respond(request_seq, command, Ok(None), out),
            "launch" => self.respond(
                request_seq,
                command,
                Err("launch is not supported: detrix-agent observes an already running process; register it with its pid".into()),
                out,
            ),
            "continue" => {
                // Nothing was stopped: move on to the next snapshot, if one waits.
                self.respond(request_seq, command, Ok(Some(json!({"allThreadsContinued": true}))), out);
                self.current = None;
                self.next_stop(out);
            }
            "setBreakpoints" => self.set_breakpoints(request_seq, args, out),
            "stackTrace" => {
                let r = self.with_stop(|s| snapshot::stack_trace_body(s, args));
                self.respond(request_seq, command, r.map(Some), out);
            }
            "scopes" => {
                let r = self.with_stop(|_| snapshot::scopes_body());
                self.respond(request_seq, command, r.map(Some), out);
            }
            "variables" => {
                let reference = args.get("variablesReference").and_then(Value::as_i64).unwrap_or(0);
                let lang = self.opts.target;
                let r = self.with_stop(|s| snapshot::variables_body(s, reference, lang));
                self.respond(request_seq, command, r.map(Some), out);
            }
            "evaluate" => self.evaluate(request_seq, args, out),
            "disconnect" | "terminate" => {
                // Never sent by the daemon (§4); answered so a generic DAP client is not left
                // waiting. The target keeps running; probes go when the socket closes.
                self.respond(request_seq, command, Ok(None), out);
            }
            _ => self.respond(request_seq, command, Err("unsupported".into()), out),
        }
    }

    fn with_stop(&self, f: impl FnOnce(&Stop) -> Value) -> Result<Value, String> {
        self.current
            .as_ref()
            .map(f)
            .ok_or_else(|| NOT_STOPPED.to_owned())
    }

    /// Names the next probe of this session and asks the shell to install it at `path`.
    fn install(&mut self, path: &str, spec: LogpointSpec, out: &mut Vec<Effect>) -> ProbeId {
        let probe = ProbeId {
            session: self.session,
            n: self.next_probe,
        };
        self.next_probe += 1;
        out.push(Effect::Install {
            probe,
            file: path.to_owned(),
            spec,
        });
        probe
    }

    /// `output` events for logpoint hits and `stopped` for breakpoint-mode hits of this
    /// session (hits of other probes are dropped: they belong to another session, or were in
    /// flight while their probe was replaced).
    fn on_hits(&mut self, hits: &[ProbeHit], out: &mut Vec<Effect>) {
        for ProbeHit { probe, hit: h } in hits {
            let Some(route) = self.routes.get(probe) else {
                self.stray += 1;
                continue;
            };
            let thread = match self.opts.prefix {
                Prefix::Go if h.goid != 0 => h.goid,
                _ => u64::from(h.tid),
            };
            match route {
                Route::Output { name, exprs } => {
                    let mut captured = h.values.iter();
                    let values: Vec<V> = exprs
                        .iter()
                        .map(|e| {
                            if has_call(e) {
                                V::Error(RUST_CALL_MESSAGE.to_owned())
                            } else {
                                captured.next().map_or_else(
                                    || V::Error("not captured".into()),
                                    |(_, n)| render::debugger(n),
                                )
                            }
                        })
                        .collect();
                    let text = template::output_text(self.opts.prefix, thread, name, &values);
                    self.event(
                        "output",
                        Some(json!({"category": "console", "output": text})),
                        out,
                    );
                }
                Route::Stop { path, line, bp_id } => {
                    if self.queued.len() >= MAX_QUEUED_STOPS {
                        self.dropped_stops += 1;
                        continue;
                    }
                    let stop = Stop {
                        path: path.clone(),
                        line: *line,
                        bp_id: *bp_id,
                        thread_id: i64::try_from(thread).unwrap_or(1),
                        stack: h.stack.clone(),
                        locals: rendered(&h.locals),
                        values: rendered(&h.values),
                    };
                    self.queued.push_back(stop);
                    if self.current.is_none() {
                        self.next_stop(out);
                    }
                }
            }
        }
    }

    fn next_stop(&mut self, out: &mut Vec<Effect>) {
        let Some(stop) = self.queued.pop_front() else {
            return;
        };
        let body = snapshot::stopped_body(&stop);
        self.current = Some(stop);
        self.event("stopped", Some(body), out);
    }

    /// Removes every probe of the session and forgets its jobs and held requests.
    fn close(&mut self, out: &mut Vec<Effect>) {
        if self.ended {
            return;
        }
        self.ended = true;
        for (_, installed) in self.files.drain() {
            for i in installed {
                if let Some(id) = i.logpoint {
                    out.push(Effect::Remove(id));
                }
            }
        }
        // A `setBreakpoints` under way holds the file's kept entries; installs still under way
        // are removed as their results come in.
        if let Some(Awaiting::SetBreakpoints { entries, .. }) = self.awaiting.take() {
            for e in entries {
                if let breakpoints::Entry::Reused(Installed {
                    logpoint: Some(id), ..
                }) = e
                {
                    out.push(Effect::Remove(id));
                }
            }
        }
        self.held.clear();
        self.routes.clear();
        self.queued.clear();
        self.pending.clear();
    }
}

/// Named values as the target's debugger shows them (what a stop's `variables` and
/// `evaluate` answer with).
fn rendered(values: &[(String, Node)]) -> Vec<(String, V)> {
    values
        .iter()
        .map(|(name, n)| (name.clone(), render::debugger(n)))
        .collect()
}
