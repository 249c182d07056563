// `query` returns a type that is not `Clone`, but a broadcast clones it.
use sophon::backend;

struct Token(u32);

struct Mint;

#[backend]
impl Mint {
    fn query(&mut self, n: u32) -> Token {
        Token(n)
    }
}

fn main() {}
