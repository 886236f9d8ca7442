//! Probe placement: among the instructions of the probe's basic block, pick one the kernel
//! emulates instead of single-stepping, where the plan provably reads the values the line
//! starts with.
//!
//! Why: a uprobe on an ordinary instruction costs an int3 trap *and* an out-of-line
//! single-step (~9 µs per hit on this machine kind), while on `push reg`, `nop`,
//! `call rel32` or a relative jump the kernel emulates the instruction (~0.55 µs)
//! (toolchain.md §8). It is the largest performance lever we have.
//!
//! Which instructions fire on the same executions? Those of the line's basic block
//! ([`crate::codegen::block`]): control enters it only at its first instruction and leaves
//! only after its last, so each of them runs exactly as often as the line's first one —
//! before the statement starts or after it. The block runs on across a call whose callee's
//! unwinding cannot land in the function (C, Go; in C++ and Rust per the call-site table) and
//! through an unconditional jump to code nothing else reaches; the proof then follows the
//! instructions in the order they run. In a function with a jump table (targets
//! unknown), only the statement's own row after its first instruction is used: a jump table
//! lands on the start of a row, never inside one.
//!
//! When no instruction of the block can take the probe (none is emulated, or none reads the
//! same values) and every way into the block is a relative jump or a conditional branch, the
//! probe goes on those branches instead ([`edges`]): each fires right before the block runs,
//! with the values it starts with, and a conditional one counts only when it goes there.
//!
//! Which of them read the same values? [`proof::prove`] follows the instructions between the
//! two and either proves every value the plan reads unchanged (or held by another register,
//! which the plan then reads) or says why not. The plan is built once, at the line's first
//! instruction; data flows one way: plan → place → forward, and placement never plans again.

mod edges;
mod proof;

pub use edges::{Edge, MAX_EDGES};

pub use proof::{CallAbi, Rules};

use detrix_common::Plan;
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::codegen::block::{self, CallFlow};
use crate::codegen::Function;
use crate::debuginfo::{Binary, LinkAddr, ProbePoint};

/// Most instructions looked at on each side of the line's first.
const WINDOW: usize = 256;
/// Most instructions looked at after the line's first with [`Scope::Statement`].
const STATEMENT_WINDOW: usize = 64;

/// How the kernel runs a probed instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// Emulated in the trap handler (push, nop, relative call/jmp/jcc).
    Emulated,
    /// Copied out of line and single-stepped.
    SingleStepped,
    /// Not decoded (no code bytes available).
    Unknown,
}

impl TrapKind {
    /// Estimated kernel cost per hit on this machine kind (toolchain.md §8, §8a).
    #[must_use]
    pub fn cost_ns(self) -> u64 {
        match self {
            TrapKind::Emulated => 800,
            TrapKind::SingleStepped | TrapKind::Unknown => 5_000,
        }
    }
}

/// Where a probe goes and why.
#[derive(Debug, Clone)]
pub struct Placement {
    pub chosen: LinkAddr,
    pub kind: TrapKind,
    /// One line per instruction looked at, plus the verdict: the `--explain` text.
    pub explain: Vec<String>,
    /// The emulated instructions of the block other than the line's first, each with its
    /// proof or refusal (empty when the line's first is emulated or placement is off).
    pub candidates: Vec<Candidate>,
    /// When not empty, the probe goes on each of these branches into the block instead of at
    /// `chosen` (the block's first instruction, where the plan reads what it reads at each of
    /// them): see [`edges`].
    pub edges: Vec<Edge>,
}

/// Whether the kernel refuses a uprobe on `i` at all: it rejects an ES, CS, SS or DS segment
/// prefix and `lock` (`is_prefix_bad` in arch/x86/kernel/uprobes.c), as in the `cs nopw`
/// padding compilers put before loop heads.
fn refused_by_kernel(i: &Instruction) -> bool {
    i.has_lock_prefix()
        || matches!(
            i.segment_prefix(),
            Register::ES | Register::CS | Register::SS | Register::DS
        )
}

