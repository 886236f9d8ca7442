//! The DAP facade: answers the daemon's requests the way Delve (`go`) or lldb-dap (`rust`)
//! would, and turns hits into the `output` events and synthetic stops the daemon consumes.
//!
//! It is a plain state machine over JSON values — request in, messages out — with the probes
//! behind the [`ProbeSet`] trait, so the whole conversation can be replayed from golden
//! transcripts without a kernel, and the I/O shell ([`crate::daemon`]) only moves frames.
//!
//! Rules it keeps (contract.md §0, §4–§6, §9, Appendix B):
//! * every request gets exactly one response, matched by `request_seq` (unknown commands get
//!   `success:false`, `"unsupported"`), so the daemon never waits out its 30 s timeout;
//! * `attach` is answered at once with success, for every argument shape and even after
//!   `configurationDone` (the daemon may not wait for it, §5.3);
//! * `setBreakpoints` replaces the probe set of one file and answers one entry per requested
//!   breakpoint, in order; unchanged entries keep their probe, so a replay never opens a gap;
//! * the session's probes are all removed when it ends ([`Facade::close`]).
//!
//! Breakpoint mode (§9, design.md §7) without pausing: an entry without `logMessage` becomes a
//! probe that captures the stack and every local at each hit. Each hit becomes one synthetic
//! `stopped`; `stackTrace`, `scopes`, `variables` and `evaluate` are answered from that
//! snapshot, and `continue` only moves to the next queued snapshot — nothing was ever stopped.
//! The daemon sends a breakpoint's expressions only as `evaluate` requests, so an expression
//! that is not a plain local is learned on first use: that stop answers it with a failure, and
//! the probe is re-installed to capture it in the kernel from the next hit on.
//!
//! Only function calls need a real debugger. Those become [`Job`]s the shell runs with
//! [`crate::fallback`] (one at a time, our uprobes off meanwhile) and reports back through
//! [`Facade::job_done`]: for a `go` connection an `evaluate "call …"`, for a `rust` connection a
//! logpoint whose template calls a function (C/C++ targets; lldb cannot call Rust functions,
//! which the value then says). SafeMode never creates a job.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::template::{self, Prefix};
use crate::debuginfo::Language;
use crate::engine::{Frame, Hit, LogpointId, LogpointSpec};
use crate::plan::Value as V;

/// Installs and removes logpoints for a facade. The real one drives the [`crate::engine`]; tests
/// use a recording fake.
pub trait ProbeSet {
    /// Installs a logpoint capturing `spec.exprs` (and, as asked, stack and locals) at
    /// `file:spec.line`.
    ///
    /// # Errors
    /// A sentence saying why the line or an expression cannot be captured (it becomes the
    /// breakpoint's `message`).
    fn add(&mut self, file: &str, spec: &LogpointSpec) -> Result<LogpointId, String>;
    /// Removes a logpoint this set installed.
    fn remove(&mut self, id: LogpointId);
}

/// How many snapshots may wait while the daemon works on one stop; later hits of
/// breakpoint-mode probes are counted in [`Facade::dropped_stops`] and dropped. The daemon
/// needs ~2 ms per stop, a hot line hits far more often.
pub const MAX_QUEUED_STOPS: usize = 32;

/// Most breakpoints one `setBreakpoints` may set in one file: each is a uprobe, and a peer
/// sending 10 000 must get an answer naming this limit, not an agent busy for minutes.
pub const MAX_BREAKPOINTS_PER_FILE: usize = 256;

/// Frame ids of a stop are `FRAME_ID_BASE + index`, the locals scope is [`LOCALS_REF`] (the
/// numbers Delve uses; the daemon reuses the first stackTrace's frame id for the whole stop).
pub const FRAME_ID_BASE: i64 = 1000;
/// `variablesReference` of a stop's one scope.
pub const LOCALS_REF: i64 = 2000;

/// Pause between two debugger rounds of the same call logpoint: each round stops the target
/// and takes the agent's own uprobes off it, so it is rationed.
pub const CALL_LOGPOINT_INTERVAL: Duration = Duration::from_millis(500);

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

