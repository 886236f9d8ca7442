//! `detrix-agent fleet wake | sleep | status`: the operator's side of a `DetrixWake`. The CLI
//! only writes the object's spec (create it, advance `stage`, set `halted`) and reads the node
//! agents' reports in its status; the node agents do the waking, and the TTL holds without it.
//!
//! `wake` advances one stage at a time: the stage is healthy when every target it holds is
//! awake (the sum of the nodes' `awake` equals [`Plan::awake_count`] of the selected
//! containers, each report about that stage) with no failure and no breaker trip; it must stay
//! so for `--interval` before the next stage. A failure, a trip, or a stage not healthy within
//! `--stage-timeout` halts the wake: `spec.halted` is set, every node puts back to sleep what
//! this object woke, and the CLI waits until every node reports the halt with nothing awake
//! (counted from each report, a wake still under way included). Progress is one
//! line per change. The CLI follows the object with a watch ([`Follow`]) and reacts to each
//! new version: no request is made on a timer, except a recount of the pods while every node
//! reports done but the total is not the plan's (pods came or went). `fleet status --watch`
//! prints the object again at each change until it is deleted.

use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::crd::{DetrixWake, NodeStatus, WakeSpec};
use super::follow::{Follow, Next};
use super::plan::{parse_duration, parse_steps, Plan};
use super::reconcile;

/// `fleet wake`'s arguments, parsed by the binary.
#[derive(Debug, Clone)]
pub struct WakeArgs {
    pub selector: String,
    pub namespace: String,
    pub name: Option<String>,
    pub canary: u32,
    pub steps: String,
    pub interval: String,
    pub ttl: String,
    pub safe_mode: bool,
    pub stage_timeout: String,
}

/// With every reporting node done but the count not the plan's, the pods are counted again
/// after this (pods came or went).
const RECOUNT: Duration = Duration::from_secs(2);
/// How long `fleet sleep` (and a halt) waits for the nodes to report every target asleep.
const SLEEP_WAIT: Duration = Duration::from_secs(60);

/// Totals over the nodes' reports about `stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub nodes: u32,
    pub wanted: u32,
    pub awake: u32,
    pub failed: u32,
    pub trips: u32,
}

/// Sums the reports about `stage` (a node still on an earlier stage is not counted yet).
#[must_use]
pub fn totals(nodes: &[NodeStatus], stage: u32) -> Totals {
    let mut t = Totals::default();
    for n in nodes.iter().filter(|n| n.stage == stage) {
        t.nodes += 1;
        t.wanted += n.wanted;
        t.awake += n.awake;
        t.failed += n.failed;
        t.trips += n.breaker_trips;
    }
    t
}

/// Targets not yet asleep after a halt: those reported awake, or on a node that has not
/// reported the halt yet (its count is not known; at least one wake of its may be under way).
fn not_asleep(nodes: &[NodeStatus]) -> u32 {
    nodes
        .iter()
        .map(|n| {
            let ended = n.message == reconcile::HALTED || n.message == reconcile::EXPIRED;
            if ended {
                n.awake
            } else {
                n.awake.max(1)
            }
        })
        .sum()
}

fn first_message(nodes: &[NodeStatus]) -> String {
    nodes
        .iter()
        .find(|n| !n.message.is_empty())
        .map(|n| format!("{}: {}", n.node, n.message))
        .unwrap_or_default()
}

/// How many containers the selector picks (those with a container id: started).
async fn count_targets(client: &Client, ns: &str, selector: &str) -> anyhow::Result<usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing the pods `{selector}` selects in namespace {ns}"))?;
    Ok(list
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| {
            c.container_id
                .as_deref()
                .and_then(crate::pods::container_id)
                .is_some()
        })
        .count())
}

fn stage_name(plan: &Plan, stage: u32) -> String {
    if stage == 0 {
        format!("canary ({})", plan.canary)
    } else {
        format!(
            "stage {stage} ({}%)",
            plan.steps[usize::try_from(stage - 1).unwrap_or(0)]
        )
    }
}

