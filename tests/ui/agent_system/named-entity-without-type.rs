// A named system'\''s entity does not give its backend'\''s type, which types its handle field.
use sophon::{agent_system, backend};

struct Add(i64);

#[backend]
impl Add {
    fn query(&mut self, n: i64) -> i64 {
        n + self.0
    }
}

agent_system! {
    pub struct Adder;
    first: Add = Add(1);
    second = Add(2);
    first -> second;
}

fn main() {
    let adder = Adder::spawn().unwrap();
    adder.first.query(1).unwrap();
}
