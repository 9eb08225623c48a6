//! Admission of client requests (`/publish`, `/events`, `/stats`, `/digest`, `GET /cluster`),
//! so that what clients can make a node hold is bounded by bytes and time, not by a count of
//! requests:
//!
//! - at most `--max-client-requests` of them run at once; one more is answered 429 at once;
//! - their bodies share a budget of `--max-inflight-body-mib`: a request is charged its
//!   `Content-Length` (a body of unknown length, chunked, is charged `--max-body-bytes`, the
//!   most it may grow to) BEFORE its body is read, and answered 429 when the budget cannot
//!   cover it. The charge is held until the answer is ready, which covers the wait for group
//!   commit and any forward to the leader, and, for a publish, for as long as its events wait
//!   in the batcher ([`BodyCharge`] travels with them);
//! - each takes at most `--client-request-timeout-ms` in all (503, like a commit timeout:
//!   the outcome of a publish is then unknown and retrying is safe).
//!
//! Raft RPCs (`/raft/*`, long-lived streams and snapshot uploads) and the admin endpoints
//! (waits of minutes, backups of gigabytes) are not routed through here.

use std::sync::Arc;
use std::time::Duration;

use axum::body::HttpBody as _;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::config::Limits;

/// Budget unit: permits are KiB of body.
const UNIT: u64 = 1024;

/// The shared admission state of the client routes; cheap to clone.
#[derive(Clone)]
pub struct ClientLimits(Arc<Inner>);

struct Inner {
    /// One permit per running client request.
    requests: Arc<Semaphore>,
    /// One permit per KiB of request body in flight.
    body_kib: Arc<Semaphore>,
    /// All of `body_kib`'s permits.
    body_total_kib: u32,
    max_body_bytes: usize,
    request_timeout: Duration,
}

/// A request body's share of the budget, released when the last holder drops it: the
/// handler (for the raw body it may forward) and the batcher (for the parsed events).
#[derive(Clone)]
pub struct BodyCharge(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

impl ClientLimits {
    /// The admission state for `limits`.
    pub fn new(limits: &Limits) -> Self {
        let total_kib = (limits.max_inflight_body_bytes / UNIT).clamp(1, u64::from(u32::MAX >> 3));
        let total_kib = u32::try_from(total_kib).unwrap_or(u32::MAX >> 3);
        Self(Arc::new(Inner {
            requests: Arc::new(Semaphore::new(limits.max_client_requests.max(1))),
            body_kib: Arc::new(Semaphore::new(total_kib as usize)),
            body_total_kib: total_kib,
            max_body_bytes: limits.max_body_bytes,
            request_timeout: limits.client_request_timeout,
        }))
    }

    /// KiB of budget a body of `len` bytes is charged (a body of unknown length: the most it
    /// may be), never more than the whole budget, so any one request can be admitted alone.
    fn charge_kib(&self, len: Option<u64>) -> u32 {
        let max = self.0.max_body_bytes as u64;
        let bytes = len.map_or(max, |n| n.min(max));
        let kib = bytes.div_ceil(UNIT).min(u64::from(self.0.body_total_kib));
        u32::try_from(kib).unwrap_or(self.0.body_total_kib)
    }

    /// KiB of body budget not charged to any request right now.
    #[cfg(test)]
    fn available_kib(&self) -> usize {
        self.0.body_kib.available_permits()
    }
}

/// The middleware of the client routes: concurrency, body budget, total time.
pub async fn admit(State(limits): State<ClientLimits>, mut req: Request, next: Next) -> Response {
    let Ok(_running) = limits.0.requests.clone().try_acquire_owned() else {
        return ApiError::overloaded("too many client requests in progress; retry shortly")
            .into_response();
    };
    let hint = req.body().size_hint();
    // An exact hint is the Content-Length (0 for a request without a body); none is chunked.
    let len = hint.exact().or(hint.upper());
    let kib = limits.charge_kib(len);
    // Held here until the answer is ready; the handler may hand clones on (the batcher).
    let mut _charge = None;
    if kib > 0 {
        let Ok(permit) = limits.0.body_kib.clone().try_acquire_many_owned(kib) else {
            return ApiError::overloaded(
                "request bodies in flight are over this node's budget; retry shortly",
            )
            .into_response();
        };
        let charge = BodyCharge(Arc::new(permit));
        req.extensions_mut().insert(charge.clone());
        _charge = Some(charge);
    }
    let timeout = limits.0.request_timeout;
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::unavailable(format!(
            "request not answered within {} ms (--client-request-timeout-ms); a publish may or \
             may not be stored: retrying is safe, events are deduplicated by (topic, event_id)",
            timeout.as_millis()
        ))
        .into_response(),
    }
}

