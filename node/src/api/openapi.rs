//! The OpenAPI 3.1 document of the client API, served at `GET /openapi.json` and checked in as
//! docs/openapi.json (a unit test fails when the two differ: run
//! `UPDATE_OPENAPI=1 cargo test --release -p node openapi` to rewrite the file).
//!
//! Schemas are derived from the `api-types` bodies (their `openapi` feature); the operations
//! are declared here, one stub per route, rather than on the handlers, so the document reads
//! in one place. A test checks that every client route of the router has an operation here,
//! and the schema-driven fuzz run in CI (schemathesis, docs/development.md) checks that the
//! answers of a live node match the document. `/raft/*` (node to node, postcard) and the
//! dashboard's page are not part of the client API and are left out.

// The stubs exist only to carry their `#[utoipa::path]` attributes.
#![allow(dead_code)]

use api_types::{
    AckRequest, AckResponse, ClusterOverview, ClusterResponse, ConsistencyLevel, ConsumerInfo,
    ConsumerList, ConsumerRequest, DedupWindowRequest, DigestResponse, ErrorBody, EventsPage,
    LearnerRequest, MembershipRequest, NextBatch, PublishEvent, PublishResponse, RetentionPolicy,
    RetentionResponse, SnapshotResponse, StatsResponse, StreamEnd,
};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// One event as `POST /publish` takes it, payload any JSON value.
type Event = PublishEvent<'static, serde_json::Value>;

/// `POST /publish` takes one event or a non-empty array of them (the derive cannot bound an
/// enum variant's array, so this schema is assembled here around the derived event schema).
struct PublishBody;

impl utoipa::PartialSchema for PublishBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder};
        use utoipa::openapi::Ref;
        let event = Ref::from_schema_name(<Event as ToSchema>::name());
        OneOfBuilder::new()
            .item(event.clone())
            .item(
                ArrayBuilder::new()
                    .items(event)
                    .min_items(Some(1))
                    .max_items(Some(crate::config::DEFAULT_MAX_BATCH))
                    .description(Some(
                        "A batch: at least one event, at most --max-batch (default shown)",
                    )),
            )
            .description(Some("One event, or an array of events"))
            .into()
    }
}

impl ToSchema for PublishBody {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            <Event as ToSchema>::name().into_owned(),
            <Event as utoipa::PartialSchema>::schema(),
        ));
        <Event as ToSchema>::schemas(schemas);
    }
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
struct HealthBody {
    /// Always `ok`.
    status: String,
    /// The answering node.
    node_id: u64,
}

/// `GET /ready`.
#[derive(Serialize, ToSchema)]
struct ReadyBody {
    /// Whether the node is ready (the status is 200 exactly then).
    ready: bool,
    /// The answering node.
    node_id: u64,
    /// Its role.
    role: String,
    /// The leader it knows.
    leader_id: Option<u64>,
    /// Its applied index.
    applied_index: u64,
    /// The commit index it knows.
    committed_index: Option<u64>,
}

