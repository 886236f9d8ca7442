//! A stand-in Kubernetes API server for exactly what the node agent and `fleet` use, on the
//! real wire format:
//! - pods: `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods` as a list (a `PodList`
//!   with the store's `resourceVersion`) and as a watch (`watch=true`: newline-delimited
//!   `{"type","object"}` events in a chunked response, from the given `resourceVersion` on,
//!   `BOOKMARK`s when asked for, ended at `timeoutSeconds`), filtered by the `spec.nodeName`
//!   field selector and equality label selectors;
//! - `DetrixWake` (`detrix.dev/v1alpha1`): list and watch (all namespaces or one), get, create
//!   (`uid` and `creationTimestamp` set by the server, 409 on a taken name), a merge patch of
//!   the object (its `status` left alone, as for a CRD with the status subresource), and a
//!   server-side apply of `status` (`application/apply-patch+yaml`), where `status.nodes` is a
//!   list-map keyed by `node`: each applier's entries replace those with the same key and the
//!   others stay, as the CRD's `x-kubernetes-list-type: map` makes the real server do.
//!
//! A watch from a `resourceVersion` older than the compacted history gets the API server's
//! in-stream `ERROR` event with a `410` `Status` (reason `Expired`), after which a client must
//! list again. Every request is counted by the bearer token it carries (one per node agent,
//! from [`KubeApi::kubeconfig_as`]).
//!
//! Objects are typed (`k8s-openapi` types, [`wake::DetrixWake`]) serialized with serde, not
//! hand-written JSON. Plain HTTP on 127.0.0.1 (a kubeconfig names it); one thread per
//! connection, keep-alive honoured.

#![allow(
    dead_code,
    reason = "each test binary (node_mode, fleet_wake, the fleet bench) uses a part of the stand-in"
)]

pub mod pods;
pub mod wake;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

/// The two kinds of object served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Res {
    Pod,
    Wake,
}

impl Res {
    fn list_kind(self) -> &'static str {
        match self {
            Res::Pod => "PodList",
            Res::Wake => "DetrixWakeList",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Res::Pod => "v1",
            Res::Wake => "detrix.dev/v1alpha1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Res::Pod => "Pod",
            Res::Wake => "DetrixWake",
        }
    }
}

/// Requests of one kind, for one resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub lists: u64,
    pub watches: u64,
    pub expired: u64,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// (resource, uid) → the object as stored (resourceVersion set).
    objects: BTreeMap<(Res, String), Value>,
    /// (resourceVersion, resource, event type, object) since the last compaction.
    log: Vec<(u64, Res, &'static str, Value)>,
    /// Watches from below this resourceVersion get 410.
    compacted: u64,
    /// Bumped to end every open watch.
    epoch: u64,
    counts: BTreeMap<Res, Counts>,
    /// Requests by bearer token.
    requests: BTreeMap<String, u64>,
    /// Each request by bearer token: `METHOD PATH`, with ` watch` for a watch.
    calls: BTreeMap<String, Vec<String>>,
    next_uid: u64,
}

impl Store {
    fn change(&mut self, res: Res, kind: &'static str, mut obj: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = obj["metadata"]["uid"].as_str().expect("uid").to_owned();
        if kind == "DELETED" {
            self.objects.remove(&(res, uid));
        } else {
            self.objects.insert((res, uid), obj.clone());
        }
        self.log.push((rv, res, kind, obj.clone()));
        obj
    }

