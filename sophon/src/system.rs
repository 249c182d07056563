//! A running system: its agents, graceful shutdown in graph order, and the report it ends with.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use uuid::Uuid;

use crate::backend::Backend;
use crate::context::EdgeKind;
use sophon_graph::draw::Drawing;

use crate::builder::{Checked, Graph, NewAgent, Node, SystemBuilder};
use crate::entity::{EntityState, Envelope, Handle, Port, Stats, Visit};
use crate::err::{BuildError, BuildProblem};
use crate::pool::{Pool, Runtime, Task, Workers};
use crate::replicas::Ranking;
use crate::shared::{CLOSED, CLOSING, Failure, Shared};

/// How long [`System::join`] and dropping a [`System`] wait for the system to go idle before
/// reporting what is still queued as undelivered.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// How much longer than its deadline [`System::shutdown`] may take at most, whatever the
/// backends do: time to stop in graph order when the deadline is very short, then time for
/// agents still running to end before they are given up on.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// The least time stopping in graph order gets, even past the deadline (part of
/// [`SHUTDOWN_GRACE`]).
const ORDER_GRACE: Duration = Duration::from_millis(50);

/// How long agents still running past the deadline get to end after their `Nop` (part of
/// [`SHUTDOWN_GRACE`]).
const STRAGGLER_GRACE: Duration = Duration::from_millis(100);

/// How long the last pass waits for a send from a handle that was under way as the system
/// closed (part of [`SHUTDOWN_GRACE`]).
const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// Entities that stop together: one strongly connected component of the graph (a single entity,
/// or the entities of a loop).
struct StopGroup {
    members: Vec<usize>,
    /// The groups with an edge into this one: each must have ended before this one stops.
    upstream: Vec<usize>,
}

/// Groups the entities for shutdown: each component of the graph, with the components feeding
/// it.
fn stop_groups(entities: usize, edges: &[(usize, usize)]) -> Vec<StopGroup> {
    let components = sophon_graph::components(entities, edges);
    let mut group_of = vec![0; entities];
    for (g, members) in components.iter().enumerate() {
        for &m in members {
            group_of[m] = g;
        }
    }
    let mut groups: Vec<StopGroup> =
        components.into_iter().map(|members| StopGroup { members, upstream: Vec::new() }).collect();
    for &(from, to) in edges {
        let (from, to) = (group_of[from], group_of[to]);
        if from != to && !groups[to].upstream.contains(&from) {
            groups[to].upstream.push(from);
        }
    }
    groups
}

/// What one entity did, as reported at shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct EntityReport {
    /// The entity's name.
    pub name: String,
    /// Its id.
    pub id: Uuid,
    /// How it ended: stopped, or failed if its backend panicked (and was not restarted).
    pub state: EntityState,
    /// Its counters at the end.
    pub stats: Stats,
    /// The last panic's message, if its backend panicked.
    pub panic: Option<String>,
    /// Whether its agent's thread ended and was joined. An agent still running past the
    /// deadline (blocked in a terminal read, say) is given up on: its thread is detached and
    /// what was queued for it is counted as undelivered.
    pub joined: bool,
}

/// The figures of a running system, taken by [`System::snapshot`]: each entity's counters and
/// each edge's messages, while messages flow. With the `serde` feature it serializes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Snapshot {
    /// Each entity in the system now, in the order they were added.
    pub entities: Vec<EntitySnapshot>,
    /// Every edge between entities and to outputs (see [`System::edges`]).
    pub edges: Vec<EdgeReport>,
    /// Each relationship's ranking of the replicas of each replicated entity (see
    /// [`System::rankings`]).
    pub rankings: Vec<Ranking>,
}

/// One entity's figures in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct EntitySnapshot {
    /// The entity's name.
    pub name: String,
    /// Its id.
    pub id: Uuid,
    /// Whether it is running, stopped or failed.
    pub state: EntityState,
    /// Its counters now, with what is queued for it.
    pub stats: Stats,
}

/// What one edge carried: an edge between two entities, or one to an output. See
/// [`System::edges`] and [`Report::edges`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct EdgeReport {
    /// The entity it leaves.
    pub from: String,
    /// The entity it reaches, or the output's name.
    pub to: String,
    /// A query edge, a read edge, or an output.
    pub kind: EdgeKind,
    /// Whether it was declared as closing an intended loop.
    pub intended_loop: bool,
    /// The output port it is attached to, if not the whole output.
    pub port: Option<&'static str>,
    /// Messages sent along it (a message deferred for want of room counts once it is sent, or
    /// is taken back if it is given up).
    pub sent: u64,
}

/// What a system did, returned by [`System::shutdown`] and [`System::join`].
///
/// With the `serde` feature it serializes (each failure as its entity, id, handler kind,
/// message and whether it panicked).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Report {
    /// One report per entity, in the order the entities were added.
    pub entities: Vec<EntityReport>,
    /// Every handler error and panic not already taken from [`System::failures`].
    pub failures: Vec<Failure>,
    /// Failures that were counted but not kept, because more than 1,024 were left unread.
    pub failures_dropped: u64,
    /// Whether the deadline passed before the system went idle, or before every agent ended.
    pub timed_out: bool,
    /// Every edge between entities and to outputs at the end, with what it carried (those of
    /// entities removed while the system ran are left out).
    pub edges: Vec<EdgeReport>,
    /// Each relationship's ranking of the replicas of each replicated entity at the end (see
    /// [`SystemBuilder::replicas`](crate::SystemBuilder::replicas)): save them, and start the
    /// next run from them with [`SystemBuilder::rankings`](crate::SystemBuilder::rankings).
    pub rankings: Vec<Ranking>,
    /// What crossed the bus, for each entity this system imported or exported (with the `bus`
    /// feature): sends, answers, receives, redeliveries and dead letters.
    #[cfg(feature = "bus")]
    pub bus: Vec<crate::bus::BusReport>,
}

impl Report {
    /// The report of the entity called `name`: of the last one added under that name, if one
    /// was [removed](System::remove) and its name given to another.
    pub fn entity(&self, name: &str) -> Option<&EntityReport> {
        self.entities.iter().rfind(|e| e.name == name)
    }

    /// Messages that were queued but never handled, over all entities.
    pub fn undelivered(&self) -> u64 {
        self.entities.iter().map(|e| e.stats.undelivered).sum()
    }

    /// Messages that replicas passed on to other replicas of their entity, over all entities
    /// (see [`Stats::rerouted`]).
    pub fn rerouted(&self) -> u64 {
        self.entities.iter().map(|e| e.stats.rerouted).sum()
    }

