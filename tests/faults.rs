//! Faults around the gateway, against the real binary: backends that reset or stall in
//! the middle of a response; a JWKS endpoint that is slow, down, answers garbage or a
//! body without end; a CRL URL that cannot be reached; certificate, JWKS and CRL files
//! replaced by a half-written copy. After each, the client has its standard answer,
//! nothing reached a backend that should not have, nothing was admitted under keys or
//! CRLs that did not load, and the gateway still serves a good client.
//!
//! Faults tested elsewhere:
//! - a backend that refuses connections: `gateway_core::backend_down_gives_502` and
//!   `next_backend_is_tried_when_one_is_down`, and ejection in `production`;
//! - a backend that stalls before answering: `production::a_silent_backend_gets_504_…`;
//! - a JWKS URL down from the start: `jwt::an_unreachable_jwks_admits_nothing`;
//! - a CRL URL answering garbage, CRL files garbled, cut between two CRLs or removed:
//!   `revocation_hostile`;
//! - renegotiation, and connections dropped mid-handshake: `hostile`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rustls::AlertDescription;
use srrrs_edge::demo::echo::EchoBackend;
use srrrs_edge::demo::idp::{jwks_of, DevIdp};
use srrrs_edge::demo::pki::{CertRequest, IssuedCert, KeyKind};
use time::{Duration as Span, OffsetDateTime};

const JWKS_FAILURES: &str = "srrrs_jwks_fetch_failures_total{ingress=\"localhost\"}";
const CRL_FAILURES: &str = "srrrs_crl_fetch_failures_total{ingress=\"localhost\"}";
const REVOCATION_UNKNOWN: &str =
    "srrrs_tls_handshake_failures_total{reason=\"revocation_unknown\"}";

/// Whether a refusal for unknown revocation status is counted, within a few seconds:
/// the client sees the alert a moment before the gateway counts it.
fn counted_revocation_unknown(gateway: &Gateway) -> bool {
    eventually(Duration::from_secs(5), || {
        gateway.metric(REVOCATION_UNKNOWN) >= 1.0
    })
}

on_both_drivers!(
    a_backend_that_resets_before_answering_gives_502_and_the_gateway_serves_the_next_request,
    a_backend_that_resets_mid_response_ends_the_client_connection_without_a_502_inside_it,
    a_backend_that_stalls_mid_response_is_cut_at_the_response_timeout_while_others_are_served,
    a_slow_jwks_endpoint_keeps_the_keys_in_force_and_never_holds_up_requests,
);

// Faults of the threads that keep keys, CRLs and certificates fresh: off the data path,
// independent of the I/O driver, so one driver each.

#[test]
fn a_jwks_endpoint_that_goes_down_keeps_the_keys_in_force_and_admits_no_new_key() {
    jwks_endpoint_down(Driver::Epoll)
}

#[test]
fn a_jwks_endpoint_answering_garbage_keeps_the_keys_in_force() {
    jwks_endpoint_garbage(Driver::Epoll)
}

#[test]
fn a_jwks_body_without_end_is_cut_at_the_size_cap_and_the_keys_stay() {
    jwks_endpoint_endless(Driver::Epoll)
}

#[test]
fn an_unreachable_crl_url_without_a_copy_refuses_the_devices_it_covers_and_serves_others() {
    crl_url_never_reached(Driver::IoUring)
}

#[test]
fn an_unreachable_crl_url_keeps_its_last_good_copy_until_that_copy_expires() {
    crl_url_lost(Driver::IoUring)
}

#[test]
fn a_half_written_server_certificate_keeps_the_old_one_until_the_whole_pair_is_written() {
    half_written_server_certificate(Driver::IoUring)
}

#[test]
fn a_half_written_jwks_file_keeps_the_keys_in_force_until_the_whole_file_is_written() {
    half_written_jwks_file(Driver::IoUring)
}

#[test]
fn a_half_written_crl_file_keeps_the_crls_in_force_until_the_whole_file_is_written() {
    half_written_crl_file(Driver::IoUring)
}

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// What a misbehaving response sends before the fault: a head promising more body than
/// follows.
const PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nthe first bytes";

