//! Edges across processes over Redis Streams (feature `bus`): a system *exports* an entity, and
//! another process *imports* it by name and type; the importer's sends become entries of a
//! stream, which the exporter's reader takes as a consumer group and hands to the entity,
//! acknowledging each only once its handler has returned.
//!
//! Each exported entity `name` of a bus namespace `ns` has the stream `ns:name`, and a consumer
//! group of the same name: several processes that export it share its messages. Bodies are
//! encoded with postcard.
//!
//! ```no_run
//! use sophon::bus::Bus;
//! use sophon::{backend, SystemBuilder};
//!
//! struct Sink;
//!
//! #[backend]
//! impl Sink {
//!     fn query(&mut self, n: u64) -> u64 {
//!         n
//!     }
//! }
//!
//! // In one process:
//! let bus = Bus::connect("redis+unix:///run/redis.sock", "demo")?;
//! let mut builder = SystemBuilder::new();
//! let sink = builder.entity("sink", Sink);
//! builder.export(&sink, &bus);
//! let _consumer = builder.spawn()?;
//!
//! // In another (the URL can also come from SOPHON_BUS_URL, with `Bus::from_env`):
//! let mut builder = SystemBuilder::new();
//! let sink = builder.import::<u64, u64>(&bus, "sink");
//! let producer = builder.spawn()?;
//! producer.handle(&sink).query(7)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use redis::Commands;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::Backend;
use crate::context::Completion;
use crate::context::Context;
use crate::entity::{Done, Handle, Outcome};
use crate::err::BoxError;
use crate::latency::{Histogram, Latency};
use crate::reply::{Asker, ReplyErrorKind};
use uuid::Uuid;

/// The environment variable [`Bus::from_env`] reads the broker's URL from.
pub const BUS_URL_VAR: &str = "SOPHON_BUS_URL";

/// How many entries a reader takes from its stream at once.
const BATCH: usize = 64;
/// How long a reader's read waits for entries before its agent looks at its inbox again.
const BLOCK_MS: usize = 5;
/// How long an entry taken by another consumer must stay unacknowledged before this one takes
/// it over (that consumer died, or lost the broker). Longer than any batch takes to handle, so
/// that a live consumer's entries are not taken from under it.
const CLAIM_IDLE: Duration = Duration::from_secs(1);
/// How long an importer keeps trying to reach a broker that went away before a send fails.
const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// Failed deliveries after which a message goes to the dead-letter stream.
pub const MAX_DELIVERIES: u32 = 3;

/// Where the broker is, and the namespace of the streams a system uses on it.
#[derive(Clone)]
pub struct Bus {
    client: redis::Client,
    namespace: String,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

/// The broker could not be reached, or refused a command.
#[derive(Debug)]
pub struct BusError(String);

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BusError {}

impl From<redis::RedisError> for BusError {
    fn from(e: redis::RedisError) -> Self {
        BusError(format!("the bus's broker: {e}"))
    }
}

impl Bus {
    /// The broker at `url` (`redis://host:port`, `redis+unix:///path/to/socket`), with the
    /// streams of `namespace`. It is reached once here, so that a wrong address is an error now.
    pub fn connect(url: &str, namespace: &str) -> Result<Bus, BusError> {
        let client = redis::Client::open(url)?;
        let mut con = client.get_connection()?;
        redis::cmd("PING").query::<String>(&mut con)?;
        Ok(Bus { client, namespace: namespace.to_string() })
    }

    /// The broker whose URL is in `SOPHON_BUS_URL` (see [`connect`](Self::connect)).
    pub fn from_env(namespace: &str) -> Result<Bus, BusError> {
        let url = std::env::var(BUS_URL_VAR).map_err(|_| BusError(format!("{BUS_URL_VAR} is not set")))?;
        Bus::connect(&url, namespace)
    }

    /// A backend that sends what it is given to `entity`, which another process exports on
    /// this bus, and sends on the answers that come back: to run an entity of another process
    /// other than by [`SystemBuilder::import`](crate::SystemBuilder::import), as one replica of
    /// a replicated entity, say ([`SystemBuilder::replicas`](crate::SystemBuilder::replicas)),
    /// which routes to it by the time its answers take. Its types are checked against the
    /// exporter's, as an import's are.
    ///
    /// ```no_run
    /// use sophon::bus::Bus;
    /// use sophon::{BoxBackend, SystemBuilder};
    ///
    /// let bus = Bus::from_env("chat")?;
    /// let mut builder = SystemBuilder::new();
    /// // Two machines serve the model, as `model-a` and `model-b`; each query goes to the one
    /// // whose answers come back sooner.
    /// let replicas: Vec<BoxBackend<String, String>> =
    ///     vec![Box::new(bus.remote("model-a")?), Box::new(bus.remote("model-b")?)];
    /// let model = builder.replicas("model", replicas);
    /// let answers = builder.output(&model, "answers");
    /// let system = builder.spawn()?;
    /// system.handle(&model).query("Hello".to_string())?;
    /// println!("{}", answers.recv()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remote<I, O>(&self, entity: &str) -> Result<Remote<I, O>, BusError>
    where
        I: Send + 'static,
        O: DeserializeOwned + Send + 'static,
    {
        Remote::new(self, entity).map(|(remote, _)| remote)
    }

