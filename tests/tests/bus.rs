//! Edges across processes over Redis Streams (feature `bus`). Each test starts its own
//! `redis-server` on a unix socket in a directory of its own, with append-only persistence, and
//! a second process: this test binary again, running only `bus_child` with the broker's URL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sophon::bus::Bus;
use sophon::{Backend, BoxError, Context, SystemBuilder};

const DEADLINE: Duration = Duration::from_secs(120);
/// The variable that makes `bus_child` the consuming process, with the broker's URL.
const CHILD: &str = "SOPHON_BUS_TEST_CHILD";
/// With it, `bus_child` logs each message to this file instead, and runs until it is killed.
const LOG: &str = "SOPHON_BUS_TEST_LOG";
const MESSAGES: u64 = 100_000;
/// With it, `bus_child` exports `double` instead, for `ASKED` queries.
const DOUBLE: &str = "SOPHON_BUS_TEST_DOUBLE";
const ASKED: u64 = 10_000;

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
        Redis::start_in(dir)
    }

    fn start_in(dir: PathBuf) -> Redis {
        let socket = dir.join("redis.sock");
        let child = Redis::serve(&dir, &socket);
        Redis { child, dir, socket }
    }

    /// Runs `redis-server` on `socket`, keeping its files in `dir`, once it listens.
    fn serve(dir: &std::path::Path, socket: &std::path::Path) -> Child {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir)
            .args(["--appendonly", "yes", "--save", ""])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let started = Instant::now();
        while !socket.exists() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not open its socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }

    /// Stops the broker as an operator would (`SHUTDOWN`, which writes the append-only file
    /// out), and starts it again on the same socket and files.
    fn restart(&mut self) {
        self.cli(&["SHUTDOWN"]);
        self.child.wait().unwrap();
        let _ = std::fs::remove_file(&self.socket);
        self.child = Redis::serve(&self.dir, &self.socket);
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

/// Appends each number to a file, with whether it was a redelivery, a little slowly.
struct Logger(std::fs::File);

impl Backend for Logger {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        use std::io::Write;
        std::thread::sleep(Duration::from_micros(100));
        writeln!(self.0, "{n} {}", u8::from(ctx.is_redelivery()))?;
        Ok(())
    }
}

/// The consuming process of the tests: exports `sink` and runs until it has every message (or,
/// logging, until it is killed).
#[test]
fn bus_child() {
    let Ok(url) = std::env::var(CHILD) else { return };
    let bus = Bus::connect(&url, "test").unwrap();
    if let Ok(log) = std::env::var(LOG) {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut b = SystemBuilder::new();
        let sink = b.entity("sink", Logger(file));
        b.export(&sink, &bus);
        let _system = b.spawn().unwrap();
        std::thread::sleep(DEADLINE);
        panic!("not killed");
    }
    if std::env::var(DOUBLE).is_ok() {
        // Answers `ASKED` queries for the other process, then stops.
        let mut b = SystemBuilder::new();
        let double = b.entity("double", Double);
        b.export(&double, &bus);
        let system = b.spawn().unwrap();
        let started = Instant::now();
        while system.handle(&double).stats().unwrap().handled < ASKED {
            assert!(started.elapsed() < DEADLINE, "not every query came");
            std::thread::sleep(Duration::from_millis(10));
        }
        let report = system.shutdown(DEADLINE);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.bus[0].sent, ASKED, "{report}");
        return;
    }
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
    child_command(redis).spawn().unwrap()
}

fn child_command(redis: &Redis) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "bus_child", "--nocapture", "--test-threads=1"]).env(CHILD, redis.url());
    command
}

