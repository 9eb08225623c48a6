//! Live subscriptions: `GET /subscribe?topic=PATTERN[&source=S][&from=...][&consistency=...]`
//! answered as Server-Sent Events from this node's own applied state (docs/api.md,
//! "GET /subscribe"). This file owns the request: parsing and checking it (400 on a bad
//! pattern, cursor or time), the node's limit on open streams (429), the consistency marker
//! (first message and headers), and the response body with its heartbeats; [`select`] owns what
//! to read and [`stream`] the task that feeds one stream. [`Subscriptions`] is the node-wide
//! part: the stream limit, the buffer size, and the stop signal that ends every stream cleanly.

pub mod select;
pub mod sse;
pub mod stream;
pub mod tail;

use std::sync::Arc;
use std::time::Duration;

use api_types::{Cursor, TopicPattern};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use futures::stream::Stream;
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use self::select::Selection;
use self::stream::{Feeder, Item, Start};
use self::tail::Tail;
use super::consistency::{forward_stream, parse_level, plan, provenance, Plan};
use super::error::ApiError;
use super::state::AppState;
use crate::config::SubscribeLimits;
use crate::metrics::Metrics;
use raft_store::StoreReader;

/// The node-wide state of live subscriptions; cheap to clone.
#[derive(Clone)]
pub struct Subscriptions {
    streams: Arc<Semaphore>,
    limits: SubscribeLimits,
    shutdown: CancellationToken,
    /// `None` with `--subscribe-tail-kib 0`.
    tail: Option<Tail>,
}

impl Subscriptions {
    /// Room for `limits.max_streams` streams, with a shared tail over `reader`.
    pub fn new(limits: SubscribeLimits, reader: StoreReader, metrics: Metrics) -> Self {
        let shutdown = CancellationToken::new();
        let tail_bytes = usize::try_from(limits.tail_bytes).unwrap_or(usize::MAX);
        Self {
            streams: Arc::new(Semaphore::new(limits.max_streams.max(1))),
            limits,
            tail: (tail_bytes > 0)
                .then(|| Tail::new(reader, tail_bytes, shutdown.clone(), metrics)),
            shutdown,
        }
    }

    /// Ends every stream (each with its `end` message) and refuses new ones: the node stops.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }
}

/// Query of `/subscribe`.
#[derive(Debug, Deserialize)]
pub struct SubscribeQuery {
    topic: Option<String>,
    source: Option<String>,
    from: Option<String>,
    consistency: Option<String>,
}

/// The SSE header a reconnecting client sends with the `id` of the last message it got.
const LAST_EVENT_ID: &str = "last-event-id";

/// `GET /subscribe`.
pub async fn subscribe(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    q: Result<Query<SubscribeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let pattern = match q.topic.as_deref() {
        None | Some("") => return Err(ApiError::bad_request("topic= (a pattern) is required")),
        Some(t) => TopicPattern::parse(t).map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let source = match q.source {
        Some(s) if s.is_empty() => {
            return Err(ApiError::bad_request(
                "source= must not be empty when given",
            ))
        }
        s => s,
    };
    let start = parse_start(&headers, q.from.as_deref())?;
    let level = parse_level(q.consistency.as_deref())?;
    if st.subscriptions.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("the node is stopping"));
    }
    let Ok(slot) = st.subscriptions.streams.clone().try_acquire_owned() else {
        return Err(ApiError::overloaded(format!(
            "this node serves its limit of {} subscriptions (--max-subscriptions); retry shortly \
             or subscribe on another node",
            st.subscriptions.limits.max_streams
        )));
    };
    // A stream is served from this node's state unless a linearizable one was asked of a
    // follower: that one is the leader's, relayed (one hop, like every linearizable read).
    let linearizable = match level {
        Some(true) => match plan(&st, Some(true), &headers).await? {
            Plan::Forward { id, addr } => {
                let relayed = forward_stream(&st, id, &addr, &uri, &headers).await?;
                return Ok(hold_while_open(relayed, slot));
            }
            Plan::Local { linearizable } => linearizable,
        },
        _ => false,
    };
    let position = *st.reader.watch_applied().borrow();
    let start = match start {
        Requested::Latest => Start::After(select::cursor_of(position.clock)),
        Requested::At(s) => s,
    };
    let provenance = provenance(&st, linearizable, position.index).await;
    let limits = st.subscriptions.limits;
    let budget_kib = u32::try_from(limits.buffer_bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let (tx, rx) = mpsc::unbounded_channel();
    let json =
        serde_json::to_vec(&provenance.marker).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut marker = Vec::with_capacity(json.len() + 32);
    sse::message(&mut marker, Some("consistency"), None, &json);
    // The receiver is still here, so the first message cannot fail to queue.
    let _ = tx.send(Item::Free(marker.into()));
    let feeder = Feeder {
        reader: st.reader.clone(),
        raft: linearizable.then(|| st.raft.clone()),
        confirm_timeout: st.limits.write_timeout,
        selection: Selection { pattern, source },
        start,
        budget: Arc::new(Semaphore::new(budget_kib as usize)),
        budget_kib,
        stall: limits.stall,
        shutdown: st.subscriptions.shutdown.clone(),
        out: tx,
        metrics: st.metrics.clone(),
        tail: st
            .subscriptions
            .tail
            .as_ref()
            .filter(|_| !linearizable)
            .map(|tail| (tail.clone(), tail.follow())),
    };
    let open = st.metrics.subscriptions_open.clone();
    open.inc();
    tokio::spawn(async move {
        feeder.run().await;
        // The stream's slot is free once its feeder is done.
        open.dec();
        drop(slot);
    });
    let mut response =
        axum::body::Body::from_stream(messages(rx, limits.heartbeat)).into_response();
    let h = response.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    super::consistency::insert_provenance(h, &provenance);
    // Proxies must pass each message on at once.
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(response)
}