fn trap_kind(i: &Instruction) -> TrapKind {
    if refused_by_kernel(i) {
        return TrapKind::SingleStepped;
    }
    let emulated = match i.mnemonic() {
        Mnemonic::Nop => true,
        Mnemonic::Push => i.op0_kind() == OpKind::Register && i.op0_register().size() == 8,
        _ => {
            i.is_call_near() && i.op0_kind() == OpKind::NearBranch64
                || i.is_jmp_short_or_near()
                || i.is_jcc_short_or_near()
        }
    };
    if emulated {
        TrapKind::Emulated
    } else {
        TrapKind::SingleStepped
    }
}

/// Which candidates placement considers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only instructions after the line's first, with every register read unchanged and no
    /// memory written in between (placement before the basic-block candidates).
    Statement,
    /// Every instruction of the basic block, before or after the statement's start.
    Block,
}

/// One emulated instruction of the block and whether the values can be read there.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub addr: LinkAddr,
    /// The instruction, AT&T syntax.
    pub text: String,
    /// The proof (`Ok`) or why not.
    pub verdict: Result<String, String>,
}

impl Candidate {
    /// `addr text: proven, …` / `addr text: refused, …` (for `resolve` and `--explain`).
    #[must_use]
    pub fn sentence(&self) -> String {
        match &self.verdict {
            Ok(p) => format!("{} {}: same values, {p}", self.addr, self.text),
            Err(e) => format!("{} {}: refused, {e}", self.addr, self.text),
        }
    }
}

