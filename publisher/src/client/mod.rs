//! HTTP access to the cluster: one pooled reqwest client over all targets, the publish call that
//! re-sends the same body under the retry policy (`retry.rs`: which answers retry, backoff with
//! jitter, `Retry-After`, bounded attempts and deadline) to the next target (`targets.rs`), and
//! plain JSON reads for verify and stats. With leader-aware routing (`leader.rs`) a request's
//! first attempt goes to the known leader instead of the next target in rotation.
//!
//! Re-sending a batch is safe because the cluster deduplicates on `(topic, event_id)`: an attempt
//! that was committed although its answer was lost comes back as `duplicate` on the retry.

mod leader;
mod retry;
mod targets;

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use api_types::{ErrorBody, NodeId, StatsResponse};

pub use leader::LeaderRouting;
pub use retry::{
    classify_status, parse_retry_after, transport_error_retries, RetryPolicy, StatusClass,
};
pub use targets::Targets;

/// Timeout of one `/stats` read that maps a target to its node id.
const NODE_ID_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (connection refused, timeout, reset).
    #[error("{url}: {}", error_chain(.source))]
    Transport {
        /// The URL asked.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// An answer with a non-2xx status.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// A 2xx answer whose body is not the expected JSON.
    #[error("{url}: unreadable answer: {source}")]
    Decode {
        /// The URL asked.
        url: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

#[derive(Debug)]
pub enum PublishOutcome {
    /// 2xx: the events are committed; the answer body, for the caller to read the results.
    Acked(Bytes),
    /// A 4xx other than 429: not retried.
    Rejected {
        /// The status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// Attempts or deadline exhausted (or, set by the caller, an unreadable success answer).
    Failed {
        /// Status of the last answer, if there was one.
        status: Option<u16>,
        /// What the last attempt hit.
        error: String,
    },
}

/// One publish request's end, with what it took.
#[derive(Debug)]
pub struct PublishResult {
    /// Acked, rejected or failed.
    pub outcome: PublishOutcome,
    /// Attempts made.
    pub attempts: u32,
    /// Index of the target of the last attempt.
    pub target: usize,
}

/// One attempt's verdict.
enum Attempt {
    Done(PublishOutcome),
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
        avoid_for: Option<Duration>,
        /// The leader a 503 named.
        leader_hint: Option<NodeId>,
    },
}

/// The publisher's HTTP client.
#[derive(Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    targets: Targets,
    auth: Option<String>,
    /// Present with `--prefer-leader`.
    routing: Option<LeaderRouting>,
}

impl ApiClient {
    /// A client over `targets` with a pool sized for `concurrency` requests in flight.
    /// `ca_cert` is the PEM bundle https:// targets' certificates must chain to.
    pub fn new(
        targets: Vec<String>,
        token: Option<&str>,
        ca_cert: Option<&std::path::Path>,
        concurrency: usize,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency.max(1))
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout);
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("--ca-cert {}: no certificate in the file", path.display());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build()?;
        Ok(ApiClient {
            http,
            routing: None,
            targets: Targets::new(targets),
            auth: token.map(|t| format!("Bearer {t}")),
        })
    }

    /// Sends each request's first attempt to the known leader (see `leader.rs`); call
    /// `learn_nodes` before the first request.
    pub fn prefer_leader(mut self) -> Self {
        self.routing = Some(LeaderRouting::new(self.targets.bases().len()));
        self
    }

    /// Asks every target's `/stats` once for its node id and the leader it knows; a target that
    /// does not answer stays unmapped (a later refresh may map it). No-op without routing.
    pub async fn learn_nodes(&self) {
        let Some(routing) = &self.routing else {
            return;
        };
        let asks = self
            .targets
            .bases()
            .iter()
            .map(|base| self.get_json::<StatsResponse>(base, "/stats", &[], NODE_ID_TIMEOUT));
        let answers = futures::future::join_all(asks).await;
        let mut leader = None;
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(stats) => {
                    routing.record_node(i, stats.node_id);
                    leader = leader.or(stats.leader_id);
                }
                Err(e) => tracing::debug!("no node id for target {i}: {}", e.brief()),
            }
        }
        if let Some(l) = leader {
            routing.observe(l);
        }
    }

    /// An answer named `leader`: route to it; if no target is known to serve it, refresh the
    /// node ids (at most once per `leader::REFRESH_INTERVAL`). No-op without routing.
    pub async fn observe_leader(&self, leader: Option<NodeId>) {
        let (Some(routing), Some(leader)) = (&self.routing, leader) else {
            return;
        };
        if routing.observe(leader) && routing.begin_refresh(Instant::now()) {
            self.learn_nodes().await;
            routing.end_refresh();
        }
    }

    /// The first attempt's target: the leader's when routing knows it and it is not marked
    /// down, else the next in rotation.
    fn first_target(&self) -> usize {
        self.routing
            .as_ref()
            .and_then(LeaderRouting::leader_target)
            .filter(|&i| !self.targets.is_down(i))
            .unwrap_or_else(|| self.targets.pick())
    }

    /// The targets.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Publishes `body` (a JSON array) under `policy`: the same bytes on every attempt, each
    /// retry on another target, until acked, rejected, or attempts/deadline run out.
    pub async fn publish(
        &self,
        body: &Bytes,
        policy: &RetryPolicy,
        rng: &mut impl Rng,
    ) -> PublishResult {
        let deadline = Instant::now() + policy.deadline;
        let mut target = self.first_target();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = policy
                .attempt_timeout
                .min(remaining)
                .max(Duration::from_millis(1));
            let (status, error, retry_after) = match self.attempt(target, body, timeout).await {
                Attempt::Done(outcome) => {
                    return PublishResult {
                        outcome,
                        attempts,
                        target,
                    }
                }
                Attempt::Retry {
                    status,
                    error,
                    retry_after,
                    avoid_for,
                    leader_hint,
                } => {
                    if let Some(d) = avoid_for {
                        self.targets.mark_down(target, d);
                    }
                    // Retries keep to the rotation; new requests too until an answer (this
                    // 503's hint included) names the leader again.
                    if let Some(routing) = &self.routing {
                        routing.failed(target);
                    }
                    self.observe_leader(leader_hint).await;
                    (status, error, retry_after)
                }
            };
            let delay = policy.backoff(attempts, retry_after, rng);
            if attempts >= policy.max_attempts || Instant::now() + delay >= deadline {
                let why = if attempts >= policy.max_attempts {
                    "attempts"
                } else {
                    "deadline"
                };
                let error = format!("{error} (gave up: {why} exhausted after {attempts} attempts)");
                let outcome = PublishOutcome::Failed { status, error };
                return PublishResult {
                    outcome,
                    attempts,
                    target,
                };
            }
            tokio::time::sleep(delay).await;
            target = self.targets.after(target);
        }
    }

    async fn attempt(&self, target: usize, body: &Bytes, timeout: Duration) -> Attempt {
        let Some(Some(url)) = self.targets.publish_urls.get(target) else {
            let error = format!("bad target URL {:?}", self.targets.base(target));
            return Attempt::Done(PublishOutcome::Failed {
                status: None,
                error,
            });
        };
        let mut req = self
            .http
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body.clone());
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) if !transport_error_retries(&e) => {
                let outcome = PublishOutcome::Failed {
                    status: None,
                    error: error_chain(&e),
                };
                return Attempt::Done(outcome);
            }
            Err(e) => {
                // A refused connection means the node is down: spare the next requests the trip.
                let avoid_for = e.is_connect().then_some(Duration::from_secs(1));
                return Attempt::Retry {
                    status: None,
                    error: error_chain(&e),
                    retry_after: None,
                    avoid_for,
                    leader_hint: None,
                };
            }
        };
        let status = resp.status();
        let retry_after = retry_after_of(resp.headers());
        let bytes = resp.bytes().await;
        match (classify_status(status), bytes) {
            (_, Err(e)) => Attempt::Retry {
                status: Some(status.as_u16()),
                error: format!("reading the answer: {}", error_chain(&e)),
                retry_after,
                avoid_for: None,
                leader_hint: None,
            },
            (StatusClass::Success, Ok(b)) => Attempt::Done(PublishOutcome::Acked(b)),
            (StatusClass::Retry, Ok(b)) => Attempt::Retry {
                status: Some(status.as_u16()),
                error: format!("HTTP {}: {}", status.as_u16(), error_message(&b)),
                retry_after,
                // An overloaded node is avoided for as long as it asks.
                avoid_for: (status == StatusCode::TOO_MANY_REQUESTS)
                    .then_some(retry_after.unwrap_or_default()),
                leader_hint: leader_hint(&b),
            },
            (StatusClass::Reject, Ok(b)) => Attempt::Done(PublishOutcome::Rejected {
                status: status.as_u16(),
                message: error_message(&b),
            }),
        }
    }

    /// `get_json`, retried (reads are idempotent) on no answer or a 5xx, up to `attempts` times
    /// with a doubling pause from 250 ms: one slow moment of a busy node is not a verdict.
    pub async fn get_json_retrying<T: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        query: &[(&str, &str)],
        timeout: Duration,
        attempts: u32,
    ) -> Result<T, ClientError> {
        let mut pause = Duration::from_millis(250);
        let mut left = attempts.max(1);
        loop {
            left -= 1;
            match self.get_json(base, path, query, timeout).await {
                Err(e) if left > 0 && e.is_transient() => {
                    tracing::debug!("retrying a read after: {e}");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    /// GET `base + path_and_query` and parse the JSON answer.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        query: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = format!("{base}{path}");
        let mut req = self.http.get(&url).query(query).timeout(timeout);
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth);
        }
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let message = error_message(&body);
            return Err(ClientError::Status {
                url,
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode { url, source })
    }
}

fn retry_after_of(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()
        .and_then(parse_retry_after)
}

/// The `leader_id` of a JSON error body (a 503 names the leader when it knows it).
fn leader_hint(body: &[u8]) -> Option<NodeId> {
    serde_json::from_slice::<ErrorBody>(body).ok()?.leader_id
}

/// The `error` field of a JSON error body, or the start of the body text.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if !e.error.is_empty() => match serde_json::to_string(&e.details) {
            Ok(d) if !e.details.is_empty() => format!("{} {}", e.error, truncate(&d, 300)),
            _ => e.error,
        },
        _ => truncate(String::from_utf8_lossy(body).trim(), 300),
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

