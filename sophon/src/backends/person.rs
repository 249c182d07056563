//! A person at a terminal, as a backend (feature `person`).
//!
//! A [`Person`] is the human end of a graph. A read shows the message; a query shows it, then
//! waits for the person to type a line and sends that line on to the entity's siblings. End of
//! input, or a line `/quit`, asks the whole system to stop. Input and output are any
//! [`BufRead`] and [`Write`], so tests and scripts drive a person without a terminal.
//!
//! # Examples
//!
//! A person who answers two questions from a script, then reaches the end of their input:
//!
//! ```
//! use std::io::Cursor;
//! use std::time::Duration;
//! use sophon::backends::person::Person;
//! use sophon::SystemBuilder;
//!
//! let person = Person::new(Cursor::new("blue\n"), std::io::sink());
//! let mut builder = SystemBuilder::new();
//! let person = builder.entity("person", person);
//! let said = builder.output(&person, "said");
//! let system = builder.spawn()?;
//!
//! system.handle(&person).query("Favourite colour?".to_string())?;
//! assert_eq!(said.recv()?, "blue");
//! system.handle(&person).query("And now?".to_string())?;
//! assert!(system.wait_for_stop(Some(Duration::from_secs(5))), "end of input stops the system");
//! assert!(system.shutdown(Duration::from_secs(5)).is_clean());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Write};

use crate::{Context, backend};

/// What a person types to leave.
pub const QUIT: &str = "/quit";

/// A person who reads what reaches them and, when asked, types an answer.
///
/// See the [module docs](self) for an example.
pub struct Person {
    /// `None` for a passive person, who only reads.
    input: Option<Box<dyn BufRead + Send>>,
    output: Box<dyn Write + Send>,
    prompt: String,
    label: String,
    echo: bool,
    /// Set once the input has ended or the person has typed `/quit`.
    left: bool,
}

impl fmt::Debug for Person {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Person")
            .field("passive", &self.input.is_none())
            .field("prompt", &self.prompt)
            .field("label", &self.label)
            .field("echo", &self.echo)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl Person {
    /// A person typing into `input`, reading from `output`.
    pub fn new(input: impl BufRead + Send + 'static, output: impl Write + Send + 'static) -> Self {
        Person {
            input: Some(Box::new(input)),
            output: Box::new(output),
            prompt: "> ".into(),
            label: String::new(),
            echo: false,
            left: false,
        }
    }

    /// The person at this process's terminal: standard input and standard output. When
    /// standard input is not a terminal (piped from a file or a program), what is read is
    /// echoed after the prompt, so that the output reads as a transcript.
    pub fn terminal() -> Self {
        Person::new(io::BufReader::new(io::stdin()), io::stdout()).echo(!io::stdin().is_terminal())
    }

    /// A person who only reads what reaches them, on `output`, and never answers: a display.
    pub fn passive(output: impl Write + Send + 'static) -> Self {
        Person {
            input: None,
            output: Box::new(output),
            prompt: String::new(),
            label: String::new(),
            echo: false,
            left: false,
        }
    }

    /// The prompt shown before the person types (default `"> "`).
    #[must_use]
    pub fn prompt(mut self, prompt: impl Into<String>) -> Self {
        self.prompt = prompt.into();
        self
    }

    /// Text shown before every message that reaches the person, such as `"model: "` (default
    /// none).
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Whether each line read is written back after the prompt (default no: a terminal shows
    /// what is typed by itself).
    #[must_use]
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Whether the person has left: their input ended or they typed `/quit`.
    pub fn has_left(&self) -> bool {
        self.left
    }

    fn show(&mut self, message: &str) -> io::Result<()> {
        writeln!(self.output, "{}{message}", self.label)?;
        self.output.flush()
    }

    /// Prompts until the person types a line that is not blank. `None` when they leave.
    fn ask(&mut self) -> io::Result<Option<String>> {
        let Some(input) = self.input.as_mut() else { return Ok(None) };
        if self.left {
            return Ok(None);
        }
        let mut line = String::new();
        loop {
            write!(self.output, "{}", self.prompt)?;
            self.output.flush()?;
            line.clear();
            if input.read_line(&mut line)? == 0 {
                // End of input: end the prompt's line, as a terminal would.
                writeln!(self.output)?;
                self.output.flush()?;
                self.left = true;
                return Ok(None);
            }
            let typed = line.trim_end_matches(['\n', '\r']);
            if self.echo {
                writeln!(self.output, "{typed}")?;
            }
            if typed.trim() == QUIT {
                self.left = true;
                return Ok(None);
            }
            if !typed.trim().is_empty() {
                return Ok(Some(typed.to_owned()));
            }
        }
    }
}

#[backend(blocking)]
impl Person {
    /// Shows the message, then sends on what the person types. When they leave instead (end of
    /// input or `/quit`), asks the system to stop and sends nothing. A passive person only
    /// shows the message.
    fn query(&mut self, message: String, ctx: &mut Context<String>) -> Result<(), crate::BoxError> {
        if !message.is_empty() {
            self.show(&message)?;
        }
        match self.ask()? {
            Some(line) => ctx.send(line)?,
            None if self.input.is_some() => ctx.stop_system(),
            None => {}
        }
        Ok(())
    }

    /// Shows the message.
    fn read(&mut self, message: String) -> io::Result<()> {
        self.show(&message)
    }
}
