//! The facade's effects themselves, stepped by hand (no harness): what it asks the shell to
//! do, in which order, and what it does with results that arrive late or not at all.

use serde_json::{json, Value};

use super::facade::{Effect, Facade, Input, Options, ProbeId};

fn set_bps(seq: i64, bps: Value) -> Value {
    let mut r = json!({"type":"request","seq":seq,"command":"setBreakpoints","arguments":{"source":{"path":"/s/orders.go"}}});
    r["arguments"]["breakpoints"] = bps;
    r
}

fn sent(effects: &[Effect]) -> Vec<Value> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// `(kind, probe, line)` of every install and remove, in order.
fn probe_effects(effects: &[Effect]) -> Vec<(&'static str, ProbeId, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Install { probe, spec, .. } => Some(("install", *probe, spec.line)),
            Effect::Remove(p) => Some(("remove", *p, 0)),
            _ => None,
        })
        .collect()
}

const fn probe(n: u64) -> ProbeId {
    ProbeId { session: 7, n }
}

#[test]
fn set_breakpoints_installs_then_answers_when_every_install_has_answered() {
    let mut f = Facade::new(7, Options::for_language("go"));
    let fx = f.step(Input::Request(&set_bps(
        1,
        json!([{"line": 17, "logMessage": "DETRICS:a={id}"}, {"line": 23}]),
    )));
    assert_eq!(
        probe_effects(&fx),
        [("install", probe(1), 17), ("install", probe(2), 23)],
        "probes are named by the session: {fx:?}"
    );
    assert!(sent(&fx).is_empty(), "no answer before the installs report");
    // A request meanwhile is held, and answered after the one it waited behind.
    let fx = f.step(Input::Request(
        &json!({"type":"request","seq":2,"command":"configurationDone"}),
    ));
    assert!(fx.is_empty(), "{fx:?}");
    let fx = f.step(Input::Installed {
        probe: probe(1),
        result: Ok(()),
    });
    assert!(fx.is_empty(), "still waiting for probe 2: {fx:?}");
    let fx = f.step(Input::Installed {
        probe: probe(2),
        result: Err("orders.go:23 has no code".into()),
    });
    let msgs = sent(&fx);
    assert_eq!(
        msgs.iter()
            .map(|m| (
                m["request_seq"].as_i64().unwrap(),
                m["seq"].as_i64().unwrap()
            ))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 2)],
        "answers in request order: {msgs:?}"
    );
    assert_eq!(
        msgs[0]["body"]["breakpoints"],
        json!([
            {"id": 1, "verified": true, "line": 17, "source": {"name": "orders.go", "path": "/s/orders.go"}},
            {"verified": false, "line": 23, "message": "orders.go:23 has no code"},
        ])
    );
    assert_eq!(f.installed(), 1);
    // Replacing the file's set removes the stale probe before installing the new one.
    let fx = f.step(Input::Request(&set_bps(3, json!([{"line": 30}]))));
    assert_eq!(
        probe_effects(&fx),
        [("remove", probe(1), 0), ("install", probe(3), 30)]
    );
}

#[test]
fn an_install_answered_after_close_is_removed_and_close_removes_the_rest() {
    let mut f = Facade::new(7, Options::for_language("go"));
    f.step(Input::Request(&set_bps(1, json!([{"line": 17}]))));
    f.step(Input::Installed {
        probe: probe(1),
        result: Ok(()),
    });
    let fx = f.step(Input::Request(&set_bps(
        2,
        json!([{"line": 17}, {"line": 18}]),
    )));
    assert_eq!(probe_effects(&fx), [("install", probe(2), 18)]);
    let fx = f.step(Input::Close);
    assert_eq!(probe_effects(&fx), [("remove", probe(1), 0)]);
    let fx = f.step(Input::Installed {
        probe: probe(2),
        result: Ok(()),
    });
    assert_eq!(
        probe_effects(&fx),
        [("remove", probe(2), 0)],
        "nothing installed for a closed session stays"
    );
    assert!(f.step(Input::Close).is_empty(), "close is idempotent");
    let fx = f.step(Input::Installed {
        probe: probe(9),
        result: Err("refused".into()),
    });
    assert!(fx.is_empty(), "a failed install left nothing to remove");
}

#[test]
fn a_probe_the_cpu_breaker_switched_off_is_reported_as_a_changed_unverified_breakpoint() {
    let mut f = Facade::new(7, Options::for_language("go"));
    f.step(Input::Request(&set_bps(
        1,
        json!([{"line": 17, "logMessage": "DETRICS:a={id}"}]),
    )));
    let fx = f.step(Input::Installed {
        probe: probe(1),
        result: Ok(()),
    });
    assert_eq!(sent(&fx)[0]["body"]["breakpoints"][0]["id"], 1);
    let fx = f.step(Input::SwitchedOff {
        probe: probe(1),
        why: "cost 3.00% of a CPU over the last 1.0 s exceeds the 1.00% budget",
    });
    let message = "switched off by the CPU breaker: cost 3.00% of a CPU over the last 1.0 s exceeds the 1.00% budget. Remove the breakpoint and set it again to switch it back on";
    assert_eq!(
        sent(&fx),
        [
            json!({"seq": 2, "type": "event", "event": "breakpoint", "body": {"reason": "changed", "breakpoint": {
            "id": 1, "verified": false, "line": 17, "message": message,
            "source": {"name": "orders.go", "path": "/s/orders.go"}}}})
        ]
    );
    assert!(
        probe_effects(&fx).is_empty(),
        "the registry removed it already: {fx:?}"
    );
    assert_eq!(f.installed(), 0);
    // Told once: a second notice, or one for a probe of another session, says nothing.
    assert!(f
        .step(Input::SwitchedOff {
            probe: probe(1),
            why: "again"
        })
        .is_empty());
    assert!(f
        .step(Input::SwitchedOff {
            probe: ProbeId { session: 8, n: 1 },
            why: "not ours"
        })
        .is_empty());
    // Adding a line next to it does not bring it back; its entry is answered unverified.
    let fx = f.step(Input::Request(&set_bps(
        2,
        json!([{"line": 17, "logMessage": "DETRICS:a={id}"}, {"line": 18, "logMessage": "DETRICS:b={id}"}]),
    )));
    assert_eq!(probe_effects(&fx), [("install", probe(2), 18)]);
    let fx = f.step(Input::Installed {
        probe: probe(2),
        result: Ok(()),
    });
    assert_eq!(
        sent(&fx)[0]["body"]["breakpoints"],
        json!([
            {"id": 1, "verified": false, "line": 17, "message": message, "source": {"name": "orders.go", "path": "/s/orders.go"}},
            {"id": 2, "verified": true, "line": 18, "source": {"name": "orders.go", "path": "/s/orders.go"}},
        ])
    );
    // Removing it removes nothing more from the kernel; setting it again installs it again.
    let fx = f.step(Input::Request(&set_bps(
        3,
        json!([{"line": 18, "logMessage": "DETRICS:b={id}"}]),
    )));
    assert!(probe_effects(&fx).is_empty(), "{fx:?}");
    let fx = f.step(Input::Request(&set_bps(
        4,
        json!([{"line": 18, "logMessage": "DETRICS:b={id}"}, {"line": 17, "logMessage": "DETRICS:a={id}"}]),
    )));
    assert_eq!(probe_effects(&fx), [("install", probe(3), 17)]);
}
