//! Entities added to and removed from a running system (`System::extend`, `System::remove`),
//! in either runtime: CI runs this suite again with `SOPHON_RUNTIME=pool`.

mod common;

use std::time::Duration;

use common::{from_fn, pass};
use sophon::crossbeam_channel;
use sophon::{
    Backend, BoxError, BuildProblem, Context, EdgeKind, EntityOptions, EntityState, ErrorKind, Node, Runtime,
    SystemBuilder,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// Sends each number to one of its query siblings in turn: every message is handled by exactly
/// one worker, whichever workers there are at the moment.
struct RoundRobin(usize);

impl Backend for RoundRobin {
    type Input = u32;
    type Output = u32;

    fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
        let workers: Vec<String> =
            ctx.siblings().filter(|s| s.kind() == EdgeKind::Query).map(|s| s.name().to_string()).collect();
        if workers.is_empty() {
            return Err(format!("no worker for {n}").into());
        }
        self.0 = self.0.wrapping_add(1);
        Ok(ctx.send_to(&workers[self.0 % workers.len()], n)?)
    }
}

#[test]
fn adding_and_removing_workers_while_a_million_messages_flow_loses_nothing() {
    const N: u32 = 1_000_000;
    let mut b = SystemBuilder::new();
    // Bounded, so that the feeder keeps pace with it and a change to its edges waits behind
    // at most 1,024 messages (it takes effect in its inbox's order).
    let router = b.entity_with("router", RoundRobin(0), EntityOptions::new().bounded(1024));
    let sink = b.entity("sink", pass::<u32>());
    let first = b.entity("worker0", pass::<u32>());
    b.query_edge(&router, &first).query_edge(&first, &sink);
    let out = b.output(&sink, "out");
    let mut system = b.spawn().unwrap();

    let feeder = system.handle(&router);
    let feeding = std::thread::spawn(move || {
        for n in 0..N {
            feeder.query(n).unwrap();
        }
    });
    // Workers come and go until every number has arrived: each new one takes its share at once,
    // each one removed hands on what it was sent before it goes.
    let mut live = vec!["worker0".to_string()];
    let (mut added, mut removed) = (1, 0);
    let mut seen = vec![false; N as usize];
    let mut received = 0;
    while received < N as usize {
        let name = format!("worker{added}");
        system
            .extend(|b| {
                let worker = b.entity(&name, pass::<u32>());
                b.query_edge(&router, &worker).query_edge(&worker, &sink);
            })
            .unwrap();
        live.push(name);
        added += 1;
        std::thread::sleep(Duration::from_millis(1));
        if live.len() > 2 {
            let gone = live.remove(0);
            let report = system.remove(&gone, DEADLINE).unwrap();
            assert_eq!(report.state, EntityState::Stopped);
            assert!(report.joined);
            assert_eq!(report.stats.undelivered, 0, "{gone}");
            assert_eq!(report.stats.handled, report.stats.received, "{gone}");
            removed += 1;
        }
        for n in out.try_iter() {
            assert!(!std::mem::replace(&mut seen[n as usize], true), "{n} arrived twice");
            received += 1;
        }
        assert!(added < 1_000_000, "the numbers stopped arriving");
    }
    feeding.join().unwrap();
    assert!(removed >= 10, "workers were removed while messages flowed: {removed}");
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert!(out.try_recv().is_err(), "nothing beyond one of each");
    let workers: u64 = report.entities.iter().filter(|e| e.name.starts_with("worker")).map(|e| e.stats.handled).sum();
    assert_eq!(workers, u64::from(N));
    assert_eq!(report.entities.len(), 2 + added);
}

