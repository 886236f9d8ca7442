//! The last resort: evaluate function-call expressions with a real debugger, attached to the
//! target only for that, then detached so that the target keeps running.
//!
//! Why a debugger at all: a call runs target code, which a uprobe cannot do. Why only for
//! calls: attaching stops the whole process (lldb-dap attach ≈ 0.2–0.4 s, then a breakpoint
//! stop), so everything else is answered from in-kernel snapshots ([`crate::dap::facade`]).
//!
//! One round ([`evaluate_at`]): spawn the debugger (`lldb-dap-22` for C/C++/Rust, `dlv dap` for
//! Go), attach by pid, set one breakpoint at `file:line`, wait for it to be
//! hit, evaluate each expression in the top frame, then detach safely and reap the debugger.
//! Each debugger's rules: Delve evaluates calls only as `call <expr>`; lldb needs a cast on a
//! call to a function without debug info (`(long)strlen(name)`; toolchain.md E12), retried once
//! when lldb says so; lldb cannot call Rust functions (E13), which the caller says without
//! spawning anything.
//!
//! Safe detach (toolchain.md E14, transcripts obs. 9): the breakpoint is removed first, the
//! target is paused if it is running, and only then `disconnect {terminateDebuggee:false}`;
//! the debugger process is killed only after that (lldb-dap in listen mode stays up for the
//! next client). Afterwards the target must be out of ptrace and running; [`evaluate_at`]
//! checks `/proc/PID/status` and reports otherwise.
//!
//! The caller must take its own uprobes off the process first and put them back after: both
//! patch `int3` into the same text.
//!
//! Nobody else may reach the debugger (issue #12 point 3; it runs as root and attaches to any
//! process): lldb-dap speaks DAP over its stdio, a socketpair only the agent holds; Delve cannot
//! (its `dap` mode is TCP only), so the agent listens on a loopback port it keeps bound and
//! Delve dials in (`--client-addr`); a connection is used only if its socket is held by that
//! very child, anything else is closed ([`crate::peer`]). An expression is only ever an
//! expression ([`check_expression`]).
//!
//! An agent killed mid-round (issue #12 point 6): the debugger is not killed with it — a
//! debugger dying while it holds the target at its breakpoint leaves its `int3` and a pending
//! `SIGTRAP` behind, and the target dies of it. It runs under a [`guard`] process instead,
//! which outlives the agent: for lldb-dap it relays the DAP conversation and, when the agent is
//! gone, detaches in the safe order itself ([`relay`]; lldb-dap left alone with a vanished
//! client exits without detaching, and the target died of `SIGTRAP` in 3 of 10 runs); Delve sees
//! its connection close and detaches. The guard kills a debugger that has not exited within a
//! few seconds (it dies with the guard, `PR_SET_PDEATHSIG`) and continues a target left stopped.

mod client;
pub mod guard;
mod relay;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use client::{ClientError, DapClient};

pub use crate::dap::facade::Evaluated;

/// Which debugger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Debugger {
    /// `lldb-dap-22` (`$DETRIX_LLDB_DAP`): C, C++.
    Lldb,
    /// `dlv dap` (`$DETRIX_DLV`): Go.
    Delve,
}

impl Debugger {
    /// The executable run for this debugger.
    #[must_use]
    pub fn program(self) -> PathBuf {
        let (var, default) = match self {
            Debugger::Lldb => ("DETRIX_LLDB_DAP", "lldb-dap-22"),
            Debugger::Delve => ("DETRIX_DLV", "dlv"),
        };
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(default), PathBuf::from)
    }

    fn name(self) -> &'static str {
        match self {
            Debugger::Lldb => "lldb-dap",
            Debugger::Delve => "Delve",
        }
    }
}

/// One round of debugger evaluation.
#[derive(Debug, Clone)]
pub struct Request {
    pub pid: u32,
    pub debugger: Debugger,
    /// Absolute source path, as in the debug info.
    pub file: String,
    pub line: u32,
    pub exprs: Vec<String>,
    /// How long to wait for the line to run.
    pub hit_timeout: Duration,
}

