//! Breakpoint mode of the facade without a kernel: synthetic hits carrying a stack and locals
//! drive the daemon's stop cycle (contract.md §9), replayed from the real daemon ↔ Delve
//! recording and checked against Delve's own answers.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::facade::{Job, Options, ProbeHit, ProbeId, MAX_QUEUED_STOPS, RUST_CALL_MESSAGE};
use super::fake::{Driven as Facade, FakeProbes};
use super::template::Prefix;
use crate::debuginfo::Language;
use crate::decode::Node;
use crate::engine::{Frame, Hit, LogpointId, LogpointSpec};
use crate::plan::Value as V;

#[derive(Default)]
struct Probes {
    live: HashMap<ProbeId, (String, LogpointSpec)>,
}

impl FakeProbes for Probes {
    fn add(&mut self, id: ProbeId, file: &str, spec: &LogpointSpec) -> Result<(), String> {
        if spec.exprs.iter().any(|e| e == "nope") {
            return Err("no variable `nope` in scope at orders.go:23; in scope: id, name".into());
        }
        self.live.insert(id, (file.to_owned(), spec.clone()));
        Ok(())
    }
    fn remove(&mut self, id: ProbeId) {
        assert!(self.live.remove(&id).is_some(), "removed {id:?} twice");
    }
}

impl Probes {
    fn at(&self, line: u32) -> (ProbeId, LogpointSpec) {
        let v: Vec<_> = self
            .live
            .iter()
            .filter(|(_, (_, s))| s.line == line)
            .collect();
        assert_eq!(v.len(), 1, "one probe at line {line}: {:?}", self.live);
        (*v[0].0, v[0].1 .1.clone())
    }
}

fn req(seq: i64, command: &str, arguments: Value) -> Value {
    let mut r = json!({"type":"request","seq":seq,"command":command});
    r["arguments"] = arguments;
    r
}

fn set_bps(seq: i64, path: &str, bps: Value) -> Value {
    let mut args = json!({"source":{"path":path,"name":path}});
    args["breakpoints"] = bps;
    args["sourceModified"] = false.into();
    req(seq, "setBreakpoints", args)
}

fn frame(function: &str, file: &str, line: u32) -> Frame {
    Frame {
        pc: crate::addr::RuntimeAddr(0x1000),
        function: function.into(),
        file: Some(file.into()),
        line: Some(line),
        module: None,
    }
}

fn hit(id: ProbeId, stack: Vec<Frame>, locals: Vec<(&str, V)>, values: Vec<(&str, V)>) -> ProbeHit {
    ProbeHit {
        probe: id,
        hit: hit_of(id, stack, locals, values),
    }
}

fn hit_of(id: ProbeId, stack: Vec<Frame>, locals: Vec<(&str, V)>, values: Vec<(&str, V)>) -> Hit {
    Hit {
        logpoint: LogpointId(id.n),
        pid: 7,
        tid: 7,
        goid: 1,
        ktime_ns: 0,
        values: values
            .into_iter()
            .map(|(e, v)| (e.to_owned(), node(v)))
            .collect(),
        stack,
        locals: locals
            .into_iter()
            .map(|(n, v)| (n.to_owned(), node(v)))
            .collect(),
    }
}

/// The decoded value the facade renders (`render::debugger`) as exactly `v`: these tests speak
/// in what the daemon sees.
fn node(v: V) -> Node {
    match v {
        V::Int(i) => Node::Int(i),
        V::UInt(u) => Node::UInt(u),
        V::Float(value) => Node::Float { value, size: 8 },
        V::Bool(b) => Node::Bool(b),
        V::Str { text, truncated } => Node::CharArray { text, truncated },
        // An enumerator is shown as its name, verbatim: any text.
        V::Text(t) => Node::Enumerator(t),
        V::Error(e) => Node::Error(e),
    }
}

fn only_response(out: &[Value]) -> Value {
    let r: Vec<&Value> = out.iter().filter(|m| m["type"] == "response").collect();
    assert_eq!(r.len(), 1, "{out:?}");
    r[0].clone()
}

