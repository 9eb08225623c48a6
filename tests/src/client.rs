//! HTTP client for the server's API as the tests use it: publish, reads, admin.
//!
//! Connections are not pooled: nodes are killed and restarted under the tests, and a stale
//! pooled connection would turn into a spurious error. Every request has a timeout, because a
//! SIGSTOPped node accepts connections but never answers.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{ClusterInfo, DigestReply, EventsPage, PublishResponse, Stats, StoredEventJson};

/// What a publish came back with.
#[derive(Clone, Debug)]
pub enum PublishReply {
    /// 200 with the parsed body.
    Ok(PublishResponse),
    /// Any other status, with the body (JSON if it parsed, else a string) and `Retry-After`.
    Status {
        /// HTTP status code.
        status: u16,
        /// The body.
        body: Value,
        /// The `Retry-After` header, if any.
        retry_after: Option<String>,
    },
    /// No HTTP answer: refused, reset, timed out.
    Transport(String),
}

impl PublishReply {
    /// The 200 body; panics with the reply otherwise.
    pub fn expect_ok(self) -> PublishResponse {
        match self {
            PublishReply::Ok(r) => r,
            other => panic!("expected 200 from /publish, got {other:?}"),
        }
    }

    /// Whether the cluster acknowledged the publish.
    pub fn is_ok(&self) -> bool {
        matches!(self, PublishReply::Ok(_))
    }

    /// The HTTP status, if there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            PublishReply::Ok(_) => Some(200),
            PublishReply::Status { status, .. } => Some(*status),
            PublishReply::Transport(_) => None,
        }
    }
}

/// A JSON answer with its status and the provenance headers.
#[derive(Clone, Debug)]
pub struct JsonReply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers (lowercase names), e.g. the `x-served-by` provenance.
    pub headers: BTreeMap<String, String>,
    /// The body (Null when it was not JSON).
    pub body: Value,
}

/// Client for the nodes' HTTP API; cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl Default for ApiClient {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl ApiClient {
    /// A client whose every request gives up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self::with_token_opt(timeout, None)
    }

    /// A client sending `Authorization: Bearer TOKEN` on every request (when given).
    pub fn with_token_opt(timeout: Duration, token: Option<&str>) -> Self {
        Self::with_tls(timeout, token, None)
    }

    /// [`ApiClient::with_token_opt`] trusting the CA in the PEM file `ca` (for https:// nodes).
    pub fn with_tls(timeout: Duration, token: Option<&str>, ca: Option<&std::path::Path>) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let value =
                HeaderValue::from_str(&format!("Bearer {token}")).expect("token is a header value");
            headers.insert(AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(1))
            .default_headers(headers);
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).expect("read CA file");
            let cert = reqwest::Certificate::from_pem(&pem).expect("CA certificate");
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().expect("build reqwest client");
        Self { http, timeout }
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            http: self.http.clone(),
            timeout,
        }
    }

    /// `POST /publish` with a JSON body (one event or an array).
    pub async fn publish(&self, base: &str, body: &Value) -> PublishReply {
        let bytes = serde_json::to_vec(body).expect("serialize body");
        self.publish_raw(base, bytes, Some("application/json"))
            .await
    }

    /// `POST /publish` with arbitrary bytes and content type (for bad input).
    pub async fn publish_raw(
        &self,
        base: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> PublishReply {
        let mut req = self
            .http
            .post(format!("{base}/publish"))
            .timeout(self.timeout)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return PublishReply::Transport(format!("{e:?}")),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return PublishReply::Transport(format!("reading body: {e:?}")),
        };
        if status == 200 {
            match serde_json::from_slice(&bytes) {
                Ok(parsed) => PublishReply::Ok(parsed),
                Err(e) => panic!(
                    "200 from /publish with an unexpected body ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        } else {
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            PublishReply::Status {
                status,
                body,
                retry_after,
            }
        }
    }

    /// `GET base+path_and_query`, any status, body as JSON.
    pub async fn get(&self, base: &str, path_and_query: &str) -> Result<JsonReply, String> {
        let resp = self
            .http
            .get(format!("{base}{path_and_query}"))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| format!("GET {base}{path_and_query}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = header_map(resp.headers());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("GET {base}{path_and_query} body: {e}"))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(JsonReply {
            status,
            headers,
            body,
        })
    }

    /// `GET` expecting 200 and a body of type `T`.
    pub async fn get_ok<T: DeserializeOwned>(
        &self,
        base: &str,
        path_and_query: &str,
    ) -> Result<T, String> {
        let reply = self.get(base, path_and_query).await?;
        if reply.status != 200 {
            return Err(format!(
                "GET {base}{path_and_query}: status {} body {}",
                reply.status, reply.body
            ));
        }
        serde_json::from_value(reply.body.clone()).map_err(|e| {
            format!(
                "GET {base}{path_and_query}: unexpected body ({e}): {}",
                reply.body
            )
        })
    }

    /// `POST base+path` with a JSON body; any status, body as JSON.
    pub async fn post(&self, base: &str, path: &str, body: &Value) -> Result<JsonReply, String> {
        let resp = self
            .http
            .post(format!("{base}{path}"))
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("POST {base}{path}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = header_map(resp.headers());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("POST {base}{path} body: {e}"))?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(JsonReply {
            status,
            headers,
            body,
        })
    }

    /// `PUT` (or any `method`) `base+path` with an optional JSON body; any status, body as
    /// JSON (or its text as a JSON string when it is not JSON).
    pub async fn send(
        &self,
        method: reqwest::Method,
        base: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<JsonReply, String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{base}{path}"))
            .timeout(self.timeout);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {base}{path}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = header_map(resp.headers());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("{method} {base}{path} body: {e}"))?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(JsonReply {
            status,
            headers,
            body,
        })
    }

    /// `GET /stats` as the node answers by default.
    pub async fn stats(&self, base: &str) -> Result<Stats, String> {
        self.get_ok(base, "/stats").await
    }

    /// `GET /stats?consistency=eventual`: the node's own state, never forwarded.
    pub async fn local_stats(&self, base: &str) -> Result<Stats, String> {
        self.get_ok(base, "/stats?consistency=eventual").await
    }

    /// `GET /digest`.
    pub async fn digest(&self, base: &str) -> Result<DigestReply, String> {
        self.get_ok(base, "/digest").await
    }

    /// `GET /cluster`.
    pub async fn cluster(&self, base: &str) -> Result<ClusterInfo, String> {
        self.get_ok(base, "/cluster").await
    }

    /// Every event of `topic` (or `source`, when `by` is "source"), following `next` through all
    /// pages, read at the given consistency level.
    pub async fn all_events(
        &self,
        base: &str,
        by: &str,
        value: &str,
        consistency: &str,
    ) -> Result<Vec<StoredEventJson>, String> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        // Bounded: far more pages than any test stores.
        for _ in 0..10_000 {
            let mut query = format!("/events?{by}={value}&limit=1000&consistency={consistency}");
            if let Some(cursor) = &after {
                query.push_str(&format!("&after={cursor}"));
            }
            let page: EventsPage = self.get_ok(base, &query).await?;
            let done = page.events.is_empty();
            out.extend(page.events);
            after = match page.next {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(other) => Some(other.to_string()),
            };
            if after.is_none() || done {
                return Ok(out);
            }
        }
        Err(format!("{base}: /events?{by}={value} never ended"))
    }
}

/// Response headers as a map of lowercase name to (lossy) text value.
fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}
