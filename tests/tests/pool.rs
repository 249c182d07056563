//! What only the pool runtime has to show: many agents on few workers, blocking backends on
//! threads of their own, and senders that wait for room without holding a worker. The rest of
//! the runtime's behaviour is tested in both modes: CI runs the runtime suites again with
//! `SOPHON_RUNTIME=pool`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{from_fn, pass, wait_until};
use sophon::crossbeam_channel;
use sophon::{Backend, BoxError, Context, EntityOptions, Runtime, SystemBuilder};

const DEADLINE: Duration = Duration::from_secs(30);

/// Answers `(from, n)` with its own index and `n`.
struct Member(u32);

impl Backend for Member {
    type Input = u32;
    type Output = (u32, u32);

    fn query(&mut self, n: u32, ctx: &mut Context<(u32, u32)>) -> Result<(), BoxError> {
        Ok(ctx.send((self.0, n))?)
    }
}

#[test]
fn a_hundred_thousand_agents_on_two_workers_each_answer_once() {
    const N: u32 = 100_000;
    let mut b = SystemBuilder::new();
    b.pool(2);
    let (tx, answers) = crossbeam_channel::unbounded();
    let nodes: Vec<_> = (0..N)
        .map(|i| {
            let node = b.entity(&format!("member{i}"), Member(i));
            b.output_to(&node, "answers", tx.clone());
            node
        })
        .collect();
    drop(tx);
    let system = b.spawn().unwrap();
    assert_eq!(system.runtime(), Runtime::Pool { workers: 2 });
    for (i, node) in nodes.iter().enumerate() {
        system.handle(node).query(i as u32 * 3).unwrap();
    }
    let mut seen = vec![false; N as usize];
    for _ in 0..N {
        let (member, n) = answers.recv_timeout(DEADLINE).unwrap();
        assert_eq!(n, member * 3);
        assert!(!std::mem::replace(&mut seen[member as usize], true), "member{member} answered twice");
    }
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{}", report.failures.len());
    assert!(report.entities.iter().all(|e| e.stats.handled == 1 && e.joined));
    assert!(answers.try_recv().is_err(), "no answer beyond one each");
}

/// Blocks on a gate for every query, and says so.
struct Waits(crossbeam_channel::Receiver<()>);

impl Backend for Waits {
    type Input = ();
    type Output = ();

    fn query(&mut self, (): (), _: &mut Context<()>) -> Result<(), BoxError> {
        Ok(self.0.recv()?)
    }

    fn blocking(&self) -> bool {
        true
    }
}

// One worker, and an entity blocked in its handler: the others go on, since a backend that
// blocks gets a thread of its own, whether it says so itself or the entity asks for one.
#[test]
fn a_blocking_backend_does_not_stall_the_pool() {
    let (open, gate) = crossbeam_channel::unbounded();
    let (open2, gate2) = crossbeam_channel::unbounded::<()>();
    let mut b = SystemBuilder::new();
    b.pool(1);
    let says_so = b.entity("says-so", Waits(gate));
    let asks = b.entity_with(
        "asks",
        from_fn(move |(): (), _: &mut Context<()>| Ok(gate2.recv()?)),
        EntityOptions::new().thread(),
    );
    let counter = b.entity("counter", pass::<u64>());
    let out = b.output(&counter, "out");
    let system = b.spawn().unwrap();
    system.handle(&says_so).query(()).unwrap();
    system.handle(&asks).query(()).unwrap();
    wait_until(|| {
        system.handle(&says_so).stats().unwrap().received == 1 && system.handle(&asks).stats().unwrap().received == 1
    });
    for n in 0..1000 {
        system.handle(&counter).query(n).unwrap();
    }
    assert_eq!(out.iter().take(1000).collect::<Vec<_>>(), (0..1000).collect::<Vec<_>>());
    open.send(()).unwrap();
    open2.send(()).unwrap();
    assert!(system.shutdown(DEADLINE).is_clean());
}

