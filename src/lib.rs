//! sigild: keeps signing keys on hardware and signs for the identity stack.
#![forbid(unsafe_code)]

pub mod backend;
pub mod crypto;
pub mod jose;
pub mod keyring;
pub mod secret;
pub mod service;
pub mod api;
pub mod config;
pub mod server;
pub mod bench;
pub mod cli;
pub mod dev;
