//! Meta rule expressions: a small recursive-descent parser and an evaluator.
//!
//! Grammar (lowest precedence first):
//!
//! ```text
//! expr  := and ( "||" and )*
//! and   := not ( "&&" not )*
//! not   := "!" not | cmp
//! cmp   := sum ( ( "<" | "<=" | ">" | ">=" | "==" | "!=" ) sum )?
//! sum   := prod ( ( "+" | "-" ) prod )*
//! prod  := atom ( "*" atom )*
//! atom  := NUMBER | RULE | "(" expr ")"
//!        | "count" "(" refs ")" | "sum" "(" refs ")" | "hits" "(" RULE ")"
//! refs  := ref ( "," ref )*        ref := RULE | PREFIX "*"
//! ```
//!
//! A rule name is worth 1 when the rule hit and 0 when not; `hits(R)` is its number of
//! matches; `count(...)` the number of listed rules that hit; `sum(...)` their matches added.
//! Comparisons and boolean operators give 1 or 0; a meta rule hits when its value is not 0.

use std::fmt;

/// A parsed expression; `R` is a rule reference (a name before resolution, an index after).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr<R> {
    Num(f64),
    Rule(R),
    Hits(R),
    Count(Vec<R>),
    Sum(Vec<R>),
    Not(Box<Expr<R>>),
    Bin(Op, Box<Expr<R>>, Box<Expr<R>>),
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Or,
    And,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    Add,
    Sub,
    Mul,
}

/// A reference as written: a rule name, or a prefix ending in `*` inside `count`/`sum`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameRef {
    Exact(String),
    Prefix(String),
}

/// Why an expression did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) offset: usize,
    pub(crate) message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {}", self.message, self.offset)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Star,
    LParen,
    RParen,
    Comma,
    Op(&'static str),
}

const MAX_DEPTH: usize = 64;
const MAX_LEN: usize = 16 * 1024;

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.')
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let two = b.get(i..i + 2);
        let tok = match two {
            Some(b"&&") => Some((Tok::Op("&&"), 2)),
            Some(b"||") => Some((Tok::Op("||"), 2)),
            Some(b"<=") => Some((Tok::Op("<="), 2)),
            Some(b">=") => Some((Tok::Op(">="), 2)),
            Some(b"==") => Some((Tok::Op("=="), 2)),
            Some(b"!=") => Some((Tok::Op("!="), 2)),
            _ => None,
        };
        if let Some((tok, n)) = tok {
            out.push((start, tok));
            i += n;
            continue;
        }
        let tok = match c {
            b'(' => Tok::LParen,
            b')' => Tok::RParen,
            b',' => Tok::Comma,
            b'*' => Tok::Star,
            b'!' => Tok::Op("!"),
            b'<' => Tok::Op("<"),
            b'>' => Tok::Op(">"),
            b'+' => Tok::Op("+"),
            b'-' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) || last_is_value(&out) => {
                Tok::Op("-")
            }
            b'0'..=b'9' | b'-' => {
                i += 1;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                let text = &src[start..i];
                let n = text.parse::<f64>().map_err(|_| ParseError {
                    offset: start,
                    message: format!("bad number {text:?}"),
                })?;
                out.push((start, Tok::Num(n)));
                continue;
            }
            c if is_ident_byte(c) => {
                while i < b.len() && is_ident_byte(b[i]) {
                    i += 1;
                }
                out.push((start, Tok::Ident(src[start..i].to_string())));
                continue;
            }
            _ => {
                let ch = src[start..].chars().next().unwrap_or('?');
                return Err(ParseError {
                    offset: start,
                    message: format!("unexpected character {ch:?}"),
                });
            }
        };
        out.push((start, tok));
        i += 1;
    }
    Ok(out)
}

