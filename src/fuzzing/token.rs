//! Fuzz harness for bearer tokens: finding the token in an `Authorization` value, and
//! the verdict on tokens whose header and claims are arbitrary but whose signature is
//! genuine, made with a key of the dev IdP that the policy trusts.

use std::sync::{Arc, OnceLock};

use serde_json::{json, Map, Value};

use crate::auth::{bearer_token, unix_seconds, Authorized, Authorizer, Verdict};
use crate::config;
use crate::demo::idp::{jwks_of, DevIdp};
use crate::demo::pki::KeyKind;

const ISSUER: &str = "https://idp.fuzz.test";
const AUDIENCE: &str = "api";
/// The policy's `leeway`, in seconds.
const LEEWAY: u64 = 60;
/// The client certificate's thumbprint on the connection the tokens arrive on.
const THUMBPRINT: &str = "tYHDk4Ii5yK4N4VJ0-Gq1O9pB3Zqw1h3iB6f0B5Ck1E";

/// The policy the tokens are checked against: `department: engineering` everywhere,
/// and `role: admin` under `/admin` (rule 0).
const POLICY: &str = r#"listen: ["127.0.0.1:1"]
ingress:
  hostname: fuzz.test
  server_tls: {cert_chain: c.pem, private_key: k.pem}
  transport_security: {mode: tls}
  application_auth:
    type: jwt
    issuer: "https://idp.fuzz.test"
    audience: api
    jwks_file: jwks.json
    leeway: 60s
    token_cache_size: 16
    required_claims: {department: engineering}
    path_rules:
      - {prefix: /admin, required_claims: {role: admin}}
  upstream: {backends: ["127.0.0.1:1"]}
"#;

/// Splits `data` at its first newline into a JWT header and claims (each used as it
/// is, JSON or not), signs them with a trusted key (the EdDSA one when the header asks
/// for EdDSA, the ES256 one otherwise), and checks the verdict: a token is allowed only
/// when its signature algorithm is the signing key's, `iss` is the issuer, `aud` is or
/// contains the audience, `exp` has not passed and `nbf` has (give or take the
/// leeway), the required claims hold and any certificate binding names the
/// connection's certificate. A cached verdict is the verdict. `data` itself, used as a
/// token or as an `Authorization` value, is never allowed.
pub fn token(data: &[u8]) {
    let fixture = Fixture::get();
    let (header, claims) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"{}"[..]),
    };

    let signer = match declared_algorithm(header).as_deref() {
        Some("EdDSA") => &fixture.eddsa,
        _ => &fixture.es256,
    };
    let signed = format!("Bearer {}", signer.sign_parts(header, claims));
    let now = unix_seconds();
    for rule in [None, Some(0)] {
        if let Some(user) = fixture.verdict(signed.as_bytes(), rule) {
            let token = Deserved {
                header,
                claims,
                signer,
                now,
                rule,
            };
            token.check(&user);
        }
    }

    check_bearer_token(data);
    let raw = [b"Bearer ".as_slice(), data].concat();
    for value in [data, &raw] {
        let verdict = fixture.verdict(value, None);
        assert!(verdict.is_none(), "an unsigned token was allowed");
    }
}

/// The trusted keys and the policy, made once per process.
struct Fixture {
    authorizer: Arc<Authorizer>,
    es256: DevIdp,
    eddsa: DevIdp,
}

impl Fixture {
    fn get() -> &'static Self {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(Self::new)
    }

    fn new() -> Self {
        let es256 = DevIdp::new(ISSUER, "es", KeyKind::EcdsaP256);
        let eddsa = DevIdp::new(ISSUER, "ed", KeyKind::Ed25519);
        let folder = tempfile::tempdir().expect("a temporary folder");
        let jwks = folder.path().join("jwks.json");
        std::fs::write(jwks, jwks_of(&[&es256, &eddsa])).expect("the JWKS is written");
        let loaded = config::parse(&folder.path().join("edge.yaml"), POLICY).expect("policy");
        let mut problems = loaded.problems();
        let (_, source) = loaded.ingress_sources().remove(0);
        let authorizer = Authorizer::build(&source, &mut problems).flatten();
        assert!(problems.is_empty(), "{}", problems.into_error());
        Self {
            authorizer: authorizer.expect("the policy builds"),
            es256,
            eddsa,
        }
    }

    /// The user a request with this `Authorization` value is allowed as, if it is.
    /// The verdict is asked twice of one cache, and must not change.
    fn verdict(&self, authorization: &[u8], rule: Option<usize>) -> Option<Authorized> {
        let mut cache = self.authorizer.new_cache();
        let ask = |cache: &mut _| {
            let verdict =
                self.authorizer
                    .authorize(&[authorization], Some(THUMBPRINT), cache, rule);
            match verdict {
                Verdict::Allowed(user) => Ok((*user).clone()),
                Verdict::Refused(refusal) => Err(Some(refusal)),
                Verdict::UnknownKey => Err(None),
            }
        };
        let cold = ask(&mut cache);
        let cached = ask(&mut cache);
        assert_eq!(cold, cached, "the cache changed the verdict");
        cold.ok()
    }
}

