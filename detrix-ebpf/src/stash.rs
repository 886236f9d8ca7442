//! The entry-value stash: a second uprobe program, attached at the first instruction of a
//! function whose line plan needs a parameter's value at entry (`DW_OP_entry_value`), saves
//! the general registers there; the line's `STASH` op reads them back at the hit.
//!
//! Why a map keyed by frame: the line's hit must find the registers of its own call, not of a
//! deeper recursive call or an earlier one. The key is the thread, the stash id the agent gave
//! this attach (never reused, so a slot left by an earlier attach is never read), and the
//! frame's CFA, which the entry knows as `rsp + 8` and the line computes from the CFI: two
//! live frames of one thread never share it. Why LRU: a call that never reaches its line, or a
//! thread that exits, leaves its slot behind; the map's bound evicts the oldest, so stale
//! slots cost a fixed amount of memory, and an evicted slot only makes a hit a read fault.

use aya_ebpf::{
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
    EbpfContext,
};
use detrix_common::{StashKey, StashRegs, STASH_REGS, STASH_SLOTS};

/// Saved entry registers by frame.
#[map]
static STASH: LruHashMap<StashKey, StashRegs> = LruHashMap::with_max_entries(STASH_SLOTS, 0);

/// The entry probe: saves this call's general registers under (thread, stash id, CFA). The
/// stash id is the BPF cookie.
#[uprobe]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[uprobe] macro calls this with a ProbeContext by value"
)]
pub fn detrix_stash(ctx: ProbeContext) -> u32 {
    // SAFETY: ctx is the uprobe's pt_regs context.
    let id = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // SAFETY: uprobe ctx points at the user registers saved on entry.
    let r = unsafe { &*ctx.regs };
    let key = StashKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        id,
        // At a function's first instruction the return address is at rsp: the CFA is past it.
        cfa: r.rsp.wrapping_add(8),
    };
    // DWARF order: rax rdx rcx rbx rsi rdi rbp rsp r8..r15.
    let regs = StashRegs {
        regs: [
            r.rax, r.rdx, r.rcx, r.rbx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
    };
    // A failed insert (no memory) leaves no slot: the line's hit reads a fault, not a value.
    let _ = STASH.insert(key, regs, 0);
    0
}

/// `STASH`: DWARF register `reg` at the entry of the frame whose CFA is `cfa`, saved under
/// stash id `id` by this thread; `None` when no slot is there (the frame was entered before
/// the entry probe was attached, or its slot was evicted).
#[inline(never)]
pub fn read(reg: u8, cfa: u64, id: u64) -> Option<u64> {
    let key = StashKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        id,
        cfa,
    };
    let saved = STASH.get_ptr(key)?;
    let i = (reg as usize) & (STASH_REGS - 1);
    // SAFETY: a map value valid for this run; `i` is masked below STASH_REGS.
    Some(unsafe { (*saved).regs[i] })
}
