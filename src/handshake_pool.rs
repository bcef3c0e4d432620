//! Each worker's threads for the handshake steps that may block: a client verifier
//! waiting for an OCSP answer. A worker's pool threads are started by the worker, so
//! they share its CPU when workers are pinned and the step stays on the worker's core.
//! A step never queues behind blocked ones while the pool can grow: a thread is added
//! whenever the steps waiting outnumber the idle threads, up to `MAX_THREADS`, and a
//! thread idle for `IDLE_EXIT` leaves.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use monoio::blocking::{BlockingTask, ThreadPool};
use tracing::warn;

/// The most threads of one worker at once: past this, steps queue.
const MAX_THREADS: usize = 256;

/// How long a thread with nothing to do stays.
const IDLE_EXIT: Duration = Duration::from_secs(30);

/// One worker's pool, as monoio's `spawn_blocking` reaches it; it starts no thread
/// until a step needs one.
pub struct HandshakePool(Arc<Pool>);

impl Default for HandshakePool {
    fn default() -> Self {
        Self::with_most(MAX_THREADS)
    }
}

impl HandshakePool {
    fn with_most(threads: usize) -> Self {
        Self(Arc::new(Pool {
            state: Mutex::default(),
            ready: Condvar::new(),
            most: threads,
        }))
    }
}

impl ThreadPool for HandshakePool {
    fn schedule_task(&self, task: BlockingTask) {
        self.0.schedule(task);
    }
}

struct Pool {
    state: Mutex<State>,
    ready: Condvar,
    most: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<BlockingTask>,
    threads: usize,
    idle: usize,
}

impl Pool {
    fn schedule(self: &Arc<Self>, task: BlockingTask) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.queue.push_back(task);
        if state.queue.len() > state.idle && state.threads < self.most {
            let pool = self.clone();
            let spawned = std::thread::Builder::new()
                .name("srrrs-handshake".into())
                .spawn(move || pool.serve());
            match spawned {
                Ok(_) => state.threads += 1,
                Err(error) if state.threads == 0 => {
                    // Nobody would ever run it: dropped, the handshake fails.
                    warn!(%error, "could not start a handshake pool thread");
                    let _ = state.queue.pop_back();
                }
                Err(error) => warn!(%error, "could not add a handshake pool thread"),
            }
        }
        drop(state);
        self.ready.notify_one();
    }

    fn serve(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(task) = state.queue.pop_front() {
                drop(state);
                // A step that panics fails its own handshake (see `tls::stream`); the
                // thread stays, and stays counted.
                let _ = panic::catch_unwind(AssertUnwindSafe(|| task.run()));
                state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.idle += 1;
            let (guard, waited) = self
                .ready
                .wait_timeout(state, IDLE_EXIT)
                .unwrap_or_else(|p| p.into_inner());
            state = guard;
            state.idle -= 1;
            if waited.timed_out() && state.queue.is_empty() {
                state.threads -= 1;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    /// A gate that steps wait at until it opens (or 20 s pass).
    type Gate = Arc<(Mutex<bool>, Condvar)>;

    fn wait_at(gate: &Gate) {
        let (open, opened) = &**gate;
        let open = open.lock().unwrap();
        let _ = opened
            .wait_timeout_while(open, Duration::from_secs(20), |open| !*open)
            .unwrap();
    }

    #[test]
    fn a_step_that_panics_does_not_take_its_thread_along() {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .attach_thread_pool(Box::new(HandshakePool::with_most(1)))
            .build()
            .expect("runtime");
        let answer = runtime.block_on(async {
            // Its handle never resolves: monoio leaves a panicked step unfinished.
            drop(monoio::spawn_blocking(|| panic!("a step that panics")));
            monoio::spawn_blocking(|| 42).await.expect("ran")
        });
        assert_eq!(answer, 42);
    }

    #[test]
    fn a_step_does_not_queue_behind_blocked_ones() {
        let gate: Gate = Arc::default();
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .attach_thread_pool(Box::new(HandshakePool::default()))
            .build()
            .expect("runtime");
        let took = runtime.block_on(async {
            let blocked: Vec<_> = (0..40)
                .map(|_| {
                    let gate = gate.clone();
                    monoio::spawn_blocking(move || wait_at(&gate))
                })
                .collect();
            let started = Instant::now();
            monoio::spawn_blocking(|| ()).await.expect("ran");
            let took = started.elapsed();
            *gate.0.lock().unwrap() = true;
            gate.1.notify_all();
            for step in blocked {
                step.await.expect("ran");
            }
            took
        });
        assert!(took < Duration::from_secs(10), "queued for {took:?}");
    }
}
