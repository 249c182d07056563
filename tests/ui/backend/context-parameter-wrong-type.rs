// The context parameter of `query` is not `&mut Context<Out>`.
use sophon::{Context, backend};

struct Echo;

#[backend]
impl Echo {
    fn query(&mut self, text: String, ctx: &Context<String>) {
        let _ = (text, ctx);
    }
}

fn main() {}
