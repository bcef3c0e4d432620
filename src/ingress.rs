//! An ingress as it runs: its TLS policy, its token policy, what backends are told,
//! and its backends, built from the configuration. Workers share it read-only.

use std::sync::Arc;

use crate::auth::Authorizer;
use crate::config::{LoadedConfig, Problems};
use crate::http::head::HeadLimits;
use crate::http::rewrite::IdentityHeaders;
use crate::tls::TlsPolicy;
use crate::upstream::BackendPool;

/// The running form of the `ingress` section.
#[derive(Debug)]
pub struct Ingress {
    /// The ingress hostname, also the `realm` of its Bearer challenges.
    pub hostname: String,
    /// Handshake policy: server certificate, client CAs, CRLs, SNI.
    pub tls: TlsPolicy,
    /// Per-request token policy; `None` when the device certificate is the only proof.
    pub auth: Option<Arc<Authorizer>>,
    /// Bounds on request heads.
    pub head_limits: HeadLimits,
    /// The headers that tell backends who is asking.
    pub identity: IdentityHeaders,
    /// Where requests go.
    pub upstream: BackendPool,
}

impl Ingress {
    /// Loads every file the `ingress` section names, recording each problem.
    pub fn build(loaded: &LoadedConfig, problems: &mut Problems) -> Option<Self> {
        let tls = TlsPolicy::build(loaded, problems);
        let auth = Authorizer::build(loaded, problems);
        let identity = IdentityHeaders::build(loaded, problems);
        let upstream = BackendPool::build(loaded, problems);
        let limits = &loaded.config.limits;
        Some(Self {
            hostname: loaded.config.ingress.hostname.clone(),
            tls: tls?,
            auth: auth?,
            head_limits: HeadLimits {
                max_bytes: limits.max_head_bytes,
                max_headers: limits.max_headers,
            },
            identity,
            upstream: upstream?,
        })
    }
}
