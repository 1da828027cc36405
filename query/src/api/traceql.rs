//! The TraceQL that Tempo's `/api/search?q=` takes, as far as hopscope answers it:
//!
//! - span sets `{ ... }` (and `{}` for every span), combined with `&&` and `||`, grouped with `( )`;
//! - inside a span set, comparisons joined by `&&` and `||` and grouped with `( )`: `=`, `!=`, `>`,
//!   `>=`, `<`, `<=`, `=~`, `!~` on `span.`, `resource.` and unscoped (`.`) attributes, and on the
//!   intrinsics `name`, `status`, `statusMessage`, `kind`, `duration` (also written `span:name`, ...)
//!   and `rootServiceName`, `rootName`, `traceDuration` (`trace:rootService`, `trace:rootName`,
//!   `trace:duration`); values are strings, numbers, durations (`250ms`), `true`, `false`, `nil`,
//!   statuses (`ok`, `error`, `unset`) and kinds (`server`, `client`, ...);
//! - pipelines after a single span set: `| count() > 2`, `| avg(duration) > 1s` (also `min`, `max`,
//!   `sum`), and `| { ... }` before any aggregate.
//!
//! Anything else (structural operators such as `>>`, `select()`, `by()`, arithmetic, events and
//! links) is refused with an error that names it. Regular expressions match the whole value, as
//! Tempo's do.

use crate::analysis::span_sets::{
    Aggregate, Comparison, Condition, Field, Having, Intrinsic, Literal, Op, Scope, SpanSetQuery, SpanSets,
};
use hopscope_schemas::spans::{kind, status};
use hopscope_schemas::time::parse_duration;

/// The most comparisons one query takes, and how deep its parentheses may nest.
pub(crate) const MAX_COMPARISONS: usize = 64;
const MAX_DEPTH: usize = 16;
/// The most span sets `{ ... }` one query combines.
pub(crate) const MAX_SPAN_SETS: usize = 16;
/// The longest query, in bytes: room for every comparison allowed with long values, and a bound
/// on what one request costs to parse.
pub(crate) const MAX_QUERY_BYTES: usize = 16 * 1024;

/// What the parser understands and what it answers; quoted in errors.
const ANSWERED: &str = "hopscope answers span sets { ... } with && and ||, comparisons on span., resource. and \
                        unscoped attributes and on name, status, statusMessage, kind, duration, rootServiceName, \
                        rootName and traceDuration, and pipelines of count(), avg(), min(), max() and sum() of \
                        duration";

#[derive(Debug, Clone, PartialEq)]
enum Token {
    LBrace,
    RBrace,
    LParen,
    RParen,
    Pipe,
    And,
    Or,
    Comma,
    Op(Op),
    /// A structural operator between span sets (`>>`, `<<`, `~`, `&>>`, `!>>`, ...).
    Structural(String),
    Str(String),
    Number(String),
    Duration(i64),
    Word(String),
    /// Arithmetic (`+ - * / % ^`), which hopscope does not answer.
    Arithmetic(char),
    Not,
}

fn describe(token: &Token) -> String {
    match token {
        Token::LBrace => "{".into(),
        Token::RBrace => "}".into(),
        Token::LParen => "(".into(),
        Token::RParen => ")".into(),
        Token::Pipe => "|".into(),
        Token::And => "&&".into(),
        Token::Or => "||".into(),
        Token::Comma => ",".into(),
        Token::Op(op) => format!("{op:?}"),
        Token::Structural(s) => s.clone(),
        Token::Str(s) => format!("{s:?}"),
        Token::Number(n) => n.clone(),
        Token::Duration(ns) => format!("{ns}ns"),
        Token::Word(w) => w.clone(),
        Token::Arithmetic(c) => c.to_string(),
        Token::Not => "!".into(),
    }
}

/// Characters that end a word (an attribute name, an intrinsic, a keyword).
fn ends_word(c: char) -> bool {
    c.is_whitespace() || "{}()=!<>~|&,\"`+*/%^".contains(c)
}

