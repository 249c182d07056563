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

mod alpha_beta;
mod referee;
mod uci;

use cozy_chess::{Board, Color};

use crate::BoxError;

pub use self::alpha_beta::AlphaBeta;
pub use self::referee::{Game, MAX_REJECTIONS, Outcome, Referee, Rejection, Side};
pub use self::uci::{UciEngine, UciError};

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
