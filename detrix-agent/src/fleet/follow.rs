//! One `DetrixWake` followed by a watch, for the CLI ([`super::cli`]): kube-runtime's
//! `watch_object` — a list with `fieldSelector=metadata.name=NAME`, then a watch from the
//! list's `resourceVersion` with bookmarks; a `410 Gone` (history compacted) or a dropped
//! connection lists again, so a change made while no watch was open arrives with the new list.
//! The CLI reacts to each new version as it comes rather than asking on a timer: a stage
//! advances as soon as the node agents' reports make it healthy, and an idle wait costs no
//! request. Errors (a refused watch, a 410) are logged and retried with kube's default backoff;
//! the caller's deadline bounds how long it waits.

use std::pin::Pin;
use std::time::Instant;

use futures_util::{Stream, StreamExt as _};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt as _;
use kube::Api;

use super::crd::DetrixWake;

type Versions = Pin<Box<dyn Stream<Item = Result<Option<DetrixWake>, watcher::Error>> + Send>>;

/// What the watch said next.
#[derive(Debug)]
pub enum Next {
    /// A new version of the object (created, changed, or as listed after a re-list).
    Seen(Box<DetrixWake>),
    /// The object was deleted, or is not there.
    Gone,
    /// Nothing new before the deadline.
    Timeout,
}

/// See the module header.
pub struct Follow {
    versions: Versions,
    key: String,
}

impl Follow {
    /// Starts following `name` (the first [`Follow::next`] is the object as listed).
    #[must_use]
    pub fn new(api: &Api<DetrixWake>, namespace: &str, name: &str) -> Self {
        Self {
            versions: watcher::watch_object(api.clone(), name)
                .default_backoff()
                .boxed(),
            key: format!("{namespace}/{name}"),
        }
    }

    /// The next version, waiting at most until `deadline` (`None`: until one comes).
    pub async fn next(&mut self, deadline: Option<Instant>) -> Next {
        loop {
            let ev = match deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), self.versions.next()).await {
                    Ok(ev) => ev,
                    Err(_) => return Next::Timeout,
                },
                None => self.versions.next().await,
            };
            match ev {
                Some(Ok(Some(w))) => return Next::Seen(Box::new(w)),
                Some(Ok(None)) => return Next::Gone,
                Some(Err(e)) => {
                    tracing::warn!(wake = self.key, error = %e, "watching the DetrixWake failed; listing it again");
                }
                // kube's watcher does not end; if it did, nothing more would come.
                None => {
                    return match deadline {
                        Some(d) => {
                            tokio::time::sleep_until(d.into()).await;
                            Next::Timeout
                        }
                        None => Next::Gone,
                    }
                }
            }
        }
    }
}
