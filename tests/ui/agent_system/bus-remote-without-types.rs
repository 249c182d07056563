// A remote entity names its input and output types, as the exporting process has them.
use sophon::agent_system;

fn main() {
    let bus = sophon::bus::Bus::connect("redis://127.0.0.1:1", "ns").unwrap();
    let _ = agent_system! {
        #![bus(&bus)]
        remote model: String;
    };
}