/// Work only a spawned debugger can do, for the shell to run ([`crate::fallback`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Quote it back in [`Facade::job_done`].
    pub token: u64,
    /// Source path and line to break at.
    pub file: String,
    pub line: u32,
    /// Expressions to evaluate there, as the user wrote them (no `call ` prefix).
    pub exprs: Vec<String>,
    /// Start no earlier than this from now.
    pub delay: Duration,
}

/// One evaluated expression of a finished [`Job`]: `(result text, type)` or the debugger's
/// error sentence.
pub type Evaluated = Result<(String, Option<String>), String>;

/// What a job is for.
#[derive(Debug, Clone)]
enum JobFor {
    /// Answer `evaluate` request `request_seq`.
    Evaluate { request_seq: i64, expr: String },
    /// A round of a call logpoint: emit one `output`.
    CallLogpoint { bp_id: i64 },
}

/// Why an entry without `logMessage` or a call is refused.
pub const SAFE_MODE_CALL_MESSAGE: &str = "SafeMode: this connection is in SafeMode, which never spawns a debugger and never \
     pauses the target, and evaluating a function call needs one; drop the call from the expression or register without \
     --safe-mode";

/// Why a Rust function call cannot be evaluated (toolchain.md E13).
pub const RUST_CALL_MESSAGE: &str = "function calls in Rust expressions cannot be evaluated: lldb has no Rust expression \
     evaluator (lldb-dap answers `Expression evaluation in Rust not supported`); capture the values the function would \
     read instead";

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
    logpoint: Option<LogpointId>,
    bp_id: i64,
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

/// Where a hit of a logpoint goes.
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

/// One synthetic stop: what the kernel captured at one hit.
#[derive(Debug, Clone)]
struct Stop {
    path: String,
    line: u32,
    bp_id: i64,
    thread_id: i64,
    stack: Vec<Frame>,
    locals: Vec<(String, V)>,
    values: Vec<(String, V)>,
}

/// One DAP session's state.
#[derive(Debug)]
pub struct Facade<P: ProbeSet> {
    probes: P,
    opts: Options,
    seq: i64,
    /// By `source.path`: the file's current entries.
    files: HashMap<String, Vec<Installed>>,
    routes: HashMap<LogpointId, Route>,
    next_bp_id: i64,
    current: Option<Stop>,
    queued: VecDeque<Stop>,
    dropped_stops: u64,
    jobs: Vec<Job>,
    pending: HashMap<u64, JobFor>,
    next_token: u64,
    ended: bool,
}

impl<P: ProbeSet> Facade<P> {
    /// A session for a connection registered with `daemon_language` (`go` or `rust`).
    pub fn new(probes: P, daemon_language: &str) -> Self {
        Self::with_options(probes, Options::for_language(daemon_language))
    }

    /// A session with explicit [`Options`].
    pub fn with_options(probes: P, opts: Options) -> Self {
        Self {
            probes,
            opts,
            seq: 0,
            files: HashMap::new(),
            routes: HashMap::new(),
            next_bp_id: 1,
            current: None,
            queued: VecDeque::new(),
            dropped_stops: 0,
            jobs: Vec::new(),
            pending: HashMap::new(),
            next_token: 1,
            ended: false,
        }
    }

    /// The probe set (for tests and counters).
    pub fn probes(&self) -> &P {
        &self.probes
    }

