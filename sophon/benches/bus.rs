//! The bus against a plain `redis`-crate loop doing the same work, in the same run, each with a
//! `redis-server` of its own on a unix socket (no persistence) and two processes (the second is
//! this binary again):
//!
//! - throughput of a pipeline across the two: one process sends `MESSAGES` numbers, the other
//!   handles them; from the first send to the last one handled. sophon imports and exports an
//!   entity; the plain loop XADDs pipelined 64 at a time, and XREADGROUPs 64 at a time with an
//!   XACK per batch.
//! - the round trip of an ask across the two, one at a time: sophon's `Handle::ask` of an
//!   imported entity; the plain loop XADDs the request naming its answer stream, the other side
//!   XREADGROUPs it, XADDs the answer and XACKs it in one round trip, and the first XREADs the
//!   answer.
//!
//! `cargo bench -p sophon --features bus --bench bus` prints each run, then the medians and the
//! ratios (plain loop / sophon for throughput, sophon / plain loop for latency).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use sophon::bus::Bus;
use sophon::{Backend, BoxError, Context, SystemBuilder};

const MESSAGES: u64 = 200_000;
const ASKS: usize = 2_000;
const RUNS: usize = 5;
const ROLE: &str = "SOPHON_BUS_BENCH_ROLE";
const URL: &str = "SOPHON_BUS_BENCH_URL";