/// Chooses the probe address for `point` among the emulated instructions of its basic block
/// where `plan` (built at `point`) provably reads the same values. Returns the placement and
/// the plan to run there (registers re-read where copies hold them).
#[must_use]
pub fn place(
    bin: &Binary,
    point: &ProbePoint,
    plan: &Plan,
    func: &Function,
    scope: Scope,
    abi: CallAbi,
    calls: &CallFlow,
) -> (Placement, Plan) {
    let (abi, calls) = if scope == Scope::Statement || abi == CallAbi::NoCalls {
        (CallAbi::NoCalls, &CallFlow::Ends)
    } else {
        (abi, calls)
    };
    let mut explain = Vec::new();
    let stay = |explain: Vec<String>, kind| Placement {
        chosen: point.addr,
        kind,
        explain,
        candidates: Vec::new(),
        edges: Vec::new(),
    };
    if bin
        .code(point.addr, point.func_end)
        .filter(|c| !c.is_empty())
        .is_none()
    {
        explain.push(format!(
            "{}: no code bytes for {}..{}; probe stays at the line's first instruction",
            point.addr, point.addr, point.func_end
        ));
        return (stay(explain, TrapKind::Unknown), *plan);
    }
    let flow = block::Flow::of(func, calls);
    let indirect = block::has_indirect_branch(func);
    // Statement-only placement (the comparison baseline) stays in straight-line code.
    let join = scope == Scope::Block && !indirect;
    let Some(mut b) = block::around(func, &flow, point.addr.0, WINDOW, join) else {
        explain.push(format!(
            "{}: not an instruction boundary of the function's decode; probe stays there",
            point.addr
        ));
        return (stay(explain, classify(bin, point)), *plan);
    };
    let instrs = &func.instrs;
    let first_kind = trap_kind(&instrs[b.probe()]);
    if scope == Scope::Statement {
        b.path.drain(..b.at);
        b.path.truncate(STATEMENT_WINDOW + 1);
        b.at = 0;
    }
    if indirect {
        b.path.drain(..b.at);
        b.at = 0;
        while b.path.len() > 1 && instrs[b.last()].ip() >= point.line_end.0 {
            b.path.pop();
        }
        explain.push(format!(
            "the function has an indirect jump (its targets are not known): only the statement's own row {}..{} is used",
            point.addr, point.line_end
        ));
    }
    let pieces: Vec<String> = b
        .pieces()
        .iter()
        .map(|&(f, l)| {
            format!(
                "{}..={}",
                LinkAddr(instrs[f].ip()),
                LinkAddr(instrs[l].ip())
            )
        })
        .collect();
    explain.push(format!(
        "basic block {}{}: {}; {}",
        pieces.join(" → "),
        if pieces.len() > 1 {
            " (joined at jumps to code only they reach)"
        } else {
            ""
        },
        block_start(func, &flow, calls, b.first()),
        block_end(func, &flow, calls, b.last()),
    ));
    let escape = block::frame_escape(func);
    let rules = match scope {
        Scope::Statement => Rules::Unchanged,
        Scope::Block => Rules::Tracked,
    };
    let mut candidates = Vec::new();
    // (distance from the line's first instruction, position in the path, plan there)
    let mut best: Option<(usize, usize, Plan)> = None;
    for (pos, &idx) in b.path.iter().enumerate() {
        let i = &instrs[idx];
        let addr = LinkAddr(i.ip());
        let text = proof::text(i);
        let kind = trap_kind(i);
        let verdict = if pos == b.at {
            match kind {
                TrapKind::Emulated => "the line's first instruction, emulated".to_owned(),
                _ => "the line's first instruction, single-stepped".to_owned(),
            }
        } else if refused_by_kernel(i) {
            "the kernel refuses a uprobe here (segment or lock prefix)".to_owned()
        } else if kind != TrapKind::Emulated {
            "single-stepped".to_owned()
        } else if first_kind == TrapKind::Emulated {
            "emulated (not needed)".to_owned()
        } else {
            let before = pos < b.at;
            // The instructions that run from the earlier of the two points to the later.
            let between: Vec<Instruction> = if before {
                b.path[pos..b.at].iter().map(|&k| instrs[k]).collect()
            } else {
                b.path[b.at..pos].iter().map(|&k| instrs[k]).collect()
            };
            let v = proof::prove(plan, &between, before, escape, rules, abi);
            let side = if before { "before" } else { "after" };
            let line = match &v {
                Ok((moved, p)) => {
                    let dist = pos.abs_diff(b.at);
                    // The nearest; at equal distance the one after the line's start.
                    if best.as_ref().is_none_or(|(d, j, _)| {
                        dist < *d || (dist == *d && pos > b.at && *j < b.at)
                    }) {
                        best = Some((dist, pos, *moved));
                    }
                    format!("emulated, {side} the line's start: same values, {p}")
                }
                Err(e) => format!("emulated, {side} the line's start: refused, {e}"),
            };
            candidates.push(Candidate {
                addr,
                text: text.clone(),
                verdict: v.map(|(_, p)| p),
            });
            line
        };
        explain.push(format!("{addr}  {text:<40} {verdict}"));
    }
    if first_kind == TrapKind::Emulated {
        explain.push(format!(
            "chose {}: the line's first instruction is emulated",
            point.addr
        ));
        return (
            Placement {
                chosen: point.addr,
                kind: TrapKind::Emulated,
                explain,
                candidates,
                edges: Vec::new(),
            },
            *plan,
        );
    }
    match best {
        Some((_, pos, moved)) => {
            let addr = LinkAddr(instrs[b.path[pos]].ip());
            explain.push(format!(
                "chose {addr}: emulated (~{} ns/hit) instead of {} at {} (~{} ns/hit); the values are proven the same there",
                TrapKind::Emulated.cost_ns(),
                text_of(first_kind),
                point.addr,
                first_kind.cost_ns()
            ));
            (
                Placement {
                    chosen: addr,
                    kind: TrapKind::Emulated,
                    explain,
                    candidates,
                    edges: Vec::new(),
                },
                moved,
            )
        }
        None => {
            let mut edges_refused = None;
            if join && first_kind == TrapKind::SingleStepped {
                match on_edges(bin, func, &flow, &b, plan, escape, rules, abi) {
                    Ok((edges, moved, proof)) => {
                        let chosen = LinkAddr(instrs[b.first()].ip());
                        let what = match (edges.len(), edges.iter().any(|e| e.call)) {
                            (1, true) => "call of the function",
                            (_, true) => "calls of the function",
                            (1, false) => "branch",
                            (_, false) => "branches",
                        };
                        explain.push(format!(
                            "chose the {} {what} into the block at {chosen} instead of {} at {} (~{} ns/hit): {}; each emulated (~{} ns/hit), together they fire once per run of the block, with its values{proof}",
                            edges.len(),
                            text_of(first_kind),
                            point.addr,
                            first_kind.cost_ns(),
                            edges.iter().map(Edge::sentence).collect::<Vec<_>>().join("; "),
                            TrapKind::Emulated.cost_ns(),
                        ));
                        return (
                            Placement {
                                chosen,
                                kind: TrapKind::Emulated,
                                explain,
                                candidates,
                                edges,
                            },
                            moved,
                        );
                    }
                    Err(why) => edges_refused = Some(why),
                }
            }
            // Told apart: no placement could do better in a block the kernel emulates nothing
            // of, while a refused candidate is a proof placement could not make. The verdict
            // (the line `resolve --coverage` shows) also says why the ways in could not take it.
            let ways_in = edges_refused.map_or_else(String::new, |why| {
                format!("; no probe on the ways into it: {why}")
            });
            explain.push(if candidates.is_empty() {
                format!(
                    "chose {}: the block has no instruction the kernel emulates (call, jmp, jcc, push, nop){ways_in}",
                    point.addr
                )
            } else {
                format!(
                    "chose {}: no emulated instruction of the block reads the same values{ways_in}",
                    point.addr
                )
            });
            (
                Placement {
                    chosen: point.addr,
                    kind: first_kind,
                    explain,
                    candidates,
                    edges: Vec::new(),
                },
                *plan,
            )
        }
    }
}

