//! The agent side: `detrix-agent capture --locals --count 1` on every statement line, each run
//! attached to a fresh copy of the program *before* it runs, so each line's first execution is
//! the one captured — the same execution lldb stops at in its own fresh process.
//!
//! How the program is held: it is started under `PTRACE_TRACEME`, which stops it at its first
//! instruction after `exec` (its image and mappings are in place, nothing has run). The agents
//! resolve, plan and attach their uprobes (each says `capture: probes attached`); then the
//! harness detaches and the program runs. It runs as lldb runs it (ASLR off, the same
//! environment and arguments), so even stack and heap addresses are the same. Lines go in batches of agents per program run, so a
//! build costs a few program runs instead of one per line.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use detrix_e2e::{probe_lines, Map, Running, Value};

/// What the agent did at one line.
#[derive(Debug, Clone)]
pub enum AgentLine {
    /// It cannot probe the line: its sentence (no code at the line, a name it cannot read…).
    Error(String),
    /// Probes attached, but the program never ran them.
    NotHit,
    /// The first hit: every parameter and local, a typed value or `{"error": …}`.
    Hit {
        addrs: Vec<u64>,
        locals: Map<String, Value>,
    },
}

/// Agents started per program run.
const BATCH: usize = 8;
/// How long agents may take to attach, and the program plus agents to finish, per batch.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A program stopped at its first instruction under ptrace; killed and reaped on drop.
struct Held {
    child: Child,
}

impl Held {
    fn start(exe: &Path, args: &[&str]) -> Result<Held, String> {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env_clear()
            .envs(crate::PROGRAM_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and only calls
        // personality(2) and ptrace(2), both async-signal-safe; it touches no parent memory.
        unsafe {
            cmd.pre_exec(|| {
                die_with_parent()?;
                // ASLR off, as lldb runs programs: the same stack and heap addresses.
                if libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = libc::ptrace(
                    libc::PTRACE_TRACEME,
                    0,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                );
                if rc == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let held = Held { child };
        let pid = held.pid();
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if rc != pid || !libc::WIFSTOPPED(status) {
            return Err(format!(
                "{} did not stop at exec under ptrace (waitpid {rc}, status {status:#x})",
                exe.display()
            ));
        }
        Ok(held)
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// Lets the program run (detaches, delivering no signal).
    fn release(&self) -> Result<(), String> {
        // SAFETY: PTRACE_DETACH of our own stopped tracee, from the thread that spawned it.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                self.pid(),
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if rc == -1 {
            return Err(format!(
                "PTRACE_DETACH {}: {}",
                self.pid(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the program to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a forked child before exec: SIGKILL when the harness dies, so an interrupted run leaves
/// no agent or program behind.
pub fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

const ATTACHED: &str = "capture: probes attached";

/// Captures every line of `lines` (`at` is the `--at` file part), [`BATCH`] agents per program
/// run of `exe args`.
pub fn run(
    agent: &Path,
    exe: &Path,
    at: &str,
    lines: &[u32],
    args: &[&str],
) -> Result<BTreeMap<u32, AgentLine>, String> {
    let mut out = BTreeMap::new();
    for batch in lines.chunks(BATCH) {
        out.extend(run_batch(agent, exe, at, batch, args)?);
    }
    Ok(out)
}

fn run_batch(
    agent: &Path,
    exe: &Path,
    at: &str,
    lines: &[u32],
    args: &[&str],
) -> Result<Vec<(u32, AgentLine)>, String> {
    let mut held = Held::start(exe, args)?;
    let pid = held.child.id().to_string();
    let agents: Vec<(u32, Running)> = lines
        .iter()
        .map(|&line| {
            let mut cmd = Command::new(agent);
            // SAFETY: the closure runs in the forked child before exec and only calls
            // prctl(2), which is async-signal-safe.
            unsafe { cmd.pre_exec(die_with_parent) };
            cmd.args(["capture", "--pid", &pid, "--at"])
                .arg(format!("{at}:{line}"))
                .args(["--locals", "--count", "1", "--format", "json"]);
            (line, Running::spawn(cmd))
        })
        .collect();
    // Every agent attached or gone (a line it cannot probe) before the program runs.
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let settled = |r: &Running| {
        r.stderr().wait_eof(Duration::ZERO) || r.stderr().snapshot().iter().any(|l| l == ATTACHED)
    };
    while !agents.iter().all(|(_, r)| settled(r)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    // One that is still attaching now would see a running program: it is killed, and counted
    // as not attached.
    for (_, r) in &agents {
        if !settled(r) {
            r.signal(libc::SIGKILL);
        }
    }
    held.release()?;
    held.wait_exit(RUN_TIMEOUT);
    let mut results = Vec::new();
    for (line, r) in agents {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !r.stderr().wait_eof(Duration::ZERO) {
            thread::sleep(Duration::from_millis(20));
        }
        if !r.stderr().wait_eof(Duration::ZERO) {
            r.signal(libc::SIGKILL);
        }
        let o = r.wait(Duration::from_secs(10));
        let addrs: Vec<u64> = probe_lines(&o.stderr).iter().map(|p| p.addr).collect();
        let attached = o.stderr.lines().any(|l| l == ATTACHED);
        let result = if !attached {
            let why = o
                .stderr
                .lines()
                .rev()
                .find(|l| l.starts_with("error:"))
                .unwrap_or(
                    "the agent did not attach (killed after the attach timeout, or it exited)",
                )
                .to_owned();
            AgentLine::Error(why)
        } else {
            let hit = o
                .stdout
                .lines()
                .find_map(|l| serde_json::from_str::<Value>(l).ok());
            match hit.and_then(|h| h.get("locals").and_then(Value::as_object).cloned()) {
                Some(locals) => AgentLine::Hit { addrs, locals },
                None => AgentLine::NotHit,
            }
        };
        results.push((line, result));
    }
    Ok(results)
}
