//! Durable consumers over the API (docs/api.md, "Durable consumers"): `POST /consumers`,
//! `GET /consumers`, `GET|DELETE /consumers/{name}`, `GET /consumers/{name}/next` and
//! `POST /consumers/{name}/ack`.
//!
//! What is replicated goes through Raft on the leader (a follower forwards once, like
//! `/retention` writes) and is answered once applied there: a consumer's creation, its
//! deletion, and each move of its acknowledged position. What is out for delivery is this
//! node's, in memory ([`delivery`]): `next` is served by whichever node is asked, from its own
//! applied state, and a listed ack is resolved on the node that delivered the events into the
//! cumulative position it proposes.

pub mod delivery;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use api_types::{
    consumer_name_problem, parse_duration, AckRequest, AckResponse, ConsumerInfo, ConsumerList,
    ConsumerRequest, Cursor, TopicPattern,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use raft_store::{
    Command, ConsumerAck, ConsumerDefinition, ConsumerFrom, ConsumerRecord, Control,
    CreateConsumer, LamportStamp, StoreError, StoreReader, StoredEvent, MAX_CONSUMERS,
};
use serde::Deserialize;

use self::delivery::Tracker;
use super::admin::on_leader;
use super::consistency::blocking;
use super::error::ApiError;
use super::forward::is_forwarded;
use super::read::push_event;
use super::state::AppState;
use super::subscribe::select::{Batch, Selection};

pub use self::delivery::Deliveries;

/// How long a change may wait to be committed and applied.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default and bounds of `ack_wait`.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
const MIN_ACK_WAIT: Duration = Duration::from_millis(100);
const MAX_ACK_WAIT: Duration = Duration::from_secs(3600);
/// Default and bounds of `max_ack_pending`.
const DEFAULT_MAX_ACK_PENDING: u32 = 1000;
const MAX_MAX_ACK_PENDING: u32 = 10_000;
/// Default and largest `batch` of `next`.
const DEFAULT_BATCH: usize = 100;
const MAX_BATCH: usize = 1000;
/// Bytes of events one `next` answers, at most (the first event always goes, whatever its
/// size).
pub const MAX_NEXT_BYTES: usize = 1024 * 1024;
/// Longest `wait` of `next` (also kept below the client routes' total time).
const MAX_WAIT: Duration = Duration::from_secs(20);
/// Most cursors one listed ack may carry.
const MAX_LISTED_ACKS: usize = 10_000;
/// Lag counting caps: events of one topic, events examined for a pattern.
const LAG_CAP_TOPIC: usize = 1_000_000;
const LAG_CAP_SCAN: usize = 10_000;

/// `POST /consumers`.
pub async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A body past the route's limit is a JSON 413 like every other error.
    let body = body?;
    let (name, definition) = parse_request(&body)?;
    if let Some(r) = on_leader(&st, &headers, Method::POST, "/consumers", body).await? {
        return Ok(r);
    }
    let (existing, position) = {
        let name = name.clone();
        blocking(&st.reader, move |r| r.consumer(&name)).await?
    };
    if let Some(record) = existing {
        return if record.definition == definition {
            info_response(&st, &name, record, StatusCode::OK).await
        } else {
            Err(conflict(&name))
        };
    }
    let count = blocking(&st.reader, |r| r.consumers().map(|c| c.len())).await?;
    if count >= MAX_CONSUMERS {
        return Err(ApiError::conflict(format!(
            "the cluster holds its limit of {MAX_CONSUMERS} consumers; delete one first"
        )));
    }
    let start = match &definition.from {
        ConsumerFrom::Earliest | ConsumerFrom::Time(_) => LamportStamp(0),
        ConsumerFrom::Latest => position.clock,
        ConsumerFrom::Cursor(c) if *c > position.clock.0 => {
            return Err(ApiError::bad_request(format!(
                "from={c}: no event has that cursor yet (the last is {})",
                position.clock
            )))
        }
        ConsumerFrom::Cursor(c) => LamportStamp(*c),
    };
    let index = propose(
        &st,
        Control::CreateConsumer(CreateConsumer {
            name: name.clone(),
            definition: definition.clone(),
            start,
        }),
    )
    .await?;
    let (record, _) = {
        let name = name.clone();
        blocking(&st.reader, move |r| r.consumer(&name)).await?
    };
    match record {
        Some(record) if record.definition == definition => {
            // Ours, or the same one created by a concurrent request.
            let status = if record.generation == index {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            info_response(&st, &name, record, status).await
        }
        Some(_) => Err(conflict(&name)),
        None => Err(ApiError::conflict(format!(
            "consumer {name:?} was not created: deleted at once, or the limit of \
             {MAX_CONSUMERS} consumers was reached"
        ))),
    }
}

fn conflict(name: &str) -> ApiError {
    ApiError::conflict(format!(
        "consumer {name:?} exists with another definition; delete it first or pick another name"
    ))
}

/// `GET /consumers`: every consumer, from this node's applied state.
pub async fn list(State(st): State<AppState>) -> Result<Response, ApiError> {
    let records = blocking(&st.reader, |r| r.consumers()).await?;
    let mut consumers = Vec::with_capacity(records.len());
    for (name, record) in records {
        consumers.push(info(&st, &name, record).await?);
    }
    json(StatusCode::OK, &ConsumerList { consumers })
}

/// `GET /consumers/{name}`.
pub async fn get(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let record = find(&st, &name).await?;
    info_response(&st, &name, record, StatusCode::OK).await
}

/// `DELETE /consumers/{name}`: 204 once applied on the leader.
pub async fn delete(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let path = format!("/consumers/{name}");
    if let Some(r) = on_leader(&st, &headers, Method::DELETE, &path, Bytes::new()).await? {
        if r.status().is_success() {
            st.deliveries.remove(&name);
        }
        return Ok(r);
    }
    find(&st, &name).await?;
    propose(&st, Control::DeleteConsumer { name: name.clone() }).await?;
    st.deliveries.remove(&name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query of `next`.
#[derive(Debug, Deserialize)]
pub struct NextQuery {
    batch: Option<String>,
    wait: Option<String>,
}

/// `GET /consumers/{name}/next?batch=N&wait=DURATION`: up to `batch` events after the
/// consumer's position, waiting up to `wait` for the first.
pub async fn next(
    State(st): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<NextQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let batch = match q.batch.as_deref() {
        None => DEFAULT_BATCH,
        Some(b) => match b.parse::<usize>() {
            Ok(n) if (1..=MAX_BATCH).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "batch={b:?}: a whole number from 1 to {MAX_BATCH}"
                )))
            }
        },
    };
    let wait = match q.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => {
            let d = parse_duration(w).map_err(|e| ApiError::bad_request(format!("wait: {e}")))?;
            if d > MAX_WAIT {
                return Err(ApiError::bad_request(format!(
                    "wait={w}: at most {} s",
                    MAX_WAIT.as_secs()
                )));
            }
            // A long poll must end before the client routes' total time does.
            d.min(
                st.limits
                    .client_request_timeout
                    .saturating_sub(Duration::from_secs(2)),
            )
        }
    };
    let record = find(&st, &name).await?;
    let selection = selection_of(&record.definition)?;
    let seek = seek_time(&record)?;
    let ack_wait = Duration::from_millis(record.definition.ack_wait_ms);
    let max_pending = record.definition.max_ack_pending as usize;
    let tracker = st.deliveries.tracker(
        &name,
        record.generation,
        Cursor(record.acked.0),
        seek.is_some() && record.acked == record.start,
    );
    let deadline = Instant::now() + wait;
    let mut applied = st.reader.watch_applied();
    loop {
        let seen = *applied.borrow_and_update();
        // The record as applied now: a newer ack moves the tracker up; a deletion ends it.
        let (record, _) = {
            let name = name.clone();
            blocking(&st.reader, move |r| r.consumer(&name)).await?
        };
        let generation = tracker.lock().await.generation;
        let record = match record {
            Some(r) if r.generation == generation => r,
            _ => return Err(unknown(&name)),
        };
        let mut t = tracker.lock().await;
        t.sync(Cursor(record.acked.0));
        let now = Instant::now();
        let seek_again = seek.is_some() && t.acked == Cursor(record.start.0);
        if t.expire(now, seek_again) {
            st.metrics.consumer_redeliveries.inc();
        }
        let room = max_pending.saturating_sub(t.outstanding()).min(batch);
        let mut out = Vec::new();
        let mut trimmed = Vec::new();
        if room > 0 {
            out = fill(
                &st.reader,
                &selection,
                seek,
                &mut t,
                room,
                ack_wait,
                &mut trimmed,
            )
            .await?;
        }
        if !out.is_empty() || Instant::now() >= deadline {
            st.metrics.consumer_deliveries.inc_by(out.len() as u64);
            let body = render_batch(&name, t.acked, &out, &trimmed, st.id);
            return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        // Nothing to deliver yet: wait for an apply (new events or a new ack), the oldest
        // outstanding event's deadline, or the end of the wait.
        let until = t.next_deadline().map_or(deadline, |d| d.min(deadline));
        drop(t);
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return Err(ApiError::unavailable("the store closed"));
                }
                if *applied.borrow() == seen {
                    continue;
                }
            }
            () = tokio::time::sleep_until(until.into()) => {}
        }
    }
}

