//! The `tracing` feature: a span per handled message, the child of the span it was sent from,
//! and events for swaps, restarts, panics and culled replicas; in either runtime (CI runs this
//! suite again with `SOPHON_RUNTIME=pool`).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sophon::{Backend, BoxBackend, BoxError, Context, EntityOptions, SystemBuilder};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};

const DEADLINE: Duration = Duration::from_secs(30);

/// A span as the subscriber saw it open.
#[derive(Clone, Debug)]
struct SpanSeen {
    id: u64,
    parent: Option<u64>,
    name: &'static str,
    fields: Vec<(String, String)>,
}

impl SpanSeen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Seen {
    spans: Vec<SpanSeen>,
    events: Vec<Vec<(String, String)>>,
}

#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_string(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

/// Keeps every span opened and every event, with the spans' parents.
struct Capture(Arc<Mutex<Seen>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let parent = ctx.span(id).and_then(|span| span.parent()).map(|parent| parent.id().into_u64());
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let seen = SpanSeen { id: id.into_u64(), parent, name: attrs.metadata().name(), fields: fields.0 };
        lock(&self.0).spans.push(seen);
    }

    fn on_event(&self, event: &Event<'_>, _: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        lock(&self.0).events.push(fields.0);
    }
}

/// A test that fails while it holds the lock must not take the others down with it.
fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's subscriber, installed once: agents run on threads of their own (or a pool's),
/// which see only the global one. Tests tell their spans apart by their entities' names.
fn seen() -> Arc<Mutex<Seen>> {
    static SEEN: OnceLock<Arc<Mutex<Seen>>> = OnceLock::new();
    SEEN.get_or_init(|| {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let subscriber = Registry::default().with(Capture(seen.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        seen
    })
    .clone()
}

/// Asks the model once, then shows the answer: `person -> model`, `loop model -> person`.
struct Person {
    asked: bool,
}

impl Backend for Person {
    type Input = String;
    type Output = String;

    fn query(&mut self, text: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
        if self.asked {
            return Ok(ctx.send_to("shown", text)?);
        }
        self.asked = true;
        Ok(ctx.send_to("tr-model", text)?)
    }
}

struct Model;

impl Backend for Model {
    type Input = String;
    type Output = String;

    fn query(&mut self, question: String, ctx: &mut Context<String>) -> Result<(), BoxError> {
        Ok(ctx.send(format!("you said: {question}"))?)
    }
}

#[test]
fn a_person_model_person_exchange_forms_one_tree_of_spans() {
    let seen = seen();
    let mut b = SystemBuilder::new();
    let person = b.entity("tr-person", Person { asked: false });
    let model = b.entity("tr-model", Model);
    b.query_edge(&person, &model);
    b.loop_edge(&model, &person);
    let shown = b.output(&person, "shown");
    let system = b.spawn().unwrap();

    let conversation = tracing::info_span!("conversation");
    let conversation_id = conversation.id().expect("a subscriber is installed").into_u64();
    conversation.in_scope(|| system.handle(&person).query("hello".to_string()).unwrap());
    assert_eq!(shown.recv_timeout(DEADLINE).unwrap(), "you said: hello");
    system.shutdown(DEADLINE);

    let seen = lock(&seen);
    let ours: Vec<&SpanSeen> = seen
        .spans
        .iter()
        .filter(|s| s.name == "handle" && s.field("entity").is_some_and(|e| e.starts_with("tr-")))
        .collect();
    let entities: Vec<&str> = ours.iter().map(|s| s.field("entity").unwrap()).collect();
    assert_eq!(entities, ["tr-person", "tr-model", "tr-person"], "{ours:#?}");
    // Each message's span is the child of the one it was sent from, up to the caller's.
    assert_eq!(ours[0].parent, Some(conversation_id));
    assert_eq!(ours[1].parent, Some(ours[0].id));
    assert_eq!(ours[2].parent, Some(ours[1].id));
    assert_eq!(ours[0].field("kind"), Some("Query"));
    // Numbered from 1 per entity: the person's first message and its second.
    assert_eq!((ours[0].field("seq"), ours[2].field("seq")), (Some("1"), Some("2")));
}

/// Panics on 13; fails while told to.
struct Touchy(Arc<Mutex<bool>>);

impl Backend for Touchy {
    type Input = u32;
    type Output = u32;

    fn query(&mut self, n: u32, ctx: &mut Context<u32>) -> Result<(), BoxError> {
        assert_ne!(n, 13, "unlucky");
        if *self.0.lock().unwrap() {
            return Err("down".into());
        }
        Ok(ctx.send(n)?)
    }
}

#[test]
fn swaps_restarts_panics_and_culled_replicas_are_events() {
    let seen = seen();
    let down = Arc::new(Mutex::new(false));
    let mut b = SystemBuilder::new();
    let touchy = {
        let down = down.clone();
        b.supervised("ev-touchy", move || Touchy(down.clone()), EntityOptions::new().restart(3, DEADLINE))
    };
    let failing = Arc::new(Mutex::new(true));
    let replicas: Vec<BoxBackend<u32, u32>> =
        vec![Box::new(Touchy(down.clone())), Box::new(Touchy(failing.clone())), Box::new(Touchy(down.clone()))];
    let model = b.replicas("ev-model", replicas);
    let out = b.output(&model, "out");
    let system = b.spawn().unwrap();
    let touchy = system.handle(&touchy);
    touchy.query(13).unwrap();
    touchy.swap(Touchy(down.clone())).unwrap();
    let model = system.handle(&model);
    // Until the failing replica is culled: three of its failures in a row, however the
    // routing spreads the queries.
    let culled = || system.rankings().iter().flat_map(|r| &r.replicas).any(|r| r.name == "ev-model/1" && r.culled);
    let started = std::time::Instant::now();
    let mut n = 100;
    while !culled() {
        assert!(started.elapsed() < DEADLINE, "ev-model/1 was never culled");
        model.query(n).unwrap();
        let _ = out.recv_timeout(Duration::from_millis(20));
        n += 1;
    }
    system.shutdown(DEADLINE);

    let seen = lock(&seen);
    let event = |message: &str, key: &str, value: &str| {
        seen.events.iter().any(|fields| {
            fields.iter().any(|(k, v)| k == "message" && v == message)
                && fields.iter().any(|(k, v)| k == key && v == value)
        })
    };
    assert!(event("handler panicked", "entity", "ev-touchy"), "{:?}", seen.events);
    assert!(event("backend restarted after a panic", "entity", "ev-touchy"), "{:?}", seen.events);
    assert!(event("backend swapped", "entity", "ev-touchy"), "{:?}", seen.events);
    assert!(event("replica culled", "replica", "ev-model/1"), "{:?}", seen.events);
}
