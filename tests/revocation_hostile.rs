//! Hostile probes of repeat handshakes and of revocation: tickets replayed, tampered,
//! outlived or carried to another gateway; CRLs half-written, removed, rolled back,
//! shadowed, poisoned or expiring; reloads that race a handshake; live connections
//! (streaming bodies, WebSocket tunnels) whose certificate is revoked; the verified-chain
//! cache; ticket key files; and RFC 8705 certificate-bound tokens used from another
//! device. A probe that found a bug stays here, ignored, with the bug in one line.

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::client::{
    ClientSessionStore, ResolvesClientCert, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, ClientConfig, ClientConnection, HandshakeKind, NamedGroup, RootCertStore,
    SignatureScheme, StreamOwned, SupportedProtocolVersion,
};
use serde_json::{json, Value};
use srrrs_edge::demo::echo::EchoBackend;
use srrrs_edge::demo::idp::DevIdp;
use srrrs_edge::demo::pki::{CertRequest, IssuedCert, KeyKind};
use srrrs_edge::tls::identity::{fingerprint, thumbprint};
use time::{Duration as Span, OffsetDateTime};

static TLS13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS12: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
static BOTH: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];

on_both_drivers!(
    a_revoked_certificate_cannot_resume_on_tls13_or_tls12,
    a_ticket_from_a_gateway_with_another_hostname_never_resumes,
    a_ticket_under_a_key_retired_longer_than_ticket_lifetime_ago_is_declined,
    a_ticket_key_file_with_bad_lines_keeps_the_keys_in_force,
    tampered_truncated_and_oversized_tickets_fall_back_to_a_full_handshake,
    a_half_written_or_garbled_crl_file_keeps_the_crls_in_force,
    removing_a_crl_file_keeps_the_crls_in_force,
    a_streaming_request_body_is_cut_within_a_second_of_its_devices_revocation,
    an_open_websocket_tunnel_is_closed_within_a_second_of_its_devices_revocation,
    a_revoked_intermediate_ends_full_handshakes_resumptions_and_live_connections,
    a_leaf_presented_with_another_intermediate_of_the_same_name_is_refused,
    an_intermediate_that_expires_ends_full_and_resumed_handshakes,
    a_bound_token_cached_on_one_connection_is_refused_on_a_connection_with_another_certificate,
    bound_tokens_with_a_malformed_confirmation_are_refused,
    a_bad_certificate_in_optional_mode_is_refused_rather_than_made_anonymous,
);

// Slow (each waits for the 30 s expiry sweep): one driver.

#[test]
fn a_certificate_that_expires_can_neither_resume_nor_stay_connected() {
    expiring_certificate(Driver::Epoll)
}

#[test]
fn a_crl_that_expires_while_the_gateway_runs_refuses_every_device_it_covers() {
    expiring_crl(Driver::IoUring)
}

// Bugs found. Each is a logic bug, independent of the I/O driver: one driver each.

#[test]
fn a_replayed_tls13_ticket_lends_no_device_identity_to_a_client_without_a_certificate() {
    replayed_ticket_lends_no_identity(Driver::Epoll, &TLS13)
}

#[test]
fn a_replayed_tls12_ticket_lends_no_device_identity_to_a_client_without_a_certificate() {
    replayed_ticket_lends_no_identity(Driver::Epoll, &TLS12)
}

#[test]
fn a_tls13_resumption_checked_before_a_revocation_is_closed_within_a_second_of_it() {
    resumption_racing_a_revocation(Driver::Epoll, &TLS13)
}

#[test]
fn a_tls12_resumption_checked_before_a_revocation_is_closed_within_a_second_of_it() {
    resumption_racing_a_revocation(Driver::Epoll, &TLS12)
}

#[test]
fn a_full_handshake_verified_before_a_revocation_is_closed_within_a_second_of_it() {
    full_handshake_racing_a_revocation(Driver::Epoll)
}

#[test]
fn an_older_crl_never_replaces_a_newer_one_from_the_same_issuer() {
    crl_rollback(Driver::Epoll)
}

#[test]
fn a_newer_crl_is_not_shadowed_by_an_older_one_from_the_same_issuer() {
    crl_shadowing(Driver::Epoll)
}

#[test]
fn a_crl_url_serving_garbage_does_not_stop_revocations_in_crl_files() {
    crl_url_poisoning(Driver::Epoll, |_| b"<html>maintenance</html>".to_vec())
}

#[test]
fn a_forged_crl_at_a_crl_url_is_refused_at_fetch_and_does_not_stop_revocations_in_files() {
    // The device CA's name, another key, and a CRL newer than the file's.
    crl_url_poisoning(Driver::Epoll, |pki| {
        let impostor = pki.device_root.intermediate("test device CA");
        impostor.crl(&[], Span::days(30)).into_bytes()
    })
}

#[test]
fn a_crl_with_a_bad_signature_keeps_the_crls_in_force() {
    crl_with_bad_signature(Driver::Epoll)
}

#[test]
fn a_crl_bundle_cut_between_two_crls_keeps_the_lost_crl_in_force() {
    crl_bundle_cut(Driver::Epoll)
}

#[test]
fn chains_padded_with_junk_do_not_grow_the_gateway_without_bound() {
    chain_cache_padding(Driver::Epoll)
}

#[test]
fn a_client_hello_spanning_several_records_gets_a_server_hello() {
    let pki = TestPki::new();
    let (_backend, gateway) = start_edited(&pki, Driver::Epoll, |config| config);
    let mut replies = Vec::new();
    for size in [10_000, 17_000, 18_500, 20_000, 40_000, 60_000] {
        let hello = raw_client_hello(true, &psk_extension(&[random_bytes(size)]));
        replies.push((size, hello.len(), first_reply(gateway.addr, &hello)));
    }
    assert!(
        replies.iter().all(|(_, _, reply)| *reply == (22, 2)),
        "(identity, ClientHello bytes, reply): {replies:?}"
    );
}

#[test]
fn a_ticket_older_than_ticket_lifetime_is_declined() {
    let pki = TestPki::new();
    let (_backend, gateway) = start_edited(&pki, Driver::Epoll, |config| {
        with_resumption(config, "{ticket_lifetime: 3s}")
    });
    let device = Device::new(&pki, &pki.good, &TLS13);
    device.get(gateway.addr, "localhost", "/", &[]).unwrap();
    device.jar.freeze();
    let fresh = ticket_in(&device.client_hello("localhost"));
    let stale = ticket_in(&device.client_hello("localhost"));
    // Replayed without its secret: a ticket the gateway accepts fails on the binder
    // with a fatal alert; a declined one gets a ServerHello (a full handshake).
    let replay = |ticket: Vec<u8>| {
        first_reply(
            gateway.addr,
            &raw_client_hello(true, &psk_extension(&[ticket])),
        )
    };
    assert_eq!(replay(fresh).0, 21, "control: a fresh ticket is accepted");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        replay(stale),
        (22, 2),
        "a ticket past its lifetime is declined"
    );
}

#[test]
fn check_refuses_a_ticket_lifetime_above_seven_days() {
    let pki = TestPki::new();
    let backends = ["127.0.0.1:9".to_owned()];
    let config = with_resumption(
        pki.mtls_config(free_port(), &backends),
        "{ticket_lifetime: 30d}",
    );
    let path = pki.write("long-tickets.yaml", &config);
    let (code, stderr) = check_config(&path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("ticket_lifetime: must be at most 7 days"),
        "{stderr}"
    );
}

#[test]
fn a_device_with_an_oversized_chain_is_refused_and_the_gateway_stays_up() {
    let pki = TestPki::new();
    let (_backend, gateway) = start_edited(&pki, Driver::Epoll, |config| config);
    for versions in [&TLS13[..], &TLS12[..]] {
        // 34 KB of chain: past the 16 KiB (and 6 intermediates) a device chain may take.
        let mut padded = chain_of(&pki.good);
        padded.extend((0..34).map(|_| CertificateDer::from(random_bytes(1000))));
        let device = Device::with_chain(&pki, padded, key_of(&pki.good), versions);
        let attempt = device
            .get(gateway.addr, "localhost", "/", &[])
            .map(|(r, _)| r);
        assert_eq!(
            alert_of(attempt),
            AlertDescription::BadCertificate,
            "{versions:?}"
        );
    }
    let good = Device::new(&pki, &pki.good, &BOTH);
    let attempt = good.get(gateway.addr, "localhost", "/", &[]);
    assert!(attempt.is_ok_and(|(r, _)| status_of(&r) == 200));
}

