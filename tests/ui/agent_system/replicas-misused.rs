// `#[replicas]` takes no arguments, is not a group, and is not restarted.
use sophon::{agent_system, backend};

#[derive(Clone)]
struct Model;

#[backend]
impl Model {
    fn query(&mut self, s: String) -> String {
        s
    }
}

fn main() {
    let _ = agent_system! {
        #[replicas(3)]
        a = [Model, Model];
        #[replicas]
        b[2] = |_| Model;
        #[replicas]
        #[restart(max = 3, within = 10s)]
        c = [Model, Model];
    };
}