/// Runs `fleet wake`; `Ok(true)` when every stage was reached, `Ok(false)` when it halted.
///
/// # Errors
/// Bad arguments, or the API refused or failed.
pub async fn wake(client: Client, a: WakeArgs, out: &mut dyn Write) -> anyhow::Result<bool> {
    let plan = Plan::new(a.canary, parse_steps(&a.steps).map_err(anyhow::Error::msg)?)
        .map_err(anyhow::Error::msg)?;
    let interval = parse_duration(&a.interval).map_err(|e| anyhow::anyhow!("--interval: {e}"))?;
    let ttl = parse_duration(&a.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let stage_timeout =
        parse_duration(&a.stage_timeout).map_err(|e| anyhow::anyhow!("--stage-timeout: {e}"))?;
    if ttl.is_zero() {
        bail!("--ttl is zero: every target would sleep at once; give e.g. --ttl 15m");
    }
    if crate::pods::PodSelector::parse(&a.selector)
        .map_err(anyhow::Error::msg)?
        .is_none()
    {
        bail!("--selector is empty: it would select no pod; give e.g. --selector app=orders");
    }
    let name = a.name.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("wake-{secs}")
    });
    let ns = a.namespace.as_str();
    let mut total = count_targets(&client, ns, &a.selector).await?;
    let api: Api<DetrixWake> = Api::namespaced(client.clone(), ns);
    let spec = WakeSpec {
        selector: a.selector.clone(),
        canary: plan.canary,
        steps: plan.steps.clone(),
        interval: a.interval.clone(),
        ttl: a.ttl.clone(),
        safe_mode: a.safe_mode,
        stage: 0,
        halted: false,
    };
    api.create(&PostParams::default(), &DetrixWake::new(&name, ns, spec))
        .await
        .with_context(|| format!("creating DetrixWake {ns}/{name}"))?;
    let counts: Vec<String> = (0..=plan.last_stage())
        .map(|s| plan.awake_count(s, total).to_string())
        .collect();
    writeln!(
        out,
        "fleet wake {ns}/{name}: {total} target(s) selected by `{}`; awake per stage {}; ttl {}",
        a.selector,
        counts.join(" → "),
        a.ttl
    )?;
    out.flush()?;
    let started = Instant::now();
    let mut follow = Follow::new(&api, ns, &name);
    let mut latest: Option<DetrixWake> = None;
    for stage in 0..=plan.last_stage() {
        if stage > 0 {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"stage": stage}})),
            )
            .await
            .with_context(|| format!("advancing {ns}/{name} to stage {stage}"))?;
        }
        let deadline = Instant::now() + stage_timeout;
        let mut last = None;
        let mut recount_at: Option<Instant> = None;
        // Wait until the stage is healthy: each new version of the object is looked at as the
        // watch brings it.
        loop {
            let nodes = nodes_of(latest.as_ref());
            let t = totals(&nodes, stage);
            let expected = u32::try_from(plan.awake_count(stage, total)).unwrap_or(u32::MAX);
            if last != Some(t) {
                writeln!(
                    out,
                    "{}: {}/{expected} awake, {} failed, {} breaker trip(s) ({} node(s) reporting, {:.1} s)",
                    stage_name(&plan, stage),
                    t.awake,
                    t.failed,
                    t.trips,
                    t.nodes,
                    started.elapsed().as_secs_f64()
                )?;
                out.flush()?;
                last = Some(t);
            }
            if t.failed > 0 || t.trips > 0 {
                let why = first_message(&nodes);
                let why = format!("failure in {}: {why}", stage_name(&plan, stage));
                return halt(&api, &mut follow, ns, &name, &why, out).await;
            }
            if t.awake == t.wanted && t.awake == expected {
                break;
            }
            // The reporting nodes are done but the count differs: pods came or went; count
            // them again in 2 s unless a new report comes first.
            if t.nodes > 0 && t.awake == t.wanted && recount_at.is_none() {
                recount_at = Some(Instant::now() + RECOUNT);
            }
            let until = recount_at.map_or(deadline, |r| r.min(deadline));
            match follow.next(Some(until)).await {
                Next::Seen(w) => latest = Some(*w),
                Next::Gone => bail!("{ns}/{name} was deleted during the wake; the node agents put what it woke back to sleep"),
                Next::Timeout if recount_at.is_some_and(|r| Instant::now() >= r) => {
                    total = count_targets(&client, ns, &a.selector).await?;
                    recount_at = None;
                }
                Next::Timeout if Instant::now() >= deadline => {
                    let why = format!(
                        "{} not healthy within {} ({}/{expected} awake)",
                        stage_name(&plan, stage),
                        a.stage_timeout,
                        t.awake
                    );
                    return halt(&api, &mut follow, ns, &name, &why, out).await;
                }
                Next::Timeout => {}
            }
        }
        writeln!(
            out,
            "{} healthy: {} awake ({:.1} s)",
            stage_name(&plan, stage),
            last.map_or(0, |t| t.awake),
            started.elapsed().as_secs_f64()
        )?;
        out.flush()?;
        if stage == plan.last_stage() {
            break;
        }
        // Hold the stage for the interval, looking at each report for a failure.
        let hold = Instant::now() + interval;
        loop {
            match follow.next(Some(hold)).await {
                Next::Seen(w) => latest = Some(*w),
                Next::Gone => bail!("{ns}/{name} was deleted during the wake; the node agents put what it woke back to sleep"),
                Next::Timeout => break,
            }
            let nodes = nodes_of(latest.as_ref());
            let t = totals(&nodes, stage);
            if t.failed > 0 || t.trips > 0 {
                let why = first_message(&nodes);
                let why = format!("failure in {}: {why}", stage_name(&plan, stage));
                return halt(&api, &mut follow, ns, &name, &why, out).await;
            }
        }
    }
    let expires = latest
        .and_then(|w| w.status?.expires_at)
        .unwrap_or_default();
    writeln!(
        out,
        "fleet wake {ns}/{name}: every stage reached; the targets sleep at {expires} (ttl {}) or on `detrix-agent fleet sleep {name} -n {ns}`",
        a.ttl
    )?;
    Ok(true)
}

