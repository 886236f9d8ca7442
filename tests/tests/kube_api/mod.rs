//! A stand-in Kubernetes API server for exactly what the node agent uses, on the real wire
//! format: `GET /api/v1/pods` as a list (a `PodList` with the store's `resourceVersion`) and as
//! a watch (`watch=true`: newline-delimited `{"type","object"}` events in a chunked response,
//! from the given `resourceVersion` on, `BOOKMARK`s when asked for, ended at `timeoutSeconds`),
//! both filtered by the `spec.nodeName` field selector and equality label selectors. A watch
//! from a `resourceVersion` older than the compacted history gets the API server's in-stream
//! `ERROR` event with a `410` `Status` (reason `Expired`), after which a client must list again.
//!
//! Objects are `k8s-openapi` types serialized with serde, not hand-written JSON. Plain HTTP on
//! 127.0.0.1 (a kubeconfig names it); one thread per connection, keep-alive honoured.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

#[derive(Default)]
struct Store {
    rv: u64,
    /// uid → the pod as stored (resourceVersion set).
    pods: BTreeMap<String, Value>,
    /// (resourceVersion, event type, object) since the start.
    log: Vec<(u64, &'static str, Value)>,
    /// Watches from below this resourceVersion get 410.
    compacted: u64,
    /// Bumped to end every open watch.
    epoch: u64,
    lists: u64,
    watches: u64,
    expired: u64,
}

/// See the module header.
pub struct KubeApi {
    pub url: String,
    state: Arc<(Mutex<Store>, Condvar)>,
}

impl KubeApi {
    pub fn start() -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in API server");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state: Arc<(Mutex<Store>, Condvar)> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve_conn(conn, &st));
            }
        });
        KubeApi { url, state }
    }

    fn change(&self, kind: &'static str, mut pod: Value) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().expect("store");
        s.rv += 1;
        let rv = s.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
        if kind == "DELETED" {
            s.pods.remove(&uid);
        } else {
            s.pods.insert(uid, pod.clone());
        }
        s.log.push((rv, kind, pod));
        cv.notify_all();
    }

    /// Creates or replaces a pod (ADDED or MODIFIED for watchers).
    pub fn apply(&self, pod: &Pod) {
        let v = serde_json::to_value(pod).expect("pod JSON");
        let uid = v["metadata"]["uid"].as_str().expect("uid").to_owned();
        let known = self.state.0.lock().expect("store").pods.contains_key(&uid);
        self.change(if known { "MODIFIED" } else { "ADDED" }, v);
    }

    /// Deletes a pod (DELETED with its last state).
    pub fn delete(&self, pod: &Pod) {
        let v = serde_json::to_value(pod).expect("pod JSON");
        self.change("DELETED", v);
    }

    /// Forgets the history (as etcd compaction does) and ends every open watch: a client
    /// resuming from its last resourceVersion is told 410 Gone.
    pub fn expire(&self) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().expect("store");
        s.compacted = s.rv + 1;
        s.log.clear();
        s.epoch += 1;
        cv.notify_all();
    }

    /// (lists, watches, watches answered 410) served so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let s = self.state.0.lock().expect("store");
        (s.lists, s.watches, s.expired)
    }

    /// A kubeconfig naming this server, written to `path`.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: node-agent\nusers:\n- name: node-agent\n  user:\n    token: stand-in-token\ncurrent-context: stand-in\n",
            self.url
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }
}

/// The query's `key`, percent-decoded.
fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(n) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(n);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `pod` passes the field and label selectors (equality forms, as the agent sends).
fn selected(pod: &Value, fields: Option<&str>, labels: Option<&str>) -> bool {
    let field_ok = fields.is_none_or(|f| {
        f.split(',').filter(|r| !r.is_empty()).all(|r| {
            let (k, v) = r
                .split_once("==")
                .or_else(|| r.split_once('='))
                .unwrap_or((r, ""));
            match k {
                "spec.nodeName" => pod["spec"]["nodeName"].as_str() == Some(v),
                "metadata.namespace" => pod["metadata"]["namespace"].as_str() == Some(v),
                "metadata.name" => pod["metadata"]["name"].as_str() == Some(v),
                _ => false,
            }
        })
    });
    let label_ok = labels.is_none_or(|l| {
        l.split(',').filter(|r| !r.is_empty()).all(|r| {
            let (k, v) = r.split_once('=').unwrap_or((r, ""));
            pod["metadata"]["labels"][k].as_str() == Some(v)
        })
    });
    field_ok && label_ok
}

fn serve_conn(conn: TcpStream, state: &(Mutex<Store>, Condvar)) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if !line.starts_with("GET ") || path != "/api/v1/pods" {
            let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("the stand-in serves GET /api/v1/pods only, not {}", line.trim()), "reason": "NotFound", "code": 404})
            .to_string();
            let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            continue;
        }
        let fields = param(query, "fieldSelector");
        let labels = param(query, "labelSelector");
        if param(query, "watch").is_some_and(|w| w == "true" || w == "1") {
            if watch(&mut out, state, query, fields.as_deref(), labels.as_deref()).is_err() {
                return;
            }
        } else {
            let body = {
                let mut s = state.0.lock().expect("store");
                s.lists += 1;
                let items: Vec<&Value> = s
                    .pods
                    .values()
                    .filter(|p| selected(p, fields.as_deref(), labels.as_deref()))
                    .collect();
                json!({"kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": s.rv.to_string()}, "items": items})
                .to_string()
            };
            if write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).is_err() {
                return;
            }
        }
    }
}

fn chunk(out: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let line = format!("{v}\n");
    write!(out, "{:x}\r\n{line}\r\n", line.len())?;
    out.flush()
}

fn watch(
    out: &mut TcpStream,
    state: &(Mutex<Store>, Condvar),
    query: &str,
    fields: Option<&str>,
    labels: Option<&str>,
) -> std::io::Result<()> {
    let from: u64 = param(query, "resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let bookmarks = param(query, "allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = param(query, "timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let (m, cv) = state;
    let mut s = m.lock().expect("store");
    s.watches += 1;
    if from < s.compacted {
        s.expired += 1;
        drop(s);
        chunk(
            out,
            &json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410}}),
        )?;
        return write!(out, "0\r\n\r\n");
    }
    let epoch = s.epoch;
    let mut seen = from;
    let end = Instant::now() + timeout;
    let mut last_bookmark = Instant::now() - Duration::from_secs(60);
    loop {
        let batch: Vec<(u64, &'static str, Value)> = s
            .log
            .iter()
            .filter(|(rv, _, p)| *rv > seen && selected(p, fields, labels))
            .cloned()
            .collect();
        let newest = s.rv;
        drop(s);
        for (_, kind, obj) in batch {
            chunk(out, &json!({"type": kind, "object": obj}))?;
        }
        // Every event up to `newest` was sent or filtered out.
        seen = seen.max(newest);
        if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(1) {
            chunk(
                out,
                &json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"resourceVersion": seen.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}),
            )?;
            last_bookmark = Instant::now();
        }
        s = m.lock().expect("store");
        if s.epoch != epoch || Instant::now() >= end {
            drop(s);
            return write!(out, "0\r\n\r\n");
        }
        if s.log.iter().all(|(rv, _, _)| *rv <= seen) {
            s = cv
                .wait_timeout(s, Duration::from_millis(500))
                .expect("store")
                .0;
            if s.epoch != epoch {
                drop(s);
                return write!(out, "0\r\n\r\n");
            }
        }
    }
}
