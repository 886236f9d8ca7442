//! The agent's calls to the daemon's REST API: health, register, unregister (contract.md §3).
//!
//! Every call carries `Authorization: Bearer <token>` when a token is known: a daemon with auth
//! off ignores it, a later daemon with auth on by default needs it (§0 rule 11).

use std::time::Duration;

use serde_json::{json, Value};

/// Why a call to the daemon failed. The `Display` texts are the control plane's error bodies
/// (contract.md §2.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaemonError {
    #[error("daemon not reachable at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("daemon not reachable at {url}: {what} answered {status} {body}; is DETRIX_DAEMON_URL the Detrix daemon's REST address?")]
    NotDetrix {
        url: String,
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("failed to register with daemon: status {status}: {body}")]
    RegisterRefused { status: u16, body: String },
    #[error("failed to register with daemon at {url}: {detail}")]
    RegisterFailed { url: String, detail: String },
    #[error("failed to unregister connection {connection_id} from daemon at {url}: {detail}")]
    UnregisterFailed {
        url: String,
        connection_id: String,
        detail: String,
    },
}

/// What the daemon is told about this target (the `POST /api/v1/connections` body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub host: String,
    pub port: u16,
    /// `go` or `rust`.
    pub language: String,
    pub name: String,
    pub workspace_root: String,
    pub hostname: String,
    /// Sent for `rust` only (attach-by-pid mode, §5.2); a `go` connection ignores it.
    pub pid: Option<u32>,
    pub safe_mode: bool,
    pub control_plane_url: Option<String>,
    /// The target's build (buildinfo), sent as `buildCommit` / `buildTag` when known.
    pub build_commit: Option<String>,
    pub build_tag: Option<String>,
}

impl Registration {
    /// The JSON body: B's required keys plus the L additions B ignores (§3.2, §13).
    #[must_use]
    pub fn body(&self) -> Value {
        let mut b = json!({
            "host": self.host,
            "port": self.port,
            "language": self.language,
            "name": self.name,
            "workspaceRoot": self.workspace_root,
            "hostname": self.hostname,
            "safeMode": self.safe_mode,
        });
        if let Some(c) = &self.build_commit {
            b["buildCommit"] = c.clone().into();
        }
        if let Some(t) = &self.build_tag {
            b["buildTag"] = t.clone().into();
        }
        if let Some(pid) = self.pid {
            b["pid"] = pid.into();
        }
        if let Some(url) = &self.control_plane_url {
            b["controlPlaneUrl"] = url.clone().into();
        }
        b
    }
}

/// A REST client for one agent (one token).
#[derive(Debug, Clone)]
pub struct DaemonClient {
    http: reqwest::Client,
    token: Option<String>,
}

/// The error and its causes in one line (reqwest puts the interesting part in the sources).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        src = s.source();
    }
    text
}

fn trim_url(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl DaemonClient {
    /// A client that sends `token` (if any) as a Bearer header.
    #[must_use]
    pub fn new(token: Option<String>) -> Self {
        // No proxy: the daemon is reached directly (an `http_proxy` in the environment must not
        // reroute loopback traffic). Builder errors cannot happen without TLS options; fall back
        // to the default client anyway rather than panic.
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self { http, token }
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// `GET {url}/health`: 200 with `"service":"detrix"` within `timeout`.
    ///
    /// # Errors
    /// [`DaemonError::Unreachable`] or [`DaemonError::NotDetrix`].
    pub async fn health(&self, url: &str, timeout: Duration) -> Result<(), DaemonError> {
        let base = trim_url(url);
        let resp = self
            .auth(self.http.get(format!("{base}/health")))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| DaemonError::Unreachable {
                url: base.to_owned(),
                detail: chain(&e),
            })?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let service = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("service").and_then(Value::as_str).map(str::to_owned));
        if status == 200 && service.as_deref() == Some("detrix") {
            Ok(())
        } else {
            Err(DaemonError::NotDetrix {
                url: base.to_owned(),
                what: "GET /health",
                status,
                body: truncate(&body),
            })
        }
    }

    /// `POST {url}/api/v1/connections`; returns the `connectionId`. The daemon answers only after
    /// it connected to the DAP port and finished the handshake (§3.3), so the listener must
    /// already be serving.
    ///
    /// # Errors
    /// Transport errors, timeouts, a non-2xx status or a body without `connectionId`.
    pub async fn register(
        &self,
        url: &str,
        reg: &Registration,
        timeout: Duration,
    ) -> Result<String, DaemonError> {
        let base = trim_url(url);
        let resp = self
            .auth(self.http.post(format!("{base}/api/v1/connections")).json(&reg.body()))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                let detail = if e.is_timeout() {
                    format!("no answer within {:.1} s (DETRIX_REGISTER_TIMEOUT); the daemon may not reach the DAP port {}:{}", timeout.as_secs_f64(), reg.host, reg.port)
                } else {
                    chain(&e)
                };
                if e.is_connect() {
                    DaemonError::Unreachable { url: base.to_owned(), detail }
                } else {
                    DaemonError::RegisterFailed { url: base.to_owned(), detail }
                }
            })?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(DaemonError::RegisterRefused {
                status,
                body: truncate(&body),
            });
        }
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("connectionId")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .filter(|id| !id.is_empty())
            .ok_or_else(|| DaemonError::RegisterFailed {
                url: base.to_owned(),
                detail: format!("201 body has no connectionId: {}", truncate(&body)),
            })
    }

    /// `DELETE {url}/api/v1/connections/{id}`; 2xx and 404 count as done.
    ///
    /// # Errors
    /// Transport errors, timeouts, other statuses.
    pub async fn unregister(
        &self,
        url: &str,
        connection_id: &str,
        timeout: Duration,
    ) -> Result<(), DaemonError> {
        let base = trim_url(url);
        let err = |detail: String| DaemonError::UnregisterFailed {
            url: base.to_owned(),
            connection_id: connection_id.to_owned(),
            detail,
        };
        let resp = self
            .auth(
                self.http
                    .delete(format!("{base}/api/v1/connections/{connection_id}")),
            )
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| err(chain(&e)))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) || status == 404 {
            Ok(())
        } else {
            Err(err(format!(
                "status {status}: {}",
                truncate(&resp.text().await.unwrap_or_default())
            )))
        }
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 2000;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_body_has_the_contract_keys() {
        let r = Registration {
            host: "127.0.0.1".into(),
            port: 42137,
            language: "rust".into(),
            name: "orders".into(),
            workspace_root: "/src".into(),
            hostname: "node-7".into(),
            pid: Some(29089),
            safe_mode: false,
            control_plane_url: Some("http://127.0.0.1:41601".into()),
            build_commit: Some("0123abc".into()),
            build_tag: None,
        };
        let b = r.body();
        assert_eq!(b["host"], "127.0.0.1");
        assert_eq!(b["port"], 42137);
        assert_eq!(b["language"], "rust");
        assert_eq!(b["name"], "orders");
        assert_eq!(b["workspaceRoot"], "/src");
        assert_eq!(b["hostname"], "node-7");
        assert_eq!(b["pid"], 29089);
        assert_eq!(b["safeMode"], false);
        assert_eq!(b["controlPlaneUrl"], "http://127.0.0.1:41601");
        assert_eq!(b["buildCommit"], "0123abc");
        assert!(b.get("buildTag").is_none(), "no tag known, none sent: {b}");
        let go = Registration {
            language: "go".into(),
            pid: None,
            ..r
        };
        assert!(
            go.body().get("pid").is_none(),
            "go registrations carry no pid: {}",
            go.body()
        );
    }
}
