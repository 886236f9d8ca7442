//! Types shared, byte for byte, by the eBPF program (`detrix-ebpf`) and the agent.
//!
//! Why one crate: a layout written twice drifts; here each type exists once, is `#[repr(C)]`
//! with explicit, zeroed padding, and carries compile-time size/offset assertions that both
//! sides compile. Only integers and fixed arrays cross the boundary: no `bool`, `usize`,
//! `Option` or Rust enums (their layout is not a contract).
//!
//! A **plan** is data, not code: a bounded list of [`PlanOp`]s that the one prebuilt eBPF program
//! interprets at every hit of the uprobe whose BPF cookie names the plan's slot. Each op
//! works on one 64-bit accumulator; `EMIT_*` ops copy bytes into the event's data area at a
//! fixed offset chosen by the agent, so nothing is read from the target later (it would be
//! stale or gone).
#![no_std]

/// Version of every layout in this crate. Bump on any change; the agent checks that the
/// embedded eBPF object was built with the same number.
pub const PLAN_ABI: u32 = 9;

/// Maximum number of probes (plan slots) one loaded program serves.
pub const MAX_PROBES: u32 = 512;
/// Maximum ops in one plan. The eBPF interpreter loop is bounded by this.
pub const MAX_OPS: usize = 128;
/// Maximum captured values per event: 64, so a breakpoint-mode snapshot holds every local of
/// a large function with the stack beside it (ABI 9; 16 before). At most 64: the program keeps
/// one bit per value in a `u64` (faulted, done), and only `n_values` metas go into a record,
/// so a small plan's events do not grow.
pub const MAX_VALUES: usize = 64;
/// Bytes of captured data per event (all values together).
pub const EVENT_DATA_BYTES: usize = 4096;
/// Largest single copy (one `EMIT_MEM` or `EMIT_STR`).
pub const MAX_COPY_BYTES: usize = 2048;
/// Number of registers in x86-64 `struct pt_regs`, the uprobe context.
pub const PT_REGS_COUNT: usize = 21;

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

/// Registers an entry probe saves: the general registers by DWARF number (rax, rdx, rcx, rbx,
/// rsi, rdi, rbp, rsp, r8–r15).
pub const STASH_REGS: usize = 16;
/// Frames whose entry registers are kept at once (an LRU map: a slot of a frame that never
/// reached its line, or of a thread that exited, is evicted by newer ones, never read by
/// another frame — the key names the frame).
pub const STASH_SLOTS: u32 = 8192;

/// Which frame a stash slot belongs to: the thread, the entry probe's stash id (unique per
/// attach, never reused while the program is loaded) and the frame's CFA (the stack pointer
/// before the call pushed the return address: `rsp + 8` at the function's first instruction,
/// the CFI's CFA at the line). Live frames of one thread have distinct CFAs, so recursion and
/// re-entry each find their own slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct StashKey {
    pub pid_tgid: u64,
    pub id: u64,
    pub cfa: u64,
}
const _: () = assert!(core::mem::size_of::<StashKey>() == 24);

/// The registers saved at a function's entry, by DWARF number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StashRegs {
    pub regs: [u64; STASH_REGS],
}
const _: () = assert!(core::mem::size_of::<StashRegs>() == 8 * STASH_REGS);

/// Depth of a value's expression stack ([`op::PUSH`]): the deepest DWARF expression a plan
/// evaluates in the kernel needs this many saved operands. Small and fixed, so the program's
/// stack frame stays bounded.
pub const EXPR_STACK: usize = 4;