/// The branches into block `b` and the plan `plan` (built at the line's first instruction)
/// moved to the block's first instruction, where every one of them reads what it reads; with
/// the proof's sentence (empty when the line starts the block).
#[expect(
    clippy::too_many_arguments,
    reason = "the proof's inputs, as `place` holds them"
)]
fn on_edges(
    bin: &Binary,
    func: &Function,
    flow: &block::Flow,
    b: &block::Block,
    plan: &Plan,
    escape: Option<u64>,
    rules: Rules,
    abi: CallAbi,
) -> Result<(Vec<Edge>, Plan, String), String> {
    let (edges, fall) = if b.first() == 0 {
        if abi == CallAbi::Go {
            // `getitab` builds interface method tables at run time from the types' 4-byte
            // text offsets, which no scan for addresses finds.
            return Err("the block starts a Go function, which the runtime may call through a method table it builds from text offsets: its callers are not all known".to_owned());
        }
        let decode = |at: u64| instruction_at(bin, LinkAddr(at), LinkAddr(at.saturating_add(15)));
        (edges::callers(func, flow, bin.refs(), &decode)?, None)
    } else {
        let w = edges::into(func, flow, b.first())?;
        (w.edges, w.fall)
    };
    let between: Vec<Instruction> = b.path[..b.at].iter().map(|&k| func.instrs[k]).collect();
    let (mut moved, proof) = proof::prove(plan, &between, true, escape, rules, abi)?;
    if edges.iter().any(|e| e.call) {
        moved = proof::before_call(&moved)?;
    }
    let mut edges = edges;
    if let Some(k) = fall {
        let fallen = for_fall(
            func, flow, k, plan, &between, &moved, escape, rules, abi, FALL_DEPTH,
        )?;
        edges = merged(edges, fallen)?;
    }
    if edges.len() > MAX_EDGES {
        return Err(format!(
            "{} ways lead there (through the blocks that fall into it); at most {MAX_EDGES} probes stand for one",
            edges.len()
        ));
    }
    let proof = if between.is_empty() {
        String::new()
    } else {
        format!(" ({proof})")
    };
    Ok((edges, moved, proof))
}

/// How many blocks back [`for_fall`] follows a chain of blocks that each fall into the next.
const FALL_DEPTH: u32 = 3;

