//! The proof that a probe at another instruction of the block reads the values the line
//! starts with, and the plan rewritten to read them there.
//!
//! Why a proof and not a second plan: the plan is built once, at the line's first
//! instruction, from the locations the debug info gives there; placement never asks the
//! planner again. It follows the instructions that run between the two points and keeps, for
//! each register, which register of the earlier point (plus a constant) it holds — `mov` of
//! a whole register, `lea r,[b+d]`, `add`/`sub` of a constant, `push`, `pop` — and every
//! memory write with its address in the earlier point's registers. A value is the same at
//! the other point when every register the plan reads still holds it there (or another
//! register holds a copy: the plan is rewritten to read that one) and nothing written in
//! between may be memory the plan reads: a stack slot it reads, any memory when the plan
//! follows a pointer, or a stack slot at all when the function lets its frame's address
//! escape. A plan reading `rip` (the stack unwinder) or capturing the stack stays where the
//! line starts. Anything the model does not know is a refusal, with its reason.

use std::collections::HashMap;

use detrix_common::{op, pt_regs, Plan};
use iced_x86::{
    Formatter as _, GasFormatter, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register,
};

use crate::codegen::{iced_register, pt_reg};

/// What a plan reads, as the registers of the point it runs at see it.
#[derive(Debug, Default)]
struct Reads {
    /// Stack slots: `(frame register, offset, bytes)`.
    frame: Vec<(Register, i64, u64)>,
    /// Memory other than the frame's slots (through pointers, globals, copied headers).
    other_memory: bool,
    /// A register that is not a general one (`rip`, flags), by `pt_regs` index.
    special: Option<u8>,
}

fn reads(plan: &Plan) -> Reads {
    let mut out = Reads::default();
    // Where the accumulator points: a frame register plus an offset, or anything else.
    let mut acc: Option<(Register, i64)> = None;
    for o in plan.active_ops() {
        match o.kind {
            op::REG => match iced_register(o.reg) {
                Some(r) if matches!(r, Register::RSP | Register::RBP) => acc = Some((r, o.imm)),
                Some(_) => acc = None,
                None => {
                    out.special.get_or_insert(o.reg);
                    acc = None;
                }
            },
            op::ADD => acc = acc.map(|(r, d)| (r, d.wrapping_add(o.imm))),
            op::DEREF | op::EMIT_MEM | op::EMIT_STR => {
                match acc {
                    Some((r, d)) => out.frame.push((r, d.wrapping_add(o.imm), u64::from(o.len))),
                    None => out.other_memory = true,
                }
                if o.kind == op::DEREF {
                    acc = None;
                }
            }
            op::EMIT_ACC | op::PUSH | op::SKIP_LE | op::END_LE => {}
            // CONST (a global's address), HDR (a header's pointer), ALU: not a frame slot.
            op::CONST | op::HDR | op::ALU => acc = None,
            _ => {
                out.other_memory = true;
                acc = None;
            }
        }
    }
    out
}

/// A register's content as the earlier point's register plus a constant; `None`: unknown.
type Sym = Option<(Register, i64)>;

/// A memory write between the two points, its address in the earlier point's registers.
#[derive(Debug, Clone, Copy)]
struct Write {
    /// A call: any memory but the frame's unescaped slots above `rsp` (`base` is `rsp` there).
    call: bool,
    at: u64,
    /// `base + disp`, when the base's content is known.
    base: Sym,
    /// The register the instruction names as its base (for the message).
    named: Register,
    size: u64,
}

/// Which registers a callee leaves as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAbi {
    /// No call runs between the two points (calls end the block).
    NoCalls,
    /// System V x86-64: rbx, rbp, rsp, r12–r15.
    SysV,
    /// Go's internal ABI: rsp, rbp and r14 (the goroutine); everything else may change.
    Go,
}

impl CallAbi {
    fn preserves(self, r: Register) -> bool {
        match self {
            CallAbi::NoCalls => false,
            CallAbi::SysV => matches!(
                r,
                Register::RBX
                    | Register::RBP
                    | Register::RSP
                    | Register::R12
                    | Register::R13
                    | Register::R14
                    | Register::R15
            ),
            CallAbi::Go => matches!(r, Register::RSP | Register::RBP | Register::R14),
        }
    }
}