/// Reads and delivers up to `room` events after the tracker's read position: several store
/// reads when the selection matches little, bounded by the bytes of one answer.
async fn fill(
    reader: &StoreReader,
    selection: &Selection,
    seek: Option<chrono::DateTime<chrono::FixedOffset>>,
    t: &mut Tracker,
    room: usize,
    ack_wait: Duration,
    trimmed: &mut Vec<api_types::TrimmedTopic>,
) -> Result<Vec<(StoredEvent, Cursor, u32)>, ApiError> {
    let mut out: Vec<(StoredEvent, Cursor, u32)> = Vec::new();
    let mut bytes = 0usize;
    // A pattern that matches rarely is read in several store calls; a few per answer.
    for _ in 0..8 {
        let (batch, gaps) = read_after(reader, selection, t.read_to).await?;
        for (topic, earliest) in gaps {
            if !trimmed.iter().any(|g| g.topic == topic) {
                trimmed.push(api_types::TrimmedTopic { topic, earliest });
            }
        }
        let Batch {
            events,
            position,
            more,
        } = batch;
        let now = Instant::now();
        let mut stopped = false;
        for event in events {
            if out.len() >= room || (bytes >= MAX_NEXT_BYTES && !out.is_empty()) {
                stopped = true;
                break;
            }
            let cursor = Cursor(event.lamport.0);
            if t.seeking {
                let at_or_after = seek.is_some_and(|s| {
                    DateTime::parse_from_rfc3339(&event.event.timestamp).is_ok_and(|ts| ts >= s)
                });
                if !at_or_after {
                    t.read_to = t.read_to.max(cursor);
                    continue;
                }
                t.seeking = false;
            }
            if let Some(deliveries) = t.deliver(cursor, now, ack_wait) {
                bytes = bytes.saturating_add(event.event.approx_bytes());
                out.push((event, cursor, deliveries));
            }
        }
        if stopped {
            break;
        }
        // Past events that were read and not selected.
        t.read_to = t.read_to.max(position);
        if !more || out.len() >= room || bytes >= MAX_NEXT_BYTES {
            break;
        }
    }
    Ok(out)
}

