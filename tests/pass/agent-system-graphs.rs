// Graphs with fan-out, read edges, a declared loop, options and inferred entity types.
use std::time::Duration;

use sophon::{Context, agent_system, backend};

#[derive(Default)]
struct Pass;
#[backend]
impl Pass {
    fn query(&mut self, n: u64) -> u64 {
        n
    }
}

#[derive(Default)]
struct Count(u64);
#[backend]
impl Count {
    fn query(&mut self, _: u64) -> u64 {
        self.0
    }

    fn read(&mut self, _: u64) {
        self.0 += 1;
    }
}

struct Until(u64);
#[backend]
impl Until {
    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), sophon::Error> {
        if n >= self.0 {
            ctx.stop_system();
            return Ok(());
        }
        ctx.send(n + 1)
    }
}

/// Wide answers take narrow questions through `From`.
struct Widen;
#[backend]
impl Widen {
    fn query(&mut self, n: u32) -> u32 {
        n
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let counter_start = 0;
    let system = agent_system! {
        source = Pass;
        left: Pass = Default::default();
        #[bounded(8)]
        right = Pass;
        counter = Count(counter_start);
        narrow = Widen;
        source -> [left, right];
        source ~> counter;
        narrow -> source;
        left -> output(answers);
        right -> output(answers);
        counter -> output(counted);
    }?;
    system.narrow.query(4)?;
    system.source.query(5)?;
    let mut answers: Vec<u64> = system.answers.iter().take(4).collect();
    answers.sort();
    assert_eq!(answers, [4, 4, 5, 5]);
    system.counter.query(0)?;
    assert_eq!(system.counted.recv()?, 2);
    assert!(system.shutdown(Duration::from_secs(30)).is_clean());

    let conversation = agent_system! {
        person = Until(6);
        model = Pass;
        person -> model;
        loop model -> person;
    }?;
    conversation.person.query(0)?;
    let report = conversation.join();
    assert_eq!(report.entity("model").unwrap().stats.handled, 6);

    let lonely = agent_system! {
        echo = Pass;
        loop echo -> echo;
    }?;
    drop(lonely);
    Ok(())
}
