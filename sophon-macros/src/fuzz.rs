//! The macros never panic, whatever they are given: many thousands of declarations, made by
//! mutating valid ones token by token and by stringing tokens together at random, each given
//! to `agent_system!`, `#[backend]` and `#[derive(Ports)]`. Each must come back as code that
//! parses, or with `compile_error!`s.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};

use proc_macro2::{TokenStream, TokenTree};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Valid declarations to mutate.
const SEEDS: &[&str] = &[
    "greeter = Greeter; shouter = Shouter; greeter -> shouter; shouter -> output(answers);",
    "#[bounded(16)] a = A::new(1); #[restart(max = 3, within = 10s)] b: B = || B::default(); a -> [b, output(x)]; b ~> a;",
    "/// Docs.\n pub struct Chat(model: LocalLlm, n: u32); person: Person = Person::terminal(); model: LocalLlm = model; person -> model; loop model -> person;",
    "ping = Ping { rally: 10 }; pong = Pong; log = Log; ping.pong -> pong; loop pong -> ping; ping.done -> output(done: u64); #[cfg(feature = \"x\")] ping.tick ~> log;",
    "#[cfg(any())] a = A; b = B; #[cfg(all())] b ~> a; a -> b; loop a -> a; loop b -> b;",
    "impl Total { fn query(&mut self, n: i64) -> i64 { self.sum += n; self.sum } fn read(&mut self, n: i64) { self.sum += n; } }",
    "impl<T: Clone> Echo<T> { fn query(&mut self, x: T, ctx: &mut Context<T>) -> Result<(), Error> { ctx.send(x) } fn nop(&mut self) {} fn start(&mut self, ctx: &mut Context<T>) {} fn timer(&mut self, t: TimerId) -> Result<(), String> { Ok(()) } }",
    "impl Model { fn query(&mut self, q: String) -> Result<Option<String>, BoxError> { Ok(None) } }",
    "enum PingOut { Pong(u64), Done(u64), Tick, GameOver((u8, u8)) }",
    "#[derive(Clone)] enum Out { A(String), B }",
];

/// Tokens to insert, besides those of the seeds.
const EXTRA: &[&str] = &[
    "->", "~>", "=>", "<-", "~", ".", ",", ";", ":", "::", "=", ":=", "#", "|", "||", "&", "'a", "0", "1s", "\"x\"",
    "loop", "output", "struct", "pub", "let", "fn", "impl", "async", "self", "Self", "mut", "query", "read", "nop",
    "[", "]", "(", ")", "{", "}", "<", ">", "?", "!", "bounded", "restart", "cfg", "doc", "max", "within",
];

/// The seeds' tokens, flattened: a group is its opening delimiter, its tokens, its closing one.
fn atoms(tokens: TokenStream, out: &mut Vec<String>) {
    for tree in tokens {
        match tree {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                    proc_macro2::Delimiter::Brace => ("{", "}"),
                    proc_macro2::Delimiter::Bracket => ("[", "]"),
                    proc_macro2::Delimiter::None => ("", ""),
                };
                out.push(open.to_string());
                atoms(group.stream(), out);
                out.push(close.to_string());
            }
            TokenTree::Punct(punct) => out.push(punct.as_char().to_string()),
            other => out.push(other.to_string()),
        }
    }
}

fn seed_atoms() -> Vec<Vec<String>> {
    SEEDS
        .iter()
        .map(|seed| {
            let mut out = Vec::new();
            atoms(seed.parse().expect("seeds lex"), &mut out);
            out
        })
        .collect()
}

fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = seed_atoms().into_iter().flatten().collect();
    words.extend(EXTRA.iter().map(ToString::to_string));
    words.sort();
    words.dedup();
    words
}

/// One edit of a token sequence.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize),
    Insert(usize, usize),
    Replace(usize, usize),
    Swap(usize, usize),
    Duplicate(usize, usize),
}

fn apply(tokens: &mut Vec<String>, edit: &Edit, words: &[String]) {
    let n = tokens.len();
    if n == 0 {
        return;
    }
    match *edit {
        Edit::Delete(i) => {
            tokens.remove(i % n);
        }
        Edit::Insert(i, w) => tokens.insert(i % (n + 1), words[w % words.len()].clone()),
        Edit::Replace(i, w) => tokens[i % n] = words[w % words.len()].clone(),
        Edit::Swap(i, j) => tokens.swap(i % n, j % n),
        Edit::Duplicate(i, len) => {
            let start = i % n;
            let end = (start + 1 + len % 8).min(n);
            let copy: Vec<String> = tokens[start..end].to_vec();
            tokens.splice(end..end, copy);
        }
    }
}

