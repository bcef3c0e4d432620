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

/// Every CRL in a file that holds either PEM `X509 CRL` blocks or one DER CRL.
pub fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
    if !bytes.starts_with(b"-----") && !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| describe(path, error))?;
    if crls.is_empty() {
        return Err(format!("{}: no X509 CRL block found", path.display()));
    }
    Ok(crls)
}

fn describe(path: &Path, error: pem::Error) -> String {
    match error {
        pem::Error::Io(io) => format!("{}: {io}", path.display()),
        other => format!("{}: not valid PEM: {other}", path.display()),
    }
}
