//! Entities: running instances of backends, their counters, and the typed handles users hold.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use crossbeam_utils::CachePadded;
use uuid::Uuid;

use crate::backend::{Backend, BoxBackend};
use crate::context::Context;
use crate::err::{Error, ErrorKind, SendError};
use crate::latency::{Histogram, Latency};
use crate::pool::Task;
use crate::replicas::{ReplicaSet, Routed, View, fail_ask, reroute, route_envelope};
use crate::reply::{AskError, Asker, Reply, ReplyErrorKind};
use crate::shared::{CLOSING, OPEN, Shared};
use crate::window::Window;

/// What travels on an entity's inbox: everything but the queries of its query edges.
pub(crate) enum Envelope<I, O> {
    /// A query from a handle.
    Query(I),
    Read(I),
    /// A query from a handle whose answer goes back to the asker only. Boxed, so that the
    /// inbox's slots stay as small as a body: a pipeline fed through a handle moves them all.
    Ask(Box<(I, Asker<O>)>),
    Nop,
    Swap(Box<SwapRequest<I, O>>),
    /// A function to run on the backend between two messages (see `System::for_each`). Boxed
    /// twice, so that the inbox's slots stay thin.
    Visit(Box<Visit<I, O>>),
    /// A query or ask routed to this entity as one replica of a replicated entity (see
    /// `replicas`), with what its sender learns from it.
    Routed(Box<Routed<I, O>>),
    /// A query (or, if the flag says so, a read) whose handler's end is told on the sender,
    /// `true` if it returned `Ok`: what the bus acknowledges a message after.
    #[cfg_attr(not(feature = "bus"), allow(dead_code, reason = "only the bus sends them"))]
    Tracked(Box<Tracked<I, O>>),
}

/// A message whose sender is told how its handler ended (see `Envelope::Tracked`).
pub(crate) struct Tracked<I, O> {
    pub(crate) body: I,
    pub(crate) read: bool,
    /// Whether it was delivered before (see `Context::is_redelivery`).
    pub(crate) redelivered: bool,
    /// Told when the handler ends, on the agent's thread.
    pub(crate) done: Done,
    /// Where its outputs go instead of the siblings, when its sender wants the answer back.
    pub(crate) asker: Option<Asker<O>>,
}

/// How the handler of a tracked message ended.
#[cfg_attr(not(feature = "bus"), allow(dead_code, reason = "only the bus sends them"))]
pub(crate) enum Outcome {
    /// It returned `Ok`.
    Handled,
    /// It returned `Err` or panicked: what went wrong.
    Failed(String),
    /// It never ran: the entity ended first, or refused the message.
    NotHandled,
}

/// What a tracked message's sender is told when its handler ends: a function called once, with
/// [`Outcome::NotHandled`] if the message is dropped unhandled.
pub(crate) struct Done(Option<Box<dyn FnOnce(Outcome) + Send>>);

#[cfg_attr(not(feature = "bus"), allow(dead_code, reason = "only the bus sends them"))]
impl Done {
    pub(crate) fn new(tell: impl FnOnce(Outcome) + Send + 'static) -> Self {
        Done(Some(Box::new(tell)))
    }

    pub(crate) fn tell(mut self, outcome: Outcome) {
        if let Some(tell) = self.0.take() {
            tell(outcome);
        }
    }

    /// One that tells nothing: it stands for a `Done` already told.
    pub(crate) fn told() -> Self {
        Done(None)
    }

    /// `n` parts of this one, for copies of one message: it is told once every part is, that
    /// the message failed if a copy failed, or else that it was handled if a copy was.
    pub(crate) fn split(self, n: usize) -> Vec<Done> {
        struct Parts {
            left: usize,
            done: Option<Done>,
            failure: Option<String>,
            handled: bool,
        }
        let parts = Arc::new(Mutex::new(Parts { left: n, done: Some(self), failure: None, handled: false }));
        (0..n)
            .map(|_| {
                let parts = parts.clone();
                Done::new(move |outcome| {
                    let mut parts = parts.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Outcome::Handled => parts.handled = true,
                        Outcome::Failed(why) => {
                            parts.failure.get_or_insert(why);
                        }
                        Outcome::NotHandled => {}
                    }
                    parts.left -= 1;
                    if parts.left == 0
                        && let Some(done) = parts.done.take()
                    {
                        let outcome = match parts.failure.take() {
                            Some(why) => Outcome::Failed(why),
                            None if parts.handled => Outcome::Handled,
                            None => Outcome::NotHandled,
                        };
                        drop(parts);
                        done.tell(outcome);
                    }
                })
            })
            .collect()
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(tell) = self.0.take() {
            tell(Outcome::NotHandled);
        }
    }
}

/// A function run by an entity's agent on its backend and its context, between two messages:
/// `System::for_each`, and edges added or removed while the system runs.
pub(crate) type Visit<I, O> = Box<dyn FnOnce(&mut BoxBackend<I, O>, &mut Context<O>) + Send>;

