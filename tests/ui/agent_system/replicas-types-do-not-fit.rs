// The replicas of an entity share its input and output types, and its input is `Clone`: every
// replica takes each read.
use sophon::{agent_system, backend};

#[derive(Clone)]
struct Model;

#[backend]
impl Model {
    fn query(&mut self, s: String) -> String {
        s
    }
}

struct Counter;

#[backend]
impl Counter {
    fn query(&mut self, n: u64) -> u64 {
        n
    }
}

/// A body that cannot be copied.
struct Ticket(u64);

struct Taker;

#[backend]
impl Taker {
    fn query(&mut self, t: Ticket) -> u64 {
        t.0
    }
}

fn main() {
    let _ = agent_system! {
        #[replicas]
        model = [Model, Counter];
    };
    let _ = agent_system! {
        #[replicas]
        taker = [Taker, Taker];
    };
}
