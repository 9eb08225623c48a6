//! `GET /backup`: this node's state machine as one file, streamed while the node goes on
//! serving (the format and its checks are raft-store's backup.rs; restoring is
//! `aggregator restore`). By default a snapshot covering everything this node has applied is
//! built first, so the backup holds every write acknowledged before the request reached a
//! leader-led node; `?fresh=false` streams the current snapshot as it is, at once.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;

use super::consistency::blocking;
use super::error::ApiError;
use super::state::AppState;

/// Longest wait for a fresh snapshot (one of 10 million events takes about 15 s here).
const FRESH_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes read from the snapshot file per chunk of the response.
const CHUNK_BYTES: usize = 256 << 10;

/// Query of `/backup`.
#[derive(Debug, Deserialize)]
pub struct BackupQuery {
    fresh: Option<String>,
}

/// `GET /backup[?fresh=false]`
pub async fn backup(
    State(st): State<AppState>,
    query: Result<Query<BackupQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let fresh = match query.fresh.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fresh must be true or false, not {other:?}"
            )))
        }
    };
    if st.reader.install_in_progress() {
        return Err(ApiError::unavailable(
            "a snapshot install is replacing this node's state machine; retry shortly",
        ));
    }
    if fresh {
        snapshot_up_to_applied(&st).await?;
    }
    let id = st.id;
    let Some(source) = blocking(&st.reader, move |r| r.backup(id)).await? else {
        return Err(ApiError::conflict(
            "this node has no snapshot yet; ask without fresh=false, or once it has applied entries",
        ));
    };
    let last_index = source.last_log_id.map_or(0, |l| l.index);
    tracing::info!(
        last_log_index = last_index,
        snapshot_id = source.snapshot_id,
        bytes = source.len,
        "streaming a backup"
    );
    let prefix = futures::stream::once(std::future::ready(Ok::<_, std::io::Error>(Bytes::from(
        source.prefix,
    ))));
    let data = tokio_util::io::ReaderStream::with_capacity(source.data, CHUNK_BYTES);
    let mut resp = Body::from_stream(prefix.chain(data)).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(source.len));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"aggregator-{id}-{last_index}.backup\""
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert("x-backup-last-log-index", HeaderValue::from(last_index));
    let last_term = source.last_log_id.map_or(0, |l| l.leader_id.term);
    headers.insert("x-backup-last-log-term", HeaderValue::from(last_term));
    if let Ok(v) = HeaderValue::from_str(&source.snapshot_id) {
        headers.insert("x-backup-snapshot-id", v);
    }
    Ok(resp)
}

/// Makes the current snapshot cover at least what this node had applied when asked. openraft
/// ignores a trigger while a build runs, and that build may stop short: trigger again until
/// one covers it.
async fn snapshot_up_to_applied(st: &AppState) -> Result<(), ApiError> {
    let applied = st.raft.metrics().borrow().last_applied.map(|l| l.index);
    let Some(applied) = applied else {
        return Ok(());
    };
    let covered = |st: &AppState| {
        st.raft
            .metrics()
            .borrow()
            .snapshot
            .is_some_and(|s| s.index >= applied)
    };
    let deadline = tokio::time::Instant::now() + FRESH_TIMEOUT;
    while !covered(st) {
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::unavailable(format!(
                "no snapshot covering log index {applied} within {} s; try again or use fresh=false",
                FRESH_TIMEOUT.as_secs()
            )));
        }
        st.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ApiError::unavailable(format!("raft is stopping: {e}")))?;
        let mut rx = st.raft.metrics();
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            rx.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= applied)),
        )
        .await;
    }
    Ok(())
}
