//! The HTTP surface of a node: the router, the client and admin bearer-token and
//! cluster-secret checks, per-route request metrics, and JSON answers for unknown routes and
//! methods. The handlers are the submodules; the state they share is [`state`]. Imports go
//! one way: this file uses the handlers, the handlers use `state` and each other, never this
//! file.

pub mod admin;
pub mod backup;
pub mod consistency;
pub mod consumers;
pub mod error;
pub mod forward;
#[cfg(test)]
mod fuzz_tests;
pub mod health;
pub mod limits;
pub mod openapi;
pub mod overview;
pub mod publish;
pub mod raft_rpc;
pub mod read;
pub mod retention;
pub mod snapshot_intake;
pub mod state;
pub mod subscribe;
pub mod ui;
pub mod validate;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::raft::wire::{path, raft_message_limit, SECRET_HEADER};
use error::ApiError;
pub use state::{AppState, Handles, Shared};

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// Every route: the one listener of a node without `--listen-peer`, and the peer listener
    /// (Raft RPCs, and the client API for requests followers forward to the leader).
    All,
    /// The client listener of a node with `--listen-peer`: everything but `/raft/*`.
    Client,
}

/// Builds the router with the routes of `surface` and every layer.
pub fn router(state: AppState, surface: Surface) -> Router {
    let raft_limit = raft_message_limit(state.limits.max_body_bytes);
    let raft = Router::new()
        .route(path::STREAM, get(raft_rpc::stream))
        .route(path::APPEND, post(raft_rpc::append))
        .route(path::VOTE, post(raft_rpc::vote))
        .route(path::SNAPSHOT, post(raft_rpc::snapshot))
        .route(path::STATUS, get(raft_rpc::status))
        .layer(DefaultBodyLimit::max(raft_limit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_secret,
        ));
    // One budget for every client route: publishes and reads draw on the same bytes, count
    // and time (limits.rs).
    let client_limits = limits::ClientLimits::new(&state.limits);
    let publish = Router::new()
        .route("/publish", post(publish::publish))
        // Durable consumers: creating, deleting, taking deliveries and acknowledging change
        // state, so they need the client token like a publish.
        .route("/consumers", post(consumers::create))
        .route(
            "/consumers/{name}",
            axum::routing::delete(consumers::delete),
        )
        .route("/consumers/{name}/next", get(consumers::next))
        .route("/consumers/{name}/ack", post(consumers::ack))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Outermost: bounds every client request's count, body bytes and time (limits.rs).
        .route_layer(middleware::from_fn_with_state(
            client_limits.clone(),
            limits::admit,
        ));
    let client = Router::new()
        .route("/events", get(read::events))
        .route("/stats", get(read::stats))
        .route("/digest", get(read::digest))
        .route("/cluster", get(admin::cluster))
        .route("/cluster/overview", get(overview::overview))
        .route("/retention", get(retention::get))
        .route("/consumers", get(consumers::list))
        .route("/consumers/{name}", get(consumers::get))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read))
        .route_layer(middleware::from_fn_with_state(client_limits, limits::admit));
    // Streams last as long as their subscribers: outside the client routes' total time and
    // count, under their own limit (`--max-subscriptions`, subscribe/mod.rs).
    let streams = Router::new()
        .route("/subscribe", get(subscribe::subscribe))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read));
    let admin = Router::new()
        .route("/cluster/learners", post(admin::add_learner))
        .route("/cluster/membership", post(admin::change_membership))
        .route("/cluster/snapshot", post(admin::build_snapshot))
        .route("/backup", get(backup::backup))
        .route("/retention/default", put(retention::put_default))
        .route("/retention/dedup_window", put(retention::put_dedup_window))
        .route(
            "/retention/topics/{*topic}",
            put(retention::put_topic).delete(retention::delete_topic),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let open = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/ui", get(ui::page))
        .route("/ui/app.js", get(ui::script))
        .route("/openapi.json", get(openapi::serve));
    let base = match surface {
        Surface::All => Router::new().merge(raft),
        Surface::Client => Router::new(),
    };
    base.merge(publish)
        .merge(client)
        .merge(streams)
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

/// 401 with `WWW-Authenticate: Bearer`.
fn unauthorized(msg: &'static str) -> Response {
    let mut r = ApiError::unauthorized(msg).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// Whether `given` is the configured `token`.
fn is_token(given: &str, token: &Option<String>) -> bool {
    token
        .as_ref()
        .is_some_and(|t| constant_time_eq(given.as_bytes(), t.as_bytes()))
}

/// The read-only token is known but may not do this: 403.
fn read_only() -> Response {
    ApiError::forbidden("the read-only token may not do this: use the client or admin token")
        .into_response()
}

/// Requires `Authorization: Bearer <--api-token>` when a token is configured (`/publish`);
/// the read-only token gets 403.
async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.api_token.is_some() {
        let given = bearer(req.headers()).unwrap_or("");
        if is_token(given, &st.read_token) {
            return read_only();
        }
        if !is_token(given, &st.api_token) {
            return unauthorized("missing or wrong bearer token");
        }
    }
    next.run(req).await
}

/// Requires the client token or the read-only token when a client token is configured
/// (the read routes).
async fn require_read(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.api_token.is_some() {
        let given = bearer(req.headers()).unwrap_or("");
        if !is_token(given, &st.api_token) && !is_token(given, &st.read_token) {
            return unauthorized("missing or wrong bearer token");
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
            if is_token(given, &st.read_token) {
                return read_only();
            }
            if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
                return unauthorized("missing or wrong admin bearer token");
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

/// Compares in constant time (the `subtle` crate), so timing does not reveal how much of a
/// secret matched; only the length of `b`, the configured secret, may show.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
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
