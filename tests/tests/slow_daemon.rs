//! A daemon that stops reading its DAP session while a hot logpoint fires (issue #12 point 6),
//! end to end: the real agent attached to the C `orders` fixture looping without a pause, the
//! daemon emulator's session paused (`Dap::pause_reading`, the socket left unread) until the
//! agent reports drops. Asserted: the agent's RSS stays under a stated bound over its RSS before
//! the pause, the target keeps running (its printed round advances), and every hit is accounted
//! for exactly from what `/detrix/status` reports — the engine's `hits` equal the `output`
//! events the peer got once it read again plus every drop (`dropped_ring_full` and the other
//! kernel-side counters of `probe_counters`, and the agent's bounded queue's `dropped_hits`).
//! The target is stopped (SIGSTOP) before the count is read, so the totals are final; no
//! timing is asserted beyond generous waits. The same hot logpoint under a tiny CPU budget
//! shows how the breaker's switch-off reaches the daemon (a `breakpoint` event).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{set_bps, AttachedAgent, Dap, RestStub, STEP_TIMEOUT};
use detrix_e2e::{
    build_c_fixture, c_fixture_source, fixtures_out_dir, marker_line, require_root, Build,
};
use serde_json::{json, Value};

const GO_GOLDEN: &str = "shared/go-delve.jsonl";
const RUST_GOLDEN: &str = "shared/rust-stub.jsonl";

/// How much the agent's RSS may grow over its RSS before the pause while nothing is read:
/// the queue holds at most `MAX_QUEUED_HITS` (16 384) hits of a few hundred bytes here.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

/// The `orders` fixture looping with no delay; only its last printed round is kept (its output
/// is hundreds of MiB over the test).
struct HotTarget {
    child: Child,
    round: Arc<AtomicI64>,
    copy: PathBuf,
}

impl HotTarget {
    /// `tag` names the private copy: each test of this binary has its own.
    fn start(tag: &str) -> HotTarget {
        let exe = build_c_fixture("orders", Build::Debug);
        // A private copy (its own inode): no other test's probes land in it.
        let copy = fixtures_out_dir().join(format!(".orders-{tag}-{}", std::process::id()));
        let st = Command::new("cp")
            .arg(&exe)
            .arg(&copy)
            .status()
            .expect("run cp");
        assert!(st.success(), "cp {} failed", exe.display());
        let mut child = Command::new(&copy)
            .args(["-1", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", copy.display()));
        let round = Arc::new(AtomicI64::new(-1));
        let (seen, out) = (round.clone(), child.stdout.take().expect("piped"));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ready pid=") {
                    let _ = ready_tx.send(line.clone());
                }
                if let Some(r) = line
                    .strip_prefix("process round=")
                    .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                {
                    seen.store(r, Ordering::Relaxed);
                }
            }
        });
        let ready = ready_rx
            .recv_timeout(STEP_TIMEOUT)
            .expect("the fixture prints `ready pid=`");
        assert_eq!(ready, format!("ready pid={}", child.id()));
        HotTarget { child, round, copy }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last round the target printed.
    fn round(&self) -> i64 {
        self.round.load(Ordering::Relaxed)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }
}

impl Drop for HotTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.copy);
    }
}

/// `VmRSS` of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

fn is_ours(e: &Value) -> bool {
    e["event"] == "output"
        && e["body"]["output"]
            .as_str()
            .is_some_and(|t| t.contains("DETRICS:slow="))
}