pub(crate) struct SwapRequest<I, O> {
    pub(crate) backend: BoxBackend<I, O>,
    /// `Ok(old)` once swapped; `Err(new)` if the agent ended before it got to the request.
    pub(crate) reply: Sender<Result<BoxBackend<I, O>, BoxBackend<I, O>>>,
}

/// Whether an entity is still taking messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum EntityState {
    /// The agent is running and takes messages.
    Running,
    /// The agent handled a `Nop` and its thread has ended or is ending.
    Stopped,
    /// The backend panicked; the entity takes no more messages.
    Failed,
}

const RUNNING: u8 = 0;
const STOPPED: u8 = 1;
const FAILED: u8 = 2;

impl EntityState {
    fn from_u8(v: u8) -> Self {
        match v {
            RUNNING => EntityState::Running,
            STOPPED => EntityState::Stopped,
            _ => EntityState::Failed,
        }
    }

    pub(crate) fn refusal(self) -> Option<ErrorKind> {
        match self {
            EntityState::Running => None,
            EntityState::Stopped => Some(ErrorKind::Stopped),
            EntityState::Failed => Some(ErrorKind::Failed),
        }
    }
}

/// Counters of one entity. Each is written by one thread only (its agent), except
/// `undelivered`, which whoever drains a dead entity's queue adds to.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) handled: AtomicU64,
    /// Queries and reads whose handler panicked: done, but not handled.
    pub(crate) dropped: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Panics of any handler, and of the backend's `Drop`.
    pub(crate) panics: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) undelivered: AtomicU64,
    pub(crate) busy_ticks: AtomicU64,
    pub(crate) max_ticks: AtomicU64,
    /// Messages sent to outputs (outside the system): done as soon as they are sent.
    pub(crate) outputs: AtomicU64,
    /// Runs of `start` and timer handlers begun, and ended; see `System::quiescent`.
    pub(crate) activations: AtomicU64,
    pub(crate) activations_done: AtomicU64,
    /// The deepest the queues were seen (see `Stats::max_queued`).
    pub(crate) max_queued: AtomicU64,
    /// Messages routed here as a replica and passed on to another replica (see `Stats::rerouted`).
    pub(crate) rerouted: AtomicU64,
    /// The longest waiting time sampled (see `Stats::waiting`).
    pub(crate) max_wait_ticks: AtomicU64,
}

/// The untyped part of an entity, shared by its agent, its siblings, its handles and the system.
pub(crate) struct Core {
    pub(crate) id: Uuid,
    pub(crate) name: Arc<str>,
    pub(crate) state: AtomicU8,
    /// Set by the agent as the very last thing it does: its thread is about to end.
    pub(crate) ended: AtomicBool,
    pub(crate) panic: Mutex<Option<String>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) counters: CachePadded<Counters>,
    /// The entity's task, when a pool runs its agent: a message enqueued for it wakes it.
    pub(crate) task: OnceLock<Arc<Task>>,
    /// Agents of the pool waiting for room in this entity's bounded queues.
    pub(crate) room: Room,
    /// How long its handlers take, once it has handled a message.
    pub(crate) handling: OnceLock<Box<Histogram>>,
    /// What it handled in the last second, once it has handled a message.
    pub(crate) window: OnceLock<Box<Window>>,
    /// How long messages wait in its queues, sampled, once it has a sample.
    pub(crate) waiting: OnceLock<Box<Histogram>>,
}

/// Agents of the pool runtime waiting for room in a full bounded queue. They do not wait on
/// their worker: they park their deferred sends and their task, and the entity wakes them when
/// it takes a message (or stops, or its queues are drained).
#[derive(Default)]
pub(crate) struct Room {
    waiting: AtomicBool,
    waiters: Mutex<Vec<Arc<Task>>>,
}

impl Room {
    /// Registers `task` to be woken when there is room. The caller tries to send again after
    /// this, so that room made in between is not missed.
    pub(crate) fn wait(&self, task: &Arc<Task>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if !waiters.iter().any(|t| Arc::ptr_eq(t, task)) {
            waiters.push(task.clone());
        }
        self.waiting.store(true, Ordering::SeqCst);
    }

    /// Wakes every waiting task, if there is any.
    #[inline]
    pub(crate) fn wake(&self) {
        // Pairs with the store in `wait`: either the waiter's retry sees the room this message
        // made, or this sees the waiter.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            self.wake_all();
        }
    }

    #[cold]
    fn wake_all(&self) {
        let waiters = {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            self.waiting.store(false, Ordering::SeqCst);
            std::mem::take(&mut *waiters)
        };
        for task in waiters {
            task.notify();
        }
    }
}

thread_local! {
    /// The id of the entity whose agent runs on this thread, if any.
    static CURRENT_AGENT: Cell<Option<Uuid>> = const { Cell::new(None) };
}