fn s(text: &str) -> V {
    V::Str {
        text: text.into(),
        truncated: false,
    }
}

fn golden(name: &str) -> Vec<Value> {
    let path = format!(
        "{}/../tests/golden/shared/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every stop cycle Delve served in the recording, replayed into the facade: the hit carries
/// the stack Delve reported and the locals whose values Delve gave, and every answer the daemon
/// reads (top frame name/line/path, all frames, evaluate results, continue) must equal Delve's.
#[test]
fn delves_stop_cycles_replayed_give_delves_answers() {
    let lines = golden("go-delve.jsonl");
    let first_session: Vec<&Value> = lines
        .iter()
        .take_while(|l| !(l["dir"] == "note" && l["msg"]["conn"] == 2))
        .collect();
    let daemon: Vec<&Value> = first_session
        .iter()
        .filter(|l| l["dir"] == "daemon->adapter")
        .map(|l| &l["msg"])
        .collect();
    let delve: HashMap<i64, &Value> = first_session
        .iter()
        .filter(|l| l["dir"] == "adapter->daemon" && l["msg"]["type"] == "response")
        .map(|l| (l["msg"]["request_seq"].as_i64().unwrap(), &l["msg"]))
        .collect();
    let mut f = Facade::new(Probes::default(), "go");
    let mut cycles = 0;
    let mut i = 0;
    while i < daemon.len() {
        let m = daemon[i];
        // A stop cycle starts with the daemon's first stackTrace after Delve's `stopped`.
        if m["command"] == "stackTrace"
            && m["arguments"]["levels"] == 1
            && !f.probes().live.is_empty()
            && !f.is_stopped()
        {
            let cycle: Vec<&Value> = daemon[i..]
                .iter()
                .take_while(|r| r["command"] != "continue")
                .copied()
                .collect();
            let top = &delve[&m["seq"].as_i64().unwrap()]["body"]["stackFrames"][0];
            let line = u32::try_from(top["line"].as_u64().unwrap()).unwrap();
            // The stack: Delve's full one when the daemon asked for it, else the top frame.
            let full = cycle
                .iter()
                .find(|r| r["command"] == "stackTrace" && r["arguments"]["levels"] == 1000);
            let frames = full.map_or_else(
                || vec![top.clone()],
                |r| {
                    delve[&r["seq"].as_i64().unwrap()]["body"]["stackFrames"]
                        .as_array()
                        .unwrap()
                        .clone()
                },
            );
            let stack: Vec<Frame> = frames
                .iter()
                .map(|fr| {
                    frame(
                        fr["name"].as_str().unwrap(),
                        fr["source"]["path"].as_str().unwrap(),
                        u32::try_from(fr["line"].as_u64().unwrap()).unwrap(),
                    )
                })
                .collect();
            // Locals: what Delve evaluated (`total` → a float64, `len(name)` → a string of that length).
            let mut locals = Vec::new();
            for r in cycle.iter().filter(|r| r["command"] == "evaluate") {
                let result = delve[&r["seq"].as_i64().unwrap()]["body"]["result"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                match r["arguments"]["expression"].as_str().unwrap() {
                    "total" => locals.push(("total", V::Float(result.parse().unwrap()))),
                    "call len(name)" => {
                        locals.push(("name", s(&"x".repeat(result.parse().unwrap()))));
                    }
                    other => panic!("unexpected expression {other}"),
                }
            }
            let (id, spec) = f.probes().at(line);
            assert!(
                spec.capture_stack && spec.capture_locals && spec.exprs.is_empty(),
                "{spec:?}"
            );
            let out = f.on_hits(&[hit(id, stack, locals, vec![])]);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0]["event"], "stopped");
            assert_eq!(out[0]["body"]["reason"], "breakpoint");
            assert_eq!(out[0]["body"]["threadId"], 1, "the goroutine id, as Delve");
            for r in &cycle {
                let ours = only_response(&f.handle(r));
                let theirs = delve[&r["seq"].as_i64().unwrap()];
                assert_eq!(
                    ours["success"], theirs["success"],
                    "{r}\nours {ours}\nDelve {theirs}"
                );
                match r["command"].as_str().unwrap() {
                    "stackTrace" => {
                        let (o, t) = (&ours["body"]["stackFrames"], &theirs["body"]["stackFrames"]);
                        assert_eq!(
                            o.as_array().unwrap().len(),
                            t.as_array().unwrap().len(),
                            "{o}\n{t}"
                        );
                        for (a, b) in o.as_array().unwrap().iter().zip(t.as_array().unwrap()) {
                            for k in ["name", "line", "source"] {
                                assert_eq!(a[k], b[k], "frame {k}: ours {a}\nDelve {b}");
                            }
                        }
                        assert_eq!(o[0]["id"], 1000, "the frame id the daemon then uses");
                    }
                    "evaluate" => {
                        assert_eq!(ours["body"]["result"], theirs["body"]["result"], "{r}");
                    }
                    other => panic!("unexpected {other} in a cycle"),
                }
            }
            assert!(
                f.take_jobs().is_empty(),
                "len() of a captured string needs no debugger"
            );
            cycles += 1;
            i += cycle.len();
            continue;
        }
        let out = f.handle(m);
        let r = only_response(&out);
        assert_eq!(r["request_seq"], m["seq"]);
        i += 1;
    }
    assert!(cycles >= 40, "only {cycles} stop cycles replayed");
}

#[test]
fn one_stop_at_a_time_queued_hits_follow_each_continue() {
    let mut f = Facade::new(Probes::default(), "rust");
    let r = only_response(&f.handle(&set_bps(1, "/s/bp.c", json!([{"line": 20}]))));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    let (id, _) = f.probes().at(20);
    let stack = vec![
        frame("c", "/s/bp.c", 20),
        frame("b", "/s/bp.c", 30),
        frame("a", "/s/bp.c", 40),
        frame("main", "/s/bp.c", 50),
    ];
    let h1 = hit(
        id,
        stack.clone(),
        vec![("z", V::Int(1)), ("w", V::Int(3))],
        vec![],
    );
    let h2 = hit(id, stack, vec![("z", V::Int(2)), ("w", V::Int(6))], vec![]);
    let out = f.on_hits(&[h1, h2]);
    assert_eq!(
        out.iter().filter(|m| m["event"] == "stopped").count(),
        1,
        "one stopped outstanding: {out:?}"
    );
    assert_eq!(out[0]["body"]["threadId"], 7, "rust: the kernel thread id");
    let st = only_response(&f.handle(&req(
        2,
        "stackTrace",
        json!({"threadId":7,"startFrame":0,"levels":1000}),
    )));
    let names: Vec<(String, u64)> = st["body"]["stackFrames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|fr| {
            (
                fr["name"].as_str().unwrap().to_owned(),
                fr["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("c".into(), 20),
            ("b".into(), 30),
            ("a".into(), 40),
            ("main".into(), 50)
        ]
    );
    assert_eq!(st["body"]["totalFrames"], 4);
    let one = only_response(&f.handle(&req(
        3,
        "stackTrace",
        json!({"threadId":7,"startFrame":1,"levels":1}),
    )));
    assert_eq!(one["body"]["stackFrames"][0]["name"], "b");
    let sc = only_response(&f.handle(&req(4, "scopes", json!({"frameId":1000}))));
    assert_eq!(
        sc["body"],
        json!({"scopes":[{"name":"Locals","presentationHint":"locals","variablesReference":2000,"expensive":false}]})
    );
    let vars = only_response(&f.handle(&req(
        5,
        "variables",
        json!({"variablesReference":2000,"count":100}),
    )));
    assert_eq!(
        vars["body"]["variables"],
        json!([
            {"name":"z","value":"1","type":"i64","variablesReference":0},
            {"name":"w","value":"3","type":"i64","variablesReference":0},
        ])
    );
    let ev = only_response(&f.handle(&req(
        6,
        "evaluate",
        json!({"expression":"(w)","frameId":1000,"context":"watch"}),
    )));
    assert_eq!(
        ev["body"],
        json!({"result":"3","type":"i64","variablesReference":0})
    );
    let out = f.handle(&req(7, "continue", json!({"threadId":7})));
    assert_eq!(
        (out[0]["command"].clone(), out[0]["success"].clone()),
        (json!("continue"), json!(true))
    );
    assert_eq!(
        out[1]["event"], "stopped",
        "the queued hit is stopped next: {out:?}"
    );
    let ev = only_response(&f.handle(&req(
        8,
        "evaluate",
        json!({"expression":"w","frameId":1000,"context":"watch"}),
    )));
    assert_eq!(ev["body"]["result"], "6");
    let out = f.handle(&req(9, "continue", json!({"threadId":7})));
    assert_eq!(out.len(), 1, "nothing queued any more");
    let none = only_response(&f.handle(&req(10, "stackTrace", json!({"threadId":7,"levels":1}))));
    assert_eq!(none["success"], false);
    // A flood while stopped: the queue is bounded, the excess counted.
    let many: Vec<ProbeHit> = (0..100)
        .map(|i| hit(id, vec![], vec![("z", V::Int(i))], vec![]))
        .collect();
    f.on_hits(&many);
    assert_eq!(
        f.dropped_stops(),
        100 - 1 - MAX_QUEUED_STOPS as u64,
        "one current, {MAX_QUEUED_STOPS} queued"
    );
}

#[test]
fn an_expression_not_in_the_snapshot_is_learned_and_captured_from_the_next_hit() {
    let mut f = Facade::new(Probes::default(), "go");
    f.handle(&set_bps(1, "/s/orders.go", json!([{"line": 23}])));
    let (id, _) = f.probes().at(23);
    f.on_hits(&[hit(
        id,
        vec![frame("main.processOrder", "/s/orders.go", 23)],
        vec![("o", V::Text("0xc000010000".into()))],
        vec![],
    )]);
    let ev = only_response(&f.handle(&req(
        2,
        "evaluate",
        json!({"expression":"o.Qty","frameId":1000,"context":"watch"}),
    )));
    assert_eq!(ev["success"], false);
    assert_eq!(ev["message"], "`o.Qty` is not a local variable, and this breakpoint's snapshot held only locals; it is captured from the next hit on");
    let (id2, spec) = f.probes().at(23);
    assert_ne!(id, id2, "re-installed");
    assert_eq!(
        (spec.exprs.clone(), spec.capture_stack, spec.capture_locals),
        (vec!["o.Qty".to_owned()], true, true)
    );
    f.handle(&req(3, "continue", json!({"threadId":1})));
    // A late hit of the replaced probe is dropped; the new one answers.
    assert!(f.on_hits(&[hit(id, vec![], vec![], vec![])]).is_empty());
    f.on_hits(&[hit(
        id2,
        vec![frame("main.processOrder", "/s/orders.go", 23)],
        vec![],
        vec![("o.Qty", V::Int(4))],
    )]);
    let ev = only_response(&f.handle(&req(
        4,
        "evaluate",
        json!({"expression":"o.Qty","frameId":1000,"context":"watch"}),
    )));
    assert_eq!(
        ev["body"],
        json!({"result":"4","type":"int","variablesReference":0})
    );
    // An expression the engine refuses is answered with its sentence, and nothing changes.
    let ev = only_response(&f.handle(&req(
        5,
        "evaluate",
        json!({"expression":"nope","frameId":1000,"context":"watch"}),
    )));
    assert_eq!(ev["message"], "`nope` cannot be captured at this line: no variable `nope` in scope at orders.go:23; in scope: id, name");
    assert_eq!(f.probes().at(23).0, id2);
}

#[test]
fn calls_become_debugger_jobs_answered_later() {
    let mut f = Facade::new(Probes::default(), "go");
    f.handle(&set_bps(1, "/s/orders.go", json!([{"line": 19}])));
    let (id, _) = f.probes().at(19);
    f.on_hits(&[hit(
        id,
        vec![frame("main.processOrder", "/s/orders.go", 19)],
        vec![("u", V::Text("0xc0000a0000".into()))],
        vec![],
    )]);
    let out = f.handle(&req(
        2,
        "evaluate",
        json!({"expression":"call u.GetBalance()","frameId":1000,"context":"repl"}),
    ));
    assert!(
        out.is_empty(),
        "answered when the debugger is done: {out:?}"
    );
    let jobs = f.take_jobs();
    assert_eq!(
        jobs,
        vec![Job {
            token: jobs[0].token,
            file: "/s/orders.go".into(),
            line: 19,
            exprs: vec!["u.GetBalance()".into()],
            delay: std::time::Duration::ZERO
        }]
    );
    let out = f.job_done(
        jobs[0].token,
        Ok(vec![Ok(("420".into(), Some("int".into())))]),
    );
    assert_eq!(only_response(&out)["request_seq"], 2);
    assert_eq!(
        out[0]["body"],
        json!({"result":"420","type":"int","variablesReference":0})
    );
    // Delve's failure (a variadic call) comes back as the daemon expects it: error.format.
    f.handle(&req(
        3,
        "evaluate",
        json!({"expression":"call fmt.Sprintf(\"%d\", id)","frameId":1000,"context":"repl"}),
    ));
    let t = f.take_jobs()[0].token;
    let out = f.job_done(
        t,
        Ok(vec![Err(
            "Unable to evaluate expression: could not find symbol value for fmt".into(),
        )]),
    );
    assert_eq!(
        (
            out[0]["success"].clone(),
            out[0]["body"]["error"]["format"].clone()
        ),
        (
            json!(false),
            json!("Unable to evaluate expression: could not find symbol value for fmt")
        )
    );
}

#[test]
fn safe_mode_never_makes_a_job_but_keeps_snapshots() {
    let opts = Options {
        prefix: Prefix::Thread,
        target: Language::C,
        safe_mode: true,
    };
    let mut f = Facade::with_options(Probes::default(), opts);
    let r = only_response(&f.handle(&set_bps(
        1,
        "/s/bp.c",
        json!([
            {"line": 20},
            {"line": 21, "logMessage": "DETRICS:n={(long)strlen(name)}"},
            {"line": 22, "logMessage": "DETRICS:w={(w)}"},
        ]),
    )));
    let b = &r["body"]["breakpoints"];
    assert_eq!(
        (b[0]["verified"].clone(), b[2]["verified"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    assert_eq!(b[1]["verified"], false);
    assert!(
        b[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("`(long)strlen(name)` calls a function. SafeMode:"),
        "{r}"
    );
    let (id, _) = f.probes().at(20);
    f.on_hits(&[hit(
        id,
        vec![frame("c", "/s/bp.c", 20)],
        vec![("name", s("bob"))],
        vec![],
    )]);
    let ev = only_response(&f.handle(&req(
        2,
        "evaluate",
        json!({"expression":"strlen(name)","frameId":1000,"context":"watch"}),
    )));
    assert!(
        ev["message"].as_str().unwrap().starts_with("SafeMode:"),
        "{ev}"
    );
    assert!(f.take_jobs().is_empty(), "SafeMode never spawns a debugger");
}

#[test]
fn c_call_logpoints_run_debugger_rounds_rust_calls_say_why() {
    let mut f = Facade::new(Probes::default(), "rust");
    let r = only_response(&f.handle(&set_bps(
        1,
        "/s/bp.c",
        json!([{"line": 21, "logMessage": "DETRICS:n={(z)}\u{1f}{(long)strlen(name)}"}]),
    )));
    assert_eq!(r["body"]["breakpoints"][0]["verified"], true, "{r}");
    assert!(
        f.probes().live.is_empty(),
        "no uprobe: the debugger's breakpoint is the hit"
    );
    let job = f.take_jobs().remove(0);
    assert_eq!(
        (job.line, job.exprs.clone()),
        (21, vec!["(z)".to_owned(), "(long)strlen(name)".to_owned()])
    );
    let out = f.job_done(
        job.token,
        Ok(vec![
            Ok(("4".into(), Some("int".into()))),
            Ok(("5".into(), Some("long".into()))),
        ]),
    );
    assert_eq!(out[0]["body"]["output"], "[thread 1] DETRICS:n=4\u{1f}5\n");
    let next = f.take_jobs();
    assert_eq!(next.len(), 1, "the next round is queued");
    assert_eq!(next[0].delay, super::facade::CALL_LOGPOINT_INTERVAL);
    // Removing the line stops the rounds.
    f.handle(&set_bps(2, "/s/bp.c", json!([])));
    assert!(f.job_done(next[0].token, Ok(vec![])).is_empty());

    // Rust target: the call's value says why; the other expressions are captured in the kernel.
    let mut f = Facade::with_options(
        Probes::default(),
        Options {
            prefix: Prefix::Thread,
            target: Language::Rust,
            safe_mode: false,
        },
    );
    f.handle(&set_bps(
        1,
        "/s/bp.rs",
        json!([{"line": 9, "logMessage": "DETRICS:m={z}\u{1f}{name.len()}"}]),
    ));
    let (id, spec) = f.probes().at(9);
    assert_eq!(spec.exprs, vec!["z".to_owned()]);
    let out = f.on_hits(&[hit(id, vec![], vec![], vec![("z", V::Int(2))])]);
    let want = format!(
        "[thread 7] DETRICS:m=2\u{1f}{}\n",
        super::template::json_string(&format!("<error: {RUST_CALL_MESSAGE}>"))
    );
    assert_eq!(out[0]["body"]["output"], want);
}

#[test]
fn logpoints_and_breakpoints_in_one_file_each_produce_events_and_survive_the_others_removal() {
    let mut f = Facade::new(Probes::default(), "go");
    let both = json!([{"line": 17, "logMessage": "DETRICS:order_id={id}"}, {"line": 23}]);
    let r = only_response(&f.handle(&set_bps(1, "/s/orders.go", both)));
    assert_eq!(
        r["body"]["breakpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["verified"] == true)
            .count(),
        2,
        "{r}"
    );
    let (lp, _) = f.probes().at(17);
    let (bp, _) = f.probes().at(23);
    let out = f.on_hits(&[
        hit(lp, vec![], vec![], vec![("id", V::Int(5))]),
        hit(
            bp,
            vec![frame("main.processOrder", "/s/orders.go", 23)],
            vec![("total", V::Float(9.5))],
            vec![],
        ),
    ]);
    let kinds: Vec<&str> = out.iter().map(|m| m["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["output", "stopped"]);
    assert_eq!(out[0]["body"]["output"], "> [Go 1]: DETRICS:order_id=5\n");
    f.handle(&req(2, "continue", json!({"threadId":1})));
    // Drop the logpoint: the breakpoint keeps its probe (same id), and the other way round.
    f.handle(&set_bps(3, "/s/orders.go", json!([{"line": 23}])));
    assert_eq!(f.probes().at(23).0, bp);
    assert_eq!(f.probes().live.len(), 1);
    f.handle(&set_bps(
        4,
        "/s/orders.go",
        json!([{"line": 17, "logMessage": "DETRICS:order_id={id}"}]),
    ));
    let (lp2, _) = f.probes().at(17);
    assert_eq!(f.probes().live.len(), 1);
    let out = f.on_hits(&[
        hit(lp2, vec![], vec![], vec![("id", V::Int(6))]),
        hit(bp, vec![], vec![], vec![]),
    ]);
    assert_eq!(
        out.len(),
        1,
        "the removed breakpoint's hit is dropped: {out:?}"
    );
    assert_eq!(out[0]["body"]["output"], "> [Go 1]: DETRICS:order_id=6\n");
}
