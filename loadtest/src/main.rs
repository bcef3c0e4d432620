//! `edge-load`: an HTTP/1.1 load generator that presents client certificates, which wrk
//! and h2load cannot. Thread-per-core on monoio, like the gateway. It forces full
//! handshakes (a new connection per request, no resumption), resumed handshakes, or
//! keep-alive request streams; sends a bearer token (one, or a pool); runs for a time
//! or a count, flat out or at a fixed rate (open loop: latency is measured from when a
//! request was due, so a stalled server cannot hide behind coordinated omission).

mod connection;
mod fixtures;
mod report;

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use mimalloc::MiMalloc;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use connection::{Connection, Failure};
use report::{Report, Tally};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// An mTLS-capable HTTP/1.1 load generator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate load against a URL.
    Run(Box<RunOptions>),
    /// Write a PKI, IdP keys and tokens for load tests into a folder.
    Fixtures {
        /// The folder to write into.
        #[arg(long)]
        out: PathBuf,
        /// How many distinct tokens each token pool holds.
        #[arg(long, default_value_t = 5_000)]
        pool: usize,
        /// Also write this many more good devices (`device-K`) and CRLs `crl-0.pem` …
        /// `crl-N.pem`, the K-th revoking devices 1 to K (for soaks).
        #[arg(long, default_value_t = 0)]
        revocations: usize,
    },
}

/// How connections are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A new connection per request, with a full handshake (no resumption).
    Full,
    /// A new connection per request, resuming the previous session.
    Resumed,
    /// Long-lived connections, one request after another.
    Keepalive,
    /// Open the connections and hold them, sending nothing (for memory per connection).
    Idle,
}

