//! `POST /detrix/files/read` (contract.md §2.1–§2.2, L): a source file of the target's
//! workspace, read by this root process on behalf of a caller — so read as the target would,
//! never as root.
//!
//! Who may call it: whoever passes the control plane's caller check, which runs before routing
//! for every route (`control::router`): loopback peers as that check allows them, remote peers
//! only with the Bearer token. A Detrix daemon fetching a source it lacks is the intended
//! caller (§2.6).
//!
//! What may be read: regular files inside the target's workspace root (the `workspaceRoot` it
//! is registered with), as the target's filesystem shows them (`/proc/PID/root`), opened with
//! the target's fsuid, fsgid and groups ([`target_fs`]). The request is checked twice: first
//! lexically (a `workspace_root` outside ours, or a path whose `..` leaves it → 403), then by
//! the kernel, which opens the file with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` below the
//! workspace directory, so a symlink that leads out is refused (`EXDEV` → 403) wherever it is
//! in the path. A file the target's user may not read → 403; missing or not a regular file →
//! 404 (empty body, as the SDKs); over 10 MiB → 413; bad JSON or an empty path → 400.
//! `commit` is accepted and ignored, as the SDKs do: the file served is the one on disk.
//!
//! What a caller gets is at most what the target's user can read in that workspace; which
//! local users may ask is the caller check's business, not this handler's.

use std::io;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::buildinfo::target_fs::{self, ReadOutcome, BENEATH, IN_ROOT};
use crate::daemon::AgentHandle;

/// Largest file served (the SDKs' limit).
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Why a read was refused; `Display` is the error body's sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ReadError {
    fn into_response(self) -> Response {
        let status = match &self {
            ReadError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ReadError::Forbidden(_) => StatusCode::FORBIDDEN,
            ReadError::NotFound(m) => {
                tracing::info!(reason = %m, "files/read: not found");
                return StatusCode::NOT_FOUND.into_response();
            }
            ReadError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ReadError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Splits an absolute path into its normal components, applying `.` and `..` lexically
/// (`..` at `/` stays at `/`).
fn components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The requested file as a path relative to the workspace `root`, checked lexically.
///
/// # Errors
/// [`ReadError::BadRequest`] for an empty path, [`ReadError::Forbidden`] for a
/// `workspace_root` outside `root` or a path leaving it, [`ReadError::NotFound`] for the root
/// itself.
pub fn relative_path(root: &str, req_root: Option<&str>, path: &str) -> Result<String, ReadError> {
    if path.trim().is_empty() {
        return Err(ReadError::BadRequest(
            "files/read needs a non-empty \"path\", e.g. {\"path\":\"src/main.go\"}".into(),
        ));
    }
    let root_c = components(root);
    let base = match req_root.filter(|r| !r.is_empty()) {
        None => root.to_owned(),
        Some(r) => {
            let abs = if r.starts_with('/') {
                r.to_owned()
            } else {
                format!("{root}/{r}")
            };
            if !components(&abs).starts_with(&root_c) {
                return Err(ReadError::Forbidden(format!(
                    "workspace_root `{r}` is outside the workspace root `{root}` this agent serves; omit it or name a directory inside"
                )));
            }
            abs
        }
    };
    // Walk the components ourselves so a `..` that climbs above the root is seen, not folded.
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{base}/{path}")
    };
    let mut stack: Vec<&str> = Vec::new();
    let mut left = false;
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if stack.len() <= root_c.len() {
                    left = true;
                }
                stack.pop();
            }
            c => stack.push(c),
        }
    }
    if left || !stack.starts_with(&root_c) {
        return Err(ReadError::Forbidden(format!(
            "path `{path}` leads outside the workspace root `{root}`; only files inside it are served"
        )));
    }
    let rel = stack[root_c.len()..].join("/");
    if rel.is_empty() {
        return Err(ReadError::NotFound(format!(
            "path `{path}` is the workspace root itself, not a file"
        )));
    }
    Ok(rel)
}

fn errno_to_error(e: &io::Error, path: &str, root: &str) -> ReadError {
    match e.raw_os_error() {
        Some(libc::EXDEV | libc::ELOOP) => ReadError::Forbidden(format!(
            "path `{path}` goes through a link that leads outside the workspace root `{root}`; only files inside it are served"
        )),
        Some(libc::EACCES | libc::EPERM) => ReadError::Forbidden(format!(
            "the target's user may not read `{path}`; files are read with the target's permissions, never root's"
        )),
        Some(libc::ENOENT | libc::ENOTDIR) => {
            ReadError::NotFound(format!("no file `{path}` in the workspace root `{root}`"))
        }
        _ => ReadError::Internal(format!("reading `{path}` failed: {e}")),
    }
}

