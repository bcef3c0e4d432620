//! OCSP (RFC 6960) against the real binary, with `openssl ocsp` as the responder: client
//! certificates checked under hard-fail and soft-fail, signers the CA did and did not
//! delegate to, answers cached and refreshed, revocation that reaches live connections and
//! tickets, responders configured per CA, and the server certificate's stapled answer.

mod common;

use std::time::Duration;

use common::ocsp::*;
use common::*;
use rustls::{AlertDescription, HandshakeKind};
use srrrs_edge::demo::pki::{CertRequest, IssuedCert};

on_both_drivers!(a_revocation_learned_later_closes_live_connections_and_blocks_resumption);

// --- The fixture ------------------------------------------------------------------------

#[test]
fn the_fixture_responder_answers_as_its_index_says() {
    let pki = TestPki::new();
    let responder = device_responder(&pki, OcspSigner::Issuer);
    let cert = device(&pki, "device-fixture", &responder.url());
    let stranger = device(&pki, "device-stranger", &responder.url());
    let anchor = pki.path("device-root.pem");

    responder.set_status(&cert, OcspStatus::Good);
    let good = responder.ask_verified(&cert, &anchor);
    assert!(good.contains("Response verify OK"), "{good}");
    assert!(good.contains(": good"), "{good}");
    assert!(good.contains("Next Update:"), "{good}");

    responder.set_status(&cert, OcspStatus::Revoked);
    let revoked = responder.ask_verified(&cert, &anchor);
    assert!(revoked.contains(": revoked"), "{revoked}");
    let unknown = responder.ask_verified(&stranger, &anchor);
    assert!(unknown.contains(": unknown"), "{unknown}");
    assert_eq!(responder.queries(), 0, "its own requests are not counted");
}

#[test]
fn the_fixture_responder_signs_as_told_and_openssl_refuses_signers_never_delegated() {
    let pki = TestPki::new();
    let anchor = pki.path("device-root.pem");
    let delegate = pki
        .device_ca
        .issue(&CertRequest::ocsp_responder("device OCSP"));
    let foreign = pki
        .other_root
        .issue(&CertRequest::ocsp_responder("foreign OCSP"));
    let no_purpose = pki.device_ca.issue(&CertRequest::client("not a responder"));
    let signers = [
        (OcspSigner::Issuer, true),
        (OcspSigner::Delegate(&delegate), true),
        (OcspSigner::Delegate(&foreign), false),
        (OcspSigner::Delegate(&no_purpose), false),
    ];
    for (signer, trusted) in signers {
        let responder = device_responder(&pki, signer);
        let cert = listed_device(&pki, &responder, "device-fixture", OcspStatus::Good);
        let answer = responder.ask_verified(&cert, &anchor);
        assert!(answer.contains(": good"), "{signer:?}: {answer}");
        assert_eq!(
            answer.contains("Response verify OK"),
            trusted,
            "{signer:?}: {answer}"
        );
    }
}

/// One of the gateway's threads, from /proc: its name, the CPUs it may run on and how
/// many times it has been switched out.
struct GatewayThread {
    name: String,
    cpus: String,
    switches: u64,
}

fn gateway_threads(gateway: &Gateway) -> Vec<GatewayThread> {
    std::fs::read_dir(format!("/proc/{}/task", gateway.pid()))
        .expect("the gateway's threads")
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(key))
                    .map(str::trim)
            };
            let count = |key: &str| field(key)?.parse::<u64>().ok();
            Some(GatewayThread {
                name: name.trim().to_owned(),
                cpus: field("Cpus_allowed_list:")?.to_owned(),
                switches: count("voluntary_ctxt_switches:")?
                    + count("nonvoluntary_ctxt_switches:")?,
            })
        })
        .collect()
}

// --- Client certificates ----------------------------------------------------------------

