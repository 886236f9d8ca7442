//! `detrix-agent attach` driven by the daemon emulator (`common`): registration, the recorded
//! `go` and `rust` + pid handshakes of the real daemon (`tests/golden/shared/`), logpoints on
//! the C fixture whose values must equal what the fixture printed (next to a plain breakpoint,
//! which is breakpoint mode), probes gone after sleep,
//! after the daemon closes the socket, and `exited` + `terminated` when the target exits; and a
//! Go logpoint whose composite values read as Delve prints them.

mod common;
mod lang;

use std::time::Duration;

use common::{http, patched_code, set_bps, AttachedAgent, RestStub, STEP_TIMEOUT};
use detrix_e2e::{c_fixture_source, marker_line, parse_kv, require_root, Fixture};
use serde_json::{json, Value};

const GO_GOLDEN: &str = "shared/go-delve.jsonl";
const RUST_GOLDEN: &str = "shared/rust-stub.jsonl";
const EXPRS: [&str; 5] = [
    "(round)",
    "(*o).id",
    "(*o).price",
    "(*o).customer",
    "(cost)",
];

fn template(name: &str) -> String {
    let blocks: Vec<String> = EXPRS.iter().map(|e| format!("{{{e}}}")).collect();
    format!("DETRICS:{name}={}", blocks.join("\u{1f}"))
}

/// Splits `<prefix>DETRICS:<name>=v1\x1Fv2…\n` into (thread id, name, JSON values), checking the
/// prefix the daemon expects for `language`.
fn parse_output(language: &str, text: &str) -> (u64, String, Vec<Value>) {
    assert!(text.ends_with('\n'), "output ends with a newline: {text:?}");
    let (id, rest) = if language == "go" {
        let rest = text
            .strip_prefix("> [Go ")
            .unwrap_or_else(|| panic!("go output must start with `> [Go `: {text:?}"));
        rest.split_once("]: ")
            .unwrap_or_else(|| panic!("no `]: ` in {text:?}"))
    } else {
        let rest = text
            .strip_prefix("[thread ")
            .unwrap_or_else(|| panic!("rust output must start with `[thread `: {text:?}"));
        rest.split_once("] ")
            .unwrap_or_else(|| panic!("no `] ` in {text:?}"))
    };
    let rest = rest
        .strip_prefix("DETRICS:")
        .unwrap_or_else(|| panic!("no DETRICS: after the prefix in {text:?}"));
    assert!(
        !rest.contains('|'),
        "a `|` would cut the value off in the daemon: {text:?}"
    );
    let (name, vals) = rest.trim_end().split_once('=').expect("name=values");
    let values = vals
        .split('\u{1f}')
        .map(|v| {
            serde_json::from_str(v)
                .unwrap_or_else(|e| panic!("value `{v}` is not JSON ({e}) in {text:?}"))
        })
        .collect();
    (
        id.parse()
            .unwrap_or_else(|e| panic!("thread id `{id}`: {e}")),
        name.to_string(),
        values,
    )
}

/// Checks one output's values against the fixture's own `process round=R …` line.
fn check_against_fixture(fixture: &Fixture, values: &[Value], raw: &str) {
    assert_eq!(
        values.len(),
        EXPRS.len(),
        "one value per expression: {raw:?}"
    );
    let round = values[0]
        .as_i64()
        .unwrap_or_else(|| panic!("(round) is not an integer: {raw:?}"));
    let line = fixture.process_line(round, Duration::from_secs(5));
    let kv = parse_kv(&line);
    let f = |k: &str| {
        kv.get(k)
            .unwrap_or_else(|| panic!("printed line lacks {k}: {line}"))
            .clone()
    };
    assert_eq!(
        values[1],
        json!(f("id")
            .parse::<i64>()
            .expect("the printed id is an integer")),
        "(*o).id\n output:  {raw:?}\n printed: {line}"
    );
    assert_eq!(
        values[2].as_f64(),
        Some(
            f("price")
                .parse::<f64>()
                .expect("the printed price is a number")
        ),
        "(*o).price\n output:  {raw:?}\n printed: {line}"
    );
    assert!(
        values[2].is_number(),
        "a double is sent as a JSON number (like Delve, 20.0 as 20): {raw:?}"
    );
    // A `char *` as lldb-dap shows it: pointer and quoted text, sent as one JSON string.
    assert_eq!(
        values[3],
        json!(format!("{} \"{}\"", f("pcust"), f("customer"))),
        "(*o).customer\n output:  {raw:?}\n printed: {line}"
    );
    assert_eq!(
        values[4].as_f64(),
        Some(
            f("cost")
                .parse::<f64>()
                .expect("the printed cost is a number")
        ),
        "(cost)\n output:  {raw:?}\n printed: {line}"
    );
}

