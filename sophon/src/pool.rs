//! The pool runtime: a fixed set of worker threads that run many agents, each a state machine
//! that handles a bounded batch of messages and yields.
//!
//! The scheduler follows tokio's multi-threaded one: a global injector for work scheduled from
//! outside the pool, a deque per worker, a LIFO slot for the agent woken last (so that a
//! ping-pong stays on one worker, with warm caches), stealing in batches, and workers that park
//! when there is nothing to do. An agent is scheduled when a message arrives for it while it is
//! idle; a task's state word makes sure it is in at most one queue and run by at most one worker
//! at a time, and that a message arriving while it runs is never missed.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Steal, Stealer, Worker};
use crossbeam_utils::CachePadded;
use crossbeam_utils::atomic::AtomicCell;
use crossbeam_utils::sync::{Parker, Unparker};

/// How many messages an agent handles before it yields its worker to the next agent.
pub(crate) const BATCH: u32 = 64;

/// How many agents in a row a worker takes from its LIFO slot before it looks at its queue:
/// enough for a ping-pong to stay hot, few enough that the queue is not starved.
const LIFO_LIMIT: u32 = 16;

/// A worker looks at the injector before its own queue every this many tasks, so that work
/// from outside the pool is not starved by agents that keep waking each other.
const INJECTOR_INTERVAL: u32 = 61;

/// How long a worker may stay in one turn before an idle worker takes the agent waiting in its
/// LIFO slot: a handler that blocks must not hold up the agent it just woke.
const STUCK: Duration = Duration::from_millis(1);

/// How a system runs its agents.
///
/// # Examples
///
/// ```
/// use sophon::{Runtime, SystemBuilder};
///
/// let mut builder = SystemBuilder::new();
/// builder.runtime(Runtime::Pool { workers: 2 });
/// assert_eq!(builder.runtime_choice(), Runtime::Pool { workers: 2 });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Runtime {
    /// A thread per entity: each agent waits on its own queues. Best for a few agents that block
    /// (a person at a terminal, a model, a process) or that each keep a core busy.
    Threads,
    /// A fixed pool of worker threads shared by all the entities: spawning an entity costs no
    /// thread, so a system can have a million of them. Each agent handles up to 64 messages in
    /// a turn, then yields its worker. Entities that block keep a thread of their own (see
    /// [`EntityOptions::thread`](crate::EntityOptions::thread) and
    /// [`Backend::blocking`](crate::Backend::blocking)): a handler that waits (on a terminal, a
    /// process, [`Handle::call`](crate::Handle::call) or [`Handle::swap`](crate::Handle::swap)
    /// of another entity) holds its worker meanwhile. A send that finds a full bounded queue
    /// does not: the message waits with its agent, which takes no further message until it is
    /// delivered.
    Pool {
        /// How many worker threads; at least 1.
        workers: usize,
    },
}

impl Runtime {
    /// A pool with a worker per core.
    pub fn pool() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Runtime::Pool { workers }
    }

    /// The runtime of a builder that was not given one: [`Runtime::Threads`], unless the
    /// environment variable `SOPHON_RUNTIME` says `pool` (a worker per core), `pool:N` (`N`
    /// workers) or `threads`. A value that is none of these is ignored. This lets a whole test
    /// suite run in either mode without changing its code.
    pub fn from_env() -> Self {
        match std::env::var("SOPHON_RUNTIME") {
            Ok(value) => Runtime::parse(&value).unwrap_or(Runtime::Threads),
            Err(_) => Runtime::Threads,
        }
    }

    fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        match value {
            "threads" => Some(Runtime::Threads),
            "pool" => Some(Runtime::pool()),
            _ => {
                let n: usize = value.strip_prefix("pool:")?.trim().parse().ok()?;
                Some(Runtime::Pool { workers: n.max(1) })
            }
        }
    }
}

