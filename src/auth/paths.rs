//! Path rules: which requests need no token, and which need claims beyond the
//! ingress's own. The longest matching prefix decides.
//!
//! A rule is only as good as the path it is matched against: a backend that resolves
//! `/public/../admin`, `/public/%2e%2e/admin`, `/public/..;/admin` or `/%61dmin` to
//! `/admin` would serve a protected path under the wrong rule. So while rules exist the
//! path is matched as a backend would read it (escapes decoded once), and a path that
//! could be read more than one way (dot segments, escaped separators, double encoding,
//! `;`, bytes that are not printable ASCII, doubled slashes) is refused with 400.

use serde_json::Value;

use super::claims::ClaimPolicy;
use crate::config::PathRuleConfig;

/// The most path rules an ingress may have (each is a bit in a cached token's entry).
pub const MAX_RULES: usize = 64;

/// One rule, ready to match.
#[derive(Debug)]
pub struct PathRule {
    /// The prefix, as configured.
    pub prefix: String,
    /// No token is asked for.
    pub public: bool,
    /// Claims required on top of the ingress's own; `None` when there are none.
    pub policy: Option<ClaimPolicy>,
}

/// The rules of an ingress, longest prefix first.
#[derive(Debug, Default)]
pub struct PathRules {
    rules: Vec<PathRule>,
}

/// What a request's path asks of its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathDecision {
    /// The ingress's policy alone.
    Default,
    /// No token.
    Public,
    /// The ingress's policy and the claims of rule number `0`.
    Claims(usize),
}

impl PathRules {
    /// Builds the rules, or says what is wrong with the first bad one, as
    /// `(field under path_rules, problem)`.
    pub fn build(configs: &[PathRuleConfig]) -> Result<Self, (String, String)> {
        if configs.len() > MAX_RULES {
            return Err((String::new(), format!("at most {MAX_RULES} rules")));
        }
        let mut rules = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let field = |name: &str| format!("[{index}].{name}");
            if !config.prefix.starts_with('/')
                || normalized(&config.prefix).as_deref() != Some(&config.prefix)
            {
                let problem = "must start with / and hold only printable ASCII, no %-escapes, \
                               ';', dot segments, backslashes or doubled slashes";
                return Err((field("prefix"), problem.to_owned()));
            }
            if config.public && !config.required_claims.is_empty() {
                let problem = "a public path asks for no token, so for no claims";
                return Err((field("required_claims"), problem.to_owned()));
            }
            let policy = match config.required_claims.is_empty() {
                true => None,
                false => Some(
                    ClaimPolicy::parse(&config.required_claims)
                        .map_err(|error| (field("required_claims"), error))?,
                ),
            };
            rules.push(PathRule {
                prefix: config.prefix.clone(),
                public: config.public,
                policy,
            });
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = rules.iter().find(|rule| !seen.insert(rule.prefix.as_str())) {
            return Err((
                String::new(),
                format!("prefix {} is listed twice", twice.prefix),
            ));
        }
        rules.sort_by_key(|rule| std::cmp::Reverse(rule.prefix.len()));
        Ok(Self { rules })
    }

    /// The rules, longest prefix first.
    pub fn rules(&self) -> &[PathRule] {
        &self.rules
    }

    /// What the request target `target` asks of its token; `Err` when rules exist and
    /// its path is not one they can be matched against safely.
    pub fn decide(&self, target: &str) -> Result<PathDecision, &'static str> {
        if self.rules.is_empty() {
            return Ok(PathDecision::Default);
        }
        let raw = target.split(['?', '#']).next().unwrap_or(target);
        let path = normalized(raw).ok_or(
            "the path holds dot segments, escaped separators, ';', doubled slashes or bytes \
             that are not printable ASCII",
        )?;
        let matched = self.rules.iter().position(|rule| rule.covers(&path));
        Ok(match matched {
            None => PathDecision::Default,
            Some(index) if self.rules[index].public => PathDecision::Public,
            Some(index) => PathDecision::Claims(index),
        })
    }

    /// Which rules' claims `claims` meet, one bit per rule (rules without claims are
    /// met by any token).
    pub fn met_by(&self, claims: &serde_json::Map<String, Value>) -> u64 {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| {
                rule.policy
                    .as_ref()
                    .is_none_or(|policy| policy.first_unmet(claims).is_none())
            })
            .fold(0, |bits, (index, _)| bits | 1 << index)
    }
}

