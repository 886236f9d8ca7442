//! The guard's DAP relay (issue #12 point 6): for a debugger that speaks DAP over its stdio
//! (lldb-dap), the guard, not the agent, holds the debugger's end of the conversation, passes
//! every frame through, and when the agent is gone finishes the session itself with the safe
//! detach, so the debugger never sees its client vanish.
//!
//! Why: lldb-dap whose client disappears does not detach safely. Seen with lldb-dap 22 on the
//! C fixture, agent SIGKILLed at the round's breakpoint (LLDBDAP_LOG): with unread responses
//! in its socket it reads `Connection reset by peer`, ends its loop as an internal error and
//! exits without `disconnect`; on plain end of input in the middle of an expression call it
//! exits the same way. Either way `lldb-server` loses its client while the target sits at the
//! breakpoint with the `int3` in its code, and the target dies of `SIGTRAP` (2 of 3 runs).
//! Detaching from a *running* target is no better (toolchain.md E14). What always works is the
//! agent's own order: breakpoints off, target paused, `disconnect {terminateDebuggee:false}`.
//!
//! So the relay remembers from the frames it passes what a safe detach needs: whether an
//! `attach` was sent and has completed (lldb-dap answers it only after `configurationDone`,
//! contract.md §0 rule 10), the source files that got breakpoints, whether the target is
//! stopped, whether the agent already sent `disconnect`. When the agent is gone (its end of the
//! channel closed, or the guard's parent changed) it waits for an attach under way to finish,
//! clears those breakpoints, pauses a running target, disconnects without terminating, and
//! then closes the debugger's input so it exits. Frames the agent was sending when it died
//! are never forwarded half: only whole frames are relayed. Its own requests use sequence
//! numbers far above the agent's, so their responses are told apart.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::dap::codec::{encode_frame, read_frame};

/// The relay's own requests count up from here (the agent's start at 1).
const OWN_SEQ: i64 = 1 << 40;

/// How long the relay waits for an attach under way to complete.
const ATTACH_WAIT: Duration = Duration::from_secs(20);

/// How long the relay waits for the answer to each of its own requests.
const ANSWER_WAIT: Duration = Duration::from_secs(15);

/// After the debugger exited, how long its channel must stay quiet before the relay stops
/// passing on what it wrote.
const DRAIN: Duration = Duration::from_millis(20);

/// How often the relay asks whether the agent is still there.
const POLL: Duration = Duration::from_millis(20);

/// How the relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The debugger closed its output (it exited): the normal end of a round.
    DebuggerClosed,
    /// The agent closed its channel after its own `disconnect` (the normal end of a round);
    /// the debugger's input is closed, so it exits.
    AgentFinished,
    /// The agent went away; the relay finished the session. `steps` lists what it sent, in
    /// order (`setBreakpoints`, `pause`, `disconnect`), each with `ok` or why not.
    AgentGone { steps: Vec<String> },
}

/// What the relay learnt of the session from the frames it passed on.
#[derive(Debug, Default)]
struct Session {
    attach_seq: Option<i64>,
    attached: bool,
    configured: bool,
    sources: BTreeSet<String>,
    stopped: bool,
    disconnect_sent: bool,
}

impl Session {
    fn saw_request(&mut self, m: &Value) {
        if m["type"] != "request" {
            return;
        }
        match m["command"].as_str() {
            Some("attach") => self.attach_seq = m["seq"].as_i64(),
            Some("configurationDone") => self.configured = true,
            Some("disconnect") => self.disconnect_sent = true,
            Some("setBreakpoints") => {
                if let Some(p) = m["arguments"]["source"]["path"].as_str() {
                    self.sources.insert(p.to_owned());
                }
            }
            _ => {}
        }
    }

    fn saw_from_debugger(&mut self, m: &Value) {
        match (m["type"].as_str(), m["event"].as_str()) {
            (Some("event"), Some("stopped")) => self.stopped = true,
            (Some("event"), Some("continued")) => self.stopped = false,
            (Some("response"), _)
                if self.attach_seq.is_some()
                    && m["request_seq"].as_i64() == self.attach_seq
                    && m["success"] == true =>
            {
                // The attached target runs from here until its next `stopped`.
                self.attached = true;
                self.stopped = false;
            }
            _ => {}
        }
    }
}

