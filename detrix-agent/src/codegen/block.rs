//! The block around a probe's instruction — the instructions that run exactly as often as
//! it — and whether a function lets the address of its stack frame escape.
//!
//! Why: every instruction of a block runs exactly as often as every other (control enters
//! only at its first instruction and leaves only after its last), so a probe anywhere in it
//! fires on the same executions as one on the line's first instruction; placement may pick
//! any of them whose values it can prove (`crate::place`). Whether a call ends a block is the
//! caller's [`CallFlow`]: in C and Go nothing lands in a function when a callee unwinds (no
//! landing pads), so a call returns or the function's run ends there, as with `exit`; in C++
//! and Rust the function's call-site table ([`crate::debuginfo::lsda`]) says it per call — a
//! call whose callee's unwinding may land in a `catch` and go on in the function ends the
//! block; one whose unwinding leaves the frame, ends the process or only runs drops on its way
//! out does not; and every landing pad starts one (the unwinder enters there, as a branch
//! would). A system call or an undecodable instruction always ends a block.
//!
//! A block is a path, not a range: where control goes from one instruction only to another
//! and reaches that one only from it (an unconditional jump to code nothing else reaches, as
//! unoptimized Rust ends every call with), the two run equally often, and the path goes on
//! there ([`Flow`]). Only in a function whose every way in is known: an indirect jump may land
//! anywhere unless its jump table was recovered ([`super::jumptable`]) or it jumps through a
//! GOT slot (a tail call: to a function's start), so there the block stays straight-line code.

use std::collections::HashSet;

use iced_x86::{FlowControl, Instruction, Mnemonic, OpKind, Register};

use super::{branch, Branch, Function};
use crate::debuginfo::lsda::{CallSites, Unwind};

/// The instructions that run exactly as often as a probe's, in the order they run, as
/// indices into [`Function::instrs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub path: Vec<usize>,
    /// Where the probe's instruction is in `path`.
    pub at: usize,
}

impl Block {
    /// The probe's instruction.
    #[must_use]
    pub fn probe(&self) -> usize {
        self.path[self.at]
    }

    /// First instruction.
    #[must_use]
    pub fn first(&self) -> usize {
        self.path[0]
    }

    /// Last instruction (the one that may branch, call or return).
    #[must_use]
    pub fn last(&self) -> usize {
        self.path[self.path.len() - 1]
    }

    /// The straight-line pieces of the path, `(first, last)` each, in the order they run.
    #[must_use]
    pub fn pieces(&self) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for &i in &self.path {
            match out.last_mut() {
                Some((_, l)) if *l + 1 == i => *l = i,
                _ => out.push((i, i)),
            }
        }
        out
    }
}

/// Whether control always goes on to the next instruction (no branch, call, return, system
/// call or trap).
#[must_use]
pub fn falls_through(i: &Instruction) -> bool {
    i.flow_control() == FlowControl::Next
        && !i.is_invalid()
        && !matches!(
            i.mnemonic(),
            Mnemonic::Syscall
                | Mnemonic::Sysenter
                | Mnemonic::Int
                | Mnemonic::Int1
                | Mnemonic::Into
        )
}

/// Whether `i` is a call (direct or not).
#[must_use]
pub fn is_call(i: &Instruction) -> bool {
    matches!(
        i.flow_control(),
        FlowControl::Call | FlowControl::IndirectCall
    ) && !matches!(i.mnemonic(), Mnemonic::Syscall | Mnemonic::Sysenter)
}

/// Which calls a block runs on across, and where the unwinder enters the function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CallFlow {
    /// Every call ends a block (nothing is known about where a callee's unwinding goes).
    #[default]
    Ends,
    /// Every call returns, or the function's run ends in it (no landing pads: C, Go).
    Returns,
    /// From the function's call-site table: these calls (by address) end a block, their
    /// callees' unwinding landing in the function; every other call returns or ends the run.
    Table {
        ends: HashSet<u64>,
        /// The landing pads: the unwinder enters the function there.
        pads: HashSet<u64>,
    },
}