#[test]
fn a_good_certificate_is_admitted_and_its_answer_serves_the_next_full_handshake() {
    let pki = TestPki::new();
    let responder = device_responder(&pki, OcspSigner::Issuer);
    let cert = listed_device(&pki, &responder, "device-good-ocsp", OcspStatus::Good);
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL], without_resumption);

    let client = Client::new(&pki, Some(&cert));
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    assert_eq!(responder.queries(), 1, "{}", responder.log_text());
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    assert_eq!(
        responder.queries(),
        1,
        "the second full handshake used the cached answer"
    );
    assert_eq!(paths(&backend), ["/", "/"]);
}

#[test]
fn with_pinned_workers_the_handshake_pool_threads_run_on_their_workers_cpus() {
    let pki = TestPki::new();
    let responder = device_responder(&pki, OcspSigner::Issuer);
    let cert = listed_device(&pki, &responder, "device-pinned", OcspStatus::Good);
    let pinned = |config: String| {
        without_resumption(config.replace(
            "runtime: {workers: 2}",
            "runtime: {workers: 2, pin_workers: true}",
        ))
    };
    let (_backend, gateway) = start_checking(&pki, &[HARD_FAIL], pinned);
    let client = Client::new(&pki, Some(&cert));
    for _ in 0..8 {
        assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    }

    let threads = gateway_threads(&gateway);
    let cpus_of = |prefix: &str| -> Vec<&str> {
        (threads.iter())
            .filter(|thread| thread.name.starts_with(prefix))
            .map(|thread| thread.cpus.as_str())
            .collect()
    };
    let workers = cpus_of("edge-worker");
    let pool = cpus_of("srrrs-handshake");
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(!pool.is_empty(), "no handshake pool thread");
    for cpus in pool {
        assert!(
            workers.contains(&cpus),
            "{cpus} is no worker's CPU: {workers:?}"
        );
    }
    assert!(
        workers.iter().all(|cpus| !cpus.contains(['-', ','])),
        "{workers:?}"
    );
}

#[test]
fn resumed_handshakes_are_finished_on_the_worker_without_the_pool() {
    let pki = TestPki::new();
    let responder = device_responder(&pki, OcspSigner::Issuer);
    let cert = listed_device(&pki, &responder, "device-resuming", OcspStatus::Good);
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL], |c| c);
    let client = Client::new(&pki, Some(&cert));
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    // Each context switch of a pool thread, counted by the kernel.
    let pool_switches = || -> u64 {
        (gateway_threads(&gateway).iter())
            .filter(|thread| thread.name.starts_with("srrrs-handshake"))
            .map(|thread| thread.switches)
            .sum()
    };
    let before = pool_switches();
    assert!(before > 0, "the full handshake made no hop");

    for _ in 0..20 {
        assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Resumed));
    }
    let after = pool_switches();
    assert!(
        after - before < 5,
        "20 resumptions woke the pool's threads {} times",
        after - before
    );
    assert_eq!(
        admitted(&Client::new(&pki, Some(&cert)), &gateway),
        Some(HandshakeKind::Full)
    );
    assert!(
        pool_switches() > after,
        "a full handshake no longer makes the hop"
    );
    assert_eq!(paths(&backend).len(), 22);
}

#[test]
fn a_certificate_revoked_at_the_responder_is_refused_with_certificate_revoked() {
    let pki = TestPki::new();
    let responder = device_responder(&pki, OcspSigner::Issuer);
    for policy in [HARD_FAIL, SOFT_FAIL] {
        let cert = listed_device(&pki, &responder, "device-revoked-ocsp", OcspStatus::Revoked);
        let (backend, gateway) = start_checking(&pki, &[policy], |c| c);

        let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/");
        assert_eq!(
            alert_of(attempt),
            AlertDescription::CertificateRevoked,
            "{policy}"
        );
        let (chain, key) = pki.client_files("revoked-ocsp", &cert);
        let url = format!("https://localhost:{}/", gateway.addr.port());
        let resolve = format!("localhost:{}:127.0.0.1", gateway.addr.port());
        let curl = curl_mtls(&pki, Some((&chain, &key)), &url, &["--resolve", &resolve]);
        let stderr = String::from_utf8_lossy(&curl.stderr);
        assert!(stderr.contains("certificate revoked"), "{policy}: {stderr}");
        assert!(paths(&backend).is_empty(), "{policy}");
    }
}

