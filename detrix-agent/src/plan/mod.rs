//! Resolved variables + expressions → a [`Plan`] for the prebuilt eBPF program, with the
//! [`ValueDecoder`]s that read its events back (see [`crate::decode`]).
//!
//! Why data, not generated programs: one verified object serves every probe, so setting one
//! costs a map write and an attach, never a compiler or a verifier run. The price is a bounded
//! interpreter in BPF, so each plan has budgets (ops, values, bytes) checked here, where the
//! error can name the expression, rather than found by the verifier.
//!
//! The jobs, one module each: [`shape`] (what a type's bytes mean), [`lower`] (an expression →
//! ops), [`budget`] (what values point to, as far as room lasts), [`condition`] (the in-kernel
//! filter), [`describe`] (ops as text), [`coalesce`] (nearby reads through one pointer become
//! one copy); this file assembles them into one plan.

mod budget;
mod coalesce;
mod condition;
mod describe;
mod lower;
pub(crate) mod shape;

use detrix_common::{op, pt_regs, Plan, PlanOp, EVENT_DATA_BYTES, MAX_OPS, MAX_VALUES, PLAN_ABI};

use crate::debuginfo::{Binary, ProbePoint, ResolveError};
use crate::expr::{self, ExprError};

use budget::{expand, Caps, Room};
use coalesce::Lowered;
use condition::lower_condition;
pub use describe::describe_ops;
use lower::{fold, lower_value, mk, with_dst};
use shape::Shape;
pub use shape::{EXPANDED_ELEMS, GO_SHOWN_ELEMS, NESTED_EXPANDED_ELEMS, NESTED_STRING_CAP};

// Kept on their old paths: callers decode and render through `plan::`.
pub use crate::decode::value_bytes;
pub use crate::render::Value;

/// Why a plan could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Expr(#[from] ExprError),
    #[error("expression `{expr}`: {what}")]
    Type { expr: String, what: String },
    #[error(
        "too much to capture at one point: {what}; split the expressions over several captures"
    )]
    OverBudget { what: String },
    #[error("condition `{cond}`: {what}")]
    Condition { cond: String, what: String },
}

impl PlanError {
    /// Whether the error is about one value at this point (optimized out there, or read through
    /// something the agent cannot read yet), not about the request: such a value becomes an
    /// error on every hit and the other values still flow.
    #[must_use]
    pub fn is_per_value(&self) -> bool {
        match self {
            PlanError::Resolve(
                ResolveError::OptimizedOut { .. } | ResolveError::UnsupportedLocation { .. },
            ) => true,
            // A register a uprobe does not save (XMM): the location is known, unreadable.
            PlanError::Type { what, .. } => what.ends_with("which a uprobe cannot read"),
            _ => false,
        }
    }
}

/// A shown value that cannot be captured at this point: an error on every hit.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueError {
    /// Position among the shown expressions, in the order asked.
    pub index: usize,
    pub expr: String,
    /// The sentence naming the problem (the CLI's `{"error": …}`).
    pub message: String,
    /// What the target's debugger prints for the value in a logpoint (the DAP `output`): Delve
    /// `(unreadable …)`; lldb-dap `<error: … variable not available>` (recorded with lldb-dap
    /// 22 and Delve 1.20.2, see [`debugger_text`]).
    pub debugger: Value,
}

/// The DAP text for a value that cannot be read, as the target's debugger prints it.
///
/// Recorded: lldb-dap 22 prints, for a C local optimized out at the line, `<error: error:
/// Couldn't materialize: couldn't get the value of variable base: variable not available` then
/// a second line `error: errored out in DoExecute, couldn't PrepareToExecuteJITExpression>`;
/// the second line would split the hit over two `output` events (the daemon would lose the
/// values after it), so only the first line's message is kept, as the contract's
/// `"<error: …>"`. Delve 1.20.2 prints `(unreadable could not find loclist entry at 0x1490 for
/// address 0x492685)`: the agent keeps that shape with its own reason.
#[must_use]
pub fn debugger_text(bin: &Binary, err: &PlanError) -> Value {
    let go = bin.language().ok() == Some(crate::debuginfo::Language::Go);
    if go {
        return Value::Text(format!("(unreadable {err})"));
    }
    match err {
        PlanError::Resolve(ResolveError::OptimizedOut { var, .. }) => Value::Error(format!(
            "couldn't get the value of variable {var}: variable not available"
        )),
        other => Value::Error(other.to_string()),
    }
}

