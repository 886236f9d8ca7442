//! The one generic uprobe program. It knows nothing about any target: at each hit it loads the
//! plan named by the uprobe's BPF cookie and interprets its ops, copying every byte a value needs
//! (registers, pointees, strings) into an event **now**, in the kernel, bounded. The agent
//! attaches this same program at every probe address with a different cookie.
//!
//! Order of work (design.md §4): plan and counters by cookie → a branch probe's condition
//! (`guard`; a pass the other way is counted apart, not as a hit) → count the hit → process
//! filter → rate limit (here when the plan has no condition) → room in this CPU's ring (count
//! a drop if full) → header and ops, written in place in the ring →
//! condition → rate limit (here when it has one, so hits the condition rejects never spend
//! tokens meant for the ones it wants) → publish (or leave unpublished) → doorbell every few
//! events → add the time spent (one hit in eight is timed). Every early exit bumps its own
//! counter, so `hits` always equals the sum of the outcomes. Counters and plan come from one
//! per-CPU map value (`SLOTS`): one lookup.
//!
//! Here: the hit's path and the record around the values, and the bench's two floors
//! (`detrix_noop`, `detrix_handoff`). The ops themselves run in
//! `interp.rs`, faults are reported in `log.rs`, entry values are saved in `stash.rs`.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap in core's atomics, but the instructions exist (BPF
// v3): the intrinsics reach them.
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "core_intrinsics is internal; see above")]

mod interp;
mod log;
mod stash;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_USER_STACK, BPF_RB_FORCE_WAKEUP},
    cty::c_void,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_ktime_get_ns,
        generated::{bpf_get_stack, bpf_probe_read_user},
    },
    macros::{map, uprobe},
    maps::{Array, PerCpuArray, RingBuf},
    programs::ProbeContext,
    EbpfContext,
};
use core::intrinsics::{atomic_xchg, AtomicOrdering};
use detrix_common::{
    cond, event_flags, f64_key, guard, meta_offset, metas_bytes, record_span, value_flags,
    Condition, Counters, CpuRing, Event, Plan, RateState, Slot, ValueMeta, COND_STR_BYTES,
    CPU_RING_BYTES, EVENT_DATA_BYTES, MAX_COPY_BYTES, MAX_PROBES, MAX_VALUES, PLAN_ABI,
    RECORD_PREFIX_BYTES, WIRE_HEADER_BYTES,
};

/// Probe slots (the slot is the uprobe's cookie): this CPU's exact outcome counters and its
/// copy of the plan, so a hit finds both with one lookup and counts without atomics.
#[map]
static SLOTS: PerCpuArray<Slot> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

/// Events, one ring per CPU, mapped by the agent (see [`CpuRing`] for why and the protocol).
/// The agent sets the number of entries to the number of possible CPUs before load.
#[map]
static RINGS: Array<CpuRing> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The doorbell: an 8-byte record when a CPU's backlog passes `WAKEUP_BYTES` wakes the agent,
/// which then drains [`RINGS`]. The agent may resize it before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 16, 0);

/// Rate-limiter state per slot, shared by all CPUs so a probe's rate is its total whatever
/// CPU its hits land on. Updates race between CPUs hitting the same probe at the same moment
/// (a few extra events may pass); outcomes are still counted exactly, per CPU.
#[map]
static RATE: Array<RateState> = Array::with_max_entries(MAX_PROBES, 0);

/// Ring the doorbell when this CPU's backlog crosses this many bytes (see
/// `detrix_common::DEFAULT_WAKEUP_BYTES` for why); 0 = for every event. Set before load.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

#[uprobe]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[uprobe] macro calls this with a ProbeContext by value"
)]
pub fn detrix_capture(ctx: ProbeContext) -> u32 {
    capture(&ctx);
    0
}

/// Does nothing: the floor a capture is measured against (`cargo xtask bench`), attached at the
/// same instruction, so the ratio isolates what the plan interpreter costs.
#[uprobe]
pub fn detrix_noop(_ctx: ProbeContext) -> u32 {
    0
}

/// The least a capture built this way can cost, for `cargo xtask bench` only
/// (`LoadOptions::handoff`; the agent never attaches it): the plan's register values written
/// into a record in this CPU's ring and published, the way `capture` does it, and nothing
/// else — no clock, pid, counters, rate limit or `busy` (two runs on one CPU could interleave:
/// a measurement, not a product path; the bench's target is one thread). Measured next to `capture` against the same floor,
/// the gap between the two is what the capture's bookkeeping costs, and the gap to the floor
/// what handing a value over to the agent's core costs whatever the program does.
#[uprobe]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[uprobe] macro calls this with a ProbeContext by value"
)]
pub fn detrix_handoff(ctx: ProbeContext) -> u32 {
    handoff(&ctx);
    0
}

