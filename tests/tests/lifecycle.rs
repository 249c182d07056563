//! The lifecycle end to end: panics in every kind of handler, shutdown in graph order, deadlines
//! that hold whatever backends do, bounded queues that cannot deadlock, restarts, and failures
//! that keep their errors.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{from_fn, pass};
use sophon::crossbeam_channel;
use sophon::{
    Backend, BoxError, BuildProblem, Context, EntityOptions, EntityState, ErrorKind, HandlerKind, PanicError, Report,
    SystemBuilder, TimerId,
};

const DEADLINE: Duration = Duration::from_secs(10);

/// Asserts that every message each entity received is accounted for: handled, or dropped by a
/// panicking handler (`received - handled`, which must equal the query and read panics).
fn assert_sums(report: &Report, message_panics: &[(&str, u64)]) {
    for e in &report.entities {
        let panics = message_panics.iter().find(|(name, _)| *name == e.name).map_or(0, |(_, n)| *n);
        assert_eq!(e.stats.received, e.stats.handled + panics, "{}: {report}", e.name);
    }
}

/// Panics in the handler of the kind it is given; otherwise passes numbers on.
struct PanicsIn(HandlerKind);

impl PanicsIn {
    fn panic_if(&self, kind: HandlerKind) {
        if self.0 == kind {
            panic!("{kind} panics");
        }
    }
}

impl Backend for PanicsIn {
    type Input = u32;
    type Output = u32;

    fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
        self.panic_if(HandlerKind::Query);
        Ok(ctx.send(n)?)
    }

    fn read(&mut self, _: u32, _: &mut Context<u32>) -> Result<(), BoxError> {
        self.panic_if(HandlerKind::Read);
        Ok(())
    }

    fn nop(&mut self, _: &mut Context<u32>) -> Result<(), BoxError> {
        self.panic_if(HandlerKind::Nop);
        Ok(())
    }

    fn start(&mut self, ctx: &mut Context<u32>) -> Result<(), BoxError> {
        self.panic_if(HandlerKind::Start);
        if self.0 == HandlerKind::Timer {
            ctx.after(Duration::from_millis(1));
        }
        Ok(())
    }

    fn timer(&mut self, _: TimerId, _: &mut Context<u32>) -> Result<(), BoxError> {
        panic!("timer panics")
    }
}

impl Drop for PanicsIn {
    fn drop(&mut self) {
        if self.0 == HandlerKind::Drop && !std::thread::panicking() {
            panic!("drop panics");
        }
    }
}

/// A system where `fragile` panics in the handler of `kind` and `healthy` beside it keeps
/// working; shut down with a 10 s deadline, it returns at once, reporting the panic once.
fn panic_in(kind: HandlerKind) {
    let mut b = SystemBuilder::new();
    let feeder = b.entity("feeder", pass::<u32>());
    let fragile = b.entity("fragile", PanicsIn(kind));
    let healthy = b.entity("healthy", pass::<u32>());
    let reader = b.entity("reader", pass::<u32>());
    b.query_edge(&feeder, &fragile).query_edge(&feeder, &healthy).read_edge(&reader, &fragile);
    let out = b.output(&healthy, "out");
    let system = b.spawn().unwrap();
    let failures = system.failures();
    let mut seen = Vec::new();
    if matches!(kind, HandlerKind::Query | HandlerKind::Read) {
        system.handle(&reader).query(0).unwrap();
        system.handle(&feeder).query(1).unwrap();
    }
    if kind != HandlerKind::Nop && kind != HandlerKind::Drop {
        // The panic is reported as it happens.
        seen.push(failures.recv_timeout(DEADLINE).unwrap());
    }
    // The rest of the system keeps its messages.
    for n in 10..20 {
        system.handle(&healthy).query(n).unwrap();
    }
    let took = Instant::now();
    let report = system.shutdown(DEADLINE);
    let took = took.elapsed();
    assert!(took < Duration::from_millis(500), "{kind}: shutdown took {took:?}\n{report}");
    assert!(!report.timed_out, "{kind}: {report}");
    let mut got: Vec<u32> = out.try_iter().collect();
    got.retain(|&n| n >= 10);
    assert_eq!(got, (10..20).collect::<Vec<_>>(), "{kind}");

    seen.extend(failures.try_iter());
    seen.extend(report.failures.iter().cloned());
    let panics: Vec<_> = seen.iter().filter(|f| f.panicked).collect();
    assert_eq!(panics.len(), 1, "{kind}: {report}");
    assert_eq!((panics[0].entity.as_str(), panics[0].kind), ("fragile", kind));
    assert!(panics[0].error.is::<PanicError>());
    assert_eq!(panics[0].message(), format!("{kind} panics"));
    let fragile = report.entity("fragile").unwrap();
    assert_eq!(fragile.stats.panics, 1, "{kind}: {report}");
    let expected_state = if kind == HandlerKind::Drop { EntityState::Stopped } else { EntityState::Failed };
    assert_eq!(fragile.state, expected_state, "{kind}");
    let healthy = report.entity("healthy").unwrap();
    assert_eq!(healthy.state, EntityState::Stopped);
    assert!(report.entities.iter().all(|e| e.joined));
    let dropped = u64::from(matches!(kind, HandlerKind::Query | HandlerKind::Read));
    assert_sums(&report, &[("fragile", dropped)]);
}