// --- Tickets ----------------------------------------------------------------------------

fn a_revoked_certificate_cannot_resume_on_tls13_or_tls12(driver: Driver) {
    let (pki, backend, gateway) = start_default(driver);
    let victims: Vec<IssuedCert> = ["victim-13", "victim-12"]
        .iter()
        .map(|name| device_cert(&pki, name))
        .collect();
    let devices = [
        Device::new(&pki, &victims[0], &TLS13),
        Device::new(&pki, &victims[1], &TLS12),
    ];
    for device in &devices {
        let (response, kind) = device.get(gateway.addr, "localhost", "/", &[]).unwrap();
        assert_eq!(status_of(&response), 200);
        assert_eq!(kind, Some(HandshakeKind::Full));
        device.jar.freeze();
    }

    revoke(&pki, &gateway, &[&victims[0], &victims[1]]);
    for device in &devices {
        let attempt = device.get(gateway.addr, "localhost", "/after", &[]);
        assert_eq!(
            alert_of(attempt.map(|(r, _)| r)),
            AlertDescription::CertificateRevoked
        );
    }
    assert_eq!(paths(&backend), ["/", "/"]);
    assert!(gateway.metric("srrrs_session_tickets_total{event=\"declined\"}") >= 2.0);
}

fn a_ticket_from_a_gateway_with_another_hostname_never_resumes(driver: Driver) {
    let pki = TestPki::new();
    pki.write("ticket-keys", &format!("{}\n", key_line(Duration::ZERO)));
    let shared = |config: String| with_resumption(config, "{ticket_key_file: ticket-keys}");
    let (_backend_a, first) = start_edited(&pki, driver, shared);
    let (_backend_b, second) = start_edited(&pki, driver, |config| {
        shared(config).replace("hostname: localhost", "hostname: edge.test")
    });

    for versions in [&TLS13[..], &TLS12[..]] {
        let device = Device::new(&pki, &pki.good, versions);
        let kind = |gateway: &Gateway| device.get(gateway.addr, "localhost", "/", &[]).unwrap().1;
        assert_eq!(kind(&first), Some(HandshakeKind::Full));
        assert_eq!(kind(&first), Some(HandshakeKind::Resumed), "control");
        assert_eq!(kind(&second), Some(HandshakeKind::Full), "{versions:?}");
    }
}

fn a_ticket_under_a_key_retired_longer_than_ticket_lifetime_ago_is_declined(driver: Driver) {
    let pki = TestPki::new();
    let old = key_line(Duration::from_secs(3 * 3600));
    pki.write("ticket-keys", &format!("{old}\n"));
    let (_backend, gateway) = start_edited(&pki, driver, |config| {
        with_resumption(
            config,
            "{ticket_key_file: ticket-keys, ticket_lifetime: 1h}",
        )
    });
    let device = Device::new(&pki, &pki.good, &TLS13);
    let kind = || device.get(gateway.addr, "localhost", "/", &[]).unwrap().1;
    assert_eq!(kind(), Some(HandshakeKind::Full));
    device.jar.freeze();
    assert_eq!(device.jar.tickets(), 2, "two tickets under the old key");

    // A newer key made just now: the old one still decrypts.
    rewrite_and_reload(&gateway, "session ticket keys reloaded", || {
        pki.write(
            "ticket-keys",
            &format!("{}\n{old}\n", key_line(Duration::ZERO)),
        );
    });
    assert_eq!(kind(), Some(HandshakeKind::Resumed));

    // A newer key made two hours ago, with a one-hour lifetime: the old one is done.
    rewrite_and_reload(&gateway, "session ticket keys reloaded", || {
        let newer = key_line(Duration::from_secs(2 * 3600));
        pki.write("ticket-keys", &format!("{newer}\n{old}\n"));
    });
    assert_eq!(kind(), Some(HandshakeKind::Full));
}

fn a_ticket_key_file_with_bad_lines_keeps_the_keys_in_force(driver: Driver) {
    let pki = TestPki::new();
    let old = key_line(Duration::ZERO);
    pki.write("ticket-keys", &format!("{old}\n"));
    let (_backend, gateway) = start_edited(&pki, driver, |config| {
        with_resumption(config, "{ticket_key_file: ticket-keys}")
    });
    let device = Device::new(&pki, &pki.good, &TLS13);
    let kind = || device.get(gateway.addr, "localhost", "/", &[]).unwrap().1;
    assert_eq!(kind(), Some(HandshakeKind::Full));
    device.jar.freeze();

    let newer = key_line(Duration::ZERO);
    let (_, newer_key) = newer.split_once(' ').unwrap();
    let bad_files = [
        format!("{newer}\nnot a key line\n{old}\n"),
        String::new(),
        "# nothing but a comment\n".to_owned(),
        format!("{}\n{old}\n", &newer[..newer.len() - 10]),
        format!("yesterday {newer_key}\n{old}\n"),
        format!("{newer}\n{old}\n")[..30].to_owned(),
    ];
    for bad in &bad_files {
        rewrite_and_reload(&gateway, "ticket key reload failed", || {
            pki.write("ticket-keys", bad);
        });
    }
    // The old key still decrypts, and the tickets issued now are under it: they resume
    // once the file holds the old key alone.
    device.jar.thaw();
    device.jar.keep_oldest(1);
    assert_eq!(kind(), Some(HandshakeKind::Resumed));
    device.jar.freeze();
    device.jar.keep_newest(1);
    rewrite_and_reload(&gateway, "session ticket keys reloaded", || {
        pki.write("ticket-keys", &format!("{old}\n"));
    });
    assert_eq!(kind(), Some(HandshakeKind::Resumed));
}

fn tampered_truncated_and_oversized_tickets_fall_back_to_a_full_handshake(driver: Driver) {
    let (pki, _backend, gateway) = start_default(driver);
    let baseline_fds = gateway.open_fds();
    let declined = || gateway.metric("srrrs_session_tickets_total{event=\"declined\"}");
    let before = declined();

    for tls13 in [true, false] {
        let versions = if tls13 { &TLS13[..] } else { &TLS12[..] };
        let device = Device::new(&pki, &pki.good, versions);
        device.get(gateway.addr, "localhost", "/", &[]).unwrap();
        device.jar.freeze();
        let ticket = ticket_in(&device.client_hello("localhost"));
        assert!(ticket.len() > 100, "a real ticket: {} bytes", ticket.len());

        let mut flipped = ticket.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut other_id = ticket.clone();
        other_id[0] ^= 1;
        let mut variants = vec![
            ("tampered body", vec![flipped]),
            ("tampered key id", vec![other_id]),
            ("truncated", vec![ticket[..20].to_vec()]),
            ("key id only", vec![ticket[..4].to_vec()]),
            (
                // Large, but in one record: see the probe of large ClientHellos.
                "oversized",
                vec![[&ticket[..4], &random_bytes(12_000)[..]].concat()],
            ),
        ];
        if tls13 {
            let many = (0..200)
                .map(|_| [&ticket[..4], &random_bytes(12)[..]].concat())
                .collect();
            variants.push(("two hundred identities", many));
        }
        for (what, identities) in variants {
            let last = if tls13 {
                psk_extension(&identities)
            } else {
                extension(0x0023, &identities[0])
            };
            let reply = first_reply(gateway.addr, &raw_client_hello(tls13, &last));
            assert_eq!(reply, (22, 2), "{what} (TLS 1.3: {tls13}): a ServerHello");
        }
    }

    assert!(
        declined() >= before + 210.0,
        "every bad ticket was declined"
    );
    let good = Device::new(&pki, &pki.good, &BOTH);
    let (response, _) = good.get(gateway.addr, "localhost", "/", &[]).unwrap();
    assert_eq!(status_of(&response), 200, "the gateway still serves");
    assert!(
        eventually(Duration::from_secs(5), || gateway.open_fds()
            <= baseline_fds + 2),
        "descriptors back to {baseline_fds}: {}",
        gateway.open_fds()
    );
}

