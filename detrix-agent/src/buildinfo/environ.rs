//! The target's environment, as `/proc/PID/environ` shows it: what the process was started
//! with (later `setenv` calls inside the process do not show there, as for any outside reader).

use std::collections::HashMap;

/// The variables the Go client reads for the commit, in its order.
pub const COMMIT_VARS: [&str; 4] = [
    "DETRIX_BUILD_COMMIT",
    "GIT_COMMIT",
    "CI_COMMIT_SHA",
    "GITHUB_SHA",
];

/// The variables the Go client reads for the tag, in its order.
pub const TAG_VARS: [&str; 4] = [
    "DETRIX_BUILD_TAG",
    "GIT_TAG",
    "CI_COMMIT_TAG",
    "GITHUB_REF_NAME",
];

/// Splits the NUL-separated `KEY=value` records; a record without `=` is skipped, a repeated
/// key keeps its first value (what `getenv` returns).
#[must_use]
pub fn parse(raw: &[u8]) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for rec in raw.split(|&b| b == 0) {
        let Some(eq) = rec.iter().position(|&b| b == b'=') else {
            continue;
        };
        let key = String::from_utf8_lossy(&rec[..eq]).into_owned();
        let value = String::from_utf8_lossy(&rec[eq + 1..]).into_owned();
        env.entry(key).or_insert(value);
    }
    env
}

/// Reads and parses `/proc/PID/environ` (root may read any process's).
///
/// # Errors
/// The process is gone or the file unreadable.
pub fn read(pid: u32) -> std::io::Result<HashMap<String, String>> {
    std::fs::read(format!("/proc/{pid}/environ")).map(|raw| parse(&raw))
}

/// The first of `vars` set to a non-empty value (after trimming), with its name.
#[must_use]
pub fn first(
    env: &HashMap<String, String>,
    vars: &[&'static str],
) -> Option<(&'static str, String)> {
    vars.iter().find_map(|&k| {
        let v = env.get(k)?.trim();
        // GitHub sets GITHUB_REF_NAME on branch builds too: a branch name is not a tag.
        if k == "GITHUB_REF_NAME"
            && env.get("GITHUB_REF_TYPE").map(String::as_str) == Some("branch")
        {
            return None;
        }
        (!v.is_empty()).then(|| (k, v.to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_the_first_value_and_skips_junk() {
        let env = parse(b"A=1\0B=x=y\0junk\0A=2\0EMPTY=\0");
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(env.get("EMPTY").map(String::as_str), Some(""));
        assert_eq!(env.len(), 3);
    }

    #[test]
    fn first_follows_the_order_and_skips_empty_values() {
        let env = parse(b"GITHUB_SHA=gh\0GIT_COMMIT= \0CI_COMMIT_SHA=gl\0");
        assert_eq!(
            first(&env, &COMMIT_VARS),
            Some(("CI_COMMIT_SHA", "gl".to_owned()))
        );
        let branch = parse(b"GITHUB_REF_NAME=main\0GITHUB_REF_TYPE=branch\0");
        assert_eq!(first(&branch, &TAG_VARS), None);
        let tag = parse(b"GITHUB_REF_NAME=v1.0.0\0GITHUB_REF_TYPE=tag\0");
        assert_eq!(
            first(&tag, &TAG_VARS),
            Some(("GITHUB_REF_NAME", "v1.0.0".to_owned()))
        );
    }
}
