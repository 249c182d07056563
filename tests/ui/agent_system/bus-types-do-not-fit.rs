// An edge to a remote entity type-checks as one to a local entity: here it sends a `String`
// to an entity that takes a `u64`; and an exported entity's input must cross the bus.
use sophon::{agent_system, backend};

struct Words;

#[backend]
impl Words {
    fn query(&mut self, n: u64) -> String {
        n.to_string()
    }
}

struct Opaque;

struct Keeper;

#[backend]
impl Keeper {
    fn query(&mut self, _: Opaque) -> u64 {
        0
    }
}

fn main() {
    let bus = sophon::bus::Bus::connect("redis://127.0.0.1:1", "ns").unwrap();
    let _ = agent_system! {
        #![bus(&bus)]
        words = Words;
        remote counter: u64 => u64;
        words -> counter;
        #[export]
        keeper = Keeper;
    };
}
