//! The agent: an entity's thread. It waits on its two queues, runs the backend, and keeps the counts.

use std::any::Any;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use crossbeam_utils::Backoff;

use crate::backend::{Backend, BoxBackend};
use crate::context::{Context, Waiting};
use crate::entity::{Core, EntityState, Envelope, Msg, Outcome, Port, Tracked};
use crate::err::BoxError;
use crate::latency::Histogram;
use crate::message::HandlerKind;
use crate::pool::{Runnable, Step};
use crate::replicas::{Routed, reroute};
use crate::reply::{Asker, ReplyErrorKind};
use crate::restart::{FactoryFailed, Supervisor};
use crate::shared::{Failure, PanicError};
use crate::window::Window;

pub(crate) struct Agent<I, O> {
    /// The entity's core, held directly: the port's own cache line takes the reference-count
    /// traffic of handles sending from outside.
    core: Arc<Core>,
    port: Arc<Port<I, O>>,
    queries: Receiver<Msg<I>>,
    inbox: Receiver<Msg<Envelope<I, O>>>,
    /// The span the message being handled was sent from (see [`Msg`]).
    #[cfg(feature = "tracing")]
    cause: tracing::Span,
    /// Whether the last message came from the inbox rather than the query queue.
    from_inbox: bool,
    /// Messages taken since the agent last looked at the other queue first.
    streak: u32,
    backend: BoxBackend<I, O>,
    pub(crate) ctx: Context<O>,
    /// The restart policy and factory, if the entity has them.
    supervisor: Option<Supervisor<I, O>>,
    /// Whether the entity's queues are bounded: taking a message then wakes senders waiting
    /// for room.
    bounded: bool,
    /// Whether the `start` hook has run (the pool runtime runs it in the agent's first turn).
    started: bool,
    /// How the agent ended, while it still has deferred sends to deliver (pool runtime).
    ending: Option<EntityState>,
    /// The kind of the last handler run: a deferred send given up is its error.
    last_kind: HandlerKind,
    timing: Timing,
    // Mirrors of the counters only this agent writes, so that publishing one is a plain store.
    received: u64,
    handled: u64,
    dropped: u64,
    errors: u64,
    panics: u64,
    restarts: u64,
    activations: u64,
    activations_done: u64,
    max_queued: u64,
    /// Batches under a microsecond since one was last recorded in the handling histogram.
    fast_batches: u32,
    /// Full batches (and pool turns that ran out of budget): every `DEPTH_EVERY`th notes the
    /// queues' depth.
    full_batches: u32,
    /// The quarter-second of the last batch closed, and the messages handled in it (see
    /// `Stats::per_second`).
    bucket: u64,
    in_bucket: u64,
    /// A measure of the queues' waiting time under way: how many of the messages queued when
    /// it began are still to be taken, and when it began (raw clock ticks).
    probe: Option<(u64, u64)>,
    /// Times the queues ran dry: every `DEPTH_EVERY`th is a wait of nothing.
    idles: u32,
    /// Messages received when the waiting time was last sampled: the next sample stands for
    /// those since.
    sampled_at: u64,
    max_wait: u64,
    /// What the last handler that failed said (an error's text, or a panic's message), for
    /// the sender of a tracked message.
    last_failure: Option<String>,
}

/// What an entity holds between dropping a backend that panicked and getting the next one from
/// its factory, or when its first factory call failed (and `spawn` refuses the system). Never
/// handles a message: if the factory fails, the entity fails.
struct Vacant<I, O>(PhantomData<fn(I) -> O>);

impl<I: Send + 'static, O: Send + 'static> Backend for Vacant<I, O> {
    type Input = I;
    type Output = O;

    fn query(&mut self, _: I, _: &mut Context<O>) -> Result<(), BoxError> {
        Err("the entity has no backend".into())
    }
}

pub(crate) fn vacant<I: Send + 'static, O: Send + 'static>() -> BoxBackend<I, O> {
    Box::new(Vacant(PhantomData))
}

/// Times handling in batches of messages rather than one by one.
///
/// A clock read costs about 10 ns (a TSC read), which is half of what crossbeam needs to move a
/// message from one thread to the next; reading it per message would make timing the biggest
/// cost of a busy pipeline. So the clock is read when the queue runs dry and every `stride`
/// messages, and `stride` adapts so that a batch lasts about a microsecond: one message at a
/// time for slow handlers (exact timings), up to 64 for fast ones. Total busy time stays exact;
/// the maximum is exact for messages timed alone and otherwise over-estimates by at most the
/// batch's other messages, about a microsecond.
struct Timing {
    clock: quanta::Clock,
    /// When the open batch began (raw clock ticks).
    mark: u64,
    /// Messages handled in the open batch.
    pending: u32,
    stride: u32,
    /// Clock ticks in a microsecond.
    ticks_per_us: u64,
    busy: u64,
    max: u64,
}

