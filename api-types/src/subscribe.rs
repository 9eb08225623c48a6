//! The vocabulary of live subscriptions (`GET /subscribe`, docs/api.md): the [`Cursor`] that
//! names a position in the cluster's commit order, the [`TopicPattern`] grammar and its
//! matching, and the [`StreamEnd`] message a stream ends with. The pattern lives here, not in
//! the server, because a client checks what it received against the same grammar (the
//! publisher's `subscribe --verify-history`): one implementation, so the two cannot disagree.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::LamportStamp;

/// A position in the order the cluster committed its events: the stamp of the last event
/// delivered, so a stream resumed from it starts with the first event committed after it.
/// Stamps are assigned when an entry is applied, identically on every replica, so a cursor
/// means the same on every node. On the wire (`id:` of an SSE message, `Last-Event-ID`,
/// `from=`, and `/events`' `next`/`after`) it is the stamp in decimal.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Cursor(pub u64);

impl Cursor {
    /// Before every event: a stream from here starts with the first event ever stored.
    pub const START: Cursor = Cursor(0);

    /// The cursor right at this stamp (the position after the event stored under it).
    pub fn at(stamp: LamportStamp) -> Cursor {
        Cursor(stamp.0)
    }

    /// The stamp this cursor points after.
    pub fn stamp(self) -> LamportStamp {
        LamportStamp(self.0)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a cursor did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorError(pub String);

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a cursor (the decimal `id` of a delivered event)",
            self.0
        )
    }
}

impl std::error::Error for CursorError {}

impl FromStr for Cursor {
    type Err = CursorError;

    /// Decimal digits only (no sign, no spaces), at most 20 of them and within `u64`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CursorError(s.to_owned()));
        }
        s.parse::<u64>()
            .map(Cursor)
            .map_err(|_| CursorError(s.to_owned()))
    }
}

/// Longest pattern, in bytes (as long as the longest topic).
pub const MAX_PATTERN_BYTES: usize = 255;

/// One piece of a pattern: a segment and the separator that follows it (`None` for the last).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    /// A segment that must equal the topic's.
    Literal(String, Option<char>),
    /// `*`: any one segment (empty included).
    One(Option<char>),
    /// `>`: one or more segments, whatever they and their separators are; always last.
    Rest,
}

/// A topic pattern: segments separated by `.` or `/`, each a literal, `*` (exactly one
/// segment) or, as the last segment only, `>` (one or more segments: the rest of the topic).
/// Separators match literally (`logs.*` matches `logs.app`, not `logs/app`), so a pattern
/// without wildcards is a topic name and matches exactly that topic. Literal segments use the
/// topic characters `A-Z a-z 0-9 _ : -` and may be empty (topic `a..b` has an empty segment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    pieces: Vec<Piece>,
}

/// Why a pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "topic pattern {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for PatternError {}

fn is_separator(c: char) -> bool {
    c == '.' || c == '/'
}

/// Splits a topic or pattern into its segments, each with the separator that follows it.
fn segments(s: &str) -> impl Iterator<Item = (&str, Option<char>)> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.char_indices().find(|(_, c)| is_separator(*c)) {
            Some((i, c)) => {
                rest = Some(&r[i + c.len_utf8()..]);
                Some((&r[..i], Some(c)))
            }
            None => {
                rest = None;
                Some((r, None))
            }
        }
    })
}

impl TopicPattern {
    /// Parses and checks a pattern.
    pub fn parse(text: &str) -> Result<TopicPattern, PatternError> {
        let bad = |reason: String| PatternError {
            pattern: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(bad("must not be empty".into()));
        }
        if text.len() > MAX_PATTERN_BYTES {
            return Err(bad(format!(
                "{} bytes; the limit is {MAX_PATTERN_BYTES}",
                text.len()
            )));
        }
        if let Some(c) = text.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | ':' | '-' | '*' | '>'))
        }) {
            return Err(bad(format!(
                "character {c:?} not allowed; use A-Z a-z 0-9 . _ / : - and the wildcards * >"
            )));
        }
        let mut pieces = Vec::new();
        for (segment, sep) in segments(text) {
            let piece = match segment {
                "*" => Piece::One(sep),
                ">" if sep.is_none() => Piece::Rest,
                ">" => return Err(bad("`>` may only be the last segment".into())),
                s if s.contains(['*', '>']) => {
                    return Err(bad(format!(
                        "segment {s:?}: a wildcard must be a whole segment (`*` or `>`)"
                    )))
                }
                s => Piece::Literal(s.to_owned(), sep),
            };
            pieces.push(piece);
        }
        Ok(TopicPattern {
            text: text.to_owned(),
            pieces,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The one topic this pattern matches, when it has no wildcard.
    pub fn exact_topic(&self) -> Option<&str> {
        let wild = self
            .pieces
            .iter()
            .any(|p| matches!(p, Piece::One(_) | Piece::Rest));
        (!wild).then_some(self.text.as_str())
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut topic_segments = segments(topic);
        for piece in &self.pieces {
            let Some((segment, sep)) = topic_segments.next() else {
                return false;
            };
            match piece {
                Piece::Rest => return true,
                Piece::One(want) if *want == sep => {}
                Piece::Literal(lit, want) if *want == sep && lit == segment => {}
                _ => return false,
            }
        }
        topic_segments.next().is_none()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for TopicPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicPattern::parse(s)
    }
}

/// Why a stream ended, in its last message (`event: end`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The subscriber did not take what the node had buffered for it in time: the buffer
    /// stayed full (a slow or stopped reader).
    SlowSubscriber,
    /// The node is stopping (SIGTERM).
    ShuttingDown,
    /// `consistency=linearizable` and the node could no longer confirm a read point (it is
    /// no longer the leader, or lost its quorum).
    LeadershipLost,
    /// The node could not read its store (a snapshot install replacing its state, a disk
    /// error); another node may serve.
    Unavailable,
    /// The cursor asked for is older than the events this node still holds.
    CursorTrimmed,
    /// Anything else (also what an unknown reason from a newer server reads as).
    #[default]
    #[serde(other)]
    Other,
}

