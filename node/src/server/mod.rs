//! The node's listeners: accepting connections, the optional TLS handshake ([`tls`]), the
//! bound on open connections, the header read timeout, and serving a router over HTTP/1.1
//! (with upgrades, which the Raft RPC stream is) until a stop signal, then draining.
//!
//! A node has one listener, or two with `--listen-peer`: the client listener then serves the
//! client API only, and the peer listener `/raft/*` plus the client API for requests that
//! followers forward to the leader (see docs/architecture.md, "Listeners").
//!
//! What a connection can hold is bounded before any request is read: at most
//! `max_connections` are open per listener (one more is answered a canned 503 and closed on a
//! plain listener, closed after accept on a TLS one), a TLS handshake has
//! [`HANDSHAKE_TIMEOUT`], and a request's headers must arrive within `--header-read-timeout-ms`,
//! which also closes a connection left idle that long between requests. Bodies, request counts
//! and request time are bounded per route by `api::limits`.

pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// How long a TLS client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time spent answering and closing a connection over the limit.
const REFUSE_LINGER: Duration = Duration::from_millis(500);
/// Pause after an accept error such as "too many open files", so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The answer to a connection over the limit on a plain listener.
const OVER_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 70\r\n\r\n\
{\"error\":\"too many open connections to this node; retry in a second\"}\n";

/// One listener's settings.
#[derive(Clone)]
pub struct Listener {
    /// `client` or `peer`: the metrics label and the log field.
    pub name: &'static str,
    /// Open connections at most.
    pub max_connections: usize,
    /// The TLS configuration, or plain TCP.
    pub tls: Option<TlsAcceptor>,
    /// How long a client may take to send a request's headers, and a connection may sit idle
    /// between requests.
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` turns true, then stops accepting and waits for
/// the open connections to finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Listener,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    let name = settings.name;
    let open = metrics.connections_open.with_label_values(&[name]);
    let rejected = metrics.connections_rejected.with_label_values(&[name]);
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Per-connection failures (a reset before accept) and resource exhaustion
                // (EMFILE) alike: the listener itself is fine, keep going.
                tracing::debug!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            rejected.inc();
            tracing::debug!(listener = name, %remote, "connection refused: at --max-connections");
            if settings.tls.is_none() {
                tokio::spawn(refuse(tcp));
            }
            continue;
        };
        // Small request/response exchanges: Nagle would add delayed-ACK stalls.
        let _ = tcp.set_nodelay(true);
        let http = http.clone();
        let service = TowerToHyperService::new(router.clone());
        let tls = settings.tls.clone();
        let stop = stop.clone();
        let open = open.clone();
        tracker.spawn(async move {
            open.inc();
            match tls {
                None => serve_connection(&http, tcp, service, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_connection(&http, stream, service, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(listener = name, %remote, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, %remote, "TLS handshake timed out");
                        }
                    }
                }
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Answers a connection over the limit with a 503 and closes it. The request it may already
/// have sent is read and dropped for a moment first: closing a socket with unread input sends
/// a reset, which could reach the client before the answer does. Bounded in bytes and time.
async fn refuse(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let linger = async {
        tcp.write_all(OVER_LIMIT_RESPONSE).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if tcp.read(&mut sink).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSE_LINGER, linger).await;
}

/// Resolves once `stop` is true (or its sender is gone). Holds no borrow of the channel when
/// done, so a task waiting on it stays `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves one connection; on stop, lets its current request finish and closes it.
async fn serve_connection<S>(
    http: &hyper::server::conn::http1::Builder,
    io: S,
    service: TowerToHyperService<Router>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_limit_answer_is_well_formed_json() {
        let text = std::str::from_utf8(OVER_LIMIT_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len(), "content-length must match the body");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].is_string());
    }
}
