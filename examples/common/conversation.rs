//! The conversation of the chat examples, shared by `chat` and `bus`.

use sophon::{AskError, Handle, ReplyErrorKind};

/// Asks the person and the model in turn until the person leaves: the person sees each reply
/// and types the next line, which the model answers (asked, it streams its reply in pieces). A
/// failed reply is reported, prefixed with `program`, and the person gets the floor back.
pub(crate) fn converse(
    person: &Handle<String, String>,
    model: &Handle<String, String>,
    program: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut reply = String::new();
    loop {
        // One who leaves answers nothing.
        let line = match person.call(reply) {
            Ok(line) => line,
            Err(AskError::Reply(e)) if e.kind() == ReplyErrorKind::NoAnswer => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        reply = match model.ask(line)?.collect::<Result<String, _>>() {
            Ok(pieces) => pieces.trim().to_owned(),
            Err(e) => {
                eprintln!("{program}: {e}");
                String::new()
            }
        };
    }
}
