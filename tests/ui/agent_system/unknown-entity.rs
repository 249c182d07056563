// An edge names an entity that is not declared (a typo).
use sophon::{agent_system, backend};

#[derive(Clone)]
struct Pass;

#[backend]
impl Pass {
    fn query(&mut self, n: u32) -> u32 {
        n
    }
}

fn main() {
    let _ = agent_system! {
        shouter = Pass;
        printer = Pass;
        shoter -> printer;
    };
}
