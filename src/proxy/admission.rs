//! Caps on what a worker takes on. Connections per worker and per client address are
//! checked right after accept, before any TLS work: a connection over either cap is
//! closed at once and counted; it costs an accept and a close. Handshakes in progress
//! per worker are capped too, counted from a connection's first bytes (one that sends
//! nothing holds no place): beyond the cap a new handshake waits until one ends, or
//! until the oldest has stalled long enough to be dropped for it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::drain::Notify;
use super::exchange::Signal;
use crate::metrics::Shed;

/// Open connections per client address, over all workers.
#[derive(Debug)]
pub struct SourceCounts {
    cap: usize,
    counts: DashMap<IpAddr, usize>,
}

impl SourceCounts {
    /// Counts for a cap of `cap` connections per address; `None` when `cap` is 0 (none).
    pub fn new(cap: usize) -> Option<Arc<Self>> {
        (cap > 0).then(|| {
            Arc::new(Self {
                cap,
                counts: DashMap::new(),
            })
        })
    }

    /// A slot for one more connection from `ip`, unless it holds the cap already.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut count = self.counts.entry(ip).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            counts: self.clone(),
            ip,
        })
    }

    /// How many addresses hold a connection now.
    pub fn addresses(&self) -> usize {
        self.counts.len()
    }
}

/// One connection's place in its address's count; dropping it gives the place back.
#[derive(Debug)]
pub struct SourceSlot {
    counts: Arc<SourceCounts>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let counts = &self.counts.counts;
        if let Some(mut count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
        }
        counts.remove_if(&self.ip, |_, count| *count == 0);
    }
}

/// How long a handshake may take before, at the handshake cap, it is dropped to make
/// room for a new connection. Handshakes take a few round trips; one that takes this
/// long is waiting on its client.
pub const HANDSHAKE_STALL: Duration = Duration::from_secs(1);

/// A worker's counts of its own connections and handshakes.
#[derive(Debug, Default)]
pub struct WorkerLoad {
    connections: Cell<usize>,
    /// Handshakes in progress, oldest first, with when they began and how to stop them.
    handshakes: RefCell<BTreeMap<u64, (Instant, Rc<Signal>)>>,
    next_handshake: Cell<u64>,
    /// Woken each time a handshake ends, for accept loops waiting for a free slot.
    pub handshake_ended: Notify,
}

/// What an admitted connection holds until it closes.
#[derive(Debug)]
pub struct Admitted {
    load: Rc<WorkerLoad>,
    _source: Option<SourceSlot>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.load.connections.set(self.load.connections.get() - 1);
    }
}

/// A handshake in progress; dropping it ends its count.
#[derive(Debug)]
pub struct HandshakeSlot {
    load: Rc<WorkerLoad>,
    id: u64,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.load.handshakes.borrow_mut().remove(&self.id);
        self.load.handshake_ended.notify_all();
    }
}

/// The caps, as configured.
#[derive(Debug, Clone)]
pub struct Caps {
    /// Connections per worker.
    pub connections: usize,
    /// Handshakes in progress per worker.
    pub handshakes: usize,
    /// Connections per client address, shared by all workers.
    pub sources: Option<Arc<SourceCounts>>,
}

impl WorkerLoad {
    /// The worker's open connections.
    pub fn connections(&self) -> usize {
        self.connections.get()
    }

    /// The worker's handshakes in progress.
    pub fn handshakes(&self) -> usize {
        self.handshakes.borrow().len()
    }

    /// Whether another handshake may start. When not, new handshakes wait rather than
    /// all slowing each other down (a reconnect storm after a failover, say).
    pub fn has_handshake_room(&self, caps: &Caps) -> bool {
        self.handshakes() < caps.handshakes
    }

    /// How long the oldest handshake in progress has taken.
    pub fn oldest_handshake_age(&self) -> Option<Duration> {
        let handshakes = self.handshakes.borrow();
        let (started, _) = handshakes.values().next()?;
        Some(started.elapsed())
    }

    /// Drops the oldest handshake in progress when it has taken `stall` or longer, and
    /// says whether it did.
    pub fn evict_stalled(&self, stall: Duration) -> bool {
        let mut handshakes = self.handshakes.borrow_mut();
        let Some(mut oldest) = handshakes.first_entry() else {
            return false;
        };
        if oldest.get().0.elapsed() < stall {
            return false;
        }
        oldest.get_mut().1.raise();
        oldest.remove();
        true
    }

    /// Admits a connection from `ip`, or says which cap it would exceed.
    pub fn admit(self: &Rc<Self>, ip: IpAddr, caps: &Caps) -> Result<Admitted, Shed> {
        if self.connections.get() >= caps.connections {
            return Err(Shed::WorkerConnections);
        }
        let source = match &caps.sources {
            Some(sources) => Some(sources.enter(ip).ok_or(Shed::SourceConnections)?),
            None => None,
        };
        self.connections.set(self.connections.get() + 1);
        Ok(Admitted {
            load: self.clone(),
            _source: source,
        })
    }

    /// Counts a handshake until the slot is dropped; `evicted` is raised if it is
    /// dropped to make room.
    pub fn start_handshake(self: &Rc<Self>, evicted: Rc<Signal>) -> HandshakeSlot {
        let id = self.next_handshake.get();
        self.next_handshake.set(id + 1);
        self.handshakes
            .borrow_mut()
            .insert(id, (Instant::now(), evicted.clone()));
        HandshakeSlot {
            load: self.clone(),
            id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps_shed_the_connection_beyond_them_and_slots_come_back_when_dropped() {
        let sources = SourceCounts::new(2);
        let caps = Caps {
            connections: 3,
            handshakes: 1,
            sources: sources.clone(),
        };
        let load = Rc::new(WorkerLoad::default());
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());

        let first = load.admit(a, &caps).expect("first");
        let second = load.admit(a, &caps).expect("second");
        assert_eq!(load.admit(a, &caps).err(), Some(Shed::SourceConnections));
        let third = load.admit(b, &caps).expect("another address");
        assert_eq!(load.admit(b, &caps).err(), Some(Shed::WorkerConnections));

        drop((first, second, third));
        assert_eq!(sources.as_ref().map(|s| s.addresses()), Some(0));
        assert_eq!(load.connections(), 0);
        assert!(load.admit(a, &caps).is_ok());
    }

    #[test]
    fn handshake_room_comes_back_when_a_handshake_ends() {
        let caps = Caps {
            connections: 10,
            handshakes: 1,
            sources: None,
        };
        let load = Rc::new(WorkerLoad::default());
        let slot = load.start_handshake(Rc::default());
        assert!(!load.has_handshake_room(&caps));
        assert!(!load.evict_stalled(Duration::from_secs(60)));
        assert!(load.evict_stalled(Duration::ZERO));
        assert!(load.has_handshake_room(&caps));
        drop(slot);
        assert!(load.has_handshake_room(&caps));
        assert_eq!(load.handshakes(), 0);
    }
}
