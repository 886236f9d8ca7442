//! DWARF location expressions → where a value lives at one PC, in terms a plan can read.
//!
//! The whole DWARF stack machine is evaluated **symbolically**: each stack entry is a tree
//! ([`DwExpr`]) over what only the hit knows (registers, memory), so stack shuffles (`dup`,
//! `swap`, `pick`, `rot`, …) and constant operands disappear here, and what is left — an address
//! or a computed value such as `rdi != 0` — is lowered by the plan to ops the eBPF program runs
//! at the hit (`PUSH`/`ALU`). The common shapes are kept as the simple [`Location`]s
//! (register, register + offset, a pointer loaded once), so their plans stay as short as they
//! were. `DW_OP_entry_value` is read from an entry probe's stash, or recovered from the callers'
//! call sites (`entry.rs`). A forward branch (`DW_OP_bra` on a value only the hit knows, as
//! gcc writes `min`/`max`) runs both ways and the two results are selected at the hit with
//! arithmetic (`select`); a constant branch or `DW_OP_skip` just jumps. Refused by name, never
//! approximated: loops (backward jumps), typed-stack and TLS operations.

use gimli::constants as dw;
use gimli::Operation as O;

pub use super::dwexpr::{alu_code, alu_unary, AddrBase, DwBin, DwExpr, DwUn};
use super::{Binary, LinkAddr, ProbePoint, ResolveError, R};

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
    /// The value itself is computed by a longer expression (`x != 0`, `(x ^ y) & 0xff`).
    Value(DwExpr),
    /// The value is in memory at an address computed by a longer expression.
    At(DwExpr),
    /// The value's bytes are in the debug info (`DW_OP_implicit_value`).
    Implicit(Vec<u8>),
    /// A pointer the compiler never made (`DW_OP_implicit_pointer`): it has no value, but what
    /// it points to is the variable at `target` (its location here), `offset` bytes in. Only
    /// dereferencing it reads anything.
    ImplicitPointer { target: Box<Location>, offset: i64 },
    /// The value is split (`DW_OP_piece`): consecutive pieces of `size` bytes, each in a
    /// register or in memory, or `None` where that part is optimized out. Go passes a string's
    /// pointer and length in two registers this way.
    Pieces(Vec<(u64, Option<Location>)>),
}

impl Location {
    /// The simplest location for memory at the address `t`.
    fn memory_at(t: DwExpr) -> Location {
        if let Some((base, offset)) = t.plain_address() {
            return Location::Memory { base, offset };
        }
        if let (DwExpr::Deref { addr, size: 8 }, offset) = t.split_offset() {
            if let Some((base, at)) = addr.plain_address() {
                return Location::Indirect { base, at, offset };
            }
        }
        Location::At(t)
    }

    /// The simplest location for the value `t` (`DW_OP_stack_value`).
    fn value_of(t: DwExpr) -> Location {
        match t.split_offset() {
            (DwExpr::Reg(r), offset) => {
                return Location::Computed {
                    reg: Some(*r),
                    offset,
                }
            }
            (DwExpr::Const(c), offset) => {
                return Location::Computed {
                    reg: None,
                    offset: c.wrapping_add(offset),
                }
            }
            _ => {}
        }
        // `addr; DW_OP_deref; DW_OP_stack_value`: the value stored at addr.
        if let DwExpr::Deref { addr, size: 8 } = &t {
            if let Some((base, offset)) = addr.plain_address() {
                return Location::Memory { base, offset };
            }
        }
        Location::Value(t)
    }
}

/// Whose frame an expression describes, which decides what `DW_OP_fbreg`, `DW_OP_call_frame_cfa`
/// and `DW_OP_entry_value` mean in it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Frame {
    /// A variable at the probe.
    Probe,
    /// The probed function's `DW_AT_frame_base`.
    OwnBase,
    /// A call site's `DW_AT_call_value`, in the caller's frame at the call (`return_pc`), the
    /// caller's `DW_TAG_subprogram` at `caller` in the same unit.
    Caller { return_pc: u64, caller: usize },
    /// The caller's `DW_AT_frame_base` at that call.
    CallerFrameBase { return_pc: u64 },
}

