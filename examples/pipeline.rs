//! Clock ticks flow through a transform into a SQLite store and a search index, on read edges;
//! then both are queried.
//!
//! ```text
//! clock -> note ~> [store, index]
//! ```
//!
//! Run with `cargo run --example pipeline`. It takes a dozen ticks, prints what it stored and
//! what it found, and exits by itself. `--graph` prints the system's graph (Mermaid) and exits.

use std::time::Duration;

use sophon::backends::clock::{Clock, TimeFormat};
use sophon::backends::search::SearchIndex;
use sophon::backends::sqlite::{SqliteStore, Statement};
use sophon::{agent_system, backend};

/// How many ticks the example takes.
const TICKS: i64 = 12;

/// What the transform makes of a tick.
#[derive(Clone, Debug)]
struct Event {
    n: i64,
    at: String,
    text: String,
}

/// An event is stored as a row...
impl From<Event> for Statement {
    fn from(event: Event) -> Self {
        Statement::new("INSERT INTO events (n, at, text) VALUES (?1, ?2, ?3)")
            .bind(event.n)
            .bind(event.at)
            .bind(event.text)
    }
}

/// ...and indexed as a document whose first line is its title.
impl From<Event> for String {
    fn from(event: Event) -> Self {
        format!("event {}\n{} at {}", event.n, event.text, event.at)
    }
}

/// Turns each tick into an observation from a made-up weather station.
struct Note {
    n: i64,
}

#[backend]
impl Note {
    fn query(&mut self, at: String) -> Event {
        const SKY: [&str; 4] = ["rain over the harbour", "sun on the hills", "fog in the valley", "rain and wind"];
        self.n += 1;
        Event { n: self.n, at, text: SKY[self.n as usize % SKY.len()].to_owned() }
    }
}

agent_system! {
    /// Ticks, noted, stored and indexed; the store and the index are made by the caller, whose
    /// `?` reports their errors.
    struct Pipeline(store: SqliteStore, index: SearchIndex);
    clock: Clock = Clock::new().format(TimeFormat::Strftime("%H:%M:%S%.3f".into())).ticking(Duration::from_millis(20));
    note: Note = Note { n: 0 };
    store: SqliteStore = store;
    index: SearchIndex = index;
    clock -> note;
    note ~> [store, index];
    note -> output(events);
    store -> output(rows);
    index -> output(hits);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("--graph") {
        print!("{}", Pipeline::MERMAID);
        return Ok(());
    }
    let store = SqliteStore::in_memory()?.with_schema("CREATE TABLE events (n INTEGER, at TEXT, text TEXT)")?;
    let index = SearchIndex::in_memory()?.limit(3)?;
    let system = Pipeline::spawn(store, index)?;

    // Take a dozen ticks, then stop the clock; what is on its way still arrives.
    for event in system.events.iter().take(TICKS as usize) {
        println!("noted   #{:<2} {} {}", event.n, event.at, event.text);
    }
    system.clock.stop()?;

    // Queries queue behind the reads sent before them, so they see every event.
    system.store.query(Statement::new("SELECT count(*), min(n), max(n) FROM events WHERE n <= ?1").bind(TICKS))?;
    let counted = system.rows.recv()?;
    print!("stored  {counted}");
    system.store.query("SELECT n, text FROM events WHERE text LIKE '%rain%' ORDER BY n LIMIT 3".into())?;
    print!("rainy in SQL:\n{}", system.rows.recv()?);
    system.index.query("rain wind".into())?;
    print!("found for `rain wind`:\n{}", system.hits.recv()?);

    let report = system.shutdown(Duration::from_secs(5));
    println!("{report}");
    if report.is_clean() { Ok(()) } else { Err("the pipeline did not end cleanly".into()) }
}
