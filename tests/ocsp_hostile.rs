//! Hostile tests of OCSP: responders that stall, dribble, flood or send garbage; answers
//! replayed, about another certificate, from signers never delegated, out of date or
//! signed with SHA-1; `unknown`; revocations learned after a soft-fail admission or
//! after a ticket was issued; and stapled answers that lapse or are superseded. Answers
//! are forged at test time with the test PKI's keys (x509-ocsp for the encoding, aws-lc-rs
//! for the signature), or come from `openssl ocsp`.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use common::ocsp::*;
use common::*;
use const_oid::db::rfc6960::{ID_PKIX_OCSP_BASIC, ID_PKIX_OCSP_NONCE};
use const_oid::ObjectIdentifier;
use der::asn1::{BitString, GeneralizedTime, OctetString};
use der::{Decode, Encode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::{AlertDescription, HandshakeKind};
use srrrs_edge::demo::pki::{Authority, CertRequest, IssuedCert};
use time::{Duration as Span, OffsetDateTime};
use x509_cert::ext::Extension;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    OcspResponseStatus, ResponderId, ResponseBytes, ResponseData, RevokedInfo, SingleResponse,
    Version,
};
use x509_parser::prelude::{FromDer, X509Certificate};

// --- A responder that stalls ------------------------------------------------------------

#[test]
fn a_stalled_responder_refuses_under_hard_fail_while_other_devices_on_the_worker_go_on() {
    let pki = TestPki::new();
    let (responder, stalled, cached) = stalled_and_answered(&pki);
    let settings = [HARD_FAIL, "timeout: 3s"];
    let (backend, gateway) = start_checking(&pki, &settings, one_worker_without_resumption);
    assert!(admitted(&Client::new(&pki, Some(&cached)), &gateway).is_some());

    let started = Instant::now();
    let client = Client::new(&pki, Some(&stalled));
    let addr = gateway.addr;
    let waiting = thread::spawn(move || {
        let result = client.get(addr, "/stalled");
        (result, started.elapsed())
    });
    let asked = eventually(Duration::from_secs(5), || responder.asked("/stall") >= 1);
    assert!(asked, "the stalled responder was never asked");
    let mut others = Vec::new();
    for _ in 0..3 {
        let one = Instant::now();
        assert!(admitted(&Client::new(&pki, Some(&cached)), &gateway).is_some());
        others.push(one.elapsed());
    }
    let others_done = started.elapsed();
    let (result, refused_after) = waiting.join().expect("the stalled client");

    assert_eq!(alert_of(result), AlertDescription::UnknownCA);
    assert!(
        others_done < refused_after,
        "the other devices ({others_done:?}) waited for the stalled one ({refused_after:?})"
    );
    assert!(
        others
            .iter()
            .all(|took| *took < Duration::from_millis(1500)),
        "{others:?}"
    );
    assert!(
        refused_after >= Duration::from_millis(2500) && refused_after <= Duration::from_secs(11),
        "refused after {refused_after:?}"
    );
    assert_eq!(paths(&backend), ["/", "/", "/", "/"]);
}

#[test]
fn a_stalled_responder_delays_then_admits_under_soft_fail_and_the_query_is_cut() {
    let pki = TestPki::new();
    let responder = Scripted::start(|_| Reply::Stall);
    let cert = device(&pki, "device-stalled", &responder.url("/stall"));
    let (backend, gateway) = start_checking(&pki, &[SOFT_FAIL, "timeout: 1s"], |c| c);

    let started = Instant::now();
    let response = Client::new(&pki, Some(&cert))
        .get(gateway.addr, "/soft")
        .expect("admitted under soft-fail");
    let took = started.elapsed();

    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        took >= Duration::from_millis(800) && took <= Duration::from_secs(5),
        "admitted after {took:?}"
    );
    assert!(gateway.metric_or_zero(SOFT_FAIL_ADMISSIONS) >= 1.0);
    let cut = eventually(Duration::from_secs(6), || responder.hung_up() >= 1);
    assert!(cut, "the gateway never gave up on the stalled responder");
    assert_eq!(paths(&backend), ["/soft"]);
}

#[test]
fn a_responder_that_dribbles_its_answer_is_cut_off_and_asked_again_later() {
    let pki = TestPki::new();
    let good = Craft::good(Signer::issuer(&pki.device_ca));
    let answering = Arc::new(AtomicBool::new(false));
    let answers = answering.clone();
    let responder = Scripted::start(move |asked| {
        if answers.load(Ordering::SeqCst) {
            return ocsp_reply(forge(&asked.body, &good));
        }
        let body_head = "HTTP/1.1 200 OK\r\ncontent-type: application/ocsp-response\r\n\
                         content-length: 5000\r\n\r\n";
        match asked.path.as_str() {
            "/dribble-head" => Reply::Dribble(b"HTTP/1.1 200 OK\r\nx-slow: ".to_vec()),
            _ => Reply::Dribble(body_head.as_bytes().to_vec()),
        }
    });
    let in_body = device(&pki, "device-dribble-body", &responder.url("/dribble-body"));
    let in_head = device(&pki, "device-dribble-head", &responder.url("/dribble-head"));
    let settings = [HARD_FAIL, "timeout: 1s", "retry_interval: 200ms"];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    for cert in [&in_body, &in_head] {
        let started = Instant::now();
        let attempt = Client::new(&pki, Some(cert)).get(gateway.addr, "/");
        assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
        assert!(started.elapsed() < Duration::from_secs(5), "{started:?}");
    }
    let cut = eventually(Duration::from_secs(8), || responder.hung_up() >= 2);
    assert!(cut, "the dribbling answers were never cut off");

    // Nothing of the cut queries lingers: once the responder answers, both get in.
    answering.store(true, Ordering::SeqCst);
    for cert in [&in_body, &in_head] {
        let client = Client::new(&pki, Some(cert));
        let admitted = eventually(Duration::from_secs(5), || {
            client
                .get(gateway.addr, "/later")
                .is_ok_and(|r| status_of(&r) == 200)
        });
        assert!(admitted, "{}", gateway.log_text());
    }
    assert_eq!(paths(&backend).len(), 2);
}

