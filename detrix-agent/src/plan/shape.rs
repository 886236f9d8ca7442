//! The shape model: how the bytes of one captured value are read back ([`Shape`]), and how a
//! DWARF type becomes a shape (counted sequences of Go, Rust and C++ recognized by their names
//! and members, Go values at Delve's load depth, the rest stored in place).
//!
//! Why a separate model: the plan's ops only copy bytes; what those bytes mean is decided once
//! here, at build time, so `decode` never touches DWARF and `budget` can walk what a value
//! points to without re-reading types.

use detrix_common::MAX_COPY_BYTES;

use crate::debuginfo::{Binary, Type, TypeRef};

use super::lower::Builder;
use super::PlanError;

/// How the bytes of one captured value are turned back into a value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
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
    /// A member whose bytes have no location at this point: the compiler split its struct into
    /// pieces (`DW_OP_piece`) and left these without one. Nothing is copied; it decodes to
    /// `<optimized out>`, never to the stale bytes where it would have been (lldb shows zeros).
    OptimizedOut,
}

/// Where the elements (or text) of a counted sequence were copied at the hit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Payload {
    /// Offset from the value's first byte in the event's data (payloads of nested strings
    /// and slices are placed after every value's own bytes).
    pub(crate) at: usize,
    /// Most bytes copied: `min(len × stride, cap)` were, by the `HDR` + `EMIT_VAR` pair.
    pub(crate) cap: u64,
    /// Elements that point to data of their own (`[]string`): the shapes of the first
    /// elements whose data was copied too, each with its own payloads; only these are shown.
    /// `None` for plain elements (`[]int`): as many are shown as were copied.
    pub(crate) items: Option<Vec<Shape>>,
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
pub(crate) struct CountedLayout {
    /// Bytes of the header copied in place.
    pub(crate) header: u64,
    pub(crate) ptr_off: u64,
    pub(crate) len_off: u64,
    pub(crate) cap_off: Option<u64>,
    /// Element size in bytes.
    pub(crate) stride: u64,
    pub(crate) style: CountedStyle,
    /// The type's own name, for Delve-style slice rendering (`[]int`).
    pub(crate) type_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CountedStyle {
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
    pub(crate) fn is_text(self) -> bool {
        matches!(self, CountedStyle::Text | CountedStyle::GoText)
    }

    pub(crate) fn is_go(self) -> bool {
        matches!(self, CountedStyle::GoText | CountedStyle::GoSlice)
    }
}

impl Builder<'_> {
    /// Recognizes the counted sequences of Go, Rust and C++ by their DWARF names and members.
    /// Only layouts whose pointer and length sit in the first 256 bytes of the header, where
    /// the `HDR` op can name them.
    pub(crate) fn counted_layout(
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
    pub(crate) fn go_shape(
        &self,
        ty: Option<TypeRef>,
        level: u32,
        depth: u32,
    ) -> Result<Shape, PlanError> {
        if let Some((layout, elem)) = self.counted_layout(ty)? {
            let slice = layout.style == CountedStyle::GoSlice && depth < 8;
            return Ok(counted(
                layout,
                slice
                    .then(|| self.go_shape(elem, level + 1, depth + 1))
                    .transpose()?,
            ));
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
    pub(crate) fn shape_in_place(
        &self,
        ty: Option<TypeRef>,
        depth: u32,
    ) -> Result<Shape, PlanError> {
        if let Some((layout, elem)) = self.counted_layout(ty)? {
            // Go shows the elements of a nested slice; other languages only its length.
            let slice = layout.style == CountedStyle::GoSlice && depth < 6;
            return Ok(counted(
                layout,
                slice
                    .then(|| self.shape_in_place(elem, depth + 1))
                    .transpose()?,
            ));
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
            // Arrays of arrays are bounded like structs: a malformed array of itself must not
            // recurse until the stack overflows (issue #12 point 5).
            Type::Array {
                elem,
                count: Some(count),
            } if depth < 6 => {
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

/// A counted sequence whose data is not placed yet: its elements shown as `elem`, or (text, a
/// sequence only counted) as bytes.
fn counted(layout: CountedLayout, elem: Option<Shape>) -> Shape {
    Shape::Counted {
        layout,
        elem: Box::new(elem.unwrap_or(Shape::Char { size: 1 })),
        data: None,
    }
}

/// Size of what a Go pointer points to, when it can be copied with the pointer.
pub(crate) fn pointee_size(
    bin: &Binary,
    pointee: Option<TypeRef>,
) -> Result<Option<u64>, PlanError> {
    Ok(match bin.type_of(pointee)? {
        Type::Void | Type::Unsupported { .. } => None,
        _ => bin
            .size_of(pointee)?
            .filter(|s| *s > 0 && *s + 8 <= MAX_COPY_BYTES as u64),
    })
}

/// Go shapes built by hand, for the decode, render and budget tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub(crate) fn go_layout(name: &str, style: CountedStyle, stride: u64) -> CountedLayout {
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

    pub(crate) fn go_string() -> Shape {
        Shape::Counted {
            layout: go_layout("string", CountedStyle::GoText, 1),
            elem: Box::new(Shape::Char { size: 1 }),
            data: None,
        }
    }

    pub(crate) fn header(ptr: u64, len: u64, cap: Option<u64>) -> Vec<u8> {
        let mut b = ptr.to_le_bytes().to_vec();
        b.extend(len.to_le_bytes());
        if let Some(cap) = cap {
            b.extend(cap.to_le_bytes());
        }
        b
    }
}