    fn wake_named(&self, ns: &str, name: &str) -> Option<Value> {
        self.objects
            .iter()
            .find(|((r, _), o)| {
                *r == Res::Wake
                    && o["metadata"]["namespace"] == json!(ns)
                    && o["metadata"]["name"] == json!(name)
            })
            .map(|(_, o)| o.clone())
    }
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

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.state.0.lock().expect("store")
    }

    fn change(&self, res: Res, kind: &'static str, obj: Value) {
        self.store().change(res, kind, obj);
        self.state.1.notify_all();
    }

    /// Creates or replaces a pod (ADDED or MODIFIED for watchers).
    pub fn apply(&self, pod: &Pod) {
        let v = serde_json::to_value(pod).expect("pod JSON");
        let uid = v["metadata"]["uid"].as_str().expect("uid").to_owned();
        let known = self.store().objects.contains_key(&(Res::Pod, uid));
        self.change(Res::Pod, if known { "MODIFIED" } else { "ADDED" }, v);
    }

    /// Deletes a pod (DELETED with its last state).
    pub fn delete(&self, pod: &Pod) {
        let v = serde_json::to_value(pod).expect("pod JSON");
        self.change(Res::Pod, "DELETED", v);
    }

    /// The DetrixWake `ns/name` as stored, if any.
    pub fn wake(&self, ns: &str, name: &str) -> Option<wake::DetrixWake> {
        let v = self.store().wake_named(ns, name)?;
        Some(serde_json::from_value(v).expect("a stored DetrixWake parses"))
    }

    /// Creates a DetrixWake as the API server would on a POST (uid, creation time set).
    pub fn create_wake(&self, w: &wake::DetrixWake) {
        let v = serde_json::to_value(w).expect("DetrixWake JSON");
        let ns = w.metadata.namespace.clone().expect("namespace");
        create(&self.state, Res::Wake, &ns, v).expect("create the DetrixWake");
    }

    /// Replaces a DetrixWake's spec (as a merge patch of the spec would).
    pub fn set_spec(&self, ns: &str, name: &str, spec: &wake::Spec) {
        let mut s = self.store();
        let mut v = s.wake_named(ns, name).expect("the DetrixWake exists");
        v["spec"] = serde_json::to_value(spec).expect("spec JSON");
        s.change(Res::Wake, "MODIFIED", v);
        drop(s);
        self.state.1.notify_all();
    }

    /// Deletes a DetrixWake.
    pub fn delete_wake(&self, ns: &str, name: &str) {
        let mut s = self.store();
        let v = s.wake_named(ns, name).expect("the DetrixWake exists");
        s.change(Res::Wake, "DELETED", v);
        drop(s);
        self.state.1.notify_all();
    }

    /// Forgets the history (as etcd compaction does) and ends every open watch: a client
    /// resuming from its last resourceVersion is told 410 Gone.
    pub fn expire(&self) {
        let mut s = self.store();
        s.compacted = s.rv + 1;
        s.log.clear();
        s.epoch += 1;
        drop(s);
        self.state.1.notify_all();
    }

    /// (lists, watches, watches answered 410) of pods served so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let c = self.counts_of(Res::Pod);
        (c.lists, c.watches, c.expired)
    }

    /// Lists, watches and 410s of one resource.
    pub fn counts_of(&self, res: Res) -> Counts {
        self.store().counts.get(&res).copied().unwrap_or_default()
    }

    /// Requests made with `token` so far.
    pub fn requests(&self, token: &str) -> u64 {
        self.store().requests.get(token).copied().unwrap_or(0)
    }

    /// The requests made with `token` so far, in order: `METHOD PATH` (no query), with
    /// ` watch` appended for a watch.
    pub fn calls(&self, token: &str) -> Vec<String> {
        self.store().calls.get(token).cloned().unwrap_or_default()
    }

    /// Writes `nodes`' entries in the status of DetrixWake `ns/name` (and `expiresAt`) as
    /// their node agents would — a server-side apply of `status.nodes`, a list-map keyed by
    /// `node` — in one change: one MODIFIED event.
    pub fn apply_node_statuses(
        &self,
        ns: &str,
        name: &str,
        expires_at: &str,
        nodes: &[wake::Node],
    ) {
        let mut s = self.store();
        let mut v = s.wake_named(ns, name).expect("the DetrixWake exists");
        let mut all: Vec<Value> = v["status"]["nodes"].as_array().cloned().unwrap_or_default();
        for n in nodes {
            let entry = serde_json::to_value(n).expect("node status JSON");
            all.retain(|m| m["node"] != entry["node"]);
            all.push(entry);
        }
        all.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
        v["status"] = json!({"expiresAt": expires_at, "nodes": all});
        s.change(Res::Wake, "MODIFIED", v);
        drop(s);
        self.state.1.notify_all();
    }

    /// A kubeconfig naming this server, written to `path`.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        self.kubeconfig_as(path, "stand-in-token");
    }

    /// A kubeconfig naming this server with the bearer token `token`, written to `path`.
    pub fn kubeconfig_as(&self, path: &std::path::Path, token: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: node-agent\nusers:\n- name: node-agent\n  user:\n    token: {token}\ncurrent-context: stand-in\n",
            self.url
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }
}

/// Stores a new object (POST): 409 when the name is taken in the namespace.
fn create(
    state: &(Mutex<Store>, Condvar),
    res: Res,
    ns: &str,
    mut v: Value,
) -> Result<Value, (u16, String)> {
    let mut s = state.0.lock().expect("store");
    let name = v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        return Err((
            422,
            "metadata.name: Required value: name is required".to_owned(),
        ));
    }
    if s.wake_named(ns, &name).is_some() {
        return Err((
            409,
            format!("detrixwakes.detrix.dev \"{name}\" already exists"),
        ));
    }
    s.next_uid += 1;
    v["metadata"]["namespace"] = json!(ns);
    v["metadata"]["uid"] = json!(format!("{:08x}-0000-4000-8000-{:012x}", s.next_uid, s.rv));
    v["metadata"]["creationTimestamp"] = json!(now_rfc3339());
    v["metadata"]["generation"] = json!(1);
    let obj = s.change(res, "ADDED", v);
    drop(s);
    state.1.notify_all();
    Ok(obj)
}

