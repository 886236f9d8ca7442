//! The one pipeline every copy of a line goes through, one way: plan it at the line's first
//! instruction, place the probe (which proves the plan reads the same values at the chosen
//! instruction and hands back the plan to run there), take the point at the chosen address,
//! and forward the plan's stack reads to the registers holding them there.
//!
//! Before that, [`runs`] picks which row runs of each copy carry a probe (see
//! [`crate::codegen::cfg`]): each kept run is planned as a point of its own.
//!
//! Why one: `Resolver::prepare` (to attach) and [`describe`] (`detrix-agent resolve`, the
//! snapshot tests) must show and do the same thing; describe only renders the result as JSON.

use std::collections::HashSet;

use iced_x86::{Instruction, OpKind};

use crate::codegen::block::{self, CallFlow};
use crate::codegen::cfg::{choose_runs, Cfg};
use crate::codegen::Function;
use crate::debuginfo::{Binary, Language, ProbePoint};
use crate::expr;
use crate::forward;
use crate::place::{self, Placement};
use crate::plan::{self, BuiltPlan, PlanError, PlanOptions, Reads};

/// Which optional steps run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Steps {
    /// Move the probe to an emulated instruction of its basic block that reads the same
    /// values (else: the line's first instruction), among these candidates.
    pub placement: bool,
    pub scope: place::Scope,
    /// Read values from registers that hold copies of their stack slots.
    pub forwarding: bool,
}

/// One copy of a line, planned, placed and forwarded.
pub(super) struct Placed {
    pub point: ProbePoint,
    pub plan: BuiltPlan,
    pub placement: Placement,
    /// One sentence per read that forwarding rewrote.
    pub forwarded: Vec<String>,
}

/// Each copy of a line as the probe points its kept runs give, each with one sentence per run
/// of its copy saying which were kept and why (none when the copy has one run).
pub(super) fn runs(bin: &Binary, points: Vec<ProbePoint>) -> Vec<(ProbePoint, Vec<String>)> {
    let mut out = Vec::new();
    for p in points {
        if p.runs.len() < 2 {
            out.push((p, Vec::new()));
            continue;
        }
        let func = Function::of(bin, &p);
        let cfg = Cfg::of(&func, p.func_start.0, p.func_end.0);
        let verdicts = choose_runs(&cfg, &p.runs);
        let why: Vec<String> = verdicts.iter().map(|v| v.why.clone()).collect();
        for v in verdicts.iter().filter(|v| v.kept) {
            let point = if v.run.addr == p.addr {
                Some(p.clone())
            } else {
                bin.point_at(&p, v.run.addr).map(|mut q| {
                    q.line_end = v.run.line_end;
                    q
                })
            };
            if let Some(point) = point {
                out.push((point, why.clone()));
            }
        }
    }
    out
}

/// Plans `exprs` at `p`, places the probe and forwards its reads.
///
/// Two plans are built at the line's own address: the coalesced one (nearby reads through one
/// pointer are one copy) and, when forwarding is on, the plain one, whose separate stack-slot
/// reads forwarding can turn into register reads (coalescing hides those slots). Each is placed
/// and forwarded on its own — placement proves its candidates against the plan it moves, so a
/// plan is never rebuilt at the address another one was placed at. The plain one is kept where
/// forwarding applies to it or it reads no more memory, unless it had to stay on a costlier
/// instruction.
///
/// # Errors
/// The plan cannot be built at `p` (names the expression).
pub(super) fn plan_point(
    bin: &Binary,
    p: &ProbePoint,
    exprs: &[String],
    condition: Option<&expr::Condition>,
    extras: &plan::Extras,
    opts: PlanOptions,
    steps: Steps,
) -> Result<Placed, PlanError> {
    let built = plan::build_with(bin, p, exprs, condition, extras, opts, Reads::Coalesced)?;
    let func = Function::of(bin, p);
    let coalesced = place_and_forward(bin, p, built, &func, steps);
    if !steps.forwarding {
        return Ok(coalesced);
    }
    let Ok(plain) = plan::build_with(bin, p, exprs, condition, extras, opts, Reads::Plain) else {
        return Ok(coalesced);
    };
    let plain = place_and_forward(bin, p, plain, &func, steps);
    let plain_wins = plain.placement.kind.cost_ns() <= coalesced.placement.kind.cost_ns()
        && (!plain.forwarded.is_empty()
            || plan::memory_reads(&plain.plan.plan) <= plan::memory_reads(&coalesced.plan.plan));
    Ok(if plain_wins { plain } else { coalesced })
}