// A producer feeding a bounded, slow consumer waits for room without holding its worker: on a
// pool of one worker, another entity still answers meanwhile, and every message arrives in
// order.
#[test]
fn a_sender_waiting_for_room_does_not_hold_its_worker() {
    const N: u64 = 2_000;
    let (open, gate) = crossbeam_channel::unbounded::<()>();
    let mut b = SystemBuilder::new();
    b.pool(1);
    let producer = b.entity("producer", pass::<u64>());
    let consumer = b.entity_with(
        "consumer",
        from_fn(move |n: u64, ctx: &mut Context<u64>| {
            if n == 0 {
                gate.recv()?;
            }
            Ok(ctx.send(n)?)
        }),
        EntityOptions::new().bounded(4).thread(),
    );
    b.query_edge(&producer, &consumer);
    let out = b.output(&consumer, "out");
    let bystander = b.entity("bystander", pass::<u64>());
    let bystander_out = b.output(&bystander, "out");
    let system = b.spawn().unwrap();
    for n in 0..N {
        system.handle(&producer).query(n).unwrap();
    }
    let (p, c) = (system.handle(&producer), system.handle(&consumer));
    // The consumer holds 0; 4 wait in its queue; the producer waits for room after handling
    // the next one, with its send deferred.
    wait_until(|| c.stats().unwrap().queued == 4 && p.stats().unwrap().received == 6);
    assert_eq!(p.stats().unwrap().handled, 5, "the message whose send waits for room is not handled yet");
    for n in 0..100 {
        system.handle(&bystander).query(n).unwrap();
        assert_eq!(bystander_out.recv_timeout(DEADLINE).unwrap(), n, "the worker is free");
    }
    assert!(c.stats().unwrap().queued <= 4);
    open.send(()).unwrap();
    assert_eq!(out.iter().take(N as usize).collect::<Vec<_>>(), (0..N).collect::<Vec<_>>());
    assert!(system.shutdown(DEADLINE).is_clean());
}

// A bounded output channel nobody reads: the agent waits for room without holding its worker,
// and the shutdown deadline ends the wait, reporting the send as its handler's error.
#[test]
fn a_full_output_does_not_hold_the_worker_past_the_deadline() {
    let (tx, unread) = crossbeam_channel::bounded(1);
    let mut b = SystemBuilder::new();
    b.pool(1);
    let talker = b.entity("talker", pass::<u32>());
    b.output_to(&talker, "unread", tx);
    let other = b.entity("other", pass::<u32>());
    let other_out = b.output(&other, "out");
    let system = b.spawn().unwrap();
    for n in 0..3 {
        system.handle(&talker).query(n).unwrap();
    }
    wait_until(|| system.handle(&talker).stats().unwrap().received == 2);
    system.handle(&other).query(7).unwrap();
    assert_eq!(other_out.recv_timeout(DEADLINE).unwrap(), 7);
    let report = system.shutdown(Duration::from_millis(100));
    assert!(report.timed_out);
    let s = report.entity("talker").unwrap().stats;
    assert_eq!((s.handled, s.sent, s.errors, s.undelivered), (2, 1, 1, 1), "{report}");
    assert_eq!(unread.try_iter().count(), 1);
    assert!(report.failures.iter().any(|f| f.message().contains("the shutdown deadline passed")), "{report}");
}

/// Notes the thread each start hook ran on, and cleans up in its nop.
struct Notes {
    threads: Arc<Mutex<HashSet<String>>>,
    cleanups: Arc<AtomicU64>,
}

impl Backend for Notes {
    type Input = ();
    type Output = ();

    fn query(&mut self, (): (), _: &mut Context<()>) -> Result<(), BoxError> {
        Ok(())
    }

    fn start(&mut self, _: &mut Context<()>) -> Result<(), BoxError> {
        let name = std::thread::current().name().unwrap_or_default().to_string();
        self.threads.lock().unwrap().insert(name);
        Ok(())
    }

    fn nop(&mut self, _: &mut Context<()>) -> Result<(), BoxError> {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn agents_run_on_the_workers_and_dropping_the_system_cleans_each_up() {
    const N: u64 = 50;
    let threads = Arc::new(Mutex::new(HashSet::new()));
    let cleanups = Arc::new(AtomicU64::new(0));
    {
        let mut b = SystemBuilder::new();
        b.pool(2);
        let nodes: Vec<_> = (0..N)
            .map(|i| b.entity(&format!("e{i}"), Notes { threads: threads.clone(), cleanups: cleanups.clone() }))
            .collect();
        let system = b.spawn().unwrap();
        for node in &nodes {
            system.handle(node).query(()).unwrap();
        }
        wait_until(|| nodes.iter().all(|n| system.handle(n).stats().unwrap().handled == 1));
    }
    assert_eq!(cleanups.load(Ordering::SeqCst), N);
    let threads = threads.lock().unwrap();
    assert!(!threads.is_empty() && threads.iter().all(|t| t == "sophon:pool:0" || t == "sophon:pool:1"), "{threads:?}");
}

// A ping-pong through a loop edge, on one worker: every ball comes back, in order.
#[test]
fn a_ping_pong_on_one_worker_keeps_order() {
    const N: u64 = 10_000;
    let mut b = SystemBuilder::new();
    b.pool(1);
    let ping = b.entity(
        "ping",
        from_fn(|n: u64, ctx: &mut Context<u64>| {
            if n < N {
                ctx.send(n + 1)?;
            } else {
                ctx.stop_system();
            }
            Ok(())
        }),
    );
    let pong = b.entity("pong", pass::<u64>());
    b.query_edge(&ping, &pong);
    b.loop_edge(&pong, &ping);
    let system = b.spawn().unwrap();
    system.handle(&ping).query(0).unwrap();
    assert!(system.wait_for_stop(Some(DEADLINE)));
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("pong").unwrap().stats.handled, N);
}

/// Counts queries; `step` is what a query adds.
struct Counter {
    count: u64,
    step: u64,
    visits: u64,
}

impl Backend for Counter {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        self.count += self.step;
        Ok(ctx.send(n)?)
    }
}

