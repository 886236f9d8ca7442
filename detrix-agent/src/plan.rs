//! Resolved variables + expressions → a [`Plan`] for the prebuilt eBPF program, and the
//! reverse: ring-buffer records → typed [`Value`]s.
//!
//! Why data, not generated programs: one verified object serves every probe, so setting one
//! costs a map write and an attach, never a compiler or a verifier run. The price is a bounded
//! interpreter in BPF, so each plan has budgets (ops, values, bytes) checked here, where the
//! error can name the expression, rather than found by the verifier.

use detrix_common::{
    cond, op, pt_regs, value_flags, Condition, EventHeader, Plan, PlanOp, COND_STR_BYTES, EVENT_DATA_BYTES, MAX_COPY_BYTES,
    MAX_OPS, MAX_VALUES, PLAN_ABI,
};

use crate::debuginfo::{AddrBase, Binary, Location, ProbePoint, ResolveError, Type, TypeRef};
use crate::expr::{self, CmpOp, Expr, ExprError, Literal};

/// Why a plan could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Expr(#[from] ExprError),
    #[error("expression `{expr}`: {what}")]
    Type { expr: String, what: String },
    #[error("too much to capture at one point: {what}; split the expressions over several captures")]
    OverBudget { what: String },
    #[error("condition `{cond}`: {what}")]
    Condition { cond: String, what: String },
}

/// How the bytes of one captured value are turned back into a value.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Int { size: u8, signed: bool },
    Float { size: u8 },
    Bool,
    Char { size: u8 },
    Enum { size: u8, signed: bool, values: Vec<(String, i64)> },
    Pointer,
    /// Bytes from `EMIT_STR` read with room for `cap + 1` characters: more than `cap` means
    /// the string was longer than the cap.
    CString { cap: u32 },
    /// `char[N]`, copied in place (`copied` ≤ N bytes).
    CharArray { count: u64, copied: u32 },
    Struct { members: Vec<(String, u64, Shape)> },
    /// Return addresses from `bpf_get_stack` (innermost first).
    Stack,
    /// A Rust enum: discriminant `(offset, size)` and each variant's value, name, payload.
    Variants { discr: Option<(u64, u64)>, variants: Vec<(Option<u64>, String, u64, Shape)> },
    /// A counted sequence: a header (pointer, length[, capacity]) copied in place, then up to
    /// `cap_bytes` of the elements it points to (see [`CountedLayout`]).
    Counted { layout: CountedLayout, elem: Box<Shape> },
    Array { elem: Box<Shape>, count: u64, stride: u64 },
    Opaque { what: String },
}

/// How a language lays out a counted sequence, and how to show it.
#[derive(Debug, Clone, PartialEq)]
struct CountedLayout {
    /// Bytes of the header copied in place.
    header: u64,
    ptr_off: u64,
    len_off: u64,
    cap_off: Option<u64>,
    /// Element size in bytes.
    stride: u64,
    style: CountedStyle,
    /// The type's own name, for Delve-style slice rendering (`[]int`).
    type_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CountedStyle {
    /// UTF-8 text: Go `string`, Rust `&str`/`String`, C++ `std::string`.
    Text,
    /// Go slice: `[]int len: 3, cap: 4, [1,2,3]`, as Delve prints it.
    GoSlice,
    /// Rust `Vec<T>` / `&[T]`: `[1, 2, 3]`, as `{:?}` prints it.
    RustSeq,
}

/// One captured expression inside a plan.
#[derive(Debug, Clone)]
pub struct ValueDecoder {
    /// The expression as the user wrote it.
    pub expr: String,
    /// Not shown as a value (condition-only, a local, the stack).
    pub hidden: bool,
    pub role: Role,
    shape: Shape,
    dst: usize,
    /// Bytes the plan writes for this value. For fixed-size shapes this, not the event's
    /// per-value length, is what to decode: a value assembled from pieces is written by
    /// several emits, and the length records only the last one.
    size: usize,
}

/// A plan ready to load, with what is needed to decode its events.
#[derive(Debug, Clone)]
pub struct BuiltPlan {
    pub plan: Plan,
    pub values: Vec<ValueDecoder>,
    /// Locals asked for that are not captured, with the reason (optimized out, budget, …).
    pub local_errors: Vec<(String, String)>,
}

/// Inputs that are not in the debug info.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// Only hits from this process are captured.
    pub tgid: u32,
    /// Runtime address − link address for `ET_DYN` objects (0 otherwise).
    pub load_bias: u64,
    /// Longest string captured, in bytes; longer ones are cut and marked truncated.
    pub string_cap: u32,
    /// Events per second the probe may emit (0 = unlimited), and how many may come at once.
    pub rate_per_sec: u32,
    pub burst: u32,
}

/// Where a sub-expression's bytes are at the hit.
#[derive(Debug, Clone)]
enum Place {
    /// In a register (`pt_regs` index).
    Reg(u8),
    /// In memory; these ops leave the address in the accumulator.
    Mem(Vec<PlanOp>),
    /// Not stored anywhere: these ops compute the value itself into the accumulator.
    Computed(Vec<PlanOp>),
    /// Split over places (`DW_OP_piece`): `(byte offset, size, place)`; `None` = optimized out.
    Pieces(Vec<(u64, u64, Option<Place>)>),
}

fn with_dst(mut o: PlanOp, dst: u16) -> PlanOp {
    o.dst = dst;
    o
}

fn mk(kind: u8, reg: u8, len: u16, imm: i64) -> PlanOp {
    PlanOp { kind, reg, value: 0, _pad: 0, len, dst: 0, imm }
}

struct Builder<'a> {
    bin: &'a Binary,
    point: &'a ProbePoint,
    opts: PlanOptions,
    expr_text: String,
}

