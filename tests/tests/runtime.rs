//! The runtime's behaviours, end to end, through the public builder API.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{from_fn, pass, wait_until};
use sophon::crossbeam_channel;
use sophon::{
    Backend, BoxError, BuildProblem, Context, EntityOptions, EntityState, ErrorKind, HandlerKind, Runtime,
    SystemBuilder, TimerId,
};

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn pipeline_delivers_every_message_once_and_in_order() {
    const N: u64 = 100_000;
    let mut b = SystemBuilder::new();
    let stages: Vec<_> = (0..4).map(|i| b.entity(&format!("stage{i}"), pass::<u64>())).collect();
    for pair in stages.windows(2) {
        b.query_edge(&pair[0], &pair[1]);
    }
    let out = b.output(&stages[3], "out");
    let system = b.spawn().unwrap();
    let first = system.handle(&stages[0]);
    for i in 0..N {
        first.query(i).unwrap();
    }
    let got: Vec<u64> = out.iter().take(N as usize).collect();
    assert!(got.iter().copied().eq(0..N), "messages arrived out of order or changed");
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert!(out.try_recv().is_err(), "a message arrived twice");
    for e in &report.entities {
        assert_eq!((e.stats.received, e.stats.handled, e.stats.sent), (N, N, N), "{}", e.name);
        assert_eq!(e.state, EntityState::Stopped);
    }
}

#[test]
fn broadcast_reaches_every_sibling() {
    let mut b = SystemBuilder::new();
    let source = b.entity("source", pass::<String>());
    let outs: Vec<_> = (0..3)
        .map(|i| {
            let sink = b.entity(&format!("sink{i}"), pass::<String>());
            b.query_edge(&source, &sink);
            b.output(&sink, "out")
        })
        .collect();
    let system = b.spawn().unwrap();
    for word in ["a", "b", "c"] {
        system.handle(&source).query(word.to_string()).unwrap();
    }
    for out in &outs {
        assert_eq!(out.iter().take(3).collect::<Vec<_>>(), ["a", "b", "c"]);
    }
    let report = system.shutdown(DEADLINE);
    assert_eq!(report.entity("source").unwrap().stats.sent, 9);
    assert!(report.is_clean(), "{report}");
}

/// Remembers what it reads; answers a query with everything it has read so far.
struct Memory(Vec<String>);

impl Backend for Memory {
    type Input = String;
    type Output = String;

    fn query(&mut self, q: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
        Ok(ctx.send(format!("{q}: {}", self.0.join(",")))?)
    }

    fn read(&mut self, r: String, _: &mut Context<String>) -> Result<(), BoxError> {
        self.0.push(r);
        Ok(())
    }
}

#[test]
fn read_is_taken_in_and_answers_nothing() {
    let mut b = SystemBuilder::new();
    let source = b.entity("source", pass::<String>());
    let asked = b.entity("asked", Memory(Vec::new()));
    let told = b.entity("told", Memory(Vec::new()));
    b.query_edge(&source, &asked).read_edge(&source, &told);
    let asked_out = b.output(&asked, "out");
    let told_out = b.output(&told, "out");
    let system = b.spawn().unwrap();

    system.handle(&source).query("x".to_string()).unwrap();
    system.handle(&source).query("y".to_string()).unwrap();
    assert_eq!(asked_out.iter().take(2).collect::<Vec<_>>(), ["x: ", "y: "]);
    // `told` got both as reads: it answered nothing, but remembers them.
    system.handle(&told).query("what".to_string()).unwrap();
    assert_eq!(told_out.recv().unwrap(), "what: x,y");
    let report = system.shutdown(DEADLINE);
    assert!(told_out.try_recv().is_err(), "a read produced output");
    assert_eq!(report.entity("told").unwrap().stats.handled, 3);
    assert_eq!(report.entity("told").unwrap().stats.sent, 1);
}

/// Counts its cleanups.
struct Cleans(Arc<AtomicU64>);

impl Backend for Cleans {
    type Input = u32;
    type Output = u32;

    fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
        Ok(ctx.send(n)?)
    }

    fn nop(&mut self, _: &mut Context<u32>) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn nop_ends_exactly_its_agent() {
    let cleanups: Vec<_> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut b = SystemBuilder::new();
    let nodes: Vec<_> = (0..3).map(|i| b.entity(&format!("e{i}"), Cleans(cleanups[i].clone()))).collect();
    let outs: Vec<_> = nodes.iter().map(|n| b.output(n, "out")).collect();
    let system = b.spawn().unwrap();
    let handles: Vec<_> = nodes.iter().map(|n| system.handle(n)).collect();

    handles[1].query(7).unwrap();
    handles[1].stop().unwrap();
    assert_eq!(outs[1].recv().unwrap(), 7, "what was queued before the nop is handled");
    // The agent refuses messages before it cleans up: once the cleanup ran, it is stopped.
    wait_until(|| cleanups[1].load(Ordering::SeqCst) > 0);
    assert_eq!(handles[1].state().unwrap(), EntityState::Stopped);
    assert_eq!(handles[1].query(8).unwrap_err().kind(), ErrorKind::Stopped);
    assert_eq!(handles[1].stop().unwrap_err().kind(), ErrorKind::Stopped);
    for i in [0, 2] {
        assert_eq!(handles[i].state().unwrap(), EntityState::Running);
        handles[i].query(i as u32).unwrap();
        assert_eq!(outs[i].recv().unwrap(), i as u32);
        assert_eq!(cleanups[i].load(Ordering::SeqCst), 0);
    }
    let report = system.shutdown(DEADLINE);
    assert!(cleanups.iter().all(|c| c.load(Ordering::SeqCst) == 1), "every backend cleans up exactly once");
    assert!(report.is_clean(), "{report}");
}

#[test]
fn shutdown_waits_for_messages_in_flight() {
    const N: u32 = 300;
    let mut b = SystemBuilder::new();
    let fast = b.entity("fast", pass::<u32>());
    let slow = b.entity(
        "slow",
        from_fn(|n: u32, ctx: &mut Context<u32>| {
            std::thread::sleep(Duration::from_micros(200));
            Ok(ctx.send(n)?)
        }),
    );
    let last = b.entity("last", pass::<u32>());
    b.query_edge(&fast, &slow).query_edge(&slow, &last);
    let out = b.output(&last, "out");
    let system = b.spawn().unwrap();
    for i in 0..N {
        system.handle(&fast).query(i).unwrap();
    }
    // Most messages are still queued at `slow` when the shutdown begins.
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(out.try_iter().collect::<Vec<_>>(), (0..N).collect::<Vec<_>>());
}

