//! `srrrs-edge demo`: a throwaway dev PKI and dev IdP, a local echo backend, and the
//! gateway in front of it, with curl commands that show devices and users admitted and
//! refused.

pub mod echo;
pub mod idp;
pub mod pki;

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::json;
use time::Duration;

use crate::auth::unix_seconds;
use crate::config::{self, IoDriverChoice};
use crate::runtime::{self, RunningGateway, Settings};
use echo::EchoBackend;
use idp::DevIdp;
use pki::{Authority, CertRequest, IssuedCert, KeyKind};

/// The issuer of the demo's tokens.
pub const DEMO_ISSUER: &str = "https://idp.demo.srrrs.invalid";

/// The audience the demo gateway expects.
pub const DEMO_AUDIENCE: &str = "api-gateway";

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
    /// Where the PKI, tokens and config live.
    pub folder: tempfile::TempDir,
}

impl Demo {
    /// Makes the PKI and IdP, starts the backend and the gateway.
    pub fn start(options: &DemoOptions) -> Result<Self, String> {
        let folder = tempfile::Builder::new()
            .prefix("srrrs-edge-demo-")
            .tempdir()
            .map_err(|e| format!("cannot make a temp folder: {e}"))?;
        let dir = folder.path();
        DemoPki::generate()
            .write(dir)
            .map_err(|e| format!("cannot write the PKI: {e}"))?;
        write_idp(dir).map_err(|e| format!("cannot write the IdP files: {e}"))?;

        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let (backend, backend_addr) =
            EchoBackend::start_tcp(local).map_err(|e| format!("cannot start the backend: {e}"))?;
        let config_path = dir.join("edge.yaml");
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

    /// The commands to try, each `curl ` line after a `#` line saying what it shows.
    pub fn instructions(&self) -> String {
        let dir = self.folder.path().display();
        let port = self.gateway.listen.first().map_or(0, |addr| addr.port());
        let url = format!("https://localhost:{port}/hello");
        let base = format!("curl --silent --show-error --cacert {dir}/root-ca.pem");
        let device = format!("{base} --cert {dir}/client.pem --key {dir}/client.key");
        let token = |name: &str| format!("--header @{dir}/{name}.header");

        let steps = [
            ("a good device and a valid token: 200, the echo backend shows the identity headers", format!("{device} {} {url}", token("valid"))),
            ("a good device, no token: 401 with a Bearer challenge", format!("{device} --include {url}")),
            ("an expired token: 401 invalid_token", format!("{device} {} {url}", token("expired"))),
            ("a token for another audience: 401 invalid_token", format!("{device} {} {url}", token("wrong-audience"))),
            ("a valid token without the required claim: 403 insufficient_scope", format!("{device} {} {url}", token("missing-claim"))),
            ("no client certificate: the handshake is refused (certificate_required)", format!("{base} {} {url}", token("valid"))),
            ("a revoked device certificate: refused (certificate_revoked)", format!("{base} --cert {dir}/revoked-client.pem --key {dir}/revoked-client.key {} {url}", token("valid"))),
        ];
        let mut text = String::new();
        for (what, command) in steps {
            let _ = writeln!(text, "# {what}\n{command}");
        }
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
        let device = CertRequest::client("demo-device-1").uri("spiffe://demo.srrrs/device/1");
        Self {
            server: root.issue(&CertRequest::server(&["localhost", "127.0.0.1", "::1"])),
            client: device_ca.issue(&device),
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

/// Writes the dev IdP's JWKS and one header file per sample token.
fn write_idp(dir: &Path) -> io::Result<()> {
    let idp = DevIdp::new(DEMO_ISSUER, "demo-key-1", KeyKind::EcdsaP256);
    std::fs::write(dir.join("idp-jwks.json"), idp.jwks())?;

    let mut valid = idp.claims(DEMO_AUDIENCE, "alice@demo.srrrs");
    valid.insert("department".into(), json!("engineering"));
    valid.insert("clearance_level".into(), json!("high"));
    let mut expired = valid.clone();
    let hour_ago = unix_seconds().saturating_sub(3600);
    expired.insert("exp".into(), json!(hour_ago));
    let mut wrong_audience = valid.clone();
    wrong_audience.insert("aud".into(), json!("another-api"));
    let mut missing_claim = valid.clone();
    missing_claim.remove("clearance_level");

    for (name, claims) in [
        ("valid", valid),
        ("expired", expired),
        ("wrong-audience", wrong_audience),
        ("missing-claim", missing_claim),
    ] {
        let header = format!("Authorization: Bearer {}\n", idp.sign(&claims));
        std::fs::write(dir.join(format!("{name}.header")), header)?;
    }
    Ok(())
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
  application_auth:
    type: \"jwt\"
    issuer: \"{DEMO_ISSUER}\"
    audience: \"{DEMO_AUDIENCE}\"
    jwks_file: \"idp-jwks.json\"
    required_claims:
      department: \"engineering\"
      clearance_level: \"high\"
  identity_headers:
    claims:
      department: \"x-auth-department\"
  upstream:
    backends: [\"{backend}\"]
",
        port = options.port,
    )
}