/// Places one plan built at `p` (moving it within its block where its values are proven the
/// same) and forwards its reads at the chosen instruction.
fn place_and_forward(
    bin: &Binary,
    p: &ProbePoint,
    mut built: BuiltPlan,
    func: &Function,
    steps: Steps,
) -> Placed {
    let placement = if steps.placement {
        let (abi, calls) = call_flow(bin, p, func);
        let (placement, moved) = place::place(bin, p, &built.plan, func, steps.scope, abi, &calls);
        built.plan = moved;
        placement
    } else {
        Placement {
            chosen: p.addr,
            kind: place::classify(bin, p),
            explain: vec![format!(
                "placement off: probe at the line's first instruction {}",
                p.addr
            )],
            candidates: Vec::new(),
            edges: Vec::new(),
        }
    };
    let point = if placement.chosen == p.addr {
        p.clone()
    } else {
        bin.point_at(p, placement.chosen)
            .unwrap_or_else(|| p.clone())
    };
    // Forwarding finds the registers that hold a copy at the chosen instruction; a probe on a
    // call of the function (its plan re-based for `rsp`) or early in the block that falls into
    // the chosen one (code between may load those registers) does not see them so.
    let forwarded = if steps.forwarding && !placement.edges.iter().any(|e| e.call || e.early) {
        forward::forward(&point, &mut built.plan, func)
    } else {
        Vec::new()
    };
    Placed {
        point,
        plan: built,
        placement,
        forwarded,
    }
}

/// Which registers a callee keeps and which calls a block runs on across, for the function
/// holding `p`. C and Go have no landing pads: a call returns, or the function's run ends in
/// it. Elsewhere (C++, Rust) the call-site tables of the function's code say which calls'
/// unwinding lands in it; with no readable table, every call ends a block.
fn call_flow(bin: &Binary, p: &ProbePoint, func: &Function) -> (place::CallAbi, CallFlow) {
    match bin.language() {
        Ok(Language::C) => (place::CallAbi::SysV, CallFlow::Returns),
        Ok(Language::Go) => (place::CallAbi::Go, go_flow(bin, func)),
        _ => match bin.unwind_tables(p.func_start.0, p.func_end.0) {
            Ok(tables) if !tables.is_empty() => {
                (place::CallAbi::SysV, CallFlow::from_tables(func, &tables))
            }
            Ok(_) => (place::CallAbi::NoCalls, CallFlow::Ends),
            Err(e) => {
                tracing::debug!("{}: calls end blocks: {e}", p.addr);
                (place::CallAbi::NoCalls, CallFlow::Ends)
            }
        },
    }
}

/// Go's calls return (or the goroutine's run ends in them), but after a deferred call
/// recovers a panic the runtime resumes the function at its `runtime.deferreturn` call: a way in
/// no branch shows, so each such call starts a block, as a landing pad does.
fn go_flow(bin: &Binary, func: &Function) -> CallFlow {
    let pads: HashSet<u64> = func
        .instrs
        .iter()
        .filter(|i| block::is_call(i) && i.op0_kind() == OpKind::NearBranch64)
        .filter(|i| bin.go_deferreturn == Some(i.near_branch_target()))
        .map(Instruction::ip)
        .collect();
    if pads.is_empty() {
        CallFlow::Returns
    } else {
        CallFlow::Table {
            ends: HashSet::new(),
            pads,
        }
    }
}

