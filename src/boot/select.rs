//! Label selectors: which machines a group claims, and `?selector=` filters.
//!
//! Pure: a selector is parsed once (errors name the column), then matched
//! against a machine's labels. The syntax is Kubernetes' set-based one with
//! OR added, which matchbox users have long asked for:
//!
//! ```text
//! selector    = term *( "||" term )            any term matches
//! term        = requirement *( "," requirement )   every requirement matches
//! requirement = key "=" value | key "==" value | key "!=" value
//!             | key "in" "(" value *( "," value ) ")"
//!             | key "notin" "(" value *( "," value ) ")"
//!             | key                              the label exists
//!             | "!" key                          the label does not exist
//! ```
//!
//! Keys and values are letters, digits and `-_./:`; spaces around tokens
//! are ignored. `!=` and `notin` also match a machine without the label (as
//! in Kubernetes): `rack!=r1` means "not in rack r1", not "has a rack".
//!
//! Specificity: the number of requirements of the term that matched (the
//! largest, when several terms of one selector match). `role=db,rack=r1`
//! (2) is more specific than `role=db` (1); `role=db || rack=r1` is 1.
//! Membership uses it to pick among groups whose selectors all match.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A parsed selector: OR of terms, each an AND of requirements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Vec<Requirement>>,
}

/// One condition on one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Why a selector does not parse, and where (1-based column, in characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector column {column}: {message}")]
pub struct SelectorError {
    pub column: usize,
    pub message: String,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &String| labels.get(k);
        match self {
            Requirement::Equals(k, v) => get(k) == Some(v),
            Requirement::NotEquals(k, v) => get(k) != Some(v),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|l| vs.contains(l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        }
    }
}

impl Selector {
    /// `Some(specificity)` when the labels match, `None` when they do not.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> Option<usize> {
        self.terms
            .iter()
            .filter(|term| term.iter().all(|r| r.matches(labels)))
            .map(Vec::len)
            .max()
    }

    /// The terms (OR) of requirements (AND).
    pub fn terms(&self) -> &[Vec<Requirement>] {
        &self.terms
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::NotExists(k) => write!(f, "!{k}"),
        }
    }
}

/// The canonical form (what is stored and shown): `==` written `=`, one
/// space around `||`, none after commas.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(" || ")?;
            }
            for (j, r) in term.iter().enumerate() {
                if j > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{r}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Parser::new(s)?.selector()
    }
}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Whether `c` may appear in a key or value.
fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':')
}

/// Longest key or value accepted (Kubernetes' label value limit).
const MAX_WORD: usize = 63;
/// Bounds what one selector can cost to match.
const MAX_REQUIREMENTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Eq,
    NotEq,
    Bang,
    Comma,
    Or,
    Open,
    Close,
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "{w:?}"),
            Tok::Eq => f.write_str("'='"),
            Tok::NotEq => f.write_str("'!='"),
            Tok::Bang => f.write_str("'!'"),
            Tok::Comma => f.write_str("','"),
            Tok::Or => f.write_str("'||'"),
            Tok::Open => f.write_str("'('"),
            Tok::Close => f.write_str("')'"),
            Tok::End => f.write_str("the end"),
        }
    }
}

/// Tokens with their 1-based columns.
fn lex(s: &str) -> Result<Vec<(usize, Tok)>, SelectorError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |i: usize, message: String| SelectorError {
        column: i + 1,
        message,
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let (tok, len) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('=', Some('=')) => (Tok::Eq, 2),
            ('=', _) => (Tok::Eq, 1),
            ('!', Some('=')) => (Tok::NotEq, 2),
            ('!', _) => (Tok::Bang, 1),
            ('|', Some('|')) => (Tok::Or, 2),
            ('|', _) => return Err(err(i, "a single '|': write '||' for OR".into())),
            (',', _) => (Tok::Comma, 1),
            ('(', _) => (Tok::Open, 1),
            (')', _) => (Tok::Close, 1),
            (c, _) if word_char(c) => {
                let len = chars[i..].iter().take_while(|c| word_char(**c)).count();
                if len > MAX_WORD {
                    return Err(err(
                        i,
                        format!("a key or value is at most {MAX_WORD} characters"),
                    ));
                }
                (Tok::Word(chars[i..i + len].iter().collect()), len)
            }
            (c, _) => {
                return Err(err(
                    i,
                    format!("unexpected {c:?} (keys and values are letters, digits and -_./:)"),
                ))
            }
        };
        out.push((i + 1, tok));
        i += len;
    }
    out.push((chars.len() + 1, Tok::End));
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
}