fn lex(text: &str) -> Result<Vec<(usize, Token)>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied();
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let three: String = chars[i..chars.len().min(i + 3)].iter().collect();
        let (token, width) = match c {
            '{' => (Token::LBrace, 1),
            '}' => (Token::RBrace, 1),
            '(' => (Token::LParen, 1),
            ')' => (Token::RParen, 1),
            ',' => (Token::Comma, 1),
            '|' if two == "||" => (Token::Or, 2),
            '|' => (Token::Pipe, 1),
            '&' if two == "&&" => (Token::And, 2),
            '&' if ["&>>", "&<<"].contains(&three.as_str()) => (Token::Structural(three.clone()), 3),
            '&' => (Token::Structural(two.clone()), 2),
            '!' if ["!>>", "!<<"].contains(&three.as_str()) => (Token::Structural(three.clone()), 3),
            '!' if two == "!=" => (Token::Op(Op::Ne), 2),
            '!' if two == "!~" => (Token::Op(Op::NotMatch), 2),
            '!' => (Token::Not, 1),
            '=' if two == "=~" => (Token::Op(Op::Match), 2),
            '=' => (Token::Op(Op::Eq), 1),
            '>' if two == ">>" => (Token::Structural(two.clone()), 2),
            '>' if two == ">=" => (Token::Op(Op::Ge), 2),
            '>' => (Token::Op(Op::Gt), 1),
            '<' if two == "<<" => (Token::Structural(two.clone()), 2),
            '<' if two == "<=" => (Token::Op(Op::Le), 2),
            '<' => (Token::Op(Op::Lt), 1),
            '~' => (Token::Structural("~".into()), 1),
            '"' | '`' => {
                let (value, width) = quoted(&chars[i..]).map_err(|e| format!("at character {}: {e}", i + 1))?;
                (Token::Str(value), width)
            }
            '-' if at(i + 1).is_some_and(|d| d.is_ascii_digit()) => number(&chars[i..])?,
            '0'..='9' => number(&chars[i..])?,
            '+' | '-' | '*' | '/' | '%' | '^' => (Token::Arithmetic(c), 1),
            _ => {
                let mut end = i;
                let mut word = String::new();
                while end < chars.len() && !ends_word(chars[end]) {
                    word.push(chars[end]);
                    end += 1;
                }
                // `span."an attribute name with spaces"`
                if word.ends_with('.') && matches!(at(end), Some('"')) {
                    let (quoted, width) =
                        quoted(&chars[end..]).map_err(|e| format!("at character {}: {e}", end + 1))?;
                    word.push_str(&quoted);
                    end += width;
                }
                if word.is_empty() {
                    return Err(format!("at character {}: unexpected {c:?}", i + 1));
                }
                (Token::Word(word), end - i)
            }
        };
        tokens.push((start + 1, token));
        i += width;
    }
    Ok(tokens)
}

/// A string in double quotes (with `\"`, `\\`, `\n`, `\t` escapes) or back-quotes (raw).
fn quoted(chars: &[char]) -> Result<(String, usize), String> {
    let quote = chars[0];
    let mut value = String::new();
    let mut i = 1;
    while i < chars.len() {
        match chars[i] {
            c if c == quote => return Ok((value, i + 1)),
            '\\' if quote == '"' => {
                i += 1;
                match chars.get(i) {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some(c) => value.push(*c),
                    None => break,
                }
            }
            c => value.push(c),
        }
        i += 1;
    }
    Err("a string is not closed".into())
}

/// A number, or a duration when a unit follows it (`250ms`, `1.5s`).
fn number(chars: &[char]) -> Result<(Token, usize), String> {
    let mut end = usize::from(chars[0] == '-');
    while end < chars.len() && (chars[end].is_ascii_digit() || chars[end] == '.') {
        end += 1;
    }
    let digits: String = chars[..end].iter().collect();
    let mut unit_end = end;
    while unit_end < chars.len() && (chars[unit_end].is_alphabetic()) {
        unit_end += 1;
    }
    if unit_end == end {
        return Ok((Token::Number(digits), end));
    }
    let text: String = chars[..unit_end].iter().collect();
    let ns = parse_duration(&text).map_err(|e| format!("{text}: {e}"))?;
    Ok((Token::Duration(ns), unit_end))
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    comparisons: usize,
    span_sets: usize,
    depth: usize,
}

