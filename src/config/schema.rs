//! The YAML schema: what an operator writes, with every default stated on its field.
//!
//! These types only describe the file. Turning them into running state (reading
//! certificates, keys and CRLs, resolving backends) belongs to the layer that uses them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Addresses to accept TLS connections on, such as `"0.0.0.0:8443"` or `"[::]:8443"`,
    /// each a plain address or a map with `address` and its settings. Required. Every
    /// worker binds each address with `SO_REUSEPORT`; an IPv6 address binds IPv6 only,
    /// so list both families to serve both.
    pub listen: Vec<Listed<ListenConfig>>,
    /// Worker threads and the I/O driver. Default: see [`RuntimeConfig`].
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Timeouts that keep a slow or silent peer from holding a connection forever.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`). Default: none.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// One line per request and per refused connection. Default: none.
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    /// The ingress this gateway serves, when it serves one. Exactly one of `ingress`
    /// and `ingresses` is given.
    #[serde(default)]
    pub ingress: Option<IngressConfig>,
    /// Several ingresses, told apart by the SNI a client sends. The first is the
    /// default: it serves a client whose SNI names none of them (or is absent), unless
    /// its `strict_sni` refuses that client.
    #[serde(default)]
    pub ingresses: Vec<IngressConfig>,
}

impl Config {
    /// Each ingress with the field path it is reported under: `ingress`, or
    /// `ingresses[N]`.
    pub fn ingress_list(&self) -> Vec<(String, &IngressConfig)> {
        let single = self
            .ingress
            .iter()
            .map(|ingress| ("ingress".to_owned(), ingress));
        let listed = (self.ingresses.iter().enumerate())
            .map(|(index, ingress)| (format!("ingresses[{index}]"), ingress));
        single.chain(listed).collect()
    }
}

/// The access log.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccessLogConfig {
    /// Where lines go: `stdout`, `stderr`, or a file, appended to and reopened on
    /// SIGHUP (for log rotation).
    pub path: String,
    /// `text` (`key=value` pairs after the time) or `json` (one object per line).
    /// Default `text`.
    #[serde(default)]
    pub format: AccessLogFormat,
    /// Keep query strings in logged paths. Default `false`: they often carry secrets.
    #[serde(default)]
    pub include_query: bool,
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// The time, then `key=value` pairs; values with spaces or quotes are quoted.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Worker threads and the I/O driver.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RuntimeConfig {
    /// Number of worker threads. Default `0`: one per CPU the process may run on.
    #[serde(default)]
    pub workers: usize,
    /// Pin worker N to the Nth allowed CPU. Default `false`.
    #[serde(default)]
    pub pin_workers: bool,
    /// `auto` (io_uring, else epoll), `io_uring` or `epoll`. Default `auto`.
    #[serde(default)]
    pub io_driver: IoDriverChoice,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            pin_workers: false,
            io_driver: IoDriverChoice::Auto,
        }
    }
}

/// Which monoio driver the workers run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum IoDriverChoice {
    /// io_uring where the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring, or refuse to start.
    #[value(name = "io_uring")]
    IoUring,
    /// epoll, even where io_uring works.
    Epoll,
}

/// Timeouts and caps that keep slow, silent or too many peers from taking a worker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LimitsConfig {
    /// Time allowed from accept to a finished TLS handshake. Default `10s`.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time allowed for a whole request head to arrive: from the handshake for the
    /// first request (and no longer than `idle_timeout`), from the head's first byte
    /// for later ones. A client that takes longer (slowloris) gets 408 and the
    /// connection closes. Default `10s`.
    #[serde(default = "default_request_head_timeout", with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// A connection on which neither side sends anything for this long is closed; it
    /// is also how long a kept-alive connection may wait for its next request.
    /// Default `60s`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The largest request head (request line and headers) accepted; larger ones get
    /// 431. Default `16384` bytes.
    #[serde(default = "default_max_head_bytes")]
    pub max_head_bytes: usize,
    /// The most header fields a request may have; more get 431. Default `100`.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// The most open client connections per worker; beyond it a new connection is
    /// accepted and closed at once, and counted. Default `25000`.
    #[serde(default = "default_max_connections")]
    pub max_connections_per_worker: usize,
    /// The most TLS handshakes in progress per worker, so that a flood of handshakes
    /// cannot starve the connections already admitted. A handshake counts from the
    /// client's first bytes. At the cap a new handshake waits until one ends, or until
    /// the oldest has taken a second, which is then dropped to make room: a client that
    /// stalls its handshake cannot hold a place while others wait. Default `512`.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes_per_worker: usize,
    /// The most open connections from one client address, over all workers; beyond it
    /// new connections from that address are closed at once, and counted. Default `0`:
    /// no cap (many devices can share one address behind NAT or a load balancer).
    #[serde(default)]
    pub max_connections_per_source: usize,
    /// On SIGTERM or SIGINT: how long in-flight requests may take to finish once the
    /// gateway stops accepting, before it exits anyway. Default `30s`.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: default_handshake_timeout(),
            request_head_timeout: default_request_head_timeout(),
            idle_timeout: default_idle_timeout(),
            max_head_bytes: default_max_head_bytes(),
            max_headers: default_max_headers(),
            max_connections_per_worker: default_max_connections(),
            max_handshakes_per_worker: default_max_handshakes(),
            max_connections_per_source: 0,
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_request_head_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_connections() -> usize {
    25_000
}

fn default_max_handshakes() -> usize {
    512
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_head_bytes() -> usize {
    16 * 1024
}

fn default_max_headers() -> usize {
    100
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The plain-HTTP admin listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AdminConfig {
    /// Address of the admin listener. Keep it on loopback or a management network.
    pub listen: String,
}

/// One ingress: a hostname, its TLS and device policy, its user policy and its backends.
#[derive(Debug, Clone, Deserialize)]
pub struct IngressConfig {
    /// The name clients reach this ingress by; checked against SNI, case-insensitively.
    /// `*.example.com` matches any name one label below `example.com`.
    pub hostname: String,
    /// Refuse handshakes whose SNI is absent or names no ingress, with the
    /// `unrecognized_name` alert; it matters on the first ingress, where such handshakes
    /// go. Default `false`: such handshakes are served and logged.
    #[serde(default)]
    pub strict_sni: bool,
    /// The server's own certificate and TLS versions.
    pub server_tls: ServerTlsConfig,
    /// How devices prove themselves: client certificates, CAs and revocation.
    pub transport_security: TransportSecurityConfig,
    /// Cheap repeat handshakes. Default: on, with keys kept in memory.
    #[serde(default)]
    pub session_resumption: SessionResumptionConfig,
    /// How users prove themselves on each request. Default: no per-request check.
    #[serde(default)]
    pub application_auth: Option<ApplicationAuthConfig>,
    /// The headers that tell backends who the device and the user are. Default: see
    /// [`IdentityHeadersConfig`].
    #[serde(default)]
    pub identity_headers: IdentityHeadersConfig,
    /// Where authorized traffic goes.
    pub upstream: UpstreamConfig,
}

/// Names of the headers the gateway sets on forwarded requests. Copies a client sends
/// are always removed first. An empty name turns that header off.
#[derive(Debug, Clone, Deserialize)]
pub struct IdentityHeadersConfig {
    /// The client certificate's subject. Default `x-client-cert-subject`.
    #[serde(default = "default_cert_subject_header")]
    pub cert_subject: String,
    /// The client certificate's subject alternative names, comma-separated.
    /// Default `x-client-cert-sans`.
    #[serde(default = "default_cert_sans_header")]
    pub cert_sans: String,
    /// SHA-256 of the client certificate, hex. Default `x-client-cert-sha256`.
    #[serde(default = "default_cert_fingerprint_header")]
    pub cert_fingerprint: String,
    /// The token's `sub`. Default `x-auth-subject`.
    #[serde(default = "default_token_subject_header")]
    pub token_subject: String,
    /// The token's `iss`. Default `x-auth-issuer`.
    #[serde(default = "default_token_issuer_header")]
    pub token_issuer: String,
    /// More claims to pass on: claim path to header name. Default: none.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

impl Default for IdentityHeadersConfig {
    fn default() -> Self {
        Self {
            cert_subject: default_cert_subject_header(),
            cert_sans: default_cert_sans_header(),
            cert_fingerprint: default_cert_fingerprint_header(),
            token_subject: default_token_subject_header(),
            token_issuer: default_token_issuer_header(),
            claims: BTreeMap::new(),
        }
    }
}

fn default_cert_subject_header() -> String {
    "x-client-cert-subject".into()
}

fn default_cert_sans_header() -> String {
    "x-client-cert-sans".into()
}

fn default_cert_fingerprint_header() -> String {
    "x-client-cert-sha256".into()
}

fn default_token_subject_header() -> String {
    "x-auth-subject".into()
}

fn default_token_issuer_header() -> String {
    "x-auth-issuer".into()
}

/// The server certificate and protocol versions.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerTlsConfig {
    /// PEM file with the server certificate first, then its intermediates.
    pub cert_chain: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC): ECDSA P-256/P-384,
    /// RSA or Ed25519.
    pub private_key: PathBuf,
    /// Lowest TLS version accepted: `"1.2"` or `"1.3"`. Default `"1.2"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Staple an OCSP response for the server certificate: fetched in the background from
    /// its responder, refreshed before it lapses, left out (with a warning) when none is
    /// valid. Needs the issuer as the second certificate of `cert_chain`. Default `false`.
    #[serde(default)]
    pub ocsp_stapling: bool,
    /// The responder asked for the staple. Default: the certificate's AIA OCSP URL.
    #[serde(default)]
    pub ocsp_responder: Option<String>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 (RFC 8446).
    #[serde(rename = "1.3")]
    Tls13,
}

