//! The client conformance scenarios of contract.md §2.3 (upstream `client_tests/scenarios.rs`
//! ST001–ST005, EP001/EP002, EH001, CC001) against `detrix-agent attach`, with the daemon
//! emulator as the daemon, plus the error shapes and remote-caller auth of §2.4–§2.5.

mod common;

use std::net::UdpSocket;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{http_with, json_body, try_http, AttachedAgent, RestStub};
use detrix_e2e::{require_root, Fixture};
use serde_json::{json, Value};

fn stub() -> RestStub {
    RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl")
}

#[test]
fn st001_ep001_ep002_initial_state_and_shapes() {
    require_root();
    let fixture = Fixture::orders_private(50);
    let stub = stub();
    let agent = AttachedAgent::start(
        fixture.pid(),
        &["--name", "conf-shapes"],
        &[("DETRIX_DAEMON_URL", stub.url.as_str())],
    );
    let port: u64 = agent.control.rsplit(':').next().unwrap().parse().unwrap();
    assert!(port > 0);
    assert_eq!(
        agent.get("/detrix/health"),
        (200, json!({"status":"ok","service":"detrix-client"}))
    );
    let (s, status) = agent.get("/detrix/status");
    assert_eq!(s, 200);
    assert_eq!(
        status,
        json!({"state":"sleeping","name":"conf-shapes","control_host":"127.0.0.1","control_port":port,"debug_port":0,
               "debug_port_active":false,"daemon_url":stub.url,"connection_id":null}),
        "DETRIX_DAEMON_URL is honoured and connection_id is null, not omitted"
    );
    let (s, info) = agent.get("/detrix/info");
    assert_eq!(s, 200);
    assert_eq!(
        (
            info["name"].clone(),
            info["pid"].clone(),
            info["language"].clone()
        ),
        (json!("conf-shapes"), json!(fixture.pid()), json!("rust")),
        "{info}"
    );
    // Unknown path or method: 404 {"error":"not found"}, as the Rust SDK.
    assert_eq!(
        agent.get("/detrix/wake"),
        (404, json!({"error":"not found"}))
    );
    assert_eq!(agent.get("/nope"), (404, json!({"error":"not found"})));
    // A wake body that is not JSON is a 400 that says what to send.
    let (s, e) = agent.post("/detrix/wake", Some("{nope"));
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("daemon_url"), "{e}");
    assert!(
        stub.lock().registrations.is_empty(),
        "nothing registers while asleep"
    );
}

#[test]
fn st002_st004_st005_wake_and_sleep_are_idempotent() {
    require_root();
    let fixture = Fixture::orders_private(50);
    let stub = stub();
    let agent = AttachedAgent::start(
        fixture.pid(),
        &["--daemon-url", &stub.url, "--name", "conf-idem"],
        &[],
    );
    assert_eq!(
        agent.post("/detrix/sleep", None),
        (200, json!({"status":"already_sleeping"}))
    );
    let (s, first) = agent.post("/detrix/wake", Some("{}"));
    assert_eq!(
        (s, first["status"].clone()),
        (200, json!("awake")),
        "{first}"
    );
    let port = first["debug_port"].as_u64().unwrap();
    assert!((1024..=65535).contains(&port), "{first}");
    let (s, again) = agent.post("/detrix/wake", None);
    assert_eq!(s, 200);
    assert_eq!(
        again,
        json!({"status":"already_awake","debug_port":port,"connection_id":first["connection_id"],"daemon_url":stub.url})
    );
    assert_eq!(
        stub.lock().registrations.len(),
        1,
        "already_awake does not register again"
    );
    assert_eq!(
        agent.post("/detrix/sleep", None),
        (200, json!({"status":"sleeping"}))
    );
    assert_eq!(
        agent.post("/detrix/sleep", None),
        (200, json!({"status":"already_sleeping"}))
    );
    assert_eq!(
        stub.lock().unregistrations,
        vec![first["connection_id"].as_str().unwrap().to_string()]
    );
    // Wake after sleep: a new registration with the same identity, so the same id.
    let (s, third) = agent.post("/detrix/wake", None);
    assert_eq!(
        (s, third["status"].clone(), third["connection_id"].clone()),
        (200, json!("awake"), first["connection_id"].clone())
    );
    assert_eq!(stub.lock().registrations.len(), 2);
}

