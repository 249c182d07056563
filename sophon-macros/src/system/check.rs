//! The rules a declared system must follow, one function each. Every problem is reported at
//! the tokens it is about; nothing stops at the first.

use std::collections::HashMap;

use proc_macro2::TokenStream;
use quote::quote;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Lit, LitInt, Meta, MetaNameValue, Token};

use super::graph::{Graph, Kind};
use super::parse::{Arrow, Entity, Statement, SystemInput};
use crate::errors::{Errors, closest};

/// The options an entity may carry, e.g. `#[bounded(16)] worker = Worker::new();`.
const OPTIONS: &[&str] = &["bounded", "restart", "thread", "replicas", "export", "cfg", "doc"];

/// How the options are written, for hints.
const OPTIONS_HELP: &str = "`#[bounded(N)]`, `#[restart(max = N, within = DURATION)]`, `#[thread]`, `#[replicas]`, `#[export]`, `#[cfg(PREDICATE)]` and `///` doc comments";

/// The options of the whole system, written first: `#![pool]`, `#![pool(4)]`, `#![threads]`.
const RUNTIME_HELP: &str =
    "`#![pool]` (a worker per core), `#![pool(N)]` (N workers) or `#![threads]` (a thread per entity)";

/// How the bus is written, for hints.
const BUS_HELP: &str =
    "`#![bus(bus)]`, with a `sophon::bus::Bus` (say, a parameter of `spawn`, or `&Bus::from_env(\"chat\")?`)";

/// The bus of a system that imports or exports entities: `#![bus(EXPR)]`, the expression of a
/// `Bus` or a reference to one.
pub(super) fn bus(inner: &[Attribute], errors: &mut Errors) -> Option<Expr> {
    let mut chosen = None;
    for attr in inner.iter().filter(|a| a.path().is_ident("bus")) {
        let expr = match &attr.meta {
            Meta::List(list) if !list.tokens.is_empty() => syn::parse2::<Expr>(list.tokens.clone()).ok(),
            _ => None,
        };
        let Some(expr) = expr else {
            errors.spanned(attr, format!("`bus` takes the bus the system imports and exports over: {BUS_HELP}"));
            continue;
        };
        if chosen.is_some() {
            errors.spanned(attr, "the bus is given twice; keep one");
            continue;
        }
        chosen = Some(expr);
    }
    chosen
}

