//! Values as typed JSON for programs (`capture --format json`, `jq`, a test, a notebook):
//! numbers as numbers, strings and chars as JSON strings, structs as objects, arrays, slices
//! and `Vec`s as arrays, a Rust `Option` as its value or `null`, a Go nil as `null`.
//!
//! Why not the debugger's text: that text (`0x000055985a1fb04b "rent"`, `'A'`, `Some(345)`)
//! is for the daemon, which parses it as lldb-dap or Delve print it; a program wants the
//! value. Conventions the types do not settle, in one place:
//! - a string longer than the cap ends in `...(truncated)`, as `--string-cap` documents;
//! - pointers not followed are their address as a `0x…` string of 16 hex digits (a `u64`
//!   past 2^53 does not survive a JSON number in most readers);
//! - a sequence not copied whole is the array of the elements that were: the CLI's
//!   `--elem-cap` bounds it;
//! - a read that failed, or a type the agent does not decode, is `{"error": …}`;
//! - a Rust `String`/`&str`/`Vec` or C++ `std::string` nested in a struct, whose data the plan
//!   does not copy (only its header), is `{"error": …}` naming its length: never `""` or `[]`,
//!   which would say it is empty (`avail_bench` found `"items": []` for a `Vec` of three).

use serde_json::{json, Map, Value as J};

use crate::decode::{Node, VariantPayload};

/// A decoded value as typed JSON.
#[must_use]
pub fn value(node: &Node) -> J {
    if let Some((type_name, len)) = node.header_only() {
        return not_copied(type_name, len);
    }
    match node {
        Node::Int(v) => J::from(*v),
        Node::UInt(v) => J::from(*v),
        Node::Float { value, .. } => float(*value),
        Node::Bool(v) => J::Bool(*v),
        Node::Char { code, size } => J::String(character(*code, *size)),
        Node::Enumerator(name) => J::String(name.clone()),
        Node::Pointer(p) => address(*p),
        Node::CString { ptr: 0, .. } => J::Null,
        Node::CString { text, cut, .. } => string(&String::from_utf8_lossy(text), *cut),
        Node::CharArray { text, truncated } => string(text, *truncated),
        Node::Text { len, bytes, .. } => {
            string(&String::from_utf8_lossy(bytes), (bytes.len() as u64) < *len)
        }
        Node::Stack(pcs) => pcs.iter().map(|pc| address(pc.0)).collect(),
        // Go's own JSON shows a nil slice as `null`.
        Node::Seq {
            go: true,
            ptr: 0,
            len: 0,
            ..
        } => J::Null,
        Node::Seq { items, .. } | Node::Array { items, .. } | Node::GoArray { items, .. } => {
            items.iter().map(value).collect()
        }
        Node::Struct { members, .. } | Node::GoStruct { members, .. } => J::Object(
            members
                .iter()
                .map(|(name, m)| (name.clone(), value(m)))
                .collect::<Map<_, _>>(),
        ),
        Node::Variant { name, payload } => variant(name, payload),
        Node::UnknownVariant(d) => {
            json!({ "error": format!("the enum's discriminant {d} matches none of its variants") })
        }
        Node::Opaque(what) => json!({ "error": format!("values of type {what} are not decoded") }),
        Node::GoPtr { ptr: 0, .. } => J::Null,
        Node::GoPtr {
            target: Some(t), ..
        } => value(t),
        Node::GoPtr { ptr, .. } => address(*ptr),
        Node::GoUnloaded { addr: Some(a), .. } => address(*a),
        Node::GoUnloaded { name, addr: None } => {
            json!({ "error": format!("a {name} this deep is not copied, and its address is not known") })
        }
        Node::Error(e) | Node::Unavailable { message: e, .. } => json!({ "error": e }),
    }
}

