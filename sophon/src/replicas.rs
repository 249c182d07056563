//! Replicas: one entity served by several backends, each running as an agent of its own, with
//! every query routed to the replica its sender measures cheapest.
//!
//! The entity keeps one name, one id and one typed handle: it is a node of the graph (the
//! *front*) whose agent handles nothing in the normal course. Whoever sends to it routes each
//! message there and then, with no hop through the front: an edge into the entity holds a
//! [`RouteOutlet`], a handle holds the set's view for handles. Each of these relationships keeps
//! its own measure of each replica (a [`Lane`]): peak-EWMA of the time from its send to the end
//! of the handler (queue wait and handling), and the messages it has in flight there. It picks by
//! power of two choices: two live replicas at random, the one of lower cost, where cost is the
//! estimate times (in flight + 1), as tower's `balance::p2c` over `PeakEwma` and Finagle's
//! aperture do.
//!
//! A replica that fails three messages in a row, or whose handler takes twice in a row more than
//! four times the median of the others' (and a millisecond more), is culled: it gets no new messages but
//! probes, the first after 50 ms and then each after twice as long as the last (up to 2 s), and
//! rejoins when a probe succeeds (in time, if it was culled as slow). The last live replica is
//! never culled. A culled replica passes the messages queued at it on to the others instead of
//! handling them, and so does the queue of one that stops or fails (a panic without a restart
//! policy): nothing queued is lost, and each replica counts what it passed on
//! ([`Stats::rerouted`](crate::Stats::rerouted)).
//!
//! Reads are not routed: every running replica takes each read, so that replicas that keep state
//! (a conversation) keep the same. Queries (and asks) go to one replica each.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::context::{Context, Flushed, Outlet, Sent, Waiting, retry_after_registering};
use crate::entity::{Core, Done, EntityState, Envelope, Port, Tracked};
use crate::err::{BoxError, ErrorKind};
use crate::pool::Task;
use crate::reply::{Asker, ReplyErrorKind};

/// How fast an estimate forgets: a sample `DECAY` old weighs `1/e` of a new one, and an
/// estimate left alone for `DECAY` falls to `1/e` of itself, so that a replica avoided as slow is
/// tried again.
const DECAY: Duration = Duration::from_secs(5);
/// Failures in a row (errors or panics) that cull a replica.
const CULL_AFTER_FAILURES: u32 = 3;
/// A replica whose estimate is above this many times the median of the others' is culled as
/// slow...
const SLOW_FACTOR: f64 = 4.0;
/// ...if it is also this far above it, so that microseconds of noise cull nothing.
const SLOW_MARGIN: Duration = Duration::from_millis(1);
/// Handlers in a row each that much slower that cull a replica as slow: one late answer (a
/// page fault, a preempted thread) culls nothing.
const SLOW_IN_A_ROW: u32 = 2;
/// A probe of a replica culled as slow must take at most this many times the others' median for
/// it to rejoin.
const REJOIN_FACTOR: f64 = 2.0;
/// The first probe of a culled replica comes this long after it was culled; each failed probe
/// doubles the wait, up to `PROBE_MAX`.
const PROBE_FIRST: Duration = Duration::from_millis(50);
const PROBE_MAX: Duration = Duration::from_secs(2);
/// The cost of a replica no one has measured: the cheapest known one's, at least this.
const COST_FLOOR_NS: f64 = 1_000.0;

/// The relationship of a system's handles to a replicated entity, in a [`Ranking`].
pub const HANDLES: &str = "handles";

/// A query or ask routed to one replica, with what its sender needs to learn from it.
pub(crate) struct Routed<I, O> {
    pub(crate) body: I,
    pub(crate) asker: Option<Asker<O>>,
    pub(crate) ticket: Ticket<I, O>,
    /// For a message from the bus: what its sender is told when the handler ends.
    pub(crate) tracked: Option<Box<TrackedPart>>,
}

/// A refusal, with the bus's part of the message given back.
type RefusedTracked<I, O> = (Refused<I, O>, Option<Box<TrackedPart>>);

/// What a routed message from the bus carries besides its body (see `Envelope::Tracked`).
pub(crate) struct TrackedPart {
    pub(crate) redelivered: bool,
    pub(crate) done: Done,
}

/// Who sent a routed message, to which replica, when, and whether it probes a culled replica.
pub(crate) struct Ticket<I, O> {
    view: Arc<View<I, O>>,
    member: Arc<Member<I, O>>,
    lane: Arc<Lane>,
    sent: Instant,
    probe: bool,
    /// Whether the message is a retry of one whose handler panicked at another replica.
    retry: bool,
}

impl<I: Send + 'static, O: Send + 'static> Ticket<I, O> {
    /// A copy of the body to try again at another replica if this one's handler panics: a
    /// query (not an ask, whose asker hears of the panic) that is not a retry already.
    pub(crate) fn spare(&self, body: &I, asked: bool) -> Option<I> {
        (!asked && !self.retry).then(|| (self.view.set.clone)(body))
    }

    /// What retries the message elsewhere if its handler panics here (see [`Retrier::retry`]),
    /// kept apart from the ticket, which the handler may take (see `Context::completion`).
    pub(crate) fn retrier(&self) -> Retrier<I, O> {
        Retrier { view: self.view.clone(), member: self.member.clone() }
    }

    /// Whether the replica it was sent to has been culled since, and the message should go to
    /// another one rather than be handled here (never a probe, and never when no other replica
    /// could take it).
    pub(crate) fn should_reroute(&self) -> bool {
        !self.probe && self.member.culled.load(Ordering::Acquire) && self.view.set.has_live_other(self.member.slot)
    }