#[test]
fn with_its_responder_down_hard_fail_refuses_a_certificate_with_unknown_ca() {
    let pki = TestPki::new();
    let cert = device(&pki, "device-unanswered", &unreachable_url());
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL], |c| c);

    let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/");
    assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
    assert!(paths(&backend).is_empty());
}

#[test]
fn with_its_responder_down_soft_fail_admits_a_certificate_and_counts_and_warns() {
    let pki = TestPki::new();
    let cert = device(&pki, "device-unanswered", &unreachable_url());
    let (backend, gateway) = start_checking(&pki, &[SOFT_FAIL], |c| c);
    let before = gateway.metric_or_zero(SOFT_FAIL_ADMISSIONS);

    let response = Client::new(&pki, Some(&cert))
        .get(gateway.addr, "/soft")
        .expect("admitted");
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(paths(&backend), ["/soft"]);
    assert!(gateway.metric_or_zero(SOFT_FAIL_ADMISSIONS) >= before + 1.0);
    assert!(
        warned(&gateway, "soft-fail"),
        "no soft-fail warning:\n{}",
        gateway.log_text()
    );
}

#[test]
fn a_device_admitted_under_soft_fail_is_closed_once_its_responder_says_revoked() {
    let pki = TestPki::new();
    let mut responder = device_responder(&pki, OcspSigner::Issuer);
    let cert = listed_device(
        &pki,
        &responder,
        "device-soft-then-revoked",
        OcspStatus::Revoked,
    );
    responder.stop();
    let settings = [SOFT_FAIL, "timeout: 1s", "retry_interval: 1s"];
    let (backend, gateway) = start_checking(&pki, &settings, |c| c);

    let client = Client::new(&pki, Some(&cert));
    let mut live = client.connect(gateway.addr).expect("admitted");
    send_request(&mut live, "/live", &[]).expect("send");
    let first = read_one_response(&mut live);
    assert_eq!(status_of(&first), 200, "{first}");

    // Asked again in the background until it answers, not at the next expiry sweep
    // (every 30 s): the revocation closes the connection within seconds.
    responder.restart();
    let closed = wait_for_close(&mut live, Duration::from_secs(20));
    assert!(closed <= Duration::from_secs(10), "closed after {closed:?}");
    assert!(responder.queries() >= 1, "{}", responder.log_text());
    let again = Client::new(&pki, Some(&cert)).get(gateway.addr, "/again");
    assert_eq!(alert_of(again), AlertDescription::CertificateRevoked);
    assert_eq!(paths(&backend), ["/live"]);
}

#[test]
fn a_reload_keeps_good_answers_and_asks_about_those_in_use_again_at_once() {
    let pki = TestPki::new();
    let mut responder = device_responder(&pki, OcspSigner::Issuer);
    let cert = listed_device(&pki, &responder, "device-over-a-reload", OcspStatus::Good);
    let settings = [HARD_FAIL, "timeout: 1s", "retry_interval: 1s"];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);
    let client = Client::new(&pki, Some(&cert));
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    assert_eq!(responder.queries(), 1);

    // A reload that changes max_age keeps no answer: the next handshake asks again.
    gateway.reload_replacing("timeout: 1s", "timeout: 1s\n      max_age: 30m");
    assert!(
        gateway.log_text().contains("kept=0"),
        "{}",
        gateway.log_text()
    );
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    assert_eq!(responder.queries(), 2);

    // Any other change keeps the good answer: with its responder down, the device still
    // gets in.
    responder.stop();
    gateway.reload_replacing("timeout: 1s", "timeout: 2s");
    assert!(
        gateway.log_text().contains("kept=1"),
        "{}",
        gateway.log_text()
    );
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));

    // The answer kept is in use, so it is asked for again at once, with no handshake
    // asking, though it had half an hour left: a device revoked meanwhile is refused.
    responder.set_status(&cert, OcspStatus::Revoked);
    responder.restart();
    assert!(
        eventually(Duration::from_secs(10), || responder.queries() >= 1),
        "the answer kept was not asked for again:\n{}",
        gateway.log_text()
    );
    let refused = eventually(Duration::from_secs(10), || {
        let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/revoked");
        attempt.is_err_and(|error| {
            error == rustls::Error::AlertReceived(AlertDescription::CertificateRevoked)
        })
    });
    assert!(refused, "{}", gateway.log_text());
    assert_eq!(paths(&backend), ["/", "/", "/"]);
}