/// The next store batch after `after`; a single topic read below what retention keeps
/// continues from the earliest event held. Also names every matching topic with trimmed
/// events after `after` (what the reader skipped, never silently).
async fn read_after(
    reader: &StoreReader,
    selection: &Selection,
    after: Cursor,
) -> Result<(Batch, Vec<(String, Cursor)>), ApiError> {
    let selection = selection.clone();
    blocking(reader, move |r| {
        let gaps: Vec<(String, Cursor)> = r
            .retention()?
            .earliest_cursors
            .into_iter()
            .filter(|(topic, earliest)| earliest.0 > after.0 && selection.pattern.matches(topic))
            .map(|(topic, earliest)| (topic, Cursor(earliest.0)))
            .collect();
        // Past trims: the gaps above name them, and a pattern's other topics are not skipped.
        match selection.read_past_trims(r, after) {
            Err(StoreError::Trimmed { earliest, .. }) => {
                Ok((selection.read_past_trims(r, Cursor(earliest))?, gaps))
            }
            other => Ok((other?, gaps)),
        }
    })
    .await
}

/// `POST /consumers/{name}/ack` with `{"cursor": C}` or `{"cursors": [...]}`: answered once
/// the new position is applied on the leader.
pub async fn ack(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A body past the route's limit is a JSON 413 like every other error.
    let body = body?;
    check_name(&name)?;
    let request = parse_ack(&body)?;
    let (record, position) = {
        let name = name.clone();
        blocking(&st.reader, move |r| r.consumer(&name)).await?
    };
    let record = record.ok_or_else(|| unknown(&name))?;
    let forwarded = is_forwarded(&headers);
    // The position to propose: a cumulative cursor as given; listed cursors resolved against
    // what this node delivered (only it knows).
    let target = match (&request.cursor, &request.cursors) {
        (Some(c), None) => {
            if c.0 > position.clock.0 {
                return Err(ApiError::bad_request(format!(
                    "cursor {c} is beyond the last event stored ({}): nothing to acknowledge",
                    position.clock
                )));
            }
            if !forwarded {
                if let Some(tracker) = st.deliveries.existing(&name) {
                    let t = tracker.lock().await;
                    if t.generation == record.generation && *c > t.read_to && c.0 > record.acked.0 {
                        return Err(ApiError::bad_request(format!(
                            "cursor {c} is beyond what this node delivered to consumer \
                             {name:?} (up to {})",
                            t.read_to
                        )));
                    }
                }
            }
            *c
        }
        (None, Some(list)) => {
            let tracker = st
                .deliveries
                .existing(&name)
                .ok_or_else(|| not_delivered_here(&name))?;
            let mut t = tracker.lock().await;
            if t.generation != record.generation {
                return Err(not_delivered_here(&name));
            }
            t.sync(Cursor(record.acked.0));
            t.ack_listed(list).map_err(|c| {
                ApiError::bad_request(format!(
                    "cursor {c} was not delivered to consumer {name:?} by this node"
                ))
            })?
        }
        _ => {
            return Err(ApiError::bad_request(
                "the body must be {\"cursor\": C} or {\"cursors\": [C, ...]}",
            ))
        }
    };
    let acked = if target.0 > record.acked.0 {
        let body = serde_json::to_vec(&AckRequest {
            cursor: Some(target),
            cursors: None,
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let path = format!("/consumers/{name}/ack");
        match on_leader(&st, &headers, Method::POST, &path, body.into()).await? {
            Some(r) if !r.status().is_success() => return Ok(r),
            Some(r) => {
                let bytes = axum::body::to_bytes(r.into_body(), 64 * 1024)
                    .await
                    .map_err(|e| ApiError::unavailable(format!("the leader's answer: {e}")))?;
                let answer: AckResponse = serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::unavailable(format!("the leader's answer: {e}")))?;
                answer.acked
            }
            None => {
                propose(
                    &st,
                    Control::Ack(ConsumerAck {
                        name: name.clone(),
                        generation: record.generation,
                        cursor: LamportStamp(target.0),
                    }),
                )
                .await?;
                let (after, _) = {
                    let name = name.clone();
                    blocking(&st.reader, move |r| r.consumer(&name)).await?
                };
                match after {
                    Some(r) if r.generation == record.generation => Cursor(r.acked.0),
                    _ => return Err(unknown(&name)),
                }
            }
        }
    } else {
        Cursor(record.acked.0)
    };
    let pending = match st.deliveries.existing(&name) {
        Some(tracker) => {
            let mut t = tracker.lock().await;
            if t.generation == record.generation {
                t.sync(acked);
            }
            t.pending.len() as u64
        }
        None => 0,
    };
    json(
        StatusCode::OK,
        &AckResponse {
            consumer: name,
            acked,
            pending,
        },
    )
}

fn not_delivered_here(name: &str) -> ApiError {
    ApiError::conflict(format!(
        "this node delivered nothing to consumer {name:?} that is not acknowledged (after a \
         failover or restart): listed acks go to the node that delivered; a cumulative \
         {{\"cursor\": C}} works on any node"
    ))
}

/// Proposes a consumer command on this node (the leader) and waits until it is applied;
/// returns its log index.
async fn propose(st: &AppState, control: Control) -> Result<u64, ApiError> {
    let write = st.raft.client_write(Command::Control(control));
    match tokio::time::timeout(CHANGE_TIMEOUT, write).await {
        Ok(Ok(r)) => Ok(r.log_id.index),
        Ok(Err(e)) => Err(ApiError::unavailable(format!(
            "the change was not committed ({e}); retry"
        ))),
        Err(_) => Err(ApiError::unavailable(format!(
            "the change was not applied within {} s; it may still be: check GET /consumers",
            CHANGE_TIMEOUT.as_secs()
        ))),
    }
}

/// The record of `name` on this node, or 404 (400 for a name that cannot exist).
async fn find(st: &AppState, name: &str) -> Result<ConsumerRecord, ApiError> {
    check_name(name)?;
    let (record, _) = {
        let name = name.to_owned();
        blocking(&st.reader, move |r| r.consumer(&name)).await?
    };
    record.ok_or_else(|| unknown(name))
}

fn unknown(name: &str) -> ApiError {
    ApiError::not_found(format!("no consumer named {name:?}"))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    match consumer_name_problem(name) {
        Some(why) => Err(ApiError::bad_request(why)),
        None => Ok(()),
    }
}

/// The body of `POST /consumers`, checked whole: any problem is a 400 and nothing is
/// proposed.
fn parse_request(body: &[u8]) -> Result<(String, ConsumerDefinition), ApiError> {
    let bad = |e: serde_json::Error| {
        ApiError::bad_request(format!(
            "the body must be {{\"name\": ..., \"topic\": PATTERN, \"source\"?, \"from\"?, \
             \"ack_wait\"?, \"max_ack_pending\"?}}: {e}"
        ))
    };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(bad)?;
    let r: ConsumerRequest =
        serde_json::from_value(serde_json::Value::Object(object)).map_err(bad)?;
    check_name(&r.name)?;
    TopicPattern::parse(&r.topic).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(s) = &r.source {
        let n = s.chars().count();
        if n == 0 || n > super::validate::MAX_SOURCE {
            return Err(ApiError::bad_request(format!(
                "source: 1 to {} characters",
                super::validate::MAX_SOURCE
            )));
        }
    }
    let from = match r.from.as_deref() {
        None | Some("earliest") => ConsumerFrom::Earliest,
        Some("latest") => ConsumerFrom::Latest,
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            let c: Cursor = s
                .parse()
                .map_err(|e| ApiError::bad_request(format!("from: {e}")))?;
            ConsumerFrom::Cursor(c.0)
        }
        Some(s) => {
            DateTime::parse_from_rfc3339(s).map_err(|_| {
                ApiError::bad_request(format!(
                    "from={s:?}: expected earliest, latest, a cursor (decimal) or an RFC 3339 time"
                ))
            })?;
            ConsumerFrom::Time(s.to_owned())
        }
    };
    let ack_wait = match r.ack_wait.as_deref() {
        None => DEFAULT_ACK_WAIT,
        Some(w) => {
            parse_duration(w).map_err(|e| ApiError::bad_request(format!("ack_wait: {e}")))?
        }
    };
    if !(MIN_ACK_WAIT..=MAX_ACK_WAIT).contains(&ack_wait) {
        return Err(ApiError::bad_request(format!(
            "ack_wait: from {} ms to {} s",
            MIN_ACK_WAIT.as_millis(),
            MAX_ACK_WAIT.as_secs()
        )));
    }
    let max_ack_pending = r.max_ack_pending.unwrap_or(DEFAULT_MAX_ACK_PENDING);
    if !(1..=MAX_MAX_ACK_PENDING).contains(&max_ack_pending) {
        return Err(ApiError::bad_request(format!(
            "max_ack_pending: from 1 to {MAX_MAX_ACK_PENDING}"
        )));
    }
    Ok((
        r.name,
        ConsumerDefinition {
            topic: r.topic,
            source: r.source,
            from,
            ack_wait_ms: u64::try_from(ack_wait.as_millis()).unwrap_or(u64::MAX),
            max_ack_pending,
        },
    ))
}

