// `#[backend]` is put on the struct instead of its impl block.
use sophon::backend;

#[backend]
struct Echo {
    said: Vec<String>,
}

fn main() {}
