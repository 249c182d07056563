// A group needs its size between the brackets.
use sophon::{agent_system, backend};

struct Worker(usize);

#[backend]
impl Worker {
    fn query(&mut self, n: u32) -> u32 {
        n + self.0 as u32
    }
}

fn main() {
    let _ = agent_system! {
        workers[] = |i| Worker(i);
    };
}
