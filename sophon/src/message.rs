//! The three kinds of message an agent handles, and the kinds of work a handler does.

use std::fmt;

/// A message sent to an agent.
///
/// The body is the user's own type; the kind is sophon's. A `Query` must be answered (the backend
/// sends its output on to its siblings), a `Read` is taken in with no answer, and `Nop` tells the
/// agent that there is no more work: its backend cleans up and its thread ends.
///
/// # Examples
///
/// ```
/// use sophon::Message;
///
/// let m = Message::Query("hello");
/// assert_eq!(m.kind(), sophon::HandlerKind::Query);
/// assert_eq!(m.into_body(), Some("hello"));
/// assert_eq!(Message::<&str>::Nop.into_body(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message<T> {
    /// An input that must be answered: the backend sends its output to its siblings.
    Query(T),
    /// An input that is taken in with no answer.
    Read(T),
    /// No more work: the backend cleans up and the agent's thread ends.
    Nop,
}

impl<T> Message<T> {
    /// The body of a `Query` or `Read`; `None` for `Nop`.
    pub fn into_body(self) -> Option<T> {
        match self {
            Message::Query(body) | Message::Read(body) => Some(body),
            Message::Nop => None,
        }
    }

    /// The handler this message runs, as a [`HandlerKind`].
    pub fn kind(&self) -> HandlerKind {
        match self {
            Message::Query(_) => HandlerKind::Query,
            Message::Read(_) => HandlerKind::Read,
            Message::Nop => HandlerKind::Nop,
        }
    }
}

/// Which handler of a backend was running: used when reporting an error or a panic.
///
/// Besides the five handlers, a failure can come from dropping a backend (`Drop`) or from
/// restarting an entity (`Restart`: its factory failed, or the restart policy gave up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
            HandlerKind::Drop => "drop",
            HandlerKind::Restart => "restart",
        })
    }
}