const MAX_STRIDE: u32 = 64;

/// One in this many full batches notes the depth of the agent's queues (see `Stats::max_queued`).
const DEPTH_EVERY: u32 = 16;

/// One in this many batches under a microsecond is recorded in the handling histogram, weighted
/// to stand for the others.
const FAST_SAMPLE: u32 = 16;

/// When both of an agent's queues hold messages, it takes about this many from one before it
/// turns to the other.
const FAIRNESS: u32 = 16;

impl Timing {
    fn new(clock: quanta::Clock) -> Self {
        let ns_per_million_ticks = clock.delta_as_nanos(0, 1_000_000).max(1);
        let ticks_per_us = (1_000_000_000 / ns_per_million_ticks).max(1);
        Timing { mark: clock.raw(), clock, pending: 0, stride: 1, ticks_per_us, busy: 0, max: 0 }
    }

    /// Starts a batch after the agent has waited (on its queue or a timer).
    fn restart(&mut self) {
        self.mark = self.clock.raw();
        self.pending = 0;
    }

    /// Counts a handled message; returns whether the batch is full and must be closed.
    #[inline]
    fn handled_one(&mut self) -> bool {
        self.pending += 1;
        self.pending >= self.stride
    }

    /// Closes the open batch; returns how long it took, its messages, and whether the maximum
    /// grew (`None` if it had no message).
    fn close(&mut self) -> Option<(u64, u32, bool)> {
        if self.pending == 0 {
            return None;
        }
        let now = self.clock.raw();
        let took = now.saturating_sub(self.mark);
        let n = self.pending;
        self.mark = now;
        self.pending = 0;
        self.busy += took;
        if took < self.ticks_per_us / 2 {
            self.stride = (self.stride * 2).min(MAX_STRIDE);
        } else if took > self.ticks_per_us {
            self.stride = (self.stride / 2).max(1);
        }
        let grew = took > self.max;
        self.max = self.max.max(took);
        Some((took, n, grew))
    }
}

/// A message taken from one of the agent's two queues.
enum Incoming<I, O> {
    /// A query of a query edge.
    Query(I),
    /// Anything from the inbox.
    Envelope(Envelope<I, O>),
}

/// Whether the agent goes on after a message.
enum Next {
    Continue,
    End(EntityState),
}

/// How long an agent waiting for room in a full output channel waits before it looks again:
/// nobody tells it when the reader makes room.
const OUTPUT_RETRY: Duration = Duration::from_millis(1);

/// Whether the agent goes on after a handler.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Failed,
}

impl<I: Send + 'static, O: Send + 'static> Agent<I, O> {
    pub(crate) fn new(
        port: Arc<Port<I, O>>,
        backend: BoxBackend<I, O>,
        supervisor: Option<Supervisor<I, O>>,
        bounded: bool,
    ) -> Self {
        Agent {
            supervisor,
            bounded,
            started: false,
            ending: None,
            last_kind: HandlerKind::Query,
            queries: port.queries_rx.clone(),
            inbox: port.inbox_rx.clone(),
            #[cfg(feature = "tracing")]
            cause: tracing::Span::none(),
            from_inbox: false,
            streak: 0,
            ctx: Context::new(port.core.clone()),
            timing: Timing::new(port.core.shared.clock.clone()),
            core: port.core.clone(),
            port,
            backend,
            received: 0,
            handled: 0,
            dropped: 0,
            errors: 0,
            panics: 0,
            restarts: 0,
            activations: 0,
            activations_done: 0,
            max_queued: 0,
            // The first fast batch is recorded, so that an entity that handled anything has a
            // distribution.
            fast_batches: FAST_SAMPLE - 1,
            full_batches: DEPTH_EVERY - 1,
            bucket: u64::MAX,
            in_bucket: 0,
            probe: None,
            idles: 0,
            sampled_at: 0,
            max_wait: 0,
            last_failure: None,
        }
    }

    fn core(&self) -> &Core {
        &self.core
    }

    /// Gives the agent another backend before it starts (a replicated entity's front).
    pub(crate) fn replace_backend(&mut self, backend: BoxBackend<I, O>) {
        self.backend = backend;
    }

    /// Whether the backend says it blocks (see [`Backend::blocking`]).
    pub(crate) fn blocking(&self) -> bool {
        self.backend.blocking()
    }

    /// Runs the agent on the calling thread, its own, until it ends.
    pub(crate) fn run(mut self) {
        self.core.enter();
        self.started = true;
        let end = match self.activate(HandlerKind::Start, |b, ctx| b.start(ctx)) {
            Flow::Failed => EntityState::Failed,
            Flow::Continue => self.serve(),
        };
        self.finish(end);
    }

