//! Per-request JWT authorization against the real binary, over real mTLS connections,
//! with tokens minted at test time. The echo backend records every request it receives,
//! so that "never reached the backend" is checked, not assumed.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};
use srrrs_edge::auth::unix_seconds;
use srrrs_edge::demo::echo::EchoBackend;
use srrrs_edge::demo::idp::{jwks_of, DevIdp};
use srrrs_edge::demo::pki::KeyKind;

on_both_drivers!(
    a_valid_token_reaches_the_backend_with_identity_headers,
    a_missing_token_gets_401_with_a_bearer_challenge,
    the_bearer_scheme_is_case_insensitive,
    alg_none_is_refused,
    hs256_signed_with_the_rsa_public_key_is_refused,
    an_es384_header_on_a_p256_key_is_refused,
    tokens_of_every_supported_algorithm_are_accepted,
    time_claims_are_enforced,
    a_wrong_issuer_is_refused,
    an_audience_array_must_contain_ours,
    the_claim_policy_gives_403,
    malformed_requests_get_400_and_oversize_heads_431,
    a_refused_pipelined_request_never_reaches_the_backend,
    chunked_bodies_are_framed_and_each_request_authorized,
    keep_alive_http10_and_connection_close_are_honoured,
    a_websocket_upgrade_is_authorized_then_tunnelled,
    a_use_enc_key_sharing_a_kid_is_never_used,
    a_rotated_jwks_is_accepted_after_one_refetch,
    random_unknown_kids_cause_a_bounded_number_of_fetches,
    an_unreachable_jwks_admits_nothing,
    keys_are_found_by_oidc_discovery,
    a_certificate_bound_token_must_name_the_connections_certificate,
    an_unbound_token_is_refused_when_binding_is_mandatory,
);

struct Idps {
    es256: DevIdp,
    es384: DevIdp,
    rs256: DevIdp,
    eddsa: DevIdp,
}

impl Idps {
    fn new() -> Self {
        Self {
            es256: DevIdp::new(ISSUER, "k-es256", KeyKind::EcdsaP256),
            es384: DevIdp::new(ISSUER, "k-es384", KeyKind::EcdsaP384),
            rs256: DevIdp::new(ISSUER, "k-rs256", KeyKind::Rsa2048),
            eddsa: DevIdp::new(ISSUER, "k-eddsa", KeyKind::Ed25519),
        }
    }

    fn jwks(&self) -> String {
        jwks_of(&[&self.es256, &self.es384, &self.rs256, &self.eddsa])
    }
}

/// Claims that satisfy the test policy.
fn good_claims(idp: &DevIdp) -> Map<String, Value> {
    let mut claims = idp.claims(AUDIENCE, "alice");
    claims.insert("department".into(), json!("engineering"));
    claims.insert("realm".into(), json!({"roles": ["user", "admin"]}));
    claims.insert("https://srrrs.test/team".into(), json!("edge"));
    claims
}

/// The mTLS test config with a JWT policy using `keys` (a YAML line naming the source).
fn jwt_config(pki: &TestPki, port: u16, backends: &[String], keys: &str) -> String {
    let extra = "    fetch_ca_file: server-root.pem
    required_claims:
      department: engineering
      realm.roles: admin
      '[\"https://srrrs.test/team\"]': edge
  identity_headers:
    claims:
      department: x-auth-department
      realm.roles: x-auth-roles
";
    with_token_policy(&pki.mtls_config(port, backends), keys, extra)
}

struct Setup {
    pki: TestPki,
    idps: Idps,
    backend: EchoBackend,
    gateway: Gateway,
    client: Client,
}

