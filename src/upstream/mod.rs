//! Backends: the configured pool, round-robin choice with fail-over on connect errors,
//! and the connected stream (TCP or Unix socket) split into its two directions.
//! What is sent over it is the proxy's business.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use monoio::io::{
    AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::{TcpStream, UnixStream};
use monoio::BufResult;
use tracing::{debug, warn};

use crate::config::{BackendConfig, IdentityFormat, IngressSource, Problems, ProxyProtocolVersion};
use crate::reload::Lifetime;
use crate::tls::backend::BackendTls;
use crate::tls::stream::{self, TlsReader, TlsWriter};

pub mod health;
pub mod pool;
pub mod proxy_protocol;
use crate::config::{Balance, EjectionConfig, HealthCheckConfig};
use crate::socket;
use health::BackendHealth;

/// Where one backend listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddress {
    /// A TCP backend, with every address its name resolved to at load, tried in order.
    Tcp(Vec<SocketAddr>),
    /// A Unix stream socket.
    Unix(PathBuf),
}

/// One backend, as configured.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The configured spelling (`app:8080`, `unix:/run/app.sock`), for logs.
    pub name: String,
    /// Where to connect.
    pub address: BackendAddress,
    /// The PROXY protocol header each connection begins with.
    pub proxy_protocol: ProxyProtocolVersion,
    /// The TLV type carrying the client certificate in a version 2 header.
    pub certificate_tlv: Option<u8>,
    /// How the device is described to it.
    pub identity_format: IdentityFormat,
    /// TLS to it, when it takes only TLS.
    pub tls: Option<BackendTls>,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Backend {
    /// Parses `host:port`, `[v6]:port` or `unix:/path`, resolving host names now.
    pub fn parse(spec: &str) -> Result<Self, String> {
        if let Some(path) = spec.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{spec:?}: a Unix socket path must be absolute"));
            }
            return Ok(Self::at(spec, BackendAddress::Unix(path.into())));
        }
        let addrs: Vec<SocketAddr> = spec
            .to_socket_addrs()
            .map_err(|error| format!("{spec:?}: expected host:port or unix:/path ({error})"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{spec:?}: the name resolves to no address"));
        }
        Ok(Self::at(spec, BackendAddress::Tcp(addrs)))
    }

    fn at(spec: &str, address: BackendAddress) -> Self {
        Self {
            name: spec.to_owned(),
            address,
            proxy_protocol: ProxyProtocolVersion::None,
            certificate_tlv: None,
            identity_format: IdentityFormat::Edge,
            tls: None,
        }
    }

    /// Builds a backend from its configured entry, reading the files it names (resolved
    /// by `resolve`).
    pub fn build(
        config: &BackendConfig,
        resolve: impl Fn(&std::path::Path) -> PathBuf,
    ) -> Result<Self, String> {
        let custom = 0xe0..=0xef;
        if let Some(kind) = config.certificate_tlv.filter(|kind| !custom.contains(kind)) {
            return Err(format!(
                "certificate_tlv {kind} is outside the custom range 224 to 239 (0xE0 to 0xEF)"
            ));
        }
        if config.certificate_tlv.is_some() && config.proxy_protocol != ProxyProtocolVersion::V2 {
            return Err("certificate_tlv needs proxy_protocol: v2".into());
        }
        let mut backend = Self::parse(&config.address)?;
        if backend.proxy_protocol_unsupported(config.proxy_protocol) {
            return Err("a Unix socket backend takes no PROXY protocol header".into());
        }
        backend.proxy_protocol = config.proxy_protocol;
        backend.certificate_tlv = config.certificate_tlv;
        backend.identity_format = config.identity_format;
        if let Some(tls) = &config.tls {
            let BackendAddress::Tcp(_) = &backend.address else {
                return Err("tls: a Unix socket backend is reached without TLS".into());
            };
            let host =
                (config.address.rsplit_once(':')).map_or(config.address.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            backend.tls = Some(BackendTls::build(tls, host, resolve)?);
        }
        Ok(backend)
    }

    fn proxy_protocol_unsupported(&self, version: ProxyProtocolVersion) -> bool {
        matches!(self.address, BackendAddress::Unix(_)) && version != ProxyProtocolVersion::None
    }

    /// Connects, sends `header` (a PROXY protocol header) first on the TCP stream, then
    /// runs the TLS handshake when the backend takes TLS.
    async fn connect(
        &self,
        timeout: Duration,
        header: Option<Vec<u8>>,
    ) -> io::Result<BackendStream> {
        match &self.address {
            BackendAddress::Unix(path) => {
                let stream = within(timeout, UnixStream::connect(path)).await?;
                Ok(BackendStream::Unix(stream))
            }
            BackendAddress::Tcp(addrs) => {
                let mut last_error = io::Error::other("no address");
                for addr in addrs {
                    let attempt = self.connect_to(*addr, timeout, header.clone());
                    match attempt.await {
                        Ok(stream) => return Ok(stream),
                        Err(error) => last_error = error,
                    }
                }
                Err(last_error)
            }
        }
    }

    async fn connect_to(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        header: Option<Vec<u8>>,
    ) -> io::Result<BackendStream> {
        let mut stream = within(timeout, TcpStream::connect_addr(addr)).await?;
        let _ = stream.set_nodelay(true);
        if let Some(header) = header {
            // Before any TLS: the header speaks for the TCP connection (proxy-protocol.txt).
            let (sent, _) = monoio::io::AsyncWriteRentExt::write_all(&mut stream, header).await;
            sent.map_err(|error| io::Error::other(format!("PROXY header: {error}")))?;
        }
        let Some(tls) = &self.tls else {
            return Ok(BackendStream::Tcp(stream));
        };
        let handshake = stream::connect(stream, tls.config.clone(), tls.name.clone());
        match within(timeout, handshake).await {
            Ok((reader, writer)) => Ok(BackendStream::Tls(reader, writer)),
            Err(error) => Err(io::Error::other(format!("TLS: {error}"))),
        }
    }
}

