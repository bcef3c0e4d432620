//! srrrs-edge in front of the proxies people already run, and behind a load balancer:
//! PROXY protocol headers to nginx and HAProxy from Debian's packages (and to a
//! backend in this test that reads every TLV), PROXY headers read from HAProxy in
//! front, and the device described in Envoy's and nginx's header formats.
//!
//! Clients connect from 127.0.0.2, so that the client's address differs from the
//! gateway's (127.0.0.1) wherever a peer reports one.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use srrrs_edge::demo::pki::{Authority, CertRequest, IssuedCert};

const CLIENT_IP: &str = "127.0.0.2";

/// The gateway on the default mTLS config with `backends` (YAML list entries).
fn gateway_with(pki: &TestPki, backends: &[String], extra: &str) -> (Gateway, u16) {
    let port = free_port();
    let config = pki.mtls_config(port, &[]).replace(
        "backends: []",
        // No pooled backend connections: each request goes to the next backend in turn.
        &format!(
            "backends: [{}]\n    keepalive_connections: 0",
            backends.join(", ")
        ),
    );
    let gateway = Gateway::start_with_admin(
        pki.dir.path(),
        &format!("{config}{extra}"),
        port,
        Some(free_port()),
        Driver::IoUring,
    );
    (gateway, port)
}

/// `GET path` with the good device's certificate, from [`CLIENT_IP`], through `port`:
/// the response body.
fn get_from_client_ip(pki: &TestPki, port: u16, path: &str, headers: &[&str]) -> String {
    get_as(pki, ("device-good", &pki.good), port, path, headers)
}

