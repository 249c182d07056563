// A graph with several mistakes: all are reported in one build.
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
        #[bouned(4)]
        a = Pass;
        b = Pass;
        b = Pass;
        a -> c;
        a -> b;
        b -> a;
    };
}