#[test]
fn a_panic_in_start_is_counted_once_and_shutdown_returns_at_once() {
    panic_in(HandlerKind::Start);
}

#[test]
fn a_panic_in_a_timer_is_counted_once_and_shutdown_returns_at_once() {
    panic_in(HandlerKind::Timer);
}

#[test]
fn a_panic_in_query_is_counted_once_and_shutdown_returns_at_once() {
    panic_in(HandlerKind::Query);
}

#[test]
fn a_panic_in_read_is_counted_once_and_shutdown_returns_at_once() {
    panic_in(HandlerKind::Read);
}

#[test]
fn a_panic_in_nop_is_counted_once_and_shutdown_returns_at_once() {
    panic_in(HandlerKind::Nop);
}

#[test]
fn a_panic_in_drop_is_counted_once_and_shutdown_returns_at_once() {
    panic_in(HandlerKind::Drop);
}

/// Sends numbers on in batches of `size`, and flushes what is left in its `nop`.
struct Batcher {
    size: usize,
    batch: Vec<u64>,
}

impl Backend for Batcher {
    type Input = Vec<u64>;
    type Output = Vec<u64>;

    fn query(&mut self, items: Vec<u64>, ctx: &mut Context<Vec<u64>>) -> Result<(), BoxError> {
        self.batch.extend(items);
        if self.batch.len() >= self.size {
            ctx.send(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }

    fn read(&mut self, items: Vec<u64>, ctx: &mut Context<Vec<u64>>) -> Result<(), BoxError> {
        self.query(items, ctx)
    }

    fn nop(&mut self, ctx: &mut Context<Vec<u64>>) -> Result<(), BoxError> {
        if !self.batch.is_empty() {
            ctx.send(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }
}

fn batcher(size: usize) -> Batcher {
    Batcher { size, batch: Vec::new() }
}

// `src ~> first -> second -> sink`: both batchers flush in `nop`, and the flushes reach the sink,
// since each entity stops only after everything feeding it has ended.
#[test]
fn what_a_nop_sends_is_delivered_in_graph_order() {
    for round in 0..200 {
        let mut b = SystemBuilder::new();
        // Declared in reverse, so that the order of declaration cannot be what saves the flush.
        let sink = b.entity(
            "sink",
            from_fn(|items: Vec<u64>, ctx: &mut Context<u64>| {
                for item in items {
                    ctx.send(item)?;
                }
                Ok(())
            }),
        );
        let second = b.entity("second", batcher(7));
        let first = b.entity("first", batcher(5));
        let src = b.entity("src", pass::<Vec<u64>>());
        b.read_edge(&src, &first).query_edge(&first, &second).query_edge(&second, &sink);
        let out = b.output(&sink, "out");
        let system = b.spawn().unwrap();
        let n = 1 + round % 23;
        for i in 0..n {
            system.handle(&src).query(vec![i]).unwrap();
        }
        let report = system.shutdown(DEADLINE);
        assert!(report.is_clean(), "round {round}: {report}");
        let got: Vec<u64> = out.try_iter().collect();
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "round {round}: {report}");
        assert_sums(&report, &[]);
    }
}

// Entities of a loop stop together, after what feeds the loop; what the loop feeds stops after.
#[test]
fn a_loop_stops_after_its_upstream_and_before_its_downstream() {
    let order = Arc::new(Mutex::new(Vec::new()));
    struct Logs(&'static str, Arc<Mutex<Vec<&'static str>>>);
    impl Backend for Logs {
        type Input = u32;
        type Output = u32;
        fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
            if n > 0 {
                ctx.send(n - 1)?;
            }
            Ok(())
        }
        fn nop(&mut self, _: &mut Context<u32>) -> Result<(), BoxError> {
            self.1.lock().unwrap().push(self.0);
            Ok(())
        }
    }
    let mut b = SystemBuilder::new();
    let after = b.entity("after", Logs("after", order.clone()));
    let a = b.entity("a", Logs("a", order.clone()));
    let z = b.entity("z", Logs("z", order.clone()));
    let before = b.entity("before", Logs("before", order.clone()));
    b.query_edge(&before, &a).query_edge(&a, &z).loop_edge(&z, &a).read_edge(&z, &after);
    let system = b.spawn().unwrap();
    system.handle(&before).query(20).unwrap();
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 4);
    assert_eq!((order[0], order[3]), ("before", "after"), "{order:?}");
}

/// Blocks forever in its query handler.
struct Stuck;

impl Backend for Stuck {
    type Input = ();
    type Output = ();