impl CallFlow {
    /// The flow of `func` from the call-site tables of the code it spans (`tables`: one per
    /// FDE, a cold part has its own): a call ends a block when its callee's unwinding lands in
    /// a landing pad that may catch (and go on in the function), or no table covers the call.
    /// A call whose unwinding leaves the frame, ends the process, or lands in a pad that only
    /// runs cleanups does not: a cleanup-only pad (action 0) resumes the unwinding when its
    /// drops are done (`_Unwind_Resume`; Rust's cleanup blocks can only end so, as C++'s do),
    /// so the function's run ends there as it would with no pad at all.
    #[must_use]
    pub fn from_tables(func: &Function, tables: &[CallSites]) -> Self {
        let ends = func
            .instrs
            .iter()
            .filter(|i| is_call(i))
            .filter(|i| {
                let ret = i.next_ip();
                let ip = ret.wrapping_sub(1);
                let unwind = tables
                    .iter()
                    .find(|t| t.func_start <= ip && ip < t.func_end)
                    .map_or(Unwind::Unknown, |t| t.unwind_at(ret));
                matches!(
                    unwind,
                    Unwind::Lands {
                        cleanup_only: false,
                        ..
                    } | Unwind::Unknown
                )
            })
            .map(Instruction::ip)
            .collect();
        CallFlow::Table {
            ends,
            pads: tables.iter().flat_map(CallSites::landing_pads).collect(),
        }
    }

    /// Whether control always goes on to the instruction after the call `i` once it returns.
    #[must_use]
    pub fn runs_on(&self, i: &Instruction) -> bool {
        match self {
            CallFlow::Ends => false,
            CallFlow::Returns => true,
            CallFlow::Table { ends, .. } => !ends.contains(&i.ip()),
        }
    }

    /// Where the unwinder enters the function (block starts no branch names).
    #[must_use]
    pub fn pads(&self) -> Option<&HashSet<u64>> {
        match self {
            CallFlow::Table { pads, .. } => Some(pads),
            _ => None,
        }
    }

    /// Whether the function may be entered at `a` by the unwinder.
    #[must_use]
    pub fn is_pad(&self, a: u64) -> bool {
        self.pads().is_some_and(|p| p.contains(&a))
    }
}

/// How control moves between a function's instructions, for joining them into blocks.
#[derive(Debug, Clone, Default)]
pub struct Flow {
    /// Per instruction: where control always goes next (`None`: more than one place, out of
    /// the function, or a call whose callee's unwinding lands in the function).
    only_next: Vec<Option<usize>>,
    /// Per instruction: how many ways lead there (instructions, the function's entry, the
    /// unwinder at a landing pad, a call into the function).
    ways_in: Vec<u32>,
    /// Per instruction with one way in, when that way is an instruction: that instruction.
    only_from: Vec<Option<usize>>,
    /// Whether every way into every instruction is known: no indirect jump (a jump table lands
    /// where the code does not say) and no jump into the middle of a decoded instruction.
    known: bool,
}

