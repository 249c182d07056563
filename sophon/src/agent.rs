//! The agent: an entity's thread. It waits on its queue, runs the backend, and keeps the counts.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::backend::BoxBackend;
use crate::context::Context;
use crate::entity::{Core, EntityState, Envelope, Port};
use crate::err::BoxError;
use crate::message::HandlerKind;
use crate::system::Failure;

pub(crate) struct Agent<I, O> {
    pub(crate) port: Arc<Port<I, O>>,
    rx: Receiver<Envelope<I, O>>,
    backend: BoxBackend<I, O>,
    pub(crate) ctx: Context<O>,
    clock: quanta::Clock,
    // Mirrors of the counters only this agent writes, so that publishing one is a plain store.
    received: u64,
    handled: u64,
    errors: u64,
    busy_ticks: u64,
    max_ticks: u64,
    activations: u64,
    activations_done: u64,
}

/// Whether the agent goes on after a handler.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Failed,
}

impl<I: Send + 'static, O: Send + 'static> Agent<I, O> {
    pub(crate) fn new(port: Arc<Port<I, O>>, backend: BoxBackend<I, O>) -> Self {
        Agent {
            rx: port.rx.clone(),
            ctx: Context::new(port.core.clone()),
            clock: port.core.shared.clock.clone(),
            port,
            backend,
            received: 0,
            handled: 0,
            errors: 0,
            busy_ticks: 0,
            max_ticks: 0,
            activations: 0,
            activations_done: 0,
        }
    }

    fn core(&self) -> &Core {
        &self.port.core
    }

    pub(crate) fn run(mut self) {
        let end = match self.activate(HandlerKind::Start, |b, ctx| b.start(ctx)) {
            Flow::Failed => EntityState::Failed,
            Flow::Continue => self.serve(),
        };
        self.finish(end);
    }

    /// The loop: one queue, one clock read per message while busy (the end of one message is the
    /// start of the next), and plain stores to counters only this thread writes.
    fn serve(&mut self) -> EntityState {
        let mut mark = self.clock.raw();
        loop {
            let env = if self.ctx.has_timers() {
                match self.next_or_timer() {
                    Some(env) => {
                        mark = self.clock.raw();
                        env
                    }
                    None => {
                        if self.fire_due_timer() == Flow::Failed {
                            return EntityState::Failed;
                        }
                        continue;
                    }
                }
            } else {
                match self.rx.try_recv() {
                    Ok(env) => env,
                    Err(_) => match self.rx.recv() {
                        Ok(env) => {
                            mark = self.clock.raw();
                            env
                        }
                        Err(_) => unreachable!("the port keeps a sender, so the queue never disconnects"),
                    },
                }
            };
            let flow = match env {
                Envelope::Query(body) => self.handle(HandlerKind::Query, &mut mark, |b, ctx| b.query(body, ctx)),
                Envelope::Read(body) => self.handle(HandlerKind::Read, &mut mark, |b, ctx| b.read(body, ctx)),
                Envelope::Nop => return self.cleanup(),
                Envelope::Swap(request) => {
                    let old = std::mem::replace(&mut self.backend, request.backend);
                    let _ = request.reply.send(Ok(old));
                    mark = self.clock.raw();
                    Flow::Continue
                }
            };
            if flow == Flow::Failed {
                return EntityState::Failed;
            }
        }
    }

    /// Waits for a message until the next timer is due; `None` when a timer is due.
    fn next_or_timer(&mut self) -> Option<Envelope<I, O>> {
        let deadline = self.ctx.next_deadline()?;
        if deadline <= Instant::now() {
            return None;
        }
        self.rx.recv_deadline(deadline).ok()
    }

    fn fire_due_timer(&mut self) -> Flow {
        match self.ctx.pop_due(Instant::now()) {
            Some(id) => self.activate(HandlerKind::Timer, |b, ctx| b.timer(id, ctx)),
            None => Flow::Continue,
        }
    }

