//! What a handler sees of its agent: its siblings (outgoing edges), its timers, its system.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use uuid::Uuid;

use crate::entity::{Core, Envelope, Port, Queue, wait_for_room};
use crate::err::{Error, ErrorKind};
use crate::pool::Task;
use crate::reply::Asker;
use crate::shared::Shared;

/// How many batches of messages an agent closes, at most, before it publishes what its edges
/// carried (it also does when it goes idle and when it ends).
const PUBLISH_EVERY: u32 = 64;

/// The kind of an outgoing edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum EdgeKind {
    /// The sibling receives this agent's output as a query, and answers it.
    Query,
    /// The sibling receives this agent's output as a read, and answers nothing.
    Read,
    /// The output leaves the system on a channel (see [`SystemBuilder::output`]).
    ///
    /// [`SystemBuilder::output`]: crate::SystemBuilder::output
    Output,
    /// From a replicated entity to one of its replicas (see [`SystemBuilder::replicas`]): what
    /// its senders routed there. No agent sends along it.
    ///
    /// [`SystemBuilder::replicas`]: crate::SystemBuilder::replicas
    Replica,
}

/// Whether a send was delivered or deferred for want of room (see [`Context::flush`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Now,
    Deferred,
}

/// What flushing an outlet's deferred sends did.
#[derive(Default)]
pub(crate) struct Flushed {
    /// Sends delivered.
    pub(crate) delivered: u64,
    /// Sends given up and not accounted for by the receiver (an output whose reader is gone):
    /// the sender takes back their count.
    pub(crate) dropped: u64,
    /// What the outlet still waits for, if it could not send everything.
    pub(crate) waiting: Waiting,
    /// Why sends were given up, as a send waiting for room would have failed: the entity
    /// stopped or failed, the output's reader is gone, or the shutdown deadline passed.
    pub(crate) refused: Option<ErrorKind>,
}

/// What an agent with deferred sends waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Waiting {
    /// Nothing: every deferred send is delivered.
    #[default]
    No,
    /// Room in an entity's queue: the entity wakes the agent.
    OnEntity,
    /// Room in an output channel: nobody says when.
    OnOutput,
}

/// Where an edge delivers: a sibling's queue or an output channel. A refused message is dropped
/// (it may have been converted already); the sender counts the refusal.
///
/// With `defer`, which agents of the pool runtime pass, a send that finds a full bounded queue
/// is kept in the outlet (with every later one, in order) instead of waiting for room, so that
/// the worker thread is not held; the agent delivers them with `flush` before its next message.
pub(crate) trait Outlet<O>: Send {
    fn send(&mut self, out: O, defer: bool) -> Result<Sent, ErrorKind>;

    /// Delivers the deferred sends, in order, as far as there is room; `me` is the sending
    /// agent's task, woken when room is made.
    fn flush(&mut self, me: Option<&Arc<Task>>) -> Flushed {
        let _ = me;
        Flushed::default()
    }
}

/// A query edge into another entity: the output, converted into the sibling's input, goes to the
/// sibling's query queue as it is, with no envelope.
///
/// It keeps the sibling's core and a sender of its own, so that a send reads no more shared
/// memory than the sibling's state and the channel.
pub(crate) struct QueryOutlet<I> {
    core: Arc<Core>,
    queue: Queue<I>,
    deferred: VecDeque<I>,
}

/// A read edge into another entity: the converted output goes to the sibling's inbox as a read.
pub(crate) struct ReadOutlet<I, O2> {
    core: Arc<Core>,
    queue: Queue<Envelope<I, O2>>,
    deferred: VecDeque<Envelope<I, O2>>,
}

impl<I> QueryOutlet<I> {
    pub(crate) fn new<O2>(port: &Port<I, O2>) -> Self {
        QueryOutlet { core: port.core.clone(), queue: port.queries.clone(), deferred: VecDeque::new() }
    }
}

impl<I, O2> ReadOutlet<I, O2> {
    pub(crate) fn new(port: &Port<I, O2>) -> Self {
        ReadOutlet { core: port.core.clone(), queue: port.inbox.clone(), deferred: VecDeque::new() }
    }
}

impl<O, I> Outlet<O> for QueryOutlet<I>
where
    O: Send,
    I: From<O> + Send,
{
    #[inline]
    fn send(&mut self, out: O, defer: bool) -> Result<Sent, ErrorKind> {
        deliver(&self.core, &self.queue, &mut self.deferred, out, I::from, defer)
    }

    fn flush(&mut self, me: Option<&Arc<Task>>) -> Flushed {
        flush_into(&self.core, &self.queue, &mut self.deferred, me)
    }
}

