//! Reads: `GET /events`, `GET /stats`, `GET /digest` — query parsing, the store reads and
//! the answer bodies. `/stats` and `/digest` are rendered with their [`api_types`] answers;
//! `/events` is written by hand (stored payload text goes out verbatim) and a test parses it
//! into [`api_types::EventsPage`]. Where and how consistently each read is served is decided
//! in [`consistency`](super::consistency).

use api_types::{DedupIndexStats, DigestResponse, ProducerStats, RaftStats, StatsResponse};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use raft_store::LamportStamp;
use serde::{Deserialize, Serialize};

use super::consistency::{
    blocking, forward_read, parse_level, plan, provenance, with_provenance, Plan, Provenance,
};
use super::error::ApiError;
use super::state::AppState;
use crate::raft::leadership::role_name;

/// Largest page of `/events`.
pub const MAX_LIMIT: usize = 1000;
/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most bytes of events in one page of `/events` (counted as the events' text: topic, id,
/// timestamp, source, payload, plus 24 per event); the page ends with the event that reaches
/// it, and `next` continues right after that event. 1,000 events of 64 KiB would otherwise
/// be a 64 MiB answer, copied again by a follower that forwards it.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Query of `/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    topic: Option<String>,
    source: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    consistency: Option<String>,
}

/// `GET /events?topic=T|source=S&after=CURSOR&limit=N&consistency=...`
pub async fn events(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let by = match (q.topic, q.source) {
        (Some(t), None) if !t.is_empty() => By::Topic(t),
        (None, Some(s)) if !s.is_empty() => By::Source(s),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of topic= or source=",
            ))
        }
    };
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(c) => Some(LamportStamp(c.parse().map_err(|_| {
            ApiError::bad_request(format!("after={c:?} is not a cursor from a previous page"))
        })?)),
    };
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be an integer from 1 to {MAX_LIMIT}"
                )))
            }
        },
    };
    let linearizable = match plan(&st, parse_level(q.consistency.as_deref())?, &headers).await? {
        Plan::Forward { id, addr } => return forward_read(&st, id, &addr, &uri, &headers).await,
        Plan::Local { linearizable } => linearizable,
    };
    let page = blocking(&st.reader, move |r| match &by {
        By::Topic(t) => r.events_by_topic_within(t, after, limit, MAX_PAGE_BYTES),
        By::Source(s) => r.events_by_source_within(s, after, limit, MAX_PAGE_BYTES),
    })
    .await?;
    // The marker describes the very view the page was read from.
    let applied = page.as_of.map_or(0, |l| l.index);
    let p = provenance(&st, linearizable, applied).await;
    Ok(with_provenance(render_events(&page, &p), &p))
}

enum By {
    Topic(String),
    Source(String),
}

/// Writes the `/events` body ([`api_types::EventsPage`]) by hand so stored payload text is
/// emitted verbatim.
fn render_events(page: &raft_store::EventPage, p: &Provenance) -> Vec<u8> {
    let approx: usize = page
        .events
        .iter()
        .map(|e| e.event.payload.len() + 200)
        .sum();
    let mut out = Vec::with_capacity(approx + 256);
    out.extend_from_slice(b"{\"events\":[");
    for (i, se) in page.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_event(&mut out, se);
    }
    out.extend_from_slice(b"],\"next\":");
    push_json(&mut out, &page.next.map(|n| n.0.to_string()));
    out.extend_from_slice(b",\"consistency\":");
    push_json(&mut out, &p.marker);
    out.push(b'}');
    out
}

