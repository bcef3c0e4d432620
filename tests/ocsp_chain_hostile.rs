//! Hostile tests of OCSP under `scope: chain` and across configuration reloads: devices
//! that send look-alike, cross-signed, duplicate or extra intermediates to keep a revoked
//! certificate of their chain from being asked about; responders that stall for every
//! certificate of a chain; and reloads that must not carry an answer over, nor leave a
//! revocation they learn away from the connections opened before them. Certificates are
//! made at test time (the test PKI, or rcgen for the forgeries); answers come from
//! `openssl ocsp`.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::ocsp::*;
use common::*;
use rcgen::{Issuer, KeyPair, SerialNumber, SubjectPublicKeyInfo};
use rustls::AlertDescription;
use srrrs_edge::demo::pki::{ca_params, Authority, CertRequest, IssuedCert};
use x509_parser::prelude::{FromDer, X509Certificate};

const DEVICE_ROOT_NAME: &str = "test device root";
const DEVICE_CA_NAME: &str = "test device CA";

// --- Look-alike, cross-signed and extra intermediates ------------------------------------

#[test]
fn a_look_alike_naming_the_root_as_issuer_does_not_hide_a_revoked_intermediate() {
    let pki = TestPki::new();
    let compromised = pki.device_root.intermediate("compromised device CA");
    let leaves = OcspResponder::start(pki.dir.path(), &compromised, OcspSigner::Issuer, &[]);
    let request = CertRequest::client("device-under-compromised-ca").ocsp_url(&leaves.url());
    let leaf = compromised.issue(&request);
    leaves.set_status(&leaf, OcspStatus::Good);
    let (_, roots, override_line) = root_responder(&pki);
    roots.set_status(&compromised.certificate(), OcspStatus::Revoked);
    let settings = [HARD_FAIL, "scope: chain", &override_line];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    let plain = Client::new(&pki, Some(&leaf)).get(gateway.addr, "/plain");
    assert_eq!(alert_of(plain), AlertDescription::CertificateRevoked);

    // The CA's name and key (both public), the root's name as issuer, the serial of the
    // root's other CA (good at the responder), signed by a key of the device's own. It
    // signs nothing webpki accepts, but the leaf's signature verifies with its key.
    let junk = KeyPair::generate().expect("a key");
    let forged = look_alike(&compromised, DEVICE_ROOT_NAME, &junk, &pki.device_ca.der);
    let intermediates = [forged.as_str(), &compromised.cert_pem];
    refused_as_revoked(&pki, &gateway, "look-alike", &leaf, &intermediates);
    assert!(paths(&backend).is_empty(), "{:?}", paths(&backend));
}

#[test]
fn a_look_alike_intermediate_with_no_issuer_at_hand_does_not_skip_a_revoked_leaf() {
    let pki = TestPki::new();
    let leaves = OcspResponder::start(pki.dir.path(), &pki.device_ca, OcspSigner::Issuer, &[]);
    let leaf = listed_device(&pki, &leaves, "device-revoked-hiding", OcspStatus::Revoked);
    let (_, _roots, override_line) = root_responder(&pki);
    let settings = [SOFT_FAIL, "scope: chain", &override_line];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    let plain = Client::new(&pki, Some(&leaf)).get(gateway.addr, "/plain");
    assert_eq!(alert_of(plain), AlertDescription::CertificateRevoked);

    // The device CA's name and key, issued in the name of a root nobody has: a dead end
    // for the walk up the chain, which webpki steps around.
    let junk = KeyPair::generate().expect("a key");
    let forged = look_alike(&pki.device_ca, "no such root", &junk, &pki.device_ca.der);
    let intermediates = [forged.as_str(), &pki.device_ca.cert_pem];
    refused_as_revoked(&pki, &gateway, "dead end", &leaf, &intermediates);
    assert!(paths(&backend).is_empty(), "{:?}", paths(&backend));
}

#[test]
fn a_good_device_sending_a_cross_certificate_of_its_ca_first_is_admitted_under_hard_fail() {
    let pki = TestPki::new();
    let leaves = OcspResponder::start(pki.dir.path(), &pki.device_ca, OcspSigner::Issuer, &[]);
    let leaf = listed_device(&pki, &leaves, "device-cross-signed", OcspStatus::Good);
    let (_, _roots, override_line) = root_responder(&pki);
    let settings = [HARD_FAIL, "scope: chain", &override_line];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);
    assert!(admitted(&Client::new(&pki, Some(&leaf)), &gateway).is_some());

    // The device CA cross-certified by a root this gateway does not trust: a chain of
    // real certificates, as a device in the middle of a CA migration sends it.
    let other_key = KeyPair::from_pem(&pki.other_root.key_pem()).expect("the other root's key");
    let cross = look_alike(
        &pki.device_ca,
        "untrusted root",
        &other_key,
        &pki.device_ca.der,
    );
    let sent = presenting(&leaf, &[&cross, &pki.device_ca.cert_pem]);
    let attempt = Client::new(&pki, Some(&sent)).get(gateway.addr, "/cross-signed");

    assert_eq!(refusal(&attempt), None, "{attempt:?}");
    assert_eq!(paths(&backend), ["/", "/cross-signed"]);
}