/// One captured expression inside a plan.
#[derive(Debug, Clone)]
pub struct ValueDecoder {
    /// The expression as the user wrote it.
    pub expr: String,
    /// Not shown as a value (condition-only, a local, the stack).
    pub hidden: bool,
    pub role: Role,
    pub(crate) shape: Shape,
    pub(crate) dst: usize,
    /// Bytes the plan writes for this value. For fixed-size shapes this, not the event's
    /// per-value length, is what to decode: a value assembled from pieces is written by
    /// several emits, and the length records only the last one.
    pub(crate) size: usize,
    /// The hidden value whose one copy carries this value's bytes or pointer (see
    /// `plan::coalesce`): when that copy faulted, so did this value.
    pub(crate) carrier: Option<usize>,
    /// The plan's steps as text (`deref 8 +0`), shared by its values: a read fault names the
    /// step that failed.
    pub(crate) steps: std::sync::Arc<Vec<String>>,
}

/// A plan ready to load, with what is needed to decode its events.
#[derive(Debug, Clone)]
pub struct BuiltPlan {
    pub plan: Plan,
    pub values: Vec<ValueDecoder>,
    /// Locals asked for that are not captured, with the reason (optimized out, budget, …).
    pub local_errors: Vec<(String, String)>,
    /// Shown values that cannot be captured here ([`PlanError::is_per_value`]), by position.
    pub value_errors: Vec<ValueError>,
}

/// Default for [`PlanOptions::elem_cap`].
pub const DEFAULT_ELEM_CAP: u32 = 32;

/// Inputs that are not in the debug info.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// Only hits from this process are captured.
    pub tgid: u32,
    /// Runtime address − link address for `ET_DYN` objects (0 otherwise).
    pub load_bias: u64,
    /// Longest string captured, in bytes; longer ones are cut and marked truncated.
    pub string_cap: u32,
    /// Most elements of a slice, `Vec` or array copied (fewer if their bytes would pass
    /// `MAX_COPY_BYTES`); the rest are counted and shown as `...+N more`.
    pub elem_cap: u32,
    /// Events per second the probe may emit (0 = unlimited), and how many may come at once.
    pub rate_per_sec: u32,
    pub burst: u32,
}

/// What a value of a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Asked for: shown to the user.
    Shown,
    /// Read only for the in-kernel condition.
    Hidden,
    /// A local of the frame, for snapshots.
    Local,
    /// The user stack's return addresses, for stack traces (frame-pointer walk: Go).
    Stack,
    /// `rip`, `rsp`, `rbp` at the hit, for unwinding with CFI (C, C++, Rust).
    UnwindRegs,
    /// A slice of the stack above `rsp` (chunk `n` of [`UNWIND_CHUNK`] bytes), for the same.
    UnwindStack(u8),
}

/// Bytes per stack chunk copied for CFI unwinding. Separate chunks, so a chunk past the top of
/// the stack faults alone and the ones below still unwind.
pub const UNWIND_CHUNK: usize = 512;
/// Chunks copied: the unwinder sees `UNWIND_CHUNKS * UNWIND_CHUNK` bytes above `rsp`.
pub const UNWIND_CHUNKS: usize = 4;

/// Extra captures for breakpoint-mode metrics.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Locals (and parameters) to capture best effort; ones that cannot be are reported in
    /// [`BuiltPlan::local_errors`] instead.
    pub locals: Vec<String>,
    /// Capture the user stack: a frame-pointer walk in the kernel for Go (which always keeps
    /// frame pointers), registers plus stack slices unwound with CFI afterwards for the rest.
    pub stack: bool,
}

/// Most frames a stack capture keeps.
pub use crate::debuginfo::STACK_FRAMES;

