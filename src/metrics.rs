//! Counters kept per worker and summed only when scraped, so that the hot path touches
//! no cache line another core writes. Exposition is prometheus-client's.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::NoLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::access_log::AccessLog;
use crate::auth::AuthRefusal;
use crate::ingress::{Ingress, IngressSet};
use crate::tls::client_auth::DeviceVerifier;
use crate::tls::ocsp::OcspChecker;
use crate::tls::tickets::{TicketCounts, Ticketer};
use crate::tls::HandshakeRefusal;
use crate::upstream::health::BackendHealth;

const REFUSAL_KINDS: usize = HandshakeRefusal::ALL.len();

/// The statuses the gateway answers with itself.
const GATEWAY_STATUSES: [u16; 8] = [400, 401, 403, 408, 431, 502, 503, 504];

/// Why a connection was closed right after accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The worker holds `limits.max_connections_per_worker` already.
    WorkerConnections,
    /// The client's address holds `limits.max_connections_per_source` already.
    SourceConnections,
    /// Its handshake stalled while the worker was at `limits.max_handshakes_per_worker`.
    StalledHandshake,
    /// It came from a trusted load balancer without a valid PROXY protocol header.
    ProxyHeader,
}

impl Shed {
    const ALL: [Self; 4] = [
        Self::WorkerConnections,
        Self::SourceConnections,
        Self::StalledHandshake,
        Self::ProxyHeader,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::WorkerConnections => "worker_connections",
            Self::SourceConnections => "source_connections",
            Self::StalledHandshake => "stalled_handshake",
            Self::ProxyHeader => "bad_proxy_header",
        }
    }
}

/// Token refusal reasons, as labelled.
const AUTH_REASONS: [&str; 4] = [
    "missing_token",
    "invalid_request",
    "invalid_token",
    "insufficient_scope",
];

/// What is timed, each into a histogram of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timed {
    /// From accept to a finished handshake.
    Handshake,
    /// A request's token check.
    Authorization,
    /// Connecting to a backend.
    BackendConnect,
    /// A forwarded request, from its head to the end of its response.
    Request,
}

impl Timed {
    const ALL: [Self; 4] = [
        Self::Handshake,
        Self::Authorization,
        Self::BackendConnect,
        Self::Request,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Authorization => "authorization",
            Self::BackendConnect => "backend_connect",
            Self::Request => "request",
        }
    }
}

/// The longest time a histogram holds, in microseconds (longer ones count as this).
const LONGEST_US: u64 = 600 * 1_000_000;

/// Histogram bucket bounds in the exposition, in seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Quantiles exported as gauges.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LONGEST_US, 2).expect("histogram bounds")
}

/// One worker's latency histograms as a scrape reads them (microseconds, two
/// significant digits), fed once a second from the worker's [`LatencyRecorder`].
#[derive(Debug)]
struct Latencies([Mutex<Histogram<u64>>; 4]);

impl Default for Latencies {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Mutex::new(new_histogram())))
    }
}

/// Where a worker records latencies as they happen: its own, so that a request takes no
/// lock; [`WorkerMetrics::absorb`] moves them to where a scrape reads them.
#[derive(Debug)]
pub struct LatencyRecorder(RefCell<[Histogram<u64>; 4]>);

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self(RefCell::new(std::array::from_fn(|_| new_histogram())))
    }
}

impl LatencyRecorder {
    /// Records how long `what` took.
    pub fn time(&self, what: Timed, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.0.borrow_mut()[what as usize].saturating_record(micros.clamp(1, LONGEST_US));
    }
}

