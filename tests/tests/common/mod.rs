//! A daemon emulator for the agent's tests: a REST stub that answers like the Detrix daemon
//! (health, register, unregister) and, like the daemon, connects back to the registered DAP port
//! during the registration and replays a handshake recorded from the real daemon
//! (`tests/golden/`), plus a small DAP client and HTTP client. std only, so it also runs where
//! nothing but the agent binary exists.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the emulator"
)]

pub mod intruder;
pub mod real;
pub mod serve;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use detrix_e2e::{agent_bin, workspace_root, Lines};
use serde_json::{json, Value};

pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A DAP request message.
pub fn req(seq: i64, command: &str, arguments: Value) -> Value {
    let mut r = json!({"type":"request","seq":seq,"command":command});
    r["arguments"] = arguments;
    r
}

/// A `setBreakpoints` request for `path`, as the daemon sends it.
pub fn set_bps(seq: i64, path: &str, bps: Value) -> Value {
    let mut args = json!({"source":{"path":path,"name":path}});
    args["breakpoints"] = bps;
    args["sourceModified"] = false.into();
    req(seq, "setBreakpoints", args)
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 client (Connection: close)
// ---------------------------------------------------------------------------------------------

/// One HTTP request; returns (status, body). Panics on transport errors.
pub fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    http_with(method, url, body, &[])
}

