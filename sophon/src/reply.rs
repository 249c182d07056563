//! Request and reply: what [`Handle::ask`](crate::Handle::ask) gives back, and the asker's end
//! that travels with the message to the agent.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::err::{ErrorKind, SendError};

/// What the agent tells an asker: an output, or how the handling ended badly. A handler that
/// returns `Ok` ends the reply by dropping the sender, which costs no message.
pub(crate) enum Event<O> {
    Output(O),
    /// Boxed, so that an event is little bigger than an output: the channel's blocks hold 31.
    End(Box<(ReplyErrorKind, Option<Arc<dyn StdError + Send + Sync>>)>),
}

/// The agent's end of an ask: while a handler answers one, everything it sends goes here.
pub(crate) struct Asker<O> {
    tx: Sender<Event<O>>,
    /// Cleared once the reply is ended on purpose; an asker dropped while still open tells the
    /// reply that its message was never handled.
    open: bool,
}

impl<O> Asker<O> {
    /// An asker and the reply that reads what it is sent.
    pub(crate) fn pair(entity: Arc<str>) -> (Asker<O>, Reply<O>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Asker { tx, open: true }, Reply { rx, entity, answered: false, ended: false })
    }

    /// Sends one output to the asker. One that no longer listens is not an error: it has what
    /// it wanted.
    #[inline]
    pub(crate) fn send(&self, out: O) {
        let _ = self.tx.send(Event::Output(out));
    }

    /// Ends the reply: the handler returned `Ok`.
    pub(crate) fn finish(mut self) {
        self.open = false;
    }

    /// Ends the reply with an error.
    pub(crate) fn fail(mut self, kind: ReplyErrorKind, source: Option<Arc<dyn StdError + Send + Sync>>) {
        self.open = false;
        let _ = self.tx.send(Event::End(Box::new((kind, source))));
    }

    /// Drops the asker of a message that was never sent: its reply was never made public.
    pub(crate) fn discard(mut self) {
        self.open = false;
    }
}

impl<O> Drop for Asker<O> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.tx.send(Event::End(Box::new((ReplyErrorKind::NotHandled(ErrorKind::Stopped), None))));
        }
    }
}

/// The answer to one [`ask`](crate::Handle::ask): every output the entity's handler sends while
/// it handles that message, in order, and then how the handling ended.
///
/// Read it with [`recv`](Reply::recv) (or its timed forms), or as an iterator of
/// `Result<O, ReplyError>`: each output, then an error if the handler answered nothing, returned
/// `Err` or panicked, or if the entity ended before it got to the message. The outputs go to the
/// asker only, never to the entity's siblings. Dropping a reply is fine: what the handler sends
/// after that is discarded.
///
/// # Examples
///
/// ```
/// use sophon::{Backend, BoxError, Context, SystemBuilder};
///
/// /// Counts down from the number it is asked, one output per step.
/// struct Countdown;
/// impl Backend for Countdown {
///     type Input = u32;
///     type Output = u32;
///     fn query(&mut self, from: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
///         for n in (0..=from).rev() {
///             ctx.send(n)?;
///         }
///         Ok(())
///     }
/// }
///
/// let mut builder = SystemBuilder::new();
/// let countdown = builder.entity("countdown", Countdown);
/// let system = builder.spawn()?;
/// let handle = system.handle(&countdown);
///
/// let steps: Vec<u32> = handle.ask(3)?.collect::<Result<_, _>>()?;
/// assert_eq!(steps, [3, 2, 1, 0]);
/// assert_eq!(handle.call(5)?, 5); // only the first output
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Reply<O> {
    rx: Receiver<Event<O>>,
    entity: Arc<str>,
    /// Whether any output has come.
    answered: bool,
    /// Whether the end (good or bad) has been given to the caller.
    ended: bool,
}

impl<O> fmt::Debug for Reply<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply").field("entity", &self.entity).field("ended", &self.ended).finish_non_exhaustive()
    }
}

impl<O> Reply<O> {
    /// The outputs already sent, without waiting: all of them once the handler has ended.
    #[cfg(feature = "bus")]
    pub(crate) fn take_outputs(&self) -> Vec<O> {
        self.rx
            .try_iter()
            .filter_map(|event| match event {
                Event::Output(out) => Some(out),
                Event::End(_) => None,
            })
            .collect()
    }

    /// The name of the entity that was asked.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// Waits for the next output: `Ok(Some(output))`, or `Ok(None)` once the handler has
    /// returned `Ok` having answered, or the error that ended the reply. After the end, every
    /// call gives `Ok(None)`.
    pub fn recv(&mut self) -> Result<Option<O>, ReplyError> {
        if self.ended {
            return Ok(None);
        }
        let event = self.rx.recv().ok();
        self.take(event)
    }