    // It blocks: in a system run by a pool it gets a thread of its own.
    fn blocking(&self) -> bool {
        true
    }

    fn query(&mut self, (): (), _: &mut Context<()>) -> Result<(), BoxError> {
        loop {
            std::thread::park();
        }
    }
}

// A backend blocked forever and an output nobody reads cannot hold a shutdown past its deadline:
// it returns within the deadline and `SHUTDOWN_GRACE`, naming the agents it gave up on.
#[test]
fn the_deadline_holds_whatever_backends_do() {
    let (tx, unread) = crossbeam_channel::bounded(1);
    let mut b = SystemBuilder::new();
    let stuck = b.entity("stuck", Stuck);
    let talker = b.entity("talker", pass::<u32>());
    b.output_to(&talker, "unread", tx);
    let system = b.spawn().unwrap();
    system.handle(&stuck).query(()).unwrap();
    system.handle(&stuck).query(()).unwrap();
    for n in 0..3 {
        system.handle(&talker).query(n).unwrap();
    }
    common::wait_until(|| system.handle(&stuck).stats().unwrap().received == 1);
    let took = Instant::now();
    let report = system.shutdown(Duration::from_millis(100));
    let took = took.elapsed();
    assert!(took < Duration::from_millis(500), "shutdown took {took:?}\n{report}");
    assert!(took < Duration::from_millis(100) + sophon::SHUTDOWN_GRACE + Duration::from_millis(50), "{took:?}");
    assert!(report.timed_out);
    assert_eq!(report.not_joined().collect::<Vec<_>>(), ["stuck"], "{report}");
    let stuck = report.entity("stuck").unwrap();
    assert_eq!((stuck.stats.handled, stuck.stats.undelivered), (0, 1), "the second query is undelivered");
    // The talker gave up on its full output once the deadline passed: one message is in the
    // channel, the one it was sending is a refused send (its error), and the one still queued
    // is undelivered.
    let talker = report.entity("talker").unwrap();
    assert!(talker.joined);
    let s = talker.stats;
    assert_eq!((s.handled, s.sent, s.errors, s.undelivered), (2, 1, 1, 1), "{report}");
    assert_eq!(unread.try_iter().count() as u64, talker.stats.sent);
    assert!(report.failures.iter().any(|f| f.message().contains("the shutdown deadline passed")), "{report}");
    assert!(!report.is_clean());
}

// Dropping a system while a panic unwinds shuts it down as usual.
#[test]
fn dropping_a_system_while_panicking_returns() {
    let result = std::panic::catch_unwind(|| {
        let mut b = SystemBuilder::new();
        let talker = b.entity("talker", pass::<u32>());
        let _out = b.output(&talker, "out");
        let system = b.spawn().unwrap();
        system.handle(&talker).query(1).unwrap();
        panic!("the test's own panic, with the system still alive");
    });
    assert!(result.is_err());
}

#[test]
fn a_capacity_of_zero_is_refused() {
    let mut b = SystemBuilder::new();
    b.entity_with("zero", pass::<u32>(), EntityOptions::new().bounded(0));
    let err = b.spawn().unwrap_err();
    assert!(matches!(&err.problems()[0], BuildProblem::ZeroCapacity { name } if name == "zero"));
    assert_eq!(err.to_string(), "entity `zero` has a bounded queue of capacity 0; give it a capacity of at least 1");
}

#[test]
fn a_loop_of_bounded_entities_is_refused_and_one_unbounded_entity_breaks_it() {
    let bounded = EntityOptions::new().bounded(4);
    let mut b = SystemBuilder::new();
    let a = b.entity_with("a", pass::<u32>(), bounded);
    let x = b.entity_with("b", pass::<u32>(), bounded);
    let c = b.entity_with("c", pass::<u32>(), bounded);
    b.query_edge(&a, &x).read_edge(&x, &c).loop_edge(&c, &a);
    let err = b.spawn().unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert!(matches!(&err.problems()[0], BuildProblem::BoundedLoop { cycle } if cycle == &["a", "b", "c"]));
    assert_eq!(
        err.to_string(),
        "edges `a -> b -> c -> a` form a loop whose queues are all bounded, which can deadlock; \
         leave one of its entities unbounded"
    );

    let mut b = SystemBuilder::new();
    let a = b.entity_with("a", pass::<u32>(), bounded);
    let x = b.entity("b", pass::<u32>());
    b.query_edge(&a, &x).loop_edge(&x, &a);
    assert!(b.spawn().is_ok());
}

// A loop through one unbounded entity does not deadlock, however full its bounded queues get:
// the loop is filled from outside and runs each message round many times.
#[test]
fn a_loop_with_one_unbounded_entity_does_not_deadlock_when_full() {
    const ROUNDS: u32 = 50;
    const MESSAGES: u32 = 64;
    let mut b = SystemBuilder::new();
    let counter = Arc::new(AtomicU64::new(0));
    let seen = counter.clone();
    let bounded = EntityOptions::new().bounded(1);
    let a = b.entity_with(
        "a",
        from_fn(move |n: u32, ctx: &mut Context<u32>| {
            seen.fetch_add(1, Ordering::Relaxed);
            if n > 0 { Ok(ctx.send(n - 1)?) } else { Ok(()) }
        }),
        bounded,
    );
    let x = b.entity_with("b", pass::<u32>(), bounded);
    let c = b.entity("c", pass::<u32>());
    b.query_edge(&a, &x).query_edge(&x, &c).loop_edge(&c, &a);
    let system = b.spawn().unwrap();
    let handles = [system.handle(&a), system.handle(&x), system.handle(&c)];
    let feeders: Vec<_> = handles
        .into_iter()
        .map(|h| std::thread::spawn(move || (0..MESSAGES).for_each(|_| h.query(ROUNDS).unwrap())))
        .collect();
    feeders.into_iter().for_each(|f| f.join().unwrap());
    let report = system.shutdown(Duration::from_secs(30));
    assert!(report.is_clean(), "{report}");
    // Each message visits `a` once per round left (counted down at `a` only).
    assert_eq!(counter.load(Ordering::Relaxed), u64::from(3 * MESSAGES * (ROUNDS + 1)));
}

// A handler that sends into its own full queue, or swaps its own backend, would wait on itself
// forever: it gets an error instead.
#[test]
fn a_handler_waiting_on_its_own_entity_gets_an_error() {
    let me = Arc::new(Mutex::new(None::<sophon::Handle<u32, u32>>));
    let found = me.clone();
    let mut b = SystemBuilder::new();
    let selfish = b.entity_with(
        "selfish",
        from_fn(move |n: u32, ctx: &mut Context<u32>| {
            let me = found.lock().unwrap().clone().unwrap();
            if n == 0 {
                // Fill the inbox (capacity 2), then one more.
                me.query(1).unwrap();
                me.query(1).unwrap();
                let err = me.query(1).unwrap_err();
                ctx.send(u32::from(err.kind() == ErrorKind::WouldDeadlock))?;
                let err = me.swap(pass::<u32>()).unwrap_err();
                ctx.send(u32::from(err.kind() == ErrorKind::WouldDeadlock))?;
                return Err(err.without_body().into());
            }
            Ok(ctx.send(n * 10)?)
        }),
        EntityOptions::new().bounded(2),
    );
    let out = b.output(&selfish, "out");
    let system = b.spawn().unwrap();
    *me.lock().unwrap() = Some(system.handle(&selfish));
    system.handle(&selfish).query(0).unwrap();
    assert_eq!(out.iter().take(4).collect::<Vec<_>>(), [1, 1, 10, 10]);
    let report = system.shutdown(DEADLINE);
    assert_eq!(
        report.failures[0].message(),
        "cannot reach `selfish`: it is the entity running this handler, which would wait on itself forever"
    );
    let stats = report.entity("selfish").unwrap().stats;
    assert_eq!((stats.handled, stats.errors, stats.undelivered), (3, 1, 0));
}

// With `bounded(8)` and a stalled consumer, the queue never holds more than 8.
#[test]
fn a_bounded_queue_never_holds_more_than_its_capacity() {
    let (open, gate) = crossbeam_channel::bounded::<()>(0);
    let mut b = SystemBuilder::new();
    let producer = b.entity("producer", pass::<u32>());
    let consumer = b.entity_with(
        "consumer",
        from_fn(move |n: u32, ctx: &mut Context<u32>| {
            if n == 0 {
                gate.recv().unwrap();
            }
            Ok(ctx.send(n)?)
        }),
        // It blocks on the gate: in a system run by a pool it gets a thread of its own.
        EntityOptions::new().bounded(8).thread(),
    );
    b.query_edge(&producer, &consumer);
    let out = b.output(&consumer, "out");
    let system = b.spawn().unwrap();
    let (p, c) = (system.handle(&producer), system.handle(&consumer));
    for n in 0..100 {
        p.query(n).unwrap();
    }
    // The consumer holds 0 in its handler; 8 wait in its queue; the producer waits on the 10th.
    common::wait_until(|| c.stats().unwrap().queued == 8 && p.stats().unwrap().received == 10);
    for _ in 0..1000 {
        let queued = c.stats().unwrap().queued;
        assert!(queued <= 8, "{queued} queued");
    }
    assert_eq!(p.stats().unwrap().handled, 9, "the producer waits for room");
    open.send(()).unwrap();
    assert_eq!(out.iter().take(100).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
    assert!(system.shutdown(DEADLINE).is_clean());
}

/// Answers numbers with themselves, and panics on every 100th.
struct Flaky;

impl Backend for Flaky {
    type Input = u32;
    type Output = u32;

    fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
        if n % 100 == 99 {
            panic!("cannot take {n}");
        }
        Ok(ctx.send(n)?)
    }
}

#[test]
fn a_restarted_entity_keeps_its_id_handles_and_queue() {
    const N: u32 = 10_000;
    let built = Arc::new(AtomicU64::new(0));
    let count = built.clone();
    let mut b = SystemBuilder::new();
    let feeder = b.entity("feeder", pass::<u32>());
    let flaky = b.supervised(
        "flaky",
        move || {
            count.fetch_add(1, Ordering::Relaxed);
            Flaky
        },
        EntityOptions::new().restart(100, Duration::from_secs(3600)),
    );
    b.query_edge(&feeder, &flaky);
    let out = b.output(&flaky, "out");
    let system = b.spawn().unwrap();
    let handle = system.handle(&flaky);
    let id = handle.id();
    let failures = system.failures();
    for n in 0..N {
        if n % 2 == 0 { system.handle(&feeder).query(n) } else { handle.query(n) }.unwrap();
    }
    let got: Vec<u32> = out.iter().take((N - N / 100) as usize).collect();
    let mut expected: Vec<u32> = (0..N).filter(|n| n % 100 != 99).collect();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "every message but the panicking ones is answered, once");
    let report = system.shutdown(DEADLINE);
    assert!(out.try_recv().is_err());
    let flaky = report.entity("flaky").unwrap();
    assert_eq!(flaky.id, id);
    assert_eq!(flaky.state, EntityState::Stopped);
    let s = flaky.stats;
    assert_eq!((s.received, s.handled, s.panics, s.restarts, s.undelivered), (10_000, 9_900, 100, 100, 0));
    assert_eq!(built.load(Ordering::Relaxed), 101, "built once, then once per panic");
    let panics: Vec<_> = failures.try_iter().chain(report.failures.iter().cloned()).collect();
    assert_eq!(panics.len(), 100);
    assert!(panics.iter().all(|f| f.panicked && f.kind == HandlerKind::Query && f.id == id));
    assert_sums(&report, &[("flaky", 100)]);
}