#[test]
fn duplicate_reordered_or_extra_intermediates_and_root_copies_still_meet_the_revoked_ca() {
    let pki = TestPki::new();
    let leaves = OcspResponder::start(pki.dir.path(), &pki.device_ca, OcspSigner::Issuer, &[]);
    let leaf = listed_device(&pki, &leaves, "device-many-shapes", OcspStatus::Good);
    let (_, roots, override_line) = root_responder(&pki);
    roots.set_status(&pki.device_ca.certificate(), OcspStatus::Revoked);
    let settings = [HARD_FAIL, "scope: chain", &override_line];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    let ca = pki.device_ca.cert_pem.as_str();
    let root = pki.device_root.cert_pem.as_str();
    let stranger = pki.other_root.intermediate("stranger CA").cert_pem;
    // Only the name of the device CA, with a key of its own: the leaf does not verify
    // with it, so it is told apart by the signature.
    let junk = KeyPair::generate().expect("a key");
    let name_only = look_alike_with_key(DEVICE_CA_NAME, &junk, DEVICE_ROOT_NAME, &junk, None);
    let shapes: [(&str, Vec<&str>); 6] = [
        ("duplicate", vec![ca, ca]),
        ("root copy first", vec![root, ca]),
        ("root copy last", vec![ca, root]),
        ("unrelated extra", vec![&stranger, ca]),
        ("name-only look-alike", vec![&name_only, ca]),
        (
            "everything",
            vec![root, &name_only, ca, &stranger, ca, root],
        ),
    ];
    for (shape, intermediates) in shapes {
        refused_as_revoked(&pki, &gateway, shape, &leaf, &intermediates);
    }
    assert!(paths(&backend).is_empty(), "{:?}", paths(&backend));
}

// --- Waiting and soft-fail bookkeeping ---------------------------------------------------

#[test]
fn a_chain_whose_responders_all_stall_is_refused_after_one_timeout_not_one_per_certificate() {
    let pki = TestPki::new();
    let stall = Staller::start();
    pki.write("device-ca.pem", &pki.device_ca.cert_pem);
    let sub_ca = pki.device_ca.intermediate("device sub CA");
    let leaf = sub_ca.issue(&CertRequest::client("device-three-deep").ocsp_url(&stall.url()));
    let overrides = format!(
        "responders: [{{issuer: device-root.pem, url: \"{url}\"}}, \
         {{issuer: device-ca.pem, url: \"{url}\"}}]",
        url = stall.url()
    );
    let settings = [HARD_FAIL, "scope: chain", "timeout: 3s", &overrides];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    let started = Instant::now();
    let attempt = Client::new(&pki, Some(&leaf)).get(gateway.addr, "/");
    let refused_after = started.elapsed();

    assert_eq!(alert_of(attempt), AlertDescription::UnknownCA);
    let all_asked = eventually(Duration::from_secs(5), || stall.accepted() >= 3);
    assert!(
        all_asked,
        "three certificates, {} queries",
        stall.accepted()
    );
    // One after the other, the three waits would take nine seconds.
    assert!(
        refused_after >= Duration::from_millis(2500) && refused_after < Duration::from_secs(7),
        "refused after {refused_after:?}"
    );
    assert!(paths(&backend).is_empty());
}

#[test]
fn an_intermediate_unanswered_at_a_soft_fail_admission_is_asked_again_and_closes_its_devices() {
    let pki = TestPki::new();
    let leaves = OcspResponder::start(pki.dir.path(), &pki.device_ca, OcspSigner::Issuer, &[]);
    let leaf = listed_device(&pki, &leaves, "device-soft-chain", OcspStatus::Good);
    let (_, mut roots, override_line) = root_responder(&pki);
    roots.stop();
    let settings = [
        SOFT_FAIL,
        "scope: chain",
        "retry_interval: 1s",
        &override_line,
    ];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);

    let client = Client::new(&pki, Some(&leaf));
    let mut live = client
        .connect(gateway.addr)
        .expect("admitted under soft-fail");
    send_request(&mut live, "/live", &[]).expect("send");
    let first = read_one_response(&mut live);
    assert_eq!(status_of(&first), 200, "{first}");
    assert!(gateway.metric_or_zero(SOFT_FAIL_ADMISSIONS) >= 1.0);

    // The root's responder comes back saying the CA is revoked.
    roots.set_status(&pki.device_ca.certificate(), OcspStatus::Revoked);
    roots.restart();
    wait_for_close(&mut live, Duration::from_secs(20));
    let again = client.get(gateway.addr, "/again");
    assert_eq!(alert_of(again), AlertDescription::CertificateRevoked);
    assert_eq!(paths(&backend), ["/live"]);
}

