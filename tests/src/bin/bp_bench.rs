//! Per-hit cost of breakpoint mode (issue #7): a stack-trace metric answered from an in-kernel
//! snapshot (`detrix-agent capture --stack --locals`, what the DAP facade installs for a
//! breakpoint) versus the same breakpoint through a real debugger, all in one run.
//!
//! Fixtures: `tests/fixtures/bp/bench_chain.c` (gcc -g -O0) and `tests/fixtures/bp/bench_go/`
//! (Go, `-N -l`): main → a → b → work in a tight loop, printing mean ns per call of a() over
//! 0.2 s windows. A row's ns/hit is its median ns/call minus the no-probe median (every call
//! hits the line once). Per language:
//!
//! * no probe;
//! * eBPF stack snapshot: `capture --stack --locals --rate 0 --cpu-budget 100000` (every hit
//!   takes the full path: stack copy, every local, ring output; nothing rate-limited, never
//!   switched off), its first event checked to hold the chain work → b → a → main;
//! * debugger breakpoint: lldb-dap-22 (C) or `dlv dap` (Go) attached, a plain breakpoint on the
//!   line, and for each `stopped` a `stackTrace` (levels 1000) then `continue` — the least the
//!   daemon does per stop (it also asks stackTrace levels 1 and evaluates the expressions), so
//!   the debugger's cost here is a lower bound;
//! * after the debugger detached: the target must still be running at about the no-probe pace.
//!
//! Run as root (uprobes) after building the agent (`cargo xtask test`, or
//! `cargo build -p detrix-agent` with the eBPF object):
//!
//! ```sh
//! cargo run -p detrix-e2e --release --bin bp_bench [-- --agent PATH]
//! ```
//!
//! `--agent` defaults to `$DETRIX_AGENT_BIN`, else `target/debug/detrix-agent`. The fixture
//! runs on CPU 0 and the agent or debugger on CPU 1; `--no-pin` leaves placement to the
//! scheduler.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use detrix_e2e::{agent_bin, fixtures_out_dir, parse_summary, workspace_root, Lines, Value};
use serde_json::json;

const WINDOW_S: &str = "0.2";
const SAMPLES: usize = 5;

type Res<T> = Result<T, String>;

/// The fixture runs on this CPU, the agent and the debuggers on the other one, so neither side
/// takes CPU time from the other (with ≥ 2 CPUs).
const TARGET_CPU: usize = 0;
const TOOL_CPU: usize = 1;
/// `--no-pin`: let the scheduler place everything.
static NO_PIN: AtomicBool = AtomicBool::new(false);