#[test]
fn past_the_restart_limit_the_entity_fails_saying_why() {
    let mut b = SystemBuilder::new();
    let flaky = b.supervised("flaky", || Flaky, EntityOptions::new().restart(2, Duration::from_secs(3600)));
    let system = b.spawn().unwrap();
    for n in [99, 199, 299, 1, 2] {
        system.handle(&flaky).query(n).unwrap();
    }
    let failures = system.failures();
    let kinds: Vec<_> = (0..4).map(|_| failures.recv_timeout(DEADLINE).unwrap()).collect();
    assert!(kinds[..3].iter().all(|f| f.panicked && f.kind == HandlerKind::Query));
    assert_eq!(kinds[3].kind, HandlerKind::Restart);
    assert_eq!(
        kinds[3].to_string(),
        "`flaky` could not be restarted: it panicked again after 2 restarts within 3600s; it is given up on"
    );
    let report = system.shutdown(DEADLINE);
    let flaky = report.entity("flaky").unwrap();
    assert_eq!(flaky.state, EntityState::Failed);
    let s = flaky.stats;
    assert_eq!((s.received, s.panics, s.restarts, s.undelivered), (3, 3, 2, 2), "{report}");
    assert_sums(&report, &[("flaky", 3)]);
}

#[test]
fn a_factory_that_fails_ends_the_entity_with_a_clear_failure() {
    let calls = Arc::new(AtomicU64::new(0));
    let count = calls.clone();
    let mut b = SystemBuilder::new();
    let flaky = b.supervised(
        "flaky",
        move || match count.fetch_add(1, Ordering::Relaxed) {
            0 => Ok(Flaky),
            _ => Err(std::io::Error::other("the model file is gone")),
        },
        EntityOptions::new().restart(5, Duration::from_secs(60)),
    );
    let system = b.spawn().unwrap();
    system.handle(&flaky).query(99).unwrap();
    system.handle(&flaky).query(1).unwrap();
    let failures = system.failures();
    assert!(failures.recv_timeout(DEADLINE).unwrap().panicked);
    let failure = failures.recv_timeout(DEADLINE).unwrap();
    assert_eq!(failure.kind, HandlerKind::Restart);
    assert_eq!(failure.to_string(), "`flaky` could not be restarted: its factory failed: the model file is gone");
    let source = std::error::Error::source(&*failure.error).unwrap();
    assert!(source.is::<std::io::Error>(), "the factory's own error is the source");
    let report = system.shutdown(DEADLINE);
    let flaky = report.entity("flaky").unwrap();
    assert_eq!(flaky.state, EntityState::Failed);
    assert_eq!((flaky.stats.restarts, flaky.stats.undelivered), (0, 1));

    // A factory that fails the first time fails the build.
    let mut b = SystemBuilder::new();
    b.supervised("never", || Err::<Flaky, _>("no such model"), EntityOptions::new());
    let err = b.spawn().unwrap_err();
    assert_eq!(err.to_string(), "entity `never`'s factory could not build its backend: no such model");
    // A restart policy needs a factory.
    let mut b = SystemBuilder::new();
    b.entity_with("lonely", Flaky, EntityOptions::new().restart(1, Duration::from_secs(1)));
    assert!(
        matches!(&b.spawn().unwrap_err().problems()[0], BuildProblem::RestartWithoutFactory { name } if name == "lonely")
    );
}

