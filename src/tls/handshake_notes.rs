//! What one handshake has established so far, for the parts rustls calls back into
//! without saying which connection they serve: the client verifier notes the chain it
//! verified, and the ticketer reads it to seal it into the tickets it issues.
//!
//! rustls calls both synchronously from `process_new_packets`. The handshake driver
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
    chain: RefCell<Option<Arc<VerifiedChain>>>,
}

impl HandshakeNotes {
    /// The chain verified during this handshake (fully, from the cache, or when its
    /// ticket was accepted).
    pub fn verified_chain(&self) -> Option<Arc<VerifiedChain>> {
        self.chain.borrow().clone()
    }
}

/// Runs `step` with `notes` as the current handshake's.
pub fn within<R>(notes: &Rc<HandshakeNotes>, step: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|current| current.replace(Some(notes.clone())));
    let result = step();
    CURRENT.with(|current| *current.borrow_mut() = previous);
    result
}

/// Notes that the current handshake's client presented `chain`, now verified.
pub fn note_verified(chain: &Arc<VerifiedChain>) {
    CURRENT.with(|current| {
        if let Some(notes) = current.borrow().as_ref() {
            *notes.chain.borrow_mut() = Some(chain.clone());
        }
    });
}

/// The chain verified so far in the current handshake.
pub fn current_chain() -> Option<Arc<VerifiedChain>> {
    CURRENT.with(|current| {
        current
            .borrow()
            .as_ref()
            .and_then(|notes| notes.verified_chain())
    })
}
