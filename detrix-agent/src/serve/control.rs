//! The host control plane of `serve`: the target list, wake and sleep per target, and each
//! target's own single-target control plane under `/targets/{id}` (the very router `attach`
//! serves, so its JSON is the same byte for byte), and `/metrics` for Prometheus.
//!
//! Who may call: the same rule as `attach`'s control plane — loopback callers, or others with
//! `Authorization: Bearer <token>`; `/detrix/health` is open. It is one layer, applied in
//! [`router`] on the line marked `CALLER CHECK`, so the control plane's shared check can
//! replace it there in one line.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::host::Host;
use crate::control::{self, ControlError};

fn error(status: StatusCode, msg: String) -> Response {
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
        super::metrics::render(&host.metrics()),
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
        Err((status, msg)) => return error(status, msg),
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

/// The caller check `attach` applies ([`control::authorized`]), over the host's token.
async fn caller_check(
    State(host): State<Arc<Host>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if control::authorized(peer.ip(), req.uri().path(), auth, host.token()) {
        next.run(req).await
    } else {
        ControlError::Unauthorized.into_response()
    }
}

async fn not_found() -> ControlError {
    ControlError::NotFound
}

/// The host control plane's routes.
pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/detrix/health", get(health))
        .route("/detrix/targets", get(targets))
        .route("/metrics", get(metrics))
        .route("/detrix/targets/{id}/wake", post(wake))
        .route("/detrix/targets/{id}/sleep", post(sleep))
        .route("/targets/{id}/detrix/{*rest}", any(drop_in))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        // CALLER CHECK: the one layer that decides who may call; replace with the control
        // plane's shared check at merge.
        .layer(middleware::from_fn_with_state(host.clone(), caller_check))
        .with_state(host)
}

/// Serves the host control plane on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    host: Arc<Host>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(host).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
