//! Scores how well the local model recalls what was said earlier in a conversation: scripted
//! conversations whose last question needs an earlier turn (a name, a number, a preference),
//! each run over several seeds, under several settings. A reply scores when it contains the fact.
//!
//! ```text
//! cargo run --release --example model_recall              # every setting, 5 seeds
//! cargo run --release --example model_recall -- --seeds 3
//! cargo run --release --example model_recall -- --only greedy   # the settings named so
//! ```

use std::time::Duration;

use sophon::SystemBuilder;
use sophon::backends::llm::{ChatOptions, LocalLlm};

/// The turns of a conversation, and what its last reply must contain (any of them).
const CONVERSATIONS: &[(&[&str], &[&str])] = &[
    (&["Hello! My name is Tom and my hobby is fishing.", "What is my name?"], &["Tom"]),
    (&["Hi, I'm Maya and I love painting.", "What do I love doing?"], &["paint"]),
    (
        &["My favourite number is 42.", "Tell me a fun fact about the sea.", "What is my favourite number?"],
        &["42", "forty-two"],
    ),
    (&["I live in Oslo.", "What's a good winter hobby?", "Which city do I live in?"], &["Oslo"]),
    (&["I prefer tea to coffee.", "What drink do I prefer?"], &["tea"]),
    (&["My dog is called Biscuit.", "What is my dog's name?"], &["Biscuit"]),
    (&["I was born in 1990.", "In which year was I born?"], &["1990"]),
    (
        &["My sister's name is Clara.", "Give me an idea for a birthday present.", "What is my sister called?"],
        &["Clara"],
    ),
];

/// One way to set the model up.
struct Setting {
    name: &'static str,
    system: &'static str,
    temperature: f64,
    top_p: Option<f64>,
    repeat_penalty: f32,
}

const PLAIN: &str = "You are a helpful assistant. Answer briefly.";
const REMEMBER: &str =
    "You are a helpful assistant. Answer briefly, using what the user told you earlier in the conversation.";

const ABOUT_USER: &str = "You are a helpful assistant talking with a user. When the user asks about themselves (their name, what they like), answer from what they told you earlier. Answer briefly.";
const KEEP_NOTES: &str = "You are a helpful assistant. Remember what the user tells you about themselves and use it in your answers. Answer briefly.";

const SETTINGS: &[Setting] = &[
    Setting {
        name: "greedy, penalty 1.1 (the old default)",
        system: PLAIN,
        temperature: 0.0,
        top_p: None,
        repeat_penalty: 1.1,
    },
    Setting { name: "greedy, no penalty", system: PLAIN, temperature: 0.0, top_p: None, repeat_penalty: 1.0 },
    Setting {
        name: "t 0.2, top-p 0.9, penalty 1.1 (model card)",
        system: PLAIN,
        temperature: 0.2,
        top_p: Some(0.9),
        repeat_penalty: 1.1,
    },
    Setting {
        name: "t 0.2, top-p 0.9, no penalty",
        system: PLAIN,
        temperature: 0.2,
        top_p: Some(0.9),
        repeat_penalty: 1.0,
    },
    Setting {
        name: "t 0.2, top-p 0.9, penalty 1.1, remembering prompt",
        system: REMEMBER,
        temperature: 0.2,
        top_p: Some(0.9),
        repeat_penalty: 1.1,
    },
    Setting {
        name: "greedy, penalty 1.1, remembering prompt",
        system: REMEMBER,
        temperature: 0.0,
        top_p: None,
        repeat_penalty: 1.1,
    },
    Setting {
        name: "greedy, penalty 1.1, about-the-user prompt",
        system: ABOUT_USER,
        temperature: 0.0,
        top_p: None,
        repeat_penalty: 1.1,
    },
    Setting {
        name: "greedy, penalty 1.1, keep-notes prompt",
        system: KEEP_NOTES,
        temperature: 0.0,
        top_p: None,
        repeat_penalty: 1.1,
    },
    Setting { name: "greedy, penalty 1.05", system: PLAIN, temperature: 0.0, top_p: None, repeat_penalty: 1.05 },
    Setting { name: "greedy, penalty 1.2", system: PLAIN, temperature: 0.0, top_p: None, repeat_penalty: 1.2 },
    Setting { name: "greedy, penalty 1.3", system: PLAIN, temperature: 0.0, top_p: None, repeat_penalty: 1.3 },
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seeds = 5u64;
    let mut only = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seeds" => seeds = args.next().ok_or("`--seeds` needs a number")?.parse()?,
            "--only" => only = args.next().ok_or("`--only` needs a part of a setting's name")?,
            other => return Err(format!("unknown argument `{other}`; try --seeds N, --only TEXT").into()),
        }
    }
    println!("setting | recalled | of");
    for setting in SETTINGS.iter().filter(|s| s.name.contains(&only)) {
        let mut recalled = 0;
        let mut runs = 0;
        let mut misses = Vec::new();
        for seed in 1..=seeds {
            for (turns, facts) in CONVERSATIONS {
                let mut options = ChatOptions::new()
                    .system_prompt(setting.system)
                    .max_tokens(48)
                    .temperature(setting.temperature)
                    .seed(seed);
                if let Some(p) = setting.top_p {
                    options = options.top_p(p);
                }
                let llm = LocalLlm::load(None, options)?.repeat_penalty(setting.repeat_penalty);
                let mut builder = SystemBuilder::new();
                let model = builder.entity("model", llm);
                let system = builder.spawn()?;
                let model = system.handle(&model);
                let mut last = String::new();
                for turn in *turns {
                    last = model.ask((*turn).to_string())?.collect::<Result<String, _>>()?;
                }
                system.shutdown(Duration::from_secs(30));
                runs += 1;
                let lower = last.to_lowercase();
                if facts.iter().any(|f| lower.contains(&f.to_lowercase())) {
                    recalled += 1;
                } else if seed == 1 {
                    misses.push(format!("    missed {:?}: {:?}", facts[0], last.trim()));
                }
            }
            // Greedy decoding does not depend on the seed: one round is all of them.
            if setting.temperature <= 0.0 {
                recalled *= seeds as usize;
                runs *= seeds as usize;
                break;
            }
        }
        println!("{} | {recalled} | {runs} ({:.0}%)", setting.name, 100.0 * recalled as f64 / runs as f64);
        for miss in misses {
            println!("{miss}");
        }
    }
    Ok(())
}
