//! The IdP's public keys (RFC 7517), and which algorithms each may verify. The
//! algorithms come from the key (its type, curve and `alg`) and the configuration,
//! never from a token: HMAC and `none` are never allowed, an EC key verifies only with
//! its own curve's algorithm, and only keys meant for signatures are kept.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// The asymmetric algorithms the gateway can verify.
pub const SUPPORTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// The smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// One usable verification key.
#[derive(Clone)]
pub struct VerificationKey {
    /// The key's `kid`, when it has one.
    pub kid: Option<String>,
    /// The algorithms it may verify.
    pub algorithms: Vec<Algorithm>,
    /// The key material.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// A key set as loaded: the keys kept, and why the others were not.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    /// Keys usable for verification.
    pub keys: Vec<VerificationKey>,
    /// One line per key that was left out, for the log.
    pub skipped: Vec<String>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

impl Jwks {
    /// Parses a JWKS document, keeping the keys usable with `allowed` algorithms. A
    /// document that is not a JWKS at all is an error; an unusable key is skipped.
    pub fn parse(document: &[u8], allowed: &[Algorithm]) -> Result<Self, String> {
        let raw: RawSet =
            serde_json::from_slice(document).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut set = Self::default();
        for (index, value) in raw.keys.into_iter().enumerate() {
            let kid = value
                .get("kid")
                .and_then(|kid| kid.as_str())
                .map(str::to_owned);
            let label = kid.clone().unwrap_or_else(|| format!("#{index}"));
            match serde_json::from_value::<Jwk>(value) {
                Ok(jwk) => match usable_key(&jwk, allowed) {
                    Ok(key) => set.keys.push(key),
                    Err(reason) => set.skipped.push(format!("key {label}: {reason}")),
                },
                Err(error) => set
                    .skipped
                    .push(format!("key {label}: unreadable: {error}")),
            }
        }
        Ok(set)
    }

    /// Keys that may verify a token with this `kid` (any key when it has none) and `alg`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerificationKey> + 'a {
        self.keys.iter().filter(move |key| {
            let kid_matches = kid.is_none_or(|kid| key.kid.as_deref() == Some(kid));
            kid_matches && key.algorithms.contains(&alg)
        })
    }

    /// Whether any key carries this `kid`.
    pub fn knows_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }
}

fn usable_key(jwk: &Jwk, allowed: &[Algorithm]) -> Result<VerificationKey, String> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signature key (use)".into()),
    }
    let ops = &jwk.common.key_operations;
    if ops.as_ref().is_some_and(|ops| {
        !ops.iter()
            .any(|op| matches!(op, jsonwebtoken::jwk::KeyOperations::Verify))
    }) {
        return Err("key_ops does not include verify".into());
    }

    let by_type = algorithms_for_key_type(jwk)?;
    let declared = match &jwk.common.key_algorithm {
        None => None,
        Some(declared) => Some(algorithm_of(declared).ok_or("its alg cannot verify signatures")?),
    };
    let algorithms: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|alg| declared.is_none_or(|declared| declared == *alg))
        .filter(|alg| allowed.contains(alg))
        .collect();
    if algorithms.is_empty() {
        return Err("no allowed algorithm fits this key".into());
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key material: {e}"))?;
    Ok(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

fn algorithms_for_key_type(jwk: &Jwk) -> Result<&'static [Algorithm], String> {
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Ok(&[Algorithm::ES256]),
            EllipticCurve::P384 => Ok(&[Algorithm::ES384]),
            _ => Err("unsupported curve".into()),
        },
        AlgorithmParameters::RSA(rsa) => {
            let bits = modulus_bits(&rsa.n).ok_or("unreadable RSA modulus")?;
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus of {bits} bits is below {MIN_RSA_BITS}"
                ));
            }
            Ok(&SUPPORTED_ALGORITHMS[2..8])
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Ok(&[Algorithm::EdDSA])
        }
        AlgorithmParameters::OctetKeyPair(_) => Err("unsupported curve".into()),
        AlgorithmParameters::OctetKey(_) => Err("symmetric keys are never used".into()),
        _ => Err("unsupported key type".into()),
    }
}

