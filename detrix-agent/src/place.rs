//! Probe placement: among the instructions of a statement where the plan reads the same values,
//! pick one the kernel emulates instead of single-stepping.
//!
//! Why: a uprobe on an ordinary instruction costs an int3 trap *and* an out-of-line
//! single-step (~5–10 µs per hit on this machine kind), while on `push reg`, `nop`,
//! `call rel32` or a relative jump the kernel emulates the instruction (~0.7 µs)
//! (toolchain.md §8). It is the largest performance lever we have.
//!
//! When is a later instruction equivalent to the line's first? When every instruction before it
//! falls through (no branch), writes no memory other than a `push` below the stack pointer,
//! and writes no register the plan reads; when no branch elsewhere in the function lands
//! between the two (else the later one fires on paths that never ran the line); and when the
//! plan rebuilt at the later address is op for op the same (the DWARF locations did not
//! change). Then the values read there are the values the line starts with, and the probe
//! fires exactly when the line's first instruction would. The window may run past rows of
//! other lines (a call's arguments often sit on the next source lines): what matters is that
//! nothing the plan reads changed, not where the line table draws its boundaries.

use detrix_common::{pt_regs, Plan, PlanOp};
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter as _, GasFormatter, Instruction,
    InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};

use crate::codegen::Function;
use crate::debuginfo::{Binary, LinkAddr, ProbePoint};

/// Most instructions examined per statement.
const WINDOW: usize = 64;

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
}

