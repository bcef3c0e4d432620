//! What a run measured: latencies in an HDR histogram, outcomes by kind, handshakes by
//! kind, merged across threads and written as text or JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::connection::Failure;

/// One thread's measurements.
pub struct Tally {
    /// Latency of each completed request, microseconds.
    pub latency: Histogram<u64>,
    /// Completed requests by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Failures by kind.
    pub failures: BTreeMap<Failure, u64>,
    /// Handshakes that were full.
    pub full_handshakes: u64,
    /// Handshakes that resumed a session.
    pub resumed_handshakes: u64,
    /// Connections held open at the end (idle mode).
    pub held: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            statuses: BTreeMap::new(),
            failures: BTreeMap::new(),
            full_handshakes: 0,
            resumed_handshakes: 0,
            held: 0,
        }
    }
}

impl Tally {
    /// Records a completed request.
    pub fn completed(&mut self, status: u16, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self.latency.record(micros.min(self.latency.high()));
        *self.statuses.entry(status).or_default() += 1;
    }

    /// Records a failure.
    pub fn failed(&mut self, failure: Failure) {
        *self.failures.entry(failure).or_default() += 1;
    }

    /// Records a handshake.
    pub fn handshake(&mut self, resumed: bool) {
        if resumed {
            self.resumed_handshakes += 1;
        } else {
            self.full_handshakes += 1;
        }
    }

    /// Adds another thread's measurements.
    pub fn merge(&mut self, other: Tally) {
        let _ = self.latency.add(&other.latency);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        for (failure, count) in other.failures {
            *self.failures.entry(failure).or_default() += count;
        }
        self.full_handshakes += other.full_handshakes;
        self.resumed_handshakes += other.resumed_handshakes;
        self.held += other.held;
    }
}

/// The report of a run, as written in JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The mode.
    pub mode: String,
    /// Seconds the run took.
    pub seconds: f64,
    /// Completed requests (any status).
    pub requests: u64,
    /// Completed requests per second.
    pub requests_per_second: f64,
    /// Latency percentiles in microseconds.
    pub latency_us: BTreeMap<String, u64>,
    /// Completed requests by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Handshakes by kind.
    pub handshakes: BTreeMap<String, u64>,
    /// Connections held open at the end (idle mode).
    pub held_connections: u64,
}

impl Report {
    /// Summarizes merged measurements over `elapsed`.
    pub fn new(mode: &str, tally: &Tally, elapsed: Duration) -> Self {
        let requests: u64 = tally.statuses.values().sum();
        let seconds = elapsed.as_secs_f64();
        let mut latency_us = BTreeMap::new();
        if requests > 0 {
            for (label, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
                latency_us.insert(label.to_owned(), tally.latency.value_at_quantile(quantile));
            }
            latency_us.insert("max".to_owned(), tally.latency.max());
            latency_us.insert("mean".to_owned(), tally.latency.mean() as u64);
        }
        let errors = tally
            .failures
            .iter()
            .map(|(failure, count)| (failure.label(), *count))
            .collect();
        let handshakes = [
            ("full".to_owned(), tally.full_handshakes),
            ("resumed".to_owned(), tally.resumed_handshakes),
        ]
        .into_iter()
        .collect();
        Self {
            mode: mode.to_owned(),
            seconds,
            requests,
            requests_per_second: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            latency_us,
            statuses: tally.statuses.clone(),
            errors,
            handshakes,
            held_connections: tally.held,
        }
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut out = format!(
            "mode {}: {} requests in {:.2} s, {:.0} req/s\n",
            self.mode, self.requests, self.seconds, self.requests_per_second
        );
        if !self.latency_us.is_empty() {
            out.push_str("latency (µs):");
            for label in ["p50", "p90", "p99", "p99.9", "max"] {
                if let Some(value) = self.latency_us.get(label) {
                    out.push_str(&format!(" {label} {value}"));
                }
            }
            out.push('\n');
        }
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        out.push_str(&format!(
            "statuses: {}\n",
            if statuses.is_empty() {
                "none".into()
            } else {
                statuses.join(", ")
            }
        ));
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(e, n)| format!("{e}: {n}"))
            .collect();
        out.push_str(&format!(
            "errors: {}\n",
            if errors.is_empty() {
                "none".into()
            } else {
                errors.join(", ")
            }
        ));
        out.push_str(&format!(
            "handshakes: {} full, {} resumed\n",
            self.handshakes.get("full").copied().unwrap_or(0),
            self.handshakes.get("resumed").copied().unwrap_or(0)
        ));
        if self.mode == "idle" {
            out.push_str(&format!("connections held: {}\n", self.held_connections));
        }
        out
    }
}