/// The same with another device's certificate.
fn get_as(
    pki: &TestPki,
    (name, device): (&str, &IssuedCert),
    port: u16,
    path: &str,
    headers: &[&str],
) -> String {
    let (cert, key) = pki.client_files(name, device);
    let resolve = format!("localhost:{port}:127.0.0.1");
    let mut extra = vec!["--interface", CLIENT_IP, "--resolve", &resolve, "--http1.1"];
    for header in headers {
        extra.extend(["-H", header]);
    }
    let url = format!("https://localhost:{port}{path}");
    let output = curl_mtls(pki, Some((&cert, &key)), &url, &extra);
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn leaf_der(pki: &TestPki) -> Vec<u8> {
    let first = CertificateDer::pem_slice_iter(pki.good.chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM");
    first.to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn nginx_behind_the_gateway_sees_the_client_address_in_proxy_protocol_v1_and_v2() {
    let pki = TestPki::new();
    let start = || {
        Nginx::start_with(pki.dir.path(), |port| {
            format!(
                "listen 127.0.0.1:{port} proxy_protocol;
    location / {{ return 200 \"client=$proxy_protocol_addr peer=$remote_addr\\n\"; }}"
            )
        })
    };
    let (v1, v2) = (start(), start());
    let backends = [
        format!("{{address: \"{}\", proxy_protocol: v1}}", v1.addr),
        format!("{{address: \"{}\", proxy_protocol: v2}}", v2.addr),
    ];
    let (_gateway, port) = gateway_with(&pki, &backends, "");
    // Round robin, per worker: within a few requests each version has been sent.
    let served = |nginx: &Nginx| {
        std::fs::read_to_string(nginx.root.join("access.log")).is_ok_and(|log| !log.is_empty())
    };
    for _ in 0..10 {
        let body = get_from_client_ip(&pki, port, "/who", &[]);
        assert_eq!(body, format!("client={CLIENT_IP} peer=127.0.0.1\n"));
        if served(&v1) && served(&v2) {
            return;
        }
    }
    panic!("a PROXY protocol version was never sent");
}

/// HAProxy from Debian, in the foreground, with `config` after a `defaults` section.
struct Haproxy {
    child: Child,
}

impl Haproxy {
    fn start(dir: &Path, config: &str, port: u16) -> Self {
        let path: PathBuf = dir.join(format!("haproxy-{port}.cfg"));
        let whole = format!(
            "global\n  maxconn 256\ndefaults\n  timeout connect 2s\n  timeout client 10s\n  \
             timeout server 10s\n{config}"
        );
        std::fs::write(&path, whole).expect("haproxy config");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (apt-get install haproxy)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            eventually(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "haproxy did not start"
        );
        Self { child }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn haproxy_behind_the_gateway_reads_the_proxy_v2_header_and_its_authority() {
    let pki = TestPki::new();
    let port = free_port();
    let _haproxy = Haproxy::start(
        pki.dir.path(),
        &format!(
            "frontend fe\n  mode http\n  bind 127.0.0.1:{port} accept-proxy\n  \
             http-request return status 200 content-type text/plain lf-string \
             \"src=%[src] authority=%[fc_pp_authority] proxied=%[fc_rcvd_proxy]\\n\"\n"
        ),
        port,
    );
    let backends = [format!(
        "{{address: \"127.0.0.1:{port}\", proxy_protocol: v2, certificate_tlv: 0xE0}}"
    )];
    let (_gateway, edge) = gateway_with(&pki, &backends, "");
    let body = get_from_client_ip(&pki, edge, "/", &[]);
    assert_eq!(
        body,
        format!("src={CLIENT_IP} authority=localhost proxied=1\n")
    );
}

/// A backend that keeps the PROXY header each connection begins with and answers one
/// request with `ok`.
struct HeaderRecorder {
    addr: SocketAddr,
    headers: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl HeaderRecorder {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let headers = Arc::new(Mutex::new(Vec::new()));
        let kept = headers.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut bytes = Vec::new();
                let mut chunk = [0u8; 4096];
                // The fixed 16 bytes say how long the rest of the header is.
                let whole = loop {
                    if bytes.len() >= 16 {
                        let length = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
                        if bytes.len() >= length
                            && bytes[length..].windows(4).any(|w| w == b"\r\n\r\n")
                        {
                            break length;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break 0,
                        Ok(read) => bytes.extend_from_slice(&chunk[..read]),
                    }
                };
                if whole == 0 {
                    continue;
                }
                kept.lock().unwrap().push(bytes[..whole].to_vec());
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                );
            }
        });
        Self { addr, headers }
    }
}

/// The TLVs of a version 2 header, read as proxy-protocol.txt lays them out.
fn tlvs(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut found = Vec::new();
    while bytes.len() >= 3 {
        let length = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        assert!(bytes.len() >= 3 + length, "a TLV runs past the header");
        found.push((bytes[0], bytes[3..3 + length].to_vec()));
        bytes = &bytes[3 + length..];
    }
    assert!(bytes.is_empty(), "trailing bytes after the TLVs");
    found
}

#[test]
fn the_proxy_v2_header_carries_the_client_address_and_the_tls_facts() {
    let pki = TestPki::new();
    let recorder = HeaderRecorder::start();
    let backends = [format!(
        "{{address: \"{}\", proxy_protocol: v2, certificate_tlv: 0xE5}}",
        recorder.addr
    )];
    let (_gateway, port) = gateway_with(&pki, &backends, "");
    assert_eq!(get_from_client_ip(&pki, port, "/", &[]), "ok\n");

    let headers = recorder.headers.lock().unwrap().clone();
    assert_eq!(headers.len(), 1);
    let header = &headers[0];
    assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(header[12], 0x21, "version 2, PROXY command");
    assert_eq!(header[13], 0x11, "TCP over IPv4");
    assert_eq!(&header[16..20], &[127, 0, 0, 2], "source address");
    assert_eq!(&header[20..24], &[127, 0, 0, 1], "destination address");
    assert_eq!(u16::from_be_bytes([header[26], header[27]]), port);
    let found = tlvs(&header[28..]);
    let value = |kind: u8| {
        let matching: Vec<&Vec<u8>> = (found.iter())
            .filter(|(k, _)| *k == kind)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(matching.len(), 1, "TLV {kind:#x} in {found:?}");
        matching[0].clone()
    };
    assert_eq!(value(0x01), b"http/1.1", "ALPN");
    assert_eq!(value(0x02), b"localhost", "authority: the SNI");
    assert_eq!(value(0xe5), leaf_der(&pki), "the client certificate");
    let ssl = value(0x20);
    assert_eq!(
        ssl[0],
        0x01 | 0x02 | 0x04,
        "SSL, certificate in connection and session"
    );
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
    let sub = tlvs(&ssl[5..]);
    assert!(sub.contains(&(0x21, b"TLSv1.3".to_vec())), "{sub:?}");
    assert!(sub.contains(&(0x22, b"device-good".to_vec())), "{sub:?}");
}

#[test]
fn behind_haproxy_send_proxy_v2_the_gateway_logs_and_forwards_the_original_client() {
    let pki = TestPki::new();
    let (backend, backend_addr) = echo_backend();
    let edge = free_port();
    let front = free_port();
    let log = pki.path("access.log");
    let config = pki
        .mtls_config(edge, &[backend_addr])
        .replace(
            &format!("listen: [\"127.0.0.1:{edge}\"]"),
            &format!(
                "listen: [{{address: \"127.0.0.1:{edge}\", proxy_protocol: {{trusted: [\"127.0.0.5/32\"]}}}}]"
            ),
        );
    let config = format!("{config}access_log: {{path: \"{}\"}}\n", log.display());
    let gateway = Gateway::start_with_admin(
        pki.dir.path(),
        &config,
        edge,
        Some(free_port()),
        Driver::IoUring,
    );
    let _haproxy = Haproxy::start(
        pki.dir.path(),
        &format!(
            "frontend fe\n  mode tcp\n  bind 127.0.0.1:{front}\n  default_backend edge\n\
             backend edge\n  mode tcp\n  server edge 127.0.0.1:{edge} send-proxy-v2 source 127.0.0.5\n"
        ),
        front,
    );
    get_from_client_ip(
        &pki,
        front,
        "/through-haproxy",
        &["X-Forwarded-For: 6.6.6.6"],
    );
    let seen = backend.received();
    assert_eq!(seen.len(), 1);
    let forwarded: Vec<&str> = (seen[0].headers.iter())
        .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(forwarded, [CLIENT_IP]);
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|text| text.contains(&format!("client={CLIENT_IP}:")))
    }));

    // A PROXY header from an address the listener does not trust: closed, counted, and
    // nothing forwarded.
    let untrusted = "srrrs_tls_handshake_failures_total{reason=\"untrusted_proxy_header\"}";
    let before = gateway.metric(untrusted);
    let mut spoofing = connect_from("127.0.0.3", gateway.addr);
    let _ = spoofing.write_all(b"PROXY TCP4 6.6.6.6 127.0.0.1 1111 2222\r\n\x16\x03\x01");
    assert_closed(&mut spoofing);
    assert!(eventually(Duration::from_secs(5), || gateway
        .metric(untrusted)
        == before + 1.0));

    // From the trusted address, bytes that are no PROXY header: closed and counted.
    let bad = "srrrs_connections_shed_total{limit=\"bad_proxy_header\"}";
    let mut garbled = connect_from("127.0.0.5", gateway.addr);
    let _ = garbled.write_all(b"\x16\x03\x01\x02\x00hello");
    assert_closed(&mut garbled);
    assert!(eventually(Duration::from_secs(5), || gateway.metric(bad) == 1.0));
    assert_eq!(backend.received().len(), 1);
}

fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from: SocketAddr = format!("{ip}:0").parse().expect("address");
    socket.bind(&from.into()).expect("bind");
    socket.connect(&to.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
}

fn assert_closed(stream: &mut TcpStream) {
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    assert!(
        read.is_ok() || started.elapsed() < Duration::from_secs(4),
        "{read:?}"
    );
    assert!(rest.is_empty(), "answered with {rest:?}");
}

/// Envoy's reading of `X-Forwarded-Client-Cert`: elements split at `,`, pairs at `;`,
/// each `key=value`, a value in double quotes taken literally but for `\"` and `\\`.
fn parse_xfcc(value: &str) -> Vec<Vec<(String, String)>> {
    let mut elements = vec![Vec::new()];
    let (mut key, mut current) = (String::new(), String::new());
    let (mut quoted, mut escaped, mut in_value) = (false, false, false);
    let finish_pair =
        |elements: &mut Vec<Vec<(String, String)>>, key: &mut String, current: &mut String| {
            elements
                .last_mut()
                .unwrap()
                .push((std::mem::take(key), std::mem::take(current)));
        };
    for c in value.chars() {
        match (quoted, escaped, c) {
            // Inside quotes a backslash escapes the next character; both are kept,
            // as a reader of Envoy's header takes the quoted text as it is.
            (true, true, _) => {
                current.push(c);
                escaped = false;
            }
            (true, false, '\\') => {
                current.push(c);
                escaped = true;
            }
            (_, false, '"') => quoted = !quoted,
            (false, _, '=') if !in_value => {
                key = std::mem::take(&mut current);
                in_value = true;
            }
            (false, _, ';') => {
                finish_pair(&mut elements, &mut key, &mut current);
                in_value = false;
            }
            (false, _, ',') => {
                finish_pair(&mut elements, &mut key, &mut current);
                elements.push(Vec::new());
                in_value = false;
            }
            _ => current.push(c),
        }
    }
    assert!(!quoted, "unterminated quotes in {value}");
    finish_pair(&mut elements, &mut key, &mut current);
    elements
}

