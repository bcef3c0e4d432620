//! A development identity provider: a signing key made on the spot, its JWKS, and
//! tokens minted with any claims. The demo uses it, and so do the tests and benches.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

use super::pki::KeyKind;
use crate::auth::unix_seconds;

/// One signing key of a development IdP.
pub struct DevIdp {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// The key's `kid`.
    pub kid: String,
    /// The signature algorithm.
    pub algorithm: Algorithm,
    key: EncodingKey,
    jwk: Value,
    public_key_pem: String,
}

impl DevIdp {
    /// A fresh key of `kind` (P-256 → ES256, P-384 → ES384, RSA → RS256, Ed25519 →
    /// EdDSA) named `kid`, for tokens issued by `issuer`.
    pub fn new(issuer: &str, kid: &str, kind: KeyKind) -> Self {
        let pair = kind.generate_pair();
        let pkcs8 = pair.serialize_der();
        let (algorithm, key) = match kind {
            KeyKind::EcdsaP256 => (Algorithm::ES256, EncodingKey::from_ec_der(&pkcs8)),
            KeyKind::EcdsaP384 => (Algorithm::ES384, EncodingKey::from_ec_der(&pkcs8)),
            KeyKind::Ed25519 => (Algorithm::EdDSA, EncodingKey::from_ed_der(&pkcs8)),
            KeyKind::Rsa2048 => (
                Algorithm::RS256,
                EncodingKey::from_rsa_der(&pkcs1_of(&pkcs8)),
            ),
        };
        let mut jwk = match kind {
            // jsonwebtoken derives OKP JWKs only from PKCS#8 v1; the raw key is at hand.
            KeyKind::Ed25519 => {
                use base64::Engine as _;
                let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let x = engine.encode(pair.public_key_raw());
                json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"})
            }
            _ => {
                let jwk = Jwk::from_encoding_key(&key, algorithm).expect("public JWK");
                serde_json::to_value(jwk).expect("JWK serializes")
            }
        };
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Self {
            issuer: issuer.to_owned(),
            kid: kid.to_owned(),
            algorithm,
            key,
            jwk,
            public_key_pem: pair.public_key_pem(),
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A JWKS with this key alone.
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.jwk()] }).to_string()
    }

    /// The public key, PEM (SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// Claims for a token valid for an hour: `iss`, `aud`, `sub`, `iat`, `exp`.
    pub fn claims(&self, audience: &str, subject: &str) -> Map<String, Value> {
        let now = unix_seconds();
        let claims = json!({
            "iss": self.issuer, "aud": audience, "sub": subject, "iat": now, "exp": now + 3600,
        });
        claims.as_object().cloned().unwrap_or_default()
    }

    /// Signs `claims` with this key, its `kid` in the header.
    pub fn sign(&self, claims: &Map<String, Value>) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Signs `claims` under a header of the caller's making.
    pub fn sign_with_header(&self, header: &Header, claims: &Map<String, Value>) -> String {
        jsonwebtoken::encode(header, claims, &self.key).expect("signing with a generated key")
    }

    /// Signs a token made of `header` and `claims` exactly as given, JSON or not, with
    /// this key's algorithm: tokens no well-behaved issuer would make, for tests.
    pub fn sign_parts(&self, header: &[u8], claims: &[u8]) -> String {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!("{}.{}", engine.encode(header), engine.encode(claims));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, self.algorithm)
            .expect("signing with a generated key");
        format!("{message}.{signature}")
    }
}

/// A JWKS holding every key of `idps`.
pub fn jwks_of(idps: &[&DevIdp]) -> String {
    json!({ "keys": idps.iter().map(|idp| idp.jwk()).collect::<Vec<_>>() }).to_string()
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (RFC 5208 §5).
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    use x509_parser::der_parser::parse_der;
    let (_, info) = parse_der(pkcs8).expect("PKCS#8 DER");
    let fields = info.as_sequence().expect("PrivateKeyInfo is a SEQUENCE");
    fields[2]
        .as_slice()
        .expect("privateKey is an OCTET STRING")
        .to_vec()
}
