//! `detrix-agent serve --kubernetes` (node mode) against the stand-in API server
//! ([`kube_api`]): real fixture processes placed in cgroup v2 directories named the way
//! containerd's systemd driver names them (`cri-containerd-<id>.scope`), pods built from
//! `k8s-openapi` types whose `containerStatuses[].containerID` name those ids, and exact
//! assertions on the agent's target list through every change: a pod selected by label, one by
//! annotation (its language from another annotation), one opted out, one of another node; a pod
//! deleted; a pod added for a process already running; a watch that expires (410) resumed by a
//! fresh list without touching any target; the agent restarted, rebuilding the same list.

mod common;
mod kube_api;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::serve::Serve;
use common::RestStub;
use detrix_e2e::{require_root, Fixture};
use kube_api::pods::{cgroups, pod};
use kube_api::KubeApi;
use serde_json::{json, Value};

/// `serve --kubernetes` for node `node` against the stand-in API server at `kubeconfig`,
/// manual wake, no daemon.
fn start(kubeconfig: &Path, node: &str) -> Serve {
    start_with(kubeconfig, node, "http://127.0.0.1:9")
}

fn start_with(kubeconfig: &Path, node: &str, daemon_url: &str) -> Serve {
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    Serve::start(
        &[
            "--kubernetes",
            "--pod-selector",
            "app=orders",
            "--wake",
            "manual",
            "--daemon-url",
            daemon_url,
        ],
        &[
            // Generous daemon timeouts for a loaded test machine.
            ("DETRIX_HEALTH_CHECK_TIMEOUT", "20"),
            ("DETRIX_REGISTER_TIMEOUT", "20"),
            ("KUBECONFIG", &kubeconfig),
            ("NODE_NAME", node),
        ],
    )
}

/// (name, pid, rule, language, state) of every target, by name.
fn summary(serve: &Serve) -> Vec<(String, u64, String, String, String)> {
    let s = |t: &Value, k: &str| t[k].as_str().unwrap_or_default().to_owned();
    let mut out: Vec<_> = serve
        .targets()
        .iter()
        .map(|t| {
            (
                s(t, "name"),
                t["pid"].as_u64().unwrap_or(0),
                s(t, "rule"),
                s(t, "language"),
                s(t, "state"),
            )
        })
        .collect();
    out.sort();
    out
}

