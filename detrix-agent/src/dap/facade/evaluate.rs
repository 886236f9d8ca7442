//! `evaluate` and debugger jobs: the part of [`Facade`] that answers an expression from the
//! current snapshot, learns one the snapshot lacked (re-installing its probe), or asks a
//! debugger ([`Effect::Evaluate`]) and answers when [`Input::Evaluated`](super::Input::Evaluated)
//! comes back, and the rounds of call logpoints.
//!
//! Kept apart from the dispatch because these answers may come one or more inputs later.

use std::time::Duration;

use serde_json::{json, Value};

use super::breakpoints::{Awaiting, Learn};
use super::{
    has_call, Effect, Evaluated, Facade, Job, JobFor, Kind, Route, CALL_LOGPOINT_INTERVAL,
    RUST_CALL_MESSAGE, SAFE_MODE_CALL_MESSAGE,
};
use crate::dap::calls::debugger_value;
use crate::dap::snapshot::{self, NOT_STOPPED};
use crate::dap::template;
use crate::debuginfo::Language;
use crate::engine::LogpointSpec;

impl Facade {
    pub(super) fn evaluate(&mut self, request_seq: i64, args: &Value, out: &mut Vec<Effect>) {
        const CMD: &str = "evaluate";
        let raw = args
            .get("expression")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim();
        let Some(stop) = self.current.as_ref() else {
            return self.respond(request_seq, CMD, Err(NOT_STOPPED.to_owned()), out);
        };
        let (expr, said_call) = match raw.strip_prefix("call ") {
            Some(e) => (e.trim(), true),
            None => (raw, false),
        };
        if expr.is_empty() {
            return self.respond(
                request_seq,
                CMD,
                Err("evaluate without an expression".into()),
                out,
            );
        }
        let lang = self.opts.target;
        if let Some(v) = snapshot::lookup(stop, expr) {
            let body = snapshot::evaluate_body(lang, v);
            return self.respond(request_seq, CMD, Ok(Some(body)), out);
        }
        if said_call || has_call(expr) {
            if let Some(n) = snapshot::builtin_len(stop, expr, lang) {
                let body = json!({"result": n.to_string(), "type": "int", "variablesReference": 0});
                return self.respond(request_seq, CMD, Ok(Some(body)), out);
            }
            if self.opts.safe_mode {
                return self.respond(request_seq, CMD, Err(SAFE_MODE_CALL_MESSAGE.into()), out);
            }
            if lang == Language::Rust {
                return self.respond(request_seq, CMD, Err(RUST_CALL_MESSAGE.into()), out);
            }
            let (path, line) = (stop.path.clone(), stop.line);
            let token = self.new_job(&path, line, vec![expr.to_owned()], Duration::ZERO, out);
            self.pending.insert(
                token,
                JobFor::Evaluate {
                    request_seq,
                    expr: expr.to_owned(),
                },
            );
            return;
        }
        let (path, bp_id) = (stop.path.clone(), stop.bp_id);
        self.learn(request_seq, &path, bp_id, expr, out);
    }

    /// Re-installs the stop's probe so it also captures `expr`. This stop's answer is a
    /// failure either way; its sentence waits for the install's result when there is one.
    pub(super) fn learn(
        &mut self,
        request_seq: i64,
        path: &str,
        bp_id: i64,
        expr: &str,
        out: &mut Vec<Effect>,
    ) {
        let entry = self
            .files
            .get(path)
            .and_then(|v| v.iter().find(|i| i.bp_id == bp_id));
        let answer = match entry.map(|e| &e.kind) {
            None => format!(
                "`{expr}` was not captured at this hit, and its breakpoint was removed since"
            ),
            Some(Kind::Snapshot { learned }) if learned.iter().any(|e| e == expr) => {
                format!("`{expr}` could not be read at this hit")
            }
            Some(Kind::Snapshot { learned }) => {
                let mut exprs = learned.clone();
                exprs.push(expr.to_owned());
                let line = entry.map_or(0, |e| e.line);
                let probe = self.install(
                    path,
                    LogpointSpec {
                        line,
                        exprs: exprs.clone(),
                        condition: None,
                        capture_stack: true,
                        capture_locals: true,
                    },
                    out,
                );
                self.awaiting = Some(Awaiting::Learn(Learn {
                    request_seq,
                    expr: expr.to_owned(),
                    path: path.to_owned(),
                    bp_id,
                    probe,
                    exprs,
                }));
                return;
            }
            Some(_) => format!("`{expr}` is not a value captured at this line"),
        };
        self.respond(request_seq, "evaluate", Err(answer), out);
    }

    /// The re-install of [`Facade::learn`] answered: the new probe replaces the old one, or
    /// the stop's answer says why the expression cannot be captured.
    pub(super) fn learned(&mut self, l: Learn, result: Result<(), String>, out: &mut Vec<Effect>) {
        let Learn {
            request_seq,
            expr,
            path,
            bp_id,
            probe,
            exprs,
        } = l;
        let answer = match result {
            Err(e) => format!("`{expr}` cannot be captured at this line: {e}"),
            Ok(()) => {
                let entry = self
                    .files
                    .get_mut(&path)
                    .and_then(|v| v.iter_mut().find(|i| i.bp_id == bp_id));
                if let Some(e) = entry {
                    let line = e.line;
                    let old = e.logpoint.replace(probe);
                    e.kind = Kind::Snapshot { learned: exprs };
                    if let Some(old) = old {
                        out.push(Effect::Remove(old));
                        self.routes.remove(&old);
                    }
                    self.routes.insert(probe, Route::Stop { path, line, bp_id });
                } else {
                    out.push(Effect::Remove(probe));
                }
                format!(
                    "`{expr}` is not a local variable, and this breakpoint's snapshot held only locals; it is captured from the next hit on"
                )
            }
        };
        self.respond(request_seq, "evaluate", Err(answer), out);
    }

    pub(super) fn new_job(
        &mut self,
        file: &str,
        line: u32,
        exprs: Vec<String>,
        delay: Duration,
        out: &mut Vec<Effect>,
    ) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        out.push(Effect::Evaluate(Job {
            token,
            file: file.to_owned(),
            line,
            exprs,
            delay,
        }));
        token
    }

    /// A job's outcome: `Ok` with one result per expression, or `Err` with why the debugger
    /// could not be used at all.
    pub(super) fn job_done(
        &mut self,
        token: u64,
        outcome: Result<Vec<Evaluated>, String>,
        out: &mut Vec<Effect>,
    ) {
        let Some(what) = self.pending.remove(&token) else {
            return;
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
                self.respond(request_seq, "evaluate", r, out);
            }
            JobFor::CallLogpoint { bp_id } => {
                let Some((path, entry)) = self.files.iter().find_map(|(p, v)| {
                    v.iter()
                        .find(|i| i.bp_id == bp_id)
                        .map(|i| (p.clone(), i.clone()))
                }) else {
                    return;
                };
                let Kind::CallLogpoint { name, exprs, .. } = &entry.kind else {
                    return;
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
                self.event(
                    "output",
                    Some(json!({"category": "console", "output": text})),
                    out,
                );
                let token = self.new_job(
                    &path,
                    entry.line,
                    exprs.clone(),
                    CALL_LOGPOINT_INTERVAL,
                    out,
                );
                self.pending.insert(token, JobFor::CallLogpoint { bp_id });
            }
        }
    }
}
