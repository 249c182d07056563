//! Items the macros' expansions use. Not public API: no stability promise.

use crate::builder::{Node, SystemBuilder};

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
