//! Checks of values that need no file: ranges that would make the gateway refuse
//! everything, and settings another setting makes meaningless (warnings).

use std::time::Duration;

use super::{ApplicationAuthKind, ClientAuthMode, Config, IngressConfig, OcspConfig, Problems};

/// The largest `max_head_bytes` accepted.
const MAX_HEAD_LIMIT: usize = 1024 * 1024;

/// The smallest `max_head_bytes` accepted: RFC 9112 §3 suggests supporting request
/// lines of at least 8000 octets; far below that, ordinary requests fail.
const MIN_HEAD_LIMIT: usize = 1024;

/// The longest clock-skew allowance for token times: skew is seconds or minutes; a
/// day would already accept tokens a day after they expired.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// The longest ticket lifetime TLS 1.3 allows.
const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Records every out-of-range value and every setting that will be ignored.
pub fn check_values(config: &Config, problems: &mut Problems) {
    check_limits(config, problems);
    check_ingress_count(config, problems);
    for (scope, ingress) in config.ingress_list() {
        problems.scoped(&scope, |problems| {
            check_ingress_limits(ingress, problems);
            check_health_checks(ingress, problems);
            check_auth(ingress, problems);
            check_device_policy(ingress, problems);
        });
    }
    if config.runtime.workers > 1024 {
        problems.push(
            "runtime.workers",
            "at most 1024 workers (0 means one per CPU)",
        );
    }
}

fn check_limits(config: &Config, problems: &mut Problems) {
    let limits = &config.limits;
    let mut positive = |path: &str, value: Duration| {
        if value.is_zero() {
            problems.push(path, "must be longer than zero");
        }
    };
    positive("limits.handshake_timeout", limits.handshake_timeout);
    positive("limits.idle_timeout", limits.idle_timeout);
    positive("limits.request_head_timeout", limits.request_head_timeout);
    positive("limits.drain_timeout", limits.drain_timeout);
    if !(MIN_HEAD_LIMIT..=MAX_HEAD_LIMIT).contains(&limits.max_head_bytes) {
        let message = format!("must be between {MIN_HEAD_LIMIT} and {MAX_HEAD_LIMIT} bytes");
        problems.push("limits.max_head_bytes", message);
    }
    if !(1..=10_000).contains(&limits.max_headers) {
        problems.push("limits.max_headers", "must be between 1 and 10000");
    }
    for (path, value) in [
        (
            "limits.max_connections_per_worker",
            limits.max_connections_per_worker,
        ),
        (
            "limits.max_handshakes_per_worker",
            limits.max_handshakes_per_worker,
        ),
    ] {
        if value == 0 {
            problems.push(path, "must be at least 1");
        }
    }
}

/// One of `ingress` and `ingresses`, and no hostname twice.
fn check_ingress_count(config: &Config, problems: &mut Problems) {
    match (&config.ingress, config.ingresses.is_empty()) {
        (None, true) => problems.push("ingress", "required (or a list under ingresses)"),
        (Some(_), false) => problems.push(
            "ingresses",
            "give either ingress (one) or ingresses (a list), not both",
        ),
        _ => {}
    }
    let mut seen: Vec<String> = Vec::new();
    for (index, ingress) in config.ingresses.iter().enumerate() {
        let name = ingress.hostname.to_ascii_lowercase();
        if seen.contains(&name) {
            let message = format!("{name} is the hostname of an earlier ingress");
            problems.push(&format!("ingresses[{index}].hostname"), message);
        }
        seen.push(name);
    }
}

/// The values of one ingress that must be in range; reported under its own path.
fn check_ingress_limits(ingress: &IngressConfig, problems: &mut Problems) {
    let mut positive = |path: &str, value: Duration| {
        if value.is_zero() {
            problems.push(path, "must be longer than zero");
        }
    };
    positive(
        "ingress.upstream.connect_timeout",
        ingress.upstream.connect_timeout,
    );
    positive(
        "ingress.upstream.response_timeout",
        ingress.upstream.response_timeout,
    );
    let resumption = &ingress.session_resumption;
    positive(
        "ingress.session_resumption.ticket_lifetime",
        resumption.ticket_lifetime,
    );
    positive(
        "ingress.session_resumption.key_rotation",
        resumption.key_rotation,
    );
    if resumption.ticket_lifetime > MAX_TICKET_LIFETIME {
        // RFC 8446 §4.6.1: servers MUST NOT use a ticket lifetime over seven days.
        problems.push(
            "ingress.session_resumption.ticket_lifetime",
            "must be at most 7 days",
        );
    }
    if ingress.upstream.max_connections_per_worker == 0 {
        problems.push(
            "ingress.upstream.max_connections_per_worker",
            "must be at least 1",
        );
    }
}