/// What an agent tells its worker after a turn.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Its queues are empty: run it again when a message arrives, or at this instant (a timer).
    Idle(Option<Instant>),
    /// It used its batch and has more to do: run it again after the others.
    Yield,
    /// It waits for room in a full bounded queue; whoever makes room (or this instant, for an
    /// output channel, which nobody tells) runs it again.
    Blocked(Option<Instant>),
    /// It has ended.
    Done,
}

/// An agent as a worker sees it.
pub(crate) trait Runnable: Send {
    /// Handles at most `budget` messages.
    fn turn(&mut self, budget: u32) -> Step;
}

/// A task's state: `NOTIFIED` means it is in a queue, or must be run again when the running
/// turn ends; `RUNNING` that a worker is running it; `DONE` that its agent has ended.
const NOTIFIED: u8 = 1;
const RUNNING: u8 = 2;
const DONE: u8 = 4;

/// One agent of the pool, with its scheduling state.
pub(crate) struct Task {
    state: AtomicU8,
    pool: Arc<Pool>,
    /// The agent. Only the worker that set `RUNNING` locks it, so the lock is never contended
    /// on the message path; it lets the agent move between workers without `unsafe`.
    agent: Mutex<Option<Box<dyn Runnable>>>,
    /// The timer instant last registered with the pool, so that an agent idle again before its
    /// timer does not register it twice.
    timer: Mutex<Option<Instant>>,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task").field("state", &self.state.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Task {
    pub(crate) fn new(pool: &Arc<Pool>) -> Arc<Self> {
        Arc::new(Task { state: AtomicU8::new(0), pool: pool.clone(), agent: Mutex::new(None), timer: Mutex::new(None) })
    }

    fn agent(&self) -> MutexGuard<'_, Option<Box<dyn Runnable>>> {
        self.agent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the task its agent and schedules its first turn (its `start` hook).
    pub(crate) fn start(self: &Arc<Self>, agent: Box<dyn Runnable>) {
        *self.agent() = Some(agent);
        self.notify();
    }

    /// Tells the task that a message (or room, or a timer) is waiting for it: an idle task is
    /// scheduled; a running one is run again once its turn ends.
    ///
    /// The read-modify-write orders this after the enqueue that preceded it: either the worker
    /// ending a turn sees `NOTIFIED` and runs the agent again, or this sees the task idle and
    /// schedules it, and the turn that follows sees the message.
    #[inline]
    pub(crate) fn notify(self: &Arc<Self>) {
        let prev = self.state.fetch_or(NOTIFIED, Ordering::AcqRel);
        if prev == 0 {
            self.pool.schedule(self.clone(), true);
        }
    }

    /// Whether the agent has ended.
    pub(crate) fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) & DONE != 0
    }

    /// Runs one turn of the agent, on a worker.
    fn run(self: Arc<Self>) {
        let prev = self.state.swap(RUNNING, Ordering::AcqRel);
        if prev & DONE != 0 {
            self.state.store(DONE, Ordering::Release);
            return;
        }
        let step = {
            let mut agent = self.agent();
            let Some(runnable) = agent.as_mut() else {
                self.state.store(DONE, Ordering::Release);
                return;
            };
            let step = runnable.turn(BATCH);
            if step == Step::Done {
                *agent = None;
            }
            step
        };
        match step {
            Step::Done => self.state.store(DONE, Ordering::Release),
            Step::Yield => {
                self.state.store(NOTIFIED, Ordering::Release);
                self.pool.schedule(self.clone(), false);
            }
            Step::Idle(timer) | Step::Blocked(timer) => {
                if let Some(at) = timer {
                    self.register_timer(at);
                }
                if self.state.compare_exchange(RUNNING, 0, Ordering::AcqRel, Ordering::Acquire).is_err() {
                    // Notified during the turn: run again.
                    self.state.store(NOTIFIED, Ordering::Release);
                    self.pool.schedule(self.clone(), false);
                }
            }
        }
    }

    fn register_timer(self: &Arc<Self>, at: Instant) {
        let mut registered = self.timer.lock().unwrap_or_else(|e| e.into_inner());
        if registered.is_some_and(|r| r <= at) {
            return;
        }
        *registered = Some(at);
        drop(registered);
        self.pool.add_timer(at, self.clone());
    }
}

