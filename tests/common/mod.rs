//! What the integration tests share: a PKI made at test time, the real gateway binary
//! started with a generated config, real TLS clients (rustls and curl), and backends
//! (the echo backend in this process, nginx started from its Debian package).

#![allow(dead_code)] // Each test binary uses a different part of this module.

pub mod ocsp;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use srrrs_edge::demo::echo::EchoBackend;
use srrrs_edge::demo::pki::{Authority, CertRequest, IssuedCert};
use tempfile::TempDir;
use time::{Duration as Span, OffsetDateTime};

/// The revocation epoch of the test configs' one ingress, `localhost`, in `/metrics`.
pub const EPOCH: &str = "srrrs_revocation_epoch{ingress=\"localhost\"}";

/// The I/O driver a test runs the gateway on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub fn flag(self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        }
    }
}

/// Generates one test per listed scenario and driver: `io_uring::name` and `epoll::name`.
#[macro_export]
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {
        mod io_uring {
            $( #[test] fn $name() { super::$name($crate::common::Driver::IoUring) } )*
        }
        mod epoll {
            $( #[test] fn $name() { super::$name($crate::common::Driver::Epoll) } )*
        }
    };
}

/// The test PKI: a server CA, a device root with an intermediate, and devices in every
/// state a test needs. Files are written under `dir`.
pub struct TestPki {
    pub dir: TempDir,
    pub server_root: Authority,
    pub device_root: Authority,
    pub device_ca: Authority,
    pub other_root: Authority,
    pub good: IssuedCert,
    pub revoked: IssuedCert,
    pub expired: IssuedCert,
    pub untrusted: IssuedCert,
    pub second_ca_client: IssuedCert,
    pub second_root: Authority,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("srrrs-test-")
            .tempdir()
            .expect("temp dir");
        let server_root = Authority::root("test server root");
        let device_root = Authority::root("test device root");
        let device_ca = device_root.intermediate("test device CA");
        let other_root = Authority::root("untrusted root");
        let second_root = Authority::root("second device root");
        let now = OffsetDateTime::now_utc();
        let pki = Self {
            good: device_ca.issue(&CertRequest::client("device-good")),
            revoked: device_ca.issue(&CertRequest::client("device-revoked")),
            expired: device_ca.issue(
                &CertRequest::client("device-expired")
                    .valid(now - Span::days(30), now - Span::days(1)),
            ),
            untrusted: other_root
                .intermediate("untrusted CA")
                .issue(&CertRequest::client("intruder")),
            second_ca_client: second_root.issue(&CertRequest::client("device-second-ca")),
            dir,
            server_root,
            device_root,
            device_ca,
            other_root,
            second_root,
        };
        pki.write_defaults();
        pki
    }

    fn write_defaults(&self) {
        let week = Span::days(7);
        let server = self
            .server_root
            .issue(&CertRequest::server(&["localhost", "127.0.0.1"]));
        self.write("server.pem", &server.chain_pem);
        self.write("server.key", &server.key_pem);
        self.write("server-root.pem", &self.server_root.cert_pem);
        self.write("device-root.pem", &self.device_root.cert_pem);
        self.write("second-root.pem", &self.second_root.cert_pem);
        self.write("device-root.crl", &self.device_root.crl(&[], week));
        self.write("device-ca.crl", &self.device_ca.crl(&[&self.revoked], week));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    /// Writes a client's chain and key and returns their paths, for curl.
    pub fn client_files(&self, name: &str, cert: &IssuedCert) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &cert.chain_pem),
            self.write(&format!("{name}.key"), &cert.key_pem),
        )
    }

    /// An mTLS config: CRLs required, the default test files, the given backends.
    pub fn mtls_config(&self, port: u16, backends: &[String]) -> String {
        format!(
            "listen: [\"127.0.0.1:{port}\"]
runtime: {{workers: 2}}
ingress:
  hostname: localhost
  server_tls: {{cert_chain: server.pem, private_key: server.key}}
  transport_security:
    mode: mtls
    client_ca_cert: device-root.pem
    require_crl_check: true
    crl_files: [device-root.crl, device-ca.crl]
  upstream:
    backends: {}
",
            yaml_list(backends)
        )
    }
}

pub fn yaml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The echo backend behind a gateway with the default mTLS config and an admin listener.
pub fn start_mtls(driver: Driver) -> (TestPki, EchoBackend, Gateway) {
    let pki = TestPki::new();
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = pki.mtls_config(port, &[backend_addr]);
    let gateway =
        Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);
    (pki, backend, gateway)
}

