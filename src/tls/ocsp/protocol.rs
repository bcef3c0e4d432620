//! OCSP messages (RFC 6960): the request that asks about one certificate, and the checks
//! a response must pass before its answer counts. The ASN.1 encoding is x509-ocsp's;
//! signatures are checked with aws-lc-rs (through x509-parser).

use aws_lc_rs::digest;
use const_oid::db::rfc5912::ID_SHA_1;
use const_oid::db::rfc6960::{ID_PKIX_OCSP_BASIC, ID_PKIX_OCSP_NONCE};
use der::asn1::{Null, OctetString};
use der::{Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    SingleResponse, TbsRequest, Version,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::time::ASN1Time;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use crate::fetch::Fetcher;
use crate::tls::trust::unix_now;

/// How far the responder's clock may run ahead of ours, in seconds.
const CLOCK_SKEW: i64 = 300;

/// SHA-1 signatures (RSA or ECDSA) are refused: RFC 9155 retires them for TLS, and a
/// collision could pass one response off as another.
const SHA1_SIGNATURES: [&str; 3] = ["1.2.840.113549.1.1.5", "1.3.14.3.2.29", "1.2.840.10045.4.1"];

/// The certificate a query asks about, named as OCSP names it (SHA-1 CertID, which every
/// responder understands), with what is needed to check the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSubject {
    /// The CertID of the request.
    cert_id: CertId,
    /// The issuer's SubjectPublicKeyInfo, DER: it signs answers, or delegates a signer.
    issuer_key: Vec<u8>,
    /// The issuer's subject name, DER: a delegated signer must have been issued by it.
    issuer_name: Vec<u8>,
    /// SHA-256 over the issuer's key and the serial, for the answer cache.
    pub key: [u8; 32],
}

impl CertSubject {
    /// The subject of a query about `cert`, issued by `issuer`. `None` for a serial that
    /// OCSP cannot carry (longer than 20 octets).
    pub fn new(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Option<Self> {
        let name = issuer.subject().as_raw();
        let key_bits = issuer.public_key().subject_public_key.data.as_ref();
        let serial = cert.raw_serial();
        let mut encoded_serial = vec![0x02, u8::try_from(serial.len()).ok()?];
        encoded_serial.extend_from_slice(serial);
        let cert_id = CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: ID_SHA_1,
                parameters: Some(Null.into()),
            },
            issuer_name_hash: OctetString::new(sha1(name)).ok()?,
            issuer_key_hash: OctetString::new(sha1(key_bits)).ok()?,
            serial_number: SerialNumber::from_der(&encoded_serial).ok()?,
        };
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(issuer.public_key().raw);
        context.update(serial);
        let mut key = [0u8; 32];
        key.copy_from_slice(context.finish().as_ref());
        Some(Self {
            cert_id,
            issuer_key: issuer.public_key().raw.to_vec(),
            issuer_name: name.to_vec(),
            key,
        })
    }

    /// The DER of an OCSP request for this certificate, carrying `nonce`.
    pub fn request(&self, nonce: &[u8]) -> Result<Vec<u8>, String> {
        let nonce = OctetString::new(nonce.to_vec())
            .and_then(|nonce| nonce.to_der())
            .and_then(OctetString::new)
            .map_err(|error| error.to_string())?;
        let request = OcspRequest {
            tbs_request: TbsRequest {
                version: Version::V1,
                requestor_name: None,
                request_list: vec![Request {
                    req_cert: self.cert_id.clone(),
                    single_request_extensions: None,
                }],
                request_extensions: Some(vec![Extension {
                    extn_id: ID_PKIX_OCSP_NONCE,
                    critical: false,
                    extn_value: nonce,
                }]),
            },
            optional_signature: None,
        };
        request.to_der().map_err(|error| error.to_string())
    }
}

/// What a responder said about a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    /// Not revoked.
    Good,
    /// Revoked.
    Revoked,
    /// The responder does not know the certificate.
    Unknown,
}

/// A checked answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The certificate's state.
    pub state: CertState,
    /// thisUpdate, seconds since the Unix epoch.
    pub this_update: i64,
    /// nextUpdate, seconds since the Unix epoch, when the responder gave one.
    pub next_update: Option<i64>,
}

