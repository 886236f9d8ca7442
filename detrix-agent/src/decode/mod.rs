//! Ring-buffer records → typed value trees ([`Node`]); no text.
//!
//! Why a tree and not text: one capture is shown three ways — as lldb-dap prints it and as
//! Delve prints it (both in the DAP `output` the daemon parses), and as typed JSON for programs
//! (the CLI) — so decoding stops at what was read, and [`crate::render`] turns the tree into
//! each form. What depends on what the plan copied (how many elements were loaded, where a Go
//! struct past Delve's depth lives in the target) is decided here, once.

use detrix_common::{value_flags, EventHeader};

use crate::addr::RuntimeAddr;
use crate::plan::shape::{CountedLayout, CountedStyle, Payload, Shape, GO_SHOWN_ELEMS};
use crate::plan::{Role, ValueDecoder};

/// What a debugger prints for a value it cannot read: an lldb-dap `<error: …>` or a Delve
/// text such as `(unreadable …)`.
#[derive(Debug, Clone, PartialEq)]
pub enum DebuggerText {
    Error(String),
    Text(String),
}

/// One decoded value, as read at the hit.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Int(i64),
    UInt(u64),
    /// `size`: 4 for a C `float` / Go `float32`, 8 for a double (renderers print each width
    /// with its own precision).
    Float {
        value: f64,
        size: u8,
    },
    Bool(bool),
    /// A character: a C `char` (`size` 1) or a Rust `char` (4).
    Char {
        code: u32,
        size: u8,
    },
    /// An enum value that matched one of its enumerators (one that did not is an `Int`).
    Enumerator(String),
    /// A pointer not followed.
    Pointer(u64),
    /// A `char *`: the pointer, and (unless it is null) the text read, `cut` when the string
    /// was longer than the cap.
    CString {
        ptr: u64,
        text: Vec<u8>,
        cut: bool,
    },
    /// `char[N]` up to its first NUL.
    CharArray {
        text: String,
        truncated: bool,
    },
    /// Return addresses (innermost first).
    Stack(Vec<RuntimeAddr>),
    /// Counted text (Rust `&str`/`String`, C++ `std::string`, Go `string`): `len` bytes long,
    /// `bytes` the ones copied; `loaded`: whether the data was copied at all (nested in a
    /// composite of a language other than Go only the header is).
    Text {
        type_name: String,
        go: bool,
        len: u64,
        bytes: Vec<u8>,
        loaded: bool,
    },
    /// A counted sequence (Go slice, Rust `Vec<T>`/`&[T]`): the elements shown; the other
    /// `len - items.len()` were not copied.
    Seq {
        type_name: String,
        go: bool,
        ptr: u64,
        len: u64,
        cap: u64,
        items: Vec<Node>,
        loaded: bool,
    },
    /// A C, C++ or Rust struct with its members.
    Struct {
        name: String,
        members: Vec<(String, Node)>,
    },
    /// An array of non-chars.
    Array {
        name: String,
        items: Vec<Node>,
    },
    /// A Rust enum's variant and its payload.
    Variant {
        name: String,
        payload: VariantPayload,
    },
    /// A Rust enum whose discriminant matches no variant.
    UnknownVariant(u64),
    /// A type the agent does not decode.
    Opaque(String),
    /// A Go struct: `main.Order {ID: 1}`.
    GoStruct {
        name: String,
        members: Vec<(String, Node)>,
    },
    /// A Go array: the elements shown, of `count`.
    GoArray {
        name: String,
        items: Vec<Node>,
        count: u64,
    },
    /// A Go pointer; `target` is what it points to when that was copied (never for nil).
    GoPtr {
        name: String,
        ptr: u64,
        target: Option<Box<Node>>,
    },
    /// A Go struct past Delve's depth, known only by its address (when known).
    GoUnloaded {
        name: String,
        addr: Option<u64>,
    },
    /// The read failed at this hit.
    Error(String),
    /// A value the plan cannot read at this line at all (optimized out, a DWARF operation not
    /// supported yet, a register a uprobe cannot read): the same on every hit. `message` is
    /// the agent's sentence (the CLI's `{"error": …}`); `debugger` is what the target's
    /// debugger prints for such a value in a logpoint (the DAP `output`).
    Unavailable {
        message: String,
        debugger: DebuggerText,
    },
}