impl Frame {
    /// The PC the expression is evaluated at (a location list entry is chosen by it; the CFA
    /// rule is looked up there): inside the call instruction for a caller.
    fn pc(self, point: &ProbePoint) -> u64 {
        match self {
            Frame::Probe | Frame::OwnBase => point.addr.0,
            Frame::Caller { return_pc, .. } | Frame::CallerFrameBase { return_pc } => {
                return_pc.saturating_sub(1)
            }
        }
    }
}

/// An expression's operations, for [`Binary::run`]: each with its byte offset (`end` is the
/// offset past the last), in the unit `ui`, describing `frame`.
struct Code<'a> {
    ops: &'a [(u64, O<R>)],
    end: u64,
    ui: usize,
    frame: Frame,
}

/// Paths a branching expression may take at most (each branch on a value the hit knows runs
/// both ways).
const MAX_PATHS: usize = 8;
/// Why a jump is refused.
const JUMP: &str =
    "a backward DW_OP_bra or DW_OP_skip (a loop), or one into the middle of an operation";

impl Code<'_> {
    /// The index of the operation `target` bytes past the end of the one before `next`; `None`
    /// for a backward jump (a loop: never evaluated, so every expression ends) or one that
    /// lands inside an operation.
    fn jump(&self, next: usize, target: i16) -> Option<usize> {
        let from = self.ops.get(next).map_or(self.end, |(at, _)| *at);
        let to = from.checked_add(u64::try_from(target).ok()?)?;
        if to == self.end {
            return Some(self.ops.len());
        }
        self.ops.iter().position(|(at, _)| *at == to)
    }
}

/// The DWARF stack machine's state between operations.
#[derive(Clone, Default)]
struct Machine {
    stack: Vec<DwExpr>,
    /// What ends the current piece: `DW_OP_reg*`, `DW_OP_implicit_value`, `DW_OP_stack_value`.
    ended: Option<Part>,
    pieces: Vec<(u64, Option<Location>)>,
}

/// `c ? a : b` over two locations a branch ended in: both values (a register, a computed
/// value, a constant) or both addresses, selected at the hit by arithmetic the program has:
/// `b + (a - b) * (c != 0)`. `None` when they are different kinds (a value on one path, an
/// address on the other, or pieces).
fn select(c: &DwExpr, a: Location, b: &Location) -> Option<Location> {
    if a == *b {
        return Some(a);
    }
    let pick = |x: DwExpr, y: DwExpr| {
        if x == y {
            return x;
        }
        let on = DwExpr::bin(DwBin::Ne, c.clone(), DwExpr::Const(0));
        DwExpr::bin(
            DwBin::Add,
            y.clone(),
            DwExpr::bin(DwBin::Mul, DwExpr::bin(DwBin::Sub, x, y), on),
        )
    };
    let value = |l: &Location| match l {
        Location::Register { dwarf_reg } => Some(DwExpr::Reg(*dwarf_reg)),
        Location::Computed {
            reg: Some(r),
            offset,
        } => Some(DwExpr::Reg(*r).plus(*offset)),
        Location::Computed { reg: None, offset } => Some(DwExpr::Const(*offset)),
        Location::Value(t) => Some(t.clone()),
        _ => None,
    };
    let address = |l: &Location| match l {
        Location::Memory {
            base: AddrBase::Register(r),
            offset,
        } => Some(DwExpr::Reg(*r).plus(*offset)),
        Location::Memory {
            base: AddrBase::Absolute,
            offset,
        } => Some(DwExpr::Addr(*offset)),
        Location::Indirect { base, at, offset } => Some(
            DwExpr::Deref {
                addr: Box::new(match base {
                    AddrBase::Register(r) => DwExpr::Reg(*r).plus(*at),
                    AddrBase::Absolute => DwExpr::Addr(*at),
                }),
                size: 8,
            }
            .plus(*offset),
        ),
        Location::At(t) => Some(t.clone()),
        _ => None,
    };
    if let (Some(x), Some(y)) = (value(&a), value(b)) {
        return Some(Location::value_of(pick(x, y)));
    }
    if let (Some(x), Some(y)) = (address(&a), address(b)) {
        return Some(Location::memory_at(pick(x, y)));
    }
    None
}