/// The round an `output` event carries.
fn event_round(e: &Value) -> i64 {
    let t = e["body"]["output"].as_str().unwrap_or_default();
    t.split_once("DETRICS:slow=")
        .and_then(|(_, v)| {
            let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("an output event without its round: {e}"))
}

/// Each hit reached the peer at most once, in the order the target made them; names the
/// first pair out of order.
fn assert_strictly_increasing(rounds: &[i64]) {
    if let Some(i) = rounds.windows(2).position(|w| w[0] >= w[1]) {
        let around = &rounds[i.saturating_sub(3)..(i + 5).min(rounds.len())];
        panic!(
            "delivered rounds strictly increase, but event {} (round {}) follows round {}: {around:?}",
            i + 1,
            rounds[i + 1],
            rounds[i]
        );
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a count: {v}"))
}

/// Every hit the status accounts for: (hits, every drop, the body).
fn accounting(agent: &AttachedAgent) -> (u64, u64, Value) {
    let (s, st) = agent.get("/detrix/status");
    assert_eq!(s, 200, "{st}");
    let c = &st["probe_counters"];
    let kernel_drops: u64 = [
        "dropped_ring_full",
        "rate_limited",
        "condition_false",
        "no_plan",
        "other_process",
    ]
    .iter()
    .map(|k| num(c, k))
    .sum();
    // Events the agent read after their probe was removed (handed to no session).
    let agent_drops: u64 = ["dropped_hits", "hits_after_remove"]
        .iter()
        .map(|k| st.get(*k).map_or(0, |_| num(&st, k)))
        .sum();
    (num(c, "hits"), kernel_drops + agent_drops, st)
}

/// An agent attached to `target` with no CPU breaker (a hot logpoint switched off would end
/// the test's load, not test it), registering with `stub` as `name`.
fn unbroken_agent(target: &HotTarget, stub: &RestStub, name: &str) -> AttachedAgent {
    AttachedAgent::start(
        target.pid(),
        &[
            "--daemon-url",
            &stub.url,
            "--name",
            name,
            "--language",
            "rust",
            "--cpu-budget",
            "0",
        ],
        &[],
    )
}

/// Wakes `agent` and sets the hot logpoint (`DETRICS:slow={round}` on the fixture's `process`
/// line) through the session it opened with `stub`.
fn wake_with_hot_logpoint(agent: &AttachedAgent, stub: &RestStub) -> Dap {
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!((s, wake["status"].clone()), (200, json!("awake")), "{wake}");
    let (_, mut dap) = stub.take_session();
    let src = c_fixture_source("orders");
    let r = dap.request(&set_bps(
        10,
        &src.to_string_lossy(),
        json!([{"line": marker_line(&src, "process"), "logMessage": "DETRICS:slow={round}"}]),
    ));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    dap
}

/// A hot logpoint removed and set again, twice, while the target loops without a pause: the
/// removal answers at once while the kernel still unregisters the uprobe (~100 ms), the new
/// probe goes live meanwhile, and still every hit is accounted for — the engine's `hits` are
/// the events delivered plus every drop, `hits_after_remove` (events of a removed probe read
/// after its removal) included. Totals read with the target stopped and the closes done.
#[test]
fn a_hot_logpoint_replaced_twice_still_accounts_for_every_hit() {
    require_root();
    let target = HotTarget::start("replaced");
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = unbroken_agent(&target, &stub, "replaced");
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!((s, wake["status"].clone()), (200, json!("awake")), "{wake}");
    let (_, mut dap) = stub.take_session();
    let src = c_fixture_source("orders");
    let path = src.to_string_lossy().into_owned();
    let bp = json!([{"line": marker_line(&src, "process"), "logMessage": "DETRICS:slow={round}"}]);
    let mut delivered = Vec::new();
    for seq in [10, 12, 14] {
        let r = dap.request(&set_bps(seq, &path, bp.clone()));
        assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
        let got = dap.events(200, STEP_TIMEOUT, is_ours);
        assert!(
            got.len() >= 200,
            "values flow after set {seq}: {}",
            got.len()
        );
        delivered.extend(got);
        let r = dap.request(&set_bps(seq + 1, &path, json!([])));
        assert_eq!(r["success"], true, "{r}");
    }
    // The last removal's uprobe goes within ~100 ms; then nothing fires any more.
    std::thread::sleep(Duration::from_secs(1));
    target.signal(libc::SIGSTOP);
    let start = Instant::now();
    let (hits, drops, status) = loop {
        let more = dap.events(512, Duration::from_secs(1), is_ours);
        let quiet = more.is_empty();
        delivered.extend(more);
        let (hits, drops, status) = accounting(&agent);
        if (quiet && hits == delivered.len() as u64 + drops)
            || start.elapsed() > Duration::from_secs(30)
        {
            break (hits, drops, status);
        }
    };
    let n = delivered.len() as u64;
    eprintln!("replaced twice: delivered {n}, status {status}");
    assert_eq!(
        hits,
        n + drops,
        "hits = events delivered ({n}) + every drop; status: {status}"
    );
    target.signal(libc::SIGCONT);
}

#[test]
fn a_daemon_that_stops_reading_costs_bounded_memory_and_every_hit_is_accounted_for() {
    require_root();
    let target = HotTarget::start("slowd");
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = unbroken_agent(&target, &stub, "slow-daemon");
    let agent_pid = agent.child.id();
    let mut dap = wake_with_hot_logpoint(&agent, &stub);

    // Read normally for a while: values flow, and the RSS before the pause is measured.
    let mut delivered = dap.events(200, STEP_TIMEOUT, is_ours);
    assert!(delivered.len() >= 200, "values flow: {}", delivered.len());
    let rss_before = rss_kib(agent_pid);

    // The daemon stops reading until the agent reports drops, and 3 s more.
    dap.pause_reading();
    let round_at_pause = target.round();
    let paused_at = Instant::now();
    let mut rss_peak = rss_before;
    let mut dropped_seen_at = None;
    loop {
        rss_peak = rss_peak.max(rss_kib(agent_pid));
        let (_, st) = agent.get("/detrix/status");
        if dropped_seen_at.is_none() && st.get("dropped_hits").is_some() {
            dropped_seen_at = Some(Instant::now());
        }
        if dropped_seen_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
            break;
        }
        assert!(
            paused_at.elapsed() < Duration::from_secs(180),
            "no drop reported after 180 s of not reading: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let round_at_end = target.round();
    let paused_for = paused_at.elapsed();
    assert!(
        rss_peak <= rss_before + RSS_GROWTH_BOUND_KIB,
        "the agent's RSS grew from {rss_before} KiB to {rss_peak} KiB while the daemon did not read (bound: +{RSS_GROWTH_BOUND_KIB} KiB)"
    );
    assert!(
        round_at_end > round_at_pause,
        "the target kept running while the daemon did not read: round {round_at_pause} → {round_at_end}"
    );

    // Freeze the target so the engine's totals are final, read again and drain everything.
    target.signal(libc::SIGSTOP);
    dap.resume_reading();
    let drain_start = Instant::now();
    let (hits, drops, status) = loop {
        // In slices: `Dap::events` rescans what it holds on every message.
        let more = dap.events(512, Duration::from_secs(2), is_ours);
        let quiet = more.len() < 512;
        delivered.extend(more);
        let (hits, drops, status) = accounting(&agent);
        if (quiet && hits == delivered.len() as u64 + drops)
            || drain_start.elapsed() > Duration::from_secs(90)
        {
            break (hits, drops, status);
        }
    };
    let n = delivered.len() as u64;
    eprintln!(
        "slow daemon: paused {paused_for:.1?}, target rounds {round_at_pause} → {round_at_end}, \
         agent RSS {rss_before} KiB → peak {rss_peak} KiB, delivered {n}, status {status}"
    );
    assert_eq!(
        hits,
        n + drops,
        "hits = events delivered ({n}) + every drop; status: {status}"
    );
    assert!(
        status
            .get("dropped_hits")
            .is_some_and(|d| d.as_u64() > Some(0)),
        "the queue's drops are reported: {status}"
    );
    // Each hit reached the peer at most once, in the order the target made them.
    let rounds: Vec<i64> = delivered.iter().map(event_round).collect();
    assert_strictly_increasing(&rounds);

    // The session is still live: once the target runs again, values flow again.
    target.signal(libc::SIGCONT);
    let after = dap.events(10, STEP_TIMEOUT, is_ours);
    assert!(
        after.len() >= 10,
        "values flow after the pause: {}",
        after.len()
    );
    assert!(event_round(&after[0]) > *rounds.last().expect("delivered"));
}

/// The CPU breaker switching the hot logpoint off is told to the daemon the way a DAP client
/// understands it (issue #13 point 6): one `breakpoint` event, reason `changed`, with the
/// breakpoint's id, line and source, `verified:false`, and a message naming the budget and how
/// to raise it — the very reason `/detrix/status` shows — and no `output` of that probe after
/// it. (The real daemon ignores `breakpoint` events, contract §4: it consumes only `output`,
/// `stopped`, `exited` and `terminated`.)
#[test]
fn the_cpu_breaker_switching_a_logpoint_off_tells_the_daemon_with_a_breakpoint_event() {
    require_root();
    let target = HotTarget::start("breaker");
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = AttachedAgent::start(
        target.pid(),
        &[
            "--daemon-url",
            &stub.url,
            "--name",
            "breaker-event",
            "--language",
            "rust",
            "--cpu-budget",
            "0.01",
        ],
        &[],
    );
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!((s, wake["status"].clone()), (200, json!("awake")), "{wake}");
    let (_, mut dap) = stub.take_session();
    let src = c_fixture_source("orders");
    let path = src.to_string_lossy().into_owned();
    let line = marker_line(&src, "process");
    let r = dap.request(&set_bps(
        10,
        &path,
        json!([{"line": line, "logMessage": "DETRICS:slow={round}"}]),
    ));
    let bp = &r["body"]["breakpoints"][0];
    assert_eq!(
        (&bp["verified"], &bp["line"]),
        (&json!(true), &json!(line)),
        "{r}"
    );
    let changed = dap.events(1, Duration::from_secs(60), |e| e["event"] == "breakpoint");
    assert_eq!(
        changed.len(),
        1,
        "one breakpoint event within 60 s: {changed:?}"
    );
    let (_, st) = agent.get("/detrix/status");
    assert_eq!(st["probes_switched_off"], 1, "{st}");
    let reason = st["probe_switched_off_reason"]
        .as_str()
        .unwrap_or_else(|| panic!("the status names the reason: {st}"));
    assert!(
        reason.starts_with("cost ")
            && reason.ends_with(
                "exceeds the 0.01% budget per probe; raise it with --cpu-budget PERCENT (of one CPU; 0 = no breaker) or pick a colder line"
            ),
        "{reason}"
    );
    assert_eq!(
        changed[0]["body"],
        json!({"reason": "changed", "breakpoint": {
            "id": bp["id"], "verified": false, "line": line,
            "message": format!("switched off by the CPU breaker: {reason}. Remove the breakpoint and set it again to switch it back on"),
            "source": {"name": "orders.c", "path": path}}}),
    );
    // Every `output` of the probe came before the event (the facade numbers what it sends).
    let bp_seq = changed[0]["seq"].as_i64().expect("an event has a seq");
    let outputs = dap.events(usize::MAX, Duration::from_millis(1500), is_ours);
    assert!(!outputs.is_empty(), "values flowed before the switch-off");
    let late: Vec<&Value> = outputs
        .iter()
        .filter(|e| e["seq"].as_i64() > Some(bp_seq))
        .collect();
    assert!(late.is_empty(), "output after the switch-off: {late:?}");
    // Setting the same entry again (another line of the file added) does not switch it back on.
    let after = marker_line(&src, "after");
    let r = dap.request(&set_bps(
        11,
        &path,
        json!([{"line": line, "logMessage": "DETRICS:slow={round}"}, {"line": after, "logMessage": "DETRICS:total={total}"}]),
    ));
    assert_eq!(
        r["body"]["breakpoints"][0], changed[0]["body"]["breakpoint"],
        "{r}"
    );
}

/// Two CPUs this process may run on, if it may run on two.
fn two_cpus() -> Option<[usize; 2]> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pid 0 is this thread.
    let r =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut set) };
    assert_eq!(
        r,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: CPU_ISSET reads the set.
    let mut allowed =
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) });
    Some([allowed.next()?, allowed.next()?])
}

