//! The wire format of `/raft/*` that both sides share: the routes, the cluster-secret header,
//! the content type and size limit of Raft messages, and the JSON answer of `/raft/status`.
//! The client side is [`network`](super::network), the server side `api::raft_rpc`; the
//! stream's framing is [`rpc_stream`](super::rpc_stream). Messages themselves are openraft's
//! types in postcard; an answer is a postcard `Result<Resp, RaftError>`.

use raft_store::NodeId;
use serde::{Deserialize, Serialize};

/// The routes of the Raft RPCs, as the server mounts them and the client calls them.
pub mod path {
    /// `GET`: upgrades to a [Raft RPC stream](crate::raft::rpc_stream) (appends and votes).
    pub const STREAM: &str = "/raft/stream";
    /// `POST`: one AppendEntries (to a peer without the stream).
    pub const APPEND: &str = "/raft/append";
    /// `POST`: one RequestVote (to a peer without the stream).
    pub const VOTE: &str = "/raft/vote";
    /// `POST`: one snapshot chunk.
    pub const SNAPSHOT: &str = "/raft/snapshot";
    /// `GET`: [`RaftStatus`](super::RaftStatus) as JSON.
    pub const STATUS: &str = "/raft/status";
}

/// Header carrying `--cluster-secret` on every request to `/raft/*`.
pub const SECRET_HEADER: &str = "x-cluster-secret";

/// Content type of Raft RPC bodies.
pub const POSTCARD: &str = "application/octet-stream";

/// Largest Raft message a node accepts, as an HTTP body or a stream frame. Appends are cut to
/// ~2 MiB and snapshot chunks to 1 MiB, but one entry can hold a whole publish request: leave
/// room for the largest body a client may send, twice over.
pub fn raft_message_limit(max_body_bytes: usize) -> usize {
    (max_body_bytes * 2 + 4 * 1024 * 1024).max(32 * 1024 * 1024)
}

/// What `GET /raft/status` answers: enough for a peer to decide whether to bootstrap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// The answering node.
    pub node_id: NodeId,
    /// Whether it holds any Raft state (log, vote or membership).
    pub initialized: bool,
    /// The leader it knows, if any.
    pub leader_id: Option<NodeId>,
    /// Its current term.
    pub term: u64,
    /// Its last log index, if it has any log.
    pub last_log_index: Option<u64>,
}