/// The backends of an ingress and how to reach them.
#[derive(Debug, Clone)]
pub struct BackendPool {
    backends: Vec<Backend>,
    health: std::sync::Arc<[BackendHealth]>,
    health_check: Option<HealthCheckConfig>,
    ejection: EjectionConfig,
    /// How a backend is chosen.
    pub balance: Balance,
    connect_timeout: Duration,
    /// Idle connections kept per worker.
    pub keepalive_connections: usize,
    /// How long an idle connection is kept.
    pub keepalive_timeout: Duration,
    /// Backend connections in use per worker.
    pub max_connections_per_worker: usize,
    /// How long a backend may stay silent while a response is due.
    pub response_timeout: Duration,
}

/// No backend of the pool accepted a connection.
#[derive(Debug)]
pub struct NoBackendReachable {
    /// How many backends were tried.
    pub tried: usize,
}

impl BackendPool {
    /// Builds the pool from `ingress.upstream`, recording each bad entry.
    pub fn build(loaded: &IngressSource, problems: &mut Problems) -> Option<Self> {
        let upstream = &loaded.ingress.upstream;
        if upstream.backends.is_empty() {
            problems.push(
                "ingress.upstream.backends",
                "at least one backend is required",
            );
        }
        let mut backends = Vec::new();
        for (index, entry) in upstream.backends.iter().enumerate() {
            match Backend::build(entry, |path| loaded.resolve(path)) {
                Ok(backend) => backends.push(backend),
                Err(error) => problems.push(&format!("ingress.upstream.backends[{index}]"), error),
            }
        }
        let complete = !backends.is_empty() && backends.len() == upstream.backends.len();
        complete.then(|| Self {
            health: (0..backends.len())
                .map(|_| BackendHealth::default())
                .collect(),
            backends,
            health_check: upstream.health_check.clone(),
            ejection: upstream.ejection.clone(),
            balance: upstream.balance,
            connect_timeout: upstream.connect_timeout,
            keepalive_connections: upstream.keepalive_connections,
            keepalive_timeout: upstream.keepalive_timeout,
            max_connections_per_worker: upstream.max_connections_per_worker,
            response_timeout: upstream.response_timeout,
        })
    }

    /// Whether a backend reads PROXY headers, which carry the SNI.
    pub fn sends_proxy_headers(&self) -> bool {
        (self.backends.iter()).any(|backend| backend.proxy_protocol != ProxyProtocolVersion::None)
    }

    /// The backends, in configured order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The health of each backend, in configured order.
    pub fn health(&self) -> &[BackendHealth] {
        &self.health
    }

    /// The same, shared, for the metrics.
    pub fn shared_health(&self) -> std::sync::Arc<[BackendHealth]> {
        self.health.clone()
    }

    /// Starts the active health checks, if configured, until `lifetime` ends.
    pub fn start_checks(&self, lifetime: Lifetime) -> io::Result<()> {
        match &self.health_check {
            Some(config) => health::spawn_checks(
                self.backends.clone(),
                self.health.clone(),
                config.clone(),
                lifetime,
            ),
            None => Ok(()),
        }
    }

