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
    Syntax {
        expr: String,
        what: String,
        column: usize,
    },
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
    let mut p = Parser {
        src: text,
        chars: text.char_indices().collect(),
        pos: 0,
        steps: 0,
    };
    let e = p.unary()?;
    p.skip_ws();
    if p.pos < p.chars.len() {
        return Err(p.err("unexpected text after the expression"));
    }
    Ok(e)
}

/// Most operators (`*`, `(`, `.`, `->`, `[`) one expression may hold. Parsing, the plan and
/// dropping the tree all recurse once per operator, so a hostile expression nested 100 000
/// deep must stop here, not overflow the stack; real expressions use a handful.
pub const MAX_OPERATORS: usize = 128;

struct Parser<'a> {
    src: &'a str,
    chars: Vec<(usize, char)>,
    pos: usize,
    steps: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> ExprError {
        ExprError::Syntax {
            expr: self.src.to_owned(),
            what: what.to_owned(),
            column: self.pos + 1,
        }
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
        let got: String = self
            .chars
            .iter()
            .skip(self.pos)
            .take(n)
            .map(|c| c.1)
            .collect();
        if got == s {
            self.pos += n;
            true
        } else {
            false
        }
    }

    /// Counts one operator; refuses past [`MAX_OPERATORS`].
    fn step(&mut self) -> Result<(), ExprError> {
        self.steps += 1;
        if self.steps > MAX_OPERATORS {
            return Err(self.err(&format!(
                "more than {MAX_OPERATORS} operators (`*`, `(`, `.`, `->`, `[`); the limit keeps evaluation bounded"
            )));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.eat("*") {
            self.step()?;
            return Ok(Expr::Deref(Box::new(self.unary()?)));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.primary()?;
        loop {
            if self.eat("->") {
                self.step()?;
                e = Expr::Arrow(Box::new(e), self.ident("a field name after `->`")?);
            } else if self.eat(".") {
                self.step()?;
                e = Expr::Field(Box::new(e), self.ident("a field name after `.`")?);
            } else if self.eat("[") {
                self.step()?;
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
                return Err(ExprError::FunctionCall {
                    expr: self.src.to_owned(),
                    function,
                });
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        if self.eat("(") {
            self.step()?;
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
            let ok =
                c == '_' || c.is_ascii_alphabetic() || (self.pos > start && c.is_ascii_digit());
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
        s.parse().map_err(|_| self.err("expected an integer index"))
    }
}

/// A comparison operator of a `--when` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `^=`: the string starts with the literal.
    Prefix,
}

/// The constant side of a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Int(i128),
    Float(f64),
    Str(String),
    Bool(bool),
}

/// A parsed `--when` condition: `EXPR OP LITERAL`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The whole condition as written.
    pub text: String,
    /// The left side as written (also the key of the captured value it reads).
    pub expr_text: String,
    pub expr: Expr,
    pub op: CmpOp,
    pub literal: Literal,
}

/// Parses `EXPR OP LITERAL` with OP one of `== != < <= > >= ^=` (`^=`: string prefix) and
/// LITERAL an integer (`42`, `-1`, `0x10`), a float (`2.5`), a quoted string or char
/// (`"bob"`, `'A'`), or `true`/`false`.
///
/// # Errors
/// [`ExprError::Syntax`] naming what is missing.
pub fn parse_condition(text: &str) -> Result<Condition, ExprError> {
    let err = |what: &str, column: usize| ExprError::Syntax {
        expr: text.to_owned(),
        what: what.to_owned(),
        column,
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut found = None;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with('"') || rest.starts_with('\'') {
            break; // the literal starts: no operator before it
        }
        if rest.starts_with("->") {
            i += 2;
            continue;
        }
        let op = [
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("^=", CmpOp::Prefix),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
        ]
        .into_iter()
        .find(|(t, _)| rest.starts_with(t));
        if let Some((t, op)) = op {
            found = Some((i, t.len(), op));
            break;
        }
        // By whole characters: slicing inside a multi-byte one would panic.
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    let Some((at, len, op)) = found else {
        return Err(err(
            "expected a comparison (== != < <= > >= ^=) followed by a constant",
            text.len() + 1,
        ));
    };
    let expr_text = text[..at].trim().to_owned();
    let expr = parse(&expr_text)?;
    let lit = text[at + len..].trim();
    let column = at + len + 1;
    let literal = if lit.is_empty() {
        return Err(err("expected a constant after the operator", column));
    } else if (lit.starts_with('"') && lit.ends_with('"') && lit.len() >= 2)
        || (lit.starts_with('\'') && lit.ends_with('\'') && lit.len() >= 2)
    {
        Literal::Str(lit[1..lit.len() - 1].to_owned())
    } else if lit == "true" || lit == "false" {
        Literal::Bool(lit == "true")
    } else if let Some(hex) = lit.strip_prefix("0x").or_else(|| lit.strip_prefix("0X")) {
        Literal::Int(
            i128::from_str_radix(hex, 16).map_err(|_| err("invalid hex constant", column))?,
        )
    } else if let Ok(v) = lit.parse::<i128>() {
        Literal::Int(v)
    } else if let Ok(v) = lit.parse::<f64>() {
        Literal::Float(v)
    } else {
        return Err(err(
            "expected a number, a quoted string, true or false",
            column,
        ));
    };
    if op == CmpOp::Prefix && !matches!(literal, Literal::Str(_)) {
        return Err(err("`^=` (starts with) needs a quoted string", column));
    }
    Ok(Condition {
        text: text.trim().to_owned(),
        expr_text,
        expr,
        op,
        literal,
    })
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Var(n) => write!(f, "{n}"),
            Expr::Field(e, n) => write!(f, "{}.{n}", Operand(e)),
            Expr::Arrow(e, n) => write!(f, "{}->{n}", Operand(e)),
            Expr::Index(e, i) => write!(f, "{}[{i}]", Operand(e)),
            // No parentheses of its own: they count as operators, and `(*(*(*p)))` at depth 43
            // printed past MAX_OPERATORS, so the text of an accepted expression was refused.
            Expr::Deref(e) => write!(f, "*{e}"),
        }
    }
}

