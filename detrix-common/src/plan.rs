//! The plan ABI: what the agent writes into a probe's slot and the eBPF program interprets at
//! every hit — the op kinds ([`op`]) and one op ([`PlanOp`]), the registers a uprobe sees
//! ([`pt_regs`]), the in-kernel condition ([`Condition`]), the stack capture and the plan
//! itself ([`Plan`]), and the rate limiter's state.
//!
//! Why one file: these are the agent→program half of the contract, read together whenever
//! an op changes (bump [`crate::PLAN_ABI`]); the program→agent half, the events and rings,
//! is `event.rs`.

use crate::{MAX_OPS, MAX_VALUES, PLAN_ABI};

/// Plan op kinds (`PlanOp::kind`). Kept as `u8` constants: Rust enums don't cross the boundary.
pub mod op {
    /// `acc = regs[reg] + imm` where `reg` is an index into `pt_regs` (see [`crate::pt_regs`]).
    pub const REG: u8 = 1;
    /// `acc = imm + load_bias` — a link-time address made absolute (`imm` is already relocated by
    /// the agent; the op exists so a plan can start from a constant).
    pub const CONST: u8 = 2;
    /// `acc = acc + imm` (wrapping).
    pub const ADD: u8 = 3;
    /// `acc = *(uN *)(acc + imm)` with `len` ∈ {1,2,4,8} bytes, zero-extended. A fault marks
    /// the value.
    pub const DEREF: u8 = 4;
    /// Write the low `len` bytes of `acc` to `data[dst..]` (a value held in a register).
    pub const EMIT_ACC: u8 = 5;
    /// Copy `len` bytes of user memory at `acc + imm` to `data[dst..]`. With
    /// [`EMIT_MEM_NIL_ZEROS`] in `reg`, a failed read from `acc == 0` (a nil pointer) is not a
    /// fault: the bytes are zeros (`bpf_probe_read_user` zeroes its destination when it
    /// fails), so headers inside them read as empty and whatever the plan follows from them
    /// later copies nothing.
    pub const EMIT_MEM: u8 = 6;
    /// `PlanOp::reg` flag of [`EMIT_MEM`]: a nil source gives zeros, not a fault (ABI 4). For
    /// a pointer inside a copied value, followed after it with `HDR` + `EMIT_MEM`: Delve shows
    /// a nil one as `*main.T nil`, the capture goes on.
    pub const EMIT_MEM_NIL_ZEROS: u8 = 1;
    /// Copy a NUL-terminated user string at `acc + imm` to `data[dst..]`, at most `len` bytes
    /// including the NUL; the value's length is the string length; `TRUNCATED` when it filled.
    pub const EMIT_STR: u8 = 7;
    // 8, 9, 10 were SAVE, RESTORE and LEN (ABI 1): a counted header is now read back from the
    // event with `HDR` instead of from the target a second time. Not reused.
    /// Copy `min(count, len)` bytes of user memory at `acc` to `data[dst..]` (Go strings and
    /// slices, Rust `&str`/`String`/`Vec`, C++ `std::string`); `TRUNCATED` when `count > len`.
    /// `acc` and `count` come from the `HDR` before it.
    pub const EMIT_VAR: u8 = 11;
    /// Copy the user stack's return addresses: not an op of the loop (it would multiply the
    /// verifier's paths) but [`crate::Plan::stack`], run once after the ops; this code only
    /// names it in descriptions.
    pub const EMIT_USTACK: u8 = 12;
    /// Read a counted sequence's header (pointer, length) back from the event, where an
    /// earlier emit of this hit copied it: `acc = u64 at data[dst + (len & 0xff)]` (the
    /// pointer), `count = u64 at data[dst + (len >> 8)] * imm` (`imm` = element size), for an
    /// `EMIT_VAR` after it. Nothing is read from the target, so the pointer and length are the
    /// ones the copied header shows, and a string inside a copied struct or slice costs two ops.
    pub const HDR: u8 = 13;
    /// `if u64 at data[dst] <= imm as u64`: skip the next `len` ops of the plan (not a fault).
    /// Guards the ops of element `imm` of a slice whose length was copied to `data[dst]`: the
    /// data past the copied elements is stale, so their headers must not be followed.
    pub const SKIP_LE: u8 = 14;
    /// `if u64 at data[dst] <= imm as u64`: the value is complete, its remaining ops (wherever
    /// they are in the plan) are skipped, not a fault. Stops at a nil pointer (`imm` 0) whose
    /// pointee would otherwise be read.
    pub const END_LE: u8 = 15;
    /// Push `acc` on the value's expression stack ([`crate::EXPR_STACK`] deep; a full stack
    /// is a fault). With [`ALU`], evaluates a DWARF expression the compiler wrote for a value
    /// it never stored (`x != 0`, `x * 6`): its operands are computed one after the other,
    /// each left in `acc` and pushed, and combined by `ALU` (ABI 6).
    pub const PUSH: u8 = 16;
    /// `acc = alu::eval(reg & !alu::IMM, a, b)`: `b` is `acc`, `a` is popped from the
    /// expression stack; with [`crate::alu::IMM`] in `reg`, `a` is `acc` and `b` is `imm`
    /// (no pop). Unary codes use `acc` alone. An empty stack or a division by zero is a
    /// fault (ABI 6).
    pub const ALU: u8 = 17;
    /// `acc = ` DWARF register `reg` (0..[`crate::STASH_REGS`]) as it was when the frame whose
    /// CFA is `acc` entered its function, saved there by the entry probe (`detrix_stash`)
    /// under stash id `imm` ([`crate::StashKey`]): a parameter the code has since clobbered
    /// (`DW_OP_entry_value`). With `len` > 0 the next `len` ops compute the same value another
    /// way (from the caller's call site) and are skipped when the slot is found; without a
    /// slot they run. With `len` 0 a missing slot is a fault (ABI 7).
    pub const STASH: u8 = 18;
}