// --- Intermediates (scope: chain) ----------------------------------------------------

#[test]
fn under_the_chain_scope_the_intermediate_is_asked_about_once_for_all_its_devices() {
    let pki = TestPki::new();
    let leaves = device_responder(&pki, OcspSigner::Issuer);
    let (_, roots, override_line) = root_responder(&pki);
    let devices = [
        listed_device(&pki, &leaves, "device-chain-one", OcspStatus::Good),
        listed_device(&pki, &leaves, "device-chain-two", OcspStatus::Good),
    ];
    let settings = [HARD_FAIL, "scope: chain", &override_line];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    for device in &devices {
        let client = Client::new(&pki, Some(device));
        assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    }
    assert_eq!(leaves.queries(), 2, "{}", leaves.log_text());
    assert_eq!(roots.queries(), 1, "{}", roots.log_text());
    assert_eq!(paths(&backend), ["/", "/"]);
}

#[test]
fn a_revoked_intermediate_refuses_its_devices_under_the_chain_scope_only() {
    let pki = TestPki::new();
    let leaves = device_responder(&pki, OcspSigner::Issuer);
    let (intermediate, roots, override_line) = root_responder(&pki);
    roots.set_status(&intermediate, OcspStatus::Revoked);
    let device = listed_device(&pki, &leaves, "device-under-revoked-ca", OcspStatus::Good);

    for policy in [HARD_FAIL, SOFT_FAIL] {
        let settings = [policy, "scope: chain", &override_line];
        let (backend, gateway) = start_checking(&pki, &settings, |c| c);
        let attempt = Client::new(&pki, Some(&device)).get(gateway.addr, "/");
        assert_eq!(
            alert_of(attempt),
            AlertDescription::CertificateRevoked,
            "{policy}"
        );
        assert!(paths(&backend).is_empty(), "{policy}");
    }

    // The leaf scope (the default) does not ask about the intermediate.
    let asked = roots.queries();
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL, &override_line], |c| c);
    let client = Client::new(&pki, Some(&device));
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    assert_eq!(roots.queries(), asked);
    assert_eq!(paths(&backend), ["/"]);
}

#[test]
fn under_the_chain_scope_and_hard_fail_an_intermediate_without_a_responder_refuses() {
    let pki = TestPki::new();
    let leaves = device_responder(&pki, OcspSigner::Issuer);
    let device = listed_device(
        &pki,
        &leaves,
        "device-under-unanswered-ca",
        OcspStatus::Good,
    );
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL, "scope: chain"], |c| c);

    // The configuration warned, and the refusal names the certificate without one.
    assert!(
        warned(&gateway, "no responder for the trusted CA"),
        "{}",
        gateway.log_text()
    );
    for _ in 0..3 {
        let attempt = Client::new(&pki, Some(&device)).get(gateway.addr, "/");
        assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
    }
    assert!(paths(&backend).is_empty());
    assert!(gateway.metric_or_zero(NO_ANSWER) >= 1.0);
    let named = "no responder for O=srrrs dev PKI, CN=test device CA";
    let log = gateway.log_text();
    let warnings = (log.lines())
        .filter(|line| line.contains("WARN") && line.contains(named))
        .count();
    assert_eq!(warnings, 1, "warned once:\n{log}");

    // A responders entry must name a CA certificate.
    let leaf_as_issuer = format!(
        "responders: [{{issuer: not-a-ca.pem, url: \"{}\"}}]",
        leaves.url()
    );
    pki.write("not-a-ca.pem", &device.cert_pem);
    let default = pki.mtls_config(free_port(), &["127.0.0.1:9".to_owned()]);
    let config = with_ocsp(default, &[HARD_FAIL, &leaf_as_issuer]);
    let (code, stderr) = check_config(&pki.write("leaf-as-issuer.yaml", &config));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("is not a CA certificate"), "{stderr}");
}

