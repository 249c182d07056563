//! Named output ports: a backend whose output is an enum sends each variant to the edges
//! attached to that variant's port.

use std::fmt;
use std::marker::PhantomData;

/// An output type whose variants are named ports, derived with `#[derive(Ports)]` on an enum.
///
/// Each variant is a port named after it in snake case (`GameOver(u32)` is the port
/// `game_over`, carrying a `u32`; a unit variant carries `()`). An edge can attach to one port
/// of an entity, `ping.done -> output(done)` in `agent_system!` or
/// [`SystemBuilder::port_query_edge`](crate::SystemBuilder::port_query_edge) and its kin in the
/// builder: it then gets only what is sent through that port, as the variant's value. An edge
/// attached to the entity itself still gets every output, as the enum. The handler sends
/// through a port by sending its variant, `ctx.send(PingOut::Done(n))`, or by returning it from
/// a `#[backend]` query: a typed value, never a name.
///
/// `agent_system!` checks the ports at compile time: an edge naming a port the output lacks is
/// an error at the port's name, and so is a port left unwired on an entity whose edges attach
/// to ports (what is sent to an unwired port is lost); an entity with an edge of its whole
/// output wires them all.
///
/// # Examples
///
/// A ping-pong that ends by sending through its `done` port:
///
/// ```
/// use std::time::Duration;
/// use sophon::{Ports, agent_system, backend};
///
/// #[derive(Clone, Debug, PartialEq, Ports)]
/// enum PingOut {
///     /// The ball, back to the other side.
///     Pong(u64),
///     /// The rally is over: how long it was.
///     Done(u64),
/// }
///
/// struct Ping {
///     rally: u64,
/// }
///
/// #[backend]
/// impl Ping {
///     fn query(&mut self, n: u64) -> PingOut {
///         if n < self.rally { PingOut::Pong(n + 1) } else { PingOut::Done(n) }
///     }
/// }
///
/// struct Pong;
///
/// #[backend]
/// impl Pong {
///     fn query(&mut self, n: u64) -> u64 {
///         n + 1
///     }
/// }
///
/// let system = agent_system! {
///     ping = Ping { rally: 10 };
///     pong = Pong;
///     ping.pong -> pong;
///     loop pong -> ping;
///     ping.done -> output(done);
/// }?;
/// system.ping.query(0)?;
/// assert_eq!(system.done.recv()?, 10);
/// assert!(system.shutdown(Duration::from_secs(5)).is_clean());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The same graph with the builder names ports through [`Ports::ports`]:
///
/// ```
/// # use sophon::{Ports, backend};
/// # #[derive(Clone, Debug, PartialEq, Ports)]
/// # enum PingOut { Pong(u64), Done(u64) }
/// # struct Ping { rally: u64 }
/// # #[backend]
/// # impl Ping {
/// #     fn query(&mut self, n: u64) -> PingOut {
/// #         if n < self.rally { PingOut::Pong(n + 1) } else { PingOut::Done(n) }
/// #     }
/// # }
/// # struct Pong;
/// # #[backend]
/// # impl Pong {
/// #     fn query(&mut self, n: u64) -> u64 { n + 1 }
/// # }
/// use sophon::SystemBuilder;
///
/// let mut builder = SystemBuilder::new();
/// let ping = builder.entity("ping", Ping { rally: 4 });
/// let pong = builder.entity("pong", Pong);
/// builder.port_query_edge(&ping, PingOut::ports().pong, &pong);
/// builder.loop_edge(&pong, &ping);
/// let done = builder.port_output(&ping, PingOut::ports().done, "done");
/// let system = builder.spawn()?;
/// system.handle(&ping).query(0)?;
/// assert_eq!(done.recv()?, 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no output ports",
    label = "this entity's output is not an enum of ports",
    note = "name an entity's output ports with an enum, one variant per port, with `#[derive(sophon::Ports)]`, and make it the backend's output"
)]
pub trait Ports: Sized + Send + 'static {
    /// A struct with an [`OutPort`] field per port, named as the ports are.
    type Map;
    /// The state of a wiring check before any port is wired (see `agent_system!`).
    #[doc(hidden)]
    type Unwired;

    /// The ports, by name: `PingOut::ports().done`.
    fn ports() -> Self::Map;

    /// The index of the port this value goes through: its variant's place in the enum.
    fn port(&self) -> usize;

    /// The name of the port this value goes through.
    fn port_name(&self) -> &'static str;
}

/// One output port of an output enum `O`, carrying a `T`: what an edge attaches to.
///
/// Get one from [`Ports::ports`]. `M` tells ports apart in the types, for `agent_system!`'s
/// check that every port is wired.
pub struct OutPort<O, T, M = ()> {
    index: usize,
    name: &'static str,
    extract: fn(O) -> T,
    marker: PhantomData<fn() -> M>,
}

impl<O, T, M> OutPort<O, T, M> {
    /// A port: `#[derive(Ports)]` makes them. `extract` takes the value out of a variant of
    /// this port, and is only given those.
    #[doc(hidden)]
    pub const fn new(index: usize, name: &'static str, extract: fn(O) -> T) -> Self {
        OutPort { index, name, extract, marker: PhantomData }
    }

    /// The port's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The port's index, its variant's place in the enum.
    pub fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn extractor(&self) -> fn(O) -> T {
        self.extract
    }
}

impl<O, T, M> Clone for OutPort<O, T, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<O, T, M> Copy for OutPort<O, T, M> {}

impl<O, T, M> fmt::Debug for OutPort<O, T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutPort").field("name", &self.name).field("index", &self.index).finish()
    }
}
