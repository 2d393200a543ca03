//! sigild: keeps signing keys on hardware and signs for the identity stack.
//!
//! Features: `server` (default) is the daemon's library — backends, keyring, policy, audit,
//! service, gRPC servers and the composition root `app`; `client` is [`client`] (typed gRPC
//! client, rustls signer whose key stays behind sigild, DPoP helpers) together with the pure
//! [`jose`] and [`crypto`] vocabulary, without `cryptoki` or `yubikey`. The command line, dev
//! mode and benchmarks belong to the `sigild` binary, not to this library's API.
// `deny`, not `forbid`: one module may opt out, `backend::pkcs11::raw_info`, which calls
// `C_GetTokenInfo` itself because cryptoki cannot return token information it fails to parse
// (openCryptoki's clock field). Every other module stays free of unsafe code.
#![deny(unsafe_code)]

pub mod api;
#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod backend;
pub mod client;
#[cfg(feature = "server")]
pub mod config;
pub mod crypto;
pub mod httpsig;
pub mod jose;
#[cfg(feature = "server")]
pub mod keyring;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod ops;
#[cfg(feature = "server")]
pub mod policy;
pub mod secret;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
pub mod tls;
pub mod uri;