/// Device authentication.
#[derive(Debug, Clone, Deserialize)]
pub struct TransportSecurityConfig {
    /// `mtls` (a valid client certificate is required), `optional` (verified when
    /// presented) or `tls` (not asked for).
    pub mode: ClientAuthMode,
    /// PEM file(s) with the CA certificates client chains must lead to. Several files, or
    /// several certificates in one file, are all trusted at once (CA rotation).
    /// Required unless `mode` is `tls`.
    #[serde(default)]
    pub client_ca_cert: OneOrMany<PathBuf>,
    /// Refuse a certificate whose revocation status cannot be determined from the
    /// loaded CRLs. Default `false`: certificates of issuers without a CRL are admitted.
    #[serde(default)]
    pub require_crl_check: bool,
    /// CRL files, PEM or DER. Default: none.
    #[serde(default)]
    pub crl_files: Vec<PathBuf>,
    /// Which certificates of the chain are checked against CRLs: `chain` (leaf and
    /// intermediates) or `leaf`. Default `chain`.
    #[serde(default)]
    pub revocation_scope: RevocationScope,
    /// URLs (http or https) CRLs are fetched from, on `crl_refresh_interval`. A CRL that
    /// cannot be fetched keeps its last good copy; with none, the certificates it would
    /// cover have no known status. Default: none.
    #[serde(default)]
    pub crl_urls: Vec<String>,
    /// How often `crl_urls` are fetched again; after a failed fetch, 15 s (or this, if
    /// shorter). Default `5m`. (CRL files are reread as soon as they change, and on
    /// SIGHUP.)
    #[serde(default = "default_crl_refresh", with = "humantime_serde")]
    pub crl_refresh_interval: Duration,
    /// Verified chains remembered across workers, so that a device's next full handshake
    /// skips path building and the chain's signature checks. Default `65536`; `0` off.
    #[serde(default = "default_chain_cache_size")]
    pub chain_cache_size: usize,
    /// What a CRL past its nextUpdate means. `refuse`: the status of every certificate
    /// it covers is unknown (RFC 5280 §6.3.3), so they are refused until a fresh CRL is
    /// loaded, whatever `require_crl_check` says. `use_stale`: it is still applied, with
    /// a warning. Default `refuse`.
    #[serde(default)]
    pub expired_crl: ExpiredCrlPolicy,
    /// Client certificates checked with their issuer's OCSP responder. Default: none.
    #[serde(default)]
    pub ocsp: Option<OcspConfig>,
}

