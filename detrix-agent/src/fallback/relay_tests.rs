//! The relay against a scripted debugger: frames pass both ways unchanged, and an agent that
//! vanishes at each point of a round gets exactly the safe detach that point needs.

use super::*;
use tokio::io::BufReader;
use tokio::net::UnixStream;

/// A scripted debugger: records every request it gets (command and arguments), answers each
/// with success, and can be made to send events.
struct FakeDebugger {
    rd: BufReader<tokio::io::ReadHalf<UnixStream>>,
    wr: tokio::io::WriteHalf<UnixStream>,
    seq: i64,
}

impl FakeDebugger {
    async fn next(&mut self) -> Option<Value> {
        tokio::time::timeout(Duration::from_secs(5), read_frame(&mut self.rd))
            .await
            .expect("the relay sent something within 5 s")
            .expect("a whole frame")
    }

    async fn send(&mut self, mut m: Value) {
        self.seq += 1;
        m["seq"] = json!(self.seq);
        self.wr.write_all(&encode_frame(&m)).await.unwrap();
    }

    async fn answer(&mut self, req: &Value) {
        self.send(json!({"type": "response", "request_seq": req["seq"], "command": req["command"], "success": true}))
            .await;
    }

    async fn event(&mut self, name: &str, body: Value) {
        self.send(json!({"type": "event", "event": name, "body": body}))
            .await;
    }
}

struct Harness {
    agent: UnixStream,
    dbg: FakeDebugger,
    relay: tokio::task::JoinHandle<Ended>,
}

fn harness() -> Harness {
    let (agent, relay_agent) = UnixStream::pair().unwrap();
    let (dbg, relay_dbg) = UnixStream::pair().unwrap();
    let relay = tokio::spawn(run(relay_agent, relay_dbg, || true, || true));
    let (rd, wr) = tokio::io::split(dbg);
    Harness {
        agent,
        dbg: FakeDebugger {
            rd: BufReader::new(rd),
            wr,
            seq: 0,
        },
        relay,
    }
}

fn req(seq: i64, command: &str, arguments: &Value) -> Value {
    json!({"seq": seq, "type": "request", "command": command, "arguments": arguments})
}

/// The agent's side of a round up to `configurationDone`, as `fallback::session` sends it.
async fn start_round(h: &mut Harness) -> Value {
    let attach = req(2, "attach", &json!({"pid": 42}));
    h.agent.write_all(&encode_frame(&attach)).await.unwrap();
    assert_eq!(
        h.dbg.next().await,
        Some(attach.clone()),
        "passed on unchanged"
    );
    let bp = req(
        3,
        "setBreakpoints",
        &json!({"source": {"path": "/src/chain.c"}, "breakpoints": [{"line": 38}]}),
    );
    h.agent.write_all(&encode_frame(&bp)).await.unwrap();
    let got = h.dbg.next().await.unwrap();
    assert_eq!(got, bp);
    h.dbg.answer(&got).await;
    let mut from_relay = BufReader::new(&mut h.agent);
    let back = read_frame(&mut from_relay).await.unwrap().unwrap();
    assert_eq!(
        (back["request_seq"].as_i64(), back["success"].as_bool()),
        (Some(3), Some(true)),
        "the response came back to the agent: {back}"
    );
    let done = req(4, "configurationDone", &Value::Null);
    h.agent.write_all(&encode_frame(&done)).await.unwrap();
    assert_eq!(h.dbg.next().await.unwrap()["command"], "configurationDone");
    attach
}

/// What the relay sends after the agent vanished, answered as a debugger would; the stream
/// must end with the debugger's input closed.
async fn detach_requests(dbg: &mut FakeDebugger, stop_on_pause: bool) -> Vec<Value> {
    let mut got = Vec::new();
    while let Some(m) = dbg.next().await {
        got.push(json!({"command": m["command"], "arguments": m["arguments"]}));
        dbg.answer(&m).await;
        if m["command"] == "pause" && stop_on_pause {
            dbg.event("stopped", json!({"reason": "pause", "threadId": 1}))
                .await;
        }
    }
    got
}

const CLEAR: &str = r#"{"command":"setBreakpoints","arguments":{"source":{"path":"/src/chain.c"},"breakpoints":[]}}"#;
const DISCONNECT: &str =
    r#"{"command":"disconnect","arguments":{"terminateDebuggee":false,"restart":false}}"#;
const PAUSE: &str = r#"{"command":"pause","arguments":{"threadId":0}}"#;

