//! Session tickets: one ticketer for every worker (TLS 1.3 tickets and TLS 1.2 RFC 5077
//! tickets alike), with keys from a file that all nodes of a PoP share, or generated
//! and rotated in memory.
//!
//! A ticket seals, next to rustls's session state, the client's certificate chain, and
//! is bound to the ingress's trust policy. When a ticket comes back, the chain is
//! checked again against the revocation set in force and the time now, so that a
//! certificate revoked or expired since the ticket was issued cannot resume: the ticket
//! is declined, the client falls back to a full handshake, and that handshake refuses
//! the certificate with the proper alert.
//!
//! Key file format (write one with `srrrs-edge ticket-key new -f FILE`): UTF-8 text, one
//! key per line, newest first; `#` starts a comment line. Each line is the key's
//! creation time (RFC 3339, UTC) and 32 random bytes in standard base64, separated by a
//! space. The newest key encrypts; an older key still decrypts until `ticket_lifetime`
//! after the next newer key was created.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::server::ProducesTickets;
use tracing::debug;

use super::client_auth::DeviceVerifier;
use super::handshake_notes;
use super::identity;

/// Length of a ticket key.
const KEY_LEN: usize = 32;

/// Length of a key id in a ticket.
const KEY_ID_LEN: usize = 4;

/// How far ahead of this node's clock another node's ticket may be dated.
const CLOCK_SKEW: u64 = 300;

fn unix_seconds() -> u64 {
    crate::auth::unix_seconds()
}

/// One ticket key.
pub struct TicketKey {
    id: [u8; KEY_ID_LEN],
    created: SystemTime,
    cipher: RandomizedNonceKey,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("TicketKey")
            .field("id", &self.id)
            .field("created", &self.created)
            .finish()
    }
}

impl TicketKey {
    fn new(bytes: &[u8], created: SystemTime) -> Result<Self, String> {
        if bytes.len() != KEY_LEN {
            return Err(format!(
                "a ticket key is {KEY_LEN} bytes, not {}",
                bytes.len()
            ));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        let cipher =
            RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| "unusable ticket key")?;
        Ok(Self {
            id,
            created,
            cipher,
        })
    }

    fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
        Self::new(&bytes, SystemTime::now()).expect("a fresh key has the right length")
    }
}

/// Where ticket keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketKeySource {
    /// A file shared by the nodes of a PoP, reloaded when it changes.
    File(PathBuf),
    /// Generated here, replaced every `rotation`.
    Memory {
        /// How long a key encrypts before a new one takes over.
        rotation: Duration,
    },
}

/// The keys in use, newest first.
pub struct TicketKeyRing {
    source: TicketKeySource,
    lifetime: Duration,
    keys: RwLock<Vec<Arc<TicketKey>>>,
}

impl std::fmt::Debug for TicketKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeyRing")
            .field("source", &self.source)
            .finish()
    }
}

impl TicketKeyRing {
    /// Loads the keys (or makes the first one). A bad key file is an error.
    pub fn new(source: TicketKeySource, lifetime: Duration) -> Result<Self, String> {
        let keys = match &source {
            TicketKeySource::File(path) => read_key_file(path)?,
            TicketKeySource::Memory { .. } => vec![Arc::new(TicketKey::generate())],
        };
        Ok(Self {
            source,
            lifetime,
            keys: RwLock::new(keys),
        })
    }

    /// Rereads the key file, or rotates the in-memory key when it is due.
    pub fn refresh(&self) -> Result<bool, String> {
        match &self.source {
            TicketKeySource::File(path) => {
                let keys = read_key_file(path)?;
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
                Ok(true)
            }
            TicketKeySource::Memory { rotation } => {
                let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
                let due = keys
                    .first()
                    .is_none_or(|newest| age(newest.created) >= *rotation);
                if due {
                    keys.insert(0, Arc::new(TicketKey::generate()));
                    let lifetime = self.lifetime;
                    retain_usable(&mut keys, lifetime);
                }
                Ok(due)
            }
        }
    }

    /// The key file, if the keys come from one.
    pub fn file(&self) -> Option<&Path> {
        match &self.source {
            TicketKeySource::File(path) => Some(path),
            TicketKeySource::Memory { .. } => None,
        }
    }

    fn newest(&self) -> Option<Arc<TicketKey>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .cloned()
    }

    /// The key with this id, if it may still decrypt.
    fn decrypting(&self, id: &[u8]) -> Option<Arc<TicketKey>> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let position = keys.iter().position(|key| key.id == id)?;
        let retired_at = position.checked_sub(1).map(|newer| keys[newer].created);
        let usable = retired_at.is_none_or(|retired| age(retired) <= self.lifetime);
        usable.then(|| keys[position].clone())
    }
}

