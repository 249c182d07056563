//! Generates the builder calls. After errors it still expands what is valid (entities declared
//! once, edges whose names resolve), so that the user sees only the real errors.

use std::collections::BTreeMap;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, Ident};

use super::check::{Options, cfg_predicates};
use super::graph::{Graph, Kind, OutputRef};
use super::parse::Header;

/// A local of the expansion, placed at `at` in the user's source so that rustc's errors about it
/// point there. Its `__sophon_` prefix keeps it apart from the user's own names.
fn local(prefix: &str, name: &Ident, at: Span) -> Ident {
    format_ident!("__sophon_{}_{}", prefix, name, span = at)
}

/// A `#[cfg(..)]` for code that exists when `condition` holds (nothing when it always does), and
/// one for code that exists when it does not.
fn cfg_attrs(condition: &Option<TokenStream>) -> (TokenStream, TokenStream) {
    match condition {
        Some(condition) => (quote!(#[cfg(#condition)]), quote!(#[cfg(not(#condition))])),
        None => (TokenStream::new(), TokenStream::new()),
    }
}

/// All of `predicates`, or `None` when there are none.
fn all(predicates: Vec<TokenStream>) -> Option<TokenStream> {
    if predicates.is_empty() { None } else { Some(quote!(all(#(#predicates),*))) }
}

/// A field of the system's struct: an entity's handle or an output's receiver.
struct Field<'a> {
    name: &'a Ident,
    docs: Vec<syn::Attribute>,
    /// When the field exists (from `#[cfg(..)]`s).
    condition: Option<TokenStream>,
    /// Its value, made from the spawned system.
    value: TokenStream,
    /// Its type, when the declaration gives it (a named system needs it).
    ty: Option<TokenStream>,
    /// Whether it is an output's receiver.
    output: bool,
    /// Whether it holds a group's handles.
    group: bool,
}

/// The builder calls, and the fields they make.
struct Built<'a> {
    body: TokenStream,
    fields: Vec<Field<'a>>,
}

fn build<'a>(graph: &Graph<'a>, options: &[Options], runtime: Option<&TokenStream>, bus: Option<&Expr>) -> Built<'a> {
    let builder = Ident::new("__sophon_builder", Span::call_site());
    let bus_local = Ident::new("__sophon_bus", Span::call_site());
    let system = Ident::new("__sophon_system", Span::call_site());
    let mut seen = std::collections::HashSet::new();
    // Entities declared once keep their place; a repeated name (already reported) is skipped.
    let entities: Vec<(usize, &syn::Ident)> = graph
        .entities
        .iter()
        .enumerate()
        .filter(|(_, e)| seen.insert(e.name.to_string()))
        .map(|(i, e)| (i, &e.name))
        .collect();
    let condition = |i: usize| all(options[i].cfgs.clone());

    let declare = entities.iter().map(|&(i, name)| {
        let entity = graph.entities[i];
        let node = local("node", name, name.span());
        let label = name.to_string();
        let expr = &entity.expr;
        let (cfg, _) = cfg_attrs(&condition(i));
        let mut opts = quote!(::sophon::EntityOptions::new());
        if let Some(capacity) = &options[i].bounded {
            opts = quote!(#opts.bounded(#capacity));
        }
        if options[i].thread {
            opts = quote!(#opts.thread());
        }
        if let Some(remote) = &entity.remote {
            let (input, output) = (&remote.input, &remote.output);
            // Without a bus (already reported) there is nothing to import from: a placeholder
            // keeps the rest type-checking.
            if bus.is_none() {
                return quote!(#cfg let #node = ::sophon::__private::placeholder::<#input, #output>(&mut #builder, #label););
            }
            let call = quote_spanned! {remote.keyword.span=>
                ::sophon::__private::import::<#input, #output>(&mut #builder, #label, #bus_local)
            };
            return quote!(#cfg let #node = #call;);
        }
        // Exported once declared, spanned at `#[export]`: a type the bus cannot carry is an
        // error there.
        let export = match (options[i].export, bus) {
            (true, Some(_)) => {
                let at = entity.options.iter().find(|a| a.path().is_ident("export")).map_or_else(|| name.span(), |a| a.span());
                quote_spanned!(at=> #cfg ::sophon::__private::export(&mut #builder, &#node, #bus_local);)
            }
            _ => TokenStream::new(),
        };
        // A restarted entity is given a factory, which builds its first backend too.
        let ty = entity.ty.as_ref().map_or_else(|| quote!(_), |ty| quote!(#ty));
        if options[i].replicas {
            // Each backend boxed where it is written, so that one of another input or output
            // type is an error there; a list given as one expression (a `Vec`) is taken whole.
            let backends = match expr {
                Expr::Array(array) => {
                    let elems = array.elems.iter().map(|e| quote_spanned!(e.span()=> ::sophon::IntoBackend::into_boxed(#e)));
                    quote_spanned!(expr.span()=> [#(#elems),*])
                }
                _ => quote_spanned!(expr.span()=> ::core::iter::Iterator::map(::core::iter::IntoIterator::into_iter(#expr), ::sophon::IntoBackend::into_boxed)),
            };
            // Spanned at the expression: an input that is not `Clone` is an error there.
            let replicas_fn = match &entity.ty {
                Some(ty) => quote_spanned!(expr.span()=> ::sophon::__private::replicas::<<#ty as ::sophon::IntoBackend>::Input, <#ty as ::sophon::IntoBackend>::Output>),
                None => quote_spanned!(expr.span()=> ::sophon::__private::replicas),
            };
            let call = quote_spanned!(expr.span()=> #replicas_fn(&mut #builder, #label, #backends, #opts));
            return quote!(#cfg let #node = #call; #export);
        }
        let entity_fn = match (&options[i].restart, &entity.size) {
            (Some(restart), size) => {
                let (max, within) = (&restart.max, restart.within_ms);
                opts = quote!(#opts.restart(#max, ::core::time::Duration::from_millis(#within)));
                match size {
                    None => quote_spanned!(expr.span()=> ::sophon::__private::supervised::<#ty, _, _>),
                    Some(_) => quote_spanned!(expr.span()=> ::sophon::__private::supervised_group::<#ty, _, _>),
                }
            }
            (None, Some(_)) => quote_spanned!(expr.span()=> ::sophon::__private::group::<#ty, _>),
            (None, None) if entity.ty.is_some() => quote!(::sophon::SystemBuilder::entity_with::<#ty>),
            (None, None) => quote!(::sophon::SystemBuilder::entity_with),
        };
        // A group's size, spanned at it: rustc's error for one that is not a `usize` lands there.
        let size = entity.size.as_ref().map(|size| quote_spanned!(size.span()=> #size,));
        // Spanned at the expression: when it is not a backend (or a factory), rustc says so there.
        let call = quote_spanned!(expr.span()=> #entity_fn(&mut #builder, #label, #size #expr, #opts));
        quote!(#cfg let #node = #call; #export)
    });

    // An edge exists when both its entities do, and its own `#[cfg(..)]`s hold.
    let edge_condition = |from: usize, to: Option<usize>, attrs: &[syn::Attribute]| {
        let mut predicates = options[from].cfgs.clone();
        if let Some(to) = to {
            predicates.extend(options[to].cfgs.iter().cloned());
        }
        predicates.extend(cfg_predicates(attrs));
        all(predicates)
    };

    let mut edge_seen = std::collections::HashSet::new();
    let port_name = |decl: &syn::Ident| decl.to_string();
    let edges = graph
        .edges
        .iter()
        .filter(|e| edge_seen.insert((e.from, e.to, e.decl.port.as_ref().map(port_name))))
        .map(|edge| {
        let from = local("node", &graph.entities[edge.from].name, edge.decl.from.span());
        let to = local("node", &graph.entities[edge.to].name, edge.target.span());
        let kind = match edge.kind {
            Kind::Query => quote!(Query),
            Kind::Read => quote!(Read),
            Kind::Loop => quote!(Loop),
        };
        let (cfg, _) = cfg_attrs(&edge_condition(edge.from, Some(edge.to), &edge.decl.attrs));
        // Spanned at the target: when the types do not fit, rustc's error lands on the edge.
        let call = match &edge.decl.port {
            None => quote_spanned! {edge.target.span()=>
                ::sophon::__private::edge(&mut #builder, ::sophon::__private::EdgeKind::#kind, &#from, &#to)
            },
            Some(port) => {
                let pick = pick_port(port);
                let marker = port_marker(edge.decl, edge.target);
                quote_spanned! {edge.target.span()=>
                    let #marker = ::sophon::__private::port_edge(&mut #builder, ::sophon::__private::EdgeKind::#kind, &#from, #pick, &#to)
                }
            }
        };
        quote!(#cfg #call;)
    });

    // Outputs by name: several entities may feed one output.
    let mut outputs: BTreeMap<String, (&Ident, Vec<&OutputRef<'_>>)> = BTreeMap::new();
    for output in &graph.outputs {
        if graph.entities.iter().any(|e| e.name == *output.name) {
            continue;
        }
        outputs.entry(output.name.to_string()).or_insert((output.name, Vec::new())).1.push(output);
    }
    let mut output_fields = Vec::new();
    let output_channels: Vec<TokenStream> = outputs
        .values()
        .map(|(name, feeders)| {
            let tx = local("tx", name, name.span());
            let rx = local("rx", name, name.span());
            let label = name.to_string();
            let conditions: Vec<Option<TokenStream>> =
                feeders.iter().map(|o| edge_condition(o.from, None, &o.decl.attrs)).collect();
            let feeds = feeders.iter().zip(&conditions).map(|(output, condition)| {
                let node = local("node", &graph.entities[output.from].name, name.span());
                let (cfg, _) = cfg_attrs(condition);
                match &output.decl.port {
                    None => quote!(#cfg ::sophon::__private::output_to(&mut #builder, &#node, #label, &#tx);),
                    Some(port) => {
                        let pick = pick_port(port);
                        let marker = port_marker(output.decl, output.name);
                        quote!(#cfg let #marker = ::sophon::__private::port_output_to(&mut #builder, &#node, #pick, #label, &#tx);)
                    }
                }
            });
            // The output exists when any edge into it does.
            let condition = if conditions.iter().any(Option::is_none) {
                None
            } else {
                let each = conditions.iter().flatten();
                Some(quote!(any(#(#each),*)))
            };
            let (cfg, _) = cfg_attrs(&condition);
            // What the output carries: as written, or the first feeder's whole output.
            let declared = feeders.iter().find_map(|o| o.ty);
            let first = feeders[0];
            let from = graph.entities[first.from];
            let carried = match (declared, &first.decl.port, &from.ty, &from.remote) {
                (Some(ty), _, _, _) => Some(quote!(#ty)),
                (None, None, Some(ty), _) => Some(quote!(<#ty as ::sophon::IntoBackend>::Output)),
                (None, None, None, Some(remote)) => {
                    let output = &remote.output;
                    Some(quote!(#output))
                }
                _ => None,
            };
            let channel = match declared {
                Some(ty) => quote!(::sophon::crossbeam_channel::unbounded::<#ty>()),
                None => quote!(::sophon::crossbeam_channel::unbounded()),
            };
            output_fields.push(Field {
                name,
                docs: feeders.iter().flat_map(|o| o.decl.attrs.iter().filter(|a| a.path().is_ident("doc")).cloned()).collect(),
                condition,
                value: quote!(#rx),
                ty: carried.map(|ty| quote!(::sophon::crossbeam_channel::Receiver<#ty>)),
                output: true,
                group: false,
            });
            quote! {
                #cfg let (#tx, #rx) = #channel;
                #(#feeds)*
                #cfg ::core::mem::drop(#tx);
            }
        })
        .collect();

    let mut fields: Vec<Field<'a>> = entities
        .iter()
        .map(|&(i, name)| {
            let node = local("node", name, name.span());
            let group = graph.entities[i].size.is_some();
            let ty = graph.entities[i].ty.as_ref().map(|ty| {
                let handle = quote!(::sophon::Handle<<#ty as ::sophon::IntoBackend>::Input, <#ty as ::sophon::IntoBackend>::Output>);
                if group { quote!(::std::vec::Vec<#handle>) } else { handle }
            });
            let ty = ty.or_else(|| {
                let remote = graph.entities[i].remote.as_ref()?;
                let (input, output) = (&remote.input, &remote.output);
                Some(quote!(::sophon::Handle<#input, #output>))
            });
            Field {
                name,
                docs: options[i].docs.clone(),
                condition: condition(i),
                value: quote!(::sophon::__private::Nodes::handles(&#node, &#system)),
                ty,
                output: false,
                group,
            }
        })
        .collect();
    fields.extend(output_fields);

    let wiring = wiring_checks(graph, &entities, options);
    let runtime = runtime.map(|call| quote!(#builder.#call;));
    let bus = bus.map(|bus| quote!(let #bus_local: &::sophon::__private::Bus = &(#bus);));
    let body = quote! {
        let mut #builder = ::sophon::SystemBuilder::new();
        #runtime
        #bus
        #(#declare)*
        #(#edges)*
        #(#output_channels)*
        #(#wiring)*
    };
    Built { body, fields }
}

/// `|ports| ports.done`: picks a port by name, spanned at the name so that rustc's "no field"
/// error for a port the output lacks lands there.
fn pick_port(port: &Ident) -> TokenStream {
    let ports = Ident::new("__sophon_ports", port.span());
    quote_spanned!(port.span()=> |#ports| #ports.#port)
}

/// The local holding the port marker of the edge of `decl` to `target` (see `wiring_checks`).
fn port_marker(decl: &super::parse::Edge, target: &Ident) -> Ident {
    let port = decl.port.as_ref().expect("a port edge");
    format_ident!("__sophon_port_{}_{}_{}", decl.from, port, target, span = port.span())
}

/// For each entity whose edges attach to ports, and none to its whole output: a check, in the
/// types, that every port is wired. It fails at the entity's name, naming the port.
fn wiring_checks(graph: &Graph<'_>, entities: &[(usize, &Ident)], options: &[Options]) -> Vec<TokenStream> {
    // Every edge to an entity or output once, as the expansion adds them.
    let mut seen = std::collections::HashSet::new();
    let mut targets: Vec<(usize, &super::parse::Edge, &Ident, Option<usize>)> = Vec::new();
    for edge in &graph.edges {
        if seen.insert((edge.from, edge.to, edge.decl.port.as_ref().map(ToString::to_string))) {
            targets.push((edge.from, edge.decl, edge.target, Some(edge.to)));
        }
    }
    for output in &graph.outputs {
        if !graph.entities.iter().any(|e| e.name == *output.name) {
            targets.push((output.from, output.decl, output.name, None));
        }
    }
    entities
        .iter()
        .filter_map(|&(i, name)| {
            let from_here: Vec<_> = targets.iter().filter(|t| t.0 == i).collect();
            if from_here.is_empty() || from_here.iter().any(|t| t.1.port.is_none()) {
                return None;
            }
            let wiring = Ident::new("__sophon_wiring", name.span());
            let (entity_cfg, _) = cfg_attrs(&all(options[i].cfgs.clone()));
            let wires = from_here.iter().map(|&&(_, decl, target, to)| {
                let marker = port_marker(decl, target);
                let mut predicates = options[i].cfgs.clone();
                if let Some(to) = to {
                    predicates.extend(options[to].cfgs.iter().cloned());
                }
                predicates.extend(cfg_predicates(&decl.attrs));
                let (cfg, _) = cfg_attrs(&all(predicates));
                quote!(#cfg let #wiring = ::sophon::__private::Wiring::wire(#wiring, #marker);)
            });
            let check = quote_spanned!(name.span()=> ::sophon::__private::Wiring::check(#wiring));
            Some(quote! {
                #entity_cfg let #wiring = ::sophon::__private::Wiring::start();
                #(#wires)*
                #entity_cfg #check;
            })
        })
        .collect()
}

/// The declared graph, to draw: an entity per name declared (a group as one node, `name[size]`),
/// an output per name, and every edge.
fn drawing(graph: &Graph<'_>) -> sophon_graph::draw::Drawing {
    use sophon_graph::draw::{Drawing, Edge, EdgeKind, Node, NodeKind};
    let mut drawing = Drawing::default();
    let mut place: Vec<Option<usize>> = vec![None; graph.entities.len()];
    let mut named = std::collections::HashSet::new();
    for (i, entity) in graph.entities.iter().enumerate() {
        if !named.insert(entity.name.to_string()) {
            continue;
        }
        let replicated = entity.options.iter().any(|a| a.path().is_ident("replicas"));
        let (name, kind) = match &entity.size {
            Some(size) => (format!("{}[{}]", entity.name, quote!(#size).to_string().replace(' ', "")), NodeKind::Group),
            None if replicated => (entity.name.to_string(), NodeKind::Replicated),
            None => (entity.name.to_string(), NodeKind::Entity),
        };
        // A replicated entity given as a list says how many replicas it has.
        let mut figures = match &entity.expr {
            Expr::Array(array) if replicated => vec![format!("{} replicas", array.elems.len())],
            _ => Vec::new(),
        };
        // Over the bus: imported from another process, or exported to others.
        if entity.remote.is_some() {
            figures.push("remote".to_string());
        } else if entity.options.iter().any(|a| a.path().is_ident("export")) {
            figures.push("exported".to_string());
        }
        place[i] = Some(drawing.nodes.len());
        drawing.nodes.push(Node { name, kind, figures });
    }
    let mut drawn = std::collections::HashSet::new();
    for edge in &graph.edges {
        let port = edge.decl.port.as_ref().map(ToString::to_string);
        let (Some(from), Some(to)) = (place[edge.from], place[edge.to]) else { continue };
        if !drawn.insert((from, to, port.clone())) {
            continue;
        }
        let kind = match edge.kind {
            Kind::Query => EdgeKind::Query,
            Kind::Read => EdgeKind::Read,
            Kind::Loop => EdgeKind::Loop,
        };
        drawing.edges.push(Edge { from, to, kind, port, figures: Vec::new() });
    }
    let mut outputs: BTreeMap<String, usize> = BTreeMap::new();
    for output in &graph.outputs {
        if graph.entities.iter().any(|e| e.name == *output.name) {
            continue;
        }
        let Some(from) = place[output.from] else { continue };
        let to = *outputs.entry(output.name.to_string()).or_insert_with(|| {
            drawing.nodes.push(Node { name: output.name.to_string(), kind: NodeKind::Output, figures: Vec::new() });
            drawing.nodes.len() - 1
        });
        let port = output.decl.port.as_ref().map(ToString::to_string);
        drawing.edges.push(Edge { from, to, kind: EdgeKind::Output, port, figures: Vec::new() });
    }
    drawing
}

/// The construction of the system's struct `name` from the builder, as a `Result`.
fn construct(built: &Built<'_>, name: &TokenStream, absent_fields: bool) -> TokenStream {
    let builder = Ident::new("__sophon_builder", Span::call_site());
    let system = Ident::new("__sophon_system", Span::call_site());
    let values = built.fields.iter().enumerate().map(|(k, field)| {
        let (cfg, not_cfg) = cfg_attrs(&field.condition);
        let (name, value) = (field.name, &field.value);
        let absent = if absent_fields && field.condition.is_some() {
            let absent = format_ident!("__sophon_absent_{}", k);
            quote!(#not_cfg #absent: ::core::marker::PhantomData::<()>,)
        } else {
            TokenStream::new()
        };
        quote!(#cfg #name: #value, #absent)
    });
    let body = &built.body;
    quote! {
        #body
        ::core::result::Result::map(::sophon::SystemBuilder::spawn(#builder), |#system| #name {
            #(#values)*
            #system,
        })
    }
}

/// The methods and `Deref` both forms of system have.
fn system_methods(vis: &TokenStream) -> TokenStream {
    let system = Ident::new("__sophon_system", Span::call_site());
    quote! {
        /// Shuts the system down gracefully; see [`System::shutdown`](::sophon::System::shutdown).
        #vis fn shutdown(self, deadline: ::core::time::Duration) -> ::sophon::Report {
            ::sophon::System::shutdown(self.#system, deadline)
        }

        /// Waits for a stop request, then shuts down; see [`System::join`](::sophon::System::join).
        #vis fn join(self) -> ::sophon::Report {
            ::sophon::System::join(self.#system)
        }

        /// The system without the named handles.
        #vis fn into_system(self) -> ::sophon::System {
            self.#system
        }
    }
}

/// The anonymous form: a block that defines a local struct, generic over its fields' types, and
/// evaluates to the spawned system.
pub(super) fn expand(
    graph: &Graph<'_>,
    options: &[Options],
    runtime: Option<&TokenStream>,
    bus: Option<&Expr>,
) -> TokenStream {
    let system = Ident::new("__sophon_system", Span::call_site());
    let built = build(graph, options, runtime, bus);
    let params: Vec<Ident> = (0..built.fields.len()).map(|i| format_ident!("__T{}", i)).collect();
    // A field that a `#[cfg(..)]` removes leaves its type parameter to a marker field instead.
    let fields = built.fields.iter().zip(&params).enumerate().map(|(k, (field, param))| {
        let (cfg, not_cfg) = cfg_attrs(&field.condition);
        let (name, docs) = (field.name, &field.docs);
        let absent = if field.condition.is_some() {
            let absent = format_ident!("__sophon_absent_{}", k);
            quote!(#not_cfg #absent: ::core::marker::PhantomData<#param>,)
        } else {
            TokenStream::new()
        };
        quote!(#(#docs)* #cfg #name: #param, #absent)
    });
    let methods = system_methods(&TokenStream::new());
    let construct = construct(&built, &quote!(AgentSystem), true);
    quote! {{
        /// A running system declared with `agent_system!`: a handle per entity and a receiver
        /// per output, by the names declared, and the [`System`](::sophon::System) itself
        /// through `Deref` and `DerefMut`.
        #[derive(Debug)]
        #[allow(dead_code, reason = "a system need not use every handle")]
        struct AgentSystem<#(#params),*> {
            #(#fields)*
            #system: ::sophon::System,
        }

        #[allow(dead_code, reason = "a system need not use every method")]
        impl<#(#params),*> AgentSystem<#(#params),*> {
            #methods
        }

        impl<#(#params),*> ::core::ops::Deref for AgentSystem<#(#params),*> {
            type Target = ::sophon::System;

            fn deref(&self) -> &::sophon::System {
                &self.#system
            }
        }

        impl<#(#params),*> ::core::ops::DerefMut for AgentSystem<#(#params),*> {
            fn deref_mut(&mut self) -> &mut ::sophon::System {
                &mut self.#system
            }
        }

        #construct
    }}
}

/// The named form: a struct of the given name and visibility whose `spawn` builds and starts the
/// system. Its fields are typed by the entities' declared backend types.
pub(super) fn expand_named(
    header: &Header,
    graph: &Graph<'_>,
    options: &[Options],
    runtime: Option<&TokenStream>,
    bus: Option<&Expr>,
) -> TokenStream {
    let system = Ident::new("__sophon_system", Span::call_site());
    let mut built = build(graph, options, runtime, bus);
    // An entity without a type (already reported) has no field.
    built.fields.retain(|f| f.ty.is_some());
    let (name, vis, attrs) = (&header.name, &header.vis, &header.attrs);
    let vis_tokens = quote!(#vis);
    let fields = built.fields.iter().map(|field| {
        let (cfg, _) = cfg_attrs(&field.condition);
        let (field_name, ty) = (field.name, &field.ty);
        let docs = if field.docs.is_empty() {
            let doc = if field.output {
                format!("What the system sends to its output `{field_name}`.")
            } else if field.group {
                format!("The handles of the members of group `{field_name}`, `{field_name}[0]` first.")
            } else {
                format!("The handle of entity `{field_name}`.")
            };
            quote!(#[doc = #doc])
        } else {
            let docs = &field.docs;
            quote!(#(#docs)*)
        };
        quote!(#docs #cfg #vis #field_name: #ty,)
    });
    let params = header.params.iter().map(|p| {
        let (name, ty) = (&p.name, &p.ty);
        quote!(#name: #ty)
    });
    let struct_docs = if attrs.iter().any(|a| a.path().is_ident("doc")) {
        TokenStream::new()
    } else {
        let doc = format!("The agent system `{name}`, declared with `agent_system!`.");
        quote!(#[doc = #doc])
    };
    let methods = system_methods(&vis_tokens);
    let construct = construct(&built, &quote!(#name), false);
    let spawn_doc = "Builds the system and starts its agents; fails as \
                     [`SystemBuilder::spawn`](::sophon::SystemBuilder::spawn) does.";
    let drawing = drawing(graph);
    let (mermaid, dot) = (drawing.mermaid(), drawing.dot());
    let mermaid_doc = format!(
        "The declared graph as a Mermaid flowchart (a group is one node; with every `#[cfg]` holding). \
         A running system draws itself with live figures: [`System::mermaid`](::sophon::System::mermaid).\n\n```text\n{mermaid}```"
    );
    let dot_doc = "The declared graph in Graphviz's DOT language, drawn as `MERMAID` draws it. \
                   A running system draws itself with live figures: [`System::dot`](::sophon::System::dot).";
    quote! {
        #struct_docs
        #(#attrs)*
        #[derive(Debug)]
        #vis struct #name {
            #(#fields)*
            #system: ::sophon::System,
        }

        #[allow(dead_code, reason = "a system need not use every method")]
        impl #name {
            #[doc = #spawn_doc]
            #vis fn spawn(#(#params),*) -> ::core::result::Result<Self, ::sophon::BuildError> {
                #construct
            }

            #[doc = #mermaid_doc]
            #vis const MERMAID: &'static str = #mermaid;

            #[doc = #dot_doc]
            #vis const DOT: &'static str = #dot;

            #methods
        }

        impl ::core::ops::Deref for #name {
            type Target = ::sophon::System;

            fn deref(&self) -> &::sophon::System {
                &self.#system
            }
        }

        impl ::core::ops::DerefMut for #name {
            fn deref_mut(&mut self) -> &mut ::sophon::System {
                &mut self.#system
            }
        }
    }
}
