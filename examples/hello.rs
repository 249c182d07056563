//! Three agents in a row: a greeter, a shouter and a printer, derived with `#[backend]` and wired
//! with `agent_system!`.
//!
//! Run with `cargo run --example hello`. It prints three greetings and exits by itself.

use std::time::Duration;

use sophon::{Context, agent_system, backend};

/// Turns a name into a greeting.
struct Greeter;

#[backend]
impl Greeter {
    fn query(&mut self, name: String) -> String {
        format!("hello, {name}")
    }
}

/// Shouts what it is given.
struct Shouter;

#[backend]
impl Shouter {
    fn query(&mut self, text: String) -> String {
        format!("{}!", text.to_uppercase())
    }
}

/// Prints what it reads; asks the system to stop once it has printed `expected` lines.
struct Printer {
    printed: usize,
    expected: usize,
}

#[backend]
impl Printer {
    fn query(&mut self, line: String, ctx: &mut Context<()>) {
        self.read(line, ctx);
    }

    fn read(&mut self, line: String, ctx: &mut Context<()>) {
        println!("{line}");
        self.printed += 1;
        if self.printed == self.expected {
            ctx.stop_system();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let names = ["world", "sophon", "agents"];
    let system = agent_system! {
        greeter = Greeter;
        shouter = Shouter;
        printer = Printer { printed: 0, expected: names.len() };
        greeter -> shouter;
        shouter ~> printer;
    }?;

    for name in names {
        system.greeter.query(name.to_string())?;
    }
    system.wait_for_stop(Some(Duration::from_secs(10)));
    let report = system.shutdown(Duration::from_secs(5));
    eprint!("\n{report}");
    if !report.is_clean() {
        return Err("the system did not shut down cleanly".into());
    }
    Ok(())
}
