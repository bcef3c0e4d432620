//! The hot steps of a request, one by one: reading its head, writing the head that is
//! forwarded, and checking its token, cold (signature verified) and cached.
//!
//! Run with `cargo bench -p srrrs-edge-bench`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use srrrs_edge::auth::{Authorizer, Verdict};
use srrrs_edge::config;
use srrrs_edge::demo::idp::{jwks_of, DevIdp};
use srrrs_edge::demo::pki::KeyKind;
use srrrs_edge::http::head::{self, HeadLimits};
use srrrs_edge::http::rewrite::write_forwarded_head;

const ISSUER: &str = "https://idp.bench";

fn request_head(token: &str) -> String {
    format!(
        "GET /api/v1/orders?limit=50 HTTP/1.1\r\nHost: api.prod.srrrs.internal\r\n\
         User-Agent: bench/1.0\r\nAccept: application/json\r\nAccept-Encoding: gzip, br\r\n\
         Accept-Language: en-GB,en;q=0.9\r\nCache-Control: no-cache\r\n\
         X-Request-Id: 5a4f2c1e-3b7d-4e8a-9c0f-1d2e3f4a5b6c\r\n\
         Cookie: session=abcdef0123456789; theme=dark\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
}

/// An authorizer over a JWKS file with both keys, built as the gateway builds it.
fn authorizer(dir: &Path, idps: &[&DevIdp], cache_size: usize) -> Arc<Authorizer> {
    std::fs::write(dir.join("jwks.json"), jwks_of(idps)).unwrap();
    let yaml = format!(
        "listen: [\"127.0.0.1:1\"]
ingress:
  hostname: bench
  server_tls: {{cert_chain: c.pem, private_key: k.pem}}
  transport_security: {{mode: tls}}
  application_auth:
    type: jwt
    issuer: \"{ISSUER}\"
    audience: api
    jwks_file: jwks.json
    token_cache_size: {cache_size}
    required_claims: {{department: engineering}}
  upstream: {{backends: [\"127.0.0.1:1\"]}}
"
    );
    let loaded = config::parse(&dir.join("edge.yaml"), &yaml).unwrap();
    let mut problems = loaded.problems();
    let (_, source) = loaded.ingress_sources().remove(0);
    let built = Authorizer::build(&source, &mut problems);
    assert!(problems.is_empty(), "{:?}", problems.into_error());
    built.flatten().unwrap()
}

fn token_for(idp: &DevIdp) -> String {
    let mut claims = idp.claims("api", "alice");
    claims.insert("department".into(), json!("engineering"));
    idp.sign(&claims)
}

fn head_parsing(c: &mut Criterion) {
    let idp = DevIdp::new(ISSUER, "es", KeyKind::EcdsaP256);
    let text = request_head(&token_for(&idp));
    let limits = HeadLimits {
        max_bytes: 16 * 1024,
        max_headers: 100,
    };
    let parsed = head::parse(text.as_bytes(), limits).unwrap().unwrap();
    let filter = srrrs_edge::http::rewrite::FieldFilter::new(["x-auth-subject".to_owned()], false);
    let added = [
        ("x-forwarded-for", "192.0.2.1"),
        ("x-auth-subject", "alice"),
    ];
    let mut out = Vec::with_capacity(2048);

    let mut group = c.benchmark_group("head");
    group.bench_function("parse_and_check", |b| {
        b.iter(|| head::parse(black_box(text.as_bytes()), limits).unwrap())
    });
    group.bench_function("write_forwarded", |b| {
        b.iter(|| write_forwarded_head(&mut out, black_box(&parsed), &filter, &added, &[]))
    });
    group.finish();
}

fn token_validation(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let es256 = DevIdp::new(ISSUER, "es", KeyKind::EcdsaP256);
    let rs256 = DevIdp::new(ISSUER, "rs", KeyKind::Rsa2048);
    let cold = authorizer(dir.path(), &[&es256, &rs256], 0);
    let warm = authorizer(dir.path(), &[&es256, &rs256], 4096);
    let mut no_cache = cold.new_cache();
    let mut cache = warm.new_cache();

    let mut group = c.benchmark_group("token");
    for (name, idp) in [("es256", &es256), ("rs256", &rs256)] {
        let header = format!("Bearer {}", token_for(idp));
        let values = [header.as_bytes()];
        assert!(matches!(
            cold.authorize(&values, None, &mut no_cache, None),
            Verdict::Allowed(_)
        ));
        group.bench_function(format!("{name}_cold"), |b| {
            b.iter(|| cold.authorize(black_box(&values), None, &mut no_cache, None))
        });
        group.bench_function(format!("{name}_cached"), |b| {
            b.iter(|| warm.authorize(black_box(&values), None, &mut cache, None))
        });
    }
    group.finish();
}

criterion_group!(benches, head_parsing, token_validation);
criterion_main!(benches);
