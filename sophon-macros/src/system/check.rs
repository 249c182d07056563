//! The rules a declared system must follow, one function each. Every problem is reported at
//! the tokens it is about; nothing stops at the first.

use std::collections::HashMap;

use quote::quote;
use syn::{Attribute, LitInt, Meta};

use super::graph::{Graph, Kind};
use super::parse::{Arrow, Entity};
use crate::errors::{Errors, closest};

/// The options an entity may carry, e.g. `#[bounded(16)] worker = Worker::new();`.
const OPTIONS: &[&str] = &["bounded"];

/// An entity's options, as checked.
#[derive(Default)]
pub(super) struct Options {
    pub(super) bounded: Option<LitInt>,
}

pub(super) fn check(graph: &Graph<'_>, errors: &mut Errors) -> Vec<Options> {
    let options = graph.entities.iter().map(|e| check_options(e, errors)).collect();
    check_loop_on_read_edges(graph, errors);
    check_outputs(graph, errors);
    check_duplicate_edges(graph, errors);
    check_self_edges(graph, errors);
    check_query_cycles(graph, errors);
    options
}

// Options are known and well formed: `#[bounded(16)]` takes a positive integer; `#[bouned(16)]`
// and `#[bounded("x")]` are errors, and so is an option given twice.
fn check_options(entity: &Entity, errors: &mut Errors) -> Options {
    let mut options = Options::default();
    for attr in &entity.options {
        let name = attr.path().get_ident().map(ToString::to_string).unwrap_or_else(|| {
            let path = attr.path();
            quote!(#path).to_string().replace(' ', "")
        });
        match name.as_str() {
            "bounded" => {
                if options.bounded.is_some() {
                    errors.spanned(attr, "option `bounded` is given twice; keep one");
                    continue;
                }
                match bounded_capacity(attr) {
                    Some(capacity) => options.bounded = Some(capacity),
                    None => errors
                        .spanned(attr, "`bounded` takes the queue's capacity, a positive integer: `#[bounded(16)]`"),
                }
            }
            _ => {
                let hint = match closest(&name, OPTIONS.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`? "),
                    None => String::new(),
                };
                errors.spanned(
                    attr.path(),
                    format!("unknown entity option `{name}`; {hint}the options are: `#[bounded(N)]`"),
                );
            }
        }
    }
    options
}

fn bounded_capacity(attr: &Attribute) -> Option<LitInt> {
    let Meta::List(list) = &attr.meta else { return None };
    let capacity: LitInt = syn::parse2(list.tokens.clone()).ok()?;
    (capacity.base10_parse::<usize>().ok()? > 0).then_some(capacity)
}

// Only a query edge can close a loop: `loop a ~> b` is an error, since a read never answers and
// so cannot bounce.
fn check_loop_on_read_edges(graph: &Graph<'_>, errors: &mut Errors) {
    let mut seen = Vec::new();
    for decl in graph.edges.iter().map(|e| e.decl).chain(graph.outputs.iter().map(|o| o.decl)) {
        if seen.iter().any(|d| std::ptr::eq(*d, decl)) {
            continue;
        }
        seen.push(decl);
        if let (Some(loop_token), Arrow::Read(..)) = (&decl.loop_token, &decl.arrow) {
            errors.spanned(
                loop_token,
                "only a query edge can close a loop: a read is never answered, so it cannot bounce; remove `loop`",
            );
        }
    }
}

// Outputs take everything an entity sends: `a -> output(answers)`. A read arrow or `loop` makes
// no sense there, and an output may not share a name with an entity (both become fields of the
// system).
fn check_outputs(graph: &Graph<'_>, errors: &mut Errors) {
    for output in &graph.outputs {
        let name = output.name;
        if let Arrow::Read(tilde, gt) = &output.decl.arrow {
            errors.spanned(
                quote!(#tilde #gt),
                format!("an output takes everything its entity sends; write `-> output({name})`"),
            );
        } else if let Some(loop_token) = &output.decl.loop_token {
            errors.spanned(loop_token, "an output leaves the system, so it cannot close a loop; remove `loop`");
        }
        if graph.entities.iter().any(|e| e.name == *name) {
            errors.spanned(
                name,
                format!("`{name}` is already an entity's name; give the output its own name, as both become fields of the system"),
            );
        }
    }
}

// An edge is declared once: `a -> b; a ~> b;` reports both, numbered.
fn check_duplicate_edges(graph: &Graph<'_>, errors: &mut Errors) {
    let mut places: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
    for (i, edge) in graph.edges.iter().enumerate() {
        places.entry((edge.from, edge.to)).or_default().push(i);
    }
    let mut duplicates: Vec<&Vec<usize>> = places.values().filter(|p| p.len() > 1).collect();
    duplicates.sort();
    for edges in duplicates {
        for (k, &i) in edges.iter().enumerate() {
            let edge = &graph.edges[i];
            let (from, to) = (&edge.decl.from, edge.target);
            errors.spanned(
                quote!(#from #to),
                format!(
                    "edge `{from} -> {to}` is declared {} times ({}/{}); remove the repeats",
                    edges.len(),
                    k + 1,
                    edges.len()
                ),
            );
        }
    }
}

// An entity does not send to itself unless the loop is declared: `a -> a` is an error,
// `loop a -> a` is not.
fn check_self_edges(graph: &Graph<'_>, errors: &mut Errors) {
    for edge in graph.edges.iter().filter(|e| e.from == e.to && e.kind != Kind::Loop) {
        let (from, arrow, to) = (&edge.decl.from, &edge.decl.arrow, edge.target);
        errors.spanned(
            quote!(#from #arrow #to),
            format!("edge `{from} {} {to}` sends `{from}`'s output back to itself; write `loop {from} -> {to}` if the loop is intended", quote!(#arrow).to_string().replace(' ', "")),
        );
    }
}

// Query edges must not form a cycle, which would bounce messages forever:
// `a -> b; b -> c; c -> a;` is an error on each of the three edges, numbered; making one of them
// a read edge (`c ~> a`) or declaring it `loop c -> a` fixes it.
fn check_query_cycles(graph: &Graph<'_>, errors: &mut Errors) {
    let queries: Vec<(usize, usize)> =
        graph.edges.iter().filter(|e| e.kind == Kind::Query && e.from != e.to).map(|e| (e.from, e.to)).collect();
    for cycle in sophon_graph::cycles(graph.entities.len(), &queries) {
        let names: Vec<String> = cycle.iter().map(|&i| graph.entities[i].name.to_string()).collect();
        let path = format!("{} -> {}", names.join(" -> "), names[0]);
        let n = cycle.len();
        for k in 0..n {
            let (from, to) = (cycle[k], cycle[(k + 1) % n]);
            let edge = graph
                .edges
                .iter()
                .find(|e| e.kind == Kind::Query && e.from == from && e.to == to)
                .expect("a cycle follows query edges");
            let (from, arrow, target) = (&edge.decl.from, &edge.decl.arrow, edge.target);
            errors.spanned(
                quote!(#from #arrow #target),
                format!(
                    "query edges `{path}` form a cycle ({}/{n}); make one of them a read edge (`~>`), or mark it `loop` if the loop is intended",
                    k + 1
                ),
            );
        }
    }
}