/// Why a round failed as a whole. Each message names the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("cannot start {name} ({program}): {source}; install it (apt-get install {package}) or point {var} at it")]
    Spawn {
        name: &'static str,
        program: String,
        package: &'static str,
        var: &'static str,
        source: std::io::Error,
    },
    #[error("{name} did not dial in to the agent's 127.0.0.1:{port} within {secs} s; check that it runs on this machine")]
    NoListener {
        name: &'static str,
        port: u16,
        secs: u64,
    },
    #[error("{name} could not attach to process {pid}: {message}; the agent must run as root (ptrace), and no other debugger may be attached")]
    Attach {
        name: &'static str,
        pid: u32,
        message: String,
    },
    #[error("{name} could not set a breakpoint at {file}:{line}: {message}")]
    Breakpoint {
        name: &'static str,
        file: String,
        line: u32,
        message: String,
    },
    #[error("{file}:{line} did not run within {secs} s, so nothing was evaluated; the value is read the next time the line runs")]
    NotHit { file: String, line: u32, secs: u64 },
    #[error("talking to {name}: {0}", name = .1)]
    Client(#[source] ClientError, &'static str),
    #[error("after detaching {name}, process {pid} is {state}; it was sent SIGCONT")]
    LeftStopped {
        name: &'static str,
        pid: u32,
        state: String,
    },
}

/// A spawned debugger under its [`guard`]; the guard (and with it the debugger) is killed and
/// reaped on drop.
struct Spawned {
    guard: Child,
}

impl Spawned {
    /// After `disconnect`: the debugger exits once its channel is closed, and the guard with
    /// it; whatever is still there after `wait` is killed.
    async fn finish(mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if matches!(self.guard.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.guard.kill();
        let _ = self.guard.wait();
    }
}

/// What the agent speaks DAP over with a spawned debugger.
enum Channel {
    /// lldb-dap's stdin/stdout.
    Stdio(tokio::net::UnixStream),
    /// Delve will dial in here.
    DialIn(tokio::net::TcpListener),
}

/// `program` as `Command` would find it (a path, or a name on `$PATH`), checked here because
/// the guard, not the agent, starts it.
fn find_program(program: &std::path::Path) -> std::io::Result<PathBuf> {
    let not_found = || std::io::Error::from(std::io::ErrorKind::NotFound);
    if program.components().count() > 1 {
        return if program.is_file() {
            Ok(program.to_path_buf())
        } else {
            Err(not_found())
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(not_found)
}

fn spawn(dbg: Debugger, target: u32) -> Result<(Spawned, Channel), FallbackError> {
    let program = dbg.program();
    let spawn_err = |source| FallbackError::Spawn {
        name: dbg.name(),
        program: program.display().to_string(),
        package: if dbg == Debugger::Lldb {
            "lldb-22"
        } else {
            "delve"
        },
        var: if dbg == Debugger::Lldb {
            "DETRIX_LLDB_DAP"
        } else {
            "DETRIX_DLV"
        },
        source,
    };
    let resolved = find_program(&program).map_err(spawn_err)?;
    let mut command: Vec<std::ffi::OsString> = vec![resolved.into_os_string()];
    let mut cmd = Command::new("/proc/self/exe");
    let channel = match dbg {
        // No `--connection`: lldb-dap then speaks DAP on stdin/stdout, which only we hold.
        Debugger::Lldb => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_err)?;
            let theirs_out = theirs.try_clone().map_err(spawn_err)?;
            cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
                .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs_out)));
            ours.set_nonblocking(true).map_err(spawn_err)?;
            Channel::Stdio(tokio::net::UnixStream::from_std(ours).map_err(spawn_err)?)
        }
        // Go ≥ 1.21 binaries need the version check off with Delve 1.20 (toolchain.md E10).
        Debugger::Delve => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(spawn_err)?;
            let port = l.local_addr().map_err(spawn_err)?.port();
            l.set_nonblocking(true).map_err(spawn_err)?;
            command.extend([
                "dap".into(),
                format!("--client-addr=127.0.0.1:{port}").into(),
                "--check-go-version=false".into(),
            ]);
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
            Channel::DialIn(tokio::net::TcpListener::from_std(l).map_err(spawn_err)?)
        }
    };
    let args = guard::Args {
        agent: std::process::id(),
        target,
        relay: dbg == Debugger::Lldb,
        command,
    };
    cmd.arg(guard::SUBCOMMAND)
        .args(args.to_argv())
        .stderr(Stdio::null());
    guard::own_session(&mut cmd);
    let guard = cmd.spawn().map_err(spawn_err)?;
    Ok((Spawned { guard }, channel))
}

