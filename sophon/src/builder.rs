//! Building a system: entities, edges, checks, then one thread per entity.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::agent::{Agent, vacant};
use crate::backend::{BoxBackend, IntoBackend};
use crossbeam_channel::Sender;

use crate::context::{Context, EdgeKind, Outlet, OutputOutlet, PortOutlet, QueryOutlet, ReadOutlet, Sibling};
use crate::entity::{Core, EntityState, Envelope, ErasedPort, Port, Visit};
use crate::err::BuildProblem;
use crate::pool::{Runnable, Runtime};
use crate::ports::{OutPort, Ports};
use crate::replicas::{BroadcastOutlet, ErasedSet, Front, Ranking, Replay, ReplicaSet, RouteOutlet};
use crate::restart::{Factory, FactoryOutput, Restart, Supervisor, boxed_factory};
use crate::shared::Shared;

static NEXT_BUILDER: AtomicU64 = AtomicU64::new(0);

/// A typed reference to an entity while a system is being built: used to add edges, and to get
/// the entity's [`Handle`](crate::Handle) from the running [`System`](crate::System).
pub struct Node<I, O> {
    pub(crate) builder: u64,
    pub(crate) index: usize,
    types: PhantomData<fn(I) -> O>,
}

impl<I, O> Node<I, O> {
    pub(crate) fn new(builder: u64, index: usize) -> Self {
        Node { builder, index, types: PhantomData }
    }
}

impl<I, O> Clone for Node<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O> Copy for Node<I, O> {}

impl<I, O> fmt::Debug for Node<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("index", &self.index).finish_non_exhaustive()
    }
}

/// Options of one entity, given to [`SystemBuilder::entity_with`] and
/// [`SystemBuilder::supervised`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use sophon::{EntityOptions, Restart};
///
/// let options = EntityOptions::new().bounded(64).restart(5, Duration::from_secs(10));
/// assert_eq!(options.capacity(), Some(64));
/// assert_eq!(options.restart_policy(), Some(Restart::new(5, Duration::from_secs(10))));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntityOptions {
    capacity: Option<usize>,
    restart: Option<Restart>,
    thread: bool,
}

impl EntityOptions {
    /// The defaults: unbounded queues, no restarts.
    pub fn new() -> Self {
        EntityOptions::default()
    }

    /// Gives the entity bounded queues: senders wait for room, which slows a fast producer down
    /// to the entity's pace. An entity has two queues, one for the queries of its query edges and
    /// one for everything else (reads, and messages sent through handles); each holds at most
    /// `capacity` messages, which must be at least 1 ([`spawn`](SystemBuilder::spawn) refuses
    /// 0).
    ///
    /// A wait for room ends with an error rather than forever: when the entity stops, when the
    /// shutdown deadline passes, or at once when a handler waits on its own entity
    /// ([`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock)). A loop of edges whose
    /// entities are all bounded could wait forever, so `spawn` refuses it.
    pub fn bounded(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// The capacity of each of the entity's queues; `None` when unbounded.
    pub fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    /// Restarts the entity when its backend panics, at most `max` times within any window of
    /// `within`: see [`SystemBuilder::supervised`], which gives the factory that rebuilds it.
    pub fn restart(mut self, max: u32, within: std::time::Duration) -> Self {
        self.restart = Some(Restart::new(max, within));
        self
    }

    /// The restart policy, if any.
    pub fn restart_policy(&self) -> Option<Restart> {
        self.restart
    }

    /// Gives the entity a thread of its own in a system run by a pool
    /// ([`Runtime::Pool`](crate::Runtime::Pool)), as a backend that blocks must have: one that
    /// waits on a terminal, a socket or a process, or computes for long, would otherwise hold a
    /// worker that every other entity shares. Backends that block say so themselves
    /// ([`Backend::blocking`](crate::Backend::blocking)), and then get a thread without this.
    /// In a system of threads every entity has its own already.
    pub fn thread(mut self) -> Self {
        self.thread = true;
        self
    }

    /// Whether the entity asks for a thread of its own (see [`thread`](Self::thread)).
    pub fn own_thread(&self) -> bool {
        self.thread
    }
}

/// The cycles of the graph made of `edges` (see `sophon_graph::cycles`), looking only at the
/// entities they touch: a system of a million entities and a few edges is checked in time for
/// its edges.
fn cycles_among(edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut touched: Vec<usize> = edges.iter().flat_map(|&(from, to)| [from, to]).collect();
    touched.sort_unstable();
    touched.dedup();
    // Dense numbers in the same order, so that each cycle still starts at its lowest entity and
    // the cycles come in the same order.
    let dense = |entity: usize| touched.binary_search(&entity).expect("touched by an edge");
    let edges: Vec<(usize, usize)> = edges.iter().map(|&(from, to)| (dense(from), dense(to))).collect();
    sophon_graph::cycles(touched.len(), &edges)
        .into_iter()
        .map(|cycle| cycle.into_iter().map(|node| touched[node]).collect())
        .collect()
}

/// The name of member `i` of the group `group`: `workers[3]`.
pub(crate) fn member_name(group: &str, i: usize) -> String {
    format!("{group}[{i}]")
}

/// What the builder keeps of an entity until it is spawned.
pub(crate) trait PendingAgent: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Whether its backend says it blocks.
    fn blocking(&self) -> bool;
    /// Runs it on the calling thread until it ends.
    fn run(self: Box<Self>);
    /// Makes it an agent of the pool.
    fn into_runnable(self: Box<Self>) -> Box<dyn Runnable>;
}

impl<I: Send + 'static, O: Send + 'static> PendingAgent for Agent<I, O> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn blocking(&self) -> bool {
        Agent::blocking(self)
    }

    fn run(self: Box<Self>) {
        (*self).run();
    }

    fn into_runnable(self: Box<Self>) -> Box<dyn Runnable> {
        Box::new((*self).pooled())
    }
}

/// An entity the builder added, to start with the system (or, extending a running system, into
/// it).
pub(crate) struct NewAgent {
    /// Its index among the system's entities.
    pub(crate) index: usize,
    /// Whether it asked for a thread of its own (see [`EntityOptions::thread`]).
    pub(crate) own_thread: bool,
    pub(crate) agent: Box<dyn PendingAgent>,
}

/// An edge out of an entity that is already running: its agent puts it in place between two
/// messages, then sends on the sender given (or drops it, if it ends first). False if the entity
/// refused it (it has ended).
pub(crate) type Attach = Box<dyn FnOnce(Sender<()>) -> bool + Send>;

