//! Replicated entities (`SystemBuilder::replicas`): routing by measured latency, culling,
//! probing and rejoining, rerouting what a failed replica held, saved rankings; in either
//! runtime (CI runs this suite again with `SOPHON_RUNTIME=pool`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sophon::crossbeam_channel::Receiver;
use sophon::{
    Backend, BoxBackend, BoxError, BuildProblem, Context, EdgeKind, EntityState, ErrorKind, RankedReplica, Ranking,
    Report, SystemBuilder,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// A replica that answers `(its id, the query)` after a delay it reads at each query, fails
/// while `failing` is set, and panics on its `panic_at`th query.
#[derive(Clone)]
struct Sim {
    id: usize,
    delay_us: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
    panic_at: Option<u32>,
    queries: u32,
}

impl Sim {
    fn new(id: usize, delay: Duration) -> Self {
        Sim {
            id,
            delay_us: Arc::new(AtomicU64::new(delay.as_micros() as u64)),
            failing: Arc::new(AtomicBool::new(false)),
            panic_at: None,
            queries: 0,
        }
    }
}

impl Backend for Sim {
    type Input = u32;
    type Output = (usize, u32);

    fn query(&mut self, n: u32, ctx: &mut Context<(usize, u32)>) -> Result<(), BoxError> {
        std::thread::sleep(Duration::from_micros(self.delay_us.load(Ordering::Relaxed)));
        self.queries += 1;
        if self.panic_at == Some(self.queries) {
            panic!("replica {} panics on {n}", self.id);
        }
        if self.failing.load(Ordering::Relaxed) {
            return Err(format!("replica {} is down", self.id).into());
        }
        Ok(ctx.send((self.id, n))?)
    }

    // Sleeps in its handler, as a model or a remote call would.
    fn blocking(&self) -> bool {
        true
    }
}

fn boxed(sims: &[Sim]) -> Vec<BoxBackend<u32, (usize, u32)>> {
    sims.iter().map(|s| Box::new(s.clone()) as BoxBackend<u32, (usize, u32)>).collect()
}

/// Sends `n` queries from `first` on through `send`, keeping `window` of them in flight: a new
/// one each time an answer (or, for a query whose handler failed, a timeout) comes back. Returns
/// the answers.
fn drive(
    mut send: impl FnMut(u32),
    out: &Receiver<(usize, u32)>,
    first: u32,
    n: u32,
    window: u32,
) -> Vec<(usize, u32)> {
    let mut answers = Vec::new();
    let mut next = first;
    let end = first + n;
    while next < end && next < first + window {
        send(next);
        next += 1;
    }
    let mut outstanding = next - first;
    while outstanding > 0 {
        // A failed query answers nothing: after a while, go on as if it had.
        if let Ok(answer) = out.recv_timeout(Duration::from_millis(100)) {
            answers.push(answer);
        }
        outstanding -= 1;
        if next < end {
            send(next);
            next += 1;
            outstanding += 1;
        }
    }
    answers
}

fn replica_handled(report: &Report, name: &str) -> u64 {
    report.entity(name).unwrap_or_else(|| panic!("no entity {name}")).stats.handled
}

#[test]
fn four_replicas_of_one_one_one_and_ten_ms_send_nine_tenths_to_the_fast_three() {
    let sims: Vec<Sim> =
        [1, 1, 1, 10].iter().enumerate().map(|(i, &ms)| Sim::new(i, Duration::from_millis(ms))).collect();
    let mut b = SystemBuilder::new();
    let model = b.replicas("model", boxed(&sims));
    let out = b.output(&model, "out");
    let system = b.spawn().unwrap();
    let handle = system.handle(&model);
    assert_eq!(handle.name(), "model");
    assert_eq!(handle.replicas().len(), 4);

    let answers = drive(|n| handle.query(n).unwrap(), &out, 0, 2_000, 4);
    assert_eq!(answers.len(), 2_000);
    let distinct: HashSet<u32> = answers.iter().map(|&(_, n)| n).collect();
    assert_eq!(distinct.len(), 2_000, "every query answered once");

    // The running graph draws the entity as a hexagon, and each replica's share.
    let drawn = system.mermaid();
    assert!(drawn.contains("n0{{\"model\"}}"), "{drawn}");
    assert!(drawn.contains(" --o|\""), "{drawn}");
    assert!(drawn.contains("% \"| n") || drawn.contains("%\"| n"), "{drawn}");
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    let fast: u64 = (0..3).map(|i| replica_handled(&report, &format!("model/{i}"))).sum();
    let slow = replica_handled(&report, "model/3");
    assert_eq!(fast + slow, 2_000, "{report}");
    assert!(fast >= 1_800, "fast three handled {fast}, the slow one {slow}\n{report}");
    // The handles' ranking puts the slow replica last.
    let ranking = report.rankings.iter().find(|r| r.relationship == sophon::HANDLES).unwrap();
    assert_eq!(ranking.entity, "model");
    assert_eq!(ranking.replicas.last().unwrap().name, "model/3", "{ranking:?}");
    // The drawn graph shows each replica's share.
    let edges: Vec<_> = report.edges.iter().filter(|e| e.kind == EdgeKind::Replica).collect();
    assert_eq!(edges.len(), 4);
    assert_eq!(edges.iter().map(|e| e.sent).sum::<u64>(), 2_000);
}

#[test]
fn a_replica_that_always_errs_is_culled_only_probed_and_rejoins_once_it_recovers() {
    let sims: Vec<Sim> = (0..3).map(|i| Sim::new(i, Duration::from_micros(500))).collect();
    sims[1].failing.store(true, Ordering::Relaxed);
    let mut b = SystemBuilder::new();
    let model = b.replicas("model", boxed(&sims));
    let out = b.output(&model, "out");
    let system = b.spawn().unwrap();
    let handle = system.handle(&model);
    let failing = handle.replicas()[1].clone();
    assert_eq!(failing.name(), "model/1");

    let answers = drive(|n| handle.query(n).unwrap(), &out, 0, 2_000, 2);
    let failed = 2_000 - answers.len() as u64;
    let errors = failing.stats().unwrap().errors;
    assert_eq!(failed, errors, "a query fails only where it was handled by the failing replica");
    assert!(failed < 20, "{failed} of 2000 failed: under 1%");
    let ranking = system.rankings().into_iter().find(|r| r.relationship == sophon::HANDLES).unwrap();
    let culled = ranking.replicas.iter().find(|r| r.name == "model/1").unwrap();
    assert!(culled.culled && culled.culls == 1, "{ranking:?}");

    // While culled it gets probes only: one every 50 ms at first, then backing off to one every
    // 2 s; so at least one, and a handful at most, over 2.5 s of traffic.
    let before = failing.stats().unwrap().received;
    let started = Instant::now();
    let mut n = 2_000;
    while started.elapsed() < Duration::from_millis(2_500) {
        n += drive(|n| handle.query(n).unwrap(), &out, n, 50, 2).len() as u32;
    }
    let probes = failing.stats().unwrap().received - before;
    assert!((1..=8).contains(&probes), "{probes} probes in 2.5 s");

    // It recovers: the next probe lets it rejoin, and it takes its share again.
    sims[1].failing.store(false, Ordering::Relaxed);
    let started = Instant::now();
    loop {
        let answers = drive(|n| handle.query(n).unwrap(), &out, n, 200, 2);
        n += 200;
        let rejoined = answers.iter().filter(|&&(id, _)| id == 1).count();
        if rejoined > 20 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "model/1 never rejoined");
    }
    let ranking = system.rankings().into_iter().find(|r| r.relationship == sophon::HANDLES).unwrap();
    assert!(ranking.replicas.iter().all(|r| !r.culled), "{ranking:?}");
    let report = system.shutdown(DEADLINE);
    assert_eq!(report.undelivered(), 0);
}

