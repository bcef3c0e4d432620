//! The relay step: bytes both ways between a client session and a backend connection,
//! with half-closes passed on, an idle timeout over both directions, and every socket
//! operation cancellable so that one side ending can stop the other. This is the one
//! place a kTLS splice would replace.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use monoio::io::{CancelHandle, Canceller};
use tracing::debug;

use crate::tls::stream::{TlsReader, TlsWriter};
use crate::upstream::{BackendReader, BackendWriter};

/// Size of each backend read.
const READ_CHUNK: usize = 16 * 1024;

/// Bytes moved by a relay.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    /// Plaintext bytes from the client to the backend.
    pub to_backend: u64,
    /// Plaintext bytes from the backend to the client.
    pub to_client: u64,
}

/// Stops every pending socket operation of one connection.
pub struct Abort {
    canceller: RefCell<Option<Canceller>>,
    handle: CancelHandle,
}

impl Abort {
    /// A fresh abort switch.
    pub fn new() -> Self {
        let canceller = Canceller::new();
        let handle = canceller.handle();
        Self {
            canceller: RefCell::new(Some(canceller)),
            handle,
        }
    }

    /// The handle each operation of this connection is started with.
    pub fn handle(&self) -> &CancelHandle {
        &self.handle
    }

    /// Cancels every operation started with [`Self::handle`], now and later.
    pub fn fire(&self) {
        if let Some(canceller) = self.canceller.borrow_mut().take() {
            canceller.cancel();
        }
    }
}

impl Default for Abort {
    fn default() -> Self {
        Self::new()
    }
}

struct Shared {
    abort: Abort,
    last_activity: Cell<Instant>,
}

impl Shared {
    fn touch(&self) {
        self.last_activity.set(Instant::now());
    }
}

/// Relays until both directions have ended, either side fails, or nothing moves for
/// `idle`. `pending` is client plaintext already read, sent to the backend first.
pub async fn relay(
    client_reader: &mut TlsReader,
    client_writer: &mut TlsWriter,
    backend: (BackendReader, BackendWriter),
    pending: Vec<u8>,
    idle: Duration,
) -> Transferred {
    let shared = Shared {
        abort: Abort::new(),
        last_activity: Cell::new(Instant::now()),
    };
    let (backend_reader, backend_writer) = backend;
    let both = async {
        monoio::join!(
            client_to_backend(client_reader, backend_writer, pending, &shared),
            backend_to_client(backend_reader, client_writer, &shared),
        )
    };
    monoio::select! {
        (to_backend, to_client) = both => Transferred { to_backend, to_client },
        _ = watchdog(&shared, idle) => Transferred::default(),
    }
}

async fn client_to_backend(
    client: &mut TlsReader,
    mut backend: BackendWriter,
    mut buffer: Vec<u8>,
    shared: &Shared,
) -> u64 {
    let cancel = shared.abort.handle();
    let mut moved = 0;
    loop {
        if !buffer.is_empty() {
            moved += buffer.len() as u64;
            let (sent, returned) = backend.send_all(buffer, cancel).await;
            buffer = returned;
            if let Err(error) = sent {
                debug!(%error, "backend write failed");
                shared.abort.fire();
                return moved;
            }
            buffer.clear();
        }
        match client.read(&mut buffer, cancel).await {
            Ok(0) => {
                debug!("client finished sending");
                let _ = backend.shutdown().await;
                return moved;
            }
            Ok(_) => shared.touch(),
            Err(error) => {
                debug!(%error, "client read ended");
                shared.abort.fire();
                return moved;
            }
        }
    }
}

async fn backend_to_client(
    mut backend: BackendReader,
    client: &mut TlsWriter,
    shared: &Shared,
) -> u64 {
    let cancel = shared.abort.handle();
    let mut buffer = Vec::with_capacity(READ_CHUNK);
    let mut moved = 0;
    loop {
        buffer.clear();
        let (result, returned) = backend.read(buffer, cancel).await;
        buffer = returned;
        match result {
            Ok(0) => {
                debug!("backend closed");
                let _ = client.close(cancel).await;
                shared.abort.fire();
                return moved;
            }
            Ok(read) => {
                shared.touch();
                moved += read as u64;
                if let Err(error) = client.write_all(&buffer[..read], cancel).await {
                    debug!(%error, "client write failed");
                    shared.abort.fire();
                    return moved;
                }
            }
            Err(error) => {
                debug!(%error, "backend read ended");
                shared.abort.fire();
                return moved;
            }
        }
    }
}

/// Fires the abort once neither direction has moved a byte for `idle`, then waits for
/// the relay to wind down.
async fn watchdog(shared: &Shared, idle: Duration) {
    loop {
        let deadline = shared.last_activity.get() + idle;
        if Instant::now() >= deadline {
            debug!(?idle, "idle timeout");
            shared.abort.fire();
            std::future::pending::<()>().await;
        }
        monoio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
    }
}
