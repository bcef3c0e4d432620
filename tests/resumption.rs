//! Repeat handshakes: resumption across workers and across gateway processes sharing a
//! ticket key file, the verified-chain cache, and revocation that reaches resumed and
//! live sessions. Against the real binary, with rustls and openssl as clients.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rustls::{AlertDescription, HandshakeKind};
use srrrs_edge::demo::pki::{CertRequest, IssuedCert};

on_both_drivers!(
    a_second_connection_resumes_on_tls13_and_tls12,
    resumed_sessions_carry_the_same_device_identity_on_every_worker,
    two_gateways_sharing_a_key_file_resume_each_others_sessions,
    a_ticket_never_resumes_under_another_trust_policy,
    a_certificate_revoked_after_its_ticket_was_issued_cannot_resume,
    a_live_connection_is_closed_within_a_second_of_its_revocation,
    the_second_full_handshake_hits_the_chain_cache_and_a_crl_reload_invalidates_it,
);

/// A client certificate that is good now and that the test will revoke.
fn victim(pki: &TestPki) -> IssuedCert {
    pki.device_ca.issue(&CertRequest::client("device-victim"))
}

fn handshake_kind(client: &Client, gateway: &Gateway) -> Option<HandshakeKind> {
    let mut stream = client.connect(gateway.addr).expect("handshake");
    send_request(&mut stream, "/", &[("connection", "close")]).expect("send");
    let response = read_to_end(&mut stream).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    stream.conn.handshake_kind()
}

fn a_second_connection_resumes_on_tls13_and_tls12(driver: Driver) {
    let (pki, _backend, gateway) = start_mtls(driver);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = Client::with_versions(&pki, Some(&pki.good), &[version]);
        assert_eq!(handshake_kind(&client, &gateway), Some(HandshakeKind::Full));
        assert_eq!(
            handshake_kind(&client, &gateway),
            Some(HandshakeKind::Resumed),
            "{version:?}"
        );
    }
    for version in ["1.2", "1.3"] {
        let sample =
            format!("srrrs_tls_handshakes_total{{version=\"{version}\",kind=\"resumed\"}}");
        assert!(gateway.metric(&sample) >= 1.0, "{sample}");
    }

    // openssl, with the session carried in a file between two processes.
    let (cert, key) = pki.client_files("good", &pki.good);
    let session = pki.path("openssl.session");
    let run = |flag: &str, version: &str| {
        let connect = format!("127.0.0.1:{}", gateway.addr.port());
        let mut child = openssl_s_client(&pki, &cert, &key, &connect)
            .arg(version)
            .arg(flag)
            .arg(&session)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl is installed");
        // Give TLS 1.3 tickets, sent after the handshake, time to arrive.
        std::thread::sleep(Duration::from_millis(500));
        drop(child.stdin.take());
        let output = child.wait_with_output().expect("openssl output");
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    };
    for version in ["-tls1_3", "-tls1_2"] {
        let first = run("-sess_out", version);
        assert!(
            first.contains("New, TLSv1.") && !first.contains("alert"),
            "{first}"
        );
        let second = run("-sess_in", version);
        assert!(second.contains("Reused, TLSv1."), "{version}: {second}");
    }
}

fn resumed_sessions_carry_the_same_device_identity_on_every_worker(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);
    let client = Client::new(&pki, Some(&pki.good));
    let mut kinds = Vec::new();
    for _ in 0..24 {
        kinds.push(handshake_kind(&client, &gateway));
    }
    assert_eq!(kinds[0], Some(HandshakeKind::Full));
    assert!(
        kinds[1..]
            .iter()
            .all(|kind| *kind == Some(HandshakeKind::Resumed)),
        "{kinds:?}"
    );

    // Every request, full or resumed, names the leaf: never an intermediate.
    let fingerprint = srrrs_edge::tls::identity::fingerprint(&pki.good.der);
    for request in backend.received() {
        assert_eq!(
            request.header("x-client-cert-sha256"),
            Some(fingerprint.as_str())
        );
        assert!(request
            .header("x-client-cert-subject")
            .unwrap_or_default()
            .contains("CN=device-good"));
    }
    // Connections spread over both workers; sessions resumed on each.
    let log = gateway.log_text();
    for worker in ["worker=0", "worker=1"] {
        let resumed_here = log
            .lines()
            .any(|line| line.contains(worker) && line.contains("resumed=true"));
        assert!(resumed_here, "no resumption logged on {worker}");
    }
}

fn two_gateways_sharing_a_key_file_resume_each_others_sessions(driver: Driver) {
    let pki = TestPki::new();
    let keys = pki.path("ticket-keys");
    let status = Command::new(gateway_binary())
        .args(["ticket-key", "new", "-f"])
        .arg(&keys)
        .status()
        .unwrap();
    assert!(status.success());
    let (_backend, backend_addr) = echo_backend();
    let with_keys = |port: u16| {
        pki.mtls_config(port, std::slice::from_ref(&backend_addr))
            .replace(
                "  upstream:",
                "  session_resumption: {ticket_key_file: ticket-keys}\n  upstream:",
            )
    };
    let (port_a, port_b) = (free_port(), free_port());
    let first = Gateway::start(pki.dir.path(), &with_keys(port_a), port_a, driver);
    let second = Gateway::start(pki.dir.path(), &with_keys(port_b), port_b, driver);

    let client = Client::new(&pki, Some(&pki.good));
    assert_eq!(handshake_kind(&client, &first), Some(HandshakeKind::Full));
    assert_eq!(
        handshake_kind(&client, &second),
        Some(HandshakeKind::Resumed)
    );
}

