//! Standard backends, each behind a cargo feature of `sophon` so that the core stays light. A
//! module is here when its feature is on.
//!
//! | backend | feature | what it is |
//! | --- | --- | --- |
//! | `person::Person` | `person` | a person at a terminal, or any reader and writer |
//! | `llm::LocalLlm` | `llm-local` | a GGUF chat model run on the CPU (candle), offline |
//! | `llm::HttpLlm` | `llm-http` | any OpenAI-compatible chat-completions server (ureq) |
//! | `sqlite::SqliteStore` | `sqlite` | a SQLite database, in a file or in memory (rusqlite) |
//! | `clock::Clock` | `clock` | the time in any zone and format; ticks as a source (jiff) |
//! | `search::SearchIndex` | `search` | a full-text index, in memory or on disk (tantivy) |
//! | `chess::Referee`, `chess::AlphaBeta`, `chess::UciEngine` | `chess` | a chess game: rules, an engine, engine processes |
//!
//! The language models share their input and output types (`String` in, the reply out) and the
//! `llm::Conversation` they remember, so one can stand in for the other in the same graph, or
//! be swapped for it while the system runs.

#[cfg(feature = "chess")]
pub mod chess;
#[cfg(feature = "clock")]
pub mod clock;
#[cfg(any(feature = "llm-local", feature = "llm-http"))]
pub mod llm;
#[cfg(feature = "person")]
pub mod person;
#[cfg(feature = "search")]
pub mod search;
#[cfg(feature = "sqlite")]
pub mod sqlite;
