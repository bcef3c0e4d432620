//! What the OCSP tests share: their metrics and policies, devices whose AIA names a
//! responder, gateways checking client certificates with OCSP or stapling the server
//! certificate's answer, and what `openssl s_client -status` sees.

use std::process::Stdio;

use rustls::HandshakeKind;
use srrrs_edge::demo::echo::EchoBackend;
use srrrs_edge::demo::pki::{CertRequest, IssuedCert};

use super::*;

pub const SOFT_FAIL_ADMISSIONS: &str =
    "srrrs_ocsp_soft_fail_admissions_total{ingress=\"localhost\"}";
pub const NO_ANSWER: &str = "srrrs_ocsp_no_answer_total{ingress=\"localhost\"}";
pub const STAPLE: &str = "srrrs_ocsp_staple{ingress=\"localhost\"}";
pub const STAPLE_FAILURES: &str = "srrrs_ocsp_staple_fetch_failures_total{ingress=\"localhost\"}";

pub const HARD_FAIL: &str = "policy: hard-fail";
pub const SOFT_FAIL: &str = "policy: soft-fail";

/// The device CA's certificate, and a responder for the device root that knows it as
/// good; the OCSP settings that ask it about the device CA under the `chain` scope.
pub fn root_responder(pki: &TestPki) -> (IssuedCert, OcspResponder, String) {
    let intermediate = pki.device_ca.certificate();
    let responder = OcspResponder::start(
        pki.dir.path(),
        &pki.device_root,
        OcspSigner::Issuer,
        &[&intermediate],
    );
    let override_line = format!(
        "responders: [{{issuer: device-root.pem, url: \"{}\"}}]",
        responder.url()
    );
    (intermediate, responder, override_line)
}

/// A device certificate whose AIA names `url` as its OCSP responder.
pub fn device(pki: &TestPki, name: &str, url: &str) -> IssuedCert {
    pki.device_ca
        .issue(&CertRequest::client(name).ocsp_url(url))
}

/// A device certificate naming `responder` in its AIA, listed there with `status`.
pub fn listed_device(
    pki: &TestPki,
    responder: &OcspResponder,
    name: &str,
    status: OcspStatus,
) -> IssuedCert {
    let cert = device(pki, name, &responder.url());
    responder.set_status(&cert, status);
    cert
}

/// The gateway on io_uring, checking client certificates with OCSP only (no CRLs).
pub fn start_checking(
    pki: &TestPki,
    settings: &[&str],
    edit: impl FnOnce(String) -> String,
) -> (EchoBackend, Gateway) {
    start_checking_on(pki, Driver::IoUring, settings, edit)
}

/// The default mTLS config, its CRLs replaced by an `ocsp` block of `settings`, as
/// `edit` changes it further.
pub fn start_checking_on(
    pki: &TestPki,
    driver: Driver,
    settings: &[&str],
    edit: impl FnOnce(String) -> String,
) -> (EchoBackend, Gateway) {
    start_edited(pki, driver, |config| edit(with_ocsp(config, settings)))
}

/// `config` (the default mTLS config) with its CRLs replaced by an `ocsp` block of
/// `settings`.
pub fn with_ocsp(config: String, settings: &[&str]) -> String {
    let block: String = settings
        .iter()
        .map(|line| format!("      {line}\n"))
        .collect();
    config.replace(
        "    require_crl_check: true\n    crl_files: [device-root.crl, device-ca.crl]\n",
        &format!("    require_crl_check: false\n    ocsp:\n{block}"),
    )
}

pub fn without_resumption(config: String) -> String {
    config.replace(
        "  upstream:",
        "  session_resumption: {enabled: false}\n  upstream:",
    )
}

/// A server certificate for localhost naming `aia_url` as its OCSP responder; its chain
/// (leaf, then the root that issued it) and key are written as `stapled-server.pem` and
/// `stapled-server.key`.
pub fn stapled_server(pki: &TestPki, aia_url: &str) -> IssuedCert {
    let request = CertRequest::server(&["localhost", "127.0.0.1"]).ocsp_url(aia_url);
    let server = pki.server_root.issue(&request);
    let chain = format!("{}{}", server.cert_pem, pki.server_root.cert_pem);
    pki.write("stapled-server.pem", &chain);
    pki.write("stapled-server.key", &server.key_pem);
    server
}

/// The default mTLS config (CRLs, no client OCSP) serving the stapled server certificate,
/// asking `responder` for its staple when given.
pub fn start_stapling(pki: &TestPki, responder: Option<&str>) -> (EchoBackend, Gateway) {
    let explicit = responder
        .map(|url| format!(", ocsp_responder: \"{url}\""))
        .unwrap_or_default();
    let server_tls = format!(
        "server_tls: {{cert_chain: stapled-server.pem, private_key: stapled-server.key, \
         ocsp_stapling: true{explicit}}}"
    );
    start_edited(pki, Driver::IoUring, |config| {
        config.replace(
            "server_tls: {cert_chain: server.pem, private_key: server.key}",
            &server_tls,
        )
    })
}

/// One request on a new connection, which must be answered 200: how its session began.
pub fn admitted(client: &Client, gateway: &Gateway) -> Option<HandshakeKind> {
    let mut stream = client.connect(gateway.addr).expect("handshake");
    send_request(&mut stream, "/", &[("connection", "close")]).expect("send");
    let response = read_to_end(&mut stream).expect("response");
    assert_eq!(status_of(&response), 200, "{response}");
    stream.conn.handshake_kind()
}

/// What `openssl s_client -status` reports of a handshake with the gateway, presenting
/// the test PKI's good device.
pub fn s_client_status(pki: &TestPki, gateway: &Gateway) -> String {
    let (cert, key) = pki.client_files("good", &pki.good);
    let connect = format!("127.0.0.1:{}", gateway.addr.port());
    let output = openssl_s_client(pki, &cert, &key, &connect)
        .arg("-status")
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// Asserts that the gateway says it staples nothing, and that a handshake gets no staple.
pub fn assert_nothing_stapled(pki: &TestPki, gateway: &Gateway) {
    assert_eq!(gateway.metric_or_zero(STAPLE), 0.0);
    let report = s_client_status(pki, gateway);
    assert!(
        report.contains("OCSP response: no response sent"),
        "{report}"
    );
}
