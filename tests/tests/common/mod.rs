//! Small backends shared by the runtime tests.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use sophon::{Backend, BoxError, Context};

/// A backend made of a query closure; reads are ignored.
pub(crate) struct FromFn<I, O, F> {
    f: F,
    types: PhantomData<fn(I) -> O>,
}

pub(crate) fn from_fn<I, O, F>(f: F) -> FromFn<I, O, F>
where
    F: FnMut(I, &mut Context<O>) -> Result<(), BoxError> + Send + 'static,
{
    FromFn { f, types: PhantomData }
}

impl<I, O, F> fmt::Debug for FromFn<I, O, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn")
    }
}

impl<I, O, F> Backend for FromFn<I, O, F>
where
    I: Send + 'static,
    O: Send + 'static,
    F: FnMut(I, &mut Context<O>) -> Result<(), BoxError> + Send + 'static,
{
    type Input = I;
    type Output = O;

    fn query(&mut self, input: I, ctx: &mut Context<O>) -> Result<(), BoxError> {
        (self.f)(input, ctx)
    }
}

/// Sends every query on unchanged.
pub(crate) fn pass<T: Clone + Send + 'static>() -> impl Backend<Input = T, Output = T> {
    from_fn(|x: T, ctx: &mut Context<T>| Ok(ctx.send(x)?))
}

/// A writer whose bytes a test can read back while a backend holds a clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuf {
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long a test waits for something that should happen at once before it fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until `done` holds, failing the test past [`PATIENCE`].
pub(crate) fn wait_until(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting");
        std::thread::yield_now();
    }
}
