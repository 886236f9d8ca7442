//! DWARF location expressions → where a value lives at one PC, in terms a plan can read.
//!
//! Only the subset a plan can express is accepted: a register, or memory at
//! (register | absolute address | CFA) + constant, possibly through one pointer loaded from
//! such an address (`DW_OP_deref`: Rust keeps an async fn's locals in its state machine, behind
//! a pointer). Everything else is refused by name (`DW_OP_entry_value`, …) rather than
//! approximated.

use gimli::constants as dw;

use super::{Binary, LinkAddr, ProbePoint, ResolveError, R};

/// What an address is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrBase {
    /// The value of a DWARF-numbered register at the probe.
    Register(u16),
    /// A link-time address (add the load bias for `ET_DYN` objects).
    Absolute,
}

/// Where a variable's bytes are at a probe point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The value itself is in a DWARF-numbered register.
    Register { dwarf_reg: u16 },
    /// The value is in memory at `base + offset`.
    Memory { base: AddrBase, offset: i64 },
    /// The value is in memory at `*(base + at) + offset`: its address is a pointer stored at
    /// `base + at` (`DW_OP_deref`).
    Indirect {
        base: AddrBase,
        at: i64,
        offset: i64,
    },
    /// The value itself is computed (`DW_OP_stack_value`): a register plus a constant, or a
    /// constant (`reg: None`). Optimised code describes `i + 1` or a folded constant this way.
    Computed { reg: Option<u16>, offset: i64 },
    /// The value is split (`DW_OP_piece`): consecutive pieces of `size` bytes, each in a
    /// register or in memory, or `None` where that part is optimized out. Go passes a string's
    /// pointer and length in two registers this way.
    Pieces(Vec<(u64, Option<Location>)>),
}

/// An address computed by the expression so far.
#[derive(Debug, Clone, Copy)]
struct AddrValue {
    base: AddrBase,
    offset: i64,
    /// `Some(at)`: the address is `*(base + at) + offset` (after a `DW_OP_deref`).
    deref: Option<i64>,
}

impl AddrValue {
    fn plain(base: AddrBase, offset: i64) -> Self {
        Self {
            base,
            offset,
            deref: None,
        }
    }

    fn location(self) -> Location {
        match self.deref {
            None => Location::Memory {
                base: self.base,
                offset: self.offset,
            },
            Some(at) => Location::Indirect {
                base: self.base,
                at,
                offset: self.offset,
            },
        }
    }
}

impl Binary {
    /// The CFA rule at `pc` as register + offset, from `.debug_frame` (Go) or `.eh_frame`.
    fn cfa_at(&self, pc: u64) -> Result<AddrValue, ResolveError> {
        let cfa = self.cfi_row(pc, |row| match row.cfa() {
            gimli::CfaRule::RegisterAndOffset { register, offset } => {
                Some(AddrValue::plain(AddrBase::Register(register.0), *offset))
            }
            gimli::CfaRule::Expression(_) => None,
        });
        cfa.flatten().ok_or_else(|| ResolveError::NoCfi {
            binary: self.path.clone(),
            pc: LinkAddr(pc),
        })
    }

    /// The frame base (`DW_AT_frame_base`) of the point's function, as an address.
    fn frame_base(&self, point: &ProbePoint, var: &str) -> Result<AddrValue, ResolveError> {
        let unit = &self.units[point.unit];
        let entry = unit
            .entry(gimli::UnitOffset(point.subprogram))
            .map_err(self.dwarf_err("a function DIE"))?;
        let Some(attr) = entry.attr_value(dw::DW_AT_frame_base) else {
            return Err(Self::unsupported(
                point,
                var,
                "DW_OP_fbreg without DW_AT_frame_base",
            ));
        };
        match self.eval_at(point, point.unit, attr, var, None)? {
            // DW_OP_reg<n> as a frame base means "the address held in that register".
            Location::Register { dwarf_reg } => {
                Ok(AddrValue::plain(AddrBase::Register(dwarf_reg), 0))
            }
            Location::Memory { base, offset } => Ok(AddrValue::plain(base, offset)),
            Location::Indirect { base, at, offset } => Ok(AddrValue {
                base,
                offset,
                deref: Some(at),
            }),
            Location::Pieces(_) => Err(Self::unsupported(
                point,
                var,
                "DW_OP_piece in DW_AT_frame_base",
            )),
            Location::Computed { .. } => Err(Self::unsupported(
                point,
                var,
                "DW_OP_stack_value in DW_AT_frame_base",
            )),
        }
    }

