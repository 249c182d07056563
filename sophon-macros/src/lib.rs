//! Procedural macros for [sophon](https://docs.rs/sophon).
//!
//! Users depend on `sophon`, which re-exports these macros; this crate is not meant to be used on
//! its own. The macros expand to calls of sophon's public builder API and name the runtime by
//! absolute paths (`::sophon::...`).
//!
//! Each macro runs in stages: `parse` (syntax only; stops at the first error), a model and its
//! checks (every problem reported, each at its own tokens), then `expand` (code generation,
//! for a model known to be valid).

#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod backend;
mod errors;
#[cfg(test)]
mod fuzz;
mod ports;
mod system;

use proc_macro::TokenStream;

/// Derives `sophon::Backend` for a type from the handlers in its impl block.
///
/// Put it on the type's inherent impl block. The handlers are ordinary methods, found by name;
/// the block's other methods stay as they are. State lives in the type's fields.
///
/// | handler | signature | |
/// | --- | --- | --- |
/// | `query` | `fn query(&mut self, input: In) -> R` | required; its parameter is the backend's input type |
/// | | `fn query(&mut self, input: In, ctx: &mut Context<Out>) -> ()` or `-> Result<(), E>` | sends through the context itself (several answers, or none) |
/// | `read` | `fn read(&mut self, input: In)`, optionally `ctx` | optional; returns `()` or `Result<(), E>`; takes the same input as `query` |
/// | `nop` | `fn nop(&mut self)`, optionally `ctx` | optional cleanup; returns `()` or `Result<(), E>` |
/// | `start` | `fn start(&mut self)`, optionally `ctx` | optional; runs once when the system starts, so a backend can act on its own (send, set timers); returns `()` or `Result<(), E>` |
/// | `timer` | `fn timer(&mut self, timer: TimerId)`, optionally `ctx` | optional; runs when a timer set with `ctx.every` or `ctx.after` fires; returns `()` or `Result<(), E>` |
/// | `idle` | `fn idle(&mut self)`, optionally `ctx` | optional; runs once the agent has handled every queued message, when a handler asked with `ctx.when_idle()`: where a backend sends what it gathered; returns `()` or `Result<(), E>` |
///
/// What `query` returns is sent to every sibling (so it must be `Clone`), read from the return
/// type as written:
///
/// | returns | output type | what is sent |
/// | --- | --- | --- |
/// | `T` | `T` | the value |
/// | `Option<T>` | `T` | the value, if there is one |
/// | `Result<T, E>` | `T` | the value; an `Err` is reported by the runtime |
/// | `Result<Option<T>, E>` | `T` | the value if there is one; an `Err` is reported |
/// | `()` or `Result<(), E>` | `()` | `()`, a signal that the query was handled |
///
/// To send different things to different siblings, make the output an enum deriving
/// `sophon::Ports` and return the variant of the port to send through: each edge attached to a
/// port (`ping.done -> output(done)` in `agent_system!`) gets that port's values only, checked
/// at compile time.
///
/// `E` is any error that converts into `sophon::BoxError` (any `std::error::Error + Send +
/// Sync`, `String`, `&str`). Handlers must take `&mut self`, and may not be generic or `async`;
/// the impl block itself may be generic. The attribute takes no arguments. Each misuse is a
/// compile error on the offending tokens that says what to write instead.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use sophon::{backend, SystemBuilder};
///
/// /// Keeps a running total.
/// #[derive(Default)]
/// struct Total {
///     sum: i64,
/// }
///
/// #[backend]
/// impl Total {
///     /// A query adds and answers the new total.
///     fn query(&mut self, n: i64) -> i64 {
///         self.sum += n;
///         self.sum
///     }
///
///     /// A read adds and answers nothing.
///     fn read(&mut self, n: i64) {
///         self.sum += n;
///     }
/// }
///
/// let mut builder = SystemBuilder::new();
/// let total = builder.entity("total", Total::default());
/// let out = builder.output(&total, "out");
/// let system = builder.spawn()?;
/// system.handle(&total).read(5)?;
/// system.handle(&total).query(2)?;
/// assert_eq!(out.recv()?, 7);
/// assert!(system.shutdown(Duration::from_secs(5)).is_clean());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Taking the context routes by sibling name:
///
/// ```
/// use sophon::{backend, Context, Error};
///
/// struct Router;
///
/// #[backend]
/// impl Router {
///     fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), Error> {
///         ctx.send_to(if n % 2 == 0 { "even" } else { "odd" }, n)
///     }
/// }
/// # let _ = Router;
/// ```
///
/// `#[backend(blocking)]` says that the backend blocks its thread (it reads a terminal, waits
/// on a process, computes for seconds), so that a system run by a pool gives it a thread of its
/// own (`Backend::blocking`):
///
/// ```
/// use sophon::{backend, Backend};
///
/// struct Slow;
///
/// #[backend(blocking)]
/// impl Slow {
///     fn query(&mut self, ms: u64) {
///         std::thread::sleep(std::time::Duration::from_millis(ms));
///     }
/// }
/// assert!(Slow.blocking());
/// ```
#[proc_macro_attribute]
pub fn backend(args: TokenStream, item: TokenStream) -> TokenStream {
    backend::expand(args.into(), item.into()).into()
}