struct Redis {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let dir = std::env::temp_dir().join(format!("sophon-bus-bench-{}", sophon::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        while !socket.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        Redis { child, dir, socket }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The other process, once it says it is ready.
fn other(role: &str, url: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env(URL, url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the other process did not start");
    (child, out)
}

/// Counts to `MESSAGES`, then says so.
struct Count(u64);

impl Backend for Count {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        self.0 += 1;
        if self.0 == MESSAGES {
            ctx.send(n)?;
        }
        Ok(())
    }
}

struct Echo;

impl Backend for Echo {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        Ok(ctx.send(n)?)
    }
}

/// The second process of each measurement.
fn serve(role: &str, url: &str) {
    match role {
        "sophon-sink" | "sophon-echo" => {
            let bus = Bus::connect(url, "bench").unwrap();
            let mut b = SystemBuilder::new();
            let done = if role == "sophon-sink" {
                let sink = b.entity("sink", Count(0));
                b.export(&sink, &bus);
                Some(b.output(&sink, "done"))
            } else {
                let echo = b.entity("echo", Echo);
                b.export(&echo, &bus);
                None
            };
            let system = b.spawn().unwrap();
            println!("ready");
            match done {
                Some(done) => {
                    done.recv().unwrap();
                }
                None => {
                    // Until the parent closes our input.
                    let _ = std::io::stdin().lock().lines().count();
                }
            }
            system.shutdown(Duration::from_secs(30));
        }
        "plain-sink" => {
            let client = redis::Client::open(url).unwrap();
            let mut con = client.get_connection().unwrap();
            let _: redis::RedisResult<String> = con.xgroup_create_mkstream("plain:sink", "sink", "0");
            println!("ready");
            let options = StreamReadOptions::default().group("sink", "c").count(64).block(5);
            let mut count = 0;
            while count < MESSAGES {
                let reply: Option<StreamReadReply> = con.xread_options(&["plain:sink"], &[">"], &options).unwrap();
                let ids: Vec<String> = reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .map(|e| {
                        // The body is decoded, as sophon's reader does.
                        if let Some(redis::Value::BulkString(b)) = e.map.get("b") {
                            let n: u64 = postcard::from_bytes(b).unwrap();
                            std::hint::black_box(n);
                        }
                        e.id
                    })
                    .collect();
                count += ids.len() as u64;
                if !ids.is_empty() {
                    let _: i64 = con.xack("plain:sink", "sink", &ids).unwrap();
                }
            }
        }
        "plain-echo" => {
            let client = redis::Client::open(url).unwrap();
            let mut con = client.get_connection().unwrap();
            let _: redis::RedisResult<String> = con.xgroup_create_mkstream("plain:echo", "echo", "0");
            println!("ready");
            let options = StreamReadOptions::default().group("echo", "c").count(64).block(5);
            let stdin_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let closed = stdin_closed.clone();
            std::thread::spawn(move || {
                let _ = std::io::stdin().lock().lines().count();
                closed.store(true, std::sync::atomic::Ordering::Release);
            });
            while !stdin_closed.load(std::sync::atomic::Ordering::Acquire) {
                let reply: Option<StreamReadReply> = con.xread_options(&["plain:echo"], &[">"], &options).unwrap();
                let entries: Vec<_> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
                if entries.is_empty() {
                    continue;
                }
                let mut pipe = redis::pipe();
                for e in &entries {
                    let (Some(redis::Value::BulkString(to)), Some(redis::Value::BulkString(b))) =
                        (e.map.get("to"), e.map.get("b"))
                    else {
                        continue;
                    };
                    let n: u64 = postcard::from_bytes(b).unwrap();
                    pipe.cmd("XADD").arg(&to[..]).arg("*").arg("o").arg(postcard::to_stdvec(&n).unwrap()).ignore();
                }
                let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
                pipe.xack("plain:echo", "echo", &ids).ignore();
                pipe.query::<()>(&mut con).unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
}

fn sophon_throughput() -> f64 {
    let redis = Redis::start();
    let (mut child, _out) = other("sophon-sink", &redis.url());
    let bus = Bus::connect(&redis.url(), "bench").unwrap();
    let mut b = SystemBuilder::new();
    let sink = b.import::<u64, u64>(&bus, "sink");
    let system = b.spawn().unwrap();
    let handle = system.handle(&sink);
    let started = Instant::now();
    for n in 0..MESSAGES {
        handle.query(n).unwrap();
    }
    assert!(child.wait().unwrap().success());
    let elapsed = started.elapsed();
    system.shutdown(Duration::from_secs(30));
    MESSAGES as f64 / elapsed.as_secs_f64()
}

fn plain_throughput() -> f64 {
    let redis = Redis::start();
    let (mut child, _out) = other("plain-sink", &redis.url());
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let started = Instant::now();
    let mut pipe = redis::pipe();
    for n in 0..MESSAGES {
        let body = postcard::to_stdvec(&n).unwrap();
        pipe.cmd("XADD").arg("plain:sink").arg("*").arg("k").arg("q").arg("b").arg(body).ignore();
        if n % 64 == 63 {
            pipe.query::<()>(&mut con).unwrap();
            pipe.clear();
        }
    }
    if !MESSAGES.is_multiple_of(64) {
        pipe.query::<()>(&mut con).unwrap();
    }
    assert!(child.wait().unwrap().success());
    MESSAGES as f64 / started.elapsed().as_secs_f64()
}

fn percentiles(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

fn sophon_round_trip() -> (Duration, Duration) {
    let redis = Redis::start();
    let (mut child, _out) = other("sophon-echo", &redis.url());
    let bus = Bus::connect(&redis.url(), "bench").unwrap();
    let mut b = SystemBuilder::new();
    let echo = b.import::<u64, u64>(&bus, "echo");
    let system = b.spawn().unwrap();
    let handle = system.handle(&echo);
    let mut times = Vec::with_capacity(ASKS);
    for n in 0..ASKS as u64 {
        let started = Instant::now();
        let answer = handle.ask(n).unwrap().recv_timeout(Duration::from_secs(10)).unwrap();
        times.push(started.elapsed());
        assert_eq!(answer, Some(n));
    }
    system.shutdown(Duration::from_secs(30));
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    percentiles(times)
}

fn plain_round_trip() -> (Duration, Duration) {
    let redis = Redis::start();
    let (mut child, _out) = other("plain-echo", &redis.url());
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let mut last = "0-0".to_string();
    let mut times = Vec::with_capacity(ASKS);
    for n in 0..ASKS as u64 {
        let started = Instant::now();
        let body = postcard::to_stdvec(&n).unwrap();
        let _: String = redis::cmd("XADD")
            .arg("plain:echo")
            .arg("*")
            .arg("k")
            .arg("q")
            .arg("b")
            .arg(body)
            .arg("to")
            .arg("plain:answers")
            .arg("c")
            .arg(n)
            .query(&mut con)
            .unwrap();
        let options = StreamReadOptions::default().count(1).block(10_000);
        let reply: Option<StreamReadReply> = con.xread_options(&["plain:answers"], &[&last], &options).unwrap();
        let entry = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).next().expect("an answer");
        last = entry.id.clone();
        if let Some(redis::Value::BulkString(o)) = entry.map.get("o") {
            assert_eq!(postcard::from_bytes::<u64>(o).unwrap(), n);
        }
        times.push(started.elapsed());
    }
    drop(child.stdin.take());
    let _ = child.wait();
    percentiles(times)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    if let (Ok(role), Ok(url)) = (std::env::var(ROLE), std::env::var(URL)) {
        serve(&role, &url);
        return;
    }
    let (mut sophon_rates, mut plain_rates) = (Vec::new(), Vec::new());
    let (mut sophon_p50, mut sophon_p99, mut plain_p50, mut plain_p99) = (vec![], vec![], vec![], vec![]);
    println!("run  sophon msg/s  plain msg/s  | sophon ask p50/p99 | plain p50/p99");
    for run in 1..=RUNS {
        let (s, p) = (sophon_throughput(), plain_throughput());
        let ((s50, s99), (p50, p99)) = (sophon_round_trip(), plain_round_trip());
        println!("{run}    {s:>11.0}  {p:>11.0}  | {:>7.0?} / {:>7.0?} | {:>7.0?} / {:>7.0?}", s50, s99, p50, p99);
        sophon_rates.push(s);
        plain_rates.push(p);
        sophon_p50.push(s50.as_secs_f64());
        sophon_p99.push(s99.as_secs_f64());
        plain_p50.push(p50.as_secs_f64());
        plain_p99.push(p99.as_secs_f64());
    }
    let (s, p) = (median(sophon_rates), median(plain_rates));
    let (s50, s99, p50, p99) = (median(sophon_p50), median(sophon_p99), median(plain_p50), median(plain_p99));
    println!("median throughput: sophon {s:.0} msg/s, plain {p:.0} msg/s: {:.2}x the plain loop", s / p);
    println!(
        "median round trip: sophon p50 {:.0} us, p99 {:.0} us; plain p50 {:.0} us, p99 {:.0} us: p50 {:.2}x, p99 {:.2}x the plain loop",
        s50 * 1e6,
        s99 * 1e6,
        p50 * 1e6,
        p99 * 1e6,
        s50 / p50,
        s99 / p99
    );
}
