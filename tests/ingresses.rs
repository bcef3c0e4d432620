//! Several ingresses told apart by SNI, each with its own certificate, device policy and
//! backends; and the whole configuration reloaded while the gateway runs: new
//! connections get the new ingresses, requests in flight finish, a bad file keeps what
//! is in force, and a client CA bundle replaced on disk is trusted from then on.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rustls::AlertDescription;
use srrrs_edge::demo::pki::{CertRequest, IssuedCert};

on_both_drivers!(each_sni_reaches_its_own_ingress_and_no_other);

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A client of the test PKI that presents `device` and names `sni`.
fn client_for(pki: &TestPki, device: &IssuedCert, sni: &str) -> Client {
    Client::for_server(&pki.server_root, Some(device), VERSIONS, sni)
}

/// Two ingresses: `api.test` (strict SNI, devices of the test device root, CRLs) to
/// `api_backend`, and `*.ops.test` (devices of the second root) to `ops_backend`.
fn two_ingresses(pki: &TestPki, port: u16, api_backend: &str, ops_backend: &str) -> String {
    for (name, hostname) in [("api", "api.test"), ("ops", "*.ops.test")] {
        let server = pki.server_root.issue(&CertRequest::server(&[hostname]));
        pki.write(&format!("{name}.pem"), &server.chain_pem);
        pki.write(&format!("{name}.key"), &server.key_pem);
    }
    format!(
        "listen: [\"127.0.0.1:{port}\"]
runtime: {{workers: 2}}
ingresses:
  - hostname: api.test
    strict_sni: true
    server_tls: {{cert_chain: api.pem, private_key: api.key}}
    transport_security:
      mode: mtls
      client_ca_cert: device-root.pem
      require_crl_check: true
      crl_files: [device-root.crl, device-ca.crl]
    upstream: {{backends: [\"{api_backend}\"]}}
  - hostname: \"*.ops.test\"
    server_tls: {{cert_chain: ops.pem, private_key: ops.key}}
    transport_security: {{mode: mtls, client_ca_cert: second-root.pem}}
    upstream: {{backends: [\"{ops_backend}\"]}}
"
    )
}

fn each_sni_reaches_its_own_ingress_and_no_other(driver: Driver) {
    let pki = TestPki::new();
    let (api, api_addr) = echo_backend();
    let (ops, ops_addr) = echo_backend();
    let port = free_port();
    let config = two_ingresses(&pki, port, &api_addr, &ops_addr);
    let gateway =
        Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);

    // Each name gets its own certificate (the clients check it against the name), its own
    // device CA and its own backend.
    let response = client_for(&pki, &pki.good, "api.test").get(gateway.addr, "/api");
    assert_eq!(status_of(&response.expect("api.test")), 200);
    let ops_client = client_for(&pki, &pki.second_ca_client, "db.ops.test");
    assert_eq!(
        status_of(&ops_client.get(gateway.addr, "/ops").expect("ops")),
        200
    );
    let paths = |backend: &srrrs_edge::demo::echo::EchoBackend| -> Vec<String> {
        backend
            .received()
            .into_iter()
            .map(|seen| seen.path)
            .collect()
    };
    assert_eq!(paths(&api), ["/api"]);
    assert_eq!(paths(&ops), ["/ops"]);

    // A device trusted by one ingress is a stranger to the other.
    let crossed = [
        (&pki.good, "db.ops.test"),
        (&pki.second_ca_client, "api.test"),
    ];
    for (device, sni) in crossed {
        let refused = client_for(&pki, device, sni).get(gateway.addr, "/crossed");
        assert_eq!(alert_of(refused), AlertDescription::UnknownCA, "{sni}");
    }
    // The revoked device is refused by the ingress whose CRLs say so.
    let revoked = client_for(&pki, &pki.revoked, "api.test").get(gateway.addr, "/revoked");
    assert_eq!(alert_of(revoked), AlertDescription::CertificateRevoked);

    // A name no ingress serves falls to the first, which is strict: unrecognized_name.
    // So do a name two labels under the wildcard, and a client that sends no SNI.
    for sni in ["other.test", "a.b.ops.test", "127.0.0.1"] {
        let refused = client_for(&pki, &pki.good, sni).get(gateway.addr, "/unknown");
        assert_eq!(
            alert_of(refused),
            AlertDescription::UnrecognisedName,
            "{sni}"
        );
    }
    assert_eq!(paths(&api), ["/api"]);
    assert_eq!(paths(&ops), ["/ops"]);

    // Backends are reported per ingress.
    let metrics = gateway.metrics();
    for (backend, ingress) in [(&api_addr, "api.test"), (&ops_addr, "*.ops.test")] {
        let sample = format!("srrrs_backend_up{{backend=\"{backend}\",ingress=\"{ingress}\"}} 1");
        assert!(
            metrics.contains(&sample),
            "{sample} missing from:\n{metrics}"
        );
    }
}

#[test]
fn both_ingress_forms_and_a_hostname_twice_are_refused_with_their_fields() {
    let pki = TestPki::new();
    let (_backend, addr) = echo_backend();
    let port = free_port();
    let mut config = two_ingresses(&pki, port, &addr, &addr);
    config = config.replace("*.ops.test", "API.test");
    config = config.replace("ops.pem", "missing.pem");
    config.push_str(&format!(
        "ingress:\n  hostname: x\n  server_tls: {{cert_chain: api.pem, private_key: api.key}}\n  \
         transport_security: {{mode: tls}}\n  upstream: {{backends: [\"{addr}\"]}}\n"
    ));
    let path = pki.write("bad.yaml", &config);
    let (code, stderr) = check_config(&path);
    assert_eq!(code, Some(1), "{stderr}");
    for expected in [
        "ingresses: give either ingress (one) or ingresses (a list), not both",
        "ingresses[1].hostname: api.test is the hostname of an earlier ingress",
        "ingresses[1].server_tls.cert_chain",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from:\n{stderr}"
        );
    }
}

/// The default test config, with `backend`.
fn single(pki: &TestPki, port: u16, backend: &str) -> String {
    pki.mtls_config(port, &[backend.to_owned()])
}

#[test]
fn a_changed_config_file_serves_new_connections_while_old_ones_finish_their_request() {
    let pki = TestPki::new();
    // Held until the new file is in force: noticing a change takes the reload thread
    // a poll or two, which a fixed delay would race.
    let slow = SlowBackend::start(Duration::from_secs(60));
    let (fresh, fresh_addr) = echo_backend();
    let port = free_port();
    let config = single(&pki, port, &slow.addr);
    let gateway = Gateway::start_with_admin(
        pki.dir.path(),
        &config,
        port,
        Some(free_port()),
        Driver::IoUring,
    );
    let client = Client::new(&pki, Some(&pki.good));
    let stable = || (gateway.threads(), gateway.metric("srrrs_connections_open"));
    let mut baseline = stable();
    assert!(eventually(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = stable();
        std::mem::replace(&mut baseline, now) == now && now.1 == 0.0
    }));
    let threads = baseline.0;

    // A kept-alive connection idle between requests, and one with a slow request in
    // flight when the file changes.
    let mut idle = client.connect(gateway.addr).expect("handshake");
    send_request(&mut idle, "/before", &[]).expect("send");
    assert_eq!(status_of(&read_one_response(&mut idle)), 200);
    let mut busy = client.connect(gateway.addr).expect("handshake");
    send_request(&mut busy, "/slow-in-flight", &[]).expect("send");
    assert!(eventually(Duration::from_secs(5), || slow
        .started
        .load(Ordering::SeqCst)
        == 1));

    // No SIGHUP: the file's change is enough.
    gateway.replace_config(&single(&pki, port, &fresh_addr));
    assert!(
        eventually(Duration::from_secs(10), || {
            let response = client.get(gateway.addr, "/after").expect("admitted");
            assert_eq!(status_of(&response), 200, "{response}");
            !fresh.received().is_empty()
        }),
        "new connections never reached the new backend:\n{}",
        gateway.log_text()
    );
    assert!(gateway.log_text().contains("configuration reloaded"));

    // The request in flight finishes on the old backend, and its connection then closes.
    slow.release();
    let last = read_last_response(&mut busy);
    assert!(last.ends_with("done\n"), "{last}");
    // The idle one is closed without a byte.
    assert_closed_silently(&mut idle, Duration::from_secs(5));
    assert_eq!(slow.started.load(Ordering::SeqCst), 1);

    // Once the old ingress has no connection left, the threads that kept it fresh stop.
    assert!(
        eventually(Duration::from_secs(10), || gateway.threads() == threads),
        "threads {threads} -> {}:\n{}",
        gateway.threads(),
        gateway.holdings()
    );
}

#[test]
fn a_broken_config_keeps_the_ingresses_in_force_until_a_good_one_arrives() {
    let pki = TestPki::new();
    let (first, first_addr) = echo_backend();
    let (second, second_addr) = echo_backend();
    let port = free_port();
    let gateway = Gateway::start(
        pki.dir.path(),
        &single(&pki, port, &first_addr),
        port,
        Driver::IoUring,
    );
    let client = Client::new(&pki, Some(&pki.good));

    // A file that names a certificate that is not there, and then one that changes a
    // setting only a restart can change: neither stops the gateway.
    let broken = single(&pki, port, &second_addr).replace("server.pem", "gone.pem");
    gateway.replace_config(&broken);
    assert!(eventually(Duration::from_secs(10), || gateway
        .log_text()
        .contains("configuration reload failed")));
    let log = gateway.log_text();
    assert!(log.contains("ingress.server_tls.cert_chain"), "{log}");
    gateway.reload();
    let response = client.get(gateway.addr, "/still-first").expect("admitted");
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(first.received().len(), 1);
    assert!(second.received().is_empty());

    let restart_only = single(&pki, port, &second_addr).replace("workers: 2", "workers: 3");
    gateway.replace_config(&restart_only);
    assert!(eventually(Duration::from_secs(10), || {
        client.get(gateway.addr, "/second").expect("admitted");
        !second.received().is_empty()
    }));
    let log = gateway.log_text();
    assert!(log.contains("change only at a restart"), "{log}");
    assert!(log.contains("runtime"), "{log}");
}

#[test]
fn a_replaced_client_ca_bundle_is_trusted_by_new_handshakes() {
    let pki = TestPki::new();
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = format!(
        "listen: [\"127.0.0.1:{port}\"]
runtime: {{workers: 2}}
ingress:
  hostname: localhost
  server_tls: {{cert_chain: server.pem, private_key: server.key}}
  transport_security: {{mode: mtls, client_ca_cert: trusted.pem}}
  upstream: {{backends: [\"{backend_addr}\"]}}
"
    );
    pki.write("trusted.pem", &pki.device_root.cert_pem);
    let gateway = Gateway::start(pki.dir.path(), &config, port, Driver::IoUring);
    let old_device = Client::new(&pki, Some(&pki.good));
    let new_device = Client::new(&pki, Some(&pki.second_ca_client));
    assert_eq!(
        status_of(&old_device.get(gateway.addr, "/old").expect("old")),
        200
    );
    let refused = new_device.get(gateway.addr, "/new");
    assert_eq!(alert_of(refused), AlertDescription::UnknownCA);

    // The CA rotation: the bundle now holds only the second root.
    let staged = pki.write("trusted.pem.new", &pki.second_root.cert_pem);
    std::fs::rename(staged, pki.path("trusted.pem")).expect("replace bundle");
    assert!(
        eventually(Duration::from_secs(10), || new_device
            .get(gateway.addr, "/new")
            .is_ok_and(|response| status_of(&response) == 200)),
        "{}",
        gateway.log_text()
    );
    let refused = old_device.get(gateway.addr, "/old-again");
    assert_eq!(alert_of(refused), AlertDescription::UnknownCA);
    let paths: Vec<String> = backend.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/old", "/new"]);
}
