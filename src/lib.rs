//! sigild: keeps signing keys on hardware and signs for the identity stack.
//!
//! Features: `server` (default) is the daemon and everything that talks PKCS#11; `client` is
//! [`client`] (typed gRPC client, rustls signer whose key stays behind sigild, DPoP helpers)
//! together with the pure [`jose`] and [`crypto`] vocabulary, without `cryptoki`.
#![forbid(unsafe_code)]

pub mod api;
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod backend;
#[cfg(feature = "server")]
pub mod bench;
#[cfg(feature = "server")]
pub mod cli;
pub mod client;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod config_yubikey;
pub mod crypto;
#[cfg(feature = "server")]
pub mod dev;
pub mod jose;
#[cfg(feature = "server")]
pub mod keyring;
#[cfg(feature = "server")]
pub mod policy;
pub mod secret;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
pub mod tls;