fn values(texts: &[&str]) -> Vec<Value> {
    texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

#[tokio::test]
async fn an_agent_gone_at_the_breakpoint_gets_breakpoints_cleared_then_disconnect() {
    let mut h = harness();
    let attach = start_round(&mut h).await;
    h.dbg.answer(&attach).await;
    h.dbg
        .event("stopped", json!({"reason": "breakpoint", "threadId": 7}))
        .await;
    // Mid-evaluate: a request passed on, and the agent killed before its answer.
    let eval = req(6, "evaluate", &json!({"expression": "(long)strlen(name)"}));
    h.agent.write_all(&encode_frame(&eval)).await.unwrap();
    let got = h.dbg.next().await.unwrap();
    assert_eq!(got, eval);
    drop(h.agent);
    h.dbg.answer(&got).await;
    assert_eq!(
        detach_requests(&mut h.dbg, false).await,
        values(&[CLEAR, DISCONNECT]),
        "a stopped target is not paused again"
    );
    assert_eq!(
        h.relay.await.unwrap(),
        Ended::AgentGone {
            steps: vec!["setBreakpoints ok".into(), "disconnect ok".into()]
        }
    );
}

#[tokio::test]
async fn an_agent_gone_while_the_target_runs_gets_it_paused_before_disconnect() {
    let mut h = harness();
    let attach = start_round(&mut h).await;
    h.dbg.answer(&attach).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(h.agent);
    assert_eq!(
        detach_requests(&mut h.dbg, true).await,
        values(&[CLEAR, PAUSE, DISCONNECT])
    );
    assert_eq!(
        h.relay.await.unwrap(),
        Ended::AgentGone {
            steps: vec![
                "setBreakpoints ok".into(),
                "pause ok".into(),
                "stopped ok".into(),
                "disconnect ok".into()
            ]
        }
    );
}

/// The agent killed while the attach is under way: the relay waits for it to complete, then
/// detaches the running target safely.
#[tokio::test]
async fn an_agent_gone_during_the_attach_waits_for_it_then_detaches() {
    let mut h = harness();
    let attach = start_round(&mut h).await;
    drop(h.agent);
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.dbg.answer(&attach).await;
    assert_eq!(
        detach_requests(&mut h.dbg, true).await,
        values(&[CLEAR, PAUSE, DISCONNECT])
    );
    let Ended::AgentGone { steps } = h.relay.await.unwrap() else {
        panic!("the agent left")
    };
    assert_eq!(steps[0], "attach ok");
}

/// Before any `attach` nothing is attached: the debugger's input is just closed.
#[tokio::test]
async fn an_agent_gone_before_attaching_only_closes_the_debuggers_input() {
    let mut h = harness();
    let init = req(1, "initialize", &json!({"adapterID": "lldb"}));
    h.agent.write_all(&encode_frame(&init)).await.unwrap();
    assert_eq!(h.dbg.next().await, Some(init));
    drop(h.agent);
    assert_eq!(h.dbg.next().await, None);
    assert_eq!(
        h.relay.await.unwrap(),
        Ended::AgentGone { steps: Vec::new() }
    );
}

/// The agent's own `disconnect` ends the round normally: the relay adds nothing, and returns
/// when the debugger closes.
#[tokio::test]
async fn after_the_agents_own_disconnect_the_relay_adds_nothing() {
    let mut h = harness();
    let attach = start_round(&mut h).await;
    h.dbg.answer(&attach).await;
    let disc = req(9, "disconnect", &json!({"terminateDebuggee": false}));
    h.agent.write_all(&encode_frame(&disc)).await.unwrap();
    let got = h.dbg.next().await.unwrap();
    h.dbg.answer(&got).await;
    let mut from_relay = BufReader::new(&mut h.agent);
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let m = read_frame(&mut from_relay).await.unwrap().unwrap();
        answers.push((m["request_seq"].as_i64(), m["command"].clone()));
    }
    assert_eq!(
        answers,
        [(Some(2), json!("attach")), (Some(9), json!("disconnect"))]
    );
    drop(h.dbg);
    assert_eq!(h.relay.await.unwrap(), Ended::DebuggerClosed);
}

/// The agent closing its channel after its own `disconnect` is the normal end: nothing is
/// added, the debugger's input is closed.
#[tokio::test]
async fn an_agent_that_closes_after_its_disconnect_gets_nothing_added() {
    let mut h = harness();
    let attach = start_round(&mut h).await;
    h.dbg.answer(&attach).await;
    let disc = req(9, "disconnect", &json!({"terminateDebuggee": false}));
    h.agent.write_all(&encode_frame(&disc)).await.unwrap();
    let got = h.dbg.next().await.unwrap();
    assert_eq!(got, disc);
    h.dbg.answer(&got).await;
    drop(h.agent);
    assert_eq!(h.dbg.next().await, None, "no request of the relay's own");
    assert_eq!(h.relay.await.unwrap(), Ended::AgentFinished);
}
