//! The plan interpreter: one run of a plan's ops over a hit (`run_ops`), each op a
//! `bpf_loop` callback (`step`) that reads registers and user memory into the record being
//! built in this CPU's ring, and the per-CPU expression stack `PUSH`/`ALU` use. A plan of
//! register values only runs inline instead (`emit_registers`): on an emulated probe the
//! callbacks were a third of the program's time (`cargo xtask bench capture`: BPF time per
//! hit 125 → 83 ns for one forwarded int).
//!
//! Why apart from `main.rs`: the hit's path there (count, filter, rate, room, publish) and the
//! ops here change for different reasons; here every op is written in the shape the verifier
//! accepts (each field read once and bounded where it is used), which `main.rs` need not repeat.

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_probe_read_user, bpf_probe_read_user_str},
    macros::map,
    maps::PerCpuArray,
    programs::ProbeContext,
};
use detrix_common::{
    alu, event_flags, op, value_flags, Event, Plan, Slot, CPU_RING_BYTES, EVENT_DATA_BYTES,
    EXPR_STACK, MAX_COPY_BYTES, MAX_OPS, MAX_VALUES, PT_REGS_COUNT, RECORD_PREFIX_BYTES,
};

use crate::{copy_bounds, log, meta, stash, RINGS, SLOTS};

/// The expression stack of `PUSH`/`ALU`, one per CPU; only the run that owns this CPU's ring
/// (`busy`) uses it.
///
/// Why in a map and not in `Interp`: the program's stack is at its 512-byte limit, and the
/// verifier tracks every value on it exactly — a depth of 0, 1, 2… and ALU results of 0 or 1
/// made each `bpf_loop` iteration a new state, and verification ran past a million
/// instructions. Words in a map value are unknown to it, so each state is the same.
#[map]
static EXPR: PerCpuArray<ExprStack> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct ExprStack {
    /// Entries in use.
    sp: u64,
    /// An ALU result, stored and read back (see [`EXPR`] for why).
    out: u64,
    slots: [u64; EXPR_STACK],
}

/// Empties this CPU's expression stack (at the start of a run, and when a value faults: its
/// remaining ops, pops included, are skipped).
#[inline(always)]
fn reset_expr() {
    if let Some(x) = EXPR.get_ptr_mut(0) {
        // SAFETY: this CPU's map value, used only by the run owning this CPU's ring.
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*x).sp), 0) };
    }
}

/// `PUSH`: false when the stack is full (a fault).
#[inline(never)]
fn push(v: u64) -> bool {
    let Some(x) = EXPR.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: as in `reset_expr`; the slot index is masked below EXPR_STACK.
    unsafe {
        let sp = core::ptr::read_volatile(core::ptr::addr_of!((*x).sp));
        if sp >= EXPR_STACK as u64 {
            return false;
        }
        (*x).slots[(sp as usize) & (EXPR_STACK - 1)] = v;
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*x).sp), sp + 1);
    }
    true
}

/// `ALU`: the new accumulator, or `None` (a fault) for an empty stack or a division by zero.
#[inline(never)]
fn alu_op(reg: u8, acc: u64, imm: u64) -> Option<u64> {
    let x = EXPR.get_ptr_mut(0)?;
    let code = reg & !alu::IMM;
    let (a, b) = if alu::is_unary(code) {
        (acc, 0)
    } else if reg & alu::IMM != 0 {
        (acc, imm)
    } else {
        // SAFETY: as in `push`.
        unsafe {
            let sp = core::ptr::read_volatile(core::ptr::addr_of!((*x).sp));
            if sp == 0 || sp > EXPR_STACK as u64 {
                return None;
            }
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*x).sp), sp - 1);
            ((*x).slots[((sp - 1) as usize) & (EXPR_STACK - 1)], acc)
        }
    };
    let v = alu::eval(code, a, b)?;
    // SAFETY: as in `push`. Stored and read back so every result is the same unknown word to
    // the verifier.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*x).out), v);
        Some(core::ptr::read_volatile(core::ptr::addr_of!((*x).out)))
    }
}

/// The interpreter's state for the run that owns this CPU's ring (`busy`), one per CPU.
///
/// Why in a map and not on the program's stack: the verifier tracks every word of the stack
/// exactly, so each `bpf_loop` pass over `step` that changed `bad`, `done`, `skip_to` or
/// `count` was a new state to verify the callback from again, and the 224 bytes in the
/// caller's frame left the callback no room under the 512-byte limit on the combined stack.
/// On the stack, a kernel that gives uprobe programs no private stack refused the program
/// (`combined stack size of 2 calls is 576`, after 750 000 instructions processed; over the
/// million with `emit_registers` inlined too). In a map: 139 000 (`tests/verifier_budget.rs`
/// keeps it under half the limit). Words in a map value are unknown to it: one state per op.
#[map]
static RUN: PerCpuArray<Interp> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's [`Interp`]; `None` only if the lookup of index 0 fails (never, for a
/// one-entry array).
#[inline(always)]
pub(crate) fn this_run() -> Option<&'static mut Interp> {
    // SAFETY: this CPU's map value, used only by the run owning this CPU's ring (`busy`); each
    // caller drops its reference before a `bpf_loop` whose callback takes its own.
    RUN.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// State of one run of the interpreter (see [`RUN`]).
