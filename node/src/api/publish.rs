//! `POST /publish`: read the body within its limit, validate every event (on any node), then
//! submit to the batcher (group commit) on the leader or forward the raw body to the leader
//! once; answer with one result per event after the entry is committed and applied. The
//! answer ([`api_types::PublishResponse`]) is written by hand for speed; a test parses it back.

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use raft_store::{ApplyStatus, EventOutcome, NodeId};

use super::error::ApiError;
use super::forward::{is_forwarded, LeaderAddr};
use super::limits::{body_timeout, BodyCharge};
use super::state::AppState;
use super::validate::{parse_batch, ValidBatch};
use crate::batcher::SubmitError;
use crate::raft::leadership::{await_leadership, leadership, Leadership};

/// The publish handler.
pub async fn publish(
    State(st): State<AppState>,
    charge: Option<Extension<BodyCharge>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match run(&st, &headers, body, charge.map(|Extension(c)| c)).await {
        Ok(r) => r,
        Err(e) => {
            let reason = match e.status {
                StatusCode::BAD_REQUEST => "invalid",
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::TOO_MANY_REQUESTS => "overload",
                StatusCode::SERVICE_UNAVAILABLE => "unavailable",
                _ => "other",
            };
            st.metrics
                .publish_rejected
                .with_label_values(&[reason])
                .inc();
            e.into_response()
        }
    }
}

async fn run(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    charge: Option<BodyCharge>,
) -> Result<Response, ApiError> {
    check_content_type(headers)?;
    let read = read_body(body, headers, st.limits.max_body_bytes);
    let bytes = tokio::time::timeout(st.limits.body_read_timeout, read)
        .await
        .map_err(|_| body_timeout(st.limits.body_read_timeout))??;
    let batch = parse_batch(&bytes, st.limits.max_batch)?;
    let forwarded = is_forwarded(headers);
    let silence = st.quorum_silence_ms();
    let leadership = if forwarded {
        // One hop only: a forwarded request is served here or refused.
        leadership(&st.raft.metrics().borrow(), silence)
    } else {
        await_leadership(&st.raft, silence, st.limits.leader_wait).await
    };
    match leadership {
        Leadership::Local => submit(st, headers, &bytes, batch, forwarded, charge).await,
        Leadership::Remote { id, addr } if !forwarded => {
            forward(st, id, &addr, headers, bytes).await
        }
        other => Err(not_leader(st, &other)),
    }
}

/// 503 for a node that cannot take the write.
fn not_leader(st: &AppState, l: &Leadership) -> ApiError {
    match l {
        Leadership::Remote { id, .. } => {
            ApiError::unavailable(format!("node {} is not the leader (leader is {id})", st.id))
                .with_leader(Some(*id))
        }
        _ => ApiError::unavailable("no leader is known at the moment; retry shortly"),
    }
}

async fn forward(
    st: &AppState,
    leader: NodeId,
    addr: &str,
    headers: &HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let timeout = st.limits.write_timeout + std::time::Duration::from_secs(2);
    st.forwarder
        .forward(
            LeaderAddr { id: leader, addr },
            Method::POST,
            "/publish",
            headers,
            bytes,
            timeout,
        )
        .await
        .map_err(|e| e.with_leader(Some(leader)))
}

