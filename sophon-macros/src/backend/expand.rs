//! Generates the `Backend` impl. The model is known to be valid here.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::check::{Handler, Model, Returns};
use super::parse::Args;

pub(super) fn expand(item: &syn::ItemImpl, model: &Model, args: &Args) -> TokenStream {
    // sophon fixes the handlers' receiver to `&mut self`, whether or not a handler uses state.
    let mut item = item.clone();
    for handler in item.items.iter_mut().filter_map(|i| match i {
        syn::ImplItem::Fn(f) if crate::backend::HANDLERS.iter().any(|n| f.sig.ident == n) => Some(f),
        _ => None,
    }) {
        handler.attrs.push(syn::parse_quote!(
            #[allow(clippy::unused_self, reason = "sophon's handlers take `&mut self` whether they use state or not")]
        ));
    }
    let item = &item;
    let self_ty = &item.self_ty;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let Model { input, output, query, read, nop, start, timer, idle } = model;

    let call = if query.takes_ctx {
        quote!(<#self_ty>::query(self, __input, __ctx))
    } else {
        quote!(<#self_ty>::query(self, __input))
    };
    // Spanned at the user's return type: if the output is not `Clone` (a broadcast clones it),
    // rustc's error lands there.
    let send = |value: TokenStream| quote_spanned!(query.output_span=> __ctx.send(#value)?;);
    let query_body = match (&query.returns, query.takes_ctx) {
        (Returns::Unit, true) => quote!(#call;),
        (Returns::ResultUnit, true) => quote!(#call?;),
        (Returns::Unit, false) => {
            let send = send(quote!(()));
            quote!(#call; #send)
        }
        (Returns::ResultUnit, false) => {
            let send = send(quote!(()));
            quote!(#call?; #send)
        }
        (Returns::Value, _) => {
            let send = send(quote!(__out));
            quote!(let __out = #call; #send)
        }
        (Returns::Option, _) => {
            let send = send(quote!(__out));
            quote!(if let ::core::option::Option::Some(__out) = #call { #send })
        }
        (Returns::Result, _) => {
            let send = send(quote!(__out));
            quote!(let __out = #call?; #send)
        }
        (Returns::ResultOption, _) => {
            let send = send(quote!(__out));
            quote!(if let ::core::option::Option::Some(__out) = #call? { #send })
        }
    };

    let read_fn = read.as_ref().map(|h| {
        let call = handler_call(self_ty, quote!(read), Some(quote!(__input)), h);
        quote! {
            fn read(
                &mut self,
                __input: Self::Input,
                __ctx: &mut ::sophon::Context<Self::Output>,
            ) -> ::core::result::Result<(), ::sophon::BoxError> {
                #call
                ::core::result::Result::Ok(())
            }
        }
    });
    let timer_fn = timer.as_ref().map(|h| {
        let call = handler_call(self_ty, quote!(timer), Some(quote!(__timer)), h);
        quote! {
            fn timer(
                &mut self,
                __timer: ::sophon::TimerId,
                __ctx: &mut ::sophon::Context<Self::Output>,
            ) -> ::core::result::Result<(), ::sophon::BoxError> {
                #call
                ::core::result::Result::Ok(())
            }
        }
    });
    // `nop`, `start` and `idle` take nothing but the context.
    let bare = |name: TokenStream, h: &Handler| {
        let call = handler_call(self_ty, name.clone(), None, h);
        quote! {
            fn #name(
                &mut self,
                __ctx: &mut ::sophon::Context<Self::Output>,
            ) -> ::core::result::Result<(), ::sophon::BoxError> {
                #call
                ::core::result::Result::Ok(())
            }
        }
    };
    let nop_fn = nop.as_ref().map(|h| bare(quote!(nop), h));
    let start_fn = start.as_ref().map(|h| bare(quote!(start), h));
    let idle_fn = idle.as_ref().map(|h| bare(quote!(idle), h));
    let blocking_fn = args.blocking.then(|| {
        quote! {
            fn blocking(&self) -> bool {
                true
            }
        }
    });

    quote! {
        #item

        #[automatically_derived]
        impl #impl_generics ::sophon::Backend for #self_ty #where_clause {
            type Input = #input;
            type Output = #output;

            fn query(
                &mut self,
                __input: Self::Input,
                __ctx: &mut ::sophon::Context<Self::Output>,
            ) -> ::core::result::Result<(), ::sophon::BoxError> {
                #query_body
                ::core::result::Result::Ok(())
            }

            #read_fn
            #nop_fn
            #start_fn
            #idle_fn
            #timer_fn
            #blocking_fn
        }
    }
}

fn handler_call(self_ty: &syn::Type, name: TokenStream, input: Option<TokenStream>, h: &Handler) -> TokenStream {
    let input = input.into_iter();
    let (ctx, unused_ctx) = if h.takes_ctx { (quote!(, __ctx), quote!()) } else { (quote!(), quote!(let _ = __ctx;)) };
    let question = if h.fallible { quote!(?) } else { quote!() };
    quote!(#unused_ctx <#self_ty>::#name(self #(, #input)* #ctx) #question;)
}