fn session(language: &str) {
    require_root();
    let mut fixture = Fixture::orders_private(20);
    let pid = fixture.pid();
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let name = format!("emu-{language}");
    let mut agent = AttachedAgent::start(
        pid,
        &[
            "--daemon-url",
            &stub.url,
            "--name",
            &name,
            "--language",
            language,
        ],
        &[],
    );
    let control_port: u64 = agent
        .control
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the control address ends in a port");

    // Starts asleep, registered nowhere.
    let (s, status) = agent.get("/detrix/status");
    assert_eq!(s, 200);
    assert_eq!(
        status,
        json!({"state":"sleeping","name":name,"control_host":"127.0.0.1","control_port":control_port,"debug_port":0,
               "debug_port_active":false,"daemon_url":stub.url,"connection_id":null})
    );
    assert!(stub.lock().registrations.is_empty());

    // Wake: health, listener, registration during which the stub replays the daemon's handshake.
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!(s, 200, "{wake}");
    let debug_port = wake["debug_port"].as_u64().expect("debug_port");
    let (id, mut dap) = stub.take_session();
    assert_eq!(
        wake,
        json!({"status":"awake","debug_port":debug_port,"connection_id":id,"daemon_url":stub.url})
    );
    let reg = stub.lock().registrations[0].clone();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .expect("read /proc/PID/cwd")
        .to_string_lossy()
        .into_owned();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read the hostname")
        .trim()
        .to_string();
    assert_eq!(
        (
            &reg["host"],
            &reg["port"],
            &reg["language"],
            &reg["name"],
            &reg["workspaceRoot"],
            &reg["hostname"],
            &reg["safeMode"]
        ),
        (
            &json!("127.0.0.1"),
            &json!(debug_port),
            &json!(language),
            &json!(name),
            &json!(cwd),
            &json!(host),
            &json!(false)
        )
    );
    assert_eq!(
        reg.get("pid").cloned(),
        (language == "rust").then(|| json!(pid)),
        "pid only for rust: {reg}"
    );
    for r in &stub.lock().handshake_replies[0] {
        assert_eq!(r["success"], true, "every handshake request succeeds: {r}");
    }
    let (_, status) = agent.get("/detrix/status");
    assert_eq!(
        (
            status["state"].clone(),
            status["debug_port_active"].clone(),
            status["connection_id"].clone()
        ),
        (json!("awake"), json!(true), json!(id))
    );

    // One logpoint, one line without code, one plain breakpoint: answered in order.
    let src = c_fixture_source("orders");
    let path = src.to_string_lossy().into_owned();
    let line = marker_line(&src, "process");
    let r = dap.request(&set_bps(
        100,
        &path,
        json!([
            {"line": line, "logMessage": template("order_c")},
            {"line": 1, "logMessage": "DETRICS:nothing_here={(round)}"},
            {"line": line + 3},
        ]),
    ));
    assert_eq!(r["success"], true, "{r}");
    let bps = r["body"]["breakpoints"]
        .as_array()
        .expect("setBreakpoints answers breakpoints");
    assert_eq!(bps.len(), 3, "{r}");
    assert_eq!(
        (bps[0]["verified"].clone(), bps[0]["line"].clone()),
        (json!(true), json!(line)),
        "{r}"
    );
    assert_eq!(
        (bps[1]["verified"].clone(), bps[1]["line"].clone()),
        (json!(false), json!(1)),
        "{r}"
    );
    assert!(
        bps[1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("orders.c") && m.contains('1')),
        "the resolver's sentence: {r}"
    );
    // A plain breakpoint is breakpoint mode, served from in-kernel snapshots (tests/breakpoint_mode.rs).
    assert_eq!(
        (bps[2]["verified"].clone(), bps[2]["line"].clone()),
        (json!(true), json!(line + 3)),
        "{r}"
    );
    assert!(
        !patched_code(pid).is_empty(),
        "a probe is installed in the target while the logpoint is set"
    );

    // Hits arrive as output events in the daemon's form, with the program's own values.
    let outs = dap.events(5, STEP_TIMEOUT, |e| e["event"] == "output");
    assert!(
        outs.len() >= 5,
        "expected 5 output events, got {outs:?}\nagent stderr:\n{}",
        agent.stderr.text()
    );
    for o in &outs {
        assert_eq!(o["body"]["category"], "console");
        let text = o["body"]["output"]
            .as_str()
            .expect("an output event has output text");
        let (tid, metric, values) = parse_output(language, text);
        assert_eq!(
            (tid, metric.as_str()),
            (u64::from(pid), "order_c"),
            "single-threaded fixture: thread id = pid; {text:?}"
        );
        check_against_fixture(&fixture, &values, text);
    }

    // Sleep: DELETE with the registered id, socket closed, no probe left, state as before.
    let (s, slept) = agent.post("/detrix/sleep", None);
    assert_eq!((s, slept), (200, json!({"status":"sleeping"})));
    assert_eq!(stub.lock().unregistrations, vec![id.clone()]);
    assert!(
        dap.wait_closed(STEP_TIMEOUT),
        "the DAP connection is closed after sleep"
    );
    assert_eq!(
        patched_code(pid),
        Vec::<u64>::new(),
        "no probe left in the target after sleep"
    );
    let (_, status) = agent.get("/detrix/status");
    assert_eq!(
        status,
        json!({"state":"sleeping","name":name,"control_host":"127.0.0.1","control_port":control_port,"debug_port":debug_port,
               "debug_port_active":false,"daemon_url":stub.url,"connection_id":null})
    );
    fixture.assert_keeps_running(3);

    // Wake again (same identity ⇒ same id), then the daemon closes the socket: probes go,
    // the agent stays awake.
    let (s, wake2) = agent.post("/detrix/wake", None);
    assert_eq!((s, wake2["connection_id"].clone()), (200, json!(id)));
    let (_, mut dap2) = stub.take_session();
    let r = dap2.request(&set_bps(
        7,
        &path,
        json!([{"line": line, "logMessage": template("order_c")}]),
    ));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    assert!(!patched_code(pid).is_empty());
    dap2.close();
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        patched_code(pid).is_empty()
    });
    assert!(gone, "closing the socket drops that session's probes");
    assert_eq!(agent.get("/detrix/status").1["state"], "awake");

    // A third session: the target exits ⇒ exited + terminated, unregistration, agent exits 0.
    let (s, _) = http("POST", &format!("{}/api/v1/connections", stub.url), Some(&json!({"port": wake2["debug_port"], "language": language, "pid": pid, "name": "reconnect", "workspaceRoot": "/", "hostname": "h"}).to_string()));
    assert_eq!(
        s, 201,
        "the emulated daemon reconnects to the same DAP port"
    );
    let (_, mut dap3) = stub.take_session();
    // SAFETY: kill has no memory-safety preconditions; pid is our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let ends = dap3.events(2, STEP_TIMEOUT, |e| {
        e["event"] == "exited" || e["event"] == "terminated"
    });
    let names: Vec<Value> = ends.iter().map(|e| e["event"].clone()).collect();
    assert_eq!(
        names,
        vec![json!("exited"), json!("terminated")],
        "agent stderr:\n{}",
        agent.stderr.text()
    );
    assert_eq!(
        agent.wait_exit(STEP_TIMEOUT),
        Some(0),
        "the agent exits when its target does; stderr:\n{}",
        agent.stderr.text()
    );
    assert_eq!(
        stub.lock().unregistrations.last(),
        Some(&id),
        "unregistered on exit"
    );
}

