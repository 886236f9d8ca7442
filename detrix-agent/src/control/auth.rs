//! Who may use a control plane, as ONE layer over a whole router ([`protect`]), so that every
//! route added to the router — now or by a later module — is behind it by construction.
//!
//! The rule (issue #12 point 2): the agent is root and reads any process, so "on loopback" is no
//! reason to trust a caller. A caller passes without a token only when its socket belongs to
//! root, to the agent's own uid, or to the uid owning the daemon's listening socket (found from
//! the daemon URL the way `ss -p` finds it, [`crate::peer`]). Everyone else — every other local
//! user and every remote host — must send `Authorization: Bearer <token>`, compared in time that
//! depends only on the caller's own input ([`token_matches`]); without a configured token they
//! cannot pass at all. A refusal is a 401 with one sentence saying what to do. Only
//! [`OPEN_PATHS`] are open to all, as contract.md §2.4 requires: `/detrix/health` says "ok",
//! `/detrix/discover` the connection name and URLs, neither anything about the target.
//!
//! The handler sees the outcome as a [`Caller`] request extension.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde_json::json;

use crate::peer;

/// Both ends of an accepted control-plane connection (the local end is needed to find the
/// peer's socket in `/proc/net/tcp`). Use with `into_make_service_with_connect_info::<Conn>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub local: Option<SocketAddr>,
    pub peer: SocketAddr,
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self {
            local: stream.io().local_addr().ok(),
            peer: *stream.remote_addr(),
        }
    }
}

impl Connected<IncomingStream<'_, super::listener::Capped>> for Conn {
    fn connect_info(stream: IncomingStream<'_, super::listener::Capped>) -> Self {
        Self {
            local: stream.io().local_addr().ok(),
            peer: *stream.remote_addr(),
        }
    }
}

/// Who is calling, as the layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A local process of root, the agent's uid or the daemon's uid.
    Trusted { uid: u32 },
    /// Anyone who presented the token.
    Token,
    /// A path open to all ([`OPEN_PATHS`]).
    Anyone,
}

/// Paths that never need auth (contract.md §2.4).
pub const OPEN_PATHS: [&str; 2] = ["/detrix/health", "/detrix/discover"];

/// What the layer checks against.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The token callers without a trusted uid must present; `None`: they cannot pass.
    pub token: Option<String>,
    /// The daemon URLs whose listening sockets' owners are trusted (the configured one and
    /// those named by `--allow-daemon-url`).
    pub daemon_urls: Vec<String>,
}

/// Puts the auth layer in front of every route (and the fallback) of `router`. Serve the
/// result with `into_make_service_with_connect_info::<Conn>()` (over a plain `TcpListener` or
/// [`super::listener::Capped`]); without [`Conn`] every request is refused by axum's extractor.
pub fn protect<S: Clone + Send + Sync + 'static>(router: Router<S>, policy: Policy) -> Router<S> {
    router.layer(middleware::from_fn_with_state(Arc::new(policy), check))
}

/// The uids that pass without a token: root, the agent's own, and the daemon's.
#[must_use]
pub fn trusted_uids(daemon_urls: &[String]) -> BTreeSet<u32> {
    let mut uids = BTreeSet::from([0]);
    uids.extend(peer::own_uids());
    for url in daemon_urls {
        uids.extend(peer::listener_uids(url));
    }
    uids
}

/// Whether `authorization` carries `token`. The time taken depends only on the length of what
/// the caller sent, never on the token's length or where the first difference is.
#[must_use]
pub fn token_matches(authorization: Option<&str>, token: Option<&str>) -> bool {
    let (Some(got), Some(want)) = (
        authorization.and_then(|h| h.strip_prefix("Bearer ")),
        token.filter(|t| !t.is_empty()),
    ) else {
        return false;
    };
    let (got, want) = (got.as_bytes(), want.as_bytes());
    let mut diff = u8::from(got.len() != want.len());
    for (i, g) in got.iter().enumerate() {
        diff |= g ^ want[i % want.len()];
    }
    std::hint::black_box(diff) == 0
}

