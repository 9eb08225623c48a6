//! Follower -> leader forwarding of client requests (publish, linearizable reads, admin):
//! the raw request goes to the leader with a hop header, so a forwarded request is never
//! forwarded again, and the leader's answer (status, body, provenance headers) is returned.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, Method};
use axum::response::Response;
use raft_store::NodeId;

use super::error::ApiError;

/// Header a forwarding node adds; its value is the forwarding node's id.
pub const HOP_HEADER: &str = "x-aggregator-forwarded-by";

/// Request headers passed on to the leader.
const PASS_REQUEST: [HeaderName; 3] = [
    axum::http::header::AUTHORIZATION,
    axum::http::header::CONTENT_TYPE,
    axum::http::header::ACCEPT,
];

/// Whether a request already made its one hop.
pub fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(HOP_HEADER)
}

/// The leader a request is forwarded to.
#[derive(Clone, Copy, Debug)]
pub struct LeaderAddr<'a> {
    /// Leader id.
    pub id: NodeId,
    /// Its address from the membership.
    pub addr: &'a str,
}

/// Sends client requests on to the leader.
///
/// To ensure correctness:
/// - A forwarded request is answered with the leader's own answer (status, body, the
///   provenance and `Retry-After` headers) or with a 503 "maybe" error when the leader did not
///   answer; it never invents a success, and never answers from this node's state.
/// - One hop only: the request carries [`HOP_HEADER`], and a node that receives it serves the
///   request itself or refuses it ([`is_forwarded`]), so a stale leader view cannot make a loop.
/// - The body is sent as the client sent it (publish is retried safely because the cluster
///   deduplicates by `(topic, event_id)`, not because forwarding is exactly-once).
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    id: NodeId,
    scheme: &'static str,
}

impl Forwarder {
    /// A forwarder for node `id` using `client` (pooled, bound like the Raft client), reaching
    /// the leader at its membership address (a peer address: with `--listen-peer` requests
    /// are forwarded over the peer network) with URL `scheme`.
    pub fn new(client: reqwest::Client, id: NodeId, scheme: &'static str) -> Self {
        Self { client, id, scheme }
    }

    /// Forwards one request to the leader and relays its answer.
    pub async fn forward(
        &self,
        to: LeaderAddr<'_>,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, ApiError> {
        let LeaderAddr { id: leader, addr } = to;
        let url = format!("{}://{addr}{path_and_query}", self.scheme);
        let mut rb = self
            .client
            .request(method, url)
            .timeout(timeout)
            .header(HOP_HEADER, self.id.to_string());
        for name in PASS_REQUEST {
            if let Some(v) = headers.get(&name) {
                rb = rb.header(name, v);
            }
        }
        if !body.is_empty() {
            rb = rb.body(body);
        }
        let unavailable = |e: reqwest::Error| {
            tracing::debug!(leader, addr, error = %e, "forwarding to the leader failed");
            ApiError::unavailable(format!("leader {leader} at {addr} did not answer: {e}"))
        };
        let resp = rb.send().await.map_err(unavailable)?;
        // reqwest and axum share the `http` crate: status and headers carry over as they are.
        let status = resp.status();
        let mut out_headers = HeaderMap::new();
        for (name, value) in resp.headers() {
            if passes_back(name.as_str()) {
                out_headers.insert(name.clone(), value.clone());
            }
        }
        let bytes = resp.bytes().await.map_err(unavailable)?;
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        *response.headers_mut() = out_headers;
        Ok(response)
    }

    /// Forwards a `GET` whose answer is a stream (a linearizable subscription) and relays the
    /// leader's body chunk by chunk as it arrives, for as long as it lasts: no total timeout,
    /// only the connect timeout of the client. `Last-Event-ID` goes along, so a reconnect
    /// through a follower resumes where it should.
    pub async fn forward_stream(
        &self,
        to: LeaderAddr<'_>,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let LeaderAddr { id: leader, addr } = to;
        let url = format!("{}://{addr}{path_and_query}", self.scheme);
        let mut rb = self.client.get(url).header(HOP_HEADER, self.id.to_string());
        for name in PASS_REQUEST
            .iter()
            .chain([&HeaderName::from_static("last-event-id")])
        {
            if let Some(v) = headers.get(name) {
                rb = rb.header(name, v);
            }
        }
        let resp = rb.send().await.map_err(|e| {
            tracing::debug!(leader, addr, error = %e, "forwarding a stream to the leader failed");
            ApiError::unavailable(format!("leader {leader} at {addr} did not answer: {e}"))
        })?;
        let status = resp.status();
        let mut out_headers = HeaderMap::new();
        for (name, value) in resp.headers() {
            if passes_back(name.as_str()) {
                out_headers.insert(name.clone(), value.clone());
            }
        }
        // The leader's connection failing mid-stream just ends the body: the client resumes
        // from the last `id:` it received, like after any other cut.
        let chunks = futures::stream::unfold(Some(resp), |resp| async move {
            let mut resp = resp?;
            match resp.chunk().await {
                Ok(Some(chunk)) => Some((Ok::<_, std::io::Error>(chunk), Some(resp))),
                Ok(None) | Err(_) => None,
            }
        });
        let mut response = Response::new(Body::from_stream(chunks));
        *response.status_mut() = status;
        *response.headers_mut() = out_headers;
        Ok(response)
    }
}

impl Forwarder {
    /// `GET path_and_query` on the member at `addr` (a membership address), marked as already
    /// forwarded so that it is served there, with the caller's `Authorization`; the answer's
    /// body when it is 200 within `timeout`, else why not.
    pub async fn get_from_member(
        &self,
        addr: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Bytes, String> {
        let url = format!("{}://{addr}{path_and_query}", self.scheme);
        let mut rb = self
            .client
            .get(url)
            .timeout(timeout)
            .header(HOP_HEADER, self.id.to_string());
        if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
            rb = rb.header(axum::http::header::AUTHORIZATION, v);
        }
        let resp = rb.send().await.map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {} ms", timeout.as_millis())
            } else if e.is_connect() {
                "connection refused or unreachable".to_owned()
            } else {
                e.to_string()
            }
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if status != axum::http::StatusCode::OK {
            return Err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        Ok(body)
    }
}

/// Whether a leader's answer header is relayed to the client.
fn passes_back(name: &str) -> bool {
    matches!(name, "content-type" | "retry-after" | "www-authenticate") || name.starts_with("x-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_provenance_and_retry_after_but_not_framing() {
        assert!(passes_back("x-served-by"));
        assert!(passes_back("retry-after"));
        assert!(passes_back("content-type"));
        assert!(!passes_back("content-length"));
        assert!(!passes_back("transfer-encoding"));
        assert!(!passes_back("connection"));
    }
}