impl Core {
    pub(crate) fn new(name: Arc<str>, shared: Arc<Shared>) -> Self {
        Core {
            id: Uuid::new_v4(),
            name,
            state: AtomicU8::new(RUNNING),
            ended: AtomicBool::new(false),
            panic: Mutex::new(None),
            shared,
            counters: CachePadded::new(Counters::default()),
            task: OnceLock::new(),
            room: Room::default(),
            handling: OnceLock::new(),
            window: OnceLock::new(),
            waiting: OnceLock::new(),
        }
    }

    /// Wakes the entity's agent, if a pool runs it: a message was just enqueued.
    #[inline(always)]
    pub(crate) fn wake(&self) {
        if let Some(task) = self.task.get() {
            task.notify();
        }
    }

    #[inline]
    pub(crate) fn state(&self) -> EntityState {
        EntityState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, state: EntityState) {
        let v = match state {
            EntityState::Running => RUNNING,
            EntityState::Stopped => STOPPED,
            EntityState::Failed => FAILED,
        };
        self.state.store(v, Ordering::Release);
    }

    /// Marks this thread as the one running this entity's agent.
    pub(crate) fn enter(&self) {
        CURRENT_AGENT.with(|current| current.set(Some(self.id)));
    }

    /// Marks this thread as running no agent (a pool worker between two turns).
    pub(crate) fn leave(&self) {
        CURRENT_AGENT.with(|current| current.set(None));
    }

    /// Whether this thread runs this entity's agent: a wait on the entity from here would never
    /// end.
    pub(crate) fn is_current(&self) -> bool {
        CURRENT_AGENT.with(|current| current.get() == Some(self.id))
    }

    fn stats(&self, queued: usize) -> Stats {
        let c = &self.counters;
        let clock = &self.shared.clock;
        let max_ticks = c.max_ticks.load(Ordering::Relaxed);
        Stats {
            received: c.received.load(Ordering::Relaxed),
            handled: c.handled.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            panics: c.panics.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            undelivered: c.undelivered.load(Ordering::Relaxed),
            queued: queued as u64,
            max_queued: c.max_queued.load(Ordering::Relaxed).max(queued as u64),
            rerouted: c.rerouted.load(Ordering::Relaxed),
            per_second: self.window.get().map_or(0, |w| w.per_second(clock.raw())),
            max_waiting: Duration::from_nanos(clock.delta_as_nanos(0, c.max_wait_ticks.load(Ordering::Relaxed))),
            waiting: self
                .waiting
                .get()
                .map(|h| {
                    let max = c.max_wait_ticks.load(Ordering::Relaxed);
                    h.latency(max, |ticks| Duration::from_nanos(clock.delta_as_nanos(0, ticks)))
                })
                .unwrap_or_default(),
            busy: Duration::from_nanos(clock.delta_as_nanos(0, c.busy_ticks.load(Ordering::Relaxed))),
            max: Duration::from_nanos(clock.delta_as_nanos(0, max_ticks)),
            handling: self
                .handling
                .get()
                .map(|h| h.latency(max_ticks, |ticks| Duration::from_nanos(clock.delta_as_nanos(0, ticks))))
                .unwrap_or_default(),
        }
    }
}

/// Counters of one entity, read through [`Handle::stats`] or in a shutdown [`Report`].
///
/// [`Report`]: crate::Report
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// Queries and reads the agent took from its queues.
    pub received: u64,
    /// Queries and reads whose handler returned, with `Ok` or `Err`. A query or read whose
    /// handler panicked is received but not handled: `received - handled` of them have
    /// panicked (or are being handled now).
    pub handled: u64,
    /// Messages the backend sent to siblings and outputs (a send a sibling refused is not
    /// counted: it is an error of the handler that sent it).
    pub sent: u64,
    /// Handlers (of any kind) that returned `Err`.
    pub errors: u64,
    /// Handlers (of any kind) that panicked, and panics of the backend's `Drop`. Without a
    /// restart policy the first panic of a handler ends the entity.
    pub panics: u64,
    /// Times the entity's backend was rebuilt after a panic (see [`Restart`](crate::Restart)).
    pub restarts: u64,
    /// Messages queued for this entity that it never handled because it stopped, failed or the
    /// shutdown deadline passed. They are counted here, never silently dropped.
    pub undelivered: u64,
    /// Messages waiting in the entity's queues now (in a shutdown report: 0, since what is left
    /// is counted as undelivered). A bounded entity holds at most its capacity in each of its
    /// two queues.
    pub queued: u64,
    /// The most messages seen waiting in its queues at once: noted now and then while the
    /// agent works through a backlog (every 16th batch of messages it takes without its queues
    /// running dry), and never less than what is queued now.
    pub max_queued: u64,
    /// Total time spent handling queries and reads.
    pub busy: Duration,
    /// The longest time one query or read took.
    pub max: Duration,
    /// How long queries and reads take: the median, 90th and 99th percentiles (see
    /// [`Latency`]).
    pub handling: Latency,
    /// Of a replica (see [`SystemBuilder::replicas`]): messages routed to it that it passed on
    /// to another replica instead of handling them, because it was culled, stopped or failed
    /// with them queued, and queries whose handler panicked here, tried once more at another
    /// replica. They are handled there, not lost.
    ///
    /// [`SystemBuilder::replicas`]: crate::SystemBuilder::replicas
    pub rerouted: u64,
    /// Queries and reads handled per second over the last second (counted by batches of
    /// messages, so a batch in progress is not in it yet).
    pub per_second: u64,
    /// How long messages wait in the entity's queues before their handler starts: the median,
    /// 90th and 99th percentiles. Sampled, not timed per message (a clock read per message
    /// would cost a busy pipeline more than the rest of its analytics): every 16th time the
    /// agent takes a batch from a backlog it notes what is queued and times how long until the
    /// last of it is taken, the wait of a message arriving then; every 16th time its queues run
    /// dry counts as a wait of nothing. Each sample stands for the messages taken since the one
    /// before, so the figures are per message. An entity that has not been busy has none.
    pub waiting: Latency,
    /// The longest of those sampled waits.
    pub max_waiting: Duration,
}

