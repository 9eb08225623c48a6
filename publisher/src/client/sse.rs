//! Reading a Server-Sent Events stream (`text/event-stream`, as `GET /subscribe` answers): bytes
//! in whatever chunks the connection delivers, messages out. It follows the HTML standard's
//! parsing rules that the node's messages use: lines end with CR LF, LF or a lone CR; a line
//! starting with `:` is a comment (the node's heartbeats); `field: value` with one optional
//! space after the colon; `data` lines of one message are joined with LF; a blank line ends
//! the message; `id` sets the last event id (kept across messages without one). The rules are
//! short, and writing them here keeps the publisher free of another HTTP stack.
//!
//! A subscriber in a benchmark parses hundreds of thousands of messages a second, so the parser
//! finds line ends with `memchr` and works on the bytes as they arrived (a line is copied only
//! when a chunk ends inside it), and lends each message to a callback instead of allocating
//! it.

use std::borrow::Cow;
use std::ops::ControlFlow;

/// One message, lent to the caller of [`Parser::feed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// `event:`; empty means the default type (`message`).
    pub event: &'a str,
    /// The `data:` lines joined with LF, as bytes: a caller that only counts events does not
    /// pay for checking them as UTF-8 ([`Message::text`] does).
    pub data: &'a [u8],
    /// The last event id as of this message (`id:` of this one or an earlier one).
    pub id: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// The data as text (invalid UTF-8 replaced, as the standard's decoder does).
    pub fn text(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.data)
    }
}

/// An incremental parser: feed it bytes, it hands out the messages they complete.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of a line not yet ended when the last chunk ended.
    line: Vec<u8>,
    /// The last byte fed was a CR: an LF right after it belongs to the same line end.
    after_cr: bool,
    event: String,
    data: Vec<u8>,
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

    /// Parses `bytes`, handing every message they complete to `on_message`, in order, until it
    /// answers `Break` (the rest of `bytes` is then left unread, and so is the answer).
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut on_message: impl FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, SseError> {
        while let Some(&first) = bytes.first() {
            if std::mem::replace(&mut self.after_cr, false) && first == b'\n' {
                bytes = &bytes[1..];
                continue;
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', bytes) else {
                if self.line.len() + bytes.len() > self.max_line {
                    return Err(SseError::LineTooLong(self.max_line));
                }
                self.line.extend_from_slice(bytes);
                break;
            };
            if self.line.len() + end > self.max_line {
                return Err(SseError::LineTooLong(self.max_line));
            }
            self.after_cr = bytes[end] == b'\r';
            let flow = if self.line.is_empty() {
                self.line_done(&bytes[..end], &mut on_message)
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..end]);
                let flow = self.line_done(&line, &mut on_message);
                // Keep the allocation for the next line cut by a chunk's end.
                line.clear();
                self.line = line;
                flow
            };
            bytes = &bytes[end + 1..];
            if flow.is_break() {
                return Ok(flow);
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    fn line_done(
        &mut self,
        line: &[u8],
        on_message: &mut impl FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if line.is_empty() {
            let flow = if self.has_data {
                on_message(Message {
                    event: &self.event,
                    data: &self.data,
                    id: self.last_id.as_deref(),
                })
            } else {
                ControlFlow::Continue(())
            };
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return flow;
        }
        if line[0] == b':' {
            return ControlFlow::Continue(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"id" if !value.contains(&0) => {
                let value: Cow<'_, str> = String::from_utf8_lossy(value);
                match &mut self.last_id {
                    Some(id) => {
                        id.clear();
                        id.push_str(&value);
                    }
                    None => self.last_id = Some(value.into_owned()),
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as the tests keep it.
    #[derive(Debug)]
    struct Owned {
        event: String,
        data: String,
        id: Option<String>,
    }

    fn feed_all(p: &mut Parser, bytes: &[u8], out: &mut Vec<Owned>) -> Result<(), SseError> {
        p.feed(bytes, |m| {
            out.push(Owned {
                event: m.event.to_owned(),
                data: m.text().into_owned(),
                id: m.id.map(str::to_owned),
            });
            ControlFlow::Continue(())
        })
        .map(|_| ())
    }

    fn parse_in_pieces(text: &str, piece: usize) -> Vec<Owned> {
        let mut p = Parser::new(1 << 20);
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(piece) {
            feed_all(&mut p, chunk, &mut out).unwrap();
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
        feed_all(&mut p, b"id: 1\ndata: half", &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(
            feed_all(&mut p, &[b'x'; 20], &mut out),
            Err(SseError::LineTooLong(16))
        );
        // A line cut by chunks is one line, and a line of exactly the limit is accepted.
        let mut p = Parser::new(16);
        feed_all(&mut p, b"data: 0123", &mut out).unwrap();
        feed_all(&mut p, b"456789\n\n", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, "0123456789");
    }

    #[test]
    fn a_break_stops_at_that_message() {
        let mut p = Parser::new(1024);
        let mut seen = Vec::new();
        let flow = p
            .feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n", |m| {
                seen.push(m.id.map(str::to_owned));
                ControlFlow::Break(())
            })
            .unwrap();
        assert!(flow.is_break());
        assert_eq!(seen, [Some("1".to_owned())]);
    }
}
