//! Chess as a graph of agents (feature `chess`; cozy-chess for the rules).
//!
//! - A [`Referee`] holds the game. It sends the [`Position`] to the side to move, checks the
//!   [`ChessMove`] that comes back against the rules, prints the board, and ends the game at
//!   checkmate, stalemate, a draw rule (fifty moves, threefold repetition, insufficient
//!   material) or its move limit. An illegal move is rejected and the side is asked again; a side
//!   that makes [`MAX_REJECTIONS`] illegal moves forfeits.
//! - An [`AlphaBeta`] engine answers a position with a move from a small alpha-beta search.
//! - A [`UciEngine`] drives an engine process that speaks UCI (Stockfish, say), so a real engine
//!   can sit in the graph. A dead or misbehaving process is the handler's error.
//!
//! Moves are in UCI notation (`e2e4`, `e1g1` for castling, `e7e8q` for a promotion). A person
//! can play too: a [`Position`] converts to the text a person reads (the board), and the line
//! they type converts to a [`ChessMove`].
//!
//! # Examples
//!
//! Two engines play a few moves:
//!
//! ```
//! use std::time::Duration;
//! use sophon::backends::chess::{AlphaBeta, Outcome, Referee};
//! use sophon::SystemBuilder;
//!
//! let referee = Referee::new("white", "black").max_plies(6).output(std::io::sink());
//! let game = referee.game();
//! let mut builder = SystemBuilder::new();
//! let referee = builder.entity("referee", referee);
//! let white = builder.entity("white", AlphaBeta::new(2));
//! let black = builder.entity("black", AlphaBeta::new(2));
//! builder.query_edge(&referee, &white);
//! builder.query_edge(&referee, &black);
//! builder.loop_edge(&white, &referee);
//! builder.loop_edge(&black, &referee);
//! let system = builder.spawn()?;
//!
//! assert!(system.wait_for_stop(Some(Duration::from_secs(60))), "the referee stops the game");
//! assert!(system.shutdown(Duration::from_secs(5)).is_clean());
//! assert_eq!(game.moves().len(), 6);
//! assert_eq!(game.outcome(), Some(Outcome::MoveLimit));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cozy_chess::util::{display_uci_move, parse_uci_move};
use cozy_chess::{Board, Color, GameStatus, Move, Piece};
use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::{BoxError, Context, backend};

/// How many illegal moves a side may make before it forfeits.
pub const MAX_REJECTIONS: usize = 3;

/// A position for the side to move to answer: what the referee sends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The position in Forsyth-Edwards Notation.
    pub fen: String,
    /// How many half-moves the game has had; the answer carries it back.
    pub ply: u32,
}

impl Position {
    /// The position at the start of a game.
    pub fn start() -> Self {
        Position { fen: Board::default().to_string(), ply: 0 }
    }

    fn board(&self) -> Result<Board, BoxError> {
        Board::from_fen(&self.fen, false).map_err(|e| format!("bad FEN `{}`: {e}", self.fen).into())
    }
}

/// The board as a person reads it, with White at the bottom, and whose move it is.
impl From<Position> for String {
    fn from(position: Position) -> Self {
        match position.board() {
            Ok(board) => {
                let side = if board.side_to_move() == Color::White { "white" } else { "black" };
                format!("{}{side} to move (UCI, such as e2e4)", picture(&board))
            }
            Err(e) => e.to_string(),
        }
    }
}

/// A move, as an engine or a person answers a position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChessMove {
    /// The move in UCI notation: `e2e4`, `e1g1`, `e7e8q`.
    pub uci: String,
    /// The ply of the position it answers; `None` for the position the referee is at now.
    pub ply: Option<u32>,
}

impl ChessMove {
    /// `uci` as the answer to `position`.
    pub fn answering(position: &Position, uci: impl Into<String>) -> Self {
        ChessMove { uci: uci.into(), ply: Some(position.ply) }
    }
}

/// What a person types is a move for the current position.
impl From<String> for ChessMove {
    fn from(uci: String) -> Self {
        ChessMove { uci: uci.trim().to_owned(), ply: None }
    }
}

/// Draws `board` as eight lines of text: upper case for White, `.` for an empty square.
pub fn picture(board: &Board) -> String {
    let mut out = String::with_capacity(9 * 20);
    for rank in cozy_chess::Rank::ALL.iter().rev() {
        out.push_str(&format!("{} ", *rank as usize + 1));
        for file in cozy_chess::File::ALL {
            let square = cozy_chess::Square::new(file, *rank);
            let c = match (board.piece_on(square), board.color_on(square)) {
                (Some(piece), Some(color)) => {
                    let c: char = piece.into();
                    if color == Color::White { c.to_ascii_uppercase() } else { c }
                }
                _ => '.',
            };
            out.push(c);
            out.push(' ');
        }
        out.pop();
        out.push('\n');
    }
    out.push_str("  a b c d e f g h\n");
    out
}