fn nodes_of(w: Option<&DetrixWake>) -> Vec<NodeStatus> {
    w.and_then(|w| w.status.as_ref())
        .map(|s| s.nodes.clone())
        .unwrap_or_default()
}

/// Sets `halted` and waits until no node reports a target awake.
async fn halt(
    api: &Api<DetrixWake>,
    follow: &mut Follow,
    ns: &str,
    name: &str,
    why: &str,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    writeln!(out, "halting {ns}/{name}: {why}")?;
    out.flush()?;
    sleep_all(api, follow, ns, name, out).await?;
    Ok(false)
}

/// Sets `halted`, then follows the object until every node that reported has reported the halt
/// (or the TTL's end) with nothing awake.
async fn sleep_all(
    api: &Api<DetrixWake>,
    follow: &mut Follow,
    ns: &str,
    name: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let w = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"halted": true}})),
        )
        .await
        .with_context(|| format!("halting {ns}/{name}"))?;
    let mut nodes = nodes_of(Some(&w));
    let deadline = Instant::now() + SLEEP_WAIT;
    loop {
        let awake = not_asleep(&nodes);
        if awake == 0 {
            writeln!(out, "{ns}/{name}: every target it woke sleeps")?;
            return Ok(());
        }
        match follow.next(Some(deadline)).await {
            Next::Seen(w) => nodes = nodes_of(Some(&w)),
            // Deleted: the nodes put back to sleep what it woke (they do so for a deleted
            // object as for a halted one).
            Next::Gone => {
                writeln!(out, "{ns}/{name}: deleted; the node agents put every target it woke back to sleep")?;
                return Ok(());
            }
            Next::Timeout => bail!("{ns}/{name}: {awake} target(s) not reported asleep after {} s (a node that has not reported the halt counts as one); see `detrix-agent fleet status {name} -n {ns}`", SLEEP_WAIT.as_secs()),
        }
    }
}

