//! Is the agent's typed JSON value the value lldb shows? Normalized fairly, both ways:
//!
//! * numbers, bools, chars and enum names compare with lldb's value text (`7.5`, `'c'`,
//!   `true`, `0x00007fff…`), floats exactly (lldb prints doubles round-trip);
//! * a C string or char array with lldb's summary (`"alice"`); a pointer as its address;
//! * a struct member by member (lldb's children by name), an array element by element;
//! * a string lldb can only show as its parts (a Go `string` or Rust `&str`/`String` without a
//!   language plugin: a pointer plus `len`) by that length and the bytes lldb's pointer summary
//!   starts with; a slice or `Vec` the same way, by its length.
//!
//! Anything else (an agent `null` for a Rust `None`, a Rust enum lldb shows as its raw parts)
//! is [`Verdict::Unchecked`]: counted apart, never called equal.
//!
//! A struct the compiler split into pieces, some without a location: the agent shows the
//! members it has and `{"error": "optimized out …"}` for the others, where lldb shows zeros.
//! Such a value is [`Verdict::Partial`] when every member the agent has equals lldb's and lldb
//! shows only zeros for the rest: it counts as a value (the agent shows every byte the debug
//! info has), in a column of its own; a zero lldb made up is not a value to match.

use detrix_e2e::Value;

/// The outcome of comparing one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Equal,
    /// Both have a value and they differ: why.
    Differs(String),
    /// Both have a value, but in shapes this harness cannot match up.
    Unchecked(String),
    /// Every member the agent has equals lldb's; the others (named) the agent says are
    /// optimized out, where lldb shows zeros.
    Partial(String),
}

/// The start of the agent's error for a member without a location (`decode::OPTIMIZED_OUT`).
const OPTIMIZED_OUT: &str = "optimized out at this point";

/// Whether lldb's node is all zeros (`0`, `NULL`, `0x0000…`, `'\0'`, `false`, or members
/// that all are): what lldb shows for bytes without a location.
fn lldb_zero(node: &Value) -> bool {
    if let Some(v) = s(node, "v") {
        return v == "NULL" || parse_int(v) == Some(0);
    }
    children(node).is_some_and(|cs| cs.iter().all(|(_, c)| lldb_zero(c)))
}

/// Whether the agent's value is a value (not `{"error": …}`).
pub fn agent_has_value(v: &Value) -> bool {
    !(v.as_object()
        .is_some_and(|m| m.len() == 1 && m.get("error").is_some_and(Value::is_string)))
}

/// Whether lldb showed a value (no error at the top).
pub fn lldb_has_value(node: &Value) -> bool {
    node.get("e").is_none()
}

fn s<'a>(node: &'a Value, key: &str) -> Option<&'a str> {
    node.get(key).and_then(Value::as_str)
}

fn children(node: &Value) -> Option<Vec<(&str, &Value)>> {
    node.get("c").and_then(Value::as_array).map(|cs| {
        cs.iter()
            .filter_map(|c| Some((c.get(0)?.as_str()?, c.get(1)?)))
            .collect()
    })
}

/// lldb's text of a C string or char literal without its quotes, escapes undone.
fn unquote(text: &str, quote: char) -> Option<String> {
    let inner = text.strip_prefix(quote)?.strip_suffix(quote)?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = chars.next()?;
        let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Option<char> {
            let digits: String = chars.take(n).collect();
            char::from_u32(u32::from_str_radix(&digits, 16).ok()?)
        };
        out.push(match e {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            '0' => '\0',
            'a' => '\x07',
            'b' => '\x08',
            'e' => '\x1b',
            'f' => '\x0c',
            'v' => '\x0b',
            'x' => hex(&mut chars, 2)?,
            'u' => hex(&mut chars, 4)?,
            'U' => hex(&mut chars, 8)?,
            other => other,
        });
    }
    Some(out)
}

fn parse_int(text: &str) -> Option<i128> {
    if let Some(h) = text.strip_prefix("0x") {
        return u64::from_str_radix(h, 16).ok().map(i128::from);
    }
    match text {
        "true" => return Some(1),
        "false" => return Some(0),
        _ => {}
    }
    // lldb shows a Rust `char` as `U+0x00000078`.
    if let Some(h) = text.strip_prefix("U+0x") {
        return u32::from_str_radix(h, 16).ok().map(i128::from);
    }
    if let Some(c) = unquote(text, '\'') {
        let mut cs = c.chars();
        if let (Some(ch), None) = (cs.next(), cs.next()) {
            return Some(i128::from(u32::from(ch)));
        }
    }
    text.parse().ok()
}

/// The `len`/`length` integer and the pointer summary inside an lldb node, for strings and
/// slices lldb shows as their parts.
fn len_and_bytes(node: &Value) -> Option<(i128, Option<String>)> {
    let mut len = None;
    let mut text = None;
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        for (name, c) in children(n).unwrap_or_default() {
            if matches!(name, "len" | "length") && len.is_none() {
                len = s(c, "v").and_then(parse_int);
            } else if c.get("p").is_some() && text.is_none() {
                text = s(c, "s").and_then(|t| unquote(t, '"'));
            }
            stack.push(c);
        }
    }
    Some((len?, text))
}

