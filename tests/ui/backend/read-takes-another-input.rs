// `read` takes a different input type than `query`.
use sophon::backend;

struct Notes;

#[backend]
impl Notes {
    fn query(&mut self, question: String) -> String {
        question
    }

    fn read(&mut self, note: u32) {
        let _ = note;
    }
}

fn main() {}
