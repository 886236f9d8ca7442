use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

const ID_A: &str = "3f4e2a8bd1c0975e6a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef";
const ID_B: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn pod(
    name: &str,
    labels: &[(&str, &str)],
    ann: &[(&str, &str)],
    containers: &[(&str, Option<&str>)],
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("shop".to_owned()),
            uid: Some(format!("uid-{name}")),
            labels: map(labels),
            annotations: map(ann),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            container_statuses: Some(
                containers
                    .iter()
                    .map(|(n, id)| ContainerStatus {
                        name: (*n).to_owned(),
                        container_id: id.map(|i| format!("containerd://{i}")),
                        ..ContainerStatus::default()
                    })
                    .collect(),
            ),
            ..PodStatus::default()
        }),
    }
}

fn base() -> Config {
    Config {
        rules: Vec::new(),
        wake: Wake::Manual,
        daemon_url: "http://127.0.0.1:8090".to_owned(),
        control_host: "127.0.0.1".to_owned(),
        control_port: 0,
    }
}

#[test]
fn selectors_parse_and_match() {
    let s = PodSelector::parse("app=orders, tier!=batch,canary,!legacy")
        .unwrap()
        .unwrap();
    let labels = |p: &[(&str, &str)]| map(p).unwrap();
    assert!(s.matches(&labels(&[("app", "orders"), ("canary", "")])));
    assert!(s.matches(&labels(&[
        ("app", "orders"),
        ("canary", "1"),
        ("tier", "web")
    ])));
    assert!(!s.matches(&labels(&[
        ("app", "orders"),
        ("canary", ""),
        ("tier", "batch")
    ])));
    assert!(!s.matches(&labels(&[
        ("app", "orders"),
        ("canary", ""),
        ("legacy", "y")
    ])));
    assert!(!s.matches(&labels(&[("app", "orders")])));
    assert!(!s.matches(&labels(&[("app", "billing"), ("canary", "")])));
    assert_eq!(
        PodSelector::parse("app==orders").unwrap(),
        PodSelector::parse("app=orders").unwrap()
    );
    assert_eq!(PodSelector::parse("  ").unwrap(), None);
    assert_eq!(
        PodSelector::parse("app in (a,b)").unwrap_err(),
        "pod selector `app in (a,b)`: `app in (a` is a set-based requirement, which is not supported; use key=value, key!=value, key or !key, joined by commas"
    );
    assert_eq!(
        PodSelector::parse("app=orders,,x").unwrap_err(),
        "pod selector `app=orders,,x`: `` is empty; use key=value, key!=value, key or !key, joined by commas"
    );
    assert_eq!(
        PodSelector::parse("=x").unwrap_err(),
        "pod selector `=x`: `=x` has no valid label key; use key=value, key!=value, key or !key, joined by commas"
    );
}

#[test]
fn observed_by_label_or_annotation_and_opt_out() {
    let sel = PodSelector::parse("app=orders").unwrap();
    let labelled = pod("a", &[("app", "orders")], &[], &[]);
    let annotated = pod("b", &[("app", "billing")], &[(OBSERVE, "true")], &[]);
    let opted_out = pod("c", &[("app", "orders")], &[(OBSERVE, "false")], &[]);
    let neither = pod("d", &[("app", "billing")], &[], &[]);
    assert!(observed(&labelled, sel.as_ref()));
    assert!(observed(&annotated, sel.as_ref()));
    assert!(!observed(&opted_out, sel.as_ref()));
    assert!(!observed(&neither, sel.as_ref()));
    // No selector: only annotated pods.
    assert!(!observed(&labelled, None));
    assert!(observed(&annotated, None));
}

#[test]
fn one_rule_per_started_container_with_annotations() {
    let p = pod(
        "orders-7d9f",
        &[],
        &[(LANGUAGE, "go"), (SAFE_MODE, "true"), (WAKE, "auto")],
        &[
            ("app", Some(&ID_A.to_ascii_uppercase())),
            ("sidecar", Some(ID_B)),
            ("init", None),
        ],
    );
    let rules = container_rules(&p).unwrap();
    let got: Vec<_> = rules
        .iter()
        .map(|r| {
            (
                r.origin.clone(),
                r.select.container.clone().unwrap(),
                r.language,
                r.safe_mode,
                r.wake,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "pod shop/orders-7d9f/app".to_owned(),
                ID_A.to_owned(),
                LanguageChoice::Go,
                true,
                Some(Wake::Auto)
            ),
            (
                "pod shop/orders-7d9f/sidecar".to_owned(),
                ID_B.to_owned(),
                LanguageChoice::Go,
                true,
                Some(Wake::Auto)
            ),
        ]
    );
    let process = crate::discover::Process {
        pid: 10,
        ns_pid: 1,
        uid: 0,
        comm: "orders".to_owned(),
        exe: "/app/orders".to_owned(),
        host_exe: "/app/orders".to_owned(),
        cmdline: Vec::new(),
        cgroup: format!("/kubepods.slice/cri-containerd-{ID_A}.scope"),
        container: Some(ID_A.to_owned()),
        start_time: 1,
    };
    assert!(rules[0].select.matches(&process));
    assert!(!rules[1].select.matches(&process));
    assert_eq!(rules[0].name.render(&process), "shop/orders-7d9f/app");
    // Defaults without annotations.
    let plain = container_rules(&pod("p", &[], &[], &[("c", Some(ID_A))])).unwrap();
    assert_eq!(
        (plain[0].language, plain[0].safe_mode, plain[0].wake),
        (LanguageChoice::Auto, false, None)
    );
}

