//! `detrix-agent serve` end to end, with the daemon emulator: a rule selects two instances of
//! a fixture, both are listed with distinct names, one is woken (registers, gets a DAP
//! session), and when it is killed the daemon gets `exited` + `terminated`, its registration
//! goes and it leaves the list. Also: the host control plane's error shapes and the drop-in
//! single-target endpoints, churn, restarts, namespaces, and a pre-fork server's workers.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::Serve;
use common::{http, json_body, set_bps, try_http, RestStub};
use detrix_e2e::{
    agent_bin, build_c_fixture, c_fixture_source, fixtures_out_dir, marker_line, require_root,
    Build, Fixture, Lines,
};
use serde_json::{json, Value};

/// The control plane's answer to a caller with no trusted uid and no valid token (issue #12).
const UNAUTHORIZED: &str =
    "unauthorized: only root, the agent's user and the daemon's user may call without a token; send Authorization: Bearer <token>";

/// A copy of the orders fixture under a name only this test uses, so the rule selects no
/// other test's processes.
struct Exe(std::path::PathBuf);

impl Exe {
    fn copy(tag: &str) -> Exe {
        let src = build_c_fixture("orders", Build::Debug);
        let dst = fixtures_out_dir().join(format!("serve-{tag}-{}", std::process::id()));
        let status = Command::new("cp").arg(&src).arg(&dst).status().expect("cp");
        assert!(status.success());
        Exe(dst)
    }
}

impl Drop for Exe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn by_pid(targets: &[Value], pid: u32) -> Option<&Value> {
    targets.iter().find(|t| t["pid"] == json!(pid))
}