/// A timer of the pool: when it is due, its task is notified.
struct Timed {
    at: Instant,
    task: Arc<Task>,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Timed {}

impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

/// The workers' shared state.
pub(crate) struct Pool {
    id: u64,
    injector: Injector<Arc<Task>>,
    stealers: Vec<Stealer<Arc<Task>>>,
    /// Each worker's LIFO slot: the agent it woke last, run next. Its owner takes it; another
    /// worker takes it only when the owner has been in the same turn for [`STUCK`].
    lifos: Vec<CachePadded<AtomicCell<Option<Arc<Task>>>>>,
    /// Whether each LIFO slot holds an agent: a hint for idle workers, which cannot look into
    /// the slot without taking what it holds.
    lifo_full: Vec<CachePadded<AtomicBool>>,
    /// Turns each worker has begun: unchanged over a while, the worker is stuck in one.
    turns: Vec<CachePadded<AtomicU64>>,
    unparkers: Vec<Unparker>,
    /// Workers parked, or about to park, by index.
    sleepers: Mutex<Vec<usize>>,
    sleeping: AtomicUsize,
    timers: Mutex<BinaryHeap<Reverse<Timed>>>,
    /// The earliest timer, in nanoseconds since `epoch`; `u64::MAX` when there is none.
    earliest: AtomicU64,
    epoch: Instant,
    stop: AtomicBool,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("workers", &self.unparkers.len()).finish_non_exhaustive()
    }
}

/// What a worker thread keeps of its own.
struct Local {
    pool: u64,
    index: usize,
    queue: Worker<Arc<Task>>,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// The worker threads of a pool, joined when the system ends.
pub(crate) struct Workers {
    pub(crate) pool: Arc<Pool>,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers").field("threads", &self.threads.len()).finish()
    }
}

impl Workers {
    /// How many worker threads.
    pub(crate) fn count(&self) -> usize {
        self.pool.unparkers.len()
    }

    /// Stops the workers once their queues are empty, and joins them; with `wait` false (an
    /// agent was given up on and may hold a worker forever) leaves them to end on their own.
    pub(crate) fn stop(self, wait: bool) {
        self.pool.stop.store(true, Ordering::SeqCst);
        for unparker in &self.pool.unparkers {
            unparker.unpark();
        }
        if wait {
            for thread in self.threads {
                let _ = thread.join();
            }
            // Tasks left in the shared queues would keep the pool alive through their own
            // reference to it.
            while !self.pool.injector.steal().is_empty() {}
            for lifo in &self.pool.lifos {
                lifo.take();
            }
            self.pool.timers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

impl Pool {
    /// Starts `workers` threads, named `sophon:pool:<i>`.
    pub(crate) fn start(workers: usize) -> std::io::Result<Workers> {
        let workers = workers.max(1);
        let queues: Vec<Worker<Arc<Task>>> = (0..workers).map(|_| Worker::new_fifo()).collect();
        let parkers: Vec<Parker> = (0..workers).map(|_| Parker::new()).collect();
        let pool = Arc::new(Pool {
            id: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
            injector: Injector::new(),
            stealers: queues.iter().map(Worker::stealer).collect(),
            lifos: (0..workers).map(|_| CachePadded::new(AtomicCell::new(None))).collect(),
            lifo_full: (0..workers).map(|_| CachePadded::new(AtomicBool::new(false))).collect(),
            turns: (0..workers).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            unparkers: parkers.iter().map(|p| p.unparker().clone()).collect(),
            sleepers: Mutex::new(Vec::with_capacity(workers)),
            sleeping: AtomicUsize::new(0),
            timers: Mutex::new(BinaryHeap::new()),
            earliest: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::with_capacity(workers);
        for (index, (queue, parker)) in queues.into_iter().zip(parkers).enumerate() {
            let worker = pool.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sophon:pool:{index}"))
                .spawn(move || worker.work(index, queue, parker));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    Workers { pool, threads }.stop(true);
                    return Err(e);
                }
            }
        }
        Ok(Workers { pool, threads })
    }

    /// Puts a task in a queue: from a worker of this pool, its LIFO slot (`fresh`: just woken)
    /// or the back of its own queue; from anywhere else, the injector. Wakes a parked worker if
    /// there is work it could take.
    fn schedule(self: &Arc<Self>, task: Arc<Task>, fresh: bool) {
        let spare = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            match local.as_mut() {
                Some(local) if local.pool == self.id => {
                    if fresh {
                        self.lifo_full[local.index].store(true, Ordering::Release);
                        match self.lifos[local.index].swap(Some(task)) {
                            Some(previous) => {
                                local.queue.push(previous);
                                true
                            }
                            None => false,
                        }
                    } else {
                        local.queue.push(task);
                        true
                    }
                }
                _ => {
                    self.injector.push(task);
                    true
                }
            }
        });
        if spare {
            self.wake_one();
        }
    }

    /// Unparks one parked worker, if any.
    fn wake_one(&self) {
        // Pairs with the fence in `park`: either the parking worker sees the new work, or this
        // sees it registered as asleep.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) == 0 {
            return;
        }
        let index = {
            let mut sleepers = self.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            let index = sleepers.pop();
            if index.is_some() {
                self.sleeping.fetch_sub(1, Ordering::SeqCst);
            }
            index
        };
        if let Some(index) = index {
            self.unparkers[index].unpark();
        }
    }