    /// Number of probes this session has installed now.
    #[must_use]
    pub fn installed(&self) -> usize {
        self.routes.len()
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

    /// Debugger work asked for since the last call, for the shell to run.
    pub fn take_jobs(&mut self) -> Vec<Job> {
        std::mem::take(&mut self.jobs)
    }

    fn next_seq(&mut self) -> i64 {
        self.seq += 1;
        self.seq
    }

    fn response(
        &mut self,
        request_seq: i64,
        command: &str,
        result: Result<Option<Value>, String>,
    ) -> Value {
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
        Value::Object(m)
    }

    fn event(&mut self, event: &str, body: Option<Value>) -> Value {
        let seq = self.next_seq();
        let mut m = Map::new();
        m.insert("seq".into(), seq.into());
        m.insert("type".into(), "event".into());
        m.insert("event".into(), event.into());
        if let Some(b) = body {
            m.insert("body".into(), b);
        }
        Value::Object(m)
    }

    /// Handles one message from the daemon and returns what to send back, in order. Anything
    /// but a request (the daemon sends no others) is ignored. An `evaluate` that needs a
    /// debugger is answered later, by [`Facade::job_done`].
    pub fn handle(&mut self, msg: &Value) -> Vec<Value> {
        if msg.get("type").and_then(Value::as_str) != Some("request") {
            tracing::debug!(?msg, "ignoring a DAP message that is not a request");
            return Vec::new();
        }
        let request_seq = msg.get("seq").and_then(Value::as_i64).unwrap_or(0);
        let command = msg
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let args = msg.get("arguments").cloned().unwrap_or(Value::Null);
        match command.as_str() {
            "initialize" => {
                let caps = json!({
                    "supportsConfigurationDoneRequest": true,
                    "supportsLogPoints": true,
                    "supportsConditionalBreakpoints": false,
                    "supportsHitConditionalBreakpoints": false,
                    "supportsFunctionBreakpoints": false,
                    "supportsEvaluateForHovers": false,
                });
                let r = self.response(request_seq, &command, Ok(Some(caps)));
                let e = self.event("initialized", None);
                vec![r, e]
            }
            "attach" => vec![self.response(request_seq, &command, Ok(None))],
            "launch" => vec![self.response(
                request_seq,
                &command,
                Err("launch is not supported: detrix-agent observes an already running process; register it with its pid".into()),
            )],
            "configurationDone" => vec![self.response(request_seq, &command, Ok(None))],
            "continue" => {
                // Nothing was stopped: move on to the next snapshot, if one waits.
                let r = self.response(request_seq, &command, Ok(Some(json!({"allThreadsContinued": true}))));
                self.current = None;
                let mut out = vec![r];
                out.extend(self.next_stop());
                out
            }
            "setBreakpoints" => {
                let result = self.set_breakpoints(&args);
                vec![self.response(request_seq, &command, result.map(Some))]
            }
            "stackTrace" => {
                let r = self.stack_trace(&args);
                vec![self.response(request_seq, &command, r.map(Some))]
            }
            "scopes" => {
                let r = self.with_stop(|_| json!({"scopes": [{"name": "Locals", "presentationHint": "locals", "variablesReference": LOCALS_REF, "expensive": false}]}));
                vec![self.response(request_seq, &command, r.map(Some))]
            }
            "variables" => {
                let reference = args.get("variablesReference").and_then(Value::as_i64).unwrap_or(0);
                let lang = self.opts.target;
                let r = self.with_stop(|s| {
                    let vars: Vec<Value> = if reference == LOCALS_REF {
                        s.locals
                            .iter()
                            .filter(|(n, _)| !(n.starts_with("__") && n.ends_with("__")))
                            .map(|(n, v)| json!({"name": n, "value": shown_value(lang, v), "type": type_name(lang, v), "variablesReference": 0}))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    json!({ "variables": vars })
                });
                vec![self.response(request_seq, &command, r.map(Some))]
            }
            "evaluate" => self.evaluate(request_seq, &args),
            "disconnect" | "terminate" => {
                // Never sent by the daemon (§4); answered so a generic DAP client is not left
                // waiting. The target keeps running; probes go when the socket closes.
                vec![self.response(request_seq, &command, Ok(None))]
            }
            _ => vec![self.response(request_seq, &command, Err("unsupported".into()))],
        }
    }

    fn with_stop(&self, f: impl FnOnce(&Stop) -> Value) -> Result<Value, String> {
        self.current
            .as_ref()
            .map(f)
            .ok_or_else(|| NOT_STOPPED.to_owned())
    }

    fn stack_trace(&self, args: &Value) -> Result<Value, String> {
        let stop = self
            .current
            .as_ref()
            .ok_or_else(|| NOT_STOPPED.to_owned())?;
        let start = args.get("startFrame").and_then(Value::as_u64).unwrap_or(0);
        let levels = args
            .get("levels")
            .and_then(Value::as_u64)
            .filter(|l| *l > 0)
            .unwrap_or(u64::MAX);
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let levels = usize::try_from(levels).unwrap_or(usize::MAX);
        let frames = stop_frames(stop);
        let total = frames.len();
        let shown: Vec<Value> = frames.into_iter().skip(start).take(levels).collect();
        Ok(json!({"stackFrames": shown, "totalFrames": total}))
    }

    fn evaluate(&mut self, request_seq: i64, args: &Value) -> Vec<Value> {
        const CMD: &str = "evaluate";
        let raw = args
            .get("expression")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim();
        let Some(stop) = self.current.clone() else {
            return vec![self.response(request_seq, CMD, Err(NOT_STOPPED.to_owned()))];
        };
        let (expr, said_call) = match raw.strip_prefix("call ") {
            Some(e) => (e.trim(), true),
            None => (raw, false),
        };
        if expr.is_empty() {
            return vec![self.response(
                request_seq,
                CMD,
                Err("evaluate without an expression".into()),
            )];
        }
        let lang = self.opts.target;
        if let Some(v) = lookup(&stop, expr) {
            let body = json!({"result": shown_value(lang, v), "type": type_name(lang, v), "variablesReference": 0});
            return vec![self.response(request_seq, CMD, Ok(Some(body)))];
        }
        if said_call || has_call(expr) {
            if let Some(n) = builtin_len(&stop, expr, lang) {
                return vec![self.response(
                    request_seq,
                    CMD,
                    Ok(Some(
                        json!({"result": n.to_string(), "type": "int", "variablesReference": 0}),
                    )),
                )];
            }
            if self.opts.safe_mode {
                return vec![self.response(request_seq, CMD, Err(SAFE_MODE_CALL_MESSAGE.into()))];
            }
            if lang == Language::Rust {
                return vec![self.response(request_seq, CMD, Err(RUST_CALL_MESSAGE.into()))];
            }
            let token = self.new_job(&stop.path, stop.line, vec![expr.to_owned()], Duration::ZERO);
            self.pending.insert(
                token,
                JobFor::Evaluate {
                    request_seq,
                    expr: expr.to_owned(),
                },
            );
            return Vec::new();
        }
        let answer = self.learn(&stop, expr);
        vec![self.response(request_seq, CMD, Err(answer))]
    }

    /// Re-installs the stop's probe so it also captures `expr`; returns the sentence for this
    /// stop's (failed) answer.
    fn learn(&mut self, stop: &Stop, expr: &str) -> String {
        let Some(entries) = self.files.get(&stop.path) else {
            return format!(
                "`{expr}` was not captured at this hit, and its breakpoint was removed since"
            );
        };
        let Some(ix) = entries.iter().position(|i| i.bp_id == stop.bp_id) else {
            return format!(
                "`{expr}` was not captured at this hit, and its breakpoint was removed since"
            );
        };
        let entry = entries[ix].clone();
        let Kind::Snapshot { learned } = &entry.kind else {
            return format!("`{expr}` is not a value captured at this line");
        };
        if learned.iter().any(|e| e == expr) {
            return format!("`{expr}` could not be read at this hit");
        }
        let mut exprs = learned.clone();
        exprs.push(expr.to_owned());
        let spec = LogpointSpec {
            line: entry.line,
            exprs: exprs.clone(),
            condition: None,
            capture_stack: true,
            capture_locals: true,
        };
        match self.probes.add(&stop.path, &spec) {
            Ok(id) => {
                if let Some(old) = entry.logpoint {
                    self.probes.remove(old);
                    self.routes.remove(&old);
                }
                self.routes.insert(
                    id,
                    Route::Stop {
                        path: stop.path.clone(),
                        line: entry.line,
                        bp_id: entry.bp_id,
                    },
                );
                if let Some(e) = self.files.get_mut(&stop.path).and_then(|v| v.get_mut(ix)) {
                    e.logpoint = Some(id);
                    e.kind = Kind::Snapshot { learned: exprs };
                }
                format!(
                    "`{expr}` is not a local variable, and this breakpoint's snapshot held only locals; it is captured from the next hit on"
                )
            }
            Err(e) => format!("`{expr}` cannot be captured at this line: {e}"),
        }
    }

    fn new_job(&mut self, file: &str, line: u32, exprs: Vec<String>, delay: Duration) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.jobs.push(Job {
            token,
            file: file.to_owned(),
            line,
            exprs,
            delay,
        });
        token
    }

    /// A job's outcome: `Ok` with one result per expression, or `Err` with why the debugger
    /// could not be used at all. Returns the messages to send.
    pub fn job_done(&mut self, token: u64, outcome: Result<Vec<Evaluated>, String>) -> Vec<Value> {
        let Some(what) = self.pending.remove(&token) else {
            return Vec::new();
        };
        match what {
            JobFor::Evaluate { request_seq, expr } => {
                let r = match outcome.and_then(|mut v| {
                    if v.is_empty() {
                        Err(format!("the debugger returned nothing for `{expr}`"))
                    } else {
                        v.swap_remove(0)
                    }
                }) {
                    Ok((result, ty)) => Ok(Some(
                        json!({"result": result, "type": ty.unwrap_or_default(), "variablesReference": 0}),
                    )),
                    Err(e) => Err(e),
                };
                vec![self.response(request_seq, "evaluate", r)]
            }
            JobFor::CallLogpoint { bp_id } => {
                let Some((path, entry)) = self.files.iter().find_map(|(p, v)| {
                    v.iter()
                        .find(|i| i.bp_id == bp_id)
                        .map(|i| (p.clone(), i.clone()))
                }) else {
                    return Vec::new();
                };
                let Kind::CallLogpoint { name, exprs, .. } = &entry.kind else {
                    return Vec::new();
                };
                let rendered: Vec<String> = match outcome {
                    Ok(values) => values
                        .into_iter()
                        .map(|v| match v {
                            Ok((text, _)) => debugger_value(&text),
                            Err(e) => template::json_string(&format!("<evaluation failed: {e}>")),
                        })
                        .collect(),
                    Err(e) => exprs
                        .iter()
                        .map(|_| template::json_string(&format!("<evaluation failed: {e}>")))
                        .collect(),
                };
                // The thread of a debugger round is not known to the daemon's prefix parser in
                // any useful way; the target's pid stands in, as for single-threaded hits.
                let text = template::output_text_rendered(self.opts.prefix, 1, name, &rendered);
                let out = self.event(
                    "output",
                    Some(json!({"category": "console", "output": text})),
                );
                let token = self.new_job(&path, entry.line, exprs.clone(), CALL_LOGPOINT_INTERVAL);
                self.pending.insert(token, JobFor::CallLogpoint { bp_id });
                vec![out]
            }
        }
    }

    /// Replaces the probe set of `arguments.source.path` with `arguments.breakpoints` (at most
    /// [`MAX_BREAKPOINTS_PER_FILE`]; each entry past it is answered unverified, naming the cap).
    fn set_breakpoints(&mut self, args: &Value) -> Result<Value, String> {
        let path = args
            .pointer("/source/path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or("setBreakpoints without arguments.source.path; the agent needs the source file's path")?
            .to_owned();
        let requested = match args.get("breakpoints") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err("setBreakpoints arguments.breakpoints is not an array".into()),
        };
        let basename = path.rsplit('/').next().unwrap_or(&path).to_owned();
        let mut old = self.files.remove(&path).unwrap_or_default();
        let mut kept: Vec<Installed> = Vec::new();
        let mut answers = Vec::with_capacity(requested.len());
        // First pass: decide, per entry, whether an identical entry already exists. Removing
        // the stale ones before installing new ones keeps a line from ever having two probes.
        let mut plan: Vec<Option<Installed>> = Vec::with_capacity(requested.len());
        for entry in &requested {
            let line = entry
                .get("line")
                .and_then(Value::as_u64)
                .and_then(|l| u32::try_from(l).ok());
            let msg = entry.get("logMessage").and_then(Value::as_str);
            let reuse = line.and_then(|line| {
                old.iter()
                    .position(|i| i.same_entry(line, msg))
                    .map(|ix| old.swap_remove(ix))
            });
            plan.push(reuse);
        }
        for stale in old {
            self.uninstall(&stale);
        }
        for (n, (entry, reuse)) in requested.iter().zip(plan).enumerate() {
            let line = entry
                .get("line")
                .and_then(Value::as_u64)
                .and_then(|l| u32::try_from(l).ok());
            let Some(line) = line.filter(|l| *l > 0) else {
                answers.push(json!({"verified": false, "message": "breakpoint entry without a line number ≥ 1"}));
                continue;
            };
            if n >= MAX_BREAKPOINTS_PER_FILE {
                answers.push(json!({"verified": false, "line": line, "message": format!(
                    "entry {} of {} is over the limit of {MAX_BREAKPOINTS_PER_FILE} breakpoints per file (MAX_BREAKPOINTS_PER_FILE); the first {MAX_BREAKPOINTS_PER_FILE} are set",
                    n + 1, requested.len())}));
                continue;
            }
            let installed = if let Some(i) = reuse {
                Ok(i)
            } else {
                match entry.get("logMessage").and_then(Value::as_str) {
                    None => self.install_snapshot(&path, line),
                    Some(msg) => self.install_logpoint(&path, line, msg),
                }
            };
            match installed {
                Ok(i) => {
                    answers.push(json!({"id": i.bp_id, "verified": true, "line": line, "source": {"name": basename, "path": path}}));
                    kept.push(i);
                }
                Err(message) => {
                    answers.push(json!({"verified": false, "line": line, "message": message}))
                }
            }
        }
        if !kept.is_empty() {
            self.files.insert(path, kept);
        }
        Ok(json!({ "breakpoints": answers }))
    }

    fn uninstall(&mut self, i: &Installed) {
        if let Some(id) = i.logpoint {
            self.probes.remove(id);
            self.routes.remove(&id);
        }
        self.queued.retain(|s| s.bp_id != i.bp_id);
        self.pending
            .retain(|_, j| !matches!(j, JobFor::CallLogpoint { bp_id } if *bp_id == i.bp_id));
    }

    fn take_bp_id(&mut self) -> i64 {
        let id = self.next_bp_id;
        self.next_bp_id += 1;
        id
    }

    fn install_snapshot(&mut self, path: &str, line: u32) -> Result<Installed, String> {
        let spec = LogpointSpec {
            line,
            exprs: Vec::new(),
            condition: None,
            capture_stack: true,
            capture_locals: true,
        };
        let logpoint = self.probes.add(path, &spec)?;
        let bp_id = self.take_bp_id();
        self.routes.insert(
            logpoint,
            Route::Stop {
                path: path.to_owned(),
                line,
                bp_id,
            },
        );
        Ok(Installed {
            line,
            kind: Kind::Snapshot {
                learned: Vec::new(),
            },
            logpoint: Some(logpoint),
            bp_id,
        })
    }

    fn install_logpoint(
        &mut self,
        path: &str,
        line: u32,
        log_message: &str,
    ) -> Result<Installed, String> {
        let template = template::parse(log_message).map_err(|e| e.to_string())?;
        let calls: Vec<&String> = template.exprs.iter().filter(|e| has_call(e)).collect();
        if !calls.is_empty() {
            if self.opts.safe_mode {
                return Err(format!(
                    "`{}` calls a function. {SAFE_MODE_CALL_MESSAGE}",
                    calls[0]
                ));
            }
            if self.opts.target != Language::Rust {
                let bp_id = self.take_bp_id();
                let token = self.new_job(path, line, template.exprs.clone(), Duration::ZERO);
                self.pending.insert(token, JobFor::CallLogpoint { bp_id });
                return Ok(Installed {
                    line,
                    kind: Kind::CallLogpoint {
                        log_message: log_message.to_owned(),
                        name: template.name,
                        exprs: template.exprs,
                    },
                    logpoint: None,
                    bp_id,
                });
            }
            // Rust: the calls cannot be evaluated by anyone; the rest is captured as usual and
            // the calls' values say why (see `on_hits`).
        }
        let exprs: Vec<String> = template
            .exprs
            .iter()
            .filter(|e| !has_call(e))
            .cloned()
            .collect();
        let spec = LogpointSpec {
            line,
            exprs,
            condition: None,
            capture_stack: false,
            capture_locals: false,
        };
        let logpoint = if spec.exprs.is_empty() {
            None
        } else {
            Some(self.probes.add(path, &spec)?)
        };
        let bp_id = self.take_bp_id();
        if let Some(id) = logpoint {
            self.routes.insert(
                id,
                Route::Output {
                    name: template.name.clone(),
                    exprs: template.exprs.clone(),
                },
            );
        }
        Ok(Installed {
            line,
            kind: Kind::Logpoint {
                log_message: log_message.to_owned(),
            },
            logpoint,
            bp_id,
        })
    }

    /// `output` events for logpoint hits and `stopped` for breakpoint-mode hits of this
    /// session (hits of other probes are dropped: they belong to a session that ended, or were
    /// in flight while their probe was replaced).
    pub fn on_hits(&mut self, hits: &[Hit]) -> Vec<Value> {
        let mut out = Vec::new();
        for h in hits {
            let Some(route) = self.routes.get(&h.logpoint).cloned() else {
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
                                    |(_, v)| v.clone(),
                                )
                            }
                        })
                        .collect();
                    let text = template::output_text(self.opts.prefix, thread, &name, &values);
                    out.push(self.event(
                        "output",
                        Some(json!({"category": "console", "output": text})),
                    ));
                }
                Route::Stop { path, line, bp_id } => {
                    let stop = Stop {
                        path,
                        line,
                        bp_id,
                        thread_id: i64::try_from(thread).unwrap_or(1),
                        stack: h.stack.clone(),
                        locals: h.locals.clone(),
                        values: h.values.clone(),
                    };
                    if self.queued.len() >= MAX_QUEUED_STOPS {
                        self.dropped_stops += 1;
                        continue;
                    }
                    self.queued.push_back(stop);
                    if self.current.is_none() {
                        out.extend(self.next_stop());
                    }
                }
            }
        }
        out
    }

    fn next_stop(&mut self) -> Vec<Value> {
        let Some(stop) = self.queued.pop_front() else {
            return Vec::new();
        };
        let body = json!({"reason": "breakpoint", "threadId": stop.thread_id, "allThreadsStopped": true, "hitBreakpointIds": [stop.bp_id]});
        self.current = Some(stop);
        vec![self.event("stopped", Some(body))]
    }

    /// The events that end the session when the target exits: `exited` then `terminated`
    /// (the daemon hangs up on either). The exit code of a process we did not start is not
    /// knowable, so it is reported as 0.
    pub fn target_exited(&mut self) -> Vec<Value> {
        let e = self.event("exited", Some(json!({"exitCode": 0})));
        let t = self.event("terminated", None);
        vec![e, t]
    }

    /// Removes every probe of the session and forgets its jobs. Idempotent.
    pub fn close(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        for (_, installed) in self.files.drain() {
            for i in installed {
                if let Some(id) = i.logpoint {
                    self.probes.remove(id);
                }
            }
        }
        self.routes.clear();
        self.queued.clear();
        self.pending.clear();
        self.jobs.clear();
    }
}

