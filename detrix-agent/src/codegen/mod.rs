//! The machine code of a function, decoded once (x86-64, iced-x86): its instructions in
//! address order and what its branches say about control flow.
//!
//! Why one decode: placement (which instructions a branch can land on) and forwarding (which
//! registers hold which stack slots along the function) read the same instructions; decoding
//! them once per copy of a line, in one place, keeps the two from disagreeing about where the
//! instruction boundaries are.

pub mod block;
pub mod cfg;
pub mod jumptable;

use detrix_common::pt_regs;
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, OpKind, Register};

use crate::debuginfo::{Binary, ProbePoint};

/// A function's instructions, decoded linearly from its first byte.
#[derive(Debug, Default)]
pub struct Function {
    pub instrs: Vec<Instruction>,
    /// The targets of the indirect jumps that read a jump table ([`jumptable`]), by the
    /// jump's address; the other indirect jumps may go anywhere.
    pub tables: std::collections::HashMap<u64, Vec<u64>>,
    /// The indirect jumps through a slot of the global offset table (`jmp *f@GOTPCREL(%rip)`,
    /// optimized Rust's and C's tail calls to another object's function), by address: the slot
    /// holds a function's start, so control leaves the function (or, calling itself, enters at
    /// its first instruction, a block start anyway).
    pub tail_calls: std::collections::HashSet<u64>,
}

/// Where a branch goes, as far as the instruction says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    /// Not a branch (calls and returns included).
    NotBranch,
    /// A direct branch to this address.
    Direct(u64),
    /// A branch whose target the code does not say (indirect, or not a near branch).
    Unknown,
}

impl Function {
    /// The function `point` is in; no instructions when its bytes are not available.
    #[must_use]
    pub fn of(bin: &Binary, point: &ProbePoint) -> Self {
        let Some(code) = bin.code(point.func_start, point.func_end) else {
            return Self::default();
        };
        let mut f = Self::decode(code, point.func_start.0);
        f.tables = jumptable::recover(&f.instrs, |at, len| {
            bin.read_only(crate::debuginfo::LinkAddr(at), len)
        });
        f.tail_calls = f
            .instrs
            .iter()
            .filter(|i| {
                i.flow_control() == FlowControl::IndirectBranch
                    && i.op0_kind() == OpKind::Memory
                    && i.is_ip_rel_memory_operand()
                    && bin.in_got(crate::debuginfo::LinkAddr(i.ip_rel_memory_address()))
            })
            .map(Instruction::ip)
            .collect();
        f
    }

    /// Decodes `code`, whose first byte is at `start`.
    #[must_use]
    pub fn decode(code: &[u8], start: u64) -> Self {
        let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
        let mut instrs = Vec::new();
        let mut i = Instruction::default();
        while decoder.can_decode() {
            decoder.decode_out(&mut i);
            instrs.push(i);
        }
        Self {
            instrs,
            tables: std::collections::HashMap::new(),
            tail_calls: std::collections::HashSet::new(),
        }
    }

    /// Targets of the direct branches and of the jump tables.
    #[must_use]
    pub fn branch_targets(&self) -> std::collections::HashSet<u64> {
        self.instrs
            .iter()
            .filter_map(|i| match branch(i) {
                Branch::Direct(t) => Some(t),
                _ => None,
            })
            .chain(self.tables.values().flatten().copied())
            .collect()
    }

    /// Where the jump table read by the indirect jump `i` sends control, if it has one.
    #[must_use]
    pub fn table(&self, i: &Instruction) -> Option<&[u64]> {
        self.tables.get(&i.ip()).map(Vec::as_slice)
    }

    /// Whether `i` branches to a place the code does not say: an indirect jump without a
    /// recovered table that is not a tail call through the GOT, or a branch that is not a
    /// near one.
    #[must_use]
    pub fn unknown_branch(&self, i: &Instruction) -> bool {
        branch(i) == Branch::Unknown && self.table(i).is_none() && !self.tail_call(i)
    }

    /// Whether `i` jumps through a GOT slot: to another function's start ([`Function::tail_calls`]).
    #[must_use]
    pub fn tail_call(&self, i: &Instruction) -> bool {
        self.tail_calls.contains(&i.ip())
    }
}

/// The general register at `pt_regs` index `pt`, as iced-x86 names it.
#[must_use]
pub fn iced_register(pt: u8) -> Option<Register> {
    Some(match pt {
        pt_regs::RAX => Register::RAX,
        pt_regs::RBX => Register::RBX,
        pt_regs::RCX => Register::RCX,
        pt_regs::RDX => Register::RDX,
        pt_regs::RSI => Register::RSI,
        pt_regs::RDI => Register::RDI,
        pt_regs::RBP => Register::RBP,
        pt_regs::RSP => Register::RSP,
        pt_regs::R8 => Register::R8,
        pt_regs::R9 => Register::R9,
        pt_regs::R10 => Register::R10,
        pt_regs::R11 => Register::R11,
        pt_regs::R12 => Register::R12,
        pt_regs::R13 => Register::R13,
        pt_regs::R14 => Register::R14,
        pt_regs::R15 => Register::R15,
        _ => return None,
    })
}

/// The `pt_regs` index of a 64-bit general register.
#[must_use]
pub fn pt_reg(r: Register) -> Option<u8> {
    (0..detrix_common::PT_REGS_COUNT as u8).find(|&p| iced_register(p) == Some(r))
}

/// Where `i` branches to.
#[must_use]
pub fn branch(i: &Instruction) -> Branch {
    match i.flow_control() {
        FlowControl::IndirectBranch => Branch::Unknown,
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
            if matches!(
                i.op0_kind(),
                OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
            ) {
                Branch::Direct(i.near_branch_target())
            } else {
                Branch::Unknown
            }
        }
        _ => Branch::NotBranch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_branches_give_targets_and_indirect_ones_do_not() {
        // 0x1000: jz +2 (→ 0x1004); 0x1002: jmp *%rax; 0x1004: ret
        let f = Function::decode(&[0x74, 0x02, 0xff, 0xe0, 0xc3], 0x1000);
        assert_eq!(f.instrs.len(), 3);
        assert_eq!(branch(&f.instrs[0]), Branch::Direct(0x1004));
        assert_eq!(branch(&f.instrs[1]), Branch::Unknown);
        assert_eq!(branch(&f.instrs[2]), Branch::NotBranch);
        assert_eq!(
            f.branch_targets(),
            std::collections::HashSet::from([0x1004])
        );
    }
}