    /// Tells the sender's lane and the replica's health how the handler went.
    /// The sender's lane learns the message's whole time, from its send to the end of its
    /// handler (`began` is when the handler began): what routing weighs. The replica's health
    /// learns the handler's time alone: a replica with a backlog is busy, not sick.
    pub(crate) fn complete(self, ok: bool, began: Instant) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.sent).as_nanos() as f64;
        let service = now.saturating_duration_since(began).as_nanos() as f64;
        if !ok {
            self.lane.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.lane.done(rtt, now, self.member.epoch.load(Ordering::Acquire));
        self.view.set.observe(&self.member, ok, service, self.probe, now);
    }

    /// Takes a message that will never be handled off its lane.
    pub(crate) fn complete_undelivered(self) {
        self.abandon();
    }

    /// Takes the message off its lane without a measure: it was passed on.
    fn abandon(&self) {
        self.lane.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Retries a routed query whose handler panicked at another replica.
pub(crate) struct Retrier<I, O> {
    view: Arc<View<I, O>>,
    member: Arc<Member<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Retrier<I, O> {
    /// Sends the copy of a message whose handler panicked here to another replica, once. The
    /// copy is a message more than its sender sent: the front counts it as its send, so that
    /// every message handled is one sent. False if no other replica takes it.
    pub(crate) fn retry(&self, body: I) -> bool {
        let sent = &self.view.set.front.counters.sent;
        sent.fetch_add(1, Ordering::AcqRel);
        match self.view.route_as(body, None, Some(self.member.slot), Push::Wait, true, None) {
            Ok(()) => true,
            Err(_) => {
                sent.fetch_sub(1, Ordering::AcqRel);
                false
            }
        }
    }
}

/// Passes a routed message taken from a culled, stopped or failed replica's queue on to another
/// replica. `Err` if none takes it: the caller handles it, or counts it undelivered.
pub(crate) fn reroute<I: Send + 'static, O: Send + 'static>(routed: Routed<I, O>) -> Result<(), Routed<I, O>> {
    let Routed { body, asker, ticket, tracked } = routed;
    ticket.abandon();
    let view = ticket.view.clone();
    match view.route_as(body, asker, Some(ticket.member.slot), Push::Wait, ticket.retry, tracked) {
        Ok(()) => {
            // Counted where it went instead: shares add up to what was sent.
            ticket.member.routed.fetch_sub(1, Ordering::Relaxed);
            ticket.lane.sent.fetch_sub(1, Ordering::Relaxed);
            Ok(())
        }
        Err((refused, tracked)) => {
            let (body, asker) = refused.into_parts();
            // Back on the lane it came from, for whoever handles or drops it.
            ticket.lane.in_flight.fetch_add(1, Ordering::AcqRel);
            Err(Routed { body, asker, ticket, tracked })
        }
    }
}

/// Routes a handle's query, read or ask (see `Handle::send_external`); gives the envelope back
/// if no replica takes it.
pub(crate) fn route_envelope<I: Send + 'static, O: Send + 'static>(
    view: &Arc<View<I, O>>,
    env: Envelope<I, O>,
) -> Result<(), (Envelope<I, O>, ErrorKind)> {
    let refused = |refused: Refused<I, O>| match refused {
        Refused::Stopped(body, asker, kind) => (body, asker, kind),
        Refused::Full(..) => unreachable!("waiting sends are never refused as full"),
    };
    match env {
        Envelope::Query(body) => view.route(body, None, None, Push::Wait).map_err(|r| {
            let (body, _, kind) = refused(r);
            (Envelope::Query(body), kind)
        }),
        Envelope::Ask(ask) => {
            let (body, asker) = *ask;
            view.route(body, Some(asker), None, Push::Wait).map_err(|r| {
                let (body, asker, kind) = refused(r);
                (Envelope::Ask(Box::new((body, asker.expect("an ask keeps its asker")))), kind)
            })
        }
        Envelope::Read(body) => {
            view.set.broadcast(body, Push::Wait).map_err(|(body, kind)| (Envelope::Read(body), kind))
        }
        // A message whose end its sender is told of (the bus): a query is routed as a handle's
        // is, and a read goes to every replica.
        Envelope::Tracked(tracked) => {
            let Tracked { body, read, redelivered, done, asker } = *tracked;
            let back =
                |body, asker, done| Envelope::Tracked(Box::new(Tracked { body, read, redelivered, done, asker }));
            if read {
                return view
                    .set
                    .broadcast_tracked(body, redelivered, done)
                    .map_err(|(body, kind)| (back(body, None, Done::told()), kind));
            }
            let part = Box::new(TrackedPart { redelivered, done });
            view.route_as(body, asker, None, Push::Wait, false, Some(part)).map_err(|(r, part)| {
                let (body, asker, kind) = refused(r);
                (back(body, asker, part.map_or_else(Done::told, |p| p.done)), kind)
            })
        }
        _ => unreachable!("handles send queries, reads, asks and tracked messages"),
    }
}

/// A peak-sensitive, exponentially weighted moving average of latencies, in nanoseconds, that
/// decays while no sample comes (tower's `PeakEwma`, Finagle's `PeakEwma`).
#[derive(Clone, Copy, Debug)]
struct Ewma {
    ns: f64,
    at: Instant,
    known: bool,
}

impl Ewma {
    fn new(now: Instant) -> Self {
        Ewma { ns: 0.0, at: now, known: false }
    }

    /// A slower sample is taken at once; a faster one is blended in, weighted by how long it has
    /// been since the last.
    fn observe(&mut self, sample: f64, now: Instant) {
        if !self.known || sample > self.ns {
            self.ns = sample;
        } else {
            let w = decay(now.saturating_duration_since(self.at));
            self.ns = self.ns * w + sample * (1.0 - w);
        }
        self.known = true;
        self.at = now;
    }

    /// The estimate now: what it was, decayed over the time since the last sample.
    fn current(&self, now: Instant) -> Option<f64> {
        self.known.then(|| self.ns * decay(now.saturating_duration_since(self.at)))
    }

    fn reset(&mut self, sample: f64, now: Instant) {
        *self = Ewma { ns: sample, at: now, known: true };
    }
}

fn decay(elapsed: Duration) -> f64 {
    (-(elapsed.as_nanos() as f64) / DECAY.as_nanos() as f64).exp()
}

/// One relationship's measure of one replica.
pub(crate) struct Lane {
    in_flight: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    estimate: Mutex<(Ewma, u64)>,
}

impl Lane {
    fn new(now: Instant) -> Self {
        Lane {
            in_flight: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            estimate: Mutex::new((Ewma::new(now), 0)),
        }
    }

    fn done(&self, rtt: f64, now: Instant, epoch: u64) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let mut estimate = lock(&self.estimate);
        if estimate.1 != epoch {
            // The replica rejoined since this lane measured it: what it knew is stale.
            *estimate = (Ewma::new(now), epoch);
        }
        estimate.0.observe(rtt, now);
    }

    /// The estimate now, if the lane has one that is not older than the replica's last rejoin.
    fn estimate(&self, now: Instant, member: &MemberHealthView) -> Option<f64> {
        let estimate = lock(&self.estimate);
        if estimate.1 != member.epoch {
            return member.rejoined_at;
        }
        estimate.0.current(now)
    }
}

/// What a lane needs of its replica to read its estimate.
struct MemberHealthView {
    epoch: u64,
    /// The probe's latency that let it rejoin, as the estimate of lanes that knew it before.
    rejoined_at: Option<f64>,
}

/// Why a replica was culled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cull {
    Failing,
    Slow,
}

