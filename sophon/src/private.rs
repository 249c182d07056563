//! Items the macros' expansions use. Not public API: no stability promise.

use crate::backend::IntoBackend;
use crate::builder::{EntityOptions, Node, SystemBuilder};
use crate::restart::FactoryOutput;

/// `Self` can be made from an edge's output `O`: what an edge `a -> b` needs of `b`'s input.
/// A trait of its own, rather than `From` directly, so that a mismatch reads as a problem with
/// the edge.
#[diagnostic::on_unimplemented(
    message = "this edge sends `{O}`, but its target takes `{Self}`",
    label = "`{Self}` cannot be made from `{O}`",
    note = "an edge `a -> b` needs `b`'s input to implement `From<a's output>`: implement `From<{O}>` for `{Self}`, or put an entity between them that converts"
)]
pub trait Fits<O>: From<O> {}

impl<O, T: From<O>> Fits<O> for T {}

/// How an edge declared in `agent_system!` is added.
#[derive(Clone, Copy, Debug)]
pub enum EdgeKind {
    /// `a -> b`
    Query,
    /// `a ~> b`
    Read,
    /// `loop a -> b`
    Loop,
}

/// Adds an edge, checking that its types fit with [`Fits`].
pub fn edge<I, O, I2, O2>(builder: &mut SystemBuilder, kind: EdgeKind, from: &Node<I, O>, to: &Node<I2, O2>)
where
    I: Send + 'static,
    O: Send + 'static,
    I2: Fits<O> + Send + 'static,
    O2: Send + 'static,
{
    match kind {
        EdgeKind::Query => builder.query_edge(from, to),
        EdgeKind::Read => builder.read_edge(from, to),
        EdgeKind::Loop => builder.loop_edge(from, to),
    };
}

/// Adds an entity with a restart factory, naming the backend's type when the declaration does
/// (`model: LocalLlm = || LocalLlm::load(..)`).
pub fn supervised<B, F, R>(
    builder: &mut SystemBuilder,
    name: &str,
    factory: F,
    options: EntityOptions,
) -> Node<B::Input, B::Output>
where
    B: IntoBackend,
    F: Factory<R>,
    R: FactoryOutput<Backend = B>,
{
    builder.supervised(name, factory, options)
}

/// What a restarted entity is declared with: a closure that builds its backend. A trait of its
/// own, rather than `FnMut` directly, so that a backend given instead reads as that mistake.
#[diagnostic::on_unimplemented(
    message = "a restarted entity is declared with a factory that builds its backend, not with `{Self}`",
    label = "expected a closure that builds the backend",
    note = "write `|| ...` before the expression: the factory is called for the first backend and again after each panic"
)]
pub trait Factory<R>: FnMut() -> R + Send + 'static {}

impl<R, F: FnMut() -> R + Send + 'static> Factory<R> for F {}
