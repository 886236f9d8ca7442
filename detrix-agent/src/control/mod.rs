//! The client control plane, `/detrix/*` (contract.md §2), served with axum: what an embedded
//! Detrix client serves inside its process, served here on the target's behalf.
//!
//! Field for field as the SDKs: snake_case JSON, `connection_id: null` while asleep (Go and
//! Python emit it; §13), 404 `{"error":"not found"}` for an unknown path or method (Rust SDK),
//! 503 when the daemon is unreachable or refuses the registration, 500 otherwise. Auth is
//! checked before routing: loopback peers always pass, others need `Authorization: Bearer
//! <token>` (compared in constant time), and no configured token means remote callers are
//! refused. `/detrix/health` and `/detrix/discover` never need auth.

pub mod files;

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::daemon::{AgentHandle, DaemonError, WakeError};

/// An error as the control plane answers it: a status and `{"error": "<sentence>"}`.
#[derive(Debug)]
pub enum ControlError {
    Unauthorized,
    NotFound,
    BadRequest(String),
    Wake(WakeError),
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ControlError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized".to_owned()),
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

/// Whether a peer may skip the token: loopback addresses (IPv4-mapped IPv6 included).
#[must_use]
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Compares in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request with this peer, path and `Authorization` header may proceed.
#[must_use]
pub fn authorized(
    peer: IpAddr,
    path: &str,
    authorization: Option<&str>,
    token: Option<&str>,
) -> bool {
    if path == "/detrix/health" || path == "/detrix/discover" || is_loopback(peer) {
        return true;
    }
    match (token, authorization.and_then(|h| h.strip_prefix("Bearer "))) {
        (Some(want), Some(got)) => constant_time_eq(want.as_bytes(), got.as_bytes()),
        _ => false,
    }
}

async fn auth(
    State(agent): State<AgentHandle>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if authorized(peer.ip(), req.uri().path(), header, agent.token.as_deref()) {
        next.run(req).await
    } else {
        ControlError::Unauthorized.into_response()
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "service": "detrix-client"}))
}

async fn status(State(agent): State<AgentHandle>) -> Json<Value> {
    let v = agent.view();
    Json(json!({
        "state": v.state,
        "name": v.name,
        "control_host": v.control_host,
        "control_port": v.control_port,
        "debug_port": v.debug_port,
        "debug_port_active": v.debug_port_active,
        "daemon_url": v.daemon_url,
        "connection_id": v.connection_id,
    }))
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

async fn wake(State(agent): State<AgentHandle>, body: Bytes) -> Result<Json<Value>, ControlError> {
    let daemon_url = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            ControlError::BadRequest(format!(
                "wake body is not JSON ({e}); send {{}} or {{\"daemon_url\":\"http://host:port\"}}"
            ))
        })?;
        match v.get("daemon_url") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ControlError::BadRequest(
                    "wake body's daemon_url is not a string".into(),
                ))
            }
        }
    };
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

async fn not_found() -> ControlError {
    ControlError::NotFound
}

/// The router, with auth in front of everything.
pub fn router(agent: AgentHandle) -> Router {
    Router::new()
        .route("/detrix/health", get(health))
        .route("/detrix/status", get(status))
        .route("/detrix/info", get(info))
        .route("/detrix/wake", post(wake))
        .route("/detrix/sleep", post(sleep))
        .route("/detrix/discover", get(discover))
        .route("/detrix/files/read", post(files::files_read))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(agent.clone(), auth))
        .with_state(agent)
}

/// Serves the control plane on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    agent: AgentHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(agent).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_passes_remote_needs_the_token() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "10.0.0.7".parse().unwrap();
        assert!(authorized(lo, "/detrix/wake", None, None));
        assert!(authorized(lo6, "/detrix/wake", None, Some("t")));
        assert!(authorized(mapped, "/detrix/status", None, Some("t")));
        assert!(authorized(remote, "/detrix/health", None, Some("t")));
        assert!(authorized(remote, "/detrix/discover", None, None));
        assert!(!authorized(remote, "/detrix/wake", None, Some("t")));
        assert!(
            !authorized(remote, "/detrix/wake", Some("Bearer t"), None),
            "no configured token refuses remote callers"
        );
        assert!(
            !authorized(remote, "/detrix/wake", Some("bearer t"), Some("t")),
            "`Bearer ` is case-sensitive"
        );
        assert!(!authorized(
            remote,
            "/detrix/wake",
            Some("Bearer u"),
            Some("t")
        ));
        assert!(
            !authorized(remote, "/nope", None, Some("t")),
            "auth is checked before routing"
        );
        assert!(authorized(
            remote,
            "/detrix/wake",
            Some("Bearer t"),
            Some("t")
        ));
        assert!(!authorized(
            "0.0.0.0".parse().unwrap(),
            "/detrix/wake",
            None,
            None
        ));
    }
}
