//! The client side of TLS to a backend that accepts only TLS: its CA, the name its
//! certificate must carry (also sent as SNI), and the certificate the gateway presents
//! when the backend asks for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

use super::{pem, server};
use crate::config::BackendTlsConfig;

/// How connections to one backend are secured.
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// The rustls client configuration: the backend's CA, versions, the gateway's
    /// certificate, ALPN `http/1.1`, session resumption in memory.
    pub config: Arc<ClientConfig>,
    /// The name checked against the backend's certificate and sent as SNI.
    pub name: ServerName<'static>,
}

impl BackendTls {
    /// Reads the files `config` names (resolved by `resolve`) for the backend at
    /// `host`, the host part of its address.
    pub fn build(
        config: &BackendTlsConfig,
        host: &str,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for cert in pem::certificates(&resolve(&config.ca_file))? {
            roots
                .add(cert)
                .map_err(|error| format!("tls.ca_file: not a usable CA: {error}"))?;
        }
        let spelled = config.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(spelled.to_owned())
            .map_err(|_| format!("tls.server_name: {spelled:?} is not a DNS name or IP address"))?;
        let builder = ClientConfig::builder_with_provider(Arc::new(server::provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots);
        let mut client = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let chain = pem::certificates(&resolve(cert))?;
                let key = pem::private_key(&resolve(key))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| format!("tls.client_key: {error}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("tls: client_cert and client_key go together".into()),
        };
        client.alpn_protocols = vec![super::ALPN_HTTP11.to_vec()];
        client.resumption = Resumption::in_memory_sessions(256);
        Ok(Self {
            config: Arc::new(client),
            name,
        })
    }
}