#[test]
fn an_added_entity_has_a_typed_handle_and_edges_both_ways() {
    let mut b = SystemBuilder::new();
    let double = b.entity("double", from_fn(|n: u32, ctx: &mut Context<u32>| Ok(ctx.send(n * 2)?)));
    let mut system = b.spawn().unwrap();
    let (tx, out) = crossbeam_channel::unbounded();
    // Into and out of the running `double`, and an output on it.
    let plus = system
        .extend(|b| {
            let plus = b.entity("plus", from_fn(|n: u32, ctx: &mut Context<u32>| Ok(ctx.send(n + 1)?)));
            b.query_edge(&double, &plus).read_edge(&plus, &double).output_to(&plus, "out", tx);
            plus
        })
        .unwrap();
    assert_eq!(system.entity_names().collect::<Vec<_>>(), ["double", "plus"]);
    let handle = system.handle(&plus);
    assert_eq!(handle.name(), "plus");
    assert_eq!(system.handle_by_name::<u32, u32>("plus").unwrap().id(), handle.id());
    system.handle(&double).query(5).unwrap();
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), 11);
    handle.query(1).unwrap();
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), 2);
    // `plus` sends its 2 back to `double` as a read: `double` takes it in and answers nothing.
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    let double = report.entity("double").unwrap();
    assert_eq!((double.stats.received, double.stats.handled), (3, 3));
}

#[test]
fn an_edge_between_running_entities_takes_effect_between_two_messages() {
    let mut b = SystemBuilder::new();
    let source = b.entity("source", pass::<u32>());
    let a = b.entity("a", pass::<u32>());
    let c = b.entity("c", pass::<u32>());
    b.query_edge(&source, &a);
    let a_out = b.output(&a, "a");
    let mut system = b.spawn().unwrap();
    system.handle(&source).query(1).unwrap();
    assert_eq!(a_out.recv_timeout(DEADLINE).unwrap(), 1);
    let c_out = system
        .extend(|b| {
            b.query_edge(&source, &c);
            b.output(&c, "c")
        })
        .unwrap();
    for n in 2..1002 {
        system.handle(&source).query(n).unwrap();
    }
    for n in 2..1002 {
        assert_eq!(a_out.recv_timeout(DEADLINE).unwrap(), n);
        assert_eq!(c_out.recv_timeout(DEADLINE).unwrap(), n, "every message after `extend` takes the new edge");
    }
    assert!(system.shutdown(DEADLINE).is_clean());
}

#[test]
fn a_new_query_edge_that_closes_a_cycle_is_refused_and_nothing_is_added() {
    let mut b = SystemBuilder::new();
    let a = b.entity("a", pass::<u32>());
    let c = b.entity("c", pass::<u32>());
    b.query_edge(&a, &c);
    let out = b.output(&c, "out");
    let mut system = b.spawn().unwrap();
    let error = system
        .extend(|b| {
            let d = b.entity("d", pass::<u32>());
            b.query_edge(&c, &d).query_edge(&d, &a);
        })
        .unwrap_err();
    assert!(
        matches!(error.problems(), [BuildProblem::QueryCycle { cycle }] if cycle.len() == 3),
        "{:?}",
        error.problems()
    );
    // The same words as at build time.
    let mut fresh = SystemBuilder::new();
    let (fa, fc, fd) =
        (fresh.entity("a", pass::<u32>()), fresh.entity("c", pass::<u32>()), fresh.entity("d", pass::<u32>()));
    fresh.query_edge(&fa, &fc).query_edge(&fc, &fd).query_edge(&fd, &fa);
    assert_eq!(fresh.spawn().unwrap_err().to_string(), error.to_string());

    // Nothing was added: the old edges carry on, `d` is free, and a loop declared as one is
    // taken.
    assert_eq!(system.entity_names().collect::<Vec<_>>(), ["a", "c"]);
    system.handle(&a).query(7).unwrap();
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), 7);
    system
        .extend(|b| {
            let d = b.entity("d", pass::<u32>());
            b.read_edge(&c, &d).loop_edge(&d, &a);
        })
        .unwrap();
    // A duplicate edge, a name taken and a runtime are refused too, all at once.
    let error = system
        .extend(|b| {
            b.query_edge(&a, &c);
            b.entity("a", pass::<u32>());
            b.runtime(Runtime::Threads);
        })
        .unwrap_err();
    assert_eq!(error.problems().len(), 3, "{error}");
    assert!(error.to_string().contains("a running system keeps its runtime"), "{error}");
    let report = system.shutdown(DEADLINE);
    assert_eq!(report.entities.len(), 3);
}

/// Keeps numbers and sends them on in batches of 10, and what is left when it stops.
struct Batcher(Vec<u32>);

impl Backend for Batcher {
    type Input = u32;
    type Output = Vec<u32>;