    /// The entities whose agents had not ended by the deadline and were given up on.
    pub fn not_joined(&self) -> impl Iterator<Item = &str> {
        self.entities.iter().filter(|e| !e.joined).map(|e| e.name.as_str())
    }

    /// Whether nothing went wrong: no errors, no panics, nothing undelivered, no timeout, every
    /// agent joined.
    pub fn is_clean(&self) -> bool {
        !self.timed_out
            && self.failures_dropped == 0
            && self
                .entities
                .iter()
                .all(|e| e.joined && e.stats.errors == 0 && e.stats.panics == 0 && e.stats.undelivered == 0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entities {
            let s = &e.stats;
            write!(
                f,
                "{}: {:?}, handled {}, sent {}, errors {}, panics {}, restarts {}, undelivered {}, busy {:?}, \
                 p50 {:?}, p99 {:?}, max {:?}",
                e.name,
                e.state,
                s.handled,
                s.sent,
                s.errors,
                s.panics,
                s.restarts,
                s.undelivered,
                s.busy,
                s.handling.p50,
                s.handling.p99,
                s.max
            )?;
            if !e.joined {
                f.write_str(", not joined")?;
            }
            writeln!(f)?;
        }
        for edge in &self.edges {
            let arrow = match (edge.kind, edge.intended_loop) {
                (EdgeKind::Read, _) => "~>",
                (_, true) => "-> (loop)",
                _ => "->",
            };
            let port = edge.port.map(|p| format!(".{p}")).unwrap_or_default();
            if edge.kind == EdgeKind::Replica {
                writeln!(f, "{} => {} (replica): {} routed", edge.from, edge.to, edge.sent)?;
            } else {
                writeln!(f, "{}{port} {arrow} {}: {} sent", edge.from, edge.to, edge.sent)?;
            }
        }
        for ranking in &self.rankings {
            write!(f, "{} ranked by {}:", ranking.entity, ranking.relationship)?;
            for replica in &ranking.replicas {
                let estimate = replica.estimate.map_or("unmeasured".to_string(), |e| format!("{e:.1?}"));
                let culled = if replica.culled { ", culled" } else { "" };
                write!(f, " {} ({estimate}, {} sent{culled})", replica.name, replica.sent)?;
            }
            writeln!(f)?;
        }
        #[cfg(feature = "bus")]
        for bus in &self.bus {
            writeln!(f, "{bus}")?;
        }
        for failure in &self.failures {
            writeln!(f, "{failure}")?;
        }
        if self.timed_out {
            writeln!(f, "the shutdown deadline passed before the system went idle and every agent ended")?;
        }
        Ok(())
    }
}

/// A running system of agents, made by [`SystemBuilder::spawn`](crate::SystemBuilder::spawn).
///
/// It owns the agents' threads. [`shutdown`](System::shutdown) stops it gracefully, in graph
/// order, and returns a [`Report`]; dropping it does the same with
/// [`DEFAULT_SHUTDOWN_DEADLINE`].
pub struct System {
    builder: u64,
    graph: Graph,
    /// Each entity's thread; `None` once joined or given up on, if it never started, or if the
    /// pool runs it.
    threads: Vec<Option<JoinHandle<()>>>,
    /// Whether the pool runs each entity.
    pooled: Vec<bool>,
    /// The pool's workers, in a system run by a pool.
    workers: Option<Workers>,
    shared: Arc<Shared>,
    closed: bool,
}

// Here rather than in `builder.rs`, so that the builder need not know the system it makes.
impl SystemBuilder {
    /// Checks the graph and starts it: one thread per entity, named `sophon:<name>`, or a pool
    /// of workers (see [`runtime`](SystemBuilder::runtime)).
    ///
    /// Fails with every problem found: duplicate entity names, duplicate edges, nodes of another
    /// builder, cycles of query edges not declared with [`loop_edge`](SystemBuilder::loop_edge), loops
    /// of bounded entities, bounded queues of capacity 0, restart policies without a factory,
    /// and factories that failed.
    pub fn spawn(self) -> Result<System, BuildError> {
        let Checked { id, runtime, shared, graph, agents, attach, problems } = self.check();
        if !problems.is_empty() {
            return Err(BuildError::new(problems));
        }
        debug_assert!(attach.is_empty(), "a new system has no running entity to attach edges to");
        let workers = match runtime {
            Runtime::Threads => None,
            Runtime::Pool { workers } => match Pool::start(workers) {
                Ok(workers) => Some(workers),
                Err(e) => return Err(BuildError::new(vec![BuildProblem::Spawn(e)])),
            },
        };
        let mut system =
            System { builder: id, graph, threads: Vec::new(), pooled: Vec::new(), workers, shared, closed: false };
        match system.start(agents) {
            Ok(()) => Ok(system),
            Err(e) => {
                // Dropping the system stops and joins the agents that did start.
                drop(system);
                Err(BuildError::new(vec![BuildProblem::Spawn(e)]))
            }
        }
    }
}

impl fmt::Debug for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("System").field("entities", &self.graph.ports.len()).finish_non_exhaustive()
    }
}

impl System {
    /// Starts the agents of entities just added, each on its thread or in the pool. If a thread
    /// cannot be started, the agents after it are not, and count as ended.
    fn start(&mut self, agents: Vec<NewAgent>) -> std::io::Result<()> {
        // Every pooled entity gets its task before any agent runs: a message sent to it from
        // then on wakes it.
        let tasks: Vec<Option<Arc<Task>>> = agents
            .iter()
            .map(|new| {
                let pool = &self.workers.as_ref()?.pool;
                if new.own_thread || new.agent.blocking() {
                    return None;
                }
                let task = Task::new(pool);
                let _ = self.graph.ports[new.index].core().task.set(task.clone());
                Some(task)
            })
            .collect();
        self.shared.agents_started(agents.len());
        let mut failed = None;
        for (new, task) in agents.into_iter().zip(tasks) {
            debug_assert_eq!(new.index, self.threads.len());
            let core = self.graph.ports[new.index].core();
            self.pooled.push(task.is_some());
            let thread = match (&failed, task) {
                (None, Some(task)) => {
                    task.start(new.agent.into_runnable());
                    self.threads.push(None);
                    continue;
                }
                (None, None) => {
                    let agent = new.agent;
                    let thread = std::thread::Builder::new().name(format!("sophon:{}", core.name));
                    thread.spawn(move || agent.run()).map_err(|e| failed = Some(e)).ok()
                }
                (Some(_), _) => None,
            };
            if thread.is_none() {
                // Never started: as good as ended, for the shutdown of those that did.
                core.ended.store(true, Ordering::Release);
                self.shared.agent_ended();
            }
            self.threads.push(thread);
        }
        failed.map_or(Ok(()), Err)
    }

