//! srrrs-edge: a Zero Trust edge ingress. Mutual TLS proves the device, a bearer JWT on
//! every request proves the user, and only then do a request's bytes reach a backend.
//!
//! The data path, step by step: [`runtime`] (workers and listeners), [`tls`] (handshake
//! and device verification), [`proxy`] (the per-connection pipeline), [`upstream`]
//! (backends), [`http`] (the gateway's own responses).

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
pub mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake_pool;
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod socket;
pub mod tls;
pub mod upstream;