/// OCSP checking of client certificates (RFC 6960). Only the leaf is checked; CRLs, when
/// configured, still apply to the whole chain.
#[derive(Debug, Clone, Deserialize)]
pub struct OcspConfig {
    /// `hard-fail`: a certificate without a valid answer is refused. `soft-fail`: it is
    /// admitted, with a warning and a count. A `revoked` answer is refused either way.
    pub policy: OcspPolicy,
    /// Responders to ask instead of the one in a certificate's AIA extension, by the CA
    /// that issued the certificate. Default: none.
    #[serde(default)]
    pub responders: Vec<OcspResponderConfig>,
    /// How long a handshake with a certificate that has no answer yet waits for one.
    /// Default `2s`.
    #[serde(default = "default_ocsp_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest a response is used, whatever its nextUpdate says. Default `1h`.
    #[serde(default = "default_ocsp_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// How long a responder that failed is not asked again; meanwhile its certificates
    /// have no answer. Default `5s`.
    #[serde(default = "default_ocsp_retry", with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Which certificates of the chain are checked by OCSP: `leaf`, or `chain` (the leaf
    /// and every intermediate, each with its issuer's responder). Default `leaf`.
    #[serde(default = "default_ocsp_scope")]
    pub scope: RevocationScope,
}

/// What a certificate without a valid OCSP answer meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OcspPolicy {
    /// Refused.
    #[serde(rename = "hard-fail", alias = "hard_fail")]
    HardFail,
    /// Admitted, logged and counted.
    #[serde(rename = "soft-fail", alias = "soft_fail")]
    SoftFail,
}

