//! State shared by every agent of one system and its owner, and the failures they report.
//!
//! A leaf of the runtime: it imports only errors and message kinds, so that entities, agents,
//! the builder and the system can all use it without importing each other back.

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use uuid::Uuid;

use crate::message::HandlerKind;

/// How many failures are kept for `System::failures` and the report before later ones are only
/// counted.
const FAILURES_KEPT: usize = 1024;

/// Handles' sends are taken.
pub(crate) const OPEN: u8 = 0;
/// The shutdown is stopping the agents: handles' sends are refused as `Stopped`.
pub(crate) const CLOSING: u8 = 1;
/// Every agent has ended: handles' sends are refused as `SystemGone`.
pub(crate) const CLOSED: u8 = 2;

/// State shared by every agent of one system and its owner.
pub(crate) struct Shared {
    pub(crate) clock: quanta::Clock,
    /// Queries and reads sent from outside the system (by handles).
    pub(crate) external: AtomicU64,
    /// Set when shutdown begins: timers and start hooks no longer run.
    pub(crate) stopping: AtomicBool,
    /// Set once the shutdown deadline has passed: a send waiting for room in a full bounded
    /// queue or output gives up, so that no agent waits past the deadline on another.
    pub(crate) expired: AtomicBool,
    /// Whether sends from outside (handles) are taken: [`OPEN`], then [`CLOSING`] once the
    /// shutdown stops the agents, then [`CLOSED`] once every agent has ended (or been given up
    /// on).
    pub(crate) intake: AtomicU8,
    signal: Mutex<Signal>,
    changed: Condvar,
    failures_tx: Sender<Failure>,
    pub(crate) failures_rx: Receiver<Failure>,
    pub(crate) failures_dropped: AtomicU64,
    /// What each entity of the system that crossed the bus counts (see `Report::bus`), as its
    /// agent registers it when it starts.
    #[cfg(feature = "bus")]
    pub(crate) buses: Mutex<Vec<Arc<crate::bus::BusCounts>>>,
}