/// Parses a TraceQL query; the error says where and what is wrong or not answered.
pub(crate) fn parse(text: &str) -> Result<SpanSetQuery, String> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(format!("the query is {} bytes long; a query takes at most {MAX_QUERY_BYTES}", text.len()));
    }
    let mut parser = Parser { tokens: lex(text)?, next: 0, comparisons: 0, span_sets: 0, depth: 0 };
    if parser.tokens.is_empty() {
        return Err("the query is empty; {} selects every span".into());
    }
    let query = parser.query()?;
    if let Some((at, token)) = parser.tokens.get(parser.next) {
        return Err(format!("at character {at}: unexpected {}", describe(token)));
    }
    Ok(query)
}

/// The condition of a query that is a single span set, for narrowing tag names and values; `None`
/// for `{}` and for queries of several span sets or with aggregates (every span is then read).
pub(crate) fn single_condition(query: SpanSetQuery) -> Option<Condition> {
    match query {
        SpanSetQuery { sets: SpanSets::Set(condition), having } if having.is_empty() && condition != Condition::All => {
            Some(condition)
        }
        _ => None,
    }
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> String {
        match self.tokens.get(self.next) {
            Some((at, _)) => format!("at character {at}"),
            None => "at the end".into(),
        }
    }

    fn bump(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.next).map(|(_, t)| t.clone());
        self.next += 1;
        token
    }

    fn expect(&mut self, want: Token) -> Result<(), String> {
        match self.peek() {
            Some(t) if *t == want => {
                self.next += 1;
                Ok(())
            }
            Some(t) => Err(format!("{}: expected {}, got {}", self.position(), describe(&want), describe(t))),
            None => Err(format!("at the end: expected {}", describe(&want))),
        }
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("{}: parentheses and span sets nest deeper than {MAX_DEPTH}", self.position()));
        }
        Ok(())
    }

    fn query(&mut self) -> Result<SpanSetQuery, String> {
        let mut query = SpanSetQuery { sets: self.span_sets()?, having: Vec::new() };
        while self.peek() == Some(&Token::Pipe) {
            self.next += 1;
            self.stage(&mut query)?;
        }
        Ok(query)
    }

    fn span_sets(&mut self) -> Result<SpanSets, String> {
        let mut sets = self.and_sets()?;
        while self.peek() == Some(&Token::Or) {
            self.next += 1;
            sets = SpanSets::Or(Box::new(sets), Box::new(self.and_sets()?));
        }
        Ok(sets)
    }

    fn and_sets(&mut self) -> Result<SpanSets, String> {
        let mut sets = self.primary_sets()?;
        while self.peek() == Some(&Token::And) {
            self.next += 1;
            sets = SpanSets::And(Box::new(sets), Box::new(self.primary_sets()?));
        }
        Ok(sets)
    }

    fn primary_sets(&mut self) -> Result<SpanSets, String> {
        self.enter()?;
        let sets = match self.peek() {
            Some(Token::LBrace) => {
                self.span_sets += 1;
                if self.span_sets > MAX_SPAN_SETS {
                    return Err(format!(
                        "more than {MAX_SPAN_SETS} span sets; a query combines at most {MAX_SPAN_SETS}"
                    ));
                }
                SpanSets::Set(self.braced()?)
            }
            Some(Token::LParen) => {
                self.next += 1;
                let sets = self.span_sets()?;
                self.expect(Token::RParen)?;
                sets
            }
            Some(Token::Word(w)) => {
                return Err(format!(
                    "{}: {w} is not answered (a query starts with a span set such as {{ name = \"GET /\" }}); {ANSWERED}",
                    self.position()
                ));
            }
            Some(t) => return Err(format!("{}: expected a span set {{ ... }}, got {}", self.position(), describe(t))),
            None => return Err("at the end: expected a span set { ... }".into()),
        };
        self.depth -= 1;
        match self.peek() {
            Some(Token::Structural(op)) => Err(format!(
                "{}: the structural operator {op} between span sets is not answered; {ANSWERED}",
                self.position()
            )),
            Some(Token::Op(op @ (Op::Gt | Op::Lt | Op::NotMatch))) => Err(format!(
                "{}: the structural operator {} between span sets is not answered; {ANSWERED}",
                self.position(),
                op_symbol(*op)
            )),
            _ => Ok(sets),
        }
    }

    /// `{ condition }` or `{}`.
    fn braced(&mut self) -> Result<Condition, String> {
        self.expect(Token::LBrace)?;
        if self.peek() == Some(&Token::RBrace) {
            self.next += 1;
            return Ok(Condition::All);
        }
        let condition = self.condition()?;
        self.expect(Token::RBrace)?;
        Ok(condition)
    }

    fn condition(&mut self) -> Result<Condition, String> {
        let mut condition = self.and_condition()?;
        while self.peek() == Some(&Token::Or) {
            self.next += 1;
            condition = Condition::Or(Box::new(condition), Box::new(self.and_condition()?));
        }
        Ok(condition)
    }

    fn and_condition(&mut self) -> Result<Condition, String> {
        let mut condition = self.atom()?;
        while self.peek() == Some(&Token::And) {
            self.next += 1;
            condition = Condition::And(Box::new(condition), Box::new(self.atom()?));
        }
        Ok(condition)
    }

    fn atom(&mut self) -> Result<Condition, String> {
        if self.peek() == Some(&Token::LParen) {
            self.enter()?;
            self.next += 1;
            let condition = self.condition()?;
            self.expect(Token::RParen)?;
            self.depth -= 1;
            return Ok(condition);
        }
        if self.peek() == Some(&Token::Not) {
            return Err(format!("{}: negation with ! is not answered; write != or !~ instead", self.position()));
        }
        let position = self.position();
        let field = self.field()?;
        let op = match self.bump() {
            Some(Token::Op(op)) => op,
            Some(Token::Arithmetic(c)) => {
                return Err(format!("{position}: arithmetic ({c}) is not answered; {ANSWERED}"));
            }
            Some(t) => return Err(format!("{position}: expected a comparison after the field, got {}", describe(&t))),
            None => return Err("at the end: expected a comparison such as = or >".into()),
        };
        let value_position = self.position();
        let value = self.literal()?;
        if matches!(self.peek(), Some(Token::Arithmetic(_))) {
            return Err(format!("{}: arithmetic is not answered; {ANSWERED}", self.position()));
        }
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            return Err(format!("more than {MAX_COMPARISONS} comparisons; a query takes at most {MAX_COMPARISONS}"));
        }
        Comparison::new(field, op, value).map(Condition::Compare).map_err(|e| format!("{value_position}: {e}"))
    }

    fn field(&mut self) -> Result<Field, String> {
        let position = self.position();
        let word = match self.bump() {
            Some(Token::Word(w)) => w,
            Some(t) => {
                return Err(format!("{position}: expected a field such as span.http.route, got {}", describe(&t)));
            }
            None => return Err("at the end: expected a field".into()),
        };
        field(&word).map_err(|e| format!("{position}: {e}"))
    }

    fn literal(&mut self) -> Result<Literal, String> {
        let position = self.position();
        Ok(match self.bump() {
            Some(Token::Str(s)) => Literal::Str(s),
            Some(Token::Duration(ns)) => Literal::Duration(ns),
            Some(Token::Number(n)) => match n.parse::<i64>() {
                Ok(i) => Literal::Int(i),
                Err(_) => Literal::Float(n.parse::<f64>().map_err(|_| format!("{position}: {n} is not a number"))?),
            },
            Some(Token::Word(w)) => match w.as_str() {
                "true" => Literal::Bool(true),
                "false" => Literal::Bool(false),
                "nil" => Literal::Nil,
                "ok" => Literal::Status(status::OK),
                "error" => Literal::Status(status::ERROR),
                "unset" => Literal::Status(status::UNSET),
                "unspecified" => Literal::Kind(kind::UNSPECIFIED),
                "internal" => Literal::Kind(kind::INTERNAL),
                "server" => Literal::Kind(kind::SERVER),
                "client" => Literal::Kind(kind::CLIENT),
                "producer" => Literal::Kind(kind::PRODUCER),
                "consumer" => Literal::Kind(kind::CONSUMER),
                other if field(other).is_ok() => {
                    return Err(format!("{position}: comparing two fields ({other}) is not answered; {ANSWERED}"));
                }
                other => {
                    return Err(format!(
                        "{position}: expected a value (a \"string\", a number, a duration, true, false, nil, a status \
                         or a kind), got {other}"
                    ));
                }
            },
            Some(t) => return Err(format!("{position}: expected a value, got {}", describe(&t))),
            None => return Err("at the end: expected a value".into()),
        })
    }

    /// One `| ...` stage.
    fn stage(&mut self, query: &mut SpanSetQuery) -> Result<(), String> {
        let position = self.position();
        match self.peek() {
            Some(Token::LBrace) => {
                let filter = self.braced()?;
                match (&mut query.sets, query.having.is_empty()) {
                    (SpanSets::Set(condition), true) => {
                        let before = std::mem::replace(condition, Condition::All);
                        *condition = Condition::And(Box::new(before), Box::new(filter));
                        Ok(())
                    }
                    _ => Err(format!(
                        "{position}: a {{ ... }} stage after an aggregate or after span sets combined with && or || is \
                         not answered"
                    )),
                }
            }
            Some(Token::Word(_)) => {
                let Some(Token::Word(name)) = self.bump() else { unreachable!() };
                let aggregate = match name.as_str() {
                    "count" => Aggregate::Count,
                    "avg" => Aggregate::AvgDuration,
                    "min" => Aggregate::MinDuration,
                    "max" => Aggregate::MaxDuration,
                    "sum" => Aggregate::SumDuration,
                    other => {
                        return Err(format!("{position}: {other}() in a pipeline is not answered; {ANSWERED}"));
                    }
                };
                self.expect(Token::LParen)?;
                if aggregate != Aggregate::Count {
                    let argument_position = self.position();
                    let argument = self.field()?;
                    if argument != Field::Intrinsic(Intrinsic::Duration) {
                        return Err(format!(
                            "{argument_position}: {name}() of anything but duration is not answered; {ANSWERED}"
                        ));
                    }
                }
                self.expect(Token::RParen)?;
                let op = match self.bump() {
                    Some(Token::Op(op)) if op != Op::Match && op != Op::NotMatch => op,
                    _ => return Err(format!("{position}: expected {name}(...) followed by a comparison such as > 3")),
                };
                let value_position = self.position();
                let value = match (aggregate, self.bump()) {
                    (Aggregate::Count, Some(Token::Number(n))) => {
                        n.parse::<f64>().map_err(|_| format!("{value_position}: {n} is not a number"))?
                    }
                    (Aggregate::Count, _) => return Err(format!("{value_position}: count() compares with a number")),
                    (_, Some(Token::Duration(ns))) => ns as f64,
                    (_, _) => {
                        return Err(format!(
                            "{value_position}: {name}(duration) compares with a duration such as 250ms"
                        ));
                    }
                };
                query.having.push(Having { aggregate, op, value });
                Ok(())
            }
            Some(t) => Err(format!("{position}: {} in a pipeline is not answered; {ANSWERED}", describe(t))),
            None => Err("at the end: expected a pipeline stage after |".into()),
        }
    }
}

