// `query` takes a third parameter besides the input and the context.
use sophon::{Context, backend};

struct Adder;

#[backend]
impl Adder {
    fn query(&mut self, a: u32, b: u32, ctx: &mut Context<u32>) {
        let _ = ctx.send(a + b);
    }
}

fn main() {}
