//! A model behind any OpenAI-compatible chat-completions server, over blocking HTTP (ureq).

use std::fmt;
use std::io::{BufRead, BufReader};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use super::{ChatOptions, Conversation, Stream, Turn, answer};
use crate::{BoxError, Context, backend};

/// Why a request to a chat-completions server failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum HttpError {
    /// The backend is not configured: an environment variable is missing or malformed.
    Config(String),
    /// The server refused the API key (401 or 403).
    Unauthorized {
        /// The HTTP status.
        status: u16,
        /// What the server said.
        message: String,
    },
    /// The server answered with an error status; for 429 and 5xx, after every retry.
    Status {
        /// The HTTP status.
        status: u16,
        /// What the server said.
        message: String,
        /// How many requests were made.
        attempts: u32,
    },
    /// The server could not be reached, or the connection broke or timed out; after every retry.
    Unreachable {
        /// The URL asked.
        url: String,
        /// What went wrong: ureq's error, also the error's `source()`.
        source: ureq::Error,
        /// How many requests were made.
        attempts: u32,
    },
    /// The server's answer is not a chat completion.
    Malformed(String),
    /// The server stopped sending in the middle of its answer for longer than the timeout.
    Stalled {
        /// How long it was silent.
        after: Duration,
        /// The read that timed out, also the error's `source()`.
        source: std::io::Error,
    },
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Config(what) => write!(f, "the HTTP model is not configured: {what}"),
            HttpError::Unauthorized { status, message } => {
                write!(f, "the server refused the API key ({status}: {message}); check `OPENAI_API_KEY`")
            }
            HttpError::Status { status, message, attempts } => {
                write!(f, "the server answered {status} ({message})")?;
                if *attempts > 1 { write!(f, " after {attempts} attempts") } else { Ok(()) }
            }
            HttpError::Unreachable { url, source, attempts } => {
                write!(f, "cannot reach `{url}` ({source})")?;
                if *attempts > 1 { write!(f, " after {attempts} attempts") } else { Ok(()) }
            }
            HttpError::Malformed(what) => write!(f, "malformed reply from the server: {what}"),
            HttpError::Stalled { after, .. } => {
                write!(f, "the server stopped sending mid-reply: nothing came for {} ms", after.as_millis())
            }
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Unreachable { source, .. } => Some(source),
            HttpError::Stalled { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A model behind an OpenAI-compatible chat-completions server: Ollama, llama.cpp's server,
/// vLLM, OpenAI. Requests are blocking (no async runtime): the agent's thread waits for the
/// reply, and no other agent does.
///
/// It takes a `String` and answers the reply, keeping the conversation (see the [module
/// docs](super)). Requests that get 429 or a 5xx status, or that cannot connect, are retried
/// with exponential backoff (honouring `Retry-After`); a refused key, another error status or a
/// malformed reply fails at once. With [`ChatOptions::stream_to`] set, it asks the server to
/// stream (server-sent events) and passes each piece on as it arrives.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use sophon::backends::llm::{ChatOptions, HttpLlm};
///
/// let model = HttpLlm::new("http://localhost:11434/v1", "smollm2:135m")
///     .options(ChatOptions::new().system_prompt("Be brief.").max_tokens(64))
///     .timeout(Duration::from_secs(30))
///     .retries(3);
/// assert_eq!(model.endpoint(), "http://localhost:11434/v1/chat/completions");
/// ```
pub struct HttpLlm {
    agent: ureq::Agent,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    options: ChatOptions,
    conversation: Conversation,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
}

impl fmt::Debug for HttpLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpLlm")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("options", &self.options)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// The longest wait between two attempts, whatever `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl HttpLlm {
    /// A model called `model` at `base_url`, the URL that `/chat/completions` follows
    /// (`http://localhost:11434/v1` for Ollama, `https://api.openai.com/v1` for OpenAI).
    ///
    /// No API key, a timeout of 120 s of silence, 3 retries from 500 ms of backoff.
    pub fn new(base_url: impl AsRef<str>, model: impl Into<String>) -> Self {
        let timeout = Duration::from_secs(120);
        HttpLlm {
            agent: agent(timeout),
            endpoint: format!("{}/chat/completions", base_url.as_ref().trim_end_matches('/')),
            model: model.into(),
            api_key: None,
            options: ChatOptions::default(),
            conversation: Conversation::default(),
            timeout,
            retries: 3,
            backoff: Duration::from_millis(500),
        }
    }

    /// Reads `OPENAI_BASE_URL` (default `https://api.openai.com/v1`), `OPENAI_MODEL` (required)
    /// and `OPENAI_API_KEY` (optional: local servers need none).
    pub fn from_env() -> Result<Self, HttpError> {
        let var = |name: &str| match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(Some(value)),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(HttpError::Config(format!("`{name}` is not UTF-8"))),
        };
        let base_url = var("OPENAI_BASE_URL")?.unwrap_or_else(|| "https://api.openai.com/v1".into());
        let model = var("OPENAI_MODEL")?
            .ok_or_else(|| HttpError::Config("`OPENAI_MODEL` is not set; set it to the server's model name".into()))?;
        let llm = HttpLlm::new(base_url, model);
        Ok(match var("OPENAI_API_KEY")? {
            Some(key) => llm.api_key(key),
            None => llm,
        })
    }

    /// Sends `key` as a bearer token.
    #[must_use]
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Prompt, limits, sampling and streaming.
    #[must_use]
    pub fn options(mut self, options: ChatOptions) -> Self {
        self.options = options;
        self
    }

    /// Keeps the conversation in `conversation`, which may be shared with other models.
    #[must_use]
    pub fn conversation(mut self, conversation: Conversation) -> Self {
        self.conversation = conversation;
        self
    }

    /// The longest the server may stay silent (default 120 s): to connect (at most 10 s), and
    /// between any two reads of its answer. A reply streamed for longer than this is read to
    /// its end as long as the server keeps sending; one that stalls ends with
    /// [`HttpError::Stalled`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.agent = agent(timeout);
        self
    }

    /// How many times a request is retried after 429, a 5xx status or a failed connection
    /// (default 3).
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The wait before the first retry (default 500 ms); it doubles for each retry after.
    #[must_use]
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The model's name, as sent to the server.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The conversation this model keeps.
    pub fn get_conversation(&self) -> &Conversation {
        &self.conversation
    }

    /// Asks the server for the reply to `messages` (system prompt included), passing pieces on
    /// as they arrive when streaming.
    fn complete(&self, messages: &[Turn], stream: &mut Stream<'_>) -> Result<String, HttpError> {
        let streaming = stream.streaming();
        let mut body = json!({
            "model": self.model,
            "messages": messages
                .iter()
                .map(|t| json!({ "role": t.role.as_str(), "content": t.content }))
                .collect::<Vec<_>>(),
            "max_tokens": self.options.max_tokens,
            "temperature": self.options.temperature,
            "seed": self.options.seed,
        });
        if let Some(p) = self.options.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(k) = self.options.top_k {
            body["top_k"] = json!(k);
        }
        if streaming {
            body["stream"] = Value::Bool(true);
        }
        let body = body.to_string();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut request = self.agent.post(&self.endpoint).header("Content-Type", "application/json");
            if let Some(key) = &self.api_key {
                request = request.header("Authorization", format!("Bearer {key}"));
            }
            let retry_in = match request.send(body.as_bytes()) {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status == 200 {
                        let reader = BufReader::new(response.into_body().into_reader());
                        let stalled = |e: std::io::Error| stalled(e, self.timeout);
                        return if streaming {
                            read_stream(reader, stream, stalled)
                        } else {
                            read_reply(reader, stalled)
                        };
                    }
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let message = error_message(response.into_body().read_to_string().unwrap_or_default());
                    match status {
                        401 | 403 => return Err(HttpError::Unauthorized { status, message }),
                        429 | 500..=599 if attempts <= self.retries => retry_after,
                        _ => return Err(HttpError::Status { status, message, attempts }),
                    }
                }
                Err(_) if attempts <= self.retries => None,
                Err(e) => {
                    return Err(HttpError::Unreachable { url: self.endpoint.clone(), source: e, attempts });
                }
            };
            let backoff = self.backoff.saturating_mul(1 << (attempts - 1).min(16));
            thread::sleep(retry_in.map_or(backoff, |r| r.max(backoff)).min(MAX_BACKOFF));
        }
    }
}

