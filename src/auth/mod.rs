//! Per-request user authorization: the bearer token, its signature (JWKS), its standard
//! claims (iss, aud, exp, nbf) and the required-claims policy. It takes header values
//! and returns a verdict, knowing nothing of HTTP/1.1 framing, so that an HTTP/2 path
//! can use it unchanged. What the client is answered is decided in `http::response`.

mod bearer;
pub mod cache;
pub mod claims;
pub mod fetch;
pub mod jwks;
pub mod key_store;
pub mod paths;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use paths::{PathDecision, PathRules};

use crate::config::{
    ApplicationAuthConfig, ApplicationAuthKind, CertificateBinding, IngressSource, Problems,
};
use crate::reload::Lifetime;
pub use bearer::bearer_token;
use cache::{CachedToken, TokenCache};
use claims::{ClaimPath, ClaimPolicy};
use fetch::{FetchSettings, KeySource};
use key_store::KeyStore;

/// Why a request's token was not accepted. Each maps to one answer (RFC 6750 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// No bearer token (401 with a bare challenge).
    MissingToken,
    /// Malformed or repeated credentials (400 `invalid_request`).
    InvalidRequest(&'static str),
    /// The token is not valid (401 `invalid_token`).
    InvalidToken(&'static str),
    /// A valid token that fails the claim policy (403 `insufficient_scope`).
    InsufficientScope,
}

impl AuthRefusal {
    /// The metric label and log value.
    pub fn label(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(_) => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
        }
    }
}

/// The user a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    /// `sub`.
    pub subject: Option<String>,
    /// `iss`.
    pub issuer: Option<String>,
    /// The `kid` that verified the token.
    pub kid: Option<String>,
    /// The values of the claims passed on to backends, in the configured order.
    pub exported: Vec<Option<String>>,
}

/// What the check of one request concluded.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Admitted, as this user.
    Allowed(Rc<Authorized>),
    /// Refused.
    Refused(AuthRefusal),
    /// The token names a `kid` the key set lacks: fetching the keys again may help.
    UnknownKey,
}

/// The token policy of an ingress, shared by every worker.
#[derive(Debug)]
pub struct Authorizer {
    issuer: String,
    binding: CertificateBinding,
    validations: Vec<(Algorithm, Validation)>,
    policy: ClaimPolicy,
    paths: PathRules,
    exported: Vec<ClaimPath>,
    keys: Arc<KeyStore>,
    leeway: u64,
    cache_size: usize,
    source: KeySource,
    fetch: FetchSettings,
}

impl Authorizer {
    /// Builds the token policy from `ingress.application_auth`; `None` when there is no
    /// per-request check. Problems are recorded against their fields.
    pub fn build(loaded: &IngressSource, problems: &mut Problems) -> Option<Option<Arc<Self>>> {
        let Some(config) = &loaded.ingress.application_auth else {
            return Some(None);
        };
        if config.kind == ApplicationAuthKind::None {
            return Some(None);
        }
        let field = |name: &str| format!("ingress.application_auth.{name}");
        let before = problems.len();

        let issuer = required(config.issuer.as_deref(), &field("issuer"), problems);
        let audience = required(config.audience.as_deref(), &field("audience"), problems);
        let algorithms = jwks::parse_algorithms(&config.algorithms)
            .map_err(|error| problems.push(&field("algorithms"), error))
            .unwrap_or_default();
        let policy = claim_policy(config, problems);
        let paths = PathRules::build(&config.path_rules)
            .map_err(|(at, problem)| problems.push(&field(&format!("path_rules{at}")), problem))
            .ok();
        let exported = exported_claims(loaded, problems);
        let source = key_source(loaded, config, problems);
        let roots = fetch_roots(loaded, config, problems);
        if problems.len() > before {
            return None;
        }

        let (Some(issuer), Some(audience), Some(policy), Some(paths), Some(source)) =
            (issuer, audience, policy, paths, source)
        else {
            return None;
        };
        let leeway = config.leeway.as_secs();
        let validations = algorithms
            .iter()
            .map(|alg| (*alg, validation(*alg, issuer, audience, leeway)))
            .collect();
        let fetch = FetchSettings {
            algorithms,
            fetcher: crate::fetch::Fetcher {
                roots,
                timeout: config.fetch_timeout,
                max_body: fetch::MAX_DOCUMENT,
                https_only: true,
            },
            refresh_interval: config.refresh_interval,
            min_refresh: config.min_refresh_interval,
            max_refresh: config.max_refresh_interval,
        };
        let authorizer = Self {
            issuer: issuer.to_owned(),
            binding: config.certificate_binding,
            validations,
            policy,
            paths,
            exported,
            keys: KeyStore::new(config.unknown_kid_cooldown),
            leeway,
            cache_size: config.token_cache_size,
            source,
            fetch,
        };
        if let KeySource::File(_) = authorizer.source {
            if let Err(error) =
                fetch::load_now(&authorizer.source, &authorizer.fetch, &authorizer.keys)
            {
                problems.push(&field("jwks_file"), error);
                return None;
            }
        }
        Some(Some(Arc::new(authorizer)))
    }

