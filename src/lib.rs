//! sigild: keeps signing keys on hardware and signs for the identity stack.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod jose;