    /// Makes this agent one of the pool's: its sends to full bounded queues are deferred
    /// rather than waited for (see [`Context::flush`]).
    pub(crate) fn pooled(mut self) -> PoolAgent<I, O> {
        self.ctx.defer_when_full();
        PoolAgent { agent: Some(self) }
    }

    /// The loop of an agent with a thread of its own: two queues (see [`Port`]), a clock read
    /// per batch of messages (see [`Timing`]), and plain stores to counters only this thread
    /// writes.
    fn serve(&mut self) -> EntityState {
        loop {
            if self.ctx.has_timers() && self.fire_due_timer() == Flow::Failed {
                return EntityState::Failed;
            }
            let incoming = match self.try_next() {
                Some(incoming) => incoming,
                None => {
                    self.ran_dry();
                    if self.ctx.idle_wanted && self.idle() == Flow::Failed {
                        return EntityState::Failed;
                    }
                    self.close_batch();
                    let incoming = self.wait();
                    self.timing.restart();
                    match incoming {
                        Some(incoming) => incoming,
                        // A timer is due: the top of the loop fires it.
                        None => continue,
                    }
                }
            };
            if let Next::End(state) = self.dispatch(incoming) {
                return state;
            }
        }
    }

    /// One turn of an agent of the pool runtime: at most `budget` messages, then it tells its
    /// worker whether it is idle, has more to do, waits for room, or has ended (`Err`).
    fn turn(&mut self, budget: u32) -> Result<Step, EntityState> {
        if !self.started {
            self.started = true;
            if self.activate(HandlerKind::Start, |b, ctx| b.start(ctx)) == Flow::Failed {
                return Err(EntityState::Failed);
            }
        }
        self.timing.restart();
        for _ in 0..budget {
            if self.ctx.has_deferred()
                && let Some(step) = self.flush()
            {
                self.close_batch();
                return Ok(step);
            }
            if self.ctx.has_timers() && self.fire_due_timer() == Flow::Failed {
                return Err(EntityState::Failed);
            }
            let Some(incoming) = self.try_next() else {
                self.ran_dry();
                if self.ctx.idle_wanted && self.idle() == Flow::Failed {
                    return Err(EntityState::Failed);
                }
                self.close_batch();
                if self.ctx.has_deferred()
                    && let Some(step) = self.flush()
                {
                    return Ok(step);
                }
                self.ctx.publish_carried();
                return Ok(Step::Idle(self.ctx.next_deadline()));
            };
            if let Next::End(state) = self.dispatch(incoming) {
                return Err(state);
            }
        }
        // The turn's budget ran out with messages still queued: a backlog, noted now and then.
        self.full_batches = self.full_batches.wrapping_add(1);
        if self.full_batches.is_multiple_of(DEPTH_EVERY) {
            self.note_depth();
        }
        self.close_batch();
        Ok(Step::Yield)
    }

    /// Sends what the last handlers deferred for want of room (see [`Context::flush`]); `None`
    /// once all of it is sent, or how the agent waits for room.
    fn flush(&mut self) -> Option<Step> {
        let task = self.core.task.get().cloned();
        let (waiting, error) = self.ctx.flush(task.as_ref());
        if let Some(error) = error {
            self.failed(self.last_kind, Box::new(error));
        }
        match waiting {
            Waiting::No => {
                // The messages whose sends were deferred are handled now.
                self.core.counters.handled.store(self.handled, Ordering::Release);
                None
            }
            // Whoever makes room wakes the agent.
            Waiting::OnEntity => Some(Step::Blocked(None)),
            // Nobody says when an output channel has room: look again shortly.
            Waiting::OnOutput => Some(Step::Blocked(Some(Instant::now() + OUTPUT_RETRY))),
        }
    }

