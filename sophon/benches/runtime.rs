//! The same workloads built with sophon and with raw crossbeam-channel threads, in one run.
//!
//! Run with `cargo bench -p sophon --bench runtime`. Each module is one workload; `crossbeam` is
//! the baseline, `sophon` the same shape built with `SystemBuilder` (a thread per agent), and
//! `sophon_pool` the same again on the pool runtime (two workers, one per core here). Compare
//! medians.

use std::thread;

use crossbeam_channel::{Sender, bounded, unbounded};
use divan::Bencher;
use divan::counter::ItemsCount;
use sophon::{Backend, BoxError, Context, EntityOptions, Runtime, SystemBuilder};

fn main() {
    divan::main();
}

/// A builder for a system on the pool runtime, a worker per core.
fn pooled() -> SystemBuilder {
    let mut b = SystemBuilder::new();
    b.runtime(Runtime::pool());
    b
}

/// A builder for a system of a thread per agent, whatever `SOPHON_RUNTIME` says.
fn threaded() -> SystemBuilder {
    let mut b = SystemBuilder::new();
    b.runtime(Runtime::Threads);
    b
}

/// Sends every query on unchanged.
struct Pass;

impl Backend for Pass {
    type Input = u64;
    type Output = u64;

    #[inline]
    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        Ok(ctx.send(n)?)
    }
}

/// One message to an echo agent and back.
mod ping_pong {
    use super::*;

    #[divan::bench]
    fn crossbeam(bencher: Bencher<'_, '_>) {
        let (to_tx, to_rx) = unbounded::<u64>();
        let (back_tx, back_rx) = unbounded::<u64>();
        let echo = thread::spawn(move || {
            for n in to_rx {
                back_tx.send(n).unwrap();
            }
        });
        bencher.bench_local(|| {
            to_tx.send(1).unwrap();
            back_rx.recv().unwrap()
        });
        drop(to_tx);
        echo.join().unwrap();
    }

    #[divan::bench]
    fn sophon(bencher: Bencher<'_, '_>) {
        let mut b = threaded();
        let echo = b.entity("echo", Pass);
        let back = b.output(&echo, "back");
        let system = b.spawn().unwrap();
        let handle = system.handle(&echo);
        bencher.bench_local(|| {
            handle.query(1).unwrap();
            back.recv().unwrap()
        });
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }
}

/// Two agents bouncing a counter 100,000 times: a round trip inside the system, with no thread
/// outside it involved. On the pool both agents share one worker, as actix's actors share an
/// arbiter.
mod ping_pong_agents {
    use super::*;

    const N: u64 = 100_000;

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn crossbeam(bencher: Bencher<'_, '_>) {
        let (ping_tx, ping_rx) = unbounded::<u64>();
        let (pong_tx, pong_rx) = unbounded::<u64>();
        let (done_tx, done_rx) = unbounded::<()>();
        let pinger = thread::spawn(move || {
            for n in ping_rx {
                if n == u64::MAX {
                    // Ends the ponger too, which holds a sender back to this thread.
                    break;
                }
                if n.is_multiple_of(N) && n > 0 {
                    done_tx.send(()).unwrap();
                } else {
                    pong_tx.send(n + 1).unwrap();
                }
            }
        });
        let echo_back = ping_tx.clone();
        let ponger = thread::spawn(move || {
            for n in pong_rx {
                echo_back.send(n).unwrap();
            }
        });
        let mut start = 0;
        bencher.counter(ItemsCount::new(N)).bench_local(|| {
            ping_tx.send(start + 1).unwrap();
            done_rx.recv().unwrap();
            start += N;
        });
        ping_tx.send(u64::MAX).unwrap();
        pinger.join().unwrap();
        ponger.join().unwrap();
    }

    /// Sends `n + 1` on until `n` is a multiple of `N`, then reports.
    struct Ping;

    #[derive(Clone, Debug)]
    enum Ball {
        Bounce(u64),
        Done,
    }

    impl From<Ball> for u64 {
        fn from(ball: Ball) -> u64 {
            match ball {
                Ball::Bounce(n) => n,
                Ball::Done => 0,
            }
        }
    }

    impl Backend for Ping {
        type Input = u64;
        type Output = Ball;

        fn query(&mut self, n: u64, ctx: &mut Context<Ball>) -> Result<(), BoxError> {
            if n.is_multiple_of(N) && n > 0 {
                Ok(ctx.send_to("done", Ball::Done)?)
            } else {
                Ok(ctx.send_to("pong", Ball::Bounce(n + 1))?)
            }
        }
    }