/// How a game ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The side that moved last mates.
    Checkmate {
        /// The winner.
        winner: Side,
    },
    /// The side to move has no legal move and is not in check.
    Stalemate,
    /// A hundred half-moves without a capture or a pawn move.
    FiftyMoves,
    /// The same position for the third time.
    Repetition,
    /// Neither side can mate.
    InsufficientMaterial,
    /// The referee's move limit.
    MoveLimit,
    /// A side made too many illegal moves.
    Forfeit {
        /// The side that forfeits.
        loser: Side,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Checkmate { winner } => write!(f, "checkmate: {winner} wins"),
            Outcome::Stalemate => f.write_str("stalemate: a draw"),
            Outcome::FiftyMoves => f.write_str("fifty moves without a capture or a pawn move: a draw"),
            Outcome::Repetition => f.write_str("threefold repetition: a draw"),
            Outcome::InsufficientMaterial => f.write_str("insufficient material: a draw"),
            Outcome::MoveLimit => f.write_str("move limit reached: the game is stopped"),
            Outcome::Forfeit { loser } => write!(f, "{loser} made {MAX_REJECTIONS} illegal moves and forfeits"),
        }
    }
}

/// A side of the board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// White.
    White,
    /// Black.
    Black,
}

impl From<Color> for Side {
    fn from(color: Color) -> Self {
        match color {
            Color::White => Side::White,
            Color::Black => Side::Black,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if *self == Side::White { "white" } else { "black" })
    }
}

/// An illegal move the referee turned down.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rejection {
    /// Who made it.
    pub side: Side,
    /// The move as sent.
    pub uci: String,
    /// The ply it was sent at.
    pub ply: u32,
}

#[derive(Debug, Default)]
struct GameState {
    moves: Vec<String>,
    rejections: Vec<Rejection>,
    outcome: Option<Outcome>,
    fen: String,
}

/// The record of a game, shared with its [`Referee`]: read it while or after the game runs.
#[derive(Clone, Debug, Default)]
pub struct Game {
    state: Arc<Mutex<GameState>>,
}

impl Game {
    fn lock(&self) -> MutexGuard<'_, GameState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every move played, in UCI notation.
    pub fn moves(&self) -> Vec<String> {
        self.lock().moves.clone()
    }

    /// Every illegal move turned down.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.lock().rejections.clone()
    }

    /// How the game ended, once it has.
    pub fn outcome(&self) -> Option<Outcome> {
        self.lock().outcome
    }

    /// The current (or final) position, in FEN.
    pub fn fen(&self) -> String {
        self.lock().fen.clone()
    }
}

/// Holds a game between two siblings and checks every move. See the [module docs](self).
pub struct Referee {
    board: Board,
    /// Positions since the last capture or pawn move, for threefold repetition.
    history: Vec<Board>,
    ply: u32,
    max_plies: u32,
    sides: [String; 2],
    rejected: [usize; 2],
    output: Box<dyn Write + Send>,
    stop_at_end: bool,
    game: Game,
}

impl fmt::Debug for Referee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Referee")
            .field("fen", &self.board.to_string())
            .field("ply", &self.ply)
            .field("sides", &self.sides)
            .finish_non_exhaustive()
    }
}

impl Referee {
    /// A game from the start between the siblings called `white` and `black`. It prints to
    /// standard output, stops at 200 half-moves, and asks the system to stop when it ends.
    pub fn new(white: &str, black: &str) -> Self {
        let board = Board::default();
        let game = Game::default();
        game.lock().fen = board.to_string();
        Referee {
            history: vec![board.clone()],
            board,
            ply: 0,
            max_plies: 200,
            sides: [white.to_owned(), black.to_owned()],
            rejected: [0; 2],
            output: Box::new(std::io::stdout()),
            stop_at_end: true,
            game,
        }
    }

    /// Starts from `fen` instead.
    pub fn from_fen(mut self, fen: &str) -> Result<Self, BoxError> {
        self.board = Position { fen: fen.to_owned(), ply: 0 }.board()?;
        self.history = vec![self.board.clone()];
        self.game.lock().fen = self.board.to_string();
        Ok(self)
    }

    /// Ends the game after this many half-moves (default 200).
    #[must_use]
    pub fn max_plies(mut self, plies: u32) -> Self {
        self.max_plies = plies;
        self
    }

    /// Where the board and the moves are printed (default standard output).
    #[must_use]
    pub fn output(mut self, output: impl Write + Send + 'static) -> Self {
        self.output = Box::new(output);
        self
    }