#[test]
fn past_the_deadline_what_is_queued_is_reported_undelivered() {
    let mut b = SystemBuilder::new();
    let stuck = b.entity(
        "stuck",
        from_fn(|_: u32, _: &mut Context<u32>| {
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        }),
    );
    let system = b.spawn().unwrap();
    for i in 0..10 {
        system.handle(&stuck).query(i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let report = system.shutdown(Duration::from_millis(50));
    assert!(report.timed_out);
    let stats = report.entity("stuck").unwrap().stats;
    assert!(stats.undelivered >= 8, "{stats:?}");
    assert_eq!(stats.handled + stats.undelivered, 10, "every message is accounted for: {stats:?}");
}

#[test]
fn an_erroring_backend_is_reported_and_goes_on() {
    let mut b = SystemBuilder::new();
    let picky = b.entity(
        "picky",
        from_fn(|n: u32, ctx: &mut Context<u32>| {
            if !n.is_multiple_of(2) {
                return Err(format!("odd number {n}").into());
            }
            Ok(ctx.send(n)?)
        }),
    );
    let other = b.entity("other", pass::<u32>());
    let picky_out = b.output(&picky, "out");
    let other_out = b.output(&other, "out");
    let system = b.spawn().unwrap();
    let failures = system.failures();
    for n in 0..6 {
        system.handle(&picky).query(n).unwrap();
        system.handle(&other).query(n).unwrap();
    }
    assert_eq!(picky_out.iter().take(3).collect::<Vec<_>>(), [0, 2, 4]);
    assert_eq!(other_out.iter().take(6).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    let first = failures.recv().unwrap();
    assert_eq!((first.entity.as_str(), first.kind, first.panicked), ("picky", HandlerKind::Query, false));
    assert_eq!(first.to_string(), "`picky` failed in its query handler: odd number 1");
    let report = system.shutdown(DEADLINE);
    let stats = report.entity("picky").unwrap().stats;
    assert_eq!((stats.handled, stats.errors, stats.panics), (6, 3, 0));
    assert_eq!(report.entity("picky").unwrap().state, EntityState::Stopped);
    assert_eq!(report.failures.len(), 2, "the first failure was taken from the live receiver");
}

#[test]
fn a_panicking_backend_fails_alone_and_nothing_is_silently_dropped() {
    let release = Arc::new(AtomicBool::new(false));
    let mut b = SystemBuilder::new();
    let feeder = b.entity("feeder", pass::<u32>());
    let gate = release.clone();
    // It waits at the gate: in a system run by a pool it gets a thread of its own.
    let fragile = b.entity_with(
        "fragile",
        from_fn(move |n: u32, ctx: &mut Context<u32>| {
            while !gate.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            if n == 2 {
                panic!("cannot take {n}");
            }
            Ok(ctx.send(n)?)
        }),
        EntityOptions::new().thread(),
    );
    let steady = b.entity("steady", pass::<u32>());
    b.query_edge(&feeder, &fragile).query_edge(&feeder, &steady);
    let fragile_out = b.output(&fragile, "out");
    let steady_out = b.output(&steady, "out");
    let system = b.spawn().unwrap();
    let feeder_h = system.handle(&feeder);
    for n in 0..5 {
        feeder_h.query(n).unwrap();
    }
    // Everything reaches `fragile`'s queue before it handles anything.
    assert_eq!(steady_out.iter().take(5).count(), 5);
    release.store(true, Ordering::SeqCst);
    assert_eq!(fragile_out.iter().take(2).collect::<Vec<_>>(), [0, 1]);
    let fragile_h = system.handle(&fragile);
    wait_until(|| fragile_h.state().unwrap() == EntityState::Failed);
    let err = fragile_h.query(9).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Failed);
    assert_eq!(err.into_body(), 9);
    // The feeder's send to the failed sibling is an error it reports; `steady` still gets it.
    feeder_h.query(10).unwrap();
    assert_eq!(steady_out.recv().unwrap(), 10);

    let report = system.shutdown(DEADLINE);
    let fragile_r = report.entity("fragile").unwrap();
    assert_eq!(fragile_r.state, EntityState::Failed);
    assert_eq!(fragile_r.panic.as_deref(), Some("cannot take 2"));
    assert_eq!(fragile_r.stats.panics, 1);
    assert_eq!(fragile_r.stats.handled, 2);
    assert_eq!(fragile_r.stats.undelivered, 2, "3 and 4 were queued behind the panic");
    assert!(report.failures.iter().any(|f| f.panicked && f.entity == "fragile" && f.kind == HandlerKind::Query));
    let feeder_failure = report.failures.iter().find(|f| f.entity == "feeder").expect("the refused send is reported");
    assert_eq!(feeder_failure.message(), "cannot reach `fragile`: it has failed");
    assert_eq!(report.entity("steady").unwrap().stats.handled, 6);
    assert_eq!(report.entity("steady").unwrap().state, EntityState::Stopped);
}

/// Tags each number with its generation; counts what it handled.
struct Tagger {
    generation: u64,
    handled: u64,
}

impl Backend for Tagger {
    type Input = u64;
    type Output = (u64, u64);

    fn query(&mut self, n: u64, ctx: &mut Context<(u64, u64)>) -> Result<(), BoxError> {
        self.handled += 1;
        Ok(ctx.send((self.generation, n))?)
    }
}

#[test]
fn swap_under_load_loses_and_repeats_nothing() {
    const N: u64 = 200_000;
    let mut b = SystemBuilder::new();
    let tagger = b.entity("tagger", Tagger { generation: 0, handled: 0 });
    let out = b.output(&tagger, "out");
    let system = b.spawn().unwrap();
    let handle = system.handle(&tagger);
    let producer = {
        let handle = handle.clone();
        std::thread::spawn(move || (0..N).for_each(|n| handle.query(n).unwrap()))
    };
    let mut old = Vec::new();
    for generation in 1..=20 {
        std::thread::sleep(Duration::from_millis(2));
        old.push(handle.swap(Tagger { generation, handled: 0 }).unwrap());
    }
    producer.join().unwrap();
    let got: Vec<(u64, u64)> = out.iter().take(N as usize).collect();
    assert!(got.iter().map(|&(_, n)| n).eq(0..N), "a message was lost, repeated or reordered");
    assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "an old backend handled a message after its swap");
    let handled_by_old: u64 = old.into_iter().map(|b| b.downcast::<Tagger>().ok().unwrap().handled).sum();
    let last = got.iter().filter(|&&(generation, _)| generation == 20).count() as u64;
    assert_eq!(handled_by_old + last, N);
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
}

/// Tags each number with its generation, like [`Tagger`], but its first query waits until the
/// test opens the gate: what is sent meanwhile piles up in its queues.
struct GatedTagger {
    generation: u64,
    gate: Option<crossbeam_channel::Receiver<()>>,
}

impl Backend for GatedTagger {
    type Input = u64;
    type Output = (u64, u64);

    fn query(&mut self, n: u64, ctx: &mut Context<(u64, u64)>) -> Result<(), BoxError> {
        if let Some(gate) = self.gate.take() {
            gate.recv()?;
        }
        Ok(ctx.send((self.generation, n))?)
    }
}

/// A feeder forwarding into a gated tagger on a query edge, and the gate's key.
struct Gated {
    system: sophon::System,
    feeder: sophon::Handle<u64, u64>,
    tagger: sophon::Handle<u64, (u64, u64)>,
    out: crossbeam_channel::Receiver<(u64, u64)>,
    open: crossbeam_channel::Sender<()>,
}

fn gated() -> Gated {
    let (open, gate) = crossbeam_channel::bounded(1);
    let mut b = SystemBuilder::new();
    let feeder = b.entity("feeder", pass::<u64>());
    // It blocks at the gate: in a system run by a pool it gets a thread of its own.
    let tagger =
        b.entity_with("tagger", GatedTagger { generation: 0, gate: Some(gate) }, EntityOptions::new().thread());
    b.query_edge(&feeder, &tagger);
    let out = b.output(&tagger, "out");
    let system = b.spawn().unwrap();
    let (feeder, tagger) = (system.handle(&feeder), system.handle(&tagger));
    Gated { system, feeder, tagger, out, open }
}

impl Gated {
    /// Holds `0..n` in front of the tagger: `0` waits at the gate, and the rest are in its queue
    /// for the edge when this returns. `0` comes from the handle or down the edge, and the
    /// tagger first looks at the queue that gave it.
    fn hold(&self, n: u64, first_from_handle: bool) {
        if first_from_handle { self.tagger.query(0) } else { self.feeder.query(0) }.unwrap();
        wait_until(|| self.tagger.stats().unwrap().received > 0);
        (1..n).for_each(|i| self.feeder.query(i).unwrap());
        wait_until(|| self.feeder.stats().unwrap().handled == n - u64::from(first_from_handle));
    }
}

// Queries of query edges and messages from handles wait in two queues; a stop or a swap must
// still come after every query queued before it, in either queue.
#[test]
fn a_stop_comes_after_the_queries_queued_before_it_on_edges() {
    const N: u64 = 1_000;
    let g = gated();
    g.hold(N, true);
    g.tagger.stop().unwrap();
    g.open.send(()).unwrap();
    let got: Vec<_> = g.out.iter().take(N as usize).collect();
    assert!(got.iter().map(|&(_, n)| n).eq(0..N));
    let report = g.system.shutdown(DEADLINE);
    let tagger = report.entity("tagger").unwrap();
    assert_eq!((tagger.stats.handled, tagger.stats.undelivered), (N, 0), "{report}");
    assert_eq!(tagger.state, EntityState::Stopped);
}

#[test]
fn a_swap_comes_after_the_queries_queued_before_it_on_edges() {
    const N: u64 = 1_000;
    let g = gated();
    g.hold(N, true);
    let swapper = {
        let tagger = g.tagger.clone();
        std::thread::spawn(move || tagger.swap(GatedTagger { generation: 1, gate: None }).unwrap())
    };
    // The swap is in the inbox, behind the N - 1 queries queued on the edge.
    wait_until(|| g.tagger.stats().unwrap().queued == N);
    g.open.send(()).unwrap();
    let old = swapper.join().unwrap();
    assert!(old.is::<GatedTagger>());
    g.tagger.query(N).unwrap();
    let got: Vec<_> = g.out.iter().take(N as usize + 1).collect();
    let expected: Vec<_> = (0..N).map(|n| (0, n)).chain([(1, N)]).collect();
    let wrong = got.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(wrong, None, "a query queued before the swap was handled by the new backend, or out of order");
    assert!(g.system.shutdown(DEADLINE).is_clean());
}

// A flood on one queue does not starve the other: a handle's query waiting behind thousands of
// queued edge queries is handled within a few dozen of them.
#[test]
fn neither_queue_starves_the_other() {
    const N: u64 = 5_000;
    let g = gated();
    // The first query comes down the edge, so the tagger keeps to the edge's queue.
    g.hold(N, false);
    g.tagger.query(u64::MAX).unwrap();
    g.open.send(()).unwrap();
    let got: Vec<u64> = g.out.iter().take(N as usize + 1).map(|(_, n)| n).collect();
    let marker = got.iter().position(|&n| n == u64::MAX).unwrap();
    assert!(marker < 100, "the handle's query waited behind {marker} edge queries");
    let edge: Vec<u64> = got.into_iter().filter(|&n| n != u64::MAX).collect();
    assert!(edge.into_iter().eq(0..N), "edge queries lost or reordered");
    assert!(g.system.shutdown(DEADLINE).is_clean());
}

#[test]
fn swap_on_a_stopped_entity_gives_the_new_backend_back() {
    let mut b = SystemBuilder::new();
    let tagger = b.entity("tagger", Tagger { generation: 0, handled: 0 });
    let system = b.spawn().unwrap();
    let handle = system.handle(&tagger);
    handle.stop().unwrap();
    // The nop may or may not have been handled yet; either way the backend comes back.
    let err = handle.swap(Tagger { generation: 7, handled: 0 }).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Stopped);
    assert_eq!(err.into_body().downcast::<Tagger>().ok().unwrap().generation, 7);
}

