//! The debugger's guard (issue #12 point 6): a small process between the agent and the
//! debugger it spawns, so that an agent killed mid-round leaves the target running, untraced,
//! with no breakpoint in it, and no debugger behind.
//!
//! Why a process of its own: when a debugger dies while it holds the target at its breakpoint,
//! the kernel detaches the target but leaves the debugger's `int3` in its code and the pending
//! `SIGTRAP` in its thread, so the target dies of that trap (seen with lldb-dap and Delve alike);
//! a debugger that detaches from a running target may leave a group stop behind (`State: T`).
//! What does detach cleanly is the debugger's own `disconnect` after the breakpoints are off
//! and the target is paused (toolchain.md E14's order). So the debugger must *not* die with
//! the agent; the guard does, a little later, and the debugger dies with the guard
//! (`PR_SET_PDEATHSIG`), never with the agent.
//!
//! What the guard does ([`run`]): starts the debugger as its child, in its own session so a
//! terminal's Ctrl-C reaches neither, then one of two ways:
//! - `--relay` (lldb-dap, DAP on stdio): the debugger's stdio is a socketpair the guard holds;
//!   the guard passes whole frames between it and the agent's channel (its own stdin) and, when
//!   the agent is gone, performs the safe detach itself ([`super::relay`]): lldb-dap left to
//!   notice its client vanish exits without detaching in some states, and the target dies.
//! - otherwise (Delve, which dials in to the agent): the debugger's stdio is passed through
//!   and it sees its connection close when the agent dies, which Delve handles by detaching.
//!
//! Either way, once the agent is gone (its parent changed, or its channel closed) the debugger
//! gets [`DETACH_GRACE`] to exit, is killed if it has not, and if the target is left stopped,
//! not traced, and was not stopped before the round, it is sent `SIGCONT`. When the debugger
//! exits first (the normal end of a round, after the agent's `disconnect`), so does the guard.
//! It listens on nothing: its only peers are the agent that started it (its stdin, inherited)
//! and the debugger it started.

use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The hidden subcommand that runs [`run`] (`detrix-agent debugger-guard …`).
pub const SUBCOMMAND: &str = "debugger-guard";

/// How long a debugger whose agent died has to detach and exit before it is killed.
pub const DETACH_GRACE: Duration = Duration::from_secs(5);

/// How often the guard looks at its parent and its child.
const POLL: Duration = Duration::from_millis(20);

/// How long after the debugger left the guard watches for a stop left behind.
const SETTLE: Duration = Duration::from_millis(1500);

/// What the guard was told by the agent.
#[derive(Debug, Clone)]
pub struct Args {
    /// The agent's pid: when the guard's parent is no longer this, the agent is gone.
    pub agent: u32,
    /// The process the debugger attaches to.
    pub target: u32,
    /// The debugger speaks DAP on its stdio (lldb-dap): the guard relays it ([`super::relay`])
    /// instead of handing the debugger the agent's channel.
    pub relay: bool,
    /// The debugger and its arguments.
    pub command: Vec<OsString>,
}

impl Args {
    /// The guard's command line after [`SUBCOMMAND`].
    #[must_use]
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "--agent".into(),
            self.agent.to_string().into(),
            "--target".into(),
            self.target.to_string().into(),
        ];
        if self.relay {
            v.push("--relay".into());
        }
        v.push("--".into());
        v.extend(self.command.iter().cloned());
        v
    }
}

/// Runs the guard; returns its exit code (the debugger's, or 1 if it could not start it).
#[must_use]
pub fn run(args: &Args) -> i32 {
    let Some((program, rest)) = args.command.split_first() else {
        eprintln!("debugger-guard: no debugger command given");
        return 2;
    };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"detrix-guard".as_ptr(), 0, 0, 0) };
    let stopped_before = is_stopped(args.target);
    let mut cmd = Command::new(program);
    cmd.args(rest).stderr(Stdio::null());
    let relayed = if args.relay {
        match relay_ends(&mut cmd) {
            Ok(ends) => Some(ends),
            Err(e) => {
                eprintln!("debugger-guard: cannot set up the relay: {e}");
                return 1;
            }
        }
    } else {
        cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit());
        None
    };
    super::die_with_parent(&mut cmd);
    let spawned = cmd.spawn();
    // The debugger's ends of its channel now live in the debugger alone.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "debugger-guard: cannot start {}: {e}",
                program.to_string_lossy()
            );
            return 1;
        }
    };
    // Without the relay the channel is the debugger's alone; with it, the guard holds the
    // agent's end through `agent` only.
    release_stdio();
    let Some((agent, debugger)) = relayed else {
        return supervise(&mut child, args, stopped_before);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("debugger-guard: cannot start the relay: {e}");
            let _ = child.kill();
            let _ = child.wait();
            return 1;
        }
    };
    let agent_pid = args.agent;
    let ended = rt.block_on(async {
        let agent = tokio::net::UnixStream::from_std(agent);
        let debugger = tokio::net::UnixStream::from_std(debugger);
        match (agent, debugger) {
            (Ok(a), Ok(d)) => Some(
                super::relay::run(
                    a,
                    d,
                    || agent_is_parent(agent_pid),
                    || matches!(child.try_wait(), Ok(None)),
                )
                .await,
            ),
            _ => None,
        }
    });
    match ended {
        Some(super::relay::Ended::DebuggerClosed) => {
            child.wait().ok().and_then(|st| st.code()).unwrap_or(1)
        }
        Some(super::relay::Ended::AgentFinished) => {
            grace(&mut child);
            child.wait().ok().and_then(|st| st.code()).unwrap_or(1)
        }
        Some(super::relay::Ended::AgentGone { .. }) => {
            after_agent(&mut child, args, stopped_before);
            0
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            1
        }
    }
}

