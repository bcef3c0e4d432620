//! The gateway core against the real binary: device certificates admitted and refused,
//! TLS versions, backends (echo, nginx, Unix socket, down), on both I/O drivers.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use rustls::AlertDescription;
use srrrs_edge::demo::echo::EchoBackend;
use srrrs_edge::demo::pki::{CertRequest, KeyKind};

on_both_drivers!(
    good_certificate_reaches_the_backend,
    missing_certificate_is_refused_in_mtls_mode,
    certificate_from_an_untrusted_ca_is_refused,
    revoked_certificate_is_refused_with_certificate_revoked,
    expired_certificate_is_refused_with_certificate_expired,
    optional_mode_forwards_a_client_without_certificate,
    tls_mode_asks_for_no_certificate,
    tls12_and_tls13_both_work,
    minimum_version_13_refuses_a_tls12_client,
    request_reaches_nginx_as_the_backend,
    backend_down_gives_502,
    next_backend_is_tried_when_one_is_down,
    unix_socket_backend_works,
    two_trusted_cas_both_admit_their_clients,
    certificate_of_an_issuer_without_crl_is_refused_when_crls_are_required,
    expired_crl_refuses_by_default_and_admits_with_use_stale,
    strict_sni_refuses_an_unknown_name,
    server_keys_of_every_supported_type_work,
    refusals_are_counted_by_reason,
    a_large_response_and_a_large_upload_arrive_intact,
    ipv4_and_ipv6_listeners_both_serve,
    a_der_crl_revokes_like_a_pem_one,
);

fn good_certificate_reaches_the_backend(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);

    let response = Client::new(&pki, Some(&pki.good))
        .get(gateway.addr, "/rustls")
        .expect("admitted");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("\"path\": \"/rustls\""), "{response}");

    let (cert, key) = pki.client_files("good", &pki.good);
    let url = format!("https://localhost:{}/curl", gateway.addr.port());
    let output = curl_mtls(&pki, Some((&cert, &key)), &url, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"path\": \"/curl\""));

    let paths: Vec<String> = backend.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/rustls", "/curl"]);
    let driver_sample = format!("srrrs_io_driver{{driver=\"{}\"}}", driver.flag());
    assert_eq!(gateway.metric(&driver_sample), 1.0);
    assert!(gateway
        .log_text()
        .contains(&format!("io_driver=\"{}\"", driver.flag())));
}

fn missing_certificate_is_refused_in_mtls_mode(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);

    let alert = alert_of(Client::new(&pki, None).get(gateway.addr, "/"));
    assert_eq!(alert, AlertDescription::CertificateRequired);

    let url = format!("https://localhost:{}/", gateway.addr.port());
    let output = curl_mtls(&pki, None, &url, &[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("certificate required"));
    assert!(backend.received().is_empty());
}

fn certificate_from_an_untrusted_ca_is_refused(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);
    let alert = alert_of(Client::new(&pki, Some(&pki.untrusted)).get(gateway.addr, "/"));
    assert_eq!(alert, AlertDescription::UnknownCA);
    assert!(backend.received().is_empty());
}

fn revoked_certificate_is_refused_with_certificate_revoked(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);

    let alert = alert_of(Client::new(&pki, Some(&pki.revoked)).get(gateway.addr, "/"));
    assert_eq!(alert, AlertDescription::CertificateRevoked);

    let (cert, key) = pki.client_files("revoked", &pki.revoked);
    let url = format!("https://localhost:{}/", gateway.addr.port());
    let output = curl_mtls(&pki, Some((&cert, &key)), &url, &[]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("certificate revoked"));
    assert!(backend.received().is_empty());
}

fn expired_certificate_is_refused_with_certificate_expired(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);
    let alert = alert_of(Client::new(&pki, Some(&pki.expired)).get(gateway.addr, "/"));
    assert_eq!(alert, AlertDescription::CertificateExpired);
    assert!(backend.received().is_empty());
}