/// A Rust enum value: `Option` as its value or `null`, a unit variant as its name, any other
/// as `{"Variant": payload}` (serde's externally tagged form).
fn variant(name: &str, payload: &VariantPayload) -> J {
    match (name, payload) {
        ("None", VariantPayload::Unit) => J::Null,
        ("Some", VariantPayload::Tuple(fields)) if fields.len() == 1 => value(&fields[0]),
        (_, VariantPayload::Unit) => J::String(name.to_owned()),
        (_, VariantPayload::Tuple(fields)) => {
            let inner = if fields.len() == 1 {
                value(&fields[0])
            } else {
                fields.iter().map(value).collect()
            };
            tagged(name, inner)
        }
        (_, VariantPayload::Other(inner)) => tagged(name, value(inner)),
    }
}

/// `{"name": inner}`.
fn tagged(name: &str, inner: J) -> J {
    let mut m = Map::new();
    m.insert(name.to_owned(), inner);
    J::Object(m)
}

/// A float as a JSON number; NaN and the infinities, which JSON has no number for, as the
/// strings `"NaN"`, `"inf"`, `"-inf"`.
fn float(f: f64) -> J {
    serde_json::Number::from_f64(f).map_or_else(|| J::String(f.to_string()), J::Number)
}

/// A string or sequence inside a composite, of which only the header (length, pointer) was
/// copied.
fn not_copied(type_name: &str, len: u64) -> J {
    json!({ "error": format!("not copied inside a struct: {type_name} of len {len}; capture the member itself as its own expression") })
}

/// A string, marked when the target's was longer than what was copied.
fn string(text: &str, truncated: bool) -> J {
    J::String(if truncated {
        format!("{text}...(truncated)")
    } else {
        text.to_owned()
    })
}

/// A character as a one-character string. A C `char` byte past ASCII is not a character on
/// its own: it is shown as its escape, `\xc8`.
fn character(code: u32, size: u8) -> String {
    match char::from_u32(code) {
        Some(c) if size >= 2 || c.is_ascii() => c.to_string(),
        _ if size >= 2 => format!("\\U{code:08x}"),
        _ => format!("\\x{code:02x}"),
    }
}