/// A responder for the certificates one CA issues.
#[derive(Debug, Clone, Deserialize)]
pub struct OcspResponderConfig {
    /// PEM file with the issuing CA's certificate.
    pub issuer: PathBuf,
    /// The responder's URL (`http` or `https`).
    pub url: String,
}

fn default_ocsp_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_ocsp_max_age() -> Duration {
    Duration::from_secs(3600)
}

fn default_ocsp_scope() -> RevocationScope {
    RevocationScope::Leaf
}

fn default_ocsp_retry() -> Duration {
    Duration::from_secs(5)
}

fn default_crl_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_chain_cache_size() -> usize {
    65536
}

/// Session resumption with tickets (TLS 1.3, and RFC 5077 for TLS 1.2).
#[derive(Debug, Clone, Deserialize)]
pub struct SessionResumptionConfig {
    /// Issue and accept tickets. Default `true`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A ticket key file shared by the nodes of a PoP, so that a session started on one
    /// resumes on another (format: see the README; `srrrs-edge ticket-key new -f FILE`
    /// writes one). Reread when it changes. Default: keys generated in memory.
    #[serde(default)]
    pub ticket_key_file: Option<PathBuf>,
    /// How long a ticket stays good after its key stops being the newest; also the
    /// lifetime clients are told. Default `12h`.
    #[serde(default = "default_ticket_lifetime", with = "humantime_serde")]
    pub ticket_lifetime: Duration,
    /// Without a key file: how often a new key is made. Default `12h`.
    #[serde(default = "default_ticket_lifetime", with = "humantime_serde")]
    pub key_rotation: Duration,
}

impl Default for SessionResumptionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ticket_key_file: None,
            ticket_lifetime: default_ticket_lifetime(),
            key_rotation: default_ticket_lifetime(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_ticket_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}

