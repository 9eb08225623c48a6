//! Reading a node's `GET /subscribe` stream (Server-Sent Events) in tests: a message at a time,
//! each read bounded in time. Only what the node writes is handled (LF line ends, `event`,
//! `id`, `data` and comment lines); the publisher has the general parser and its own tests.

use std::time::Duration;

/// One message of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// `event:` (empty for an event message).
    pub event: String,
    /// `id:` of this message, if it has one.
    pub id: Option<String>,
    /// The `data:` lines joined with LF.
    pub data: String,
}

/// A subscription's open response, read message by message.
pub struct SseStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// Bytes of the body read so far.
    pub bytes_read: usize,
}

impl SseStream {
    /// Wraps a `200` answer of `/subscribe`.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: Vec::new(),
            bytes_read: 0,
        }
    }

    /// The answer's headers.
    pub fn headers(&self) -> &reqwest::header::HeaderMap {
        self.response.headers()
    }

    /// The next message (comments skipped); `Ok(None)` when the stream ended, `Err` when
    /// nothing complete arrived within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<SseMessage>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = find_blank_line(&self.buffer) {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                if let Some(m) = parse_block(&block[..end]) {
                    return Ok(Some(m));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .map_err(|_| format!("no complete message within {timeout:?}"))?
                .map_err(|e| format!("reading the stream: {e}"))?;
            match chunk {
                Some(c) => {
                    self.bytes_read += c.len();
                    self.buffer.extend_from_slice(&c);
                }
                None => return Ok(None),
            }
        }
    }
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

fn parse_block(block: &[u8]) -> Option<SseMessage> {
    let text = String::from_utf8_lossy(block);
    let mut m = SseMessage::default();
    let mut has_data = false;
    for line in text.split('\n') {
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => m.event = value.to_string(),
            "id" => m.id = Some(value.to_string()),
            "data" => {
                if has_data {
                    m.data.push('\n');
                }
                m.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    has_data.then_some(m)
}
