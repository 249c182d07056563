//! A running system: its agents, graceful shutdown and the report it ends with.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use uuid::Uuid;

use crate::builder::Node;
use crate::entity::{EntityState, ErasedPort, Handle, Port, Stats};
use crate::message::HandlerKind;

/// How long [`System::join`] and dropping a [`System`] wait for the system to go idle before
/// reporting what is still queued as undelivered.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// How many failures are kept for [`System::failures`] and the report before later ones are only
/// counted.
const FAILURES_KEPT: usize = 1024;

/// State shared by every agent of one system and its owner.
pub(crate) struct Shared {
    pub(crate) clock: quanta::Clock,
    /// Queries and reads sent from outside the system (by handles).
    pub(crate) external: AtomicU64,
    /// Set when shutdown begins: timers and start hooks no longer run.
    pub(crate) stopping: AtomicBool,
    /// Set once every agent has ended: sends from outside are refused.
    pub(crate) closed: AtomicBool,
    signal: Mutex<Signal>,
    changed: Condvar,
    failures_tx: Sender<Failure>,
    failures_rx: Receiver<Failure>,
    failures_dropped: AtomicU64,
}

struct Signal {
    stop_requested: bool,
    live_agents: usize,
}

impl Shared {
    pub(crate) fn new() -> Self {
        let (failures_tx, failures_rx) = crossbeam_channel::bounded(FAILURES_KEPT);
        Shared {
            clock: quanta::Clock::new(),
            external: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            signal: Mutex::new(Signal { stop_requested: false, live_agents: 0 }),
            changed: Condvar::new(),
            failures_tx,
            failures_rx,
            failures_dropped: AtomicU64::new(0),
        }
    }

    fn signal(&self) -> std::sync::MutexGuard<'_, Signal> {
        self.signal.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn request_stop(&self) {
        self.signal().stop_requested = true;
        self.changed.notify_all();
    }

    pub(crate) fn agents_started(&self, n: usize) {
        self.signal().live_agents += n;
    }

    pub(crate) fn agent_ended(&self) {
        self.signal().live_agents -= 1;
        self.changed.notify_all();
    }

    pub(crate) fn report(&self, failure: Failure) {
        if self.failures_tx.try_send(failure).is_err() {
            self.failures_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A handler that returned `Err` or panicked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failure {
    /// The entity whose handler failed.
    pub entity: String,
    /// Its id.
    pub id: Uuid,
    /// Which handler failed.
    pub kind: HandlerKind,
    /// The error's or the panic's message.
    pub error: String,
    /// Whether the handler panicked (the entity is then failed) rather than returned `Err`.
    pub panicked: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.panicked { "panicked" } else { "failed" };
        write!(f, "`{}` {verb} in its {} handler: {}", self.entity, self.kind, self.error)
    }
}

/// What one entity did, as reported at shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntityReport {
    /// The entity's name.
    pub name: String,
    /// Its id.
    pub id: Uuid,
    /// How it ended: stopped, or failed if its backend panicked.
    pub state: EntityState,
    /// Its counters at the end.
    pub stats: Stats,
    /// The panic's message, if its backend panicked.
    pub panic: Option<String>,
}

/// What a system did, returned by [`System::shutdown`] and [`System::join`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// One report per entity, in the order the entities were added.
    pub entities: Vec<EntityReport>,
    /// Every handler error and panic not already taken from [`System::failures`].
    pub failures: Vec<Failure>,
    /// Failures that were counted but not kept, because more than 1,024 were left unread.
    pub failures_dropped: u64,
    /// Whether the deadline passed before the system went idle.
    pub timed_out: bool,
}

impl Report {
    /// The report of the entity called `name`.
    pub fn entity(&self, name: &str) -> Option<&EntityReport> {
        self.entities.iter().find(|e| e.name == name)
    }

    /// Messages that were queued but never handled, over all entities.
    pub fn undelivered(&self) -> u64 {
        self.entities.iter().map(|e| e.stats.undelivered).sum()
    }