/// Places the values in the event and their ops in the plan: each value's bytes at the next
/// 8-aligned offset (one inside a block at its offset there), the blocks' ops first (a value
/// reads its pointer back from one), then every value's. Returns the ops (destinations
/// absolute), each value's offset, and the bytes used.
fn layout(values: &[Lowered]) -> Result<(Vec<PlanOp>, Vec<usize>, usize), PlanError> {
    let mut dsts = vec![0usize; values.len()];
    let mut dst = 0usize;
    for (vi, v) in values.iter().enumerate() {
        if v.inside.is_some() {
            continue;
        }
        // A value with steps has 8 bytes at least: a fault writes its address there.
        let len = if v.ops.is_empty() {
            v.len
        } else {
            v.len.max(8)
        };
        if dst + len > EVENT_DATA_BYTES {
            return Err(PlanError::OverBudget {
                what: format!("{} bytes of values (at most {EVENT_DATA_BYTES})", dst + len),
            });
        }
        dsts[vi] = dst;
        dst = (dst + len + 7) & !7;
    }
    for (vi, v) in values.iter().enumerate() {
        if let Some((b, off)) = v.inside {
            dsts[vi] = dsts[b] + off;
        }
    }
    let order = values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.block)
        .chain(values.iter().enumerate().filter(|(_, v)| !v.block));
    let mut ops = Vec::new();
    for (vi, v) in order {
        for (k, o) in v.ops.iter().enumerate() {
            let mut o = *o;
            o.value = vi as u8;
            o.dst = match v.refs.iter().find(|(i, _, _)| *i == k) {
                Some(&(_, b, off)) => (dsts[b] + off) as u16,
                // Ops carry offsets relative to their value; EMIT_VAR's is past its header.
                None => (dsts[vi] + usize::from(o.dst)) as u16,
            };
            ops.push(o);
        }
    }
    Ok((ops, dsts, dst))
}

/// Builds the plan for `exprs` at `point`. Every expression must resolve, or nothing is built.
///
/// # Errors
/// Parse, scope, type, location or budget errors, each naming the expression.
pub fn build(
    bin: &Binary,
    point: &ProbePoint,
    exprs: &[String],
    condition: Option<&expr::Condition>,
    opts: PlanOptions,
) -> Result<BuiltPlan, PlanError> {
    build_with(
        bin,
        point,
        exprs,
        condition,
        &Extras::default(),
        opts,
        Reads::Coalesced,
    )
}

/// How a plan reads nearby memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Nearby reads through one pointer are one copy ([`coalesce`]).
    Coalesced,
    /// Every value reads its own bytes, which register forwarding may then replace one by one.
    /// The engine keeps this one, forwarded, where forwarding applies, else whichever reads
    /// memory fewer times ([`memory_reads`]).
    Plain,
}

/// Steps of `plan` that read the target's memory (each a `bpf_probe_read_user*`, the costly
/// part of a hit).
#[must_use]
pub fn memory_reads(plan: &Plan) -> usize {
    plan.active_ops()
        .iter()
        .filter(|o| {
            matches!(
                o.kind,
                op::DEREF | op::EMIT_MEM | op::EMIT_STR | op::EMIT_VAR
            )
        })
        .count()
}

