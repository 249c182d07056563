//! Items the macros' expansions use. Not public API: no stability promise.

use std::marker::PhantomData;

use crate::backend::IntoBackend;
use crate::builder::{EntityOptions, Node, SystemBuilder};
use crate::ports::{OutPort, Ports};
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

/// A port that an edge is attached to, in the check that every port of an entity is wired.
#[derive(Debug)]
pub struct Yes;

/// A port that no edge is attached to yet.
#[derive(Debug)]
pub struct No;

/// The state of one port, `Yes` or `No`, in the check that every port of an entity is wired.
#[diagnostic::on_unimplemented(
    message = "output port `{P}` of `{E}` is not wired",
    label = "this entity's edges attach to ports of `{E}`, but not to `{P}`",
    note = "what is sent to an unwired port is lost: wire it (`entity.{P} -> target;`, or `-> output(name)`), or attach an edge to the whole output (`entity -> target;`)"
)]
pub trait Wired<E, P> {}

impl<E, P> Wired<E, P> for Yes {}

/// Every port is wired: implemented by `#[derive(Ports)]` for its wiring state when each port's
/// state is `Yes`.
pub trait AllWired {}

/// Marks the port `M` wired in a wiring state.
pub trait Wire<M> {
    /// The state with `M` wired.
    type Out;
}

/// A port's type-level name, made by `#[derive(Ports)]`: it knows its enum's wiring state
/// with no port wired.
pub trait PortMarker {
    /// The state of the enum's ports before any is wired.
    type Start;
}

/// The wiring state before the first port: the first port tells whose ports they are.
#[derive(Debug)]
pub struct Unstarted;

impl<M: PortMarker> Wire<M> for Unstarted
where
    M::Start: Wire<M>,
{
    type Out = <M::Start as Wire<M>>::Out;
}

/// No port edge (all of them were configured out): nothing to check.
impl AllWired for Unstarted {}

/// The check that an entity's edges wire every port of its output, in the types: each `wire`
/// marks a port, and `check` compiles only when all are marked.
#[derive(Debug)]
pub struct Wiring<S>(PhantomData<fn() -> S>);

impl Wiring<Unstarted> {
    /// No port wired yet.
    pub fn start() -> Self {
        Wiring(PhantomData)
    }
}

impl<S> Wiring<S> {
    /// Marks the port `M` wired; `port_edge` and `port_output_to` give `M`.
    pub fn wire<M>(self, port: PhantomData<M>) -> Wiring<S::Out>
    where
        S: Wire<M>,
    {
        let _ = port;
        Wiring(PhantomData)
    }

    /// Compiles only when every port is wired.
    pub fn check(self)
    where
        S: AllWired,
    {
    }
}

/// Adds an edge from one port of `from`, named by `pick`, checking that its types fit; gives
/// the port's marker back for the wiring check.
pub fn port_edge<I, O, T, M, I2, O2>(
    builder: &mut SystemBuilder,
    kind: EdgeKind,
    from: &Node<I, O>,
    pick: impl FnOnce(O::Map) -> OutPort<O, T, M>,
    to: &Node<I2, O2>,
) -> PhantomData<M>
where
    I: Send + 'static,
    O: Ports,
    T: Send + 'static,
    I2: Fits<T> + Send + 'static,
    O2: Send + 'static,
{
    let port = pick(O::ports());
    match kind {
        EdgeKind::Query => builder.port_query_edge(from, port, to),
        EdgeKind::Read => builder.port_read_edge(from, port, to),
        EdgeKind::Loop => builder.port_loop_edge(from, port, to),
    };
    PhantomData
}

/// Adds an output fed by one port of `from`, named by `pick`; gives the port's marker back.
pub fn port_output_to<I, O, T, M>(
    builder: &mut SystemBuilder,
    from: &Node<I, O>,
    pick: impl FnOnce(O::Map) -> OutPort<O, T, M>,
    name: &str,
    tx: crossbeam_channel::Sender<T>,
) -> PhantomData<M>
where
    I: Send + 'static,
    O: Ports,
    T: Send + 'static,
{
    builder.port_output_to(from, pick(O::ports()), name, tx);
    PhantomData
}
