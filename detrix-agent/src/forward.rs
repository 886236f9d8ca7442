//! Register forwarding: at the probe's instruction, read a value from the register that
//! provably holds a copy of it instead of from its stack slot.
//!
//! Why: one `bpf_probe_read_user` is ~150 ns here (`cargo xtask bench`), the largest part of a
//! capture after the trap itself, while a register is already in the uprobe's `pt_regs`.
//! Unoptimized code (C `-O0`, Go `-N -l`, Rust debug) keeps every variable in a stack slot and
//! loads it into a register right before using it; a probe on the use then finds the value in
//! both places, and the debug info only names the slot.
//!
//! Soundness: the facts "register R holds the bytes at `[rbp/rsp + d]`" are collected over the
//! straight-line instructions that must all have run, in order, just before the probe: the
//! scan restarts at every branch target and after every instruction that does not fall
//! through (calls included: they clobber registers and may write any memory), and gives up
//! in functions with an indirect jump (unknown targets). A fact dies when its register, its
//! base register, or memory that may overlap its slot is written; any write through another
//! base kills every fact. Only whole loads and stores (`mov`, `movzx`/`movsx`) create facts.
//! A plan is rewritten only where the read it replaces is exactly a fact's slot and size, and
//! op for op (the op count never changes: later ops may refer to positions).

use std::collections::{HashMap, HashSet};

use detrix_common::{op, pt_regs, Plan};
use iced_x86::{
    FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};

use crate::codegen::{branch, pt_reg, Branch, Function};
use crate::debuginfo::ProbePoint;

/// Instructions decoded at most per function (a bound on the work, not on correctness: past
/// it nothing is forwarded).
const MAX_INSTRUCTIONS: usize = 200_000;

/// The low `size` bytes of a register equal the `size` bytes at `base + disp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    base: Register,
    disp: i64,
    size: u8,
    /// Where the fact was made (for `--explain`).
    at: u64,
}

impl Slot {
    fn overlaps(&self, base: Register, disp: i64, size: u64) -> bool {
        if base != self.base {
            return true;
        }
        let (a0, a1) = (self.disp, self.disp + i64::from(self.size));
        let (b0, b1) = (disp, disp.saturating_add(size as i64));
        a0 < b1 && b0 < a1
    }
}

fn frame_register(pt: u8) -> Option<Register> {
    match pt {
        pt_regs::RBP => Some(Register::RBP),
        pt_regs::RSP => Some(Register::RSP),
        _ => None,
    }
}

fn is_write(a: OpAccess) -> bool {
    matches!(
        a,
        OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite
    )
}

/// `[rbp + d]` / `[rsp + d]` with no index, as (base, displacement).
fn frame_slot(i: &Instruction) -> Option<(Register, i64)> {
    let base = i.memory_base();
    if !matches!(base, Register::RBP | Register::RSP)
        || i.memory_index() != Register::None
        || i.segment_prefix() != Register::None
    {
        return None;
    }
    Some((base, i.memory_displacement64() as i64))
}

/// The register facts in force while one straight-line run of instructions executes.
#[derive(Default)]
struct Facts(HashMap<Register, Slot>);

impl Facts {
    fn kill_register(&mut self, r: Register) {
        self.0.remove(&r);
        self.0.retain(|_, s| s.base != r);
    }

    fn kill_memory(&mut self, base: Option<(Register, i64)>, size: u64) {
        match base {
            Some((b, d)) => self.0.retain(|_, s| !s.overlaps(b, d, size)),
            None => self.0.clear(),
        }
    }