/// `fleet sleep NAME`: halts the wake and waits until every target it woke sleeps.
///
/// # Errors
/// The object is missing or the API failed.
pub async fn sleep(
    client: Client,
    ns: &str,
    name: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let api: Api<DetrixWake> = Api::namespaced(client, ns);
    let mut follow = Follow::new(&api, ns, name);
    sleep_all(&api, &mut follow, ns, name, out).await
}

/// `fleet status [NAME]`: the object(s) and every node's report; with `watch`, the named
/// object again at each change (as the watch brings it) until it is deleted.
///
/// # Errors
/// The object is missing, `watch` without a name, or the API failed.
pub async fn status(
    client: Client,
    ns: &str,
    name: Option<&str>,
    watch: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let api: Api<DetrixWake> = Api::namespaced(client, ns);
    if watch {
        let Some(name) = name else {
            bail!("--watch follows one DetrixWake: name it, e.g. `detrix-agent fleet status wake-1 -n {ns} --watch`");
        };
        return follow_status(&api, ns, name, out).await;
    }
    let objects = match name {
        Some(n) => vec![api
            .get(n)
            .await
            .with_context(|| format!("reading {ns}/{n}"))?],
        None => api.list(&ListParams::default()).await?.items,
    };
    if objects.is_empty() {
        writeln!(out, "no DetrixWake in namespace {ns}")?;
    }
    for w in objects {
        write!(out, "{}", render_status(&w))?;
    }
    Ok(())
}

async fn follow_status(
    api: &Api<DetrixWake>,
    ns: &str,
    name: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut follow = Follow::new(api, ns, name);
    let mut shown = String::new();
    let mut seen = false;
    loop {
        match follow.next(None).await {
            Next::Seen(w) => {
                seen = true;
                let text = render_status(&w);
                // A new version that reads the same (a report's time only) is not shown.
                if text != shown {
                    write!(out, "{text}")?;
                    out.flush()?;
                    shown = text;
                }
            }
            Next::Gone if !seen => bail!(
                "{ns}/{name}: no such DetrixWake (`detrix-agent fleet status -n {ns}` lists them)"
            ),
            Next::Gone => {
                writeln!(out, "{ns}/{name}: deleted")?;
                return Ok(());
            }
            Next::Timeout => {}
        }
    }
}

/// The text `fleet status` prints for one object.
#[must_use]
pub fn render_status(w: &DetrixWake) -> String {
    let s = &w.spec;
    let status = w.status.clone().unwrap_or_default();
    let mut text = format!(
        "{}: selector `{}`, stage {} of {}{}, canary {}, steps {}, ttl {} (expires {})\n",
        w.key(),
        s.selector,
        s.stage,
        s.steps.len(),
        if s.halted { ", HALTED" } else { "" },
        s.canary,
        s.steps
            .iter()
            .map(|p| format!("{p}%"))
            .collect::<Vec<_>>()
            .join(","),
        s.ttl,
        status.expires_at.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(
        text,
        "  {:<20} {:>5} {:>6} {:>5} {:>6} {:>5}  message",
        "node", "stage", "wanted", "awake", "failed", "trips"
    );
    for n in &status.nodes {
        let _ = writeln!(
            text,
            "  {:<20} {:>5} {:>6} {:>5} {:>6} {:>5}  {}",
            n.node, n.stage, n.wanted, n.awake, n.failed, n.breaker_trips, n.message
        );
    }
    text
}
