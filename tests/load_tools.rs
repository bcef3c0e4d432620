//! wrk and h2load, which cannot present a client certificate, load the gateway in `tls`
//! mode with a bearer token: every request they send with a good token is answered 200
//! by the backend, and with a forged token none reaches it. (loadtest/README.md gives
//! the same commands for measuring.)

mod common;

use std::process::Command;

use common::*;
use serde_json::json;
use srrrs_edge::demo::echo::EchoBackend;
use srrrs_edge::demo::idp::DevIdp;
use srrrs_edge::demo::pki::KeyKind;

const ISSUER: &str = "https://idp.load.test";

struct Setup {
    _pki: TestPki,
    backend: EchoBackend,
    gateway: Gateway,
    good: String,
    forged: String,
}

fn start() -> Setup {
    let pki = TestPki::new();
    let idp = DevIdp::new(ISSUER, "k1", KeyKind::EcdsaP256);
    let impostor = DevIdp::new(ISSUER, "k1", KeyKind::EcdsaP256);
    pki.write("jwks.json", &idp.jwks());
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let config = format!(
        "listen: [\"127.0.0.1:{port}\"]
runtime: {{workers: 1}}
ingress:
  hostname: localhost
  server_tls: {{cert_chain: server.pem, private_key: server.key}}
  transport_security: {{mode: tls}}
  application_auth:
    type: jwt
    issuer: \"{ISSUER}\"
    audience: api-gateway
    jwks_file: jwks.json
    required_claims: {{department: engineering}}
  upstream: {{backends: [\"{backend_addr}\"]}}
"
    );
    let gateway = Gateway::start(pki.dir.path(), &config, port, Driver::IoUring);
    let token = |idp: &DevIdp| {
        let mut claims = idp.claims("api-gateway", "load-user");
        claims.insert("department".into(), json!("engineering"));
        format!("Authorization: Bearer {}", idp.sign(&claims))
    };
    Setup {
        good: token(&idp),
        forged: token(&impostor),
        _pki: pki,
        backend,
        gateway,
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed (scripts/test.sh installs it): {e}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{program} failed:\n{text}");
    text
}

/// The number just before `marker` on the line that holds it: `12 requests in` → 12.
fn count_before(text: &str, marker: &str) -> u64 {
    let (before, _) = around(text, marker);
    number(
        before
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|w| !w.is_empty()),
    )
}

/// The number just after `marker`: `Non-2xx or 3xx responses: 7` → 7.
fn count_after(text: &str, marker: &str) -> u64 {
    let (_, after) = around(text, marker);
    number(
        after
            .split(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty()),
    )
}

fn around<'a>(text: &'a str, marker: &str) -> (&'a str, &'a str) {
    let line = text
        .lines()
        .find(|line| line.contains(marker))
        .unwrap_or_else(|| panic!("no {marker:?} in:\n{text}"));
    line.split_once(marker).unwrap()
}

fn number(word: Option<&str>) -> u64 {
    word.and_then(|w| w.parse().ok()).expect("a count")
}

fn wrk(setup: &Setup, header: &str) -> String {
    let url = format!("https://{}/", setup.gateway.addr);
    run("wrk", &["-t1", "-c4", "-d1s", "-H", header, &url])
}

fn h2load(setup: &Setup, header: &str) -> String {
    let url = format!("https://{}/", setup.gateway.addr);
    run(
        "h2load",
        &["--h1", "-n", "400", "-c", "4", "-H", header, &url],
    )
}

#[test]
fn wrk_with_a_good_token_gets_only_200s_from_the_backend() {
    let setup = start();
    let text = wrk(&setup, &setup.good);
    let requests = count_before(&text, " requests in ");
    assert!(requests > 100, "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    // wrk counts the requests it finished; the backend may also have seen those still in
    // flight when the run ended.
    let received = setup.backend.received().len() as u64;
    assert!(received >= requests, "{received} < {requests}\n{text}");
}

#[test]
fn wrk_with_a_forged_token_reaches_nothing() {
    let setup = start();
    let text = wrk(&setup, &setup.forged);
    let requests = count_before(&text, " requests in ");
    assert!(requests > 100, "{text}");
    assert_eq!(
        count_after(&text, "Non-2xx or 3xx responses"),
        requests,
        "{text}"
    );
    assert!(setup.backend.received().is_empty());
}

#[test]
fn h2load_h1_with_a_good_token_gets_only_200s_from_the_backend() {
    let setup = start();
    let text = h2load(&setup, &setup.good);
    assert_eq!(count_before(&text, " succeeded"), 400, "{text}");
    assert_eq!(count_before(&text, " 2xx"), 400, "{text}");
    assert_eq!(setup.backend.received().len(), 400);
}

#[test]
fn h2load_h1_with_a_forged_token_reaches_nothing() {
    let setup = start();
    let text = h2load(&setup, &setup.forged);
    assert_eq!(count_before(&text, " 4xx"), 400, "{text}");
    assert!(setup.backend.received().is_empty());
}
