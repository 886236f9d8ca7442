//! The real daemon's side of the end-to-end tests (`DETRIX_BIN`): the C, Go and Rust fixture
//! builds the daemon's metrics are put on, and reading the events it stored.

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use detrix_e2e::{build_c_fixture, fixtures_out_dir, workspace_root, Build};
use serde_json::Value;

use super::Daemon;

/// One fixture program and the metrics put on it.
pub struct Case {
    pub src: PathBuf,
    pub exe: PathBuf,
    /// Single-expression metric at PROBE:process: the order id (1000 + round).
    pub id_expr: &'static str,
    /// Three-expression metric at PROBE:after: round, cost, customer.
    pub after_exprs: [&'static str; 3],
}

pub fn build(kind: &'static str) -> Case {
    let root = workspace_root().join("tests").join("fixtures");
    let out = fixtures_out_dir();
    std::fs::create_dir_all(&out).expect("create the fixtures directory");
    let run = |cmd: &mut Command| {
        let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(st.success(), "{cmd:?} failed: {st}");
    };
    match kind {
        "c" => Case {
            src: root
                .join("c/orders.c")
                .canonicalize()
                .expect("the C fixture source exists"),
            exe: build_c_fixture("orders", Build::Debug),
            id_expr: "(*o).id",
            after_exprs: ["(round)", "(cost)", "o.customer"],
        },
        "go" => {
            let exe = out.join("orders_go");
            let src = root
                .join("go/orders.go")
                .canonicalize()
                .expect("the Go fixture source exists");
            run(Command::new("go")
                .args(["build", "-gcflags=all=-N -l", "-o"])
                .arg(&exe)
                .arg(&src)
                .env("GOTOOLCHAIN", "local")
                .env("GOCACHE", out.join("gocache"))
                .env("GOFLAGS", "-mod=mod")
                .current_dir(src.parent().expect("a source file has a directory")));
            Case {
                src,
                exe,
                id_expr: "o.ID",
                after_exprs: ["round", "cost", "o.Customer"],
            }
        }
        _ => {
            let exe = out.join("orders_rs");
            let src = root
                .join("rust/orders.rs")
                .canonicalize()
                .expect("the Rust fixture source exists");
            run(Command::new("rustc")
                .args(["-g", "-C", "opt-level=0", "-o"])
                .arg(&exe)
                .arg(&src));
            Case {
                src,
                exe,
                id_expr: "o.id",
                after_exprs: ["round", "cost", "o.customer"],
            }
        }
    }
}

/// Stored events of a metric (newest first), waiting until at least `n` exist.
pub fn events(d: &Daemon, metric: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = d.get(&format!("/api/v1/events?metricName={metric}&limit=100"));
        let list = v.as_array().cloned().unwrap_or_default();
        if s == 200 && list.len() >= n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "metric {metric}: {} events after 15 s, wanted {n}; last answer {s} {v}",
            list.len()
        );
        thread::sleep(Duration::from_millis(250));
    }
}

pub fn value(ev: &Value, i: usize) -> Value {
    let raw = ev["values"][i]["valueJson"]
        .as_str()
        .unwrap_or_else(|| panic!("no values[{i}].valueJson in {ev}"));
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}