    /// Fetches the keys once, now, as `check` does to tell whether the IdP is reachable.
    pub fn fetch_keys_now(&self) -> Result<usize, String> {
        fetch::load_now(&self.source, &self.fetch, &self.keys)
    }

    /// Starts the background fetcher that keeps the keys fresh, until `lifetime` ends.
    pub fn start_refreshing(&self, lifetime: Lifetime) -> std::io::Result<()> {
        fetch::spawn(
            self.source.clone(),
            self.fetch.clone(),
            self.keys.clone(),
            lifetime,
        )
    }

    /// The shared key set.
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// A verified-token cache sized for this policy, for one worker.
    pub fn new_cache(&self) -> TokenCache {
        TokenCache::new(self.cache_size)
    }

    /// The claim paths whose values are passed on, in order.
    pub fn exported_claims(&self) -> &[ClaimPath] {
        &self.exported
    }

    /// What a request target's path asks of its token (see [`PathRules`]).
    pub fn decide_path(&self, target: &str) -> Result<PathDecision, &'static str> {
        self.paths.decide(target)
    }

    /// Checks the `Authorization` field values of one request.
    /// `certificate` is the connection's client-certificate thumbprint (base64url
    /// SHA-256, RFC 8705 §3.1), when it has one.
    pub fn authorize(
        &self,
        authorization: &[&[u8]],
        certificate: Option<&str>,
        cache: &mut TokenCache,
        rule: Option<usize>,
    ) -> Verdict {
        let token = match bearer_token(authorization) {
            Ok(token) => token,
            Err(refusal) => return Verdict::Refused(refusal),
        };
        let now = unix_seconds();
        let keys = self.keys.snapshot();
        if let Some(cached) = cache.get(token, keys.generation) {
            return self.replay(token, cached.clone(), certificate, cache, now, rule);
        }
        match self.verify(token, &keys.jwks) {
            Ok(verified) => {
                let entry = self.judge(&verified.claims, verified.kid);
                let verdict = self.replay(token, entry.clone(), certificate, cache, now, rule);
                if matches!(
                    verdict,
                    Verdict::Allowed(_) | Verdict::Refused(AuthRefusal::InsufficientScope)
                ) {
                    cache.insert(token, entry, now, self.leeway);
                }
                verdict
            }
            Err(Unverified::UnknownKid) => Verdict::UnknownKey,
            Err(Unverified::Invalid(reason)) => Verdict::Refused(AuthRefusal::InvalidToken(reason)),
        }
    }

    /// The verdict for a token whose signature has been verified.
    fn replay(
        &self,
        token: &str,
        entry: CachedToken,
        certificate: Option<&str>,
        cache: &mut TokenCache,
        now: u64,
        rule: Option<usize>,
    ) -> Verdict {
        if entry.expires.saturating_add(self.leeway) < now {
            cache.remove(token);
            return Verdict::Refused(AuthRefusal::InvalidToken("token expired"));
        }
        if entry
            .not_before
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Verdict::Refused(AuthRefusal::InvalidToken("token not yet valid"));
        }
        if let Err(reason) = self.check_binding(entry.bound_to.as_deref(), certificate) {
            return Verdict::Refused(AuthRefusal::InvalidToken(reason));
        }
        let rule_met = rule.is_none_or(|rule| entry.rules_met & (1 << rule) != 0);
        match entry.user {
            Some(user) if rule_met => Verdict::Allowed(user),
            _ => Verdict::Refused(AuthRefusal::InsufficientScope),
        }
    }

    /// RFC 8705 §3: a bound token is good only on a connection with that certificate.
    fn check_binding(
        &self,
        bound_to: Option<&str>,
        certificate: Option<&str>,
    ) -> Result<(), &'static str> {
        match (bound_to, certificate) {
            (Some(bound), Some(actual)) if bound == actual => Ok(()),
            (Some(_), _) => Err("the token is bound to another certificate"),
            (None, _) if self.binding == CertificateBinding::Required => {
                Err("the token is not bound to the client certificate")
            }
            (None, _) => Ok(()),
        }
    }

    /// Verifies the signature and the standard claims.
    fn verify(&self, token: &str, jwks: &jwks::Jwks) -> Result<Verified, Unverified> {
        let invalid = Unverified::Invalid;
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        let validation = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, validation)| validation)
            .ok_or(invalid("signature algorithm not accepted"))?;
        if jwks.keys.is_empty() {
            return Err(invalid("no signing keys are available"));
        }
        let kid = header.kid.as_deref();
        if kid.is_some_and(|kid| !jwks.knows_kid(kid)) {
            return Err(Unverified::UnknownKid);
        }

        let mut outcome = Err(invalid("no key accepts this algorithm"));
        for key in jwks.candidates(kid, header.alg) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                // jsonwebtoken also accepts an array holding the issuer; RFC 7519
                // §4.1.1 makes `iss` one string, matched exactly here.
                Ok(data)
                    if data.claims.get("iss").and_then(Value::as_str) != Some(&self.issuer) =>
                {
                    return Err(invalid("wrong issuer"));
                }
                Ok(data) => {
                    return Ok(Verified {
                        claims: data.claims,
                        kid: key.kid.clone(),
                    })
                }
                Err(error) if *error.kind() == ErrorKind::InvalidSignature => {
                    outcome = Err(invalid("invalid signature"));
                }
                Err(error) => return Err(invalid(describe(error.kind()))),
            }
        }
        outcome
    }

    /// The cache entry for verified claims: the identity, unless the policy refuses it.
    fn judge(&self, claims: &Map<String, Value>, kid: Option<String>) -> CachedToken {
        let expires = claims.get("exp").and_then(numeric_date).unwrap_or(0);
        let not_before = claims.get("nbf").and_then(numeric_date);
        let bound_to = claims.get("cnf").map(|cnf| {
            // A confirmation that is not a string thumbprint binds to nothing that matches.
            cnf.get("x5t#S256")
                .and_then(Value::as_str)
                .unwrap_or("(unreadable cnf)")
                .to_owned()
        });
        if let Some(unmet) = self.policy.first_unmet(claims) {
            tracing::debug!(claim = unmet.as_str(), "token fails the claim policy");
            return CachedToken {
                user: None,
                expires,
                not_before,
                bound_to,
                rules_met: 0,
            };
        }
        let text = |value: Option<&Value>| value.map(claim_text);
        let user = Authorized {
            subject: text(claims.get("sub")),
            issuer: text(claims.get("iss")),
            kid,
            exported: self
                .exported
                .iter()
                .map(|path| text(path.lookup(claims)))
                .collect(),
        };
        CachedToken {
            user: Some(Rc::new(user)),
            expires,
            not_before,
            bound_to,
            rules_met: self.paths.met_by(claims),
        }
    }
}

