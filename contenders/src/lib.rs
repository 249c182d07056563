//! Benchmarks of sophon against actix, in `benches/actix.rs`: `cargo bench -p sophon-contenders`.
//! A crate of their own, so that actix and tokio are built only to run them.
