//! Declare graphs of communicating agents and run them.
//!
//! An agent is any component that takes messages and answers them: a language model, a person at
//! a terminal, a database, a clock. sophon treats them all alike:
//!
//! - A [`Backend`] is what a component implements: a handler for each kind of message
//!   (`Query`, answered to the agent's siblings; `Read`, taken in with no answer; `Nop`, clean
//!   up and stop). Message bodies are your own types.
//! - An entity is one running instance of a backend, with a UUID. You hold it through typed,
//!   weak [`Handle`]s, and can swap its backend while the system runs.
//! - An agent is what runs an entity: its own thread (`sophon:<name>`), or turns of up to 64
//!   messages on a worker of a pool ([`Runtime`]). It waits on its crossbeam channels, runs the
//!   backend and sends to its siblings, its outgoing edges.
//! - A [`System`] is entities plus edges, built with [`SystemBuilder`] (or declared with the
//!   `agent_system!` macro, which expands to the builder, anonymous or as a named struct).
//! - Code outside the system sends through handles: [`Handle::query`] and [`Handle::read`]
//!   along the graph, or [`Handle::ask`] and [`Handle::call`] for an answer that comes back to
//!   the caller alone ([`Reply`]).
//! - A backend that sends different things to different siblings names its output [`Ports`]
//!   with an enum; edges attach to one port each.
//!
//! # Hello, world!
//!
//! ```
//! use std::time::Duration;
//! use sophon::{Backend, BoxError, Context, SystemBuilder};
//!
//! /// Greets whoever it is asked about.
//! struct Greeter;
//!
//! impl Backend for Greeter {
//!     type Input = String;
//!     type Output = String;
//!
//!     fn query(&mut self, name: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
//!         ctx.send(format!("Hello, {name}!"))?;
//!         Ok(())
//!     }
//! }
//!
//! let mut builder = SystemBuilder::new();
//! let greeter = builder.entity("greeter", Greeter);
//! let greetings = builder.output(&greeter, "out");
//! let system = builder.spawn()?;
//!
//! system.handle(&greeter).query("world".to_string())?;
//! assert_eq!(greetings.recv()?, "Hello, world!");
//!
//! let report = system.shutdown(Duration::from_secs(5));
//! assert_eq!(report.entity("greeter").unwrap().stats.handled, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Standard backends
//!
//! [`backends`] holds ready-made components, each behind a cargo feature so that the core stays
//! light: a person at a terminal (`person`), language models run locally (`llm-local`) or over
//! HTTP (`llm-http`), a SQLite store (`sqlite`), a clock (`clock`), a search index (`search`)
//! and chess engines with a referee (`chess`).
//!
//! # Failures are contained
//!
//! A handler's `Err` is counted and reported (see [`System::failures`] and [`Report`]) and the
//! agent goes on; the [`Failure`] keeps the error itself, to downcast. A panic in any handler,
//! or in a backend's `Drop`, is caught at the agent and counted once: that entity is marked
//! failed, what was queued for it is counted as undelivered, and the rest of the system keeps
//! running. An entity added with [`SystemBuilder::supervised`] (or `#[restart(..)]` in
//! `agent_system!`) is rebuilt by its factory instead, keeping its id, its handles and its
//! queue, as its [`Restart`] policy allows. Sending to a stopped or failed entity returns an
//! error that gives the body back.
//!
//! # Shutting down
//!
//! [`System::shutdown`] waits until nothing is queued or being handled anywhere, then stops the
//! entities in graph order (each after everything feeding it has ended, so what a `nop` sends
//! is delivered) and joins their threads. It returns within its deadline plus
//! [`SHUTDOWN_GRACE`], whatever the backends do: past the deadline what is still queued is
//! reported as undelivered, never silently dropped, and an agent that will not end is named in
//! the report and left behind. Dropping a `System` does the same.
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

#[allow(unused_extern_crates, reason = "lets `::sophon::` paths of macro expansions resolve inside this crate")]
extern crate self as sophon;

// The runtime's modules, each importing only from those before it: errors and handler kinds
// (`err`, `message`); the state a system's agents share (`shared`) and the asker's end of a
// reply (`reply`); the entity, its handles and queues, what a handler sees (`context`), the
// trait the handlers implement (`backend`) and restart policies (`restart`), which refer to each
// other as types only; the agent loop (`agent`); the builder (`builder`); and the running
// system (`system`, which also holds `SystemBuilder::spawn`).
mod agent;
mod backend;
pub mod backends;
mod builder;
#[cfg(feature = "bus")]
pub mod bus;
mod context;
mod entity;
mod err;
mod latency;
mod message;
mod pool;
mod ports;
mod replicas;
mod reply;
mod restart;
mod shared;
mod system;
mod window;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use crate::backend::{Backend, BoxBackend, IntoBackend};
pub use crate::builder::{EntityOptions, Node, SystemBuilder};
pub use crate::context::{Context, EdgeKind, Sibling, TimerId};
pub use crate::entity::{EntityState, Handle, Stats};
pub use crate::err::{BoxError, BuildError, BuildProblem, Error, ErrorKind, SendError};
pub use crate::latency::Latency;
pub use crate::message::HandlerKind;
pub use crate::pool::Runtime;
pub use crate::ports::{OutPort, Ports};
pub use crate::replicas::{HANDLES, RankedReplica, Ranking};
pub use crate::reply::{AskError, Reply, ReplyError, ReplyErrorKind};
pub use crate::restart::{FactoryOutput, Restart};
pub use crate::shared::{Failure, PanicError};
pub use crate::system::{
    DEFAULT_SHUTDOWN_DEADLINE, EdgeReport, EntityReport, EntitySnapshot, Report, SHUTDOWN_GRACE, Snapshot, System,
};
#[doc(inline)]
pub use sophon_macros::{Ports, agent_system, backend};

/// Re-exported so that users need not depend on it to read outputs or take `Uuid`s.
pub use crossbeam_channel;
pub use uuid::Uuid;

/// The README's examples, run as doctests so that they cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