/// How long a stalling backend sits on a response.
const STALL: Duration = Duration::from_secs(6);

/// A backend that acts on each request by its path: `/reset-before-answering` resets
/// the connection, `/reset-mid-response` sends [`PARTIAL`] and then resets,
/// `/stall-mid-response` sends [`PARTIAL`] and then stalls; any other path gets a 200.
/// It records the path of every request it reads.
struct FaultyBackend {
    addr: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FaultyBackend {
    fn start() -> Self {
        let (addr, seen) = serve_each(Mutex::new(Vec::new()), misbehave);
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn misbehave(mut stream: TcpStream, seen: &Mutex<Vec<String>>) {
    let mut pending = Vec::new();
    while let Some(head) = next_head(&mut stream, &mut pending) {
        let path = String::from_utf8_lossy(&head)
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        seen.lock().unwrap().push(path.clone());
        match path.as_str() {
            "/reset-before-answering" => return reset(stream),
            "/reset-mid-response" => {
                let _ = stream.write_all(PARTIAL);
                // Let the gateway pass the bytes on before the reset.
                std::thread::sleep(Duration::from_millis(300));
                return reset(stream);
            }
            "/stall-mid-response" => {
                let _ = stream.write_all(PARTIAL);
                std::thread::sleep(STALL);
                return;
            }
            _ => {
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                if stream.write_all(answer).is_err() {
                    return;
                }
            }
        }
    }
}

/// Closes `stream` with a TCP reset rather than a FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

/// A gateway in front of `backend` alone, with `response_timeout: 1s`.
fn start_before(backend: &FaultyBackend, driver: Driver) -> (TestPki, Gateway, Client) {
    let pki = TestPki::new();
    let port = free_port();
    let mut config = pki.mtls_config(port, std::slice::from_ref(&backend.addr));
    config.push_str("    response_timeout: 1s\n");
    let gateway =
        Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);
    let client = Client::new(&pki, Some(&pki.good));
    (pki, gateway, client)
}

/// One `GET path` on a connection of its own: every byte the gateway sent before it
/// closed, and how long that took.
fn get_until_closed(client: &Client, addr: SocketAddr, path: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = client.connect(addr).expect("handshake");
    send_request(&mut stream, path, &[("connection", "close")]).expect("send");
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(read) => bytes.extend_from_slice(&chunk[..read]),
        }
    }
    (
        String::from_utf8_lossy(&bytes).into_owned(),
        started.elapsed(),
    )
}

fn gateway_502s(gateway: &Gateway) -> f64 {
    gateway.metric("srrrs_gateway_responses_total{status=\"502\"}")
}

fn a_backend_that_resets_before_answering_gives_502_and_the_gateway_serves_the_next_request(
    driver: Driver,
) {
    let backend = FaultyBackend::start();
    let (_pki, gateway, client) = start_before(&backend, driver);

    let (response, _) = get_until_closed(&client, gateway.addr, "/reset-before-answering");
    assert_eq!(statuses(&response), [502], "{response}");
    assert!(response.contains("\"error\""), "{response}");
    assert_eq!(gateway_502s(&gateway), 1.0);

    let (next, _) = get_until_closed(&client, gateway.addr, "/next");
    assert_eq!(statuses(&next), [200], "{next}");
    // The broken request was not sent again, on this connection or another.
    assert_eq!(backend.seen(), ["/reset-before-answering", "/next"]);
}