impl Flow {
    /// The flow of `func`, with `calls` saying which calls go on to the next instruction and
    /// where landing pads are.
    #[must_use]
    pub fn of(func: &Function, calls: &CallFlow) -> Self {
        let instrs = &func.instrs;
        let n = instrs.len();
        let mut f = Flow {
            only_next: vec![None; n],
            ways_in: vec![0; n],
            only_from: vec![None; n],
            known: !has_indirect_branch(func),
        };
        let lo = instrs.first().map_or(0, Instruction::ip);
        let hi = instrs.last().map_or(0, Instruction::next_ip);
        let inside = |a: u64| a >= lo && a < hi;
        let index = |a: u64| instrs.binary_search_by_key(&a, Instruction::ip).ok();
        // Where a direct branch or call lands inside the function: `Err` when not on a boundary.
        let target = |a: u64| {
            if inside(a) {
                index(a).ok_or(()).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut entries: Vec<Result<Option<usize>, ()>> = vec![Ok((n > 0).then_some(0))];
        entries.extend(calls.pads().into_iter().flatten().map(|&p| target(p)));
        for (k, i) in instrs.iter().enumerate() {
            let next = (k + 1 < n).then_some(k + 1);
            if is_call(i) && i.op0_kind() == OpKind::NearBranch64 {
                entries.push(target(i.near_branch_target()));
            }
            let (to, only): (Vec<Option<usize>>, bool) = match i.flow_control() {
                FlowControl::Return => (Vec::new(), false),
                // A jump table's targets are ways in; an unknown jump makes `known` false.
                FlowControl::IndirectBranch => (
                    func.table(i)
                        .unwrap_or_default()
                        .iter()
                        .map(|&t| index(t))
                        .collect(),
                    false,
                ),
                FlowControl::UnconditionalBranch => match branch(i) {
                    Branch::Direct(t) => match target(t) {
                        Ok(j) => (vec![j], true),
                        Err(()) => {
                            f.known = false;
                            (Vec::new(), false)
                        }
                    },
                    _ => (Vec::new(), false),
                },
                FlowControl::ConditionalBranch => {
                    let t = match branch(i) {
                        Branch::Direct(t) => target(t).unwrap_or_else(|()| {
                            f.known = false;
                            None
                        }),
                        _ => None,
                    };
                    if t.is_some() && t == next {
                        (vec![next], true)
                    } else {
                        (vec![t, next], false)
                    }
                }
                _ if falls_through(i) || (is_call(i) && calls.runs_on(i)) => (vec![next], true),
                // A call whose unwinding may land elsewhere, a system call, a trap: it may go on.
                _ => (vec![next], false),
            };
            if only {
                f.only_next[k] = to.first().copied().flatten();
            }
            for t in to.into_iter().flatten() {
                f.way_in(t, Some(k));
            }
        }
        for e in entries {
            match e {
                Ok(Some(t)) => f.way_in(t, None),
                Ok(None) => {}
                Err(()) => f.known = false,
            }
        }
        f
    }

    fn way_in(&mut self, to: usize, from: Option<usize>) {
        self.ways_in[to] += 1;
        self.only_from[to] = if self.ways_in[to] == 1 { from } else { None };
    }

    /// How many ways lead to instruction `k`.
    #[must_use]
    pub fn ways_in(&self, k: usize) -> u32 {
        self.ways_in.get(k).copied().unwrap_or(0)
    }

    /// Whether every way into every instruction is known (see the field).
    #[must_use]
    pub fn known(&self) -> bool {
        self.known
    }

    /// The one instruction control reaches `k` from, when there is exactly one way in and it
    /// is an instruction.
    #[must_use]
    pub fn only_from(&self, k: usize) -> Option<usize> {
        self.only_from.get(k).copied().flatten()
    }

    /// Where control always goes after instruction `k`, if one place.
    #[must_use]
    pub fn only_next(&self, k: usize) -> Option<usize> {
        self.only_next.get(k).copied().flatten()
    }

    /// Whether control goes from `from` only to `to`, and reaches `to` only from `from`: then
    /// the two run exactly as often as each other.
    fn joined(&self, from: usize, to: usize) -> bool {
        self.only_next(from) == Some(to) && self.only_from.get(to).copied().flatten() == Some(from)
    }
}

/// The block holding the instruction at `at`, at most `limit` instructions to each side of
/// it; `None` when `at` is not an instruction boundary of the decode. Without `join` it is
/// the straight-line code around `at`; with it (and every way in known), the path also goes on
/// through a jump to code nothing else reaches, and back from code only a jump reaches.
#[must_use]
pub fn around(func: &Function, flow: &Flow, at: u64, limit: usize, join: bool) -> Option<Block> {
    let idx = func
        .instrs
        .binary_search_by_key(&at, Instruction::ip)
        .ok()?;
    let join = join && flow.known;
    let step = |from: usize, to: usize| flow.joined(from, to) && (join || to == from + 1);
    let mut seen = HashSet::from([idx]);
    let mut after = Vec::new();
    let mut cur = idx;
    while after.len() < limit {
        match flow.only_next(cur) {
            Some(n) if step(cur, n) && seen.insert(n) => {
                after.push(n);
                cur = n;
            }
            _ => break,
        }
    }
    let mut before = Vec::new();
    cur = idx;
    while before.len() < limit {
        match flow.only_from.get(cur).copied().flatten() {
            Some(p) if step(p, cur) && seen.insert(p) => {
                before.push(p);
                cur = p;
            }
            _ => break,
        }
    }
    let at_pos = before.len();
    before.reverse();
    before.push(idx);
    before.extend(after);
    Some(Block {
        path: before,
        at: at_pos,
    })
}

/// Whether the function has a branch whose target the code does not say (an indirect jump
/// with no recovered table): it may land anywhere, so no block boundary is known.
#[must_use]
pub fn has_indirect_branch(func: &Function) -> bool {
    func.instrs.iter().any(|i| func.unknown_branch(i))
}

fn is_frame(r: Register) -> bool {
    matches!(r.full_register(), Register::RSP | Register::RBP)
}

/// The first instruction that puts an address inside the function's stack frame where other
/// code could use it (`lea rax,[rbp-0x20]`, `mov rdi,rsp`, a store of `rsp`), or `None` when
/// no stack slot's address ever leaves the frame registers. Moving the frame registers
/// themselves (`mov rbp,rsp`, `sub rsp,…`, `push rbp`, saving the caller's `rbp` in a slot,
/// comparing `rsp` with the stack limit) is not an escape.
#[must_use]
pub fn frame_escape(func: &Function) -> Option<u64> {
    func.instrs.iter().find(|i| escapes(i)).map(Instruction::ip)
}

fn escapes(i: &Instruction) -> bool {
    let dst_reg = (i.op_count() > 0 && i.op0_kind() == OpKind::Register).then(|| i.op0_register());
    if i.mnemonic() == Mnemonic::Lea {
        return is_frame(i.memory_base()) && dst_reg.is_some_and(|d| !is_frame(d));
    }
    if matches!(
        i.mnemonic(),
        Mnemonic::Push | Mnemonic::Cmp | Mnemonic::Test
    ) {
        return false;
    }
    let frame_source =
        (1..i.op_count()).any(|k| i.op_kind(k) == OpKind::Register && is_frame(i.op_register(k)));
    if !frame_source {
        return false;
    }
    match dst_reg {
        Some(d) => !is_frame(d),
        // A store: of `rsp` always an escape; of `rbp`, the frame-pointer save of a prologue.
        None => (1..i.op_count()).any(|k| {
            i.op_kind(k) == OpKind::Register && i.op_register(k).full_register() == Register::RSP
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The path of the block around `at`, as addresses.
    fn path(f: &Function, calls: &CallFlow, at: u64, join: bool) -> Vec<u64> {
        let flow = Flow::of(f, calls);
        let b = around(f, &flow, at, 64, join).expect("block");
        assert_eq!(b.path[b.at], b.probe());
        assert_eq!(f.instrs[b.probe()].ip(), at);
        b.path.iter().map(|&i| f.instrs[i].ip()).collect()
    }

    #[test]
    fn a_block_ends_at_branches_calls_and_targets() {
        // 0x1000 nop / 0x1001 call 0x2006 / 0x1006 nop / 0x1007 nop / 0x1008 jz 0x1007 /
        // 0x100a ret
        let code = [0x90, 0xe8, 0, 0x10, 0, 0, 0x90, 0x90, 0x74, 0xfd, 0xc3];
        let f = Function::decode(&code, 0x1000);
        let ends = &CallFlow::Ends;
        assert_eq!(
            path(&f, ends, 0x1000, true),
            [0x1000, 0x1001],
            "ends at the call"
        );
        assert_eq!(
            path(&f, ends, 0x1006, true),
            [0x1006],
            "0x1007 is a branch target: a new block"
        );
        assert_eq!(path(&f, ends, 0x1008, true), [0x1007, 0x1008]);
        let flow = Flow::of(&f, ends);
        assert!(
            around(&f, &flow, 0x1002, 64, true).is_none(),
            "not a boundary"
        );
        assert_eq!(
            path(&f, &CallFlow::Returns, 0x1000, true),
            [0x1000, 0x1001, 0x1006],
            "where calls return, the call does not end it"
        );
    }

    /// An unconditional jump to code nothing else reaches joins the two pieces (the `call;
    /// jmp` of unoptimized Rust); a target two ways reach, or a jump table, does not.
    #[test]
    fn a_jump_to_code_only_it_reaches_joins_the_pieces() {
        // 0x1000 nop / 0x1001 jmp 0x1006 / 0x1003 nop / 0x1004 jmp 0x1008 / 0x1006 nop /
        // 0x1007 nop / 0x1008 nop / 0x1009 ret
        let code = [0x90, 0xeb, 0x03, 0x90, 0xeb, 0x02, 0x90, 0x90, 0x90, 0xc3];
        let f = Function::decode(&code, 0x1000);
        let ends = &CallFlow::Ends;
        assert_eq!(
            path(&f, ends, 0x1006, true),
            [0x1000, 0x1001, 0x1006, 0x1007],
            "back through the jump that alone reaches 0x1006; 0x1008 is reached two ways"
        );
        assert_eq!(
            path(&f, ends, 0x1006, false),
            [0x1006, 0x1007],
            "not joined"
        );
        assert_eq!(
            path(&f, ends, 0x1003, true),
            [0x1003, 0x1004],
            "0x1003 follows a jump: no way in, nothing before it"
        );
        assert_eq!(path(&f, ends, 0x1008, true), [0x1008, 0x1009]);
        // The same with an indirect jump appended: no way in is known, nothing is joined.
        let mut code = code.to_vec();
        code.extend_from_slice(&[0xff, 0xe0]);
        let f = Function::decode(&code, 0x1000);
        assert_eq!(path(&f, ends, 0x1006, true), [0x1006, 0x1007]);
    }

    /// The call-site table decides per call: a call whose unwinding lands in the function ends
    /// the block, one whose unwinding leaves the frame does not, and a landing pad starts one.
    #[test]
    fn the_call_site_table_decides_which_calls_end_a_block() {
        use crate::debuginfo::lsda::CallSite;
        // 0x1000 nop / 0x1001 call 0x2006 / 0x1006 nop / 0x1007 call 0x200c / 0x100c nop /
        // 0x100d ret
        let code = [
            0x90, 0xe8, 0, 0x10, 0, 0, 0x90, 0xe8, 0, 0x10, 0, 0, 0x90, 0xc3,
        ];
        let f = Function::decode(&code, 0x1000);
        let site = |start, end, landing_pad, action| CallSite {
            start,
            end,
            landing_pad,
            action,
        };
        // The first call leaves the frame when it unwinds, the second lands at 0x100d in a pad
        // that may catch (action 1).
        let mut sites = CallSites {
            func_start: 0x1000,
            func_end: 0x100e,
            sites: Some(vec![
                site(0x1001, 0x1006, None, 0),
                site(0x1007, 0x100c, Some(0x100d), 1),
            ]),
        };
        // A pad that only runs cleanups (action 0) resumes the unwinding: the frame is left.
        let mut cleanup = sites.clone();
        if let Some(v) = cleanup.sites.as_mut() {
            v[1].action = 0;
        }
        let cleanup = CallFlow::from_tables(&f, &[cleanup]);
        assert_eq!(
            cleanup,
            CallFlow::Table {
                ends: HashSet::new(),
                pads: HashSet::from([0x100d])
            }
        );
        // A call no table covers ends the block.
        sites.func_end = 0x1007;
        assert_eq!(
            CallFlow::from_tables(&f, std::slice::from_ref(&sites)),
            CallFlow::Table {
                ends: HashSet::from([0x1007]),
                pads: HashSet::from([0x100d])
            }
        );
        sites.func_end = 0x100e;
        let flow = CallFlow::from_tables(&f, &[sites]);
        assert_eq!(
            flow,
            CallFlow::Table {
                ends: HashSet::from([0x1007]),
                pads: HashSet::from([0x100d])
            }
        );
        assert_eq!(
            path(&f, &flow, 0x1000, true),
            [0x1000, 0x1001, 0x1006, 0x1007]
        );
        assert_eq!(
            path(&f, &flow, 0x100c, true),
            [0x100c],
            "starts after the landing call, ends before the pad"
        );
        // No LSDA: no call lands anywhere.
        let none = CallSites {
            func_start: 0x1000,
            func_end: 0x100e,
            sites: None,
        };
        assert_eq!(
            path(&f, &CallFlow::from_tables(&f, &[none]), 0x1000, true),
            [0x1000, 0x1001, 0x1006, 0x1007, 0x100c, 0x100d]
        );
    }

    #[test]
    fn what_lets_the_frame_escape() {
        let one = |b: &[u8]| escapes(&Function::decode(b, 0x1000).instrs[0]);
        assert!(one(&[0x48, 0x8d, 0x45, 0xe0]), "lea -0x20(%rbp),%rax");
        assert!(one(&[0x48, 0x89, 0xe7]), "mov %rsp,%rdi");
        assert!(one(&[0x48, 0x89, 0x64, 0x24, 0x08]), "mov %rsp,8(%rsp)");
        assert!(!one(&[0x48, 0x89, 0xe5]), "mov %rsp,%rbp");
        assert!(!one(&[0x55]), "push %rbp");
        assert!(!one(&[0x48, 0x83, 0xec, 0x20]), "sub $0x20,%rsp");
        assert!(!one(&[0x48, 0x89, 0x6c, 0x24, 0x18]), "mov %rbp,0x18(%rsp)");
        assert!(!one(&[0x48, 0x8b, 0x45, 0xe8]), "mov -0x18(%rbp),%rax");
        assert!(!one(&[0x49, 0x3b, 0x66, 0x10]), "cmp 0x10(%r14),%rsp");
    }
}