/// The numbers logged so far, each with whether that delivery was flagged as a redelivery.
fn logged(path: &std::path::Path) -> Vec<(u64, bool)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A line cut short by a kill is not a message handled.
    text.lines()
        .filter_map(|line| {
            let (n, r) = line.split_once(' ')?;
            Some((n.parse().ok()?, r == "1"))
        })
        .collect()
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
fn a_consumer_killed_mid_stream_leaves_its_messages_to_the_next_which_flags_the_duplicates() {
    const N: u64 = 10_000;
    let redis = Redis::start();
    let log = redis.dir.join("handled.log");
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let mut b = SystemBuilder::new();
    let sink = b.import::<u64, u64>(&bus, "sink");
    let system = b.spawn().unwrap();
    let handle = system.handle(&sink);
    for n in 0..N {
        handle.query(n).unwrap();
    }
    assert!(system.shutdown(DEADLINE).is_clean());

    // The first consumer is killed once it has handled 30%.
    let mut first = child_command(&redis).env(LOG, &log).spawn().unwrap();
    let started = Instant::now();
    while logged(&log).len() < (N as usize) * 3 / 10 {
        assert!(started.elapsed() < DEADLINE, "the first consumer is stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before = logged(&log).len();

    // The next one takes what is left, the first one's pending messages too.
    let mut second = child_command(&redis).env(LOG, &log).spawn().unwrap();
    let started = Instant::now();
    loop {
        let distinct: std::collections::HashSet<u64> = logged(&log).into_iter().map(|(n, _)| n).collect();
        let pending = redis.cli(&["XPENDING", "test:sink", "sink"]);
        if distinct.len() == N as usize && pending.lines().next() == Some("0") {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "{} of {N} handled, pending: {pending}", distinct.len());
        std::thread::sleep(Duration::from_millis(20));
    }
    second.kill().unwrap();
    second.wait().unwrap();

    let handled = logged(&log);
    assert!(before >= (N as usize) * 3 / 10);
    let mut times = std::collections::HashMap::new();
    for &(n, redelivered) in &handled {
        times.entry(n).or_insert_with(Vec::new).push(redelivered);
    }
    assert_eq!(times.len(), N as usize, "every message handled");
    let duplicates: Vec<(&u64, &Vec<bool>)> = times.iter().filter(|(_, t)| t.len() > 1).collect();
    // At most the batch the first consumer had taken and not acknowledged.
    assert!(duplicates.len() <= 64, "{} duplicates", duplicates.len());
    for (n, deliveries) in &duplicates {
        assert_eq!(deliveries.len(), 2, "{n} handled {} times", deliveries.len());
        assert!(deliveries[1], "the second delivery of {n} is flagged as one");
    }
}

#[test]
fn an_importer_and_an_exporter_that_disagree_on_the_type_refuse_to_start_naming_both() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let mut b = SystemBuilder::new();
    let sink = b.entity("sink", InOrder { next: 0, last: 1 });
    b.export(&sink, &bus);
    let exporter = b.spawn().unwrap();

    let mut b = SystemBuilder::new();
    b.import::<String, u64>(&bus, "sink");
    let error = b.spawn().unwrap_err().to_string();
    assert!(error.contains("`sink` on the bus is `u64 => u64` (input => output)"), "{error}");
    assert!(error.contains("imports it as `alloc::string::String => u64`"), "{error}");
    // Nothing was sent.
    assert_eq!(redis.cli(&["XLEN", "test:sink"]).trim(), "0");
    assert!(exporter.shutdown(DEADLINE).is_clean());
}

/// Keeps what it is given; fails on 13.
struct Keep(Arc<Mutex<Vec<u64>>>);

impl Backend for Keep {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, _: &mut Context<u64>) -> Result<(), BoxError> {
        if n == 13 {
            return Err("13 is unlucky".into());
        }
        self.0.lock().unwrap().push(n);
        Ok(())
    }
}

