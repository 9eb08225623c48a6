//! The client side of Raft transport between nodes: openraft's `RaftNetworkFactory`/`RaftNetwork`.
//! Appends and votes go over a [Raft RPC stream](super::rpc_stream) that each client opens
//! once (an HTTP upgrade) and keeps; a peer that does not know the stream (404, an older
//! release) is spoken to with one HTTP POST per RPC instead. Messages are postcard; the answer
//! is a postcard `Result<Resp, RaftError>` so a remote Raft error reaches openraft as such.
//! One reqwest client per node, bound to the `--listen` IP; openraft's per-RPC timeout covers
//! connecting as well. Appends are cut to a byte budget (answered as a partial success) so no
//! message grows unbounded; snapshots use openraft's chunked transfer over `/raft/snapshot`.

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
use sync_wrapper::SyncWrapper;

use super::rpc_stream::{RpcStream, StreamError, StreamRequest, PROTOCOL};
use super::wire::{path, RaftStatus, POSTCARD, SECRET_HEADER};

/// Most bytes of log entries sent in one append (estimated from the events' text).
const APPEND_BUDGET_BYTES: usize = 2 * 1024 * 1024;

/// Timeout of a `/raft/status` probe at bootstrap.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Builds an HTTP client for node-to-node traffic: pooled keep-alive connections, no proxy,
/// Nagle off (latency matters more than packet count), bound to `local_ip` when given, and
/// speaking mutual TLS when `tls` is given (https:// peer addresses).
pub fn build_client(
    local_ip: Option<IpAddr>,
    connect_timeout: Duration,
    tls: Option<rustls::ClientConfig>,
) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        // Shorter than the peer listener's idle limit (--header-read-timeout-ms, 30 s by
        // default), so a pooled connection is mostly dropped here before the server closes it.
        .pool_idle_timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(64)
        .local_address(local_ip);
    match tls {
        Some(config) => builder.use_preconfigured_tls(config).build(),
        None => builder.build(),
    }
}

/// The openraft network factory: hands out one [`PeerClient`] per target.
#[derive(Clone)]
pub struct HttpNetwork {
    id: NodeId,
    scheme: &'static str,
    client: reqwest::Client,
    secret: Option<Arc<str>>,
    max_message: usize,
}

impl HttpNetwork {
    /// A factory for node `id`, sending `secret` with every RPC and accepting answers of up to
    /// `max_message` bytes.
    pub fn new(
        id: NodeId,
        client: reqwest::Client,
        secret: Option<String>,
        max_message: usize,
    ) -> Self {
        Self {
            id,
            scheme: "http",
            client,
            secret: secret.map(Arc::from),
            max_message,
        }
    }

    /// Peers' addresses are reached with this URL scheme (`https` under mutual TLS; the
    /// client must then have been built with the TLS configuration).
    pub fn with_scheme(mut self, scheme: &'static str) -> Self {
        self.scheme = scheme;
        self
    }

    /// A client for the peer `target` at `addr`.
    pub fn peer(&self, target: NodeId, addr: &str) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            base: format!("{}://{addr}", self.scheme),
            client: self.client.clone(),
            secret: self.secret.clone(),
            max_message: self.max_message,
            stream: None,
            http_only: false,
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
    max_message: usize,
    /// The open Raft RPC stream; `None` until the first call and after any failure. Only
    /// ever used through `&mut self`, which is what makes the wrapper's `Sync` sound.
    stream: Option<SyncWrapper<RpcStream<reqwest::Upgraded>>>,
    /// The peer answered 404 to the upgrade: it predates the stream, use one POST per RPC.
    http_only: bool,
}

