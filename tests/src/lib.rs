//! Helpers for the end-to-end tests: build C fixtures, run them, find probe markers, run
//! `detrix-agent` with a timeout and parse what it prints.
//!
//! The tests compare values the agent captured with the values the fixture program printed
//! itself, so nothing here knows what the "right" value of an expression is.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

pub use serde_json::{Map, Value};

/// How long any one agent run may take before the test kills it and fails.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a fixture to print a line we expect (its `ready` line, a round).
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("tests/ crate has a parent directory")
        .to_path_buf();
    root.canonicalize().unwrap_or(root)
}

/// The C source of a fixture, e.g. `c_fixture_source("orders")` → `.../tests/fixtures/c/orders.c`.
/// Canonical, so the path compiled into the debug info and the path tests pass agree.
pub fn c_fixture_source(name: &str) -> PathBuf {
    let path = workspace_root()
        .join("tests")
        .join("fixtures")
        .join("c")
        .join(format!("{name}.c"));
    path.canonicalize()
        .unwrap_or_else(|e| panic!("fixture source {} is missing: {e}", path.display()))
}

/// Where built fixtures go: `<workspace>/target/fixtures`.
pub fn fixtures_out_dir() -> PathBuf {
    workspace_root().join("target").join("fixtures")
}

// ---------------------------------------------------------------------------------------------
// Preconditions: root and the agent binary
// ---------------------------------------------------------------------------------------------

/// Fails the test unless it runs as root: loading eBPF programs and attaching uprobes needs
/// CAP_BPF and CAP_PERFMON, and these tests must never pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "e2e capture tests need root (CAP_BPF/CAP_PERFMON); running as euid {euid}. \
         Run them as root, e.g. through `cargo xtask test` in CI."
    );
}

/// The agent binary under test: `$DETRIX_AGENT_BIN` (set by `cargo xtask test`), else
/// `<workspace>/target/debug/detrix-agent`. Panics (fails the test) when neither exists.
pub fn agent_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("DETRIX_AGENT_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "DETRIX_AGENT_BIN={} does not exist; run `cargo xtask test`, which builds the agent \
             and its eBPF object and sets DETRIX_AGENT_BIN",
            bin.display()
        );
        return bin.canonicalize().unwrap_or(bin);
    }
    let fallback = workspace_root()
        .join("target")
        .join("debug")
        .join("detrix-agent");
    assert!(
        fallback.is_file(),
        "no detrix-agent binary: DETRIX_AGENT_BIN is unset and {} does not exist; \
         run `cargo xtask test`, which builds the agent and its eBPF object and sets DETRIX_AGENT_BIN",
        fallback.display()
    );
    fallback
}

// ---------------------------------------------------------------------------------------------
// Building fixtures
// ---------------------------------------------------------------------------------------------

/// How a C fixture is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `gcc -g -O0`: what capture tests use.
    Debug,
    /// `gcc -O0 -g0`, then `strip`: a binary without any debug info.
    NoDebugStripped,
    /// `gcc -g -O2`: inlining, no frame pointers.
    Optimized,
}

