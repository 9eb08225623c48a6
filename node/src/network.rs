//! Raft transport between nodes: openraft's `RaftNetworkFactory`/`RaftNetwork` over HTTP.
//! Bodies are postcard (binary); the answer is a postcard `Result<Resp, RaftError>` so a
//! remote Raft error reaches openraft as such. One pooled reqwest client per node, bound to
//! the `--listen` IP, with per-request timeouts from openraft. Appends are cut to a byte
//! budget (answered as a partial success) so no request grows unbounded; snapshots use
//! openraft's chunked transfer over `/raft/snapshot`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use raft_store::{entry_approx_bytes, NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cluster::RaftStatus;

/// Header carrying `--cluster-secret` on every request to `/raft/*`.
pub const SECRET_HEADER: &str = "x-cluster-secret";

/// Content type of Raft RPC bodies.
pub const POSTCARD: &str = "application/octet-stream";

/// Most bytes of log entries sent in one append (estimated from the events' text).
const APPEND_BUDGET_BYTES: usize = 2 * 1024 * 1024;

/// Timeout of a `/raft/status` probe at bootstrap.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Builds an HTTP client for node-to-node traffic: pooled keep-alive connections, no proxy,
/// Nagle off (latency matters more than packet count), bound to `local_ip` when given.
pub fn build_client(
    local_ip: Option<IpAddr>,
    connect_timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .local_address(local_ip)
        .build()
}

/// The openraft network factory: hands out one [`PeerClient`] per target.
#[derive(Clone)]
pub struct HttpNetwork {
    id: NodeId,
    client: reqwest::Client,
    secret: Option<Arc<str>>,
}

impl HttpNetwork {
    /// A factory for node `id`, sending `secret` with every RPC.
    pub fn new(id: NodeId, client: reqwest::Client, secret: Option<String>) -> Self {
        Self {
            id,
            client,
            secret: secret.map(Arc::from),
        }
    }

    /// A client for the peer `target` at `addr`.
    pub fn peer(&self, target: NodeId, addr: &str) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            base: format!("http://{addr}/raft"),
            client: self.client.clone(),
            secret: self.secret.clone(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        self.peer(target, &node.addr)
    }
}

/// RPCs to one peer.
pub struct PeerClient {
    id: NodeId,
    target: NodeId,
    base: String,
    client: reqwest::Client,
    secret: Option<Arc<str>>,
}

/// How an RPC failed before a Raft answer came back.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Could not connect.
    #[error("unreachable: {0}")]
    Unreachable(reqwest::Error),
    /// No answer within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Anything else: refused, bad status, undecodable answer.
    #[error("{0}")]
    Other(String),
}

impl PeerClient {
    /// POSTs a postcard body to `/raft/{path}` and decodes the postcard answer. `size_hint`
    /// presizes the body, so a large append is encoded without regrowing (and copying) it.
    async fn call<Req, Resp>(
        &self,
        path: &str,
        req: &Req,
        size_hint: usize,
        ttl: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let body = postcard::to_extend(req, Vec::with_capacity(size_hint))
            .map_err(|e| CallError::Other(format!("encode: {e}")))?;
        let mut rb = self
            .client
            .post(format!("{}/{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, POSTCARD)
            .timeout(ttl)
            .body(body);
        if let Some(s) = &self.secret {
            rb = rb.header(SECRET_HEADER, &**s);
        }
        let resp = rb.send().await.map_err(|e| classify(e, ttl))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| classify(e, ttl))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Err(CallError::Other(format!("peer answered {status}: {text}")));
        }
        postcard::from_bytes(&bytes).map_err(|e| CallError::Other(format!("decode: {e}")))
    }

