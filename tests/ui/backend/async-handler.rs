// `query` is `async`, but agents run on threads.
use sophon::backend;

struct Fetch;

#[backend]
impl Fetch {
    async fn query(&mut self, url: String) -> String {
        url
    }
}

fn main() {}