    /// Whether nothing went wrong: no errors, no panics, nothing undelivered, no timeout.
    pub fn is_clean(&self) -> bool {
        !self.timed_out
            && self.failures_dropped == 0
            && self.entities.iter().all(|e| e.stats.errors == 0 && e.stats.panics == 0 && e.stats.undelivered == 0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entities {
            let s = &e.stats;
            writeln!(
                f,
                "{}: {:?}, handled {}, sent {}, errors {}, panics {}, undelivered {}, busy {:?}, max {:?}",
                e.name, e.state, s.handled, s.sent, s.errors, s.panics, s.undelivered, s.busy, s.max
            )?;
        }
        for failure in &self.failures {
            writeln!(f, "{failure}")?;
        }
        if self.timed_out {
            writeln!(f, "the shutdown deadline passed before the system went idle")?;
        }
        Ok(())
    }
}

/// A running system of agents, made by [`SystemBuilder::spawn`](crate::SystemBuilder::spawn).
///
/// It owns the agents' threads. [`shutdown`](System::shutdown) stops it gracefully and returns a
/// [`Report`]; dropping it does the same with [`DEFAULT_SHUTDOWN_DEADLINE`], so no agent thread
/// outlives it.
pub struct System {
    builder: u64,
    ports: Vec<Arc<dyn ErasedPort>>,
    names: HashMap<Arc<str>, usize>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    closed: bool,
}

impl fmt::Debug for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("System").field("entities", &self.ports.len()).finish_non_exhaustive()
    }
}

impl System {
    pub(crate) fn new(
        builder: u64,
        ports: Vec<Arc<dyn ErasedPort>>,
        names: HashMap<Arc<str>, usize>,
        threads: Vec<JoinHandle<()>>,
        shared: Arc<Shared>,
    ) -> Self {
        System { builder, ports, names, threads, shared, closed: false }
    }

    /// A typed handle to the entity that `node` names.
    ///
    /// # Panics
    ///
    /// If `node` comes from another builder.
    pub fn handle<I: Send + 'static, O: Send + 'static>(&self, node: &Node<I, O>) -> Handle<I, O> {
        assert_eq!(node.builder, self.builder, "the node comes from another builder than this system's");
        self.typed(node.index).expect("a node's types are those of its entity")
    }

    /// A typed handle to the entity called `name`, for graphs built at run time; `None` if there
    /// is no such entity or its input and output types are not `I` and `O`.
    pub fn handle_by_name<I: Send + 'static, O: Send + 'static>(&self, name: &str) -> Option<Handle<I, O>> {
        self.typed(*self.names.get(name)?)
    }

    fn typed<I: Send + 'static, O: Send + 'static>(&self, index: usize) -> Option<Handle<I, O>> {
        let port = self.ports[index].clone().as_any().downcast::<Port<I, O>>().ok()?;
        Some(Handle::new(&port))
    }