impl Node {
    /// A C, C++ or Rust string or sequence nested in a composite, of which the plan copied only
    /// the header: its type name and length (the renderers show the length, never "empty").
    #[must_use]
    pub fn header_only(&self) -> Option<(&str, u64)> {
        match self {
            Node::Text {
                type_name,
                go: false,
                len,
                loaded: false,
                ..
            }
            | Node::Seq {
                type_name,
                go: false,
                len,
                loaded: false,
                ..
            } => Some((type_name, *len)),
            _ => None,
        }
    }
}

/// What a Rust enum variant holds.
#[derive(Debug, Clone, PartialEq)]
pub enum VariantPayload {
    /// `None`, or a struct variant without fields.
    Unit,
    /// A tuple variant's fields (`Some(5)`).
    Tuple(Vec<Node>),
    /// Anything else (a struct variant's struct).
    Other(Box<Node>),
}

/// The sentence of a member the debug info gives no location at this point (its struct was
/// split into pieces, some without a place): the CLI's `{"error": …}` for that member.
pub const OPTIMIZED_OUT: &str =
    "optimized out at this point (the compiler kept no location for these bytes of the value)";

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
    if faulted(values, i, header) {
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

/// Whether value `i` could not be read at this hit: its own read faulted, or the one copy that
/// carries its bytes or pointer did (`plan::coalesce`).
fn faulted(values: &[ValueDecoder], i: usize, header: &EventHeader) -> bool {
    fault_of(values, i, header).is_some()
}

/// The value whose read faulted for value `i`: itself, or the block carrying it.
fn fault_of(values: &[ValueDecoder], i: usize, header: &EventHeader) -> Option<usize> {
    let mut at = Some(i);
    // Carriers are made in rounds, each from earlier ones: the chain is short and ends.
    for _ in 0..=values.len() {
        let k = at?;
        let meta = header.values.get(k).copied().unwrap_or_default();
        if meta.flags & value_flags::READ_FAULT != 0 {
            return Some(k);
        }
        at = values.get(k).and_then(|v| v.carrier);
    }
    None
}

/// Which step of the plan faulted for value `i` (the fault is value `k`'s: `i` itself or the
/// shared read carrying it) and at which address, as the program recorded it (the step in the
/// meta's length, the address in the value's first 8 bytes).
fn fault_text(
    values: &[ValueDecoder],
    i: usize,
    k: usize,
    header: &EventHeader,
    data: &[u8],
) -> String {
    let expr = values.get(i).map_or("?", |v| v.expr.as_str());
    let meta = header.values.get(k).copied().unwrap_or_default();
    let Some(v) = values.get(k) else {
        return format!("could not read the target's memory for `{expr}` at this hit");
    };
    if meta.len == value_flags::FAULT_STACK {
        return format!("could not read the target's user stack for `{expr}` at this hit");
    }
    let step = usize::from(meta.len);
    let shared = if k == i {
        ""
    } else {
        ", one read shared with nearby values"
    };
    let what = v
        .steps
        .get(step)
        .map_or_else(String::new, |t| format!(" (`{t}`{shared})"));
    let addr = le_u64(data.get(v.dst..).unwrap_or(&[]), 8);
    let at = if addr == 0 && !what.contains("deref") && !what.contains("emit_") {
        String::new()
    } else {
        format!(" at address {addr:#x}")
    };
    format!(
        "could not read the target's memory for `{expr}` at this hit: step {step} of the plan{what} faulted{at} (invalid pointer or page not present)"
    )
}

/// Decodes one record's values, in the order of `values`.
#[must_use]
pub fn decode(values: &[ValueDecoder], header: &EventHeader, data: &[u8]) -> Vec<Node> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let meta = header.values.get(i).copied().unwrap_or_default();
            if let Some(k) = fault_of(values, i, header) {
                return Node::Error(fault_text(values, i, k, header, data));
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
            node(&v.shape, bytes, rest, None)
        })
        .collect()
}