// --- Reloads -----------------------------------------------------------------------------

#[test]
fn a_reload_learns_a_revocation_at_once_and_closes_the_connections_from_before_it() {
    let pki = TestPki::new();
    let leaves = OcspResponder::start(pki.dir.path(), &pki.device_ca, OcspSigner::Issuer, &[]);
    let cert = listed_device(&pki, &leaves, "device-across-a-reload", OcspStatus::Good);
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL, "timeout: 1s"], |c| c);
    let client = Client::new(&pki, Some(&cert));
    let mut live = client.connect(gateway.addr).expect("admitted");
    send_request(&mut live, "/live", &[]).expect("send");
    let first = read_one_response(&mut live);
    assert_eq!(status_of(&first), 200, "{first}");

    leaves.set_status(&cert, OcspStatus::Revoked);
    gateway.reload_replacing("timeout: 1s", "timeout: 2s");
    assert!(
        gateway.log_text().contains("kept=1"),
        "{}",
        gateway.log_text()
    );

    // The answer kept is asked for again at once (the README allows admissions on it
    // meanwhile), far sooner than its refresh three quarters through its hour.
    let refused = eventually(Duration::from_secs(15), || {
        let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/fresh");
        refusal(&attempt) == Some(AlertDescription::CertificateRevoked)
    });
    assert!(refused, "{}", gateway.log_text());
    // The connection opened before the reload, with the same certificate, is closed.
    wait_for_close(&mut live, Duration::from_secs(15));
    let received = paths(&backend);
    assert_eq!(received[0], "/live");
    assert!(
        received[1..].iter().all(|path| path == "/fresh"),
        "{received:?}"
    );
}

#[test]
fn a_reload_that_changes_the_responders_carries_no_answer_over() {
    let pki = TestPki::new();
    let responder = OcspResponder::start(pki.dir.path(), &pki.device_ca, OcspSigner::Issuer, &[]);
    pki.write("device-ca.pem", &pki.device_ca.cert_pem);
    let cert = pki.device_ca.issue(&CertRequest::client("device-no-aia"));
    responder.set_status(&cert, OcspStatus::Good);
    let old_url = responder.url();
    let override_line = format!("responders: [{{issuer: device-ca.pem, url: \"{old_url}\"}}]");
    let (backend, gateway) = start_checking(&pki, &[HARD_FAIL, &override_line], |c| c);
    assert!(admitted(&Client::new(&pki, Some(&cert)), &gateway).is_some());

    // Now asked of a responder nobody runs: the answer of the old one must not count.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    gateway.reload_replacing(&old_url, &nowhere);
    let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/moved");

    assert_eq!(
        refusal(&attempt),
        Some(AlertDescription::UnknownCA),
        "{attempt:?}"
    );
    assert!(
        gateway.log_text().contains("kept=0"),
        "{}",
        gateway.log_text()
    );
    assert_eq!(paths(&backend), ["/"]);
}

#[test]
fn a_reload_keeps_a_revocation_under_soft_fail_until_the_responder_lifts_it() {
    let pki = TestPki::new();
    let mut leaves = OcspResponder::start(pki.dir.path(), &pki.device_ca, OcspSigner::Issuer, &[]);
    let cert = listed_device(
        &pki,
        &leaves,
        "device-revoked-before-reload",
        OcspStatus::Revoked,
    );
    let good = listed_device(&pki, &leaves, "device-good-before-reload", OcspStatus::Good);
    let settings = [SOFT_FAIL, "timeout: 1s", "retry_interval: 1s"];
    let (backend, gateway) = start_checking(&pki, &settings, without_resumption);
    let revoked = Client::new(&pki, Some(&cert)).get(gateway.addr, "/");
    assert_eq!(alert_of(revoked), AlertDescription::CertificateRevoked);
    assert!(admitted(&Client::new(&pki, Some(&good)), &gateway).is_some());

    // With the responder down, soft-fail would admit a device it knows nothing of: the
    // reload must not forget what it knew.
    leaves.stop();
    gateway.reload_replacing("timeout: 1s", "timeout: 2s");
    assert!(
        gateway.log_text().contains("kept=2"),
        "{}",
        gateway.log_text()
    );
    let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/after-reload");
    assert_eq!(
        refusal(&attempt),
        Some(AlertDescription::CertificateRevoked),
        "{attempt:?}"
    );

    // The hold is released at the responder: asked again since the reload, the device
    // gets back in once the responder answers.
    leaves.set_status(&cert, OcspStatus::Good);
    leaves.restart();
    let lifted = eventually(Duration::from_secs(15), || {
        let attempt = Client::new(&pki, Some(&cert)).get(gateway.addr, "/lifted");
        attempt.is_ok_and(|response| status_of(&response) == 200)
    });
    assert!(lifted, "{}", gateway.log_text());
    assert_eq!(paths(&backend), ["/", "/lifted"]);
}