struct Health {
    /// Failures in a row.
    failures: u32,
    /// The replica's handler time, over all relationships: a plain moving average (each
    /// answer weighs a fifth), against which the others' slowness is judged. Not peak-sensitive:
    /// a replica's passing hiccup must not make the others look fast.
    service: Option<f64>,
    /// Answers in a row far slower than the others'.
    slow_in_a_row: u32,
    culled: Option<Cull>,
    next_probe: Option<Instant>,
    backoff: Duration,
    culls: u64,
    rejoined_at: Option<f64>,
}

/// One replica of a set: an entity of the system with its own agent and queues.
pub(crate) struct Member<I, O> {
    pub(crate) port: Arc<Port<I, O>>,
    slot: usize,
    culled: AtomicBool,
    /// Bumped at each rejoin: lanes measured before it start over.
    epoch: AtomicU64,
    /// The replica's estimate in nanoseconds (`f64` bits; `u64::MAX`: none yet), for the others
    /// to take the median of without locking.
    estimate_bits: AtomicU64,
    /// Messages routed to it, from any relationship: its share.
    pub(crate) routed: Arc<AtomicU64>,
    health: Mutex<Health>,
}

impl<I, O> Member<I, O> {
    fn running(&self) -> bool {
        self.port.core.state() == EntityState::Running
    }

    fn live(&self) -> bool {
        self.running() && !self.culled.load(Ordering::Acquire)
    }

    fn estimate(&self) -> Option<f64> {
        let bits = self.estimate_bits.load(Ordering::Acquire);
        (bits != u64::MAX).then(|| f64::from_bits(bits))
    }

    fn health_view(&self) -> MemberHealthView {
        let epoch = self.epoch.load(Ordering::Acquire);
        let rejoined_at = if epoch == 0 { None } else { lock(&self.health).rejoined_at };
        MemberHealthView { epoch, rejoined_at }
    }
}

/// The replicas of a set, as one reading of them: added ones come in a new slice.
pub(crate) type Members<I, O> = Arc<[Arc<Member<I, O>>]>;

/// The replicas of one entity, and every relationship's view of them.
pub(crate) struct ReplicaSet<I, O> {
    /// The entity: the front's core (name, id, state).
    pub(crate) front: Arc<Core>,
    members: RwLock<Members<I, O>>,
    views: Mutex<Vec<Arc<View<I, O>>>>,
    handles: OnceLock<Arc<View<I, O>>>,
    /// Copies a body, for reads, which every replica takes.
    clone: fn(&I) -> I,
    /// Saved rankings to start from (see [`SystemBuilder::rankings`]).
    ///
    /// [`SystemBuilder::rankings`]: crate::SystemBuilder::rankings
    seeds: Arc<Mutex<Vec<Ranking>>>,
    /// The edges out of the entity, to give a replica added later (see
    /// `SystemBuilder::add_replica`).
    outs: Mutex<Vec<Replay<I, O>>>,
}

/// Adds one of a replicated entity's edges (or outputs) to a replica of it.
pub(crate) type Replay<I, O> = Arc<dyn Fn(&mut crate::SystemBuilder, &crate::Node<I, O>) + Send + Sync>;

impl<I: Send + 'static, O: Send + 'static> ReplicaSet<I, O> {
    pub(crate) fn new(front: Arc<Core>, clone: fn(&I) -> I, seeds: Arc<Mutex<Vec<Ranking>>>) -> Self {
        ReplicaSet {
            front,
            members: RwLock::new(Arc::from(Vec::new())),
            views: Mutex::new(Vec::new()),
            handles: OnceLock::new(),
            clone,
            seeds,
            outs: Mutex::new(Vec::new()),
        }
    }