/// Depth of a value's expression stack ([`op::PUSH`]): the deepest DWARF expression a plan
/// evaluates in the kernel needs this many saved operands. Small and fixed, so the program's
/// stack frame stays bounded.
pub const EXPR_STACK: usize = 4;

/// Indices into x86-64 `struct pt_regs` (the kernel's order), which is what a uprobe sees.
pub mod pt_regs {
    pub const R15: u8 = 0;
    pub const R14: u8 = 1;
    pub const R13: u8 = 2;
    pub const R12: u8 = 3;
    pub const RBP: u8 = 4;
    pub const RBX: u8 = 5;
    pub const R11: u8 = 6;
    pub const R10: u8 = 7;
    pub const R9: u8 = 8;
    pub const R8: u8 = 9;
    pub const RAX: u8 = 10;
    pub const RCX: u8 = 11;
    pub const RDX: u8 = 12;
    pub const RSI: u8 = 13;
    pub const RDI: u8 = 14;
    pub const ORIG_RAX: u8 = 15;
    pub const RIP: u8 = 16;
    pub const CS: u8 = 17;
    pub const EFLAGS: u8 = 18;
    pub const RSP: u8 = 19;
    pub const SS: u8 = 20;

    /// DWARF x86-64 register number (System V psABI, table 3.36) → `pt_regs` index.
    /// `None` for registers a uprobe cannot see (XMM, x87, segment bases).
    #[must_use]
    pub const fn from_dwarf(dwarf: u16) -> Option<u8> {
        Some(match dwarf {
            0 => RAX,
            1 => RDX,
            2 => RCX,
            3 => RBX,
            4 => RSI,
            5 => RDI,
            6 => RBP,
            7 => RSP,
            8 => R8,
            9 => R9,
            10 => R10,
            11 => R11,
            12 => R12,
            13 => R13,
            14 => R14,
            15 => R15,
            16 => RIP,
            _ => return None,
        })
    }
}

