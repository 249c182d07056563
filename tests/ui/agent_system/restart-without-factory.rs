// A restarted entity is declared with a factory that builds its backend, not with a backend.
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
        #[restart(max = 3, within = 10s)]
        a = Pass;
    };
}
