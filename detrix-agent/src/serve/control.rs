//! The host control plane of `serve`: the target list, wake and sleep per target or for every
//! target a selector picks (`POST /detrix/wake` / `sleep`), and each
//! target's own single-target control plane under `/targets/{id}` (the very router `attach`
//! serves, so its JSON is the same byte for byte), and `/metrics` for Prometheus.
//!
//! Who may call: exactly as `attach`'s control plane, through the same layer
//! ([`control::auth::protect`], issue #12): root, the agent's own uid and the uid that owns a
//! configured daemon's listening socket pass; everyone else needs `Authorization: Bearer
//! <token>`; only `/detrix/health` is open. A request forwarded to a target's own router
//! carries the caller's connection, so that router's check sees the same caller.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::host::Host;
use crate::control::auth::{self, Conn};
use crate::control::{self, ControlError};

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

/// The agent of target `id`, or the status and sentence to answer instead.
fn lookup(host: &Host, id: &str) -> Result<crate::daemon::AgentHandle, (StatusCode, String)> {
    let unknown = || {
        (
            StatusCode::NOT_FOUND,
            format!("no target `{id}`; GET /detrix/targets lists them"),
        )
    };
    let n: u64 = id.parse().map_err(|_| unknown())?;
    match host.handle(n) {
        None => Err(unknown()),
        Some(Err(why)) => Err((StatusCode::CONFLICT, why)),
        Some(Ok(h)) => Ok(h),
    }
}

async fn health(State(host): State<Arc<Host>>) -> Json<Value> {
    Json(json!({"status": "ok", "service": "detrix-agent-serve", "targets": host.list().len()}))
}

async fn metrics(State(host): State<Arc<Host>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(&host.metrics().await),
    )
        .into_response()
}

async fn targets(State(host): State<Arc<Host>>) -> Json<Value> {
    Json(json!({ "targets": host.list() }))
}

/// Forwards `req` to target `id`'s single-target router with the path rewritten to `path`.
async fn forward(host: &Host, id: &str, path: &str, mut req: Request) -> Response {
    let handle = match lookup(host, id) {
        Ok(h) => h,
        Err((status, msg)) => return error(status, &msg),
    };
    let Ok(uri) = path.parse::<Uri>() else {
        return ControlError::NotFound.into_response();
    };
    *req.uri_mut() = uri;
    match control::router(handle).oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

async fn wake(State(host): State<Arc<Host>>, Path(id): Path<String>, req: Request) -> Response {
    forward(&host, &id, "/detrix/wake", req).await
}

async fn sleep(State(host): State<Arc<Host>>, Path(id): Path<String>, req: Request) -> Response {
    forward(&host, &id, "/detrix/sleep", req).await
}

async fn drop_in(
    State(host): State<Arc<Host>>,
    Path((id, rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    forward(&host, &id, &format!("/detrix/{rest}"), req).await
}

/// `POST /detrix/wake` and `/detrix/sleep` for many targets: the body is `{}` (every target)
/// or `{"select": "RULE"}` (the `--select` syntax), the answer one entry per target with the
/// status and body its own `/detrix/{wake,sleep}` gave.
async fn bulk(
    host: Arc<Host>,
    action: &'static str,
    peer: ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let auth = req.headers().get(header::AUTHORIZATION).cloned();
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    let select = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let bad = || {
            error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the {action} body is not {{}} or {{\"select\":\"key=value,…\"}} (keys: {})",
                    super::rule::SELECT_KEYS.join(", ")
                ),
            )
        };
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return bad();
        };
        match v.get("select") {
            None | Some(Value::Null) if v.is_object() => None,
            Some(Value::String(rule)) => {
                let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                match super::config::parse_select_flag(1, rule, &|n| {
                    super::config::uid_in_passwd(&passwd, n)
                }) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        let msg = e.0.replacen("--select #1", "select", 1);
                        return error(StatusCode::BAD_REQUEST, &msg);
                    }
                }
            }
            _ => return bad(),
        }
    };
    let mut out = Vec::new();
    for id in host.select(select.as_ref()) {
        let mut one = Request::builder()
            .method("POST")
            .uri(format!("/detrix/{action}"))
            .body(axum::body::Body::empty())
            .unwrap_or_default();
        one.extensions_mut().insert(peer);
        if let Some(a) = &auth {
            one.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        let r = forward(&host, &id.to_string(), &format!("/detrix/{action}"), one).await;
        let status = r.status().as_u16();
        let body = axum::body::to_bytes(r.into_body(), 64 * 1024)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        out.push(json!({"id": id.to_string(), "status": status, "body": body}));
    }
    Json(json!({ "targets": out })).into_response()
}

async fn wake_all(
    State(host): State<Arc<Host>>,
    peer: ConnectInfo<Conn>,
    req: Request,
) -> Response {
    bulk(host, "wake", peer, req).await
}

async fn sleep_all(
    State(host): State<Arc<Host>>,
    peer: ConnectInfo<Conn>,
    req: Request,
) -> Response {
    bulk(host, "sleep", peer, req).await
}

/// The host control plane's routes, behind the control plane's one caller check; the daemons
/// whose users pass without a token are those at `daemon_urls` (the config's and its rules').
pub fn router(host: Arc<Host>, daemon_urls: Vec<String>) -> Router {
    let policy = auth::Policy {
        token: host.token().map(str::to_owned),
        daemon_urls,
    };
    let routes = Router::new()
        .route("/detrix/health", get(health))
        .route("/detrix/targets", get(targets))
        .route("/metrics", get(metrics))
        .route("/detrix/wake", post(wake_all))
        .route("/detrix/sleep", post(sleep_all))
        .route("/detrix/targets/{id}/wake", post(wake))
        .route("/detrix/targets/{id}/sleep", post(sleep))
        .route("/targets/{id}/detrix/{*rest}", any(drop_in))
        .fallback(control::not_found)
        .method_not_allowed_fallback(control::not_found);
    auth::protect(routes, policy).with_state(host)
}

/// Serves the host control plane on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    host: Arc<Host>,
    daemon_urls: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        control::listener::Capped::new(listener),
        router(host, daemon_urls).into_make_service_with_connect_info::<Conn>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