    /// Evaluates a `DW_AT_location` attribute at the point's PC.
    pub(super) fn location_at(
        &self,
        point: &ProbePoint,
        ui: usize,
        attr: gimli::AttributeValue<R>,
        var: &str,
    ) -> Result<Location, ResolveError> {
        self.eval_at(point, ui, attr, var, Some(()))
    }

    /// `allow_fbreg` is `None` while evaluating the frame base itself (no recursion).
    fn eval_at(
        &self,
        point: &ProbePoint,
        ui: usize,
        attr: gimli::AttributeValue<R>,
        var: &str,
        allow_fbreg: Option<()>,
    ) -> Result<Location, ResolveError> {
        let unit = &self.units[ui];
        let pc = point.addr.0;
        let expr = match attr {
            gimli::AttributeValue::Exprloc(e) => e,
            other => {
                let Some(mut list) = self
                    .dwarf
                    .attr_locations(unit, other)
                    .map_err(self.dwarf_err("a location list"))?
                else {
                    return Err(Self::unsupported(
                        point,
                        var,
                        "a location attribute of an unknown form",
                    ));
                };
                let mut found = None;
                while let Some(entry) = list.next().map_err(self.dwarf_err("a location list"))? {
                    if entry.range.begin <= pc && pc < entry.range.end {
                        found = Some(entry.data);
                        break;
                    }
                }
                match found {
                    Some(e) => e,
                    None => return Err(Self::optimized_out(point, var)),
                }
            }
        };
        if expr.0.is_empty() {
            return Err(Self::optimized_out(point, var));
        }
        let mut ops = expr.operations(unit.encoding());
        let mut stack: Vec<AddrValue> = Vec::new();
        let mut in_register = None;
        let mut pieces: Vec<(u64, Option<Location>)> = Vec::new();
        // A constant on the stack (DW_OP_lit*, DW_OP_const*): only meaningful with stack_value.
        let mut constant: Option<i64> = None;
        let mut computed: Option<Location> = None;
        while let Some(op) = ops
            .next()
            .map_err(self.dwarf_err("a location expression"))?
        {
            if in_register.is_some() && !matches!(op, gimli::Operation::Piece { .. }) {
                return Err(Self::unsupported(
                    point,
                    var,
                    "an operation after DW_OP_reg other than DW_OP_piece",
                ));
            }
            if computed.is_some() && !matches!(op, gimli::Operation::Piece { .. }) {
                return Err(Self::unsupported(
                    point,
                    var,
                    "an operation after DW_OP_stack_value other than DW_OP_piece",
                ));
            }
            match op {
                gimli::Operation::Address { address } => {
                    stack.push(AddrValue::plain(AddrBase::Absolute, address as i64));
                }
                gimli::Operation::AddressIndex { index } => {
                    let a = self
                        .dwarf
                        .address(unit, index)
                        .map_err(self.dwarf_err("an address index"))?;
                    stack.push(AddrValue::plain(AddrBase::Absolute, a as i64));
                }
                gimli::Operation::FrameOffset { offset } => {
                    if allow_fbreg.is_none() {
                        return Err(Self::unsupported(
                            point,
                            var,
                            "DW_OP_fbreg inside DW_AT_frame_base",
                        ));
                    }
                    let fb = self.frame_base(point, var)?;
                    stack.push(AddrValue {
                        offset: fb.offset.wrapping_add(offset),
                        ..fb
                    });
                }
                gimli::Operation::RegisterOffset {
                    register, offset, ..
                } => {
                    stack.push(AddrValue::plain(AddrBase::Register(register.0), offset));
                }
                gimli::Operation::Register { register } => in_register = Some(register.0),
                gimli::Operation::CallFrameCFA => stack.push(self.cfa_at(pc)?),
                gimli::Operation::PlusConstant { value } => match stack.last_mut() {
                    Some(top) => top.offset = top.offset.wrapping_add(value as i64),
                    None => {
                        return Err(Self::unsupported(
                            point,
                            var,
                            "DW_OP_plus_uconst on an empty stack",
                        ))
                    }
                },
                gimli::Operation::UnsignedConstant { value } if constant.is_none() => {
                    constant = Some(value as i64);
                }
                gimli::Operation::SignedConstant { value } if constant.is_none() => {
                    constant = Some(value);
                }
                // `DW_OP_consts c; DW_OP_plus` / `DW_OP_minus` on an address: an offset.
                gimli::Operation::Plus if constant.is_some() && !stack.is_empty() => {
                    if let (Some(top), Some(c)) = (stack.last_mut(), constant.take()) {
                        top.offset = top.offset.wrapping_add(c);
                    }
                }
                gimli::Operation::Minus if constant.is_some() && !stack.is_empty() => {
                    if let (Some(top), Some(c)) = (stack.last_mut(), constant.take()) {
                        top.offset = top.offset.wrapping_sub(c);
                    }
                }
                // A pointer-sized load: the address on the stack becomes the pointer stored there.
                gimli::Operation::Deref {
                    size: 8,
                    space: false,
                    ..
                } => match stack.last_mut() {
                    Some(top) if top.deref.is_none() && constant.is_none() => {
                        *top = AddrValue {
                            base: top.base,
                            offset: 0,
                            deref: Some(top.offset),
                        };
                    }
                    Some(_) => {
                        return Err(Self::unsupported(
                            point,
                            var,
                            "DW_OP_deref of an address itself loaded by DW_OP_deref",
                        ))
                    }
                    None => {
                        return Err(Self::unsupported(
                            point,
                            var,
                            "DW_OP_deref on an empty stack",
                        ))
                    }
                },
                gimli::Operation::StackValue => {
                    computed =
                        Some(match (stack.pop(), constant.take(), stack.is_empty()) {
                            // `addr; DW_OP_deref; DW_OP_stack_value`: the value stored at addr.
                            (
                                Some(AddrValue {
                                    base,
                                    offset: 0,
                                    deref: Some(at),
                                }),
                                None,
                                true,
                            ) => Location::Memory { base, offset: at },
                            (
                                Some(AddrValue {
                                    base: AddrBase::Register(r),
                                    offset,
                                    deref: None,
                                }),
                                None,
                                true,
                            ) => Location::Computed {
                                reg: Some(r),
                                offset,
                            },
                            (None, Some(c), true) => Location::Computed {
                                reg: None,
                                offset: c,
                            },
                            _ => return Err(Self::unsupported(
                                point,
                                var,
                                "DW_OP_stack_value over an expression beyond register + constant",
                            )),
                        });
                }
                gimli::Operation::Piece {
                    size_in_bits,
                    bit_offset,
                } => {
                    if size_in_bits % 8 != 0 || bit_offset.is_some_and(|b| b != 0) {
                        return Err(Self::unsupported(
                            point,
                            var,
                            "DW_OP_bit_piece (a value split at bit boundaries)",
                        ));
                    }
                    let loc = match (in_register.take(), computed.take(), stack.pop()) {
                        (Some(dwarf_reg), _, _) => Some(Location::Register { dwarf_reg }),
                        (None, Some(c), _) => Some(c),
                        (None, None, Some(top)) => Some(top.location()),
                        (None, None, None) => None,
                    };
                    stack.clear();
                    pieces.push((size_in_bits / 8, loc));
                }
                gimli::Operation::EntryValue { .. } => {
                    return Err(Self::unsupported(
                        point,
                        var,
                        "DW_OP_entry_value (value at function entry)",
                    ));
                }
                gimli::Operation::ImplicitValue { .. } => {
                    return Err(Self::unsupported(point, var, "DW_OP_implicit_value"));
                }
                gimli::Operation::ImplicitPointer { .. } => {
                    return Err(Self::unsupported(point, var, "DW_OP_implicit_pointer"));
                }
                other => {
                    let name = format!("{other:?}");
                    let name = name.split([' ', '{', '(']).next().unwrap_or("?").to_owned();
                    return Err(Self::unsupported(point, var, &format!("DW_OP {name}")));
                }
            }
        }
        if !pieces.is_empty() {
            if in_register.is_some() || computed.is_some() || !stack.is_empty() {
                return Err(Self::unsupported(
                    point,
                    var,
                    "a location left over after its pieces",
                ));
            }
            return Ok(Location::Pieces(pieces));
        }
        if let Some(c) = computed {
            return Ok(c);
        }
        if constant.is_some() {
            return Err(Self::unsupported(
                point,
                var,
                "a constant without DW_OP_stack_value",
            ));
        }
        if let Some(dwarf_reg) = in_register {
            if !stack.is_empty() {
                return Err(Self::unsupported(
                    point,
                    var,
                    "a register location mixed with an address",
                ));
            }
            return Ok(Location::Register { dwarf_reg });
        }
        match (stack.pop(), stack.is_empty()) {
            (Some(top), true) => Ok(top.location()),
            _ => Err(Self::unsupported(
                point,
                var,
                "an expression that leaves no single address",
            )),
        }
    }

    fn unsupported(point: &ProbePoint, var: &str, op: &str) -> ResolveError {
        ResolveError::UnsupportedLocation {
            var: var.to_owned(),
            file: point.file.clone(),
            line: point.line,
            op: op.to_owned(),
        }
    }
}
