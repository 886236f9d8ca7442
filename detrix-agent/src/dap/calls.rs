//! What only a spawned debugger can do for the facade: function calls in expressions.
//!
//! The facade never runs a debugger; it asks for one with an
//! [`Effect::Evaluate`](super::facade::Effect::Evaluate) carrying a [`Job`], and the shell
//! ([`crate::daemon`], with [`crate::fallback`]) answers with an [`Evaluated`] list. This file
//! holds that interface and the rules around it (which expression is a call, what SafeMode
//! and a Rust target answer instead), so the state machine in [`super::facade`] stays about
//! requests and probes.

use std::time::Duration;

use serde_json::Value;

use super::template;

/// Pause between two debugger rounds of the same call logpoint: each round stops the target
/// and takes the agent's own uprobes off it, so it is rationed.
pub const CALL_LOGPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Work only a spawned debugger can do, for the shell to run ([`crate::fallback`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Quote it back in [`Input::Evaluated`](super::facade::Input::Evaluated).
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

/// Why an entry without `logMessage` or a call is refused.
pub const SAFE_MODE_CALL_MESSAGE: &str = "SafeMode: this connection is in SafeMode, which never spawns a debugger and never \
     pauses the target, and evaluating a function call needs one; drop the call from the expression or register without \
     --safe-mode";

/// Why a Rust function call cannot be evaluated (toolchain.md E13).
pub const RUST_CALL_MESSAGE: &str = "function calls in Rust expressions cannot be evaluated: lldb has no Rust expression \
     evaluator (lldb-dap answers `Expression evaluation in Rust not supported`); capture the values the function would \
     read instead";

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
pub(super) fn debugger_value(text: &str) -> String {
    if serde_json::from_str::<Value>(text).is_ok() {
        text.replace('|', "\\u007c")
    } else {
        template::json_string(text)
    }
}
