// The query handler's name is misspelled, so no handler is found.
use sophon::backend;

struct Echo;

#[backend]
impl Echo {
    fn querry(&mut self, text: String) -> String {
        text
    }
}

fn main() {}