impl Build {
    fn suffix(self) -> &'static str {
        match self {
            Build::Debug => "",
            Build::NoDebugStripped => "-nodebug",
            Build::Optimized => "-O2",
        }
    }

    fn cflags(self) -> &'static [&'static str] {
        match self {
            Build::Debug => &["-g", "-O0"],
            Build::NoDebugStripped => &["-O0", "-g0"],
            Build::Optimized => &["-g", "-O2"],
        }
    }
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Builds `tests/fixtures/c/<name>.c` into `<workspace>/target/fixtures/<name><variant>` unless
/// that output is already newer than the source. Safe under parallel tests and parallel test
/// binaries: it compiles to a unique temporary name and renames it into place.
pub fn build_c_fixture(name: &str, build: Build) -> PathBuf {
    // Threads of one test binary take turns (no point in compiling the same thing twice);
    // separate test binaries are kept apart by the temporary name and the rename.
    static BUILD_LOCK: Mutex<()> = Mutex::new(());
    let _turn = BUILD_LOCK.lock().unwrap_or_else(PoisonError::into_inner);

    let src = c_fixture_source(name);
    let out_dir = fixtures_out_dir();
    fs::create_dir_all(&out_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", out_dir.display()));
    let out = out_dir.join(format!("{name}{}", build.suffix()));

    if let (Some(src_time), Some(out_time)) = (mtime(&src), mtime(&out)) {
        if out_time >= src_time {
            return out;
        }
    }

    let tmp = out_dir.join(format!(".{name}{}.tmp-{}", build.suffix(), unique_suffix()));
    let status = Command::new("gcc")
        .args(build.cflags())
        .arg("-o")
        .arg(&tmp)
        // The absolute path goes into DW_AT_name, so absolute and suffix `--at` forms resolve.
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("cannot run gcc (is it installed?): {e}"));
    assert!(
        status.success(),
        "gcc failed building {}: {status}",
        src.display()
    );

    if build == Build::NoDebugStripped {
        let status = Command::new("strip")
            .arg(&tmp)
            .status()
            .unwrap_or_else(|e| panic!("cannot run strip: {e}"));
        assert!(status.success(), "strip {} failed: {status}", tmp.display());
    }

    fs::rename(&tmp, &out).unwrap_or_else(|e| {
        let _ = fs::remove_file(&tmp);
        panic!("cannot move {} to {}: {e}", tmp.display(), out.display())
    });
    out
}

/// The 1-based line of `path` that carries `marker` (`PROBE:c`, `CALL:b`…) as a comment,
/// `/* <marker> */` or a trailing `// <marker>`. Panics unless exactly one does.
pub fn line_of(path: &Path, marker: &str) -> u64 {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (c, line_comment) = (format!("{marker} */"), format!("// {marker}"));
    let hits: Vec<u64> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(&c) || l.ends_with(&line_comment))
        .map(|(i, _)| i as u64 + 1)
        .collect();
    assert_eq!(hits.len(), 1, "{marker} in {}", path.display());
    hits[0]
}

/// Processes whose parent is `parent` (a debugger the agent spawned would be one), with their
/// `comm` names.
pub fn child_processes(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").expect("list /proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            == Some(parent)
        {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_owned()));
        }
    }
    out
}

/// Every descendant of `pid` (children, their children, …) with its `comm`.
pub fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (k, comm) in child_processes(p) {
            todo.push(k);
            out.push((k, comm));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Probe markers
// ---------------------------------------------------------------------------------------------

/// The 1-based line of `src` that carries `/* PROBE:<name> */`. Panics unless exactly one does.
pub fn marker_line(src: &Path, name: &str) -> u32 {
    let text =
        fs::read_to_string(src).unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()));
    let marker = format!("/* PROBE:{name} */");
    let hits: Vec<u32> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(&marker))
        .map(|(i, _)| u32::try_from(i + 1).expect("line number fits u32"))
        .collect();
    assert!(
        hits.len() == 1,
        "expected exactly one `{marker}` in {}, found it on lines {hits:?}",
        src.display()
    );
    hits[0]
}

// ---------------------------------------------------------------------------------------------
// Collecting a child's output line by line
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    eof: bool,
}

/// Lines read from a pipe by a background thread, shared with the test.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<LinesState>, Condvar)>);