    /// Handles one message; `End` when the agent is done.
    #[inline(always)]
    fn dispatch(&mut self, incoming: Incoming<I, O>) -> Next {
        self.took_one();
        if self.bounded {
            // A sender may wait for the room this message made.
            self.core.room.wake();
        }
        let flow = match incoming {
            Incoming::Query(body) | Incoming::Envelope(Envelope::Query(body)) => self.handle(HandlerKind::Query, body),
            Incoming::Envelope(Envelope::Read(body)) => self.handle(HandlerKind::Read, body),
            Incoming::Envelope(Envelope::Ask(ask)) => {
                let (body, asker) = *ask;
                self.handle_ask(body, asker)
            }
            Incoming::Envelope(Envelope::Routed(routed)) => self.handle_routed(*routed),
            Incoming::Envelope(Envelope::Tracked(tracked)) => {
                let Tracked { body, read, redelivered, done, asker } = *tracked;
                let (errors, panics) = (self.errors, self.panics);
                self.ctx.redelivered = redelivered;
                self.ctx.asker = asker;
                let flow = self.handle(if read { HandlerKind::Read } else { HandlerKind::Query }, body);
                if let Some(asker) = self.ctx.asker.take() {
                    asker.finish();
                }
                self.ctx.redelivered = false;
                let outcome = self.outcome(self.errors == errors && self.panics == panics);
                done.tell(outcome);
                flow
            }
            Incoming::Envelope(Envelope::Nop) => {
                let flow = self.catch_up();
                self.close_batch();
                return Next::End(match flow {
                    Flow::Continue => self.cleanup(),
                    Flow::Failed => EntityState::Failed,
                });
            }
            Incoming::Envelope(Envelope::Visit(visit)) => {
                // Not a message: kept out of the handling time. The function catches its own
                // panics (see `System::for_each`).
                self.close_batch();
                (*visit)(&mut self.backend, &mut self.ctx);
                self.timing.restart();
                Flow::Continue
            }
            Incoming::Envelope(Envelope::Swap(request)) => {
                if self.catch_up() == Flow::Failed {
                    let _ = request.reply.send(Err(request.backend));
                    return Next::End(EntityState::Failed);
                }
                self.close_batch();
                let old = std::mem::replace(&mut self.backend, request.backend);
                #[cfg(feature = "tracing")]
                tracing::info!(entity = %self.core.name, "backend swapped");
                let _ = request.reply.send(Ok(old));
                self.timing.restart();
                Flow::Continue
            }
        };
        match flow {
            Flow::Continue => Next::Continue,
            Flow::Failed => Next::End(EntityState::Failed),
        }
    }

    /// The next message, if either queue holds one.
    ///
    /// It keeps to the queue that gave the last message, whose cache lines are warm, and looks
    /// at the other one every [`FAIRNESS`] messages and whenever that queue runs dry, so that
    /// neither starves the other. Looking at an idle queue is two loads.
    #[inline(always)]
    fn try_next(&mut self) -> Option<Incoming<I, O>> {
        self.streak += 1;
        if self.streak >= FAIRNESS {
            self.streak = 0;
            if let Some(incoming) = self.try_other() {
                return Some(incoming);
            }
        }
        let last = if self.from_inbox {
            self.inbox.try_recv().ok().map(|m| Incoming::Envelope(self.open(m)))
        } else {
            self.queries.try_recv().ok().map(|m| Incoming::Query(self.open(m)))
        };
        last.or_else(|| self.try_other())
    }

    /// The body of a message taken from a queue; with the `tracing` feature, its sender's span
    /// is kept for the handler's.
    #[inline(always)]
    fn open<T>(&mut self, msg: Msg<T>) -> T {
        #[cfg(feature = "tracing")]
        {
            self.cause = msg.cause;
        }
        msg.body
    }

    /// Takes a message from the queue that did not give the last one, if it holds one.
    fn try_other(&mut self) -> Option<Incoming<I, O>> {
        let other = if self.from_inbox {
            if self.queries.is_empty() {
                None
            } else {
                self.queries.try_recv().ok().map(|m| Incoming::Query(self.open(m)))
            }
        } else if self.inbox.is_empty() {
            None
        } else {
            self.inbox.try_recv().ok().map(|m| Incoming::Envelope(self.open(m)))
        };
        if other.is_some() {
            self.from_inbox = !self.from_inbox;
        }
        other
    }

    /// Waits for a message on either queue, or until the next timer is due (`None`).
    ///
    /// Like crossbeam's own `recv`, it first spins and yields a few times, since a message is
    /// often only a moment away in a busy graph; then it sleeps until a sender wakes it.
    fn wait(&mut self) -> Option<Incoming<I, O>> {
        let backoff = Backoff::new();
        while !backoff.is_completed() {
            backoff.snooze();
            if let Some(incoming) = self.try_next() {
                return Some(incoming);
            }
        }
        // About to sleep: what the edges carried is published now, exactly.
        self.ctx.publish_carried();
        let (queries, inbox) = (&self.queries, &self.inbox);
        // The port keeps a sender of each queue, so neither ever disconnects.
        const KEPT: &str = "the port keeps a sender of each queue";
        let taken = match self.ctx.next_deadline() {
            None => crossbeam_channel::select! {
                recv(queries) -> body => Some(Ok(body.expect(KEPT))),
                recv(inbox) -> env => Some(Err(env.expect(KEPT))),
            },
            Some(deadline) => crossbeam_channel::select! {
                recv(queries) -> body => Some(Ok(body.expect(KEPT))),
                recv(inbox) -> env => Some(Err(env.expect(KEPT))),
                default(deadline.saturating_duration_since(Instant::now())) => None,
            },
        };
        match taken? {
            Ok(query) => Some(Incoming::Query(self.open(query))),
            Err(env) => Some(Incoming::Envelope(self.open(env))),
        }
    }