    /// Remembers an edge out of the entity, for replicas added later.
    pub(crate) fn add_out(&self, replay: Replay<I, O>) {
        lock(&self.outs).push(replay);
    }

    /// The edges out of the entity, to give a new replica.
    pub(crate) fn outs(&self) -> Vec<Replay<I, O>> {
        lock(&self.outs).clone()
    }

    /// Adds a replica, whose routed messages are counted in `routed`.
    pub(crate) fn add(&self, port: Arc<Port<I, O>>, routed: Arc<AtomicU64>) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let member = Arc::new(Member {
            port,
            slot: members.len(),
            culled: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            estimate_bits: AtomicU64::new(u64::MAX),
            routed: routed.clone(),
            health: Mutex::new(Health {
                failures: 0,
                service: None,
                slow_in_a_row: 0,
                culled: None,
                next_probe: None,
                backoff: PROBE_FIRST,
                culls: 0,
                rejoined_at: None,
            }),
        });
        let mut all: Vec<_> = members.iter().cloned().collect();
        all.push(member);
        *members = Arc::from(all);
    }

    pub(crate) fn members(&self) -> Members<I, O> {
        self.members.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A relationship's view of the replicas: an edge into the entity (named after its source).
    pub(crate) fn view(self: &Arc<Self>, relationship: &str) -> Arc<View<I, O>> {
        let view = Arc::new(View {
            set: self.clone(),
            relationship: Arc::from(relationship),
            lanes: RwLock::new(Vec::new()),
            seeded: OnceLock::new(),
        });
        lock(&self.views).push(view.clone());
        view
    }

    /// The view every handle of the entity shares.
    pub(crate) fn handles_view(self: &Arc<Self>) -> Arc<View<I, O>> {
        self.handles.get_or_init(|| self.view(HANDLES)).clone()
    }

    /// Whether a replica other than `slot` is running and not culled.
    fn has_live_other(&self, slot: usize) -> bool {
        self.members().iter().any(|m| m.slot != slot && m.live())
    }

    /// The median of the estimates of the live replicas other than `slot`, if any has one.
    fn median_of_others(&self, slot: usize) -> Option<f64> {
        let mut estimates: Vec<f64> =
            self.members().iter().filter(|m| m.slot != slot && m.live()).filter_map(|m| m.estimate()).collect();
        if estimates.is_empty() {
            return None;
        }
        estimates.sort_by(f64::total_cmp);
        Some(estimates[estimates.len() / 2])
    }

    /// Learns from a handled message (its handler's time, `service`): culls a replica that keeps
    /// failing or is far slower than the others, and lets a culled one whose probe went well
    /// rejoin.
    fn observe(&self, member: &Member<I, O>, ok: bool, service: f64, probe: bool, now: Instant) {
        let median = self.median_of_others(member.slot);
        let mut health = lock(&member.health);
        if ok {
            health.failures = 0;
        } else {
            health.failures += 1;
        }
        let average = health.service.map_or(service, |average| average * 0.8 + service * 0.2);
        health.service = Some(average);
        let far_slower = median
            .is_some_and(|median| service > median * SLOW_FACTOR && service > median + SLOW_MARGIN.as_nanos() as f64);
        health.slow_in_a_row = if far_slower { health.slow_in_a_row + 1 } else { 0 };
        let estimate = average;
        member.estimate_bits.store(estimate.to_bits(), Ordering::Release);
        match health.culled {
            Some(why) if probe => {
                let healthy = ok
                    && match (why, median) {
                        (Cull::Slow, Some(median)) => service <= median * REJOIN_FACTOR,
                        _ => true,
                    };
                if healthy {
                    health.culled = None;
                    health.next_probe = None;
                    health.backoff = PROBE_FIRST;
                    health.failures = 0;
                    health.slow_in_a_row = 0;
                    health.service = Some(service);
                    health.rejoined_at = Some(service);
                    member.estimate_bits.store(service.to_bits(), Ordering::Release);
                    member.epoch.fetch_add(1, Ordering::AcqRel);
                    member.culled.store(false, Ordering::Release);
                    #[cfg(feature = "tracing")]
                    tracing::info!(replica = %member.port.core.name, probe_ns = service as u64, "replica rejoined");
                }
            }
            Some(_) => {}
            None => {
                let slow = health.slow_in_a_row >= SLOW_IN_A_ROW;
                let failing = health.failures >= CULL_AFTER_FAILURES;
                if (slow || failing) && self.has_live_other(member.slot) {
                    health.culled = Some(if failing { Cull::Failing } else { Cull::Slow });
                    health.backoff = PROBE_FIRST;
                    health.next_probe = Some(now + PROBE_FIRST);
                    health.culls += 1;
                    member.culled.store(true, Ordering::Release);
                    #[cfg(feature = "tracing")]
                    tracing::warn!(
                        replica = %member.port.core.name,
                        reason = if failing { "failing" } else { "slow" },
                        estimate_ns = estimate as u64,
                        "replica culled",
                    );
                }
            }
        }
    }

    /// Sends a read to every running replica: a copy each, the last the body itself. The copies
    /// beyond the first are counted as the front's sends, so that every copy handled is a
    /// message sent. `Err` with the body if no replica took it.
    pub(crate) fn broadcast(&self, body: I, push: Push) -> Result<(), (I, ErrorKind)> {
        let running: Vec<_> = self.members().iter().filter(|m| m.running()).cloned().collect();
        let Some((last, rest)) = running.split_last() else {
            return Err((body, ErrorKind::Stopped));
        };
        let sent = &self.front.counters.sent;
        sent.fetch_add(rest.len() as u64, Ordering::AcqRel);
        let mut taken = 0;
        for member in rest {
            if push.push(&member.port, Envelope::Read((self.clone)(&body))).is_ok() {
                taken += 1;
            } else {
                sent.fetch_sub(1, Ordering::AcqRel);
            }
        }
        match push.push(&last.port, Envelope::Read(body)) {
            Ok(()) => Ok(()),
            Err((Envelope::Read(body), kind)) => {
                if taken == 0 {
                    Err((body, kind))
                } else {
                    // One copy fewer than counted: the last replica's stands for it.
                    sent.fetch_sub(1, Ordering::AcqRel);
                    Ok(())
                }
            }
            Err(_) => unreachable!("a read was sent"),
        }
    }

    /// A read from the bus to every running replica, each a copy; its sender is told once every
    /// copy is handled (see [`Done::split`]). Gives the body back if no replica takes it.
    pub(crate) fn broadcast_tracked(&self, body: I, redelivered: bool, done: Done) -> Result<(), (I, ErrorKind)> {
        let running: Vec<_> = self.members().iter().filter(|m| m.running()).cloned().collect();
        let Some((last, rest)) = running.split_last() else {
            return Err((body, ErrorKind::Stopped));
        };
        let mut parts = done.split(running.len());
        let mut part = || parts.pop().expect("a part per replica");
        let sent = &self.front.counters.sent;
        sent.fetch_add(rest.len() as u64, Ordering::AcqRel);
        let mut taken = 0;
        let tracked =
            |body, done| Envelope::Tracked(Box::new(Tracked { body, read: true, redelivered, done, asker: None }));
        for member in rest {
            // A copy refused is dropped, and its part tells that it was not handled.
            if Push::Wait.push(&member.port, tracked((self.clone)(&body), part())).is_ok() {
                taken += 1;
            } else {
                sent.fetch_sub(1, Ordering::AcqRel);
            }
        }
        match Push::Wait.push(&last.port, tracked(body, part())) {
            Ok(()) => Ok(()),
            Err((Envelope::Tracked(refused), kind)) => {
                let Tracked { body, done, .. } = *refused;
                drop(done);
                if taken == 0 {
                    Err((body, kind))
                } else {
                    // One copy fewer than counted: the last replica's stands for it.
                    sent.fetch_sub(1, Ordering::AcqRel);
                    Ok(())
                }
            }
            Err(_) => unreachable!("a tracked read was sent"),
        }
    }

    /// Each relationship's ranking of the replicas, cheapest first.
    pub(crate) fn rankings(&self) -> Vec<Ranking> {
        let now = Instant::now();
        let members = self.members();
        // A relationship that has sent nothing and was given no saved ranking knows nothing.
        lock(&self.views)
            .iter()
            .map(|view| view.ranking(&members, now))
            .filter(|r| r.replicas.iter().any(|r| r.sent > 0 || r.estimate.is_some()))
            .collect()
    }
}

