// `#[backend]` is put on an impl of a trait.
use sophon::backend;

struct Echo;

#[backend]
impl Default for Echo {
    fn default() -> Self {
        Echo
    }
}

fn main() {}