/// A port nothing listens on right now.
///
/// Chosen at random below the kernel's ephemeral range (32768 and up on Linux), so that
/// the outgoing connections of tests running in parallel cannot take it between this
/// call and the gateway's bind, as a port the kernel handed out could be.
///
/// A port is handed out once per test process: a test asking twice (the listener and the
/// admin port) before binding either would otherwise get the same one now and then.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let state = RandomState::new();
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for attempt in 0u32..1000 {
        let port = 10_000 + (state.hash_one(attempt) % 22_000) as u16;
        if given.contains(&port) {
            continue;
        }
        let free_v4 = TcpListener::bind(("127.0.0.1", port)).is_ok();
        let free_v6 = TcpListener::bind(("::1", port))
            .map_or_else(|error| error.kind() != io::ErrorKind::AddrInUse, |_| true);
        if free_v4 && free_v6 {
            given.push(port);
            return port;
        }
    }
    panic!("no free port below the ephemeral range")
}

/// The echo backend on a fresh loopback port.
pub fn echo_backend() -> (EchoBackend, String) {
    let (backend, addr) =
        EchoBackend::start_tcp(SocketAddr::from(([127, 0, 0, 1], 0))).expect("echo");
    (backend, addr.to_string())
}

/// Runs `srrrs-edge check` on a config file: its exit code and what it wrote to stderr.
pub fn check_config(path: &Path) -> (Option<i32>, String) {
    let output = Command::new(gateway_binary())
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

pub fn gateway_binary() -> &'static str {
    env!("CARGO_BIN_EXE_srrrs-edge")
}

/// The real gateway binary, running a config written to the PKI folder.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub log: PathBuf,
    /// The config file it runs, and the admin line appended to it.
    config: (PathBuf, String),
}

impl Gateway {
    /// Starts the gateway on `config` (listening on `port`) and waits until it accepts.
    pub fn start(dir: &Path, config: &str, port: u16, driver: Driver) -> Self {
        Self::start_with_admin(dir, config, port, None, driver)
    }

