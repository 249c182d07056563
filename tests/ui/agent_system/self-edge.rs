// An entity sends its output to itself without declaring the loop.
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
        echo = Pass;
        echo -> echo;
    };
}