/// Operations of [`op::ALU`], with DWARF's semantics for the generic (address-sized) type:
/// `div` and the comparisons signed, `mod` unsigned, `shr` logical, `shra` arithmetic, shifts
/// of 64 or more giving 0 (or the sign, for `shra`); a comparison gives 1 or 0.
pub mod alu {
    pub const ADD: u8 = 0;
    pub const SUB: u8 = 1;
    pub const MUL: u8 = 2;
    pub const DIV: u8 = 3;
    pub const MOD: u8 = 4;
    pub const AND: u8 = 5;
    pub const OR: u8 = 6;
    pub const XOR: u8 = 7;
    pub const SHL: u8 = 8;
    pub const SHR: u8 = 9;
    pub const SHRA: u8 = 10;
    pub const EQ: u8 = 11;
    pub const NE: u8 = 12;
    pub const LT: u8 = 13;
    pub const LE: u8 = 14;
    pub const GT: u8 = 15;
    pub const GE: u8 = 16;
    /// Unary: `!acc`.
    pub const NOT: u8 = 17;
    /// Unary: `-acc`.
    pub const NEG: u8 = 18;
    /// Unary: `|acc|` as a signed number.
    pub const ABS: u8 = 19;
    /// Flag in `PlanOp::reg`: the right operand is the op's `imm`, nothing is popped.
    pub const IMM: u8 = 0x80;
    /// Names, by code, for the op text.
    pub const NAMES: [&str; 20] = [
        "add", "sub", "mul", "div", "mod", "and", "or", "xor", "shl", "shr", "shra", "eq", "ne",
        "lt", "le", "gt", "ge", "not", "neg", "abs",
    ];

    /// Whether `code` takes one operand.
    #[must_use]
    pub const fn is_unary(code: u8) -> bool {
        matches!(code, NOT | NEG | ABS)
    }

    /// `a OP b` (unary codes: `OP a`); `None` for a division by zero or an unknown code. One
    /// definition for the program and the agent (which folds constant operands with it), so
    /// both compute the same value. No signed division instruction is used: the program's
    /// target (BPF before v4) has none.
    #[inline(always)]
    #[must_use]
    pub fn eval(code: u8, a: u64, b: u64) -> Option<u64> {
        let (sa, sb) = (a as i64, b as i64);
        Some(match code {
            ADD => a.wrapping_add(b),
            SUB => a.wrapping_sub(b),
            MUL => a.wrapping_mul(b),
            DIV => {
                if b == 0 {
                    return None;
                }
                let q = sa.unsigned_abs() / sb.unsigned_abs();
                if (sa < 0) != (sb < 0) {
                    q.wrapping_neg()
                } else {
                    q
                }
            }
            MOD => {
                if b == 0 {
                    return None;
                }
                a % b
            }
            AND => a & b,
            OR => a | b,
            XOR => a ^ b,
            SHL => {
                if b >= 64 {
                    0
                } else {
                    a << b
                }
            }
            SHR => {
                if b >= 64 {
                    0
                } else {
                    a >> b
                }
            }
            SHRA => {
                if b >= 64 {
                    (sa >> 63) as u64
                } else {
                    (sa >> b) as u64
                }
            }
            EQ => u64::from(a == b),
            NE => u64::from(a != b),
            LT => u64::from(sa < sb),
            LE => u64::from(sa <= sb),
            GT => u64::from(sa > sb),
            GE => u64::from(sa >= sb),
            NOT => !a,
            NEG => a.wrapping_neg(),
            ABS => sa.unsigned_abs(),
            _ => return None,
        })
    }
}

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

/// Per-value flags in [`ValueMeta::flags`].
pub mod value_flags {
    /// All ops of the value ran.
    pub const OK: u16 = 1;
    /// A user-memory read failed (bad pointer, page not present); the data is not valid. The
    /// meta's `len` is then the index of the step that faulted ([`FAULT_STACK`] for the stack
    /// copy), and the value's first 8 bytes the address it could not read (ABI 7).
    pub const READ_FAULT: u16 = 2;
    /// `ValueMeta::len` of a faulted value whose fault was the user stack copy.
    pub const FAULT_STACK: u16 = 0xffff;
    /// The copy hit its bound; the data is a prefix.
    pub const TRUNCATED: u16 = 4;
}

