// `#[derive(Ports)]` on a struct, on variants of several values, and on a variant named like a keyword.
use sophon::Ports;

#[derive(Ports)]
struct NotAnEnum {
    done: u64,
}

#[derive(Ports)]
enum Several {
    Pair(u64, u64),
    Named { n: u64 },
    Loop(u64),
    Fine(u64),
}

#[derive(Ports)]
enum Generic<T> {
    Value(T),
}

#[derive(Ports)]
enum Clash {
    GameOver(u8),
    Game_Over(u8),
}

fn main() {}
