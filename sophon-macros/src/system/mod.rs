//! `agent_system!`: declares a graph, checks it, expands to the builder.

mod check;
mod expand;
mod graph;
mod parse;

use proc_macro2::TokenStream;

use crate::errors::Errors;

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<parse::SystemInput>(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let mut errors = Errors::default();
    let graph = graph::Graph::build(&input, &mut errors);
    let options = check::check(&input, &graph, &mut errors);
    let runtime = check::runtime(&input.inner, &mut errors);
    let bus = check::bus(&input.inner, &mut errors);
    let compile_errors = errors.to_compile_errors();
    match &input.header {
        Some(header) => {
            let expanded = expand::expand_named(header, &graph, &options, runtime.as_ref(), bus.as_ref());
            quote::quote!(#compile_errors #expanded)
        }
        None => {
            let expanded = expand::expand(&graph, &options, runtime.as_ref(), bus.as_ref());
            quote::quote!({ #compile_errors #expanded })
        }
    }
}
