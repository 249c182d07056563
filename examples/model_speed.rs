//! Measures the local model: time to first token at each turn of a scripted 10-turn
//! conversation, and tokens per second.
//!
//! ```text
//! cargo run --example model_speed                     # the profile `scripts/chat` runs
//! cargo run --release --example model_speed -- --tokens 200
//! ```
//!
//! `--tokens N` is the longest reply of the conversation (default 64; the long reply takes at
//! least 200); the model is the one `scripts/chat` uses.
//! `scripts/bench-llama-cpp.py` measures llama.cpp the same way, for comparison.

use std::time::{Duration, Instant};

use sophon::SystemBuilder;
use sophon::backends::llm::{ChatOptions, LocalLlm};

const TURNS: [&str; 10] = [
    "Hello! My name is Ada and I live in Lisbon.",
    "I work as a baker. I start at four in the morning.",
    "My favourite bread is a sourdough with rye.",
    "On weekends I play chess in the park.",
    "I have a cat called Pixel.",
    "What do you think I should bake for a party?",
    "Can you suggest a name for a new bakery?",
    "What is a good opening for a beginner at chess?",
    "How do I keep a cat off the kitchen counter?",
    "Remind me: what is my name and where do I live?",
];

/// The prompt of the long reply.
const STORY: &str = "Write a long story about a dragon who becomes a baker.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut tokens = 64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tokens" => tokens = args.next().ok_or("`--tokens` needs a number")?.parse()?,
            other => return Err(format!("unknown argument `{other}`; try --tokens N").into()),
        }
    }
    // candle's speed depends on it (see `LocalLlm`): say what this run had.
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    println!("RAYON_NUM_THREADS: {threads}");
    let options = ChatOptions::new().max_tokens(tokens);
    let llm = LocalLlm::load(None, options)?;
    let counter = LocalLlm::load(None, ChatOptions::new())?;
    let mut builder = SystemBuilder::new();
    let model = builder.entity("model", llm);
    let system = builder.spawn()?;
    let model = system.handle(&model);

    println!("turn | prompt tokens | time to first token | reply tokens | tokens/s after the first");
    let (mut generated, mut generating) = (0usize, Duration::ZERO);
    for (i, turn) in TURNS.iter().enumerate() {
        let asked = Instant::now();
        let mut reply = model.ask((*turn).to_string())?;
        let first = reply.recv()?.unwrap_or_default();
        let ttft = asked.elapsed();
        let mut text = first;
        for piece in reply {
            text.push_str(&piece?);
        }
        let rest = asked.elapsed() - ttft;
        let count = counter.count_tokens(&text)?;
        let rate = count.saturating_sub(1) as f64 / rest.as_secs_f64().max(1e-9);
        generated += count.saturating_sub(1);
        generating += rest;
        let prompt = counter.count_tokens(turn)?;
        println!("{:>4} | {prompt:>13} | {:>16.1} ms | {count:>12} | {rate:>8.1}", i + 1, ttft.as_secs_f64() * 1e3);
    }
    println!(
        "overall: {:.1} tokens/s after the first token of each reply",
        generated as f64 / generating.as_secs_f64().max(1e-9)
    );

    // One long reply on a fresh conversation: the rate the model holds over many tokens.
    let long = LocalLlm::load(None, ChatOptions::new().max_tokens(tokens.max(200)))?;
    let mut builder = SystemBuilder::new();
    let story = builder.entity("story", long);
    let system2 = builder.spawn()?;
    let story = system2.handle(&story);
    let asked = Instant::now();
    let mut reply = story.ask(STORY.to_string())?;
    let mut text = reply.recv()?.unwrap_or_default();
    let ttft = asked.elapsed();
    for piece in reply {
        text.push_str(&piece?);
    }
    let rest = asked.elapsed() - ttft;
    let count = counter.count_tokens(&text)?;
    println!(
        "long reply: {count} tokens, first after {:.1} ms, then {:.1} tokens/s",
        ttft.as_secs_f64() * 1e3,
        count.saturating_sub(1) as f64 / rest.as_secs_f64().max(1e-9)
    );
    system2.shutdown(Duration::from_secs(30));
    system.shutdown(Duration::from_secs(30));
    Ok(())
}
