//! Values as lldb-dap shows them: pointers as 16 hex digits, C `char`s quoted and escaped,
//! floats with the type's full precision (`llvm::APFloat::toString`), composites as lldb's
//! `frame variable` prints them (`{id = 1, name = "x"}`, `[1, 2]`, `Some(5)`).
//!
//! Why exact: the daemon stores what lldb-dap would have printed; every rule here was checked
//! against lldb-dap-22 and is pinned by a test.

use crate::decode::{Node, VariantPayload};

use super::{debugger, delve, seq_text, Value};

/// A value nested in a composite (or a composite itself) as lldb prints it; Go values nested
/// in one as Delve does.
#[must_use]
pub fn text(node: &Node) -> String {
    // Inside a composite of another language only the header was copied: the length.
    if let Some((type_name, len)) = node.header_only() {
        return format!("{type_name} len: {len}");
    }
    match node {
        // lldb-dap's logpoint shows only a struct's type name (it has no summary without the
        // auto summaries the daemon does not turn on); the agent copied the members, so it shows
        // them as lldb's `frame variable` does, each value in lldb-dap's own format.
        Node::Struct { members, .. } => {
            let parts: Vec<String> = members
                .iter()
                .map(|(name, m)| format!("{name} = {}", text(m)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        Node::Array { items, .. } => {
            let parts: Vec<String> = items.iter().map(text).collect();
            format!("[{}]", parts.join(", "))
        }
        Node::Opaque(what) => format!("<{what}>"),
        Node::UnknownVariant(d) => format!("<unknown variant {d}>"),
        Node::Variant { name, payload } => match payload {
            VariantPayload::Unit => name.clone(),
            VariantPayload::Tuple(fields) => {
                let parts: Vec<String> = fields.iter().map(text).collect();
                format!("{name}({})", parts.join(", "))
            }
            VariantPayload::Other(other) => format!("{name} {}", text(other)),
        },
        Node::GoStruct { .. }
        | Node::GoArray { .. }
        | Node::GoPtr { .. }
        | Node::GoUnloaded { .. } => delve::text(node, true),
        Node::Text { go: true, .. } | Node::Seq { go: true, .. } => delve::text(node, true),
        Node::Text { bytes, .. } => format!("{:?}", String::from_utf8_lossy(bytes)),
        Node::Seq { .. } => seq_text(node, true),
        Node::Char { code, size } => character(*code, *size),
        Node::Float { value, size: 4 } => float(*value, 9),
        Node::Float { value, .. } => float(*value, 17),
        Node::CString { ptr, text, cut } => {
            if *ptr == 0 {
                pointer(0)
            } else {
                format!("{} {}", pointer(*ptr), quote(text, *cut))
            }
        }
        other => match debugger(other) {
            Value::Int(v) => v.to_string(),
            Value::UInt(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::Str { text, .. } => format!("{text:?}"),
            Value::Text(t) | Value::Error(t) => t,
        },
    }
}

/// A pointer as lldb shows it: `0x` and 16 hex digits.
pub fn pointer(p: u64) -> String {
    format!("{p:#018x}")
}

/// A character as lldb-dap shows it: a C `char` as `'A'`, `'\n'`, `'\xc8'`; a Rust `char`
/// (4 bytes) as its value and summary, `U+0x00000078 U+0x00000078 U'x'`, as lldb-22 prints
/// them with the Rust formatters the daemon loads.
pub fn character(code: u32, size: u8) -> String {
    if size >= 2 {
        let c = char::from_u32(code).map_or_else(|| format!("\\U{code:08x}"), |c| c.to_string());
        return format!("U+{code:#010x} U+{code:#010x} U'{c}'");
    }
    format!("'{}'", escape_byte(code as u8, b'\''))
}

/// One byte of C text as lldb escapes it; `quote` (`'` or `"`) is escaped too.
fn escape_byte(b: u8, quote: u8) -> String {
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
pub fn quote(bytes: &[u8], cut: bool) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii() {
                out.push_str(&escape_byte(c as u8, b'"'));
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
const FLOAT_PADDING: i64 = 6;

/// A float as lldb prints it: `llvm::APFloat::toString` with the type's full precision
/// (`precision` significant digits: 17 for a double, 9 for a float), trailing zeros dropped,
/// scientific past 6 zeros of padding: `11`, `2.75`, `0.83333333333333337`, `2.5E+20`,
/// `1.0E+10`, `2.4999999999999999E-7`, `+Inf`, `NaN`, `-0`.
pub fn float(f: f64, precision: usize) -> String {
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
        exp > FLOAT_PADDING || n + exp > precision as i64
    } else {
        e10 < 0 && -e10 > FLOAT_PADDING
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::shape::Shape;
    use crate::render::decode_shape;

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
        assert_eq!(character(u32::from(b'A'), 1), "'A'");
        assert_eq!(character(10, 1), "'\\n'");
        assert_eq!(character(0xc8, 1), "'\\xc8'");
        assert_eq!(character(0, 1), "'\\0'");
        assert_eq!(character(0x4e2d, 4), "U+0x00004e2d U+0x00004e2d U'中'");
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
            assert_eq!(float(f, 17), want, "{f:e}");
        }
        assert_eq!(float(f64::from(2.5f32 / 3.0), 9), "0.833333313");
        assert_eq!(float(1e10, 9), "1.0E+10");
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
}
