//! The trust boundary (issue #12 points 1–3), tried the way a local non-root user would: the
//! agent runs as root with the daemon emulator as its daemon, the intruder runs as `nobody`
//! (`setpriv`, then bash's `/dev/tcp`), and every test asserts the intruder got nothing while
//! the daemon's own session goes on.

mod common;

use std::io::Read as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::intruder::{as_nobody, parse_http, DAP_INTRUDER, HTTP_INTRUDER};
use common::{frame, http_with, json_body, AttachedAgent, Dap, RestStub, STEP_TIMEOUT};
use detrix_e2e::{
    c_fixture_source, descendants, fixtures_out_dir, marker_line, require_root, workspace_root,
    Fixture,
};
use serde_json::{json, Value};

const GO_GOLDEN: &str = "shared/go-delve.jsonl";
const RUST_GOLDEN: &str = "shared/rust-stub.jsonl";

fn nobody_http(
    method: &str,
    agent: &AttachedAgent,
    path: &str,
    body: &str,
    header: &str,
) -> (u16, Value) {
    let port = agent
        .control
        .rsplit(':')
        .next()
        .expect("the control address ends in a port");
    let (code, out, err) = as_nobody(HTTP_INTRUDER, &[method, port, path, body, header]);
    assert_eq!(code, 0, "{err}");
    parse_http(&out)
}

fn logpoint(seq: i64, path: &str, line: u32) -> Value {
    json!({"type":"request","seq":seq,"command":"setBreakpoints","arguments":{"source":{"path":path,"name":"orders.c"},
        "breakpoints":[{"line":line,"logMessage":"DETRICS:order_c={(o->id)}"}],"sourceModified":false}})
}

fn outputs(dap: &mut Dap, n: usize) -> Vec<Value> {
    dap.events(n, STEP_TIMEOUT, |e| {
        e["event"] == "output"
            && e["body"]["output"]
                .as_str()
                .is_some_and(|o| o.contains("order_c="))
    })
}

struct Awake {
    fixture: Fixture,
    stub: RestStub,
    agent: AttachedAgent,
    dap: Dap,
    debug_port: u16,
}

/// A root agent on a root target, woken by the emulated daemon, with one logpoint delivering.
fn awake(envs: &[(&str, &str)], extra: &[&str]) -> Awake {
    require_root();
    let fixture = Fixture::orders_private(20);
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let mut args = vec!["--daemon-url", stub.url.as_str()];
    args.extend_from_slice(extra);
    let agent = AttachedAgent::start(fixture.pid(), &args, envs);
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!(s, 200, "{wake}\n{}", agent.stderr.text());
    let debug_port = u16::try_from(
        wake["debug_port"]
            .as_u64()
            .expect("wake answers a debug_port"),
    )
    .expect("a port fits u16");
    let (_, mut dap) = stub.take_session();
    let src = c_fixture_source("orders");
    let r = dap.request(&logpoint(
        100,
        &src.to_string_lossy(),
        marker_line(&src, "process"),
    ));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    assert!(outputs(&mut dap, 2).len() >= 2, "{}", agent.stderr.text());
    Awake {
        fixture,
        stub,
        agent,
        dap,
        debug_port,
    }
}