fn a_backend_that_resets_mid_response_ends_the_client_connection_without_a_502_inside_it(
    driver: Driver,
) {
    let backend = FaultyBackend::start();
    let (_pki, gateway, client) = start_before(&backend, driver);

    let (response, took) = get_until_closed(&client, gateway.addr, "/reset-mid-response");
    // What the backend sent is passed on, and then the connection ends: a 502 can no
    // longer be told, and none is written into the response the client is reading.
    assert_eq!(response, String::from_utf8_lossy(PARTIAL), "{response}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert_eq!(gateway_502s(&gateway), 0.0);

    let (next, _) = get_until_closed(&client, gateway.addr, "/next");
    assert_eq!(statuses(&next), [200], "{next}");
    assert_eq!(backend.seen(), ["/reset-mid-response", "/next"]);
}

fn a_backend_that_stalls_mid_response_is_cut_at_the_response_timeout_while_others_are_served(
    driver: Driver,
) {
    let backend = FaultyBackend::start();
    let (_pki, gateway, client) = start_before(&backend, driver);

    let stalled = std::thread::spawn({
        let (client, addr) = (client.clone(), gateway.addr);
        move || get_until_closed(&client, addr, "/stall-mid-response")
    });
    assert!(eventually(Duration::from_secs(5), || backend
        .seen()
        .contains(&"/stall-mid-response".to_owned())));
    // While the backend sits on that response, other clients are served.
    let (other, took) = get_until_closed(&client, gateway.addr, "/meanwhile");
    assert_eq!(statuses(&other), [200], "{other}");
    assert!(took < Duration::from_secs(1), "served after {took:?}");

    let (response, took) = stalled.join().expect("stalled client");
    // Part of the response has gone out: no 504 now, the connection just ends.
    assert_eq!(response, String::from_utf8_lossy(PARTIAL), "{response}");
    assert!(
        took >= Duration::from_millis(900) && took < STALL,
        "closed after {took:?}"
    );
    assert_eq!(
        gateway.metric("srrrs_gateway_responses_total{status=\"504\"}"),
        0.0
    );

    let (next, _) = get_until_closed(&client, gateway.addr, "/next");
    assert_eq!(statuses(&next), [200], "{next}");
    assert_eq!(
        backend.seen(),
        ["/stall-mid-response", "/meanwhile", "/next"]
    );
}

// ---------------------------------------------------------------------------------------
// The IdP's keys
// ---------------------------------------------------------------------------------------

/// A gateway checking tokens of `old` (the key in force), with the IdP about to rotate
/// to `new`.
struct Rotation {
    old: DevIdp,
    new: DevIdp,
    backend: EchoBackend,
    gateway: Gateway,
    client: Client,
    pki: TestPki,
}

impl Rotation {
    /// Keys from a [`JwksServer`] serving `old`'s JWKS, fetched with `fetch_timeout: 1s`.
    fn from_server(driver: Driver) -> (Self, JwksServer) {
        let pki = TestPki::new();
        let old = DevIdp::new(ISSUER, "old", KeyKind::EcdsaP256);
        let server = JwksServer::start(&pki, old.jwks());
        let keys = format!(
            "jwks_uri: \"{}\"\n    fetch_ca_file: server-root.pem\n    fetch_timeout: 1s",
            server.uri()
        );
        let rotation = Self::start(pki, old, &keys, driver);
        (rotation, server)
    }

    /// Keys from the file `jwks.json`, holding `old`'s JWKS.
    fn from_file(driver: Driver) -> Self {
        let pki = TestPki::new();
        let old = DevIdp::new(ISSUER, "old", KeyKind::EcdsaP256);
        pki.write("jwks.json", &old.jwks());
        Self::start(pki, old, "jwks_file: jwks.json", driver)
    }

    fn start(pki: TestPki, old: DevIdp, keys: &str, driver: Driver) -> Self {
        let (backend, backend_addr) = echo_backend();
        let port = free_port();
        let config = with_token_policy(&pki.mtls_config(port, &[backend_addr]), keys, "");
        let gateway =
            Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);
        let client = Client::new(&pki, Some(&pki.good));
        let rotation = Self {
            old,
            new: DevIdp::new(ISSUER, "new", KeyKind::EcdsaP256),
            backend,
            gateway,
            client,
            pki,
        };
        let loaded = eventually(Duration::from_secs(10), || {
            rotation.status(&rotation.old, "/loaded") == 200
        });
        assert!(
            loaded,
            "the first keys never loaded:\n{}",
            rotation.gateway.log_text()
        );
        rotation
    }

    /// The status of `GET path` with a fresh token signed by `idp`.
    fn status(&self, idp: &DevIdp, path: &str) -> u16 {
        let token = idp.sign(&idp.claims(AUDIENCE, "alice"));
        let bearer = format!("Bearer {token}");
        let response = self
            .client
            .get_with(self.gateway.addr, path, &[("authorization", &bearer)]);
        status_of(&response)
    }

    /// The old key still admits, the new one does not, and nothing under it was
    /// forwarded.
    fn assert_old_keys_in_force(&self, label: &str) {
        assert_eq!(self.status(&self.old, "/old"), 200, "{label}: old key");
        assert_eq!(
            self.status(&self.new, "/new-refused"),
            401,
            "{label}: new key"
        );
        let forwarded = self.paths();
        assert!(
            !forwarded.contains(&"/new-refused".to_owned()),
            "{label}: {forwarded:?}"
        );
    }

    fn paths(&self) -> Vec<String> {
        self.backend
            .received()
            .into_iter()
            .map(|r| r.path)
            .collect()
    }

    fn failures(&self) -> f64 {
        self.gateway.metric(JWKS_FAILURES)
    }

    /// Waits until the failure count passes `before`, and checks the warning was logged.
    fn wait_for_failure(&self, before: f64, label: &str) {
        let failed = eventually(Duration::from_secs(10), || self.failures() > before);
        let log = self.gateway.log_text();
        assert!(failed, "{label}: no fetch failure counted:\n{log}");
        assert!(
            log.contains("JWKS fetch failed; keeping the last good keys"),
            "{log}"
        );
    }

    /// Publishes both keys and asks for a fetch: the new key goes into force.
    fn recover(&self, server: &JwksServer) {
        server.set_answer(JwksAnswer::Keys);
        server.set_jwks(jwks_of(&[&self.old, &self.new]));
        self.gateway.reload();
        let rotated = eventually(Duration::from_secs(10), || {
            self.status(&self.new, "/new-later") == 200
        });
        assert!(rotated, "the new key never went into force");
        assert_eq!(self.status(&self.old, "/old-later"), 200);
    }
}