impl Setup {
    fn start(driver: Driver) -> Self {
        let pki = TestPki::new();
        let idps = Idps::new();
        pki.write("jwks.json", &idps.jwks());
        let (backend, backend_addr) = echo_backend();
        let port = free_port();
        let config = jwt_config(&pki, port, &[backend_addr], "jwks_file: jwks.json");
        let gateway =
            Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);
        let client = Client::new(&pki, Some(&pki.good));
        Self {
            pki,
            idps,
            backend,
            gateway,
            client,
        }
    }

    fn get(&self, authorization: Option<&str>) -> String {
        match authorization {
            Some(value) => {
                self.client
                    .get_with(self.gateway.addr, "/api", &[("authorization", value)])
            }
            None => self.client.get_with(self.gateway.addr, "/api", &[]),
        }
    }

    fn bearer(&self, token: &str) -> String {
        self.get(Some(&format!("Bearer {token}")))
    }
}

fn a_valid_token_reaches_the_backend_with_identity_headers(driver: Driver) {
    let setup = Setup::start(driver);
    let token = setup.idps.es256.sign(&good_claims(&setup.idps.es256));
    let response = setup.client.get_with(
        setup.gateway.addr,
        "/api",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-auth-subject", "mallory"),
            ("X-Client-Cert-Subject", "CN=forged"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
    );
    assert_eq!(status_of(&response), 200, "{response}");

    let seen = &setup.backend.received()[0];
    let all = |name: &str| -> Vec<&str> {
        seen.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(all("x-auth-subject"), ["alice"]);
    assert_eq!(all("x-auth-issuer"), [ISSUER]);
    assert_eq!(all("x-auth-department"), ["engineering"]);
    assert_eq!(all("x-auth-roles"), ["[\"user\",\"admin\"]"]);
    assert_eq!(all("x-client-cert-subject").len(), 1);
    assert!(all("x-client-cert-subject")[0].contains("CN=device-good"));
    let fingerprint = srrrs_edge::tls::identity::fingerprint(&setup.pki.good.der);
    assert_eq!(all("x-client-cert-sha256"), [fingerprint.as_str()]);
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all("x-forwarded-proto"), ["https"]);
    assert!(
        all("authorization").is_empty(),
        "the token is not forwarded by default"
    );
}

fn a_missing_token_gets_401_with_a_bearer_challenge(driver: Driver) {
    let setup = Setup::start(driver);
    let response = setup.get(None);
    assert_eq!(status_of(&response), 401, "{response}");
    assert!(
        response.contains("www-authenticate: Bearer realm=\"localhost\"\r\n"),
        "{response}"
    );
    let basic = setup.get(Some("Basic dXNlcjpwYXNz"));
    assert_eq!(status_of(&basic), 401, "{basic}");
    assert!(setup.backend.received().is_empty());
    assert_eq!(
        setup
            .gateway
            .metric("srrrs_auth_failures_total{reason=\"missing_token\"}"),
        2.0
    );
}

fn the_bearer_scheme_is_case_insensitive(driver: Driver) {
    let setup = Setup::start(driver);
    let token = setup.idps.es256.sign(&good_claims(&setup.idps.es256));
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = setup.get(Some(&format!("{scheme} {token}")));
        assert_eq!(status_of(&response), 200, "{scheme}: {response}");
    }
}

fn alg_none_is_refused(driver: Driver) {
    let setup = Setup::start(driver);
    use base64::Engine as _;
    let encode =
        |value: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    let header = json!({"alg": "none", "typ": "JWT", "kid": "k-es256"});
    let claims = Value::Object(good_claims(&setup.idps.es256));
    for token in [
        format!("{}.{}.", encode(&header), encode(&claims)),
        format!("{}.{}", encode(&header), encode(&claims)),
    ] {
        let response = setup.bearer(&token);
        assert_eq!(status_of(&response), 401, "{response}");
        assert!(response.contains("error=\"invalid_token\""), "{response}");
    }
    assert!(setup.backend.received().is_empty());
}

