//! The HTTP model against a fake OpenAI-compatible server on 127.0.0.1: a plain `TcpListener`
//! that answers each request from a script and records what it was sent.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use sophon::backends::llm::{ChatOptions, HttpLlm};
use sophon::crossbeam_channel::Receiver;
use sophon::{EntityState, Failure, SystemBuilder};

const WAIT: Duration = Duration::from_secs(10);

/// One scripted answer of the fake server.
#[derive(Clone)]
enum Reply {
    /// A status, extra headers and a body, sent at once.
    Plain(u16, Vec<(&'static str, String)>, String),
    /// Server-sent events, each written (and flushed) 5 ms after the last.
    Events(Vec<String>),
    /// Server-sent events, the second list only once the test says so on the channel.
    Gated(Vec<String>, Receiver<()>, Vec<String>),
    /// Server-sent events, each written the given time after the last.
    Paced(Vec<String>, Duration),
}

fn completion(text: &str) -> Reply {
    let body = format!(
        r#"{{"id":"x","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":{text:?}}},"finish_reason":"stop"}}]}}"#
    );
    Reply::Plain(200, Vec::new(), body)
}

fn status(code: u16, message: &str) -> Reply {
    Reply::Plain(code, Vec::new(), format!(r#"{{"error":{{"message":"{message}"}}}}"#))
}

/// A request as the server saw it.
#[derive(Debug)]
struct Request {
    head: String,
    body: serde_json::Value,
}

struct FakeServer {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeServer {
    /// Answers requests with `script` in order, then with the last reply for ever.
    fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let reply = script[i.min(script.len() - 1)].clone();
                serve(stream, reply, &seen);
            }
        });
        FakeServer { url, requests }
    }

    fn requests(&self) -> std::sync::MutexGuard<'_, Vec<Request>> {
        self.requests.lock().unwrap()
    }
}

/// Reads one request, records it, then answers it: a test that has the answer sees the request.
fn serve(stream: TcpStream, reply: Reply, seen: &Mutex<Vec<Request>>) -> Option<()> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    seen.lock().unwrap().push(Request { head, body: serde_json::from_slice(&body).ok()? });
    let mut out = stream;
    match reply {
        Reply::Plain(code, headers, body) => {
            let mut response = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                response.push_str(&format!("{name}: {value}\r\n"));
            }
            response.push_str("\r\n");
            response.push_str(&body);
            out.write_all(response.as_bytes()).ok()?;
        }
        Reply::Events(events) => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n").ok()?;
            write_events(&mut out, events)?;
        }
        Reply::Paced(events, pause) => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n").ok()?;
            for event in events {
                thread::sleep(pause);
                out.write_all(format!("data: {event}\n\n").as_bytes()).ok()?;
                out.flush().ok()?;
            }
        }
        Reply::Gated(first, gate, rest) => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n").ok()?;
            write_events(&mut out, first)?;
            gate.recv().ok()?;
            write_events(&mut out, rest)?;
        }
    }
    Some(())
}

fn write_events(out: &mut TcpStream, events: Vec<String>) -> Option<()> {
    for event in events {
        thread::sleep(Duration::from_millis(5));
        out.write_all(format!("data: {event}\n\n").as_bytes()).ok()?;
        out.flush().ok()?;
    }
    Some(())
}

