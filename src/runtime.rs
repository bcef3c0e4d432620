//! Workers and listeners: one monoio runtime per worker thread, each with its own
//! `SO_REUSEPORT` listener on every address, optionally pinned to a CPU, on io_uring or
//! epoll. Also the settings built from the whole configuration file.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use arc_swap::ArcSwap;
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, Runtime, RuntimeBuilder};
use tracing::{info, warn};

use crate::access_log::AccessLog;
use crate::admin::Readiness;
use crate::config::{self, ConfigError, IoDriverChoice, LimitsConfig, LoadedConfig};
use crate::handshake_pool::HandshakePool;
use crate::ingress::IngressSet;
use crate::metrics::Metrics;
use crate::proxy::admission::SourceCounts;
use crate::proxy::drain::DrainSwitch;
use crate::proxy::{self, Worker};
use crate::upstream::proxy_protocol::TrustedSources;
use crate::{admin, socket};

/// How often a worker's latencies are moved to where a scrape reads them.
const LATENCY_FLUSH: Duration = Duration::from_secs(1);

/// How often a drain looks at the open connections.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Pause after a failed accept (out of fds, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Everything the configuration file says, loaded and checked.
#[derive(Debug)]
pub struct Settings {
    /// Addresses to accept TLS on.
    pub listen: Vec<Listener>,
    /// Worker threads; `0` for one per allowed CPU.
    pub workers: usize,
    /// Pin each worker to a CPU.
    pub pin_workers: bool,
    /// Which I/O driver to run.
    pub io_driver: IoDriverChoice,
    /// Connection timeouts.
    pub limits: LimitsConfig,
    /// The admin listener's address.
    pub admin: Option<SocketAddr>,
    /// The access log, when one is configured.
    pub access_log: Option<config::AccessLogConfig>,
    /// The ingresses served.
    pub ingresses: IngressSet,
    /// Settings that work but are probably not what was meant, as `file:line: field: why`.
    pub warnings: Vec<String>,
    /// The configuration file, reloaded when it changes.
    pub file: PathBuf,
    /// The files whose change reloads the whole configuration: the file itself and the
    /// client CA bundles (certificates, keys, CRLs, ticket keys and JWKS files have
    /// reloaders of their own).
    pub watched: Vec<PathBuf>,
    /// What the file says about the settings only a restart changes.
    pub restart_only: RestartOnly,
}

/// An address to accept TLS on.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Where.
    pub addr: SocketAddr,
    /// The load balancers whose connections begin with a PROXY protocol header.
    pub proxy_sources: Option<Arc<TrustedSources>>,
}

/// The settings a reload leaves as they are, since they shape the listeners, the
/// workers and the logs: a change to one of them takes a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOnly {
    listen: Vec<config::Listed<config::ListenConfig>>,
    runtime: config::RuntimeConfig,
    limits: LimitsConfig,
    admin: Option<config::AdminConfig>,
    access_log: Option<config::AccessLogConfig>,
}

impl RestartOnly {
    fn of(config: &config::Config) -> Self {
        Self {
            listen: config.listen.clone(),
            runtime: config.runtime.clone(),
            limits: config.limits.clone(),
            admin: config.admin.clone(),
            access_log: config.access_log.clone(),
        }
    }

    /// The sections that differ in `other`.
    pub fn changed_in(&self, other: &Self) -> Vec<&'static str> {
        let sections = [
            ("listen", self.listen == other.listen),
            ("runtime", self.runtime == other.runtime),
            ("limits", self.limits == other.limits),
            ("admin", self.admin == other.admin),
            ("access_log", self.access_log == other.access_log),
        ];
        (sections.into_iter())
            .filter_map(|(name, same)| (!same).then_some(name))
            .collect()
    }
}

