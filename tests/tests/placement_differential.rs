//! Placement never changes a value: at every line of the C, C++, Rust and Go fixtures, every
//! local in scope captured twice — placement off (the line's first instruction) and on (an
//! emulated instruction of the block, proven to read the same values) — by two engines
//! attached to the same process at once, must give the same hits with equal values. The same
//! with no value at all (the `count` tests) checks the probes placed farthest — across calls
//! and through jumps — see exactly the hits the line's first instruction sees.
//!
//! So that both see exactly the same executions, the fixture is held at its first instruction
//! (`PTRACE_TRACEME`: stopped right after `exec`) until both engines have attached every line,
//! then runs a fixed number of rounds and exits. Hits are compared per line and per thread
//! (per goroutine for Go): the same count, and the same locals.

mod lang;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use detrix_agent::engine::{
    Counters, Engine, EngineOptions, HitReader, LogpointId, LogpointSpec, Resolver,
};
use detrix_e2e::require_root;
use lang::FixtureBuild;

/// Rounds the fixture runs once released, and the pause between them.
const ROUNDS: &str = "3";
/// Long enough that the test drains a round's events (every local at every line, both sides)
/// before the next round's fill a CPU's ring on a loaded machine.
const DELAY_MS: &str = "40";
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A fixture process stopped right after `exec`, released by [`Held::release`].
struct Held {
    pid: i32,
    released: bool,
}

impl Held {
    fn spawn(exe: &std::path::Path) -> Held {
        let mut cmd = Command::new(exe);
        cmd.args([ROUNDS, DELAY_MS])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::ptrace(
                    libc::PTRACE_TRACEME,
                    0,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let pid = i32::try_from(child.id()).expect("pid fits");
        // Reaped with waitpid below, not through `child`.
        std::mem::forget(child);
        let mut status = 0;
        // SAFETY: plain syscall on our own child.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        assert!(
            r == pid && libc::WIFSTOPPED(status),
            "{} did not stop at exec (status {status:#x})",
            exe.display()
        );
        Held {
            pid,
            released: false,
        }
    }

    fn release(&mut self) {
        // SAFETY: detaching our own traced, stopped child.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                self.pid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        assert_eq!(r, 0, "PTRACE_DETACH: {}", std::io::Error::last_os_error());
        self.released = true;
    }

    /// The exit status once the process has ended, or `None` while it runs.
    fn exited(&self) -> Option<i32> {
        let mut status = 0;
        // SAFETY: plain syscall on our own child.
        let r = unsafe { libc::waitpid(self.pid, &raw mut status, libc::WNOHANG) };
        (r == self.pid && libc::WIFEXITED(status)).then(|| libc::WEXITSTATUS(status))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            if !self.released {
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    self.pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                );
            }
            let mut status = 0;
            libc::waitpid(self.pid, &raw mut status, libc::WNOHANG);
        }
    }
}

/// The locals of one hit, by name.
type Locals = Vec<(String, detrix_agent::decode::Node)>;

/// One side of the comparison: an engine with a logpoint on every line it accepts.
struct Side {
    engine: Engine,
    reader: HitReader,
    lines: HashMap<LogpointId, u32>,
    /// `(line, thread or goroutine)` → the locals of each hit, in order.
    hits: BTreeMap<(u32, u64), Vec<Locals>>,
    /// Lines whose probe moved, from `--explain`'s verdict.
    moved: usize,
    /// Lines with a copy whose probe went on the branches into its block (`Placement::edges`),
    /// each with how many of those branches are conditional.
    on_edges: BTreeMap<u32, usize>,
}

impl Side {
    /// With `strip_guards`, every conditional branch probe counts every pass: the gate that
    /// counts how often the branches run (see `differential`).
    fn attach(
        pid: u32,
        file: &str,
        last_line: u32,
        placement: bool,
        locals: bool,
        strip_guards: bool,
    ) -> Side {
        let opts = EngineOptions {
            placement,
            rate_per_sec: 0,
            burst: 0,
            ..EngineOptions::default()
        };
        let resolver = Resolver::open(pid, opts).expect("open the fixture process");
        let (mut engine, reader) = Engine::start(resolver).expect("load the eBPF program");
        let mut lines = HashMap::new();
        let mut moved = 0;
        let mut on_edges = BTreeMap::new();
        for line in 1..=last_line {
            let spec = LogpointSpec {
                line,
                capture_locals: locals,
                ..LogpointSpec::default()
            };
            let Ok(mut copies) = engine.resolver().prepare(file, &spec) else {
                continue;
            };
            if strip_guards {
                for site in copies.iter_mut().flat_map(|c| c.sites.iter_mut()) {
                    site.cc = None;
                }
            }
            moved += copies
                .iter()
                .filter(|c| {
                    c.placement
                        .explain
                        .iter()
                        .any(|l| l.starts_with("chose ") && l.contains("proven the same"))
                })
                .count();
            for c in copies.iter().filter(|c| !c.sites.is_empty()) {
                *on_edges.entry(line).or_default() +=
                    c.sites.iter().filter(|s| s.cc.is_some()).count();
            }
            let id = engine
                .install(file, line, copies)
                .unwrap_or_else(|e| panic!("attach {file}:{line}: {e}"));
            lines.insert(id, line);
        }
        Side {
            engine,
            reader,
            lines,
            hits: BTreeMap::new(),
            moved,
            on_edges,
        }
    }

