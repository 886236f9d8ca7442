//! A live capture of values whose type refers to itself (issue #12 point 5: cyclic types): the
//! `ring` C fixture walks a ring of three `struct node { struct node *next, *self; int v;
//! char tag[8]; }`, and `capture` reads, at its probed line, the node itself (`*n`, a struct
//! with two pointers to its own type), a field three hops round the ring back to the start, a
//! chain through `self`, and the global array of all three nodes. Every value equals what the
//! fixture printed for the same round, pointers included; no hang, no depth error.

use std::time::Duration;

use detrix_e2e::{
    agent_bin, build_c_fixture, c_fixture_source, capture_args, marker_line, parse_events,
    parse_kv, require_root, run_agent, Build, Fixture,
};
use serde_json::{json, Value};

const PRINT_WAIT: Duration = Duration::from_secs(5);

/// The printed `key=value` as a JSON integer.
fn int(kv: &std::collections::HashMap<String, String>, key: &str) -> Value {
    let v: i64 = kv[key]
        .parse()
        .unwrap_or_else(|e| panic!("printed {key}={} is not an integer: {e}", kv[key]));
    json!(v)
}

#[test]
fn a_ring_of_self_referencing_nodes_reads_as_the_program_printed_it() {
    require_root();
    agent_bin();
    let exe = build_c_fixture("ring", Build::Debug);
    let line = marker_line(&c_fixture_source("ring"), "visit");
    let fixture = Fixture::start(&exe, &["-1", "20"]);
    let at = format!("ring.c:{line}");
    let exprs = [
        "round",
        "*n",
        "n->next->next->next->v",
        "n->self->self->next->v",
        "n->tag",
        "nodes",
    ];
    let out = run_agent(&capture_args(
        fixture.pid(),
        &at,
        &exprs,
        &["--count", "4", "--format", "json"],
    ));
    out.assert_success();
    let events = parse_events(&out);
    assert_eq!(events.len(), 4, "--count 4: {events:?}");
    for e in &events {
        let round = i64::try_from(e.int("round")).expect("round fits i64");
        let printed = fixture.process_line(round, PRINT_WAIT);
        let kv = parse_kv(&printed);
        let node = json!({
            "next": kv["next"],
            "self": kv["self"],
            "v": int(&kv, "v"),
            "tag": kv["tag"],
        });
        assert_eq!(e.value("*n"), &node, "`*n` in round {round}: {printed}");
        assert_eq!(
            e.value("n->next->next->next->v"),
            &int(&kv, "loop_v"),
            "three hops round the ring in round {round}: {printed}"
        );
        assert_eq!(
            e.value("n->self->self->next->v"),
            &int(&kv, "next_v"),
            "through `self` twice in round {round}: {printed}"
        );
        assert_eq!(e.value("n->tag"), &json!(kv["tag"]), "{printed}");
        // The whole ring: each node's value as printed, each `self` its own address, and each
        // `next` the following node's `self`.
        let ring = e.value("nodes").as_array().expect("nodes is an array");
        assert_eq!(ring.len(), 3, "{}", e.raw);
        for (i, n) in ring.iter().enumerate() {
            assert_eq!(n["v"], int(&kv, &format!("v{i}")), "nodes[{i}]: {printed}");
            assert_eq!(n["tag"], json!(format!("n{i}")), "nodes[{i}]: {printed}");
            assert_eq!(
                n["next"],
                ring[(i + 1) % 3]["self"],
                "nodes[{i}]: {}",
                e.raw
            );
        }
        let current = ring
            .iter()
            .find(|n| n["self"] == json!(kv["self"]))
            .unwrap_or_else(|| panic!("`n` is one of `nodes`: {}", e.raw));
        assert_eq!(current, &node, "{}", e.raw);
    }
}
