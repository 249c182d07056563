//! Edges across processes over Redis Streams (feature `bus`): a system *exports* an entity, and
//! another process *imports* it by name and type; the importer's sends become entries of a
//! stream, which the exporter's reader takes as a consumer group and hands to the entity,
//! acknowledging each only once its handler has returned.
//!
//! Each exported entity `name` of a bus namespace `ns` has the stream `ns:name`, and a consumer
//! group of the same name: several processes that export it share its messages. Bodies are
//! encoded with postcard. The files of this module:
//!
//! - `wire.rs`: the format, every field of every entry;
//! - `import.rs`: the importer's side ([`Remote`]): gathering sends into one round trip, and the
//!   thread that reads answers;
//! - `export.rs`: the exporter's side, where the guarantees are kept: at-least-once delivery
//!   (acknowledged only once handled; what a dead consumer held is claimed by the next), dead
//!   letters after [`MAX_DELIVERIES`] failures, and answers sent back with the acknowledgement.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Commands;
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::latency::{Histogram, Latency};

mod export;
mod import;
mod wire;

pub(crate) use export::Reader;
pub use import::Remote;

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