impl<O, I, O2> Outlet<O> for ReadOutlet<I, O2>
where
    O: Send,
    I: From<O> + Send,
    O2: Send,
{
    fn send(&mut self, out: O, defer: bool) -> Result<Sent, ErrorKind> {
        deliver(&self.core, &self.queue, &mut self.deferred, out, |out| Envelope::Read(I::from(out)), defer)
    }

    fn flush(&mut self, me: Option<&Arc<Task>>) -> Flushed {
        flush_into(&self.core, &self.queue, &mut self.deferred, me)
    }
}

/// Refuses `out` if the sibling (`core`) takes no more messages; otherwise converts and enqueues
/// it. On a full bounded queue it waits (see [`Queue::push`]), or with `defer` keeps it in
/// `deferred`.
#[inline(always)]
fn deliver<O, T>(
    core: &Core,
    queue: &Queue<T>,
    deferred: &mut VecDeque<T>,
    out: O,
    convert: impl FnOnce(O) -> T,
    defer: bool,
) -> Result<Sent, ErrorKind> {
    if let Some(refusal) = core.state().refusal() {
        return Err(refusal);
    }
    if defer && queue.is_bounded() {
        return defer_or_offer(core, queue, deferred, convert(out));
    }
    queue.push(convert(out), core).map_err(|(_, kind)| kind)?;
    Ok(Sent::Now)
}

/// Enqueues `msg` behind what is deferred already, deferring it too if there is no room.
#[cold]
fn defer_or_offer<T>(core: &Core, queue: &Queue<T>, deferred: &mut VecDeque<T>, msg: T) -> Result<Sent, ErrorKind> {
    if !deferred.is_empty() {
        deferred.push_back(msg);
        return Ok(Sent::Deferred);
    }
    match queue.offer(msg, core) {
        Ok(()) => Ok(Sent::Now),
        // The entity's own agent sends to it: it cannot make room while it waits.
        Err(_) if core.is_current() => Err(ErrorKind::WouldDeadlock),
        Err(msg) => {
            deferred.push_back(msg);
            Ok(Sent::Deferred)
        }
    }
}

/// Delivers `deferred` into `queue` in order, as far as there is room. What the entity will
/// never take (it stopped or failed, or the shutdown deadline passed) is given up, as a send
/// waiting for room gives up in a system of threads.
fn flush_into<T>(core: &Core, queue: &Queue<T>, deferred: &mut VecDeque<T>, me: Option<&Arc<Task>>) -> Flushed {
    let mut flushed = Flushed::default();
    let mut registered = false;
    while let Some(msg) = deferred.pop_front() {
        let refusal = core.state().refusal().or_else(|| core.shared.expired().then_some(ErrorKind::DeadlinePassed));
        if let Some(kind) = refusal {
            flushed.dropped += deferred.len() as u64 + 1;
            flushed.refused = Some(kind);
            deferred.clear();
            break;
        }
        match queue.offer(msg, core) {
            Ok(()) => flushed.delivered += 1,
            Err(msg) => {
                deferred.push_front(msg);
                if !retry_after_registering(core, me, &mut registered) {
                    flushed.waiting = Waiting::OnEntity;
                    break;
                }
            }
        }
    }
    flushed
}

/// A deferred send found `core`'s queue full. The first time, registers the sending agent's
/// task `me` to be woken when there is room, and says to try once more, so that room made in
/// between is not missed; after that (or with no task to wake), says to stop and wait.
pub(crate) fn retry_after_registering(core: &Core, me: Option<&Arc<Task>>, registered: &mut bool) -> bool {
    match me {
        Some(me) if !*registered => {
            core.room.wait(me);
            *registered = true;
            true
        }
        _ => false,
    }
}

/// An edge out of the system, to a channel the user reads.
pub(crate) struct OutputOutlet<O> {
    tx: Sender<O>,
    shared: Arc<Shared>,
    deferred: VecDeque<O>,
}

impl<O> OutputOutlet<O> {
    pub(crate) fn new(tx: Sender<O>, shared: Arc<Shared>) -> Self {
        OutputOutlet { tx, shared, deferred: VecDeque::new() }
    }
}

