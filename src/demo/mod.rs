//! `srrrs-edge demo`: a throwaway dev PKI, a local echo backend and the gateway in front
//! of it, with curl commands that show a device admitted and devices refused.

pub mod echo;
pub mod pki;

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

use time::Duration;

use crate::config::{self, IoDriverChoice};
use crate::runtime::{self, RunningGateway, Settings};
use echo::EchoBackend;
use pki::{Authority, CertRequest, IssuedCert};

/// What the demo can be told.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The TLS port on 127.0.0.1.
    pub port: u16,
    /// Force an I/O driver.
    pub io_driver: Option<IoDriverChoice>,
}

/// A demo that is running; dropping it removes its files.
pub struct Demo {
    /// The gateway.
    pub gateway: RunningGateway,
    /// The backend.
    pub backend: EchoBackend,
    /// Where the PKI and config live.
    pub folder: tempfile::TempDir,
}

impl Demo {
    /// Makes the PKI, starts the backend and the gateway.
    pub fn start(options: &DemoOptions) -> Result<Self, String> {
        let folder = tempfile::Builder::new()
            .prefix("srrrs-edge-demo-")
            .tempdir()
            .map_err(|e| format!("cannot make a temp folder: {e}"))?;
        DemoPki::generate()
            .write(folder.path())
            .map_err(|e| format!("cannot write the PKI: {e}"))?;

        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let (backend, backend_addr) =
            EchoBackend::start_tcp(local).map_err(|e| format!("cannot start the backend: {e}"))?;
        let config_path = folder.path().join("edge.yaml");
        std::fs::write(&config_path, demo_config(options, backend_addr))
            .map_err(|e| format!("cannot write the config: {e}"))?;

        let loaded = config::load(&config_path).map_err(|e| e.to_string())?;
        let settings = Settings::build(&loaded).map_err(|e| e.to_string())?;
        let gateway = runtime::start(settings).map_err(|e| e.to_string())?;
        Ok(Self {
            gateway,
            backend,
            folder,
        })
    }

    /// The commands to try, each `curl ` line preceded by a `#` line saying what it shows.
    pub fn instructions(&self) -> String {
        let dir = self.folder.path().display();
        let port = self.gateway.listen.first().map_or(0, |addr| addr.port());
        let url = format!("https://localhost:{port}/hello");
        let base = format!("curl --silent --show-error --cacert {dir}/root-ca.pem");
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# a good device certificate: the echo backend answers with what it received"
        );
        let _ = writeln!(
            text,
            "{base} --cert {dir}/client.pem --key {dir}/client.key {url}"
        );
        let _ = writeln!(
            text,
            "# no client certificate: the handshake is refused (certificate_required)"
        );
        let _ = writeln!(text, "{base} {url}");
        let _ = writeln!(
            text,
            "# a revoked device certificate: refused (certificate_revoked)"
        );
        let _ = writeln!(
            text,
            "{base} --cert {dir}/revoked-client.pem --key {dir}/revoked-client.key {url}"
        );
        if let Some(admin) = self.gateway.admin {
            let _ = writeln!(
                text,
                "# the gateway's counters, refusals by reason among them"
            );
            let _ = writeln!(text, "curl --silent http://{admin}/metrics");
        }
        text
    }
}

/// The certificates the demo runs on.
pub struct DemoPki {
    root: Authority,
    device_ca: Authority,
    server: IssuedCert,
    client: IssuedCert,
    revoked_client: IssuedCert,
}

impl DemoPki {
    /// A root CA, a device CA under it, a server certificate for localhost, a good
    /// device certificate and a revoked one.
    pub fn generate() -> Self {
        let root = Authority::root("srrrs demo root CA");
        let device_ca = root.intermediate("srrrs demo device CA");
        Self {
            server: root.issue(&CertRequest::server(&["localhost", "127.0.0.1", "::1"])),
            client: device_ca
                .issue(&CertRequest::client("demo-device-1").uri("spiffe://demo.srrrs/device/1")),
            revoked_client: device_ca.issue(&CertRequest::client("demo-device-revoked")),
            root,
            device_ca,
        }
    }

    /// Writes every file the demo config and curl commands name into `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let week = Duration::days(7);
        let files: [(&str, String); 9] = [
            ("root-ca.pem", self.root.cert_pem.clone()),
            ("server.pem", self.server.chain_pem.clone()),
            ("server.key", self.server.key_pem.clone()),
            ("client.pem", self.client.chain_pem.clone()),
            ("client.key", self.client.key_pem.clone()),
            ("revoked-client.pem", self.revoked_client.chain_pem.clone()),
            ("revoked-client.key", self.revoked_client.key_pem.clone()),
            ("root-ca.crl.pem", self.root.crl(&[], week)),
            (
                "device-ca.crl.pem",
                self.device_ca.crl(&[&self.revoked_client], week),
            ),
        ];
        for (name, contents) in files {
            std::fs::write(dir.join(name), contents)?;
        }
        Ok(())
    }
}

fn demo_config(options: &DemoOptions, backend: SocketAddr) -> String {
    let driver = match options.io_driver.unwrap_or_default() {
        IoDriverChoice::Auto => "auto",
        IoDriverChoice::IoUring => "io_uring",
        IoDriverChoice::Epoll => "epoll",
    };
    format!(
        "# Written by `srrrs-edge demo`; paths are relative to this file.
listen: [\"127.0.0.1:{port}\"]
runtime:
  io_driver: {driver}
admin:
  listen: \"127.0.0.1:0\"
ingress:
  hostname: \"localhost\"
  server_tls:
    cert_chain: \"server.pem\"
    private_key: \"server.key\"
  transport_security:
    mode: \"mtls\"
    client_ca_cert: \"root-ca.pem\"
    require_crl_check: true
    crl_files: [\"root-ca.crl.pem\", \"device-ca.crl.pem\"]
  upstream:
    backends: [\"{backend}\"]
",
        port = options.port,
    )
}