impl Stats {
    /// The counters of several entities taken together (the replicas of one entity, say):
    /// counts and times are summed, the maximum and the handling percentiles are the highest
    /// of any.
    pub fn sum(stats: impl IntoIterator<Item = Stats>) -> Stats {
        stats.into_iter().fold(Stats::default(), |a, b| Stats {
            received: a.received + b.received,
            handled: a.handled + b.handled,
            sent: a.sent + b.sent,
            errors: a.errors + b.errors,
            panics: a.panics + b.panics,
            restarts: a.restarts + b.restarts,
            undelivered: a.undelivered + b.undelivered,
            queued: a.queued + b.queued,
            max_queued: a.max_queued.max(b.max_queued),
            busy: a.busy + b.busy,
            max: a.max.max(b.max),
            handling: Latency {
                p50: a.handling.p50.max(b.handling.p50),
                p90: a.handling.p90.max(b.handling.p90),
                p99: a.handling.p99.max(b.handling.p99),
            },
            rerouted: a.rerouted + b.rerouted,
            per_second: a.per_second + b.per_second,
            max_waiting: a.max_waiting.max(b.max_waiting),
            waiting: Latency {
                p50: a.waiting.p50.max(b.waiting.p50),
                p90: a.waiting.p90.max(b.waiting.p90),
                p99: a.waiting.p99.max(b.waiting.p99),
            },
        })
    }
}

/// A message in an entity's queue: its body and, with the `tracing` feature, the span it was
/// sent from (the sender's handler, or the caller's span for a handle), which the handling span
/// is a child of. Without the feature it is the body alone.
pub(crate) struct Msg<T> {
    pub(crate) body: T,
    #[cfg(feature = "tracing")]
    pub(crate) cause: tracing::Span,
}

impl<T> Msg<T> {
    #[inline(always)]
    pub(crate) fn new(body: T) -> Self {
        Msg {
            body,
            #[cfg(feature = "tracing")]
            cause: tracing::Span::current(),
        }
    }
}

/// One of an entity's two queues, as its senders see it.
pub(crate) struct Queue<T> {
    tx: Sender<Msg<T>>,
    bounded: bool,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue { tx: self.tx.clone(), bounded: self.bounded }
    }
}

impl<T> Queue<T> {
    /// Enqueues without any check; on a full bounded queue, waits until there is room.
    ///
    /// The wait ends with an error when the entity (`core`) stops taking messages, when the
    /// system's shutdown deadline passes, or at once when this thread is the entity's own
    /// agent, which would be waiting for itself.
    #[inline]
    pub(crate) fn push(&self, msg: T, core: &Core) -> Result<(), (T, ErrorKind)> {
        let msg = Msg::new(msg);
        if !self.bounded {
            // The port holds a receiver, so the channel cannot be disconnected.
            self.tx.send(msg).map_err(|e| (e.into_inner().body, ErrorKind::Stopped))?;
            core.wake();
            return Ok(());
        }
        // Room in the queue is the common case: no clock read for the timeout then.
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(e) if core.is_current() => return Err((e.into_inner().body, ErrorKind::WouldDeadlock)),
            Err(e) => wait_for_room(&self.tx, e.into_inner(), || {
                core.state().refusal().or_else(|| core.shared.expired().then_some(ErrorKind::DeadlinePassed))
            })
            .map_err(|(msg, kind)| (msg.body, kind))?,
        }
        core.wake();
        Ok(())
    }

    /// Enqueues unless the queue is full, and gives the message back if it is.
    #[inline]
    pub(crate) fn offer(&self, msg: T, core: &Core) -> Result<(), T> {
        // The port holds a receiver, so the channel cannot be disconnected.
        self.tx.try_send(Msg::new(msg)).map_err(|e| e.into_inner().body)?;
        core.wake();
        Ok(())
    }

    /// Whether the queue is bounded.
    #[inline]
    pub(crate) fn is_bounded(&self) -> bool {
        self.bounded
    }
}

