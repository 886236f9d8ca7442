//! `setBreakpoints` and the installs it waits for: the part of [`Facade`] that turns one
//! file's requested entries into install and remove effects, and answers once every install
//! has reported back ([`Input::Installed`](super::Input::Installed)).
//!
//! Kept apart from the request dispatch because it is the one request that spans several
//! inputs: its state ([`Awaiting`]) lives between the effect and its result.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    has_call, Effect, Facade, Installed, JobFor, Kind, ProbeId, Route, MAX_BREAKPOINTS_PER_FILE,
    SAFE_MODE_CALL_MESSAGE,
};
use crate::dap::template;
use crate::debuginfo::Language;
use crate::engine::LogpointSpec;

/// One requested entry of a `setBreakpoints` while its installs are under way.
#[derive(Debug)]
pub(super) enum Entry {
    /// Answered already (refused before any install).
    Answered(Value),
    /// Identical to an entry installed before: keeps its probe and id.
    Reused(Installed),
    /// A new entry; `probe` is installing (or `None`: nothing to capture in the kernel).
    New {
        line: u32,
        kind: Kind,
        probe: Option<ProbeId>,
        route: Option<Route>,
    },
    /// A new call logpoint (debugger rounds, no probe).
    NewCall {
        line: u32,
        log_message: String,
        name: String,
        exprs: Vec<String>,
    },
}

/// A request waiting for install results.
#[derive(Debug)]
pub(super) enum Awaiting {
    SetBreakpoints {
        request_seq: i64,
        path: String,
        entries: Vec<Entry>,
        results: HashMap<ProbeId, Result<(), String>>,
        waiting: usize,
    },
    Learn(Learn),
}

/// `evaluate` of `expr` re-installs breakpoint `bp_id`'s probe as `probe` to capture `exprs`.
#[derive(Debug)]
pub(super) struct Learn {
    pub request_seq: i64,
    pub expr: String,
    pub path: String,
    pub bp_id: i64,
    pub probe: ProbeId,
    pub exprs: Vec<String>,
}

impl Awaiting {
    pub(super) fn waits_for(&self, id: ProbeId) -> bool {
        match self {
            Awaiting::SetBreakpoints { results, .. } => results.contains_key(&id),
            Awaiting::Learn(l) => l.probe == id,
        }
    }
}

impl Facade {
    /// An install's result: completes the request waiting for it. A result nobody waits for
    /// (the session closed meanwhile) has its probe removed again.
    pub(super) fn installed_result(
        &mut self,
        probe: ProbeId,
        result: Result<(), String>,
        out: &mut Vec<Effect>,
    ) {
        if !self.awaiting.as_ref().is_some_and(|a| a.waits_for(probe)) {
            if result.is_ok() {
                out.push(Effect::Remove(probe));
            }
            return;
        }
        match self.awaiting.take() {
            Some(Awaiting::SetBreakpoints {
                request_seq,
                path,
                entries,
                mut results,
                waiting,
            }) => {
                results.insert(probe, result);
                if waiting > 1 {
                    self.awaiting = Some(Awaiting::SetBreakpoints {
                        request_seq,
                        path,
                        entries,
                        results,
                        waiting: waiting - 1,
                    });
                } else {
                    self.finish_set_breakpoints(request_seq, path, entries, &mut results, out);
                }
            }
            Some(Awaiting::Learn(l)) => self.learned(l, result, out),
            None => {}
        }
    }

