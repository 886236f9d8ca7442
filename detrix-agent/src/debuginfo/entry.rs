//! `DW_OP_entry_value`: a parameter's value when its function was entered. Read at the hit
//! from what an entry probe saved when the frame entered its function (`DwExpr::Entry`; the
//! engine attaches that probe with the line's), which no debugger can do; and recovered as a
//! debugger does, from the callers' call sites (`DW_TAG_call_site_parameter`'s
//! `DW_AT_call_value`), for a frame entered before the probes were attached, or where no
//! entry probe can be (Go).
//!
//! Why the call sites are shaped so: a call value is an expression in the caller's registers at the call. At the
//! probe those are the callee's registers unwound one frame with the CFI at the probe (a
//! callee-saved register it has not touched, one it saved on the stack, or the stack pointer,
//! which is the CFA); a register the call clobbers makes that call site unusable. Which call
//! site is the live one is decided at the hit by the return address (at CFA − 8): the value is
//! `Σ value_i × (ret == site_i) / Σ (ret == site_i)`, so a call from anywhere else (another
//! unit, a tail call) divides by zero — a read fault on that hit, never a wrong number. Only
//! the probed function's own unit is searched: a static function's callers are all there.

use gimli::constants as dw;

use super::location::{DwBin, DwExpr, Frame, Location};
use super::{Binary, ProbePoint, ResolveError, R};

/// One call of the probed function, as its caller's debug info describes it.
struct CallSite {
    return_pc: u64,
    /// The caller's `DW_TAG_subprogram`, in the probed function's unit.
    caller: usize,
    /// `DW_AT_call_value` of the parameter passed in the register asked for.
    value: gimli::AttributeValue<R>,
}

/// Call sites combined in one plan at most: each adds operands to the program's stack.
const MAX_SITES: usize = 2;

/// Registers the System V x86-64 ABI keeps across a call (DWARF numbers: rbx, rbp, r12–r15).
fn callee_saved(r: u16) -> bool {
    matches!(r, 3 | 6 | 12..=15)
}

impl Binary {
    /// The value `DW_OP_entry_value(inner)` stands for at the probe, as a tree over the probe's
    /// registers and memory.
    pub(super) fn entry_value(
        &self,
        point: &ProbePoint,
        var: &str,
        inner: gimli::Expression<R>,
    ) -> Result<DwExpr, ResolveError> {
        let unit = &self.units[point.unit];
        let mut ops = inner.operations(unit.encoding());
        let reg = match (ops.next(), ops.next()) {
            (Ok(Some(gimli::Operation::Register { register })), Ok(None)) => register.0,
            _ => {
                return Err(Self::unsupported(
                    point,
                    var,
                    "DW_OP_entry_value of something other than a register",
                ))
            }
        };
        let from_sites = self.recovered_at_call_sites(point, var, reg);
        match self.stash_entry(point) {
            Some(_) if reg < detrix_common::STASH_REGS as u16 => Ok(DwExpr::Entry {
                reg,
                cfa: Box::new(self.cfa_at(point.addr.0)?),
                fallback: from_sites.ok().map(Box::new),
            }),
            _ => from_sites,
        }
    }

    /// Where an entry probe saves the registers `DW_OP_entry_value` names at the point: the
    /// first instruction of the point's function (not of an inlined copy: an entry value is
    /// the physical frame's), when the CFI there says the CFA is `rsp + 8` (what the entry
    /// probe assumes). `None` for Go, whose goroutines move between threads and whose stacks
    /// move when they grow, so a frame's thread and CFA do not name it.
    #[must_use]
    pub fn stash_entry(&self, point: &ProbePoint) -> Option<super::LinkAddr> {
        if matches!(self.language(), Ok(super::Language::Go) | Err(_)) {
            return None;
        }
        let unit = &self.units[point.unit];
        let func = unit.entry(gimli::UnitOffset(point.subprogram)).ok()?;
        let pc = match func.attr_value(dw::DW_AT_low_pc) {
            Some(v) => self.dwarf.attr_address(unit, v).ok()??,
            None => {
                let v = func.attr_value(dw::DW_AT_entry_pc)?;
                self.dwarf.attr_address(unit, v).ok()??
            }
        };
        (self.cfa_at(pc).ok()? == DwExpr::Reg(7).plus(8)).then_some(super::LinkAddr(pc))
    }