/// Optional mode: device A connects once and gets tickets; then a client holding only
/// one of them (it travels in clear in the ClientHello), without a certificate, replays
/// it under another SNI, so that the gateway opens it but does not resume it.
fn replayed_ticket_lends_no_identity(
    driver: Driver,
    versions: &[&'static SupportedProtocolVersion],
) {
    let pki = TestPki::new();
    let idp = DevIdp::new(ISSUER, "k1", KeyKind::EcdsaP256);
    pki.write("jwks.json", &idp.jwks());
    let (backend, gateway) = start_edited(&pki, driver, |config| {
        with_jwt(config).replace("mode: mtls", "mode: optional")
    });
    let bearer = format!("Bearer {}", bound_token(&idp, &thumbprint(&pki.good.der)));
    let auth = [("authorization", bearer.as_str())];

    let device = Device::new(&pki, &pki.good, versions);
    let (response, _) = device
        .get(gateway.addr, "localhost", "/device", &auth)
        .unwrap();
    assert_eq!(status_of(&response), 200, "{response}");

    // The attacker: no certificate, the ticket seen on the wire, no SNI (an IP address).
    device.certificate.withhold();
    let mut problems = Vec::new();
    let stolen = device.get(gateway.addr, "127.0.0.1", "/stolen", &auth);
    match &stolen {
        Ok((response, kind)) => {
            if status_of(response) == 200 {
                problems.push(format!(
                    "a token bound to A passed without A's key ({kind:?})"
                ));
            }
        }
        Err(error) => problems.push(format!("handshake failed: {error}")),
    }
    // And its own fresh ticket, resumed, carries A's identity on.
    let again = device.get(gateway.addr, "127.0.0.1", "/stolen-again", &auth);
    if let Ok((_, kind)) = &again {
        let carried = backend
            .received()
            .iter()
            .any(|r| r.path == "/stolen-again" && r.header("x-client-cert-sha256").is_some());
        if carried {
            problems.push(format!(
                "a session of the attacker's own carries A's identity ({kind:?})"
            ));
        }
    }
    let fingerprint_a = fingerprint(&pki.good.der);
    for request in backend.received().iter().filter(|r| r.path != "/device") {
        if request.header("x-client-cert-sha256") == Some(fingerprint_a.as_str()) {
            problems.push(format!("{} reached the backend as device A", request.path));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A resumption whose ticket was checked before the CRL reload, finished after it.
fn resumption_racing_a_revocation(driver: Driver, versions: &[&'static SupportedProtocolVersion]) {
    let (pki, backend, gateway) = start_default(driver);
    let victim = device_cert(&pki, "device-racing");
    let device = Device::new(&pki, &victim, versions);
    device
        .get(gateway.addr, "localhost", "/before", &[])
        .unwrap();

    let held = HeldFlight::start(&device, gateway.addr);
    revoke(&pki, &gateway, &[&victim]);
    std::thread::sleep(Duration::from_millis(1100));
    let kind = held.conn.handshake_kind();
    let forwarded = held.finish_and_request();
    assert_eq!(
        kind,
        Some(HandshakeKind::Resumed),
        "the ticket was accepted before"
    );
    assert_eq!(paths(&backend), ["/before"], "{forwarded}");
}

/// TLS 1.2: the Certificate message goes first and is verified; the rest of the flight
/// follows after the CRL reload.
fn full_handshake_racing_a_revocation(driver: Driver) {
    let pki = TestPki::new();
    let (backend, gateway) = start_edited(&pki, driver, |config| {
        with_resumption(config, "{enabled: false}")
    });
    let victim = device_cert(&pki, "device-racing");
    let device = Device::new(&pki, &victim, &TLS12);

    let mut held = HeldFlight::start(&device, gateway.addr);
    let (certificate, rest) = split_after_certificate(&held.held);
    held.tcp.write_all(&certificate).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    held.held = rest;
    revoke(&pki, &gateway, &[&victim]);
    std::thread::sleep(Duration::from_millis(1100));
    let forwarded = held.finish_and_request();
    assert_eq!(paths(&backend), Vec::<String>::new(), "{forwarded}");
}

// --- CRLs -------------------------------------------------------------------------------

fn a_half_written_or_garbled_crl_file_keeps_the_crls_in_force(driver: Driver) {
    let (pki, backend, gateway) = start_default(driver);
    let victim = device_cert(&pki, "device-victim");
    let next = pki.device_ca.crl(&[&pki.revoked, &victim], Span::days(7));
    let epoch = gateway.metric(EPOCH);
    let variants = [
        next[..next.len() / 2].to_owned(),
        next[..next.len() - 30].to_owned(),
        String::new(),
        "\u{0}\u{1}not a CRL at all".to_owned(),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_owned(),
        format!("{next}{}", &next[..next.len() / 2]),
        next.replace("-----END X509 CRL-----", "-----END X509 CR"),
    ];
    for variant in &variants {
        rewrite_and_reload(&gateway, "CRL reload failed", || {
            pki.write("device-ca.crl", variant);
        });
        assert_eq!(gateway.metric(EPOCH), epoch, "{variant:?}");
        let good = Device::new(&pki, &pki.good, &BOTH);
        assert_eq!(
            status_of(&good.get(gateway.addr, "localhost", "/", &[]).unwrap().0),
            200
        );
        let revoked = Device::new(&pki, &pki.revoked, &BOTH);
        let attempt = revoked
            .get(gateway.addr, "localhost", "/revoked", &[])
            .map(|(r, _)| r);
        assert_eq!(alert_of(attempt), AlertDescription::CertificateRevoked);
    }
    assert!(!paths(&backend).contains(&"/revoked".to_owned()));
}

fn removing_a_crl_file_keeps_the_crls_in_force(driver: Driver) {
    let (pki, backend, gateway) = start_default(driver);
    let epoch = gateway.metric(EPOCH);
    rewrite_and_reload(&gateway, "CRL reload failed", || {
        std::fs::remove_file(pki.path("device-ca.crl")).unwrap();
    });
    assert_eq!(gateway.metric(EPOCH), epoch);
    let revoked = Device::new(&pki, &pki.revoked, &BOTH);
    let attempt = revoked
        .get(gateway.addr, "localhost", "/revoked", &[])
        .map(|(r, _)| r);
    assert_eq!(alert_of(attempt), AlertDescription::CertificateRevoked);
    let good = Device::new(&pki, &pki.good, &BOTH);
    assert_eq!(
        status_of(&good.get(gateway.addr, "localhost", "/", &[]).unwrap().0),
        200
    );
    assert_eq!(paths(&backend), ["/"]);
}

fn crl_rollback(driver: Driver) {
    let pki = TestPki::new();
    let victim = device_cert(&pki, "device-victim");
    let now = OffsetDateTime::now_utc();
    let newer = pki.device_ca.crl_between(
        &[&pki.revoked, &victim],
        now - Span::minutes(10),
        now + Span::days(7),
    );
    let older =
        pki.device_ca
            .crl_between(&[&pki.revoked], now - Span::hours(2), now + Span::days(5));
    let server = CrlPoint::start(newer.as_bytes());
    let (backend, gateway) = start_edited(&pki, driver, |config| {
        with_crl_url(config, "[device-root.crl]", &server.url())
    });
    wait_for_first_fetch(&gateway);
    let device = Device::new(&pki, &victim, &BOTH);
    let attempt = device
        .get(gateway.addr, "localhost", "/", &[])
        .map(|(r, _)| r);
    assert_eq!(
        alert_of(attempt),
        AlertDescription::CertificateRevoked,
        "control"
    );

    // An on-path attacker (the URL is plain http) replays the older, still valid CRL.
    server.serve(200, older.as_bytes());
    reload_and_wait_for_epoch(&gateway);
    let attempt = device
        .get(gateway.addr, "localhost", "/rolled-back", &[])
        .map(|(r, _)| r);
    assert!(
        matches!(attempt, Err(rustls::Error::AlertReceived(_))),
        "{attempt:?}"
    );
    assert!(paths(&backend).is_empty());
}

fn crl_shadowing(driver: Driver) {
    let pki = TestPki::new();
    let victim = device_cert(&pki, "device-victim");
    let now = OffsetDateTime::now_utc();
    // The file holds the CRL of an hour ago; the distribution point has a newer one.
    let newer = pki.device_ca.crl_between(
        &[&pki.revoked, &victim],
        now - Span::minutes(5),
        now + Span::days(7),
    );
    let server = CrlPoint::start(newer.as_bytes());
    let (backend, gateway) = start_edited(&pki, driver, |config| {
        with_crl_url(config, "[device-root.crl, device-ca.crl]", &server.url())
    });
    wait_for_first_fetch(&gateway);
    let device = Device::new(&pki, &victim, &BOTH);
    let attempt = device
        .get(gateway.addr, "localhost", "/", &[])
        .map(|(r, _)| r);
    assert!(
        matches!(attempt, Err(rustls::Error::AlertReceived(_))),
        "{attempt:?}"
    );
    assert!(paths(&backend).is_empty());
}

fn crl_url_poisoning(driver: Driver, poison: fn(&TestPki) -> Vec<u8>) {
    let pki = TestPki::new();
    let victim = device_cert(&pki, "device-victim");
    let unrelated = pki.second_root.crl(&[], Span::days(7));
    let server = CrlPoint::start(unrelated.as_bytes());
    let (backend, gateway) = start_edited(&pki, driver, |config| {
        with_crl_url(config, "[device-root.crl, device-ca.crl]", &server.url())
    });
    wait_for_first_fetch(&gateway);
    let device = Device::new(&pki, &victim, &BOTH);
    assert_eq!(
        status_of(&device.get(gateway.addr, "localhost", "/", &[]).unwrap().0),
        200
    );

    // The distribution point answers 200 with the poison once, then goes down.
    server.serve(200, &poison(&pki));
    rewrite_and_reload(
        &gateway,
        "CRL fetch failed; keeping the last good copy",
        || {},
    );
    server.serve(503, b"");

    // The operator revokes the victim in a CRL file.
    pki.write(
        "device-ca.crl",
        &pki.device_ca.crl(&[&pki.revoked, &victim], Span::days(7)),
    );
    gateway.reload();
    let refused = eventually(Duration::from_secs(10), || {
        device
            .get(gateway.addr, "localhost", "/later", &[])
            .is_err()
    });
    assert!(
        refused,
        "the revocation in the file never went into force: {:?}",
        paths(&backend)
    );
}

fn crl_with_bad_signature(driver: Driver) {
    let (pki, backend, gateway) = start_default(driver);
    // The gateway has seen the device CA in a verified chain, so it knows its key.
    let good = Device::new(&pki, &pki.good, &BOTH);
    let attempt = good.get(gateway.addr, "localhost", "/before", &[]);
    assert!(attempt.is_ok_and(|(r, _)| status_of(&r) == 200), "control");
    // Same issuer name as the device CA, another key.
    let impostor = pki.device_root.intermediate("test device CA");
    let epoch = gateway.metric(EPOCH);
    let failures = log_count(&gateway, "CRL reload failed");
    pki.write("device-ca.crl", &impostor.crl(&[], Span::days(7)));
    gateway.reload();
    let handled = eventually(Duration::from_secs(10), || {
        gateway.metric(EPOCH) > epoch || log_count(&gateway, "CRL reload failed") > failures
    });
    assert!(handled);

    let revoked = Device::new(&pki, &pki.revoked, &BOTH);
    let attempt = revoked
        .get(gateway.addr, "localhost", "/revoked", &[])
        .map(|(r, _)| r);
    assert!(attempt.is_err(), "the revoked device stays out");
    let attempt = good.get(gateway.addr, "localhost", "/good", &[]);
    assert!(
        attempt.as_ref().is_ok_and(|(r, _)| status_of(r) == 200),
        "the good device still gets in: {attempt:?}"
    );
    assert_eq!(paths(&backend), ["/before", "/good"]);
}

fn crl_bundle_cut(driver: Driver) {
    let pki = TestPki::new();
    let root_crl = pki.device_root.crl(&[], Span::days(7));
    let ca_crl = pki.device_ca.crl(&[&pki.revoked], Span::days(7));
    pki.write("bundle.crl", &format!("{root_crl}{ca_crl}"));
    let (backend, gateway) = start_edited(&pki, driver, |config| {
        config
            .replace("require_crl_check: true", "require_crl_check: false")
            .replace("[device-root.crl, device-ca.crl]", "[bundle.crl]")
    });
    let revoked = Device::new(&pki, &pki.revoked, &BOTH);
    let attempt = revoked
        .get(gateway.addr, "localhost", "/", &[])
        .map(|(r, _)| r);
    assert_eq!(
        alert_of(attempt),
        AlertDescription::CertificateRevoked,
        "control"
    );

    // A writer that is not atomic has written the first CRL and part of a line.
    let before = log_count(&gateway, "CRL reload failed");
    let epoch = gateway.metric(EPOCH);
    pki.write("bundle.crl", &format!("{root_crl}-----BEG"));
    gateway.reload();
    assert!(eventually(Duration::from_secs(10), || {
        gateway.metric(EPOCH) > epoch || log_count(&gateway, "CRL reload failed") > before
    }));
    let attempt = revoked
        .get(gateway.addr, "localhost", "/cut", &[])
        .map(|(r, _)| r);
    assert!(attempt.is_err(), "the revoked device got in: {attempt:?}");
    assert!(paths(&backend).is_empty());
}

fn expiring_crl(driver: Driver) {
    let pki = TestPki::new();
    let now = OffsetDateTime::now_utc();
    let next_update = now + Span::seconds(5);
    let crl = pki
        .device_ca
        .crl_between(&[&pki.revoked], now - Span::hours(1), next_update);
    pki.write("device-ca.crl", &crl);
    let (backend, gateway) = start_edited(&pki, driver, |config| config);

    let device = Device::new(&pki, &pki.good, &TLS13);
    let (response, _) = device
        .get(gateway.addr, "localhost", "/first", &[])
        .unwrap();
    assert_eq!(status_of(&response), 200);
    device.jar.freeze();
    let mut live = KeptAlive::open(&device, gateway.addr);

    sleep_until(next_update + Span::seconds(1));
    let fresh = Device::new(&pki, &pki.good, &TLS13);
    let attempt = fresh
        .get(gateway.addr, "localhost", "/full", &[])
        .map(|(r, _)| r);
    assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
    let attempt = device
        .get(gateway.addr, "localhost", "/resumed", &[])
        .map(|(r, _)| r);
    assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
    // Counted once the alert has gone out, which the client may read first.
    let counted = eventually(Duration::from_secs(5), || {
        gateway.metric("srrrs_tls_handshake_failures_total{reason=\"revocation_unknown\"}") >= 2.0
    });
    assert!(counted, "{}", gateway.metrics());

    let closed = live.wait_for_close(Duration::from_secs(40));
    let after_expiry = unix_secs_of(closed) - next_update.unix_timestamp();
    assert!(
        after_expiry <= 31,
        "live connection closed {after_expiry} s after"
    );
    assert_eq!(paths(&backend), ["/first", "/live"]);
}

// --- Live connections -------------------------------------------------------------------

fn a_streaming_request_body_is_cut_within_a_second_of_its_devices_revocation(driver: Driver) {
    let (pki, backend, gateway) = start_default(driver);
    let victim = device_cert(&pki, "device-uploading");
    let device = Device::new(&pki, &victim, &BOTH);
    let mut stream = device.connect(gateway.addr, "localhost").unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .unwrap();
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();

    revoke(&pki, &gateway, &[&victim]);
    let closed = closed_within(&mut stream, b"5\r\nhello\r\n", "the upload went on");
    assert!(closed <= Duration::from_secs(1), "{closed:?}");
    assert!(
        paths(&backend).is_empty(),
        "the unfinished body never completed"
    );
}

fn an_open_websocket_tunnel_is_closed_within_a_second_of_its_devices_revocation(driver: Driver) {
    let (pki, _backend, gateway) = start_default(driver);
    let victim = device_cert(&pki, "device-tunnelling");
    let device = Device::new(&pki, &victim, &BOTH);
    let mut stream = device.connect(gateway.addr, "localhost").unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"\x81\x02hi").unwrap();
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).unwrap();
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();

    revoke(&pki, &gateway, &[&victim]);
    let closed = closed_within(&mut stream, b"\x81\x02hi", "the tunnel stayed open");
    assert!(closed <= Duration::from_secs(1), "{closed:?}");
}

/// Keeps sending `chunk` on a stream whose reads time out quickly, until the gateway
/// closes it; returns how long that took. Fails with `still_open` after five seconds.
fn closed_within(stream: &mut TlsStream, chunk: &[u8], still_open: &str) -> Duration {
    let started = Instant::now();
    loop {
        if stream.write_all(chunk).is_err() {
            return started.elapsed();
        }
        let mut scratch = [0u8; 256];
        match stream.read(&mut scratch) {
            Ok(0) => return started.elapsed(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{still_open}");
    }
}

fn expiring_certificate(driver: Driver) {
    let (pki, backend, gateway) = start_default(driver);
    let now = OffsetDateTime::now_utc();
    let not_after = now + Span::seconds(5);
    let brief = pki
        .device_ca
        .issue(&CertRequest::client("device-brief").valid(now - Span::days(1), not_after));
    let device = Device::new(&pki, &brief, &TLS13);
    let (response, _) = device
        .get(gateway.addr, "localhost", "/first", &[])
        .unwrap();
    assert_eq!(status_of(&response), 200);
    device.jar.freeze();
    let mut live = KeptAlive::open(&device, gateway.addr);

    sleep_until(not_after + Span::seconds(1));
    let attempt = device
        .get(gateway.addr, "localhost", "/resumed", &[])
        .map(|(r, _)| r);
    assert_eq!(alert_of(attempt), AlertDescription::CertificateExpired);

    let closed = live.wait_for_close(Duration::from_secs(40));
    let after_expiry = unix_secs_of(closed) - not_after.unix_timestamp();
    assert!(
        after_expiry <= 31,
        "live connection closed {after_expiry} s after"
    );
    assert_eq!(paths(&backend), ["/first", "/live"]);
}

// --- Chains and the chain cache ---------------------------------------------------------

fn a_revoked_intermediate_ends_full_handshakes_resumptions_and_live_connections(driver: Driver) {
    let pki = TestPki::new();
    let root = MiniCa::root("mini root");
    let ca = root.intermediate("mini device CA", Span::days(365));
    let leaf = ca.leaf("mini-device");
    write_mini_pki(&pki, &root, &[&ca], &[]);
    let (backend, gateway) = start_edited(&pki, driver, mini_pki_config);

    let device = Device::from_pem(&pki, &leaf.0, &leaf.1, &TLS13);
    let (response, _) = device
        .get(gateway.addr, "localhost", "/first", &[])
        .unwrap();
    assert_eq!(status_of(&response), 200);
    device.jar.freeze();
    let mut live = KeptAlive::open(&device, gateway.addr);

    let epoch = gateway.metric(EPOCH);
    write_mini_pki(&pki, &root, &[&ca], &[&ca.serial]);
    gateway.reload();
    assert!(eventually(Duration::from_secs(10), || {
        gateway.metric(EPOCH) > epoch
    }));
    let reloaded = Instant::now();
    live.wait_for_close(Duration::from_secs(5));
    assert!(
        reloaded.elapsed() <= Duration::from_secs(1),
        "{:?}",
        reloaded.elapsed()
    );

    let attempt = device
        .get(gateway.addr, "localhost", "/resumed", &[])
        .map(|(r, _)| r);
    assert_eq!(alert_of(attempt), AlertDescription::CertificateRevoked);
    let fresh = Device::from_pem(&pki, &leaf.0, &leaf.1, &TLS12);
    let attempt = fresh
        .get(gateway.addr, "localhost", "/full", &[])
        .map(|(r, _)| r);
    assert_eq!(alert_of(attempt), AlertDescription::CertificateRevoked);
    assert_eq!(paths(&backend), ["/first", "/live"]);
}

fn a_leaf_presented_with_another_intermediate_of_the_same_name_is_refused(driver: Driver) {
    let pki = TestPki::new();
    let root = MiniCa::root("mini root");
    let ca = root.intermediate("mini device CA", Span::days(365));
    let twin = root.intermediate("mini device CA", Span::days(365));
    let leaf = ca.leaf("mini-device");
    write_mini_pki(&pki, &root, &[&ca], &[]);
    let (backend, gateway) = start_edited(&pki, driver, mini_pki_config);

    let key = PrivateKeyDer::from_pem_slice(leaf.1.as_bytes()).unwrap();
    let right = vec![leaf.2.clone(), ca.der.clone()];
    let wrong = vec![leaf.2.clone(), twin.der.clone()];
    let with = |chain: &Vec<CertificateDer<'static>>| {
        Device::with_chain(&pki, chain.clone(), key.clone_key(), &BOTH)
    };
    for _ in 0..2 {
        let (response, _) = with(&right)
            .get(gateway.addr, "localhost", "/right", &[])
            .unwrap();
        assert_eq!(status_of(&response), 200, "cached after the first");
        let attempt = with(&wrong).get(gateway.addr, "localhost", "/wrong", &[]);
        assert!(attempt.is_err(), "{attempt:?}");
    }
    assert_eq!(paths(&backend), ["/right", "/right"]);
}

fn an_intermediate_that_expires_ends_full_and_resumed_handshakes(driver: Driver) {
    let pki = TestPki::new();
    let root = MiniCa::root("mini root");
    let ca = root.intermediate("mini short-lived CA", Span::seconds(8));
    let expiry = OffsetDateTime::now_utc() + Span::seconds(8);
    let leaf = ca.leaf("mini-device");
    write_mini_pki(&pki, &root, &[&ca], &[]);
    let (backend, gateway) = start_edited(&pki, driver, mini_pki_config);

    let device = Device::from_pem(&pki, &leaf.0, &leaf.1, &TLS13);
    let (response, _) = device
        .get(gateway.addr, "localhost", "/first", &[])
        .unwrap();
    assert_eq!(status_of(&response), 200);
    let (_, kind) = device
        .get(gateway.addr, "localhost", "/second", &[])
        .unwrap();
    assert_eq!(kind, Some(HandshakeKind::Resumed));
    device.jar.freeze();
    let warm = Device::from_pem(&pki, &leaf.0, &leaf.1, &TLS12);
    warm.get(gateway.addr, "localhost", "/cached", &[]).unwrap();

    sleep_until(expiry + Span::seconds(1));
    let attempt = device
        .get(gateway.addr, "localhost", "/resumed", &[])
        .map(|(r, _)| r);
    assert_eq!(alert_of(attempt), AlertDescription::CertificateExpired);
    let fresh = Device::from_pem(&pki, &leaf.0, &leaf.1, &TLS12);
    let attempt = fresh
        .get(gateway.addr, "localhost", "/full", &[])
        .map(|(r, _)| r);
    assert_eq!(alert_of(attempt), AlertDescription::CertificateExpired);
    assert_eq!(paths(&backend), ["/first", "/second", "/cached"]);
}

fn chain_cache_padding(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, gateway) = start_edited(&pki, driver, |config| {
        with_resumption(config, "{enabled: false}")
    });
    let chain = chain_of(&pki.good);
    let connect_padded = || {
        let mut padded = chain.clone();
        // As much junk as a chain may carry: 5 certificates' worth, within 16 KiB.
        padded.extend((0..5).map(|_| CertificateDer::from(random_bytes(2000))));
        let device = Device::with_chain(&pki, padded, key_of(&pki.good), &TLS13);
        let (response, _) = device
            .get(gateway.addr, "localhost", "/", &[])
            .expect("a padded chain is admitted");
        assert_eq!(status_of(&response), 200);
    };
    for _ in 0..50 {
        connect_padded();
    }
    let before = rss_kib(&gateway);
    for _ in 0..500 {
        connect_padded();
    }
    let grown = rss_kib(&gateway).saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "500 handshakes with 10 KB of junk each grew the gateway by {grown} KiB"
    );
}

// --- Certificate-bound tokens -----------------------------------------------------------

fn a_bound_token_cached_on_one_connection_is_refused_on_a_connection_with_another_certificate(
    driver: Driver,
) {
    let pki = TestPki::new();
    let idp = DevIdp::new(ISSUER, "k1", KeyKind::EcdsaP256);
    pki.write("jwks.json", &idp.jwks());
    let (backend, gateway) = start_edited(&pki, driver, |config| {
        with_jwt(config).replace("workers: 2", "workers: 1")
    });
    let other = device_cert(&pki, "device-other");
    let mine = Device::new(&pki, &pki.good, &BOTH);
    let theirs = Device::new(&pki, &other, &BOTH);
    let token = bound_token(&idp, &thumbprint(&pki.good.der));
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];

    let get = |device: &Device, path: &str| {
        let (response, kind) = device.get(gateway.addr, "localhost", path, &auth).unwrap();
        (status_of(&response), kind, response)
    };
    assert_eq!(get(&mine, "/mine").0, 200);
    for path in ["/theirs-full", "/theirs-resumed"] {
        let (status, _, response) = get(&theirs, path);
        assert_eq!(status, 401, "{path}: {response}");
        assert!(
            response.contains("bound to another certificate"),
            "{response}"
        );
    }
    let (status, kind, _) = get(&mine, "/mine-resumed");
    assert_eq!((status, kind), (200, Some(HandshakeKind::Resumed)));

    let received = backend.received();
    let seen: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(seen, ["/mine", "/mine-resumed"]);
    let mine_fingerprint = fingerprint(&pki.good.der);
    for request in &received {
        assert_eq!(
            request.header("x-client-cert-sha256"),
            Some(mine_fingerprint.as_str())
        );
    }
}

fn bound_tokens_with_a_malformed_confirmation_are_refused(driver: Driver) {
    use base64::Engine as _;
    let pki = TestPki::new();
    let idp = DevIdp::new(ISSUER, "k1", KeyKind::EcdsaP256);
    pki.write("jwks.json", &idp.jwks());
    let (backend, gateway) = start_edited(&pki, driver, with_jwt);
    let device = Device::new(&pki, &pki.good, &BOTH);
    let der = &pki.good.der;
    let right = thumbprint(der);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let standard = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());

    let variants: Vec<(&str, Value)> = vec![
        ("a string", json!(right)),
        ("null", Value::Null),
        ("an empty object", json!({})),
        ("a number", json!({"x5t#S256": 12345})),
        ("an array", json!({"x5t#S256": [right]})),
        ("padded", json!({"x5t#S256": format!("{right}=")})),
        ("standard base64", json!({"x5t#S256": standard})),
        ("hex", json!({"x5t#S256": fingerprint(der)})),
        ("upper case", json!({"x5t#S256": right.to_uppercase()})),
        ("another member name", json!({"X5T#S256": right})),
        ("SHA-1 member", json!({"x5t": right})),
        (
            "the intermediate",
            json!({"x5t#S256": thumbprint(&pki.device_ca.der)}),
        ),
        (
            "the root",
            json!({"x5t#S256": thumbprint(&pki.device_root.der)}),
        ),
        ("prefix", json!({"x5t#S256": &right[..20]})),
    ];
    for (what, cnf) in variants {
        let bearer = format!("Bearer {}", token_with_cnf(&idp, cnf));
        let auth = [("authorization", bearer.as_str())];
        let (response, _) = device
            .get(gateway.addr, "localhost", "/malformed", &auth)
            .unwrap();
        assert_eq!(status_of(&response), 401, "{what}: {response}");
    }
    let bearer = format!("Bearer {}", bound_token(&idp, &right));
    let auth = [("authorization", bearer.as_str())];
    let (response, _) = device
        .get(gateway.addr, "localhost", "/right", &auth)
        .unwrap();
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(paths(&backend), ["/right"]);
}

