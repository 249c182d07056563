// The system's runtime and the `thread` option, written wrong: a pool of no workers, a
// misspelled runtime, a runtime given twice, and `thread` given an argument.
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
        #![pool(0)]
        #![pooll]
        #![threads]
        #![pool]
        #[thread(2)]
        worker = Pass;
    };
}