#[test]
fn a_replica_that_panics_mid_stream_loses_nothing() {
    const N: u32 = 3_000;
    let mut sims: Vec<Sim> = (0..3).map(|i| Sim::new(i, Duration::from_micros(200))).collect();
    sims[0].panic_at = Some(10);
    let mut b = SystemBuilder::new();
    let model = b.replicas("model", boxed(&sims));
    let out = b.output(&model, "out");
    let system = b.spawn().unwrap();
    let handle = system.handle(&model);
    // Everything at once: each replica has hundreds queued when the first one panics.
    for n in 0..N {
        handle.query(n).unwrap();
    }
    let mut seen = HashSet::new();
    for _ in 0..N {
        let (_, n) = out.recv_timeout(Duration::from_secs(20)).expect("every query is answered");
        assert!(seen.insert(n), "{n} answered twice");
    }
    assert_eq!(system.handle_by_name::<u32, (usize, u32)>("model/0").unwrap().state().unwrap(), EntityState::Failed);
    let failure = system.failures().recv().unwrap();
    assert!(failure.panicked && failure.entity == "model/0");
    let report = system.shutdown(DEADLINE);
    let failed = report.entity("model/0").unwrap();
    assert_eq!(failed.stats.undelivered, 0, "{report}");
    // What was queued at it, and the query it panicked on, went to the others.
    assert!(failed.stats.rerouted > 1, "{report}");
    assert_eq!(report.undelivered(), 0);
    assert!(!report.timed_out);
}

