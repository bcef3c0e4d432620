//! An ingress as it runs: its TLS policy, its token policy, what backends are told,
//! and its backends, built from the configuration. Workers share it read-only. A
//! gateway serves a set of them, chosen per connection by the SNI the client sends.

use std::sync::Arc;

use tracing::info;

use crate::auth::Authorizer;
use crate::config::{IngressSource, LoadedConfig, Problems};
use crate::http::head::HeadLimits;
use crate::http::rewrite::IdentityHeaders;
use crate::reload::Lifetime;
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
    /// Ends when this ingress is dropped, stopping the threads [`Self::start`] started.
    lifetime: Lifetime,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        self.lifetime.end();
        // The key fetcher sleeps until its next refresh or a request: wake it to stop.
        if let Some(auth) = &self.auth {
            auth.keys().request_fetch();
        }
    }
}

impl Ingress {
    /// Starts what keeps this ingress's state fresh: the key fetcher, the health checks
    /// and the reloader of its certificates, CRLs and ticket keys.
    pub fn start(&self) -> std::io::Result<()> {
        if let Some(authorizer) = &self.auth {
            authorizer.start_refreshing(self.lifetime.clone())?;
        }
        self.upstream.start_checks(self.lifetime.clone())?;
        let keys = self.auth.as_ref().map(|auth| auth.keys().clone());
        crate::reload::spawn(&self.tls, keys, self.lifetime.clone())
    }

    /// Why this ingress cannot serve yet, if it cannot: its IdP keys not loaded, or, where
    /// a certificate of unknown revocation status is refused, a CRL URL not yet fetched.
    pub fn not_ready(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let name = &self.hostname;
        if let Some(auth) = &self.auth {
            if auth.keys().snapshot().loaded_at.is_none() {
                missing.push(format!("{name}: the IdP's keys (JWKS) are not loaded yet"));
            }
        }
        let device = self.tls.device.as_ref();
        let crls_required = device.is_some_and(|device| device.requires_known_revocation());
        if let (Some(sources), true) = (&self.tls.revocation, crls_required) {
            for url in sources.urls_without_copy() {
                missing.push(format!("{name}: no CRL fetched yet from {url}"));
            }
        }
        missing
    }

    /// Writes this ingress's startup facts to the log.
    pub fn log_startup(&self) {
        self.tls.log_startup();
        for backend in self.upstream.backends() {
            info!(hostname = %self.hostname, backend = %backend, "backend");
        }
    }

    /// Takes over what `previous`, the ingress of the same hostname that this one
    /// replaces at a reload, has learned and still holds: its OCSP answers.
    pub fn take_over(&self, previous: &Ingress) {
        let checker = |ingress: &Ingress| ingress.tls.device.as_ref()?.ocsp().cloned();
        let (Some(new), Some(old)) = (checker(self), checker(previous)) else {
            return;
        };
        let kept = new.adopt_answers(&old, crate::tls::trust::unix_now());
        info!(hostname = %self.hostname, kept, "OCSP answers kept over the reload");
    }

    /// Whether `name` (an SNI) is this ingress's hostname.
    fn names_exactly(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.hostname)
    }

    /// Whether `name` falls under this ingress's wildcard hostname: `*.example.com`
    /// covers `a.example.com`, not `example.com` nor `a.b.example.com`.
    fn covers(&self, name: &str) -> bool {
        let Some(parent) = self.hostname.strip_prefix("*.") else {
            return false;
        };
        name.split_once('.').is_some_and(|(label, rest)| {
            !label.is_empty() && !rest.contains('*') && rest.eq_ignore_ascii_case(parent)
        })
    }

    /// Loads every file the `ingress` section names, recording each problem.
    pub fn build(loaded: &IngressSource, problems: &mut Problems) -> Option<Self> {
        let tls = TlsPolicy::build(loaded, problems);
        let auth = Authorizer::build(loaded, problems);
        let identity = IdentityHeaders::build(loaded, problems);
        let upstream = BackendPool::build(loaded, problems);
        let limits = &loaded.config.limits;
        Some(Self {
            hostname: loaded.ingress.hostname.clone(),
            tls: tls?,
            auth: auth?,
            head_limits: HeadLimits {
                max_bytes: limits.max_head_bytes,
                max_headers: limits.max_headers,
            },
            identity,
            upstream: upstream?,
            lifetime: Lifetime::default(),
        })
    }
}

/// The ingresses a gateway serves. A connection goes to the one its SNI names; the
/// first is the default for a client whose SNI names none (or that sent none), unless
/// that ingress has `strict_sni`.
#[derive(Debug)]
pub struct IngressSet {
    ingresses: Vec<Arc<Ingress>>,
}

impl IngressSet {
    /// Builds every ingress of the file, each reporting its problems under its own path.
    pub fn build(loaded: &LoadedConfig, problems: &mut Problems) -> Option<Self> {
        let mut ingresses = Vec::new();
        let mut complete = true;
        for (scope, source) in loaded.ingress_sources() {
            match problems.scoped(&scope, |problems| Ingress::build(&source, problems)) {
                Some(ingress) => ingresses.push(Arc::new(ingress)),
                None => complete = false,
            }
        }
        (complete && !ingresses.is_empty()).then_some(Self { ingresses })
    }

    /// Every ingress, the default first.
    pub fn all(&self) -> &[Arc<Ingress>] {
        &self.ingresses
    }

    /// The position of the ingress that serves a client who sent `sni`: the one named
    /// exactly, else one whose wildcard covers it, else the default. `None` when the
    /// handshake is to be refused with `unrecognized_name`.
    pub fn select(&self, sni: Option<&str>) -> Option<usize> {
        if let Some(name) = sni {
            let exact = self.ingresses.iter().position(|i| i.names_exactly(name));
            let found = exact.or_else(|| self.ingresses.iter().position(|i| i.covers(name)));
            if found.is_some() {
                return found;
            }
        }
        let default = self.ingresses.first()?;
        (!default.tls.strict_sni).then_some(0)
    }
}
