//! The fuzzers' findings as regression tests: every input of the checked-in corpus
//! (`fuzz/corpus/<target>/`) and every crash reproducer (`fuzz/artifacts/<target>/`)
//! goes through the same harness as the fuzz target, `srrrs_edge::fuzzing`. A corpus
//! folder that is missing or empty fails, so that these tests cannot pass vacuously.
//!
//! The seed inputs the corpus grew from are written by the ignored test at the bottom
//! (`fuzz/seeds.sh` runs it).

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use srrrs_edge::config::ProxyProtocolVersion;
use srrrs_edge::fuzzing;
use srrrs_edge::upstream::proxy_protocol::{self, ClientFacts};

#[test]
fn every_request_head_in_the_corpus_keeps_its_invariants() {
    replay("request_head");
}

#[test]
fn every_token_in_the_corpus_gets_only_the_verdict_it_deserves() {
    replay("token");
}

#[test]
fn every_proxy_header_in_the_corpus_keeps_its_invariants() {
    replay("proxy_header");
}

#[test]
fn every_config_in_the_corpus_is_refused_or_built_without_a_panic() {
    replay("config");
}

#[test]
fn every_seed_input_keeps_its_invariants() {
    for (target, name, input) in seeds() {
        let harness = fuzzing::harness(target).expect("a known target");
        let outcome = catch_unwind(|| harness(&input));
        assert!(outcome.is_ok(), "{target} seed {name}");
    }
}

/// Writes the seed inputs into `fuzz/corpus/<target>/seed-<name>`.
#[test]
#[ignore = "writes the seed corpus; run by fuzz/seeds.sh"]
fn write_the_seed_inputs() {
    for (target, name, input) in seeds() {
        let folder = fuzz_folder("corpus").join(target);
        std::fs::create_dir_all(&folder).expect("the corpus folder");
        std::fs::write(folder.join(format!("seed-{name}")), input).expect("a seed file");
    }
}