    /// As [`Self::start`], with the admin listener on `admin_port`.
    pub fn start_with_admin(
        dir: &Path,
        config: &str,
        port: u16,
        admin_port: Option<u16>,
        driver: Driver,
    ) -> Self {
        let admin_line = admin_port
            .map(|admin| format!("admin: {{listen: \"127.0.0.1:{admin}\"}}\n"))
            .unwrap_or_default();
        let name = format!("edge-{port}");
        let config_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, format!("{config}{admin_line}")).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(gateway_binary())
            .args(["run", "-c"])
            .arg(&config_path)
            .args(["--io-driver", driver.flag()])
            .env("RUST_LOG", "info,srrrs_edge=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start gateway");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut gateway = Self {
            child,
            addr,
            admin: admin_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            log,
            config: (config_path, admin_line),
        };
        gateway.wait_until_accepting();
        gateway
    }

    /// Waits for the start-up log line that comes once every worker runs (the listening
    /// sockets accept into their backlog before that), and for both ports to answer.
    fn wait_until_accepting(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited with {status}:\n{}", self.log_text());
            }
            let tls_up = TcpStream::connect(self.addr).is_ok();
            let admin_up = self
                .admin
                .is_none_or(|admin| TcpStream::connect(admin).is_ok());
            if tls_up && admin_up && self.log_text().contains("workers started") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not start:\n{}", self.log_text());
    }

    /// Replaces the config file the gateway runs (in one rename, as deployment tools
    /// do), keeping its admin listener.
    /// Replaces `from` with `to` in the config file and waits until the gateway has
    /// reloaded it.
    pub fn reload_replacing(&self, from: &str, to: &str) {
        let reloads = || log_count(self, "configuration reloaded");
        let before = reloads();
        self.edit_config(|config| {
            assert!(config.contains(from), "{from} is not in:\n{config}");
            config.replace(from, to)
        });
        let reloaded = eventually(Duration::from_secs(15), || reloads() > before);
        assert!(reloaded, "{}", self.log_text());
    }

    /// Replaces the config file with `edit` of the config it holds now.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let (path, admin_line) = &self.config;
        let text = std::fs::read_to_string(path).expect("read config");
        let config = text
            .strip_suffix(admin_line.as_str())
            .expect("the admin line");
        self.replace_config(&edit(config.to_owned()));
    }

    pub fn replace_config(&self, config: &str) {
        let (path, admin_line) = &self.config;
        let staged = path.with_extension("yaml.new");
        std::fs::write(&staged, format!("{config}{admin_line}")).expect("write config");
        std::fs::rename(&staged, path).expect("replace config");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP: reload.
    pub fn reload(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -HUP");
    }

    /// Sends SIGTERM: drain, then stop.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM");
    }

    /// Waits up to `limit` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The admin `/metrics` text.
    pub fn metrics(&self) -> String {
        let admin = self.admin.expect("gateway started without admin");
        http_get_plain(admin, "/metrics")
    }

    /// The value of one sample line of `/metrics`, or 0 while the gateway has not written
    /// it (a counter not yet counted).
    pub fn metric_or_zero(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The value of one sample line of `/metrics`, such as
    /// `srrrs_tls_handshake_failures_total{reason="unknown_ca"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(sample)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The process's resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the gateway's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// What the process holds: each fd's target and each thread's name, for failure
    /// messages.
    pub fn holdings(&self) -> String {
        let pid = self.pid();
        let list = |folder: String, describe: &dyn Fn(std::path::PathBuf) -> String| {
            let mut items: Vec<String> = std::fs::read_dir(folder)
                .map(|d| d.flatten().map(|e| describe(e.path())).collect())
                .unwrap_or_default();
            items.sort();
            items.join(", ")
        };
        let fds = list(format!("/proc/{pid}/fd"), &|path| {
            std::fs::read_link(&path).map_or_else(|_| "?".into(), |t| t.display().to_string())
        });
        let threads = list(format!("/proc/{pid}/task"), &|path| {
            std::fs::read_to_string(path.join("comm"))
                .map_or_else(|_| "?".into(), |c| c.trim().into())
        });
        format!("fds [{fds}]; threads [{threads}]")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain-HTTP GET, the whole response as text.
pub fn http_get_plain(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect admin");
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .expect("read admin response");
    text
}

/// How a rustls test client connects.
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl Client {
    /// Trusts the test server root; presents `cert` when given.
    pub fn new(pki: &TestPki, cert: Option<&IssuedCert>) -> Self {
        Self::with_versions(
            pki,
            cert,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
    }

    pub fn with_versions(
        pki: &TestPki,
        cert: Option<&IssuedCert>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Self {
        Self::for_server(&pki.server_root, cert, versions, "localhost")
    }

    pub fn for_server(
        server_root: &Authority,
        cert: Option<&IssuedCert>,
        versions: &[&'static rustls::SupportedProtocolVersion],
        server_name: &str,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(server_root.der.clone()).expect("root");
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match cert {
            Some(cert) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
                        .collect::<Result<_, _>>()
                        .expect("chain");
                let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            config: Arc::new(config),
            server_name: ServerName::try_from(server_name.to_owned()).expect("name"),
        }
    }

    /// Connects and completes the handshake (TLS 1.3 clients finish before the server
    /// has checked their certificate, so a refusal may surface only on the first read).
    pub fn connect(&self, addr: SocketAddr) -> Result<TlsStream, rustls::Error> {
        let tcp = TcpStream::connect(addr).map_err(|e| rustls::Error::General(e.to_string()))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let conn = ClientConnection::new(self.config.clone(), self.server_name.clone())?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(tls_error)?;
        }
        Ok(stream)
    }

    /// One `GET path` with `Connection: close`; the whole response, or the TLS error.
    pub fn get(&self, addr: SocketAddr, path: &str) -> Result<String, rustls::Error> {
        let mut stream = self.connect(addr)?;
        send_request(&mut stream, path, &[("connection", "close")]).map_err(tls_error)?;
        read_to_end(&mut stream)
    }

    /// The negotiated version of a fresh connection.
    pub fn version(&self, addr: SocketAddr) -> Option<rustls::ProtocolVersion> {
        self.connect(addr)
            .ok()
            .and_then(|s| s.conn.protocol_version())
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

pub fn send_request(
    stream: &mut TlsStream,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()
}

/// Reads until the server closes; a TLS alert becomes the error.
pub fn read_to_end(stream: &mut TlsStream) -> Result<String, rustls::Error> {
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof && !bytes.is_empty() => {
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        Err(error) => Err(tls_error(error)),
    }
}

/// The TLS error inside an I/O error from a rustls stream, or the I/O error as one.
pub fn tls_error(error: io::Error) -> rustls::Error {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => tls.clone(),
        None => rustls::Error::General(error.to_string()),
    }
}

/// The alert a refused connection ended with.
pub fn alert_of(result: Result<String, rustls::Error>) -> rustls::AlertDescription {
    match result {
        Err(rustls::Error::AlertReceived(alert)) => alert,
        other => panic!("expected a TLS alert, got {other:?}"),
    }
}

/// Runs curl with `args` against `url`.
pub fn curl(args: &[&str], url: &str) -> Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed")
}

/// curl with the test server root and, when given, a client certificate.
pub fn curl_mtls(
    pki: &TestPki,
    client: Option<(&Path, &Path)>,
    url: &str,
    extra: &[&str],
) -> Output {
    let ca = pki.path("server-root.pem");
    let mut args: Vec<String> = vec!["--cacert".into(), ca.display().to_string()];
    if let Some((cert, key)) = client {
        args.extend([
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args, url)
}

/// nginx from the Debian package, serving on a loopback port until dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    /// Its folder: `access.log` lists the requests it served.
    pub root: PathBuf,
}

impl Nginx {
    /// Answers every request with `nginx saw METHOD URI`.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, |port| {
            format!(
                "listen 127.0.0.1:{port};
    location / {{ return 200 \"nginx saw $request_method $request_uri\\n\"; }}"
            )
        })
    }

    /// Runs the server block `server(port)` returns.
    pub fn start_with(dir: &Path, server: impl FnOnce(u16) -> String) -> Self {
        let port = free_port();
        let server = server(port);
        let root = dir.join(format!("nginx-{port}"));
        std::fs::create_dir_all(root.join("tmp")).expect("nginx dir");
        let config = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {root}/access.log;
  client_body_temp_path {root}/tmp/body;
  proxy_temp_path {root}/tmp/proxy;
  fastcgi_temp_path {root}/tmp/fastcgi;
  uwsgi_temp_path {root}/tmp/uwsgi;
  scgi_temp_path {root}/tmp/scgi;
  server {{
    {server}
  }}
}}
",
            root = root.display()
        );
        let config_path = root.join("nginx.conf");
        std::fs::write(&config_path, config).expect("nginx config");
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is installed (apt-get install nginx-light)");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .arg("-p")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr, root }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rewrites the device CA's CRL to revoke `certs` too (besides `pki.revoked`), makes
/// the gateway reload, and waits for the new revocation epoch.
pub fn revoke(pki: &TestPki, gateway: &Gateway, certs: &[&IssuedCert]) {
    let mut revoked = vec![&pki.revoked];
    revoked.extend_from_slice(certs);
    let before = gateway.metric(EPOCH);
    pki.write("device-ca.crl", &pki.device_ca.crl(&revoked, Span::days(7)));
    gateway.reload();
    let reloaded = eventually(Duration::from_secs(10), || gateway.metric(EPOCH) > before);
    assert!(
        reloaded,
        "the new CRL went into force:\n{}",
        gateway.log_text()
    );
}

/// Polls `condition` for up to `limit`.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Client {
    /// Sends `bytes` as they are, then reads until the server closes.
    pub fn exchange(&self, addr: SocketAddr, bytes: &[u8]) -> Result<String, rustls::Error> {
        let mut stream = self.connect(addr)?;
        stream.write_all(bytes).map_err(tls_error)?;
        stream.flush().map_err(tls_error)?;
        read_to_end(&mut stream)
    }

    /// One `GET path` with these extra header lines and `Connection: close`.
    pub fn get_with(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
        let mut stream = self.connect(addr).expect("handshake");
        let mut all = headers.to_vec();
        all.push(("connection", "close"));
        send_request(&mut stream, path, &all).expect("send");
        read_to_end(&mut stream).expect("response")
    }
}

/// The status code of the first response in `text`.
pub fn status_of(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Every status line in `text`, in order.
pub fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text[at + 9..at + 12].parse().ok())
        .collect()
}

/// An HTTPS server for JWKS and OIDC discovery documents, counting every fetch.
pub struct JwksServer {
    pub addr: SocketAddr,
    state: Arc<std::sync::Mutex<JwksState>>,
}

/// How the [`JwksServer`] answers a request for the JWKS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JwksAnswer {
    /// 200 with the JWKS.
    #[default]
    Keys,
    /// The JWKS, after this long.
    Slow(Duration),
    /// 200 with an HTML page.
    Garbage,
    /// 200 with a body that never ends, written until the client closes.
    Endless,
    /// Nothing listens: connections are refused.
    Down,
}

