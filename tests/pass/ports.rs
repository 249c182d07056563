//! Output ports: a ping-pong whose `done` port leaves the system, a port feeding a read edge,
//! fan-out from a port, a named system with a port output, and a unit port.
use std::time::Duration;

use sophon::{Ports, agent_system, backend};

#[derive(Clone, Debug, PartialEq, Ports)]
enum PingOut {
    /// The ball, back.
    Pong(u64),
    /// The rally is over.
    Done(u64),
    /// A unit port: carries `()`.
    Tick,
}

struct Ping {
    rally: u64,
}

#[backend]
impl Ping {
    fn query(&mut self, n: u64) -> PingOut {
        if n == 0 {
            PingOut::Tick
        } else if n < self.rally {
            PingOut::Pong(n + 1)
        } else {
            PingOut::Done(n)
        }
    }
}

struct Pong;

#[backend]
impl Pong {
    fn query(&mut self, n: u64) -> u64 {
        n + 1
    }
}

#[derive(Default)]
struct Count(u64);

#[backend]
impl Count {
    fn query(&mut self, (): ()) -> u64 {
        self.0
    }

    fn read(&mut self, (): ()) {
        self.0 += 1;
    }
}

agent_system! {
    /// A ping-pong, named.
    pub struct Rally(rally: u64);
    ping: Ping = Ping { rally };
    pong: Pong = Pong;
    ticks: Count = Count::default();
    ping.pong -> pong;
    loop pong -> ping;
    /// How long each rally was.
    ping.done -> output(done: u64);
    ping.tick ~> ticks;
}

fn main() {
    let system = agent_system! {
        ping = Ping { rally: 10 };
        pong = Pong;
        ticks = Count::default();
        ping.pong -> pong;
        loop pong -> ping;
        ping.done -> [output(done), output(also)];
        ping.tick ~> ticks;
    }
    .unwrap();
    system.ping.query(1).unwrap();
    assert_eq!(system.done.recv().unwrap(), 11);
    assert_eq!(system.also.recv().unwrap(), 11);
    system.ping.query(0).unwrap();
    // Asked, the entity answers with the enum itself.
    assert_eq!(system.ping.call(0).unwrap(), PingOut::Tick);
    assert_eq!(system.ping.call(99).unwrap(), PingOut::Done(99));
    let report = system.shutdown(Duration::from_secs(5));
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("ticks").unwrap().stats.received, 1);

    let rally = Rally::spawn(4).unwrap();
    rally.ping.query(1).unwrap();
    let done: u64 = rally.done.recv().unwrap();
    assert_eq!(done, 5);
    rally.ping.query(0).unwrap();
    assert!(rally.shutdown(Duration::from_secs(5)).is_clean());
}