/// Drops closing delimiters that close nothing and closes what is left open, so that most
/// edited sequences still lex and reach the macros.
fn balance(tokens: Vec<String>) -> Vec<String> {
    let mut open: Vec<&'static str> = Vec::new();
    let mut out = Vec::with_capacity(tokens.len());
    for token in tokens {
        let closer = match token.as_str() {
            "(" => Some(")"),
            "[" => Some("]"),
            "{" => Some("}"),
            _ => None,
        };
        if let Some(closer) = closer {
            open.push(closer);
        } else if [")", "]", "}"].contains(&token.as_str()) {
            if open.last() != Some(&token.as_str()) {
                continue;
            }
            open.pop();
        }
        out.push(token);
    }
    out.extend(open.into_iter().rev().map(ToString::to_string));
    out
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), any::<usize>()).prop_map(|(i, w)| Edit::Insert(i, w)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, w)| Edit::Replace(i, w)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, l)| Edit::Duplicate(i, l)),
    ]
}

/// Per test: inputs made, and those that lexed and went through every macro.
struct Tally {
    made: AtomicUsize,
    tried: AtomicUsize,
}

static MUTATED: Tally = Tally { made: AtomicUsize::new(0), tried: AtomicUsize::new(0) };
static RANDOM: Tally = Tally { made: AtomicUsize::new(0), tried: AtomicUsize::new(0) };

impl Tally {
    /// Counts an input; after the last of `cases`, prints the totals (run with `--nocapture`).
    fn count(&self, tried: bool, cases: u32, test: &str) {
        if tried {
            self.tried.fetch_add(1, Ordering::Relaxed);
        }
        if self.made.fetch_add(1, Ordering::Relaxed) + 1 == cases as usize {
            let tried = self.tried.load(Ordering::Relaxed);
            eprintln!("{test}: {cases} inputs made, {tried} lexed and given to every macro, none panicked");
        }
    }
}

const MUTATED_CASES: u32 = 20_000;
const RANDOM_CASES: u32 = 10_000;

/// Runs every macro on `source` (if it lexes) and checks each comes back whole; returns
/// whether it lexed.
fn run_all(source: &str) -> Result<bool, TestCaseError> {
    let Ok(tokens) = source.parse::<TokenStream>() else { return Ok(false) };
    let outputs = catch_unwind(AssertUnwindSafe(|| {
        [
            ("agent_system!", crate::system::expand(tokens.clone())),
            ("#[backend]", crate::backend::expand(TokenStream::new(), tokens.clone())),
            (
                "#[backend(x)]",
                crate::backend::expand(
                    tokens.clone(),
                    "impl A { fn query(&mut self, n: u8) -> u8 { n } }".parse().unwrap(),
                ),
            ),
            ("#[derive(Ports)]", crate::ports::expand(tokens.clone())),
        ]
    }));
    let outputs = outputs.map_err(|_| TestCaseError::fail(format!("a macro panicked on: {source}")))?;
    for (name, output) in outputs {
        let text = output.to_string();
        let parses = syn::parse2::<syn::File>(output.clone()).is_ok() || syn::parse2::<syn::Expr>(output).is_ok();
        prop_assert!(
            parses || text.contains("compile_error"),
            "{name} gave neither code nor an error for: {source}\n{text}"
        );
    }
    Ok(true)
}

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

proptest! {
    #![proptest_config(config(MUTATED_CASES))]

    /// Valid declarations with up to 6 edits each.
    #[test]
    fn mutated_declarations_never_make_a_macro_panic(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let words = vocabulary();
        let mut tokens = seed_atoms().swap_remove(seed);
        for edit in &edits {
            apply(&mut tokens, edit, &words);
        }
        let tried = run_all(&balance(tokens).join(" "))?;
        MUTATED.count(tried, MUTATED_CASES, "mutated declarations");
    }
}

proptest! {
    #![proptest_config(config(RANDOM_CASES))]

    /// Strings of up to 40 tokens drawn from the grammar's vocabulary.
    #[test]
    fn random_token_strings_never_make_a_macro_panic(picks in proptest::collection::vec(any::<usize>(), 0..40)) {
        let words = vocabulary();
        let source: Vec<String> = picks.iter().map(|&w| words[w % words.len()].clone()).collect();
        let tried = run_all(&balance(source).join(" "))?;
        RANDOM.count(tried, RANDOM_CASES, "random token strings");
    }
}

#[test]
fn the_seeds_expand_without_errors() {
    for seed in &SEEDS[..5] {
        let out = crate::system::expand(seed.parse().unwrap()).to_string();
        assert!(!out.contains("compile_error"), "{seed}\n{out}");
    }
    for seed in &SEEDS[5..8] {
        let out = crate::backend::expand(TokenStream::new(), seed.parse().unwrap()).to_string();
        assert!(!out.contains("compile_error"), "{seed}\n{out}");
    }
    for seed in &SEEDS[8..] {
        let out = crate::ports::expand(seed.parse().unwrap()).to_string();
        assert!(!out.contains("compile_error"), "{seed}\n{out}");
    }
}