/// The data of a stream's last message (`event: end`): why it ended and where to resume. A
/// client reconnects with `Last-Event-ID: <resume_from>` (or `from=<resume_from>`) and gets
/// the next event after the last one delivered, with no gap and no repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct StreamEnd {
    /// Why.
    pub reason: EndReason,
    /// In words.
    pub error: String,
    /// The cursor to resume from: that of the last event this stream delivered (or the one
    /// it started from, when it delivered none).
    pub resume_from: Cursor,
    /// With [`EndReason::CursorTrimmed`]: the earliest cursor the node can still serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earliest: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_patterns_match_exactly_one_topic() {
        let exact = p("logs.app");
        assert_eq!(exact.exact_topic(), Some("logs.app"));
        assert!(exact.matches("logs.app"));
        for other in ["logs/app", "logs.app.x", "logs", "logs.ap", "xlogs.app"] {
            assert!(!exact.matches(other), "{other}");
        }
        // Empty segments are literal like any other.
        assert!(p("a..b").matches("a..b"));
        assert!(!p("a..b").matches("a.b"));
        assert!(p("a.").matches("a."));
        assert!(!p("a.").matches("a"));
    }

    #[test]
    fn star_is_one_segment_and_separators_match_literally() {
        let one = p("logs.*.error");
        assert_eq!(one.exact_topic(), None);
        assert!(one.matches("logs.app.error"));
        assert!(one.matches("logs..error"), "an empty segment is a segment");
        assert!(!one.matches("logs.app.x.error"));
        assert!(!one.matches("logs.app/error"));
        assert!(!one.matches("logs.error"));
        assert!(p("*").matches("orders"));
        assert!(!p("*").matches("orders.eu"));
        assert!(p("a/*").matches("a/b"));
        assert!(!p("a/*").matches("a.b"));
    }

    #[test]
    fn gt_is_the_rest_and_at_least_one_segment() {
        let rest = p("logs.>");
        assert!(rest.matches("logs.app"));
        assert!(rest.matches("logs.app.error"));
        assert!(rest.matches("logs.app/eu:1"));
        assert!(rest.matches("logs."), "one empty segment");
        assert!(!rest.matches("logs"));
        assert!(!rest.matches("logs/app"));
        assert!(!rest.matches("logsx.app"));
        assert!(p(">").matches("anything.at/all"));
        assert!(p("*.>").matches("a.b"));
        assert!(!p("*.>").matches("a"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("logs.>.x", "last"),
            ("logs.app*", "whole segment"),
            ("lo>gs", "whole segment"),
            ("logs app", "not allowed"),
            ("logs.é", "not allowed"),
            ("logs.#", "not allowed"),
        ] {
            let e = TopicPattern::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        assert!(TopicPattern::parse(&long).is_err());
        assert!(TopicPattern::parse(&"a".repeat(MAX_PATTERN_BYTES)).is_ok());
    }

    #[test]
    fn cursors_are_plain_decimal() {
        assert_eq!("0".parse::<Cursor>(), Ok(Cursor(0)));
        assert_eq!("1785".parse::<Cursor>(), Ok(Cursor(1785)));
        assert_eq!(u64::MAX.to_string().parse::<Cursor>(), Ok(Cursor(u64::MAX)));
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1.5",
            "abc",
            "18446744073709551616",
            "0x10",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
        assert_eq!(Cursor(42).to_string(), "42");
        assert_eq!(serde_json::to_string(&Cursor(42)).unwrap(), "42");
    }

    #[test]
    fn the_end_message_round_trips_and_tolerates_new_reasons() {
        let end = StreamEnd {
            reason: EndReason::SlowSubscriber,
            error: "buffer full".into(),
            resume_from: Cursor(17),
            earliest: None,
        };
        let text = serde_json::to_string(&end).unwrap();
        assert_eq!(
            text,
            r#"{"reason":"slow_subscriber","error":"buffer full","resume_from":17}"#
        );
        assert_eq!(serde_json::from_str::<StreamEnd>(&text).unwrap(), end);
        let newer: StreamEnd =
            serde_json::from_str(r#"{"reason":"quota","resume_from":3}"#).unwrap();
        assert_eq!(newer.reason, EndReason::Other);
        assert_eq!(newer.resume_from, Cursor(3));
    }
}
