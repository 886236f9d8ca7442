//! The node agent's I/O shell around [`Reconciler`] (`serve --kubernetes`): watches every
//! `DetrixWake` (kube-rs's watcher: list, then watch with bookmarks; a 410 or a dropped
//! connection lists again, and an object missing from the new list counts as deleted), and
//! performs the reconciler's effects — lists an object's pods, wakes and sleeps the targets of
//! a container through serve's host table ([`Host::select`], [`Host::handle`]), writes this
//! node's status entry (server-side apply, field manager `detrix-agent-<node>`, so each node
//! owns its own entry of the `nodes` list-map). A clock tick each second drives the TTL and
//! reads the health of the woken targets from the table; neither costs an API request, so an
//! idle node makes only the watches' requests.
//!
//! Reports are coalesced: the latest status per object is written at most every 100 ms, one
//! object after another, never two writes of the same object at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::crd::{DetrixWake, NodeStatus};
use super::plan::{parse_duration, Plan};
use super::reconcile::{Candidate, Counts, Desired, Effect, Input, Reconciler, Woken};
use crate::serve::host::Host;
use crate::serve::rule::Select;

/// How long a wake waits for a container's process to become a target (the pod watcher and
/// the `/proc` scan run beside this) before it counts as failed.
const FIND_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a wake waits for a found target to finish starting (debug info, eBPF load).
const START_TIMEOUT: Duration = Duration::from_secs(90);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The object as the reconciler needs it, or why it cannot be acted on.
///
/// # Errors
/// Bad steps or durations (the CRD's schema lets through steps that do not rise).
pub fn desired(w: &DetrixWake) -> Result<Desired, String> {
    let plan = Plan::new(w.spec.canary, w.spec.steps.clone())?;
    let ttl = parse_duration(&w.spec.ttl)?;
    let created = w
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or_else(now_ms, |t| u64::try_from(t.0.as_millisecond()).unwrap_or(0));
    Ok(Desired {
        namespace: w
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        selector: w.spec.selector.clone(),
        plan,
        stage: w.spec.stage,
        halted: w.spec.halted,
        safe_mode: w.spec.safe_mode,
        expires_at_ms: created.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
    })
}

/// RFC 3339 of a time in ms since the epoch.
fn rfc3339(ms: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Reconciles every `DetrixWake` for node `node` until the process ends.
pub async fn run(client: Client, node: String, host: Arc<Host>) {
    let wakes: Api<DetrixWake> = Api::all(client.clone());
    let stream = watcher::watcher(wakes, watcher::Config::default()).default_backoff();
    tokio::pin!(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    let mut rec = Reconciler::new(&node);
    let shell = Shell {
        client,
        node: node.clone(),
        host,
        tx: tx.clone(),
        pending: Arc::default(),
        expires: Arc::default(),
    };
    let mut listing: Option<BTreeSet<String>> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    let mut flushing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let inputs: Vec<Input> = tokio::select! {
            Some(i) = rx.recv() => vec![i],
            _ = tick.tick() => {
                let mut v = vec![Input::Tick { now_ms: now_ms() }];
                v.extend(rec.watched().into_iter().map(|c| shell.health(&c)));
                v
            }
            _ = flush.tick() => {
                if flushing.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                    flushing = shell.flush();
                }
                continue;
            }
            ev = stream.next() => match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, node, "watching DetrixWake objects failed; retrying");
                    continue;
                }
                Some(Ok(Event::Init)) => {
                    listing = Some(BTreeSet::new());
                    continue;
                }
                Some(Ok(Event::InitApply(w))) => {
                    if let Some(l) = listing.as_mut() {
                        l.insert(w.key());
                    }
                    shell.seen(&w).into_iter().collect()
                }
                Some(Ok(Event::InitDone)) => {
                    // Objects deleted while no watch was open are missing from the new list.
                    let listed = listing.take().unwrap_or_default();
                    rec.keys()
                        .into_iter()
                        .filter(|k| !listed.contains(k))
                        .map(|key| Input::Deleted { key })
                        .collect()
                }
                Some(Ok(Event::Apply(w))) => shell.seen(&w).into_iter().collect(),
                Some(Ok(Event::Delete(w))) => vec![Input::Deleted { key: w.key() }],
            }
        };
        for input in inputs {
            for fx in rec.step(input) {
                shell.perform(fx);
            }
        }
    }
}

