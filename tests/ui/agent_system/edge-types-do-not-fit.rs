// An edge sends a `String` to an entity that takes a `u32`.
use sophon::{agent_system, backend};

struct Words;

#[backend]
impl Words {
    fn query(&mut self, n: u32) -> String {
        n.to_string()
    }
}

struct Numbers;

#[backend]
impl Numbers {
    fn query(&mut self, n: u32) -> u32 {
        n
    }
}

fn main() {
    let _ = agent_system! {
        words = Words;
        numbers = Numbers;
        words -> numbers;
    };
}
