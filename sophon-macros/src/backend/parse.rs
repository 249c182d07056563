//! Syntax: the attribute's arguments and the item it is on.

use proc_macro2::TokenStream;
use quote::ToTokens;

use crate::errors::Errors;

/// The attribute's arguments.
#[derive(Default)]
pub(super) struct Args {
    /// `#[backend(blocking)]`: the backend blocks its thread (see `Backend::blocking`).
    pub(super) blocking: bool,
}

/// Parses the attribute's arguments: nothing, or `blocking`. Mistakes are reported, not fatal.
pub(super) fn parse_args(args: TokenStream, errors: &mut Errors) -> Args {
    if args.is_empty() {
        return Args::default();
    }
    match syn::parse2::<syn::Ident>(args.clone()) {
        Ok(ident) if ident == "blocking" => Args { blocking: true },
        _ => {
            errors.spanned(
                &args,
                "`#[backend]` takes no arguments but `blocking`: write `#[backend]`, or `#[backend(blocking)]` for a backend that blocks its thread",
            );
            Args::default()
        }
    }
}

/// Parses the item; it must be an inherent impl block.
pub(super) fn parse(item: TokenStream, errors: &mut Errors) -> syn::Result<syn::ItemImpl> {
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