#[test]
fn a_revocation_lifted_at_the_responder_lets_its_device_in_at_its_first_handshake_after_a_reload() {
    let pki = TestPki::new();
    let mut responder = device_responder(&pki, OcspSigner::Issuer);
    let cert = listed_device(&pki, &responder, "device-on-hold", OcspStatus::Revoked);
    let settings = [HARD_FAIL, "max_age: 2s", "timeout: 2s"];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);
    let held = Client::new(&pki, Some(&cert)).get(gateway.addr, "/held");
    assert_eq!(alert_of(held), AlertDescription::CertificateRevoked);

    // Out of use for longer than max_age, the revocation is not asked about in the
    // background; the hold is released at the responder meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    responder.stop();
    responder.set_status(&cert, OcspStatus::Good);
    responder.restart();
    gateway.reload_replacing("timeout: 2s", "timeout: 3s");

    // The device's first handshake asks about it again, and waits for the answer.
    let released = Client::new(&pki, Some(&cert)).get(gateway.addr, "/released");
    assert!(
        released.as_ref().is_ok_and(|r| status_of(r) == 200),
        "{released:?}\n{}",
        gateway.log_text()
    );
    assert_eq!(paths(&backend), ["/released"]);
}

#[test]
fn an_intermediate_revoked_while_its_devices_are_connected_closes_their_connections() {
    let pki = TestPki::new();
    let leaves = device_responder(&pki, OcspSigner::Issuer);
    let (intermediate, mut roots, override_line) = root_responder(&pki);
    let device = listed_device(&pki, &leaves, "device-connected-under-ca", OcspStatus::Good);
    let settings = [HARD_FAIL, "scope: chain", "max_age: 4s", &override_line];
    let (backend, gateway) = start_checking(&pki, &settings, |c| c);
    let client = Client::new(&pki, Some(&device));
    let mut live = client.connect(gateway.addr).expect("admitted");
    send_request(&mut live, "/live", &[]).expect("send");
    let first = read_one_response(&mut live);
    assert_eq!(status_of(&first), 200, "{first}");

    // The CA is revoked at the root's responder; the answer in use is asked for again
    // three quarters through its life.
    roots.stop();
    roots.set_status(&intermediate, OcspStatus::Revoked);
    roots.restart();
    let closed = wait_for_close(&mut live, Duration::from_secs(20));
    assert!(closed <= Duration::from_secs(12), "closed after {closed:?}");
    let again = client.get(gateway.addr, "/again");
    assert_eq!(alert_of(again), AlertDescription::CertificateRevoked);
    assert_eq!(paths(&backend), ["/live"]);
}

#[test]
fn under_hard_fail_an_answer_from_a_signer_never_delegated_is_no_answer() {
    let pki = TestPki::new();
    let signers = undelegated_signers(&pki);
    let (responders, certs) = good_devices_behind(&pki, &signers);
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL], |c| c);

    for (cert, responder) in certs.iter().zip(&responders) {
        let attempt = Client::new(&pki, Some(cert)).get(gateway.addr, "/");
        assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
        assert!(responder.queries() >= 1, "the responder was asked");
    }
    assert!(gateway.metric_or_zero(NO_ANSWER) >= 2.0);
    assert!(paths(&backend).is_empty());
}

