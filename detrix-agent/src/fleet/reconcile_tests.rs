use super::*;

const KEY: &str = "shop/orders-wake";

fn desired(stage: u32) -> Desired {
    Desired {
        namespace: "shop".to_owned(),
        selector: "app=orders".to_owned(),
        plan: Plan::new(1, vec![50, 100]).unwrap(),
        stage,
        halted: false,
        safe_mode: false,
        expires_at_ms: 10_000,
    }
}

/// Four pods fleet-wide, `uid-0..3`, container `app`; this node runs uid-0 and uid-1.
fn fleet() -> Vec<(String, String)> {
    (0..4)
        .map(|i| (format!("uid-{i}"), "app".to_owned()))
        .collect()
}

fn cand(i: usize, safe_mode: bool) -> Candidate {
    Candidate {
        pod_uid: format!("uid-{i}"),
        container: "app".to_owned(),
        container_id: format!("c{i}"),
        name: format!("shop/orders-{i}/app"),
        safe_mode,
    }
}

fn local() -> Vec<Candidate> {
    vec![cand(0, false), cand(1, false)]
}

fn seen(r: &mut Reconciler, d: Desired, now_ms: u64) -> Vec<Effect> {
    r.step(Input::Seen {
        key: KEY.to_owned(),
        desired: d,
        now_ms,
    })
}

fn listed(r: &mut Reconciler, stage: u32) -> Vec<Effect> {
    r.step(Input::Listed {
        key: KEY.to_owned(),
        stage,
        fleet: fleet(),
        local: local(),
    })
}

fn wakes(fx: &[Effect]) -> Vec<&str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Wake { container_id, .. } => Some(container_id.as_str()),
            _ => None,
        })
        .collect()
}

fn sleeps(fx: &[Effect]) -> Vec<&str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Sleep { container_id, .. } => Some(container_id.as_str()),
            _ => None,
        })
        .collect()
}

fn report(fx: &[Effect]) -> Option<(u32, u32, u32, u32, u32, String)> {
    fx.iter().rev().find_map(|e| match e {
        Effect::Report { status: s, .. } => Some((
            s.stage,
            s.wanted,
            s.awake,
            s.failed,
            s.breaker_trips,
            s.message.clone(),
        )),
        _ => None,
    })
}

fn woke(r: &mut Reconciler, c: &str, ours: bool) -> Vec<Effect> {
    r.step(Input::Woke {
        key: KEY.to_owned(),
        container_id: c.to_owned(),
        result: Ok(Woken {
            ours,
            counts: Counts {
                switched_off: 2,
                dropped_hits: 7,
            },
        }),
    })
}

/// Which of uid-0..3 the plan puts in each stage (hash order), to know what this node wakes.
fn in_stage(stage: u32) -> Vec<String> {
    let f = fleet();
    let mut m: Vec<String> = desired(stage)
        .plan
        .members(stage, &f)
        .into_iter()
        .map(|(u, _)| u.clone())
        .collect();
    m.sort();
    m
}

fn local_ids(stage: u32) -> Vec<String> {
    in_stage(stage)
        .into_iter()
        .filter(|u| u == "uid-0" || u == "uid-1")
        .map(|u| u.replace("uid-", "c"))
        .collect()
}

#[test]
fn stages_wake_this_nodes_members_once_and_report() {
    let mut r = Reconciler::new("node-a");
    let fx = seen(&mut r, desired(0), 0);
    assert_eq!(
        fx,
        vec![Effect::ListPods {
            key: KEY.to_owned(),
            stage: 0,
            namespace: "shop".to_owned(),
            selector: "app=orders".to_owned()
        }]
    );
    // The same object again while the list is out: no second list.
    assert_eq!(seen(&mut r, desired(0), 1), vec![]);
    let fx = listed(&mut r, 0);
    let want0 = local_ids(0);
    assert_eq!(wakes(&fx), want0);
    let n0 = u32::try_from(want0.len()).unwrap();
    assert_eq!(report(&fx), Some((0, n0, 0, 0, 0, String::new())));
    for c in &want0 {
        woke(&mut r, c, true);
    }
    // Stage 1 (50% of 4 = 2): only the new members are woken.
    let fx = seen(&mut r, desired(1), 2);
    assert!(matches!(fx[..], [Effect::ListPods { stage: 1, .. }]));
    let fx = listed(&mut r, 1);
    let want1: Vec<String> = local_ids(1)
        .into_iter()
        .filter(|c| !want0.contains(c))
        .collect();
    assert_eq!(wakes(&fx), want1);
    for c in &want1 {
        woke(&mut r, c, true);
    }
    let fx = seen(&mut r, desired(2), 3);
    let fx2 = listed(&mut r, 2);
    assert!(matches!(fx[..], [Effect::ListPods { stage: 2, .. }]));
    let rest: Vec<String> = ["c0", "c1"]
        .iter()
        .map(|s| (*s).to_owned())
        .filter(|c| !local_ids(1).contains(c))
        .collect();
    assert_eq!(wakes(&fx2), rest);
    let mut last = Vec::new();
    for c in &rest {
        last = woke(&mut r, c, true);
    }
    assert_eq!(report(&last), Some((2, 2, 2, 0, 0, String::new())));
    // A late answer for an old stage wakes nothing.
    assert_eq!(wakes(&listed(&mut r, 1)), Vec::<&str>::new());
    assert_eq!(r.watched(), ["c0", "c1"]);
}