/// The probes for the way in that falls from instruction `k`: an emulated instruction of the
/// block ending there ([`in_falling_block`]) or, when that block has none where the plan reads
/// what `moved` reads, the ways into that block in turn — a block that always goes on into
/// this one runs exactly once per run of it, so its own ways in together fire once per such
/// run, and the plan proven through the whole block must be `moved` again. Up to `depth`
/// blocks back (a chain of `mov`/`lea` blocks between the joins of optimized code).
#[expect(
    clippy::too_many_arguments,
    reason = "the proof's inputs, as `place` holds them"
)]
fn for_fall(
    func: &Function,
    flow: &block::Flow,
    k: usize,
    plan: &Plan,
    between: &[Instruction],
    moved: &Plan,
    escape: Option<u64>,
    rules: Rules,
    abi: CallAbi,
    depth: u32,
) -> Result<Vec<Edge>, String> {
    let why = match in_falling_block(func, flow, k, plan, between, moved, escape, rules, abi) {
        Ok(edge) => return Ok(vec![edge]),
        Err(why) => why,
    };
    if depth <= 1 {
        return Err(why);
    }
    let instrs = &func.instrs;
    let pb = block::around(func, flow, instrs[k].ip(), WINDOW, true)
        .filter(|pb| pb.last() == k)
        .ok_or_else(|| why.clone())?;
    let mut run: Vec<Instruction> = pb.path.iter().map(|&j| instrs[j]).collect();
    run.extend_from_slice(between);
    let (there, _) = proof::prove(plan, &run, true, escape, rules, abi)
        .map_err(|e| format!("{why}, nor its ways in: {e}"))?;
    if there != *moved {
        return Err(format!(
            "{why}, nor its ways in: the plan there reads other places than the branches' probes"
        ));
    }
    let w =
        edges::into(func, flow, pb.first()).map_err(|e| format!("{why}, nor its ways in: {e}"))?;
    let mut out: Vec<Edge> = w
        .edges
        .into_iter()
        .map(|e| Edge {
            text: format!("{} (into the block that falls into it)", e.text),
            early: true,
            ..e
        })
        .collect();
    if let Some(k2) = w.fall {
        let more = for_fall(
            func,
            flow,
            k2,
            plan,
            &run,
            moved,
            escape,
            rules,
            abi,
            depth - 1,
        )
        .map_err(|e| format!("{why}, nor its ways in: {e}"))?;
        out = merged(out, more)?;
    }
    Ok(out)
}

/// `a` and `b` as one list of probes: a conditional branch into the block that also falls
/// into the block that falls into it goes there either way, so its two probes (opposite
/// conditions, one address) become one with no condition.
/// Any other two probes at one address would count one pass twice: refused.
fn merged(a: Vec<Edge>, b: Vec<Edge>) -> Result<Vec<Edge>, String> {
    let mut out = a;
    for e in b {
        match out.iter_mut().find(|o| o.addr == e.addr) {
            None => out.push(e),
            Some(o) if o.cc.is_some() && e.cc.is_some() && o.cc != e.cc && !o.call && !e.call => {
                o.cc = None;
                o.early |= e.early;
            }
            Some(o) => return Err(format!("two ways in are the one instruction at {}", o.addr)),
        }
    }
    Ok(out)
}

/// The probe for the way in that falls from instruction `k`: an emulated instruction of the
/// block ending at `k` (nearest the end first) where `plan` — through the rest of that block
/// and `between` (the block's instructions before the line) — reads what `moved` reads at the
/// branches into the block, so one plan serves every probe.
#[expect(
    clippy::too_many_arguments,
    reason = "the proof's inputs, as `place` holds them"
)]
fn in_falling_block(
    func: &Function,
    flow: &block::Flow,
    k: usize,
    plan: &Plan,
    between: &[Instruction],
    moved: &Plan,
    escape: Option<u64>,
    rules: Rules,
    abi: CallAbi,
) -> Result<Edge, String> {
    let instrs = &func.instrs;
    let end = LinkAddr(instrs[k].ip());
    let pb = block::around(func, flow, end.0, WINDOW, true)
        .filter(|pb| pb.last() == k)
        .ok_or_else(|| format!("the block that falls into it at {end} is not known"))?;
    for pos in (0..pb.path.len()).rev() {
        let i = &instrs[pb.path[pos]];
        if trap_kind(i) != TrapKind::Emulated || refused_by_kernel(i) {
            continue;
        }
        let mut run: Vec<Instruction> = pb.path[pos..].iter().map(|&j| instrs[j]).collect();
        run.extend_from_slice(between);
        if let Ok((there, _)) = proof::prove(plan, &run, true, escape, rules, abi) {
            if there == *moved {
                return Ok(Edge {
                    addr: LinkAddr(i.ip()),
                    text: format!("{} (in the block that falls into it)", proof::text(i)),
                    cc: None,
                    call: false,
                    early: true,
                });
            }
        }
    }
    Err(format!(
        "the block that falls into it (ending at {end}) has no emulated instruction where the plan reads what the branches' probes read"
    ))
}