    /// The stream of the exported entity `entity`.
    pub fn stream(&self, entity: &str) -> String {
        format!("{}:{entity}", self.namespace)
    }

    pub(crate) fn connection(&self) -> Result<redis::Connection, BusError> {
        Ok(self.client.get_connection()?)
    }

    /// Checks that `entity` takes bodies of type `I` on the bus: the first process to export
    /// or import it records its input type there, and every later one must agree, so that a
    /// mismatch is an error naming both types before any message moves.
    fn check_type<I, O>(&self, con: &mut redis::Connection, entity: &str, role: &str) -> Result<(), BusError> {
        let key = format!("{}:type", self.stream(entity));
        let ours = format!("{} => {}", std::any::type_name::<I>(), std::any::type_name::<O>());
        let _: Option<String> = redis::cmd("SET").arg(&key).arg(&ours).arg("NX").query(con)?;
        let theirs: String = con.get(&key)?;
        if theirs != ours {
            return Err(BusError(format!(
                "`{entity}` on the bus is `{theirs}` (input => output), but this process {role} it as `{ours}`; if its types changed on purpose, delete the key `{key}` once every process has the new ones"
            )));
        }
        Ok(())
    }
}

/// What crossed the bus at one end of an imported or exported entity, for the shutdown report
/// ([`Report::bus`](crate::Report::bus)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BusReport {
    /// The entity's name, which is its name on the bus.
    pub entity: String,
    /// Its stream.
    pub stream: String,
    /// Whether this process imported or exported it.
    pub role: BusRole,
    /// Imported: messages added to the stream. Exported: answers sent back to importers.
    pub sent: u64,
    /// Imported: answers that came back. Exported: messages taken from the stream, each
    /// delivery counted.
    pub received: u64,
    /// Exported: deliveries of messages that had been delivered before (see
    /// [`Context::is_redelivery`]).
    pub redelivered: u64,
    /// Exported: messages that went to the dead-letter stream.
    pub dead_letters: u64,
    /// Imported: queries and asks whose answers had not come when this process shut down.
    pub unanswered: u64,
    /// Imported: how long answers took, from when a message was gathered to when its answer
    /// came back; `None` before the first answer.
    pub answer_time: Option<Latency>,
}

/// Which side of the bus a [`BusReport`] is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum BusRole {
    /// [`SystemBuilder::import`](crate::SystemBuilder::import).
    Import,
    /// [`SystemBuilder::export`](crate::SystemBuilder::export).
    Export,
}

impl fmt::Display for BusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            BusRole::Import => {
                write!(
                    f,
                    "{} (imported from {}): {} sent, {} answers received, {} unanswered",
                    self.entity, self.stream, self.sent, self.received, self.unanswered
                )?;
                match &self.answer_time {
                    Some(t) => write!(f, ", answered in p50 {:.1?}, p99 {:.1?}", t.p50, t.p99),
                    None => Ok(()),
                }
            }
            BusRole::Export => write!(
                f,
                "{} (exported on {}): {} received, {} redelivered, {} dead letters, {} answers sent",
                self.entity, self.stream, self.received, self.redelivered, self.dead_letters, self.sent
            ),
        }
    }
}

/// The counts behind a [`BusReport`], kept by an importer or a reader as it goes.
pub(crate) struct BusCounts {
    entity: String,
    stream: String,
    role: BusRole,
    sent: AtomicU64,
    received: AtomicU64,
    redelivered: AtomicU64,
    dead_letters: AtomicU64,
    unanswered: AtomicU64,
    /// Answer times in nanoseconds, and the longest.
    answers: Histogram,
    slowest: AtomicU64,
}

impl BusCounts {
    fn new(bus: &Bus, entity: &str, role: BusRole) -> Arc<BusCounts> {
        Arc::new(BusCounts {
            entity: entity.to_string(),
            stream: bus.stream(entity),
            role,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            answers: Histogram::new(),
            slowest: AtomicU64::new(0),
        })
    }

    /// Adds these counts to the system's report, once.
    fn register(self: &Arc<Self>, ctx: &Context<impl Send + 'static>) {
        let mut buses = ctx.core().shared.buses.lock().unwrap_or_else(|e| e.into_inner());
        if !buses.iter().any(|b| Arc::ptr_eq(b, self)) {
            buses.push(self.clone());
        }
    }

    pub(crate) fn report(&self) -> BusReport {
        BusReport {
            entity: self.entity.clone(),
            stream: self.stream.clone(),
            role: self.role,
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            unanswered: self.unanswered.load(Ordering::Relaxed),
            answer_time: match (self.role, self.received.load(Ordering::Relaxed)) {
                (BusRole::Export, _) | (_, 0) => None,
                _ => Some(self.answers.latency(self.slowest.load(Ordering::Relaxed), Duration::from_nanos)),
            },
        }
    }
}

