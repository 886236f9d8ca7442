//! The daemon's logMessage templates (`DETRICS:name={expr}`…): parse, then render an `output`
//! line with values of every kind; the parse must never panic, the output must be one line.
#![no_main]

use detrix_agent::dap::template::{self, Prefix};
use detrix_agent::render::Value;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = template::json_string(text);
    let Ok(t) = template::parse(text) else {
        return;
    };
    // Values carry a piece of the input (its quotes, newlines and escapes), not all of it: the
    // whole input once per expression made each run quadratic in the length (566 execs/s).
    let piece: String = text.chars().take(48).collect();
    let values: Vec<Value> = (0..t.exprs.len())
        .map(|i| match i % 4 {
            0 => Value::Int(i64::MIN),
            1 => Value::Str {
                text: piece.clone(),
                truncated: true,
            },
            2 => Value::Float(f64::INFINITY),
            _ => Value::Error(piece.clone()),
        })
        .collect();
    for prefix in [Prefix::Go, Prefix::Thread] {
        let out = template::output_text(prefix, 1, &t.name, &values);
        assert!(
            out.ends_with('\n'),
            "output text does not end with a newline: {out:?}"
        );
    }
});
