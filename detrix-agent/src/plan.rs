//! Resolved variables + expressions → a [`Plan`] for the prebuilt eBPF program, and the
//! reverse: ring-buffer records → typed [`Value`]s.
//!
//! Why data, not generated programs: one verified object serves every probe, so setting one
//! costs a map write and an attach, never a compiler or a verifier run. The price is a bounded
//! interpreter in BPF, so each plan has budgets (ops, values, bytes) checked here, where the
//! error can name the expression, rather than found by the verifier.

use detrix_common::{
    cond, op, pt_regs, value_flags, Condition, EventHeader, Plan, PlanOp, COND_STR_BYTES,
    EVENT_DATA_BYTES, MAX_COPY_BYTES, MAX_OPS, MAX_VALUES, PLAN_ABI,
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
    #[error(
        "too much to capture at one point: {what}; split the expressions over several captures"
    )]
    OverBudget { what: String },
    #[error("condition `{cond}`: {what}")]
    Condition { cond: String, what: String },
}

/// How the bytes of one captured value are turned back into a value.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Int {
        size: u8,
        signed: bool,
    },
    Float {
        size: u8,
    },
    /// `size` bytes, true when any is not 0.
    Bool {
        size: u8,
    },
    Char {
        size: u8,
    },
    Enum {
        size: u8,
        signed: bool,
        values: Vec<(String, i64)>,
    },
    Pointer,
    /// A Go pointer, shown as Delve shows it: `*main.Order {…}` when the pointee was copied
    /// too (`size` bytes, at byte `target` from the value's first byte), `*main.Order nil`
    /// (`*nil` as an element), else `*(*main.Order)(0xc000012000)`. `pointee` is how the
    /// pointee is shown when Delve loads it (everything but a struct past its depth); it is
    /// copied at the hit while the plan has room (see [`expand`]).
    GoPtr {
        name: String,
        pointee: Option<Box<Shape>>,
        size: u64,
        target: Option<u64>,
    },
    /// A Go struct past Delve's depth (see [`Builder::go_shape`]): nothing copied, shown by
    /// its address, `(*main.Line)(0xc000010000)`, when that is known (behind a pointer, an
    /// element of a slice).
    GoUnloaded {
        name: String,
    },
    /// A Go struct: `main.Order {ID: 1, Customer: "alice"}` (without the name as an element).
    GoStruct {
        name: String,
        members: Vec<(String, u64, Shape)>,
    },
    /// A Go array: `[3]string ["a","b","c"]`; one shape per element shown (their strings'
    /// data is placed per element), at most [`GO_SHOWN_ELEMS`], of `count`.
    GoArray {
        name: String,
        items: Vec<Shape>,
        count: u64,
        stride: u64,
    },
    /// A `char *`: the pointer (8 bytes), then, unless it is null, the bytes `EMIT_STR` read
    /// with room for `cap + 1` characters (more than `cap`: the string was longer than the cap).
    /// Shown as lldb-dap shows it, `0x0000555555556012 "alice"`.
    CString {
        cap: u32,
    },
    /// `char[N]`, copied in place (`copied` ≤ N bytes).
    CharArray {
        count: u64,
        copied: u32,
    },
    /// A struct: lldb-dap shows it by its type's display name (`order`, `orders::Order`,
    /// `const Order`); the members are kept for Rust enum payloads (`Percent(6)`).
    Struct {
        name: String,
        members: Vec<(String, u64, Shape)>,
    },
    /// Return addresses from `bpf_get_stack` (innermost first).
    Stack,
    /// A Rust enum: discriminant `(offset, size)` and each variant's value, name, payload.
    Variants {
        discr: Option<(u64, u64)>,
        variants: Vec<(Option<u64>, String, u64, Shape)>,
    },
    /// A counted sequence: a header (pointer, length[, capacity]) copied in place, and, when
    /// `data` says where, the elements (or text) it points to (see [`CountedLayout`]). Nested
    /// in a composite of another language only the header is copied.
    Counted {
        layout: CountedLayout,
        elem: Box<Shape>,
        data: Option<Payload>,
    },
    /// An array of non-chars: lldb-dap shows its type's display name (`const char *[3]`); the
    /// elements are kept for Rust enum payloads.
    Array {
        name: String,
        elem: Box<Shape>,
        count: u64,
        stride: u64,
    },
    Opaque {
        what: String,
    },
}

/// Where the elements (or text) of a counted sequence were copied at the hit.
#[derive(Debug, Clone, PartialEq)]
struct Payload {
    /// Offset from the value's first byte in the event's data (payloads of nested strings
    /// and slices are placed after every value's own bytes).
    at: usize,
    /// Most bytes copied: `min(len × stride, cap)` were, by the `HDR` + `EMIT_VAR` pair.
    cap: u64,
    /// Elements that point to data of their own (`[]string`): the shapes of the first
    /// elements whose data was copied too, each with its own payloads; only these are shown.
    /// `None` for plain elements (`[]int`): as many are shown as were copied.
    items: Option<Vec<Shape>>,
}

/// Longest string inside a Go composite (a struct field, a `[]string` element), in bytes: the
/// event's 4096 bytes are shared by every value; Delve's own limit is 512.
pub const NESTED_STRING_CAP: u32 = 64;
/// Most elements of a Go slice shown when each has data of its own (`[]string`): each costs
/// three plan ops. Delve shows 64.
pub const EXPANDED_ELEMS: u64 = 8;
/// Most elements expanded of a slice inside an element of another (the `[]string` field of a
/// `[]main.Line`'s elements): elements are expanded whole, one after the other, so this leaves
/// the later elements of the outer slice a share of the plan's ops.
pub const NESTED_EXPANDED_ELEMS: u64 = 4;
/// Most elements of a Go array shown, and of a slice of plain elements rendered, as Delve does.
pub const GO_SHOWN_ELEMS: u64 = 64;

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
    /// UTF-8 text: Rust `&str`/`String`, C++ `std::string`.
    Text,
    /// Go `string`: as [`CountedStyle::Text`] alone; inside a composite quoted as Delve does,
    /// `"alice"`, `"carol-with...+5 more"`.
    GoText,
    /// Go slice: `[]int len: 3, cap: 4, [1,2,3]`, as Delve prints it.
    GoSlice,
    /// Rust `Vec<T>` / `&[T]`: `[1, 2, 3]`, as `{:?}` prints it.
    RustSeq,
}

impl CountedStyle {
    fn is_text(self) -> bool {
        matches!(self, CountedStyle::Text | CountedStyle::GoText)
    }

    fn is_go(self) -> bool {
        matches!(self, CountedStyle::GoText | CountedStyle::GoSlice)
    }
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

/// Default for [`PlanOptions::elem_cap`].
pub const DEFAULT_ELEM_CAP: u32 = 32;

/// Inputs that are not in the debug info.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// Only hits from this process are captured.
    pub tgid: u32,
    /// Runtime address − link address for `ET_DYN` objects (0 otherwise).
    pub load_bias: u64,
    /// Longest string captured, in bytes; longer ones are cut and marked truncated.
    pub string_cap: u32,
    /// Most elements of a slice, `Vec` or array copied (fewer if their bytes would pass
    /// `MAX_COPY_BYTES`); the rest are counted and shown as `...+N more`.
    pub elem_cap: u32,
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
    PlanOp {
        kind,
        reg,
        value: 0,
        _pad: 0,
        len,
        dst: 0,
        imm,
    }
}

struct Builder<'a> {
    bin: &'a Binary,
    point: &'a ProbePoint,
    opts: PlanOptions,
    expr_text: String,
}

