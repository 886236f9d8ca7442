//! A logpoint on a real server under a real load generator (issue #15): Redis, built `-O2 -g`
//! from its Debian source (`cargo xtask bench server` fetches and builds it), loaded by
//! Debian's `redis-benchmark`, with a 4-value logpoint on its request handler
//! (`processCommand`, so every request is probed): throughput probed / unprobed, and the BPF
//! time per hit the agent's counters measured.
//!
//! Rounds alternate unprobed and probed runs so both see the same machine; each row is the
//! median of its rounds. The probe is the agent's own CLI (`detrix-agent capture`, unlimited
//! rate and CPU budget so nothing is skipped), its events read and counted as JSON lines, and
//! its closing summary line parsed for `hits` and `bpf_ns`.
//!
//! ```sh
//! cargo run -p detrix-e2e --release --bin server_bench -- --agent PATH --redis DIR
//! ```
//!
//! `DIR` is the unpacked, built Debian source (`DIR/src/redis-server`, `DIR/src/server.c`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use detrix_e2e::{agent_bin, parse_summary};

type Res<T> = Result<T, String>;

/// The handler line probed: the first statement of `processCommand` after its asserts, which
/// every command passes.
const MARKER: &str = "    moduleCallCommandFilters(c);";
/// The 4 values: three fields through `c` and one through the pointer `c->db`.
const EXPRS: [&str; 4] = ["c->id", "c->flags", "c->argc", "c->db->id"];
const ROUNDS: usize = 3;

struct Args {
    agent: PathBuf,
    redis: PathBuf,
    requests: u64,
}

fn args() -> Res<Args> {
    let mut agent = None;
    let mut redis = None;
    let mut requests = 200_000;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--agent" => agent = Some(PathBuf::from(val()?)),
            "--redis" => redis = Some(PathBuf::from(val()?)),
            "--requests" => {
                requests = val()?.parse().map_err(|e| format!("--requests: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        agent: agent.unwrap_or_else(agent_bin),
        redis: redis.ok_or("--redis DIR (the built Debian source) is required")?,
        requests,
    })
}

/// A port nobody listens on now.
fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(bin: &Path, port: u16) -> Res<Server> {
    let child = Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let s = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ping(port) {
            return Ok(s);
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err("redis-server did not answer PING within 20 s".into())
}

fn ping(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "ping"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

/// Requests per second of one `redis-benchmark` GET run.
fn load(port: u16, requests: u64) -> Res<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "get", "-c", "8", "-n", &requests.to_string(), "--csv"])
        .output()
        .map_err(|e| format!("run redis-benchmark (apt-get install redis-tools): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps",… then "GET","95238.10",…
    text.lines()
        .find_map(|l| {
            let mut f = l.split(',').map(|x| x.trim_matches('"'));
            (f.next() == Some("GET")).then(|| f.next()?.parse::<f64>().ok())?
        })
        .ok_or_else(|| format!("no GET row in redis-benchmark's output: {text}"))
}

/// The agent's capture attached to the server, its JSON lines counted.
struct Probe {
    child: Child,
    events: Arc<AtomicU64>,
    stderr: thread::JoinHandle<String>,
}

fn attach(agent: &Path, pid: u32, at: &str, port: u16) -> Res<Probe> {
    let mut cmd = Command::new(agent);
    cmd.args([
        "capture",
        "--pid",
        &pid.to_string(),
        "--at",
        at,
        "--format",
        "json",
    ])
    .args(["--rate", "0", "--cpu-budget", "100000"]);
    for e in EXPRS {
        cmd.args(["--expr", e]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {}: {e}", agent.display()))?;
    let events = Arc::new(AtomicU64::new(0));
    let out = child.stdout.take().ok_or("no stdout")?;
    let n = events.clone();
    thread::spawn(move || {
        for _ in BufReader::new(out).lines().map_while(Result::ok) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    });
    let err = child.stderr.take().ok_or("no stderr")?;
    let stderr = thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    let probe = Probe {
        child,
        events,
        stderr,
    };
    // Attached once a PING shows up as an event.
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe.events.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            return Err(format!("no event within 60 s: {}", probe.finish()?.0));
        }
        ping(port);
        thread::sleep(Duration::from_millis(200));
    }
    Ok(probe)
}

impl Probe {
    /// Stops the capture (SIGINT) and returns its stderr and summary `(hits, bpf_ns)`.
    fn finish(mut self) -> Res<(String, Option<(u64, u64)>)> {
        // SAFETY: kill(2) on the child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let err = self.stderr.join().map_err(|_| "stderr thread")?;
        let sum = err
            .lines()
            .filter_map(parse_summary)
            .fold(None, |acc: Option<(u64, u64)>, s| {
                let (h, b) = acc.unwrap_or_default();
                Some((h + s.get("hits"), b + s.get("bpf_ns")))
            });
        Ok((err, sum))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run() -> Res<()> {
    let a = args()?;
    let bin = a.redis.join("src/redis-server");
    let src = std::fs::read_to_string(a.redis.join("src/server.c"))
        .map_err(|e| format!("read server.c: {e}"))?;
    let line = src
        .lines()
        .position(|l| l == MARKER)
        .ok_or_else(|| format!("no line `{MARKER}` in server.c"))?
        + 1;
    let at = format!("server.c:{line}");
    let port = free_port()?;
    let server = start_server(&bin, port)?;
    let pid = server.0.id();
    // Warm the server (allocations, page faults) before measuring.
    load(port, a.requests / 4)?;
    let (mut plain, mut probed, mut per_hit, mut every) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        plain.push(load(port, a.requests)?);
        let probe = attach(&a.agent, pid, &at, port)?;
        let before = probe.events.load(Ordering::Relaxed);
        probed.push(load(port, a.requests)?);
        let events = probe.events.load(Ordering::Relaxed) - before;
        let (err, sum) = probe.finish()?;
        let (hits, bpf_ns) = sum.ok_or_else(|| format!("no summary from the capture: {err}"))?;
        per_hit.push(bpf_ns as f64 / hits.max(1) as f64);
        every.push(events as f64 / a.requests as f64);
        eprintln!(
            "server_bench: round {round}: unprobed {:.0} rps, probed {:.0} rps, {hits} hits, {events} events during the run",
            plain[round], probed[round]
        );
    }
    let (u, p) = (median(plain), median(probed));
    println!("\nreal server: redis-server (Debian source, -O2 -g), redis-benchmark GET -c 8 -n {}, logpoint at {at} ({}), {ROUNDS} rounds, median\n", a.requests, EXPRS.join(", "));
    println!("{:<44} {:>12}", "row", "value");
    println!("{:<44} {:>12.0}", "unprobed requests/s", u);
    println!("{:<44} {:>12.0}", "probed requests/s", p);
    println!("{:<44} {:>12.3}", "probed / unprobed", p / u);
    println!("{:<44} {:>12.0}", "BPF ns per hit", median(per_hit));
    println!(
        "{:<44} {:>12.3}",
        "events per request (1 = every request probed)",
        median(every)
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("server_bench: {e}");
        std::process::exit(1);
    }
}
