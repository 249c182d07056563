//! Edges across processes over Redis Streams (feature `bus`). Each test starts its own
//! `redis-server` on a unix socket in a directory of its own, with append-only persistence, and
//! a second process: this test binary again, running only `bus_child` with the broker's URL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sophon::bus::Bus;
use sophon::{Backend, BoxError, Context, SystemBuilder};

const DEADLINE: Duration = Duration::from_secs(120);
/// The variable that makes `bus_child` the consuming process, with the broker's URL.
const CHILD: &str = "SOPHON_BUS_TEST_CHILD";
const MESSAGES: u64 = 100_000;

/// A `redis-server` of the test's own, stopped and removed when dropped.
struct Redis {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let dir = std::env::temp_dir().join(format!("sophon-bus-{}", sophon::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(&dir)
            .args(["--appendonly", "yes", "--save", ""])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let started = Instant::now();
        while !socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not open its socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Redis { child, dir, socket }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// `redis-cli`'s answer to a command.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").arg("-s").arg(&self.socket).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Takes the numbers 0, 1, 2, ... in order, and says when it has all of them.
struct InOrder {
    next: u64,
    last: u64,
}

impl Backend for InOrder {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        if n != self.next {
            return Err(format!("got {n}, expected {}", self.next).into());
        }
        self.next += 1;
        if self.next == self.last {
            ctx.send(self.next)?;
        }
        Ok(())
    }
}

/// The consuming process of the tests: exports `sink` and runs until it has every message.
#[test]
fn bus_child() {
    let Ok(url) = std::env::var(CHILD) else { return };
    let bus = Bus::connect(&url, "test").unwrap();
    let mut b = SystemBuilder::new();
    let sink = b.entity("sink", InOrder { next: 0, last: MESSAGES });
    b.export(&sink, &bus);
    let done = b.output(&sink, "done");
    let system = b.spawn().unwrap();
    assert_eq!(done.recv_timeout(DEADLINE).expect("every message arrives"), MESSAGES);
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("sink").unwrap().stats.handled, MESSAGES, "{report}");
}

fn spawn_child(redis: &Redis) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "bus_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, redis.url())
        .spawn()
        .unwrap()
}

fn wait(mut child: Child) -> bool {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_pipeline_across_two_processes_delivers_every_message_once_and_in_order() {
    let redis = Redis::start();
    let child = spawn_child(&redis);
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let mut b = SystemBuilder::new();
    let sink = b.import::<u64, u64>(&bus, "sink");
    let system = b.spawn().unwrap();
    let handle = system.handle(&sink);
    for n in 0..MESSAGES {
        handle.query(n).unwrap();
    }
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert!(wait(child), "the consuming process failed");
    assert_eq!(redis.cli(&["XLEN", "test:sink"]).trim(), MESSAGES.to_string());
    // Everything handled was acknowledged: nothing is pending.
    assert_eq!(redis.cli(&["XPENDING", "test:sink", "sink"]).lines().next(), Some("0"));
}

#[test]
fn a_broker_that_cannot_be_reached_is_an_error() {
    let error = Bus::connect("redis+unix:///nonexistent/redis.sock", "test").unwrap_err();
    assert!(error.to_string().contains("broker"), "{error}");
}
