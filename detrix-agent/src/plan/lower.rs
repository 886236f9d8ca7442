//! Lowering: one expression (`o->items[2].qty`, `order.Customer`) → the plan ops that copy its
//! bytes at the hit, the [`Shape`] that reads them back, and their size.
//!
//! Why shaped so: an expression is walked once into a [`Place`] (register, memory address ops,
//! computed value, or pieces), and only the last step decides how the bytes are emitted; the
//! ops carry offsets relative to their value, so `build` can place values anywhere in the
//! event. [`fold`] merges the `ADD`s the walk leaves behind, which keeps a dozen expressions
//! inside one plan.

use detrix_common::{alu, op, pt_regs, PlanOp, EXPR_STACK, MAX_COPY_BYTES};

use crate::debuginfo::{
    alu_code, alu_unary, AddrBase, Binary, DwExpr, Location, ProbePoint, Type, TypeRef,
};
use crate::expr::{self, Expr};

use super::budget::has_holes;
use super::shape::{pointee_size, CountedLayout, Payload, Shape, EXPANDED_ELEMS};
use super::{PlanError, PlanOptions};

/// Where a sub-expression's bytes are at the hit.
#[derive(Debug, Clone)]
pub(super) enum Place {
    /// In a register (`pt_regs` index).
    Reg(u8),
    /// In memory; these ops leave the address in the accumulator.
    Mem(Vec<PlanOp>),
    /// Not stored anywhere: these ops compute the value itself into the accumulator.
    Computed(Vec<PlanOp>),
    /// Split over places (`DW_OP_piece`): `(byte offset, size, place)`; `None` = optimized out.
    Pieces(Vec<(u64, u64, Option<Place>)>),
}

pub(super) fn with_dst(o: PlanOp, dst: u16) -> PlanOp {
    o.at(dst)
}

pub(super) fn mk(kind: u8, reg: u8, len: u16, imm: i64) -> PlanOp {
    PlanOp::new(kind, reg, len, imm)
}

pub(super) struct Builder<'a> {
    pub(super) bin: &'a Binary,
    pub(super) point: &'a ProbePoint,
    pub(super) opts: PlanOptions,
    pub(super) expr_text: String,
}

