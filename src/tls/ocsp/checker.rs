//! The OCSP answers about client certificates, shared by every worker: one cache keyed by
//! issuer key and serial, filled by query threads, never by a worker. A handshake that
//! may wait (see `allow_waiting`) waits for a missing answer up to the timeout; any other
//! caller (a resumed session's re-check, the live-connection sweep) only starts the
//! query. Answers in use are asked for again before they lapse, so that a revocation
//! reaches live connections.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tracing::{debug, warn};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP;
use x509_parser::prelude::X509Certificate;

use super::protocol::{self, CertState, CertSubject};
use crate::config::{OcspConfig, OcspPolicy, RevocationScope};
use crate::fetch::Fetcher;
use crate::tls::lock;
use crate::tls::trust::unix_now;

/// The most answers kept; past this, expired ones are dropped and new ones not kept.
const MAX_ANSWERS: usize = 100_000;

/// The most queries in flight at once; past this, a certificate has no answer.
const MAX_IN_FLIGHT: usize = 64;

/// The most of those the background refresh may use: the rest are kept for handshakes.
const MAX_REFRESHING: usize = MAX_IN_FLIGHT / 2;

/// The most certificates warned about once each; past this, no more such warnings.
const MAX_WARNED: usize = 1024;

/// The largest response accepted.
const MAX_RESPONSE: u64 = 64 * 1024;

thread_local! {
    static MAY_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `step` with permission to wait for OCSP answers on this thread: only a thread that
/// serves nothing else (the handshake pool) may.
pub fn allow_waiting<R>(step: impl FnOnce() -> R) -> R {
    let before = MAY_WAIT.with(|may| may.replace(true));
    let result = step();
    MAY_WAIT.with(|may| may.set(before));
    result
}

/// What the policy makes of a certificate's OCSP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not revoked, as known until this time (seconds since the Unix epoch).
    Good { until: i64 },
    /// Revoked.
    Revoked,
    /// No valid answer, for this reason.
    NoAnswer(String),
}

/// The OCSP state of one ingress.
pub struct OcspChecker {
    policy: OcspPolicy,
    scope: RevocationScope,
    timeout: Duration,
    max_age: i64,
    retry: Duration,
    /// Responders by issuer: the issuer's SubjectPublicKeyInfo, DER, and the URL.
    overrides: Vec<(Vec<u8>, String)>,
    fetcher: Fetcher,
    answers: DashMap<[u8; 32], Cached>,
    in_flight: Mutex<HashMap<[u8; 32], Query>>,
    arrived: Condvar,
    /// Responders that failed: until when they are not asked, and why.
    down: Mutex<HashMap<String, (Instant, String)>>,
    /// Under soft-fail, the certificates admitted without an answer, with when a
    /// handshake last asked: asked about again until they have one.
    unanswered: Mutex<HashMap<[u8; 32], (Query, i64)>>,
    /// The certificates already warned about (see `warn_once`).
    warned: Mutex<HashSet<[u8; 32]>>,
    /// When the full cache was last swept of lapsed answers.
    last_sweep: AtomicI64,
    /// Whether a certificate has been found revoked since `refresh` last looked; the
    /// refresh thread is woken when it is.
    revoked_found: Mutex<bool>,
    revocation: Condvar,
    sent: AtomicU64,
    no_answer: AtomicU64,
    soft_admissions: AtomicU64,
}

struct Cached {
    state: CertState,
    good_until: i64,
    /// When to ask again, while in use: three quarters through the answer's life (never,
    /// for a revocation learned here), or at once after a reload.
    refresh_at: i64,
    last_used: AtomicI64,
    query: Query,
}

/// What the cache says of a certificate at once.
enum Lookup {
    Known(Verdict),
    /// Nothing yet: this query is on its way.
    Asked(Box<Query>),
}

#[derive(Clone)]
struct Query {
    subject: CertSubject,
    url: String,
}

impl std::fmt::Debug for OcspChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcspChecker")
            .field("policy", &self.policy)
            .field("answers", &self.answers.len())
            .finish()
    }
}

