// An edge reaches a whole group, not one member by index.
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
        split = Worker(0);
        workers[4] = |i| Worker(i);
        split -> workers[0];
    };
}