impl Builder<'_> {
    fn type_err(&self, what: String) -> PlanError {
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
                        let mut ops = self.pointer_value(place)?;
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
            Location::Indirect { base, at, offset } => {
                let mut ops = match self.place_of(&Location::Memory { base: *base, offset: *at }, name)? {
                    Place::Mem(ops) => ops,
                    _ => return Err(self.type_err(format!("`{name}`: an indirect location that is not in memory"))),
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
    fn pointer_value(&self, place: Place) -> Result<Vec<PlanOp>, PlanError> {
        self.value_at(&place, 0, 8, "the pointer")
    }

    fn pointer_target(
        &self,
        inner: &Expr,
        how: &str,
    ) -> Result<(Vec<PlanOp>, Option<TypeRef>), PlanError> {
        let (place, ty) = self.lower(inner)?;
        match self.bin.type_of(ty)? {
            Type::Pointer { pointee } => Ok((self.pointer_value(place)?, pointee)),
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

    /// Recognizes the counted sequences of Go, Rust and C++ by their DWARF names and members.
    /// Only layouts whose pointer and length sit in the first 256 bytes of the header, where
    /// the `HDR` op can name them.
    fn counted_layout(
        &self,
        ty: Option<TypeRef>,
    ) -> Result<Option<(CountedLayout, Option<TypeRef>)>, PlanError> {
        Ok(self.counted_layout_any(ty)?.filter(|(l, _)| {
            l.ptr_off < 256 && l.len_off < 256 && l.header <= MAX_COPY_BYTES as u64
        }))
    }

    fn counted_layout_any(
        &self,
        ty: Option<TypeRef>,
    ) -> Result<Option<(CountedLayout, Option<TypeRef>)>, PlanError> {
        let Type::Struct {
            name,
            size,
            members,
        } = self.bin.type_of(ty)?
        else {
            return Ok(None);
        };
        let member = |n: &str| members.iter().find(|m| m.name == n);
        let pointee = |m: &crate::debuginfo::Member| -> Result<Option<TypeRef>, PlanError> {
            Ok(match self.bin.type_of(m.ty)? {
                Type::Pointer { pointee } => pointee,
                _ => None,
            })
        };
        let stride_of = |t: Option<TypeRef>| -> Result<u64, PlanError> {
            Ok(self.bin.size_of(t)?.unwrap_or(1).max(1))
        };
        let mk_layout = |ptr_off, len_off, cap_off, stride, style| CountedLayout {
            header: size,
            ptr_off,
            len_off,
            cap_off,
            stride,
            style,
            type_name: name.clone(),
        };
        // Go `string` {str *uint8; len int}.
        if name == "string" {
            if let (Some(p), Some(l)) = (member("str"), member("len")) {
                return Ok(Some((
                    mk_layout(p.offset, l.offset, None, 1, CountedStyle::GoText),
                    None,
                )));
            }
        }
        // Go slice `[]T` {array *T; len int; cap int}.
        if name.starts_with("[]") {
            if let (Some(p), Some(l), Some(c)) = (member("array"), member("len"), member("cap")) {
                let elem = pointee(p)?;
                return Ok(Some((
                    mk_layout(
                        p.offset,
                        l.offset,
                        Some(c.offset),
                        stride_of(elem)?,
                        CountedStyle::GoSlice,
                    ),
                    elem,
                )));
            }
        }
        // Rust `&str` / `&[T]` {data_ptr, length}.
        if name == "&str" || name.starts_with("&[") || name.starts_with("&mut [") {
            if let (Some(p), Some(l)) = (member("data_ptr"), member("length")) {
                let elem = pointee(p)?;
                return Ok(Some(if name == "&str" {
                    (
                        mk_layout(p.offset, l.offset, None, 1, CountedStyle::Text),
                        None,
                    )
                } else {
                    (
                        mk_layout(
                            p.offset,
                            l.offset,
                            None,
                            stride_of(elem)?,
                            CountedStyle::RustSeq,
                        ),
                        elem,
                    )
                }));
            }
        }
        // Rust `String` { vec: Vec<u8> } and `Vec<T>` { buf: RawVec { .. ptr .. }, len }.
        if name == "String" || name.ends_with("::String") {
            if let Some(v) = member("vec") {
                if let Some((mut l, _)) = self.counted_layout_any(v.ty)? {
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
                    return Ok(Some((
                        mk_layout(
                            buf.offset + ptr_off,
                            l.offset,
                            None,
                            stride_of(elem)?,
                            CountedStyle::RustSeq,
                        ),
                        elem,
                    )));
                }
            }
        }
        // libstdc++ `std::string` { _M_dataplus { _M_p }, _M_string_length, .. }.
        if name.starts_with("std::__cxx11::basic_string<char")
            || name.starts_with("basic_string<char")
            || name == "string"
        {
            if let (Some(d), Some(l)) = (member("_M_dataplus"), member("_M_string_length")) {
                if let Some(p) = self.first_pointer(d.ty, 0)? {
                    return Ok(Some((
                        mk_layout(d.offset + p, l.offset, None, 1, CountedStyle::Text),
                        None,
                    )));
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

    /// The shape of a Go value of type `ty` as Delve 1.20 shows it in a logpoint, at its load
    /// level `level` (0 for the value asked for). Delve loads with `MaxVariableRecurse: 1`:
    /// a struct's fields only at levels 0 and 1 (deeper, `(*main.T)(0xc000…)`), the elements
    /// of an array or slice one level down, what a pointer points to at the pointer's own
    /// level (so `*(*main.T)(0xc000…)` for a struct past the depth), and scalars and strings
    /// at every level. `depth` only bounds the recursion (pointers to pointers).
    fn go_shape(&self, ty: Option<TypeRef>, level: u32, depth: u32) -> Result<Shape, PlanError> {
        if let Some((layout, elem)) = self.counted_layout(ty)? {
            let elem = if layout.style == CountedStyle::GoSlice && depth < 8 {
                self.go_shape(elem, level + 1, depth + 1)?
            } else {
                Shape::Char { size: 1 }
            };
            return Ok(Shape::Counted {
                layout,
                elem: Box::new(elem),
                data: None,
            });
        }
        let go_name = || {
            self.bin
                .dwarf_type_name(ty)
                .unwrap_or_else(|| self.bin.type_name(ty))
        };
        Ok(match self.bin.type_of(ty)? {
            Type::Pointer { pointee } => {
                let size = pointee_size(self.bin, pointee)?;
                let past_depth = level > 1
                    && matches!(self.bin.type_of(pointee)?, Type::Struct { .. })
                    && self.counted_layout(pointee)?.is_none();
                let shown = match size {
                    Some(_) if !past_depth && depth < 8 => {
                        Some(Box::new(self.go_shape(pointee, level, depth + 1)?))
                    }
                    _ => None,
                };
                Shape::GoPtr {
                    name: go_name(),
                    pointee: shown,
                    size: size.unwrap_or(0),
                    target: None,
                }
            }
            Type::Array {
                elem,
                count: Some(count),
            } if depth < 8 => {
                let stride = self.bin.size_of(elem)?.unwrap_or(0);
                let one = self.go_shape(elem, level + 1, depth + 1)?;
                Shape::GoArray {
                    name: go_name(),
                    items: vec![one; count.min(GO_SHOWN_ELEMS) as usize],
                    count,
                    stride,
                }
            }
            Type::Struct { members, name, .. } if level <= 1 && depth < 8 => {
                let mut out = Vec::new();
                for m in members {
                    out.push((
                        m.name.clone(),
                        m.offset,
                        self.go_shape(m.ty, level + 1, depth + 1)?,
                    ));
                }
                Shape::GoStruct { name, members: out }
            }
            Type::Struct { name, .. } => Shape::GoUnloaded { name },
            _ => self.shape_in_place(ty, depth)?,
        })
    }

    /// The shape of a value of type `ty` stored in place (no pointer following); Go values
    /// take [`Builder::go_shape`].
    fn shape_in_place(&self, ty: Option<TypeRef>, depth: u32) -> Result<Shape, PlanError> {
        if let Some((layout, elem)) = self.counted_layout(ty)? {
            // Go shows the elements of a nested slice; other languages only its length.
            let elem = if layout.style == CountedStyle::GoSlice && depth < 6 {
                self.shape_in_place(elem, depth + 1)?
            } else {
                Shape::Char { size: 1 }
            };
            return Ok(Shape::Counted {
                layout,
                elem: Box::new(elem),
                data: None,
            });
        }
        Ok(match self.bin.type_of(ty)? {
            Type::Int { size, signed, .. } if size <= 8 => Shape::Int {
                size: size as u8,
                signed,
            },
            Type::Float { size, .. } if size == 4 || size == 8 => Shape::Float { size: size as u8 },
            Type::Bool { size } => Shape::Bool {
                size: size.clamp(1, 8) as u8,
            },
            Type::Char { size, .. } if size <= 4 => Shape::Char { size: size as u8 },
            Type::Enum {
                size,
                signed,
                values,
                ..
            } if size <= 8 => Shape::Enum {
                size: size as u8,
                signed,
                values,
            },
            Type::Pointer { .. } => Shape::Pointer,
            Type::Array {
                elem,
                count: Some(count),
            } => {
                if matches!(self.bin.type_of(elem)?, Type::Char { size: 1, .. }) {
                    Shape::CharArray {
                        count,
                        copied: u32::try_from(count).unwrap_or(u32::MAX),
                    }
                } else {
                    let stride = self.bin.size_of(elem)?.unwrap_or(0);
                    Shape::Array {
                        name: self.bin.display_type_name(ty),
                        elem: Box::new(self.shape_in_place(elem, depth + 1)?),
                        count,
                        stride,
                    }
                }
            }
            Type::Variants {
                discr, variants, ..
            } if depth < 6 => {
                let mut out = Vec::new();
                for v in variants {
                    out.push((
                        v.discr_value,
                        v.name.clone(),
                        v.offset,
                        self.shape_in_place(v.ty, depth + 1)?,
                    ));
                }
                Shape::Variants {
                    discr,
                    variants: out,
                }
            }
            Type::Struct { members, .. } if depth < 6 => {
                let mut out = Vec::new();
                for m in members {
                    out.push((
                        m.name.clone(),
                        m.offset,
                        self.shape_in_place(m.ty, depth + 1)?,
                    ));
                }
                Shape::Struct {
                    name: self.bin.display_type_name(ty),
                    members: out,
                }
            }
            other => Shape::Opaque {
                what: match other {
                    Type::Struct { .. } => "...".to_owned(),
                    _ => self.bin.type_name(ty),
                },
            },
        })
    }
}

/// The `HDR` op reading the header of `layout` copied at `at` (relative to the value; the
/// builder relocates it like an emit's destination).
fn hdr_op(layout: &CountedLayout, at: u16) -> PlanOp {
    let offs = (layout.ptr_off as u16 & 0xff) | ((layout.len_off as u16 & 0xff) << 8);
    with_dst(mk(op::HDR, 0, offs, layout.stride as i64), at)
}

/// Size of what a Go pointer points to, when it can be copied with the pointer.
fn pointee_size(bin: &Binary, pointee: Option<TypeRef>) -> Result<Option<u64>, PlanError> {
    Ok(match bin.type_of(pointee)? {
        Type::Void | Type::Unsupported { .. } => None,
        _ => bin
            .size_of(pointee)?
            .filter(|s| *s > 0 && *s + 8 <= MAX_COPY_BYTES as u64),
    })
}

/// Whether a shape holds Go strings, slices or pointers whose data is not copied yet.
fn has_holes(shape: &Shape) -> bool {
    let mut found = Vec::new();
    holes(shape, 0, &mut Vec::new(), &mut found);
    !found.is_empty()
}

/// The nodes of a Go value that point to data not copied yet: strings and slices (not a slice
/// of structs past Delve's depth, shown from its header alone) and pointers Delve follows, each
/// as (path to the node, offset of its header or pointer). Payloads already placed are not
/// entered: elements get their data from `fill_round`.
fn holes(shape: &Shape, at: usize, path: &mut Vec<usize>, out: &mut Vec<(Vec<usize>, usize)>) {
    go_nodes(shape, at, path, out, &|s| match s {
        Shape::Counted {
            layout,
            data: None,
            elem,
        } => layout.style.is_go() && !matches!(**elem, Shape::GoUnloaded { .. }),
        Shape::GoPtr {
            pointee: Some(_),
            target: None,
            ..
        } => true,
        _ => false,
    });
}

/// The copied Go slices inside `shape` whose elements point to data of their own, as
/// (path, offset of the slice's header): their elements are expanded one index at a time.
fn holey_slices(
    shape: &Shape,
    at: usize,
    path: &mut Vec<usize>,
    out: &mut Vec<(Vec<usize>, usize)>,
) {
    go_nodes(shape, at, path, out, &|s| {
        matches!(
            s,
            Shape::Counted {
                data: Some(Payload { items: Some(_), .. }),
                ..
            }
        )
    });
}

/// The nodes of a Go value's shape that `pick` wants, as (path, byte offset from the value's
/// first byte), looking through structs, arrays and followed pointers (not into what `pick`
/// took). `at` is the offset of `shape` itself.
fn go_nodes(
    shape: &Shape,
    at: usize,
    path: &mut Vec<usize>,
    out: &mut Vec<(Vec<usize>, usize)>,
    pick: &dyn Fn(&Shape) -> bool,
) {
    if pick(shape) {
        out.push((path.clone(), at));
        return;
    }
    match shape {
        Shape::GoStruct { members, .. } => {
            for (k, (_, off, m)) in members.iter().enumerate() {
                path.push(k);
                go_nodes(m, at + *off as usize, path, out, pick);
                path.pop();
            }
        }
        Shape::GoArray { items, stride, .. } => {
            for (k, m) in items.iter().enumerate() {
                path.push(k);
                go_nodes(m, at + k * *stride as usize, path, out, pick);
                path.pop();
            }
        }
        // The pointee was placed after every value's own bytes; `target` says where.
        Shape::GoPtr {
            pointee: Some(t),
            target: Some(off),
            ..
        } => {
            path.push(0);
            go_nodes(t, *off as usize, path, out, pick);
            path.pop();
        }
        _ => {}
    }
}

/// The node at `path` (as [`go_nodes`] numbers children).
fn node_mut<'s>(shape: &'s mut Shape, path: &[usize]) -> Option<&'s mut Shape> {
    let Some((&k, rest)) = path.split_first() else {
        return Some(shape);
    };
    let child = match shape {
        Shape::GoStruct { members, .. } => &mut members.get_mut(k)?.2,
        Shape::GoArray { items, .. } => items.get_mut(k)?,
        Shape::GoPtr {
            pointee: Some(t),
            target: Some(_),
            ..
        } => t.as_mut(),
        _ => return None,
    };
    node_mut(child, rest)
}

/// Bytes copied for the data of a nested Go string or slice.
fn nested_cap(layout: &CountedLayout, elem: &Shape, caps: Caps) -> u64 {
    if layout.style.is_text() {
        u64::from(caps.string.min(NESTED_STRING_CAP))
    } else if has_holes(elem) {
        layout.stride * EXPANDED_ELEMS.min(u64::from(caps.elems))
    } else {
        layout.stride * u64::from(caps.elems)
    }
    .min(MAX_COPY_BYTES as u64)
}

/// [`PlanOptions::string_cap`] and [`PlanOptions::elem_cap`], for the nested data.
#[derive(Debug, Clone, Copy)]
struct Caps {
    string: u32,
    elems: u32,
}

/// The plan's remaining room, shared by the nested data of every value.
struct Room {
    /// Ops added here, to follow the plan's `before` ops.
    ops: Vec<PlanOp>,
    before: usize,
    /// First free byte of the event's data.
    end: usize,
}

impl Room {
    fn fits(&self, n_ops: usize, bytes: u64) -> bool {
        self.before + self.ops.len() + n_ops <= MAX_OPS
            && self.end as u64 + bytes <= EVENT_DATA_BYTES as u64
    }

    /// Places `bytes` of data; returns its offset in the event.
    fn place(&mut self, bytes: u64) -> usize {
        let at = self.end;
        self.end = (self.end + bytes as usize + 7) & !7;
        at
    }

    /// An empty room for ops that will follow one guard op of this one ([`Room::commit`]).
    fn guarded(&self) -> Room {
        Room {
            ops: Vec::new(),
            before: self.before + self.ops.len() + 1,
            end: self.end,
        }
    }

    /// Adds `guard`, a `SKIP_LE` skipping all of `sub`'s ops, then them.
    fn commit(&mut self, mut guard: PlanOp, sub: Room) {
        guard.len = sub.ops.len() as u16;
        self.ops.push(guard);
        self.ops.extend(sub.ops);
        self.end = sub.end;
    }

    /// The `HDR` + `EMIT_VAR` pair copying the data of the header at `hdr` (event offset) of
    /// value `vi` to a new place; returns that place's payload (offsets relative to `base`,
    /// the value's first byte).
    fn copy_data(
        &mut self,
        vi: usize,
        base: usize,
        hdr: usize,
        layout: &CountedLayout,
        cap: u64,
        items: bool,
    ) -> Payload {
        let at = self.place(cap);
        let mut h = hdr_op(layout, hdr as u16);
        h.value = vi as u8;
        let mut var = with_dst(mk(op::EMIT_VAR, 0, cap as u16, 0), at as u16);
        var.value = vi as u8;
        self.ops.push(h);
        self.ops.push(var);
        Payload {
            at: at - base,
            cap,
            items: items.then(Vec::new),
        }
    }

    /// The `HDR` + `EMIT_MEM` pair copying the `size` bytes the pointer at `ptr` (event offset)
    /// of value `vi` points to, zeros when it is nil, to a new place; returns its offset from
    /// `base`. The zeros keep what is followed from inside a nil pointee empty: lengths 0, nil.
    fn follow(&mut self, vi: usize, base: usize, ptr: usize, size: u64) -> u64 {
        let at = self.place(size);
        let mut h = with_dst(mk(op::HDR, 0, 0, 0), ptr as u16);
        h.value = vi as u8;
        let mut mem = with_dst(
            mk(op::EMIT_MEM, op::EMIT_MEM_NIL_ZEROS, size as u16, 0),
            at as u16,
        );
        mem.value = vi as u8;
        self.ops.push(h);
        self.ops.push(mem);
        (at - base) as u64
    }
}

/// Copies what the nodes of `shape` (at offset `at` of value `vi`, whose first byte is at
/// event offset `base`) point to, as far as `room` lasts: the data of its strings and slices,
/// the pointees of its pointers, then theirs, and so on; not the elements of slices whose
/// elements need copies of their own (see [`fill_round`]).
fn fill_direct(shape: &mut Shape, at: usize, vi: usize, base: usize, room: &mut Room, caps: Caps) {
    loop {
        let mut found = Vec::new();
        holes(shape, at, &mut Vec::new(), &mut found);
        let mut progress = false;
        for (path, off) in found {
            match node_mut(shape, &path) {
                Some(Shape::Counted { layout, elem, data }) => {
                    let cap = nested_cap(layout, elem, caps);
                    if room.fits(2, cap) {
                        *data = Some(room.copy_data(
                            vi,
                            base,
                            base + off,
                            layout,
                            cap,
                            has_holes(elem),
                        ));
                        progress = true;
                    }
                }
                Some(Shape::GoPtr { size, target, .. }) if room.fits(2, *size) => {
                    *target = Some(room.follow(vi, base, base + off, *size));
                    progress = true;
                }
                _ => {}
            }
        }
        if !progress {
            return;
        }
    }
}

/// Expands element `i` of every copied slice in `shape` whose elements need copies of their
/// own (a `[]string`, a `[]main.Line` of structs with strings): the element's own data, then
/// its slices' first [`NESTED_EXPANDED_ELEMS`] elements, recursively, behind one `SKIP_LE` on
/// the slice's length,
/// since the headers past it are stale. An element whose data does not fit at all is not
/// shown, nor any after it (Delve's `...+N more`); one that fits in part shows what was copied.
fn fill_round(
    shape: &mut Shape,
    at: usize,
    i: u64,
    vi: usize,
    base: usize,
    room: &mut Room,
    caps: Caps,
) {
    let mut slices = Vec::new();
    holey_slices(shape, at, &mut Vec::new(), &mut slices);
    for (path, hdr) in slices {
        let Some(Shape::Counted {
            layout,
            elem,
            data: Some(p),
        }) = node_mut(shape, &path)
        else {
            continue;
        };
        let Some(items) = &mut p.items else { continue };
        // Element i's header was copied, and the ones before it are shown.
        if items.len() as u64 != i || (i + 1) * layout.stride > p.cap {
            continue;
        }
        let mut e = (**elem).clone();
        let mut sub = room.guarded();
        let e_at = p.at + (i * layout.stride) as usize;
        fill_direct(&mut e, e_at, vi, base, &mut sub, caps);
        for j in 0..NESTED_EXPANDED_ELEMS {
            fill_round(&mut e, e_at, j, vi, base, &mut sub, caps);
        }
        if sub.ops.is_empty() {
            // Nothing copied: shown from its header alone if it needs nothing more.
            if !has_holes(&e) {
                items.push(e);
            }
            continue;
        }
        let mut guard = with_dst(
            mk(op::SKIP_LE, 0, 0, i as i64),
            (base + hdr + layout.len_off as usize) as u16,
        );
        guard.value = vi as u8;
        room.commit(guard, sub);
        items.push(e);
    }
}

/// Adds the ops that copy, at the hit, what the values point to as Delve shows it: the data of
/// the Go strings and slices inside them (a struct's string fields, a `[]string`'s elements),
/// pointer and length read back from the copied header (`HDR`) and the bytes copied after
/// every value's own (`EMIT_VAR`); the structs their pointers point to (`HDR` + `EMIT_MEM`,
/// zeros for nil), and in turn what those hold.
///
/// What fits the plan's ops and the event's bytes is copied, in this order: what every value
/// points to directly (value by value, then what that points to), then element 0 of every
/// slice of elements with data of their own, element 1, … (each behind a `SKIP_LE` on the
/// slice's length, since the headers past it are stale). What does not fit is shown as Delve
/// shows what it did not load: `"...+5 more"`, `[...+3 more]`, `*(*main.T)(0xc000…)`.
/// Nothing fails.
fn expand(values: &mut [ValueDecoder], room: &mut Room, caps: Caps) {
    let shown = |v: &ValueDecoder| matches!(v.role, Role::Shown | Role::Local);
    for (vi, v) in values.iter_mut().enumerate() {
        if shown(v) {
            fill_direct(&mut v.shape, 0, vi, v.dst, room, caps);
        }
    }
    for i in 0..EXPANDED_ELEMS {
        for (vi, v) in values.iter_mut().enumerate() {
            if shown(v) {
                fill_round(&mut v.shape, 0, i, vi, v.dst, room, caps);
            }
        }
    }
}

/// Lowers one expression to its ops (offsets relative to the value), shape and data size.
fn lower_value(
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
            let mut o = b.pointer_value(place)?;
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
            let mut o = b.pointer_value(place)?;
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
        return Err(PlanError::OverBudget {
            what: format!("{} expressions (at most {MAX_VALUES})", all.len()),
        });
    }
    let mut plan = Plan::empty();
    plan.tgid = opts.tgid;
    if bin.language().ok() == Some(crate::debuginfo::Language::Go) {
        plan.goid_offset = bin
            .go_goid_offset()
            .and_then(|o| u32::try_from(o).ok())
            .unwrap_or(0);
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
    let mut budget_bytes: usize =
        lowered.iter().map(|l| (l.4 + 7) & !7).sum::<usize>() + stack_bytes;
    for name in &extras.locals {
        match lower_value(bin, point, opts, name) {
            Ok((o, shape, len)) => {
                let o = fold(o);
                if lowered.len() + usize::from(extras.stack) >= MAX_VALUES
                    || budget_ops + o.len() > MAX_OPS
                    || budget_bytes + len > EVENT_DATA_BYTES
                {
                    local_errors.push((
                        name.clone(),
                        "not captured: the per-hit budget is used up by the values before it"
                            .to_owned(),
                    ));
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
        lowered.push((
            "<regs>".to_owned(),
            Role::UnwindRegs,
            regs,
            Shape::Stack,
            24,
        ));
        for k in 0..UNWIND_CHUNKS {
            let ops = vec![
                mk(op::REG, pt_regs::RSP, 0, (k * UNWIND_CHUNK) as i64),
                mk(op::EMIT_MEM, 0, UNWIND_CHUNK as u16, 0),
            ];
            lowered.push((
                format!("<stack{k}>"),
                Role::UnwindStack(k as u8),
                ops,
                Shape::Stack,
                UNWIND_CHUNK,
            ));
        }
    } else if extras.stack {
        // No ops: the program captures the stack once after the ops (Plan::stack).
        lowered.push((
            "<stack>".to_owned(),
            Role::Stack,
            Vec::new(),
            Shape::Stack,
            stack_bytes,
        ));
    }
    let mut ops: Vec<PlanOp> = Vec::new();
    let mut values = Vec::new();
    let mut dst = 0usize;
    for (vi, (text, role, value_ops, shape, len)) in lowered.into_iter().enumerate() {
        if dst + len > EVENT_DATA_BYTES {
            return Err(PlanError::OverBudget {
                what: format!("{} bytes of values (at most {EVENT_DATA_BYTES})", dst + len),
            });
        }
        let mut value_ops = fold(value_ops);
        for o in &mut value_ops {
            o.value = vi as u8;
            // Ops carry offsets relative to their value; EMIT_VAR's is past its header.
            o.dst = (dst + usize::from(o.dst)) as u16;
        }
        ops.extend(value_ops);
        if role == Role::Stack {
            plan.stack = detrix_common::StackCapture {
                dst: dst as u16,
                len: len as u16,
                value: vi as u8,
                _pad: [0; 3],
            };
        }
        values.push(ValueDecoder {
            expr: text,
            hidden: role != Role::Shown,
            role,
            shape,
            dst,
            size: len,
        });
        dst = (dst + len + 7) & !7;
    }
    if ops.len() > MAX_OPS {
        return Err(PlanError::OverBudget {
            what: format!("{} plan steps (at most {MAX_OPS})", ops.len()),
        });
    }
    let mut room = Room {
        ops: Vec::new(),
        before: ops.len(),
        end: dst,
    };
    expand(
        &mut values,
        &mut room,
        Caps {
            string: opts.string_cap,
            elems: opts.elem_cap,
        },
    );
    let dst = room.end;
    ops.extend(room.ops);
    plan.ops[..ops.len()].copy_from_slice(&ops);
    plan.n_ops = ops.len() as u32;
    plan.n_values = values.len() as u32;
    plan.data_len = dst.min(EVENT_DATA_BYTES) as u32;
    if let Some(c) = condition {
        let vi = values
            .iter()
            .position(|v| v.expr.trim() == c.expr_text)
            .unwrap_or(values.len() - 1);
        plan.cond = lower_condition(c, vi, &values[vi])?;
    }
    if opts.rate_per_sec > 0 {
        plan.rate_interval_ns = 1_000_000_000 / u64::from(opts.rate_per_sec);
        plan.rate_burst_ns = u64::from(opts.burst.max(1)) * plan.rate_interval_ns;
    }
    debug_assert_eq!(plan.abi, PLAN_ABI);
    Ok(BuiltPlan {
        plan,
        values,
        local_errors,
    })
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
                Some(prev) if pending == 0 && matches!(prev.kind, op::REG | op::CONST) => {
                    prev.imm = prev.imm.wrapping_add(o.imm)
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
    }
    if pending != 0 {
        out.push(mk(op::ADD, 0, 0, pending));
    }
    out
}

/// Fills a string comparison (`==`, `!=`, `^=`) into `k`.
fn string_condition(
    k: &mut Condition,
    c: &expr::Condition,
    err: &dyn Fn(String) -> PlanError,
) -> Result<(), PlanError> {
    let Literal::Str(s) = &c.literal else {
        return Err(err(format!(
            "`{}` is a string; compare it with a quoted string",
            c.expr_text
        )));
    };
    if !matches!(c.op, CmpOp::Eq | CmpOp::Ne | CmpOp::Prefix) {
        return Err(err(
            "strings compare with ==, != or ^= (starts with)".to_owned()
        ));
    }
    if s.len() > COND_STR_BYTES {
        return Err(err(format!(
            "string constants are at most {COND_STR_BYTES} bytes"
        )));
    }
    k.kind = if c.op == CmpOp::Prefix {
        cond::STR_PREFIX
    } else {
        cond::STR_EQ
    };
    k.len = s.len() as u16;
    k.bytes[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

/// Turns a parsed condition on value `vi` into the kernel's [`Condition`].
fn lower_condition(
    c: &expr::Condition,
    vi: usize,
    v: &ValueDecoder,
) -> Result<Condition, PlanError> {
    let err = |what: String| PlanError::Condition {
        cond: c.text.clone(),
        what,
    };
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
            Literal::Str(s) if s.chars().count() == 1 => {
                i128::from(u32::from(s.chars().next().unwrap_or('\0')))
            }
            other => {
                return Err(err(format!(
                    "`{}` is an integer; compare it with an integer, not {other:?}",
                    c.expr_text
                )))
            }
        };
        let bits = 8 * u32::from(size);
        let (lo, hi) = if signed {
            (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
        } else {
            (0, (1i128 << bits) - 1)
        };
        if v < lo || v > hi {
            return Err(err(format!(
                "{v} does not fit the {size}-byte type of `{}`",
                c.expr_text
            )));
        }
        Ok(v as i64)
    };
    let numeric_only = || -> Result<(), PlanError> {
        if c.op == CmpOp::Prefix {
            Err(err("`^=` compares strings only".to_owned()))
        } else {
            Ok(())
        }
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
        Shape::Bool { .. } => {
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
                _ => {
                    return Err(err(format!(
                        "`{}` is a double; compare it with a number",
                        c.expr_text
                    )))
                }
            };
            k.kind = cond::F64;
            k.size = 8;
            k.imm = detrix_common::f64_key(f.to_bits()) as i64;
        }
        Shape::Counted { layout, .. } if layout.style.is_text() => {
            // The text follows the (pointer, length) header in the value's data.
            string_condition(&mut k, c, &err)?;
            k.dst = (v.dst + layout.header as usize) as u16;
        }
        Shape::CString { .. } => {
            // The string follows the pointer in the value's data.
            string_condition(&mut k, c, &err)?;
            k.dst = (v.dst + 8) as u16;
        }
        Shape::CharArray { .. } => string_condition(&mut k, c, &err)?,
        other => {
            return Err(err(format!(
                "values of this kind ({other:?}) cannot be compared in the kernel"
            )))
        }
    }
    Ok(k)
}

/// The ops of a plan as text, one per op (plus the stack capture, if any), for `detrix-agent resolve` and snapshots:
/// `reg rbp -24`, `deref 8 +0`, `emit_mem 4 @0`.
#[must_use]
pub fn describe_ops(plan: &Plan) -> Vec<String> {
    const REGS: [&str; 21] = [
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
        "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss",
    ];
    plan.ops[..(plan.n_ops as usize).min(MAX_OPS)]
        .iter()
        .map(|o| {
            let v = o.value;
            match o.kind {
                op::REG => format!(
                    "v{v}: reg {} {:+}",
                    REGS.get(usize::from(o.reg)).unwrap_or(&"?"),
                    o.imm
                ),
                op::CONST => format!("v{v}: const {:#x}", o.imm),
                op::ADD => format!("v{v}: add {:+}", o.imm),
                op::DEREF => format!("v{v}: deref {} {:+}", o.len, o.imm),
                op::EMIT_ACC => format!("v{v}: emit_acc {} @{}", o.len, o.dst),
                op::EMIT_MEM if o.reg & op::EMIT_MEM_NIL_ZEROS != 0 => format!(
                    "v{v}: emit_mem {} {:+} @{} (nil: zeros)",
                    o.len, o.imm, o.dst
                ),
                op::EMIT_MEM => format!("v{v}: emit_mem {} {:+} @{}", o.len, o.imm, o.dst),
                op::EMIT_STR => format!("v{v}: emit_str {} {:+} @{}", o.len, o.imm, o.dst),
                op::EMIT_VAR => format!("v{v}: emit_var {} @{}", o.len, o.dst),
                op::HDR => format!(
                    "v{v}: hdr @{} ptr+{} len+{} x{}",
                    o.dst,
                    o.len & 0xff,
                    o.len >> 8,
                    o.imm
                ),
                op::SKIP_LE => format!("v{v}: skip {} if @{} <= {}", o.len, o.dst, o.imm),
                op::END_LE => format!("v{v}: end if @{} <= {}", o.dst, o.imm),
                k => format!("v{v}: op {k}"),
            }
        })
        .chain((plan.stack.len != 0).then(|| {
            format!(
                "v{}: ustack {} @{}",
                plan.stack.value, plan.stack.len, plan.stack.dst
            )
        }))
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
    Str {
        text: String,
        truncated: bool,
    },
    /// A composite rendered as text (`{id = 1, qty = 3}`), or a pointer (`0x…`).
    Text(String),
    /// The read failed at this hit.
    Error(String),
}

/// The raw captured bytes of value `i` of a record (e.g. the stack's return addresses).
#[must_use]
pub fn value_bytes<'a>(
    values: &[ValueDecoder],
    i: usize,
    header: &EventHeader,
    data: &'a [u8],
) -> &'a [u8] {
    let Some(v) = values.get(i) else { return &[] };
    let meta = header.values.get(i).copied().unwrap_or_default();
    if meta.flags & value_flags::READ_FAULT != 0 {
        return &[];
    }
    // Fixed-size values decode by their planned size (several emits may have written them).
    let len = if v.role == Role::Stack {
        usize::from(meta.len)
    } else {
        v.size
    };
    data.get(v.dst..(v.dst + len).min(data.len()))
        .unwrap_or(&[])
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
            // The value's own bytes, and everything from them on: the data of its nested
            // strings and slices is placed after every value's own bytes.
            let rest = data.get(v.dst..).unwrap_or(&[]);
            // Strings read with a cap report how much they read; everything else has its size.
            let len = match v.shape {
                // The pointer, then the string when it is not null (`meta.len` is its length).
                Shape::CString { .. } if le_u64(rest, 8) == 0 => 8,
                Shape::CString { .. } => 8 + usize::from(meta.len),
                Shape::Stack if v.role == Role::Stack => usize::from(meta.len),
                _ => v.size,
            };
            let bytes = rest.get(..len.min(rest.len())).unwrap_or(&[]);
            decode_shape(&v.shape, bytes, rest)
        })
        .collect()
}

/// A counted sequence from its header (`hdr`, copied in place) and, when copied, its data:
/// `min(len × stride, cap)` bytes at `rest[data.at..]`. A Go slice shows its type, length and
/// capacity when `typed` (not as an element: `[][]string len: 2, cap: 2, [["a"],nil]`).
fn decode_counted(
    layout: &CountedLayout,
    elem: &Shape,
    data: Option<&Payload>,
    hdr: &[u8],
    rest: &[u8],
    typed: bool,
) -> Value {
    let field = |off: u64| le_u64(hdr.get(off as usize..).unwrap_or(&[]), 8);
    let len = field(layout.len_off);
    let copied: &[u8] = match data {
        Some(p) => {
            let n = len.saturating_mul(layout.stride).min(p.cap) as usize;
            rest.get(p.at..).map_or(&[], |r| &r[..n.min(r.len())])
        }
        None => &[],
    };
    if layout.style.is_text() {
        let text = String::from_utf8_lossy(copied).into_owned();
        return Value::Str {
            text,
            truncated: (copied.len() as u64) < len,
        };
    }
    let stride = layout.stride.max(1);
    let mut shown = (copied.len() as u64 / stride).min(len);
    if let Some(Payload {
        items: Some(items), ..
    }) = data
    {
        shown = shown.min(items.len() as u64);
    }
    let go = layout.style == CountedStyle::GoSlice;
    let ptr = field(layout.ptr_off);
    // Structs past Delve's depth are shown by their addresses, from the header alone.
    let by_address = go && matches!(elem, Shape::GoUnloaded { .. });
    if by_address {
        shown = len;
    }
    if go {
        shown = shown.min(GO_SHOWN_ELEMS);
    }
    let items: Vec<String> = (0..shown)
        .map(|i| {
            let b = copied.get((i * stride) as usize..).unwrap_or(&[]);
            let shape = match data {
                Some(Payload {
                    items: Some(items), ..
                }) => items.get(i as usize).unwrap_or(elem),
                _ => elem,
            };
            if go {
                go_text(shape, b, rest, Some(ptr.wrapping_add(i * stride)), false)
            } else {
                render(shape, b, rest)
            }
        })
        .collect();
    let more = len - shown;
    if go {
        let cap = layout.cap_off.map_or(len, field);
        let head = if typed {
            format!("{} len: {len}, cap: {cap}, ", layout.type_name)
        } else {
            String::new()
        };
        if ptr == 0 && len == 0 {
            return Value::Text(format!("{head}nil"));
        }
        // Delve: `[1,2,...+3 more]`, and `[...+3 more]` when nothing was loaded.
        let tail = match (more, items.is_empty()) {
            (0, _) => String::new(),
            (_, true) => format!("...+{more} more"),
            (_, false) => format!(",...+{more} more"),
        };
        Value::Text(format!("{head}[{}{tail}]", items.join(",")))
    } else {
        let tail = if more > 0 {
            format!(", ...+{more} more")
        } else {
            String::new()
        };
        Value::Text(format!("[{}{tail}]", items.join(", ")))
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

/// A pointer as lldb shows it: `0x` and 16 hex digits.
fn lldb_pointer(p: u64) -> String {
    format!("{p:#018x}")
}

/// A character as lldb-dap shows it: a C `char` as `'A'`, `'\n'`, `'\xc8'`; a Rust `char`
/// (4 bytes) as its value and summary, `U+0x00000078 U+0x00000078 U'x'`, as lldb-22 prints
/// them with the Rust formatters the daemon loads.
fn lldb_char(code: u32, size: u8) -> String {
    if size >= 2 {
        let c = char::from_u32(code).map_or_else(|| format!("\\U{code:08x}"), |c| c.to_string());
        return format!("U+{code:#010x} U+{code:#010x} U'{c}'");
    }
    format!("'{}'", lldb_escape_byte(code as u8, b'\''))
}

/// One byte of C text as lldb escapes it; `quote` (`'` or `"`) is escaped too.
fn lldb_escape_byte(b: u8, quote: u8) -> String {
    match b {
        0 => "\\0".to_owned(),
        7 => "\\a".to_owned(),
        8 => "\\b".to_owned(),
        9 => "\\t".to_owned(),
        10 => "\\n".to_owned(),
        11 => "\\v".to_owned(),
        12 => "\\f".to_owned(),
        13 => "\\r".to_owned(),
        0x1b => "\\e".to_owned(),
        b'\\' => "\\\\".to_owned(),
        b if b == quote => format!("\\{}", b as char),
        0x20..=0x7e => (b as char).to_string(),
        b => format!("\\x{b:02x}"),
    }
}

/// A C string as lldb's summary quotes it, `"a\"b"`, with `...` after the closing quote
/// when it was longer than what was copied. UTF-8 text is kept; other bytes are `\xNN`.
fn lldb_quote(bytes: &[u8], cut: bool) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii() {
                out.push_str(&lldb_escape_byte(c as u8, b'"'));
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    if cut {
        out.push_str("...");
    }
    out
}

/// Most zeros lldb pads a float with before it switches to scientific notation (its
/// `target.max-zero-padding-in-float-format`, 6 by default).
const LLDB_FLOAT_PADDING: i64 = 6;

/// A float as lldb prints it: `llvm::APFloat::toString` with the type's full precision
/// (`precision` significant digits: 17 for a double, 9 for a float), trailing zeros dropped,
/// scientific past 6 zeros of padding: `11`, `2.75`, `0.83333333333333337`, `2.5E+20`,
/// `1.0E+10`, `2.4999999999999999E-7`, `+Inf`, `NaN`, `-0`.
fn lldb_float(f: f64, precision: usize) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f.is_infinite() {
        return if sign.is_empty() {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        };
    }
    if f == 0.0 {
        return format!("{sign}0");
    }
    // `d.ddd…e±x`: the significant digits, correctly rounded, and the power of the first.
    let sci = format!("{:.*e}", precision.saturating_sub(1), f.abs());
    let (mantissa, e10) = sci.split_once('e').unwrap_or((&sci, "0"));
    let e10: i64 = e10.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let n = digits.len() as i64;
    // APFloat's convention: the value is `digits × 10^exp`.
    let exp = e10 - (n - 1);
    let scientific = if exp >= 0 {
        exp > LLDB_FLOAT_PADDING || n + exp > precision as i64
    } else {
        e10 < 0 && -e10 > LLDB_FLOAT_PADDING
    };
    if scientific {
        let rest = if n == 1 { "0" } else { &digits[1..] };
        let esign = if e10 >= 0 { '+' } else { '-' };
        return format!("{sign}{}.{rest}E{esign}{}", &digits[..1], e10.abs());
    }
    if exp >= 0 {
        return format!("{sign}{digits}{}", "0".repeat(exp as usize));
    }
    let whole = n + exp;
    if whole > 0 {
        format!(
            "{sign}{}.{}",
            &digits[..whole as usize],
            &digits[whole as usize..]
        )
    } else {
        format!("{sign}0.{}{digits}", "0".repeat((-whole) as usize))
    }
}

/// Decodes a value from its own bytes (`bytes`) and, for the data of its nested strings and
/// slices, everything from its first byte on (`rest`).
fn decode_shape(shape: &Shape, bytes: &[u8], rest: &[u8]) -> Value {
    match shape {
        Shape::Int { size, signed } => {
            let raw = le_u64(bytes, usize::from(*size));
            if *signed {
                Value::Int(sign_extend(raw, usize::from(*size)))
            } else {
                Value::UInt(raw)
            }
        }
        Shape::Float { size: 4 } => {
            Value::Float(f64::from(f32::from_bits(le_u64(bytes, 4) as u32)))
        }
        Shape::Float { .. } => Value::Float(f64::from_bits(le_u64(bytes, 8))),
        // Only its own bytes: inside a composite `bytes` runs on past it.
        Shape::Bool { size } => Value::Bool(bytes.iter().take(usize::from(*size)).any(|b| *b != 0)),
        Shape::Char { size } => {
            Value::Text(lldb_char(le_u64(bytes, usize::from(*size)) as u32, *size))
        }
        Shape::Enum {
            size,
            signed,
            values,
        } => {
            let raw = le_u64(bytes, usize::from(*size));
            let v = if *signed {
                sign_extend(raw, usize::from(*size))
            } else {
                raw as i64
            };
            match values.iter().find(|(_, x)| *x == v) {
                Some((name, _)) => Value::Text(name.clone()),
                None => Value::Int(v),
            }
        }
        Shape::Pointer => Value::Text(lldb_pointer(le_u64(bytes, 8))),
        Shape::CString { cap } => {
            let ptr = le_u64(bytes, 8);
            if ptr == 0 {
                return Value::Text(lldb_pointer(0));
            }
            let s = bytes.get(8..).unwrap_or(&[]);
            let cap = *cap as usize;
            Value::Text(format!(
                "{} {}",
                lldb_pointer(ptr),
                lldb_quote(&s[..s.len().min(cap)], s.len() > cap)
            ))
        }
        Shape::CharArray { count, copied } => {
            let bytes = &bytes[..bytes.len().min(*copied as usize)];
            let end = bytes.iter().position(|b| *b == 0);
            let text = String::from_utf8_lossy(&bytes[..end.unwrap_or(bytes.len())]).into_owned();
            Value::Str {
                text,
                truncated: end.is_none() && u64::from(*copied) < *count,
            }
        }
        Shape::Stack => Value::Text(
            bytes
                .chunks_exact(8)
                .map(|c| format!("{:#x}", le_u64(c, 8)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Shape::Counted { layout, elem, data } => {
            decode_counted(layout, elem, data.as_ref(), bytes, rest, true)
        }
        Shape::Struct { .. }
        | Shape::Array { .. }
        | Shape::Opaque { .. }
        | Shape::Variants { .. }
        | Shape::GoPtr { .. }
        | Shape::GoStruct { .. }
        | Shape::GoArray { .. }
        | Shape::GoUnloaded { .. } => Value::Text(render(shape, bytes, rest)),
    }
}

/// Renders composite values the way lldb prints them (`{id = 1, name = "x"}`, `[1, 2]`), and
/// Go values the way Delve prints them in a logpoint (`main.Order {ID: 1, Name: "x"}`).
/// `bytes` are the node's own, `rest` the value's from its first byte on.
fn render(shape: &Shape, bytes: &[u8], rest: &[u8]) -> String {
    match shape {
        // lldb-dap's logpoint shows only a struct's type name (it has no summary without the
        // auto summaries the daemon does not turn on); the agent copied the members, so it shows
        // them as lldb's `frame variable` does, each value in lldb-dap's own format.
        Shape::Struct { members, .. } => {
            let parts: Vec<String> = members
                .iter()
                .map(|(name, off, s)| {
                    let b = bytes.get(*off as usize..).unwrap_or(&[]);
                    format!("{name} = {}", render(s, b, rest))
                })
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        Shape::Array {
            elem,
            count,
            stride,
            ..
        } => {
            let parts: Vec<String> = (0..*count)
                .map(|i| {
                    render(
                        elem,
                        bytes.get((i * stride) as usize..).unwrap_or(&[]),
                        rest,
                    )
                })
                .collect();
            format!("[{}]", parts.join(", "))
        }
        Shape::Opaque { what } => format!("<{what}>"),
        Shape::Variants { discr, variants } => {
            let d = discr
                .map(|(off, size)| le_u64(bytes.get(off as usize..).unwrap_or(&[]), size as usize));
            let chosen = variants
                .iter()
                .find(|(v, ..)| v.is_some() && *v == d)
                .or_else(|| variants.iter().find(|(v, ..)| v.is_none()))
                .or_else(|| {
                    if discr.is_none() {
                        variants.first()
                    } else {
                        None
                    }
                });
            match chosen {
                None => format!("<unknown variant {}>", d.unwrap_or(0)),
                Some((_, name, off, payload)) => {
                    let b = bytes.get(*off as usize..).unwrap_or(&[]);
                    match payload {
                        // Tuple variants name their fields __0, __1, …: `Some(5)`.
                        Shape::Struct { members, .. }
                            if members.iter().all(|(n, ..)| n.starts_with("__")) =>
                        {
                            if members.is_empty() {
                                name.clone()
                            } else {
                                let parts: Vec<String> = members
                                    .iter()
                                    .map(|(_, o, s)| {
                                        render(s, b.get(*o as usize..).unwrap_or(&[]), rest)
                                    })
                                    .collect();
                                format!("{name}({})", parts.join(", "))
                            }
                        }
                        Shape::Struct { members, .. } if members.is_empty() => name.clone(),
                        other => format!("{name} {}", render(other, b, rest)),
                    }
                }
            }
        }
        Shape::GoStruct { .. }
        | Shape::GoArray { .. }
        | Shape::GoPtr { .. }
        | Shape::GoUnloaded { .. } => go_text(shape, bytes, rest, None, true),
        // Inside a composite of another language only the header was copied: the length.
        Shape::Counted {
            layout, data: None, ..
        } if !layout.style.is_go() => {
            format!(
                "{} len: {}",
                layout.type_name,
                le_u64(bytes.get(layout.len_off as usize..).unwrap_or(&[]), 8)
            )
        }
        Shape::Counted { layout, elem, data } => {
            if layout.style.is_go() {
                return go_text(shape, bytes, rest, None, true);
            }
            match decode_counted(layout, elem, data.as_ref(), bytes, rest, true) {
                Value::Str { text, .. } => format!("{text:?}"),
                other => other.to_string(),
            }
        }
        Shape::Char { size } => lldb_char(le_u64(bytes, usize::from(*size)) as u32, *size),
        Shape::Float { size: 4 } => {
            lldb_float(f64::from(f32::from_bits(le_u64(bytes, 4) as u32)), 9)
        }
        Shape::Float { .. } => lldb_float(f64::from_bits(le_u64(bytes, 8)), 17),
        other => match decode_shape(other, bytes, rest) {
            Value::Int(v) => v.to_string(),
            Value::UInt(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::Str { text, .. } => format!("{text:?}"),
            Value::Text(t) | Value::Error(t) => t,
        },
    }
}

/// A Go value as Delve 1.20 prints it in a logpoint. `typed`: with its type's name, as Delve
/// shows the value asked for, a struct's fields and what a typed pointer points to
/// (`main.Order {ID: 1}`, `*main.T nil`, `[]int len: 1, cap: 1, [1]`); without, as it shows
/// the elements of arrays and slices (`{ID: 1}`, `*nil`, `[1]`). `addr`: where `bytes` are in
/// the target, when known (behind a pointer, an element of a slice), for what Delve shows by
/// address: structs past its depth, `(*main.Line)(0xc000010000)`.
fn go_text(shape: &Shape, bytes: &[u8], rest: &[u8], addr: Option<u64>, typed: bool) -> String {
    let at = |off: u64| bytes.get(off as usize..).unwrap_or(&[]);
    let plus = |off: u64| addr.map(|a| a.wrapping_add(off));
    let named = |name: &str, body: String| {
        if typed {
            format!("{name} {body}")
        } else {
            body
        }
    };
    match shape {
        Shape::GoStruct { name, members } => {
            let parts: Vec<String> = members
                .iter()
                .map(|(n, off, s)| format!("{n}: {}", go_text(s, at(*off), rest, plus(*off), true)))
                .collect();
            named(name, format!("{{{}}}", parts.join(", ")))
        }
        Shape::GoArray {
            name,
            items,
            count,
            stride,
        } => {
            let parts: Vec<String> = items
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let off = i as u64 * stride;
                    go_text(s, at(off), rest, plus(off), false)
                })
                .collect();
            let more = count.saturating_sub(items.len() as u64);
            let tail = match (more, parts.is_empty()) {
                (0, _) => String::new(),
                (_, true) => format!("...+{more} more"),
                (_, false) => format!(",...+{more} more"),
            };
            named(name, format!("[{}{tail}]", parts.join(",")))
        }
        // Only a struct inside a value not reached through a pointer lacks an address (its
        // fields' fields' fields): the agent does not copy where such a value is.
        Shape::GoUnloaded { name } => match addr {
            Some(a) => format!("(*{name})({a:#x})"),
            None => format!("(*{name})(?)"),
        },
        Shape::GoPtr {
            name,
            pointee,
            target,
            ..
        } => {
            let ptr = le_u64(bytes, 8);
            if ptr == 0 {
                return if typed {
                    format!("{name} nil")
                } else {
                    "*nil".to_owned()
                };
            }
            match (pointee, target) {
                (Some(s), Some(off)) => format!(
                    "*{}",
                    go_text(
                        s,
                        rest.get(*off as usize..).unwrap_or(&[]),
                        rest,
                        Some(ptr),
                        typed
                    )
                ),
                // Past Delve's depth, or not copied (the plan ran out of room).
                _ => format!("*({name})({ptr:#x})"),
            }
        }
        Shape::Float { size: 4 } => go_float(
            f64::from(f32::from_bits(le_u64(bytes, 4) as u32)),
            f32::from_bits(le_u64(bytes, 4) as u32).to_string(),
        ),
        Shape::Float { .. } => {
            let f = f64::from_bits(le_u64(bytes, 8));
            go_float(f, f.to_string())
        }
        Shape::Counted { layout, data, .. } if layout.style == CountedStyle::GoText => {
            let len = le_u64(bytes.get(layout.len_off as usize..).unwrap_or(&[]), 8);
            let copied = match data {
                Some(p) => {
                    let n = len.min(p.cap) as usize;
                    rest.get(p.at..).map_or(&[][..], |r| &r[..n.min(r.len())])
                }
                None => &[],
            };
            go_quote(copied, len - copied.len() as u64)
        }
        Shape::Counted { layout, elem, data } => {
            decode_counted(layout, elem, data.as_ref(), bytes, rest, typed).to_string()
        }
        other => render(other, bytes, rest),
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, bits)`, which Delve uses: Rust's shortest text
/// (`shortest`, for the float's own width) except for the infinities.
fn go_float(f: f64, shortest: String) -> String {
    if f.is_infinite() {
        if f > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        }
    } else {
        shortest
    }
}

/// A Go string quoted as Delve shows it (Go's `%q`, `strconv.Quote`): `\"`, `\\`, the C
/// escapes, `\xNN` for a byte that is not UTF-8 (a copy cut in the middle of a character),
/// `\uNNNN` for a character Go does not print, and `...+N more` before the closing quote when
/// `more` bytes were not copied.
fn go_quote(bytes: &[u8], more: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if go_printable(c) => out.push(c),
                c if (c as u32) < 0x80 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if (c as u32) < 0x1_0000 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    if more > 0 {
        let _ = write!(out, "...+{more} more");
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint` for the characters that matter here: not a control character, not a
/// space other than U+0020, not an invisible format character (zero-width space, BOM, …).
fn go_printable(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{a0}' | '\u{ad}' | '\u{1680}' | '\u{2000}'..='\u{200f}' | '\u{2028}'..='\u{202f}' | '\u{205f}'..='\u{2064}' | '\u{3000}' | '\u{feff}'
        )
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
            Value::Float(v) => {
                serde_json::Number::from_f64(*v).map_or_else(|| J::String(v.to_string()), J::Number)
            }
            Value::Bool(v) => J::Bool(*v),
            Value::Str { text, truncated } => J::String(if *truncated {
                format!("{text}...(truncated)")
            } else {
                text.clone()
            }),
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
    fn sign_extension_by_size() {
        assert_eq!(sign_extend(0xff, 1), -1);
        assert_eq!(sign_extend(0x7f, 1), 127);
        assert_eq!(sign_extend(0xffff_fffe, 4), -2);
        assert_eq!(sign_extend(u64::MAX, 8), -1);
    }

    #[test]
    fn c_strings_show_pointer_and_text_like_lldb() {
        let s = Shape::CString { cap: 5 };
        let with = |p: u64, text: &[u8]| -> Vec<u8> {
            p.to_le_bytes().iter().chain(text).copied().collect()
        };
        let b = with(0x5555_5555_6012, b"carol-");
        assert_eq!(
            decode_shape(&s, &b, &b),
            Value::Text("0x0000555555556012 \"carol\"...".into())
        );
        let b = with(0x5555_5555_6012, b"a\"b\n");
        assert_eq!(
            decode_shape(&s, &b, &b),
            Value::Text("0x0000555555556012 \"a\\\"b\\n\"".into())
        );
        // A null `char *` is its address alone, as lldb-dap shows it.
        let b = with(0, b"");
        assert_eq!(
            decode_shape(&s, &b, &b),
            Value::Text("0x0000000000000000".into())
        );
    }

    #[test]
    fn chars_and_floats_render_like_lldb() {
        // Verified against lldb-dap-22 logpoints (C `char`, Rust `char`, `double`, `float`);
        // the doubles as lldb computed them from `o->price` = 2.5 (`{o->price * 1e-6}`).
        assert_eq!(lldb_char(u32::from(b'A'), 1), "'A'");
        assert_eq!(lldb_char(10, 1), "'\\n'");
        assert_eq!(lldb_char(0xc8, 1), "'\\xc8'");
        assert_eq!(lldb_char(0, 1), "'\\0'");
        assert_eq!(lldb_char(0x4e2d, 4), "U+0x00004e2d U+0x00004e2d U'中'");
        let cases = [
            (11.0, "11"),
            (2.75, "2.75"),
            (2.5 / 3.0, "0.83333333333333337"),
            (2.5 * 1e20, "2.5E+20"),
            (2.5 * 1e-7, "2.4999999999999999E-7"),
            (2.5 * 1e-6, "0.0000024999999999999998"),
            (2.5 * 1e7, "25000000"),
            (2.5 * 1e8, "2.5E+8"),
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::INFINITY, "+Inf"),
            (f64::NAN, "NaN"),
        ];
        for (f, want) in cases {
            assert_eq!(lldb_float(f, 17), want, "{f:e}");
        }
        assert_eq!(lldb_float(f64::from(2.5f32 / 3.0), 9), "0.833333313");
        assert_eq!(lldb_float(1e10, 9), "1.0E+10");
    }

    #[test]
    fn char_arrays_stop_at_nul() {
        let s = Shape::CharArray {
            count: 8,
            copied: 8,
        };
        assert_eq!(
            decode_shape(&s, b"C12\0\0\0\0\0", b""),
            Value::Str {
                text: "C12".into(),
                truncated: false
            }
        );
    }

    #[test]
    fn structs_render_like_lldb_dap() {
        // The members, as lldb's `frame variable` shows them, each in lldb-dap's format.
        let int = Shape::Int {
            size: 4,
            signed: true,
        };
        let s = Shape::Struct {
            name: "order".into(),
            members: vec![
                ("id".into(), 0, int.clone()),
                ("ok".into(), 4, Shape::Bool { size: 1 }),
                ("grade".into(), 5, Shape::Char { size: 1 }),
            ],
        };
        let mut b = 7i32.to_le_bytes().to_vec();
        b.extend([1, b'B']);
        assert_eq!(
            decode_shape(&s, &b, &b),
            Value::Text("{id = 7, ok = true, grade = 'B'}".into())
        );
        // A bool reads only its own byte, not the members after it.
        let s = Shape::Struct {
            name: "pair".into(),
            members: vec![
                ("ok".into(), 0, Shape::Bool { size: 1 }),
                ("id".into(), 4, int),
            ],
        };
        let b = [0, 0, 0, 0, 7, 0, 0, 0];
        assert_eq!(
            decode_shape(&s, &b, &b),
            Value::Text("{ok = false, id = 7}".into())
        );
        // A pointer is its address, 16 hex digits.
        assert_eq!(
            decode_shape(&Shape::Pointer, &0x7fff_ffff_e4c0u64.to_le_bytes(), &[]),
            Value::Text("0x00007fffffffe4c0".into())
        );
        // A tuple variant's payload still renders: `Percent(6)`, `Some(2.5)`.
        let v = Shape::Variants {
            discr: Some((0, 4)),
            variants: vec![(
                Some(1),
                "Some".into(),
                8,
                Shape::Struct {
                    name: "Some".into(),
                    members: vec![("__0".into(), 0, Shape::Float { size: 8 })],
                },
            )],
        };
        let mut b = 1u64.to_le_bytes().to_vec();
        b.extend(2.5f64.to_le_bytes());
        assert_eq!(decode_shape(&v, &b, &b), Value::Text("Some(2.5)".into()));
    }

    fn go_layout(name: &str, style: CountedStyle, stride: u64) -> CountedLayout {
        let cap_off = (style == CountedStyle::GoSlice).then_some(16);
        let header = if cap_off.is_some() { 24 } else { 16 };
        CountedLayout {
            header,
            ptr_off: 0,
            len_off: 8,
            cap_off,
            stride,
            style,
            type_name: name.into(),
        }
    }

    fn go_string() -> Shape {
        Shape::Counted {
            layout: go_layout("string", CountedStyle::GoText, 1),
            elem: Box::new(Shape::Char { size: 1 }),
            data: None,
        }
    }

    fn header(ptr: u64, len: u64, cap: Option<u64>) -> Vec<u8> {
        let mut b = ptr.to_le_bytes().to_vec();
        b.extend(len.to_le_bytes());
        if let Some(cap) = cap {
            b.extend(cap.to_le_bytes());
        }
        b
    }

    #[test]
    fn go_strings_quote_like_delve() {
        assert_eq!(go_quote(b"alice", 0), r#""alice""#);
        assert_eq!(
            go_quote("in\"q\\\n\u{1}é\u{200b}".as_bytes(), 0),
            r#""in\"q\\\n\x01é\u200b""#
        );
        // Cut inside a character: the partial byte is shown as Delve shows it.
        assert_eq!(go_quote(&"é".as_bytes()[..1], 1), r#""\xc3...+1 more""#);
        assert_eq!(go_quote(b"carol", 24), r#""carol...+24 more""#);
    }

    #[test]
    fn go_struct_with_strings_and_slices_renders_like_delve() {
        // *main.Order {ID, Name string, Tags []string} with Name copied, Tags' one element copied.
        let mut name = go_string();
        let mut tags_elem = go_string();
        let strings = Shape::Counted {
            layout: go_layout("[]string", CountedStyle::GoSlice, 16),
            elem: Box::new(go_string()),
            data: None,
        };
        let mut tags = strings.clone();
        let order = |name: Shape, tags: Shape| Shape::GoStruct {
            name: "main.Order".into(),
            members: vec![
                (
                    "ID".into(),
                    0,
                    Shape::Int {
                        size: 8,
                        signed: true,
                    },
                ),
                ("Name".into(), 8, name),
                ("Tags".into(), 24, tags),
            ],
        };
        let ptr = |t: Shape| Shape::GoPtr {
            name: "*main.Order".into(),
            pointee: Some(Box::new(t)),
            size: 48,
            target: Some(8),
        };
        // Layout of the value: pointer @0, struct @8 (ID @8, Name @16, Tags @32), then data.
        let mut b = 0x1000u64.to_le_bytes().to_vec();
        b.extend(7i64.to_le_bytes());
        b.extend(header(0x2000, 5, None));
        b.extend(header(0x3000, 2, Some(3)));
        assert_eq!(b.len(), 56);
        // Name's text @56, Tags' element headers @64, element 0's text @96.
        b.extend(b"alic\0\0\0\0");
        b.extend(header(0x4000, 3, None));
        b.extend(header(0x5000, 8, None));
        b.extend(b"bob\0\0\0\0\0");
        if let Shape::Counted { data, .. } = &mut name {
            *data = Some(Payload {
                at: 56,
                cap: 4,
                items: None,
            });
        }
        if let Shape::Counted { data, .. } = &mut tags_elem {
            *data = Some(Payload {
                at: 96,
                cap: 8,
                items: None,
            });
        }
        if let Shape::Counted { data, .. } = &mut tags {
            *data = Some(Payload {
                at: 64,
                cap: 32,
                items: Some(vec![tags_elem]),
            });
        }
        let v = ptr(order(name, tags));
        assert_eq!(
            decode_shape(&v, &b[..56], &b),
            Value::Text(r#"*main.Order {ID: 7, Name: "alic...+1 more", Tags: []string len: 2, cap: 3, ["bob",...+1 more]}"#.into())
        );
        // Nothing of the strings copied (no room left in the plan): lengths only, as Delve
        // shows what it did not load.
        let v = ptr(order(go_string(), strings));
        assert_eq!(
            decode_shape(&v, &b[..56], &b),
            Value::Text(r#"*main.Order {ID: 7, Name: "...+5 more", Tags: []string len: 2, cap: 3, [...+2 more]}"#.into())
        );
        // A nil pointer: the pointee was not read.
        let nil = [0u8; 56];
        assert_eq!(
            decode_shape(&v, &nil, &nil),
            Value::Text("*main.Order nil".into())
        );
        // A nil slice, and a pointer inside a composite, which is not followed.
        let s = Shape::GoStruct {
            name: "main.T".into(),
            members: vec![
                (
                    "S".into(),
                    0,
                    Shape::Counted {
                        layout: go_layout("[]int", CountedStyle::GoSlice, 8),
                        elem: Box::new(Shape::Int {
                            size: 8,
                            signed: true,
                        }),
                        data: None,
                    },
                ),
                (
                    "P".into(),
                    24,
                    Shape::GoPtr {
                        name: "*main.T".into(),
                        pointee: None,
                        size: 0,
                        target: None,
                    },
                ),
            ],
        };
        let mut b = header(0, 0, Some(0));
        b.extend(0xc000_0100u64.to_le_bytes());
        assert_eq!(
            decode_shape(&s, &b, &b),
            Value::Text("main.T {S: []int len: 0, cap: 0, nil, P: *(*main.T)(0xc0000100)}".into())
        );
    }

    #[test]
    fn expansion_degrades_to_fewer_elements_when_ops_run_out() {
        let slice = Shape::Counted {
            layout: go_layout("[]string", CountedStyle::GoSlice, 16),
            elem: Box::new(go_string()),
            data: Some(Payload {
                at: 24,
                cap: 16 * EXPANDED_ELEMS,
                items: Some(Vec::new()),
            }),
        };
        let mut values = vec![ValueDecoder {
            expr: "tags".into(),
            hidden: false,
            role: Role::Shown,
            shape: slice,
            dst: 0,
            size: 24 + 128,
        }];
        // Room for one element (3 ops) but not two.
        let mut room = Room {
            ops: Vec::new(),
            before: MAX_OPS - 5,
            end: 152,
        };
        expand(
            &mut values,
            &mut room,
            Caps {
                string: 256,
                elems: DEFAULT_ELEM_CAP,
            },
        );
        assert_eq!(room.ops.len(), 3, "one element's guard, HDR and EMIT_VAR");
        let tail: Vec<String> = describe(&room.ops);
        assert_eq!(
            tail,
            [
                "v0: skip 2 if @8 <= 0",
                "v0: hdr @24 ptr+0 len+8 x1",
                "v0: emit_var 64 @152"
            ]
        );
        // Three tags at the hit: the first shown, the rest counted, as Delve marks a cut.
        let mut data = header(0x1000, 3, Some(3));
        data.extend(header(0x2000, 5, None));
        data.resize(152, 0);
        data.extend(b"alice");
        let h = EventHeader::default();
        let got = decode(&values, &h, &data);
        assert_eq!(
            got,
            vec![Value::Text(
                r#"[]string len: 3, cap: 3, ["alice",...+2 more]"#.into()
            )]
        );
    }

    #[test]
    fn pointer_fields_are_followed_as_delve_does() {
        // main.T {P *main.A, L []main.A} with main.A {S string}: P followed (its pointee's
        // string too), L's elements past Delve's depth, shown by address from the header.
        let a = Shape::GoStruct {
            name: "main.A".into(),
            members: vec![("S".into(), 0, go_string())],
        };
        let p = Shape::GoPtr {
            name: "*main.A".into(),
            pointee: Some(Box::new(a)),
            size: 16,
            target: None,
        };
        let l = Shape::Counted {
            layout: go_layout("[]main.A", CountedStyle::GoSlice, 16),
            elem: Box::new(Shape::GoUnloaded {
                name: "main.A".into(),
            }),
            data: None,
        };
        let t = Shape::GoStruct {
            name: "main.T".into(),
            members: vec![("P".into(), 0, p), ("L".into(), 8, l)],
        };
        let mut values = vec![ValueDecoder {
            expr: "t".into(),
            hidden: false,
            role: Role::Shown,
            shape: t,
            dst: 0,
            size: 32,
        }];
        let mut room = Room {
            ops: Vec::new(),
            before: 0,
            end: 32,
        };
        expand(
            &mut values,
            &mut room,
            Caps {
                string: 256,
                elems: DEFAULT_ELEM_CAP,
            },
        );
        assert_eq!(
            describe(&room.ops),
            [
                "v0: hdr @0 ptr+0 len+0 x0",
                "v0: emit_mem 16 +0 @32 (nil: zeros)",
                "v0: hdr @32 ptr+0 len+8 x1",
                "v0: emit_var 64 @48"
            ]
        );
        let mut data = 0x1000u64.to_le_bytes().to_vec();
        data.extend(header(0x2000, 2, Some(2)));
        data.extend(header(0x3000, 1, None));
        data.extend(b"x");
        let got = decode(&values, &EventHeader::default(), &data);
        assert_eq!(got, vec![Value::Text(r#"main.T {P: *main.A {S: "x"}, L: []main.A len: 2, cap: 2, [(*main.A)(0x2000),(*main.A)(0x2010)]}"#.into())]);
        // Nil: the pointee read zeros, not a fault; its string is empty, nothing is shown of it.
        let mut data = vec![0u8; 8];
        data.extend(header(0, 0, Some(0)));
        data.resize(64, 0);
        let got = decode(&values, &EventHeader::default(), &data);
        assert_eq!(
            got,
            vec![Value::Text(
                "main.T {P: *main.A nil, L: []main.A len: 0, cap: 0, nil}".into()
            )]
        );
        // As elements, without type names: `*nil`, `*{…}`.
        let elem = Shape::GoArray {
            name: "[1]*main.A".into(),
            items: vec![Shape::GoPtr {
                name: "*main.A".into(),
                pointee: None,
                size: 0,
                target: None,
            }],
            count: 1,
            stride: 8,
        };
        assert_eq!(
            go_text(&elem, &[0u8; 8], &[], None, true),
            "[1]*main.A [*nil]"
        );
    }

    fn describe(ops: &[PlanOp]) -> Vec<String> {
        let mut p = Plan::empty();
        p.ops[..ops.len()].copy_from_slice(ops);
        p.n_ops = ops.len() as u32;
        describe_ops(&p)
    }
}