impl Builder<'_> {
    fn type_err(&self, what: String) -> PlanError {
        PlanError::Type { expr: self.expr_text.clone(), what }
    }

    fn lower(&self, e: &Expr) -> Result<(Place, Option<TypeRef>), PlanError> {
        match e {
            Expr::Var(name) => {
                let var = self.bin.variable(self.point, name)?;
                let place = self.place_of(&var.location, name)?;
                Ok((place, var.ty))
            }
            Expr::Field(inner, field) => {
                let (place, ty) = self.lower(inner)?;
                // `.` through a pointer, as Go and Rust (and lldb for C) allow: `o.ID` on `*Order`.
                if let Type::Pointer { pointee } = self.bin.type_of(ty)? {
                    let mut ops = self.pointer_value(place)?;
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
                                return Err(self.type_err(format!("index {index} is out of bounds for `{inner}` ({} elements)", c)));
                            }
                        }
                        let Place::Mem(mut ops) = place else {
                            return Err(self.type_err(format!("`{inner}` is held in a register; it cannot be indexed")));
                        };
                        let stride = self.bin.size_of(elem)?.ok_or_else(|| self.type_err(format!("elements of `{inner}` have no known size")))?;
                        ops.push(mk(op::ADD, 0, 0, index.wrapping_mul(stride as i64)));
                        Ok((Place::Mem(ops), elem))
                    }
                    Type::Pointer { pointee } => {
                        let mut ops = self.pointer_value(place)?;
                        let stride = self.bin.size_of(pointee)?.ok_or_else(|| self.type_err(format!("`{inner}` points to a type without a size")))?;
                        ops.push(mk(op::ADD, 0, 0, index.wrapping_mul(stride as i64)));
                        Ok((Place::Mem(ops), pointee))
                    }
                    _ => Err(self.type_err(format!("`{inner}` is a {}, not an array or pointer", self.bin.type_name(ty)))),
                }
            }
        }
    }

    fn place_of(&self, loc: &Location, name: &str) -> Result<Place, PlanError> {
        Ok(match loc {
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
            Location::Computed { reg: Some(r), offset } => {
                let reg = pt_regs::from_dwarf(*r).ok_or_else(|| {
                    self.type_err(format!("`{name}` is computed from DWARF register {r}, which a uprobe cannot read"))
                })?;
                Place::Computed(vec![mk(op::REG, reg, 0, *offset)])
            }
            Location::Computed { reg: None, offset } => Place::Computed(vec![mk(op::CONST, 0, 0, *offset)]),
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

    /// The piece holding bytes `[off, off + size)` of a split value, and the offset within it.
    fn piece_at<'p>(&self, pieces: &'p [(u64, u64, Option<Place>)], off: u64, size: u64, what: &str) -> Result<(&'p Place, u64), PlanError> {
        let Some((start, _, place)) = pieces.iter().find(|(start, len, _)| off >= *start && off + size <= start + len) else {
            return Err(self.type_err(format!("{what} straddles the pieces the compiler split this value into")));
        };
        let Some(place) = place else {
            return Err(self.type_err(format!("{what} is optimized out at this point (that piece of the value has no location)")));
        };
        Ok((place, off - start))
    }

    /// Ops that leave the `size`-byte integer at byte `off` of `place` in the accumulator.
    fn value_at(&self, place: &Place, off: u64, size: u16, what: &str) -> Result<Vec<PlanOp>, PlanError> {
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
                Ok(vec![mk(op::REG, *r, 0, 0), mk(op::EMIT_ACC, 0, size as u16, 0)])
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
                        return Err(self.type_err(format!("bytes {start}..{} of it are optimized out at this point", start + len)));
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
    fn pointer_value(&self, place: Place) -> Result<Vec<PlanOp>, PlanError> {
        self.value_at(&place, 0, 8, "the pointer")
    }

    fn pointer_target(&self, inner: &Expr, how: &str) -> Result<(Vec<PlanOp>, Option<TypeRef>), PlanError> {
        let (place, ty) = self.lower(inner)?;
        match self.bin.type_of(ty)? {
            Type::Pointer { pointee } => Ok((self.pointer_value(place)?, pointee)),
            _ => Err(self.type_err(format!("`{how}` needs a pointer, but `{inner}` is a {}", self.bin.type_name(ty)))),
        }
    }

    fn member(&self, ty: Option<TypeRef>, field: &str, inner: &Expr) -> Result<(u64, Option<TypeRef>), PlanError> {
        match self.bin.type_of(ty)? {
            Type::Struct { members, name, .. } => members.iter().find(|m| m.name == field).map(|m| (m.offset, m.ty)).ok_or_else(|| {
                let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                self.type_err(format!("struct {name} has no field `{field}`; fields: {}", names.join(", ")))
            }),
            _ => Err(self.type_err(format!("`{inner}` is a {}, not a struct", self.bin.type_name(ty)))),
        }
    }

    /// Recognizes the counted sequences of Go, Rust and C++ by their DWARF names and members.
    fn counted_layout(&self, ty: Option<TypeRef>) -> Result<Option<(CountedLayout, Option<TypeRef>)>, PlanError> {
        let Type::Struct { name, size, members } = self.bin.type_of(ty)? else { return Ok(None) };
        let member = |n: &str| members.iter().find(|m| m.name == n);
        let pointee = |m: &crate::debuginfo::Member| -> Result<Option<TypeRef>, PlanError> {
            Ok(match self.bin.type_of(m.ty)? {
                Type::Pointer { pointee } => pointee,
                _ => None,
            })
        };
        let stride_of = |t: Option<TypeRef>| -> Result<u64, PlanError> { Ok(self.bin.size_of(t)?.unwrap_or(1).max(1)) };
        let mk_layout = |ptr_off, len_off, cap_off, stride, style| CountedLayout { header: size, ptr_off, len_off, cap_off, stride, style, type_name: name.clone() };
        // Go `string` {str *uint8; len int}.
        if name == "string" {
            if let (Some(p), Some(l)) = (member("str"), member("len")) {
                return Ok(Some((mk_layout(p.offset, l.offset, None, 1, CountedStyle::Text), None)));
            }
        }
        // Go slice `[]T` {array *T; len int; cap int}.
        if name.starts_with("[]") {
            if let (Some(p), Some(l), Some(c)) = (member("array"), member("len"), member("cap")) {
                let elem = pointee(p)?;
                return Ok(Some((mk_layout(p.offset, l.offset, Some(c.offset), stride_of(elem)?, CountedStyle::GoSlice), elem)));
            }
        }
        // Rust `&str` / `&[T]` {data_ptr, length}.
        if name == "&str" || name.starts_with("&[") || name.starts_with("&mut [") {
            if let (Some(p), Some(l)) = (member("data_ptr"), member("length")) {
                let elem = pointee(p)?;
                return Ok(Some(if name == "&str" {
                    (mk_layout(p.offset, l.offset, None, 1, CountedStyle::Text), None)
                } else {
                    (mk_layout(p.offset, l.offset, None, stride_of(elem)?, CountedStyle::RustSeq), elem)
                }));
            }
        }
        // Rust `String` { vec: Vec<u8> } and `Vec<T>` { buf: RawVec { .. ptr .. }, len }.
        if name == "String" || name.ends_with("::String") {
            if let Some(v) = member("vec") {
                if let Some((mut l, _)) = self.counted_layout(v.ty)? {
                    l.ptr_off += v.offset;
                    l.len_off += v.offset;
                    l.header = size;
                    l.style = CountedStyle::Text;
                    l.stride = 1;
                    return Ok(Some((l, None)));
                }
            }
        }
        if name.starts_with("Vec<") || name.contains("::Vec<") {
            if let (Some(buf), Some(l)) = (member("buf"), member("len")) {
                if let Some(ptr_off) = self.first_pointer(buf.ty, 0)? {
                    let elem = self.bin.template_param(ty, "T")?;
                    return Ok(Some((mk_layout(buf.offset + ptr_off, l.offset, None, stride_of(elem)?, CountedStyle::RustSeq), elem)));
                }
            }
        }
        // libstdc++ `std::string` { _M_dataplus { _M_p }, _M_string_length, .. }.
        if name.starts_with("std::__cxx11::basic_string<char") || name.starts_with("basic_string<char") || name == "string" {
            if let (Some(d), Some(l)) = (member("_M_dataplus"), member("_M_string_length")) {
                if let Some(p) = self.first_pointer(d.ty, 0)? {
                    return Ok(Some((mk_layout(d.offset + p, l.offset, None, 1, CountedStyle::Text), None)));
                }
            }
        }
        Ok(None)
    }

    /// Offset of the first pointer-typed leaf inside a struct (Rust hides `Vec`'s pointer in
    /// `RawVec`/`RawVecInner`/`Unique`/`NonNull`, differently in each release).
    fn first_pointer(&self, ty: Option<TypeRef>, depth: u32) -> Result<Option<u64>, PlanError> {
        if depth > 8 {
            return Ok(None);
        }
        Ok(match self.bin.type_of(ty)? {
            Type::Pointer { .. } => Some(0),
            Type::Struct { members, .. } => {
                for m in members {
                    if let Some(o) = self.first_pointer(m.ty, depth + 1)? {
                        return Ok(Some(m.offset + o));
                    }
                }
                None
            }
            _ => None,
        })
    }

    /// The shape of a value of type `ty` stored in place (no pointer following).
    fn shape_in_place(&self, ty: Option<TypeRef>, depth: u32) -> Result<Shape, PlanError> {
        if let Some((layout, _)) = self.counted_layout(ty)? {
            return Ok(Shape::Counted { layout, elem: Box::new(Shape::Char { size: 1 }) });
        }
        Ok(match self.bin.type_of(ty)? {
            Type::Int { size, signed, .. } if size <= 8 => Shape::Int { size: size as u8, signed },
            Type::Float { size, .. } if size == 4 || size == 8 => Shape::Float { size: size as u8 },
            Type::Bool { .. } => Shape::Bool,
            Type::Char { size, .. } if size <= 4 => Shape::Char { size: size as u8 },
            Type::Enum { size, signed, values, .. } if size <= 8 => Shape::Enum { size: size as u8, signed, values },
            Type::Pointer { .. } => Shape::Pointer,
            Type::Array { elem, count: Some(count) } => {
                if matches!(self.bin.type_of(elem)?, Type::Char { size: 1, .. }) {
                    Shape::CharArray { count, copied: u32::try_from(count).unwrap_or(u32::MAX) }
                } else {
                    let stride = self.bin.size_of(elem)?.unwrap_or(0);
                    Shape::Array { elem: Box::new(self.shape_in_place(elem, depth + 1)?), count, stride }
                }
            }
            Type::Variants { discr, variants, .. } if depth < 6 => {
                let mut out = Vec::new();
                for v in variants {
                    out.push((v.discr_value, v.name.clone(), v.offset, self.shape_in_place(v.ty, depth + 1)?));
                }
                Shape::Variants { discr, variants: out }
            }
            Type::Struct { members, .. } if depth < 6 => {
                let mut out = Vec::new();
                for m in members {
                    out.push((m.name.clone(), m.offset, self.shape_in_place(m.ty, depth + 1)?));
                }
                Shape::Struct { members: out }
            }
            other => Shape::Opaque { what: match other {
                Type::Struct { .. } => "...".to_owned(),
                _ => self.bin.type_name(ty),
            } },
        })
    }
}

/// Lowers one expression to its ops (offsets relative to the value), shape and data size.
fn lower_value(bin: &Binary, point: &ProbePoint, opts: PlanOptions, text: &str) -> Result<(Vec<PlanOp>, Shape, usize), PlanError> {
    let e = expr::parse(text)?;
    let b = Builder { bin, point, opts, expr_text: text.to_owned() };
    let (place, ty) = b.lower(&e)?;
    let stripped = bin.type_of(ty)?;
    let lowered = match stripped {
        Type::Pointer { pointee } if matches!(bin.type_of(pointee)?, Type::Char { size: 1, .. }) => {
            let mut o = b.pointer_value(place)?;
            let len = opts.string_cap.saturating_add(2).min(MAX_COPY_BYTES as u32);
            let cap = len - 2;
            o.push(mk(op::EMIT_STR, 0, len as u16, 0));
            (o, Shape::CString { cap }, len as usize)
        }
        Type::Struct { .. } if b.counted_layout(ty)?.is_some() => {
            let Some((layout, elem)) = b.counted_layout(ty)? else { unreachable!("checked above") };

            let elem_shape = match layout.style {
                CountedStyle::Text => Shape::Char { size: 1 },
                _ => b.shape_in_place(elem, 1)?,
            };
            let cap_bytes = match layout.style {
                CountedStyle::Text => u64::from(opts.string_cap),
                _ => (layout.stride * 32).min(1024),
            }
            .min(MAX_COPY_BYTES as u64);
            let mut o = match place {
                // One address walk, kept for the three reads.
                Place::Mem(base) => {
                    let mut o = base;
                    o.push(mk(op::SAVE, 0, 0, 0));
                    o.push(mk(op::EMIT_MEM, 0, layout.header as u16, 0));
                    o.push(mk(op::RESTORE, 0, 0, 0));
                    o.push(mk(op::DEREF, 0, 8, layout.len_off as i64));
                    o.push(mk(op::LEN, 0, 0, layout.stride as i64));
                    o.push(mk(op::RESTORE, 0, 0, 0));
                    o.push(mk(op::DEREF, 0, 8, layout.ptr_off as i64));
                    o
                }
                // Split over registers (Go passes strings so): each part from its piece.
                other => {
                    let mut o = b.emit_in_place(&other, layout.header)?;
                    o.extend(b.value_at(&other, layout.len_off, 8, "its length")?);
                    o.push(mk(op::LEN, 0, 0, layout.stride as i64));
                    o.extend(b.value_at(&other, layout.ptr_off, 8, "its data pointer")?);
                    o
                }
            };
            let mut var = mk(op::EMIT_VAR, 0, cap_bytes as u16, 0);
            // The elements follow the header in the data area.
            var.dst = layout.header as u16;
            o.push(var);
            let len = (layout.header + cap_bytes) as usize;
            (o, Shape::Counted { layout, elem: Box::new(elem_shape) }, len)
        }
        Type::Void => return Err(b.type_err("it has type void; nothing to capture".to_owned())),
        Type::Unsupported { what } => return Err(b.type_err(format!("its type ({what}) is not supported yet"))),
        _ => {
            let mut shape = b.shape_in_place(ty, 0)?;
            let size = bin.size_of(ty)?.ok_or_else(|| b.type_err(format!("its type {} has no known size", bin.type_name(ty))))?;
            let mut len = size;
            if let Shape::CharArray { count, copied } = &mut shape {
                let c = (*count).min(u64::from(opts.string_cap) + 1).min(MAX_COPY_BYTES as u64);
                *copied = c as u32;
                len = c;
            }
            if len > MAX_COPY_BYTES as u64 {
                return Err(PlanError::OverBudget { what: format!("`{text}` is {size} bytes (at most {MAX_COPY_BYTES} per value)") });
            }
            let o = match place {
                Place::Mem(mut o) if len != size => {
                    o.push(mk(op::EMIT_MEM, 0, len as u16, 0));
                    o
                }
                other => b.emit_in_place(&other, size)?,
            };
            (o, shape, len as usize)
        }
    };
    Ok(lowered)
}

/// What a value of a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Asked for: shown to the user.
    Shown,
    /// Read only for the in-kernel condition.
    Hidden,
    /// A local of the frame, for snapshots.
    Local,
    /// The user stack's return addresses, for stack traces (frame-pointer walk: Go).
    Stack,
    /// `rip`, `rsp`, `rbp` at the hit, for unwinding with CFI (C, C++, Rust).
    UnwindRegs,
    /// A slice of the stack above `rsp` (chunk `n` of [`UNWIND_CHUNK`] bytes), for the same.
    UnwindStack(u8),
}

/// Bytes per stack chunk copied for CFI unwinding. Separate chunks, so a chunk past the top of
/// the stack faults alone and the ones below still unwind.
pub const UNWIND_CHUNK: usize = 512;
/// Chunks copied: the unwinder sees `UNWIND_CHUNKS * UNWIND_CHUNK` bytes above `rsp`.
pub const UNWIND_CHUNKS: usize = 4;

/// Extra captures for breakpoint-mode metrics.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Locals (and parameters) to capture best effort; ones that cannot be are reported in
    /// [`BuiltPlan::local_errors`] instead.
    pub locals: Vec<String>,
    /// Capture the user stack: a frame-pointer walk in the kernel for Go (which always keeps
    /// frame pointers), registers plus stack slices unwound with CFI afterwards for the rest.
    pub stack: bool,
}

