//! `GET /cluster/overview` (read token): the whole cluster as this node can see it, for the
//! dashboard. Each member's own `/stats` is asked in parallel over the peer network (marked as
//! forwarded, so the member serves its own state) with a one-second timeout; a member that
//! does not answer is reported unreachable with the reason and no numbers. This node adds its
//! recent elections and its own producers and topics, each list capped so the answer stays
//! small however many producers the store tracks.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use api_types::{ClusterOverview, MemberOverview, StatsResponse};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft_store::NodeId;

use super::error::ApiError;
use super::read::local_stats;
use super::state::AppState;

/// How long a member may take to answer.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);
/// Producers reported, at most: those with the most gaps and reorderings first.
pub const MAX_PRODUCERS: usize = 100;
/// Topics reported, at most: the largest first.
pub const MAX_TOPICS: usize = 100;

/// `GET /cluster/overview`
pub async fn overview(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (leader_id, term, members) = {
        let m = st.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members: Vec<(NodeId, String, bool)> = membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone(), voters.contains(id)))
            .collect();
        (m.current_leader, m.current_term, members)
    };
    let asks = members.into_iter().map(|(id, addr, voter)| {
        let st = st.clone();
        let headers = headers.clone();
        async move {
            let started = Instant::now();
            let answer = if id == st.id {
                local_stats(&st, false)
                    .await
                    .map(|(s, _)| trim(s))
                    .map_err(|e| e.message)
            } else {
                st.forwarder
                    .get_from_member(
                        &addr,
                        "/stats?consistency=eventual",
                        &headers,
                        MEMBER_TIMEOUT,
                    )
                    .await
                    .and_then(|body| {
                        serde_json::from_slice::<StatsResponse>(&body)
                            .map_err(|e| format!("unreadable /stats answer: {e}"))
                    })
                    .map(without_lists)
            };
            let response_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match answer {
                Ok(stats) => MemberOverview {
                    id,
                    addr,
                    voter,
                    reachable: true,
                    error: None,
                    response_ms: Some(response_ms),
                    stats: Some(stats),
                },
                Err(error) => MemberOverview {
                    id,
                    addr,
                    voter,
                    reachable: false,
                    error: Some(error),
                    response_ms: None,
                    stats: None,
                },
            }
        }
    });
    let members = futures::future::join_all(asks).await;
    let generated_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Ok(Json(ClusterOverview {
        node_id: st.id,
        generated_at_ms,
        leader_id,
        term,
        members,
        elections: st.elections.recent(),
    })
    .into_response())
}

/// A member's stats without the per-topic and per-producer lists (this node reports its own).
fn without_lists(mut s: StatsResponse) -> StatsResponse {
    s.producers.clear();
    s.topics.clear();
    s.topic_counts.clear();
    s
}

/// This node's stats with the lists capped: the producers with the most gaps and reorderings
/// (then the most events), and the largest topics.
fn trim(mut s: StatsResponse) -> StatsResponse {
    if s.producers.len() > MAX_PRODUCERS {
        let mut all: Vec<_> = std::mem::take(&mut s.producers).into_iter().collect();
        all.sort_by(|a, b| {
            let key = |p: &api_types::ProducerStats| (p.gaps + p.out_of_order, p.events);
            key(&b.1).cmp(&key(&a.1)).then_with(|| a.0.cmp(&b.0))
        });
        all.truncate(MAX_PRODUCERS);
        s.producers = all.into_iter().collect();
    }
    if s.topic_counts.len() > MAX_TOPICS {
        let mut all: Vec<_> = std::mem::take(&mut s.topic_counts).into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(MAX_TOPICS);
        s.topic_counts = all.into_iter().collect();
    }
    s.topics.clear();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_the_most_telling_producers_and_largest_topics() {
        let mut s = StatsResponse::default();
        for i in 0..(MAX_PRODUCERS as u64 + 50) {
            s.producers.insert(
                format!("p{i:04}"),
                api_types::ProducerStats {
                    events: i,
                    gaps: u64::from(i == 3) * 7,
                    ..Default::default()
                },
            );
            s.topic_counts.insert(format!("t{i:04}"), i);
        }
        let t = trim(s);
        assert_eq!(t.producers.len(), MAX_PRODUCERS);
        assert!(
            t.producers.contains_key("p0003"),
            "the producer with gaps stays"
        );
        assert!(t.producers.contains_key("p0149"), "the largest stays");
        assert!(!t.producers.contains_key("p0010"));
        assert_eq!(t.topic_counts.len(), MAX_TOPICS);
        assert!(t.topic_counts.contains_key("t0149"));
        assert!(!t.topic_counts.contains_key("t0000"));
    }
}