#[test]
fn eh001_unreachable_daemon_fails_clearly_and_stays_asleep() {
    require_root();
    let fixture = Fixture::orders_private(50);
    let stub = stub();
    let agent = AttachedAgent::start(
        fixture.pid(),
        &[
            "--daemon-url",
            &stub.url,
            "--allow-daemon-url",
            "http://127.0.0.1:1",
        ],
        &[],
    );
    let (s, e) = agent.post(
        "/detrix/wake",
        Some(r#"{"daemon_url":"http://127.0.0.1:1"}"#),
    );
    assert_eq!(s, 503, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.starts_with("daemon not reachable at http://127.0.0.1:1: ") && msg.contains("/health"),
        "{msg}"
    );
    let (_, status) = agent.get("/detrix/status");
    assert_eq!(
        (
            status["state"].clone(),
            status["debug_port"].clone(),
            status["connection_id"].clone()
        ),
        (json!("sleeping"), json!(0), Value::Null)
    );
    assert_eq!(
        stub.lock().health_checks,
        0,
        "the override URL was used, not the configured one"
    );
}

#[test]
fn cc001_five_concurrent_wakes_make_one_registration() {
    require_root();
    let fixture = Fixture::orders_private(50);
    let stub = stub();
    let agent = AttachedAgent::start(fixture.pid(), &["--daemon-url", &stub.url], &[]);
    let url = format!("{}/detrix/wake", agent.control);
    let barrier = Arc::new(Barrier::new(5));
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let (s, b) = http_with("POST", &url, None, &[]);
                (s, json_body(&b))
            })
        })
        .collect();
    let results: Vec<(u16, Value)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let awake = results
        .iter()
        .filter(|(s, b)| *s == 200 && b["status"] == "awake")
        .count();
    let already = results
        .iter()
        .filter(|(s, b)| *s == 200 && b["status"] == "already_awake")
        .count();
    assert_eq!((awake, already), (1, 4), "{results:?}");
    let ids: std::collections::BTreeSet<String> = results
        .iter()
        .map(|(_, b)| b["connection_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert_eq!(stub.lock().registrations.len(), 1, "one daemon connection");
}

/// A non-loopback address of this machine, if it has one (the address a UDP socket would use
/// to reach a public address; nothing is sent).
fn own_remote_ip() -> Option<std::net::IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

const REFUSAL: &str = "unauthorized: only root, the agent's user and the daemon's user may call without a token; send Authorization: Bearer <token>";

#[test]
fn remote_callers_need_the_bearer_token() {
    require_root();
    let Some(ip) = own_remote_ip() else {
        println!("NOT RUN: remote_callers_need_the_bearer_token: this machine has no non-loopback address to call from (the rule itself is unit-tested in control::tests)");
        return;
    };
    let fixture = Fixture::orders_private(50);
    let stub = stub();
    let agent = AttachedAgent::start(
        fixture.pid(),
        &["--daemon-url", &stub.url, "--control-host", "0.0.0.0"],
        &[("DETRIX_TOKEN", "s3cret")],
    );
    let port = agent.control.rsplit(':').next().unwrap();
    let remote = format!("http://{ip}:{port}");
    let get = |path: &str, auth: &[(&str, &str)]| {
        let (s, b) = try_http("GET", &format!("{remote}{path}"), None, auth).unwrap();
        (s, json_body(&b))
    };
    assert_eq!(get("/detrix/health", &[]).0, 200, "health never needs auth");
    assert_eq!(get("/detrix/status", &[]), (401, json!({"error": REFUSAL})));
    assert_eq!(
        get("/detrix/nope", &[]),
        (401, json!({"error": REFUSAL})),
        "auth before routing"
    );
    assert_eq!(
        get("/detrix/status", &[("Authorization", "Bearer wrong")]).0,
        401
    );
    assert_eq!(
        get("/detrix/status", &[("Authorization", "Bearer s3cret")]).0,
        200
    );
    assert_eq!(
        agent.get("/detrix/status").0,
        200,
        "root on loopback passes without a token"
    );
    thread::sleep(Duration::from_millis(10));
}