/// Why the block starts where it does.
fn block_start(func: &Function, flow: &block::Flow, calls: &CallFlow, first: usize) -> String {
    let i = &func.instrs[first];
    let prev = first.checked_sub(1).map(|p| &func.instrs[p]);
    if first == 0 {
        "it starts at the function's entry".to_owned()
    } else if calls.is_pad(i.ip()) {
        format!(
            "the unwinder (or Go's recover) enters the function at {} (a landing pad)",
            LinkAddr(i.ip())
        )
    } else if flow.ways_in(first) > 1 {
        format!("more than one way leads to {}", LinkAddr(i.ip()))
    } else if let Some(c) = prev.filter(|p| block::is_call(p) && !calls.runs_on(p)) {
        format!("it starts after `{}`{}", proof::text(c), call_note(calls))
    } else if flow.ways_in(first) == 0 {
        format!("nothing in the function leads to {}", LinkAddr(i.ip()))
    } else if prev.is_some_and(|p| flow.only_next(first - 1) != Some(first) && !block::is_call(p)) {
        format!(
            "it starts where a jump lands ({} instructions are only joined in a function with no jump table)",
            LinkAddr(i.ip())
        )
    } else {
        format!("at most {WINDOW} instructions before the line")
    }
}

/// Why the block ends where it does.
fn block_end(func: &Function, flow: &block::Flow, calls: &CallFlow, last: usize) -> String {
    let i = &func.instrs[last];
    match flow.only_next(last) {
        _ if block::is_call(i) && !calls.runs_on(i) => {
            format!("it ends at `{}`{}", proof::text(i), call_note(calls))
        }
        None => format!("it ends at `{}`", proof::text(i)),
        Some(n) if flow.ways_in(n) > 1 => format!(
            "it ends before {}, which more than one way leads to",
            LinkAddr(func.instrs[n].ip())
        ),
        Some(_) => "it ends at the look-ahead limit or a jump it does not follow".to_owned(),
    }
}

/// Why a call ends a block.
fn call_note(calls: &CallFlow) -> &'static str {
    match calls {
        CallFlow::Table { .. } => " (its callee's unwinding lands in the function)",
        CallFlow::Ends => " (where a callee's unwinding goes is not known)",
        CallFlow::Returns => "",
    }
}

/// How the kernel will run the instruction at `point.addr` (no placement).
#[must_use]
pub fn classify(bin: &Binary, point: &ProbePoint) -> TrapKind {
    instruction_at(bin, point.addr, point.func_end).map_or(TrapKind::Unknown, |i| trap_kind(&i))
}

/// The instruction at `at`, decoded from the file's code up to `end`; `None` where the file
/// has no code bytes there.
fn instruction_at(bin: &Binary, at: LinkAddr, end: LinkAddr) -> Option<Instruction> {
    let code = bin.code(at, end).filter(|c| !c.is_empty())?;
    Some(Decoder::with_ip(64, code, at.0, DecoderOptions::NONE).decode())
}

