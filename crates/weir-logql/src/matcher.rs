//! Label matchers (`name="v"`, `name=~"re"`) shared by stream selectors, `drop`/`keep`
//! and string label filters.

use std::fmt::{self, Display, Formatter};
use std::sync::Arc;

use regex::Regex;

use crate::ast::quote;
use crate::error::ParseError;

/// How a [`Matcher`] compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`
    Eq,
    /// `!=`
    Neq,
    /// `=~`: the whole value matches the RE2 regex.
    Re,
    /// `!~`: the whole value does not match.
    Nre,
}

impl MatchOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Neq => "!=",
            MatchOp::Re => "=~",
            MatchOp::Nre => "!~",
        }
    }
}

/// `name op "value"`. A missing label compares as the empty string.
///
/// Regexes are fully anchored (`^(?:value)$`) as in Loki and Prometheus. Build one with
/// [`Matcher::new`], which compiles the regex once; the fields are public for reading.
/// If `value` is changed afterwards, [`Matcher::matches`] notices and compiles the new
/// value on every call (correct, but slow).
#[derive(Clone)]
pub struct Matcher {
    /// The label name.
    pub name: String,
    /// The comparison.
    pub op: MatchOp,
    /// The literal or regex.
    pub value: String,
    compiled: Option<(String, Arc<Regex>)>,
}

pub(crate) fn anchored(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{re})$"))
}

impl Matcher {
    /// Builds a matcher, compiling its regex for `=~`/`!~`.
    ///
    /// # Errors
    /// A [`ParseError`] at position 0 when the regex does not compile.
    pub fn new(
        name: impl Into<String>,
        op: MatchOp,
        value: impl Into<String>,
    ) -> Result<Matcher, ParseError> {
        let value = value.into();
        let compiled = match op {
            MatchOp::Re | MatchOp::Nre => {
                let re = anchored(&value)
                    .map_err(|e| ParseError::new(0, format!("invalid regex {value:?}: {e}")))?;
                Some((value.clone(), Arc::new(re)))
            }
            MatchOp::Eq | MatchOp::Neq => None,
        };
        Ok(Matcher {
            name: name.into(),
            op,
            value,
            compiled,
        })
    }

    fn regex_matches(&self, v: &str) -> bool {
        match &self.compiled {
            Some((src, re)) if *src == self.value => re.is_match(v),
            _ => anchored(&self.value).is_ok_and(|re| re.is_match(v)),
        }
    }

    /// Whether a label value (`""` for a missing label) satisfies the matcher.
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Eq => v == self.value,
            MatchOp::Neq => v != self.value,
            MatchOp::Re => self.regex_matches(v),
            MatchOp::Nre => !self.regex_matches(v),
        }
    }

    /// Whether the label set `labels` satisfies the matcher.
    pub fn matches_labels(&self, labels: &crate::Labels) -> bool {
        self.matches(labels.get(&self.name).map_or("", String::as_str))
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matcher")
            .field("name", &self.name)
            .field("op", &self.op)
            .field("value", &self.value)
            .finish()
    }
}

impl Display for Matcher {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.name, self.op.as_str(), quote(&self.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_are_fully_anchored() {
        let m = Matcher::new("a", MatchOp::Re, "fo+").unwrap();
        assert!(m.matches("foo"));
        assert!(!m.matches("xfoo"));
        assert!(!m.matches("foox"));
        let alt = Matcher::new("a", MatchOp::Re, "a|b").unwrap();
        assert!(alt.matches("b"));
        assert!(!alt.matches("ab"));
    }

    #[test]
    fn a_missing_label_is_the_empty_string() {
        let m = Matcher::new("x", MatchOp::Neq, "v").unwrap();
        assert!(m.matches_labels(&crate::Labels::new()));
        let m = Matcher::new("x", MatchOp::Re, ".*").unwrap();
        assert!(m.matches_labels(&crate::Labels::new()));
    }

    #[test]
    fn a_changed_value_is_recompiled() {
        let mut m = Matcher::new("a", MatchOp::Re, "x").unwrap();
        m.value = "y".into();
        assert!(m.matches("y"));
        assert!(!m.matches("x"));
    }
}
