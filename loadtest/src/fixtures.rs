//! `edge-load fixtures`: everything a side-by-side load test or a soak needs, made by
//! code: one PKI (a root, a device CA under it, a server certificate, a device
//! certificate, CRLs, and what an `openssl ocsp` responder for the device CA needs),
//! devices that must be refused (revoked, expired, from an untrusted CA), optionally a
//! series of devices revoked one more at a time, and one IdP (ES256 and RS256 keys,
//! their JWKS and public keys, tokens, token pools, and tokens that must be refused), in
//! the forms srrrs-edge, HAProxy and nginx each read.

use std::path::Path;

use serde_json::{json, Map, Value};
use srrrs_edge::demo::idp::{jwks_of, DevIdp};
use srrrs_edge::demo::pki::{Authority, CertRequest, IssuedCert, KeyKind};
use time::{Duration, OffsetDateTime};

/// The issuer of the fixture tokens.
pub const ISSUER: &str = "https://idp.load.test";

/// The audience of the fixture tokens.
pub const AUDIENCE: &str = "api-gateway";

/// How long the fixture CRLs stay valid.
const CRL_VALIDITY: Duration = Duration::days(7);

/// Writes the fixtures into `dir`, with token pools of `pool` distinct tokens and a
/// series of `revocations` devices revoked one more at a time.
pub fn write(dir: &Path, pool: usize, revocations: usize) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = Out(dir);
    let root = Authority::root("edge-load root CA");
    let device_ca = root.intermediate("edge-load device CA");
    let revoked = write_pki(&out, &root, &device_ca)?;
    write_refused_devices(&out, &device_ca)?;
    write_revocation_series(&out, &root, &device_ca, &revoked, revocations)?;
    write_idp(&out, pool)?;
    out.put("edge-tls.yaml", &gateway_config("tls"))?;
    out.put("edge-mtls.yaml", &gateway_config("mtls"))?;
    out.put("backend-nginx.conf", &backend_config(dir))?;
    println!("fixtures written to {}", dir.display());
    Ok(())
}

/// The folder the fixtures go to.
struct Out<'a>(&'a Path);

impl Out<'_> {
    fn put(&self, name: &str, text: &str) -> Result<(), String> {
        let path = self.0.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes `cert`'s chain as `{name}.pem` and its key as `{name}.key`.
    fn put_device(&self, name: &str, cert: &IssuedCert) -> Result<(), String> {
        self.put(&format!("{name}.pem"), &cert.chain_pem)?;
        self.put(&format!("{name}.key"), &cert.key_pem)
    }
}

/// The root (`ca.pem`), the server's certificate, the good device (`client`), a revoked
/// one (`revoked`), `crl.pem`, the CRLs of both CAs, which revokes it, and the device
/// CA for an OCSP responder. Returns the revoked device.
fn write_pki(out: &Out, root: &Authority, device_ca: &Authority) -> Result<IssuedCert, String> {
    let server = root.issue(&CertRequest::server(&["localhost", "127.0.0.1"]));
    let device = device_ca.issue(&CertRequest::client("edge-load-device").key(KeyKind::EcdsaP256));
    let revoked = device_ca.issue(&CertRequest::client("edge-load-revoked-device"));
    out.put("ca.pem", &root.cert_pem)?;
    out.put("server.pem", &server.chain_pem)?;
    out.put("server.key", &server.key_pem)?;
    out.put(
        "server-with-key.pem",
        &format!("{}{}", server.chain_pem, server.key_pem),
    )?;
    out.put_device("client", &device)?;
    out.put_device("revoked", &revoked)?;
    out.put("crl.pem", &crls(root, device_ca, &[&revoked], 0))?;
    write_ocsp_responder_files(out, device_ca, &device, &revoked)?;
    Ok(revoked)
}

/// What `openssl ocsp` needs to answer for the device CA as the CA itself:
/// `device-ca.pem`, `device-ca.key`, and `ocsp-index.txt`, an OpenSSL CA index that
/// lists `device` as valid and `revoked` as revoked an hour ago. The index lists no
/// other device: a responder using it answers `unknown` for them.
fn write_ocsp_responder_files(
    out: &Out,
    device_ca: &Authority,
    device: &IssuedCert,
    revoked: &IssuedCert,
) -> Result<(), String> {
    out.put("device-ca.pem", &device_ca.cert_pem)?;
    out.put("device-ca.key", &device_ca.key_pem())?;
    let revoked_at = OffsetDateTime::now_utc() - Duration::hours(1);
    let index = format!(
        "{}\n{}\n",
        device.openssl_index_line(None),
        revoked.openssl_index_line(Some(revoked_at)),
    );
    out.put("ocsp-index.txt", &index)
}

