//! sophon's pool runtime against actix, the same workloads in one run:
//! `cargo bench -p sophon-contenders`.
//!
//! Each workload is built as `sophon/benches/runtime.rs` builds it (`sophon_pool`: a pool of a
//! worker per core) and with actix 0.13 actors on one arbiter, actix's usual set-up: the
//! `actix::System` runs on a thread of its own, the benchmark's thread sends into it with
//! `do_send` and reads the answers from a crossbeam channel, as it does from sophon's output.

use std::thread;

use actix::prelude::*;
use crossbeam_channel::{Receiver, Sender, unbounded};
use divan::Bencher;
use divan::counter::ItemsCount;
use sophon::{Backend, BoxError, Runtime, SystemBuilder};

fn main() {
    divan::main();
}

/// A builder for a system on the pool runtime, a worker per core.
fn pooled() -> SystemBuilder {
    let mut b = SystemBuilder::new();
    b.runtime(Runtime::pool());
    b
}

/// Runs an actix system on a thread of its own: `start` makes its actors (inside the system)
/// and returns what the benchmark needs of them. Returns that and a way to stop the system.
fn actix_system<T: Send + 'static>(start: impl FnOnce() -> T + Send + 'static) -> (T, ActixThread) {
    let (tx, rx) = unbounded();
    let thread = thread::spawn(move || {
        let runner = actix::System::new();
        runner.block_on(async move {
            tx.send((start(), actix::System::current())).unwrap();
        });
        runner.run().unwrap();
    });
    let (made, system) = rx.recv().unwrap();
    (made, ActixThread { system, thread })
}

struct ActixThread {
    system: actix::System,
    thread: thread::JoinHandle<()>,
}

impl ActixThread {
    fn stop(self) {
        self.system.stop();
        self.thread.join().unwrap();
    }
}

/// A number, as actix's messages are declared.
#[derive(Message)]
#[rtype(result = "()")]
struct Num(u64);

/// Sends every query on unchanged.
struct Pass;

impl Backend for Pass {
    type Input = u64;
    type Output = u64;

    #[inline]
    fn query(&mut self, n: u64, ctx: &mut sophon::Context<u64>) -> Result<(), BoxError> {
        Ok(ctx.send(n)?)
    }
}

/// 1,000,000 messages through 8 stages.
mod pipeline {
    use super::*;

    const STAGES: usize = 8;
    const N: u64 = 1_000_000;

    /// An actix stage: on to the next stage, or out of the system after the last.
    struct Stage {
        next: Option<Recipient<Num>>,
        out: Option<Sender<u64>>,
    }

    impl Actor for Stage {
        type Context = actix::Context<Self>;
    }

    impl Handler<Num> for Stage {
        type Result = ();

        fn handle(&mut self, n: Num, _: &mut Self::Context) {
            match (&self.next, &self.out) {
                (Some(next), _) => next.do_send(n),
                (None, Some(out)) => out.send(n.0).unwrap(),
                (None, None) => {}
            }
        }
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn actix(bencher: Bencher<'_, '_>) {
        let (out_tx, out): (Sender<u64>, Receiver<u64>) = unbounded();
        let (first, system) = actix_system(move || {
            let mut next = Stage { next: None, out: Some(out_tx) }.start().recipient();
            for _ in 1..STAGES {
                next = Stage { next: Some(next), out: None }.start().recipient();
            }
            next
        });
        bencher.counter(ItemsCount::new(N)).bench_local(|| {
            for i in 0..N {
                first.do_send(Num(i));
            }
            for _ in 0..N {
                out.recv().unwrap();
            }
        });
        system.stop();
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_pool(bencher: Bencher<'_, '_>) {
        let mut b = pooled();
        let stages: Vec<_> = (0..STAGES).map(|i| b.entity(&format!("s{i}"), Pass)).collect();
        for pair in stages.windows(2) {
            b.query_edge(&pair[0], &pair[1]);
        }
        let out = b.output(&stages[STAGES - 1], "out");
        let system = b.spawn().unwrap();
        let first = system.handle(&stages[0]);
        bencher.counter(ItemsCount::new(N)).bench_local(|| {
            for i in 0..N {
                first.query(i).unwrap();
            }
            for _ in 0..N {
                out.recv().unwrap();
            }
        });
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }
}

/// One producer broadcasting 100,000 messages to 16 consumers.
mod fan_out {
    use super::*;

    const CONSUMERS: usize = 16;
    const N: u64 = 100_000;

    /// Reports once it has seen `N` messages.
    struct Consumer {
        seen: u64,
        done: Sender<()>,
    }

    impl Actor for Consumer {
        type Context = actix::Context<Self>;
    }

    impl Handler<Num> for Consumer {
        type Result = ();

