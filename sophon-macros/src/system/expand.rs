//! Generates the builder calls. After errors it still expands what is valid (entities declared
//! once, edges whose names resolve), so that the user sees only the real errors.

use std::collections::BTreeMap;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::Ident;
use syn::spanned::Spanned;

use super::check::Options;
use super::graph::{Graph, Kind};

/// A local of the expansion, placed at `at` in the user's source so that rustc's errors about it
/// point there. Its `__sophon_` prefix keeps it apart from the user's own names.
fn local(prefix: &str, name: &Ident, at: Span) -> Ident {
    format_ident!("__sophon_{}_{}", prefix, name, span = at)
}

pub(super) fn expand(graph: &Graph<'_>, options: &[Options]) -> TokenStream {
    let builder = Ident::new("__sophon_builder", Span::call_site());
    let mut seen = std::collections::HashSet::new();
    // Entities declared once keep their place; a repeated name (already reported) is skipped.
    let entities: Vec<(usize, &syn::Ident)> = graph
        .entities
        .iter()
        .enumerate()
        .filter(|(_, e)| seen.insert(e.name.to_string()))
        .map(|(i, e)| (i, &e.name))
        .collect();

    let declare = entities.iter().map(|&(i, name)| {
        let entity = graph.entities[i];
        let node = local("node", name, name.span());
        let label = name.to_string();
        let expr = &entity.expr;
        let mut opts = quote!(::sophon::EntityOptions::new());
        if let Some(capacity) = &options[i].bounded {
            opts = quote!(#opts.bounded(#capacity));
        }
        // A restarted entity is given a factory, which builds its first backend too.
        let entity_fn = match (&options[i].restart, &entity.ty) {
            (Some(restart), ty) => {
                let (max, within) = (&restart.max, restart.within_ms);
                opts = quote!(#opts.restart(#max, ::core::time::Duration::from_millis(#within)));
                let ty = ty.as_ref().map_or_else(|| quote!(_), |ty| quote!(#ty));
                quote_spanned!(expr.span()=> ::sophon::__private::supervised::<#ty, _, _>)
            }
            (None, Some(ty)) => quote!(::sophon::SystemBuilder::entity_with::<#ty>),
            (None, None) => quote!(::sophon::SystemBuilder::entity_with),
        };
        // Spanned at the expression: when it is not a backend (or a factory), rustc says so there.
        quote_spanned!(expr.span()=> let #node = #entity_fn(&mut #builder, #label, #expr, #opts);)
    });

    let mut edge_seen = std::collections::HashSet::new();
    let edges = graph.edges.iter().filter(|e| edge_seen.insert((e.from, e.to))).map(|edge| {
        let from = local("node", &graph.entities[edge.from].name, edge.decl.from.span());
        let to = local("node", &graph.entities[edge.to].name, edge.target.span());
        let kind = match edge.kind {
            Kind::Query => quote!(Query),
            Kind::Read => quote!(Read),
            Kind::Loop => quote!(Loop),
        };
        // Spanned at the target: when the types do not fit, rustc's error lands on the edge.
        quote_spanned! {edge.target.span()=>
            ::sophon::__private::edge(&mut #builder, ::sophon::__private::EdgeKind::#kind, &#from, &#to);
        }
    });

    // Outputs by name: several entities may feed one output.
    let mut outputs: BTreeMap<String, (&Ident, Vec<usize>)> = BTreeMap::new();
    for output in &graph.outputs {
        if graph.entities.iter().any(|e| e.name == *output.name) {
            continue;
        }
        outputs.entry(output.name.to_string()).or_insert((output.name, Vec::new())).1.push(output.from);
    }
    let output_channels = outputs.values().map(|(name, feeders)| {
        let tx = local("tx", name, name.span());
        let rx = local("rx", name, name.span());
        let label = name.to_string();
        let feeds = feeders.iter().map(|&from| {
            let node = local("node", &graph.entities[from].name, name.span());
            quote!(::sophon::SystemBuilder::output_to(&mut #builder, &#node, #label, ::core::clone::Clone::clone(&#tx));)
        });
        quote! {
            let (#tx, #rx) = ::sophon::crossbeam_channel::unbounded();
            #(#feeds)*
            ::core::mem::drop(#tx);
        }
    });

    let system = Ident::new("__sophon_system", Span::call_site());
    let field_names: Vec<&Ident> =
        entities.iter().map(|&(_, name)| name).chain(outputs.values().map(|(name, _)| *name)).collect();
    let params: Vec<Ident> = (0..field_names.len()).map(|i| format_ident!("__T{}", i)).collect();
    let field_values = entities
        .iter()
        .map(|&(_, name)| {
            let node = local("node", name, name.span());
            quote!(#name: ::sophon::System::handle(&#system, &#node))
        })
        .chain(outputs.values().map(|(name, _)| {
            let rx = local("rx", name, name.span());
            quote!(#name: #rx)
        }));

    quote! {{
        /// A running system declared with `agent_system!`: a handle per entity and a receiver
        /// per output, by the names declared, and the [`System`](::sophon::System) itself
        /// through `Deref`.
        #[derive(Debug)]
        #[allow(dead_code, reason = "a system need not use every handle")]
        struct AgentSystem<#(#params),*> {
            #(#field_names: #params,)*
            #system: ::sophon::System,
        }

        #[allow(dead_code, reason = "a system need not use every method")]
        impl<#(#params),*> AgentSystem<#(#params),*> {
            /// Shuts the system down gracefully; see [`System::shutdown`](::sophon::System::shutdown).
            fn shutdown(self, deadline: ::core::time::Duration) -> ::sophon::Report {
                ::sophon::System::shutdown(self.#system, deadline)
            }

            /// Waits for a stop request, then shuts down; see [`System::join`](::sophon::System::join).
            fn join(self) -> ::sophon::Report {
                ::sophon::System::join(self.#system)
            }

            /// The system without the named handles.
            fn into_system(self) -> ::sophon::System {
                self.#system
            }
        }

        impl<#(#params),*> ::core::ops::Deref for AgentSystem<#(#params),*> {
            type Target = ::sophon::System;

            fn deref(&self) -> &::sophon::System {
                &self.#system
            }
        }

        let mut #builder = ::sophon::SystemBuilder::new();
        #(#declare)*
        #(#edges)*
        #(#output_channels)*
        ::core::result::Result::map(::sophon::SystemBuilder::spawn(#builder), |#system| AgentSystem {
            #(#field_values,)*
            #system,
        })
    }}
}
