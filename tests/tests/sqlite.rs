//! The SQLite store: rows stored by reads come back from queries; bad statements are errors the
//! store survives; a file store survives a restart of the system.

use std::time::Duration;

use sophon::backends::sqlite::{Rows, SqliteError, SqliteStore, Statement, Value};
use sophon::crossbeam_channel::Receiver;
use sophon::{Failure, Handle, System, SystemBuilder};

const WAIT: Duration = Duration::from_secs(10);
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS people (name TEXT NOT NULL UNIQUE, age INTEGER)";

fn spawn(store: SqliteStore) -> (System, Handle<Statement, Rows>, Receiver<Rows>, Receiver<Failure>) {
    let mut builder = SystemBuilder::new();
    let node = builder.entity("store", store);
    let rows = builder.output(&node, "rows");
    let system = builder.spawn().unwrap();
    let failures = system.failures();
    let handle = system.handle(&node);
    (system, handle, rows, failures)
}

fn insert(name: &str, age: i64) -> Statement {
    Statement::new("INSERT INTO people (name, age) VALUES (?1, ?2)").bind(name.to_owned()).bind(age)
}

#[test]
fn stored_rows_come_back_from_a_query() {
    let (system, store, rows, _) = spawn(SqliteStore::in_memory().unwrap().with_schema(SCHEMA).unwrap());
    store.read(insert("Ada", 36)).unwrap();
    store.read(insert("Alan", 41)).unwrap();
    store.read(Statement::new("INSERT INTO people (name) VALUES ('Grace')")).unwrap();
    store
        .query(Statement::new("SELECT name, age FROM people WHERE age > ?1 OR age IS NULL ORDER BY name").bind(40))
        .unwrap();
    let found = rows.recv_timeout(WAIT).unwrap();
    assert_eq!(found.columns, ["name", "age"]);
    assert_eq!(
        found.rows,
        [vec![Value::Text("Alan".into()), Value::Integer(41)], vec![Value::Text("Grace".into()), Value::Null]]
    );
    assert_eq!(found.to_string(), "Alan | 41\nGrace | NULL\n");
    let report = system.shutdown(WAIT);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entity("store").unwrap().stats.handled, 4);
}

#[test]
fn a_bad_statement_is_an_error_and_the_store_goes_on() {
    let (system, store, rows, failures) = spawn(SqliteStore::in_memory().unwrap().with_schema(SCHEMA).unwrap());
    store.query("SELEC name FROM people".into()).unwrap();
    let failure = failures.recv_timeout(WAIT).unwrap();
    assert_eq!((failure.entity.as_str(), failure.panicked), ("store", false));
    assert!(failure.message().contains("syntax error"), "{}", failure.error);
    // The failure keeps the store's own error, whose source is SQLite's.
    let error = failure.error.downcast_ref::<SqliteError>().expect("the store's error");
    assert_eq!(error.sql(), "SELEC name FROM people");
    let source = std::error::Error::source(error).expect("a source");
    assert!(
        matches!(source.downcast_ref::<rusqlite::Error>(), Some(rusqlite::Error::SqlInputError { .. })),
        "{source:?}"
    );
    store.query("SELECT * FROM nobody".into()).unwrap();
    assert!(failures.recv_timeout(WAIT).unwrap().message().contains("no such table: nobody"));
    store.read(insert("Ada", 36)).unwrap();
    store.read(insert("Ada", 37)).unwrap();
    assert!(failures.recv_timeout(WAIT).unwrap().message().contains("UNIQUE constraint failed"));
    store.query("SELECT age FROM people".into()).unwrap();
    assert_eq!(rows.recv_timeout(WAIT).unwrap().rows, [vec![Value::Integer(36)]]);
    let report = system.shutdown(WAIT);
    assert_eq!(report.entity("store").unwrap().stats.errors, 3);
    assert_eq!(report.entity("store").unwrap().stats.panics, 0);
}

#[test]
fn a_file_store_survives_a_restart_of_the_system() {
    let dir = std::env::temp_dir().join(format!("sophon-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("people.db");
    let _ = std::fs::remove_file(&path);

    let (system, store, _, _) = spawn(SqliteStore::open(&path).unwrap().with_schema(SCHEMA).unwrap());
    store.read(insert("Ada", 36)).unwrap();
    assert!(system.shutdown(WAIT).is_clean());

    let (system, store, rows, _) = spawn(SqliteStore::open(&path).unwrap().with_schema(SCHEMA).unwrap());
    store.query("SELECT name, age FROM people".into()).unwrap();
    assert_eq!(rows.recv_timeout(WAIT).unwrap().rows, [vec![Value::Text("Ada".into()), Value::Integer(36)]]);
    assert!(system.shutdown(WAIT).is_clean());
    std::fs::remove_dir_all(&dir).unwrap();
}
