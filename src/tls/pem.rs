//! Reading certificates, keys and CRLs from files, with messages an operator can act on.

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Every certificate in a PEM file, in order. An empty file is an error.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| describe(path, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| describe(path, error))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    Ok(certs)
}

/// The one private key in a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| match error {
        pem::Error::NoItemsFound => format!(
            "{}: no private key found (expected a PKCS#8, PKCS#1 RSA or SEC1 EC PEM block)",
            path.display()
        ),
        other => describe(path, other),
    })
}

/// Every CRL in `bytes`, which hold either PEM `X509 CRL` blocks or one DER CRL.
pub fn revocation_lists_in(
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let is_pem = bytes.windows(10).any(|w| w == b"-----BEGIN");
    if !is_pem {
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("not valid PEM: {error}"))?;
    if crls.is_empty() {
        return Err("no X509 CRL block found".into());
    }
    Ok(crls)
}

fn describe(path: &Path, error: pem::Error) -> String {
    match error {
        pem::Error::Io(io) => format!("{}: {io}", path.display()),
        other => format!("{}: not valid PEM: {other}", path.display()),
    }
}
