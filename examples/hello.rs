//! Three agents in a row: a greeter, a shouter and a printer.
//!
//! Run with `cargo run --example hello`. It prints three greetings and exits by itself.

use std::time::Duration;

use sophon::{Backend, BoxError, Context, SystemBuilder};

/// Turns a name into a greeting.
struct Greeter;

impl Backend for Greeter {
    type Input = String;
    type Output = String;

    fn query(&mut self, name: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
        Ok(ctx.send(format!("hello, {name}"))?)
    }
}

/// Shouts what it is given.
struct Shouter;

impl Backend for Shouter {
    type Input = String;
    type Output = String;

    fn query(&mut self, text: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
        Ok(ctx.send(format!("{}!", text.to_uppercase()))?)
    }
}

/// Prints what it reads and counts it; asks the system to stop after `expected` lines.
struct Printer {
    printed: usize,
    expected: usize,
}

impl Backend for Printer {
    type Input = String;
    type Output = ();

    fn query(&mut self, line: String, ctx: &mut Context<()>) -> Result<(), BoxError> {
        self.read(line, ctx)
    }

    fn read(&mut self, line: String, ctx: &mut Context<()>) -> Result<(), BoxError> {
        println!("{line}");
        self.printed += 1;
        if self.printed == self.expected {
            ctx.stop_system();
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let names = ["world", "sophon", "agents"];
    let mut builder = SystemBuilder::new();
    let greeter = builder.entity("greeter", Greeter);
    let shouter = builder.entity("shouter", Shouter);
    let printer = builder.entity("printer", Printer { printed: 0, expected: names.len() });
    builder.query_edge(&greeter, &shouter).read_edge(&shouter, &printer);
    let system = builder.spawn()?;

    for name in names {
        system.handle(&greeter).query(name.to_string())?;
    }
    system.wait_for_stop(Some(Duration::from_secs(10)));
    let report = system.shutdown(Duration::from_secs(5));
    eprint!("{report}");
    if !report.is_clean() {
        return Err("the system did not shut down cleanly".into());
    }
    Ok(())
}
