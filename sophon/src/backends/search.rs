//! A full-text search index as a backend (feature `search`; tantivy).
//!
//! A read indexes a document (a `String`; its first line is its title). A query is a search:
//! it answers the best [`Hits`], with their scores, best first. The query language is
//! tantivy's: words (`rust channels`), phrases (`"agent system"`), required and excluded words
//! (`+rust -python`), fields (`title:clock`). A malformed query is the handler's error, and the
//! index goes on.
//!
//! Documents become searchable at the next query: a query first commits what was read since the
//! last one, so a stream of reads costs one commit, not one each.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use sophon::backends::search::SearchIndex;
//! use sophon::SystemBuilder;
//!
//! let mut builder = SystemBuilder::new();
//! let index = builder.entity("index", SearchIndex::in_memory()?);
//! let hits = builder.output(&index, "hits");
//! let system = builder.spawn()?;
//!
//! let index = system.handle(&index);
//! index.read("Channels\ncrossbeam channels carry messages between threads".into())?;
//! index.read("Clocks\na clock ticks on an interval".into())?;
//! index.query("messages".into())?;
//! let found = hits.recv()?;
//! assert_eq!(found.hits.len(), 1);
//! assert_eq!(found.hits[0].title, "Channels");
//! assert!(system.shutdown(Duration::from_secs(5)).is_clean());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, STORED, Schema, TEXT, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, TantivyError, doc};

use crate::backend;

/// Memory the index writer may use before it flushes a segment.
const WRITER_MEMORY: usize = 20_000_000;

/// One document found by a search.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// How well it matched; higher is better (BM25).
    pub score: f32,
    /// Its first line.
    pub title: String,
    /// The whole document, as it was read.
    pub text: String,
}

/// What a search found, best first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hits {
    /// The query.
    pub query: String,
    /// The documents found, best first.
    pub hits: Vec<Hit>,
}

/// One hit per line: score and title.
impl fmt::Display for Hits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for hit in &self.hits {
            writeln!(f, "{:.3}  {}", hit.score, hit.title)?;
        }
        Ok(())
    }
}

/// Why the index failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SearchError {
    /// The query is not in tantivy's query language; the source is tantivy's error.
    Query(tantivy::query::QueryParserError),
    /// The index could not be opened, written or read.
    Index(TantivyError),
    /// [`SearchIndex::limit`] was given 0: a search that may answer no hit is refused.
    ZeroLimit,
}

impl fmt::Display for SearchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SearchError::Query(reason) => write!(f, "malformed query: {reason}"),
            SearchError::Index(e) => write!(f, "the index failed: {e}"),
            SearchError::ZeroLimit => f.write_str("a search answers at least one hit: give `limit` 1 or more"),
        }
    }
}

impl std::error::Error for SearchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SearchError::Query(e) => Some(e),
            SearchError::Index(e) => Some(e),
            SearchError::ZeroLimit => None,
        }
    }
}

impl From<TantivyError> for SearchError {
    fn from(e: TantivyError) -> Self {
        SearchError::Index(e)
    }
}

/// A full-text index. See the [module docs](self).
pub struct SearchIndex {
    index: Index,
    writer: IndexWriter,
    reader: IndexReader,
    parser: QueryParser,
    title: Field,
    text: Field,
    limit: usize,
    /// Documents added since the last commit.
    pending: usize,
    path: Option<PathBuf>,
}

impl fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchIndex")
            .field("path", &self.path)
            .field("limit", &self.limit)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl SearchIndex {
    fn schema() -> (Schema, Field, Field) {
        let mut schema = Schema::builder();
        let title = schema.add_text_field("title", TEXT | STORED);
        let text = schema.add_text_field("text", TEXT | STORED);
        (schema.build(), title, text)
    }

    /// An index in memory, gone when the backend is.
    pub fn in_memory() -> Result<Self, SearchError> {
        let (schema, title, text) = Self::schema();
        Self::with_index(Index::create_in_ram(schema), title, text, None)
    }

    /// The index in the directory `path`, created (with the directory) if there is none.
    /// What is indexed survives the system.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SearchError> {
        let path = path.as_ref();
        std::fs::create_dir_all(path).map_err(|e| SearchError::Index(e.into()))?;
        let (schema, title, text) = Self::schema();
        let directory = MmapDirectory::open(path).map_err(|e| SearchError::Index(e.into()))?;
        let index = Index::open_or_create(directory, schema)?;
        Self::with_index(index, title, text, Some(path.to_owned()))
    }

    fn with_index(index: Index, title: Field, text: Field, path: Option<PathBuf>) -> Result<Self, SearchError> {
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let parser = QueryParser::for_index(&index, vec![title, text]);
        Ok(SearchIndex { index, writer, reader, parser, title, text, limit: 5, pending: 0, path })
    }

    /// The most hits a search answers (default 5). Refuses 0 ([`SearchError::ZeroLimit`]),
    /// which would leave nothing to answer (and which tantivy itself rejects with a panic).
    pub fn limit(mut self, limit: usize) -> Result<Self, SearchError> {
        if limit == 0 {
            return Err(SearchError::ZeroLimit);
        }
        self.limit = limit;
        Ok(self)
    }

    /// Adds a document; it is searchable after the next [`commit`](Self::commit) or search.
    pub fn add(&mut self, document: &str) -> Result<(), SearchError> {
        let title = document.lines().next().unwrap_or_default().trim();
        self.writer.add_document(doc!(self.title => title, self.text => document))?;
        self.pending += 1;
        Ok(())
    }

    /// Makes every document added so far searchable (and, on disk, durable).
    pub fn commit(&mut self) -> Result<(), SearchError> {
        if self.pending > 0 {
            self.writer.commit()?;
            self.reader.reload()?;
            self.pending = 0;
        }
        Ok(())
    }

    /// How many documents are searchable.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether no document is searchable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The best documents for `query`, best first.
    pub fn search(&mut self, query: &str) -> Result<Hits, SearchError> {
        self.commit()?;
        let parsed = self.parser.parse_query(query).map_err(SearchError::Query)?;
        let searcher = self.reader.searcher();
        let top = searcher.search(&parsed, &TopDocs::with_limit(self.limit).order_by_score())?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let document: TantivyDocument = searcher.doc(address)?;
            let field = |f: Field| document.get_first(f).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            hits.push(Hit { score, title: field(self.title), text: field(self.text) });
        }
        Ok(Hits { query: query.to_owned(), hits })
    }

    /// The underlying tantivy index.
    pub fn index(&self) -> &Index {
        &self.index
    }
}

#[backend]
impl SearchIndex {
    /// Searches, and answers the best hits.
    fn query(&mut self, query: String) -> Result<Hits, SearchError> {
        self.search(&query)
    }

    /// Indexes a document.
    fn read(&mut self, document: String) -> Result<(), SearchError> {
        self.add(&document)
    }

    /// Commits what is pending, so that an index on disk keeps it.
    fn nop(&mut self) -> Result<(), SearchError> {
        self.commit()
    }
}