/// What performs the effects.
struct Shell {
    client: Client,
    node: String,
    host: Arc<Host>,
    tx: mpsc::UnboundedSender<Input>,
    /// Reports not written yet, latest per object.
    pending: Arc<Mutex<BTreeMap<String, NodeStatus>>>,
    /// Each object's expiry, for its status.
    expires: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Shell {
    fn seen(&self, w: &DetrixWake) -> Option<Input> {
        match desired(w) {
            Ok(d) => {
                self.expires
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(w.key(), d.expires_at_ms);
                Some(Input::Seen {
                    key: w.key(),
                    desired: d,
                    now_ms: now_ms(),
                })
            }
            Err(e) => {
                tracing::warn!(wake = w.key(), error = %e, "DetrixWake ignored");
                None
            }
        }
    }

    /// Target ids of a container.
    fn targets(&self, container_id: &str) -> Vec<u64> {
        self.host.select(Some(&Select {
            container: Some(container_id.to_owned()),
            ..Select::default()
        }))
    }

    fn health(&self, container_id: &str) -> Input {
        let ids = self.targets(container_id);
        let views: Vec<_> = ids
            .iter()
            .filter_map(|id| self.host.handle(*id)?.ok())
            .map(|h| h.view())
            .collect();
        Input::Health {
            container_id: container_id.to_owned(),
            counts: counts(&views),
            switched_off_reason: views
                .iter()
                .rev()
                .find_map(|v| v.switched_off_reason.clone()),
            session_lost: views.iter().any(|v| v.session_lost),
            gone: ids.is_empty(),
        }
    }

    fn perform(&self, fx: Effect) {
        let tx = self.tx.clone();
        match fx {
            Effect::ListPods {
                key,
                stage,
                namespace,
                selector,
            } => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                let node = self.node.clone();
                tokio::spawn(async move {
                    let input = match api.list(&ListParams::default().labels(&selector)).await {
                        Ok(list) => {
                            let (fleet, local) = split(&list.items, &node);
                            Input::Listed {
                                key,
                                stage,
                                fleet,
                                local,
                            }
                        }
                        Err(e) => Input::ListFailed {
                            key,
                            error: e.to_string(),
                        },
                    };
                    let _ = tx.send(input);
                });
            }
            Effect::Wake {
                key,
                container_id,
                name,
            } => {
                let host = self.host.clone();
                tokio::spawn(async move {
                    let result = wake(&host, &container_id, &name).await;
                    if let Err(e) = &result {
                        tracing::warn!(wake = key, target = name, error = %e, "fleet wake failed");
                    }
                    let _ = tx.send(Input::Woke {
                        key,
                        container_id,
                        result,
                    });
                });
            }
            Effect::Sleep { key, container_id } => {
                let handles: Vec<_> = self
                    .targets(&container_id)
                    .into_iter()
                    .filter_map(|id| self.host.handle(id)?.ok())
                    .collect();
                tokio::spawn(async move {
                    for h in handles {
                        h.sleep().await;
                    }
                    let _ = tx.send(Input::Slept { key, container_id });
                });
            }
            Effect::Report { key, mut status } => {
                status.updated_at = Some(rfc3339(now_ms()));
                self.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key, status);
            }
        }
    }

    /// Writes the pending reports, one after another, in a task.
    fn flush(&self) -> Option<tokio::task::JoinHandle<()>> {
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return None;
        }
        let client = self.client.clone();
        let manager = format!("detrix-agent-{}", self.node);
        let expires = self.expires.clone();
        Some(tokio::spawn(async move {
            for (key, status) in batch {
                let Some((ns, name)) = key.split_once('/') else {
                    continue;
                };
                let api: Api<DetrixWake> = Api::namespaced(client.clone(), ns);
                let expires_at = expires
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&key)
                    .copied()
                    .map(rfc3339);
                let body: Value = json!({
                    "apiVersion": format!("{}/{}", super::crd::GROUP, super::crd::VERSION),
                    "kind": super::crd::KIND,
                    "metadata": {"name": name, "namespace": ns},
                    "status": {"expiresAt": expires_at, "nodes": [status]},
                });
                let params = PatchParams::apply(&manager).force();
                if let Err(e) = api.patch_status(name, &params, &Patch::Apply(&body)).await {
                    tracing::warn!(wake = key, error = %e, "writing this node's DetrixWake status failed");
                }
            }
        }))
    }
}