impl Lines {
    /// Starts a thread that appends every line read from `reader`.
    pub fn collect<R: Read + Send + 'static>(reader: R) -> (Lines, JoinHandle<()>) {
        let lines = Lines::default();
        let shared = lines.clone();
        let handle = thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_string();
                        shared.lock().lines.push(line);
                        shared.0 .1.notify_all();
                    }
                }
            }
            shared.lock().eof = true;
            shared.0 .1.notify_all();
        });
        (lines, handle)
    }

    fn lock(&self) -> MutexGuard<'_, LinesState> {
        self.0 .0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of every line so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Everything so far as one string, lines separated by `\n`.
    pub fn text(&self) -> String {
        self.lock().lines.join("\n")
    }

    /// How many lines so far.
    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    /// True when no line came yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until some line (already read or still to come) satisfies `pred`; returns it, or
    /// `None` after `timeout` or once the pipe closed without such a line.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        let mut checked = 0;
        loop {
            if let Some(l) = state.lines[checked..].iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            checked = state.lines.len();
            if state.eof {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self
                .0
                 .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until the pipe is closed; returns whether that happened within `timeout`.
    pub fn wait_eof(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.eof {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .0
                 .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until at least `n` lines satisfy `pred`; returns whether that happened in time.
    pub fn wait_count(&self, n: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.lines.iter().filter(|l| pred(l)).count() >= n {
                return true;
            }
            let now = Instant::now();
            if state.eof || now >= deadline {
                return false;
            }
            state = self
                .0
                 .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running a fixture
// ---------------------------------------------------------------------------------------------

/// A running fixture program; killed and reaped on drop.
pub struct Fixture {
    child: Child,
    pid: u32,
    stdout: Lines,
    exe: PathBuf,
    /// A private copy of the executable this fixture runs, removed on drop.
    private_copy: Option<PathBuf>,
}

impl Fixture {
    /// Spawns `exe args...` with stdout collected and waits for its `ready pid=N` line.
    pub fn start(exe: &Path, args: &[&str]) -> Fixture {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        Fixture::spawn(cmd)
    }

    /// [`Fixture::start`] for a prepared command (its own environment, directory or user).
    pub fn spawn(mut cmd: Command) -> Fixture {
        let exe = PathBuf::from(cmd.get_program());
        let exe = exe.as_path();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start fixture {}: {e}", exe.display()));
        let pid = child.id();
        let out = child.stdout.take().expect("stdout is piped");
        let (stdout, _reader) = Lines::collect(out);
        let fixture = Fixture {
            child,
            pid,
            stdout,
            exe: exe.to_path_buf(),
            private_copy: None,
        };
        let ready = fixture
            .stdout
            .wait_for(LINE_TIMEOUT, |l| l.starts_with("ready pid="))
            .unwrap_or_else(|| {
                panic!(
                    "fixture {} did not print `ready pid=` within {LINE_TIMEOUT:?}; output so far:\n{}",
                    exe.display(),
                    fixture.stdout.text()
                )
            });
        assert_eq!(
            ready,
            format!("ready pid={pid}"),
            "fixture's own idea of its pid differs from the spawned child's"
        );
        fixture
    }

    /// The `orders` fixture built with `gcc -g -O0`, running forever with `delay_ms` between
    /// rounds.
    pub fn orders(delay_ms: u32) -> Fixture {
        let exe = build_c_fixture("orders", Build::Debug);
        Fixture::start(&exe, &["-1", &delay_ms.to_string()])
    }

    /// Like [`Fixture::orders`], but runs a private copy of the executable (its own inode),
    /// so uprobes other tests attach to the shared build never show up in this process's code
    /// and this test's probes never show up in theirs. The copy is removed on drop.
    pub fn orders_private(delay_ms: u32) -> Fixture {
        let exe = build_c_fixture("orders", Build::Debug);
        let copy = fixtures_out_dir().join(format!(".orders-copy-{}", unique_suffix()));
        // `cp` writes the copy in its own process, so no descriptor open for writing leaks into
        // a child another test thread forks meanwhile (which would make exec fail with ETXTBSY).
        let status = Command::new("cp")
            .arg(&exe)
            .arg(&copy)
            .status()
            .unwrap_or_else(|e| panic!("cannot run cp: {e}"));
        assert!(
            status.success(),
            "cp {} {} failed: {status}",
            exe.display(),
            copy.display()
        );
        let mut fixture = Fixture::start(&copy, &["-1", &delay_ms.to_string()]);
        fixture.private_copy = Some(copy);
        fixture
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The highest round of the `process round=R ...` lines printed so far.
    pub fn last_round(&self) -> Option<i64> {
        self.stdout
            .snapshot()
            .iter()
            .filter_map(|l| l.strip_prefix("process round="))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .max()
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Everything the fixture printed so far.
    pub fn stdout(&self) -> &Lines {
        &self.stdout
    }

    /// Whether the process is still running (not exited, not killed by a signal).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended (`None` while it runs), e.g. `signal: 5 (SIGTRAP)`.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The printed `process round=R ...` line for `round`, waiting up to `timeout` for it.
    pub fn process_line(&self, round: i64, timeout: Duration) -> String {
        self.round_line("process", round, timeout)
    }

    /// The printed `after round=R ...` line for `round`, waiting up to `timeout` for it.
    pub fn after_line(&self, round: i64, timeout: Duration) -> String {
        self.round_line("after", round, timeout)
    }

    fn round_line(&self, kind: &str, round: i64, timeout: Duration) -> String {
        let prefix = format!("{kind} round={round} ");
        self.stdout
            .wait_for(timeout, |l| l.starts_with(&prefix))
            .unwrap_or_else(|| {
                let lines = self.stdout.snapshot();
                let tail = lines[lines.len().saturating_sub(5)..].join("\n");
                panic!(
                    "the fixture never printed a `{prefix}...` line within {timeout:?}; \
                     last lines it printed:\n{tail}"
                )
            })
    }

    /// Asserts the fixture survived whatever the test did to it: still running, and printing
    /// at least `rounds` more `process` rounds from now on.
    pub fn assert_keeps_running(&mut self, rounds: usize) {
        let before = self.count_rounds();
        let ok = self.stdout.wait_count(before + rounds, LINE_TIMEOUT, |l| {
            l.starts_with("process round=")
        });
        let status = self.child.try_wait();
        assert!(
            matches!(status, Ok(None)),
            "the fixture (pid {}) is no longer running: {status:?}; last output:\n{}",
            self.pid,
            self.tail(5)
        );
        assert!(
            ok,
            "the fixture (pid {}) is alive but printed fewer than {rounds} new rounds in \
             {LINE_TIMEOUT:?} (is it stuck on a breakpoint?); last output:\n{}",
            self.pid,
            self.tail(5)
        );
    }

    fn count_rounds(&self) -> usize {
        self.stdout
            .snapshot()
            .iter()
            .filter(|l| l.starts_with("process round="))
            .count()
    }

    fn tail(&self, n: usize) -> String {
        let lines = self.stdout.snapshot();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(copy) = &self.private_copy {
            let _ = fs::remove_file(copy);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running the agent
// ---------------------------------------------------------------------------------------------

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with everything the command printed unless it exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "`{}` failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the command exited with a non-zero code (not killed by a signal) and its
    /// stderr contains `phrase`.
    pub fn assert_failure_with(&self, phrase: &str) -> &Self {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "`{}` should have exited non-zero but ended with {} (signal {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            self.status.signal(),
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(phrase),
            "stderr of `{}` lacks {phrase:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.command,
            self.stderr,
            self.stdout
        );
        self
    }

    /// The non-empty stdout lines.
    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains([' ', '>', '\'', '"']) || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// A command running in the background with its stdout and stderr collected.
pub struct Running {
    child: Child,
    command: String,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let command = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
        let (stdout, r1) = Lines::collect(child.stdout.take().expect("stdout is piped"));
        let (stderr, r2) = Lines::collect(child.stderr.take().expect("stderr is piped"));
        Running {
            child,
            command,
            stdout,
            stderr,
            readers: vec![r1, r2],
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> &Lines {
        &self.stdout
    }

    pub fn stderr(&self) -> &Lines {
        &self.stderr
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the process to end; after `timeout` kills it and panics with its output.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "`{}` did not finish within {timeout:?}; killed it\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        self.command,
                        self.stdout.text(),
                        self.stderr.text()
                    );
                }
                Err(e) => panic!("waiting for `{}` failed: {e}", self.command),
            }
        };
        // The pipes close once the process and anything it spawned that holds them are gone.
        // Don't hang on a leftover grandchild: read what came within a grace period.
        let grace = Duration::from_secs(2);
        if self.stdout.wait_eof(grace) && self.stderr.wait_eof(grace) {
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
        }
        Output {
            command: self.command.clone(),
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion, killing it and failing the test after `timeout`.
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> Output {
    Running::spawn(cmd).wait(timeout)
}

/// Runs `detrix-agent ARGS...` to completion (at most [`AGENT_TIMEOUT`]).
pub fn run_agent<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args);
    run_with_timeout(cmd, AGENT_TIMEOUT)
}

/// `capture --pid PID --at AT --expr E1 --expr E2 ... EXTRA...` as an argument list.
pub fn capture_args(pid: u32, at: &str, exprs: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "capture".to_string(),
        "--pid".to_string(),
        pid.to_string(),
        "--at".to_string(),
        at.to_string(),
    ];
    for e in exprs {
        args.push("--expr".to_string());
        args.push((*e).to_string());
    }
    args.extend(extra.iter().map(|s| (*s).to_string()));
    args
}

/// A copy of the agent binary in a fresh world-readable directory, for running it as an
/// unprivileged user (the build tree may not be readable or traversable by `nobody`).
/// The directory is removed on drop.
pub struct AgentCopy {
    dir: PathBuf,
    bin: PathBuf,
}

impl AgentCopy {
    pub fn new() -> AgentCopy {
        let src = agent_bin();
        let dir = std::env::temp_dir().join(format!("detrix-e2e-agent-{}", unique_suffix()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", dir.display()));
        let bin = dir.join("detrix-agent");
        fs::copy(&src, &bin)
            .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", src.display(), bin.display()));
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", bin.display()));
        AgentCopy { dir, bin }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }
}

impl Default for AgentCopy {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AgentCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing output
// ---------------------------------------------------------------------------------------------

/// One hit as printed by `--format json`.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: String,
    pub pid: u64,
    pub tid: u64,
    /// Goroutine id: only Go targets' events carry one.
    pub goid: Option<u64>,
    pub values: Map<String, Value>,
    /// The line as printed, for messages.
    pub raw: String,
}

impl Event {
    /// The captured value of `expr`; panics if missing or if it is an `{"error": ...}` object.
    pub fn value(&self, expr: &str) -> &Value {
        let v = self
            .values
            .get(expr)
            .unwrap_or_else(|| panic!("event has no value for `{expr}`: {}", self.raw));
        if let Some(err) = v.as_object().and_then(|o| o.get("error")) {
            panic!("reading `{expr}` failed: {err}; event: {}", self.raw);
        }
        v
    }

    /// The captured value of an integer expression.
    pub fn int(&self, expr: &str) -> i128 {
        json_int(self.value(expr))
            .unwrap_or_else(|| panic!("`{expr}` is not a JSON integer; event: {}", self.raw))
    }
}

/// Reads one DAP frame's body (`Content-Length: N`, a blank line, N bytes) from a blocking
/// reader. `Ok(None)` at the end of the stream; `Err` names a frame without a usable length.
/// Shared by the tests' strict daemon-side reader and the benchmarks' debugger clients.
pub fn read_dap_body(r: &mut impl BufRead) -> Result<Option<Vec<u8>>, String> {
    let mut len = None;
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("Content-Length:") {
            len = Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("bad Content-Length {l:?}: {e}"))?,
            );
        }
    }
    let len = len.ok_or("frame without Content-Length")?;
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return Ok(None);
    }
    Ok(Some(body))
}

/// How a captured value compares with the text the fixture printed for it.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// A JSON integer equal to the printed decimal.
    Int,
    /// A JSON number equal (as f64) to the printed `%.17g`.
    Float,
    /// A one-character JSON string equal to the printed `'%c'` without its quotes.
    Char,
    /// A JSON string equal to the printed `%s` (a `char *`, a `char[N]`).
    Str,
}

/// The printed line's value for `key`, panicking if the line lacks it.
pub fn printed_field<'a>(kv: &'a HashMap<String, String>, key: &str, line: &str) -> &'a str {
    kv.get(key)
        .unwrap_or_else(|| panic!("printed line lacks `{key}=`: {line}"))
}

/// What a value of `kind` printed under `key` must be captured as: the printed text, for a
/// char without the quotes the fixture prints around it (`'B'` → `B`).
pub fn expected_text(kind: Kind, key: &str, kv: &HashMap<String, String>, line: &str) -> String {
    let printed = printed_field(kv, key, line);
    match kind {
        Kind::Char => printed
            .strip_prefix('\'')
            .and_then(|p| p.strip_suffix('\''))
            .unwrap_or_else(|| panic!("printed `{key}={printed}` is not a quoted char: {line}"))
            .to_owned(),
        _ => printed.to_owned(),
    }
}

/// Checks one captured value against the printed text, panicking with both on a mismatch.
pub fn check_value(event: &Event, expr: &str, kind: Kind, printed: &str, line: &str) {
    let v = event.value(expr);
    let ctx = || format!("\n  event:   {}\n  printed: {line}", event.raw);
    match kind {
        Kind::Int => {
            let want: i128 = printed.parse().unwrap_or_else(|e| {
                panic!("printed `{printed}` for `{expr}` is not an integer: {e}")
            });
            let got = json_int(v)
                .unwrap_or_else(|| panic!("`{expr}` = {v} is not a JSON integer{}", ctx()));
            assert_eq!(
                got,
                want,
                "`{expr}` captured {got}, program printed {want}{}",
                ctx()
            );
        }
        Kind::Float => {
            let want: f64 = printed.parse().unwrap_or_else(|e| {
                panic!("printed `{printed}` for `{expr}` is not a number: {e}")
            });
            let got = v
                .as_f64()
                .unwrap_or_else(|| panic!("`{expr}` = {v} is not a JSON number{}", ctx()));
            assert!(
                got == want,
                "`{expr}` captured {got:?}, program printed {want:?}{}",
                ctx()
            );
        }
        Kind::Char | Kind::Str => {
            let got = v
                .as_str()
                .unwrap_or_else(|| panic!("`{expr}` = {v} is not a JSON string{}", ctx()));
            if matches!(kind, Kind::Char) {
                assert_eq!(
                    got.chars().count(),
                    1,
                    "`{expr}` = {v} is not one character{}",
                    ctx()
                );
            }
            assert_eq!(
                got,
                printed,
                "`{expr}` captured {got:?}, program printed {printed:?}{}",
                ctx()
            );
        }
    }
}

/// The value as an integer, if it is a JSON integer (not a float).
pub fn json_int(v: &Value) -> Option<i128> {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
}

/// Parses one `--format json` line of a non-Go target: exactly `at`, `pid`, `tid`, `values`.
pub fn parse_event(line: &str) -> Event {
    parse_event_keys(line, false)
}

/// Parses one `--format json` line that may also carry `goid` (Go targets).
pub fn parse_event_allowing_goid(line: &str) -> Event {
    parse_event_keys(line, true)
}

fn parse_event_keys(line: &str, goid_allowed: bool) -> Event {
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("agent printed a line that is not JSON ({e}): {line:?}"));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("agent printed JSON that is not an object: {line}"));
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    got.sort_unstable();
    let four = ["at", "pid", "tid", "values"];
    let ok = got == four || (goid_allowed && got == ["at", "goid", "pid", "tid", "values"]);
    assert!(ok, "unexpected keys {got:?} in event {line}");
    Event {
        at: obj["at"]
            .as_str()
            .unwrap_or_else(|| panic!("\"at\" is not a string in {line}"))
            .to_string(),
        pid: obj["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("\"pid\" is not an unsigned integer in {line}")),
        tid: obj["tid"]
            .as_u64()
            .unwrap_or_else(|| panic!("\"tid\" is not an unsigned integer in {line}")),
        goid: obj.get("goid").map(|g| {
            g.as_u64()
                .unwrap_or_else(|| panic!("\"goid\" is not an unsigned integer in {line}"))
        }),
        values: obj["values"]
            .as_object()
            .unwrap_or_else(|| panic!("\"values\" is not an object in {line}"))
            .clone(),
        raw: line.to_string(),
    }
}