    /// Runs a query or read handler and counts it.
    fn handle(
        &mut self,
        kind: HandlerKind,
        mark: &mut u64,
        f: impl FnOnce(&mut BoxBackend<I, O>, &mut Context<O>) -> Result<(), BoxError>,
    ) -> Flow {
        self.received += 1;
        self.core().counters.received.store(self.received, Ordering::Relaxed);
        let (backend, ctx) = (&mut self.backend, &mut self.ctx);
        let result = catch_unwind(AssertUnwindSafe(|| f(backend, ctx)));

        let end = self.clock.raw();
        let took = end.saturating_sub(*mark);
        *mark = end;
        let counters = &self.port.core.counters;
        self.busy_ticks += took;
        counters.busy_ticks.store(self.busy_ticks, Ordering::Relaxed);
        if took > self.max_ticks {
            self.max_ticks = took;
            counters.max_ticks.store(took, Ordering::Relaxed);
        }
        match result {
            Ok(result) => {
                if let Err(error) = result {
                    self.errors += 1;
                    counters.errors.store(self.errors, Ordering::Relaxed);
                    self.report(kind, error.to_string(), false);
                }
                // Published last, with release: it marks the message done (see
                // `System::quiescent`).
                self.handled += 1;
                counters.handled.store(self.handled, Ordering::Release);
                Flow::Continue
            }
            Err(payload) => {
                self.panicked(kind, payload);
                Flow::Failed
            }
        }
    }

    /// Runs a handler that no message asked for (`start`, a timer), unless the system is
    /// shutting down.
    fn activate(
        &mut self,
        kind: HandlerKind,
        f: impl FnOnce(&mut BoxBackend<I, O>, &mut Context<O>) -> Result<(), BoxError>,
    ) -> Flow {
        // Announce the run, then look at `stopping`; the shutdown sets `stopping`, then reads
        // the announcements. With both sides sequentially consistent, either this run sees
        // `stopping` and does not start, or the shutdown sees the run and waits for it.
        let counters = &self.port.core.counters;
        self.activations += 1;
        counters.activations.store(self.activations, Ordering::SeqCst);
        let flow = if self.port.core.shared.stopping.load(Ordering::SeqCst) {
            self.ctx.clear_timers();
            Flow::Continue
        } else {
            let (backend, ctx) = (&mut self.backend, &mut self.ctx);
            match catch_unwind(AssertUnwindSafe(|| f(backend, ctx))) {
                Ok(Ok(())) => Flow::Continue,
                Ok(Err(error)) => {
                    self.errors += 1;
                    counters.errors.store(self.errors, Ordering::Relaxed);
                    self.report(kind, error.to_string(), false);
                    Flow::Continue
                }
                Err(payload) => {
                    self.panicked(kind, payload);
                    Flow::Failed
                }
            }
        };
        self.activations_done += 1;
        counters.activations_done.store(self.activations_done, Ordering::SeqCst);
        flow
    }

    /// Handles `Nop`: the backend cleans up and the agent ends.
    fn cleanup(&mut self) -> EntityState {
        // Refuse new messages before cleaning up, so that what the cleanup sends to siblings
        // and what others send here are both accounted for.
        self.core().set_state(EntityState::Stopped);
        let (backend, ctx) = (&mut self.backend, &mut self.ctx);
        match catch_unwind(AssertUnwindSafe(|| backend.nop(ctx))) {
            Ok(Ok(())) => EntityState::Stopped,
            Ok(Err(error)) => {
                self.errors += 1;
                self.core().counters.errors.store(self.errors, Ordering::Relaxed);
                self.report(HandlerKind::Nop, error.to_string(), false);
                EntityState::Stopped
            }
            Err(payload) => {
                self.panicked(HandlerKind::Nop, payload);
                EntityState::Failed
            }
        }
    }

    fn panicked(&self, kind: HandlerKind, payload: Box<dyn Any + Send>) {
        let message = panic_message(&*payload);
        // Mark the entity failed first so that no one sends it more work.
        self.core().set_state(EntityState::Failed);
        *self.core().panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
        let panics = self.core().counters.panics.load(Ordering::Relaxed) + 1;
        self.core().counters.panics.store(panics, Ordering::Release);
        self.report(kind, message, true);
    }

    fn report(&self, kind: HandlerKind, error: String, panicked: bool) {
        let core = self.core();
        core.shared.report(Failure { entity: core.name.to_string(), id: core.id, kind, error, panicked });
    }

    fn finish(self, end: EntityState) {
        let Agent { port, backend, ctx, .. } = self;
        port.core.set_state(end);
        port.drain();
        // A backend that panicked may panic again when dropped; that must not take the thread
        // down before it has signed off.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(backend)));
        drop(ctx);
        port.core.shared.agent_ended();
    }
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