#[test]
fn a_burst_of_devices_waiting_on_a_stalled_responder_does_not_hold_up_devices_with_answers() {
    let pki = TestPki::new();
    let (responder, stalled, cached) = stalled_and_answered(&pki);
    let settings = [HARD_FAIL, "timeout: 4s"];
    let (_backend, gateway) = start_checking(&pki, &settings, one_worker_without_resumption);
    assert!(admitted(&Client::new(&pki, Some(&cached)), &gateway).is_some());

    let burst: Vec<_> = (0..20)
        .map(|_| {
            let client = Client::new(&pki, Some(&stalled));
            let addr = gateway.addr;
            thread::spawn(move || client.get(addr, "/stalled").is_err())
        })
        .collect();
    let asked = eventually(Duration::from_secs(5), || responder.asked("/stall") >= 1);
    assert!(asked, "the stalled responder was never asked");
    thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    assert!(admitted(&Client::new(&pki, Some(&cached)), &gateway).is_some());
    let took = started.elapsed();
    let refused = burst
        .into_iter()
        .filter_map(|t| t.join().ok())
        .filter(|refused| *refused)
        .count();

    assert_eq!(refused, 20);
    assert!(
        took < Duration::from_millis(1500),
        "a device with a cached answer waited {took:?} behind devices waiting for theirs"
    );
}

// --- Garbage, floods --------------------------------------------------------------------

#[test]
fn garbage_from_a_responder_is_no_answer_and_breaks_nothing() {
    let pki = TestPki::new();
    let good = Craft::good(Signer::issuer(&pki.device_ca));
    let responder = Scripted::start(move |asked| garbage(&asked.path, &asked.body, &good));
    let settings = [HARD_FAIL, "timeout: 2s", "retry_interval: 100ms"];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    for path in GARBAGE {
        let cert = device(
            &pki,
            &format!("device{}", path.replace('/', "-")),
            &responder.url(path),
        );
        let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/");
        assert!(responder.asked(path) >= 1, "{path} was not asked");
        match attempt {
            Err(rustls::Error::AlertReceived(alert)) => {
                assert_eq!(alert, AlertDescription::UnknownCA, "{path}")
            }
            other => panic!("{path}: expected unknown_ca, got {other:?}"),
        }
    }
    let control = device(&pki, "device-control", &responder.url("/good"));
    assert!(admitted(&Client::new(&pki, Some(&control)), &gateway).is_some());
    assert!(gateway.metric_or_zero(NO_ANSWER) >= GARBAGE.len() as f64);
    assert_eq!(paths(&backend), ["/"]);
}

#[test]
fn endless_answers_are_cut_at_the_limit_and_memory_stays_bounded() {
    let pki = TestPki::new();
    let responder = Scripted::start(|asked| flood(&asked.path));
    let settings = [HARD_FAIL, "timeout: 3s", "retry_interval: 100ms"];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);
    let before = gateway.rss_kib();

    for path in [
        "/flood-close",
        "/flood-length",
        "/flood-chunked",
        "/flood-headers",
    ] {
        let cert = device(
            &pki,
            &format!("device{}", path.replace('/', "-")),
            &responder.url(path),
        );
        let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/");
        assert_eq!(alert_of(attempt), AlertDescription::UnknownCA, "{path}");
    }
    let all_cut = eventually(Duration::from_secs(10), || responder.hung_up() >= 4);
    assert!(all_cut, "a flood was read to its end");

    let sent = responder.tally.flooded.load(Ordering::SeqCst);
    assert!(
        sent < 16 << 20,
        "{sent} bytes of a 100 MiB answer went out before the gateway hung up"
    );
    let grown = gateway.rss_kib().saturating_sub(before);
    assert!(grown < 48 * 1024, "the gateway grew by {grown} KiB");
    assert!(gateway.metric_or_zero(NO_ANSWER) >= 4.0);
    assert!(paths(&backend).is_empty());
}

// --- Answers that must not count --------------------------------------------------------

#[test]
fn a_replayed_answer_from_the_real_responder_is_no_answer() {
    let pki = TestPki::new();
    let upstream = OcspResponder::start(pki.dir.path(), &pki.device_ca, OcspSigner::Issuer, &[]);
    let captured: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let replaying = Arc::new(AtomicBool::new(false));
    let (keep, replay, target) = (captured.clone(), replaying.clone(), upstream.url());
    let responder = Scripted::start(move |asked| {
        let mut kept = keep.lock().unwrap();
        if replay.load(Ordering::SeqCst) {
            if let Some(old) = kept.as_ref() {
                return ocsp_reply(old.clone());
            }
        }
        let fresh = forward(&target, &asked.body);
        *kept = Some(fresh.clone());
        ocsp_reply(fresh)
    });
    let cert = device(&pki, "device-replayed", &responder.url("/"));
    upstream.set_status(&cert, OcspStatus::Good);
    let settings = [HARD_FAIL, "max_age: 2s", "retry_interval: 100ms"];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    assert!(admitted(&Client::new(&pki, Some(&cert)), &gateway).is_some());
    let first = captured
        .lock()
        .unwrap()
        .clone()
        .expect("an answer went through");
    assert!(echoes_a_nonce(&first), "openssl echoes the gateway's nonce");
    replaying.store(true, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(2500));

    let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/replayed");
    assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
    assert!(
        log_count(&gateway, "nonce differs") >= 1,
        "{}",
        gateway.log_text()
    );
    assert_eq!(paths(&backend), ["/"]);
}