const GPRS: [Register; 16] = [
    Register::RAX,
    Register::RBX,
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
    Register::RBP,
    Register::RSP,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

/// Register contents and memory writes along the instructions between the two points.
#[derive(Default)]
struct Track {
    regs: HashMap<Register, Sym>,
    /// Where each register was last changed (for the messages).
    changed_at: HashMap<Register, u64>,
    writes: Vec<Write>,
}

fn is_write(a: OpAccess) -> bool {
    matches!(
        a,
        OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite
    )
}

impl Track {
    fn get(&self, r: Register) -> Sym {
        self.regs.get(&r).copied().unwrap_or(Some((r, 0)))
    }

    fn step(&mut self, i: &Instruction, info: &mut InstructionInfoFactory, abi: CallAbi) {
        if crate::codegen::block::is_call(i) {
            // The callee returns with rsp as it was and the preserved registers restored.
            self.writes.push(Write {
                call: true,
                at: i.ip(),
                base: self.get(Register::RSP),
                named: Register::RSP,
                size: 0,
            });
            for r in GPRS {
                if !abi.preserves(r) {
                    self.regs.insert(r, None);
                    self.changed_at.insert(r, i.ip());
                }
            }
            return;
        }
        let r64 = |k: u32| i.op_kind(k) == OpKind::Register && i.op_register(k).is_gpr64();
        let plus = |s: Sym, d: i64| s.map(|(r, k)| (r, k.wrapping_add(d)));
        let imm = |k: u32| {
            matches!(
                i.op_kind(k),
                OpKind::Immediate8to64 | OpKind::Immediate32to64 | OpKind::Immediate32
            )
            .then(|| i.immediate(k) as i64)
        };
        let mut set: Option<(Register, Sym)> = None;
        let mut rsp = None;
        match i.mnemonic() {
            Mnemonic::Mov if r64(0) && r64(1) => {
                set = Some((i.op0_register(), self.get(i.op1_register())));
            }
            Mnemonic::Lea
                if r64(0)
                    && i.memory_index() == Register::None
                    && i.memory_base().is_gpr64()
                    && i.segment_prefix() == Register::None =>
            {
                let d = i.memory_displacement64() as i64;
                set = Some((i.op0_register(), plus(self.get(i.memory_base()), d)));
            }
            Mnemonic::Add | Mnemonic::Sub if r64(0) => {
                let d = imm(1);
                let s = match d {
                    Some(d) if i.mnemonic() == Mnemonic::Add => plus(self.get(i.op0_register()), d),
                    Some(d) => plus(self.get(i.op0_register()), d.wrapping_neg()),
                    None => None,
                };
                set = Some((i.op0_register(), s));
            }
            Mnemonic::Push if i.stack_pointer_increment() == -8 => {
                rsp = Some(plus(self.get(Register::RSP), -8));
            }
            Mnemonic::Pop if i.stack_pointer_increment() == 8 => {
                rsp = Some(plus(self.get(Register::RSP), 8));
            }
            _ => {}
        }
        let info = info.info(i);
        for m in info.used_memory() {
            if !is_write(m.access()) {
                continue;
            }
            let known = m.index() == Register::None
                && m.base().is_gpr64()
                && !matches!(m.segment(), Register::FS | Register::GS);
            self.writes.push(Write {
                call: false,
                at: i.ip(),
                base: if known {
                    plus(self.get(m.base()), m.displacement() as i64)
                } else {
                    None
                },
                named: m.base(),
                size: m.memory_size().size().max(1) as u64,
            });
        }
        for r in info.used_registers() {
            if is_write(r.access()) {
                let full = r.register().full_register();
                if full.is_gpr64() {
                    self.regs.insert(full, None);
                    self.changed_at.insert(full, i.ip());
                }
            }
        }
        if let Some(s) = rsp {
            self.regs.insert(Register::RSP, s);
        }
        if let Some((r, s)) = set {
            self.regs.insert(r, s);
        }
    }
}

fn name(r: Register) -> String {
    format!("{r:?}").to_lowercase()
}

fn where_changed(t: &Track, r: Register) -> String {
    t.changed_at
        .get(&r)
        .map_or_else(String::new, |a| format!(" at {a:#x}"))
}

/// How strict the proof is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// Every register read unchanged (no copy re-read), no memory written at all except by
    /// `push` (the rule of statement-only placement).
    Unchanged,
    /// Copies re-read, memory writes that cannot reach what the plan reads allowed.
    Tracked,
}