fn hs256_signed_with_the_rsa_public_key_is_refused(driver: Driver) {
    let setup = Setup::start(driver);
    let public_pem = setup.idps.rs256.public_key_pem().as_bytes().to_vec();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k-rs256".into());
    let claims = good_claims(&setup.idps.rs256);
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(&public_pem).unwrap(),
    )
    .unwrap();
    assert_eq!(status_of(&setup.bearer(&forged)), 401);
    // Without a kid, every key is a candidate: still no HMAC.
    header.kid = None;
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(&public_pem).unwrap(),
    )
    .unwrap();
    assert_eq!(status_of(&setup.bearer(&forged)), 401);
    assert!(setup.backend.received().is_empty());
}

fn an_es384_header_on_a_p256_key_is_refused(driver: Driver) {
    let setup = Setup::start(driver);
    // Signed by the P-384 key, but naming the P-256 key's kid.
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some("k-es256".into());
    let token = setup
        .idps
        .es384
        .sign_with_header(&header, &good_claims(&setup.idps.es384));
    assert_eq!(status_of(&setup.bearer(&token)), 401);
    assert!(setup.backend.received().is_empty());
}

fn tokens_of_every_supported_algorithm_are_accepted(driver: Driver) {
    let setup = Setup::start(driver);
    let idps = &setup.idps;
    for idp in [&idps.es256, &idps.es384, &idps.rs256, &idps.eddsa] {
        let response = setup.bearer(&idp.sign(&good_claims(idp)));
        assert_eq!(status_of(&response), 200, "{:?}: {response}", idp.algorithm);
        // Without a kid, the keys that fit the algorithm are tried in turn.
        let token = idp.sign_with_header(&Header::new(idp.algorithm), &good_claims(idp));
        assert_eq!(
            status_of(&setup.bearer(&token)),
            200,
            "{:?} without kid",
            idp.algorithm
        );
    }
    assert_eq!(setup.backend.received().len(), 8);
}

fn time_claims_are_enforced(driver: Driver) {
    let setup = Setup::start(driver);
    let idp = &setup.idps.es256;
    let now = unix_seconds();
    let with = |changes: &[(&str, Option<Value>)]| {
        let mut claims = good_claims(idp);
        for (name, value) in changes {
            match value {
                Some(value) => claims.insert((*name).into(), value.clone()),
                None => claims.remove(*name),
            };
        }
        setup.bearer(&idp.sign(&claims))
    };
    let expired = with(&[("exp", Some(json!(now - 600)))]);
    assert_eq!(
        status_of(&expired),
        401,
        "an expired token whose claims match: {expired}"
    );
    assert!(expired.contains("token expired"));
    assert_eq!(status_of(&with(&[("exp", None)])), 401, "no exp");
    assert_eq!(
        status_of(&with(&[("nbf", Some(json!(now + 600)))])),
        401,
        "nbf beyond the leeway"
    );
    assert_eq!(
        status_of(&with(&[("exp", Some(json!(now - 30)))])),
        200,
        "expired within the leeway"
    );
    assert_eq!(
        status_of(&with(&[("nbf", Some(json!(now + 30)))])),
        200,
        "nbf within the leeway"
    );
    assert_eq!(setup.backend.received().len(), 2);

    // A token admitted once, then expired, is refused from the cache too.
    let soon = good_claims(idp);
    let mut soon = soon.clone();
    soon.insert("exp".into(), json!(now - 58));
    let token = idp.sign(&soon);
    assert_eq!(status_of(&setup.bearer(&token)), 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status_of(&setup.bearer(&token)), 401);
}

fn a_wrong_issuer_is_refused(driver: Driver) {
    let setup = Setup::start(driver);
    let mut claims = good_claims(&setup.idps.es256);
    claims.insert("iss".into(), json!("https://evil.test"));
    let response = setup.bearer(&setup.idps.es256.sign(&claims));
    assert_eq!(status_of(&response), 401);
    assert!(response.contains("wrong issuer"), "{response}");
    claims.remove("iss");
    assert_eq!(
        status_of(&setup.bearer(&setup.idps.es256.sign(&claims))),
        401
    );
}

