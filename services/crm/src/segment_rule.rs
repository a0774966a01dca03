//! The segment rule language: parsed into an expression, evaluated against a customer's
//! [`Facts`]. Pure, so it is unit-tested here.
//!
//! ```text
//! rule      := or
//! or        := and ("or" and)*
//! and       := unary ("and" unary)*
//! unary     := "not" unary | "(" or ")" | bought | compare
//! bought    := "bought" "(" [arg ("," arg)*] ")"
//! arg       := name "=" value          category, product, sku, channel, channel_kind, store
//!                                      (strings), within_days, min_orders (numbers)
//! compare   := field op value          lifecycle, tier (= or != a string);
//!                                      rfm.recency, rfm.frequency, rfm.monetary, order_count,
//!                                      total_spend (minor units) against a number
//! op        := "=" | "!=" | "<" | "<=" | ">" | ">="
//! ```
//!
//! e.g. `bought(category = "c-123", within_days = 30) and not bought(channel_kind = "store")`.
//!
//! A rule is at most [`MAX_RULE_CHARS`] characters and `not`/parentheses nest at most
//! [`MAX_NESTING`] deep, so parsing, evaluating and dropping a rule never recurse deeper than
//! a few hundred frames whatever a caller sends (the contract states both limits).

use std::collections::HashSet;

use crate::facts::Facts;
use crate::rfm;

/// The longest rule accepted, in characters.
pub const MAX_RULE_CHARS: usize = 2_000;
/// How deep `not` and parentheses may nest.
pub const MAX_NESTING: usize = 32;

/// Where and why a rule does not parse; `column` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn holds<T: PartialOrd>(self, left: T, right: T) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumField {
    Recency,
    Frequency,
    Monetary,
    OrderCount,
    TotalSpend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    Lifecycle,
    Tier,
}

/// The orders a `bought(...)` counts: counted orders (not cancelled) placed within the last
/// `within_days` days, in the channel, channel kind and store given, with a line of the
/// category, product and SKU given; unset fields match anything. crm counts them from each
/// customer's purchase figures ([`crate::purchases::orders_matching`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PurchaseFilter {
    pub category: Option<String>,
    pub product: Option<String>,
    pub sku: Option<String>,
    pub channel: Option<String>,
    pub channel_kind: Option<i32>,
    pub store: Option<String>,
    pub within_days: Option<i64>,
}

/// `bought(...)`: at least `min_orders` orders match the filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bought {
    pub filter: PurchaseFilter,
    pub min_orders: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Bought(Bought),
    Num(NumField, Op, i64),
    Text(TextField, Op, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(i64),
    Open,
    Close,
    Comma,
    Op(Op),
}

/// The channel kind named in a rule, numbered as `omni.common.v1.ChannelKind`.
pub fn channel_kind(name: &str) -> Option<i32> {
    match name {
        "e_shop" | "eshop" | "online" => Some(1),
        "store" => Some(2),
        "livestream" => Some(3),
        "social" => Some(4),
        "associate" => Some(5),
        "marketplace" => Some(6),
        _ => None,
    }
}

fn tokenize(src: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |column: usize, message: &str| ParseError {
        column,
        message: message.to_owned(),
    };
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push((column, Token::Open));
                i += 1;
            }
            ')' => {
                out.push((column, Token::Close));
                i += 1;
            }
            ',' => {
                out.push((column, Token::Comma));
                i += 1;
            }
            '=' => {
                out.push((column, Token::Op(Op::Eq)));
                i += if chars.get(i + 1) == Some(&'=') { 2 } else { 1 };
            }
            '!' | '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                let op = match (c, eq) {
                    ('!', true) => Op::Ne,
                    ('<', false) => Op::Lt,
                    ('<', true) => Op::Le,
                    ('>', false) => Op::Gt,
                    ('>', true) => Op::Ge,
                    _ => return Err(err(column, "expected != ")),
                };
                out.push((column, Token::Op(op)));
                i += if eq { 2 } else { 1 };
            }
            '"' => {
                let start = i + 1;
                let Some(len) = chars[start..].iter().position(|&c| c == '"') else {
                    return Err(err(column, "unterminated string"));
                };
                out.push((
                    column,
                    Token::Str(chars[start..start + len].iter().collect()),
                ));
                i = start + len + 1;
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n = text
                    .parse()
                    .map_err(|_| err(column, "expected a whole number"))?;
                out.push((column, Token::Num(n)));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
                {
                    i += 1;
                }
                out.push((column, Token::Ident(chars[start..i].iter().collect())));
            }
            other => return Err(err(column, &format!("unexpected character '{other}'"))),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
    /// `not`s and open parentheses around the current position.
    nesting: usize,
}

