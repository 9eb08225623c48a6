//! `publisher stats`: one row per node from its own `/stats` (`consistency=eventual`): role,
//! term, applied index, counters, lag and digest. A node that does not answer is shown as
//! down; that is information, not an error.

use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;

use crate::cli::StatsArgs;
use crate::client::{ApiClient, ClientError};
use api_types::StatsResponse;

/// `publisher stats`; false only when no node answered.
pub async fn command(args: StatsArgs) -> anyhow::Result<bool> {
    let client = ApiClient::new(
        args.conn.targets.clone(),
        args.conn.token.as_deref(),
        args.conn.ca_cert.as_deref(),
        2,
        args.timeout,
    )
    .context("building the HTTP client")?;
    let rows = fetch_all(&client, args.timeout).await;
    if args.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(url, r)| match r {
                Ok(s) => serde_json::json!({"url": url, "up": true, "stats": s}),
                Err(e) => serde_json::json!({"url": url, "up": false, "error": e.to_string()}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", render(&rows));
    }
    Ok(rows.iter().any(|(_, r)| r.is_ok()))
}

/// Every target's `/stats`, in target order.
pub async fn fetch_all(
    client: &ApiClient,
    timeout: Duration,
) -> Vec<(String, Result<StatsResponse, ClientError>)> {
    let bases = client.targets().bases();
    let answers = join_all(bases.iter().map(|b| {
        client.get_json::<StatsResponse>(b, "/stats", &[("consistency", "eventual")], timeout)
    }))
    .await;
    bases.iter().cloned().zip(answers).collect()
}

/// The table, with a closing line saying whether the nodes that answered agree.
pub fn render(rows: &[(String, Result<StatsResponse, ClientError>)]) -> String {
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
                // `?`: the node does not know how far behind it is (a leader cut off from its
                // quorum, a follower that has not heard from a leader lately).
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
            Err(e) => {
                out.push_str(&format!(
                    "{url:<28} {:>4} {:<9} ({})\n",
                    "-",
                    "down",
                    e.brief()
                ));
            }
        }
    }
    let up: Vec<&StatsResponse> = rows.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let agree = up.windows(2).all(|w| {
        (&w[0].digest, w[0].unique_processed, w[0].received)
            == (&w[1].digest, w[1].unique_processed, w[1].received)
    });
    let verdict = match (up.len(), agree) {
        (0, _) => "no node answered".to_string(),
        (n, true) => format!(
            "{n} of {} nodes up; all that answered agree (digest and counters)",
            rows.len()
        ),
        (n, false) => format!(
            "{n} of {} nodes up; they DIFFER (still converging, or diverged)",
            rows.len()
        ),
    };
    out.push_str(&verdict);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn down_nodes_are_rows_not_errors() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = ApiClient::new(
            vec![format!("http://127.0.0.1:{port}")],
            None,
            None,
            1,
            Duration::from_secs(1),
        )
        .unwrap();
        let fetched = fetch_all(&client, Duration::from_secs(1)).await;
        assert!(fetched[0].1.is_err());
        let mut rows: Vec<(String, Result<StatsResponse, ClientError>)> = fetched
            .into_iter()
            .map(|(u, r)| (u, r.map(|_| StatsResponse::default())))
            .collect();
        let up = StatsResponse {
            node_id: 2,
            role: "leader".into(),
            received: 10,
            unique_processed: 7,
            duplicate_dropped: 3,
            digest: "ab".into(),
            ..StatsResponse::default()
        };
        rows.push(("http://n2".into(), Ok(up)));
        let table = render(&rows);
        assert!(table.contains("down"), "{table}");
        assert!(table.contains("leader"), "{table}");
        assert!(table.contains("1 of 2 nodes up"), "{table}");
    }
}
