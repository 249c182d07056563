//! The importer's side: [`Remote`] gathers the messages it is given and adds them to the
//! remote entity's stream in one round trip when its agent runs out of messages; a thread of
//! its own reads the answers that come back and hands them to their askers, or to the agent to
//! send on to its siblings.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use redis::Commands;
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{BATCH, Bus, BusCounts, BusError, BusRole, RECONNECT_FOR, RemoteFailure, connection_lost, wire};
use crate::backend::Backend;
use crate::context::{Completion, Context};
use crate::entity::Handle;
use crate::err::BoxError;
use crate::reply::{Asker, ReplyErrorKind};

/// An output that came back, for an importer to send to its siblings; or what went wrong.
type Passed<O> = Result<O, String>;

/// The slot of an importer for its entity's handle, which the builder fills.
pub(crate) type Slot<I, O> = Arc<OnceLock<Handle<I, O>>>;

/// A message sent whose answer is wanted.
struct Waiting<O> {
    /// When it was gathered: the answer's latency is from then.
    sent: std::time::Instant,
    /// Its asker, if it was asked.
    asker: Option<Asker<O>>,
    /// The routing's measure, if it was routed to this entity as a replica.
    completion: Option<Completion>,
}

/// The answers an importer waits for, shared by its backend and the thread that reads them.
struct Answers<O> {
    /// The importer's own stream, which exporters add its answers to.
    stream: String,
    /// The messages sent whose answers are wanted, by correlation number.
    waiting: Mutex<HashMap<u64, Waiting<O>>>,
    /// Queries and asks sent and not yet answered.
    outstanding: AtomicUsize,
    /// The answers to queries, for the backend to send to its siblings; or what went wrong.
    outputs: (Sender<Passed<O>>, Receiver<Passed<O>>),
    stop: AtomicBool,
}

/// The backend of an entity of another process: each query or read it is given becomes an entry
/// of that entity's stream. [`SystemBuilder::import`](crate::SystemBuilder::import) runs one as
/// an entity; [`Bus::remote`] makes one to run otherwise, as a replica of a replicated entity,
/// say, which is then routed to by the time its answers take to come back.
///
/// Entries are gathered and added in one round trip when the agent runs out of messages (or has
/// 64 of them). A query whose answer is wanted (the entity has siblings, or was asked, or was
/// routed to as a replica) names this backend's answer stream, which a thread of its own reads;
/// the answers then go to the siblings (or the asker) as if this backend had sent them.
pub struct Remote<I, O> {
    con: redis::Connection,
    stream: String,
    bus: Bus,
    /// The entries not yet added, as one pipeline, and the correlation numbers of those whose
    /// answers are wanted.
    batch: redis::Pipeline,
    batched: usize,
    batch_waiting: Vec<u64>,
    answers: Arc<Answers<O>>,
    next: u64,
    listener: Option<std::thread::JoinHandle<()>>,
    /// This entity's own handle, for the listener to wake its agent with answers; set by the
    /// builder once the entity exists.
    me: Arc<OnceLock<Handle<I, O>>>,
    /// Without `me` (a replica, say), a timer that looks for answers while some are owed.
    polling: Option<crate::TimerId>,
    counts: Arc<BusCounts>,
    /// Whether the counts are in the system's report yet.
    registered: bool,
}

impl<I, O> fmt::Debug for Remote<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("stream", &self.stream).finish_non_exhaustive()
    }
}

/// How often a remote backend that cannot be woken looks for answers while some are owed.
const POLL: Duration = Duration::from_millis(1);

/// How long a stopping importer waits, with no answer coming, for the answers it is owed.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