#[test]
fn rust_pid_session_replays_the_daemons_handshake_and_captures_the_programs_values() {
    session("rust");
}

#[test]
fn go_session_replays_the_daemons_handshake_and_uses_the_go_prefix() {
    session("go");
}

/// The Go fixture (1.23, optimized) through the DAP facade with the logpoint
/// `{o} {o.Tags} {o.Customer} {*o}`: each value, JSON-decoded as the daemon stores it, is the text
/// Delve prints for it (the fixture prints `*o` that way itself, as `order=`).
#[test]
fn go_logpoint_values_read_as_delve_prints_them() {
    require_root();
    let build = lang::GO123_OPT;
    let exe = build.build();
    let fixture = Fixture::start(&exe, &["-1", "20"]);
    let pid = fixture.pid();
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let (agent, mut dap) = awake_agent(pid, &stub, &["--name", "emu-go-delve", "--language", "go"]);
    let src = build.source();
    let line = lang::marker_line(&src, "delve");
    let msg = ["{round}", "{o}", "{o.Tags}", "{o.Customer}", "{*o}"].join("\u{1f}");
    let outs = set_and_collect(
        &mut dap,
        &agent,
        &src,
        json!([{"line": line, "logMessage": format!("DETRICS:delve_order={msg}")}]),
    );
    for text in &outs {
        let (goid, metric, values) = parse_output("go", text);
        assert_eq!(metric, "delve_order", "{text:?}");
        let round = values[0]
            .as_i64()
            .unwrap_or_else(|| panic!("{{round}} is not an integer: {text:?}"));
        let want_round = format!("round={round}");
        let line = fixture
            .stdout()
            .wait_for(Duration::from_secs(5), |l| {
                l.starts_with("process\t") && l.split('\t').any(|f| f == want_round)
            })
            .unwrap_or_else(|| panic!("the fixture never printed round {round}"));
        let kv: std::collections::HashMap<&str, &str> =
            line.split('\t').filter_map(|f| f.split_once('=')).collect();
        let order = kv["order"];
        let tags = format!(
            "[]string len: {}, cap: {}, [{}]",
            kv["tags.len"], kv["tags.cap"], kv["tags"]
        );
        assert_eq!(
            goid.to_string(),
            kv["goid"],
            "the Go prefix names the goroutine: {text:?}\n printed: {line}"
        );
        assert_eq!(
            values[1..],
            [
                json!(format!("*{order}")),
                json!(tags),
                json!(kv["customer"]),
                json!(order)
            ],
            "\n output:  {text:?}\n printed: {line}"
        );
    }
}