/// [`http`] with extra headers.
pub fn http_with(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    try_http(method, url, body, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// [`http_with`] returning transport errors.
pub fn try_http(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// url: {url}"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut s = TcpStream::connect(authority).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Parses a JSON body, naming it on failure.
pub fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

// ---------------------------------------------------------------------------------------------
// DAP client
// ---------------------------------------------------------------------------------------------

/// Frames `msg` as DAP.
pub fn frame(msg: &Value) -> Vec<u8> {
    let body = msg.to_string();
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Reads one frame strictly as the daemon's reader does: a malformed frame panics the test.
fn read_frame(r: &mut impl BufRead) -> Option<Value> {
    let body = detrix_e2e::read_dap_body(r).unwrap_or_else(|e| panic!("{e}"))?;
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "agent sent a malformed frame ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    assert!(
        v["seq"].is_i64(),
        "every message needs an integer seq (the daemon's reader dies otherwise): {v}"
    );
    match v["type"].as_str() {
        Some("response") => assert!(
            v["request_seq"].is_i64() && v["command"].is_string() && v["success"].is_boolean(),
            "response lacks request_seq/command/success: {v}"
        ),
        Some("event") => assert!(v["event"].is_string(), "event without a name: {v}"),
        _ => panic!("unknown message type from the agent: {v}"),
    }
    Some(v)
}

/// The daemon's side of one DAP connection.
pub struct Dap {
    stream: TcpStream,
    rx: Receiver<Value>,
    /// Every message received, in order.
    pub received: Vec<Value>,
    /// Events not yet taken by [`Dap::events`].
    pending_events: Vec<Value>,
    closed: bool,
    /// While true, the reader thread reads nothing more from the socket (a daemon that stops
    /// reading; see [`Dap::pause_reading`]).
    paused: Arc<(Mutex<bool>, Condvar)>,
}

impl Dap {
    pub fn connect(port: u16) -> Dap {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to the DAP port {port}: {e}"));
        stream.set_nodelay(true).ok();
        let rd = stream.try_clone().expect("clone the DAP socket");
        let (tx, rx) = mpsc::channel();
        let paused: Arc<(Mutex<bool>, Condvar)> = Arc::default();
        let gate = paused.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(rd);
            loop {
                let (lock, cv) = &*gate;
                let mut p = lock.lock().unwrap_or_else(PoisonError::into_inner);
                while *p {
                    p = cv.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
                drop(p);
                let Some(v) = read_frame(&mut r) else { break };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Dap {
            stream,
            rx,
            received: Vec::new(),
            pending_events: Vec::new(),
            closed: false,
            paused,
        }
    }

    /// Stops reading the socket (after the frame being read, and what the reader has buffered):
    /// the agent's writes then back up as against a daemon that stopped reading.
    pub fn pause_reading(&self) {
        *self.paused.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Reads the socket again.
    pub fn resume_reading(&self) {
        *self.paused.0.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.paused.1.notify_all();
    }

    pub fn send(&mut self, msg: &Value) {
        self.stream
            .write_all(&frame(msg))
            .unwrap_or_else(|e| panic!("send {msg}: {e}"));
    }

    fn recv(&mut self, deadline: Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(v) => {
                self.received.push(v.clone());
                Some(v)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.closed = true;
                None
            }
        }
    }

    /// Sends a request and waits up to `timeout` for its response (events meanwhile are
    /// kept); `None` when none came (for benchmarks, whose requests may take longer than a
    /// step).
    pub fn request_within(&mut self, msg: &Value, timeout: Duration) -> Option<Value> {
        self.send(msg);
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.recv(deadline)?;
            if v["type"] == "response" && v["request_seq"] == msg["seq"] {
                return Some(v);
            }
            if v["type"] == "event" {
                self.pending_events.push(v);
            }
        }
    }

    /// Sends a request and waits for its response (events meanwhile are kept).
    pub fn request(&mut self, msg: &Value) -> Value {
        self.send(msg);
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let v = self.recv(deadline).unwrap_or_else(|| {
                panic!("no response to {msg} within {STEP_TIMEOUT:?} (the daemon would wait 30 s)")
            });
            if v["type"] == "response" && v["request_seq"] == msg["seq"] {
                assert_eq!(
                    v["command"], msg["command"],
                    "response names another command"
                );
                return v;
            }
            if v["type"] == "event" {
                self.pending_events.push(v);
            }
        }
    }

    /// Waits until `n` events satisfying `pred` arrived (or the timeout); returns them all.
    pub fn events(
        &mut self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        while self.pending_events.iter().filter(|e| pred(e)).count() < n {
            match self.recv(deadline) {
                Some(v) if v["type"] == "event" => self.pending_events.push(v),
                Some(_) => {}
                None => break,
            }
        }
        let (take, keep): (Vec<Value>, Vec<Value>) =
            self.pending_events.drain(..).partition(|e| pred(e));
        self.pending_events = keep;
        take
    }

    /// Waits for the agent to close the connection.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            match self.recv(deadline) {
                Some(v) if v["type"] == "event" => self.pending_events.push(v),
                Some(_) => {}
                None if self.closed => break,
                None => return false,
            }
        }
        true
    }

    pub fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------------------------
// Golden transcripts
// ---------------------------------------------------------------------------------------------

pub fn golden_dir() -> PathBuf {
    workspace_root().join("tests").join("golden")
}

/// The `.jsonl` lines of a golden file.
pub fn golden_lines(rel: &str) -> Vec<Value> {
    let path = golden_dir().join(rel);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden transcript {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// The real daemon's handshake in a recording: its requests of the first session up to (not
/// including) the first `setBreakpoints`.
pub fn recorded_handshake(rel: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for l in golden_lines(rel) {
        if l["dir"] != "daemon->adapter" {
            continue;
        }
        if l["msg"]["command"] == "setBreakpoints" {
            break;
        }
        out.push(l["msg"].clone());
    }
    assert!(out.len() >= 3, "{rel}: no handshake found");
    out
}

// ---------------------------------------------------------------------------------------------
// REST stub
// ---------------------------------------------------------------------------------------------

/// What the stub saw and holds.
#[derive(Default)]
pub struct StubState {
    pub registrations: Vec<Value>,
    pub unregistrations: Vec<String>,
    pub health_checks: usize,
    /// DAP connections opened during registration, by connection id (newest last).
    pub sessions: Vec<(String, Dap)>,
    /// What the handshake got back, per registration.
    pub handshake_replies: Vec<Vec<Value>>,
    /// Connection names whose registration is refused (500, the daemon's error body), as a
    /// daemon that fails to set up the adapter would.
    pub refuse: Vec<String>,
    /// When each registration arrived (same order as `registrations`).
    pub registered_at: Vec<Instant>,
}

/// An emulated daemon on 127.0.0.1.
pub struct RestStub {
    pub url: String,
    pub state: Arc<(Mutex<StubState>, Condvar)>,
}

impl RestStub {
    /// Starts the stub. Registrations of `language` replay the handshake recorded in `golden`.
    pub fn start(golden_go: &str, golden_rust: &str) -> RestStub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the REST stub");
        Self::start_on(listener, golden_go, golden_rust)
    }

    /// [`RestStub::start`] on a listener the caller bound (a daemon that comes up late).
    pub fn start_on(listener: TcpListener, golden_go: &str, golden_rust: &str) -> RestStub {
        let url = format!("http://{}", listener.local_addr().expect("stub address"));
        let state: Arc<(Mutex<StubState>, Condvar)> = Arc::default();
        let shared = state.clone();
        let handshakes: HashMap<&'static str, Vec<Value>> = [
            ("go", recorded_handshake(golden_go)),
            ("rust", recorded_handshake(golden_rust)),
        ]
        .into_iter()
        .collect();
        let handshakes = Arc::new(handshakes);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                let handshakes = handshakes.clone();
                thread::spawn(move || serve_http(&conn, &shared, &handshakes));
            }
        });
        RestStub { url, state }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, StubState> {
        self.state.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `pred` holds on the state.
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&StubState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if pred(&g) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .state
                .1
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Takes the DAP connection of the newest registration.
    pub fn take_session(&self) -> (String, Dap) {
        self.lock()
            .sessions
            .pop()
            .expect("no DAP session: nothing registered")
    }
}