    fn drain(&mut self) {
        for h in self.reader.drain_now() {
            let line = self.lines[&h.logpoint];
            let who = if h.goid != 0 {
                h.goid
            } else {
                u64::from(h.tid)
            };
            let locals = h
                .locals
                .into_iter()
                .map(|(n, v)| (n, same_fault(v)))
                .collect();
            self.hits.entry((line, who)).or_default().push(locals);
        }
    }
}

/// A read fault's sentence names the plan step that faulted (`step 15 of the plan (`…`)`);
/// the two sides may read a value in different steps (coalesced or not, per placement), so
/// only the address and the reason are compared.
fn same_fault(v: detrix_agent::decode::Node) -> detrix_agent::decode::Node {
    use detrix_agent::decode::Node;
    match v {
        Node::Error(mut s) => {
            if let Some(i) = s.find("step ") {
                if let Some(j) = s[i..].find(" faulted at") {
                    s.replace_range(i..i + j, "a step of the plan");
                }
            }
            Node::Error(s)
        }
        other => other,
    }
}

/// Hits in a fixed order (by their text).
fn sorted(v: &[Locals]) -> Vec<(String, &Locals)> {
    let mut t: Vec<(String, &Locals)> = v.iter().map(|x| (format!("{x:?}"), x)).collect();
    t.sort_by(|p, q| p.0.cmp(&q.0));
    t
}

