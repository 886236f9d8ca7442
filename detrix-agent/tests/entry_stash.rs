//! The entry-value stash's lifecycle, against the running `tests/fixtures/stash/stash.c` built
//! with gcc `-O2`: a logpoint whose plan reads an entry value brings an entry probe with it,
//! whose slots stay bounded by the live frames (a recursive function four levels deep holds
//! exactly four, round after round: each call's slot is the one its depth used before), every
//! captured entry value equals the one the fixture printed for that frame, and removing the
//! logpoint removes the entry probe and every slot it saved. (The values against every probe
//! line are checked by `lang_capture`'s `capture_stash_*` tests.)
//!
//! Needs root (CAP_BPF + CAP_PERFMON) like every uprobe test; without it, it fails saying so.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use detrix_agent::decode::Node;
use detrix_agent::engine::{Engine, EngineOptions, LogpointSpec, Resolver};

/// Kills the fixture when the test ends, passing or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fixture_source() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/stash/stash.c")
}

/// The 1-based line carrying `PROBE:<name>`.
fn marker(name: &str) -> u32 {
    let text = std::fs::read_to_string(fixture_source()).expect("read stash.c");
    let want = format!("PROBE:{name} ");
    let i = text
        .lines()
        .position(|l| l.contains(&want))
        .unwrap_or_else(|| panic!("no PROBE:{name} in stash.c"));
    u32::try_from(i + 1).expect("line fits u32")
}

fn int(n: &Node) -> i64 {
    match n {
        Node::Int(v) => *v,
        Node::UInt(v) => i64::try_from(*v).expect("fits i64"),
        other => panic!("not an integer: {other:?}"),
    }
}

#[test]
fn entry_probe_slots_are_bounded_and_go_with_the_logpoint() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test attaches uprobes: run it as root (CAP_BPF and CAP_PERFMON)"
    );
    let dir = std::env::temp_dir().join(format!("detrix-entry-stash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exe = dir.join("stash_c_O2");
    let status = Command::new("gcc")
        .args(["-g", "-O2", "-o"])
        .arg(&exe)
        .arg(fixture_source())
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc -O2 stash.c failed");
    let mut child = Command::new(&exe)
        .args(["-1", "5"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fixture");
    let stdout = child.stdout.take().expect("piped stdout");
    let fixture = Running(child);
    // (round, level) → seed, as the fixture printed it.
    let (tx, rx) = mpsc::channel::<(i64, i64, i64)>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready ") {
                let _ = ready_tx.send(());
            }
            let Some(rest) = line.strip_prefix("down ") else {
                continue;
            };
            let kv: HashMap<&str, i64> = rest
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                .collect();
            let _ = tx.send((kv["round"], kv["level"], kv["seed"]));
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the fixture printed no ready line");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let resolver = Resolver::open(fixture.0.id(), EngineOptions::default()).expect("open");
        let (mut engine, mut reader) = Engine::start(resolver).expect("load the eBPF program");
        let spec = LogpointSpec {
            line: marker("down"),
            exprs: vec!["round".into(), "level".into(), "seed".into()],
            ..LogpointSpec::default()
        };
        let id = engine.add("stash.c", &spec).expect("add the logpoint");
        assert!(
            engine.logpoints().any(|lp| lp.copies.iter().any(|c| c.entry.is_some())),
            "the plan reads `seed`'s entry value: the logpoint needs an entry probe"
        );

        // Hits, each checked against the printed line of its frame.
        let mut printed: HashMap<(i64, i64), i64> = HashMap::new();
        let mut checked = 0;
        let mut first_round: Option<i64> = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while checked < 24 {
            assert!(Instant::now() < deadline, "only {checked} hits in 30 s");
            let batch = tokio::time::timeout(Duration::from_secs(5), reader.next_batch())
                .await
                .expect("a hit within 5 s")
                .expect("read the ring");
            for hit in batch {
                let v: HashMap<&str, &Node> =
                    hit.values.iter().map(|(k, n)| (k.as_str(), n)).collect();
                let (round, level) = (int(v["round"]), int(v["level"]));
                // A frame entered before the entry probe was attached has no slot, and its
                // first call came through a pointer (no call site to recover it from): a read
                // fault, never a number. Only the round the logpoint was added in can have one.
                if let Node::Error(e) = v["seed"] {
                    assert!(
                        first_round.is_none_or(|f| f == round),
                        "round {round} level {level}: `seed` failed after the first round: {e}"
                    );
                    first_round.get_or_insert(round);
                    continue;
                }
                first_round.get_or_insert(round);
                let seed = int(v["seed"]);
                while !printed.contains_key(&(round, level)) {
                    let (r, l, s) = rx
                        .recv_timeout(Duration::from_secs(5))
                        .expect("the fixture printed the hit's frame");
                    printed.insert((r, l), s);
                }
                assert_eq!(
                    seed,
                    printed[&(round, level)],
                    "round {round} level {level}: the captured entry value differs from what the frame printed"
                );
                checked += 1;
            }
        }
        // Four levels, four live frames at four CFAs, reused every round.
        assert_eq!(
            engine.stash_slots(),
            4,
            "one slot per depth of the recursion, however many rounds ran"
        );
        engine.remove(id).expect("remove the logpoint");
        assert_eq!(engine.stash_slots(), 0, "removing the logpoint frees its slots");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            engine.stash_slots(),
            0,
            "the entry probe went with the logpoint: nothing saves registers any more"
        );
    });
    drop(fixture);
    let _ = std::fs::remove_dir_all(&dir);
}