impl Builder<'_> {
    pub(super) fn type_err(&self, what: String) -> PlanError {
        PlanError::Type {
            expr: self.expr_text.clone(),
            what,
        }
    }

    fn lower(&self, e: &Expr) -> Result<(Place, Option<TypeRef>), PlanError> {
        match e {
            Expr::Var(name) => {
                let var = self.bin.variable(self.point, name)?;
                let place = self.place_of(&var.location, name)?;
                Ok((place, var.ty))
            }
            // `p->f`, `p.f` and `*p` on a pointer the compiler never made read its pointee.
            Expr::Field(inner, field) | Expr::Arrow(inner, field)
                if self.implicit_pointee(inner)?.is_some() =>
            {
                self.lower(&Expr::Field(
                    Box::new(Expr::Deref(inner.clone())),
                    field.clone(),
                ))
            }
            Expr::Deref(inner) if self.implicit_pointee(inner)?.is_some() => {
                self.implicit_pointee(inner)?.ok_or_else(|| {
                    self.type_err(format!("`{inner}` is no longer an implicit pointer"))
                })
            }
            Expr::Field(inner, field) => {
                let (place, ty) = self.lower(inner)?;
                // `.` through a pointer, as Go and Rust (and lldb for C) allow: `o.ID` on `*Order`.
                if let Type::Pointer { pointee } = self.bin.type_of(ty)? {
                    let mut ops = self.pointer_value(&place)?;
                    let (offset, mty) = self.member(pointee, field, inner)?;
                    ops.push(mk(op::ADD, 0, 0, offset as i64));
                    return Ok((Place::Mem(ops), mty));
                }
                let (offset, mty) = self.member(ty, field, inner)?;
                match place {
                    Place::Mem(mut ops) => {
                        ops.push(mk(op::ADD, 0, 0, offset as i64));
                        Ok((Place::Mem(ops), mty))
                    }
                    Place::Reg(_) | Place::Computed(_) => Err(self.type_err(format!(
                        "`{inner}` is held in a register at this point, so `.{field}` has no address; use a line where it is in memory"
                    ))),
                    Place::Pieces(pieces) => {
                        let size = self.bin.size_of(mty)?.unwrap_or(8);
                        let (p, within) = self.piece_at(&pieces, offset, size, &format!("`{inner}.{field}`"))?;
                        match p {
                            Place::Mem(ops) => {
                                let mut ops = ops.clone();
                                ops.push(mk(op::ADD, 0, 0, within as i64));
                                Ok((Place::Mem(ops), mty))
                            }
                            other if within == 0 => Ok((other.clone(), mty)),
                            _ => Err(self.type_err(format!("`{inner}.{field}` is in the middle of a register"))),
                        }
                    }
                }
            }
            Expr::Arrow(inner, field) => {
                let (ops, pointee) = self.pointer_target(inner, "->")?;
                let (offset, mty) = self.member(pointee, field, inner)?;
                let mut ops = ops;
                ops.push(mk(op::ADD, 0, 0, offset as i64));
                Ok((Place::Mem(ops), mty))
            }
            Expr::Deref(inner) => {
                let (ops, pointee) = self.pointer_target(inner, "*")?;
                Ok((Place::Mem(ops), pointee))
            }
            Expr::Index(inner, index) => {
                let (place, ty) = self.lower(inner)?;
                match self.bin.type_of(ty)? {
                    Type::Array { elem, count } => {
                        if let Some(c) = count {
                            if *index < 0 || (*index as u64) >= c {
                                return Err(self.type_err(format!(
                                    "index {index} is out of bounds for `{inner}` ({} elements)",
                                    c
                                )));
                            }
                        }
                        let Place::Mem(mut ops) = place else {
                            return Err(self.type_err(format!(
                                "`{inner}` is held in a register; it cannot be indexed"
                            )));
                        };
                        let stride = self.bin.size_of(elem)?.ok_or_else(|| {
                            self.type_err(format!("elements of `{inner}` have no known size"))
                        })?;
                        ops.push(mk(op::ADD, 0, 0, index.wrapping_mul(stride as i64)));
                        Ok((Place::Mem(ops), elem))
                    }
                    Type::Pointer { pointee } => {
                        let mut ops = self.pointer_value(&place)?;
                        let stride = self.bin.size_of(pointee)?.ok_or_else(|| {
                            self.type_err(format!("`{inner}` points to a type without a size"))
                        })?;
                        ops.push(mk(op::ADD, 0, 0, index.wrapping_mul(stride as i64)));
                        Ok((Place::Mem(ops), pointee))
                    }
                    _ => Err(self.type_err(format!(
                        "`{inner}` is a {}, not an array or pointer",
                        self.bin.type_name(ty)
                    ))),
                }
            }
        }
    }

    /// What `inner` points to when it is a variable holding a pointer the compiler never made
    /// (`DW_OP_implicit_pointer`): the pointee's own place and type; `None` for any other
    /// expression.
    fn implicit_pointee(
        &self,
        inner: &Expr,
    ) -> Result<Option<(Place, Option<TypeRef>)>, PlanError> {
        let Expr::Var(name) = inner else {
            return Ok(None);
        };
        let var = self.bin.variable(self.point, name)?;
        let Location::ImplicitPointer { target, offset } = &var.location else {
            return Ok(None);
        };
        let Type::Pointer { pointee } = self.bin.type_of(var.ty)? else {
            return Ok(None);
        };
        let place = match self.place_of(target, name)? {
            Place::Mem(mut ops) => {
                ops.push(mk(op::ADD, 0, 0, *offset));
                Place::Mem(ops)
            }
            p if *offset == 0 => p,
            _ => {
                return Err(self.type_err(format!(
                    "`{name}` points {offset} bytes into a value held in registers"
                )))
            }
        };
        Ok(Some((place, pointee)))
    }

    fn place_of(&self, loc: &Location, name: &str) -> Result<Place, PlanError> {
        Ok(match loc {
            Location::ImplicitPointer { .. } => {
                return Err(self.type_err(format!(
                    "`{name}` is a pointer the compiler never stored (DW_OP_implicit_pointer): it has no address to show; `*{name}` or `{name}->field` reads what it points to"
                )))
            }
            Location::Register { dwarf_reg } => Place::Reg(pt_regs::from_dwarf(*dwarf_reg).ok_or_else(|| {
                self.type_err(format!("`{name}` lives in DWARF register {dwarf_reg} (a vector/FP register), which a uprobe cannot read"))
            })?),
            Location::Memory { base: AddrBase::Register(r), offset } => {
                let reg = pt_regs::from_dwarf(*r).ok_or_else(|| {
                    self.type_err(format!("`{name}` is addressed from DWARF register {r}, which a uprobe cannot read"))
                })?;
                Place::Mem(vec![mk(op::REG, reg, 0, 0), mk(op::ADD, 0, 0, *offset)])
            }
            Location::Memory { base: AddrBase::Absolute, offset } => {
                let bias = if self.bin.is_dyn { self.opts.load_bias } else { 0 };
                Place::Mem(vec![mk(op::CONST, 0, 0, offset.wrapping_add(bias as i64))])
            }
            Location::Indirect { base, at, offset } => {
                let Place::Mem(mut ops) = self.place_of(&Location::Memory { base: *base, offset: *at }, name)? else {
                    return Err(self.type_err(format!("`{name}`: an indirect location that is not in memory")));
                };
                ops.push(mk(op::DEREF, 0, 8, 0));
                ops.push(mk(op::ADD, 0, 0, *offset));
                Place::Mem(ops)
            }
            Location::Computed { reg: Some(r), offset } => {
                let reg = pt_regs::from_dwarf(*r).ok_or_else(|| {
                    self.type_err(format!("`{name}` is computed from DWARF register {r}, which a uprobe cannot read"))
                })?;
                Place::Computed(vec![mk(op::REG, reg, 0, *offset)])
            }
            Location::Computed { reg: None, offset } => Place::Computed(vec![mk(op::CONST, 0, 0, *offset)]),
            Location::Value(t) => Place::Computed(self.dw_expr(t, name)?),
            Location::At(t) => Place::Mem(self.dw_expr(t, name)?),
            // Bytes the debug info holds: constants of up to 8 bytes each, emitted as pieces.
            Location::Implicit(bytes) => Place::Pieces(
                bytes
                    .chunks(8)
                    .enumerate()
                    .map(|(k, c)| {
                        let mut w = [0u8; 8];
                        w[..c.len()].copy_from_slice(c);
                        let v = i64::from_le_bytes(w);
                        (8 * k as u64, c.len() as u64, Some(Place::Computed(vec![mk(op::CONST, 0, 0, v)])))
                    })
                    .collect(),
            ),
            Location::Pieces(pieces) => {
                let mut out = Vec::new();
                let mut at = 0;
                for (size, p) in pieces {
                    let place = match p {
                        Some(l) => Some(self.place_of(l, name)?),
                        None => None,
                    };
                    out.push((at, *size, place));
                    at += size;
                }
                Place::Pieces(out)
            }
        })
    }

    /// Ops that leave the value of a DWARF expression tree in the accumulator: operands in
    /// order, each but the last pushed, combined by `ALU` (a constant right operand rides in
    /// the op itself). Refused when it needs a deeper stack than the program has.
    fn dw_expr(&self, t: &DwExpr, name: &str) -> Result<Vec<PlanOp>, PlanError> {
        if t.depth() > EXPR_STACK {
            return Err(self.type_err(format!(
                "`{name}` is computed by a DWARF expression that needs {} stack entries at the hit (at most {EXPR_STACK})",
                t.depth()
            )));
        }
        let mut out = Vec::new();
        self.dw_ops(t, name, &mut out)?;
        Ok(out)
    }

    fn dw_ops(&self, t: &DwExpr, name: &str, out: &mut Vec<PlanOp>) -> Result<(), PlanError> {
        match t {
            DwExpr::Reg(r) => {
                let reg = pt_regs::from_dwarf(*r).ok_or_else(|| {
                    self.type_err(format!(
                        "`{name}` is computed from DWARF register {r}, which a uprobe cannot read"
                    ))
                })?;
                out.push(mk(op::REG, reg, 0, 0));
            }
            DwExpr::Const(c) => out.push(mk(op::CONST, 0, 0, *c)),
            DwExpr::Addr(a) => {
                let bias = if self.bin.is_dyn {
                    self.opts.load_bias
                } else {
                    0
                };
                out.push(mk(op::CONST, 0, 0, a.wrapping_add(bias as i64)));
            }
            DwExpr::Deref { addr, size } => {
                self.dw_ops(addr, name, out)?;
                out.push(mk(op::DEREF, 0, u16::from(*size), 0));
            }
            DwExpr::Un(u, a) => {
                self.dw_ops(a, name, out)?;
                out.push(mk(op::ALU, alu_unary(*u), 0, 0));
            }
            // The frame's CFA names its slot; the stash id (`imm`) is set when the entry probe
            // is attached (`probe::Probes::install`). The call-site ops after it run only
            // when the slot is missing.
            DwExpr::Entry { reg, cfa, fallback } => {
                self.dw_ops(cfa, name, out)?;
                let mut alt = Vec::new();
                if let Some(f) = fallback {
                    self.dw_ops(f, name, &mut alt)?;
                }
                let alt = fold(alt);
                let n = u16::try_from(alt.len()).map_err(|_| {
                    self.type_err(format!("`{name}`: its entry value takes too many ops"))
                })?;
                out.push(mk(op::STASH, *reg as u8, n, 0));
                out.extend(alt);
            }
            DwExpr::Bin(b, x, y) => {
                self.dw_ops(x, name, out)?;
                let code = alu_code(*b);
                if let DwExpr::Const(c) = **y {
                    if code == alu::ADD {
                        out.push(mk(op::ADD, 0, 0, c));
                    } else {
                        out.push(mk(op::ALU, code | alu::IMM, 0, c));
                    }
                } else {
                    out.push(mk(op::PUSH, 0, 0, 0));
                    self.dw_ops(y, name, out)?;
                    out.push(mk(op::ALU, code, 0, 0));
                }
            }
        }
        Ok(())
    }

    /// The piece holding bytes `[off, off + size)` of a split value, and the offset within it.
    fn piece_at<'p>(
        &self,
        pieces: &'p [(u64, u64, Option<Place>)],
        off: u64,
        size: u64,
        what: &str,
    ) -> Result<(&'p Place, u64), PlanError> {
        let Some((start, _, place)) = pieces
            .iter()
            .find(|(start, len, _)| off >= *start && off + size <= start + len)
        else {
            return Err(self.type_err(format!(
                "{what} straddles the pieces the compiler split this value into"
            )));
        };
        let Some(place) = place else {
            return Err(self.type_err(format!(
                "{what} is optimized out at this point (that piece of the value has no location)"
            )));
        };
        Ok((place, off - start))
    }

    /// Ops that leave the `size`-byte integer at byte `off` of `place` in the accumulator.
    fn value_at(
        &self,
        place: &Place,
        off: u64,
        size: u16,
        what: &str,
    ) -> Result<Vec<PlanOp>, PlanError> {
        match place {
            Place::Reg(r) if off == 0 => Ok(vec![mk(op::REG, *r, 0, 0)]),
            Place::Reg(_) => Err(self.type_err(format!("{what} is in the middle of a register"))),
            Place::Computed(ops) if off == 0 => Ok(ops.clone()),
            Place::Computed(_) => Err(self.type_err(format!("{what} is inside a computed value"))),
            Place::Mem(ops) => {
                let mut o = ops.clone();
                o.push(mk(op::DEREF, 0, size, off as i64));
                Ok(o)
            }
            Place::Pieces(pieces) => {
                let (p, within) = self.piece_at(pieces, off, u64::from(size), what)?;
                self.value_at(p, within, size, what)
            }
        }
    }

    /// Ops that copy the `size` bytes of `place` to the value's data (relative offset 0).
    fn emit_in_place(&self, place: &Place, size: u64) -> Result<Vec<PlanOp>, PlanError> {
        match place {
            Place::Reg(r) => {
                if size > 8 {
                    return Err(self.type_err(format!("{size}-byte value held in a register")));
                }
                Ok(vec![
                    mk(op::REG, *r, 0, 0),
                    mk(op::EMIT_ACC, 0, size as u16, 0),
                ])
            }
            Place::Mem(ops) => {
                let mut o = ops.clone();
                o.push(mk(op::EMIT_MEM, 0, size as u16, 0));
                Ok(o)
            }
            Place::Computed(ops) => {
                if size > 8 {
                    return Err(self.type_err(format!("{size}-byte computed value")));
                }
                let mut o = ops.clone();
                o.push(mk(op::EMIT_ACC, 0, size as u16, 0));
                Ok(o)
            }
            Place::Pieces(pieces) => {
                let mut out = Vec::new();
                for (start, len, p) in pieces {
                    let Some(p) = p else {
                        return Err(self.type_err(format!(
                            "bytes {start}..{} of it are optimized out at this point",
                            start + len
                        )));
                    };
                    let mut o = self.emit_in_place(p, *len)?;
                    for x in &mut o {
                        if matches!(x.kind, op::EMIT_ACC | op::EMIT_MEM) {
                            x.dst += *start as u16;
                        }
                    }
                    out.extend(o);
                }
                Ok(out)
            }
        }
    }

    /// Ops that leave the value of a pointer-typed place in the accumulator.
    fn pointer_value(&self, place: &Place) -> Result<Vec<PlanOp>, PlanError> {
        self.value_at(place, 0, 8, "the pointer")
    }

    fn pointer_target(
        &self,
        inner: &Expr,
        how: &str,
    ) -> Result<(Vec<PlanOp>, Option<TypeRef>), PlanError> {
        let (place, ty) = self.lower(inner)?;
        match self.bin.type_of(ty)? {
            Type::Pointer { pointee } => Ok((self.pointer_value(&place)?, pointee)),
            _ => Err(self.type_err(format!(
                "`{how}` needs a pointer, but `{inner}` is a {}",
                self.bin.type_name(ty)
            ))),
        }
    }

    fn member(
        &self,
        ty: Option<TypeRef>,
        field: &str,
        inner: &Expr,
    ) -> Result<(u64, Option<TypeRef>), PlanError> {
        match self.bin.type_of(ty)? {
            Type::Struct { members, name, .. } => members
                .iter()
                .find(|m| m.name == field)
                .map(|m| (m.offset, m.ty))
                .ok_or_else(|| {
                    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                    self.type_err(format!(
                        "struct {name} has no field `{field}`; fields: {}",
                        names.join(", ")
                    ))
                }),
            _ => Err(self.type_err(format!(
                "`{inner}` is a {}, not a struct",
                self.bin.type_name(ty)
            ))),
        }
    }
}