/// With `locals`, every local in scope at every line; without, no value at all (the most
/// freedom placement ever has: a probe may move across calls and jumps its block spans, and
/// only the hit counts are compared).
fn differential(build: FixtureBuild, locals: bool) {
    require_root();
    let exe = build.build();
    let source = std::fs::read_to_string(build.source()).expect("read the fixture source");
    let last_line = u32::try_from(source.lines().count()).expect("line count fits");
    let mut held = Held::spawn(&exe);
    let pid = u32::try_from(held.pid).expect("pid fits");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _enter = rt.enter();
    let mut off = Side::attach(pid, build.file, last_line, false, locals, false);
    let mut on = Side::attach(pid, build.file, last_line, true, locals, false);
    // The same probes as `on`, their branch conditions stripped: each counts every pass of
    // its branches, which `on` must count exactly once each — as a hit or as `other_way`.
    let mut gate = Side::attach(pid, build.file, last_line, true, locals, true);
    let mut off_lines: Vec<u32> = off.lines.values().copied().collect();
    let mut on_lines: Vec<u32> = on.lines.values().copied().collect();
    off_lines.sort_unstable();
    on_lines.sort_unstable();
    assert_eq!(
        off_lines, on_lines,
        "{}: the two sides attached different lines",
        build.id
    );
    held.release();
    let start = Instant::now();
    let status = loop {
        off.drain();
        on.drain();
        gate.drain();
        if let Some(s) = held.exited() {
            break s;
        }
        assert!(
            start.elapsed() < RUN_TIMEOUT,
            "{}: the fixture did not finish its rounds",
            build.id
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status, 0, "{}: the fixture failed", build.id);
    // What the fixture wrote just before it exited is read before the probes go (a removed
    // probe's records are no longer decoded).
    off.drain();
    on.drain();
    gate.drain();
    let mut counted: [BTreeMap<u32, Counters>; 3] = Default::default();
    for (side, counted) in [&mut off, &mut on, &mut gate].into_iter().zip(&mut counted) {
        let ids: Vec<LogpointId> = side.lines.keys().copied().collect();
        for id in ids {
            let c = side.engine.remove(id).ok().flatten().unwrap_or_default();
            assert_eq!(
                c.dropped_ring_full, 0,
                "{}: events lost to a full ring",
                build.id
            );
            counted.entry(side.lines[&id]).or_default().add(&c);
        }
        side.drain();
    }
    // Every pass of a branch probe is counted once: a hit when it goes into the block, else
    // `other_way` (a trap the CPU breaker weighs). The gate counts every pass as a hit.
    let [_, on_counted, gate_counted] = &counted;
    let mut other_way = 0;
    for (line, c) in on_counted {
        let g = &gate_counted[line];
        assert_eq!(
            c.hits + c.other_way,
            g.hits,
            "{}:{line}: {} hits + {} passes the other way, but its branches ran {} times",
            build.file,
            c.hits,
            c.other_way,
            g.hits
        );
        assert_eq!(
            g.other_way, 0,
            "{}:{line}: the gate has no conditions",
            build.file
        );
        other_way += c.other_way;
    }
    let keys: Vec<&(u32, u64)> = off.hits.keys().collect();
    assert_eq!(
        keys,
        on.hits.keys().collect::<Vec<_>>(),
        "{}: the two sides saw hits on different lines or threads",
        build.id
    );
    let (mut hits, mut values) = (0, 0);
    for (key, a) in &off.hits {
        let b = &on.hits[key];
        assert_eq!(
            a.len(),
            b.len(),
            "{}:{} ({:?}): placement off saw {} hits, on {}",
            build.file,
            key.0,
            key.1,
            a.len(),
            b.len()
        );
        // A line with several copies (inlined) has one probe per copy in the same execution;
        // moving one of them may change the order of the two, so compare in a fixed order.
        let (sa, sb) = (sorted(a), sorted(b));
        for (n, ((_, x), (_, y))) in sa.iter().zip(&sb).enumerate() {
            assert_eq!(
                x, y,
                "{}:{}: hit {n} (in sorted order): the locals differ with placement off (left) and on (right)",
                build.file, key.0
            );
            hits += 1;
            values += x.len();
        }
    }
    let lines_hit: std::collections::BTreeSet<u32> = off.hits.keys().map(|k| k.0).collect();
    assert!(
        lines_hit.len() >= 10,
        "{}: only {} lines were hit; the comparison proves little",
        build.id,
        lines_hit.len()
    );
    // Hits on lines probed on the branches into their block, where one of those branches is
    // conditional: each counts only when its condition holds (the program reads the flags).
    let guarded_hits: usize = off
        .hits
        .iter()
        .filter(|((line, _), _)| on.on_edges.get(line).is_some_and(|&n| n > 0))
        .map(|(_, v)| v.len())
        .sum();
    eprintln!(
        "{}: {hits} hits, {values} values equal on {} lines ({} probe points placed elsewhere; lines on branches into their block: {:?}, {guarded_hits} hits through a conditional one, {other_way} passes the other way)",
        build.id,
        lines_hit.len(),
        on.moved,
        on.on_edges,
    );
    if build.id == lang::RUST_O3.id {
        // The build whose blocks most often have nothing emulated: the comparison above covers
        // probes on conditional branches only if one of them was hit.
        assert!(
            guarded_hits > 0,
            "{}: no line probed on a conditional branch into its block was hit ({:?})",
            build.id,
            on.on_edges
        );
        assert!(
            other_way > 0,
            "{}: no branch probe went the other way: the count of those passes went untested",
            build.id
        );
    }
}

#[test]
fn placement_never_changes_a_value_c_o0() {
    differential(lang::C_O0, true);
}

#[test]
fn placement_never_changes_a_value_c_o2() {
    differential(lang::C_O2, true);
}

#[test]
fn placement_never_changes_a_value_cpp_o2() {
    differential(lang::CPP_O2, true);
}

#[test]
fn placement_never_changes_a_value_rust_debug() {
    differential(lang::RUST_DEBUG, true);
}

#[test]
fn placement_never_changes_a_value_rust_o3() {
    differential(lang::RUST_O3, true);
}

#[test]
fn placement_never_changes_a_value_go_nl() {
    differential(lang::GO123_NL, true);
}

#[test]
fn placement_never_changes_a_value_go_opt() {
    differential(lang::GO123_OPT, true);
}

#[test]
fn placement_never_changes_a_value_c_optimized_o2() {
    differential(lang::C_OPTIMIZED_O2, true);
}

/// No value at all: the probes move farthest (across calls whose unwinding cannot land in the
/// function and through jumps to code only they reach), and the hit counts must still agree.
#[test]
fn placement_never_changes_a_count_rust_debug() {
    differential(lang::RUST_DEBUG, false);
}

#[test]
fn placement_never_changes_a_count_rust_o3() {
    differential(lang::RUST_O3, false);
}

#[test]
fn placement_never_changes_a_count_cpp_o2() {
    differential(lang::CPP_O2, false);
}