/// Appends one stored event as `/events` returns it ([`api_types::StoredEvent`]); also the
/// `data:` of a subscription's messages, so both speak the same shape.
pub(crate) fn push_event(out: &mut Vec<u8>, se: &raft_store::StoredEvent) {
    let e = &se.event;
    out.extend_from_slice(b"{\"topic\":");
    push_json(out, &e.topic);
    out.extend_from_slice(b",\"event_id\":");
    push_json(out, &e.event_id);
    out.extend_from_slice(b",\"timestamp\":");
    push_json(out, &e.timestamp);
    out.extend_from_slice(b",\"source\":");
    push_json(out, &e.source);
    out.extend_from_slice(b",\"payload\":");
    // Validated JSON text at publish time, stored verbatim.
    out.extend_from_slice(e.payload.as_bytes());
    out.extend_from_slice(b",\"seq\":");
    push_json(out, &e.seq);
    out.extend_from_slice(b",\"producer_lamport\":");
    push_json(out, &e.lamport);
    out.extend_from_slice(b",\"lamport\":");
    push_json(out, &se.lamport.0);
    out.extend_from_slice(b",\"log_index\":");
    push_json(out, &se.log_index);
    out.push(b'}');
}

fn push_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing plain data to a Vec cannot fail; keep the output well-formed regardless.
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// Query of `/stats` and `/digest`.
#[derive(Debug, Deserialize)]
pub struct LevelQuery {
    pub(crate) consistency: Option<String>,
}

/// A producer's counters as `/stats` reports them. Every field is named, so a counter added
/// to the store does not compile until the answer says whether it shows it.
fn producer_stats(p: raft_store::ProducerStats) -> ProducerStats {
    let raft_store::ProducerStats {
        events,
        last_seq,
        gaps,
        out_of_order,
        last_lamport,
    } = p;
    ProducerStats {
        events,
        last_seq,
        gaps,
        out_of_order,
        last_lamport: api_types::LamportStamp(last_lamport.0),
    }
}

/// `GET /stats[?consistency=...]`
pub async fn stats(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    q: Result<Query<LevelQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let linearizable = match plan(&st, parse_level(q.consistency.as_deref())?, &headers).await? {
        Plan::Forward { id, addr } => return forward_read(&st, id, &addr, &uri, &headers).await,
        Plan::Local { linearizable } => linearizable,
    };
    let (body, p) = local_stats(&st, linearizable).await?;
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(with_provenance(bytes, &p))
}

/// This node's own `/stats` answer and its provenance (`linearizable` when the read point was
/// confirmed by the caller).
pub(crate) async fn local_stats(
    st: &AppState,
    linearizable: bool,
) -> Result<(StatsResponse, super::consistency::Provenance), ApiError> {
    let s = blocking(&st.reader, |r| r.stats()).await?;
    let applied = s.last_applied.map_or(0, |l| l.index);
    let p = provenance(st, linearizable, applied).await;
    let committed = st
        .raft
        .with_raft_state(|s| s.committed.map(|c| c.index))
        .await
        .ok()
        .flatten();
    let (role, raft) = {
        let mx = st.raft.metrics();
        let mx = mx.borrow();
        (
            role_name(mx.state),
            RaftStats {
                term: mx.current_term,
                last_log_index: mx.last_log_index,
                committed_index: committed,
                applied_index: mx.last_applied.map(|l| l.index),
                snapshot_index: mx.snapshot.map(|l| l.index),
                purged_index: mx.purged.map(|l| l.index),
            },
        )
    };
    let body = StatsResponse {
        received: s.counters.received,
        unique_processed: s.counters.unique_processed,
        duplicate_dropped: s.counters.duplicate_dropped,
        topics: s.topic_counts.keys().cloned().collect(),
        uptime_seconds: st.started.elapsed().as_secs(),
        queue_size: st.batcher.queued_events() as u64,
        node_id: st.id,
        role: role.to_owned(),
        leader_id: p.marker.leader_id,
        topic_counts: s.topic_counts,
        producers: s
            .producers
            .into_iter()
            .map(|(source, stats)| (source, producer_stats(stats)))
            .collect(),
        raft,
        stored: s.digest.count,
        stored_bytes: s.stored_bytes,
        trimmed_events: s.trimmed.events,
        trimmed_bytes: s.trimmed.bytes,
        dedup_window: api_types::describe_dedup_window(s.dedup_window.window_ms),
        dedup_window_ms: s.dedup_window.window_ms,
        dedup_tombstones: s.dedup_window.tombstones,
        duplicates_of_trimmed: s.dedup_window.duplicates_of_trimmed,
        dedup: dedup_stats(st.reader.dedup_figures()),
        digest: s.digest.hex(),
        consumers: s
            .consumers
            .into_iter()
            .map(|(name, acked)| (name, api_types::Cursor(acked.0)))
            .collect(),
        consistency: p.marker.clone(),
    };
    Ok((body, p))
}

