// An output is connected with a read arrow.
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
        a ~> output(answers);
    };
}