// --- Helpers -----------------------------------------------------------------------------

/// A CA certificate, PEM, bearing `target`'s subject name and public key, naming the
/// holder of `issuer_name` as its issuer, carrying the serial of `serial_of`, and signed
/// by `signer`.
fn look_alike(target: &Authority, issuer_name: &str, signer: &KeyPair, serial_of: &[u8]) -> String {
    let (_, parsed) = X509Certificate::from_der(&target.der).expect("the target parses");
    let key = SubjectPublicKeyInfo::from_der(parsed.public_key().raw).expect("its key");
    let name = common_name(&parsed);
    let forged = look_alike_with_key(&name, &key, issuer_name, signer, Some(serial_of));
    let der = pem_der(&forged);
    let (_, check) = X509Certificate::from_der(&der).expect("the forgery parses");
    assert_eq!(check.subject().as_raw(), parsed.subject().as_raw());
    assert_eq!(check.public_key().raw, parsed.public_key().raw);
    forged
}

/// A CA certificate, PEM: subject `name` with `key`, issued in `issuer_name`'s name and
/// signed by `signer`, with the serial of the certificate `serial_of` (DER), if given.
fn look_alike_with_key(
    name: &str,
    key: &impl rcgen::PublicKeyData,
    issuer_name: &str,
    signer: &KeyPair,
    serial_of: Option<&[u8]>,
) -> String {
    let mut params = ca_params(name);
    if let Some(der) = serial_of {
        let (_, cert) = X509Certificate::from_der(der).expect("the serial's certificate");
        params.serial_number = Some(SerialNumber::from_slice(cert.raw_serial()));
    }
    let issuer = Issuer::new(ca_params(issuer_name), signer);
    params.signed_by(key, &issuer).expect("a forged CA").pem()
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    let name = cert.subject().iter_common_name().next().expect("a CN");
    name.as_str().expect("a text CN").to_owned()
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
    der.to_vec()
}

/// `leaf`, presenting these intermediates (PEM) after its own certificate.
fn presenting(leaf: &IssuedCert, intermediates: &[&str]) -> IssuedCert {
    let mut sent = leaf.clone();
    sent.chain_pem = std::iter::once(leaf.cert_pem.as_str())
        .chain(intermediates.iter().copied())
        .collect();
    sent
}

/// Asserts that `leaf`, sent with `intermediates` (PEM), is refused as revoked; `label`
/// names the chain's shape in the failure.
fn refused_as_revoked(
    pki: &TestPki,
    gateway: &Gateway,
    label: &str,
    leaf: &IssuedCert,
    intermediates: &[&str],
) {
    let sent = presenting(leaf, intermediates);
    let attempt = Client::new(pki, Some(&sent)).get(gateway.addr, "/");
    assert_eq!(
        refusal(&attempt),
        Some(AlertDescription::CertificateRevoked),
        "{label}: {attempt:?}"
    );
}

/// The alert a connection was refused with; `None` when it was answered.
fn refusal(result: &Result<String, rustls::Error>) -> Option<AlertDescription> {
    match result {
        Err(rustls::Error::AlertReceived(alert)) => Some(*alert),
        Err(other) => panic!("neither answered nor refused with an alert: {other}"),
        Ok(response) => {
            assert_eq!(status_of(response), 200, "{response}");
            None
        }
    }
}

/// An HTTP server that accepts connections and never answers, holding them open.
struct Staller {
    addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Staller {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let held = Arc::new(Mutex::new(Vec::new()));
        let holder = held.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                holder.lock().expect("held").push(stream);
            }
        });
        Self { addr, held }
    }

    fn url(&self) -> String {
        format!("http://{}/stall", self.addr)
    }

    fn accepted(&self) -> usize {
        self.held.lock().expect("held").len()
    }
}
