//! An ingress as it runs: its TLS policy and its backends, built from the configuration.
//! Workers share it read-only.

use crate::config::{LoadedConfig, Problems};
use crate::tls::TlsPolicy;
use crate::upstream::BackendPool;

/// The running form of the `ingress` section.
#[derive(Debug, Clone)]
pub struct Ingress {
    /// Handshake policy: server certificate, client CAs, CRLs, SNI.
    pub tls: TlsPolicy,
    /// Where requests go.
    pub upstream: BackendPool,
}

impl Ingress {
    /// Loads every file the `ingress` section names, recording each problem.
    pub fn build(loaded: &LoadedConfig, problems: &mut Problems) -> Option<Self> {
        let tls = TlsPolicy::build(loaded, problems);
        let upstream = BackendPool::build(loaded, problems);
        Some(Self {
            tls: tls?,
            upstream: upstream?,
        })
    }
}