/// Most frames a stack capture keeps.
pub const STACK_FRAMES: usize = 64;

/// Builds the plan for `exprs` at `point`. Every expression must resolve, or nothing is built.
///
/// # Errors
/// Parse, scope, type, location or budget errors, each naming the expression.
pub fn build(
    bin: &Binary,
    point: &ProbePoint,
    exprs: &[String],
    condition: Option<&expr::Condition>,
    opts: PlanOptions,
) -> Result<BuiltPlan, PlanError> {
    build_with(bin, point, exprs, condition, &Extras::default(), opts)
}

/// [`build`], plus best-effort locals and the user stack.
///
/// # Errors
/// As [`build`]; locals that cannot be captured are not errors.
pub fn build_with(
    bin: &Binary,
    point: &ProbePoint,
    exprs: &[String],
    condition: Option<&expr::Condition>,
    extras: &Extras,
    opts: PlanOptions,
) -> Result<BuiltPlan, PlanError> {
    // The condition reads a captured value: reuse a shown one, or capture it hidden.
    let mut all: Vec<(String, Role)> = exprs.iter().map(|e| (e.clone(), Role::Shown)).collect();
    if let Some(c) = condition {
        if !exprs.iter().any(|e| e.trim() == c.expr_text) {
            all.push((c.expr_text.clone(), Role::Hidden));
        }
    }
    if all.len() > MAX_VALUES {
        return Err(PlanError::OverBudget { what: format!("{} expressions (at most {MAX_VALUES})", all.len()) });
    }
    let mut plan = Plan::empty();
    plan.tgid = opts.tgid;
    if bin.language().ok() == Some(crate::debuginfo::Language::Go) {
        plan.goid_offset = bin.go_goid_offset().and_then(|o| u32::try_from(o).ok()).unwrap_or(0);
    }
    let mut lowered: Vec<(String, Role, Vec<PlanOp>, Shape, usize)> = Vec::new();
    for (text, role) in &all {
        let (o, shape, len) = lower_value(bin, point, opts, text)?;
        lowered.push((text.clone(), *role, o, shape, len));
    }
    let mut local_errors = Vec::new();
    // Go keeps frame pointers: the kernel walks them. Elsewhere, copy what CFI unwinding needs.
    let cfi = extras.stack && bin.language().ok() != Some(crate::debuginfo::Language::Go);
    let stack_bytes = if !extras.stack {
        0
    } else if cfi {
        24 + UNWIND_CHUNKS * UNWIND_CHUNK
    } else {
        STACK_FRAMES * 8
    };
    let mut budget_ops: usize = lowered.iter().map(|l| l.2.len()).sum::<usize>();
    let mut budget_bytes: usize = lowered.iter().map(|l| (l.4 + 7) & !7).sum::<usize>() + stack_bytes;
    for name in &extras.locals {
        match lower_value(bin, point, opts, name) {
            Ok((o, shape, len)) => {
                let o = fold(o);
                if lowered.len() + usize::from(extras.stack) >= MAX_VALUES || budget_ops + o.len() > MAX_OPS || budget_bytes + len > EVENT_DATA_BYTES {
                    local_errors.push((name.clone(), "not captured: the per-hit budget is used up by the values before it".to_owned()));
                    continue;
                }
                budget_ops += o.len();
                budget_bytes += (len + 7) & !7;
                lowered.push((name.clone(), Role::Local, o, shape, len));
            }
            Err(e) => local_errors.push((name.clone(), e.to_string())),
        }
    }
    if cfi {
        let regs = vec![
            mk(op::REG, pt_regs::RIP, 0, 0),
            mk(op::EMIT_ACC, 0, 8, 0),
            mk(op::REG, pt_regs::RSP, 0, 0),
            with_dst(mk(op::EMIT_ACC, 0, 8, 0), 8),
            mk(op::REG, pt_regs::RBP, 0, 0),
            with_dst(mk(op::EMIT_ACC, 0, 8, 0), 16),
        ];
        lowered.push(("<regs>".to_owned(), Role::UnwindRegs, regs, Shape::Stack, 24));
        for k in 0..UNWIND_CHUNKS {
            let ops = vec![mk(op::REG, pt_regs::RSP, 0, (k * UNWIND_CHUNK) as i64), mk(op::EMIT_MEM, 0, UNWIND_CHUNK as u16, 0)];
            lowered.push((format!("<stack{k}>"), Role::UnwindStack(k as u8), ops, Shape::Stack, UNWIND_CHUNK));
        }
    } else if extras.stack {
        // No ops: the program captures the stack once after the ops (Plan::stack).
        lowered.push(("<stack>".to_owned(), Role::Stack, Vec::new(), Shape::Stack, stack_bytes));
    }
    let mut ops: Vec<PlanOp> = Vec::new();
    let mut values = Vec::new();
    let mut dst = 0usize;
    for (vi, (text, role, value_ops, shape, len)) in lowered.into_iter().enumerate() {
        if dst + len > EVENT_DATA_BYTES {
            return Err(PlanError::OverBudget { what: format!("{} bytes of values (at most {EVENT_DATA_BYTES})", dst + len) });
        }
        let mut value_ops = fold(value_ops);
        for o in &mut value_ops {
            o.value = vi as u8;
            // Ops carry offsets relative to their value; EMIT_VAR's is past its header.
            o.dst = (dst + usize::from(o.dst)) as u16;
        }
        ops.extend(value_ops);
        if role == Role::Stack {
            plan.stack = detrix_common::StackCapture { dst: dst as u16, len: len as u16, value: vi as u8, _pad: [0; 3] };
        }
        values.push(ValueDecoder { expr: text, hidden: role != Role::Shown, role, shape, dst, size: len });
        dst = (dst + len + 7) & !7;
    }
    if ops.len() > MAX_OPS {
        return Err(PlanError::OverBudget { what: format!("{} plan steps (at most {MAX_OPS})", ops.len()) });
    }
    plan.ops[..ops.len()].copy_from_slice(&ops);
    plan.n_ops = ops.len() as u32;
    plan.n_values = values.len() as u32;
    plan.data_len = dst.min(EVENT_DATA_BYTES) as u32;
    if let Some(c) = condition {
        let vi = values.iter().position(|v| v.expr.trim() == c.expr_text).unwrap_or(values.len() - 1);
        plan.cond = lower_condition(c, vi, &values[vi])?;
    }
    if opts.rate_per_sec > 0 {
        plan.rate_interval_ns = 1_000_000_000 / u64::from(opts.rate_per_sec);
        plan.rate_burst_ns = u64::from(opts.burst.max(1)) * plan.rate_interval_ns;
    }
    debug_assert_eq!(plan.abi, PLAN_ABI);
    Ok(BuiltPlan { plan, values, local_errors })
}