#[test]
fn a_local_stranger_gets_nothing_from_the_dap_port_and_the_daemons_session_goes_on() {
    let mut a = awake(&[], &[]);
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let msgs: Vec<String> = [
        json!({"seq":1,"type":"request","command":"initialize","arguments":{"adapterID":"go"}}),
        json!({"seq":2,"type":"request","command":"attach","arguments":{"mode":"remote"}}),
        logpoint(3, &src.to_string_lossy(), line),
    ]
    .iter()
    .map(|m| String::from_utf8(frame(m)).unwrap())
    .collect();
    let mut args = vec![a.debug_port.to_string()];
    args.extend(msgs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let (code, got, err) = as_nobody(DAP_INTRUDER, &args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "",
        "the intruder received nothing"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the agent closed the intruder's connection at once"
    );
    assert!(
        a.agent
            .stderr
            .wait_for(STEP_TIMEOUT, |l| l.contains("DAP connection refused")
                && l.contains("uid 65534")
                && l.contains("neither root nor the user of the daemon"))
            .is_some(),
        "the refusal is logged with its reason:\n{}",
        a.agent.stderr.text()
    );
    // The daemon's session was not cancelled: values keep coming.
    let n = a.dap.received.len();
    assert!(
        outputs(&mut a.dap, 3).len() >= 3,
        "{}",
        a.agent.stderr.text()
    );
    assert!(a.dap.received.len() > n);

    // A second connection even from root never replaces the live session: closed, nothing sent.
    let mut second = Dap::connect(a.debug_port);
    second.send(&json!({"seq":1,"type":"request","command":"initialize","arguments":{}}));
    assert!(
        second.wait_closed(Duration::from_secs(10)),
        "a second session is closed"
    );
    assert_eq!(second.received, Vec::<Value>::new());
    assert!(
        a.agent
            .stderr
            .wait_for(STEP_TIMEOUT, |l| l
                .contains("DAP connection refused: a session is already live"))
            .is_some(),
        "{}",
        a.agent.stderr.text()
    );
    assert!(
        outputs(&mut a.dap, 3).len() >= 3,
        "the live session goes on"
    );
    a.fixture.assert_keeps_running(2);
}

/// A plain HTTP server that records every request it receives, raw.
fn recording_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let url = format!(
        "http://{}",
        l.local_addr().expect("a bound socket has an address")
    );
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            c.set_read_timeout(Some(Duration::from_millis(500))).ok();
            let mut buf = vec![0; 65536];
            let n = c.read(&mut buf).unwrap_or(0);
            log.lock()
                .expect("the request log lock")
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 36\r\nConnection: close\r\n\r\n{\"service\":\"detrix\",\"status\":\"ok\"}  ");
        }
    });
    (url, seen)
}

#[test]
fn a_local_stranger_cannot_drive_the_control_plane_and_the_token_goes_nowhere_else() {
    let (foreign, seen) = recording_server();
    let mut a = awake(&[("DETRIX_TOKEN", "s3cret")], &[]);
    let refusal = json!({"error": "unauthorized: only root, the agent's user and the daemon's user may call without a token; send Authorization: Bearer <token>"});
    assert_eq!(
        nobody_http("POST", &a.agent, "/detrix/sleep", "", ""),
        (401, refusal.clone())
    );
    assert_eq!(
        nobody_http("GET", &a.agent, "/detrix/status", "", ""),
        (401, refusal.clone())
    );
    assert_eq!(
        nobody_http("GET", &a.agent, "/detrix/nope", "", ""),
        (401, refusal.clone()),
        "auth before routing"
    );
    let body = json!({"daemon_url": foreign}).to_string();
    assert_eq!(
        nobody_http("POST", &a.agent, "/detrix/wake", &body, ""),
        (401, refusal.clone())
    );
    assert_eq!(
        nobody_http(
            "GET",
            &a.agent,
            "/detrix/status",
            "",
            "Authorization: Bearer s3cre"
        )
        .0,
        401,
        "a prefix of the token is not the token"
    );
    assert_eq!(
        nobody_http("GET", &a.agent, "/detrix/health", "", "").0,
        200,
        "health is open"
    );
    let (s, d) = nobody_http("GET", &a.agent, "/detrix/discover", "", "");
    assert_eq!(
        (s, d["name"].clone()),
        (200, json!(format!("detrix-client-{}", a.fixture.pid()))),
        "discover is open (contract §2.4): {d}"
    );
    // Still awake: the daemon's probes are in place and delivering.
    assert_eq!(a.agent.get("/detrix/status").1["state"], "awake");
    assert!(outputs(&mut a.dap, 3).len() >= 3);
    // Even root may not point the agent at a daemon the operator did not name.
    let (s, e) = a.agent.post("/detrix/sleep", None);
    assert_eq!((s, e), (200, json!({"status":"sleeping"})));
    let (s, e) = a.agent.post("/detrix/wake", Some(&body));
    assert_eq!(
        (s, e),
        (
            403,
            json!({"error": format!("daemon_url `{foreign}` is not the configured daemon; start the agent with --allow-daemon-url {foreign} to allow it")})
        )
    );
    assert_eq!(a.agent.get("/detrix/status").1["state"], "sleeping");
    // The token holder may drive it from any uid.
    let (s, w) = nobody_http(
        "POST",
        &a.agent,
        "/detrix/wake",
        "{}",
        "Authorization: Bearer s3cret",
    );
    assert_eq!((s, w["status"].clone()), (200, json!("awake")), "{w}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        seen.lock().unwrap().clone(),
        Vec::<String>::new(),
        "the foreign server was never contacted, so no Authorization header reached it"
    );
    assert_eq!(a.stub.lock().registrations.len(), 2);
}

