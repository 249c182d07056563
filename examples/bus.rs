//! The chat across two processes: the model in one, the person in another, over a Redis
//! broker (the `bus` feature). In two terminals:
//!
//! ```text
//! cargo run --release --example bus -- model     # serves SmolLM2-135M until /quit
//! cargo run --release --example bus -- person    # talks to it
//! ```
//!
//! The broker is the one at `SOPHON_BUS_URL` (`redis://host:port`, `redis+unix:///path`); without
//! it, the first of the two starts a local `redis-server` on a unix socket in the temporary
//! directory, which the other then finds (stop it with `redis-cli -s PATH shutdown`).
//!
//! The model process serves until `/quit` or the end of its input, or, with `--answers N`, until
//! it has answered N times. It takes the chat example's model options: `--model-path FILE`,
//! `--system PROMPT`, `--max-tokens N`, `--seed N`, or `--http URL --model NAME`. Several model
//! processes share the person's messages (one consumer group). The person process ends at
//! `/quit` or at the end of its input.

#[path = "common/conversation.rs"]
mod conversation;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use sophon::backends::llm::{ChatOptions, HttpLlm, LocalLlm};
use sophon::backends::person::Person;
use sophon::bus::{BUS_URL_VAR, Bus};
use sophon::{BoxBackend, agent_system};

/// The namespace of the example's streams on the broker.
const NAMESPACE: &str = "sophon-chat";

const USAGE: &str = "usage: bus model [--answers N] [--http URL [--model NAME]] [--model-path FILE] \
                     [--system PROMPT] [--max-tokens N] [--seed N]\n       bus person";

const DEFAULT_SYSTEM: &str =
    "You are a helpful assistant. Answer briefly, using what the user told you earlier in the conversation.";

agent_system! {
    #![bus(bus)]
    /// The model's side: the model, exported on the bus.
    struct ModelSide(bus: Bus, model: BoxBackend<String, String>);
    #[export]
    model: BoxBackend<String, String> = model;
}

agent_system! {
    #![bus(bus)]
    /// The person's side: a person, and the model of the other process.
    struct PersonSide(bus: Bus);
    person: Person = Person::terminal().prompt("you> ").label("model> ");
    remote model: String => String;
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let result = match args.next().as_deref() {
        Some("model") => model(args),
        Some("person") => person(),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bus: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The broker at `SOPHON_BUS_URL`, or a local one, started if it is not running yet.
fn bus() -> Result<Bus, Box<dyn std::error::Error>> {
    if std::env::var_os(BUS_URL_VAR).is_some() {
        return Ok(Bus::from_env(NAMESPACE)?);
    }
    let dir = std::env::temp_dir().join("sophon-bus-example");
    let socket = dir.join("redis.sock");
    let url = format!("redis+unix://{}", socket.display());
    if let Ok(bus) = Bus::connect(&url, NAMESPACE) {
        return Ok(bus);
    }
    std::fs::create_dir_all(&dir)?;
    let status = Command::new("redis-server")
        .args(["--port", "0", "--daemonize", "yes", "--save", "", "--unixsocket"])
        .arg(&socket)
        .args(["--unixsocketperm", "700", "--dir"])
        .arg(&dir)
        .status()
        .map_err(|e| format!("could not start redis-server ({e}): install it, or set {BUS_URL_VAR}"))?;
    if !status.success() {
        return Err(format!("redis-server failed to start ({status})").into());
    }
    let started = Instant::now();
    loop {
        match Bus::connect(&url, NAMESPACE) {
            Ok(bus) => {
                eprintln!("bus: started a broker at {url}; stop it with `redis-cli -s {} shutdown`", socket.display());
                return Ok(bus);
            }
            Err(e) if started.elapsed() > Duration::from_secs(10) => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Serves the model on the bus, as the entity `model`.
fn model(mut args: impl Iterator<Item = String>) -> Result<(), Box<dyn std::error::Error>> {
    let (mut answers, mut http, mut name, mut path, mut system, mut max_tokens, mut seed) =
        (None, None, None, None::<PathBuf>, None, None, None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("`{flag}` needs a value"));
        match flag.as_str() {
            "--answers" => answers = Some(value()?.parse::<u64>().map_err(|e| format!("`--answers`: {e}"))?),
            "--http" => http = Some(value()?),
            "--model" => name = Some(value()?),
            "--model-path" => path = Some(value()?.into()),
            "--system" => system = Some(value()?),
            "--max-tokens" => max_tokens = Some(value()?.parse::<usize>().map_err(|e| format!("`--max-tokens`: {e}"))?),
            "--seed" => seed = Some(value()?.parse::<u64>().map_err(|e| format!("`--seed`: {e}"))?),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
        }
    }
    let mut options = ChatOptions::new().system_prompt(system.unwrap_or_else(|| DEFAULT_SYSTEM.into()));
    if let Some(n) = max_tokens {
        options = options.max_tokens(n);
    }
    if let Some(seed) = seed {
        options = options.seed(seed);
    }
    let bus = bus()?;
    let backend: BoxBackend<String, String> = match http {
        Some(url) => {
            let name = name.or_else(|| std::env::var("OPENAI_MODEL").ok()).ok_or("`--http` needs `--model NAME`")?;
            let mut llm = HttpLlm::new(url, name).options(options);
            if let Ok(key) = std::env::var("OPENAI_API_KEY") {
                llm = llm.api_key(key);
            }
            Box::new(llm)
        }
        None => {
            eprintln!("bus: loading the model...");
            Box::new(LocalLlm::load(path.as_deref(), options)?)
        }
    };
    let stream = bus.stream("model");
    let system = ModelSide::spawn(bus, backend)?;
    println!("Serving the model on {stream}. Type /quit or end the input to stop.");
    match answers {
        // Until it has answered N times: the entity's handled count.
        Some(n) => {
            while system.model.stats().map_or(0, |s| s.handled) < n {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        None => {
            for line in std::io::stdin().lock().lines() {
                if line?.trim() == "/quit" {
                    break;
                }
            }
        }
    }
    let report = system.shutdown(Duration::from_secs(30));
    print!("{report}");
    if !report.is_clean() {
        return Err("the model did not stop cleanly".into());
    }
    Ok(())
}

/// Talks to the model of another process, as the chat example does to a model of its own.
fn person() -> Result<(), Box<dyn std::error::Error>> {
    let bus = bus()?;
    let stream = bus.stream("model");
    let system = PersonSide::spawn(bus)?;
    println!("Talking to the model on {stream}. Type /quit or end the input to leave.");
    conversation::converse(&system.person, &system.model, "bus")?;
    let report = system.shutdown(Duration::from_secs(30));
    if !report.is_clean() {
        eprintln!("{report}");
        return Err("the conversation did not end cleanly".into());
    }
    Ok(())
}
