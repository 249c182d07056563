//! A small alpha-beta engine.

use cozy_chess::util::display_uci_move;
use cozy_chess::{Board, Color, GameStatus, Move, Piece};

use crate::{BoxError, backend};

use super::{ChessMove, Position};

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

#[backend(blocking)]
impl AlphaBeta {
    /// Answers the position with the engine's best move.
    fn query(&mut self, position: Position) -> Result<ChessMove, BoxError> {
        let board = position.board()?;
        let mv = self.best_move(&board).ok_or("no legal move in this position")?;
        Ok(ChessMove::answering(&position, display_uci_move(&board, mv).to_string()))
    }
}