/// One step of a plan. 16 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PlanOp {
    /// One of [`op`].
    pub kind: u8,
    /// `pt_regs` index for [`op::REG`]; flags for [`op::EMIT_MEM`]
    /// ([`op::EMIT_MEM_NIL_ZEROS`]).
    pub reg: u8,
    /// Which value (0..[`MAX_VALUES`]) this op belongs to: a fault skips the rest of its ops.
    pub value: u8,
    pub _pad: u8,
    /// Byte count for `DEREF`/`EMIT_*`; for `HDR` the pointer's (low byte) and the length's
    /// (high byte) offsets in the header; for `SKIP_LE` the number of ops to skip.
    pub len: u16,
    /// Destination offset in [`Event::data`](crate::Event::data) for `EMIT_*`; where `HDR`,
    /// `SKIP_LE` and `END_LE` read from.
    pub dst: u16,
    /// Immediate: the constant of `CONST`/`ADD`, the offset added by `REG`, `DEREF` and
    /// `EMIT_MEM`/`EMIT_STR` (so `reg + off`, `*(p + off)` take one op, not two).
    pub imm: i64,
}
const _: () = assert!(core::mem::size_of::<PlanOp>() == 16);
const _: () = assert!(core::mem::offset_of!(PlanOp, len) == 4);
const _: () = assert!(core::mem::offset_of!(PlanOp, dst) == 6);
const _: () = assert!(core::mem::offset_of!(PlanOp, imm) == 8);

/// Building and reading ops, for every user-space reader of the encoding (the agent's plan
/// builder, placement, forwarding and the op text). The eBPF program reads the fields itself,
/// in the shape the verifier accepts (its `run_ops` loop): each field once, bounded at the
/// point of use.
impl PlanOp {
    /// An op of `kind` for value 0, writing at offset 0 (see [`op`] for what `reg`, `len`
    /// and `imm` mean per kind).
    #[must_use]
    pub const fn new(kind: u8, reg: u8, len: u16, imm: i64) -> Self {
        Self {
            kind,
            reg,
            value: 0,
            _pad: 0,
            len,
            dst: 0,
            imm,
        }
    }

    /// The same op with destination (or source, for `HDR`/`SKIP_LE`/`END_LE`) `dst`.
    #[must_use]
    pub const fn at(mut self, dst: u16) -> Self {
        self.dst = dst;
        self
    }

    /// [`op::HDR`]: reads a header copied at `dst` whose pointer is at byte `ptr_off` and
    /// length at byte `len_off` of it (both below 256), elements `stride` bytes each.
    #[must_use]
    pub const fn hdr(ptr_off: u8, len_off: u8, stride: i64, dst: u16) -> Self {
        Self::new(op::HDR, 0, ptr_off as u16 | ((len_off as u16) << 8), stride).at(dst)
    }

    /// For [`op::HDR`]: the offsets of the pointer and of the length in the header.
    #[must_use]
    pub const fn hdr_offsets(&self) -> (u16, u16) {
        (self.len & 0xff, self.len >> 8)
    }

    /// The `pt_regs` index an [`op::REG`] reads; `None` for every other op.
    #[must_use]
    pub const fn reads_reg(&self) -> Option<u8> {
        if self.kind == op::REG {
            Some(self.reg)
        } else {
            None
        }
    }
}

impl Plan {
    /// The ops in use.
    #[must_use]
    pub fn active_ops(&self) -> &[PlanOp] {
        let n = (self.n_ops as usize).min(MAX_OPS);
        &self.ops[..n]
    }
}

/// Condition kinds (`Condition::kind`).
pub mod cond {
    /// No condition: every hit that passes the rate limit is emitted.
    pub const NONE: u8 = 0;
    /// Compare the value as a signed integer of `size` bytes with `imm`.
    pub const INT: u8 = 1;
    /// Compare the value as an unsigned integer of `size` bytes with `imm` (as u64).
    pub const UINT: u8 = 2;
    /// Compare an IEEE double: both sides mapped to order-preserving u64 keys by the agent
    /// (`imm`) and the program ([`crate::f64_key`]), since BPF has no floating point.
    pub const F64: u8 = 3;
    /// The captured string equals `bytes[..len]` exactly.
    pub const STR_EQ: u8 = 4;
    /// The captured string starts with `bytes[..len]`.
    pub const STR_PREFIX: u8 = 5;