    /// The names of the entities, in the order they were added.
    pub fn entity_names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.ports.iter().map(|p| &*p.core().name)
    }

    /// A receiver of every handler error and panic as it happens. Failures taken from it are
    /// not repeated in the shutdown report.
    pub fn failures(&self) -> Receiver<Failure> {
        self.shared.failures_rx.clone()
    }

    /// Asks the system to stop, as [`Context::stop_system`](crate::Context::stop_system) does.
    pub fn request_stop(&self) {
        self.shared.request_stop();
    }

    /// Whether a stop was requested, or every agent has ended on its own.
    pub fn stop_requested(&self) -> bool {
        let signal = self.shared.signal();
        signal.stop_requested || signal.live_agents == 0
    }

    /// Waits until a backend asks the system to stop or every agent has ended; `None` waits
    /// without limit. Returns whether that happened (rather than the timeout).
    pub fn wait_for_stop(&self, timeout: Option<Duration>) -> bool {
        let done = |s: &mut Signal| !(s.stop_requested || s.live_agents == 0);
        let guard = self.shared.signal();
        match timeout {
            None => {
                let _guard = self.shared.changed.wait_while(guard, done).unwrap_or_else(|e| e.into_inner());
                true
            }
            Some(t) => {
                let (_guard, result) =
                    self.shared.changed.wait_timeout_while(guard, t, done).unwrap_or_else(|e| e.into_inner());
                !result.timed_out()
            }
        }
    }

    /// Waits until a stop is requested (or every agent has ended), then shuts down with
    /// [`DEFAULT_SHUTDOWN_DEADLINE`].
    pub fn join(mut self) -> Report {
        self.wait_for_stop(None);
        self.close(DEFAULT_SHUTDOWN_DEADLINE)
    }

    /// Shuts the system down gracefully and reports what every entity did.
    ///
    /// Timers and start hooks stop running. Then it waits until no message is queued or being
    /// handled anywhere, sends `Nop` to every agent (each backend cleans up) and joins the
    /// threads: nothing in flight is lost. If the system has not gone idle by `deadline` (an
    /// agent may be waiting on a terminal), what is still queued is taken out and reported as
    /// undelivered, and the report says it timed out. A handler that is running is never
    /// interrupted: the threads are joined after it returns.
    pub fn shutdown(mut self, deadline: Duration) -> Report {
        self.close(deadline)
    }

    fn close(&mut self, deadline: Duration) -> Report {
        self.closed = true;
        let until = Instant::now() + deadline;
        self.shared.stopping.store(true, Ordering::SeqCst);
        let mut pause = Duration::from_micros(20);
        let timed_out = loop {
            for port in &self.ports {
                if port.core().state() != EntityState::Running {
                    port.drain();
                }
            }
            if self.quiescent() {
                break false;
            }
            if Instant::now() >= until {
                break true;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        };
        if timed_out {
            for port in &self.ports {
                port.drain();
            }
        }
        for port in &self.ports {
            if port.core().state() == EntityState::Running {
                port.send_nop();
            }
        }
        for thread in self.threads.drain(..) {
            // The agent's own code catches every panic of the backend's.
            let _ = thread.join();
        }
        // A handle on another thread may be sending right now: its message is counted as sent
        // before it looks at `closed` (see `Port::send_external`). Drain until every message
        // counted is accounted for, so that the last drain sees it. A send into a full bounded
        // queue gives up within 10 ms once its entity has stopped, and every entity has; the
        // limit only guards against a miscount turning into a hang.
        self.shared.closed.store(true, Ordering::SeqCst);
        let give_up = Instant::now() + Duration::from_secs(1);
        loop {
            for port in &self.ports {
                port.drain();
            }
            if self.quiescent() || Instant::now() >= give_up {
                break;
            }
            std::thread::yield_now();
        }
        self.report(timed_out)
    }

    /// Whether no message is queued or being handled anywhere, and no start hook or timer
    /// handler is running.
    ///
    /// Every message is counted as sent (by its sender, before it is enqueued) and later as done
    /// (handled, panicked on, or undelivered, by whoever finishes it). Reading every "done"
    /// counter first and every "sent" counter after gives `done_read <= done(t) <= sent(t) <=
    /// sent_read` for the moment `t` between the two passes; so equal sums mean nothing was in
    /// flight at `t`. Once `stopping` is set, nothing inside the system can start new work after
    /// such a moment.
    fn quiescent(&self) -> bool {
        let mut done = 0u64;
        for port in &self.ports {
            let c = &port.core().counters;
            done += c.handled.load(Ordering::SeqCst)
                + c.panics.load(Ordering::SeqCst)
                + c.undelivered.load(Ordering::SeqCst)
                + c.outputs.load(Ordering::SeqCst)
                + c.activations_done.load(Ordering::SeqCst);
        }
        let mut sent = self.shared.external.load(Ordering::SeqCst);
        for port in &self.ports {
            let c = &port.core().counters;
            sent += c.sent.load(Ordering::SeqCst) + c.activations.load(Ordering::SeqCst);
        }
        done == sent
    }

    fn report(&self, timed_out: bool) -> Report {
        let entities = self
            .ports
            .iter()
            .map(|port| {
                let core = port.core();
                EntityReport {
                    name: core.name.to_string(),
                    id: core.id,
                    state: core.state(),
                    stats: core.stats(),
                    panic: core.panic.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                }
            })
            .collect();
        Report {
            entities,
            failures: self.shared.failures_rx.try_iter().collect(),
            failures_dropped: self.shared.failures_dropped.load(Ordering::Relaxed),
            timed_out,
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if !self.closed {
            self.close(DEFAULT_SHUTDOWN_DEADLINE);
        }
    }
}
