//! Output ports at run time: routing by variant, whole-output edges beside port edges, `send_to`
//! and `send_except` with ports, and duplicate edges.

mod common;

use std::time::Duration;

use common::from_fn;
use sophon::{BuildProblem, Context, Ports, SystemBuilder};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Ports)]
enum Sorted {
    Even(u32),
    Odd(u32),
    Zero,
}

fn sort(n: u32) -> Sorted {
    match n {
        0 => Sorted::Zero,
        n if n % 2 == 0 => Sorted::Even(n),
        n => Sorted::Odd(n),
    }
}

impl From<u32> for Sorted {
    fn from(n: u32) -> Self {
        sort(n)
    }
}

#[test]
fn each_value_goes_to_the_edges_of_its_port_and_to_those_of_the_whole_output() {
    let mut builder = SystemBuilder::new();
    let sorter = builder.entity("sorter", from_fn(|n: u32, ctx: &mut Context<Sorted>| Ok(ctx.send(sort(n))?)));
    let halve = builder.entity("halve", from_fn(|n: u32, ctx: &mut Context<u32>| Ok(ctx.send(n / 2)?)));
    builder.port_query_edge(&sorter, Sorted::ports().even, &halve);
    let halves = builder.output(&halve, "halves");
    let odds = builder.port_output(&sorter, Sorted::ports().odd, "odds");
    let zeros = builder.port_output(&sorter, Sorted::ports().zero, "zeros");
    let everything = builder.output(&sorter, "everything");
    let system = builder.spawn().unwrap();
    let handle = system.handle(&sorter);
    for n in 0..10 {
        handle.query(n).unwrap();
    }
    let report = system.shutdown(WAIT);
    assert!(report.is_clean(), "{report}");
    assert_eq!(halves.try_iter().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(odds.try_iter().collect::<Vec<_>>(), [1, 3, 5, 7, 9]);
    assert_eq!(zeros.try_iter().collect::<Vec<_>>(), [()]);
    assert_eq!(everything.try_iter().collect::<Vec<_>>(), (0..10).map(sort).collect::<Vec<_>>());
    // Each value counted once per edge it went to: 10 to `everything`, 10 to its port.
    assert_eq!(report.entity("sorter").unwrap().stats.sent, 20);
}

#[test]
fn send_to_and_send_except_keep_to_the_ports() {
    let mut builder = SystemBuilder::new();
    let sorter = builder.entity(
        "sorter",
        from_fn(|n: u32, ctx: &mut Context<Sorted>| {
            if n == 100 {
                // `odds` is attached to the odd port: an even value has no way there.
                let err = ctx.send_to("odds", Sorted::Even(100)).unwrap_err();
                assert_eq!(err.kind(), sophon::ErrorKind::UnknownSibling);
                return Ok(ctx.send_except("all", Sorted::Even(100))?);
            }
            Ok(ctx.send_to("odds", sort(n))?)
        }),
    );
    let odds = builder.port_output(&sorter, Sorted::ports().odd, "odds");
    let evens = builder.port_output(&sorter, Sorted::ports().even, "evens");
    let all = builder.output(&sorter, "all");
    let system = builder.spawn().unwrap();
    let handle = system.handle(&sorter);
    handle.query(7).unwrap();
    handle.query(100).unwrap();
    let report = system.shutdown(WAIT);
    assert!(report.is_clean(), "{report}");
    assert_eq!(odds.try_iter().collect::<Vec<_>>(), [7]);
    assert_eq!(evens.try_iter().collect::<Vec<_>>(), [100]);
    assert!(all.try_recv().is_err());
}

#[test]
fn a_port_edge_beside_an_edge_of_the_whole_output_to_the_same_entity_is_a_duplicate() {
    let mut builder = SystemBuilder::new();
    let sorter = builder.entity("sorter", from_fn(|n: u32, ctx: &mut Context<Sorted>| Ok(ctx.send(sort(n))?)));
    let sink = builder.entity("sink", from_fn(|_: u32, _: &mut Context<()>| Ok(())));
    builder.port_query_edge(&sorter, Sorted::ports().even, &sink);
    builder.port_query_edge(&sorter, Sorted::ports().odd, &sink);
    assert!(builder.spawn().is_ok(), "two ports to one entity are two edges");

    let mut builder = SystemBuilder::new();
    let sorter = builder.entity("sorter", from_fn(|n: u32, ctx: &mut Context<Sorted>| Ok(ctx.send(sort(n))?)));
    let sink = builder.entity("sink", from_fn(|_: Sorted, _: &mut Context<()>| Ok(())));
    builder.query_edge(&sorter, &sink);
    builder.port_query_edge(&sorter, Sorted::ports().even, &sink);
    let err = builder.spawn().unwrap_err();
    assert!(matches!(&err.problems()[0], BuildProblem::DuplicateEdge { from, to } if from == "sorter" && to == "sink"));
}

#[test]
fn ports_have_names_and_indices() {
    let ports = Sorted::ports();
    assert_eq!((ports.even.name(), ports.even.index()), ("even", 0));
    assert_eq!((ports.zero.name(), ports.zero.index()), ("zero", 2));
    assert_eq!(Sorted::Odd(3).port(), 1);
    assert_eq!(Sorted::Zero.port_name(), "zero");
}