fn url_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = std::str::from_utf8(&bytes[at + 1..at + 3]).expect("hex");
            out.push(u8::from_str_radix(hex, 16).expect("hex digit"));
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    out
}

fn headers_named<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    (headers.iter())
        .filter(|(field, _)| field.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
        .collect()
}

#[test]
fn xfcc_and_nginx_formats_describe_the_device_and_client_copies_are_removed() {
    let pki = TestPki::new();
    let (xfcc_backend, xfcc_addr) = echo_backend();
    let (nginx_backend, nginx_addr) = echo_backend();
    let backends = [
        format!("{{address: \"{xfcc_addr}\", identity_format: xfcc}}"),
        format!("{{address: \"{nginx_addr}\", identity_format: nginx}}"),
    ];
    let (_gateway, port) = gateway_with(&pki, &backends, "");
    let forged = [
        "X-Forwarded-Client-Cert: Hash=00;Subject=\"CN=admin\"",
        "X-SSL-Client-Verify: SUCCESS",
        "X-SSL-Client-S-DN: CN=admin",
        "x_ssl_client_cert: forged",
    ];
    for _ in 0..10 {
        get_from_client_ip(&pki, port, "/described", &forged);
        if !xfcc_backend.received().is_empty() && !nginx_backend.received().is_empty() {
            break;
        }
    }
    let leaf = leaf_der(&pki);
    let sha256 = hex(digest::digest(&digest::SHA256, &leaf).as_ref());
    let sha1 = hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &leaf).as_ref());
    let pem_of = |value: &str| {
        let decoded = url_decode(value);
        let cert = CertificateDer::from_pem_slice(&decoded).expect("a PEM certificate");
        cert.to_vec()
    };

    let xfcc = &xfcc_backend.received()[0].headers;
    let values = headers_named(xfcc, "x-forwarded-client-cert");
    assert_eq!(values.len(), 1, "{xfcc:?}");
    let elements = parse_xfcc(values[0]);
    assert_eq!(elements.len(), 1, "{elements:?}");
    let get = |key: &str| -> Vec<&str> {
        (elements[0].iter())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("Hash"), [sha256.as_str()]);
    assert_eq!(pem_of(get("Cert")[0]), leaf);
    assert_eq!(get("Subject").len(), 1);
    assert!(get("Subject")[0].contains("CN=device-good"), "{elements:?}");
    assert!(headers_named(xfcc, "x-ssl-client-verify").is_empty());
    assert!(headers_named(xfcc, "x-ssl-client-cert").is_empty());
    assert!(headers_named(xfcc, "x_ssl_client_cert").is_empty());

    let nginx = &nginx_backend.received()[0].headers;
    let one = |name: &str| {
        let values = headers_named(nginx, name);
        assert_eq!(values.len(), 1, "{name} in {nginx:?}");
        values[0].to_owned()
    };
    assert_eq!(one("x-ssl-client-verify"), "SUCCESS");
    assert!(one("x-ssl-client-s-dn").contains("CN=device-good"));
    assert!(one("x-ssl-client-i-dn").contains("CN=test device CA"));
    assert_eq!(one("x-ssl-client-fingerprint"), sha1);
    assert_eq!(pem_of(&one("x-ssl-client-cert")), leaf);
    let serial = one("x-ssl-client-serial");
    assert!(serial
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
    assert!(headers_named(nginx, "x-forwarded-client-cert").is_empty());
}