/// Sends `msg` into `tx`, a full bounded channel, once there is room, looking every 10 ms at
/// whether to `give_up` (and why) instead. A disconnected channel refuses it as `Stopped`.
#[cold]
pub(crate) fn wait_for_room<T>(
    tx: &Sender<T>,
    mut msg: T,
    give_up: impl Fn() -> Option<ErrorKind>,
) -> Result<(), (T, ErrorKind)> {
    loop {
        match tx.send_timeout(msg, Duration::from_millis(10)) {
            Ok(()) => return Ok(()),
            Err(SendTimeoutError::Disconnected(back)) => return Err((back, ErrorKind::Stopped)),
            Err(SendTimeoutError::Timeout(back)) => {
                msg = back;
                if let Some(kind) = give_up() {
                    return Err((msg, kind));
                }
            }
        }
    }
}

/// The typed part of an entity: its two queues.
///
/// The queries of query edges, the hot path of a graph, travel as bare bodies on a queue of
/// their own; everything else (reads, messages from handles, stops and swaps) travels in an
/// envelope on the inbox. Each sender uses only one of the two (an edge is a query edge or a
/// read edge, and there is at most one edge from one entity to another; a handle uses the inbox),
/// so what one sender sends arrives in the order it was sent. A stop or a swap from the inbox
/// takes its place after the queries queued before it (see `Agent::catch_up`).
pub(crate) struct Port<I, O> {
    pub(crate) core: Arc<Core>,
    pub(crate) queries: Queue<I>,
    pub(crate) inbox: Queue<Envelope<I, O>>,
    /// Kept here as well as by the agent so that a stopped or failed entity's queues can still be
    /// drained and counted as undelivered, and so that sends never see a disconnected channel.
    pub(crate) queries_rx: Receiver<Msg<I>>,
    pub(crate) inbox_rx: Receiver<Msg<Envelope<I, O>>>,
    /// The replicas that serve the entity, if it is replicated: then this is its front, and
    /// senders route to them.
    pub(crate) replicas: OnceLock<Arc<ReplicaSet<I, O>>>,
}

impl<I: Send + 'static, O: Send + 'static> Port<I, O> {
    /// A port with queues of at most `capacity` messages each, or unbounded ones.
    pub(crate) fn new(core: Arc<Core>, capacity: Option<usize>) -> Self {
        fn channel<T>(capacity: Option<usize>) -> (Queue<T>, Receiver<Msg<T>>) {
            let (tx, rx) = match capacity {
                Some(capacity) => crossbeam_channel::bounded(capacity),
                None => crossbeam_channel::unbounded(),
            };
            (Queue { tx, bounded: capacity.is_some() }, rx)
        }
        let (queries, queries_rx) = channel(capacity);
        let (inbox, inbox_rx) = channel(capacity);
        Port { core, queries, inbox, queries_rx, inbox_rx, replicas: OnceLock::new() }
    }

    /// The entity's counters, with what is queued now.
    pub(crate) fn stats(&self) -> Stats {
        self.core.stats(self.queries_rx.len() + self.inbox_rx.len())
    }

    /// Puts an envelope in the inbox without any check (see [`Queue::push`]).
    pub(crate) fn enqueue(&self, env: Envelope<I, O>) -> Result<(), (Envelope<I, O>, ErrorKind)> {
        self.inbox.push(env, &self.core)
    }

