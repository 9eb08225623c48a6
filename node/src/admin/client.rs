//! The HTTP side of `aggregator admin`: one request tried against the node URLs in turn
//! (a node that is down or has no leader is skipped), the leader's address put first once a
//! `/cluster` answer named it, and every failure turned into a message that says what to do
//! next (which flag to pass, which URLs were tried).

use std::fmt;
use std::time::Duration;

use api_types::{ClusterResponse, ErrorBody};
use reqwest::{Method, Response, StatusCode};

/// Which of the operator's tokens a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The read endpoints (`/stats`, `/cluster`): the read-only or the client token.
    Read,
    /// The admin endpoints: the admin token.
    Admin,
}

/// Why a command failed; each message ends with what to try.
#[derive(Debug)]
pub enum AdminError {
    /// No node gave an answer that counts: every URL with what happened there.
    NoNode(Vec<(String, String)>),
    /// A node refused the token (401).
    BadToken { url: String, access: Access },
    /// A node answered with a refusal that another node would repeat (4xx but 401).
    Refused {
        url: String,
        status: StatusCode,
        message: String,
    },
    /// Something local: a file, the request body.
    Local(String),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::NoNode(tried) => {
                let tried: Vec<String> = tried
                    .iter()
                    .map(|(u, why)| format!("{u} ({why})"))
                    .collect();
                write!(
                    f,
                    "no node could answer; tried {}. Check that the nodes run and that --url \
                     (or AGG_ADMIN_URL) lists their HTTP addresses, comma-separated",
                    tried.join(", ")
                )
            }
            AdminError::BadToken {
                url,
                access: Access::Admin,
            } => write!(
                f,
                "{url} refused the admin token (401): pass --admin-token or set \
                 AGG_ADMIN_TOKEN to the nodes' --admin-token"
            ),
            AdminError::BadToken {
                url,
                access: Access::Read,
            } => write!(
                f,
                "{url} refused the read token (401): this cluster has --api-token; pass \
                 --read-token or set AGG_READ_TOKEN to its --read-token or --api-token"
            ),
            AdminError::Refused {
                url,
                status,
                message,
            } => {
                write!(f, "{url} answered {status}: {message}")?;
                match status.as_u16() {
                    403 if message.contains("--admin-token") => write!(
                        f,
                        " (restart the nodes with --admin-token to administer them)"
                    ),
                    409 => write!(f, " (retry once the change under way is done)"),
                    _ => Ok(()),
                }
            }
            AdminError::Local(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for AdminError {}

/// The nodes, the tokens, and an HTTP client.
pub struct AdminClient {
    urls: Vec<String>,
    read_token: Option<String>,
    admin_token: Option<String>,
    http: reqwest::Client,
}

/// One node's answer that counts (2xx).
pub struct Answer {
    /// The node that gave it.
    pub url: String,
    /// The response, body unread.
    pub response: Response,
}

impl AdminClient {
    /// A client for the nodes at `urls` (base URLs, tried in this order).
    pub fn new(
        urls: Vec<String>,
        read_token: Option<String>,
        admin_token: Option<String>,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<AdminClient, AdminError> {
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .map(|u| {
                if u.contains("://") {
                    u
                } else {
                    format!("http://{u}")
                }
            })
            .collect();
        if urls.is_empty() {
            return Err(AdminError::Local(
                "no node URL: pass --url or set AGG_ADMIN_URL".into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2));
        // A cluster serving HTTPS with its own CA (`--tls-cert`): trust that CA too.
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| AdminError::Local(format!("--ca-cert {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| AdminError::Local(format!("--ca-cert {}: {e}", path.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| AdminError::Local(format!("building the HTTP client: {e}")))?;
        Ok(AdminClient {
            urls,
            read_token,
            admin_token,
            http,
        })
    }

    /// The node URLs, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Sends one request to `url` with the token `access` needs; `timeout` bounds the whole
    /// exchange up to the headers (a backup's body is read after).
    pub async fn send_to(
        &self,
        url: &str,
        method: Method,
        path: &str,
        access: Access,
        json: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<Response, reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{url}{path}"))
            .timeout(timeout);
        let token = match access {
            Access::Read => self.read_token.as_deref(),
            Access::Admin => self.admin_token.as_deref(),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(body) = json {
            req = req.json(body);
        }
        req.send().await
    }

    /// Tries `urls` in turn until one answers 2xx. A node that cannot be reached, or answers
    /// 5xx (no leader, leadership changing, a timeout), is skipped; a 401 or another 4xx is
    /// final, since every node would give it.
    pub async fn first(
        &self,
        urls: &[String],
        method: Method,
        path: &str,
        access: Access,
        json: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<Answer, AdminError> {
        let mut tried = Vec::new();
        for url in urls {
            match self
                .send_to(url, method.clone(), path, access, json, timeout)
                .await
            {
                Err(e) => tried.push((url.clone(), brief(&e))),
                Ok(response) if response.status().is_success() => {
                    return Ok(Answer {
                        url: url.clone(),
                        response,
                    })
                }
                Ok(response) => {
                    let status = response.status();
                    let message = error_message(response).await;
                    if status == StatusCode::UNAUTHORIZED {
                        return Err(AdminError::BadToken {
                            url: url.clone(),
                            access,
                        });
                    }
                    if status.is_client_error() {
                        return Err(AdminError::Refused {
                            url: url.clone(),
                            status,
                            message,
                        });
                    }
                    tried.push((url.clone(), format!("{status}: {message}")));
                }
            }
        }
        Err(AdminError::NoNode(tried))
    }

    /// The cluster as its leader sees it (`GET /cluster`, which nodes forward to the leader),
    /// from the first node that answers.
    pub async fn cluster(&self) -> Result<(String, ClusterResponse), AdminError> {
        let answer = self
            .first(
                &self.urls,
                Method::GET,
                "/cluster",
                Access::Read,
                None,
                Duration::from_secs(10),
            )
            .await?;
        let body = answer
            .response
            .json::<ClusterResponse>()
            .await
            .map_err(|e| {
                AdminError::Local(format!("{}: unreadable /cluster answer: {e}", answer.url))
            })?;
        Ok((answer.url, body))
    }

    /// The given URLs with the leader's first, when one of them is the leader's address (as
    /// the membership in `cluster` names it); otherwise as given, and the node asked forwards
    /// the change to the leader. Only addresses the operator gave are contacted: a member's
    /// Raft address may be a peer listener (`--listen-peer`) that serves no admin endpoint.
    pub fn leader_first(&self, cluster: &ClusterResponse) -> Vec<String> {
        let leader_addr = cluster
            .leader_id
            .and_then(|id| cluster.members.iter().find(|m| m.id == id))
            .map(|m| m.addr.to_ascii_lowercase());
        let is_leader = |url: &String| {
            let host_port = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
            leader_addr.as_deref() == Some(host_port.to_ascii_lowercase().as_str())
        };
        let mut urls: Vec<String> = self.urls.iter().filter(|u| is_leader(u)).cloned().collect();
        urls.extend(self.urls.iter().filter(|u| !is_leader(u)).cloned());
        urls
    }
}

/// The `error` of a JSON error body, or the start of whatever else came.
async fn error_message(response: Response) -> String {
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) if !body.error.is_empty() => body.error,
        _ => text.chars().take(200).collect(),
    }
}

/// A transport error in a few words.
fn brief(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or unreachable".into()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_types::ClusterMember;

    #[test]
    fn the_leaders_url_goes_first_and_no_other_address_is_added() {
        let client = AdminClient::new(
            vec![
                "http://n1:7000".into(),
                "n2:7000".into(),
                "http://n3:7000/".into(),
            ],
            None,
            None,
            None,
        )
        .unwrap();
        let member = |id, addr: &str| ClusterMember {
            id,
            addr: addr.into(),
            voter: true,
            matched_index: None,
        };
        let mut cluster = ClusterResponse {
            leader_id: Some(2),
            members: vec![
                member(1, "n1:7000"),
                member(2, "N2:7000"),
                member(3, "n3:7000"),
            ],
            ..ClusterResponse::default()
        };
        assert_eq!(
            client.leader_first(&cluster),
            vec!["http://n2:7000", "http://n1:7000", "http://n3:7000"]
        );
        // A leader reached at an address not given (a peer listener): the order stays.
        cluster.members[1].addr = "n2:7100".into();
        assert_eq!(client.leader_first(&cluster), client.urls());
    }
}