#[test]
fn a_query_cycle_is_refused_with_every_problem_named() {
    let mut b = SystemBuilder::new();
    let a = b.entity("a", pass::<u8>());
    let x = b.entity("b", pass::<u8>());
    let c = b.entity("c", pass::<u8>());
    b.entity("a", pass::<u8>());
    b.query_edge(&a, &x).query_edge(&x, &c).query_edge(&c, &a).read_edge(&a, &c).query_edge(&a, &x);
    let err = b.spawn().unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 3, "{err}");
    assert!(matches!(&problems[0], BuildProblem::DuplicateName { name } if name == "a"));
    assert!(matches!(&problems[1], BuildProblem::DuplicateEdge { from, to } if from == "a" && to == "b"));
    assert!(matches!(&problems[2], BuildProblem::QueryCycle { cycle } if cycle == &["a", "b", "c"]));
    assert_eq!(
        problems[2].to_string(),
        "query edges `a -> b -> c -> a` form a cycle; make one of them a read edge, \
         or declare it with `loop_edge` if the loop is intended"
    );
}

#[test]
fn a_self_query_edge_is_a_cycle() {
    let mut b = SystemBuilder::new();
    let a = b.entity("a", pass::<u8>());
    b.query_edge(&a, &a);
    let err = b.spawn().unwrap_err();
    assert!(matches!(&err.problems()[0], BuildProblem::QueryCycle { cycle } if cycle == &["a"]));
}