#[derive(Default)]
struct JwksState {
    jwks: String,
    answer: JwksAnswer,
    fetches: usize,
    discovery_fetches: usize,
    endless_bodies_cut: usize,
}

impl JwksServer {
    /// Serves `jwks` over TLS with a certificate for 127.0.0.1 from the test server root.
    pub fn start(pki: &TestPki, jwks: String) -> Self {
        let cert = pki.server_root.issue(&CertRequest::server(&["127.0.0.1"]));
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(std::sync::Mutex::new(JwksState {
            jwks,
            ..Default::default()
        }));
        let serving = state.clone();
        std::thread::spawn(move || accept_jwks_clients(listener, config, serving));
        Self { addr, state }
    }

    /// Changes how the JWKS is answered from the next request on.
    pub fn set_answer(&self, answer: JwksAnswer) {
        self.state.lock().unwrap().answer = answer;
    }

    /// How many endless bodies were cut off by the client.
    pub fn endless_bodies_cut(&self) -> usize {
        self.state.lock().unwrap().endless_bodies_cut
    }

    pub fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn uri(&self) -> String {
        format!("{}/jwks.json", self.issuer())
    }

    pub fn set_jwks(&self, jwks: String) {
        self.state.lock().unwrap().jwks = jwks;
    }

    pub fn fetches(&self) -> usize {
        self.state.lock().unwrap().fetches
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.lock().unwrap().discovery_fetches
    }
}