    fn query(&mut self, n: u32, ctx: &mut Context<Vec<u32>>) -> Result<(), BoxError> {
        self.0.push(n);
        if self.0.len() == 10 {
            ctx.send(std::mem::take(&mut self.0))?;
        }
        Ok(())
    }

    fn nop(&mut self, ctx: &mut Context<Vec<u32>>) -> Result<(), BoxError> {
        Ok(ctx.send(std::mem::take(&mut self.0))?)
    }
}

/// The nodes of `source -> batcher -> sink`, whose sink tells the size of each batch.
struct Batching {
    source: Node<u32, u32>,
    batcher: Node<u32, Vec<u32>>,
    sink: Node<Vec<u32>, usize>,
    sizes: crossbeam_channel::Receiver<usize>,
}

fn batching(b: &mut SystemBuilder) -> Batching {
    let source = b.entity("source", pass::<u32>());
    let batcher = b.entity("batcher", Batcher(Vec::new()));
    let sink = b.entity("sink", from_fn(|batch: Vec<u32>, ctx: &mut Context<usize>| Ok(ctx.send(batch.len())?)));
    b.query_edge(&source, &batcher).query_edge(&batcher, &sink);
    let sizes = b.output(&sink, "sizes");
    Batching { source, batcher, sink, sizes }
}

#[test]
fn a_removed_entity_handles_what_was_queued_and_its_nop_reaches_downstream() {
    let mut b = SystemBuilder::new();
    let Batching { source, batcher, sink, sizes } = batching(&mut b);
    let source_out = b.output(&source, "source");
    let mut system = b.spawn().unwrap();
    for n in 0..25 {
        system.handle(&source).query(n).unwrap();
    }
    let report = system.remove("batcher", DEADLINE).unwrap();
    assert_eq!((report.stats.handled, report.stats.undelivered), (25, 0));
    assert_eq!(report.state, EntityState::Stopped);
    // Its last batch, sent by its `nop`, reached the sink, which goes on.
    let mut got: Vec<usize> = Vec::new();
    while got.iter().sum::<usize>() < 25 {
        got.push(sizes.recv_timeout(DEADLINE).unwrap());
    }
    assert_eq!(got, [10, 10, 5]);

    // Its handles refuse sends, with the body back; `source` goes on without the edge.
    let refused = system.handle(&batcher).query(99).unwrap_err();
    assert_eq!((refused.kind(), refused.into_body()), (ErrorKind::Stopped, 99));
    system.handle(&source).query(100).unwrap();
    assert_eq!(source_out.iter().nth(25), Some(100));
    assert!(system.remove("batcher", DEADLINE).is_none(), "removed already");
    assert!(system.handle_by_name::<u32, Vec<u32>>("batcher").is_none());
    assert_eq!(system.entity_names().collect::<Vec<_>>(), ["source", "sink"]);

    // Edges to it are refused; its name can be taken again.
    let error = system
        .extend(|b| {
            b.query_edge(&source, &batcher);
        })
        .unwrap_err();
    assert!(matches!(error.problems(), [BuildProblem::Removed { name }] if name == "batcher"), "{error}");
    let again = system
        .extend(|b| {
            let again = b.entity("batcher", Batcher(Vec::new()));
            b.query_edge(&source, &again).query_edge(&again, &sink);
            again
        })
        .unwrap();
    for n in 0..10 {
        system.handle(&source).query(n).unwrap();
    }
    assert_eq!(sizes.recv_timeout(DEADLINE).unwrap(), 10);
    assert_ne!(system.handle(&again).id(), report.id);
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    // Both are reported; by name, the one added last.
    assert_eq!(report.entities.iter().filter(|e| e.name == "batcher").count(), 2);
    assert_eq!(report.entity("batcher").unwrap().stats.handled, 10);
}

#[test]
fn a_system_declared_with_the_macro_can_be_extended() {
    let mut system = sophon::agent_system! {
        double = from_fn(|n: u32, ctx: &mut Context<u32>| Ok(ctx.send(n * 2)?));
    }
    .unwrap();
    let double = system.node_by_name::<u32, u32>(system.double.name()).unwrap();
    assert!(system.node_by_name::<String, u32>("double").is_none(), "the types must match");
    let out = system
        .extend(|b| {
            let plus = b.entity("plus", from_fn(|n: u32, ctx: &mut Context<u32>| Ok(ctx.send(n + 1)?)));
            b.query_edge(&double, &plus);
            b.output(&plus, "out")
        })
        .unwrap();
    system.double.query(20).unwrap();
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), 41);
    assert!(system.shutdown(DEADLINE).is_clean());
}

