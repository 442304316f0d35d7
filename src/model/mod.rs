//! The model endpoint: one HTTP transport that every wire format shares (retries with
//! backoff, `Retry-After`, a cap on the reply's size, and the redaction of every secret it
//! sends from everything it returns), behind the small [`Model`] trait so the loop can also
//! run against an in-process model (the bench, tests).
//!
//! What a request and a reply *mean* is the protocol's business (`model::protocol`): this
//! module moves JSON. A reply the protocol cannot use is retried like a broken body.
//!
//! The HTTP client is reqwest rather than async-openai: the protocols need raw JSON (the
//! dialects of vLLM, Ollama, llama.cpp and LM Studio; Anthropic's and OpenAI's other APIs),
//! async-openai's errors drop the HTTP status of bodies that are not OpenAI-shaped and hide
//! `Retry-After`, and reading the body ourselves is what lets us cap it.

pub mod price;
pub mod protocol;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::time::{Duration, Instant};

/// A secret string (an API key): never printed by `Debug` or `Display`.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(none)"
        } else {
            "Secret(..)"
        })
    }
}

/// Token counts of one model call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    /// Prompt tokens read from the provider's cache (Anthropic `cache_read_input_tokens`,
    /// OpenAI `cached_tokens`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read: u64,
    /// Prompt tokens written to the provider's cache (Anthropic).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model server answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("the model call timed out after {0:.0?}")]
    Timeout(Duration),
    #[error("cannot reach the model server at {url}: {error}")]
    Connect { url: String, error: String },
    #[error("the model server sent a reply that is not usable: {0}")]
    Malformed(String),
    #[error(
        "the model server's reply is larger than {limit} bytes (--max-reply-bytes); it was cut off and not used"
    )]
    TooLarge { limit: usize },
    #[error("gave up after {attempts} attempts; last error: {last}")]
    GaveUp { attempts: u32, last: String },
}

impl ModelError {
    /// Whether trying again may help (rate limits, server errors, timeouts, garbage).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Http { status, .. } => *status == 429 || *status == 408 || *status >= 500,
            Self::Timeout(_)
            | Self::Connect { .. }
            | Self::Malformed(_)
            | Self::TooLarge { .. } => true,
            Self::GaveUp { .. } => false,
        }
    }
}

/// A retry about to happen, for progress reporting.
#[derive(Debug, Clone)]
pub struct Retry {
    pub attempt: u32,
    pub error: String,
    pub wait: Duration,
}

/// How the key travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer KEY` (OpenAI and compatible servers).
    Bearer,
    /// A header of its own: `x-api-key` (Anthropic), `x-goog-api-key` (Gemini).
    Header(&'static str),
}

impl Auth {
    /// `req` with the key attached (nothing when there is no key).
    fn apply(self, req: reqwest::RequestBuilder, key: &Secret) -> reqwest::RequestBuilder {
        if key.is_empty() {
            return req;
        }
        match self {
            Self::Bearer => req.bearer_auth(key.expose()),
            Self::Header(name) => req.header(name, key.expose()),
        }
    }
}

/// One request as a protocol encodes it.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// Appended to the base URL: `/chat/completions`, `/responses`, `/v1/messages`.
    pub path: String,
    /// The body, with each screenshot as a [`Blobs`] marker.
    pub body: Value,
    /// Besides the key (`anthropic-version`, `anthropic-beta`).
    pub headers: Vec<(String, String)>,
    pub auth: Auth,
    /// What the body's markers stand for.
    pub blobs: Blobs,
    /// Where the model id and `extra` go: the body (chat completions, Messages, Responses),
    /// or nowhere because the path names the model (Gemini's `models/ID:generateContent`),
    /// with `extra` merged into the object named here (`generationConfig`).
    pub model_field: ModelField,
}

/// Where a request names its model (see [`ModelRequest::model_field`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelField {
    /// `"model": ID` in the body; `extra` merged into the body.
    #[default]
    Body,
    /// The path names the model; `extra` merged into this object of the body.
    Path { extra_into: &'static str },
}