    fn add_timer(&self, at: Instant, task: Arc<Task>) {
        let nanos = u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1);
        self.timers.lock().unwrap_or_else(|e| e.into_inner()).push(Reverse(Timed { at, task }));
        let earlier = self.earliest.fetch_min(nanos, Ordering::SeqCst) > nanos;
        if earlier {
            // A parked worker may be waiting for a later timer: let one look again.
            self.wake_one();
        }
    }

    /// Notifies the tasks whose timers are due; returns how long until the next one.
    fn fire_timers(&self) -> Option<Duration> {
        if self.earliest.load(Ordering::Acquire) == u64::MAX {
            return None;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(Reverse(first)) = timers.peek() {
                if first.at > now {
                    break;
                }
                let Some(Reverse(timed)) = timers.pop() else { break };
                due.push(timed.task);
            }
            let next = timers.peek().map(|Reverse(t)| t.at);
            let nanos = next.map_or(u64::MAX, |at| {
                u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
            });
            self.earliest.store(nanos, Ordering::Release);
            next
        };
        for task in due {
            *task.timer.lock().unwrap_or_else(|e| e.into_inner()) = None;
            if !task.is_done() {
                task.notify();
            }
        }
        next.map(|at| at.saturating_duration_since(now))
    }

    /// A worker's loop.
    fn work(self: Arc<Self>, index: usize, queue: Worker<Arc<Task>>, parker: Parker) {
        LOCAL.with(|local| *local.borrow_mut() = Some(Local { pool: self.id, index, queue }));
        let mut ticks: u32 = 0;
        let mut lifo_run: u32 = 0;
        let run = |task: Arc<Task>, ticks: u32| {
            self.turns[index].store(u64::from(ticks), Ordering::Relaxed);
            task.run();
        };
        loop {
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(INJECTOR_INTERVAL) {
                self.fire_timers();
            }
            if let Some(task) = self.next_task(index, ticks, &mut lifo_run) {
                run(task, ticks);
                continue;
            }
            let next_timer = self.fire_timers();
            if let Some(task) = self.next_task(index, ticks, &mut lifo_run) {
                run(task, ticks);
                continue;
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            self.park(index, &parker, next_timer);
        }
        LOCAL.with(|local| local.borrow_mut().take());
    }

    /// The next task for worker `index`: its LIFO slot, its queue, the injector, or one stolen
    /// from another worker.
    fn next_task(&self, index: usize, ticks: u32, lifo_run: &mut u32) -> Option<Arc<Task>> {
        let found = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let local = local.as_mut().expect("a worker's own state");
            let lifo = &self.lifos[index];
            if *lifo_run < LIFO_LIMIT
                && let Some(task) = lifo.take()
            {
                self.lifo_full[index].store(false, Ordering::Release);
                *lifo_run += 1;
                return Some(task);
            }
            *lifo_run = 0;
            if let Some(task) = lifo.take() {
                self.lifo_full[index].store(false, Ordering::Release);
                // The LIFO slot had its turns: it goes behind the queue.
                local.queue.push(task);
            }
            if ticks.is_multiple_of(INJECTOR_INTERVAL)
                && let Some(task) = steal(|| self.injector.steal_batch_and_pop(&local.queue))
            {
                return Some(task);
            }
            local.queue.pop()
        });
        if found.is_some() {
            return found;
        }
        LOCAL.with(|local| {
            let local = local.borrow();
            let local = local.as_ref().expect("a worker's own state");
            if let Some(task) = steal(|| self.injector.steal_batch_and_pop(&local.queue)) {
                return Some(task);
            }
            let n = self.stealers.len();
            (1..n)
                .map(|k| (index + k) % n)
                .find_map(|victim| steal(|| self.stealers[victim].steal_batch_and_pop(&local.queue)))
        })
    }

    /// Parks worker `index` until there is work, a timer is due, or the pool stops.
    ///
    /// While another worker holds an agent in its LIFO slot, it parks for [`STUCK`] at most;
    /// if that worker is still in the same turn then (its handler blocks), it takes the agent.
    fn park(&self, index: usize, parker: &Parker, mut timeout: Option<Duration>) {
        self.sleepers.lock().unwrap_or_else(|e| e.into_inner()).push(index);
        self.sleeping.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let work = !self.injector.is_empty() || self.stealers.iter().any(|s| !s.is_empty());
        let watched: Vec<(usize, u64)> = (0..self.lifos.len())
            .filter(|&i| i != index && !self.lifo_is_empty(i))
            .map(|i| (i, self.turns[i].load(Ordering::Relaxed)))
            .collect();
        if !watched.is_empty() {
            timeout = Some(timeout.map_or(STUCK, |t| t.min(STUCK)));
        }
        if !work && !self.stop.load(Ordering::SeqCst) {
            match timeout {
                Some(t) => parker.park_timeout(t),
                None => parker.park(),
            }
        }
        {
            let mut sleepers = self.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = sleepers.iter().position(|&i| i == index) {
                sleepers.swap_remove(at);
                self.sleeping.fetch_sub(1, Ordering::SeqCst);
            }
        }
        for (victim, turns) in watched {
            if self.turns[victim].load(Ordering::Relaxed) == turns
                && let Some(task) = self.lifos[victim].take()
            {
                self.lifo_full[victim].store(false, Ordering::Release);
                LOCAL.with(|local| {
                    local.borrow().as_ref().expect("a worker's own state").queue.push(task);
                });
            }
        }
    }

    /// Whether worker `index`'s LIFO slot looks empty (a hint: see `lifo_full`).
    fn lifo_is_empty(&self, index: usize) -> bool {
        !self.lifo_full[index].load(Ordering::Acquire)
    }
}

/// Retries a steal until it gives a task or finds the queue empty.
fn steal(mut attempt: impl FnMut() -> Steal<Arc<Task>>) -> Option<Arc<Task>> {
    loop {
        match attempt() {
            Steal::Success(task) => return Some(task),
            Steal::Empty => return None,
            Steal::Retry => std::hint::spin_loop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_parses_the_environment_forms() {
        assert_eq!(Runtime::parse("threads"), Some(Runtime::Threads));
        assert_eq!(Runtime::parse("pool:3"), Some(Runtime::Pool { workers: 3 }));
        assert_eq!(Runtime::parse(" pool:0 "), Some(Runtime::Pool { workers: 1 }));
        assert_eq!(Runtime::parse("pool"), Some(Runtime::pool()));
        assert_eq!(Runtime::parse("fibers"), None);
        assert_eq!(Runtime::parse("pool:x"), None);
    }
}