fn a_bad_certificate_in_optional_mode_is_refused_rather_than_made_anonymous(driver: Driver) {
    let pki = TestPki::new();
    let (backend, gateway) = start_edited(&pki, driver, |config| {
        config.replace("mode: mtls", "mode: optional")
    });
    let cases = [
        (&pki.revoked, AlertDescription::CertificateRevoked),
        (&pki.expired, AlertDescription::CertificateExpired),
        (&pki.untrusted, AlertDescription::UnknownCA),
    ];
    for (cert, alert) in cases {
        for versions in [&TLS13[..], &TLS12[..]] {
            let device = Device::new(&pki, cert, versions);
            let attempt = device
                .get(gateway.addr, "localhost", "/bad", &[])
                .map(|(r, _)| r);
            assert_eq!(alert_of(attempt), alert);
        }
    }
    let anonymous = Device::new(&pki, &pki.good, &BOTH);
    anonymous.certificate.withhold();
    let (response, _) = anonymous
        .get(gateway.addr, "localhost", "/anonymous", &[])
        .unwrap();
    assert_eq!(status_of(&response), 200);
    let received = backend.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].header("x-client-cert-sha256"), None);
}

// --- Ticket key files -------------------------------------------------------------------

#[test]
fn ticket_key_new_refuses_a_corrupted_file_and_leaves_it_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ticket-keys");
    for corrupted in [
        format!("{}\nthis line is not a key\n", key_line(Duration::ZERO)),
        "2026-01-01T00:00:00Z c2hvcnQ=\n".to_owned(),
        "# nothing but a comment\nyesterday AAAA\n".to_owned(),
    ] {
        std::fs::write(&path, &corrupted).unwrap();
        assert!(!ticket_key_new(&path), "{corrupted:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), corrupted);
    }
}