#[test]
fn bad_annotations_are_one_sentence() {
    let bad = |k: &str, v: &str| {
        container_rules(&pod("p", &[], &[(k, v)], &[("c", Some(ID_A))])).unwrap_err()
    };
    assert_eq!(
        bad(SAFE_MODE, "yes"),
        "pod shop/p: annotation `detrix.dev/safe-mode`: `yes` is not a boolean; use \"true\" or \"false\""
    );
    assert_eq!(
        bad(LANGUAGE, "cobol"),
        "pod shop/p: annotation `detrix.dev/language`: `cobol` is not a language; use \"auto\", \"go\" or \"rust\""
    );
    assert_eq!(
        bad(WAKE, "now"),
        "pod shop/p: annotation `detrix.dev/wake`: `now` is not a wake policy; use \"manual\" or \"auto\""
    );
}

#[test]
fn container_ids_from_runtimes() {
    assert_eq!(
        container_id(&format!("containerd://{ID_A}")),
        Some(ID_A.to_owned())
    );
    assert_eq!(
        container_id(&format!("cri-o://{ID_B}")),
        Some(ID_B.to_owned())
    );
    assert_eq!(container_id("containerd://"), None);
    assert_eq!(container_id(ID_A), None);
}

#[test]
fn pod_rules_track_changes_and_merge_with_the_file() {
    let sel = PodSelector::parse("app=orders").unwrap();
    let mut r = PodRules::default();
    let a = pod("a", &[("app", "orders")], &[], &[("c", Some(ID_A))]);
    let b = pod("b", &[], &[(OBSERVE, "true")], &[("c", Some(ID_B))]);
    assert!(r.apply(&a, sel.as_ref()));
    assert!(
        !r.apply(&a, sel.as_ref()),
        "the same pod again changes nothing"
    );
    assert!(r.apply(&b, sel.as_ref()));
    assert_eq!(r.containers(), 2);
    let mut file = base();
    file.rules = crate::serve::config::merge(
        &crate::serve::config::Flags {
            select: vec!["comm=host-svc".to_owned()],
            ..Default::default()
        },
        None,
        &|_| None,
    )
    .unwrap()
    .rules;
    let origins: Vec<String> = r
        .config(&file)
        .rules
        .iter()
        .map(|x| x.origin.clone())
        .collect();
    assert_eq!(origins, ["pod shop/a/c", "pod shop/b/c", "--select #1"]);
    // Labels changed so the selector no longer matches: its rules go.
    let relabelled = pod("a", &[("app", "other")], &[], &[("c", Some(ID_A))]);
    assert!(r.apply(&relabelled, sel.as_ref()));
    assert!(r.delete(&b));
    assert!(!r.delete(&b));
    assert_eq!(r.containers(), 0);
    assert!(r.config(&file).rules.len() == 1);
}

#[test]
fn node_mode_config_needs_no_rule_and_the_shipped_file_parses() {
    let text = include_str!("../../../deploy/kubernetes/base/serve.toml");
    let flags = crate::serve::config::Flags {
        kubernetes: true,
        ..Default::default()
    };
    let cfg = crate::serve::config::merge(&flags, Some(("serve.toml", text)), &|_| None).unwrap();
    assert_eq!(
        (
            cfg.rules.len(),
            cfg.wake,
            cfg.daemon_url.as_str(),
            cfg.control_host.as_str(),
            cfg.control_port
        ),
        (0, Wake::Manual, "http://127.0.0.1:8090", "127.0.0.1", 8091)
    );
    let refused = crate::serve::config::merge(
        &crate::serve::config::Flags::default(),
        Some(("serve.toml", text)),
        &|_| None,
    )
    .unwrap_err();
    assert!(
        refused.0.starts_with("no rule selects any process"),
        "{refused}"
    );
}
