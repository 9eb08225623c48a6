//! The receiving side of Raft RPCs (the wire format is [`crate::raft::wire`]): `/raft/stream`
//! upgrades to a [Raft RPC stream](crate::raft::rpc_stream) carrying appends and votes; `/raft/append`, `/raft/vote`,
//! `/raft/snapshot` take one postcard body each and answer a postcard `Result<Resp,
//! RaftError>`; `/raft/status` answers JSON for peers deciding whether to bootstrap. Accepted
//! appends from the leader are noted in [`LeaderContact`](crate::raft::leadership::LeaderContact) for
//! follower lag reporting.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_util::rt::TokioIo;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raft_store::{NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;
use super::snapshot_intake::Refusal;
use super::state::AppState;
use crate::raft::bootstrap::local_status;
use crate::raft::rpc_stream::{RpcStream, StreamError, StreamRequest, PROTOCOL};
use crate::raft::wire::{raft_message_limit, POSTCARD};

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

/// Why an AppendEntries cannot be handed to openraft: its entries do not continue its
/// `prev_log_id` one index at a time. openraft 0.9 checks that only in debug builds; a release
/// follower would append such entries after whatever it has (even after nothing, when
/// `prev_log_id` is `None`) and stop its Raft core at the first apply. A correct leader never
/// sends one; refusing it turns a leader bug into a failed RPC that is retried.
fn misshapen(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<String> {
    let first = rpc.prev_log_id.map_or(0, |p| p.index + 1);
    (first..).zip(&rpc.entries).find_map(|(expected, entry)| {
        (entry.log_id.index != expected).then(|| {
            format!(
                "append after {:?} holds entry {} where {expected} was due",
                rpc.prev_log_id, entry.log_id
            )
        })
    })
}

/// Hands an AppendEntries to Raft and notes contact with the leader when it was accepted.
/// A misshapen one is refused before openraft sees it (`Err` names why).
async fn handle_append(
    st: &AppState,
    rpc: AppendEntriesRequest<TypeConfig>,
) -> Result<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>, String> {
    if let Some(why) = misshapen(&rpc) {
        tracing::error!(vote = %rpc.vote, "refused a misshapen AppendEntries: {why}");
        return Err(why);
    }
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
    Ok(answer)
}

/// AppendEntries (replication and heartbeats), one per request.
pub async fn append(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match body.map_err(ApiError::from).and_then(|b| decode(&b)) {
        Ok(rpc) => match handle_append(&st, rpc).await {
            Ok(answer) => encode(&answer),
            Err(why) => ApiError::bad_request(why).into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// RequestVote, one per request.
pub async fn vote(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let rpc: VoteRequest<NodeId> = match body.map_err(ApiError::from).and_then(|b| decode(&b)) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    encode(&st.raft.vote(rpc).await)
}

/// Switches the connection to a Raft RPC stream. The cluster secret was checked by the
/// router like on every `/raft/*` request, so the stream needs no check of its own.
pub async fn stream(State(st): State<AppState>, mut req: Request) -> Response {
    let asks = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(PROTOCOL.as_bytes()));
    if !asks {
        let mut r = ApiError::upgrade_required(format!(
            "/raft/stream needs `Connection: upgrade` and `Upgrade: {PROTOCOL}`"
        ))
        .into_response();
        r.headers_mut()
            .insert(header::UPGRADE, header::HeaderValue::from_static(PROTOCOL));
        return r;
    }
    // One permit per open stream, held until it closes: a flood of upgrades cannot pile up
    // tasks and sockets without bound.
    let Ok(permit) = st.raft_streams.clone().try_acquire_owned() else {
        tracing::warn!("refused a Raft RPC stream: --max-raft-streams are open");
        return ApiError::unavailable(
            "too many Raft RPC streams are open (--max-raft-streams); retry later",
        )
        .into_response();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _permit = permit;
        match upgrade.await {
            Ok(io) => serve_stream(st, TokioIo::new(io)).await,
            Err(e) => tracing::debug!(error = %e, "Raft RPC stream upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .body(Body::empty())
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

type OwnedRequest = StreamRequest<AppendEntriesRequest<TypeConfig>, VoteRequest<NodeId>>;

/// A stream that carries no request for this long is closed. A leader's replication stream
/// carries a heartbeat every `--heartbeat-ms`; silence this long means a peer that vanished
/// without closing the connection (a cut link, a powered-off host), whose task and socket
/// would otherwise wait forever. A live client just opens a new stream on its next call.
const STREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Answers the requests of one stream in turn until the peer closes it or breaks the
/// protocol (an undecodable or oversize frame ends the connection: nothing after it can be
/// trusted to start on a frame boundary).
async fn serve_stream<S>(st: AppState, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut stream = RpcStream::new(io, raft_message_limit(st.limits.max_body_bytes));
    loop {
        let request: OwnedRequest =
            match tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.recv()).await {
                Ok(Ok(r)) => r,
                Ok(Err(StreamError::Closed)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "closing a Raft RPC stream");
                    return;
                }
                Err(_) => {
                    tracing::debug!("closing an idle Raft RPC stream");
                    return;
                }
            };
        let start = Instant::now();
        let (kind, sent) = match request {
            StreamRequest::Append(rpc) => match handle_append(&st, rpc).await {
                Ok(answer) => ("append", stream.send(&answer, 64).await),
                // Like an undecodable frame: the sender's next call opens a new stream.
                Err(_) => return,
            },
            StreamRequest::Vote(rpc) => {
                let answer: Result<VoteResponse<NodeId>, _> = st.raft.vote(rpc).await;
                ("vote", stream.send(&answer, 64).await)
            }
        };
        st.metrics
            .stream_rpc_seconds
            .with_label_values(&[kind])
            .observe(start.elapsed().as_secs_f64());
        if let Err(e) = sent {
            tracing::debug!(error = %e, "Raft RPC stream closed while answering");
            return;
        }
    }
}

/// One chunk of a snapshot; the last chunk installs it. A chunk that does not continue what
/// was received is refused before openraft sees it (see [`super::snapshot_intake`]).
pub async fn snapshot(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    // A body over the Raft message limit is refused like any other: 413 with the JSON error
    // (axum's own rejection is plain text).
    let rpc: InstallSnapshotRequest<TypeConfig> =
        match body.map_err(ApiError::from).and_then(|b| decode(&b)) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
    // openraft checks the vote only after the intake has admitted (and recorded) the chunk:
    // a chunk from a deposed or forged leader would reset what the real leader's transfer
    // has received. Refused here first, before anything is written.
    // As openraft decides: only a vote at least the node's own is a leader's (two votes of
    // one term for different leaders are not comparable, and refused too).
    let current_vote = st.raft.metrics().borrow().vote;
    let admissible = matches!(
        rpc.vote.partial_cmp(&current_vote),
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
    );
    if !admissible {
        tracing::warn!(
            snapshot = %rpc.meta.snapshot_id,
            vote = %rpc.vote,
            current = %current_vote,
            "snapshot chunk refused: its vote is not at least this node's"
        );
        return ApiError::conflict(format!(
            "snapshot chunk with vote {} is not at least this node's vote {current_vote}",
            rpc.vote
        ))
        .into_response();
    }
    match st.snapshot_intake.admit(
        &rpc.meta.snapshot_id,
        rpc.offset,
        rpc.data.len(),
        st.max_snapshot_bytes,
    ) {
        Ok(()) => {}
        Err(Refusal::Resume(refused)) => {
            tracing::warn!(
                snapshot = %rpc.meta.snapshot_id,
                offset = rpc.offset,
                "snapshot chunk refused: {refused}"
            );
            let answer: Result<InstallSnapshotResponse<NodeId>, _> =
                Err(RaftError::<NodeId, _>::APIError(refused));
            return encode(&answer);
        }
        Err(Refusal::TooLarge(cap)) => {
            tracing::error!(
                snapshot = %rpc.meta.snapshot_id,
                offset = rpc.offset,
                cap,
                "snapshot chunk refused: the snapshot would exceed --max-snapshot-mib"
            );
            return ApiError::too_large(format!(
                "the snapshot would exceed this node's --max-snapshot-mib ({cap} bytes)"
            ))
            .into_response();
        }
    }
    let sender_vote = rpc.vote;
    let done = rpc.done;
    st.election_hold.chunk_received();
    // Released when the install answers, or if this handler is dropped before it does.
    let _installing = done.then(|| st.election_hold.installing());
    let answer: Result<_, RaftError<NodeId, InstallSnapshotError>> =
        st.raft.install_snapshot(rpc).await;
    if matches!(&answer, Ok(r) if r.vote <= sender_vote) {
        st.contact.record(None);
    }
    encode(&answer)
}

/// This node's Raft status, for bootstrap decisions.
pub async fn status(State(st): State<AppState>) -> Response {
    match local_status(&st.raft).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => ApiError::unavailable(format!("Raft is not running: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;

    fn id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    fn append(prev: Option<u64>, indexes: &[u64]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: prev.map(id),
            entries: indexes
                .iter()
                .map(|&i| Entry {
                    log_id: id(i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        }
    }

    #[test]
    fn appends_that_continue_their_prev_log_id_pass() {
        assert_eq!(misshapen(&append(None, &[])), None);
        assert_eq!(misshapen(&append(Some(9), &[])), None);
        assert_eq!(misshapen(&append(None, &[0, 1, 2])), None);
        assert_eq!(misshapen(&append(Some(9), &[10, 11])), None);
    }

    /// What openraft 0.9's leader sent a wiped follower (issue 15): entries from the middle of
    /// its log with no `prev_log_id`.
    #[test]
    fn entries_that_skip_or_repeat_an_index_are_refused() {
        assert!(misshapen(&append(None, &[1022, 1023])).is_some());
        assert!(misshapen(&append(Some(9), &[11])).is_some());
        assert!(misshapen(&append(Some(9), &[10, 12])).is_some());
        assert!(misshapen(&append(Some(9), &[10, 10])).is_some());
    }
}
