//! Error types. They are small, their `Display` text is lowercase, and their `Debug` never
//! requires the message body to be `Debug`.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// The error type backend handlers return: any error that can cross threads.
///
/// Handlers return `Result<(), BoxError>`, so `?` works on any error type.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why an entity refused a message or an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The system the entity belonged to has shut down (every agent has ended) or been dropped.
    SystemGone,
    /// The entity has stopped: it handled a `Nop`, or its system is shutting down.
    Stopped,
    /// The entity's backend panicked; the entity takes no more messages.
    Failed,
    /// The entity has no sibling of that name.
    UnknownSibling,
    /// A handler tried to wait on its own entity: to send into its own full bounded queue, or
    /// to swap its own backend. The agent would wait for itself forever, so it is refused.
    WouldDeadlock,
    /// The system's shutdown deadline passed while the send waited for room in a full bounded
    /// queue or output.
    DeadlinePassed,
    /// The entity is served by replicas, and the operation is one replica's: swap the backend
    /// of one of them (see [`Handle::replicas`](crate::Handle::replicas)).
    Replicated,
}

impl ErrorKind {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            ErrorKind::SystemGone => "its system is gone",
            ErrorKind::Stopped => "it has stopped",
            ErrorKind::Failed => "it has failed",
            ErrorKind::UnknownSibling => "there is no sibling of that name",
            ErrorKind::WouldDeadlock => "it is the entity running this handler, which would wait on itself forever",
            ErrorKind::DeadlinePassed => "the shutdown deadline passed while waiting for room in its queue",
            ErrorKind::Replicated => "it is served by replicas: swap the backend of one of them (`Handle::replicas`)",
        }
    }
}

/// An operation on an entity that could not be done (see [`ErrorKind`]).
///
/// # Examples
///
/// ```
/// use sophon::{ErrorKind, SystemBuilder};
/// # use sophon::{Backend, BoxError, Context};
/// # struct Echo;
/// # impl Backend for Echo {
/// #     type Input = u32;
/// #     type Output = u32;
/// #     fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
/// #         Ok(ctx.send(n)?)
/// #     }
/// # }
///
/// let mut builder = SystemBuilder::new();
/// let echo = builder.entity("echo", Echo);
/// let system = builder.spawn()?;
/// let handle = system.handle(&echo);
/// drop(system);
/// let err = handle.stats().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::SystemGone);
/// assert_eq!(err.to_string(), "cannot reach `echo`: its system is gone");
/// # Ok::<(), sophon::BuildError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    entity: Arc<str>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, entity: Arc<str>) -> Self {
        Error { kind, entity }
    }

    /// Why the operation failed.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The name of the entity the operation was for.
    pub fn entity(&self) -> &str {
        &self.entity
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot reach `{}`: {}", self.entity, self.kind.describe())
    }
}

impl StdError for Error {}

/// A message that could not be sent. It gives the body back.
///
/// # Examples
///
/// ```
/// use sophon::{ErrorKind, SystemBuilder};
/// # use sophon::{Backend, BoxError, Context};
/// # struct Echo;
/// # impl Backend for Echo {
/// #     type Input = String;
/// #     type Output = String;
/// #     fn query(&mut self, s: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
/// #         Ok(ctx.send(s)?)
/// #     }
/// # }
///
/// let mut builder = SystemBuilder::new();
/// let echo = builder.entity("echo", Echo);
/// let system = builder.spawn()?;
/// let handle = system.handle(&echo);
/// handle.stop()?;
/// system.shutdown(std::time::Duration::from_secs(5));
/// let err = handle.query("lost?".to_string()).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::SystemGone);
/// assert_eq!(err.into_body(), "lost?"); // nothing is silently dropped
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SendError<T> {
    kind: ErrorKind,
    target: Arc<str>,
    body: T,
}

impl<T> SendError<T> {
    pub(crate) fn new(kind: ErrorKind, target: Arc<str>, body: T) -> Self {
        SendError { kind, target, body }
    }

    /// Why the message was refused.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The name of the entity (or sibling) the message was for.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The body that was not sent.
    pub fn into_body(self) -> T {
        self.body
    }

    /// Drops the body, keeping the reason.
    pub fn without_body(self) -> Error {
        Error::new(self.kind, self.target)
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError").field("kind", &self.kind).field("target", &self.target).finish_non_exhaustive()
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot send to `{}`: {}", self.target, self.kind.describe())
    }
}

impl<T> StdError for SendError<T> {}

/// Why a system could not be built. It lists every problem found, not only the first.
#[derive(Debug)]
pub struct BuildError {
    problems: Vec<BuildProblem>,
}

impl BuildError {
    pub(crate) fn new(problems: Vec<BuildProblem>) -> Self {
        BuildError { problems }
    }

