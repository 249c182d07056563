//! Procedural macros for [sophon](https://docs.rs/sophon).
//!
//! Users depend on `sophon`, which re-exports these macros; this crate is not meant to be used on
//! its own. The macros (`#[backend]` and `agent_system!`) expand to calls of sophon's public
//! builder API.
