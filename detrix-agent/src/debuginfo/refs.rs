//! Who in the file reaches a code address: the direct calls to it, by site, and whether its
//! address is taken anywhere else.
//!
//! Why: a function whose first block has no instruction the kernel emulates (a leaf function
//! starting with `sub $N,%rsp`) can still be probed without a single-step — on every `call`
//! to it, which the kernel emulates — but only when those calls are every way in. A function
//! is entered otherwise through its address: a pointer in data (a vtable, a Go func value, an
//! `.init_array` entry, a relocation's addend, an exported symbol), or an address computed in
//! code (`lea f(%rip)`, an immediate). So the file is read once: every instruction of every
//! executable section (direct calls and jumps by target; every rip-relative, absolute or
//! immediate operand that names a code address), and every 8-byte word of every allocated
//! section that is not code (which covers data pointers, `.rela.dyn` addends and `.dynsym`
//! values alike). Anything that looks like an address of the function counts as taken: a
//! false match only costs a single-step, a missed one would miss hits. Not for Go: its runtime
//! builds interface method tables from 4-byte offsets into the text (`crate::place` refuses).

use std::collections::{HashMap, HashSet};

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, OpKind};

/// How a site reaches its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `call rel32`.
    Call,
    /// A direct jump or conditional branch (a tail call).
    Jump,
}

/// The direct references to code addresses in one file.
#[derive(Debug, Default)]
pub struct Refs {
    sites: HashMap<u64, Vec<(u64, Via)>>,
    taken: HashSet<u64>,
}

impl Refs {
    /// Reads `code` (executable sections) and `data` (every other allocated section), each as
    /// `(link address, bytes)`; `entry` is the file's entry point.
    #[must_use]
    pub fn build(code: &[(u64, &[u8])], data: &[(u64, &[u8])], entry: u64) -> Self {
        let lo = code.iter().map(|(a, _)| *a).min().unwrap_or(0);
        let hi = code
            .iter()
            .map(|(a, b)| a.saturating_add(b.len() as u64))
            .max()
            .unwrap_or(0);
        let is_code = |a: u64| a >= lo && a < hi;
        let mut out = Self::default();
        out.taken.insert(entry);
        let mut i = Instruction::default();
        for (base, bytes) in code {
            let mut d = Decoder::with_ip(64, bytes, *base, DecoderOptions::NONE);
            while d.can_decode() {
                d.decode_out(&mut i);
                let direct = matches!(i.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32);
                match i.flow_control() {
                    FlowControl::Call if direct => {
                        out.site(i.near_branch_target(), i.ip(), Via::Call);
                        continue;
                    }
                    FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch if direct => {
                        out.site(i.near_branch_target(), i.ip(), Via::Jump);
                        continue;
                    }
                    _ => {}
                }
                for k in 0..i.op_count() {
                    let v = match i.op_kind(k) {
                        OpKind::Memory if i.is_ip_rel_memory_operand() => i.ip_rel_memory_address(),
                        OpKind::Memory => i.memory_displacement64(),
                        OpKind::Immediate32to64 | OpKind::Immediate64 | OpKind::Immediate32 => {
                            i.immediate(k)
                        }
                        _ => continue,
                    };
                    if is_code(v) {
                        out.taken.insert(v);
                    }
                }
            }
        }
        for (_, bytes) in data {
            for w in bytes.chunks_exact(8) {
                let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
                if is_code(v) {
                    out.taken.insert(v);
                }
            }
        }
        out
    }

    fn site(&mut self, target: u64, at: u64, via: Via) {
        self.sites.entry(target).or_default().push((at, via));
    }

    /// The direct calls and jumps to `addr`, when they are the only ways there (its address is
    /// not taken anywhere in the file); `None` otherwise.
    #[must_use]
    pub fn only_direct(&self, addr: u64) -> Option<&[(u64, Via)]> {
        if self.taken.contains(&addr) {
            return None;
        }
        Some(self.sites.get(&addr).map_or(&[], Vec::as_slice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_sites_and_other_references_take_the_address() {
        // 0x1000 call 0x1010 / 0x1005 jmp 0x1010 / 0x1007 lea 0x1020(%rip),%rax (7 bytes) /
        // 0x100e ret / 0x100f nop / 0x1010 ret / … / 0x1020 ret / 0x1030 ret
        let mut code = vec![0x90u8; 0x31];
        code[..5].copy_from_slice(&[0xe8, 0x0b, 0, 0, 0]);
        code[5..7].copy_from_slice(&[0xeb, 0x09]);
        code[7..14].copy_from_slice(&[0x48, 0x8d, 0x05, 0x12, 0, 0, 0]);
        code[0x0e] = 0xc3;
        code[0x10] = 0xc3;
        code[0x20] = 0xc3;
        code[0x30] = 0xc3;
        let data = 0x1030u64.to_le_bytes();
        let r = Refs::build(&[(0x1000, &code)], &[(0x4000, &data)], 0x1000);
        assert_eq!(
            r.only_direct(0x1010),
            Some(&[(0x1000, Via::Call), (0x1005, Via::Jump)][..])
        );
        assert_eq!(r.only_direct(0x1020), None, "lea takes it");
        assert_eq!(r.only_direct(0x1030), None, "a data word holds it");
        assert_eq!(r.only_direct(0x1000), None, "the entry point");
        assert_eq!(r.only_direct(0x100f), Some(&[][..]), "nothing reaches it");
    }
}