        fn handle(&mut self, _: Num, _: &mut Self::Context) {
            self.seen += 1;
            if self.seen == N {
                self.seen = 0;
                self.done.send(()).unwrap();
            }
        }
    }

    /// Broadcasts `0..n` when asked for `n`.
    struct Producer(Vec<Recipient<Num>>);

    impl Actor for Producer {
        type Context = actix::Context<Self>;
    }

    impl Handler<Num> for Producer {
        type Result = ();

        fn handle(&mut self, n: Num, _: &mut Self::Context) {
            for i in 0..n.0 {
                for consumer in &self.0 {
                    consumer.do_send(Num(i));
                }
            }
        }
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn actix(bencher: Bencher<'_, '_>) {
        let (done_tx, done) = unbounded();
        let (producer, system) = actix_system(move || {
            let consumers =
                (0..CONSUMERS).map(|_| Consumer { seen: 0, done: done_tx.clone() }.start().recipient()).collect();
            Producer(consumers).start()
        });
        bencher.counter(ItemsCount::new(N * CONSUMERS as u64)).bench_local(|| {
            producer.do_send(Num(N));
            for _ in 0..CONSUMERS {
                done.recv().unwrap();
            }
        });
        system.stop();
    }

    /// Broadcasts `0..n` when asked for `n`.
    struct Broadcast;

    impl Backend for Broadcast {
        type Input = u64;
        type Output = u64;

        fn query(&mut self, n: u64, ctx: &mut sophon::Context<u64>) -> Result<(), BoxError> {
            for i in 0..n {
                ctx.send(i)?;
            }
            Ok(())
        }
    }

    /// Reports once it has seen `N` messages.
    struct Count(u64);

    impl Backend for Count {
        type Input = u64;
        type Output = ();

        #[inline]
        fn query(&mut self, _: u64, ctx: &mut sophon::Context<()>) -> Result<(), BoxError> {
            self.0 += 1;
            if self.0 == N {
                self.0 = 0;
                ctx.send(())?;
            }
            Ok(())
        }
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_pool(bencher: Bencher<'_, '_>) {
        let mut b = pooled();
        let producer = b.entity("producer", Broadcast);
        let (done_tx, done) = unbounded();
        for i in 0..CONSUMERS {
            let consumer = b.entity(&format!("c{i}"), Count(0));
            b.query_edge(&producer, &consumer);
            b.output_to(&consumer, "done", done_tx.clone());
        }
        let system = b.spawn().unwrap();
        let handle = system.handle(&producer);
        bencher.counter(ItemsCount::new(N * CONSUMERS as u64)).bench_local(|| {
            handle.query(N).unwrap();
            for _ in 0..CONSUMERS {
                done.recv().unwrap();
            }
        });
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }
}

/// Two agents bouncing a counter 100,000 times; one round trip per item.
mod ping_pong_agents {
    use super::*;

    const N: u64 = 100_000;

    /// Bounces `n + 1` to its partner until `n` is a multiple of `N`, then reports.
    struct Ping {
        pong: Option<Recipient<Num>>,
        done: Sender<()>,
    }

    impl Actor for Ping {
        type Context = actix::Context<Self>;
    }

    impl Handler<Num> for Ping {
        type Result = ();

        fn handle(&mut self, n: Num, _: &mut Self::Context) {
            if n.0.is_multiple_of(N) && n.0 > 0 {
                self.done.send(()).unwrap();
            } else if let Some(pong) = &self.pong {
                pong.do_send(Num(n.0 + 1));
            }
        }
    }

    /// Sends what it gets back to `ping`.
    struct Pong(Recipient<Num>);

    impl Actor for Pong {
        type Context = actix::Context<Self>;
    }

    impl Handler<Num> for Pong {
        type Result = ();

        fn handle(&mut self, n: Num, _: &mut Self::Context) {
            self.0.do_send(n);
        }
    }

    /// Gives `ping` its partner, once both exist.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Partner(Recipient<Num>);

    impl Handler<Partner> for Ping {
        type Result = ();

        fn handle(&mut self, partner: Partner, _: &mut Self::Context) {
            self.pong = Some(partner.0);
        }
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn actix(bencher: Bencher<'_, '_>) {
        let (done_tx, done) = unbounded();
        let (ping, system) = actix_system(move || {
            let ping = Ping { pong: None, done: done_tx }.start();
            let pong = Pong(ping.clone().recipient()).start();
            ping.do_send(Partner(pong.recipient()));
            ping
        });
        let mut start = 0;
        bencher.counter(ItemsCount::new(N)).bench_local(|| {
            ping.do_send(Num(start + 1));
            done.recv().unwrap();
            start += N;
        });
        system.stop();
    }

    /// Sends `n + 1` on until `n` is a multiple of `N`, then reports through its output.
    struct Bounce;