    /// Whether the referee asks the system to stop when the game ends (default yes).
    #[must_use]
    pub fn stop_at_end(mut self, stop: bool) -> Self {
        self.stop_at_end = stop;
        self
    }

    /// The game's record, shared with the referee.
    pub fn game(&self) -> Game {
        self.game.clone()
    }

    fn to_move(&self) -> usize {
        usize::from(self.board.side_to_move() == Color::Black)
    }

    fn position(&self) -> Position {
        Position { fen: self.board.to_string(), ply: self.ply }
    }

    fn ask(&mut self, ctx: &mut Context<Position>) -> Result<(), BoxError> {
        let side = self.sides[self.to_move()].clone();
        ctx.send_to(&side, self.position())?;
        Ok(())
    }

    /// Why the game is over after the move just played, if it is.
    fn outcome(&self) -> Option<Outcome> {
        match self.board.status() {
            GameStatus::Won => return Some(Outcome::Checkmate { winner: Side::from(!self.board.side_to_move()) }),
            GameStatus::Drawn if self.board.halfmove_clock() >= 100 => return Some(Outcome::FiftyMoves),
            GameStatus::Drawn => return Some(Outcome::Stalemate),
            GameStatus::Ongoing => {}
        }
        if self.history.iter().filter(|b| b.same_position(&self.board)).count() >= 3 {
            return Some(Outcome::Repetition);
        }
        if insufficient_material(&self.board) {
            return Some(Outcome::InsufficientMaterial);
        }
        (self.ply >= self.max_plies).then_some(Outcome::MoveLimit)
    }

    fn end(&mut self, outcome: Outcome, ctx: &mut Context<Position>) -> std::io::Result<()> {
        self.game.lock().outcome = Some(outcome);
        writeln!(self.output, "{outcome}")?;
        writeln!(self.output, "final position: {}", self.board)?;
        if self.stop_at_end {
            ctx.stop_system();
        }
        Ok(())
    }

    fn reject(&mut self, uci: &str, reason: &str, ctx: &mut Context<Position>) -> Result<(), BoxError> {
        let side = Side::from(self.board.side_to_move());
        let index = self.to_move();
        writeln!(self.output, "rejected {side} {uci}: {reason}")?;
        self.game.lock().rejections.push(Rejection { side, uci: uci.to_owned(), ply: self.ply });
        self.rejected[index] += 1;
        if self.rejected[index] >= MAX_REJECTIONS {
            self.end(Outcome::Forfeit { loser: side }, ctx)?;
            return Ok(());
        }
        self.ask(ctx)
    }
}

#[backend]
impl Referee {
    /// Checks the move; plays it, or turns it down and asks again.
    fn query(&mut self, answer: ChessMove, ctx: &mut Context<Position>) -> Result<(), BoxError> {
        if self.game.lock().outcome.is_some() {
            return Ok(());
        }
        if let Some(ply) = answer.ply
            && ply != self.ply
        {
            return Err(format!("`{}` answers ply {ply}, but the game is at ply {}", answer.uci, self.ply).into());
        }
        let mv = match parse_uci_move(&self.board, &answer.uci) {
            Ok(mv) => mv,
            Err(_) => return self.reject(&answer.uci, "not a move in UCI notation", ctx),
        };
        let uci = display_uci_move(&self.board, mv).to_string();
        let before = self.board.clone();
        if self.board.try_play(mv).is_err() {
            return self.reject(&answer.uci, "illegal in this position", ctx);
        }
        let irreversible = self.board.halfmove_clock() == 0
            || before.castle_rights(before.side_to_move()) != self.board.castle_rights(before.side_to_move());
        if irreversible {
            self.history.clear();
        }
        self.history.push(self.board.clone());
        self.ply += 1;
        {
            let mut game = self.game.lock();
            game.moves.push(uci.clone());
            game.fen = self.board.to_string();
        }
        let number = before.fullmove_number();
        let dots = if before.side_to_move() == Color::White { "." } else { "..." };
        writeln!(self.output, "{number}{dots} {uci}\n{}", picture(&self.board))?;
        match self.outcome() {
            Some(outcome) => Ok(self.end(outcome, ctx)?),
            None => self.ask(ctx),
        }
    }

    /// Asks White for the first move.
    fn start(&mut self, ctx: &mut Context<Position>) -> Result<(), BoxError> {
        writeln!(self.output, "{} vs {}\n{}", self.sides[0], self.sides[1], picture(&self.board))?;
        match self.outcome() {
            Some(outcome) => Ok(self.end(outcome, ctx)?),
            None => self.ask(ctx),
        }
    }
}

/// Whether neither side has the material to mate: kings alone, or with one minor piece.
fn insufficient_material(board: &Board) -> bool {
    let heavy = board.pieces(Piece::Pawn) | board.pieces(Piece::Rook) | board.pieces(Piece::Queen);
    let minors = board.pieces(Piece::Knight) | board.pieces(Piece::Bishop);
    heavy.is_empty() && minors.len() <= 1
}