impl<P: ProbeSet> Drop for Facade<P> {
    fn drop(&mut self) {
        self.close();
    }
}

const NOT_STOPPED: &str = "no thread is stopped: detrix-agent answers stackTrace, scopes, variables and evaluate only between a stopped event and its continue";

/// The frames of a stop as DAP `StackFrame`s. Frame 0 is reported at the breakpoint's own
/// path and line, as a debugger reports the breakpoint it stopped at: the daemon matches the
/// stop to its metric by the top frame's file and line (§9).
fn stop_frames(stop: &Stop) -> Vec<Value> {
    let mut frames = Vec::with_capacity(stop.stack.len().max(1));
    let top_name = stop.stack.first().map_or("??", |f| f.function.as_str());
    frames.push(frame_json(0, top_name, Some(&stop.path), Some(stop.line)));
    for (i, f) in stop.stack.iter().enumerate().skip(1) {
        frames.push(frame_json(i, &f.function, f.file.as_deref(), f.line));
    }
    frames
}

fn frame_json(index: usize, name: &str, file: Option<&str>, line: Option<u32>) -> Value {
    let id = FRAME_ID_BASE + i64::try_from(index).unwrap_or(0);
    let mut f = json!({"id": id, "name": name, "line": line.unwrap_or(0), "column": 0});
    if let Some(path) = file {
        let base = path.rsplit('/').next().unwrap_or(path);
        f["source"] = json!({"name": base, "path": path});
    }
    f
}

