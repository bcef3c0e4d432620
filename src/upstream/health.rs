//! Whether each backend should get new connections, shared by every worker: marked down
//! by active checks (run on a thread of their own, off the workers), and ejected for a
//! while after consecutive connect failures (passive). A backend is available when it
//! is neither.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::{ClientConnection, StreamOwned};
use tracing::{info, warn};

use super::{proxy_protocol, Backend, BackendAddress};
use crate::config::{EjectionConfig, HealthCheckConfig};
use crate::reload::Lifetime;

/// The health of one backend.
#[derive(Debug)]
pub struct BackendHealth {
    /// Passed its active checks (always, without checks).
    up: AtomicBool,
    /// Connect failures in a row.
    failures: AtomicU32,
    /// Until when it is ejected, in milliseconds since the Unix epoch; 0 when it is not.
    ejected_until: AtomicU64,
    /// How many times it was ejected.
    ejections: AtomicU64,
}

impl Default for BackendHealth {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }
}

impl BackendHealth {
    /// Whether new connections should go to it now.
    pub fn is_available(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now_ms()
    }

    /// Whether its active checks pass.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// How many times it was ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// A connect succeeded.
    pub fn connected(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A connect failed; ejects the backend when that makes `policy`'s count. Returns
    /// whether it was ejected now.
    pub fn connect_failed(&self, policy: &EjectionConfig) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if policy.consecutive_failures == 0 || failures < policy.consecutive_failures {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        let until = now_ms() + policy.duration.as_millis() as u64;
        self.ejected_until.store(until, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Starts one thread per backend that checks it each `config.interval`, so that a
/// backend that answers slowly delays no other backend's checks.
pub fn spawn_checks(
    backends: Vec<Backend>,
    health: Arc<[BackendHealth]>,
    config: HealthCheckConfig,
    lifetime: Lifetime,
) -> std::io::Result<()> {
    for (index, backend) in backends.into_iter().enumerate() {
        let (health, config, lifetime) = (health.clone(), config.clone(), lifetime.clone());
        thread::Builder::new()
            .name("edge-health".into())
            .spawn(move || watch(&backend, &health[index], &config, &lifetime))?;
    }
    Ok(())
}

/// Checks one backend until `lifetime` ends, marking it down and up as its checks fail
/// and pass.
fn watch(
    backend: &Backend,
    state: &BackendHealth,
    config: &HealthCheckConfig,
    lifetime: &Lifetime,
) {
    // Consecutive results against the thresholds: positive passes, negative fails.
    let mut streak = 0i64;
    while !lifetime.is_over() {
        let passed = check(backend, config);
        streak = match (passed, streak) {
            (true, s) if s > 0 => s + 1,
            (true, _) => 1,
            (false, s) if s < 0 => s - 1,
            (false, _) => -1,
        };
        if state.is_up() && -streak >= i64::from(config.unhealthy_threshold) {
            warn!(backend = %backend, "backend failed its health checks; marked down");
            state.set_up(false);
        } else if !state.is_up() && streak >= i64::from(config.healthy_threshold) {
            info!(backend = %backend, "backend passes its health checks again; marked up");
            state.set_up(true);
        }
        thread::sleep(config.interval);
    }
}

/// One check, all of it within `config.timeout`: a connect, and with `http_path` a
/// `GET` answered with a 2xx or 3xx status. A backend that reads PROXY headers gets one
/// that speaks for the gateway itself, first on the TCP stream, before any TLS.
fn check(backend: &Backend, config: &HealthCheckConfig) -> bool {
    let deadline = Instant::now() + config.timeout;
    match &backend.address {
        BackendAddress::Tcp(addrs) => addrs.iter().any(|addr| {
            let left = deadline.saturating_duration_since(Instant::now());
            !left.is_zero()
                && TcpStream::connect_timeout(addr, left)
                    .is_ok_and(|stream| tcp_check(stream, backend, config, deadline))
        }),
        // A Unix socket connect does not wait on the network; the deadline bounds the
        // exchange that follows.
        BackendAddress::Unix(path) => UnixStream::connect(path)
            .is_ok_and(|stream| http_check(stream, backend, config, deadline)),
    }
}

fn tcp_check(
    mut stream: TcpStream,
    backend: &Backend,
    config: &HealthCheckConfig,
    deadline: Instant,
) -> bool {
    let header = proxy_protocol::health_check_header(backend.proxy_protocol);
    let left = deadline.saturating_duration_since(Instant::now());
    if !header.is_empty()
        && (stream.limit(left.max(Duration::from_millis(1))).is_err()
            || stream.write_all(&header).is_err())
    {
        return false;
    }
    match (&backend.tls, &config.http_path) {
        // The GET goes over TLS, as requests do.
        (Some(tls), Some(_)) => ClientConnection::new(tls.config.clone(), tls.name.clone())
            .is_ok_and(|conn| {
                http_check(StreamOwned::new(conn, stream), backend, config, deadline)
            }),
        _ => http_check(stream, backend, config, deadline),
    }
}

/// A socket whose read and write timeouts can be set.
trait Timed: Read + Write {
    fn limit(&self, left: Duration) -> std::io::Result<()>;
}

impl Timed for TcpStream {
    fn limit(&self, left: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(left))?;
        self.set_write_timeout(Some(left))
    }
}

impl Timed for StreamOwned<ClientConnection, TcpStream> {
    fn limit(&self, left: Duration) -> std::io::Result<()> {
        self.sock.limit(left)
    }
}

impl Timed for UnixStream {
    fn limit(&self, left: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(left))?;
        self.set_write_timeout(Some(left))
    }
}

fn http_check(
    mut stream: impl Timed,
    backend: &Backend,
    config: &HealthCheckConfig,
    deadline: Instant,
) -> bool {
    let Some(path) = &config.http_path else {
        return true;
    };
    let left = || deadline.saturating_duration_since(Instant::now());
    let host = backend
        .name
        .strip_prefix("unix:")
        .map_or(backend.name.as_str(), |_| "localhost");
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: srrrs-edge-health-check\r\n\
         connection: close\r\n\r\n"
    );
    if stream.limit(left().max(Duration::from_millis(1))).is_err()
        || stream.write_all(request.as_bytes()).is_err()
    {
        return false;
    }
    let mut head = [0u8; 64];
    let mut read = 0;
    // The status line within the deadline, however it trickles in.
    while read < 12 {
        let remaining = left();
        if remaining.is_zero() || stream.limit(remaining).is_err() {
            return false;
        }
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => return false,
            Ok(more) => read += more,
        }
    }
    let status_line = &head[..read];
    status_line.starts_with(b"HTTP/1.") && matches!(status_line.get(9), Some(b'2' | b'3'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_connect_failures_eject_and_a_success_resets_the_count() {
        let health = BackendHealth::default();
        let policy = EjectionConfig {
            consecutive_failures: 3,
            duration: Duration::from_secs(60),
        };
        assert!(!health.connect_failed(&policy));
        assert!(!health.connect_failed(&policy));
        health.connected();
        assert!(!health.connect_failed(&policy));
        assert!(!health.connect_failed(&policy));
        assert!(health.is_available());
        assert!(health.connect_failed(&policy));
        assert!(!health.is_available());
        assert_eq!(health.ejections(), 1);

        let never = EjectionConfig {
            consecutive_failures: 0,
            duration: Duration::from_secs(60),
        };
        let other = BackendHealth::default();
        for _ in 0..10 {
            assert!(!other.connect_failed(&never));
        }
        assert!(other.is_available());
    }
}
