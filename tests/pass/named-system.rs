//! A named system: declared at module level, made by a function, kept in a field, and
//! documented; `#[cfg(..)]` on entity and edge lines.
#![deny(missing_docs)]

use std::time::Duration;

use sophon::{agent_system, backend};

/// Adds a fixed amount.
pub struct Add(pub i64);

#[backend]
impl Add {
    fn query(&mut self, n: i64) -> i64 {
        n + self.0
    }
}

agent_system! {
    /// Adds twice, with `first` and `second`.
    pub struct Adder(first: i64, second: i64);
    /// Adds the first amount.
    #[bounded(8)]
    first: Add = Add(first);
    second: Add = Add(second);
    /// Never built: `any()` never holds.
    #[cfg(any())]
    never: Add = Add(1000);
    /// Always built.
    #[cfg(all())]
    third: Add = Add(0);
    first -> second;
    first ~> never;
    #[cfg(any())]
    first ~> third;
    second ~> third;
    /// The sums.
    second -> output(sums);
    #[cfg(any())]
    second -> output(nowhere);
}

/// A system kept in a field: its type can be named.
struct App {
    adder: Adder,
}

fn make() -> Result<App, sophon::BuildError> {
    Ok(App { adder: Adder::spawn(1, 10)? })
}

fn main() {
    let app = make().unwrap();
    app.adder.first.query(100).unwrap();
    assert_eq!(app.adder.sums.recv().unwrap(), 111);
    assert_eq!(app.adder.second.call(5).unwrap(), 15);
    // `Deref` to the system.
    assert_eq!(app.adder.stop_requested(), false);
    let report = app.adder.shutdown(Duration::from_secs(5));
    assert!(report.is_clean());
    assert_eq!(report.entities.len(), 3, "`never` is not built");
    assert_eq!(report.entity("third").unwrap().stats.received, 1, "only `second ~> third` is built");

    // In a function body too, and anonymous systems still take `#[cfg]` and docs.
    let anon = agent_system! {
        /// Adds one.
        one = Add(1);
        #[cfg(any())]
        gone = Add(2);
        #[cfg(all())]
        one -> output(out);
        #[cfg(any())]
        gone -> output(out);
    }
    .unwrap();
    anon.one.query(1).unwrap();
    assert_eq!(anon.out.recv().unwrap(), 2);
    anon.shutdown(Duration::from_secs(5));
}