/// Claims whose signature and standard claims checked out.
struct Verified {
    claims: Map<String, Value>,
    kid: Option<String>,
}

/// Why a token's signature or standard claims did not check out.
enum Unverified {
    /// It names a `kid` the key set lacks.
    UnknownKid,
    /// It is not valid, for this reason.
    Invalid(&'static str),
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional, truncated to whole ones.
fn numeric_date(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_f64().filter(|v| *v >= 0.0).map(|v| v as u64))
}

/// A claim as header text: strings as they are, anything else as JSON.
fn claim_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "the exp claim is required",
            "iss" => "the iss claim is required",
            "aud" => "the aud claim is required",
            _ => "a required claim is missing",
        },
        ErrorKind::InvalidClaimFormat(_) => "malformed claims",
        ErrorKind::InvalidAlgorithm => "signature algorithm not accepted",
        ErrorKind::InvalidSignature => "invalid signature",
        _ => "malformed token",
    }
}

fn validation(alg: Algorithm, issuer: &str, audience: &str, leeway: u64) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.leeway = leeway;
    validation
}

fn required<'a>(value: Option<&'a str>, field: &str, problems: &mut Problems) -> Option<&'a str> {
    match value {
        Some(value) if !value.is_empty() => Some(value),
        _ => {
            problems.push(field, "required when type is jwt");
            None
        }
    }
}