/// Screenshots (base64, hundreds of kilobytes each, several per request) stand in a
/// request's body as short markers and are spliced into the serialized JSON: serializing
/// them through `serde_json` every step cost more than everything else a protocol does.
/// Their text is base64, which JSON needs no escapes for.
#[derive(Debug, Clone, Default)]
pub struct Blobs(std::collections::HashMap<String, Blob>);

#[derive(Debug, Clone)]
struct Blob {
    prefix: &'static str,
    data: std::sync::Arc<str>,
}

/// How every marker starts and ends.
const MARKER_OPEN: &str = "@@selfagent-blob:";
const MARKER_CLOSE: &str = "@@";

impl Blobs {
    /// Registers `prefix` + `data` (base64 only) under `name`; returns the marker to put
    /// in the body.
    pub fn add(&mut self, name: &str, prefix: &'static str, data: std::sync::Arc<str>) -> String {
        debug_assert!(
            data.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)),
            "only base64 may be spliced unescaped"
        );
        let marker = format!("{MARKER_OPEN}{name}{MARKER_CLOSE}");
        self.0.insert(marker.clone(), Blob { prefix, data });
        marker
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `body` as JSON bytes with every marker replaced.
    pub fn serialize(&self, body: &Value) -> Vec<u8> {
        let json = body.to_string();
        if self.0.is_empty() {
            return json.into_bytes();
        }
        let extra: usize = self.0.values().map(|b| b.prefix.len() + b.data.len()).sum();
        let mut out = Vec::with_capacity(json.len() + extra);
        let mut rest = json.as_str();
        while let Some(at) = rest.find(MARKER_OPEN) {
            out.extend_from_slice(&rest.as_bytes()[..at]);
            rest = &rest[at..];
            let len = rest[MARKER_OPEN.len()..]
                .find(MARKER_CLOSE)
                .map_or(rest.len(), |e| MARKER_OPEN.len() + e + MARKER_CLOSE.len());
            let (marker, tail) = rest.split_at(len);
            match self.0.get(marker) {
                Some(b) => {
                    out.extend_from_slice(b.prefix.as_bytes());
                    out.extend_from_slice(b.data.as_bytes());
                }
                None => out.extend_from_slice(marker.as_bytes()),
            }
            rest = tail;
        }
        out.extend_from_slice(rest.as_bytes());
        out
    }
}

impl ModelRequest {
    /// The body as sent, markers replaced.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.blobs.serialize(&self.body)
    }

    /// The body as sent, as a value (for tests and tools).
    pub fn resolved_body(&self) -> Value {
        serde_json::from_slice(&self.to_bytes()).unwrap_or(Value::Null)
    }
}

/// A reply's body as it came, and how getting it went.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub body: Value,
    pub attempts: u32,
    pub elapsed: Duration,
}

/// A check of a reply's body: `Err` makes the transport retry (a protocol that cannot read
/// it).
pub type Check<'a> = &'a (dyn Fn(&Value) -> Result<(), String> + Send + Sync);

/// Anything that answers model requests.
pub trait Model: Send + Sync {
    /// A short name for records and logs.
    fn name(&self) -> &str;

    /// Answers one request; a body `check` refuses is retried; `on_retry` hears about each
    /// retry before its wait.
    fn send(
        &self,
        request: &ModelRequest,
        check: Check<'_>,
        on_retry: &(dyn Fn(Retry) + Send + Sync),
    ) -> impl std::future::Future<Output = Result<RawReply, ModelError>> + Send;
}

/// Settings of an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Requests go to `{base_url}{path}` (the protocol's path).
    pub base_url: String,
    pub model: String,
    pub api_key: Secret,
    /// Per request.
    pub timeout: Duration,
    pub max_retries: u32,
    /// Replies larger than this are cut off and retried (an endless or enormous reply must
    /// not take the machine down).
    pub max_reply_bytes: usize,
    /// Fields merged into every request (`temperature`, `max_tokens`, vendor options).
    pub extra: Map<String, Value>,
}