#[inline(always)]
fn handoff(ctx: &ProbeContext) {
    // SAFETY: ctx is the uprobe's pt_regs context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(s) = SLOTS.get_ptr_mut(cookie & 0xffff) else {
        return;
    };
    // SAFETY: as in `capture`.
    let plan = unsafe { &(*s).plan };
    if plan.abi != PLAN_ABI || !interp::registers_only(plan) {
        return;
    }
    // SAFETY: no memory arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(ring) = RINGS.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: a map value valid for this run; alone on it by the bench's design (above).
    let ring = unsafe { &mut *ring };
    // The record's clock, pid and tid are left 0: the bench's drain needs none of them.
    let Some(Reserved {
        ev,
        meta_off,
        head,
        tail,
        span,
        ..
    }) = reserve(ring, plan, cookie, 0, 0, 0)
    else {
        return;
    };
    interp::emit_registers(ctx, plan, ev, meta_off);
    publish(ring, head, tail, span);
}

#[inline(always)]
fn capture(ctx: &ProbeContext) {
    // SAFETY: helpers without memory arguments.
    let start = unsafe { bpf_ktime_get_ns() };
    // SAFETY: ctx is the uprobe's pt_regs context.
    let full = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let cookie = full as u32;
    // Low 16 bits: the map slot; above: a generation, so the agent never decodes a record of
    // a removed probe with the plan of the next one in the same slot.
    let slot = cookie & 0xffff;
    let Some(s) = SLOTS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a per-CPU map value, valid for this program run and touched by this CPU only
    // (the agent writes a slot's plan before attaching its probe, and reads counters only).
    let (counters, plan) = unsafe { (&mut (*s).counters, &(*s).plan) };
    // A probe on a conditional branch into the line's block: a pass the other way is not a
    // hit (`detrix_common::guard`), only counted as the trap it cost.
    // SAFETY: as `r_r14`.
    if !guard::passes(full, unsafe { (*ctx.regs).eflags }) {
        counters.other_way += 1;
        return;
    }
    counters.hits += 1;
    // Time one hit in TIMED_EVERY (the first included): the closing clock read is a helper
    // call, whose return is itself a good part of a hit's cost on a CPU with return-stack
    // mitigations; `bpf_ns` adds each timed hit TIMED_EVERY times.
    let timed = (counters.hits & (TIMED_EVERY - 1)) == 1;

    if plan.abi != PLAN_ABI {
        counters.no_plan += 1;
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if plan.tgid != 0 && plan.tgid != tgid {
        counters.other_process += 1;
        return;
    }
    let has_cond = plan.cond.kind != cond::NONE;
    if !has_cond && !take_token(plan, slot, start) {
        counters.rate_limited += 1;
        return;
    }
    // SAFETY: no memory arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(ring) = RINGS.get_ptr_mut(cpu) else {
        counters.dropped_ring_full += 1;
        return;
    };
    // SAFETY: an aligned u64 inside a map value valid for this run, accessed atomically by
    // every run.
    let busy = unsafe { core::ptr::addr_of_mut!((*ring).busy) };
    // SAFETY: as above.
    if unsafe { atomic_xchg::<u64, { AtomicOrdering::Acquire }>(busy, 1) } != 0 {
        // Another run on this CPU (this one preempted it) owns the ring: drop, counted.
        counters.dropped_ring_full += 1;
        if timed {
            counters.bpf_ns += elapsed(start) * TIMED_EVERY;
        }
        return;
    }
    // SAFETY: `busy` makes this run the ring's only writer until it is released.
    fill(
        ctx,
        plan,
        counters,
        unsafe { &mut *ring },
        cpu,
        cookie,
        slot,
        tgid,
        pid_tgid as u32,
        start,
        has_cond,
    );
    // Release: a plain store. Only runs on this CPU contend for `busy`, and x86 keeps this
    // store after the record's and the head's (`fill`).
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(busy, 0) };
    if timed {
        counters.bpf_ns += elapsed(start) * TIMED_EVERY;
    }
}

/// One hit in this many is timed for [`Counters::bpf_ns`] (a power of two).
const TIMED_EVERY: u64 = 8;

