//! TLS termination: the server configuration, device (client certificate) verification,
//! revocation, and rustls driven over monoio sockets. What happens to the decrypted bytes
//! is the proxy's business.

mod client_auth;
pub mod identity;
pub mod pem;
mod refusal;
pub mod revocation;
mod server;
pub mod stream;

pub use identity::ClientIdentity;
pub use refusal::HandshakeRefusal;
pub use server::{describe_time, unix_now, TlsPolicy, ALPN_HTTP11};