/// Runs `cmd` on `cpu` only (when the machine has more than one).
fn pin(cmd: &mut Command, cpu: usize) -> &mut Command {
    if NO_PIN.load(Ordering::Relaxed) || thread::available_parallelism().map_or(1, usize::from) < 2
    {
        return cmd;
    }
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions on a local CPU set.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
                != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bp_bench: needs root (CAP_BPF/CAP_PERFMON) to attach uprobes");
        std::process::exit(2);
    }
    let mut args = std::env::args().skip(1);
    let mut agent = agent_bin();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--agent" => agent = PathBuf::from(args.next().unwrap_or_default()),
            "--no-pin" => NO_PIN.store(true, Ordering::Relaxed),
            _ => {
                eprintln!("usage: bp_bench [--agent PATH] [--no-pin]");
                std::process::exit(2);
            }
        }
    }
    let mut table: Vec<Row> = Vec::new();
    let mut ratios = Vec::new();
    let mut failed = false;
    for lang in [Lang::C, Lang::Go] {
        match section(lang, &agent) {
            Ok(rows) => {
                let ebpf = rows.iter().find(|r| r.kind == Kind::Ebpf).map(|r| r.ns_hit);
                let dbg = rows
                    .iter()
                    .find(|r| r.kind == Kind::Debugger)
                    .map(|r| r.ns_hit);
                if let (Some(e), Some(d)) = (ebpf, dbg) {
                    ratios.push(format!(
                        "{}: debugger breakpoint / eBPF stack snapshot = {:.0}x per hit",
                        lang.name(),
                        d / e
                    ));
                }
                table.extend(rows);
            }
            Err(e) => {
                failed = true;
                eprintln!("bp_bench: {} section failed: {e}", lang.name());
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nper-hit cost of a stack-trace breakpoint ({SAMPLES} windows of {WINDOW_S} s per row, median; ns/hit = ns/call - no probe; \
         {}; loadavg {})\n",
        if NO_PIN.load(Ordering::Relaxed) { "not pinned".to_owned() } else { format!("target on CPU {TARGET_CPU}, agent/debugger on CPU {TOOL_CPU}") },
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "{:<4} {:<44} {:>12} {:>12}  note",
        "lang", "row", "ns/call", "ns/hit"
    );
    for r in &table {
        let hit = if r.kind == Kind::Baseline {
            "-".to_owned()
        } else {
            format!("{:.1}", r.ns_hit)
        };
        println!(
            "{:<4} {:<44} {:>12.1} {:>12}  {}",
            r.lang, r.name, r.ns_call, hit, r.note
        );
    }
    println!();
    for r in &ratios {
        println!("{r}");
    }
    if failed {
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Lang {
    C,
    Go,
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::C => "C",
            Lang::Go => "Go",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Baseline,
    Reference,
    Ebpf,
    Debugger,
    After,
}

struct Row {
    lang: &'static str,
    kind: Kind,
    name: String,
    ns_call: f64,
    ns_hit: f64,
    note: String,
}

fn build(lang: Lang) -> Res<(PathBuf, PathBuf)> {
    let out = fixtures_out_dir();
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let bp = workspace_root().join("tests/fixtures/bp");
    let (exe, src, st) = match lang {
        Lang::C => {
            let src = bp.join("bench_chain.c");
            let exe = out.join("bp_bench_chain_c");
            let st = Command::new("gcc")
                .args(["-g", "-O0", "-o"])
                .arg(&exe)
                .arg(&src)
                .status();
            (exe, src, st)
        }
        Lang::Go => {
            let dir = bp.join("bench_go");
            let exe = out.join("bp_bench_chain_go");
            let st = Command::new("go")
                .current_dir(&dir)
                .env("GOTOOLCHAIN", "local")
                .env("GOCACHE", out.join("gocache"))
                .args(["build", "-buildvcs=false", "-gcflags=all=-N -l", "-o"])
                .arg(&exe)
                .arg(".")
                .status();
            (exe, dir.join("main.go"), st)
        }
    };
    match st {
        Ok(s) if s.success() => Ok((exe, src.canonicalize().map_err(|e| e.to_string())?)),
        other => Err(format!("building {}: {other:?}", src.display())),
    }
}

fn line_of(src: &Path, marker: &str) -> Res<u32> {
    let text = std::fs::read_to_string(src).map_err(|e| e.to_string())?;
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i + 1)
        .collect();
    match hits.as_slice() {
        [one] => u32::try_from(*one).map_err(|e| e.to_string()),
        _ => Err(format!("{marker} in {}: {hits:?}", src.display())),
    }
}

/// The running fixture and its reported windows.
struct Fixture {
    child: Child,
    samples: Receiver<f64>,
    windows: Arc<AtomicU64>,
}

impl Fixture {
    fn start(exe: &Path) -> Res<Self> {
        let mut child = pin(&mut Command::new(exe), TARGET_CPU)
            .arg(WINDOW_S)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {}: {e}", exe.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        let windows = Arc::new(AtomicU64::new(0));
        let w = windows.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(v) = line
                    .strip_prefix("ns_per_call=")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok())
                {
                    w.fetch_add(1, Ordering::Relaxed);
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Self {
            child,
            samples: rx,
            windows,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Median ns/call over SAMPLES fresh windows (the first one after the call is discarded: it
    /// straddles the change).
    fn measure(&self) -> Res<f64> {
        while self.samples.try_recv().is_ok() {}
        let wait = Duration::from_secs(30);
        self.samples
            .recv_timeout(wait)
            .map_err(|_| "the fixture stopped reporting".to_owned())?;
        let mut v = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            v.push(
                self.samples
                    .recv_timeout(wait)
                    .map_err(|_| "the fixture stopped reporting".to_owned())?,
            );
        }
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    }

    /// The fixture still runs and reports new windows.
    fn assert_running(&mut self, after: &str) -> Res<()> {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return Err(format!("the target exited after {after}"));
        }
        let n = self.windows.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.windows.load(Ordering::Relaxed) < n + 3 {
            if Instant::now() > deadline {
                let st = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
                    .unwrap_or_default();
                let state = st
                    .lines()
                    .filter(|l| l.starts_with("State:") || l.starts_with("TracerPid:"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(format!(
                    "the target printed no new windows after {after} ({state})"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn section(lang: Lang, agent: &Path) -> Res<Vec<Row>> {
    let (exe, src) = build(lang)?;
    let (probe, call_b, call_a, call_main) = match lang {
        Lang::C => (
            line_of(&src, "/* PROBE:work */")?,
            line_of(&src, "/* CALL:b */")?,
            line_of(&src, "/* CALL:a */")?,
            line_of(&src, "/* CALL:main */")?,
        ),
        Lang::Go => (
            line_of(&src, "// PROBE:work")?,
            line_of(&src, "// CALL:b")?,
            line_of(&src, "// CALL:a")?,
            line_of(&src, "// CALL:main")?,
        ),
    };
    let want_chain: Vec<(String, u32)> = match lang {
        Lang::C => vec![
            ("work".into(), probe),
            ("b".into(), call_b),
            ("a".into(), call_a),
            ("main".into(), call_main),
        ],
        Lang::Go => vec![
            ("main.work".into(), probe),
            ("main.b".into(), call_b),
            ("main.a".into(), call_a),
            ("main.main".into(), call_main),
        ],
    };
    let mut fx = Fixture::start(&exe)?;
    thread::sleep(Duration::from_millis(300));
    let l = lang.name();
    let mut rows = Vec::new();
    let base = fx.measure()?;
    rows.push(Row {
        lang: l,
        kind: Kind::Baseline,
        name: "no probe".into(),
        ns_call: base,
        ns_hit: 0.0,
        note: String::new(),
    });
    eprintln!("bp_bench: {l}: no probe {base:.1} ns/call");

    // For reference: the same probe capturing one int (the trap and plan, no snapshot).
    let (ns, note) = ebpf_snapshot(agent, &fx, &src, probe, &want_chain, false)?;
    eprintln!("bp_bench: {l}: 1-int capture {ns:.1} ns/call");
    rows.push(Row {
        lang: l,
        kind: Kind::Reference,
        name: "eBPF 1-int capture (v), no stack/locals".into(),
        ns_call: ns,
        ns_hit: ns - base,
        note,
    });
    fx.assert_running("the capture ended")?;
    // eBPF stack + locals snapshot at every hit.
    let (ns, note) = ebpf_snapshot(agent, &fx, &src, probe, &want_chain, true)?;
    eprintln!("bp_bench: {l}: snapshot {ns:.1} ns/call");
    rows.push(Row {
        lang: l,
        kind: Kind::Ebpf,
        name: "eBPF stack+locals snapshot (detrix-agent)".into(),
        ns_call: ns,
        ns_hit: ns - base,
        note,
    });
    fx.assert_running("the capture ended")?;

    // The same breakpoint through the debugger.
    let dbg = match lang {
        Lang::C => Debugger::Lldb,
        Lang::Go => Debugger::Delve,
    };
    let (ns, note) = debugger_breakpoint(dbg, &fx, &src, probe, &want_chain)?;
    eprintln!("bp_bench: {l}: debugger {ns:.1} ns/call");
    rows.push(Row {
        lang: l,
        kind: Kind::Debugger,
        name: format!("{} breakpoint + stackTrace + continue", dbg.name()),
        ns_call: ns,
        ns_hit: ns - base,
        note,
    });
    fx.assert_running(&format!("{} detached", dbg.name()))?;
    let after = fx.measure()?;
    rows.push(Row {
        lang: l,
        kind: Kind::After,
        name: format!("after {} detached", dbg.name()),
        ns_call: after,
        ns_hit: after - base,
        note: format!("target running; {:.2}x no probe", after / base),
    });
    Ok(rows)
}

/// `detrix-agent capture --stack --locals` on the line while the fixture measures.
fn ebpf_snapshot(
    agent: &Path,
    fx: &Fixture,
    src: &Path,
    line: u32,
    want: &[(String, u32)],
    snapshot: bool,
) -> Res<(f64, String)> {
    let mut child = pin(&mut Command::new(agent), TOOL_CPU)
        .args([
            "capture",
            "--pid",
            &fx.pid().to_string(),
            "--at",
            &format!("{}:{line}", src.display()),
            "--expr",
            "v",
        ])
        .args(if snapshot {
            &["--stack", "--locals"][..]
        } else {
            &[]
        })
        .args(["--rate", "0", "--cpu-budget", "100000", "--format", "json"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {}: {e}", agent.display()))?;
    // Keep the first event; count and discard the rest (the agent prints what it can decode).
    let stdout = child.stdout.take().ok_or("stdout")?;
    let (first_tx, first_rx) = mpsc::channel::<String>();
    let printed = Arc::new(AtomicU64::new(0));
    let p = printed.clone();
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            if p.fetch_add(1, Ordering::Relaxed) == 0 {
                let _ = first_tx.send(String::from_utf8_lossy(&line).into_owned());
            }
            line.clear();
        }
    });
    let (stderr, _) = Lines::collect(child.stderr.take().ok_or("stderr")?);
    let stop = |child: &mut Child| {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
    };
    let Ok(first) = first_rx.recv_timeout(Duration::from_secs(30)) else {
        stop(&mut child);
        return Err(format!(
            "the capture printed no event; stderr:\n{}",
            stderr.text()
        ));
    };
    let ev: Value = serde_json::from_str(&first).map_err(|e| format!("{e}: {first}"))?;
    let chain = top_frames(&ev["stack"], "function");
    if ev["values"]["v"].is_null()
        || (snapshot && (chain != want || ev["locals"]["name"].is_null()))
    {
        stop(&mut child);
        return Err(format!(
            "the snapshot is not the chain {want:?} with locals: {first}"
        ));
    }
    let ns = fx.measure();
    stop(&mut child);
    let ns = ns?;
    // The summary is the last thing the agent writes; read it all.
    stderr.wait_eof(Duration::from_secs(10));
    let text = stderr.text();
    let placed = text
        .lines()
        .find(|l| l.contains(" → "))
        .and_then(|l| l.rsplit_once(", "))
        .map_or("", |(_, k)| k.trim_end_matches(')'))
        .to_owned();
    let Some(s) = text.lines().find_map(parse_summary) else {
        return Err(format!("no summary line from the capture:\n{text}"));
    };
    if s.switched_off.is_some()
        || s.get("rate_limited") != 0
        || s.get("hits") != s.get("emitted") + s.get("dropped_ring_full")
    {
        return Err(format!(
            "not every hit took the full snapshot path: {}",
            s.raw
        ));
    }
    Ok((
        ns,
        format!(
            "{} hits: emitted {}, ring full {}, printed {}; bpf {:.0} ns/hit; probe {placed}",
            s.get("hits"),
            s.get("emitted"),
            s.get("dropped_ring_full"),
            printed.load(Ordering::Relaxed),
            s.get("bpf_ns") as f64 / s.get("hits").max(1) as f64
        ),
    ))
}

#[derive(Clone, Copy, PartialEq)]
enum Debugger {
    Lldb,
    Delve,
}

impl Debugger {
    fn name(self) -> &'static str {
        match self {
            Debugger::Lldb => "lldb-dap-22",
            Debugger::Delve => "Delve (dlv dap)",
        }
    }
}

/// A minimal DAP client (lldb-dap on stdio, Delve on TCP).
struct Dap {
    child: Child,
    writer: Box<dyn Write + Send>,
    seq: i64,
    frames: Receiver<Value>,
}

impl Drop for Dap {
    /// A debugger left behind would keep the target traced (and unreapable).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dap {
    fn spawn(dbg: Debugger) -> Res<Self> {
        match dbg {
            Debugger::Lldb => {
                let mut child = pin(&mut Command::new("lldb-dap-22"), TOOL_CPU)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start lldb-dap-22: {e}"))?;
                let stdin = child.stdin.take().ok_or("stdin")?;
                let stdout = child.stdout.take().ok_or("stdout")?;
                Ok(Self::over(child, Box::new(stdin), Box::new(stdout)))
            }
            Debugger::Delve => {
                let mut child = pin(&mut Command::new("dlv"), TOOL_CPU)
                    .args(["dap", "--listen=127.0.0.1:0", "--check-go-version=false"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start dlv dap: {e}"))?;
                let mut out = BufReader::new(child.stdout.take().ok_or("stdout")?);
                let mut line = String::new();
                out.read_line(&mut line).map_err(|e| e.to_string())?;
                let addr = line
                    .rsplit(' ')
                    .next()
                    .map(str::trim)
                    .filter(|a| a.contains(':'))
                    .ok_or_else(|| format!("dlv dap said: {line}"))?
                    .to_owned();
                thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
                let sock = std::net::TcpStream::connect(&addr)
                    .map_err(|e| format!("connect to dlv at {addr}: {e}"))?;
                let reader = sock.try_clone().map_err(|e| e.to_string())?;
                Ok(Self::over(child, Box::new(sock), Box::new(reader)))
            }
        }
    }

    fn over(child: Child, writer: Box<dyn Write + Send>, reader: Box<dyn Read + Send>) -> Self {
        let mut r = BufReader::new(reader);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || loop {
            let body = match detrix_e2e::read_dap_body(&mut r) {
                Ok(Some(body)) => body,
                Ok(None) => return,
                Err(_) => continue,
            };
            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                continue;
            };
            if v["event"] == "output" {
                continue;
            }
            if tx.send(v).is_err() {
                return;
            }
        });
        Self {
            child,
            writer,
            seq: 0,
            frames: rx,
        }
    }

    fn send(&mut self, command: &str, arguments: Value) -> Res<i64> {
        self.seq += 1;
        let mut body = json!({"seq": self.seq, "type": "request", "command": command});
        body["arguments"] = arguments;
        let body = body.to_string();
        write!(self.writer, "Content-Length: {}\r\n\r\n{body}", body.len())
            .map_err(|e| e.to_string())?;
        self.writer.flush().map_err(|e| e.to_string())?;
        Ok(self.seq)
    }

    /// The next message satisfying `what`; messages before it that are `stopped` events are
    /// returned too (a stop must never be lost, or the target stays stopped).
    fn wait(
        &self,
        what: &dyn Fn(&Value) -> bool,
        label: &str,
        stops: &mut Vec<Value>,
    ) -> Res<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .frames
                .recv_timeout(left)
                .map_err(|_| format!("debugger: no {label} within 30 s"))?;
            if what(&v) {
                return Ok(v);
            }
            if v["event"] == "stopped" {
                stops.push(v);
            }
        }
    }

    fn request(&mut self, command: &str, arguments: Value, stops: &mut Vec<Value>) -> Res<Value> {
        let s = self.send(command, arguments)?;
        let r = self.wait(
            &|v| v["type"] == "response" && v["request_seq"] == s,
            &format!("{command} response"),
            stops,
        )?;
        if r["success"] != true {
            return Err(format!("debugger {command} failed: {r}"));
        }
        Ok(r)
    }
}

/// A plain breakpoint on the line; each stop answered with stackTrace then continue while the
/// fixture measures; then a clean detach that leaves the target running.
fn debugger_breakpoint(
    dbg: Debugger,
    fx: &Fixture,
    src: &Path,
    line: u32,
    want: &[(String, u32)],
) -> Res<(f64, String)> {
    let mut dap = Dap::spawn(dbg)?;
    let mut stops = Vec::new();
    let adapter = if dbg == Debugger::Delve {
        "go"
    } else {
        "lldb-dap"
    };
    dap.request("initialize", json!({"adapterID": adapter, "clientID": "detrix-bp-bench", "linesStartAt1": true, "columnsStartAt1": true, "pathFormat": "path"}), &mut stops)?;
    let pid = fx.pid();
    // lldb-dap answers attach only after configurationDone; Delve at once (target halted).
    let attach = match dbg {
        Debugger::Lldb => dap.send("attach", json!({"pid": pid}))?,
        Debugger::Delve => dap.send(
            "attach",
            json!({"mode": "local", "processId": pid, "stopOnEntry": false}),
        )?,
    };
    // Delve sends `initialized` before its attach response, lldb-dap only the event for now.
    let mut seen = (false, dbg == Debugger::Lldb);
    while !(seen.0 && seen.1) {
        let v = dap.wait(
            &|v| {
                v["event"] == "initialized"
                    || (v["type"] == "response" && v["request_seq"] == attach)
            },
            "initialized event and attach response",
            &mut stops,
        )?;
        if v["event"] == "initialized" {
            seen.0 = true;
        } else if v["success"] == true {
            seen.1 = true;
        } else {
            return Err(format!("{} attach failed: {v}", dbg.name()));
        }
    }
    let bp = dap.request(
        "setBreakpoints",
        json!({"source": {"path": src}, "breakpoints": [{"line": line}]}),
        &mut stops,
    )?;
    if bp["body"]["breakpoints"][0]["verified"] != true {
        return Err(format!(
            "{} did not verify the breakpoint: {}",
            dbg.name(),
            bp["body"]
        ));
    }
    let _ = dap.request("configurationDone", json!({}), &mut stops);
    if dbg == Debugger::Lldb {
        dap.wait(
            &|v| v["type"] == "response" && v["request_seq"] == attach,
            "attach response",
            &mut stops,
        )?;
    } else {
        // Delve attached with the target halted: run it.
        let _ = dap.request("continue", json!({"threadId": 1}), &mut stops);
    }

    // The stop loop runs on its own thread while this one reads the fixture's windows.
    let done = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(AtomicU64::new(0));
    let (d, h) = (done.clone(), handled.clone());
    let want = want.to_vec();
    let worker = thread::spawn(move || -> Res<(Dap, Vec<Value>, String)> {
        let mut stops: Vec<Value> = stops;
        let mut checked = String::new();
        let (mut last_continue, mut spent): (Option<Instant>, [f64; 3]) = (None, [0.0; 3]);
        while !d.load(Ordering::Relaxed) {
            let stop = if stops.is_empty() {
                match dap.frames.recv_timeout(Duration::from_millis(100)) {
                    Ok(v) if v["event"] == "stopped" => v,
                    Ok(_) => continue,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(e) => return Err(format!("debugger connection: {e}")),
                }
            } else {
                stops.remove(0)
            };
            let tid = stop["body"]["threadId"].clone();
            let t0 = Instant::now();
            let st = dap.request(
                "stackTrace",
                json!({"threadId": tid, "startFrame": 0, "levels": 1000}),
                &mut stops,
            )?;
            if checked.is_empty() {
                let got = top_frames(&st["body"]["stackFrames"], "name");
                checked = format!("{got:?}");
                if got.iter().map(|(_, l)| *l).collect::<Vec<_>>()
                    != want.iter().map(|(_, l)| *l).collect::<Vec<_>>()
                {
                    return Err(format!(
                        "the debugger's stack is not the chain {want:?}: {st}"
                    ));
                }
            }
            let t1 = Instant::now();
            dap.request("continue", json!({"threadId": tid}), &mut stops)?;
            let t2 = Instant::now();
            if let Some(prev) = last_continue.replace(t2) {
                // From the previous continue's response to this stop's stackTrace request.
                spent[0] += t0.duration_since(prev).as_secs_f64();
            }
            spent[1] += t1.duration_since(t0).as_secs_f64();
            spent[2] += t2.duration_since(t1).as_secs_f64();
            h.fetch_add(1, Ordering::Relaxed);
        }
        let n = h.load(Ordering::Relaxed).max(2) as f64;
        let timing = format!(
            "per stop: run to the stop {:.0} µs, stackTrace {:.0} µs, continue {:.0} µs",
            spent[0] * 1e6 / (n - 1.0),
            spent[1] * 1e6 / n,
            spent[2] * 1e6 / n
        );
        Ok((dap, stops, format!("{checked}; {timing}")))
    });
    let t = Instant::now();
    let before = handled.load(Ordering::Relaxed);
    let ns = fx.measure();
    let stops_measured = handled.load(Ordering::Relaxed) - before;
    let secs = t.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (mut dap, mut stops, chain) = worker
        .join()
        .map_err(|_| "the stop loop panicked".to_owned())??;
    let ns = ns?;

    // Detach: no breakpoints, any stop that came meanwhile continued, then disconnect without
    // killing. lldb-dap must see the target stopped before disconnect (it can kill a running
    // target with SIGTRAP, toolchain.md E14); Delve resumes the target on disconnect.
    dap.request(
        "setBreakpoints",
        json!({"source": {"path": src}, "breakpoints": []}),
        &mut stops,
    )?;
    thread::sleep(Duration::from_millis(50));
    while let Ok(v) = dap.frames.try_recv() {
        if v["event"] == "stopped" {
            stops.push(v);
        }
    }
    for s in std::mem::take(&mut stops) {
        let _ = dap.request(
            "continue",
            json!({"threadId": s["body"]["threadId"]}),
            &mut Vec::new(),
        );
    }
    if dbg == Debugger::Lldb {
        let threads = dap.request("threads", json!({}), &mut stops)?;
        let tid = threads["body"]["threads"][0]["id"]
            .as_i64()
            .unwrap_or(i64::from(pid));
        dap.request("pause", json!({"threadId": tid}), &mut stops)?;
        if stops.is_empty() {
            dap.wait(
                &|v| v["event"] == "stopped",
                "stopped after pause",
                &mut stops,
            )?;
        }
    }
    let _ = dap.request(
        "disconnect",
        json!({"terminateDebuggee": false}),
        &mut stops,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(dap.child.try_wait(), Ok(None)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    drop(dap);
    if stops_measured == 0 {
        return Err(format!("{} handled no stops while measuring", dbg.name()));
    }
    Ok((
        ns,
        format!(
            "{stops_measured} stops ({:.0}/s) handled while measuring; top frames {chain}",
            stops_measured as f64 / secs
        ),
    ))
}

/// The top four frames of a JSON frame list as (function, line); `name_key` names the function
/// field (`function` in the agent's JSON, `name` in DAP).
fn top_frames(frames: &Value, name_key: &str) -> Vec<(String, u32)> {
    frames
        .as_array()
        .map(|f| {
            f.iter()
                .take(4)
                .map(|f| {
                    (
                        f[name_key].as_str().unwrap_or("").to_owned(),
                        f["line"]
                            .as_u64()
                            .and_then(|l| u32::try_from(l).ok())
                            .unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