    /// How the system runs its agents.
    pub fn runtime(&self) -> Runtime {
        match &self.workers {
            Some(workers) => Runtime::Pool { workers: workers.count() },
            None => Runtime::Threads,
        }
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
        self.typed(*self.graph.names.get(name)?)
    }

    /// The node of the entity called `name`, to add edges to or from it while the system runs
    /// ([`extend`](Self::extend)); `None` if there is no such entity or its input and output
    /// types are not `I` and `O`. A system declared with `agent_system!` has handles rather
    /// than nodes: `system.node_by_name(system.model.name())`, say.
    pub fn node_by_name<I: Send + 'static, O: Send + 'static>(&self, name: &str) -> Option<Node<I, O>> {
        let index = *self.graph.names.get(name)?;
        self.typed::<I, O>(index)?;
        Some(Node::new(self.builder, index))
    }

    fn typed<I: Send + 'static, O: Send + 'static>(&self, index: usize) -> Option<Handle<I, O>> {
        let port = self.graph.ports[index].clone().as_any().downcast::<Port<I, O>>().ok()?;
        Some(Handle::new(&port))
    }

    /// Adds entities and edges to the running system: `f` adds them to a [`SystemBuilder`] that
    /// knows the system's entities, as it would to a new system, and returns what the caller
    /// needs of them (their [`Node`]s, for [`handle`](Self::handle)).
    ///
    /// The builder takes the nodes of the system's entities as well as its own, and edges in
    /// either direction between them. The whole graph is checked as [`spawn`](SystemBuilder::spawn)
    /// checks a new one: an edge that would close a cycle of query edges not declared with
    /// [`loop_edge`](SystemBuilder::loop_edge), a name taken, or an edge to a removed entity
    /// is refused with the same [`BuildError`], and then nothing is added. Otherwise the new
    /// entities start (on the pool, or each on its thread, as the system runs) and each running
    /// entity given a new edge puts it in place between two of its messages: what it sends
    /// from then on goes along the edge too. `extend` returns once every such edge is in place
    /// (an entity that is in a long handler delays it), so a message sent after it returns
    /// takes the new edges. The system keeps its runtime: choosing one here is refused.
    ///
    /// # Panics
    ///
    /// If `f` panics, after the system is left as it was.
    ///
    /// # Examples
    ///
    /// A second counter joins a running one: from then on both get what `split` sends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Split;
    /// impl Backend for Split {
    ///     type Input = u32;
    ///     type Output = u32;
    ///     fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(n)?)
    ///     }
    /// }
    ///
    /// struct Tag(&'static str);
    /// impl Backend for Tag {
    ///     type Input = u32;
    ///     type Output = String;
    ///     fn query(&mut self, n: u32, ctx: &mut Context<String>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(format!("{} {n}", self.0))?)
    ///     }
    /// }
    ///
    /// let (tx, out) = sophon::crossbeam_channel::unbounded();
    /// let mut builder = SystemBuilder::new();
    /// let split = builder.entity("split", Split);
    /// let a = builder.entity("a", Tag("a"));
    /// builder.query_edge(&split, &a).output_to(&a, "out", tx.clone());
    /// let mut system = builder.spawn()?;
    /// system.handle(&split).query(1)?;
    /// assert_eq!(out.recv()?, "a 1");
    ///
    /// let b = system.extend(|builder| {
    ///     let b = builder.entity("b", Tag("b"));
    ///     builder.query_edge(&split, &b).output_to(&b, "out", tx);
    ///     b
    /// })?;
    /// system.handle(&split).query(2)?;
    /// let mut got = vec![out.recv()?, out.recv()?];
    /// got.sort();
    /// assert_eq!(got, ["a 2", "b 2"]);
    /// assert_eq!(system.handle(&b).name(), "b");
    ///
    /// // An echo of `split` that answers it would close a cycle of queries: refused, and
    /// // nothing is added.
    /// let refused = system.extend(|builder| {
    ///     let echo = builder.entity("echo", Split);
    ///     builder.query_edge(&split, &echo).query_edge(&echo, &split);
    /// });
    /// assert!(refused.unwrap_err().to_string().contains("form a cycle"));
    /// assert_eq!(system.entity_names().collect::<Vec<_>>(), ["split", "a", "b"]);
    /// assert!(system.shutdown(Duration::from_secs(5)).is_clean());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn extend<R>(&mut self, f: impl FnOnce(&mut SystemBuilder) -> R) -> Result<R, BuildError> {
        let marks = self.graph.marks();
        let graph = std::mem::take(&mut self.graph);
        let mut builder = SystemBuilder::extending(self.builder, self.shared.clone(), graph);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut builder)));
        let Checked { mut graph, agents, attach, problems, .. } = builder.check();
        let result = match result {
            Ok(result) if problems.is_empty() => result,
            refused => {
                graph.truncate(marks);
                self.graph = graph;
                match refused {
                    Err(payload) => std::panic::resume_unwind(payload),
                    Ok(_) => return Err(BuildError::new(problems)),
                }
            }
        };
        self.graph = graph;
        if let Err(e) = self.start(agents) {
            return Err(BuildError::new(vec![BuildProblem::Spawn(e)]));
        }
        // Each running entity with a new edge puts it in place between two messages.
        let (done, put) = crossbeam_channel::unbounded();
        for attach in attach {
            attach(done.clone());
        }
        drop(done);
        self.await_visits(&put, |_| {}, None);
        Ok(result)
    }

    /// Removes the entity called `name` from the running system, and reports what it did.
    ///
    /// It stops in graph order, as at shutdown, and nothing sent to it is lost:
    /// 1. every entity with an edge into it drops that edge, between two of its messages (what
    ///    it sent before is queued already);
    /// 2. it gets its `Nop` behind what is queued for it, handles all of that, runs its `nop`
    ///    (whose sends go on along its edges) and ends;
    /// 3. its thread is joined, its name is free for a new entity, and its edges are gone.
    ///
    /// Its handles refuse sends from then on ([`ErrorKind::Stopped`](crate::ErrorKind::Stopped),
    /// with the body back). If it has not ended by `deadline` (a handler blocked on a terminal,
    /// say), what is still queued is reported undelivered, and once it has not ended shortly
    /// after, it is given up on (see [`shutdown`](Self::shutdown)). The shutdown report lists
    /// it too, with its counters at the end. `None` if there is no entity called `name`.
    ///
    /// Its queues and counters stay with the system until it shuts down (a few kilobytes per
    /// entity removed), so that a send from a handle that races the removal is still counted,
    /// and refused or reported undelivered, never lost unseen.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Double;
    /// impl Backend for Double {
    ///     type Input = u32;
    ///     type Output = u32;
    ///     fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(n * 2)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let first = builder.entity("first", Double);
    /// let second = builder.entity("second", Double);
    /// builder.query_edge(&first, &second);
    /// let out = builder.output(&second, "out");
    /// let mut system = builder.spawn()?;
    /// for n in 0..100 {
    ///     system.handle(&first).query(n)?;
    /// }
    /// // Everything `first` sent before it let go of `second` is handled.
    /// let report = system.remove("second", Duration::from_secs(5)).unwrap();
    /// assert_eq!(report.stats.handled, 100);
    /// assert_eq!(out.try_iter().count(), 100);
    /// assert!(system.handle(&second).query(1).is_err());
    /// // `first` goes on without it.
    /// system.handle(&first).query(1)?;
    /// assert!(system.shutdown(Duration::from_secs(5)).is_clean());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove(&mut self, name: &str, deadline: Duration) -> Option<EntityReport> {
        self.remove_all([name], deadline).pop()
    }

    /// Removes the entities called `names` from the running system together, and reports what
    /// each did, in the order given (a name of no entity is skipped).
    ///
    /// As [`remove`](Self::remove) does for one, and in graph order among them: the edges into
    /// them from the rest of the system go first, then each stops once every one of them with
    /// an edge into it has ended, so that what an upstream one sends as it stops (its `nop`'s
    /// sends) is handled downstream before that one stops too; those of a loop stop together.
    /// `deadline` is for all of them.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Pass;
    /// impl Backend for Pass {
    ///     type Input = u32;
    ///     type Output = u32;
    ///     fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(n)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let stages = builder.group("stage", 3, |_| Pass);
    /// builder.query_edge(&stages[0], &stages[1]).query_edge(&stages[1], &stages[2]);
    /// let out = builder.output(&stages[2], "out");
    /// let mut system = builder.spawn()?;
    /// for n in 0..1000 {
    ///     system.handle(&stages[0]).query(n)?;
    /// }
    /// // The last stage goes only after the first two, so nothing they pass on is lost.
    /// let reports = system.remove_all(["stage[2]", "stage[0]", "stage[1]"], Duration::from_secs(5));
    /// assert!(reports.iter().all(|r| r.stats.handled == 1000 && r.stats.undelivered == 0));
    /// assert_eq!(out.try_iter().count(), 1000);
    /// assert_eq!(system.entity_names().count(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove_all<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        deadline: Duration,
    ) -> Vec<EntityReport> {
        // The entities, in the order given, each once; `local` maps each to its place.
        let mut set: Vec<usize> = Vec::new();
        let mut local: HashMap<usize, usize> = HashMap::new();
        for name in names {
            if let Some(&index) = self.graph.names.get(name) {
                local.entry(index).or_insert_with(|| {
                    set.push(index);
                    set.len() - 1
                });
            }
        }
        if set.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let until = now.checked_add(deadline).unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));

        // 1. Nothing new comes in along an edge from the rest of the system.
        let mut cuts: Vec<(usize, usize)> = self
            .graph
            .edges
            .iter()
            .filter(|e| local.contains_key(&e.to) && !local.contains_key(&e.from))
            .map(|e| (e.from, e.to))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let (done, detached) = crossbeam_channel::unbounded();
        for (from, to) in cuts {
            self.graph.ports[from].detach(self.graph.ports[to].core().id, done.clone());
        }
        drop(done);
        self.await_visits(&detached, |_| {}, Some(until));

        // 2. They stop behind what is queued for them, in graph order among them.
        let inner: Vec<(usize, usize)> =
            self.graph.edges.iter().filter_map(|e| Some((*local.get(&e.from)?, *local.get(&e.to)?))).collect();
        let groups = stop_groups(set.len(), &inner);
        let mut stopped = vec![false; set.len()];
        let order_by = until.max(Instant::now() + ORDER_GRACE);
        let mut all_ended = self.stop_set(&set, &groups, &mut stopped, None, order_by);
        if !all_ended {
            // Past the deadline: what is queued is undelivered, and each gets its `Nop` now.
            for &index in &set {
                self.graph.ports[index].drain();
            }
            let everyone = [StopGroup { members: (0..set.len()).collect(), upstream: Vec::new() }];
            all_ended = self.stop_set(&set, &everyone, &mut stopped, None, Instant::now() + STRAGGLER_GRACE);
        }

        // 3. Their threads end; their names and edges go.
        let reports = set
            .iter()
            .map(|&index| {
                let port = &self.graph.ports[index];
                let joined = all_ended || port.core().ended.load(Ordering::Acquire);
                if joined {
                    if let Some(thread) = self.threads[index].take() {
                        let _ = thread.join();
                    }
                } else {
                    port.drain();
                }
                self.graph.names.remove(&port.core().name);
                self.graph.removed[index] = true;
                self.entity_report(index, joined)
            })
            .collect();
        self.graph.edges.retain(|e| !local.contains_key(&e.from) && !local.contains_key(&e.to));
        self.graph.outputs.retain(|o| !local.contains_key(&o.from));
        reports
    }

    /// Stops the entities `set`, grouped by `groups` (of places in `set`), each group once the
    /// groups upstream of it have ended; returns whether all ended by `by`. `stopped` says, by
    /// place, which have their `Nop` already. Once `deadline` passes (if given), sends waiting
    /// for room give up. Each pass looks at the groups still running only, so that a million
    /// independent entities stop in time linear in their number.
    fn stop_set(
        &self,
        set: &[usize],
        groups: &[StopGroup],
        stopped: &mut [bool],
        deadline: Option<Instant>,
        by: Instant,
    ) -> bool {
        let ended = |place: usize| self.graph.ports[set[place]].core().ended.load(Ordering::Acquire);
        let mut done = vec![false; groups.len()];
        let mut left: Vec<usize> = (0..groups.len()).collect();
        loop {
            // Read before the ended flags: an agent sets its flag before it counts itself out,
            // so `live - running` never undercounts, and the wait below never oversleeps.
            let live = self.shared.signal().live_agents;
            let mut running = 0;
            left.retain(|&g| {
                let members = &groups[g].members;
                let not_ended = members.iter().filter(|&&m| !ended(m)).count();
                running += not_ended;
                done[g] = not_ended == 0;
                !done[g]
            });
            if left.is_empty() {
                return true;
            }
            let mut pending = false;
            let mut all_sent = true;
            for &g in &left {
                if groups[g].upstream.iter().all(|&u| done[u]) {
                    for &m in &groups[g].members {
                        // A `Nop` that finds a full bounded inbox is tried again on the next pass.
                        stopped[m] = stopped[m] || self.graph.ports[set[m]].try_stop();
                        pending |= !stopped[m];
                    }
                } else {
                    all_sent = false;
                }
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                self.shared.expired.store(true, Ordering::SeqCst);
            }
            if now >= by {
                return false;
            }
            let mut wait = if pending { (by - now).min(Duration::from_millis(1)) } else { by - now };
            if let Some(deadline) = deadline.filter(|&deadline| now < deadline) {
                wait = wait.min(deadline - now);
            }
            if all_sent && !pending {
                // Every one has its `Nop`: wait until as many agents have ended as are left.
                self.shared.wait_for_live(wait, live.saturating_sub(running));
            } else {
                self.shared.wait_while(Some(wait), true, |s| s.live_agents == live);
            }
        }
    }

    /// Waits until every visit whose `done` sender was cloned from the one of `rx` has run (or
    /// been dropped), giving each answer to `each`; past `until`, stops waiting.
    ///
    /// An entity that ends drops the visits left in its queues when it drains them; one queued
    /// just after that drain would wait forever, so entities that have ended are drained again
    /// while waiting.
    fn await_visits<T>(&self, rx: &Receiver<T>, mut each: impl FnMut(T), until: Option<Instant>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(answer) => each(answer),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if until.is_some_and(|until| Instant::now() >= until) {
                        return;
                    }
                    for port in &self.graph.ports {
                        if port.core().ended.load(Ordering::Acquire) {
                            port.drain();
                        }
                    }
                }
            }
        }
    }

    /// The system's graph now, as a [Mermaid](https://mermaid.js.org) flowchart: each entity
    /// with its figures so far (messages handled, messages queued, the 99th percentile of its
    /// handling time, and its state once it is no longer running), its edges with the messages sent along each (query edges solid, read
    /// edges dotted, loops thick, each labelled with its output port if it has one) and its
    /// outputs (rounded). Paste it into a
    /// Markdown ` ```mermaid ` block. Entities removed are left out.
    ///
    /// # Examples
    ///
    /// ```
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Pass;
    /// impl Backend for Pass {
    ///     type Input = u32;
    ///     type Output = u32;
    ///     fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(n)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let a = builder.entity("a", Pass);
    /// let b = builder.entity("b", Pass);
    /// builder.query_edge(&a, &b);
    /// let out = builder.output(&b, "out");
    /// let system = builder.spawn()?;
    /// system.handle(&a).query(1)?;
    /// out.recv()?;
    /// # while system.handle(&b).stats()?.handled < 1 || system.edges().iter().any(|e| e.sent < 1) {
    /// #     std::thread::yield_now();
    /// # }
    /// let drawn = system.mermaid();
    /// // Each entity with its figures (the 99th percentile of its handling time, too).
    /// assert!(drawn.starts_with("flowchart LR\n    n0[\"a<br/>handled 1<br/>queued 0<br/>p99 "));
    /// assert!(drawn.contains("    n2([\"out\"])\n"));
    /// assert!(drawn.ends_with("    n0 -->|\"1 sent\"| n1\n    n1 -->|\"1 sent\"| n2\n"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mermaid(&self) -> String {
        self.drawing().mermaid()
    }

    /// The system's graph now in Graphviz's DOT language, drawn as [`mermaid`](Self::mermaid)
    /// draws it: `dot -Tsvg` makes a picture of it.
    pub fn dot(&self) -> String {
        self.drawing().dot()
    }

    /// Every entity's counters and every edge's messages, now (entities removed are left out).
    ///
    /// # Examples
    ///
    /// ```
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Pass;
    /// impl Backend for Pass {
    ///     type Input = u32;
    ///     type Output = u32;
    ///     fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(n)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let a = builder.entity("a", Pass);
    /// let out = builder.output(&a, "out");
    /// let system = builder.spawn()?;
    /// system.handle(&a).query(7)?;
    /// out.recv()?;
    /// # while system.snapshot().entities[0].stats.handled < 1 { std::thread::yield_now(); }
    /// let snapshot = system.snapshot();
    /// assert_eq!((snapshot.entities[0].name.as_str(), snapshot.entities[0].stats.handled), ("a", 1));
    /// assert_eq!(snapshot.edges[0].to, "out");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        let graph = &self.graph;
        let entities = graph
            .ports
            .iter()
            .zip(&graph.removed)
            .filter(|(_, removed)| !**removed)
            .map(|(port, _)| {
                let core = port.core();
                EntitySnapshot { name: core.name.to_string(), id: core.id, state: core.state(), stats: port.stats() }
            })
            .collect();
        Snapshot { entities, edges: self.edges(), rankings: self.rankings() }
    }

    /// Each relationship's ranking of the replicas of each replicated entity now, cheapest
    /// first (see [`SystemBuilder::replicas`](crate::SystemBuilder::replicas)): one for the
    /// handles, one per edge into the entity.
    pub fn rankings(&self) -> Vec<Ranking> {
        self.graph.sets.iter().flat_map(|(_, set)| set.rankings()).collect()
    }

    /// Every edge between entities and to outputs, with the messages sent along it so far, in
    /// the order they were added (edges between entities first). An agent publishes its edges'
    /// counts when it goes idle and every 64 batches of messages while it is busy, so a count
    /// read while it works can lag a little; once it is idle they are exact, as the shutdown
    /// report's ([`Report::edges`]) are.
    ///
    /// # Examples
    ///
    /// ```
    /// use sophon::{Backend, BoxError, Context, EdgeKind, SystemBuilder};
    ///
    /// struct Pass;
    /// impl Backend for Pass {
    ///     type Input = u32;
    ///     type Output = u32;
    ///     fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(n)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let a = builder.entity("a", Pass);
    /// let b = builder.entity("b", Pass);
    /// builder.read_edge(&a, &b);
    /// let out = builder.output(&a, "out");
    /// let system = builder.spawn()?;
    /// for n in 0..3 {
    ///     system.handle(&a).query(n)?;
    /// }
    /// assert_eq!(out.iter().take(3).count(), 3);
    /// assert_eq!(system.edges().len(), 2);
    /// let edges = system.shutdown(std::time::Duration::from_secs(5)).edges;
    /// assert_eq!((edges[0].to.as_str(), edges[0].kind, edges[0].sent), ("b", EdgeKind::Read, 3));
    /// assert_eq!((edges[1].to.as_str(), edges[1].kind, edges[1].sent), ("out", EdgeKind::Output, 3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn edges(&self) -> Vec<EdgeReport> {
        let graph = &self.graph;
        let between = graph.edges.iter().map(|e| EdgeReport {
            from: graph.name(e.from).to_string(),
            to: graph.name(e.to).to_string(),
            kind: e.kind,
            intended_loop: e.intended_loop,
            port: e.port_name(),
            sent: e.carried.load(Ordering::Relaxed),
        });
        let outputs = graph.outputs.iter().map(|o| EdgeReport {
            from: graph.name(o.from).to_string(),
            to: o.name.to_string(),
            kind: EdgeKind::Output,
            intended_loop: false,
            port: o.port,
            sent: o.carried.load(Ordering::Relaxed),
        });
        between.chain(outputs).collect()
    }

    fn drawing(&self) -> Drawing {
        use sophon_graph::draw::{Edge, EdgeKind as Drawn, Node as DrawnNode, NodeKind};
        let graph = &self.graph;
        let mut drawing = Drawing::default();
        let mut place = vec![usize::MAX; graph.ports.len()];
        for (index, port) in graph.ports.iter().enumerate() {
            if graph.removed[index] {
                continue;
            }
            let stats = port.stats();
            let mut figures = vec![format!("handled {}", stats.handled), format!("queued {}", stats.queued)];
            if stats.handled > 0 {
                figures.push(format!("p99 {:.1?}", stats.handling.p99));
            }
            match port.core().state() {
                EntityState::Running => {}
                EntityState::Stopped => figures.push("stopped".to_string()),
                EntityState::Failed => figures.push("failed".to_string()),
            }
            let replicated = graph.sets.iter().any(|(front, _)| *front == index);
            if replicated {
                // The front handles nothing itself: its figures are its replicas' edges'.
                figures = vec![port.core().state()]
                    .into_iter()
                    .filter(|s| *s != EntityState::Running)
                    .map(|s| format!("{s:?}").to_lowercase())
                    .collect();
            }
            let kind = if replicated { NodeKind::Replicated } else { NodeKind::Entity };
            place[index] = drawing.nodes.len();
            drawing.nodes.push(DrawnNode { name: port.core().name.to_string(), kind, figures });
        }
        // Each replica's share of what its entity's senders routed.
        let mut routed: HashMap<usize, u64> = HashMap::new();
        for edge in graph.edges.iter().filter(|e| e.kind == EdgeKind::Replica) {
            *routed.entry(edge.from).or_default() += edge.carried.load(Ordering::Relaxed);
        }
        for edge in &graph.edges {
            let kind = match (edge.kind, edge.intended_loop) {
                (crate::EdgeKind::Read, _) => Drawn::Read,
                (crate::EdgeKind::Replica, _) => Drawn::Replica,
                (_, true) => Drawn::Loop,
                _ => Drawn::Query,
            };
            let port = edge.port_name().map(str::to_string);
            let carried = edge.carried.load(Ordering::Relaxed);
            let figures = if edge.kind == EdgeKind::Replica {
                let total = routed.get(&edge.from).copied().unwrap_or(0).max(1);
                vec![format!("{carried} routed, {}%", carried * 100 / total)]
            } else {
                vec![format!("{carried} sent")]
            };
            drawing.edges.push(Edge { from: place[edge.from], to: place[edge.to], kind, port, figures });
        }
        let mut outputs: HashMap<&str, usize> = HashMap::new();
        for output in &graph.outputs {
            let to = *outputs.entry(&output.name).or_insert_with(|| {
                drawing.nodes.push(DrawnNode {
                    name: output.name.to_string(),
                    kind: NodeKind::Output,
                    figures: Vec::new(),
                });
                drawing.nodes.len() - 1
            });
            let port = output.port.map(str::to_string);
            let figures = vec![format!("{} sent", output.carried.load(Ordering::Relaxed))];
            drawing.edges.push(Edge { from: place[output.from], to, kind: Drawn::Output, port, figures });
        }
        drawing
    }

    /// Runs `f` on the backend of every running entity whose backend is a `B`, and returns each
    /// one's handle and result, in the order the entities were added.
    ///
    /// Each entity's agent runs `f` between two of its messages, as it would handle a message
    /// from a handle: nothing stops, nothing is lost, and the agents run it in parallel (on the
    /// pool's workers, or each on its own thread). This is how to change a setting on ten
    /// thousand agents at once, or to sum their state, while messages flow. It returns once
    /// every such entity has run it; an entity that stops or fails before it gets there is left
    /// out. Entities whose input and output types are not `B`'s are not asked; one whose
    /// backend was swapped for another type is left out.
    ///
    /// # Panics
    ///
    /// If `f` panics on some backend, after every entity has run it: the first panic is
    /// passed on to the caller. The agents themselves go on.
    ///
    /// A handler calling this on a system that includes its own entity waits forever for its
    /// own agent; call it from outside the system.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Counter {
    ///     count: u64,
    ///     step: u64,
    /// }
    /// impl Backend for Counter {
    ///     type Input = ();
    ///     type Output = u64;
    ///     fn query(&mut self, (): (), ctx: &mut Context<u64>) -> Result<(), BoxError> {
    ///         self.count += self.step;
    ///         Ok(ctx.send(self.count)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// builder.pool(2);
    /// let counters: Vec<_> =
    ///     (0..1000).map(|i| builder.entity(&format!("c{i}"), Counter { count: 0, step: 1 })).collect();
    /// let system = builder.spawn()?;
    /// for counter in &counters {
    ///     system.handle(counter).query(())?;
    /// }
    /// // Every counter now counts in tens; what was queued before this runs first.
    /// system.for_each(|c: &mut Counter| c.step = 10);
    /// for counter in &counters {
    ///     system.handle(counter).query(())?;
    /// }
    /// let total: u64 = system.for_each(|c: &mut Counter| c.count).into_iter().map(|(_, n)| n).sum();
    /// assert_eq!(total, 1000 * 11);
    /// assert!(system.shutdown(Duration::from_secs(5)).is_clean());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[allow(clippy::type_complexity, reason = "a handle and a result per entity reads plainer than an alias")]
    pub fn for_each<B, R, F>(&self, f: F) -> Vec<(Handle<B::Input, B::Output>, R)>
    where
        B: Backend,
        R: Send + 'static,
        F: Fn(&mut B) -> R + Send + Sync + 'static,
    {
        type Answer<R> = (usize, Option<std::thread::Result<R>>);
        let f = Arc::new(f);
        let (tx, rx) = crossbeam_channel::unbounded::<Answer<R>>();
        let mut handles: Vec<Option<Handle<B::Input, B::Output>>> = vec![None; self.graph.ports.len()];
        for (index, port) in self.graph.ports.iter().enumerate() {
            let Ok(port) = port.clone().as_any().downcast::<Port<B::Input, B::Output>>() else { continue };
            if port.core.state() != EntityState::Running {
                continue;
            }
            let (f, tx) = (f.clone(), tx.clone());
            let visit: Visit<B::Input, B::Output> = Box::new(move |backend, _| {
                let any: &mut dyn std::any::Any = backend.as_mut();
                let result =
                    any.downcast_mut::<B>().map(|b| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(b))));
                let _ = tx.send((index, result));
            });
            if port.enqueue(Envelope::Visit(Box::new(visit))).is_ok() {
                handles[index] = Some(Handle::new(&port));
            }
        }
        drop(tx);
        // Every visit answers, or is dropped (its entity ended) with its sender.
        let mut results: Vec<Option<R>> = (0..self.graph.ports.len()).map(|_| None).collect();
        let mut panic = None;
        let each = |(index, answer): Answer<R>| match answer {
            Some(Ok(result)) => results[index] = Some(result),
            Some(Err(payload)) => {
                panic.get_or_insert(payload);
            }
            None => {}
        };
        self.await_visits(&rx, each, None);
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
        handles.into_iter().zip(results).filter_map(|(handle, result)| Some((handle?, result?))).collect()
    }

    /// The names of the entities, in the order they were added; those
    /// [removed](Self::remove) are left out.
    pub fn entity_names(&self) -> impl Iterator<Item = &str> {
        let graph = &self.graph;
        graph.ports.iter().zip(&graph.removed).filter(|(_, removed)| !**removed).map(|(p, _)| &*p.core().name)
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
        self.shared.wait_while(timeout, false, |s| !(s.stop_requested || s.live_agents == 0))
    }

    /// Waits until a stop is requested (or every agent has ended), then shuts down with
    /// [`DEFAULT_SHUTDOWN_DEADLINE`].
    pub fn join(mut self) -> Report {
        self.wait_for_stop(None);
        self.close(DEFAULT_SHUTDOWN_DEADLINE)
    }

    /// Shuts the system down gracefully and reports what every entity did.
    ///
    /// 1. Timers and start hooks stop running, and it waits until no message is queued or being
    ///    handled anywhere.
    /// 2. It stops the entities **in graph order**: an entity gets its `Nop` only once every
    ///    entity with an edge into it has run its own `nop` and ended, so what a `nop` sends (a
    ///    batcher's last batch, a writer's flush) is delivered and handled. The entities of a
    ///    loop stop together, once everything upstream of the loop has ended.
    /// 3. It joins every agent's thread.
    ///
    /// Once the system is idle (or the deadline has passed) and the entities begin to stop,
    /// sends from handles are refused ([`ErrorKind::Stopped`](crate::ErrorKind::Stopped)) and
    /// give the body back. Nothing in flight is lost: what a stopping entity is sent is handled
    /// before its own `Nop`. If the system has not gone idle by `deadline` (an agent may be waiting on a
    /// terminal), what is still queued is taken out and reported as undelivered, every agent
    /// still running is sent its `Nop` at once, and the report says it timed out. A handler that
    /// is running is never interrupted; an agent that has not ended shortly after the deadline
    /// is given up on: its thread is detached, the report names it
    /// ([`Report::not_joined`]), and what is queued for it counts as undelivered.
    ///
    /// It returns within `deadline` plus [`SHUTDOWN_GRACE`] (200 ms), whatever the backends
    /// do. Sends that wait for room in a full bounded queue or output give up once the deadline
    /// passes ([`ErrorKind::DeadlinePassed`](crate::ErrorKind::DeadlinePassed)).
    ///
    /// # Examples
    ///
    /// A batcher that flushes in its `nop`: the flush reaches the sink, since the sink stops
    /// only after the batcher has ended.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// /// Sends numbers on in batches of 10, and what is left when it stops.
    /// struct Batcher(Vec<u32>);
    /// impl Backend for Batcher {
    ///     type Input = u32;
    ///     type Output = Vec<u32>;
    ///     fn query(&mut self, n: u32, ctx: &mut Context<Vec<u32>>) -> Result<(), BoxError> {
    ///         self.0.push(n);
    ///         if self.0.len() == 10 {
    ///             ctx.send(std::mem::take(&mut self.0))?;
    ///         }
    ///         Ok(())
    ///     }
    ///     fn nop(&mut self, ctx: &mut Context<Vec<u32>>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(std::mem::take(&mut self.0))?)
    ///     }
    /// }
    ///
    /// /// Counts what it gets.
    /// struct Sink;
    /// impl Backend for Sink {
    ///     type Input = Vec<u32>;
    ///     type Output = usize;
    ///     fn query(&mut self, batch: Vec<u32>, ctx: &mut Context<usize>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(batch.len())?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let batcher = builder.entity("batcher", Batcher(Vec::new()));
    /// let sink = builder.entity("sink", Sink);
    /// builder.query_edge(&batcher, &sink);
    /// let counts = builder.output(&sink, "counts");
    /// let system = builder.spawn()?;
    /// for n in 0..25 {
    ///     system.handle(&batcher).query(n)?;
    /// }
    /// let report = system.shutdown(Duration::from_secs(5));
    /// assert!(report.is_clean(), "{report}");
    /// assert_eq!(counts.try_iter().collect::<Vec<_>>(), [10, 10, 5]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(mut self, deadline: Duration) -> Report {
        self.close(deadline)
    }

    fn close(&mut self, deadline: Duration) -> Report {
        self.closed = true;
        let now = Instant::now();
        // A deadline too far to represent is no deadline: a year stands in for it.
        let until = now.checked_add(deadline).unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        self.shared.stopping.store(true, Ordering::SeqCst);

        let mut timed_out = !self.wait_until_idle(until);
        if timed_out {
            self.expire();
        }
        // From here on the agents stop: handles' sends are refused, so that each agent's `Nop`
        // finds room in its queue and nothing new comes in behind it.
        self.shared.intake.store(CLOSING, Ordering::SeqCst);
        let mut stopped = vec![false; self.graph.ports.len()];
        let ended = self.stop_in_order(&mut stopped, until, until.max(Instant::now() + ORDER_GRACE));
        if !ended {
            timed_out = true;
            self.expire();
            self.stop_stragglers(&mut stopped, Instant::now() + STRAGGLER_GRACE);
        }
        let mut joined = vec![true; self.graph.ports.len()];
        for (((port, thread), joined), &pooled) in
            self.graph.ports.iter().zip(&mut self.threads).zip(&mut joined).zip(&self.pooled)
        {
            if pooled && !port.core().ended.load(Ordering::Acquire) {
                // Given up on: its worker may be held forever, and the report says so.
                *joined = false;
                port.drain();
                continue;
            }
            let Some(thread) = thread.take() else { continue };
            if port.core().ended.load(Ordering::Acquire) {
                // It has signed off: only the thread's own exit is left to wait for.
                let _ = thread.join();
            } else {
                // Given up on: the thread is detached, and the report says so.
                *joined = false;
                port.drain();
            }
        }
        let given_up = joined.contains(&false);
        if let Some(workers) = self.workers.take() {
            // Every agent of the pool has ended, unless one was given up on, which may hold its
            // worker: then the workers are left to end on their own.
            let held = self.pooled.iter().zip(&joined).any(|(&pooled, &joined)| pooled && !joined);
            workers.stop(!held);
        }
        // A handle on another thread may be sending right now: its message is counted as sent
        // before it looks at the intake (see `Handle::send_external`). Drain until every message
        // counted is accounted for, so that the last drain sees it. A send into a full bounded
        // queue gives up within 10 ms once its entity has stopped, and every entity has. An
        // agent given up on may hold a message forever: one pass then.
        self.shared.intake.store(CLOSED, Ordering::SeqCst);
        let give_up = Instant::now() + CLOSE_GRACE;
        loop {
            for port in &self.graph.ports {
                port.drain();
            }
            if given_up || self.quiescent() || Instant::now() >= give_up {
                break;
            }
            std::thread::yield_now();
        }
        self.report(timed_out, &joined)
    }

    /// Waits until nothing is queued or being handled anywhere; returns false if `until` came
    /// first. Entities that stopped or failed meanwhile have their queues counted undelivered.
    fn wait_until_idle(&self, until: Instant) -> bool {
        let mut pause = Duration::from_micros(20);
        loop {
            for port in &self.graph.ports {
                if port.core().state() != EntityState::Running {
                    port.drain();
                }
            }
            if self.quiescent() {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            std::thread::sleep(pause.min(until - now));
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }

    /// Past the deadline: sends that wait for room give up, and what is queued is undelivered.
    fn expire(&self) {
        self.shared.expired.store(true, Ordering::SeqCst);
        for port in &self.graph.ports {
            port.drain();
        }
    }

    /// Stops the entities group by group, each once the groups upstream of it have ended (see
    /// [`shutdown`](Self::shutdown)). Returns whether every agent ended by `stop_by`; once
    /// `deadline` passes, waits for room give up.
    fn stop_in_order(&self, stopped: &mut [bool], deadline: Instant, stop_by: Instant) -> bool {
        let edges: Vec<_> = self.graph.edges.iter().map(|e| (e.from, e.to)).collect();
        let groups = stop_groups(self.graph.ports.len(), &edges);
        let everyone: Vec<usize> = (0..self.graph.ports.len()).collect();
        self.stop_set(&everyone, &groups, stopped, Some(deadline), stop_by)
    }

    /// Sends `Nop` to every agent still running, at once, and waits until `by` for them to end.
    fn stop_stragglers(&self, stopped: &mut [bool], by: Instant) {
        loop {
            let live = self.shared.signal().live_agents;
            let mut pending = false;
            for (port, stopped) in self.graph.ports.iter().zip(&mut *stopped) {
                *stopped = *stopped || port.try_stop();
                pending |= !*stopped;
            }
            let now = Instant::now();
            if live == 0 || now >= by {
                return;
            }
            let wait = if pending { (by - now).min(Duration::from_millis(1)) } else { by - now };
            self.shared.wait_while(Some(wait), true, |s| s.live_agents == live);
        }
    }

    /// Whether no message is queued or being handled anywhere, and no start hook or timer
    /// handler is running.
    ///
    /// Every message is counted as sent (by its sender, before it is enqueued) and later as done
    /// (handled, dropped by a panicking handler, or undelivered, by whoever finishes it). Reading
    /// every "done" counter first and every "sent" counter after gives `done_read <= done(t) <=
    /// sent(t) <= sent_read` for the moment `t` between the two passes; so equal sums mean
    /// nothing was in flight at `t`. Once `stopping` is set, nothing inside the system can start
    /// new work after such a moment.
    fn quiescent(&self) -> bool {
        let mut done = 0u64;
        for port in &self.graph.ports {
            let c = &port.core().counters;
            done += c.handled.load(Ordering::SeqCst)
                + c.dropped.load(Ordering::SeqCst)
                + c.undelivered.load(Ordering::SeqCst)
                + c.outputs.load(Ordering::SeqCst)
                + c.activations_done.load(Ordering::SeqCst);
        }
        let mut sent = self.shared.external.load(Ordering::SeqCst);
        for port in &self.graph.ports {
            let c = &port.core().counters;
            sent += c.sent.load(Ordering::SeqCst) + c.activations.load(Ordering::SeqCst);
        }
        done == sent
    }

    fn entity_report(&self, index: usize, joined: bool) -> EntityReport {
        let port = &self.graph.ports[index];
        let core = port.core();
        EntityReport {
            name: core.name.to_string(),
            id: core.id,
            state: core.state(),
            stats: port.stats(),
            panic: core.panic.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            joined,
        }
    }

    fn report(&self, timed_out: bool, joined: &[bool]) -> Report {
        let entities = joined.iter().enumerate().map(|(index, &joined)| self.entity_report(index, joined)).collect();
        Report {
            edges: self.edges(),
            rankings: self.rankings(),
            #[cfg(feature = "bus")]
            bus: self
                .shared
                .buses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|counts| counts.report())
                .collect(),
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
