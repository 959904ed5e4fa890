//! Listener rules: which action a request gets, from its host and path, as an application load
//! balancer's rules (first match in order wins; a rule's given conditions must all match).

use crate::config::{Action, RuleConfig};

/// The action for a request to `host` (the Host header, port and all) and `path` (no query):
/// the first matching rule's, or `None` for the listener's default.
pub fn route<'a>(rules: &'a [RuleConfig], host: &str, path: &str) -> Option<&'a Action> {
    let host = strip_port(host);
    rules
        .iter()
        .find(|rule| matches(rule, host, path))
        .map(|rule| &rule.action)
}

fn matches(rule: &RuleConfig, host: &str, path: &str) -> bool {
    if rule.host.is_none() && rule.path_prefix.is_none() && rule.path_pattern.is_none() {
        return false;
    }
    rule.host
        .as_deref()
        .is_none_or(|want| glob(&want.to_ascii_lowercase(), &host.to_ascii_lowercase()))
        && rule
            .path_prefix
            .as_deref()
            .is_none_or(|prefix| path.starts_with(prefix))
        && rule
            .path_pattern
            .as_deref()
            .is_none_or(|pattern| glob(pattern, path))
}

/// `host:port` → `host`, `[v6]:port` → `[v6]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Matches `text` against `pattern`, where `*` is any run of characters and `?` one.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // The classic greedy match with one backtrack point: linear for patterns without '*'.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(
        host: Option<&str>,
        prefix: Option<&str>,
        pattern: Option<&str>,
        to: &str,
    ) -> RuleConfig {
        RuleConfig {
            host: host.map(Into::into),
            path_prefix: prefix.map(Into::into),
            path_pattern: pattern.map(Into::into),
            action: Action::Forward(to.into()),
        }
    }

    fn to(action: Option<&Action>) -> Option<&str> {
        match action {
            Some(Action::Forward(g)) => Some(g),
            _ => None,
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let rules = [
            rule(Some("api.example.com"), None, None, "api"),
            rule(None, Some("/static/"), None, "static"),
            rule(Some("*.example.com"), Some("/admin"), None, "admin"),
            rule(None, None, Some("/img/*.png"), "images"),
        ];
        assert_eq!(
            to(route(&rules, "API.example.com:8080", "/static/x")),
            Some("api")
        );
        assert_eq!(
            to(route(&rules, "www.example.com", "/static/x")),
            Some("static")
        );
        assert_eq!(
            to(route(&rules, "www.example.com", "/admin/users")),
            Some("admin")
        );
        assert_eq!(to(route(&rules, "example.org", "/admin/users")), None);
        assert_eq!(to(route(&rules, "x", "/img/a/b.png")), Some("images"));
        assert_eq!(to(route(&rules, "x", "/img/a.jpg")), None);
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("a*b?c", "aXXbYc"));
        assert!(!glob("a*b?c", "aXXbc"));
        assert!(glob("*.example.com", "www.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("/a/*/c*", "/a/b/c"));
    }

    /// A reference matcher: plain recursion, exponential but obviously right.
    fn reference(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, _) => t.is_empty(),
            (Some('*'), _) => reference(&p[1..], t) || (!t.is_empty() && reference(p, &t[1..])),
            (Some('?'), Some(_)) => reference(&p[1..], &t[1..]),
            (Some(c), Some(d)) if c == d => reference(&p[1..], &t[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_reference(p in "[ab*?]{0,8}", t in "[ab]{0,10}") {
            let (pc, tc): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
            prop_assert_eq!(glob(&p, &t), reference(&pc, &tc));
        }
    }
}