/// Builds the event in place at the ring's head and publishes it, or counts why not.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into `capture`: the verifier tracks scalars, not a struct of them"
)]
fn fill(
    ctx: &ProbeContext,
    plan: &Plan,
    counters: &mut Counters,
    ring: &mut CpuRing,
    cpu: u32,
    cookie: u32,
    slot: u32,
    tgid: u32,
    tid: u32,
    start: u64,
    has_cond: bool,
) {
    let Some(Reserved {
        ev,
        pos,
        meta_off,
        head,
        tail,
        span,
    }) = reserve(ring, plan, cookie, tgid, tid, start)
    else {
        counters.dropped_ring_full += 1;
        return;
    };
    if plan.goid_offset != 0 {
        let mut goid: u64 = 0;
        // SAFETY: reads 8 bytes into a local; the helper checks the user address.
        let rc = unsafe {
            bpf_probe_read_user(
                (&raw mut goid).cast::<c_void>(),
                8,
                (r_r14(ctx)).wrapping_add(u64::from(plan.goid_offset)) as *const c_void,
            )
        };
        if rc == 0 {
            ev.header.goid = goid;
        }
    }

    let mut faulted = if interp::registers_only(plan) {
        interp::emit_registers(ctx, plan, ev, meta_off);
        false
    } else {
        interp::run_ops(ctx, slot, plan.n_ops, cpu, pos as u32, meta_off as u32)
    };
    if plan.stack.len != 0 && capture_stack(ctx, plan, ev, meta_off) {
        faulted = true;
    }
    if has_cond {
        if !condition_holds(&plan.cond, ev, meta_off) {
            counters.condition_false += 1;
            return;
        }
        if !take_token(plan, slot, start) {
            counters.rate_limited += 1;
            return;
        }
    }
    if faulted {
        ev.header.flags |= event_flags::READ_FAULT;
        counters.read_faults += 1;
    }
    publish(ring, head, tail, span);
    counters.emitted += 1;
}

/// A record reserved at a ring's head: its [`Event`] (prefix, header with `goid` 0, and every
/// meta already written; the caller writes the values) and what [`publish`] needs.
struct Reserved<'a> {
    ev: &'a mut Event,
    pos: usize,
    meta_off: usize,
    head: u64,
    tail: u64,
    span: u64,
}

/// Reserves room for a record of `plan`'s size at `ring`'s head, or `None` when it is full.
/// The caller holds the ring (`busy`) or, the handoff, is alone on it by the bench's design.
#[inline(always)]
fn reserve<'a>(
    ring: &'a mut CpuRing,
    plan: &Plan,
    cookie: u32,
    tgid: u32,
    tid: u32,
    start: u64,
) -> Option<Reserved<'a>> {
    let mut data_len = plan.data_len as usize;
    if data_len > EVENT_DATA_BYTES {
        data_len = EVENT_DATA_BYTES;
    }
    let mut n_values = plan.n_values as usize;
    if n_values > MAX_VALUES {
        n_values = MAX_VALUES;
    }
    let meta_off = meta_offset(data_len);
    let event_len = WIRE_HEADER_BYTES + meta_off + metas_bytes(n_values);
    let span = record_span(event_len) as u64;
    // SAFETY: plain reads of ring words; `tail` is written by the agent from another CPU, and
    // a stale value only makes the ring look fuller than it is.
    let (head, tail) = unsafe {
        (
            core::ptr::read_volatile(&raw const ring.head),
            core::ptr::read_volatile(&raw const ring.tail),
        )
    };
    if head.wrapping_sub(tail).wrapping_add(span) > CPU_RING_BYTES as u64 {
        return None;
    }
    let pos = (head as usize) & (CPU_RING_BYTES - 1);
    // SAFETY: pos < CPU_RING_BYTES and the ring has CPU_RING_SLACK ≥ prefix + Event bytes past
    // that; the record's prefix is 8-byte aligned because `head` only grows by spans.
    #[expect(clippy::cast_ptr_alignment, reason = "8-byte aligned: see SAFETY")]
    let ev = unsafe {
        let rec = ring.data.as_mut_ptr().add(pos);
        core::ptr::write_volatile(rec.cast::<u64>(), event_len as u64);
        &mut *rec.add(RECORD_PREFIX_BYTES).cast::<Event>()
    };
    let h = &mut ev.header;
    h.abi = PLAN_ABI;
    h.probe_id = cookie;
    h.pid = tgid;
    h.tid = tid;
    h.ktime_ns = start;
    h.goid = 0;
    h.flags = 0;
    h.n_values = n_values as u32;
    if n_values <= 2 {
        // The common case inline: one word holds both metas (and the padding after one).
        // SAFETY: the metas area is 8-byte aligned, at most EVENT_DATA_BYTES into `data`.
        #[expect(clippy::cast_ptr_alignment, reason = "8-byte aligned: see SAFETY")]
        unsafe {
            core::ptr::write(
                (meta(ev, meta_off, 0) as *mut ValueMeta).cast::<u64>(),
                OK_PAIR,
            );
        };
    } else {
        init_metas(ev, meta_off, n_values);
    }
    Some(Reserved {
        ev,
        pos,
        meta_off,
        head,
        tail,
        span,
    })
}