#[test]
fn entities_removed_together_stop_in_graph_order_among_them() {
    let mut b = SystemBuilder::new();
    let Batching { source, sizes, .. } = batching(&mut b);
    let mut system = b.spawn().unwrap();
    for n in 0..25 {
        system.handle(&source).query(n).unwrap();
    }
    // The sink is named first, and still stops after the batcher: it handles the last batch,
    // which the batcher sends as it stops.
    let reports = system.remove_all(["sink", "nobody", "batcher", "sink"], DEADLINE);
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["sink", "batcher"]);
    assert!(reports.iter().all(|r| r.joined && r.stats.undelivered == 0 && r.state == EntityState::Stopped));
    assert_eq!(reports[0].stats.handled, 3);
    assert_eq!(sizes.try_iter().collect::<Vec<_>>(), [10, 10, 5]);
    assert_eq!(system.entity_names().collect::<Vec<_>>(), ["source"]);
    system.handle(&source).query(1).unwrap();
    assert!(system.shutdown(DEADLINE).is_clean());
}

#[test]
fn a_removal_past_its_deadline_reports_what_was_left() {
    let (release_tx, release) = crossbeam_channel::unbounded::<()>();
    let mut b = SystemBuilder::new();
    // Waits for a release on each message: blocked, as a handler on a terminal would be.
    let stuck = b.entity_with(
        "stuck",
        from_fn(move |_: u32, _: &mut Context<u32>| {
            release.recv()?;
            Ok(())
        }),
        sophon::EntityOptions::new().thread(),
    );
    let mut system = b.spawn().unwrap();
    for n in 0..5 {
        system.handle(&stuck).query(n).unwrap();
    }
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..5 {
            let _ = release_tx.send(());
        }
    });
    let report = system.remove("stuck", Duration::from_millis(50)).unwrap();
    // The first message was being handled; the other four were queued when the deadline passed.
    assert_eq!(report.stats.undelivered, 4, "{report:?}");
    assert!(!report.joined, "still in its handler after the grace");
    releaser.join().unwrap();
    let report = system.shutdown(DEADLINE);
    assert_eq!(report.entities[0].stats.handled, 1);
}

#[test]
fn the_drawing_follows_the_running_graph() {
    let mut b = SystemBuilder::new();
    let person = b.entity("person", pass::<u32>());
    let model = b.entity("model", pass::<u32>());
    let log = b.entity("log", pass::<u32>());
    b.query_edge(&person, &model).loop_edge(&model, &person).read_edge(&model, &log);
    let mut system = b.spawn().unwrap();
    let figures = "handled 0<br/>queued 0";
    assert_eq!(
        system.mermaid(),
        format!(
            "flowchart LR\n    n0[\"person<br/>{figures}\"]\n    n1[\"model<br/>{figures}\"]\n    n2[\"log<br/>{figures}\"]\n    n0 -->|\"0 sent\"| n1\n    n1 ==>|\"loop 0 sent\"| n0\n    n1 -.->|\"0 sent\"| n2\n"
        )
    );
    let out = system.extend(|b| b.output(&log, "out")).unwrap();
    system.handle(&log).query(5).unwrap();
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), 5);
    // Published between batches: it may lag a moment behind the send.
    common::wait_until(|| system.edges()[3].sent == 1);
    let drawn = system.mermaid();
    assert!(drawn.contains("    n3([\"out\"])\n"), "{drawn}");
    assert!(drawn.ends_with("    n2 -->|\"1 sent\"| n3\n"), "{drawn}");
    let edges = system.edges();
    assert_eq!(edges.len(), 4);
    assert_eq!((edges[3].from.as_str(), edges[3].to.as_str(), edges[3].sent), ("log", "out", 1));
    assert!(edges[1].intended_loop);
    system.remove("log", DEADLINE).unwrap();
    assert_eq!(
        system.dot(),
        "digraph {\n    rankdir=LR;\n    n0 [label=\"person\\nhandled 0\\nqueued 0\", shape=box];\n    n1 [label=\"model\\nhandled 0\\nqueued 0\", shape=box];\n    n0 -> n1 [label=\"0 sent\"];\n    n1 -> n0 [label=\"loop 0 sent\", style=bold];\n}\n"
    );
    assert!(system.shutdown(DEADLINE).is_clean());
}

