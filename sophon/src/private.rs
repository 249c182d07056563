//! Items the macros' expansions use. Not public API: no stability promise.

use std::marker::PhantomData;

use crate::backend::IntoBackend;
use crate::builder::{EntityOptions, Node, SystemBuilder};
use crate::entity::Handle;
use crate::ports::{OutPort, Ports};
use crate::restart::FactoryOutput;
use crate::system::System;

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

/// What a name declared in `agent_system!` stands for: one entity's node, or a group's nodes.
/// An edge from or to a group is an edge from or to each of its members.
pub trait Nodes {
    /// The entities' input.
    type Input: Send + 'static;
    /// The entities' output.
    type Output: Send + 'static;
    /// The system's field for it: a handle, or a group's handles.
    type Handles;
    /// Every node it stands for.
    fn nodes(&self) -> &[Node<Self::Input, Self::Output>];
    /// The field's value, from the spawned system.
    fn handles(&self, system: &System) -> Self::Handles;
}

impl<I: Send + 'static, O: Send + 'static> Nodes for Node<I, O> {
    type Input = I;
    type Output = O;
    type Handles = Handle<I, O>;

    fn nodes(&self) -> &[Node<I, O>] {
        std::slice::from_ref(self)
    }

    fn handles(&self, system: &System) -> Handle<I, O> {
        system.handle(self)
    }
}

impl<I: Send + 'static, O: Send + 'static> Nodes for Vec<Node<I, O>> {
    type Input = I;
    type Output = O;
    type Handles = Vec<Handle<I, O>>;

    fn nodes(&self) -> &[Node<I, O>] {
        self
    }

    fn handles(&self, system: &System) -> Vec<Handle<I, O>> {
        self.iter().map(|node| system.handle(node)).collect()
    }
}

/// Adds an edge from each of `from`'s nodes to each of `to`'s, checking that their types fit
/// with [`Fits`].
pub fn edge<F: Nodes, T: Nodes>(builder: &mut SystemBuilder, kind: EdgeKind, from: &F, to: &T)
where
    T::Input: Fits<F::Output>,
{
    for from in from.nodes() {
        for to in to.nodes() {
            match kind {
                EdgeKind::Query => builder.query_edge(from, to),
                EdgeKind::Read => builder.read_edge(from, to),
                EdgeKind::Loop => builder.loop_edge(from, to),
            };
        }
    }
}

/// Adds a replicated entity (`#[replicas] model = [a, b, c];`, see
/// [`SystemBuilder::replicas_with`]).
pub fn replicas<I, O>(
    builder: &mut SystemBuilder,
    name: &str,
    backends: impl IntoIterator<Item = crate::BoxBackend<I, O>>,
    options: EntityOptions,
) -> Node<I, O>
where
    I: ReplicaInput + Send + 'static,
    O: Send + 'static,
{
    builder.replicas_with(name, backends, options)
}

/// What a replicated entity's input needs: every replica reads each read, so it is cloned.
#[diagnostic::on_unimplemented(
    message = "the input of a replicated entity must be `Clone`: `{Self}` is not",
    label = "every replica takes each read, a copy each",
    note = "derive or implement `Clone` for `{Self}`, or drop `#[replicas]`"
)]
pub trait ReplicaInput: Clone {}

impl<T: Clone> ReplicaInput for T {}

/// Adds an output fed by each of `from`'s nodes.
pub fn output_to<F: Nodes>(
    builder: &mut SystemBuilder,
    from: &F,
    name: &str,
    tx: &crossbeam_channel::Sender<F::Output>,
) {
    for from in from.nodes() {
        builder.output_to(from, name, tx.clone());
    }
}

/// What a group is declared with: a closure from each member's index to its backend. A trait of
/// its own, so that a backend given instead reads as that mistake.
#[diagnostic::on_unimplemented(
    message = "a group is declared with a closure from each member's index to its backend, not with `{Self}`",
    label = "expected a closure `|i| ...` that builds member `i`'s backend",
    note = "write `|i| ...` before the expression: it is called once per member, with indices 0, 1, .."
)]
pub trait Members {
    /// The members' backend.
    type Backend: IntoBackend;
    /// Member `i`'s backend.
    fn member(&mut self, i: usize) -> Self::Backend;
}

impl<B: IntoBackend, F: FnMut(usize) -> B> Members for F {
    type Backend = B;

    fn member(&mut self, i: usize) -> B {
        self(i)
    }
}