fn delta(piece: &str) -> String {
    format!(r#"{{"choices":[{{"index":0,"delta":{{"content":{piece:?}}},"finish_reason":null}}]}}"#)
}

/// A model entity with an output, spawned; failures come on the returned receiver.
struct Harness {
    system: sophon::System,
    model: sophon::Handle<String, String>,
    replies: Receiver<String>,
    failures: Receiver<Failure>,
}

fn harness(llm: HttpLlm) -> Harness {
    let mut builder = SystemBuilder::new();
    let model = builder.entity("model", llm);
    let replies = builder.output(&model, "replies");
    let system = builder.spawn().unwrap();
    let failures = system.failures();
    let model = system.handle(&model);
    Harness { system, model, replies, failures }
}

fn quick(url: &str) -> HttpLlm {
    HttpLlm::new(url, "fake-model").backoff(Duration::from_millis(1)).timeout(Duration::from_secs(5))
}

#[test]
fn a_plain_reply_is_sent_on_and_remembered() {
    let server = FakeServer::start(vec![completion("Paris."), completion("Rome.")]);
    let llm = quick(&server.url)
        .api_key("sk-test")
        .options(ChatOptions::new().system_prompt("Be brief.").max_tokens(9).seed(4));
    let h = harness(llm);
    h.model.query("Capital of France?".into()).unwrap();
    assert_eq!(h.replies.recv_timeout(WAIT).unwrap(), "Paris.");
    h.model.query("And of Italy?".into()).unwrap();
    assert_eq!(h.replies.recv_timeout(WAIT).unwrap(), "Rome.");
    assert!(h.system.shutdown(WAIT).is_clean());

    let requests = server.requests();
    assert!(requests[0].head.starts_with("POST /v1/chat/completions "), "{}", requests[0].head);
    assert!(requests[0].head.to_ascii_lowercase().contains("authorization: bearer sk-test"), "{}", requests[0].head);
    let first = &requests[0].body;
    assert_eq!(first["model"], "fake-model");
    assert_eq!(first["max_tokens"], 9);
    assert_eq!(first["seed"], 4);
    assert!(first.get("stream").is_none());
    assert!(first.get("top_p").is_none() && first.get("top_k").is_none(), "sent only when set");
    assert_eq!(
        first["messages"],
        serde_json::json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}])
    );
    // The second request carries the first exchange.
    assert_eq!(
        requests[1].body["messages"],
        serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
        ])
    );
}

#[test]
fn a_streamed_reply_goes_piece_by_piece_to_the_stream_target() {
    let (release, gate) = sophon::crossbeam_channel::bounded(1);
    let rest = vec![
        delta("lo, "),
        delta("world"),
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.into(),
        "[DONE]".into(),
    ];
    let server = FakeServer::start(vec![Reply::Gated(vec![delta("Hel")], gate, rest)]);
    let llm = quick(&server.url).options(ChatOptions::new().stream_to("tokens"));
    let mut builder = SystemBuilder::new();
    let model = builder.entity("model", llm);
    let tokens = builder.output(&model, "tokens");
    let replies = builder.output(&model, "replies");
    let system = builder.spawn().unwrap();
    system.handle(&model).query("Say hello".into()).unwrap();
    // The first piece arrives while the server still holds back the rest.
    assert_eq!(tokens.recv_timeout(WAIT).unwrap(), "Hel");
    release.send(()).unwrap();
    assert_eq!(replies.recv_timeout(WAIT).unwrap(), "Hello, world");
    let pieces: Vec<String> = tokens.try_iter().collect();
    assert_eq!(pieces, ["lo, ", "world"]);
    assert!(replies.try_recv().is_err(), "the whole reply goes once, to the others");
    assert!(system.shutdown(WAIT).is_clean());
    assert_eq!(server.requests()[0].body["stream"], true);
}

