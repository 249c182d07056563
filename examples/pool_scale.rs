//! A million agents on the pool runtime: how long building, spawning, asking each once and
//! shutting down take, and how much memory the runtime holds per idle agent.
//!
//! `cargo run --release --example pool_scale -- [AGENTS]` (default 1,000,000). The memory figure
//! is the growth of the process's resident set while the agents exist, divided by their number:
//! the runtime's own state (entity, queues, agent, task), since the backend here holds nothing.

use std::time::{Duration, Instant};

use sophon::{Backend, BoxError, Context, Runtime, SystemBuilder};

/// Sends every query on unchanged, holding nothing.
struct Pass;

impl Backend for Pass {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        Ok(ctx.send(n)?)
    }
}

/// The resident set size in bytes, from `/proc/self/statm` (Linux); 0 elsewhere.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let agents: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let before = resident();
    let start = Instant::now();
    let (tx, answers) = sophon::crossbeam_channel::unbounded();
    let mut builder = SystemBuilder::new();
    builder.runtime(Runtime::pool());
    let nodes: Vec<_> = (0..agents)
        .map(|i| {
            let node = builder.entity(&format!("a{i}"), Pass);
            builder.output_to(&node, "answers", tx.clone());
            node
        })
        .collect();
    let built = start.elapsed();
    let system = builder.spawn()?;
    let spawned = start.elapsed();
    let idle = resident();
    for node in &nodes {
        system.handle(node).query(1)?;
    }
    let total: u64 = answers.iter().take(agents).sum();
    assert_eq!(total, agents as u64);
    let used = start.elapsed();
    let after_use = resident();
    let report = system.shutdown(Duration::from_secs(60));
    let ended = start.elapsed();
    assert!(report.is_clean(), "{report}");
    println!("agents: {agents}, on {:?}", Runtime::pool());
    println!("built in {:?}, spawned at {:?}, all answered at {:?}, shut down at {:?}", built, spawned, used, ended);
    println!(
        "resident per agent: {} bytes idle before any message, {} bytes after one message each",
        idle.saturating_sub(before) / agents as u64,
        after_use.saturating_sub(before) / agents as u64
    );
    Ok(())
}