/// The targets' counts summed: what their `/detrix/status` shows as `probes_switched_off`
/// (the CPU breaker's switch-offs, published by each target's breaker task) and
/// `dropped_hits`. Read from the views, not the registries' async stats: a target busy with a
/// long install must not hold up the node's clock tick.
fn counts(views: &[crate::daemon::actor::View]) -> Counts {
    Counts {
        switched_off: views.iter().map(|v| v.switched_off).sum(),
        dropped_hits: views.iter().map(|v| v.dropped_hits).sum(),
    }
}

/// The selected containers fleet-wide (pod UID, container name), and those of `node`.
fn split(pods: &[Pod], node: &str) -> (Vec<(String, String)>, Vec<Candidate>) {
    let mut fleet = Vec::new();
    let mut local = Vec::new();
    for p in pods {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let pod_name = p.metadata.name.as_deref().unwrap_or_default();
        let here = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
        let safe_mode = p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::pods::SAFE_MODE))
            .is_some_and(|v| v == "true");
        let statuses = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        for c in statuses.into_iter().flatten() {
            let Some(id) = c
                .container_id
                .as_deref()
                .and_then(crate::pods::container_id)
            else {
                continue;
            };
            fleet.push((uid.clone(), c.name.clone()));
            if here {
                local.push(Candidate {
                    pod_uid: uid.clone(),
                    container: c.name.clone(),
                    container_id: id,
                    name: format!("{ns}/{pod_name}/{}", c.name),
                    safe_mode,
                });
            }
        }
    }
    (fleet, local)
}

/// Wakes every target of a container, once each is started.
async fn wake(host: &Host, container_id: &str, name: &str) -> Result<Woken, String> {
    let select = Select {
        container: Some(container_id.to_owned()),
        ..Select::default()
    };
    let t0 = tokio::time::Instant::now();
    let handles = loop {
        let ids = host.select(Some(&select));
        let states: Vec<(u64, String, Option<String>)> = host
            .list()
            .iter()
            .filter_map(|t| {
                let id: u64 = t["id"].as_str()?.parse().ok()?;
                ids.contains(&id).then(|| {
                    (
                        id,
                        t["state"].as_str().unwrap_or_default().to_owned(),
                        t["error"].as_str().map(str::to_owned),
                    )
                })
            })
            .collect();
        if let Some((_, _, Some(err))) = states.iter().find(|(_, s, _)| s == "failed") {
            return Err(err.clone());
        }
        let ready = !states.is_empty() && states.iter().all(|(_, s, _)| s != "starting");
        if ready {
            break ids
                .iter()
                .filter_map(|id| host.handle(*id)?.ok())
                .collect::<Vec<_>>();
        }
        let waited = t0.elapsed();
        if states.is_empty() && waited > FIND_TIMEOUT {
            return Err(format!(
                "no process of container {} is a target on this node after {} s (is the pod observed: the node agent's --pod-selector or the annotation detrix.dev/observe?)",
                &container_id[..container_id.len().min(12)],
                FIND_TIMEOUT.as_secs()
            ));
        }
        if waited > START_TIMEOUT {
            return Err(format!(
                "{name}'s target did not finish starting within {} s",
                START_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut ours = false;
    let mut views = Vec::new();
    for h in &handles {
        let reply = h.wake(None).await.map_err(|e| e.to_string())?;
        ours |= reply.status == "awake";
        views.push(h.view());
    }
    Ok(Woken {
        ours,
        counts: counts(&views),
    })
}