#[test]
fn two_instances_listed_one_woken_killed_and_gone() {
    require_root();
    let exe = Exe::copy("two");
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let serve = Serve::start(
        &[
            "--select",
            &format!("exe={}", exe.0.display()),
            "--daemon-url",
            &stub.url,
        ],
        &[],
    );
    let base = exe.0.file_name().unwrap().to_string_lossy().into_owned();
    let a = Fixture::start(&exe.0, &["-1", "50"]);
    let t0 = Instant::now();
    let b = Fixture::start(&exe.0, &["-1", "50"]);
    let list = serve.wait_targets("both instances sleeping", |t| {
        [a.pid(), b.pid()]
            .iter()
            .all(|&p| by_pid(t, p).is_some_and(|x| x["state"] == "sleeping"))
    });
    println!(
        "both targets sleeping {} ms after the first started",
        t0.elapsed().as_millis()
    );
    assert_eq!(list.len(), 2, "only the selected processes: {list:#?}");
    let ta = by_pid(&list, a.pid()).unwrap().clone();
    let tb = by_pid(&list, b.pid()).unwrap().clone();
    assert_eq!(
        ta["name"],
        json!(base),
        "the first instance gets the plain name"
    );
    assert_eq!(
        tb["name"],
        json!(format!("{base}-2")),
        "a second live instance is told apart"
    );
    for (t, f) in [(&ta, &a), (&tb, &b)] {
        assert_eq!(t["ns_pid"], json!(f.pid()), "no PID namespace: same pid");
        assert_eq!(t["exe"], json!(exe.0.display().to_string()));
        assert_eq!(t["comm"], json!(&base[..base.len().min(15)]));
        assert_eq!(t["container"], Value::Null);
        assert_eq!(t["language"], json!("rust"), "C is presented as rust");
        assert_eq!(t["connection_id"], Value::Null);
        assert_eq!(t["debug_port"], json!(0));
        assert_eq!(t["rule"], json!("--select #1"));
        assert_eq!(
            t["build_id"],
            json!(gnu_build_id(&exe.0)),
            "the build identity of /detrix/info is in the target list (issue #17)"
        );
    }
    assert!(
        stub.lock().registrations.is_empty(),
        "manual wake: nothing registers by itself"
    );

    // Wake A: it registers under its name and the daemon's DAP session opens.
    let id = ta["id"].as_str().unwrap().to_owned();
    let (s, w) = serve.post(&format!("/detrix/targets/{id}/wake"), None);
    assert_eq!(s, 200, "{w}");
    assert_eq!(w["status"], "awake");
    let port = w["debug_port"].as_u64().unwrap();
    assert!(port > 0);
    {
        let st = stub.lock();
        assert_eq!(st.registrations.len(), 1);
        assert_eq!(st.registrations[0]["name"], json!(base));
        assert_eq!(st.registrations[0]["port"], json!(port));
        assert_eq!(
            st.registrations[0]["controlPlaneUrl"],
            json!(format!("{}/targets/{id}", serve.control))
        );
    }
    let list = serve.targets();
    let now_a = by_pid(&list, a.pid()).unwrap();
    assert_eq!(now_a["state"], "awake");
    assert_eq!(now_a["connection_id"], w["connection_id"]);
    assert_eq!(now_a["debug_port"], json!(port));
    assert_eq!(by_pid(&list, b.pid()).unwrap()["state"], "sleeping");
    // Its drop-in endpoints answer exactly as `attach`'s control plane.
    let (s, st) = serve.get(&format!("/targets/{id}/detrix/status"));
    assert_eq!(s, 200);
    assert_eq!(st["state"], "awake");
    assert_eq!(st["name"], json!(base));
    assert_eq!(st["connection_id"], w["connection_id"]);
    let (s, again) = serve.post(&format!("/targets/{id}/detrix/wake"), None);
    assert_eq!((s, &again["status"]), (200, &json!("already_awake")));
    let (_, mut dap) = stub.take_session();

    // Kill A: exited + terminated on its session, unregistered, gone from the list; B stays.
    let pid_a = a.pid();
    drop(a);
    let events = dap.events(2, Duration::from_secs(5), |e| {
        e["event"] == "exited" || e["event"] == "terminated"
    });
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["exited", "terminated"], "{events:?}");
    let conn = w["connection_id"].as_str().unwrap().to_owned();
    assert!(
        stub.wait(Duration::from_secs(5), |s| s
            .unregistrations
            .contains(&conn)),
        "the registration is deleted"
    );
    let list = serve.wait_targets("the killed target leaves", |t| by_pid(t, pid_a).is_none());
    assert_eq!(list.len(), 1);
    assert_eq!(by_pid(&list, b.pid()).unwrap()["state"], "sleeping");
    // Bulk wake and sleep by selector: one answer per target, as its own endpoint gave.
    let idb = by_pid(&list, b.pid()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sel = format!(r#"{{"select":"exe={},user=0"}}"#, exe.0.display());
    let (s, v) = serve.post("/detrix/wake", Some(&sel));
    assert_eq!(s, 200, "{v}");
    let t = v["targets"].as_array().unwrap();
    assert_eq!(t.len(), 1, "{v}");
    assert_eq!(
        (&t[0]["id"], &t[0]["status"], &t[0]["body"]["status"]),
        (&json!(idb), &json!(200), &json!("awake"))
    );
    assert_eq!(stub.lock().registrations.len(), 2);
    let (s, v) = serve.post("/detrix/sleep", Some("{}"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"targets": [{"id": idb, "status": 200, "body": {"status": "sleeping"}}]})
    );
    let (s, v) = serve.post("/detrix/wake", Some(r#"{"select":"comm=nothing-here"}"#));
    assert_eq!(
        (s, v),
        (200, json!({"targets": []})),
        "a selector matching nothing wakes nothing"
    );
    assert_eq!(
        serve.post("/detrix/wake", Some(r#"{"select":"colour=red"}"#)),
        (
            400,
            json!({"error": "select `colour=red`: `colour` is not a select key; use exe, comm, cmdline, cgroup, container, user"})
        )
    );
    assert_eq!(
        serve.post("/detrix/sleep", Some("[1]")),
        (
            400,
            json!({"error": "the sleep body is not {} or {\"select\":\"key=value,…\"} (keys: exe, comm, cmdline, cgroup, container, user)"})
        )
    );
    assert_eq!(
        stub.lock().registrations.len(),
        2,
        "nothing more registered"
    );
    drop(b);
    serve.wait_targets("both gone", <[Value]>::is_empty);
}

#[test]
fn host_control_plane_shapes() {
    require_root();
    let serve = Serve::start(&["--select", "comm=no-such-comm-x"], &[]);
    let (s, h) = serve.get("/detrix/health");
    assert_eq!(
        (s, h),
        (
            200,
            json!({"status":"ok","service":"detrix-agent-serve","targets":0})
        )
    );
    assert_eq!(serve.get("/detrix/targets"), (200, json!({"targets": []})));
    assert_eq!(
        serve.post("/detrix/targets/9/wake", None),
        (
            404,
            json!({"error": "no target `9`; GET /detrix/targets lists them"})
        )
    );
    assert_eq!(
        serve.post("/detrix/targets/x/sleep", None),
        (
            404,
            json!({"error": "no target `x`; GET /detrix/targets lists them"})
        )
    );
    assert_eq!(
        serve.get("/targets/3/detrix/status"),
        (
            404,
            json!({"error": "no target `3`; GET /detrix/targets lists them"})
        )
    );
    assert_eq!(serve.get("/nope"), (404, json!({"error": "not found"})));
    assert_eq!(
        serve.get("/detrix/targets/1/wake"),
        (404, json!({"error": "not found"}))
    );
}

#[test]
fn bad_rules_exit_non_zero_with_one_sentence() {
    let out = Command::new(agent_bin())
        .args(["serve", "--select", "colour=red"])
        .output()
        .expect("run serve");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: --select #1 `colour=red`: `colour` is not a select key; use exe, comm, cmdline, cgroup, container, user"
    );
    assert!(out.stdout.is_empty(), "no control plane for a bad config");
}

/// This machine's address on a non-loopback interface, if it has one.
fn own_remote_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[test]
fn remote_callers_need_the_bearer_token() {
    require_root();
    let Some(ip) = own_remote_ip() else {
        println!("NOT RUN: remote_callers_need_the_bearer_token: no non-loopback address to call from (the rule is unit-tested in control::tests)");
        return;
    };
    let exe = Exe::copy("remote");
    let serve = Serve::start(
        &[
            "--select",
            &format!("exe={}", exe.0.display()),
            "--control-host",
            "0.0.0.0",
        ],
        &[("DETRIX_TOKEN", "s3cret")],
    );
    let fixture = Fixture::start(&exe.0, &["-1", "50"]);
    let list = serve.wait_targets("the fixture sleeping", |t| {
        by_pid(t, fixture.pid()).is_some_and(|x| x["state"] == "sleeping")
    });
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let port = serve.control.rsplit(':').next().unwrap().to_owned();
    let remote = format!("http://{ip}:{port}");
    let call = |method: &str, path: &str, auth: &[(&str, &str)]| {
        let (s, b) = try_http(method, &format!("{remote}{path}"), None, auth).unwrap();
        (s, json_body(&b))
    };
    let bearer: &[(&str, &str)] = &[("Authorization", "Bearer s3cret")];
    let wrong: &[(&str, &str)] = &[("Authorization", "Bearer nope")];
    assert_eq!(
        call("GET", "/detrix/health", &[]).0,
        200,
        "health never needs auth"
    );
    let refused = (401, json!({"error": UNAUTHORIZED}));
    assert_eq!(call("GET", "/detrix/targets", &[]), refused);
    assert_eq!(call("GET", "/detrix/targets", wrong), refused);
    assert_eq!(call("POST", "/detrix/wake", &[]), refused);
    assert_eq!(call("POST", "/detrix/sleep", &[]), refused);
    assert_eq!(call("GET", "/metrics", &[]), refused);
    assert_eq!(
        call("POST", &format!("/detrix/targets/{id}/wake"), &[]),
        refused
    );
    assert_eq!(
        call("POST", &format!("/detrix/targets/{id}/sleep"), &[]),
        refused
    );
    assert_eq!(
        call("GET", &format!("/targets/{id}/detrix/status"), &[]),
        refused
    );
    assert_eq!(
        call("POST", &format!("/targets/{id}/detrix/wake"), &[]),
        refused
    );
    let (s, v) = call("GET", "/detrix/targets", bearer);
    assert_eq!(s, 200);
    assert_eq!(v["targets"][0]["pid"], json!(fixture.pid()));
    let (s, st) = call("GET", &format!("/targets/{id}/detrix/status"), bearer);
    assert_eq!((s, &st["state"]), (200, &json!("sleeping")));
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

/// The value of an unlabelled sample, or of `name{labels}`, in a Prometheus exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample `{name}` in:\n{text}"))
}

#[test]
fn churn_of_200_processes_every_one_a_target_nothing_left() {
    const N: usize = 200;
    require_root();
    // A copy of `sleep` under a name only this test uses; it has no debug info, so each
    // target is listed `failed` until it exits, exercising the whole add → remove path.
    let sleep = which("sleep");
    let exe = fixtures_out_dir().join(format!("serve-churn-{}", std::process::id()));
    std::fs::copy(&sleep, &exe).expect("copy sleep");
    let _cleanup = Exe(exe.clone());
    let serve = Serve::start(&["--select", &format!("exe={}", exe.display())], &[]);
    let pid = serve.child.id();
    let (fd_dir, task_dir) = (format!("/proc/{pid}/fd"), format!("/proc/{pid}/task"));
    // The host's one eBPF program is loaded at start and held for the host (its maps, program
    // and rings are descriptors): count from when it is, and its loading thread has idled out.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http("GET", &format!("{}/metrics", serve.control), None)
        .1
        .contains("\ndetrix_ebpf_load_seconds ")
    {
        assert!(
            Instant::now() < deadline,
            "the host's eBPF program never loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let (fds0, threads0) = (count(&fd_dir), count(&task_dir));
    let mut children = Vec::new();
    for _ in 0..N {
        children.push(Command::new(&exe).arg("0.2").spawn().expect("spawn"));
        std::thread::sleep(Duration::from_millis(3));
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }
    for mut c in children {
        let _ = c.wait();
    }
    serve.wait_targets("every churned target gone", <[Value]>::is_empty);
    let (s, text) = http("GET", &format!("{}/metrics", serve.control), None);
    assert_eq!(s, 200);
    assert_eq!(
        sample(&text, "detrix_serve_targets_found_total"),
        N as f64,
        "every one seen"
    );
    assert_eq!(
        sample(&text, "detrix_serve_exec_to_target_seconds_count"),
        N as f64
    );
    let max = sample(&text, "detrix_serve_exec_to_target_max_seconds");
    let within = |le: &str| {
        sample(
            &text,
            &format!("detrix_serve_exec_to_target_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    let median_bucket = ["0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1"]
        .into_iter()
        .find(|le| within(le) >= N as f64 / 2.0)
        .unwrap_or("+Inf");
    println!(
        "serve churn: exec → target over {N}: median ≤ {median_bucket} s, max {:.3} ms, mean {:.3} ms",
        max * 1000.0,
        sample(&text, "detrix_serve_exec_to_target_seconds_sum") / N as f64 * 1000.0
    );
    // How soon (the 100 ms goal) is the benchmark's row `exec → target`, not this test's: a
    // loaded CI machine would fail a timing that says nothing about correctness.
    // Descriptors and threads back where they were (blocking threads idle out after 2 s). A
    // descriptor fewer is no leak (the runtime may close one it held at the start).
    let deadline = Instant::now() + Duration::from_secs(10);
    while (count(&fd_dir) > fds0 || count(&task_dir) != threads0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (fds1, threads1) = (count(&fd_dir), count(&task_dir));
    println!("serve churn: fds {fds0} → {fds1}, threads {threads0} → {threads1}");
    assert!(
        fds1 <= fds0,
        "serve holds {fds1} file descriptors after the churn, {fds0} before"
    );
    assert_eq!(threads1, threads0, "serve's threads back to the start");
}

fn which(name: &str) -> std::path::PathBuf {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no `{name}` in /usr/bin or /bin"))
}

#[test]
fn systemd_unit_verifies() {
    let unit = detrix_e2e::workspace_root().join("deploy/systemd/detrix-agent.service");
    let text = std::fs::read_to_string(&unit).expect("the unit is in the repository");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("NOT RUN: systemd_unit_verifies: systemd-analyze is not installed");
        return;
    }
    // Point ExecStart at the agent just built, in a scratch copy.
    let dir = fixtures_out_dir().join(format!("unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let copy = dir.join("detrix-agent.service");
    let bin = agent_bin();
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/detrix-agent", &bin.display().to_string()),
    )
    .expect("write the copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert_eq!(stderr.trim(), "", "verify is clean");
}

/// A copy of the `orders` fixture tagged `tag`, the daemon emulator, and a `serve` selecting that
/// copy with `--wake auto` against the emulator.
fn auto_wake_serve(tag: &str) -> (Exe, RestStub, Serve) {
    let exe = Exe::copy(tag);
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let serve = Serve::start(
        &[
            "--select",
            &format!("exe={}", exe.0.display()),
            "--wake",
            "auto",
            "--daemon-url",
            &stub.url,
        ],
        &[],
    );
    (exe, stub, serve)
}

#[test]
fn wake_auto_reregisters_a_restart_under_the_same_id_and_sigterm_unregisters() {
    require_root();
    let (exe, stub, mut serve) = auto_wake_serve("auto");
    let base = exe.0.file_name().unwrap().to_string_lossy().into_owned();
    let awake = |serve: &Serve, pid: u32| {
        serve.wait_targets("the target awake by itself", |t| {
            by_pid(t, pid).is_some_and(|x| x["state"] == "awake")
        });
        by_pid(&serve.targets(), pid).unwrap()["connection_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let a = Fixture::start(&exe.0, &["-1", "50"]);
    let first = awake(&serve, a.pid());
    assert_eq!(stub.lock().registrations.len(), 1);
    assert_eq!(stub.lock().registrations[0]["name"], json!(base));
    drop(a);
    assert!(
        stub.wait(Duration::from_secs(5), |s| s
            .unregistrations
            .contains(&first)),
        "the exited target's registration is deleted"
    );
    // The service restarts: same name, so the daemon derives the same connection id (and
    // re-sends its stored metrics).
    let t0 = Instant::now();
    let b = Fixture::start(&exe.0, &["-1", "50"]);
    let second = awake(&serve, b.pid());
    println!(
        "restart → registered again in {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(second, first, "same connection id after a restart");
    assert_eq!(stub.lock().registrations[1]["name"], json!(base));
    // SIGTERM: every target sleeps (unregisters), exit 0 within 2 s.
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(serve.child.id() as i32, libc::SIGTERM) };
    let code = loop {
        if let Ok(Some(st)) = serve.child.try_wait() {
            break st.code();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "serve still running 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, Some(0), "stderr:\n{}", serve.stderr.text());
    assert_eq!(
        stub.lock()
            .unregistrations
            .iter()
            .filter(|c| **c == first)
            .count(),
        2,
        "both registrations deleted, the last by the SIGTERM"
    );
    drop(b);
}

/// SIGTERM with a probe on every line of a target: every probe removed, the registration
/// deleted and exit 0 within 2 s, the target running on untouched. (Perf-event uprobes are
/// removed one at a time, ~100 ms each: 20 of them took the 2 s alone; `uprobe_multi` links
/// are removed side by side.)
#[test]
fn sigterm_with_a_probe_on_every_line_exits_0_within_2_s() {
    require_root();
    let (exe, stub, mut serve) = auto_wake_serve("term");
    let mut t = Fixture::start(&exe.0, &["-1", "50"]);
    serve.wait_targets("the target awake", |l| {
        by_pid(l, t.pid()).is_some_and(|x| x["state"] == "awake")
    });
    let (_, mut dap) = stub.take_session();
    let src = detrix_e2e::c_fixture_source("orders");
    let lines = std::fs::read_to_string(&src).unwrap().lines().count();
    let bps: Vec<Value> = (1..=lines)
        .map(|l| json!({"line": l, "logMessage": format!("DETRICS:l{l}={{g_counter}}")}))
        .collect();
    let r = dap.request(&set_bps(2, &src.display().to_string(), json!(bps)));
    let verified = r["body"]["breakpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["verified"] == json!(true))
        .count();
    assert!(verified >= 20, "only {verified} lines took a probe: {r}");
    let (_, m) = http("GET", &format!("{}/metrics", serve.control), None);
    let kind = m
        .lines()
        .find(|l| l.starts_with("detrix_uprobe_link_kind{"))
        .unwrap_or("detrix_uprobe_link_kind: none");
    let conn = by_pid(&serve.targets(), t.pid()).unwrap()["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(serve.child.id() as i32, libc::SIGTERM) };
    let code = loop {
        if let Ok(Some(st)) = serve.child.try_wait() {
            break st.code();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "serve still running 2 s after SIGTERM with {verified} probes ({kind})"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    println!(
        "SIGTERM with {verified} probes ({kind}) → exit in {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(code, Some(0), "stderr:\n{}", serve.stderr.text());
    assert!(
        stub.lock().unregistrations.contains(&conn),
        "the registration is deleted"
    );
    // The target runs on: it prints its next rounds.
    let before = t.last_round().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.last_round().unwrap_or(0) < before + 2 {
        assert!(
            Instant::now() < deadline && t.is_running(),
            "the target stopped after the agent left (round {before})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `wake = auto` while the daemon is down: the target waits asleep, retrying, and wakes once the
/// daemon comes up — no operator needed.
#[test]
fn wake_auto_retries_until_the_daemon_comes_up() {
    require_root();
    let exe = Exe::copy("late");
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let serve = Serve::start(
        &[
            "--select",
            &format!("exe={}", exe.0.display()),
            "--wake",
            "auto",
            "--daemon-url",
            &url,
        ],
        &[],
    );
    let a = Fixture::start(&exe.0, &["-1", "50"]);
    assert!(
        serve
            .stderr
            .wait_for(Duration::from_secs(20), |l| l
                .contains("automatic wake failed; retrying"))
            .is_some(),
        "the first wake fails while no daemon listens:\n{}",
        serve.stderr.text()
    );
    assert_eq!(
        by_pid(&serve.targets(), a.pid()).unwrap()["state"],
        json!("sleeping")
    );
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is still free");
    let stub = RestStub::start_on(listener, "shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    serve.wait_targets("the target awake once the daemon is up", |t| {
        by_pid(t, a.pid()).is_some_and(|x| x["state"] == "awake")
    });
    assert_eq!(
        stub.lock().registrations.len(),
        1,
        "registered exactly once"
    );
}

#[test]
fn sighup_reloads_rules_without_touching_targets_still_selected() {
    require_root();
    let (ea, eb) = (Exe::copy("hup-a"), Exe::copy("hup-b"));
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let conf = fixtures_out_dir().join(format!("serve-hup-{}.toml", std::process::id()));
    let rule = |e: &Exe| format!("[[rule]]\nselect = {{ exe = \"{}\" }}\n", e.0.display());
    let write = |text: &str| std::fs::write(&conf, text).expect("write the config");
    write(&format!("daemon_url = \"{}\"\n{}", stub.url, rule(&ea)));
    let serve = Serve::start(&["--config", &conf.display().to_string()], &[]);
    let a = Fixture::start(&ea.0, &["-1", "50"]);
    let b = Fixture::start(&eb.0, &["-1", "50"]);
    let list = serve.wait_targets("A sleeping", |t| {
        by_pid(t, a.pid()).is_some_and(|x| x["state"] == "sleeping")
    });
    assert!(by_pid(&list, b.pid()).is_none(), "B is not selected yet");
    let id_a = by_pid(&list, a.pid()).unwrap()["id"].clone();
    let (s, w) = serve.post(
        &format!("/detrix/targets/{}/wake", id_a.as_str().unwrap()),
        None,
    );
    assert_eq!((s, &w["status"]), (200, &json!("awake")));
    let hup = || {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(serve.child.id() as i32, libc::SIGHUP) };
    };
    // Both selected now (A by a rule in another place): A untouched, B found.
    write(&format!(
        "daemon_url = \"{}\"\n{}{}",
        stub.url,
        rule(&eb),
        rule(&ea)
    ));
    hup();
    let list = serve.wait_targets("B found after the reload", |t| {
        by_pid(t, b.pid()).is_some_and(|x| x["state"] == "sleeping")
    });
    let now_a = by_pid(&list, a.pid()).unwrap();
    assert_eq!(now_a["id"], id_a, "A is the same target");
    assert_eq!(now_a["state"], "awake", "A still awake");
    assert_eq!(now_a["connection_id"], w["connection_id"]);
    assert_eq!(
        stub.lock().registrations.len(),
        1,
        "A did not register again"
    );
    // A bad file: refused with its sentence, the rules stay.
    write("[[rule]]\nselect = { colour = \"red\" }\n");
    hup();
    assert!(
        serve
            .stderr
            .wait_for(Duration::from_secs(5), |l| l.contains("reload refused"))
            .is_some_and(|l| l.ends_with(&format!(
                "serve: reload refused, the old rules stay: {} line 2: select `colour` is not a select key; use exe, comm, cmdline, cgroup, container, user",
                conf.display()
            ))),
        "stderr:\n{}",
        serve.stderr.text()
    );
    assert_eq!(serve.targets().len(), 2);
    // Only B selected: A is let go (unregistered), B untouched.
    let id_b = by_pid(&serve.targets(), b.pid()).unwrap()["id"].clone();
    write(&format!("daemon_url = \"{}\"\n{}", stub.url, rule(&eb)));
    hup();
    let list = serve.wait_targets("A let go", |t| by_pid(t, a.pid()).is_none());
    assert_eq!(list.len(), 1);
    assert_eq!(by_pid(&list, b.pid()).unwrap()["id"], id_b);
    let conn = w["connection_id"].as_str().unwrap().to_owned();
    assert!(stub.wait(Duration::from_secs(5), |s| s
        .unregistrations
        .contains(&conn)));
    let _ = std::fs::remove_file(&conf);
}

/// Runs `exe` as `/app/<name>` under another root and in new PID and mount namespaces:
/// `unshare --pid --mount --fork`, the system's library directories bound read-only into the
/// root, then `chroot`. Returns the unshare child and the fixture's stdout.
fn start_in_namespaces(exe: &std::path::Path, root: &std::path::Path) -> (Child, Lines) {
    let name = exe
        .file_name()
        .expect("the fixture path names a file")
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(root.join("app")).expect("root/app");
    std::fs::copy(exe, root.join("app").join(&name)).expect("copy the fixture into the root");
    let mut binds = String::new();
    for d in ["/lib", "/lib64", "/usr"] {
        let p = std::path::Path::new(d);
        if p.is_dir() && !p.is_symlink() {
            std::fs::create_dir_all(root.join(&d[1..])).expect("mount point");
            binds.push_str(&format!(
                "mount --bind -o ro {d} {}/{} && ",
                root.display(),
                &d[1..]
            ));
        } else if p.is_symlink() {
            let target = std::fs::read_link(p).expect("symlink");
            let _ = std::os::unix::fs::symlink(target, root.join(&d[1..]));
        }
    }
    let script = format!(
        "mount --make-rprivate / && {binds}exec chroot {} /app/{name} -1 50",
        root.display()
    );
    let mut child = Command::new("unshare")
        .args(["--pid", "--mount", "--fork", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run unshare");
    let (lines, _) = Lines::collect(child.stdout.take().expect("piped"));
    assert!(
        lines
            .wait_for(Duration::from_secs(10), |l| l == "ready pid=1")
            .is_some(),
        "the fixture did not start as pid 1 of its namespace: {}",
        lines.text()
    );
    (child, lines)
}

#[test]
fn a_process_in_other_pid_and_mount_namespaces_under_another_root() {
    require_root();
    if Command::new("unshare").arg("--version").output().is_err() {
        println!(
            "NOT RUN: a_process_in_other_pid_and_mount_namespaces: `unshare` is not installed"
        );
        return;
    }
    let exe = Exe::copy("ns");
    let name = exe.0.file_name().unwrap().to_string_lossy().into_owned();
    let root = fixtures_out_dir().join(format!("serve-root-{}", std::process::id()));
    let host_path = root.join("app").join(&name);
    // One rule by the path inside the root, one by the host's path to the same file.
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let conf = fixtures_out_dir().join(format!("serve-ns-{}.toml", std::process::id()));
    std::fs::write(
        &conf,
        format!(
            "daemon_url = \"{}\"\n[[rule]]\nselect = {{ exe = \"/app/{name}\" }}\nname = \"inside-{{ns_pid}}\"\n[[rule]]\nselect = {{ exe = \"{}\" }}\nname = \"host\"\n",
            stub.url,
            host_path.display()
        ),
    )
    .expect("config");
    let serve = Serve::start(&["--config", &conf.display().to_string()], &[]);
    let (mut child, _out) = start_in_namespaces(&exe.0, &root);
    let list = serve.wait_targets("the namespaced fixture sleeping", |t| {
        t.iter().any(|x| x["state"] == "sleeping")
    });
    assert_eq!(list.len(), 1, "{list:#?}");
    let t = &list[0];
    assert_eq!(t["ns_pid"], json!(1), "pid in its own namespace");
    let host_pid = t["pid"].as_u64().unwrap();
    assert!(host_pid > 1);
    assert_eq!(
        t["exe"],
        json!(format!("/app/{name}")),
        "the path as the process sees it"
    );
    assert_eq!(
        t["name"],
        json!("inside-1"),
        "the first rule (inside path) selected it"
    );
    assert_eq!(t["language"], json!("rust"));
    // It is a working target: it wakes and registers with its host pid.
    let id = t["id"].as_str().unwrap();
    let (s, w) = serve.post(&format!("/detrix/targets/{id}/wake"), None);
    assert_eq!((s, &w["status"]), (200, &json!("awake")), "{w}");
    assert_eq!(stub.lock().registrations[0]["pid"], json!(host_pid));
    let _ = child.kill();
    let _ = child.wait();
    // SAFETY: kill(2) on the fixture, whose namespace's init we just killed anyway.
    unsafe { libc::kill(host_pid as i32, libc::SIGKILL) };
    serve.wait_targets("the namespaced fixture gone", <[Value]>::is_empty);
    let _ = std::fs::remove_file(&conf);
    // Never recursive: were a bind mount still there, only empty directories go.
    let _ = std::fs::remove_file(&host_path);
    for d in ["app", "lib", "lib64", "usr", "bin", "sbin"] {
        let p = root.join(d);
        if p.is_symlink() {
            let _ = std::fs::remove_file(&p);
        } else {
            let _ = std::fs::remove_dir(&p);
        }
    }
    let _ = std::fs::remove_dir(&root);
}

#[test]
fn a_target_that_execs_another_program_is_let_go() {
    require_root();
    // A copy of `sh` under a name only this test uses; after a moment it becomes `sleep`.
    let exe = fixtures_out_dir().join(format!("serve-sh-{}", std::process::id()));
    std::fs::copy(which("sh"), &exe).expect("copy sh");
    let _cleanup = Exe(exe.clone());
    let serve = Serve::start(&["--select", &format!("exe={}", exe.display())], &[]);
    let mut child = Command::new(&exe)
        .args(["-c", "sleep 0.5; exec sleep 30"])
        .spawn()
        .expect("spawn");
    let pid = child.id();
    serve.wait_targets("the shell listed", |t| by_pid(t, pid).is_some());
    serve.wait_targets("the shell let go once it is `sleep`", |t| {
        by_pid(t, pid).is_none()
    });
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "the process itself still runs"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The GNU build-id `readelf -n` shows for `exe`.
fn gnu_build_id(exe: &std::path::Path) -> String {
    let out = std::process::Command::new("readelf")
        .arg("-n")
        .arg(exe)
        .output()
        .expect("run readelf (binutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("{} has no GNU build-id", exe.display()))
        .to_owned()
}

/// Issue #13 points 4 and 5 with the real daemon (`DETRIX_BIN`; the emulator cannot add
/// metrics): three targets — C, Rust, Go — behind one `serve` with `wake = auto`, each
/// registered on its own; a metric on each through the daemon's REST API stores exactly the ids
/// each program printed. Then the C target is killed and started again: it comes back awake
/// under the same connection id and its events resume (the latency is printed, not asserted:
/// speed lives in the benchmark).
#[test]
fn real_daemon_drives_three_languages_behind_one_serve() {
    let Some(bin) = common::daemon_bin("real_daemon_drives_three_languages_behind_one_serve")
    else {
        return;
    };
    require_root();
    let d = common::Daemon::start(
        &bin,
        "serve3",
        &detrix_e2e::workspace_root().join("tests").join("fixtures"),
    );
    let tag = std::process::id();
    let cases: Vec<(&str, common::real::Case, Exe)> = ["c", "rust", "go"]
        .into_iter()
        .map(|kind| {
            let case = common::real::build(kind);
            let exe = fixtures_out_dir().join(format!("serve3-{kind}-{tag}"));
            std::fs::copy(&case.exe, &exe).expect("copy the fixture");
            (kind, case, Exe(exe))
        })
        .collect();
    let serve = Serve::start(
        &[
            "--select",
            &format!("exe={}/serve3-*-{tag}", fixtures_out_dir().display()),
            "--wake",
            "auto",
            "--daemon-url",
            &d.url,
        ],
        &[],
    );
    let mut fixtures: Vec<Fixture> = cases
        .iter()
        .map(|(_, _, exe)| Fixture::start(&exe.0, &["-1", "100"]))
        .collect();
    let awake_ids = |serve: &Serve, fixtures: &[Fixture]| -> Vec<String> {
        let list = serve.wait_targets("every target awake by itself", |t| {
            fixtures
                .iter()
                .all(|f| by_pid(t, f.pid()).is_some_and(|x| x["state"] == "awake"))
        });
        fixtures
            .iter()
            .map(|f| {
                by_pid(&list, f.pid()).unwrap()["connection_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let ids = awake_ids(&serve, &fixtures);
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        3,
        "a daemon connection per target: {ids:?}"
    );
    for (((kind, case, _), id), fixture) in cases.iter().zip(&ids).zip(&fixtures) {
        let (_, row) = d.get(&format!("/api/v1/connections/{id}"));
        let lang = if *kind == "go" { "go" } else { "rust" };
        assert_eq!(
            (row["status"].clone(), row["language"].clone()),
            (json!(3), json!(lang)),
            "{kind}: {row}"
        );
        let line = detrix_e2e::marker_line(&case.src, "process");
        let metric = format!("serve3_{kind}");
        let (s, r) = d.post(
            "/api/v1/metrics",
            &json!({"name": metric, "connectionId": id, "location": format!("@{}#{line}", case.src.display()), "expressions": [case.id_expr], "enabled": true}),
        );
        assert_eq!(s, 201, "{kind}: {r}");
        for ev in common::real::events(&d, &metric, 3).iter().take(3) {
            let idv = common::real::value(ev, 0).as_i64().unwrap();
            let printed = fixture.process_line(idv - 1000, Duration::from_secs(5));
            assert_eq!(
                detrix_e2e::parse_kv(&printed)["id"],
                idv.to_string(),
                "{kind}: stored {ev}, printed {printed}"
            );
        }
    }

    // Restart the C target: same name, so the same connection id; the daemon re-sends the
    // metric and events resume — told apart from the old program's by their thread name, which
    // carries the new pid.
    drop(fixtures.remove(0));
    let t0 = Instant::now();
    let again = Fixture::start(&cases[0].2 .0, &["-1", "100"]);
    let id = awake_ids(&serve, std::slice::from_ref(&again)).remove(0);
    assert_eq!(
        id, ids[0],
        "the restarted service has its old connection id"
    );
    let thread = format!("thread-{}", again.pid());
    let newest = loop {
        let (_, v) = d.get("/api/v1/events?metricName=serve3_c&limit=100");
        if let Some(ev) = v
            .as_array()
            .and_then(|evs| evs.iter().find(|e| e["threadName"] == json!(thread)))
        {
            break ev.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no event from the restarted program (pid {}) in 30 s; daemon log {}\nserve stderr:\n{}",
            again.pid(),
            d.dir.join("daemon.out").display(),
            serve.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "serve3: restart → first event of the new process stored after {} ms",
        t0.elapsed().as_millis()
    );
    let idv = common::real::value(&newest, 0).as_i64().unwrap();
    let printed = again.process_line(idv - 1000, Duration::from_secs(5));
    assert_eq!(
        detrix_e2e::parse_kv(&printed)["id"],
        idv.to_string(),
        "the restarted program's event holds what it printed: {newest}"
    );
}

/// A pre-fork server's workers — forked after serve started, never exec'ing, so they run the
/// server's own binary — are targets of their own, as the start scan would have made them (a
/// probe attached to the parent's pid never fires in them): each listed with its own pid and
/// name, and a logpoint on one worker delivers exactly what that worker printed, and nothing of
/// its sibling's or its parent's.
#[test]
fn a_pre_fork_servers_workers_become_targets_and_their_values_are_captured() {
    require_root();
    let build = build_c_fixture("prefork", Build::Debug);
    let exe = Exe(fixtures_out_dir().join(format!("serve-prefork-{}", std::process::id())));
    let status = Command::new("cp")
        .arg(&build)
        .arg(&exe.0)
        .status()
        .expect("cp");
    assert!(status.success());
    let stub = RestStub::start("shared/go-delve.jsonl", "shared/rust-stub.jsonl");
    let serve = Serve::start(
        &[
            "--select",
            &format!("exe={}", exe.0.display()),
            "--daemon-url",
            &stub.url,
        ],
        &[],
    );
    let base = exe.0.file_name().unwrap().to_string_lossy().into_owned();
    // Two workers forked 1.5 s after the server starts, each working every 50 ms.
    let server = Fixture::start(&exe.0, &["2", "1500", "50"]);
    let workers: Vec<u32> = (1..=2)
        .map(|w| {
            let line = server
                .stdout()
                .wait_for(Duration::from_secs(20), |l| {
                    l.starts_with(&format!("forked worker={w} pid="))
                })
                .unwrap_or_else(|| panic!("worker {w} never started: {}", server.stdout().text()));
            line.rsplit('=').next().unwrap().parse().expect("a pid")
        })
        .collect();
    let list = serve.wait_targets("the server and both workers sleeping", |t| {
        std::iter::once(server.pid())
            .chain(workers.iter().copied())
            .all(|p| by_pid(t, p).is_some_and(|x| x["state"] == "sleeping"))
    });
    assert_eq!(list.len(), 3, "{list:#?}");
    assert_eq!(by_pid(&list, server.pid()).unwrap()["name"], json!(base));
    let mut names: Vec<&str> = workers
        .iter()
        .map(|p| by_pid(&list, *p).unwrap()["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, [format!("{base}-2"), format!("{base}-3")]);
    for p in &workers {
        let t = by_pid(&list, *p).unwrap();
        assert_eq!(
            (&t["ns_pid"], &t["exe"], &t["language"]),
            (
                &json!(p),
                &json!(exe.0.display().to_string()),
                &json!("rust")
            ),
            "{t}"
        );
    }

    // Wake worker 2 and set a logpoint in the workers' loop.
    let w2 = workers[1];
    let id = by_pid(&list, w2).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, w) = serve.post(&format!("/detrix/targets/{id}/wake"), None);
    assert_eq!((s, &w["status"]), (200, &json!("awake")), "{w}");
    let (_, mut dap) = stub.take_session();
    let src = c_fixture_source("prefork");
    let r = dap.request(&set_bps(
        10,
        &src.to_string_lossy(),
        json!([{"line": marker_line(&src, "work"), "logMessage": "DETRICS:work={worker}\u{1f}{round}\u{1f}{pid}"}]),
    ));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    let events = dap.events(5, Duration::from_secs(20), |e| {
        e["event"] == "output"
            && e["body"]["output"]
                .as_str()
                .is_some_and(|t| t.contains("DETRICS:work="))
    });
    assert_eq!(events.len(), 5, "five hits of worker 2: {events:?}");
    for e in &events {
        let text = e["body"]["output"].as_str().unwrap();
        let values: Vec<&str> = text
            .trim_end()
            .split_once("DETRICS:work=")
            .unwrap()
            .1
            .split('\u{1f}')
            .collect();
        assert_eq!(
            (text.split(']').next().unwrap(), values[0], values[2]),
            (
                format!("[thread {w2}").as_str(),
                "2",
                w2.to_string().as_str()
            ),
            "worker 2's thread, worker number and pid: {text:?}"
        );
        let printed = format!("work pid={w2} worker=2 round={}", values[1]);
        assert!(
            server
                .stdout()
                .wait_for(Duration::from_secs(5), |l| l == printed)
                .is_some(),
            "worker 2 printed `{printed}`"
        );
    }
    drop(server);
    serve.wait_targets("the server and its workers gone", <[Value]>::is_empty);
}
