//! Systems on a pool of workers: `#![pool(N)]` in a named system, `#![pool]` in an anonymous
//! one, and `#[thread]` for an entity that blocks.

use std::time::Duration;

use sophon::{Runtime, agent_system, backend};

/// Doubles numbers.
pub struct Double;

#[backend]
impl Double {
    fn query(&mut self, n: u64) -> u64 {
        n * 2
    }
}

/// Waits a little for every number, as a backend that blocks does.
pub struct Slow;

#[backend]
impl Slow {
    fn query(&mut self, n: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(1));
        n
    }
}

agent_system! {
    #![pool(workers)]
    pub struct Doubler(workers: usize);
    double: Double = Double;
    #[thread]
    slow: Slow = Slow;
    double -> slow;
    slow -> output(out: u64);
}

fn doubler() -> Result<Doubler, sophon::BuildError> {
    Doubler::spawn(2)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let system = doubler()?;
    assert_eq!(system.runtime(), Runtime::Pool { workers: 2 });
    for n in 0..10 {
        system.double.query(n)?;
    }
    assert_eq!(system.out.iter().take(10).collect::<Vec<_>>(), (0..10).map(|n| n * 2).collect::<Vec<_>>());
    assert!(system.shutdown(Duration::from_secs(5)).is_clean());

    let anonymous = agent_system! {
        #![pool]
        double = Double;
        double -> output(out);
    }?;
    assert!(matches!(anonymous.runtime(), Runtime::Pool { .. }));
    anonymous.double.query(21)?;
    assert_eq!(anonymous.out.recv()?, 42);
    assert!(anonymous.shutdown(Duration::from_secs(5)).is_clean());
    Ok(())
}