impl Parser {
    fn new(s: &str) -> Result<Self, SelectorError> {
        Ok(Self {
            toks: lex(s)?,
            pos: 0,
        })
    }

    fn peek(&self) -> &Tok {
        &self.toks[self.pos].1
    }

    fn column(&self) -> usize {
        self.toks[self.pos].0
    }

    fn bump(&mut self) -> Tok {
        let t = self.toks[self.pos].1.clone();
        if t != Tok::End {
            self.pos += 1;
        }
        t
    }

    fn fail<T>(&self, what: &str) -> Result<T, SelectorError> {
        Err(SelectorError {
            column: self.column(),
            message: format!("expected {what}, found {}", self.peek()),
        })
    }

    fn selector(mut self) -> Result<Selector, SelectorError> {
        if *self.peek() == Tok::End {
            return self.fail("a requirement (the selector is empty)");
        }
        let mut terms = vec![self.term()?];
        while *self.peek() == Tok::Or {
            self.bump();
            terms.push(self.term()?);
        }
        if *self.peek() != Tok::End {
            return self.fail("',' or '||'");
        }
        if terms.iter().map(Vec::len).sum::<usize>() > MAX_REQUIREMENTS {
            return Err(SelectorError {
                column: 1,
                message: format!("at most {MAX_REQUIREMENTS} requirements"),
            });
        }
        Ok(Selector { terms })
    }

    fn term(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut reqs = vec![self.requirement()?];
        while *self.peek() == Tok::Comma {
            self.bump();
            reqs.push(self.requirement()?);
        }
        Ok(reqs)
    }

