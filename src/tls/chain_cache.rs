//! The verified-chain cache, shared by every worker: a chain of certificates a client
//! has presented and that verified, keyed by a hash of the chain, with the identity
//! read from its leaf. A hit skips path building and the chain's signature checks (the
//! CertificateVerify signature, proof of the private key, is still checked by rustls on
//! every handshake). An entry is good for one revocation epoch and until the earliest
//! expiry of its certificates (and of the CRLs it was checked against).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_lc_rs::digest;
use dashmap::DashMap;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::identity::ClientIdentity;

/// SHA-256 over the presented chain, each certificate length-prefixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainKey([u8; 32]);

impl ChainKey {
    /// The key of a leaf and the intermediates sent with it.
    pub fn of(leaf: &[u8], intermediates: &[CertificateDer<'_>]) -> Self {
        let mut context = digest::Context::new(&digest::SHA256);
        for cert in std::iter::once(leaf).chain(intermediates.iter().map(|c| c.as_ref())) {
            context.update(&(cert.len() as u32).to_be_bytes());
            context.update(cert);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(context.finish().as_ref());
        Self(key)
    }
}

/// A chain that verified, and what it says.
#[derive(Debug)]
pub struct VerifiedChain {
    /// Its key.
    pub key: ChainKey,
    /// The leaf, then the intermediates, as presented.
    pub certificates: Vec<CertificateDer<'static>>,
    /// The device the leaf names.
    pub identity: ClientIdentity,
    /// The revocation epoch it was verified under.
    pub epoch: u64,
    /// Seconds since the Unix epoch after which it must be verified again.
    pub good_until: i64,
}

impl VerifiedChain {
    /// Records a chain that has just verified under `epoch`. `crls_good_until` is when
    /// the CRLs it was checked against stop being usable, if they expire.
    pub fn new(
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        epoch: u64,
        crls_good_until: Option<i64>,
    ) -> Option<Self> {
        let identity = ClientIdentity::from_der(leaf.as_ref())?;
        let mut good_until = identity.not_after;
        for cert in intermediates {
            if let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) {
                good_until = good_until.min(parsed.validity().not_after.timestamp());
            }
        }
        if let Some(bound) = crls_good_until {
            good_until = good_until.min(bound);
        }
        let certificates = std::iter::once(leaf)
            .chain(intermediates)
            .map(|cert| cert.clone().into_owned())
            .collect();
        Some(Self {
            key: ChainKey::of(leaf.as_ref(), intermediates),
            certificates,
            identity,
            epoch,
            good_until,
        })
    }

    /// Whether this verdict still holds under `epoch` at `now`.
    pub fn holds(&self, epoch: u64, now: i64) -> bool {
        self.epoch == epoch && now < self.good_until
    }

    /// The leaf.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.certificates[0]
    }

    /// The intermediates.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.certificates[1..]
    }
}

/// The bounded, shared map of verified chains, with hit and miss counts.
#[derive(Debug)]
pub struct ChainCache {
    entries: DashMap<ChainKey, Arc<VerifiedChain>>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ChainCache {
    /// A cache holding at most `capacity` chains; `0` caches nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: DashMap::new(),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The entry for `key` if it still holds, counting a hit or a miss.
    pub fn fresh(&self, key: &ChainKey, epoch: u64, now: i64) -> Option<Arc<VerifiedChain>> {
        let found = self.entries.get(key).map(|entry| entry.value().clone());
        match found.filter(|chain| chain.holds(epoch, now)) {
            Some(chain) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(chain)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Remembers a verified chain. When full, entries of older epochs or past their
    /// time go first, then an arbitrary tenth.
    pub fn insert(&self, chain: Arc<VerifiedChain>, now: i64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            let epoch = chain.epoch;
            self.entries.retain(|_, entry| entry.holds(epoch, now));
        }
        if self.entries.len() >= self.capacity {
            let excess: Vec<ChainKey> = self
                .entries
                .iter()
                .take(self.capacity / 10 + 1)
                .map(|entry| *entry.key())
                .collect();
            for key in excess {
                self.entries.remove(&key);
            }
        }
        self.entries.insert(chain.key, chain);
    }

    /// (hits, misses) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// How many chains are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