fn a_slow_jwks_endpoint_keeps_the_keys_in_force_and_never_holds_up_requests(driver: Driver) {
    let (rotation, server) = Rotation::from_server(driver);
    let failures = rotation.failures();
    server.set_answer(JwksAnswer::Slow(Duration::from_secs(6)));
    let fetches = server.fetches();
    rotation.gateway.reload();
    assert!(eventually(Duration::from_secs(5), || server.fetches() > fetches));

    // While the fetch hangs, requests under the keys in force go through at once.
    for index in 0..10 {
        let started = Instant::now();
        assert_eq!(rotation.status(&rotation.old, "/during-fetch"), 200);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(800),
            "request {index} took {took:?}"
        );
    }
    // A token naming an unknown key waits for a fetch at most 2 s, then is refused.
    let started = Instant::now();
    assert_eq!(rotation.status(&rotation.new, "/new-refused"), 401);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the unknown kid waited {took:?}"
    );

    rotation.wait_for_failure(failures, "slow");
    rotation.assert_old_keys_in_force("slow");
    rotation.recover(&server);
}

fn jwks_endpoint_down(driver: Driver) {
    let (rotation, server) = Rotation::from_server(driver);
    let failures = rotation.failures();
    server.set_answer(JwksAnswer::Down);
    let refused = || TcpStream::connect(server.addr).is_err();
    assert!(eventually(Duration::from_secs(5), refused));
    rotation.gateway.reload();
    rotation.wait_for_failure(failures, "down");
    rotation.assert_old_keys_in_force("down");
    rotation.recover(&server);
}