/// Proves that `plan`, built for the line's first instruction, reads the same values at a
/// probe `before` (or after) it, with `between` the instructions that run from the earlier of
/// the two points up to (not including) the later one; `escape` is where the function lets
/// its frame's address escape, if it does. Returns the plan to run at the probe and the
/// proof as a sentence, or the reason there is none.
/// `plan` (valid at a function's first instruction) for a probe on a `call` of the function:
/// there every register and byte of memory is as at the first instruction but `rsp`, 8 bytes
/// higher (the return address is not pushed yet). Stack reads are re-based; a read of the
/// return address's slot, of `rip` or of the stack, and entry values (the function's entry
/// probe saves them after the call) are refused.
///
/// # Errors
/// What the plan reads that a call site cannot give.
pub fn before_call(plan: &Plan) -> Result<Plan, String> {
    let r = reads(plan);
    if r.special.is_some() || plan.stack.len > 0 {
        return Err("the plan reads rip or the stack, which differ at the call".to_owned());
    }
    if plan.active_ops().iter().any(|o| o.kind == op::STASH) {
        return Err(
            "the plan reads entry values, which the function's entry probe saves after the call"
                .to_owned(),
        );
    }
    if r.frame.iter().any(|&(reg, d, len)| {
        reg == Register::RSP
            && d < 8
            && d.saturating_add(i64::try_from(len).unwrap_or(i64::MAX)) > 0
    }) {
        return Err(
            "the plan reads the return address's slot, which the call has not written".to_owned(),
        );
    }
    let mut moved = *plan;
    let n = moved.active_ops().len();
    for o in &mut moved.ops[..n] {
        if o.kind == op::REG && o.reg == pt_regs::RSP {
            o.imm = o.imm.wrapping_sub(8);
        }
    }
    Ok(moved)
}

