// `query` is an associated function without `self`.
use sophon::backend;

struct Echo;

#[backend]
impl Echo {
    fn query(text: String) -> String {
        text
    }
}

fn main() {}
