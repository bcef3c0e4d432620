//! Live connections and the certificates they were admitted with, per worker, so that a
//! certificate revoked (or expired) while its connection is open closes that connection
//! within a second of the new CRL going into force. Each connection is re-checked by the
//! verifier of the ingress it reached, which a configuration reload leaves in place for
//! it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::debug;

use super::exchange::Signal;
use crate::metrics::WorkerMetrics;
use crate::tls::chain_cache::VerifiedChain;
use crate::tls::client_auth::DeviceVerifier;

/// How often a worker looks for a new revocation epoch.
const EPOCH_POLL: Duration = Duration::from_millis(250);

/// How often live connections are re-checked anyway, for certificates that expire.
const EXPIRY_SWEEP: Duration = Duration::from_secs(30);

struct Entry {
    chain: Arc<VerifiedChain>,
    device: Arc<DeviceVerifier>,
    close: Rc<Signal>,
}

/// One worker's live connections with a client certificate.
#[derive(Default)]
pub struct LiveConnections {
    entries: RefCell<HashMap<u64, Entry>>,
    next_id: Cell<u64>,
    /// The verifiers of those connections, with the revocation epoch last swept under.
    verifiers: RefCell<Vec<(Weak<DeviceVerifier>, u64)>>,
}

/// A registered connection; dropping it unregisters.
pub struct Registration<'a> {
    live: &'a LiveConnections,
    id: u64,
    /// Raised when the connection must close.
    pub close: Rc<Signal>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.live.entries.borrow_mut().remove(&self.id);
    }
}

impl LiveConnections {
    /// Registers a connection admitted with `chain` by `device`.
    pub fn register(
        &self,
        chain: Arc<VerifiedChain>,
        device: &Arc<DeviceVerifier>,
    ) -> Registration<'_> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let close = Rc::new(Signal::default());
        let mut verifiers = self.verifiers.borrow_mut();
        if !verifiers
            .iter()
            .any(|(known, _)| known.as_ptr() == Arc::as_ptr(device))
        {
            verifiers.push((Arc::downgrade(device), device.epoch()));
        }
        self.entries.borrow_mut().insert(
            id,
            Entry {
                chain,
                device: device.clone(),
                close: close.clone(),
            },
        );
        Registration {
            live: self,
            id,
            close,
        }
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    /// Whether a verifier of these connections has put a new revocation epoch in force
    /// since the last look; forgets the verifiers no connection uses any more.
    fn new_epoch(&self) -> bool {
        let mut changed = false;
        self.verifiers.borrow_mut().retain_mut(|(verifier, seen)| {
            let Some(verifier) = verifier.upgrade() else {
                return false;
            };
            let epoch = verifier.epoch();
            changed |= epoch != *seen;
            *seen = epoch;
            true
        });
        changed
    }

    /// Re-checks every registered chain; signals the connections whose chain fails.
    fn sweep(&self, metrics: &WorkerMetrics) {
        for entry in self.entries.borrow().values() {
            if let Err(error) = entry.device.recheck(&entry.chain) {
                debug!(
                    %error,
                    cert.sha256 = %entry.chain.identity.fingerprint,
                    "closing a live connection: its certificate no longer verifies"
                );
                metrics.live_connection_revoked();
                entry.close.raise();
            }
        }
    }
}

/// Runs on each worker for as long as it serves: sweeps the live connections when a new
/// revocation epoch goes into force, and every half minute for expiries.
pub async fn watch(live: Rc<LiveConnections>, metrics: Arc<WorkerMetrics>) {
    let mut last_sweep = Instant::now();
    loop {
        monoio::time::sleep(EPOCH_POLL).await;
        if !live.new_epoch() && last_sweep.elapsed() < EXPIRY_SWEEP {
            continue;
        }
        last_sweep = Instant::now();
        if !live.is_empty() {
            live.sweep(&metrics);
        }
    }
}