fn an_audience_array_must_contain_ours(driver: Driver) {
    let setup = Setup::start(driver);
    let idp = &setup.idps.es256;
    let mut claims = good_claims(idp);
    claims.insert("aud".into(), json!(["other", AUDIENCE]));
    assert_eq!(status_of(&setup.bearer(&idp.sign(&claims))), 200);
    claims.insert("aud".into(), json!(["other", "another"]));
    let response = setup.bearer(&idp.sign(&claims));
    assert_eq!(status_of(&response), 401);
    assert!(response.contains("wrong audience"), "{response}");
    assert_eq!(setup.backend.received().len(), 1);
}

fn the_claim_policy_gives_403(driver: Driver) {
    let setup = Setup::start(driver);
    let idp = &setup.idps.es256;
    let cases: [(&str, Option<Value>); 5] = [
        ("department", None),
        ("department", Some(json!("sales"))),
        ("realm", Some(json!({"roles": ["user"]}))),
        ("realm", Some(json!({"roles": "user"}))),
        ("https://srrrs.test/team", Some(json!("core"))),
    ];
    for (name, value) in cases {
        let mut claims = good_claims(idp);
        match &value {
            Some(value) => claims.insert(name.into(), value.clone()),
            None => claims.remove(name),
        };
        let response = setup.bearer(&idp.sign(&claims));
        assert_eq!(status_of(&response), 403, "{name} = {value:?}: {response}");
        assert!(
            response.contains("error=\"insufficient_scope\""),
            "{response}"
        );
    }
    let mut nested_scalar = good_claims(idp);
    nested_scalar.insert("realm".into(), json!({"roles": "admin"}));
    assert_eq!(status_of(&setup.bearer(&idp.sign(&nested_scalar))), 200);
    assert_eq!(setup.backend.received().len(), 1);
}