/// Serves each client on a thread of its own. While the answer is [`JwksAnswer::Down`]
/// the listening socket is closed (so connections are refused), and bound again after.
fn accept_jwks_clients(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    state: Arc<std::sync::Mutex<JwksState>>,
) {
    let addr = listener.local_addr().expect("addr");
    let mut listener = Some(listener);
    loop {
        let down = state.lock().unwrap().answer == JwksAnswer::Down;
        if down {
            listener = None;
        } else if listener.is_none() {
            listener = TcpListener::bind(addr).ok();
        }
        let Some(open) = listener.as_ref() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        open.set_nonblocking(true).expect("nonblocking");
        match open.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                let (config, state) = (config.clone(), state.clone());
                std::thread::spawn(move || serve_jwks(stream, config, &state, addr));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_jwks(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: &std::sync::Mutex<JwksState>,
    addr: SocketAddr,
) {
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut stream = StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
    let answer = state.lock().unwrap().answer;
    if path == "/jwks.json" {
        state.lock().unwrap().fetches += 1;
        match answer {
            JwksAnswer::Slow(delay) => std::thread::sleep(delay),
            JwksAnswer::Endless => {
                stream_endless_json(&mut stream);
                state.lock().unwrap().endless_bodies_cut += 1;
                return;
            }
            JwksAnswer::Keys | JwksAnswer::Garbage | JwksAnswer::Down => {}
        }
    }
    let body = {
        let mut state = state.lock().unwrap();
        if path == "/jwks.json" && answer == JwksAnswer::Garbage {
            Some("<html><body>502 Bad Gateway</body></html>".to_owned())
        } else if path == "/jwks.json" {
            Some(state.jwks.clone())
        } else if path == "/.well-known/openid-configuration" {
            state.discovery_fetches += 1;
            let issuer = format!("https://127.0.0.1:{}", addr.port());
            Some(format!(
                r#"{{"issuer":"{issuer}","jwks_uri":"{issuer}/jwks.json"}}"#
            ))
        } else {
            None
        }
    };
    let response = match body {
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
    };
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

/// Writes a 200 whose JSON body never ends (no length: it would end with the
/// connection), until the client stops reading and closes.
fn stream_endless_json(stream: &mut StreamOwned<rustls::ServerConnection, TcpStream>) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
    let padding = vec![b' '; 64 * 1024];
    stream
        .sock
        .set_write_timeout(Some(Duration::from_secs(30)))
        .ok();
    let mut written = stream.write_all(head.as_bytes());
    written = written.and_then(|()| stream.write_all(br#"{"keys":["#));
    while written.is_ok() {
        written = stream.write_all(&padding);
    }
}

/// Reads the last response of a kept-alive connection: a 200 that says the connection
/// closes, with nothing after it.
pub fn read_last_response(stream: &mut TlsStream) -> String {
    let last = read_one_response(stream);
    assert_eq!(status_of(&last), 200, "{last}");
    assert!(last.contains("connection: close\r\n"), "{last}");
    let mut after = Vec::new();
    let _ = stream.read_to_end(&mut after);
    assert!(after.is_empty(), "{after:?}");
    last
}

/// Asserts that the gateway closes `stream` within `limit`, without sending a byte.
pub fn assert_closed_silently(stream: &mut TlsStream, limit: Duration) {
    stream.sock.set_read_timeout(Some(limit)).expect("timeout");
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest);
    assert!(
        closed.is_ok() || closed.is_err_and(|e| e.kind() == io::ErrorKind::UnexpectedEof),
        "the connection was not closed"
    );
    assert!(rest.is_empty(), "{rest:?}");
}

/// The `Content-Length` a message head declares; 0 without one (or with a bad one).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Reads one response with a `Content-Length` body (none when it has no such header)
/// from a kept-alive connection.
pub fn read_one_response(stream: &mut TlsStream) -> String {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("response head");
        bytes.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&bytes).into_owned();
    let mut body = vec![0u8; content_length(&head)];
    stream.read_exact(&mut body).expect("response body");
    head + &String::from_utf8_lossy(&body)
}

/// A kept-alive backend that answers requests for `/slow…` paths after `delay` and
/// others at once, counting the slow requests it has begun to answer.
pub struct SlowBackend {
    pub addr: String,
    pub started: Arc<AtomicUsize>,
    pub answered: Arc<AtomicUsize>,
    released: Arc<(Mutex<bool>, Condvar)>,
}

impl SlowBackend {
    /// A backend that holds each `/slow` request for `delay`, or until `release`.
    pub fn start(delay: Duration) -> Self {
        let started = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let released = Arc::new((Mutex::new(false), Condvar::new()));
        let state = (delay, started.clone(), answered.clone(), released.clone());
        let (addr, _) = serve_each(state, |stream, (delay, started, answered, released)| {
            answer_slowly(stream, *delay, started, answered, released)
        });
        Self {
            addr,
            started,
            answered,
            released,
        }
    }

    /// Answers the `/slow` requests held now and any that come later at once.
    pub fn release(&self) {
        let (released, woken) = &*self.released;
        *released.lock().unwrap() = true;
        woken.notify_all();
    }
}

/// Accepts connections on a new local listener and serves each on a thread of its own
/// with `serve(stream, &state)`: the listener's address and the state.
pub fn serve_each<S: Send + Sync + 'static>(
    state: S,
    serve: fn(TcpStream, &S),
) -> (String, Arc<S>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let state = Arc::new(state);
    let shared = state.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let state = shared.clone();
            std::thread::spawn(move || serve(stream, &state));
        }
    });
    (addr, state)
}

