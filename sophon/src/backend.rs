//! The trait every component implements.

use std::any::Any;
use std::fmt;

use crate::context::{Context, TimerId};
use crate::err::BoxError;

/// A component that takes messages and answers them: a language model, a person at a terminal, a
/// database, a clock.
///
/// A backend has an input type and an output type. [`query`](Backend::query) must answer: it sends
/// output to the agent's siblings through the [`Context`]. [`read`](Backend::read) takes an input
/// in with no answer (by default it ignores it), and [`nop`](Backend::nop) cleans up before the
/// agent's thread ends. A backend can also act on its own: [`start`](Backend::start) runs once
/// when its agent starts, and [`timer`](Backend::timer) runs when a timer set through the context
/// fires.
///
/// Handlers return `Result`: an `Err` is counted and reported with the entity's name and the
/// handler's kind, and the agent goes on. A panic is caught at the agent: that entity is marked
/// failed and the rest of the system keeps running.
///
/// The trait is object safe over its input and output types ([`BoxBackend`]), so a running
/// entity's backend can be swapped for another of the same shape.
///
/// # Examples
///
/// ```
/// use sophon::{Backend, BoxError, Context, SystemBuilder};
///
/// /// Answers each number with its double.
/// struct Double;
///
/// impl Backend for Double {
///     type Input = u64;
///     type Output = u64;
///
///     fn query(&mut self, n: u64, ctx: &mut Context<u64>) -> Result<(), BoxError> {
///         ctx.send(n * 2)?;
///         Ok(())
///     }
/// }
///
/// let mut builder = SystemBuilder::new();
/// let double = builder.entity("double", Double);
/// let answers = builder.output(&double, "out");
/// let system = builder.spawn()?;
///
/// system.handle(&double).query(21)?;
/// assert_eq!(answers.recv()?, 42);
/// let report = system.shutdown(std::time::Duration::from_secs(5));
/// assert_eq!(report.entity("double").unwrap().stats.handled, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Backend: Any + Send {
    /// What the backend takes in.
    type Input: Send + 'static;
    /// What the backend sends on to its siblings.
    type Output: Send + 'static;

    /// Answers an input: send output to siblings with [`Context::send`] or [`Context::send_to`].
    fn query(&mut self, input: Self::Input, ctx: &mut Context<Self::Output>) -> Result<(), BoxError>;

    /// Takes an input in with no answer. The default ignores it.
    fn read(&mut self, input: Self::Input, ctx: &mut Context<Self::Output>) -> Result<(), BoxError> {
        let _ = (input, ctx);
        Ok(())
    }

    /// Cleans up: the agent's thread ends after this returns. The default does nothing.
    fn nop(&mut self, ctx: &mut Context<Self::Output>) -> Result<(), BoxError> {
        let _ = ctx;
        Ok(())
    }

    /// Runs once on the agent's thread before any message, so that a source (a clock, a person at
    /// a terminal) can send without being asked and set timers. The default does nothing.
    fn start(&mut self, ctx: &mut Context<Self::Output>) -> Result<(), BoxError> {
        let _ = ctx;
        Ok(())
    }

    /// Runs on the agent's thread when a timer set with [`Context::every`] or [`Context::after`]
    /// fires. The default does nothing.
    fn timer(&mut self, timer: TimerId, ctx: &mut Context<Self::Output>) -> Result<(), BoxError> {
        let _ = (timer, ctx);
        Ok(())
    }

    /// Runs on the agent's thread once the agent has handled every message queued for it,
    /// before it waits for more, if a handler asked for it with [`Context::when_idle`]: where
    /// a backend that gathers work (rows to write in one transaction, entries for a broker)
    /// sends it, so that a burst costs one round trip and a lone message waits for nothing.
    /// The default does nothing.
    fn idle(&mut self, ctx: &mut Context<Self::Output>) -> Result<(), BoxError> {
        let _ = ctx;
        Ok(())
    }

    /// Whether the backend blocks its thread for long: it waits on a terminal, a socket or a
    /// process, or computes for seconds. In a system run by a pool
    /// ([`Runtime::Pool`](crate::Runtime::Pool)) such an entity gets a thread of its own, so
    /// that it cannot hold a worker the other entities share (as
    /// [`EntityOptions::thread`](crate::EntityOptions::thread) asks for any entity). Asked once,
    /// of the entity's first backend, when the system is spawned. The default is `false`; the
    /// standard backends that block (a person, the language models, the chess engines) say
    /// `true`.
    fn blocking(&self) -> bool {
        false
    }

    /// The backend's type name, shown when a boxed backend is debug-printed.
    fn type_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
}

