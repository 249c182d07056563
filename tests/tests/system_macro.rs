//! Systems declared with `agent_system!`: the runtime behaviours, through the macro.

use std::time::Duration;

use sophon::{Context, agent_system, backend};

const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Pass;

#[backend]
impl Pass {
    fn query(&mut self, n: u64) -> u64 {
        n
    }
}

/// Remembers what it reads; answers a query with how many it has read.
#[derive(Default)]
struct Memory(u64);

#[backend]
impl Memory {
    fn query(&mut self, _: u64) -> u64 {
        self.0
    }

    fn read(&mut self, _: u64) {
        self.0 += 1;
    }
}

struct Slow;

#[backend]
impl Slow {
    fn query(&mut self, n: u64) -> u64 {
        std::thread::sleep(Duration::from_micros(100));
        n
    }
}

#[test]
fn a_pipeline_delivers_in_order() -> Result<(), Box<dyn std::error::Error>> {
    const N: u64 = 100_000;
    let system = agent_system! {
        a = Pass;
        b = Pass;
        c: Pass = Pass;
        d = Pass;
        a -> b;
        b -> c;
        c -> d;
        d -> output(out);
    }?;
    for i in 0..N {
        system.a.query(i)?;
    }
    assert!(system.out.iter().take(N as usize).eq(0..N));
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("d").unwrap().stats.handled, N);
    Ok(())
}

#[test]
fn fan_out_broadcasts_and_reads_answer_nothing() -> Result<(), Box<dyn std::error::Error>> {
    let system = agent_system! {
        source = Pass;
        left = Pass;
        right = Pass;
        log = Memory::default();
        source -> [left, right];
        source ~> log;
        left -> output(both);
        right -> output(both);
        log -> output(count);
    }?;
    for i in 0..3 {
        system.source.query(i)?;
    }
    let mut both: Vec<u64> = system.both.iter().take(6).collect();
    both.sort();
    assert_eq!(both, [0, 0, 1, 1, 2, 2]);
    system.log.query(0)?;
    assert_eq!(system.count.recv()?, 3, "the log read all three and answered none of them");
    assert!(system.count.try_recv().is_err());
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    Ok(())
}

#[test]
fn shutdown_loses_nothing_in_flight_and_options_apply() -> Result<(), Box<dyn std::error::Error>> {
    let system = agent_system! {
        fast = Pass;
        #[bounded(4)]
        slow = Slow;
        fast -> slow;
        slow -> output(out);
    }?;
    for i in 0..200 {
        system.fast.query(i)?;
    }
    let out = system.out.clone();
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(out.try_iter().collect::<Vec<_>>(), (0..200).collect::<Vec<_>>());
    Ok(())
}

/// Counts up to ten with its partner, then stops the system.
struct Person;

#[backend]
impl Person {
    fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), sophon::Error> {
        if n >= 10 {
            ctx.stop_system();
            return Ok(());
        }
        ctx.send(n + 1)
    }
}

#[test]
fn a_declared_loop_runs_until_stopped() -> Result<(), Box<dyn std::error::Error>> {
    let system = agent_system! {
        person = Person;
        model = Pass;
        person -> model;
        loop model -> person;
    }?;
    system.person.query(0)?;
    let report = system.join();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("model").unwrap().stats.handled, 10);
    Ok(())
}

#[test]
fn expressions_see_the_callers_variables_and_the_system_derefs() -> Result<(), Box<dyn std::error::Error>> {
    let start = 5;
    let system = agent_system! {
        memory = Memory(start);
        memory -> output(out);
    }?;
    system.memory.query(0)?;
    assert_eq!(system.out.recv()?, 5);
    assert_eq!(system.entity_names().collect::<Vec<_>>(), ["memory"]);
    let failures = system.failures();
    drop(system);
    assert!(failures.try_recv().is_err());
    Ok(())
}

/// Adds one.
struct Inc;

#[backend]
impl Inc {
    fn query(&mut self, n: u64) -> u64 {
        n + 1
    }
}

