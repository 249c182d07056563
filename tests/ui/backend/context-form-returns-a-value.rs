// `query` takes the context and also returns a value to send.
use sophon::{Context, backend};

struct Echo;

#[backend]
impl Echo {
    fn query(&mut self, text: String, ctx: &mut Context<String>) -> String {
        let _ = ctx;
        text
    }
}

fn main() {}