/// Whether and how client certificates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// A client certificate is required and verified.
    Mtls,
    /// A client certificate is asked for and verified when presented.
    Optional,
    /// No client certificate is asked for.
    Tls,
}

/// Which certificates of a client chain are checked for revocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationScope {
    /// The leaf and every intermediate.
    #[default]
    Chain,
    /// Only the leaf.
    Leaf,
}

/// How a CRL past its nextUpdate is treated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiredCrlPolicy {
    /// The certificates it covers are refused until a fresh CRL is loaded.
    #[default]
    Refuse,
    /// It is still applied, with a warning at load.
    UseStale,
}

/// User authentication on each request.
#[derive(Debug, Clone, Deserialize)]
pub struct ApplicationAuthConfig {
    /// `jwt` or `none`.
    #[serde(rename = "type")]
    pub kind: ApplicationAuthKind,
    /// Expected `iss`, matched exactly. Required for `jwt`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The audience that `aud` must be or contain. Required for `jwt`.
    #[serde(default)]
    pub audience: Option<String>,
    /// Claims a token must carry: claim path (see the README) to the value it must
    /// equal, or contain when the claim is an array. Default: none.
    #[serde(default)]
    pub required_claims: BTreeMap<String, serde_json::Value>,
    /// A local JWKS file with the IdP's public keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// An HTTPS URL serving the IdP's JWKS.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Find `jwks_uri` by OIDC discovery from `issuer`. Default `false`.
    #[serde(default)]
    pub discovery: bool,
    /// PEM file with the CA certificates trusted when fetching the JWKS or discovery
    /// document. Default: the Mozilla root program (webpki-roots).
    #[serde(default)]
    pub fetch_ca_file: Option<PathBuf>,
    /// Time allowed for one fetch. Default `5s`.
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// How often the keys are refreshed when the IdP sends no `Cache-Control: max-age`.
    /// Default `10m`.
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// The shortest refresh period a `max-age` can ask for. Default `1m`.
    #[serde(default = "default_min_refresh", with = "humantime_serde")]
    pub min_refresh_interval: Duration,
    /// The longest refresh period a `max-age` can ask for. Default `1h`.
    #[serde(default = "default_max_refresh", with = "humantime_serde")]
    pub max_refresh_interval: Duration,
    /// After a token names an unknown `kid`, the keys are fetched at once; another such
    /// fetch waits at least this long. Default `30s`.
    #[serde(default = "default_unknown_kid_cooldown", with = "humantime_serde")]
    pub unknown_kid_cooldown: Duration,
    /// Clock skew allowed on `exp` and `nbf`. Default `60s`, at most `1h`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Signature algorithms accepted, further narrowed by each key's type and `alg`.
    /// Default: ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA. HMAC
    /// and `none` are never accepted.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Verified tokens remembered per worker, so that a repeated token skips the
    /// signature check until its `exp`. Default `4096`; `0` turns the cache off.
    #[serde(default = "default_token_cache_size")]
    pub token_cache_size: usize,
    /// RFC 8705 certificate binding: `optional` (default): a token carrying
    /// `cnf.x5t#S256` must name the connection's client certificate; `required`: every
    /// token must carry it.
    #[serde(default)]
    pub certificate_binding: CertificateBinding,
    /// Forward the client's `Authorization` header to the backend. Default `false`:
    /// the gateway has checked the token and passes on who the user is in identity
    /// headers, so backends (and their logs) never hold a replayable credential.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Rules by path prefix, the longest matching prefix deciding: `public: true` lets
    /// requests through without a token; `required_claims` are required on top of the
    /// ones above. A prefix matches the path itself and what lies under it (`/docs`
    /// matches `/docs` and `/docs/a`, not `/docsx`). Default: none.
    #[serde(default)]
    pub path_rules: Vec<PathRuleConfig>,
}

