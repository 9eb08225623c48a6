//! Consistency of reads: deciding where and how a read is served (linearizable on a leader
//! that confirmed its leadership with a quorum, forwarded once to the leader, or eventual
//! from local state), the consistency marker that says which ([`ConsistencyMarker`]), and the
//! provenance headers.

use std::time::Duration;

use api_types::{ConsistencyLevel, ConsistencyMarker};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use openraft::error::{CheckIsLeaderError, RaftError};
use raft_store::{NodeId, StoreError, StoreReader};

use super::error::ApiError;
use super::forward::{is_forwarded, LeaderAddr};
use super::state::AppState;
use crate::raft::leadership::{await_leadership, leadership, Leadership};

/// How a local read was served: the marker its body carries, and the term for the
/// `X-Raft-Term` header (not in the body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    /// The body's `consistency` object.
    pub marker: ConsistencyMarker,
    /// Term of the serving node.
    pub term: u64,
}

/// How a read is to be served.
pub(crate) enum Plan {
    /// Here, at this level.
    Local {
        /// Whether leadership was confirmed first.
        linearizable: bool,
    },
    /// By the leader.
    Forward { id: NodeId, addr: String },
}

pub(crate) fn parse_level(v: Option<&str>) -> Result<Option<bool>, ApiError> {
    match v {
        None => Ok(None),
        Some("linearizable") => Ok(Some(true)),
        Some("eventual") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency must be linearizable or eventual, not {other:?}"
        ))),
    }
}

/// Decides where and how to read, confirming leadership for a linearizable read.
pub(crate) async fn plan(
    st: &AppState,
    requested: Option<bool>,
    headers: &HeaderMap,
) -> Result<Plan, ApiError> {
    let silence = st.quorum_silence_ms();
    let forwarded = is_forwarded(headers);
    let current = leadership(&st.raft.metrics().borrow(), silence);
    let linearizable = requested.unwrap_or(current == Leadership::Local);
    if !linearizable {
        return Ok(Plan::Local {
            linearizable: false,
        });
    }
    let lead = if forwarded || current != Leadership::Unknown {
        current
    } else {
        await_leadership(&st.raft, silence, st.limits.leader_wait).await
    };
    match lead {
        Leadership::Local => {
            let confirm =
                tokio::time::timeout(st.limits.write_timeout, st.raft.ensure_linearizable());
            match confirm.await {
                Ok(Ok(_)) => Ok(Plan::Local { linearizable: true }),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    match f.leader_id.zip(f.leader_node) {
                        Some((id, node)) if !forwarded && id != st.id => Ok(Plan::Forward {
                            id,
                            addr: node.addr,
                        }),
                        _ => Err(ApiError::unavailable("leadership changed; retry")
                            .with_leader(f.leader_id)),
                    }
                }
                Ok(Err(e)) => Err(ApiError::unavailable(format!(
                    "cannot confirm leadership: {e}"
                ))),
                Err(_) => Err(ApiError::unavailable(
                    "cannot confirm leadership in time (no quorum?)",
                )),
            }
        }
        Leadership::Remote { id, addr } if !forwarded => Ok(Plan::Forward { id, addr }),
        Leadership::Remote { id, .. } => Err(ApiError::unavailable(format!(
            "node {} is not the leader and does not forward twice (leader is {id})",
            st.id
        ))
        .with_leader(Some(id))),
        Leadership::Unknown => Err(ApiError::unavailable(
            "no leader is known; a linearizable read is impossible now",
        )),
    }
}

/// What the serving node knows, when it reads, about how far its state may trail the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vantage {
    /// A leader: its own commit index and how long since a quorum last acknowledged it
    /// (`None`: no quorum has acknowledged it yet).
    Leader {
        committed: u64,
        quorum_ack_ms: Option<u64>,
    },
    /// Any other role: the highest commit index a leader told it and how long since it last
    /// accepted an append (`None`: never).
    Follower {
        leader_commit: u64,
        contact_ms: Option<u64>,
    },
}

/// The marker's `(lag_entries, lag_known, last_leader_contact_ms)` for an eventual read of
/// state applied up to `applied`.
///
/// A lag figure is only a measurement while the node hears from the cluster: a leader whose
/// quorum has been silent for longer than `silence_ms` (the time after which another leader
/// may have been elected) may have been deposed, and the entries committed since are beyond
/// its knowledge; the same goes for a follower that has not heard from a leader for as long.
/// Either reports `null` rather than the difference of its own stale indexes (which is 0 on a
/// cut-off leader: nothing new is committed there). The contact age is always the real one,
/// `None` when there was no contact at all (never 0 for "no quorum yet").
pub(crate) fn eventual_lag(
    vantage: Vantage,
    applied: u64,
    silence_ms: u64,
) -> (Option<u64>, bool, Option<u64>) {
    let (known_commit, contact) = match vantage {
        Vantage::Leader {
            committed,
            quorum_ack_ms,
        } => (committed, quorum_ack_ms),
        Vantage::Follower {
            leader_commit,
            contact_ms,
        } => (leader_commit, contact_ms),
    };
    match contact {
        Some(ms) if ms <= silence_ms => (Some(known_commit.saturating_sub(applied)), true, contact),
        _ => (None, false, contact),
    }
}

