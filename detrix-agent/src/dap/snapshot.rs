//! Breakpoint mode's answers from one in-kernel snapshot (contract.md §9): the synthetic stop
//! a hit becomes, and the `stackTrace`, `scopes`, `variables` and `evaluate` bodies read from
//! it the way Delve and lldb-dap shape them.
//!
//! Pure functions over a [`Stop`]; the state machine in [`super::facade`] decides which stop
//! is current and what to do when a value is not in it (learn it, or ask a debugger).

use serde_json::{json, Value};

use super::template;
use crate::debuginfo::Language;
use crate::engine::Frame;
use crate::plan::Value as V;

/// Frame ids of a stop are `FRAME_ID_BASE + index`, the locals scope is [`LOCALS_REF`] (the
/// numbers Delve uses; the daemon reuses the first stackTrace's frame id for the whole stop).
pub const FRAME_ID_BASE: i64 = 1000;
/// `variablesReference` of a stop's one scope.
pub const LOCALS_REF: i64 = 2000;

/// Why a stop request fails when nothing is stopped.
pub(super) const NOT_STOPPED: &str = "no thread is stopped: detrix-agent answers stackTrace, scopes, variables and evaluate only between a stopped event and its continue";

/// One synthetic stop: what the kernel captured at one hit.
#[derive(Debug, Clone)]
pub(super) struct Stop {
    pub path: String,
    pub line: u32,
    pub bp_id: i64,
    pub thread_id: i64,
    pub stack: Vec<Frame>,
    pub locals: Vec<(String, V)>,
    pub values: Vec<(String, V)>,
}

/// The `stopped` event body for `stop`.
pub(super) fn stopped_body(stop: &Stop) -> Value {
    json!({"reason": "breakpoint", "threadId": stop.thread_id, "allThreadsStopped": true, "hitBreakpointIds": [stop.bp_id]})
}

/// The `scopes` body: one scope, the locals.
pub(super) fn scopes_body() -> Value {
    json!({"scopes": [{"name": "Locals", "presentationHint": "locals", "variablesReference": LOCALS_REF, "expensive": false}]})
}

/// The `variables` body for `reference` (only [`LOCALS_REF`] has any).
pub(super) fn variables_body(stop: &Stop, reference: i64, lang: Language) -> Value {
    let vars: Vec<Value> = if reference == LOCALS_REF {
        stop.locals
            .iter()
            .filter(|(n, _)| !(n.starts_with("__") && n.ends_with("__")))
            .map(|(n, v)| json!({"name": n, "value": shown_value(lang, v), "type": type_name(lang, v), "variablesReference": 0}))
            .collect()
    } else {
        Vec::new()
    };
    json!({ "variables": vars })
}

/// The `stackTrace` body for `args` (`startFrame`, `levels`).
pub(super) fn stack_trace_body(stop: &Stop, args: &Value) -> Value {
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
    json!({"stackFrames": shown, "totalFrames": total})
}

/// The `evaluate` body for a value found in the stop.
pub(super) fn evaluate_body(lang: Language, v: &V) -> Value {
    json!({"result": shown_value(lang, v), "type": type_name(lang, v), "variablesReference": 0})
}

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
pub(super) fn lookup<'a>(stop: &'a Stop, expr: &str) -> Option<&'a V> {
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
pub(super) fn builtin_len(stop: &Stop, expr: &str, lang: Language) -> Option<usize> {
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

/// A value as a `variables` or `evaluate` response shows it. lldb-dap puts its display text
/// there as is (`0x0000555555556012 "alice"`, `order`), so C, C++ and Rust composites go out
/// raw; scalars and strings, and every Go value, as in `output` events.
fn shown_value(lang: Language, v: &V) -> String {
    match v {
        V::Text(t) if lang != Language::Go => t.clone(),
        other => template::render_value(other),
    }
}

/// A type name in the target language's spelling, as far as a captured value tells.
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