/// An exporting system and an importing one, in this process.
fn both(bus: &Bus, kept: &Arc<Mutex<Vec<u64>>>) -> (sophon::System, sophon::System, sophon::Handle<u64, u64>) {
    let mut b = SystemBuilder::new();
    let sink = b.entity("sink", Keep(kept.clone()));
    b.export(&sink, bus);
    let exporter = b.spawn().unwrap();
    let mut b = SystemBuilder::new();
    let sink = b.import::<u64, u64>(bus, "sink");
    let importer = b.spawn().unwrap();
    let handle = importer.handle(&sink);
    (exporter, importer, handle)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_body_that_always_fails_ends_in_the_dead_letter_stream_after_three_tries() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let (exporter, importer, sink) = both(&bus, &kept);
    for n in 0..20 {
        sink.query(n).unwrap();
    }
    wait_until("13 is a dead letter", || redis.cli(&["XLEN", "test:sink:dead"]).trim() == "1");
    let dead = redis.cli(&["XRANGE", "test:sink:dead", "-", "+"]);
    assert!(dead.contains("13 is unlucky"), "{dead}");
    wait_until("nothing pending", || redis.cli(&["XPENDING", "test:sink", "sink"]).lines().next() == Some("0"));
    let mut got = kept.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (0..20).filter(|&n| n != 13).collect::<Vec<_>>());
    // The sink failed three times on it; the reader reports the dead letter.
    let failures: Vec<String> = exporter.failures().try_iter().map(|f| f.message()).collect();
    assert_eq!(failures.iter().filter(|f| f.contains("13 is unlucky")).count(), 4, "{failures:?}");
    assert!(failures.iter().any(|f| f.contains("went to test:sink:dead after 3 failed deliveries")), "{failures:?}");
    importer.shutdown(DEADLINE);
    exporter.shutdown(DEADLINE);
}

#[test]
fn a_broker_restarted_mid_stream_loses_nothing_it_accepted() {
    let mut redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let (exporter, importer, sink) = both(&bus, &kept);
    for n in 100..2_100 {
        sink.query(n).unwrap();
    }
    wait_until("half is sent", || redis.cli(&["XLEN", "test:sink"]).trim().parse::<u64>().unwrap_or(0) >= 1_000);
    redis.restart();
    for n in 2_100..4_100 {
        sink.query(n).unwrap();
    }
    wait_until("every message is handled", || {
        let kept = kept.lock().unwrap();
        kept.iter().collect::<std::collections::HashSet<_>>().len() == 4_000
    });
    let report = importer.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    exporter.shutdown(DEADLINE);
}

#[test]
fn a_broker_that_cannot_be_reached_is_an_error() {
    let error = Bus::connect("redis+unix:///nonexistent/redis.sock", "test").unwrap_err();
    assert!(error.to_string().contains("broker"), "{error}");
}

/// Answers each number with its double; fails on 13.
struct Double;

impl Backend for Double {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        if n == 13 {
            return Err("13 is unlucky".into());
        }
        ctx.send(n * 2)?;
        Ok(())
    }
}

/// An exporter of `double` and an importer with an output of its answers.
fn doubling(
    bus: &Bus,
) -> (sophon::System, sophon::System, sophon::Handle<u64, u64>, sophon::crossbeam_channel::Receiver<u64>) {
    let mut b = SystemBuilder::new();
    let double = b.entity("double", Double);
    b.export(&double, bus);
    let exporter = b.spawn().unwrap();
    let mut b = SystemBuilder::new();
    let double = b.import::<u64, u64>(bus, "double");
    let answers = b.output(&double, "answers");
    let importer = b.spawn().unwrap();
    let handle = importer.handle(&double);
    (exporter, importer, handle, answers)
}

#[test]
fn answers_come_back_to_the_importers_siblings_in_order() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let (exporter, importer, double, answers) = doubling(&bus);
    for n in 0..5_000 {
        double.query(n + 100).unwrap();
    }
    for n in 0..5_000 {
        assert_eq!(answers.recv_timeout(DEADLINE).unwrap(), (n + 100) * 2);
    }
    // An importer that died would leave its answer stream, which goes an hour after its last
    // answer.
    let key = redis.cli(&["KEYS", "test:double:answers:*"]).trim().to_string();
    let ttl: i64 = redis.cli(&["TTL", &key]).trim().parse().unwrap();
    assert!((1..=3_600).contains(&ttl), "{key}: {ttl}");
    let report = importer.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    let bus_report = &report.bus[0];
    assert_eq!((bus_report.sent, bus_report.received, bus_report.unanswered), (5_000, 5_000, 0), "{report}");
    let report = exporter.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.bus[0].received, report.bus[0].sent, report.bus[0].dead_letters), (5_000, 5_000, 0), "{report}");
    assert!(report.to_string().contains("bus:double -> double: 5000 sent"), "{report}");
    // The sums: every message taken was handled once, and answered once.
    let double = report.entity("double").unwrap();
    assert_eq!((double.stats.handled, double.stats.undelivered, double.stats.errors), (5_000, 0, 0), "{report}");
    // The importer's answer stream is gone with it.
    assert_eq!(redis.cli(&["KEYS", "test:double:answers:*"]).trim(), "");
}