fn check_health_checks(ingress: &IngressConfig, problems: &mut Problems) {
    let Some(check) = &ingress.upstream.health_check else {
        return;
    };
    let field = |name: &str| format!("ingress.upstream.health_check.{name}");
    for (name, value) in [("interval", check.interval), ("timeout", check.timeout)] {
        if value.is_zero() {
            problems.push(&field(name), "must be longer than zero");
        }
    }
    for (name, value) in [
        ("unhealthy_threshold", check.unhealthy_threshold),
        ("healthy_threshold", check.healthy_threshold),
    ] {
        if value == 0 {
            problems.push(&field(name), "must be at least 1");
        }
    }
    let bad_path =
        |path: &str| !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f);
    if check.http_path.as_deref().is_some_and(bad_path) {
        problems.push(
            &field("http_path"),
            "must start with / and hold no spaces or control characters",
        );
    }
}

fn check_auth(ingress: &IngressConfig, problems: &mut Problems) {
    let Some(auth) = &ingress.application_auth else {
        return;
    };
    let field = |name: &str| format!("ingress.application_auth.{name}");
    if auth.kind == ApplicationAuthKind::None {
        let set = auth.issuer.is_some()
            || auth.audience.is_some()
            || !auth.required_claims.is_empty()
            || auth.jwks_file.is_some()
            || auth.jwks_uri.is_some()
            || auth.discovery;
        if set {
            problems.warn(
                &field("type"),
                "is none: the token settings below it are ignored",
            );
        }
        return;
    }
    for (name, value) in [
        ("fetch_timeout", auth.fetch_timeout),
        ("refresh_interval", auth.refresh_interval),
        ("min_refresh_interval", auth.min_refresh_interval),
        ("max_refresh_interval", auth.max_refresh_interval),
    ] {
        if value.is_zero() {
            problems.push(&field(name), "must be longer than zero");
        }
    }
    if auth.leeway > MAX_LEEWAY {
        problems.push(
            &field("leeway"),
            "at most 1h (it allows for clock skew only)",
        );
    }
    if auth.min_refresh_interval > auth.max_refresh_interval {
        problems.push(
            &field("min_refresh_interval"),
            "must not exceed max_refresh_interval",
        );
    }
}

fn check_device_policy(ingress: &IngressConfig, problems: &mut Problems) {
    let policy = &ingress.transport_security;
    if let Some(ocsp) = &policy.ocsp {
        check_ocsp(ocsp, problems);
    }
    if let Some(url) = &ingress.server_tls.ocsp_responder {
        check_ocsp_url(url, "ingress.server_tls.ocsp_responder", problems);
        if !ingress.server_tls.ocsp_stapling {
            problems.warn(
                "ingress.server_tls.ocsp_responder",
                "is ignored: ocsp_stapling is not true",
            );
        }
    }
    if policy.mode != ClientAuthMode::Tls {
        return;
    }
    let set = !policy.client_ca_cert.as_slice().is_empty()
        || !policy.crl_files.is_empty()
        || policy.require_crl_check
        || policy.ocsp.is_some();
    if set {
        problems.warn(
            "ingress.transport_security.mode",
            "is tls: no client certificate is asked for, and the CA, CRL and OCSP settings are ignored",
        );
    }
}

fn check_ocsp(ocsp: &OcspConfig, problems: &mut Problems) {
    let field = |name: &str| format!("ingress.transport_security.ocsp.{name}");
    if ocsp.timeout.is_zero() || ocsp.timeout > Duration::from_secs(30) {
        problems.push(&field("timeout"), "must be between 1ms and 30s");
    }
    if ocsp.max_age < Duration::from_secs(1) || ocsp.max_age > Duration::from_secs(7 * 86400) {
        problems.push(&field("max_age"), "must be between 1s and 7d");
    }
    if ocsp.retry_interval < Duration::from_millis(100)
        || ocsp.retry_interval > Duration::from_secs(3600)
    {
        problems.push(&field("retry_interval"), "must be between 100ms and 1h");
    }
    for (index, responder) in ocsp.responders.iter().enumerate() {
        check_ocsp_url(
            &responder.url,
            &field(&format!("responders[{index}].url")),
            problems,
        );
    }
}

fn check_ocsp_url(url: &str, field: &str, problems: &mut Problems) {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        problems.push(field, "must be an http:// or https:// URL");
    }
}