    /// Applies one instruction that falls through.
    fn step(&mut self, i: &Instruction, info: &mut InstructionInfoFactory) {
        let gpr = |k: OpKind, r: Register| k == OpKind::Register && (r.is_gpr64() || r.is_gpr32());
        // A stack slot this instruction makes a register hold.
        let slot = |base, disp, size| Slot {
            base,
            disp,
            size,
            at: i.ip(),
        };
        // What the instruction does to the facts, before any new one.
        let mut new_fact: Option<(Register, Slot)> = None;
        match i.mnemonic() {
            // load: reg ← [frame slot]
            Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd
                if gpr(i.op0_kind(), i.op0_register()) && i.op1_kind() == OpKind::Memory =>
            {
                if let Some((base, disp)) = frame_slot(i) {
                    let size = i.memory_size().size() as u8;
                    let full = i.op0_register().full_register();
                    // A 32-bit `mov` zero-extends: the low 4 bytes are the slot's.
                    if matches!(size, 1 | 2 | 4 | 8) && full != base {
                        new_fact = Some((full, slot(base, disp, size)));
                    }
                }
            }
            // store: [frame slot] ← reg
            Mnemonic::Mov
                if i.op0_kind() == OpKind::Memory && gpr(i.op1_kind(), i.op1_register()) =>
            {
                if let Some((base, disp)) = frame_slot(i) {
                    let size = i.memory_size().size() as u8;
                    if matches!(size, 4 | 8) {
                        new_fact = Some((i.op1_register().full_register(), slot(base, disp, size)));
                    }
                }
            }
            // copy: reg ← reg, the same width (64 or 32 bits)
            Mnemonic::Mov
                if gpr(i.op0_kind(), i.op0_register()) && gpr(i.op1_kind(), i.op1_register()) =>
            {
                let (dst, src) = (i.op0_register(), i.op1_register());
                if let Some(s) = self.0.get(&src.full_register()).copied() {
                    let size = if dst.is_gpr32() {
                        s.size.min(4)
                    } else {
                        s.size
                    };
                    if dst.is_gpr64() == src.is_gpr64() && dst.full_register() != s.base {
                        new_fact = Some((dst.full_register(), Slot { size, ..s }));
                    }
                }
            }
            _ => {}
        }
        let info = info.info(i);
        for m in info.used_memory() {
            if is_write(m.access()) {
                let frame = m.index() == Register::None
                    && matches!(m.base(), Register::RBP | Register::RSP)
                    && !matches!(m.segment(), Register::FS | Register::GS);
                self.kill_memory(
                    frame.then(|| (m.base(), m.displacement() as i64)),
                    m.memory_size().size() as u64,
                );
            }
        }
        for r in info.used_registers() {
            if is_write(r.access()) {
                self.kill_register(r.register().full_register());
            }
        }
        if let Some((r, s)) = new_fact {
            self.0.insert(r, s);
        }
    }
}

/// Whether `i` ends a straight-line run: it does not simply fall through (branches, calls,
/// returns), cannot be decoded, or is a system call, which may write any memory it was given
/// (a `read` into a stack buffer) that its operands do not show.
fn is_barrier(i: &Instruction) -> bool {
    i.flow_control() != FlowControl::Next
        || i.is_invalid()
        || matches!(
            i.mnemonic(),
            Mnemonic::Syscall
                | Mnemonic::Sysenter
                | Mnemonic::Int
                | Mnemonic::Int1
                | Mnemonic::Int3
                | Mnemonic::Into
        )
}

/// The facts in force when execution reaches `at`, or `None` when they cannot be known.
fn facts_at(func: &Function, at: u64) -> Option<Facts> {
    let instrs = &func.instrs[..func.instrs.len().min(MAX_INSTRUCTIONS)];
    let mut targets = HashSet::new();
    for i in instrs {
        match branch(i) {
            Branch::Unknown if func.tail_call(i) => {}
            Branch::Unknown => targets.extend(func.table(i)?),
            Branch::Direct(t) => {
                targets.insert(t);
            }
            Branch::NotBranch => {}
        }
    }
    let mut info = InstructionInfoFactory::new();
    let mut facts = Facts::default();
    for i in instrs {
        if i.ip() == at {
            return Some(facts);
        }
        if i.ip() > at {
            // `at` is not an instruction boundary of this decode.
            return None;
        }
        if targets.contains(&i.ip()) {
            facts.0.clear();
        }
        if !is_barrier(i) {
            facts.step(i, &mut info);
        } else {
            facts.0.clear();
        }
    }
    None
}

