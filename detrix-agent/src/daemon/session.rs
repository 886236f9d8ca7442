//! The DAP sessions' I/O shell: accepts the daemon's connections, reads frames, and for each
//! connection runs a [`Facade`] — feeding it requests, hit batches from the [`Hub`] and the
//! results of its effects, and performing those effects (send frames, install and remove
//! probes through the registry, queue debugger jobs).
//!
//! Shape: one task per connection, so one slow daemon never holds up another; frames are read
//! in a task of their own (reading one is not cancel-safe). Effects run in order, and an
//! install's result is fed back before anything else, so the facade sees the same sequence a
//! test harness gives it. A session's probes go when it ends, however it ends: by the facade's
//! own removes on a clean end, and by [`SessionProbes`] when the task is aborted.
//!
//! Who may connect (issue #12 point 1): a connection is served only if [`DapGate`] admits its
//! peer (root or the daemon's user on loopback, a `--dap-allow-peer` address otherwise), at
//! most [`MAX_DAP_CONNECTIONS`] are held at once, and only one is live ([`Hub::join_when_free`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::debugger::{JobOutcome, JobRequest};
use super::hub::Hub;
use super::recorder::DapRecorder;
use super::registry::Probes;
use crate::dap::codec::{encode_frame, read_frame};
use crate::dap::facade::Options;
use crate::dap::{Effect, Facade, Input};
use crate::peer::DapGate;

/// Most DAP connections held at once (the live session plus those being checked or waiting
/// for it); more are closed at accept, so thousands of idle connections cost nothing.
const MAX_DAP_CONNECTIONS: usize = 16;

/// A session that sends no request within this long after it is admitted is closed, so an
/// idle connection cannot hold the one session slot (the daemon sends `initialize` at once).
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What every session of a listener shares.
#[derive(Clone)]
pub(super) struct SessionCtx {
    pub hub: Arc<Hub>,
    pub probes: Probes,
    pub opts: Options,
    pub exit_rx: watch::Receiver<bool>,
    pub recorder: Option<DapRecorder>,
    pub fallback: mpsc::UnboundedSender<JobRequest>,
    pub gate: DapGate,
}

pub(super) async fn accept_loop(listener: TcpListener, ctx: SessionCtx) {
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

/// Removes a session's probes from the registry when the session's task ends, however it
/// ends (also when it is aborted mid-install: the remove is queued after the install).
struct SessionProbes {
    probes: Probes,
    session: u64,
}

impl Drop for SessionProbes {
    fn drop(&mut self) {
        self.probes.remove_session(self.session);
    }
}

/// One connection's facade and what its effects need.
struct Shell {
    facade: Facade,
    probes: Probes,
    fallback: mpsc::UnboundedSender<JobRequest>,
    jobs_tx: mpsc::UnboundedSender<JobOutcome>,
    generation: u64,
}

impl Shell {
    /// Performs `effects` in order, feeding install results back into the facade, until none
    /// are left; returns the messages to send, in order.
    async fn run(&mut self, effects: Vec<Effect>) -> Vec<Value> {
        let mut sent = Vec::new();
        let mut queue = VecDeque::from(effects);
        while let Some(fx) = queue.pop_front() {
            match fx {
                Effect::Send(m) => sent.push(m),
                Effect::Install { probe, file, spec } => {
                    let result = self.probes.install(probe, file, spec).await;
                    queue.extend(self.facade.step(Input::Installed { probe, result }));
                }
                Effect::Remove(probe) => self.probes.remove(probe),
                Effect::Evaluate(job) => {
                    tracing::info!(session = self.generation, file = job.file, line = job.line, exprs = ?job.exprs, "function call: a debugger round is queued");
                    let _ = self.fallback.send(JobRequest {
                        job,
                        reply: self.jobs_tx.clone(),
                    });
                }
            }
        }
        sent
    }

    /// Steps the facade with `input` and performs what it asks.
    async fn step(&mut self, input: Input<'_>) -> Vec<Value> {
        let effects = self.facade.step(input);
        self.run(effects).await
    }
}

async fn serve_session(stream: TcpStream, ctx: SessionCtx) {
    let SessionCtx {
        hub,
        probes,
        opts,
        mut exit_rx,
        recorder,
        fallback,
        gate: _,
    } = ctx;
    let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel();
    let Some((mut guard, mut hits_rx)) = hub.join_when_free().await else {
        tracing::warn!("DAP connection refused: a session is already live (one session per agent; it is not replaced)");
        return;
    };
    let generation = guard.generation;
    let _owned = SessionProbes {
        probes: probes.clone(),
        session: generation,
    };
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
    let mut shell = Shell {
        facade: Facade::new(generation, opts),
        probes,
        fallback,
        jobs_tx,
        generation,
    };
    let first_request = tokio::time::sleep(FIRST_REQUEST_TIMEOUT);
    tokio::pin!(first_request);
    let mut spoke = false;
    if *exit_rx.borrow() {
        let out = shell.step(Input::TargetExited).await;
        let _ = send(&mut wr, &out, rec).await;
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
                    let out = shell.step(Input::TargetExited).await;
                    let _ = send(&mut wr, &out, rec).await;
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
                    shell.step(Input::Request(&msg)).await
                }
                Some(Ok(None)) | None => {
                    if let Some(r) = rec {
                        r.note("daemon closed its side (EOF)", generation);
                    }
                    tracing::info!(session = generation, probes = shell.facade.installed(), "daemon closed the DAP connection; removing its probes");
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(session = generation, error = %e, "bad DAP frame from the daemon; closing the session");
                    break;
                }
            },
            Some(hits) = hits_rx.recv() => {
                let stray = shell.facade.stray_hits();
                let out = shell.step(Input::Hits(&hits)).await;
                shell.probes.count_after_remove(shell.facade.stray_hits() - stray);
                out
            }
            Some((probe, why)) = guard.switched_off.recv() => {
                tracing::info!(session = generation, probe = probe.n, "telling the daemon that the CPU breaker switched a probe off");
                shell.step(Input::SwitchedOff { probe, why: &why }).await
            }
            Some((token, outcome)) = jobs_rx.recv() => shell.step(Input::Evaluated { token, outcome }).await,
        };
        if let Err(e) = send(&mut wr, &out, rec).await {
            tracing::info!(session = generation, error = %e, "writing to the daemon failed; closing the session");
            break;
        }
    }
    reader.abort();
    shell.step(Input::Close).await;
    drop(guard);
}
