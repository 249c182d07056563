// `restart` is given values of the wrong kind, a key it does not have, and no window at all.
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
        #[restart(max = "five", within = 10)]
        a = || Pass;
        #[restart(max = 3, tries = 2)]
        b = || Pass;
        #[restart(max = 3)]
        c = || Pass;
        #[restart]
        d = || Pass;
    };
}