/// The body of an ack: exactly one of `cursor` and `cursors`.
fn parse_ack(body: &[u8]) -> Result<AckRequest, ApiError> {
    let bad = |e: String| {
        ApiError::bad_request(format!(
            "the body must be {{\"cursor\": C}} or {{\"cursors\": [C, ...]}}: {e}"
        ))
    };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let r: AckRequest = serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| bad(e.to_string()))?;
    match (&r.cursor, &r.cursors) {
        (Some(_), None) => Ok(r),
        (None, Some(list)) if !list.is_empty() && list.len() <= MAX_LISTED_ACKS => Ok(r),
        (None, Some(_)) => Err(bad(format!("1 to {MAX_LISTED_ACKS} cursors"))),
        _ => Err(bad("exactly one of them".into())),
    }
}

/// What a definition selects.
fn selection_of(def: &ConsumerDefinition) -> Result<Selection, ApiError> {
    Ok(Selection {
        pattern: TopicPattern::parse(&def.topic)
            .map_err(|e| ApiError::internal(format!("stored consumer: {e}")))?,
        source: def.source.clone(),
    })
}

fn seek_time(
    record: &ConsumerRecord,
) -> Result<Option<chrono::DateTime<chrono::FixedOffset>>, ApiError> {
    match &record.definition.from {
        ConsumerFrom::Time(t) => DateTime::parse_from_rfc3339(t)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("stored consumer's from: {e}"))),
        _ => Ok(None),
    }
}