impl Parser {
    fn column(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(c, _)| *c)
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.column(),
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident(w)) if w == word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: Token, what: &str) -> Result<(), ParseError> {
        if self.peek() == Some(&token) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(format!("expected {what}"))
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    /// Enters one more level of `not` or parentheses.
    fn nest(&mut self) -> Result<(), ParseError> {
        if self.nesting == MAX_NESTING {
            return self.fail(format!(
                "'not' and parentheses nest more than {MAX_NESTING} deep"
            ));
        }
        self.nesting += 1;
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if matches!(self.peek(), Some(Token::Ident(w)) if w == "not") {
            self.nest()?;
            self.pos += 1;
            let inner = self.unary()?;
            self.nesting -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.peek() == Some(&Token::Open) {
            self.nest()?;
            self.pos += 1;
            let inner = self.or()?;
            self.expect(Token::Close, "')'")?;
            self.nesting -= 1;
            return Ok(inner);
        }
        let column = self.column();
        match self.next() {
            Some(Token::Ident(word)) if word == "bought" => self.bought(),
            Some(Token::Ident(field)) => self.compare(&field, column),
            _ => {
                self.pos -= 1;
                self.fail("expected bought(...), a field comparison, 'not' or '('")
            }
        }
    }

    fn bought(&mut self) -> Result<Expr, ParseError> {
        self.expect(Token::Open, "'(' after bought")?;
        let mut b = Bought {
            min_orders: 1,
            ..Default::default()
        };
        let mut seen = HashSet::new();
        if self.peek() != Some(&Token::Close) {
            loop {
                let column = self.column();
                let Some(Token::Ident(name)) = self.next() else {
                    self.pos -= 1;
                    return self.fail("expected an argument name");
                };
                if !seen.insert(name.clone()) {
                    return Err(ParseError {
                        column,
                        message: format!("argument '{name}' given twice"),
                    });
                }
                self.expect(Token::Op(Op::Eq), "'=' after the argument name")?;
                let value_column = self.column();
                let value = self.next();
                let bad = |message: String| ParseError {
                    column: value_column,
                    message,
                };
                match (name.as_str(), value) {
                    ("category", Some(Token::Str(s))) => b.filter.category = Some(s),
                    ("product", Some(Token::Str(s))) => b.filter.product = Some(s),
                    ("sku", Some(Token::Str(s))) => b.filter.sku = Some(s),
                    ("channel", Some(Token::Str(s))) => b.filter.channel = Some(s),
                    ("store", Some(Token::Str(s))) => b.filter.store = Some(s),
                    ("channel_kind", Some(Token::Str(s))) => {
                        b.filter.channel_kind = Some(channel_kind(&s).ok_or_else(|| {
                            bad(format!(
                                "unknown channel kind \"{s}\" (e_shop, store, livestream, social, associate, marketplace)"
                            ))
                        })?);
                    }
                    ("within_days", Some(Token::Num(n))) if n > 0 => b.filter.within_days = Some(n),
                    ("min_orders", Some(Token::Num(n))) if n > 0 => b.min_orders = n,
                    ("within_days" | "min_orders", _) => {
                        return Err(bad(format!("{name} takes a positive whole number")));
                    }
                    ("category" | "product" | "sku" | "channel" | "store" | "channel_kind", _) => {
                        return Err(bad(format!("{name} takes a quoted string")));
                    }
                    _ => {
                        return Err(ParseError {
                            column,
                            message: format!(
                                "unknown argument '{name}' (category, product, sku, channel, channel_kind, store, within_days, min_orders)"
                            ),
                        });
                    }
                }
                if self.peek() == Some(&Token::Comma) {
                    self.pos += 1;
                    continue;
                }
                break;
            }
        }
        self.expect(Token::Close, "',' or ')'")?;
        Ok(Expr::Bought(b))
    }

    fn compare(&mut self, field: &str, column: usize) -> Result<Expr, ParseError> {
        let num = match field {
            "rfm.recency" => Some(NumField::Recency),
            "rfm.frequency" => Some(NumField::Frequency),
            "rfm.monetary" => Some(NumField::Monetary),
            "order_count" => Some(NumField::OrderCount),
            "total_spend" => Some(NumField::TotalSpend),
            _ => None,
        };
        let text = match field {
            "lifecycle" => Some(TextField::Lifecycle),
            "tier" => Some(TextField::Tier),
            _ => None,
        };
        if num.is_none() && text.is_none() {
            return Err(ParseError {
                column,
                message: format!(
                    "unknown field '{field}' (lifecycle, tier, rfm.recency, rfm.frequency, rfm.monetary, order_count, total_spend, bought(...))"
                ),
            });
        }
        let Some(Token::Op(op)) = self.next() else {
            self.pos -= 1;
            return self.fail(format!("expected a comparison after '{field}'"));
        };
        let value_column = self.column();
        match (num, text, self.next()) {
            (Some(f), _, Some(Token::Num(n))) => Ok(Expr::Num(f, op, n)),
            (_, Some(f), Some(Token::Str(s))) => {
                if !matches!(op, Op::Eq | Op::Ne) {
                    return Err(ParseError {
                        column: value_column,
                        message: format!("'{field}' compares with = or != only"),
                    });
                }
                if f == TextField::Lifecycle
                    && !["new", "active", "at_risk", "lapsed"].contains(&s.as_str())
                {
                    return Err(ParseError {
                        column: value_column,
                        message: format!(
                            "unknown lifecycle stage \"{s}\" (new, active, at_risk, lapsed)"
                        ),
                    });
                }
                Ok(Expr::Text(f, op, s))
            }
            (Some(_), _, _) => Err(ParseError {
                column: value_column,
                message: format!("'{field}' compares with a whole number"),
            }),
            _ => Err(ParseError {
                column: value_column,
                message: format!("'{field}' compares with a quoted string"),
            }),
        }
    }
}

/// Parses a rule; an empty rule or trailing input is an error.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let chars = src.chars().count();
    if chars > MAX_RULE_CHARS {
        return Err(ParseError {
            column: MAX_RULE_CHARS + 1,
            message: format!("the rule is longer than {MAX_RULE_CHARS} characters"),
        });
    }
    let tokens = tokenize(src)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        end: chars + 1,
        nesting: 0,
    };
    if p.peek().is_none() {
        return p.fail("the rule is empty");
    }
    let expr = p.or()?;
    if p.peek().is_some() {
        return p.fail("expected 'and', 'or' or the end of the rule");
    }
    Ok(expr)
}

