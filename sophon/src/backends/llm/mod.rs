//! Language models as backends: `LocalLlm` (feature `llm-local`) runs a GGUF chat model on
//! the CPU, `HttpLlm` (feature `llm-http`) talks to any OpenAI-compatible server.
//!
//! Both take a `String` (what the user says) and answer a `String` (the model's reply):
//!
//! - a **query** adds the message to the conversation, generates a reply, adds the reply too and
//!   sends it to the entity's siblings;
//! - a **read** adds the message to the conversation and answers nothing.
//!
//! They keep the conversation in a [`Conversation`], which can be shared: give the same one to a
//! local and an HTTP model, swap one for the other through the entity's
//! [`Handle`](crate::Handle) mid-conversation, and the new model sees everything said so far.
//!
//! [`ChatOptions`] holds what both take: a system prompt, a token limit, a temperature, a seed,
//! and where to stream the reply as it is made.
//!
//! # Streaming
//!
//! With [`ChatOptions::stream_to`] naming one of the entity's siblings, each piece of the reply
//! goes to that sibling as soon as it is made, and the whole reply then goes to every other
//! sibling. A display on a read edge is the usual stream target.
//!
//! Asked through [`Handle::ask`](crate::Handle::ask), a model always streams: each piece goes to
//! the asker as it is made, and nothing goes to the siblings. Join the pieces for the whole
//! reply: `model.ask(question)?.collect::<Result<String, _>>()?`.
//!
//! # Failures
//!
//! A failed generation (a server down, a bad key, a malformed reply) is the handler's error:
//! the runtime reports it with the entity's name, the message that caused it is taken back out
//! of the conversation, and the agent goes on with the next message.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{BoxError, Context};

#[cfg(feature = "llm-http")]
mod http;
#[cfg(feature = "llm-local")]
mod local;

#[cfg(feature = "llm-http")]
pub use self::http::{HttpError, HttpLlm};
#[cfg(feature = "llm-local")]
pub use self::local::{DEFAULT_MODEL_FILE, LocalLlm, LocalLlmError, MODEL_ENV, fetch_command};

/// Who said something in a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions to the model.
    System,
    /// The person (or agent) talking to the model.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The name chat templates and the OpenAI API use: `system`, `user`, `assistant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Turn {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl Turn {
    /// A turn by `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Turn { role, content: content.into() }
    }
}

/// The messages of a conversation so far, shared by every clone.
///
/// A model backend adds to it as it reads and answers. Give one `Conversation` to several
/// backends (a local model and an HTTP one, say) and whichever runs sees everything said.
///
/// # Examples
///
/// ```
/// use sophon::backends::llm::{Conversation, Role, Turn};
///
/// let conversation = Conversation::new();
/// let shared = conversation.clone();
/// shared.push(Turn::new(Role::User, "hello"));
/// assert_eq!(conversation.turns(), vec![Turn::new(Role::User, "hello")]);
/// ```
#[derive(Clone, Default)]
pub struct Conversation {
    turns: Arc<Mutex<Vec<Turn>>>,
}

impl fmt::Debug for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conversation").field("turns", &*self.lock()).finish()
    }
}

impl Conversation {
    /// An empty conversation.
    pub fn new() -> Self {
        Conversation::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Turn>> {
        // A turn is pushed or popped whole, so a panic elsewhere cannot leave a torn list.
        self.turns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every turn so far, oldest first.
    pub fn turns(&self) -> Vec<Turn> {
        self.lock().clone()
    }

    /// How many turns there are.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing has been said.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Adds a turn at the end.
    pub fn push(&self, turn: Turn) {
        self.lock().push(turn);
    }

    /// Forgets everything said.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Takes the last turn back out, if it is `turn`.
    fn retract(&self, turn: &Turn) {
        let mut turns = self.lock();
        if turns.last() == Some(turn) {
            turns.pop();
        }
    }
}

/// What every model backend takes: prompt, limits, sampling, streaming.
///
/// # Examples
///
/// ```
/// use sophon::backends::llm::ChatOptions;
///
/// let options = ChatOptions::new().system_prompt("Answer in one word.").max_tokens(16).seed(7);
/// assert_eq!(options.get_max_tokens(), 16);
/// assert_eq!(options.get_temperature(), 0.0, "greedy unless asked otherwise");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ChatOptions {
    system_prompt: Option<String>,
    max_tokens: usize,
    temperature: f64,
    top_p: Option<f64>,
    top_k: Option<usize>,
    seed: u64,
    stream_to: Option<String>,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            system_prompt: None,
            max_tokens: 256,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            seed: 299_792_458,
            stream_to: None,
        }
    }
}