/// How a routed message is put in a replica's inbox.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Wait for room in a full bounded queue (a thread of its own, or a handle).
    Wait,
    /// Only if there is room now (an agent of the pool runtime).
    Offer,
}

impl Push {
    fn push<I, O>(self, port: &Port<I, O>, env: Envelope<I, O>) -> Result<(), (Envelope<I, O>, ErrorKind)> {
        match self {
            Push::Wait => port.inbox.push(env, &port.core),
            Push::Offer => port.inbox.offer(env, &port.core).map_err(|env| (env, ErrorKind::Stopped)),
        }
    }
}

/// Why a route failed: no replica takes messages, or (offering) every one tried was full.
pub(crate) enum Refused<I, O> {
    Stopped(I, Option<Asker<O>>, ErrorKind),
    Full(I, Option<Asker<O>>, Arc<Core>),
}

impl<I, O> Refused<I, O> {
    fn into_parts(self) -> (I, Option<Asker<O>>) {
        match self {
            Refused::Stopped(body, asker, _) | Refused::Full(body, asker, _) => (body, asker),
        }
    }
}

thread_local! {
    /// A xorshift state per thread for the power of two choices.
    static RNG: Cell<u64> = Cell::new({
        let seed = std::collections::hash_map::RandomState::new();
        std::hash::BuildHasher::hash_one(&seed, std::thread::current().id()) | 1
    });
}

fn random(below: usize) -> usize {
    RNG.with(|rng| {
        let mut x = rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rng.set(x);
        (x % below as u64) as usize
    })
}

/// One relationship with a replicated entity (an edge into it, or its handles): its own measure
/// of each replica.
pub(crate) struct View<I, O> {
    set: Arc<ReplicaSet<I, O>>,
    relationship: Arc<str>,
    lanes: RwLock<Vec<Arc<Lane>>>,
    seeded: OnceLock<()>,
}

impl<I: Send + 'static, O: Send + 'static> View<I, O> {
    pub(crate) fn set(&self) -> &Arc<ReplicaSet<I, O>> {
        &self.set
    }

    fn lane(&self, slot: usize, now: Instant) -> Arc<Lane> {
        if let Some(lane) = self.lanes.read().unwrap_or_else(|e| e.into_inner()).get(slot) {
            return lane.clone();
        }
        let mut lanes = self.lanes.write().unwrap_or_else(|e| e.into_inner());
        while lanes.len() <= slot {
            lanes.push(Arc::new(Lane::new(now)));
        }
        lanes[slot].clone()
    }