    /// [`recv`](Self::recv) that waits at most `timeout`; past it, an error of kind
    /// [`ReplyErrorKind::TimedOut`], after which the reply can still be read.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<O>, ReplyError> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.recv_deadline(deadline),
            None => self.recv(),
        }
    }

    /// [`recv`](Self::recv) that waits until `deadline` at most.
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<Option<O>, ReplyError> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.recv_deadline(deadline) {
            Ok(event) => self.take(Some(event)),
            Err(RecvTimeoutError::Disconnected) => self.take(None),
            Err(RecvTimeoutError::Timeout) => Err(self.error(ReplyErrorKind::TimedOut, None)),
        }
    }

    /// The first output, discarding any that follow.
    pub fn first(mut self) -> Result<O, ReplyError> {
        self.recv()?.ok_or_else(|| self.error(ReplyErrorKind::NoAnswer, None))
    }

    /// The first output, waiting at most `timeout` for it.
    pub fn first_timeout(mut self, timeout: Duration) -> Result<O, ReplyError> {
        self.recv_timeout(timeout)?.ok_or_else(|| self.error(ReplyErrorKind::NoAnswer, None))
    }

    /// `None` is a disconnected channel: the handler returned `Ok`.
    fn take(&mut self, event: Option<Event<O>>) -> Result<Option<O>, ReplyError> {
        match event {
            Some(Event::Output(out)) => {
                self.answered = true;
                Ok(Some(out))
            }
            Some(Event::End(end)) => {
                self.ended = true;
                let (kind, source) = *end;
                Err(self.error(kind, source))
            }
            None => {
                self.ended = true;
                if self.answered { Ok(None) } else { Err(self.error(ReplyErrorKind::NoAnswer, None)) }
            }
        }
    }

    fn error(&self, kind: ReplyErrorKind, source: Option<Arc<dyn StdError + Send + Sync>>) -> ReplyError {
        ReplyError { kind, entity: self.entity.clone(), source }
    }
}

impl<O> Iterator for Reply<O> {
    type Item = Result<O, ReplyError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.recv().transpose()
    }
}

/// How an ask ended without the answer that was wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyErrorKind {
    /// The handler returned `Ok` without sending anything.
    NoAnswer,
    /// The handler returned `Err`; the error is the [`source`](StdError::source).
    Failed,
    /// The handler panicked; the [`source`](StdError::source) is a
    /// [`PanicError`](crate::PanicError) with the panic's message.
    Panicked,
    /// The entity ended before it got to the message: it stopped, failed, or the shutdown
    /// deadline passed (see [`ErrorKind`]).
    NotHandled(ErrorKind),
    /// No output came within the time given.
    TimedOut,
}

/// Why a [`Reply`] did not give the answer that was wanted (see [`ReplyErrorKind`]). The
/// handler's own error or panic is its [`source`](StdError::source).
#[derive(Clone)]
pub struct ReplyError {
    kind: ReplyErrorKind,
    entity: Arc<str>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl ReplyError {
    /// How the ask ended.
    pub fn kind(&self) -> ReplyErrorKind {
        self.kind
    }

    /// The name of the entity that was asked.
    pub fn entity(&self) -> &str {
        &self.entity
    }
}

impl fmt::Debug for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyError")
            .field("kind", &self.kind)
            .field("entity", &self.entity)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entity = &self.entity;
        match self.kind {
            ReplyErrorKind::NoAnswer => return write!(f, "`{entity}` handled the ask without answering"),
            ReplyErrorKind::Failed => write!(f, "`{entity}` failed to answer")?,
            ReplyErrorKind::Panicked => write!(f, "`{entity}` panicked while answering")?,
            ReplyErrorKind::NotHandled(kind) => {
                return write!(f, "`{entity}` did not handle the ask: {}", kind.describe());
            }
            ReplyErrorKind::TimedOut => return write!(f, "no answer from `{entity}` in time"),
        }
        match &self.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl StdError for ReplyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

/// Why [`Handle::call`](crate::Handle::call) gave no answer: the entity refused the message
/// (and gives the body back), or the reply ended without an output.
pub enum AskError<I> {
    /// The message was not sent; the body is in the error.
    Refused(SendError<I>),
    /// The message was sent, and the reply gave no output.
    Reply(ReplyError),
}

impl<I> AskError<I> {
    /// The body, if the message was refused before it was sent.
    pub fn into_body(self) -> Option<I> {
        match self {
            AskError::Refused(e) => Some(e.into_body()),
            AskError::Reply(_) => None,
        }
    }
}

impl<I> From<SendError<I>> for AskError<I> {
    fn from(e: SendError<I>) -> Self {
        AskError::Refused(e)
    }
}

impl<I> From<ReplyError> for AskError<I> {
    fn from(e: ReplyError) -> Self {
        AskError::Reply(e)
    }
}

impl<I> fmt::Debug for AskError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AskError::Refused(e) => f.debug_tuple("Refused").field(e).finish(),
            AskError::Reply(e) => f.debug_tuple("Reply").field(e).finish(),
        }
    }
}

impl<I> fmt::Display for AskError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AskError::Refused(e) => e.fmt(f),
            AskError::Reply(e) => e.fmt(f),
        }
    }
}

impl<I> StdError for AskError<I> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            AskError::Refused(_) => None,
            AskError::Reply(e) => e.source(),
        }
    }
}