/// Declares a graph of agents, checks it at compile time and spawns it.
///
/// It expands to calls of `sophon::SystemBuilder`, the same ones a person would write, and
/// evaluates to `Result<AgentSystem, sophon::BuildError>` (an error only when the operating
/// system refuses a thread). `AgentSystem` has a typed `sophon::Handle` for each entity and a
/// `crossbeam_channel::Receiver` for each output, as fields named as declared, plus
/// `shutdown(deadline)`, `join()` and `into_system()`; it derefs to `sophon::System`.
///
/// That struct is local to the expansion. To return a system from a function or keep it in a
/// field, name it: a first line `pub struct Chat;` (any visibility) makes the macro declare the
/// struct `Chat` where it is invoked, with the same fields, and `Chat::spawn()` build and start
/// it. What the entities' expressions need from outside comes in as the parameters of
/// `spawn`, declared on that line: `pub struct Chat(model: LocalLlm, prompt: String);`. Each
/// entity of a named system gives its backend's type (`model: LocalLlm = model;`), which types
/// its handle field; `///` lines on entity and output lines document the fields.
///
/// # Grammar
///
/// Statements end with `;`.
///
/// ```text
/// #![pool]                         first, if at all: run on a pool, a worker per core
/// #![pool(4)]                      the same with 4 workers (any expression); `#![threads]`: a
///                                  thread per entity (without either: `Runtime::from_env`)
/// #![bus(bus)]                     with sophon's `bus` feature: the `sophon::bus::Bus` (any
///                                  expression; a parameter of `spawn`, say) it imports and
///                                  exports entities over
/// pub struct Name;                 next, if at all: a named system (see above)
/// pub struct Name(a: A, b: B);     the same, whose `Name::spawn(a, b)` takes what entities need
/// name = expr;                     an entity running the backend `expr`; its type is inferred
/// name: Type = expr;               the same, with the backend's type written out
/// name[n] = |i| expr;              a group of `n` entities (any `usize` expression), named
///                                  `name[0]`, `name[1]`, ..., member `i` running `expr`; its
///                                  field is a `Vec` of handles, and options apply to each
/// #[bounded(16)] name = expr;      an entity option: queues of at most 16 messages each
/// #[thread] name = expr;           a thread of its own in a pool, for a backend that blocks
/// #[restart(max = 5, within = 10s)]
/// name = || expr;                  restarted when its backend panics: `|| expr` is the factory
///                                  that builds it, first and after each panic (at most 5
///                                  restarts within any 10 s; units `ms`, `s`, `m`, `h`)
/// #[export] name = expr;           the entity goes on the bus, for other processes to import
///                                  (its input and output must be serde types)
/// remote name: In => Out;          an entity another process exports, imported over the bus:
///                                  edges to and from it, and its handle, work as for a local
///                                  one; its answers come back to this process
/// a -> b;                          a query edge: `b` gets `a`'s output as a query, and answers
/// a ~> b;                          a read edge: `b` gets `a`'s output as a read, answers nothing
/// a -> [b, c, d];                  fan-out: one edge to each target (also with `~>`)
/// loop a -> b;                     a query edge that closes an intended loop (a conversation)
/// a -> output(answers);            everything `a` sends, on a channel field `answers`
/// a -> group; group -> b;          an edge to a group reaches every member; one from it
///                                  leaves every member (group to group: every pair)
/// /// Text.                        a doc comment, on any line: documents the entity's field
/// #[cfg(feature = "x")]            on any line: an entity, and its edges, exist when it holds
/// ```
///
/// An edge `a -> b` needs `b`'s input to implement `From<a's output>`. Several entities may feed
/// one output. The checks below see a group as one entity: `loop` marks an edge from a group to
/// itself, since each member then sends to itself. An edge exists when its own `#[cfg]`s and those of both its entities hold; the
/// compile-time checks below look at the graph with every `#[cfg]` holding.
///
/// # Checked at compile time
///
/// Each is an error on the offending tokens, and one build reports them all: an edge to an
/// unknown entity (with the closest name as a hint), an entity declared twice, an edge declared
/// twice, an edge from an entity to itself unless declared `loop`, a cycle of query edges not
/// declared `loop` (each edge of it is marked, naming the whole cycle), `loop` on a read edge, a
/// loop of edges whose entities are all `#[bounded]` (which could deadlock), an unknown entity
/// option or a malformed option value, an output named like an entity, an edge whose types do
/// not fit (reported by rustc, at the edge's target), a `#[restart]` entity given a backend
/// rather than a factory and a group given a backend rather than a closure from the member's
/// index (both reported by rustc, at the expression).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use sophon::{agent_system, backend};
///
/// struct Greeter;
///
/// #[backend]
/// impl Greeter {
///     fn query(&mut self, name: String) -> String {
///         format!("hello, {name}")
///     }
/// }
///
/// struct Shouter;
///
/// #[backend]
/// impl Shouter {
///     fn query(&mut self, text: String) -> String {
///         text.to_uppercase()
///     }
/// }
///
/// /// Counts what it reads; a query answers the count.
/// #[derive(Default)]
/// struct Log(usize);
///
/// #[backend]
/// impl Log {
///     fn query(&mut self, _: String) -> usize {
///         self.0
///     }
///
///     fn read(&mut self, _: String) {
///         self.0 += 1;
///     }
/// }
///
/// let system = agent_system! {
///     greeter = Greeter;
///     shouter = Shouter;
///     #[bounded(64)]
///     log: Log = Log::default();
///     greeter -> shouter;
///     greeter ~> log;
///     shouter -> output(answers);
///     log -> output(counts);
/// }?;
///
/// system.greeter.query("world".to_string())?;
/// assert_eq!(system.answers.recv()?, "HELLO, WORLD");
/// system.log.query(String::new())?;
/// assert_eq!(system.counts.recv()?, 1);
///
/// let report = system.shutdown(Duration::from_secs(5));
/// assert!(report.is_clean());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A named system, returned from a function:
///
/// ```
/// use std::time::Duration;
/// use sophon::{agent_system, backend};
///
/// pub struct Scale(pub f64);
///
/// #[backend]
/// impl Scale {
///     fn query(&mut self, x: f64) -> f64 {
///         x * self.0
///     }
/// }
///
/// agent_system! {
///     /// Converts miles to kilometres.
///     pub struct Converter(factor: f64);
///     /// Scales what it is asked.
///     scale: Scale = Scale(factor);
///     scale -> output(scaled);
/// }
///
/// fn converter() -> Result<Converter, sophon::BuildError> {
///     Converter::spawn(1.609_344)
/// }
///
/// let converter = converter()?;
/// assert_eq!(converter.scale.call(10.0)?, 16.09344);
/// converter.scale.query(1.0)?;
/// assert_eq!(converter.scaled.recv()?, 1.609344);
/// assert!(converter.shutdown(Duration::from_secs(5)).is_clean());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A group sized at run time, fed by one edge:
///
/// ```
/// use std::time::Duration;
/// use sophon::{agent_system, backend};
///
/// struct Shard(usize);
///
/// #[backend]
/// impl Shard {
///     fn query(&mut self, key: u64) -> Option<usize> {
///         (key as usize % 4 == self.0).then_some(self.0)
///     }
/// }
///
/// let shards = 4;
/// let system = agent_system! {
///     #![pool(2)]
///     shard[shards] = |i| Shard(i);
///     shard -> output(owners);
/// }?;
/// assert_eq!(system.shard.len(), 4);
/// assert_eq!(system.shard[1].name(), "shard[1]");
/// for handle in &system.shard {
///     handle.query(6)?;
/// }
/// // Only the owner of key 6 answers (`None` sends nothing).
/// let owners = system.owners.clone();
/// assert!(system.shutdown(Duration::from_secs(5)).is_clean());
/// assert_eq!(owners.try_iter().collect::<Vec<_>>(), [2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A loop is declared where it closes, and runs until a backend asks the system to stop:
///
/// ```
/// use sophon::{agent_system, backend, Context, Error};
///
/// struct Person;
///
/// #[backend]
/// impl Person {
///     fn query(&mut self, turn: u32, ctx: &mut Context<u32>) -> Result<(), Error> {
///         if turn == 3 {
///             ctx.stop_system(); // as a person typing `/quit` would
///             return Ok(());
///         }
///         ctx.send(turn + 1)
///     }
/// }
///
/// struct Model;
///
/// #[backend]
/// impl Model {
///     fn query(&mut self, turn: u32) -> u32 {
///         turn
///     }
/// }
///
/// let system = agent_system! {
///     person = Person;
///     model = Model;
///     person -> model;
///     loop model -> person;
/// }?;
/// system.person.query(0)?;
/// let report = system.join();
/// assert_eq!(report.entity("model").unwrap().stats.handled, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[proc_macro]
pub fn agent_system(input: TokenStream) -> TokenStream {
    system::expand(input.into()).into()
}

/// Derives `sophon::Ports` for an enum whose variants are a backend's output ports.
///
/// Each variant is a port named after it in snake case, carrying the variant's one value
/// (`Done(u64)` is the port `done`, carrying a `u64`; a unit variant carries `()`). The derive
/// also makes a struct `<Enum>Ports` with an `OutPort` field per port, returned by
/// `Enum::ports()`. See the `Ports` trait in sophon for the whole story and an example.
#[proc_macro_derive(Ports)]
pub fn derive_ports(input: TokenStream) -> TokenStream {
    ports::expand(input.into()).into()
}
