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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use redis::Commands;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::Backend;
use crate::context::Context;
use crate::entity::Handle;
use crate::err::BoxError;
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
                "`{entity}` on the bus is `{theirs}` (input => output), but this process {role} it as `{ours}`"
            )));
        }
        Ok(())
    }
}

/// What crossed the bus at one end of an imported or exported entity, for the shutdown report
/// ([`Report::bus`](crate::Report::bus)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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
            BusRole::Import => write!(
                f,
                "{} (imported from {}): {} sent, {} answers received, {} unanswered",
                self.entity, self.stream, self.sent, self.received, self.unanswered
            ),
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
        })
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

/// What the builder keeps of a new importer: its slot for its own handle, and its counts.
pub(crate) type Imported<I, O> = (Arc<OnceLock<Handle<I, O>>>, Arc<BusCounts>);

/// The answers an importer waits for, shared by its backend and the thread that reads them.
struct Answers<O> {
    /// The importer's own stream, which exporters add its answers to.
    stream: String,
    /// The askers of the asks sent and not yet answered, by correlation number.
    askers: Mutex<HashMap<u64, Asker<O>>>,
    /// Queries and asks sent and not yet answered.
    outstanding: AtomicUsize,
    /// The answers to queries, for the backend to send to its siblings; or what went wrong.
    outputs: (Sender<Answer<O>>, Receiver<Answer<O>>),
    stop: AtomicBool,
}

/// The backend of an imported entity: each query or read becomes an entry of the remote
/// entity's stream. Entries are gathered and added in one round trip when the agent runs out
/// of messages (or has [`BATCH`] of them). A query or ask whose answer is wanted (the importer
/// has edges out of the entity, or asked) names this importer's answer stream, which a thread
/// of its own reads.
pub(crate) struct Remote<I, O> {
    con: redis::Connection,
    stream: String,
    bus: Bus,
    /// The entries not yet added, as one pipeline, and the correlation numbers among them.
    batch: redis::Pipeline,
    batched: usize,
    batch_asks: Vec<u64>,
    answers: Arc<Answers<O>>,
    next: u64,
    listener: Option<std::thread::JoinHandle<()>>,
    /// This entity's own handle, for the listener to wake its agent with answers; set by the
    /// builder once the entity exists.
    me: Arc<OnceLock<Handle<I, O>>>,
    counts: Arc<BusCounts>,
}

/// How long a stopping importer waits, with no answer coming, for the answers it is owed.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

