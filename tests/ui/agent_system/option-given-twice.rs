// The same option is given twice to one entity.
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
        #[bounded(16)]
        #[bounded(32)]
        worker = Pass;
    };
}
