//! The `sigild` binary.
fn main() {}