/// Adds a group (see [`SystemBuilder::group_with`]), naming the backend's type when the
/// declaration does (`workers[n]: Worker = |i| Worker::new(i)`).
pub fn group<B, F>(
    builder: &mut SystemBuilder,
    name: &str,
    size: usize,
    mut members: F,
    options: EntityOptions,
) -> Vec<Node<B::Input, B::Output>>
where
    B: IntoBackend,
    F: Members<Backend = B>,
{
    builder.group_with(name, size, |i| members.member(i), options)
}

/// What a restarted group is declared with: a closure from each member's index to a factory's
/// output, cloned for each member.
#[diagnostic::on_unimplemented(
    message = "a restarted group is declared with a closure from each member's index to its backend, not with `{Self}`",
    label = "expected a closure `|i| ...` that builds member `i`'s backend, again after each panic",
    note = "write `|i| ...` before the expression; it must be `Clone` and `Send`, as each member keeps a copy to restart with"
)]
pub trait GroupFactory<R>: Fn(usize) -> R + Clone + Send + 'static {}

impl<R, F: Fn(usize) -> R + Clone + Send + 'static> GroupFactory<R> for F {}

/// Adds a group whose members are restarted, each with its own copy of `factory` given its
/// index.
pub fn supervised_group<B, F, R>(
    builder: &mut SystemBuilder,
    name: &str,
    size: usize,
    factory: F,
    options: EntityOptions,
) -> Vec<Node<B::Input, B::Output>>
where
    B: IntoBackend,
    F: GroupFactory<R>,
    R: FactoryOutput<Backend = B>,
{
    (0..size)
        .map(|i| {
            let factory = factory.clone();
            builder.supervised(&crate::builder::member_name(name, i), move || factory(i), options)
        })
        .collect()
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

/// Adds an edge from one port of each of `from`'s nodes, named by `pick`, to each of `to`'s,
/// checking that its types fit; gives the port's marker back for the wiring check.
pub fn port_edge<F, P, T, M>(
    builder: &mut SystemBuilder,
    kind: EdgeKind,
    from: &F,
    pick: impl Fn(<F::Output as Ports>::Map) -> OutPort<F::Output, T, M>,
    to: &P,
) -> PhantomData<M>
where
    F: Nodes,
    F::Output: Ports,
    T: Send + 'static,
    P: Nodes,
    P::Input: Fits<T>,
{
    for from in from.nodes() {
        for to in to.nodes() {
            let port = pick(<F::Output as Ports>::ports());
            match kind {
                EdgeKind::Query => builder.port_query_edge(from, port, to),
                EdgeKind::Read => builder.port_read_edge(from, port, to),
                EdgeKind::Loop => builder.port_loop_edge(from, port, to),
            };
        }
    }
    PhantomData
}

/// Adds an output fed by one port of each of `from`'s nodes, named by `pick`; gives the port's
/// marker back.
pub fn port_output_to<F, T, M>(
    builder: &mut SystemBuilder,
    from: &F,
    pick: impl Fn(<F::Output as Ports>::Map) -> OutPort<F::Output, T, M>,
    name: &str,
    tx: &crossbeam_channel::Sender<T>,
) -> PhantomData<M>
where
    F: Nodes,
    F::Output: Ports,
    T: Send + 'static,
{
    for from in from.nodes() {
        builder.port_output_to(from, pick(<F::Output as Ports>::ports()), name, tx.clone());
    }
    PhantomData
}

/// A remote entity declared without a bus (already reported): nothing, typed.
pub fn placeholder<I: Send + 'static, O: Send + 'static>(builder: &mut SystemBuilder, name: &str) -> Node<I, O> {
    builder.placeholder(name)
}

/// The bus `#![bus(..)]` names.
#[cfg(feature = "bus")]
pub use crate::bus::Bus;

/// `remote name: I => O`: the entity `name` of another process, over the system's bus.
#[cfg(feature = "bus")]
pub fn import<I, O>(builder: &mut SystemBuilder, name: &str, bus: &Bus) -> Node<I, O>
where
    I: serde::Serialize + Send + 'static,
    O: serde::de::DeserializeOwned + Clone + Send + 'static,
{
    builder.import(bus, name)
}

/// `#[export] name = ...`: the entity goes on the system's bus, for other processes to import.
#[cfg(feature = "bus")]
pub fn export<I, O>(builder: &mut SystemBuilder, node: &Node<I, O>, bus: &Bus)
where
    I: serde::de::DeserializeOwned + Send + 'static,
    O: serde::Serialize + Send + 'static,
{
    builder.export(node, bus);
}