#[test]
fn under_soft_fail_an_answer_from_a_signer_never_delegated_is_admitted_and_counted() {
    let pki = TestPki::new();
    let signers = undelegated_signers(&pki);
    let (responders, certs) = good_devices_behind(&pki, &signers);
    let (backend, gateway) = start_checking(&pki, &[SOFT_FAIL], |c| c);

    for (cert, responder) in certs.iter().zip(&responders) {
        let response = Client::new(&pki, Some(cert))
            .get(gateway.addr, "/soft")
            .expect("admitted");
        assert_eq!(status_of(&response), 200, "{response}");
        assert!(responder.queries() >= 1, "the responder was asked");
    }
    assert!(gateway.metric_or_zero(NO_ANSWER) >= 2.0);
    assert!(gateway.metric_or_zero(SOFT_FAIL_ADMISSIONS) >= 2.0);
    assert_eq!(paths(&backend), ["/soft", "/soft"]);
}

#[test]
fn answers_signed_by_a_delegated_responder_or_by_the_ca_itself_are_trusted() {
    let pki = TestPki::new();
    let delegate = pki
        .device_ca
        .issue(&CertRequest::ocsp_responder("device OCSP"));
    let delegated = device_responder(&pki, OcspSigner::Delegate(&delegate));
    let by_the_ca = device_responder(&pki, OcspSigner::Issuer);
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL], |c| c);

    for responder in [&delegated, &by_the_ca] {
        let good = listed_device(&pki, responder, "device-good-ocsp", OcspStatus::Good);
        let revoked = listed_device(&pki, responder, "device-revoked-ocsp", OcspStatus::Revoked);

        let client = Client::new(&pki, Some(&good));
        assert!(admitted(&client, &gateway).is_some());
        let attempt = Client::new(&pki, Some(&revoked)).get(gateway.addr, "/");
        assert_eq!(alert_of(attempt), AlertDescription::CertificateRevoked);
    }
    assert_eq!(paths(&backend), ["/", "/"]);
}

fn a_revocation_learned_later_closes_live_connections_and_blocks_resumption(driver: Driver) {
    let pki = TestPki::new();
    let responder = device_responder(&pki, OcspSigner::Issuer);
    let cert = listed_device(&pki, &responder, "device-victim", OcspStatus::Good);
    let settings = [HARD_FAIL, "max_age: 2s"];
    let (backend, gateway) = start_checking_on(&pki, driver, &settings, |c| c);

    let client = Client::new(&pki, Some(&cert));
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    let mut live = client.connect(gateway.addr).expect("handshake");
    assert_eq!(live.conn.handshake_kind(), Some(HandshakeKind::Resumed));
    send_request(&mut live, "/live", &[]).expect("send");
    let first = read_one_response(&mut live);
    assert_eq!(status_of(&first), 200, "{first}");

    let queries = responder.queries();
    responder.set_status(&cert, OcspStatus::Revoked);
    let closed = wait_for_close(&mut live, Duration::from_secs(15));
    assert!(closed <= Duration::from_secs(10), "closed after {closed:?}");
    assert!(
        responder.queries() > queries,
        "the answer in use was asked again"
    );

    // The client still holds tickets from both connections: it offers one.
    let resumed = client.get(gateway.addr, "/resumed");
    assert_eq!(alert_of(resumed), AlertDescription::CertificateRevoked);
    let fresh = Client::new(&pki, Some(&cert)).get(gateway.addr, "/fresh");
    assert_eq!(alert_of(fresh), AlertDescription::CertificateRevoked);
    assert_eq!(paths(&backend), ["/", "/live"]);
}