    /// The value of `DW_OP_entry_value(reg)` at the probe from the callers' call sites.
    fn recovered_at_call_sites(
        &self,
        point: &ProbePoint,
        var: &str,
        reg: u16,
    ) -> Result<DwExpr, ResolveError> {
        let sites = self.call_sites(point, reg)?;
        let probe_cfa = self.cfa_at(point.addr.0)?;
        let ret = DwExpr::Deref {
            addr: Box::new(probe_cfa.clone().plus(-8)),
            size: 8,
        };
        let mut usable: Vec<(DwExpr, DwExpr)> = Vec::new();
        let mut why = format!(
            "DW_OP_entry_value (value at function entry) of DWARF register {reg}, and no call in this unit records what it was passed there"
        );
        for site in sites {
            let frame = Frame::Caller {
                return_pc: site.return_pc,
                caller: site.caller,
            };
            let value = match self.eval_at(point, point.unit, site.value, var, frame) {
                Ok(loc) => loc,
                Err(ResolveError::UnsupportedLocation { op, .. }) => {
                    why = format!(
                        "DW_OP_entry_value (value at function entry), whose caller computed it with {op}"
                    );
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(value) = value_tree(value) else {
                why =
                    "DW_OP_entry_value (value at function entry), whose caller describes a location, not a value"
                        .to_owned();
                continue;
            };
            match self.in_callee(point, &value, &probe_cfa) {
                Ok(v) => {
                    let here =
                        DwExpr::bin(DwBin::Eq, ret.clone(), DwExpr::Addr(site.return_pc as i64));
                    usable.push((v, here));
                }
                Err(r) => {
                    why = format!("DW_OP_entry_value (value at function entry), whose caller computed it from DWARF register {r}, which the call does not preserve");
                }
            }
        }
        if usable.is_empty() {
            return Err(Self::unsupported(point, var, &why));
        }
        if usable.len() > MAX_SITES {
            return Err(Self::unsupported(
                point,
                var,
                &format!("DW_OP_entry_value (value at function entry) with {} call sites (at most {MAX_SITES})", usable.len()),
            ));
        }
        let mut it = usable.into_iter();
        let Some((v0, h0)) = it.next() else {
            return Err(Self::unsupported(point, var, &why));
        };
        let (mut sum, mut hits) = match it.len() {
            0 => (v0, h0),
            _ => (DwExpr::bin(DwBin::Mul, v0, h0.clone()), h0),
        };
        for (v, h) in it {
            sum = DwExpr::bin(DwBin::Add, sum, DwExpr::bin(DwBin::Mul, v, h.clone()));
            hits = DwExpr::bin(DwBin::Add, hits, h);
        }
        Ok(DwExpr::bin(DwBin::Div, sum, hits))
    }

    /// The caller's frame base at a call: its `DW_AT_frame_base` in the caller's registers.
    pub(super) fn caller_frame_base(
        &self,
        point: &ProbePoint,
        var: &str,
        return_pc: u64,
        caller: usize,
    ) -> Result<DwExpr, ResolveError> {
        let attr = self.frame_base_attr(point, var, caller)?;
        match self.eval_at(
            point,
            point.unit,
            attr,
            var,
            Frame::CallerFrameBase { return_pc },
        )? {
            Location::Register { dwarf_reg } => Ok(DwExpr::Reg(dwarf_reg)),
            Location::Memory {
                base: super::AddrBase::Register(r),
                offset,
            } => Ok(DwExpr::Reg(r).plus(offset)),
            _ => Err(Self::unsupported(
                point,
                var,
                "a caller's frame base beyond register + offset",
            )),
        }
    }

    /// `t` (over the caller's registers at the call) over the probe's registers and memory; the
    /// DWARF number of a register the call does not preserve otherwise.
    fn in_callee(&self, point: &ProbePoint, t: &DwExpr, cfa: &DwExpr) -> Result<DwExpr, u16> {
        Ok(match t {
            DwExpr::Reg(7) => cfa.clone(),
            DwExpr::Reg(r) => {
                let rule = self
                    .cfi_row(point.addr.0, |row| row.register(gimli::Register(*r)))
                    .flatten();
                match rule {
                    Some(gimli::RegisterRule::Offset(n)) => DwExpr::Deref {
                        addr: Box::new(cfa.clone().plus(n)),
                        size: 8,
                    },
                    Some(gimli::RegisterRule::Undefined | gimli::RegisterRule::SameValue)
                    | None
                        if callee_saved(*r) =>
                    {
                        DwExpr::Reg(*r)
                    }
                    _ => return Err(*r),
                }
            }
            DwExpr::Const(_) | DwExpr::Addr(_) => t.clone(),
            DwExpr::Deref { addr, size } => DwExpr::Deref {
                addr: Box::new(self.in_callee(point, addr, cfa)?),
                size: *size,
            },
            DwExpr::Bin(op, a, b) => DwExpr::bin(
                *op,
                self.in_callee(point, a, cfa)?,
                self.in_callee(point, b, cfa)?,
            ),
            DwExpr::Un(op, a) => DwExpr::Un(*op, Box::new(self.in_callee(point, a, cfa)?)),
            // A caller's expression has no entry values (refused in `eval_at`).
            DwExpr::Entry { reg, .. } => return Err(*reg),
        })
    }

    /// The calls of the probed function in its unit that say what they passed in `reg`.
    fn call_sites(&self, point: &ProbePoint, reg: u16) -> Result<Vec<CallSite>, ResolveError> {
        let unit = &self.units[point.unit];
        let mut targets = vec![point.subprogram];
        let func = unit
            .entry(gimli::UnitOffset(point.subprogram))
            .map_err(self.dwarf_err("a function DIE"))?;
        for at in [dw::DW_AT_abstract_origin, dw::DW_AT_specification] {
            if let Some(gimli::AttributeValue::UnitRef(o)) = func.attr_value(at) {
                targets.push(o.0);
            }
        }
        let mut out = Vec::new();
        let mut cursor = unit.entries();
        // The enclosing subprograms (depth, offset), and the call site being read (depth,
        // return pc, caller) when it calls the probed function.
        let mut subprograms: Vec<(isize, usize)> = Vec::new();
        let mut site: Option<(isize, u64, usize)> = None;
        while let Some(entry) = cursor.next_dfs().map_err(self.dwarf_err("DIEs"))? {
            let entry = entry.clone();
            let depth = cursor.depth();
            while subprograms.last().is_some_and(|(d, _)| *d >= depth) {
                subprograms.pop();
            }
            if site.is_some_and(|(d, _, _)| depth <= d) {
                site = None;
            }
            let tag = entry.tag();
            if tag == dw::DW_TAG_subprogram {
                subprograms.push((depth, entry.offset().0));
            } else if tag == dw::DW_TAG_call_site || tag == dw::DW_TAG_GNU_call_site {
                let origin = entry
                    .attr_value(dw::DW_AT_call_origin)
                    .or_else(|| entry.attr_value(dw::DW_AT_abstract_origin));
                let calls_it = matches!(origin, Some(gimli::AttributeValue::UnitRef(o)) if targets.contains(&o.0));
                let pc = entry
                    .attr_value(dw::DW_AT_call_return_pc)
                    .or_else(|| entry.attr_value(dw::DW_AT_low_pc));
                let pc = match pc {
                    Some(v) => self
                        .dwarf
                        .attr_address(unit, v)
                        .map_err(self.dwarf_err("a call site's return address"))?,
                    None => None,
                };
                if let (true, Some(pc), Some(&(_, caller))) = (calls_it, pc, subprograms.last()) {
                    site = Some((depth, pc, caller));
                }
            } else if tag == dw::DW_TAG_call_site_parameter
                || tag == dw::DW_TAG_GNU_call_site_parameter
            {
                let Some((_, return_pc, caller)) = site else {
                    continue;
                };
                let Some(gimli::AttributeValue::Exprloc(loc)) =
                    entry.attr_value(dw::DW_AT_location)
                else {
                    continue;
                };
                let mut ops = loc.operations(unit.encoding());
                let in_reg = matches!(
                    (ops.next(), ops.next()),
                    (Ok(Some(gimli::Operation::Register { register })), Ok(None)) if register.0 == reg
                );
                let value = entry
                    .attr_value(dw::DW_AT_call_value)
                    .or_else(|| entry.attr_value(dw::DW_AT_GNU_call_site_value));
                if let (true, Some(value)) = (in_reg, value) {
                    out.push(CallSite {
                        return_pc,
                        caller,
                        value,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The value a call value's location stands for.
fn value_tree(loc: Location) -> Option<DwExpr> {
    Some(match loc {
        Location::Value(t) => t,
        Location::Computed {
            reg: Some(r),
            offset,
        } => DwExpr::Reg(r).plus(offset),
        Location::Computed { reg: None, offset } => DwExpr::Const(offset),
        Location::Memory {
            base: super::AddrBase::Register(r),
            offset,
        } => DwExpr::Deref {
            addr: Box::new(DwExpr::Reg(r).plus(offset)),
            size: 8,
        },
        _ => return None,
    })
}
