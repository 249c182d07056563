// Importing and exporting need the system's bus; a remote entity takes no entity options (its
// backend is the other process's), `#[export]` takes no arguments and exports one entity, not
// a group.
use sophon::{agent_system, backend};

struct Model;

#[backend]
impl Model {
    fn query(&mut self, s: String) -> String {
        s
    }
}

fn main() {
    let _ = agent_system! {
        remote model: String => String;
        #[export]
        local = Model;
    };
    let bus = sophon::bus::Bus::connect("redis://127.0.0.1:1", "ns").unwrap();
    let _ = agent_system! {
        #![bus(&bus)]
        #[bounded(4)]
        remote model: String => String;
        #[export(now)]
        local = Model;
        #[export]
        workers[2] = |_| Model;
    };
    let _ = agent_system! {
        #![bus]
        #![bus(&bus)]
        #![bsu(&bus)]
        a = Model;
    };
}
