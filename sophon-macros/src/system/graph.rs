//! The small model of a declared system: entities, edges and outputs, with names resolved.
//! Unknown and duplicate names are reported here, without stopping.

use std::collections::HashMap;

use syn::Ident;

use super::parse::{Arrow, Edge, Entity, Statement, SystemInput, Target};
use crate::errors::{Errors, closest};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Query,
    Read,
    Loop,
}

pub(super) struct Graph<'a> {
    /// Every entity, in declaration order; a duplicate keeps its place but not its name.
    pub(super) entities: Vec<&'a Entity>,
    pub(super) edges: Vec<EdgeRef<'a>>,
    pub(super) outputs: Vec<OutputRef<'a>>,
}

/// One edge to an entity (an edge with several targets gives several).
pub(super) struct EdgeRef<'a> {
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) kind: Kind,
    pub(super) decl: &'a Edge,
    pub(super) target: &'a Ident,
}

/// One edge to an output.
pub(super) struct OutputRef<'a> {
    pub(super) from: usize,
    pub(super) decl: &'a Edge,
    pub(super) name: &'a Ident,
    /// `output(name: Type)`: the type of what it carries, when written.
    pub(super) ty: Option<&'a syn::Type>,
}

impl<'a> Graph<'a> {
    pub(super) fn build(input: &'a SystemInput, errors: &mut Errors) -> Self {
        let entities: Vec<&Entity> = input
            .statements
            .iter()
            .filter_map(|s| match s {
                Statement::Entity(e) => Some(&**e),
                Statement::Edge(_) => None,
            })
            .collect();
        let index = index_names(&entities, errors);
        let resolve = |name: &Ident, errors: &mut Errors| {
            let found = index.get(&name.to_string()).copied();
            if found.is_none() {
                let hint = match closest(&name.to_string(), index.keys().map(String::as_str)) {
                    Some(close) => format!("; did you mean `{close}`?"),
                    None if name == "output" => {
                        "; an output is written with its name: `-> output(answers)`".to_string()
                    }
                    None => "; declare it with `name = MyBackend::new();`".to_string(),
                };
                errors.spanned(name, format!("no entity named `{name}` in this system{hint}"));
            }
            found
        };

        let (mut edges, mut outputs) = (Vec::new(), Vec::new());
        for statement in &input.statements {
            let Statement::Edge(decl) = statement else { continue };
            let from = resolve(&decl.from, errors);
            let kind = match (&decl.loop_token, &decl.arrow) {
                (Some(_), _) => Kind::Loop,
                (None, Arrow::Query(_)) => Kind::Query,
                (None, Arrow::Read(..)) => Kind::Read,
            };
            for target in &decl.targets {
                match target {
                    Target::Entity(name) => {
                        if let (Some(from), Some(to)) = (from, resolve(name, errors)) {
                            edges.push(EdgeRef { from, to, kind, decl, target: name });
                        }
                    }
                    Target::Output { name, ty, .. } => {
                        if let Some(from) = from {
                            outputs.push(OutputRef { from, decl, name, ty: ty.as_deref() });
                        }
                    }
                }
            }
        }
        Graph { entities, edges, outputs }
    }
}

// Entity names are unique: `a = A; a = B;` reports both, numbered (1/2) and (2/2).
fn index_names(entities: &[&Entity], errors: &mut Errors) -> HashMap<String, usize> {
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, entity) in entities.iter().enumerate() {
        by_name.entry(entity.name.to_string()).or_default().push(i);
    }
    let mut duplicates: Vec<&Vec<usize>> = by_name.values().filter(|v| v.len() > 1).collect();
    duplicates.sort();
    for places in duplicates {
        for (k, &i) in places.iter().enumerate() {
            let name = &entities[i].name;
            errors.spanned(
                name,
                format!(
                    "entity `{name}` is declared {} times ({}/{}); give each entity its own name",
                    places.len(),
                    k + 1,
                    places.len()
                ),
            );
        }
    }
    by_name.into_iter().map(|(name, places)| (name, places[0])).collect()
}