/// Publishes the record [`reserve`] returned (its bytes all written) and rings the doorbell
/// when the backlog crosses the threshold.
#[inline(always)]
fn publish(ring: &mut CpuRing, head: u64, tail: u64, span: u64) {
    // The record's bytes are all written, then the new head, a plain store. x86 (the
    // only architecture the agent reads registers of) makes stores visible to the agent's CPU
    // in program order, and the compiler fence keeps LLVM from sinking a record store past
    // this one; `busy` makes this run the head's only writer, so no read-modify-write is
    // needed. It was a locked add: by the kernel's own count (`kernel.bpf_stats_enabled`,
    // same run) that cost ~10 ns of the program's ~65 per 1-int hit.
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
    // SAFETY: an aligned u64 inside the map value, written only by the run holding `busy`.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!(ring.head), head.wrapping_add(span));
    };
    // SAFETY: a plain read of a global the loader may have rewritten before load.
    let threshold = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
    let backlog = head.wrapping_sub(tail);
    // Once per crossing: while the agent has not drained, the backlog stays above and later
    // events do not ring again.
    if threshold == 0 || (backlog < threshold && backlog + span >= threshold) {
        // A lost doorbell (its ring full) only delays delivery to the next flush.
        let _ = EVENTS.output::<u64>(&head, u64::from(BPF_RB_FORCE_WAKEUP));
    }
}

/// `(dst, len)` of a copy, masked and clamped so the verifier sees `dst < EVENT_DATA_BYTES`
/// and `len ≤ MAX_COPY_BYTES`: within `Event::data` and its slack.
#[inline(always)]
fn copy_bounds(dst: u16, len: u16) -> (usize, usize) {
    let dst = (dst as usize) & (EVENT_DATA_BYTES - 1);
    let mut n = (len as usize) & (2 * MAX_COPY_BYTES - 1);
    if n > MAX_COPY_BYTES {
        n = MAX_COPY_BYTES;
    }
    (dst, n)
}

/// Sets every meta to `{len: 0, flags: OK}`, two per 8-byte word (an odd last one fills the
/// padding). A function of its own: inlined, its stores pushed the program past LLVM's BPF
/// stack limit.
#[inline(never)]
fn init_metas(ev: &mut Event, meta_off: usize, n_values: usize) {
    let ok_pair = OK_PAIR;
    let words = n_values.div_ceil(2);
    #[expect(clippy::cast_ptr_alignment, reason = "written with write_unaligned")]
    let metas = (meta(ev, meta_off, 0) as *mut ValueMeta).cast::<u64>();
    let mut k = 0;
    // Bounded by MAX_VALUES for the verifier, stopped at the plan's own count: a plan of a
    // few values does not pay for the 64 a snapshot may use.
    while k < MAX_VALUES / 2 && k < words {
        // SAFETY: within the metas area (≤ EVENT_DATA_BYTES + 4 * MAX_VALUES into `data`).
        unsafe { core::ptr::write_unaligned(metas.add(k), ok_pair) };
        k += 1;
    }
}

/// Two metas `{len: 0, flags: OK}` in one little-endian word.
const OK_PAIR: u64 = (value_flags::OK as u64) << 16 | (value_flags::OK as u64) << 48;

/// Value `vi`'s meta, in the record after the data (see `detrix_common::WireHeader`).
#[inline(always)]
#[expect(clippy::cast_ptr_alignment, reason = "2-byte aligned: see SAFETY")]
fn meta(ev: &mut Event, meta_off: usize, vi: usize) -> &mut ValueMeta {
    let off = if meta_off > EVENT_DATA_BYTES {
        EVENT_DATA_BYTES
    } else {
        meta_off
    };
    let at = (off & (2 * EVENT_DATA_BYTES - 1)) + (vi & (MAX_VALUES - 1)) * 4;
    // SAFETY: at ≤ EVENT_DATA_BYTES + 4 * MAX_VALUES - 4, and `data` has MAX_COPY_BYTES of slack;
    // `at` is a multiple of 4 (`meta_offset` is 8-aligned), enough for ValueMeta's 2.
    unsafe { &mut *ev.data.as_mut_ptr().add(at).cast::<ValueMeta>() }
}