#[test]
fn an_entity_may_run_a_backend_chosen_at_run_time() {
    let choose_pass = std::env::args().count() < 1000;
    let chosen: sophon::BoxBackend<u64, u64> = if choose_pass { Box::new(Pass) } else { Box::new(Inc) };
    let system = agent_system! {
        chosen: sophon::BoxBackend<u64, u64> = chosen;
        inferred = Inc;
        chosen -> inferred;
        inferred -> output(out);
    }
    .unwrap();
    system.chosen.query(1).unwrap();
    assert_eq!(system.out.recv_timeout(DEADLINE).unwrap(), 2);
    // The entity runs the chosen backend itself, not a box of it.
    let old = system.chosen.swap(Inc).unwrap();
    assert!(old.is::<Pass>());
    system.chosen.query(1).unwrap();
    assert_eq!(system.out.recv_timeout(DEADLINE).unwrap(), 3);
    assert!(system.shutdown(DEADLINE).is_clean());
}

/// Panics on every 10th number; counts how often it was built.
struct Brittle;

#[backend]
impl Brittle {
    fn query(&mut self, n: u64) -> u64 {
        assert!(n % 10 != 9, "cannot take {n}");
        n
    }
}

#[test]
fn a_restart_option_rebuilds_the_backend_with_its_factory() -> Result<(), Box<dyn std::error::Error>> {
    let built = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = built.clone();
    let system = agent_system! {
        #[restart(max = 10, within = 1m)]
        brittle = move || {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Brittle
        };
        #[restart(max = 1, within = 500ms)]
        typed: Brittle = || Ok::<_, std::io::Error>(Brittle);
        brittle -> output(out);
    }?;
    let id = system.brittle.id();
    for n in 0..30 {
        system.brittle.query(n)?;
    }
    assert_eq!(system.out.iter().take(27).count(), 27);
    let report = system.shutdown(DEADLINE);
    let brittle = report.entity("brittle").unwrap();
    assert_eq!((brittle.id, brittle.stats.handled, brittle.stats.panics, brittle.stats.restarts), (id, 27, 3, 3));
    assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 4);
    Ok(())
}

/// Member `i` of a group: answers `n` with `(i, n)`.
struct Member(usize);

#[backend]
impl Member {
    fn query(&mut self, n: u64) -> (usize, u64) {
        (self.0, n)
    }
}

#[test]
fn a_group_sized_at_run_time_is_reached_by_one_edge() -> Result<(), Box<dyn std::error::Error>> {
    let n = 4;
    let system = agent_system! {
        split = Pass;
        /// The workers.
        #[bounded(64)]
        // Any function from the index to a backend: a tuple struct's constructor, here.
        workers[n] = Member;
        stage[2]: Pass = |_| Pass;
        sink = Pass;
        split -> workers;
        workers -> output(answers);
        split -> stage;
        stage -> sink;
        sink -> output(sunk);
    }?;
    assert_eq!(system.workers.len(), 4);
    let names: Vec<&str> = system.entity_names().collect();
    assert_eq!(
        names,
        ["split", "workers[0]", "workers[1]", "workers[2]", "workers[3]", "stage[0]", "stage[1]", "sink"]
    );
    assert_eq!(system.workers[2].name(), "workers[2]");

    // An edge to a group reaches every member; one from it, every member's answers.
    system.split.query(7)?;
    let mut got: Vec<(usize, u64)> = system.answers.iter().take(4).collect();
    got.sort();
    assert_eq!(got, [(0, 7), (1, 7), (2, 7), (3, 7)]);
    assert_eq!(system.sunk.iter().take(2).collect::<Vec<_>>(), [7, 7]);
    // Each member has its handle.
    system.workers[3].query(9)?;
    assert_eq!(system.answers.recv_timeout(DEADLINE)?, (3, 9));
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("workers[3]").unwrap().stats.handled, 2);
    Ok(())
}

sophon::agent_system! {
    /// A farm of `n` workers fed by one splitter.
    struct Farm(n: usize);
    split: Pass = Pass;
    workers[n]: Member = move |i| Member(i * 10);
    split -> workers;
    workers -> output(answers);
}

#[test]
fn a_named_system_sizes_its_group_from_a_parameter() -> Result<(), Box<dyn std::error::Error>> {
    for n in [0, 1, 16] {
        let farm = Farm::spawn(n)?;
        let workers: &Vec<sophon::Handle<u64, (usize, u64)>> = &farm.workers;
        assert_eq!(workers.len(), n);
        farm.split.query(1)?;
        let mut got: Vec<(usize, u64)> = farm.answers.iter().take(n).collect();
        got.sort();
        assert_eq!(got, (0..n).map(|i| (i * 10, 1)).collect::<Vec<_>>());
        assert!(farm.shutdown(DEADLINE).is_clean());
    }
    Ok(())
}

