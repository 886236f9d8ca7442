//! The one generic uprobe program. It knows nothing about any target: at each hit it loads the
//! plan named by the uprobe's BPF cookie and interprets its ops, copying every byte a value needs
//! (registers, pointees, strings) into an event **now**, in the kernel, bounded. The agent
//! attaches this same program at every probe address with a different cookie.
//!
//! Order of work (design.md §4): count the hit → plan by cookie → process filter → header →
//! ops → output (count a drop if the ring is full) → add the time spent. Every early exit
//! bumps its own counter, so `hits` always equals the sum of the outcomes.
#![no_std]
#![no_main]

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_probe_read_user, bpf_probe_read_user_str},
    },
    macros::{map, uprobe},
    maps::{Array, PerCpuArray, RingBuf},
    programs::ProbeContext,
    EbpfContext,
};
use detrix_common::{
    event_flags, op, value_flags, Counters, Event, Plan, EVENT_DATA_BYTES, EVENT_HEADER_BYTES,
    MAX_COPY_BYTES, MAX_OPS, MAX_PROBES, MAX_VALUES, PLAN_ABI, PT_REGS_COUNT,
};

/// Plans by slot; the slot is the uprobe's cookie.
#[map]
static PLANS: Array<Plan> = Array::with_max_entries(MAX_PROBES, 0);

/// Exact outcome counters per slot, per CPU (no atomics on the hot path).
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_PROBES, 0);

/// One event under construction per CPU: too large for the 512-byte BPF stack, and built here
/// so only the bytes the plan uses are copied into the ring.
#[map]
static SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

/// Records to user space. The agent may resize it before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[uprobe]
pub fn detrix_capture(ctx: ProbeContext) -> u32 {
    capture(&ctx);
    0
}

#[inline(always)]
fn capture(ctx: &ProbeContext) {
    // SAFETY: helpers without memory arguments.
    let start = unsafe { bpf_ktime_get_ns() };
    // SAFETY: ctx is the uprobe's pt_regs context.
    let slot = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(counters) = COUNTERS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a per-CPU map value, valid for this program run and touched by this CPU only.
    let counters = unsafe { &mut *counters };
    counters.hits += 1;

    let Some(plan) = PLANS.get(slot) else {
        counters.no_plan += 1;
        return;
    };
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
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch value; nothing else runs on this CPU during the program.
    let ev = unsafe { &mut *ev };
    let h = &mut ev.header;
    h.abi = PLAN_ABI;
    h.probe_id = slot;
    h.pid = tgid;
    h.tid = pid_tgid as u32;
    h.ktime_ns = start;
    h.goid = 0;
    h.flags = 0;
    h.n_values = plan.n_values;
    let mut v = 0;
    while v < MAX_VALUES {
        h.values[v].len = 0;
        h.values[v].flags = value_flags::OK;
        v += 1;
    }

    // SAFETY: uprobe ctx points at the user registers saved on entry.
    let r = unsafe { &*ctx.regs };
    let regs: [u64; PT_REGS_COUNT] = [
        r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx,
        r.rsi, r.rdi, r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss,
    ];

    let faulted = run_ops(plan, &regs, ev);
    if faulted {
        ev.header.flags |= event_flags::READ_FAULT;
        counters.read_faults += 1;
    }

    let mut data_len = plan.data_len as usize;
    if data_len > EVENT_DATA_BYTES {
        data_len = EVENT_DATA_BYTES;
    }
    let len = EVENT_HEADER_BYTES + data_len;
    // SAFETY: `ev` is `size_of::<Event>()` bytes and `len` ≤ header + EVENT_DATA_BYTES < that.
    let bytes = unsafe { core::slice::from_raw_parts((ev as *const Event).cast::<u8>(), len) };
    match EVENTS.output::<[u8]>(bytes, 0) {
        Ok(()) => counters.emitted += 1,
        Err(_) => counters.dropped_ring_full += 1,
    }
    // SAFETY: no memory arguments.
    counters.bpf_ns += unsafe { bpf_ktime_get_ns() } - start;
}