/// Copies the user stack's return addresses; returns whether it failed.
#[inline(always)]
fn capture_stack(ctx: &ProbeContext, plan: &Plan, ev: &mut Event, meta_off: usize) -> bool {
    let vi = (plan.stack.value as usize) & (MAX_VALUES - 1);
    let (dst, n) = copy_bounds(plan.stack.dst, plan.stack.len);
    // SAFETY: dst < EVENT_DATA_BYTES and n ≤ MAX_COPY_BYTES, within `data`'s slack.
    let rc = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            ev.data.as_mut_ptr().add(dst).cast::<c_void>(),
            n as u32,
            u64::from(BPF_F_USER_STACK),
        )
    };
    if rc < 0 {
        let m = meta(ev, meta_off, vi);
        m.flags = value_flags::READ_FAULT;
        m.len = value_flags::FAULT_STACK;
        true
    } else {
        meta(ev, meta_off, vi).len = rc as u16;
        false
    }
}

/// R14 of the probed thread: `g` in Go code on amd64.
#[inline(always)]
fn r_r14(ctx: &ProbeContext) -> u64 {
    // SAFETY: uprobe ctx points at the user registers saved on entry.
    unsafe { (*ctx.regs).r14 }
}

#[inline(always)]
fn elapsed(start: u64) -> u64 {
    // SAFETY: no memory arguments.
    unsafe { bpf_ktime_get_ns() }.wrapping_sub(start)
}

/// GCRA token bucket: passes when the theoretical arrival time is at most the burst ahead.
#[inline(always)]
fn take_token(plan: &Plan, slot: u32, now: u64) -> bool {
    if plan.rate_interval_ns == 0 {
        return true;
    }
    let Some(state) = RATE.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: a map value valid for this run; concurrent writers only make the limit approximate.
    let state = unsafe { &mut *state };
    let tat = if state.tat_ns > now {
        state.tat_ns
    } else {
        now
    };
    if tat - now > plan.rate_burst_ns {
        return false;
    }
    state.tat_ns = tat + plan.rate_interval_ns;
    true
}

/// Evaluates the plan's condition on the captured bytes. A value that could not be read
/// passes, so the user sees the read error instead of silence.
#[inline(always)]
fn condition_holds(c: &Condition, ev: &mut Event, meta_off: usize) -> bool {
    let vi = (c.value as usize) & (MAX_VALUES - 1);
    let meta = *meta(ev, meta_off, vi);
    if meta.flags & value_flags::READ_FAULT != 0 {
        return true;
    }
    let dst = (c.dst as usize) & (EVENT_DATA_BYTES - 1);
    match c.kind {
        cond::INT | cond::UINT | cond::F64 => {
            let mut raw: u64 = 0;
            let size = (c.size as usize) & 0xf;
            let mut k = 0;
            while k < 8 {
                if k < size {
                    raw |= u64::from(ev.data[dst + k]) << (8 * k);
                }
                k += 1;
            }
            let ord = match c.kind {
                cond::INT => {
                    let shift = if size >= 8 || size == 0 {
                        0
                    } else {
                        64 - 8 * size as u32
                    };
                    let v = ((raw << shift) as i64) >> shift;
                    cmp_i64(v, c.imm)
                }
                cond::UINT => cmp_u64(raw, c.imm as u64),
                _ => cmp_u64(f64_key(raw), c.imm as u64),
            };
            match c.cmp {
                cond::EQ => ord == 0,
                cond::NE => ord != 0,
                cond::LT => ord < 0,
                cond::LE => ord <= 0,
                cond::GT => ord > 0,
                cond::GE => ord >= 0,
                _ => true,
            }
        }
        cond::STR_EQ | cond::STR_PREFIX => {
            let n = (c.len as usize) & (COND_STR_BYTES * 2 - 1);
            let mut same = if c.kind == cond::STR_EQ {
                meta.len as usize == n
            } else {
                meta.len as usize >= n
            };
            let mut k = 0;
            while k < COND_STR_BYTES {
                if k < n && ev.data[dst + k] != c.bytes[k] {
                    same = false;
                }
                k += 1;
            }
            if c.cmp == cond::NE {
                !same
            } else {
                same
            }
        }
        _ => true,
    }
}

#[inline(always)]
fn cmp_i64(a: i64, b: i64) -> i32 {
    if a < b {
        -1
    } else if a > b {
        1
    } else {
        0
    }
}

#[inline(always)]
fn cmp_u64(a: u64, b: u64) -> i32 {
    if a < b {
        -1
    } else if a > b {
        1
    } else {
        0
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_probe_read_user*` are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