    fn word(&mut self, what: &str) -> Result<String, SelectorError> {
        match self.peek() {
            Tok::Word(w) => {
                let w = w.clone();
                self.bump();
                Ok(w)
            }
            _ => self.fail(what),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if *self.peek() == Tok::Bang {
            self.bump();
            return Ok(Requirement::NotExists(self.word("a label key after '!'")?));
        }
        let key = self.word("a label key")?;
        match self.peek().clone() {
            Tok::Eq => {
                self.bump();
                Ok(Requirement::Equals(key, self.word("a value after '='")?))
            }
            Tok::NotEq => {
                self.bump();
                Ok(Requirement::NotEquals(
                    key,
                    self.word("a value after '!='")?,
                ))
            }
            Tok::Word(op) if op == "in" || op == "notin" => {
                self.bump();
                let values = self.set(&op)?;
                Ok(if op == "in" {
                    Requirement::In(key, values)
                } else {
                    Requirement::NotIn(key, values)
                })
            }
            Tok::Word(_) => self.fail("'=', '!=', 'in', 'notin', ',' or '||' after a key"),
            _ => Ok(Requirement::Exists(key)),
        }
    }

    fn set(&mut self, op: &str) -> Result<Vec<String>, SelectorError> {
        if *self.peek() != Tok::Open {
            return self.fail(&format!("'(' after '{op}'"));
        }
        self.bump();
        let mut values = vec![self.word("a value")?];
        while *self.peek() == Tok::Comma {
            self.bump();
            values.push(self.word("a value after ','")?);
        }
        if *self.peek() != Tok::Close {
            return self.fail("',' or ')'");
        }
        self.bump();
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matching_table() {
        let db_r1 = labels(&[("role", "db"), ("rack", "r1")]);
        let web = labels(&[("role", "web")]);
        let none = labels(&[]);
        #[rustfmt::skip]
        let table: &[(&str, &BTreeMap<String, String>, Option<usize>)] = &[
            ("role=db",                       &db_r1, Some(1)),
            ("role==db",                      &db_r1, Some(1)),
            ("role=db",                       &web,   None),
            ("role!=db",                      &web,   Some(1)),
            ("role!=db",                      &none,  Some(1)),
            ("role!=db",                      &db_r1, None),
            ("role in (db,web)",              &web,   Some(1)),
            ("role in (db, cache)",           &web,   None),
            ("role in (db)",                  &none,  None),
            ("role notin (db)",               &web,   Some(1)),
            ("role notin (db)",               &none,  Some(1)),
            ("role notin (db,web)",           &web,   None),
            ("rack",                          &db_r1, Some(1)),
            ("rack",                          &web,   None),
            ("!rack",                         &web,   Some(1)),
            ("!rack",                         &db_r1, None),
            ("role=db,rack=r1",               &db_r1, Some(2)),
            ("role=db,rack=r2",               &db_r1, None),
            ("role=db , rack , !gpu",         &db_r1, Some(3)),
            ("role=web || role=db,rack=r1",   &db_r1, Some(2)),
            ("role=web || role=db,rack=r1",   &web,   Some(1)),
            ("role=web || role=db,rack=r1",   &none,  None),
            ("role=db,rack=r1 || role=db",    &db_r1, Some(2)),
            ("role=cache || !role",           &none,  Some(1)),
            ("zone=eu-west.1/a:b",            &labels(&[("zone", "eu-west.1/a:b")]), Some(1)),
        ];
        for (text, l, want) in table {
            let sel: Selector = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(sel.matches(l), *want, "{text} on {l:?}");
        }
    }

    #[test]
    fn canonical_form_round_trips() {
        #[rustfmt::skip]
        let table = [
            ("role==db",                         "role=db"),
            ("  role = db ,rack in ( r1 , r2 )", "role=db,rack in (r1,r2)"),
            ("a||b",                             "a || b"),
            ("! gpu , x notin (1)",              "!gpu,x notin (1)"),
            ("k!=v||k=w,j",                      "k!=v || k=w,j"),
        ];
        for (text, canonical) in table {
            let sel: Selector = text.parse().unwrap();
            assert_eq!(sel.to_string(), canonical, "{text}");
            assert_eq!(canonical.parse::<Selector>().unwrap(), sel, "{canonical}");
        }
    }

    #[test]
    fn errors_name_the_column() {
        #[rustfmt::skip]
        let table = [
            ("",                 1,  "expected a requirement (the selector is empty), found the end"),
            ("   ",              4,  "expected a requirement (the selector is empty), found the end"),
            ("role=",            6,  "expected a value after '=', found the end"),
            ("role=db,",         9,  "expected a label key, found the end"),
            ("role=db,,x",       9,  "expected a label key, found ','"),
            ("role db",          6,  "expected '=', '!=', 'in', 'notin', ',' or '||' after a key, found \"db\""),
            ("role in db",       9,  "expected '(' after 'in', found \"db\""),
            ("role in (db",      12, "expected ',' or ')', found the end"),
            ("role in ()",       10, "expected a value, found ')'"),
            ("role notin (a,)",  15, "expected a value after ',', found ')'"),
            ("a=b | c=d",        5,  "a single '|': write '||' for OR"),
            ("a=b ||",           7,  "expected a label key, found the end"),
            ("|| a",             1,  "expected a label key, found '||'"),
            ("!",                2,  "expected a label key after '!', found the end"),
            ("!=x",              1,  "expected a label key, found '!='"),
            ("a=b)",             4,  "expected ',' or '||', found ')'"),
            ("rôle=db",          2,  "unexpected 'ô' (keys and values are letters, digits and -_./:)"),
            ("a=\"b\"",          3,  "unexpected '\"' (keys and values are letters, digits and -_./:)"),
        ];
        for (text, column, message) in table {
            let err = text.parse::<Selector>().expect_err(text);
            assert_eq!(
                (err.column, err.message.as_str()),
                (column, message),
                "{text:?}"
            );
        }
        let long = format!("k={}", "v".repeat(64));
        assert_eq!(long.parse::<Selector>().unwrap_err().column, 3);
        let many = vec!["k"; 65].join(",");
        assert!(many.parse::<Selector>().is_err());
    }

    #[test]
    fn serde_is_the_canonical_string() {
        let sel: Selector = serde_json::from_str("\"role==db || rack\"").unwrap();
        assert_eq!(serde_json::to_string(&sel).unwrap(), "\"role=db || rack\"");
        let bad = serde_json::from_str::<Selector>("\"role in\"").unwrap_err();
        assert!(bad.to_string().contains("column 8"), "{bad}");
    }
}
