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
    // The PEM reader skips text between blocks; a file cut mid-write, or holding other
    // blocks, would quietly lose CRLs. Every marker must belong to a whole CRL block,
    // and nothing but whitespace may follow the last one.
    const END: &[u8] = b"-----END X509 CRL-----";
    let markers = count_apart(bytes, b"-----");
    let last_end = bytes.windows(END.len()).rposition(|w| w == END);
    let trailing = last_end.map_or(bytes, |at| &bytes[at + END.len()..]);
    if markers != crls.len() * 4 || !trailing.iter().all(u8::is_ascii_whitespace) {
        return Err("a PEM block is cut short or is not an X509 CRL".into());
    }
    Ok(crls)
}

/// How many times `needle` occurs in `haystack` without overlapping.
fn count_apart(haystack: &[u8], needle: &[u8]) -> usize {
    let mut count = 0;
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        count += 1;
        rest = &rest[at + needle.len()..];
    }
    count
}

fn describe(path: &Path, error: pem::Error) -> String {
    match error {
        pem::Error::Io(io) => format!("{}: {io}", path.display()),
        other => format!("{}: not valid PEM: {other}", path.display()),
    }
}
