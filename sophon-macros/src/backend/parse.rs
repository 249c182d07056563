//! Syntax: the attribute's arguments and the item it is on.

use proc_macro2::TokenStream;
use quote::ToTokens;

use crate::errors::Errors;

/// Parses the item; it must be an inherent impl block. Arguments are reported, not fatal.
pub(super) fn parse(args: TokenStream, item: TokenStream, errors: &mut Errors) -> syn::Result<syn::ItemImpl> {
    if !args.is_empty() {
        errors.spanned(&args, "`#[backend]` takes no arguments; write `#[backend]` on its own");
    }
    match syn::parse2::<syn::Item>(item.clone())? {
        syn::Item::Impl(item) => {
            if let Some((path, for_token)) = &item.trait_ {
                let span = quote::quote!(#path #for_token);
                errors.spanned(
                    span,
                    "`#[backend]` goes on an inherent impl block, and implements `Backend` itself; remove the trait",
                );
            }
            Ok(item)
        }
        other => Err(syn::Error::new_spanned(
            TokenStream::from_iter(other.to_token_stream().into_iter().take(2)),
            "`#[backend]` goes on an impl block with the handlers: `#[backend] impl MyBackend { fn query(&mut self, input: In) -> Out { .. } }`",
        )),
    }
}