/// Interprets the plan's ops; returns whether any value faulted.
#[inline(always)]
fn run_ops(plan: &Plan, regs: &[u64; PT_REGS_COUNT], ev: &mut Event) -> bool {
    let mut acc: u64 = 0;
    let mut bad: u32 = 0; // bit per value that faulted: its remaining ops are skipped
    let n_ops = plan.n_ops as usize;
    let mut i = 0;
    while i < MAX_OPS {
        if i >= n_ops {
            break;
        }
        let o = &plan.ops[i];
        i += 1;
        let vi = (o.value as usize) & (MAX_VALUES - 1);
        if bad & (1 << vi) != 0 {
            continue;
        }
        let mut fault = false;
        match o.kind {
            op::REG => {
                let ri = o.reg as usize;
                if ri < PT_REGS_COUNT {
                    acc = regs[ri];
                } else {
                    fault = true;
                }
            }
            op::CONST => acc = o.imm as u64,
            op::ADD => acc = acc.wrapping_add(o.imm as u64),
            op::DEREF => {
                let mut tmp: u64 = 0;
                let n = (o.len as u32) & 0xf;
                let n = if n > 8 { 8 } else { n };
                // SAFETY: reads at most 8 bytes into an 8-byte local; the helper checks `acc`.
                let rc = unsafe {
                    bpf_probe_read_user((&mut tmp as *mut u64).cast::<c_void>(), n, acc as *const c_void)
                };
                if rc < 0 {
                    fault = true;
                } else {
                    acc = tmp;
                }
            }
            op::EMIT_ACC => {
                let dst = (o.dst as usize) & (EVENT_DATA_BYTES - 1);
                let mut n = (o.len as usize) & 0xf;
                if n > 8 {
                    n = 8;
                }
                let bytes = acc.to_le_bytes();
                let mut k = 0;
                while k < 8 {
                    if k < n {
                        ev.data[dst + k] = bytes[k];
                    }
                    k += 1;
                }
                ev.header.values[vi].len = n as u16;
            }
            op::EMIT_MEM => {
                let dst = (o.dst as usize) & (EVENT_DATA_BYTES - 1);
                let mut n = (o.len as usize) & (2 * MAX_COPY_BYTES - 1);
                if n > MAX_COPY_BYTES {
                    n = MAX_COPY_BYTES;
                }
                // SAFETY: dst < EVENT_DATA_BYTES and n ≤ MAX_COPY_BYTES, within `data`'s slack.
                let rc = unsafe {
                    bpf_probe_read_user(ev.data.as_mut_ptr().add(dst).cast::<c_void>(), n as u32, acc as *const c_void)
                };
                if rc < 0 {
                    fault = true;
                } else {
                    ev.header.values[vi].len = n as u16;
                }
            }
            op::EMIT_STR => {
                let dst = (o.dst as usize) & (EVENT_DATA_BYTES - 1);
                let mut n = (o.len as usize) & (2 * MAX_COPY_BYTES - 1);
                if n > MAX_COPY_BYTES {
                    n = MAX_COPY_BYTES;
                }
                // SAFETY: as for EMIT_MEM; the helper NUL-terminates within `n`.
                let rc = unsafe {
                    bpf_probe_read_user_str(ev.data.as_mut_ptr().add(dst).cast::<c_void>(), n as u32, acc as *const c_void)
                };
                if rc < 0 {
                    fault = true;
                } else {
                    let got = rc as usize; // includes the NUL
                    if got >= n {
                        ev.header.values[vi].flags |= value_flags::TRUNCATED;
                        ev.header.flags |= event_flags::TRUNCATED;
                    }
                    ev.header.values[vi].len = if got > 0 { (got - 1) as u16 } else { 0 };
                }
            }
            _ => fault = true,
        }
        if fault {
            bad |= 1 << vi;
            ev.header.values[vi].flags = value_flags::READ_FAULT;
        }
    }
    bad != 0
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
