//! `cargo xtask bench`: what a hit costs the target, in one run, as ratios to baselines
//! measured in the same run on the same instruction.
//!
//! The fixture (`tests/fixtures/c/bench_loop.c`) reports mean ns per call of `work()` over
//! 0.2 s windows; a probe's per-hit cost is the difference to the never-attached baseline.
//! Rows: no probe; empty BPF program on the line's first instruction (single-stepped: the
//! floor); the agent's 1-int capture there reading `v`'s stack slot and reading the register
//! that holds a copy of it (forwarding, `forward.rs`), and its string capture; the empty
//! program and the 1-int capture (slot, then register) on the emulated instruction placement
//! picks; wakeup per event vs batched; after detaching (asleep); and the same logpoint through
//! lldb-dap. Then sustained throughput with exact loss accounting and the user-space decode
//! rate. The headline ratio (agent 1-int / empty program on the emulated instruction) is also
//! measured alternated, the two attached in turn for a few rounds, so the machine's drift
//! between rows does not count as either's cost.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use detrix_agent::capture::{self, Format, Request};
use detrix_agent::decode::decode;
use detrix_agent::plan::{self, ValueDecoder};
use detrix_agent::probe::{self, AttachSpec, LoadOptions, Probes};
use detrix_agent::render::debugger;

const WINDOW_S: &str = "0.2";
const SAMPLES: usize = 5;

/// Windows per row: `DETRIX_BENCH_SAMPLES` (odd counts give a true median), else [`SAMPLES`].
/// More windows steady the rows when comparing two builds of the eBPF program a few percent
/// apart; the default keeps `cargo xtask bench` short.
fn samples() -> usize {
    count_from_env("DETRIX_BENCH_SAMPLES", SAMPLES)
}

/// A positive count from environment variable `var`, else `default`.
fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Rounds of the paired measurement (`DETRIX_BENCH_PAIRS`, default 5): the empty program, the
/// agent's 1-int capture and the handoff at the placed instruction, alternated,
/// [`PAIR_WINDOWS`] windows each per round. Rows measured one after the other drift with the machine (the floor alone
/// moved 390 → 428 ns/hit between runs here); alternating puts both sides in the same minutes.
fn pairs() -> usize {
    count_from_env("DETRIX_BENCH_PAIRS", 5)
}