pub fn prove(
    plan: &Plan,
    between: &[Instruction],
    before: bool,
    escape: Option<u64>,
    rules: Rules,
    abi: CallAbi,
) -> Result<(Plan, String), String> {
    let on_line = reads(plan);
    if let Some(r) = on_line.special {
        let what = match r {
            pt_regs::RIP => "rip (where the probe fires)".to_owned(),
            other => format!("register {other} of pt_regs"),
        };
        return Err(format!(
            "the plan reads {what}, which differs at another instruction"
        ));
    }
    if plan.stack.len > 0 {
        return Err("the captured stack's innermost frame is where the probe fires".to_owned());
    }
    let mut track = Track::default();
    let mut info = InstructionInfoFactory::new();
    for i in between {
        track.step(i, &mut info, abi);
    }
    // The plan at the probe: each register the line's plan reads, re-read where it is there.
    let mut moved = plan.to_owned();
    let mut copies: Vec<String> = Vec::new();
    let n = moved.active_ops().len();
    let mut reads_regs: Vec<Register> = moved.ops[..n]
        .iter()
        .filter_map(|o| o.reads_reg().and_then(iced_register))
        .collect();
    if plan.goid_offset != 0 {
        reads_regs.push(Register::R14);
    }
    for o in moved.ops[..n].iter_mut().filter(|o| o.kind == op::REG) {
        let Some(r) = iced_register(o.reg) else {
            continue;
        };
        let (to, k) = if before {
            // Probe earlier: the line reads `r`, which holds `r0 + k` of the probe's point.
            track.get(r).ok_or_else(|| {
                format!(
                    "{} changes{} before the line starts, and no register holds its value at the probe",
                    name(r),
                    where_changed(&track, r)
                )
            })?
        } else {
            // Probe later: find the register holding the line's `r` (plus k) there.
            let holds = |x: Register| track.get(x).filter(|(r0, _)| *r0 == r).map(|(_, k)| (x, k));
            let found = holds(r).or_else(|| {
                let mut all: Vec<Register> = track.regs.keys().copied().collect();
                all.sort_by_key(|x| *x as u32);
                all.into_iter().find_map(holds)
            });
            let (x, k) = found.ok_or_else(|| {
                format!(
                    "{} is written{} (the code between writes what the plan reads), and no register holds its value at the probe",
                    name(r),
                    where_changed(&track, r)
                )
            })?;
            (x, k.wrapping_neg())
        };
        if rules == Rules::Unchanged && (to != r || k != 0) {
            return Err(format!(
                "{} changes{} in between",
                name(r),
                where_changed(&track, r)
            ));
        }
        if to != r {
            copies.push(format!("{} from {}", name(r), name(to)));
        }
        o.reg = pt_reg(to).ok_or_else(|| format!("{} is not in pt_regs", name(to)))?;
        o.imm = o.imm.wrapping_add(k);
    }
    if plan.goid_offset != 0 && track.get(Register::R14) != Some((Register::R14, 0)) {
        return Err(format!(
            "r14 (the goroutine) changes{}",
            where_changed(&track, Register::R14)
        ));
    }
    // Memory, in the earlier point's registers: the plan that runs there.
    let early = reads(if before { &moved } else { plan });
    for w in &track.writes {
        let at = w.at;
        if w.call {
            if early.other_memory {
                return Err(format!(
                    "{at:#x} calls a function, which may write the memory the plan reads through pointers"
                ));
            }
            if let (Some(e), false) = (escape, early.frame.is_empty()) {
                return Err(format!(
                    "{at:#x} calls a function, which may write the stack slots the plan reads (the function takes its frame's address at {e:#x})"
                ));
            }
            for &(fb, fd, _) in &early.frame {
                let below = match w.base {
                    Some((b, d)) if b == fb => fd < d,
                    _ => fb != Register::RBP,
                };
                if below {
                    return Err(format!(
                        "{at:#x} calls a function, whose frame may cover the stack slot at {}{fd:+} the plan reads",
                        name(fb)
                    ));
                }
            }
            continue;
        }
        if rules == Rules::Unchanged {
            let is_push = between
                .iter()
                .find(|i| i.ip() == at)
                .is_some_and(|i| i.mnemonic() == Mnemonic::Push);
            if !is_push {
                return Err(format!("{at:#x} writes memory"));
            }
            continue;
        }
        match w.base {
            Some((b, d)) if matches!(b, Register::RSP | Register::RBP) => {
                for &(fb, fd, len) in &early.frame {
                    if fb != b {
                        return Err(format!(
                            "{at:#x} writes the stack through {}, and the plan reads it through {}: how far apart is not known",
                            name(b),
                            name(fb)
                        ));
                    }
                    if d < fd.saturating_add(len as i64) && fd < d.saturating_add(w.size as i64) {
                        return Err(format!(
                            "{at:#x} writes {} bytes at {}{:+}, a stack slot the plan reads",
                            w.size,
                            name(b),
                            d
                        ));
                    }
                }
                if early.other_memory {
                    if let Some(e) = escape {
                        return Err(format!(
                            "{at:#x} writes the stack, and a pointer the plan follows may point there (the function takes its frame's address at {e:#x})"
                        ));
                    }
                }
            }
            _ => {
                if early.other_memory {
                    return Err(format!(
                        "{at:#x} writes memory through {}, which may be memory the plan reads",
                        name(w.named)
                    ));
                }
                if !early.frame.is_empty() {
                    if let Some(e) = escape {
                        return Err(format!(
                            "{at:#x} writes memory through {}, which may be a stack slot the plan reads (the function takes its frame's address at {e:#x})",
                            name(w.named)
                        ));
                    }
                }
            }
        }
    }
    let mut proof = if n == 0 && plan.goid_offset == 0 {
        "the plan reads nothing".to_owned()
    } else if between.is_empty() {
        "the same instruction".to_owned()
    } else {
        reads_regs.sort_by_key(|r| *r as u32);
        reads_regs.dedup();
        let regs: Vec<String> = reads_regs.iter().map(|r| name(*r)).collect();
        let mem = match (early.frame.is_empty(), early.other_memory) {
            (true, false) => String::new(),
            (false, false) => "; no write reaches the stack slots it reads".to_owned(),
            (_, true) => "; nothing in between writes memory it may read".to_owned(),
        };
        format!(
            "registers read ({}) hold the same values{mem}",
            regs.join(", ")
        )
    };
    if !copies.is_empty() {
        proof.push_str(&format!("; reads {}", copies.join(", ")));
    }
    Ok((moved, proof))
}

