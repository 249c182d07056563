// `query` is generic over its input.
use sophon::backend;

struct Anything;

#[backend]
impl Anything {
    fn query<T: Send + 'static>(&mut self, value: T) -> T {
        value
    }
}

fn main() {}