    /// Handles the queries of query edges that were queued before the stop or swap the inbox
    /// just gave, so that it takes its place after everything queued before it, in either queue.
    ///
    /// The agent is the queue's only receiver and the stop or swap was enqueued before this
    /// looks, so every query enqueued before it is among the first `len()` in the queue.
    fn catch_up(&mut self) -> Flow {
        for _ in 0..self.queries.len() {
            let Ok(msg) = self.queries.try_recv() else { break };
            self.took_one();
            let body = self.open(msg);
            if self.handle(HandlerKind::Query, body) == Flow::Failed {
                return Flow::Failed;
            }
        }
        Flow::Continue
    }

    /// Notes how many messages wait in the queues now, if more than ever before; and, unless
    /// one is under way, starts a measure of how long a message arriving now will wait: the
    /// time until the messages queued ahead of it are taken (see `Stats::waiting`).
    #[cold]
    fn note_depth(&mut self) {
        let depth = (self.queries.len() + self.inbox.len()) as u64;
        if depth > self.max_queued {
            self.max_queued = depth;
            self.core.counters.max_queued.store(depth, Ordering::Relaxed);
        }
        if self.probe.is_none() {
            if depth == 0 {
                self.sample_wait(0);
            } else {
                self.probe = Some((depth, self.timing.clock.raw()));
            }
        }
    }

    /// Counts a message taken from the queues against the waiting-time measure under way.
    #[inline(always)]
    fn took_one(&mut self) {
        if let Some((ahead, started)) = &mut self.probe {
            *ahead -= 1;
            if *ahead == 0 {
                let started = *started;
                self.probe = None;
                let waited = self.timing.clock.raw().saturating_sub(started);
                self.sample_wait(waited);
            }
        }
    }

    /// Runs [`Backend::idle`], which a handler asked for (see [`Context::when_idle`]).
    #[cold]
    #[inline(never)]
    fn idle(&mut self) -> Flow {
        self.ctx.idle_wanted = false;
        self.activate(HandlerKind::Idle, |b, ctx| b.idle(ctx))
    }

    /// The queues ran dry: every `DEPTH_EVERY`th time, a message arriving now waits for
    /// nothing.
    #[inline]
    fn ran_dry(&mut self) {
        self.idles = self.idles.wrapping_add(1);
        if self.idles.is_multiple_of(DEPTH_EVERY) && self.probe.is_none() {
            self.sample_wait(0);
        }
    }

    /// Records a waiting time, standing for every message received since the last one.
    #[cold]
    fn sample_wait(&mut self, ticks: u64) {
        let weight = u32::try_from(self.received.saturating_sub(self.sampled_at)).unwrap_or(u32::MAX).max(1);
        self.sampled_at = self.received;
        self.core.waiting.get_or_init(|| Box::new(Histogram::new())).record(ticks, 1, weight);
        if ticks > self.max_wait {
            self.max_wait = ticks;
            self.core.counters.max_wait_ticks.store(ticks, Ordering::Relaxed);
        }
    }

    /// Closes the open timing batch and publishes busy and maximum time.
    fn close_batch(&mut self) {
        self.ctx.publish_carried_now_and_then();
        let counters = &self.core.counters;
        if let Some((took, n, grew)) = self.timing.close() {
            if grew {
                counters.max_ticks.store(self.timing.max, Ordering::Relaxed);
            }
            // Each message of the batch at the batch's mean (one message, for slow handlers).
            // Batches under a microsecond are sampled, one in `FAST_SAMPLE` standing for them
            // all: a pipeline in lockstep closes a batch per message, at some 40 ns a hop.
            // What was handled in this quarter-second, for the throughput of the last second.
            let ticks_per_second = self.timing.ticks_per_us * 1_000_000;
            let window = self.core.window.get_or_init(|| Box::new(Window::new(ticks_per_second)));
            let bucket = window.bucket(self.timing.mark);
            if bucket != self.bucket {
                self.bucket = bucket;
                self.in_bucket = 0;
            }
            self.in_bucket += u64::from(n);
            window.note(bucket, self.in_bucket);
            if took >= self.timing.ticks_per_us {
                self.core.handling.get_or_init(|| Box::new(Histogram::new())).record(took, n, 1);
            } else {
                self.fast_batches += 1;
                if self.fast_batches >= FAST_SAMPLE {
                    self.fast_batches = 0;
                    self.core.handling.get_or_init(|| Box::new(Histogram::new())).record(took, n, FAST_SAMPLE);
                }
            }
        }
        counters.busy_ticks.store(self.timing.busy, Ordering::Relaxed);
    }

