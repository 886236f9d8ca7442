//! `detrix-agent serve` on one host, measured in one run (issue #13 point 11), against the
//! daemon emulator (and the real daemon for the wake when `DETRIX_BIN` is set):
//!
//! * exec → target: a selected process's exec to its entry in the target list (serve's own
//!   histogram, `/metrics`), over [`IDLE`] starts;
//! * agent RSS with [`IDLE`] idle targets, against the same serve with none;
//! * wake → registered: `POST /detrix/targets/{id}/wake` until its answer (the answer comes once
//!   the daemon accepted the registration and opened its DAP session);
//! * `setBreakpoints` → probe live, warm: a one-logpoint request on a target whose debug info is
//!   already read, until its response (sent once the uprobe is attached) — right after the
//!   previous logpoint was removed (the kernel still unregistering its uprobe, ~100 ms), and
//!   again with nothing being removed;
//! * attach time of 1, 100 and 1000 probes on one target (a generated program with 1000
//!   distinct lines, one `setBreakpoints`), and the time to sleep that target (its answer
//!   comes once every uprobe is unregistered);
//! * per-hit cost with [`BUSY`] targets with a probe attached against one: the extra ns per
//!   call of `bench_loop`'s probed function over its no-probe pace, same run.
//!
//! ```sh
//! cargo xtask bench serve          # this section alone
//! cargo run -p detrix-e2e --release --bin serve_bench [-- --agent PATH]
//! ```
//!
//! Run as root. The figures are medians; times are wall-clock on whatever else the machine does.

// The tests' daemon emulator and real-daemon helpers (it allows its own dead code).
#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::Serve;
use common::{set_bps, RestStub};
use detrix_e2e::{build_c_fixture, fixtures_out_dir, marker_line, Build, Fixture, Lines};
use serde_json::{json, Value};

/// Idle targets for the RSS and exec → target rows.
const IDLE: usize = 100;
/// Targets with a probe for the per-hit row.
const BUSY: usize = 50;
/// Repetitions of the wake and setBreakpoints rows.
const REPEAT: usize = 10;
/// The longest a many-probe `setBreakpoints` may take here.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);

type Res<T> = Result<T, String>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The table's rows, each also printed to stderr as it is measured (a run cut short keeps
/// what it measured).
#[derive(Default)]
struct Rows(Vec<(String, String)>);