/// An RPC that can go over the stream or, to an older peer, as a POST to its `path`.
struct Rpc<'a, A, V> {
    request: StreamRequest<&'a A, &'a V>,
    path: &'static str,
    size_hint: usize,
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
    /// POSTs a postcard body to `path` (a `wire::path` route) and decodes the postcard answer. `size_hint`
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
            .post(format!("{}{path}", self.base))
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

    /// Sends `rpc` over the stream (opening it first if needed) and waits for the answer,
    /// all within `ttl`. Any failure drops the stream: after a timeout an answer may still be
    /// on its way, and the next call must not read it as its own.
    async fn stream_call<A, V, Resp>(
        &mut self,
        rpc: Rpc<'_, A, V>,
        ttl: Duration,
    ) -> Result<Resp, CallError>
    where
        A: Serialize,
        V: Serialize,
        Resp: DeserializeOwned,
    {
        if self.http_only {
            return self.post(rpc, ttl).await;
        }
        let exchange = async {
            if self.stream.is_none() {
                self.stream = self.open_stream(ttl).await?.map(SyncWrapper::new);
            }
            let Some(stream) = self.stream.as_mut().map(SyncWrapper::get_mut) else {
                return Ok(None);
            };
            stream
                .send(&rpc.request, rpc.size_hint)
                .await
                .map_err(stream_error)?;
            stream.recv().await.map(Some).map_err(stream_error)
        };
        let answer = match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok(Some(answer))) => return Ok(answer),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(CallError::Timeout(ttl)),
        };
        self.stream = None;
        match answer {
            Some(e) => Err(e),
            // The peer does not know the stream: this one call, and all later ones, by POST.
            None => self.post(rpc, ttl).await,
        }
    }

    /// Sends `rpc` as a POST of its own.
    async fn post<A, V, Resp>(&self, rpc: Rpc<'_, A, V>, ttl: Duration) -> Result<Resp, CallError>
    where
        A: Serialize,
        V: Serialize,
        Resp: DeserializeOwned,
    {
        match rpc.request {
            StreamRequest::Append(req) => self.call(rpc.path, req, rpc.size_hint, ttl).await,
            StreamRequest::Vote(req) => self.call(rpc.path, req, rpc.size_hint, ttl).await,
        }
    }

    /// Opens a Raft RPC stream to the peer within the caller's `ttl`; `Ok(None)` (and
    /// `http_only` set) when the peer does not offer one.
    async fn open_stream(
        &mut self,
        ttl: Duration,
    ) -> Result<Option<RpcStream<reqwest::Upgraded>>, CallError> {
        let mut rb = self
            .client
            .get(format!("{}{}", self.base, path::STREAM))
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, PROTOCOL);
        if let Some(s) = &self.secret {
            rb = rb.header(SECRET_HEADER, &**s);
        }
        let resp = rb.send().await.map_err(|e| classify(e, ttl))?;
        match resp.status() {
            reqwest::StatusCode::SWITCHING_PROTOCOLS => {}
            reqwest::StatusCode::NOT_FOUND => {
                tracing::info!(
                    peer = self.target,
                    "peer has no Raft RPC stream; using HTTP"
                );
                self.http_only = true;
                return Ok(None);
            }
            status => {
                // Characters, not bytes: a cut inside a multi-byte character would panic.
                let text: String = resp
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                return Err(CallError::Other(format!(
                    "peer refused the Raft RPC stream: {status}: {text}"
                )));
            }
        }
        let io = resp
            .upgrade()
            .await
            .map_err(|e| CallError::Other(format!("upgrading to the Raft RPC stream: {e}")))?;
        Ok(Some(RpcStream::new(io, self.max_message)))
    }

    /// Asks the peer for its Raft status (JSON, used at bootstrap).
    pub async fn status(&self) -> Result<RaftStatus, CallError> {
        let mut rb = self
            .client
            .get(format!("{}{}", self.base, path::STATUS))
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

fn stream_error(e: StreamError) -> CallError {
    CallError::Other(e.to_string())
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
        let call = Rpc {
            request: StreamRequest::<_, &VoteRequest<NodeId>>::Append(&rpc),
            path: path::APPEND,
            size_hint,
        };
        let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = self
            .stream_call(call, option.hard_ttl())
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
            .call(
                path::SNAPSHOT,
                &rpc,
                rpc.data.len() + 256,
                option.hard_ttl(),
            )
            .await
            .map_err(|e| self.rpc_error(e, RPCTypes::InstallSnapshot))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let call = Rpc {
            request: StreamRequest::<&AppendEntriesRequest<TypeConfig>, _>::Vote(&rpc),
            path: path::VOTE,
            size_hint: 128,
        };
        let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> = self
            .stream_call(call, option.hard_ttl())
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
            payload: EntryPayload::Normal(EventBatch::new(vec![ev]).into()),
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

    /// A peer from before the stream answers 404 to the upgrade; the client must then send the
    /// same RPC, and later ones, as POSTs.
    #[tokio::test]
    async fn a_peer_without_the_stream_is_spoken_to_by_post() {
        use axum::routing::post;
        use std::sync::atomic::{AtomicUsize, Ordering};

        static VOTES: AtomicUsize = AtomicUsize::new(0);
        async fn vote(body: axum::body::Bytes) -> Vec<u8> {
            VOTES.fetch_add(1, Ordering::SeqCst);
            let req: VoteRequest<NodeId> = postcard::from_bytes(&body).unwrap();
            let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> = Ok(VoteResponse {
                vote: req.vote,
                vote_granted: true,
                last_log_id: None,
            });
            postcard::to_stdvec(&answer).unwrap()
        }
        let app = axum::Router::new().route("/raft/vote", post(vote));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let client = build_client(None, Duration::from_secs(1), None).unwrap();
        let net = HttpNetwork::new(1, client, None, 1 << 20);
        let mut peer = net.peer(2, &addr.to_string());
        for term in [3, 4] {
            let req = VoteRequest::new(openraft::Vote::new(term, 1), None);
            let answer = peer
                .vote(req, RPCOption::new(Duration::from_secs(2)))
                .await
                .unwrap();
            assert!(answer.vote_granted);
            assert!(peer.http_only && peer.stream.is_none());
        }
        assert_eq!(VOTES.load(Ordering::SeqCst), 2);
    }

    /// A peer that refuses the stream with any text, however it is encoded, costs an error,
    /// never a panic (the text is cut for the message).
    #[tokio::test]
    async fn a_refused_upgrade_is_an_error_whatever_its_text() {
        use axum::http::StatusCode;
        use axum::routing::get;

        // 'é' is two bytes: byte 200 falls inside one.
        let text = format!("x{}", "é".repeat(300));
        let app = axum::Router::new().route(
            "/raft/stream",
            get(move || async move { (StatusCode::BAD_REQUEST, text) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let client = build_client(None, Duration::from_secs(1), None).unwrap();
        let mut peer = HttpNetwork::new(1, client, None, 1 << 20).peer(2, &addr.to_string());
        let answer = peer
            .vote(
                VoteRequest::new(openraft::Vote::new(1, 1), None),
                RPCOption::new(Duration::from_secs(2)),
            )
            .await;
        match answer {
            Err(RPCError::Network(e)) => assert!(e.to_string().contains("400"), "{e}"),
            other => panic!("expected a network error, got {other:?}"),
        }
        assert!(!peer.http_only && peer.stream.is_none());
    }

    /// An answer that arrives after its call timed out must not be read as the answer to the
    /// next call on the same client: the stream is dropped on timeout and a new one opened.
    #[tokio::test]
    async fn a_late_answer_is_never_taken_for_the_next_calls() {
        use axum::body::Body;
        use axum::extract::Request;
        use axum::http::{header, StatusCode};
        use axum::response::Response;
        use axum::routing::get;
        use hyper_util::rt::TokioIo;
        use std::sync::atomic::{AtomicUsize, Ordering};

        type Owned = StreamRequest<AppendEntriesRequest<TypeConfig>, VoteRequest<NodeId>>;
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        // Echoes each vote back as granted; the very first answer comes 300 ms late.
        async fn stream(mut req: Request) -> Response {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut s = RpcStream::new(TokioIo::new(upgrade.await.unwrap()), 1 << 20);
                while let Ok(StreamRequest::Vote(v)) = s.recv::<Owned>().await {
                    if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
                        Ok(VoteResponse {
                            vote: v.vote,
                            vote_granted: true,
                            last_log_id: None,
                        });
                    if s.send(&answer, 64).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, PROTOCOL)
                .body(Body::empty())
                .unwrap()
        }
        let app = axum::Router::new().route("/raft/stream", get(stream));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let client = build_client(None, Duration::from_secs(1), None).unwrap();
        let mut peer = HttpNetwork::new(1, client, None, 1 << 20).peer(2, &addr.to_string());
        let vote = |term| VoteRequest::new(openraft::Vote::new(term, 1), None);
        let first = peer
            .vote(vote(1), RPCOption::new(Duration::from_millis(100)))
            .await;
        assert!(
            matches!(first, Err(RPCError::Timeout(_))),
            "the slow call did not time out: {first:?}"
        );
        assert!(peer.stream.is_none(), "the stream outlived the timeout");
        tokio::time::sleep(Duration::from_millis(400)).await;
        for term in [2, 3] {
            let answer = peer
                .vote(vote(term), RPCOption::new(Duration::from_secs(2)))
                .await
                .unwrap();
            assert_eq!(
                answer.vote,
                openraft::Vote::new(term, 1),
                "call for term {term} got another call's answer"
            );
        }
        assert!(!peer.http_only);
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
