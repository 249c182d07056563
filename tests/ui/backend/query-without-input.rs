// `query` takes no input.
use sophon::backend;

struct Clock;

#[backend]
impl Clock {
    fn query(&mut self) -> u64 {
        0
    }
}

fn main() {}