fn dedup_stats(f: raft_store::DedupFigures) -> DedupIndexStats {
    DedupIndexStats {
        hot_entries: f.hot_entries,
        hot_bytes: f.hot_bytes,
        hot_capacity: f.hot_capacity,
        cold_lookups: f.cold_lookups,
        cold_candidates: f.cold_candidates,
        evicted: f.evicted,
    }
}

/// `GET /digest`: this node's own applied state, never forwarded.
pub async fn digest(State(st): State<AppState>) -> Result<Response, ApiError> {
    let (applied, d) = blocking(&st.reader, |r| r.digest()).await?;
    let applied = applied.map_or(0, |l| l.index);
    let p = provenance(&st, false, applied).await;
    let body = DigestResponse {
        node_id: st.id,
        applied_index: applied,
        count: d.count,
        digest: d.hex(),
    };
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(with_provenance(bytes, &p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_types::{ConsistencyLevel, ConsistencyMarker, EventsPage};
    use raft_store::{Event, EventPage, StoredEvent};

    fn provenance() -> Provenance {
        Provenance {
            marker: ConsistencyMarker {
                level: ConsistencyLevel::Eventual,
                served_by: 2,
                applied_index: 4,
                leader_id: Some(1),
                lag_entries: Some(0),
                lag_known: true,
                last_leader_contact_ms: Some(5),
            },
            term: 3,
        }
    }

    /// The hand-written page must parse into the client's type, field for field: this is what
    /// fails when the renderer and `api_types::EventsPage` drift apart.
    #[test]
    fn events_page_parses_into_the_client_type_with_raw_payloads() {
        let page = EventPage {
            events: vec![StoredEvent {
                event: Event {
                    topic: "t".into(),
                    event_id: "id \"q\"".into(),
                    timestamp: "2024-01-01T00:00:00Z".into(),
                    source: "s".into(),
                    payload: r#"{"k": [1, 2.5, null]}"#.into(),
                    seq: Some(3),
                    lamport: None,
                },
                lamport: LamportStamp(9),
                log_index: 4,
            }],
            next: Some(LamportStamp(9)),
            as_of: None,
        };
        let p = provenance();
        let body = render_events(&page, &p);
        let parsed: EventsPage<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        let expected = EventsPage {
            events: vec![api_types::StoredEvent {
                topic: "t".into(),
                event_id: "id \"q\"".into(),
                timestamp: "2024-01-01T00:00:00Z".into(),
                source: "s".into(),
                payload: serde_json::json!({"k": [1, 2.5, null]}),
                seq: Some(3),
                producer_lamport: None,
                lamport: api_types::LamportStamp(9),
                log_index: 4,
            }],
            next: Some("9".into()),
            consistency: p.marker.clone(),
        };
        assert_eq!(parsed, expected);
        // Defaults must not hide a field the renderer lost: every field is written (keys
        // compared sorted), and the term stays in its header.
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let written: Vec<&str> = v["events"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let all = serde_json::to_value(&expected.events[0]).unwrap();
        let all: Vec<&str> = all
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(written, all);
        assert!(v["consistency"].get("term").is_none());
        assert_eq!(v["next"], "9");

        let empty = render_events(&EventPage::default(), &p);
        let parsed: EventsPage<serde_json::Value> = serde_json::from_slice(&empty).unwrap();
        assert_eq!(parsed.next, None);
        assert!(parsed.events.is_empty());
    }
}