/// 408 for a body that did not arrive within `--body-read-timeout-ms`.
pub fn body_timeout(after: Duration) -> ApiError {
    ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        ..ApiError::bad_request(format!(
            "request body not received within {} ms",
            after.as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    fn limits(budget: u64, requests: usize) -> Limits {
        Limits {
            max_body_bytes: 8 * 1024 * 1024,
            max_batch: 10,
            write_timeout: Duration::from_secs(5),
            leader_wait: Duration::from_secs(2),
            max_inflight_body_bytes: budget,
            body_read_timeout: Duration::from_secs(1),
            max_client_requests: requests,
            client_request_timeout: Duration::from_millis(300),
        }
    }

    /// A route that holds its body's charge until `release` fires, without reading the body.
    fn app(l: &ClientLimits, release: Arc<tokio::sync::Notify>) -> Router {
        Router::new()
            .route(
                "/publish",
                post(move |_req: Request| async move {
                    release.notified().await;
                    StatusCode::OK
                }),
            )
            .route_layer(axum::middleware::from_fn_with_state(l.clone(), admit))
    }

    fn with_length(len: u64) -> Request {
        Request::post("/publish")
            .header("content-length", len)
            .body(Body::from(vec![b' '; len as usize]))
            .unwrap()
    }

    async fn body_json(r: Response) -> serde_json::Value {
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn charges_the_declared_length_and_the_limit_when_unknown() {
        let l = ClientLimits::new(&limits(256 << 20, 10));
        assert_eq!(l.charge_kib(Some(0)), 0);
        assert_eq!(l.charge_kib(Some(1)), 1);
        assert_eq!(l.charge_kib(Some(1025)), 2);
        assert_eq!(l.charge_kib(None), 8 * 1024);
        assert_eq!(l.charge_kib(Some(1 << 40)), 8 * 1024);
        let small = ClientLimits::new(&limits(1 << 20, 10));
        assert_eq!(
            small.charge_kib(None),
            1024,
            "never more than the whole budget"
        );
    }

    /// Once the budget is spent the next request is 429 with Retry-After and a JSON body, and
    /// its body is never read; when the first finishes, its charge comes back.
    #[tokio::test]
    async fn budget_spent_is_429_before_the_body_and_released_after() {
        let l = ClientLimits::new(&limits(3 << 20, 10));
        let release = Arc::new(tokio::sync::Notify::new());
        let first = tokio::spawn(app(&l, release.clone()).oneshot(with_length(2 << 20)));
        while l.available_kib() > 1024 {
            tokio::task::yield_now().await;
        }
        // A body the route would never finish reading: it must not be waited for.
        let (mut tx, body) = {
            let (tx, rx) =
                futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
            (tx, Body::from_stream(rx))
        };
        let second = Request::post("/publish")
            .header("content-length", 2 << 20)
            .body(body)
            .unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            app(&l, release.clone()).oneshot(second),
        )
        .await
        .expect("answered without the body")
        .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(body_json(r).await["error"]
            .as_str()
            .unwrap()
            .contains("budget"));
        tx.close_channel();
        // A small one still fits.
        let release_small = Arc::new(tokio::sync::Notify::new());
        release_small.notify_one();
        let r = app(&l, release_small)
            .oneshot(with_length(1000))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(l.available_kib(), 3 * 1024);
    }

    /// A charge handed on (to the batcher) outlives the request.
    #[tokio::test]
    async fn a_charge_held_elsewhere_keeps_the_budget() {
        let l = ClientLimits::new(&limits(1 << 20, 10));
        let (keep_tx, keep_rx) = std::sync::mpsc::channel::<BodyCharge>();
        let app = Router::new()
            .route(
                "/publish",
                post(move |req: Request| async move {
                    if let Some(c) = req.extensions().get::<BodyCharge>() {
                        let _ = keep_tx.send(c.clone());
                    }
                    StatusCode::OK
                }),
            )
            .route_layer(axum::middleware::from_fn_with_state(l.clone(), admit));
        let r = app.oneshot(with_length(4096)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(l.available_kib(), 1024 - 4);
        drop(keep_rx.recv().unwrap());
        assert_eq!(l.available_kib(), 1024);
    }

    #[tokio::test]
    async fn concurrency_and_total_time_are_bounded() {
        let l = ClientLimits::new(&limits(1 << 20, 1));
        let release = Arc::new(tokio::sync::Notify::new());
        let first = tokio::spawn(app(&l, release.clone()).oneshot(with_length(0)));
        while l.0.requests.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let r = app(&l, release.clone())
            .oneshot(with_length(0))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "1");
        // The first is never released: the total time ends it with a JSON 503.
        let r = first.await.unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body_json(r).await["error"]
            .as_str()
            .unwrap()
            .contains("within 300 ms"));
        assert_eq!(l.0.requests.available_permits(), 1);
    }
}