    /// Asks the peer for its Raft status (JSON, used at bootstrap).
    pub async fn status(&self) -> Result<RaftStatus, CallError> {
        let mut rb = self
            .client
            .get(format!("{}/status", self.base))
            .timeout(STATUS_TIMEOUT);
        if let Some(s) = &self.secret {
            rb = rb.header(SECRET_HEADER, &**s);
        }
        let resp = rb.send().await.map_err(|e| classify(e, STATUS_TIMEOUT))?;
        if !resp.status().is_success() {
            return Err(CallError::Other(format!("peer answered {}", resp.status())));
        }
        resp.json()
            .await
            .map_err(|e| CallError::Other(format!("bad status body: {e}")))
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        err: CallError,
        action: RPCTypes,
    ) -> RPCError<NodeId, BasicNode, E> {
        match err {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout,
            }),
            CallError::Other(msg) => {
                RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
            }
        }
    }
}

fn classify(e: reqwest::Error, ttl: Duration) -> CallError {
    if e.is_timeout() {
        CallError::Timeout(ttl)
    } else if e.is_connect() {
        CallError::Unreachable(e)
    } else {
        CallError::Other(e.to_string())
    }
}

/// How many leading entries fit the byte budget (always at least one).
fn entries_within_budget(entries: &[openraft::Entry<TypeConfig>], budget: usize) -> usize {
    let mut total = 0;
    for (i, e) in entries.iter().enumerate() {
        total += entry_approx_bytes(e);
        if total > budget && i > 0 {
            return i;
        }
    }
    entries.len()
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        // Send only a prefix when the entries are large, and tell openraft how far it got;
        // it sends the rest next, so every request stays small and within its timeout.
        let keep = entries_within_budget(&rpc.entries, APPEND_BUDGET_BYTES);
        let size_hint = rpc
            .entries
            .iter()
            .take(keep)
            .map(entry_approx_bytes)
            .sum::<usize>()
            + 128;
        let partial = if keep < rpc.entries.len() {
            rpc.entries.truncate(keep);
            rpc.entries.last().map(|e| e.log_id)
        } else {
            None
        };
        let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = self
            .call("append", &rpc, size_hint, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::AppendEntries))?;
        match (answer, partial) {
            (Ok(AppendEntriesResponse::Success), Some(last)) => {
                Ok(AppendEntriesResponse::PartialSuccess(Some(last)))
            }
            (Ok(r), _) => Ok(r),
            (Err(e), _) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let answer: Result<
            InstallSnapshotResponse<NodeId>,
            RaftError<NodeId, InstallSnapshotError>,
        > = self
            .call("snapshot", &rpc, rpc.data.len() + 256, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::InstallSnapshot))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> = self
            .call("vote", &rpc, 128, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::Vote))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn backoff(&self) -> Backoff {
        // A restarted peer is usually back within a fraction of a second on a LAN.
        Backoff::new(std::iter::repeat(Duration::from_millis(250)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use raft_store::{Event, EventBatch};

    fn entry(index: u64, payload_len: usize) -> Entry<TypeConfig> {
        let ev = Event {
            topic: "t".into(),
            event_id: format!("e{index}"),
            timestamp: "2024-01-01T00:00:00Z".into(),
            source: "s".into(),
            payload: "x".repeat(payload_len),
            seq: None,
            lamport: None,
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(EventBatch::new(vec![ev])),
        }
    }

    #[test]
    fn budget_cuts_after_the_entry_that_overflows_but_keeps_one() {
        let es: Vec<_> = (1..=10).map(|i| entry(i, 1000)).collect();
        assert_eq!(entries_within_budget(&es, 1_000_000), 10);
        let n = entries_within_budget(&es, 3500);
        assert!((2..=3).contains(&n), "{n}");
        assert_eq!(entries_within_budget(&es[..1], 10), 1);
        let big = vec![entry(1, 5000), entry(2, 10)];
        assert_eq!(entries_within_budget(&big, 100), 1);
    }

    #[test]
    fn raft_messages_roundtrip_through_postcard() {
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 4)),
            entries: vec![entry(5, 10)],
            leader_commit: None,
        };
        let bytes = postcard::to_stdvec(&rpc).unwrap();
        let back: AppendEntriesRequest<TypeConfig> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.entries.len(), 1);
        assert_eq!(back.vote, rpc.vote);
        let err: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        let bytes = postcard::to_stdvec(&err).unwrap();
        let back: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            postcard::from_bytes(&bytes).unwrap();
        assert!(back.is_err());
    }
}
