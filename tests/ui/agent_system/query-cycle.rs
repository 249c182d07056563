// Three query edges form a cycle that would bounce messages forever.
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
        c = Pass;
        a -> b;
        b -> c;
        c -> a;
    };
}