fn malformed_requests_get_400_and_oversize_heads_431(driver: Driver) {
    let setup = Setup::start(driver);
    let token = setup.idps.es256.sign(&good_claims(&setup.idps.es256));
    let auth = format!("Authorization: Bearer {token}\r\n");
    let request = |extra: &str| format!("POST /x HTTP/1.1\r\nHost: localhost\r\n{auth}{extra}\r\n");
    let cases = [
        (format!("GET / HTTP/1.1\r\nHost: localhost\r\n{auth}{auth}\r\n"), 400),
        (format!("GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}, Bearer {token}\r\n\r\n"), 400),
        (request("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n", 400),
        (request("Content-Length: 3\r\nContent-Length: 4\r\n") + "abcd", 400),
        (request("X-Folded: a\r\n  b\r\n"), 400),
        (request("Transfer-Encoding: chunked\r\n") + "zz\r\n", 400),
        (request(&format!("X-Big: {}\r\n", "a".repeat(20_000))), 431),
        (request(&(0..120).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()), 431),
    ];
    for (raw, expected) in cases {
        let response = setup
            .client
            .exchange(setup.gateway.addr, raw.as_bytes())
            .expect("an answer");
        assert_eq!(statuses(&response), [expected], "{:.120}: {response}", raw);
    }
    assert!(
        setup.backend.received().is_empty(),
        "{:?}",
        setup.backend.received()
    );
}

fn a_refused_pipelined_request_never_reaches_the_backend(driver: Driver) {
    let setup = Setup::start(driver);
    let token = setup.idps.es256.sign(&good_claims(&setup.idps.es256));
    let raw = format!(
        "GET /first HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n\
         GET /second HTTP/1.1\r\nHost: localhost\r\n\r\n\
         GET /third HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let response = setup
        .client
        .exchange(setup.gateway.addr, raw.as_bytes())
        .expect("answers");
    assert_eq!(statuses(&response), [200, 401], "{response}");
    let first_end = response.find("HTTP/1.1 401").unwrap();
    assert!(
        response[..first_end].contains("\"path\": \"/first\""),
        "the backend's answer comes first"
    );
    let paths: Vec<String> = setup
        .backend
        .received()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/first"]);
}

fn chunked_bodies_are_framed_and_each_request_authorized(driver: Driver) {
    let setup = Setup::start(driver);
    let token = setup.idps.es256.sign(&good_claims(&setup.idps.es256));
    let raw = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n7;note=x\r\n, world\r\n0\r\n\r\n\
         GET /after HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n\
         POST /smuggled HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\nabcd"
    );
    let response = setup
        .client
        .exchange(setup.gateway.addr, raw.as_bytes())
        .expect("answers");
    assert_eq!(statuses(&response), [200, 200, 401], "{response}");
    let received = setup.backend.received();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/upload", "/after"]);
    assert_eq!(received[0].body, b"hello, world");
}

fn keep_alive_http10_and_connection_close_are_honoured(driver: Driver) {
    let setup = Setup::start(driver);
    let token = setup.idps.es256.sign(&good_claims(&setup.idps.es256));
    let auth = format!("Authorization: Bearer {token}\r\n");

    let mut stream = setup.client.connect(setup.gateway.addr).expect("connect");
    for path in ["/one", "/two", "/three"] {
        use std::io::Write;
        let raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
        stream.write_all(raw.as_bytes()).unwrap();
        let response = read_one_response(&mut stream);
        assert_eq!(status_of(&response), 200, "{response}");
    }
    drop(stream);

    let closing = format!(
        "GET /close HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n\
         GET /never HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n"
    );
    let response = setup
        .client
        .exchange(setup.gateway.addr, closing.as_bytes())
        .unwrap();
    assert_eq!(statuses(&response), [200]);
    let old = format!("GET /http10 HTTP/1.0\r\n{auth}\r\nGET /never HTTP/1.0\r\n{auth}\r\n");
    let response = setup
        .client
        .exchange(setup.gateway.addr, old.as_bytes())
        .unwrap();
    assert_eq!(statuses(&response), [200]);
    let head = format!("HEAD /head HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    let response = setup
        .client
        .exchange(setup.gateway.addr, head.as_bytes())
        .unwrap();
    assert!(
        response.ends_with("\r\n\r\n"),
        "no body after HEAD: {response}"
    );

    let paths: Vec<String> = setup
        .backend
        .received()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        ["/one", "/two", "/three", "/close", "/http10", "/head"]
    );
}

fn a_websocket_upgrade_is_authorized_then_tunnelled(driver: Driver) {
    use std::io::{Read, Write};
    let setup = Setup::start(driver);
    let token = setup.idps.es256.sign(&good_claims(&setup.idps.es256));
    let upgrade = |auth: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let refused = setup
        .client
        .exchange(setup.gateway.addr, upgrade("").as_bytes())
        .unwrap();
    assert_eq!(statuses(&refused), [401]);

    let mut stream = setup.client.connect(setup.gateway.addr).unwrap();
    stream
        .write_all(upgrade(&format!("Authorization: Bearer {token}\r\n")).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    // Not HTTP any more: these bytes are not parsed, only relayed.
    let frames = b"\x81\x05hello GET /not-a-request HTTP/1.1\r\n\r\n";
    stream.write_all(frames).unwrap();
    let mut echoed = vec![0; frames.len()];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, frames);
    let paths: Vec<String> = setup
        .backend
        .received()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/ws"]);
}

fn a_use_enc_key_sharing_a_kid_is_never_used(driver: Driver) {
    let pki = TestPki::new();
    let real = DevIdp::new(ISSUER, "shared", KeyKind::EcdsaP256);
    let attacker = DevIdp::new(ISSUER, "shared", KeyKind::EcdsaP256);
    let mut encryption = attacker.jwk();
    encryption["use"] = json!("enc");
    // The encryption key comes first, so that a careless lookup by kid would pick it.
    pki.write(
        "jwks.json",
        &json!({"keys": [encryption, real.jwk()]}).to_string(),
    );
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = jwt_config(&pki, port, &[backend_addr], "jwks_file: jwks.json");
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let client = Client::new(&pki, Some(&pki.good));

    let forged = attacker.sign(&good_claims(&attacker));
    let response = client.get_with(
        gateway.addr,
        "/",
        &[("authorization", &format!("Bearer {forged}"))],
    );
    assert_eq!(status_of(&response), 401, "{response}");
    let genuine = real.sign(&good_claims(&real));
    let response = client.get_with(
        gateway.addr,
        "/",
        &[("authorization", &format!("Bearer {genuine}"))],
    );
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(backend.received().len(), 1);
}

/// A gateway whose keys come from `server` over HTTPS.
fn start_with_jwks_server(driver: Driver, pki: &TestPki, keys: &str) -> (EchoBackend, Gateway) {
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = jwt_config(pki, port, &[backend_addr], keys);
    let gateway =
        Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);
    (backend, gateway)
}