#[test]
fn each_edge_counts_what_it_carried() {
    const N: u32 = 10_000;
    let mut b = SystemBuilder::new();
    let source = b.entity("source", pass::<u32>());
    let even = b.entity(
        "even",
        from_fn(|n: u32, ctx: &mut Context<u32>| if n.is_multiple_of(2) { Ok(ctx.send(n)?) } else { Ok(()) }),
    );
    let log = b.entity("log", pass::<u32>());
    let gone = b.entity("gone", pass::<u32>());
    b.query_edge(&source, &even).read_edge(&source, &log).read_edge(&source, &gone);
    let out = b.output(&even, "out");
    let system = b.spawn().unwrap();
    system.handle(&gone).stop().unwrap();
    common::wait_until(|| system.handle(&gone).state().unwrap() != EntityState::Running);
    for n in 0..N {
        system.handle(&source).query(n).unwrap();
    }
    assert_eq!(out.iter().take(N as usize / 2).count(), N as usize / 2);
    let report = system.shutdown(DEADLINE);
    let sent: Vec<(&str, &str, u64)> = report.edges.iter().map(|e| (e.from.as_str(), e.to.as_str(), e.sent)).collect();
    // What the stopped entity refused is not counted: it is the sender's error.
    assert_eq!(
        sent,
        [("source", "even", 10_000), ("source", "log", 10_000), ("source", "gone", 0), ("even", "out", 5_000)]
    );
    assert_eq!(report.entity("source").unwrap().stats.errors, u64::from(N));
    assert!(report.to_string().contains("source ~> log: 10000 sent"), "{report}");
}

#[test]
fn the_snapshot_and_the_report_serialize() {
    let mut b = SystemBuilder::new();
    let parse = b.entity("parse", from_fn(|s: String, ctx: &mut Context<u32>| Ok(ctx.send(s.parse::<u32>()?)?)));
    let out = b.output(&parse, "out");
    let system = b.spawn().unwrap();
    system.handle(&parse).query("12".to_string()).unwrap();
    system.handle(&parse).query("x".to_string()).unwrap();
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), 12);
    common::wait_until(|| system.snapshot().entities[0].stats.handled == 2);
    let snapshot = serde_json::to_value(system.snapshot()).unwrap();
    assert_eq!(snapshot["entities"][0]["name"], "parse");
    assert_eq!(snapshot["entities"][0]["state"], "Running");
    assert_eq!(snapshot["entities"][0]["stats"]["handled"], 2);
    assert_eq!(snapshot["entities"][0]["stats"]["errors"], 1);
    assert_eq!(snapshot["edges"][0]["kind"], "Output");
    let report = serde_json::to_value(system.shutdown(DEADLINE)).unwrap();
    assert_eq!(report["entities"][0]["state"], "Stopped");
    assert_eq!(report["failures"][0]["entity"], "parse");
    assert_eq!(report["failures"][0]["kind"], "Query");
    assert_eq!(report["failures"][0]["message"], "invalid digit found in string");
    assert_eq!(report["edges"][0]["sent"], 1);
    assert_eq!(report["timed_out"], false);
}

#[test]
fn handling_times_are_reported_as_a_distribution() {
    let mut b = SystemBuilder::new();
    // Nine messages in ten take 200 us, one takes 5 ms.
    let worker = b.entity_with(
        "worker",
        from_fn(|n: u32, _: &mut Context<u32>| {
            let pause = if n % 10 == 9 { 5_000 } else { 200 };
            std::thread::sleep(Duration::from_micros(pause));
            Ok(())
        }),
        sophon::EntityOptions::new().thread(),
    );
    let system = b.spawn().unwrap();
    assert_eq!(system.handle(&worker).stats().unwrap().handling, sophon::Latency::default());
    for n in 0..100 {
        system.handle(&worker).query(n).unwrap();
    }
    let report = system.shutdown(DEADLINE);
    let stats = report.entity("worker").unwrap().stats;
    let latency = stats.handling;
    assert_eq!(stats.handled, 100);
    assert!(latency.p50 >= Duration::from_micros(200) && latency.p50 < Duration::from_millis(5), "{latency:?}");
    assert!(latency.p99 >= Duration::from_millis(5) && latency.p99 <= stats.max, "{latency:?} {:?}", stats.max);
    assert!(latency.p50 <= latency.p90 && latency.p90 <= latency.p99, "{latency:?}");
    assert!(report.to_string().contains(&format!("p99 {:?}", latency.p99)), "{report}");
}

