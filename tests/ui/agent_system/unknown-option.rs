// An entity option is misspelled.
use sophon::{agent_system, backend};

struct Pass;

#[backend]
impl Pass {
    fn query(&mut self, n: u32) -> u32 {
        n
    }
}

fn main() {
    let _ = agent_system! {
        #[bonded(16)]
        worker = Pass;
    };
}
