//! `#[derive(Ports)]`: an enum whose variants are a backend's named output ports.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Fields, Ident};

use crate::errors::Errors;

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let mut errors = Errors::default();
    let ports = check(&input, &mut errors);
    if ports.is_none() || errors.any() {
        return errors.to_compile_errors();
    }
    let ports = ports.unwrap_or_default();
    generate(&input.ident, &ports)
}

/// One port: its variant, its name and what it carries.
struct Port {
    variant: Ident,
    name: Ident,
    /// `None` for a unit variant, which carries `()`.
    ty: Option<syn::Type>,
}

// An enum without generic parameters, each variant a unit or a tuple of one value, each giving
// a port name that is an identifier and unique: `Done(u64)` is the port `done`.
fn check(input: &DeriveInput, errors: &mut Errors) -> Option<Vec<Port>> {
    let Data::Enum(data) = &input.data else {
        errors.spanned(
            &input.ident,
            "`#[derive(Ports)]` takes an enum: one variant per output port, e.g. `enum PingOut { Pong(u64), Done(u64) }`",
        );
        return None;
    };
    if !input.generics.params.is_empty() {
        errors.spanned(&input.generics, "`#[derive(Ports)]` takes an enum without generic parameters");
        return None;
    }
    if data.variants.is_empty() {
        errors.spanned(&input.ident, "an enum of ports needs at least one variant, one per port");
        return None;
    }
    let mut ports: Vec<Port> = Vec::new();
    for variant in &data.variants {
        let ty = match &variant.fields {
            Fields::Unit => None,
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => Some(fields.unnamed[0].ty.clone()),
            _ => {
                let v = &variant.ident;
                errors.spanned(
                    variant,
                    format!("a port carries one value: write `{v}(T)` (with a tuple for several, `{v}((A, B))`), or `{v}` for none"),
                );
                continue;
            }
        };
        let snake = snake_case(&variant.ident.to_string());
        let Ok(name) = syn::parse_str::<Ident>(&snake) else {
            errors.spanned(
                &variant.ident,
                format!(
                    "variant `{}` names the port `{snake}`, which is a Rust keyword; rename the variant",
                    variant.ident
                ),
            );
            continue;
        };
        if let Some(other) = ports.iter().find(|p| p.name == name) {
            errors.spanned(
                &variant.ident,
                format!(
                    "variants `{}` and `{}` both name the port `{snake}`; rename one",
                    other.variant, variant.ident
                ),
            );
            continue;
        }
        ports.push(Port { variant: variant.ident.clone(), name, ty });
    }
    Some(ports)
}

/// `GameOver` as `game_over`, `HTTPError` as `http_error`.
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let after_lower = i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let before_lower =
                i > 0 && chars[i - 1].is_uppercase() && chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if (after_lower || before_lower) && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn generate(enum_name: &Ident, ports: &[Port]) -> TokenStream {
    let map = format_ident!("{}Ports", enum_name);
    let wiring = format_ident!("__{}Wiring", enum_name);
    let states: Vec<Ident> = (0..ports.len()).map(|i| format_ident!("__S{}", i)).collect();
    let names: Vec<&Ident> = ports.iter().map(|p| &p.name).collect();
    let labels: Vec<String> = names.iter().map(ToString::to_string).collect();
    let indices: Vec<usize> = (0..ports.len()).collect();
    let payloads: Vec<TokenStream> =
        ports.iter().map(|p| p.ty.as_ref().map_or_else(|| quote!(()), |ty| quote!(#ty))).collect();
    let patterns: Vec<TokenStream> = ports
        .iter()
        .map(|p| {
            let v = &p.variant;
            if p.ty.is_some() { quote!(#enum_name::#v(..)) } else { quote!(#enum_name::#v) }
        })
        .collect();
    let extracts = ports.iter().map(|p| {
        let v = &p.variant;
        let (pattern, value) = if p.ty.is_some() {
            (quote!(#enum_name::#v(value)), quote!(value))
        } else {
            (quote!(#enum_name::#v), quote!(()))
        };
        quote! {
            |out| match out {
                #pattern => #value,
                #[allow(unreachable_patterns, reason = "an enum of one port")]
                _ => ::core::unreachable!("only values of this port are routed to it"),
            }
        }
    });
    let map_doc = format!("The output ports of [`{enum_name}`], by name.");
    let wire_impls = (0..ports.len()).map(|k| {
        let name = names[k];
        let out_states =
            states.iter().enumerate().map(|(i, s)| if i == k { quote!(::sophon::__private::Yes) } else { quote!(#s) });
        quote! {
            impl<#(#states),*> ::sophon::__private::Wire<markers::#name> for #wiring<#(#states),*> {
                type Out = #wiring<#(#out_states),*>;
            }
        }
    });
    let unwired: Vec<TokenStream> = states.iter().map(|_| quote!(::sophon::__private::No)).collect();
    let start = quote!(#wiring<#(#unwired),*>);
    let starts = names.iter().map(|_| &start);
    quote! {
        const _: () = {
            /// One type per port, for the check that every port is wired.
            #[allow(non_camel_case_types, dead_code, reason = "named as the ports are, for error messages")]
            pub mod markers {
                #(
                    #[derive(Debug)]
                    pub struct #names;
                )*
            }

            #[doc = #map_doc]
            #[derive(Clone, Copy, Debug)]
            pub struct #map {
                #(
                    #[doc = concat!("The port `", #labels, "`.")]
                    pub #names: ::sophon::OutPort<#enum_name, #payloads, markers::#names>,
                )*
            }

            #[doc(hidden)]
            pub struct #wiring<#(#states),*>(::core::marker::PhantomData<(#(#states,)*)>);

            #(
                impl ::sophon::__private::PortMarker for markers::#names {
                    type Start = #starts;
                }
            )*

            #(#wire_impls)*

            impl<#(#states: ::sophon::__private::Wired<#enum_name, markers::#names>),*> ::sophon::__private::AllWired
                for #wiring<#(#states),*>
            {
            }

            impl ::sophon::Ports for #enum_name {
                type Map = #map;
                type Unwired = #wiring<#(#unwired),*>;

                fn ports() -> #map {
                    #map {
                        #( #names: ::sophon::OutPort::new(#indices, #labels, #extracts), )*
                    }
                }

                fn port(&self) -> usize {
                    match self {
                        #( #patterns => #indices, )*
                    }
                }

                fn port_name(&self) -> &'static str {
                    match self {
                        #( #patterns => #labels, )*
                    }
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn variant_names_become_snake_case_port_names() {
        assert_eq!(snake_case("Done"), "done");
        assert_eq!(snake_case("GameOver"), "game_over");
        assert_eq!(snake_case("HTTPError"), "http_error");
        assert_eq!(snake_case("Move2Made"), "move2_made");
    }
}