    /// Starts the lanes from a saved ranking of this relationship (or of another relationship
    /// with the same entity), once.
    fn seed(&self, members: &[Arc<Member<I, O>>], now: Instant) {
        self.seeded.get_or_init(|| {
            let seeds = lock(&self.set.seeds);
            let entity = &*self.set.front.name;
            let ranking = seeds
                .iter()
                .find(|r| r.entity == entity && r.relationship == *self.relationship)
                .or_else(|| seeds.iter().find(|r| r.entity == entity));
            let Some(ranking) = ranking else { return };
            // A replica that was culled starts as far costlier than the worst of the others.
            let worst_live = ranking
                .replicas
                .iter()
                .filter(|r| !r.culled)
                .filter_map(|r| r.estimate)
                .max()
                .map_or(0.0, |e| e.as_nanos() as f64);
            for member in members {
                let Some(known) = ranking.replicas.iter().find(|r| *r.name == *member.port.core.name) else {
                    continue;
                };
                if let Some(estimate) = known.estimate {
                    let mut estimate = estimate.as_nanos() as f64;
                    if known.culled {
                        estimate = estimate.max(worst_live * SLOW_FACTOR);
                    }
                    let lane = self.lane(member.slot, now);
                    lock(&lane.estimate).0.reset(estimate, now);
                }
            }
        });
    }

    /// The cost of sending to a replica now: its estimate (or the cheapest known one's, if it
    /// has none) times what this relationship has in flight there, plus one.
    fn cost(&self, member: &Member<I, O>, now: Instant, cheapest: f64) -> f64 {
        let lane = self.lane(member.slot, now);
        let estimate = lane.estimate(now, &member.health_view()).unwrap_or(cheapest).max(COST_FLOOR_NS);
        estimate * (lane.in_flight.load(Ordering::Acquire) + 1) as f64
    }

    /// Sends a query (or an ask) to one replica, chosen by power of two choices over the live
    /// ones (all running ones, if none is live), or to a culled one that is due a probe. A
    /// replica that refuses it (it stopped meanwhile) is left out and the choice made again.
    pub(crate) fn route(
        self: &Arc<Self>,
        body: I,
        asker: Option<Asker<O>>,
        exclude: Option<usize>,
        push: Push,
    ) -> Result<(), Refused<I, O>> {
        self.route_as(body, asker, exclude, push, false, None).map_err(|(refused, _)| refused)
    }