/// The default cap on a reply's size: far above any real computer-use reply (kilobytes).
pub const DEFAULT_MAX_REPLY_BYTES: usize = 4 << 20;

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "default".into(),
            api_key: Secret::default(),
            timeout: Duration::from_secs(120),
            max_retries: 5,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            extra: Map::new(),
        }
    }
}

/// The base URL without credentials, safe to record and print.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            if path.is_empty() {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => url.to_owned(),
    }
}

/// Replaces every secret in `text` with `[redacted]` (secrets shorter than 4 characters
/// are ignored: they would mangle ordinary text).
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[redacted]");
        }
    }
    out
}

/// An endpoint over HTTP.
pub struct HttpModel {
    config: EndpointConfig,
    http: reqwest::Client,
    /// What this transport sends that must never come back out of it: the key, and the
    /// credentials of the base URL. A server that echoes them (in an error body, in a
    /// reply) has them replaced before anything else sees the text.
    secrets: Vec<String>,
}

impl HttpModel {
    pub fn new(config: EndpointConfig) -> Result<Self, ModelError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ModelError::Connect {
                url: redact_url(&config.base_url),
                error: e.to_string(),
            })?;
        let mut secrets = Vec::new();
        if !config.api_key.is_empty() {
            secrets.push(config.api_key.expose().to_owned());
        }
        if let Some((_, rest)) = config.base_url.split_once("://")
            && let Some((userinfo, _)) = rest.split('/').next().and_then(|a| a.rsplit_once('@'))
        {
            secrets.extend(userinfo.split(':').map(str::to_owned));
        }
        Ok(Self {
            config,
            http,
            secrets,
        })
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    fn transport_error(&self, e: &reqwest::Error) -> ModelError {
        if e.is_timeout() {
            ModelError::Timeout(self.config.timeout)
        } else {
            ModelError::Connect {
                url: redact_url(&self.config.base_url),
                error: self.redact(&error_chain(e)),
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    async fn attempt(
        &self,
        request: &ModelRequest,
        body: &[u8],
    ) -> Result<(Value, Option<Duration>), (ModelError, Option<Duration>)> {
        let mut req = self
            .http
            .post(self.url(&request.path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        for (k, v) in &request.headers {
            req = req.header(k, v);
        }
        req = request.auth.apply(req, &self.config.api_key);
        let mut response = req
            .send()
            .await
            .map_err(|e| (self.transport_error(&e), None))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(120.0)));
        // Read it ourselves, a chunk at a time, so that an endless or enormous body stops
        // at the cap instead of filling memory.
        let limit = self.config.max_reply_bytes;
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > limit {
                        return Err((ModelError::TooLarge { limit }, retry_after));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err((self.transport_error(&e), retry_after)),
            }
        }
        let text = self.redact(&String::from_utf8_lossy(&bytes));
        if !(200..300).contains(&status) {
            let body = text.chars().take(2000).collect();
            return Err((ModelError::Http { status, body }, retry_after));
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => Ok((v, retry_after)),
            Err(e) => {
                let start: String = text.chars().take(200).collect();
                Err((
                    ModelError::Malformed(format!("not JSON ({e}): {start}")),
                    retry_after,
                ))
            }
        }
    }
}

/// What a model server says about itself before any episode: `GET /models`.
#[derive(Debug)]
pub enum Listing {
    /// The model ids it serves.
    Models(Vec<String>),
    /// It answered, but not with a list (HTTP `status`): many servers have no `/models`.
    /// Reachable, and the key was not refused; nothing more is known.
    NoList { status: u16 },
}

impl HttpModel {
    /// Asks the server which models it serves, at the protocol's models path (OpenAI and
    /// compatible servers at `{base}/models`, Anthropic at `{base}/v1/models`, Gemini at
    /// `{base}/v1beta/models`), within `within`. A refused connection, a timeout and a
    /// refused key (401, 403) are errors; any other answer means the server is there.
    pub async fn list_models(
        &self,
        endpoint: &crate::model::protocol::Endpoint,
        within: Duration,
    ) -> Result<Listing, ModelError> {
        let mut req = self
            .http
            .get(self.url(endpoint.models_path))
            .timeout(within);
        for (k, v) in endpoint.headers {
            req = req.header(*k, *v);
        }
        req = endpoint.auth.apply(req, &self.config.api_key);
        let response = req.send().await.map_err(|e| {
            if e.is_timeout() {
                ModelError::Timeout(within)
            } else {
                self.transport_error(&e)
            }
        })?;
        let status = response.status().as_u16();
        // A listing is small; anything past a megabyte is not one.
        let bytes = match response.bytes().await {
            Ok(b) if b.len() <= 1 << 20 => b,
            _ => return Ok(Listing::NoList { status }),
        };
        let text = self.redact(&String::from_utf8_lossy(&bytes));
        if status == 401 || status == 403 {
            let body = text.chars().take(300).collect();
            return Err(ModelError::Http { status, body });
        }
        if !(200..300).contains(&status) {
            return Ok(Listing::NoList { status });
        }
        // OpenAI's and Anthropic's `data[].id`, or Gemini's `models[].name`
        // (`models/gemini-…`).
        let ids: Option<Vec<String>> = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
            if let Some(models) = v.get("data").and_then(Value::as_array) {
                return Some(
                    models
                        .iter()
                        .filter_map(|m| m.get("id")?.as_str().map(str::to_owned))
                        .collect(),
                );
            }
            v.get("models")?.as_array().map(|models| {
                models
                    .iter()
                    .filter_map(|m| m.get("name")?.as_str())
                    .map(|n| n.trim_start_matches("models/").to_owned())
                    .collect()
            })
        });
        Ok(ids.map_or(Listing::NoList { status }, Listing::Models))
    }
}

