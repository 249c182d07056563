// `query` returns `impl Trait` rather than a type.
use sophon::backend;

struct Numbers;

#[backend]
impl Numbers {
    fn query(&mut self, n: u32) -> impl Clone {
        n
    }
}

fn main() {}
