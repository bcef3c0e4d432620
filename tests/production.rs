//! What an operator relies on in production, against the real binary: limits that keep
//! slow or flooding clients from taking a worker, readiness, and a drain on SIGTERM
//! that lets requests in flight finish.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use srrrs_edge::demo::idp::DevIdp;
use srrrs_edge::demo::pki::{CertRequest, KeyKind};

on_both_drivers!(
    a_slowloris_client_gets_408_at_the_head_timeout_while_others_are_served,
    sigterm_lets_a_slow_request_finish_closes_idle_connections_and_refuses_new_ones,
    a_handshake_flood_beyond_the_cap_waits_while_admitted_clients_are_served,
    connections_over_the_per_source_and_per_worker_caps_are_closed_and_counted,
    readyz_waits_for_the_idps_keys_and_turns_unready_when_draining,
    metrics_parse_as_prometheus_text_and_move_with_traffic,
    a_new_server_certificate_goes_into_force_on_sighup_under_load_and_a_corrupt_one_does_not,
    the_access_log_has_a_line_per_request_and_per_refused_connection_and_never_a_token,
    a_killed_backend_fails_its_checks_and_traffic_moves_to_the_healthy_one,
    without_checks_a_dead_backend_is_ejected_after_consecutive_connect_failures,
    least_connections_sends_new_requests_past_a_busy_backend,
    a_later_head_arriving_slowly_within_its_timeout_is_not_cut_by_the_idle_timeout,
    an_exempt_path_needs_no_token_and_only_that_path,
    a_changed_jwks_file_goes_into_force_without_a_restart,
    a_silent_backend_gets_504_and_a_saturated_pool_503_with_retry_after,
);

/// The test mTLS config with `limits` (a YAML flow mapping) added.
fn config_with_limits(pki: &TestPki, port: u16, backends: &[String], limits: &str) -> String {
    format!("{}limits: {limits}\n", pki.mtls_config(port, backends))
}

fn start(pki: &TestPki, backends: &[String], limits: &str, driver: Driver) -> Gateway {
    let port = free_port();
    let config = config_with_limits(pki, port, backends, limits);
    Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver)
}

fn a_slowloris_client_gets_408_at_the_head_timeout_while_others_are_served(driver: Driver) {
    let pki = TestPki::new();
    let (backend, backend_addr) = echo_backend();
    let gateway = start(&pki, &[backend_addr], "{request_head_timeout: 2s}", driver);
    let client = Client::new(&pki, Some(&pki.good));

    let slow = std::thread::spawn({
        let (client, addr) = (client.clone(), gateway.addr);
        move || {
            let mut stream = client.connect(addr).expect("handshake");
            stream
                .sock
                .set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            let started = Instant::now();
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            // One byte a second, looking for an answer in between.
            for byte in b"GET /slow HTTP/1.1\r\nhost: localhost\r\nx-slow: 1\r\n\r\n" {
                if stream
                    .write_all(&[*byte])
                    .and_then(|()| stream.flush())
                    .is_err()
                {
                    break;
                }
                match stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(read) => {
                        answer.extend_from_slice(&chunk[..read]);
                        break;
                    }
                    Err(error)
                        if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            let answered_after = started.elapsed();
            stream
                .sock
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let _ = stream.read_to_end(&mut answer);
            (
                String::from_utf8_lossy(&answer).into_owned(),
                answered_after,
            )
        }
    });

    // Meanwhile other clients are served.
    for _ in 0..10 {
        let response = client.get(gateway.addr, "/meanwhile").expect("served");
        assert_eq!(status_of(&response), 200, "{response}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (answer, after) = slow.join().expect("slow client");
    assert_eq!(status_of(&answer), 408, "{answer:?}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(6),
        "answered after {after:?}"
    );
    assert!(backend.received().iter().all(|seen| seen.path != "/slow"));
    assert_eq!(
        gateway.metric("srrrs_gateway_responses_total{status=\"408\"}"),
        1.0
    );
}

fn sigterm_lets_a_slow_request_finish_closes_idle_connections_and_refuses_new_ones(driver: Driver) {
    let pki = TestPki::new();
    // Held until the drain has begun, so that the slow requests are in flight then.
    let backend = SlowBackend::start(Duration::from_secs(60));
    let mut gateway = start(
        &pki,
        std::slice::from_ref(&backend.addr),
        "{drain_timeout: 30s}",
        driver,
    );
    let client = Client::new(&pki, Some(&pki.good));

    // A kept-alive connection, idle between requests.
    let mut idle = client.connect(gateway.addr).expect("handshake");
    send_request(&mut idle, "/first", &[]).expect("send");
    let first = read_one_response(&mut idle);
    assert_eq!(status_of(&first), 200, "{first}");

    // SIGTERM arrives while a slow request waits for its response.
    let in_flight = std::thread::spawn({
        let (client, addr) = (client.clone(), gateway.addr);
        move || client.get(addr, "/slow")
    });
    // And one on a kept-alive connection, which should learn the connection closes.
    let mut kept = client.connect(gateway.addr).expect("handshake");
    send_request(&mut kept, "/slow-kept", &[]).expect("send");
    assert!(eventually(Duration::from_secs(5), || backend
        .started
        .load(Ordering::SeqCst)
        == 2));
    let terminated = Instant::now();
    gateway.terminate();

    // New connections are refused, and the idle one is closed, right away.
    assert!(
        eventually(Duration::from_secs(2), || TcpStream::connect(gateway.addr)
            .is_err()),
        "still accepting after SIGTERM"
    );
    assert_closed_silently(&mut idle, Duration::from_secs(2));
    assert!(terminated.elapsed() < Duration::from_secs(2));

    // The request in flight finishes; then the gateway exits, long before the timeout.
    backend.release();
    let response = in_flight.join().expect("client").expect("response");
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.ends_with("done\n"), "{response}");
    read_last_response(&mut kept);
    let status = gateway.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status}");
    assert!(terminated.elapsed() < Duration::from_secs(10));
    let log = gateway.log_text();
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("drained; stopping"), "{log}");
}