    /// Connects to backend number `preferred`, or, when it fails, to the next ones in
    /// order, trying each once: first the available ones (up and not ejected), then,
    /// when none of those connects, the others, so that a check that is wrong about
    /// every backend does not take the service down. Returns the stream and the
    /// backend's number. A backend that reads PROXY headers gets `header`'s first.
    pub async fn connect(
        &self,
        preferred: usize,
        header: impl Fn(&Backend) -> Option<Vec<u8>>,
    ) -> Result<(BackendStream, usize), NoBackendReachable> {
        let count = self.backends.len();
        let in_order = (0..count).map(|offset| (preferred + offset) % count);
        let (available, others): (Vec<usize>, Vec<usize>) =
            in_order.partition(|index| self.health[*index].is_available());
        for index in available.into_iter().chain(others) {
            let backend = &self.backends[index];
            match backend.connect(self.connect_timeout, header(backend)).await {
                Ok(stream) => {
                    debug!(backend = %backend, "backend connected");
                    self.health[index].connected();
                    return Ok((stream, index));
                }
                Err(error) => {
                    warn!(backend = %backend, %error, "backend connect failed");
                    if self.health[index].connect_failed(&self.ejection) {
                        warn!(backend = %backend, for_ = ?self.ejection.duration, "backend ejected after consecutive connect failures");
                    }
                }
            }
        }
        Err(NoBackendReachable { tried: count })
    }
}

async fn within<T>(
    limit: Duration,
    connect: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match monoio::time::timeout(limit, connect).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// A connected backend.
pub enum BackendStream {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over TLS, its handshake done.
    Tls(TlsReader, TlsWriter),
    /// Over a Unix stream socket.
    Unix(UnixStream),
}

impl BackendStream {
    /// Splits the stream into the direction toward the backend and the one from it.
    pub fn into_split(self) -> (BackendReader, BackendWriter) {
        match self {
            Self::Tcp(stream) => {
                let (read, write) = stream.into_split();
                (BackendReader::Tcp(read), BackendWriter::Tcp(write))
            }
            Self::Unix(stream) => {
                let (read, write) = stream.into_split();
                (BackendReader::Unix(read), BackendWriter::Unix(write))
            }
            Self::Tls(reader, writer) => (
                BackendReader::Tls(Box::new(reader)),
                BackendWriter::Tls(Box::new(writer)),
            ),
        }
    }
}

/// What the backend sends.
pub enum BackendReader {
    /// Over TCP.
    Tcp(OwnedReadHalf<TcpStream>),
    /// Over a Unix stream socket.
    Unix(OwnedReadHalf<UnixStream>),
    /// Over TLS.
    Tls(Box<TlsReader>),
}

impl BackendReader {
    /// Reads into `buffer` from its start; `Ok(0)` is the backend's end of stream.
    pub async fn read(
        &mut self,
        buffer: Vec<u8>,
        cancel: &CancelHandle,
    ) -> BufResult<usize, Vec<u8>> {
        match self {
            Self::Tcp(half) => half.cancelable_read(buffer, cancel.clone()).await,
            Self::Unix(half) => half.cancelable_read(buffer, cancel.clone()).await,
            Self::Tls(reader) => {
                let mut buffer = buffer;
                buffer.clear();
                let read = reader.read(&mut buffer, cancel).await;
                (read, buffer)
            }
        }
    }
}

/// What goes to the backend.
pub enum BackendWriter {
    /// Over TCP.
    Tcp(OwnedWriteHalf<TcpStream>),
    /// Over a Unix stream socket.
    Unix(OwnedWriteHalf<UnixStream>),
    /// Over TLS.
    Tls(Box<TlsWriter>),
}

impl BackendWriter {
    /// Sends all of `buffer`, which comes back either way.
    pub async fn send_all(
        &mut self,
        buffer: Vec<u8>,
        cancel: &CancelHandle,
    ) -> (io::Result<()>, Vec<u8>) {
        match self {
            Self::Tcp(half) => socket::send_all(half, buffer, cancel).await,
            Self::Unix(half) => socket::send_all(half, buffer, cancel).await,
            Self::Tls(writer) => (writer.write_all(&buffer, cancel).await, buffer),
        }
    }

    /// Half-closes the connection: the backend reads end of stream.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(half) => half.shutdown().await,
            Self::Unix(half) => half.shutdown().await,
            Self::Tls(writer) => {
                let never = monoio::io::Canceller::new();
                writer.close(&never.handle()).await?;
                writer.shutdown().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_specs_parse_or_say_why_not() {
        let tcp = Backend::parse("127.0.0.1:8080").expect("tcp");
        assert_eq!(
            tcp.address,
            BackendAddress::Tcp(vec!["127.0.0.1:8080".parse().unwrap()])
        );
        let unix = Backend::parse("unix:/run/app.sock").expect("unix");
        assert_eq!(unix.address, BackendAddress::Unix("/run/app.sock".into()));
        assert!(Backend::parse("unix:relative.sock")
            .unwrap_err()
            .contains("absolute"));
        assert!(Backend::parse("no-port").unwrap_err().contains("host:port"));
    }
}