/// Plan options for resolving without a process (`describe`, `coverage`): no tgid or load bias
/// to check against, no rate limit, short strings.
pub(super) fn without_process() -> PlanOptions {
    PlanOptions {
        tgid: 0,
        load_bias: 0,
        string_cap: 64,
        elem_cap: plan::DEFAULT_ELEM_CAP,
        rate_per_sec: 0,
        burst: 0,
    }
}

/// What resolving `file:line` and each expression gives on `bin`, without a process: points
/// (function, address, file offset, placement) and per expression the plan ops or the error.
/// Paths are shown relative to `strip_prefix` so the result is stable across machines.
///
/// This is what `detrix-agent resolve` prints and what the snapshot tests pin.
#[must_use]
pub fn describe(
    bin: &Binary,
    file: &str,
    line: u32,
    exprs: &[String],
    strip_prefix: &str,
) -> serde_json::Value {
    let rel = |s: &str| {
        if strip_prefix.is_empty() {
            return s.to_owned();
        }
        s.strip_prefix(strip_prefix)
            .map_or_else(|| s.to_owned(), |r| r.trim_start_matches('/').to_owned())
    };
    // Machine paths out of messages, so the output is the same on every machine.
    let scrub = |s: String| {
        if strip_prefix.is_empty() {
            s
        } else {
            s.replace(&format!("{strip_prefix}/"), "")
                .replace(strip_prefix, "")
        }
    };
    let points = match bin.resolve_line(file, line) {
        Ok(p) => runs(bin, p),
        Err(e) => {
            return serde_json::json!({ "at": format!("{file}:{line}"), "error": scrub(e.to_string()) })
        }
    };
    let opts = without_process();
    let mut out = Vec::new();
    for (p, why) in &points {
        let mut values = serde_json::Map::new();
        let mut ok: Vec<String> = Vec::new();
        for e in exprs {
            let v = match plan::build(bin, p, std::slice::from_ref(e), None, opts) {
                // Captured as an error on every hit: not among the values the plan reads.
                Ok(b) if !b.value_errors.is_empty() => {
                    let why = b.value_errors.iter().map(|v| v.message.clone()).collect();
                    serde_json::json!({ "error": scrub(why) })
                }
                Ok(b) => {
                    ok.push(e.clone());
                    serde_json::json!({ "ops": plan::describe_ops(&b.plan) })
                }
                Err(err) => serde_json::json!({ "error": scrub(err.to_string()) }),
            };
            values.insert(e.clone(), v);
        }
        // Placement for the expressions that can be captured (what an attach would use).
        let steps = Steps {
            placement: true,
            scope: place::Scope::Block,
            forwarding: true,
        };
        let placement = plan_point(bin, p, &ok, None, &plan::Extras::default(), opts, steps)
            .ok()
            .map(|placed| {
                let pl = &placed.placement;
                let mut v = serde_json::json!({ "chosen": pl.chosen.to_string(), "kind": format!("{:?}", pl.kind) });
                if !pl.candidates.is_empty() {
                    v["candidates"] = pl.candidates.iter().map(place::Candidate::sentence).collect();
                }
                if !pl.edges.is_empty() {
                    v["edges"] = pl.edges.iter().map(place::Edge::sentence).collect();
                }
                if !placed.forwarded.is_empty() {
                    v["forwarded"] = placed.forwarded.clone().into();
                }
                v
            });
        let mut point = serde_json::json!({
            "function": p.function,
            "file": rel(&p.file),
            "line": p.line,
            "addr": p.addr.to_string(),
            "file_offset": p.file_offset.to_string(),
            "placement": placement,
            "values": values,
        });
        if !why.is_empty() {
            point["runs"] = why.clone().into();
        }
        out.push(point);
    }
    serde_json::json!({ "at": format!("{file}:{line}"), "copies": points.len(), "points": out })
}
