//! A person talks to a language model: two backends, asked in turn.
//!
//! ```text
//! cargo run --release --example chat                       # SmolLM2-135M on this CPU, offline
//! cargo run --release --example chat -- --http URL --model NAME   # an OpenAI-compatible server
//! ```
//!
//! Options: `--system PROMPT`, `--max-tokens N`, `--seed N`, `--model-path FILE` (a GGUF chat
//! model; else `$SOPHON_MODEL`, else the cache directory). With `--http`, `OPENAI_API_KEY` is
//! sent if set, and `--model` defaults to `$OPENAI_MODEL`.
//!
//! Type `/quit`, or end the input, to leave. With piped input it runs without a terminal and
//! exits at the end of the input. `--graph` prints the system's graph (Mermaid) and exits.

#[path = "common/conversation.rs"]
mod conversation;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sophon::backends::llm::{ChatOptions, HttpLlm, LocalLlm};
use sophon::backends::person::Person;
use sophon::{BoxBackend, agent_system};

/// The system prompt unless `--system` gives one: of those tried, the one whose replies most
/// often recalled what was said earlier (`examples/model_recall.rs`, BENCHMARKS.md).
const DEFAULT_SYSTEM: &str =
    "You are a helpful assistant. Answer briefly, using what the user told you earlier in the conversation.";

const USAGE: &str = "usage: chat [--http URL [--model NAME]] [--model-path FILE] [--system PROMPT] \
                     [--max-tokens N] [--seed N] [--graph]";

#[derive(Debug, Default)]
struct Args {
    http: Option<String>,
    model: Option<String>,
    model_path: Option<PathBuf>,
    system: Option<String>,
    max_tokens: Option<usize>,
    seed: Option<u64>,
    graph: bool,
}

agent_system! {
    /// A person and a model. No edges: `run` asks each in turn, and each answer comes back to
    /// it alone.
    struct Chat(model: BoxBackend<String, String>);
    person: Person = Person::terminal().prompt("you> ").label("model> ");
    model: BoxBackend<String, String> = model;
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("`{flag}` needs a value"));
        match flag.as_str() {
            "--http" => args.http = Some(value()?),
            "--model" => args.model = Some(value()?),
            "--model-path" => args.model_path = Some(value()?.into()),
            "--system" => args.system = Some(value()?),
            "--max-tokens" => args.max_tokens = Some(value()?.parse().map_err(|e| format!("`--max-tokens`: {e}"))?),
            "--graph" => args.graph = true,
            "--seed" => args.seed = Some(value()?.parse().map_err(|e| format!("`--seed`: {e}"))?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    if args.graph {
        print!("{}", Chat::MERMAID);
        return Ok(());
    }
    let mut options = ChatOptions::new().system_prompt(args.system.unwrap_or_else(|| DEFAULT_SYSTEM.into()));
    if let Some(n) = args.max_tokens {
        options = options.max_tokens(n);
    }
    if let Some(seed) = args.seed {
        options = options.seed(seed);
    }

    let (backend, name): (BoxBackend<String, String>, String) = match args.http {
        Some(url) => {
            let name = match args.model.or_else(|| std::env::var("OPENAI_MODEL").ok()) {
                Some(name) => name,
                None => return Err("`--http` needs `--model NAME` or `OPENAI_MODEL`".into()),
            };
            let mut llm = HttpLlm::new(url, name.clone()).options(options);
            if let Ok(key) = std::env::var("OPENAI_API_KEY") {
                llm = llm.api_key(key);
            }
            (Box::new(llm), name)
        }
        None => {
            if std::env::var_os("RAYON_NUM_THREADS").is_none() {
                eprintln!(
                    "chat: RAYON_NUM_THREADS is not set: set it to the number of cores for about a third more speed (scripts/chat does)"
                );
            }
            eprintln!("chat: loading the model...");
            let llm = LocalLlm::load(args.model_path.as_deref(), options)?;
            let name = llm.path().file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
            (Box::new(llm), name)
        }
    };

    let system = Chat::spawn(backend)?;

    println!("Talking to {name}. Type /quit or end the input to leave.");
    conversation::converse(&system.person, &system.model, "chat")?;
    let report = system.shutdown(Duration::from_secs(30));
    if !report.is_clean() {
        eprintln!("{report}");
        return Err("the conversation did not end cleanly".into());
    }
    Ok(())
}
