//! Decoded value trees ([`Node`]) → text and JSON: [`lldb`] (as lldb-dap prints C, C++ and
//! Rust values), [`delve`] (as Delve prints Go values in a logpoint) and [`json`] (typed JSON
//! for programs, the CLI's `--format json`).
//!
//! Why here and nowhere else: the daemon parses the debugger's own text out of DAP `output`,
//! so that text must match lldb-dap / Delve byte for byte, while programs want plain typed
//! values; keeping every rendering in one place over one tree keeps the two from drifting and
//! keeps [`crate::decode`] free of text.

pub mod delve;
pub mod json;

pub mod lldb;

use crate::decode::Node;

/// A captured value as the debugger shows it: scalars and strings typed, composites as the
/// debugger's text. This is what DAP `output` events and `evaluate` answers carry.
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

/// A value asked for, as the debugger of its language shows it: lldb-dap for C, C++ and Rust,
/// Delve for Go (a Go value's nodes say it is one).
#[must_use]
pub fn debugger(node: &Node) -> Value {
    match node {
        Node::Int(v) => Value::Int(*v),
        Node::UInt(v) => Value::UInt(*v),
        Node::Float { value, .. } => Value::Float(*value),
        Node::Bool(v) => Value::Bool(*v),
        Node::Char { code, size } => Value::Text(lldb::character(*code, *size)),
        Node::Enumerator(name) => Value::Text(name.clone()),
        Node::Pointer(p) => Value::Text(lldb::pointer(*p)),
        Node::CString { .. } => Value::Text(lldb::text(node)),
        Node::CharArray { text, truncated } => Value::Str {
            text: text.clone(),
            truncated: *truncated,
        },
        Node::Text { len, bytes, .. } => Value::Str {
            text: String::from_utf8_lossy(bytes).into_owned(),
            truncated: (bytes.len() as u64) < *len,
        },
        Node::Stack(pcs) => Value::Text(
            pcs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Node::Seq { .. } => Value::Text(seq_text(node, true)),
        Node::Error(e) => Value::Error(e.clone()),
        Node::Unavailable { debugger, .. } => match debugger {
            crate::decode::DebuggerText::Error(t) => Value::Error(t.clone()),
            crate::decode::DebuggerText::Text(t) => Value::Text(t.clone()),
        },
        Node::Struct { .. }
        | Node::Array { .. }
        | Node::Variant { .. }
        | Node::UnknownVariant(_)
        | Node::Opaque(_)
        | Node::GoStruct { .. }
        | Node::GoArray { .. }
        | Node::GoPtr { .. }
        | Node::GoUnloaded { .. } => Value::Text(lldb::text(node)),
    }
}

/// The top-level value of `shape` read from `bytes` (and `rest`), as the debugger shows it:
/// what the renderers' tests compare.
#[cfg(test)]
pub(crate) fn decode_shape(shape: &crate::plan::shape::Shape, bytes: &[u8], rest: &[u8]) -> Value {
    debugger(&crate::decode::node(shape, bytes, rest, None))
}

/// A counted sequence's text: a Go slice as Delve prints it (`[]int len: 3, cap: 4, [1,2,3]`,
/// its type, length and capacity only when `typed`, not as an element), a Rust one as `{:?}`
/// does (`[1, 2, ...+3 more]`). Anything else renders as [`lldb::text`].
pub(crate) fn seq_text(node: &Node, typed: bool) -> String {
    let Node::Seq {
        type_name,
        go,
        ptr,
        len,
        cap,
        items,
        ..
    } = node
    else {
        return lldb::text(node);
    };
    let more = len - items.len() as u64;
    if *go {
        let head = if typed {
            format!("{type_name} len: {len}, cap: {cap}, ")
        } else {
            String::new()
        };
        if *ptr == 0 && *len == 0 {
            return format!("{head}nil");
        }
        let items: Vec<String> = items.iter().map(|n| delve::text(n, false)).collect();
        // Delve: `[1,2,...+3 more]`, and `[...+3 more]` when nothing was loaded.
        let tail = match (more, items.is_empty()) {
            (0, _) => String::new(),
            (_, true) => format!("...+{more} more"),
            (_, false) => format!(",...+{more} more"),
        };
        format!("{head}[{}{tail}]", items.join(","))
    } else {
        let items: Vec<String> = items.iter().map(lldb::text).collect();
        let tail = if more > 0 {
            format!(", ...+{more} more")
        } else {
            String::new()
        };
        format!("[{}{tail}]", items.join(", "))
    }
}

/// The CLI's `--format text`, and a non-Go string inside a Go value as Delve shows it.
impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::UInt(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            // Quoted, as JSON quotes it, with the visible cut mark.
            Value::Str { text, truncated } => {
                let cut = if *truncated { "...(truncated)" } else { "" };
                write!(f, "{}", serde_json::Value::String(format!("{text}{cut}")))
            }
            Value::Text(t) => write!(f, "{t}"),
            Value::Error(e) => write!(f, "<error: {e}>"),
        }
    }
}