/// Panics on 13.
struct Fragile(usize);

#[backend]
impl Fragile {
    fn query(&mut self, n: u64) -> (usize, u64) {
        assert_ne!(n, 13, "unlucky");
        (self.0, n)
    }
}

#[test]
fn a_restarted_group_rebuilds_each_member_from_its_index() -> Result<(), Box<dyn std::error::Error>> {
    let system = agent_system! {
        #[restart(max = 3, within = 10s)]
        fragile[3] = Fragile;
        fragile -> output(out);
    }?;
    for handle in &system.fragile {
        handle.query(13)?;
        handle.query(1)?;
    }
    let mut got: Vec<(usize, u64)> = system.out.iter().take(3).collect();
    got.sort();
    assert_eq!(got, [(0, 1), (1, 1), (2, 1)], "each member came back as itself");
    let report = system.shutdown(DEADLINE);
    for i in 0..3 {
        let member = report.entity(&format!("fragile[{i}]")).unwrap();
        assert_eq!((member.stats.panics, member.stats.restarts), (1, 1));
    }
    Ok(())
}

#[test]
fn a_named_system_draws_its_declared_graph() {
    assert_eq!(
        Farm::MERMAID,
        "flowchart LR\n    n0[\"split\"]\n    n1[[\"workers[n]\"]]\n    n2([\"answers\"])\n    n0 --> n1\n    n1 --> n2\n"
    );
    assert_eq!(
        Farm::DOT,
        "digraph {\n    rankdir=LR;\n    n0 [label=\"split\", shape=box];\n    n1 [label=\"workers[n]\", shape=box3d];\n    n2 [label=\"answers\", shape=box, style=rounded];\n    n0 -> n1 [label=\"\"];\n    n1 -> n2 [label=\"\"];\n}\n"
    );
}

/// Answers `(its id, n)` after `self.1` microseconds.
struct Replica(usize, u64);

#[backend(blocking)]
impl Replica {
    fn query(&mut self, n: u64) -> (usize, u64) {
        std::thread::sleep(Duration::from_micros(self.1));
        (self.0, n)
    }
}

/// The same, of another type: replicas need not share one.
struct OtherReplica(usize);

#[backend]
impl OtherReplica {
    fn query(&mut self, n: u64) -> (usize, u64) {
        (self.0, n)
    }
}

agent_system! {
    /// A source feeding a replicated model.
    pub struct Served(slow_us: u64);
    source: Pass = Pass;
    #[replicas]
    model: sophon::BoxBackend<u64, (usize, u64)> = [Replica(0, slow_us), Replica(1, 100), OtherReplica(2)];
    source -> model;
    model -> output(answers: (usize, u64));
}

#[test]
fn a_replicated_entity_declared_in_the_macro_routes_each_query_to_one_replica() -> Result<(), Box<dyn std::error::Error>>
{
    let system = agent_system! {
        #[replicas]
        model = [Replica(0, 100), Replica(1, 100), OtherReplica(2)];
        model -> output(out);
    }?;
    assert_eq!(system.model.name(), "model");
    assert_eq!(system.model.replicas().len(), 3);
    for n in 0..300 {
        system.model.query(n)?;
    }
    let mut got: Vec<u64> = system.out.iter().take(300).map(|(_, n)| n).collect();
    got.sort();
    assert!(got.into_iter().eq(0..300), "each query answered once");
    let report = system.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");

    // A named system: edges into the entity route; its slow replica gets little.
    let served = Served::spawn(20_000)?;
    for n in 0..300 {
        served.source.query(n)?;
    }
    let answers: Vec<(usize, u64)> = served.answers.iter().take(300).collect();
    let slow = answers.iter().filter(|(id, _)| *id == 0).count();
    assert!(slow < 30, "the slow replica answered {slow} of 300");
    let report = served.shutdown(DEADLINE);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.rankings[0].relationship, "source");
    Ok(())
}

#[test]
fn a_named_system_draws_its_replicated_entity() {
    assert_eq!(
        Served::MERMAID,
        "flowchart LR\n    n0[\"source\"]\n    n1{{\"model<br/>3 replicas\"}}\n    n2([\"answers\"])\n    n0 --> n1\n    n1 --> n2\n"
    );
}