#[test]
fn halt_sleeps_only_what_this_object_woke_including_wakes_in_flight() {
    let mut r = Reconciler::new("node-a");
    seen(&mut r, desired(2), 0);
    let fx = listed(&mut r, 2);
    assert_eq!(wakes(&fx), ["c0", "c1"]);
    // c0 was already awake (someone else woke it); c1's wake is still under way.
    woke(&mut r, "c0", false);
    let mut d = desired(2);
    d.halted = true;
    let fx = seen(&mut r, d.clone(), 1);
    assert_eq!(sleeps(&fx), Vec::<&str>::new());
    // c1, still waking, is not asleep yet: counted awake until its wake returns.
    assert_eq!(
        report(&fx),
        Some((
            2,
            0,
            1,
            0,
            0,
            "halted: every target this wake woke sleeps".to_owned()
        ))
    );
    // The wake in flight returns: put straight back to sleep.
    let fx = woke(&mut r, "c1", true);
    assert_eq!(sleeps(&fx), ["c1"]);
    // Seen again (a re-list): nothing more.
    assert_eq!(seen(&mut r, d, 2), vec![]);
}

#[test]
fn a_trip_or_a_failure_is_reported_and_a_halt_sleeps_the_rest() {
    let mut r = Reconciler::new("node-a");
    seen(&mut r, desired(2), 0);
    listed(&mut r, 2);
    woke(&mut r, "c0", true);
    let fx = r.step(Input::Woke {
        key: KEY.to_owned(),
        container_id: "c1".to_owned(),
        result: Err("the daemon refused the registration (500)".to_owned()),
    });
    assert_eq!(
        report(&fx),
        Some((
            2,
            2,
            1,
            1,
            0,
            "shop/orders-1/app: the daemon refused the registration (500)".to_owned()
        ))
    );
    // The counts as at the wake (2 switched off, 7 dropped before it): nothing reported.
    assert_eq!(r.step(health("c0", 2, 7, None)), vec![]);
    // Hits dropped since the wake are reported, not a trip.
    let fx = r.step(health("c0", 2, 19, None));
    let s = last_status(&fx).expect("a report");
    assert_eq!(
        (s.awake, s.failed, s.breaker_trips, s.dropped_hits),
        (1, 1, 0, 12)
    );
    // Two probes switched off since the wake: two trips, exactly, with the breaker's reason
    // (the registration failure stays the first message).
    let why =
        "cost 0.40% of a CPU, over the 0.01% budget; raise the CPU budget or pick a colder line";
    let fx = r.step(health("c0", 4, 19, Some(why)));
    let s = last_status(&fx).expect("a report");
    assert_eq!(
        (s.awake, s.failed, s.breaker_trips, s.dropped_hits),
        (1, 1, 2, 12)
    );
    let mut d = desired(2);
    d.halted = true;
    let fx = seen(&mut r, d, 1);
    assert_eq!(sleeps(&fx), ["c0"]);
    // Until the sleep returns, c0 is not asleep.
    assert_eq!(
        last_status(&fx).map(|s| (s.wanted, s.awake, s.message)),
        Some((0, 1, HALTED.to_owned()))
    );
    let fx = r.step(Input::Slept {
        key: KEY.to_owned(),
        container_id: "c0".to_owned(),
    });
    // Asleep; the trips stay in the report.
    let s = last_status(&fx).expect("a report");
    assert_eq!(
        (s.wanted, s.awake, s.breaker_trips, s.dropped_hits),
        (0, 0, 2, 12)
    );
}

#[test]
fn a_trip_alone_names_the_target_and_the_breakers_reason() {
    let mut r = Reconciler::new("node-a");
    seen(&mut r, desired(2), 0);
    listed(&mut r, 2);
    woke(&mut r, "c0", true);
    woke(&mut r, "c1", true);
    let why =
        "cost 0.40% of a CPU, over the 0.01% budget; raise the CPU budget or pick a colder line";
    let fx = r.step(health("c1", 3, 7, Some(why)));
    assert_eq!(
        report(&fx),
        Some((
            2,
            2,
            2,
            0,
            1,
            format!(
                "shop/orders-1/app: the CPU breaker switched off 1 probe(s) since the wake ({why})"
            )
        ))
    );
}

