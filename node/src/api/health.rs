//! Probes and metrics, open without a token: `/health` (the process answers), `/ready` (a
//! leader is known and this node has applied what it knows to be committed), `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::time::Duration;

use super::state::AppState;
use crate::raft::leadership::{leadership, role_name, Leadership};

/// How long `/ready` lets applies catch up with the commit index before answering 503.
const READY_CATCH_UP: Duration = Duration::from_millis(1000);

/// `GET /health`
pub async fn health(State(st): State<AppState>) -> Response {
    Json(json!({"status": "ok", "node_id": st.id})).into_response()
}

/// `GET /ready`: 200 when ready, 503 otherwise, with the reasons' inputs.
pub async fn ready(State(st): State<AppState>) -> Response {
    // A leader cut off from its quorum for longer than a follower's election timeout does
    // not count as a known leader.
    let leader = match leadership(&st.raft.metrics().borrow(), st.quorum_silence_ms()) {
        Leadership::Local => Some(st.id),
        Leadership::Remote { id, .. } => Some(id),
        Leadership::Unknown => None,
    };
    let committed = st
        .raft
        .with_raft_state(|s| s.committed.map_or(0, |c| c.index))
        .await
        .ok();
    // A follower's own commit index trails the leader's by a heartbeat; take what it was told.
    let committed = committed.map(|c| c.max(st.contact.leader_commit()));
    // Under load applies trail commits by a few entries: allow a moment to catch up to the
    // commit index sampled now, so a busy but healthy node does not flap.
    let caught_up = match committed {
        Some(c) if leader.is_some() => st
            .raft
            .wait(Some(READY_CATCH_UP))
            .applied_index_at_least(Some(c), "ready")
            .await
            .is_ok(),
        _ => false,
    };
    let (applied, role) = {
        let m = st.raft.metrics();
        let m = m.borrow();
        (m.last_applied.map_or(0, |l| l.index), role_name(m.state))
    };
    let ready = leader.is_some() && caught_up;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "node_id": st.id,
        "role": role,
        "leader_id": leader,
        "applied_index": applied,
        "committed_index": committed,
    });
    (status, Json(body)).into_response()
}

/// `GET /metrics` (Prometheus text format).
pub async fn metrics(State(st): State<AppState>) -> Response {
    let (reader, dir) = (st.reader.clone(), st.data_dir.clone());
    // Off the runtime: a RocksDB read (the counters record alone, so a scrape costs the same
    // however many topics and producers the store tracks) and a statvfs.
    let sampled = tokio::task::spawn_blocking(move || crate::metrics::sample(&reader, &dir))
        .await
        .unwrap_or_default();
    let mut sampled = sampled;
    sampled.consumer_pending = st.deliveries.pending();
    let text = st.metrics.render(&crate::metrics::Scrape {
        raft: &st.raft,
        quorum_silence_ms: st.quorum_silence_ms(),
        queued: st.batcher.queued_events(),
        reader: &st.reader,
        sampled: &sampled,
    });
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response()
}
