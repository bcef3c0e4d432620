//! Idle backend connections kept for reuse, per worker. A connection whose exchange
//! ended cleanly (every response complete, the backend not closing) waits here for the
//! next client connection, so that a new client does not cost a new backend connection.
//!
//! While it waits, a read is kept pending on it: if the backend closes it (or sends
//! anything, which no request asked for), or it idles out, the read ends and the
//! connection leaves the pool and closes. Taking it cancels that read; a read that was
//! cancelled, not completed, proves the connection still idle.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use monoio::io::{CancelHandle, Canceller};
use monoio::task::JoinHandle;

use super::{BackendReader, BackendWriter};

/// Idle connections of one worker.
pub struct IdlePool {
    entries: RefCell<Vec<Idle>>,
    capacity: usize,
    timeout: Duration,
    next_id: Cell<u64>,
}

struct Idle {
    id: u64,
    backend: usize,
    writer: BackendWriter,
    watch: JoinHandle<Option<BackendReader>>,
    stop: Canceller,
}

impl IdlePool {
    /// A pool of at most `capacity` connections, each kept at most `timeout`.
    pub fn new(capacity: usize, timeout: Duration) -> Rc<Self> {
        Rc::new(Self {
            entries: RefCell::new(Vec::new()),
            capacity,
            timeout,
            next_id: Cell::new(0),
        })
    }

    /// Keeps the connection to backend number `backend` for reuse.
    pub fn put(self: &Rc<Self>, backend: usize, reader: BackendReader, writer: BackendWriter) {
        if self.capacity == 0 {
            return;
        }
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let stop = Canceller::new();
        let watch = monoio::spawn(watch(self.clone(), id, reader, stop.handle()));
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= self.capacity {
            let oldest = entries.remove(0);
            drop(oldest.stop.cancel());
        }
        entries.push(Idle {
            id,
            backend,
            writer,
            watch,
            stop,
        });
    }

    /// The most recently parked connection that is still idle, with its backend number.
    pub async fn take(&self) -> Option<(usize, BackendReader, BackendWriter)> {
        loop {
            let idle = self.entries.borrow_mut().pop()?;
            drop(idle.stop.cancel());
            if let Some(reader) = idle.watch.await {
                return Some((idle.backend, reader, idle.writer));
            }
        }
    }

    /// How many connections are parked.
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    fn forget(&self, id: u64) {
        self.entries.borrow_mut().retain(|idle| idle.id != id);
    }
}

/// Waits on an idle connection: gives the reader back when cancelled (still idle);
/// otherwise removes the connection from the pool, which closes it.
async fn watch(
    pool: Rc<IdlePool>,
    id: u64,
    mut reader: BackendReader,
    stop: CancelHandle,
) -> Option<BackendReader> {
    let buffer = Vec::with_capacity(64);
    let outcome = monoio::time::timeout(pool.timeout, reader.read(buffer, &stop)).await;
    if let Ok((Err(error), _)) = &outcome {
        if error.raw_os_error() == Some(libc::ECANCELED) {
            return Some(reader);
        }
    }
    pool.forget(id);
    None
}