/// Builds the provenance of a local read of state applied up to `applied`.
pub(crate) async fn provenance(st: &AppState, linearizable: bool, applied: u64) -> Provenance {
    let (leader, term, is_leader, quorum_ack_ms) = {
        let m = st.raft.metrics();
        let m = m.borrow();
        (
            m.current_leader,
            m.current_term,
            m.current_leader == Some(st.id),
            m.millis_since_quorum_ack,
        )
    };
    let (lag, lag_known, contact) = if linearizable {
        // Leadership was confirmed with a quorum for this very read.
        (Some(0), true, Some(0))
    } else {
        let vantage = if is_leader {
            let committed = st
                .raft
                .with_raft_state(|s| s.committed.map_or(0, |c| c.index))
                .await
                .unwrap_or(applied);
            Vantage::Leader {
                committed,
                quorum_ack_ms,
            }
        } else {
            Vantage::Follower {
                leader_commit: st.contact.leader_commit(),
                contact_ms: st.contact.millis_since(),
            }
        };
        eventual_lag(vantage, applied, st.quorum_silence_ms())
    };
    Provenance {
        marker: ConsistencyMarker {
            level: if linearizable {
                ConsistencyLevel::Linearizable
            } else {
                ConsistencyLevel::Eventual
            },
            served_by: st.id,
            applied_index: applied,
            leader_id: leader,
            lag_entries: lag,
            lag_known,
            last_leader_contact_ms: contact,
        },
        term,
    }
}

/// Adds the provenance headers (`X-Served-By`, `X-Raft-Term`, `X-Applied-Index`, `X-Consistency`).
pub(crate) fn with_provenance(body: Vec<u8>, p: &Provenance) -> Response {
    let mut r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    insert_provenance(r.headers_mut(), p);
    r
}

/// Writes the provenance headers of `p` into `h` (also the header of a subscription stream).
pub(crate) fn insert_provenance(h: &mut HeaderMap, p: &Provenance) {
    let m = &p.marker;
    h.insert(
        HeaderName::from_static("x-served-by"),
        HeaderValue::from(m.served_by),
    );
    h.insert(
        HeaderName::from_static("x-raft-term"),
        HeaderValue::from(p.term),
    );
    h.insert(
        HeaderName::from_static("x-applied-index"),
        HeaderValue::from(m.applied_index),
    );
    h.insert(
        HeaderName::from_static("x-consistency"),
        HeaderValue::from_static(m.level.as_str()),
    );
}

/// Runs a blocking store read off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    reader: &StoreReader,
    f: impl FnOnce(&StoreReader) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let reader = reader.clone();
    match tokio::task::spawn_blocking(move || f(&reader)).await {
        Ok(Ok(v)) => Ok(v),
        // A follower being rebuilt from a snapshot: its state machine is neither old nor new
        // until the install ends, so it answers nothing rather than a mix.
        Ok(Err(e @ StoreError::Installing)) => Err(ApiError::unavailable(e.to_string())),
        Ok(Err(e @ StoreError::Trimmed { earliest, .. })) => {
            Err(ApiError::trimmed(e.to_string(), earliest))
        }
        Ok(Err(e)) => Err(ApiError::internal(format!("store read failed: {e}"))),
        Err(e) => Err(ApiError::internal(format!("store read task failed: {e}"))),
    }
}

pub(crate) async fn forward_read(
    st: &AppState,
    id: NodeId,
    addr: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    st.forwarder
        .forward(
            LeaderAddr { id, addr },
            Method::GET,
            pq,
            headers,
            Default::default(),
            Duration::from_secs(10),
        )
        .await
}

/// Relays a stream (a linearizable subscription) from the leader, one hop.
pub(crate) async fn forward_stream(
    st: &AppState,
    id: NodeId,
    addr: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    st.forwarder
        .forward_stream(LeaderAddr { id, addr }, pq, headers)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_strictly() {
        assert_eq!(parse_level(None).unwrap(), None);
        assert_eq!(parse_level(Some("linearizable")).unwrap(), Some(true));
        assert_eq!(parse_level(Some("eventual")).unwrap(), Some(false));
        assert!(parse_level(Some("strong")).is_err());
    }

    const SILENCE: u64 = 600;

    #[test]
    fn a_leader_acknowledged_lately_reports_its_lag_and_contact() {
        let v = Vantage::Leader {
            committed: 12,
            quorum_ack_ms: Some(40),
        };
        assert_eq!(eventual_lag(v, 9, SILENCE), (Some(3), true, Some(40)));
    }

    #[test]
    fn a_cut_off_leader_does_not_claim_to_be_current() {
        // Partitioned or deposed without noticing: its own commit equals its applied index,
        // and its last quorum acknowledgement is older than an election timeout.
        let v = Vantage::Leader {
            committed: 9,
            quorum_ack_ms: Some(2_500),
        };
        assert_eq!(eventual_lag(v, 9, SILENCE), (None, false, Some(2_500)));
    }

    #[test]
    fn a_leader_no_quorum_acknowledged_has_no_contact_age() {
        let v = Vantage::Leader {
            committed: 9,
            quorum_ack_ms: None,
        };
        assert_eq!(eventual_lag(v, 9, SILENCE), (None, false, None));
    }

    #[test]
    fn a_follower_reports_lag_only_while_it_hears_from_a_leader() {
        let heard = Vantage::Follower {
            leader_commit: 20,
            contact_ms: Some(90),
        };
        assert_eq!(eventual_lag(heard, 15, SILENCE), (Some(5), true, Some(90)));
        let silent = Vantage::Follower {
            leader_commit: 20,
            contact_ms: Some(5_000),
        };
        assert_eq!(
            eventual_lag(silent, 20, SILENCE),
            (None, false, Some(5_000))
        );
        let never = Vantage::Follower {
            leader_commit: 0,
            contact_ms: None,
        };
        assert_eq!(eventual_lag(never, 0, SILENCE), (None, false, None));
    }
}