fn a_handshake_flood_beyond_the_cap_waits_while_admitted_clients_are_served(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let gateway = start(
        &pki,
        &[backend_addr],
        "{max_handshakes_per_worker: 4, handshake_timeout: 30s}",
        driver,
    );
    let client = Client::new(&pki, Some(&pki.good));
    let mut admitted = client.connect(gateway.addr).expect("handshake");
    let handshaking = || gateway.metric("srrrs_handshakes_in_progress");

    // 300 connections that send nothing hold no handshake place: new clients get in.
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(gateway.addr).expect("connect"))
        .collect();
    let started = Instant::now();
    let response = client
        .get(gateway.addr, "/past-the-silent")
        .expect("served");
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(handshaking(), 0.0);
    drop(silent);

    // 40 connections that start a handshake and stall: at most 4 per worker run at
    // once, the admitted client is served meanwhile, and a stalled one gives its place
    // up after a second, so a new client gets in within the flood's length.
    let stalled: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut stream = TcpStream::connect(gateway.addr).expect("connect");
            stream
                .write_all(&[0x16, 0x03, 0x01])
                .expect("a record's first bytes");
            stream
        })
        .collect();
    let mut most = 0.0f64;
    for index in 0..20 {
        send_request(&mut admitted, &format!("/during-{index}"), &[]).expect("send");
        let response = read_one_response(&mut admitted);
        assert_eq!(status_of(&response), 200, "{response}");
        most = most.max(handshaking());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(most > 0.0, "the flood never reached the handshake step");
    assert!(
        most <= 8.0,
        "{most} handshakes at once with a cap of 4 per worker"
    );
    let started = Instant::now();
    let response = client
        .get(gateway.addr, "/past-the-stalled")
        .expect("served");
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(gateway.metric("srrrs_connections_shed_total{limit=\"stalled_handshake\"}") > 0.0);
    drop(stalled);
}