impl ChatOptions {
    /// No system prompt, at most 256 tokens per reply, greedy decoding, no streaming.
    pub fn new() -> Self {
        ChatOptions::default()
    }

    /// Instructions given to the model before the conversation.
    #[must_use]
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.system_prompt = Some(prompt.into());
        self
    }

    /// The most tokens a reply may have.
    #[must_use]
    pub fn max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// Sampling temperature; `0.0` (the default) is greedy decoding, which is deterministic.
    #[must_use]
    pub fn temperature(mut self, temperature: f64) -> Self {
        self.temperature = temperature;
        self
    }

    /// Samples only from the most likely tokens whose probabilities add up to `p` (nucleus
    /// sampling), when the temperature is above 0. Sent to HTTP servers as `top_p`.
    #[must_use]
    pub fn top_p(mut self, p: f64) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Samples only from the `k` most likely tokens, when the temperature is above 0. Sent to
    /// HTTP servers as `top_k` (which llama.cpp's server, vLLM and Ollama read; OpenAI ignores
    /// it).
    #[must_use]
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = Some(k);
        self
    }

    /// The seed for sampling. The same prompt, seed and temperature give the same reply.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Streams each reply as it is made to the sibling called `sibling` (see the [module
    /// docs](self)).
    #[must_use]
    pub fn stream_to(mut self, sibling: impl Into<String>) -> Self {
        self.stream_to = Some(sibling.into());
        self
    }

    /// The system prompt, if any.
    pub fn get_system_prompt(&self) -> Option<&str> {
        self.system_prompt.as_deref()
    }

    /// The most tokens a reply may have.
    pub fn get_max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The sampling temperature.
    pub fn get_temperature(&self) -> f64 {
        self.temperature
    }

    /// The nucleus sampling threshold, if any.
    pub fn get_top_p(&self) -> Option<f64> {
        self.top_p
    }

    /// The top-k sampling limit, if any.
    pub fn get_top_k(&self) -> Option<usize> {
        self.top_k
    }

    /// The sampling seed.
    pub fn get_seed(&self) -> u64 {
        self.seed
    }

    /// The sibling replies are streamed to, if any.
    pub fn get_stream_to(&self) -> Option<&str> {
        self.stream_to.as_deref()
    }

    /// The messages a model is given: the system prompt, then the conversation.
    fn messages(&self, conversation: &Conversation) -> Vec<Turn> {
        let mut messages = Vec::with_capacity(conversation.len() + 1);
        if let Some(prompt) = &self.system_prompt {
            messages.push(Turn::new(Role::System, prompt.clone()));
        }
        messages.extend(conversation.turns());
        messages
    }
}

/// Where the pieces of a streamed reply go while it is made.
struct Stream<'a> {
    ctx: &'a mut Context<String>,
    target: Option<&'a str>,
}

impl Stream<'_> {
    /// Whether the pieces go anywhere: to the stream target, or to the asker when asked.
    #[cfg_attr(not(feature = "llm-http"), allow(dead_code, reason = "only the HTTP model asks for a stream"))]
    fn streaming(&self) -> bool {
        self.target.is_some() || self.ctx.is_asked()
    }

    fn piece(&mut self, piece: &str) -> Result<(), crate::Error> {
        if piece.is_empty() {
            return Ok(());
        }
        match self.target {
            // While asked, every send goes to the asker.
            _ if self.ctx.is_asked() => self.ctx.send(piece.to_owned()),
            Some(target) => self.ctx.send_to(target, piece.to_owned()),
            None => Ok(()),
        }
    }
}

/// The one way both model backends handle a query: add the message, generate with `generate`
/// (which gets the messages and the stream), record the reply and send it on.
fn answer(
    options: &ChatOptions,
    conversation: &Conversation,
    message: String,
    ctx: &mut Context<String>,
    generate: impl FnOnce(&[Turn], &mut Stream<'_>) -> Result<String, BoxError>,
) -> Result<(), BoxError> {
    let asked = Turn::new(Role::User, message);
    conversation.push(asked.clone());
    let messages = options.messages(conversation);
    let target = options.stream_to.as_deref();
    let reply = match generate(&messages, &mut Stream { ctx, target }) {
        Ok(reply) => reply,
        Err(e) => {
            conversation.retract(&asked);
            return Err(e);
        }
    };
    conversation.push(Turn::new(Role::Assistant, reply.clone()));
    match target {
        // The asker has had every piece.
        _ if ctx.is_asked() => {}
        Some(target) => ctx.send_except(target, reply)?,
        None => ctx.send(reply)?,
    }
    Ok(())
}