impl Settings {
    /// Checks every field and loads every file the configuration names, reporting all
    /// problems at once.
    pub fn build(loaded: &LoadedConfig) -> Result<Self, ConfigError> {
        let config = &loaded.config;
        let mut problems = loaded.problems();
        config::check_values(config, &mut problems);

        if config.listen.is_empty() {
            problems.push("listen", "at least one address is required");
        }
        let mut listen = Vec::new();
        for (index, entry) in config.listen.iter().enumerate() {
            let text = &entry.address;
            let addr = text.parse::<SocketAddr>().map_err(|_| {
                let why = format!("{text:?} is not an IP:port address (IPv6 as \"[::]:8443\")");
                problems.push(&format!("listen[{index}]"), why)
            });
            let trusted = entry.proxy_protocol.as_ref().map(|inbound| {
                TrustedSources::parse(&inbound.trusted).map_err(|error| {
                    let field = format!("listen[{index}].proxy_protocol.trusted");
                    problems.push(&field, error)
                })
            });
            if let (Ok(addr), Ok(trusted)) = (addr, trusted.transpose()) {
                listen.push(Listener {
                    addr,
                    proxy_sources: trusted.map(Arc::new),
                });
            }
        }
        let admin = config
            .admin
            .as_ref()
            .and_then(|admin| match admin.listen.parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    problems.push(
                        "admin.listen",
                        format!("{:?} is not an IP:port address", admin.listen),
                    );
                    None
                }
            });
        let ingresses = IngressSet::build(loaded, &mut problems);

        match ingresses {
            Some(ingresses) if problems.is_empty() => Ok(Self {
                warnings: problems.warnings(),
                listen,
                workers: config.runtime.workers,
                pin_workers: config.runtime.pin_workers,
                io_driver: config.runtime.io_driver,
                limits: config.limits.clone(),
                admin,
                access_log: config.access_log.clone(),
                ingresses,
                file: loaded.path.clone(),
                watched: watched_files(loaded),
                restart_only: RestartOnly::of(config),
            }),
            _ => Err(problems.into_error()),
        }
    }
}

/// The configuration file and every client CA bundle it names.
fn watched_files(loaded: &LoadedConfig) -> Vec<PathBuf> {
    let mut files = vec![loaded.path.clone()];
    for (_, source) in loaded.ingress_sources() {
        let policy = &source.ingress.transport_security;
        if policy.mode != config::ClientAuthMode::Tls {
            files.extend(
                policy
                    .client_ca_cert
                    .as_slice()
                    .iter()
                    .map(|file| source.resolve(file)),
            );
        }
    }
    files
}

/// The I/O driver a worker ended up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring.
    IoUring,
    /// epoll, monoio's legacy driver.
    Epoll,
}

impl IoDriver {
    /// The name logged and exported.
    pub fn name(self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug)]
pub enum StartError {
    /// A listener could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// A worker's runtime could not be built.
    Runtime(String),
}

impl std::error::Error for StartError {}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            Self::Runtime(message) => write!(f, "cannot start a worker: {message}"),
        }
    }
}

/// A started gateway: its workers run until the process exits.
#[derive(Debug)]
pub struct RunningGateway {
    /// The bound TLS addresses (ports resolved where `0` was configured).
    pub listen: Vec<SocketAddr>,
    /// The bound admin address.
    pub admin: Option<SocketAddr>,
    /// The driver the workers run on.
    pub io_driver: IoDriver,
    /// Live counters.
    pub metrics: Arc<Metrics>,
    drain: Arc<DrainSwitch>,
    drain_timeout: Duration,
}

impl RunningGateway {
    /// Drains: every worker stops accepting and closes its connections that wait for a
    /// request; requests in flight finish. Returns once no connection is open, when
    /// `drain_timeout` has passed, or when `interrupted` says so (a second signal),
    /// whichever comes first; `true` when every connection finished.
    pub fn drain(&self, mut interrupted: impl FnMut() -> bool) -> bool {
        self.drain.turn();
        let deadline = std::time::Instant::now() + self.drain_timeout;
        loop {
            let open = self.metrics.connections_open();
            if open == 0 {
                return true;
            }
            if std::time::Instant::now() >= deadline || interrupted() {
                warn!(open, "drain ended with connections still open");
                return false;
            }
            thread::sleep(DRAIN_POLL);
        }
    }
}

