//! An engine process that speaks UCI.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::backend;

use super::{ChessMove, Position};

/// Why a UCI engine process failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum UciError {
    /// The program could not be started.
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why: the operating system's error, also the `source()`.
        source: std::io::Error,
    },
    /// The process has exited or closed its pipes.
    Dead(String),
    /// The process did not answer in time.
    Timeout(&'static str),
    /// The process answered something that is not UCI.
    Protocol(String),
}

impl fmt::Display for UciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UciError::Spawn { program, source } => {
                write!(f, "cannot start the engine `{}`: {source}", program.display())
            }
            UciError::Dead(name) => write!(f, "the engine `{name}` has died"),
            UciError::Timeout(waiting) => write!(f, "the engine did not answer `{waiting}` in time"),
            UciError::Protocol(line) => write!(f, "the engine answered something that is not UCI: `{line}`"),
        }
    }
}

impl std::error::Error for UciError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UciError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An engine process that speaks UCI, such as Stockfish. See the [module docs](super).
///
/// It is started, and its handshake done, when it is made. Each query sends the position and
/// `go movetime`, and answers the engine's `bestmove`. The process is told to quit at `Nop`,
/// and killed if the backend is dropped.
pub struct UciEngine {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    name: String,
    movetime: Duration,
    timeout: Duration,
    /// A search whose `bestmove` has not come: it timed out, and has yet to be stopped and its
    /// late answer discarded.
    searching: bool,
}

impl fmt::Debug for UciEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UciEngine")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("movetime", &self.movetime)
            .finish_non_exhaustive()
    }
}

impl UciEngine {
    /// Starts `program` and does the UCI handshake (`uci`, `isready`).
    pub fn spawn(program: impl AsRef<Path>) -> Result<Self, UciError> {
        let program = program.as_ref();
        let spawn_error = |source| UciError::Spawn { program: program.to_owned(), source };
        let mut child = Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(spawn_error)?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        // The engine's answers come through a channel, so that every wait has a timeout.
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("sophon:uci-reader".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(spawn_error)?;
        let mut engine = UciEngine {
            child,
            stdin,
            lines,
            name: program.display().to_string(),
            movetime: Duration::from_millis(100),
            timeout: Duration::from_secs(10),
            searching: false,
        };
        engine.send("uci")?;
        while let Some(line) = engine.next_line("uciok")? {
            if let Some(name) = line.strip_prefix("id name ") {
                engine.name = name.trim().to_owned();
            }
            if line.trim() == "uciok" {
                break;
            }
        }
        engine.ready()?;
        Ok(engine)
    }

    /// Starts Stockfish: `stockfish` on the `PATH`, else Debian's `/usr/games/stockfish`.
    pub fn stockfish() -> Result<Self, UciError> {
        let debian = Path::new("/usr/games/stockfish");
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .map(|dir| dir.join("stockfish"))
            .find(|p| p.is_file());
        UciEngine::spawn(on_path.as_deref().unwrap_or(debian))
    }

    /// How long the engine thinks per move (default 100 ms).
    #[must_use]
    pub fn movetime(mut self, movetime: Duration) -> Self {
        self.movetime = movetime;
        self
    }

    /// How long to wait for an answer beyond the move time before giving up (default 10 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets an engine option (`setoption name NAME value VALUE`), such as `Skill Level`.
    pub fn set_option(&mut self, name: &str, value: &str) -> Result<(), UciError> {
        self.send(&format!("setoption name {name} value {value}"))?;
        self.ready()
    }

    /// The engine's name, as it gave it (`id name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id of the engine.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, command: &str) -> Result<(), UciError> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(|_| UciError::Dead(self.name.clone()))
    }

    fn next_line(&mut self, waiting: &'static str) -> Result<Option<String>, UciError> {
        match self.lines.recv_timeout(self.timeout + self.movetime) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Timeout) => Err(UciError::Timeout(waiting)),
            Err(RecvTimeoutError::Disconnected) => Err(UciError::Dead(self.name.clone())),
        }
    }

    fn ready(&mut self) -> Result<(), UciError> {
        self.send("isready")?;
        while let Some(line) = self.next_line("readyok")? {
            if line.trim() == "readyok" {
                break;
            }
        }
        Ok(())
    }

    /// The engine's best move in `position`, in UCI notation.
    ///
    /// A search that times out is stopped (`stop`), and the `bestmove` it answers late is
    /// discarded, then or before the next search: it never answers another position.
    pub fn best_move(&mut self, position: &Position) -> Result<String, UciError> {
        if self.searching {
            self.settle()?;
        }
        // Other lines left over from an earlier query (`info`, say) are not this one's.
        while self.lines.try_recv().is_ok() {}
        self.send(&format!("position fen {}", position.fen))?;
        self.send(&format!("go movetime {}", self.movetime.as_millis()))?;
        self.searching = true;
        loop {
            let line = match self.next_line("bestmove") {
                Ok(Some(line)) => line,
                Ok(None) => return Err(UciError::Dead(self.name.clone())),
                Err(UciError::Timeout(waiting)) => {
                    // Stop the search now, so that its answer comes (and goes) before the
                    // next one; an engine that does not answer `stop` in time is settled with
                    // the next query.
                    let _ = self.settle();
                    return Err(UciError::Timeout(waiting));
                }
                Err(e) => return Err(e),
            };
            let mut words = line.split_whitespace();
            if words.next() == Some("bestmove") {
                self.searching = false;
                return match words.next() {
                    Some("(none)") | None => Err(UciError::Protocol(line)),
                    Some(mv) => Ok(mv.to_owned()),
                };
            }
        }
    }

    /// Stops the search under way and discards its `bestmove`, waiting at most the timeout.
    fn settle(&mut self) -> Result<(), UciError> {
        self.send("stop")?;
        loop {
            match self.lines.recv_timeout(self.timeout) {
                Ok(line) if line.split_whitespace().next() == Some("bestmove") => {
                    self.searching = false;
                    return Ok(());
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return Err(UciError::Timeout("bestmove after stop")),
                Err(RecvTimeoutError::Disconnected) => return Err(UciError::Dead(self.name.clone())),
            }
        }
    }
}

impl Drop for UciEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[backend(blocking)]
impl UciEngine {
    /// Answers the position with the engine's best move.
    fn query(&mut self, position: Position) -> Result<ChessMove, UciError> {
        let uci = self.best_move(&position)?;
        Ok(ChessMove::answering(&position, uci))
    }

    /// Tells the engine to quit, and waits for it a little.
    fn nop(&mut self) {
        if self.send("quit").is_ok() {
            for _ in 0..50 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