#[test]
fn a_saved_ranking_routes_the_first_query_of_a_new_run_to_the_fast_replica() {
    // The slow replica first, so that neither order nor chance makes the fast one first.
    let run = |rankings: Vec<Ranking>| {
        let sims = [Sim::new(0, Duration::from_millis(20)), Sim::new(1, Duration::from_millis(1))];
        let mut b = SystemBuilder::new();
        b.rankings(rankings);
        let model = b.replicas("model", boxed(&sims));
        let out = b.output(&model, "out");
        let system = b.spawn().unwrap();
        let handle = system.handle(&model);
        let answers = drive(|n| handle.query(n).unwrap(), &out, 0, 40, 1);
        (answers[0].0, system.shutdown(DEADLINE))
    };
    // A first run learns; its report's ranking is what a program would save, and read back.
    let (_, report) = run(Vec::new());
    let saved = serde_json::to_string(&report.rankings).unwrap();
    let learnt: Vec<Ranking> = serde_json::from_str(&saved).unwrap();
    assert_eq!(learnt, report.rankings);
    assert_eq!(learnt[0].best().unwrap().name, "model/1", "{learnt:?}");
    for _ in 0..10 {
        let (first, _) = run(learnt.clone());
        assert_eq!(first, 1, "the first query went to the slow replica");
    }
    // A ranking written by hand (or read back from a file) does the same.
    let saved = Ranking::new(
        "model",
        sophon::HANDLES,
        vec![
            RankedReplica::new("model/1", Some(Duration::from_millis(1))),
            RankedReplica::new("model/0", Some(Duration::from_millis(20))),
        ],
    );
    assert_eq!(run(vec![saved]).0, 1);
}

#[test]
fn a_replica_that_slows_down_stops_getting_new_work_within_two_of_its_slow_service_times() {
    let sims: Vec<Sim> = (0..3).map(|i| Sim::new(i, Duration::from_millis(1))).collect();
    let mut b = SystemBuilder::new();
    let model = b.replicas("model", boxed(&sims));
    let out = b.output(&model, "out");
    let system = b.spawn().unwrap();
    let handle = system.handle(&model);
    drive(|n| handle.query(n).unwrap(), &out, 0, 300, 3);
    let slowing = handle.replicas()[2].clone();
    sims[2].delay_us.store(20_000, Ordering::Relaxed);
    let slowed_at = Instant::now();
    let before = slowing.stats().unwrap().received;
    // At about a query a millisecond for 400 ms, with a few in flight.
    let answers = drive(
        |n| {
            std::thread::sleep(Duration::from_micros(500));
            handle.query(n).unwrap()
        },
        &out,
        300,
        400,
        3,
    );
    assert_eq!(answers.len(), 400);
    let taken = slowing.stats().unwrap().received - before;
    // Two of its slow service times (40 ms) hold some 40 queries: it took only a few of them,
    // and none later.
    assert!(taken <= 8, "the slowed replica took {taken} queries after it slowed down");
    assert!(slowed_at.elapsed() > Duration::from_millis(150));
    system.shutdown(DEADLINE);
}

#[test]
fn edges_into_a_replicated_entity_route_queries_and_every_replica_reads() {
    /// Counts reads, and answers queries with its count.
    struct Reader(usize, u32);
    impl Backend for Reader {
        type Input = u32;
        type Output = (usize, u32);
        fn query(&mut self, _: u32, ctx: &mut Context<(usize, u32)>) -> Result<(), BoxError> {
            Ok(ctx.send((self.0, self.1))?)
        }
        fn read(&mut self, _: u32, _: &mut Context<(usize, u32)>) -> Result<(), BoxError> {
            self.1 += 1;
            Ok(())
        }
    }
    let mut b = SystemBuilder::new();
    let source = b.entity("source", common_pass());
    let reads = b.entity("reads", common_pass());
    let model = b.replicas("model", (0..3).map(|i| Reader(i, 0)));
    b.query_edge(&source, &model);
    b.read_edge(&reads, &model);
    let out = b.output(&model, "out");
    let system = b.spawn().unwrap();
    for n in 0..10 {
        system.handle(&reads).query(n).unwrap();
    }
    // Reads and queries come by different edges: wait until the reads are in.
    let handle = system.handle(&model);
    while handle.stats().unwrap().handled < 30 {
        std::thread::yield_now();
    }
    for n in 0..30 {
        system.handle(&source).query(n).unwrap();
    }
    let answers: Vec<(usize, u32)> = out.iter().take(30).collect();
    assert!(answers.iter().all(|&(_, reads)| reads == 10), "every replica read all ten: {answers:?}");
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.rankings.iter().map(|r| r.relationship.as_str()).collect::<Vec<_>>(), ["source"]);
    let routed: u64 = report.edges.iter().filter(|e| e.kind == EdgeKind::Replica).map(|e| e.sent).sum();
    assert_eq!(routed, 30);
}

