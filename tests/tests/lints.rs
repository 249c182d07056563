//! The macros' expansions are lint-clean: this file denies warnings, rustc's stricter lints and
//! clippy's (checked when CI runs clippy over all targets), and uses both macros.
#![deny(warnings, unsafe_code, unused_qualifications, unused_results, rust_2018_idioms)]
#![deny(clippy::all, clippy::pedantic)]

use std::time::Duration;

use sophon::{Context, TimerId, agent_system, backend};

/// Passes numbers on.
struct Pass;

#[backend]
impl Pass {
    fn query(&mut self, n: u64) -> u64 {
        n
    }

    fn read(&mut self, n: u64) -> Result<(), String> {
        if n == 0 { Err("zero".to_string()) } else { Ok(()) }
    }

    fn nop(&mut self, ctx: &mut Context<u64>) {
        let _ = ctx.name();
    }
}

/// Sends one number when the system starts, and another when its timer fires.
struct Source;

#[backend]
impl Source {
    fn query(&mut self, n: u64) -> u64 {
        n
    }

    fn start(&mut self, ctx: &mut Context<u64>) -> Result<(), sophon::Error> {
        let _ = ctx.after(Duration::from_millis(1));
        ctx.send(100)
    }

    fn timer(&mut self, _: TimerId, ctx: &mut Context<u64>) -> Result<(), sophon::Error> {
        ctx.send(200)
    }
}

/// Generic over what it passes; passes nothing while muted.
struct Gate<T> {
    muted: bool,
    types: std::marker::PhantomData<T>,
}

#[backend]
impl<T: Clone + Send + 'static> Gate<T> {
    fn query(&mut self, value: T) -> Option<T> {
        (!self.muted).then_some(value)
    }
}

#[test]
fn expansions_compile_under_strict_lints() -> Result<(), Box<dyn std::error::Error>> {
    let system = agent_system! {
        first = Pass;
        #[bounded(4)]
        second: Pass = Pass;
        gate = Gate::<u64> { muted: true, types: std::marker::PhantomData };
        source = Source;
        first -> [second, gate];
        first -> output(copies);
        second -> output(out);
        source -> output(sourced);
    }?;
    assert_eq!(system.sourced.recv()?, 100);
    assert_eq!(system.sourced.recv()?, 200);
    system.first.query(1)?;
    assert_eq!(system.out.recv()?, 1);
    assert_eq!(system.copies.recv()?, 1);
    assert!(system.shutdown(Duration::from_secs(30)).is_clean());
    Ok(())
}