/// The entities and edges of a system, as its builder and then the running system know them.
#[derive(Default)]
pub(crate) struct Graph {
    pub(crate) ports: Vec<Arc<dyn ErasedPort>>,
    /// The entities by name; one removed from the running system is no longer here.
    pub(crate) names: HashMap<Arc<str>, usize>,
    /// Whether each entity has bounded queues.
    pub(crate) bounded: Vec<bool>,
    /// Whether each entity was removed from the running system.
    pub(crate) removed: Vec<bool>,
    /// Every edge between entities (outputs are not among them); the edges of a removed entity
    /// are dropped with it.
    pub(crate) edges: Vec<EdgeSpec>,
    /// Every edge to an output, for drawing the graph.
    pub(crate) outputs: Vec<OutputSpec>,
    /// The replicated entities: the index of each one's front, and its replicas.
    pub(crate) sets: Vec<(usize, Arc<dyn ErasedSet>)>,
    /// Saved rankings the replicated entities start from (see [`SystemBuilder::rankings`]).
    pub(crate) seeds: Arc<Mutex<Vec<Ranking>>>,
}

/// An edge from an entity to an output.
pub(crate) struct OutputSpec {
    pub(crate) from: usize,
    pub(crate) name: Arc<str>,
    pub(crate) port: Option<&'static str>,
    /// Messages sent along it, as its agent publishes the count.
    pub(crate) carried: Arc<AtomicU64>,
}

impl Graph {
    pub(crate) fn name(&self, index: usize) -> &str {
        &self.ports[index].core().name
    }

    /// How many entities, edges and outputs it has: where [`truncate`](Self::truncate) goes
    /// back to.
    pub(crate) fn marks(&self) -> (usize, usize, usize) {
        (self.ports.len(), self.edges.len(), self.outputs.len())
    }

    /// Forgets everything added after `marks` were taken: what a refused extension had added.
    pub(crate) fn truncate(&mut self, (entities, edges, outputs): (usize, usize, usize)) {
        self.ports.truncate(entities);
        self.bounded.truncate(entities);
        self.removed.truncate(entities);
        self.edges.truncate(edges);
        self.outputs.truncate(outputs);
        self.sets.retain(|(front, _)| *front < entities);
        self.names.retain(|_, index| *index < entities);
    }
}

/// A graph that went through the checks: ready to start if no problem was found.
pub(crate) struct Checked {
    pub(crate) id: u64,
    pub(crate) runtime: Runtime,
    pub(crate) shared: Arc<Shared>,
    pub(crate) graph: Graph,
    pub(crate) agents: Vec<NewAgent>,
    pub(crate) attach: Vec<Attach>,
    pub(crate) problems: Vec<BuildProblem>,
}

pub(crate) struct EdgeSpec {
    pub(crate) from: usize,
    pub(crate) to: usize,
    /// The output port it is attached to (index and name), if not the whole output.
    port: Option<(usize, &'static str)>,
    pub(crate) kind: EdgeKind,
    pub(crate) intended_loop: bool,
    /// Messages sent along it, as its agent publishes the count.
    pub(crate) carried: Arc<AtomicU64>,
}

impl EdgeSpec {
    /// The name of the output port it is attached to, if not the whole output.
    pub(crate) fn port_name(&self) -> Option<&'static str> {
        self.port.map(|(_, name)| name)
    }
}

/// Builds a system: add entities and edges, then [`spawn`](SystemBuilder::spawn) it.
///
/// This is the API `agent_system!` expands to, and the one to use for a graph known only at run
/// time (loaded from a file, say). Edges are typed: an edge from `a` to `b` compiles only when
/// `b`'s input can be made from `a`'s output with `From`. Problems the types cannot catch
/// (duplicate names, duplicate edges, query cycles) are all reported together by `spawn`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use sophon::{Backend, BoxError, Context, SystemBuilder};
///
/// struct Upper;
/// impl Backend for Upper {
///     type Input = String;
///     type Output = String;
///     fn query(&mut self, s: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
///         Ok(ctx.send(s.to_uppercase())?)
///     }
/// }
///
/// struct Exclaim;
/// impl Backend for Exclaim {
///     type Input = String;
///     type Output = String;
///     fn query(&mut self, s: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
///         Ok(ctx.send(format!("{s}!"))?)
///     }
/// }
///
/// let mut builder = SystemBuilder::new();
/// let upper = builder.entity("upper", Upper);
/// let exclaim = builder.entity("exclaim", Exclaim);
/// builder.query_edge(&upper, &exclaim);
/// let out = builder.output(&exclaim, "out");
/// let system = builder.spawn()?;
///
/// system.handle(&upper).query("hello".to_string())?;
/// assert_eq!(out.recv()?, "HELLO!");
/// assert!(system.shutdown(Duration::from_secs(5)).is_clean());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SystemBuilder {
    id: u64,
    shared: Arc<Shared>,
    graph: Graph,
    /// How many entities and edges the system had before this builder: none, unless it extends
    /// a running system (see [`System::extend`](crate::System::extend)).
    base: usize,
    base_edges: usize,
    /// Whether it extends a running system.
    extending: bool,
    /// The agents of the entities it added, the first of them that of entity `base`.
    agents: Vec<NewAgent>,
    attach: Vec<Attach>,
    problems: Vec<BuildProblem>,
    runtime: Option<Runtime>,
    /// Replicas this builder adds to replicated entities of the running system it extends
    /// (front, replica): they join their entity once the extension is accepted.
    pending: Vec<(usize, usize)>,
}

impl fmt::Debug for SystemBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = (self.base..self.graph.ports.len()).map(|i| self.graph.name(i)).collect();
        f.debug_struct("SystemBuilder").field("entities", &names).finish_non_exhaustive()
    }
}

impl Default for SystemBuilder {
    fn default() -> Self {
        SystemBuilder::new()
    }
}

