//! Chess: the referee against scripted engines, full games between engines, UCI notation for
//! the special moves, and Stockfish through the UCI backend (`.ci/run` installs it).

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::SharedBuf;
use sophon::backends::chess::{AlphaBeta, ChessMove, Game, Outcome, Position, Referee, Rejection, Side, UciEngine};
use sophon::{Backend, BoxBackend, BoxError, Context, EntityOptions, EntityState, SystemBuilder};

const WAIT: Duration = Duration::from_secs(120);

/// Answers every position with the next move of its script, legal or not.
struct Scripted(VecDeque<&'static str>);

impl Backend for Scripted {
    type Input = Position;
    type Output = ChessMove;

    fn query(&mut self, position: Position, ctx: &mut Context<ChessMove>) -> Result<(), BoxError> {
        let uci = self.0.pop_front().ok_or("the script ran out")?;
        ctx.send(ChessMove::answering(&position, uci))?;
        Ok(())
    }
}

fn scripted(moves: &[&'static str]) -> BoxBackend<Position, ChessMove> {
    Box::new(Scripted(moves.iter().copied().collect()))
}

/// Plays a game to its end; returns its record, the referee's printout and the system's report.
fn play(
    referee: Referee,
    white: BoxBackend<Position, ChessMove>,
    black: BoxBackend<Position, ChessMove>,
) -> (Game, String, sophon::Report) {
    let printout = SharedBuf::default();
    let referee = referee.output(printout.clone());
    let game = referee.game();
    let mut builder = SystemBuilder::new();
    let referee = builder.entity("referee", referee);
    let white = builder.boxed_entity("white", white, EntityOptions::new());
    let black = builder.boxed_entity("black", black, EntityOptions::new());
    builder.query_edge(&referee, &white);
    builder.query_edge(&referee, &black);
    builder.loop_edge(&white, &referee);
    builder.loop_edge(&black, &referee);
    let system = builder.spawn().unwrap();
    assert!(system.wait_for_stop(Some(WAIT)), "the game did not end");
    let report = system.shutdown(WAIT);
    (game, printout.text(), report)
}

#[test]
fn the_referee_rejects_an_illegal_move_and_asks_again() {
    let referee = Referee::new("white", "black").max_plies(2);
    let (game, printout, report) = play(referee, scripted(&["e2e5", "e2e4"]), scripted(&["e7e5"]));
    assert_eq!(game.rejections(), [Rejection { side: Side::White, uci: "e2e5".into(), ply: 0 }]);
    assert_eq!(game.moves(), ["e2e4", "e7e5"]);
    assert_eq!(game.outcome(), Some(Outcome::MoveLimit));
    assert!(printout.contains("rejected white e2e5: illegal in this position"), "{printout}");
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_referee_without_boards_prints_each_move_alone() {
    let referee = Referee::new("white", "black").max_plies(2).boards(false);
    let (game, printout, _) = play(referee, scripted(&["e2e4"]), scripted(&["e7e5"]));
    assert_eq!(game.moves(), ["e2e4", "e7e5"]);
    assert!(printout.starts_with("white vs black\n1. e2e4\n1... e7e5\n"), "{printout}");
    assert!(!printout.contains("a b c d e f g h"), "{printout}");
    // With boards, each move comes with the board it led to.
    let referee = Referee::new("white", "black").max_plies(1);
    let (_, printout, _) = play(referee, scripted(&["e2e4"]), scripted(&[]));
    assert_eq!(printout.matches("  a b c d e f g h").count(), 2, "{printout}");
    assert!(printout.contains("1. e2e4\n8 r n b q k b n r\n"), "{printout}");
}

#[test]
fn a_side_that_keeps_making_illegal_moves_forfeits() {
    let referee = Referee::new("white", "black");
    let (game, printout, _) = play(referee, scripted(&["e2e4"]), scripted(&["xyzzy", "e8e6", "a1a2"]));
    assert_eq!(game.moves(), ["e2e4"]);
    assert_eq!(game.outcome(), Some(Outcome::Forfeit { loser: Side::Black }));
    assert_eq!(game.rejections().len(), 3);
    assert!(printout.contains("rejected black xyzzy: not a move in UCI notation"), "{printout}");
    assert!(printout.ends_with(&format!("black made 3 illegal moves and forfeits\nfinal position: {}\n", game.fen())));
}

#[test]
fn castling_en_passant_and_promotion_go_through_in_uci_notation() {
    // White can take d5 en passant; Black castles long; White castles short; Black promotes.
    let referee =
        Referee::new("white", "black").from_fen("r3k2r/8/8/3pP3/8/8/1p6/R3K2R w KQkq d6 0 1").unwrap().max_plies(4);
    let (game, printout, report) = play(referee, scripted(&["e5d6", "e1g1"]), scripted(&["e8c8", "b2b1q"]));
    assert!(game.rejections().is_empty(), "{printout}");
    assert_eq!(game.moves(), ["e5d6", "e8c8", "e1g1", "b2b1q"]);
    assert_eq!(game.fen(), "2kr3r/8/3P4/8/8/8/8/Rq3RK1 w - - 0 3");
    assert!(report.is_clean(), "{report}");
    assert!(printout.contains("1. e5d6\n"), "{printout}");
    assert!(printout.contains("2... b2b1q\n"), "{printout}");
}

#[test]
fn the_referee_ends_the_game_at_checkmate() {
    // Fool's mate.
    let (game, printout, _) =
        play(Referee::new("white", "black"), scripted(&["f2f3", "g2g4"]), scripted(&["e7e5", "d8h4"]));
    assert_eq!(game.outcome(), Some(Outcome::Checkmate { winner: Side::Black }));
    assert!(printout.contains("checkmate: black wins"), "{printout}");
}

/// Replays `moves` from the start, each checked against the rules; returns the final board.
fn replay(moves: &[String]) -> cozy_chess::Board {
    let mut board = cozy_chess::Board::default();
    for uci in moves {
        let mv = cozy_chess::util::parse_uci_move(&board, uci).unwrap();
        board.try_play(mv).unwrap_or_else(|e| panic!("{uci} is illegal: {e:?}"));
    }
    board
}

#[test]
fn a_game_between_two_engines_ends_in_a_legal_final_position() {
    let referee = Referee::new("white", "black").max_plies(300);
    let (game, _, report) = play(referee, Box::new(AlphaBeta::new(2)), Box::new(AlphaBeta::new(1)));
    assert!(report.is_clean(), "{report}");
    let outcome = game.outcome().expect("the game ended");
    let board = replay(&game.moves());
    assert_eq!(board.to_string(), game.fen());
    match outcome {
        Outcome::Checkmate { winner } => {
            assert_eq!(board.status(), cozy_chess::GameStatus::Won);
            assert_eq!(Side::from(!board.side_to_move()), winner);
        }
        Outcome::Stalemate => assert!(board.status() == cozy_chess::GameStatus::Drawn && board.checkers().is_empty()),
        Outcome::MoveLimit => assert_eq!(game.moves().len(), 300),
        Outcome::FiftyMoves => assert!(board.halfmove_clock() >= 100),
        Outcome::Repetition | Outcome::InsufficientMaterial => {}
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[test]
fn the_alpha_beta_engine_finds_a_mate_in_one() {
    // White mates with Ra8.
    let board: cozy_chess::Board = "6k1/5ppp/8/8/8/8/8/R5K1 w - - 0 1".parse().unwrap();
    let mv = AlphaBeta::new(2).best_move(&board).unwrap();
    assert_eq!(mv.to_string(), "a1a8");
}

#[test]
fn stockfish_plays_through_the_uci_backend() {
    let stockfish = UciEngine::stockfish().unwrap().movetime(Duration::from_millis(20));
    assert!(stockfish.name().starts_with("Stockfish"), "{}", stockfish.name());
    let referee = Referee::new("white", "black").max_plies(12);
    let (game, _, report) = play(referee, Box::new(AlphaBeta::new(2)), Box::new(stockfish));
    assert!(report.is_clean(), "{report}");
    assert!(game.rejections().is_empty());
    assert!(matches!(game.outcome(), Some(Outcome::MoveLimit | Outcome::Checkmate { .. })));
    replay(&game.moves());
}

#[test]
fn a_killed_engine_process_is_an_error_and_the_agent_goes_on() {
    let stockfish = UciEngine::stockfish().unwrap().movetime(Duration::from_millis(20));
    let pid = stockfish.pid();
    let mut builder = SystemBuilder::new();
    let engine = builder.entity("stockfish", stockfish);
    let moves = builder.output(&engine, "moves");
    let system = builder.spawn().unwrap();
    let failures = system.failures();
    let engine = system.handle(&engine);

    engine.query(Position::start()).unwrap();
    let first = moves.recv_timeout(WAIT).unwrap();
    assert_eq!(first.ply, Some(0));
    assert!(cozy_chess::util::parse_uci_move(&cozy_chess::Board::default(), &first.uci).is_ok());

    let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    for _ in 0..2 {
        engine.query(Position::start()).unwrap();
        let failure = failures.recv_timeout(WAIT).unwrap();
        assert_eq!(failure.entity, "stockfish");
        assert!(
            failure.message().starts_with("the engine `Stockfish") && failure.message().ends_with("` has died"),
            "{}",
            failure.message()
        );
    }
    assert_eq!(engine.state().unwrap(), EntityState::Running);
    let report = system.shutdown(WAIT);
    assert_eq!(report.entity("stockfish").unwrap().stats.errors, 2);
}

#[test]
fn an_engine_program_that_is_not_there_is_an_error() {
    let err = UciEngine::spawn("/nonexistent/engine").unwrap_err();
    assert!(err.to_string().starts_with("cannot start the engine `/nonexistent/engine`: "), "{err}");
    let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>());
    assert_eq!(source.map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound), "the cause is kept");
}

#[test]
fn a_person_sees_the_board_and_types_a_move() {
    let text: String = Position::start().into();
    assert!(text.starts_with("8 r n b q k b n r\n7 p p p p p p p p\n"), "{text}");
    assert!(text.ends_with("  a b c d e f g h\nwhite to move (UCI, such as e2e4)"), "{text}");
    assert_eq!(ChessMove::from(" e2e4\n".to_owned()), ChessMove { uci: "e2e4".into(), ply: None });
}

/// A UCI "engine" written as a shell script: it does the handshake, then answers `go` with
/// `on_go` (nothing, when empty).
fn fake_engine(name: &str, on_go: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sophon-uci-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\nwhile read -r line; do\n  case \"$line\" in\n    uci) echo 'id name {name}'; echo uciok ;;\n    isready) echo readyok ;;\n    go*) {on_go} ;;\n    quit) exit 0 ;;\n  esac\ndone\n"
    );
    std::fs::write(&path, script).unwrap();
    let status = std::process::Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    assert!(status.success());
    path
}

#[test]
fn a_late_bestmove_after_a_timeout_never_answers_the_next_position() {
    // The first search answers after 1 s, past the 500 ms the engine is given; the next ones
    // after 300 ms, so the first one's answer would come in the middle of the third. `stop` ends a search under way at once, as UCI engines do.
    let path = std::env::temp_dir().join(format!("sophon-uci-{}", std::process::id())).join("slow");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let script = r#"#!/bin/sh
n=0
job=
while read -r line; do
  case "$line" in
    uci) echo 'id name slow'; echo uciok ;;
    isready) echo readyok ;;
    go*)
      n=$((n+1))
      if [ "$n" -eq 1 ]; then (sleep 1; echo 'bestmove a2a3') & job=$!
      else (sleep 0.3; echo "bestmove b2b$((n+1))") & job=$!
      fi ;;
    stop) if kill "$job" 2>/dev/null; then echo 'bestmove a2a3'; fi ;;
    quit) exit 0 ;;
  esac