impl<I, O> Remote<I, O>
where
    I: Send + 'static,
    O: DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(bus: &Bus, name: &str) -> Result<(Self, Slot<I, O>), BusError> {
        let mut con = bus.connection()?;
        bus.check_type::<I, O>(&mut con, name, "imports")?;
        let me = Arc::new(OnceLock::new());
        let counts = BusCounts::new(bus, name, BusRole::Import);
        let answers = Arc::new(Answers {
            stream: format!("{}:answers:{}", bus.stream(name), Uuid::new_v4()),
            waiting: Mutex::new(HashMap::new()),
            outstanding: AtomicUsize::new(0),
            outputs: crossbeam_channel::unbounded(),
            stop: AtomicBool::new(false),
        });
        let remote = Remote {
            con,
            stream: bus.stream(name),
            bus: bus.clone(),
            batch: redis::pipe(),
            batched: 0,
            batch_waiting: Vec::new(),
            answers,
            next: 0,
            listener: None,
            me: me.clone(),
            polling: None,
            counts: counts.clone(),
            registered: false,
        };
        Ok((remote, me))
    }

    /// Gathers one entry; adds the batch at once when it is full, or else asks for
    /// [`Backend::idle`], which adds it once the agent runs out of messages.
    fn add(&mut self, read: bool, body: &I, ctx: &mut Context<O>) -> Result<(), BoxError>
    where
        I: Serialize,
    {
        // Registered here too: a shutdown right after the spawn skips `start`.
        if !self.registered {
            self.registered = true;
            self.counts.register(ctx);
            ctx.takes_completion = true;
        }
        let body = postcard::to_stdvec(body)?;
        let asker = ctx.asker.take();
        let completion = ctx.completion.take();
        // An answer is wanted when it was asked for, when its time is measured for routing, or
        // when there are siblings to give it to.
        let mut answer_to = None;
        if asker.is_some() || completion.is_some() || (!read && ctx.siblings().len() > 0) {
            self.listen()?;
            let c = self.next;
            self.next += 1;
            let waiting = Waiting { sent: std::time::Instant::now(), asker, completion };
            self.answers.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(c, waiting);
            self.batch_waiting.push(c);
            self.answers.outstanding.fetch_add(1, Ordering::AcqRel);
            answer_to = Some(c);
            // Nobody wakes a backend run without its handle: it looks now and then instead.
            if self.me.get().is_none() && self.polling.is_none() {
                self.polling = Some(ctx.every(POLL));
            }
        }
        let cmd = wire::message(&self.stream, read, body, answer_to.map(|c| (self.answers.stream.as_str(), c)));
        self.batch.add_command(cmd).ignore();
        self.batched += 1;
        if self.batched >= BATCH {
            self.flush()
        } else {
            ctx.when_idle();
            Ok(())
        }
    }

    /// Adds the gathered entries in one round trip. When the broker has gone away (a restart,
    /// say), connects again and tries again, for up to `RECONNECT_FOR`: the messages are not
    /// lost to a restart (though some may then be added twice).
    fn flush(&mut self) -> Result<(), BoxError> {
        if self.batched == 0 {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(5);
        let result = loop {
            match self.batch.query::<()>(&mut self.con) {
                Ok(()) => break Ok(()),
                Err(e) if connection_lost(&e) && started.elapsed() < RECONNECT_FOR => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(200));
                    if let Ok(con) = self.bus.connection() {
                        self.con = con;
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let batched = std::mem::take(&mut self.batched);
        self.batch.clear();
        let asks = std::mem::take(&mut self.batch_waiting);
        match result {
            Ok(()) => {
                self.counts.sent.fetch_add(batched as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Never added: their askers hear that they were not handled.
                let mut waiting = self.answers.waiting.lock().unwrap_or_else(|e| e.into_inner());
                for c in asks {
                    if let Some(Waiting { completion: Some(complete), .. }) = waiting.remove(&c) {
                        complete(false);
                    }
                    self.answers.outstanding.fetch_sub(1, Ordering::AcqRel);
                }
                Err(format!("{batched} messages for {} were lost: {e}", self.stream).into())
            }
        }
    }

    /// Starts the thread that reads this importer's answers, if it has not started yet.
    fn listen(&mut self) -> Result<(), BusError> {
        if self.listener.is_some() {
            return Ok(());
        }
        let con = self.bus.connection()?;
        let (answers, me, counts, bus) = (self.answers.clone(), self.me.clone(), self.counts.clone(), self.bus.clone());
        let thread = std::thread::Builder::new()
            .name(format!("{}:answers", self.stream))
            .spawn(move || listen(con, &bus, &answers, &me, &counts))
            .map_err(|e| BusError(format!("could not start the thread that reads answers: {e}")))?;
        self.listener = Some(thread);
        Ok(())
    }

    /// Sends the answers that came to the siblings; the first failure that came with them is
    /// returned.
    fn pass_on(&mut self, ctx: &mut Context<O>) -> Result<(), BoxError>
    where
        O: Clone,
    {
        let mut failure = None;
        while let Ok(answer) = self.answers.outputs.1.try_recv() {
            match answer {
                Ok(out) => {
                    if let Err(e) = ctx.send(out) {
                        failure.get_or_insert_with(|| e.to_string());
                    }
                }
                Err(why) => {
                    failure.get_or_insert(why);
                }
            }
        }
        failure.map_or(Ok(()), |why| Err(why.into()))
    }
}

/// The thread of an importer that reads its answer stream: answers to asks go to their askers,
/// answers to queries to the importer's agent, which it wakes to send them on.
fn listen<I, O>(
    mut con: redis::Connection,
    bus: &Bus,
    answers: &Answers<O>,
    me: &OnceLock<Handle<I, O>>,
    counts: &BusCounts,
) where
    I: Send + 'static,
    O: DeserializeOwned + Send + 'static,
{
    let mut last = "0-0".to_string();
    while !answers.stop.load(Ordering::Acquire) {
        let options = StreamReadOptions::default().count(256).block(20);
        let read: redis::RedisResult<Option<StreamReadReply>> =
            con.xread_options(&[&answers.stream], &[&last], &options);
        let entries: Vec<StreamId> = match read {
            Ok(reply) => reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect(),
            Err(e) => {
                std::thread::sleep(Duration::from_millis(20));
                if connection_lost(&e)
                    && let Ok(again) = bus.connection()
                {
                    con = again;
                }
                continue;
            }
        };
        if entries.is_empty() {
            continue;
        }
        let mut woke = false;
        for entry in &entries {
            last.clone_from(&entry.id);
            counts.received.fetch_add(1, Ordering::Relaxed);
            let answer = wire::Answer::parse(entry);
            let (outputs, failure) = (answer.outputs::<O>(), answer.failure);
            let Some(waiting) =
                answer.c.and_then(|c| answers.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&c))
            else {
                // Not ours to wait for (any more).
                continue;
            };
            let elapsed = waiting.sent.elapsed().as_nanos();
            counts.answers.record(u64::try_from(elapsed).unwrap_or(u64::MAX), 1, 1);
            counts.slowest.fetch_max(u64::try_from(elapsed).unwrap_or(u64::MAX), Ordering::Relaxed);
            if let Some(complete) = waiting.completion {
                complete(failure.is_none() && outputs.is_ok());
            }
            match waiting.asker {
                Some(asker) => match (outputs, failure) {
                    (Ok(outputs), None) => {
                        for out in outputs {
                            asker.send(out);
                        }
                        asker.finish();
                    }
                    (Ok(_), Some(why)) | (Err(why), _) => {
                        asker.fail(ReplyErrorKind::Failed, Some(Arc::new(RemoteFailure(why))));
                    }
                },
                None => {
                    match outputs {
                        Ok(outputs) => {
                            for out in outputs {
                                let _ = answers.outputs.0.send(Ok(out));
                            }
                        }
                        Err(why) => {
                            let _ = answers.outputs.0.send(Err(why));
                        }
                    }
                    if let Some(why) = failure {
                        let _ =
                            answers.outputs.0.send(Err(format!("{} failed to answer a query: {why}", counts.stream)));
                    }
                    woke = true;
                }
            }
            // After its outputs are passed on: a stopping importer waits for this to reach 0.
            answers.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let _: redis::RedisResult<i64> = con.xdel(&answers.stream, &ids);
        if woke && let Some(me) = me.get() {
            me.wake_idle();
        }
    }
}

impl<I, O> Backend for Remote<I, O>
where
    I: Serialize + Send + 'static,
    O: DeserializeOwned + Clone + Send + 'static,
{
    type Input = I;
    type Output = O;

    fn query(&mut self, body: I, ctx: &mut Context<O>) -> Result<(), BoxError> {
        self.add(false, &body, ctx)
    }

    fn read(&mut self, body: I, ctx: &mut Context<O>) -> Result<(), BoxError> {
        self.add(true, &body, ctx)
    }

    fn start(&mut self, ctx: &mut Context<O>) -> Result<(), BoxError> {
        self.registered = true;
        self.counts.register(ctx);
        // As a replica, its routing's measure is told when the answer comes.
        ctx.takes_completion = true;
        Ok(())
    }

    fn idle(&mut self, ctx: &mut Context<O>) -> Result<(), BoxError> {
        let flushed = self.flush();
        let passed = self.pass_on(ctx);
        flushed.and(passed)
    }

    /// Without a handle to be woken by (see `polling`): passes on what came.
    fn timer(&mut self, _: crate::TimerId, ctx: &mut Context<O>) -> Result<(), BoxError> {
        let passed = self.pass_on(ctx);
        if self.answers.outstanding.load(Ordering::Acquire) == 0
            && let Some(timer) = self.polling.take()
        {
            ctx.cancel(timer);
        }
        passed
    }

    /// Adds what is gathered, then waits for the answers owed (while they keep coming) and
    /// sends them on.
    fn nop(&mut self, ctx: &mut Context<O>) -> Result<(), BoxError> {
        let flushed = self.flush();
        let mut failure = None;
        let mut last_progress = std::time::Instant::now();
        let mut owed = self.answers.outstanding.load(Ordering::Acquire);
        while owed > 0 && last_progress.elapsed() < ANSWER_WAIT {
            match self.answers.outputs.1.recv_timeout(Duration::from_millis(10)) {
                Ok(Ok(out)) => {
                    let _ = ctx.send(out);
                }
                Ok(Err(why)) => {
                    failure.get_or_insert(why);
                }
                Err(_) => {}
            }
            let now = self.answers.outstanding.load(Ordering::Acquire);
            if now < owed {
                last_progress = std::time::Instant::now();
            }
            owed = now;
        }
        let passed = self.pass_on(ctx);
        self.answers.stop.store(true, Ordering::Release);
        if let Some(listener) = self.listener.take() {
            let _ = listener.join();
        }
        // The askers still waiting hear that their messages were not handled.
        self.answers.waiting.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let _: redis::RedisResult<i64> = self.con.del(&self.answers.stream);
        let unanswered = self.answers.outstanding.load(Ordering::Acquire);
        self.counts.unanswered.store(unanswered as u64, Ordering::Relaxed);
        flushed.and(passed)?;
        if let Some(why) = failure {
            return Err(why.into());
        }
        if unanswered > 0 {
            return Err(format!("{unanswered} messages sent to {} were not answered by shutdown", self.stream).into());
        }
        Ok(())
    }

    // A round trip to the broker per batch of messages.
    fn blocking(&self) -> bool {
        true
    }

    fn type_name(&self) -> &'static str {
        "remote"
    }
}

impl<I, O> Drop for Remote<I, O> {
    fn drop(&mut self) {
        // An importer dropped without its `nop` (its agent failed) stops its listener too.
        self.answers.stop.store(true, Ordering::Release);
    }
}