// A restarted backend runs its `start` again; a panic in `start` restarts too, within the limit.
#[test]
fn a_restart_runs_the_new_backends_start() {
    struct Greets(Arc<AtomicU64>);
    impl Backend for Greets {
        type Input = u32;
        type Output = String;
        fn query(&mut self, n: u32, _: &mut Context<String>) -> Result<(), BoxError> {
            assert_ne!(n, 0, "zero");
            Ok(())
        }
        fn start(&mut self, ctx: &mut Context<String>) -> Result<(), BoxError> {
            let k = self.0.fetch_add(1, Ordering::Relaxed);
            Ok(ctx.send(format!("hello {k}"))?)
        }
    }
    let starts = Arc::new(AtomicU64::new(0));
    let s = starts.clone();
    let mut b = SystemBuilder::new();
    let greets =
        b.supervised("greets", move || Greets(s.clone()), EntityOptions::new().restart(3, Duration::from_secs(60)));
    let out = b.output(&greets, "out");
    let system = b.spawn().unwrap();
    assert_eq!(out.recv().unwrap(), "hello 0");
    system.handle(&greets).query(0).unwrap();
    assert_eq!(out.recv().unwrap(), "hello 1");
    let report = system.shutdown(DEADLINE);
    assert_eq!(report.entity("greets").unwrap().stats.restarts, 1);
}