    /// Takes everything left in both queues and counts queries and reads as undelivered.
    pub(crate) fn drain(&self) -> u64 {
        let mut n = self.queries_rx.try_iter().count() as u64;
        while let Ok(Msg { body: env, .. }) = self.inbox_rx.try_recv() {
            match env {
                Envelope::Query(_) | Envelope::Read(_) => n += 1,
                Envelope::Ask(ask) => {
                    let (_, asker) = *ask;
                    n += 1;
                    let why = self.core.state().refusal().unwrap_or(ErrorKind::DeadlinePassed);
                    asker.fail(ReplyErrorKind::NotHandled(why), None);
                }
                // Passed on to another replica if one takes it (counted as rerouted), else
                // undelivered.
                Envelope::Routed(routed) => match reroute(*routed) {
                    Ok(()) => {
                        self.core.counters.rerouted.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(routed) => {
                        n += 1;
                        let why = self.core.state().refusal().unwrap_or(ErrorKind::DeadlinePassed);
                        let Routed { asker, ticket, .. } = routed;
                        ticket.complete_undelivered();
                        fail_ask(asker, why);
                    }
                },
                // Undelivered: the sender sees its end dropped, and does not acknowledge it.
                Envelope::Tracked(_) => n += 1,
                // Dropped: the caller of `for_each` sees the entity was not visited.
                Envelope::Nop | Envelope::Visit(_) => {}
                Envelope::Swap(req) => {
                    let _ = req.reply.send(Err(req.backend));
                }
            }
        }
        if n > 0 {
            self.core.counters.undelivered.fetch_add(n, Ordering::AcqRel);
        }
        // Room for anyone waiting, who then finds the entity stopped or the deadline passed.
        self.core.room.wake();
        n
    }
}

/// What the system needs of a port without knowing its types.
pub(crate) trait ErasedPort: Send + Sync {
    fn core(&self) -> &Core;
    fn stats(&self) -> Stats;
    fn drain(&self) -> u64;
    /// Sends `Nop` unless the entity has stopped or failed; false if its inbox is full.
    fn try_stop(&self) -> bool;
    /// Asks the agent to drop its edges to the entity `target`, between two messages, and then
    /// to send on (or drop) `done`; false if the entity has ended and will not.
    fn detach(&self, target: Uuid, done: Sender<()>) -> bool;
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<I: Send + 'static, O: Send + 'static> ErasedPort for Port<I, O> {
    fn core(&self) -> &Core {
        &self.core
    }

    fn stats(&self) -> Stats {
        Port::stats(self)
    }

    fn drain(&self) -> u64 {
        Port::drain(self)
    }

    fn try_stop(&self) -> bool {
        self.core.state() != EntityState::Running || self.inbox.offer(Envelope::Nop, &self.core).is_ok()
    }

    fn detach(&self, target: Uuid, done: Sender<()>) -> bool {
        if self.core.state() != EntityState::Running {
            return false;
        }
        let visit: Visit<I, O> = Box::new(move |_, ctx| {
            ctx.remove_siblings_to(target);
            let _ = done.send(());
        });
        self.enqueue(Envelope::Visit(Box::new(visit))).is_ok()
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// A typed, cloneable, weak handle to an entity.
///
/// It sends queries and reads from outside the system, reads the entity's id, name, state and
/// counters, stops the entity and swaps its backend. It does not keep the system alive: once the
/// system is gone every operation returns an error ([`ErrorKind::SystemGone`]), never a panic.
/// Its id and name stay readable.
pub struct Handle<I, O> {
    port: Weak<Port<I, O>>,
    /// What a send needs, held directly so that it costs no upgrade of `port`: the entity's
    /// name, counters and state, and a sender into its inbox. Neither keeps the system alive;
    /// once it has shut down, sends are refused (see `send_external`).
    core: Arc<Core>,
    inbox: Queue<Envelope<I, O>>,
    /// The handles' view of the replicas, if the entity is replicated: sends are routed.
    router: Option<Arc<View<I, O>>>,
}

impl<I, O> Clone for Handle<I, O> {
    fn clone(&self) -> Self {
        Handle {
            port: self.port.clone(),
            core: self.core.clone(),
            inbox: self.inbox.clone(),
            router: self.router.clone(),
        }
    }
}

impl<I, O> fmt::Debug for Handle<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("name", &self.core.name).field("id", &self.core.id).finish_non_exhaustive()
    }
}

impl<I: Send + 'static, O: Send + 'static> Handle<I, O> {
    pub(crate) fn new(port: &Arc<Port<I, O>>) -> Self {
        let router = port.replicas.get().map(|set| set.handles_view());
        Handle { port: Arc::downgrade(port), core: port.core.clone(), inbox: port.inbox.clone(), router }
    }

    /// Handles to the replicas of the entity, in the order they were added, if it is replicated
    /// (see [`SystemBuilder::replicas`]); none if it is not. A replica's handle swaps its
    /// backend, stops it or reads its counters alone; its sends go to that replica only.
    ///
    /// [`SystemBuilder::replicas`]: crate::SystemBuilder::replicas
    pub fn replicas(&self) -> Vec<Handle<I, O>> {
        match &self.router {
            Some(view) => view.set().members().iter().map(|m| Handle::new(&m.port)).collect(),
            None => Vec::new(),
        }
    }

    fn port(&self) -> Result<Arc<Port<I, O>>, Error> {
        self.port.upgrade().ok_or_else(|| Error::new(ErrorKind::SystemGone, self.core.name.clone()))
    }

    /// The entity's id, made when it was created.
    pub fn id(&self) -> Uuid {
        self.core.id
    }

    /// The entity's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// Sends a query: the entity's backend answers it to its siblings.
    ///
    /// On a bounded queue this waits for room. It fails, giving the body back, when the entity
    /// has stopped or failed or its system is gone.
    pub fn query(&self, body: I) -> Result<(), SendError<I>> {
        self.send_body(body, Envelope::Query)
    }

    /// Sends a read: the entity takes the body in and answers nothing.
    pub fn read(&self, body: I) -> Result<(), SendError<I>> {
        self.send_body(body, Envelope::Read)
    }