#[test]
fn a_shutdown_sends_what_was_gathered_and_waits_for_the_answers_owed() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let (exporter, importer, double, answers) = doubling(&bus);
    for n in 100..20_100 {
        double.query(n).unwrap();
    }
    // At once: the answers are still owed.
    let report = importer.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert!(answers.try_iter().eq((100..20_100).map(|n| n * 2)));
    assert_eq!((report.bus[0].sent, report.bus[0].unanswered), (20_000, 0), "{report}");
    assert!(report.to_string().contains("double (imported from test:double): 20000 sent, 20000 answers received"));
    exporter.shutdown(DEADLINE);
}

#[test]
fn an_ask_across_processes_gets_its_answer_or_the_remote_failure() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let (exporter, importer, double, answers) = doubling(&bus);
    for n in 1..=10 {
        assert_eq!(double.ask(n).unwrap().recv_timeout(DEADLINE).unwrap(), Some(n * 2));
    }
    // An ask's answer goes to the asker only.
    assert!(answers.try_recv().is_err());
    // 13 fails three times, then its asker hears why.
    let error = double.ask(13).unwrap().recv_timeout(DEADLINE).unwrap_err();
    assert_eq!(error.kind(), sophon::ReplyErrorKind::Failed);
    assert!(std::error::Error::source(&error).unwrap().to_string().contains("13 is unlucky"), "{error}");
    let report = importer.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    let report = exporter.shutdown(DEADLINE);
    assert_eq!(report.bus[0].dead_letters, 1, "{report}");
    assert_eq!(report.bus[0].redelivered, 2, "{report}");
}

#[test]
fn an_importer_with_nobody_to_answer_reports_what_was_unanswered() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    // The exporter's types are on the bus, but it is not running.
    let mut b = SystemBuilder::new();
    let double = b.entity("double", Double);
    b.export(&double, &bus);
    drop(b);
    let mut b = SystemBuilder::new();
    let double = b.import::<u64, u64>(&bus, "double");
    let _answers = b.output(&double, "answers");
    let importer = b.spawn().unwrap();
    for n in 0..3 {
        importer.handle(&double).query(n).unwrap();
    }
    let report = importer.shutdown(DEADLINE);
    assert_eq!(report.bus[0].unanswered, 3, "{report}");
    assert!(report.failures.iter().any(|f| f.message().contains("3 messages sent to test:double were not answered")));
}

/// Takes its time over each number, and notes it with whether it was a redelivery.
struct Slow(Arc<Mutex<Vec<(u64, bool)>>>);

impl Backend for Slow {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        std::thread::sleep(Duration::from_millis(1_500));
        self.0.lock().unwrap().push((n, ctx.is_redelivery()));
        Ok(())
    }
}

#[test]
fn a_live_consumer_whose_handler_runs_long_keeps_its_messages() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    // Two processes export the entity: while one handles a message for longer than a second,
    // the other, idle, must not take it over.
    let exporters: Vec<sophon::System> = (0..2)
        .map(|_| {
            let mut b = SystemBuilder::new();
            let slow = b.entity("slow", Slow(handled.clone()));
            b.export(&slow, &bus);
            b.spawn().unwrap()
        })
        .collect();
    let mut b = SystemBuilder::new();
    let slow = b.import::<u64, u64>(&bus, "slow");
    let importer = b.spawn().unwrap();
    for n in 0..4 {
        importer.handle(&slow).query(n).unwrap();
    }
    wait_until("all four are handled", || handled.lock().unwrap().len() >= 4);
    // Long enough for a second consumer to have claimed (and handled) one again.
    std::thread::sleep(Duration::from_millis(2_500));
    let mut handled = handled.lock().unwrap().clone();
    handled.sort();
    assert_eq!(handled, vec![(0, false), (1, false), (2, false), (3, false)]);
    assert_eq!(redis.cli(&["XPENDING", "test:slow", "slow"]).lines().next(), Some("0"));
    importer.shutdown(DEADLINE);
    for exporter in exporters {
        let report = exporter.shutdown(DEADLINE);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.bus[0].redelivered, 0, "{report}");
    }
}

