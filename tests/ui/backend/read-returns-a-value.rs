// `read` returns a value, but a read is never answered.
use sophon::backend;

struct Notes;

#[backend]
impl Notes {
    fn query(&mut self, question: String) -> String {
        question
    }

    fn read(&mut self, note: String) -> String {
        note
    }
}

fn main() {}
