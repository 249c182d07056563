// A parameter of a named system's `spawn` is given without a name.
use sophon::{agent_system, backend};

struct Add(i64);

#[backend]
impl Add {
    fn query(&mut self, n: i64) -> i64 {
        n + self.0
    }
}

agent_system! {
    pub struct Adder(i64);
    first: Add = Add(1);
}

fn main() {}