/// Folds every `ADD` into its neighbour: into a preceding `REG`/`CONST`/`ADD` (their `imm` is
/// added to the result), else into the following `DEREF`/`EMIT_MEM`/`EMIT_STR` (their `imm` is
/// added to the address). `p->a.b[2]` then costs three ops instead of six, which is what keeps
/// a dozen expressions inside one plan.
fn fold(ops: Vec<PlanOp>) -> Vec<PlanOp> {
    let mut out: Vec<PlanOp> = Vec::with_capacity(ops.len());
    let mut pending: i64 = 0;
    for o in ops {
        if o.kind == op::ADD {
            match out.last_mut() {
                Some(prev) if pending == 0 && matches!(prev.kind, op::REG | op::CONST) => prev.imm = prev.imm.wrapping_add(o.imm),
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
    }
    if pending != 0 {
        out.push(mk(op::ADD, 0, 0, pending));
    }
    out
}

/// Fills a string comparison (`==`, `!=`, `^=`) into `k`.
fn string_condition(k: &mut Condition, c: &expr::Condition, err: &dyn Fn(String) -> PlanError) -> Result<(), PlanError> {
    let Literal::Str(s) = &c.literal else {
        return Err(err(format!("`{}` is a string; compare it with a quoted string", c.expr_text)));
    };
    if !matches!(c.op, CmpOp::Eq | CmpOp::Ne | CmpOp::Prefix) {
        return Err(err("strings compare with ==, != or ^= (starts with)".to_owned()));
    }
    if s.len() > COND_STR_BYTES {
        return Err(err(format!("string constants are at most {COND_STR_BYTES} bytes")));
    }
    k.kind = if c.op == CmpOp::Prefix { cond::STR_PREFIX } else { cond::STR_EQ };
    k.len = s.len() as u16;
    k.bytes[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

/// Turns a parsed condition on value `vi` into the kernel's [`Condition`].
fn lower_condition(c: &expr::Condition, vi: usize, v: &ValueDecoder) -> Result<Condition, PlanError> {
    let err = |what: String| PlanError::Condition { cond: c.text.clone(), what };
    let mut k = Condition::NONE;
    k.value = vi as u8;
    k.dst = v.dst as u16;
    k.cmp = match c.op {
        CmpOp::Eq | CmpOp::Prefix => cond::EQ,
        CmpOp::Ne => cond::NE,
        CmpOp::Lt => cond::LT,
        CmpOp::Le => cond::LE,
        CmpOp::Gt => cond::GT,
        CmpOp::Ge => cond::GE,
    };
    let int_imm = |lit: &Literal, signed: bool, size: u8| -> Result<i64, PlanError> {
        let v = match lit {
            Literal::Int(i) => *i,
            Literal::Bool(b) => i128::from(*b),
            Literal::Str(s) if s.chars().count() == 1 => i128::from(u32::from(s.chars().next().unwrap_or('\0'))),
            other => return Err(err(format!("`{}` is an integer; compare it with an integer, not {other:?}", c.expr_text))),
        };
        let bits = 8 * u32::from(size);
        let (lo, hi) = if signed { (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1) } else { (0, (1i128 << bits) - 1) };
        if v < lo || v > hi {
            return Err(err(format!("{v} does not fit the {size}-byte type of `{}`", c.expr_text)));
        }
        Ok(v as i64)
    };
    let numeric_only = || -> Result<(), PlanError> {
        if c.op == CmpOp::Prefix { Err(err("`^=` compares strings only".to_owned())) } else { Ok(()) }
    };
    match &v.shape {
        Shape::Int { size, signed } | Shape::Enum { size, signed, .. } => {
            numeric_only()?;
            k.kind = if *signed { cond::INT } else { cond::UINT };
            k.size = *size;
            k.imm = int_imm(&c.literal, *signed, *size)?;
        }
        Shape::Char { size } => {
            numeric_only()?;
            k.kind = cond::UINT;
            k.size = *size;
            k.imm = int_imm(&c.literal, false, *size)?;
        }
        Shape::Bool => {
            numeric_only()?;
            k.kind = cond::UINT;
            k.size = 1;
            k.imm = int_imm(&c.literal, false, 1)?;
        }
        Shape::Pointer => {
            numeric_only()?;
            k.kind = cond::UINT;
            k.size = 8;
            k.imm = int_imm(&c.literal, false, 8)?;
        }
        Shape::Float { size: 8 } => {
            numeric_only()?;
            let f = match c.literal {
                Literal::Float(f) => f,
                Literal::Int(i) => i as f64,
                _ => return Err(err(format!("`{}` is a double; compare it with a number", c.expr_text))),
            };
            k.kind = cond::F64;
            k.size = 8;
            k.imm = detrix_common::f64_key(f.to_bits()) as i64;
        }
        Shape::Counted { layout, .. } if layout.style == CountedStyle::Text => {
            // The text follows the (pointer, length) header in the value's data.
            string_condition(&mut k, c, &err)?;
            k.dst = (v.dst + layout.header as usize) as u16;
        }
        Shape::CString { .. } | Shape::CharArray { .. } => string_condition(&mut k, c, &err)?,
        other => return Err(err(format!("values of this kind ({other:?}) cannot be compared in the kernel"))),
    }
    Ok(k)
}

/// The ops of a plan as text, one per op (plus the stack capture, if any), for `detrix-agent resolve` and snapshots:
/// `reg rbp -24`, `deref 8 +0`, `emit_mem 4 @0`.
#[must_use]
pub fn describe_ops(plan: &Plan) -> Vec<String> {
    const REGS: [&str; 21] = [
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs",
        "eflags", "rsp", "ss",
    ];
    plan.ops[..(plan.n_ops as usize).min(MAX_OPS)]
        .iter()
        .map(|o| {
            let v = o.value;
            match o.kind {
                op::REG => format!("v{v}: reg {} {:+}", REGS.get(usize::from(o.reg)).unwrap_or(&"?"), o.imm),
                op::CONST => format!("v{v}: const {:#x}", o.imm),
                op::ADD => format!("v{v}: add {:+}", o.imm),
                op::DEREF => format!("v{v}: deref {} {:+}", o.len, o.imm),
                op::EMIT_ACC => format!("v{v}: emit_acc {} @{}", o.len, o.dst),
                op::EMIT_MEM => format!("v{v}: emit_mem {} {:+} @{}", o.len, o.imm, o.dst),
                op::EMIT_STR => format!("v{v}: emit_str {} {:+} @{}", o.len, o.imm, o.dst),
                op::SAVE => format!("v{v}: save {}", o.imm),
                op::RESTORE => format!("v{v}: restore {}", o.imm),
                op::LEN => format!("v{v}: len x{}", o.imm),
                op::EMIT_VAR => format!("v{v}: emit_var {} @{}", o.len, o.dst),
                k => format!("v{v}: op {k}"),
            }
        })
        .chain((plan.stack.len != 0).then(|| format!("v{}: ustack {} @{}", plan.stack.value, plan.stack.len, plan.stack.dst)))
        .collect()
}

/// A decoded captured value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    /// A string; `truncated` when the target's string was longer than the cap.
    Str { text: String, truncated: bool },
    /// A composite rendered as text (`{id = 1, qty = 3}`), or a pointer (`0x…`).
    Text(String),
    /// The read failed at this hit.
    Error(String),
}

/// The raw captured bytes of value `i` of a record (e.g. the stack's return addresses).
#[must_use]
pub fn value_bytes<'a>(values: &[ValueDecoder], i: usize, header: &EventHeader, data: &'a [u8]) -> &'a [u8] {
    let Some(v) = values.get(i) else { return &[] };
    let meta = header.values.get(i).copied().unwrap_or_default();
    if meta.flags & value_flags::READ_FAULT != 0 {
        return &[];
    }
    // Fixed-size values decode by their planned size (several emits may have written them).
    let len = if v.role == Role::Stack { usize::from(meta.len) } else { v.size };
    data.get(v.dst..(v.dst + len).min(data.len())).unwrap_or(&[])
}

/// Decodes one record's values, in the order of `values`.
#[must_use]
pub fn decode(values: &[ValueDecoder], header: &EventHeader, data: &[u8]) -> Vec<Value> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let meta = header.values.get(i).copied().unwrap_or_default();
            if meta.flags & value_flags::READ_FAULT != 0 {
                return Value::Error(format!("could not read the target's memory for `{}` at this hit (invalid pointer or page not present)", v.expr));
            }
            if let Shape::Counted { layout, elem } = &v.shape {
                let header = data.get(v.dst..v.dst + layout.header as usize).unwrap_or(&[]);
                let start = v.dst + layout.header as usize;
                let var = data.get(start..(start + usize::from(meta.len)).min(data.len())).unwrap_or(&[]);
                return decode_counted(layout, elem, header, var);
            }
            // Strings read with a cap report how much they read; everything else has its size.
            let len = match v.shape {
                Shape::CString { .. } => usize::from(meta.len),
                Shape::Stack if v.role == Role::Stack => usize::from(meta.len),
                _ => v.size,
            };
            let end = (v.dst + len).min(data.len());
            let bytes = data.get(v.dst..end).unwrap_or(&[]);
            decode_shape(&v.shape, bytes)
        })
        .collect()
}