    /// Asks the entity: it handles `body` as a query, and everything its handler sends while
    /// doing so comes back in the [`Reply`], to this caller only, not to the entity's siblings.
    ///
    /// It fails, giving the body back, as [`query`](Self::query) does; and at once with
    /// [`ErrorKind::WouldDeadlock`] when a handler of the entity asks its own entity, which
    /// could not answer before that handler returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Double;
    /// impl Backend for Double {
    ///     type Input = u64;
    ///     type Output = u64;
    ///     fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(n * 2)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let double = builder.entity("double", Double);
    /// let system = builder.spawn()?;
    /// let double = system.handle(&double);
    ///
    /// // Two callers, each with its own answer.
    /// let (a, b) = (double.ask(1)?, double.ask(2)?);
    /// assert_eq!((b.first()?, a.first()?), (4, 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ask(&self, body: I) -> Result<Reply<O>, SendError<I>> {
        if self.core.is_current() {
            return Err(SendError::new(ErrorKind::WouldDeadlock, self.core.name.clone(), body));
        }
        let (asker, reply) = Asker::pair(self.core.name.clone());
        match self.send_external(Envelope::Ask(Box::new((body, asker)))) {
            Ok(()) => Ok(reply),
            Err((Envelope::Ask(ask), kind)) => {
                let (body, asker) = *ask;
                asker.discard();
                Err(SendError::new(kind, self.core.name.clone(), body))
            }
            Err(_) => unreachable!("an ask was sent"),
        }
    }

    /// Asks the entity and waits for the first output of its answer (see [`ask`](Self::ask)).
    ///
    /// An entity that refuses the message gives the body back in [`AskError::Refused`]; a
    /// handler that answers nothing, returns `Err` or panics ends in [`AskError::Reply`].
    pub fn call(&self, body: I) -> Result<O, AskError<I>> {
        Ok(self.ask(body)?.first()?)
    }

    /// [`call`](Self::call) that waits at most `timeout` for the answer.
    pub fn call_timeout(&self, body: I, timeout: Duration) -> Result<O, AskError<I>> {
        Ok(self.ask(body)?.first_timeout(timeout)?)
    }

    fn send_body(&self, body: I, wrap: fn(I) -> Envelope<I, O>) -> Result<(), SendError<I>> {
        self.send_external(wrap(body)).map_err(|(env, kind)| match env {
            Envelope::Query(body) | Envelope::Read(body) => SendError::new(kind, self.core.name.clone(), body),
            _ => unreachable!("only bodies are sent here"),
        })
    }

    /// Sends a query or read from outside the system.
    #[inline]
    fn send_external(&self, env: Envelope<I, O>) -> Result<(), (Envelope<I, O>, ErrorKind)> {
        let shared = &self.core.shared;
        // Counted as sent before anything else, and taken back if refused. Shutdown closes the
        // intake, then drains until every message counted as sent is accounted for (see
        // `System::close`): either this send sees the intake closed and is refused, or the
        // shutdown sees it counted and waits until its message is handled or drained. Counting
        // first also means it can never be seen handled before it is seen sent (see
        // `System::quiescent`).
        shared.external.fetch_add(1, Ordering::SeqCst);
        let refusal = match shared.intake.load(Ordering::SeqCst) {
            OPEN => self.core.state().refusal(),
            CLOSING => Some(ErrorKind::Stopped),
            _ => Some(ErrorKind::SystemGone),
        };
        let result = match (refusal, &self.router) {
            (Some(kind), _) => Err((env, kind)),
            (None, None) => self.inbox.push(env, &self.core),
            (None, Some(view)) => route_envelope(view, env),
        };
        if result.is_err() {
            shared.external.fetch_sub(1, Ordering::SeqCst);
        }
        result
    }

    /// Sends a query (or a read) whose handler's end is told to `done`, on the agent's thread
    /// (or wherever the message is dropped unhandled); its outputs go to `asker`, if given,
    /// instead of the siblings.
    #[cfg(feature = "bus")]
    pub(crate) fn send_tracked(
        &self,
        body: I,
        read: bool,
        redelivered: bool,
        asker: Option<Asker<O>>,
        done: Done,
    ) -> Result<(), SendError<I>> {
        let tracked = Tracked { body, read, redelivered, done, asker };
        match self.send_external(Envelope::Tracked(Box::new(tracked))) {
            Ok(()) => Ok(()),
            Err((Envelope::Tracked(tracked), kind)) => {
                let Tracked { body, asker, .. } = *tracked;
                if let Some(asker) = asker {
                    asker.discard();
                }
                Err(SendError::new(kind, self.core.name.clone(), body))
            }
            Err(_) => unreachable!("a tracked message was sent"),
        }
    }