    /// [`route`](Self::route), of a retry or not.
    fn route_as(
        self: &Arc<Self>,
        mut body: I,
        mut asker: Option<Asker<O>>,
        exclude: Option<usize>,
        push: Push,
        retry: bool,
        mut tracked: Option<Box<TrackedPart>>,
    ) -> Result<(), RefusedTracked<I, O>> {
        let members = self.set.members();
        let now = Instant::now();
        self.seed(&members, now);
        let mut excluded: Vec<usize> = exclude.into_iter().collect();
        let mut full: Option<Arc<Core>> = None;
        let mut last_refusal = ErrorKind::Stopped;
        loop {
            let usable = |m: &&Arc<Member<I, O>>| !excluded.contains(&m.slot) && m.running();
            let (member, probe) = match self.due_probe(&members, &excluded, now) {
                Some(member) => (member, true),
                None => {
                    let mut candidates: Vec<&Arc<Member<I, O>>> =
                        members.iter().filter(usable).filter(|m| !m.culled.load(Ordering::Acquire)).collect();
                    if candidates.is_empty() {
                        candidates = members.iter().filter(usable).collect();
                    }
                    match candidates.len() {
                        0 => {
                            let refused = match full {
                                Some(core) => Refused::Full(body, asker, core),
                                None => {
                                    let kind = self.set.front.state().refusal().unwrap_or(last_refusal);
                                    Refused::Stopped(body, asker, kind)
                                }
                            };
                            return Err((refused, tracked));
                        }
                        1 => (candidates[0].clone(), false),
                        n => {
                            let a = random(n);
                            let b = (a + 1 + random(n - 1)) % n;
                            let cheapest = self.cheapest(&candidates, now);
                            let (ca, cb) =
                                (self.cost(candidates[a], now, cheapest), self.cost(candidates[b], now, cheapest));
                            (if cb < ca { candidates[b] } else { candidates[a] }.clone(), false)
                        }
                    }
                }
            };
            let lane = self.lane(member.slot, now);
            lane.in_flight.fetch_add(1, Ordering::AcqRel);
            let ticket =
                Ticket { view: self.clone(), member: member.clone(), lane: lane.clone(), sent: now, probe, retry };
            let routed = Box::new(Routed { body, asker, ticket, tracked });
            match push.push(&member.port, Envelope::Routed(routed)) {
                Ok(()) => {
                    lane.sent.fetch_add(1, Ordering::Relaxed);
                    member.routed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err((env, kind)) => {
                    let Envelope::Routed(routed) = env else { unreachable!("a routed message was sent") };
                    let Routed { body: back, asker: back_asker, ticket, tracked: back_tracked } = *routed;
                    drop(ticket);
                    lane.in_flight.fetch_sub(1, Ordering::AcqRel);
                    (body, asker, tracked) = (back, back_asker, back_tracked);
                    // An offer refused by a replica still running found its queue full.
                    if push == Push::Offer && kind == ErrorKind::Stopped && member.running() {
                        full = Some(member.port.core.clone());
                    } else {
                        last_refusal = kind;
                    }
                    excluded.push(member.slot);
                }
            }
        }
    }

    /// The cheapest estimate among `candidates` that this relationship has one of.
    fn cheapest(&self, candidates: &[&Arc<Member<I, O>>], now: Instant) -> f64 {
        candidates
            .iter()
            .filter_map(|m| self.lane(m.slot, now).estimate(now, &m.health_view()))
            .min_by(f64::total_cmp)
            .unwrap_or(COST_FLOOR_NS)
    }

    /// A culled, running replica whose next probe is due, claimed for this message.
    fn due_probe(&self, members: &[Arc<Member<I, O>>], excluded: &[usize], now: Instant) -> Option<Arc<Member<I, O>>> {
        for member in members {
            if !member.culled.load(Ordering::Acquire) || excluded.contains(&member.slot) || !member.running() {
                continue;
            }
            let mut health = lock(&member.health);
            if health.culled.is_some() && health.next_probe.is_some_and(|at| at <= now) {
                health.backoff = (health.backoff * 2).min(PROBE_MAX);
                health.next_probe = Some(now + health.backoff);
                return Some(member.clone());
            }
        }
        None
    }

    fn ranking(&self, members: &[Arc<Member<I, O>>], now: Instant) -> Ranking {
        let mut replicas: Vec<RankedReplica> = members
            .iter()
            .map(|member| {
                let lane = self.lane(member.slot, now);
                let health = lock(&member.health);
                RankedReplica {
                    name: member.port.core.name.to_string(),
                    estimate: lane
                        .estimate(
                            now,
                            &MemberHealthView {
                                epoch: member.epoch.load(Ordering::Acquire),
                                rejoined_at: health.rejoined_at,
                            },
                        )
                        .map(|ns| Duration::from_nanos(ns as u64)),
                    sent: lane.sent.load(Ordering::Relaxed),
                    failed: lane.failed.load(Ordering::Relaxed),
                    culled: health.culled.is_some(),
                    culls: health.culls,
                }
            })
            .collect();
        // Culled ones last: they get nothing but probes, whatever their estimate says.
        replicas.sort_by_key(|r| (r.culled, r.estimate.is_none(), r.estimate));
        Ranking { entity: self.set.front.name.to_string(), relationship: self.relationship.to_string(), replicas }
    }
}

/// One relationship's ranking of the replicas of an entity, cheapest first: what it has learnt
/// of them. A report carries every relationship's ([`Report::rankings`]); a system built with
/// [`SystemBuilder::rankings`] starts from saved ones, so that its first messages already go to
/// the replicas that were fast.
///
/// [`Report::rankings`]: crate::Report::rankings
/// [`SystemBuilder::rankings`]: crate::SystemBuilder::rankings
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Ranking {
    /// The replicated entity.
    pub entity: String,
    /// Who sends to it: the entity at the other end of an edge into it, or [`HANDLES`] for the
    /// system's handles.
    pub relationship: String,
    /// Its replicas, cheapest first; those never measured after them, and those culled last.
    pub replicas: Vec<RankedReplica>,
}

impl Ranking {
    /// A ranking of `entity`'s replicas for `relationship`.
    pub fn new(entity: impl Into<String>, relationship: impl Into<String>, replicas: Vec<RankedReplica>) -> Self {
        Ranking { entity: entity.into(), relationship: relationship.into(), replicas }
    }

    /// The replica ranked first, if any was measured.
    pub fn best(&self) -> Option<&RankedReplica> {
        self.replicas.first().filter(|r| r.estimate.is_some())
    }
}

/// A replica in a [`Ranking`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct RankedReplica {
    /// The replica's name: its entity's, `model/0` for the first replica of `model`.
    pub name: String,
    /// The relationship's estimate of a message's time there, from its send to the end of its
    /// handler; `None` if it never measured one.
    pub estimate: Option<Duration>,
    /// Messages the relationship routed to it.
    pub sent: u64,
    /// Of them, those whose handler failed.
    pub failed: u64,
    /// Whether the replica is culled now.
    pub culled: bool,
    /// How many times it was culled.
    pub culls: u64,
}

impl RankedReplica {
    /// A replica called `name` with an estimate, as a saved ranking gives it.
    pub fn new(name: impl Into<String>, estimate: Option<Duration>) -> Self {
        RankedReplica { name: name.into(), estimate, sent: 0, failed: 0, culled: false, culls: 0 }
    }
}

/// The front's backend: the entity itself, which routes what reaches it (nothing, in the normal
/// course: senders route themselves) and stops the replicas when it stops.
pub(crate) struct Front<I, O> {
    pub(crate) set: Arc<ReplicaSet<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Backend for Front<I, O> {
    type Input = I;
    type Output = O;

    fn query(&mut self, body: I, _: &mut Context<O>) -> Result<(), BoxError> {
        match self.set.handles_view().route(body, None, None, Push::Wait) {
            Ok(()) => Ok(()),
            Err(Refused::Stopped(_, _, kind)) => {
                Err(Box::new(crate::err::Error::new(kind, self.set.front.name.clone())))
            }
            Err(Refused::Full(..)) => unreachable!("waiting sends are never refused as full"),
        }
    }

    fn read(&mut self, body: I, _: &mut Context<O>) -> Result<(), BoxError> {
        self.set
            .broadcast(body, Push::Wait)
            .map_err(|(_, kind)| -> BoxError { Box::new(crate::err::Error::new(kind, self.set.front.name.clone())) })
    }

    fn nop(&mut self, _: &mut Context<O>) -> Result<(), BoxError> {
        for member in self.set.members().iter() {
            if member.running() {
                let _ = member.port.inbox.offer(Envelope::Nop, &member.port.core);
            }
        }
        Ok(())
    }

    fn type_name(&self) -> &'static str {
        "replicas"
    }
}