fn read_http_request(conn: &TcpStream) -> Option<(String, String, String)> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut len = 0usize;
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, String::from_utf8_lossy(&body).into_owned()))
}

fn respond(mut conn: &TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        404 => "Not Found",
        _ => "Error",
    };
    let _ = write!(conn, "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

fn serve_http(
    conn: &TcpStream,
    state: &Arc<(Mutex<StubState>, Condvar)>,
    handshakes: &HashMap<&'static str, Vec<Value>>,
) {
    let Some((method, path, body)) = read_http_request(conn) else {
        return;
    };
    let lock = || state.0.lock().unwrap_or_else(PoisonError::into_inner);
    match (method.as_str(), path.as_str()) {
        ("GET", "/health") => {
            lock().health_checks += 1;
            state.1.notify_all();
            respond(
                conn,
                200,
                r#"{"service":"detrix","status":"ok","uptimeSeconds":1,"adapterConnected":false}"#,
            );
        }
        ("POST", "/api/v1/connections") => {
            let reg: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let refused = {
                let mut g = lock();
                g.registrations.push(reg.clone());
                g.registered_at.push(Instant::now());
                g.refuse.iter().any(|n| reg["name"] == json!(n))
            };
            state.1.notify_all();
            if refused {
                respond(
                    conn,
                    500,
                    r#"{"error":"failed to connect to the debug adapter"}"#,
                );
                return;
            }
            // Like the daemon (contract §3.3): dial 127.0.0.1:<port>, handshake, then answer.
            let port = reg["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(0);
            let language = if reg["language"] == "go" {
                "go"
            } else {
                "rust"
            };
            let mut dap = Dap::connect(port);
            let mut replies = Vec::new();
            for req in &handshakes[language] {
                let mut req = req.clone();
                if req["command"] == "attach" && req["arguments"].get("pid").is_some() {
                    req["arguments"]["pid"] = reg["pid"].clone();
                }
                let r = dap.request(&req);
                replies.push(r);
            }
            let id = format!(
                "{:032x}",
                fnv(&format!(
                    "{}|{}|{}|{}",
                    reg["name"], reg["language"], reg["workspaceRoot"], reg["hostname"]
                ))
            );
            {
                let mut g = lock();
                g.handshake_replies.push(replies);
                g.sessions.push((id.clone(), dap));
            }
            state.1.notify_all();
            respond(
                conn,
                201,
                &json!({"connectionId": id, "status": "created"}).to_string(),
            );
        }
        ("DELETE", p) if p.starts_with("/api/v1/connections/") => {
            let id = p.trim_start_matches("/api/v1/connections/").to_string();
            let mut g = lock();
            g.unregistrations.push(id.clone());
            // The daemon closes the DAP socket and nothing else (contract §3.5).
            for (sid, dap) in &g.sessions {
                if *sid == id {
                    dap.close();
                }
            }
            drop(g);
            state.1.notify_all();
            respond(conn, 204, "");
        }
        _ => respond(conn, 404, r#"{"error":"not found"}"#),
    }
}

/// 128-bit FNV-1a, for stable emulated connection ids (the real daemon uses SHA-256).
fn fnv(s: &str) -> u128 {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in s.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    h
}

// ---------------------------------------------------------------------------------------------
// The agent under test
// ---------------------------------------------------------------------------------------------

/// A running `detrix-agent attach`; killed on drop.
pub struct AttachedAgent {
    pub child: Child,
    pub control: String,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl AttachedAgent {
    /// Starts `detrix-agent attach --pid PID ARGS…` and waits for its `Control plane:` line.
    pub fn start(pid: u32, args: &[&str], envs: &[(&str, &str)]) -> AttachedAgent {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("attach")
            .arg("--pid")
            .arg(pid.to_string())
            .args(args);
        for k in [
            "DETRIX_NAME",
            "DETRIX_DAEMON_URL",
            "DETRIX_CONTROL_HOST",
            "DETRIX_CONTROL_PORT",
            "DETRIX_DEBUG_PORT",
            "DETRIX_TOKEN",
            "DETRIX_HOME",
        ] {
            cmd.env_remove(k);
        }
        cmd.envs(envs.iter().copied())
            .env("RUST_LOG", "detrix_agent=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (child, control, stdout, stderr) = spawn_with_control_plane(&mut cmd);
        AttachedAgent {
            child,
            control,
            stdout,
            stderr,
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (s, b) = http("GET", &format!("{}{path}", self.control), None);
        (s, json_body(&b))
    }

    pub fn post(&self, path: &str, body: Option<&str>) -> (u16, Value) {
        let (s, b) = http("POST", &format!("{}{path}", self.control), body);
        (s, json_body(&b))
    }

    /// Puts the agent to sleep through its control plane; then `daemon`'s row for connection
    /// `id` is disconnected and no probe is left in process `pid` (`what` names the case).
    pub fn sleep_leaving_nothing(&self, daemon: &Daemon, id: &str, pid: u32, what: &str) {
        assert_eq!(
            self.post("/detrix/sleep", None),
            (200, json!({"status":"sleeping"}))
        );
        let (_, row) = daemon.get(&format!("/api/v1/connections/{id}"));
        assert_eq!(
            row["status"], 1,
            "{what}: the connection is gone after sleep: {row}"
        );
        assert_eq!(
            patched_code(pid),
            Vec::<u64>::new(),
            "{what}: no probe left in the target after sleep"
        );
    }

    /// SIGTERM: the agent ends with exit 0 within 10 s.
    pub fn terminate(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(
            self.wait_exit(Duration::from_secs(10)),
            Some(0),
            "agent stderr:\n{}",
            self.stderr.text()
        );
    }

    /// Waits for the agent to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AttachedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Probes left in a process
// ---------------------------------------------------------------------------------------------

/// Addresses in `pid`'s executable code whose bytes differ from the file: a uprobe writes an
/// int3 over its instruction in the process's copy of the page, so an empty list means no probe
/// is left anywhere in the program's own code.
pub fn patched_code(pid: u32) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read /proc/PID/maps");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let file = std::fs::File::open(format!("/proc/{pid}/exe")).expect("open /proc/PID/exe");
    let mut diffs = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') || Path::new(f[5]) != exe {
            continue;
        }
        let (start, end) = f[0].split_once('-').expect("range");
        let (start, end) = (
            u64::from_str_radix(start, 16).expect("hex range start in /proc/PID/maps"),
            u64::from_str_radix(end, 16).expect("hex range end in /proc/PID/maps"),
        );
        let off = u64::from_str_radix(f[2], 16).expect("hex offset in /proc/PID/maps");
        let len = usize::try_from(end - start).expect("a mapping fits in memory");
        let mut in_mem = vec![0u8; len];
        let mut on_disk = vec![0u8; len];
        mem.read_exact_at(&mut in_mem, start)
            .expect("read process code");
        let n = file.read_at(&mut on_disk, off).expect("read executable");
        for i in 0..n {
            if in_mem[i] != on_disk[i] {
                diffs.push(start + i as u64);
            }
        }
    }
    diffs
}

// ---------------------------------------------------------------------------------------------
// The real daemon (tests that run only with DETRIX_BIN)
// ---------------------------------------------------------------------------------------------

/// The daemon binary, or `None` after saying that the test did not run.
pub fn daemon_bin(test: &str) -> Option<PathBuf> {
    match std::env::var_os("DETRIX_BIN").filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "DETRIX_BIN={} is not a file; point it at a `detrix` daemon binary",
                p.display()
            );
            Some(p)
        }
        None => {
            // Straight to the fd: libtest would swallow println! of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "NOT RUN: {test}: real-daemon test did not run: DETRIX_BIN unset (set it to a `detrix` binary built from flashus/detrix to run it)"
            );
            None
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// Spawns `cmd` (an `attach` or `serve` with piped stdout and stderr) and waits for the
/// `Control plane: http://127.0.0.1:<port>` line the upstream harness reads; returns the child,
/// the control plane's URL and its output. Kills it and fails the test when no such line comes.
pub fn spawn_with_control_plane(cmd: &mut Command) -> (Child, String, Lines, Lines) {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", agent_bin().display()));
    let (stdout, _) = Lines::collect(child.stdout.take().expect("piped"));
    let (stderr, _) = Lines::collect(child.stderr.take().expect("piped"));
    let line = stdout
        .wait_for(Duration::from_secs(30), |l| {
            l.starts_with("Control plane: ")
        })
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "the agent printed no `Control plane:` line; stdout:\n{}\nstderr:\n{}",
                stdout.text(),
                stderr.text()
            )
        });
    let control = line.trim_start_matches("Control plane: ").to_string();
    assert!(
        control.starts_with("http://127.0.0.1:"),
        "control plane URL as the upstream harness reads it: {line}"
    );
    (child, control, stdout, stderr)
}

