//! A node agent's side of every `DetrixWake`, as a pure state machine like
//! [`crate::daemon::lifecycle`]: an [`Input`] in (the object seen or gone, the pod list it asked
//! for, a wake's or sleep's result, a health reading, the clock), [`Effect`]s out (list the
//! object's pods, wake or sleep one container's targets, report this node's status). No API
//! client, no clock, no targets: [`super::node`] performs the effects and feeds the results
//! back, so orderings (a stage advanced while a wake is under way, a halt racing a wake, expiry
//! during a rollout, a restarted agent) are tested here without a cluster.
//!
//! Per object: the desired stage comes from the object; this node's members of that stage are
//! [`Plan::members`] of the fleet-wide list of selected containers (the same on every node)
//! restricted to this node's pods; each member is woken once. A member whose wake fails, or
//! whose daemon session is lost, is `failed`. Breaker trips are the probes the CPU breaker
//! switched off in a member's targets since the wake (serve's per-probe `--cpu-budget` and its
//! host budget; what the target's `/detrix/status` shows as `probes_switched_off`), counted
//! exactly; hits dropped because the daemon read too slowly are reported beside them
//! (`droppedHits`) but are not a trip. Only what this object woke is put back to sleep — on a halt,
//! at the TTL, or when the object is deleted — and a target someone else had already woken is
//! left awake.

use std::collections::BTreeMap;

use super::crd::NodeStatus;
use super::plan::Plan;

/// A node's message once it has put to sleep, on a halt, what the object woke (the CLI waits
/// for it from every node).
pub const HALTED: &str = "halted: every target this wake woke sleeps";
/// A node's message once the TTL passed and what the object woke sleeps.
pub const EXPIRED: &str = "expired: the TTL passed, every target this wake woke sleeps";

/// One container of this node's pods that the object's selector picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub pod_uid: String,
    /// The container's name in its pod.
    pub container: String,
    /// As the cgroup names it (lower-case hex).
    pub container_id: String,
    /// `<namespace>/<pod>/<container>`, for messages.
    pub name: String,
    /// The pod's `detrix.dev/safe-mode` annotation: the mode its targets registered in.
    pub safe_mode: bool,
}

/// What an object asks, as this node reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub namespace: String,
    pub selector: String,
    pub plan: Plan,
    pub stage: u32,
    pub halted: bool,
    pub safe_mode: bool,
    /// Creation time + TTL, milliseconds since the epoch.
    pub expires_at_ms: u64,
}

/// A wake that went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Woken {
    /// This wake registered the target (`awake`); false when it already was (`already_awake`):
    /// someone else woke it, and this object will not put it to sleep.
    pub ours: bool,
    /// The targets' counts at the wake: what trips and drops are counted from.
    pub counts: Counts,
}

/// A container's targets' running counts (each target's `/detrix/status`, summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Probes the CPU breaker switched off (`probes_switched_off`).
    pub switched_off: u64,
    /// Hits dropped because the daemon did not read fast enough (`dropped_hits`).
    pub dropped_hits: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The object as listed or watched (new or changed), `now_ms` the clock.
    Seen {
        key: String,
        desired: Desired,
        now_ms: u64,
    },
    /// The object was deleted.
    Deleted { key: String },
    /// The answer to [`Effect::ListPods`] for `stage`: every selected container fleet-wide
    /// (pod UID, container name) and those of this node.
    Listed {
        key: String,
        stage: u32,
        fleet: Vec<(String, String)>,
        local: Vec<Candidate>,
    },
    /// The answer to [`Effect::ListPods`] when the list failed.
    ListFailed { key: String, error: String },
    /// The answer to [`Effect::Wake`].
    Woke {
        key: String,
        container_id: String,
        result: Result<Woken, String>,
    },
    /// The answer to [`Effect::Sleep`].
    Slept { key: String, container_id: String },
    /// A reading of a container's targets: their counts so far and the breaker's last reason,
    /// daemon session lost, or the targets gone (the pod was deleted).
    Health {
        container_id: String,
        counts: Counts,
        switched_off_reason: Option<String>,
        session_lost: bool,
        gone: bool,
    },
    /// The clock, for the TTL.
    Tick { now_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// List the pods `selector` picks in `namespace`, then feed [`Input::Listed`].
    ListPods {
        key: String,
        stage: u32,
        namespace: String,
        selector: String,
    },
    /// Wake every target of the container (waiting a little for one to be found).
    Wake {
        key: String,
        container_id: String,
        name: String,
    },
    /// Put every target of the container to sleep.
    Sleep { key: String, container_id: String },
    /// Write this node's entry in the object's status.
    Report { key: String, status: NodeStatus },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Waking,
    Awake {
        ours: bool,
    },
    Failed(String),
    /// Put back to sleep by this object (or never woken because the object ended first).
    Asleep,
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    state: State,
    /// The counts at the wake, and as last read (kept after the member sleeps: a halt's
    /// report still says how many probes tripped).
    at_wake: Counts,
    now: Counts,
    /// The breaker's reason for the last probe it switched off.
    reason: Option<String>,
}