fn jwks_endpoint_garbage(driver: Driver) {
    let (rotation, server) = Rotation::from_server(driver);
    let both = jwks_of(&[&rotation.old, &rotation.new]);
    let hmac_only = r#"{"keys":[{"kty":"oct","kid":"new","k":"c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#;
    let variants: Vec<(&str, JwksAnswer, String)> = vec![
        ("an HTML page", JwksAnswer::Garbage, String::new()),
        (
            "half a JWKS",
            JwksAnswer::Keys,
            both[..both.len() / 2].to_owned(),
        ),
        ("no keys", JwksAnswer::Keys, r#"{"keys":[]}"#.to_owned()),
        ("only an HMAC key", JwksAnswer::Keys, hmac_only.to_owned()),
        ("a JSON array", JwksAnswer::Keys, "[1, 2, 3]".to_owned()),
    ];
    for (label, answer, jwks) in variants {
        let failures = rotation.failures();
        server.set_answer(answer);
        server.set_jwks(jwks);
        rotation.gateway.reload();
        rotation.wait_for_failure(failures, label);
        rotation.assert_old_keys_in_force(label);
    }
    rotation.recover(&server);
}

fn jwks_endpoint_endless(driver: Driver) {
    let (rotation, server) = Rotation::from_server(driver);
    let rss_before = rotation.gateway.rss_kib();
    let failures = rotation.failures();
    server.set_answer(JwksAnswer::Endless);
    rotation.gateway.reload();
    rotation.wait_for_failure(failures, "endless");
    // The gateway stopped reading and closed: the stream ended.
    assert!(
        eventually(Duration::from_secs(10), || server.endless_bodies_cut() >= 1),
        "the endless body was never cut off"
    );
    let log = rotation.gateway.log_text();
    assert!(log.contains("larger than request limit: 1048576"), "{log}");
    rotation.assert_old_keys_in_force("endless");
    // Reading stops at the 1 MiB cap: the process did not buffer what came after.
    let grown = rotation.gateway.rss_kib().saturating_sub(rss_before);
    assert!(grown < 16 * 1024, "resident memory grew by {grown} KiB");
    rotation.recover(&server);
}

fn half_written_jwks_file(driver: Driver) {
    let rotation = Rotation::from_file(driver);
    let both = jwks_of(&[&rotation.old, &rotation.new]);
    let failures = rotation.failures();

    // A writer that is not atomic has written half of the new file, in place.
    std::fs::write(rotation.pki.path("jwks.json"), &both[..both.len() / 2]).expect("write");
    rotation.wait_for_failure(failures, "half-written");
    rotation.assert_old_keys_in_force("half-written");

    // The rest of the file arrives: the new key goes into force.
    std::fs::write(rotation.pki.path("jwks.json"), &both).expect("write");
    let rotated = eventually(Duration::from_secs(10), || {
        rotation.status(&rotation.new, "/new-later") == 200
    });
    assert!(rotated, "{}", rotation.gateway.log_text());
    assert_eq!(rotation.status(&rotation.old, "/old-later"), 200);
}

// ---------------------------------------------------------------------------------------
// CRL URLs
// ---------------------------------------------------------------------------------------

/// The alert `cert` gets, or the status of its request.
fn outcome(
    pki: &TestPki,
    cert: &IssuedCert,
    gateway: &Gateway,
    path: &str,
) -> Result<u16, AlertDescription> {
    let client = Client::new(pki, Some(cert));
    match client.get(gateway.addr, path) {
        Ok(response) => Ok(status_of(&response)),
        Err(error) => Err(alert_of(Err(error))),
    }
}

fn crl_url_never_reached(driver: Driver) {
    let pki = TestPki::new();
    pki.write("second-root.crl", &pki.second_root.crl(&[], Span::days(7)));
    let dead_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dead = format!("http://{dead_addr}/device-ca.crl");
    let (backend, gateway) = start_edited(&pki, driver, |config| {
        with_crl_url(config, "[device-root.crl]", &dead)
            .replace(
                "client_ca_cert: device-root.pem",
                "client_ca_cert: [device-root.pem, second-root.pem]",
            )
            .replace("[device-root.crl]", "[device-root.crl, second-root.crl]")
    });
    let failed = eventually(Duration::from_secs(10), || {
        gateway.metric(CRL_FAILURES) >= 1.0
    });
    assert!(failed, "{}", gateway.log_text());
    assert!(gateway
        .log_text()
        .contains("CRL fetch failed; keeping the last good copy"));

    // The device CA's devices have no known revocation status: refused.
    assert_eq!(
        outcome(&pki, &pki.good, &gateway, "/device-ca"),
        Err(AlertDescription::UnknownCA)
    );
    assert!(counted_revocation_unknown(&gateway));
    // The other CA's CRL is a file: its devices are served.
    assert_eq!(
        outcome(&pki, &pki.second_ca_client, &gateway, "/second-ca"),
        Ok(200)
    );
    assert_eq!(paths(&backend), ["/second-ca"]);
    let admin = gateway.admin.expect("admin");
    let readyz = http_get_plain(admin, "/readyz");
    assert_eq!(status_of(&readyz), 503, "{readyz}");
    assert!(readyz.contains(&dead), "{readyz}");

    // The distribution point comes up: a failed fetch is tried again within seconds,
    // not a whole `crl_refresh_interval` (an hour here) later.
    let crl = pki.device_ca.crl(&[&pki.revoked], Span::days(7));
    let _point = CrlPoint::start_at(dead_addr, crl.as_bytes());
    let admitted = eventually(Duration::from_secs(30), || {
        outcome(&pki, &pki.good, &gateway, "/recovered") == Ok(200)
    });
    assert!(admitted, "{}", gateway.log_text());
    assert_eq!(status_of(&http_get_plain(admin, "/readyz")), 200);
    assert_eq!(
        outcome(&pki, &pki.revoked, &gateway, "/revoked"),
        Err(AlertDescription::CertificateRevoked)
    );
}

fn crl_url_lost(driver: Driver) {
    let pki = TestPki::new();
    let now = OffsetDateTime::now_utc();
    let next_update = now + Span::seconds(20);
    let crl = pki
        .device_ca
        .crl_between(&[&pki.revoked], now - Span::hours(1), next_update);
    let point = CrlPoint::start(crl.as_bytes());
    let (backend, gateway) = start_edited(&pki, driver, |config| {
        with_crl_url(config, "[device-root.crl]", &point.url())
    });
    let fetched = eventually(Duration::from_secs(10), || gateway.metric(EPOCH) >= 2.0);
    assert!(fetched, "{}", gateway.log_text());
    assert_eq!(outcome(&pki, &pki.good, &gateway, "/fetched"), Ok(200));

    // The distribution point goes away: its last good copy stays in force.
    point.stop();
    let failures = gateway.metric(CRL_FAILURES);
    gateway.reload();
    let failed = eventually(Duration::from_secs(10), || {
        gateway.metric(CRL_FAILURES) > failures
    });
    assert!(failed, "{}", gateway.log_text());
    assert_eq!(outcome(&pki, &pki.good, &gateway, "/copy-kept"), Ok(200));
    assert_eq!(
        outcome(&pki, &pki.revoked, &gateway, "/revoked"),
        Err(AlertDescription::CertificateRevoked)
    );

    // Once that copy has expired, the devices it covers are refused (fail closed).
    let wait = next_update + Span::seconds(1) - OffsetDateTime::now_utc();
    assert!(
        wait.is_positive(),
        "the test was too slow to see the copy in force"
    );
    std::thread::sleep(Duration::from_secs_f64(wait.as_seconds_f64()));
    assert_eq!(
        outcome(&pki, &pki.good, &gateway, "/expired"),
        Err(AlertDescription::UnknownCA)
    );
    assert!(counted_revocation_unknown(&gateway));
    assert_eq!(paths(&backend), ["/fetched", "/copy-kept"]);
}

// ---------------------------------------------------------------------------------------
// Files replaced by a half-written copy
// ---------------------------------------------------------------------------------------

/// The leaf certificate a fresh client is shown.
fn presented_leaf(pki: &TestPki, addr: SocketAddr) -> Vec<u8> {
    let stream = Client::new(pki, Some(&pki.good))
        .connect(addr)
        .expect("handshake");
    let chain = stream.conn.peer_certificates().expect("server chain");
    chain[0].to_vec()
}

/// Waits until the log holds `needle` more often than `before`.
fn wait_for_log(gateway: &Gateway, needle: &str, before: usize) {
    let logged = eventually(Duration::from_secs(10), || {
        log_count(gateway, needle) > before
    });
    assert!(logged, "no {needle:?} in:\n{}", gateway.log_text());
}

fn half_written_server_certificate(driver: Driver) {
    let pki = TestPki::new();
    let (backend, gateway) = start_edited(&pki, driver, |config| config);
    let original = presented_leaf(&pki, gateway.addr);
    let renewed = pki
        .server_root
        .issue(&CertRequest::server(&["localhost", "127.0.0.1"]));
    let failed = "server certificate reload failed";

    // A deployment tool that writes in place, not atomically: half the certificate,
    // then the key, then the rest of the certificate.
    let cut = renewed.chain_pem.find("-----END").expect("PEM") / 2;
    let before = log_count(&gateway, failed);
    std::fs::write(pki.path("server.pem"), &renewed.chain_pem[..cut]).expect("write");
    wait_for_log(&gateway, failed, before);
    assert_eq!(presented_leaf(&pki, gateway.addr), original);
    assert_eq!(outcome(&pki, &pki.good, &gateway, "/half-cert"), Ok(200));

    let before = log_count(&gateway, failed);
    std::fs::write(pki.path("server.key"), &renewed.key_pem).expect("write");
    wait_for_log(&gateway, failed, before);
    assert_eq!(presented_leaf(&pki, gateway.addr), original);
    assert_eq!(outcome(&pki, &pki.good, &gateway, "/new-key"), Ok(200));

    std::fs::write(pki.path("server.pem"), &renewed.chain_pem).expect("write");
    let renewed_in_force = eventually(Duration::from_secs(10), || {
        presented_leaf(&pki, gateway.addr) == renewed.der.to_vec()
    });
    assert!(renewed_in_force, "{}", gateway.log_text());
    assert_eq!(outcome(&pki, &pki.good, &gateway, "/whole-pair"), Ok(200));
    assert_eq!(paths(&backend), ["/half-cert", "/new-key", "/whole-pair"]);
}

fn half_written_crl_file(driver: Driver) {
    let pki = TestPki::new();
    let (backend, gateway) = start_edited(&pki, driver, |config| config);
    let victim = pki.device_ca.issue(&CertRequest::client("device-victim"));
    assert_eq!(outcome(&pki, &victim, &gateway, "/before"), Ok(200));
    let next = pki.device_ca.crl(&[&pki.revoked, &victim], Span::days(7));
    let epoch = gateway.metric(EPOCH);
    let failed = "CRL reload failed";

    // Half of the new CRL, written in place: no SIGHUP, the change is seen by itself.
    let before = log_count(&gateway, failed);
    std::fs::write(pki.path("device-ca.crl"), &next[..next.len() / 2]).expect("write");
    wait_for_log(&gateway, failed, before);
    assert_eq!(gateway.metric(EPOCH), epoch);
    assert_eq!(outcome(&pki, &victim, &gateway, "/half-crl"), Ok(200));
    assert_eq!(
        outcome(&pki, &pki.revoked, &gateway, "/revoked"),
        Err(AlertDescription::CertificateRevoked)
    );

    // The rest arrives: the new CRL goes into force, and the victim is refused.
    std::fs::write(pki.path("device-ca.crl"), &next).expect("write");
    let reloaded = eventually(Duration::from_secs(10), || gateway.metric(EPOCH) > epoch);
    assert!(reloaded, "{}", gateway.log_text());
    assert_eq!(
        outcome(&pki, &victim, &gateway, "/after"),
        Err(AlertDescription::CertificateRevoked)
    );
    assert_eq!(paths(&backend), ["/before", "/half-crl"]);
}
