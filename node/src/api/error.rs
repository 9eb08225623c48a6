//! Every error answer of the API: `ApiError` becomes a JSON body ([`api_types::ErrorBody`],
//! `{"error": "...", "details": [...]}`) with the right status code and, for 429 and 503, a
//! `Retry-After` header. Axum's own rejections (plain text by default) are mapped here too.

use api_types::{ErrorBody, FieldError};
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use raft_store::NodeId;

/// Seconds a client should wait before retrying a 429 or 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// Per-field problems (publish validation).
    pub details: Vec<FieldError>,
    /// Leader known to the answering node, reported on 503.
    pub leader_id: Option<NodeId>,
    /// On 410, the earliest cursor still held.
    pub earliest_cursor: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: Vec::new(),
            leader_id: None,
            earliest_cursor: None,
        }
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 400 listing every invalid field.
    pub fn invalid(details: Vec<FieldError>) -> Self {
        let n = details.len();
        Self {
            details,
            ..Self::new(
                StatusCode::BAD_REQUEST,
                format!("invalid batch: {n} problem(s); nothing was stored"),
            )
        }
    }

    /// 413 with a message.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: authenticated or not, this request is not allowed here.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this path",
        )
    }

    /// 426: the endpoint speaks only an upgraded protocol.
    pub fn upgrade_required(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UPGRADE_REQUIRED, message)
    }

    /// 410: the events after the cursor asked for were trimmed; `earliest` is the earliest
    /// cursor still held.
    pub fn trimmed(message: impl Into<String>, earliest: u64) -> Self {
        Self {
            earliest_cursor: Some(earliest),
            ..Self::new(StatusCode::GONE, message)
        }
    }

    /// 409 (a cluster change conflicts with the current state).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 429 + Retry-After.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    /// 503 + Retry-After.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// Adds the leader this node knows.
    pub fn with_leader(mut self, leader: Option<NodeId>) -> Self {
        self.leader_id = leader;
        self
    }

    /// The JSON body ([`ErrorBody`]).
    pub fn body_json(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: self.message.clone(),
            details: self.details.clone(),
            leader_id: self.leader_id,
            earliest_cursor: self.earliest_cursor.map(|c| c.to_string()),
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.body_json()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(format!("bad query string: {}", r.body_text()))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        Self::new(status, format!("bad JSON body: {}", r.body_text()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        Self::new(
            status,
            format!("could not read the body: {}", r.body_text()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(e: &ApiError) -> serde_json::Value {
        serde_json::from_slice(&e.body_json()).unwrap()
    }

    #[test]
    fn validation_errors_list_every_field() {
        let e = ApiError::invalid(vec![
            FieldError {
                index: 0,
                field: "topic".into(),
                reason: "required".into(),
            },
            FieldError {
                index: 2,
                field: "payload".into(),
                reason: "too large".into(),
            },
        ]);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let v = json(&e);
        assert!(v["error"].as_str().unwrap().contains("invalid batch"));
        assert_eq!(
            v["details"][0],
            serde_json::json!({"index": 0, "field": "topic", "reason": "required"})
        );
        assert_eq!(v["details"][1]["index"], 2);
    }

    #[test]
    fn plain_errors_have_no_details_and_retry_after_on_503_and_429() {
        let e = ApiError::unavailable("no leader").with_leader(None);
        assert_eq!(json(&e), serde_json::json!({"error": "no leader"}));
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = ApiError::overloaded("busy").into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = ApiError::bad_request("x").into_response();
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn a_trimmed_cursor_is_410_naming_the_earliest_cursor_as_a_string() {
        let e = ApiError::trimmed("trimmed", 41);
        assert_eq!(e.status, StatusCode::GONE);
        assert_eq!(
            json(&e),
            serde_json::json!({"error": "trimmed", "earliest_cursor": "41"})
        );
    }

    #[test]
    fn leader_is_reported_when_known() {
        let e = ApiError::unavailable("not the leader").with_leader(Some(2));
        assert_eq!(json(&e)["leader_id"], 2);
    }
}
