//! Expressions (`evaluate`, template parts) and conditions (`--when`, breakpoint conditions):
//! parsing never panics or overflows the stack, and what parses prints back to text that parses
//! to the same tree.
#![no_main]

use detrix_agent::expr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = expr::parse(text) {
        let shown = e.to_string();
        let again = expr::parse(&shown)
            .unwrap_or_else(|err| panic!("{text:?} parsed, its text {shown:?} did not: {err}"));
        assert_eq!(again, e, "{text:?} → {shown:?} parses to another tree");
    }
    let _ = expr::parse_condition(text);
});