/// What the system's owner waits on: a stop request, and agents ending.
pub(crate) struct Signal {
    pub(crate) stop_requested: bool,
    pub(crate) live_agents: usize,
    /// Waiters that want to hear of every agent that ends, not only of the last: without them,
    /// a million agents ending wake nobody until the last one.
    watching_each: usize,
    /// A waiter that wants to hear when the live agents are down to this many (see
    /// [`Shared::wait_for_live`]).
    wake_at: Option<usize>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        let (failures_tx, failures_rx) = crossbeam_channel::bounded(FAILURES_KEPT);
        Shared {
            clock: quanta::Clock::new(),
            external: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            intake: AtomicU8::new(OPEN),
            signal: Mutex::new(Signal { stop_requested: false, live_agents: 0, watching_each: 0, wake_at: None }),
            changed: Condvar::new(),
            failures_tx,
            failures_rx,
            failures_dropped: AtomicU64::new(0),
            #[cfg(feature = "bus")]
            buses: Mutex::new(Vec::new()),
        }
    }

    /// Whether the shutdown deadline has passed.
    pub(crate) fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    pub(crate) fn signal(&self) -> MutexGuard<'_, Signal> {
        self.signal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while `busy` holds, at most `timeout`; returns whether `busy` stopped holding. It
    /// is woken by a stop request and by the last agent ending; with `each_end`, by every agent
    /// ending.
    pub(crate) fn wait_while(
        &self,
        timeout: Option<Duration>,
        each_end: bool,
        mut busy: impl FnMut(&mut Signal) -> bool,
    ) -> bool {
        let mut guard = self.signal();
        if each_end {
            guard.watching_each += 1;
        }
        let (mut guard, done) = self.wait_on(guard, timeout, &mut busy);
        if each_end {
            guard.watching_each -= 1;
        }
        done
    }

    /// Waits until at most `target` agents are live, at most `timeout`; returns whether that
    /// happened. Only the agent that brings the count down to `target` wakes the waiter.
    pub(crate) fn wait_for_live(&self, timeout: Duration, target: usize) -> bool {
        let mut guard = self.signal();
        guard.wake_at = Some(target);
        let (mut guard, done) = self.wait_on(guard, Some(timeout), |s| s.live_agents > target);
        guard.wake_at = None;
        done
    }

    fn wait_on<'a>(
        &self,
        guard: MutexGuard<'a, Signal>,
        timeout: Option<Duration>,
        mut busy: impl FnMut(&mut Signal) -> bool,
    ) -> (MutexGuard<'a, Signal>, bool) {
        match timeout {
            None => (self.changed.wait_while(guard, busy).unwrap_or_else(|e| e.into_inner()), true),
            Some(t) => {
                let (mut guard, _) =
                    self.changed.wait_timeout_while(guard, t, &mut busy).unwrap_or_else(|e| e.into_inner());
                let done = !busy(&mut guard);
                (guard, done)
            }
        }
    }

    pub(crate) fn request_stop(&self) {
        self.signal().stop_requested = true;
        self.changed.notify_all();
    }

    pub(crate) fn agents_started(&self, n: usize) {
        self.signal().live_agents += n;
    }

    pub(crate) fn agent_ended(&self) {
        let notify = {
            let mut signal = self.signal();
            signal.live_agents -= 1;
            signal.live_agents == 0 || signal.watching_each > 0 || signal.wake_at == Some(signal.live_agents)
        };
        if notify {
            self.changed.notify_all();
        }
    }

    pub(crate) fn report(&self, failure: Failure) {
        if self.failures_tx.try_send(failure).is_err() {
            self.failures_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A handler that returned `Err` or panicked, a backend that panicked when dropped, or an entity
/// that could not be restarted.
///
/// The error is kept as it was returned, so it can be downcast to its own type and its
/// [`source`](StdError::source) chain followed; a panic's is a [`PanicError`].
///
/// # Examples
///
/// ```
/// use sophon::{Backend, BoxError, Context, HandlerKind, SystemBuilder};
///
/// struct Parse;
/// impl Backend for Parse {
///     type Input = String;
///     type Output = u32;
///     fn query(&mut self, s: String, ctx: &mut Context<u32>) -> Result<(), BoxError> {
///         Ok(ctx.send(s.parse::<u32>()?)?)
///     }
/// }
///
/// let mut builder = SystemBuilder::new();
/// let parse = builder.entity("parse", Parse);
/// let system = builder.spawn()?;
/// system.handle(&parse).query("x".to_string())?;
/// let failure = system.failures().recv()?;
/// assert_eq!(failure.kind, HandlerKind::Query);
/// assert!(failure.error.is::<std::num::ParseIntError>());
/// assert_eq!(failure.to_string(), "`parse` failed in its query handler: invalid digit found in string");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Failure {
    /// The entity whose handler failed.
    pub entity: String,
    /// Its id.
    pub id: Uuid,
    /// Which handler failed.
    pub kind: HandlerKind,
    /// The error, as the handler returned it; for a panic, a [`PanicError`].
    pub error: Arc<dyn StdError + Send + Sync + 'static>,
    /// Whether the handler panicked rather than returned `Err`. The entity is then restarted if
    /// it has a restart policy, and fails otherwise.
    pub panicked: bool,
}

/// A failure serializes as its entity, id, handler kind, message and whether it panicked: the
/// error itself is a trait object.
#[cfg(feature = "serde")]
impl serde::Serialize for Failure {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("Failure", 5)?;
        out.serialize_field("entity", &self.entity)?;
        out.serialize_field("id", &self.id)?;
        out.serialize_field("kind", &self.kind)?;
        out.serialize_field("message", &self.message())?;
        out.serialize_field("panicked", &self.panicked)?;
        out.end()
    }
}

impl Failure {
    /// The error's message, as its `Display` writes it.
    pub fn message(&self) -> String {
        self.error.to_string()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.panicked { "panicked" } else { "failed" };
        match self.kind {
            HandlerKind::Drop => write!(f, "`{}` {verb} when dropped: {}", self.entity, self.error),
            HandlerKind::Restart => write!(f, "`{}` could not be restarted: {}", self.entity, self.error),
            kind => write!(f, "`{}` {verb} in its {kind} handler: {}", self.entity, self.error),
        }
    }
}

/// The error of a [`Failure`] whose handler panicked: the panic's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanicError {
    message: String,
}

impl PanicError {
    pub(crate) fn new(message: String) -> Self {
        PanicError { message }
    }

    /// What the handler panicked with (a panic whose payload is not a string says so).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PanicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for PanicError {}
