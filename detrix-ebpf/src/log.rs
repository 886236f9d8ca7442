//! `--ebpf-log`: the program reports each value whose plan step faulted (probe slot, step
//! index, op, address) as one aya-log record; the agent renders it as one `ebpf: …` line.
//!
//! Off by default and free when off: `EBPF_LOG` is a read-only global the agent sets at load
//! (like `WAKEUP_BYTES`), so with it 0 the verifier sees a constant and prunes the reporting;
//! the interpreter's ops pay nothing. When on, the faults are reported after the ops ran, by a
//! second `bpf_loop` over the values (verified once): inlined into each op's fault path the
//! record's code multiplied with every op's branches and the program passed the verifier's
//! 1 M-instruction limit (`E2BIG`). The step and address are the ones the value's meta and
//! bytes already carry for the agent. The record holds numbers only; the agent names the op.

use aya_ebpf::{cty::c_void, helpers::generated::bpf_loop};
use aya_log_ebpf::error;
use detrix_common::{EVENT_DATA_BYTES, MAX_OPS, MAX_VALUES};

use crate::interp::{data_u64, run_record, this_run};
use crate::meta;

/// 1 = report plan-step faults through aya-log. Set before load; 0 prunes the reporting.
#[unsafe(no_mangle)]
static EBPF_LOG: u8 = 0;

/// After the ops ran: one record per value that faulted (`bad`: a bit per value), when enabled.
#[inline(always)]
pub fn faults(bad: u64) {
    // SAFETY: a plain read of a global the loader fixed before load.
    if unsafe { core::ptr::read_volatile(&raw const EBPF_LOG) } == 0 || bad == 0 {
        return;
    }
    // SAFETY: `report` has the callback signature bpf_loop expects; it finds the run's state
    // in `interp::RUN`, as `step` does.
    unsafe {
        bpf_loop(
            MAX_VALUES as u32,
            report as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
}

/// Value `i`'s fault, if it had one (the callback of the reporting `bpf_loop`).
#[inline(never)]
extern "C" fn report(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(st) = this_run() else {
        return 1;
    };
    let vi = (i as usize) & (MAX_VALUES - 1);
    if st.bad & (1 << vi) == 0 {
        return 0;
    }
    let Some((s, ev)) = run_record(st) else {
        return 1;
    };
    let index = usize::from(meta(ev, st.meta_off as usize, vi).len) & (MAX_OPS - 1);
    let op = s.plan.ops[index].kind;
    let addr = data_u64(
        ev,
        usize::from(s.plan.value_dst[vi]) & (EVENT_DATA_BYTES - 1),
    );
    // The agent parses exactly this shape (`ebpflog::render`); keep the two in step.
    error!(
        &(),
        "fault slot={} step={} op={} addr={:x}", st.slot, index, op, addr
    );
    0
}
