//! A SQLite store as a backend (feature `sqlite`; rusqlite with SQLite bundled).
//!
//! A read runs a [`Statement`] that stores something (an `INSERT`, an `UPDATE`) and answers
//! nothing; a query runs a lookup and answers the [`Rows`]. A statement that SQLite refuses
//! (bad syntax, a missing table, a broken constraint) is the handler's error: the runtime reports
//! it, and the store goes on with the next message.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use sophon::backends::sqlite::{SqliteStore, Statement, Value};
//! use sophon::SystemBuilder;
//!
//! let store = SqliteStore::in_memory()?.with_schema("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")?;
//! let mut builder = SystemBuilder::new();
//! let store = builder.entity("store", store);
//! let rows = builder.output(&store, "rows");
//! let system = builder.spawn()?;
//!
//! let store = system.handle(&store);
//! store.read(Statement::new("INSERT INTO notes (text) VALUES (?1)").bind("buy milk".to_owned()))?;
//! store.query("SELECT id, text FROM notes".into())?;
//! let found = rows.recv()?;
//! assert_eq!(found.columns, ["id", "text"]);
//! assert_eq!(found.rows, [vec![Value::Integer(1), Value::Text("buy milk".into())]]);
//! assert!(system.shutdown(Duration::from_secs(5)).is_clean());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

pub use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

use crate::backend;

/// A statement SQLite refused or failed to run. Its [`source`](std::error::Error::source) is
/// SQLite's own error, a [`rusqlite::Error`].
#[derive(Debug)]
pub struct SqliteError {
    sql: String,
    source: rusqlite::Error,
}

impl SqliteError {
    /// The statement's SQL.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// SQLite's error.
    pub fn rusqlite(&self) -> &rusqlite::Error {
        &self.source
    }
}

impl fmt::Display for SqliteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed: {}", self.sql, self.source)
    }
}

impl std::error::Error for SqliteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// One SQL statement and the values bound to its parameters (`?1`, `?2`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// The SQL.
    pub sql: String,
    /// The values of its parameters, in order.
    pub params: Vec<Value>,
}

impl Statement {
    /// A statement with no parameters bound yet.
    pub fn new(sql: impl Into<String>) -> Self {
        Statement { sql: sql.into(), params: Vec::new() }
    }

    /// Binds the next parameter.
    #[must_use]
    pub fn bind(mut self, value: impl Into<Value>) -> Self {
        self.params.push(value.into());
        self
    }
}

impl From<String> for Statement {
    fn from(sql: String) -> Self {
        Statement::new(sql)
    }
}

impl From<&str> for Statement {
    fn from(sql: &str) -> Self {
        Statement::new(sql)
    }
}

/// What a lookup found: column names and rows of values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rows {
    /// The names of the columns.
    pub columns: Vec<String>,
    /// The rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// One row per line, values separated by ` | `; text as is, `NULL` for null, blobs by size.
impl fmt::Display for Rows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for row in &self.rows {
            for (i, value) in row.iter().enumerate() {
                if i > 0 {
                    f.write_str(" | ")?;
                }
                match value {
                    Value::Null => f.write_str("NULL")?,
                    Value::Integer(n) => write!(f, "{n}")?,
                    Value::Real(x) => write!(f, "{x}")?,
                    Value::Text(s) => f.write_str(s)?,
                    Value::Blob(b) => write!(f, "<{} bytes>", b.len())?,
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// A SQLite database, in a file or in memory. See the [module docs](self).
pub struct SqliteStore {
    connection: Connection,
    path: Option<PathBuf>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the database file at `path`. What is stored survives the system.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, rusqlite::Error> {
        let path = path.as_ref();
        Ok(SqliteStore { connection: Connection::open(path)?, path: Some(path.to_owned()) })
    }

    /// A database in memory, gone when the store is.
    pub fn in_memory() -> Result<Self, rusqlite::Error> {
        Ok(SqliteStore { connection: Connection::open_in_memory()?, path: None })
    }

    /// Runs `sql`, any number of statements separated by `;`, such as `CREATE TABLE IF NOT
    /// EXISTS ...`.
    pub fn with_schema(self, sql: &str) -> Result<Self, rusqlite::Error> {
        self.connection.execute_batch(sql)?;
        Ok(self)
    }

    /// The database file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `statement` and collects what it returns.
    pub fn run(&mut self, statement: &Statement) -> Result<Rows, SqliteError> {
        self.execute(statement).map_err(|source| SqliteError { sql: statement.sql.clone(), source })
    }

    fn execute(&mut self, statement: &Statement) -> Result<Rows, rusqlite::Error> {
        let mut prepared = self.connection.prepare(&statement.sql)?;
        let columns: Vec<String> = prepared.column_names().map(str::to_owned).collect();
        let width = columns.len();
        let mut rows = Vec::new();
        let mut cursor = prepared.query(params_from_iter(&statement.params))?;
        while let Some(row) = cursor.next()? {
            rows.push((0..width).map(|i| row.get::<_, Value>(i)).collect::<Result<_, _>>()?);
        }
        Ok(Rows { columns, rows })
    }
}

#[backend]
impl SqliteStore {
    /// Runs a lookup and answers the rows it found.
    fn query(&mut self, statement: Statement) -> Result<Rows, SqliteError> {
        self.run(&statement)
    }

    /// Runs a statement that stores something; answers nothing.
    fn read(&mut self, statement: Statement) -> Result<(), SqliteError> {
        self.run(&statement).map(drop)
    }
}