#[test]
fn an_allowed_daemon_url_is_honoured() {
    require_root();
    let fixture = Fixture::orders_private(50);
    let (other, seen) = recording_server();
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = AttachedAgent::start(
        fixture.pid(),
        &["--daemon-url", &stub.url, "--allow-daemon-url", &other],
        &[("DETRIX_TOKEN", "s3cret")],
    );
    // The named one is used (it answers /health, then refuses the registration as a non-daemon).
    let (s, _) = agent.post(
        "/detrix/wake",
        Some(&json!({"daemon_url": format!("{other}/")}).to_string()),
    );
    assert_ne!(s, 403);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the allowed URL was contacted");
    assert!(
        seen[0].starts_with("GET /health ")
            && seen[0]
                .to_ascii_lowercase()
                .contains("authorization: bearer s3cret"),
        "{seen:?}"
    );
}

/// The C chain fixture of the breakpoint-mode tests, built under its own name.
fn chain_c() -> PathBuf {
    let out = fixtures_out_dir();
    std::fs::create_dir_all(&out).expect("create the fixtures directory");
    let exe = out.join("trust_chain_c");
    let st = Command::new("gcc")
        .args(["-g", "-O0", "-pthread", "-o"])
        .arg(&exe)
        .arg(workspace_root().join("tests/fixtures/bp/chain.c"))
        .status()
        .expect("run gcc");
    assert!(st.success());
    exe
}

/// TCP sockets (local address, state) held by `pid`.
fn tcp_sockets_of(pid: u32) -> Vec<(String, String)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|f| std::fs::read_link(f.path()).ok())
                .filter_map(|l| {
                    l.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for t in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for l in std::fs::read_to_string(t)
            .expect("read /proc/net/tcp")
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 9 && inodes.iter().any(|i| i == f[9]) {
                out.push((f[1].to_owned(), f[3].to_owned()));
            }
        }
    }
    out
}