#[test]
fn the_nginx_and_xfcc_formats_say_what_nginx_itself_reads_from_the_certificate() {
    let pki = TestPki::new();
    // RFC 4514 specials and a non-ASCII letter in the name, and a SPIFFE ID.
    let request = CertRequest::client("d\u{e9}vice 7, \"lab\"+bench; <x>")
        .uri("spiffe://example.test/device/7");
    let device = pki.device_ca.issue(&request);
    let dir = pki.dir.path().display().to_string();
    let direct = Nginx::start_with(pki.dir.path(), |port| {
        format!(
            "listen 127.0.0.1:{port} ssl;
    ssl_certificate {dir}/server.pem;
    ssl_certificate_key {dir}/server.key;
    ssl_client_certificate {dir}/device-root.pem;
    ssl_verify_client on;
    ssl_verify_depth 3;
    location / {{ return 200 \"$ssl_client_verify\\n$ssl_client_s_dn\\n$ssl_client_i_dn\\n\
$ssl_client_serial\\n$ssl_client_fingerprint\\n\"; }}"
        )
    });
    let (cert, key) = pki.client_files("device-7", &device);
    let url = format!("https://localhost:{}/", direct.addr.port());
    let output = curl_mtls(&pki, Some((&cert, &key)), &url, &[]);
    let seen = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 5, "nginx answered {seen:?}");
    let [verify, subject, issuer, serial, fingerprint] = lines[..] else {
        unreachable!()
    };
    assert!(
        subject.contains("\\C3\\A9"),
        "nginx escapes non-ASCII bytes: {subject}"
    );

    let (nginx_style, nginx_addr) = echo_backend();
    let (xfcc_style, xfcc_addr) = echo_backend();
    let backends = [
        format!("{{address: \"{nginx_addr}\", identity_format: nginx}}"),
        format!("{{address: \"{xfcc_addr}\", identity_format: xfcc}}"),
    ];
    let (_gateway, port) = gateway_with(&pki, &backends, "");
    for _ in 0..10 {
        get_as(&pki, ("device-7", &device), port, "/", &[]);
        if !nginx_style.received().is_empty() && !xfcc_style.received().is_empty() {
            break;
        }
    }
    let headers = &nginx_style.received()[0].headers;
    let one = |name: &str| headers_named(headers, name).concat();
    assert_eq!(one("x-ssl-client-verify"), verify);
    assert_eq!(one("x-ssl-client-s-dn"), subject);
    assert_eq!(one("x-ssl-client-i-dn"), issuer);
    assert_eq!(one("x-ssl-client-serial"), serial);
    assert_eq!(one("x-ssl-client-fingerprint"), fingerprint);

    let headers = &xfcc_style.received()[0].headers;
    let elements = parse_xfcc(&headers_named(headers, "x-forwarded-client-cert").concat());
    let get = |key: &str| -> Vec<String> {
        (elements[0].iter())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(get("Subject"), [subject.to_owned()]);
    assert_eq!(get("URI"), ["spiffe://example.test/device/7".to_owned()]);
    let chain: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&url_decode(&get("Chain")[0]))
        .map(|cert| cert.expect("PEM").to_vec())
        .collect();
    let sent: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(device.chain_pem.as_bytes())
        .map(|cert| cert.expect("PEM").to_vec())
        .collect();
    assert_eq!(chain, sent, "the chain, leaf first");
}

#[test]
fn proxy_protocol_and_format_settings_are_checked_with_their_fields() {
    let pki = TestPki::new();
    let config = pki
        .mtls_config(free_port(), &[])
        .replace(
            "listen: [\"",
            "listen: [{address: \"127.0.0.1:1\", proxy_protocol: {trusted: [\"10.0.0.0/40\"]}}, \"",
        )
        .replace(
            "backends: []",
            "backends: [{address: \"unix:/run/app.sock\", proxy_protocol: v1}, \
             {address: \"127.0.0.1:2\", certificate_tlv: 0xE0}, \
             {address: \"127.0.0.1:3\", proxy_protocol: v2, certificate_tlv: 7}]",
        );
    let path = pki.write("drop-in-bad.yaml", &config);
    let (code, stderr) = check_config(&path);
    assert_eq!(code, Some(1), "{stderr}");
    for expected in [
        "listen[0].proxy_protocol.trusted: \"10.0.0.0/40\": the prefix length must be 0 to 32",
        "backends[0]: a Unix socket backend takes no PROXY protocol header",
        "backends[1]: certificate_tlv needs proxy_protocol: v2",
        "backends[2]: certificate_tlv 7 is outside the custom range",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from:\n{stderr}"
        );
    }
}

