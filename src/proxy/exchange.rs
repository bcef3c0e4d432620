//! What the request direction and the response direction of one connection share:
//! the requests forwarded and still awaiting their response, the gateway's own final
//! response (sent only once every forwarded request has been answered), and the
//! switches that stop either side.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::task::{Poll, Waker};
use std::time::Instant;

use monoio::io::{CancelHandle, Canceller};

use crate::access_log::RequestEntry;
use crate::http::GatewayResponse;

/// Stops every pending socket operation started under its handle.
pub struct Abort {
    canceller: RefCell<Option<Canceller>>,
    handle: CancelHandle,
}

impl Abort {
    /// A fresh switch.
    pub fn new() -> Self {
        let canceller = Canceller::new();
        let handle = canceller.handle();
        Self {
            canceller: RefCell::new(Some(canceller)),
            handle,
        }
    }

    /// The handle operations run under.
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

/// A forwarded request whose response has not yet ended.
#[derive(Debug, Clone, Copy)]
pub struct PendingRequest {
    /// It was `HEAD`: its response has no body.
    pub is_head: bool,
    /// It asked for a WebSocket upgrade.
    pub upgrade: bool,
    /// The connection ends after its response.
    pub close: bool,
    /// When its head was complete.
    pub received: Instant,
}

/// A wake-up from one direction to the other. Both run in one task, so a flag and the
/// task's waker are enough.
#[derive(Debug, Default)]
pub struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    /// Raises the signal and wakes its waiter.
    pub fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits until the signal is raised, and lowers it.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|context| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(context.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// The state one connection's two directions share.
pub struct Exchange {
    pending: RefCell<VecDeque<PendingRequest>>,
    /// The access log's entries of the pending requests, in the same order (empty when
    /// there is no access log).
    entries: RefCell<VecDeque<RequestEntry>>,
    /// The access log's entry of the request the final response answers.
    final_entry: RefCell<Option<RequestEntry>>,
    final_response: RefCell<Option<(GatewayResponse, bool)>>,
    requests_done: Cell<bool>,
    refused: Cell<bool>,
    poisoned: Cell<bool>,
    aborted: Cell<bool>,
    upgrade: Cell<Option<bool>>,
    /// Raised by the response side each time a response ends or an upgrade is decided.
    pub responded: Signal,
    abort: Abort,
    wake: Abort,
    last_activity: Cell<Instant>,
    backend_activity: Cell<Instant>,
    awaiting_backend: Cell<bool>,
    body_in_flight: Cell<bool>,
    closing: Cell<bool>,
}

impl Exchange {
    /// A fresh exchange.
    pub fn new() -> Self {
        Self {
            pending: RefCell::default(),
            entries: RefCell::default(),
            final_entry: RefCell::default(),
            final_response: RefCell::default(),
            requests_done: Cell::new(false),
            refused: Cell::new(false),
            poisoned: Cell::new(false),
            aborted: Cell::new(false),
            upgrade: Cell::new(None),
            responded: Signal::default(),
            abort: Abort::new(),
            wake: Abort::new(),
            last_activity: Cell::new(Instant::now()),
            backend_activity: Cell::new(Instant::now()),
            awaiting_backend: Cell::new(false),
            body_in_flight: Cell::new(false),
            closing: Cell::new(false),
        }
    }

    /// The handle every socket operation but the response side's reads runs under.
    pub fn cancel(&self) -> &CancelHandle {
        self.abort.handle()
    }

    /// The handle the response side's backend reads run under: also fired to wake it
    /// when the request side is done and nothing is pending.
    pub fn response_read_cancel(&self) -> &CancelHandle {
        self.wake.handle()
    }

    /// Records a request about to be forwarded, with its access log entry.
    pub fn forwarded(&self, request: PendingRequest, entry: Option<RequestEntry>) {
        self.pending.borrow_mut().push_back(request);
        if let Some(entry) = entry {
            self.entries.borrow_mut().push_back(entry);
        }
    }

    /// Counts body bytes of the request forwarded last, if it is still pending.
    pub fn add_bytes_in(&self, bytes: u64) {
        if let Some(entry) = self.entries.borrow_mut().back_mut() {
            entry.bytes_in += bytes;
        }
    }

    /// The access log entry of the oldest pending request, taken when its response
    /// ends (or is given up).
    pub fn take_entry(&self) -> Option<RequestEntry> {
        self.entries.borrow_mut().pop_front()
    }

    /// Sets the access log entry of the request the final response will answer.
    pub fn set_final_entry(&self, entry: Option<RequestEntry>) {
        *self.final_entry.borrow_mut() = entry;
    }

    /// The access log entry for the final response: the refused request's, or the
    /// pending request's that broke off.
    pub fn take_final_entry(&self) -> Option<RequestEntry> {
        self.final_entry
            .borrow_mut()
            .take()
            .or_else(|| self.take_entry())
    }

    /// The entries of requests that never got a response.
    pub fn take_unanswered(&self) -> Vec<RequestEntry> {
        let mut entries: Vec<RequestEntry> =
            self.final_entry.borrow_mut().take().into_iter().collect();
        entries.extend(self.entries.borrow_mut().drain(..));
        entries
    }

    /// The oldest request still awaiting its response.
    pub fn front(&self) -> Option<PendingRequest> {
        self.pending.borrow().front().copied()
    }

    /// The front request's response has ended.
    pub fn answered(&self) -> Option<PendingRequest> {
        let request = self.pending.borrow_mut().pop_front();
        self.responded.raise();
        request
    }

    /// How many requests await their response.
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }

    /// The request side forwards nothing more. `response`, if any, is sent once every
    /// pending request has been answered (`with_body` false for an answer to HEAD).
    pub fn finish_requests(&self, response: Option<(GatewayResponse, bool)>) {
        if response.is_some() {
            *self.final_response.borrow_mut() = response;
            self.refused.set(true);
        }
        self.requests_done.set(true);
        if self.pending() == 0 {
            self.wake.fire();
        }
    }

    /// A request broke off after part of it reached the backend: its response will not
    /// come. `response` is sent only if no byte of a response is in flight.
    /// A request side that broke off first keeps its own answer: a backend closing in
    /// reaction to that is no news to the client.
    pub fn poison(&self, response: GatewayResponse) {
        if !self.poisoned.get() {
            *self.final_response.borrow_mut() = Some((response, true));
        }
        self.refused.set(true);
        self.poisoned.set(true);
        self.requests_done.set(true);
        self.wake.fire();
    }

    /// Whether the response side should stop reading and end the connection.
    pub fn response_side_done(&self) -> bool {
        self.aborted.get() || self.poisoned.get() || self.requests_done.get() && self.pending() == 0
    }

    /// Whether the gateway ended the exchange with a response of its own: the client may
    /// still be sending, and deserves a moment to read it.
    pub fn gave_final_response(&self) -> bool {
        self.refused.get()
    }

    /// Whether a request broke off mid-body.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.get()
    }