    /// Replaces the probe set of `arguments.source.path` with `arguments.breakpoints`: stale
    /// entries are removed first (a line never has two probes), new ones installed, and the
    /// answer sent when every install has answered.
    pub(super) fn set_breakpoints(
        &mut self,
        request_seq: i64,
        args: &Value,
        out: &mut Vec<Effect>,
    ) {
        let requested = match requested_breakpoints(args) {
            Ok(r) => r,
            Err(e) => return self.respond(request_seq, "setBreakpoints", Err(e), out),
        };
        let (path, requested) = requested;
        let mut old = self.files.remove(&path).unwrap_or_default();
        // First pass: decide, per entry, whether an identical entry already exists.
        let mut reuse: Vec<Option<Installed>> = Vec::with_capacity(requested.len());
        for entry in requested {
            let line = entry_line(entry);
            let msg = entry.get("logMessage").and_then(Value::as_str);
            reuse.push(line.and_then(|line| {
                old.iter()
                    .position(|i| i.same_entry(line, msg))
                    .map(|ix| old.swap_remove(ix))
            }));
        }
        for stale in old {
            self.uninstall(&stale, out);
        }
        let mut entries = Vec::with_capacity(requested.len());
        let mut results = HashMap::new();
        for (n, (entry, reuse)) in requested.iter().zip(reuse).enumerate() {
            let Some(line) = entry_line(entry).filter(|l| *l > 0) else {
                entries.push(Entry::Answered(
                    json!({"verified": false, "message": "breakpoint entry without a line number ≥ 1"}),
                ));
                continue;
            };
            if n >= MAX_BREAKPOINTS_PER_FILE {
                entries.push(Entry::Answered(json!({"verified": false, "line": line, "message": format!(
                    "entry {} of {} is over the limit of {MAX_BREAKPOINTS_PER_FILE} breakpoints per file (MAX_BREAKPOINTS_PER_FILE); the first {MAX_BREAKPOINTS_PER_FILE} are set",
                    n + 1, requested.len())})));
                continue;
            }
            let e = if let Some(i) = reuse {
                Entry::Reused(i)
            } else {
                match entry.get("logMessage").and_then(Value::as_str) {
                    None => self.new_snapshot(&path, line, out),
                    Some(msg) => self.new_logpoint(&path, line, msg, out),
                }
            };
            if let Entry::New { probe: Some(p), .. } = &e {
                results.insert(*p, Err(String::new()));
            }
            entries.push(e);
        }
        let waiting = results.len();
        if waiting == 0 {
            self.finish_set_breakpoints(request_seq, path, entries, &mut results, out);
        } else {
            self.awaiting = Some(Awaiting::SetBreakpoints {
                request_seq,
                path,
                entries,
                results,
                waiting,
            });
        }
    }

    pub(super) fn new_snapshot(&mut self, path: &str, line: u32, out: &mut Vec<Effect>) -> Entry {
        let probe = self.install(
            path,
            LogpointSpec {
                line,
                exprs: Vec::new(),
                condition: None,
                capture_stack: true,
                capture_locals: true,
            },
            out,
        );
        Entry::New {
            line,
            kind: Kind::Snapshot {
                learned: Vec::new(),
            },
            probe: Some(probe),
            route: None,
        }
    }

