//! Request and reply: `Handle::ask`, `Handle::call` and `Reply`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{from_fn, pass};
use sophon::{AskError, Context, EntityOptions, ErrorKind, ReplyErrorKind, SystemBuilder};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn two_threads_asking_one_entity_each_get_exactly_their_own_answers() {
    const ASKS: u64 = 10_000;
    let mut builder = SystemBuilder::new();
    // Answers (caller, n) with (caller, n * 3).
    let triple = builder
        .entity("triple", from_fn(|(who, n): (u8, u64), ctx: &mut Context<(u8, u64)>| Ok(ctx.send((who, n * 3))?)));
    let out = builder.output(&triple, "out");
    let system = builder.spawn().unwrap();
    let handle = system.handle(&triple);
    std::thread::scope(|s| {
        for who in [1u8, 2] {
            let handle = handle.clone();
            s.spawn(move || {
                for n in 0..ASKS {
                    // Every other one through the streaming form.
                    let answer = if n % 2 == 0 {
                        handle.call((who, n)).unwrap()
                    } else {
                        let answers: Vec<_> = handle.ask((who, n)).unwrap().collect::<Result<_, _>>().unwrap();
                        assert_eq!(answers.len(), 1);
                        answers[0]
                    };
                    assert_eq!(answer, (who, n * 3));
                }
            });
        }
    });
    assert!(out.try_recv().is_err(), "answers to asks go to the askers only");
    let report = system.shutdown(WAIT);
    assert!(report.is_clean(), "{report}");
    let stats = report.entity("triple").unwrap().stats;
    assert_eq!((stats.received, stats.handled), (2 * ASKS, 2 * ASKS));
}

#[test]
fn an_ask_does_not_reach_the_siblings_and_a_query_after_it_does() {
    let mut builder = SystemBuilder::new();
    let double = builder.entity("double", from_fn(|n: u32, ctx: &mut Context<u32>| Ok(ctx.send(n * 2)?)));
    let next = builder.entity("next", pass::<u32>());
    builder.query_edge(&double, &next);
    let out = builder.output(&next, "out");
    let direct = builder.output(&double, "direct");
    let system = builder.spawn().unwrap();
    let handle = system.handle(&double);
    assert_eq!(handle.call(21).unwrap(), 42);
    handle.query(5).unwrap();
    assert_eq!(out.recv_timeout(WAIT).unwrap(), 10);
    assert_eq!(direct.recv_timeout(WAIT).unwrap(), 10);
    let report = system.shutdown(WAIT);
    assert!(report.is_clean(), "{report}");
    assert!(out.try_recv().is_err() && direct.try_recv().is_err(), "the asked 42 went nowhere else");
    assert_eq!(report.entity("next").unwrap().stats.received, 1);
}

#[test]
fn every_output_of_the_handler_comes_in_order_and_the_reply_then_ends() {
    let mut builder = SystemBuilder::new();
    let count = builder.entity(
        "count",
        from_fn(|n: u32, ctx: &mut Context<u32>| {
            for i in 0..n {
                // Any of the send methods answers the asker.
                match i % 3 {
                    0 => ctx.send(i)?,
                    1 => ctx.send_to("nobody", i)?,
                    _ => ctx.send_except("nobody", i)?,
                }
            }
            Ok(())
        }),
    );
    let system = builder.spawn().unwrap();
    let handle = system.handle(&count);
    let mut reply = handle.ask(100).unwrap();
    assert_eq!(reply.entity(), "count");
    let got: Vec<u32> = reply.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert_eq!(reply.recv().unwrap(), None, "an ended reply stays ended");
    let report = system.shutdown(WAIT);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("count").unwrap().stats.sent, 100);
}

#[test]
fn a_handler_that_answers_nothing_or_errs_ends_the_reply_saying_which() {
    let mut builder = SystemBuilder::new();
    let picky = builder.entity(
        "picky",
        from_fn(|n: i32, ctx: &mut Context<i32>| {
            if n < 0 {
                return Err(format!("{n} is negative").into());
            }
            if n > 0 {
                ctx.send(n)?;
            }
            Ok(())
        }),
    );
    let system = builder.spawn().unwrap();
    let failures = system.failures();
    let handle = system.handle(&picky);

    let err = handle.ask(0).unwrap().first().unwrap_err();
    assert_eq!(err.kind(), ReplyErrorKind::NoAnswer);
    assert_eq!(err.to_string(), "`picky` handled the ask without answering");

    let mut reply = handle.ask(-3).unwrap();
    let err = reply.recv().unwrap_err();
    assert_eq!(err.kind(), ReplyErrorKind::Failed);
    assert_eq!(err.to_string(), "`picky` failed to answer: -3 is negative");
    assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "-3 is negative");
    assert_eq!(reply.recv().unwrap(), None);
    // The error is reported as every handler error is.
    assert_eq!(failures.recv_timeout(WAIT).unwrap().message(), "-3 is negative");

    assert_eq!(handle.call(7).unwrap(), 7, "the entity goes on");
    let report = system.shutdown(WAIT);
    assert_eq!(report.entity("picky").unwrap().stats.errors, 1);
}

