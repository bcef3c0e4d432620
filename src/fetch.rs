//! Fetching documents over HTTPS (JWKS, discovery documents, CRLs, OCSP responses), always off the data
//! path: on the threads that keep keys and revocation lists fresh, never on a worker.
//! The HTTP client is ureq, on rustls with the aws-lc-rs provider.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

/// How one kind of document is fetched.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Roots trusted for the servers; empty for the Mozilla roots (webpki-roots).
    pub roots: Vec<CertificateDer<'static>>,
    /// Time allowed for one exchange, redirects included.
    pub timeout: Duration,
    /// The largest body accepted.
    pub max_body: u64,
    /// Refuse plain `http://` URLs. CRLs, being signed, may come over plain HTTP (RFC
    /// 5280 distribution points usually are); keys and discovery documents may not.
    pub https_only: bool,
}

/// A fetched document.
#[derive(Debug, Clone)]
pub struct Document {
    /// The body.
    pub body: Vec<u8>,
    /// How long the server says it stays fresh (`Cache-Control: max-age`).
    pub max_age: Option<Duration>,
}

impl Fetcher {
    /// GETs `url`. Anything but a 200 with a body within `max_body` is an error naming
    /// the URL.
    pub fn get(&self, url: &str, accept: &str) -> Result<Document, String> {
        let response = self
            .agent()
            .get(url)
            .header("accept", accept)
            .call()
            .map_err(|e| format!("{url}: {e}"))?;
        self.document(url, response)
    }

    /// POSTs `body` (of `content_type`) to `url`, as an OCSP query is sent (RFC 6960
    /// appendix A.1). The answer is read as `get` reads one.
    pub fn post(
        &self,
        url: &str,
        content_type: &str,
        body: &[u8],
        accept: &str,
    ) -> Result<Document, String> {
        let response = self
            .agent()
            .post(url)
            .header("content-type", content_type)
            .header("accept", accept)
            .send(body)
            .map_err(|e| format!("{url}: {e}"))?;
        self.document(url, response)
    }

    fn document(
        &self,
        url: &str,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<Document, String> {
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!("{url}: HTTP {status}"));
        }
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|value| value.to_str().ok())
            .and_then(max_age);
        let body = response
            .body_mut()
            .with_config()
            .limit(self.max_body)
            .read_to_vec()
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(Document { body, max_age })
    }

    fn agent(&self) -> ureq::Agent {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let roots = if self.roots.is_empty() {
            RootCerts::WebPki
        } else {
            let certs: Vec<Certificate<'static>> = self
                .roots
                .iter()
                .map(|der| Certificate::from_der(der.as_ref()).to_owned())
                .collect();
            RootCerts::new_with_certs(&certs)
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = TlsConfig::builder()
            .root_certs(roots)
            .unversioned_rustls_crypto_provider(provider)
            .build();
        ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(self.https_only)
            .http_status_as_error(false)
            .timeout_global(Some(self.timeout))
            .max_redirects(3)
            .user_agent("srrrs-edge")
            .build()
            .new_agent()
    }
}

/// The `max-age` directive of a `Cache-Control` value.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        if name.trim().eq_ignore_ascii_case("max-age") {
            value
                .trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(
            max_age("max-age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
    }
}
