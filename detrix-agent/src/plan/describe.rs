//! A plan's ops as text, one line per op, for `detrix-agent resolve`, `--explain` and the
//! snapshot tests.
//!
//! Why text: the ops are what the kernel runs; a reviewer reads them to see what a probe
//! reads, and snapshots catch any change to them.

use detrix_common::{alu, op, Plan};

/// The ops of a plan as text, one per op (plus the stack capture, if any), for `detrix-agent resolve` and snapshots:
/// `reg rbp -24`, `deref 8 +0`, `emit_mem 4 @0`.
#[must_use]
pub fn describe_ops(plan: &Plan) -> Vec<String> {
    const REGS: [&str; 21] = [
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
        "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss",
    ];
    plan.active_ops()
        .iter()
        .map(|o| {
            let v = o.value;
            match o.kind {
                op::REG => format!(
                    "v{v}: reg {} {:+}",
                    REGS.get(usize::from(o.reg)).unwrap_or(&"?"),
                    o.imm
                ),
                op::CONST => format!("v{v}: const {:#x}", o.imm),
                op::ADD => format!("v{v}: add {:+}", o.imm),
                op::DEREF => format!("v{v}: deref {} {:+}", o.len, o.imm),
                op::EMIT_ACC => format!("v{v}: emit_acc {} @{}", o.len, o.dst),
                op::EMIT_MEM if o.reg & op::EMIT_MEM_NIL_ZEROS != 0 => format!(
                    "v{v}: emit_mem {} {:+} @{} (nil: zeros)",
                    o.len, o.imm, o.dst
                ),
                op::EMIT_MEM => format!("v{v}: emit_mem {} {:+} @{}", o.len, o.imm, o.dst),
                op::EMIT_STR => format!("v{v}: emit_str {} {:+} @{}", o.len, o.imm, o.dst),
                op::EMIT_VAR => format!("v{v}: emit_var {} @{}", o.len, o.dst),
                op::HDR => {
                    let (ptr, len) = o.hdr_offsets();
                    format!("v{v}: hdr @{} ptr+{ptr} len+{len} x{}", o.dst, o.imm)
                }
                op::SKIP_LE => format!("v{v}: skip {} if @{} <= {}", o.len, o.dst, o.imm),
                op::END_LE => format!("v{v}: end if @{} <= {}", o.dst, o.imm),
                op::PUSH => format!("v{v}: push"),
                op::ALU => {
                    let code = o.reg & !alu::IMM;
                    let name = alu::NAMES.get(usize::from(code)).unwrap_or(&"?");
                    if alu::is_unary(code) {
                        format!("v{v}: {name}")
                    } else if o.reg & alu::IMM != 0 {
                        format!("v{v}: {name} {}", o.imm)
                    } else {
                        format!("v{v}: {name} pop")
                    }
                }
                op::STASH => {
                    const DWARF: [&str; 16] = [
                        "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                        "r11", "r12", "r13", "r14", "r15",
                    ];
                    let reg = DWARF.get(usize::from(o.reg)).unwrap_or(&"?");
                    if o.len == 0 {
                        format!("v{v}: entry {reg} of frame at acc")
                    } else {
                        format!("v{v}: entry {reg} of frame at acc, else {} ops", o.len)
                    }
                }
                k => format!("v{v}: op {k}"),
            }
        })
        .chain((plan.stack.len != 0).then(|| {
            format!(
                "v{}: ustack {} @{}",
                plan.stack.value, plan.stack.len, plan.stack.dst
            )
        }))
        .collect()
}