/// A backend behind a box, as it is held by a running entity and handed back by a swap.
pub type BoxBackend<I, O> = Box<dyn Backend<Input = I, Output = O>>;

/// What an entity can run: any [`Backend`], or a [`BoxBackend`] (a backend chosen at run time).
///
/// [`SystemBuilder::entity`](crate::SystemBuilder::entity) and `agent_system!` take either, so
/// a graph can hold a backend picked from the command line without boxing it twice.
///
/// # Examples
///
/// ```
/// use sophon::{Backend, BoxBackend, BoxError, Context, SystemBuilder};
///
/// struct Loud;
/// struct Quiet;
///
/// impl Backend for Loud {
///     type Input = String;
///     type Output = String;
///     fn query(&mut self, s: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
///         Ok(ctx.send(s.to_uppercase())?)
///     }
/// }
///
/// impl Backend for Quiet {
///     type Input = String;
///     type Output = String;
///     fn query(&mut self, s: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
///         Ok(ctx.send(s.to_lowercase())?)
///     }
/// }
///
/// let loud = std::env::args().count() > 100;
/// let voice: BoxBackend<String, String> = if loud { Box::new(Loud) } else { Box::new(Quiet) };
/// let mut builder = SystemBuilder::new();
/// let voice = builder.entity("voice", voice);
/// let out = builder.output(&voice, "out");
/// let system = builder.spawn()?;
/// system.handle(&voice).query("Hello".to_string())?;
/// assert_eq!(out.recv()?, "hello");
/// // The entity runs `Quiet` itself, not a box of it: a swap hands `Quiet` back.
/// assert!(system.handle(&voice).swap(Loud)?.is::<Quiet>());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a backend",
    label = "an entity runs a backend",
    note = "implement `sophon::Backend` for `{Self}`, or put `#[sophon::backend]` on its impl block"
)]
pub trait IntoBackend {
    /// The backend's input type.
    type Input: Send + 'static;
    /// The backend's output type.
    type Output: Send + 'static;

    /// The backend, boxed once.
    fn into_boxed(self) -> BoxBackend<Self::Input, Self::Output>;
}

impl<B: Backend> IntoBackend for B {
    type Input = B::Input;
    type Output = B::Output;

    fn into_boxed(self) -> BoxBackend<B::Input, B::Output> {
        Box::new(self)
    }
}

impl<I: Send + 'static, O: Send + 'static> IntoBackend for BoxBackend<I, O> {
    type Input = I;
    type Output = O;

    fn into_boxed(self) -> BoxBackend<I, O> {
        self
    }
}

impl<I: Send + 'static, O: Send + 'static> fmt::Debug for dyn Backend<Input = I, Output = O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

impl<I: Send + 'static, O: Send + 'static> dyn Backend<Input = I, Output = O> {
    /// Whether the boxed backend is a `B`.
    pub fn is<B: Backend>(&self) -> bool {
        (self as &dyn Any).is::<B>()
    }

    /// Gets the concrete backend back, for instance from a swap; gives the box back if it is
    /// not a `B`.
    ///
    /// # Examples
    ///
    /// ```
    /// use sophon::{Backend, BoxBackend, BoxError, Context};
    ///
    /// struct Counter(u32);
    /// impl Backend for Counter {
    ///     type Input = ();
    ///     type Output = u32;
    ///     fn query(&mut self, (): (), ctx: &mut Context<u32>) -> Result<(), BoxError> {
    ///         self.0 += 1;
    ///         Ok(ctx.send(self.0)?)
    ///     }
    /// }
    ///
    /// let boxed: BoxBackend<(), u32> = Box::new(Counter(7));
    /// let counter: Box<Counter> = boxed.downcast().ok().unwrap();
    /// assert_eq!(counter.0, 7);
    /// ```
    pub fn downcast<B: Backend>(self: Box<Self>) -> Result<Box<B>, Box<Self>> {
        if self.is::<B>() {
            let any: Box<dyn Any> = self;
            Ok(any.downcast().unwrap_or_else(|_| unreachable!("type checked above")))
        } else {
            Err(self)
        }
    }
}
