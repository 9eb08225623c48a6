//! The receiving side of Raft RPCs: `/raft/append`, `/raft/vote`, `/raft/snapshot` take a
//! postcard body and answer a postcard `Result<Resp, RaftError>`; `/raft/status` answers
//! JSON for peers deciding whether to bootstrap. Accepted appends from the leader are noted
//! in [`LeaderContact`](crate::cluster::LeaderContact) for follower lag reporting.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest,
};
use raft_store::{NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;
use super::AppState;
use crate::network::POSTCARD;

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    postcard::from_bytes(body)
        .map_err(|e| ApiError::bad_request(format!("undecodable Raft RPC: {e}")))
}

fn encode<T: Serialize>(answer: &T) -> Response {
    match postcard::to_stdvec(answer) {
        Ok(bytes) => ([(header::CONTENT_TYPE, POSTCARD)], bytes).into_response(),
        Err(e) => ApiError::internal(format!("encoding Raft answer: {e}")).into_response(),
    }
}

/// AppendEntries (replication and heartbeats).
pub async fn append(State(st): State<AppState>, body: Bytes) -> Response {
    let rpc: AppendEntriesRequest<TypeConfig> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let leader_commit = rpc.leader_commit.map(|l| l.index);
    let answer = st.raft.append_entries(rpc).await;
    if let Ok(
        AppendEntriesResponse::Success
        | AppendEntriesResponse::PartialSuccess(_)
        | AppendEntriesResponse::Conflict,
    ) = &answer
    {
        // The sender's vote was accepted: it is the current leader.
        st.contact.record(leader_commit);
    }
    encode(&answer)
}

/// RequestVote.
pub async fn vote(State(st): State<AppState>, body: Bytes) -> Response {
    let rpc: VoteRequest<NodeId> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    encode(&st.raft.vote(rpc).await)
}

/// One chunk of a snapshot; the last chunk installs it. A chunk that does not continue what
/// was received is refused before openraft sees it (see [`super::snapshot_intake`]).
pub async fn snapshot(State(st): State<AppState>, body: Bytes) -> Response {
    let rpc: InstallSnapshotRequest<TypeConfig> = match decode(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if let Err(refused) =
        st.snapshot_intake
            .admit(&rpc.meta.snapshot_id, rpc.offset, rpc.data.len())
    {
        tracing::warn!(
            snapshot = %rpc.meta.snapshot_id,
            offset = rpc.offset,
            "snapshot chunk refused: {refused}"
        );
        let answer: Result<InstallSnapshotResponse<NodeId>, _> =
            Err(RaftError::<NodeId, _>::APIError(refused));
        return encode(&answer);
    }
    let sender_vote = rpc.vote;
    let answer: Result<_, RaftError<NodeId, InstallSnapshotError>> =
        st.raft.install_snapshot(rpc).await;
    if matches!(&answer, Ok(r) if r.vote <= sender_vote) {
        st.contact.record(None);
    }
    encode(&answer)
}

/// This node's Raft status, for bootstrap decisions.
pub async fn status(State(st): State<AppState>) -> Response {
    match crate::cluster::local_status(&st.raft).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => ApiError::unavailable(format!("Raft is not running: {e}")).into_response(),
    }
}