    /// Takes the gateway's final response, if there is one.
    pub fn take_final_response(&self) -> Option<(GatewayResponse, bool)> {
        self.final_response.borrow_mut().take()
    }

    /// Stops everything now.
    pub fn abort(&self) {
        self.aborted.set(true);
        self.abort.fire();
        self.wake.fire();
        self.responded.raise();
    }

    /// Whether [`Self::abort`] has run.
    pub fn is_aborted(&self) -> bool {
        self.aborted.get()
    }

    /// Records how an upgrade request was answered.
    pub fn decide_upgrade(&self, switched: bool) {
        self.upgrade.set(Some(switched));
        self.responded.raise();
    }

    /// Waits for the answer to an upgrade request: `true` when the backend switched.
    pub async fn upgrade_outcome(&self) -> Option<bool> {
        loop {
            if let Some(decision) = self.upgrade.take() {
                return Some(decision);
            }
            if self.aborted.get() {
                return None;
            }
            self.responded.wait().await;
        }
    }

    /// Notes that bytes moved.
    pub fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    /// When bytes last moved.
    pub fn last_activity(&self) -> Instant {
        self.last_activity.get()
    }

    /// Notes that bytes moved to or from the backend.
    pub fn backend_touch(&self) {
        let now = Instant::now();
        self.last_activity.set(now);
        self.backend_activity.set(now);
    }

    /// When bytes last moved to or from the backend, or the gateway began waiting on
    /// it.
    pub fn backend_activity(&self) -> Instant {
        self.backend_activity.get()
    }

    /// Notes whether the response side is waiting for the backend's bytes (rather than
    /// for the client to take what it has).
    pub fn set_awaiting_backend(&self, waiting: bool) {
        if waiting {
            self.backend_activity.set(Instant::now());
        }
        self.awaiting_backend.set(waiting);
    }

    /// The response in progress told the client the connection closes after it: no
    /// further request is forwarded.
    pub fn close_after_current(&self) {
        self.closing.set(true);
    }

    /// Whether [`Self::close_after_current`] has run.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Notes whether a request body is still being forwarded: until it is whole, the
    /// gateway may be waiting on the client, not the backend.
    pub fn set_body_in_flight(&self, in_flight: bool) {
        self.body_in_flight.set(in_flight);
        if !in_flight {
            self.backend_activity.set(Instant::now());
        }
    }

    /// Whether the gateway waits on the backend for a response that is due: a request
    /// forwarded whole, and the response side waiting for the backend's bytes.
    pub fn backend_owes_response(&self) -> bool {
        self.awaiting_backend.get() && !self.body_in_flight.get() && self.pending() > 0
    }
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}