/// What one piece (or the whole expression) left behind.
#[derive(Clone)]
enum Part {
    Register(u16),
    Implicit(Vec<u8>),
    Pointer(Box<Location>, i64),
    Value(DwExpr),
    Address(DwExpr),
    Empty,
}

impl Part {
    fn location(self) -> Option<Location> {
        match self {
            Part::Register(dwarf_reg) => Some(Location::Register { dwarf_reg }),
            Part::Implicit(b) => Some(Location::Implicit(b)),
            Part::Pointer(target, offset) => Some(Location::ImplicitPointer { target, offset }),
            Part::Value(t) => Some(Location::value_of(t)),
            Part::Address(t) => Some(Location::memory_at(t)),
            Part::Empty => None,
        }
    }
}

impl Binary {
    /// The CFA rule at `pc` as register + offset, from `.debug_frame` (Go) or `.eh_frame`.
    pub(super) fn cfa_at(&self, pc: u64) -> Result<DwExpr, ResolveError> {
        let cfa = self.cfi_row(pc, |row| match row.cfa() {
            gimli::CfaRule::RegisterAndOffset { register, offset } => {
                Some(DwExpr::Reg(register.0).plus(*offset))
            }
            gimli::CfaRule::Expression(_) => None,
        });
        cfa.flatten().ok_or_else(|| ResolveError::NoCfi {
            binary: self.path.clone(),
            pc: LinkAddr(pc),
        })
    }

    /// The `DW_AT_frame_base` of the function whose DIE is at `function` in the point's unit
    /// (the point's own function, or the caller at an entry value's call site).
    pub(super) fn frame_base_attr(
        &self,
        point: &ProbePoint,
        var: &str,
        function: usize,
    ) -> Result<gimli::AttributeValue<R>, ResolveError> {
        let unit = &self.units[point.unit];
        let entry = unit
            .entry(gimli::UnitOffset(function))
            .map_err(self.dwarf_err("a function DIE"))?;
        entry
            .attr_value(dw::DW_AT_frame_base)
            .ok_or_else(|| Self::unsupported(point, var, "DW_OP_fbreg without DW_AT_frame_base"))
    }

