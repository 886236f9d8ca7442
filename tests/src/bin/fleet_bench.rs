//! Fleet wake at scale (issue #14 point 6): `--pods` simulated pods (default 200) over two node
//! agents (`serve --kubernetes`, node-a and node-b) against the stand-in API server, each pod
//! one `orders` fixture as pid 1 of its own PID namespace in a containerd-named cgroup, and the
//! daemon emulator. Measured, in one run:
//!
//! * `fleet wake --canary 1 --steps 10%,50%,100% --interval 0s`: per stage, the time from the
//!   previous stage's last registration (from the CLI's start for the canary) to this stage's
//!   last, and the time since the CLI started — the daemon emulator stamps each registration;
//!   a stage starts only once the one before is healthy, so the registration log is the stages
//!   in order;
//! * the baseline, same run, same targets: one bulk `POST /detrix/wake` on each agent's host
//!   control plane at once (no stages, no API server), to every target registered;
//! * the CLI's API requests over the wake (it follows the object with a watch: a constant
//!   number, whatever the stages' durations);
//! * API requests per node per minute while idle (targets awake, nothing changing), counted by
//!   the stand-in per bearer token over `--idle-seconds` (default 300: kube-rs re-opens each
//!   watch about every 290 s, so a shorter window can see none).
//!
//! Root (cgroups, uprobes, PID namespaces). Run alone:
//!
//! ```sh
//! cargo xtask bench fleet                       # DETRIX_BENCH_FLEET_PODS=N, _IDLE_SECONDS=S; or:
//! cargo run -p detrix-e2e --release --bin fleet_bench -- --agent target/release/detrix-agent [--pods 200] [--idle-seconds 300]
//! ```

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/kube_api/mod.rs"]
mod kube_api;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::Serve;
use common::RestStub;
use kube_api::pods::{can_unshare, cgroups, pod, Contained};
use kube_api::{KubeApi, Res};

struct Args {
    pods: usize,
    idle: Duration,
}

fn args() -> Args {
    let mut a = Args {
        pods: 200,
        idle: Duration::from_secs(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            // agent_bin() reads it.
            "--agent" => std::env::set_var("DETRIX_AGENT_BIN", &value),
            "--pods" => a.pods = value.parse().expect("--pods N"),
            "--idle-seconds" => {
                a.idle = Duration::from_secs(value.parse().expect("--idle-seconds S"));
            }
            other => {
                panic!("unknown argument {other}; use --agent PATH, --pods N, --idle-seconds S")
            }
        }
    }
    a
}