/// Replays the real daemon's side of `tests/golden/real/agent-c.jsonl` (recorded from the
/// daemon of 054f25ff talking to this agent, by `real_daemon` with DETRIX_GOLDEN_REWRITE=1) and
/// compares every answer with the recorded one, field for field except `seq`; the outputs'
/// values are compared with what the fixture printed (they are from other rounds than the
/// recording's).
#[test]
fn replays_the_real_daemons_conversation_with_the_agent() {
    const GOLDEN: &str = "real/agent-c.jsonl";
    require_root();
    let fixture = Fixture::orders_private(20);
    let pid = fixture.pid();
    let src_dir = c_fixture_source("orders")
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let stub = RestStub::start(GO_GOLDEN, GOLDEN);
    let agent = AttachedAgent::start(pid, &["--daemon-url", &stub.url, "--language", "rust"], &[]);
    assert_eq!(agent.post("/detrix/wake", None).0, 200);
    let (_, mut dap) = stub.take_session();

    let lines = common::golden_lines(GOLDEN);
    let subst = |v: &Value| -> Value {
        let t = v
            .to_string()
            .replace("$SRC", &src_dir)
            .replace("\"$PID\"", &pid.to_string());
        serde_json::from_str(&t).unwrap()
    };
    let strip_seq = |v: &Value| -> Value {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("seq");
        v
    };
    // The handshake the stub replayed from the same file: answers equal the recorded ones.
    let recorded: Vec<Value> = lines
        .iter()
        .filter(|l| l["dir"] == "adapter->daemon" && l["msg"]["type"] == "response")
        .map(|l| subst(&l["msg"]))
        .collect();
    let replies = stub.lock().handshake_replies[0].clone();
    for (got, want) in replies.iter().zip(&recorded) {
        assert_eq!(strip_seq(got), strip_seq(want));
    }
    // Then every later request, answered exactly as recorded.
    let requests: Vec<Value> = lines
        .iter()
        .filter(|l| l["dir"] == "daemon->adapter" && l["msg"]["command"] == "setBreakpoints")
        .map(|l| subst(&l["msg"]))
        .collect();
    assert!(!requests.is_empty());
    for req in &requests {
        let want = recorded
            .iter()
            .find(|r| r["request_seq"] == req["seq"])
            .unwrap_or_else(|| panic!("no recorded answer to {req}"));
        assert_eq!(
            strip_seq(&dap.request(req)),
            strip_seq(want),
            "answer to {req}"
        );
    }
    // Outputs: the recorded forms, with the program's values.
    let names: Vec<String> = lines
        .iter()
        .filter_map(|l| l["msg"]["body"]["output"].as_str())
        .map(|o| {
            o.split('=')
                .next()
                .unwrap()
                .replace("$PID", &pid.to_string())
        })
        .collect();
    let outs = dap.events(6, STEP_TIMEOUT, |e| e["event"] == "output");
    assert!(outs.len() >= 6, "{outs:?}");
    for o in outs {
        let text = o["body"]["output"].as_str().unwrap();
        assert!(
            names.iter().any(|n| text.starts_with(&format!("{n}="))),
            "output {text:?} is not of a recorded form {names:?}"
        );
        let (_, name, values) = parse_output("rust", text);
        if name == "c_order_id" {
            let id = values[0].as_i64().unwrap();
            let printed = fixture.process_line(id - 1000, Duration::from_secs(5));
            assert_eq!(
                parse_kv(&printed)["id"],
                id.to_string(),
                "{text:?} vs {printed}"
            );
        } else {
            let round = values[0].as_i64().unwrap();
            let printed = fixture.process_line(round, Duration::from_secs(5));
            let kv = parse_kv(&printed);
            assert_eq!(
                values[1].as_f64(),
                Some(kv["cost"].parse::<f64>().unwrap()),
                "{text:?} vs {printed}"
            );
            assert_eq!(
                values[2],
                json!(format!("{} \"{}\"", kv["pcust"], kv["customer"])),
                "{text:?} vs {printed}"
            );
        }
    }
}

