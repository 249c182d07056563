//! The person backend driven by injected input, without a terminal.

mod common;

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{SharedBuf, from_fn};
use sophon::backends::person::Person;
use sophon::{Context, EntityState, SystemBuilder};

const WAIT: Duration = Duration::from_secs(10);

/// A person talks to an echo that answers every line; runs until the person leaves and returns
/// what the person saw.
fn converse(input: &'static str) -> (String, sophon::Report, Vec<String>) {
    let screen = SharedBuf::default();
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = heard.clone();
    let mut builder = SystemBuilder::new();
    let person = builder.entity("person", Person::new(Cursor::new(input), screen.clone()).label("echo: "));
    let echo = builder.entity(
        "echo",
        from_fn(move |line: String, ctx: &mut Context<String>| {
            log.lock().unwrap().push(line.clone());
            Ok(ctx.send(format!("you said {line}"))?)
        }),
    );
    // Another entity, which must not hear the person.
    let bystander =
        builder.entity("bystander", from_fn(|_: String, _: &mut Context<()>| Err("must not be asked".into())));
    builder.query_edge(&person, &echo);
    builder.loop_edge(&echo, &person);
    let _ = bystander;
    let system = builder.spawn().unwrap();
    system.handle(&person).query("hello".into()).unwrap();
    assert!(system.wait_for_stop(Some(WAIT)), "the person never left");
    let report = system.shutdown(WAIT);
    let heard = heard.lock().unwrap().clone();
    (screen.text(), report, heard)
}

#[test]
fn lines_reach_the_entity_the_person_talks_to() {
    let (screen, report, heard) = converse("one\ntwo\n/quit\nnever read\n");
    assert_eq!(heard, ["one", "two"]);
    assert_eq!(screen, "echo: hello\n> echo: you said one\n> echo: you said two\n> ");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("bystander").unwrap().stats.received, 0);
    assert_eq!(report.entity("person").unwrap().stats.handled, 3);
}

#[test]
fn end_of_input_stops_the_system() {
    let (screen, report, heard) = converse("only line\n");
    assert_eq!(heard, ["only line"]);
    assert!(screen.ends_with("echo: you said only line\n> \n"), "{screen:?}");
    assert!(report.is_clean(), "{report}");
}

#[test]
fn blank_lines_are_asked_again_and_echo_writes_a_transcript() {
    let screen = SharedBuf::default();
    let mut builder = SystemBuilder::new();
    let person =
        builder.entity("person", Person::new(Cursor::new("\n  \nfine\r\n"), screen.clone()).prompt("? ").echo(true));
    let said = builder.output(&person, "said");
    let system = builder.spawn().unwrap();
    system.handle(&person).query("how are you".into()).unwrap();
    assert_eq!(said.recv_timeout(WAIT).unwrap(), "fine");
    assert_eq!(screen.text(), "how are you\n? \n?   \n? fine\n");
    assert!(system.shutdown(WAIT).is_clean());
}

#[test]
fn nothing_queued_is_lost_when_the_person_quits() {
    const LINES: usize = 50;
    let input: String = (0..LINES).map(|i| format!("line {i}\n")).chain(["/quit\n".to_owned()]).collect();
    let logged = Arc::new(AtomicUsize::new(0));
    let counter = logged.clone();
    let mut builder = SystemBuilder::new();
    let person = builder.entity("person", Person::new(Cursor::new(input), std::io::sink()));
    // A slow log on a read edge: it is still busy when the person quits.
    let log = builder.entity(
        "log",
        from_fn(|_: String, _: &mut Context<()>| -> Result<(), sophon::BoxError> { unreachable!("only reads") }),
    );
    let slow = builder.entity(
        "slow",
        from_fn(move |line: String, ctx: &mut Context<String>| {
            std::thread::sleep(Duration::from_millis(2));
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(ctx.send(line)?)
        }),
    );
    builder.query_edge(&person, &slow);
    builder.read_edge(&person, &log);
    let system = builder.spawn().unwrap();
    for _ in 0..=LINES {
        system.handle(&person).query(String::new()).unwrap();
    }
    assert!(system.wait_for_stop(Some(WAIT)));
    let report = system.shutdown(WAIT);
    assert!(report.is_clean(), "{report}");
    assert_eq!(logged.load(Ordering::SeqCst), LINES);
    assert_eq!(report.entity("log").unwrap().stats.handled, LINES as u64);
    assert_eq!(report.entity("slow").unwrap().stats.handled, LINES as u64);
}

#[test]
fn a_passive_person_shows_everything_and_answers_nothing() {
    let screen = SharedBuf::default();
    let mut builder = SystemBuilder::new();
    let display = builder.entity("display", Person::passive(screen.clone()).label("| "));
    let said = builder.output(&display, "said");
    let system = builder.spawn().unwrap();
    system.handle(&display).query("a question".into()).unwrap();
    system.handle(&display).read("a remark".into()).unwrap();
    let report = system.shutdown(WAIT);
    assert!(report.is_clean(), "{report}");
    assert_eq!(screen.text(), "| a question\n| a remark\n");
    assert!(said.try_recv().is_err(), "a passive person answers nothing");
    assert_eq!(report.entity("display").unwrap().state, EntityState::Stopped);
}