impl Expr {
    /// The purchase filters of the rule's `bought(...)`s, each once, in order of appearance:
    /// what [`Facts::bought`] must count for the rule to be evaluated.
    pub fn purchase_filters(&self) -> Vec<PurchaseFilter> {
        let mut out = Vec::new();
        self.collect_filters(&mut out);
        out
    }

    fn collect_filters(&self, out: &mut Vec<PurchaseFilter>) {
        match self {
            Expr::Or(a, b) | Expr::And(a, b) => {
                a.collect_filters(out);
                b.collect_filters(out);
            }
            Expr::Not(a) => a.collect_filters(out),
            Expr::Bought(b) => {
                if !out.contains(&b.filter) {
                    out.push(b.filter.clone());
                }
            }
            Expr::Num(..) | Expr::Text(..) => {}
        }
    }

    /// Whether the customer with these facts matches (facts taken at one moment, with the
    /// rule's purchase filters counted).
    pub fn matches(&self, f: &Facts) -> bool {
        match self {
            Expr::Or(a, b) => a.matches(f) || b.matches(f),
            Expr::And(a, b) => a.matches(f) && b.matches(f),
            Expr::Not(a) => !a.matches(f),
            Expr::Bought(b) => f.bought.get(&b.filter).copied().unwrap_or(0) >= b.min_orders,
            Expr::Num(field, op, n) => {
                let value = match field {
                    NumField::Recency => i64::from(f.rfm.recency),
                    NumField::Frequency => i64::from(f.rfm.frequency),
                    NumField::Monetary => i64::from(f.rfm.monetary),
                    NumField::OrderCount => f.order_count,
                    NumField::TotalSpend => f.total_spend,
                };
                op.holds(value, *n)
            }
            Expr::Text(field, op, s) => {
                let value = match field {
                    TextField::Lifecycle => rfm::lifecycle_name(f.lifecycle),
                    TextField::Tier => f.tier.as_str(),
                };
                op.holds(value, s.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(f: impl FnOnce(&mut PurchaseFilter)) -> PurchaseFilter {
        let mut p = PurchaseFilter::default();
        f(&mut p);
        p
    }

    /// A customer with two orders over 60 days (shoes 10 days ago, bags 60 days ago), both
    /// online: the counts the filters of the rules below would give.
    fn facts() -> Facts {
        let shoes_30 = filter(|p| {
            p.category = Some("shoes".into());
            p.within_days = Some(30);
        });
        let bags_30 = filter(|p| {
            p.category = Some("bags".into());
            p.within_days = Some(30);
        });
        let in_store = filter(|p| p.channel_kind = Some(2));
        Facts {
            customer_id: "c".into(),
            order_count: 2,
            lifecycle: rfm::ACTIVE,
            tier: "silver".into(),
            total_spend: 2_000,
            bought: [
                (shoes_30, 1),
                (bags_30, 0),
                (in_store, 0),
                (PurchaseFilter::default(), 2),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_documented_examples_parse_and_evaluate() {
        let f = facts();
        let rule = parse(
            r#"bought(category = "shoes", within_days = 30) and not bought(channel_kind = "store")"#,
        )
        .unwrap();
        assert!(rule.matches(&f));
        let rule = parse(r#"bought(category = "bags", within_days = 30)"#).unwrap();
        assert!(!rule.matches(&f));
        let rule =
            parse(r#"lifecycle = "active" and (tier != "gold" or order_count >= 5)"#).unwrap();
        assert!(rule.matches(&f));
        assert!(parse("bought(min_orders = 2)").unwrap().matches(&f));
        assert!(!parse("bought(min_orders = 3)").unwrap().matches(&f));
        assert!(parse("total_spend > 1999").unwrap().matches(&f));
        // A filter nobody counted matches no order.
        assert!(!parse(r#"bought(sku = "s")"#).unwrap().matches(&f));
    }

    #[test]
    fn a_rule_names_each_purchase_filter_once_whatever_it_asks_of_it() {
        let filters = parse(
            r#"bought(category = "shoes", within_days = 30) or (bought(within_days = 30, category = "shoes", min_orders = 2) and not bought(channel = "web"))"#,
        )
        .unwrap()
        .purchase_filters();
        assert_eq!(
            filters,
            vec![
                filter(|p| {
                    p.category = Some("shoes".into());
                    p.within_days = Some(30);
                }),
                filter(|p| p.channel = Some("web".into())),
            ]
        );
        assert!(
            parse(r#"tier = "gold""#)
                .unwrap()
                .purchase_filters()
                .is_empty()
        );
    }

    #[test]
    fn bad_rules_say_where() {
        let col = |src: &str| parse(src).unwrap_err().column;
        assert_eq!(col(""), 1);
        assert_eq!(col("bought(colour = \"red\")"), 8);
        assert_eq!(col("lifecycle = \"sleepy\""), 13);
        assert_eq!(col("tier = \"gold\" and"), 18);
        assert_eq!(col("bought(within_days = \"x\")"), 22);
        assert_eq!(col("spend > 3"), 1);
        assert_eq!(col("(tier = \"gold\""), 15);
        assert_eq!(col("tier = \"gold"), 8);
        assert!(parse("rfm.monetary >= 4 or lifecycle = \"at_risk\"").is_ok());
    }

    #[test]
    fn nesting_and_length_are_bounded() {
        let leaf = "order_count > 1";
        let nots = |n: usize| format!("{}{leaf}", "not ".repeat(n));
        let parens = |n: usize| format!("{}{leaf}{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nots(MAX_NESTING)).is_ok());
        assert!(parse(&parens(MAX_NESTING)).is_ok());
        // One level more is refused where it starts, long before the stack is at risk.
        let e = parse(&nots(MAX_NESTING + 1)).unwrap_err();
        assert_eq!(e.column, 4 * MAX_NESTING + 1);
        assert!(e.message.contains("nest"), "{e}");
        assert!(parse(&parens(MAX_NESTING + 1)).is_err());
        // Siblings do not add up: nesting is depth, not count.
        let siblings = vec![format!("not {leaf}"); 60].join(" and ");
        assert!(parse(&siblings).is_ok());
        // A hostile rule of any size is refused without recursing through it.
        let e = parse(&nots(1_000_000)).unwrap_err();
        assert_eq!(e.column, MAX_RULE_CHARS + 1);
        let longest = format!("{leaf}{}", " ".repeat(MAX_RULE_CHARS - leaf.len()));
        assert!(parse(&longest).is_ok());
        assert!(parse(&format!("{longest} ")).is_err());
    }
}