/// The runtime a system asks for, as a call on the builder: `pool(4)`, say.
pub(super) fn runtime(inner: &[Attribute], errors: &mut Errors) -> Option<TokenStream> {
    let mut chosen: Option<TokenStream> = None;
    for attr in inner {
        let name = attr.path().get_ident().map(ToString::to_string).unwrap_or_default();
        let call = match (name.as_str(), &attr.meta) {
            // Not a runtime: see `bus`.
            ("bus", _) => continue,
            ("threads", Meta::Path(_)) => quote!(runtime(::sophon::Runtime::Threads)),
            ("pool", Meta::Path(_)) => quote!(runtime(::sophon::Runtime::pool())),
            ("pool", Meta::List(list)) => match syn::parse2::<Expr>(list.tokens.clone()) {
                Ok(Expr::Lit(syn::ExprLit { lit: Lit::Int(n), .. })) if n.base10_parse::<usize>().ok() == Some(0) => {
                    errors.spanned(n, "a pool needs at least one worker: `#![pool(1)]` or more");
                    continue;
                }
                Ok(workers) => quote!(pool(#workers)),
                Err(_) => {
                    errors.spanned(
                        attr,
                        "`pool` takes the number of workers: `#![pool(4)]`, or `#![pool]` for one per core",
                    );
                    continue;
                }
            },
            ("threads" | "pool", _) => {
                errors.spanned(attr, format!("write the runtime as {RUNTIME_HELP}"));
                continue;
            }
            _ => {
                let hint = match closest(&name, ["pool", "threads", "bus"]) {
                    Some(close) => format!("did you mean `{close}`? "),
                    None => String::new(),
                };
                errors.spanned(
                    attr.path(),
                    format!(
                        "unknown system option `{name}`; {hint}a system takes its runtime, {RUNTIME_HELP}, and its bus, `#![bus(EXPR)]`"
                    ),
                );
                continue;
            }
        };
        if chosen.is_some() {
            errors.spanned(attr, "the runtime is given twice; keep one");
            continue;
        }
        chosen = Some(call);
    }
    chosen
}

/// An entity's options, as checked.
#[derive(Default)]
pub(super) struct Options {
    pub(super) bounded: Option<LitInt>,
    pub(super) restart: Option<RestartOption>,
    /// `#[thread]`: a thread of its own in a system run by a pool.
    pub(super) thread: bool,
    /// `#[replicas]`: the expression gives several backends, each a replica of the entity.
    pub(super) replicas: bool,
    /// `#[export]`: other processes can import the entity over the system's bus.
    pub(super) export: bool,
    /// `///` lines, for the entity's handle field.
    pub(super) docs: Vec<Attribute>,
    /// The predicates of its `#[cfg(..)]`s: the entity exists when all hold.
    pub(super) cfgs: Vec<TokenStream>,
}

/// `#[restart(max = 5, within = 10s)]`: the most restarts, and the window in milliseconds.
pub(super) struct RestartOption {
    pub(super) max: LitInt,
    pub(super) within_ms: u64,
}

pub(super) fn check(input: &SystemInput, graph: &Graph<'_>, errors: &mut Errors) -> Vec<Options> {
    let options: Vec<Options> = graph.entities.iter().map(|e| check_options(e, errors)).collect();
    check_bus_given(input, graph, &options, errors);
    check_edge_attributes(input, errors);
    if input.header.is_some() {
        check_named_entities(graph, errors);
    }
    check_loop_on_read_edges(graph, errors);
    check_outputs(graph, errors);
    check_duplicate_edges(graph, errors);
    check_self_edges(graph, errors);
    check_query_cycles(graph, errors);
    check_bounded_loops(graph, &options, errors);
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
        // A remote entity's backend, and so its options, are the exporting process's.
        if entity.remote.is_some() && !["doc", "cfg"].contains(&name.as_str()) {
            let entity = &entity.name;
            errors.spanned(
                attr.path(),
                format!(
                    "a remote entity takes only `///` doc comments and `#[cfg(..)]`: `#[{name}]` belongs where `{entity}` is exported, on `#[export] {entity} = ...;`"
                ),
            );
            continue;
        }
        match name.as_str() {
            "doc" => options.docs.push(attr.clone()),
            "cfg" => match cfg_predicate(attr) {
                Some(predicate) => options.cfgs.push(predicate),
                None => errors.spanned(attr, CFG_USAGE),
            },
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
            "thread" => {
                if options.thread {
                    errors.spanned(attr, "option `thread` is given twice; keep one");
                } else if !matches!(attr.meta, Meta::Path(_)) {
                    errors.spanned(attr, "`thread` takes no arguments: `#[thread]`");
                } else {
                    options.thread = true;
                }
            }
            "replicas" => {
                if options.replicas {
                    errors.spanned(attr, "option `replicas` is given twice; keep one");
                } else if let Some(size) = &entity.size {
                    errors.spanned(
                        size,
                        "a replicated entity is one entity served by several backends, not a group: drop `[..]` and give its backends as `[a, b, c]`",
                    );
                } else {
                    // Taken as meant even when malformed, so that the expansion adds no errors.
                    if !matches!(attr.meta, Meta::Path(_)) {
                        errors.spanned(attr, "`replicas` takes no arguments: `#[replicas] model = [a, b, c];`");
                    }
                    options.replicas = true;
                }
            }
            "export" => {
                if options.export {
                    errors.spanned(attr, "option `export` is given twice; keep one");
                } else if let Some(size) = &entity.size {
                    errors.spanned(
                        size,
                        "a group is not exported whole: export one entity, `#[export] name = MyBackend::new();`",
                    );
                } else {
                    if !matches!(attr.meta, Meta::Path(_)) {
                        errors.spanned(
                            attr,
                            "`export` takes no arguments: the entity goes on the system's bus, `#![bus(..)]`",
                        );
                    }
                    options.export = true;
                }
            }
            "restart" => {
                if options.restart.is_some() {
                    errors.spanned(attr, "option `restart` is given twice; keep one");
                    continue;
                }
                options.restart = restart_policy(attr, errors);
            }
            _ => {
                let hint = match closest(&name, OPTIONS.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`? "),
                    None => String::new(),
                };
                errors.spanned(
                    attr.path(),
                    format!("unknown entity option `{name}`; {hint}the options are: {OPTIONS_HELP}"),
                );
            }
        }
    }
    if let (true, Some(restart)) = (options.replicas, &options.restart) {
        errors.spanned(
            &restart.max,
            "replicas are not restarted: a replica that panics is culled and what it held goes to the others; remove `#[restart(..)]`",
        );
        options.restart = None;
    }
    options
}

// A system that imports or exports an entity says over which bus: `#![bus(bus)]`.
fn check_bus_given(input: &SystemInput, graph: &Graph<'_>, options: &[Options], errors: &mut Errors) {
    if input.inner.iter().any(|a| a.path().is_ident("bus")) {
        return;
    }
    for (entity, options) in graph.entities.iter().zip(options) {
        let name = &entity.name;
        if let Some(remote) = &entity.remote {
            errors.spanned(
                remote.keyword,
                format!("`remote {name}` comes over the system's bus, which is not given: add {BUS_HELP} first"),
            );
        } else if options.export
            && let Some(attr) = entity.options.iter().find(|a| a.path().is_ident("export"))
        {
            errors.spanned(
                attr,
                format!("`{name}` is exported on the system's bus, which is not given: add {BUS_HELP} first"),
            );
        }
    }
}

const CFG_USAGE: &str = "`cfg` takes a predicate, as on any item: `#[cfg(feature = \"sqlite\")]`";

/// The predicate of `#[cfg(predicate)]`, if that is how it is written.
fn cfg_predicate(attr: &Attribute) -> Option<TokenStream> {
    match &attr.meta {
        Meta::List(list) if !list.tokens.is_empty() => Some(list.tokens.clone()),
        _ => None,
    }
}

/// The predicates of every well-formed `#[cfg(..)]` among `attrs`.
pub(super) fn cfg_predicates(attrs: &[Attribute]) -> Vec<TokenStream> {
    attrs.iter().filter(|a| a.path().is_ident("cfg")).filter_map(cfg_predicate).collect()
}

// An edge line takes doc comments and `#[cfg(..)]` only: `#[cfg(feature = "log")] a ~> log;`.
fn check_edge_attributes(input: &SystemInput, errors: &mut Errors) {
    for statement in &input.statements {
        let Statement::Edge(edge) = statement else { continue };
        for attr in &edge.attrs {
            if attr.path().is_ident("doc") {
                continue;
            }
            if attr.path().is_ident("cfg") {
                if cfg_predicate(attr).is_none() {
                    errors.spanned(attr, CFG_USAGE);
                }
                continue;
            }
            let path = attr.path();
            let name = quote!(#path).to_string().replace(' ', "");
            let hint = if ["bounded", "restart", "thread", "replicas", "export"].contains(&name.as_str()) {
                format!("; `#[{name}]` is an option of an entity: put it on the line that declares the entity")
            } else {
                String::new()
            };
            errors.spanned(
                path,
                format!("an edge takes only `///` doc comments and `#[cfg(..)]`, not `#[{name}]`{hint}"),
            );
        }
    }
}

// A named system's fields are typed handles, so each entity names its backend's type:
// `model: LocalLlm = LocalLlm::load(None, options)?;` rather than `model = ...`; and an output
// fed first by a port names the port's type: `ping.done -> output(done: u64);`.
fn check_named_entities(graph: &Graph<'_>, errors: &mut Errors) {
    let mut seen = Vec::new();
    for output in &graph.outputs {
        let name = output.name.to_string();
        if seen.contains(&name) {
            continue;
        }
        seen.push(name.clone());
        let typed = graph.outputs.iter().any(|o| o.name == output.name && o.ty.is_some());
        if let (Some(port), false) = (&output.decl.port, typed) {
            errors.spanned(
                output.name,
                format!(
                    "output `{name}` of a named system is fed by the port `{port}`, whose type the macro cannot see: write `output({name}: T)` with the type the port carries"
                ),
            );
        }
    }
    for entity in graph.entities.iter().filter(|e| e.ty.is_none() && e.remote.is_none()) {
        let name = &entity.name;
        errors.spanned(
            name,
            format!(
                "entity `{name}` of a named system needs its backend's type, which types its handle field: `{name}: MyBackend = ...`"
            ),
        );
    }
}

fn bounded_capacity(attr: &Attribute) -> Option<LitInt> {
    let Meta::List(list) = &attr.meta else { return None };
    let capacity: LitInt = syn::parse2(list.tokens.clone()).ok()?;
    (capacity.base10_parse::<usize>().ok()? > 0).then_some(capacity)
}

// `#[restart(max = 5, within = 10s)]` takes the most restarts, a non-negative integer, and the
// window, an integer with a unit (`ms`, `s`, `m` or `h`); both are needed, each once.
fn restart_policy(attr: &Attribute, errors: &mut Errors) -> Option<RestartOption> {
    const USAGE: &str = "`restart` takes the most restarts and their window: `#[restart(max = 5, within = 10s)]`";
    let fallback = || Some(RestartOption { max: LitInt::new("0", attr.span()), within_ms: 0 });
    let Meta::List(list) = &attr.meta else {
        errors.spanned(attr, USAGE);
        return fallback();
    };
    let Ok(pairs) = list.parse_args_with(Punctuated::<MetaNameValue, Token![,]>::parse_terminated) else {
        errors.spanned(attr, USAGE);
        return fallback();
    };
    let (mut max, mut within) = (None, None);
    let mut ok = true;
    for pair in &pairs {
        let key = pair.path.get_ident().map(ToString::to_string).unwrap_or_default();
        let lit = match &pair.value {
            Expr::Lit(lit) => match &lit.lit {
                Lit::Int(int) => Some(int),
                _ => None,
            },
            _ => None,
        };
        match key.as_str() {
            "max" if max.is_some() => {
                errors.spanned(pair, "`max` is given twice; keep one");
                ok = false;
            }
            "within" if within.is_some() => {
                errors.spanned(pair, "`within` is given twice; keep one");
                ok = false;
            }
            "max" => match lit.filter(|int| int.suffix().is_empty() && int.base10_parse::<u32>().is_ok()) {
                Some(int) => max = Some(int.clone()),
                None => {
                    errors.spanned(&pair.value, "`max` takes the most restarts allowed, an integer: `max = 5`");
                    ok = false;
                }
            },
            "within" => match lit.and_then(duration_ms) {
                Some(ms) => within = Some(ms),
                None => {
                    errors.spanned(
                        &pair.value,
                        "`within` takes a duration: an integer with a unit of `ms`, `s`, `m` or `h`, e.g. `within = 10s`",
                    );
                    ok = false;
                }
            },
            _ => {
                errors
                    .spanned(&pair.path, format!("unknown key `{key}` of `restart`; the keys are `max` and `within`"));
                ok = false;
            }
        }
    }
    if ok && (max.is_none() || within.is_none()) {
        errors.spanned(attr, USAGE);
    }
    // After an error the entity is still expanded as a restarted one, so that its factory does
    // not add an error of its own.
    let max = max.unwrap_or_else(|| LitInt::new("0", list.delimiter.span().join()));
    Some(RestartOption { max, within_ms: within.unwrap_or(0) })
}

/// `10s` as milliseconds.
fn duration_ms(lit: &LitInt) -> Option<u64> {
    let scale = match lit.suffix() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    lit.base10_parse::<u64>().ok()?.checked_mul(scale)
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

// An edge is declared once: `a -> b; a ~> b;` reports both, numbered. Edges from different
// ports of one entity to another are not duplicates (`a.left -> b; a.right -> b;`), but an edge
// of the whole output and one of a port are, since the port's values would arrive twice.
fn check_duplicate_edges(graph: &Graph<'_>, errors: &mut Errors) {
    let mut places: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
    for (i, edge) in graph.edges.iter().enumerate() {
        places.entry((edge.from, edge.to)).or_default().push(i);
    }
    let port = |i: usize| graph.edges[i].decl.port.as_ref().map(ToString::to_string);
    let mut duplicates: Vec<Vec<usize>> = places
        .values()
        .map(|group| {
            group
                .iter()
                .copied()
                .filter(|&i| {
                    group.iter().any(|&j| j != i && (port(i).is_none() || port(j).is_none() || port(i) == port(j)))
                })
                .collect::<Vec<usize>>()
        })
        .filter(|p| p.len() > 1)
        .collect();
    duplicates.sort();
    for edges in &duplicates {
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
        report_cycle(graph, &cycle, Some(Kind::Query), errors, |path, k, n| {
            format!(
                "query edges `{path}` form a cycle ({k}/{n}); make one of them a read edge (`~>`), or mark it `loop` if the loop is intended"
            )
        });
    }
}

// Edges must not form a loop through bounded entities only: each could wait for room in the
// next one's full queue forever. `#[bounded(4)] a = ..; #[bounded(4)] b = ..; a -> b; loop b -> a;`
// is an error on both edges, numbered; leaving one entity on the loop unbounded fixes it.
fn check_bounded_loops(graph: &Graph<'_>, options: &[Options], errors: &mut Errors) {
    let bounded = |i: usize| options[i].bounded.is_some();
    let edges: Vec<(usize, usize)> = graph
        .edges
        .iter()
        .filter(|e| e.from != e.to && bounded(e.from) && bounded(e.to))
        .map(|e| (e.from, e.to))
        .collect();
    for cycle in sophon_graph::cycles(graph.entities.len(), &edges) {
        report_cycle(graph, &cycle, None, errors, |path, k, n| {
            format!(
                "edges `{path}` form a loop whose queues are all bounded, which can deadlock ({k}/{n}); \
                 remove `#[bounded]` from one of its entities"
            )
        });
    }
}

/// Reports an error on each edge of `cycle` (of edges of `kind`, or of any kind), numbered,
/// with the message `describe(path, k, n)` for the `k`th of `n` edges along `path`
/// (`a -> b -> a`).
fn report_cycle(
    graph: &Graph<'_>,
    cycle: &[usize],
    kind: Option<Kind>,
    errors: &mut Errors,
    describe: impl Fn(&str, usize, usize) -> String,
) {
    let names: Vec<String> = cycle.iter().map(|&i| graph.entities[i].name.to_string()).collect();
    let path = format!("{} -> {}", names.join(" -> "), names[0]);
    let n = cycle.len();
    for k in 0..n {
        let (from, to) = (cycle[k], cycle[(k + 1) % n]);
        let edge = graph
            .edges
            .iter()
            .find(|e| e.from == from && e.to == to && kind.is_none_or(|kind| e.kind == kind))
            .expect("a cycle follows the edges it was found in");
        let (from, arrow, target) = (&edge.decl.from, &edge.decl.arrow, edge.target);
        errors.spanned(quote!(#from #arrow #target), describe(&path, k + 1, n));
    }
}