#[test]
fn a_declared_loop_runs_until_a_backend_stops_the_system() {
    let mut b = SystemBuilder::new();
    let person = b.entity(
        "person",
        from_fn(|n: u32, ctx: &mut Context<u32>| {
            if n >= 10 {
                ctx.stop_system();
                return Ok(());
            }
            Ok(ctx.send(n + 1)?)
        }),
    );
    let model = b.entity("model", pass::<u32>());
    b.query_edge(&person, &model).loop_edge(&model, &person);
    let system = b.spawn().unwrap();
    system.handle(&person).query(0).unwrap();
    let report = system.join();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("person").unwrap().stats.handled, 11, "0 to 10");
    assert_eq!(report.entity("model").unwrap().stats.handled, 10, "1 to 10");
}

#[test]
fn a_handle_outliving_its_system_gets_errors() {
    let mut b = SystemBuilder::new();
    let node = b.entity("gone", pass::<String>());
    let system = b.spawn().unwrap();
    let handle = system.handle(&node);
    let id = handle.id();
    drop(system);
    assert_eq!(handle.query("q".into()).unwrap_err().kind(), ErrorKind::SystemGone);
    assert_eq!(handle.read("r".into()).unwrap_err().into_body(), "r");
    assert_eq!(handle.stop().unwrap_err().kind(), ErrorKind::SystemGone);
    assert_eq!(handle.stats().unwrap_err().kind(), ErrorKind::SystemGone);
    assert_eq!(handle.state().unwrap_err().kind(), ErrorKind::SystemGone);
    assert_eq!(handle.swap(pass::<String>()).unwrap_err().kind(), ErrorKind::SystemGone);
    assert_eq!((handle.name(), handle.id()), ("gone", id));
}

