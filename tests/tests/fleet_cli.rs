//! `detrix-agent fleet wake` and `fleet status --watch` follow their `DetrixWake` with a watch
//! (issue #14 point 3): against the stand-in API server ([`kube_api`]), with the test writing
//! the node agents' reports itself (as their server-side apply would), so what the CLI sees and
//! when is decided here, not by node agents' timing. Every request the CLI makes is recorded by
//! its bearer token: it never reads the object on a timer (no `GET` of the object at all, and
//! its `--stage-timeout` is 10 minutes), so a stage that advances right after a report did so
//! because the watch brought the report. A watch expired by compaction (410 Gone) is resumed
//! with a fresh list, which carries the reports written while no watch was open.
//!
//! Needs neither root nor real targets: pods are objects only.

mod common;
mod kube_api;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use detrix_e2e::{agent_bin, Running};
use kube_api::pods::pod;
use kube_api::wake::{DetrixWake, Node, Spec};
use kube_api::{KubeApi, Res};

const WAIT: Duration = Duration::from_secs(60);
const WAKES: &str = "/apis/detrix.dev/v1alpha1/namespaces/shop/detrixwakes";

struct Cluster {
    api: KubeApi,
    dir: PathBuf,
}

impl Cluster {
    /// Two pods `orders-0` (node-a) and `orders-1` (node-b), labelled app=orders.
    fn new(tag: &str) -> Cluster {
        let api = KubeApi::start();
        for (i, node) in ["node-a", "node-b"].into_iter().enumerate() {
            let id = format!("{:064x}", i + 1);
            api.apply(&pod(
                &format!("orders-{i}"),
                node,
                &[("app", "orders")],
                &[],
                &id,
            ));
        }
        let dir =
            std::env::temp_dir().join(format!("detrix-fleet-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        api.kubeconfig_as(&dir.join("cli"), "token-cli");
        Cluster { api, dir }
    }

    fn cli(&self, args: &[&str]) -> Running {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("fleet")
            .args(args)
            .env("KUBECONFIG", self.dir.join("cli"))
            .env("RUST_LOG", "warn");
        Running::spawn(cmd)
    }

    fn calls(&self) -> Vec<String> {
        self.api.calls("token-cli")
    }

    /// Waits until the CLI has made `n` watch requests of the DetrixWakes.
    fn wait_watches(&self, n: usize, cli: &Running) {
        let watch = format!("GET {WAKES} watch");
        let deadline = Instant::now() + WAIT;
        while self.calls().iter().filter(|c| **c == watch).count() < n {
            assert!(
                Instant::now() < deadline,
                "no watch {n} by the CLI: {:?}\n{}",
                self.calls(),
                cli.stderr().text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn report(node: &str, stage: u32, wanted: u32, awake: u32) -> Node {
    Node {
        node: node.to_owned(),
        stage,
        wanted,
        awake,
        ..Node::default()
    }
}

/// A progress line without its elapsed time (`…, 1.2 s)` or `… (1.2 s)`).
fn untimed(line: &str) -> String {
    if !line.ends_with(" s)") {
        return line.to_owned();
    }
    let cut = line.rfind([',', '(']).unwrap_or(line.len());
    line[..cut].trim_end().to_owned()
}

#[test]
fn fleet_wake_advances_on_the_report_its_watch_brings_and_resumes_a_watch_that_got_410() {
    let c = Cluster::new("wake");
    let cli = c.cli(&[
        "wake",
        "--selector",
        "app=orders",
        "-n",
        "shop",
        "--name",
        "w",
        "--canary",
        "1",
        "--steps",
        "100%",
        "--interval",
        "0s",
        "--ttl",
        "10m",
        "--stage-timeout",
        "10m",
    ]);
    c.wait_watches(1, &cli);
    // The canary's node reports it awake: the CLI advances to stage 1.
    c.api.apply_node_statuses(
        "shop",
        "w",
        "2030-01-01T00:10:00Z",
        &[report("node-a", 0, 1, 1)],
    );
    let deadline = Instant::now() + WAIT;
    while c.api.wake("shop", "w").map(|w| w.spec.stage) != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the CLI did not advance on the report: {}\n{}",
            cli.stdout().text(),
            cli.stderr().text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // History compacted, open watches ended; the reports of stage 1 are written while the CLI
    // has none open: its resumed watch gets 410, and the list it makes then carries them.
    c.api.expire();
    c.api.apply_node_statuses(
        "shop",
        "w",
        "2030-01-01T00:10:00Z",
        &[report("node-a", 1, 1, 1), report("node-b", 1, 1, 1)],
    );
    let out = cli.wait(WAIT);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<String> = out.stdout.lines().map(untimed).collect();
    assert_eq!(
        lines,
        [
            "fleet wake shop/w: 2 target(s) selected by `app=orders`; awake per stage 1 → 2; ttl 10m",
            "canary (1): 0/1 awake, 0 failed, 0 breaker trip(s) (0 node(s) reporting",
            "canary (1): 1/1 awake, 0 failed, 0 breaker trip(s) (1 node(s) reporting",
            "canary (1) healthy: 1 awake",
            "stage 1 (100%): 0/2 awake, 0 failed, 0 breaker trip(s) (0 node(s) reporting",
            "stage 1 (100%): 2/2 awake, 0 failed, 0 breaker trip(s) (2 node(s) reporting",
            "stage 1 (100%) healthy: 2 awake",
            "fleet wake shop/w: every stage reached; the targets sleep at 2030-01-01T00:10:00Z (ttl 10m) or on `detrix-agent fleet sleep w -n shop`",
        ]
    );
    // Every request the CLI made: count the pods, create, list + watch, advance, then after
    // the compaction a watch answered 410 and a fresh list, which held the reports that end
    // the wake. No GET of the object.
    let list = format!("GET {WAKES}");
    let watch = format!("GET {WAKES} watch");
    assert_eq!(
        c.calls(),
        [
            "GET /api/v1/namespaces/shop/pods".to_owned(),
            format!("POST {WAKES}"),
            list.clone(),
            watch.clone(),
            format!("PATCH {WAKES}/w"),
            watch,
            list,
        ],
        "{}",
        out.stderr
    );
    assert_eq!(c.api.counts_of(Res::Wake).expired, 1);
    assert!(
        out.stderr
            .contains("watching the DetrixWake failed; listing it again"),
        "the 410 is logged: {}",
        out.stderr
    );
}

#[test]
fn fleet_status_watch_prints_each_change_until_the_object_is_deleted() {
    let c = Cluster::new("status");
    let spec = Spec {
        selector: "app=orders".to_owned(),
        canary: 1,
        steps: vec![50, 100],
        interval: "30s".to_owned(),
        ttl: "15m".to_owned(),
        safe_mode: false,
        stage: 0,
        halted: false,
    };
    c.api.create_wake(&DetrixWake::new("w", "shop", spec));
    let cli = c.cli(&["status", "w", "-n", "shop", "--watch"]);
    c.wait_watches(1, &cli);
    assert!(cli
        .stdout()
        .wait_for(WAIT, |l| l.starts_with("shop/w: "))
        .is_some());
    c.api.apply_node_statuses(
        "shop",
        "w",
        "2030-01-01T00:15:00Z",
        &[report("node-a", 0, 1, 1)],
    );
    assert!(cli
        .stdout()
        .wait_for(WAIT, |l| l.trim_start().starts_with("node-a"))
        .is_some());
    // The same report written again (a new resourceVersion, the same text): not printed again.
    c.api.apply_node_statuses(
        "shop",
        "w",
        "2030-01-01T00:15:00Z",
        &[report("node-a", 0, 1, 1)],
    );
    c.api.delete_wake("shop", "w");
    let out = cli.wait(WAIT);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let header = "  node                 stage wanted awake failed trips  message";
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        [
            "shop/w: selector `app=orders`, stage 0 of 2, canary 1, steps 50%,100%, ttl 15m (expires unknown)",
            header,
            "shop/w: selector `app=orders`, stage 0 of 2, canary 1, steps 50%,100%, ttl 15m (expires 2030-01-01T00:15:00Z)",
            header,
            "  node-a                   0      1     1      0     0  ",
            "shop/w: deleted",
        ]
    );
    // One list and one watch: nothing asked on a timer.
    assert_eq!(
        c.calls(),
        [format!("GET {WAKES}"), format!("GET {WAKES} watch")]
    );

    // --watch follows one object: without a name it says so.
    let out = c.cli(&["status", "-n", "shop", "--watch"]).wait(WAIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("--watch follows one DetrixWake: name it, e.g. `detrix-agent fleet status wake-1 -n shop --watch`"),
        "{}",
        out.stderr
    );
}