/// `i` in AT&T syntax, for `--explain`.
pub fn text(i: &Instruction) -> String {
    let mut s = String::new();
    GasFormatter::new().format(i, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::Function;
    use detrix_common::PlanOp;

    fn plan(ops: &[PlanOp]) -> Plan {
        let mut p = Plan::empty();
        p.ops[..ops.len()].copy_from_slice(ops);
        p.n_ops = ops.len() as u32;
        p
    }

    fn code(bytes: &[u8]) -> Vec<Instruction> {
        Function::decode(bytes, 0x1000).instrs
    }

    /// [`prove`] over `bytes` as most of these tests call it: tracked rules, no call in
    /// between, the frame's address never escaping.
    fn tracked(p: &Plan, bytes: &[u8], before: bool) -> Result<(Plan, String), String> {
        prove(
            p,
            &code(bytes),
            before,
            None,
            Rules::Tracked,
            CallAbi::NoCalls,
        )
    }

    /// `round` in a stack slot at rbp-0x14, 4 bytes.
    fn slot_plan() -> Plan {
        plan(&[
            PlanOp::new(op::REG, pt_regs::RBP, 0, 0),
            PlanOp::new(op::EMIT_MEM, 0, 4, -0x14),
        ])
    }

    #[test]
    fn a_call_site_reads_the_stack_eight_bytes_lower_and_never_the_return_slot() {
        // At the function's entry: [rsp+0x18], 8 bytes. Before the call, rsp is 8 higher.
        let at_entry = plan(&[
            PlanOp::new(op::REG, pt_regs::RSP, 0, 0),
            PlanOp::new(op::EMIT_MEM, 0, 8, 0x18),
        ]);
        let moved = before_call(&at_entry).expect("a slot above the return address");
        assert_eq!(
            moved.active_ops(),
            &[
                PlanOp::new(op::REG, pt_regs::RSP, 0, -8),
                PlanOp::new(op::EMIT_MEM, 0, 8, 0x18),
            ]
        );
        // rbp and the other registers are the same at the call.
        assert_eq!(before_call(&slot_plan()).expect("rbp"), slot_plan());
        let ret_slot = plan(&[
            PlanOp::new(op::REG, pt_regs::RSP, 0, 0),
            PlanOp::new(op::EMIT_MEM, 0, 8, 4),
        ]);
        let e = before_call(&ret_slot).expect_err("the return address's slot");
        assert!(e.contains("return address"), "{e}");
        let rip = plan(&[PlanOp::new(op::REG, pt_regs::RIP, 0, 0)]);
        assert!(before_call(&rip).is_err());
        let stash = plan(&[PlanOp::new(op::STASH, pt_regs::RDI, 0, 1)]);
        let e = before_call(&stash).expect_err("entry values");
        assert!(e.contains("entry values"), "{e}");
    }

    #[test]
    fn a_write_to_the_slot_read_is_refused_another_slot_is_not() {
        // mov %eax,-0x14(%rbp)
        let e = tracked(&slot_plan(), &[0x89, 0x45, 0xec], false);
        assert_eq!(
            e.unwrap_err(),
            "0x1000 writes 4 bytes at rbp-20, a stack slot the plan reads"
        );
        // mov %eax,-0x18(%rbp)
        let ok = tracked(&slot_plan(), &[0x89, 0x45, 0xe8], false);
        assert!(ok.is_ok(), "{ok:?}");
        // The same store once the frame's address escaped, with a plan following a pointer.
        let mut p = slot_plan();
        p.ops[1] = PlanOp::new(op::DEREF, 0, 8, -0x20);
        p.ops[2] = PlanOp::new(op::EMIT_MEM, 0, 4, 0);
        p.n_ops = 3;
        let e = prove(
            &p,
            &code(&[0x89, 0x45, 0xe8]),
            false,
            Some(0x900),
            Rules::Tracked,
            CallAbi::NoCalls,
        );
        assert!(e.unwrap_err().contains("may point there"), "escape");
        // A store through a pointer, with a plan that reads only a non-escaping slot.
        let ok = tracked(&slot_plan(), &[0x48, 0x89, 0x11], false);
        assert!(ok.is_ok(), "{ok:?}");
        let e = tracked(&p, &[0x48, 0x89, 0x11], false);
        assert_eq!(
            e.unwrap_err(),
            "0x1000 writes memory through rcx, which may be memory the plan reads"
        );
    }

    #[test]
    fn a_copy_is_re_read_and_a_push_moves_rsp_offsets() {
        // The value in rdi; `mov %rdi,%rbx ; mov $1,%edi`: after it, read rbx.
        let p = plan(&[
            PlanOp::new(op::REG, pt_regs::RDI, 0, 0),
            PlanOp::new(op::EMIT_ACC, 0, 8, 0),
        ]);
        let between = code(&[0x48, 0x89, 0xfb, 0xbf, 1, 0, 0, 0]);
        let (moved, proof) =
            prove(&p, &between, false, None, Rules::Tracked, CallAbi::NoCalls).expect("copy");
        assert_eq!(moved.ops[0].reg, pt_regs::RBX);
        assert!(proof.ends_with("reads rdi from rbx"), "{proof}");
        assert!(prove(
            &p,
            &between,
            false,
            None,
            Rules::Unchanged,
            CallAbi::NoCalls
        )
        .is_err());
        // Before the line: `push %rbx` runs in between; the line reads 8(%rsp).
        let p = plan(&[
            PlanOp::new(op::REG, pt_regs::RSP, 0, 8),
            PlanOp::new(op::EMIT_MEM, 0, 8, 0),
        ]);
        let (moved, _) = tracked(&p, &[0x53], true).expect("push");
        assert_eq!((moved.ops[0].reg, moved.ops[0].imm), (pt_regs::RSP, 0));
        // After the line, the same push writes below the slot: rsp+16 there.
        let (moved, _) = tracked(&p, &[0x53], false).expect("push");
        assert_eq!((moved.ops[0].reg, moved.ops[0].imm), (pt_regs::RSP, 16));
        // `push` over the slot the plan reads (-8 from rsp before it).
        let p = plan(&[
            PlanOp::new(op::REG, pt_regs::RSP, 0, -8),
            PlanOp::new(op::EMIT_MEM, 0, 8, 0),
        ]);
        let e = tracked(&p, &[0x53], false).unwrap_err();
        assert_eq!(
            e,
            "0x1000 writes 8 bytes at rsp-8, a stack slot the plan reads"
        );
    }

    #[test]
    fn overwritten_registers_rip_and_stacks_are_refused() {
        let p = plan(&[
            PlanOp::new(op::REG, pt_regs::RAX, 0, 0),
            PlanOp::new(op::EMIT_ACC, 0, 8, 0),
        ]);
        // add $1,%rax before the line: its value there is rax+1, read as such.
        let (moved, _) = tracked(&p, &[0x48, 0x83, 0xc0, 0x01], true).expect("add");
        assert_eq!((moved.ops[0].reg, moved.ops[0].imm), (pt_regs::RAX, 1));
        // imul %rax,%rax after the line: gone.
        let e = tracked(&p, &[0x48, 0x0f, 0xaf, 0xc0], false);
        assert!(e.unwrap_err().starts_with("rax is written at 0x1000"));
        let rip = plan(&[PlanOp::new(op::REG, pt_regs::RIP, 0, 0)]);
        assert!(
            prove(&rip, &[], false, None, Rules::Tracked, CallAbi::NoCalls)
                .unwrap_err()
                .contains("rip")
        );
    }
}
