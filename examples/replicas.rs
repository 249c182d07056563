//! One entity served by three replicas whose latencies change while it runs: sophon routes each
//! query to the replica its sender measures cheapest, culls one that turns slow and lets it back
//! in once it recovers.
//!
//! ```text
//! #[replicas] model = [replica 0, replica 1, replica 2];   model -> output(answers)
//! ```
//!
//! Queries arrive at 400 a second. Replica 0 takes 2 ms, replica 1 takes 4 ms, replica 2 takes 1
//! ms; after 3 s replica 2 slows to 50 ms, and after 6 s it is fast again. Every second the
//! example prints each replica's share of the queries of that second and the 99th percentile of
//! their latency (from send to answer), and which replica is culled. It ends by itself after 9 s
//! with the entity's ranking of its replicas, which a later run could start from
//! (`SystemBuilder::rankings`).
//!
//! Run with `cargo run --example replicas`; `--graph` prints the system's graph (Mermaid) and
//! exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sophon::{BoxBackend, BoxError, Context, agent_system, backend};

/// A replica that takes the time `delay_us` says, and answers with its number and the query's
/// send time.
struct Replica {
    id: usize,
    delay_us: Arc<AtomicU64>,
}

#[backend(blocking)]
impl Replica {
    fn query(&mut self, sent: Instant, ctx: &mut Context<(usize, Instant)>) -> Result<(), BoxError> {
        std::thread::sleep(Duration::from_micros(self.delay_us.load(Ordering::Relaxed)));
        Ok(ctx.send((self.id, sent))?)
    }
}

agent_system! {
    /// Three replicas of one model, answering to the program.
    pub struct Served(replicas: Vec<BoxBackend<Instant, (usize, Instant)>>);
    #[replicas]
    model: BoxBackend<Instant, (usize, Instant)> = replicas;
    model -> output(answers: (usize, Instant));
}

const SECONDS: u64 = 9;
const RATE: u32 = 400;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--graph") {
        print!("{}", Served::MERMAID);
        return Ok(());
    }
    let delays: Vec<Arc<AtomicU64>> =
        [2_000, 4_000, 1_000].into_iter().map(|us| Arc::new(AtomicU64::new(us))).collect();
    let replicas = delays
        .iter()
        .enumerate()
        .map(|(id, delay_us)| Box::new(Replica { id, delay_us: delay_us.clone() }) as BoxBackend<_, _>)
        .collect();
    let system = Served::spawn(replicas)?;

    // Queries at a fixed rate, whatever the answers do.
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (model, done) = (system.model.clone(), done.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0u32.. {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let due = start + Duration::from_secs(1) / RATE * i;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                model.query(Instant::now()).expect("the model takes queries while the example runs");
            }
        })
    };

    let start = Instant::now();
    println!("replica 0 takes 2 ms, replica 1 takes 4 ms, replica 2 takes 1 ms; {RATE} queries a second");
    for second in 1..=SECONDS {
        match second {
            4 => {
                delays[2].store(50_000, Ordering::Relaxed);
                println!("-- replica 2 slows down to 50 ms --");
            }
            7 => {
                delays[2].store(1_000, Ordering::Relaxed);
                println!("-- replica 2 is fast again --");
            }
            _ => {}
        }
        // This second's answers, by replica.
        let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); 3];
        let until = start + Duration::from_secs(second);
        while let Ok((id, sent)) = system.answers.recv_deadline(until) {
            latencies[id].push(sent.elapsed());
        }
        let total: usize = latencies.iter().map(Vec::len).sum::<usize>().max(1);
        let culled: Vec<bool> = {
            let rankings = system.rankings();
            (0..3)
                .map(|i| {
                    let name = format!("model/{i}");
                    rankings.iter().flat_map(|r| &r.replicas).any(|r| r.name == name && r.culled)
                })
                .collect()
        };
        let columns: Vec<String> = latencies
            .iter_mut()
            .enumerate()
            .map(|(i, l)| {
                l.sort();
                let p99 = l.get((l.len() * 99).div_ceil(100).saturating_sub(1)).copied();
                let p99 = p99.map_or("-".to_string(), |p| format!("{:.1?}", p));
                let culled = if culled[i] { " culled" } else { "" };
                format!("replica {i}: {:>3}% p99 {p99:>7}{culled:7}", l.len() * 100 / total)
            })
            .collect();
        println!("{second}s  {}", columns.join(" | ").trim_end());
    }
    done.store(true, Ordering::Relaxed);
    sender.join().expect("the sender does not panic");
    let report = system.shutdown(Duration::from_secs(10));
    for ranking in &report.rankings {
        let order: Vec<String> = ranking
            .replicas
            .iter()
            .map(|r| format!("{} ({})", r.name, r.estimate.map_or("unmeasured".into(), |e| format!("{e:.1?}"))))
            .collect();
        println!("{} ranked by its {}: {}", ranking.entity, ranking.relationship, order.join(", "));
    }
    println!("rerouted: {}, undelivered: {}", report.rerouted(), report.undelivered());
    Ok(())
}