/// Renders a counted sequence from its header (length, capacity) and the copied elements.
fn decode_counted(layout: &CountedLayout, elem: &Shape, header: &[u8], var: &[u8]) -> Value {
    let len = le_u64(header.get(layout.len_off as usize..).unwrap_or(&[]), 8);
    match layout.style {
        CountedStyle::Text => {
            let text = String::from_utf8_lossy(var).into_owned();
            Value::Str { text, truncated: (var.len() as u64) < len }
        }
        CountedStyle::GoSlice | CountedStyle::RustSeq => {
            let shown = (var.len() as u64 / layout.stride.max(1)).min(len);
            let items: Vec<String> = (0..shown)
                .map(|i| {
                    let b = var.get((i * layout.stride) as usize..).unwrap_or(&[]);
                    render(elem, b)
                })
                .collect();
            let more = len - shown;
            if layout.style == CountedStyle::GoSlice {
                let cap = layout.cap_off.map_or(len, |o| le_u64(header.get(o as usize..).unwrap_or(&[]), 8));
                let tail = if more > 0 { format!(",...+{more} more") } else { String::new() };
                Value::Text(format!("{} len: {len}, cap: {cap}, [{}{tail}]", layout.type_name, items.join(",")))
            } else {
                let tail = if more > 0 { format!(", ...+{more} more") } else { String::new() };
                Value::Text(format!("[{}{tail}]", items.join(", ")))
            }
        }
    }
}

