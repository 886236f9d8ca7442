//! The daemon's logpoint template and the `output` text it parses back (contract.md §7, §8).
//!
//! Template: `DETRICS:<name>={e1}` + (`\x1F{ei}`)…; names never contain `=`, `{`, `|` or U+001F,
//! expressions are verbatim. Output: `<prefix>DETRICS:<name>=<v1>[\x1F<v2>…]\n`.
//!
//! Values are written as JSON so the daemon types them (numbers → `numericValue`, strings →
//! `stringValue`, `true`/`false` → `boolValue`). Two characters need care beyond JSON: the
//! daemon cuts the whole line at the first `|` (Appendix A #8), and it splits values on
//! U+001F, so both are written as `\u` escapes inside strings — still valid JSON, so the stored
//! `stringValue` is the original text.

use crate::plan::Value;

/// U+001F, the separator between expression blocks and between values.
pub const UNIT_SEPARATOR: char = '\u{1f}';

/// A parsed logpoint template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub exprs: Vec<String>,
}

/// Why a `logMessage` is not a Detrix template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("logMessage `{0}` does not start with `DETRICS:`; only Detrix metric templates are supported")]
    NotDetrics(String),
    #[error(
        "logMessage `{0}` has no `=` after the metric name; expected `DETRICS:<name>={{expr}}`"
    )]
    NoEquals(String),
    #[error("logMessage `{0}` has an empty metric name")]
    EmptyName(String),
    #[error("logMessage `{msg}` has an empty expression in block {index}")]
    EmptyExpr { msg: String, index: usize },
}

/// Parses `DETRICS:<name>={e1}\x1F{e2}…`: strip the prefix, split once at `=`, split the rest
/// on U+001F, strip one outer `{…}` per part.
///
/// # Errors
/// Anything that is not that shape.
pub fn parse(log_message: &str) -> Result<Template, TemplateError> {
    let rest = log_message
        .strip_prefix("DETRICS:")
        .ok_or_else(|| TemplateError::NotDetrics(log_message.to_owned()))?;
    let (name, blocks) = rest
        .split_once('=')
        .ok_or_else(|| TemplateError::NoEquals(log_message.to_owned()))?;
    if name.is_empty() {
        return Err(TemplateError::EmptyName(log_message.to_owned()));
    }
    let mut exprs = Vec::new();
    for (index, block) in blocks.split(UNIT_SEPARATOR).enumerate() {
        let e = block
            .strip_prefix('{')
            .and_then(|b| b.strip_suffix('}'))
            .unwrap_or(block)
            .trim();
        if e.is_empty() {
            return Err(TemplateError::EmptyExpr {
                msg: log_message.to_owned(),
                index,
            });
        }
        exprs.push(e.to_owned());
    }
    Ok(Template {
        name: name.to_owned(),
        exprs,
    })
}

/// A string as a JSON string literal the daemon keeps whole: JSON escaping plus `|` → `\u007c`
/// (U+001F is a control character, which JSON already escapes as `\u001f`).
#[must_use]
pub fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned())
        .to_string()
        .replace('|', "\\u007c")
}

/// One captured value in the form the daemon types right: integers in decimal, floats in their
/// shortest round-trip form, booleans bare, everything else a JSON string (a non-finite float,
/// which JSON has no number for, included).
#[must_use]
pub fn render_value(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        // Rust's `Display` for f64 is the shortest text that parses back to the same value.
        Value::Float(f) if f.is_finite() => f.to_string(),
        Value::Float(f) => json_string(&f.to_string()),
        Value::Bool(b) => b.to_string(),
        Value::Str { text, truncated } => {
            if *truncated {
                json_string(&format!("{text}...(truncated)"))
            } else {
                json_string(text)
            }
        }
        Value::Text(t) => json_string(t),
        Value::Error(e) => json_string(&format!("<error: {e}>")),
    }
}

/// The thread prefix the daemon strips before `DETRICS:` (contract.md §8 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// `> [Go N]: ` with the goroutine id (connections registered as `go`).
    Go,
    /// `[thread N] ` with the kernel thread id (connections registered as `rust`).
    Thread,
}

impl Prefix {
    /// The prefix for a daemon language name (`go` or anything else).
    #[must_use]
    pub fn for_language(daemon_name: &str) -> Self {
        if daemon_name == "go" {
            Prefix::Go
        } else {
            Prefix::Thread
        }
    }
}

