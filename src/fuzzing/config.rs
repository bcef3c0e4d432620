//! Fuzz harness for configuration files: parsing, the checks of values, and building
//! every ingress from what the file names.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{self, IngressConfig};
use crate::runtime::Settings;

/// Where the fuzzed file claims to live: a folder that does not exist, so that every
/// relative path it names is a missing file.
const FILE: &str = "/nonexistent/srrrs-edge-fuzz/edge.yaml";

/// Parses `data` (when it is UTF-8) as a configuration file. A refused file comes
/// with at least one problem, each with a message. An accepted one goes through every
/// check and builder, as `srrrs-edge check` does, and is refused in the end, since the
/// server certificate it names cannot exist: with files missing, nothing is admitted.
///
/// Files named by absolute path (which could be a device that never ends) and backend
/// host names (which would be looked up in the DNS) keep an accepted file from being
/// built.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = match config::parse(Path::new(FILE), text) {
        Ok(loaded) => loaded,
        Err(error) => {
            assert!(!error.problems.is_empty(), "refused without a reason");
            assert!(error
                .problems
                .iter()
                .all(|problem| !problem.message.is_empty()));
            let _ = error.to_string();
            return;
        }
    };

    let ingresses = loaded.config.ingress_list();
    if !ingresses.iter().all(|(_, ingress)| safe_to_build(ingress)) {
        return;
    }
    match Settings::build(&loaded) {
        Ok(_) => panic!("a configuration whose files are missing was accepted"),
        Err(error) => assert!(!error.problems.is_empty(), "refused without a reason"),
    }
}

/// Whether building `ingress` reads only files under the config's (missing) folder and
/// looks up no host name.
fn safe_to_build(ingress: &IngressConfig) -> bool {
    let relative = |path: &Path| path.is_relative();
    let backends_local = ingress.upstream.backends.iter().all(|backend| {
        backend.address.starts_with("unix:") || backend.address.parse::<SocketAddr>().is_ok()
    });
    backends_local && named_files(ingress).all(relative)
}

/// Every file an ingress names.
fn named_files(ingress: &IngressConfig) -> impl Iterator<Item = &Path> {
    let tls = &ingress.server_tls;
    let devices = &ingress.transport_security;
    let auth = ingress.application_auth.as_ref();
    let backend_tls = ingress
        .upstream
        .backends
        .iter()
        .filter_map(|b| b.tls.as_ref());
    [&tls.cert_chain, &tls.private_key]
        .into_iter()
        .chain(devices.client_ca_cert.as_slice())
        .chain(&devices.crl_files)
        .chain(&ingress.session_resumption.ticket_key_file)
        .chain(auth.and_then(|auth| auth.jwks_file.as_ref()))
        .chain(auth.and_then(|auth| auth.fetch_ca_file.as_ref()))
        .chain(backend_tls.flat_map(|tls| {
            [
                Some(&tls.ca_file),
                tls.client_cert.as_ref(),
                tls.client_key.as_ref(),
            ]
            .into_iter()
            .flatten()
        }))
        .map(|path| path.as_path())
}
