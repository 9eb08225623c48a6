//! The Server-Sent Events wire format of a subscription's body: one message as text (`event:`,
//! `id:`, one `data:` line per line of the data, a blank line), and the heartbeat comment.
//! Written here rather than through axum's `Sse` so that the body can put every message that
//! is ready into one HTTP chunk: one write for the node and one read for the subscriber per
//! batch instead of per event, which is most of what fan-out costs (docs/performance.md).
//! [`event`] frames an event's message around JSON rendered straight into the output, so
//! framing costs no allocation and no copy unless the JSON holds a line break.

/// The comment an idle stream gets every heartbeat interval.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// Appends one message to `out`. `data` is split into `data:` lines at every CR LF, LF or lone
/// CR (a payload is JSON as its producer sent it, whitespace and all), so a client joining the
/// lines with LF gets the same JSON. `id` and `event` must not contain line breaks (cursors and
/// fixed names).
pub fn message(out: &mut Vec<u8>, event: Option<&str>, id: Option<&str>, data: &[u8]) {
    if let Some(e) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e.as_bytes());
        out.push(b'\n');
    }
    if let Some(i) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(i.as_bytes());
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        out.extend_from_slice(b"data: ");
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => {
                out.extend_from_slice(rest);
                out.push(b'\n');
                break;
            }
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.push(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
    out.push(b'\n');
}

/// Appends one event's message: `id: ID`, then the data that `write_data` appends to `out`.
/// The data is rendered in place after `data: `; only when it holds a line break (a payload
/// stored with its producer's whitespace) is it copied out and framed by [`message`].
pub fn event(out: &mut Vec<u8>, id: u64, write_data: impl FnOnce(&mut Vec<u8>)) {
    use std::io::Write;
    let start = out.len();
    // Writing to a Vec cannot fail.
    let _ = write!(out, "id: {id}\ndata: ");
    let data_at = out.len();
    write_data(out);
    if !out[data_at..].iter().any(|&b| b == b'\n' || b == b'\r') {
        out.extend_from_slice(b"\n\n");
        return;
    }
    let data = out.split_off(data_at);
    out.truncate(start);
    message(out, None, Some(&id.to_string()), &data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(event: Option<&str>, id: Option<&str>, data: &str) -> String {
        let mut out = Vec::new();
        message(&mut out, event, id, data.as_bytes());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn messages_are_framed_and_data_is_split_at_every_line_break() {
        assert_eq!(
            text(None, Some("17"), r#"{"a":1}"#),
            "id: 17\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(text(Some("end"), None, "{}"), "event: end\ndata: {}\n\n");
        assert_eq!(
            text(None, None, "{\"a\":\r\n1,\r\"b\":\n2}"),
            "data: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
        assert_eq!(text(None, None, ""), "data: \n\n");
        assert_eq!(text(None, None, "x\n"), "data: x\ndata: \n\n");
    }

    #[test]
    fn an_event_rendered_in_place_is_framed_as_a_message() {
        for data in [r#"{"a":1}"#, "", "{\"a\":\r\n1}", "x\n", "\r"] {
            let mut framed = b"before".to_vec();
            event(&mut framed, 42, |out| {
                out.extend_from_slice(data.as_bytes())
            });
            let mut expected = b"before".to_vec();
            message(&mut expected, None, Some("42"), data.as_bytes());
            assert_eq!(
                String::from_utf8(framed).unwrap(),
                String::from_utf8(expected).unwrap(),
                "{data:?}"
            );
        }
    }
}
