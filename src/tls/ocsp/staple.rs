//! The server certificate's own OCSP response, for stapling (RFC 6066 §8): asked of the
//! certificate's responder by the reload thread, checked like any answer, and kept only
//! while it is current and says `good`. When and where it is stapled is the server
//! certificate's business (`tls::server`).

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::checker::aia_ocsp_url;
use super::protocol::{self, CertState, CertSubject};
use crate::fetch::Fetcher;

/// The longest a response without a nextUpdate is stapled, and the longest a staple is
/// kept before it is asked for again.
const WITHOUT_NEXT_UPDATE: i64 = 3600;

/// A response to staple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staple {
    /// The certificate it is about.
    pub leaf: CertificateDer<'static>,
    /// The OCSPResponse, DER, as the responder sent it.
    pub response: Vec<u8>,
    /// When it was fetched, seconds since the Unix epoch.
    pub fetched: i64,
    /// When it stops being current.
    pub good_until: i64,
}

impl Staple {
    /// Whether it may still be stapled at `now` for `leaf`.
    pub fn serves(&self, leaf: &CertificateDer<'_>, now: i64) -> bool {
        self.leaf.as_ref() == leaf.as_ref() && now < self.good_until
    }

    /// Whether a new one should be fetched: halfway through its life, and at least
    /// hourly, so that a revocation is learned even when the nextUpdate is far off.
    pub fn is_due(&self, now: i64) -> bool {
        let half_life = (self.good_until - self.fetched) / 2;
        now >= self.fetched + half_life.min(WITHOUT_NEXT_UPDATE)
    }
}

/// The fetcher for staples: a responder is expected to answer within a few seconds.
pub fn staple_fetcher() -> Fetcher {
    Fetcher {
        roots: Vec::new(),
        timeout: Duration::from_secs(5),
        max_body: 64 * 1024,
        https_only: false,
    }
}

/// Whether a response can be asked for about the first certificate of `chain`: the issuer
/// follows it, and a responder is named (by the config, `configured`, or the leaf's AIA).
/// Otherwise, what is missing.
pub fn can_staple(chain: &[CertificateDer<'_>], configured: bool) -> Result<(), &'static str> {
    let [leaf, issuer, ..] = chain else {
        return Err("needs the issuer's certificate after the leaf in cert_chain");
    };
    let (Ok((_, leaf)), Ok((_, issuer))) = (
        X509Certificate::from_der(leaf.as_ref()),
        X509Certificate::from_der(issuer.as_ref()),
    ) else {
        return Err("cannot read the first two certificates of cert_chain");
    };
    if leaf.issuer().as_raw() != issuer.subject().as_raw()
        || leaf.verify_signature(Some(issuer.public_key())).is_err()
    {
        return Err(
            "the second certificate of cert_chain did not issue the leaf: its \
                    issuer must follow it",
        );
    }
    if !configured && aia_ocsp_url(&leaf).is_none() {
        return Err("the leaf has no OCSP URL in its AIA extension: set ocsp_responder");
    }
    Ok(())
}

/// Why no staple was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StapleFailure {
    /// No valid answer: whatever is held may still be stapled until it lapses.
    NoAnswer(String),
    /// A valid answer that is not `good`: nothing is to be stapled any more.
    NotGood(String),
}

impl std::fmt::Display for StapleFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAnswer(reason) | Self::NotGood(reason) => f.write_str(reason),
        }
    }
}

impl From<String> for StapleFailure {
    fn from(reason: String) -> Self {
        Self::NoAnswer(reason)
    }
}

impl From<&str> for StapleFailure {
    fn from(reason: &str) -> Self {
        Self::NoAnswer(reason.to_owned())
    }
}

/// Fetches and checks a response for the first certificate of `chain`, issued by the
/// second, from `responder` or else the certificate's AIA OCSP URL.
pub fn fetch(
    chain: &[CertificateDer<'_>],
    responder: Option<&str>,
    fetcher: &Fetcher,
) -> Result<Staple, StapleFailure> {
    let [leaf, issuer, ..] = chain else {
        return Err("cert_chain holds no issuer certificate after the leaf".into());
    };
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
    let (_, parsed_issuer) =
        X509Certificate::from_der(issuer.as_ref()).map_err(|e| e.to_string())?;
    let subject = CertSubject::new(&cert, &parsed_issuer).ok_or("the serial is too long")?;
    let url = responder
        .map(str::to_owned)
        .or_else(|| aia_ocsp_url(&cert))
        .ok_or("no responder: no AIA OCSP URL and no ocsp_responder")?;
    let reply = protocol::ask(fetcher, &url, &subject, WITHOUT_NEXT_UPDATE)?;
    let answer = reply.answer;
    if answer.state != CertState::Good {
        return Err(StapleFailure::NotGood(format!(
            "{url} says the server certificate is {:?}",
            answer.state
        )));
    }
    Ok(Staple {
        leaf: leaf.clone().into_owned(),
        response: reply.response,
        fetched: reply.read_at,
        good_until: answer.current_until(WITHOUT_NEXT_UPDATE),
    })
}
