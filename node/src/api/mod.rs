//! The HTTP surface of a node: the router, the shared state every handler sees, the client
//! and admin bearer-token and cluster-secret checks, per-route request metrics, and JSON answers for unknown routes
//! and methods.

pub mod admin;
pub mod backup;
pub mod consistency;
pub mod error;
pub mod health;
pub mod publish;
pub mod raft_rpc;
pub mod read;
pub mod snapshot_intake;
pub mod validate;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use raft_store::{NodeId, StoreReader};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::batcher::Batcher;
use crate::cluster::{LeaderContact, Raft};
use crate::config::{Limits, RaftTiming};
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::network::{raft_message_limit, SECRET_HEADER};
use error::ApiError;
use snapshot_intake::SnapshotIntake;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The shared parts of [`AppState`].
pub struct Shared {
    /// This node's id.
    pub id: NodeId,
    /// The Raft handle.
    pub raft: Raft,
    /// Read access to the state machine.
    pub reader: StoreReader,
    /// Group commit.
    pub batcher: Batcher,
    /// Forwarding to the leader.
    pub forwarder: Forwarder,
    /// What the leader's appends told us.
    pub contact: Arc<LeaderContact>,
    /// Admission of incoming snapshot chunks.
    pub snapshot_intake: SnapshotIntake,
    /// Elections off while a snapshot is received and installed.
    pub election_hold: Arc<crate::election_hold::ElectionHold>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Request limits.
    pub limits: Limits,
    /// Raft timers.
    pub timing: RaftTiming,
    /// Client bearer token.
    pub api_token: Option<String>,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Inter-node secret.
    pub cluster_secret: Option<String>,
    /// Process start, for `uptime_seconds`.
    pub started: Instant,
}

impl AppState {
    /// Wraps the shared parts.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    /// A leader that has not heard from a quorum for this long may have been replaced: it no
    /// longer takes writes or leads reads. openraft followers that know a leader wait a lease
    /// (`election_timeout_max`) plus their election timeout (at least `election_timeout_min`)
    /// before campaigning, so no other leader can exist sooner.
    pub fn quorum_silence_ms(&self) -> u64 {
        self.timing.election_max_ms + self.timing.election_min_ms
    }

    /// Address of a member, from the current membership.
    pub fn member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }
}

/// Builds the router with every route and layer.
pub fn router(state: AppState) -> Router {
    let raft_limit = raft_message_limit(state.limits.max_body_bytes);
    let raft = Router::new()
        .route("/raft/stream", get(raft_rpc::stream))
        .route("/raft/append", post(raft_rpc::append))
        .route("/raft/vote", post(raft_rpc::vote))
        .route("/raft/snapshot", post(raft_rpc::snapshot))
        .route("/raft/status", get(raft_rpc::status))
        .layer(DefaultBodyLimit::max(raft_limit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_secret,
        ));
    let client = Router::new()
        .route("/publish", post(publish::publish))
        .route("/events", get(read::events))
        .route("/stats", get(read::stats))
        .route("/digest", get(read::digest))
        .route("/cluster", get(admin::cluster))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let admin = Router::new()
        .route("/cluster/learners", post(admin::add_learner))
        .route("/cluster/membership", post(admin::change_membership))
        .route("/cluster/snapshot", post(admin::build_snapshot))
        .route("/backup", get(backup::backup))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let open = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics));
    Router::new()
        .merge(raft)
        .merge(client)
        .merge(admin)
        .merge(open)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        // 5xx (e.g. 503 during an election) are answers, not server faults: keep them at debug.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        .with_state(state)
}

/// Counts and times every request by matched route.
async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .latency
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    st.metrics
        .requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    resp
}

/// Requires `Authorization: Bearer <--api-token>` when a token is configured.
async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.api_token {
        let given = bearer(req.headers()).unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            let mut r = ApiError::unauthorized("missing or wrong bearer token").into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

/// Requires `Authorization: Bearer <--admin-token>`. A node with a client token and no admin
/// token refuses every admin request: the client token never grants membership changes or
/// backups. Only a node with no token at all (a local trial) leaves them open.
async fn require_admin(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match (&st.admin_token, &st.api_token) {
        (Some(token), _) => {
            let given = bearer(req.headers()).unwrap_or("");
            if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
                let mut r =
                    ApiError::unauthorized("missing or wrong admin bearer token").into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
        }
        (None, Some(_)) => {
            return ApiError::forbidden(
                "administrative endpoints are disabled on this node: start it with --admin-token",
            )
            .into_response()
        }
        (None, None) => {}
    }
    next.run(req).await
}

/// Requires the cluster secret header on `/raft/*` when a secret is configured.
async fn require_secret(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(secret) = &st.cluster_secret {
        let given = req
            .headers()
            .get(SECRET_HEADER)
            .map_or(&[][..], |v| v.as_bytes());
        if !constant_time_eq(given, secret.as_bytes()) {
            return ApiError::unauthorized("missing or wrong cluster secret").into_response();
        }
    }
    next.run(req).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without an early exit, so timing does not reveal how much of a secret matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in b.iter().enumerate() {
        diff |= x ^ a.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