/// An HTTP agent that hands every status back (they are handled here) and gives up when the
/// server is silent for `timeout` (on any one read or write), or on connecting after 10 s. There
/// is no limit on the whole request: a long streamed reply is read while it keeps coming.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(None)
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
        .build()
        .into()
}

/// A failed read of the answer's body: a stall when the read timed out, else a broken reply.
fn stalled(e: std::io::Error, timeout: Duration) -> HttpError {
    let timed_out = e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
    if timed_out {
        HttpError::Stalled { after: timeout, source: e }
    } else {
        HttpError::Malformed(format!("the reply broke off: {e}"))
    }
}

/// The message of an error body: `error.message` when it is OpenAI's JSON, else the text.
fn error_message(body: String) -> String {
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or(body);
    let message = message.trim();
    match message.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None if message.is_empty() => "no message".into(),
        None => message.to_owned(),
    }
}

/// Reads a whole (not streamed) chat completion: `choices[0].message.content`.
fn read_reply(mut reader: impl BufRead, failed: impl Fn(std::io::Error) -> HttpError) -> Result<String, HttpError> {
    let mut body = String::new();
    reader.read_to_string(&mut body).map_err(failed)?;
    let value: Value = serde_json::from_str(&body).map_err(|e| HttpError::Malformed(format!("not JSON: {e}")))?;
    value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| HttpError::Malformed("no `choices[0].message.content`".into()))
}

