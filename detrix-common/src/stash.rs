//! The entry-value stash: the registers an entry probe saves when a function starts
//! ([`StashRegs`]), keyed by the frame they belong to ([`StashKey`]), for [`crate::op::STASH`]
//! to read at the line.
//!
//! Why its own file: a second map and a second program (`detrix_stash`) with their own
//! layout; the plan only names a stash id.

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
