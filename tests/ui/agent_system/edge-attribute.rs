// An entity option is put on an edge line, and a `cfg` has no predicate.
use sophon::{agent_system, backend};

struct Add(i64);

#[backend]
impl Add {
    fn query(&mut self, n: i64) -> i64 {
        n + self.0
    }
}

fn main() {
    let _ = agent_system! {
        #[cfg]
        first = Add(1);
        second = Add(2);
        #[bounded(4)]
        first -> second;
        #[inline]
        second -> output(out);
    };
}