sophon::agent_system! {
    #![bus(bus)]
    /// Doubles numbers for other processes.
    struct Doubler(bus: Bus);
    #[export] double: Double = Double;
}

#[test]
fn the_macro_exports_and_imports_entities_over_the_systems_bus() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let exporter = Doubler::spawn(bus.clone()).unwrap();
    assert!(Doubler::MERMAID.contains("exported"), "{}", Doubler::MERMAID);
    let importer = sophon::agent_system! {
        #![bus(&bus)]
        remote double: u64 => u64;
        double -> output(answers);
    }
    .unwrap();
    for n in 100..110 {
        importer.double.query(n).unwrap();
    }
    let answers: Vec<u64> = (0..10).map(|_| importer.answers.recv_timeout(DEADLINE).unwrap()).collect();
    assert_eq!(answers, (100..110).map(|n| n * 2).collect::<Vec<_>>());
    assert_eq!(importer.double.ask(21).unwrap().recv_timeout(DEADLINE).unwrap(), Some(42));
    let report = importer.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.bus[0].sent, 11, "{report}");
    let report = exporter.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.bus[0].received, 11, "{report}");
}

/// Answers each number after a while.
struct Sleepy(Duration);

impl Backend for Sleepy {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        std::thread::sleep(self.0);
        Ok(ctx.send(n)?)
    }
}

#[test]
fn replicas_in_other_processes_are_routed_by_the_time_their_answers_take() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let exporters: Vec<sophon::System> = [("fast", 1), ("slow", 20)]
        .into_iter()
        .map(|(name, ms)| {
            let mut b = SystemBuilder::new();
            let entity = b.entity(name, Sleepy(Duration::from_millis(ms)));
            b.export(&entity, &bus);
            b.spawn().unwrap()
        })
        .collect();
    let mut b = SystemBuilder::new();
    let replicas: Vec<sophon::BoxBackend<u64, u64>> =
        vec![Box::new(bus.remote::<u64, u64>("slow").unwrap()), Box::new(bus.remote::<u64, u64>("fast").unwrap())];
    let model = b.replicas("model", replicas);
    let answers = b.output(&model, "answers");
    let importer = b.spawn().unwrap();
    let handle = importer.handle(&model);
    for n in 0..300 {
        handle.query(n).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut got: Vec<u64> = (0..300).map(|_| answers.recv_timeout(DEADLINE).unwrap()).collect();
    got.sort();
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    let report = importer.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    let ranking = &report.rankings[0];
    let fast = ranking.replicas.iter().find(|r| r.name == "model/1").unwrap();
    assert!(fast.sent >= 240, "the fast replica took {} of 300: {report}", fast.sent);
    assert_eq!(ranking.best().unwrap().name, "model/1", "{report}");
    // Both replicas' figures are in the report, with how long their answers took.
    assert_eq!(report.bus.len(), 2, "{report}");
    let slow = report.bus.iter().find(|b| b.entity == "slow").unwrap();
    assert!(slow.answer_time.unwrap().p50 >= Duration::from_millis(20), "{report}");
    for exporter in exporters {
        assert!(exporter.shutdown(DEADLINE).is_clean());
    }
}

/// Notes what it reads, and answers queries with how many it has read.
struct Reads(Arc<Mutex<Vec<u64>>>);

impl Backend for Reads {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, _: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        let read = self.0.lock().unwrap().len() as u64;
        Ok(ctx.send(read)?)
    }

    fn read(&mut self, n: u64, _: &mut Context<u64>) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(n);
        Ok(())
    }
}