fn a_rotated_jwks_is_accepted_after_one_refetch(driver: Driver) {
    let pki = TestPki::new();
    let old = DevIdp::new(ISSUER, "2025", KeyKind::EcdsaP256);
    let new = DevIdp::new(ISSUER, "2026", KeyKind::EcdsaP256);
    let server = JwksServer::start(&pki, old.jwks());
    let (backend, gateway) =
        start_with_jwks_server(driver, &pki, &format!("jwks_uri: \"{}\"", server.uri()));
    let client = Client::new(&pki, Some(&pki.good));
    let bearer = |idp: &DevIdp| format!("Bearer {}", idp.sign(&good_claims(idp)));

    assert!(eventually(Duration::from_secs(10), || server.fetches() >= 1));
    let response = client.get_with(gateway.addr, "/", &[("authorization", &bearer(&old))]);
    assert_eq!(status_of(&response), 200, "{response}");
    let before = server.fetches();

    server.set_jwks(jwks_of(&[&old, &new]));
    let response = client.get_with(gateway.addr, "/", &[("authorization", &bearer(&new))]);
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(server.fetches(), before + 1, "exactly one refetch");
    assert_eq!(backend.received().len(), 2);
}

fn random_unknown_kids_cause_a_bounded_number_of_fetches(driver: Driver) {
    let pki = TestPki::new();
    let idp = DevIdp::new(ISSUER, "known", KeyKind::EcdsaP256);
    let server = JwksServer::start(&pki, idp.jwks());
    let (backend, gateway) =
        start_with_jwks_server(driver, &pki, &format!("jwks_uri: \"{}\"", server.uri()));
    assert!(eventually(Duration::from_secs(10), || server.fetches() >= 1));
    let before = server.fetches();

    let client = Client::new(&pki, Some(&pki.good));
    // Four clients at once; each refusal closes its connection, so each request has its own.
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (client, addr) = (client.clone(), gateway.addr);
            let idp = DevIdp::new(ISSUER, "known", KeyKind::EcdsaP256);
            std::thread::spawn(move || {
                let mut refused = 0;
                for index in 0..250 {
                    let mut header = Header::new(Algorithm::ES256);
                    header.kid = Some(format!("random-{worker}-{index}"));
                    let token = idp.sign_with_header(&header, &good_claims(&idp));
                    let bearer = format!("Bearer {token}");
                    let response = client.get_with(addr, "/", &[("authorization", &bearer)]);
                    refused += usize::from(status_of(&response) == 401);
                }
                refused
            })
        })
        .collect();
    let refused: usize = workers.into_iter().map(|w| w.join().expect("client")).sum();
    assert_eq!(refused, 1000);
    let triggered = server.fetches() - before;
    assert!(triggered <= 2, "{triggered} fetches for 1000 unknown kids");
    assert!(backend.received().is_empty());
}