#[test]
fn a_certificate_is_checked_with_the_responder_configured_for_its_issuer() {
    let pki = TestPki::new();
    let responder = device_responder(&pki, OcspSigner::Issuer);
    pki.write("device-ca.pem", &pki.device_ca.cert_pem);
    // No AIA extension, or one that names a responder nobody runs.
    let without_aia = pki.device_ca.issue(&CertRequest::client("device-no-aia"));
    let misdirected = device(&pki, "device-misdirected", &unreachable_url());
    let revoked = pki
        .device_ca
        .issue(&CertRequest::client("device-no-aia-revoked"));
    responder.set_status(&without_aia, OcspStatus::Good);
    responder.set_status(&misdirected, OcspStatus::Good);
    responder.set_status(&revoked, OcspStatus::Revoked);
    let override_line = format!(
        "responders: [{{issuer: device-ca.pem, url: \"{}\"}}]",
        responder.url()
    );
    let settings = [HARD_FAIL, override_line.as_str()];
    let (backend, gateway) = start_checking(&pki, &settings, |c| c);

    for cert in [&without_aia, &misdirected] {
        assert!(admitted(&Client::new(&pki, Some(cert)), &gateway).is_some());
    }
    let attempt = Client::new(&pki, Some(&revoked)).get(gateway.addr, "/");
    assert_eq!(alert_of(attempt), AlertDescription::CertificateRevoked);
    assert_eq!(responder.queries(), 3, "{}", responder.log_text());
    assert_eq!(paths(&backend), ["/", "/"]);
}

// --- Stapling ---------------------------------------------------------------------------

#[test]
fn the_server_certificate_is_stapled_with_a_good_answer_from_its_aia_responder() {
    let pki = TestPki::new();
    let responder = server_responder(&pki);
    let server = stapled_server(&pki, &responder.url());
    responder.set_status(&server, OcspStatus::Good);
    let (_backend, gateway) = start_stapling(&pki, None);

    let stapled = eventually(Duration::from_secs(10), || {
        gateway.metric_or_zero(STAPLE) == 1.0
    });
    assert!(stapled, "no staple:\n{}", gateway.log_text());
    let report = s_client_status(&pki, &gateway);
    assert!(
        report.contains("OCSP Response Status: successful"),
        "{report}"
    );
    assert!(report.contains("Cert Status: good"), "{report}");
    assert!(responder.queries() >= 1);
}

#[test]
fn the_configured_server_responder_is_asked_instead_of_the_aia_one() {
    let pki = TestPki::new();
    let responder = server_responder(&pki);
    let server = stapled_server(&pki, &unreachable_url());
    responder.set_status(&server, OcspStatus::Good);
    let (_backend, gateway) = start_stapling(&pki, Some(&responder.url()));

    let stapled = eventually(Duration::from_secs(10), || {
        gateway.metric_or_zero(STAPLE) == 1.0
    });
    assert!(stapled, "no staple:\n{}", gateway.log_text());
    let report = s_client_status(&pki, &gateway);
    assert!(report.contains("Cert Status: good"), "{report}");
}

#[test]
fn with_the_server_responder_down_nothing_is_stapled_and_a_warning_is_logged() {
    let pki = TestPki::new();
    let responder = server_responder(&pki);
    let server = stapled_server(&pki, &unreachable_url());
    responder.set_status(&server, OcspStatus::Good);
    let (_backend, gateway) = start_stapling(&pki, None);

    let warned_once = eventually(Duration::from_secs(10), || warned(&gateway, "OCSP"));
    assert!(warned_once, "no warning:\n{}", gateway.log_text());
    assert_nothing_stapled(&pki, &gateway);
}

