//! The fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/` and by
//! `tests/fuzz_corpus.rs`, which replays every checked-in corpus input and crash
//! reproducer through them. Each takes arbitrary bytes and checks what must hold of
//! the gateway's answer, not only that it does not crash: a broken invariant panics.
//!
//! Not part of the gateway's interface; it is public only so that the fuzz crate and
//! the integration tests can reach it.

mod config;
mod proxy_header;
mod request_head;
mod token;

pub use config::config;
pub use proxy_header::proxy_header;
pub use request_head::request_head;
pub use token::token;

/// The name of every fuzz target, each a folder under `fuzz/corpus/`.
pub const TARGETS: [&str; 4] = ["request_head", "token", "proxy_header", "config"];

/// The harness of the fuzz target named `target`.
pub fn harness(target: &str) -> Option<fn(&[u8])> {
    match target {
        "request_head" => Some(request_head),
        "token" => Some(token),
        "proxy_header" => Some(proxy_header),
        "config" => Some(config),
        _ => None,
    }
}