#[repr(C)]
pub(crate) struct Interp {
    pub(crate) slot: u32,
    pub(crate) cpu: u32,
    /// Where this run's record starts in the CPU's ring.
    pub(crate) pos: u32,
    /// Where the metas start in the record's data area.
    pub(crate) meta_off: u32,
    pub(crate) acc: u64,
    pub(crate) count: u64,
    /// Bit per value that faulted: its remaining ops are skipped.
    pub(crate) bad: u64,
    /// Bit per value that `END_LE` completed: its remaining ops are skipped, not a fault.
    pub(crate) done: u64,
    /// Ops with a lower index are skipped (`SKIP_LE`).
    pub(crate) skip_to: u64,
    pub(crate) regs: [u64; PT_REGS_COUNT],
}

/// The run's slot and the record it is building in its CPU's ring, as each `bpf_loop`
/// callback over the run (`step`, `log::report`) finds them; `None` if a lookup fails.
#[inline(always)]
pub(crate) fn run_record(st: &Interp) -> Option<(&'static Slot, &'static mut Event)> {
    let s = SLOTS.get(st.slot)?;
    let ring = RINGS.get_ptr_mut(st.cpu)?;
    // SAFETY: the ring this run owns (`busy`); the record at `pos` is the one being built, and
    // the ring's slack holds a whole Event past any masked position; records start 8-aligned.
    #[expect(clippy::cast_ptr_alignment, reason = "8-byte aligned: see SAFETY")]
    let ev = unsafe {
        &mut *(*ring)
            .data
            .as_mut_ptr()
            .add((st.pos as usize) & (CPU_RING_BYTES - 1))
            .add(RECORD_PREFIX_BYTES)
            .cast::<Event>()
    };
    Some((s, ev))
}

/// Interprets the plan's ops; returns whether any value faulted.
///
/// Why `bpf_loop` and not a bounded loop: the verifier walks every path of every iteration of
/// a bounded loop (≈ 1 s of load time at 48 ops, and over its 1 M-instruction limit as soon as
/// one more op kind is added); a `bpf_loop` callback is verified once.
#[inline(always)]
pub(crate) fn run_ops(
    ctx: &ProbeContext,
    slot: u32,
    n_ops: u32,
    cpu: u32,
    pos: u32,
    meta_off: u32,
) -> bool {
    {
        let Some(st) = this_run() else {
            // Unreachable for a one-entry array; a record with no values read says so.
            return true;
        };
        st.slot = slot;
        st.cpu = cpu;
        st.pos = pos;
        st.meta_off = meta_off;
        st.acc = 0;
        st.count = 0;
        st.bad = 0;
        st.done = 0;
        st.skip_to = 0;
        st.regs = registers(ctx);
    }
    reset_expr();
    let n = if n_ops as usize > MAX_OPS {
        MAX_OPS as u32
    } else {
        n_ops
    };
    // SAFETY: `step` has the callback signature bpf_loop expects; it finds its state in `RUN`
    // (no reference to it is held here across the call).
    unsafe { bpf_loop(n, step as *mut c_void, core::ptr::null_mut(), 0) };
    let Some(st) = this_run() else {
        return true;
    };
    let bad = st.bad;
    log::faults(bad);
    bad != 0
}

/// Most ops a plan of register values only ([`registers_only`]) may have: four values.
const INLINE_OPS: usize = 8;

/// Whether every op of the plan is `REG` (of a register `pt_regs` has) or `EMIT_ACC`, at
/// most [`INLINE_OPS`] of them: values held in registers — what a logpoint on optimized code
/// mostly reads once forwarding found the registers. Such a plan cannot fault, and runs
/// inline ([`emit_registers`]): no `bpf_loop` callbacks, no fault bookkeeping, no expression
/// stack — on an emulated probe that is a good part of what a hit costs beyond the trap.
#[inline(always)]
pub(crate) fn registers_only(plan: &Plan) -> bool {
    let n = plan.n_ops as usize;
    if n == 0 || n > INLINE_OPS {
        return false;
    }
    let mut k = 0;
    while k < INLINE_OPS {
        if k < n {
            let o = &plan.ops[k];
            let ok =
                (o.kind == op::REG && (o.reg as usize) < PT_REGS_COUNT) || o.kind == op::EMIT_ACC;
            if !ok {
                return false;
            }
        }
        k += 1;
    }
    true
}

