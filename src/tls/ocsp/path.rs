//! Which certificates of a verified client chain OCSP asks about, each with the one that
//! issued it. webpki does not hand back the path it verified, so it is found again here,
//! and under the `chain` scope every link of it is checked by signature: a device could
//! otherwise send a look-alike of a revoked CA (its name and key, another serial) for the
//! walk to take instead.

use x509_parser::prelude::X509Certificate;

use crate::config::RevocationScope;

/// A certificate that may issue another in the chain, and whether it is a trusted CA.
pub struct Candidate<'a> {
    pub cert: X509Certificate<'a>,
    pub trusted: bool,
}

/// A certificate and the certificate that issued it.
pub type Link<'c, 'a> = (&'c X509Certificate<'a>, &'c X509Certificate<'a>);

/// The links OCSP asks about for `leaf`, from the leaf up: only the leaf's under the
/// `leaf` scope, every one up to a trusted CA (which is not asked about) under `chain`.
/// `None` when no path of `candidates` leads to a trusted CA, which a chain webpki
/// accepted always has.
pub fn links<'c, 'a>(
    leaf: &'c X509Certificate<'a>,
    candidates: &'c [Candidate<'a>],
    scope: RevocationScope,
) -> Option<Vec<Link<'c, 'a>>> {
    match scope {
        RevocationScope::Leaf => Some(vec![(leaf, leaf_issuer(leaf, candidates)?)]),
        RevocationScope::Chain => verified_path(leaf, candidates),
    }
}

/// The leaf's issuer. webpki has just checked the leaf's signature against a
/// certificate of the issuer's name: when only one is at hand, that is it. Several are
/// told apart by the signature. (Which of several with the same name and key is taken
/// does not matter here: the leaf's question names only the issuer's name and key.)
fn leaf_issuer<'c, 'a>(
    leaf: &X509Certificate<'_>,
    candidates: &'c [Candidate<'a>],
) -> Option<&'c X509Certificate<'a>> {
    let mut named = candidates.iter().filter(|c| names_issuer(&c.cert, leaf));
    let first = named.next()?;
    if named.next().is_none() {
        return Some(&first.cert);
    }
    (candidates.iter())
        .filter(|c| names_issuer(&c.cert, leaf))
        .find(|c| signed_by(leaf, &c.cert))
        .map(|c| &c.cert)
}

/// A path from `leaf` to a trusted CA in which every certificate is signed by the next.
/// Found from the top down: first the certificates a trusted CA signed, then those they
/// signed, and so on, each remembering the first issuer that reached it (a trusted CA
/// before any other), so that the path has no cycle and each signature is checked at
/// most once.
fn verified_path<'c, 'a>(
    leaf: &'c X509Certificate<'a>,
    candidates: &'c [Candidate<'a>],
) -> Option<Vec<Link<'c, 'a>>> {
    let count = candidates.len();
    let mut issuer: Vec<Option<usize>> = vec![None; count];
    let mut reached: Vec<bool> = candidates.iter().map(|c| c.trusted).collect();
    let mut refused = vec![false; count * count];
    loop {
        let mut grew = false;
        for child in 0..count {
            if reached[child] {
                continue;
            }
            let found = (0..count).find(|&parent| {
                let pair = child * count + parent;
                if !reached[parent] || refused[pair] {
                    return false;
                }
                let (below, above) = (&candidates[child].cert, &candidates[parent].cert);
                let signed = names_issuer(above, below) && signed_by(below, above);
                refused[pair] = !signed;
                signed
            });
            if let Some(parent) = found {
                reached[child] = true;
                issuer[child] = Some(parent);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let mut at = (0..count).filter(|&index| reached[index]).find(|&index| {
        let above = &candidates[index].cert;
        names_issuer(above, leaf) && signed_by(leaf, above)
    })?;
    let mut path = vec![(leaf, &candidates[at].cert)];
    while !candidates[at].trusted {
        let above = issuer[at]?;
        path.push((&candidates[at].cert, &candidates[above].cert));
        at = above;
    }
    Some(path)
}

fn names_issuer(above: &X509Certificate<'_>, below: &X509Certificate<'_>) -> bool {
    above.subject().as_raw() == below.issuer().as_raw()
}

fn signed_by(below: &X509Certificate<'_>, above: &X509Certificate<'_>) -> bool {
    below.verify_signature(Some(above.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use rcgen::{Issuer, KeyPair};
    use x509_parser::prelude::FromDer;

    use super::*;
    use crate::demo::pki::{ca_params, Authority, CertRequest};

    fn parsed(der: &[u8]) -> X509Certificate<'_> {
        X509Certificate::from_der(der).expect("parses").1
    }

    fn serial(cert: &X509Certificate<'_>) -> Vec<u8> {
        cert.raw_serial().to_vec()
    }

    #[test]
    fn the_chain_path_takes_the_intermediate_its_issuer_signed_not_a_look_alike() {
        let root = Authority::root("root");
        let ca = root.intermediate("ca");
        let leaf = ca.issue(&CertRequest::client("device"));
        // The CA's name and key, the root's name as issuer, signed by another key.
        let key = KeyPair::from_pem(&ca.key_pem()).expect("the CA's key");
        let junk = KeyPair::generate().expect("a key");
        let look_alike = ca_params("ca")
            .signed_by(&key, &Issuer::new(ca_params("root"), &junk))
            .expect("a look-alike");
        let leaf_cert = parsed(&leaf.der);
        let candidates = [
            Candidate {
                cert: parsed(&root.der),
                trusted: true,
            },
            Candidate {
                cert: parsed(look_alike.der()),
                trusted: false,
            },
            Candidate {
                cert: parsed(&ca.der),
                trusted: false,
            },
        ];

        let path = links(&leaf_cert, &candidates, RevocationScope::Chain).expect("a path");
        let serials: Vec<_> = path
            .iter()
            .map(|(cert, issuer)| (serial(cert), serial(issuer)))
            .collect();
        let (ca_cert, root_cert) = (parsed(&ca.der), parsed(&root.der));
        assert_eq!(
            serials,
            [
                (serial(&leaf_cert), serial(&ca_cert)),
                (serial(&ca_cert), serial(&root_cert)),
            ]
        );
        // The leaf alone under the leaf scope.
        let leaf_only = links(&leaf_cert, &candidates, RevocationScope::Leaf).expect("the issuer");
        assert_eq!(leaf_only.len(), 1);
    }

    #[test]
    fn certificates_that_sign_each_other_but_reach_no_trusted_ca_are_no_path() {
        let root = Authority::root("root");
        let (first_key, second_key) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let first = ca_params("first")
            .signed_by(&first_key, &Issuer::new(ca_params("second"), &second_key))
            .unwrap();
        let second = ca_params("second")
            .signed_by(&second_key, &Issuer::new(ca_params("first"), &first_key))
            .unwrap();
        let leaf = ca_params("device")
            .signed_by(
                &KeyPair::generate().unwrap(),
                &Issuer::new(ca_params("first"), &first_key),
            )
            .unwrap();
        let candidates = [
            Candidate {
                cert: parsed(&root.der),
                trusted: true,
            },
            Candidate {
                cert: parsed(first.der()),
                trusted: false,
            },
            Candidate {
                cert: parsed(second.der()),
                trusted: false,
            },
        ];

        let leaf = parsed(leaf.der());
        assert!(links(&leaf, &candidates, RevocationScope::Chain).is_none());
    }
}
