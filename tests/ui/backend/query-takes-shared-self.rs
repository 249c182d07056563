// `query` takes `&self` instead of `&mut self`.
use sophon::backend;

struct Echo;

#[backend]
impl Echo {
    fn query(&self, text: String) -> String {
        text
    }
}

fn main() {}
