// `nop` takes an input, but a nop carries none.
use sophon::backend;

struct Notes;

#[backend]
impl Notes {
    fn query(&mut self, question: String) -> String {
        question
    }

    fn nop(&mut self, last: String) {
        let _ = last;
    }
}

fn main() {}