    /// The frame base (`DW_AT_frame_base`) of the point's function, as an address.
    fn frame_base(&self, point: &ProbePoint, var: &str) -> Result<DwExpr, ResolveError> {
        let attr = self.frame_base_attr(point, var, point.subprogram)?;
        match self.eval_at(point, point.unit, attr, var, Frame::OwnBase)? {
            // DW_OP_reg<n> as a frame base means "the address held in that register".
            Location::Register { dwarf_reg } => Ok(DwExpr::Reg(dwarf_reg)),
            Location::Memory { base, offset } => Ok(match base {
                AddrBase::Register(r) => DwExpr::Reg(r).plus(offset),
                AddrBase::Absolute => DwExpr::Addr(offset),
            }),
            Location::Indirect { base, at, offset } => Ok(DwExpr::Deref {
                addr: Box::new(match base {
                    AddrBase::Register(r) => DwExpr::Reg(r).plus(at),
                    AddrBase::Absolute => DwExpr::Addr(at),
                }),
                size: 8,
            }
            .plus(offset)),
            Location::At(t) => Ok(t),
            Location::Pieces(_) => Err(Self::unsupported(
                point,
                var,
                "DW_OP_piece in DW_AT_frame_base",
            )),
            Location::Computed { .. }
            | Location::Value(_)
            | Location::Implicit(_)
            | Location::ImplicitPointer { .. } => Err(Self::unsupported(
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
        self.eval_at(point, ui, attr, var, Frame::Probe)
    }

    /// Evaluates a location attribute (an expression or a location list) in `frame`.
    pub(super) fn eval_at(
        &self,
        point: &ProbePoint,
        ui: usize,
        attr: gimli::AttributeValue<R>,
        var: &str,
        frame: Frame,
    ) -> Result<Location, ResolveError> {
        let unit = &self.units[ui];
        let pc = frame.pc(point);
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
        // The operations with their byte offsets, for the branches' targets.
        let mut reader = expr.0.clone();
        let mut ops: Vec<(u64, O<R>)> = Vec::new();
        while !gimli::Reader::is_empty(&reader) {
            let at = gimli::Reader::offset_from(&reader, &expr.0) as u64;
            let op = O::parse(&mut reader, unit.encoding())
                .map_err(self.dwarf_err("a location expression"))?;
            ops.push((at, op));
        }
        let end = gimli::Reader::len(&expr.0) as u64;
        let code = Code {
            ops: &ops,
            end,
            ui,
            frame,
        };
        let mut paths = 1;
        self.run(point, var, &code, 0, Machine::default(), &mut paths)
    }

    /// Runs the expression's operations from `start` on `m`, to the location it ends with. A
    /// branch on a value only the hit knows runs both ways and selects between the results
    /// (see [`select`]); a branch on a constant, or `DW_OP_skip`, jumps.
    fn run(
        &self,
        point: &ProbePoint,
        var: &str,
        code: &Code<'_>,
        start: usize,
        m: Machine,
        paths: &mut usize,
    ) -> Result<Location, ResolveError> {
        let Machine {
            mut stack,
            mut ended,
            mut pieces,
        } = m;
        let (ui, frame) = (code.ui, code.frame);
        let unit = &self.units[ui];
        let pc = frame.pc(point);
        let bad = |what: &str| Self::unsupported(point, var, what);
        let mut i = start;
        while let Some((_, op)) = code.ops.get(i) {
            let op = op.clone();
            i += 1;
            if let Some(end) = &ended {
                if !matches!(op, gimli::Operation::Piece { .. }) {
                    return Err(bad(match end {
                        Part::Register(_) => "an operation after DW_OP_reg other than DW_OP_piece",
                        Part::Value(_) => {
                            "an operation after DW_OP_stack_value other than DW_OP_piece"
                        }
                        _ => "an operation after DW_OP_implicit_value other than DW_OP_piece",
                    }));
                }
            }
            macro_rules! pop {
                ($what:expr) => {
                    stack
                        .pop()
                        .ok_or_else(|| bad(&format!("{} on an empty stack", $what)))?
                };
            }
            let binary = match op {
                O::Plus => Some(DwBin::Add),
                O::Minus => Some(DwBin::Sub),
                O::Mul => Some(DwBin::Mul),
                O::Div => Some(DwBin::Div),
                O::Mod => Some(DwBin::Mod),
                O::And => Some(DwBin::And),
                O::Or => Some(DwBin::Or),
                O::Xor => Some(DwBin::Xor),
                O::Shl => Some(DwBin::Shl),
                O::Shr => Some(DwBin::Shr),
                O::Shra => Some(DwBin::Shra),
                O::Eq => Some(DwBin::Eq),
                O::Ne => Some(DwBin::Ne),
                O::Lt => Some(DwBin::Lt),
                O::Le => Some(DwBin::Le),
                O::Gt => Some(DwBin::Gt),
                O::Ge => Some(DwBin::Ge),
                _ => None,
            };
            if let Some(b) = binary {
                let top = pop!(format!("DW_OP {b:?}"));
                let second = pop!(format!("DW_OP {b:?}"));
                stack.push(DwExpr::bin(b, second, top));
                continue;
            }
            match op {
                O::Address { address } => stack.push(DwExpr::Addr(address as i64)),
                O::AddressIndex { index } => {
                    let a = self
                        .dwarf
                        .address(unit, index)
                        .map_err(self.dwarf_err("an address index"))?;
                    stack.push(DwExpr::Addr(a as i64));
                }
                O::UnsignedConstant { value } => stack.push(DwExpr::Const(value as i64)),
                O::SignedConstant { value } => stack.push(DwExpr::Const(value)),
                O::FrameOffset { offset } => {
                    let fb = match frame {
                        Frame::Probe => self.frame_base(point, var)?,
                        Frame::Caller { return_pc, caller } => {
                            self.caller_frame_base(point, var, return_pc, caller)?
                        }
                        Frame::OwnBase | Frame::CallerFrameBase { .. } => {
                            return Err(bad("DW_OP_fbreg inside DW_AT_frame_base"))
                        }
                    };
                    stack.push(fb.plus(offset));
                }
                O::RegisterOffset {
                    register,
                    offset,
                    base_type,
                } => {
                    if base_type.0 != 0 {
                        return Err(bad("DW_OP_bregx with a typed base (DW_OP_regval_type)"));
                    }
                    stack.push(DwExpr::Reg(register.0).plus(offset));
                }
                O::Register { register } => ended = Some(Part::Register(register.0)),
                O::CallFrameCFA => stack.push(self.cfa_at(pc)?),
                O::PlusConstant { value } => {
                    let top = pop!("DW_OP_plus_uconst");
                    stack.push(top.plus(value as i64));
                }
                O::Deref {
                    size,
                    space: false,
                    base_type,
                } if base_type.0 == 0 && matches!(size, 1 | 2 | 4 | 8) => {
                    let top = pop!("DW_OP_deref");
                    stack.push(DwExpr::Deref {
                        addr: Box::new(top),
                        size,
                    });
                }
                O::Pick { index } => {
                    let i = stack
                        .len()
                        .checked_sub(1 + usize::from(index))
                        .ok_or_else(|| bad("DW_OP_pick (or dup/over) below the stack"))?;
                    stack.push(stack[i].clone());
                }
                O::Drop => {
                    pop!("DW_OP_drop");
                }
                O::Swap => {
                    let n = stack.len();
                    if n < 2 {
                        return Err(bad("DW_OP_swap on a stack of fewer than two"));
                    }
                    stack.swap(n - 1, n - 2);
                }
                O::Rot => {
                    let n = stack.len();
                    if n < 3 {
                        return Err(bad("DW_OP_rot on a stack of fewer than three"));
                    }
                    // [.., c, b, a(top)] → [.., a, c, b]
                    stack[n - 3..].rotate_right(1);
                }
                O::Not | O::Neg | O::Abs => {
                    let un = match op {
                        O::Not => DwUn::Not,
                        O::Neg => DwUn::Neg,
                        _ => DwUn::Abs,
                    };
                    let top = pop!(format!("DW_OP {un:?}"));
                    stack.push(match top {
                        DwExpr::Const(c) => DwExpr::Const(
                            detrix_common::alu::eval(alu_unary(un), c as u64, 0).unwrap_or(0)
                                as i64,
                        ),
                        t => DwExpr::Un(un, Box::new(t)),
                    });
                }
                O::Nop => {}
                O::StackValue => {
                    let top = pop!("DW_OP_stack_value");
                    ended = Some(Part::Value(top));
                }
                O::ImplicitValue { data } => {
                    if !stack.is_empty() {
                        return Err(bad("DW_OP_implicit_value after other operations"));
                    }
                    let bytes = gimli::Reader::to_slice(&data)
                        .map_err(self.dwarf_err("an implicit value"))?;
                    ended = Some(Part::Implicit(bytes.into_owned()));
                }
                O::Piece {
                    size_in_bits,
                    bit_offset,
                } => {
                    if size_in_bits % 8 != 0 || bit_offset.is_some_and(|b| b != 0) {
                        return Err(bad("DW_OP_bit_piece (a value split at bit boundaries)"));
                    }
                    let part = match (ended.take(), stack.pop()) {
                        (Some(p), _) => p,
                        (None, Some(top)) => Part::Address(top),
                        (None, None) => Part::Empty,
                    };
                    stack.clear();
                    pieces.push((size_in_bits / 8, part.location()));
                }
                O::EntryValue { expression } => {
                    if !matches!(frame, Frame::Probe) {
                        return Err(bad("DW_OP_entry_value (value at function entry)"));
                    }
                    stack.push(self.entry_value(point, var, gimli::Expression(expression))?);
                }
                O::ImplicitPointer { value, byte_offset } => {
                    if !stack.is_empty() {
                        return Err(bad("DW_OP_implicit_pointer after other operations"));
                    }
                    let target = self.implicit_target(point, var, value, frame)?;
                    ended = Some(Part::Pointer(Box::new(target), byte_offset));
                }
                O::Skip { target } => i = code.jump(i, target).ok_or_else(|| bad(JUMP))?,
                O::Bra { target } => {
                    let to = code.jump(i, target).ok_or_else(|| bad(JUMP))?;
                    match pop!("DW_OP_bra") {
                        DwExpr::Const(0) => {}
                        DwExpr::Const(_) => i = to,
                        c => {
                            *paths += 2;
                            if *paths > MAX_PATHS {
                                return Err(bad(&format!(
                                    "DW_OP_bra with more than {MAX_PATHS} paths"
                                )));
                            }
                            let m = Machine {
                                stack,
                                ended,
                                pieces,
                            };
                            let taken = self.run(point, var, code, to, m.clone(), paths)?;
                            let fell = self.run(point, var, code, i, m, paths)?;
                            return select(&c, taken, &fell).ok_or_else(|| {
                                bad("DW_OP_bra whose two paths end in different kinds of location")
                            });
                        }
                    }
                }
                other => {
                    let name = format!("{other:?}");
                    let name = name.split([' ', '{', '(']).next().unwrap_or("?").to_owned();
                    return Err(bad(&format!("DW_OP {name}")));
                }
            }
        }
        if !pieces.is_empty() {
            if ended.is_some() || !stack.is_empty() {
                return Err(bad("a location left over after its pieces"));
            }
            return Ok(Location::Pieces(pieces));
        }
        if let Some(end) = ended {
            if !stack.is_empty() {
                return Err(bad(match end {
                    Part::Register(_) => "a register location mixed with an address",
                    _ => "values left on the stack under DW_OP_stack_value",
                }));
            }
            return end
                .location()
                .ok_or_else(|| Self::optimized_out(point, var));
        }
        match (stack.pop(), stack.is_empty()) {
            // A call site's value is the stack's top itself (DWARF 5, 3.4.2).
            (Some(top), true) if matches!(frame, Frame::Caller { .. }) => Ok(Location::Value(top)),
            (Some(DwExpr::Const(_)), true) => Err(bad("a constant without DW_OP_stack_value")),
            (Some(top), true) => Ok(Location::memory_at(top)),
            _ => Err(bad("an expression that leaves no single address")),
        }
    }

    /// Where the variable an implicit pointer points to is at the point: its `DW_AT_location`
    /// there (a register, memory, a computed value), the DIE found by its `.debug_info` offset.
    fn implicit_target(
        &self,
        point: &ProbePoint,
        var: &str,
        die: gimli::DebugInfoOffset<usize>,
        frame: Frame,
    ) -> Result<Location, ResolveError> {
        let bad = |what: &str| Self::unsupported(point, var, what);
        if !matches!(frame, Frame::Probe) {
            return Err(bad("DW_OP_implicit_pointer outside a variable's location"));
        }
        let found = self
            .units
            .iter()
            .enumerate()
            .find_map(|(ui, u)| Some((ui, die.to_unit_offset(&u.header)?)));
        let Some((ui, offset)) = found else {
            return Err(bad("DW_OP_implicit_pointer to a DIE outside every unit"));
        };
        let entry = self.units[ui]
            .entry(offset)
            .map_err(self.dwarf_err("an implicit pointer's target"))?;
        match entry.attr_value(dw::DW_AT_location) {
            Some(attr) => self
                .eval_at(point, ui, attr, var, Frame::Probe)
                .map_err(|e| match e {
                    ResolveError::OptimizedOut { .. } => {
                        bad("DW_OP_implicit_pointer to a variable that is optimized out here")
                    }
                    other => other,
                }),
            // A compile-time constant: the pointee's bytes are in the debug info.
            None => match self.const_bytes(&entry, self.type_attr(ui, &entry))? {
                Some(bytes) => Ok(Location::Implicit(bytes)),
                None => Err(bad(
                    "DW_OP_implicit_pointer to a variable without a location (optimized out)",
                )),
            },
        }
    }

    pub(super) fn unsupported(point: &ProbePoint, var: &str, op: &str) -> ResolveError {
        ResolveError::UnsupportedLocation {
            var: var.to_owned(),
            file: point.file.clone(),
            line: point.line,
            op: op.to_owned(),
        }
    }
}

#[cfg(test)]
#[path = "location_tests.rs"]
mod tests;