#[utoipa::path(post, path = "/publish", tag = "publish",
    request_body(content = PublishBody, content_type = "application/json",
        description = "One event or an array of events (docs/api.md, POST /publish)"),
    responses(
        (status = 200, description = "Committed on a quorum and applied", body = PublishResponse),
        (status = 400, description = "Invalid events, bad JSON or content type; nothing stored", body = ErrorBody),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 403, description = "The read-only token may not publish", body = ErrorBody),
        (status = 408, description = "Body not received in time", body = ErrorBody),
        (status = 413, description = "Body or batch too large", body = ErrorBody),
        (status = 429, description = "Over a limit; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "No leader, not committed in time: outcome unknown, retry", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn publish() {}

#[utoipa::path(get, path = "/events", tag = "read",
    params(
        ("topic" = Option<String>, Query, min_length = 1, description = "Events of this topic (exactly one of topic and source)"),
        ("source" = Option<String>, Query, min_length = 1, description = "Events of this producer"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
        ("limit" = Option<u32>, Query, description = "Events per page, 1 to 1,000 (default 100)", minimum = 1, maximum = 1000),
        ("consistency" = Option<ConsistencyLevel>, Query, description = "linearizable (default) or eventual"),
    ),
    responses(
        (status = 200, description = "One page", body = EventsPage),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
        (status = 503, description = "No leader for a linearizable read", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn events() {}

#[utoipa::path(get, path = "/stats", tag = "read",
    params(("consistency" = Option<ConsistencyLevel>, Query, description = "linearizable (default) or eventual")),
    responses(
        (status = 200, description = "Counters, topics, producers, Raft progress", body = StatsResponse),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
        (status = 503, description = "No leader for a linearizable read", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn stats() {}

#[utoipa::path(get, path = "/digest", tag = "read",
    responses(
        (status = 200, description = "This node's applied state", body = DigestResponse),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn digest() {}

#[utoipa::path(get, path = "/cluster/overview", tag = "cluster",
    responses(
        (status = 200, description = "Every member as this node sees it", body = ClusterOverview),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn cluster_overview() {}

#[utoipa::path(get, path = "/retention", tag = "retention",
    responses(
        (status = 200, description = "Policies in force, earliest cursors, trimmed totals", body = RetentionResponse),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
        (status = 503, description = "No leader", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn retention_get() {}

#[utoipa::path(put, path = "/retention/default", tag = "retention",
    request_body(content = RetentionPolicy, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed; the policies now in force", body = RetentionResponse),
        (status = 400, description = "Bad policy; nothing changed", body = ErrorBody),
        (status = 401, description = "Admin token required", body = ErrorBody),
        (status = 403, description = "Not the admin token, or admin endpoints disabled", body = ErrorBody),
        (status = 503, description = "No leader, or not committed in time", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn retention_put_default() {}

#[utoipa::path(put, path = "/retention/topics/{topic}", tag = "retention",
    params(("topic" = String, Path, description = "The topic (a `/` in it percent-encoded as %2F)")),
    request_body(content = RetentionPolicy, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed; the policies now in force", body = RetentionResponse),
        (status = 400, description = "Bad policy or topic; nothing changed", body = ErrorBody),
        (status = 401, description = "Admin token required", body = ErrorBody),
        (status = 403, description = "Not the admin token, or admin endpoints disabled", body = ErrorBody),
        (status = 503, description = "No leader, or not committed in time", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn retention_put_topic() {}

#[utoipa::path(put, path = "/retention/dedup_window", tag = "retention",
    request_body(content = DedupWindowRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed; the policies and window now in force", body = RetentionResponse),
        (status = 400, description = "Bad window; nothing changed", body = ErrorBody),
        (status = 401, description = "Admin token required", body = ErrorBody),
        (status = 403, description = "Not the admin token, or admin endpoints disabled", body = ErrorBody),
        (status = 503, description = "No leader, or not committed in time", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn retention_put_dedup_window() {}

#[utoipa::path(delete, path = "/retention/topics/{topic}", tag = "retention",
    params(("topic" = String, Path, description = "The topic (a `/` in it percent-encoded as %2F)")),
    responses(
        (status = 200, description = "Committed; the topic follows the default again", body = RetentionResponse),
        (status = 400, description = "Bad topic; nothing changed", body = ErrorBody),
        (status = 401, description = "Admin token required", body = ErrorBody),
        (status = 403, description = "Not the admin token, or admin endpoints disabled", body = ErrorBody),
        (status = 503, description = "No leader, or not committed in time", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn retention_delete_topic() {}

#[utoipa::path(post, path = "/consumers", tag = "consumers",
    request_body(content = ConsumerRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created: committed and applied on the leader", body = ConsumerInfo),
        (status = 200, description = "The same consumer exists already (idempotent)", body = ConsumerInfo),
        (status = 400, description = "Bad name, pattern, from, ack_wait or max_ack_pending; nothing changed", body = ErrorBody),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 403, description = "The read-only token may not do this", body = ErrorBody),
        (status = 409, description = "A consumer of that name exists with another definition, or the cluster holds 1,000", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
        (status = 503, description = "No leader, or not committed in time", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn consumers_create() {}

#[utoipa::path(get, path = "/consumers", tag = "consumers",
    responses(
        (status = 200, description = "Every consumer, from the answering node's applied state", body = ConsumerList),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
        (status = 503, description = "The node's state is being replaced by a snapshot", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn consumers_list() {}

#[utoipa::path(get, path = "/consumers/{name}", tag = "consumers",
    params(("name" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$", description = "The consumer")),
    responses(
        (status = 200, description = "Definition, acknowledged position, pending, lag", body = ConsumerInfo),
        (status = 400, description = "Not a consumer name", body = ErrorBody),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
        (status = 503, description = "The node's state is being replaced by a snapshot", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn consumers_get() {}

#[utoipa::path(delete, path = "/consumers/{name}", tag = "consumers",
    params(("name" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$", description = "The consumer")),
    responses(
        (status = 204, description = "Deleted: committed and applied on the leader"),
        (status = 400, description = "Not a consumer name", body = ErrorBody),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 403, description = "The read-only token may not do this", body = ErrorBody),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
        (status = 503, description = "No leader, or not committed in time", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn consumers_delete() {}

#[utoipa::path(get, path = "/consumers/{name}/next", tag = "consumers",
    params(
        ("name" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$", description = "The consumer"),
        ("batch" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Most events to answer (default 100); the answer also stops past 1 MiB"),
        ("wait" = Option<String>, Query, description = "Long poll: wait up to this long for the first event, `<digits>ms|s|m`, at most 20s (default: answer at once)"),
    ),
    responses(
        (status = 200, description = "Up to `batch` deliveries in commit order (none when the wait ended first)", body = NextBatch),
        (status = 400, description = "Bad name, batch or wait", body = ErrorBody),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 403, description = "The read-only token may not do this", body = ErrorBody),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
        (status = 503, description = "The node's state is being replaced by a snapshot", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn consumers_next() {}

#[utoipa::path(post, path = "/consumers/{name}/ack", tag = "consumers",
    params(("name" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$", description = "The consumer")),
    request_body(content = AckRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The acknowledged position, committed and applied on the leader", body = AckResponse),
        (status = 400, description = "Bad body, or a cursor beyond what exists or was delivered; nothing changed", body = ErrorBody),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 403, description = "The read-only token may not do this", body = ErrorBody),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 409, description = "Listed cursors sent to a node that has nothing of this consumer out for delivery", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
        (status = 503, description = "No leader, or not committed in time", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn consumers_ack() {}

#[utoipa::path(get, path = "/subscribe", tag = "read",
    params(
        ("topic" = String, Query, min_length = 1, description = "Topic pattern: `.` or `/` separated segments, `*` one segment, `>` the rest"),
        ("source" = Option<String>, Query, description = "Only this producer's events"),
        ("from" = Option<String>, Query, description = "earliest, latest, a cursor, or an RFC 3339 time"),
        ("consistency" = Option<ConsistencyLevel>, Query, description = "eventual (default: this node's applied state) or linearizable"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor (wins over from=)"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `event: consistency` first, then one message per event (`id:` its cursor, `data:` the event as /events returns it), heartbeat comments, and `event: end` with a StreamEnd when the node ends the stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad pattern, cursor, time or level", body = ErrorBody),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 429, description = "Too many streams on this node", body = ErrorBody),
        (status = 503, description = "Stopping, or no leader for a linearizable stream", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn subscribe() {}

#[utoipa::path(get, path = "/cluster", tag = "cluster",
    responses(
        (status = 200, description = "Membership and progress, from the leader when reachable", body = ClusterResponse),
        (status = 401, description = "Token required", body = ErrorBody),
        (status = 429, description = "Over a limit", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn cluster() {}

#[utoipa::path(post, path = "/cluster/learners", tag = "cluster",
    request_body(content = LearnerRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Added and caught up", body = ClusterResponse),
        (status = 400, description = "Bad body, id or address", body = ErrorBody),
        (status = 401, description = "Admin token required", body = ErrorBody),
        (status = 403, description = "Not the admin token, or admin endpoints disabled", body = ErrorBody),
        (status = 409, description = "The id or address is a member's, or a change is in progress", body = ErrorBody),
        (status = 503, description = "No leader, or not done within 60 s", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn cluster_learners() {}

#[utoipa::path(post, path = "/cluster/membership", tag = "cluster",
    request_body(content = MembershipRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed", body = ClusterResponse),
        (status = 400, description = "Bad body, empty or unknown voters", body = ErrorBody),
        (status = 401, description = "Admin token required", body = ErrorBody),
        (status = 403, description = "Not the admin token, or admin endpoints disabled", body = ErrorBody),
        (status = 409, description = "A change is in progress", body = ErrorBody),
        (status = 503, description = "No leader, or not done within 60 s", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn cluster_membership() {}

#[utoipa::path(post, path = "/cluster/snapshot", tag = "cluster",
    responses(
        (status = 200, description = "This node's snapshot after the build", body = SnapshotResponse),
        (status = 401, description = "Admin token required", body = ErrorBody),
        (status = 403, description = "Not the admin token, or admin endpoints disabled", body = ErrorBody),
        (status = 503, description = "The build did not finish in time", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn cluster_snapshot() {}

#[utoipa::path(get, path = "/backup", tag = "cluster",
    params(("fresh" = Option<bool>, Query, description = "Build a new snapshot first (default true)")),
    responses(
        (status = 200, description = "The backup file (restore it with `aggregator restore`)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Admin token required", body = ErrorBody),
        (status = 403, description = "Not the admin token, or admin endpoints disabled", body = ErrorBody),
        (status = 409, description = "`fresh=false` on a node that has no snapshot yet", body = ErrorBody),
        (status = 503, description = "No snapshot could be made", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
fn backup() {}

#[utoipa::path(get, path = "/health", tag = "probes",
    responses((status = 200, description = "The process answers", body = HealthBody)))]
fn health() {}

#[utoipa::path(get, path = "/ready", tag = "probes",
    responses(
        (status = 200, description = "Ready", body = ReadyBody),
        (status = 503, description = "Not ready", body = ReadyBody),
    ))]
fn ready() {}

#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition format", body = String,
        content_type = "text/plain")))]
fn metrics() {}

/// Declares the bearer scheme the operations refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "--api-token (publish and read), --read-token (read) or --admin-token",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "aggregator client API", description = "docs/api.md says what each answer guarantees."),
    // Schemas are collected from the operations' bodies, recursively.
    paths(
        publish, events, subscribe, stats, digest, cluster, cluster_overview, cluster_learners,
        cluster_membership, cluster_snapshot, backup, retention_get, retention_put_default,
        retention_put_topic, retention_put_dedup_window, retention_delete_topic, consumers_create, consumers_list,
        consumers_get, consumers_delete, consumers_next, consumers_ack, health, ready, metrics
    ),
    // The last message of a stream (`event: end`), which no operation's body names.
    components(schemas(StreamEnd)),
    modifiers(&BearerAuth),
    tags(
        (name = "publish", description = "Writing events"),
        (name = "read", description = "Reading events and counters"),
        (name = "cluster", description = "Membership and administration"),
        (name = "retention", description = "How long events are kept"),
        (name = "consumers", description = "Durable consumers: server-side positions, at least once"),
        (name = "probes", description = "Health, readiness and metrics (no token)"),
    )
)]
pub struct ApiDoc;

/// The document as served and checked in: pretty JSON with a final newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// `GET /openapi.json`
pub async fn serve() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKED_IN: &str = "../docs/openapi.json";

    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKED_IN);
        let generated = document();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "docs/openapi.json differs from the document the code generates: run \
             `UPDATE_OPENAPI=1 cargo test --release -p node openapi` and commit the file"
        );
    }

    /// Whether a concrete path fits a documented template (`{name}` is one segment or more).
    fn matches(template: &str, path: &str) -> bool {
        let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
        t.len() <= p.len()
            && t.iter().zip(&p).all(|(t, p)| t.starts_with('{') || t == p)
            && (t.len() == p.len() || t.last().is_some_and(|l| l.starts_with('{')))
    }

    /// Routes outside the client API: node to node, the dashboard page, the document itself.
    fn undocumented(path: &str) -> bool {
        path.starts_with("/raft/") || path.starts_with("/ui") || path == "/openapi.json"
    }

    #[test]
    fn every_client_route_is_documented() {
        let doc = ApiDoc::openapi();
        // The fuzzer's list of every route the router serves.
        for (method, path) in super::super::fuzz_tests::ROUTES {
            if undocumented(path) {
                continue;
            }
            // Any fitting template with the method: `/consumers/{name}` also fits
            // `/consumers/c1/ack`, which `/consumers/{name}/ack` documents.
            let has_method = doc
                .paths
                .paths
                .iter()
                .filter(|(template, _)| matches(template, path))
                .any(|(_, item)| match *method {
                    "GET" => item.get.is_some(),
                    "POST" => item.post.is_some(),
                    "PUT" => item.put.is_some(),
                    "DELETE" => item.delete.is_some(),
                    _ => false,
                });
            assert!(
                has_method,
                "{method} {path} is routed but not in the OpenAPI document"
            );
        }
    }
}