#[test]
fn forged_misdirected_stale_or_undelegated_answers_are_no_answer_under_hard_fail() {
    let pki = TestPki::new();
    let cases = Arc::new(bad_answers(&pki));
    let script_cases = cases.clone();
    let responder = Scripted::start(move |asked| {
        let case = script_cases.iter().find(|case| case.path == asked.path);
        let craft = &case.expect("a known path").craft;
        ocsp_reply(forge(&asked.body, craft))
    });
    let settings = [HARD_FAIL, "timeout: 2s", "retry_interval: 100ms"];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    let mut admitted_paths = Vec::new();
    for case in cases.iter() {
        let name = format!("device{}", case.path.replace('/', "-"));
        let cert = device(&pki, &name, &responder.url(case.path));
        let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/");
        match (case.reason, attempt) {
            (None, Ok(response)) => {
                assert_eq!(status_of(&response), 200, "{}", case.path);
                admitted_paths.push(case.path);
            }
            (Some(reason), Err(rustls::Error::AlertReceived(alert))) => {
                assert_eq!(alert, AlertDescription::UnknownCA, "{}", case.path);
                let said = gateway.log_text().lines().any(|line| {
                    line.contains("no valid answer")
                        && line.contains(case.path)
                        && line.contains(reason)
                });
                assert!(said, "{}: no log line saying {reason:?}", case.path);
            }
            (reason, attempt) => panic!("{}: expected {reason:?}, got {attempt:?}", case.path),
        }
    }
    assert_eq!(admitted_paths, ["/ok-issuer", "/ok-delegate", "/ok-skewed"]);
    assert_eq!(paths(&backend).len(), 3);
}

#[test]
fn an_old_answer_without_next_update_or_nonce_is_no_answer() {
    let pki = TestPki::new();
    let mut ancient = Craft::good(Signer::issuer(&pki.device_ca));
    ancient.this_update = -30 * 86_400;
    ancient.next_update = None;
    ancient.nonce = NonceMode::Omit;
    let responder = Scripted::start(move |asked| ocsp_reply(forge(&asked.body, &ancient)));
    let cert = device(&pki, "device-ancient-answer", &responder.url("/ancient"));
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL, "max_age: 1h"], |c| c);

    let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/");
    assert!(responder.asked("/ancient") >= 1);
    assert!(
        matches!(
            attempt,
            Err(rustls::Error::AlertReceived(AlertDescription::UnknownCA))
        ),
        "a 30-day-old answer that any observer of the plain-HTTP responder can replay was \
         taken as current: {attempt:?}"
    );
    assert!(paths(&backend).is_empty());
}

#[test]
fn unknown_is_refused_under_hard_fail_and_admitted_and_counted_under_soft_fail() {
    let pki = TestPki::new();
    let responder = OcspResponder::start(pki.dir.path(), &pki.device_ca, OcspSigner::Issuer, &[]);
    let cert = device(&pki, "device-unknown", &responder.url());
    for policy in [HARD_FAIL, SOFT_FAIL] {
        let (backend, gateway) = start_checking(&pki, &[policy], |c| c);
        let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/");
        assert!(gateway.metric_or_zero(NO_ANSWER) >= 1.0, "{policy}");
        if policy == HARD_FAIL {
            assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
            assert!(paths(&backend).is_empty());
        } else {
            assert_eq!(status_of(&attempt.expect("admitted")), 200);
            assert!(gateway.metric_or_zero(SOFT_FAIL_ADMISSIONS) >= 1.0);
            assert_eq!(paths(&backend), ["/"]);
        }
    }
    assert!(responder.queries() >= 2, "{}", responder.log_text());
}

// --- Revocation learned later ------------------------------------------------------------

#[test]
fn a_revoked_answer_arriving_after_a_soft_fail_admission_shuts_the_device_out() {
    let pki = TestPki::new();
    let mut revoked = Craft::good(Signer::issuer(&pki.device_ca));
    revoked.said = Said::Revoked;
    let responder = Scripted::start(move |asked| {
        let body = forge(&asked.body, &revoked);
        Reply::Late(Duration::from_millis(700), ocsp_http(200, &body))
    });
    let cert = device(&pki, "device-late-revoked", &responder.url("/late"));
    let settings = [SOFT_FAIL, "timeout: 300ms", "retry_interval: 30s"];
    let (backend, gateway) = start_checking(&pki, &settings, |c| c);
    let epoch = gateway.metric(EPOCH);

    let client = Client::new(&pki, Some(&cert));
    let mut live = client.connect(gateway.addr).expect("handshake");
    send_request(&mut live, "/live", &[]).expect("send");
    let first = read_one_response(&mut live);
    assert_eq!(status_of(&first), 200, "admitted under soft-fail: {first}");
    assert!(gateway.metric_or_zero(SOFT_FAIL_ADMISSIONS) >= 1.0);
    // The answer comes 0.7 s after the query; the epoch follows within a second or so.
    let learned = eventually(Duration::from_secs(5), || gateway.metric(EPOCH) > epoch);
    assert!(
        learned,
        "the late revoked answer never took effect:\n{}",
        gateway.log_text()
    );

    let fresh = Client::new(&pki, Some(&cert)).get(gateway.addr, "/fresh");
    let resumed = client.get(gateway.addr, "/resumed");
    let closed = closes_within(&mut live, Duration::from_secs(5));
    let refused = |attempt: &Result<String, rustls::Error>| {
        matches!(
            attempt,
            Err(rustls::Error::AlertReceived(
                AlertDescription::CertificateRevoked
            ))
        )
    };
    assert!(
        refused(&fresh) && refused(&resumed) && closed,
        "known revoked, yet: full handshake {fresh:?}, resumption {resumed:?}, live \
         connection closed within 5 s: {closed}"
    );
    assert_eq!(paths(&backend), ["/live"]);
}

#[test]
fn a_revocation_learned_later_blocks_tls12_resumption_too() {
    let pki = TestPki::new();
    let responder = OcspResponder::start(pki.dir.path(), &pki.device_ca, OcspSigner::Issuer, &[]);
    let cert = listed_device(&pki, &responder, "device-tls12", OcspStatus::Good);
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL, "max_age: 2s"], |c| c);

    let client = Client::with_versions(&pki, Some(&cert), &[&rustls::version::TLS12]);
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Resumed));
    let epoch = gateway.metric(EPOCH);
    responder.set_status(&cert, OcspStatus::Revoked);
    let learned = eventually(Duration::from_secs(8), || gateway.metric(EPOCH) > epoch);
    assert!(
        learned,
        "the revocation was never learned:\n{}",
        gateway.log_text()
    );

    let resumed = client.get(gateway.addr, "/resumed");
    assert_eq!(alert_of(resumed), AlertDescription::CertificateRevoked);
    assert_eq!(paths(&backend), ["/", "/"]);
}