/// An address as the `0x…` string, 16 hex digits as lldb shows one.
fn address(p: u64) -> J {
    J::String(format!("{p:#018x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::shape::fixtures::{go_layout, go_string, header};
    use crate::plan::shape::{CountedStyle, Payload, Shape};

    fn typed(shape: &Shape, bytes: &[u8]) -> J {
        value(&crate::decode::node(shape, bytes, bytes, None))
    }

    #[test]
    fn c_strings_and_chars_are_json_strings() {
        let mut b = 0x5555_5555_6012u64.to_le_bytes().to_vec();
        b.extend(b"rent");
        assert_eq!(typed(&Shape::CString { cap: 8 }, &b), json!("rent"));
        // Longer than the cap: cut and marked.
        assert_eq!(
            typed(&Shape::CString { cap: 3 }, &b),
            json!("ren...(truncated)")
        );
        assert_eq!(typed(&Shape::CString { cap: 8 }, &[0; 8]), J::Null);
        assert_eq!(typed(&Shape::Char { size: 1 }, b"A"), json!("A"));
        assert_eq!(typed(&Shape::Char { size: 1 }, &[0xc8]), json!("\\xc8"));
        assert_eq!(
            typed(&Shape::Char { size: 4 }, &0x4e2du32.to_le_bytes()),
            json!("中")
        );
        assert_eq!(
            typed(&Shape::Pointer, &0x7ffe_1000u64.to_le_bytes()),
            json!("0x000000007ffe1000")
        );
    }

    #[test]
    fn rust_options_are_the_value_or_null() {
        let some = |payload: Shape| Shape::Variants {
            discr: Some((0, 8)),
            variants: vec![
                (
                    Some(0),
                    "None".into(),
                    0,
                    Shape::Struct {
                        name: "None".into(),
                        members: vec![],
                    },
                ),
                (
                    Some(1),
                    "Some".into(),
                    8,
                    Shape::Struct {
                        name: "Some".into(),
                        members: vec![("__0".into(), 0, payload)],
                    },
                ),
            ],
        };
        let u64_shape = Shape::Int {
            size: 8,
            signed: false,
        };
        let mut b = 1u64.to_le_bytes().to_vec();
        b.extend(345u64.to_le_bytes());
        assert_eq!(typed(&some(u64_shape.clone()), &b), json!(345));
        assert_eq!(typed(&some(u64_shape), &[0; 16]), J::Null);
    }

    #[test]
    fn structs_are_objects_and_floats_numbers() {
        let s = Shape::Struct {
            name: "order".into(),
            members: vec![
                (
                    "id".into(),
                    0,
                    Shape::Int {
                        size: 4,
                        signed: true,
                    },
                ),
                ("ok".into(), 4, Shape::Bool { size: 1 }),
                ("price".into(), 8, Shape::Float { size: 8 }),
            ],
        };
        let mut b = (-7i32).to_le_bytes().to_vec();
        b.extend([1, 0, 0, 0]);
        b.extend(2.75f64.to_le_bytes());
        assert_eq!(typed(&s, &b), json!({"id": -7, "ok": true, "price": 2.75}));
    }

    /// A Rust `String` and `Vec<i32>` nested in a struct: only their headers are copied, so
    /// they are errors naming their lengths, not `"...(truncated)"` and `[]`.
    #[test]
    fn nested_rust_text_and_vec_not_copied_are_errors_with_their_length() {
        let layout = |name: &str, style, stride| crate::plan::shape::CountedLayout {
            header: 24,
            ptr_off: 8,
            len_off: 16,
            cap_off: Some(0),
            stride,
            style,
            type_name: name.into(),
        };
        let s = Shape::Struct {
            name: "Order".into(),
            members: vec![
                (
                    "customer".into(),
                    0,
                    Shape::Counted {
                        layout: layout("alloc::string::String", CountedStyle::Text, 1),
                        elem: Box::new(Shape::Char { size: 1 }),
                        data: None,
                    },
                ),
                (
                    "items".into(),
                    24,
                    Shape::Counted {
                        layout: layout("alloc::vec::Vec<i32>", CountedStyle::RustSeq, 4),
                        elem: Box::new(Shape::Int {
                            size: 4,
                            signed: true,
                        }),
                        data: None,
                    },
                ),
            ],
        };
        let mut b = [5u64, 0x1000, 5, 3, 0x2000, 3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>();
        b.truncate(48);
        assert_eq!(
            typed(&s, &b),
            json!({
                "customer": {"error": "not copied inside a struct: alloc::string::String of len 5; capture the member itself as its own expression"},
                "items": {"error": "not copied inside a struct: alloc::vec::Vec<i32> of len 3; capture the member itself as its own expression"},
            })
        );
    }

    #[test]
    fn go_strings_and_slices_are_strings_and_arrays() {
        // A []string of two, both copied.
        let mut e0 = go_string();
        let mut e1 = go_string();
        if let Shape::Counted { data, .. } = &mut e0 {
            *data = Some(Payload {
                at: 56,
                cap: 8,
                items: None,
            });
        }
        if let Shape::Counted { data, .. } = &mut e1 {
            *data = Some(Payload {
                at: 64,
                cap: 8,
                items: None,
            });
        }
        let slice = Shape::Counted {
            layout: go_layout("[]string", CountedStyle::GoSlice, 16),
            elem: Box::new(go_string()),
            data: Some(Payload {
                at: 24,
                cap: 32,
                items: Some(vec![e0, e1]),
            }),
        };
        let mut b = header(0x1000, 2, Some(2));
        b.extend(header(0x2000, 1, None));
        b.extend(header(0x3000, 3, None));
        b.extend(b"a\0\0\0\0\0\0\0bcd\0\0\0\0\0");
        assert_eq!(typed(&slice, &b), json!(["a", "bcd"]));
        // A nil slice is null, as Go's encoding/json shows it.
        assert_eq!(typed(&slice, &header(0, 0, Some(0))), J::Null);
    }
}