impl<I, O> Remote<I, O>
where
    I: Send + 'static,
    O: DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(bus: &Bus, name: &str) -> Result<(Self, Imported<I, O>), BusError> {
        let mut con = bus.connection()?;
        bus.check_type::<I, O>(&mut con, name, "imports")?;
        let me = Arc::new(OnceLock::new());
        let counts = BusCounts::new(bus, name, BusRole::Import);
        let answers = Arc::new(Answers {
            stream: format!("{}:answers:{}", bus.stream(name), Uuid::new_v4()),
            askers: Mutex::new(HashMap::new()),
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
            batch_asks: Vec::new(),
            answers,
            next: 0,
            listener: None,
            me: me.clone(),
            counts: counts.clone(),
        };
        Ok((remote, (me, counts)))
    }

    /// Gathers one entry; adds the batch at once when it is full, or else asks for
    /// [`Backend::idle`], which adds it once the agent runs out of messages.
    fn add(&mut self, kind: &str, body: &I, ctx: &mut Context<O>) -> Result<(), BoxError>
    where
        I: Serialize,
    {
        let body = postcard::to_stdvec(body)?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream).arg("*").arg("k").arg(kind).arg("b").arg(body);
        let asker = ctx.asker.take();
        // An answer is wanted when it was asked for, or when the importer has siblings to
        // give it to.
        if asker.is_some() || (kind == "q" && ctx.siblings().len() > 0) {
            self.listen()?;
            let c = self.next;
            self.next += 1;
            if let Some(asker) = asker {
                self.answers.askers.lock().unwrap_or_else(|e| e.into_inner()).insert(c, asker);
                self.batch_asks.push(c);
            }
            self.answers.outstanding.fetch_add(1, Ordering::AcqRel);
            cmd.arg("to").arg(&self.answers.stream).arg("c").arg(c);
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
        let asks = std::mem::take(&mut self.batch_asks);
        match result {
            Ok(()) => {
                self.counts.sent.fetch_add(batched as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Never added: their askers hear that they were not handled.
                let mut askers = self.answers.askers.lock().unwrap_or_else(|e| e.into_inner());
                for c in asks {
                    askers.remove(&c);
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
            let asker = c.and_then(|c| answers.askers.lock().unwrap_or_else(|e| e.into_inner()).remove(&c));
            match asker {
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

    fn idle(&mut self, ctx: &mut Context<O>) -> Result<(), BoxError> {
        let flushed = self.flush();
        let passed = self.pass_on(ctx);
        flushed.and(passed)
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
        self.answers.askers.lock().unwrap_or_else(|e| e.into_inner()).clear();
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

/// The reader of an exported entity's stream: it takes entries as one consumer of the group,
/// hands each to the entity, acknowledges those whose handlers have returned, and sends back
/// the answers their importers wait for.
pub(crate) struct Reader<I, O> {
    con: redis::Connection,
    stream: String,
    consumer: String,
    target: Handle<I, O>,
    /// Whether this consumer's own pending entries (left by an earlier run that stopped before
    /// acknowledging them) have been taken again yet.
    caught_up: bool,
    /// To connect again after the broker went away.
    bus: Bus,
    counts: Arc<BusCounts>,
}

impl<I, O> Reader<I, O> {
    pub(crate) fn new(bus: &Bus, target: Handle<I, O>, consumer: String) -> Result<(Self, Arc<BusCounts>), BusError>
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
        Ok((
            Reader { con, stream, consumer, target, caught_up: false, bus: bus.clone(), counts: counts.clone() },
            counts,
        ))
    }
}

/// One entry handed to the entity, waiting for its handler's end.
struct InFlight<'a, O> {
    entry: &'a StreamId,
    done: Receiver<Option<String>>,
    /// The answer stream and correlation number of an importer that wants the answer, and the
    /// reply its outputs go to.
    answer: Option<(Vec<u8>, Vec<u8>, crate::reply::Reply<O>)>,
}

fn field<'a>(entry: &'a StreamId, name: &str) -> Option<&'a [u8]> {
    match entry.map.get(name) {
        Some(redis::Value::BulkString(bytes)) => Some(bytes),
        _ => None,
    }
}

impl<I, O> Reader<I, O>
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    /// Takes a batch of entries and hands them to the entity, in order: first this consumer's
    /// own pending ones (left by an earlier run under its name), then, when no new ones come,
    /// those another consumer has held unacknowledged for `CLAIM_IDLE` (it died, say), then
    /// new ones. Returns how many it took.
    fn poll(&mut self) -> Result<usize, BoxError> {
        let group = self.target.name().to_string();
        let (entries, redelivered) = if self.caught_up {
            let options = StreamReadOptions::default().group(&group, &self.consumer).count(BATCH).block(BLOCK_MS);
            let reply: Option<StreamReadReply> = self.con.xread_options(&[&self.stream], &[">"], &options)?;
            let entries: Vec<StreamId> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            if entries.is_empty() { (self.claim(&group)?, true) } else { (entries, false) }
        } else {
            let options = StreamReadOptions::default().group(&group, &self.consumer).count(BATCH);
            let reply: Option<StreamReadReply> = self.con.xread_options(&[&self.stream], &["0"], &options)?;
            let entries: Vec<StreamId> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            if entries.is_empty() {
                self.caught_up = true;
            }
            (entries, true)
        };
        self.deliver(&group, &entries, redelivered)
    }

    /// Takes over entries another consumer of the group has held unacknowledged for
    /// `CLAIM_IDLE`: it died before its handlers returned, or lost the broker.
    fn claim(&mut self, group: &str) -> Result<Vec<StreamId>, BoxError> {
        let options = StreamAutoClaimOptions::default().count(BATCH);
        let idle = CLAIM_IDLE.as_millis() as u64;
        let reply: StreamAutoClaimReply =
            self.con.xautoclaim_options(&self.stream, group, &self.consumer, idle, "0-0", options)?;
        Ok(reply.claimed)
    }

    /// Hands `entries` to the entity in order, waits for their handlers, and acknowledges
    /// those that were handled, in one round trip with the answers their importers wait for.
    /// A message whose handler fails is left pending, to be taken again (by this consumer or
    /// another) once it has been idle for `CLAIM_IDLE`; after `MAX_DELIVERIES` failures it goes
    /// to the dead-letter stream (`ns:name:dead`), with the failure, and is acknowledged (and
    /// an importer waiting for its answer hears of the failure).
    fn deliver(&mut self, group: &str, entries: &[StreamId], redelivered: bool) -> Result<usize, BoxError> {
        let mut sent: Vec<InFlight<'_, O>> = Vec::with_capacity(entries.len());
        let mut done: Vec<&str> = Vec::new();
        let mut finish = redis::pipe();
        let mut problems = Vec::new();
        for entry in entries {
            let read = field(entry, "k") == Some(b"r");
            let body = match field(entry, "b") {
                Some(bytes) => postcard::from_bytes::<I>(bytes),
                None => Err(postcard::Error::DeserializeUnexpectedEnd),
            };
            let wanted = field(entry, "to").zip(field(entry, "c"));
            match body {
                Ok(body) => {
                    let (asker, answer) = match wanted {
                        Some((to, c)) => {
                            let (asker, reply) = Asker::pair(Arc::from(self.target.name()));
                            (Some(asker), Some((to.to_vec(), c.to_vec(), reply)))
                        }
                        None => (None, None),
                    };
                    match self.target.send_tracked(body, read, redelivered, asker) {
                        Ok(done) => sent.push(InFlight { entry, done, answer }),
                        // The entity has stopped: left pending, for another consumer.
                        Err(_) => break,
                    }
                }
                // Nothing can ever handle it: a dead letter at once.
                Err(e) => {
                    let why = format!("not a body of this entity's type: {e}");
                    self.dead_letter(&mut finish, entry, &why, wanted);
                    done.push(&entry.id);
                    problems.push(format!("entry {} of {} is {why}", entry.id, self.stream));
                }
            }
        }
        let taken = sent.len() + done.len();
        self.counts.received.fetch_add(sent.len() as u64, Ordering::Relaxed);
        if redelivered {
            self.counts.redelivered.fetch_add(sent.len() as u64, Ordering::Relaxed);
        }
        let failures = format!("{}:failures", self.stream);
        for InFlight { entry, done: handled, answer } in sent {
            match handled.recv() {
                Ok(None) => {
                    done.push(&entry.id);
                    if let Some((to, c, reply)) = answer {
                        let mut outputs = Vec::new();
                        for out in reply.take_outputs() {
                            outputs = postcard::to_extend(&out, outputs)?;
                        }
                        finish.cmd("XADD").arg(to).arg("*").arg("c").arg(c).arg("o").arg(outputs).ignore();
                        self.counts.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Some(failure)) => {
                    let failed: u32 = self.con.hincr(&failures, &entry.id, 1)?;
                    if failed >= MAX_DELIVERIES {
                        let wanted = answer.as_ref().map(|(to, c, _)| (&to[..], &c[..]));
                        self.dead_letter(&mut finish, entry, &failure, wanted);
                        finish.hdel(&failures, &entry.id).ignore();
                        done.push(&entry.id);
                        problems.push(format!(
                            "entry {} of {} went to {}:dead after {MAX_DELIVERIES} failed deliveries: {failure}",
                            entry.id, self.stream, self.stream
                        ));
                    }
                }
                // Never handled (the entity stopped): left pending.
                Err(_) => {}
            }
        }
        if !done.is_empty() {
            finish.xack(&self.stream, group, &done).ignore();
        }
        if !done.is_empty() || taken > 0 {
            finish.query::<()>(&mut self.con)?;
        }
        // Reported as this reader's failures: the system's owner hears of each.
        match problems.into_iter().reduce(|a, b| format!("{a}; {b}")) {
            Some(why) => Err(why.into()),
            None => Ok(entries.len()),
        }
    }

    /// Adds `entry` to the dead-letter stream, with why it could not be handled, and tells an
    /// importer waiting for its answer.
    fn dead_letter(&self, finish: &mut redis::Pipeline, entry: &StreamId, why: &str, wanted: Option<(&[u8], &[u8])>) {
        let dead = format!("{}:dead", self.stream);
        let body = field(entry, "b").unwrap_or_default();
        finish.xadd(&dead, "*", &[("id", entry.id.as_bytes()), ("b", body), ("failure", why.as_bytes())]).ignore();
        if let Some((to, c)) = wanted {
            finish.cmd("XADD").arg(to).arg("*").arg("c").arg(c).arg("e").arg(why).ignore();
            self.counts.sent.fetch_add(1, Ordering::Relaxed);
        }
        self.counts.dead_letters.fetch_add(1, Ordering::Relaxed);
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
        ctx.every(Duration::from_micros(100));
        Ok(())
    }

    fn timer(&mut self, _: crate::TimerId, _: &mut Context<()>) -> Result<(), BoxError> {
        // Batches while there are entries; then the agent looks at its inbox (a stop) again.
        loop {
            match self.poll() {
                Ok(BATCH) => {}
                Ok(_) => return Ok(()),
                Err(e) => {
                    let lost = e.downcast_ref::<redis::RedisError>().is_some_and(connection_lost);
                    if !lost {
                        return Err(e);
                    }
                    // The broker went away (a restart, say): connect again at the next tick, and
                    // take this consumer's pending entries first, since what was taken but not
                    // acknowledged is still there.
                    if let Ok(con) = self.bus.connection() {
                        self.con = con;
                        self.caught_up = false;
                    }
                    return Ok(());
                }
            }
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
