//! The body of every error answer (any status but 200).

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// `{"error": "...", "details": [...], "leader_id": N, "earliest_cursor": "C"}`; `details`
/// only when a publish was invalid, `leader_id` only when a 503 knows the leader,
/// `earliest_cursor` only on a 410 (a read after a cursor whose events were trimmed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// Every invalid field of a publish request (400).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
    /// The leader known to the answering node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<NodeId>,
    /// On 410: the earliest cursor the topic still holds; a read `after` it misses nothing.
    /// A string, like every cursor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earliest_cursor: Option<String>,
}

/// One problem with one field of one event of a publish request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct FieldError {
    /// Position of the event in the request (0 for a single event).
    pub index: usize,
    /// The field (`""` when the event itself is wrong, e.g. not an object).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_parts_are_left_out_and_read_back_as_empty() {
        let plain = ErrorBody {
            error: "no leader".into(),
            ..Default::default()
        };
        let text = serde_json::to_string(&plain).unwrap();
        assert_eq!(text, r#"{"error":"no leader"}"#);
        assert_eq!(serde_json::from_str::<ErrorBody>(&text).unwrap(), plain);
        let full = ErrorBody {
            error: "invalid batch".into(),
            details: vec![FieldError {
                index: 2,
                field: "topic".into(),
                reason: "required".into(),
            }],
            leader_id: Some(1),
            earliest_cursor: None,
        };
        let text = serde_json::to_string(&full).unwrap();
        assert_eq!(
            text,
            r#"{"error":"invalid batch","details":[{"index":2,"field":"topic","reason":"required"}],"leader_id":1}"#
        );
    }
}