impl<O: Send> Outlet<O> for OutputOutlet<O> {
    /// On a full bounded channel, waits for room until the system's shutdown deadline passes:
    /// an output nobody reads cannot hold a shutdown past its deadline.
    #[inline]
    fn send(&mut self, out: O, defer: bool) -> Result<Sent, ErrorKind> {
        if !self.deferred.is_empty() {
            self.deferred.push_back(out);
            return Ok(Sent::Deferred);
        }
        match self.tx.try_send(out) {
            Ok(()) => Ok(Sent::Now),
            Err(TrySendError::Disconnected(_)) => Err(ErrorKind::Stopped),
            Err(TrySendError::Full(out)) if defer => {
                self.deferred.push_back(out);
                Ok(Sent::Deferred)
            }
            Err(TrySendError::Full(out)) => {
                let shared = &self.shared;
                wait_for_room(&self.tx, out, || shared.expired().then_some(ErrorKind::DeadlinePassed))
                    .map_err(|(_, kind)| kind)?;
                Ok(Sent::Now)
            }
        }
    }

    fn flush(&mut self, _: Option<&Arc<Task>>) -> Flushed {
        let mut flushed = Flushed::default();
        while let Some(out) = self.deferred.pop_front() {
            match self.tx.try_send(out) {
                Ok(()) => flushed.delivered += 1,
                Err(TrySendError::Full(out)) if !self.shared.expired() => {
                    self.deferred.push_front(out);
                    flushed.waiting = Waiting::OnOutput;
                    break;
                }
                // Nobody reads it any more, or the deadline passed.
                Err(e) => {
                    flushed.refused = Some(match e {
                        TrySendError::Disconnected(_) => ErrorKind::Stopped,
                        TrySendError::Full(_) => ErrorKind::DeadlinePassed,
                    });
                    flushed.dropped += self.deferred.len() as u64 + 1;
                    self.deferred.clear();
                }
            }
        }
        flushed
    }
}

/// An edge attached to one output port: it takes the port's value out of the variant and
/// passes it on.
pub(crate) struct PortOutlet<O, T> {
    pub(crate) extract: fn(O) -> T,
    pub(crate) inner: Box<dyn Outlet<T>>,
}

impl<O: Send, T: Send> Outlet<O> for PortOutlet<O, T> {
    fn send(&mut self, out: O, defer: bool) -> Result<Sent, ErrorKind> {
        self.inner.send((self.extract)(out), defer)
    }

    fn flush(&mut self, me: Option<&Arc<Task>>) -> Flushed {
        self.inner.flush(me)
    }
}

/// One outgoing edge of an agent.
pub struct Sibling<O> {
    name: Arc<str>,
    id: Option<Uuid>,
    kind: EdgeKind,
    /// The output port the edge is attached to (index and name), if not the whole output.
    port: Option<(usize, &'static str)>,
    outlet: Box<dyn Outlet<O>>,
    /// Messages the edge took, and where the count is published for the system to read, once
    /// per batch of messages (see [`Context::publish_carried`]).
    carried: u64,
    published: Arc<AtomicU64>,
}

impl<O> Sibling<O> {
    pub(crate) fn new(
        name: Arc<str>,
        id: Option<Uuid>,
        kind: EdgeKind,
        port: Option<(usize, &'static str)>,
        outlet: Box<dyn Outlet<O>>,
        published: Arc<AtomicU64>,
    ) -> Self {
        Sibling { name, id, kind, port, outlet, carried: 0, published }
    }

    /// Counts a message the edge took.
    #[inline(always)]
    fn carried_one(&mut self) {
        self.carried += 1;
    }

    /// The output port the edge is attached to (see [`Ports`](crate::Ports)); `None` when it
    /// gets everything the agent sends.
    pub fn port(&self) -> Option<&'static str> {
        self.port.map(|(_, name)| name)
    }

    /// Whether the edge takes a value sent through `port` (`None`: an output without ports).
    #[inline]
    fn takes(&self, port: Option<usize>) -> bool {
        match self.port {
            None => true,
            Some((index, _)) => port == Some(index),
        }
    }

    /// The name of the entity (or output) at the end of the edge.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The id of the entity at the end of the edge; `None` for an output.
    pub fn id(&self) -> Option<Uuid> {
        self.id
    }