/// Sends a tick count on every tick of a timer set at start; a one-shot timer sends 1000.
struct Clock {
    ticks: u64,
    every: Option<TimerId>,
}

impl Backend for Clock {
    type Input = ();
    type Output = u64;

    fn query(&mut self, (): (), ctx: &mut Context<u64>) -> Result<(), BoxError> {
        Ok(ctx.send(self.ticks)?)
    }

    fn start(&mut self, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        self.every = Some(ctx.every(Duration::from_millis(5)));
        ctx.after(Duration::from_millis(1));
        Ok(())
    }

    fn timer(&mut self, timer: TimerId, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        if Some(timer) != self.every {
            return Ok(ctx.send(1000)?);
        }
        self.ticks += 1;
        Ok(ctx.send(self.ticks)?)
    }
}

#[test]
fn timers_fire_on_the_agent_thread_and_stop_at_shutdown() {
    let mut b = SystemBuilder::new();
    let clock = b.entity("clock", Clock { ticks: 0, every: None });
    let out = b.output(&clock, "out");
    let system = b.spawn().unwrap();
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), 1000, "the one-shot timer fires first");
    let ticks: Vec<u64> = out.iter().take(5).collect();
    assert_eq!(ticks, [1, 2, 3, 4, 5]);
    // Queries are still answered between ticks.
    system.handle(&clock).query(()).unwrap();
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    // Every agent has ended: nothing more can arrive.
    let after: Vec<u64> = out.try_iter().collect();
    assert!(!after.contains(&1000), "the one-shot timer fired twice");
}

#[test]
fn timers_too_far_away_for_the_clock_never_fire_and_do_not_panic() {
    /// Sets timers at the clock's end, and one that fires; a query cancels the far one-shot.
    struct Far {
        far: Option<TimerId>,
    }
    impl Backend for Far {
        type Input = ();
        type Output = &'static str;
        fn query(&mut self, (): (), ctx: &mut Context<&'static str>) -> Result<(), BoxError> {
            let cancelled = self.far.take().is_some_and(|far| ctx.cancel(far));
            Ok(ctx.send(if cancelled { "cancelled" } else { "not set" })?)
        }
        fn start(&mut self, ctx: &mut Context<&'static str>) -> Result<(), BoxError> {
            self.far = Some(ctx.after(Duration::MAX));
            ctx.every(Duration::MAX);
            ctx.every(Duration::from_secs(u64::MAX / 2));
            ctx.after(Duration::from_millis(1));
            Ok(())
        }
        fn timer(&mut self, _: TimerId, ctx: &mut Context<&'static str>) -> Result<(), BoxError> {
            Ok(ctx.send("fired")?)
        }
    }
    let mut b = SystemBuilder::new();
    let far = b.entity("far", Far { far: None });
    let out = b.output(&far, "out");
    let system = b.spawn().unwrap();
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), "fired");
    system.handle(&far).query(()).unwrap();
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), "cancelled");
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert!(out.try_recv().is_err(), "only the near timer fired");
}

#[test]
fn a_periodic_timer_skips_the_ticks_it_missed_while_the_agent_was_busy() {
    /// Ticks every millisecond; its first query keeps it busy for 50 ms.
    struct Busy {
        ticks: u32,
    }
    impl Backend for Busy {
        type Input = ();
        type Output = u32;
        fn query(&mut self, (): (), ctx: &mut Context<u32>) -> Result<(), BoxError> {
            std::thread::sleep(Duration::from_millis(50));
            Ok(ctx.send(self.ticks)?)
        }
        fn start(&mut self, ctx: &mut Context<u32>) -> Result<(), BoxError> {
            ctx.every(Duration::from_millis(1));
            Ok(())
        }
        fn timer(&mut self, _: TimerId, _: &mut Context<u32>) -> Result<(), BoxError> {
            self.ticks += 1;
            Ok(())
        }
    }
    let mut b = SystemBuilder::new();
    let busy = b.entity("busy", Busy { ticks: 0 });
    let out = b.output(&busy, "out");
    let system = b.spawn().unwrap();
    let handle = system.handle(&busy);
    handle.query(()).unwrap();
    let before = out.recv_timeout(DEADLINE).unwrap();
    // Right after the busy query: at most one tick for the 50 missed, not 50 queued up.
    handle.query(()).unwrap();
    let after = out.recv_timeout(DEADLINE).unwrap();
    system.shutdown(DEADLINE);
    assert!(after - before < 25, "{before} then {after}: the 50 missed ticks were replayed");
}