#[test]
fn under_soft_fail_a_revoked_device_stays_out_once_its_revoked_answer_lapses() {
    let pki = TestPki::new();
    let good = Craft::good(Signer::issuer(&pki.device_ca));
    let mut revoked = good.clone();
    revoked.said = Said::Revoked;
    let revoking = Arc::new(AtomicBool::new(false));
    let says_revoked = revoking.clone();
    let responder = Scripted::start(move |asked| {
        let craft = if says_revoked.load(Ordering::SeqCst) {
            &revoked
        } else {
            &good
        };
        ocsp_reply(forge(&asked.body, craft))
    });
    let cert = device(&pki, "device-revoked-then-forgotten", &responder.url("/"));
    let settings = [SOFT_FAIL, "max_age: 2s", "retry_interval: 10s"];
    let (backend, gateway) = start_checking(&pki, &settings, |c| c);

    let client = Client::new(&pki, Some(&cert));
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    let epoch = gateway.metric(EPOCH);
    revoking.store(true, Ordering::SeqCst);
    let learned = eventually(Duration::from_secs(6), || gateway.metric(EPOCH) > epoch);
    assert!(
        learned,
        "the revocation was never learned:\n{}",
        gateway.log_text()
    );
    let meanwhile = Client::new(&pki, Some(&cert)).get(gateway.addr, "/meanwhile");
    assert_eq!(alert_of(meanwhile), AlertDescription::CertificateRevoked);

    // The revoked answer lapses (max_age); the responder still says revoked.
    thread::sleep(Duration::from_millis(2500));
    let resumed = client.get(gateway.addr, "/resumed");
    let fresh = Client::new(&pki, Some(&cert)).get(gateway.addr, "/fresh");
    let refused = |attempt: &Result<String, rustls::Error>| {
        matches!(
            attempt,
            Err(rustls::Error::AlertReceived(
                AlertDescription::CertificateRevoked
            ))
        )
    };
    assert!(
        refused(&resumed) && refused(&fresh),
        "a device known revoked got back in: resumption {resumed:?}, full handshake {fresh:?}"
    );
    assert_eq!(paths(&backend), ["/"]);
}

#[test]
fn an_answer_just_past_its_next_update_does_not_make_the_gateway_hammer_the_responder() {
    let pki = TestPki::new();
    let mut stale = Craft::good(Signer::issuer(&pki.device_ca));
    stale.this_update = -600;
    stale.next_update = Some(-60);
    let responder = Scripted::start(move |asked| ocsp_reply(forge(&asked.body, &stale)));
    let cert = device(&pki, "device-stale-answer", &responder.url("/stale"));
    let settings = [HARD_FAIL, "retry_interval: 10s"];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    for _ in 0..5 {
        let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/");
        assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
    }
    thread::sleep(Duration::from_secs(3));
    let asked = responder.asked("/stale");
    assert!(
        asked <= 2,
        "asked {asked} times within a retry_interval of 10 s"
    );
    assert!(paths(&backend).is_empty());
}

#[test]
fn tls12_full_handshakes_are_checked_and_may_wait_like_tls13_ones() {
    let pki = TestPki::new();
    let good = Craft::good(Signer::issuer(&pki.device_ca));
    let mut revoked = good.clone();
    revoked.said = Said::Revoked;
    let responder = Scripted::start(move |asked| match asked.path.as_str() {
        "/revoked" => ocsp_reply(forge(&asked.body, &revoked)),
        "/slow" => Reply::Late(
            Duration::from_millis(600),
            ocsp_http(200, &forge(&asked.body, &good)),
        ),
        "/stall" => Reply::Stall,
        _ => ocsp_reply(forge(&asked.body, &good)),
    });
    let settings = [HARD_FAIL, "timeout: 2s"];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);
    let tls12 = |name: &str, path: &str| {
        let cert = device(&pki, name, &responder.url(path));
        Client::with_versions(&pki, Some(&cert), &[&rustls::version::TLS12])
    };

    assert!(admitted(&tls12("device-tls12-good", "/good"), &gateway).is_some());
    assert!(admitted(&tls12("device-tls12-slow", "/slow"), &gateway).is_some());
    let revoked = tls12("device-tls12-revoked", "/revoked").get(gateway.addr, "/");
    assert_eq!(alert_of(revoked), AlertDescription::CertificateRevoked);
    let stalled = tls12("device-tls12-stalled", "/stall").get(gateway.addr, "/");
    assert_eq!(alert_of(stalled), AlertDescription::UnknownCA);
    assert_eq!(paths(&backend), ["/", "/"]);
}

#[test]
fn with_its_answer_lapsed_and_the_responder_gone_a_ticket_does_not_resume_under_hard_fail() {
    let pki = TestPki::new();
    let good = Craft::good(Signer::issuer(&pki.device_ca));
    let up = Arc::new(AtomicBool::new(true));
    let answering = up.clone();
    let responder = Scripted::start(move |asked| {
        if answering.load(Ordering::SeqCst) {
            ocsp_reply(forge(&asked.body, &good))
        } else {
            Reply::Bytes(Vec::new())
        }
    });
    let cert = device(&pki, "device-lapsing", &responder.url("/"));
    let settings = [HARD_FAIL, "max_age: 2s", "retry_interval: 100ms"];
    let (backend, gateway) = start_checking(&pki, &settings, |c| c);

    let client = Client::new(&pki, Some(&cert));
    assert_eq!(admitted(&client, &gateway), Some(HandshakeKind::Full));
    up.store(false, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(3000));

    let attempt = client.get(gateway.addr, "/after");
    assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
    assert_eq!(paths(&backend), ["/"]);
}

// --- Stapling ---------------------------------------------------------------------------

