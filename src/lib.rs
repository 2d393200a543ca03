//! sigild: keeps signing keys on hardware and signs for the identity stack.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod config;
pub mod config_yubikey;
pub mod crypto;
pub mod dev;
pub mod jose;
pub mod keyring;
pub mod policy;
pub mod secret;
pub mod server;
pub mod service;
pub mod tls;
