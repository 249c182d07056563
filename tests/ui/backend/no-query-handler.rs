// A backend has no `query` handler.
use sophon::backend;

struct Silent;

#[backend]
impl Silent {
    fn read(&mut self, _note: String) {}
}

fn main() {}