#[test]
fn a_staple_from_a_signer_never_delegated_is_never_stapled() {
    let pki = TestPki::new();
    let forged = Craft::good(Signer::issuer(&pki.other_root));
    let responder = Scripted::start(move |asked| ocsp_reply(forge(&asked.body, &forged)));
    let _server = stapled_server(&pki, &responder.url("/staple"));
    let (_backend, gateway) = start_stapling(&pki, None);

    let failed = eventually(Duration::from_secs(10), || {
        gateway.metric_or_zero(STAPLE_FAILURES) >= 1.0
    });
    assert!(failed, "no failed fetch:\n{}", gateway.log_text());
    assert_nothing_stapled(&pki, &gateway);
}

#[test]
fn a_staple_that_lapses_while_its_responder_fails_is_taken_off() {
    let pki = TestPki::new();
    let mut short = Craft::good(Signer::issuer(&pki.server_root));
    short.next_update = Some(8);
    let failing = Arc::new(AtomicBool::new(false));
    let fails = failing.clone();
    let responder = Scripted::start(move |asked| {
        if fails.load(Ordering::SeqCst) {
            Reply::Bytes(ocsp_http(500, b"down"))
        } else {
            ocsp_reply(forge(&asked.body, &short))
        }
    });
    let _server = stapled_server(&pki, &responder.url("/staple"));
    let (_backend, gateway) = start_stapling(&pki, None);

    let stapled = eventually(Duration::from_secs(10), || {
        gateway.metric_or_zero(STAPLE) == 1.0
    });
    assert!(stapled, "no staple:\n{}", gateway.log_text());
    failing.store(true, Ordering::SeqCst);
    let lapsed = eventually(Duration::from_secs(14), || {
        gateway.metric_or_zero(STAPLE) == 0.0
    });
    assert!(lapsed, "a lapsed staple is still stapled");
    assert!(gateway.metric_or_zero(STAPLE_FAILURES) >= 1.0);
    assert_nothing_stapled(&pki, &gateway);
}

#[test]
fn a_good_staple_is_withdrawn_once_the_responder_says_revoked() {
    let pki = TestPki::new();
    let mut good = Craft::good(Signer::issuer(&pki.server_root));
    good.next_update = Some(14);
    let mut revoked = good.clone();
    revoked.said = Said::Revoked;
    let revoking = Arc::new(AtomicBool::new(false));
    let says_revoked = revoking.clone();
    let responder = Scripted::start(move |asked| {
        let craft = if says_revoked.load(Ordering::SeqCst) {
            &revoked
        } else {
            &good
        };
        ocsp_reply(forge(&asked.body, craft))
    });
    let _server = stapled_server(&pki, &responder.url("/staple"));
    let (_backend, gateway) = start_stapling(&pki, None);

    let stapled = eventually(Duration::from_secs(10), || {
        gateway.metric_or_zero(STAPLE) == 1.0
    });
    assert!(stapled, "no staple:\n{}", gateway.log_text());
    let stapled_at = Instant::now();
    revoking.store(true, Ordering::SeqCst);
    let told = eventually(Duration::from_secs(10), || {
        gateway.metric_or_zero(STAPLE_FAILURES) >= 1.0
    });
    assert!(told, "the staple was never fetched again");
    let report = s_client_status(&pki, &gateway);
    assert!(
        stapled_at.elapsed() < Duration::from_secs(12),
        "too slow to tell"
    );
    assert!(!report.contains("Cert Status: good"), "{report}");
}

// --- The scripted responder -------------------------------------------------------------

/// What the scripted responder does with one request.
#[derive(Clone)]
enum Reply {
    /// These bytes, then close.
    Bytes(Vec<u8>),
    /// These bytes after a while, then close.
    Late(Duration, Vec<u8>),
    /// Nothing, until the peer goes.
    Stall,
    /// These bytes, then one more every 100 ms until the peer goes.
    Dribble(Vec<u8>),
    /// These bytes, then the second repeated up to 100 MiB, or until the peer goes.
    Flood(Vec<u8>, Vec<u8>),
}

/// A request the scripted responder received.
struct Asked {
    path: String,
    body: Vec<u8>,
}

type Script = Arc<dyn Fn(&Asked) -> Reply + Send + Sync>;

#[derive(Default)]
struct Tally {
    paths: Mutex<Vec<String>>,
    hung_up: AtomicUsize,
    /// The most bytes one flood sent.
    flooded: AtomicUsize,
}

/// An HTTP server on loopback that answers each request as its script says; stopped when
/// dropped.
struct Scripted {
    addr: SocketAddr,
    tally: Arc<Tally>,
    running: Arc<AtomicBool>,
}

