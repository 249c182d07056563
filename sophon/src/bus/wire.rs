//! The bus's wire format: the fields of the entries sophon adds to its streams, and how bodies
//! and answers are encoded. Every field name is here, so that the format reads off one page.
//!
//! - An entry of an exported entity's stream `ns:name`, added by an importer:
//!   - `k`: `q` for a query, `r` for a read;
//!   - `b`: the body, postcard-encoded;
//!   - `to` and `c`, only when the sender wants the answer: its answer stream, and a correlation
//!     number of its own.
//! - An entry of an answer stream, added by the exporting entity's agent once the message is
//!   handled, or has failed its last delivery:
//!   - `c`: the correlation number;
//!   - `o`: the handler's outputs, postcard encodings one after another (none is fine);
//!   - or `e`: why the message could not be handled.
//! - An entry of the dead-letter stream `ns:name:dead`: `id` (the entry's id in `ns:name`), `b`
//!   (its body, as it came) and `failure`.

use redis::streams::StreamId;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The entry of a message for `stream`; `answer_to` is where its answer goes, if wanted, and
/// under which number.
pub(super) fn message(stream: &str, read: bool, body: Vec<u8>, answer_to: Option<(&str, u64)>) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*").arg("k").arg(if read { "r" } else { "q" }).arg("b").arg(body);
    if let Some((to, c)) = answer_to {
        cmd.arg("to").arg(to).arg("c").arg(c);
    }
    cmd
}

/// A message as it was taken from a stream.
pub(super) struct Message<'a> {
    pub(super) read: bool,
    pub(super) body: &'a [u8],
    /// The sender's answer stream and correlation number, if it wants the answer.
    pub(super) answer_to: Option<(&'a [u8], &'a [u8])>,
}

impl<'a> Message<'a> {
    pub(super) fn parse(entry: &'a StreamId) -> Self {
        Message {
            read: field(entry, "k") == Some(b"r"),
            body: field(entry, "b").unwrap_or_default(),
            answer_to: field(entry, "to").zip(field(entry, "c")),
        }
    }

    /// The body, if it is one of type `I`.
    pub(super) fn decode<I: DeserializeOwned>(&self) -> Result<I, postcard::Error> {
        postcard::from_bytes(self.body)
    }
}

/// Adds the answer to message `c` to the answer stream `to`: its outputs, encoded with
/// [`encode_output`].
pub(super) fn answer(pipe: &mut redis::Pipeline, to: &[u8], c: &[u8], outputs: Vec<u8>) {
    pipe.cmd("XADD").arg(to).arg("*").arg("c").arg(c).arg("o").arg(outputs).ignore();
}

/// Adds to the answer stream `to` that message `c` could not be handled, and why.
pub(super) fn failed(pipe: &mut redis::Pipeline, to: &[u8], c: &[u8], why: &str) {
    pipe.cmd("XADD").arg(to).arg("*").arg("c").arg(c).arg("e").arg(why).ignore();
}

/// Appends one output to the outputs of an answer.
pub(super) fn encode_output<O: Serialize>(out: &O, outputs: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(out, outputs)
}

/// An answer as it was read from an answer stream.
pub(super) struct Answer<'a> {
    /// The correlation number, if it is one.
    pub(super) c: Option<u64>,
    outputs: &'a [u8],
    /// Why the message could not be handled, if it could not.
    pub(super) failure: Option<String>,
}

impl<'a> Answer<'a> {
    pub(super) fn parse(entry: &'a StreamId) -> Self {
        Answer {
            c: field(entry, "c").and_then(|c| std::str::from_utf8(c).ok()?.parse().ok()),
            outputs: field(entry, "o").unwrap_or_default(),
            failure: field(entry, "e").map(|e| String::from_utf8_lossy(e).into_owned()),
        }
    }

    /// The outputs, if they are of type `O`.
    pub(super) fn outputs<O: DeserializeOwned>(&self) -> Result<Vec<O>, String> {
        let mut bytes = self.outputs;
        let mut outputs = Vec::new();
        while !bytes.is_empty() {
            let (out, rest) = postcard::take_from_bytes::<O>(bytes)
                .map_err(|e| format!("an answer is not of this entity's output type: {e}"))?;
            outputs.push(out);
            bytes = rest;
        }
        Ok(outputs)
    }
}

/// Adds the message `id`, whose body is `body`, to the dead-letter stream `dead`, with why.
pub(super) fn dead_letter(pipe: &mut redis::Pipeline, dead: &str, id: &str, body: &[u8], why: &str) {
    pipe.xadd(dead, "*", &[("id", id.as_bytes()), ("b", body), ("failure", why.as_bytes())]).ignore();
}

fn field<'a>(entry: &'a StreamId, name: &str) -> Option<&'a [u8]> {
    match entry.map.get(name) {
        Some(redis::Value::BulkString(bytes)) => Some(bytes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_round_trip_one_after_another() {
        let mut outputs = Vec::new();
        for out in ["a", "", "three"] {
            outputs = encode_output(&out.to_string(), outputs).unwrap();
        }
        let answer = Answer { c: Some(1), outputs: &outputs, failure: None };
        assert_eq!(answer.outputs::<String>().unwrap(), ["a", "", "three"]);
        let none = Answer { c: Some(2), outputs: &[], failure: None };
        assert!(none.outputs::<String>().unwrap().is_empty());
        // Bytes of another type are an error, not garbage.
        let wrong = Answer { c: Some(3), outputs: &[0xff, 0xff, 0xff], failure: None };
        assert!(wrong.outputs::<String>().is_err());
    }
}