fn last_is_value(toks: &[(usize, Tok)]) -> bool {
    matches!(
        toks.last(),
        Some((_, Tok::Num(_) | Tok::Ident(_) | Tok::RParen))
    )
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(o, _)| *o)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            offset: self.offset(),
            message: message.into(),
        })
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ParseError> {
        if self.peek() == Some(&tok) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(format!("expected {what}"))
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("expression nested too deeply");
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr<NameRef>, ParseError> {
        self.enter()?;
        let mut lhs = self.and()?;
        while self.eat_op("||") {
            let rhs = self.and()?;
            lhs = Expr::Bin(Op::Or, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn and(&mut self) -> Result<Expr<NameRef>, ParseError> {
        let mut lhs = self.not()?;
        while self.eat_op("&&") {
            let rhs = self.not()?;
            lhs = Expr::Bin(Op::And, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn not(&mut self) -> Result<Expr<NameRef>, ParseError> {
        if self.eat_op("!") {
            self.enter()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr<NameRef>, ParseError> {
        let lhs = self.sum()?;
        for (text, op) in [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
            ("==", Op::Eq),
            ("!=", Op::Ne),
        ] {
            if self.eat_op(text) {
                let rhs = self.sum()?;
                return Ok(Expr::Bin(op, Box::new(lhs), Box::new(rhs)));
            }
        }
        Ok(lhs)
    }

    fn sum(&mut self) -> Result<Expr<NameRef>, ParseError> {
        let mut lhs = self.prod()?;
        loop {
            let op = if self.eat_op("+") {
                Op::Add
            } else if self.eat_op("-") {
                Op::Sub
            } else {
                return Ok(lhs);
            };
            let rhs = self.prod()?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
    }

    fn prod(&mut self) -> Result<Expr<NameRef>, ParseError> {
        let mut lhs = self.atom()?;
        while self.peek() == Some(&Tok::Star) {
            self.pos += 1;
            let rhs = self.atom()?;
            lhs = Expr::Bin(Op::Mul, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn atom(&mut self) -> Result<Expr<NameRef>, ParseError> {
        match self.peek().cloned() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Expr::Num(n))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect(Tok::RParen, "`)`")?;
                Ok(e)
            }
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                let func = matches!(name.as_str(), "count" | "sum" | "hits");
                if func && self.peek() == Some(&Tok::LParen) {
                    self.pos += 1;
                    let refs = self.refs(name != "hits")?;
                    self.expect(Tok::RParen, "`)`")?;
                    return Ok(match name.as_str() {
                        "count" => Expr::Count(refs),
                        "sum" => Expr::Sum(refs),
                        _ => match refs.into_iter().next() {
                            Some(r) => Expr::Hits(r),
                            None => return self.err("hits() takes one rule"),
                        },
                    });
                }
                Ok(Expr::Rule(NameRef::Exact(name)))
            }
            Some(_) => self.err("expected a rule name, a number or `(`"),
            None => self.err("unexpected end of expression"),
        }
    }

    fn refs(&mut self, many: bool) -> Result<Vec<NameRef>, ParseError> {
        let mut out = Vec::new();
        loop {
            let Some(Tok::Ident(name)) = self.peek().cloned() else {
                return self.err("expected a rule name");
            };
            self.pos += 1;
            if many && self.peek() == Some(&Tok::Star) {
                self.pos += 1;
                out.push(NameRef::Prefix(name));
            } else {
                out.push(NameRef::Exact(name));
            }
            if !many || self.peek() != Some(&Tok::Comma) {
                return Ok(out);
            }
            self.pos += 1;
        }
    }
}

/// Parses a meta expression.
pub(crate) fn parse(src: &str) -> Result<Expr<NameRef>, ParseError> {
    if src.len() > MAX_LEN {
        return Err(ParseError {
            offset: MAX_LEN,
            message: format!("expression longer than {MAX_LEN} bytes"),
        });
    }
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        end: src.len(),
        depth: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return p.err("unexpected token after the expression");
    }
    Ok(e)
}

impl<R> Expr<R> {
    /// Rewrites every reference with `f`, which may expand a prefix into several rules.
    pub(crate) fn resolve<S, E>(
        self,
        f: &mut impl FnMut(R) -> Result<Vec<S>, E>,
    ) -> Result<Expr<S>, E> {
        let one = |f: &mut dyn FnMut(R) -> Result<Vec<S>, E>, r: R| {
            f(r).map(|v| {
                v.into_iter()
                    .next()
                    .expect("exact reference resolves to one rule")
            })
        };
        Ok(match self {
            Expr::Num(n) => Expr::Num(n),
            Expr::Rule(r) => Expr::Rule(one(f, r)?),
            Expr::Hits(r) => Expr::Hits(one(f, r)?),
            Expr::Count(rs) => Expr::Count(resolve_all(rs, f)?),
            Expr::Sum(rs) => Expr::Sum(resolve_all(rs, f)?),
            Expr::Not(e) => Expr::Not(Box::new(e.resolve(f)?)),
            Expr::Bin(op, a, b) => Expr::Bin(op, Box::new(a.resolve(f)?), Box::new(b.resolve(f)?)),
        })
    }

    /// Calls `f` on every reference.
    pub(crate) fn visit(&self, f: &mut impl FnMut(&R)) {
        match self {
            Expr::Num(_) => {}
            Expr::Rule(r) | Expr::Hits(r) => f(r),
            Expr::Count(rs) | Expr::Sum(rs) => rs.iter().for_each(f),
            Expr::Not(e) => e.visit(f),
            Expr::Bin(_, a, b) => {
                a.visit(f);
                b.visit(f);
            }
        }
    }
}

fn resolve_all<R, S, E>(
    rs: Vec<R>,
    f: &mut impl FnMut(R) -> Result<Vec<S>, E>,
) -> Result<Vec<S>, E> {
    let mut out = Vec::new();
    for r in rs {
        out.extend(f(r)?);
    }
    Ok(out)
}

impl Expr<usize> {
    /// Evaluates with `hits[i]` = number of matches of rule `i`.
    pub(crate) fn eval(&self, hits: &[u32]) -> f64 {
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        let h = |i: &usize| f64::from(hits.get(*i).copied().unwrap_or(0));
        match self {
            Expr::Num(n) => *n,
            Expr::Rule(i) => b(h(i) > 0.0),
            Expr::Hits(i) => h(i),
            Expr::Count(rs) => rs.iter().filter(|i| h(i) > 0.0).count() as f64,
            Expr::Sum(rs) => rs.iter().map(h).sum(),
            Expr::Not(e) => b(e.eval(hits) == 0.0),
            Expr::Bin(op, l, r) => {
                let l = l.eval(hits);
                // Short-circuit the boolean operators.
                match op {
                    Op::And if l == 0.0 => return 0.0,
                    Op::Or if l != 0.0 => return 1.0,
                    _ => {}
                }
                let r = r.eval(hits);
                match op {
                    Op::And | Op::Or => b(r != 0.0),
                    Op::Lt => b(l < r),
                    Op::Le => b(l <= r),
                    Op::Gt => b(l > r),
                    Op::Ge => b(l >= r),
                    Op::Eq => b(l == r),
                    Op::Ne => b(l != r),
                    Op::Add => l + r,
                    Op::Sub => l - r,
                    Op::Mul => l * r,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves names A..=E to indices 0..=4; a prefix `X*` to every such name starting with X.
    fn compile(src: &str) -> Result<Expr<usize>, String> {
        const NAMES: [&str; 5] = ["A", "B", "C", "D", "E_LONG"];
        let e = parse(src).map_err(|e| e.to_string())?;
        e.resolve(&mut |r: NameRef| match r {
            NameRef::Exact(n) => NAMES
                .iter()
                .position(|x| *x == n)
                .map(|i| vec![i])
                .ok_or(format!("unknown rule {n}")),
            NameRef::Prefix(p) => Ok((0..NAMES.len())
                .filter(|i| NAMES[*i].starts_with(&p))
                .collect()),
        })
    }

    #[test]
    fn evaluates_table() {
        // hits: A=1, B=0, C=3, D=0, E_LONG=2
        let hits = [1, 0, 3, 0, 2];
        let cases: &[(&str, f64)] = &[
            ("A", 1.0),
            ("B", 0.0),
            ("!B", 1.0),
            ("!A", 0.0),
            ("A && C", 1.0),
            ("A && B", 0.0),
            ("B || C", 1.0),
            ("B || D", 0.0),
            ("A && !B && C", 1.0),
            ("!(A && B)", 1.0),
            ("!A || !C", 0.0),
            ("A || B && D", 1.0),
            ("(A || B) && D", 0.0),
            ("A + B + C", 2.0),
            ("(A + B + C + D) > 1", 1.0),
            ("(A + B + C + D) >= 3", 0.0),
            ("hits(C)", 3.0),
            ("hits(C) >= 3", 1.0),
            ("hits(C) > 3", 0.0),
            ("count(A, B, C, D, E_LONG)", 3.0),
            ("count(A, B) == 1", 1.0),
            ("count(A, B) != 1", 0.0),
            ("sum(A, C, E_LONG)", 6.0),
            ("sum(A, C) - 5 < 0", 1.0),
            ("2 * C + 1", 3.0),
            ("count(E*) == 1", 1.0),
            ("count(A*) + count(E*)", 2.0),
            ("C <= 0.5", 0.0),
            ("-1 < B", 1.0),
            ("A - 1 == 0", 1.0),
        ];
        for (src, want) in cases {
            let e = compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(e.eval(&hits), *want, "{src}");
        }
    }

    #[test]
    fn rejects_table() {
        let cases: &[(&str, &str)] = &[
            ("", "unexpected end"),
            ("A &&", "unexpected end"),
            ("(A || B", "expected `)`"),
            ("A B", "unexpected token"),
            ("A & B", "unexpected character"),
            ("count()", "expected a rule name"),
            ("hits(A, B)", "expected `)`"),
            ("Z", "unknown rule Z"),
            ("count(A, Z)", "unknown rule Z"),
            ("A $ B", "unexpected character"),
            ("1..2", "bad number"),
        ];
        for (src, want) in cases {
            let err = compile(src).expect_err(src);
            assert!(err.contains(want), "{src}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let src = format!("{}A{}", "(".repeat(5_000), ")".repeat(5_000));
        assert!(parse(&src).unwrap_err().message.contains("too deeply"));
        let src = format!("{}A", "!".repeat(5_000));
        assert!(parse(&src).unwrap_err().message.contains("too deeply"));
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    proptest! {
        /// Any text over the expression alphabet parses or fails cleanly.
        #[test]
        fn parse_never_panics(src in "[A-C_ ()!&|<>=+*,0-9.-]{0,80}|count\\([A-C*, ]{0,20}\\)|hits\\([A-C]{0,3}\\)") {
            let _ = super::parse(&src);
        }

        /// Arbitrary Unicode too.
        #[test]
        fn parse_never_panics_unicode(src in "\\PC{0,60}") {
            let _ = super::parse(&src);
        }
    }
}