fn connections_over_the_per_source_and_per_worker_caps_are_closed_and_counted(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let client = Client::new(&pki, Some(&pki.good));
    let shed = |gateway: &Gateway, limit: &str| {
        gateway.metric(&format!(
            "srrrs_connections_shed_total{{limit=\"{limit}\"}}"
        ))
    };

    for (limits, limit) in [
        ("{max_connections_per_source: 3}", "source_connections"),
        ("{max_connections_per_worker: 3}", "worker_connections"),
    ] {
        // One worker, so that the per-worker cap is the process's.
        let port = free_port();
        let config = config_with_limits(&pki, port, std::slice::from_ref(&backend_addr), limits)
            .replace("workers: 2", "workers: 1");
        let gateway =
            Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);
        assert!(eventually(Duration::from_secs(5), || gateway
            .metric("srrrs_connections_open")
            == 0.0));
        let mut held: Vec<TlsStream> = (0..3)
            .map(|_| client.connect(gateway.addr).expect("within the cap"))
            .collect();
        let over = client.get(gateway.addr, "/over");
        assert!(over.is_err(), "{limits}: {over:?}");
        assert!(shed(&gateway, limit) >= 1.0, "{limits}");

        // The held connections still work, and a closed one frees its place.
        send_request(&mut held[0], "/held", &[]).expect("send");
        assert_eq!(status_of(&read_one_response(&mut held[0])), 200);
        held.pop();
        assert!(
            eventually(Duration::from_secs(5), || client
                .get(gateway.addr, "/again")
                .is_ok_and(|response| status_of(&response) == 200)),
            "{limits}"
        );
    }
}

fn readyz_waits_for_the_idps_keys_and_turns_unready_when_draining(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();

    // Tokens are checked, but the IdP's keys cannot be fetched: alive, not ready.
    let port = free_port();
    let dead_idp = format!("https://127.0.0.1:{}/jwks.json", free_port());
    let auth = format!(
        "  application_auth:
    type: jwt
    issuer: https://idp.test
    audience: edge
    jwks_uri: \"{dead_idp}\"
    fetch_ca_file: server-root.pem
  upstream:"
    );
    let config = pki
        .mtls_config(port, std::slice::from_ref(&backend_addr))
        .replace("  upstream:", &auth);
    let waiting =
        Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);
    let admin = waiting.admin.expect("admin");
    assert!(http_get_plain(admin, "/healthz").starts_with("HTTP/1.1 200"));
    let readyz = http_get_plain(admin, "/readyz");
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    assert!(readyz.contains("JWKS"), "{readyz}");
    drop(waiting);

    // Without tokens nothing is awaited; draining makes it unready.
    let backend = SlowBackend::start(Duration::from_secs(60));
    let gateway = start(
        &pki,
        std::slice::from_ref(&backend.addr),
        "{drain_timeout: 10s}",
        driver,
    );
    let admin = gateway.admin.expect("admin");
    let readyz = http_get_plain(admin, "/readyz");
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    let client = Client::new(&pki, Some(&pki.good));
    let in_flight = std::thread::spawn({
        let addr = gateway.addr;
        move || client.get(addr, "/slow")
    });
    assert!(eventually(Duration::from_secs(5), || backend
        .started
        .load(Ordering::SeqCst)
        == 1));
    gateway.terminate();
    assert!(eventually(Duration::from_secs(2), || {
        let readyz = http_get_plain(admin, "/readyz");
        readyz.starts_with("HTTP/1.1 503") && readyz.contains("draining")
    }));
    backend.release();
    let response = in_flight.join().expect("client").expect("response");
    assert_eq!(status_of(&response), 200, "{response}");
}