/// Binds every listener, starts every worker, and returns once all are serving.
pub fn start(settings: Settings) -> Result<RunningGateway, StartError> {
    let workers = worker_count(settings.workers);
    let (per_worker, listen) = bind_all(&settings.listen, workers)?;
    let metrics = Arc::new(Metrics::default());
    let drain = Arc::new(DrainSwitch::default());
    let shared = Arc::new(ArcSwap::from_pointee(settings.ingresses));
    let admin = match settings.admin {
        Some(addr) => {
            let readiness = Readiness {
                ingresses: shared.clone(),
                drain: drain.clone(),
            };
            Some(
                admin::start(addr, metrics.clone(), readiness)
                    .map_err(|error| StartError::Bind { addr, error })?,
            )
        }
        None => None,
    };
    let access_log = match &settings.access_log {
        Some(config) => Some(AccessLog::start(config).map_err(|error| {
            StartError::Runtime(format!("access log {}: {error}", config.path))
        })?),
        None => None,
    };
    if let Some(log) = &access_log {
        metrics.set_access_log(log.clone());
    }
    let ingresses = shared.load_full();
    for ingress in ingresses.all() {
        ingress
            .start()
            .map_err(|error| StartError::Runtime(error.to_string()))?;
    }
    metrics.set_ingresses(&ingresses);
    let watch = crate::reload::ConfigWatch {
        file: settings.file,
        watched: settings.watched,
        restart_only: settings.restart_only,
        shared: shared.clone(),
        metrics: metrics.clone(),
    };
    watch
        .spawn()
        .map_err(|error| StartError::Runtime(error.to_string()))?;
    let sources = SourceCounts::new(settings.limits.max_connections_per_source);
    let cpus = if settings.pin_workers {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (report, reports) = mpsc::channel();
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let plan = WorkerPlan {
            index,
            listeners,
            cpu: (!cpus.is_empty()).then(|| cpus[index % cpus.len()]),
            driver: settings.io_driver,
            worker: (shared.clone(), settings.limits.clone(), metrics.clone()),
            sources: sources.clone(),
            access_log: access_log.clone(),
            drain: drain.clone(),
        };
        let report = report.clone();
        thread::Builder::new()
            .name(format!("edge-worker-{index}"))
            .spawn(move || run_worker(plan, report))
            .map_err(|error| StartError::Runtime(error.to_string()))?;
    }
    drop(report);

    let io_driver = collect_drivers(reports, workers)?;
    metrics.set_io_driver(io_driver.name());
    log_startup(&listen, workers, io_driver, admin, &ingresses);
    Ok(RunningGateway {
        listen,
        admin,
        io_driver,
        metrics,
        drain,
        drain_timeout: settings.limits.drain_timeout,
    })
}

fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    thread::available_parallelism().map_or(1, usize::from)
}

/// Binds each address once per worker, after checking that no other process listens
/// there. A configured port 0 becomes one free port that every worker shares.
fn bind_all(
    listen: &[Listener],
    workers: usize,
) -> Result<(Vec<Vec<BoundListener>>, Vec<SocketAddr>), StartError> {
    let mut per_worker: Vec<Vec<BoundListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for listener in listen {
        let configured = listener.addr;
        let mut addr = socket::claim(configured).map_err(|error| StartError::Bind {
            addr: configured,
            error,
        })?;
        for listeners in per_worker.iter_mut() {
            let bound_listener =
                socket::bind_reuseport(addr).map_err(|error| StartError::Bind { addr, error })?;
            addr = bound_listener
                .local_addr()
                .map_err(|error| StartError::Bind { addr, error })?;
            listeners.push((bound_listener, listener.proxy_sources.clone()));
        }
        bound.push(addr);
    }
    Ok((per_worker, bound))
}

