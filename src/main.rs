//! The `srrrs-edge` command: run a gateway, check a configuration, or start the demo.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use srrrs_edge::config::{self, IoDriverChoice};
use srrrs_edge::demo::{Demo, DemoOptions};
use srrrs_edge::runtime::{self, Settings};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`), which the Rust bindings do not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc give memory it no longer uses back to the kernel at once. By default
/// it waits a second and then acts only on a later allocation, so a gateway holding
/// thousands of idle connections kept the memory of the handshakes that opened them:
/// 26 KiB of resident memory per idle TLS connection, against 18 KiB with this.
fn return_freed_memory_promptly() {
    // SAFETY: mi_option_set stores one integer in mimalloc's option table; the purge
    // delay is read afresh at each purge and may be changed at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// Zero Trust edge ingress: mutual TLS for devices, a JWT on every request for users.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum TicketKeyAction {
    /// Put a new key first in a key file (made if missing), keeping older keys for
    /// decryption. Distribute the file to every node of the PoP, then they reload it.
    New {
        /// The key file.
        #[arg(short, long)]
        file: PathBuf,
        /// How many older keys to keep.
        #[arg(long, default_value_t = 2)]
        keep: usize,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Override `runtime.workers`.
        #[arg(long)]
        workers: Option<usize>,
        /// Override `runtime.io_driver`.
        #[arg(long, value_enum)]
        io_driver: Option<IoDriverChoice>,
    },
    /// Check a configuration and every file it names, then exit.
    Check {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Manage session ticket keys.
    TicketKey {
        #[command(subcommand)]
        action: TicketKeyAction,
    },
    /// Start a throwaway dev PKI, an echo backend and the gateway, and print curl commands.
    Demo {
        /// The TLS port on 127.0.0.1.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Force an I/O driver.
        #[arg(long, value_enum)]
        io_driver: Option<IoDriverChoice>,
    },
}

fn main() -> ExitCode {
    return_freed_memory_promptly();
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo { .. } => "info,srrrs_edge=debug",
        _ => "info",
    };
    init_logging(default_filter);

    let outcome = match cli.command {
        Command::Run {
            config,
            workers,
            io_driver,
        } => run(&config, workers, io_driver),
        Command::Check { config } => check(&config),
        Command::TicketKey {
            action: TicketKeyAction::New { file, keep },
        } => srrrs_edge::tls::tickets::write_new_key(&file, keep)
            .map(|()| println!("{}: new key first", file.display())),
        Command::Demo { port, io_driver } => demo(&DemoOptions { port, io_driver }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(
    path: &Path,
    workers: Option<usize>,
    io_driver: Option<IoDriverChoice>,
) -> Result<(), String> {
    let loaded = config::load(path).map_err(|e| e.to_string())?;
    let mut settings = Settings::build(&loaded).map_err(|e| e.to_string())?;
    if let Some(workers) = workers {
        settings.workers = workers;
    }
    if let Some(driver) = io_driver {
        settings.io_driver = driver;
    }
    for warning in &settings.warnings {
        warn!("{warning}");
    }
    let drain_timeout = settings.limits.drain_timeout;
    let mut signals = runtime::ShutdownSignals::install();
    let gateway = runtime::start(settings).map_err(|e| e.to_string())?;
    let signal = signals.wait();
    info!(
        signal,
        ?drain_timeout,
        "draining: no new connections; requests in flight may finish (a second signal stops at once)"
    );
    if gateway.drain(|| signals.stop_arrived()) {
        info!("drained; stopping");
    }
    Ok(())
}

fn check(path: &Path) -> Result<(), String> {
    let loaded = config::load(path).map_err(|e| e.to_string())?;
    let settings = Settings::build(&loaded).map_err(|e| e.to_string())?;
    let mut warnings = settings.warnings.clone();
    for ingress in settings.ingresses.all() {
        let Some(authorizer) = &ingress.auth else {
            continue;
        };
        if let Err(error) = authorizer.fetch_keys_now() {
            warnings.push(format!(
                "{}: {}: the IdP's keys could not be loaded now ({error}); until they are, \
                 every request to it is refused",
                path.display(),
                ingress.hostname
            ));
        }
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    println!("{}: ok", path.display());
    Ok(())
}

fn demo(options: &DemoOptions) -> Result<(), String> {
    let mut signals = runtime::ShutdownSignals::install();
    let demo = Demo::start(options)?;
    println!(
        "\nsrrrs-edge demo is running; files in {}",
        demo.folder.path().display()
    );
    println!("Try these, then press Ctrl-C to stop:\n");
    println!("{}", demo.instructions());
    let signal = signals.wait();
    info!(signal, "stopping the demo and removing its files");
    drop(demo);
    Ok(())
}