#[test]
fn the_fallback_debugger_has_no_port_anyone_could_reach() {
    require_root();
    let exe = chain_c();
    let fixture = Fixture::start(&exe, &["20"]);
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = AttachedAgent::start(fixture.pid(), &["--daemon-url", &stub.url], &[]);
    assert_eq!(agent.post("/detrix/wake", None).0, 200);
    let (_, mut dap) = stub.take_session();
    let path = workspace_root()
        .join("tests/fixtures/bp/chain.c")
        .canonicalize()
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let probe = text.lines().position(|l| l.contains("PROBE:c */")).unwrap() + 1;
    let p = path.to_string_lossy().into_owned();
    let r = dap.request(&json!({"type":"request","seq":1,"command":"setBreakpoints","arguments":{"source":{"path":p,"name":p},
        "breakpoints":[{"line":probe,"logMessage":"DETRICS:name_len={(z)}\u{1f}{(long)strlen(name)}"}],"sourceModified":false}}));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    // Catch the debugger while a round runs and look at what it holds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = None;
    while seen.is_none() && Instant::now() < deadline {
        // lldb-dap runs under its guard (`fallback::guard`), a child of the agent.
        for (kid, _) in descendants(agent.child.id()) {
            let comm = std::fs::read_to_string(format!("/proc/{kid}/comm")).unwrap_or_default();
            if comm.contains("lldb") {
                let stdin = std::fs::read_link(format!("/proc/{kid}/fd/0")).ok();
                let stdout = std::fs::read_link(format!("/proc/{kid}/fd/1")).ok();
                let tcp = tcp_sockets_of(kid);
                if stdin.is_some() {
                    seen = Some((kid, stdin, stdout, tcp));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (kid, stdin, stdout, tcp) = seen.unwrap_or_else(|| {
        panic!(
            "no lldb-dap child seen during a round:\n{}",
            agent.stderr.text()
        )
    });
    let link = |l: &Option<PathBuf>| {
        l.as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    assert!(
        link(&stdin).starts_with("socket:["),
        "lldb-dap {kid} speaks over a socketpair on stdin: {stdin:?}"
    );
    assert_eq!(
        link(&stdin),
        link(&stdout),
        "one socketpair end as stdin and stdout"
    );
    assert_eq!(
        tcp.iter().filter(|(_, st)| st == "0A").count(),
        0,
        "lldb-dap listens on no TCP port: {tcp:?}"
    );
    // And its values still arrive.
    let outs = dap.events(1, Duration::from_secs(20), |e| {
        e["event"] == "output"
            && e["body"]["output"]
                .as_str()
                .unwrap_or("")
                .contains("name_len=")
    });
    assert_eq!(outs.len(), 1, "{}", agent.stderr.text());
}

#[test]
fn http_with_a_token_from_root_still_works() {
    // Root needs no token; a wrong token from root changes nothing (root is trusted by uid).
    require_root();
    let fixture = Fixture::orders_private(50);
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = AttachedAgent::start(
        fixture.pid(),
        &["--daemon-url", &stub.url],
        &[("DETRIX_TOKEN", "s3cret")],
    );
    let (s, b) = http_with(
        "GET",
        &format!("{}/detrix/status", agent.control),
        None,
        &[("Authorization", "Bearer wrong")],
    );
    assert_eq!(
        (s, json_body(&b)["state"].clone()),
        (200, json!("sleeping"))
    );
}

#[test]
fn the_running_agent_keeps_eight_capabilities_and_no_new_privs() {
    require_root();
    let fixture = Fixture::orders_private(50);
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let dir = std::env::temp_dir().join(format!("detrix-trust-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rec = dir.join("rec.jsonl");
    let rec_s = rec.to_string_lossy().into_owned();
    let agent = AttachedAgent::start(
        fixture.pid(),
        &["--daemon-url", &stub.url, "--dap-record", &rec_s],
        &[],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {status}"))
            .trim()
            .to_owned()
    };
    // CAP_DAC_READ_SEARCH (2), CAP_KILL (5), CAP_SETGID (6), CAP_SETUID (7),
    // CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21), CAP_PERFMON (38), CAP_BPF (39).
    let want = format!(
        "{:016x}",
        (1u64 << 2)
            | (1 << 5)
            | (1 << 6)
            | (1 << 7)
            | (1 << 19)
            | (1 << 21)
            | (1 << 38)
            | (1 << 39)
    );
    assert_eq!(
        (
            field("CapEff:"),
            field("CapPrm:"),
            field("CapBnd:"),
            field("CapInh:"),
            field("CapAmb:"),
            field("NoNewPrivs:")
        ),
        (
            want.clone(),
            want.clone(),
            want,
            "0000000000000000".to_owned(),
            "0000000000000000".to_owned(),
            "1".to_owned()
        )
    );
    // With only those, it still wakes, serves the daemon and captures.
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!(s, 200, "{wake}\n{}", agent.stderr.text());
    let (_, mut dap) = stub.take_session();
    let src = c_fixture_source("orders");
    let r = dap.request(&logpoint(
        100,
        &src.to_string_lossy(),
        marker_line(&src, "process"),
    ));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    assert!(outputs(&mut dap, 2).len() >= 2, "{}", agent.stderr.text());
    assert_eq!(
        std::fs::metadata(&rec).unwrap().permissions().mode() & 0o777,
        0o600,
        "the DAP recording is private"
    );
    drop(agent);
    // A recording path that is a symlink is refused, and its target untouched.
    let target = dir.join("target");
    std::fs::write(&target, "keep").unwrap();
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = Command::new(detrix_e2e::agent_bin())
        .args([
            "attach",
            "--pid",
            &fixture.pid().to_string(),
            "--dap-record",
        ])
        .arg(&link)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "{} is a symbolic link; the recording is never written through one",
            link.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_peers_get_a_sentence_and_the_agent_keeps_serving() {
    use std::io::Write as _;
    let mut a = awake(&[], &[]);
    // 200 idle connections: at most 16 are held, the rest closed at accept; the session goes on.
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", a.debug_port)).unwrap())
        .collect();
    assert!(
        a.agent
            .stderr
            .wait_for(STEP_TIMEOUT, |l| l.contains(
                "DAP connection refused: 16 connections are already open (MAX_DAP_CONNECTIONS)"
            ))
            .is_some(),
        "{}",
        a.agent.stderr.text()
    );
    assert!(outputs(&mut a.dap, 3).len() >= 3, "the session goes on");
    drop(idle);
    // 10 000 breakpoints in one request: one answer each, those past the cap say so.
    let src = c_fixture_source("orders");
    let path = src.to_string_lossy().into_owned();
    let line = marker_line(&src, "process");
    let mut bps: Vec<Value> = (1..=10_000u32).map(|l| json!({"line": l + 1000})).collect();
    bps[0] = json!({"line": line, "logMessage": "DETRICS:order_c={(o->id)}"});
    let r = a.dap.request(
        &json!({"type":"request","seq":200,"command":"setBreakpoints",
        "arguments":{"source":{"path":path},"breakpoints":bps}}),
    );
    let answers = r["body"]["breakpoints"].as_array().unwrap();
    assert_eq!(answers.len(), 10_000);
    assert_eq!(answers[0]["verified"], true, "{}", answers[0]);
    assert_eq!(
        answers[9_999],
        json!({"verified": false, "line": 11_000, "message": "entry 10000 of 10000 is over the limit of 256 breakpoints per file (MAX_BREAKPOINTS_PER_FILE); the first 256 are set"})
    );
    // An expression nested 100 000 deep: refused with the parser's sentence, no stack overflow.
    let deep = format!("DETRICS:deep={{({}o)}}", "*".repeat(100_000));
    let r = a.dap.request(
        &json!({"type":"request","seq":201,"command":"setBreakpoints",
        "arguments":{"source":{"path":path},"breakpoints":[{"line": line, "logMessage": deep}]}}),
    );
    let b = &r["body"]["breakpoints"][0];
    assert_eq!(b["verified"], false, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains(
            "more than 128 operators (`*`, `(`, `.`, `->`, `[`); the limit keeps evaluation bounded"
        ),
        "{b}"
    );
    // A frame over 16 MiB ends that connection with a logged sentence; the agent serves the next.
    a.dap.close();
    std::thread::sleep(Duration::from_millis(200));
    let mut big = std::net::TcpStream::connect(("127.0.0.1", a.debug_port)).unwrap();
    big.write_all(b"Content-Length: 16777217\r\n\r\n{").unwrap();
    big.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        big.read(&mut buf).unwrap_or(0),
        0,
        "closed without an answer"
    );
    assert!(
        a.agent
            .stderr
            .wait_for(STEP_TIMEOUT, |l| l.contains(
                "DAP frame of 16777217 bytes exceeds the 16777216-byte limit"
            ))
            .is_some(),
        "{}",
        a.agent.stderr.text()
    );
    let mut next = Dap::connect(a.debug_port);
    let r = next.request(
        &json!({"seq":1,"type":"request","command":"initialize","arguments":{"adapterID":"go"}}),
    );
    assert_eq!(r["success"], true, "{r}");
    a.fixture.assert_keeps_running(2);
}

#[test]
fn the_control_plane_holds_at_most_64_connections_and_serves_again_after() {
    require_root();
    let fixture = Fixture::orders_private(50);
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let agent = AttachedAgent::start(fixture.pid(), &["--daemon-url", &stub.url], &[]);
    let addr = agent.control.trim_start_matches("http://").to_owned();
    let idle: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = std::net::TcpStream::connect(&addr).unwrap();
    over.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let _ = std::io::Write::write_all(
        &mut over,
        b"GET /detrix/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let mut got = Vec::new();
    let _ = over.read_to_end(&mut got);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "",
        "the 65th connection is closed unanswered"
    );
    assert!(
        agent
            .stderr
            .wait_for(STEP_TIMEOUT, |l| l.contains(
                "control-plane connection refused: 64 are already open (MAX_CONNECTIONS)"
            ))
            .is_some(),
        "{}",
        agent.stderr.text()
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.get("/detrix/status").1["state"], "sleeping");
}

#[test]
fn absurd_timeouts_and_non_ascii_conditions_get_a_sentence_not_a_panic() {
    require_root();
    let fixture = Fixture::orders_private(50);
    let out = Command::new(detrix_e2e::agent_bin())
        .args(["attach", "--pid", &fixture.pid().to_string()])
        .env("DETRIX_HEALTH_CHECK_TIMEOUT", "1e300")
        .output()
        .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        (
            Some(1),
            "error: DETRIX_HEALTH_CHECK_TIMEOUT must be a number of seconds above 0 and at most 3600, got 1e300"
        )
    );
    let out = Command::new(detrix_e2e::agent_bin())
        .args(detrix_e2e::capture_args(
            fixture.pid(),
            "orders.c:33",
            &["round"],
            &["--count", "1", "--when", "rounδ > 1"],
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: invalid expression `rounδ`") && !err.contains("panicked"),
        "{err}"
    );
}
