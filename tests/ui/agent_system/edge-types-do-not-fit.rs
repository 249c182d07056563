// An edge sends a `String` to an entity that takes a `Count`, which cannot be made from one.
use sophon::{agent_system, backend};

struct Words;

#[backend]
impl Words {
    fn query(&mut self, n: u32) -> String {
        n.to_string()
    }
}

struct Count(u32);

struct Numbers;

#[backend]
impl Numbers {
    fn query(&mut self, n: Count) -> u32 {
        n.0
    }
}

fn main() {
    let _ = agent_system! {
        words = Words;
        numbers = Numbers;
        words -> numbers;
    };
}