#[test]
fn a_server_certificate_that_cannot_be_stapled_is_a_configuration_error_naming_why() {
    let pki = TestPki::new();
    let aia = unreachable_url();
    let with_aia = pki
        .server_root
        .issue(&CertRequest::server(&["localhost"]).ocsp_url(&aia));
    let without_aia = pki.server_root.issue(&CertRequest::server(&["localhost"]));
    let cases = [
        (
            "leaf-alone",
            with_aia.cert_pem.clone(),
            &with_aia,
            "needs the issuer",
        ),
        (
            "wrong-issuer",
            format!("{}{}", with_aia.cert_pem, pki.device_ca.cert_pem),
            &with_aia,
            "did not issue the leaf",
        ),
        (
            "no-aia",
            format!("{}{}", without_aia.cert_pem, pki.server_root.cert_pem),
            &without_aia,
            "no OCSP URL",
        ),
    ];
    for (name, chain, cert, expected) in cases {
        pki.write(&format!("{name}.pem"), &chain);
        pki.write(&format!("{name}.key"), &cert.key_pem);
        let config = pki
            .mtls_config(free_port(), &["127.0.0.1:9".to_owned()])
            .replace(
                "server_tls: {cert_chain: server.pem, private_key: server.key}",
                &format!(
                    "server_tls: {{cert_chain: {name}.pem, private_key: {name}.key, \
                 ocsp_stapling: true}}"
                ),
            );
        let (code, stderr) = check_config(&pki.write(&format!("{name}.yaml"), &config));
        assert_ne!(code, Some(0), "{name}: {stderr}");
        assert!(stderr.contains("ocsp_stapling"), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }

    // Named by ocsp_responder instead, the leaf without AIA can be stapled; a responder
    // without stapling is only a warning.
    for (stapling, warned) in [(true, false), (false, true)] {
        let config = pki
            .mtls_config(free_port(), &["127.0.0.1:9".to_owned()])
            .replace(
                "server_tls: {cert_chain: server.pem, private_key: server.key}",
                &format!(
                    "server_tls: {{cert_chain: no-aia.pem, private_key: no-aia.key, \
                 ocsp_stapling: {stapling}, ocsp_responder: \"{aia}\"}}"
                ),
            );
        let (code, stderr) = check_config(&pki.write("responder.yaml", &config));
        assert_eq!(code, Some(0), "{stapling}: {stderr}");
        assert_eq!(
            stderr.contains("ocsp_responder") && stderr.contains("is ignored"),
            warned,
            "{stapling}: {stderr}"
        );
    }
}

// --- Helpers ----------------------------------------------------------------------------

/// A responder for the device CA's certificates that knows none of them yet.
fn device_responder(pki: &TestPki, signer: OcspSigner) -> OcspResponder {
    OcspResponder::start(pki.dir.path(), &pki.device_ca, signer, &[])
}

/// A responder for the server root's certificates, signing as the root.
fn server_responder(pki: &TestPki) -> OcspResponder {
    OcspResponder::start(pki.dir.path(), &pki.server_root, OcspSigner::Issuer, &[])
}

/// A device certificate that `responder` says is good.
/// A URL nothing listens on.
fn unreachable_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// Signers whose answers must not count: an OCSP responder certified by another CA, and
/// a certificate of the device CA without the OCSPSigning purpose.
fn undelegated_signers(pki: &TestPki) -> [IssuedCert; 2] {
    [
        pki.other_root
            .issue(&CertRequest::ocsp_responder("foreign OCSP")),
        pki.device_ca
            .issue(&CertRequest::client("device OCSP without the purpose")),
    ]
}

/// One responder signing as each of `signers`, each with one good device behind it.
fn good_devices_behind(
    pki: &TestPki,
    signers: &[IssuedCert],
) -> (Vec<OcspResponder>, Vec<IssuedCert>) {
    let responders: Vec<OcspResponder> = signers
        .iter()
        .map(|signer| device_responder(pki, OcspSigner::Delegate(signer)))
        .collect();
    let certs = responders
        .iter()
        .map(|responder| listed_device(pki, responder, "device-good-ocsp", OcspStatus::Good))
        .collect();
    (responders, certs)
}

/// Reads from a kept-alive connection until the gateway closes it; how long that took.
fn wait_for_close(stream: &mut TlsStream, limit: Duration) -> Duration {
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    common::wait_for_close(stream, limit)
}

/// Whether the gateway logged a warning that mentions `needle`.
fn warned(gateway: &Gateway, needle: &str) -> bool {
    gateway
        .log_text()
        .lines()
        .any(|line| line.contains("WARN") && line.contains(needle))
}
