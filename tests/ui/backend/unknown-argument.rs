// `#[backend]` is given an argument it does not take.
use sophon::backend;

struct Echo;

#[backend(clone)]
impl Echo {
    fn query(&mut self, text: String) -> String {
        text
    }
}

fn main() {}