#[test]
fn a_429_is_retried_after_its_retry_after() {
    let busy = Reply::Plain(429, vec![("Retry-After", "0".into())], r#"{"error":{"message":"slow down"}}"#.into());
    let server = FakeServer::start(vec![busy, completion("finally")]);
    let h = harness(quick(&server.url));
    h.model.query("hi".into()).unwrap();
    assert_eq!(h.replies.recv_timeout(WAIT).unwrap(), "finally");
    assert!(h.system.shutdown(WAIT).is_clean());
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn server_errors_until_the_retries_run_out_are_an_error_and_the_agent_goes_on() {
    let server = FakeServer::start(vec![
        status(500, "boom"),
        status(503, "boom"),
        status(502, "still down"),
        completion("back"),
    ]);
    let h = harness(quick(&server.url).retries(2));
    h.model.query("first".into()).unwrap();
    let failure = h.failures.recv_timeout(WAIT).unwrap();
    assert_eq!(failure.entity, "model");
    assert!(!failure.panicked);
    assert_eq!(failure.message(), "the server answered 502 (still down) after 3 attempts");
    h.model.query("second".into()).unwrap();
    assert_eq!(h.replies.recv_timeout(WAIT).unwrap(), "back");
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    // The failed message was taken back out of the conversation.
    assert_eq!(requests[3].body["messages"], serde_json::json!([{"role": "user", "content": "second"}]));
    drop(requests);
    let report = h.system.shutdown(WAIT);
    assert_eq!(report.entity("model").unwrap().stats.errors, 1);
    assert_eq!(report.entity("model").unwrap().stats.handled, 2);
}

#[test]
fn a_refused_key_fails_at_once() {
    let server = FakeServer::start(vec![status(401, "Incorrect API key provided")]);
    let h = harness(quick(&server.url).api_key("wrong"));
    h.model.query("hi".into()).unwrap();
    let failure = h.failures.recv_timeout(WAIT).unwrap();
    assert_eq!(
        failure.message(),
        "the server refused the API key (401: Incorrect API key provided); check `OPENAI_API_KEY`"
    );
    assert_eq!(server.requests().len(), 1, "a refused key is not retried");
}

#[test]
fn malformed_json_is_an_error_and_the_agent_goes_on() {
    let server = FakeServer::start(vec![
        Reply::Plain(200, Vec::new(), "{\"choices\": [".into()),
        Reply::Plain(200, Vec::new(), r#"{"choices": []}"#.into()),
        completion("fine"),
    ]);
    let h = harness(quick(&server.url));
    let mut errors = Vec::new();
    for _ in 0..2 {
        h.model.query("hi".into()).unwrap();
        errors.push(h.failures.recv_timeout(WAIT).unwrap().message());
    }
    assert!(errors[0].starts_with("malformed reply from the server: not JSON"), "{}", errors[0]);
    assert_eq!(errors[1], "malformed reply from the server: no `choices[0].message.content`");
    h.model.query("hi".into()).unwrap();
    assert_eq!(h.replies.recv_timeout(WAIT).unwrap(), "fine");
    assert_eq!(h.model.state().unwrap(), EntityState::Running);
    drop(h);

    // The same for streams, with a stream target.
    let server = FakeServer::start(vec![
        Reply::Events(vec![delta("half"), "not json".into()]),
        Reply::Events(vec![delta("cut short")]),
    ]);
    let h = harness(quick(&server.url).options(ChatOptions::new().stream_to("nobody")));
    let mut errors = Vec::new();
    for _ in 0..2 {
        h.model.query("hi".into()).unwrap();
        errors.push(h.failures.recv_timeout(WAIT).unwrap().message());
    }
    assert!(errors[0].starts_with("malformed reply from the server: an event is not JSON"), "{}", errors[0]);
    assert_eq!(errors[1], "malformed reply from the server: the stream ended before the reply was finished");
    assert!(h.replies.try_recv().is_err());
}

#[test]
fn connection_refused_is_an_error_after_the_retries() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let h = harness(quick(&url).retries(1));
    h.model.query("anyone?".into()).unwrap();
    let failure = h.failures.recv_timeout(WAIT).unwrap();
    let expected = format!("cannot reach `{url}/chat/completions` (");
    assert!(failure.message().starts_with(&expected), "{}", failure.error);
    assert!(failure.message().ends_with(") after 2 attempts"), "{}", failure.error);
    h.model.query("still there?".into()).unwrap();
    assert!(h.failures.recv_timeout(WAIT).is_ok());
    let report = h.system.shutdown(WAIT);
    let model = report.entity("model").unwrap();
    assert_eq!((model.stats.handled, model.stats.errors, model.state), (2, 2, EntityState::Stopped));
}

#[test]
fn a_server_that_never_answers_times_out() {
    // It accepts the connection and reads the request, then says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (done, finished) = sophon::crossbeam_channel::bounded::<()>(1);
    thread::spawn(move || {
        let (_stream, _) = listener.accept().unwrap();
        let _ = finished.recv();
    });
    let h = harness(quick(&url).timeout(Duration::from_millis(300)).retries(0));
    let asked = std::time::Instant::now();
    h.model.query("hello?".into()).unwrap();
    let failure = h.failures.recv_timeout(WAIT).unwrap();
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert!(failure.message().starts_with(&format!("cannot reach `{url}/chat/completions` (")), "{}", failure.error);
    assert!(failure.message().contains("timeout") || failure.message().contains("timed out"), "{}", failure.error);
    drop(done);
}

/// Runs this test binary again, for the one test `name`, with `vars` set (setting variables in
/// this process would race with the other tests); returns whether it passed.
fn rerun_with_env(name: &str, vars: &[(&str, &str)], unset: &[&str]) -> bool {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args([name, "--exact", "--test-threads=1"]).env("SOPHON_TEST_CHILD", "1");
    for (var, value) in vars {
        child.env(var, value);
    }
    for var in unset {
        child.env_remove(var);
    }
    let out = child.output().unwrap();
    if !out.status.success() {
        eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

#[test]
fn from_env_reads_the_url_the_model_and_the_key() {
    if std::env::var_os("SOPHON_TEST_CHILD").is_none() {
        let vars =
            [("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"), ("OPENAI_MODEL", "tiny"), ("OPENAI_API_KEY", "sk-x")];
        assert!(rerun_with_env("from_env_reads_the_url_the_model_and_the_key", &vars, &[]));
        return;
    }
    let llm = HttpLlm::from_env().unwrap();
    assert_eq!(llm.endpoint(), "http://127.0.0.1:9/v1/chat/completions");
    assert_eq!(llm.model(), "tiny");
    assert!(format!("{llm:?}").contains("api_key: Some(\"<set>\")"), "the key is set, and not shown: {llm:?}");
}

#[test]
fn from_env_needs_a_model_name() {
    if std::env::var_os("SOPHON_TEST_CHILD").is_none() {
        assert!(rerun_with_env("from_env_needs_a_model_name", &[], &["OPENAI_MODEL"]));
        return;
    }
    let err = HttpLlm::from_env().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the HTTP model is not configured: `OPENAI_MODEL` is not set; set it to the server's model name"
    );
}

#[test]
fn an_asked_model_streams_its_pieces_to_the_asker_only() {
    let (release, gate) = sophon::crossbeam_channel::bounded(1);
    let rest = vec![
        delta("lo, "),
        delta("world"),
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.into(),
        "[DONE]".into(),
    ];
    let server = FakeServer::start(vec![Reply::Gated(vec![delta("Hel")], gate, rest), completion("Bye.")]);
    // No stream target: asked, the model streams anyway, to the asker.
    let h = harness(quick(&server.url));
    let mut reply = h.model.ask("Say hello".into()).unwrap();
    // The first piece arrives while the server still holds back the rest.
    assert_eq!(reply.recv_timeout(WAIT).unwrap().as_deref(), Some("Hel"));
    release.send(()).unwrap();
    let rest: Vec<String> = reply.collect::<Result<_, _>>().unwrap();
    assert_eq!(rest, ["lo, ", "world"]);
    // A query after it goes to the siblings, and the model remembers the asked exchange.
    h.model.query("Bye?".into()).unwrap();
    assert_eq!(h.replies.recv_timeout(WAIT).unwrap(), "Bye.");
    assert!(h.replies.try_recv().is_err(), "nothing of the ask reached the output");
    assert!(h.system.shutdown(WAIT).is_clean());
    let requests = server.requests();
    assert_eq!(requests[0].body["stream"], true);
    assert_eq!(requests[1].body["messages"][1]["content"], "Hello, world");
}

#[test]
fn an_asked_model_that_fails_ends_the_reply_with_its_error() {
    let server = FakeServer::start(vec![status(401, "bad key")]);
    let h = harness(quick(&server.url));
    let err = h.model.call("Hi".into()).unwrap_err();
    let sophon::AskError::Reply(err) = err else { panic!("the ask was sent: {err}") };
    assert_eq!(err.kind(), sophon::ReplyErrorKind::Failed);
    assert!(err.to_string().starts_with("`model` failed to answer: "), "{err}");
    assert!(std::error::Error::source(&err).is_some());
    let report = h.system.shutdown(WAIT);
    assert_eq!(report.entity("model").unwrap().stats.errors, 1);
}

/// The pieces of a reply "0 1 2 ... n-1", then its end.
fn counted(n: usize) -> Vec<String> {
    let mut events: Vec<String> = (0..n).map(|i| delta(&format!("{i} "))).collect();
    events.push(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.into());
    events.push("[DONE]".into());
    events
}

#[test]
fn a_stream_longer_than_the_timeout_is_read_to_its_end_while_it_keeps_coming() {
    // 12 pieces 50 ms apart: 600 ms in all, against a timeout of 250 ms of silence.
    let server = FakeServer::start(vec![Reply::Paced(counted(12), Duration::from_millis(50))]);
    let h = harness(quick(&server.url).timeout(Duration::from_millis(250)).retries(0));
    let started = std::time::Instant::now();
    let pieces: Vec<String> = h.model.ask("Count.".into()).unwrap().collect::<Result<_, _>>().unwrap();
    assert!(started.elapsed() > Duration::from_millis(500), "the stream was not slow");
    assert_eq!(pieces.concat(), "0 1 2 3 4 5 6 7 8 9 10 11 ");
    assert!(h.system.shutdown(WAIT).is_clean());
}

#[test]
fn a_stream_that_stalls_ends_with_an_error_after_the_timeout() {
    let (_release, gate) = sophon::crossbeam_channel::bounded(1);
    let server = FakeServer::start(vec![Reply::Gated(vec![delta("Hel")], gate, counted(1))]);
    let h = harness(quick(&server.url).timeout(Duration::from_millis(300)).retries(0));
    let started = std::time::Instant::now();
    let mut reply = h.model.ask("Say hello".into()).unwrap();
    assert_eq!(reply.recv_timeout(WAIT).unwrap().as_deref(), Some("Hel"));
    let err = reply.recv_timeout(WAIT).unwrap_err();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(
        err.to_string(),
        "`model` failed to answer: the server stopped sending mid-reply: nothing came for 300 ms"
    );
    let failure = h.failures.recv_timeout(WAIT).unwrap();
    let http = failure.error.downcast_ref::<sophon::backends::llm::HttpError>().unwrap();
    assert!(matches!(http, sophon::backends::llm::HttpError::Stalled { .. }), "{http:?}");
    h.system.shutdown(WAIT);
}

#[test]
fn top_p_and_top_k_are_sent_when_set() {
    let server = FakeServer::start(vec![completion("Hi.")]);
    let h = harness(quick(&server.url).options(ChatOptions::new().temperature(0.2).top_p(0.9).top_k(40)));
    h.model.query("Hello".into()).unwrap();
    assert_eq!(h.replies.recv_timeout(WAIT).unwrap(), "Hi.");
    h.system.shutdown(WAIT);
    let body = &server.requests()[0].body;
    assert_eq!(
        (body["temperature"].as_f64(), body["top_p"].as_f64(), body["top_k"].as_u64()),
        (Some(0.2), Some(0.9), Some(40))
    );
}