/// The next request head read from `stream`, what came after it kept in `pending`;
/// `None` once the peer has closed or failed.
pub fn next_head(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(pending.drain(..end + 4).collect());
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(read) => pending.extend_from_slice(&chunk[..read]),
        }
    }
}

fn answer_slowly(
    mut stream: TcpStream,
    delay: Duration,
    started: &AtomicUsize,
    answered: &AtomicUsize,
    (released, woken): &(Mutex<bool>, Condvar),
) {
    let mut pending = Vec::new();
    while let Some(head) = next_head(&mut stream, &mut pending) {
        if head.starts_with(b"GET /slow") {
            started.fetch_add(1, Ordering::SeqCst);
            let held = released.lock().unwrap();
            drop(woken.wait_timeout_while(held, delay, |released| !*released));
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ndone\n";
        if stream.write_all(answer).is_err() {
            return;
        }
        answered.fetch_add(1, Ordering::SeqCst);
    }
}

/// A CRL distribution point over plain HTTP. It answers every request with the reply
/// set last, and can be taken down: its port then refuses connections.
pub struct CrlPoint {
    pub addr: SocketAddr,
    reply: Arc<Mutex<(u16, Vec<u8>)>>,
    running: Arc<AtomicBool>,
}

impl CrlPoint {
    pub fn start(body: &[u8]) -> Self {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), body)
    }

    pub fn start_at(addr: SocketAddr, body: &[u8]) -> Self {
        let listener = TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let reply = Arc::new(Mutex::new((200, body.to_vec())));
        let running = Arc::new(AtomicBool::new(true));
        let (serving, replying) = (running.clone(), reply.clone());
        std::thread::spawn(move || {
            while serving.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => answer_crl(stream, &replying.lock().unwrap().clone()),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            addr,
            reply,
            running,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/device-ca.crl", self.addr)
    }

    /// Answers from now on with `status` and `body`.
    pub fn serve(&self, status: u16, body: &[u8]) {
        *self.reply.lock().unwrap() = (status, body.to_vec());
    }

    /// Closes the listening socket and waits until connections are refused.
    pub fn stop(&self) {
        self.running.store(false, Ordering::SeqCst);
        let down = eventually(Duration::from_secs(5), || {
            TcpStream::connect(self.addr).is_err()
        });
        assert!(down, "the CRL point still accepts");
    }
}

fn answer_crl(mut stream: TcpStream, (status, body): &(u16, Vec<u8>)) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    if next_head(&mut stream, &mut Vec::new()).is_none() {
        return;
    }
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/pkix-crl\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(body);
}

/// The issuer and audience of the test tokens.
pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "api-gateway";

/// `config` with a token policy before its upstream section: the test issuer and
/// audience, keys from `keys` (a YAML line naming their source), a 30 s cool-down for
/// unknown kids, then `extra` (further lines, each indented like the policy's fields
/// or like the ingress's sections).
pub fn with_token_policy(config: &str, keys: &str, extra: &str) -> String {
    let policy = format!(
        "  application_auth:
    type: jwt
    issuer: \"{ISSUER}\"
    audience: \"{AUDIENCE}\"
    {keys}
    unknown_kid_cooldown: 30s
{extra}  upstream:"
    );
    config.replace("  upstream:", &policy)
}

/// The echo backend and a gateway on the default mTLS config as `edit` changes it, with
/// an admin listener, once its revocation state is registered there.
pub fn start_edited(
    pki: &TestPki,
    driver: Driver,
    edit: impl FnOnce(String) -> String,
) -> (EchoBackend, Gateway) {
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = edit(pki.mtls_config(port, &[backend_addr]));
    let admin = Some(free_port());
    let gateway = Gateway::start_with_admin(pki.dir.path(), &config, port, admin, driver);
    // The admin listener may answer before the TLS state is registered with it.
    let ready = eventually(Duration::from_secs(10), || {
        gateway.metrics().contains("srrrs_revocation_epoch{")
    });
    assert!(ready, "no revocation epoch in /metrics");
    (backend, gateway)
}

/// The default mTLS config with CRLs from `files` and from `url`, fetched hourly.
pub fn with_crl_url(config: String, files: &str, url: &str) -> String {
    config.replace(
        "crl_files: [device-root.crl, device-ca.crl]",
        &format!("crl_files: {files}\n    crl_urls: [\"{url}\"]\n    crl_refresh_interval: 1h"),
    )
}