/// The decision, pure: a trusted local uid, or the token, or nothing.
#[must_use]
pub fn decide(
    path: &str,
    peer_uids: Option<&peer::Owner>,
    trusted: &BTreeSet<u32>,
    authorization: Option<&str>,
    token: Option<&str>,
) -> Option<Caller> {
    if OPEN_PATHS.contains(&path) {
        return Some(Caller::Anyone);
    }
    if let Some(o) = peer_uids.filter(|o| o.all_in(trusted)) {
        return Some(Caller::Trusted {
            uid: o.uids.iter().copied().max().unwrap_or(0),
        });
    }
    token_matches(authorization, token).then_some(Caller::Token)
}

async fn check(
    State(policy): State<Arc<Policy>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    mut req: Request,
    next: Next,
) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let owner = match conn.local {
        Some(local) if peer::is_loopback(conn.peer.ip()) => peer::peer_owner(local, conn.peer),
        _ => None,
    };
    let trusted = trusted_uids(&policy.daemon_urls);
    let path = req.uri().path().to_owned();
    match decide(
        &path,
        owner.as_ref(),
        &trusted,
        authorization,
        policy.token.as_deref(),
    ) {
        Some(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => {
            tracing::warn!(peer = %conn.peer, owner = owner.as_ref().map(peer::Owner::describe), path, "control plane: caller refused (not root, the agent's or the daemon's user, and no valid token)");
            let msg = if policy.token.is_some() {
                "unauthorized: only root, the agent's user and the daemon's user may call without a token; send Authorization: Bearer <token>"
            } else {
                "unauthorized: only root, the agent's user and the daemon's user may call this agent (it has no token configured; set DETRIX_TOKEN to admit others)"
            };
            (StatusCode::UNAUTHORIZED, Json(json!({ "error": msg }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uids: &[u32]) -> peer::Owner {
        peer::Owner {
            inode: 1,
            pids: vec![42],
            uids: uids.iter().copied().collect(),
        }
    }

    #[test]
    fn trusted_uids_pass_others_need_the_token() {
        let trusted = BTreeSet::from([0, 998]);
        let t = Some("s3cret");
        assert_eq!(
            decide("/detrix/sleep", Some(&owner(&[0])), &trusted, None, t),
            Some(Caller::Trusted { uid: 0 })
        );
        assert_eq!(
            decide("/detrix/wake", Some(&owner(&[998])), &trusted, None, None),
            Some(Caller::Trusted { uid: 998 })
        );
        assert_eq!(
            decide("/detrix/sleep", Some(&owner(&[65534])), &trusted, None, t),
            None,
            "a local stranger needs the token"
        );
        assert_eq!(
            decide(
                "/detrix/sleep",
                Some(&owner(&[0, 65534])),
                &trusted,
                None,
                t
            ),
            None,
            "a socket shared with a stranger is a stranger's"
        );
        assert_eq!(
            decide("/detrix/sleep", None, &trusted, None, t),
            None,
            "unknown peer"
        );
        assert_eq!(
            decide(
                "/detrix/sleep",
                Some(&owner(&[65534])),
                &trusted,
                Some("Bearer s3cret"),
                t
            ),
            Some(Caller::Token)
        );
        assert_eq!(
            decide("/nope", None, &trusted, None, t),
            None,
            "auth before routing"
        );
        assert_eq!(
            decide("/detrix/health", None, &trusted, None, None),
            Some(Caller::Anyone)
        );
        assert_eq!(
            decide("/detrix/discover", None, &trusted, None, None),
            Some(Caller::Anyone)
        );
        assert_eq!(
            decide("/detrix/discover/x", None, &trusted, None, t),
            None,
            "exact paths only"
        );
    }

    #[test]
    fn token_compare_is_exact() {
        assert!(token_matches(Some("Bearer s3cret"), Some("s3cret")));
        assert!(!token_matches(Some("Bearer s3cre"), Some("s3cret")));
        assert!(!token_matches(Some("Bearer s3crett"), Some("s3cret")));
        assert!(!token_matches(Some("Bearer s3cres"), Some("s3cret")));
        assert!(
            !token_matches(Some("Bearer s3crets3cret"), Some("s3cret")),
            "a repeat is not a match"
        );
        assert!(
            !token_matches(Some("bearer s3cret"), Some("s3cret")),
            "`Bearer ` is case-sensitive"
        );
        assert!(!token_matches(Some("Bearer "), Some("s3cret")));
        assert!(!token_matches(Some("Bearer x"), None));
        assert!(
            !token_matches(Some("Bearer "), Some("")),
            "an empty token admits no one"
        );
        assert!(!token_matches(None, Some("s3cret")));
    }
}