    /// Runs the earliest timer that is due, if any.
    fn fire_due_timer(&mut self) -> Flow {
        match self.ctx.pop_due(Instant::now()) {
            Some(id) => {
                // A timer's run is not a message's: keep it out of the handling time.
                self.close_batch();
                let flow = self.activate(HandlerKind::Timer, |b, ctx| b.timer(id, ctx));
                self.timing.restart();
                flow
            }
            None => Flow::Continue,
        }
    }

    /// Runs a query or read handler and counts it.
    #[inline(always)]
    fn handle(&mut self, kind: HandlerKind, body: I) -> Flow {
        self.last_kind = kind;
        self.received += 1;
        self.core().counters.received.store(self.received, Ordering::Relaxed);
        // A span per message, the child of the one it was sent from: a conversation is a tree.
        // `seq` numbers the entity's messages from 1.
        #[cfg(feature = "tracing")]
        let span = tracing::info_span!(
            parent: std::mem::replace(&mut self.cause, tracing::Span::none()).id(),
            "handle",
            entity = %self.core.name,
            kind = ?kind,
            seq = self.received,
        );
        #[cfg(feature = "tracing")]
        let _entered = span.enter();
        let (backend, ctx) = (&mut self.backend, &mut self.ctx);
        let result = catch_unwind(AssertUnwindSafe(|| match kind {
            HandlerKind::Read => backend.read(body, ctx),
            _ => backend.query(body, ctx),
        }));
        if self.timing.handled_one() {
            // A full batch: the agent is working through a backlog, whose depth is noted now
            // and then (reading a queue's length touches the cache lines its senders write).
            self.full_batches = self.full_batches.wrapping_add(1);
            if self.full_batches.is_multiple_of(DEPTH_EVERY) {
                self.note_depth();
            }
            self.close_batch();
        } else if result.is_err() {
            self.close_batch();
        }
        match result {
            Ok(result) => {
                if let Err(error) = result {
                    self.failed(kind, error);
                }
                // Published last, with release: it marks the message done (see
                // `System::quiescent`). A message whose sends wait for room (pool runtime) is
                // done once they are delivered, as it would be in a system of threads, where
                // its handler waits in `send`.
                self.handled += 1;
                if !self.ctx.has_deferred() {
                    self.core.counters.handled.store(self.handled, Ordering::Release);
                }
                Flow::Continue
            }
            Err(payload) => {
                let flow = self.panicked(kind, payload);
                // Done, after the restart if there was one: the system is not idle before.
                self.dropped += 1;
                self.core.counters.dropped.store(self.dropped, Ordering::Release);
                flow
            }
        }
    }

    /// Handles a query from [`Handle::ask`](crate::Handle::ask): what the handler sends goes to
    /// the asker, and the reply ends when the handler returns (an error or panic ends it on
    /// the way, in `failed` or `panicked`).
    fn handle_ask(&mut self, body: I, asker: Asker<O>) -> Flow {
        self.ctx.asker = Some(asker);
        let flow = self.handle(HandlerKind::Query, body);
        if let Some(asker) = self.ctx.asker.take() {
            asker.finish();
        }
        flow
    }

    /// Handles a query (or ask) routed here as a replica, and tells its sender how it went; or,
    /// if this replica has been culled since, passes it on to another.
    #[inline(never)]
    fn handle_routed(&mut self, routed: Routed<I, O>) -> Flow {
        if routed.ticket.should_reroute() {
            match reroute(routed) {
                Ok(()) => {
                    self.core.counters.rerouted.fetch_add(1, Ordering::AcqRel);
                    return Flow::Continue;
                }
                // No other replica takes it after all: handled here.
                Err(routed) => return self.handle_routed_here(routed),
            }
        }
        self.handle_routed_here(routed)
    }

