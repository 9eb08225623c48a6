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
    /// How long a duplicate is detected: `"retained"` (while the original is held), or
    /// `"retained+W"` (and at least `W` after the original was stored, e.g. `retained+10m`).
    pub dedup_window: String,
    /// The window's `W` in milliseconds (0: `"retained"`).
    pub dedup_window_ms: u64,
    /// Keys of trimmed events held for the window.
    pub dedup_tombstones: u64,
    /// Publishes answered as duplicates of a trimmed event (`original_trimmed`).
    pub duplicates_of_trimmed: u64,
}

/// Longest dedup window accepted: 366 days, in milliseconds.
pub const MAX_DEDUP_WINDOW_MS: u64 = 366 * 86_400_000;

/// `PUT /retention/dedup_window`: sets the cluster's dedup window. An unknown field is
/// refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DedupWindowRequest {
    /// A trimmed event's key stays a duplicate until at least this many milliseconds after
    /// the event was stored; 0: only while the event is held. At most 366 days.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 31622400000_u64))]
    pub window_ms: u64,
}

/// How `/stats` and `/retention` name a dedup window of `window_ms`.
pub fn describe_dedup_window(window_ms: u64) -> String {
    if window_ms == 0 {
        "retained".to_owned()
    } else {
        format!("retained+{}", crate::format_duration_ms(window_ms))
    }
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

    #[test]
    fn a_window_is_named_in_its_largest_exact_unit() {
        assert_eq!(describe_dedup_window(0), "retained");
        assert_eq!(describe_dedup_window(600_000), "retained+10m");
        assert_eq!(describe_dedup_window(7 * 86_400_000), "retained+7d");
        assert_eq!(describe_dedup_window(90_000), "retained+90s");
        assert_eq!(describe_dedup_window(1_500), "retained+1500ms");
        let back = crate::parse_duration("7d").unwrap();
        assert_eq!(back.as_millis(), 7 * 86_400_000);
    }
}