fn common_pass() -> impl Backend<Input = u32, Output = u32> {
    struct Pass;
    impl Backend for Pass {
        type Input = u32;
        type Output = u32;
        fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
            Ok(ctx.send(n)?)
        }
    }
    Pass
}

#[test]
fn one_replica_is_swapped_alone_and_one_removed_while_the_others_serve() {
    let sims: Vec<Sim> = (0..3).map(|i| Sim::new(i, Duration::from_micros(100))).collect();
    let mut b = SystemBuilder::new();
    let model = b.replicas("model", boxed(&sims));
    let out = b.output(&model, "out");
    let mut system = b.spawn().unwrap();
    let handle = system.handle(&model);
    // The entity's handle refuses a swap: which replica would it be?
    let refused = handle.swap(Sim::new(9, Duration::ZERO)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Replicated);
    let old = handle.replicas()[0].swap(Sim::new(7, Duration::from_micros(100))).unwrap();
    assert_eq!(old.downcast::<Sim>().ok().unwrap().id, 0);
    let answers = drive(|n| handle.query(n).unwrap(), &out, 0, 300, 3);
    let ids: HashSet<usize> = answers.iter().map(|&(id, _)| id).collect();
    assert!(ids.contains(&7) && !ids.contains(&0), "{ids:?}");

    let removed = system.remove("model/1", DEADLINE).unwrap();
    assert_eq!(removed.stats.undelivered, 0);
    let answers = drive(|n| handle.query(n).unwrap(), &out, 300, 300, 3);
    assert_eq!(answers.len(), 300);
    assert!(answers.iter().all(|&(id, _)| id != 1));
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_replicated_entity_needs_a_replica() {
    let mut b = SystemBuilder::new();
    b.replicas("model", Vec::<Sim>::new());
    let error = b.spawn().unwrap_err();
    assert!(matches!(error.problems(), [BuildProblem::NoReplicas { name }] if name == "model"), "{error:?}");
}

#[test]
fn a_replica_added_while_the_system_runs_takes_its_share_with_the_entitys_edges() {
    let sims: Vec<Sim> = (0..2).map(|i| Sim::new(i, Duration::from_millis(2))).collect();
    let mut b = SystemBuilder::new();
    let source = b.entity("source", common_pass());
    let model = b.replicas("model", boxed(&sims));
    b.query_edge(&source, &model);
    let out = b.output(&model, "out");
    let mut system = b.spawn().unwrap();
    let source = system.handle(&source);
    drive(|n| source.query(n).unwrap(), &out, 0, 100, 2);

    // A third, faster one: it gets the entity's output edge, and the source's edge routes to it.
    let added = system.extend(|b| b.add_replica(&model, Sim::new(2, Duration::from_micros(200)))).unwrap();
    assert_eq!(system.handle(&added).name(), "model/2");
    let answers = drive(|n| source.query(n).unwrap(), &out, 100, 300, 2);
    assert_eq!(answers.len(), 300);
    let by_new = answers.iter().filter(|&&(id, _)| id == 2).count();
    assert!(by_new > 100, "the added replica answered {by_new} of 300");
    assert_eq!(system.handle(&model).replicas().len(), 3);

    // Only a replicated entity takes replicas; a refused extension adds nothing.
    let refused = system.extend(|b| {
        let plain = b.entity("plain", Sim::new(9, Duration::ZERO));
        b.add_replica(&plain, Sim::new(10, Duration::ZERO));
    });
    let error = refused.unwrap_err();
    assert!(matches!(error.problems(), [BuildProblem::NotReplicated { name }] if name == "plain"), "{error}");
    assert_eq!(system.handle(&model).replicas().len(), 3);
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("model/2").unwrap().stats.handled as usize, by_new);
}

#[test]
fn bounded_replicas_take_a_burst_from_an_edge_and_lose_nothing() {
    let sims: Vec<Sim> = (0..3).map(|i| Sim::new(i, Duration::from_micros(50))).collect();
    let mut b = SystemBuilder::new();
    let source = b.entity("source", common_pass());
    let model = b.replicas_with("model", boxed(&sims), sophon::EntityOptions::new().bounded(2));
    b.query_edge(&source, &model);
    let out = b.output(&model, "out");
    let system = b.spawn().unwrap();
    for n in 0..2_000 {
        system.handle(&source).query(n).unwrap();
    }
    // Each exactly once. (In the order sent, per replica, unless a replica is culled on the
    // way, which a loaded machine can make one seem: what was queued at it goes elsewhere.)
    let mut seen = HashSet::new();
    for _ in 0..2_000 {
        let (_, n) = out.recv_timeout(DEADLINE).expect("every query is answered");
        assert!(seen.insert(n), "{n} twice");
    }
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
}
