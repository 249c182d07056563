// One target of a fan-out edge is not declared.
use sophon::{agent_system, backend};

#[derive(Clone)]
struct Pass;

#[backend]
impl Pass {
    fn query(&mut self, n: u32) -> u32 {
        n
    }
}

fn main() {
    let _ = agent_system! {
        source = Pass;
        left = Pass;
        source -> [left, database];
    };
}