/// Decodes a value from its own bytes (`bytes`) and, for the data of its nested strings and
/// slices, everything from its first byte on (`rest`). `addr`: where `bytes` are in the
/// target, when known (behind a Go pointer, an element of a Go slice), for what Delve shows
/// by address.
pub(crate) fn node(shape: &Shape, bytes: &[u8], rest: &[u8], addr: Option<u64>) -> Node {
    let at = |off: u64| bytes.get(off as usize..).unwrap_or(&[]);
    let plus = |off: u64| addr.map(|a| a.wrapping_add(off));
    match shape {
        Shape::Int { size, signed } => {
            let raw = le_u64(bytes, usize::from(*size));
            if *signed {
                Node::Int(sign_extend(raw, usize::from(*size)))
            } else {
                Node::UInt(raw)
            }
        }
        Shape::Float { size: 4 } => Node::Float {
            value: f64::from(f32::from_bits(le_u64(bytes, 4) as u32)),
            size: 4,
        },
        Shape::Float { .. } => Node::Float {
            value: f64::from_bits(le_u64(bytes, 8)),
            size: 8,
        },
        // Only its own bytes: inside a composite `bytes` runs on past it.
        Shape::Bool { size } => Node::Bool(bytes.iter().take(usize::from(*size)).any(|b| *b != 0)),
        Shape::Char { size } => Node::Char {
            code: le_u64(bytes, usize::from(*size)) as u32,
            size: *size,
        },
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
                Some((name, _)) => Node::Enumerator(name.clone()),
                None => Node::Int(v),
            }
        }
        Shape::Pointer => Node::Pointer(le_u64(bytes, 8)),
        Shape::CString { cap } => {
            let ptr = le_u64(bytes, 8);
            let s = if ptr == 0 {
                &[][..]
            } else {
                bytes.get(8..).unwrap_or(&[])
            };
            let cap = *cap as usize;
            Node::CString {
                ptr,
                text: s[..s.len().min(cap)].to_vec(),
                cut: s.len() > cap,
            }
        }
        Shape::CharArray { count, copied } => {
            let bytes = &bytes[..bytes.len().min(*copied as usize)];
            let end = bytes.iter().position(|b| *b == 0);
            let text = String::from_utf8_lossy(&bytes[..end.unwrap_or(bytes.len())]).into_owned();
            Node::CharArray {
                text,
                truncated: end.is_none() && u64::from(*copied) < *count,
            }
        }
        Shape::Stack => Node::Stack(
            bytes
                .chunks_exact(8)
                .map(|c| RuntimeAddr(le_u64(c, 8)))
                .collect(),
        ),
        Shape::Counted { layout, elem, data } => counted(layout, elem, data.as_ref(), bytes, rest),
        Shape::Struct { name, members } => Node::Struct {
            name: name.clone(),
            members: members
                .iter()
                .map(|(n, off, s)| (n.clone(), node(s, at(*off), rest, None)))
                .collect(),
        },
        Shape::Array {
            name,
            elem,
            count,
            stride,
        } => Node::Array {
            name: name.clone(),
            items: (0..*count)
                .map(|i| node(elem, at(i * stride), rest, None))
                .collect(),
        },
        Shape::Opaque { what } => Node::Opaque(what.clone()),
        Shape::OptimizedOut => Node::Unavailable {
            message: OPTIMIZED_OUT.to_owned(),
            debugger: DebuggerText::Text("<optimized out>".to_owned()),
        },
        Shape::Variants { discr, variants } => {
            let d = discr.map(|(off, size)| le_u64(at(off), size as usize));
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
            let Some((_, name, off, payload)) = chosen else {
                return Node::UnknownVariant(d.unwrap_or(0));
            };
            let b = at(*off);
            let payload = match payload {
                // Tuple variants name their fields __0, __1, …: `Some(5)`.
                Shape::Struct { members, .. } if members.is_empty() => VariantPayload::Unit,
                Shape::Struct { members, .. }
                    if members.iter().all(|(n, ..)| n.starts_with("__")) =>
                {
                    VariantPayload::Tuple(
                        members
                            .iter()
                            .map(|(_, o, s)| {
                                node(s, b.get(*o as usize..).unwrap_or(&[]), rest, None)
                            })
                            .collect(),
                    )
                }
                other => VariantPayload::Other(Box::new(node(other, b, rest, None))),
            };
            Node::Variant {
                name: name.clone(),
                payload,
            }
        }
        Shape::GoStruct { name, members } => Node::GoStruct {
            name: name.clone(),
            members: members
                .iter()
                .map(|(n, off, s)| (n.clone(), node(s, at(*off), rest, plus(*off))))
                .collect(),
        },
        Shape::GoArray {
            name,
            items,
            count,
            stride,
        } => Node::GoArray {
            name: name.clone(),
            items: items
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let off = i as u64 * stride;
                    node(s, at(off), rest, plus(off))
                })
                .collect(),
            count: *count,
        },
        // Only a struct inside a value not reached through a pointer lacks an address (its
        // fields' fields' fields): the agent does not copy where such a value is.
        Shape::GoUnloaded { name } => Node::GoUnloaded {
            name: name.clone(),
            addr,
        },
        Shape::GoPtr {
            name,
            pointee,
            target,
            ..
        } => {
            let ptr = le_u64(bytes, 8);
            let target = match (pointee, target) {
                (Some(s), Some(off)) if ptr != 0 => Some(Box::new(node(
                    s,
                    rest.get(*off as usize..).unwrap_or(&[]),
                    rest,
                    Some(ptr),
                ))),
                // Nil, past Delve's depth, or not copied (the plan ran out of room).
                _ => None,
            };
            Node::GoPtr {
                name: name.clone(),
                ptr,
                target,
            }
        }
    }
}

