//! The client control plane, `/detrix/*` (contract.md §2), served with axum: what an embedded
//! Detrix client serves inside its process, served here on the target's behalf.
//!
//! Field for field as the SDKs: snake_case JSON, `connection_id: null` while asleep (Go and
//! Python emit it; §13), 404 `{"error":"not found"}` for an unknown path or method (Rust SDK),
//! 503 when the daemon is unreachable or refuses the registration, 500 otherwise. Who may call
//! is [`auth`]'s one layer over the whole router, checked before routing (issue #12): root, the
//! agent's uid and the daemon's uid pass; everyone else needs the token; only `/detrix/health`
//! and `/detrix/discover` are open (§2.4). A wake's `daemon_url` must be the configured one or one named by
//! `--allow-daemon-url` (403 otherwise), so the token goes nowhere the operator did not name.

pub mod auth;
pub mod files;
pub mod listener;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::daemon::{AgentHandle, DaemonError, WakeError};

/// An error as the control plane answers it: a status and `{"error": "<sentence>"}`.
#[derive(Debug)]
pub enum ControlError {
    NotFound,
    /// A wake names a daemon the operator did not configure.
    ForeignDaemon(String),
    BadRequest(String),
    Wake(WakeError),
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ControlError::ForeignDaemon(url) => (
                StatusCode::FORBIDDEN,
                format!("daemon_url `{url}` is not the configured daemon; start the agent with --allow-daemon-url {url} to allow it"),
            ),
            ControlError::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            ControlError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ControlError::Wake(e) => {
                let status = match &e {
                    WakeError::Daemon(
                        DaemonError::Unreachable { .. }
                        | DaemonError::NotDetrix { .. }
                        | DaemonError::RegisterRefused { .. },
                    ) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, e.to_string())
            }
        };
        (status, Json(json!({ "error": msg }))).into_response()
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "service": "detrix-client"}))
}

async fn status(State(agent): State<AgentHandle>) -> Json<Value> {
    let v = agent.view();
    let mut body = json!({
        "state": v.state,
        "name": v.name,
        "control_host": v.control_host,
        "control_port": v.control_port,
        "debug_port": v.debug_port,
        "debug_port_active": v.debug_port_active,
        "daemon_url": v.daemon_url,
        "connection_id": v.connection_id,
    });
    // Extra keys only when there is something to report (the SDKs' status has neither): a
    // daemon session lost while awake (issue #12 point 6), hits a slow daemon made us drop,
    // probes the CPU breaker switched off.
    if v.session_lost {
        body["daemon_session"] = "lost".into();
    }
    if v.dropped_hits > 0 {
        body["dropped_hits"] = v.dropped_hits.into();
    }
    if v.switched_off > 0 {
        body["probes_switched_off"] = v.switched_off.into();
        body["probe_switched_off_reason"] = v.switched_off_reason.clone().into();
    }
    // While awake and once anything hit, the engine's counters for this target since it
    // started (every logpoint, removed ones included): with `dropped_hits` they account for
    // every hit — `hits` = events handed to the daemon + `dropped_ring_full` + `rate_limited` +
    // `condition_false` + `no_plan` + `other_process` + `dropped_hits` + `hits_after_remove`
    // (events of a probe read after it was removed; issue #12 point 6). Asleep, the status is
    // the SDKs' own.
    if v.state == "awake" {
        if let Some(s) = agent.stats.stats().await {
            if s.totals.hits > 0 {
                body["probe_counters"] = probe_counters(&s.totals);
            }
            if s.after_remove > 0 {
                body["hits_after_remove"] = s.after_remove.into();
            }
        }
    }
    Json(body)
}

