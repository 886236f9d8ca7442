//! Fleet wake (issue #14 points 3 and 5): `detrix-agent fleet wake` and two node agents
//! (`serve --kubernetes`, `NODE_NAME` node-a and node-b) against the stand-in API server
//! ([`kube_api`]) extended with `DetrixWake` objects, around real target processes — each the
//! `orders` fixture as pid 1 of its own PID namespace, in a cgroup named as containerd names a
//! container's — and the daemon emulator ([`RestStub`]).
//!
//! Which pods belong to which stage is computed here independently (FNV-1a of pod UID and
//! container name, [`rank`]) and compared with what registered with the daemon, in order: a
//! stage starts only once the one before is healthy, so the daemon's registration log is the
//! stages one after another. Scenarios: the canary alone first, then the steps (CLI); a failure
//! in the canary halts the rollout and what was woken sleeps (CLI); a probe in the canary that
//! the node agent's CPU breaker switches off halts it, with exactly one trip reported and the
//! target's own `/detrix/status` saying the same (CLI); agent restarted mid-rollout,
//! a watch that expires (410) resumed with a fresh list, a pod deleted, the object deleted, and
//! the TTL enforced by the nodes with no CLI running (the object driven directly).
//!
//! With `DETRIX_BIN` set, the staged wake runs once more against the real daemon instead of the
//! emulator: every target registers with it, and a metric on the canary stores the values the
//! canary printed.
//!
//! Not tried on a real cluster: no Kubernetes API server can run on this machine kind.

mod common;
mod kube_api;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::serve::Serve;
use common::{set_bps, RestStub};
use detrix_e2e::{
    agent_bin, c_fixture_source, marker_line, require_root, run_with_timeout, Running,
};
use kube_api::pods::{can_unshare, cgroups, pod, Cgroups, Contained};
use kube_api::wake::{DetrixWake, Spec};
use kube_api::{KubeApi, Res};
use serde_json::json;