/// Runs a plan [`registers_only`] accepted, exactly as [`step`] runs those ops.
#[inline(always)]
pub(crate) fn emit_registers(ctx: &ProbeContext, plan: &Plan, ev: &mut Event, meta_off: usize) {
    let n = plan.n_ops as usize;
    // The registers go where `run_ops` puts them, in `RUN`, not on the program's stack: 168
    // bytes there left the `bpf_loop` path no room under the 512-byte combined stack.
    let Some(st) = this_run() else {
        return;
    };
    st.regs = registers(ctx);
    let regs = &st.regs;
    let mut acc: u64 = 0;
    let mut k = 0;
    while k < INLINE_OPS {
        if k < n {
            let o = &plan.ops[k];
            if o.kind == op::REG {
                // Checked by `registers_only`; again here, where the verifier needs it.
                let ri = o.reg as usize;
                if ri < PT_REGS_COUNT {
                    acc = regs[ri].wrapping_add(o.imm as u64);
                }
            } else {
                let vi = (o.value as usize) & (MAX_VALUES - 1);
                let dst = (o.dst as usize) & (EVENT_DATA_BYTES - 1);
                let mut len = (o.len as usize) & 0xf;
                if len > 8 {
                    len = 8;
                }
                let bytes = acc.to_le_bytes();
                let mut b = 0;
                while b < 8 {
                    if b < len {
                        ev.data[dst + b] = bytes[b];
                    }
                    b += 1;
                }
                meta(ev, meta_off, vi).len = len as u16;
            }
        }
        k += 1;
    }
}

/// The probed thread's registers in `pt_regs` order (its fields' order), indexable: the
/// verifier lets the context be read at constant offsets only.
#[inline(always)]
fn registers(ctx: &ProbeContext) -> [u64; PT_REGS_COUNT] {
    // SAFETY: uprobe ctx points at the user registers saved on entry.
    let r = unsafe { &*ctx.regs };
    [
        r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx,
        r.rsi, r.rdi, r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss,
    ]
}