/// Rewrites reads of stack slots in `plan` into reads of the registers holding them at the
/// probe `point` (its `addr` is where the probe fires). Returns one line per rewrite, for
/// `--explain`.
pub fn forward(point: &ProbePoint, plan: &mut Plan, func: &Function) -> Vec<String> {
    let mut out = Vec::new();
    let Some(facts) = facts_at(func, point.addr.0) else {
        return out;
    };
    if facts.0.is_empty() {
        return out;
    }
    let n = plan.active_ops().len();
    // In register order, so the choice (and `resolve`'s output) is the same every run.
    let mut sorted: Vec<(Register, Slot)> = facts.0.iter().map(|(r, s)| (*r, *s)).collect();
    sorted.sort_by_key(|(r, _)| *r as u32);
    let find = |base: Register, disp: i64, min: u8| {
        sorted
            .iter()
            .find(|(_, s)| s.base == base && s.disp == disp && s.size >= min)
            .copied()
    };
    for k in 0..n.saturating_sub(1) {
        let (a, b) = (plan.ops[k], plan.ops[k + 1]);
        // Only the first op of a value: a REG there starts an address walk from scratch.
        let Some(reg) = a.reads_reg() else {
            continue;
        };
        if (k > 0 && plan.ops[k - 1].value == a.value) || b.value != a.value {
            continue;
        }
        let Some(base) = frame_register(reg) else {
            continue;
        };
        let disp = a.imm.wrapping_add(b.imm);
        match b.kind {
            op::EMIT_MEM if matches!(b.len, 1 | 2 | 4 | 8) => {
                let Some((r, s)) = find(base, disp, b.len as u8) else {
                    continue;
                };
                let Some(pr) = pt_reg(r) else { continue };
                plan.ops[k].reg = pr;
                plan.ops[k].imm = 0;
                plan.ops[k + 1].kind = op::EMIT_ACC;
                plan.ops[k + 1].imm = 0;
                out.push(format!("forwarded v{}: {} bytes at {base:?}{disp:+} read from {r:?}, which holds them since {:#x}", a.value, b.len, s.at).to_lowercase());
            }
            op::DEREF if b.len == 8 => {
                let Some((r, s)) = find(base, disp, 8) else {
                    continue;
                };
                let Some(pr) = pt_reg(r) else { continue };
                plan.ops[k].reg = pr;
                plan.ops[k].imm = 0;
                plan.ops[k + 1].kind = op::ADD;
                plan.ops[k + 1].imm = 0;
                plan.ops[k + 1].len = 0;
                out.push(format!("forwarded v{}: the pointer at {base:?}{disp:+} read from {r:?}, which holds it since {:#x}", a.value, s.at).to_lowercase());
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Facts {
        let mut f = Facts::default();
        let mut info = InstructionInfoFactory::new();
        for i in &Function::decode(bytes, 0x1000).instrs {
            f.step(i, &mut info);
        }
        f
    }

    fn slot(f: &Facts, r: Register) -> Option<(Register, i64, u8)> {
        f.0.get(&r).map(|s| (s.base, s.disp, s.size))
    }

    #[test]
    fn loads_stores_and_copies_make_facts() {
        // mov -0x8(%rbp),%rax ; mov %rax,%rdi
        let f = run(&[0x48, 0x8b, 0x45, 0xf8, 0x48, 0x89, 0xc7]);
        assert_eq!(slot(&f, Register::RAX), Some((Register::RBP, -8, 8)));
        assert_eq!(slot(&f, Register::RDI), Some((Register::RBP, -8, 8)));
        // mov %rax,-0x8(%rbp)
        let f = run(&[0x48, 0x89, 0x45, 0xf8]);
        assert_eq!(slot(&f, Register::RAX), Some((Register::RBP, -8, 8)));
        // mov -0x14(%rbp),%eax: 4 bytes
        let f = run(&[0x8b, 0x45, 0xec]);
        assert_eq!(slot(&f, Register::RAX), Some((Register::RBP, -0x14, 4)));
    }

    #[test]
    fn a_system_call_ends_the_run() {
        // mov -0x8(%rbp),%rax ; syscall ; (probe) — a read(2) may have filled the slot.
        let code = [0x48, 0x8b, 0x45, 0xf8, 0x0f, 0x05, 0x90];
        let instrs = Function::decode(&code, 0x1000).instrs;
        assert_eq!(instrs[1].mnemonic(), Mnemonic::Syscall);
        assert!(
            is_barrier(&instrs[1]),
            "syscall must end the straight-line run"
        );
        assert!(!is_barrier(&instrs[0]), "a load does not");
    }

    #[test]
    fn writes_kill_facts() {
        // mov -0x8(%rbp),%rax ; add %rax,%rax
        assert_eq!(
            slot(
                &run(&[0x48, 0x8b, 0x45, 0xf8, 0x48, 0x01, 0xc0]),
                Register::RAX
            ),
            None,
            "rax written"
        );
        // mov -0x8(%rbp),%rax ; mov %rdx,-0x8(%rbp)   (the slot is overwritten)
        assert_eq!(
            slot(
                &run(&[0x48, 0x8b, 0x45, 0xf8, 0x48, 0x89, 0x55, 0xf8]),
                Register::RAX
            ),
            None,
            "slot written"
        );
        // mov -0x8(%rbp),%rax ; mov %rdx,-0x10(%rbp)  (another slot)
        assert_eq!(
            slot(
                &run(&[0x48, 0x8b, 0x45, 0xf8, 0x48, 0x89, 0x55, 0xf0]),
                Register::RAX
            ),
            Some((Register::RBP, -8, 8)),
            "other slot"
        );
        // mov -0x8(%rbp),%rax ; mov %rdx,(%rcx)        (unknown address)
        assert_eq!(
            slot(
                &run(&[0x48, 0x8b, 0x45, 0xf8, 0x48, 0x89, 0x11]),
                Register::RAX
            ),
            None,
            "store through a pointer"
        );
        // mov -0x8(%rbp),%rax ; mov %rsp,%rbp          (base moved)
        assert_eq!(
            slot(
                &run(&[0x48, 0x8b, 0x45, 0xf8, 0x48, 0x89, 0xe5]),
                Register::RAX
            ),
            None,
            "base written"
        );
        // mov -0x8(%rbp),%rax ; mov $1,%al             (partial write)
        assert_eq!(
            slot(&run(&[0x48, 0x8b, 0x45, 0xf8, 0xb0, 0x01]), Register::RAX),
            None,
            "al written"
        );
        // mov 0x8(%rsp),%rax ; push %rbx              (rsp moves)
        assert_eq!(
            slot(&run(&[0x48, 0x8b, 0x44, 0x24, 0x08, 0x53]), Register::RAX),
            None,
            "rsp moved"
        );
    }
}