/// The counters of one worker. Aligned to keep two workers' counters off one cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics {
    latencies: Latencies,
    connections_accepted: AtomicU64,
    connections_open: AtomicI64,
    handshakes_in_progress: AtomicI64,
    /// Completed handshakes by [version (1.2, 1.3)][kind (full, resumed)].
    handshakes: [[AtomicU64; 2]; 2],
    live_revoked: AtomicU64,
    handshake_refusals: [AtomicU64; REFUSAL_KINDS],
    backend_connect_failures: AtomicU64,
    gateway_responses: [AtomicU64; GATEWAY_STATUSES.len()],
    requests_forwarded: AtomicU64,
    auth_refusals: [AtomicU64; AUTH_REASONS.len()],
    shed: [AtomicU64; Shed::ALL.len()],
}

impl WorkerMetrics {
    /// A connection was accepted and is now open.
    pub fn connection_opened(&self) {
        bump(&self.connections_accepted);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves what `recorder` holds into the histograms a scrape reads.
    pub fn absorb(&self, recorder: &LatencyRecorder) {
        let mut recorded = recorder.0.borrow_mut();
        for (shared, local) in self.latencies.0.iter().zip(recorded.iter_mut()) {
            if local.is_empty() {
                continue;
            }
            let mut shared = shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = shared.add(&*local);
            local.reset();
        }
    }

    /// A connection was closed right after accept because a limit was reached.
    pub fn connection_shed(&self, reason: Shed) {
        bump(&self.shed[reason as usize]);
    }

    /// A connection was closed.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A handshake began.
    pub fn handshake_started(&self) {
        self.handshakes_in_progress.fetch_add(1, Ordering::Relaxed);
    }

    /// A handshake ended, however it ended.
    pub fn handshake_ended(&self) {
        self.handshakes_in_progress.fetch_sub(1, Ordering::Relaxed);
    }

    /// A handshake completed with the given TLS version.
    pub fn handshake_completed(&self, version: Option<rustls::ProtocolVersion>, resumed: bool) {
        let version = usize::from(version != Some(rustls::ProtocolVersion::TLSv1_2));
        bump(&self.handshakes[version][usize::from(resumed)]);
    }

    /// A live connection was closed because its certificate no longer verifies.
    pub fn live_connection_revoked(&self) {
        bump(&self.live_revoked);
    }

    /// A handshake was refused or failed.
    pub fn handshake_refused(&self, reason: HandshakeRefusal) {
        bump(&self.handshake_refusals[reason.index()]);
    }

    /// Every backend was tried and none accepted a connection.
    pub fn backend_unreachable(&self) {
        bump(&self.backend_connect_failures);
    }

    /// The gateway answered a request itself with `status`.
    pub fn gateway_response(&self, status: u16) {
        if let Some(index) = GATEWAY_STATUSES.iter().position(|s| *s == status) {
            bump(&self.gateway_responses[index]);
        }
    }

    /// A request was authorized and forwarded.
    pub fn request_forwarded(&self) {
        bump(&self.requests_forwarded);
    }

    /// A request's token was refused.
    pub fn auth_refused(&self, refusal: &AuthRefusal) {
        if let Some(index) = AUTH_REASONS
            .iter()
            .position(|label| *label == refusal.label())
        {
            bump(&self.auth_refusals[index]);
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// All workers' counters, and the facts fixed at startup.
#[derive(Debug, Default)]
pub struct Metrics {
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
    io_driver: Mutex<String>,
    ingresses: Mutex<Option<Arc<IngressSet>>>,
    access_log: Mutex<Option<Arc<AccessLog>>>,
}

impl Metrics {
    /// Counters for a new worker.
    pub fn register_worker(&self) -> Arc<WorkerMetrics> {
        let worker = Arc::new(WorkerMetrics::default());
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(worker.clone());
        worker
    }

    /// Gives the exposition the ingresses in force, whose TLS state and backends it
    /// reads when scraped. Counters of ingresses replaced by a reload start again from
    /// zero, which Prometheus reads as a counter reset.
    pub fn set_ingresses(&self, ingresses: &Arc<IngressSet>) {
        *self
            .ingresses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(ingresses.clone());
    }

    fn ingresses(&self) -> Vec<Arc<Ingress>> {
        let set = self
            .ingresses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        set.map(|set| set.all().to_vec()).unwrap_or_default()
    }

    fn encode_tls_state(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ingresses = self.ingresses();
        let devices: Vec<&DeviceVerifier> = (ingresses.iter())
            .filter_map(|ingress| ingress.tls.device.as_deref())
            .collect();
        let tickets: Vec<&Ticketer> = (ingresses.iter())
            .filter_map(|ingress| ingress.tls.tickets.as_deref())
            .collect();
        let total = |count: &dyn Fn(&DeviceVerifier) -> u64| devices.iter().map(|d| count(d)).sum();
        let ticket_total = |pick: fn(&TicketCounts) -> &AtomicU64| -> u64 {
            (tickets.iter())
                .map(|ticketer| pick(&ticketer.counts).load(Ordering::Relaxed))
                .sum()
        };
        let mut counters: Vec<(&str, &str, &str, u64)> = Vec::new();
        if !devices.is_empty() {
            let hits = total(&|device| device.cache().counts().0);
            let misses = total(&|device| device.cache().counts().1);
            counters.push(("chain_cache_lookups", "result", "hit", hits));
            counters.push(("chain_cache_lookups", "result", "miss", misses));
            counters.push((
                "revocation_refusals",
                "stage",
                "verification",
                total(&DeviceVerifier::revocation_refusals),
            ));
        }
        counters.push((
            "revocation_refusals",
            "stage",
            "live_connection",
            self.sum(|w| read(&w.live_revoked)),
        ));
        if !tickets.is_empty() {
            let issued = ticket_total(|counts| &counts.issued);
            let opened = ticket_total(|counts| &counts.opened);
            let declined = ticket_total(|counts| &counts.declined);
            counters.push(("session_tickets", "event", "issued", issued));
            counters.push(("session_tickets", "event", "opened", opened));
            counters.push(("session_tickets", "event", "declined", declined));
        }
        let help = |name: &str| match name {
            "chain_cache_lookups" => {
                "Verified-chain cache lookups in full handshakes and re-checks"
            }
            "revocation_refusals" => "Certificates refused as revoked, by where it was found",
            _ => "Session tickets issued, opened and admitted for resumption, or declined",
        };
        let mut at = 0;
        while at < counters.len() {
            let name = counters[at].0;
            let mut metric =
                encoder.encode_descriptor(name, help(name), None, MetricType::Counter)?;
            while at < counters.len() && counters[at].0 == name {
                let (_, key, value, count) = counters[at];
                ConstCounter::new(count).encode(metric.encode_family(&[(key, value)])?)?;
                at += 1;
            }
        }
        if !devices.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "revocation_epoch",
                "The revocation epoch in force, by ingress",
                None,
                MetricType::Gauge,
            )?;
            for ingress in &ingresses {
                if let Some(device) = &ingress.tls.device {
                    let labels = [("ingress", ingress.hostname.as_str())];
                    ConstGauge::new(device.epoch() as i64)
                        .encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }

    /// Gives the exposition the access log, to count the lines it dropped.
    pub fn set_access_log(&self, log: Arc<AccessLog>) {
        *self
            .access_log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(log);
    }

    /// Every worker's histogram of `what`, merged.
    fn merged(&self, what: Timed) -> Option<Histogram<u64>> {
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut merged: Option<Histogram<u64>> = None;
        for worker in workers.iter() {
            let histogram = worker.latencies.0[what as usize]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match &mut merged {
                Some(total) => {
                    let _ = total.add(&*histogram);
                }
                None => merged = Some(histogram.clone()),
            }
        }
        merged
    }

    fn encode_latencies(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let merged: Vec<(Timed, Histogram<u64>)> = Timed::ALL
            .iter()
            .filter_map(|what| Some((*what, self.merged(*what)?)))
            .collect();
        let mut family = encoder.encode_descriptor(
            "latency_seconds",
            "Handshakes, token checks, backend connects and forwarded requests, by duration",
            None,
            MetricType::Histogram,
        )?;
        for (what, histogram) in &merged {
            let mut below = 0;
            let mut buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .map(|bound| {
                    let upto = histogram.count_between(0, (bound * 1e6) as u64);
                    let bucket = (*bound, upto - below);
                    below = upto;
                    bucket
                })
                .collect();
            buckets.push((f64::INFINITY, histogram.len() - below));
            let sum = histogram.mean() * histogram.len() as f64 / 1e6;
            let labels = [("operation", what.label())];
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, histogram.len(), &buckets, None)?;
        }
        let mut quantiles = encoder.encode_descriptor(
            "latency_quantile_seconds",
            "Quantiles of the same durations, since the start",
            None,
            MetricType::Gauge,
        )?;
        for (what, histogram) in &merged {
            for quantile in QUANTILES {
                let seconds = histogram.value_at_quantile(quantile) as f64 / 1e6;
                let quantile = quantile.to_string();
                let labels = [("operation", what.label()), ("quantile", quantile.as_str())];
                ConstGauge::new(seconds).encode(quantiles.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_backends(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ingresses = self.ingresses();
        let backends: Vec<(&str, String, &BackendHealth)> = (ingresses.iter())
            .flat_map(|ingress| {
                let upstream = &ingress.upstream;
                let names = upstream.backends().iter().map(|b| b.name.clone());
                (names.zip(upstream.health().iter()))
                    .map(|(name, health)| (ingress.hostname.as_str(), name, health))
            })
            .collect();
        let mut up = encoder.encode_descriptor(
            "backend_up",
            "1 when a backend gets new connections: its health checks pass and it is not ejected",
            None,
            MetricType::Gauge,
        )?;
        for (ingress, name, state) in &backends {
            let labels = [("backend", name.as_str()), ("ingress", *ingress)];
            let value = i64::from(state.is_available());
            ConstGauge::new(value).encode(up.encode_family(&labels)?)?;
        }
        let mut ejections = encoder.encode_descriptor(
            "backend_ejections",
            "Times a backend was ejected after consecutive connect failures",
            None,
            MetricType::Counter,
        )?;
        for (ingress, name, state) in &backends {
            let labels = [("backend", name.as_str()), ("ingress", *ingress)];
            ConstCounter::new(state.ejections()).encode(ejections.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// Failed fetches of the IdP's keys and of CRL URLs, by ingress: each one kept what
    /// was in force, so that only a log line and these counters tell of it.
    fn encode_fetch_failures(
        &self,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let ingresses = self.ingresses();
        let jwks: Vec<(&str, u64)> = (ingresses.iter())
            .filter_map(|ingress| {
                let failures = ingress.auth.as_ref()?.keys().fetch_failures();
                Some((ingress.hostname.as_str(), failures))
            })
            .collect();
        let crls: Vec<(&str, u64)> = (ingresses.iter())
            .filter_map(|ingress| {
                let sources = ingress.tls.revocation.as_ref()?;
                let failures = sources.fetch_failures();
                (!sources.urls.is_empty()).then_some((ingress.hostname.as_str(), failures))
            })
            .collect();
        let families = [
            (
                "jwks_fetch_failures",
                "JWKS loads (file, URL or discovery) that failed; the keys in force stayed",
                jwks,
            ),
            (
                "crl_fetch_failures",
                "CRL URL fetches that failed; the last good copy stayed",
                crls,
            ),
        ];
        for (name, help, counts) in families {
            if counts.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (ingress, count) in counts {
                let labels = [("ingress", ingress)];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// OCSP by ingress: queries about client certificates and how they ended, answers
    /// cached, certificates admitted without an answer, and whether the server
    /// certificate's response is stapled.
    fn encode_ocsp(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ingresses = self.ingresses();
        let checkers: Vec<(&str, &OcspChecker)> = (ingresses.iter())
            .filter_map(|ingress| {
                let checker = ingress.tls.device.as_ref()?.ocsp()?;
                Some((ingress.hostname.as_str(), checker.as_ref()))
            })
            .collect();
        type Count = fn(&OcspChecker) -> u64;
        let counters: [(&str, &str, Count); 3] = [
            (
                "ocsp_queries",
                "OCSP queries sent about client certificates",
                |c| c.counts().0,
            ),
            (
                "ocsp_no_answer",
                "OCSP queries that ended without a valid answer (unreachable, refused, \
                 badly signed, stale, or the certificate unknown to the responder), and \
                 client certificates with no responder to ask",
                |c| c.counts().1,
            ),
            (
                "ocsp_soft_fail_admissions",
                "Client certificates admitted without a valid OCSP answer, under soft-fail",
                |c| c.counts().2,
            ),
        ];
        for (name, help, count) in counters {
            if checkers.is_empty() {
                break;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (ingress, checker) in &checkers {
                let labels = [("ingress", *ingress)];
                ConstCounter::new(count(checker)).encode(family.encode_family(&labels)?)?;
            }
        }
        if !checkers.is_empty() {
            let help = "OCSP answers about client certificates held in the cache";
            let mut family =
                encoder.encode_descriptor("ocsp_answers_cached", help, None, MetricType::Gauge)?;
            for (ingress, checker) in &checkers {
                let labels = [("ingress", *ingress)];
                ConstGauge::new(checker.len() as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        self.encode_staples(&ingresses, encoder)
    }

    fn encode_staples(
        &self,
        ingresses: &[Arc<Ingress>],
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let staples: Vec<(&str, bool, u64)> = (ingresses.iter())
            .filter_map(|ingress| {
                let certificate = &ingress.tls.server_certificate;
                let stapled = certificate.stapling()?;
                let failures = certificate.staple_failures();
                Some((ingress.hostname.as_str(), stapled, failures))
            })
            .collect();
        if staples.is_empty() {
            return Ok(());
        }
        let help = "1 when a current OCSP response is stapled to the server certificate";
        let mut family = encoder.encode_descriptor("ocsp_staple", help, None, MetricType::Gauge)?;
        for (ingress, stapled, _) in &staples {
            let labels = [("ingress", *ingress)];
            ConstGauge::new(i64::from(*stapled)).encode(family.encode_family(&labels)?)?;
        }
        let help = "Fetches of the server certificate's OCSP response that failed";
        let mut family = encoder.encode_descriptor(
            "ocsp_staple_fetch_failures",
            help,
            None,
            MetricType::Counter,
        )?;
        for (ingress, _, failures) in staples {
            let labels = [("ingress", ingress)];
            ConstCounter::new(failures).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// Records which I/O driver the workers run on.
    pub fn set_io_driver(&self, driver: &str) {
        *self
            .io_driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = driver.into();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::with_prefix("srrrs");
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }

    /// Connections open now, over all workers.
    pub fn connections_open(&self) -> u64 {
        self.sum(|w| w.connections_open.load(Ordering::Relaxed).max(0) as u64)
    }

    fn sum(&self, field: impl Fn(&WorkerMetrics) -> u64) -> u64 {
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        workers.iter().map(|worker| field(worker)).sum()
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = |name, help, value| (name, help, value);
        let counters = [
            counter(
                "connections_accepted",
                "TCP connections accepted",
                self.sum(|w| read(&w.connections_accepted)),
            ),
            counter(
                "backend_connect_failures",
                "Requests for which no backend accepted a connection",
                self.sum(|w| read(&w.backend_connect_failures)),
            ),
        ];
        for (name, help, value) in counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }

        let open = self.connections_open();
        let metric = encoder.encode_descriptor(
            "connections_open",
            "Connections currently open",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(open as i64).encode(metric)?;

        let handshaking =
            self.sum(|w| w.handshakes_in_progress.load(Ordering::Relaxed).max(0) as u64);
        let metric = encoder.encode_descriptor(
            "handshakes_in_progress",
            "TLS handshakes in progress",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(handshaking as i64).encode(metric)?;

        let mut handshakes = encoder.encode_descriptor(
            "tls_handshakes",
            "Completed TLS handshakes by version and kind",
            None,
            MetricType::Counter,
        )?;
        for (version_index, version) in ["1.2", "1.3"].into_iter().enumerate() {
            for (kind_index, kind) in ["full", "resumed"].into_iter().enumerate() {
                let value = self.sum(|w| read(&w.handshakes[version_index][kind_index]));
                let labels = [("version", version), ("kind", kind)];
                ConstCounter::new(value).encode(handshakes.encode_family(&labels)?)?;
            }
        }
        self.encode_tls_state(&mut encoder)?;

        let mut refusals = encoder.encode_descriptor(
            "tls_handshake_failures",
            "TLS handshakes refused or failed, by reason",
            None,
            MetricType::Counter,
        )?;
        for reason in HandshakeRefusal::ALL {
            let value = self.sum(|w| read(&w.handshake_refusals[reason.index()]));
            let labels = [("reason", reason.label())];
            ConstCounter::new(value).encode(refusals.encode_family(&labels)?)?;
        }

        let mut responses = encoder.encode_descriptor(
            "gateway_responses",
            "Responses written by the gateway itself, by status",
            None,
            MetricType::Counter,
        )?;
        for (index, status) in GATEWAY_STATUSES.iter().enumerate() {
            let value = self.sum(|w| read(&w.gateway_responses[index]));
            let status = status.to_string();
            let labels = [("status", status.as_str())];
            ConstCounter::new(value).encode(responses.encode_family(&labels)?)?;
        }

        let mut refusals = encoder.encode_descriptor(
            "auth_failures",
            "Requests refused by the token check, by reason",
            None,
            MetricType::Counter,
        )?;
        for (index, reason) in AUTH_REASONS.iter().enumerate() {
            let value = self.sum(|w| read(&w.auth_refusals[index]));
            ConstCounter::new(value).encode(refusals.encode_family(&[("reason", *reason)])?)?;
        }

        let mut shed = encoder.encode_descriptor(
            "connections_shed",
            "Connections closed right after accept because a limit was reached, by limit",
            None,
            MetricType::Counter,
        )?;
        for reason in Shed::ALL {
            let value = self.sum(|w| read(&w.shed[reason as usize]));
            ConstCounter::new(value).encode(shed.encode_family(&[("limit", reason.label())])?)?;
        }

        let forwarded = self.sum(|w| read(&w.requests_forwarded));
        let metric = encoder.encode_descriptor(
            "requests_forwarded",
            "Requests authorized and forwarded to a backend",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(forwarded).encode(metric)?;

        self.encode_backends(&mut encoder)?;
        self.encode_fetch_failures(&mut encoder)?;
        self.encode_ocsp(&mut encoder)?;
        self.encode_latencies(&mut encoder)?;

        let access_log = self
            .access_log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(log) = access_log {
            let metric = encoder.encode_descriptor(
                "access_log_dropped_lines",
                "Access log lines dropped because the writer fell behind",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(log.dropped()).encode(metric)?;
        }

        let driver = self
            .io_driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut info = encoder.encode_descriptor(
            "io_driver",
            "The I/O driver workers run on",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(info.encode_family(&[("driver", driver.as_str())])?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_of_all_workers_are_summed_in_the_exposition() {
        let metrics = Arc::new(Metrics::default());
        let first = metrics.register_worker();
        let second = metrics.register_worker();
        first.handshake_refused(HandshakeRefusal::CertificateRevoked);
        second.handshake_refused(HandshakeRefusal::CertificateRevoked);
        second.connection_opened();

        let text = metrics.render();
        assert!(
            text.contains("srrrs_tls_handshake_failures_total{reason=\"certificate_revoked\"} 2"),
            "{text}"
        );
        assert!(text.contains("srrrs_connections_open 1"), "{text}");
    }
}