/// Per-event flags in [`EventHeader::flags`].
pub mod event_flags {
    /// At least one value has `READ_FAULT`.
    pub const READ_FAULT: u32 = 1;
    /// At least one value has `TRUNCATED`.
    pub const TRUNCATED: u32 = 2;
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
    /// Destination offset in [`Event::data`] for `EMIT_*`; where `HDR`, `SKIP_LE` and `END_LE`
    /// read from.
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
    /// Offset of the value in [`Event::data`].
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
    /// Bytes of [`Event::data`] the ops write (0..=[`EVENT_DATA_BYTES`]); only the header and
    /// this many bytes go into the ring.
    pub data_len: u32,
    /// Go targets: offset of `goid` in `runtime.g`, read through R14 (which holds `g` in Go
    /// code on amd64) into [`EventHeader::goid`]; 0 = not Go.
    pub goid_offset: u32,
    /// Token bucket as GCRA, one per probe: one event "costs" `rate_interval_ns`; a hit passes when
    /// the bucket's theoretical arrival time is at most `rate_burst_ns` ahead of now.
    /// 0 = unlimited.
    pub rate_interval_ns: u64,
    pub rate_burst_ns: u64,
    pub cond: Condition,
    /// The user stack, captured after the ops when `stack.len > 0`.
    pub stack: StackCapture,
    /// Where each value's bytes start in [`Event::data`] (ABI 7): when a step of value `i`
    /// faults, the program writes the address it could not read there (8 bytes; the plan
    /// gives every value with ops at least 8) and the step's index into the value's
    /// [`ValueMeta::len`], so the agent can say which step failed and where.
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
    /// Offset in [`Event::data`].
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

/// Wakeup policy, set by the agent before load (a global in the object): the program rings the
/// doorbell when a CPU's backlog of unread events grows past this many bytes, once per
/// crossing; the agent's flush timer collects everything else. 0 = ring for every event.
///
/// Why so rarely: a wakeup costs 3–7 µs here (toolchain.md §8; `cargo xtask bench`, "wakeup
/// per event"); even one per 64 events added ~100 ns to every hit, more than the rest of the
/// program. A quarter of the ring leaves room for three more quarters to arrive before the
/// agent, woken, has drained it.
pub const DEFAULT_WAKEUP_BYTES: u64 = (CPU_RING_BYTES / 4) as u64;

/// Length and flags of one captured value inside [`Event::data`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ValueMeta {
    /// Bytes written (for strings: without the NUL).
    pub len: u16,
    /// [`value_flags`].
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<ValueMeta>() == 4);

/// Fixed part of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// [`PLAN_ABI`], so a decoder never misreads a record from another build.
    pub abi: u32,
    /// The uprobe's cookie: plan slot in the low 16 bits, a generation above.
    pub probe_id: u32,
    pub pid: u32,
    pub tid: u32,
    /// `bpf_ktime_get_ns()` at the hit (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Goroutine id for Go targets, else 0.
    pub goid: u64,
    /// [`event_flags`].
    pub flags: u32,
    pub n_values: u32,
    pub values: [ValueMeta; MAX_VALUES],
}
impl Default for EventHeader {
    /// All zero (core has no `Default` for arrays of more than 32).
    fn default() -> Self {
        Self {
            abi: 0,
            probe_id: 0,
            pid: 0,
            tid: 0,
            ktime_ns: 0,
            goid: 0,
            flags: 0,
            n_values: 0,
            values: [ValueMeta { len: 0, flags: 0 }; MAX_VALUES],
        }
    }
}
/// Size of [`EventHeader`], the header as the agent hands it on: the [`WireHeader`] fields and
/// every value's [`ValueMeta`]. (On the wire the metas follow the data; see [`WireHeader`].)
pub const EVENT_HEADER_BYTES: usize = 40 + 4 * MAX_VALUES;
const _: () = assert!(core::mem::size_of::<EventHeader>() == EVENT_HEADER_BYTES);
const _: () = assert!(core::mem::offset_of!(EventHeader, ktime_ns) == 16);
const _: () = assert!(core::mem::offset_of!(EventHeader, goid) == 24);
const _: () = assert!(core::mem::offset_of!(EventHeader, flags) == 32);
const _: () = assert!(core::mem::offset_of!(EventHeader, values) == 40);

/// Fixed part of every record, as the program writes it: the [`EventHeader`] fields without the
/// metas. A record is this header, then the data (`Plan::data_len` bytes, padded to
/// [`meta_offset`]), then `n_values` [`ValueMeta`]s (padded to 8 bytes).
///
/// Why the metas go last and only `n_values` of them: a 1-int event is then 64 bytes with its
/// ring prefix, one cache line, instead of 120 with sixteen metas (296 with [`MAX_VALUES`]) mostly unused; the program
/// writes less per hit and a ring holds twice the events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WireHeader {
    pub abi: u32,
    pub probe_id: u32,
    pub pid: u32,
    pub tid: u32,
    pub ktime_ns: u64,
    pub goid: u64,
    pub flags: u32,
    pub n_values: u32,
}
/// Size of [`WireHeader`].
pub const WIRE_HEADER_BYTES: usize = 40;
const _: () = assert!(core::mem::size_of::<WireHeader>() == WIRE_HEADER_BYTES);
const _: () = assert!(
    core::mem::offset_of!(WireHeader, n_values) == core::mem::offset_of!(EventHeader, n_values)
);

