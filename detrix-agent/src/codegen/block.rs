//! The straight-line block around a probe's instruction, and whether a function lets the
//! address of its stack frame escape.
//!
//! Why: every instruction of a block runs exactly as often as every other (control enters
//! only at its first instruction and leaves only after its last), so a probe anywhere in it
//! fires on the same executions as one on the line's first instruction; placement may pick
//! any of them whose values it can prove (`crate::place`). A call ends a block unless the
//! caller says calls return (C and Go: no landing pads): in C++ and Rust a callee that
//! unwinds would make the two probes see different executions, and code right after a call
//! that never returns (`_Unwind_Resume`) may be a landing pad the unwinder enters. A system
//! call or an undecodable instruction always ends a block.

use std::collections::HashSet;

use iced_x86::{FlowControl, Instruction, Mnemonic, OpKind, Register};

use super::{branch, Branch, Function};

/// The block around one instruction, as indices into [`Function::instrs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// First instruction.
    pub first: usize,
    /// The probe's instruction.
    pub at: usize,
    /// Last instruction (the one that may branch, call or return).
    pub last: usize,
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

/// The block holding the instruction at `at`, at most `limit` instructions to each side of
/// it; `None` when `at` is not an instruction boundary of the decode. `targets` are the
/// function's direct branch targets; with `calls_return`, a call does not end the block.
#[must_use]
pub fn around(
    func: &Function,
    at: u64,
    targets: &HashSet<u64>,
    limit: usize,
    calls_return: bool,
) -> Option<Block> {
    let falls_through = |i: &Instruction| falls_through(i) || (calls_return && is_call(i));
    let instrs = &func.instrs;
    let idx = instrs.binary_search_by_key(&at, Instruction::ip).ok()?;
    let mut first = idx;
    while first > 0
        && idx - first < limit
        && !targets.contains(&instrs[first].ip())
        && falls_through(&instrs[first - 1])
    {
        first -= 1;
    }
    let mut last = idx;
    while last + 1 < instrs.len()
        && last - idx < limit
        && falls_through(&instrs[last])
        && !targets.contains(&instrs[last + 1].ip())
    {
        last += 1;
    }
    Some(Block {
        first,
        at: idx,
        last,
    })
}

/// Whether the function has a branch whose target the code does not say (a jump table):
/// it may land anywhere, so no block boundary is known.
#[must_use]
pub fn has_indirect_branch(func: &Function) -> bool {
    func.instrs.iter().any(|i| branch(i) == Branch::Unknown)
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

    #[test]
    fn a_block_ends_at_branches_calls_and_targets() {
        // 0x1000 nop / 0x1001 call 0x1006 / 0x1006 nop / 0x1007 nop / 0x1008 jz 0x1007 /
        // 0x100a ret
        let code = [0x90, 0xe8, 0, 0, 0, 0, 0x90, 0x90, 0x74, 0xfd, 0xc3];
        let f = Function::decode(&code, 0x1000);
        let t = f.branch_targets();
        let ip = |i: usize| f.instrs[i].ip();
        let b = around(&f, 0x1000, &t, 64, false).expect("block");
        assert_eq!(
            (ip(b.first), ip(b.last)),
            (0x1000, 0x1001),
            "ends at the call"
        );
        let b = around(&f, 0x1006, &t, 64, false).expect("block");
        assert_eq!(
            (ip(b.first), ip(b.last)),
            (0x1006, 0x1006),
            "0x1007 is a branch target: a new block"
        );
        let b = around(&f, 0x1008, &t, 64, false).expect("block");
        assert_eq!((ip(b.first), ip(b.last)), (0x1007, 0x1008));
        assert!(
            around(&f, 0x1002, &t, 64, false).is_none(),
            "not a boundary"
        );
        let b = around(&f, 0x1000, &t, 64, true).expect("block");
        assert_eq!(
            (ip(b.first), ip(b.last)),
            (0x1000, 0x1006),
            "where calls return, the call does not end it"
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