/// An error with its causes, as one line ("error sending request: ... Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The wait before retry number `attempt` (1-based): exponential from 0.5 s to 20 s with
/// jitter, or what the server asked for.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(d) = retry_after {
        return d;
    }
    let base = 0.5 * 2f64.powi(attempt.saturating_sub(1).min(6) as i32);
    let jitter = 0.75 + rand::random::<f64>() * 0.5;
    Duration::from_secs_f64((base * jitter).min(20.0))
}

impl Model for HttpModel {
    fn name(&self) -> &str {
        &self.config.model
    }

    async fn send(
        &self,
        request: &ModelRequest,
        check: Check<'_>,
        on_retry: &(dyn Fn(Retry) + Send + Sync),
    ) -> Result<RawReply, ModelError> {
        let started = Instant::now();
        let mut body = request.body.clone();
        let target = match request.model_field {
            ModelField::Body => {
                if let Some(obj) = body.as_object_mut() {
                    obj.insert("model".into(), Value::String(self.config.model.clone()));
                }
                Some(&mut body)
            }
            ModelField::Path { extra_into } => {
                if !self.config.extra.is_empty()
                    && let Some(obj) = body.as_object_mut()
                {
                    obj.entry(extra_into)
                        .or_insert_with(|| Value::Object(Map::new()));
                }
                body.get_mut(extra_into)
            }
        };
        if let Some(obj) = target.and_then(Value::as_object_mut) {
            for (k, v) in &self.config.extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        let bytes = request.blobs.serialize(&body);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (error, retry_after) = match self.attempt(request, &bytes).await {
                Ok((raw, retry_after)) => match check(&raw) {
                    Ok(()) => {
                        return Ok(RawReply {
                            body: raw,
                            attempts: attempt,
                            elapsed: started.elapsed(),
                        });
                    }
                    Err(e) => (ModelError::Malformed(self.redact(&e)), retry_after),
                },
                Err(e) => e,
            };
            if !error.retryable() {
                return Err(error);
            }
            if attempt > self.config.max_retries {
                return Err(ModelError::GaveUp {
                    attempts: attempt,
                    last: error.to_string(),
                });
            }
            let wait = backoff(attempt, retry_after);
            on_retry(Retry {
                attempt,
                error: error.to_string(),
                wait,
            });
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("https://user:pw@api.example.com/v1?key=abc"),
            "https://api.example.com/v1"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8000/v1"),
            "http://127.0.0.1:8000/v1"
        );
        assert_eq!(redact_url("http://host"), "http://host");
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        assert!(backoff(1, None) <= Duration::from_secs_f64(0.63));
        assert!(backoff(4, None) >= Duration::from_secs(3));
        assert!(backoff(20, None) <= Duration::from_secs(20));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("sk-123")), "Secret(..)");
    }

    #[test]
    fn redaction_replaces_every_secret() {
        assert_eq!(
            redact(
                "key=abcd1234 and abcd1234",
                &["abcd1234".into(), "x".into()]
            ),
            "key=[redacted] and [redacted]"
        );
    }

    /// A one-shot HTTP server on loopback that answers every request with `response`.
    async fn serve(response: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 65536];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(&response).await;
                    // An endless body: keep sending until the client hangs up.
                    if response.ends_with(b"\r\n\r\n") {
                        let chunk = format!("{:x}\r\n{}\r\n", 65536, "x".repeat(65536));
                        while s.write_all(chunk.as_bytes()).await.is_ok() {}
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    fn endpoint(base_url: String, key: &str) -> HttpModel {
        HttpModel::new(EndpointConfig {
            base_url,
            api_key: Secret::new(key),
            max_retries: 0,
            max_reply_bytes: 1 << 20,
            ..EndpointConfig::default()
        })
        .unwrap()
    }

    fn request() -> ModelRequest {
        ModelRequest {
            path: "/chat/completions".into(),
            body: serde_json::json!({}),
            headers: vec![],
            auth: Auth::Header("x-api-key"),
            blobs: Blobs::default(),
            model_field: ModelField::Body,
        }
    }

    #[test]
    fn markers_are_spliced_and_nothing_else_changes() {
        let mut blobs = Blobs::default();
        let png = blobs.add("url:1", "data:image/png;base64,", "iVBORw0K+/=".into());
        let raw = blobs.add("b64:1", "", "QUJD".into());
        let body = serde_json::json!({
            "a": png,
            "b": [raw, "text with @@selfagent-blob:unknown@@ and @@ and \"quotes\""],
            "c": "@@selfagent-blob:unterminated",
        });
        let out: Value = serde_json::from_slice(&blobs.serialize(&body)).unwrap();
        assert_eq!(
            out,
            serde_json::json!({
                "a": "data:image/png;base64,iVBORw0K+/=",
                "b": ["QUJD", "text with @@selfagent-blob:unknown@@ and @@ and \"quotes\""],
                "c": "@@selfagent-blob:unterminated",
            })
        );
        // No blobs: plain serialization.
        assert_eq!(
            Blobs::default().serialize(&body),
            body.to_string().into_bytes()
        );
    }

    #[tokio::test]
    async fn an_endless_reply_stops_at_the_cap() {
        let url = serve(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec(),
        )
        .await;
        let e = endpoint(url, "k")
            .send(&request(), &|_| Ok(()), &|_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ModelError::GaveUp { last, .. } if last.contains("larger than 1048576")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_key_the_server_echoes_never_comes_out() {
        let key = "sk-echo-0123456789abcdef";
        let body = format!("{{\"error\": \"bad header x-api-key: {key}\"}}");
        let url = serve(
            format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
        .await;
        let e = endpoint(url, key)
            .send(&request(), &|_| Ok(()), &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(!e.contains(key) && e.contains("[redacted]"), "{e}");
    }
}