impl OcspChecker {
    /// A checker for `config`; `overrides` pairs an issuer's SubjectPublicKeyInfo (DER)
    /// with the responder to ask about its certificates.
    pub fn new(config: &OcspConfig, overrides: Vec<(Vec<u8>, String)>) -> Self {
        Self {
            policy: config.policy,
            scope: config.scope,
            timeout: config.timeout,
            max_age: config.max_age.as_secs().max(1) as i64,
            retry: config.retry_interval,
            overrides,
            fetcher: Fetcher {
                roots: Vec::new(),
                timeout: config.timeout.max(Duration::from_secs(1)),
                max_body: MAX_RESPONSE,
                https_only: false,
            },
            answers: DashMap::new(),
            in_flight: Mutex::new(HashMap::new()),
            arrived: Condvar::new(),
            down: Mutex::new(HashMap::new()),
            unanswered: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            last_sweep: AtomicI64::new(0),
            revoked_found: Mutex::new(false),
            revocation: Condvar::new(),
            sent: AtomicU64::new(0),
            no_answer: AtomicU64::new(0),
            soft_admissions: AtomicU64::new(0),
        }
    }

    /// The policy for certificates without an answer.
    pub fn policy(&self) -> OcspPolicy {
        self.policy
    }

    /// Which certificates of a chain are checked.
    pub fn scope(&self) -> RevocationScope {
        self.scope
    }

    /// How long a soft-fail admission stands before the certificate is asked about again.
    pub fn retry_interval(&self) -> Duration {
        self.retry
    }

    /// The status of a chain at `now`, given as each certificate checked with the one
    /// that issued it: from the cache, or asked for (all at once, and, where this thread
    /// may wait, waited for). `revoked` if any is; else no answer if any has none; else
    /// good until the first of them lapses.
    pub fn status(
        self: &Arc<Self>,
        chain: &[(&X509Certificate<'_>, &X509Certificate<'_>)],
        now: i64,
    ) -> Verdict {
        let started: Vec<Lookup> = (chain.iter())
            .map(|(cert, issuer)| self.look_up(cert, issuer, now))
            .collect();
        let mut good_until = i64::MAX;
        let mut missing = None;
        for step in started {
            let verdict = match step {
                Lookup::Known(verdict) => verdict,
                Lookup::Asked(query) => self.answer_to(*query, now),
            };
            match verdict {
                Verdict::Revoked => return Verdict::Revoked,
                Verdict::Good { until } => good_until = good_until.min(until),
                Verdict::NoAnswer(reason) => {
                    missing.get_or_insert(reason);
                }
            }
        }
        match missing {
            Some(reason) => Verdict::NoAnswer(reason),
            None => Verdict::Good { until: good_until },
        }
    }