fn le_u64(bytes: &[u8], size: usize) -> u64 {
    let mut b = [0u8; 8];
    let n = size.min(8).min(bytes.len());
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(b)
}

fn sign_extend(v: u64, size: usize) -> i64 {
    if size >= 8 || size == 0 {
        return v as i64;
    }
    let shift = 64 - 8 * size as u32;
    ((v << shift) as i64) >> shift
}

fn char_text(code: u32) -> String {
    match char::from_u32(code) {
        Some(c) if !c.is_control() => c.to_string(),
        _ => format!("\\x{code:02x}"),
    }
}

fn decode_shape(shape: &Shape, bytes: &[u8]) -> Value {
    match shape {
        Shape::Int { size, signed } => {
            let raw = le_u64(bytes, usize::from(*size));
            if *signed { Value::Int(sign_extend(raw, usize::from(*size))) } else { Value::UInt(raw) }
        }
        Shape::Float { size: 4 } => Value::Float(f64::from(f32::from_bits(le_u64(bytes, 4) as u32))),
        Shape::Float { .. } => Value::Float(f64::from_bits(le_u64(bytes, 8))),
        Shape::Bool => Value::Bool(bytes.iter().any(|b| *b != 0)),
        Shape::Char { size } => Value::Str { text: char_text(le_u64(bytes, usize::from(*size)) as u32), truncated: false },
        Shape::Enum { size, signed, values } => {
            let raw = le_u64(bytes, usize::from(*size));
            let v = if *signed { sign_extend(raw, usize::from(*size)) } else { raw as i64 };
            match values.iter().find(|(_, x)| *x == v) {
                Some((name, _)) => Value::Text(name.clone()),
                None => Value::Int(v),
            }
        }
        Shape::Pointer => Value::Text(format!("{:#x}", le_u64(bytes, 8))),
        Shape::CString { cap } => {
            let cap = *cap as usize;
            let truncated = bytes.len() > cap;
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(cap)]).into_owned();
            Value::Str { text, truncated }
        }
        Shape::CharArray { count, copied } => {
            let end = bytes.iter().position(|b| *b == 0);
            let text = String::from_utf8_lossy(&bytes[..end.unwrap_or(bytes.len())]).into_owned();
            Value::Str { text, truncated: end.is_none() && u64::from(*copied) < *count }
        }
        Shape::Stack => Value::Text(
            bytes.chunks_exact(8).map(|c| format!("{:#x}", le_u64(c, 8))).collect::<Vec<_>>().join(" "),
        ),
        Shape::Struct { .. } | Shape::Array { .. } | Shape::Opaque { .. } | Shape::Counted { .. } | Shape::Variants { .. } => {
            Value::Text(render(shape, bytes))
        }
    }
}