fn algorithm_of(declared: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match declared {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Bits in a base64url big-endian modulus, leading zeros aside.
fn modulus_bits(n: &str) -> Option<usize> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .ok()?;
    let first = bytes.iter().position(|b| *b != 0)?;
    Some((bytes.len() - first - 1) * 8 + (8 - bytes[first].leading_zeros() as usize))
}

/// Parses algorithm names from the configuration.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Ok(SUPPORTED_ALGORITHMS.to_vec());
    }
    names
        .iter()
        .map(|name| {
            name.parse::<Algorithm>()
                .ok()
                .filter(|alg| SUPPORTED_ALGORITHMS.contains(alg))
                .ok_or_else(|| {
                    format!(
                        "{name:?} is not one of ES256, ES384, RS256, RS384, RS512, PS256, \
                         PS384, PS512, EdDSA"
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const P256_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn ec_key(kid: &str, extra: &str) -> String {
        format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","x":"{P256_X}","y":"{P256_Y}"{extra}}}"#
        )
    }

    #[test]
    fn an_ec_key_verifies_only_its_curves_algorithm() {
        let doc = format!(r#"{{"keys":[{}]}}"#, ec_key("a", ""));
        let jwks = Jwks::parse(doc.as_bytes(), &SUPPORTED_ALGORITHMS).unwrap();
        assert_eq!(jwks.keys[0].algorithms, [Algorithm::ES256]);
        assert_eq!(jwks.candidates(Some("a"), Algorithm::ES384).count(), 0);
        assert_eq!(jwks.candidates(Some("a"), Algorithm::ES256).count(), 1);
        assert_eq!(jwks.candidates(None, Algorithm::ES256).count(), 1);
    }

    #[test]
    fn encryption_and_symmetric_keys_are_skipped() {
        let doc = format!(
            r#"{{"keys":[{},{},{{"kty":"oct","kid":"h","k":"c2VjcmV0"}},{{"kty":"XX"}}]}}"#,
            ec_key("a", r#","use":"enc""#),
            ec_key("a", r#","use":"sig""#),
        );
        let jwks = Jwks::parse(doc.as_bytes(), &SUPPORTED_ALGORITHMS).unwrap();
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.skipped.len(), 3, "{:?}", jwks.skipped);
    }

    #[test]
    fn a_declared_alg_must_fit_the_key() {
        let doc = format!(r#"{{"keys":[{}]}}"#, ec_key("a", r#","alg":"ES384""#));
        let jwks = Jwks::parse(doc.as_bytes(), &SUPPORTED_ALGORITHMS).unwrap();
        assert!(jwks.keys.is_empty());
    }

    #[test]
    fn configured_algorithms_narrow_the_keys() {
        let doc = format!(r#"{{"keys":[{}]}}"#, ec_key("a", ""));
        let jwks = Jwks::parse(doc.as_bytes(), &[Algorithm::RS256]).unwrap();
        assert!(jwks.keys.is_empty());
        assert!(parse_algorithms(&["HS256".into()]).is_err());
        assert!(parse_algorithms(&["none".into()]).is_err());
    }

    #[test]
    fn a_document_that_is_not_a_jwks_is_an_error() {
        assert!(Jwks::parse(b"<html>", &SUPPORTED_ALGORITHMS).is_err());
        assert!(Jwks::parse(b"{\"nokeys\":1}", &SUPPORTED_ALGORITHMS).is_err());
    }

    #[test]
    fn modulus_size_is_counted_in_bits() {
        assert_eq!(modulus_bits("AQAB"), Some(17));
        assert_eq!(modulus_bits("gA"), Some(8));
    }
}