/// Whether any part of `shape` has a location ([`Shape::OptimizedOut`] has none).
fn has_value(shape: &Shape) -> bool {
    match shape {
        Shape::OptimizedOut => false,
        Shape::Struct { members, .. } => members.iter().any(|(_, _, m)| has_value(m)),
        _ => true,
    }
}

impl Builder<'_> {
    /// `shape`, of type `ty` at byte `base` of its value, with each part that touches a byte of
    /// `missing` (ranges the debug info gives no location) made [`Shape::OptimizedOut`]: a
    /// struct member by member, anything else whole (a half-known integer or string header is
    /// not a value).
    fn without(
        &self,
        ty: Option<TypeRef>,
        shape: Shape,
        base: u64,
        missing: &[(u64, u64)],
    ) -> Result<Shape, PlanError> {
        let size = self.bin.size_of(ty)?.unwrap_or(0);
        if size == 0 || !missing.iter().any(|&(s, e)| s < base + size && base < e) {
            return Ok(shape);
        }
        Ok(match (self.bin.type_of(ty)?, shape) {
            (
                Type::Struct { members, .. },
                Shape::Struct {
                    name,
                    members: shapes,
                },
            ) if members.len() == shapes.len() => {
                let mut out = Vec::with_capacity(shapes.len());
                for (m, (n, off, s)) in members.iter().zip(shapes) {
                    out.push((n, off, self.without(m.ty, s, base + off, missing)?));
                }
                Shape::Struct { name, members: out }
            }
            // A Rust enum (an async fn's state too) whose discriminant has a location: the
            // variant is known, and its payload is masked like a struct.
            (
                Type::Variants { variants, .. },
                Shape::Variants {
                    discr,
                    variants: shapes,
                },
            ) if variants.len() == shapes.len()
                && discr.is_none_or(|(off, len)| {
                    !missing
                        .iter()
                        .any(|&(s, e)| s < base + off + len && base + off < e)
                }) =>
            {
                let mut out = Vec::with_capacity(shapes.len());
                for (v, (value, n, off, s)) in variants.iter().zip(shapes) {
                    out.push((value, n, off, self.without(v.ty, s, base + off, missing)?));
                }
                Shape::Variants {
                    discr,
                    variants: out,
                }
            }
            _ => Shape::OptimizedOut,
        })
    }
}