fn claim_policy(config: &ApplicationAuthConfig, problems: &mut Problems) -> Option<ClaimPolicy> {
    ClaimPolicy::parse(&config.required_claims)
        .map_err(|error| problems.push("ingress.application_auth.required_claims", error))
        .ok()
}

fn exported_claims(loaded: &IngressSource, problems: &mut Problems) -> Vec<ClaimPath> {
    let claims = &loaded.ingress.identity_headers.claims;
    let mut paths = Vec::new();
    for path in claims.keys() {
        match ClaimPath::parse(path) {
            Ok(parsed) => paths.push(parsed),
            Err(error) => problems.push(
                &format!("ingress.identity_headers.claims.{path}"),
                format!("not a claim path: {error}"),
            ),
        }
    }
    paths
}

fn key_source(
    loaded: &IngressSource,
    config: &ApplicationAuthConfig,
    problems: &mut Problems,
) -> Option<KeySource> {
    let mut sources = Vec::new();
    if let Some(file) = &config.jwks_file {
        sources.push(KeySource::File(loaded.resolve(file)));
    }
    if let Some(uri) = &config.jwks_uri {
        if !uri.starts_with("https://") {
            problems.push(
                "ingress.application_auth.jwks_uri",
                "must be an https:// URL",
            );
        }
        sources.push(KeySource::Uri(uri.clone()));
    }
    if config.discovery {
        let issuer = config.issuer.clone().unwrap_or_default();
        if !issuer.starts_with("https://") {
            problems.push(
                "ingress.application_auth.discovery",
                "discovery needs an https:// issuer",
            );
        }
        sources.push(KeySource::Discovery(issuer));
    }
    match sources.len() {
        1 => sources.pop(),
        0 => {
            problems.push(
                "ingress.application_auth",
                "one of jwks_file, jwks_uri or discovery: true is required",
            );
            None
        }
        _ => {
            problems.push(
                "ingress.application_auth",
                "jwks_file, jwks_uri and discovery exclude each other",
            );
            None
        }
    }
}

fn fetch_roots(
    loaded: &IngressSource,
    config: &ApplicationAuthConfig,
    problems: &mut Problems,
) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let Some(file) = &config.fetch_ca_file else {
        return Vec::new();
    };
    crate::tls::pem::certificates(&loaded.resolve(file))
        .map_err(|error| problems.push("ingress.application_auth.fetch_ca_file", error))
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// How long a request waits for a fetch triggered by its unknown `kid`.
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(2);