/// One path rule.
#[derive(Debug, Clone, Deserialize)]
pub struct PathRuleConfig {
    /// The path prefix, starting with `/`.
    pub prefix: String,
    /// No token is asked for. Default `false`.
    #[serde(default)]
    pub public: bool,
    /// Claims required on top of `required_claims`. Default: none.
    #[serde(default)]
    pub required_claims: BTreeMap<String, serde_json::Value>,
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(600)
}

fn default_min_refresh() -> Duration {
    Duration::from_secs(60)
}

fn default_max_refresh() -> Duration {
    Duration::from_secs(3600)
}

fn default_unknown_kid_cooldown() -> Duration {
    Duration::from_secs(30)
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_token_cache_size() -> usize {
    4096
}

/// Whether tokens must be bound to the client certificate (RFC 8705 §3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateBinding {
    /// A bound token must match; an unbound one is accepted.
    #[default]
    Optional,
    /// Every token must be bound to the connection's certificate.
    Required,
}

/// The kinds of per-request authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationAuthKind {
    /// A bearer JWT on every request.
    Jwt,
    /// No per-request check: the device certificate is the only proof.
    None,
}

/// The backends of an ingress.
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamConfig {
    /// `host:port` or `unix:/path/to/socket`, tried in round robin; each a plain address
    /// or a map with `address` and its settings.
    pub backends: Vec<Listed<BackendConfig>>,
    /// Time allowed to connect to one backend before trying the next. Default `2s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle backend connections each worker keeps for reuse by later client connections.
    /// Default `32`; `0` opens a backend connection per client connection.
    #[serde(default = "default_keepalive_connections")]
    pub keepalive_connections: usize,
    /// How long an idle backend connection is kept. Keep it below the backends' own
    /// keep-alive timeout (nginx: 75s). Default `4s`.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Backend connections in use per worker (all backends together); a request that
    /// would need another gets 503 with `Retry-After: 1`. Default `10000`.
    #[serde(default = "default_max_backend_connections")]
    pub max_connections_per_worker: usize,
    /// A backend that sends nothing for this long while a response is due (and has
    /// read nothing from the gateway meanwhile) is given up on: 504 when no byte of the
    /// response was passed on, else the connection closes. Default `60s`.
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How a backend is chosen for a new backend connection: `round_robin` or
    /// `least_connections` (the one this worker has the fewest exchanges open with).
    /// Default `round_robin`.
    #[serde(default)]
    pub balance: Balance,
    /// Active health checks. Default: none (passive ejection only).
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection: a backend whose connects fail this many times in a row is left
    /// out for `duration`. Default: after 3 failures, for 10s.
    #[serde(default)]
    pub ejection: EjectionConfig,
}

/// How backends are chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The one with the fewest open exchanges on this worker.
    LeastConnections,
}

/// Active health checks, run off the workers.
#[derive(Debug, Clone, Deserialize)]
pub struct HealthCheckConfig {
    /// Time between two checks of a backend. Default `2s`.
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Time allowed for one check. Default `1s`.
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A path to `GET`; the check passes on a 2xx or 3xx status. Default: none, a TCP
    /// connect is the check.
    #[serde(default)]
    pub http_path: Option<String>,
    /// Consecutive failed checks that mark a backend down. Default `2`.
    #[serde(default = "default_check_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that mark it up again. Default `2`.
    #[serde(default = "default_check_threshold")]
    pub healthy_threshold: u32,
}

/// Passive ejection.
#[derive(Debug, Clone, Deserialize)]
pub struct EjectionConfig {
    /// Failed connects in a row that eject a backend; `0` never ejects. Default `3`.
    #[serde(default = "default_ejection_failures")]
    pub consecutive_failures: u32,
    /// How long an ejected backend is left out before it is tried again. Default `10s`.
    #[serde(default = "default_ejection_duration", with = "humantime_serde")]
    pub duration: Duration,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_ejection_failures(),
            duration: default_ejection_duration(),
        }
    }
}

fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_check_threshold() -> u32 {
    2
}