/// Relays whole DAP frames between the agent and the debugger until the debugger is done
/// (its output closed, or `debugger_running` turned false: `lldb-server` inherits lldb-dap's
/// stdout, so an exited lldb-dap's output may stay open a while) or the agent is gone
/// (`agent_alive` turned false, or the agent's end closed); in the second case it finishes the
/// session safely before returning.
pub async fn run<A, D>(
    agent: A,
    debugger: D,
    agent_alive: impl Fn() -> bool,
    mut debugger_running: impl FnMut() -> bool,
) -> Ended
where
    A: AsyncRead + AsyncWrite + Send + 'static,
    D: AsyncRead + AsyncWrite + Send + 'static,
{
    let (agent_rd, mut agent_wr) = tokio::io::split(agent);
    let (dbg_rd, mut dbg_wr) = tokio::io::split(debugger);
    // Readers run as tasks of their own: a frame half read is never lost to a cancelled read.
    let mut from_agent = reader(agent_rd);
    let mut from_dbg = reader(dbg_rd);
    let mut s = Session::default();
    let mut tick = tokio::time::interval(POLL);
    let mut agent_open = true;
    loop {
        tokio::select! {
            m = from_dbg.recv() => {
                let Some(m) = m else { return Ended::DebuggerClosed };
                s.saw_from_debugger(&m);
                if agent_open && agent_wr.write_all(&encode_frame(&m)).await.is_err() {
                    agent_open = false;
                }
            }
            m = from_agent.recv(), if agent_open => {
                let Some(m) = m else {
                    agent_open = false;
                    continue;
                };
                s.saw_request(&m);
                if dbg_wr.write_all(&encode_frame(&m)).await.is_err() {
                    // The debugger's input is gone; its output ends soon after.
                    agent_open = false;
                }
            }
            _ = tick.tick() => {
                if !debugger_running() {
                    // What it wrote before it exited is already readable: pass it on until
                    // the channel is quiet.
                    while let Ok(Some(m)) = tokio::time::timeout(DRAIN, from_dbg.recv()).await {
                        if !agent_open || agent_wr.write_all(&encode_frame(&m)).await.is_err() {
                            break;
                        }
                    }
                    return Ended::DebuggerClosed;
                }
            }
        }
        if !agent_open || !agent_alive() {
            break;
        }
    }
    drop(agent_wr);
    if s.disconnect_sent && agent_alive() {
        let _ = dbg_wr.shutdown().await;
        return Ended::AgentFinished;
    }
    let steps = finish(&mut s, &mut dbg_wr, &mut from_dbg).await;
    // End of input: the debugger, disconnected, exits.
    let _ = dbg_wr.shutdown().await;
    drop(dbg_wr);
    Ended::AgentGone { steps }
}

/// Frames read from `rd`, in order, until end of input or an unreadable frame.
fn reader<R: AsyncRead + Unpin + Send + 'static>(rd: R) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut rd = BufReader::new(rd);
        while let Ok(Some(m)) = read_frame(&mut rd).await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// The safe detach on the agent's behalf: breakpoints off, target paused, `disconnect`
/// without terminating. Returns what it did, one entry per request.
async fn finish<W: AsyncWrite + Unpin>(
    s: &mut Session,
    wr: &mut W,
    rx: &mut mpsc::Receiver<Value>,
) -> Vec<String> {
    let mut steps = Vec::new();
    if s.disconnect_sent || s.attach_seq.is_none() {
        // Nothing attached, or the agent's own detach is already under way.
        return steps;
    }
    let mut seq = OWN_SEQ;
    if s.configured && !s.attached {
        // The attach is under way; detaching needs it done.
        let attach = s.attach_seq;
        let r = wait(s, rx, ATTACH_WAIT, |m| {
            m["type"] == "response" && m["request_seq"].as_i64() == attach
        })
        .await;
        steps.push(format!("attach {}", verdict(r.as_ref())));
    }
    let sources: Vec<String> = s.sources.iter().cloned().collect();
    for path in sources {
        seq += 1;
        let args = json!({"source": {"path": path}, "breakpoints": []});
        let r = request(s, wr, rx, seq, "setBreakpoints", args).await;
        steps.push(format!("setBreakpoints {}", verdict(r.as_ref())));
    }
    if s.attached && !s.stopped {
        seq += 1;
        let r = request(s, wr, rx, seq, "pause", json!({"threadId": 0})).await;
        steps.push(format!("pause {}", verdict(r.as_ref())));
        if r.is_some_and(|r| r["success"] == true) && !s.stopped {
            let st = wait(s, rx, ANSWER_WAIT, |m| m["event"] == "stopped").await;
            steps.push(format!("stopped {}", verdict(st.as_ref())));
        }
    }
    seq += 1;
    let args = json!({"terminateDebuggee": false, "restart": false});
    let r = request(s, wr, rx, seq, "disconnect", args).await;
    steps.push(format!("disconnect {}", verdict(r.as_ref())));
    steps
}

fn verdict(r: Option<&Value>) -> String {
    match r {
        None => "unanswered".into(),
        Some(m) if m["type"] == "event" || m["success"] == true => "ok".into(),
        Some(m) => format!(
            "failed: {}",
            m["message"].as_str().unwrap_or("no reason given")
        ),
    }
}

/// Sends one of the relay's own requests and waits for its response.
async fn request<W: AsyncWrite + Unpin>(
    s: &mut Session,
    wr: &mut W,
    rx: &mut mpsc::Receiver<Value>,
    seq: i64,
    command: &str,
    arguments: Value,
) -> Option<Value> {
    let msg = json!({"seq": seq, "type": "request", "command": command, "arguments": arguments});
    wr.write_all(&encode_frame(&msg)).await.ok()?;
    wait(s, rx, ANSWER_WAIT, |m| {
        m["type"] == "response" && m["request_seq"].as_i64() == Some(seq)
    })
    .await
}

/// The first frame from the debugger matching `pred` within `timeout` (every frame read on
/// the way still updates the session), or `None`.
async fn wait(
    s: &mut Session,
    rx: &mut mpsc::Receiver<Value>,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let fut = async {
        while let Some(m) = rx.recv().await {
            s.saw_from_debugger(&m);
            if pred(&m) {
                return Some(m);
            }
        }
        None
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
