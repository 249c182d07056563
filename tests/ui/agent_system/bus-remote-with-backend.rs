// A remote entity's backend is given by the process that exports it, not here.
use sophon::{agent_system, backend};

struct Model;

#[backend]
impl Model {
    fn query(&mut self, s: String) -> String {
        s
    }
}

fn main() {
    let bus = sophon::bus::Bus::connect("redis://127.0.0.1:1", "ns").unwrap();
    let _ = agent_system! {
        #![bus(&bus)]
        remote model: String => String = Model;
    };
}