/// The `HDR` op reading the header of `layout` copied at `at` (relative to the value; the
/// builder relocates it like an emit's destination).
pub(super) fn hdr_op(layout: &CountedLayout, at: u16) -> PlanOp {
    PlanOp::hdr(
        layout.ptr_off as u8,
        layout.len_off as u8,
        layout.stride as i64,
        at,
    )
}

/// Lowers one expression to its ops (offsets relative to the value), shape and data size.
pub(super) fn lower_value(
    bin: &Binary,
    point: &ProbePoint,
    opts: PlanOptions,
    text: &str,
) -> Result<(Vec<PlanOp>, Shape, usize), PlanError> {
    let e = expr::parse(text)?;
    let go = bin.language().ok() == Some(crate::debuginfo::Language::Go);
    let b = Builder {
        bin,
        point,
        opts,
        expr_text: text.to_owned(),
    };
    let (place, ty) = b.lower(&e)?;
    let stripped = bin.type_of(ty)?;
    let lowered = match stripped {
        Type::Pointer { pointee }
            if matches!(bin.type_of(pointee)?, Type::Char { size: 1, .. }) =>
        {
            // The pointer, then (unless null) the string it points to: lldb-dap shows both.
            let mut o = b.pointer_value(&place)?;
            let len = opts
                .string_cap
                .saturating_add(2)
                .min(MAX_COPY_BYTES as u32 - 8);
            let cap = len - 2;
            o.push(mk(op::EMIT_ACC, 0, 8, 0));
            o.push(mk(op::END_LE, 0, 0, 0));
            o.push(with_dst(mk(op::EMIT_STR, 0, len as u16, 0), 8));
            (o, Shape::CString { cap }, 8 + len as usize)
        }
        Type::Struct { .. } if b.counted_layout(ty)?.is_some() => {
            let Some((layout, elem)) = b.counted_layout(ty)? else {
                unreachable!("checked above")
            };

            let elem_shape = if layout.style.is_text() {
                Shape::Char { size: 1 }
            } else if go {
                b.go_shape(elem, 1, 1)?
            } else {
                b.shape_in_place(elem, 1)?
            };
            // Elements with data of their own (`[]string`) are shown only as far as that data
            // is copied too (by the ops `expand` adds), so copy only as many headers.
            let holey = has_holes(&elem_shape);
            let cap_bytes = if layout.style.is_text() {
                u64::from(opts.string_cap)
            } else if holey {
                layout.stride * EXPANDED_ELEMS.min(u64::from(opts.elem_cap))
            } else {
                layout.stride * u64::from(opts.elem_cap)
            }
            .min(MAX_COPY_BYTES as u64);
            // The header is copied in place (one walk to its address, or from the registers it
            // is split over), then pointer and length are read back from that copy.
            let mut o = b.emit_in_place(&place, layout.header)?;
            o.push(hdr_op(&layout, 0));
            let mut var = mk(op::EMIT_VAR, 0, cap_bytes as u16, 0);
            // The elements follow the header in the data area.
            var.dst = layout.header as u16;
            o.push(var);
            let len = (layout.header + cap_bytes) as usize;
            let data = Payload {
                at: layout.header as usize,
                cap: cap_bytes,
                items: holey.then(Vec::new),
            };
            (
                o,
                Shape::Counted {
                    layout,
                    elem: Box::new(elem_shape),
                    data: Some(data),
                },
                len,
            )
        }
        // A Go pointer is followed once, as Delve does: the pointer, then (unless nil) the
        // pointee it points to, both copied at the hit.
        Type::Pointer { pointee } if go && pointee_size(bin, pointee)?.is_some() => {
            let size = pointee_size(bin, pointee)?.unwrap_or(0);
            let mut o = b.pointer_value(&place)?;
            o.push(mk(op::EMIT_ACC, 0, 8, 0));
            o.push(mk(op::END_LE, 0, 0, 0));
            o.push(with_dst(mk(op::EMIT_MEM, 0, size as u16, 0), 8));
            // Delve loads what the pointer asked for points to at level 0, as the value itself.
            let target = b.go_shape(pointee, 0, 1)?;
            let name = bin.dwarf_type_name(ty).unwrap_or_else(|| bin.type_name(ty));
            (
                o,
                Shape::GoPtr {
                    name,
                    pointee: Some(Box::new(target)),
                    size,
                    target: Some(8),
                },
                8 + size as usize,
            )
        }
        Type::Void => return Err(b.type_err("it has type void; nothing to capture".to_owned())),
        Type::Unsupported { what } => {
            return Err(b.type_err(format!("its type ({what}) is not supported yet")))
        }
        _ => {
            let mut shape = if go {
                b.go_shape(ty, 0, 0)?
            } else {
                b.shape_in_place(ty, 0)?
            };
            let size = bin.size_of(ty)?.ok_or_else(|| {
                b.type_err(format!("its type {} has no known size", bin.type_name(ty)))
            })?;
            let mut len = size;
            if let Shape::CharArray { count, copied } = &mut shape {
                let c = (*count)
                    .min(u64::from(opts.string_cap) + 1)
                    .min(MAX_COPY_BYTES as u64);
                *copied = c as u32;
                len = c;
            }
            if len > MAX_COPY_BYTES as u64 {
                return Err(PlanError::OverBudget {
                    what: format!("`{text}` is {size} bytes (at most {MAX_COPY_BYTES} per value)"),
                });
            }
            let o = match place {
                Place::Mem(mut o) if len != size => {
                    o.push(mk(op::EMIT_MEM, 0, len as u16, 0));
                    o
                }
                // A struct split into pieces, some without a location: the members that have
                // one are copied, the others are `optimized out` (lldb shows them as zeros).
                Place::Pieces(pieces) if !go && pieces.iter().any(|p| p.2.is_none()) => {
                    let missing: Vec<(u64, u64)> = pieces
                        .iter()
                        .filter(|p| p.2.is_none())
                        .map(|(start, len, _)| (*start, start + len))
                        .collect();
                    let masked = b.without(ty, shape, 0, &missing)?;
                    if !has_value(&masked) {
                        // Nothing of it has a location: the sentence for the whole value.
                        return Err(b
                            .emit_in_place(&Place::Pieces(pieces), size)
                            .err()
                            .unwrap_or_else(|| b.type_err("it is optimized out".to_owned())));
                    }
                    shape = masked;
                    let present = pieces.into_iter().filter(|p| p.2.is_some()).collect();
                    b.emit_in_place(&Place::Pieces(present), size)?
                }
                other => b.emit_in_place(&other, size)?,
            };
            (o, shape, len as usize)
        }
    };
    Ok(lowered)
}