/// A token that was allowed, and what it was made of.
struct Deserved<'a> {
    header: &'a [u8],
    claims: &'a [u8],
    signer: &'a DevIdp,
    now: u64,
    rule: Option<usize>,
}

impl Deserved<'_> {
    fn check(&self, user: &Authorized) {
        let header: Map<String, Value> =
            serde_json::from_slice(self.header).expect("an allowed token's header is JSON");
        let expected = format!("{:?}", self.signer.algorithm);
        assert_eq!(
            header.get("alg"),
            Some(&json!(expected)),
            "alg is not the key's"
        );
        let claims: Map<String, Value> =
            serde_json::from_slice(self.claims).expect("an allowed token's claims are JSON");

        assert_eq!(claims.get("iss"), Some(&json!(ISSUER)));
        assert_eq!(user.issuer.as_deref(), Some(ISSUER));
        let audience = json!(AUDIENCE);
        let aud_ok = match claims.get("aud") {
            Some(Value::Array(items)) => items.contains(&audience),
            other => other == Some(&audience),
        };
        assert!(aud_ok, "aud {:?}", claims.get("aud"));
        self.check_times(&claims);
        assert!(satisfies(claims.get("department"), "engineering"));
        if self.rule.is_some() {
            assert!(satisfies(claims.get("role"), "admin"));
        }
        if let Some(cnf) = claims.get("cnf") {
            assert_eq!(cnf.get("x5t#S256"), Some(&json!(THUMBPRINT)));
        }
        let subject = claims.get("sub").map(|sub| match sub {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        assert_eq!(user.subject, subject);
    }

    /// `exp` is required and not past; `nbf`, when present, is not ahead. Both with
    /// the leeway, and a second's slack for the clock moving on during the check.
    fn check_times(&self, claims: &Map<String, Value>) {
        let exp = claims.get("exp").and_then(Value::as_f64);
        let exp = exp.expect("an allowed token has a numeric exp");
        assert!(
            exp + (LEEWAY + 1) as f64 >= self.now as f64,
            "expired: {exp}"
        );
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_f64().expect("nbf, when present, is numeric");
            assert!(
                nbf <= (self.now + LEEWAY + 1) as f64,
                "not yet valid: {nbf}"
            );
        }
    }
}

/// Whether a claim is `expected`, or an array holding it.
fn satisfies(claim: Option<&Value>, expected: &str) -> bool {
    let expected = json!(expected);
    match claim {
        Some(Value::Array(items)) => items.contains(&expected),
        other => other == Some(&expected),
    }
}

/// The `alg` a header declares, when it is a JSON object that declares one.
fn declared_algorithm(header: &[u8]) -> Option<String> {
    let header: Map<String, Value> = serde_json::from_slice(header).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

/// A token found in an `Authorization` value is its whole tail after `Bearer` and
/// spaces, and nothing but RFC 6750 `b64token` characters.
fn check_bearer_token(value: &[u8]) {
    let Ok(token) = bearer_token(&[value]) else {
        return;
    };
    assert!(value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "));
    assert!(value.ends_with(token.as_bytes()));
    let between = &value[7..value.len() - token.len()];
    assert!(between.iter().all(|b| *b == b' '));
    let body = token.trim_end_matches('=');
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
    assert!(!body.is_empty() && body.bytes().all(b64), "{token:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAIMS: &[u8] = br#"{"iss":"https://idp.fuzz.test","aud":"api","exp":4102444800,"department":"engineering","role":"admin"}"#;

    #[test]
    fn the_fixture_allows_a_well_made_token_so_the_checks_are_reached() {
        let fixture = Fixture::get();
        let token = fixture
            .es256
            .sign_parts(br#"{"alg":"ES256","kid":"es"}"#, CLAIMS);
        let value = format!("Bearer {token}");
        assert!(fixture.verdict(value.as_bytes(), None).is_some());
        assert!(fixture.verdict(value.as_bytes(), Some(0)).is_some());
    }

    #[test]
    fn a_token_signed_by_a_key_of_another_algorithm_is_refused() {
        let fixture = Fixture::get();
        let token = fixture.eddsa.sign_parts(br#"{"alg":"ES256"}"#, CLAIMS);
        let value = format!("Bearer {token}");
        assert!(fixture.verdict(value.as_bytes(), None).is_none());
    }
}