/// The time now as RFC 3339 with seconds (what creationTimestamp carries), UTC.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
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

/// One request: method, path, query, content type, bearer token, body.
struct Request {
    method: String,
    path: String,
    query: String,
    content_type: String,
    token: String,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut len = 0usize;
    let (mut content_type, mut token) = (String::new(), String::new());
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.parse().unwrap_or(0),
                "content-type" => content_type = v.to_owned(),
                "authorization" => token = v.trim_start_matches("Bearer ").to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Some(Request {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        content_type,
        token,
        body,
    })
}

fn reply(out: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Error",
    };
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

/// What a path names: a resource, maybe a namespace, maybe an object, maybe its status.
struct Route {
    res: Res,
    ns: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(path: &str) -> Option<Route> {
    let (res, rest) = if let Some(r) = path.strip_prefix("/api/v1") {
        (Res::Pod, r)
    } else if let Some(r) = path.strip_prefix("/apis/detrix.dev/v1alpha1") {
        (Res::Wake, r)
    } else {
        return None;
    };
    let plural = match res {
        Res::Pod => "pods",
        Res::Wake => "detrixwakes",
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let (ns, tail) = match parts.as_slice() {
        ["namespaces", ns, tail @ ..] => (Some((*ns).to_owned()), tail),
        tail => (None, tail),
    };
    match tail {
        [p] if *p == plural => Some(Route {
            res,
            ns,
            name: None,
            status: false,
        }),
        [p, n] if *p == plural && ns.is_some() => Some(Route {
            res,
            ns,
            name: Some((*n).to_owned()),
            status: false,
        }),
        [p, n, "status"] if *p == plural && ns.is_some() && res == Res::Wake => Some(Route {
            res,
            ns,
            name: Some((*n).to_owned()),
            status: true,
        }),
        _ => None,
    }
}

fn serve_conn(conn: TcpStream, state: &(Mutex<Store>, Condvar)) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut out = conn;
    while let Some(req) = read_request(&mut reader) {
        {
            let mut s = state.0.lock().expect("store");
            *s.requests.entry(req.token.clone()).or_default() += 1;
            let watching = param(&req.query, "watch").is_some_and(|w| w == "true" || w == "1");
            let call = format!(
                "{} {}{}",
                req.method,
                req.path,
                if watching { " watch" } else { "" }
            );
            s.calls.entry(req.token.clone()).or_default().push(call);
        }
        if handle(&mut out, state, &req).is_err() {
            return;
        }
    }
}

fn handle(
    out: &mut TcpStream,
    state: &(Mutex<Store>, Condvar),
    req: &Request,
) -> std::io::Result<()> {
    let not_found = |what: &str| status_body(404, "NotFound", what);
    let Some(r) = route(&req.path) else {
        let msg = format!("the stand-in does not serve {} {}", req.method, req.path);
        return reply(out, 404, &not_found(&msg));
    };
    let fields = param(&req.query, "fieldSelector");
    let labels = param(&req.query, "labelSelector");
    match (req.method.as_str(), &r.name) {
        ("GET", None) => {
            if param(&req.query, "watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(
                    out,
                    state,
                    &r,
                    &req.query,
                    fields.as_deref(),
                    labels.as_deref(),
                );
            }
            let body = {
                let mut s = state.0.lock().expect("store");
                s.counts.entry(r.res).or_default().lists += 1;
                let items: Vec<&Value> = s
                    .objects
                    .iter()
                    .filter(|((res, _), o)| {
                        *res == r.res
                            && in_ns(o, r.ns.as_deref())
                            && selected(o, fields.as_deref(), labels.as_deref())
                    })
                    .map(|(_, o)| o)
                    .collect();
                json!({"kind": r.res.list_kind(), "apiVersion": r.res.api_version(),
                    "metadata": {"resourceVersion": s.rv.to_string()}, "items": items})
            };
            reply(out, 200, &body)
        }
        ("GET", Some(name)) => {
            let ns = r.ns.as_deref().unwrap_or_default();
            let found = state.0.lock().expect("store").wake_named(ns, name);
            match found {
                Some(o) if r.res == Res::Wake => reply(out, 200, &o),
                _ => reply(
                    out,
                    404,
                    &not_found(&format!("detrixwakes.detrix.dev \"{name}\" not found")),
                ),
            }
        }
        ("POST", None) if r.res == Res::Wake && r.ns.is_some() => {
            let Ok(v) = serde_json::from_slice::<Value>(&req.body) else {
                return reply(
                    out,
                    400,
                    &status_body(400, "BadRequest", "the body is not JSON"),
                );
            };
            match create(state, Res::Wake, r.ns.as_deref().unwrap_or_default(), v) {
                Ok(o) => reply(out, 201, &o),
                Err((code, msg)) => reply(out, code, &status_body(code, "AlreadyExists", &msg)),
            }
        }
        ("PATCH", Some(name)) if r.res == Res::Wake => {
            let ns = r.ns.as_deref().unwrap_or_default();
            let Ok(patch) = serde_json::from_slice::<Value>(&req.body) else {
                return reply(
                    out,
                    400,
                    &status_body(400, "BadRequest", "the body is not JSON"),
                );
            };
            let mut s = state.0.lock().expect("store");
            let Some(mut obj) = s.wake_named(ns, name) else {
                drop(s);
                return reply(
                    out,
                    404,
                    &not_found(&format!("detrixwakes.detrix.dev \"{name}\" not found")),
                );
            };
            let ct = req.content_type.as_str();
            if r.status && ct.starts_with("application/apply-patch") {
                // Server-side apply of status: `nodes` is a list-map keyed by `node`.
                let mut nodes: Vec<Value> = obj["status"]["nodes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for n in patch["status"]["nodes"].as_array().into_iter().flatten() {
                    nodes.retain(|m| m["node"] != n["node"]);
                    nodes.push(n.clone());
                }
                nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
                if !obj["status"].is_object() {
                    obj["status"] = json!({});
                }
                obj["status"]["nodes"] = Value::Array(nodes);
                if let Some(e) = patch["status"].get("expiresAt").filter(|e| !e.is_null()) {
                    obj["status"]["expiresAt"] = e.clone();
                }
            } else if !r.status && ct.starts_with("application/merge-patch+json") {
                // The status subresource: a patch of the object leaves status alone.
                let status = obj["status"].clone();
                merge(&mut obj, &patch);
                obj["status"] = status;
                if obj["status"].is_null() {
                    obj.as_object_mut().map(|o| o.remove("status"));
                }
            } else {
                drop(s);
                let msg = format!("the stand-in takes merge patches of the object and apply patches of its status, not {ct}");
                return reply(out, 415, &status_body(415, "UnsupportedMediaType", &msg));
            }
            let obj = s.change(Res::Wake, "MODIFIED", obj);
            drop(s);
            state.1.notify_all();
            reply(out, 200, &obj)
        }
        _ => {
            let msg = format!("the stand-in does not serve {} {}", req.method, req.path);
            reply(out, 405, &status_body(405, "MethodNotAllowed", &msg))
        }
    }
}