fn metrics_parse_as_prometheus_text_and_move_with_traffic(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let gateway = start(&pki, &[backend_addr], "{}", driver);
    let scrape = || {
        let text = gateway.metrics();
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
    };
    let value = |scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .filter(|sample| sample.metric == name)
            .filter(|sample| label.is_none_or(|(key, value)| sample.labels.get(key) == Some(value)))
            .map(|sample| match sample.value {
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value) => value,
                _ => f64::NAN,
            })
            .sum::<f64>()
    };

    let before = scrape();
    assert!(
        before.samples.len() > 20,
        "{} samples",
        before.samples.len()
    );
    // Every family has its HELP and TYPE.
    for sample in &before.samples {
        let family = ["_total", "_sum", "_count", "_bucket"]
            .iter()
            .find_map(|suffix| sample.metric.strip_suffix(suffix))
            .unwrap_or(&sample.metric);
        assert!(
            before.docs.contains_key(family) || before.docs.contains_key(&sample.metric),
            "no HELP for {}",
            sample.metric
        );
    }

    let client = Client::new(&pki, Some(&pki.good));
    for _ in 0..5 {
        let response = client.get(gateway.addr, "/counted").expect("admitted");
        assert_eq!(status_of(&response), 200, "{response}");
    }
    let stranger = Client::new(&pki, None);
    let _ = stranger.get(gateway.addr, "/refused");
    // The client sees the alert a moment before the gateway counts it.
    let required = ("reason", "certificate_required");
    let failures = "srrrs_tls_handshake_failures_total";
    let refused_before = value(&before, failures, Some(required));
    let sample = "srrrs_tls_handshake_failures_total{reason=\"certificate_required\"}";
    assert!(eventually(Duration::from_secs(5), || gateway
        .metric_or_zero(sample)
        > refused_before));

    let after = scrape();
    let moved = |name: &str, label: Option<(&str, &str)>| {
        value(&after, name, label) - value(&before, name, label)
    };
    assert_eq!(moved("srrrs_requests_forwarded_total", None), 5.0);
    assert!(moved("srrrs_connections_accepted_total", None) >= 6.0);
    assert!(moved("srrrs_tls_handshakes_total", None) >= 5.0);
    assert_eq!(
        moved(
            "srrrs_tls_handshake_failures_total",
            Some(("reason", "certificate_required"))
        ),
        1.0
    );
    assert_eq!(
        value(&after, "srrrs_io_driver", Some(("driver", driver.flag()))),
        1.0
    );
    // Latency histograms and their quantiles, which workers hand over once a second.
    let five_requests = "srrrs_latency_seconds_count{operation=\"request\"} 5\n";
    assert!(
        eventually(Duration::from_secs(3), || gateway
            .metrics()
            .contains(five_requests)),
        "{}",
        gateway.metrics()
    );
    let text = gateway.metrics();
    assert!(
        text.contains("srrrs_latency_seconds_bucket{operation=\"handshake\",le=\"+Inf\"}"),
        "{text}"
    );
    let p99 = value(
        &scrape(),
        "srrrs_latency_quantile_seconds",
        Some(("quantile", "0.99")),
    );
    assert!(p99 > 0.0 && p99 < 60.0, "{p99}");
}

/// The leaf certificate a fresh client (no session to resume) is shown.
fn presented_leaf(pki: &TestPki, addr: std::net::SocketAddr) -> Vec<u8> {
    let stream = Client::new(pki, Some(&pki.good))
        .connect(addr)
        .expect("handshake");
    let chain = stream.conn.peer_certificates().expect("server chain");
    chain[0].to_vec()
}

/// Replaces a file the way deployment tools do: write beside it, then rename.
fn replace_file(pki: &TestPki, name: &str, contents: &str) {
    let staged = pki.write(&format!("{name}.new"), contents);
    std::fs::rename(staged, pki.path(name)).expect("rename");
}

