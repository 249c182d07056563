//! Standard backends, each behind a cargo feature of `sophon` so that the core stays light.
//!
//! | backend | feature | what it is |
//! | --- | --- | --- |
//! | [`person::Person`] | `person` | a person at a terminal, or any reader and writer |
//! | [`llm::LocalLlm`] | `llm-local` | a GGUF chat model run on the CPU (candle), offline |
//! | [`llm::HttpLlm`] | `llm-http` | any OpenAI-compatible chat-completions server (ureq) |
//!
//! The language models share their input and output types (`String` in, the reply out) and the
//! [`llm::Conversation`] they remember, so one can stand in for the other in the same graph, or
//! be swapped for it while the system runs.

#[cfg(any(feature = "llm-local", feature = "llm-http"))]
pub mod llm;
#[cfg(feature = "person")]
pub mod person;