// `for_each` over 10,000 entities while a stream of queries flows through them: each is visited
// exactly once, between two messages, and none of the messages is lost.
#[test]
fn for_each_visits_ten_thousand_entities_once_while_messages_flow() {
    const N: usize = 10_000;
    const ROUNDS: u64 = 20;
    let mut b = SystemBuilder::new();
    b.pool(2);
    let (tx, out) = crossbeam_channel::unbounded();
    let nodes: Vec<_> = (0..N)
        .map(|i| {
            let node = b.entity(&format!("c{i}"), Counter { count: 0, step: 1, visits: 0 });
            b.output_to(&node, "out", tx.clone());
            node
        })
        .collect();
    // An entity of another type is not visited.
    b.entity("other", pass::<u64>());
    let system = b.spawn().unwrap();
    let handles: Vec<_> = nodes.iter().map(|n| system.handle(n)).collect();
    let feeder = {
        let handles = handles.clone();
        std::thread::spawn(move || {
            for round in 0..ROUNDS {
                for h in &handles {
                    h.query(round).unwrap();
                }
            }
        })
    };
    let visited = system.for_each(|c: &mut Counter| {
        c.visits += 1;
        c.step = 2;
        c.count
    });
    feeder.join().unwrap();
    assert_eq!(visited.len(), N);
    let names: HashSet<_> = visited.iter().map(|(h, _)| h.name().to_string()).collect();
    assert_eq!(names.len(), N, "each entity once");
    assert!(visited.iter().zip(&handles).all(|((h, _), expected)| h.id() == expected.id()), "in entity order");
    assert_eq!(out.iter().take(N * ROUNDS as usize).count(), N * ROUNDS as usize);
    // What each had counted when visited, plus twice what came after, is its count now.
    let now = system.for_each(|c: &mut Counter| (c.count, c.visits));
    for ((_, before), (_, (count, visits))) in visited.iter().zip(&now) {
        assert_eq!(*visits, 1);
        assert_eq!(count - before, 2 * (ROUNDS - before), "{before} then {count}");
    }
    assert!(system.shutdown(DEADLINE).is_clean());
}

// In either runtime (CI runs this suite in both), `for_each` reaches every running entity of the
// type, leaves out a stopped one, and passes a panic of its function on, after the others ran.
#[test]
fn for_each_skips_stopped_entities_and_passes_a_panic_on() {
    let mut b = SystemBuilder::new();
    let nodes: Vec<_> = (0..8).map(|i| b.entity(&format!("c{i}"), Counter { count: i, step: 1, visits: 0 })).collect();
    let system = b.spawn().unwrap();
    system.handle(&nodes[3]).stop().unwrap();
    wait_until(|| system.handle(&nodes[3]).state().unwrap() != sophon::EntityState::Running);
    let counts: Vec<u64> = system.for_each(|c: &mut Counter| c.count).into_iter().map(|(_, n)| n).collect();
    assert_eq!(counts, [0, 1, 2, 4, 5, 6, 7]);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        system.for_each(|c: &mut Counter| {
            c.visits += 1;
            assert_ne!(c.count, 5, "five");
        })
    }));
    assert!(panicked.is_err());
    let visits: Vec<u64> = system.for_each(|c: &mut Counter| c.visits).into_iter().map(|(_, n)| n).collect();
    assert_eq!(visits, [1; 7], "every other entity ran it, and the agents went on");
    assert!(system.shutdown(DEADLINE).is_clean());
}