/// Windows per side per round of the paired measurement.
const PAIR_WINDOWS: usize = 3;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn build_fixture() -> Result<PathBuf> {
    let src = workspace().join("tests/fixtures/c/bench_loop.c");
    let out_dir = workspace().join("target/fixtures");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join("bench_loop_O0");
    let st = Command::new("gcc")
        .args(["-g", "-O0", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .context("run gcc")?;
    if !st.success() {
        bail!("gcc failed on {}", src.display());
    }
    Ok(out)
}

fn marker_line(marker: &str) -> Result<u32> {
    let src = std::fs::read_to_string(workspace().join("tests/fixtures/c/bench_loop.c"))?;
    let idx = src
        .lines()
        .position(|l| l.contains(marker))
        .with_context(|| format!("marker {marker}"))?;
    Ok(idx as u32 + 1)
}

struct Fixture {
    child: Child,
    samples: Receiver<f64>,
}

impl Fixture {
    fn start(bin: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg(WINDOW_S)
            .stdout(Stdio::piped())
            .spawn()
            .context("start fixture")?;
        let stdout = child.stdout.take().context("fixture stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(v) = line
                    .strip_prefix("ns_per_call=")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok())
                {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Self { child, samples: rx })
    }

    /// Median ns/call over [`samples`] fresh windows (one window discarded as a transition).
    fn measure(&self) -> Result<f64> {
        Ok(median(self.windows(samples())?))
    }

    /// ns/call of `n` fresh windows (one window discarded as a transition).
    fn windows(&self, n: usize) -> Result<Vec<f64>> {
        while self.samples.try_recv().is_ok() {}
        self.samples
            .recv_timeout(Duration::from_secs(15))
            .context("fixture stopped reporting")?;
        (0..n)
            .map(|_| self.samples.recv_timeout(Duration::from_secs(15)))
            .collect::<Result<_, _>>()
            .context("fixture stopped reporting")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drains the ring on its own thread, decoding every record, as the agent does.
struct Drain {
    stop: Arc<AtomicBool>,
    events: Arc<AtomicU64>,
    decode_ns: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<probe::EventRings>>,
}

impl Drain {
    fn start(mut ring: probe::EventRings, decoders: Vec<ValueDecoder>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        let decode_ns = Arc::new(AtomicU64::new(0));
        let (s, e, d) = (stop.clone(), events.clone(), decode_ns.clone());
        let handle = std::thread::spawn(move || {
            use std::os::fd::AsRawFd as _;
            let fd = ring.as_raw_fd();
            while !s.load(Ordering::Relaxed) {
                // As the agent does: sleep until a wakeup or the 10 ms flush timer.
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&raw mut pfd, 1, 10) };
                let t = Instant::now();
                let mut n = 0u64;
                while ring
                    .drain(4096, |item| {
                        if let Some((h, data)) = probe::parse_record(item) {
                            // Decoded and rendered as the engine does for the daemon.
                            let values: Vec<_> =
                                decode(&decoders, &h, data).iter().map(debugger).collect();
                            std::hint::black_box(values);
                            n += 1;
                        }
                    })
                    .handed
                    > 0
                {}
                if n > 0 {
                    e.fetch_add(n, Ordering::Relaxed);
                    d.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            }
            ring
        });
        Self {
            stop,
            events,
            decode_ns,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> probe::EventRings {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .expect("drain thread")
    }
}

fn request(pid: u32, line: u32, expr: &str, placement: bool, forwarding: bool) -> Request {
    Request {
        pid,
        file: "bench_loop.c".into(),
        line,
        exprs: vec![expr.into()],
        count: None,
        format: Format::Json,
        string_cap: 64,
        elem_cap: detrix_agent::plan::DEFAULT_ELEM_CAP,
        when: None,
        rate_per_sec: 0,
        burst: 0,
        cpu_budget: 1.0,
        placement,
        forwarding,
        stack: false,
        locals: false,
        ebpf_log: false,
    }
}

struct Row {
    name: String,
    ns_per_call: f64,
    note: String,
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench: needs root (CAP_BPF/CAP_PERFMON) to attach uprobes");
    }
    // `DETRIX_BENCH_QUICK=1`: only the agent and its floors, for iterating on the eBPF program.
    let quick = std::env::var_os("DETRIX_BENCH_QUICK").is_some_and(|v| v == "1");
    let bin = build_fixture()?;
    let line = marker_line("/* PROBE:work */")?;
    let fx = Fixture::start(&bin)?;
    let pid = fx.pid();
    std::thread::sleep(Duration::from_millis(300));
    let mut rows: Vec<Row> = Vec::new();

    let base = fx.measure()?;
    rows.push(Row {
        name: "no probe (never attached)".into(),
        ns_per_call: base,
        note: String::new(),
    });

    let first_mem = capture::prepare(&request(pid, line, "v", false, false))?;
    let first = capture::prepare(&request(pid, line, "v", false, true))?;
    let placed_mem = capture::prepare(&request(pid, line, "v", true, false))?;
    let placed = capture::prepare(&request(pid, line, "v", true, true))?;
    let string = capture::prepare(&request(pid, line, "name", false, true))?;
    let (_, fmplan, _) = first_mem.plans().next().context("no probe point")?;
    let (fp, fplan, fpl) = first.plans().next().context("no probe point")?;
    let (_, pmplan, _) = placed_mem.plans().next().context("no probe point")?;
    let (pp, pplan, ppl) = placed.plans().next().context("no probe point")?;
    let (_, splan, _) = string.plans().next().context("no probe point")?;
    let exe = first.target().exe.clone();
    let at = |offset| AttachSpec {
        binary: &exe,
        offset,
        pid,
        edges: &[],
    };
    eprintln!(
        "bench: line {line}: first instruction {} ({:?}), placed at {} ({:?})",
        fp.addr, fpl.kind, pp.addr, ppl.kind
    );

    let (mut probes, ring) = Probes::load(LoadOptions::default())?;
    eprintln!(
        "bench: probes are {}",
        if probes.multi_links() {
            "uprobe_multi links"
        } else {
            "perf events"
        }
    );
    let mut ring = Some(ring);
    probes.install_noop(&at(fp.file_offset))?;
    rows.push(Row {
        name: format!("empty BPF program @ {} ({:?}) = floor", fp.addr, fpl.kind),
        ns_per_call: fx.measure()?,
        note: String::new(),
    });
    probes.remove_noops()?;
    let ctx = Ctx {
        fx: &fx,
        exe: &exe,
        pid,
    };
    rows.push(ctx.capture(
        &mut probes,
        &mut ring,
        fmplan,
        fp.file_offset,
        &format!("agent 1-int (v) @ {} placement off, memory read", fp.addr),
    )?);
    rows.push(ctx.capture(
        &mut probes,
        &mut ring,
        fplan,
        fp.file_offset,
        &format!("agent 1-int (v) @ {} placement off, forwarded", fp.addr),
    )?);
    rows.push(ctx.capture(
        &mut probes,
        &mut ring,
        splan,
        fp.file_offset,
        &format!("agent string (name) @ {} placement off", fp.addr),
    )?);
    probes.install_noop(&at(pp.file_offset))?;
    rows.push(Row {
        name: format!(
            "empty BPF program @ {} ({:?}) = placed floor",
            pp.addr, ppl.kind
        ),
        ns_per_call: fx.measure()?,
        note: String::new(),
    });
    probes.remove_noops()?;
    rows.push(ctx.capture(
        &mut probes,
        &mut ring,
        pmplan,
        pp.file_offset,
        &format!("agent 1-int (v) @ {} placement on, memory read", pp.addr),
    )?);
    rows.push(ctx.capture(
        &mut probes,
        &mut ring,
        pplan,
        pp.file_offset,
        &format!("agent 1-int (v) @ {} placement on, forwarded", pp.addr),
    )?);
    // The handoff program, alternated with the two: the same plan's value into the same ring,
    // drained the same way, without the capture's bookkeeping (`detrix_handoff`).
    let (mut handoff, hring) = Probes::load(LoadOptions {
        handoff: true,
        ..LoadOptions::default()
    })?;
    let mut hring = Some(hring);
    let (mut floor_w, mut agent_w, mut handoff_w) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..pairs() {
        probes.install_noop(&at(pp.file_offset))?;
        floor_w.extend(fx.windows(PAIR_WINDOWS)?);
        probes.remove_noops()?;
        let (_, w) =
            ctx.capture_windows(&mut probes, &mut ring, pplan, pp.file_offset, PAIR_WINDOWS)?;
        agent_w.extend(w);
        let (got, w) = ctx.capture_windows(
            &mut handoff,
            &mut hring,
            pplan,
            pp.file_offset,
            PAIR_WINDOWS,
        )?;
        // It counts nothing itself: what the drain decoded shows it ran.
        if got.drained.0 == 0 {
            bail!("the handoff program delivered no event");
        }
        handoff_w.extend(w);
    }
    drop(handoff);
    let paired = (median(floor_w), median(agent_w), median(handoff_w));
    drop(probes);
    {
        let (mut eager, ring2) = Probes::load(LoadOptions {
            wakeup_bytes: 0,
            ..LoadOptions::default()
        })?;
        let mut ring2 = Some(ring2);
        rows.push(ctx.capture(
            &mut eager,
            &mut ring2,
            pplan,
            pp.file_offset,
            &format!(
                "agent 1-int (v) @ {} placement on, wakeup per event",
                pp.addr
            ),
        )?);
    }
    // The placed probe again as a perf event, the kernel's older kind of uprobe link (what the
    // agent falls back to without uprobe_multi), with its own floor: the two kinds side by side.
    let perf_rows = {
        std::env::set_var(detrix_agent::probe::LINKS_ENV, "perf");
        let loaded = Probes::load(LoadOptions::default());
        std::env::remove_var(detrix_agent::probe::LINKS_ENV);
        let (mut perf, ring3) = loaded?;
        let mut ring3 = Some(ring3);
        perf.install_noop(&at(pp.file_offset))?;
        let floor = Row {
            name: format!("empty BPF program @ {} as a perf-event link", pp.addr),
            ns_per_call: fx.measure()?,
            note: String::new(),
        };
        perf.remove_noops()?;
        let agent = ctx.capture(
            &mut perf,
            &mut ring3,
            pplan,
            pp.file_offset,
            &format!(
                "agent 1-int (v) @ {} placed, forwarded, perf-event link",
                pp.addr
            ),
        )?;
        [floor, agent]
    };
    rows.extend(perf_rows);
    let asleep = fx.measure()?;
    rows.push(Row {
        name: "asleep (all probes detached)".into(),
        ns_per_call: asleep,
        note: format!("ratio to never attached {:.3}", asleep / base),
    });

    let lldb = if quick {
        Err(anyhow::anyhow!("skipped (DETRIX_BENCH_QUICK=1)"))
    } else {
        lldb_logpoint(
            pid,
            &workspace().join("tests/fixtures/c/bench_loop.c"),
            line,
            &fx,
        )
    };
    match lldb {
        Ok(ns) => rows.push(Row {
            name: "lldb-dap-22 logpoint {v} (C)".into(),
            ns_per_call: ns,
            note: String::new(),
        }),
        Err(e) => rows.push(Row {
            name: "lldb-dap-22 logpoint {v} (C)".into(),
            ns_per_call: f64::NAN,
            note: format!("not measured: {e:#}"),
        }),
    }

    drop(fx);
    let go_rows = if quick {
        Err(anyhow::anyhow!("skipped (DETRIX_BENCH_QUICK=1)"))
    } else {
        go_section()
    };
    let go_rows = go_rows.unwrap_or_else(|e| {
        vec![Row {
            name: "Go section".into(),
            ns_per_call: f64::NAN,
            note: format!("not measured: {e:#}"),
        }]
    });

    let floor = rows[1].ns_per_call - base;
    let placed_floor = rows[5].ns_per_call - base;
    println!(
        "\nper-hit cost on {} (fixture {}, {} windows of {WINDOW_S} s per row, median)\n",
        line_desc(line),
        bin.display(),
        samples()
    );
    println!(
        "{:<62} {:>11} {:>11} {:>9} {:>9}",
        "probe", "ns/call", "ns/hit", "x floor", "x placed"
    );
    for r in &rows {
        let hit = r.ns_per_call - base;
        let show = |den: f64| {
            if hit.is_finite() && den > 0.0 {
                format!("{:.2}", hit / den)
            } else {
                "-".into()
            }
        };
        println!(
            "{:<62} {:>11.1} {:>11.1} {:>9} {:>9}  {}",
            r.name,
            r.ns_per_call,
            hit,
            show(floor),
            show(placed_floor),
            r.note
        );
    }
    let agent_first_mem = rows[2].ns_per_call - base;
    let agent_first = rows[3].ns_per_call - base;
    let agent_placed_mem = rows[6].ns_per_call - base;
    let agent_placed = rows[7].ns_per_call - base;
    if let Some(l) = rows
        .iter()
        .find(|r| r.name.starts_with("lldb"))
        .filter(|r| r.ns_per_call.is_finite())
    {
        let dbg = l.ns_per_call - base;
        println!("\ndebugger logpoint / agent 1-int: {:.0}x on the single-stepped instruction, {:.0}x with placement", dbg / agent_first, dbg / agent_placed);
    }
    println!(
        "agent 1-int / floor on the same instruction: {:.2}x (single-stepped), {:.2}x (emulated); reading the stack slot instead of the register: {:.2}x, {:.2}x",
        agent_first / floor,
        agent_placed / placed_floor,
        agent_first_mem / floor,
        agent_placed_mem / placed_floor
    );
    let (pf, pa) = (paired.0 - base, paired.1 - base);
    println!(
        "agent 1-int / floor on the emulated instruction, alternated ({} rounds of {PAIR_WINDOWS} windows each): {:.1} / {:.1} ns/hit = {:.2}x",
        pairs(),
        pa,
        pf,
        pa / pf
    );
    let ph = paired.2 - base;
    println!(
        "handoff (the plan's value into the ring and nothing else) / floor, same rounds: {:.1} / {:.1} ns/hit = {:.2}x; agent / handoff {:.2}x",
        ph,
        pf,
        ph / pf,
        pa / ph
    );
    if let Some(kind) = rows
        .iter()
        .position(|r| r.name.contains("as a perf-event link"))
    {
        let (pf, pa) = (
            rows[kind].ns_per_call - base,
            rows[kind + 1].ns_per_call - base,
        );
        println!(
            "uprobe_multi / perf-event link, placed: floor {:.2}x, agent 1-int {:.2}x; agent / floor as perf events {:.2}x",
            placed_floor / pf,
            agent_placed / pa,
            pa / pf
        );
    }

    if let [g_base, g_floor, g_agent, rest @ ..] = go_rows.as_slice() {
        let gb = g_base.ns_per_call;
        let gf = g_floor.ns_per_call - gb;
        println!("\nGo (Go 1.19, -N -l; work() line is single-stepped)\n");
        println!(
            "{:<62} {:>11} {:>11} {:>9}",
            "probe", "ns/call", "ns/hit", "x floor"
        );
        for r in [g_base, g_floor, g_agent].into_iter().chain(rest) {
            let hit = r.ns_per_call - gb;
            let x = if hit.is_finite() && gf > 0.0 {
                format!("{:.2}", hit / gf)
            } else {
                "-".into()
            };
            println!(
                "{:<62} {:>11.1} {:>11.1} {:>9}  {}",
                r.name, r.ns_per_call, hit, x, r.note
            );
        }
        if let Some(d) = rest
            .iter()
            .find(|r| r.name.starts_with("Delve") && r.ns_per_call.is_finite())
        {
            println!(
                "\nDelve logpoint / agent 1-int (Go): {:.0}x",
                (d.ns_per_call - gb) / (g_agent.ns_per_call - gb)
            );
        }
    } else {
        for r in &go_rows {
            println!("{}: {}", r.name, r.note);
        }
    }
    Ok(())
}

/// Go: no probe, the empty-program floor, the agent's 1-int logpoint, and Delve's logpoint,
/// on a Go 1.19 loop.
fn go_section() -> Result<Vec<Row>> {
    let dir = workspace().join("tests/fixtures/go_bench");
    let out = workspace().join("target/fixtures/go_bench_119");
    std::fs::create_dir_all(workspace().join("target/fixtures"))?;
    let st = Command::new("go")
        .current_dir(&dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .args(["build", "-gcflags=all=-N -l", "-o"])
        .arg(&out)
        .arg(".")
        .status()
        .context("run go build")?;
    if !st.success() {
        bail!("go build failed in {}", dir.display());
    }
    let src = dir.join("main.go");
    let line = std::fs::read_to_string(&src)?
        .lines()
        .position(|l| l.contains("// PROBE:work"))
        .context("marker")? as u32
        + 1;
    let fx = Fixture::start(&out)?;
    let pid = fx.pid();
    std::thread::sleep(Duration::from_millis(300));
    let mut rows = Vec::new();
    rows.push(Row {
        name: "no probe (never attached)".into(),
        ns_per_call: fx.measure()?,
        note: String::new(),
    });
    let mut req = request(pid, line, "v", true, true);
    req.file = "main.go".into();
    let prepared = capture::prepare(&req)?;
    let (p, plan, pl) = prepared.plans().next().context("no probe point")?;
    let exe = prepared.target().exe.clone();
    let (mut probes, ring) = Probes::load(LoadOptions::default())?;
    let mut ring = Some(ring);
    probes.install_noop(&AttachSpec {
        binary: &exe,
        offset: p.file_offset,
        pid,
        edges: &[],
    })?;
    rows.push(Row {
        name: format!("empty BPF program @ {} ({:?}) = floor", p.addr, pl.kind),
        ns_per_call: fx.measure()?,
        note: String::new(),
    });
    probes.remove_noops()?;
    let ctx = Ctx {
        fx: &fx,
        exe: &exe,
        pid,
    };
    rows.push(ctx.capture(
        &mut probes,
        &mut ring,
        plan,
        p.file_offset,
        &format!("agent 1-int (v) @ {}", p.addr),
    )?);
    drop(probes);
    match delve_logpoint(pid, &src, line, &fx) {
        Ok(ns) => rows.push(Row {
            name: "Delve 1.20 logpoint {v} (Go)".into(),
            ns_per_call: ns,
            note: String::new(),
        }),
        Err(e) => rows.push(Row {
            name: "Delve 1.20 logpoint {v} (Go)".into(),
            ns_per_call: f64::NAN,
            note: format!("not measured: {e:#}"),
        }),
    }
    // The target must still be running (Delve has left targets in tracing stop before).
    let after = fx
        .measure()
        .map(|v| format!("target still running after Delve detached: {v:.1} ns/call"))
        .unwrap_or_else(|e| format!("TARGET STOPPED after Delve: {e:#}"));
    rows.push(Row {
        name: "after Delve detached".into(),
        ns_per_call: f64::NAN,
        note: after,
    });
    Ok(rows)
}

struct Ctx<'a> {
    fx: &'a Fixture,
    exe: &'a Path,
    pid: u32,
}

impl Ctx<'_> {
    /// Attaches one capture, measures, detaches, and reports its counters.
    fn capture(
        &self,
        probes: &mut Probes,
        ring: &mut Option<probe::EventRings>,
        plan: &plan::BuiltPlan,
        offset: detrix_agent::debuginfo::FileOffset,
        label: &str,
    ) -> Result<Row> {
        let t = Instant::now();
        let (c, w) = self.capture_windows(probes, ring, plan, offset, samples())?;
        let secs = t.elapsed().as_secs_f64();
        let (events, dns) = c.drained;
        let c = c.counters;
        let accounted = c.emitted
            + c.dropped_ring_full
            + c.rate_limited
            + c.condition_false
            + c.no_plan
            + c.other_process;
        Ok(Row {
            name: label.into(),
            ns_per_call: median(w),
            note: format!(
                "hits {} = emitted {} + dropped {} + other {}{}; {:.0} events/s; decode {:.0} ns/event; bpf {:.0} ns/hit",
                c.hits,
                c.emitted,
                c.dropped_ring_full,
                accounted - c.emitted - c.dropped_ring_full,
                if accounted == c.hits { "" } else { " (MISMATCH)" },
                c.emitted as f64 / secs,
                dns as f64 / events.max(1) as f64,
                c.bpf_ns as f64 / c.hits.max(1) as f64
            ),
        })
    }

    /// Attaches `plan` at `offset` with a draining thread, measures `n` windows,
    /// detaches; the probe's counters, what the drain saw, and the `n` windows.
    fn capture_windows(
        &self,
        probes: &mut Probes,
        ring: &mut Option<probe::EventRings>,
        plan: &plan::BuiltPlan,
        offset: detrix_agent::debuginfo::FileOffset,
        n: usize,
    ) -> Result<(Captured, Vec<f64>)> {
        let drain = Drain::start(ring.take().context("ring")?, plan.values.clone());
        let slot = probes.install(
            &plan.plan,
            &AttachSpec {
                binary: self.exe,
                offset,
                pid: self.pid,
                edges: &[],
            },
        )?;
        let w = self.fx.windows(n)?;
        // Detach first: a hit still in flight would show in `hits` but not yet in its outcome.
        probes.remove(slot)?;
        std::thread::sleep(Duration::from_millis(20));
        let counters = probes.counters(slot)?;
        let drained = (
            drain.events.load(Ordering::Relaxed),
            drain.decode_ns.load(Ordering::Relaxed),
        );
        *ring = Some(drain.finish());
        Ok((Captured { counters, drained }, w))
    }
}

/// What one capture phase counted: the probe's counters, and (events, decode ns) of the drain.
struct Captured {
    counters: detrix_common::Counters,
    drained: (u64, u64),
}

fn line_desc(line: u32) -> String {
    format!("bench_loop.c:{line}")
}

/// A minimal DAP client for lldb-dap over stdio: enough to set one logpoint, measure, and
/// detach safely (remove breakpoints, pause, then disconnect: lldb-dap can kill a running
/// target with SIGTRAP on detach, toolchain.md E14).
struct Dap {
    child: Child,
    writer: Box<dyn Write + Send>,
    seq: i64,
    frames: Receiver<serde_json::Value>,
    /// Frames received while waiting for another one: debuggers order events and responses
    /// differently (Delve sends `initialized` before its `attach` response).
    pending: std::cell::RefCell<Vec<serde_json::Value>>,
    outputs: Arc<AtomicU64>,
}

impl Drop for Dap {
    /// A debugger left behind would keep the target traced: never leave one running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dap {
    /// lldb-dap speaks DAP on stdio.
    fn spawn_lldb() -> Result<Self> {
        let mut child = Command::new("lldb-dap-22")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start lldb-dap-22")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        Ok(Self::over(child, Box::new(stdin), Box::new(stdout)))
    }

    /// Delve's DAP server listens on TCP and says where on stdout.
    fn spawn_delve() -> Result<Self> {
        let mut child = Command::new("dlv")
            .args(["dap", "--listen=127.0.0.1:0", "--check-go-version=false"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start dlv dap")?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let addr = line
            .rsplit(' ')
            .next()
            .map(str::trim)
            .filter(|a| a.contains(':'))
            .with_context(|| format!("dlv dap said: {line}"))?
            .to_owned();
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let sock = std::net::TcpStream::connect(&addr)
            .with_context(|| format!("connect to dlv at {addr}"))?;
        let reader = sock.try_clone()?;
        Ok(Self::over(child, Box::new(sock), Box::new(reader)))
    }

    fn over(child: Child, writer: Box<dyn Write + Send>, reader: Box<dyn Read + Send>) -> Self {
        let mut stdout = BufReader::new(reader);
        let (tx, rx) = mpsc::channel();
        let outputs = Arc::new(AtomicU64::new(0));
        let o = outputs.clone();
        std::thread::spawn(move || loop {
            let body = match detrix_e2e::read_dap_body(&mut stdout) {
                Ok(Some(body)) => body,
                Ok(None) => return,
                Err(_) => continue,
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                continue;
            };
            if v["event"] == "output" && v["body"]["category"] != "telemetry" {
                o.fetch_add(1, Ordering::Relaxed);
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
            pending: std::cell::RefCell::default(),
            outputs,
        }
    }

    fn send(&mut self, command: &str, arguments: serde_json::Value) -> Result<i64> {
        self.seq += 1;
        let mut msg = serde_json::json!({"seq": self.seq, "type": "request", "command": command});
        msg["arguments"] = arguments;
        self.writer
            .write_all(&detrix_agent::dap::codec::encode_frame(&msg))?;
        self.writer.flush()?;
        Ok(self.seq)
    }

    fn wait(
        &self,
        what: &dyn Fn(&serde_json::Value) -> bool,
        label: &str,
    ) -> Result<serde_json::Value> {
        let found = self.pending.borrow().iter().position(what);
        if let Some(i) = found {
            return Ok(self.pending.borrow_mut().remove(i));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .frames
                .recv_timeout(left)
                .with_context(|| format!("debugger: no {label}"))?;
            if what(&v) {
                return Ok(v);
            }
            self.pending.borrow_mut().push(v);
        }
    }

    fn response(&self, seq: i64, label: &str) -> Result<serde_json::Value> {
        let v = self.wait(
            &|v| v["type"] == "response" && v["request_seq"] == seq,
            label,
        )?;
        if v["success"] != true {
            bail!("debugger {label} failed: {}", v["message"]);
        }
        Ok(v)
    }
}

/// The same logpoint through Delve's DAP server (attached to the Go fixture), then a clean
/// detach that leaves the target running.
fn delve_logpoint(pid: u32, source: &Path, line: u32, fx: &Fixture) -> Result<f64> {
    let mut dap = Dap::spawn_delve()?;
    let s = dap.send("initialize", serde_json::json!({"adapterID": "go", "clientID": "detrix-bench", "linesStartAt1": true, "columnsStartAt1": true, "pathFormat": "path"}))?;
    dap.response(s, "initialize response")?;
    let s = dap.send(
        "attach",
        serde_json::json!({"mode": "local", "processId": pid, "stopOnEntry": false}),
    )?;
    dap.response(s, "attach response")?;
    dap.wait(&|v| v["event"] == "initialized", "initialized event")?;
    let s = dap.send("setBreakpoints", serde_json::json!({"source": {"path": source}, "breakpoints": [{"line": line, "logMessage": "{v}"}]}))?;
    let bp = dap.response(s, "setBreakpoints response")?;
    if bp["body"]["breakpoints"][0]["verified"] != true {
        bail!("Delve did not verify the logpoint: {}", bp["body"]);
    }
    let s = dap.send("configurationDone", serde_json::json!({}))?;
    let _ = dap.response(s, "configurationDone response");
    // Delve attaches stopped; run the target.
    let s = dap.send("continue", serde_json::json!({"threadId": 1}))?;
    let _ = dap.response(s, "continue response");
    let before = dap.outputs.load(Ordering::Relaxed);
    let ns = fx.measure();
    let hits = dap.outputs.load(Ordering::Relaxed) - before;
    let s = dap.send(
        "setBreakpoints",
        serde_json::json!({"source": {"path": source}, "breakpoints": []}),
    )?;
    dap.response(s, "clearing breakpoints")?;
    let s = dap.send(
        "disconnect",
        serde_json::json!({"terminateDebuggee": false}),
    )?;
    let _ = dap.response(s, "disconnect response");
    eprintln!("bench: Delve logged {hits} hits while measuring");
    if hits == 0 {
        bail!("Delve logged no hits");
    }
    ns
}

fn lldb_logpoint(pid: u32, source: &Path, line: u32, fx: &Fixture) -> Result<f64> {
    let mut dap = Dap::spawn_lldb()?;
    let s = dap.send("initialize", serde_json::json!({"adapterID": "lldb-dap", "clientID": "detrix-bench", "linesStartAt1": true, "columnsStartAt1": true, "pathFormat": "path"}))?;
    dap.response(s, "initialize response")?;
    let attach = dap.send("attach", serde_json::json!({"pid": pid}))?;
    dap.wait(&|v| v["event"] == "initialized", "initialized event")?;
    let s = dap.send("setBreakpoints", serde_json::json!({"source": {"path": source}, "breakpoints": [{"line": line, "logMessage": "{v}"}]}))?;
    let bp = dap.response(s, "setBreakpoints response")?;
    if bp["body"]["breakpoints"][0]["verified"] != true {
        bail!("lldb-dap did not verify the logpoint: {}", bp["body"]);
    }
    let s = dap.send("configurationDone", serde_json::json!({}))?;
    dap.response(s, "configurationDone response")?;
    dap.response(attach, "attach response")?;
    let before = dap.outputs.load(Ordering::Relaxed);
    let ns = fx.measure();
    let hits = dap.outputs.load(Ordering::Relaxed) - before;
    // Detach safely: no breakpoints, stopped, then disconnect without killing.
    let s = dap.send(
        "setBreakpoints",
        serde_json::json!({"source": {"path": source}, "breakpoints": []}),
    )?;
    dap.response(s, "clearing breakpoints")?;
    let s = dap.send("threads", serde_json::json!({}))?;
    let threads = dap.response(s, "threads response")?;
    let tid = threads["body"]["threads"][0]["id"]
        .as_i64()
        .unwrap_or(i64::from(pid));
    let s = dap.send("pause", serde_json::json!({"threadId": tid}))?;
    // A refused pause (lldb-dap answers success:false with no message when the process is
    // between states) only means the detach below is riskier; the measurement stands.
    if dap.response(s, "pause response").is_ok() {
        let _ = dap.wait(&|v| v["event"] == "stopped", "stopped event");
    } else {
        eprintln!("bench: lldb-dap refused pause before detach; disconnecting anyway");
    }
    let s = dap.send(
        "disconnect",
        serde_json::json!({"terminateDebuggee": false}),
    )?;
    let _ = dap.response(s, "disconnect response");
    eprintln!("bench: lldb-dap logged {hits} hits while measuring");
    if hits == 0 {
        bail!("lldb-dap logged no hits");
    }
    ns
}