#[derive(Debug, Clone, clap::Args)]
struct RunOptions {
    /// The target, `https://host:port/path`.
    #[arg(long)]
    url: String,
    /// The name sent as SNI and checked in the server certificate. Default: the URL's host.
    #[arg(long)]
    server_name: Option<String>,
    /// PEM file with the CA(s) that issued the server certificate.
    #[arg(long)]
    cacert: PathBuf,
    /// PEM client certificate chain (leaf first).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// PEM client private key.
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Mode::Keepalive)]
    mode: Mode,
    /// Concurrent connections across all threads.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Worker threads. Default: one per CPU this process may run on.
    #[arg(long)]
    threads: Option<usize>,
    /// How long to run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Stop after this many requests instead (the duration still caps the run).
    #[arg(long)]
    requests: Option<u64>,
    /// Requests per second across all connections (open loop). Default: as fast as
    /// possible (closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// A bearer token sent with every request.
    #[arg(long)]
    token: Option<String>,
    /// A file of bearer tokens, one per line, sent in turn (defeats token caches).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// An extra request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Only this TLS version: `1.2` or `1.3`.
    #[arg(long)]
    tls: Option<String>,
    /// Give up on a request (connect included) after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Also write the report as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(options) => run(*options),
        Command::Fixtures {
            out,
            pool,
            revocations,
        } => fixtures::write(&out, pool, revocations),
    };
    if let Err(message) = outcome {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

/// What every thread of a run shares.
struct Plan {
    mode: Mode,
    connections: usize,
    addr: SocketAddr,
    name: ServerName<'static>,
    /// The TLS configuration of each connection slot; in resumed mode every slot has its
    /// own session store, so that a slot resumes its own last session, as a reconnecting
    /// device does, rather than racing the others for shared tickets.
    configs: Vec<Arc<ClientConfig>>,
    /// Every request to send, made up front: one per token, sent in turn.
    requests: Vec<Vec<u8>>,
    deadline: Instant,
    limit: Option<u64>,
    interval: Option<Duration>,
    timeout: Duration,
    started: Instant,
    issued: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

fn run(options: RunOptions) -> Result<(), String> {
    let plan = Arc::new(plan(&options)?);
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let threads = threads.clamp(1, options.connections.max(1));
    // Each thread pinned to one of the CPUs this process may use (taskset's set).
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let progress = (!options.quiet).then(|| spawn_progress(plan.clone()));

    let handles: Vec<_> = (0..threads)
        .map(|index| {
            let plan = plan.clone();
            let share =
                options.connections / threads + usize::from(index < options.connections % threads);
            let first = (0..index)
                .map(|i| {
                    options.connections / threads + usize::from(i < options.connections % threads)
                })
                .sum::<usize>();
            let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
            std::thread::spawn(move || {
                if let Some(cpu) = cpu {
                    core_affinity::set_for_current(cpu);
                }
                run_thread(plan, first, share)
            })
        })
        .collect();
    let mut tally = Tally::default();
    for handle in handles {
        tally.merge(handle.join().map_err(|_| "a load thread panicked")?);
    }
    // The clock stops with the last load thread, not with the progress line's next tick.
    let elapsed = plan
        .started
        .elapsed()
        .min(options.duration.max(Duration::from_millis(1)) + options.timeout);
    plan.stop.store(true, Ordering::Release);
    if let Some(progress) = progress {
        let _ = progress.join();
    }

    let report = Report::new(mode_name(plan.mode), &tally, elapsed);
    let json_to_stdout = options.json.as_deref() == Some(Path::new("-"));
    // With the JSON on stdout, the text report goes to stderr, so that stdout parses.
    if json_to_stdout {
        eprint!("{}", report.text());
    } else {
        print!("{}", report.text());
    }
    if let Some(path) = &options.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        if json_to_stdout {
            println!("{json}");
        } else {
            std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Full => "full",
        Mode::Resumed => "resumed",
        Mode::Keepalive => "keepalive",
        Mode::Idle => "idle",
    }
}

fn plan(options: &RunOptions) -> Result<Plan, String> {
    let rest = options
        .url
        .strip_prefix("https://")
        .ok_or("the URL must start with https://")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let host_name = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .trim_matches(['[', ']']);
    let server_name = options
        .server_name
        .clone()
        .unwrap_or_else(|| host_name.to_owned());
    let name = ServerName::try_from(server_name).map_err(|e| e.to_string())?;

    let mut tokens: Vec<String> = options.token.iter().cloned().collect();
    if let Some(file) = &options.tokens {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        );
    }
    let close = options.mode != Mode::Keepalive;
    let with_token = |token: Option<&String>| {
        let mut headers = options.headers.clone();
        headers.extend(token.map(|token| format!("authorization: Bearer {token}")));
        let mut request = Vec::new();
        connection::request(&mut request, authority, &path, &headers, close);
        request
    };
    let requests: Vec<Vec<u8>> = match tokens.is_empty() {
        true => vec![with_token(None)],
        false => tokens.iter().map(|token| with_token(Some(token))).collect(),
    };
    let interval = match options.rate {
        Some(rate) if rate > 0.0 => Some(Duration::from_secs_f64(
            options.connections.max(1) as f64 / rate,
        )),
        _ => None,
    };
    let started = Instant::now();
    Ok(Plan {
        mode: options.mode,
        connections: options.connections,
        addr,
        name,
        configs: client_configs(options)?,
        requests,
        deadline: started + options.duration,
        limit: options.requests,
        interval,
        timeout: options.timeout,
        started,
        issued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    })
}

fn client_configs(options: &RunOptions) -> Result<Vec<Arc<ClientConfig>>, String> {
    let base = client_config(options)?;
    if options.mode != Mode::Resumed {
        return Ok(vec![Arc::new(base)]);
    }
    let configs = (0..options.connections.max(1))
        .map(|_| {
            let mut config = base.clone();
            config.resumption = Resumption::in_memory_sessions(4);
            Arc::new(config)
        })
        .collect();
    Ok(configs)
}

fn client_config(options: &RunOptions) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&options.cacert).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match options.tls.as_deref() {
        Some("1.2") => &[&rustls::version::TLS12],
        Some("1.3") => &[&rustls::version::TLS13],
        None => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some(other) => return Err(format!("--tls {other}: expected 1.2 or 1.3")),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| e.to_string())?
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("--cert and --key go together".into()),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if options.mode == Mode::Full {
        config.resumption = Resumption::disabled();
    }
    Ok(config)
}

fn spawn_progress(plan: Arc<Plan>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = 0;
        let mut next_tick = Instant::now() + Duration::from_secs(1);
        while !plan.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
            if Instant::now() < next_tick {
                continue;
            }
            next_tick += Duration::from_secs(1);
            let done = plan.completed.load(Ordering::Relaxed);
            let failed = plan.failed.load(Ordering::Relaxed);
            eprint!(
                "\r{:>5.1} s  {:>9} requests  {:>8} req/s  {:>6} errors ",
                plan.started.elapsed().as_secs_f64(),
                done,
                done - last,
                failed
            );
            last = done;
        }
        eprintln!();
    })
}