#[test]
fn a_start_hook_can_send_without_being_asked() {
    struct Greeter;
    impl Backend for Greeter {
        type Input = ();
        type Output = String;
        fn query(&mut self, (): (), _: &mut Context<String>) -> Result<(), BoxError> {
            Ok(())
        }
        fn start(&mut self, ctx: &mut Context<String>) -> Result<(), BoxError> {
            let thread = std::thread::current().name().map(str::to_string);
            Ok(ctx.send(format!("{} on {}", ctx.name(), thread.unwrap_or_default()))?)
        }
    }
    for runtime in [Runtime::Threads, Runtime::Pool { workers: 1 }] {
        let mut b = SystemBuilder::new();
        b.runtime(runtime);
        let greeter = b.entity("greeter", Greeter);
        let out = b.output(&greeter, "out");
        let system = b.spawn().unwrap();
        let on = match runtime {
            Runtime::Threads => "sophon:greeter",
            _ => "sophon:pool:0",
        };
        assert_eq!(out.recv().unwrap(), format!("greeter on {on}"));
        system.shutdown(DEADLINE);
    }
}

#[test]
fn send_to_routes_by_name() {
    let mut b = SystemBuilder::new();
    let router = b.entity(
        "router",
        from_fn(|n: u32, ctx: &mut Context<u32>| {
            let to = if n.is_multiple_of(2) { "even" } else { "odd" };
            Ok(ctx.send_to(to, n)?)
        }),
    );
    let even_out = b.output(&router, "even");
    let odd_out = b.output(&router, "odd");
    let lost = b.entity(
        "lost",
        from_fn(|n: u32, ctx: &mut Context<u32>| {
            let err = ctx.send_to("nowhere", n).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UnknownSibling);
            Err(err.into())
        }),
    );
    let system = b.spawn().unwrap();
    for n in 0..4 {
        system.handle(&router).query(n).unwrap();
    }
    system.handle(&lost).query(1).unwrap();
    assert_eq!(even_out.iter().take(2).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(odd_out.iter().take(2).collect::<Vec<_>>(), [1, 3]);
    let report = system.shutdown(DEADLINE);
    assert_eq!(report.failures[0].message(), "cannot reach `nowhere`: there is no sibling of that name");
}

#[test]
fn counters_track_what_each_entity_did() {
    let mut b = SystemBuilder::new();
    let worker = b.entity(
        "worker",
        from_fn(|n: u64, ctx: &mut Context<u64>| {
            std::thread::sleep(Duration::from_millis(n));
            if n == 0 {
                return Err("zero".into());
            }
            Ok(ctx.send(n)?)
        }),
    );
    let out = b.output(&worker, "out");
    let system = b.spawn().unwrap();
    let handle = system.handle(&worker);
    for n in [0, 2, 10] {
        handle.query(n).unwrap();
    }
    assert_eq!(out.iter().take(2).count(), 2);
    let report = system.shutdown(DEADLINE);
    let stats = report.entity("worker").unwrap().stats;
    assert_eq!((stats.received, stats.handled, stats.sent, stats.errors), (3, 3, 2, 1));
    // A sleep lasts at least as long as asked; how much longer is up to the machine.
    assert!(stats.max >= Duration::from_millis(10), "{stats:?}");
    assert!(stats.busy >= Duration::from_millis(12) && stats.busy >= stats.max, "{stats:?}");
}

#[test]
fn a_bounded_queue_slows_the_sender_and_loses_nothing() {
    let mut b = SystemBuilder::new();
    let fast = b.entity("fast", pass::<u32>());
    let slow = b.entity_with(
        "slow",
        from_fn(|n: u32, ctx: &mut Context<u32>| {
            std::thread::sleep(Duration::from_micros(50));
            Ok(ctx.send(n)?)
        }),
        EntityOptions::new().bounded(2),
    );
    b.query_edge(&fast, &slow);
    let out = b.output(&slow, "out");
    let system = b.spawn().unwrap();
    for n in 0..200 {
        system.handle(&fast).query(n).unwrap();
    }
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(out.try_iter().collect::<Vec<_>>(), (0..200).collect::<Vec<_>>());
}