#[test]
fn the_deepest_queue_is_remembered() {
    let (open, gate) = crossbeam_channel::bounded::<()>(1);
    let mut b = SystemBuilder::new();
    // Waits at the gate on its first message: the rest pile up behind it.
    let mut first = true;
    let slow = b.entity_with(
        "slow",
        from_fn(move |_: u32, _: &mut Context<u32>| {
            if std::mem::take(&mut first) {
                gate.recv()?;
            }
            Ok(())
        }),
        sophon::EntityOptions::new().thread(),
    );
    let system = b.spawn().unwrap();
    for n in 0..1_000 {
        system.handle(&slow).query(n).unwrap();
    }
    common::wait_until(|| system.handle(&slow).stats().unwrap().received == 1);
    assert_eq!(system.handle(&slow).stats().unwrap().max_queued, 999, "what is queued now, at least");
    open.send(()).unwrap();
    let report = system.shutdown(DEADLINE);
    let stats = report.entity("slow").unwrap().stats;
    assert_eq!((stats.handled, stats.queued), (1_000, 0));
    assert!(stats.max_queued >= 990, "{stats:?}");
}

#[test]
fn throughput_is_counted_over_the_last_second() {
    let mut b = SystemBuilder::new();
    let worker = b.entity("worker", pass::<u32>());
    let system = b.spawn().unwrap();
    let handle = system.handle(&worker);
    assert_eq!(handle.stats().unwrap().per_second, 0);
    // About 2,000 a second for 1.5 s: a query every half millisecond.
    let start = std::time::Instant::now();
    let mut sent = 0u32;
    while start.elapsed() < Duration::from_millis(1_500) {
        let due = start + Duration::from_micros(500) * sent;
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        handle.query(sent).unwrap();
        sent += 1;
    }
    common::wait_until(|| handle.stats().unwrap().handled == u64::from(sent));
    let busy = handle.stats().unwrap().per_second;
    assert!((1_200..=2_400).contains(&busy), "{busy} a second, at about 2,000 a second");
    // A second and a half later, with nothing sent, the window has emptied.
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(handle.stats().unwrap().per_second, 0);
    system.shutdown(DEADLINE);
}

#[test]
fn time_waiting_in_the_queue_is_a_distribution() {
    let mut b = SystemBuilder::new();
    let slow = b.entity_with(
        "slow",
        from_fn(|_: u32, _: &mut Context<u32>| {
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        }),
        sophon::EntityOptions::new().thread(),
    );
    let quick = b.entity("quick", pass::<u32>());
    let system = b.spawn().unwrap();
    // 300 at once: the last waits for the 299 before it, some 300 ms.
    for n in 0..300 {
        system.handle(&slow).query(n).unwrap();
    }
    // One at a time: none waits.
    for n in 0..300 {
        system.handle(&quick).query(n).unwrap();
        common::wait_until(|| system.handle(&quick).stats().unwrap().handled == u64::from(n) + 1);
    }
    let report = system.shutdown(DEADLINE);
    let waiting = report.entity("slow").unwrap().stats.waiting;
    assert!(waiting.p50 >= Duration::from_millis(50) && waiting.p50 <= Duration::from_millis(400), "{waiting:?}");
    assert!(waiting.p99 >= Duration::from_millis(150) && waiting.p99 >= waiting.p90, "{waiting:?}");
    let max = report.entity("slow").unwrap().stats.max_waiting;
    assert!(max >= waiting.p99 && max < Duration::from_secs(2), "{max:?}");
    let waiting = report.entity("quick").unwrap().stats.waiting;
    assert!(waiting.p99 < Duration::from_millis(1), "{waiting:?}");
}
