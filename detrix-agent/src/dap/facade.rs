//! The DAP facade: answers the daemon's requests the way Delve (`go`) or lldb-dap (`rust`)
//! would, and turns hits into the `output` events the daemon parses.
//!
//! It is a plain state machine over JSON values — request in, messages out — with the probes
//! behind the [`ProbeSet`] trait, so the whole conversation can be replayed from golden
//! transcripts without a kernel, and the I/O shell ([`crate::daemon`]) only moves frames.
//!
//! Rules it keeps (contract.md §0, §4–§6, Appendix B):
//! * every request gets exactly one response, matched by `request_seq` (unknown commands get
//!   `success:false`, `"unsupported"`), so the daemon never waits out its 30 s timeout;
//! * `attach` is answered at once with success, for every argument shape and even after
//!   `configurationDone` (the daemon may not wait for it, §5.3);
//! * `setBreakpoints` replaces the probe set of one file and answers one entry per requested
//!   breakpoint, in order; unchanged entries keep their probe, so a replay never opens a gap;
//! * the session's probes are all removed when it ends ([`Facade::close`]).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::template::{self, Prefix};
use crate::engine::{Hit, LogpointId, LogpointSpec};

/// Installs and removes logpoints for a facade. The real one drives the [`crate::engine`]; tests
/// use a recording fake.
pub trait ProbeSet {
    /// Installs a logpoint capturing `spec.exprs` at `file:spec.line`.
    ///
    /// # Errors
    /// A sentence saying why the line or an expression cannot be captured (it becomes the
    /// breakpoint's `message`).
    fn add(&mut self, file: &str, spec: &LogpointSpec) -> Result<LogpointId, String>;
    /// Removes a logpoint this set installed.
    fn remove(&mut self, id: LogpointId);
}

/// Why an entry without `logMessage` is refused, until breakpoint mode (contract.md §9) lands.
pub const BREAKPOINT_MODE_MESSAGE: &str = "breakpoint mode (a metric with captureStackTrace or captureMemorySnapshot, or on a go \
     connection an expression with a call) is not supported by detrix-agent yet; it arrives in its own issue. \
     Use a plain logpoint metric (no stack trace, no memory snapshot, no calls in go expressions) instead";

/// One installed logpoint of the session.
#[derive(Debug, Clone)]
struct Installed {
    line: u32,
    log_message: String,
    logpoint: LogpointId,
    bp_id: i64,
}

/// One DAP session's state.
#[derive(Debug)]
pub struct Facade<P: ProbeSet> {
    probes: P,
    prefix: Prefix,
    seq: i64,
    /// By `source.path`: the file's current probe set.
    files: HashMap<String, Vec<Installed>>,
    /// Metric name of each installed logpoint, for hits.
    names: HashMap<LogpointId, String>,
    next_bp_id: i64,
    ended: bool,
}

impl<P: ProbeSet> Facade<P> {
    /// A session for a connection registered with `daemon_language` (`go` or `rust`).
    pub fn new(probes: P, daemon_language: &str) -> Self {
        Self {
            probes,
            prefix: Prefix::for_language(daemon_language),
            seq: 0,
            files: HashMap::new(),
            names: HashMap::new(),
            next_bp_id: 1,
            ended: false,
        }
    }

    /// The probe set (for tests and counters).
    pub fn probes(&self) -> &P {
        &self.probes
    }

    /// Number of logpoints this session has installed now.
    #[must_use]
    pub fn installed(&self) -> usize {
        self.names.len()
    }

    fn next_seq(&mut self) -> i64 {
        self.seq += 1;
        self.seq
    }

    fn response(&mut self, request_seq: i64, command: &str, result: Result<Option<Value>, String>) -> Value {
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
    /// but a request (the daemon sends no others) is ignored.
    pub fn handle(&mut self, msg: &Value) -> Vec<Value> {
        if msg.get("type").and_then(Value::as_str) != Some("request") {
            tracing::debug!(?msg, "ignoring a DAP message that is not a request");
            return Vec::new();
        }
        let request_seq = msg.get("seq").and_then(Value::as_i64).unwrap_or(0);
        let command = msg.get("command").and_then(Value::as_str).unwrap_or("").to_owned();
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
            "continue" => vec![self.response(request_seq, &command, Ok(Some(json!({"allThreadsContinued": true}))))],
            "setBreakpoints" => {
                let result = self.set_breakpoints(&args);
                vec![self.response(request_seq, &command, result.map(Some))]
            }
            "disconnect" | "terminate" => {
                // Never sent by the daemon (§4); answered so a generic DAP client is not left
                // waiting. The target keeps running; probes go when the socket closes.
                vec![self.response(request_seq, &command, Ok(None))]
            }
            _ => vec![self.response(request_seq, &command, Err("unsupported".into()))],
        }
    }

