//! The referee: holds the game, checks every move, ends the game.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use cozy_chess::util::{display_uci_move, parse_uci_move};
use cozy_chess::{Board, Color, GameStatus, Piece};

use crate::{BoxError, Context, backend};

use super::{ChessMove, Position, picture};

/// How many illegal moves a side may make before it forfeits.
pub const MAX_REJECTIONS: usize = 3;

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

/// Holds a game between two siblings and checks every move. See the [module docs](super).
pub struct Referee {
    board: Board,
    /// Positions since the last capture or pawn move, for threefold repetition.
    history: Vec<Board>,
    ply: u32,
    max_plies: u32,
    sides: [String; 2],
    rejected: [usize; 2],
    output: Box<dyn Write + Send>,
    /// Whether the board is printed after each move, not only the move.
    boards: bool,
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
            boards: true,
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

    /// Whether the board is printed after each move, or only the move (default: the board too).
    /// With a person at the terminal, turn it off: the position the person is asked to answer
    /// shows the board already, right after the move that led to it.
    #[must_use]
    pub fn boards(mut self, boards: bool) -> Self {
        self.boards = boards;
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
        writeln!(self.output, "{number}{dots} {uci}")?;
        if self.boards {
            writeln!(self.output, "{}", picture(&self.board))?;
        }
        match self.outcome() {
            Some(outcome) => Ok(self.end(outcome, ctx)?),
            None => self.ask(ctx),
        }
    }

    /// Asks White for the first move.
    fn start(&mut self, ctx: &mut Context<Position>) -> Result<(), BoxError> {
        writeln!(self.output, "{} vs {}", self.sides[0], self.sides[1])?;
        if self.boards {
            writeln!(self.output, "{}", picture(&self.board))?;
        }
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
