// A loop whose entities all have bounded queues could fill them all and wait forever.
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
        #[bounded(4)]
        a = Pass;
        #[bounded(4)]
        b = Pass;
        a -> b;
        loop b -> a;
    };
}