/// `/detrix/status`'s `probe_counters`: the engine's totals by name (`bpf_ns` left out: an
/// estimate, and `/metrics`' business).
fn probe_counters(t: &detrix_common::Counters) -> Value {
    t.named()
        .filter(|(f, _)| f.name != "bpf_ns")
        .map(|(f, v)| (f.name.to_owned(), Value::from(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

async fn info(State(agent): State<AgentHandle>) -> Json<Value> {
    let i = &agent.info;
    let mut body = json!({
        "name": i.name,
        "pid": i.pid,
        "agent": concat!("detrix-agent ", env!("CARGO_PKG_VERSION")),
        "agent_pid": std::process::id(),
        "language": i.language,
        "executable": i.executable,
        "workspace_root": i.workspace_root,
        "build_commit": i.build.commit,
        "build_tag": i.build.tag,
        "build_source": i.build.source(),
        "build_tag_source": i.build.tag_source.map(crate::buildinfo::Source::name),
        "build_modified": i.build.modified,
        "build_id": i.build.build_id,
    });
    // InfoResponse's optional go_version (contract §2.2): the target's, from its binary.
    if let Some(v) = &i.build.go_version {
        body["go_version"] = v.clone().into();
    }
    Json(body)
}

/// The daemon a wake body names: `None` for an empty body, `{}`, a null or empty
/// `daemon_url`; the URL when `allowed` accepts it. Apart from the handler so it is tested and
/// fuzzed without an agent.
///
/// # Errors
/// [`ControlError::BadRequest`] for a body that is not JSON or a `daemon_url` that is not a
/// string, [`ControlError::ForeignDaemon`] for a URL `allowed` refuses.
pub fn wake_daemon_url(
    body: &[u8],
    allowed: impl Fn(&str) -> bool,
) -> Result<Option<String>, ControlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ControlError::BadRequest(format!(
            "wake body is not JSON ({e}); send {{}} or {{\"daemon_url\":\"http://host:port\"}}"
        ))
    })?;
    match v.get("daemon_url") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if allowed(s) => Ok(Some(s.clone())),
        Some(Value::String(s)) => {
            tracing::warn!(daemon_url = s, "wake refused: daemon_url is neither the configured daemon nor one named by --allow-daemon-url");
            Err(ControlError::ForeignDaemon(s.clone()))
        }
        Some(_) => Err(ControlError::BadRequest(
            "wake body's daemon_url is not a string".into(),
        )),
    }
}

async fn wake(State(agent): State<AgentHandle>, body: Bytes) -> Result<Json<Value>, ControlError> {
    let daemon_url = wake_daemon_url(&body, |s| agent.daemon_url_allowed(s))?;
    let r = agent.wake(daemon_url).await.map_err(ControlError::Wake)?;
    Ok(Json(json!({
        "status": r.status,
        "debug_port": r.debug_port,
        "connection_id": r.connection_id,
        "daemon_url": r.daemon_url,
    })))
}

async fn sleep(State(agent): State<AgentHandle>) -> Json<Value> {
    let r = agent.sleep().await;
    Json(json!({ "status": r.0 }))
}

async fn discover(State(agent): State<AgentHandle>) -> Json<Value> {
    let v = agent.view();
    let host = if v.control_host == "0.0.0.0" || v.control_host == "::" {
        None
    } else {
        Some(&v.control_host)
    };
    let mut body = json!({"name": v.name, "daemon_url": v.daemon_url});
    if let Some(h) = host {
        body["control_plane_url"] = format!("http://{h}:{}", v.control_port).into();
    }
    Json(body)
}

/// The answer to a path or method no route takes (also the host control plane's).
pub(crate) async fn not_found() -> ControlError {
    ControlError::NotFound
}

/// The router, with auth in front of everything.
pub fn router(agent: AgentHandle) -> Router {
    let policy = auth::Policy {
        token: agent.token.clone(),
        daemon_urls: agent.daemon_urls.to_vec(),
    };
    let routes = Router::new()
        .route("/detrix/health", get(health))
        .route("/detrix/status", get(status))
        .route("/detrix/info", get(info))
        .route("/detrix/wake", post(wake))
        .route("/detrix/sleep", post(sleep))
        .route("/detrix/discover", get(discover))
        .route("/detrix/files/read", post(files::files_read))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found);
    auth::protect(routes, policy).with_state(agent)
}

/// Serves the control plane on `listener` until `shutdown` resolves, with [`listener`]'s
/// connection cap and answer timeout.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    agent: AgentHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener::Capped::new(listener),
        router(agent).into_make_service_with_connect_info::<auth::Conn>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