    fn handle_routed_here(&mut self, routed: Routed<I, O>) -> Flow {
        let Routed { body, asker, ticket, tracked } = routed;
        let (errors, panics) = (self.errors, self.panics);
        // A message from the bus is not retried here: the bus delivers it again.
        let spare = if tracked.is_some() { None } else { ticket.spare(&body, asker.is_some()) };
        self.ctx.redelivered = tracked.as_ref().is_some_and(|t| t.redelivered);
        let retrier = ticket.retrier();
        let began = Instant::now();
        // A backend whose answer comes later (a remote entity's) takes the measure, to tell it
        // when the answer comes; for the others it is told here, as the handler returns.
        let mut ticket = Some(ticket);
        if self.ctx.takes_completion
            && let Some(ticket) = ticket.take()
        {
            self.ctx.completion = Some(Box::new(move |ok| ticket.complete(ok, began)));
        }
        let flow = match asker {
            Some(asker) => self.handle_ask(body, asker),
            None => self.handle(HandlerKind::Query, body),
        };
        let panicked = self.panics != panics;
        if panicked
            && let Some(body) = spare
            && retrier.retry(body)
        {
            self.core.counters.rerouted.fetch_add(1, Ordering::AcqRel);
        }
        let ok = self.errors == errors && !panicked;
        if let Some(ticket) = ticket {
            ticket.complete(ok, began);
        } else if let Some(complete) = self.ctx.completion.take() {
            complete(ok);
        }
        self.ctx.redelivered = false;
        if let Some(tracked) = tracked {
            let outcome = self.outcome(ok);
            tracked.done.tell(outcome);
        }
        flow
    }

    /// How the handler of a message from the bus ended, for its sender: `ok`, or the failure.
    fn outcome(&mut self, ok: bool) -> Outcome {
        if ok { Outcome::Handled } else { Outcome::Failed(self.last_failure.take().unwrap_or_default()) }
    }

    /// Counts and reports a handler's `Err`, and ends the reply of an ask with it.
    #[cold]
    fn failed(&mut self, kind: HandlerKind, error: BoxError) {
        self.errors += 1;
        self.core.counters.errors.store(self.errors, Ordering::Relaxed);
        let error: Arc<dyn std::error::Error + Send + Sync> = error.into();
        self.last_failure = Some(error.to_string());
        if let Some(asker) = self.ctx.asker.take() {
            asker.fail(ReplyErrorKind::Failed, Some(error.clone()));
        }
        self.report(kind, error, false);
    }

    /// Runs a handler that no message asked for (`start`, a timer), unless the system is
    /// shutting down.
    fn activate(
        &mut self,
        kind: HandlerKind,
        f: impl FnOnce(&mut BoxBackend<I, O>, &mut Context<O>) -> Result<(), BoxError>,
    ) -> Flow {
        // Announce the run, then look at `stopping`; the shutdown sets `stopping`, then reads
        // the announcements. With both sides sequentially consistent, either this run sees
        // `stopping` and does not start, or the shutdown sees the run and waits for it.
        self.last_kind = kind;
        self.activations += 1;
        self.core.counters.activations.store(self.activations, Ordering::SeqCst);
        let flow = if self.core.shared.stopping.load(Ordering::SeqCst) {
            self.ctx.clear_timers();
            Flow::Continue
        } else {
            let (backend, ctx) = (&mut self.backend, &mut self.ctx);
            match catch_unwind(AssertUnwindSafe(|| f(backend, ctx))) {
                Ok(Ok(())) => Flow::Continue,
                Ok(Err(error)) => {
                    self.failed(kind, error);
                    Flow::Continue
                }
                Err(payload) => self.panicked(kind, payload),
            }
        };
        self.activations_done += 1;
        self.core.counters.activations_done.store(self.activations_done, Ordering::SeqCst);
        flow
    }

    /// Handles `Nop`: the backend cleans up and the agent ends.
    fn cleanup(&mut self) -> EntityState {
        // Refuse new messages before cleaning up, so that what the cleanup sends to siblings
        // and what others send here are both accounted for.
        self.core().set_state(EntityState::Stopped);
        let (backend, ctx) = (&mut self.backend, &mut self.ctx);
        match catch_unwind(AssertUnwindSafe(|| backend.nop(ctx))) {
            Ok(Ok(())) => EntityState::Stopped,
            Ok(Err(error)) => {
                self.failed(HandlerKind::Nop, error);
                EntityState::Stopped
            }
            // A stopping entity is not restarted.
            Err(payload) => match self.panicked(HandlerKind::Nop, payload) {
                Flow::Continue => EntityState::Stopped,
                Flow::Failed => EntityState::Failed,
            },
        }
    }

    /// Records and reports a handler's panic, then restarts the entity if its policy allows
    /// (never for `nop`: the entity is stopping) or marks it failed.
    #[cold]
    fn panicked(&mut self, kind: HandlerKind, payload: Box<dyn Any + Send>) -> Flow {
        let message = panic_message(&*payload);
        self.last_failure = Some(format!("panicked: {message}"));
        #[cfg(feature = "tracing")]
        tracing::error!(entity = %self.core.name, handler = ?kind, panic = %message, "handler panicked");
        // A payload that panics when dropped must not take the agent down.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        *self.core.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
        self.count_panic();
        let restart = kind != HandlerKind::Nop && self.supervisor.is_some();
        if !restart {
            // Marked failed before it is reported, so that no one sends it more work.
            self.core.set_state(EntityState::Failed);
        }
        let error = Arc::new(PanicError::new(message));
        if let Some(asker) = self.ctx.asker.take() {
            asker.fail(ReplyErrorKind::Panicked, Some(error.clone()));
        }
        self.report(kind, error, true);
        if restart { self.restart() } else { Flow::Failed }
    }