#[test]
fn ticket_key_new_refuses_a_file_whose_bytes_are_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ticket-keys");
    let mut corrupted = format!("{}\n", key_line(Duration::ZERO)).into_bytes();
    corrupted.extend_from_slice(b"\xff\xfe\x00 bit rot\n");
    std::fs::write(&path, &corrupted).unwrap();
    let succeeded = ticket_key_new(&path);
    let now = std::fs::read(&path).unwrap();
    assert!(
        !succeeded && now == corrupted,
        "succeeded: {succeeded}; the file is now:\n{}",
        String::from_utf8_lossy(&now)
    );
}

#[test]
fn ticket_key_new_writes_a_private_file_even_over_a_stale_temporary_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ticket-keys");
    let stale = dir.path().join("ticket-keys.tmp");
    std::fs::write(&stale, "left over\n").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(ticket_key_new(&path));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file has mode {mode:o}");
}

// --- Helpers: gateways, reloads, revocation ---------------------------------------------

/// The gateway with the default mTLS config, once its metrics are complete.
fn start_default(driver: Driver) -> (TestPki, EchoBackend, Gateway) {
    let pki = TestPki::new();
    let (backend, gateway) = start_edited(&pki, driver, |config| config);
    (pki, backend, gateway)
}

fn with_jwt(config: String) -> String {
    let auth = format!(
        "  application_auth:\n    type: jwt\n    issuer: \"{ISSUER}\"\n    audience: \
         \"{AUDIENCE}\"\n    jwks_file: jwks.json\n  upstream:"
    );
    config.replace("  upstream:", &auth)
}

