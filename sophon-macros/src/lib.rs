//! Procedural macros for [sophon](https://docs.rs/sophon).
//!
//! Users depend on `sophon`, which re-exports these macros; this crate is not meant to be used on
//! its own. The macros expand to calls of sophon's public builder API and name the runtime by
//! absolute paths (`::sophon::...`).
//!
//! Each macro runs in stages: `parse` (syntax only; stops at the first error), a model and its
//! checks (every problem reported, each at its own tokens), then `expand` (code generation,
//! for a model known to be valid).

mod backend;
mod errors;
mod system;

use proc_macro::TokenStream;

/// Derives [`Backend`] for a type from the handlers in its impl block.
#[proc_macro_attribute]
pub fn backend(args: TokenStream, item: TokenStream) -> TokenStream {
    backend::expand(args.into(), item.into()).into()
}

/// Declares a graph of agents, checks it at compile time and spawns it.
#[proc_macro]
pub fn agent_system(input: TokenStream) -> TokenStream {
    system::expand(input.into()).into()
}