/// `expr` answered from a stop: a value captured for it, or a local of that name (also in
/// parentheses, the form C expressions take through a `rust` connection).
fn lookup<'a>(stop: &'a Stop, expr: &str) -> Option<&'a V> {
    if let Some((_, v)) = stop.values.iter().find(|(e, _)| e == expr) {
        return Some(v);
    }
    let mut name = expr.trim();
    while let Some(inner) = name.strip_prefix('(').and_then(|n| n.strip_suffix(')')) {
        name = inner.trim();
    }
    stop.locals.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// `len(x)` of a Go string local captured whole: its byte length, no debugger needed.
fn builtin_len(stop: &Stop, expr: &str, lang: Language) -> Option<usize> {
    if lang != Language::Go {
        return None;
    }
    let arg = expr.strip_prefix("len(")?.strip_suffix(')')?.trim();
    match lookup(stop, arg)? {
        // A replacement character may stand for bytes that were not UTF-8: length unknown.
        V::Str {
            text,
            truncated: false,
        } if !text.contains('\u{fffd}') => Some(text.len()),
        _ => None,
    }
}

/// Whether `expr` calls a function, by the daemon's own rule (contract.md §9): a `(` at index
/// > 0 right after an identifier character or `.`. Casts such as `(long)x` are not calls.
#[must_use]
pub fn has_call(expr: &str) -> bool {
    let b = expr.as_bytes();
    (1..b.len()).any(|i| {
        b[i] == b'(' && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'.')
    })
}