/// Parses every non-empty stdout line of a `--format json` run.
pub fn parse_events(out: &Output) -> Vec<Event> {
    out.stdout_lines().into_iter().map(parse_event).collect()
}

/// The bp fixtures' own `c z=<z> …` line for round `z`, as key=value pairs (waits up to 5 s).
pub fn round_printed(fixture: &Fixture, z: i64) -> HashMap<String, String> {
    let l = fixture
        .stdout()
        .wait_for(Duration::from_secs(5), |l| {
            l.starts_with(&format!("c z={z} "))
        })
        .unwrap_or_else(|| panic!("the fixture printed no round z={z}"));
    parse_kv(&l)
}

/// Parses the `key=value` words of a line (a leading word without `=` is skipped). Values in
/// these lines never contain spaces.
pub fn parse_kv(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `s` as the agent should print it with `--string-cap cap`: unchanged when at most `cap`
/// bytes long, else its first `cap` bytes followed by `...(truncated)`.
pub fn capped(s: &str, cap: usize) -> String {
    if s.len() > cap {
        format!("{}...(truncated)", &s[..cap])
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// The agent's stderr: probe points and per-probe summaries
// ---------------------------------------------------------------------------------------------

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// One `capture: FILE:LINE → FUNC at 0xADDR (file offset 0xOFF, KIND)` line, printed for each
/// probe point before capturing.
#[derive(Debug, Clone)]
pub struct ProbeLine {
    /// `FILE:LINE` as the agent printed it.
    pub at: String,
    /// The function the probe is in.
    pub func: String,
    /// The ELF link address of the probed instruction.
    pub addr: u64,
    /// Where that instruction is in the ELF file.
    pub file_offset: u64,
    /// `Emulated`, `SingleStepped` or `Unknown`.
    pub kind: String,
    /// The line as printed, for messages.
    pub raw: String,
}

/// Parses a probe-point line; `None` for any other line.
pub fn parse_probe_line(line: &str) -> Option<ProbeLine> {
    let rest = line.strip_prefix("capture: ")?;
    let (at, rest) = rest.split_once(" → ")?;
    let (func, rest) = rest.split_once(" at ")?;
    let (addr, rest) = rest.split_once(" (file offset ")?;
    let (off, rest) = rest.split_once(", ")?;
    let kind = rest.strip_suffix(')')?;
    Some(ProbeLine {
        at: at.to_string(),
        func: func.to_string(),
        addr: parse_hex(addr)?,
        file_offset: parse_hex(off)?,
        kind: kind.to_string(),
        raw: line.to_string(),
    })
}

/// Every probe-point line in `stderr`.
pub fn probe_lines(stderr: &str) -> Vec<ProbeLine> {
    stderr.lines().filter_map(parse_probe_line).collect()
}

/// The one probe-point line in `stderr`; panics unless there is exactly one.
pub fn single_probe_line(stderr: &str) -> ProbeLine {
    let mut lines = probe_lines(stderr);
    assert!(
        lines.len() == 1,
        "expected exactly one `capture: FILE:LINE → FUNC at 0x… (file offset 0x…, KIND)` line, found {}:\n{stderr}",
        lines.len()
    );
    lines.remove(0)
}

/// One `capture: FUNC @ 0xADDR: hits=N emitted=N ...` line, printed for each probe at the end.
#[derive(Debug, Clone)]
pub struct ProbeSummary {
    pub func: String,
    pub addr: u64,
    pub counters: HashMap<String, u64>,
    /// Why the probe was switched off, if it was.
    pub switched_off: Option<String>,
    /// The line as printed, for messages.
    pub raw: String,
}

/// The counters every summary line carries.
pub const SUMMARY_COUNTERS: &[&str] = &[
    "hits",
    "emitted",
    "printed",
    "dropped_ring_full",
    "rate_limited",
    "condition_false",
    "read_faults",
    "no_plan",
    "other_process",
    "bpf_ns",
    "other_way",
];

impl ProbeSummary {
    /// The counter `key`; panics if the line lacks it.
    pub fn get(&self, key: &str) -> u64 {
        *self
            .counters
            .get(key)
            .unwrap_or_else(|| panic!("summary line lacks `{key}=`: {}", self.raw))
    }

    /// Asserts every hit is accounted for exactly once: `hits == emitted + dropped_ring_full +
    /// rate_limited + condition_false + no_plan + other_process`.
    pub fn assert_hits_accounted(&self) {
        let parts = [
            "emitted",
            "dropped_ring_full",
            "rate_limited",
            "condition_false",
            "no_plan",
            "other_process",
        ];
        let sum: u64 = parts.iter().map(|k| self.get(k)).sum();
        assert_eq!(
            self.get("hits"),
            sum,
            "hits should equal {} (= {sum}); summary: {}",
            parts.join(" + "),
            self.raw
        );
    }
}

/// Parses a summary line; `None` for any other line. Panics on a summary line that lacks
/// one of [`SUMMARY_COUNTERS`] or has a non-numeric counter.
pub fn parse_summary(line: &str) -> Option<ProbeSummary> {
    let rest = line.strip_prefix("capture: ")?;
    let (func, rest) = rest.split_once(" @ ")?;
    let (addr, rest) = rest.split_once(": ")?;
    let addr = parse_hex(addr)?;
    if !rest.starts_with("hits=") {
        return None;
    }
    let (counters_text, switched_off) = match rest.split_once(" switched_off=") {
        Some((c, why)) => (c, Some(why.trim_matches('"').to_string())),
        None => (rest, None),
    };
    let counters: HashMap<String, u64> = parse_kv(counters_text)
        .into_iter()
        .map(|(k, v)| {
            let n = v
                .parse()
                .unwrap_or_else(|e| panic!("counter `{k}={v}` is not a number ({e}): {line}"));
            (k, n)
        })
        .collect();
    for k in SUMMARY_COUNTERS {
        assert!(
            counters.contains_key(*k),
            "summary line lacks `{k}=`: {line}"
        );
    }
    Some(ProbeSummary {
        func: func.to_string(),
        addr,
        counters,
        switched_off,
        raw: line.to_string(),
    })
}

/// Every summary line in `stderr`.
pub fn summaries(stderr: &str) -> Vec<ProbeSummary> {
    stderr.lines().filter_map(parse_summary).collect()
}

/// The one summary line in `stderr`; panics unless there is exactly one.
pub fn single_summary(stderr: &str) -> ProbeSummary {
    let mut all = summaries(stderr);
    assert!(
        all.len() == 1,
        "expected exactly one `capture: FUNC @ 0x…: hits=…` summary line, found {}:\n{stderr}",
        all.len()
    );
    all.remove(0)
}

// ---------------------------------------------------------------------------------------------
// A traced process's memory
// ---------------------------------------------------------------------------------------------

/// The load bias of `pid`'s main executable: the start of the first `/proc/PID/maps` mapping
/// of `/proc/PID/exe` with file offset 0 (minus the link address of that offset, 0 for the
/// PIE fixtures). Link address + load bias = runtime address.
pub fn load_bias(pid: u32) -> u64 {
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/exe: {e}"));
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/maps: {e}"));
    let exe_text = exe.to_string_lossy();
    for line in maps.lines() {
        // start-end perms offset dev inode path
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(_dev), Some(_inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.collect::<Vec<_>>().join(" ");
        if path != exe_text || u64::from_str_radix(offset, 16).ok() != Some(0) {
            continue;
        }
        let start = range.split('-').next().unwrap_or_default();
        return u64::from_str_radix(start, 16).unwrap_or_else(|e| {
            panic!("bad start address in /proc/{pid}/maps line {line:?}: {e}")
        });
    }
    panic!(
        "no mapping of {} at file offset 0 in /proc/{pid}/maps:\n{maps}",
        exe.display()
    );
}

/// `len` bytes of `pid`'s memory at `addr`, read through `/proc/PID/mem` (what the process
/// sees, breakpoints included).
pub fn read_process_mem(pid: u32, addr: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let path = format!("/proc/{pid}/mem");
    let f = fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, addr)
        .unwrap_or_else(|e| panic!("cannot read {len} bytes at {addr:#x} from {path}: {e}"));
    buf
}

/// `len` bytes of the file at `path` from `offset`.
pub fn read_file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap_or_else(|e| {
        panic!(
            "cannot read {len} bytes at offset {offset:#x} of {}: {e}",
            path.display()
        )
    });
    buf
}

/// Bytes as `cc 48 89 e5 ...`, for messages.
pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