#[test]
fn tls_to_an_nginx_backend_with_its_own_ca_and_a_client_certificate_and_502_with_a_wrong_ca() {
    let pki = TestPki::new();
    let backend_root = Authority::root("backend root");
    let server = backend_root.issue(&CertRequest::server(&["backend.test"]));
    let gateway_root = Authority::root("gateway client root");
    let gateway_cert = gateway_root.issue(&CertRequest::client("edge-gateway"));
    for (name, contents) in [
        ("backend.pem", &server.chain_pem),
        ("backend.key", &server.key_pem),
        ("backend-root.pem", &backend_root.cert_pem),
        ("gateway-client.pem", &gateway_cert.chain_pem),
        ("gateway-client.key", &gateway_cert.key_pem),
        ("gateway-root.pem", &gateway_root.cert_pem),
    ] {
        pki.write(name, contents);
    }
    let dir = pki.dir.path().display().to_string();
    let nginx = Nginx::start_with(pki.dir.path(), |port| {
        format!(
            "listen 127.0.0.1:{port} ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {dir}/backend.pem;
    ssl_certificate_key {dir}/backend.key;
    ssl_client_certificate {dir}/gateway-root.pem;
    ssl_verify_client on;
    location / {{ return 200 \"$ssl_protocol sni=$ssl_server_name client=$ssl_client_s_dn\\n\"; }}"
        )
    });
    let backend = |ca: &str| {
        format!(
            "{{address: \"{}\", tls: {{ca_file: {ca}, server_name: backend.test, \
             client_cert: gateway-client.pem, client_key: gateway-client.key}}}}",
            nginx.addr
        )
    };

    let (_good, port) = gateway_with(&pki, &[backend("backend-root.pem")], "");
    for path in ["/first", "/second"] {
        let body = get_from_client_ip(&pki, port, path, &[]);
        assert_eq!(
            body,
            "TLSv1.3 sni=backend.test client=CN=edge-gateway,O=srrrs dev PKI\n"
        );
    }

    // A TLS backend that reads PROXY headers gets the header first, before the
    // handshake; its HTTP health checks (a LOCAL header, then TLS) pass.
    let proxied = Nginx::start_with(pki.dir.path(), |port| {
        format!(
            "listen 127.0.0.1:{port} ssl proxy_protocol;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {dir}/backend.pem;
    ssl_certificate_key {dir}/backend.key;
    location / {{ return 200 \"$ssl_protocol client=$proxy_protocol_addr uri=$request_uri\\n\"; }}"
        )
    });
    let backends = [format!(
        "{{address: \"{}\", proxy_protocol: v2, tls: {{ca_file: backend-root.pem, \
         server_name: backend.test}}}}",
        proxied.addr
    )];
    let checks = "    health_check: {interval: 100ms, http_path: /health}\n";
    let (with_header, port) = gateway_with(&pki, &backends, checks);
    let body = get_from_client_ip(&pki, port, "/proxied", &[]);
    assert_eq!(body, format!("TLSv1.3 client={CLIENT_IP} uri=/proxied\n"));
    let checked = || {
        std::fs::read_to_string(proxied.root.join("access.log"))
            .is_ok_and(|log| log.contains("GET /health"))
    };
    assert!(eventually(Duration::from_secs(5), checked));
    let up = "srrrs_backend_up{backend=\"".to_owned() + &proxied.addr.to_string();
    assert_eq!(
        with_header.metric(&format!("{up}\",ingress=\"localhost\"}}")),
        1.0
    );

    // A gateway that trusts another CA for this backend refuses its certificate: 502.
    let (wrong, port) = gateway_with(&pki, &[backend("server-root.pem")], "");
    let body = get_from_client_ip(&pki, port, "/wrong-ca", &[]);
    assert!(body.contains("no backend could be reached"), "{body}");
    let log = wrong.log_text();
    assert!(log.contains("TLS:"), "{log}");
    assert_eq!(
        wrong.metric("srrrs_gateway_responses_total{status=\"502\"}"),
        1.0
    );
}
