//! Claim paths and the required-claims policy.
//!
//! A path names a claim, or a claim nested in objects: `department`, `realm.roles`.
//! A name that itself contains dots (or brackets) is written in brackets and double
//! quotes: `["https://srrrs.com/team"]`, `resource_access["api-gateway"].roles`.

use serde_json::{Map, Value};

/// A parsed claim path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    text: String,
    segments: Vec<String>,
}

impl ClaimPath {
    /// Parses the path syntax above.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        let mut expect_segment = true;
        while !rest.is_empty() {
            if let Some(quoted) = rest.strip_prefix("[\"") {
                let end = quoted
                    .find("\"]")
                    .ok_or("a bracketed name needs a closing \"]")?;
                segments.push(quoted[..end].to_owned());
                rest = &quoted[end + 2..];
                expect_segment = false;
            } else if let Some(after) = rest.strip_prefix('.') {
                if expect_segment {
                    return Err("empty name in the path".into());
                }
                rest = after;
                expect_segment = true;
                if !rest.starts_with("[\"") && (rest.is_empty() || rest.starts_with('.')) {
                    return Err("empty name in the path".into());
                }
            } else {
                if !expect_segment {
                    return Err("names must be separated by '.'".into());
                }
                let end = rest.find(['.', '[', ']', '"']).unwrap_or(rest.len());
                if end == 0 {
                    return Err(format!("unexpected {:?}", &rest[..1]));
                }
                segments.push(rest[..end].to_owned());
                rest = &rest[end..];
                expect_segment = false;
            }
        }
        if segments.is_empty() {
            return Err("empty claim path".into());
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `claims`.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        rest.iter().try_fold(claims.get(first)?, |value, name| {
            value.as_object()?.get(name)
        })
    }
}

/// Claims a token must carry, each with the value it must equal.
#[derive(Debug, Clone, Default)]
pub struct ClaimPolicy {
    required: Vec<(ClaimPath, Value)>,
}

impl ClaimPolicy {
    /// A policy from (path, expected value) pairs. An expected value is a string, a
    /// number, a boolean, or an array of them (all of which the claim must contain).
    pub fn new(required: Vec<(ClaimPath, Value)>) -> Result<Self, String> {
        for (path, value) in &required {
            let scalar =
                |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
            let valid = scalar(value)
                || value
                    .as_array()
                    .is_some_and(|items| items.iter().all(scalar));
            if !valid {
                return Err(format!(
                    "{}: expected a string, number, boolean or a list of them",
                    path.as_str()
                ));
            }
        }
        Ok(Self { required })
    }

    /// A policy from the config's `required_claims`: claim path to expected value.
    pub fn parse(required: &std::collections::BTreeMap<String, Value>) -> Result<Self, String> {
        let mut parsed = Vec::with_capacity(required.len());
        for (path, value) in required {
            let claim = ClaimPath::parse(path)
                .map_err(|error| format!("{path}: not a claim path: {error}"))?;
            parsed.push((claim, value.clone()));
        }
        Self::new(parsed)
    }

    /// The first required claim `claims` does not satisfy.
    pub fn first_unmet<'a>(&'a self, claims: &Map<String, Value>) -> Option<&'a ClaimPath> {
        self.required
            .iter()
            .find(|(path, expected)| {
                !path
                    .lookup(claims)
                    .is_some_and(|actual| satisfies(actual, expected))
            })
            .map(|(path, _)| path)
    }
}

/// Whether `actual` meets `expected`: equal scalars, or an array containing it (or,
/// for an expected array, containing every item of it).
fn satisfies(actual: &Value, expected: &Value) -> bool {
    match expected {
        Value::Array(items) => items.iter().all(|item| satisfies(actual, item)),
        _ => match actual {
            Value::Array(values) => values.iter().any(|value| same_scalar(value, expected)),
            _ => same_scalar(actual, expected),
        },
    }
}

fn same_scalar(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a == b,
            _ => a.as_f64() == b.as_f64(),
        },
        _ => actual == expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn paths_parse_plain_nested_and_bracketed_names() {
        assert_eq!(ClaimPath::parse("a").unwrap().segments, ["a"]);
        assert_eq!(ClaimPath::parse("a.b.c").unwrap().segments, ["a", "b", "c"]);
        assert_eq!(
            ClaimPath::parse("[\"https://x.io/team\"]")
                .unwrap()
                .segments,
            ["https://x.io/team"]
        );
        assert_eq!(
            ClaimPath::parse("ra[\"api.gw\"].roles").unwrap().segments,
            ["ra", "api.gw", "roles"]
        );
        for bad in ["", ".a", "a.", "a..b", "a[\"b", "a\"b", "[\"x\"]y"] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn required_claims_match_scalars_and_array_members() {
        let policy = ClaimPolicy::new(vec![
            (
                ClaimPath::parse("department").unwrap(),
                json!("engineering"),
            ),
            (ClaimPath::parse("level").unwrap(), json!(3)),
            (ClaimPath::parse("realm.roles").unwrap(), json!("admin")),
            (ClaimPath::parse("[\"x.io/ok\"]").unwrap(), json!(true)),
        ])
        .unwrap();
        let good = claims(json!({
            "department": "engineering", "level": 3.0,
            "realm": {"roles": ["user", "admin"]}, "x.io/ok": true
        }));
        assert_eq!(policy.first_unmet(&good), None);

        let mut other = good.clone();
        other.insert("department".into(), json!("sales"));
        assert_eq!(policy.first_unmet(&other).unwrap().as_str(), "department");
        let mut missing = good.clone();
        missing.remove("x.io/ok");
        assert_eq!(
            policy.first_unmet(&missing).unwrap().as_str(),
            "[\"x.io/ok\"]"
        );
        let mut typed = good;
        typed.insert("level".into(), json!("3"));
        assert_eq!(policy.first_unmet(&typed).unwrap().as_str(), "level");
    }

    #[test]
    fn objects_and_nulls_cannot_be_required() {
        let path = ClaimPath::parse("a").unwrap();
        assert!(ClaimPolicy::new(vec![(path.clone(), json!({"b": 1}))]).is_err());
        assert!(ClaimPolicy::new(vec![(path, Value::Null)]).is_err());
    }
}