/// Reads `path` (relative to or inside `root`, or to `req_root` inside it) for process `pid`.
/// Blocking: starts and joins one short-lived thread.
///
/// # Errors
/// As [`ReadError`].
pub fn read(
    pid: u32,
    root: &str,
    req_root: Option<&str>,
    path: &str,
) -> Result<Vec<u8>, ReadError> {
    let rel = relative_path(root, req_root, path)?;
    let gone = |e: io::Error| {
        ReadError::NotFound(format!(
            "process {pid} is gone or its filesystem is unreachable: {e}"
        ))
    };
    let proc_root = target_fs::open_root(pid).map_err(gone)?;
    let creds = target_fs::creds(pid).map_err(gone)?;
    let (root_s, path_s) = (root.to_owned(), path.to_owned());
    let outcome = target_fs::run_as(&creds, move || {
        let ws = target_fs::openat2(
            &proc_root,
            &root_s,
            libc::O_PATH | libc::O_DIRECTORY,
            IN_ROOT,
        )
        .map_err(|e| errno_to_error(&e, &root_s, &root_s))?;
        target_fs::read_regular(&ws, &rel, BENEATH, MAX_BYTES)
            .map_err(|e| errno_to_error(&e, &path_s, &root_s))
    })
    .map_err(|e| ReadError::Internal(format!("cannot read as the target's user: {e}")))??;
    match outcome {
        ReadOutcome::Bytes(b) => Ok(b),
        ReadOutcome::NotRegular => Err(ReadError::NotFound(format!(
            "`{path}` is not a regular file"
        ))),
        ReadOutcome::TooLarge(n) => Err(ReadError::TooLarge(format!(
            "`{path}` is {n} bytes; files/read serves at most {MAX_BYTES} bytes"
        ))),
    }
}

/// A `files/read` body's `path` (empty when absent) and `workspace_root`. Apart from the
/// handler so it is tested and fuzzed without an agent.
///
/// # Errors
/// [`ReadError::BadRequest`] for a body that is not a JSON object or a field that is not a
/// string.
pub fn parse_body(body: &[u8]) -> Result<(String, Option<String>), ReadError> {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) | Err(_) => {
            return Err(ReadError::BadRequest(
                "files/read body must be JSON like {\"path\":\"src/main.go\",\"workspace_root\":\"/src\"}"
                    .into(),
            ))
        }
    };
    let text = |k: &str| -> Result<Option<String>, ReadError> {
        match req.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ReadError::BadRequest(format!(
                "files/read: \"{k}\" must be a string"
            ))),
        }
    };
    Ok((text("path")?.unwrap_or_default(), text("workspace_root")?))
}

/// The handler. See the module doc for who may call it and what it serves.
pub async fn files_read(State(agent): State<AgentHandle>, body: Bytes) -> Response {
    let (path, req_root) = match parse_body(&body) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let (pid, root) = (agent.info.pid, agent.info.workspace_root.clone());
    let result = tokio::task::spawn_blocking(move || read(pid, &root, req_root.as_deref(), &path))
        .await
        .unwrap_or_else(|e| Err(ReadError::Internal(format!("files/read task failed: {e}"))));
    match result {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            bytes,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(r: Result<String, ReadError>) -> bool {
        matches!(r.err(), Some(ReadError::Forbidden(_)))
    }

    #[test]
    fn relative_paths_stay_inside_the_root() {
        let root = "/src/app";
        assert_eq!(relative_path(root, None, "main.go"), Ok("main.go".into()));
        assert_eq!(
            relative_path(root, None, "./pkg/../cmd//x.go"),
            Ok("cmd/x.go".into())
        );
        assert_eq!(
            relative_path(root, None, "/src/app/pkg/a.go"),
            Ok("pkg/a.go".into())
        );
        assert_eq!(
            relative_path(root, Some("/src/app/pkg"), "a.go"),
            Ok("pkg/a.go".into())
        );
        assert_eq!(
            relative_path(root, Some("pkg"), "a.go"),
            Ok("pkg/a.go".into())
        );
        assert!(forbidden(relative_path(root, None, "../../etc/shadow")));
        assert!(
            forbidden(relative_path(root, None, "pkg/../../app/x")),
            "leaving and coming back is still leaving"
        );
        assert!(forbidden(relative_path(root, None, "/etc/shadow")));
        assert!(forbidden(relative_path(root, None, "/src/application/x")));
        assert!(forbidden(relative_path(root, Some("/src"), "app/x.go")));
        assert!(forbidden(relative_path(root, Some("/etc"), "shadow")));
        assert!(matches!(
            relative_path(root, None, " "),
            Err(ReadError::BadRequest(_))
        ));
        assert!(matches!(
            relative_path(root, None, "."),
            Err(ReadError::NotFound(_))
        ));
        assert_eq!(relative_path("/", None, "etc/x"), Ok("etc/x".into()));
    }
}