/// [`build`], plus best-effort locals and the user stack, its reads as `reads` says.
///
/// # Errors
/// As [`build`]; locals that cannot be captured are not errors.
pub fn build_with(
    bin: &Binary,
    point: &ProbePoint,
    exprs: &[String],
    condition: Option<&expr::Condition>,
    extras: &Extras,
    opts: PlanOptions,
    reads: Reads,
) -> Result<BuiltPlan, PlanError> {
    // The condition reads a captured value: reuse a shown one, or capture it hidden.
    let mut all: Vec<(String, Role)> = exprs.iter().map(|e| (e.clone(), Role::Shown)).collect();
    if let Some(c) = condition {
        if !exprs.iter().any(|e| e.trim() == c.expr_text) {
            all.push((c.expr_text.clone(), Role::Hidden));
        }
    }
    // Go keeps frame pointers: the kernel walks them. Elsewhere, copy what CFI unwinding needs.
    let cfi = extras.stack && bin.language().ok() != Some(crate::debuginfo::Language::Go);
    // The stack is values too (registers and stack chunks for CFI unwinding, else one): every
    // value has its own slot in the event, and the eBPF program has MAX_VALUES of them, so more
    // would overwrite another value's slot (issue #12 point 5: refused, never corrupted).
    let stack_values = if cfi {
        1 + UNWIND_CHUNKS
    } else {
        usize::from(extras.stack)
    };
    if all.len() + stack_values > MAX_VALUES {
        return Err(PlanError::OverBudget {
            what: if stack_values == 0 {
                format!("{} expressions (at most {MAX_VALUES})", all.len())
            } else {
                format!(
                    "{} expressions and the stack ({stack_values} values) are {} values (at most {MAX_VALUES}, so at most {} expressions with the stack)",
                    all.len(),
                    all.len() + stack_values,
                    MAX_VALUES - stack_values
                )
            },
        });
    }
    let mut plan = Plan::empty();
    plan.tgid = opts.tgid;
    if bin.language().ok() == Some(crate::debuginfo::Language::Go) {
        plan.goid_offset = bin
            .go_goid_offset()
            .and_then(|o| u32::try_from(o).ok())
            .unwrap_or(0);
    }
    let mut lowered: Vec<(String, Role, Vec<PlanOp>, Shape, usize)> = Vec::new();
    let mut value_errors = Vec::new();
    for (index, (text, role)) in all.iter().enumerate() {
        match lower_value(bin, point, opts, text) {
            Ok((o, shape, len)) => lowered.push((text.clone(), *role, o, shape, len)),
            // One value lost at this point does not lose the others; the condition's must be
            // there (a filter on a value that cannot be read would silently drop every hit).
            Err(e)
                if *role == Role::Shown
                    && e.is_per_value()
                    && condition.is_none_or(|c| c.expr_text != text.trim()) =>
            {
                value_errors.push(ValueError {
                    index,
                    expr: text.clone(),
                    message: e.to_string(),
                    debugger: debugger_text(bin, &e),
                });
            }
            Err(e) => return Err(e),
        }
    }
    let mut local_errors = Vec::new();
    let stack_bytes = if !extras.stack {
        0
    } else if cfi {
        24 + UNWIND_CHUNKS * UNWIND_CHUNK
    } else {
        STACK_FRAMES * 8
    };
    let mut budget_ops: usize = lowered.iter().map(|l| l.2.len()).sum::<usize>();
    let mut budget_bytes: usize =
        lowered.iter().map(|l| (l.4 + 7) & !7).sum::<usize>() + stack_bytes;
    for name in &extras.locals {
        match lower_value(bin, point, opts, name) {
            Ok((o, shape, len)) => {
                let o = fold(o);
                let taken = lowered.len() + stack_values;
                let full = if taken >= MAX_VALUES {
                    Some(format!("at most {MAX_VALUES} values per hit, all taken"))
                } else if budget_ops + o.len() > MAX_OPS {
                    Some(format!(
                        "at most {MAX_OPS} plan steps per hit: it needs {}, {budget_ops} are taken",
                        o.len()
                    ))
                } else if budget_bytes + len > EVENT_DATA_BYTES {
                    Some(format!(
                        "at most {EVENT_DATA_BYTES} bytes per hit: it is {len}, {budget_bytes} are taken"
                    ))
                } else {
                    None
                };
                if let Some(limit) = full {
                    local_errors.push((
                        name.clone(),
                        format!(
                            "not captured: the per-hit budget is used up by the values before it ({limit}); name `{name}` in a logpoint of its own to capture it"
                        ),
                    ));
                    continue;
                }
                budget_ops += o.len();
                budget_bytes += (len + 7) & !7;
                lowered.push((name.clone(), Role::Local, o, shape, len));
            }
            Err(e) => local_errors.push((name.clone(), e.to_string())),
        }
    }
    if cfi {
        let regs = vec![
            mk(op::REG, pt_regs::RIP, 0, 0),
            mk(op::EMIT_ACC, 0, 8, 0),
            mk(op::REG, pt_regs::RSP, 0, 0),
            with_dst(mk(op::EMIT_ACC, 0, 8, 0), 8),
            mk(op::REG, pt_regs::RBP, 0, 0),
            with_dst(mk(op::EMIT_ACC, 0, 8, 0), 16),
        ];
        lowered.push((
            "<regs>".to_owned(),
            Role::UnwindRegs,
            regs,
            Shape::Stack,
            24,
        ));
        for k in 0..UNWIND_CHUNKS {
            let ops = vec![
                mk(op::REG, pt_regs::RSP, 0, (k * UNWIND_CHUNK) as i64),
                mk(op::EMIT_MEM, 0, UNWIND_CHUNK as u16, 0),
            ];
            lowered.push((
                format!("<stack{k}>"),
                Role::UnwindStack(k as u8),
                ops,
                Shape::Stack,
                UNWIND_CHUNK,
            ));
        }
    } else if extras.stack {
        // No ops: the program captures the stack once after the ops (Plan::stack).
        lowered.push((
            "<stack>".to_owned(),
            Role::Stack,
            Vec::new(),
            Shape::Stack,
            stack_bytes,
        ));
    }
    // The condition's value keeps its own reads: the kernel checks its flags, not a block's.
    let cond_vi = condition.and_then(|c| lowered.iter().position(|l| l.0.trim() == c.expr_text));
    let plain: Vec<Lowered> = lowered
        .iter()
        .enumerate()
        .map(|(vi, (_, role, o, _, len))| {
            let eligible = matches!(role, Role::Shown | Role::Local) && Some(vi) != cond_vi;
            Lowered::new(fold(o.clone()), *len, eligible)
        })
        .collect();
    let mut merged = plain.clone();
    if reads == Reads::Coalesced {
        coalesce::coalesce(&mut merged);
    }
    // Coalescing never adds ops, but a block's gaps may add bytes: without it if they overflow.
    let (mut ops, dsts, dst) = match layout(&merged) {
        Ok(l) => l,
        Err(_) => {
            merged = plain;
            layout(&merged)?
        }
    };
    let mut values = Vec::new();
    let blocks = merged.iter().skip(lowered.len());
    let all = lowered
        .into_iter()
        .map(|(text, role, _, shape, len)| (text, role, shape, len))
        .chain(blocks.enumerate().map(|(k, b)| {
            (
                format!("<read {k}>"),
                Role::Hidden,
                Shape::Opaque {
                    what: "a shared read".to_owned(),
                },
                b.len,
            )
        }));
    for (vi, (text, role, shape, len)) in all.enumerate() {
        if role == Role::Stack {
            plan.stack = detrix_common::StackCapture {
                dst: dsts[vi] as u16,
                len: len as u16,
                value: vi as u8,
                _pad: [0; 3],
            };
        }
        values.push(ValueDecoder {
            expr: text,
            hidden: role != Role::Shown,
            role,
            shape,
            dst: dsts[vi],
            size: len,
            carrier: merged[vi].carrier,
            steps: std::sync::Arc::default(),
        });
        if let Some(d) = plan.value_dst.get_mut(vi) {
            *d = dsts[vi] as u16;
        }
    }
    if ops.len() > MAX_OPS {
        return Err(PlanError::OverBudget {
            what: format!("{} plan steps (at most {MAX_OPS})", ops.len()),
        });
    }
    let mut room = Room {
        ops: Vec::new(),
        before: ops.len(),
        end: dst,
    };
    expand(
        &mut values,
        &mut room,
        Caps {
            string: opts.string_cap,
            elems: opts.elem_cap,
        },
    );
    let dst = room.end;
    ops.extend(room.ops);
    plan.ops[..ops.len()].copy_from_slice(&ops);
    plan.n_ops = ops.len() as u32;
    plan.n_values = values.len() as u32;
    plan.data_len = dst.min(EVENT_DATA_BYTES) as u32;
    if let Some(c) = condition {
        let vi = values
            .iter()
            .position(|v| v.expr.trim() == c.expr_text)
            .unwrap_or(values.len().saturating_sub(1));
        plan.cond = lower_condition(c, vi, &values[vi])?;
    }
    if opts.rate_per_sec > 0 {
        plan.rate_interval_ns = 1_000_000_000 / u64::from(opts.rate_per_sec);
        plan.rate_burst_ns = u64::from(opts.burst.max(1)) * plan.rate_interval_ns;
    }
    let steps = std::sync::Arc::new(
        describe_ops(&plan)
            .into_iter()
            .map(|t| {
                t.split_once(": ")
                    .map_or(t.clone(), |(_, op)| op.to_owned())
            })
            .collect::<Vec<_>>(),
    );
    for v in &mut values {
        v.steps = steps.clone();
    }
    debug_assert_eq!(plan.abi, PLAN_ABI);
    Ok(BuiltPlan {
        plan,
        values,
        local_errors,
        value_errors,
    })
}