/// The debugger gets SIGKILL when its guard dies, so no root debugger outlives the guard.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits `secs` for Delve, the child of guard `guard`, to dial in; a connection from any other
/// process is closed and logged.
async fn accept_child(
    l: &tokio::net::TcpListener,
    guard: u32,
    name: &'static str,
    secs: u64,
) -> Result<tokio::net::TcpStream, FallbackError> {
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    let wait = async {
        loop {
            let Ok((s, peer)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let local = s.local_addr().unwrap_or(peer);
            match crate::peer::peer_owner(local, peer) {
                Some(o) if o.pids.len() == 1 && guard::parent_of(o.pids[0]) == Some(guard) => {
                    return s
                }
                other => tracing::warn!(
                    %peer,
                    owner = other.as_ref().map(crate::peer::Owner::describe),
                    "a process other than the spawned debugger connected to its dial-in port; closed"
                ),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), wait)
        .await
        .map_err(|_| FallbackError::NoListener { name, port, secs })
}

/// An expression must stay an expression: refuses what a debugger would run as one of its own
/// commands (lldb's command escape `` ` ``, Delve's `dlv …` REPL commands) and control
/// characters that would start another line.
///
/// # Errors
/// A sentence naming what was refused.
pub fn check_expression(dbg: Debugger, expr: &str) -> Result<(), String> {
    if let Some(c) = expr.chars().find(|c| c.is_control()) {
        return Err(format!(
            "expression `{}` contains the control character {c:?}; an expression is one line",
            expr.escape_debug()
        ));
    }
    let t = expr.trim_start();
    match dbg {
        Debugger::Lldb if expr.contains('`') => Err(format!(
            "expression `{expr}` contains a backtick, which lldb-dap would run as a debugger command; only expressions are evaluated"
        )),
        Debugger::Delve if t == "dlv" || t.starts_with("dlv ") => Err(format!(
            "expression `{expr}` starts with `dlv`, which Delve would run as a debugger command; only expressions are evaluated"
        )),
        _ => Ok(()),
    }
}

/// Evaluates `req.exprs` at the next hit of `req.file:req.line` in process `req.pid` with a
/// spawned debugger, and leaves the process running without it.
///
/// # Errors
/// The debugger could not be started, attached or used, or the line did not run in time. The
/// debugger is gone and the target detached in every case.
pub async fn evaluate_at(req: &Request) -> Result<Vec<Evaluated>, FallbackError> {
    let dbg = req.debugger;
    let (spawned, channel) = spawn(dbg, req.pid)?;
    let mut client = match channel {
        Channel::Stdio(s) => DapClient::new(s),
        Channel::DialIn(l) => {
            let s = accept_child(&l, spawned.guard.id(), dbg.name(), 10).await?;
            drop(l);
            let _ = s.set_nodelay(true);
            DapClient::new(s)
        }
    };
    let out = session(&mut client, req).await;
    // Whatever happened, the target must not keep a debugger or our breakpoint.
    let detach = detach(&mut client, req).await;
    drop(client);
    spawned.finish(Duration::from_secs(2)).await;
    let state = settle(req.pid, dbg).await;
    let values = out?;
    detach?;
    state?;
    Ok(values)
}

async fn session(c: &mut DapClient, req: &Request) -> Result<Vec<Evaluated>, FallbackError> {
    let dbg = req.debugger;
    let cl = |e| FallbackError::Client(e, dbg.name());
    c.request("initialize", json!({"clientID": "detrix-agent", "adapterID": if dbg == Debugger::Delve { "go" } else { "lldb" }, "linesStartAt1": true, "columnsStartAt1": true, "pathFormat": "path"}))
        .await
        .map_err(cl)?;
    let attach_args = match dbg {
        Debugger::Lldb => json!({"pid": req.pid}),
        Debugger::Delve => json!({"mode": "local", "processId": req.pid}),
    };
    // lldb-dap holds the attach response until configurationDone (contract.md §0 rule 10):
    // send it, set the breakpoint after `initialized`, then collect the answer.
    let attach_seq = c.send("attach", attach_args).await.map_err(cl)?;
    c.wait_event(|e| e["event"] == "initialized", Duration::from_secs(15))
        .await
        .map_err(cl)?;
    if dbg == Debugger::Delve {
        let r = c
            .wait_response(attach_seq, Duration::from_secs(15))
            .await
            .map_err(cl)?;
        check_attach(&r, req)?;
    }
    set_breakpoint(c, req, true).await?;
    c.request("configurationDone", Value::Null)
        .await
        .map_err(cl)?;
    if dbg == Debugger::Lldb {
        let r = c
            .wait_response(attach_seq, Duration::from_secs(15))
            .await
            .map_err(cl)?;
        check_attach(&r, req)?;
    }
    let stopped = c
        .wait_event(
            |e| e["event"] == "stopped" && e["body"]["reason"] == "breakpoint",
            req.hit_timeout,
        )
        .await
        .map_err(|e| match e {
            ClientError::Timeout { .. } => FallbackError::NotHit {
                file: req.file.clone(),
                line: req.line,
                secs: req.hit_timeout.as_secs(),
            },
            other => cl(other),
        })?;
    let thread = stopped["body"]["threadId"].as_i64().unwrap_or(1);
    // The one moment the target is held by a debugger: said in the log so an operator (and
    // the fault tests, which kill the agent right then) can tell a stop from a slow attach.
    tracing::info!(
        debugger = dbg.name(),
        pid = req.pid,
        file = req.file,
        line = req.line,
        thread,
        "debugger stopped the target at the breakpoint"
    );
    let st = c
        .request(
            "stackTrace",
            json!({"threadId": thread, "startFrame": 0, "levels": 1}),
        )
        .await
        .map_err(cl)?;
    let frame_id = st["body"]["stackFrames"][0]["id"].as_i64().unwrap_or(0);
    let mut values = Vec::with_capacity(req.exprs.len());
    for e in &req.exprs {
        values.push(evaluate(c, dbg, frame_id, e).await.map_err(cl)?);
    }
    Ok(values)
}

fn check_attach(r: &Value, req: &Request) -> Result<(), FallbackError> {
    if r["success"] == true {
        return Ok(());
    }
    Err(FallbackError::Attach {
        name: req.debugger.name(),
        pid: req.pid,
        message: error_text(r),
    })
}

async fn set_breakpoint(c: &mut DapClient, req: &Request, on: bool) -> Result<(), FallbackError> {
    let bps = if on {
        json!([{"line": req.line}])
    } else {
        json!([])
    };
    let r = c
        .request(
            "setBreakpoints",
            json!({"source": {"path": req.file}, "breakpoints": bps}),
        )
        .await
        .map_err(|e| FallbackError::Client(e, req.debugger.name()))?;
    let ok = r["success"] == true && (!on || r["body"]["breakpoints"][0]["verified"] == true);
    if ok {
        Ok(())
    } else {
        let message = r["body"]["breakpoints"][0]["message"]
            .as_str()
            .map_or_else(|| error_text(&r), str::to_owned);
        Err(FallbackError::Breakpoint {
            name: req.debugger.name(),
            file: req.file.clone(),
            line: req.line,
            message,
        })
    }
}

/// One expression by the debugger's rules.
async fn evaluate(
    c: &mut DapClient,
    dbg: Debugger,
    frame_id: i64,
    expr: &str,
) -> Result<Evaluated, ClientError> {
    if let Err(why) = check_expression(dbg, expr) {
        return Ok(Err(why));
    }
    let (text, context) = match dbg {
        Debugger::Delve if crate::dap::facade::has_call(expr) => (format!("call {expr}"), "repl"),
        Debugger::Delve => (expr.to_owned(), "repl"),
        Debugger::Lldb => (expr.to_owned(), "watch"),
    };
    let r = c
        .request(
            "evaluate",
            json!({"expression": text, "frameId": frame_id, "context": context}),
        )
        .await?;
    if r["success"] == true {
        return Ok(Ok(result_of(&r)));
    }
    let err = error_text(&r);
    if dbg == Debugger::Lldb && err.contains("cast the call to its declared return type") {
        let cast = format!("(long){expr}");
        let r = c
            .request(
                "evaluate",
                json!({"expression": cast, "frameId": frame_id, "context": context}),
            )
            .await?;
        if r["success"] == true {
            return Ok(Ok(result_of(&r)));
        }
        return Ok(Err(error_text(&r)));
    }
    Ok(Err(err))
}

fn result_of(r: &Value) -> (String, Option<String>) {
    (
        r["body"]["result"].as_str().unwrap_or("").to_owned(),
        r["body"]["type"].as_str().map(str::to_owned),
    )
}

/// A failed response's sentence: `body.error.format` first (what the daemon shows), then
/// `message`, trimmed to its meaningful lines.
fn error_text(r: &Value) -> String {
    let raw = r["body"]["error"]["format"]
        .as_str()
        .or_else(|| r["message"].as_str())
        .unwrap_or("the debugger gave no reason");
    // lldb prefixes C with a note and appends the source excerpt; keep the error line.
    let line = raw
        .lines()
        .find(|l| l.trim_start().starts_with("error:"))
        .unwrap_or(raw)
        .trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// Breakpoint off, target paused if running, then `disconnect` without terminating.
async fn detach(c: &mut DapClient, req: &Request) -> Result<(), FallbackError> {
    let cl = |e| FallbackError::Client(e, req.debugger.name());
    if c.is_closed() {
        return Ok(());
    }
    // Errors here are reported but the remaining steps still run.
    let removed = set_breakpoint(c, req, false).await;
    if !c.target_stopped() {
        // lldb-dap may kill a running target with SIGTRAP on disconnect (toolchain.md E14).
        let seq = c.send("pause", json!({"threadId": 0})).await.map_err(cl)?;
        let _ = c.wait_response(seq, Duration::from_secs(5)).await;
        let _ = c
            .wait_event(|e| e["event"] == "stopped", Duration::from_secs(5))
            .await;
    }
    let r = c
        .request(
            "disconnect",
            json!({"terminateDebuggee": false, "restart": false}),
        )
        .await;
    removed?;
    r.map(|_| ()).map_err(cl)
}

/// Waits until the target is out of ptrace and not stopped; a stop left behind is undone.
async fn settle(pid: u32, dbg: Debugger) -> Result<(), FallbackError> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let Some((state, tracer)) = proc_state(pid) else {
            return Ok(());
        }; // exited: nothing to settle
        let stopped = state.starts_with('T') || state.starts_with('t');
        if !stopped && tracer == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if stopped && tracer == 0 {
                // SAFETY: kill has no memory-safety preconditions; pid is the target.
                unsafe { libc::kill(i32::try_from(pid).unwrap_or(0), libc::SIGCONT) };
            }
            return Err(FallbackError::LeftStopped {
                name: dbg.name(),
                pid,
                state: format!("{state} (tracer pid {tracer})"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `State:` and `TracerPid:` of a process, or `None` when it is gone.
#[must_use]
pub fn proc_state(pid: u32) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
    };
    let state = field("State:")?;
    let tracer = field("TracerPid:")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Some((state, tracer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Delve dial-in port takes only the guard's child: another process's connection (here
    /// this test's own, and the guard's own) is closed, the child's is used.
    #[tokio::test]
    async fn the_dial_in_port_takes_only_the_spawned_child() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // A local non-root user tries first (when we can become one), then this process.
        // SAFETY: geteuid has no preconditions.
        let nobody = (unsafe { libc::geteuid() } == 0).then(|| {
            std::process::Command::new("setpriv")
                .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", "bash", "-c"])
                .arg(format!("trap '' PIPE; exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected && printf x >&3; timeout 5 cat <&3"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        });
        if nobody.is_none() {
            println!("NOT RUN: the dial-in port's test with a `nobody` intruder: not root, so it cannot become nobody");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut stranger = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        // The "guard" first dials in itself (not its child: closed), then its child does.
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "sleep 0.3; exec 4<>/dev/tcp/127.0.0.1/{port}; sleep 0.2; bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; printf child >&3; sleep 2'; true"
            ))
            .spawn()
            .unwrap();
        let mut s = accept_child(&l, child.id(), "Delve", 5)
            .await
            .expect("the child's connection is accepted");
        let mut got = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"child");
        let mut buf = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut stranger, &mut buf)
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "the stranger's connection was closed without a byte");
        if let Some(nobody) = nobody {
            let out = nobody.wait_with_output().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "connected\n",
                "nobody connected, got nothing and was closed"
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        let err = accept_child(&l, 1, "Delve", 1).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Delve did not dial in to the agent's 127.0.0.1:{port} within 1 s; check that it runs on this machine")
        );
    }

    #[test]
    fn expressions_never_become_debugger_commands() {
        assert_eq!(
            check_expression(Debugger::Lldb, "(long)strlen(name)"),
            Ok(())
        );
        assert_eq!(
            check_expression(Debugger::Delve, "fmt.Sprint(o.ID)"),
            Ok(())
        );
        assert_eq!(
            check_expression(Debugger::Lldb, "`platform shell id"),
            Err("expression ``platform shell id` contains a backtick, which lldb-dap would run as a debugger command; only expressions are evaluated".to_owned())
        );
        assert!(check_expression(Debugger::Lldb, "x + `y`").is_err());
        assert_eq!(
            check_expression(Debugger::Delve, " dlv config max-string-len 1"),
            Err("expression ` dlv config max-string-len 1` starts with `dlv`, which Delve would run as a debugger command; only expressions are evaluated".to_owned())
        );
        assert!(check_expression(Debugger::Delve, "dlv").is_err());
        assert_eq!(
            check_expression(Debugger::Delve, "dlvVersion()"),
            Ok(()),
            "an identifier starting with dlv is fine"
        );
        assert_eq!(
            check_expression(Debugger::Lldb, "x\nplatform shell id"),
            Err("expression `x\\nplatform shell id` contains the control character '\\n'; an expression is one line".to_owned())
        );
    }

    #[test]
    fn error_text_keeps_the_debuggers_sentence() {
        let lldb = json!({"success": false, "body": {"error": {"format": "Expression evaluation in pure C not supported. Ran expression as 'ISO C++'.\nerror: <user expression 0>:1:1: 'strlen' has unknown return type; cast the call to its declared return type\n    1 | strlen(name)\n"}}});
        assert_eq!(error_text(&lldb), "<user expression 0>:1:1: 'strlen' has unknown return type; cast the call to its declared return type");
        let delve = json!({"success": false, "message": "Unable to evaluate expression", "body": {"error": {"id": 2009, "format": "Unable to evaluate expression: could not find symbol value for fmt"}}});
        assert_eq!(
            error_text(&delve),
            "Unable to evaluate expression: could not find symbol value for fmt"
        );
        assert_eq!(
            error_text(&json!({"success": false, "message": "nope"})),
            "nope"
        );
    }
}