fn a_new_server_certificate_goes_into_force_on_sighup_under_load_and_a_corrupt_one_does_not(
    driver: Driver,
) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let gateway = start(&pki, &[backend_addr], "{}", driver);
    let original = presented_leaf(&pki, gateway.addr);

    // Continuous load: new connections (full and resumed handshakes) and requests.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (client, addr, stop) = (
                Client::new(&pki, Some(&pki.good)),
                gateway.addr,
                stop.clone(),
            );
            std::thread::spawn(move || {
                let (mut served, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    match client.get(addr, "/during-reload") {
                        Ok(response) if status_of(&response) == 200 => served += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (served, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let renewed = pki.server_root.issue(&CertRequest::server(&[
        "localhost",
        "127.0.0.1",
        "renewed.test",
    ]));
    replace_file(&pki, "server.key", &renewed.key_pem);
    replace_file(&pki, "server.pem", &renewed.chain_pem);
    gateway.reload();
    assert!(
        eventually(Duration::from_secs(5), || presented_leaf(
            &pki,
            gateway.addr
        ) == renewed.der.to_vec()),
        "the renewed certificate was never presented"
    );
    assert_ne!(original, renewed.der.to_vec());

    // A corrupt certificate file: the renewed pair stays in force.
    let failures = || {
        gateway
            .log_text()
            .matches("server certificate reload failed")
            .count()
    };
    // Not PEM; a good leaf followed by a block that is not a certificate; a
    // certificate that has expired: each keeps the renewed pair in force.
    let now = time::OffsetDateTime::now_utc();
    let expired = pki.server_root.issue(
        &CertRequest::server(&["localhost", "127.0.0.1"])
            .valid(now - time::Duration::days(2), now - time::Duration::days(1)),
    );
    let bad_files = [
        (
            "-----BEGIN CERTIFICATE-----\nnot base64\n".to_owned(),
            &renewed.key_pem,
        ),
        (
            format!(
                "{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                renewed.chain_pem
            ),
            &renewed.key_pem,
        ),
        (expired.chain_pem.clone(), &expired.key_pem),
    ];
    for (chain, key) in bad_files {
        let failed_before = failures();
        replace_file(&pki, "server.key", key);
        replace_file(&pki, "server.pem", &chain);
        gateway.reload();
        assert!(
            eventually(Duration::from_secs(5), || failures() > failed_before),
            "{chain}"
        );
        assert_eq!(presented_leaf(&pki, gateway.addr), renewed.der.to_vec());
    }

    stop.store(true, Ordering::SeqCst);
    for handle in load {
        let (served, failed) = handle.join().expect("load thread");
        assert!(
            failed.is_empty(),
            "{} failed requests: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert!(served > 10, "only {served} requests served");
    }
    let log = gateway.log_text();
    assert!(log.contains("server certificate reloaded"), "{log}");
}

/// A dev IdP and the test mTLS config checking its tokens (issuer `https://idp.test`,
/// audience `edge`), with `extra` lines added to `application_auth`.
fn with_tokens(pki: &TestPki, port: u16, backend: String, extra: &str) -> (DevIdp, String) {
    let idp = DevIdp::new("https://idp.test", "k1", KeyKind::EcdsaP256);
    pki.write("jwks.json", &idp.jwks());
    let auth = format!(
        "  application_auth:
    type: jwt
    issuer: https://idp.test
    audience: edge
    jwks_file: jwks.json
{extra}  upstream:"
    );
    let config = pki
        .mtls_config(port, &[backend])
        .replace("  upstream:", &auth);
    (idp, config)
}

fn the_access_log_has_a_line_per_request_and_per_refused_connection_and_never_a_token(
    driver: Driver,
) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let port = free_port();
    let log_path = pki.path("access.log");
    let (idp, config) = with_tokens(&pki, port, backend_addr, "");
    let config = format!(
        "{config}access_log: {{path: \"{}\", format: json}}\n",
        log_path.display()
    );
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let token = idp.sign(&idp.claims("edge", "alice"));
    let bearer = format!("Bearer {token}");
    let client = Client::new(&pki, Some(&pki.good));

    // Two requests on one connection, the second refused for its token.
    let mut stream = client.connect(gateway.addr).expect("handshake");
    send_request(
        &mut stream,
        "/hello?secret=1",
        &[("authorization", bearer.as_str())],
    )
    .expect("send");
    let first = read_one_response(&mut stream);
    assert_eq!(status_of(&first), 200, "{first}");
    send_request(&mut stream, "/no-token", &[]).expect("send");
    let second = read_to_end(&mut stream).expect("refusal");
    assert_eq!(status_of(&second), 401, "{second}");
    // Bytes that make no request; a connection without a certificate.
    let malformed = client
        .exchange(gateway.addr, b"NOT A REQUEST\r\n\r\n")
        .expect("answer");
    assert_eq!(status_of(&malformed), 400, "{malformed}");
    let _ = Client::new(&pki, None).get(gateway.addr, "/anonymous");

    let lines = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(5), || lines().lines().count() >= 4),
        "{}",
        lines()
    );
    let text = lines();
    assert!(!text.contains(&token), "a token reached the access log");
    assert!(
        !text.contains("secret"),
        "a query string reached the access log"
    );
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let find = |status: u64| {
        records
            .iter()
            .find(|record| record["status"] == status)
            .unwrap_or_else(|| panic!("no line with status {status}:\n{text}"))
    };
    let ok = find(200);
    assert_eq!(ok["event"], "request");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/hello");
    assert_eq!(ok["sub"], "alice");
    assert_eq!(ok["iss"], "https://idp.test");
    assert_eq!(ok["sni"], "localhost");
    assert_eq!(ok["cert_sha256"].as_str().map(str::len), Some(64));
    assert!(ok["cert_subject"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(ok["bytes_in"].as_u64().is_some_and(|b| b > 0));
    assert!(ok["bytes_out"]
        .as_u64()
        .is_some_and(|b| b as usize >= first.len()));
    assert!(ok["duration_ms"].as_f64().is_some());
    assert!(ok["time"].as_str().is_some_and(|t| t.ends_with('Z')));

    let refused = find(401);
    assert_eq!(refused["path"], "/no-token");
    assert!(refused.get("sub").is_none());
    assert_eq!(find(400)["method"], "-");
    let anonymous = records
        .iter()
        .find(|record| record["event"] == "refused")
        .unwrap_or_else(|| panic!("no refused connection:\n{text}"));
    assert_eq!(anonymous["reason"], "certificate_required");
}

/// The gateway's config with these `ingress.upstream` settings added (YAML lines
/// indented by four spaces).
fn with_upstream(pki: &TestPki, port: u16, backends: &[String], upstream: &str) -> String {
    pki.mtls_config(port, backends)
        .replace("  upstream:\n", &format!("  upstream:\n{upstream}"))
}

/// Requests an nginx backend has logged, leaving out the gateway's health checks.
fn served_by(nginx: &Nginx) -> usize {
    std::fs::read_to_string(nginx.root.join("access.log")).map_or(0, |log| {
        log.lines()
            .filter(|line| !line.contains("srrrs-edge-health-check"))
            .count()
    })
}

fn connect_failures(gateway: &Gateway) -> usize {
    gateway.log_text().matches("backend connect failed").count()
}

fn a_killed_backend_fails_its_checks_and_traffic_moves_to_the_healthy_one(driver: Driver) {
    let pki = TestPki::new();
    let (doomed, healthy) = (Nginx::start(pki.dir.path()), Nginx::start(pki.dir.path()));
    let names = [doomed.addr.to_string(), healthy.addr.to_string()];
    let upstream = "    keepalive_connections: 0
    health_check: {interval: 200ms, timeout: 500ms, http_path: /}
    ejection: {consecutive_failures: 0}
";
    let port = free_port();
    let config = with_upstream(&pki, port, &names, upstream);
    let gateway =
        Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);
    let client = Client::new(&pki, Some(&pki.good));
    let up = |name: &str| {
        gateway.metric(&format!(
            "srrrs_backend_up{{backend=\"{name}\",ingress=\"localhost\"}}"
        ))
    };
    assert_eq!((up(&names[0]), up(&names[1])), (1.0, 1.0));
    for _ in 0..10 {
        assert_eq!(
            status_of(&client.get(gateway.addr, "/").expect("served")),
            200
        );
    }
    assert!(
        served_by(&doomed) > 0,
        "round robin never reached the first backend"
    );

    drop(doomed);
    assert!(
        eventually(Duration::from_secs(5), || up(&names[0]) == 0.0),
        "the dead backend was never marked down"
    );
    assert_eq!(up(&names[1]), 1.0);
    let (before, failures) = (served_by(&healthy), connect_failures(&gateway));
    for _ in 0..20 {
        let response = client.get(gateway.addr, "/after").expect("served");
        assert_eq!(status_of(&response), 200, "{response}");
    }
    assert_eq!(served_by(&healthy) - before, 20);
    assert_eq!(
        connect_failures(&gateway),
        failures,
        "a backend marked down was still tried"
    );
}

fn without_checks_a_dead_backend_is_ejected_after_consecutive_connect_failures(driver: Driver) {
    let pki = TestPki::new();
    let (doomed, healthy) = (Nginx::start(pki.dir.path()), Nginx::start(pki.dir.path()));
    let names = [doomed.addr.to_string(), healthy.addr.to_string()];
    let upstream = "    keepalive_connections: 0
    ejection: {consecutive_failures: 2, duration: 30s}
";
    let port = free_port();
    let config = with_upstream(&pki, port, &names, upstream);
    let gateway =
        Gateway::start_with_admin(pki.dir.path(), &config, port, Some(free_port()), driver);
    let client = Client::new(&pki, Some(&pki.good));
    drop(doomed);

    // Every request is still served: a failed connect moves on to the next backend.
    for _ in 0..20 {
        let response = client.get(gateway.addr, "/").expect("served");
        assert_eq!(status_of(&response), 200, "{response}");
    }
    let ejections = format!(
        "srrrs_backend_ejections_total{{backend=\"{}\",ingress=\"localhost\"}}",
        names[0]
    );
    assert_eq!(gateway.metric(&ejections), 1.0);
    assert_eq!(
        gateway.metric(&format!(
            "srrrs_backend_up{{backend=\"{}\",ingress=\"localhost\"}}",
            names[0]
        )),
        0.0
    );
    // Two failures ejected it; after that it is left out.
    assert_eq!(connect_failures(&gateway), 2);
    assert_eq!(served_by(&healthy), 20);
}

fn least_connections_sends_new_requests_past_a_busy_backend(driver: Driver) {
    let pki = TestPki::new();
    let busy = SlowBackend::start(Duration::from_secs(60));
    let idle = SlowBackend::start(Duration::from_secs(60));
    let names = [busy.addr.clone(), idle.addr.clone()];
    let upstream = "    keepalive_connections: 0\n    balance: least_connections\n";
    let port = free_port();
    // One worker, so that its counts are the whole picture.
    let config = with_upstream(&pki, port, &names, upstream).replace("workers: 2", "workers: 1");
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let client = Client::new(&pki, Some(&pki.good));

    let slow = std::thread::spawn({
        let (client, addr) = (client.clone(), gateway.addr);
        move || client.get(addr, "/slow")
    });
    assert!(eventually(Duration::from_secs(5), || busy
        .started
        .load(Ordering::SeqCst)
        + idle.started.load(Ordering::SeqCst)
        == 1));
    let (holding, other) = match busy.started.load(Ordering::SeqCst) {
        1 => (&busy, &idle),
        _ => (&idle, &busy),
    };
    for _ in 0..10 {
        let response = client.get(gateway.addr, "/fast").expect("served");
        assert_eq!(status_of(&response), 200, "{response}");
    }
    // The backend counts an answer just after sending it.
    assert!(eventually(Duration::from_secs(2), || other
        .answered
        .load(Ordering::SeqCst)
        == 10));
    assert_eq!(holding.answered.load(Ordering::SeqCst), 0);
    holding.release();
    let response = slow.join().expect("slow client").expect("response");
    assert_eq!(status_of(&response), 200, "{response}");
}

fn a_later_head_arriving_slowly_within_its_timeout_is_not_cut_by_the_idle_timeout(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let limits = "{idle_timeout: 2s, request_head_timeout: 4s}";
    let gateway = start(&pki, &[backend_addr], limits, driver);
    let client = Client::new(&pki, Some(&pki.good));
    let mut stream = client.connect(gateway.addr).expect("handshake");
    send_request(&mut stream, "/first", &[]).expect("send");
    assert_eq!(status_of(&read_one_response(&mut stream)), 200);

    // Idle for 1.5 s, then a head over 2 s: the connection is quiet for longer than
    // idle_timeout in all, but never between two bytes of the head.
    std::thread::sleep(Duration::from_millis(1500));
    let head = b"GET /second HTTP/1.1\r\nhost: localhost\r\n\r\n";
    for piece in head.chunks(head.len() / 4 + 1) {
        stream.write_all(piece).expect("head piece");
        stream.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(500));
    }
    let response = read_one_response(&mut stream);
    assert_eq!(status_of(&response), 200, "{response}");
}

fn an_exempt_path_needs_no_token_and_only_that_path(driver: Driver) {
    let pki = TestPki::new();
    let (backend, backend_addr) = echo_backend();
    let port = free_port();
    let rules = "    path_rules:
      - {prefix: /public, public: true}
      - {prefix: /admin/, required_claims: {role: admin}}
";
    let (idp, config) = with_tokens(&pki, port, backend_addr, rules);
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let client = Client::new(&pki, Some(&pki.good));
    let status = |path: &str, token: Option<&str>| {
        let bearer = token.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|value| ("authorization", value.as_str()))
            .collect();
        status_of(&client.get_with(gateway.addr, path, &headers))
    };

    // Without a token: only the public prefix, at a segment boundary.
    for path in ["/public", "/public/", "/public/docs?page=2"] {
        assert_eq!(status(path, None), 200, "{path}");
    }
    for path in ["/publicity", "/private", "/", "/admin/x"] {
        assert_eq!(status(path, None), 401, "{path}");
    }
    // Paths a backend could resolve out of the public prefix are refused outright.
    for path in [
        "/public/../private",
        "/public/%2e%2e/private",
        "/public/..;/private",
        "/public//private",
        "/public/%2fprivate",
        "/public/..%3b/private",
        "/public/%252e%252e/private",
        "/public/%c0%ae%c0%ae/private",
    ] {
        assert_eq!(status(path, None), 400, "{path}");
    }

    // With a token: the default policy everywhere, and /admin/ asks for more.
    let user = idp.sign(&idp.claims("edge", "alice"));
    let mut admin_claims = idp.claims("edge", "root");
    admin_claims.insert("role".into(), serde_json::json!("admin"));
    let admin = idp.sign(&admin_claims);
    assert_eq!(status("/private", Some(&user)), 200);
    assert_eq!(status("/admin/x", Some(&user)), 403);
    // The same token again, now from the cache: the rule still holds.
    assert_eq!(status("/admin/x", Some(&user)), 403);
    assert_eq!(status("/admin/x", Some(&admin)), 200);
    // Spelling the prefix differently does not dodge its claims.
    for path in ["/%61dmin/x", "/ADMIN/x", "/admin/%78"] {
        assert_eq!(status(path, Some(&user)), 403, "{path}");
    }
    assert_eq!(status("/adminx", Some(&user)), 200);

    let reached: Vec<String> = backend.received().iter().map(|r| r.path.clone()).collect();
    assert!(!reached
        .iter()
        .any(|path| path.contains("private") && !path.starts_with("/private")));
    assert_eq!(
        reached,
        [
            "/public",
            "/public/",
            "/public/docs?page=2",
            "/private",
            "/admin/x",
            "/adminx"
        ],
        "what reached the backend"
    );
}

fn a_changed_jwks_file_goes_into_force_without_a_restart(driver: Driver) {
    let pki = TestPki::new();
    let (_backend, backend_addr) = echo_backend();
    let port = free_port();
    let (old_idp, config) = with_tokens(&pki, port, backend_addr, "");
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let client = Client::new(&pki, Some(&pki.good));
    let status = |token: &str| {
        let bearer = format!("Bearer {token}");
        status_of(&client.get_with(gateway.addr, "/", &[("authorization", &bearer)]))
    };
    let old_token = old_idp.sign(&old_idp.claims("edge", "alice"));
    assert_eq!(status(&old_token), 200);

    // The IdP rotates its key: the old one leaves the file.
    let new_idp = DevIdp::new("https://idp.test", "k2", KeyKind::EcdsaP256);
    replace_file(&pki, "jwks.json", &new_idp.jwks());
    assert!(
        eventually(Duration::from_secs(5), || status(&old_token) == 401),
        "a key removed from the JWKS file still verifies tokens"
    );
    assert_eq!(status(&new_idp.sign(&new_idp.claims("edge", "bob"))), 200);

    // A file that does not parse keeps the keys in force.
    replace_file(&pki, "jwks.json", "{not json");
    assert!(
        eventually(Duration::from_secs(10), || gateway
            .log_text()
            .contains("JWKS fetch failed")),
        "the broken file was never read:\n{}",
        gateway.log_text()
    );
    assert_eq!(status(&new_idp.sign(&new_idp.claims("edge", "carol"))), 200);
}

fn a_silent_backend_gets_504_and_a_saturated_pool_503_with_retry_after(driver: Driver) {
    let pki = TestPki::new();
    let backend = SlowBackend::start(Duration::from_secs(4));
    let upstream = "    keepalive_connections: 0
    response_timeout: 1s
    max_connections_per_worker: 1
";
    let port = free_port();
    // One worker, so that its one backend connection is the whole pool.
    let config = with_upstream(&pki, port, std::slice::from_ref(&backend.addr), upstream)
        .replace("workers: 2", "workers: 1");
    let gateway = Gateway::start(pki.dir.path(), &config, port, driver);
    let client = Client::new(&pki, Some(&pki.good));

    // A fast answer is unaffected.
    assert_eq!(
        status_of(&client.get(gateway.addr, "/fast").expect("served")),
        200
    );

    // The backend sits on /slow past response_timeout: 504, after about a second.
    let slow = std::thread::spawn({
        let (client, addr) = (client.clone(), gateway.addr);
        move || {
            let started = Instant::now();
            (client.get(addr, "/slow"), started.elapsed())
        }
    });
    assert!(eventually(Duration::from_secs(3), || backend
        .started
        .load(Ordering::SeqCst)
        == 1));
    // Meanwhile the one backend connection is in use: the next request gets 503.
    let busy = client.get(gateway.addr, "/fast").expect("answered");
    assert_eq!(status_of(&busy), 503, "{busy}");
    assert!(busy.contains("retry-after: 1\r\n"), "{busy}");

    let (answer, took) = slow.join().expect("slow client");
    let answer = answer.expect("answered");
    assert_eq!(status_of(&answer), 504, "{answer}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Once the pool is free again, requests are served.
    assert!(eventually(Duration::from_secs(3), || client
        .get(gateway.addr, "/fast")
        .is_ok_and(|response| status_of(&response) == 200)));
}