    /// The status of `cert`, issued by `issuer`, when known at once; otherwise the query
    /// sent about it.
    fn look_up(
        self: &Arc<Self>,
        cert: &X509Certificate<'_>,
        issuer: &X509Certificate<'_>,
        now: i64,
    ) -> Lookup {
        let Some(subject) = CertSubject::new(cert, issuer) else {
            self.no_answer.fetch_add(1, Ordering::Relaxed);
            return Lookup::Known(Verdict::NoAnswer("the serial is too long for OCSP".into()));
        };
        if let Some(verdict) = self.cached(&subject.key, now) {
            // A revocation carried over a reload and not yet asked about again is asked
            // about now: only the responder saying good lifts it.
            let again = match verdict {
                Verdict::Revoked => self.revocation_to_ask_again(&subject.key, now),
                _ => None,
            };
            return match again {
                Some(query) if self.failure_of(&query.url).is_none() => {
                    self.ask(query.clone(), MAX_IN_FLIGHT);
                    Lookup::Asked(Box::new(query))
                }
                _ => Lookup::Known(verdict),
            };
        }
        let Some(url) = self.responder_for(cert, issuer) else {
            self.no_answer.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "no responder for {}: no AIA OCSP URL, and no override for its issuer {}",
                cert.subject(),
                issuer.subject()
            );
            self.warn_once(&subject.key, &reason);
            return Lookup::Known(Verdict::NoAnswer(reason));
        };
        let query = Query { subject, url };
        if let Some(error) = self.failure_of(&query.url) {
            return Lookup::Known(self.unanswered(query, error, now));
        }
        self.ask(query.clone(), MAX_IN_FLIGHT);
        Lookup::Asked(Box::new(query))
    }

    /// The answer to `query`, sent: waited for where this thread may. What the cache
    /// held before stands when no new answer comes (a revocation asked about again).
    fn answer_to(&self, query: Query, now: i64) -> Verdict {
        let may_wait = MAY_WAIT.with(Cell::get);
        if may_wait {
            self.wait_for(&query.subject.key);
        }
        if let Some(verdict) = self.cached(&query.subject.key, unix_now()) {
            return verdict;
        }
        if !may_wait {
            return self.unanswered(query, "the answer is still on its way".into(), now);
        }
        let failure = self.failure_of(&query.url);
        let reason = failure.unwrap_or_else(|| "no answer within the timeout".into());
        self.unanswered(query, reason, now)
    }

    /// The query about a revocation carried over a reload, while it is due to be asked
    /// about again.
    fn revocation_to_ask_again(&self, key: &[u8; 32], now: i64) -> Option<Query> {
        let cached = self.answers.get(key)?;
        (cached.state == CertState::Revoked && cached.refresh_at <= now)
            .then(|| cached.query.clone())
    }

    /// Logs `reason` at warn the first time a certificate meets it (up to a bound):
    /// once is enough to tell the operator, and a device retrying must not flood the log.
    fn warn_once(&self, key: &[u8; 32], reason: &str) {
        let mut warned = lock(&self.warned);
        if warned.len() < MAX_WARNED && warned.insert(*key) {
            warn!("OCSP: {reason}");
        }
    }

    /// No answer to `query`, for `reason`. Under soft-fail, which admits the device, it is
    /// asked again in the background until it has one.
    fn unanswered(&self, query: Query, reason: String, now: i64) -> Verdict {
        if self.policy == OcspPolicy::SoftFail {
            let mut unanswered = lock(&self.unanswered);
            if unanswered.len() < MAX_ANSWERS {
                unanswered.insert(query.subject.key, (query, now));
            }
        }
        Verdict::NoAnswer(reason)
    }

    /// Takes over `previous`'s answers at a reload, and has those in use asked for again
    /// at once, in the background. Its `revoked` answers always: a reload does not forget
    /// a revocation, and only the responder saying `good` again (a released
    /// certificateHold) lifts one. Its current `good` answers when both bound answers
    /// alike (the same `max_age`) and ask the same responders, so that no device waits
    /// for its answer again and a reload still learns of revocations right away.
    /// `unknown` answers are asked for afresh. Returns how many were taken.
    pub fn adopt_answers(&self, previous: &OcspChecker, now: i64) -> usize {
        let alike = previous.max_age == self.max_age && previous.overrides == self.overrides;
        let mut taken = 0;
        for entry in previous.answers.iter() {
            let cached = entry.value();
            let wanted = match cached.state {
                CertState::Revoked => true,
                CertState::Good => alike && cached.good_until > now,
                CertState::Unknown => false,
            };
            if !wanted {
                continue;
            }
            if self.answers.len() >= MAX_ANSWERS {
                break;
            }
            let copy = Cached {
                state: cached.state,
                good_until: cached.good_until,
                refresh_at: now,
                last_used: AtomicI64::new(cached.last_used.load(Ordering::Relaxed)),
                query: cached.query.clone(),
            };
            self.answers.insert(*entry.key(), copy);
            taken += 1;
        }
        taken
    }

    /// Counts a certificate admitted without an answer.
    pub fn note_soft_admission(&self) {
        self.soft_admissions.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks again about the answers in use that are three quarters through their life,
    /// and about the certificates admitted under soft-fail without one; forgets the lapsed
    /// ones. Returns whether a certificate has since been found
    /// revoked that was not known revoked before (once per finding).
    pub fn refresh(self: &Arc<Self>, now: i64) -> bool {
        let down = self.responders_down();
        let mut due = Vec::new();
        let mut wanted = |query: &Query| {
            if due.len() < MAX_REFRESHING && !down.contains(&query.url) {
                due.push(query.clone());
            }
        };
        self.answers.retain(|_, cached| {
            let used = cached.last_used.load(Ordering::Relaxed) >= now - self.max_age;
            if used && now >= cached.refresh_at {
                wanted(&cached.query);
            }
            cached.good_until > now || used
        });
        let mut unanswered = lock(&self.unanswered);
        unanswered.retain(|key, (query, asked)| {
            let open = !self.answers.contains_key(key) && *asked >= now - self.max_age;
            if open {
                wanted(query);
            }
            open
        });
        drop(unanswered);
        for query in due {
            self.ask(query, MAX_REFRESHING);
        }
        std::mem::take(&mut *lock(&self.revoked_found))
    }

    /// Sleeps for `most`, or less when a certificate is found revoked meanwhile.
    pub fn pause(&self, most: Duration) {
        let found = lock(&self.revoked_found);
        let _ = self
            .revocation
            .wait_timeout_while(found, most, |found| !*found);
    }

    /// Queries sent, queries that ended without a valid answer, and certificates admitted
    /// without one, for `/metrics`.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.no_answer.load(Ordering::Relaxed),
            self.soft_admissions.load(Ordering::Relaxed),
        )
    }

    /// How many answers are cached.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    fn cached(&self, key: &[u8; 32], now: i64) -> Option<Verdict> {
        let cached = self.answers.get(key)?;
        if cached.good_until <= now {
            return None;
        }
        cached.last_used.store(now, Ordering::Relaxed);
        Some(match cached.state {
            CertState::Good => Verdict::Good {
                until: cached.good_until,
            },
            CertState::Revoked => Verdict::Revoked,
            CertState::Unknown => {
                Verdict::NoAnswer("the responder does not know the certificate".into())
            }
        })
    }

    /// The configured responder for the issuer, else the certificate's AIA OCSP URL.
    fn responder_for(
        &self,
        cert: &X509Certificate<'_>,
        issuer: &X509Certificate<'_>,
    ) -> Option<String> {
        let issuer_key = issuer.public_key().raw;
        if let Some((_, url)) = self.overrides.iter().find(|(key, _)| key == issuer_key) {
            return Some(url.clone());
        }
        aia_ocsp_url(cert)
    }

    /// The responders that failed within the retry interval.
    fn responders_down(&self) -> HashSet<String> {
        let down = lock(&self.down);
        let now = Instant::now();
        (down.iter())
            .filter(|(_, (until, _))| now < *until)
            .map(|(url, _)| url.clone())
            .collect()
    }

    /// Why `url` is not to be asked now, if it failed within the retry interval.
    fn failure_of(&self, url: &str) -> Option<String> {
        let down = lock(&self.down);
        let (until, error) = down.get(url)?;
        (Instant::now() < *until).then(|| error.clone())
    }

    /// Starts a query unless one for the same certificate is in flight, or `limit`
    /// queries are.
    fn ask(self: &Arc<Self>, query: Query, limit: usize) {
        let key = query.subject.key;
        let mut in_flight = lock(&self.in_flight);
        if in_flight.contains_key(&key) || in_flight.len() >= limit {
            return;
        }
        in_flight.insert(key, query.clone());
        drop(in_flight);
        let checker = self.clone();
        let spawned = std::thread::Builder::new()
            .name("srrrs-ocsp".into())
            .spawn(move || {
                let _done = Landed(&checker, key);
                checker.run(query);
            });
        if let Err(error) = spawned {
            warn!(%error, "could not start an OCSP query");
            self.land(&key);
        }
    }

    /// Takes a query off the in-flight set and wakes those waiting for it.
    fn land(&self, key: &[u8; 32]) {
        let mut in_flight = lock(&self.in_flight);
        in_flight.remove(key);
        self.arrived.notify_all();
    }

    fn wait_for(&self, key: &[u8; 32]) {
        let deadline = Instant::now() + self.timeout;
        let mut in_flight = lock(&self.in_flight);
        while in_flight.contains_key(key) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            in_flight = match self.arrived.wait_timeout(in_flight, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// One query, on its own thread: sent, read, checked, cached. (Taken off the
    /// in-flight set by the caller's guard, even if this panics.)
    fn run(&self, query: Query) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        match protocol::ask(&self.fetcher, &query.url, &query.subject, self.max_age) {
            Ok(reply) => self.keep(query, reply.answer, reply.read_at),
            Err(error) => {
                self.no_answer.fetch_add(1, Ordering::Relaxed);
                warn!(url = %query.url, %error, "OCSP: no valid answer");
                let mut down = lock(&self.down);
                down.insert(query.url.clone(), (Instant::now() + self.retry, error));
            }
        }
    }

    fn keep(&self, query: Query, answer: protocol::Answer, now: i64) {
        // A revocation is for good (RFC 5280 §5.3.1; certificateHold, the one way back,
        // is not honoured): kept for as long as the checker lives, until a reload.
        let good_until = match answer.state {
            CertState::Revoked => i64::MAX,
            _ => answer.current_until(self.max_age).min(now + self.max_age),
        };
        if answer.state == CertState::Unknown {
            self.no_answer.fetch_add(1, Ordering::Relaxed);
        }
        debug!(url = %query.url, state = ?answer.state, good_until, "OCSP answer");
        let key = query.subject.key;
        if !self.answers.contains_key(&key) && self.answers.len() >= MAX_ANSWERS {
            self.make_room(now);
        }
        let cached = Cached {
            state: answer.state,
            good_until,
            refresh_at: match answer.state {
                CertState::Revoked => i64::MAX,
                _ => now + good_until.saturating_sub(now) / 4 * 3,
            },
            last_used: AtomicI64::new(now),
            query,
        };
        // A first answer may be about a certificate in use too, under soft-fail, which
        // admits a device without one. Under hard-fail such a device was refused.
        let previous = self.answers.insert(key, cached);
        let in_use = match previous {
            Some(previous) => previous.state != CertState::Revoked,
            None => self.policy == OcspPolicy::SoftFail,
        };
        if answer.state == CertState::Revoked && in_use {
            *lock(&self.revoked_found) = true;
            self.revocation.notify_all();
        }
    }
    /// With the cache full: drops the lapsed answers (at most once a second), then, if
    /// none had, one answer that is not `revoked`: a revocation is never forgotten, a
    /// good answer dropped is asked for again.
    fn make_room(&self, now: i64) {
        if self.last_sweep.swap(now, Ordering::Relaxed) < now {
            self.answers.retain(|_, cached| cached.good_until > now);
        }
        if self.answers.len() < MAX_ANSWERS {
            return;
        }
        let victim = (self.answers.iter())
            .find(|entry| entry.state != CertState::Revoked)
            .map(|entry| *entry.key());
        if let Some(victim) = victim {
            self.answers.remove(&victim);
        }
    }
}

/// Takes a query off the in-flight set when dropped, however its thread ends.
struct Landed<'a>(&'a OcspChecker, [u8; 32]);

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        self.0.land(&self.1);
    }
}

/// The first http(s) OCSP URL in the certificate's Authority Information Access.
pub fn aia_ocsp_url(cert: &X509Certificate<'_>) -> Option<String> {
    cert.extensions().iter().find_map(|extension| {
        let ParsedExtension::AuthorityInfoAccess(access) = extension.parsed_extension() else {
            return None;
        };
        access.accessdescs.iter().find_map(|description| {
            if description.access_method != OID_PKIX_ACCESS_DESCRIPTOR_OCSP {
                return None;
            }
            match &description.access_location {
                GeneralName::URI(uri)
                    if uri.starts_with("http://") || uri.starts_with("https://") =>
                {
                    Some((*uri).to_owned())
                }
                _ => None,
            }
        })
    })
}