    /// Rebuilds the backend with the factory, if the policy allows one more restart, and runs
    /// the new backend's `start`. The queue, the id and the handles are kept.
    #[cold]
    fn restart(&mut self) -> Flow {
        let supervisor = self.supervisor.as_mut().expect("only entities with a policy restart");
        if let Err(limit) = supervisor.admit(Instant::now()) {
            return self.give_up(Arc::new(limit), false);
        }
        // The old backend's timers go with it. It is dropped before the factory runs, so that
        // what it holds (a file, a port, a child process) is free for the new one.
        self.ctx.clear_timers();
        let old = std::mem::replace(&mut self.backend, vacant());
        self.drop_backend(old);
        let supervisor = self.supervisor.as_mut().expect("only entities with a policy restart");
        match catch_unwind(AssertUnwindSafe(|| (supervisor.factory)())) {
            Ok(Ok(backend)) => self.backend = backend,
            Ok(Err(error)) => return self.give_up(Arc::new(FactoryFailed(error)), false),
            Err(payload) => {
                self.count_panic();
                let panic = PanicError::new(panic_message(&*payload));
                return self.give_up(Arc::new(FactoryFailed(Box::new(panic))), true);
            }
        }
        self.restarts += 1;
        self.core.counters.restarts.store(self.restarts, Ordering::Relaxed);
        #[cfg(feature = "tracing")]
        tracing::warn!(entity = %self.core.name, restarts = self.restarts, "backend restarted after a panic");
        self.activate(HandlerKind::Start, |b, ctx| b.start(ctx))
    }

    /// Ends a restart that could not be done: the entity fails, saying why.
    fn give_up(&mut self, why: Arc<dyn std::error::Error + Send + Sync>, panicked: bool) -> Flow {
        self.core.set_state(EntityState::Failed);
        self.report(HandlerKind::Restart, why, panicked);
        Flow::Failed
    }

    fn count_panic(&mut self) {
        self.panics += 1;
        self.core.counters.panics.store(self.panics, Ordering::Relaxed);
    }

    /// Drops a backend; a panic in its `Drop` is counted and reported, and goes no further.
    fn drop_backend(&mut self, backend: BoxBackend<I, O>) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(backend))) {
            self.count_panic();
            self.report(HandlerKind::Drop, Arc::new(PanicError::new(panic_message(&*payload))), true);
        }
    }

    fn report(&self, kind: HandlerKind, error: Arc<dyn std::error::Error + Send + Sync>, panicked: bool) {
        let core = self.core();
        core.shared.report(Failure { entity: core.name.to_string(), id: core.id, kind, error, panicked });
    }

    fn finish(mut self, end: EntityState) {
        // What the `nop` and the last flush sent.
        self.ctx.publish_carried();
        self.core.set_state(end);
        self.port.drain();
        let backend = std::mem::replace(&mut self.backend, vacant());
        self.drop_backend(backend);
        let Agent { port, ctx, supervisor, .. } = self;
        // The factory and the context (with its siblings' senders) go before the agent signs off.
        drop((ctx, supervisor));
        port.core.ended.store(true, Ordering::Release);
        port.core.shared.agent_ended();
    }
}

/// An agent of the pool runtime, run in turns by the pool's workers.
pub(crate) struct PoolAgent<I, O> {
    /// `None` once it has ended.
    agent: Option<Agent<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Runnable for PoolAgent<I, O> {
    fn turn(&mut self, budget: u32) -> Step {
        let Some(agent) = self.agent.as_mut() else { return Step::Done };
        agent.core.enter();
        let end = match agent.ending {
            // Ended, with sends still to deliver: the sends first.
            Some(state) => match agent.flush() {
                Some(step) => {
                    agent.core.leave();
                    return step;
                }
                None => state,
            },
            None => match agent.turn(budget) {
                Ok(step) => {
                    agent.core.leave();
                    return step;
                }
                Err(state) => state,
            },
        };
        if agent.ctx.has_deferred() {
            agent.ending = Some(end);
            if let Some(step) = agent.flush() {
                agent.core.leave();
                return step;
            }
        }
        agent.core.leave();
        let agent = self.agent.take().expect("checked above");
        agent.finish(end);
        Step::Done
    }
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