/// The paths of every request `backend` received, in order.
pub fn paths(backend: &EchoBackend) -> Vec<String> {
    backend.received().into_iter().map(|r| r.path).collect()
}

/// How many times `needle` appears in the gateway's log.
pub fn log_count(gateway: &Gateway, needle: &str) -> usize {
    gateway.log_text().matches(needle).count()
}

/// `openssl s_client` connecting to `connect` with SNI `localhost`, trusting the test
/// PKI's server root and presenting `cert` (its chain in the same file) and `key`; the
/// caller adds its own arguments and standard streams.
pub fn openssl_s_client(pki: &TestPki, cert: &Path, key: &Path, connect: &str) -> Command {
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", connect, "-servername", "localhost"])
        .arg("-CAfile")
        .arg(pki.path("server-root.pem"))
        .arg("-cert")
        .arg(cert)
        .arg("-cert_chain")
        .arg(cert)
        .arg("-key")
        .arg(key);
    command
}

/// Reads and drops what arrives until the peer closes `stream` (read timeouts are waited
/// through); how long that took. Panics after `limit`.
pub fn wait_for_close(stream: &mut impl Read, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut scratch = [0u8; 4096];
    loop {
        match stream.read(&mut scratch) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return started.elapsed(),
        }
        assert!(started.elapsed() < limit, "the connection stayed open");
    }
}

// --- OCSP -------------------------------------------------------------------------------

/// What an OCSP responder says about a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspStatus {
    Good,
    Revoked,
}

/// Who signs an OCSP responder's answers.
#[derive(Debug, Clone, Copy)]
pub enum OcspSigner<'a> {
    /// The CA that issued the certificates asked about, with its own key.
    Issuer,
    /// Another certificate, with its key: a delegate when the CA issued it with the
    /// OCSPSigning purpose, a signer the CA never authorized otherwise. OpenSSL puts it
    /// in each response.
    Delegate(&'a IssuedCert),
}

/// `openssl ocsp` answering for the certificates one CA issued, from an OpenSSL CA index
/// file that the test rewrites. Answers carry a nextUpdate an hour on, and echo the
/// request's nonce when it has one. Killed when dropped.
///
/// Two habits of OpenSSL 3.0's responder shape this fixture. It looks for a changed
/// index only before it waits for a connection, so the first request after a change is
/// answered from the old one: [`Self::set_status`] therefore asks itself until the new
/// status comes back. And a connection closed without a request makes it spin without
/// answering again: so its port is never probed with a bare connect.
pub struct OcspResponder {
    child: Child,
    port: u16,
    /// Where its files go, as a path prefix: `ocsp-PORT`.
    prefix: PathBuf,
    /// What it prints: each request received, and with `-text` each request and answer.
    pub log: PathBuf,
    /// The index lines, by serial number.
    index: Mutex<BTreeMap<String, String>>,
    /// The requests this fixture made itself, left out of [`Self::queries`].
    own_requests: AtomicUsize,
    /// Whether it runs: not after [`Self::stop`] until [`Self::restart`].
    running: bool,
}