fn in_ns(o: &Value, ns: Option<&str>) -> bool {
    ns.is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
}

fn chunk(out: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let line = format!("{v}\n");
    write!(out, "{:x}\r\n{line}\r\n", line.len())?;
    out.flush()
}

fn watch(
    out: &mut TcpStream,
    state: &(Mutex<Store>, Condvar),
    r: &Route,
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
    s.counts.entry(r.res).or_default().watches += 1;
    if from < s.compacted {
        s.counts.entry(r.res).or_default().expired += 1;
        drop(s);
        chunk(
            out,
            &json!({"type": "ERROR", "object": status_body(410, "Expired", &format!("too old resource version: {from}"))}),
        )?;
        return write!(out, "0\r\n\r\n");
    }
    let epoch = s.epoch;
    let mut seen = from;
    let end = Instant::now() + timeout;
    let mut last_bookmark = Instant::now() - Duration::from_secs(60);
    let wanted = |res: Res, o: &Value| {
        res == r.res && in_ns(o, r.ns.as_deref()) && selected(o, fields, labels)
    };
    loop {
        let batch: Vec<(&'static str, Value)> = s
            .log
            .iter()
            .filter(|(rv, res, _, o)| *rv > seen && wanted(*res, o))
            .map(|(_, _, k, o)| (*k, o.clone()))
            .collect();
        let newest = s.rv;
        drop(s);
        for (kind, obj) in batch {
            chunk(out, &json!({"type": kind, "object": obj}))?;
        }
        // Every event up to `newest` was sent or filtered out.
        seen = seen.max(newest);
        if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(1) {
            chunk(
                out,
                &json!({"type": "BOOKMARK", "object": {"kind": r.res.kind(), "apiVersion": r.res.api_version(),
                "metadata": {"resourceVersion": seen.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}),
            )?;
            last_bookmark = Instant::now();
        }
        s = m.lock().expect("store");
        if s.epoch != epoch || Instant::now() >= end {
            drop(s);
            return write!(out, "0\r\n\r\n");
        }
        if s.log.iter().all(|(rv, _, _, _)| *rv <= seen) {
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