/// A small chess engine: negamax with alpha-beta pruning over material and piece placement, to
/// a fixed depth, captures first. Deterministic: the same position gives the same move.
#[derive(Clone, Debug)]
pub struct AlphaBeta {
    depth: u32,
}

const MATE: i32 = 1_000_000;

impl AlphaBeta {
    /// An engine that looks `depth` half-moves ahead (at least 1; 3 plays a quick, sensible game).
    pub fn new(depth: u32) -> Self {
        AlphaBeta { depth: depth.max(1) }
    }

    /// The best move in `board`, or `None` when there is no legal move.
    pub fn best_move(&self, board: &Board) -> Option<Move> {
        let mut best = None;
        let mut alpha = -MATE - 1;
        for mv in ordered_moves(board) {
            let mut next = board.clone();
            next.play_unchecked(mv);
            let score = -negamax(&next, self.depth - 1, -MATE - 1, -alpha, 1);
            if score > alpha {
                alpha = score;
                best = Some(mv);
            }
        }
        best
    }
}

fn ordered_moves(board: &Board) -> Vec<Move> {
    let mut moves = Vec::with_capacity(64);
    board.generate_moves(|piece_moves| {
        moves.extend(piece_moves);
        false
    });
    let them = board.colors(!board.side_to_move());
    // Captures of the most valuable piece first, then promotions, then the rest.
    moves.sort_by_key(|mv| {
        let victim = if them.has(mv.to) { board.piece_on(mv.to).map_or(0, value) } else { 0 };
        -(victim + mv.promotion.map_or(0, value))
    });
    moves
}

fn value(piece: Piece) -> i32 {
    match piece {
        Piece::Pawn => 100,
        Piece::Knight => 320,
        Piece::Bishop => 330,
        Piece::Rook => 500,
        Piece::Queen => 900,
        Piece::King => 0,
    }
}

/// The position's worth for the side to move: material, plus a little for pieces near the
/// centre and pawns that have advanced.
fn evaluate(board: &Board) -> i32 {
    let us = board.side_to_move();
    let mut score = 0;
    for color in [Color::White, Color::Black] {
        let sign = if color == us { 1 } else { -1 };
        for piece in Piece::ALL {
            for square in board.colored_pieces(color, piece) {
                let file = square.file() as i32;
                let rank = square.rank() as i32;
                let centre = 6 - ((2 * file - 7).abs() + (2 * rank - 7).abs()) / 2;
                let bonus = match piece {
                    Piece::Pawn => 5 * if color == Color::White { rank - 1 } else { 6 - rank },
                    Piece::Knight | Piece::Bishop => 4 * centre,
                    Piece::Queen => centre,
                    Piece::Rook | Piece::King => 0,
                };
                score += sign * (value(piece) + bonus);
            }
        }
    }
    score
}

fn negamax(board: &Board, depth: u32, mut alpha: i32, beta: i32, ply: i32) -> i32 {
    match board.status() {
        GameStatus::Won => return -MATE + ply,
        GameStatus::Drawn => return 0,
        GameStatus::Ongoing => {}
    }
    if depth == 0 {
        return evaluate(board);
    }
    for mv in ordered_moves(board) {
        let mut next = board.clone();
        next.play_unchecked(mv);
        let score = -negamax(&next, depth - 1, -beta, -alpha, ply + 1);
        if score >= beta {
            return beta;
        }
        alpha = alpha.max(score);
    }
    alpha
}

#[backend]
impl AlphaBeta {
    /// Answers the position with the engine's best move.
    fn query(&mut self, position: Position) -> Result<ChessMove, BoxError> {
        let board = position.board()?;
        let mv = self.best_move(&board).ok_or("no legal move in this position")?;
        Ok(ChessMove::answering(&position, display_uci_move(&board, mv).to_string()))
    }
}

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

/// An engine process that speaks UCI, such as Stockfish. See the [module docs](self).
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
    pub fn best_move(&mut self, position: &Position) -> Result<String, UciError> {
        // Answers left over from an earlier, failed query are not this one's.
        while self.lines.try_recv().is_ok() {}
        self.send(&format!("position fen {}", position.fen))?;
        self.send(&format!("go movetime {}", self.movetime.as_millis()))?;
        while let Some(line) = self.next_line("bestmove")? {
            let mut words = line.split_whitespace();
            if words.next() == Some("bestmove") {
                return match words.next() {
                    Some("(none)") | None => Err(UciError::Protocol(line)),
                    Some(mv) => Ok(mv.to_owned()),
                };
            }
        }
        Err(UciError::Dead(self.name.clone()))
    }
}

impl Drop for UciEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[backend]
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
