//! The revocation set: CRLs loaded from files, with what the startup log says of each.
//! Checking a chain against them is webpki's job (see `client_auth`).

use std::path::Path;

use rustls::pki_types::CertificateRevocationListDer;
use x509_parser::prelude::{CertificateRevocationList, FromDer};

use super::pem;

/// The CRLs in force, and a summary of each for logs.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    /// The CRLs, DER encoded.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// One summary per CRL, in the same order.
    pub summaries: Vec<CrlSummary>,
}

/// What the logs say about one CRL.
#[derive(Debug, Clone)]
pub struct CrlSummary {
    /// The issuer's distinguished name.
    pub issuer: String,
    /// How many certificates it revokes.
    pub revoked: usize,
    /// nextUpdate, in seconds since the Unix epoch; `None` when the CRL has none.
    pub next_update: Option<i64>,
}

impl CrlSummary {
    /// Whether nextUpdate is before `now` (seconds since the Unix epoch).
    pub fn is_expired_at(&self, now: i64) -> bool {
        self.next_update.is_some_and(|next| next < now)
    }
}

impl RevocationSet {
    /// Adds every CRL in `path`. A CRL that does not parse is an error naming the file.
    pub fn load_file(&mut self, path: &Path) -> Result<(), String> {
        for crl in pem::revocation_lists(path)? {
            let summary = summarize(&crl)
                .ok_or_else(|| format!("{}: not a valid X.509 CRL", path.display()))?;
            self.crls.push(crl);
            self.summaries.push(summary);
        }
        Ok(())
    }
}

fn summarize(crl: &CertificateRevocationListDer<'_>) -> Option<CrlSummary> {
    let (rest, parsed) = CertificateRevocationList::from_der(crl.as_ref()).ok()?;
    if !rest.is_empty() {
        return None;
    }
    Some(CrlSummary {
        issuer: parsed.issuer().to_string(),
        revoked: parsed.iter_revoked_certificates().count(),
        next_update: parsed.next_update().map(|time| time.timestamp()),
    })
}
