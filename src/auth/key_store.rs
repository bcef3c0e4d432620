//! The JWKS in force, shared by every worker: swapped whole when a fetch brings a
//! different key set, read without locks on the data path. Also the one place that
//! decides whether a token naming an unknown `kid` may trigger a fetch now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use super::jwks::Jwks;

/// One version of the key set.
#[derive(Debug, Default)]
pub struct KeySnapshot {
    /// Increases each time the key set changes; verified tokens cached under an older
    /// generation are forgotten.
    pub generation: u64,
    /// The keys.
    pub jwks: Jwks,
    /// When this key set was loaded; `None` before the first load.
    pub loaded_at: Option<SystemTime>,
    digest: Vec<u8>,
}

/// The shared key set and the refresh requests made of the fetcher.
#[derive(Debug)]
pub struct KeyStore {
    current: ArcSwap<KeySnapshot>,
    fetches_finished: AtomicU64,
    fetch_failures: AtomicU64,
    wake: Mutex<bool>,
    wakeup: Condvar,
    last_unknown_kid_fetch: Mutex<Option<Instant>>,
    unknown_kid_cooldown: Duration,
}

impl KeyStore {
    /// An empty store: until keys arrive, every token is refused.
    pub fn new(unknown_kid_cooldown: Duration) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(KeySnapshot::default()),
            fetches_finished: AtomicU64::new(0),
            fetch_failures: AtomicU64::new(0),
            wake: Mutex::new(false),
            wakeup: Condvar::new(),
            last_unknown_kid_fetch: Mutex::new(None),
            unknown_kid_cooldown,
        })
    }

    /// The key set in force.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<KeySnapshot>> {
        self.current.load()
    }

    /// Installs a freshly loaded key set; `raw` is the document it came from, so that an
    /// unchanged document keeps its generation (and the token caches). Returns whether
    /// the key set changed.
    pub fn install(&self, jwks: Jwks, raw: &[u8]) -> bool {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw)
            .as_ref()
            .to_vec();
        let current = self.current.load();
        let changed = current.digest != digest;
        let generation = if changed {
            current.generation + 1
        } else {
            current.generation
        };
        self.current.store(Arc::new(KeySnapshot {
            generation,
            jwks,
            loaded_at: Some(SystemTime::now()),
            digest,
        }));
        changed
    }

    /// How many fetches have finished, whatever their outcome.
    pub fn fetches_finished(&self) -> u64 {
        self.fetches_finished.load(Ordering::Acquire)
    }

    /// Called by the fetcher after each attempt.
    pub fn fetch_finished(&self) {
        self.fetches_finished.fetch_add(1, Ordering::AcqRel);
    }

    /// How many fetches have failed (the keys in force stayed), for `/metrics`.
    pub fn fetch_failures(&self) -> u64 {
        self.fetch_failures.load(Ordering::Relaxed)
    }

    /// Called by the fetcher after an attempt that failed.
    pub fn fetch_failed(&self) {
        self.fetch_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks for a fetch because a token named an unknown `kid`. Returns `false`, and
    /// asks nothing, while the previous such fetch is within the cool-down, so that
    /// tokens with made-up kids cannot make the gateway hammer the IdP.
    pub fn request_fetch_for_unknown_kid(&self) -> bool {
        let mut last = self
            .last_unknown_kid_fetch
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.unknown_kid_cooldown) {
            return false;
        }
        *last = Some(now);
        drop(last);
        *self.wake.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wakeup.notify_one();
        true
    }

    /// Asks for a fetch now (what SIGHUP does).
    pub fn request_fetch(&self) {
        *self.wake.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wakeup.notify_one();
    }

    /// Blocks the fetcher until a fetch is asked for or `timeout` passes; says whether
    /// one was asked for.
    pub fn wait_for_request(&self, timeout: Duration) -> bool {
        let woken = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        let (mut woken, _) = self
            .wakeup
            .wait_timeout_while(woken, timeout, |requested| !*requested)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *woken, false)
    }
}