/// The operand of a postfix operator: a dereference in parentheses (`(*p).x`, not `*p.x`,
/// which is `*(p.x)`).
struct Operand<'a>(&'a Expr);

impl std::fmt::Display for Operand<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Expr::Deref(_) => write!(f, "({})", self.0),
            e => write!(f, "{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(
        clippy::unnecessary_box_returns,
        reason = "builds the boxed operands of `Expr`"
    )]
    fn v(n: &str) -> Box<Expr> {
        Box::new(Expr::Var(n.into()))
    }

    #[test]
    fn parses_chains() {
        assert_eq!(parse("x").unwrap(), Expr::Var("x".into()));
        assert_eq!(parse("o->qty").unwrap(), Expr::Arrow(v("o"), "qty".into()));
        assert_eq!(
            parse("s.a.b").unwrap(),
            Expr::Field(Box::new(Expr::Field(v("s"), "a".into())), "b".into())
        );
        assert_eq!(parse("*p").unwrap(), Expr::Deref(v("p")));
        assert_eq!(
            parse("*p->next").unwrap(),
            Expr::Deref(Box::new(Expr::Arrow(v("p"), "next".into())))
        );
        assert_eq!(
            parse("(*p).x").unwrap(),
            Expr::Field(Box::new(Expr::Deref(v("p"))), "x".into())
        );
        assert_eq!(parse(" a [ 3 ] ").unwrap(), Expr::Index(v("a"), 3));
        assert_eq!(parse("self.x").unwrap(), Expr::Field(v("self"), "x".into()));
    }

    #[test]
    fn rejects_with_column() {
        let e = parse("o->").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid expression `o->`: expected a field name after `->` at column 4"
        );
        assert!(matches!(
            parse("a b"),
            Err(ExprError::Syntax { column: 3, .. })
        ));
        assert!(matches!(parse("a[x]"), Err(ExprError::Syntax { .. })));
        assert!(matches!(parse("9x"), Err(ExprError::Syntax { .. })));
    }

    #[test]
    fn nesting_100_000_deep_is_refused_not_a_stack_overflow() {
        for text in [
            "*".repeat(100_000) + "p",
            "(".repeat(100_000) + "x" + &")".repeat(100_000),
            "o".to_owned() + &"->next".repeat(100_000),
            "a".to_owned() + &"[0]".repeat(100_000),
        ] {
            let Err(ExprError::Syntax { what, .. }) = parse(&text) else {
                panic!("accepted a {}-char expression", text.len());
            };
            assert_eq!(
                what,
                "more than 128 operators (`*`, `(`, `.`, `->`, `[`); the limit keeps evaluation bounded"
            );
        }
        let ok = "*".repeat(64) + "p" + &".f".repeat(64);
        assert!(parse(&ok).is_ok(), "128 operators are fine");
        assert!(parse(&(ok + ".g")).is_err(), "129 are not");
    }

    #[test]
    fn an_accepted_expression_prints_as_text_that_parses_to_it() {
        // Found by the `expr` fuzz target: 69 dereferences printed as `(*(*…a))`, 207 operators.
        for text in [
            "*".repeat(69) + "a",
            "(*o).id".into(),
            "*p->next".into(),
            "(**pp).x[3]".into(),
            "*a.b".into(),
        ] {
            let e = parse(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
            let shown = e.to_string();
            assert_eq!(parse(&shown).ok(), Some(e), "{text} printed as {shown}");
        }
        assert_eq!(
            parse("(*o).id").map(|e| e.to_string()).ok().as_deref(),
            Some("(*o).id")
        );
        assert_eq!(
            parse("**p").map(|e| e.to_string()).ok().as_deref(),
            Some("**p")
        );
    }

    #[test]
    fn non_ascii_conditions_are_errors_not_panics() {
        assert_eq!(
            parse_condition("rounδ > 1").unwrap_err().to_string(),
            parse("rounδ").unwrap_err().to_string()
        );
        let c = parse_condition("name ^= \"été\"").unwrap();
        assert_eq!(
            (c.expr_text.as_str(), c.literal),
            ("name", Literal::Str("été".into()))
        );
        assert!(parse_condition("ééé").is_err());
    }

    #[test]
    fn parses_conditions() {
        let c = parse_condition("o->qty > 10").unwrap();
        assert_eq!(
            (c.expr_text.as_str(), c.op, c.literal),
            ("o->qty", CmpOp::Gt, Literal::Int(10))
        );
        let c = parse_condition("name ^= \"al\"").unwrap();
        assert_eq!(
            (c.op, c.literal),
            (CmpOp::Prefix, Literal::Str("al".into()))
        );
        let c = parse_condition("price<=2.5").unwrap();
        assert_eq!(
            (c.expr_text.as_str(), c.op, c.literal),
            ("price", CmpOp::Le, Literal::Float(2.5))
        );
        assert_eq!(
            parse_condition("f != 0x10").unwrap().literal,
            Literal::Int(16)
        );
        assert_eq!(
            parse_condition("g == 'A'").unwrap().literal,
            Literal::Str("A".into())
        );
        assert!(parse_condition("qty").is_err());
        assert!(parse_condition("qty >").is_err());
        assert!(parse_condition("qty ^= 3").is_err());
    }

    #[test]
    fn names_function_calls() {
        let e = parse("strlen(name)").unwrap_err();
        assert_eq!(
            e,
            ExprError::FunctionCall {
                expr: "strlen(name)".into(),
                function: "strlen".into()
            }
        );
    }
}