    /// Asks the entity's agent for a call of [`Backend::idle`](crate::Backend::idle) between
    /// two messages (see [`Context::when_idle`]): how a helper thread tells a backend that it
    /// has work for it. Returns whether the agent will get the request.
    #[cfg(feature = "bus")]
    pub(crate) fn wake_idle(&self) -> bool {
        let Ok(port) = self.port() else { return false };
        let visit: Visit<I, O> = Box::new(|_, ctx| ctx.when_idle());
        port.enqueue(Envelope::Visit(Box::new(visit))).is_ok()
    }

    /// Sends `Nop`: the entity handles what is queued before it, cleans up and its thread ends.
    /// The rest of the system keeps running; later sends to this entity fail.
    pub fn stop(&self) -> Result<(), Error> {
        let port = self.port()?;
        if let Some(view) = &self.router {
            // A replicated entity stops with its replicas, each behind what is queued for it.
            for member in view.set().members().iter() {
                if member.port.core.state() == EntityState::Running {
                    let _ = member.port.enqueue(Envelope::Nop);
                }
            }
        }
        match port.core.state().refusal() {
            Some(kind) => Err(Error::new(kind, self.core.name.clone())),
            None => port.enqueue(Envelope::Nop).map_err(|(_, kind)| Error::new(kind, self.core.name.clone())),
        }
    }

    /// Whether the entity is running, stopped or failed.
    pub fn state(&self) -> Result<EntityState, Error> {
        Ok(self.port()?.core.state())
    }

    /// The entity's counters now. Of a replicated entity, its replicas' taken together (see
    /// [`Stats::sum`]).
    pub fn stats(&self) -> Result<Stats, Error> {
        let port = self.port()?;
        Ok(match &self.router {
            Some(view) => Stats::sum(view.set().members().iter().map(|m| m.port.stats())),
            None => port.stats(),
        })
    }

    /// Swaps the entity's backend for `backend` and hands the old one back.
    ///
    /// The swap takes its place in the entity's queue: every message queued before it is handled
    /// by the old backend, every one after by the new, none is lost or handled twice, and the old
    /// backend is never dropped in the middle of a message. This waits until the agent reaches
    /// the swap. If the entity stops or fails first, the new backend is given back in the error;
    /// so it is when a handler of the entity itself asks ([`ErrorKind::WouldDeadlock`]), since
    /// its agent cannot reach the swap before the handler returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Add(i64);
    /// impl Backend for Add {
    ///     type Input = i64;
    ///     type Output = i64;
    ///     fn query(&mut self, n: i64, ctx: &mut Context<i64>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(n + self.0)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let add = builder.entity("add", Add(1));
    /// let out = builder.output(&add, "out");
    /// let system = builder.spawn()?;
    /// let handle = system.handle(&add);
    ///
    /// handle.query(10)?;
    /// let old = handle.swap(Add(100))?;
    /// handle.query(10)?;
    /// assert_eq!(out.iter().take(2).collect::<Vec<_>>(), [11, 110]);
    /// assert_eq!(old.downcast::<Add>().ok().unwrap().0, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn swap<B>(&self, backend: B) -> Result<BoxBackend<I, O>, SendError<BoxBackend<I, O>>>
    where
        B: Backend<Input = I, Output = O>,
    {
        self.swap_boxed(Box::new(backend))
    }

    /// [`swap`](Handle::swap) for a backend that is already boxed.
    pub fn swap_boxed(&self, backend: BoxBackend<I, O>) -> Result<BoxBackend<I, O>, SendError<BoxBackend<I, O>>> {
        let Some(port) = self.port.upgrade() else {
            return Err(SendError::new(ErrorKind::SystemGone, self.core.name.clone(), backend));
        };
        if self.core.is_current() {
            return Err(SendError::new(ErrorKind::WouldDeadlock, self.core.name.clone(), backend));
        }
        if self.router.is_some() {
            return Err(SendError::new(ErrorKind::Replicated, self.core.name.clone(), backend));
        }
        if let Some(kind) = port.core.state().refusal() {
            return Err(SendError::new(kind, self.core.name.clone(), backend));
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        let request = Envelope::Swap(Box::new(SwapRequest { backend, reply }));
        if let Err((env, kind)) = port.enqueue(request) {
            let Envelope::Swap(req) = env else { unreachable!("a swap was sent") };
            return Err(SendError::new(kind, self.core.name.clone(), req.backend));
        }
        loop {
            match answer.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(old)) => return Ok(old),
                Ok(Err(new)) => {
                    let kind = port.core.state().refusal().unwrap_or(ErrorKind::Stopped);
                    return Err(SendError::new(kind, self.core.name.clone(), new));
                }
                // The agent ended without reaching the request: take it back out of the queue,
                // which answers it with the new backend.
                Err(RecvTimeoutError::Timeout) if port.core.state() != EntityState::Running => {
                    port.drain();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    unreachable!("the request sits in a queue this handle keeps alive until it is answered")
                }
            }
        }
    }
}
