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

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crossbeam_channel::Receiver;
use redis::Commands;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::Backend;
use crate::context::Context;
use crate::entity::Handle;
use crate::err::BoxError;

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
    fn check_type<I>(&self, con: &mut redis::Connection, entity: &str, role: &str) -> Result<(), BusError> {
        let key = format!("{}:type", self.stream(entity));
        let ours = std::any::type_name::<I>();
        let _: Option<String> = redis::cmd("SET").arg(&key).arg(ours).arg("NX").query(con)?;
        let theirs: String = con.get(&key)?;
        if theirs != ours {
            return Err(BusError(format!(
                "`{entity}` on the bus takes `{theirs}`, but this process {role} it as taking `{ours}`"
            )));
        }
        Ok(())
    }
}

/// The backend of an imported entity: each query or read becomes an entry of the remote
/// entity's stream.
pub(crate) struct Remote<I, O> {
    con: redis::Connection,
    stream: String,
    bus: Bus,
    types: PhantomData<fn(I) -> O>,
}

impl<I, O> Remote<I, O> {
    pub(crate) fn new(bus: &Bus, name: &str) -> Result<Self, BusError> {
        let mut con = bus.connection()?;
        bus.check_type::<I>(&mut con, name, "imports")?;
        Ok(Remote { con, stream: bus.stream(name), bus: bus.clone(), types: PhantomData })
    }

    /// Adds an entry to the stream. When the broker has gone away (a restart, say), connects
    /// again and tries again, for up to `RECONNECT_FOR`: the message is not lost to a restart.
    fn add(&mut self, kind: &str, body: &[u8]) -> Result<(), BoxError> {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(5);
        loop {
            let added: redis::RedisResult<String> =
                self.con.xadd(&self.stream, "*", &[("k", kind.as_bytes()), ("b", body)]);
            match added {
                Ok(_) => return Ok(()),
                Err(e)
                    if (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
                        && started.elapsed() < RECONNECT_FOR =>
                {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(200));
                    if let Ok(con) = self.bus.connection() {
                        self.con = con;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl<I, O> Backend for Remote<I, O>
where
    I: Serialize + Send + 'static,
    O: Send + 'static,
{
    type Input = I;
    type Output = O;

    fn query(&mut self, body: I, _: &mut Context<O>) -> Result<(), BoxError> {
        let body = postcard::to_stdvec(&body)?;
        self.add("q", &body)
    }

    fn read(&mut self, body: I, _: &mut Context<O>) -> Result<(), BoxError> {
        let body = postcard::to_stdvec(&body)?;
        self.add("r", &body)
    }

    // A round trip to the broker per message.
    fn blocking(&self) -> bool {
        true
    }

    fn type_name(&self) -> &'static str {
        "remote"
    }
}

/// The reader of an exported entity's stream: it takes entries as one consumer of the group,
/// hands each to the entity, and acknowledges those whose handlers have returned.
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
}

impl<I, O> Reader<I, O> {
    pub(crate) fn new(bus: &Bus, target: Handle<I, O>, consumer: String) -> Result<Self, BusError>
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        let stream = bus.stream(target.name());
        let mut con = bus.connection()?;
        bus.check_type::<I>(&mut con, target.name(), "exports")?;
        // The group reads from the stream's start: what importers sent before it existed is
        // its to take. A group that exists already is kept.
        let created: redis::RedisResult<String> = con.xgroup_create_mkstream(&stream, target.name(), "0");
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
        Ok(Reader { con, stream, consumer, target, caught_up: false, bus: bus.clone() })
    }
}

impl<I, O> Reader<I, O>
where
    I: DeserializeOwned + Send + 'static,
    O: Send + 'static,
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
    /// those that were handled. A message whose handler fails is left pending, to be taken
    /// again (by this consumer or another) once it has been idle for `CLAIM_IDLE`; after
    /// `MAX_DELIVERIES` failures it goes to the dead-letter stream (`ns:name:dead`), with the
    /// failure, and is acknowledged.
    fn deliver(&mut self, group: &str, entries: &[StreamId], redelivered: bool) -> Result<usize, BoxError> {
        let mut sent: Vec<(&StreamId, Receiver<Option<String>>)> = Vec::with_capacity(entries.len());
        let mut done: Vec<String> = Vec::new();
        let mut undecodable = None;
        for entry in entries {
            let read = matches!(entry.map.get("k"), Some(redis::Value::BulkString(k)) if k == b"r");
            let body = match entry.map.get("b") {
                Some(redis::Value::BulkString(bytes)) => postcard::from_bytes::<I>(bytes),
                _ => Err(postcard::Error::DeserializeUnexpectedEnd),
            };
            match body {
                Ok(body) => match self.target.send_tracked(body, read, redelivered) {
                    Ok(rx) => sent.push((entry, rx)),
                    // The entity has stopped: left pending, for another consumer.
                    Err(_) => break,
                },
                // Nothing can ever handle it: a dead letter at once.
                Err(e) => {
                    let why = format!("not a body of this entity's type: {e}");
                    self.dead_letter(entry, &why)?;
                    done.push(entry.id.clone());
                    undecodable.get_or_insert(format!("entry {} of {} is {why}", entry.id, self.stream));
                }
            }
        }
        let taken = entries.len();
        let failures = format!("{}:failures", self.stream);
        let mut dead_letters = Vec::new();
        for (entry, rx) in sent {
            match rx.recv() {
                Ok(None) => done.push(entry.id.clone()),
                Ok(Some(failure)) => {
                    let failed: u32 = self.con.hincr(&failures, &entry.id, 1)?;
                    if failed >= MAX_DELIVERIES {
                        self.dead_letter(entry, &failure)?;
                        let _: i64 = self.con.hdel(&failures, &entry.id)?;
                        done.push(entry.id.clone());
                        dead_letters.push(format!(
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
            let _: i64 = self.con.xack(&self.stream, group, &done)?;
        }
        // Reported as this reader's failures: the system's owner hears of each.
        match undecodable.into_iter().chain(dead_letters).reduce(|a, b| format!("{a}; {b}")) {
            Some(why) => Err(why.into()),
            None => Ok(taken),
        }
    }

    /// Adds `entry` to the dead-letter stream, with why it could not be handled.
    fn dead_letter(&mut self, entry: &StreamId, why: &str) -> Result<(), BusError> {
        let dead = format!("{}:dead", self.stream);
        let body = match entry.map.get("b") {
            Some(redis::Value::BulkString(bytes)) => bytes.clone(),
            _ => Vec::new(),
        };
        let _: String =
            self.con.xadd(&dead, "*", &[("id", entry.id.as_bytes()), ("b", &body[..]), ("failure", why.as_bytes())])?;
        Ok(())
    }
}

impl<I, O> Backend for Reader<I, O>
where
    I: DeserializeOwned + Send + 'static,
    O: Send + 'static,
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
                    let lost = e
                        .downcast_ref::<redis::RedisError>()
                        .is_some_and(|e| e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal());
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