    /// Replaces the probe set of `arguments.source.path` with `arguments.breakpoints`.
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
        // First pass: decide, per entry, whether an identical probe already exists. Removing the
        // stale ones before installing new ones keeps a line from ever having two probes.
        let mut plan: Vec<Option<Installed>> = Vec::with_capacity(requested.len());
        for entry in &requested {
            let line = entry.get("line").and_then(Value::as_u64).and_then(|l| u32::try_from(l).ok());
            let msg = entry.get("logMessage").and_then(Value::as_str);
            let reuse = match (line, msg) {
                (Some(line), Some(msg)) => old.iter().position(|i| i.line == line && i.log_message == msg).map(|ix| old.swap_remove(ix)),
                _ => None,
            };
            plan.push(reuse);
        }
        for stale in old {
            self.probes.remove(stale.logpoint);
            self.names.remove(&stale.logpoint);
        }
        for (entry, reuse) in requested.iter().zip(plan) {
            let line = entry.get("line").and_then(Value::as_u64).and_then(|l| u32::try_from(l).ok());
            let Some(line) = line.filter(|l| *l > 0) else {
                answers.push(json!({"verified": false, "message": "breakpoint entry without a line number ≥ 1"}));
                continue;
            };
            let installed = if let Some(i) = reuse {
                Ok(i)
            } else {
                match entry.get("logMessage").and_then(Value::as_str) {
                    None => Err(BREAKPOINT_MODE_MESSAGE.to_owned()),
                    Some(msg) => self.install(&path, line, msg),
                }
            };
            match installed {
                Ok(i) => {
                    answers.push(json!({"id": i.bp_id, "verified": true, "line": line, "source": {"name": basename, "path": path}}));
                    kept.push(i);
                }
                Err(message) => answers.push(json!({"verified": false, "line": line, "message": message})),
            }
        }
        if !kept.is_empty() {
            self.files.insert(path, kept);
        }
        Ok(json!({ "breakpoints": answers }))
    }

    fn install(&mut self, path: &str, line: u32, log_message: &str) -> Result<Installed, String> {
        let template = template::parse(log_message).map_err(|e| e.to_string())?;
        let spec = LogpointSpec { line, exprs: template.exprs.clone(), condition: None, ..LogpointSpec::default() };
        let logpoint = self.probes.add(path, &spec)?;
        let bp_id = self.next_bp_id;
        self.next_bp_id += 1;
        self.names.insert(logpoint, template.name.clone());
        Ok(Installed { line, log_message: log_message.to_owned(), logpoint, bp_id })
    }

    /// `output` events for the hits of this session's logpoints (others are dropped: they
    /// belong to a session that ended, or were in flight while their probe was replaced).
    pub fn on_hits(&mut self, hits: &[Hit]) -> Vec<Value> {
        let mut out = Vec::new();
        for h in hits {
            let Some(name) = self.names.get(&h.logpoint) else { continue };
            let id = match self.prefix {
                Prefix::Go if h.goid != 0 => h.goid,
                _ => u64::from(h.tid),
            };
            let values: Vec<crate::plan::Value> = h.values.iter().map(|(_, v)| v.clone()).collect();
            let text = template::output_text(self.prefix, id, name, &values);
            out.push(self.event("output", Some(json!({"category": "console", "output": text}))));
        }
        out
    }

    /// The events that end the session when the target exits: `exited` then `terminated`
    /// (the daemon hangs up on either). The exit code of a process we did not start is not
    /// knowable, so it is reported as 0.
    pub fn target_exited(&mut self) -> Vec<Value> {
        let e = self.event("exited", Some(json!({"exitCode": 0})));
        let t = self.event("terminated", None);
        vec![e, t]
    }

    /// Removes every probe of the session. Idempotent.
    pub fn close(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        for (_, installed) in self.files.drain() {
            for i in installed {
                self.probes.remove(i.logpoint);
            }
        }
        self.names.clear();
    }
}

impl<P: ProbeSet> Drop for Facade<P> {
    fn drop(&mut self) {
        self.close();
    }
}