    fn run(mut b: SystemBuilder, bencher: Bencher<'_, '_>) {
        let ping = b.entity("ping", Ping);
        let pong = b.entity("pong", Pass);
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

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon(bencher: Bencher<'_, '_>) {
        run(threaded(), bencher);
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_pool(bencher: Bencher<'_, '_>) {
        run(pooled(), bencher);
    }
}

/// A request and its reply: the baseline sends each request with a reply channel of its own, as
/// request/response over crossbeam is written by hand. Samples of 1,000 round trips each, so that
/// divan's bookkeeping between samples does not decide whether the agent is asleep.
mod ask {
    use super::*;

    #[divan::bench(sample_count = 100, sample_size = 1000)]
    fn crossbeam(bencher: Bencher<'_, '_>) {
        let (to_tx, to_rx) = unbounded::<(u64, Sender<u64>)>();
        let echo = thread::spawn(move || {
            for (n, reply) in to_rx {
                reply.send(n).unwrap();
            }
        });
        bencher.bench_local(|| {
            let (reply_tx, reply_rx) = bounded(1);
            to_tx.send((1, reply_tx)).unwrap();
            reply_rx.recv().unwrap()
        });
        drop(to_tx);
        echo.join().unwrap();
    }

    /// `Handle::call`: the first answer.
    #[divan::bench(sample_count = 100, sample_size = 1000)]
    fn sophon(bencher: Bencher<'_, '_>) {
        let mut b = threaded();
        let echo = b.entity("echo", Pass);
        let system = b.spawn().unwrap();
        let handle = system.handle(&echo);
        bencher.bench_local(|| handle.call(1).unwrap());
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }

    /// `Handle::ask`, read to its end.
    #[divan::bench(sample_count = 100, sample_size = 1000)]
    fn sophon_whole_reply(bencher: Bencher<'_, '_>) {
        let mut b = threaded();
        let echo = b.entity("echo", Pass);
        let system = b.spawn().unwrap();
        let handle = system.handle(&echo);
        bencher.bench_local(|| {
            let mut reply = handle.ask(1).unwrap();
            let n = reply.recv().unwrap().unwrap();
            assert!(reply.recv().unwrap().is_none());
            n
        });
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }
}

/// 1,000,000 messages through 8 stages.
mod pipeline {
    use super::*;

    const STAGES: usize = 8;
    const N: u64 = 1_000_000;

    /// The baseline, generic over the message so that it can also move 16-byte messages: the
    /// size of sophon's envelope around a `u64` (the body and its Query/Read tag).
    fn baseline<T: Send + 'static>(bencher: Bencher<'_, '_>, make: fn(u64) -> T) {
        let (first_tx, mut rx) = unbounded::<T>();
        let mut threads = Vec::new();
        for _ in 0..STAGES {
            let (tx, next_rx) = unbounded();
            let stage_rx = std::mem::replace(&mut rx, next_rx);
            threads.push(thread::spawn(move || {
                for n in stage_rx {
                    tx.send(n).unwrap();
                }
            }));
        }
        bencher.counter(ItemsCount::new(N)).bench_local(|| {
            for i in 0..N {
                first_tx.send(make(i)).unwrap();
            }
            for _ in 0..N {
                rx.recv().unwrap();
            }
        });
        drop(first_tx);
        threads.into_iter().for_each(|t| t.join().unwrap());
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn crossbeam(bencher: Bencher<'_, '_>) {
        baseline(bencher, |i| i);
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn crossbeam_16b(bencher: Bencher<'_, '_>) {
        baseline(bencher, |i| (i, 0u64));
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon(bencher: Bencher<'_, '_>) {
        run(threaded(), bencher);
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_pool(bencher: Bencher<'_, '_>) {
        run(pooled(), bencher);
    }

    fn run(mut b: SystemBuilder, bencher: Bencher<'_, '_>) {
        let stages: Vec<_> = (0..STAGES).map(|i| b.entity(&format!("s{i}"), Pass)).collect();
        for pair in stages.windows(2) {
            b.query_edge(&pair[0], &pair[1]);
        }
        let (tx, rx) = unbounded();
        b.output_to(&stages[STAGES - 1], "out", tx);
        let system = b.spawn().unwrap();
        let first = system.handle(&stages[0]);
        bencher.counter(ItemsCount::new(N)).bench_local(|| {
            for i in 0..N {
                first.query(i).unwrap();
            }
            for _ in 0..N {
                rx.recv().unwrap();
            }
        });
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }
    /// The same pipeline declared with the macros: `#[backend]` and `agent_system!` expand to
    /// the builder calls above, so this should match `sophon`.
    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_macro(bencher: Bencher<'_, '_>) {
        struct Stage;

        #[sophon::backend]
        impl Stage {
            fn query(&mut self, n: u64) -> u64 {
                n
            }
        }

        let system = sophon::agent_system! {
            s0 = Stage; s1 = Stage; s2 = Stage; s3 = Stage;
            s4 = Stage; s5 = Stage; s6 = Stage; s7 = Stage;
            s0 -> s1; s1 -> s2; s2 -> s3; s3 -> s4; s4 -> s5; s5 -> s6; s6 -> s7;
            s7 -> output(out);
        }
        .unwrap();
        bencher.counter(ItemsCount::new(N)).bench_local(|| {
            for i in 0..N {
                system.s0.query(i).unwrap();
            }
            for _ in 0..N {
                system.out.recv().unwrap();
            }
        });
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }

    /// Queues of at most this many messages, in the bounded variants.
    const BOUND: usize = 1024;

    /// The pipeline with bounded queues: the producer waits whenever the first queue is full, so
    /// a consumer thread drains the end while it sends.
    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn crossbeam_bounded(bencher: Bencher<'_, '_>) {
        let (first_tx, mut rx) = bounded::<u64>(BOUND);
        let mut threads = Vec::new();
        for _ in 0..STAGES {
            let (tx, next_rx) = bounded(BOUND);
            let stage_rx = std::mem::replace(&mut rx, next_rx);
            threads.push(thread::spawn(move || {
                for n in stage_rx {
                    tx.send(n).unwrap();
                }
            }));
        }
        bencher.counter(ItemsCount::new(N)).bench_local(|| {
            thread::scope(|scope| {
                let consumer = scope.spawn(|| {
                    (0..N).for_each(|_| {
                        rx.recv().unwrap();
                    })
                });
                for i in 0..N {
                    first_tx.send(i).unwrap();
                }
                consumer.join().unwrap();
            });
        });
        drop(first_tx);
        threads.into_iter().for_each(|t| t.join().unwrap());
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_bounded(bencher: Bencher<'_, '_>) {
        let mut b = threaded();
        let stages: Vec<_> =
            (0..STAGES).map(|i| b.entity_with(&format!("s{i}"), Pass, EntityOptions::new().bounded(BOUND))).collect();
        for pair in stages.windows(2) {
            b.query_edge(&pair[0], &pair[1]);
        }
        let (tx, rx) = bounded(BOUND);
        b.output_to(&stages[STAGES - 1], "out", tx);
        let system = b.spawn().unwrap();
        let first = system.handle(&stages[0]);
        bencher.counter(ItemsCount::new(N)).bench_local(|| {
            thread::scope(|scope| {
                let consumer = scope.spawn(|| {
                    (0..N).for_each(|_| {
                        rx.recv().unwrap();
                    })
                });
                for i in 0..N {
                    first.query(i).unwrap();
                }
                consumer.join().unwrap();
            });
        });
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }
}

/// One producer broadcasting 100,000 messages to 16 consumers; each consumer reports once it has
/// them all.
mod fan_out {
    use super::*;

    const CONSUMERS: usize = 16;
    const N: u64 = 100_000;

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn crossbeam(bencher: Bencher<'_, '_>) {
        baseline(bencher, |i| i);
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn crossbeam_16b(bencher: Bencher<'_, '_>) {
        baseline(bencher, |i| (i, 0u64));
    }

    /// The baseline, generic over the message (see `pipeline::baseline`).
    fn baseline<T: Clone + Send + 'static>(bencher: Bencher<'_, '_>, make: fn(u64) -> T) {
        let (start_tx, start_rx) = unbounded::<u64>();
        let (done_tx, done_rx) = unbounded::<()>();
        let mut consumers = Vec::new();
        let mut txs = Vec::new();
        for _ in 0..CONSUMERS {
            let (tx, rx) = unbounded::<T>();
            txs.push(tx);
            let done = done_tx.clone();
            consumers.push(thread::spawn(move || {
                let mut seen = 0;
                for _ in rx {
                    seen += 1;
                    if seen == N {
                        seen = 0;
                        done.send(()).unwrap();
                    }
                }
            }));
        }
        let producer = thread::spawn(move || {
            for n in start_rx {
                for i in 0..n {
                    let message = make(i);
                    for tx in &txs {
                        tx.send(message.clone()).unwrap();
                    }
                }
            }
        });
        bencher.counter(ItemsCount::new(N * CONSUMERS as u64)).bench_local(|| {
            start_tx.send(N).unwrap();
            for _ in 0..CONSUMERS {
                done_rx.recv().unwrap();
            }
        });
        drop(start_tx);
        producer.join().unwrap();
        consumers.into_iter().for_each(|t| t.join().unwrap());
    }

    /// Broadcasts `0..n` when asked for `n`.
    struct Producer;

    impl Backend for Producer {
        type Input = u64;
        type Output = u64;

        fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
            for i in 0..n {
                ctx.send(i)?;
            }
            Ok(())
        }
    }

    /// Reports once it has seen `N` messages.
    struct Consumer(u64);

    impl Backend for Consumer {
        type Input = u64;
        type Output = ();

        #[inline]
        fn query(&mut self, _: u64, ctx: &mut Context<()>) -> Result<(), BoxError> {
            self.0 += 1;
            if self.0 == N {
                self.0 = 0;
                ctx.send(())?;
            }
            Ok(())
        }
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon(bencher: Bencher<'_, '_>) {
        run(threaded(), bencher);
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_pool(bencher: Bencher<'_, '_>) {
        run(pooled(), bencher);
    }

    fn run(mut b: SystemBuilder, bencher: Bencher<'_, '_>) {
        let producer = b.entity("producer", Producer);
        let (done_tx, done_rx) = unbounded();
        for i in 0..CONSUMERS {
            let consumer = b.entity(&format!("c{i}"), Consumer(0));
            b.query_edge(&producer, &consumer);
            b.output_to(&consumer, "done", done_tx.clone());
        }
        let system = b.spawn().unwrap();
        let handle = system.handle(&producer);
        bencher.counter(ItemsCount::new(N * CONSUMERS as u64)).bench_local(|| {
            handle.query(N).unwrap();
            for _ in 0..CONSUMERS {
                done_rx.recv().unwrap();
            }
        });
        system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE);
    }
}

/// Spawning 1,000 agents, one message to each and its answer, then stopping and joining them.
mod spawn {
    use super::*;

    const AGENTS: usize = 1_000;

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn crossbeam(bencher: Bencher<'_, '_>) {
        bencher.bench_local(|| {
            let (back_tx, back_rx) = unbounded::<u64>();
            let agents: Vec<(Sender<u64>, thread::JoinHandle<()>)> = (0..AGENTS)
                .map(|i| {
                    let (tx, rx) = unbounded::<u64>();
                    let back = back_tx.clone();
                    let thread = thread::Builder::new()
                        .name(format!("raw:{i}"))
                        .spawn(move || {
                            for n in rx {
                                back.send(n).unwrap();
                            }
                        })
                        .unwrap();
                    (tx, thread)
                })
                .collect();
            for (tx, _) in &agents {
                tx.send(1).unwrap();
            }
            for _ in 0..AGENTS {
                back_rx.recv().unwrap();
            }
            for (tx, thread) in agents {
                drop(tx);
                thread.join().unwrap();
            }
        });
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon(bencher: Bencher<'_, '_>) {
        bencher.bench_local(|| run(threaded(), AGENTS));
    }

    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn sophon_pool(bencher: Bencher<'_, '_>) {
        bencher.bench_local(|| run(pooled(), AGENTS));
    }

    /// A million agents on the pool: spawned, each asked once, and shut down.
    #[divan::bench(sample_count = 3, sample_size = 1)]
    fn sophon_pool_million(bencher: Bencher<'_, '_>) {
        bencher.bench_local(|| run(pooled(), 1_000_000));
    }

    fn run(mut b: SystemBuilder, agents: usize) -> sophon::Report {
        {
            let (back_tx, back_rx) = unbounded::<u64>();
            let nodes: Vec<_> = (0..agents)
                .map(|i| {
                    let node = b.entity(&format!("a{i}"), Pass);
                    b.output_to(&node, "back", back_tx.clone());
                    node
                })
                .collect();
            let system = b.spawn().unwrap();
            for node in &nodes {
                system.handle(node).query(1).unwrap();
            }
            for _ in 0..agents {
                back_rx.recv().unwrap();
            }
            system.shutdown(sophon::DEFAULT_SHUTDOWN_DEADLINE)
        }
    }
}