impl Scripted {
    fn start(script: impl Fn(&Asked) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let script: Script = Arc::new(script);
        let tally = Arc::new(Tally::default());
        let running = Arc::new(AtomicBool::new(true));
        let (counts, serving) = (tally.clone(), running.clone());
        thread::spawn(move || {
            while serving.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (script, counts, serving) =
                            (script.clone(), counts.clone(), serving.clone());
                        thread::spawn(move || serve_one(stream, &script, &counts, &serving));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            addr,
            tally,
            running,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many requests for `path` arrived.
    fn asked(&self, path: &str) -> usize {
        let paths = self.tally.paths.lock().unwrap();
        paths.iter().filter(|asked| *asked == path).count()
    }

    /// How many stalled, dribbled or flooded answers the peer gave up on.
    fn hung_up(&self) -> usize {
        self.tally.hung_up.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
    }
}

fn serve_one(mut stream: TcpStream, script: &Script, tally: &Tally, running: &AtomicBool) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let Some(asked) = read_request(&mut stream) else {
        return;
    };
    tally.paths.lock().unwrap().push(asked.path.clone());
    match script(&asked) {
        Reply::Bytes(bytes) => {
            let _ = stream.write_all(&bytes);
        }
        Reply::Late(delay, bytes) => {
            thread::sleep(delay);
            let _ = stream.write_all(&bytes);
        }
        Reply::Stall => {
            if peer_leaves(&mut stream, running) {
                tally.hung_up.fetch_add(1, Ordering::SeqCst);
            }
        }
        Reply::Dribble(head) => {
            let _ = stream.write_all(&head);
            while running.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(100));
                if stream.write_all(b"a").is_err() {
                    tally.hung_up.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
        Reply::Flood(head, chunk) => {
            let _ = stream.write_all(&head);
            let mut sent = 0;
            while sent < 100 << 20 && running.load(Ordering::SeqCst) {
                if stream.write_all(&chunk).is_err() {
                    tally.hung_up.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                sent += chunk.len();
            }
            tally.flooded.fetch_max(sent, Ordering::SeqCst);
        }
    }
}

/// Waits, saying nothing, until the peer closes (true) or the responder stops (false).
fn peer_leaves(stream: &mut TcpStream, running: &AtomicBool) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .ok();
    let mut byte = [0u8; 1];
    while running.load(Ordering::SeqCst) {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// A request head and its `Content-Length` body.
fn read_request(stream: &mut TcpStream) -> Option<Asked> {
    let mut pending = Vec::new();
    let head = next_head(stream, &mut pending)?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1)?.to_owned();
    let length = content_length(&head);
    let mut body = pending;
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(read) => body.extend_from_slice(&chunk[..read]),
        }
    }
    Some(Asked { path, body })
}

fn ocsp_http(status: u16, body: &[u8]) -> Vec<u8> {
    http(status, "application/ocsp-response", body)
}

fn http(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

fn ocsp_reply(body: Vec<u8>) -> Reply {
    Reply::Bytes(ocsp_http(200, &body))
}

/// POSTs an OCSP request to `url` (the `openssl ocsp` responder) and returns the body of
/// its answer.
fn forward(url: &str, request: &[u8]) -> Vec<u8> {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("the upstream responder");
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let head = format!(
        "POST / HTTP/1.0\r\nhost: {addr}\r\ncontent-type: application/ocsp-request\r\n\
         content-length: {}\r\n\r\n",
        request.len()
    );
    stream.write_all(head.as_bytes()).expect("forward");
    stream.write_all(request).expect("forward");
    let mut pending = Vec::new();
    let head = next_head(&mut stream, &mut pending).expect("an HTTP answer");
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let mut chunk = [0u8; 4096];
    while length.is_none_or(|length| pending.len() < length) {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(read) => pending.extend_from_slice(&chunk[..read]),
        }
    }
    pending
}

/// The garbage answers, by path; `/good` answers properly.
const GARBAGE: [&str; 14] = [
    "/http-500-with-a-valid-body",
    "/not-der",
    "/html",
    "/empty",
    "/truncated",
    "/try-later",
    "/unauthorized",
    "/successful-without-body",
    "/not-basic",
    "/not-http",
    "/closed-at-once",
    "/redirect-loop",
    "/bad-chunks",
    "/bad-length",
];

fn garbage(path: &str, request: &[u8], good: &Craft) -> Reply {
    let status_only = |status| {
        let response = OcspResponse {
            response_status: status,
            response_bytes: None,
        };
        ocsp_http(200, &response.to_der().expect("encode"))
    };
    let bytes = match path {
        "/http-500-with-a-valid-body" => ocsp_http(500, &forge(request, good)),
        "/not-der" => ocsp_http(200, b"\x30\x82\xff\xffnot an OCSP response at all"),
        "/html" => http(200, "text/html", b"<html><body>hello</body></html>"),
        "/empty" => ocsp_http(200, b""),
        "/truncated" => {
            let body = forge(request, good);
            let mut bytes = ocsp_http(200, &body);
            bytes.truncate(bytes.len() - body.len() / 2);
            bytes
        }
        "/try-later" => status_only(OcspResponseStatus::TryLater),
        "/unauthorized" => status_only(OcspResponseStatus::Unauthorized),
        "/successful-without-body" => status_only(OcspResponseStatus::Successful),
        "/not-basic" => ocsp_http(200, &with_response_type(&forge(request, good), "1.2.3.4")),
        "/not-http" => b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".to_vec(),
        "/closed-at-once" => Vec::new(),
        "/redirect-loop" => {
            format!("HTTP/1.1 307 X\r\nlocation: {path}\r\ncontent-length: 0\r\n\r\n").into_bytes()
        }
        "/bad-chunks" => b"HTTP/1.1 200 OK\r\ncontent-type: application/ocsp-response\r\n\
              transfer-encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n0\r\n\r\n"
            .to_vec(),
        "/bad-length" => b"HTTP/1.1 200 OK\r\ncontent-type: application/ocsp-response\r\n\
              content-length: -5\r\n\r\n0123456789"
            .to_vec(),
        _ => return ocsp_reply(forge(request, good)),
    };
    Reply::Bytes(bytes)
}

fn flood(path: &str) -> Reply {
    let typed = "HTTP/1.1 200 OK\r\ncontent-type: application/ocsp-response\r\n";
    let zeros = vec![0u8; 64 * 1024];
    match path {
        "/flood-close" => Reply::Flood(format!("{typed}connection: close\r\n\r\n").into(), zeros),
        "/flood-length" => {
            let head = format!("{typed}content-length: 104857600\r\n\r\n");
            Reply::Flood(head.into(), zeros)
        }
        "/flood-chunked" => {
            let head = format!("{typed}transfer-encoding: chunked\r\n\r\n");
            let chunk = [b"10000\r\n".as_slice(), &zeros, b"\r\n"].concat();
            Reply::Flood(head.into(), chunk)
        }
        _ => {
            let line = format!("x-padding: {}\r\n", "a".repeat(1000));
            Reply::Flood(typed.into(), line.repeat(64).into_bytes())
        }
    }
}

// --- Forged answers ---------------------------------------------------------------------

/// Who signs a forged answer: its key, and the certificate put in the answer, if any.
struct Signer {
    key_pem: String,
    cert: Option<Vec<u8>>,
}

impl Signer {
    /// A CA signing with its own key.
    fn issuer(ca: &Authority) -> Self {
        Self {
            key_pem: ca.key_pem(),
            cert: None,
        }
    }

    /// A certificate holder signing with its key, the certificate sent along.
    fn delegate(cert: &IssuedCert) -> Self {
        Self {
            key_pem: cert.key_pem.clone(),
            cert: Some(cert.der.to_vec()),
        }
    }

    /// ECDSA with SHA-256 (aws-lc-rs), or with SHA-1 (`openssl dgst`, aws-lc-rs will not).
    fn sign(&self, message: &[u8], sha1: bool) -> (AlgorithmIdentifierOwned, Vec<u8>) {
        let algorithm = |oid: &str| AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap(oid),
            parameters: None,
        };
        if sha1 {
            return (algorithm("1.2.840.10045.4.1"), self.sign_sha1(message));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key.secret_der())
            .expect("a P-256 key");
        let signature = pair.sign(&SystemRandom::new(), message).expect("sign");
        (
            algorithm("1.2.840.10045.4.3.2"),
            signature.as_ref().to_vec(),
        )
    }

    fn sign_sha1(&self, message: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (key, data) = (dir.path().join("key.pem"), dir.path().join("tbs.der"));
        std::fs::write(&key, &self.key_pem).expect("write key");
        std::fs::write(&data, message).expect("write data");
        let output = Command::new("openssl")
            .args(["dgst", "-sha1", "-sign"])
            .arg(&key)
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .expect("openssl is installed");
        assert!(output.status.success(), "{output:?}");
        output.stdout
    }
}

#[derive(Debug, Clone, Copy)]
enum Said {
    Good,
    Revoked,
}

#[derive(Debug, Clone, Copy)]
enum NonceMode {
    Echo,
    Omit,
    Other,
}

/// How to forge an answer to a request.
#[derive(Clone)]
struct Craft {
    said: Said,
    /// thisUpdate and nextUpdate, seconds from now.
    this_update: i64,
    next_update: Option<i64>,
    nonce: NonceMode,
    /// Answer about this certificate's serial instead of the one asked about.
    serial_of: Option<Vec<u8>>,
    /// Name this CA (name and key hashes) as the issuer instead of the one asked about.
    issuer_of: Option<Vec<u8>>,
    signer: Arc<Signer>,
    sha1: bool,
    corrupt_signature: bool,
}

impl Craft {
    /// `good`, current for an hour, echoing the nonce, signed by `signer`.
    fn good(signer: Signer) -> Self {
        Self {
            said: Said::Good,
            this_update: -60,
            next_update: Some(3600),
            nonce: NonceMode::Echo,
            serial_of: None,
            issuer_of: None,
            signer: Arc::new(signer),
            sha1: false,
            corrupt_signature: false,
        }
    }
}

/// An OCSPResponse (DER) answering the OCSP request `request` (DER) as `craft` says.
fn forge(request: &[u8], craft: &Craft) -> Vec<u8> {
    let request = OcspRequest::from_der(request).expect("an OCSP request");
    let mut cert_id = request.tbs_request.request_list[0].req_cert.clone();
    if let Some(der) = &craft.serial_of {
        let cert = x509_cert::Certificate::from_der(der).expect("certificate");
        cert_id.serial_number = cert.tbs_certificate.serial_number;
    }
    if let Some(der) = &craft.issuer_of {
        let (_, ca) = X509Certificate::from_der(der).expect("CA certificate");
        cert_id.issuer_name_hash = OctetString::new(sha1(ca.subject().as_raw())).unwrap();
        let key = ca.public_key().subject_public_key.data.as_ref();
        cert_id.issuer_key_hash = OctetString::new(sha1(key)).unwrap();
    }
    let cert_status = match craft.said {
        Said::Good => CertStatus::good(),
        Said::Revoked => CertStatus::revoked(RevokedInfo {
            revocation_time: at(-3600),
            revocation_reason: None,
        }),
    };
    let nonce = match craft.nonce {
        NonceMode::Echo => request
            .tbs_request
            .request_extensions
            .iter()
            .flatten()
            .find(|extension| extension.extn_id == ID_PKIX_OCSP_NONCE)
            .cloned(),
        NonceMode::Omit => None,
        NonceMode::Other => Some(Extension {
            extn_id: ID_PKIX_OCSP_NONCE,
            critical: false,
            extn_value: OctetString::new(OctetString::new(vec![9; 16]).unwrap().to_der().unwrap())
                .unwrap(),
        }),
    };
    let tbs = ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(OctetString::new(vec![7; 20]).unwrap()),
        produced_at: at(0),
        responses: vec![SingleResponse {
            cert_id,
            cert_status,
            this_update: at(craft.this_update),
            next_update: craft.next_update.map(at),
            single_extensions: None,
        }],
        response_extensions: nonce.map(|nonce| vec![nonce]),
    };
    let (signature_algorithm, mut signature) = craft
        .signer
        .sign(&tbs.to_der().expect("encode"), craft.sha1);
    if craft.corrupt_signature {
        let middle = signature.len() / 2;
        signature[middle] ^= 0x01;
    }
    let certs = craft
        .signer
        .cert
        .as_ref()
        .map(|der| vec![x509_cert::Certificate::from_der(der).expect("signer certificate")]);
    let basic = BasicOcspResponse {
        tbs_response_data: tbs,
        signature_algorithm,
        signature: BitString::from_bytes(&signature).unwrap(),
        certs,
    };
    let response = OcspResponse {
        response_status: OcspResponseStatus::Successful,
        response_bytes: Some(ResponseBytes {
            response_type: ID_PKIX_OCSP_BASIC,
            response: OctetString::new(basic.to_der().expect("encode")).unwrap(),
        }),
    };
    response.to_der().expect("encode")
}