fn a_ticket_never_resumes_under_another_trust_policy(driver: Driver) {
    let pki = TestPki::new();
    let keys = pki.path("ticket-keys");
    Command::new(gateway_binary())
        .args(["ticket-key", "new", "-f"])
        .arg(&keys)
        .status()
        .unwrap();
    let (_backend, backend_addr) = echo_backend();
    let shared = "  session_resumption: {ticket_key_file: ticket-keys}\n  upstream:";
    let (port_a, port_b) = (free_port(), free_port());
    let config_a = pki
        .mtls_config(port_a, std::slice::from_ref(&backend_addr))
        .replace("  upstream:", shared);
    // Same key file, but a second CA is trusted: another trust policy.
    let config_b = pki
        .mtls_config(port_b, std::slice::from_ref(&backend_addr))
        .replace("  upstream:", shared)
        .replace(
            "client_ca_cert: device-root.pem",
            "client_ca_cert: [device-root.pem, second-root.pem]",
        )
        .replace("require_crl_check: true", "require_crl_check: false");
    let first = Gateway::start(pki.dir.path(), &config_a, port_a, driver);
    let second = Gateway::start(pki.dir.path(), &config_b, port_b, driver);

    let client = Client::new(&pki, Some(&pki.good));
    assert_eq!(handshake_kind(&client, &first), Some(HandshakeKind::Full));
    assert_eq!(handshake_kind(&client, &second), Some(HandshakeKind::Full));
}

fn a_certificate_revoked_after_its_ticket_was_issued_cannot_resume(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);
    let victim = victim(&pki);
    let client = Client::new(&pki, Some(&victim));
    assert_eq!(handshake_kind(&client, &gateway), Some(HandshakeKind::Full));

    revoke(&pki, &gateway, &[&victim]);
    let attempt = client.get(gateway.addr, "/after-revocation");
    assert_eq!(alert_of(attempt), AlertDescription::CertificateRevoked);
    let paths: Vec<String> = backend.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/"],
        "nothing after the revocation reached the backend"
    );
    assert!(gateway.metric("srrrs_session_tickets_total{event=\"declined\"}") >= 1.0);
}

fn a_live_connection_is_closed_within_a_second_of_its_revocation(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);
    let victim = victim(&pki);
    let mut stream = Client::new(&pki, Some(&victim))
        .connect(gateway.addr)
        .expect("handshake");
    send_request(&mut stream, "/before", &[]).expect("send");
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).expect("a response");
    assert_eq!(&first, b"HTTP/1.1 200");
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();

    revoke(&pki, &gateway, &[&victim]);
    let reloaded = Instant::now();
    let mut rest = Vec::new();
    let closed = loop {
        match stream.read_to_end(&mut rest) {
            Ok(_) => break Instant::now(),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break Instant::now(),
        }
        assert!(
            reloaded.elapsed() < Duration::from_secs(5),
            "the connection stayed open"
        );
    };
    assert!(
        closed - reloaded <= Duration::from_secs(1),
        "closed {:?} after the reload",
        closed - reloaded
    );
    // Nothing more gets through on it.
    let _ = stream.write_all(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(backend.received().len(), 1);
    assert!(gateway.metric("srrrs_revocation_refusals_total{stage=\"live_connection\"}") >= 1.0);
}

fn the_second_full_handshake_hits_the_chain_cache_and_a_crl_reload_invalidates_it(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = pki.mtls_config(port, &[backend_addr]).replace(
        "  upstream:",
        "  session_resumption: {enabled: false}\n  upstream:",
    );
    let gateway =
        Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);
    let lookups = |result: &str| {
        gateway.metric(&format!(
            "srrrs_chain_cache_lookups_total{{result=\"{result}\"}}"
        ))
    };

    // Each connection looks its chain up twice: in the handshake, and once more when it
    // starts (a hit, unless a CRL arrived in between). A live-connection sweep may add
    // hits, never misses.
    let client = Client::new(&pki, Some(&pki.good));
    assert_eq!(handshake_kind(&client, &gateway), Some(HandshakeKind::Full));
    assert_eq!(lookups("miss"), 1.0);
    let hits = lookups("hit");
    assert!(hits >= 1.0);
    assert_eq!(handshake_kind(&client, &gateway), Some(HandshakeKind::Full));
    assert_eq!(
        lookups("miss"),
        1.0,
        "the second handshake is served from the cache"
    );
    assert!(lookups("hit") >= hits + 2.0);

    revoke(&pki, &gateway, &[]);
    assert_eq!(handshake_kind(&client, &gateway), Some(HandshakeKind::Full));
    assert_eq!(lookups("miss"), 2.0, "a new epoch re-verifies");
    let hits = lookups("hit");
    assert_eq!(handshake_kind(&client, &gateway), Some(HandshakeKind::Full));
    assert_eq!(lookups("miss"), 2.0);
    assert!(lookups("hit") >= hits + 2.0);
}