fn with_resumption(config: String, settings: &str) -> String {
    config.replace(
        "  upstream:",
        &format!("  session_resumption: {settings}\n  upstream:"),
    )
}

fn mini_pki_config(config: String) -> String {
    config
        .replace(
            "client_ca_cert: device-root.pem",
            "client_ca_cert: mini-root.pem",
        )
        .replace(
            "crl_files: [device-root.crl, device-ca.crl]",
            "crl_files: [mini-root.crl, mini-ca.crl]",
        )
}

fn device_cert(pki: &TestPki, name: &str) -> IssuedCert {
    pki.device_ca.issue(&CertRequest::client(name))
}

/// Runs `change`, sends SIGHUP, and waits until the log says `needle` once more.
fn rewrite_and_reload(gateway: &Gateway, needle: &str, change: impl FnOnce()) {
    let before = log_count(gateway, needle);
    change();
    gateway.reload();
    let logged = eventually(Duration::from_secs(10), || {
        log_count(gateway, needle) > before
    });
    assert!(logged, "no {needle:?} in:\n{}", gateway.log_text());
}

fn reload_and_wait_for_epoch(gateway: &Gateway) {
    let before = gateway.metric(EPOCH);
    gateway.reload();
    let reloaded = eventually(Duration::from_secs(10), || gateway.metric(EPOCH) > before);
    assert!(reloaded, "no new epoch:\n{}", gateway.log_text());
}