fn default_ejection_failures() -> u32 {
    3
}

fn default_ejection_duration() -> Duration {
    Duration::from_secs(10)
}

fn default_max_backend_connections() -> usize {
    10_000
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_keepalive_connections() -> usize {
    32
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(4)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// A list entry written as a plain address or as a map with the address and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<T>(pub T);

impl<T> std::ops::Deref for Listed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de> + From<String>> Deserialize<'de> for Listed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de> + From<String>> serde::de::Visitor<'de> for Entry<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address, or a map with `address` and its settings")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
                Ok(T::from(text.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        (deserializer.deserialize_any(Entry(std::marker::PhantomData))).map(Listed)
    }
}

/// One listening address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListenConfig {
    /// `IP:port`.
    pub address: String,
    /// Read a PROXY protocol header (version 1 or 2) from connections that come from a
    /// load balancer in front. Default: none.
    #[serde(default)]
    pub proxy_protocol: Option<InboundProxyConfig>,
}

impl From<String> for ListenConfig {
    fn from(address: String) -> Self {
        Self {
            address,
            proxy_protocol: None,
        }
    }
}

/// Which connections carry a PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InboundProxyConfig {
    /// Source networks (`10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`) whose connections
    /// must begin with a header; its client address is then the one used in logs, limits
    /// and headers. A connection from anywhere else that begins with a header is closed.
    pub trusted: Vec<String>,
}

/// One backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BackendConfig {
    /// `host:port` or `unix:/path/to/socket`.
    pub address: String,
    /// Begin each connection with a PROXY protocol header: `none` (default), `v1` (the
    /// client address only) or `v2` (the address and the TLS facts as TLVs).
    #[serde(default)]
    pub proxy_protocol: ProxyProtocolVersion,
    /// With `v2`: the TLV type (224 to 239, the custom range) that carries the client
    /// certificate's DER. Default: none.
    #[serde(default)]
    pub certificate_tlv: Option<u8>,
    /// How the device is described to this backend: `edge` (the `identity_headers`,
    /// default), `xfcc` (Envoy's `X-Forwarded-Client-Cert`) or `nginx`
    /// (`X-SSL-Client-Verify`, `-S-DN`, `-I-DN`, `-Serial`, `-Fingerprint`, `-Cert`).
    #[serde(default)]
    pub identity_format: IdentityFormat,
    /// TLS to this backend (rustls on aws-lc-rs, TLS 1.2 and 1.3). Default: none.
    #[serde(default)]
    pub tls: Option<BackendTlsConfig>,
}

/// How the gateway speaks TLS to a backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BackendTlsConfig {
    /// PEM file with the CA certificates the backend's certificate must lead to.
    /// Required.
    pub ca_file: PathBuf,
    /// The name sent as SNI and checked against the backend's certificate. Default: the
    /// host part of the address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM certificate chain the gateway presents when the backend asks. Default: none.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its private key; required with `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl From<String> for BackendConfig {
    fn from(address: String) -> Self {
        Self {
            address,
            proxy_protocol: ProxyProtocolVersion::None,
            certificate_tlv: None,
            identity_format: IdentityFormat::Edge,
            tls: None,
        }
    }
}

/// Which PROXY protocol header a backend connection begins with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocolVersion {
    /// None.
    #[default]
    None,
    /// Version 1, text: the addresses only.
    V1,
    /// Version 2, binary: the addresses and TLVs.
    V2,
}

/// How the device certificate is described to a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityFormat {
    /// The headers named under `identity_headers`.
    #[default]
    Edge,
    /// Envoy's `X-Forwarded-Client-Cert`.
    Xfcc,
    /// The `X-SSL-Client-*` names nginx configurations commonly set.
    Nginx,
}

/// A field that takes either one value or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list of values.
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    /// The values, in order.
    pub fn as_slice(&self) -> &[T] {
        match self {
            Self::One(value) => std::slice::from_ref(value),
            Self::Many(values) => values,
        }
    }
}