fn an_unreachable_jwks_admits_nothing(driver: Driver) {
    let pki = TestPki::new();
    let idp = DevIdp::new(ISSUER, "k", KeyKind::EcdsaP256);
    let dead = format!("jwks_uri: \"https://127.0.0.1:{}/jwks.json\"", free_port());
    let (backend, gateway) = start_with_jwks_server(driver, &pki, &dead);
    let client = Client::new(&pki, Some(&pki.good));
    for header in [Header::new(Algorithm::ES256), {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k".into());
        h
    }] {
        let token = idp.sign_with_header(&header, &good_claims(&idp));
        let response = client.get_with(
            gateway.addr,
            "/",
            &[("authorization", &format!("Bearer {token}"))],
        );
        assert_eq!(status_of(&response), 401, "{response}");
    }
    assert!(backend.received().is_empty());
    assert!(eventually(Duration::from_secs(10), || gateway
        .log_text()
        .contains("JWKS fetch failed")));
}

fn keys_are_found_by_oidc_discovery(driver: Driver) {
    let pki = TestPki::new();
    let placeholder = DevIdp::new(ISSUER, "unused", KeyKind::EcdsaP256);
    let server = JwksServer::start(&pki, placeholder.jwks());
    let idp = DevIdp::new(&server.issuer(), "disco", KeyKind::EcdsaP256);
    server.set_jwks(idp.jwks());
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = jwt_config(&pki, port, &[backend_addr], "discovery: true")
        .replace(ISSUER, &server.issuer());
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    assert!(eventually(Duration::from_secs(10), || server.fetches() >= 1));
    assert!(server.discovery_fetches() >= 1);

    let client = Client::new(&pki, Some(&pki.good));
    let mut claims = good_claims(&idp);
    claims.insert("aud".into(), json!(AUDIENCE));
    let response = client.get_with(
        gateway.addr,
        "/",
        &[("authorization", &format!("Bearer {}", idp.sign(&claims)))],
    );
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(backend.received().len(), 1);
}

/// Claims bound (RFC 8705) to the certificate with this DER.
fn bound_claims(idp: &DevIdp, certificate: &[u8]) -> Map<String, Value> {
    let mut claims = good_claims(idp);
    let thumbprint = srrrs_edge::tls::identity::thumbprint(certificate);
    claims.insert("cnf".into(), json!({ "x5t#S256": thumbprint }));
    claims
}

fn a_certificate_bound_token_must_name_the_connections_certificate(driver: Driver) {
    let setup = Setup::start(driver);
    let idp = &setup.idps.es256;
    let mine = idp.sign(&bound_claims(idp, &setup.pki.good.der));
    let response = setup.bearer(&mine);
    assert_eq!(status_of(&response), 200, "{response}");

    let stolen = idp.sign(&bound_claims(idp, &setup.pki.second_ca_client.der));
    let response = setup.bearer(&stolen);
    assert_eq!(status_of(&response), 401, "{response}");
    assert!(
        response.contains("bound to another certificate"),
        "{response}"
    );
    // From the cache too: the same token on the right connection still passes.
    assert_eq!(status_of(&setup.bearer(&mine)), 200);
    assert_eq!(setup.backend.received().len(), 2);
}

fn an_unbound_token_is_refused_when_binding_is_mandatory(driver: Driver) {
    let pki = TestPki::new();
    let idps = Idps::new();
    pki.write("jwks.json", &idps.jwks());
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = jwt_config(&pki, port, &[backend_addr], "jwks_file: jwks.json").replace(
        "    type: jwt\n",
        "    type: jwt\n    certificate_binding: required\n",
    );
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let client = Client::new(&pki, Some(&pki.good));
    let idp = &idps.es256;
    let bearer = |token: String| format!("Bearer {token}");

    let unbound = bearer(idp.sign(&good_claims(idp)));
    let response = client.get_with(gateway.addr, "/", &[("authorization", &unbound)]);
    assert_eq!(status_of(&response), 401, "{response}");
    assert!(
        response.contains("not bound to the client certificate"),
        "{response}"
    );
    let bound = bearer(idp.sign(&bound_claims(idp, &pki.good.der)));
    let response = client.get_with(gateway.addr, "/", &[("authorization", &bound)]);
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(backend.received().len(), 1);
}
