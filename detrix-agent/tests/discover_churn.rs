//! Discovery under churn: 200 short-lived processes a rule selects, each seen started (how soon
//! after its exec is printed; the 100 ms goal is the benchmark's) and exited, and afterwards the tracker holds no more file descriptors,
//! threads or entries than before. Its own test binary, so `/proc/self/task` counts only it.
//! Needs root (the netlink process connector wants CAP_NET_ADMIN); prints NOT RUN otherwise.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use detrix_agent::discover::tracker::{ms_since, Change, Tracker};
use detrix_agent::serve::rule::Select;

const N: usize = 200;
/// Unique to this test, so no other process on the host matches.
const ARG: &str = "0.0537";

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).expect("readable /proc/self").count()
}

#[test]
fn two_hundred_short_lived_processes_all_seen_nothing_leaks() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("NOT RUN: the netlink process connector needs root");
        return;
    }
    let mut select = Select::default();
    select
        .set(
            "cmdline",
            &format!("^sleep {}$", regex_escape(ARG)),
            &|_| None,
        )
        .expect("rule compiles");
    // tokio's signal driver keeps one socket pair for the life of the process, made by the
    // first runtime: make it before counting, so the count sees only what the churn leaves.
    drop(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let fds_before = count("/proc/self/fd");
    let threads_before = count("/proc/self/task");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (started, exited, latencies, known_after, stats) = rt.block_on(async {
        let fds_runtime = count("/proc/self/fd");
        let mut tracker = Tracker::open().expect("tracker opens as root");
        // Drain the start scan.
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), tracker.next()).await
        {
        }
        let known_before = tracker.known();
        let mut children: Vec<Child> = Vec::new();
        let mut spawned: HashSet<u32> = HashSet::new();
        let mut started: HashMap<u32, f64> = HashMap::new();
        let mut exited: HashSet<u32> = HashSet::new();
        let mut latencies = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next_spawn = Instant::now();
        while (exited.len() < N || spawned.len() < N) && Instant::now() < deadline {
            if spawned.len() < N && Instant::now() >= next_spawn {
                let c = Command::new("sleep").arg(ARG).spawn().expect("spawn sleep");
                spawned.insert(c.id());
                children.push(c);
                next_spawn = Instant::now() + Duration::from_millis(3);
            }
            children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
            match tokio::time::timeout(Duration::from_millis(2), tracker.next()).await {
                Ok(Ok(Change::Started { process, exec_ns })) if select.matches(&process) => {
                    let ms = exec_ns.map(ms_since).unwrap_or(f64::NAN);
                    latencies.push(ms);
                    started.insert(process.pid, ms);
                }
                Ok(Ok(Change::Exited { pid })) if started.contains_key(&pid) => {
                    exited.insert(pid);
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => panic!("tracker failed: {e}"),
            }
        }
        for mut c in children {
            let _ = c.wait();
        }
        // Let the last exits arrive.
        while let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(100), tracker.next()).await
        {
            if let Change::Exited { pid } = c {
                if started.contains_key(&pid) {
                    exited.insert(pid);
                }
            }
        }
        let stats = tracker.stats;
        // Every churned process is forgotten; the rest of the host (other processes start,
        // fork and exit meanwhile) is not compared with the count before, only with what runs.
        let still_known: Vec<u32> = spawned
            .iter()
            .copied()
            .filter(|p| tracker.knows(*p))
            .collect();
        assert!(still_known.is_empty(), "exited yet known: {still_known:?}");
        let live = detrix_agent::discover::scan().expect("scan /proc").len();
        let known_after = (known_before, tracker.known(), live);
        let fds_open = count("/proc/self/fd");
        assert_eq!(
            fds_open,
            fds_runtime + 1,
            "the tracker holds exactly one fd while open"
        );
        drop(tracker);
        assert_eq!(spawned.len(), N);
        let not_started: Vec<_> = spawned
            .iter()
            .filter(|p| !started.contains_key(p))
            .collect();
        assert!(
            not_started.is_empty(),
            "never seen started: {not_started:?} ({stats:?})"
        );
        (started, exited, latencies, known_after, stats)
    });
    assert_eq!(started.len(), N, "{stats:?}");
    assert_eq!(exited.len(), N, "every one seen exiting ({stats:?})");
    assert_eq!(stats.rescans, 0, "no events lost at this rate");
    assert!(
        known_after.1 <= known_after.2,
        "no more processes known than run: {} before, {} after, {} running",
        known_after.0,
        known_after.1,
        known_after.2
    );
    let mut l = latencies.clone();
    l.sort_by(f64::total_cmp);
    let median = l[l.len() / 2];
    let max = l[l.len() - 1];
    println!("discovery latency exec → started over {N}: median {median:.3} ms, max {max:.3} ms");
    // How soon (the 100 ms goal) is the benchmark's row `exec → target`: a loaded CI machine
    // would fail a timing that says nothing about whether every process was seen.
    drop(rt);
    assert_eq!(
        count("/proc/self/fd"),
        fds_before,
        "file descriptors back to the start: {:?}",
        fd_list()
    );
    assert_eq!(
        count("/proc/self/task"),
        threads_before,
        "threads back to the start"
    );
}

fn fd_list() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("readable /proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}