/// The first fetch of `crl_urls` puts epoch 2 in force.
fn wait_for_first_fetch(gateway: &Gateway) {
    let fetched = eventually(Duration::from_secs(10), || gateway.metric(EPOCH) >= 2.0);
    assert!(fetched, "{}", gateway.log_text());
}

fn rss_kib(gateway: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid())).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn sleep_until(moment: OffsetDateTime) {
    let wait = moment - OffsetDateTime::now_utc();
    if wait.is_positive() {
        std::thread::sleep(Duration::from_secs_f64(wait.as_seconds_f64()));
    }
}

fn unix_secs_of(moment: SystemTime) -> i64 {
    moment
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut bytes).expect("randomness");
    bytes
}

/// A ticket key line made `age` ago.
fn key_line(age: Duration) -> String {
    let line = srrrs_edge::tls::tickets::new_key_line();
    let (_, key) = line.split_once(' ').expect("a key line");
    let created = humantime::format_rfc3339_seconds(SystemTime::now() - age);
    format!("{created} {key}")
}

/// Runs `srrrs-edge ticket-key new -f path`; whether it succeeded.
fn ticket_key_new(path: &Path) -> bool {
    Command::new(gateway_binary())
        .args(["ticket-key", "new", "-f"])
        .arg(path)
        .output()
        .expect("run ticket-key new")
        .status
        .success()
}

// --- Helpers: tokens --------------------------------------------------------------------

/// A token for the test audience, bound to `cnf.x5t#S256` = `thumbprint`.
fn bound_token(idp: &DevIdp, thumbprint: &str) -> String {
    token_with_cnf(idp, json!({ "x5t#S256": thumbprint }))
}

fn token_with_cnf(idp: &DevIdp, cnf: Value) -> String {
    let mut claims = idp.claims(AUDIENCE, "alice");
    claims.insert("cnf".into(), cnf);
    idp.sign(&claims)
}

// --- Helpers: a device client that can be turned against the gateway --------------------

/// A device's rustls client that can withhold its certificate, and that keeps the tickets
/// it is given under any server name, so that a test can replay them as it likes.
struct Device {
    config: Arc<ClientConfig>,
    certificate: Arc<CertificateSwitch>,
    jar: Arc<TicketJar>,
}

impl Device {
    fn new(
        pki: &TestPki,
        cert: &IssuedCert,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Self {
        Self::with_chain(pki, chain_of(cert), key_of(cert), versions)
    }

    fn from_pem(
        pki: &TestPki,
        chain_pem: &str,
        key_pem: &str,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Self {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        Self::with_chain(pki, chain, key, versions)
    }

    fn with_chain(
        pki: &TestPki,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let signer = provider
            .key_provider
            .load_private_key(key)
            .expect("device key");
        let certificate = Arc::new(CertificateSwitch {
            key: Arc::new(CertifiedKey::new(chain, signer)),
            present: AtomicBool::new(true),
        });
        let jar = Arc::new(TicketJar::default());
        let mut roots = RootCertStore::empty();
        roots.add(pki.server_root.der.clone()).expect("server root");
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::store(jar.clone());
        Self {
            config: Arc::new(config),
            certificate,
            jar,
        }
    }

    fn connection(&self, server_name: &str) -> ClientConnection {
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        ClientConnection::new(self.config.clone(), name).expect("client connection")
    }

    fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<TlsStream, rustls::Error> {
        let tcp = TcpStream::connect(addr).map_err(|e| rustls::Error::General(e.to_string()))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut stream = StreamOwned::new(self.connection(server_name), tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(tls_error)?;
        }
        Ok(stream)
    }

    /// One request with `Connection: close`: the response and how the session began.
    fn get(
        &self,
        addr: SocketAddr,
        server_name: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(String, Option<HandshakeKind>), rustls::Error> {
        let mut stream = self.connect(addr, server_name)?;
        let mut all = headers.to_vec();
        all.push(("connection", "close"));
        send_request(&mut stream, path, &all).map_err(tls_error)?;
        let response = read_to_end(&mut stream)?;
        Ok((response, stream.conn.handshake_kind()))
    }

    /// The ClientHello this client would send now (it takes a ticket from the jar).
    fn client_hello(&self, server_name: &str) -> Vec<u8> {
        let mut conn = self.connection(server_name);
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello).expect("ClientHello");
        }
        hello
    }
}

fn chain_of(cert: &IssuedCert) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("chain")
}

fn key_of(cert: &IssuedCert) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key")
}

/// The client certificate, sent or withheld.
#[derive(Debug)]
struct CertificateSwitch {
    key: Arc<CertifiedKey>,
    present: AtomicBool,
}

impl CertificateSwitch {
    fn withhold(&self) {
        self.present.store(false, Ordering::SeqCst);
    }
}

impl ResolvesClientCert for CertificateSwitch {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.present
            .load(Ordering::SeqCst)
            .then(|| self.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Sessions kept whatever the server name, newest used first; frozen, it takes no more.
#[derive(Debug, Default)]
struct TicketJar {
    tls13: Mutex<VecDeque<Tls13ClientSessionValue>>,
    tls12: Mutex<Option<Tls12ClientSessionValue>>,
    frozen: AtomicBool,
}

impl TicketJar {
    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    fn tickets(&self) -> usize {
        self.tls13.lock().unwrap().len()
    }

    /// Keeps the `count` oldest TLS 1.3 tickets.
    fn keep_oldest(&self, count: usize) {
        self.tls13.lock().unwrap().truncate(count);
    }

    /// Keeps the `count` newest TLS 1.3 tickets.
    fn keep_newest(&self, count: usize) {
        let mut tickets = self.tls13.lock().unwrap();
        while tickets.len() > count {
            tickets.pop_front();
        }
    }
}

impl ClientSessionStore for TicketJar {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        if !self.frozen.load(Ordering::SeqCst) {
            *self.tls12.lock().unwrap() = Some(value);
        }
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.tls12.lock().unwrap().clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        if !self.frozen.load(Ordering::SeqCst) {
            self.tls13.lock().unwrap().push_back(value);
        }
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.tls13.lock().unwrap().pop_back()
    }
}

/// A keep-alive connection that has had one request answered.
struct KeptAlive(TlsStream);

impl KeptAlive {
    fn open(device: &Device, addr: SocketAddr) -> Self {
        let mut stream = device.connect(addr, "localhost").expect("handshake");
        send_request(&mut stream, "/live", &[]).expect("send");
        let head = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        stream
            .sock
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self(stream)
    }