/// Where the metas start in a record's data area, for a plan with `data_len` bytes of values.
#[must_use]
pub const fn meta_offset(data_len: usize) -> usize {
    (data_len + 7) & !7
}

/// Bytes the metas of `n_values` values take at the end of a record.
#[must_use]
pub const fn metas_bytes(n_values: usize) -> usize {
    (4 * n_values + 7) & !7
}

/// A whole event as built in place in a [`CpuRing`]. `data` has [`MAX_COPY_BYTES`] of slack
/// past [`EVENT_DATA_BYTES`] so the verifier can prove `dst + len` in bounds from the two
/// separate masks, and room there for the metas after a full data area.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub header: WireHeader,
    pub data: [u8; EVENT_DATA_BYTES + MAX_COPY_BYTES],
}
const _: () = assert!(core::mem::offset_of!(Event, data) == WIRE_HEADER_BYTES);
const _: () = assert!(MAX_COPY_BYTES >= metas_bytes(MAX_VALUES));

/// Bytes of record space in each CPU's [`CpuRing`] (a power of two: positions are masked).
pub const CPU_RING_BYTES: usize = 1 << 19;
/// Bytes of a record's prefix in a [`CpuRing`]: the length of the [`Event`] bytes that follow.
pub const RECORD_PREFIX_BYTES: usize = 8;
/// Room past [`CPU_RING_BYTES`] so a record that starts near the end can be written (and read)
/// whole, without wrapping: the largest record is the prefix plus a whole [`Event`]. Sized so
/// the ring is a whole number of pages.
pub const CPU_RING_SLACK: usize = 8192 - 128;
const _: () = assert!(CPU_RING_SLACK >= RECORD_PREFIX_BYTES + core::mem::size_of::<Event>());

/// One CPU's event ring: a single-producer, single-consumer queue in a `BPF_F_MMAPABLE` array
/// map that the agent maps into its address space.
///
/// Why not `BPF_MAP_TYPE_RINGBUF` for every event: its reserve takes a spinlock with
/// interrupts off and copies the record, which measured here (`cargo xtask bench`, a
/// virtualized CPU with Safe-RET) at ~270 ns per event — a third of the whole uprobe. Here the
/// program builds the event **in place** at `head`, publishes it with one atomic add, and
/// the ring buffer map is kept only as a doorbell that wakes the agent when the backlog passes
/// [`DEFAULT_WAKEUP_BYTES`].
///
/// Protocol. Producer (the program on this CPU; `busy` keeps a second run on the same CPU —
/// possible only on a preemptible kernel — out): if `head + len - tail > CPU_RING_BYTES` the
/// hit is dropped (counted); else it writes the record at `data[head % CPU_RING_BYTES..]`
/// (prefix: `len` as u64, then the [`Event`] bytes) and adds the record's rounded length to
/// `head`. Consumer (the agent): reads `head`, reads every record from `tail` to it, then
/// stores `tail`. `head` and `tail` only grow; they live on separate cache lines.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CpuRing {
    /// Bytes ever published (producer-owned).
    pub head: u64,
    /// Nonzero while a program run owns this ring.
    pub busy: u64,
    pub _pad0: [u64; 6],
    /// Bytes ever consumed (consumer-owned).
    pub tail: u64,
    pub _pad1: [u64; 7],
    pub data: [u8; CPU_RING_BYTES + CPU_RING_SLACK],
}
/// Offset of [`CpuRing::data`].
pub const CPU_RING_DATA_OFFSET: usize = 128;
const _: () = assert!(core::mem::offset_of!(CpuRing, head) == 0);
const _: () = assert!(core::mem::offset_of!(CpuRing, tail) == 64);
const _: () = assert!(core::mem::offset_of!(CpuRing, data) == CPU_RING_DATA_OFFSET);
const _: () = assert!(core::mem::size_of::<CpuRing>().is_multiple_of(4096));

