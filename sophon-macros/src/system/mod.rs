//! `agent_system!`: declares a graph, checks it, expands to the builder.

use proc_macro2::TokenStream;

pub(crate) fn expand(_input: TokenStream) -> TokenStream {
    quote::quote!(compile_error!("not yet"))
}