impl SystemBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        SystemBuilder::extending(
            NEXT_BUILDER.fetch_add(1, Ordering::Relaxed),
            Arc::new(Shared::new()),
            Graph::default(),
        )
    }

    /// A builder that adds to the running system `id`, whose graph is `graph` (see
    /// [`System::extend`](crate::System::extend)); with an empty graph, a new system's.
    pub(crate) fn extending(id: u64, shared: Arc<Shared>, graph: Graph) -> Self {
        SystemBuilder {
            id,
            shared,
            base: graph.ports.len(),
            base_edges: graph.edges.len(),
            extending: !graph.ports.is_empty(),
            graph,
            agents: Vec::new(),
            attach: Vec::new(),
            problems: Vec::new(),
            runtime: None,
            pending: Vec::new(),
        }
    }

    /// Chooses how the system runs its agents: a thread each ([`Runtime::Threads`]) or a pool
    /// of workers ([`Runtime::Pool`]). Without this, [`Runtime::from_env`] chooses: threads,
    /// unless `SOPHON_RUNTIME` says otherwise. Backends, edges, handles and reports are the same
    /// in both. A running system keeps its runtime: extending one
    /// ([`System::extend`](crate::System::extend)), this is refused.
    pub fn runtime(&mut self, runtime: Runtime) -> &mut Self {
        self.runtime = Some(runtime);
        self
    }

    /// Runs the system on a pool of `workers` threads (at least 1): `runtime(Runtime::Pool {
    /// workers })`.
    ///
    /// # Examples
    ///
    /// Ten thousand counters on two worker threads:
    ///
    /// ```
    /// use std::time::Duration;
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Counter(u64);
    /// impl Backend for Counter {
    ///     type Input = u64;
    ///     type Output = u64;
    ///     fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
    ///         self.0 += n;
    ///         Ok(ctx.send(self.0)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// builder.pool(2);
    /// let (tx, totals) = sophon::crossbeam_channel::unbounded();
    /// let counters: Vec<_> = (0..10_000)
    ///     .map(|i| {
    ///         let node = builder.entity(&format!("counter{i}"), Counter(i));
    ///         builder.output_to(&node, "totals", tx.clone());
    ///         node
    ///     })
    ///     .collect();
    /// let system = builder.spawn()?;
    /// for node in &counters {
    ///     system.handle(node).query(1)?;
    /// }
    /// let sum: u64 = totals.iter().take(10_000).sum();
    /// assert_eq!(sum, (1..=10_000).sum::<u64>());
    /// assert!(system.shutdown(Duration::from_secs(5)).is_clean());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pool(&mut self, workers: usize) -> &mut Self {
        self.runtime(Runtime::Pool { workers: workers.max(1) })
    }

    /// The runtime the system will have: the one given to [`runtime`](Self::runtime), or else
    /// [`Runtime::from_env`]'s.
    pub fn runtime_choice(&self) -> Runtime {
        self.runtime.unwrap_or_else(Runtime::from_env)
    }

    /// Adds an entity running `backend`, with unbounded queues. The backend may also be a
    /// [`BoxBackend`], chosen at run time (see [`IntoBackend`]).
    pub fn entity<B: IntoBackend>(&mut self, name: &str, backend: B) -> Node<B::Input, B::Output> {
        self.entity_with(name, backend, EntityOptions::new())
    }

    /// Adds an entity running `backend`, with `options`.
    pub fn entity_with<B: IntoBackend>(
        &mut self,
        name: &str,
        backend: B,
        options: EntityOptions,
    ) -> Node<B::Input, B::Output> {
        self.boxed_entity(name, backend.into_boxed(), options)
    }

    /// Adds a group of `size` entities of one kind, named `name[0]`, `name[1]`, ..., the backend
    /// of member `i` made by `member(i)`; returns their nodes, in order. A graph whose size is
    /// known only at run time (a worker per core, a fan-out of `n`) is declared this way, and in
    /// `agent_system!` as `workers[n] = |i| Worker::new(i);`.
    ///
    /// # Examples
    ///
    /// ```
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Scale(u32);
    /// impl Backend for Scale {
    ///     type Input = u32;
    ///     type Output = u32;
    ///     fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(n * self.0)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let scales = builder.group("scale", 3, |i| Scale(i as u32 + 1));
    /// let (tx, out) = sophon::crossbeam_channel::unbounded();
    /// for node in &scales {
    ///     builder.output_to(node, "out", tx.clone());
    /// }
    /// let system = builder.spawn()?;
    /// assert_eq!(system.entity_names().collect::<Vec<_>>(), ["scale[0]", "scale[1]", "scale[2]"]);
    /// for node in &scales {
    ///     system.handle(node).query(10)?;
    /// }
    /// let mut got: Vec<u32> = out.iter().take(3).collect();
    /// got.sort();
    /// assert_eq!(got, [10, 20, 30]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn group<B: IntoBackend>(
        &mut self,
        name: &str,
        size: usize,
        member: impl FnMut(usize) -> B,
    ) -> Vec<Node<B::Input, B::Output>> {
        self.group_with(name, size, member, EntityOptions::new())
    }

    /// Adds a group of entities of one kind, each with `options` (see [`group`](Self::group)).
    pub fn group_with<B: IntoBackend>(
        &mut self,
        name: &str,
        size: usize,
        mut member: impl FnMut(usize) -> B,
        options: EntityOptions,
    ) -> Vec<Node<B::Input, B::Output>> {
        (0..size).map(|i| self.entity_with(&member_name(name, i), member(i), options)).collect()
    }

    /// Adds an entity served by several backends, its *replicas*: each runs as an agent of its
    /// own (named `name/0`, `name/1`, ...), and the entity keeps one name, one id and one typed
    /// handle. Each query sent to it (by an edge, or a handle) goes to one replica, the one its
    /// sender measures cheapest (peak-EWMA latency times messages in flight, by power of two
    /// choices); each read goes to every running replica, so that replicas keep the same state.
    /// A replica that keeps failing, or stays far slower than the others, is culled and probed
    /// until it recovers; what was queued at it goes to the others. The replicas may be of
    /// different backend types (box them: [`BoxBackend`]); they share the entity's input and
    /// output types. Edges from the entity are edges from every replica.
    ///
    /// Each relationship's ranking of the replicas is in the report
    /// ([`Report::rankings`](crate::Report::rankings)); start a later system from it with
    /// [`rankings`](Self::rankings). A replica's own handle (see
    /// [`Handle::replicas`](crate::Handle::replicas)) swaps its backend or stops it alone.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sophon::{Backend, BoxBackend, BoxError, Context, SystemBuilder};
    ///
    /// /// Answers after `self.0` milliseconds.
    /// struct Model(u64);
    /// impl Backend for Model {
    ///     type Input = String;
    ///     type Output = String;
    ///     fn query(&mut self, prompt: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
    ///         std::thread::sleep(Duration::from_millis(self.0));
    ///         Ok(ctx.send(prompt.to_uppercase())?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let backends: Vec<BoxBackend<String, String>> = vec![Box::new(Model(1)), Box::new(Model(20))];
    /// let model = builder.replicas("model", backends);
    /// let out = builder.output(&model, "out");
    /// let system = builder.spawn()?;
    /// let handle = system.handle(&model);
    /// for i in 0..50 {
    ///     handle.query(format!("q{i}"))?;
    ///     out.recv()?;
    /// }
    /// // Most went to the fast replica.
    /// let report = system.shutdown(Duration::from_secs(5));
    /// let (fast, slow) = (report.entity("model/0").unwrap(), report.entity("model/1").unwrap());
    /// assert!(fast.stats.handled > slow.stats.handled);
    /// assert_eq!(report.rankings[0].best().unwrap().name, "model/0");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn replicas<B>(&mut self, name: &str, backends: impl IntoIterator<Item = B>) -> Node<B::Input, B::Output>
    where
        B: IntoBackend,
        B::Input: Clone,
    {
        self.replicas_with(name, backends, EntityOptions::new())
    }

    /// Adds a replicated entity whose replicas each have `options` (see
    /// [`replicas`](Self::replicas)). A restart policy needs a factory per replica, which this
    /// does not take: it is refused by `spawn`, as for [`boxed_entity`](Self::boxed_entity).
    pub fn replicas_with<B>(
        &mut self,
        name: &str,
        backends: impl IntoIterator<Item = B>,
        options: EntityOptions,
    ) -> Node<B::Input, B::Output>
    where
        B: IntoBackend,
        B::Input: Clone,
    {
        let backends: Vec<_> = backends.into_iter().map(IntoBackend::into_boxed).collect();
        if backends.is_empty() {
            self.problems.push(BuildProblem::NoReplicas { name: name.to_string() });
        }
        let front = self.add(name, vacant(), None, EntityOptions::new());
        let port = self.port_of::<B::Input, B::Output>(&front);
        let set = Arc::new(ReplicaSet::new(port.core.clone(), <B::Input as Clone>::clone, self.graph.seeds.clone()));
        let _ = port.replicas.set(set.clone());
        let new = front.index - self.base;
        self.agents[new]
            .agent
            .as_any_mut()
            .downcast_mut::<Agent<B::Input, B::Output>>()
            .expect("a node's types are those of its entity")
            .replace_backend(Box::new(Front { set: set.clone() }));
        self.graph.sets.push((front.index, set.clone()));
        for backend in backends {
            self.replica(&front, &set, backend, options);
        }
        front
    }

    /// Adds a replica to the replicated entity `entity` (see [`replicas`](Self::replicas)),
    /// with the entity's edges out; in [`System::extend`](crate::System::extend), to a running
    /// system, where it takes its share of the entity's queries once the extension returns.
    /// Its name is the entity's followed by its number: `model/3` for a fourth. Refused by
    /// `spawn` or `extend` if `entity` is not replicated.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sophon::{Backend, BoxError, Context, SystemBuilder};
    ///
    /// struct Tag(&'static str);
    /// impl Backend for Tag {
    ///     type Input = u32;
    ///     type Output = &'static str;
    ///     fn query(&mut self, _: u32, ctx: &mut Context<&'static str>) -> Result<(), BoxError> {
    ///         Ok(ctx.send(self.0)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let model = builder.replicas("model", [Tag("first")]);
    /// let out = builder.output(&model, "out");
    /// let mut system = builder.spawn()?;
    /// let added = system.extend(|builder| builder.add_replica(&model, Tag("second")))?;
    /// assert_eq!(system.handle(&added).name(), "model/1");
    /// // The first replica leaves; the second serves.
    /// system.remove("model/0", Duration::from_secs(5));
    /// system.handle(&model).query(1)?;
    /// assert_eq!(out.recv()?, "second");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_replica<B>(&mut self, entity: &Node<B::Input, B::Output>, backend: B) -> Node<B::Input, B::Output>
    where
        B: IntoBackend,
        B::Input: Clone,
    {
        match self.set_of(entity) {
            Some(set) => self.replica(entity, &set, backend.into_boxed(), EntityOptions::new()),
            None => {
                if entity.builder == self.id && entity.index < self.graph.ports.len() {
                    let name = self.graph.name(entity.index).to_string();
                    self.problems.push(BuildProblem::NotReplicated { name });
                } else {
                    self.problems.push(BuildProblem::ForeignNode);
                }
                *entity
            }
        }
    }

    /// Adds one replica of `front`'s entity: an entity of its own, its share of the routing (an
    /// edge from the front, for the report and for shutdown's order), and the entity's edges out.
    fn replica<I: Send + 'static, O: Send + 'static>(
        &mut self,
        front: &Node<I, O>,
        set: &Arc<ReplicaSet<I, O>>,
        backend: BoxBackend<I, O>,
        options: EntityOptions,
    ) -> Node<I, O> {
        let number = set.members().len() + self.pending.iter().filter(|(f, _)| *f == front.index).count();
        let member = self.boxed_entity(&format!("{}/{number}", self.graph.name(front.index)), backend, options);
        let port = self.port_of::<I, O>(&member);
        let routed = Arc::new(AtomicU64::new(0));
        self.graph.edges.push(EdgeSpec {
            from: front.index,
            to: member.index,
            port: None,
            kind: EdgeKind::Replica,
            intended_loop: false,
            carried: routed.clone(),
        });
        for replay in set.outs() {
            replay(self, &member);
        }
        let set = set.clone();
        if self.extending {
            // Routed to once the extension is accepted and the replica's agent runs.
            self.pending.push((front.index, member.index));
            self.attach.push(Box::new(move |done: Sender<()>| {
                set.add(port, routed);
                let _ = done.send(());
                true
            }));
        } else {
            set.add(port, routed);
        }
        member
    }

    /// Adds an entity of another process, `name` on `bus`, which that process exports (see
    /// [`export`](Self::export)): edges into it, its handle's sends and asks go to it there,
    /// and its answers come back to this process's edges out of it (and to askers). Its input
    /// and output are encoded with serde and postcard; both types must be those the exporter
    /// has, or the system refuses to spawn with [`BuildProblem::Bus`], naming both.
    ///
    /// The answer to a query comes back when this process has edges out of the entity, and to
    /// an ask always; it then goes to this process only. Messages are gathered and added to the
    /// stream in one round trip when the importer's agent runs out of them.
    #[cfg(feature = "bus")]
    pub fn import<I, O>(&mut self, bus: &crate::bus::Bus, name: &str) -> Node<I, O>
    where
        I: serde::Serialize + Send + 'static,
        O: serde::de::DeserializeOwned + Clone + Send + 'static,
    {
        match crate::bus::Remote::<I, O>::new(bus, name) {
            Ok((remote, me)) => {
                let node = self.entity(name, remote);
                if self.usable(&node) {
                    let _ = me.set(crate::entity::Handle::new(&self.port_of(&node)));
                }
                node
            }
            Err(error) => {
                self.problems.push(BuildProblem::Bus { name: name.to_string(), error: error.to_string() });
                self.add(name, vacant(), None, EntityOptions::new())
            }
        }
    }

    /// An entity that does nothing, which `agent_system!` declares in place of one it could not
    /// (a remote entity without a bus, already reported), so that the rest still type-checks.
    #[doc(hidden)]
    pub fn placeholder<I: Send + 'static, O: Send + 'static>(&mut self, name: &str) -> Node<I, O> {
        self.add(name, vacant(), None, EntityOptions::new())
    }

    /// Exports `node`'s entity on `bus`, for other processes to import: a reader, the entity
    /// `bus:name`, takes what they send from the entity's stream (as one consumer of its group,
    /// shared by every process that exports it) and hands it to the entity, acknowledging each
    /// message once its handler has returned. What is taken but not yet handled when this
    /// process dies stays pending in the group, and is taken again by the next reader.
    #[cfg(feature = "bus")]
    pub fn export<I, O>(&mut self, node: &Node<I, O>, bus: &crate::bus::Bus) -> &mut Self
    where
        I: serde::de::DeserializeOwned + Send + 'static,
        O: serde::Serialize + Send + 'static,
    {
        if !self.usable(node) {
            return self;
        }
        let port = self.port_of::<I, O>(node);
        let target = crate::entity::Handle::new(&port);
        let name = format!("bus:{}", target.name());
        let carried = Arc::new(AtomicU64::new(0));
        match crate::bus::Reader::new(bus, target, uuid::Uuid::new_v4().to_string(), carried.clone()) {
            Ok(reader) => {
                let reader = self.entity_with(&name, reader, EntityOptions::new().thread());
                // Not an edge any agent sends along, but the order in which they stop: the
                // reader before the entity it feeds.
                self.graph.edges.push(EdgeSpec {
                    from: reader.index,
                    to: node.index,
                    port: None,
                    kind: EdgeKind::Query,
                    intended_loop: false,
                    carried,
                });
            }
            Err(error) => self.problems.push(BuildProblem::Bus { name, error: error.to_string() }),
        }
        self
    }

    /// The typed port of `node`'s entity, one of this builder's graph.
    fn port_of<I: Send + 'static, O: Send + 'static>(&self, node: &Node<I, O>) -> Arc<Port<I, O>> {
        self.graph.ports[node.index]
            .clone()
            .as_any()
            .downcast::<Port<I, O>>()
            .expect("a node's types are those of its entity")
    }

    /// The replicas of `node`'s entity, if it is replicated.
    fn set_of<I: Send + 'static, O: Send + 'static>(&self, node: &Node<I, O>) -> Option<Arc<ReplicaSet<I, O>>> {
        if node.builder != self.id || node.index >= self.graph.ports.len() {
            return None;
        }
        self.port_of(node).replicas.get().cloned()
    }

    /// Remembers an edge out of the replicated entity `from` for replicas added later; in an
    /// extension, once it is accepted.
    fn remember_out<I: Send + 'static, O: Send + 'static>(
        &mut self,
        from: &Node<I, O>,
        replay: impl Fn(&mut SystemBuilder, &Node<I, O>) + Send + Sync + 'static,
    ) {
        let Some(set) = self.set_of(from) else { return };
        let replay: Replay<I, O> = Arc::new(replay);
        if self.extending {
            self.attach.push(Box::new(move |done: Sender<()>| {
                set.add_out(replay);
                let _ = done.send(());
                true
            }));
        } else {
            set.add_out(replay);
        }
    }

    /// Starts the replicated entities from saved rankings (from a report's
    /// [`rankings`](crate::Report::rankings), say, serialized and read back): each relationship
    /// starts from its own ranking, or from any of its entity's, with the estimates it gives
    /// for replicas of the same names. Its first messages then go to the replicas that were
    /// fast, rather than to one picked at random to be measured.
    pub fn rankings(&mut self, rankings: impl IntoIterator<Item = Ranking>) -> &mut Self {
        self.graph.seeds.lock().unwrap_or_else(|e| e.into_inner()).extend(rankings);
        self
    }

    /// The replicas of `node`, if it is a replicated entity of this builder's graph: those
    /// running, and those this builder adds.
    fn replicas_of<I: Send + 'static, O: Send + 'static>(&self, node: &Node<I, O>) -> Option<Vec<Node<I, O>>> {
        let set = self.set_of(node)?;
        let members = set.members();
        let running = members.iter().filter_map(|m| self.graph.names.get(&m.port.core.name).copied());
        let pending = self.pending.iter().filter(|(front, _)| *front == node.index).map(|&(_, member)| member);
        Some(running.chain(pending).map(|index| Node { builder: self.id, index, types: PhantomData }).collect())
    }

    /// Whether the entity at `index` was removed from the running system.
    fn is_removed(&self, index: usize) -> bool {
        self.graph.removed.get(index).copied().unwrap_or(true)
    }

    /// Adds an entity running a backend that is already boxed.
    pub fn boxed_entity<I: Send + 'static, O: Send + 'static>(
        &mut self,
        name: &str,
        backend: BoxBackend<I, O>,
        options: EntityOptions,
    ) -> Node<I, O> {
        if options.restart.is_some() {
            self.problems.push(BuildProblem::RestartWithoutFactory { name: name.to_string() });
        }
        self.add(name, backend, None, options)
    }

    /// Adds an entity whose backend `factory` builds, and builds again each time the backend
    /// panics, as the restart policy of `options` allows ([`EntityOptions::restart`]).
    ///
    /// On a panic the message being handled is reported as failed (counted in
    /// [`Stats::panics`](crate::Stats::panics), sent to [`System::failures`](crate::System::failures)), the old backend
    /// is dropped, the factory builds a new one, and its [`start`](crate::Backend::start) runs;
    /// then the agent goes on with the next message. The entity keeps its id, its handles and
    /// everything queued for it. Past the policy's limit, or if the factory fails or panics, the
    /// entity fails as one without a policy does, with a failure of kind
    /// [`HandlerKind::Restart`](crate::HandlerKind::Restart) that says why. Without a policy in
    /// `options`, the factory is only called once.
    ///
    /// The factory returns a backend, or a `Result` of one (see [`FactoryOutput`]). It is called
    /// here, once, for the first backend; if that fails, so does [`spawn`](Self::spawn).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use sophon::{Backend, BoxError, Context, EntityOptions, SystemBuilder};
    ///
    /// /// Doubles numbers, and panics on 13.
    /// struct Fragile;
    /// impl Backend for Fragile {
    ///     type Input = u32;
    ///     type Output = u32;
    ///     fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
    ///         assert_ne!(n, 13, "unlucky");
    ///         Ok(ctx.send(n * 2)?)
    ///     }
    /// }
    ///
    /// let mut builder = SystemBuilder::new();
    /// let options = EntityOptions::new().restart(3, Duration::from_secs(10));
    /// let fragile = builder.supervised("fragile", || Fragile, options);
    /// let out = builder.output(&fragile, "out");
    /// let system = builder.spawn()?;
    /// let handle = system.handle(&fragile);
    /// let id = handle.id();
    ///
    /// for n in [12, 13, 14] {
    ///     handle.query(n)?;
    /// }
    /// assert_eq!(out.iter().take(2).collect::<Vec<_>>(), [24, 28]);
    /// let failure = system.failures().recv()?;
    /// assert!(failure.panicked);
    /// assert_eq!(failure.message(), "assertion `left != right` failed: unlucky\n  left: 13\n right: 13");
    ///
    /// let report = system.shutdown(Duration::from_secs(5));
    /// let fragile = report.entity("fragile").unwrap();
    /// assert_eq!((fragile.stats.handled, fragile.stats.panics, fragile.stats.restarts), (2, 1, 1));
    /// assert_eq!(fragile.id, id);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn supervised<F, R>(
        &mut self,
        name: &str,
        factory: F,
        options: EntityOptions,
    ) -> Node<<R::Backend as IntoBackend>::Input, <R::Backend as IntoBackend>::Output>
    where
        F: FnMut() -> R + Send + 'static,
        R: FactoryOutput,
    {
        let mut factory = boxed_factory(factory);
        match factory() {
            Ok(backend) => self.add(name, backend, Some(factory), options),
            Err(error) => {
                self.problems.push(BuildProblem::Factory { name: name.to_string(), error });
                self.add(name, vacant(), None, options)
            }
        }
    }

    fn add<I: Send + 'static, O: Send + 'static>(
        &mut self,
        name: &str,
        backend: BoxBackend<I, O>,
        factory: Option<Factory<I, O>>,
        options: EntityOptions,
    ) -> Node<I, O> {
        let name: Arc<str> = Arc::from(name);
        let index = self.graph.ports.len();
        if self.graph.names.contains_key(&name) {
            self.problems.push(BuildProblem::DuplicateName { name: name.to_string() });
        } else {
            self.graph.names.insert(name.clone(), index);
        }
        if options.capacity == Some(0) {
            self.problems.push(BuildProblem::ZeroCapacity { name: name.to_string() });
        }
        let supervisor = match (options.restart, factory) {
            (Some(policy), Some(factory)) => Some(Supervisor::new(policy, factory)),
            _ => None,
        };
        let core = Arc::new(Core::new(name.clone(), self.shared.clone()));
        // A capacity of 0 is refused by `spawn`; until then the port is made as if it were 1.
        let port = Arc::new(Port::new(core, options.capacity.map(|c| c.max(1))));
        let bounded = options.capacity.is_some();
        let agent = Agent::new(port.clone(), backend, supervisor, bounded);
        self.graph.ports.push(port);
        self.graph.bounded.push(bounded);
        self.graph.removed.push(false);
        self.agents.push(NewAgent { index, own_thread: options.thread, agent: Box::new(agent) });
        Node { builder: self.id, index, types: PhantomData }
    }

    /// Adds a query edge: `to` gets `from`'s output as a query, and answers it.
    pub fn query_edge<I, O, I2, O2>(&mut self, from: &Node<I, O>, to: &Node<I2, O2>) -> &mut Self
    where
        I: Send + 'static,
        O: Send + 'static,
        I2: From<O> + Send + 'static,
        O2: Send + 'static,
    {
        self.edge(from, to, EdgeKind::Query, false)
    }

    /// Adds a read edge: `to` gets `from`'s output as a read, and answers nothing. A read edge
    /// is what breaks a loop of queries.
    pub fn read_edge<I, O, I2, O2>(&mut self, from: &Node<I, O>, to: &Node<I2, O2>) -> &mut Self
    where
        I: Send + 'static,
        O: Send + 'static,
        I2: From<O> + Send + 'static,
        O2: Send + 'static,
    {
        self.edge(from, to, EdgeKind::Read, false)
    }

    /// Adds a query edge that closes a loop on purpose, such as a conversation between a person
    /// and a model, where each answers the other until one asks the system to stop. Cycles of
    /// query edges are refused unless one of their edges is added this way.
    pub fn loop_edge<I, O, I2, O2>(&mut self, from: &Node<I, O>, to: &Node<I2, O2>) -> &mut Self
    where
        I: Send + 'static,
        O: Send + 'static,
        I2: From<O> + Send + 'static,
        O2: Send + 'static,
    {
        self.edge(from, to, EdgeKind::Query, true)
    }

    fn edge<I, O, I2, O2>(
        &mut self,
        from: &Node<I, O>,
        to: &Node<I2, O2>,
        kind: EdgeKind,
        intended_loop: bool,
    ) -> &mut Self
    where
        I: Send + 'static,
        O: Send + 'static,
        I2: From<O> + Send + 'static,
        O2: Send + 'static,
    {
        if let Some(replicas) = self.replicas_of(from) {
            for replica in &replicas {
                self.edge(replica, to, kind, intended_loop);
            }
            let to = *to;
            self.remember_out(from, move |b, replica| {
                if !b.is_removed(to.index) {
                    b.edge(replica, &to, kind, intended_loop);
                }
            });
            return self;
        }
        self.link(from, None, to, kind, intended_loop, |outlet| outlet)
    }

    /// Adds an edge from `from` (or from one of its ports) to `to`: `wrap` turns an outlet of
    /// what the edge carries, `T`, into one of `from`'s output.
    fn link<I, O, T, I2, O2>(
        &mut self,
        from: &Node<I, O>,
        port: Option<(usize, &'static str)>,
        to: &Node<I2, O2>,
        kind: EdgeKind,
        intended_loop: bool,
        wrap: impl FnOnce(Box<dyn Outlet<T>>) -> Box<dyn Outlet<O>>,
    ) -> &mut Self
    where
        I: Send + 'static,
        O: Send + 'static,
        T: Send + 'static,
        I2: From<T> + Send + 'static,
        O2: Send + 'static,
    {
        if !self.usable(from) || !self.usable(to) {
            return self;
        }
        let target_port = self.port_of::<I2, O2>(to);
        let outlet: Box<dyn Outlet<T>> = match (kind, target_port.replicas.get()) {
            (EdgeKind::Read, None) => Box::new(ReadOutlet::new(&target_port)),
            (_, None) => Box::new(QueryOutlet::new(&target_port)),
            // Into a replicated entity: every replica reads; a query goes to one, chosen by
            // what this edge measures of them.
            (EdgeKind::Read, Some(set)) => Box::new(BroadcastOutlet::new(set.clone())),
            (_, Some(set)) => {
                let relationship = match port {
                    Some((_, port)) => format!("{}.{port}", self.graph.name(from.index)),
                    None => self.graph.name(from.index).to_string(),
                };
                Box::new(RouteOutlet::new(set.view(&relationship)))
            }
        };
        let core = &target_port.core;
        let carried = Arc::new(AtomicU64::new(0));
        let sibling = Sibling::new(core.name.clone(), Some(core.id), kind, port, wrap(outlet), carried.clone());
        self.with_context(from, move |ctx| ctx.add_sibling(sibling));
        self.graph.edges.push(EdgeSpec { from: from.index, to: to.index, port, kind, intended_loop, carried });
        self
    }

    /// Adds a query edge from one output port of `from`: `to` gets what `from` sends through
    /// `port`, as a query (see [`Ports`]).
    pub fn port_query_edge<I, O, T, M, I2, O2>(
        &mut self,
        from: &Node<I, O>,
        port: OutPort<O, T, M>,
        to: &Node<I2, O2>,
    ) -> &mut Self
    where
        I: Send + 'static,
        O: Ports,
        T: Send + 'static,
        I2: From<T> + Send + 'static,
        O2: Send + 'static,
    {
        self.port_link(from, port, to, EdgeKind::Query, false)
    }

    /// Adds a read edge from one output port of `from` (see [`port_query_edge`](Self::port_query_edge)).
    pub fn port_read_edge<I, O, T, M, I2, O2>(
        &mut self,
        from: &Node<I, O>,
        port: OutPort<O, T, M>,
        to: &Node<I2, O2>,
    ) -> &mut Self
    where
        I: Send + 'static,
        O: Ports,
        T: Send + 'static,
        I2: From<T> + Send + 'static,
        O2: Send + 'static,
    {
        self.port_link(from, port, to, EdgeKind::Read, false)
    }

    /// Adds a query edge from one output port of `from` that closes an intended loop (see
    /// [`loop_edge`](Self::loop_edge)).
    pub fn port_loop_edge<I, O, T, M, I2, O2>(
        &mut self,
        from: &Node<I, O>,
        port: OutPort<O, T, M>,
        to: &Node<I2, O2>,
    ) -> &mut Self
    where
        I: Send + 'static,
        O: Ports,
        T: Send + 'static,
        I2: From<T> + Send + 'static,
        O2: Send + 'static,
    {
        self.port_link(from, port, to, EdgeKind::Query, true)
    }

    fn port_link<I, O, T, M, I2, O2>(
        &mut self,
        from: &Node<I, O>,
        port: OutPort<O, T, M>,
        to: &Node<I2, O2>,
        kind: EdgeKind,
        intended_loop: bool,
    ) -> &mut Self
    where
        I: Send + 'static,
        O: Ports,
        T: Send + 'static,
        I2: From<T> + Send + 'static,
        O2: Send + 'static,
    {
        if let Some(replicas) = self.replicas_of(from) {
            for replica in &replicas {
                self.port_link(replica, port, to, kind, intended_loop);
            }
            let to = *to;
            // The port without its marker type, which need not be `'static`.
            let port = OutPort::<O, T, ()>::new(port.index(), port.name(), port.extractor());
            self.remember_out(from, move |b, replica| {
                if !b.is_removed(to.index) {
                    b.port_link(replica, port, &to, kind, intended_loop);
                }
            });
            return self;
        }
        if self.usable(from) {
            self.with_context(from, |ctx| ctx.route_by(O::port));
        }
        let extract = port.extractor();
        let wrap = move |inner| -> Box<dyn Outlet<O>> { Box::new(PortOutlet { extract, inner }) };
        self.link(from, Some((port.index(), port.name())), to, kind, intended_loop, wrap)
    }

    /// Adds an output: a channel out of the system that gets everything `from` sends, as a
    /// sibling called `name`. Reading it is how code outside the system gets answers.
    ///
    /// # Panics
    ///
    /// If `from` comes from another builder.
    pub fn output<I: Send + 'static, O: Send + 'static>(
        &mut self,
        from: &Node<I, O>,
        name: &str,
    ) -> crossbeam_channel::Receiver<O> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.output_to(from, name, tx);
        rx
    }

    /// Like [`output`](Self::output), into a channel of the caller's: several entities can then
    /// answer into one channel, and the channel can be bounded.
    ///
    /// # Panics
    ///
    /// If `from` comes from another builder.
    ///
    /// # Examples
    ///
    /// ```
    /// # use sophon::{Backend, BoxError, Context, SystemBuilder};
    /// # struct Id(u32);
    /// # impl Backend for Id {
    /// #     type Input = ();
    /// #     type Output = u32;
    /// #     fn query(&mut self, (): (), ctx: &mut Context<u32>) -> Result<(), BoxError> {
    /// #         Ok(ctx.send(self.0)?)
    /// #     }
    /// # }
    /// let (tx, answers) = sophon::crossbeam_channel::unbounded();
    /// let mut builder = SystemBuilder::new();
    /// let nodes: Vec<_> = (0..3).map(|i| builder.entity(&format!("n{i}"), Id(i))).collect();
    /// for node in &nodes {
    ///     builder.output_to(node, "answers", tx.clone());
    /// }
    /// let system = builder.spawn()?;
    /// for node in &nodes {
    ///     system.handle(node).query(())?;
    /// }
    /// let mut got: Vec<u32> = answers.iter().take(3).collect();
    /// got.sort();
    /// assert_eq!(got, [0, 1, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn output_to<I: Send + 'static, O: Send + 'static>(
        &mut self,
        from: &Node<I, O>,
        name: &str,
        tx: crossbeam_channel::Sender<O>,
    ) -> &mut Self {
        assert_eq!(from.builder, self.id, "the node comes from another builder");
        if let Some(replicas) = self.replicas_of(from) {
            for replica in &replicas {
                self.output_to(replica, name, tx.clone());
            }
            let name = name.to_string();
            self.remember_out(from, move |b, replica| {
                b.output_to(replica, &name, tx.clone());
            });
            return self;
        }
        if self.usable(from) {
            let outlet = OutputOutlet::new(tx, self.shared.clone());
            let name: Arc<str> = Arc::from(name);
            let carried = Arc::new(AtomicU64::new(0));
            let spec = OutputSpec { from: from.index, name: name.clone(), port: None, carried: carried.clone() };
            self.graph.outputs.push(spec);
            let sibling = Sibling::new(name, None, EdgeKind::Output, None, Box::new(outlet), carried);
            self.with_context(from, move |ctx| ctx.add_sibling(sibling));
        }
        self
    }

    /// Adds an output that gets what `from` sends through one of its ports (see [`Ports`]).
    ///
    /// # Panics
    ///
    /// If `from` comes from another builder.
    pub fn port_output<I, O, T, M>(
        &mut self,
        from: &Node<I, O>,
        port: OutPort<O, T, M>,
        name: &str,
    ) -> crossbeam_channel::Receiver<T>
    where
        I: Send + 'static,
        O: Ports,
        T: Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.port_output_to(from, port, name, tx);
        rx
    }

    /// Like [`port_output`](Self::port_output), into a channel of the caller's.
    ///
    /// # Panics
    ///
    /// If `from` comes from another builder.
    pub fn port_output_to<I, O, T, M>(
        &mut self,
        from: &Node<I, O>,
        port: OutPort<O, T, M>,
        name: &str,
        tx: crossbeam_channel::Sender<T>,
    ) -> &mut Self
    where
        I: Send + 'static,
        O: Ports,
        T: Send + 'static,
    {
        assert_eq!(from.builder, self.id, "the node comes from another builder");
        if let Some(replicas) = self.replicas_of(from) {
            for replica in &replicas {
                self.port_output_to(replica, port, name, tx.clone());
            }
            let name = name.to_string();
            let port = OutPort::<O, T, ()>::new(port.index(), port.name(), port.extractor());
            self.remember_out(from, move |b, replica| {
                b.port_output_to(replica, port, &name, tx.clone());
            });
            return self;
        }
        if self.usable(from) {
            let inner = Box::new(OutputOutlet::new(tx, self.shared.clone()));
            let outlet = PortOutlet { extract: port.extractor(), inner };
            let name: Arc<str> = Arc::from(name);
            let carried = Arc::new(AtomicU64::new(0));
            let spec =
                OutputSpec { from: from.index, name: name.clone(), port: Some(port.name()), carried: carried.clone() };
            self.graph.outputs.push(spec);
            let port = Some((port.index(), port.name()));
            let sibling = Sibling::new(name, None, EdgeKind::Output, port, Box::new(outlet), carried);
            self.with_context(from, move |ctx| {
                ctx.route_by(O::port);
                ctx.add_sibling(sibling);
            });
        }
        self
    }

    /// Whether edges can start or end at `node`: it comes from this builder (or the system it
    /// extends) and was not removed. If not, the problem is noted for `spawn` or `extend`.
    fn usable<I, O>(&mut self, node: &Node<I, O>) -> bool {
        if node.builder != self.id || node.index >= self.graph.ports.len() {
            self.problems.push(BuildProblem::ForeignNode);
            return false;
        }
        if self.graph.removed[node.index] {
            self.problems.push(BuildProblem::Removed { name: self.graph.name(node.index).to_string() });
            return false;
        }
        true
    }

    /// Runs `f` on the context of `node`'s agent: at once for an entity this builder added; for
    /// one already running, by its agent between two messages, once the extension is checked.
    fn with_context<I, O>(&mut self, node: &Node<I, O>, f: impl FnOnce(&mut Context<O>) + Send + 'static)
    where
        I: Send + 'static,
        O: Send + 'static,
    {
        if let Some(new) = node.index.checked_sub(self.base) {
            let agent = self.agents[new]
                .agent
                .as_any_mut()
                .downcast_mut::<Agent<I, O>>()
                .expect("a node's types are those of its entity");
            f(&mut agent.ctx);
            return;
        }
        let port = self.port_of::<I, O>(node);
        self.attach.push(Box::new(move |done: Sender<()>| {
            if port.core.state() != EntityState::Running {
                return false;
            }
            let visit: Visit<I, O> = Box::new(move |_, ctx| {
                f(ctx);
                let _ = done.send(());
            });
            port.enqueue(Envelope::Visit(Box::new(visit))).is_ok()
        }));
    }

    /// Checks the graph, and hands it over with every problem found (see `spawn` and
    /// `System::extend`, in `system.rs`).
    pub(crate) fn check(mut self) -> Checked {
        self.check_edges();
        if self.extending && self.runtime.is_some() {
            self.problems.push(BuildProblem::RuntimeOfRunningSystem);
        }
        let runtime = self.runtime_choice();
        Checked {
            id: self.id,
            runtime,
            shared: self.shared,
            graph: self.graph,
            agents: self.agents,
            attach: self.attach,
            problems: self.problems,
        }
    }

    fn check_edges(&mut self) {
        let graph = &self.graph;
        if self.extending && graph.edges.len() == self.base_edges {
            // No new edge: the running system's graph passed these checks already.
            return;
        }
        let name = |i: usize| graph.name(i).to_string();
        // Two edges between the same entities deliver twice, unless they come from different
        // ports. The edges of a running system passed this check already.
        let mut seen: HashSet<(usize, usize, Option<usize>)> = HashSet::new();
        let mut pairs: HashSet<(usize, usize)> = HashSet::new();
        for (i, edge) in graph.edges.iter().enumerate() {
            let port = edge.port.map(|(index, _)| index);
            let clash = seen.contains(&(edge.from, edge.to, port))
                || match port {
                    Some(_) => seen.contains(&(edge.from, edge.to, None)),
                    None => pairs.contains(&(edge.from, edge.to)),
                };
            seen.insert((edge.from, edge.to, port));
            pairs.insert((edge.from, edge.to));
            if clash && i >= self.base_edges {
                self.problems.push(BuildProblem::DuplicateEdge { from: name(edge.from), to: name(edge.to) });
            }
        }
        let queries: Vec<_> = graph
            .edges
            .iter()
            .filter(|e| matches!(e.kind, EdgeKind::Query | EdgeKind::Replica) && !e.intended_loop)
            .map(|e| (e.from, e.to))
            .collect();
        for cycle in cycles_among(&queries) {
            let cycle = cycle.into_iter().map(name).collect();
            self.problems.push(BuildProblem::QueryCycle { cycle });
        }
        // A loop through at least two bounded entities and no unbounded one can fill every
        // queue on it and wait forever; a bounded entity sending to itself gets an error instead.
        let bounded: Vec<_> = graph
            .edges
            .iter()
            .filter(|e| e.from != e.to && graph.bounded[e.from] && graph.bounded[e.to])
            .map(|e| (e.from, e.to))
            .collect();
        for cycle in cycles_among(&bounded) {
            let cycle = cycle.into_iter().map(name).collect();
            self.problems.push(BuildProblem::BoundedLoop { cycle });
        }
    }
}