fn trap_kind(i: &Instruction) -> TrapKind {
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

/// The general register at `pt_regs` index `pt`, as iced-x86 names it.
pub(crate) fn iced_register(pt: u8) -> Option<Register> {
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

fn plan_registers(plan: &Plan) -> Vec<Register> {
    plan.active_ops()
        .iter()
        .filter_map(PlanOp::reads_reg)
        .filter_map(iced_register)
        .collect()
}

/// Why `i`, executed before the probe, would change what the plan reads; `None` if it cannot.
fn clobbers(
    i: &Instruction,
    info: &mut InstructionInfoFactory,
    regs: &[Register],
) -> Option<String> {
    if i.flow_control() != FlowControl::Next {
        return Some("control flow".to_owned());
    }
    let is_push = i.mnemonic() == Mnemonic::Push;
    let info = info.info(i);
    let writes = |a: OpAccess| {
        matches!(
            a,
            OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite
        )
    };
    if !is_push && info.used_memory().iter().any(|m| writes(m.access())) {
        return Some("writes memory".to_owned());
    }
    for r in info.used_registers() {
        if writes(r.access()) && regs.contains(&r.register().full_register()) {
            return Some(
                format!(
                    "writes {:?}, which the plan reads",
                    r.register().full_register()
                )
                .to_lowercase(),
            );
        }
    }
    None
}

/// Chooses the probe address for `point`. `plan_at` rebuilds the plan at another address of
/// the same scope (or `None` when it cannot be built there).
#[must_use]
pub fn place(
    bin: &Binary,
    point: &ProbePoint,
    plan: &Plan,
    plan_at: &dyn Fn(&ProbePoint) -> Option<Plan>,
    func: &Function,
) -> Placement {
    let mut explain = Vec::new();
    let Some(code) = bin
        .code(point.addr, point.func_end)
        .filter(|c| !c.is_empty())
    else {
        explain.push(format!(
            "{}: no code bytes for {}..{}; probe stays at the line's first instruction",
            point.addr, point.addr, point.func_end
        ));
        return Placement {
            chosen: point.addr,
            kind: TrapKind::Unknown,
            explain,
        };
    };
    let targets = func.branch_targets();
    let regs = plan_registers(plan);
    let mut decoder = Decoder::with_ip(64, code, point.addr.0, DecoderOptions::NONE);
    let mut fmt = GasFormatter::new();
    let mut factory = InstructionInfoFactory::new();
    let mut first: Option<(LinkAddr, TrapKind)> = None;
    let mut instr = Instruction::default();
    for _ in 0..WINDOW {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instr);
        let mut text = String::new();
        fmt.format(&instr, &mut text);
        let addr = LinkAddr(instr.ip());
        let kind = trap_kind(&instr);
        let first_kind = *first.get_or_insert((addr, kind));
        if addr != point.addr && targets.contains(&addr.0) {
            explain.push(format!("{addr}  {text:<40} a branch lands here"));
            explain.push(format!(
                "stop: {addr} is a branch target; a probe here would also fire on other paths"
            ));
            break;
        }
        let verdict = if kind != TrapKind::Emulated {
            "single-stepped".to_owned()
        } else if addr == point.addr {
            "emulated".to_owned()
        } else {
            match bin.point_at(point, addr).and_then(|p| plan_at(&p)) {
                Some(other) if other.ops == plan.ops && other.cond == plan.cond => {
                    "emulated, same plan".to_owned()
                }
                Some(_) => "emulated, but the variables' locations differ here".to_owned(),
                None => "emulated, but the plan cannot be built here".to_owned(),
            }
        };
        explain.push(format!("{addr}  {text:<40} {verdict}"));
        if verdict == "emulated" || verdict == "emulated, same plan" {
            if addr == point.addr {
                explain.push(format!(
                    "chose {addr}: the line's first instruction is emulated"
                ));
            } else {
                explain.push(format!(
                    "chose {addr}: emulated (~{} ns/hit) instead of {} at {} (~{} ns/hit); the instructions between read the same values",
                    TrapKind::Emulated.cost_ns(),
                    text_of(first_kind.1),
                    first_kind.0,
                    first_kind.1.cost_ns()
                ));
            }
            return Placement {
                chosen: addr,
                kind: TrapKind::Emulated,
                explain,
            };
        }
        if let Some(why) = clobbers(&instr, &mut factory, &regs) {
            explain.push(format!(
                "stop: {addr} {why}; later instructions may see other values"
            ));
            break;
        }
    }
    let (addr, kind) = first.unwrap_or((point.addr, TrapKind::Unknown));
    explain.push(format!(
        "chose {addr}: no emulated instruction reads the same values in this statement"
    ));
    Placement {
        chosen: addr,
        kind,
        explain,
    }
}

/// How the kernel will run the instruction at `point.addr` (no placement).
#[must_use]
pub fn classify(bin: &Binary, point: &ProbePoint) -> TrapKind {
    let Some(code) = bin
        .code(point.addr, point.func_end)
        .filter(|c| !c.is_empty())
    else {
        return TrapKind::Unknown;
    };
    trap_kind(&Decoder::with_ip(64, code, point.addr.0, DecoderOptions::NONE).decode())
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
        assert_eq!(
            trap_kind(&decode(&[0xff, 0xd0])),
            TrapKind::SingleStepped,
            "call *%rax"
        );
    }

    #[test]
    fn knows_what_changes_the_values() {
        let mut f = InstructionInfoFactory::new();
        let rbp = [Register::RBP];
        assert_eq!(
            clobbers(&decode(&[0x48, 0x8b, 0x45, 0xe8]), &mut f, &rbp),
            None,
            "a load into rax"
        );
        assert!(
            clobbers(&decode(&[0x48, 0x89, 0x45, 0xe8]), &mut f, &rbp).is_some(),
            "a store"
        );
        assert!(
            clobbers(&decode(&[0x48, 0x89, 0xe5]), &mut f, &rbp).is_some(),
            "mov %rsp,%rbp"
        );
        assert_eq!(
            clobbers(&decode(&[0x50]), &mut f, &rbp),
            None,
            "push %rax only writes below rsp"
        );
        assert!(
            clobbers(&decode(&[0x50]), &mut f, &[Register::RSP]).is_some(),
            "push moves rsp"
        );
        assert!(
            clobbers(&decode(&[0x74, 0x05]), &mut f, &rbp).is_some(),
            "a branch"
        );
    }
}
