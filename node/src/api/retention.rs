//! Retention policies over the API: `GET /retention` (client or read token), and with the admin
//! token `PUT /retention/default`, `PUT /retention/topics/{topic}`,
//! `DELETE /retention/topics/{topic}` and `PUT /retention/dedup_window`. A change is checked here (any problem: 400, nothing
//! proposed), forwarded once to the leader, proposed there as a Raft entry and answered once
//! applied on the leader, with the policies then in force. The trims that enforce the policies
//! are the leader's (`raft/trimmer.rs`).

use std::time::Duration;

use api_types::{DedupWindowRequest, RetentionPolicy, RetentionResponse, MAX_DEDUP_WINDOW_MS};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use raft_store::{Command, Control, RetentionChange, RetentionView};

use super::admin::on_leader;
use super::consistency::{
    blocking, forward_read, parse_level, plan, provenance, with_provenance, Plan,
};
use super::error::ApiError;
use super::read::LevelQuery;
use super::state::AppState;
use super::validate::topic_problem;

/// How long a change may wait to be committed and applied.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /retention[?consistency=...]`
pub async fn get(
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
    let (view, applied) = blocking(&st.reader, |r| Ok((r.retention()?, r.last_applied()?))).await?;
    let p = provenance(&st, linearizable, applied.map_or(0, |l| l.index)).await;
    Ok(with_provenance(render(view)?, &p))
}

/// `PUT /retention/default` with a [`RetentionPolicy`].
pub async fn put_default(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A body past the route's limit is a JSON 413 like every other error.
    let body = body?;
    let policy = parse_policy(&body)?;
    change(
        &st,
        &headers,
        Method::PUT,
        "/retention/default",
        body,
        RetentionChange::SetDefault(policy),
    )
    .await
}

/// `PUT /retention/topics/{topic}` with a [`RetentionPolicy`].
pub async fn put_topic(
    State(st): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A body past the route's limit is a JSON 413 like every other error.
    let body = body?;
    check_topic(&topic)?;
    let policy = parse_policy(&body)?;
    let path = format!("/retention/topics/{topic}");
    let change_ = RetentionChange::SetTopic { topic, policy };
    change(&st, &headers, Method::PUT, &path, body, change_).await
}

/// `PUT /retention/dedup_window` with a [`DedupWindowRequest`]: how long after an event was
/// stored its key stays a duplicate once retention trimmed it.
pub async fn put_dedup_window(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let window_ms = parse_window(&body)?;
    change(
        &st,
        &headers,
        Method::PUT,
        "/retention/dedup_window",
        body,
        RetentionChange::SetDedupWindow(window_ms),
    )
    .await
}

/// The body as a window: `{"window_ms": N}`, 0 to [`MAX_DEDUP_WINDOW_MS`].
fn parse_window(body: &[u8]) -> Result<u64, ApiError> {
    let bad = |e: serde_json::Error| {
        ApiError::bad_request(format!(
            "the body must be a dedup window like {{\"window_ms\": 600000}} (0: only while \
             the original is held): {e}"
        ))
    };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(bad)?;
    let r: DedupWindowRequest =
        serde_json::from_value(serde_json::Value::Object(object)).map_err(bad)?;
    if r.window_ms > MAX_DEDUP_WINDOW_MS {
        return Err(ApiError::bad_request(format!(
            "window_ms must be at most {MAX_DEDUP_WINDOW_MS} (366 days)"
        )));
    }
    Ok(r.window_ms)
}

/// `DELETE /retention/topics/{topic}`: the default applies to the topic again.
pub async fn delete_topic(
    State(st): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_topic(&topic)?;
    let path = format!("/retention/topics/{topic}");
    let change_ = RetentionChange::RemoveTopic { topic };
    change(&st, &headers, Method::DELETE, &path, Bytes::new(), change_).await
}

fn check_topic(topic: &str) -> Result<(), ApiError> {
    match topic_problem(topic) {
        Some(why) => Err(ApiError::bad_request(format!("topic {topic:?}: {why}"))),
        None => Ok(()),
    }
}