/// Runs every corpus input and reproducer of `target` through its harness, and lists
/// every one that panicked.
fn replay(target: &str) {
    let harness = fuzzing::harness(target).expect("a known target");
    let corpus = inputs_in(&fuzz_folder("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target} is missing or empty: run fuzz/seeds.sh and fuzz/run.sh"
    );
    let reproducers = inputs_in(&fuzz_folder("artifacts").join(target));

    let failed: Vec<String> = (corpus.iter().chain(&reproducers))
        .filter(|path| {
            let input = std::fs::read(path).expect("a readable input");
            catch_unwind(AssertUnwindSafe(|| harness(&input))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} inputs broke an invariant: {failed:#?}",
        failed.len()
    );
}

fn fuzz_folder(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(name)
}

/// The files in `folder`, none when it does not exist.
fn inputs_in(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = (entries.map(|entry| entry.expect("a listable folder").path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

type Seed = (&'static str, &'static str, Vec<u8>);

/// Inputs the fuzzers start from: the shapes each parser meets in practice, and the
/// attacks it must refuse.
fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target, name, input: Vec<u8>| seeds.push((target, name, input));
    for (name, text) in REQUEST_HEADS {
        add("request_head", *name, text.as_bytes().to_vec());
    }
    for (name, header, claims) in TOKENS {
        add("token", *name, format!("{header}\n{claims}").into_bytes());
    }
    for (name, header) in proxy_headers() {
        add("proxy_header", name, header);
    }
    for (name, text) in CONFIGS {
        add("config", *name, text.as_bytes().to_vec());
    }
    seeds
}

const REQUEST_HEADS: &[(&str, &str)] = &[
    (
        "get-with-bearer",
        "GET /api/v1/orders?limit=50 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: curl/8.5\r\n\
         Accept: */*\r\nAuthorization: Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln\r\n\r\n",
    ),
    (
        "chunked-post",
        "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\n\r\n",
    ),
    (
        "pipelined",
        "GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n\
         helloGET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ),
    (
        "content-length-and-chunked",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "two-transfer-encodings",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
         Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "space-before-colon",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "content-length-list",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\ncontent-length: 3\r\n\r\nabc",
    ),
    ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n"),
    ("bare-lf", "GET / HTTP/1.1\nHost: a\nContent-Length: 1\n\nxGET / HTTP/1.1\nHost: a\n\n"),
    (
        "chunk-extension-with-lf",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;x\nxx\r\n0\r\n\r\n",
    ),
    (
        "chunk-trailer",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         1\r\nx\r\n0\r\nX-Injected: 1\r\n\r\n",
    ),
    (
        "websocket",
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, x-hop\r\nUpgrade: websocket\r\n\
         X-Hop: 1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ),
    (
        "identity-spoofing",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Auth-Subject: admin\r\nx_auth_subject: admin\r\n\
         X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\r\n",
    ),
    (
        "connection-names-framing",
        "POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\nx",
    ),
    ("http-1-0", "GET /old HTTP/1.0\r\nUser-Agent: old\r\n\r\n"),
    ("options-asterisk", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("absolute-form", "GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("huge-chunk-size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\n"),
];

const TOKENS: &[(&str, &str, &str)] = &[
    (
        "es256-good",
        r#"{"alg":"ES256","typ":"JWT","kid":"es"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","sub":"alice","exp":4102444800,"iat":1700000000,"department":"engineering","role":"admin"}"#,
    ),
    (
        "eddsa-good",
        r#"{"alg":"EdDSA","kid":"ed"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":["other","api"],"sub":"bob","exp":4102444800,"nbf":1700000000,"department":["sales","engineering"]}"#,
    ),
    (
        "no-kid",
        r#"{"alg":"ES256"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","exp":4102444800.5,"department":"engineering"}"#,
    ),
    (
        "bound",
        r#"{"alg":"ES256","kid":"es"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","exp":4102444800,"department":"engineering","cnf":{"x5t#S256":"tYHDk4Ii5yK4N4VJ0-Gq1O9pB3Zqw1h3iB6f0B5Ck1E"}}"#,
    ),
    (
        "alg-none",
        r#"{"alg":"none"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","exp":4102444800,"department":"engineering"}"#,
    ),
    (
        "alg-hs256",
        r#"{"alg":"HS256","kid":"es"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","exp":4102444800,"department":"engineering"}"#,
    ),
    (
        "alg-of-the-other-key",
        r#"{"alg":"ES256","kid":"ed"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","exp":4102444800,"department":"engineering"}"#,
    ),
    (
        "expired",
        r#"{"alg":"ES256","kid":"es"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","exp":1000000000,"department":"engineering"}"#,
    ),
    (
        "not-yet-valid",
        r#"{"alg":"ES256","kid":"es"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","exp":4102444800,"nbf":4102440000,"department":"engineering"}"#,
    ),
    (
        "issuer-in-an-array",
        r#"{"alg":"ES256","kid":"es"}"#,
        r#"{"iss":["https://idp.fuzz.test"],"aud":"api","exp":4102444800,"department":"engineering"}"#,
    ),
    (
        "times-as-strings",
        r#"{"alg":"ES256","kid":"es"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","exp":"4102444800","nbf":"4102440000","department":"engineering"}"#,
    ),
    (
        "no-exp",
        r#"{"alg":"ES256","kid":"es"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","department":"engineering"}"#,
    ),
    (
        "unknown-kid",
        r#"{"alg":"ES256","kid":"rotated"}"#,
        r#"{"iss":"https://idp.fuzz.test","aud":"api","exp":4102444800,"department":"engineering"}"#,
    ),
    (
        "duplicate-claims",
        r#"{"alg":"ES256","kid":"es","alg":"EdDSA"}"#,
        r#"{"iss":"https://evil","iss":"https://idp.fuzz.test","aud":"api","exp":4102444800,"department":"engineering"}"#,
    ),
    (
        "raw-bearer-value",
        "Bearer eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl",
        "",
    ),
];

fn proxy_headers() -> Vec<(&'static str, Vec<u8>)> {
    let v4: SocketAddr = "192.0.2.7:50000".parse().expect("an address");
    let v4_local: SocketAddr = "198.51.100.1:8443".parse().expect("an address");
    let v6: SocketAddr = "[2001:db8::1]:443".parse().expect("an address");
    let der = b"0\x82\x01\x0a fake certificate";
    let facts = ClientFacts {
        source: v4,
        destination: v4_local,
        sni: Some("api.example"),
        alpn: Some(b"http/1.1"),
        tls_version: Some("TLSv1.3"),
        device: Some((Some("laptop-0042"), der)),
        certificate_in_handshake: true,
    };
    let mixed = ClientFacts {
        source: v6,
        ..facts
    };
    let then_tls = |mut header: Vec<u8>| {
        header.extend_from_slice(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03");
        header
    };
    vec![
        ("v1-tcp4", then_tls(proxy_protocol::v1_header(v4, v4_local))),
        ("v1-mixed", proxy_protocol::v1_header(v6, v4_local)),
        ("v1-unknown", b"PROXY UNKNOWN\r\n".to_vec()),
        (
            "v1-zero-padded-port",
            b"PROXY TCP4 10.1.2.3 10.0.0.1 01234 8443\r\n".to_vec(),
        ),
        (
            "v2-tlvs",
            then_tls(proxy_protocol::v2_header(&facts, Some(0xe0))),
        ),
        ("v2-ipv6", proxy_protocol::v2_header(&mixed, None)),
        (
            "v2-local",
            proxy_protocol::health_check_header(ProxyProtocolVersion::V2),
        ),
        (
            "v2-unspec",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x00\x00\x00".to_vec(),
        ),
        (
            "v2-unix",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x31\x00\x04abcd".to_vec(),
        ),
        ("tls-client-hello", then_tls(Vec::new())),
    ]
}

const CONFIGS: &[(&str, &str)] = &[
    ("brief", include_str!("../config/brief.yaml")),
    ("reference", include_str!("../config/reference.yaml")),
    (
        "minimal",
        "listen: [\"127.0.0.1:8443\"]\ningress:\n  hostname: a.example\n  \
         server_tls: {cert_chain: c.pem, private_key: k.pem}\n  \
         transport_security: {mode: tls}\n  upstream: {backends: [\"127.0.0.1:1\"]}\n",
    ),
    (
        "several-ingresses",
        r#"listen:
  - "[::]:8443"
  - {address: "0.0.0.0:8443", proxy_protocol: {trusted: ["10.0.0.0/8", "2001:db8::/32"]}}
runtime: {workers: 2, io_driver: epoll}
limits: {max_head_bytes: 8192, max_headers: 50, idle_timeout: 30s}
admin: {listen: "127.0.0.1:9100"}
ingresses:
  - hostname: api.example
    strict_sni: true
    server_tls: {cert_chain: api.pem, private_key: api.key, min_version: "1.3"}
    transport_security:
      mode: mtls
      client_ca_cert: [ca-old.pem, ca-new.pem]
      crl_files: [ca.crl]
      require_crl_check: true
      expired_crl: use_stale
    session_resumption: {ticket_key_file: tickets.key}
    application_auth:
      type: jwt
      issuer: "https://idp.example"
      audience: api
      jwks_file: jwks.json
      algorithms: [ES256, EdDSA]
      required_claims: {department: engineering, "realm.roles": [admin]}
      path_rules:
        - {prefix: /public, public: true}
        - {prefix: /admin, required_claims: {role: admin}}
    identity_headers: {cert_subject: x-dn, claims: {"email": x-email}}
    upstream:
      backends:
        - "127.0.0.1:8080"
        - {address: "127.0.0.1:8081", proxy_protocol: v2, certificate_tlv: 224}
        - {address: "unix:/run/app.sock"}
        - {address: "127.0.0.1:8444", tls: {ca_file: backend-ca.pem, server_name: app}}
      balance: least_connections
      health_check: {http_path: /healthz, interval: 5s}
  - hostname: "*.example.org"
    server_tls: {cert_chain: org.pem, private_key: org.key}
    transport_security: {mode: optional, client_ca_cert: ca.pem}
    application_auth: {type: jwt, issuer: "https://idp.example.org", audience: org, discovery: true}
    upstream: {backends: ["[::1]:8080"]}
"#,
    ),
];
