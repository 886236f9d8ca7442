//! Go values as Delve 1.20 prints them in a logpoint: `main.Order {ID: 1, Name: "x"}`,
//! `[]int len: 3, cap: 4, [1,2,3]`, `*main.T nil`, `(*main.Line)(0xc000010000)` past its load
//! depth, strings quoted as Go's `%q` with `...+N more` for what was not loaded.
//!
//! Why exact: a Go session's daemon stores what Delve would have printed.

use crate::decode::Node;

use super::{debugger, lldb, seq_text};

/// A Go value as Delve prints it. `typed`: with its type's name, as Delve shows the value
/// asked for, a struct's fields and what a typed pointer points to (`main.Order {ID: 1}`,
/// `*main.T nil`, `[]int len: 1, cap: 1, [1]`); without, as it shows the elements of arrays
/// and slices (`{ID: 1}`, `*nil`, `[1]`).
#[must_use]
pub fn text(node: &Node, typed: bool) -> String {
    let named = |name: &str, body: String| {
        if typed {
            format!("{name} {body}")
        } else {
            body
        }
    };
    match node {
        Node::GoStruct { name, members } => {
            let parts: Vec<String> = members
                .iter()
                .map(|(n, m)| format!("{n}: {}", text(m, true)))
                .collect();
            named(name, format!("{{{}}}", parts.join(", ")))
        }
        Node::GoArray { name, items, count } => {
            let parts: Vec<String> = items.iter().map(|m| text(m, false)).collect();
            let more = count.saturating_sub(items.len() as u64);
            let tail = match (more, parts.is_empty()) {
                (0, _) => String::new(),
                (_, true) => format!("...+{more} more"),
                (_, false) => format!(",...+{more} more"),
            };
            named(name, format!("[{}{tail}]", parts.join(",")))
        }
        Node::GoUnloaded { name, addr } => match addr {
            Some(a) => format!("(*{name})({a:#x})"),
            None => format!("(*{name})(?)"),
        },
        Node::GoPtr { name, ptr, target } => {
            if *ptr == 0 {
                return if typed {
                    format!("{name} nil")
                } else {
                    "*nil".to_owned()
                };
            }
            match target {
                Some(t) => format!("*{}", text(t, typed)),
                // Past Delve's depth, or not copied (the plan ran out of room).
                None => format!("*({name})({ptr:#x})"),
            }
        }
        Node::Float { value, size: 4 } => go_float(*value, (*value as f32).to_string()),
        Node::Float { value, .. } => go_float(*value, value.to_string()),
        Node::Text {
            go: true,
            len,
            bytes,
            ..
        } => go_quote(bytes, len - bytes.len() as u64),
        Node::Text { .. } => debugger(node).to_string(),
        Node::Seq { .. } => seq_text(node, typed),
        other => lldb::text(other),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::shape::fixtures::{go_layout, go_string, header};
    use crate::plan::shape::{CountedStyle, Payload, Shape};
    use crate::render::decode_shape;
    use crate::render::Value;

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
}