/// A failure of the handler of another process, as the asker of a remote entity hears of it:
/// the source of its [`ReplyError`](crate::ReplyError).
#[derive(Debug, Clone)]
pub struct RemoteFailure(String);

impl fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RemoteFailure {}

/// Whether a broker error means the connection is gone (a restart, say), so that connecting
/// again may help.
fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// An output that came back, for an importer to send to its siblings; or what went wrong.
type Answer<O> = Result<O, String>;

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
    outputs: (Sender<Answer<O>>, Receiver<Answer<O>>),
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
    fn add(&mut self, kind: &str, body: &I, ctx: &mut Context<O>) -> Result<(), BoxError>
    where
        I: Serialize,
    {
        // Registered here too: a shutdown right after the spawn skips `start`.
        if !self.registered {
            self.registered = true;
            self.counts.register(ctx);
        }
        let body = postcard::to_stdvec(body)?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream).arg("*").arg("k").arg(kind).arg("b").arg(body);
        let asker = ctx.asker.take();
        let completion = ctx.completion.take();
        // An answer is wanted when it was asked for, when its time is measured for routing, or
        // when there are siblings to give it to.
        if asker.is_some() || completion.is_some() || (kind == "q" && ctx.siblings().len() > 0) {
            self.listen()?;
            let c = self.next;
            self.next += 1;
            let waiting = Waiting { sent: std::time::Instant::now(), asker, completion };
            self.answers.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(c, waiting);
            self.batch_waiting.push(c);
            self.answers.outstanding.fetch_add(1, Ordering::AcqRel);
            cmd.arg("to").arg(&self.answers.stream).arg("c").arg(c);
            // Nobody wakes a backend run without its handle: it looks now and then instead.
            if self.me.get().is_none() && self.polling.is_none() {
                self.polling = Some(ctx.every(POLL));
            }
        }
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
            let c: Option<u64> = match entry.map.get("c") {
                Some(redis::Value::BulkString(c)) => std::str::from_utf8(c).ok().and_then(|c| c.parse().ok()),
                _ => None,
            };
            let outputs = match entry.map.get("o") {
                Some(redis::Value::BulkString(bytes)) => decode_all::<O>(bytes),
                _ => Ok(Vec::new()),
            };
            let failure = match entry.map.get("e") {
                Some(redis::Value::BulkString(e)) => Some(String::from_utf8_lossy(e).into_owned()),
                _ => None,
            };
            let Some(waiting) = c.and_then(|c| answers.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&c))
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

/// The outputs of one answer: postcard encodings one after the other.
fn decode_all<O: DeserializeOwned>(mut bytes: &[u8]) -> Result<Vec<O>, String> {
    let mut outputs = Vec::new();
    while !bytes.is_empty() {
        let (out, rest) = postcard::take_from_bytes::<O>(bytes)
            .map_err(|e| format!("an answer is not of this entity's output type: {e}"))?;
        outputs.push(out);
        bytes = rest;
    }
    Ok(outputs)
}

impl<I, O> Backend for Remote<I, O>
where
    I: Serialize + Send + 'static,
    O: DeserializeOwned + Clone + Send + 'static,
{
    type Input = I;
    type Output = O;

    fn query(&mut self, body: I, ctx: &mut Context<O>) -> Result<(), BoxError> {
        self.add("q", &body, ctx)
    }

    fn read(&mut self, body: I, ctx: &mut Context<O>) -> Result<(), BoxError> {
        self.add("r", &body, ctx)
    }

    fn start(&mut self, ctx: &mut Context<O>) -> Result<(), BoxError> {
        self.registered = true;
        self.counts.register(ctx);
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
    held: Mutex<std::collections::HashSet<String>>,
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
            held: Mutex::new(std::collections::HashSet::new()),
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

fn field<'a>(entry: &'a StreamId, name: &str) -> Option<&'a [u8]> {
    match entry.map.get(name) {
        Some(redis::Value::BulkString(bytes)) => Some(bytes),
        _ => None,
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
                            outputs = postcard::to_extend(&out, outputs)?;
                        }
                        finish.cmd("XADD").arg(&to[..]).arg("*").arg("c").arg(&c[..]).arg("o").arg(outputs).ignore();
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
        finish.xadd(&dead, "*", &[("id", id.as_bytes()), ("b", body), ("failure", why.as_bytes())]).ignore();
        if let Some((to, c)) = wanted {
            finish.cmd("XADD").arg(to).arg("*").arg("c").arg(c).arg("e").arg(why).ignore();
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
            let read = field(entry, "k") == Some(b"r");
            let raw = field(entry, "b").unwrap_or_default();
            let wanted = field(entry, "to").zip(field(entry, "c"));
            match postcard::from_bytes::<I>(raw) {
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
