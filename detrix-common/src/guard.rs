//! A probe on a conditional branch into a block, firing only when the branch goes there.
//!
//! Why: a block the kernel emulates no instruction of (a `mov` chain before a `ret`, code
//! ending in an indirect call) costs a single-step per hit, ~17× an emulated one. Every way
//! into it is a branch whose instruction the kernel does emulate: a probe on each of them
//! fires right before the block runs, with every register and byte of memory as the block
//! starts. An unconditional jump goes there whenever it runs; a conditional one only when its
//! condition holds — which the flags at the probe already say, because the branch has not run
//! yet. The agent puts the branch's condition in the upper half of the probe's BPF cookie
//! (the lower half names the probe); the program evaluates it against the saved flags before
//! anything else, so a pass the other way is not a hit at all.

/// The cookie bit saying the upper half holds a condition.
pub const PRESENT: u64 = 1 << 36;
/// Where the condition code is in the cookie.
pub const SHIFT: u32 = 32;

/// RFLAGS bits the x86 conditions read.
const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

/// The cookie for probe `id` on a branch that goes into the block when x86 condition `cc`
/// (the low nibble of the `jcc` opcode: 0 = `jo` … 15 = `jg`) holds.
#[must_use]
pub const fn cookie(id: u32, cc: u8) -> u64 {
    id as u64 | PRESENT | (((cc & 0xf) as u64) << SHIFT)
}

/// Whether a hit with `cookie` counts: no condition, or the condition holds for `flags`.
#[inline(always)]
#[must_use]
pub fn passes(cookie: u64, flags: u64) -> bool {
    cookie & PRESENT == 0 || holds(((cookie >> SHIFT) & 0xf) as u8, flags)
}

/// Whether x86 condition `cc` holds for `flags` (Intel SDM vol. 2, "Jcc"): the even codes
/// test a flag combination, the odd ones its negation.
#[inline(always)]
#[must_use]
pub fn holds(cc: u8, flags: u64) -> bool {
    let set = |bit: u64| flags & bit != 0;
    let base = match cc >> 1 {
        0 => set(OF),
        1 => set(CF),
        2 => set(ZF),
        3 => set(CF) || set(ZF),
        4 => set(SF),
        5 => set(PF),
        6 => set(SF) != set(OF),
        _ => set(ZF) || set(SF) != set(OF),
    };
    base != (cc & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_read_the_flags_as_the_cpu_does() {
        // (cc, flags, taken): each pair of codes on flags that make the even one hold.
        let cases: [(u8, u64, bool); 20] = [
            (0x0, OF, true),       // jo
            (0x1, OF, false),      // jno
            (0x2, CF, true),       // jb
            (0x3, 0, true),        // jae
            (0x4, ZF, true),       // je
            (0x5, ZF, false),      // jne
            (0x6, ZF, true),       // jbe on ZF
            (0x6, CF, true),       // jbe on CF
            (0x7, 0, true),        // ja
            (0x7, CF, false),      // ja, CF set
            (0x8, SF, true),       // js
            (0x9, SF, false),      // jns
            (0xa, PF, true),       // jp
            (0xb, PF, false),      // jnp
            (0xc, SF, true),       // jl: SF != OF
            (0xc, SF | OF, false), // jl: SF == OF
            (0xd, SF | OF, true),  // jge
            (0xe, ZF, true),       // jle on ZF
            (0xf, SF | OF, true),  // jg: ZF clear, SF == OF
            (0xf, ZF, false),      // jg: ZF set
        ];
        for (cc, flags, taken) in cases {
            assert_eq!(holds(cc, flags), taken, "cc {cc:#x} flags {flags:#x}");
        }
    }

    #[test]
    fn the_cookie_keeps_the_probe_id_and_says_the_condition() {
        let c = cookie(0xabcd_1234, 0x4);
        assert_eq!(c as u32, 0xabcd_1234, "the probe id is the lower half");
        assert!(passes(c, ZF), "je goes there with ZF set");
        assert!(!passes(c, 0), "and not without");
        assert!(passes(0xabcd_1234, 0), "no condition: every hit passes");
        // Code 0 (jo) is a condition too: the PRESENT bit tells it from none.
        assert!(!passes(cookie(1, 0), 0));
    }
}