/// Folds every `ADD` into its neighbour: into a preceding `REG`/`CONST`/`ADD` (their `imm` is
/// added to the result), else into the following `DEREF`/`EMIT_MEM`/`EMIT_STR` (their `imm` is
/// added to the address). `p->a.b[2]` then costs three ops instead of six, which is what keeps
/// a dozen expressions inside one plan.
///
/// A `STASH` op's alternative ops (its `len` after it) are skipped as a block at the hit: they
/// come folded already, are kept as they are, and nothing folds into or out of them.
pub(super) fn fold(ops: Vec<PlanOp>) -> Vec<PlanOp> {
    let mut out: Vec<PlanOp> = Vec::with_capacity(ops.len());
    let mut pending: i64 = 0;
    // `out.len()` just past the last `STASH` block: an ADD never folds into the op before it.
    let mut fence = 0;
    let mut ops = ops.into_iter();
    while let Some(o) = ops.next() {
        if o.kind == op::ADD {
            let open = out.len() != fence;
            match out.last_mut() {
                Some(prev) if pending == 0 && open && matches!(prev.kind, op::REG | op::CONST) => {
                    prev.imm = prev.imm.wrapping_add(o.imm);
                }
                _ => pending = pending.wrapping_add(o.imm),
            }
            continue;
        }
        let mut o = o;
        if pending != 0 {
            if matches!(o.kind, op::DEREF | op::EMIT_MEM | op::EMIT_STR) {
                o.imm = o.imm.wrapping_add(pending);
            } else {
                out.push(mk(op::ADD, 0, 0, pending));
            }
            pending = 0;
        }
        out.push(o);
        if o.kind == op::STASH {
            out.extend(ops.by_ref().take(usize::from(o.len)));
            fence = out.len();
        }
    }
    if pending != 0 {
        out.push(mk(op::ADD, 0, 0, pending));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_fold_into_neighbours() {
        // p->a.b : REG rbp; ADD -24; DEREF 8; ADD 8; ADD 4; EMIT_MEM 4
        let ops = vec![
            mk(op::REG, pt_regs::RBP, 0, 0),
            mk(op::ADD, 0, 0, -24),
            mk(op::DEREF, 0, 8, 0),
            mk(op::ADD, 0, 0, 8),
            mk(op::ADD, 0, 0, 4),
            mk(op::EMIT_MEM, 0, 4, 0),
        ];
        let f = fold(ops);
        assert_eq!(
            f,
            vec![
                mk(op::REG, pt_regs::RBP, 0, -24),
                mk(op::DEREF, 0, 8, 0),
                mk(op::EMIT_MEM, 0, 4, 12)
            ]
        );
        // An ADD before EMIT_ACC cannot fold forward and stays.
        let f = fold(vec![
            mk(op::DEREF, 0, 8, 0),
            mk(op::ADD, 0, 0, 3),
            mk(op::EMIT_ACC, 0, 8, 0),
        ]);
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn a_stash_block_is_skipped_whole_so_nothing_folds_across_it() {
        // cfa + 16; entry rdi, else [deref(rsp + 8) + 4]; + 8; emit.
        let ops = vec![
            mk(op::REG, pt_regs::RSP, 0, 0),
            mk(op::ADD, 0, 0, 16),
            mk(op::STASH, 5, 3, 0),
            mk(op::REG, pt_regs::RSP, 0, 8),
            mk(op::DEREF, 0, 8, 0),
            mk(op::ADD, 0, 0, 4),
            mk(op::ADD, 0, 0, 8),
            mk(op::EMIT_ACC, 0, 8, 0),
        ];
        assert_eq!(
            fold(ops),
            vec![
                mk(op::REG, pt_regs::RSP, 0, 16),
                mk(op::STASH, 5, 3, 0),
                mk(op::REG, pt_regs::RSP, 0, 8),
                mk(op::DEREF, 0, 8, 0),
                mk(op::ADD, 0, 0, 4),
                // Not folded into the block's last op: a found slot skips the block.
                mk(op::ADD, 0, 0, 8),
                mk(op::EMIT_ACC, 0, 8, 0),
            ]
        );
        // Without a block, a following ADD folds into the stash op's result as usual: kept
        // apart, never into the op before it.
        let f = fold(vec![
            mk(op::REG, pt_regs::RSP, 0, 32),
            mk(op::STASH, 5, 0, 0),
            mk(op::ADD, 0, 0, 8),
            mk(op::DEREF, 0, 8, 0),
        ]);
        assert_eq!(
            f,
            vec![
                mk(op::REG, pt_regs::RSP, 0, 32),
                mk(op::STASH, 5, 0, 0),
                mk(op::DEREF, 0, 8, 8),
            ]
        );
    }
}
