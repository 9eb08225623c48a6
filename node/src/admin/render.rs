//! The tables `aggregator admin` prints: `status` (one row per node from its own `/stats`,
//! the same view `publisher stats` gives clients) and `members` (`GET /cluster`).

use api_types::{ClusterResponse, StatsResponse};

use super::client::AdminError;

/// One row per node and a closing line saying whether the nodes that answered agree.
pub fn status(rows: &[(String, Result<StatsResponse, AdminError>)]) -> String {
    let mut out = format!(
        "{:<28} {:>4} {:<9} {:>5} {:>9} {:>9} {:>9} {:>10} {:>5}  {}\n",
        "node",
        "id",
        "role",
        "term",
        "applied",
        "received",
        "unique",
        "duplicates",
        "lag",
        "digest"
    );
    for (url, r) in rows {
        match r {
            Ok(s) => {
                // `?`: the node does not know how far behind it is.
                let lag = s
                    .consistency
                    .lag_entries
                    .map_or_else(|| "?".to_string(), |l| l.to_string());
                out.push_str(&format!(
                    "{:<28} {:>4} {:<9} {:>5} {:>9} {:>9} {:>9} {:>10} {:>5}  {}\n",
                    url,
                    s.node_id,
                    s.role,
                    s.raft.term,
                    s.raft
                        .applied_index
                        .map_or_else(|| "-".to_string(), |i| i.to_string()),
                    s.received,
                    s.unique_processed,
                    s.duplicate_dropped,
                    lag,
                    if s.digest.is_empty() { "-" } else { &s.digest }
                ));
            }
            Err(e) => out.push_str(&format!(
                "{url:<28} {:>4} {:<9} ({})\n",
                "-",
                "down",
                super::short(e)
            )),
        }
    }
    let up: Vec<&StatsResponse> = rows.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let agree = up.windows(2).all(|w| {
        (&w[0].digest, w[0].unique_processed, w[0].received)
            == (&w[1].digest, w[1].unique_processed, w[1].received)
    });
    out.push_str(&match (up.len(), agree) {
        (0, _) => "no node answered\n".to_string(),
        (n, true) => format!(
            "{n} of {} nodes up; all that answered agree (digest and counters)\n",
            rows.len()
        ),
        (n, false) => format!(
            "{n} of {} nodes up; they DIFFER (still converging, or diverged)\n",
            rows.len()
        ),
    });
    out
}

/// The members, one row each, marked leader, voter or learner.
pub fn members(c: &ClusterResponse) -> String {
    let mut out = format!(
        "{:>4}  {:<24} {:<8} {:>8}\n",
        "id", "address", "role", "matched"
    );
    for m in &c.members {
        let role = if Some(m.id) == c.leader_id {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        out.push_str(&format!(
            "{:>4}  {:<24} {:<8} {:>8}\n",
            m.id,
            m.addr,
            role,
            m.matched_index
                .map_or_else(|| "-".to_string(), |i| i.to_string())
        ));
    }
    out.push_str(&format!(
        "term {}, leader {}, seen by node {}{}\n",
        c.term,
        c.leader_id
            .map_or_else(|| "unknown".into(), |l| l.to_string()),
        c.node_id,
        if c.joint {
            "; a membership change is half done (joint)"
        } else {
            ""
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_types::ClusterMember;

    #[test]
    fn members_mark_the_leader_and_learners() {
        let c = ClusterResponse {
            node_id: 1,
            leader_id: Some(1),
            term: 3,
            voters: vec![1],
            learners: vec![4],
            members: vec![
                ClusterMember {
                    id: 1,
                    addr: "a:1".into(),
                    voter: true,
                    matched_index: Some(9),
                },
                ClusterMember {
                    id: 4,
                    addr: "d:1".into(),
                    voter: false,
                    matched_index: None,
                },
            ],
            ..ClusterResponse::default()
        };
        let text = members(&c);
        assert!(text.lines().nth(1).unwrap().contains("leader"), "{text}");
        assert!(text.lines().nth(2).unwrap().contains("learner"), "{text}");
        assert!(text.contains("term 3, leader 1"), "{text}");
    }

    #[test]
    fn a_down_node_is_a_row_and_the_verdict_counts_it() {
        let rows = vec![
            (
                "http://a".to_string(),
                Ok(StatsResponse {
                    node_id: 1,
                    ..Default::default()
                }),
            ),
            (
                "http://b".to_string(),
                Err(AdminError::NoNode(vec![(
                    "http://b".into(),
                    "timed out".into(),
                )])),
            ),
        ];
        let text = status(&rows);
        assert!(
            text.contains("down") && text.contains("timed out"),
            "{text}"
        );
        assert!(text.contains("1 of 2 nodes up"), "{text}");
    }
}