/// A socketpair for the debugger's stdin and stdout; returns the agent's channel (the guard's
/// stdin, a copy) and the guard's end of the debugger's, both non-blocking.
fn relay_ends(
    cmd: &mut Command,
) -> std::io::Result<(
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
)> {
    use std::os::fd::AsFd as _;
    let agent =
        std::os::unix::net::UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs_out = theirs.try_clone()?;
    cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs_out)));
    agent.set_nonblocking(true)?;
    ours.set_nonblocking(true)?;
    Ok((agent, ours))
}

fn agent_is_parent(agent: u32) -> bool {
    // SAFETY: getppid has no preconditions.
    u32::try_from(unsafe { libc::getppid() }).ok() == Some(agent)
}

/// Waits for the debugger to exit (its code is returned) or the agent to go (then the
/// debugger gets [`DETACH_GRACE`], and a stop it left in the target is undone; 0 is returned).
fn supervise(child: &mut std::process::Child, args: &Args, stopped_before: bool) -> i32 {
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code().unwrap_or(1);
        }
        if !agent_is_parent(args.agent) {
            break;
        }
        std::thread::sleep(POLL);
    }
    // The agent is gone: the debugger saw its channel close and detaches on its own.
    after_agent(child, args, stopped_before);
    0
}

/// The agent is gone and the debugger told to detach: it gets [`DETACH_GRACE`] to exit, is
/// killed if it has not, and a stop it left in the target is undone.
fn after_agent(child: &mut std::process::Child, args: &Args, stopped_before: bool) {
    grace(child);
    if !stopped_before {
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if let Some((state, 0)) = super::proc_state(args.target) {
                if state.starts_with('T') {
                    // SAFETY: kill has no memory-safety preconditions; the pid is the target.
                    unsafe { libc::kill(i32::try_from(args.target).unwrap_or(0), libc::SIGCONT) };
                }
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Gives the debugger [`DETACH_GRACE`] to exit, then kills it; it is reaped either way.
fn grace(child: &mut std::process::Child) {
    let deadline = Instant::now() + DETACH_GRACE;
    while !matches!(child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn is_stopped(pid: u32) -> bool {
    super::proc_state(pid).is_some_and(|(s, _)| s.starts_with('T') || s.starts_with('t'))
}

/// Points stdin and stdout at `/dev/null`, so the agent's end of the debugger's channel sees
/// the debugger's end close when the debugger exits, not when the guard does.
fn release_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: dup2 onto the standard descriptors; `null` is a valid open descriptor.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

/// The guard's own session (in the child, before exec): a terminal's signals reach neither it
/// nor the debugger.
pub(super) fn own_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and only calls setsid, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
#[must_use]
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guards_command_line_round_trips() {
        let a = Args {
            agent: 7,
            target: 42,
            relay: true,
            command: vec!["dlv".into(), "dap".into(), "--x=1".into()],
        };
        assert_eq!(
            a.to_argv(),
            ["--agent", "7", "--target", "42", "--relay", "--", "dlv", "dap", "--x=1"]
                .map(OsString::from)
                .to_vec()
        );
    }

    #[test]
    fn parent_of_reads_proc() {
        let mut c = Command::new("sleep").arg("5").spawn().unwrap();
        assert_eq!(parent_of(c.id()), Some(std::process::id()));
        let _ = c.kill();
        let _ = c.wait();
        assert_eq!(parent_of(u32::MAX), None);
    }

    /// A guard whose parent is not the agent it was told (as after the agent died) gives the
    /// debugger its grace, then kills it, and continues a target left stopped.
    #[test]
    fn a_guard_without_its_agent_ends_the_debugger_and_continues_a_stopped_target() {
        let mut target = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = target.id();
        // The "debugger" stops the target and then would outlive its grace.
        let args = Args {
            agent: u32::MAX,
            target: pid,
            relay: false,
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("kill -STOP {pid}; exec sleep 60").into(),
            ],
        };
        let mut debugger = Command::new(&args.command[0])
            .args(&args.command[1..])
            .spawn()
            .unwrap();
        let started = Instant::now();
        assert_eq!(supervise(&mut debugger, &args, false), 0);
        let took = started.elapsed();
        assert!(
            took >= DETACH_GRACE && took < DETACH_GRACE + Duration::from_secs(5),
            "the debugger had its grace, then was killed: {took:?}"
        );
        let (state, tracer) = super::super::proc_state(pid).unwrap();
        assert_eq!((state.chars().next(), tracer), (Some('S'), 0), "{state}");
        let _ = target.kill();
        let _ = target.wait();
    }
}
