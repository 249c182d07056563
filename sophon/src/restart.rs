//! Restarts: an entity whose backend panics gets a new one from its factory, keeping its id, its
//! handles and its queue.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::backend::{BoxBackend, IntoBackend};
use crate::err::BoxError;

/// How often an entity may be restarted: at most `max` restarts within any window of `within`.
/// Past that, the entity fails as one without a policy does.
///
/// Give it with [`EntityOptions::restart`](crate::EntityOptions::restart) to an entity added with
/// [`SystemBuilder::supervised`](crate::SystemBuilder::supervised), or as
/// `#[restart(max = 5, within = 10s)]` in `agent_system!`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use sophon::Restart;
///
/// let policy = Restart::new(5, Duration::from_secs(10));
/// assert_eq!((policy.max(), policy.within()), (5, Duration::from_secs(10)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Restart {
    max: u32,
    within: Duration,
}

impl Restart {
    /// At most `max` restarts within any window of `within`.
    pub fn new(max: u32, within: Duration) -> Self {
        Restart { max, within }
    }

    /// The most restarts allowed within one window.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The window.
    pub fn within(&self) -> Duration {
        self.within
    }
}

/// What a restart factory returns: a backend (any [`IntoBackend`]), or a `Result` of one whose
/// error says why it could not be built, such as `LocalLlm::load`'s.
pub trait FactoryOutput {
    /// The backend built.
    type Backend: IntoBackend;

    /// The backend, or why it could not be built.
    fn into_backend(self) -> Result<Self::Backend, BoxError>;
}

impl<B: IntoBackend> FactoryOutput for B {
    type Backend = B;

    fn into_backend(self) -> Result<B, BoxError> {
        Ok(self)
    }
}

impl<B: IntoBackend, E: Into<BoxError>> FactoryOutput for Result<B, E> {
    type Backend = B;

    fn into_backend(self) -> Result<B, BoxError> {
        self.map_err(Into::into)
    }
}

/// A factory, boxed for the agent.
pub(crate) type Factory<I, O> = Box<dyn FnMut() -> Result<BoxBackend<I, O>, BoxError> + Send>;

/// Boxes `factory`, boxing what it builds.
pub(crate) fn boxed_factory<F, R>(
    mut factory: F,
) -> Factory<<R::Backend as IntoBackend>::Input, <R::Backend as IntoBackend>::Output>
where
    F: FnMut() -> R + Send + 'static,
    R: FactoryOutput,
{
    Box::new(move || factory().into_backend().map(IntoBackend::into_boxed))
}

/// An entity's restart policy and factory, and the times of its recent restarts.
pub(crate) struct Supervisor<I, O> {
    pub(crate) policy: Restart,
    pub(crate) factory: Factory<I, O>,
    recent: VecDeque<Instant>,
}

impl<I, O> Supervisor<I, O> {
    pub(crate) fn new(policy: Restart, factory: Factory<I, O>) -> Self {
        Supervisor { policy, factory, recent: VecDeque::new() }
    }

    /// Records a restart at `now` if the policy allows one more; otherwise says why not.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<(), LimitReached> {
        while self.recent.front().is_some_and(|&t| now.duration_since(t) >= self.policy.within) {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.policy.max as usize {
            return Err(LimitReached(self.policy));
        }
        self.recent.push_back(now);
        Ok(())
    }
}

/// The error of a restart failure when the policy's limit is reached.
#[derive(Debug)]
pub(crate) struct LimitReached(Restart);

impl fmt::Display for LimitReached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Restart { max, within } = self.0;
        let s = if max == 1 { "" } else { "s" };
        write!(f, "it panicked again after {max} restart{s} within {within:?}; it is given up on")
    }
}

impl std::error::Error for LimitReached {}

/// The error of a restart failure when the factory fails or panics.
#[derive(Debug)]
pub(crate) struct FactoryFailed(pub(crate) BoxError);

impl fmt::Display for FactoryFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "its factory failed: {}", self.0)
    }
}

impl std::error::Error for FactoryFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor(max: u32, within: Duration) -> Supervisor<(), ()> {
        Supervisor::new(Restart::new(max, within), Box::new(|| Err("unused".into())))
    }

    #[test]
    fn admits_at_most_max_restarts_within_the_window() {
        let mut s = supervisor(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(s.admit(t0).is_ok());
        assert!(s.admit(t0 + Duration::from_secs(1)).is_ok());
        let err = s.admit(t0 + Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.to_string(), "it panicked again after 2 restarts within 10s; it is given up on");
        // Once the first restart leaves the window, there is room for one more.
        assert!(s.admit(t0 + Duration::from_secs(10)).is_ok());
        assert!(s.admit(t0 + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn a_policy_of_zero_restarts_never_admits() {
        let mut s = supervisor(0, Duration::from_secs(1));
        assert!(s.admit(Instant::now()).is_err());
    }
}