/// Reads a streamed chat completion (server-sent events), passing each piece on as it arrives.
fn read_stream(
    reader: impl BufRead,
    stream: &mut Stream<'_>,
    failed: impl Fn(std::io::Error) -> HttpError,
) -> Result<String, HttpError> {
    let mut reply = String::new();
    let mut done = false;
    for line in reader.lines() {
        let line = line.map_err(&failed)?;
        // Other fields (`event:`, `id:`) and comments (`:`) carry nothing here.
        let Some(data) = line.strip_prefix("data:") else { continue };
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            break;
        }
        let event: Value =
            serde_json::from_str(data).map_err(|e| HttpError::Malformed(format!("an event is not JSON: {e}")))?;
        if let Some(message) = event.pointer("/error/message").and_then(Value::as_str) {
            return Err(HttpError::Malformed(format!("the server failed mid-stream: {message}")));
        }
        let Some(choice) = event.pointer("/choices/0") else {
            return Err(HttpError::Malformed("an event has no `choices[0]`".into()));
        };
        if let Some(piece) = choice.pointer("/delta/content").and_then(Value::as_str) {
            reply.push_str(piece);
            // A stream target that is gone must not lose the reply for the others.
            let _ = stream.piece(piece);
        }
        if choice.get("finish_reason").is_some_and(|r| !r.is_null()) {
            done = true;
        }
    }
    if done { Ok(reply) } else { Err(HttpError::Malformed("the stream ended before the reply was finished".into())) }
}

#[backend(blocking)]
impl HttpLlm {
    /// Answers `message` with the model's reply, to every sibling (see the [module docs](super)).
    fn query(&mut self, message: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
        answer(&self.options, &self.conversation, message, ctx, |messages, stream| Ok(self.complete(messages, stream)?))
    }

    /// Adds `message` to the conversation without answering.
    fn read(&mut self, message: String) {
        self.conversation.push(Turn::new(super::Role::User, message));
    }
}
