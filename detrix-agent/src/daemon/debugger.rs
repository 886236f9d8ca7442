//! The debugger worker: runs the facade's [`Effect::Evaluate`](crate::dap::Effect::Evaluate)
//! jobs with [`crate::fallback`], one at a time (one debugger per process at a time), taking
//! the agent's uprobes off the process for each round and putting them back after.
//!
//! A task of its own so a round (seconds) never holds up a session or the hit path; sessions
//! queue jobs and get each outcome back on their own channel, quoting the job's token.

use std::time::Duration;

use tokio::sync::mpsc;

use super::registry::Probes;
use crate::dap::facade::{Evaluated, Job};
use crate::debuginfo::Language;
use crate::fallback::{self, Debugger};

/// A debugger job's outcome, by token.
pub type JobOutcome = (u64, Result<Vec<Evaluated>, String>);

/// A debugger job and where its outcome goes.
pub struct JobRequest {
    pub job: Job,
    pub reply: mpsc::UnboundedSender<JobOutcome>,
}

/// How long a debugger round waits for its line to run.
const FALLBACK_HIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs debugger jobs one at a time (one debugger per process at a time), taking the agent's
/// uprobes off the process for each and putting them back after.
pub fn spawn_fallback_worker(
    probes: Probes,
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
            probes.suspend().await;
            let started = std::time::Instant::now();
            let outcome = fallback::evaluate_at(&req).await.map_err(|e| e.to_string());
            for (id, why) in probes.resume().await {
                tracing::warn!(session = id.session, probe = id.n, %why, "a logpoint could not be put back after a debugger round");
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