impl Member {
    fn new(name: String, state: State) -> Self {
        Self {
            name,
            state,
            at_wake: Counts::default(),
            now: Counts::default(),
            reason: None,
        }
    }

    fn ours(&self) -> bool {
        matches!(self.state, State::Awake { ours: true })
    }

    fn trips(&self) -> u64 {
        self.now
            .switched_off
            .saturating_sub(self.at_wake.switched_off)
    }

    fn dropped(&self) -> u64 {
        self.now
            .dropped_hits
            .saturating_sub(self.at_wake.dropped_hits)
    }
}

/// Why every target of an object sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Halted,
    Expired,
}

#[derive(Debug, Clone)]
struct Object {
    desired: Desired,
    /// The stage the members were computed for.
    listed: Option<u32>,
    /// A list asked for and not answered yet, for that stage.
    listing: Option<u32>,
    members: BTreeMap<String, Member>,
    end: Option<End>,
    list_error: Option<String>,
    reported: Option<NodeStatus>,
}

/// Every object this node knows, keyed `namespace/name`.
#[derive(Debug)]
pub struct Reconciler {
    node: String,
    objects: BTreeMap<String, Object>,
}

impl Reconciler {
    #[must_use]
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            objects: BTreeMap::new(),
        }
    }

    /// Keys of the objects known.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        self.objects.keys().cloned().collect()
    }

    /// Containers some object woke (or is waking) that are not asleep: what to read health of.
    #[must_use]
    pub fn watched(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .objects
            .values()
            .flat_map(|o| o.members.iter())
            .filter(|(_, m)| matches!(m.state, State::Awake { .. }))
            .map(|(c, _)| c.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// One step.
    pub fn step(&mut self, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        let touched: Vec<String> = match input {
            Input::Seen {
                key,
                desired,
                now_ms,
            } => {
                self.seen(&key, desired, now_ms, &mut fx);
                vec![key]
            }
            Input::Deleted { key } => {
                if let Some(o) = self.objects.remove(&key) {
                    for (c, m) in &o.members {
                        if m.ours() {
                            fx.push(Effect::Sleep {
                                key: key.clone(),
                                container_id: c.clone(),
                            });
                        }
                    }
                }
                // Nothing to report on: the object is gone.
                vec![]
            }
            Input::Listed {
                key,
                stage,
                fleet,
                local,
            } => {
                self.listed(&key, stage, &fleet, local, &mut fx);
                vec![key]
            }
            Input::ListFailed { key, error } => {
                if let Some(o) = self.objects.get_mut(&key) {
                    o.listing = None;
                    o.list_error = Some(format!(
                        "listing the pods of `{}` in {} failed: {error}",
                        o.desired.selector, o.desired.namespace
                    ));
                }
                vec![key]
            }
            Input::Woke {
                key,
                container_id,
                result,
            } => {
                self.woke(&key, &container_id, result, &mut fx);
                vec![key]
            }
            Input::Slept { key, container_id } => {
                if let Some(m) = self
                    .objects
                    .get_mut(&key)
                    .and_then(|o| o.members.get_mut(&container_id))
                {
                    m.state = State::Asleep;
                }
                vec![key]
            }
            Input::Health {
                container_id,
                counts,
                switched_off_reason,
                session_lost,
                gone,
            } => self.health(
                &container_id,
                counts,
                switched_off_reason.as_deref(),
                session_lost,
                gone,
            ),
            Input::Tick { now_ms } => {
                let keys = self.keys();
                for k in &keys {
                    self.check_expiry(k, now_ms, &mut fx);
                }
                keys
            }
        };
        for key in touched {
            self.report(&key, &mut fx);
        }
        fx
    }

    fn seen(&mut self, key: &str, desired: Desired, now_ms: u64, fx: &mut Vec<Effect>) {
        let o = self
            .objects
            .entry(key.to_owned())
            .or_insert_with(|| Object {
                desired: desired.clone(),
                listed: None,
                listing: None,
                members: BTreeMap::new(),
                end: None,
                list_error: None,
                reported: None,
            });
        o.desired = desired;
        if o.desired.halted && o.end.is_none() {
            end(key, o, End::Halted, fx);
        }
        self.check_expiry(key, now_ms, fx);
        let Some(o) = self.objects.get_mut(key) else {
            return;
        };
        if o.end.is_none()
            && o.listed != Some(o.desired.stage)
            && o.listing != Some(o.desired.stage)
        {
            o.listing = Some(o.desired.stage);
            fx.push(Effect::ListPods {
                key: key.to_owned(),
                stage: o.desired.stage,
                namespace: o.desired.namespace.clone(),
                selector: o.desired.selector.clone(),
            });
        }
    }

    fn check_expiry(&mut self, key: &str, now_ms: u64, fx: &mut Vec<Effect>) {
        if let Some(o) = self.objects.get_mut(key) {
            if o.end.is_none() && now_ms >= o.desired.expires_at_ms {
                end(key, o, End::Expired, fx);
            }
        }
    }

    fn listed(
        &mut self,
        key: &str,
        stage: u32,
        fleet: &[(String, String)],
        local: Vec<Candidate>,
        fx: &mut Vec<Effect>,
    ) {
        let Some(o) = self.objects.get_mut(key) else {
            return;
        };
        if o.listing == Some(stage) {
            o.listing = None;
        }
        o.list_error = None;
        // A late answer for a stage no longer asked for, or after the end: ignored (a newer
        // list is on its way, or nothing is to be woken).
        if o.end.is_some() || stage != o.desired.stage {
            return;
        }
        o.listed = Some(stage);
        let members = o.desired.plan.members(stage, fleet);
        for cand in local {
            let picked = members
                .iter()
                .any(|(uid, c)| *uid == cand.pod_uid && *c == cand.container);
            if !picked || o.members.contains_key(&cand.container_id) {
                continue;
            }
            let state = if o.desired.safe_mode && !cand.safe_mode {
                State::Failed(format!(
                    "{} is not in SafeMode and this wake asks for it; annotate the pod detrix.dev/safe-mode: \"true\" or wake without --safe-mode",
                    cand.name
                ))
            } else {
                fx.push(Effect::Wake {
                    key: key.to_owned(),
                    container_id: cand.container_id.clone(),
                    name: cand.name.clone(),
                });
                State::Waking
            };
            o.members
                .insert(cand.container_id, Member::new(cand.name, state));
        }
    }

    fn woke(
        &mut self,
        key: &str,
        container_id: &str,
        result: Result<Woken, String>,
        fx: &mut Vec<Effect>,
    ) {
        let Some(o) = self.objects.get_mut(key) else {
            // Deleted while waking: what this wake registered sleeps again.
            if let Ok(Woken { ours: true, .. }) = result {
                fx.push(Effect::Sleep {
                    key: key.to_owned(),
                    container_id: container_id.to_owned(),
                });
            }
            return;
        };
        let ended = o.end.is_some();
        let Some(m) = o.members.get_mut(container_id) else {
            return;
        };
        m.state = match result {
            // Woken after the end: put back to sleep, awake until the sleep returns.
            Ok(w) if ended && w.ours => {
                fx.push(Effect::Sleep {
                    key: key.to_owned(),
                    container_id: container_id.to_owned(),
                });
                m.at_wake = w.counts;
                m.now = w.counts;
                State::Awake { ours: true }
            }
            Ok(_) if ended => State::Asleep,
            Ok(w) => {
                m.at_wake = w.counts;
                m.now = w.counts;
                State::Awake { ours: w.ours }
            }
            Err(_) if ended => State::Asleep,
            Err(e) => State::Failed(format!("{}: {e}", m.name)),
        };
    }

    fn health(
        &mut self,
        container_id: &str,
        counts: Counts,
        reason: Option<&str>,
        session_lost: bool,
        gone: bool,
    ) -> Vec<String> {
        let mut touched = Vec::new();
        for (key, o) in &mut self.objects {
            if gone {
                // The pod was deleted: its container is no longer a member anywhere.
                if o.members.remove(container_id).is_some() {
                    touched.push(key.clone());
                }
                continue;
            }
            let Some(m) = o.members.get_mut(container_id) else {
                continue;
            };
            if !matches!(m.state, State::Awake { .. }) {
                continue;
            }
            let mut changed = m.now != counts;
            m.now = counts;
            if reason.is_some() {
                m.reason = reason.map(str::to_owned);
            }
            if session_lost {
                m.state = State::Failed(format!("{}: the daemon's session was lost", m.name));
                changed = true;
            }
            if changed {
                touched.push(key.clone());
            }
        }
        touched
    }

    /// This node's entry for `key`, if it changed since the last report.
    fn report(&mut self, key: &str, fx: &mut Vec<Effect>) {
        let node = self.node.clone();
        let Some(o) = self.objects.get_mut(key) else {
            return;
        };
        // Nothing to say before the first list (no members known yet), unless it failed or
        // the object already ended.
        if o.listed.is_none() && o.end.is_none() && o.list_error.is_none() {
            return;
        }
        let status = status_of(&node, o);
        if o.reported.as_ref() != Some(&status) {
            o.reported = Some(status.clone());
            fx.push(Effect::Report {
                key: key.to_owned(),
                status,
            });
        }
    }
}

/// Every target the object woke sleeps; nothing more is woken for it.
fn end(key: &str, o: &mut Object, why: End, fx: &mut Vec<Effect>) {
    o.end = Some(why);
    o.listing = None;
    for (c, m) in &mut o.members {
        if m.ours() {
            fx.push(Effect::Sleep {
                key: key.to_owned(),
                container_id: c.clone(),
            });
        }
        // Waking ones are put to sleep when their wake returns ([`Reconciler::woke`]).
        if !matches!(m.state, State::Waking | State::Failed(_)) {
            m.state = if m.ours() {
                m.state.clone()
            } else {
                State::Asleep
            };
        }
    }
}

fn status_of(node: &str, o: &Object) -> NodeStatus {
    let count = |f: &dyn Fn(&State) -> bool| {
        u32::try_from(o.members.values().filter(|m| f(&m.state)).count()).unwrap_or(u32::MAX)
    };
    let first_failure = o
        .members
        .values()
        .find_map(|m| match &m.state {
            State::Failed(why) => Some(why.clone()),
            _ => None,
        })
        .or_else(|| {
            o.members.values().find(|m| m.trips() > 0).map(|m| {
                format!(
                    "{}: the CPU breaker switched off {} probe(s) since the wake ({})",
                    m.name,
                    m.trips(),
                    m.reason.as_deref().unwrap_or("over its CPU budget")
                )
            })
        });
    let message = match o.end {
        Some(End::Halted) => HALTED.to_owned(),
        Some(End::Expired) => EXPIRED.to_owned(),
        None => first_failure
            .or_else(|| o.list_error.clone())
            .unwrap_or_default(),
    };
    NodeStatus {
        node: node.to_owned(),
        stage: o.listed.unwrap_or(o.desired.stage),
        wanted: if o.end.is_some() {
            0
        } else {
            u32::try_from(o.members.len()).unwrap_or(u32::MAX)
        },
        // Once ended, a wake still under way counts as awake: it is put to sleep when it
        // returns, and until then the target is not asleep.
        awake: if o.end.is_some() {
            count(&|s| matches!(s, State::Awake { .. } | State::Waking))
        } else {
            count(&|s| matches!(s, State::Awake { .. }))
        },
        failed: count(&|s| matches!(s, State::Failed(_))),
        breaker_trips: u32::try_from(o.members.values().map(Member::trips).sum::<u64>())
            .unwrap_or(u32::MAX),
        dropped_hits: o.members.values().map(Member::dropped).sum(),
        message,
        updated_at: None,
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