impl Answer {
    /// Until when it is current: its nextUpdate, or without one (newer information is
    /// always available, RFC 6960 §4.2.2.1) `max_age` seconds after its thisUpdate, so
    /// that an old response replayed is not taken as news.
    pub fn current_until(&self, max_age: i64) -> i64 {
        self.next_update
            .unwrap_or(self.this_update.saturating_add(max_age))
    }
}

/// A checked answer as a responder sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The answer.
    pub answer: Answer,
    /// The OCSPResponse, DER.
    pub response: Vec<u8>,
    /// When it was read, seconds since the Unix epoch.
    pub read_at: i64,
}

/// Asks `url` about `subject` (a POST with a fresh nonce, RFC 6960 appendix A.1) and
/// checks the answer; one no longer current, taking `max_age` as the life of one without
/// a nextUpdate, is no answer unless it says `revoked` (a revocation does not lapse).
/// Every failure is a reason for the log, naming the URL.
pub fn ask(
    fetcher: &Fetcher,
    url: &str,
    subject: &CertSubject,
    max_age: i64,
) -> Result<Reply, String> {
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness for a nonce")?;
    let request = subject.request(&nonce)?;
    let document = fetcher.post(
        url,
        "application/ocsp-request",
        &request,
        "application/ocsp-response",
    )?;
    let now = unix_now();
    let answer = read_response(&document.body, subject, &nonce, now)
        .map_err(|error| format!("{url}: {error}"))?;
    // Within the clock skew read_response allows, an answer can arrive already lapsed.
    if answer.state != CertState::Revoked && answer.current_until(max_age) <= now {
        return Err(format!("{url}: the answer is no longer current"));
    }
    Ok(Reply {
        answer,
        response: document.body,
        read_at: now,
    })
}

/// Reads a responder's answer about `subject` and checks it: a successful basic response,
/// signed by the issuer or by a responder certificate the issuer signed for OCSP
/// signing, echoing `nonce` if it carries one, current at `now` (seconds since the Unix
/// epoch). Every failure is a reason for the log.
fn read_response(
    der: &[u8],
    subject: &CertSubject,
    nonce: &[u8],
    now: i64,
) -> Result<Answer, String> {
    let basic = basic_response(der)?;
    check_signature(&basic, subject, now)?;
    if let Some(echoed) = basic.nonce() {
        if echoed.0.as_bytes() != nonce {
            return Err("the response answers another request (nonce differs)".into());
        }
    }
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|single| same_certificate(&single.cert_id, &subject.cert_id))
        .ok_or("the response is not about the certificate asked about")?;
    answer_of(single, now)
}

fn basic_response(der: &[u8]) -> Result<BasicOcspResponse, String> {
    let response =
        OcspResponse::from_der(der).map_err(|error| format!("not an OCSP response: {error}"))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(format!(
            "the responder answered {:?}",
            response.response_status
        ));
    }
    let bytes = response
        .response_bytes
        .ok_or("a successful response without a body")?;
    if bytes.response_type != ID_PKIX_OCSP_BASIC {
        return Err(format!(
            "response type {} is not basic",
            bytes.response_type
        ));
    }
    BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|error| format!("the basic response does not parse: {error}"))
}

/// Accepts a signature by the issuer's key, or by a certificate in the response that the
/// issuer signed, marked for OCSP signing and valid now (RFC 6960 §4.2.2.2).
fn check_signature(
    basic: &BasicOcspResponse,
    subject: &CertSubject,
    now: i64,
) -> Result<(), String> {
    let algorithm = basic
        .signature_algorithm
        .to_der()
        .map_err(|error| error.to_string())?;
    let (_, algorithm) = AlgorithmIdentifier::from_der(&algorithm)
        .map_err(|_| "the signature algorithm does not parse")?;
    if SHA1_SIGNATURES.contains(&algorithm.algorithm.to_id_string().as_str()) {
        return Err("signed with SHA-1".into());
    }
    let signed = basic
        .tbs_response_data
        .to_der()
        .map_err(|error| error.to_string())?;
    let signature =
        x509_parser::der_parser::asn1_rs::BitString::new(0, basic.signature.raw_bytes());
    let verifies = |key: &SubjectPublicKeyInfo<'_>| {
        x509_parser::verify::verify_signature(key, &algorithm, &signature, &signed).is_ok()
    };
    let (_, issuer_key) = SubjectPublicKeyInfo::from_der(&subject.issuer_key)
        .map_err(|_| "the issuer's key does not parse")?;
    if verifies(&issuer_key) {
        return Ok(());
    }
    for cert in basic.certs.iter().flatten() {
        let der = cert.to_der().map_err(|error| error.to_string())?;
        let Ok((_, responder)) = X509Certificate::from_der(&der) else {
            continue;
        };
        if delegated(&responder, subject, &issuer_key, now) && verifies(responder.public_key()) {
            return Ok(());
        }
    }
    Err("not signed by the issuer or by a responder it delegated".into())
}