/// A bound socket, and the load balancers whose PROXY headers it reads.
type BoundListener = (TcpListener, Option<Arc<TrustedSources>>);

struct WorkerPlan {
    index: usize,
    listeners: Vec<BoundListener>,
    cpu: Option<core_affinity::CoreId>,
    driver: IoDriverChoice,
    worker: (Arc<ArcSwap<IngressSet>>, LimitsConfig, Arc<Metrics>),
    sources: Option<Arc<SourceCounts>>,
    access_log: Option<Arc<AccessLog>>,
    drain: Arc<DrainSwitch>,
}

type DriverReport = Result<IoDriver, String>;

enum WorkerRuntime {
    IoUring(Runtime<TimeDriver<IoUringDriver>>),
    Epoll(Runtime<TimeDriver<LegacyDriver>>),
}

fn run_worker(plan: WorkerPlan, report: mpsc::Sender<DriverReport>) {
    if let Some(cpu) = plan.cpu {
        if !core_affinity::set_for_current(cpu) {
            warn!(
                worker = plan.index,
                cpu = cpu.id,
                "could not pin worker to its CPU"
            );
        }
    }
    let runtime = match build_runtime(plan.driver) {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = report.send(Err(error));
            return;
        }
    };
    let (ingresses, limits, metrics) = plan.worker;
    let worker = Rc::new(Worker::new(
        plan.index,
        ingresses,
        limits,
        metrics.register_worker(),
        plan.sources,
        plan.access_log,
    ));
    let serve = serve_listeners(plan.listeners, worker, plan.drain);
    match runtime {
        WorkerRuntime::IoUring(mut runtime) => {
            let _ = report.send(Ok(IoDriver::IoUring));
            runtime.block_on(serve);
        }
        WorkerRuntime::Epoll(mut runtime) => {
            let _ = report.send(Ok(IoDriver::Epoll));
            runtime.block_on(serve);
        }
    }
}

fn build_runtime(choice: IoDriverChoice) -> Result<WorkerRuntime, String> {
    let uring = || {
        RuntimeBuilder::<IoUringDriver>::new()
            .enable_timer()
            .attach_thread_pool(Box::new(HandshakePool::default()))
            .build()
    };
    let epoll = || {
        RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .attach_thread_pool(Box::new(HandshakePool::default()))
            .build()
    };
    match choice {
        IoDriverChoice::IoUring => uring()
            .map(WorkerRuntime::IoUring)
            .map_err(|error| format!("io_uring is unavailable: {error}")),
        IoDriverChoice::Epoll => epoll()
            .map(WorkerRuntime::Epoll)
            .map_err(|error| error.to_string()),
        IoDriverChoice::Auto => match uring() {
            Ok(runtime) => Ok(WorkerRuntime::IoUring(runtime)),
            Err(error) => {
                warn!(%error, "io_uring is unavailable; falling back to epoll");
                epoll()
                    .map(WorkerRuntime::Epoll)
                    .map_err(|error| error.to_string())
            }
        },
    }
}

fn collect_drivers(
    reports: mpsc::Receiver<DriverReport>,
    workers: usize,
) -> Result<IoDriver, StartError> {
    let mut drivers = Vec::with_capacity(workers);
    for report in reports.iter().take(workers) {
        drivers.push(report.map_err(StartError::Runtime)?);
    }
    if drivers.len() < workers {
        return Err(StartError::Runtime("a worker exited during startup".into()));
    }
    let first = drivers[0];
    if drivers.iter().any(|driver| *driver != first) {
        warn!("workers run on different I/O drivers; io_uring failed on some of them");
    }
    Ok(first)
}