/// Length of a record holding `event_bytes` of [`Event`], as it advances `head`: 8-byte aligned.
#[must_use]
pub const fn record_span(event_bytes: usize) -> usize {
    (RECORD_PREFIX_BYTES + event_bytes + 7) & !7
}

/// Exact per-probe counters, one copy per CPU (summed by the agent).
///
/// Invariant: `hits == emitted + dropped_ring_full + rate_limited + condition_false + no_plan
/// + other_process`. `read_faults` counts events (emitted ones) that carry a faulted value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub hits: u64,
    pub emitted: u64,
    /// Hits not emitted because this CPU's [`CpuRing`] had no room for the event (or, on a
    /// preemptible kernel only, was being written by a run this one preempted).
    pub dropped_ring_full: u64,
    pub read_faults: u64,
    pub rate_limited: u64,
    pub condition_false: u64,
    /// Hits on a slot without a valid plan (a race with detach); never emitted.
    pub no_plan: u64,
    /// Hits from another process mapping the same binary; filtered in the kernel.
    pub other_process: u64,
    /// Nanoseconds spent in the program for this probe, estimated: one hit in eight (the first
    /// included) is timed and counts eight times (a clock read is a helper call; see the program).
    pub bpf_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 72);

impl Counters {
    /// Adds `other` field by field (summing CPUs, or a logpoint's copies).
    pub fn add(&mut self, other: &Counters) {
        self.hits += other.hits;
        self.emitted += other.emitted;
        self.dropped_ring_full += other.dropped_ring_full;
        self.read_faults += other.read_faults;
        self.rate_limited += other.rate_limited;
        self.condition_false += other.condition_false;
        self.no_plan += other.no_plan;
        self.other_process += other.other_process;
        self.bpf_ns += other.bpf_ns;
    }
}

/// One probe slot as the program sees it: this CPU's counters and a copy of the plan, in one
/// per-CPU map value (ABI 7).
///
/// Why together and per CPU: the hot path then does one map lookup for both (the plan was a
/// second, shared map), and the counters stay exact without atomics. The agent writes the same
/// plan into every CPU's copy and sums the counters over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub counters: Counters,
    pub plan: Plan,
}
const _: () = assert!(core::mem::offset_of!(Slot, plan) == 72);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all four): repr(C), integers and arrays of integers only, no implicit padding
    // (asserted above), every bit pattern valid.
    // SAFETY: see above.
    unsafe impl aya::Pod for super::PlanOp {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Plan {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Slot {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RateState {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::StashKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::StashRegs {}
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn alu_has_dwarf_semantics() {
        use alu::*;
        let m = |x: i64| x as u64;
        assert_eq!(
            eval(DIV, m(-100), 7),
            Some(m(-14)),
            "div is signed, truncating"
        );
        assert_eq!(eval(DIV, m(100), m(-7)), Some(m(-14)));
        assert_eq!(eval(DIV, 1, 0), None);
        assert_eq!(eval(MOD, 5011, 13), Some(6), "mod is unsigned");
        assert_eq!(eval(MOD, 1, 0), None);
        assert_eq!(eval(LT, m(-1), 1), Some(1), "comparisons are signed");
        assert_eq!(eval(GE, m(-1), 1), Some(0));
        assert_eq!(eval(NE, 3, 0), Some(1));
        assert_eq!(eval(EQ, 3, 3), Some(1));
        assert_eq!(
            eval(SHR, m(-8), 1),
            Some(u64::MAX >> 1 & !3),
            "shr is logical"
        );
        assert_eq!(eval(SHRA, m(-8), 1), Some(m(-4)), "shra is arithmetic");
        assert_eq!(eval(SHL, 1, 64), Some(0));
        assert_eq!(eval(SHRA, m(-8), 99), Some(u64::MAX));
        assert_eq!(eval(ABS, m(-5), 0), Some(5));
        assert_eq!(eval(NEG, 5, 0), Some(m(-5)));
        assert_eq!(eval(NOT, 0, 0), Some(u64::MAX));
        assert_eq!(eval(99, 0, 0), None);
        assert_eq!(NAMES.len(), usize::from(ABS) + 1);
        assert!(is_unary(NOT) && !is_unary(SUB));
    }

    #[test]
    fn empty_plan_is_valid_abi() {
        let p = Plan::empty();
        assert_eq!(p.abi, PLAN_ABI);
        assert_eq!(p.n_ops, 0);
    }
}