/// The start a request asked for, before `latest` is resolved against the store.
enum Requested {
    Latest,
    At(Start),
}

/// `Last-Event-ID` (a reconnect) wins over `from=`: a client that reconnects keeps its URL,
/// and must continue after what it already has.
fn parse_start(headers: &HeaderMap, from: Option<&str>) -> Result<Requested, ApiError> {
    if let Some(v) = headers.get(LAST_EVENT_ID) {
        let text = v
            .to_str()
            .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))?
            .trim();
        if !text.is_empty() {
            let cursor: Cursor = text
                .parse()
                .map_err(|e| ApiError::bad_request(format!("Last-Event-ID: {e}")))?;
            return Ok(Requested::At(Start::After(cursor)));
        }
    }
    match from {
        None | Some("") | Some("latest") => Ok(Requested::Latest),
        Some("earliest") => Ok(Requested::At(Start::After(Cursor::START))),
        Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => {
            let cursor: Cursor = s
                .parse()
                .map_err(|e| ApiError::bad_request(format!("from={e}")))?;
            Ok(Requested::At(Start::After(cursor)))
        }
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Requested::At(Start::Time(t)))
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "from={s:?}: expected earliest, latest, a cursor (decimal) or an RFC 3339 time"
                ))
            }),
    }
}

/// The body: the buffered pieces in order, each one HTTP chunk handed to the connection as it
/// is (no copy), releasing its buffer space; a heartbeat comment after `heartbeat` without a
/// piece. A piece is a run of consecutive events' messages (`stream::RUN_BYTES`), and hyper
/// gathers the chunks that are ready into one vectored write. Ends after the feeder's last
/// message (or when it is gone).
fn messages(
    rx: mpsc::UnboundedReceiver<Item>,
    heartbeat: Duration,
) -> impl Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    futures::stream::unfold(rx, move |mut rx| async move {
        let text = match tokio::time::timeout(heartbeat, rx.recv()).await {
            Err(_) => bytes::Bytes::from_static(sse::HEARTBEAT),
            // Its buffer space is free from here on: the connection holds it.
            Ok(item) => match item? {
                Item::Counted(bytes, _permit) => bytes,
                Item::Free(bytes) => bytes,
            },
        };
        Some((Ok(text), rx))
    })
}

/// A relayed stream keeps its slot on this node until its body ends.
fn hold_while_open(response: Response, slot: tokio::sync::OwnedSemaphorePermit) -> Response {
    use futures::StreamExt;
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream();
    let held = futures::stream::unfold((stream, Some(slot)), |(mut stream, slot)| async move {
        let next = stream.next().await?;
        Some((next, (stream, slot)))
    });
    Response::from_parts(parts, axum::body::Body::from_stream(held))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(last: Option<&str>, from: Option<&str>) -> Result<Option<Start>, ApiError> {
        let mut h = HeaderMap::new();
        if let Some(l) = last {
            h.insert(LAST_EVENT_ID, HeaderValue::from_str(l).unwrap());
        }
        parse_start(&h, from).map(|r| match r {
            Requested::Latest => None,
            Requested::At(s) => Some(s),
        })
    }

    #[test]
    fn the_start_comes_from_last_event_id_then_from() {
        assert_eq!(start(None, None).unwrap(), None);
        assert_eq!(start(None, Some("latest")).unwrap(), None);
        assert_eq!(
            start(None, Some("earliest")).unwrap(),
            Some(Start::After(Cursor(0)))
        );
        assert_eq!(
            start(None, Some("42")).unwrap(),
            Some(Start::After(Cursor(42)))
        );
        assert_eq!(
            start(Some("17"), Some("42")).unwrap(),
            Some(Start::After(Cursor(17)))
        );
        assert_eq!(
            start(Some(""), Some("42")).unwrap(),
            Some(Start::After(Cursor(42)))
        );
        let t = DateTime::parse_from_rfc3339("2024-05-01T12:00:00+02:00").unwrap();
        assert_eq!(
            start(None, Some("2024-05-01T12:00:00+02:00")).unwrap(),
            Some(Start::Time(t))
        );
        for bad in [
            "-1",
            "yesterday",
            "18446744073709551616",
            "2024-13-01T00:00:00Z",
        ] {
            let e = start(None, Some(bad)).err().unwrap();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(start(Some("abc"), None).is_err());
    }
}
