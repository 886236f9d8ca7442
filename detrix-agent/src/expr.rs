//! Expressions a user or the daemon asks for: `x`, `a.b`, `p->f`, `*p`, `a[3]`, `(…)` and
//! chains of these. Parsing only; meaning comes from the resolver in [`crate::plan`].
//!
//! Calls (`f(x)`) parse into a distinct error: eBPF cannot call into the target, and saying so
//! precisely is better than "syntax error".

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Var(String),
    /// `e.field`
    Field(Box<Expr>, String),
    /// `e->field`
    Arrow(Box<Expr>, String),
    /// `e[index]`
    Index(Box<Expr>, i64),
    /// `*e`
    Deref(Box<Expr>),
}

/// Why an expression did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error("invalid expression `{expr}`: {what} at column {column}")]
    Syntax { expr: String, what: String, column: usize },
    #[error(
        "expression `{expr}` calls a function (`{function}`); eBPF capture reads memory and cannot \
         call into the target; capture the arguments instead"
    )]
    FunctionCall { expr: String, function: String },
}

/// Parses one expression.
///
/// # Errors
/// [`ExprError`] naming the column and what was expected.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let mut p = Parser { src: text, chars: text.char_indices().collect(), pos: 0 };
    let e = p.unary()?;
    p.skip_ws();
    if p.pos < p.chars.len() {
        return Err(p.err("unexpected text after the expression"));
    }
    Ok(e)
}

struct Parser<'a> {
    src: &'a str,
    chars: Vec<(usize, char)>,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> ExprError {
        ExprError::Syntax { expr: self.src.to_owned(), what: what.to_owned(), column: self.pos + 1 }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|c| c.1)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        self.skip_ws();
        let n = s.chars().count();
        let got: String = self.chars.iter().skip(self.pos).take(n).map(|c| c.1).collect();
        if got == s {
            self.pos += n;
            true
        } else {
            false
        }
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.eat("*") {
            return Ok(Expr::Deref(Box::new(self.unary()?)));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.primary()?;
        loop {
            if self.eat("->") {
                e = Expr::Arrow(Box::new(e), self.ident("a field name after `->`")?);
            } else if self.eat(".") {
                e = Expr::Field(Box::new(e), self.ident("a field name after `.`")?);
            } else if self.eat("[") {
                let i = self.integer()?;
                if !self.eat("]") {
                    return Err(self.err("expected `]`"));
                }
                e = Expr::Index(Box::new(e), i);
            } else if self.eat("(") {
                let function = match &e {
                    Expr::Var(n) => n.clone(),
                    _ => self.src.to_owned(),
                };
                return Err(ExprError::FunctionCall { expr: self.src.to_owned(), function });
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        if self.eat("(") {
            let e = self.unary()?;
            if !self.eat(")") {
                return Err(self.err("expected `)`"));
            }
            return Ok(e);
        }
        Ok(Expr::Var(self.ident("a variable name")?))
    }

    fn ident(&mut self, what: &str) -> Result<String, ExprError> {
        self.skip_ws();
        let start = self.pos;
        while let Some(c) = self.peek() {
            let ok = c == '_' || c.is_ascii_alphabetic() || (self.pos > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err(&format!("expected {what}")));
        }
        Ok(self.chars[start..self.pos].iter().map(|c| c.1).collect())
    }

    fn integer(&mut self) -> Result<i64, ExprError> {
        self.skip_ws();
        let start = self.pos;
        if self.peek() == Some('-') {
            self.pos += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let s: String = self.chars[start..self.pos].iter().map(|c| c.1).collect();
        s.parse().map_err(|_| {
            self.err("expected an integer index")
        })
    }
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Var(n) => write!(f, "{n}"),
            Expr::Field(e, n) => write!(f, "{e}.{n}"),
            Expr::Arrow(e, n) => write!(f, "{e}->{n}"),
            Expr::Index(e, i) => write!(f, "{e}[{i}]"),
            Expr::Deref(e) => write!(f, "(*{e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: &str) -> Box<Expr> {
        Box::new(Expr::Var(n.into()))
    }

    #[test]
    fn parses_chains() {
        assert_eq!(parse("x").unwrap(), Expr::Var("x".into()));
        assert_eq!(parse("o->qty").unwrap(), Expr::Arrow(v("o"), "qty".into()));
        assert_eq!(parse("s.a.b").unwrap(), Expr::Field(Box::new(Expr::Field(v("s"), "a".into())), "b".into()));
        assert_eq!(parse("*p").unwrap(), Expr::Deref(v("p")));
        assert_eq!(parse("*p->next").unwrap(), Expr::Deref(Box::new(Expr::Arrow(v("p"), "next".into()))));
        assert_eq!(parse("(*p).x").unwrap(), Expr::Field(Box::new(Expr::Deref(v("p"))), "x".into()));
        assert_eq!(parse(" a [ 3 ] ").unwrap(), Expr::Index(v("a"), 3));
        assert_eq!(parse("self.x").unwrap(), Expr::Field(v("self"), "x".into()));
    }

    #[test]
    fn rejects_with_column() {
        let e = parse("o->").unwrap_err();
        assert_eq!(e.to_string(), "invalid expression `o->`: expected a field name after `->` at column 4");
        assert!(matches!(parse("a b"), Err(ExprError::Syntax { column: 3, .. })));
        assert!(matches!(parse("a[x]"), Err(ExprError::Syntax { .. })));
        assert!(matches!(parse("9x"), Err(ExprError::Syntax { .. })));
    }

    #[test]
    fn names_function_calls() {
        let e = parse("strlen(name)").unwrap_err();
        assert_eq!(e, ExprError::FunctionCall { expr: "strlen(name)".into(), function: "strlen".into() });
    }
}
