//! Two engines play chess; a referee checks every move, prints the board and ends the game.
//!
//! ```text
//! cargo run --example chess                 # alpha-beta (depth 3) against alpha-beta (depth 2)
//! cargo run --example chess -- --stockfish  # Stockfish (the UCI engine process) plays Black
//! cargo run --example chess -- --human      # you play White at the terminal, in UCI (e2e4)
//! ```
//!
//! `--max-plies N` sets the move limit (default 200). The game ends by itself: checkmate,
//! stalemate, a draw rule or the move limit.

use std::process::ExitCode;
use std::time::Duration;

use sophon::backends::chess::{AlphaBeta, ChessMove, Position, Referee, UciEngine};
use sophon::backends::person::Person;
use sophon::{Node, SystemBuilder};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chess: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (mut stockfish, mut human, mut max_plies) = (false, false, 200);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--stockfish" => stockfish = true,
            "--human" => human = true,
            "--max-plies" => max_plies = args.next().ok_or("`--max-plies` needs a number")?.parse()?,
            other => return Err(format!("unknown argument `{other}`; try --stockfish, --human, --max-plies N").into()),
        }
    }

    // With a person playing, the board comes with their prompt: the referee prints moves only.
    let referee = Referee::new("white", "black").max_plies(max_plies).boards(!human);
    let game = referee.game();
    let mut builder = SystemBuilder::new();
    let referee = builder.entity("referee", referee);
    if human {
        // A person reads positions as text and types moves: the edges convert both ways.
        let person = builder.entity("white", Person::terminal().prompt("your move> "));
        seat(&mut builder, &referee, &person);
    } else {
        let engine = builder.entity("white", AlphaBeta::new(3));
        seat(&mut builder, &referee, &engine);
    }
    if stockfish {
        let engine = UciEngine::stockfish()
            .map_err(|e| format!("{e}; install it with `apt install stockfish`"))?
            .movetime(Duration::from_millis(50));
        println!("Black is {}", engine.name());
        let engine = builder.entity("black", engine);
        seat(&mut builder, &referee, &engine);
    } else {
        let engine = builder.entity("black", AlphaBeta::new(2));
        seat(&mut builder, &referee, &engine);
    }
    let system = builder.spawn()?;

    // A side that fails (an engine process that dies, say) cannot answer: the game is over.
    let failures = system.failures();
    while !system.wait_for_stop(Some(Duration::from_millis(50))) {
        if let Ok(failure) = failures.try_recv() {
            eprintln!("chess: {failure}; the game is abandoned");
            system.request_stop();
        }
    }
    let report = system.shutdown(Duration::from_secs(10));
    println!("{} moves: {}", game.moves().len(), game.moves().join(" "));
    if !report.is_clean() {
        eprintln!("{report}");
        return Err("the game did not end cleanly".into());
    }
    Ok(())
}

/// Seats a player at the board: the referee asks it (a query edge), and it answers the referee
/// (a query edge back, which closes an intended loop).
fn seat<I, O>(builder: &mut SystemBuilder, referee: &Node<ChessMove, Position>, player: &Node<I, O>)
where
    I: From<Position> + Send + 'static,
    O: Send + 'static,
    ChessMove: From<O>,
{
    builder.query_edge(referee, player);
    builder.loop_edge(player, referee);
}
