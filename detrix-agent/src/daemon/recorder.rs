//! The DAP recorder: writes every DAP message both ways as JSON lines, in the format of the
//! shared transcripts (`{"t", "dir", "msg"}`), so conversations with the real daemon can be
//! kept as golden files (`detrix-agent attach --record-dap`).
//!
//! Shared by every session of the agent (one file, one clock), so it is a cheap clone around
//! one file behind a mutex; it is written only when recording was asked for.

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

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

    pub(super) fn write(&self, dir: &str, msg: &Value) {
        use std::io::Write as _;
        let line = serde_json::json!({"t": (self.start.elapsed().as_secs_f64() * 10_000.0).round() / 10_000.0, "dir": dir, "msg": msg});
        let mut f = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = writeln!(f, "{line}") {
            tracing::warn!(error = %e, "writing the DAP recording failed");
        }
    }

    pub(super) fn note(&self, note: &str, generation: u64) {
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
