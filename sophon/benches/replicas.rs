//! p99 latency of queries to four replicas, one of them slow, routed by sophon (peak-EWMA cost,
//! power of two choices), against the same four with plain round-robin and against four fast
//! ones, in one run. Open loop: queries arrive at a fixed rate, about 30% of what the replicas
//! can serve, whatever the answers do; latency is from a query's send to its answer.
//!
//! `cargo bench -p sophon --bench replicas` prints a table: each configuration's p50, p99 and
//! max over three runs of 3,000 queries, and the median of the p99s.

use std::time::{Duration, Instant};

use sophon::crossbeam_channel::{self, Receiver};
use sophon::{Backend, BoxBackend, BoxError, Context, Handle, Runtime, SystemBuilder};

/// Sleeps for its service time, then answers with the query's send time; or, if it is down,
/// fails at once.
struct Service(Duration, bool);

impl Backend for Service {
    type Input = Instant;
    type Output = Instant;

    fn query(&mut self, sent: Instant, ctx: &mut Context<Instant>) -> Result<(), BoxError> {
        if self.1 {
            return Err("down".into());
        }
        std::thread::sleep(self.0);
        Ok(ctx.send(sent)?)
    }

    fn blocking(&self) -> bool {
        true
    }
}

const QUERIES: usize = 3_000;
const RUNS: usize = 3;

#[derive(Clone, Copy)]
enum Routing {
    /// One replicated entity: sophon routes.
    Sophon,
    /// Four entities, queried in turn.
    RoundRobin,
}

/// Sends `QUERIES` queries at one per `interval` through `send`, and measures each one's time
/// to its answer on `answers`; returns the latencies, sorted.
fn open_loop(mut send: impl FnMut(usize, Instant), answers: &Receiver<Instant>, interval: Duration) -> Vec<Duration> {
    let collector = {
        let answers = answers.clone();
        std::thread::spawn(move || {
            // A query that failed answers nothing: the collector stops once answers stop coming.
            let mut latencies: Vec<Duration> = std::iter::from_fn(|| answers.recv_timeout(Duration::from_secs(1)).ok())
                .take(QUERIES)
                .map(|sent| sent.elapsed())
                .collect();
            latencies.sort();
            latencies
        })
    };
    let start = Instant::now();
    for i in 0..QUERIES {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        send(i, Instant::now());
    }
    collector.join().unwrap()
}

fn run(services_ms: &[u64], routing: Routing, interval: Duration) -> Vec<Duration> {
    let mut b = SystemBuilder::new();
    b.runtime(Runtime::Threads);
    let backends = || {
        services_ms
            .iter()
            .map(|&ms| Box::new(Service(Duration::from_millis(ms), ms == 0)) as BoxBackend<Instant, Instant>)
    };
    let (tx, answers) = crossbeam_channel::unbounded();
    match routing {
        Routing::Sophon => {
            let model = b.replicas("model", backends());
            b.output_to(&model, "answers", tx);
            let system = b.spawn().unwrap();
            let handle = system.handle(&model);
            let latencies = open_loop(|_, sent| handle.query(sent).unwrap(), &answers, interval);
            system.shutdown(Duration::from_secs(10));
            latencies
        }
        Routing::RoundRobin => {
            let nodes: Vec<_> =
                backends().enumerate().map(|(i, backend)| b.entity(&format!("model{i}"), backend)).collect();
            for node in &nodes {
                b.output_to(node, "answers", tx.clone());
            }
            let system = b.spawn().unwrap();
            let handles: Vec<Handle<Instant, Instant>> = nodes.iter().map(|n| system.handle(n)).collect();
            let latencies = open_loop(|i, sent| handles[i % handles.len()].query(sent).unwrap(), &answers, interval);
            system.shutdown(Duration::from_secs(10));
            latencies
        }
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: a quick pass only.
    let quick = !std::env::args().any(|a| a == "--bench");
    // Capacity of 1, 1, 1 and 10 ms replicas: 3,100 queries a second; 30% of it.
    let interval = Duration::from_secs(1) / 930;
    let configs: [(&str, &[u64], Routing); 4] = [
        ("four fast (1 ms), sophon", &[1, 1, 1, 1], Routing::Sophon),
        ("one slow (1, 1, 1, 10 ms), sophon", &[1, 1, 1, 10], Routing::Sophon),
        ("one slow, round-robin", &[1, 1, 1, 10], Routing::RoundRobin),
        ("four fast, round-robin", &[1, 1, 1, 1], Routing::RoundRobin),
    ];
    if quick {
        for (_, services, routing) in configs {
            let b = run(services, routing, interval);
            assert_eq!(b.len(), QUERIES);
        }
        return;
    }
    // One replica that fails every query at once (written as 0 ms): the share of queries that
    // fail, with sophon's routing and with round-robin.
    let failing: &[u64] = &[1, 1, 1, 0];
    let failed = |routing| 1.0 - run(failing, routing, interval).len() as f64 / QUERIES as f64;
    let (sophon_failed, rr_failed) = (failed(Routing::Sophon), failed(Routing::RoundRobin));
    println!(
        "one replica failing every query: {:.2}% failed with sophon (target under 1%), {:.1}% with round-robin",
        sophon_failed * 100.0,
        rr_failed * 100.0
    );
    println!();
    println!("{:<36} {:<66} {:>10}", "replicas", "p50 / p99 / max, each run", "p99 median");
    let mut medians = Vec::new();
    // Runs alternate between configurations, so that a slow moment of the machine hits each.
    let mut results: Vec<Vec<Vec<Duration>>> = vec![Vec::new(); configs.len()];
    for _ in 0..RUNS {
        for (c, (_, services, routing)) in configs.iter().enumerate() {
            results[c].push(run(services, *routing, interval));
        }
    }
    for (c, (name, ..)) in configs.iter().enumerate() {
        let mut p99s: Vec<Duration> = results[c].iter().map(|l| quantile(l, 0.99)).collect();
        let runs: Vec<String> = results[c]
            .iter()
            .map(|l| format!("{:.2?}/{:.2?}/{:.2?}", quantile(l, 0.5), quantile(l, 0.99), l[l.len() - 1]))
            .collect();
        p99s.sort();
        let median = p99s[p99s.len() / 2];
        medians.push(median);
        println!("{name:<36} {:<66} {median:>10.2?}", runs.join("  "));
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!();
    println!("one slow, sophon, against four fast: {:.2}x (target at most 1.3x)", ratio(medians[1], medians[0]));
    println!("round-robin against sophon, one slow: {:.1}x (target at least 3x)", ratio(medians[2], medians[1]));
}