/// A query edge into a replicated entity: each message goes to the replica this edge measures
/// cheapest.
pub(crate) struct RouteOutlet<I, O2> {
    view: Arc<View<I, O2>>,
    deferred: VecDeque<I>,
}

impl<I, O2> RouteOutlet<I, O2> {
    pub(crate) fn new(view: Arc<View<I, O2>>) -> Self {
        RouteOutlet { view, deferred: VecDeque::new() }
    }
}

impl<O, I, O2> Outlet<O> for RouteOutlet<I, O2>
where
    O: Send,
    I: From<O> + Send + 'static,
    O2: Send + 'static,
{
    fn send(&mut self, out: O, defer: bool) -> Result<Sent, ErrorKind> {
        if let Some(refusal) = self.view.set.front.state().refusal() {
            return Err(refusal);
        }
        let body = I::from(out);
        if !self.deferred.is_empty() {
            self.deferred.push_back(body);
            return Ok(Sent::Deferred);
        }
        let push = if defer { Push::Offer } else { Push::Wait };
        match self.view.route(body, None, None, push) {
            Ok(()) => Ok(Sent::Now),
            Err(Refused::Stopped(_, _, kind)) => Err(kind),
            Err(Refused::Full(body, _, core)) if core.is_current() => {
                drop(body);
                Err(ErrorKind::WouldDeadlock)
            }
            Err(Refused::Full(body, _, _)) => {
                self.deferred.push_back(body);
                Ok(Sent::Deferred)
            }
        }
    }

    fn flush(&mut self, me: Option<&Arc<Task>>) -> Flushed {
        let mut flushed = Flushed::default();
        let mut registered = false;
        while let Some(body) = self.deferred.pop_front() {
            let front = &self.view.set.front;
            let refusal =
                front.state().refusal().or_else(|| front.shared.expired().then_some(ErrorKind::DeadlinePassed));
            if let Some(kind) = refusal {
                flushed.dropped += self.deferred.len() as u64 + 1;
                flushed.refused = Some(kind);
                self.deferred.clear();
                break;
            }
            match self.view.route(body, None, None, Push::Offer) {
                Ok(()) => flushed.delivered += 1,
                Err(Refused::Stopped(_, _, kind)) => {
                    flushed.dropped += self.deferred.len() as u64 + 1;
                    flushed.refused = Some(kind);
                    self.deferred.clear();
                    break;
                }
                Err(Refused::Full(body, _, core)) => {
                    self.deferred.push_front(body);
                    if !retry_after_registering(&core, me, &mut registered) {
                        flushed.waiting = Waiting::OnEntity;
                        break;
                    }
                }
            }
        }
        flushed
    }
}

/// A read edge into a replicated entity: every running replica takes each message.
pub(crate) struct BroadcastOutlet<I, O2> {
    set: Arc<ReplicaSet<I, O2>>,
}

impl<I, O2> BroadcastOutlet<I, O2> {
    pub(crate) fn new(set: Arc<ReplicaSet<I, O2>>) -> Self {
        BroadcastOutlet { set }
    }
}

impl<O, I, O2> Outlet<O> for BroadcastOutlet<I, O2>
where
    O: Send,
    I: From<O> + Send + 'static,
    O2: Send + 'static,
{
    fn send(&mut self, out: O, _defer: bool) -> Result<Sent, ErrorKind> {
        if let Some(refusal) = self.set.front.state().refusal() {
            return Err(refusal);
        }
        self.set.broadcast(I::from(out), Push::Wait).map(|()| Sent::Now).map_err(|(_, kind)| kind)
    }
}

/// What the system needs of a replica set without knowing its types.
pub(crate) trait ErasedSet: Send + Sync {
    fn rankings(&self) -> Vec<Ranking>;
}

impl<I: Send + 'static, O: Send + 'static> ErasedSet for ReplicaSet<I, O> {
    fn rankings(&self) -> Vec<Ranking> {
        ReplicaSet::rankings(self)
    }
}

impl<I, O> fmt::Debug for ReplicaSet<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSet").field("entity", &self.front.name).finish_non_exhaustive()
    }
}

/// Fails an ask whose message no replica will handle.
pub(crate) fn fail_ask<O>(asker: Option<Asker<O>>, kind: ErrorKind) {
    if let Some(asker) = asker {
        asker.fail(ReplyErrorKind::NotHandled(kind), None);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_takes_slower_samples_at_once_and_blends_faster_ones() {
        let t0 = Instant::now();
        let mut e = Ewma::new(t0);
        assert_eq!(e.current(t0), None);
        e.observe(1_000_000.0, t0);
        e.observe(10_000_000.0, t0 + Duration::from_millis(1));
        assert_eq!(e.current(t0 + Duration::from_millis(1)), Some(10_000_000.0));
        // A faster sample a whole decay later weighs 1 - 1/e.
        let later = t0 + Duration::from_millis(1) + DECAY;
        e.observe(1_000_000.0, later);
        let expected = 10_000_000.0 / std::f64::consts::E + 1_000_000.0 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((e.current(later).unwrap() - expected).abs() < 1.0);
        // Left alone, it decays.
        assert!(e.current(later + DECAY).unwrap() < expected / 2.0);
    }

    #[test]
    fn random_stays_below_its_bound() {
        let mut seen = [0u32; 3];
        for _ in 0..3_000 {
            seen[random(3)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }
}
