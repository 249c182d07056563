//! The exporter's side: a [`Reader`] takes entries from the entity's stream as one consumer of
//! its group, and hands them to the entity in batches of up to 64. The guarantees are kept here:
//!
//! - **At least once.** An entry is acknowledged (XACK) only once its handler has returned `Ok`,
//!   by the entity's agent as it ends the batch's last handler, in one round trip with the
//!   answers the importers wait for. A consumer that dies leaves its entries pending; another
//!   takes them over (XAUTOCLAIM) once they have been idle for `CLAIM_IDLE`, and hands them on
//!   flagged as redeliveries. A live consumer claims its entries in flight again every
//!   `REFRESH`, so that a handler that runs for long keeps its entry.
//! - **Dead letters.** A handler's `Err` or panic leaves the entry pending, to be taken again;
//!   after [`MAX_DELIVERIES`] failures, counted on the broker so that the count holds across
//!   processes, it goes to `ns:name:dead` with the failure, and is acknowledged. An entry that
//!   is not a body of the entity's type goes there at once.
//! - **Order.** Batches are handed on in the order they were read, and the entity handles them
//!   in that order: for one producer and one consumer, the edge's order.
//! - **Restarts.** After the broker restarts, the reader connects again and first takes its own
//!   pending entries again, once its batches in flight have ended.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Commands;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{BATCH, BLOCK_MS, Bus, BusCounts, BusError, BusRole, CLAIM_IDLE, MAX_DELIVERIES, connection_lost, wire};
use crate::backend::Backend;
use crate::context::Context;
use crate::entity::{Done, Handle, Outcome};
use crate::err::BoxError;
use crate::reply::Asker;

/// The reader of an exported entity's stream: it takes entries as one consumer of the group and
/// hands them to the entity in batches. The entity's agent, as it ends the last handler of a
/// batch, acknowledges the batch's handled entries and sends back the answers their importers
/// wait for, in one round trip; meanwhile the reader has taken the next batch.
pub(crate) struct Reader<I, O> {
    con: redis::Connection,
    target: Handle<I, O>,
    consumer: String,
    /// Whether this consumer's own pending entries (left by an earlier run that stopped before
    /// acknowledging them) have been taken again yet.
    caught_up: bool,
    shared: Arc<ReaderShared>,
    /// When the entries in flight were last claimed again, so that nobody takes them over.
    refreshed: std::time::Instant,
    types: PhantomData<fn() -> O>,
}

/// What a reader shares with the agent that ends its batches.
struct ReaderShared {
    /// The connection batches are ended on (the reader's own waits on the stream).
    con: Mutex<redis::Connection>,
    bus: Bus,
    stream: String,
    group: String,
    /// Batches handed to the entity and not yet ended.
    in_flight: AtomicUsize,
    /// The ids of the entries in flight, which the reader claims again now and then.
    held: Mutex<HashSet<String>>,
    /// Dead letters and failures to end a batch, for the reader to report.
    problems: Mutex<Vec<String>>,
    counts: Arc<BusCounts>,
    /// What the graph's edge from the reader to the entity has carried.
    carried: Arc<AtomicU64>,
}

/// How long an answer stream is kept after its last answer, in seconds.
const ANSWERS_KEPT_S: i64 = 3_600;

/// Batches a reader may have in flight before it waits.
const MAX_IN_FLIGHT: usize = 4;
/// How often a reader claims its entries in flight again, which keeps their idle time (what
/// another consumer's XAUTOCLAIM looks at) short while a handler runs for long.
const REFRESH: Duration = Duration::from_millis(300);

impl<I, O> Reader<I, O> {
    pub(crate) fn new(
        bus: &Bus,
        target: Handle<I, O>,
        consumer: String,
        carried: Arc<AtomicU64>,
    ) -> Result<Self, BusError>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        let stream = bus.stream(target.name());
        let mut con = bus.connection()?;
        bus.check_type::<I, O>(&mut con, target.name(), "exports")?;
        // The group reads from the stream's start: what importers sent before it existed is
        // its to take. A group that exists already is kept.
        let created: redis::RedisResult<String> = con.xgroup_create_mkstream(&stream, target.name(), "0");
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
        let counts = BusCounts::new(bus, target.name(), BusRole::Export);
        let shared = Arc::new(ReaderShared {
            con: Mutex::new(bus.connection()?),
            bus: bus.clone(),
            stream,
            group: target.name().to_string(),
            in_flight: AtomicUsize::new(0),
            held: Mutex::new(HashSet::new()),
            problems: Mutex::new(Vec::new()),
            counts: counts.clone(),
            carried,
        });
        let reader = Reader {
            con,
            target,
            consumer,
            caught_up: false,
            shared,
            refreshed: std::time::Instant::now(),
            types: PhantomData,
        };
        Ok(reader)
    }
}