fn text_of(k: TrapKind) -> &'static str {
    match k {
        TrapKind::Emulated => "an emulated instruction",
        TrapKind::SingleStepped => "a single-stepped instruction",
        TrapKind::Unknown => "an undecoded instruction",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(64, bytes, 0x1000, DecoderOptions::NONE).decode()
    }

    /// The probes standing for the way that falls into the block at `b_addr`, for a plan
    /// reading `%edi` there (the line at the block's first instruction).
    fn fall_ways(code: &[u8], b_addr: u64, reads: u8) -> Result<Vec<Edge>, String> {
        use detrix_common::{op, PlanOp};
        let func = Function::decode(code, 0x1000);
        let flow = block::Flow::of(&func, &CallFlow::Returns);
        let first = func
            .instrs
            .iter()
            .position(|i| i.ip() == b_addr)
            .expect("an instruction there");
        let w = edges::into(&func, &flow, first)?;
        let k = w.fall.expect("a block falls into it");
        let mut plan = Plan::empty();
        plan.ops[0] = PlanOp::new(op::REG, reads, 0, 0);
        plan.ops[1] = PlanOp::new(op::EMIT_ACC, 0, 4, 0);
        plan.n_ops = 2;
        let fallen = for_fall(
            &func,
            &flow,
            k,
            &plan,
            &[],
            &plan,
            None,
            Rules::Tracked,
            CallAbi::NoCalls,
            FALL_DEPTH,
        )?;
        merged(w.edges, fallen)
    }

    #[test]
    fn a_block_falling_in_with_nothing_emulated_is_stood_for_by_its_own_ways_in() {
        // 0x1000 test %edi,%edi / 0x1002 jne 0x1009 / 0x1004 mov $1,%ecx / 0x1009 mov %edi,%eax /
        // 0x100b ret. The block at 0x1009 (nothing emulated) is reached by the jne taken and by
        // the mov's block (nothing emulated either), which only the jne not taken reaches: so
        // the jne goes there either way — one probe, no condition.
        let code = [0x85, 0xff, 0x75, 0x05, 0xb9, 1, 0, 0, 0, 0x89, 0xf8, 0xc3];
        let e = fall_ways(&code, 0x1009, detrix_common::pt_regs::RDI).expect("the jne");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].addr, e[0].cc, e[0].early),
            (LinkAddr(0x1002), None, true)
        );
        // A plan reading %ecx, which the falling block writes: its ways in read another value.
        let e = fall_ways(&code, 0x1009, detrix_common::pt_regs::RCX).expect_err("ecx written");
        assert!(e.contains("nor its ways in"), "{e}");
    }

    #[test]
    fn a_chain_of_falling_blocks_is_followed_to_its_branches() {
        // 0x1000 cmp $3,%esi / 0x1003 jne 0x100d / 0x1005 test %edi,%edi / 0x1007 je 0x100b /
        // 0x1009 mov %esi,%ecx / 0x100b mov %esi,%edx / 0x100d mov %edi,%eax / 0x100f ret.
        // The join at 0x100d: the jne taken, and the fall from 0x100b — itself a join of the je
        // taken and the fall from 0x1009, which only the je not taken reaches. Two blocks back,
        // the je goes to the join either way (one probe, no condition); the jne when taken.
        let code = [
            0x83, 0xfe, 0x03, 0x75, 0x08, 0x85, 0xff, 0x74, 0x02, 0x89, 0xf1, 0x89, 0xf2, 0x89,
            0xf8, 0xc3,
        ];
        let e = fall_ways(&code, 0x100d, detrix_common::pt_regs::RDI).expect("jne, je");
        let got: Vec<_> = e.iter().map(|e| (e.addr, e.cc)).collect();
        assert_eq!(
            got,
            [(LinkAddr(0x1003), Some(5)), (LinkAddr(0x1007), None)],
            "{e:?}"
        );
    }

    #[test]
    fn classifies_what_the_kernel_emulates() {
        assert_eq!(trap_kind(&decode(&[0x55])), TrapKind::Emulated, "push %rbp");
        assert_eq!(
            trap_kind(&decode(&[0x41, 0x54])),
            TrapKind::Emulated,
            "push %r12"
        );
        assert_eq!(
            trap_kind(&decode(&[0x0f, 0x1f, 0x44, 0x00, 0x00])),
            TrapKind::Emulated,
            "nopl"
        );
        assert_eq!(
            trap_kind(&decode(&[0xe8, 0, 0, 0, 0])),
            TrapKind::Emulated,
            "call rel32"
        );
        assert_eq!(
            trap_kind(&decode(&[0x74, 0x05])),
            TrapKind::Emulated,
            "je rel8"
        );
        assert_eq!(
            trap_kind(&decode(&[0x48, 0x8b, 0x45, 0xe8])),
            TrapKind::SingleStepped,
            "mov -0x18(%rbp),%rax"
        );
        assert_eq!(
            trap_kind(&decode(&[0xff, 0x75, 0xe8])),
            TrapKind::SingleStepped,
            "push mem"
        );
        let padding = decode(&[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0]);
        assert!(refused_by_kernel(&padding), "cs nopw: no uprobe at all");
        assert_ne!(trap_kind(&padding), TrapKind::Emulated);
        assert!(!refused_by_kernel(&decode(&[0x0f, 0x1f, 0x44, 0x00, 0x00])));
        assert_eq!(
            trap_kind(&decode(&[0xff, 0xd0])),
            TrapKind::SingleStepped,
            "call *%rax"
        );
    }
}