/// One op of the plan in slot `st.slot` (the callback of `bpf_loop`). Returns 1 to stop.
#[inline(never)]
extern "C" fn step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(st) = this_run() else {
        return 1;
    };
    let Some((s, ev)) = run_record(st) else {
        return 1;
    };
    let plan = &s.plan;
    let i = index as usize;
    if i >= MAX_OPS || i >= plan.n_ops as usize {
        return 1;
    }
    let o = &plan.ops[i];
    let vi = (o.value as usize) & (MAX_VALUES - 1);
    let mo = st.meta_off as usize;
    if (st.bad | st.done) & (1 << vi) != 0 || index < st.skip_to {
        return 0;
    }
    let mut fault = false;
    // The address a faulting step could not read (0 for a step that reads no memory).
    let mut addr: u64 = 0;
    match o.kind {
        op::REG => {
            let ri = o.reg as usize;
            if ri < PT_REGS_COUNT {
                st.acc = st.regs[ri].wrapping_add(o.imm as u64);
            } else {
                fault = true;
            }
        }
        op::CONST => st.acc = o.imm as u64,
        op::ADD => st.acc = st.acc.wrapping_add(o.imm as u64),
        op::DEREF => {
            let mut tmp: u64 = 0;
            let n = u32::from(o.len) & 0xf;
            let n = if n > 8 { 8 } else { n };
            addr = st.acc.wrapping_add(o.imm as u64);
            // SAFETY: reads at most 8 bytes into an 8-byte local; the helper checks `acc`.
            let rc = unsafe {
                bpf_probe_read_user((&raw mut tmp).cast::<c_void>(), n, addr as *const c_void)
            };
            if rc < 0 {
                fault = true;
            } else {
                st.acc = tmp;
            }
        }
        op::EMIT_ACC => {
            let dst = (o.dst as usize) & (EVENT_DATA_BYTES - 1);
            let mut n = (o.len as usize) & 0xf;
            if n > 8 {
                n = 8;
            }
            let bytes = st.acc.to_le_bytes();
            let mut k = 0;
            while k < 8 {
                if k < n {
                    ev.data[dst + k] = bytes[k];
                }
                k += 1;
            }
            meta(ev, mo, vi).len = n as u16;
        }
        op::EMIT_MEM => {
            let (dst, n) = copy_bounds(o.dst, o.len);
            addr = st.acc.wrapping_add(o.imm as u64);
            // SAFETY: dst < EVENT_DATA_BYTES and n ≤ MAX_COPY_BYTES, within `data`'s slack.
            let rc = unsafe {
                bpf_probe_read_user(
                    ev.data.as_mut_ptr().add(dst).cast::<c_void>(),
                    n as u32,
                    addr as *const c_void,
                )
            };
            if rc < 0 {
                // A nil pointer followed from a copied value: the helper zeroed the bytes.
                fault = !(o.reg & op::EMIT_MEM_NIL_ZEROS != 0 && st.acc == 0);
            } else {
                meta(ev, mo, vi).len = n as u16;
            }
        }
        op::HDR => {
            let at = o.dst as usize;
            st.acc = data_u64(ev, at + (o.len & 0xff) as usize);
            st.count = data_u64(ev, at + (o.len >> 8) as usize).wrapping_mul(o.imm as u64);
        }
        op::SKIP_LE => {
            if data_u64(ev, o.dst as usize) <= o.imm as u64 {
                st.skip_to = index + 1 + u64::from(o.len);
            }
        }
        op::END_LE => {
            if data_u64(ev, o.dst as usize) <= o.imm as u64 {
                st.done |= 1 << vi;
            }
        }
        op::EMIT_VAR => {
            // Verifier-shaped, alike to EMIT_MEM on purpose: each copy stays inline where its
            // bounds are proven (dst < EVENT_DATA_BYTES, n ≤ MAX_COPY_BYTES); a shared function
            // would have to re-prove them for every path that calls it.
            let (dst, mut n) = copy_bounds(o.dst, o.len);
            if st.count < n as u64 {
                n = st.count as usize;
            } else if st.count > n as u64 {
                meta(ev, mo, vi).flags |= value_flags::TRUNCATED;
                ev.header.flags |= event_flags::TRUNCATED;
            }
            let n = n & (2 * MAX_COPY_BYTES - 1);
            let n = if n > MAX_COPY_BYTES {
                MAX_COPY_BYTES
            } else {
                n
            };
            addr = st.acc;
            let rc = if n == 0 {
                0
            } else {
                // SAFETY: dst < EVENT_DATA_BYTES and n ≤ MAX_COPY_BYTES, within `data`'s slack.
                unsafe {
                    bpf_probe_read_user(
                        ev.data.as_mut_ptr().add(dst).cast::<c_void>(),
                        n as u32,
                        st.acc as *const c_void,
                    )
                }
            };
            if rc < 0 {
                fault = true;
            } else {
                meta(ev, mo, vi).len = n as u16;
            }
        }
        op::EMIT_STR => {
            let (dst, n) = copy_bounds(o.dst, o.len);
            addr = st.acc.wrapping_add(o.imm as u64);
            // SAFETY: as for EMIT_MEM; the helper NUL-terminates within `n`.
            let rc = unsafe {
                bpf_probe_read_user_str(
                    ev.data.as_mut_ptr().add(dst).cast::<c_void>(),
                    n as u32,
                    addr as *const c_void,
                )
            };
            if rc < 0 {
                fault = true;
            } else {
                let got = rc as usize; // includes the NUL
                if got >= n {
                    meta(ev, mo, vi).flags |= value_flags::TRUNCATED;
                    ev.header.flags |= event_flags::TRUNCATED;
                }
                meta(ev, mo, vi).len = if got > 0 { (got - 1) as u16 } else { 0 };
            }
        }
        op::PUSH => fault = !push(st.acc),
        op::ALU => match alu_op(o.reg, st.acc, o.imm as u64) {
            Some(v) => st.acc = v,
            None => fault = true,
        },
        // The entry value of a register, saved by the entry probe (`stash.rs`); on a miss,
        // the `len` ops after it compute the value another way, or the value faults.
        op::STASH => match stash::read(o.reg, st.acc, o.imm as u64) {
            Some(v) => {
                st.acc = v;
                st.skip_to = index + 1 + u64::from(o.len);
            }
            None => fault = o.len == 0,
        },
        _ => fault = true,
    }
    if fault {
        reset_expr();
        st.bad |= 1 << vi;
        let m = meta(ev, mo, vi);
        m.flags = value_flags::READ_FAULT;
        m.len = index as u16;
        // Where the value's bytes start (the helper zeroed what it could not copy): the
        // address that faulted, for the agent's message.
        let at = (plan.value_dst[vi] as usize) & (EVENT_DATA_BYTES - 1);
        let bytes = addr.to_le_bytes();
        let mut k = 0;
        while k < 8 {
            ev.data[at + k] = bytes[k];
            k += 1;
        }
    }
    0
}

/// The little-endian u64 at `data[at..at + 8]` of the event (a header an earlier op of this
/// hit copied there), the offset masked into the data area.
#[inline(always)]
pub(crate) fn data_u64(ev: &Event, at: usize) -> u64 {
    let at = at & (EVENT_DATA_BYTES - 1);
    let mut v: u64 = 0;
    let mut k = 0;
    while k < 8 {
        v |= u64::from(ev.data[at + k]) << (8 * k);
        k += 1;
    }
    v
}