/// One entry of a batch in flight.
struct Entry<O> {
    id: String,
    body: Vec<u8>,
    /// The answer stream and correlation number of an importer that wants the answer, and the
    /// reply the handler's outputs go to.
    answer: Option<(Vec<u8>, Vec<u8>, crate::reply::Reply<O>)>,
    outcome: Option<Outcome>,
}

/// A batch handed to the entity: ended by whichever handler ends last.
struct Batch<O> {
    shared: Arc<ReaderShared>,
    slots: Mutex<Vec<Entry<O>>>,
    left: AtomicUsize,
}

impl<O: Serialize> Batch<O> {
    fn tell(&self, index: usize, outcome: Outcome) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())[index].outcome = Some(outcome);
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|e| e.into_inner()));
            let shared = &self.shared;
            if let Err(e) = shared.end(slots) {
                shared.problem(format!(
                    "could not acknowledge a batch of {} (it will be delivered again): {e}",
                    shared.stream
                ));
            }
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl ReaderShared {
    fn problem(&self, why: String) {
        self.problems.lock().unwrap_or_else(|e| e.into_inner()).push(why);
    }

    /// Ends a batch in one round trip (two when handlers failed): acknowledges what was handled
    /// and sends back the answers wanted. A message whose handler failed is left pending, to be
    /// taken again (by this consumer or another) once it has been idle for `CLAIM_IDLE`; after
    /// `MAX_DELIVERIES` failures it goes to the dead-letter stream (`ns:name:dead`) with the
    /// failure, and is acknowledged (and an importer waiting for its answer hears why). What
    /// was never handled (the entity stopped) is left pending.
    fn end<O: Serialize>(&self, slots: Vec<Entry<O>>) -> Result<(), BoxError> {
        let mut con = self.con.lock().unwrap_or_else(|e| e.into_inner());
        let failures = format!("{}:failures", self.stream);
        let failed: Vec<&Entry<O>> = slots.iter().filter(|s| matches!(s.outcome, Some(Outcome::Failed(_)))).collect();
        let counts: Vec<u32> = if failed.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for slot in &failed {
                pipe.hincr(&failures, &slot.id, 1);
            }
            pipe.query(&mut *con)?
        };
        let mut failed_counts = counts.into_iter();
        let mut finish = redis::pipe();
        let mut acked: Vec<&str> = Vec::new();
        for slot in &slots {
            match &slot.outcome {
                Some(Outcome::Handled) => {
                    acked.push(&slot.id);
                    if let Some((to, c, reply)) = &slot.answer {
                        let mut outputs = Vec::new();
                        for out in reply.take_outputs() {
                            outputs = wire::encode_output(&out, outputs)?;
                        }
                        wire::answer(&mut finish, to, c, outputs);
                        self.counts.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Outcome::Failed(why)) => {
                    if failed_counts.next().unwrap_or(0) >= MAX_DELIVERIES {
                        let wanted = slot.answer.as_ref().map(|(to, c, _)| (&to[..], &c[..]));
                        self.dead_letter(&mut finish, &slot.id, &slot.body, why, wanted);
                        finish.hdel(&failures, &slot.id).ignore();
                        acked.push(&slot.id);
                    }
                }
                Some(Outcome::NotHandled) | None => {}
            }
        }
        if !acked.is_empty() {
            finish.xack(&self.stream, &self.group, &acked).ignore();
        }
        // An importer deletes its answer stream when it stops; one that died leaves it, and
        // it goes an hour after its last answer.
        let mut answered: Vec<&[u8]> =
            slots.iter().filter_map(|s| s.answer.as_ref().map(|(to, _, _)| &to[..])).collect();
        answered.sort_unstable();
        answered.dedup();
        for to in answered {
            finish.expire(to, ANSWERS_KEPT_S).ignore();
        }
        let mut result = finish.query::<()>(&mut *con);
        if let Err(e) = &result
            && connection_lost(e)
            && let Ok(again) = self.bus.connection()
        {
            *con = again;
            result = finish.query::<()>(&mut *con);
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for slot in &slots {
            held.remove(&slot.id);
        }
        Ok(result?)
    }

    /// Adds the entry `id` to the dead-letter stream, with why it could not be handled, and
    /// tells an importer waiting for its answer.
    fn dead_letter(
        &self,
        finish: &mut redis::Pipeline,
        id: &str,
        body: &[u8],
        why: &str,
        wanted: Option<(&[u8], &[u8])>,
    ) {
        let dead = format!("{}:dead", self.stream);
        wire::dead_letter(finish, &dead, id, body, why);
        if let Some((to, c)) = wanted {
            wire::failed(finish, to, c, why);
            self.counts.sent.fetch_add(1, Ordering::Relaxed);
        }
        self.counts.dead_letters.fetch_add(1, Ordering::Relaxed);
        self.problem(format!(
            "entry {id} of {} went to {dead} after {MAX_DELIVERIES} failed deliveries: {why}",
            self.stream
        ));
    }
}

impl<I, O> Reader<I, O>
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    /// Takes a batch of entries and hands them to the entity, in order: first this consumer's
    /// own pending ones (left by an earlier run under its name, or taken before the broker
    /// restarted), then, when no new ones come, those another consumer has held unacknowledged
    /// for `CLAIM_IDLE` (it died, say), then new ones. Returns how many it took.
    fn poll(&mut self) -> Result<usize, BoxError> {
        let in_flight = self.shared.in_flight.load(Ordering::Acquire);
        // Its own pending entries are taken again once none is in flight (else they would be
        // handed on twice), and the entity is given at most `MAX_IN_FLIGHT` batches.
        if (!self.caught_up && in_flight > 0) || in_flight >= MAX_IN_FLIGHT {
            return Ok(0);
        }
        let group = self.shared.group.clone();
        let stream = self.shared.stream.clone();
        let (entries, redelivered) = if self.caught_up {
            let options = StreamReadOptions::default().group(&group, &self.consumer).count(BATCH).block(BLOCK_MS);
            let reply: Option<StreamReadReply> = self.con.xread_options(&[&stream], &[">"], &options)?;
            let entries: Vec<StreamId> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            if entries.is_empty() { (self.claim(&stream, &group)?, true) } else { (entries, false) }
        } else {
            let options = StreamReadOptions::default().group(&group, &self.consumer).count(BATCH);
            let reply: Option<StreamReadReply> = self.con.xread_options(&[&stream], &["0"], &options)?;
            let entries: Vec<StreamId> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            if entries.is_empty() {
                self.caught_up = true;
            }
            (entries, true)
        };
        self.deliver(&entries, redelivered)?;
        Ok(entries.len())
    }

    /// Takes over entries another consumer of the group has held unacknowledged for
    /// `CLAIM_IDLE`: it died before its handlers returned, or lost the broker.
    fn claim(&mut self, stream: &str, group: &str) -> Result<Vec<StreamId>, BoxError> {
        let options = StreamAutoClaimOptions::default().count(BATCH);
        let idle = CLAIM_IDLE.as_millis() as u64;
        let reply: StreamAutoClaimReply =
            self.con.xautoclaim_options(stream, group, &self.consumer, idle, "0-0", options)?;
        Ok(reply.claimed)
    }

    /// Hands `entries` to the entity in order, as one batch, which its agent ends.
    fn deliver(&mut self, entries: &[StreamId], redelivered: bool) -> Result<(), BoxError> {
        let mut slots = Vec::with_capacity(entries.len());
        let mut bodies = Vec::with_capacity(entries.len());
        let mut undecodable = redis::pipe();
        let mut dropped = Vec::new();
        for entry in entries {
            let message = wire::Message::parse(entry);
            let (read, raw, wanted) = (message.read, message.body, message.answer_to);
            match message.decode::<I>() {
                Ok(body) => {
                    let (asker, answer) = match wanted {
                        Some((to, c)) => {
                            let (asker, reply) = Asker::pair(Arc::from(self.target.name()));
                            (Some(asker), Some((to.to_vec(), c.to_vec(), reply)))
                        }
                        None => (None, None),
                    };
                    slots.push(Entry { id: entry.id.clone(), body: raw.to_vec(), answer, outcome: None });
                    bodies.push((body, read, asker));
                }
                // Nothing can ever handle it: a dead letter at once.
                Err(e) => {
                    let why = format!("not a body of this entity's type: {e}");
                    self.shared.dead_letter(&mut undecodable, &entry.id, raw, &why, wanted);
                    dropped.push(entry.id.as_str());
                }
            }
        }
        if !dropped.is_empty() {
            undecodable.xack(&self.shared.stream, &self.shared.group, &dropped).ignore();
            undecodable.query::<()>(&mut self.con)?;
        }
        if slots.is_empty() {
            return Ok(());
        }
        self.shared.counts.received.fetch_add(slots.len() as u64, Ordering::Relaxed);
        self.shared.carried.fetch_add(slots.len() as u64, Ordering::Relaxed);
        if redelivered {
            self.shared.counts.redelivered.fetch_add(slots.len() as u64, Ordering::Relaxed);
        }
        self.shared.held.lock().unwrap_or_else(|e| e.into_inner()).extend(slots.iter().map(|s| s.id.clone()));
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let batch = Arc::new(Batch {
            shared: self.shared.clone(),
            left: AtomicUsize::new(slots.len()),
            slots: Mutex::new(slots),
        });
        for (index, (body, read, asker)) in bodies.into_iter().enumerate() {
            let batch = batch.clone();
            let done = Done::new(move |outcome| batch.tell(index, outcome));
            // One the entity refuses (it has stopped) is left pending, for another consumer:
            // its `Done` is dropped, which tells the batch.
            let _ = self.target.send_tracked(body, read, redelivered, asker, done);
        }
        Ok(())
    }

    /// Claims the entries in flight again, to this consumer: their idle time starts over, so
    /// that no other consumer takes them over while their handlers run.
    fn refresh(&mut self) -> Result<(), BoxError> {
        self.refreshed = std::time::Instant::now();
        let held: Vec<String> = self.shared.held.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        if held.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.shared.stream).arg(&self.shared.group).arg(&self.consumer).arg(0).arg(&held).arg("JUSTID");
        let _: redis::Value = cmd.query(&mut self.con)?;
        Ok(())
    }
}

