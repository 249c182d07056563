//! The kinds of work a handler does, named in failures.

use std::fmt;

/// Which handler of a backend was running: used when reporting an error or a panic.
///
/// Besides the five handlers, a failure can come from dropping a backend (`Drop`) or from
/// restarting an entity (`Restart`: its factory failed, or the restart policy gave up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum HandlerKind {
    /// [`Backend::query`](crate::Backend::query).
    Query,
    /// [`Backend::read`](crate::Backend::read).
    Read,
    /// [`Backend::nop`](crate::Backend::nop).
    Nop,
    /// [`Backend::start`](crate::Backend::start).
    Start,
    /// [`Backend::timer`](crate::Backend::timer).
    Timer,
    /// [`Backend::idle`](crate::Backend::idle).
    Idle,
    /// The backend's `Drop`: when its entity ends, restarts, or is given up on.
    Drop,
    /// A restart: the entity's factory failed or panicked, or the restart policy's limit was
    /// reached.
    Restart,
}

impl fmt::Display for HandlerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandlerKind::Query => "query",
            HandlerKind::Read => "read",
            HandlerKind::Nop => "nop",
            HandlerKind::Start => "start",
            HandlerKind::Timer => "timer",
            HandlerKind::Idle => "idle",
            HandlerKind::Drop => "drop",
            HandlerKind::Restart => "restart",
        })
    }
}