fn agent(api_dir: &std::path::Path, node: &str, daemon: &str) -> Serve {
    let kubeconfig = api_dir.join(node).to_string_lossy().into_owned();
    Serve::start(
        &[
            "--kubernetes",
            "--pod-selector",
            "app=orders",
            "--wake",
            "manual",
            "--daemon-url",
            daemon,
        ],
        &[
            ("DETRIX_HEALTH_CHECK_TIMEOUT", "60"),
            ("DETRIX_REGISTER_TIMEOUT", "60"),
            ("KUBECONFIG", &kubeconfig),
            ("NODE_NAME", node),
            ("RUST_LOG", "warn"),
        ],
    )
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

fn main() {
    let a = args();
    detrix_e2e::require_root();
    if !can_unshare("fleet_bench") {
        return;
    }
    let Some(mut cg) = cgroups("bench") else {
        return;
    };
    let n = a.pods;
    let t_setup = Instant::now();
    let procs: Vec<Contained> = (0..n).map(|_| Contained::orders(1000)).collect();
    let api = KubeApi::start();
    for (i, p) in procs.iter().enumerate() {
        let id = cg.container(5000 + i as u64, p.host_pid);
        let node = if i.is_multiple_of(2) {
            "node-a"
        } else {
            "node-b"
        };
        api.apply(&pod(
            &format!("orders-{i}"),
            node,
            &[("app", "orders")],
            &[],
            &id,
        ));
    }
    let dir = std::env::temp_dir().join(format!("detrix-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for who in ["node-a", "node-b", "cli"] {
        api.kubeconfig_as(&dir.join(who), &format!("token-{who}"));
    }
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let agents = [
        agent(&dir, "node-a", &stub.url),
        agent(&dir, "node-b", &stub.url),
    ];
    let half = [n.div_ceil(2), n / 2];
    // Every target loads its own eBPF program and reads its debug info while starting: on a
    // small machine the agents' event loops answer slowly meanwhile, so a slow answer is
    // just asked again.
    for (ag, want) in agents.iter().zip(half) {
        wait("every target started", Duration::from_secs(3600), || {
            std::thread::sleep(Duration::from_millis(500));
            let url = format!("{}/detrix/targets", ag.control);
            let Ok((200, body)) = common::try_http("GET", &url, None, &[]) else {
                return false;
            };
            let v = common::json_body(&body);
            let t = v["targets"].as_array().cloned().unwrap_or_default();
            t.len() == want && t.iter().all(|t| t["state"] == "sleeping")
        });
    }
    let setup = t_setup.elapsed();

    // Baseline: a bulk wake on both hosts at once.
    let posts: Vec<_> = agents
        .iter()
        .map(|ag| {
            let url = format!("{}/detrix/wake", ag.control);
            std::thread::spawn(move || common::try_http("POST", &url, Some("{}"), &[]))
        })
        .collect();
    let baseline = wait("bulk wake", Duration::from_secs(1200), || {
        stub.lock().registrations.len() == n
    });
    for p in posts {
        // Timed by the registrations; the answer (one entry per target) may come late.
        if let Ok(Err(e)) = p.join() {
            eprintln!("fleet_bench: the bulk wake's answer: {e}");
        }
    }
    for ag in &agents {
        if let Err(e) = common::try_http(
            "POST",
            &format!("{}/detrix/sleep", ag.control),
            Some("{}"),
            &[],
        ) {
            eprintln!("fleet_bench: the bulk sleep's answer: {e}");
        }
    }
    wait("bulk sleep", Duration::from_secs(1200), || {
        stub.lock().unregistrations.len() == n
    });

    // The staged wake, through the CLI.
    let before = stub.lock().registrations.len();
    let t_cli = Instant::now();
    let cli_requests_before = api.requests("token-cli");
    let out = Command::new(detrix_e2e::agent_bin())
        .args([
            "fleet",
            "wake",
            "--selector",
            "app=orders",
            "-n",
            "shop",
            "--name",
            "bench",
            "--canary",
            "1",
            "--steps",
            "10%,50%,100%",
            "--interval",
            "0s",
            "--ttl",
            "2h",
            "--stage-timeout",
            "20m",
        ])
        .env("KUBECONFIG", dir.join("cli"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run fleet wake");
    let cli_total = t_cli.elapsed();
    let cli_requests = api.requests("token-cli") - cli_requests_before;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fleet wake failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at: Vec<Instant> = stub.lock().registered_at[before..].to_vec();
    assert_eq!(at.len(), n, "every target registered once:\n{text}");
    let cumulative = [1, n.div_ceil(10), n.div_ceil(2), n];
    let names = ["canary (1)", "10%", "50%", "100%"];

    // Idle: everything awake, nothing changing.
    let idle_from = [api.requests("token-node-a"), api.requests("token-node-b")];
    let (wk0, pd0) = (api.counts_of(Res::Wake), api.counts_of(Res::Pod));
    std::thread::sleep(a.idle);
    let idle_to = [api.requests("token-node-a"), api.requests("token-node-b")];
    let (wk1, pd1) = (api.counts_of(Res::Wake), api.counts_of(Res::Pod));
    let minutes = a.idle.as_secs_f64() / 60.0;

    println!(
        "fleet wake: {n} pods over 2 node agents (setup, every target started: {:.1} s)",
        setup.as_secs_f64()
    );
    println!(
        "{:<28} {:>8} {:>12} {:>14}",
        "stage", "targets", "stage (s)", "since wake (s)"
    );
    let mut prev = t_cli;
    for (name, count) in names.iter().zip(cumulative) {
        let last = at[..count].iter().max().copied().unwrap_or(t_cli);
        println!(
            "{:<28} {:>8} {:>12.3} {:>14.3}",
            name,
            count,
            last.duration_since(prev).as_secs_f64(),
            last.duration_since(t_cli).as_secs_f64()
        );
        prev = last;
    }
    let staged = prev.duration_since(t_cli);
    println!(
        "{:<28} {:>8} {:>12} {:>14.3}   (CLI exited at {:.3} s)",
        "staged wake, total",
        n,
        "",
        staged.as_secs_f64(),
        cli_total.as_secs_f64()
    );
    println!(
        "{:<28} {:>8} {:>12} {:>14.3}",
        "baseline: bulk wake",
        n,
        "",
        baseline.as_secs_f64()
    );
    println!(
        "ratio staged / bulk: {:.2} (4 stages, each: the CLI advances on the report its watch brings, each node lists the pods, wakes, reports)",
        staged.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "API requests by the CLI over the whole wake: {cli_requests} (pods count, create, list + watch of the object, one patch per stage; nothing on a timer)"
    );
    println!(
        "idle API requests per node per minute over {:.0} s: node-a {:.2}, node-b {:.2} (both nodes together: pods lists {} watches {}, DetrixWake lists {} watches {})",
        a.idle.as_secs_f64(),
        (idle_to[0] - idle_from[0]) as f64 / minutes,
        (idle_to[1] - idle_from[1]) as f64 / minutes,
        pd1.lists - pd0.lists,
        pd1.watches - pd0.watches,
        wk1.lists - wk0.lists,
        wk1.watches - wk0.watches
    );

    // Put everything to sleep before the processes go.
    let _ = Command::new(detrix_e2e::agent_bin())
        .args(["fleet", "sleep", "bench", "-n", "shop"])
        .env("KUBECONFIG", dir.join("cli"))
        .stdout(Stdio::null())
        .status();
    drop(agents);
    drop(procs);
    drop(cg);
    let _ = std::fs::remove_dir_all(&dir);
}