#[test]
fn reads_cross_the_bus_as_reads_and_are_never_answered() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let mut b = SystemBuilder::new();
    let reads = b.entity("reads", Reads(kept.clone()));
    b.export(&reads, &bus);
    let exporter = b.spawn().unwrap();
    let mut b = SystemBuilder::new();
    let reads = b.import::<u64, u64>(&bus, "reads");
    let answers = b.output(&reads, "answers");
    let importer = b.spawn().unwrap();
    let handle = importer.handle(&reads);
    for n in 0..50 {
        handle.read(n).unwrap();
    }
    // In order after the reads: the answer counts them all.
    handle.query(0).unwrap();
    assert_eq!(answers.recv_timeout(DEADLINE).unwrap(), 50);
    assert_eq!(*kept.lock().unwrap(), (0..50).collect::<Vec<_>>());
    let report = importer.shutdown(DEADLINE);
    // 51 sent, one answer: reads want none.
    assert_eq!((report.bus[0].sent, report.bus[0].received), (51, 1), "{report}");
    assert!(answers.try_recv().is_err());
    exporter.shutdown(DEADLINE);
}

#[test]
fn answers_and_asks_cross_two_processes() {
    let redis = Redis::start();
    let child = child_command(&redis).env(DOUBLE, "1").spawn().unwrap();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let mut b = SystemBuilder::new();
    let double = b.import::<u64, u64>(&bus, "double");
    let answers = b.output(&double, "answers");
    let importer = b.spawn().unwrap();
    let handle = importer.handle(&double);
    for n in 100..100 + ASKED - 1 {
        handle.query(n).unwrap();
    }
    assert_eq!(handle.ask(21).unwrap().recv_timeout(DEADLINE).unwrap(), Some(42));
    let got: Vec<u64> = (0..ASKED - 1).map(|_| answers.recv_timeout(DEADLINE).unwrap()).collect();
    assert_eq!(got, (100..100 + ASKED - 1).map(|n| n * 2).collect::<Vec<_>>());
    let report = importer.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert!(wait(child), "the exporting process failed");
}

/// Answers each number after a while, and counts the reads it takes.
struct Served(Duration, Arc<std::sync::atomic::AtomicU64>);

impl Backend for Served {
    type Input = u64;
    type Output = u64;

    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
        std::thread::sleep(self.0);
        Ok(ctx.send(n)?)
    }

    fn read(&mut self, _: u64, _: &mut Context<u64>) -> Result<(), BoxError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

sophon::agent_system! {
    #![bus(bus)]
    /// One entity served by a slow and a fast replica, exported.
    struct Served2(bus: Bus, reads: [Arc<std::sync::atomic::AtomicU64>; 2]);
    #[export]
    #[replicas]
    model: sophon::BoxBackend<u64, u64> = [
        Served(Duration::from_millis(15), reads[0].clone()),
        Served(Duration::from_millis(1), reads[1].clone()),
    ];
}

#[test]
fn an_exported_replicated_entity_routes_what_comes_over_the_bus() {
    let redis = Redis::start();
    let bus = Bus::connect(&redis.url(), "test").unwrap();
    let reads = [Arc::new(std::sync::atomic::AtomicU64::new(0)), Arc::new(std::sync::atomic::AtomicU64::new(0))];
    let exporter = Served2::spawn(bus.clone(), reads.clone()).unwrap();
    let importer = sophon::agent_system! {
        #![bus(&bus)]
        remote model: u64 => u64;
        model -> output(answers);
    }
    .unwrap();
    for n in 0..300 {
        importer.model.query(n).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    // Every replica reads what comes over the bus.
    for n in 0..10 {
        importer.model.read(n).unwrap();
    }
    let mut got: Vec<u64> = (0..300).map(|_| importer.answers.recv_timeout(DEADLINE).unwrap()).collect();
    got.sort();
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    wait_until("both replicas read all 10", || {
        reads.iter().all(|r| r.load(std::sync::atomic::Ordering::Relaxed) == 10)
    });
    assert!(importer.shutdown(DEADLINE).is_clean());
    wait_until("nothing pending", || redis.cli(&["XPENDING", "test:model", "model"]).lines().next() == Some("0"));
    let report = exporter.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    let slow = report.entity("model/0").unwrap().stats.handled;
    let fast = report.entity("model/1").unwrap().stats.handled;
    // 300 queries routed, and 10 reads to each.
    assert_eq!(fast + slow, 320, "{report}");
    assert!(fast >= 250, "the fast replica took {} of 300 queries: {report}", fast - 10);
}