fn op_symbol(op: Op) -> &'static str {
    match op {
        Op::Gt => ">",
        Op::Lt => "<",
        Op::NotMatch => "!~",
        _ => "?",
    }
}

/// A field as TraceQL writes it: an intrinsic, or a scoped attribute.
pub(crate) fn field(word: &str) -> Result<Field, String> {
    let intrinsic = match word {
        "name" | "span:name" => Some(Intrinsic::Name),
        "status" | "span:status" => Some(Intrinsic::Status),
        "statusMessage" | "span:statusMessage" => Some(Intrinsic::StatusMessage),
        "kind" | "span:kind" => Some(Intrinsic::Kind),
        "duration" | "span:duration" => Some(Intrinsic::Duration),
        "rootServiceName" | "trace:rootService" => Some(Intrinsic::RootService),
        "rootName" | "trace:rootName" => Some(Intrinsic::RootName),
        "traceDuration" | "trace:duration" => Some(Intrinsic::TraceDuration),
        _ => None,
    };
    if let Some(intrinsic) = intrinsic {
        return Ok(Field::Intrinsic(intrinsic));
    }
    let attribute = |scope, key: &str| {
        if key.is_empty() {
            Err(format!("{word} names no attribute"))
        } else {
            Ok(Field::Attribute { scope, key: key.to_owned() })
        }
    };
    if let Some(key) = word.strip_prefix("span.") {
        return attribute(Scope::Span, key);
    }
    if let Some(key) = word.strip_prefix("resource.") {
        return attribute(Scope::Resource, key);
    }
    if let Some(key) = word.strip_prefix('.') {
        return attribute(Scope::Any, key);
    }
    for scope in ["event", "link", "instrumentation", "parent", "trace", "span"] {
        if word.starts_with(&format!("{scope}.")) || word.starts_with(&format!("{scope}:")) {
            return Err(format!("{word} is not answered; {ANSWERED}"));
        }
    }
    if ["nestedSetLeft", "nestedSetRight", "nestedSetParent", "childCount", "parent", "traceID", "spanID"]
        .contains(&word)
    {
        return Err(format!("{word} is not answered; {ANSWERED}"));
    }
    Err(format!(
        "unknown field {word}: attributes are written span.{word}, resource.{word} or .{word}, and the intrinsics are \
         name, status, statusMessage, kind, duration, rootServiceName, rootName and traceDuration"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(field: Field, op: Op, value: Literal) -> Condition {
        Condition::Compare(Comparison::new(field, op, value).unwrap())
    }

    fn span(key: &str) -> Field {
        Field::Attribute { scope: Scope::Span, key: key.into() }
    }

    #[test]
    fn span_sets_with_comparisons_and_pipelines() {
        let q = parse(r#"{ span.http.route = "/cart" && duration > 100ms } | count() >= 2"#).unwrap();
        let route = compare(span("http.route"), Op::Eq, Literal::Str("/cart".into()));
        let slow = compare(Field::Intrinsic(Intrinsic::Duration), Op::Gt, Literal::Duration(100_000_000));
        assert_eq!(q.sets, SpanSets::Set(Condition::And(Box::new(route), Box::new(slow))));
        assert_eq!(q.having, [Having { aggregate: Aggregate::Count, op: Op::Ge, value: 2.0 }]);

        let q = parse(r#"{ resource.service.name = "a" } && ({ status = error } || { kind = server })"#).unwrap();
        let SpanSets::And(_, right) = q.sets else { panic!("{q:?}") };
        assert!(matches!(*right, SpanSets::Or(_, _)), "{right:?}");

        let q = parse(r#"{ .retries >= -1.5 || span:name =~ "GET .*" || resource.region != nil }"#).unwrap();
        let SpanSets::Set(Condition::Or(left, nil)) = q.sets else { panic!() };
        assert_eq!(
            *nil,
            compare(Field::Attribute { scope: Scope::Resource, key: "region".into() }, Op::Ne, Literal::Nil)
        );
        assert!(matches!(*left, Condition::Or(_, _)));

        assert_eq!(parse("{}").unwrap().sets, SpanSets::Set(Condition::All));
        let q = parse(r#"{ span."with space" = `raw\str` } | avg(duration) > 1.5s"#).unwrap();
        assert_eq!(q.sets, SpanSets::Set(compare(span("with space"), Op::Eq, Literal::Str(r"raw\str".into()))));
        assert_eq!(q.having[0], Having { aggregate: Aggregate::AvgDuration, op: Op::Gt, value: 1.5e9 });
        // A `{ }` stage before any aggregate narrows the span set.
        let q = parse(r#"{ name = "a" } | { status = error }"#).unwrap();
        assert!(matches!(q.sets, SpanSets::Set(Condition::And(_, _))));
    }

    #[test]
    fn what_is_not_answered_is_named() {
        for (query, named) in [
            ("{ } >> { }", ">>"),
            ("{ } > { }", ">"),
            ("{ } ~ { }", "~"),
            ("{ } | select(span.a)", "select()"),
            ("{ } | by(name)", "by()"),
            ("{ span.a + 1 > 2 }", "arithmetic"),
            ("{ span.a = span.b }", "comparing two fields"),
            ("{ event.name = \"x\" }", "event.name"),
            ("{ !(name = \"a\") }", "negation"),
            ("{ } && { } | count() > 1", ""),
            ("{ } | avg(span.size) > 2", "avg() of anything but duration"),
        ] {
            let error = match parse(query) {
                Err(e) => e,
                // Parsed, but refused when run (an aggregate after combined span sets).
                Ok(q) => {
                    assert!(!q.having.is_empty() && !matches!(q.sets, SpanSets::Set(_)), "{query}");
                    continue;
                }
            };
            assert!(error.contains(named), "{query}: {error}");
        }
    }

    #[test]
    fn bad_queries_say_where_and_what() {
        for (query, says) in [
            ("", "empty"),
            ("{ name = }", "expected a value"),
            ("{ name = \"a\" ", "expected }"),
            ("{ duration > 5 }", "durations compare with a duration"),
            ("{ status = 500 }", "status takes"),
            ("{ status > error }", "status takes"),
            ("{ name =~ \"(\" }", "not a regular expression"),
            ("{ foo = 1 }", "unknown field foo"),
            ("{ \"open", "not closed"),
            ("{ name = \"a\" } extra", "unexpected extra"),
            ("{ duration > 5xs }", "5xs"),
        ] {
            let error = parse(query).unwrap_err();
            assert!(error.contains(says), "{query}: {error}");
        }
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let deep = format!("{{ {}name = \"a\"{} }}", "(".repeat(40), ")".repeat(40));
        assert!(parse(&deep).unwrap_err().contains("deeper"));
        let many = (0..MAX_COMPARISONS + 1).map(|i| format!("span.k{i} = 1")).collect::<Vec<_>>().join(" && ");
        assert!(parse(&format!("{{ {many} }}")).unwrap_err().contains("at most"));
        let chained = vec!["{}"; 2_000].join(" && ");
        assert!(parse(&chained).unwrap_err().contains("at most 16"));
        let long = format!("{{ span.a = \"{}\" }}", "x".repeat(MAX_QUERY_BYTES));
        assert!(parse(&long).unwrap_err().contains("at most 16384"));
        let longest = format!("{{ span.a = \"{}\" }}", "x".repeat(MAX_QUERY_BYTES - 15));
        assert_eq!(longest.len(), MAX_QUERY_BYTES);
        assert!(parse(&longest).is_ok());
    }

    /// Any text is parsed or refused with a message, never a panic (`hopscope-fuzz`).
    #[test]
    fn fuzz_traceql() {
        let seeds = [
            r#"{ span.http.route = "/cart" && duration > 500ms } | count() >= 2"#,
            r#"{ resource.region =~ "eu-.*" } && ({ status = error } || { kind = server })"#,
            r#"{ .retries >= -1.5 || span:name != `x` || resource.a = nil } | avg(duration) > 1s"#,
            "{}",
        ];
        let tokens: &[&[u8]] = &[
            b"{",
            b"}",
            b"(",
            b")",
            b"&&",
            b"||",
            b"|",
            b"=",
            b"!=",
            b"=~",
            b"!~",
            b">>",
            b"~",
            b"span.",
            b"resource.",
            b".",
            b"duration",
            b"100ms",
            b"\"",
            b"`",
            b"count()",
            b"nil",
            b"error",
            b"server",
            b"-1.5",
            b"span:name",
            b"trace:duration",
            b"\\",
            b"select(",
            b"\xc2\xb5s",
        ];
        let seeds = seeds.iter().map(|q| q.as_bytes().to_vec()).collect();
        hopscope_fuzz::run("traceql", seeds, tokens, &|input: &[u8]| match parse(&String::from_utf8_lossy(input)) {
            Ok(query) => {
                let _ = single_condition(query);
                true
            }
            Err(message) => {
                assert!(!message.is_empty());
                false
            }
        });
    }
}