#[test]
fn a_wake_under_way_at_the_halt_counts_as_awake_until_it_returns_and_sleeps() {
    let mut r = Reconciler::new("node-a");
    seen(&mut r, desired(2), 0);
    listed(&mut r, 2);
    woke(&mut r, "c0", true);
    let mut d = desired(2);
    d.halted = true;
    let fx = seen(&mut r, d, 1);
    assert_eq!(sleeps(&fx), ["c0"]);
    assert_eq!(last_status(&fx).map(|s| s.awake), Some(2));
    r.step(Input::Slept {
        key: KEY.to_owned(),
        container_id: "c0".to_owned(),
    });
    // c1's wake returns after the halt: it is put to sleep, and counts as asleep once that
    // sleep returns.
    let fx = woke(&mut r, "c1", true);
    assert_eq!(sleeps(&fx), ["c1"]);
    assert_eq!(last_status(&fx).map(|s| s.awake), None, "unchanged: 1");
    let fx = r.step(Input::Slept {
        key: KEY.to_owned(),
        container_id: "c1".to_owned(),
    });
    assert_eq!(
        last_status(&fx).map(|s| (s.awake, s.message)),
        Some((0, HALTED.to_owned()))
    );
}

fn health(c: &str, switched_off: u64, dropped_hits: u64, why: Option<&str>) -> Input {
    Input::Health {
        container_id: c.to_owned(),
        counts: Counts {
            switched_off,
            dropped_hits,
        },
        switched_off_reason: why.map(str::to_owned),
        session_lost: false,
        gone: false,
    }
}

fn last_status(fx: &[Effect]) -> Option<NodeStatus> {
    fx.iter().rev().find_map(|e| match e {
        Effect::Report { status, .. } => Some(status.clone()),
        _ => None,
    })
}

#[test]
fn the_ttl_ends_the_wake_on_the_node_and_an_expired_object_wakes_nothing() {
    let mut r = Reconciler::new("node-a");
    seen(&mut r, desired(2), 0);
    listed(&mut r, 2);
    woke(&mut r, "c0", true);
    woke(&mut r, "c1", true);
    assert_eq!(r.step(Input::Tick { now_ms: 9_999 }), vec![]);
    let fx = r.step(Input::Tick { now_ms: 10_000 });
    assert_eq!(sleeps(&fx), ["c0", "c1"]);
    assert_eq!(
        report(&fx).map(|s| s.5),
        Some("expired: the TTL passed, every target this wake woke sleeps".to_owned())
    );
    // A restarted agent that sees the object after its TTL lists nothing, wakes nothing.
    let mut fresh = Reconciler::new("node-a");
    let fx = seen(&mut fresh, desired(2), 10_001);
    assert!(
        fx.iter().all(|e| matches!(e, Effect::Report { .. })),
        "{fx:?}"
    );
}

#[test]
fn deletion_sleeps_and_a_deleted_pod_leaves_the_count() {
    let mut r = Reconciler::new("node-a");
    seen(&mut r, desired(2), 0);
    listed(&mut r, 2);
    woke(&mut r, "c0", true);
    woke(&mut r, "c1", true);
    let fx = r.step(Input::Health {
        container_id: "c1".to_owned(),
        counts: Counts::default(),
        switched_off_reason: None,
        session_lost: false,
        gone: true,
    });
    assert_eq!(report(&fx).map(|s| (s.1, s.2)), Some((1, 1)));
    let fx = r.step(Input::Deleted {
        key: KEY.to_owned(),
    });
    assert_eq!(
        fx,
        vec![Effect::Sleep {
            key: KEY.to_owned(),
            container_id: "c0".to_owned()
        }]
    );
    assert!(r.keys().is_empty());
}

#[test]
fn safe_mode_is_required_when_asked_and_a_lost_session_is_a_failure() {
    let mut r = Reconciler::new("node-a");
    let mut d = desired(2);
    d.safe_mode = true;
    seen(&mut r, d, 0);
    let fx = r.step(Input::Listed {
        key: KEY.to_owned(),
        stage: 2,
        fleet: fleet(),
        local: vec![cand(0, true), cand(1, false)],
    });
    assert_eq!(wakes(&fx), ["c0"]);
    assert_eq!(report(&fx).map(|s| s.3), Some(1));
    let fx = woke(&mut r, "c0", true);
    assert_eq!(report(&fx).map(|s| (s.2, s.3)), Some((1, 1)));
    let fx = r.step(Input::Health {
        container_id: "c0".to_owned(),
        counts: Counts {
            switched_off: 2,
            dropped_hits: 7,
        },
        switched_off_reason: None,
        session_lost: true,
        gone: false,
    });
    assert_eq!(report(&fx).map(|s| (s.2, s.3)), Some((0, 2)));
}
