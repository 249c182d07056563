// Every accepted form of a `#[backend]` handler compiles and answers as documented.
use std::time::Duration;

use sophon::{Context, SystemBuilder, TimerId, backend};

struct Value;
#[backend]
impl Value {
    fn query(&mut self, n: u32) -> u32 {
        n + 1
    }
}

struct Maybe;
#[backend]
impl Maybe {
    fn query(&mut self, n: u32) -> Option<u32> {
        (n > 0).then_some(n)
    }
}

struct Fallible;
#[backend]
impl Fallible {
    fn query(&mut self, n: u32) -> Result<u32, String> {
        if n == 0 { Err("zero".into()) } else { Ok(n) }
    }
}

struct FallibleMaybe;
#[backend]
impl FallibleMaybe {
    fn query(&mut self, n: u32) -> Result<Option<u32>, std::io::Error> {
        Ok((n > 1).then_some(n))
    }
}

struct Unit;
#[backend]
impl Unit {
    fn query(&mut self, _: u32) {}
}

struct FallibleUnit;
#[backend]
impl FallibleUnit {
    fn query(&mut self, _: u32) -> Result<(), String> {
        Ok(())
    }
}

struct Explicit;
#[backend]
impl Explicit {
    fn query(&mut self, n: u32, ctx: &mut Context<u32>) {
        let _ = ctx.send(n * 10);
    }
}

struct ExplicitFallible;
#[backend]
impl ExplicitFallible {
    fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), sophon::Error> {
        ctx.send(n * 100)
    }

    fn read(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), sophon::Error> {
        ctx.send(n)
    }

    fn nop(&mut self, ctx: &mut Context<u32>) -> Result<(), String> {
        let _ = ctx.name();
        Ok(())
    }
}

struct AllHandlers(Vec<u32>);
#[backend]
impl AllHandlers {
    fn query(&mut self, _: u32) -> usize {
        self.0.len()
    }

    fn read(&mut self, n: u32) -> Result<(), String> {
        self.0.push(n);
        Ok(())
    }

    fn nop(&mut self) {
        self.0.clear();
    }

    fn start(&mut self) {
        self.0.push(0);
    }

    fn timer(&mut self, timer: TimerId) -> Result<(), String> {
        let _ = timer;
        Ok(())
    }
}

fn main() {
    let mut b = SystemBuilder::new();
    let value = b.entity("value", Value);
    let maybe = b.entity("maybe", Maybe);
    let fallible = b.entity("fallible", Fallible);
    let fallible_maybe = b.entity("fallible_maybe", FallibleMaybe);
    let unit = b.entity("unit", Unit);
    let fallible_unit = b.entity("fallible_unit", FallibleUnit);
    let explicit = b.entity("explicit", Explicit);
    let explicit_fallible = b.entity("explicit_fallible", ExplicitFallible);
    let all = b.entity("all", AllHandlers(Vec::new()));
    let outs = [
        b.output(&value, "out"),
        b.output(&maybe, "out"),
        b.output(&fallible, "out"),
        b.output(&fallible_maybe, "out"),
        b.output(&explicit, "out"),
        b.output(&explicit_fallible, "out"),
    ];
    let units = [b.output(&unit, "out"), b.output(&fallible_unit, "out")];
    let all_out = b.output(&all, "out");
    let system = b.spawn().unwrap();
    for n in [0, 2] {
        system.handle(&value).query(n).unwrap();
        system.handle(&maybe).query(n).unwrap();
        system.handle(&fallible).query(n).unwrap();
        system.handle(&fallible_maybe).query(n).unwrap();
        system.handle(&unit).query(n).unwrap();
        system.handle(&fallible_unit).query(n).unwrap();
        system.handle(&explicit).query(n).unwrap();
        system.handle(&explicit_fallible).query(n).unwrap();
    }
    system.handle(&explicit_fallible).read(7).unwrap();
    system.handle(&all).read(1).unwrap();
    system.handle(&all).query(0).unwrap();
    // `start` ran before any message (it pushed one number), and `read` pushed another. Asked
    // before the shutdown, which skips the start hooks of agents that have not yet begun.
    assert_eq!(all_out.recv_timeout(Duration::from_secs(30)).unwrap(), 2);
    let report = system.shutdown(Duration::from_secs(30));
    let got: Vec<Vec<u32>> = outs.iter().map(|o| o.try_iter().collect()).collect();
    assert_eq!(got, [vec![1, 3], vec![2], vec![2], vec![2], vec![0, 20], vec![0, 200, 7]]);
    assert!(units.iter().all(|u| u.try_iter().count() == 2), "`()` is sent on");
    assert!(all_out.try_recv().is_err());
    assert_eq!(report.entity("fallible").unwrap().stats.errors, 1);
}
