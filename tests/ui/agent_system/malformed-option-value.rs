// `bounded` is given something other than a positive integer.
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
        #[bounded("sixteen")]
        worker = Pass;
        #[bounded(0)]
        other = Pass;
    };
}
