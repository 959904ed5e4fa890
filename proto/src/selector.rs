//! Label selectors in kubectl's syntax: `app=web`, `tier!=db`, `env in (a,b)`, `env notin (c)`,
//! `release` (exists), `!legacy` (does not exist), joined by commas.

use std::collections::HashMap;

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    terms: Vec<Term>,
}

#[derive(Clone, Debug, PartialEq)]
enum Term {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    /// Parses `text`; the error says which term is malformed.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for raw in split_terms(text) {
            let t = raw.trim();
            if t.is_empty() {
                continue;
            }
            let term = if let Some(key) = t.strip_prefix('!') {
                Term::NotExists(label_key(key, t)?)
            } else if let Some((k, v)) = t.split_once("!=") {
                Term::NotEq(label_key(k, t)?, v.trim().to_string())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Term::Eq(label_key(k, t)?, v.trim().to_string())
            } else if let Some((k, set)) = split_set(t, " notin ") {
                Term::NotIn(label_key(&k, t)?, set)
            } else if let Some((k, set)) = split_set(t, " in ") {
                Term::In(label_key(&k, t)?, set)
            } else {
                Term::Exists(label_key(t, t)?)
            };
            terms.push(term);
        }
        Ok(Selector { terms })
    }

    /// True when every term holds for these labels.
    pub fn matches(&self, labels: &HashMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Eq(k, v) => labels.get(k) == Some(v),
            Term::NotEq(k, v) => labels.get(k) != Some(v),
            Term::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Term::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Term::Exists(k) => labels.contains_key(k),
            Term::NotExists(k) => !labels.contains_key(k),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// Splits on commas that are not inside a `( ... )` set.
fn split_terms(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn split_set(t: &str, op: &str) -> Option<(String, Vec<String>)> {
    let (k, rest) = t.split_once(op)?;
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some((
        k.to_string(),
        inner.split(',').map(|v| v.trim().to_string()).collect(),
    ))
}

fn label_key(k: &str, term: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        return Err(format!("label selector: malformed term {term:?}"));
    }
    Ok(k.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_kubectl_operator_matches_as_documented() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("env", "prod")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "tier!=db",
            "env in (prod, dev)",
            "env notin (dev)",
            "app",
            "!legacy",
            "app=web,env in (prod)",
        ];
        for s in yes {
            assert!(Selector::parse(s).unwrap().matches(&l), "{s}");
        }
        let no = [
            "app=db",
            "tier!=front",
            "env in (dev)",
            "env notin (prod,dev)",
            "legacy",
            "!app",
            "app=web,tier=db",
        ];
        for s in no {
            assert!(!Selector::parse(s).unwrap().matches(&l), "{s}");
        }
    }

    #[test]
    fn malformed_terms_are_refused() {
        assert!(Selector::parse("a b=c").is_err());
        assert!(Selector::parse("=x").is_err());
    }
}
