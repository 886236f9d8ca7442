//! One step of call-frame unwinding with the binary's CFI (`.eh_frame` / `.debug_frame`).
//!
//! Why in user space: the kernel's `bpf_get_stack` follows frame pointers, which optimized C,
//! C++ and Rust code usually does not keep. The eBPF program instead copies the registers and a
//! bounded slice of the stack at the hit; this walks it afterwards, as a debugger would.

use gimli::UnwindSection;

use super::{Binary, R};
use crate::addr::{LinkAddr, RuntimeAddr};

/// Where one FDE's code range is and where the FDE is in its section: 24 bytes, so the index
/// of a large binary stays small (a parsed FDE, with its CIE, is ten times that).
#[derive(Debug, Clone, Copy)]
pub(super) struct Fde {
    start: u64,
    end: u64,
    offset: usize,
}

/// Every FDE of `section`, sorted by start address. A malformed entry ends the list (what
/// came before is still used).
fn index<S: UnwindSection<R>>(section: &S, bases: &gimli::BaseAddresses) -> Vec<Fde> {
    let mut out = Vec::new();
    let mut entries = section.entries(bases);
    while let Ok(Some(e)) = entries.next() {
        if let gimli::CieOrFde::Fde(partial) = e {
            if let Ok(fde) = partial.parse(S::cie_from_offset) {
                out.push(Fde {
                    start: fde.initial_address(),
                    end: fde.end_address(),
                    offset: fde.offset(),
                });
            }
        }
    }
    out.sort_by_key(|f| f.start);
    out.shrink_to_fit();
    out
}

/// The row of `fdes` (an [`index`] of `section`) for `pc`, through `f`.
fn row_in<S: UnwindSection<R>, T>(
    section: &S,
    bases: &gimli::BaseAddresses,
    fdes: &[Fde],
    pc: u64,
    f: impl FnOnce(&gimli::UnwindTableRow<usize>) -> T,
) -> Option<T> {
    let i = fdes.partition_point(|d| d.start <= pc);
    let at = fdes.get(i.checked_sub(1)?)?;
    if pc >= at.end {
        return None;
    }
    let fde = section
        .fde_from_offset(bases, S::Offset::from(at.offset), S::cie_from_offset)
        .ok()?;
    let mut ctx = gimli::UnwindContext::new();
    fde.unwind_info_for_address(section, bases, &mut ctx, pc)
        .ok()
        .map(f)
}

/// The registers unwinding needs, as runtime values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnwindRegs {
    pub pc: RuntimeAddr,
    pub sp: u64,
    pub bp: u64,
}

const RBP: u16 = 6;
const RSP: u16 = 7;
const RA: u16 = 16;

impl Binary {
    /// The CFI row for `pc` (a link address), through `f`: from `.debug_frame` (Go) if it has
    /// one, else from `.eh_frame`.
    pub(super) fn cfi_row<T>(
        &self,
        pc: u64,
        f: impl Fn(&gimli::UnwindTableRow<usize>) -> T,
    ) -> Option<T> {
        let from_debug = self.debug_frame.as_ref().and_then(|(s, b)| {
            let fdes = self.debug_fdes.get_or_init(|| index(s, b));
            row_in(s, b, fdes, pc, &f)
        });
        from_debug.or_else(|| {
            self.eh_frame.as_ref().and_then(|(s, b)| {
                let fdes = self.eh_fdes.get_or_init(|| index(s, b));
                row_in(s, b, fdes, pc, &f)
            })
        })
    }

    /// Every `.eh_frame` FDE whose code overlaps `[start, end)` (link addresses), through `f`,
    /// by address; an FDE that cannot be parsed gives `None`.
    pub(super) fn eh_fdes_in<T>(
        &self,
        start: u64,
        end: u64,
        f: impl Fn(&gimli::FrameDescriptionEntry<R>) -> T,
    ) -> Vec<Option<T>> {
        let Some((section, bases)) = self.eh_frame.as_ref() else {
            return Vec::new();
        };
        let fdes = self.eh_fdes.get_or_init(|| index(section, bases));
        let from = fdes.partition_point(|d| d.end <= start);
        fdes[from..]
            .iter()
            .filter(|d| d.end > start)
            .take_while(|d| d.start < end)
            .map(|d| {
                section
                    .fde_from_offset(bases, d.offset.into(), gimli::EhFrame::cie_from_offset)
                    .ok()
                    .map(|fde| f(&fde))
            })
            .collect()
    }

    /// The caller's registers, from the frame at `regs` (whose `pc` is given as a link address
    /// in `link_pc`), reading stack memory through `read`. `None` where the CFI has no row for
    /// the address or a needed slot is outside what `read` can see.
    pub fn unwind_step(
        &self,
        link_pc: LinkAddr,
        regs: UnwindRegs,
        read: &dyn Fn(u64) -> Option<u64>,
    ) -> Option<UnwindRegs> {
        let row = self.cfi_row(link_pc.0, |r| (r.cfa().clone(), rule(r, RA), rule(r, RBP)))?;
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
        Some(UnwindRegs {
            pc: RuntimeAddr(ra),
            sp: cfa,
            bp,
        })
    }
}

type Rule = Option<gimli::RegisterRule<usize>>;

fn rule(row: &gimli::UnwindTableRow<usize>, reg: u16) -> Rule {
    row.register(gimli::Register(reg))
}