    /// Every problem found, in the order the builder met them.
    pub fn problems(&self) -> &[BuildProblem] {
        &self.problems
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl StdError for BuildError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.problems.iter().find_map(|p| match p {
            BuildProblem::Spawn(e) => Some(e as &(dyn StdError + 'static)),
            BuildProblem::Factory { error, .. } => Some(&**error as &(dyn StdError + 'static)),
            _ => None,
        })
    }
}

/// One problem found while building a system.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildProblem {
    /// Two entities have the same name.
    DuplicateName {
        /// The name given twice.
        name: String,
    },
    /// The same edge was added twice.
    DuplicateEdge {
        /// Where the edge starts.
        from: String,
        /// Where the edge ends.
        to: String,
    },
    /// A node from another builder was used.
    ForeignNode,
    /// Query edges form a cycle that was not declared as an intended loop.
    QueryCycle {
        /// The entities on the cycle, in order; the edge from the last goes back to the first.
        cycle: Vec<String>,
    },
    /// An entity was given a queue capacity of 0; a bounded queue holds at least one message.
    ZeroCapacity {
        /// The entity.
        name: String,
    },
    /// Edges form a loop whose entities all have bounded queues: each could wait for room in
    /// the next one's full queue forever.
    BoundedLoop {
        /// The entities on the loop, in order; the edge from the last goes back to the first.
        cycle: Vec<String>,
    },
    /// An entity was given a restart policy but no factory to rebuild its backend with.
    RestartWithoutFactory {
        /// The entity.
        name: String,
    },
    /// An entity's factory could not build its first backend.
    Factory {
        /// The entity.
        name: String,
        /// What the factory returned.
        error: BoxError,
    },
    /// The operating system refused to start an agent's thread.
    Spawn(std::io::Error),
    /// An edge was added to or from an entity removed from the running system
    /// ([`System::remove`](crate::System::remove)).
    Removed {
        /// The entity.
        name: String,
    },
    /// An extension of a running system ([`System::extend`](crate::System::extend)) chose a
    /// runtime: a running system keeps its own.
    RuntimeOfRunningSystem,
    /// A replicated entity was given no replica
    /// ([`SystemBuilder::replicas`](crate::SystemBuilder::replicas)).
    NoReplicas {
        /// The entity.
        name: String,
    },
    /// A replica was added to an entity that is not replicated
    /// ([`SystemBuilder::add_replica`](crate::SystemBuilder::add_replica)).
    NotReplicated {
        /// The entity.
        name: String,
    },
    /// An entity could not be imported from or exported to the bus (feature `bus`): its broker
    /// could not be reached, or refused.
    Bus {
        /// The entity.
        name: String,
        /// What the broker said.
        error: String,
    },
}

/// `a -> b -> a`, for a cycle given as `[a, b]`.
fn cycle_path(cycle: &[String]) -> String {
    let mut path = cycle.join(" -> ");
    if let Some(first) = cycle.first() {
        path.push_str(" -> ");
        path.push_str(first);
    }
    path
}

impl fmt::Display for BuildProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildProblem::DuplicateName { name } => {
                write!(f, "entity `{name}` is defined more than once; give each entity its own name")
            }
            BuildProblem::DuplicateEdge { from, to } => {
                write!(f, "edge `{from} -> {to}` is added more than once; remove the repeated edge")
            }
            BuildProblem::ForeignNode => {
                f.write_str("a node from another builder was used; use the nodes this builder returned")
            }
            BuildProblem::QueryCycle { cycle } => write!(
                f,
                "query edges `{}` form a cycle; make one of them a read edge, \
                 or declare it with `loop_edge` if the loop is intended",
                cycle_path(cycle)
            ),
            BuildProblem::ZeroCapacity { name } => {
                write!(f, "entity `{name}` has a bounded queue of capacity 0; give it a capacity of at least 1")
            }
            BuildProblem::BoundedLoop { cycle } => write!(
                f,
                "edges `{}` form a loop whose queues are all bounded, which can deadlock; \
                 leave one of its entities unbounded",
                cycle_path(cycle)
            ),
            BuildProblem::RestartWithoutFactory { name } => write!(
                f,
                "entity `{name}` has a restart policy but no factory to rebuild its backend; \
                 add it with `SystemBuilder::supervised`"
            ),
            BuildProblem::Factory { name, error } => {
                write!(f, "entity `{name}`'s factory could not build its backend: {error}")
            }
            BuildProblem::Spawn(e) => write!(f, "cannot start an agent thread: {e}"),
            BuildProblem::Removed { name } => write!(
                f,
                "entity `{name}` was removed from the system; add edges to entities that are in it"
            ),
            BuildProblem::RuntimeOfRunningSystem => f.write_str(
                "a running system keeps its runtime; choose `runtime` or `pool` when building it, not when extending it"
            ),
            BuildProblem::NoReplicas { name } => {
                write!(f, "replicated entity `{name}` has no replica; give it at least one backend")
            }
            BuildProblem::Bus { name, error } => write!(f, "entity `{name}` could not be put on the bus: {error}"),
            BuildProblem::NotReplicated { name } => write!(
                f,
                "entity `{name}` is not replicated, so it takes no replica; declare it with `SystemBuilder::replicas`"
            ),
        }
    }
}