    impl Backend for Bounce {
        type Input = u64;
        type Output = Option<u64>;

        fn query(&mut self, n: u64, ctx: &mut sophon::Context<Option<u64>>) -> Result<(), BoxError> {
            if n.is_multiple_of(N) && n > 0 {
                Ok(ctx.send_to("done", None)?)
            } else {
                Ok(ctx.send_to("pong", Some(n + 1))?)
            }
        }
    }

    /// Sends what it gets back.
    struct Back;

    impl Backend for Back {
        type Input = Option<u64>;
        type Output = u64;

        fn query(&mut self, n: Option<u64>, ctx: &mut sophon::Context<u64>) -> Result<(), BoxError> {
            Ok(ctx.send(n.unwrap_or(0))?)
        }
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_pool(bencher: Bencher<'_, '_>) {
        let mut b = pooled();
        let ping = b.entity("ping", Bounce);
        let pong = b.entity("pong", Back);
        b.query_edge(&ping, &pong);
        b.loop_edge(&pong, &ping);
        let done = b.output(&ping, "done");
        let system = b.spawn().unwrap();
        let handle = system.handle(&ping);
        let mut start = 0;
        bencher.counter(ItemsCount::new(N)).bench_local(|| {
            handle.query(start + 1).unwrap();
            done.recv().unwrap();
            start += N;
        });
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }
}

/// Spawning 1,000 agents, one message to each and its answer, then stopping them.
mod spawn {
    use super::*;

    const AGENTS: u64 = 1_000;

    /// Answers one number, then stops.
    struct Once(Sender<u64>);

    impl Actor for Once {
        type Context = actix::Context<Self>;
    }

    impl Handler<Num> for Once {
        type Result = ();

        fn handle(&mut self, n: Num, ctx: &mut Self::Context) {
            self.0.send(n.0).unwrap();
            ctx.stop();
        }
    }

    /// Spawns `n` actors inside the actix system, sends each one number and waits for the
    /// answers (on the benchmark's thread).
    #[derive(Message)]
    #[rtype(result = "()")]
    struct SpawnMany(u64, Sender<u64>);

    struct Spawner;

    impl Actor for Spawner {
        type Context = actix::Context<Self>;
    }

    impl Handler<SpawnMany> for Spawner {
        type Result = ();

        fn handle(&mut self, many: SpawnMany, _: &mut Self::Context) {
            for i in 0..many.0 {
                Once(many.1.clone()).start().do_send(Num(i));
            }
        }
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn actix(bencher: Bencher<'_, '_>) {
        let (spawner, system) = actix_system(|| Spawner.start());
        bencher.bench_local(|| {
            let (tx, answers) = unbounded();
            spawner.do_send(SpawnMany(AGENTS, tx));
            // Every actor answers, then stops; the channel closes once the last one is dropped.
            assert_eq!(answers.iter().count() as u64, AGENTS);
        });
        system.stop();
    }

    /// Like actix's: the system (and its workers) made once; each sample adds 1,000 entities to
    /// it, sends each one number and removes them all.
    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_pool_running(bencher: Bencher<'_, '_>) {
        let mut system = pooled().spawn().unwrap();
        let names: Vec<String> = (0..AGENTS).map(|i| format!("a{i}")).collect();
        bencher.bench_local(|| {
            let (tx, answers) = unbounded();
            let nodes = system
                .extend(|b| {
                    let nodes: Vec<_> = names.iter().map(|name| b.entity(name, Pass)).collect();
                    for node in &nodes {
                        b.output_to(node, "answers", tx.clone());
                    }
                    nodes
                })
                .unwrap();
            drop(tx);
            for (i, node) in nodes.iter().enumerate() {
                system.handle(node).query(i as u64).unwrap();
            }
            assert_eq!(answers.iter().take(AGENTS as usize).count() as u64, AGENTS);
            system.remove_all(names.iter().map(String::as_str), sophon::DEFAULT_SHUTDOWN_DEADLINE)
        });
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }

    /// A new system for each sample: built, its workers started, 1,000 entities asked once, and
    /// shut down in graph order.
    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_pool(bencher: Bencher<'_, '_>) {
        bencher.bench_local(|| {
            let mut b = pooled();
            let (tx, answers) = unbounded();
            let nodes: Vec<_> = (0..AGENTS)
                .map(|i| {
                    let node = b.entity(&format!("a{i}"), Pass);
                    b.output_to(&node, "answers", tx.clone());
                    node
                })
                .collect();
            drop(tx);
            let system = b.spawn().unwrap();
            for (i, node) in nodes.iter().enumerate() {
                system.handle(node).query(i as u64).unwrap();
            }
            assert_eq!(answers.iter().take(AGENTS as usize).count() as u64, AGENTS);
            system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE)
        });
    }
}