/// Serves until the gateway drains and this worker's last connection has ended.
async fn serve_listeners(
    listeners: Vec<BoundListener>,
    worker: Rc<Worker>,
    drain: Arc<DrainSwitch>,
) {
    {
        let worker = worker.clone();
        monoio::spawn(async move { worker.draining.follow(drain).await });
    }
    {
        let worker = worker.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(LATENCY_FLUSH).await;
                worker.metrics.absorb(&worker.latencies);
                // A worker that accepts nothing still lets go of replaced ingresses.
                worker.notice_reload();
            }
        });
    }
    monoio::spawn(crate::proxy::live::watch(
        worker.live.clone(),
        worker.metrics.clone(),
    ));
    let mut loops = Vec::new();
    for (listener, proxied) in listeners {
        match monoio::net::TcpListener::from_std(listener) {
            Ok(listener) => loops.push(monoio::spawn(accept_loop(
                listener,
                proxied,
                worker.clone(),
            ))),
            Err(error) => warn!(%error, "listener could not join the worker's runtime"),
        }
    }
    for handle in loops {
        handle.await;
    }
    // Draining: the connections still open finish their requests.
    while worker.open_connections() > 0 {
        monoio::time::sleep(DRAIN_POLL).await;
    }
}

/// Accepts until the worker drains; then the listener closes, and new connections to
/// this worker's socket are refused.
async fn accept_loop(
    listener: monoio::net::TcpListener,
    proxied: Option<Arc<TrustedSources>>,
    worker: Rc<Worker>,
) {
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = worker.draining.wait() => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                proxy::take(socket, peer, proxied.as_deref(), &worker);
            }
            Err(error) => {
                warn!(%error, "accept failed");
                monoio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

fn log_startup(
    listen: &[SocketAddr],
    workers: usize,
    driver: IoDriver,
    admin: Option<SocketAddr>,
    ingresses: &IngressSet,
) {
    for addr in listen {
        info!(%addr, "listening");
    }
    if let Some(addr) = admin {
        info!(%addr, "admin listening");
    }
    info!(workers, io_driver = driver.name(), "workers started");
    for ingress in ingresses.all() {
        ingress.log_startup();
    }
}

/// The signals the gateway answers: SIGINT and SIGTERM drain it (a second one stops it
/// at once), SIGHUP asks for a reload. Installed before anything starts, so that an early SIGHUP (a reload sent
/// right after a start) never takes the default action of ending the process.
pub struct ShutdownSignals(Option<signal_hook::iterator::Signals>);

impl ShutdownSignals {
    pub fn install() -> Self {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]);
        if let Err(error) = &signals {
            warn!(%error, "signal handlers could not be installed; SIGHUP will stop the process");
        }
        Self(signals.ok())
    }

    /// Blocks until SIGINT or SIGTERM arrives, and returns its name. SIGHUP meanwhile
    /// asks for a reload.
    pub fn wait(&mut self) -> &'static str {
        let Some(signals) = self.0.as_mut() else {
            // Without signal handling the default action (exit) still applies.
            loop {
                thread::park();
            }
        };
        for signal in signals.forever() {
            if let Some(name) = stop_signal(signal) {
                return name;
            }
        }
        "SIGINT"
    }

    /// Whether SIGINT or SIGTERM arrived since the last look, without waiting.
    pub fn stop_arrived(&mut self) -> bool {
        let Some(signals) = self.0.as_mut() else {
            return false;
        };
        signals
            .pending()
            .any(|signal| stop_signal(signal).is_some())
    }
}

/// The name of a signal that stops the gateway; SIGHUP asks for a reload instead.
fn stop_signal(signal: i32) -> Option<&'static str> {
    match signal {
        signal_hook::consts::SIGHUP => {
            crate::reload::request();
            crate::access_log::request_reopen();
            None
        }
        signal_hook::consts::SIGTERM => Some("SIGTERM"),
        _ => Some("SIGINT"),
    }
}