fn optional_mode_forwards_a_client_without_certificate(driver: Driver) {
    let pki = TestPki::new();
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = pki
        .mtls_config(port, &[backend_addr])
        .replace("mode: mtls", "mode: optional");
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);

    let anonymous = Client::new(&pki, None)
        .get(gateway.addr, "/anonymous")
        .expect("forwarded");
    assert!(anonymous.starts_with("HTTP/1.1 200"), "{anonymous}");
    let device = Client::new(&pki, Some(&pki.good))
        .get(gateway.addr, "/device")
        .expect("forwarded");
    assert!(device.starts_with("HTTP/1.1 200"), "{device}");
    // A presented certificate is still verified.
    let alert = alert_of(Client::new(&pki, Some(&pki.revoked)).get(gateway.addr, "/revoked"));
    assert_eq!(alert, AlertDescription::CertificateRevoked);

    let paths: Vec<String> = backend.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/anonymous", "/device"]);
}

fn tls_mode_asks_for_no_certificate(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = format!(
        "listen: [\"127.0.0.1:{port}\"]
ingress:
  hostname: localhost
  server_tls: {{cert_chain: server.pem, private_key: server.key}}
  transport_security: {{mode: tls}}
  upstream: {{backends: [\"{backend_addr}\"]}}
"
    );
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let response = Client::new(&pki, None)
        .get(gateway.addr, "/")
        .expect("forwarded");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

fn tls12_and_tls13_both_work(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);

    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let client = Client::with_versions(&pki, Some(&pki.good), &[version]);
        assert_eq!(client.version(gateway.addr), Some(expected));
        let response = client.get(gateway.addr, "/").expect("admitted");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    // TLS 1.2 refusals carry the same alerts.
    let tls12 = Client::with_versions(&pki, Some(&pki.revoked), &[&rustls::version::TLS12]);
    assert_eq!(
        alert_of(tls12.get(gateway.addr, "/")),
        AlertDescription::CertificateRevoked
    );

    let (cert, key) = pki.client_files("good", &pki.good);
    let url = format!("https://localhost:{}/", gateway.addr.port());
    for flag in ["--tlsv1.2 --tls-max 1.2", "--tlsv1.3"] {
        let flags: Vec<&str> = flag.split(' ').collect();
        let output = curl_mtls(&pki, Some((&cert, &key)), &url, &flags);
        assert!(
            output.status.success(),
            "{flag}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(backend.received().len(), 4);
}

fn minimum_version_13_refuses_a_tls12_client(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = pki.mtls_config(port, &[backend_addr]).replace(
        "private_key: server.key}",
        "private_key: server.key, min_version: \"1.3\"}",
    );
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);

    let tls12 = Client::with_versions(&pki, Some(&pki.good), &[&rustls::version::TLS12]);
    assert!(tls12.get(gateway.addr, "/").is_err());
    let tls13 = Client::with_versions(&pki, Some(&pki.good), &[&rustls::version::TLS13]);
    assert!(tls13
        .get(gateway.addr, "/")
        .expect("admitted")
        .starts_with("HTTP/1.1 200"));
}

fn request_reaches_nginx_as_the_backend(driver: Driver) {
    let pki = TestPki::new();
    let nginx = Nginx::start(pki.dir.path());
    let port = free_port();
    let config = pki.mtls_config(port, &[nginx.addr.to_string()]);
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);

    let (cert, key) = pki.client_files("good", &pki.good);
    let url = format!("https://localhost:{port}/through/the/gateway");
    let output = curl_mtls(&pki, Some((&cert, &key)), &url, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "nginx saw GET /through/the/gateway\n"
    );
    drop(gateway);
}

fn backend_down_gives_502(driver: Driver) {
    let pki = TestPki::new();
    let port = free_port();
    let dead = format!("127.0.0.1:{}", free_port());
    let admin = free_port();
    let config = pki.mtls_config(port, &[dead]);
    let gateway = Gateway::start_with_admin(pki.dir.path(), &config, port, Some(admin), driver);

    let response = Client::new(&pki, Some(&pki.good))
        .get(gateway.addr, "/")
        .expect("a response");
    assert!(
        response.starts_with("HTTP/1.1 502 Bad Gateway"),
        "{response}"
    );
    assert!(response.contains("\"error\":\"bad_gateway\""), "{response}");
    assert_eq!(
        gateway.metric("srrrs_gateway_responses_total{status=\"502\"}"),
        1.0
    );

    let (cert, key) = pki.client_files("good", &pki.good);
    let url = format!("https://localhost:{port}/");
    let output = curl_mtls(
        &pki,
        Some((&cert, &key)),
        &url,
        &["--write-out", "%{http_code}"],
    );
    assert!(String::from_utf8_lossy(&output.stdout).ends_with("502"));
}

fn next_backend_is_tried_when_one_is_down(driver: Driver) {
    let pki = TestPki::new();
    let (backend, backend_addr) = echo_backend();
    let dead = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let config = pki.mtls_config(port, &[dead, backend_addr]);
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);

    let client = Client::new(&pki, Some(&pki.good));
    for _ in 0..4 {
        let response = client.get(gateway.addr, "/").expect("admitted");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    assert_eq!(backend.received().len(), 4);
}

fn unix_socket_backend_works(driver: Driver) {
    let pki = TestPki::new();
    let socket = pki.path("backend.sock");
    let backend = EchoBackend::start_unix(&socket).expect("unix backend");
    let port = free_port();
    let config = pki.mtls_config(port, &[format!("unix:{}", socket.display())]);
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);

    let response = Client::new(&pki, Some(&pki.good))
        .get(gateway.addr, "/over-unix")
        .expect("admitted");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(backend.received()[0].path, "/over-unix");
}

fn two_trusted_cas_both_admit_their_clients(driver: Driver) {
    let pki = TestPki::new();
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = pki
        .mtls_config(port, &[backend_addr])
        .replace(
            "client_ca_cert: device-root.pem",
            "client_ca_cert: [device-root.pem, second-root.pem]",
        )
        .replace("require_crl_check: true", "require_crl_check: false");
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);

    for cert in [&pki.good, &pki.second_ca_client] {
        let response = Client::new(&pki, Some(cert))
            .get(gateway.addr, "/")
            .expect("admitted");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    // CRLs still apply to the issuers that have one.
    let alert = alert_of(Client::new(&pki, Some(&pki.revoked)).get(gateway.addr, "/"));
    assert_eq!(alert, AlertDescription::CertificateRevoked);
    assert_eq!(backend.received().len(), 2);
}

fn certificate_of_an_issuer_without_crl_is_refused_when_crls_are_required(driver: Driver) {
    let pki = TestPki::new();
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let admin = free_port();
    // The second root is trusted, but no CRL of it is loaded.
    let config = pki.mtls_config(port, &[backend_addr]).replace(
        "client_ca_cert: device-root.pem",
        "client_ca_cert: [device-root.pem, second-root.pem]",
    );
    let gateway = Gateway::start_with_admin(pki.dir.path(), &config, port, Some(admin), driver);

    let result = Client::new(&pki, Some(&pki.second_ca_client)).get(gateway.addr, "/");
    assert_eq!(alert_of(result), AlertDescription::UnknownCA);
    assert!(backend.received().is_empty());
    // The client sees the alert a moment before the gateway counts it.
    let sample = "srrrs_tls_handshake_failures_total{reason=\"revocation_unknown\"}";
    assert!(eventually(Duration::from_secs(5), || gateway
        .metric(sample)
        == 1.0));
}

fn expired_crl_refuses_by_default_and_admits_with_use_stale(driver: Driver) {
    let pki = TestPki::new();
    let now = time::OffsetDateTime::now_utc();
    let stale = pki.device_ca.crl_between(
        &[&pki.revoked],
        now - time::Duration::days(10),
        now - time::Duration::days(3),
    );
    pki.write("device-ca.crl", &stale);
    let (_backend, backend_addr) = echo_backend();

    let port = free_port();
    let config = pki.mtls_config(port, std::slice::from_ref(&backend_addr));
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let alert = alert_of(Client::new(&pki, Some(&pki.good)).get(gateway.addr, "/"));
    assert_eq!(alert, AlertDescription::UnknownCA);
    assert!(gateway
        .log_text()
        .contains("CN=test device CA,O=srrrs dev PKI expired at"));
    drop(gateway);

    let port = free_port();
    let config = pki.mtls_config(port, &[backend_addr]).replace(
        "require_crl_check: true",
        "require_crl_check: true\n    expired_crl: use_stale",
    );
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let response = Client::new(&pki, Some(&pki.good))
        .get(gateway.addr, "/")
        .expect("admitted");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // The stale CRL still revokes what it lists.
    let alert = alert_of(Client::new(&pki, Some(&pki.revoked)).get(gateway.addr, "/"));
    assert_eq!(alert, AlertDescription::CertificateRevoked);
}

fn strict_sni_refuses_an_unknown_name(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = pki.mtls_config(port, &[backend_addr]).replace(
        "hostname: localhost",
        "hostname: localhost\n  strict_sni: true",
    );
    let server = pki
        .server_root
        .issue(&CertRequest::server(&["localhost", "other.example"]));
    pki.write("server.pem", &server.chain_pem);
    pki.write("server.key", &server.key_pem);
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);

    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let other = Client::for_server(
        &pki.server_root,
        Some(&pki.good),
        &versions,
        "other.example",
    );
    assert_eq!(
        alert_of(other.get(gateway.addr, "/")),
        AlertDescription::UnrecognisedName
    );
    let right = Client::for_server(&pki.server_root, Some(&pki.good), &versions, "LOCALHOST");
    assert!(right
        .get(gateway.addr, "/")
        .expect("admitted")
        .starts_with("HTTP/1.1 200"));
}

fn server_keys_of_every_supported_type_work(driver: Driver) {
    for kind in [
        KeyKind::EcdsaP384,
        KeyKind::Rsa2048,
        KeyKind::Ed25519,
        KeyKind::EcdsaP256,
    ] {
        let pki = TestPki::new();
        let server = pki
            .server_root
            .issue(&CertRequest::server(&["localhost"]).key(kind));
        pki.write("server.pem", &server.chain_pem);
        pki.write("server.key", &server.key_pem);
        let (_backend, backend_addr) = echo_backend();
        let port = free_port();
        let gateway = Gateway::start(
            pki.dir.path(),
            &pki.mtls_config(port, &[backend_addr]),
            port,
            driver,
        );
        let response = Client::new(&pki, Some(&pki.good))
            .get(gateway.addr, "/")
            .expect("admitted");
        assert!(response.starts_with("HTTP/1.1 200"), "{kind:?}: {response}");
    }
}

fn refusals_are_counted_by_reason(driver: Driver) {
    let (pki, _backend, gateway) = start_mtls(driver);
    let _ = Client::new(&pki, Some(&pki.revoked)).get(gateway.addr, "/");
    let _ = Client::new(&pki, Some(&pki.revoked)).get(gateway.addr, "/");
    let _ = Client::new(&pki, None).get(gateway.addr, "/");
    let _ = Client::new(&pki, Some(&pki.untrusted)).get(gateway.addr, "/");
    let _ = Client::new(&pki, Some(&pki.expired)).get(gateway.addr, "/");

    let failures = |reason: &str| {
        gateway.metric(&format!(
            "srrrs_tls_handshake_failures_total{{reason=\"{reason}\"}}"
        ))
    };
    let expected = [
        ("certificate_revoked", 2.0),
        ("certificate_required", 1.0),
        ("unknown_ca", 1.0),
        ("certificate_expired", 1.0),
    ];
    // The client sees the alert a moment before the gateway counts it.
    let counted = eventually(Duration::from_secs(5), || {
        expected
            .iter()
            .all(|(reason, count)| failures(reason) == *count)
    });
    assert!(counted, "{}", gateway.metrics());
    let log = gateway.log_text();
    let revoked_fingerprint = srrrs_edge::tls::identity::fingerprint(&pki.revoked.der);
    assert!(
        log.contains(&revoked_fingerprint),
        "the refusal log names the certificate's SHA-256"
    );
}

fn a_large_response_and_a_large_upload_arrive_intact(driver: Driver) {
    let (pki, backend, gateway) = start_mtls(driver);
    let mut stream = Client::new(&pki, Some(&pki.good))
        .connect(gateway.addr)
        .expect("connect");
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    use std::io::Write;
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(&body).expect("body");
    let response = read_to_end(&mut stream).expect("response");
    assert!(response.contains("\"body_bytes\": 3000000"), "{response}");
    assert_eq!(backend.received()[0].body, body);
}

#[test]
fn check_names_the_field_and_the_reason() {
    let pki = TestPki::new();
    let config = pki
        .mtls_config(8443, &["127.0.0.1:1".into(), "nowhere".into()])
        .replace(
            "client_ca_cert: device-root.pem",
            "client_ca_cert: missing-ca.pem",
        )
        .replace("mode: mtls", "mode: mtls\n    colour: blue");
    let path = pki.write("broken.yaml", &config);
    let (code, stderr) = check_config(&path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("ingress.transport_security.colour: unknown field"),
        "{stderr}"
    );

    let fixed = config.replace("\n    colour: blue", "");
    std::fs::write(&path, fixed).expect("rewrite");
    let (code, stderr) = check_config(&path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("broken.yaml:8: ingress.transport_security.client_ca_cert:"),
        "{stderr}"
    );
    assert!(stderr.contains("missing-ca.pem: No such file"), "{stderr}");
    assert!(stderr.contains("ingress.upstream.backends[1]:"), "{stderr}");
    assert!(
        stderr.contains("expected host:port or unix:/path"),
        "{stderr}"
    );
}

#[test]
fn check_accepts_a_good_config() {
    let pki = TestPki::new();
    let path = pki.write("good.yaml", &pki.mtls_config(8443, &["127.0.0.1:1".into()]));
    let (code, stderr) = check_config(&path);
    assert_eq!(code, Some(0), "{stderr}");
    // Every trusted CA has its CRL: nothing to warn about.
    assert!(!stderr.contains("no CRL from"), "{stderr}");
}

#[test]
fn run_with_a_missing_certificate_file_exits_with_a_clear_message() {
    let pki = TestPki::new();
    let config = pki
        .mtls_config(free_port(), &["127.0.0.1:1".into()])
        .replace("server.pem", "gone.pem");
    let path = pki.write("missing.yaml", &config);
    let output = Command::new(gateway_binary())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.status.signal().is_none());
    assert!(
        stderr.contains("ingress.server_tls.cert_chain:") && stderr.contains("gone.pem"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_design_brief_example_loads_with_only_what_it_lacks_added() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/brief.yaml");
    let loaded = srrrs_edge::config::load(&path).expect("the brief's example parses");
    let ingress = loaded.config.ingress.as_ref().expect("one ingress");
    assert_eq!(ingress.hostname, "api.prod.srrrs.internal");
    let auth = ingress.application_auth.as_ref().expect("application_auth");
    assert_eq!(auth.required_claims["department"], "engineering");
    assert_eq!(auth.required_claims["clearance_level"], "high");
    let reference = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/reference.yaml");
    srrrs_edge::config::load(&reference).expect("the reference config parses");
}

#[test]
fn a_second_instance_cannot_take_the_same_port() {
    let (pki, _backend, gateway) = start_mtls(Driver::IoUring);
    let config = pki.mtls_config(gateway.addr.port(), &["127.0.0.1:1".into()]);
    let path = pki.write("second.yaml", &config);
    let output = Command::new(gateway_binary())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Address already in use"), "{stderr}");
}

#[test]
fn check_refuses_limits_that_would_refuse_everything_and_warns_about_ignored_settings() {
    let pki = TestPki::new();
    let config = pki.mtls_config(8443, &["127.0.0.1:1".into()])
        + "limits: {handshake_timeout: 0s, max_headers: 0}\n";
    let path = pki.write("limits.yaml", &config);
    let (code, stderr) = check_config(&path);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("limits.handshake_timeout: must be longer than zero"),
        "{stderr}"
    );
    assert!(
        stderr.contains("limits.max_headers: must be between 1 and 10000"),
        "{stderr}"
    );

    let ignored = pki
        .mtls_config(8443, &["127.0.0.1:1".into()])
        .replace("mode: mtls", "mode: tls")
        .replace(
            "  upstream:",
            "  application_auth: {type: none, issuer: \"https://x\"}\n  upstream:",
        );
    let path = pki.write("ignored.yaml", &ignored);
    let (code, stderr) = check_config(&path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("ingress.transport_security.mode: is tls"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ingress.application_auth.type: is none"),
        "{stderr}"
    );
}

#[test]
fn check_warns_when_a_trusted_ca_has_no_crl_and_crls_are_required() {
    let pki = TestPki::new();
    let config = pki.mtls_config(8443, &["127.0.0.1:1".into()]).replace(
        "crl_files: [device-root.crl, device-ca.crl]",
        "crl_files: [device-ca.crl]",
    );
    let path = pki.write("no-root-crl.yaml", &config);
    let (code, stderr) = check_config(&path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("no CRL from the trusted CA") && stderr.contains("test device root"),
        "{stderr}"
    );
}

fn ipv4_and_ipv6_listeners_both_serve(driver: Driver) {
    let pki = TestPki::new();
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = pki.mtls_config(port, &[backend_addr]).replace(
        &format!("listen: [\"127.0.0.1:{port}\"]"),
        &format!("listen: [\"127.0.0.1:{port}\", \"[::1]:{port}\"]"),
    );
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let client = Client::new(&pki, Some(&pki.good));
    let v6: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
    for addr in [gateway.addr, v6] {
        let response = client.get(addr, "/").expect("admitted");
        assert!(response.starts_with("HTTP/1.1 200"), "{addr}: {response}");
    }
    let forwarded: Vec<String> = backend
        .received()
        .iter()
        .filter_map(|r| r.header("x-forwarded-for").map(str::to_owned))
        .collect();
    assert_eq!(forwarded, ["127.0.0.1", "::1"]);
}

fn a_der_crl_revokes_like_a_pem_one(driver: Driver) {
    use rustls::pki_types::pem::PemObject;
    let pki = TestPki::new();
    let pem = std::fs::read(pki.path("device-ca.crl")).expect("PEM CRL");
    let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(&pem).expect("DER");
    std::fs::write(pki.path("device-ca.crl.der"), der.as_ref()).expect("write DER");
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = pki
        .mtls_config(port, &[backend_addr])
        .replace("device-ca.crl]", "device-ca.crl.der]");
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);

    let alert = alert_of(Client::new(&pki, Some(&pki.revoked)).get(gateway.addr, "/"));
    assert_eq!(alert, AlertDescription::CertificateRevoked);
    assert!(Client::new(&pki, Some(&pki.good))
        .get(gateway.addr, "/")
        .expect("admitted")
        .starts_with("HTTP/1.1 200"));
    assert_eq!(backend.received().len(), 1);
}

/// The design uses aws-lc-rs only. `ring` stands in Cargo.lock (rustls-webpki names it
/// through the weak feature `ring?/alloc`, which Cargo locks whether or not it is
/// enabled), but it must never be built into the gateway.
#[test]
fn ring_is_not_built_into_the_gateway() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "srrrs-edge",
            "-e",
            "normal,build",
            "-i",
            "ring",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.trim().is_empty(),
        "ring is in the gateway's build:\n{stdout}"
    );
    assert!(stderr.contains("nothing to print"), "{stderr}");

    // Cargo.lock names ring all the same (rustls-webpki's `alloc` feature asks for
    // `ring?/alloc`, and a weak feature puts the optional crate in the lock): the binary
    // itself must hold none of ring's symbols, which all begin `ring_core_`.
    let binary = std::fs::read(gateway_binary()).expect("the gateway binary");
    let symbols = String::from_utf8_lossy(&binary);
    assert!(
        !symbols.contains("ring_core_"),
        "ring's code is linked into the gateway"
    );
    // aws-lc's symbols are there to be seen, so the absence above means something.
    assert!(symbols.contains("aws_lc_"), "the binary shows no symbols");
}
