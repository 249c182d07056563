//! The search index: documents are found and ranked; a malformed query is an error; an index on
//! disk survives a restart.

use std::time::Duration;

use sophon::SystemBuilder;
use sophon::backends::search::{Hits, SearchIndex};
use sophon::crossbeam_channel::Receiver;

const WAIT: Duration = Duration::from_secs(10);

const DOCUMENTS: [&str; 4] = [
    "Crossbeam\nChannels carry messages between threads. Channels can be bounded.",
    "Clocks\nA clock ticks; ticks are messages too.",
    "SQLite\nA database in one file.",
    "Channels everywhere\nChannels, channels, channels: every agent owns channels.",
];

fn ask(handle: &sophon::Handle<String, Hits>, hits: &Receiver<Hits>, query: &str) -> Hits {
    handle.query(query.to_owned()).unwrap();
    hits.recv_timeout(WAIT).unwrap()
}

#[test]
fn indexed_documents_are_found_and_ranked() {
    let mut builder = SystemBuilder::new();
    let node = builder.entity("index", SearchIndex::in_memory().unwrap().limit(3).unwrap());
    let hits = builder.output(&node, "hits");
    let system = builder.spawn().unwrap();
    let failures = system.failures();
    let index = system.handle(&node);
    for document in DOCUMENTS {
        index.read(document.to_owned()).unwrap();
    }
    let found = ask(&index, &hits, "channels");
    let titles: Vec<&str> = found.hits.iter().map(|h| h.title.as_str()).collect();
    assert_eq!(titles, ["Channels everywhere", "Crossbeam"], "more mentions rank higher");
    assert!(found.hits[0].score > found.hits[1].score);
    assert_eq!(found.hits[1].text, DOCUMENTS[0]);

    let found = ask(&index, &hits, "messages");
    assert_eq!(found.hits.len(), 2);
    assert_eq!(ask(&index, &hits, "+messages -clock").hits[0].title, "Crossbeam");
    assert_eq!(ask(&index, &hits, "\"one file\"").hits[0].title, "SQLite");
    assert!(ask(&index, &hits, "python").hits.is_empty());

    index.query("title:(unclosed".into()).unwrap();
    let failure = failures.recv_timeout(WAIT).unwrap();
    assert!(failure.message().starts_with("malformed query: "), "{}", failure.error);
    index.read("Late\nchannels arrive late".into()).unwrap();
    assert_eq!(ask(&index, &hits, "late").hits[0].title, "Late", "the index goes on");
    let report = system.shutdown(WAIT);
    assert_eq!(report.entity("index").unwrap().stats.errors, 1);
}

#[test]
fn an_index_on_disk_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("sophon-search-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for round in 0..2 {
        let mut builder = SystemBuilder::new();
        let node = builder.entity("index", SearchIndex::open(&dir).unwrap());
        let hits = builder.output(&node, "hits");
        let system = builder.spawn().unwrap();
        let index = system.handle(&node);
        if round == 0 {
            index.read("Kept\nwhat is read is kept on disk".into()).unwrap();
        } else {
            assert_eq!(ask(&index, &hits, "disk").hits[0].title, "Kept");
        }
        assert!(system.shutdown(WAIT).is_clean());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_limit_of_zero_is_refused_rather_than_panicking_in_tantivy() {
    let err = SearchIndex::in_memory().unwrap().limit(0).unwrap_err();
    assert!(matches!(err, sophon::backends::search::SearchError::ZeroLimit));
    assert_eq!(err.to_string(), "a search answers at least one hit: give `limit` 1 or more");
    let mut index = SearchIndex::in_memory().unwrap().limit(1).unwrap();
    index.add("one\nfirst").unwrap();
    index.add("two\nfirst again").unwrap();
    assert_eq!(index.search("first").unwrap().hits.len(), 1);
}