/// A counted sequence from its header (`hdr`, copied in place) and, when copied, its data:
/// `min(len × stride, cap)` bytes at `rest[data.at..]`.
fn counted(
    layout: &CountedLayout,
    elem: &Shape,
    data: Option<&Payload>,
    hdr: &[u8],
    rest: &[u8],
) -> Node {
    let field = |off: u64| le_u64(hdr.get(off as usize..).unwrap_or(&[]), 8);
    let len = field(layout.len_off);
    let copied: &[u8] = match data {
        Some(p) => {
            let n = len.saturating_mul(layout.stride).min(p.cap) as usize;
            rest.get(p.at..).map_or(&[], |r| &r[..n.min(r.len())])
        }
        None => &[],
    };
    let go = layout.style.is_go();
    if layout.style.is_text() {
        return Node::Text {
            type_name: layout.type_name.clone(),
            go,
            len,
            bytes: copied.to_vec(),
            loaded: data.is_some(),
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
    let go_slice = layout.style == CountedStyle::GoSlice;
    let ptr = field(layout.ptr_off);
    // Structs past Delve's depth are shown by their addresses, from the header alone.
    if go_slice && matches!(elem, Shape::GoUnloaded { .. }) {
        shown = len;
    }
    if go_slice {
        shown = shown.min(GO_SHOWN_ELEMS);
    }
    let items = (0..shown)
        .map(|i| {
            let b = copied.get((i * stride) as usize..).unwrap_or(&[]);
            let shape = match data {
                Some(Payload {
                    items: Some(items), ..
                }) => items.get(i as usize).unwrap_or(elem),
                _ => elem,
            };
            let addr = go_slice.then(|| ptr.wrapping_add(i * stride));
            node(shape, b, rest, addr)
        })
        .collect();
    Node::Seq {
        type_name: layout.type_name.clone(),
        go: go_slice,
        ptr,
        len,
        cap: layout.cap_off.map_or(len, field),
        items,
        loaded: data.is_some(),
    }
}

/// The little-endian integer in the first `size` (≤ 8) bytes; missing bytes read as 0.
pub(crate) fn le_u64(bytes: &[u8], size: usize) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_extension_by_size() {
        assert_eq!(sign_extend(0xff, 1), -1);
        assert_eq!(sign_extend(0x7f, 1), 127);
        assert_eq!(sign_extend(0xffff_fffe, 4), -2);
        assert_eq!(sign_extend(u64::MAX, 8), -1);
    }
}
