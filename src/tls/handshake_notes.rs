//! What one handshake has seen so far, for the parts rustls calls back into without
//! saying which connection they serve: the client verifier notes the chain it verified,
//! the ticketer notes the chain sealed in a ticket it opened, and when the ticketer seals
//! a new ticket it reads which chain to put in.
//!
//! These notes only decide what goes into tickets. Who the client is comes from what
//! rustls reports once the handshake is over (`peer_certificates`), never from here: a
//! ticket can be opened and still not resumed, and then its chain is nobody's.
//!
//! rustls calls back synchronously from `process_new_packets`. The handshake driver
//! installs its connection's notes on the worker thread around each such call, so the
//! callbacks always see the connection being processed, never another one whose
//! handshake is interleaved with it on the same thread.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use super::chain_cache::VerifiedChain;

thread_local! {
    static CURRENT: RefCell<Option<Rc<HandshakeNotes>>> = const { RefCell::new(None) };
}

/// One connection's notes.
#[derive(Debug, Default)]
pub struct HandshakeNotes {
    verified: RefCell<Option<Arc<VerifiedChain>>>,
    from_ticket: RefCell<Option<Arc<VerifiedChain>>>,
}

impl HandshakeNotes {
    /// The chain to seal in tickets issued now: the one verified in this handshake, or,
    /// when nothing was verified, the one from the ticket this handshake resumed.
    fn chain_for_tickets(&self) -> Option<Arc<VerifiedChain>> {
        self.verified
            .borrow()
            .clone()
            .or_else(|| self.from_ticket.borrow().clone())
    }
}

/// A copy of one connection's notes that can travel to another thread (the handshake
/// pool) and back.
#[derive(Debug, Default)]
pub struct DetachedNotes {
    verified: Option<Arc<VerifiedChain>>,
    from_ticket: Option<Arc<VerifiedChain>>,
}

impl HandshakeNotes {
    /// A copy to take to another thread.
    pub fn detach(&self) -> DetachedNotes {
        DetachedNotes {
            verified: self.verified.borrow().clone(),
            from_ticket: self.from_ticket.borrow().clone(),
        }
    }

    /// Takes back what was noted on the other thread.
    pub fn adopt(&self, notes: DetachedNotes) {
        *self.verified.borrow_mut() = notes.verified;
        *self.from_ticket.borrow_mut() = notes.from_ticket;
    }
}

/// Runs `step` on this thread with `notes` as the current handshake's, and gives them
/// back with what `step` noted.
pub fn within_detached<R>(notes: DetachedNotes, step: impl FnOnce() -> R) -> (R, DetachedNotes) {
    let local = Rc::new(HandshakeNotes {
        verified: RefCell::new(notes.verified),
        from_ticket: RefCell::new(notes.from_ticket),
    });
    let result = within(&local, step);
    (result, local.detach())
}

/// Runs `step` with `notes` as the current handshake's.
pub fn within<R>(notes: &Rc<HandshakeNotes>, step: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|current| current.replace(Some(notes.clone())));
    let result = step();
    CURRENT.with(|current| *current.borrow_mut() = previous);
    result
}

/// Notes that the client presented `chain` in this handshake, and it verified.
pub fn note_verified(chain: &Arc<VerifiedChain>) {
    with_current(|notes| *notes.verified.borrow_mut() = Some(chain.clone()));
}

/// Notes that a ticket offered in this handshake carries `chain`, still valid.
pub fn note_ticket_chain(chain: &Arc<VerifiedChain>) {
    with_current(|notes| *notes.from_ticket.borrow_mut() = Some(chain.clone()));
}

/// The chain to seal in a ticket issued now, in the current handshake.
pub fn chain_for_tickets() -> Option<Arc<VerifiedChain>> {
    CURRENT.with(|current| {
        current
            .borrow()
            .as_ref()
            .and_then(|notes| notes.chain_for_tickets())
    })
}

fn with_current(note: impl FnOnce(&HandshakeNotes)) {
    CURRENT.with(|current| {
        if let Some(notes) = current.borrow().as_ref() {
            note(notes);
        }
    });
}
