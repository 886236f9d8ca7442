//! The pods of this node through the API server: kube-rs's watcher on `pods` with the field
//! selector `spec.nodeName=<node>` (list, then watch from the list's `resourceVersion` with
//! bookmarks; after `410 Gone` or a dropped connection it lists again, with backoff). Each
//! change goes into [`PodRules`]; whenever the rules change, `serve` gets the merged config on
//! its reload channel and adds or lets go of targets ([`crate::serve::host::Host::reload`]).
//!
//! A re-list (start, restart, 410) is buffered until complete (`InitDone`) and then replaces the
//! whole set at once: a pod missing from the new list is gone, one still there keeps its
//! targets untouched (its rules are the same), so nothing is woken twice.
//!
//! The label selector is evaluated here, not by the server: a pod is observed when its labels
//! match *or* it carries `detrix.dev/observe: "true"`, which no single server-side selector
//! can say.

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::{PodRules, PodSelector};
use crate::serve::config::Config;

/// What node mode needs to know.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name (`NODE_NAME` from the downward API).
    pub node: String,
    pub selector: Option<PodSelector>,
}

/// Why node mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("no Kubernetes API configuration: {0} (in a pod, the service account's token is mounted; elsewhere set KUBECONFIG)")]
    Config(String),
}

/// Connects with the in-cluster configuration or a kubeconfig (`KUBECONFIG`,
/// `~/.kube/config`), as `kubectl` would.
///
/// # Errors
/// Neither is usable.
pub async fn client() -> Result<Client, WatchError> {
    Client::try_default()
        .await
        .map_err(|e| WatchError::Config(e.to_string()))
}

/// Watches the node's pods until `configs` closes. `base` is the file's config; new base
/// configs (SIGHUP) arrive on `bases`. Every change of the rules sends the merged config on
/// `configs`.
pub async fn run(
    client: Client,
    opts: Options,
    mut base: Config,
    mut bases: mpsc::Receiver<Config>,
    configs: mpsc::Sender<Config>,
) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", opts.node));
    let stream = watcher::watcher(api, cfg).default_backoff();
    tokio::pin!(stream);
    let mut rules = PodRules::default();
    // Pods listed since the last `Init`; `None` outside a list.
    let mut listing: Option<PodRules> = None;
    let selector = opts.selector.as_ref();
    loop {
        let changed = tokio::select! {
            Some(new) = bases.recv() => {
                base = new;
                true
            }
            ev = stream.next() => match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, node = opts.node, "watching the node's pods failed; retrying");
                    false
                }
                Some(Ok(Event::Init)) => {
                    listing = Some(PodRules::default());
                    false
                }
                Some(Ok(Event::InitApply(pod))) => {
                    if let Some(l) = listing.as_mut() {
                        l.apply(&pod, selector);
                    }
                    false
                }
                Some(Ok(Event::InitDone)) => {
                    // Sent even when unchanged: the first list is what serve starts from, and
                    // a reload with the same rules touches no target.
                    rules = listing.take().unwrap_or_default();
                    tracing::info!(node = opts.node, containers = rules.containers(), "pods listed");
                    true
                }
                Some(Ok(Event::Apply(pod))) => rules.apply(&pod, selector),
                Some(Ok(Event::Delete(pod))) => rules.delete(&pod),
            }
        };
        if changed {
            let cfg = rules.config(&base);
            tracing::info!(rules = cfg.rules.len(), "node's pod rules changed");
            if configs.send(cfg).await.is_err() {
                return;
            }
        }
    }
}
