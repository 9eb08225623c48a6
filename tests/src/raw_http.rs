//! A minimal HTTP/1.1 POST over a raw TCP stream, for oversized bodies.
//!
//! A server may answer 413 as soon as it sees the headers and close the connection while the
//! client is still sending; reqwest then reports only the broken pipe. Here the body is written
//! by one task while another reads, so the early answer is seen.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How the body is framed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` announces the size up front.
    ContentLength,
    /// `Transfer-Encoding: chunked`: the server learns the size only by reading.
    Chunked,
}

/// Sends `body` as a JSON POST to `addr` (host:port) + `path`; returns the status and the body
/// (JSON if it parses, else a string).
pub async fn post(
    addr: &str,
    path: &str,
    body: Vec<u8>,
    framing: Framing,
) -> Result<(u16, Value), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let framing_header = match framing {
        Framing::ContentLength => format!("Content-Length: {}", body.len()),
        Framing::Chunked => "Transfer-Encoding: chunked".to_string(),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         {framing_header}\r\nConnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        // Errors are expected once the server has answered and closed: ignore them.
        let _ = wr.write_all(head.as_bytes()).await;
        match framing {
            Framing::ContentLength => {
                let _ = wr.write_all(&body).await;
            }
            Framing::Chunked => {
                for chunk in body.chunks(64 * 1024) {
                    let framed =
                        [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
                    if wr.write_all(&framed).await.is_err() {
                        return;
                    }
                }
                let _ = wr.write_all(b"0\r\n\r\n").await;
            }
        }
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A reset after the answer arrived still leaves the answer in `raw`.
                Err(_) if !raw.is_empty() => return Ok(()),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    })
    .await;
    writer.abort();
    match read {
        Err(_) => return Err("no answer within 20 s".into()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    parse_response(&raw)
}

/// Parses status line, headers and body (Content-Length, chunked, or until close).
fn parse_response(raw: &[u8]) -> Result<(u16, Value), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("incomplete response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, value))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain =
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(
            parse_response(plain).unwrap(),
            (413, serde_json::json!({"error": "x"}))
        );
        let chunked = b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (400, serde_json::json!({"a": 1}))
        );
    }
}