fn run_thread(plan: Arc<Plan>, first: usize, connections: usize) -> Tally {
    let work = async move {
        let tally = Rc::new(RefCell::new(Tally::default()));
        let tasks: Vec<_> = (0..connections)
            .map(|index| monoio::spawn(drive(plan.clone(), first + index, tally.clone())))
            .collect();
        for task in tasks {
            task.await;
        }
        Rc::try_unwrap(tally)
            .map(RefCell::into_inner)
            .unwrap_or_default()
    };
    match RuntimeBuilder::<IoUringDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut runtime) => runtime.block_on(work),
        Err(_) => match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
            Ok(mut runtime) => runtime.block_on(work),
            Err(_) => Tally::default(),
        },
    }
}

type Shared = Rc<RefCell<Tally>>;

/// One connection's life: requests until the run ends.
async fn drive(plan: Arc<Plan>, index: usize, tally: Shared) {
    // Spread the connections' first requests over one interval.
    let share = index as f64 / plan.connections.max(1) as f64;
    let offset = plan
        .interval
        .map(|interval| interval.mul_f64(share))
        .unwrap_or_default();
    let mut due = plan.started + offset;
    let mut open: Option<Connection> = None;
    if plan.mode == Mode::Idle {
        return hold(&plan, &tally).await;
    }
    loop {
        // When this request is due: latency counts from here, not from when it went out,
        // so a server that holds requests up is charged for the wait. Only when the
        // request was not yet due, and the timer (1 ms ticks) woke this task late, is
        // the lateness the generator's own, and not counted.
        let intended = match plan.interval {
            Some(interval) => {
                let now = Instant::now();
                let intended = if due > now {
                    monoio::time::sleep(due - now).await;
                    Instant::now()
                } else {
                    due
                };
                due += interval;
                intended
            }
            None => Instant::now(),
        };
        if Instant::now() >= plan.deadline || plan.stop.load(Ordering::Relaxed) {
            break;
        }
        let number = plan.issued.fetch_add(1, Ordering::Relaxed);
        if plan.limit.is_some_and(|limit| number >= limit) {
            break;
        }
        let reuse = plan.mode == Mode::Keepalive;
        let request = &plan.requests[number as usize % plan.requests.len()];
        let attempt = monoio::time::timeout(
            plan.timeout,
            one_request(&plan, index, open.take(), request, &tally),
        )
        .await;
        match attempt {
            Ok(Ok((status, connection))) => {
                let latency = intended.elapsed();
                tally.borrow_mut().completed(status, latency);
                plan.completed.fetch_add(1, Ordering::Relaxed);
                if reuse && connection::keeps_alive(status) {
                    open = Some(connection);
                } else {
                    connection.close().await;
                }
            }
            Ok(Err(failure)) => {
                tally.borrow_mut().failed(failure);
                plan.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                tally.borrow_mut().failed(Failure::Timeout);
                plan.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Some(connection) = open {
        connection.close().await;
    }
}

async fn one_request(
    plan: &Plan,
    slot: usize,
    open: Option<Connection>,
    request: &[u8],
    tally: &Shared,
) -> Result<(u16, Connection), Failure> {
    let mut connection = match open {
        Some(connection) => connection,
        None => {
            let config = &plan.configs[slot % plan.configs.len()];
            let connection = Connection::open(plan.addr, config, &plan.name).await?;
            tally.borrow_mut().handshake(connection.resumed);
            connection
        }
    };
    let status = connection.exchange(request).await?;
    Ok((status, connection))
}

/// Idle mode: connect, then hold the connection until the run ends.
async fn hold(plan: &Plan, tally: &Shared) {
    let opened = monoio::time::timeout(
        plan.timeout,
        Connection::open(plan.addr, &plan.configs[0], &plan.name),
    )
    .await;
    let connection = match opened {
        Ok(Ok(connection)) => connection,
        Ok(Err(failure)) => return tally.borrow_mut().failed(failure),
        Err(_) => return tally.borrow_mut().failed(Failure::Timeout),
    };
    tally.borrow_mut().handshake(connection.resumed);
    plan.completed.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    if plan.deadline > now {
        monoio::time::sleep(plan.deadline - now).await;
    }
    tally.borrow_mut().held += 1;
    connection.close().await;
}