    /// Whether the sibling gets this agent's output as a query, a read or an output.
    pub fn kind(&self) -> EdgeKind {
        self.kind
    }
}

impl<O> fmt::Debug for Sibling<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sibling")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

/// What a context counts of its sends besides `sent`.
#[derive(Default)]
struct Tally {
    /// Mirror of `core.counters.outputs`, which only this agent writes.
    outputs: u64,
    /// Whether sends that find no room are deferred (pool runtime) rather than waited for.
    defer: bool,
    /// Whether some sends are deferred now.
    deferred: bool,
}

/// Identifies a timer set with [`Context::every`] or [`Context::after`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

struct Timer {
    id: TimerId,
    /// When it fires next; `None` when that is too far away to be an `Instant` (never).
    next: Option<Instant>,
    period: Option<Duration>,
}

/// What a handler can do besides computing: send to its siblings, set timers, ask the system to
/// stop.
///
/// Every handler of a [`Backend`](crate::Backend) gets the agent's context. It lives on the
/// agent's thread for as long as the agent runs.
pub struct Context<O> {
    siblings: Vec<Sibling<O>>,
    /// Exactly one sibling, which takes everything: `send`'s fast path.
    single: bool,
    /// Batches closed since the edges' counts were last published.
    unpublished: u32,
    /// The port of an output value, once an edge is attached to a port (see [`Ports`]).
    ///
    /// [`Ports`]: crate::Ports
    port_of: Option<fn(&O) -> usize>,
    core: Arc<Core>,
    /// Mirror of `core.counters.sent`, which only this agent writes.
    sent: u64,
    /// Mirror of `core.counters.outputs`, and whether sends are deferred (see [`Tally`]).
    tally: Tally,
    timers: Vec<Timer>,
    next_timer: u64,
    /// The asker of the message being handled, if it came from [`Handle::ask`]: everything the
    /// handler sends goes there instead.
    ///
    /// [`Handle::ask`]: crate::Handle::ask
    pub(crate) asker: Option<Asker<O>>,
    /// Whether the message being handled came over the bus a second time or more.
    pub(crate) redelivered: bool,
    /// Whether a handler asked for [`Backend::idle`](crate::Backend::idle) (see
    /// [`when_idle`](Self::when_idle)).
    pub(crate) idle_wanted: bool,
    /// While a replica handles a routed query: what measures it for the routing, told whether
    /// it went well. A backend whose answer comes later (a remote entity's) takes it, and tells
    /// it when the answer comes; otherwise the agent tells it as the handler returns.
    pub(crate) completion: Option<Completion>,
    /// Whether the backend takes `completion` (a remote entity's does): only then is it boxed
    /// and offered.
    pub(crate) takes_completion: bool,
}

/// How a routed query ended, for the routing's measure (see `Context::completion`).
pub(crate) type Completion = Box<dyn FnOnce(bool) + Send>;

impl<O> fmt::Debug for Context<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("entity", &self.core.name)
            .field("siblings", &self.siblings)
            .finish_non_exhaustive()
    }
}