/// The full `output` text of one hit, trailing newline included.
#[must_use]
pub fn output_text(prefix: Prefix, id: u64, name: &str, values: &[Value]) -> String {
    let rendered: Vec<String> = values.iter().map(render_value).collect();
    output_text_rendered(prefix, id, name, &rendered)
}

/// [`output_text`] for values already rendered (e.g. a debugger's JSON result text).
#[must_use]
pub fn output_text_rendered(prefix: Prefix, id: u64, name: &str, rendered: &[String]) -> String {
    let body = rendered.join(&UNIT_SEPARATOR.to_string());
    match prefix {
        Prefix::Go => format!("> [Go {id}]: DETRICS:{name}={body}\n"),
        Prefix::Thread => format!("[thread {id}] DETRICS:{name}={body}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_daemons_templates() {
        // Both verbatim from the recorded daemon (shared/transcripts/go-delve.jsonl, rust-stub.jsonl).
        assert_eq!(
            parse("DETRICS:order_id={id}"),
            Ok(Template {
                name: "order_id".into(),
                exprs: vec!["id".into()]
            })
        );
        assert_eq!(
            parse("DETRICS:order_details={name}\u{1f}{price}\u{1f}{o.Qty}"),
            Ok(Template {
                name: "order_details".into(),
                exprs: vec!["name".into(), "price".into(), "o.Qty".into()]
            })
        );
        // Only one outer brace pair is stripped; inner braces and `=` stay part of the expression.
        assert_eq!(
            parse("DETRICS:m={a == {b}}"),
            Ok(Template {
                name: "m".into(),
                exprs: vec!["a == {b}".into()]
            })
        );
        assert_eq!(
            parse("x = {y}"),
            Err(TemplateError::NotDetrics("x = {y}".into()))
        );
        assert_eq!(
            parse("DETRICS:m={a}\u{1f}{}"),
            Err(TemplateError::EmptyExpr {
                msg: "DETRICS:m={a}\u{1f}{}".into(),
                index: 1
            })
        );
    }

    #[test]
    fn renders_values_the_daemon_types_right() {
        assert_eq!(render_value(&Value::Int(-42)), "-42");
        assert_eq!(render_value(&Value::UInt(u64::MAX)), "18446744073709551615");
        assert_eq!(render_value(&Value::Float(2.75)), "2.75");
        assert_eq!(
            render_value(&Value::Float(0.1 + 0.2)),
            "0.30000000000000004"
        );
        assert_eq!(render_value(&Value::Float(f64::NAN)), "\"NaN\"");
        assert_eq!(render_value(&Value::Bool(false)), "false");
        assert_eq!(
            render_value(&Value::Str {
                text: "bob|7\u{1f}\"q\"\\".into(),
                truncated: false
            }),
            r#""bob\u007c7\u001f\"q\"\\""#
        );
        assert_eq!(
            render_value(&Value::Str {
                text: "car".into(),
                truncated: true
            }),
            "\"car...(truncated)\""
        );
        assert_eq!(
            render_value(&Value::Text("0x7ffd1000".into())),
            "\"0x7ffd1000\""
        );
        assert_eq!(
            render_value(&Value::Error("optimized out".into())),
            "\"<error: optimized out>\""
        );
        // Every rendered string parses back as JSON to the original text.
        let back: String = serde_json::from_str(&render_value(&Value::Str {
            text: "a|b\u{1f}c".into(),
            truncated: false,
        }))
        .unwrap();
        assert_eq!(back, "a|b\u{1f}c");
    }

    #[test]
    fn output_lines_match_the_recorded_forms() {
        let v = [
            Value::Str {
                text: "alice".into(),
                truncated: false,
            },
            Value::Float(42.5),
            Value::Int(3),
        ];
        assert_eq!(
            output_text(Prefix::Thread, 13171, "order_details", &v),
            "[thread 13171] DETRICS:order_details=\"alice\"\u{1f}42.5\u{1f}3\n"
        );
        assert_eq!(
            output_text(Prefix::Go, 1, "order_id", &[Value::Int(23)]),
            "> [Go 1]: DETRICS:order_id=23\n"
        );
    }
}
