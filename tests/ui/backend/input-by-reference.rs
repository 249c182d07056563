// A handler takes its input by reference.
use sophon::backend;

struct Echo;

#[backend]
impl Echo {
    fn query(&mut self, text: &str) -> String {
        text.to_string()
    }
}

fn main() {}
