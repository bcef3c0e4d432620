//! TLS termination: the server configuration, device (client certificate) verification
//! and its chain cache, revocation, session tickets, and rustls driven over monoio
//! sockets. What happens to the decrypted bytes is the proxy's business.

pub mod backend;
pub mod chain_cache;
pub mod client_auth;
pub mod handshake_notes;
pub mod identity;
pub mod ocsp;
pub mod pem;
mod refusal;
pub mod revocation;
mod server;
pub mod stream;
pub mod tickets;
pub mod trust;

pub use identity::ClientIdentity;
pub use refusal::HandshakeRefusal;
pub use server::{ServerCertificate, TlsPolicy, ALPN_HTTP11};
pub use trust::{describe_time, unix_now};

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, whose holders leave it consistent at every step: a thread that
/// panicked while holding it poisons nothing the next holder relies on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
