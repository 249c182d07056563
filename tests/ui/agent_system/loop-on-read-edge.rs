// `loop` is put on a read edge, which can never bounce.
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
        a = Pass;
        b = Pass;
        a -> b;
        loop b ~> a;
    };
}