    pub(super) fn new_logpoint(
        &mut self,
        path: &str,
        line: u32,
        log_message: &str,
        out: &mut Vec<Effect>,
    ) -> Entry {
        let refused = |message: String| {
            Entry::Answered(json!({"verified": false, "line": line, "message": message}))
        };
        let template = match template::parse(log_message) {
            Ok(t) => t,
            Err(e) => return refused(e.to_string()),
        };
        if let Some(call) = template.exprs.iter().find(|e| has_call(e)) {
            if self.opts.safe_mode {
                return refused(format!(
                    "`{call}` calls a function. {SAFE_MODE_CALL_MESSAGE}"
                ));
            }
            if self.opts.target != Language::Rust {
                return Entry::NewCall {
                    line,
                    log_message: log_message.to_owned(),
                    name: template.name,
                    exprs: template.exprs,
                };
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
        let probe = if exprs.is_empty() {
            None
        } else {
            Some(self.install(
                path,
                LogpointSpec {
                    line,
                    exprs,
                    condition: None,
                    capture_stack: false,
                    capture_locals: false,
                },
                out,
            ))
        };
        Entry::New {
            line,
            kind: Kind::Logpoint {
                log_message: log_message.to_owned(),
            },
            probe,
            route: Some(Route::Output {
                name: template.name,
                exprs: template.exprs,
            }),
        }
    }

    /// Every install of a `setBreakpoints` has answered: number the entries that stand, route
    /// their probes, start call rounds, and answer.
    pub(super) fn finish_set_breakpoints(
        &mut self,
        request_seq: i64,
        path: String,
        entries: Vec<Entry>,
        results: &mut HashMap<ProbeId, Result<(), String>>,
        out: &mut Vec<Effect>,
    ) {
        let basename = path.rsplit('/').next().unwrap_or(&path).to_owned();
        let mut kept: Vec<Installed> = Vec::new();
        let mut answers = Vec::with_capacity(entries.len());
        for entry in entries {
            let installed = match entry {
                Entry::Answered(v) => {
                    answers.push(v);
                    continue;
                }
                Entry::Reused(i) => i,
                Entry::New {
                    line,
                    kind,
                    probe,
                    route,
                } => {
                    if let Some(Err(message)) = probe.and_then(|p| results.remove(&p)) {
                        answers.push(json!({"verified": false, "line": line, "message": message}));
                        continue;
                    }
                    let bp_id = self.take_bp_id();
                    if let Some(p) = probe {
                        let route = route.unwrap_or(Route::Stop {
                            path: path.clone(),
                            line,
                            bp_id,
                        });
                        self.routes.insert(p, route);
                    }
                    Installed {
                        line,
                        kind,
                        logpoint: probe,
                        bp_id,
                        off: None,
                    }
                }
                Entry::NewCall {
                    line,
                    log_message,
                    name,
                    exprs,
                } => {
                    let bp_id = self.take_bp_id();
                    let token = self.new_job(&path, line, exprs.clone(), Duration::ZERO, out);
                    self.pending.insert(token, JobFor::CallLogpoint { bp_id });
                    Installed {
                        line,
                        kind: Kind::CallLogpoint {
                            log_message,
                            name,
                            exprs,
                        },
                        logpoint: None,
                        bp_id,
                        off: None,
                    }
                }
            };
            let mut answer = json!({"id": installed.bp_id, "verified": true, "line": installed.line, "source": {"name": basename, "path": path}});
            if let Some(message) = &installed.off {
                answer["verified"] = false.into();
                answer["message"] = message.as_str().into();
            }
            answers.push(answer);
            kept.push(installed);
        }
        if !kept.is_empty() {
            self.files.insert(path, kept);
        }
        self.respond(
            request_seq,
            "setBreakpoints",
            Ok(Some(json!({ "breakpoints": answers }))),
            out,
        );
    }

    /// The CPU breaker took `probe` off (the registry removed it): its breakpoint stays in
    /// the file's set, unverified with the reason — an identical entry in a later
    /// `setBreakpoints` is answered so and not installed again (adding a line next to a hot
    /// one must not bring the hot one back); removing the entry and adding it again does —
    /// and the daemon is told with a `breakpoint` event, reason `changed`. A probe this
    /// session does not route (another session's, or one replaced meanwhile) is ignored.
    pub(super) fn switched_off(&mut self, probe: ProbeId, why: &str, out: &mut Vec<Effect>) {
        if self.routes.remove(&probe).is_none() {
            return;
        }
        let message = format!(
            "switched off by the CPU breaker: {why}. Remove the breakpoint and set it again to switch it back on"
        );
        let held = match &mut self.awaiting {
            Some(Awaiting::SetBreakpoints { path, entries, .. }) => Some((path.as_str(), entries)),
            _ => None,
        };
        let in_files = self.files.iter_mut().find_map(|(path, v)| {
            let i = v.iter_mut().find(|i| i.logpoint == Some(probe))?;
            Some((path.as_str(), i))
        });
        let in_request = || {
            let (path, entries) = held?;
            entries.iter_mut().find_map(|e| match e {
                Entry::Reused(i) if i.logpoint == Some(probe) => Some((path, i)),
                _ => None,
            })
        };
        let Some((path, i)) = in_files.or_else(in_request) else {
            return;
        };
        i.logpoint = None;
        i.off = Some(message.clone());
        let (bp_id, line) = (i.bp_id, i.line);
        let path = path.to_owned();
        self.queued.retain(|s| s.bp_id != bp_id);
        let name = path.rsplit('/').next().unwrap_or(&path).to_owned();
        self.event(
            "breakpoint",
            Some(json!({"reason": "changed", "breakpoint": {
                "id": bp_id, "verified": false, "line": line, "message": message,
                "source": {"name": name, "path": path},
            }})),
            out,
        );
    }

    pub(super) fn uninstall(&mut self, i: &Installed, out: &mut Vec<Effect>) {
        if let Some(id) = i.logpoint {
            out.push(Effect::Remove(id));
            self.routes.remove(&id);
        }
        self.queued.retain(|s| s.bp_id != i.bp_id);
        self.pending
            .retain(|_, j| !matches!(j, JobFor::CallLogpoint { bp_id } if *bp_id == i.bp_id));
    }

    pub(super) fn take_bp_id(&mut self) -> i64 {
        let id = self.next_bp_id;
        self.next_bp_id += 1;
        id
    }
}

/// `arguments.source.path` and `arguments.breakpoints` of a `setBreakpoints`.
fn requested_breakpoints(args: &Value) -> Result<(String, &[Value]), String> {
    let path = args
        .pointer("/source/path")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or(
            "setBreakpoints without arguments.source.path; the agent needs the source file's path",
        )?
        .to_owned();
    let requested: &[Value] = match args.get("breakpoints") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(a)) => a,
        Some(_) => return Err("setBreakpoints arguments.breakpoints is not an array".into()),
    };
    Ok((path, requested))
}

fn entry_line(entry: &Value) -> Option<u32> {
    entry
        .get("line")
        .and_then(Value::as_u64)
        .and_then(|l| u32::try_from(l).ok())
}
