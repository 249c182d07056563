// An entity's edges attach to one of its ports and leave the other unwired.
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

fn main() {
    let _ = agent_system! {
        ping = Ping;
        pong = Pong;
        ping.pong -> pong;
        loop pong -> ping;
    };
}