impl PathRule {
    /// Whether this rule covers `path` (already normalized). A public rule covers
    /// narrowly: its prefix exactly, as written, at a segment boundary (`/docs` covers
    /// `/docs` and `/docs/a`, not `/docsx`). A claims rule covers broadly: any path
    /// that starts with its prefix in any case (`/admin` also covers `/adminx` and
    /// `/ADMIN`), as a backend matching prefixes the way nginx does, or ignoring case,
    /// would. Either way a mismatch with the backend errs toward asking for more.
    fn covers(&self, path: &str) -> bool {
        if self.public {
            return match path.strip_prefix(self.prefix.as_str()) {
                Some(rest) => {
                    rest.is_empty() || self.prefix.ends_with('/') || rest.starts_with('/')
                }
                None => false,
            };
        }
        path.len() >= self.prefix.len()
            && path.as_bytes()[..self.prefix.len()].eq_ignore_ascii_case(self.prefix.as_bytes())
    }
}

/// The path as a backend would read it, every `%XX` decoded once; `None` when it could
/// be read in more than one way: an escaped `/` or `\`, an escape left after decoding
/// (double encoding), a malformed escape, `;` (path parameters, which some servers
/// strip), `?` or `#` once decoded, a backslash, a byte that is not printable ASCII, a
/// doubled slash, or a dot segment.
fn normalized(raw: &str) -> Option<String> {
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return None;
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail.get(..2)?;
            let text = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(text, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    let ambiguous =
        |b: &u8| !(0x21..=0x7e).contains(b) || matches!(b, b'%' | b';' | b'?' | b'#' | b'\\');
    if bytes.iter().any(ambiguous) {
        return None;
    }
    let path = String::from_utf8(bytes).ok()?;
    let dot_segment = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    (!path.contains("//") && !dot_segment).then_some(path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn rules(specs: &[(&str, bool, &str)]) -> PathRules {
        let configs: Vec<PathRuleConfig> = specs
            .iter()
            .map(|(prefix, public, claim)| PathRuleConfig {
                prefix: (*prefix).to_owned(),
                public: *public,
                required_claims: match claim.is_empty() {
                    true => BTreeMap::new(),
                    false => [(claim.to_string(), Value::from("yes"))].into(),
                },
            })
            .collect();
        PathRules::build(&configs).expect("rules")
    }

    #[test]
    fn the_longest_prefix_decides_at_segment_boundaries() {
        let rules = rules(&[
            ("/docs", true, ""),
            ("/docs/private", false, "staff"),
            ("/", false, ""),
        ]);
        assert_eq!(rules.decide("/docs"), Ok(PathDecision::Public));
        assert_eq!(rules.decide("/docs/a?x=1"), Ok(PathDecision::Public));
        assert!(matches!(
            rules.decide("/docs/private/x"),
            Ok(PathDecision::Claims(_))
        ));
        assert!(matches!(
            rules.decide("/docsx"),
            Ok(PathDecision::Claims(_))
        ));
        assert!(matches!(
            rules.decide("/other"),
            Ok(PathDecision::Claims(_))
        ));
    }

    #[test]
    fn paths_a_backend_could_read_differently_are_refused() {
        let rules = rules(&[("/public", true, ""), ("/admin", false, "staff")]);
        for path in [
            "/public/../admin",
            "/public/..;/admin",
            "/public/..%3b/admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/%252e%252e/admin",
            "/public/%c0%ae%c0%ae/admin",
            "/public%2f..%2fadmin",
            "/public//admin",
            "/public\\..\\admin",
            "/public/./x",
            "/admin;x/y",
            "/admin%20/x",
            "/admin%3f/x",
            "/public/%zz",
        ] {
            assert!(rules.decide(path).is_err(), "{path}");
        }
        assert_eq!(rules.decide("/public/a.b/..c"), Ok(PathDecision::Public));
        // Escapes of plain characters, case and what follows the prefix do not dodge a
        // claims rule.
        for path in [
            "/%61dmin/x",
            "/admi%6e",
            "/ADMIN/x",
            "/Admin",
            "/adminx",
            "/admin./x",
        ] {
            assert!(
                matches!(rules.decide(path), Ok(PathDecision::Claims(_))),
                "{path}"
            );
        }
        // A public rule is narrow: exact case, at a segment boundary.
        for path in ["/PUBLIC", "/publicity", "/Public/x"] {
            assert_eq!(rules.decide(path), Ok(PathDecision::Default), "{path}");
        }
        assert_eq!(rules.decide("/%70ublic/x"), Ok(PathDecision::Public));
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = |prefix: &str, public: bool, claims: bool| {
            let config = PathRuleConfig {
                prefix: prefix.to_owned(),
                public,
                required_claims: match claims {
                    true => [("a".to_owned(), Value::from(1))].into(),
                    false => BTreeMap::new(),
                },
            };
            PathRules::build(&[config]).is_err()
        };
        assert!(bad("docs", true, false));
        assert!(bad("/a/../b", true, false));
        assert!(bad("/a", true, true));
        assert!(!bad("/a", false, true));
    }
}