/// FNV-1a 64 of `pod_uid`, NUL, `container`: the order stages are taken in (the agent's
/// `fleet::plan::rank`, written again here from its definition).
fn rank(pod_uid: &str, container: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod_uid.bytes().chain([0]).chain(container.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Six pods `orders-0..5` in namespace shop, three on each node, each a contained process.
struct Fleet {
    api: KubeApi,
    stub: RestStub,
    dir: PathBuf,
    procs: Vec<Contained>,
    pods: Vec<k8s_openapi::api::core::v1::Pod>,
    /// The daemon the node agents register with: the emulator's URL unless a test sets the
    /// real daemon's.
    daemon_url: String,
    // Dropped after the processes (declared last).
    _cg: Cgroups,
}

const PODS: usize = 6;

impl Fleet {
    fn new(tag: &str) -> Option<Fleet> {
        require_root();
        if !can_unshare(tag) {
            return None;
        }
        let mut cg = cgroups(tag)?;
        let procs: Vec<Contained> = (0..PODS).map(|_| Contained::orders(50)).collect();
        let api = KubeApi::start();
        let pods = procs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = cg.container(1000 + i as u64, p.host_pid);
                let node = if i.is_multiple_of(2) {
                    "node-a"
                } else {
                    "node-b"
                };
                pod(&format!("orders-{i}"), node, &[("app", "orders")], &[], &id)
            })
            .collect::<Vec<_>>();
        for p in &pods {
            api.apply(p);
        }
        let dir = std::env::temp_dir().join(format!("detrix-fleet-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for who in ["node-a", "node-b", "cli"] {
            api.kubeconfig_as(&dir.join(who), &format!("token-{who}"));
        }
        let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
        let daemon_url = stub.url.clone();
        Some(Fleet {
            api,
            stub,
            dir,
            procs,
            pods,
            daemon_url,
            _cg: cg,
        })
    }

    /// The node agent of `node`.
    fn agent(&self, node: &str) -> Serve {
        self.agent_with(node, &[])
    }

    /// The node agent of `node`, with more flags.
    fn agent_with(&self, node: &str, more: &[&str]) -> Serve {
        let kubeconfig = self.dir.join(node).to_string_lossy().into_owned();
        let mut args = vec![
            "--kubernetes",
            "--pod-selector",
            "app=orders",
            "--wake",
            "manual",
            "--daemon-url",
            &self.daemon_url,
        ];
        args.extend_from_slice(more);
        Serve::start(
            &args,
            &[
                ("DETRIX_HEALTH_CHECK_TIMEOUT", "20"),
                ("DETRIX_REGISTER_TIMEOUT", "20"),
                ("KUBECONFIG", &kubeconfig),
                ("NODE_NAME", node),
            ],
        )
    }

    /// Waits until both agents list their three targets, sleeping.
    fn ready(agents: &[&Serve]) {
        for a in agents {
            wait_targets(a, "three sleeping targets", |t| {
                t.len() == PODS / 2 && t.iter().all(|t| t["state"] == "sleeping")
            });
        }
    }

    /// Connection names in stage order: the canary first, then by rank.
    fn ranked(&self) -> Vec<String> {
        let mut v: Vec<(u64, String)> = self
            .pods
            .iter()
            .map(|p| {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                (rank(&uid, "app"), format!("shop/{name}/app"))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    fn registered(&self) -> Vec<String> {
        self.stub
            .lock()
            .registrations
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn unregistered(&self) -> usize {
        self.stub.lock().unregistrations.len()
    }

    /// `detrix-agent fleet ARGS` as the operator (its own kubeconfig); (exit code, stdout).
    /// Its stderr goes to the test's.
    fn cli(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("fleet")
            .args(args)
            .env("KUBECONFIG", self.dir.join("cli"))
            .env("RUST_LOG", "warn");
        let out = run_with_timeout(cmd, Duration::from_secs(120));
        if !out.stderr.is_empty() {
            eprintln!("fleet {args:?} stderr:\n{}", out.stderr);
        }
        (out.status.code(), out.stdout)
    }

    /// `fleet wake` of every `app=orders` pod in shop as object `name`: `canary` targets,
    /// then steps of 50 % and 100 %, 500 ms apart, ttl 10 min; (exit code, stdout).
    fn wake(&self, name: &str, canary: u32) -> (Option<i32>, String) {
        let canary = canary.to_string();
        self.cli(&[
            "wake",
            "--selector",
            "app=orders",
            "-n",
            "shop",
            "--name",
            name,
            "--canary",
            &canary,
            "--steps",
            "50%,100%",
            "--interval",
            "500ms",
            "--ttl",
            "10m",
        ])
    }

    fn wake_obj(&self, name: &str) -> DetrixWake {
        self.api.wake("shop", name).expect("the DetrixWake exists")
    }

    /// Waits until the nodes' reports equal `want` (node → (stage, wanted, awake, failed, trips)).
    fn wait_reports(&self, name: &str, what: &str, want: &[(&str, Report)], agents: &[&Serve]) {
        let want: BTreeMap<String, _> = want.iter().map(|(n, r)| ((*n).to_owned(), *r)).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = self
                .api
                .wake("shop", name)
                .map(|w| w.reports())
                .unwrap_or_default();
            if got == want {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = agents.iter().map(|a| a.stderr.text()).collect();
                panic!(
                    "{what}:\n got {got:?}\nwant {want:?}\nregistered {:?}\nagents:\n{}",
                    self.registered(),
                    logs.join("\n-----\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node (node-a for even pods) of a connection name.
    fn node_of(name: &str) -> &'static str {
        let i: usize = name
            .trim_start_matches("shop/orders-")
            .trim_end_matches("/app")
            .parse()
            .expect("pod number");
        if i.is_multiple_of(2) {
            "node-a"
        } else {
            "node-b"
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// [`Serve::wait_targets`] with room for six eBPF loads on a loaded two-core machine (each
/// target loads its own program while it starts).
fn wait_targets(serve: &Serve, what: &str, pred: impl Fn(&[serde_json::Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = serve.targets();
        if pred(&t) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: targets {t:#?}\nserve stderr:\n{}",
            serve.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node's report: (stage, wanted, awake, failed, breaker trips).
type Report = (u32, u32, u32, u32, u32);

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// (node-a's, node-b's) count among `names`.
fn per_node(names: &[String]) -> (u32, u32) {
    let a = names
        .iter()
        .filter(|n| Fleet::node_of(n) == "node-a")
        .count();
    (
        u32::try_from(a).expect("few"),
        u32::try_from(names.len() - a).expect("few"),
    )
}

#[test]
fn the_cli_wakes_the_canary_alone_then_each_step_and_sleeps_on_request() {
    let Some(f) = Fleet::new("steps") else {
        return;
    };
    let (a, b) = (f.agent("node-a"), f.agent("node-b"));
    Fleet::ready(&[&a, &b]);
    let ranked = f.ranked();
    // --canary 1 --steps 50%,100% over 6 targets: 1, then 3, then 6 awake.
    let (code, out) = f.wake("orders-wake", 1);
    assert_eq!(
        code,
        Some(0),
        "fleet wake: {out}\n{}\n{}",
        a.stderr.text(),
        b.stderr.text()
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("fleet wake shop/orders-wake: 6 target(s) selected by `app=orders`; awake per stage 1 → 3 → 6; ttl 10m"), "{out}");
    for (stage, n) in [
        ("canary (1)", 1),
        ("stage 1 (50%)", 3),
        ("stage 2 (100%)", 6),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{stage} healthy: {n} awake"))),
            "{stage}: {out}"
        );
    }
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("fleet wake shop/orders-wake: every stage reached"),
        "{out}"
    );
    // The daemon saw the canary alone, then the step's two, then the last three.
    let regs = f.registered();
    assert_eq!(regs.len(), 6, "{regs:?}");
    assert_eq!(regs[0], ranked[0], "the canary first");
    assert_eq!(set(&regs[1..3]), set(&ranked[1..3]), "stage 1");
    assert_eq!(set(&regs[3..]), set(&ranked[3..]), "stage 2");
    let (na, nb) = per_node(&ranked);
    f.wait_reports(
        "orders-wake",
        "every stage",
        &[("node-a", (2, na, na, 0, 0)), ("node-b", (2, nb, nb, 0, 0))],
        &[&a, &b],
    );
    // Each node's targets are awake in serve's table too.
    for agent in [&a, &b] {
        wait_targets(agent, "awake", |t| t.iter().all(|t| t["state"] == "awake"));
    }
    let (code, status) = f.cli(&["status", "orders-wake", "-n", "shop"]);
    assert_eq!(code, Some(0));
    let rows: Vec<String> = status
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().take(6).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        rows,
        [
            format!("node-a 2 {na} {na} 0 0"),
            format!("node-b 2 {nb} {nb} 0 0")
        ],
        "{status}"
    );
    assert!(status.starts_with("shop/orders-wake: selector `app=orders`, stage 2 of 2, canary 1, steps 50%,100%, ttl 10m"), "{status}");

    let (code, out) = f.cli(&["sleep", "orders-wake", "-n", "shop"]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), "shop/orders-wake: every target it woke sleeps")
    );
    assert!(f
        .stub
        .wait(Duration::from_secs(20), |s| s.unregistrations.len() == 6));
    for agent in [&a, &b] {
        wait_targets(agent, "asleep", |t| {
            t.len() == 3 && t.iter().all(|t| t["state"] == "sleeping")
        });
    }
    assert_eq!(f.registered().len(), 6, "nothing woken twice");
}

#[test]
fn a_failure_in_the_canary_halts_the_rollout_and_what_was_woken_sleeps() {
    let Some(f) = Fleet::new("halt") else {
        return;
    };
    let (a, b) = (f.agent("node-a"), f.agent("node-b"));
    Fleet::ready(&[&a, &b]);
    let ranked = f.ranked();
    // A canary of two: the daemon refuses the second's registration.
    f.stub.lock().refuse.push(ranked[1].clone());
    let (code, out) = f.wake("bad-canary", 2);
    assert_eq!(code, Some(3), "fleet wake halts: {out}");
    let halting = out
        .lines()
        .find(|l| l.starts_with("halting shop/bad-canary: failure in canary (2): "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        halting.contains(&format!("{}: {}", Fleet::node_of(&ranked[1]), ranked[1])),
        "{halting}"
    );
    assert!(
        out.trim_end()
            .ends_with("shop/bad-canary: every target it woke sleeps"),
        "{out}"
    );
    // Only the canary was tried; the one that registered is unregistered; no step ran.
    let regs = f.registered();
    assert_eq!(set(&regs), set(&ranked[..2]), "{regs:?}");
    assert!(f
        .stub
        .wait(Duration::from_secs(20), |s| s.unregistrations.len() == 1));
    let w = f.wake_obj("bad-canary");
    assert_eq!((w.spec.stage, w.spec.halted), (0, true));
    assert!(w
        .status
        .unwrap()
        .nodes
        .iter()
        .all(|n| n.awake == 0 && n.message == "halted: every target this wake woke sleeps"),);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(f.registered().len(), 2, "nothing woken after the halt");
}

/// A spec as `fleet wake --canary 1 --steps 50%,100%` writes it, at `stage`.
fn spec(stage: u32, ttl: &str) -> Spec {
    Spec {
        selector: "app=orders".to_owned(),
        canary: 1,
        steps: vec![50, 100],
        interval: "1s".to_owned(),
        ttl: ttl.to_owned(),
        safe_mode: false,
        stage,
        halted: false,
    }
}

#[test]
fn nodes_follow_the_object_through_restart_410_pod_deletion_and_the_ttl() {
    let Some(f) = Fleet::new("nodes") else {
        return;
    };
    let a = f.agent("node-a");
    let b = f.agent("node-b");
    Fleet::ready(&[&a, &b]);
    let ranked = f.ranked();
    let reports = |stage: u32, members: &[String]| {
        let (na, nb) = per_node(members);
        [
            ("node-a", (stage, na, na, 0, 0)),
            ("node-b", (stage, nb, nb, 0, 0)),
        ]
    };

    // Stage 0: the canary alone.
    f.api
        .create_wake(&DetrixWake::new("w", "shop", spec(0, "10m")));
    f.wait_reports("w", "canary", &reports(0, &ranked[..1]), &[&a, &b]);
    assert_eq!(f.registered(), ranked[..1]);

    // Stage 1 with the canary's node agent restarted (killed, no goodbye) meanwhile: the new
    // agent wakes its stage-1 members once each, the other node only its new ones.
    let canary_node = Fleet::node_of(&ranked[0]);
    let (mut a, mut b) = (Some(a), Some(b));
    let slot = if canary_node == "node-a" {
        &mut a
    } else {
        &mut b
    };
    drop(slot.take());
    f.api.set_spec("shop", "w", &spec(1, "10m"));
    *slot = Some(f.agent(canary_node));
    let (a, b) = (a.unwrap(), b.unwrap());
    Fleet::ready_or_awake(&[&a, &b]);
    f.wait_reports(
        "w",
        "stage 1 after a restart",
        &reports(1, &ranked[..3]),
        &[&a, &b],
    );
    let regs = f.registered();
    assert_eq!(regs.len(), 4, "{regs:?}");
    assert_eq!(regs[0], ranked[0]);
    assert_eq!(
        set(&regs[1..]),
        set(&ranked[..3]),
        "stage 1: its three members once each (the canary again, by its restarted agent)"
    );

    // The watches expire (410): both nodes list again and take the next stage from the list.
    let before = f.api.counts_of(Res::Wake);
    f.api.expire();
    f.api.set_spec("shop", "w", &spec(2, "10m"));
    f.wait_reports("w", "stage 2 after 410", &reports(2, &ranked), &[&a, &b]);
    let after = f.api.counts_of(Res::Wake);
    assert!(
        after.expired >= before.expired + 2 && after.lists >= before.lists + 2,
        "{before:?} → {after:?}"
    );
    assert_eq!(f.registered().len(), 4 + 3, "the last three once each");

    // A pod deleted: its target unregisters (node mode) and leaves its node's count.
    let gone = ranked[5].clone();
    let gone_pod = f
        .pods
        .iter()
        .find(|p| format!("shop/{}/app", p.metadata.name.as_deref().unwrap()) == gone)
        .unwrap();
    f.api.delete(gone_pod);
    let rest: Vec<String> = ranked[..5].to_vec();
    f.wait_reports("w", "a pod deleted", &reports(2, &rest), &[&a, &b]);
    assert!(f
        .stub
        .wait(Duration::from_secs(20), |s| s.unregistrations.len() == 1));

    // The object deleted: every target it woke sleeps.
    f.api.delete_wake("shop", "w");
    assert!(
        f.stub
            .wait(Duration::from_secs(20), |s| s.unregistrations.len() == 6),
        "{}",
        f.unregistered()
    );

    // The TTL, with no CLI: a wake of everything for 6 s, then every target sleeps.
    let regs_before = f.registered().len();
    let t0 = Instant::now();
    f.api
        .create_wake(&DetrixWake::new("short", "shop", spec(2, "6s")));
    f.wait_reports("short", "all awake", &reports(2, &rest), &[&a, &b]);
    assert_eq!(f.registered().len(), regs_before + 5);
    assert!(f
        .stub
        .wait(Duration::from_secs(30), |s| s.unregistrations.len()
            == 6 + 5));
    // creationTimestamp has whole seconds: expiry is at most one second early.
    assert!(
        t0.elapsed() >= Duration::from_secs(5),
        "slept before its TTL: {:?}",
        t0.elapsed()
    );
    f.wait_reports(
        "short",
        "expired",
        &[("node-a", (2, 0, 0, 0, 0)), ("node-b", (2, 0, 0, 0, 0))],
        &[&a, &b],
    );
    let w = f.wake_obj("short");
    assert!(w
        .status
        .unwrap()
        .nodes
        .iter()
        .all(|n| n.message == "expired: the TTL passed, every target this wake woke sleeps"));
}

impl Fleet {
    /// After a restart the new agent's targets start asleep; the other's may be awake.
    fn ready_or_awake(agents: &[&Serve]) {
        for a in agents {
            wait_targets(a, "three targets started", |t| {
                t.len() == PODS / 2 && t.iter().all(|t| t["state"] != "starting")
            });
        }
    }
}

#[test]
fn a_breaker_trip_in_the_canary_halts_the_rollout_with_the_exact_count() {
    let Some(f) = Fleet::new("trip") else {
        return;
    };
    // A per-probe budget of 0.0001 % of a CPU (1 µs a second): any probe that hits trips.
    let budget = ["--cpu-budget", "0.0001"];
    let (a, b) = (
        f.agent_with("node-a", &budget),
        f.agent_with("node-b", &budget),
    );
    Fleet::ready(&[&a, &b]);
    let ranked = f.ranked();
    let canary_node = Fleet::node_of(&ranked[0]);
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "fleet",
        "wake",
        "--selector",
        "app=orders",
        "-n",
        "shop",
        "--name",
        "trip",
        "--canary",
        "1",
        "--steps",
        "100%",
        "--interval",
        "10m",
        "--ttl",
        "10m",
    ])
    .env("KUBECONFIG", f.dir.join("cli"))
    .env("RUST_LOG", "warn");
    let cli = Running::spawn(cmd);
    // The canary is awake (its wake's counts are the baseline) and held for the interval.
    assert!(
        cli.stdout()
            .wait_for(Duration::from_secs(120), |l| l
                .starts_with("canary (1) healthy: 1 awake"))
            .is_some(),
        "{}\n{}",
        cli.stdout().text(),
        cli.stderr().text()
    );
    // The daemon sets one logpoint on the hot line: the target's breaker switches it off.
    let (_, mut dap) = f.stub.take_session();
    let src = c_fixture_source("orders");
    let r = dap.request(&set_bps(
        10,
        &src.to_string_lossy(),
        json!([{"line": marker_line(&src, "process"), "logMessage": "DETRICS:trip={round}"}]),
    ));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    let out = cli.wait(Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(3), "{}\n{}", out.stdout, out.stderr);
    let halting = format!(
        "halting shop/trip: failure in canary (1): {canary_node}: {}: the CPU breaker switched off 1 probe(s) since the wake (",
        ranked[0]
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with(&halting)),
        "{halting}\n{}",
        out.stdout
    );
    assert!(
        out.stdout
            .trim_end()
            .ends_with("shop/trip: every target it woke sleeps"),
        "{}",
        out.stdout
    );
    // Exactly one trip, on the canary's node; the canary alone was woken, and it sleeps.
    let other = if canary_node == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    f.wait_reports(
        "trip",
        "halted after one trip",
        &[(canary_node, (0, 0, 0, 0, 1)), (other, (0, 0, 0, 0, 0))],
        &[&a, &b],
    );
    assert_eq!(f.registered(), ranked[..1]);
    assert!(f
        .stub
        .wait(Duration::from_secs(20), |s| s.unregistrations.len() == 1));
    // The count is the target's own: its /detrix/status says one probe switched off.
    let agent = if canary_node == "node-a" { &a } else { &b };
    let target = agent
        .targets()
        .into_iter()
        .find(|t| t["name"] == json!(ranked[0]))
        .expect("the canary's target");
    let id = target["id"].as_str().expect("id");
    let (s, st) = agent.get(&format!("/targets/{id}/detrix/status"));
    assert_eq!(
        (s, st["probes_switched_off"].clone()),
        (200, json!(1)),
        "{st}"
    );
    let w = f.wake_obj("trip");
    assert_eq!((w.spec.stage, w.spec.halted), (0, true));
    let node = w
        .status
        .expect("status")
        .nodes
        .into_iter()
        .find(|n| n.node == canary_node)
        .expect("the canary node's report");
    assert_eq!(
        node.message, "halted: every target this wake woke sleeps",
        "{node:?}"
    );
}

/// Point 5 with the real daemon (`DETRIX_BIN`): the canary-then-steps wake registers every
/// target with it, each connected as lldb-dap (`rust`) under its `<namespace>/<pod>/<container>`
/// name, and a metric on the canary's connection stores the order ids the canary printed.
#[test]
fn real_daemon_takes_every_stage_of_a_fleet_wake_and_stores_the_canarys_values() {
    let test = "real_daemon_takes_every_stage_of_a_fleet_wake_and_stores_the_canarys_values";
    let Some(bin) = common::daemon_bin(test) else {
        return;
    };
    let Some(mut f) = Fleet::new("realfleet") else {
        return;
    };
    let case = common::real::build("c");
    let d = common::Daemon::start(
        &bin,
        "fleet",
        &detrix_e2e::workspace_root().join("tests").join("fixtures"),
    );
    f.daemon_url = d.url.clone();
    let (a, b) = (f.agent("node-a"), f.agent("node-b"));
    Fleet::ready(&[&a, &b]);
    let ranked = f.ranked();
    let (code, out) = f.wake("real-wake", 1);
    assert_eq!(
        code,
        Some(0),
        "fleet wake: {out}\n{}\n{}",
        a.stderr.text(),
        b.stderr.text()
    );
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("fleet wake shop/real-wake: every stage reached")),
        "{out}"
    );
    // Every target: awake on its node, its connection live in the real daemon.
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for agent in [&a, &b] {
        let t = agent.wait_targets("awake", |t| t.iter().all(|t| t["state"] == "awake"));
        for t in t {
            ids.insert(
                t["name"].as_str().unwrap_or_default().to_owned(),
                t["connection_id"].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    assert_eq!(
        ids.keys().cloned().collect::<BTreeSet<_>>(),
        set(&ranked),
        "{ids:?}"
    );
    for (name, id) in &ids {
        let (s, row) = d.get(&format!("/api/v1/connections/{id}"));
        assert_eq!(
            (s, row["status"].clone(), row["language"].clone()),
            (200, json!(3), json!("rust")),
            "{name}: {row}"
        );
    }
    // A metric on the canary: the ids the daemon stores are ones the canary printed.
    let canary = &ranked[0];
    let pod: usize = canary
        .trim_start_matches("shop/orders-")
        .trim_end_matches("/app")
        .parse()
        .expect("pod number");
    let line = detrix_e2e::marker_line(&case.src, "process");
    let (s, r) = d.post(
        "/api/v1/metrics",
        &json!({"name": "fleet_canary", "connectionId": ids[canary], "location": format!("@{}#{line}", case.src.display()), "expressions": [case.id_expr], "enabled": true}),
    );
    assert_eq!(s, 201, "{r}");
    let events = common::real::events(&d, "fleet_canary", 3);
    for ev in events.iter().take(3) {
        let idv = common::real::value(ev, 0).as_i64().expect("an integer id");
        let printed = f.procs[pod].stdout.wait_for(Duration::from_secs(5), |l| {
            l.starts_with("process ") && detrix_e2e::parse_kv(l)["id"] == idv.to_string()
        });
        assert!(
            printed.is_some(),
            "the daemon stored id {idv} ({ev}); the canary printed no such order:\n{}",
            f.procs[pod].stdout.text()
        );
    }
}