impl<O: Send + 'static> Context<O> {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Context {
            siblings: Vec::new(),
            single: false,
            unpublished: 0,
            port_of: None,
            core,
            sent: 0,
            tally: Tally::default(),
            timers: Vec::new(),
            next_timer: 0,
            asker: None,
            redelivered: false,
            idle_wanted: false,
            completion: None,
            takes_completion: false,
        }
    }

    pub(crate) fn add_sibling(&mut self, sibling: Sibling<O>) {
        self.siblings.push(sibling);
        self.single = self.siblings.len() == 1 && self.siblings[0].port.is_none();
    }

    /// Drops the edges to the entity `target` (it is being removed from the running system).
    pub(crate) fn remove_siblings_to(&mut self, target: Uuid) {
        self.siblings.retain(|s| s.id != Some(target));
        self.single = self.siblings.len() == 1 && self.siblings[0].port.is_none();
    }

    /// The agent's entity.
    #[cfg(feature = "bus")]
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Routes outputs by port from now on: `port_of` tells the port of a value.
    pub(crate) fn route_by(&mut self, port_of: fn(&O) -> usize) {
        self.port_of = Some(port_of);
    }

    /// The port of `out`, if the output has ports that edges are attached to.
    #[inline]
    fn port_of(&self, out: &O) -> Option<usize> {
        self.port_of.map(|port_of| port_of(out))
    }

    /// The name of this agent's entity.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The id of this agent's entity.
    pub fn id(&self) -> Uuid {
        self.core.id
    }

    /// This agent's outgoing edges, in the order they were added.
    pub fn siblings(&self) -> impl ExactSizeIterator<Item = &Sibling<O>> {
        self.siblings.iter()
    }

    // Counted before anything is enqueued, so that no sibling can be seen to have handled a
    // message that is not yet seen sent (see `System::quiescent`).
    #[inline]
    fn count_sent(&mut self, n: u64) {
        self.sent += n;
        self.core.counters.sent.store(self.sent, Ordering::Release);
    }

    #[inline]
    fn deliver(sibling: &mut Sibling<O>, out: O, core: &Core, sent: &mut u64, tally: &mut Tally) -> Result<(), Error> {
        match sibling.outlet.send(out, tally.defer) {
            Ok(Sent::Now) => {
                sibling.carried_one();
                if sibling.kind == EdgeKind::Output {
                    tally.outputs += 1;
                    core.counters.outputs.store(tally.outputs, Ordering::Release);
                }
                Ok(())
            }
            Ok(Sent::Deferred) => {
                sibling.carried_one();
                tally.deferred = true;
                Ok(())
            }
            Err(kind) => Err(Self::refused(sibling, kind, core, sent)),
        }
    }

    /// Publishes what each edge carried, for [`System::edges`](crate::System::edges): when the
    /// agent goes idle or ends, and every [`PUBLISH_EVERY`] batches while it is busy, rather
    /// than per message (which for a fan-out to sixteen cost sixteen stores to sixteen cache
    /// lines per message, and for a pipeline in lockstep a loop per message). Only this agent
    /// writes them.
    pub(crate) fn publish_carried(&mut self) {
        self.unpublished = 0;
        for sibling in &self.siblings {
            sibling.published.store(sibling.carried, Ordering::Relaxed);
        }
    }

    /// Publishes what each edge carried if [`PUBLISH_EVERY`] batches have closed since it last
    /// did (see [`publish_carried`](Self::publish_carried)).
    #[inline]
    pub(crate) fn publish_carried_now_and_then(&mut self) {
        self.unpublished += 1;
        if self.unpublished >= PUBLISH_EVERY {
            self.publish_carried();
        }
    }

    /// Makes sends to full bounded queues and outputs deferred rather than waited for (the
    /// agents of the pool runtime, which must not hold their worker).
    pub(crate) fn defer_when_full(&mut self) {
        self.tally.defer = true;
    }

    /// Whether some sends wait for room (see [`flush`](Self::flush)).
    #[inline]
    pub(crate) fn has_deferred(&self) -> bool {
        self.tally.deferred
    }

    /// Delivers the sends deferred for want of room, in order, as far as there is room now;
    /// says what the agent must wait for before the rest can go, and the first refusal of the
    /// sends given up (which the agent reports as its handler's error). `me`, the agent's task,
    /// is registered with each entity whose queue is full, to be woken when it has room.
    #[cold]
    pub(crate) fn flush(&mut self, me: Option<&Arc<Task>>) -> (Waiting, Option<Error>) {
        let mut waiting = Waiting::No;
        let mut error = None;
        for sibling in &mut self.siblings {
            let flushed = sibling.outlet.flush(me);
            if sibling.kind == EdgeKind::Output && flushed.delivered > 0 {
                self.tally.outputs += flushed.delivered;
                self.core.counters.outputs.store(self.tally.outputs, Ordering::Release);
            }
            if flushed.dropped > 0 {
                self.sent -= flushed.dropped;
                self.core.counters.sent.store(self.sent, Ordering::Release);
                sibling.carried -= flushed.dropped;
            }
            if let Some(kind) = flushed.refused {
                error.get_or_insert_with(|| Error::new(kind, sibling.name.clone()));
            }
            waiting = waiting.max(flushed.waiting);
        }
        self.tally.deferred = waiting != Waiting::No;
        (waiting, error)
    }

    /// Takes back the count of a message a sibling refused, and names the sibling.
    #[cold]
    fn refused(sibling: &Sibling<O>, kind: ErrorKind, core: &Core, sent: &mut u64) -> Error {
        *sent -= 1;
        core.counters.sent.store(*sent, Ordering::Release);
        Error::new(kind, sibling.name.clone())
    }

    /// Whether the message being handled was delivered before (with the `bus` feature): it
    /// came from another process over the bus, and a reader took it already once (in a process
    /// that died before acknowledging it, say). At-least-once delivery means a handler may see
    /// a message twice; this tells it when it might be the second time.
    pub fn is_redelivery(&self) -> bool {
        self.redelivered
    }

    /// Whether the message being handled came from [`Handle::ask`](crate::Handle::ask): then
    /// everything the handler sends, by any of the `send` methods, goes to the asker alone.
    /// A backend that streams (a language model, say) can stream its pieces when asked and
    /// send nothing else.
    pub fn is_asked(&self) -> bool {
        self.asker.is_some()
    }

    /// Sends `out` to the asker of the message being handled. Counted as an output: it leaves
    /// the system at once.
    #[cold]
    #[inline(never)]
    fn answer(&mut self, out: O) -> Result<(), Error> {
        self.count_sent(1);
        self.tally.outputs += 1;
        self.core.counters.outputs.store(self.tally.outputs, Ordering::Release);
        self.asker.as_ref().expect("answering an ask").send(out);
        Ok(())
    }

    /// Sends `out` to every sibling: each gets a clone, the last one the value itself. With no
    /// siblings, `out` is dropped. While the handler answers an ask (see
    /// [`is_asked`](Self::is_asked)), this and the other `send` methods send to the asker only.
    ///
    /// A sibling that has stopped or failed does not stop the others from getting the message;
    /// the first refusal is returned. The error is `Send + Sync` whatever `O` is, so `?` turns it
    /// into the handler's [`BoxError`](crate::BoxError).
    // Always inlined into the handler: one sibling, the common case, is then a counter store and
    // a call through the edge.
    #[inline(always)]
    pub fn send(&mut self, out: O) -> Result<(), Error>
    where
        O: Clone,
    {
        if self.asker.is_some() {
            return self.answer(out);
        }
        if self.single {
            self.count_sent(1);
            Self::deliver(&mut self.siblings[0], out, &self.core, &mut self.sent, &mut self.tally)
        } else {
            self.broadcast(out)
        }
    }

    /// [`send`](Self::send) to any number of siblings, or to one attached to a port.
    fn broadcast(&mut self, out: O) -> Result<(), Error>
    where
        O: Clone,
    {
        if self.port_of.is_some() {
            let port = self.port_of(&out);
            return self.send_matching(out, |s| s.takes(port));
        }
        // No ports: every sibling takes it, with no filtering (a fan-out's hot path).
        if self.siblings.is_empty() {
            return Ok(());
        }
        self.count_sent(self.siblings.len() as u64);
        let (last, rest) = self.siblings.split_last_mut().expect("not empty");
        let mut first_err = None;
        for sibling in rest {
            if let Err(e) = Self::deliver(sibling, out.clone(), &self.core, &mut self.sent, &mut self.tally) {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = Self::deliver(last, out, &self.core, &mut self.sent, &mut self.tally) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sends `out` to every sibling that `matches`, each a clone and the last the value itself,
    /// and returns the first refusal.
    fn send_matching(&mut self, out: O, matches: impl Fn(&Sibling<O>) -> bool) -> Result<(), Error>
    where
        O: Clone,
    {
        let count = self.siblings.iter().filter(|s| matches(s)).count();
        if count == 0 {
            return Ok(());
        }
        self.count_sent(count as u64);
        let mut first_err = None;
        let mut out = Some(out);
        let mut left = count;
        for sibling in self.siblings.iter_mut().filter(|s| matches(s)) {
            left -= 1;
            let body = if left == 0 { out.take() } else { out.clone() }.expect("taken only by the last");
            if let Err(e) = Self::deliver(sibling, body, &self.core, &mut self.sent, &mut self.tally) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sends `out` to the sibling called `name` only, moving it. When the output has ports, the
    /// sibling must take `out`'s port (an edge of the whole output takes every port).
    pub fn send_to(&mut self, name: &str, out: O) -> Result<(), Error> {
        if self.asker.is_some() {
            return self.answer(out);
        }
        let port = self.port_of(&out);
        let Some(i) = self.siblings.iter().position(|s| &*s.name == name && s.takes(port)) else {
            return Err(Error::new(ErrorKind::UnknownSibling, Arc::from(name)));
        };
        self.count_sent(1);
        Self::deliver(&mut self.siblings[i], out, &self.core, &mut self.sent, &mut self.tally)
    }

    /// Sends `out` to every sibling but the one called `name` (which need not exist), as
    /// [`send`](Self::send) does: the first refusal is returned.
    pub fn send_except(&mut self, name: &str, out: O) -> Result<(), Error>
    where
        O: Clone,
    {
        if self.asker.is_some() {
            return self.answer(out);
        }
        let port = self.port_of(&out);
        self.send_matching(out, |s| &*s.name != name && s.takes(port))
    }

    /// Asks for one call of [`Backend::idle`](crate::Backend::idle) once the agent has handled
    /// every message queued for it, before it waits for more. A backend that gathers work
    /// (entries for a broker, rows for one transaction) asks when it keeps the first of a
    /// batch, and sends the batch there: a burst then goes out together, and a lone message
    /// right away. Asking again before then changes nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// /// Sends on the numbers it was given, summed, whenever it runs out of them.
    /// #[derive(Default)]
    /// struct Summer {
    ///     sum: Option<u64>,
    /// }
    ///
    /// impl Backend for Summer {
    ///     type Input = u64;
    ///     type Output = u64;
    ///
    ///     fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
    ///         *self.sum.get_or_insert(0) += n;
    ///         ctx.when_idle();
    ///         Ok(())
    ///     }
    ///
    ///     fn idle(&mut self, ctx: &mut Context<u64>) -> Result<(), BoxError> {
    ///         if let Some(sum) = self.sum.take() {
    ///             ctx.send(sum)?;
    ///         }
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let summer = builder.entity("summer", Summer::default());
    /// let sums = builder.output(&summer, "sums");
    /// let system = builder.spawn()?;
    /// system.handle(&summer).query(5)?;
    /// assert_eq!(sums.recv()?, 5);
    /// # system.shutdown(std::time::Duration::from_secs(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn when_idle(&mut self) {
        self.idle_wanted = true;
    }

    /// Asks the whole system to stop, as a person typing `/quit` would. The system's owner sees
    /// the request through [`System::wait_for_stop`](crate::System::wait_for_stop) or
    /// [`System::join`](crate::System::join), which then shuts the system down gracefully.
    pub fn stop_system(&self) {
        self.core.shared.request_stop();
    }

    /// Sets a timer that fires every `period`, first after one period, on this agent's thread
    /// (no helper thread). Each firing runs [`Backend::timer`](crate::Backend::timer). Ticks
    /// missed while the agent was busy are skipped, not queued up. Timers stop when the system
    /// begins to shut down.
    pub fn every(&mut self, period: Duration) -> TimerId {
        self.add_timer(period, Some(period.max(Duration::from_micros(1))))
    }

    /// Sets a timer that fires once, after `delay`. A delay too long for the clock
    /// (`Duration::MAX`, say) never fires.
    pub fn after(&mut self, delay: Duration) -> TimerId {
        self.add_timer(delay, None)
    }

    fn add_timer(&mut self, delay: Duration, period: Option<Duration>) -> TimerId {
        let id = TimerId(self.next_timer);
        self.next_timer += 1;
        self.timers.push(Timer { id, next: Instant::now().checked_add(delay), period });
        id
    }

    /// Cancels a timer; returns whether it was still set.
    pub fn cancel(&mut self, timer: TimerId) -> bool {
        let before = self.timers.len();
        self.timers.retain(|t| t.id != timer);
        self.timers.len() != before
    }

    pub(crate) fn has_timers(&self) -> bool {
        !self.timers.is_empty()
    }

    pub(crate) fn clear_timers(&mut self) {
        self.timers.clear();
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.iter().filter_map(|t| t.next).min()
    }

    /// Takes the earliest timer due at `now`: a periodic one is moved to its next tick, a
    /// one-shot one is removed.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerId> {
        let (i, _) = self
            .timers
            .iter()
            .enumerate()
            .filter(|(_, t)| t.next.is_some_and(|next| next <= now))
            .min_by_key(|(_, t)| t.next)?;
        let timer = &mut self.timers[i];
        let id = timer.id;
        match timer.period {
            Some(period) => {
                // The first tick after `now`, skipping missed ones; never, past the clock's end.
                if let Some(next) = timer.next {
                    let steps = now.saturating_duration_since(next).as_nanos() / period.as_nanos().max(1) + 1;
                    let ahead = u64::try_from(steps * period.as_nanos()).ok().map(Duration::from_nanos);
                    timer.next = ahead.and_then(|ahead| next.checked_add(ahead));
                }
            }
            None => {
                self.timers.swap_remove(i);
            }
        }
        Some(id)
    }
}