/// The body as a policy: JSON, no unknown field, every limit at least 1.
fn parse_policy(body: &[u8]) -> Result<raft_store::RetentionPolicy, ApiError> {
    let bad = |e: serde_json::Error| {
        ApiError::bad_request(format!(
            "the body must be a retention policy like {{\"max_age_ms\": 86400000, \
             \"max_events\": 1000000, \"max_bytes\": 1073741824}} (any subset): {e}"
        ))
    };
    // An object first: serde would also read a struct from an array of its fields in order.
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(bad)?;
    let p: RetentionPolicy =
        serde_json::from_value(serde_json::Value::Object(object)).map_err(bad)?;
    for (name, value) in [
        ("max_age_ms", p.max_age_ms),
        ("max_events", p.max_events),
        ("max_bytes", p.max_bytes),
    ] {
        if value == Some(0) {
            return Err(ApiError::bad_request(format!(
                "{name} must be at least 1; leave it out for no limit"
            )));
        }
        // Within a signed 64-bit integer, as for `seq`: what JSON tooling and the OpenAPI
        // document's int64 carry without loss (and far beyond any real limit).
        if value.is_some_and(|v| v > i64::MAX as u64) {
            return Err(ApiError::bad_request(format!(
                "{name} must be at most {} (2^63 - 1)",
                i64::MAX
            )));
        }
    }
    Ok(raft_store::RetentionPolicy {
        max_age_ms: p.max_age_ms,
        max_events: p.max_events,
        max_bytes: p.max_bytes,
    })
}

/// Proposes `change` on the leader (forwarding the request there once) and answers the
/// policies in force once it is applied.
async fn change(
    st: &AppState,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Bytes,
    change: RetentionChange,
) -> Result<Response, ApiError> {
    if let Some(r) = on_leader(st, headers, method, path, body).await? {
        return Ok(r);
    }
    let write = st
        .raft
        .client_write(Command::Control(Control::Retention(change)));
    match tokio::time::timeout(CHANGE_TIMEOUT, write).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(ApiError::unavailable(format!(
                "the change was not committed ({e}); retry"
            )))
        }
        Err(_) => {
            return Err(ApiError::unavailable(format!(
                "the change was not applied within {} s; it may still be: check GET /retention",
                CHANGE_TIMEOUT.as_secs()
            )))
        }
    }
    let view = blocking(&st.reader, |r| r.retention()).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], render(view)?).into_response())
}

fn policy(p: raft_store::RetentionPolicy) -> RetentionPolicy {
    let raft_store::RetentionPolicy {
        max_age_ms,
        max_events,
        max_bytes,
    } = p;
    RetentionPolicy {
        max_age_ms,
        max_events,
        max_bytes,
    }
}

fn render(view: RetentionView) -> Result<Vec<u8>, ApiError> {
    let body = RetentionResponse {
        default: policy(view.default),
        topics: view
            .topics
            .into_iter()
            .map(|(t, p)| (t, policy(p)))
            .collect(),
        earliest_cursors: view
            .earliest_cursors
            .into_iter()
            .map(|(t, c)| (t, c.0.to_string()))
            .collect(),
        trimmed_events: view.trimmed.events,
        trimmed_bytes: view.trimmed.bytes,
        dedup_window: api_types::describe_dedup_window(view.dedup_window.window_ms),
        dedup_window_ms: view.dedup_window.window_ms,
        dedup_tombstones: view.dedup_window.tombstones,
        duplicates_of_trimmed: view.dedup_window.duplicates_of_trimmed,
    };
    serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_object_of_known_positive_limits_is_a_policy() {
        let p = parse_policy(br#"{"max_events": 5, "max_bytes": 9}"#).unwrap();
        assert_eq!(
            (p.max_events, p.max_bytes, p.max_age_ms),
            (Some(5), Some(9), None)
        );
        assert!(parse_policy(b"{}").unwrap().is_unlimited());
        for bad in [
            &b"[1]"[..],
            b"[1, 2, 3]",
            br#"{"max_age": 5}"#,
            br#"{"max_events": 0}"#,
            br#"{"max_bytes": -1}"#,
            br#"{"max_events": 1.5}"#,
            br#"{"max_events": 9223372036854775808}"#,
            b"null",
            b"",
        ] {
            let e = parse_policy(bad).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn a_window_is_an_object_of_milliseconds_up_to_366_days() {
        assert_eq!(parse_window(br#"{"window_ms": 600000}"#).unwrap(), 600_000);
        assert_eq!(parse_window(br#"{"window_ms": 0}"#).unwrap(), 0);
        assert_eq!(
            parse_window(br#"{"window_ms": 31622400000}"#).unwrap(),
            MAX_DEDUP_WINDOW_MS
        );
        for bad in [
            &br#"{"window_ms": 31622400001}"#[..],
            br#"{"window_ms": -1}"#,
            br#"{"window": 5}"#,
            br#"{"window_ms": 5, "x": 1}"#,
            br#"{}"#,
            b"[600000]",
            b"null",
            b"",
        ] {
            let e = parse_window(bad).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}