/// Devices refused whatever the CRLs say: `expired-client` (from the trusted device CA,
/// expired yesterday) and `untrusted` (from a CA the configs do not trust).
fn write_refused_devices(out: &Out, device_ca: &Authority) -> Result<(), String> {
    let now = OffsetDateTime::now_utc();
    let expired = CertRequest::client("edge-load-expired-device")
        .valid(now - Duration::days(30), now - Duration::days(1));
    out.put_device("expired-client", &device_ca.issue(&expired))?;

    let stranger = Authority::root("edge-load untrusted root").intermediate("untrusted CA");
    let untrusted = stranger.issue(&CertRequest::client("edge-load-untrusted-device"));
    out.put_device("untrusted", &untrusted)
}

/// `device-1` … `device-N`, good devices, and `crl-0.pem` … `crl-N.pem`: `crl-K.pem`
/// revokes `revoked` and devices 1 to K, and each is issued a second after the one
/// before, as a CA publishing a CRL at each revocation would.
fn write_revocation_series(
    out: &Out,
    root: &Authority,
    device_ca: &Authority,
    revoked: &IssuedCert,
    count: usize,
) -> Result<(), String> {
    if count == 0 {
        return Ok(());
    }
    let devices: Vec<IssuedCert> = (1..=count)
        .map(|index| device_ca.issue(&CertRequest::client(&format!("edge-load-device-{index}"))))
        .collect();
    let mut listed = vec![revoked];
    out.put("crl-0.pem", &crls(root, device_ca, &listed, 0))?;
    for (index, device) in devices.iter().enumerate() {
        let number = index + 1;
        out.put_device(&format!("device-{number}"), device)?;
        listed.push(device);
        out.put(
            &format!("crl-{number}.pem"),
            &crls(root, device_ca, &listed, number),
        )?;
    }
    Ok(())
}

/// The root's CRL (revoking nothing) and the device CA's revoking `revoked`, issued
/// an hour ago plus `later` seconds.
fn crls(root: &Authority, device_ca: &Authority, revoked: &[&IssuedCert], later: usize) -> String {
    let now = OffsetDateTime::now_utc();
    let issued = now - Duration::hours(1) + Duration::seconds(later as i64);
    format!(
        "{}{}",
        root.crl(&[], CRL_VALIDITY),
        device_ca.crl_between(revoked, issued, now + CRL_VALIDITY)
    )
}

/// The IdP's keys, its JWKS, good tokens and pools of them, and tokens to be refused.
fn write_idp(out: &Out, pool: usize) -> Result<(), String> {
    let es256 = DevIdp::new(ISSUER, "es256", KeyKind::EcdsaP256);
    let rs256 = DevIdp::new(ISSUER, "rs256", KeyKind::Rsa2048);
    out.put("jwks.json", &jwks_of(&[&es256, &rs256]))?;
    for (name, idp) in [("es256", &es256), ("rs256", &rs256)] {
        out.put(&format!("{name}.pub.pem"), idp.public_key_pem())?;
        out.put(&format!("token-{name}.txt"), &token(idp, 0))?;
        let tokens: Vec<String> = (0..pool).map(|index| token(idp, index)).collect();
        out.put(&format!("tokens-{name}.txt"), &tokens.join("\n"))?;
    }
    write_refused_tokens(out, &es256)
}

/// Tokens the configs refuse: `token-forged.txt` (the ES256 key's `kid`, signed by
/// another key), `token-expired.txt` (an hour ago), `token-wrong-audience.txt` (401
/// each) and `token-missing-claim.txt` (no `clearance_level`: 403).
fn write_refused_tokens(out: &Out, idp: &DevIdp) -> Result<(), String> {
    let forger = DevIdp::new(ISSUER, &idp.kid, KeyKind::EcdsaP256);
    out.put("token-forged.txt", &token(&forger, 0))?;

    let mut expired = claims(idp, AUDIENCE, 0);
    let hour_ago = srrrs_edge::auth::unix_seconds() - 3600;
    expired.insert("iat".into(), json!(hour_ago - 3600));
    expired.insert("exp".into(), json!(hour_ago));
    out.put("token-expired.txt", &idp.sign(&expired))?;

    let elsewhere = claims(idp, "another-api", 0);
    out.put("token-wrong-audience.txt", &idp.sign(&elsewhere))?;

    let mut partial = claims(idp, AUDIENCE, 0);
    partial.remove("clearance_level");
    out.put("token-missing-claim.txt", &idp.sign(&partial))
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

/// A token valid for a day that satisfies the configs' claim policy; `index` makes it
/// distinct (`jti`).
fn token(idp: &DevIdp, index: usize) -> String {
    idp.sign(&claims(idp, AUDIENCE, index))
}

/// The claims of [`token`], for `audience`.
fn claims(idp: &DevIdp, audience: &str, index: usize) -> Map<String, Value> {
    let mut claims = idp.claims(audience, "load-user");
    let day_later = srrrs_edge::auth::unix_seconds() + 24 * 3600;
    claims.insert("exp".into(), json!(day_later));
    claims.insert("department".into(), json!("engineering"));
    claims.insert("clearance_level".into(), json!("high"));
    claims.insert("jti".into(), json!(format!("load-{index}")));
    claims
}