    /// Waits until the gateway closes the connection; when it did.
    fn wait_for_close(&mut self, limit: Duration) -> SystemTime {
        common::wait_for_close(&mut self.0, limit);
        SystemTime::now()
    }
}

/// Reads a response head, byte by byte (the body, if any, stays unread).
fn read_head(stream: &mut TlsStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("head byte");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A handshake driven by hand: the client's flight after the server's is held back.
struct HeldFlight {
    conn: ClientConnection,
    tcp: TcpStream,
    held: Vec<u8>,
}

impl HeldFlight {
    fn start(device: &Device, addr: SocketAddr) -> Self {
        let mut conn = device.connection("localhost");
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello).unwrap();
        }
        tcp.write_all(&hello).unwrap();
        let mut buffer = vec![0u8; 32 * 1024];
        while !conn.wants_write() {
            let read = tcp.read(&mut buffer).expect("the server's flight");
            assert!(read > 0, "the server closed");
            let mut input = &buffer[..read];
            while !input.is_empty() {
                conn.read_tls(&mut input).unwrap();
                conn.process_new_packets().expect("the server's flight");
            }
        }
        let mut held = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut held).unwrap();
        }
        Self { conn, tcp, held }
    }

    /// Sends the held flight, then a keep-alive request and, a second later, another.
    /// Returns what came back.
    fn finish_and_request(mut self) -> String {
        self.tcp.write_all(&self.held).unwrap();
        let mut stream = StreamOwned::new(self.conn, self.tcp);
        let mut seen = String::new();
        while stream.conn.is_handshaking() {
            if let Err(error) = stream.conn.complete_io(&mut stream.sock) {
                return format!("handshake ended: {error}");
            }
        }
        for (path, last) in [("/after-revocation", false), ("/a-second-later", true)] {
            let headers: &[(&str, &str)] = if last {
                &[("connection", "close")]
            } else {
                &[]
            };
            if send_request(&mut stream, path, headers).is_err() {
                return seen + "closed";
            }
            match read_response(&mut stream) {
                Some(response) => seen.push_str(&response),
                None => return seen + "closed",
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        seen
    }
}

/// One response with a Content-Length body; `None` when the connection ended first.
fn read_response(stream: &mut TlsStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let line = line.to_ascii_lowercase();
            line.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

// --- Helpers: TLS records and ClientHellos made by hand ---------------------------------

fn u16_prefixed(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn u8_prefixed(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend(u16_prefixed(body));
    out
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, 3, 3];
    out.extend(u16_prefixed(payload));
    out
}

/// The records in `bytes`: (content type, payload).
fn records(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let length = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
        out.push((bytes[0], bytes[5..5 + length].to_vec()));
        bytes = &bytes[5 + length..];
    }
    out
}

/// Splits a TLS 1.2 client flight after its Certificate message, re-framing the
/// plaintext handshake records (their framing is not covered by the transcript).
fn split_after_certificate(flight: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let all = records(flight);
    let plaintext: Vec<u8> = all
        .iter()
        .take_while(|(kind, _)| *kind == 22)
        .flat_map(|(_, payload)| payload.clone())
        .collect();
    assert_eq!(plaintext[0], 11, "the flight starts with Certificate");
    let length = u32::from_be_bytes([0, plaintext[1], plaintext[2], plaintext[3]]) as usize;
    let first = record(22, &plaintext[..4 + length]);
    let mut rest = record(22, &plaintext[4 + length..]);
    for (kind, payload) in all.iter().skip_while(|(kind, _)| *kind == 22) {
        rest.extend(record(*kind, payload));
    }
    (first, rest)
}

/// The ticket in a ClientHello: the first PSK identity (TLS 1.3) or the SessionTicket.
fn ticket_in(hello: &[u8]) -> Vec<u8> {
    let handshake: Vec<u8> = records(hello)
        .into_iter()
        .flat_map(|(_, payload)| payload)
        .collect();
    let body = &handshake[4..];
    let mut at = 2 + 32;
    at += 1 + body[at] as usize;
    at += 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    at += 1 + body[at] as usize;
    let end = at + 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    at += 2;
    while at < end {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let length = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let data = &body[at + 4..at + 4 + length];
        match kind {
            0x0029 => {
                let first = u16::from_be_bytes([data[2], data[3]]) as usize;
                return data[4..4 + first].to_vec();
            }
            0x0023 if !data.is_empty() => return data.to_vec(),
            _ => {}
        }
        at += 4 + length;
    }
    panic!("no ticket in the ClientHello");
}

/// A pre_shared_key extension offering `identities`, each with a (wrong) binder.
fn psk_extension(identities: &[Vec<u8>]) -> Vec<u8> {
    let mut offered = Vec::new();
    let mut binders = Vec::new();
    for identity in identities {
        offered.extend(u16_prefixed(identity));
        offered.extend(0u32.to_be_bytes());
        binders.extend(u8_prefixed(&[0u8; 32]));
    }
    let mut body = u16_prefixed(&offered);
    body.extend(u16_prefixed(&binders));
    extension(0x0029, &body)
}

/// A ClientHello for localhost with `last` as its last extension, in as many records as
/// it takes.
fn raw_client_hello(tls13: bool, last: &[u8]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend(random_bytes(32));
    body.extend(u8_prefixed(&random_bytes(32)));
    let suites: &[u8] = if tls13 {
        &[0x13, 0x02, 0x13, 0x01, 0x13, 0x03]
    } else {
        &[0xc0, 0x2b, 0xc0, 0x2c, 0xcc, 0xa9]
    };
    body.extend(u16_prefixed(suites));
    body.extend([1, 0]);
    let mut extensions = Vec::new();
    let name = [&[0u8][..], &u16_prefixed(b"localhost")].concat();
    extensions.extend(extension(0x0000, &u16_prefixed(&name)));
    extensions.extend(extension(0x000a, &u16_prefixed(&[0x00, 0x1d, 0x00, 0x17])));
    extensions.extend(extension(0x000b, &[1, 0]));
    let schemes = [0x04, 0x03, 0x08, 0x04, 0x08, 0x07];
    extensions.extend(extension(0x000d, &u16_prefixed(&schemes)));
    if tls13 {
        extensions.extend(extension(0x002b, &[2, 3, 4]));
        let share = [&[0x00, 0x1d][..], &u16_prefixed(&random_bytes(32))].concat();
        extensions.extend(extension(0x0033, &u16_prefixed(&share)));
        extensions.extend(extension(0x002d, &[1, 1]));
    } else {
        extensions.extend(extension(0x0017, &[]));
    }
    extensions.extend_from_slice(last);
    body.extend(u16_prefixed(&extensions));
    let mut handshake = vec![1];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    handshake
        .chunks(16 * 1024)
        .flat_map(|chunk| record(22, chunk))
        .collect()
}

/// Sends a ClientHello; the content type of the first record back and its first byte.
fn first_reply(addr: SocketAddr, hello: &[u8]) -> (u8, u8) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    tcp.write_all(hello).expect("ClientHello");
    let mut head = [0u8; 6];
    match tcp.read_exact(&mut head) {
        Ok(()) => (head[0], head[5]),
        Err(_) => (0, 0),
    }
}

// --- Helpers: a small PKI whose intermediates can expire and be revoked -----------------

struct MiniCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
    serial: SerialNumber,
}

impl MiniCa {
    fn root(common_name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = mini_params(common_name, Span::days(365), true);
        let serial = params.serial_number.clone().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            serial,
        }
    }

    fn intermediate(&self, common_name: &str, lifetime: Span) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = mini_params(common_name, lifetime, true);
        let serial = params.serial_number.clone().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            serial,
        }
    }

    /// A client certificate: (chain PEM with this CA, key PEM, DER).
    fn leaf(&self, common_name: &str) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = mini_params(common_name, Span::days(30), false);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            format!("{}{}", cert.pem(), self.pem),
            key.serialize_pem(),
            cert.der().clone(),
        )
    }

    fn crl(&self, revoked: &[&SerialNumber]) -> String {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Span::hours(1),
            next_update: now + Span::days(7),
            crl_number: SerialNumber::from_slice(&random_bytes(8)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: (*serial).clone(),
                    revocation_time: now - Span::hours(1),
                    reason_code: Some(RevocationReason::CaCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

fn mini_params(common_name: &str, lifetime: Span, ca: bool) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "srrrs mini PKI");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    let mut serial = random_bytes(16);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = now - Span::days(1);
    params.not_after = now + lifetime;
    params.use_authority_key_identifier_extension = true;
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    } else {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    params
}

/// Writes the mini root, its CRL (revoking `revoked`) and the CRL of each CA.
fn write_mini_pki(pki: &TestPki, root: &MiniCa, cas: &[&MiniCa], revoked: &[&SerialNumber]) {
    pki.write("mini-root.pem", &root.pem);
    pki.write("mini-root.crl", &root.crl(revoked));
    let crls: String = cas.iter().map(|ca| ca.crl(&[])).collect();
    pki.write("mini-ca.crl", &crls);
}