/// A debugger's result text as a template value: kept when it is JSON (Delve quotes strings,
/// numbers are bare), otherwise sent as a JSON string.
fn debugger_value(text: &str) -> String {
    if serde_json::from_str::<Value>(text).is_ok() {
        text.replace('|', "\\u007c")
    } else {
        template::json_string(text)
    }
}

/// A type name in the target language's spelling, as far as a captured value tells.
/// A value as a `variables` or `evaluate` response shows it. lldb-dap puts its display text
/// there as is (`0x0000555555556012 "alice"`, `order`), so C, C++ and Rust composites go out
/// raw; scalars and strings, and every Go value, as in `output` events.
fn shown_value(lang: Language, v: &V) -> String {
    match v {
        V::Text(t) if lang != Language::Go => t.clone(),
        other => template::render_value(other),
    }
}

fn type_name(lang: Language, v: &V) -> &'static str {
    let go = lang == Language::Go;
    match v {
        V::Int(_) => {
            if go {
                "int"
            } else {
                "i64"
            }
        }
        V::UInt(_) => {
            if go {
                "uint"
            } else {
                "u64"
            }
        }
        V::Float(_) => {
            if go {
                "float64"
            } else {
                "f64"
            }
        }
        V::Bool(_) => "bool",
        V::Str { .. } => {
            if go {
                "string"
            } else {
                "&str"
            }
        }
        V::Text(_) | V::Error(_) => "",
    }
}