/// A daemon on loopback with a scratch directory (the configuration of real_daemon.rs); killed
/// on drop.
pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
}

impl Daemon {
    pub fn start(bin: &Path, tag: &str, base_path: &Path) -> Daemon {
        let dir = workspace_root()
            .join("target")
            .join("real-daemon")
            .join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home")).expect("create the daemon's home");
        std::fs::create_dir_all(dir.join("log")).expect("create the daemon's log directory");
        let (rest, grpc) = (free_port(), free_port());
        let d = dir.display();
        let config = format!(
            "[metadata]\nversion = \"1.0\"\n[project]\nbase_path = \"{}\"\n[storage]\nstorage_type = \"sqlite\"\npath = \"{d}/detrix.db\"\n\
             [storage.dlq_storage]\npath = \"{d}/dlq.db\"\n[daemon]\npid_file = \"{d}/daemon.pid\"\n[daemon.logging]\nlog_dir = \"{d}/log/\"\n\
             [api]\nport_fallback = false\n[api.rest]\nenabled = true\nhost = \"127.0.0.1\"\nport = {rest}\n[api.grpc]\nenabled = true\n\
             host = \"127.0.0.1\"\nport = {grpc}\n[api.auth]\nmode = \"disabled\"\n[output.gelf]\nenabled = false\n",
            base_path.display()
        );
        std::fs::write(dir.join("detrix.toml"), config).expect("write the daemon's config");
        let log =
            std::fs::File::create(dir.join("daemon.out")).expect("create the daemon's output file");
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(dir.join("detrix.toml"))
            .env("HOME", dir.join("home"))
            .env("RUST_LOG", "detrix_dap=debug,info")
            .env_remove("DETRIX_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("share the daemon's output file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let daemon = Daemon {
            child,
            url: format!("http://127.0.0.1:{rest}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_http("GET", &format!("{}/health", daemon.url), None, &[]).map(|(s, _)| s)
            != Ok(200)
        {
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer /health within 30 s; its log: {}",
                daemon.dir.join("daemon.out").display()
            );
            thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (s, b) = http("GET", &format!("{}{path}", self.url), None);
        (
            s,
            if b.is_empty() {
                Value::Null
            } else {
                json_body(&b)
            },
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, b) = http(
            "POST",
            &format!("{}{path}", self.url),
            Some(&body.to_string()),
        );
        (
            s,
            if b.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&b).unwrap_or(Value::String(b))
            },
        )
    }

    /// Stored events of a metric (newest first), waiting until at least `n` exist.
    pub fn events(&self, metric: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, v) = self.get(&format!("/api/v1/events?metricName={metric}&limit=100"));
            let list = v.as_array().cloned().unwrap_or_default();
            if s == 200 && list.len() >= n {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "metric {metric}: {} events after 20 s, wanted {n}; last answer {s} {v}; daemon log {}",
                list.len(),
                self.dir.join("daemon.out").display()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