/// Whether the issuer signed `responder` for OCSP signing, and it is valid now.
fn delegated(
    responder: &X509Certificate<'_>,
    subject: &CertSubject,
    issuer_key: &SubjectPublicKeyInfo<'_>,
    now: i64,
) -> bool {
    let for_ocsp = matches!(
        responder.extended_key_usage(),
        Ok(Some(usage)) if usage.value.ocsp_signing
    );
    let current = ASN1Time::from_timestamp(now)
        .map(|time| responder.validity().is_valid_at(time))
        .unwrap_or(false);
    for_ocsp
        && current
        && responder.issuer().as_raw() == subject.issuer_name.as_slice()
        && responder.verify_signature(Some(issuer_key)).is_ok()
}

fn same_certificate(answered: &CertId, asked: &CertId) -> bool {
    answered.hash_algorithm.oid == asked.hash_algorithm.oid
        && answered.issuer_name_hash == asked.issuer_name_hash
        && answered.issuer_key_hash == asked.issuer_key_hash
        && answered.serial_number.as_bytes() == asked.serial_number.as_bytes()
}

fn answer_of(single: &SingleResponse, now: i64) -> Result<Answer, String> {
    let this_update = seconds(&single.this_update);
    let next_update = single.next_update.as_ref().map(seconds);
    if this_update > now + CLOCK_SKEW {
        return Err("thisUpdate is in the future".into());
    }
    if next_update.is_some_and(|next| next < now - CLOCK_SKEW) {
        return Err("nextUpdate has passed: the response is stale".into());
    }
    let state = match single.cert_status {
        CertStatus::Good(_) => CertState::Good,
        CertStatus::Revoked(_) => CertState::Revoked,
        CertStatus::Unknown(_) => CertState::Unknown,
    };
    Ok(Answer {
        state,
        this_update,
        next_update,
    })
}

fn seconds(time: &x509_ocsp::OcspGeneralizedTime) -> i64 {
    time.0.to_unix_duration().as_secs() as i64
}

fn sha1(bytes: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::pki::{Authority, CertRequest};

    fn subject() -> CertSubject {
        let ca = Authority::root("ocsp test CA");
        let device = ca.issue(&CertRequest::client("device"));
        let (_, cert) = X509Certificate::from_der(device.der.as_ref()).unwrap();
        let (_, issuer) = X509Certificate::from_der(ca.der.as_ref()).unwrap();
        CertSubject::new(&cert, &issuer).unwrap()
    }

    #[test]
    fn a_request_names_the_certificate_and_carries_the_nonce() {
        let subject = subject();
        let der = subject.request(&[7; 16]).unwrap();
        let request = OcspRequest::from_der(&der).unwrap();
        let asked = &request.tbs_request.request_list[0].req_cert;
        assert!(same_certificate(asked, &subject.cert_id));
        assert_eq!(request.nonce().unwrap().0.as_bytes(), &[7; 16]);
    }

    #[test]
    fn a_response_that_is_not_ocsp_or_not_successful_is_no_answer() {
        let subject = subject();
        assert!(read_response(b"garbage", &subject, &[], 0).is_err());
        let refused = OcspResponse {
            response_status: OcspResponseStatus::TryLater,
            response_bytes: None,
        };
        let error = read_response(&refused.to_der().unwrap(), &subject, &[], 0).unwrap_err();
        assert!(error.contains("TryLater"), "{error}");
    }
}