impl Rows {
    fn push(&mut self, row: (String, String)) {
        eprintln!("serve_bench: {}: {}", row.0, row.1);
        self.0.push(row);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A private copy of `src` (so a rule selects only this run's processes).
fn copy(src: &Path, tag: &str) -> PathBuf {
    let dst = fixtures_out_dir().join(format!("serve-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&dst);
    std::fs::copy(src, &dst).expect("copy the fixture");
    dst
}

/// A C program whose `main` runs 1000 distinct source lines, each one probe site.
fn many_lines() -> Res<(PathBuf, PathBuf)> {
    let dir = fixtures_out_dir();
    let src = dir.join("serve_bench_lines.c");
    let mut c = String::from(
        "#include <stdio.h>\n#include <unistd.h>\nvolatile long sink;\nint main(void)\n{\n    printf(\"ready pid=%d\\n\", (int)getpid());\n    fflush(stdout);\n    for (;;) {\n",
    );
    for i in 0..1000 {
        c.push_str(&format!("        sink += {i}; /* L{i} */\n"));
    }
    c.push_str("        usleep(100000);\n    }\n}\n");
    std::fs::write(&src, c).map_err(|e| e.to_string())?;
    let exe = dir.join(format!("serve-bench-lines-{}", std::process::id()));
    let st = Command::new("gcc")
        .args(["-g", "-O0", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .map_err(|e| format!("gcc: {e}"))?;
    if !st.success() {
        return Err("gcc failed on the generated program".into());
    }
    Ok((src, exe))
}

fn target_id(serve: &Serve, pid: u32) -> String {
    let list = serve.wait_targets("the target sleeping", |t| {
        t.iter()
            .any(|x| x["pid"] == json!(pid) && x["state"] == "sleeping")
    });
    list.iter()
        .find(|x| x["pid"] == json!(pid))
        .and_then(|x| x["id"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Wakes target `id`; returns the milliseconds until the answer.
fn wake(serve: &Serve, id: &str) -> Res<f64> {
    let t0 = Instant::now();
    let (s, w) = serve.post(&format!("/detrix/targets/{id}/wake"), None);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if s != 200 || w["status"] != "awake" {
        return Err(format!("wake {id}: {s} {w}"));
    }
    Ok(ms)
}

/// [`wake`], tried up to three times (a busy host can time out one health check); for the rows
/// that need a target awake, not the wake's time.
fn wake_retrying(serve: &Serve, id: &str) -> Res<f64> {
    let mut last = Err(String::new());
    for _ in 0..3 {
        last = wake(serve, id);
        if last.is_ok() {
            break;
        }
    }
    last
}

/// `bench_loop` started on its own (it prints `ready`, not a pid), and its ns per call.
struct Loop {
    child: Child,
    out: Lines,
}

impl Loop {
    fn start(exe: &Path) -> Loop {
        let mut child = Command::new(exe)
            .arg("0.2")
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start bench_loop");
        let (out, _) = Lines::collect(child.stdout.take().expect("piped"));
        out.wait_for(Duration::from_secs(10), |l| l == "ready");
        Loop { child, out }
    }

    /// Median ns per call over the next `n` windows.
    fn ns_per_call(&self, n: usize) -> f64 {
        let from = self.out.len();
        self.out
            .wait_count(from + n + 1, Duration::from_secs(30), |_| true);
        let v: Vec<f64> = self.out.snapshot()[from + 1..]
            .iter()
            .filter_map(|l| {
                l.strip_prefix("ns_per_call=")?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        median(v)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--agent" {
            if let Some(p) = args.next() {
                std::env::set_var("DETRIX_AGENT_BIN", p);
            }
        }
    }
    if let Err(e) = run() {
        eprintln!("serve_bench: {e}");
        std::process::exit(1);
    }
}

#[allow(clippy::too_many_lines, reason = "one run, one table, in order")]
fn run() -> Res<()> {
    detrix_e2e::require_root();
    let mut rows = Rows::default();
    let orders = copy(&build_c_fixture("orders", Build::Debug), "idle");
    let looper = copy(&build_c_fixture("bench_loop", Build::Debug), "loop");
    let (lines_src, lines_exe) = many_lines()?;
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let serve = Serve::start(
        &[
            "--select",
            &format!("exe={}", orders.display()),
            "--select",
            &format!("exe={}", looper.display()),
            "--select",
            &format!("exe={}", lines_exe.display()),
            "--daemon-url",
            &stub.url,
            // The per-hit row keeps a probe on a tight loop: no breaker may switch it off.
            "--cpu-budget",
            "0",
            "--host-cpu-budget",
            "0",
        ],
        &[],
    );
    let spid = serve.child.id();
    // The host's program loads at start; let it settle before the empty RSS.
    let deadline = Instant::now() + Duration::from_secs(60);
    let load_s = loop {
        let (_, text) = common::http("GET", &format!("{}/metrics", serve.control), None);
        let v = metric(&text, "detrix_ebpf_load_seconds");
        if v.is_finite() || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    rows.push((
        "eBPF program load (once per host)".into(),
        format!("{:.0} ms", load_s * 1e3),
    ));
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = rss_kib(spid);

    // Idle targets: exec → target, RSS.
    let idle: Vec<Fixture> = (0..IDLE)
        .map(|_| Fixture::start(&orders, &["-1", "1000"]))
        .collect();
    serve.wait_targets("every idle target sleeping", |t| {
        t.iter().filter(|x| x["state"] == "sleeping").count() >= IDLE
    });
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_kib(spid);
    let (_, text) = common::http("GET", &format!("{}/metrics", serve.control), None);
    let h = "detrix_serve_exec_to_target_seconds";
    let (sum, count) = (
        metric(&text, &format!("{h}_sum")),
        metric(&text, &format!("{h}_count")),
    );
    rows.push((
        format!("exec → target (mean of {count}, max)"),
        format!(
            "{:.1} ms, max {:.1} ms",
            sum / count * 1e3,
            metric(&text, "detrix_serve_exec_to_target_max_seconds") * 1e3
        ),
    ));
    rows.push((
        format!("agent RSS: none → {IDLE} idle targets"),
        format!(
            "{} MiB → {} MiB (+{} KiB per target)",
            rss0 / 1024,
            rss / 1024,
            (rss.saturating_sub(rss0)) / IDLE as u64
        ),
    ));

    // Wake → registered (emulator), on idle targets.
    let ids: Vec<String> = idle.iter().map(|f| target_id(&serve, f.pid())).collect();
    let mut wakes = Vec::new();
    for id in ids.iter().take(REPEAT) {
        wakes.push(wake(&serve, id)?);
    }
    rows.push((
        format!("wake → registered, emulator (median of {REPEAT})"),
        format!("{:.1} ms (goal ≤ 100 ms)", median(wakes)),
    ));

    // setBreakpoints → probe live, warm: on the last woken target, whose debug info is read.
    let (_, mut dap) = stub.take_session();
    let c_src = detrix_e2e::c_fixture_source("orders");
    let path = c_src.display().to_string();
    let line = marker_line(&c_src, "process");
    let mut seq = 1;
    let mut set = |dap: &mut common::Dap, bps: Value| {
        seq += 1;
        let t0 = Instant::now();
        let r = dap.request(&set_bps(seq, &path, bps));
        (t0.elapsed().as_secs_f64() * 1e3, r)
    };
    let _ = set(
        &mut dap,
        json!([{"line": line, "logMessage": "DETRICS:m={o->id}"}]),
    );
    let _ = set(&mut dap, json!([]));
    // Replacing: each request comes right after the removal of the previous logpoint, whose
    // uprobe the kernel is still unregistering (~100 ms, one at a time) — then with a pause
    // longer than that first.
    for (label, pause) in [
        ("right after a removal", Duration::ZERO),
        ("nothing being removed", Duration::from_millis(300)),
    ] {
        let mut live = Vec::new();
        for _ in 0..REPEAT {
            std::thread::sleep(pause);
            let (ms, r) = set(
                &mut dap,
                json!([{"line": line, "logMessage": "DETRICS:m={o->id}"}]),
            );
            if r["body"]["breakpoints"][0]["verified"] != json!(true) {
                return Err(format!("setBreakpoints refused: {r}"));
            }
            live.push(ms);
            let _ = set(&mut dap, json!([]));
        }
        rows.push((
            format!("setBreakpoints → probe live, warm, {label} (median of {REPEAT})"),
            format!("{:.1} ms (goal ≤ 50 ms)", median(live)),
        ));
    }
    drop(dap);

    // Attach time of 1, 100, 1000 probes on one target, and the sleep that removes them.
    let links = {
        let (_, m) = common::http("GET", &format!("{}/metrics", serve.control), None);
        m.lines()
            .find_map(|l| {
                l.strip_prefix("detrix_uprobe_link_kind{kind=\"")
                    .and_then(|r| r.split('"').next())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let many = Fixture::start(&lines_exe, &[]);
    let mid = target_id(&serve, many.pid());
    wake_retrying(&serve, &mid)?;
    let (_, mut dap) = stub.take_session();
    let lpath = lines_src.display().to_string();
    let text = std::fs::read_to_string(&lines_src).map_err(|e| e.to_string())?;
    let line_of = |i: usize| {
        text.lines()
            .position(|l| l.ends_with(&format!("/* L{i} */")))
            .map_or(0, |p| p + 1)
    };
    for n in [1usize, 100, 1000] {
        let bps: Vec<Value> = (0..n)
            .map(|i| json!({"line": line_of(i), "logMessage": format!("DETRICS:l{i}={{sink}}")}))
            .collect();
        seq += 1;
        let t0 = Instant::now();
        let Some(r) = dap.request_within(&set_bps(seq, &lpath, json!(bps)), ATTACH_TIMEOUT) else {
            return Err(format!(
                "setBreakpoints with {n} probes unanswered after {ATTACH_TIMEOUT:?}"
            ));
        };
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let verified = r["body"]["breakpoints"].as_array().map_or(0, |b| {
            b.iter().filter(|x| x["verified"] == json!(true)).count()
        });
        let refused = r["body"]["breakpoints"]
            .as_array()
            .and_then(|b| b.iter().find(|x| x["verified"] != json!(true)))
            .and_then(|x| x["message"].as_str())
            .map(|m| format!("; the rest refused: {m}"))
            .unwrap_or_default();
        rows.push((
            format!("attach {n} probes on one target (one setBreakpoints)"),
            format!("{ms:.0} ms, {verified} attached{refused}"),
        ));
        // Remove them by sleeping the target: its answer comes once the kernel has unregistered
        // every uprobe (the target's text is clean). Then awake again for the next row.
        let t0 = Instant::now();
        let (st, w) = serve.post(&format!("/detrix/targets/{mid}/sleep"), None);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if st != 200 {
            return Err(format!("sleep {mid}: {st} {w}"));
        }
        rows.push((
            format!("sleep with {n} probes attached: every uprobe gone"),
            format!("{ms:.0} ms ({verified} removed; {links} links)"),
        ));
        wake_retrying(&serve, &mid)?;
        dap = stub.take_session().1;
    }
    drop(dap);
    drop(many);

    // Per-hit cost: bench_loop with a probe, with BUSY - 1 other targets probed, then alone.
    // The others are woken and probed first: the probed loop floods its session with events,
    // and on a small machine the emulator then answers health checks late.
    let mut others = Vec::new();
    for id in ids.iter().skip(REPEAT).take(BUSY - 1) {
        wake_retrying(&serve, id)?;
        let (_, mut d) = stub.take_session();
        seq += 1;
        d.request(&set_bps(
            seq,
            &path,
            json!([{"line": line, "logMessage": "DETRICS:m={o->id}"}]),
        ));
        others.push(d);
    }
    let lp = Loop::start(&looper);
    let lid = target_id(&serve, lp.child.id());
    wake_retrying(&serve, &lid)?;
    let (_, mut ldap) = stub.take_session();
    let base = lp.ns_per_call(5);
    let lsrc = detrix_e2e::c_fixture_source("bench_loop");
    let lline = marker_line(&lsrc, "work");
    seq += 1;
    ldap.request(&set_bps(
        seq,
        &lsrc.display().to_string(),
        json!([{"line": lline, "logMessage": "DETRICS:i={i}"}]),
    ));
    let fifty = lp.ns_per_call(5) - base;
    for d in &mut others {
        seq += 1;
        d.request_within(&set_bps(seq, &path, json!([])), ATTACH_TIMEOUT);
    }
    let one = lp.ns_per_call(5) - base;
    rows.push((
        "per hit, 1 target probed (ns over no probe)".into(),
        format!("{one:.0} ns"),
    ));
    rows.push((
        format!("per hit, {BUSY} targets probed (ns over no probe)"),
        format!("{fifty:.0} ns ({:.2}× the one-target cost)", fifty / one),
    ));
    drop(others);
    drop(ldap);
    drop(lp);

    // The real daemon, when there is one: wake → registered.
    if let Some(bin) = std::env::var_os("DETRIX_BIN").filter(|v| !v.is_empty()) {
        let d = common::Daemon::start(
            Path::new(&bin),
            "serve-bench",
            &detrix_e2e::workspace_root(),
        );
        let real = Serve::start(
            &[
                "--select",
                &format!("exe={}", orders.display()),
                "--daemon-url",
                &d.url,
            ],
            &[],
        );
        let mut ms = Vec::new();
        for f in idle.iter().skip(REPEAT + BUSY).take(REPEAT) {
            let id = target_id(&real, f.pid());
            ms.push(wake(&real, &id)?);
        }
        rows.push((
            format!("wake → registered, real daemon (median of {REPEAT})"),
            format!("{:.1} ms (goal ≤ 100 ms)", median(ms)),
        ));
    } else {
        eprintln!("NOT RUN: serve_bench real-daemon wake: DETRIX_BIN unset");
    }
    drop(idle);
    drop(serve);
    for p in [&orders, &looper, &lines_exe] {
        let _ = std::fs::remove_file(p);
    }

    let rows = rows.0;
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    println!(
        "\nserve on one host ({} CPUs)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!("| {:w$} | result |\n|{}|---|", "row", "-".repeat(w + 2));
    for (k, v) in rows {
        println!("| {k:w$} | {v} |");
    }
    Ok(())
}