/// Counts, in `ended`, the threads it started on that have ended: a thread-local's destructor
/// runs as its thread ends.
struct SignsOff {
    cleanups: Arc<AtomicU64>,
    ended: Arc<AtomicU64>,
}

struct OnThreadEnd(Arc<AtomicU64>);

impl Drop for OnThreadEnd {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static ON_END: std::cell::RefCell<Option<OnThreadEnd>> = const { std::cell::RefCell::new(None) };
}

impl Backend for SignsOff {
    type Input = ();
    type Output = ();

    fn query(&mut self, (): (), _: &mut Context<()>) -> Result<(), BoxError> {
        Ok(())
    }

    fn start(&mut self, _: &mut Context<()>) -> Result<(), BoxError> {
        ON_END.with(|on_end| *on_end.borrow_mut() = Some(OnThreadEnd(self.ended.clone())));
        Ok(())
    }

    fn nop(&mut self, _: &mut Context<()>) -> Result<(), BoxError> {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn dropping_the_system_cleans_up_and_joins_every_agent() {
    const N: u64 = 8;
    let (cleanups, ended) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    {
        // A thread per agent: the pool's workers are another test's.
        let mut b = SystemBuilder::new();
        b.runtime(Runtime::Threads);
        let nodes: Vec<_> = (0..N)
            .map(|i| b.entity(&format!("e{i}"), SignsOff { cleanups: cleanups.clone(), ended: ended.clone() }))
            .collect();
        let system = b.spawn().unwrap();
        for node in &nodes {
            system.handle(node).query(()).unwrap();
        }
        // Every agent is up (its start hook ran) before the drop.
        wait_until(|| nodes.iter().all(|n| system.handle(n).stats().unwrap().handled == 1));
        assert_eq!(ended.load(Ordering::SeqCst), 0);
    }
    assert_eq!(cleanups.load(Ordering::SeqCst), N, "every agent handled its nop before the drop returned");
    assert_eq!(ended.load(Ordering::SeqCst), N, "every agent's thread ended before the drop returned");
}

#[test]
fn handles_are_found_by_name_with_their_types() {
    let mut b = SystemBuilder::new();
    b.entity("echo", pass::<String>());
    let system = b.spawn().unwrap();
    assert!(system.handle_by_name::<u32, u32>("echo").is_none(), "wrong types");
    assert!(system.handle_by_name::<String, String>("nobody").is_none());
    let handle = system.handle_by_name::<String, String>("echo").unwrap();
    assert_eq!(handle.name(), "echo");
    assert_eq!(system.entity_names().collect::<Vec<_>>(), ["echo"]);
}

#[test]
fn an_edge_converts_output_into_the_siblings_input() {
    let mut b = SystemBuilder::new();
    let small = b.entity("small", pass::<u8>());
    let wide = b.entity("wide", pass::<u64>());
    b.query_edge(&small, &wide);
    let out = b.output(&wide, "out");
    let system = b.spawn().unwrap();
    system.handle(&small).query(200).unwrap();
    assert_eq!(out.recv().unwrap(), 200u64);
}

#[test]
fn a_shutdown_with_a_sender_still_sending_accounts_for_every_message() {
    // Each message a handle sent successfully ends up out of the system, undelivered, or in a
    // reported error (a stage whose next stage stopped first); none is left unseen in a queue.
    for round in 0..24 {
        let mut builder = SystemBuilder::new();
        let stages: Vec<_> = (0..4)
            .map(|i| builder.entity_with(&format!("s{i}"), pass::<u64>(), EntityOptions::new().bounded(16)))
            .collect();
        for pair in stages.windows(2) {
            builder.query_edge(&pair[0], &pair[1]);
        }
        let out = builder.output(&stages[3], "out");
        let system = builder.spawn().unwrap();
        let first = system.handle(&stages[0]);
        let producer = std::thread::spawn(move || (0..).take_while(|&i| first.query(i).is_ok()).count() as u64);
        let consumer = std::thread::spawn(move || out.iter().count() as u64);
        std::thread::sleep(Duration::from_millis(5));
        let report = system.shutdown(Duration::from_millis(5 * (round % 3)));
        let sent = producer.join().unwrap();
        let got = consumer.join().unwrap();
        let lost: u64 = report.entities.iter().map(|e| e.stats.undelivered + e.stats.errors).sum();
        assert_eq!(got + lost, sent, "round {round}: {report}");
    }
}
