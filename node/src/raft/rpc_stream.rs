//! The Raft RPC stream: the wire format of AppendEntries and RequestVote between nodes.
//!
//! A client opens it with `GET /raft/stream` carrying `Upgrade: aggregator-raft/1` (and the
//! cluster secret, checked like every `/raft/*` request); after `101 Switching Protocols` the
//! connection carries length-delimited postcard frames, one request then its answer, in turn.
//! One stream serves one openraft network client (a replication stream or one election), so
//! calls on it never overlap, and the per-request HTTP parsing, headers and connection-pool
//! work of a plain POST (about a third of a leader's CPU under single-event load) is paid once
//! per connection instead of once per RPC. Snapshots keep their HTTP route: they are rare and
//! their chunks are admitted one by one (`api::snapshot_intake`).

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// The `Upgrade` token that asks for a Raft RPC stream.
pub const PROTOCOL: &str = "aggregator-raft/1";

/// One request frame. Encoded from references (`StreamRequest<&A, &V>`) and decoded owned;
/// postcard writes both the same way.
#[derive(Debug, Serialize, Deserialize)]
pub enum StreamRequest<A, V> {
    /// AppendEntries (replication and heartbeats).
    Append(A),
    /// RequestVote.
    Vote(V),
}

/// How a stream broke; the caller drops the connection and opens a new one next time.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading or writing the connection failed, or a frame exceeded the limit.
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("peer closed the stream")]
    Closed,
    /// A frame did not decode or a message did not encode.
    #[error("stream frame: {0}")]
    Codec(#[from] postcard::Error),
}

/// A framed Raft RPC connection, on either side.
pub struct RpcStream<S> {
    framed: Framed<S, LengthDelimitedCodec>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RpcStream<S> {
    /// Frames `io`, refusing any frame longer than `max_frame` bytes: a length prefix is read
    /// before its bytes, so the limit is what stops a forged prefix from allocating gigabytes.
    pub fn new(io: S, max_frame: usize) -> Self {
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(max_frame)
            .new_codec();
        Self {
            framed: Framed::new(io, codec),
        }
    }

    /// Sends one message, encoded into a buffer presized to `size_hint` bytes.
    pub async fn send<T: Serialize>(
        &mut self,
        msg: &T,
        size_hint: usize,
    ) -> Result<(), StreamError> {
        let body = postcard::to_extend(msg, Vec::with_capacity(size_hint))?;
        self.framed.send(Bytes::from(body)).await?;
        Ok(())
    }

    /// Waits for the next frame; `Ok(None)` when the peer closed the connection cleanly.
    pub async fn next_frame(&mut self) -> Result<Option<BytesMut>, StreamError> {
        self.framed
            .next()
            .await
            .transpose()
            .map_err(StreamError::from)
    }

    /// Waits for the next frame and decodes it.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, StreamError> {
        let frame = self.next_frame().await?.ok_or(StreamError::Closed)?;
        Ok(postcard::from_bytes(&frame)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::{CommittedLeaderId, LogId, Vote};
    use raft_store::{NodeId, TypeConfig};
    use tokio::io::AsyncWriteExt;

    type Owned = StreamRequest<AppendEntriesRequest<TypeConfig>, VoteRequest<NodeId>>;

    #[tokio::test]
    async fn requests_cross_a_stream_in_both_shapes() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut client = RpcStream::new(a, 1 << 20);
        let mut server = RpcStream::new(b, 1 << 20);
        let vote = VoteRequest::<NodeId>::new(
            Vote::new(4, 2),
            Some(LogId::new(CommittedLeaderId::new(3, 1), 9)),
        );
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(4, 2),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        client
            .send(
                &StreamRequest::<&AppendEntriesRequest<TypeConfig>, _>::Vote(&vote),
                16,
            )
            .await
            .unwrap();
        client
            .send(
                &StreamRequest::<_, &VoteRequest<NodeId>>::Append(&append),
                16,
            )
            .await
            .unwrap();
        match server.recv::<Owned>().await.unwrap() {
            StreamRequest::Vote(v) => assert_eq!(v, vote),
            other => panic!("expected a vote, got {other:?}"),
        }
        match server.recv::<Owned>().await.unwrap() {
            StreamRequest::Append(a) => assert_eq!(a.vote, append.vote),
            other => panic!("expected an append, got {other:?}"),
        }
        drop(client);
        assert!(matches!(
            server.recv::<Owned>().await,
            Err(StreamError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_forged_length_prefix_is_refused_without_allocating_it() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut server = RpcStream::new(b, 1 << 20);
        // Claims a 4 GiB frame.
        a.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0]).await.unwrap();
        assert!(matches!(
            server.recv::<Owned>().await,
            Err(StreamError::Io(_))
        ));
    }
}