    /// Comparison operators (`Condition::cmp`), for the numeric kinds; `NE` also negates the
    /// string kinds.
    pub const EQ: u8 = 0;
    pub const NE: u8 = 1;
    pub const LT: u8 = 2;
    pub const LE: u8 = 3;
    pub const GT: u8 = 4;
    pub const GE: u8 = 5;
}

/// Longest string constant a condition can compare with.
pub const COND_STR_BYTES: usize = 32;

/// A condition evaluated in the kernel on one captured value, after the ops ran: a false
/// condition discards the event before it costs a ring-buffer copy or a wakeup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Condition {
    /// One of [`cond`]'s kinds.
    pub kind: u8,
    /// One of [`cond`]'s operators.
    pub cmp: u8,
    /// Which value is compared.
    pub value: u8,
    /// Integer size in bytes (1, 2, 4, 8).
    pub size: u8,
    /// String constant length.
    pub len: u16,
    /// Offset of the value in [`Event::data`](crate::Event::data).
    pub dst: u16,
    pub imm: i64,
    pub bytes: [u8; COND_STR_BYTES],
}
const _: () = assert!(core::mem::size_of::<Condition>() == 48);
const _: () = assert!(core::mem::offset_of!(Condition, imm) == 8);

impl Condition {
    /// No condition.
    pub const NONE: Self = Self {
        kind: cond::NONE,
        cmp: 0,
        value: 0,
        size: 0,
        len: 0,
        dst: 0,
        imm: 0,
        bytes: [0; COND_STR_BYTES],
    };
}

/// Maps an IEEE-754 double's bits to a u64 whose unsigned order is the doubles' numeric order
/// (negative numbers flipped entirely, positive ones get the sign bit set).
#[must_use]
pub const fn f64_key(bits: u64) -> u64 {
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// What the eBPF program does at a hit of the probe whose cookie is this plan's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// [`PLAN_ABI`]; a slot with another number (or 0: never written) is ignored and counted
    /// as `no_plan`.
    pub abi: u32,
    /// Only hits whose thread-group id equals this are captured (0 = any process). A file-backed
    /// uprobe fires in every process mapping the binary; this keeps the others out.
    pub tgid: u32,
    /// Ops used, ≤ [`MAX_OPS`].
    pub n_ops: u32,
    /// Values the event carries, ≤ [`MAX_VALUES`].
    pub n_values: u32,
    /// Bytes of [`Event::data`](crate::Event::data) the ops write
    /// (0..=[`EVENT_DATA_BYTES`](crate::EVENT_DATA_BYTES)); only the header and this many bytes go
    /// into the ring.
    pub data_len: u32,
    /// Go targets: offset of `goid` in `runtime.g`, read through R14 (which holds `g` in Go
    /// code on amd64) into [`EventHeader::goid`](crate::EventHeader::goid); 0 = not Go.
    pub goid_offset: u32,
    /// Token bucket as GCRA, one per probe: one event "costs" `rate_interval_ns`; a hit passes when
    /// the bucket's theoretical arrival time is at most `rate_burst_ns` ahead of now.
    /// 0 = unlimited.
    pub rate_interval_ns: u64,
    pub rate_burst_ns: u64,
    pub cond: Condition,
    /// The user stack, captured after the ops when `stack.len > 0`.
    pub stack: StackCapture,
    /// Where each value's bytes start in [`Event::data`](crate::Event::data) (ABI 7): when a step
    /// of value `i` faults, the program writes the address it could not read there (8 bytes; the
    /// plan gives every value with ops at least 8) and the step's index into the value's
    /// [`ValueMeta::len`](crate::ValueMeta::len), so the agent can say which step failed and where.
    pub value_dst: [u16; MAX_VALUES],
    pub ops: [PlanOp; MAX_OPS],
}
const _: () = assert!(core::mem::offset_of!(Plan, rate_interval_ns) == 24);
const _: () = assert!(core::mem::offset_of!(Plan, cond) == 40);
const _: () = assert!(core::mem::offset_of!(Plan, stack) == 88);
const _: () = assert!(core::mem::offset_of!(Plan, value_dst) == 96);
const _: () = assert!(core::mem::offset_of!(Plan, ops) == 96 + 2 * MAX_VALUES);
const _: () = assert!(core::mem::size_of::<Plan>() == 96 + 2 * MAX_VALUES + 16 * MAX_OPS);
const _: () = assert!(MAX_VALUES <= 64 && MAX_VALUES.is_power_of_two());

