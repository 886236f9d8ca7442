//! Shell-style globs for the `exe` and `cgroup` rule keys: `*` (any run of characters except
//! `/`), `**` (any run, `/` included), `?` (one character except `/`) and `[abc]` / `[a-z]` /
//! `[!abc]` (one character of a set). Everything else matches itself.
//!
//! Own code rather than a crate: paths are the only input, the grammar is five tokens, and a
//! backtracking matcher over tokens is short and easy to test exactly.

/// One compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**`
    DoubleStar,
    /// `[...]`: ranges (inclusive) and whether the set is negated.
    Class(Vec<(char, char)>, bool),
}

/// Why a glob does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("`[` at character {at} is never closed with `]`")]
    UnclosedClass { at: usize },
    #[error("the character class at character {at} is empty")]
    EmptyClass { at: usize },
}

impl Glob {
    /// Compiles `text`.
    ///
    /// # Errors
    /// An unclosed or empty `[...]`.
    pub fn new(text: &str) -> Result<Self, GlobError> {
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    tokens.push(Token::DoubleStar);
                    i += 2;
                }
                '*' => {
                    tokens.push(Token::Star);
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::One);
                    i += 1;
                }
                '[' => {
                    let start = i;
                    i += 1;
                    let negated = matches!(chars.get(i), Some('!' | '^'));
                    if negated {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&c) = chars.get(i) else {
                            return Err(GlobError::UnclosedClass { at: start + 1 });
                        };
                        if c == ']' && !first {
                            i += 1;
                            break;
                        }
                        if c == ']' && first && chars.get(i + 1).is_none() {
                            return Err(GlobError::EmptyClass { at: start + 1 });
                        }
                        first = false;
                        if chars.get(i + 1) == Some(&'-')
                            && chars.get(i + 2).is_some_and(|&e| e != ']')
                        {
                            ranges.push((c, chars[i + 2]));
                            i += 3;
                        } else {
                            ranges.push((c, c));
                            i += 1;
                        }
                    }
                    if ranges.is_empty() {
                        return Err(GlobError::EmptyClass { at: start + 1 });
                    }
                    tokens.push(Token::Class(ranges, negated));
                }
                c => {
                    tokens.push(Token::Literal(c));
                    i += 1;
                }
            }
        }
        Ok(Self {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The glob as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the whole of `s` matches.
    #[must_use]
    pub fn matches(&self, s: &str) -> bool {
        let chars: Vec<char> = s.chars().collect();
        match_at(&self.tokens, &chars)
    }
}

fn match_at(tokens: &[Token], s: &[char]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return s.is_empty();
    };
    match first {
        Token::Literal(c) => s.first() == Some(c) && match_at(rest, &s[1..]),
        Token::One => s.first().is_some_and(|&c| c != '/') && match_at(rest, &s[1..]),
        Token::Class(ranges, negated) => {
            s.first().is_some_and(|&c| {
                c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }) && match_at(rest, &s[1..])
        }
        Token::Star => {
            let run = s.iter().take_while(|&&c| c != '/').count();
            (0..=run).any(|n| match_at(rest, &s[n..]))
        }
        Token::DoubleStar => (0..=s.len()).any(|n| match_at(rest, &s[n..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(g: &str, s: &str) -> bool {
        Glob::new(g).expect("glob compiles").matches(s)
    }

    #[test]
    fn star_stays_within_one_path_component() {
        assert!(m("/usr/bin/*", "/usr/bin/orders"));
        assert!(!m("/usr/bin/*", "/usr/bin/sub/orders"));
        assert!(m("/usr/*/orders", "/usr/bin/orders"));
        assert!(m("*", ""));
        assert!(m("/srv/orders-*", "/srv/orders-"));
        assert!(!m("/srv/orders-*", "/srv/orders"));
    }

    #[test]
    fn double_star_crosses_components() {
        assert!(m("**/orders", "/a/b/c/orders"));
        assert!(m("/opt/**", "/opt/x/y"));
        assert!(!m("/opt/**", "/optx"));
        assert!(m(
            "/sys/fs/cgroup/**/docker-*.scope",
            "/sys/fs/cgroup/system.slice/docker-ab.scope"
        ));
    }

    #[test]
    fn question_mark_and_classes() {
        assert!(m("/bin/o?ders", "/bin/orders"));
        assert!(!m("/bin/o?ders", "/bin/o/ders"));
        assert!(m("/bin/v[0-9]", "/bin/v7"));
        assert!(!m("/bin/v[0-9]", "/bin/vx"));
        assert!(m("/bin/v[!0-9]", "/bin/vx"));
        assert!(!m("/bin/v[!0-9]", "/bin/v1"));
        assert!(m("/bin/[]]", "/bin/]"));
        assert!(m("/bin/[a-]", "/bin/-"));
    }

    #[test]
    fn literals_match_only_themselves() {
        assert!(m("/usr/bin/orders", "/usr/bin/orders"));
        assert!(!m("/usr/bin/orders", "/usr/bin/orders2"));
        assert!(!m("/usr/bin/orders", "/usr/bin/order"));
    }

    #[test]
    fn bad_globs_say_where() {
        assert_eq!(
            Glob::new("/bin/[ab"),
            Err(GlobError::UnclosedClass { at: 6 })
        );
        assert_eq!(
            Glob::new("/bin/[ab").unwrap_err().to_string(),
            "`[` at character 6 is never closed with `]`"
        );
        assert_eq!(Glob::new("x[]"), Err(GlobError::EmptyClass { at: 2 }));
        assert_eq!(Glob::new("x[!"), Err(GlobError::UnclosedClass { at: 2 }));
    }
}