done
"#;
    std::fs::write(&path, script).unwrap();
    assert!(std::process::Command::new("chmod").arg("+x").arg(&path).status().unwrap().success());
    let mut engine =
        UciEngine::spawn(&path).unwrap().movetime(Duration::from_millis(1)).timeout(Duration::from_millis(500));
    let position = Position::start();
    let err = engine.best_move(&position).unwrap_err();
    assert!(err.to_string().contains("bestmove"), "{err}");
    assert_eq!(engine.best_move(&position).unwrap(), "b2b3");
    // Without the stop, the first search's a2a3 (at 1 s) would answer this one (1.1 s).
    assert_eq!(engine.best_move(&position).unwrap(), "b2b4");
    // Long after, nothing stale is left to take a later answer's place.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(engine.best_move(&position).unwrap(), "b2b5");
}

#[test]
fn a_misbehaving_engine_process_is_an_error_reply() {
    let liar = UciEngine::spawn(fake_engine("liar", "echo 'info nonsense'; echo 'bestmove (none)'")).unwrap();
    assert_eq!(liar.name(), "liar");
    let mute = UciEngine::spawn(fake_engine("mute", ":")).unwrap().timeout(Duration::from_millis(500));
    let mut builder = SystemBuilder::new();
    let liar = builder.entity("liar", liar);
    let mute = builder.entity("mute", mute);
    let system = builder.spawn().unwrap();
    let failures = system.failures();
    system.handle(&liar).query(Position::start()).unwrap();
    assert_eq!(
        failures.recv_timeout(WAIT).unwrap().message(),
        "the engine answered something that is not UCI: `bestmove (none)`"
    );
    system.handle(&mute).query(Position::start()).unwrap();
    assert_eq!(failures.recv_timeout(WAIT).unwrap().message(), "the engine did not answer `bestmove` in time");
    let report = system.shutdown(WAIT);
    assert_eq!(report.entity("liar").unwrap().state, EntityState::Stopped);
    assert_eq!(report.entity("mute").unwrap().stats.errors, 1);
}