/// Where the user stack's return addresses go (`bpf_get_stack` with `BPF_F_USER_STACK`: a
/// frame-pointer walk in the kernel, innermost first, 8 bytes a frame).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StackCapture {
    /// Offset in [`Event::data`](crate::Event::data).
    pub dst: u16,
    /// Bytes at most; 0 = no stack.
    pub len: u16,
    /// The value index whose length and flags the capture sets.
    pub value: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<StackCapture>() == 8);

impl Plan {
    /// An empty plan for this ABI: no ops, no condition, no rate limit.
    #[must_use]
    pub const fn empty() -> Self {
        Self {
            abi: PLAN_ABI,
            tgid: 0,
            n_ops: 0,
            n_values: 0,
            data_len: 0,
            goid_offset: 0,
            rate_interval_ns: 0,
            rate_burst_ns: 0,
            cond: Condition::NONE,
            stack: StackCapture {
                dst: 0,
                len: 0,
                value: 0,
                _pad: [0; 3],
            },
            value_dst: [0; MAX_VALUES],
            ops: [PlanOp {
                kind: 0,
                reg: 0,
                value: 0,
                _pad: 0,
                len: 0,
                dst: 0,
                imm: 0,
            }; MAX_OPS],
        }
    }
}

/// Per-slot mutable state of the rate limiter (GCRA theoretical arrival time).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateState {
    pub tat_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PT_REGS_COUNT;

    #[test]
    fn dwarf_registers_map_to_pt_regs() {
        assert_eq!(pt_regs::from_dwarf(6), Some(pt_regs::RBP));
        assert_eq!(pt_regs::from_dwarf(7), Some(pt_regs::RSP));
        assert_eq!(pt_regs::from_dwarf(5), Some(pt_regs::RDI));
        assert_eq!(pt_regs::from_dwarf(17), None, "xmm0 is not in pt_regs");
    }

    #[test]
    fn pt_regs_order_matches_kernel() {
        // struct pt_regs on x86-64: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di
        // orig_ax ip cs flags sp ss — 21 u64s.
        assert_eq!(usize::from(pt_regs::SS) + 1, PT_REGS_COUNT);
        assert_eq!(pt_regs::RIP, 16);
        assert_eq!(pt_regs::RSP, 19);
    }

    #[test]
    fn f64_keys_keep_numeric_order() {
        let xs: [f64; 8] = [-1e300, -2.5, -0.0, 0.0, 1e-300, 2.5, 3.0, 1e300];
        for w in xs.windows(2) {
            assert!(
                f64_key(w[0].to_bits()) <= f64_key(w[1].to_bits()),
                "{} vs {}",
                w[0],
                w[1]
            );
        }
        assert!(f64_key((-1.0f64).to_bits()) < f64_key(1.0f64.to_bits()));
    }

    #[test]
    fn empty_plan_is_valid_abi() {
        let p = Plan::empty();
        assert_eq!(p.abi, PLAN_ABI);
        assert_eq!(p.n_ops, 0);
    }
}