async fn submit(
    st: &AppState,
    headers: &HeaderMap,
    bytes: &Bytes,
    batch: ValidBatch<'_>,
    forwarded: bool,
    charge: Option<BodyCharge>,
) -> Result<Response, ApiError> {
    let ValidBatch {
        events,
        keys,
        bytes: size,
    } = batch;
    let n = events.len();
    let wait = tokio::time::timeout(
        st.limits.write_timeout,
        st.batcher
            .submit(events, size, charge.map(|c| Box::new(c) as _)),
    );
    let outcomes = match wait.await {
        Ok(Ok(o)) => o,
        Ok(Err(SubmitError::Overloaded)) => {
            return Err(ApiError::overloaded("too many publish requests waiting; retry shortly"))
        }
        Ok(Err(SubmitError::NotLeader(leader))) => {
            // Lost leadership before the entry committed: one forward if allowed.
            let to = leader.and_then(|l| st.member_addr(l).map(|a| (l, a)));
            return match to {
                Some((l, addr)) if !forwarded && l != st.id => {
                    forward(st, l, &addr, headers, bytes.clone()).await
                }
                _ => Err(ApiError::unavailable("leadership changed; retry").with_leader(leader)),
            };
        }
        Ok(Err(SubmitError::Unknown(why))) => {
            return Err(ApiError::unavailable(format!(
                "write outcome unknown ({why}); retrying is safe: events are deduplicated by (topic, event_id)"
            )))
        }
        Err(_) => {
            return Err(ApiError::unavailable(format!(
                "not committed within {} ms (no quorum?); retrying is safe: events are deduplicated by (topic, event_id)",
                st.limits.write_timeout.as_millis()
            )))
        }
    };
    let body = render(&keys, &outcomes, st.id);
    let stored = outcomes
        .iter()
        .filter(|o| o.status == ApplyStatus::Stored)
        .count();
    st.metrics
        .publish_events
        .with_label_values(&["stored"])
        .inc_by(stored as u64);
    st.metrics
        .publish_events
        .with_label_values(&["duplicate"])
        .inc_by((n - stored) as u64);
    tracing::debug!(
        events = n,
        stored,
        duplicates = n - stored,
        "publish committed"
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Writes the success body ([`api_types::PublishResponse`]) by hand: topics and ids are echoed
/// as the raw JSON literals the client sent, so nothing is re-escaped or copied into a tree.
fn render(
    keys: &[(&serde_json::value::RawValue, &serde_json::value::RawValue)],
    outcomes: &[EventOutcome],
    leader: NodeId,
) -> Vec<u8> {
    use std::io::Write;
    let stored = outcomes
        .iter()
        .filter(|o| o.status == ApplyStatus::Stored)
        .count();
    let mut out = Vec::with_capacity(96 + keys.len() * 96);
    let _ = write!(
        out,
        r#"{{"accepted":{},"stored":{},"duplicates":{},"leader_id":{},"results":["#,
        outcomes.len(),
        stored,
        outcomes.len() - stored,
        leader
    );
    for (i, ((topic, id), o)) in keys.iter().zip(outcomes).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let status = match o.status {
            ApplyStatus::Stored => "stored",
            ApplyStatus::Duplicate => "duplicate",
        };
        let _ = write!(
            out,
            r#"{{"topic":{},"event_id":{},"status":"{}","lamport":{}"#,
            topic.get(),
            id.get(),
            status,
            o.lamport.0
        );
        // Only where it matters, so the common answer stays as short as it was.
        if o.original_trimmed {
            out.extend_from_slice(br#","original_trimmed":true"#);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// Refuses an explicit non-JSON content type (a missing one is accepted).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime == "application/json" || mime.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "content type {mime:?} not accepted: send application/json"
        )))
    }
}

/// Reads the body, refusing it with 413 as soon as it passes `limit`.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || ApiError::too_large(format!("request body over the limit of {limit} bytes"));
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    // Reserve at most 1 MiB up front: a declared length alone must not make the node
    // allocate the whole limit for a client that then sends nothing.
    let mut buf = Vec::with_capacity(declared.map_or(16 * 1024, |n| (n as usize).min(1 << 20)));
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_types::{EventStatus, LamportStamp, PublishResponse};
    use raft_store::LamportStamp as StoreStamp;
    use serde_json::value::RawValue;

    /// The hand-written answer must parse into the client's type with every total and result
    /// as rendered: this is what fails when `render` and `api_types` drift apart.
    #[test]
    fn the_publish_answer_parses_into_the_client_type() {
        let raw = |s: &'static str| -> &'static RawValue {
            Box::leak(RawValue::from_string(s.to_owned()).unwrap())
        };
        let keys = [
            (raw(r#""orders""#), raw(r#""a\"1""#)),
            (raw(r#""orders""#), raw(r#""b""#)),
        ];
        let outcomes = [
            EventOutcome {
                status: ApplyStatus::Stored,
                lamport: StoreStamp(17),
                original_trimmed: false,
            },
            EventOutcome {
                status: ApplyStatus::Duplicate,
                lamport: StoreStamp(5),
                original_trimmed: true,
            },
        ];
        let body = render(&keys, &outcomes, 3);
        let r: PublishResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!((r.accepted, r.stored, r.duplicates), (2, 1, 1));
        assert_eq!(r.leader_id, Some(3));
        assert_eq!(r.results.len(), 2);
        assert_eq!(r.results[0].topic, "orders");
        assert_eq!(r.results[0].event_id, "a\"1");
        assert_eq!(r.results[0].status, EventStatus::Stored);
        assert_eq!(r.results[0].lamport, LamportStamp(17));
        assert_eq!(r.results[1].event_id, "b");
        assert_eq!(r.results[1].status, EventStatus::Duplicate);
        assert_eq!(r.results[1].lamport, LamportStamp(5));
        assert!(r.results[1].original_trimmed && !r.results[0].original_trimmed);
        // Every field is written: defaults would hide a missing one.
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let top: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            top,
            ["accepted", "duplicates", "leader_id", "results", "stored"]
        );
        assert_eq!(v, serde_json::to_value(&r).unwrap());
    }
}