/// A logpoint naming a value optimized out at its line (C `-O2`: `base` before it is
/// computed) is set and its other values flow: the lost one is the text lldb-dap prints for an
/// unavailable variable, as a JSON string (`"<error: couldn't get the value of variable base:
/// variable not available>"`; lldb-dap 22 adds a second line that would split the hit).
#[test]
fn c_logpoint_with_an_optimized_out_value_keeps_the_others() {
    require_root();
    let build = lang::C_OPTIMIZED_O2;
    let exe = build.build();
    let fixture = Fixture::start(&exe, &["-1", "20"]);
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let (agent, mut dap) = awake_agent(
        fixture.pid(),
        &stub,
        &["--name", "emu-c-optimized-out", "--language", "rust"],
    );
    let src = build.source();
    let line = lang::marker_line(&src, "entry");
    let msg = ["{round}", "{base}", "{k}"].join("\u{1f}");
    let outs = set_and_collect(
        &mut dap,
        &agent,
        &src,
        json!([{"line": line, "logMessage": format!("DETRICS:lost={msg}")}]),
    );
    for text in &outs {
        let (_, metric, values) = parse_output("rust", text);
        assert_eq!(metric, "lost", "{text:?}");
        let round = values[0]
            .as_i64()
            .unwrap_or_else(|| panic!("{{round}} is not an integer: {text:?}"));
        let want_round = format!("round={round}");
        let printed = fixture
            .stdout()
            .wait_for(Duration::from_secs(5), |l| {
                l.starts_with("mix ") && l.split(' ').any(|f| f == want_round)
            })
            .unwrap_or_else(|| panic!("the fixture never printed round {round}"));
        let k: i64 = printed
            .split(' ')
            .find_map(|f| f.strip_prefix("k="))
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("no k= in {printed}"));
        assert_eq!(
            values[1..],
            [
                json!("<error: couldn't get the value of variable base: variable not available>"),
                json!(k)
            ],
            "\n output:  {text:?}\n printed: {printed}"
        );
    }
}