fn from_text(from: &ConsumerFrom) -> String {
    match from {
        ConsumerFrom::Earliest => "earliest".into(),
        ConsumerFrom::Latest => "latest".into(),
        ConsumerFrom::Cursor(c) => c.to_string(),
        ConsumerFrom::Time(t) => t.clone(),
    }
}

/// Selected events stored after `acked`, counted up to a cap; and whether the cap stopped it.
pub fn lag(reader: &StoreReader, record: &ConsumerRecord) -> Result<(u64, bool), StoreError> {
    let Ok(pattern) = TopicPattern::parse(&record.definition.topic) else {
        return Ok((0, false));
    };
    match (pattern.exact_topic(), &record.definition.source) {
        (Some(topic), None) => {
            let n = reader.count_topic_after(topic, record.acked, LAG_CAP_TOPIC)?;
            Ok((n as u64, n >= LAG_CAP_TOPIC))
        }
        _ => {
            let source = record.definition.source.clone();
            let scan = reader.events_matching(
                Some(record.acked),
                |e| pattern.matches(&e.topic) && source.as_deref().is_none_or(|s| s == e.source),
                LAG_CAP_SCAN,
                usize::MAX,
                LAG_CAP_SCAN,
            )?;
            Ok((scan.events.len() as u64, scan.more))
        }
    }
}