impl ClientError {
    /// No answer or a 5xx: asking again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => *status >= 500,
            ClientError::Decode { .. } => false,
        }
    }

    /// The shortest useful description: the innermost cause of a transport error
    /// ("Connection refused (os error 111)"), or the status and message.
    pub fn brief(&self) -> String {
        match self {
            ClientError::Transport { source, .. } => {
                let mut cur: &(dyn std::error::Error + 'static) = source;
                while let Some(next) = cur.source() {
                    cur = next;
                }
                if source.is_timeout() {
                    "timed out".to_string()
                } else {
                    cur.to_string()
                }
            }
            ClientError::Status {
                status, message, ..
            } => format!("HTTP {status}: {message}"),
            ClientError::Decode { source, .. } => format!("unreadable answer: {source}"),
        }
    }
}

/// A reqwest error with its causes ("error sending request: connection refused").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        }
    }

    #[tokio::test]
    async fn connection_errors_retry_then_fail_within_the_deadline() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let base = format!("http://127.0.0.1:{port}");
        let client = ApiClient::new(
            vec![base.clone()],
            None,
            None,
            1,
            Duration::from_millis(200),
        )
        .unwrap();
        // The transport error itself classifies as retryable.
        let err = client.http.get(&base).send().await.unwrap_err();
        assert!(err.is_connect() && transport_error_retries(&err));

        let p = RetryPolicy {
            max_attempts: 4,
            deadline: Duration::from_secs(10),
            ..policy()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let r = client
            .publish(&Bytes::from_static(b"[]"), &p, &mut rng)
            .await;
        assert_eq!(r.attempts, 4);
        assert!(
            matches!(r.outcome, PublishOutcome::Failed { status: None, .. }),
            "{r:?}"
        );

        let p = RetryPolicy {
            max_attempts: 1000,
            deadline: Duration::from_millis(300),
            ..policy()
        };
        let started = Instant::now();
        let r = client
            .publish(&Bytes::from_static(b"[]"), &p, &mut rng)
            .await;
        assert!(r.attempts > 1 && r.attempts < 1000);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
