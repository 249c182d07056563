// A type with no `=` after it.
use sophon::{agent_system, backend};

#[derive(Default)]
struct Pass;

#[backend]
impl Pass {
    fn query(&mut self, n: u32) -> u32 {
        n
    }
}

fn main() {
    let _ = agent_system! {
        a: Pass Pass::default();
    };
}
