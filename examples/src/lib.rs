//! Runnable examples live beside this file: `cargo run --example NAME`.