/// Target ids by name.
fn ids_by_name(serve: &Serve) -> BTreeMap<String, String> {
    serve
        .targets()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or_default().to_owned(),
                t["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits until the list (every target settled) equals `want`.
fn wait_for(serve: &Serve, what: &str, want: &[(String, u64, String, String, String)]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = summary(serve);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}:\n got {got:#?}\nwant {want:#?}\nserve stderr:\n{}",
            serve.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn target(name: &str, pid: u32, language: &str) -> (String, u64, String, String, String) {
    (
        name.to_owned(),
        u64::from(pid),
        format!("pod {name}"),
        language.to_owned(),
        "sleeping".to_owned(),
    )
}

#[test]
fn pods_of_the_node_become_targets_and_follow_the_api() {
    require_root();
    let Some(mut cg) = cgroups("list") else {
        return;
    };
    // Five containers' processes; each fixture is the orders program (C, debug info).
    let fx: Vec<Fixture> = (0..5).map(|_| Fixture::orders(50)).collect();
    let ids: Vec<String> = fx
        .iter()
        .enumerate()
        .map(|(i, f)| cg.container(i as u64 + 1, f.pid()))
        .collect();
    let api = KubeApi::start();
    let dir = std::env::temp_dir().join(format!("detrix-node-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    api.kubeconfig(&kubeconfig);

    let by_label = pod("orders-a", "node-a", &[("app", "orders")], &[], &ids[0]);
    let by_annotation = pod(
        "billing-b",
        "node-a",
        &[("app", "billing")],
        &[
            ("detrix.dev/observe", "true"),
            ("detrix.dev/language", "go"),
        ],
        &ids[1],
    );
    let opted_out = pod(
        "orders-c",
        "node-a",
        &[("app", "orders")],
        &[("detrix.dev/observe", "false")],
        &ids[2],
    );
    let other_node = pod("orders-d", "node-b", &[("app", "orders")], &[], &ids[3]);
    for p in [&by_label, &by_annotation, &opted_out, &other_node] {
        api.apply(p);
    }

    let serve = start(&kubeconfig, "node-a");
    // C is presented as Rust when the language is detected; the annotation says go.
    let mut want = vec![
        target("shop/billing-b/app", fx[1].pid(), "go"),
        target("shop/orders-a/app", fx[0].pid(), "rust"),
    ];
    wait_for(&serve, "first list", &want);
    let (lists, _, _) = api.counts();
    assert_eq!(lists, 1, "one list at start");

    // Pod deleted: its target goes; its process is untouched.
    api.delete(&by_annotation);
    want.remove(0);
    wait_for(&serve, "pod deleted", &want);
    assert!(Path::new(&format!("/proc/{}", fx[1].pid())).exists());

    // A pod that appears for a process already running.
    let late = pod("orders-e", "node-a", &[("app", "orders")], &[], &ids[4]);
    api.apply(&late);
    want.push(target("shop/orders-e/app", fx[4].pid(), "rust"));
    wait_for(&serve, "pod added", &want);
    let before = ids_by_name(&serve);

    // The watch expires (history compacted, connections dropped): the agent watches from its
    // last resourceVersion, is told 410, lists again — and no target is touched.
    api.expire();
    api.apply(&pod(
        "orders-e",
        "node-a",
        &[("app", "orders"), ("v", "2")],
        &[],
        &ids[4],
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.counts().2 == 0 || api.counts().0 < 2 {
        assert!(
            Instant::now() < deadline,
            "no re-list after 410: {:?}\n{}",
            api.counts(),
            serve.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    wait_for(&serve, "after 410 and a fresh list", &want);
    assert_eq!(
        ids_by_name(&serve),
        before,
        "the same targets, not added again"
    );
    let (lists, _, expired) = api.counts();
    assert_eq!((lists, expired), (2, 1));

    // The agent restarted: the same list, each target once.
    drop(serve);
    let serve = start(&kubeconfig, "node-a");
    wait_for(&serve, "after a restart", &want);
    assert_eq!(api.counts().0, 3);

    // The other node's agent sees only its pod.
    let node_b = start(&kubeconfig, "node-b");
    wait_for(
        &node_b,
        "node-b",
        &[target("shop/orders-d/app", fx[3].pid(), "rust")],
    );
    drop(node_b);
    drop(serve);
    drop(fx);
    drop(cg);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Registrations' (name, safeMode) and unregistrations so far.
fn daemon_saw(stub: &RestStub) -> (Vec<(String, bool)>, Vec<String>) {
    let st = stub.lock();
    (
        st.registrations
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_owned(),
                    r["safeMode"].as_bool().unwrap_or_default(),
                )
            })
            .collect(),
        st.unregistrations.clone(),
    )
}

#[test]
fn annotated_wake_registers_each_container_once_across_relists_and_restarts() {
    require_root();
    let Some(mut cg) = cgroups("wake") else {
        return;
    };
    let fx: Vec<Fixture> = (0..2).map(|_| Fixture::orders(50)).collect();
    let ids: Vec<String> = fx
        .iter()
        .enumerate()
        .map(|(i, f)| cg.container(i as u64 + 101, f.pid()))
        .collect();
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let api = KubeApi::start();
    let dir = std::env::temp_dir().join(format!("detrix-node-wake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let p1 = pod(
        "web-1",
        "node-a",
        &[],
        &[("detrix.dev/observe", "true"), ("detrix.dev/wake", "auto")],
        &ids[0],
    );
    let p2 = pod(
        "orders-2",
        "node-a",
        &[("app", "orders")],
        &[
            ("detrix.dev/wake", "auto"),
            ("detrix.dev/safe-mode", "true"),
        ],
        &ids[1],
    );
    api.apply(&p1);
    api.apply(&p2);

    let serve = start_with(&kubeconfig, "node-a", &stub.url);
    let awake = |name: &str, pid: u32| {
        let mut t = target(name, pid, "rust");
        t.4 = "awake".to_owned();
        t
    };
    wait_for(
        &serve,
        "both awake by their annotation",
        &[
            awake("shop/orders-2/app", fx[1].pid()),
            awake("shop/web-1/app", fx[0].pid()),
        ],
    );
    let connection = |name: &str| -> String {
        serve
            .targets()
            .iter()
            .find(|t| t["name"] == json!(name))
            .cloned()
            .and_then(|t| t["connection_id"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let orders_conn = connection("shop/orders-2/app");
    assert!(!orders_conn.is_empty());
    let mut regs = vec![
        ("shop/orders-2/app".to_owned(), true),
        ("shop/web-1/app".to_owned(), false),
    ];
    let sorted = |mut v: Vec<(String, bool)>| {
        v.sort();
        v
    };
    assert_eq!(
        (sorted(daemon_saw(&stub).0), daemon_saw(&stub).1),
        (regs.clone(), vec![])
    );

    // A watch that expires and a fresh list: the targets stay registered, once.
    api.expire();
    api.apply(&pod(
        "web-1",
        "node-a",
        &[("tier", "web")],
        &[("detrix.dev/observe", "true"), ("detrix.dev/wake", "auto")],
        &ids[0],
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.counts().0 < 2 {
        assert!(
            Instant::now() < deadline,
            "no re-list after 410: {:?}",
            api.counts()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        (sorted(daemon_saw(&stub).0), daemon_saw(&stub).1),
        (regs.clone(), vec![])
    );

    // Pod deleted: its target unregisters and leaves.
    api.delete(&p2);
    wait_for(
        &serve,
        "pod deleted",
        &[awake("shop/web-1/app", fx[0].pid())],
    );
    assert!(
        stub.wait(Duration::from_secs(10), |s| s.unregistrations.len() == 1),
        "{}",
        serve.stderr.text()
    );
    assert_eq!(daemon_saw(&stub).1, vec![orders_conn]);

    // The agent restarted (killed: no goodbye): the remaining pod registers once more, once.
    drop(serve);
    let serve = start_with(&kubeconfig, "node-a", &stub.url);
    wait_for(
        &serve,
        "after a restart",
        &[awake("shop/web-1/app", fx[0].pid())],
    );
    std::thread::sleep(Duration::from_millis(500));
    regs.push(("shop/web-1/app".to_owned(), false));
    let (r, _) = daemon_saw(&stub);
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(sorted(r), sorted(regs));
    drop(serve);
    drop(fx);
    drop(cg);
    let _ = std::fs::remove_dir_all(&dir);
}