/// Pins every thread of `pid` to `cpu`.
fn pin(pid: u32, cpu: usize) {
    // SAFETY: as in `two_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes the set; cpu < CPU_SETSIZE (from `two_cpus`).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: passes the set by pointer with its size. A target that exited makes it fail,
    // which the test notices elsewhere.
    unsafe {
        libc::sched_setaffinity(
            pid as i32,
            std::mem::size_of::<libc::cpu_set_t>(),
            &raw const set,
        );
    }
}

/// A single-threaded target moved between two CPUs every few hundred microseconds while a hot
/// logpoint fires, read normally and then with a pause (a backlog drained in capped batches):
/// its hits land in two CPUs' rings, and still reach the peer in the order it made them. The
/// agent reads each CPU's ring at a slightly different instant; without a merge that holds
/// back what started after its clock read, a record of the CPU read first could arrive after
/// a later one of the CPU read second (seen in CI as "delivered rounds strictly increase").
#[test]
fn a_target_moving_between_cpus_has_its_hits_delivered_in_the_order_it_made_them() {
    require_root();
    let Some(cpus) = two_cpus() else {
        eprintln!("NOT RUN: this test may run on one CPU only; moving the target needs two");
        return;
    };
    let target = HotTarget::start("moving");
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = unbroken_agent(&target, &stub, "moving");
    let mut dap = wake_with_hot_logpoint(&agent, &stub);

    let moving = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pid = target.pid();
    let mover = std::thread::spawn({
        let moving = moving.clone();
        move || {
            let mut moves = 0u64;
            while moving.load(Ordering::Relaxed) {
                pin(pid, cpus[(moves % 2) as usize]);
                moves += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
            moves
        }
    });
    let mut delivered = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        delivered.extend(dap.events(512, Duration::from_millis(500), is_ours));
    }
    dap.pause_reading();
    std::thread::sleep(Duration::from_secs(2));
    dap.resume_reading();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        delivered.extend(dap.events(512, Duration::from_millis(500), is_ours));
    }
    moving.store(false, Ordering::Relaxed);
    let moves = mover.join().expect("the mover thread");
    target.signal(libc::SIGSTOP);
    loop {
        let more = dap.events(512, Duration::from_secs(1), is_ours);
        if more.is_empty() {
            break;
        }
        delivered.extend(more);
    }
    target.signal(libc::SIGCONT);
    let rounds: Vec<i64> = delivered.iter().map(event_round).collect();
    eprintln!(
        "moving target: {moves} moves, {} events delivered",
        rounds.len()
    );
    assert!(moves >= 1000, "the target was moved often: {moves} moves");
    assert!(rounds.len() >= 1000, "values flowed: {}", rounds.len());
    assert_strictly_increasing(&rounds);
}
