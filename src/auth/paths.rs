//! Path rules: which requests need no token, and which need claims beyond the
//! ingress's own. The longest matching prefix decides.
//!
//! A rule is only as good as the path it is matched against: a backend that resolves
//! `/public/../admin`, `/public/%2e%2e/admin` or `/public/..;/admin` to `/admin` would
//! serve a protected path under a public rule. So while rules exist, a path whose
//! meaning a backend could change (dot segments, encoded dots, slashes or backslashes,
//! doubled slashes) is refused with 400 rather than matched.

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
            if !config.prefix.starts_with('/') || !is_canonical(&config.prefix) {
                let problem = "must start with / and hold no dot segments, %-escapes of \
                               . / or \\, backslashes or doubled slashes";
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
        let path = target.split(['?', '#']).next().unwrap_or(target);
        if !is_canonical(path) {
            return Err("the path holds dot segments, escaped separators or doubled slashes");
        }
        let matched = self
            .rules
            .iter()
            .position(|rule| covers(&rule.prefix, path));
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

/// Whether `prefix` covers `path`: the same, or `path` continues below it.
fn covers(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// A path no backend can read as another: no dot segments (also with `;` parameters,
/// which some servers strip), no escaped `.`, `/` or `\`, no backslash, no `//`.
fn is_canonical(path: &str) -> bool {
    if path.contains("//") || path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|escape| lower.contains(escape))
    {
        return false;
    }
    path.split('/').all(|segment| {
        let name = segment.split(';').next().unwrap_or(segment);
        name != "." && name != ".."
    })
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
        let rules = rules(&[("/public", true, "")]);
        for path in [
            "/public/../admin",
            "/public/..;/admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public%2f..%2fadmin",
            "/public//admin",
            "/public\\..\\admin",
            "/public/./x",
        ] {
            assert!(rules.decide(path).is_err(), "{path}");
        }
        assert_eq!(rules.decide("/public/a.b/..c"), Ok(PathDecision::Public));
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
