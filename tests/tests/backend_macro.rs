//! Every accepted form of a `#[backend]` handler, run through a real system.

use std::time::Duration;

use sophon::{Context, SystemBuilder, backend};

const DEADLINE: Duration = Duration::from_secs(30);

/// A plain value: sent to every sibling.
struct Upper;

#[backend]
impl Upper {
    fn query(&mut self, text: String) -> String {
        text.to_uppercase()
    }
}

/// `Option`: sent when there is one.
struct Evens;

#[backend]
impl Evens {
    fn query(&mut self, n: u32) -> Option<u32> {
        n.is_multiple_of(2).then_some(n)
    }
}

/// `Result`: errors are reported by the runtime.
struct Parse;

#[backend]
impl Parse {
    fn query(&mut self, text: String) -> Result<i64, std::num::ParseIntError> {
        text.parse()
    }
}

/// `Result<Option<T>, E>`, with state in fields, a read that remembers and a fallible nop.
#[derive(Default)]
struct Memory {
    seen: Vec<String>,
}

#[backend]
impl Memory {
    fn query(&mut self, key: String) -> Result<Option<usize>, String> {
        if key.is_empty() {
            return Err("empty key".to_string());
        }
        Ok(self.seen.iter().position(|s| *s == key))
    }

    fn read(&mut self, text: String) {
        self.seen.push(text);
    }

    fn nop(&mut self) -> Result<(), String> {
        Err(format!("forgot {} entries", self.seen.len()))
    }
}

/// The explicit form: routes by sibling name.
struct Router;

#[backend]
impl Router {
    fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), sophon::Error> {
        ctx.send_to(if n < 10 { "small" } else { "large" }, n)
    }

    fn read(&mut self, n: u32, ctx: &mut Context<u32>) {
        let _ = ctx.send_to("small", n * 100);
    }
}

/// A generic impl block.
struct Tag<T>(std::marker::PhantomData<T>);

#[backend]
impl<T: Send + Clone + 'static> Tag<T> {
    fn query(&mut self, value: T) -> (&'static str, T) {
        ("tagged", value)
    }
}

/// Other methods of the block stay ordinary methods.
struct Counter {
    n: u64,
}

#[backend]
impl Counter {
    fn query(&mut self, (): ()) -> u64 {
        self.bump()
    }

    fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

#[test]
fn value_option_and_result_forms_send_what_they_return() {
    let mut b = SystemBuilder::new();
    let upper = b.entity("upper", Upper);
    let evens = b.entity("evens", Evens);
    let parse = b.entity("parse", Parse);
    let (upper_out, evens_out, parse_out) = (b.output(&upper, "out"), b.output(&evens, "out"), b.output(&parse, "out"));
    let system = b.spawn().unwrap();
    system.handle(&upper).query("hi".into()).unwrap();
    for n in 0..5 {
        system.handle(&evens).query(n).unwrap();
    }
    for text in ["12", "x", "-3"] {
        system.handle(&parse).query(text.into()).unwrap();
    }
    assert_eq!(upper_out.recv().unwrap(), "HI");
    assert_eq!(evens_out.iter().take(3).collect::<Vec<_>>(), [0, 2, 4]);
    assert_eq!(parse_out.iter().take(2).collect::<Vec<_>>(), [12, -3]);
    let report = system.shutdown(DEADLINE);
    assert_eq!(report.entity("parse").unwrap().stats.errors, 1);
    assert_eq!(report.failures[0].message(), "invalid digit found in string");
    assert_eq!(report.entity("evens").unwrap().stats.sent, 3);
}

#[test]
fn read_keeps_state_and_nop_errors_are_reported() {
    let mut b = SystemBuilder::new();
    let memory = b.entity("memory", Memory::default());
    let out = b.output(&memory, "out");
    let system = b.spawn().unwrap();
    let h = system.handle(&memory);
    h.read("a".into()).unwrap();
    h.read("b".into()).unwrap();
    h.query("b".into()).unwrap();
    h.query("z".into()).unwrap();
    h.query(String::new()).unwrap();
    assert_eq!(out.recv().unwrap(), 1);
    let report = system.shutdown(DEADLINE);
    assert!(out.try_recv().is_err(), "`None` sends nothing");
    let errors: Vec<_> = report.failures.iter().map(|f| (f.kind, f.message())).collect();
    assert_eq!(
        errors,
        [
            (sophon::HandlerKind::Query, "empty key".to_string()),
            (sophon::HandlerKind::Nop, "forgot 2 entries".to_string())
        ]
    );
}

#[test]
fn the_explicit_form_routes_by_name() {
    let mut b = SystemBuilder::new();
    let router = b.entity("router", Router);
    let small = b.output(&router, "small");
    let large = b.output(&router, "large");
    let system = b.spawn().unwrap();
    for n in [3, 30, 4] {
        system.handle(&router).query(n).unwrap();
    }
    system.handle(&router).read(5).unwrap();
    assert_eq!(small.iter().take(3).collect::<Vec<_>>(), [3, 4, 500]);
    assert_eq!(large.recv().unwrap(), 30);
}

#[test]
fn generic_blocks_and_helper_methods_work() {
    let mut b = SystemBuilder::new();
    let tag = b.entity("tag", Tag::<char>(std::marker::PhantomData));
    let counter = b.entity("counter", Counter { n: 0 });
    let (tag_out, counter_out) = (b.output(&tag, "out"), b.output(&counter, "out"));
    let system = b.spawn().unwrap();
    system.handle(&tag).query('x').unwrap();
    system.handle(&counter).query(()).unwrap();
    system.handle(&counter).query(()).unwrap();
    assert_eq!(tag_out.recv().unwrap(), ("tagged", 'x'));
    assert_eq!(counter_out.iter().take(2).collect::<Vec<_>>(), [1, 2]);
}

/// `idle`: gathers numbers, and sends their sum whenever the queue runs dry.
#[derive(Default)]
struct Summer {
    sum: Option<u64>,
}

#[backend]
impl Summer {
    fn query(&mut self, n: u64, ctx: &mut Context<u64>) {
        *self.sum.get_or_insert(0) += n;
        ctx.when_idle();
    }

    fn idle(&mut self, ctx: &mut Context<u64>) -> Result<(), sophon::Error> {
        match self.sum.take() {
            Some(sum) => ctx.send(sum),
            None => Ok(()),
        }
    }
}

#[test]
fn idle_sends_what_the_handlers_gathered_once_the_queue_runs_dry() {
    let mut b = SystemBuilder::new();
    let summer = b.entity("summer", Summer::default());
    let sums = b.output(&summer, "sums");
    let system = b.spawn().unwrap();
    let handle = system.handle(&summer);
    for n in 1..=100 {
        handle.query(n).unwrap();
    }
    // However the burst was cut into batches, every number is in one sum, and each sum came
    // once the queue had run dry.
    let mut total = 0;
    while total < 5_050 {
        total += sums.recv_timeout(DEADLINE).unwrap();
    }
    assert_eq!(total, 5_050);
    handle.query(7).unwrap();
    assert_eq!(sums.recv_timeout(DEADLINE).unwrap(), 7);
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
}