impl OcspResponder {
    /// Starts a responder in `dir` for certificates `ca` issued, signing as `signer`, that
    /// knows `good` as good (and any other certificate as unknown).
    pub fn start(dir: &Path, ca: &Authority, signer: OcspSigner, good: &[&IssuedCert]) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let prefix = dir.join(format!("ocsp-{port}"));
            let index = good
                .iter()
                .map(|cert| (cert.serial_hex(), index_line(cert, OcspStatus::Good)))
                .collect();
            write_ocsp_files(&prefix, ca, signer);
            write_index(&prefix, &index);
            if let Some(child) = spawn_ocsp_responder(&prefix, port) {
                return Self {
                    child,
                    port,
                    log: with_suffix(&prefix, ".log"),
                    prefix,
                    index: Mutex::new(index),
                    own_requests: AtomicUsize::new(0),
                    running: true,
                };
            }
        }
        panic!("the OCSP responder did not start on any of five ports")
    }

    /// Where to ask: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes the index say `status` for `cert`, and, while it runs, waits until the
    /// responder answers so (stopped, it reads the index when it restarts).
    pub fn set_status(&self, cert: &IssuedCert, status: OcspStatus) {
        let mut index = self.index.lock().unwrap();
        index.insert(cert.serial_hex(), index_line(cert, status));
        write_index(&self.prefix, &index);
        drop(index);
        if !self.running {
            return;
        }

        let wanted = match status {
            OcspStatus::Good => ": good",
            OcspStatus::Revoked => ": revoked",
        };
        for _ in 0..10 {
            if self.ask(cert, &["-noverify"]).contains(wanted) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the responder never answered{wanted}:\n{}", self.log_text());
    }

    /// Asks about `cert` with the OpenSSL client, verifying the answer against
    /// `trust_anchor`: its report, with the response as text.
    pub fn ask_verified(&self, cert: &IssuedCert, trust_anchor: &Path) -> String {
        let anchor = trust_anchor.display().to_string();
        self.ask(cert, &["-CAfile", &anchor, "-resp_text"])
    }

    /// How many requests others (the gateway) sent it.
    pub fn queries(&self) -> usize {
        let received = self
            .log_text()
            .matches("Received request, 1st line")
            .count();
        received.saturating_sub(self.own_requests.load(Ordering::SeqCst))
    }

    /// Kills it: its port refuses connections from now on.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.running = false;
    }

    /// Starts it again on the same port, after [`Self::stop`], with the same index.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_ocsp_responder(&self.prefix, self.port)
            .expect("the OCSP responder restarts on its port");
        self.running = true;
        // A new log: what was counted before is gone with it.
        self.own_requests.store(0, Ordering::SeqCst);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `openssl ocsp` as a client asking about `cert`, with `extra` arguments: all it
    /// printed, which names the certificate's file followed by its status.
    fn ask(&self, cert: &IssuedCert, extra: &[&str]) -> String {
        let cert_file = with_suffix(&self.prefix, &format!("-asked-{}.pem", cert.serial_hex()));
        std::fs::write(&cert_file, &cert.cert_pem).expect("write the asked certificate");
        self.own_requests.fetch_add(1, Ordering::SeqCst);
        let output = Command::new("openssl")
            .args(["ocsp", "-timeout", "5", "-url", &self.url(), "-issuer"])
            .arg(with_suffix(&self.prefix, "-ca.pem"))
            .arg("-cert")
            .arg(&cert_file)
            .args(extra)
            .output()
            .expect("openssl is installed");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    }
}

impl Drop for OcspResponder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `prefix` with `suffix` appended to its last component.
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut path = prefix.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

/// The issuing CA's certificate, and the signer's certificate and key.
fn write_ocsp_files(prefix: &Path, ca: &Authority, signer: OcspSigner) {
    let (signer_pem, signer_key) = match signer {
        OcspSigner::Issuer => (ca.cert_pem.clone(), ca.key_pem()),
        OcspSigner::Delegate(cert) => (cert.cert_pem.clone(), cert.key_pem.clone()),
    };
    let write = |suffix: &str, contents: &str| {
        std::fs::write(with_suffix(prefix, suffix), contents).expect("write OCSP file")
    };
    write("-ca.pem", &ca.cert_pem);
    write("-signer.pem", &signer_pem);
    write("-signer.key", &signer_key);
}

/// Writes the index file in one rename, so that the responder sees a new file, with the
/// attribute file OpenSSL reads beside it.
fn write_index(prefix: &Path, lines: &BTreeMap<String, String>) {
    let attributes = with_suffix(prefix, "-index.txt.attr");
    std::fs::write(attributes, "unique_subject = no\n").expect("write OCSP index attributes");
    let staged = with_suffix(prefix, "-index.txt.new");
    let text: String = lines.values().map(|line| format!("{line}\n")).collect();
    std::fs::write(&staged, text).expect("write OCSP index");
    std::fs::rename(&staged, with_suffix(prefix, "-index.txt")).expect("replace OCSP index");
}

/// The index line for `cert` saying `status` (revoked an hour ago).
fn index_line(cert: &IssuedCert, status: OcspStatus) -> String {
    let revoked_at = match status {
        OcspStatus::Good => None,
        OcspStatus::Revoked => Some(OffsetDateTime::now_utc() - Span::hours(1)),
    };
    cert.openssl_index_line(revoked_at)
}

/// Starts `openssl ocsp` on `port` with the files under `prefix`, and waits until it
/// listens; `None` if it exited (the port was taken, say).
fn spawn_ocsp_responder(prefix: &Path, port: u16) -> Option<Child> {
    let log_path = with_suffix(prefix, ".log");
    let log = std::fs::File::create(&log_path).expect("OCSP log file");
    let errors = log.try_clone().expect("OCSP log file");
    // stdbuf: `-text` goes to stdout, which is a file here and would be held back in a
    // buffer; line by line it stays in step with the requests logged on stderr.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "openssl", "ocsp", "-index"])
        .arg(with_suffix(prefix, "-index.txt"))
        .args(["-port", &port.to_string(), "-rsigner"])
        .arg(with_suffix(prefix, "-signer.pem"))
        .arg("-rkey")
        .arg(with_suffix(prefix, "-signer.key"))
        .arg("-CA")
        .arg(with_suffix(prefix, "-ca.pem"))
        .args(["-ignore_err", "-text", "-nmin", "60"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(errors)
        .spawn()
        .expect("openssl and stdbuf are installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("waiting for OCSP client connections") {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "the OCSP responder did not start:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    )
}
