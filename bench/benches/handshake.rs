//! The gateway's CPU per mTLS handshake, server side only: full with the verified-chain
//! cache cold and warm, and resumed from a ticket. Client and server run in memory; only
//! the time spent in the server's rustls calls is counted. Also the client-chain check
//! alone (path building, signatures, CRLs), cold and from the cache.
//!
//! Run with `cargo bench -p srrrs-edge-bench --bench handshake`.

use std::hint::black_box;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
use srrrs_edge::config;
use srrrs_edge::demo::pki::{Authority, CertRequest};
use srrrs_edge::tls::handshake_notes::{self, HandshakeNotes};
use srrrs_edge::tls::TlsPolicy;
use time::Duration as Span;

/// Writes a PKI (root, device CA, server, device, CRLs) to `dir`; returns the client
/// configuration and the device's chain.
fn pki(dir: &Path) -> (Arc<ClientConfig>, Vec<CertificateDer<'static>>) {
    let root = Authority::root("bench root");
    let device_ca = root.intermediate("bench device CA");
    let server = root.issue(&CertRequest::server(&["localhost"]));
    let device = device_ca.issue(&CertRequest::client("bench-device"));
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write("root.pem", &root.cert_pem);
    write("server.pem", &server.chain_pem);
    write("server.key", &server.key_pem);
    write("root.crl", &root.crl(&[], Span::days(1)));
    write("device-ca.crl", &device_ca.crl(&[], Span::days(1)));

    let mut roots = RootCertStore::empty();
    roots.add(root.der.clone()).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(device.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(device.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain.clone(), key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(config), chain)
}

fn policy(dir: &Path, chain_cache: usize, resumption: bool) -> TlsPolicy {
    let yaml = format!(
        "listen: [\"127.0.0.1:1\"]
ingress:
  hostname: localhost
  server_tls: {{cert_chain: server.pem, private_key: server.key}}
  transport_security:
    mode: mtls
    client_ca_cert: root.pem
    require_crl_check: true
    crl_files: [root.crl, device-ca.crl]
    chain_cache_size: {chain_cache}
  session_resumption: {{enabled: {resumption}}}
  upstream: {{backends: [\"127.0.0.1:1\"]}}
"
    );
    let loaded = config::parse(&dir.join("edge.yaml"), &yaml).unwrap();
    let mut problems = loaded.problems();
    let (_, source) = loaded.ingress_sources().remove(0);
    let policy = TlsPolicy::build(&source, &mut problems);
    assert!(problems.is_empty(), "{:?}", problems.into_error());
    policy.unwrap()
}

/// One handshake in memory; returns the time spent in the server's calls.
fn handshake(client: &Arc<ClientConfig>, server: &TlsPolicy) -> Duration {
    let mut client =
        ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut server_conn = ServerConnection::new(server.server_config.clone()).unwrap();
    let notes = Rc::new(HandshakeNotes::default());
    let mut spent = Duration::ZERO;
    let mut buffer = Vec::with_capacity(16 * 1024);
    while client.is_handshaking() || server_conn.is_handshaking() || server_conn.wants_write() {
        buffer.clear();
        while client.wants_write() {
            client.write_tls(&mut buffer).unwrap();
        }
        let started = Instant::now();
        if !buffer.is_empty() {
            let mut input = &buffer[..];
            while !input.is_empty() {
                server_conn.read_tls(&mut input).unwrap();
                handshake_notes::within(&notes, || server_conn.process_new_packets()).unwrap();
            }
        }
        let mut reply = Vec::new();
        while server_conn.wants_write() {
            server_conn.write_tls(&mut reply).unwrap();
        }
        spent += started.elapsed();
        if reply.is_empty() && !client.is_handshaking() {
            break;
        }
        let mut input = &reply[..];
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
            client.process_new_packets().unwrap();
        }
    }
    black_box(server_conn.peer_certificates().map(|chain| chain.len()));
    spent
}

fn handshakes(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (client, chain) = pki(dir.path());
    let cold = policy(dir.path(), 0, false);
    let warm = policy(dir.path(), 1024, false);
    let resuming = policy(dir.path(), 1024, true);

    let mut group = c.benchmark_group("mtls_handshake_server_cpu");
    group.bench_function("full_chain_cache_cold", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| handshake(&client, &cold)).sum())
    });
    handshake(&client, &warm);
    group.bench_function("full_chain_cache_hit", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| handshake(&client, &warm)).sum())
    });
    // The client's session cache keeps the newest tickets; each handshake uses one and
    // receives fresh ones, so every measured handshake resumes.
    handshake(&client, &resuming);
    group.bench_function("resumed", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| handshake(&client, &resuming)).sum())
    });
    group.finish();

    let (leaf, intermediates) = chain.split_first().unwrap();
    let mut group = c.benchmark_group("client_chain_check");
    for (name, policy) in [("cold", &cold), ("cached", &warm)] {
        let device = policy.device.as_ref().unwrap();
        group.bench_function(name, |b| {
            b.iter(|| black_box(device.check(leaf, intermediates, UnixTime::now()).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
