//! Reading a Server-Sent Events stream (`text/event-stream`, as `GET /subscribe` answers): bytes
//! in whatever chunks the connection delivers, messages out. It follows the HTML standard's
//! parsing rules that the node's messages use: lines end with CR LF, LF or a lone CR; a line
//! starting with `:` is a comment (the node's heartbeats); `field: value` with one optional
//! space after the colon; `data` lines of one message are joined with LF; a blank line ends
//! the message; `id` sets the last event id (kept across messages without one). The rules are
//! short, and writing them here keeps the publisher free of another HTTP stack.

/// One message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// `event:`; empty means the default type (`message`).
    pub event: String,
    /// The `data:` lines joined with LF.
    pub data: String,
    /// The last event id as of this message (`id:` of this one or an earlier one).
    pub id: Option<String>,
}

/// An incremental parser: feed it bytes, take the messages they complete.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The last byte fed was a CR: an LF right after it belongs to the same line end.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    /// Longest line accepted, in bytes: a stream that never ends a line cannot grow it past.
    max_line: usize,
}

/// Why a stream could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A line longer than the limit.
    #[error("a line of the event stream is over {0} bytes")]
    LineTooLong(usize),
}

impl Parser {
    /// A parser that refuses lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            ..Self::default()
        }
    }

    /// Parses `bytes`, appending every message they complete to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Message>) -> Result<(), SseError> {
        for &b in bytes {
            let was_cr = std::mem::replace(&mut self.after_cr, false);
            match b {
                b'\n' if was_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, out);
                }
                _ => {
                    if self.line.len() >= self.max_line {
                        return Err(SseError::LineTooLong(self.max_line));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Message>) {
        if line.is_empty() {
            if self.has_data {
                out.push(Message {
                    event: std::mem::take(&mut self.event),
                    data: std::mem::take(&mut self.data),
                    id: self.last_id.clone(),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(text: &str, piece: usize) -> Vec<Message> {
        let mut p = Parser::new(1 << 20);
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(piece) {
            p.feed(chunk, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn messages_come_out_whole_however_the_bytes_are_cut() {
        let text = "event: consistency\ndata: {\"level\":\"eventual\"}\n\n\
                    : heartbeat\n\n\
                    id: 7\ndata: {\"a\":\r\ndata: 1}\r\n\r\n\
                    id: 9\rdata:x\r\r\
                    data: no id here\n\n\
                    event: end\ndata: {\"resume_from\":9}\n\n";
        for piece in [1, 2, 3, 7, 1000] {
            let m = parse_in_pieces(text, piece);
            assert_eq!(m.len(), 5, "piece {piece}: {m:?}");
            assert_eq!(m[0].event, "consistency");
            assert_eq!(m[0].id, None);
            assert_eq!(m[1].data, "{\"a\":\n1}");
            assert_eq!(m[1].id.as_deref(), Some("7"));
            assert_eq!(m[2].data, "x");
            assert_eq!(m[2].id.as_deref(), Some("9"));
            assert_eq!(m[3].id.as_deref(), Some("9"), "ids carry over");
            assert_eq!(m[4].event, "end");
        }
    }

    #[test]
    fn an_unfinished_message_is_not_delivered_and_long_lines_are_refused() {
        let mut p = Parser::new(16);
        let mut out = Vec::new();
        p.feed(b"id: 1\ndata: half", &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(
            p.feed(&[b'x'; 20], &mut out),
            Err(SseError::LineTooLong(16))
        );
    }
}
