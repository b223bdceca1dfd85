//! Kubernetes label selectors, parsed once into requirements that can be matched in process
//! (routes by namespace labels) and checked as the API server parses them (trust
//! distribution's `namespace_selector`, passed to watches), so a typo fails at start-up naming
//! the key instead of every watch failing with 400. A leaf module.

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `k=v`, `k==v`: the label is present with this value.
    Equals(String, String),
    /// `k!=v`: the label is absent or has another value.
    NotEquals(String, String),
    /// `k in (a,b)`: present with one of these values.
    In(String, Vec<String>),
    /// `k notin (a,b)`: absent or with none of these values.
    NotIn(String, Vec<String>),
    /// `k`: present.
    Exists(String),
    /// `!k`: absent.
    Absent(String),
}

/// A parsed selector: every requirement must hold. Read from config text as a string.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

fn name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, n)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                })
                && name(n)
        }
        None => name(k),
    }
}

fn value(v: &str) -> bool {
    v.is_empty() || name(v)
}

impl TryFrom<String> for LabelSelector {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl LabelSelector {
    /// Parses `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-separated.
    pub fn parse(selector: &str) -> Result<Self, String> {
        // Commas separate requirements, except inside a set's parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0i32, 0);
        for (i, c) in selector.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&selector[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
            if !(0..=1).contains(&depth) {
                return Err(format!("unbalanced parentheses in {selector:?}"));
            }
        }
        parts.push(&selector[start..]);
        let mut requirements = Vec::with_capacity(parts.len());
        for r in parts.into_iter().map(str::trim) {
            let bad = || format!("{r:?} is not a label selector requirement");
            let req = if let Some(k) = r.strip_prefix('!') {
                let k = k.trim();
                key(k).then(|| Requirement::Absent(k.to_owned()))
            } else if let Some((k, set, negated)) = r
                .split_once(" notin ")
                .map(|(k, s)| (k, s, true))
                .or_else(|| r.split_once(" in ").map(|(k, s)| (k, s, false)))
            {
                let (k, set) = (k.trim(), set.trim());
                let values = set
                    .strip_prefix('(')
                    .and_then(|s| s.strip_suffix(')'))
                    .map(|inner| inner.split(',').map(|v| v.trim().to_owned()).collect())
                    .filter(|vs: &Vec<String>| vs.iter().all(|v| value(v)));
                match values {
                    Some(vs) if key(k) && negated => Some(Requirement::NotIn(k.to_owned(), vs)),
                    Some(vs) if key(k) => Some(Requirement::In(k.to_owned(), vs)),
                    _ => None,
                }
            } else if let Some((k, v)) = r.split_once("!=") {
                let (k, v) = (k.trim(), v.trim());
                (key(k) && value(v)).then(|| Requirement::NotEquals(k.to_owned(), v.to_owned()))
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                let (k, v) = (k.trim(), v.trim());
                (key(k) && value(v)).then(|| Requirement::Equals(k.to_owned(), v.to_owned()))
            } else {
                key(r).then(|| Requirement::Exists(r.to_owned()))
            };
            requirements.push(req.ok_or_else(bad)?);
        }
        Ok(Self {
            text: selector.to_owned(),
            requirements,
        })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        for ok in [
            "istio-injection=enabled",
            "istio-injection==enabled,team!=infra",
            "istio.io/rev in (canary, stable),!legacy",
            "env notin (dev),tier",
            "example.com/part-of=",
        ] {
            assert!(LabelSelector::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "istio-injection=enabled,",
            "a in canary",
            "a in (b",
            "-bad=x",
            "a=b c",
            "Upper.Case/x=y",
            "a=(b)",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let pci = labels(&[("compliance", "pci"), ("team", "payments")]);
        let none = labels(&[]);
        let m = |s: &str, l: &BTreeMap<String, String>| LabelSelector::parse(s).unwrap().matches(l);
        assert!(m("compliance=pci", &pci));
        assert!(m("compliance==pci,team", &pci));
        assert!(!m("compliance=pci", &none));
        assert!(m("compliance!=pci", &none), "!= matches an absent label");
        assert!(!m("compliance!=pci", &pci));
        assert!(m("team in (payments, risk)", &pci));
        assert!(!m("team in (risk)", &pci));
        assert!(!m("team in (payments)", &none));
        assert!(m("team notin (risk)", &pci));
        assert!(
            m("team notin (risk)", &none),
            "notin matches an absent label"
        );
        assert!(!m("team notin (payments)", &pci));
        assert!(m("!legacy", &pci));
        assert!(!m("!team", &pci));
        assert!(m("compliance=pci,!legacy,team in (payments)", &pci));
    }
}