async fn info(st: &AppState, name: &str, record: ConsumerRecord) -> Result<ConsumerInfo, ApiError> {
    let pending = match st.deliveries.existing(name) {
        Some(tracker) => {
            let t = tracker.lock().await;
            if t.generation == record.generation {
                t.pending
                    .range(Cursor(record.acked.0.saturating_add(1))..)
                    .count() as u64
            } else {
                0
            }
        }
        None => 0,
    };
    let (lag_events, lag_capped) = {
        let record = record.clone();
        blocking(&st.reader, move |r| lag(r, &record)).await?
    };
    let def = record.definition;
    Ok(ConsumerInfo {
        name: name.to_owned(),
        topic: def.topic,
        source: def.source,
        from: from_text(&def.from),
        ack_wait_ms: def.ack_wait_ms,
        max_ack_pending: def.max_ack_pending,
        start: Cursor(record.start.0),
        acked: Cursor(record.acked.0),
        pending,
        lag_events,
        lag_capped,
        served_by: st.id,
    })
}

async fn info_response(
    st: &AppState,
    name: &str,
    record: ConsumerRecord,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let body = info(st, name, record).await?;
    json(status, &body)
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Result<Response, ApiError> {
    let bytes = serde_json::to_vec(body).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// A `next` answer ([`api_types::NextBatch`]), written by hand so each payload goes out as
/// the JSON text it is stored as.
fn render_batch(
    name: &str,
    acked: Cursor,
    events: &[(StoredEvent, Cursor, u32)],
    trimmed: &[api_types::TrimmedTopic],
    served_by: raft_store::NodeId,
) -> Vec<u8> {
    let size: usize = events
        .iter()
        .map(|(e, _, _)| e.event.approx_bytes() + 200)
        .sum();
    let mut out = Vec::with_capacity(size + 128);
    out.extend_from_slice(b"{\"consumer\":");
    push_json(&mut out, name);
    out.extend_from_slice(b",\"acked\":");
    push_json(&mut out, &acked);
    out.extend_from_slice(b",\"events\":[");
    for (i, (event, cursor, deliveries)) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"cursor\":");
        push_json(&mut out, cursor);
        out.extend_from_slice(b",\"deliveries\":");
        push_json(&mut out, deliveries);
        out.extend_from_slice(b",\"event\":");
        push_event(&mut out, event);
        out.push(b'}');
    }
    out.push(b']');
    if !trimmed.is_empty() {
        out.extend_from_slice(b",\"trimmed\":");
        push_json(&mut out, trimmed);
    }
    out.extend_from_slice(b",\"served_by\":");
    push_json(&mut out, &served_by);
    out.push(b'}');
    out
}

fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// Per consumer: acknowledged cursor and lag, for `/metrics` and `/stats` (blocking).
pub fn sample(reader: &StoreReader) -> Option<BTreeMap<String, (u64, u64)>> {
    let records = reader.consumers().ok()?;
    Some(
        records
            .into_iter()
            .map(|(name, record)| {
                let lag = lag(reader, &record).map_or(0, |(n, _)| n);
                (name, (record.acked.0, lag))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_creation_body_is_checked_whole() {
        let (name, def) = parse_request(
            br#"{"name":"billing","topic":"logs.>","from":"latest","ack_wait":"5s","max_ack_pending":7}"#,
        )
        .unwrap();
        assert_eq!(name, "billing");
        assert_eq!(def.from, ConsumerFrom::Latest);
        assert_eq!((def.ack_wait_ms, def.max_ack_pending), (5000, 7));
        let (_, def) = parse_request(br#"{"name":"b","topic":"t"}"#).unwrap();
        assert_eq!(def.from, ConsumerFrom::Earliest);
        assert_eq!(def.ack_wait_ms, 30_000);
        for bad in [
            &br#"{"name":"a b","topic":"t"}"#[..],
            br#"{"name":"","topic":"t"}"#,
            br#"{"name":"b","topic":"logs.>.x"}"#,
            br#"{"name":"b"}"#,
            br#"{"name":"b","topic":"t","from":"yesterday"}"#,
            br#"{"name":"b","topic":"t","ack_wait":"1ms"}"#,
            br#"{"name":"b","topic":"t","ack_wait":"2h"}"#,
            br#"{"name":"b","topic":"t","max_ack_pending":0}"#,
            br#"{"name":"b","topic":"t","extra":1}"#,
            br#"["b","t"]"#,
            b"",
        ] {
            let e = parse_request(bad).unwrap_err();
            assert_eq!(
                e.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_ack_is_one_cursor_or_a_list() {
        assert_eq!(
            parse_ack(br#"{"cursor":5}"#).unwrap().cursor,
            Some(Cursor(5))
        );
        assert!(parse_ack(br#"{"cursors":[1,2]}"#).is_ok());
        for bad in [
            &br#"{}"#[..],
            br#"{"cursor":5,"cursors":[1]}"#,
            br#"{"cursors":[]}"#,
            br#"{"cursor":-1}"#,
            br#"{"cursor":"5"}"#,
            br#"[5]"#,
        ] {
            assert!(parse_ack(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_rendered_batch_reads_as_the_api_type() {
        let event = StoredEvent {
            event: raft_store::Event {
                topic: "t".into(),
                event_id: "e".into(),
                timestamp: "2024-01-01T00:00:00Z".into(),
                source: "s".into(),
                payload: r#"{"a":1}"#.into(),
                seq: Some(3),
                lamport: None,
            },
            lamport: LamportStamp(9),
            log_index: 4,
        };
        let trimmed = vec![api_types::TrimmedTopic {
            topic: "t".into(),
            earliest: Cursor(2),
        }];
        let body = render_batch("c", Cursor(1), &[(event, Cursor(9), 2)], &trimmed, 3);
        let batch: api_types::NextBatch<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(batch.consumer, "c");
        assert_eq!(batch.acked, Cursor(1));
        assert_eq!(batch.events[0].cursor, Cursor(9));
        assert_eq!(batch.events[0].deliveries, 2);
        assert_eq!(batch.events[0].event.payload["a"], 1);
        assert_eq!(batch.trimmed, trimmed);
        assert_eq!(batch.served_by, 3);
    }
}