fn age(since: SystemTime) -> Duration {
    SystemTime::now().duration_since(since).unwrap_or_default()
}

/// Drops keys that can no longer decrypt anything.
fn retain_usable(keys: &mut Vec<Arc<TicketKey>>, lifetime: Duration) {
    let mut keep = 1;
    while keep < keys.len() && age(keys[keep - 1].created) <= lifetime {
        keep += 1;
    }
    keys.truncate(keep);
}

fn read_key_file(path: &Path) -> Result<Vec<Arc<TicketKey>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keys = parse_key_file(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(keys.into_iter().map(Arc::new).collect())
}

/// Parses the key file format (see the module documentation).
fn parse_key_file(text: &str) -> Result<Vec<TicketKey>, String> {
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}", number + 1);
        let (created, key) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected \"<created> <key>\""))?;
        let created =
            humantime::parse_rfc3339(created).map_err(|_| bad("creation time is not RFC 3339"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| bad("the key is not base64"))?;
        keys.push(TicketKey::new(&bytes, created).map_err(|e| bad(&e))?);
    }
    if keys.is_empty() {
        return Err("no ticket key in the file".into());
    }
    Ok(keys)
}

/// A new key line, for `srrrs-edge ticket-key new`.
pub fn new_key_line() -> String {
    let mut bytes = [0u8; KEY_LEN];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
    let created = humantime::format_rfc3339_seconds(SystemTime::now());
    format!(
        "{created} {}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Writes a key file with a new key first, keeping at most `keep` keys of `existing`.
pub fn write_new_key(path: &Path, keep: usize) -> Result<(), String> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !existing.trim().is_empty() {
        parse_key_file(&existing).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let older: Vec<&str> = existing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .take(keep)
        .collect();
    let mut text = String::from(
        "# srrrs-edge session ticket keys, newest first: <created, RFC 3339> <32 bytes, base64>\n",
    );
    text.push_str(&new_key_line());
    text.push('\n');
    for line in older {
        text.push_str(line);
        text.push('\n');
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    if let Err(e) = write_private(&temporary, &text) {
        let _ = std::fs::remove_file(&temporary);
        return Err(format!("{}: {e}", temporary.display()));
    }
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        format!("{}: {e}", path.display())
    })
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Counters of the ticketer.
#[derive(Debug, Default)]
pub struct TicketCounts {
    /// Tickets issued.
    pub issued: AtomicU64,
    /// Tickets opened and still admitted; rustls may yet fall back to a full handshake
    /// (for example when the ticket's suite is not offered again), so resumed handshakes
    /// are counted separately.
    pub opened: AtomicU64,
    /// Tickets declined: unreadable, too old, another policy's, or a chain no longer valid.
    pub declined: AtomicU64,
}

/// The ticketer every worker's handshakes share.
pub struct Ticketer {
    keys: Arc<TicketKeyRing>,
    policy: [u8; 32],
    device: Option<Arc<DeviceVerifier>>,
    /// What it has done.
    pub counts: TicketCounts,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticketer")
            .field("keys", &self.keys)
            .finish()
    }
}

impl Ticketer {
    /// Tickets under `keys`, bound to the trust `policy` (a digest of what decides who
    /// gets in), re-checked with `device` when they come back.
    pub fn new(
        keys: Arc<TicketKeyRing>,
        policy: [u8; 32],
        device: Option<Arc<DeviceVerifier>>,
    ) -> Self {
        Self {
            keys,
            policy,
            device,
            counts: TicketCounts::default(),
        }
    }

    fn aad(&self, key_id: &[u8]) -> Vec<u8> {
        [key_id, &self.policy[..]].concat()
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.newest()?;
        let chain = handshake_notes::chain_for_tickets();
        let mut body = unix_seconds().to_be_bytes().to_vec();
        body.extend(encode_chain(chain.as_deref().map(|c| &c.certificates[..])));
        body.extend_from_slice(plain);
        let nonce = key
            .cipher
            .seal_in_place_append_tag(Aad::from(self.aad(&key.id)), &mut body)
            .ok()?;
        let mut ticket = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + body.len());
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(nonce.as_ref());
        ticket.extend_from_slice(&body);
        Some(ticket)
    }

    fn open(&self, ticket: &[u8]) -> Option<(Vec<CertificateDer<'static>>, Vec<u8>)> {
        let (id, rest) = ticket.split_at_checked(KEY_ID_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let key = self.keys.decrypting(id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let opened = key
            .cipher
            .open_in_place(nonce, Aad::from(self.aad(id)), &mut body)
            .ok()?;
        let (issued, opened) = opened.split_at_checked(8)?;
        let issued = u64::from_be_bytes(issued.try_into().ok()?);
        // RFC 8446 §4.6.1: a ticket is good for its lifetime from issue, not longer.
        let age = unix_seconds().saturating_sub(issued);
        if age > self.keys.lifetime.as_secs() || issued > unix_seconds() + CLOCK_SKEW {
            return None;
        }
        let (chain, used) = decode_chain(opened)?;
        Some((chain, opened[used..].to_vec()))
    }

    /// Whether a resumed session's chain still gets in; notes it for the handshake.
    fn admits(&self, chain: &[CertificateDer<'static>]) -> bool {
        let (Some(device), Some((leaf, intermediates))) = (&self.device, chain.split_first())
        else {
            return true;
        };
        match device.check(leaf, intermediates, rustls::pki_types::UnixTime::now()) {
            Ok(verified) => {
                handshake_notes::note_ticket_chain(&verified);
                true
            }
            Err(error) => {
                debug!(%error, cert.sha256 = %identity::fingerprint(leaf), "ticket declined: the chain no longer verifies");
                false
            }
        }
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.keys.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let ticket = self.seal(plain);
        if ticket.is_some() {
            self.counts.issued.fetch_add(1, Ordering::Relaxed);
        }
        ticket
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let accepted = self
            .open(cipher)
            .filter(|(chain, _)| self.admits(chain))
            .map(|(_, plain)| plain);
        let counter = if accepted.is_some() {
            &self.counts.opened
        } else {
            &self.counts.declined
        };
        counter.fetch_add(1, Ordering::Relaxed);
        accepted
    }
}

/// `u16` count, then each certificate as `u32` length and DER.
fn encode_chain(chain: Option<&[CertificateDer<'static>]>) -> Vec<u8> {
    let chain = chain.unwrap_or_default();
    let mut out = Vec::with_capacity(2 + chain.iter().map(|c| c.len() + 4).sum::<usize>());
    out.extend_from_slice(&(chain.len() as u16).to_be_bytes());
    for cert in chain {
        out.extend_from_slice(&(cert.len() as u32).to_be_bytes());
        out.extend_from_slice(cert.as_ref());
    }
    out
}

fn decode_chain(input: &[u8]) -> Option<(Vec<CertificateDer<'static>>, usize)> {
    let count = u16::from_be_bytes(input.get(..2)?.try_into().ok()?) as usize;
    let mut at = 2;
    let mut chain = Vec::with_capacity(count.min(8));
    for _ in 0..count {
        let length = u32::from_be_bytes(input.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        chain.push(CertificateDer::from(
            input.get(at..at.checked_add(length)?)?.to_vec(),
        ));
        at += length;
    }
    Some((chain, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Arc<TicketKeyRing> {
        let source = TicketKeySource::Memory {
            rotation: Duration::from_secs(3600),
        };
        Arc::new(TicketKeyRing::new(source, Duration::from_secs(3600)).unwrap())
    }

    #[test]
    fn a_ticket_opens_under_its_own_policy_only() {
        let keys = ring();
        let mine = Ticketer::new(keys.clone(), [1; 32], None);
        let theirs = Ticketer::new(keys, [2; 32], None);
        let ticket = mine.encrypt(b"session").unwrap();
        assert_eq!(mine.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        assert_eq!(theirs.decrypt(&ticket), None);
        let mut tampered = ticket.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(mine.decrypt(&tampered), None);
        assert_eq!(mine.decrypt(&ticket[..10]), None);
    }

    #[test]
    fn the_key_file_format_round_trips_and_rejects_bad_lines() {
        let text = format!("# comment\n{}\n{}\n", new_key_line(), new_key_line());
        assert_eq!(parse_key_file(&text).unwrap().len(), 2);
        assert!(parse_key_file("2026-01-01T00:00:00Z c2hvcnQ=\n")
            .unwrap_err()
            .contains("32 bytes"));
        assert!(parse_key_file("yesterday AAAA\n")
            .unwrap_err()
            .contains("RFC 3339"));
        assert!(parse_key_file("# only a comment\n").is_err());
    }

    #[test]
    fn chains_survive_the_ticket_encoding() {
        let chain = vec![
            CertificateDer::from(vec![1, 2, 3]),
            CertificateDer::from(vec![4]),
        ];
        let mut bytes = encode_chain(Some(&chain));
        bytes.extend_from_slice(b"rest");
        let (decoded, used) = decode_chain(&bytes).unwrap();
        assert_eq!(decoded, chain);
        assert_eq!(&bytes[used..], b"rest");
        assert!(decode_chain(&[0, 5, 0]).is_none());
    }
}