/// `attach --ebpf-log` (issue #16 point 8): a logpoint whose value faults in the kernel is
/// reported by the program itself on the agent's stderr, one `ebpf:` line per faulting hit,
/// naming the plan step and the exact address the fixture's own pointer gives; the other value
/// of the same hit still reaches the daemon as the fixture printed it.
#[test]
fn attach_ebpf_log_reports_the_faulting_step() {
    require_root();
    let fixture = Fixture::orders(50);
    let stub = RestStub::start(GO_GOLDEN, RUST_GOLDEN);
    let (agent, mut dap) = awake_agent(
        fixture.pid(),
        &stub,
        &["--name", "emu-ebpf-log", "--language", "rust", "--ebpf-log"],
    );
    let src = c_fixture_source("orders");
    let line = marker_line(&src, "process");
    let outs = set_and_collect(
        &mut dap,
        &agent,
        &src,
        json!([{"line": line, "logMessage": "DETRICS:far={round}\u{1f}{o->customer[99999999]}"}]),
    );
    for text in &outs {
        let round: i64 = text
            .split_once("DETRICS:far=")
            .and_then(|(_, v)| v.split('\u{1f}').next())
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or_else(|| panic!("no round first in {text:?}"));
        let printed = fixture.process_line(round, Duration::from_secs(5));
        let kv = parse_kv(&printed);
        let pcust = kv
            .get("pcust")
            .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| panic!("no pcust in {printed}"));
        let tail = format!(" (emit_mem) faulted at {:#x}", pcust + 99_999_999);
        let logged = agent
            .stderr
            .wait_for(Duration::from_secs(5), |l| {
                l.starts_with("ebpf: probe ") && l.ends_with(&tail)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no `ebpf: probe N step S{tail}` line for round {round}:\n{}",
                    agent.stderr.text()
                )
            });
        assert!(
            logged.contains(" step "),
            "the line names the plan step: {logged}"
        );
    }
}

/// Sets `bps` on `src` (request 100), asserts the first is verified, and returns the texts of
/// the first three `output` events.
fn set_and_collect(
    dap: &mut common::Dap,
    agent: &AttachedAgent,
    src: &std::path::Path,
    bps: Value,
) -> Vec<String> {
    let r = dap.request(&set_bps(100, &src.to_string_lossy(), bps));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    let outs = dap.events(3, STEP_TIMEOUT, |e| e["event"] == "output");
    assert_eq!(
        outs.len(),
        3,
        "expected 3 output events, got {outs:?}\nagent stderr:\n{}",
        agent.stderr.text()
    );
    outs.iter()
        .map(|o| {
            o["body"]["output"]
                .as_str()
                .unwrap_or_else(|| panic!("output without text: {o}"))
                .to_owned()
        })
        .collect()
}

/// An agent attached to `pid` with `--daemon-url` of `stub` and `args`, woken (200), and the
/// DAP session the stub's daemon opened to it.
fn awake_agent(pid: u32, stub: &RestStub, args: &[&str]) -> (AttachedAgent, common::Dap) {
    let mut all = vec!["--daemon-url", stub.url.as_str()];
    all.extend_from_slice(args);
    let agent = AttachedAgent::start(pid, &all, &[]);
    let (s, wake) = agent.post("/detrix/wake", None);
    assert_eq!(s, 200, "{wake}");
    let (_, dap) = stub.take_session();
    (agent, dap)
}
