//! `edge-load fixtures`: everything a side-by-side load test needs, made by code: one
//! PKI (a root, a device CA under it, a server certificate, a device certificate, CRLs)
//! and one IdP (ES256 and RS256 keys, their JWKS and public keys, tokens and token
//! pools), in the forms srrrs-edge, HAProxy and nginx each read.

use std::path::Path;

use serde_json::json;
use srrrs_edge::demo::idp::{jwks_of, DevIdp};
use srrrs_edge::demo::pki::{Authority, CertRequest, KeyKind};
use time::Duration;

/// The issuer of the fixture tokens.
pub const ISSUER: &str = "https://idp.load.test";

/// The audience of the fixture tokens.
pub const AUDIENCE: &str = "api-gateway";

/// Writes the fixtures into `dir`, with token pools of `pool` distinct tokens.
pub fn write(dir: &Path, pool: usize) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let put = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };

    let root = Authority::root("edge-load root CA");
    let device_ca = root.intermediate("edge-load device CA");
    let server = root.issue(&CertRequest::server(&["localhost", "127.0.0.1"]));
    let device = device_ca.issue(&CertRequest::client("edge-load-device").key(KeyKind::EcdsaP256));
    let week = Duration::days(7);
    put("ca.pem", &root.cert_pem)?;
    put("server.pem", &server.chain_pem)?;
    put("server.key", &server.key_pem)?;
    put(
        "server-with-key.pem",
        &format!("{}{}", server.chain_pem, server.key_pem),
    )?;
    put("client.pem", &device.chain_pem)?;
    put("client.key", &device.key_pem)?;
    put(
        "crl.pem",
        &format!("{}{}", root.crl(&[], week), device_ca.crl(&[], week)),
    )?;

    let es256 = DevIdp::new(ISSUER, "es256", KeyKind::EcdsaP256);
    let rs256 = DevIdp::new(ISSUER, "rs256", KeyKind::Rsa2048);
    put("jwks.json", &jwks_of(&[&es256, &rs256]))?;
    for (name, idp) in [("es256", &es256), ("rs256", &rs256)] {
        put(&format!("{name}.pub.pem"), idp.public_key_pem())?;
        put(&format!("token-{name}.txt"), &token(idp, 0))?;
        let tokens: Vec<String> = (0..pool).map(|index| token(idp, index)).collect();
        put(&format!("tokens-{name}.txt"), &tokens.join("\n"))?;
    }
    put("edge-tls.yaml", &gateway_config("tls"))?;
    put("edge-mtls.yaml", &gateway_config("mtls"))?;
    put("backend-nginx.conf", &backend_config(dir))?;
    println!("fixtures written to {}", dir.display());
    Ok(())
}

/// A gateway on 127.0.0.1:8443 in `mode` (`tls` for wrk and h2load, which cannot send
/// a client certificate), checking the fixture tokens, in front of 127.0.0.1:8080.
fn gateway_config(mode: &str) -> String {
    let crls = if mode == "tls" {
        String::new()
    } else {
        ", client_ca_cert: ca.pem, require_crl_check: true, crl_files: [crl.pem]".to_owned()
    };
    format!(
        "# Written by `edge-load fixtures`; paths are relative to this file.
listen: [\"127.0.0.1:8443\"]
ingress:
  hostname: localhost
  server_tls: {{cert_chain: server.pem, private_key: server.key}}
  transport_security: {{mode: {mode}{crls}}}
  application_auth:
    type: jwt
    issuer: \"{ISSUER}\"
    audience: {AUDIENCE}
    jwks_file: jwks.json
    required_claims: {{department: engineering, clearance_level: high}}
  upstream: {{backends: [\"127.0.0.1:8080\"]}}
"
    )
}

/// nginx answering 200 on 127.0.0.1:8080, its files kept in `dir`.
fn backend_config(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "# Written by `edge-load fixtures`: nginx -c {dir}/backend-nginx.conf
daemon off;
worker_processes 1;
pid {dir}/backend-nginx.pid;
error_log {dir}/backend-nginx.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/nginx-body;
  proxy_temp_path {dir}/nginx-proxy;
  fastcgi_temp_path {dir}/nginx-fastcgi;
  uwsgi_temp_path {dir}/nginx-uwsgi;
  scgi_temp_path {dir}/nginx-scgi;
  keepalive_requests 10000000;
  server {{ listen 127.0.0.1:8080; location / {{ return 200 \"ok\\n\"; }} }}
}}
"
    )
}

/// A token valid for a day that satisfies the comparison's claim policy; `index` makes
/// it distinct (`jti`).
fn token(idp: &DevIdp, index: usize) -> String {
    let mut claims = idp.claims(AUDIENCE, "load-user");
    let day_later = srrrs_edge::auth::unix_seconds() + 24 * 3600;
    claims.insert("exp".into(), json!(day_later));
    claims.insert("department".into(), json!("engineering"));
    claims.insert("clearance_level".into(), json!("high"));
    claims.insert("jti".into(), json!(format!("load-{index}")));
    idp.sign(&claims)
}
