//! Graceful shutdown as a worker sees it: a process-wide switch the signal handler
//! turns, and per worker a wake-up for everything that must react to it (the accept
//! loops stop, connections waiting for a request close, requests in flight finish).
//! The wake-up itself ([`Notify`]) also serves the accept loops waiting for a free
//! handshake slot.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How often a worker looks at the process-wide switch.
const POLL: Duration = Duration::from_millis(50);

/// The process-wide switch: once turned, every worker drains.
#[derive(Debug, Default)]
pub struct DrainSwitch(AtomicBool);

impl DrainSwitch {
    /// Starts draining.
    pub fn turn(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether draining has started.
    pub fn is_turned(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Tasks of one worker waiting for something to happen: each waiter completes at the
/// first [`Notify::notify_all`] after it was made.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
    next_id: Cell<u64>,
}

impl Notify {
    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    /// Completes at the next [`Self::notify_all`]. Dropping it forgets the waiter.
    pub fn wait(&self) -> NotifyWait<'_> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        NotifyWait {
            notify: self,
            id,
            generation: self.generation.get(),
        }
    }
}

/// See [`Notify::wait`].
pub struct NotifyWait<'a> {
    notify: &'a Notify,
    id: u64,
    generation: u64,
}

impl Future for NotifyWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        self.notify
            .waiters
            .borrow_mut()
            .insert(self.id, context.waker().clone());
        Poll::Pending
    }
}

impl Drop for NotifyWait<'_> {
    fn drop(&mut self) {
        self.notify.waiters.borrow_mut().remove(&self.id);
    }
}

/// One worker's view of draining: a flag, and the tasks waiting for it.
#[derive(Debug, Default)]
pub struct Draining {
    raised: Cell<bool>,
    notify: Notify,
}

impl Draining {
    /// Whether the worker drains.
    pub fn is_raised(&self) -> bool {
        self.raised.get()
    }

    /// Raises the flag and wakes every waiter.
    pub fn raise(&self) {
        self.raised.set(true);
        self.notify.notify_all();
    }

    /// Completes once the worker drains.
    pub async fn wait(&self) {
        if !self.is_raised() {
            self.notify.wait().await;
        }
    }

    /// Runs on each worker: raises the flag when the process-wide switch turns.
    pub async fn follow(&self, switch: Arc<DrainSwitch>) {
        while !switch.is_turned() {
            monoio::time::sleep(POLL).await;
        }
        self.raise();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_wake_once_raised_and_forget_themselves_when_dropped() {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let draining = std::rc::Rc::new(Draining::default());
            let dropped = monoio::time::timeout(Duration::from_millis(10), draining.wait()).await;
            assert!(dropped.is_err());
            assert!(draining.notify.waiters.borrow().is_empty());

            let switch = Arc::new(DrainSwitch::default());
            let follower = {
                let (draining, switch) = (draining.clone(), switch.clone());
                monoio::spawn(async move { draining.follow(switch).await })
            };
            let waiter = {
                let draining = draining.clone();
                monoio::spawn(async move { draining.wait().await })
            };
            monoio::time::sleep(Duration::from_millis(20)).await;
            assert!(!draining.is_raised());
            switch.turn();
            waiter.await;
            follower.await;
            assert!(draining.is_raised());
            assert!(draining.notify.waiters.borrow().is_empty());
            // Raised stays raised: a later wait completes at once.
            draining.wait().await;
        });
    }
}