/// Renders composite values the way lldb prints them: `{id = 1, name = "x"}`, `[1, 2]`.
fn render(shape: &Shape, bytes: &[u8]) -> String {
    match shape {
        Shape::Struct { members } => {
            let parts: Vec<String> = members
                .iter()
                .map(|(name, off, s)| {
                    let b = bytes.get(*off as usize..).unwrap_or(&[]);
                    format!("{name} = {}", render(s, b))
                })
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        Shape::Array { elem, count, stride } => {
            let parts: Vec<String> = (0..*count)
                .map(|i| render(elem, bytes.get((i * stride) as usize..).unwrap_or(&[])))
                .collect();
            format!("[{}]", parts.join(", "))
        }
        Shape::Opaque { what } => format!("<{what}>"),
        Shape::Variants { discr, variants } => {
            let d = discr.map(|(off, size)| le_u64(bytes.get(off as usize..).unwrap_or(&[]), size as usize));
            let chosen = variants
                .iter()
                .find(|(v, ..)| v.is_some() && *v == d)
                .or_else(|| variants.iter().find(|(v, ..)| v.is_none()))
                .or_else(|| if discr.is_none() { variants.first() } else { None });
            match chosen {
                None => format!("<unknown variant {}>", d.unwrap_or(0)),
                Some((_, name, off, payload)) => {
                    let b = bytes.get(*off as usize..).unwrap_or(&[]);
                    match payload {
                        // Tuple variants name their fields __0, __1, …: `Some(5)`.
                        Shape::Struct { members } if members.iter().all(|(n, ..)| n.starts_with("__")) => {
                            if members.is_empty() {
                                name.clone()
                            } else {
                                let parts: Vec<String> = members.iter().map(|(_, o, s)| render(s, b.get(*o as usize..).unwrap_or(&[]))).collect();
                                format!("{name}({})", parts.join(", "))
                            }
                        }
                        Shape::Struct { members } if members.is_empty() => name.clone(),
                        other => format!("{name} {}", render(other, b)),
                    }
                }
            }
        }
        // Nested inside a composite only the header was copied: show the length.
        Shape::Counted { layout, .. } => format!("{} len: {}", layout.type_name, le_u64(bytes.get(layout.len_off as usize..).unwrap_or(&[]), 8)),
        other => match decode_shape(other, bytes) {
            Value::Int(v) => v.to_string(),
            Value::UInt(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::Str { text, .. } => format!("{text:?}"),
            Value::Text(t) | Value::Error(t) => t,
        },
    }
}

impl Value {
    /// The JSON form used by the capture CLI: numbers, strings and bools as such, a failed
    /// read as `{"error": …}`, a truncated string with a visible `...(truncated)` suffix.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Int(v) => J::from(*v),
            Value::UInt(v) => J::from(*v),
            Value::Float(v) => serde_json::Number::from_f64(*v).map_or_else(|| J::String(v.to_string()), J::Number),
            Value::Bool(v) => J::Bool(*v),
            Value::Str { text, truncated } => J::String(if *truncated { format!("{text}...(truncated)") } else { text.clone() }),
            Value::Text(t) => J::String(t.clone()),
            Value::Error(e) => serde_json::json!({ "error": e }),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::UInt(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str { .. } => write!(f, "{}", self.to_json()),
            Value::Text(t) => write!(f, "{t}"),
            Value::Error(e) => write!(f, "<error: {e}>"),
        }
    }
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
        assert_eq!(f, vec![mk(op::REG, pt_regs::RBP, 0, -24), mk(op::DEREF, 0, 8, 0), mk(op::EMIT_MEM, 0, 4, 12)]);
        // An ADD before EMIT_ACC cannot fold forward and stays.
        let f = fold(vec![mk(op::DEREF, 0, 8, 0), mk(op::ADD, 0, 0, 3), mk(op::EMIT_ACC, 0, 8, 0)]);
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn sign_extension_by_size() {
        assert_eq!(sign_extend(0xff, 1), -1);
        assert_eq!(sign_extend(0x7f, 1), 127);
        assert_eq!(sign_extend(0xffff_fffe, 4), -2);
        assert_eq!(sign_extend(u64::MAX, 8), -1);
    }

    #[test]
    fn strings_cut_at_cap_say_so() {
        let s = Shape::CString { cap: 5 };
        assert_eq!(decode_shape(&s, b"carol-"), Value::Str { text: "carol".into(), truncated: true });
        assert_eq!(decode_shape(&s, b"carol"), Value::Str { text: "carol".into(), truncated: false });
        assert_eq!(Value::Str { text: "carol".into(), truncated: true }.to_json(), serde_json::json!("carol...(truncated)"));
    }

    #[test]
    fn char_arrays_stop_at_nul() {
        let s = Shape::CharArray { count: 8, copied: 8 };
        assert_eq!(decode_shape(&s, b"C12\0\0\0\0\0"), Value::Str { text: "C12".into(), truncated: false });
    }

    #[test]
    fn structs_render_like_lldb() {
        let s = Shape::Struct { members: vec![("id".into(), 0, Shape::Int { size: 4, signed: true }), ("ok".into(), 4, Shape::Bool)] };
        let mut b = 7i32.to_le_bytes().to_vec();
        b.push(1);
        assert_eq!(decode_shape(&s, &b), Value::Text("{id = 7, ok = true}".into()));
    }
}
