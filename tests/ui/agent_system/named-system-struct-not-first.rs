// A named system's struct line comes after an entity.
use sophon::{agent_system, backend};

struct Add(i64);

#[backend]
impl Add {
    fn query(&mut self, n: i64) -> i64 {
        n + self.0
    }
}

agent_system! {
    first: Add = Add(1);
    pub struct Adder;
}

fn main() {}