impl<I, O> Backend for Reader<I, O>
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    type Input = ();
    type Output = ();

    fn query(&mut self, (): (), _: &mut Context<()>) -> Result<(), BoxError> {
        Ok(())
    }

    fn start(&mut self, ctx: &mut Context<()>) -> Result<(), BoxError> {
        self.shared.counts.register(ctx);
        ctx.every(Duration::from_micros(100));
        Ok(())
    }

    fn timer(&mut self, _: crate::TimerId, _: &mut Context<()>) -> Result<(), BoxError> {
        // Batches while there are entries; then the agent looks at its inbox (a stop) again.
        let result = loop {
            if self.refreshed.elapsed() >= REFRESH
                && let Err(e) = self.refresh()
            {
                break Err(e);
            }
            match self.poll() {
                Ok(BATCH) => {}
                Ok(_) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            let lost = e.downcast_ref::<redis::RedisError>().is_some_and(connection_lost);
            if !lost {
                return Err(e);
            }
            // The broker went away (a restart, say): connect again at the next tick, and take
            // this consumer's pending entries first, since what was taken but not acknowledged
            // is still there.
            if let Ok(con) = self.shared.bus.connection() {
                self.con = con;
                self.caught_up = false;
            }
        }
        // Reported as this reader's failures: the system's owner hears of each.
        let problems = std::mem::take(&mut *self.shared.problems.lock().unwrap_or_else(|e| e.into_inner()));
        match problems.into_iter().reduce(|a, b| format!("{a}; {b}")) {
            Some(why) => Err(why.into()),
            None => Ok(()),
        }
    }

    /// Waits for the batches in flight to end (the entity stops after its reader), unless the
    /// shutdown's deadline passes, and reports what went wrong with them.
    fn nop(&mut self, ctx: &mut Context<()>) -> Result<(), BoxError> {
        let shared = &ctx.core().shared;
        while self.shared.in_flight.load(Ordering::Acquire) > 0 && !shared.expired.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let problems = std::mem::take(&mut *self.shared.problems.lock().unwrap_or_else(|e| e.into_inner()));
        match problems.into_iter().reduce(|a, b| format!("{a}; {b}")) {
            Some(why) => Err(why.into()),
            None => Ok(()),
        }
    }

    // Waits on the broker.
    fn blocking(&self) -> bool {
        true
    }

    fn type_name(&self) -> &'static str {
        "bus reader"
    }
}
