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
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use super::{Backend, BackendAddress};
use crate::config::{EjectionConfig, HealthCheckConfig};

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

/// Starts the thread that checks every backend each `config.interval`.
pub fn spawn_checks(
    backends: Vec<Backend>,
    health: Arc<[BackendHealth]>,
    config: HealthCheckConfig,
) -> std::io::Result<()> {
    thread::Builder::new()
        .name("edge-health".into())
        .spawn(move || {
            // Consecutive results against the thresholds: positive passes, negative fails.
            let mut streaks = vec![0i64; backends.len()];
            loop {
                for (index, backend) in backends.iter().enumerate() {
                    let passed = check(backend, &config);
                    let streak = &mut streaks[index];
                    *streak = match (passed, *streak) {
                        (true, s) if s > 0 => s + 1,
                        (true, _) => 1,
                        (false, s) if s < 0 => s - 1,
                        (false, _) => -1,
                    };
                    let state = &health[index];
                    if state.is_up() && -*streak >= i64::from(config.unhealthy_threshold) {
                        warn!(backend = %backend, "backend failed its health checks; marked down");
                        state.set_up(false);
                    } else if !state.is_up() && *streak >= i64::from(config.healthy_threshold) {
                        info!(backend = %backend, "backend passes its health checks again; marked up");
                        state.set_up(true);
                    }
                }
                thread::sleep(config.interval);
            }
        })?;
    Ok(())
}

/// One check: a connect within the timeout, and with `http_path` a `GET` answered with
/// a 2xx or 3xx status.
fn check(backend: &Backend, config: &HealthCheckConfig) -> bool {
    let timeout = config.timeout;
    match &backend.address {
        BackendAddress::Tcp(addrs) => addrs.iter().any(|addr| {
            TcpStream::connect_timeout(addr, timeout).is_ok_and(|stream| {
                let _ = stream.set_read_timeout(Some(timeout));
                let _ = stream.set_write_timeout(Some(timeout));
                http_check(stream, backend, config)
            })
        }),
        BackendAddress::Unix(path) => UnixStream::connect(path).is_ok_and(|stream| {
            let _ = stream.set_read_timeout(Some(timeout));
            let _ = stream.set_write_timeout(Some(timeout));
            http_check(stream, backend, config)
        }),
    }
}

fn http_check(
    mut stream: impl Read + Write,
    backend: &Backend,
    config: &HealthCheckConfig,
) -> bool {
    let Some(path) = &config.http_path else {
        return true;
    };
    let host = backend
        .name
        .strip_prefix("unix:")
        .map_or(backend.name.as_str(), |_| "localhost");
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: srrrs-edge-health-check\r\n\
         connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
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
    use std::time::Duration;

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