/// Compares lldb's node with the agent's value (both known to be values).
pub fn compare(l: &Value, a: &Value) -> Verdict {
    let v = s(l, "v");
    let summary = s(l, "s");
    let text = s(l, "text").unwrap_or_default();
    let differs = |why: String| Verdict::Differs(why);
    match a {
        Value::Bool(b) => match v.and_then(parse_int) {
            Some(n) if (n != 0) == *b => Verdict::Equal,
            Some(_) => differs(format!("agent {b}, lldb {}", v.unwrap_or_default())),
            None => Verdict::Unchecked(format!("agent {b}, lldb {text}")),
        },
        Value::Number(n) => {
            let Some(v) = v else {
                return Verdict::Unchecked(format!("agent {n}, lldb {text}"));
            };
            if n.is_f64() {
                let (Some(got), Ok(want)) = (n.as_f64(), v.parse::<f64>()) else {
                    return differs(format!("agent {n}, lldb {v}"));
                };
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "an f32 value compares as lldb printed it, in f32"
                )]
                let same = got == want
                    || (s(l, "t").is_some_and(|t| t == "float" || t == "f32")
                        && got as f32 == want as f32);
                if same {
                    Verdict::Equal
                } else {
                    differs(format!("agent {n}, lldb {v}"))
                }
            } else {
                let got = n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from));
                match (got, parse_int(v)) {
                    (Some(g), Some(w)) if g == w => Verdict::Equal,
                    (_, Some(_)) => differs(format!("agent {n}, lldb {v}")),
                    (_, None) => Verdict::Unchecked(format!("agent {n}, lldb {v}")),
                }
            }
        }
        Value::String(got) => {
            // A pointer the agent shows as its address (a `char *` member, whose string it does
            // not follow) against lldb's address, whatever summary lldb adds.
            if let (Some(g), Some(v)) = (got.strip_prefix("0x"), v.filter(|v| v.starts_with("0x")))
            {
                return match (u64::from_str_radix(g, 16), parse_int(v)) {
                    (Ok(g), Some(w)) if i128::from(g) == w => Verdict::Equal,
                    _ => differs(format!("agent {got}, lldb {v}")),
                };
            }
            if let Some(sum) = summary.and_then(|t| unquote(t, '"')) {
                return if *got == sum {
                    Verdict::Equal
                } else {
                    differs(format!("agent {got:?}, lldb {sum:?}"))
                };
            }
            if let Some(v) = v {
                let rust_char = v
                    .strip_prefix("U+0x")
                    .and_then(|h| char::from_u32(u32::from_str_radix(h, 16).ok()?))
                    .map(String::from);
                if let Some(c) = rust_char.or_else(|| unquote(v, '\'')) {
                    return if *got == c {
                        Verdict::Equal
                    } else {
                        differs(format!("agent {got:?}, lldb {v}"))
                    };
                }
                return if got == v {
                    Verdict::Equal
                } else {
                    differs(format!("agent {got:?}, lldb {v}"))
                };
            }
            match len_and_bytes(l) {
                Some((len, Some(bytes)))
                    if i128::try_from(got.len()).is_ok_and(|g| g == len)
                        && bytes.starts_with(got.as_str()) =>
                {
                    Verdict::Equal
                }
                Some((len, bytes)) => differs(format!(
                    "agent {got:?}, lldb len {len} bytes {:?}",
                    bytes.unwrap_or_default()
                )),
                None => Verdict::Unchecked(format!("agent {got:?}, lldb {text}")),
            }
        }
        Value::Array(xs) => {
            let Some(cs) = children(l) else {
                return Verdict::Unchecked(format!("agent {a}, lldb {text}"));
            };
            if cs.iter().all(|(n, _)| n.starts_with('[')) && !cs.is_empty() {
                let mut partial = None;
                for (i, (x, (_, c))) in xs.iter().zip(&cs).enumerate() {
                    match compare(c, x) {
                        Verdict::Equal => {}
                        Verdict::Partial(why) => partial = Some(format!("[{i}]: {why}")),
                        Verdict::Differs(why) => return differs(format!("[{i}]: {why}")),
                        u @ Verdict::Unchecked(_) => return u,
                    }
                }
                return partial.map_or(Verdict::Equal, Verdict::Partial);
            }
            match len_and_bytes(l) {
                Some((len, _)) if i128::try_from(xs.len()).is_ok_and(|g| g == len) => {
                    Verdict::Equal
                }
                Some((len, _)) => differs(format!("agent {} elements, lldb len {len}", xs.len())),
                None => Verdict::Unchecked(format!("agent {a}, lldb {text}")),
            }
        }
        Value::Object(m) => {
            let Some(cs) = children(l) else {
                return Verdict::Unchecked(format!("agent {a}, lldb {text}"));
            };
            let mut unchecked = None;
            let mut out = Vec::new();
            for (k, av) in m {
                let Some((_, c)) = cs
                    .iter()
                    .find(|(n, _)| *n == k || n.strip_prefix("__") == Some(k.as_str()))
                else {
                    unchecked = Some(format!("no member `{k}` in lldb's {text}"));
                    continue;
                };
                let optimized_out = av
                    .get("error")
                    .and_then(Value::as_str)
                    .is_some_and(|e| e.starts_with(OPTIMIZED_OUT));
                if optimized_out && lldb_has_value(c) {
                    if lldb_zero(c) {
                        out.push(format!("`{k}` (lldb {})", s(c, "v").unwrap_or("zeros")));
                    } else {
                        unchecked = Some(format!(
                            "member `{k}`: agent optimized out, lldb {}",
                            s(c, "v").unwrap_or(text)
                        ));
                    }
                    continue;
                }
                if !agent_has_value(av) || !lldb_has_value(c) {
                    if agent_has_value(av) != lldb_has_value(c) {
                        unchecked = Some(format!("member `{k}`: one side has no value"));
                    }
                    continue;
                }
                match compare(c, av) {
                    Verdict::Equal => {}
                    Verdict::Partial(why) => out.push(format!(".{k}: {why}")),
                    Verdict::Differs(why) => return differs(format!(".{k}: {why}")),
                    Verdict::Unchecked(why) => unchecked = Some(format!(".{k}: {why}")),
                }
            }
            match (unchecked, out.is_empty()) {
                (Some(why), _) => Verdict::Unchecked(why),
                (None, true) => Verdict::Equal,
                (None, false) => Verdict::Partial(format!(
                    "optimized out where lldb shows zeros: {}",
                    out.join(", ")
                )),
            }
        }
        Value::Null => match v.and_then(parse_int) {
            Some(0) => Verdict::Equal,
            Some(_) => differs(format!("agent null, lldb {}", v.unwrap_or_default())),
            None => Verdict::Unchecked(format!("agent null, lldb {text}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_strings_and_structs_compare_as_lldb_prints_them() {
        let l = json!({"t": "double", "v": "7.5", "text": "(double) cost = 7.5"});
        assert_eq!(compare(&l, &json!(7.5)), Verdict::Equal);
        assert!(matches!(compare(&l, &json!(7.25)), Verdict::Differs(_)));
        let c = json!({"t": "char", "v": "'c'"});
        assert_eq!(compare(&c, &json!("c")), Verdict::Equal);
        let rc = json!({"t": "char", "v": "U+0x00000078"});
        assert_eq!(compare(&rc, &json!("x")), Verdict::Equal);
        assert!(matches!(compare(&rc, &json!("y")), Verdict::Differs(_)));
        let p = json!({"t": "char *", "v": "0x0000555555556004", "s": "\"alice\"", "p": true});
        assert_eq!(compare(&p, &json!("alice")), Verdict::Equal);
        let o = json!({"t": "order *", "v": "0x00007fffffffec60", "p": true});
        assert_eq!(compare(&o, &json!("0x00007fffffffec60")), Verdict::Equal);
        let st = json!({"t": "&str", "c": [["data_ptr", {"t": "u8 *", "v": "0x1", "s": "\"qtyprocess\"", "p": true}], ["length", {"t": "unsigned long", "v": "3"}]]});
        assert_eq!(compare(&st, &json!("qty")), Verdict::Equal);
        assert!(matches!(compare(&st, &json!("qtz")), Verdict::Differs(_)));
        let cx = json!({"t": "Context", "c": [["waker", {"t": "&Waker", "v": "NULL"}], ["n", {"t": "u64", "v": "4"}]]});
        let oo = json!({"error": "optimized out at this point (the compiler kept no location for these bytes of the value)"});
        assert_eq!(
            compare(&cx, &json!({"waker": oo.clone(), "n": 4})),
            Verdict::Partial(
                "optimized out where lldb shows zeros: `waker` (lldb NULL)".to_owned()
            )
        );
        assert!(matches!(
            compare(&cx, &json!({"waker": oo.clone(), "n": 5})),
            Verdict::Differs(_)
        ));
        let live = json!({"t": "Context", "c": [["waker", {"t": "&Waker", "v": "0x10"}]]});
        assert!(matches!(
            compare(&live, &json!({"waker": oo})),
            Verdict::Unchecked(_)
        ));
        let s2 = json!({"t": "pair", "c": [["a", {"t": "long", "v": "3"}], ["b", {"t": "long", "v": "-4"}]]});
        assert_eq!(compare(&s2, &json!({"a": 3, "b": -4})), Verdict::Equal);
        assert!(matches!(
            compare(&s2, &json!({"a": 3, "b": 4})),
            Verdict::Differs(_)
        ));
    }
}
