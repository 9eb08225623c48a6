//! Retention: the body of `PUT /retention/default` and `PUT /retention/topics/{topic}`, and
//! the answer of `GET /retention` (and of every change).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Limits on what a topic keeps; the oldest events past any limit that is set are trimmed.
/// All unset (`{}`): keep everything. As a request body, an unknown field is refused (a
/// misspelt limit must not pass for "no limit").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Trim events stored more than this many milliseconds ago (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 9223372036854775807_u64)
    )]
    pub max_age_ms: Option<u64>,
    /// Keep at most this many events (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 9223372036854775807_u64)
    )]
    pub max_events: Option<u64>,
    /// Keep at most this many bytes of events, counted as stored (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 9223372036854775807_u64)
    )]
    pub max_bytes: Option<u64>,
}

/// `GET /retention`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct RetentionResponse {
    /// The policy of every topic without one of its own.
    pub default: RetentionPolicy,
    /// Topics with a policy of their own.
    pub topics: BTreeMap<String, RetentionPolicy>,
    /// Per topic that was trimmed, the earliest cursor still held: `GET /events?after=` it or
    /// later misses nothing; below it answers 410.
    pub earliest_cursors: BTreeMap<String, String>,
    /// Events deleted by trims.
    pub trimmed_events: u64,
    /// Their bytes, as stored.
    pub trimmed_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_leaves_out_what_is_unset_and_refuses_unknown_fields() {
        let p = RetentionPolicy {
            max_events: Some(5),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"max_events":5}"#);
        assert_eq!(
            serde_json::from_str::<RetentionPolicy>("{}").unwrap(),
            RetentionPolicy::default()
        );
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"max_age":5}"#).is_err());
    }
}
