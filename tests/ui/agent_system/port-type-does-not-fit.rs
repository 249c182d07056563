// A port's value does not fit the input of the entity its edge goes to.
use sophon::{Ports, agent_system, backend};

#[derive(Clone, Ports)]
enum PingOut {
    Pong(u64),
    Done(u64),
}

struct Ping;

#[backend]
impl Ping {
    fn query(&mut self, n: u64) -> PingOut {
        if n < 10 { PingOut::Pong(n + 1) } else { PingOut::Done(n) }
    }
}

struct Pong;

#[backend]
impl Pong {
    fn query(&mut self, n: u64) -> u64 {
        n + 1
    }
}

struct Shout;

#[backend]
impl Shout {
    fn query(&mut self, s: String) -> String {
        s.to_uppercase()
    }
}

fn main() {
    let _ = agent_system! {
        ping = Ping;
        shout = Shout;
        ping.pong -> shout;
        ping.done -> output(done);
    };
}
