//! `#[backend]`: derives `Backend` from an impl block's handlers.

mod check;
mod expand;
mod parse;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// The methods `#[backend]` reads as handlers; the impl block's other methods stay as they are.
pub(crate) const HANDLERS: [&str; 6] = ["query", "read", "nop", "start", "timer", "idle"];

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::parse_args(args, &mut errors);
    let item = match parse::parse(item.clone(), &mut errors) {
        Ok(item) => item,
        Err(error) => {
            let error = error.into_compile_error();
            return quote::quote!(#item #error);
        }
    };
    let Some(model) = check::check(&item, &mut errors) else {
        // Re-emit the block as written so that the user sees only the real errors.
        let compile_errors = errors.to_compile_errors();
        return quote::quote!(#item #compile_errors);
    };
    let expanded = expand::expand(&item, &model, &args);
    let compile_errors = errors.to_compile_errors();
    quote::quote!(#expanded #compile_errors)
}