/// The same OCSPResponse with another response type.
fn with_response_type(response: &[u8], oid: &str) -> Vec<u8> {
    let mut response = OcspResponse::from_der(response).expect("response");
    if let Some(bytes) = response.response_bytes.as_mut() {
        bytes.response_type = ObjectIdentifier::new_unwrap(oid);
    }
    response.to_der().expect("encode")
}

fn echoes_a_nonce(response: &[u8]) -> bool {
    let response = OcspResponse::from_der(response).expect("response");
    let bytes = response.response_bytes.expect("a body");
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).expect("basic");
    basic.nonce().is_some()
}

/// `offset` seconds from now, as OCSP writes a time.
fn at(offset: i64) -> OcspGeneralizedTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let seconds = Duration::from_secs((now + offset) as u64);
    OcspGeneralizedTime(GeneralizedTime::from_unix_duration(seconds).expect("time"))
}

fn sha1(bytes: &[u8]) -> Vec<u8> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes);
    digest.as_ref().to_vec()
}

/// One forged answer and what the gateway must make of it: `None`, a good answer;
/// otherwise, no answer, logged with this reason.
struct BadAnswer {
    path: &'static str,
    craft: Craft,
    reason: Option<&'static str>,
}

fn bad_answers(pki: &TestPki) -> Vec<BadAnswer> {
    let now = OffsetDateTime::now_utc();
    let ca = &pki.device_ca;
    let delegate = ca.issue(&CertRequest::ocsp_responder("device OCSP"));
    let without_purpose = ca.issue(&CertRequest::client("device OCSP without the purpose"));
    let expired = ca.issue(
        &CertRequest::ocsp_responder("expired OCSP")
            .valid(now - Span::days(30), now - Span::days(1)),
    );
    let not_yet = ca.issue(
        &CertRequest::ocsp_responder("future OCSP")
            .valid(now + Span::days(1), now + Span::days(30)),
    );
    let by_the_parent = pki
        .device_root
        .issue(&CertRequest::ocsp_responder("the root's OCSP"));
    let impostor = Authority::root("test device CA");
    let by_an_impostor = impostor.issue(&CertRequest::ocsp_responder("impostor OCSP"));
    let other = ca.issue(&CertRequest::client("another device"));

    let issuer = || Craft::good(Signer::issuer(ca));
    let signed_by = |signer: Signer| Craft::good(signer);
    let with = |mut craft: Craft, change: &dyn Fn(&mut Craft)| {
        change(&mut craft);
        craft
    };
    const UNSIGNED: Option<&str> = Some("not signed by the issuer or by a responder it delegated");
    const NOT_ABOUT_IT: Option<&str> = Some("not about the certificate");
    vec![
        BadAnswer {
            path: "/ok-issuer",
            craft: issuer(),
            reason: None,
        },
        BadAnswer {
            path: "/ok-delegate",
            craft: signed_by(Signer::delegate(&delegate)),
            reason: None,
        },
        BadAnswer {
            path: "/ok-skewed",
            craft: with(issuer(), &|c| c.this_update = 120),
            reason: None,
        },
        BadAnswer {
            path: "/another-serial",
            craft: with(issuer(), &|c| c.serial_of = Some(other.der.to_vec())),
            reason: NOT_ABOUT_IT,
        },
        BadAnswer {
            path: "/another-issuer",
            craft: with(issuer(), &|c| {
                c.issuer_of = Some(pki.other_root.der.to_vec())
            }),
            reason: NOT_ABOUT_IT,
        },
        BadAnswer {
            path: "/signed-by-another-ca",
            craft: signed_by(Signer::issuer(&pki.other_root)),
            reason: UNSIGNED,
        },
        BadAnswer {
            path: "/signed-by-the-parent-ca",
            craft: signed_by(Signer::issuer(&pki.device_root)),
            reason: UNSIGNED,
        },
        BadAnswer {
            path: "/delegate-without-the-purpose",
            craft: signed_by(Signer::delegate(&without_purpose)),
            reason: UNSIGNED,
        },
        BadAnswer {
            path: "/expired-delegate",
            craft: signed_by(Signer::delegate(&expired)),
            reason: UNSIGNED,
        },
        BadAnswer {
            path: "/not-yet-valid-delegate",
            craft: signed_by(Signer::delegate(&not_yet)),
            reason: UNSIGNED,
        },
        BadAnswer {
            path: "/delegate-of-the-parent-ca",
            craft: signed_by(Signer::delegate(&by_the_parent)),
            reason: UNSIGNED,
        },
        BadAnswer {
            path: "/delegate-of-a-same-named-ca",
            craft: signed_by(Signer::delegate(&by_an_impostor)),
            reason: UNSIGNED,
        },
        BadAnswer {
            path: "/corrupted-signature",
            craft: with(issuer(), &|c| c.corrupt_signature = true),
            reason: UNSIGNED,
        },
        BadAnswer {
            path: "/sha1-signature",
            craft: with(issuer(), &|c| c.sha1 = true),
            reason: Some("SHA-1"),
        },
        BadAnswer {
            path: "/this-update-in-the-future",
            craft: with(issuer(), &|c| c.this_update = 3600),
            reason: Some("thisUpdate is in the future"),
        },
        BadAnswer {
            path: "/next-update-passed",
            craft: with(issuer(), &|c| {
                c.this_update = -7200;
                c.next_update = Some(-3600);
            }),
            reason: Some("nextUpdate has passed"),
        },
        BadAnswer {
            path: "/another-nonce",
            craft: with(issuer(), &|c| c.nonce = NonceMode::Other),
            reason: Some("nonce differs"),
        },
    ]
}

/// A responder that stalls on `/stall` and answers `good` for the issuer elsewhere, with a
/// device behind each.
fn stalled_and_answered(pki: &TestPki) -> (Scripted, IssuedCert, IssuedCert) {
    let good = Craft::good(Signer::issuer(&pki.device_ca));
    let responder = Scripted::start(move |asked| match asked.path.as_str() {
        "/stall" => Reply::Stall,
        _ => ocsp_reply(forge(&asked.body, &good)),
    });
    let stalled = device(pki, "device-stalled", &responder.url("/stall"));
    let answered = device(pki, "device-cached", &responder.url("/good"));
    (responder, stalled, answered)
}

// --- Gateways and devices ---------------------------------------------------------------

fn one_worker_without_resumption(config: String) -> String {
    assert!(config.contains("runtime: {workers: 2}"), "{config}");
    without_resumption(config.replace("runtime: {workers: 2}", "runtime: {workers: 1}"))
}

/// Whether the gateway closes a kept-alive connection within `limit`.
fn closes_within(stream: &mut TlsStream, limit: Duration) -> bool {
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let started = Instant::now();
    let mut scratch = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}
