//! One step of call-frame unwinding with the binary's CFI (`.eh_frame` / `.debug_frame`).
//!
//! Why in user space: the kernel's `bpf_get_stack` follows frame pointers, which optimized C,
//! C++ and Rust code usually does not keep. The eBPF program instead copies the registers and a
//! bounded slice of the stack at the hit; this walks it afterwards, as a debugger would.

use gimli::UnwindSection as _;

use super::Binary;

/// The registers unwinding needs, as runtime values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnwindRegs {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
}

const RBP: u16 = 6;
const RSP: u16 = 7;
const RA: u16 = 16;

impl Binary {
    /// The caller's registers, from the frame at `regs` (whose `pc` is given as a link address
    /// in `link_pc`), reading stack memory through `read`. `None` where the CFI has no row for
    /// the address or a needed slot is outside what `read` can see.
    pub fn unwind_step(&self, link_pc: u64, regs: UnwindRegs, read: &dyn Fn(u64) -> Option<u64>) -> Option<UnwindRegs> {
        let mut ctx = gimli::UnwindContext::new();
        let from_debug = self.debug_frame.as_ref().and_then(|(s, b)| {
            s.unwind_info_for_address(b, &mut ctx, link_pc, gimli::DebugFrame::cie_from_offset).ok().map(|r| (r.cfa().clone(), rule(r, RA), rule(r, RBP)))
        });
        let row = from_debug.or_else(|| {
            let mut ctx = gimli::UnwindContext::new();
            self.eh_frame.as_ref().and_then(|(s, b)| {
                s.unwind_info_for_address(b, &mut ctx, link_pc, gimli::EhFrame::cie_from_offset).ok().map(|r| (r.cfa().clone(), rule(r, RA), rule(r, RBP)))
            })
        })?;
        let (cfa_rule, ra_rule, bp_rule) = row;
        let cfa = match cfa_rule {
            gimli::CfaRule::RegisterAndOffset { register, offset } => {
                let base = match register.0 {
                    RSP => regs.sp,
                    RBP => regs.bp,
                    _ => return None,
                };
                base.wrapping_add(offset as u64)
            }
            gimli::CfaRule::Expression(_) => return None,
        };
        let ra = match ra_rule {
            Some(gimli::RegisterRule::Offset(o)) => read(cfa.wrapping_add(o as u64))?,
            _ => return None,
        };
        let bp = match bp_rule {
            Some(gimli::RegisterRule::Offset(o)) => read(cfa.wrapping_add(o as u64))?,
            _ => regs.bp,
        };
        Some(UnwindRegs { pc: ra, sp: cfa, bp })
    }
}

type Rule = Option<gimli::RegisterRule<usize>>;

fn rule(row: &gimli::UnwindTableRow<usize>, reg: u16) -> Rule {
    row.register(gimli::Register(reg))
}