#[test]
fn a_panicking_handler_ends_the_reply_with_the_panic() {
    let mut builder = SystemBuilder::new();
    let fragile = builder.entity(
        "fragile",
        from_fn(|n: u32, ctx: &mut Context<u32>| {
            ctx.send(n)?;
            assert!(n != 13, "unlucky {n}");
            Ok(())
        }),
    );
    let system = builder.spawn().unwrap();
    let handle = system.handle(&fragile);
    let mut reply = handle.ask(13).unwrap();
    assert_eq!(reply.recv().unwrap(), Some(13), "what was sent before the panic arrives");
    let err = reply.recv().unwrap_err();
    assert_eq!(err.kind(), ReplyErrorKind::Panicked);
    assert_eq!(err.to_string(), "`fragile` panicked while answering: unlucky 13");
    let panic = std::error::Error::source(&err).unwrap();
    assert!(panic.is::<sophon::PanicError>());

    // The entity has failed: asking it now gives the body back.
    let err = handle.call(1).unwrap_err();
    let AskError::Refused(refused) = err else { panic!("refused at once") };
    assert_eq!(refused.kind(), ErrorKind::Failed);
    assert_eq!(refused.into_body(), 1);
    let report = system.shutdown(WAIT);
    assert_eq!(report.entity("fragile").unwrap().stats.panics, 1);
}

#[test]
fn a_restarted_entity_answers_the_asks_after_the_one_that_panicked() {
    let mut builder = SystemBuilder::new();
    let options = EntityOptions::new().restart(3, Duration::from_secs(10));
    let fragile = builder.supervised(
        "fragile",
        || {
            from_fn(|n: u32, ctx: &mut Context<u32>| {
                assert!(n != 13, "unlucky");
                Ok(ctx.send(n + 1)?)
            })
        },
        options,
    );
    let system = builder.spawn().unwrap();
    let handle = system.handle(&fragile);
    let replies: Vec<_> = [12, 13, 14].map(|n| handle.ask(n).unwrap()).into();
    let answers: Vec<_> = replies.into_iter().map(|r| r.first().map_err(|e| e.kind())).collect();
    assert_eq!(answers, [Ok(13), Err(ReplyErrorKind::Panicked), Ok(15)]);
    let report = system.shutdown(WAIT);
    assert_eq!(report.entity("fragile").unwrap().stats.restarts, 1);
}

#[test]
fn asks_queued_when_the_entity_fails_end_as_not_handled_and_count_as_undelivered() {
    let gate = Arc::new(AtomicBool::new(false));
    let open = gate.clone();
    let mut builder = SystemBuilder::new();
    let slow = builder.entity(
        "slow",
        from_fn(move |n: u32, ctx: &mut Context<u32>| {
            common::wait_until(|| open.load(Ordering::Acquire));
            assert!(n != 0, "zero");
            Ok(ctx.send(n)?)
        }),
    );
    let system = builder.spawn().unwrap();
    let handle = system.handle(&slow);
    let first = handle.ask(0).unwrap();
    let queued: Vec<_> = (1..=5).map(|n| handle.ask(n).unwrap()).collect();
    gate.store(true, Ordering::Release);
    assert_eq!(first.first().unwrap_err().kind(), ReplyErrorKind::Panicked);
    for reply in queued {
        let err = reply.first().unwrap_err();
        assert_eq!(err.kind(), ReplyErrorKind::NotHandled(ErrorKind::Failed));
        assert_eq!(err.to_string(), "`slow` did not handle the ask: it has failed");
    }
    let report = system.shutdown(WAIT);
    assert_eq!(report.entity("slow").unwrap().stats.undelivered, 5);
}

#[test]
fn a_stopped_entity_gives_the_body_back_and_a_slow_one_times_out() {
    let mut builder = SystemBuilder::new();
    let slow = builder.entity(
        "slow",
        from_fn(|ms: u64, ctx: &mut Context<u64>| {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(ctx.send(ms)?)
        }),
    );
    let system = builder.spawn().unwrap();
    let handle = system.handle(&slow);

    let start = Instant::now();
    let err = handle.call_timeout(300, Duration::from_millis(20)).unwrap_err();
    let AskError::Reply(err) = err else { panic!("sent") };
    assert_eq!(err.kind(), ReplyErrorKind::TimedOut);
    assert!(start.elapsed() < Duration::from_millis(250));
    // A reply that timed out can still be read.
    let mut reply = handle.ask(1).unwrap();
    assert_eq!(reply.recv_timeout(Duration::from_millis(1)).unwrap_err().kind(), ReplyErrorKind::TimedOut);
    assert_eq!(reply.recv_timeout(WAIT).unwrap(), Some(1));

    handle.stop().unwrap();
    common::wait_until(|| handle.state().unwrap() != sophon::EntityState::Running);
    let err = handle.ask(5).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Stopped);
    assert_eq!(err.into_body(), 5);
    assert_eq!(handle.call(6).unwrap_err().into_body(), Some(6));
    system.shutdown(WAIT);
}

/// What the entity of the self-ask test takes: a handle to itself, or nothing.
enum Msg {
    Me(sophon::Handle<Msg, u8>),
    Ping,
}

#[test]
fn a_handler_asking_its_own_entity_is_refused_rather_than_waiting_forever() {
    let mut builder = SystemBuilder::new();
    let me = builder.entity(
        "me",
        from_fn(|msg: Msg, ctx: &mut Context<u8>| {
            match msg {
                Msg::Me(me) => {
                    let err = me.ask(Msg::Ping).unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::WouldDeadlock);
                    ctx.send(1)?;
                }
                Msg::Ping => ctx.send(2)?,
            }
            Ok(())
        }),
    );
    let system = builder.spawn().unwrap();
    let handle = system.handle(&me);
    assert_eq!(handle.call(Msg::Me(handle.clone())).ok(), Some(1));
    assert_eq!(handle.call(Msg::Ping).ok(), Some(2));
    assert!(system.shutdown(WAIT).is_clean());
}
