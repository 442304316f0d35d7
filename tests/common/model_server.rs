//! A scripted model server: a real HTTP server on loopback that answers every wire format
//! selfagent speaks (`POST /v1/chat/completions`, Anthropic's `POST /v1/messages`, OpenAI's
//! `POST /v1/responses`, Gemini's `POST /v1beta/models/{model}:generateContent`) from a
//! script, checks every request, and can misbehave on purpose (HTTP 500 and 429, slow
//! replies, malformed JSON, odd but valid dialects). Helpers build each protocol's replies in
//! the shapes the real models send (`anthropic_*`, `responses_*`, `gemini_*`, `text_reply`).
//!
//! The vendors' own SDK types judge both directions (tests/common/sdk.rs): a request they
//! reject is answered HTTP 400 with their reason, as the vendor's API would, and noted as a
//! problem; every `Reply::Json` is sent as the SDK's response type serializes it (a reply
//! the SDK cannot parse is a problem of the test). `Reply::Raw` is sent as it is, for the
//! dialects no SDK speaks (servers that leave out `type` and `id`).
//!
//! Each request must carry a valid PNG screenshot of the advertised size as its latest
//! image; anything wrong is noted in `problems()`, which tests assert to be empty. Replies
//! are consumed in order; a request after the script ran out gets a final answer and a
//! problem noted.
//!
//! For batches ([`ModelServer::routed`]) many conversations run at once: each request is
//! routed by a text its messages contain (the task's instruction), and the reply is picked
//! by how many assistant messages the conversation already has, so concurrent and repeated
//! episodes of a task each get the whole script. Judge requests (no tools) get the route's
//! judge reply.

use super::sdk::{self, Api};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A 200 with this JSON body, as the API's SDK serializes it.
    Json(Value),
    /// A 200 with this JSON body as it is (a dialect the SDK types do not allow).
    Raw(Value),
    /// This status and body, with an optional Retry-After (seconds).
    Status {
        code: u16,
        body: String,
        retry_after: Option<u32>,
    },
    /// A 200 whose body is not JSON.
    Garbage(String),
    /// Wait, then answer.
    Slow(Duration, Box<Reply>),
    /// Answer once the test opens the gate (sends `true`): holds episodes at a known point.
    Gate(tokio::sync::watch::Receiver<bool>, Box<Reply>),
    /// This status, with a body that repeats the request's key headers (as some servers'
    /// error pages do).
    EchoAuth(u16),
    /// In routed conversations: answer with the reply once the latest screenshot passes
    /// the test; until then answer a short `wait`, as a model that sees the app is not
    /// ready yet would (those waits do not advance the script).
    When(fn(&image::RgbImage) -> bool, Box<Reply>),
    /// In routed conversations: answer with the reply, then do not move on until a
    /// screenshot passes the test (the effect is on screen): wait meanwhile, and send the
    /// reply again every `every` waits, as a careful model retries what an app ignored (a
    /// GTK file chooser ignores Return until it has resolved its folder).
    Until {
        done: fn(&image::RgbImage) -> bool,
        every: usize,
        reply: Box<Reply>,
    },
}

/// The text of the `wait` replies `Reply::When` and `Reply::Until` insert.
const NOT_READY: &str = "The screen is not ready yet; waiting.";
/// The text of the replies `Reply::Until` sends again.
const RETRY: &str = "That did not take effect yet; trying again.";
/// Waits in a row after which a conversation's screen is taken never to get ready.
const PATIENCE: usize = 60;

/// Every PNG in a request, in order, whatever the wire format: data URLs (chat
/// completions, Responses) and base64 image sources (Messages).
fn pngs(v: &Value, out: &mut Vec<Vec<u8>>) {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
    match v {
        Value::String(s) => {
            if let Some(data) = s.strip_prefix("data:image/png;base64,") {
                out.extend(b64(data));
            }
        }
        Value::Array(items) => items.iter().for_each(|i| pngs(i, out)),
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("image")
                && let Some(data) = map["source"]["data"].as_str()
            {
                out.extend(b64(data));
                return;
            }
            // Gemini's inline data.
            if let Some(data) = map.get("inlineData").and_then(|d| d["data"].as_str()) {
                out.extend(b64(data));
                return;
            }
            // Keys in a fixed order: an item's content comes before what follows it.
            for key in [
                "messages",
                "input",
                "contents",
                "content",
                "parts",
                "functionResponse",
                "output",
                "image_url",
                "url",
            ] {
                if let Some(item) = map.get(key) {
                    pngs(item, out);
                }
            }
        }
        _ => {}
    }
}

/// The newest screenshot in a request.
fn latest_screenshot(req: &Value) -> Option<image::RgbImage> {
    let mut all = Vec::new();
    pngs(req, &mut all);
    Some(image::load_from_memory(all.last()?).ok()?.to_rgb8())
}

/// An Anthropic Messages reply: optional text, then one `tool_use` per input.
pub fn anthropic_tool_use(text: Option<&str>, inputs: Vec<Value>) -> Reply {
    let mut content: Vec<Value> = text
        .map(|t| json!({"type": "text", "text": t}))
        .into_iter()
        .collect();
    for (i, input) in inputs.into_iter().enumerate() {
        content.push(json!({"type": "tool_use", "id": format!("toolu_{i:02}"), "name": "computer", "input": input}));
    }
    Reply::Json(
        json!({"id": "msg_test", "type": "message", "role": "assistant", "model": "scripted",
        "content": content, "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}),
    )
}

/// An Anthropic Messages reply of the computer toolset: optional text, then one
/// `tool_use` block per `(member, input)`, each with `"toolset_name": "computer"`.
pub fn anthropic_toolset(text: Option<&str>, blocks: Vec<(&str, Value)>) -> Reply {
    let mut content: Vec<Value> = text
        .map(|t| json!({"type": "text", "text": t}))
        .into_iter()
        .collect();
    for (i, (name, input)) in blocks.into_iter().enumerate() {
        content.push(
            json!({"type": "tool_use", "id": format!("toolu_{i:02}_{}", rand_id()),
            "name": name, "toolset_name": "computer", "input": input}),
        );
    }
    Reply::Json(
        json!({"id": "msg_test", "type": "message", "role": "assistant", "model": "scripted",
        "content": content, "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}),
    )
}

/// A Gemini `generateContent` reply with optional text and one `functionCall` per
/// `(name, args)`.
pub fn gemini_calls(text: Option<&str>, calls: Vec<(&str, Value)>) -> Reply {
    let mut parts: Vec<Value> = text.map(|t| json!({"text": t})).into_iter().collect();
    for (name, args) in calls {
        parts.push(json!({"functionCall": {"name": name, "args": args}}));
    }
    Reply::Json(json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10, "totalTokenCount": 110},
        "modelVersion": "scripted"
    }))
}

/// A Gemini final answer: text and no call.
pub fn gemini_answer(text: &str) -> Reply {
    gemini_calls(Some(text), Vec::new())
}

/// An Anthropic Messages final answer (`end_turn`, no tool use).
pub fn anthropic_answer(text: &str) -> Reply {
    Reply::Json(
        json!({"id": "msg_test", "type": "message", "role": "assistant", "model": "scripted",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 100, "output_tokens": 10}}),
    )
}

/// An OpenAI Responses reply with one computer call: a preview `action`, or a GA batch of
/// `actions` when several are given; safety checks optional.
pub fn responses_call(actions: Vec<Value>, safety: Vec<Value>) -> Reply {
    let mut call = json!({"type": "computer_call", "id": "cu_test", "call_id": format!("call_{}", rand_id()), "status": "completed", "pending_safety_checks": safety});
    if actions.len() == 1 {
        call["action"] = actions[0].clone();
    } else {
        call["actions"] = json!(actions);
    }
    Reply::Json(
        json!({"id": format!("resp_{}", rand_id()), "object": "response", "status": "completed",
        "output": [{"type": "reasoning", "id": "rs_test", "summary": [{"type": "summary_text", "text": "Working on it."}]}, call],
        "usage": responses_usage()}),
    )
}

/// An OpenAI Responses final message.
pub fn responses_answer(text: &str) -> Reply {
    Reply::Json(
        json!({"id": format!("resp_{}", rand_id()), "object": "response", "status": "completed",
        "output": [{"type": "message", "id": "msg_test", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": responses_usage()}),
    )
}

/// The Responses API's usage object, whole (its SDK type requires every part).
fn responses_usage() -> Value {
    json!({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
           "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 110})
}

fn rand_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A chat completion whose message is plain text (UI-TARS, Qwen's `<tool_call>` text,
/// OpenCUA, OSWorld's pyautogui code).
pub fn text_reply(text: &str) -> Reply {
    Reply::Json(completion(json!({"role": "assistant", "content": text})))
}

/// A completion whose message is `message`.
pub fn completion(message: Value) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": "scripted",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    })
}

/// One `computer` call with `args`, as OpenAI sends it (arguments as a JSON string).
pub fn call(args: Value) -> Reply {
    calls(vec![args])
}

/// Several `computer` calls in one reply.
pub fn calls(list: Vec<Value>) -> Reply {
    let tool_calls: Vec<Value> = list
        .iter()
        .enumerate()
        .map(|(i, a)| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": "computer", "arguments": a.to_string()}}))
        .collect();
    Reply::Json(completion(
        json!({"role": "assistant", "content": "Working on it.", "tool_calls": tool_calls}),
    ))
}

/// A call in the dialect some local servers speak: no `type`, no `id`, arguments as an
/// object, reasoning in `reasoning_content`, an unknown finish reason, no `created`.
pub fn call_lenient(args: Value) -> Reply {
    Reply::Raw(json!({
        "choices": [{"finish_reason": "eos", "message": {
            "content": null,
            "reasoning_content": "thinking in the other field",
            "tool_calls": [{"function": {"name": "computer", "arguments": args}}]
        }}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10}
    }))
}

/// A final answer (no tool call).
pub fn answer(text: &str) -> Reply {
    Reply::Json(completion(json!({"role": "assistant", "content": text})))
}

/// A short `wait` that does not advance a routed script.
fn not_ready() -> Reply {
    Reply::Json(completion(json!({
        "role": "assistant",
        "content": NOT_READY,
        "tool_calls": [{"id": "wait", "type": "function", "function": {
            "name": "computer",
            "arguments": json!({"action": "wait", "duration": 0.3}).to_string()
        }}]
    })))
}

/// `reply` sent again by `Reply::Until`: marked so that it does not advance the script.
fn retried(reply: Reply) -> Reply {
    match reply {
        Reply::Json(mut v) => {
            v["choices"][0]["message"]["content"] = json!(RETRY);
            Reply::Json(v)
        }
        Reply::Raw(mut v) => {
            v["choices"][0]["message"]["content"] = json!(RETRY);
            Reply::Raw(v)
        }
        Reply::Slow(d, inner) => Reply::Slow(d, Box::new(retried(*inner))),
        Reply::Gate(g, inner) => Reply::Gate(g, Box::new(retried(*inner))),
        Reply::When(_, inner) | Reply::Until { reply: inner, .. } => retried(*inner),
        other => other,
    }
}

/// A conversation's script, chosen by a text in its messages.
#[derive(Debug, Clone)]
pub struct Route {
    pub needle: String,
    /// Reply n answers a request with n assistant messages; then "done".
    pub replies: Vec<Reply>,
    /// The answer to a judge's request about this task.
    pub judge: Option<Reply>,
}

pub fn route(needle: &str, replies: Vec<Reply>) -> Route {
    Route {
        needle: needle.to_owned(),
        replies,
        judge: None,
    }
}

/// A sequential script's `Reply::Until` whose effect is not on screen yet: the test, how
/// often to retry, the reply, and the waits so far.
type Pending = (fn(&image::RgbImage) -> bool, usize, Box<Reply>, usize);

struct Inner {
    /// Check requests as the `tools` protocol's (its `computer` function advertising the
    /// size); otherwise only the screenshot's size is checked.
    tools_protocol: bool,
    /// The short wait of a sequential script (the `tools` protocol's when `None`).
    wait: Option<Reply>,
    script: VecDeque<Reply>,
    pending: Option<Pending>,
    /// Waits and retries served (they are not in the script).
    waits: usize,
    /// Waits for the `When` at the head of the script.
    waits_here: usize,
    routes: Vec<Route>,
    /// What `GET /v1/models` answers: the one model id served, or an HTTP status that
    /// echoes the key it was sent (a server refusing the key, and careless with it).
    listing: Result<&'static str, u16>,
    requests: Vec<Value>,
    auth: Vec<Option<String>>,
    problems: Vec<String>,
    expect: (u32, u32),
    /// The run shows the model no screenshot (`--observe a11y`): any image is a problem.
    no_screenshots: bool,
}

#[derive(Clone)]
pub struct ModelServer {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl ModelServer {
    /// Starts serving `script`; screenshots must be `expect` pixels.
    pub async fn start(script: Vec<Reply>, expect: (u32, u32)) -> Self {
        Self::serve(script, Vec::new(), expect).await
    }

    /// Serves conversations by route (see the module docs).
    pub async fn routed(routes: Vec<Route>, expect: (u32, u32)) -> Self {
        Self::serve(Vec::new(), routes, expect).await
    }

    /// Serves `script` to any protocol: each request's latest screenshot must be `expect`
    /// pixels (the size that protocol's model sees); `wait` is that protocol's short wait,
    /// for `Reply::When` and `Reply::Until`.
    pub async fn any_protocol(script: Vec<Reply>, expect: (u32, u32), wait: Reply) -> Self {
        let server = Self::serve(script, Vec::new(), expect).await;
        {
            let mut s = server.inner.lock().unwrap();
            s.tools_protocol = false;
            s.wait = Some(wait);
        }
        server
    }

    async fn serve(script: Vec<Reply>, routes: Vec<Route>, expect: (u32, u32)) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            tools_protocol: true,
            wait: None,
            script: script.into(),
            pending: None,
            waits: 0,
            waits_here: 0,
            routes,
            listing: Ok(SCRIPTED_MODEL),
            requests: Vec::new(),
            auth: Vec::new(),
            problems: Vec::new(),
            expect,
            no_screenshots: false,
        }));
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/v1/messages", post(handle))
            .route("/v1/responses", post(handle))
            .route("/v1beta/models/{call}", post(handle))
            .route("/v1/models", axum::routing::get(models))
            .route("/v1beta/models", axum::routing::get(models))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, inner }
    }

    /// Requests must carry no screenshot at all (`--observe a11y`).
    pub fn expect_no_screenshots(&self) {
        self.inner.lock().unwrap().no_screenshots = true;
    }

    /// `GET /v1/models` answers `status`, echoing the key it was sent.
    pub fn refuse_listing(&self, status: u16) {
        self.inner.lock().unwrap().listing = Err(status);
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Value> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The Authorization headers, request by request.
    pub fn auth(&self) -> Vec<Option<String>> {
        self.inner.lock().unwrap().auth.clone()
    }

    pub fn problems(&self) -> Vec<String> {
        self.inner.lock().unwrap().problems.clone()
    }

    /// The waits and retries served for `Reply::When` and `Reply::Until` (each is a step
    /// of the episode that the script does not list).
    pub fn waits(&self) -> usize {
        self.inner.lock().unwrap().waits
    }

    pub fn remaining(&self) -> usize {
        self.inner.lock().unwrap().script.len()
    }
}

/// Checks a request of any protocol: its latest screenshot is a PNG of `expect` pixels.
fn check_image(req: &Value, expect: (u32, u32)) -> Vec<String> {
    let mut all = Vec::new();
    pngs(req, &mut all);
    let Some(last) = all.last() else {
        return vec!["no screenshot in the request".into()];
    };
    match image::load_from_memory_with_format(last, image::ImageFormat::Png) {
        Err(e) => vec![format!("not a PNG: {e}")],
        Ok(img) if (img.width(), img.height()) != expect => vec![format!(
            "screenshot is {}x{}, the model sees {}x{}",
            img.width(),
            img.height(),
            expect.0,
            expect.1
        )],
        Ok(_) => Vec::new(),
    }
}

/// Checks one request of the `tools` protocol; returns what is wrong with it.
fn check(req: &Value, expect: (u32, u32)) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(messages) = req["messages"].as_array() else {
        return vec!["no messages".into()];
    };
    if req["tools"][0]["function"]["name"] != "computer" {
        problems.push("no computer tool".into());
    }
    let advertised = format!("{}x{}", expect.0, expect.1);
    if !req["tools"][0]["function"]["description"]
        .as_str()
        .unwrap_or_default()
        .contains(&advertised)
    {
        problems.push(format!("the tool does not advertise {advertised}"));
    }
    let urls: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter_map(|p| p["image_url"]["url"].as_str())
        .collect();
    let Some(last) = urls.last() else {
        return vec!["no screenshot in the request".into()];
    };
    match last.strip_prefix("data:image/png;base64,") {
        None => problems.push(format!(
            "the screenshot is not a PNG data URL: {}",
            &last[..last.len().min(40)]
        )),
        Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Err(e) => problems.push(format!("bad base64: {e}")),
            Ok(png) => match image::load_from_memory_with_format(&png, image::ImageFormat::Png) {
                Err(e) => problems.push(format!("not a PNG: {e}")),
                Ok(img) if (img.width(), img.height()) != expect => problems.push(format!(
                    "screenshot is {}x{}, advertised {advertised}",
                    img.width(),
                    img.height()
                )),
                Ok(_) => {}
            },
        },
    }
    problems
}

fn respond(
    reply: Reply,
    api: Option<Api>,
    inner: Arc<Mutex<Inner>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
    Box::pin(async move {
        match reply {
            Reply::Json(v) => match api {
                // Built from the SDK's response type: what the vendor's API would send.
                Some(api) => match sdk::judge(api, "reply", &v).await {
                    Ok(canonical) => (StatusCode::OK, axum::Json(canonical)).into_response(),
                    Err(e) => {
                        inner.lock().unwrap().problems.push(format!(
                            "a scripted reply is not a {api:?} reply by the SDK's types: {e}"
                        ));
                        (StatusCode::INTERNAL_SERVER_ERROR, e).into_response()
                    }
                },
                None => (StatusCode::OK, axum::Json(v)).into_response(),
            },
            Reply::Raw(v) => (StatusCode::OK, axum::Json(v)).into_response(),
            Reply::Garbage(body) => {
                (StatusCode::OK, [("content-type", "application/json")], body).into_response()
            }
            Reply::Status {
                code,
                body,
                retry_after,
            } => {
                let mut r = (StatusCode::from_u16(code).unwrap(), body).into_response();
                if let Some(s) = retry_after {
                    r.headers_mut()
                        .insert("retry-after", s.to_string().parse().unwrap());
                }
                r
            }
            Reply::Slow(d, reply) => {
                tokio::time::sleep(d).await;
                respond(*reply, api, inner).await
            }
            Reply::Gate(mut gate, reply) => {
                let _ = gate.wait_for(|open| *open).await;
                respond(*reply, api, inner).await
            }
            Reply::When(_, reply) | Reply::Until { reply, .. } => respond(*reply, api, inner).await,
            Reply::EchoAuth(code) => (StatusCode::from_u16(code).unwrap(), "echo").into_response(),
        }
    })
}

/// The next reply of a sequential script: `When` waits for its screen, `Until` is retried
/// until its effect shows.
fn sequential(s: &mut Inner, n: usize, shot: Option<&image::RgbImage>) -> Reply {
    if let Some((done, every, reply, since)) = s.pending.take()
        && !shot.is_some_and(done)
    {
        if since >= PATIENCE {
            s.problems
                .push(format!("request {n}: a reply never took effect on screen"));
        } else {
            s.waits += 1;
            let next = if (since + 1) % every.max(1) == 0 {
                retried(*reply.clone())
            } else {
                s.wait.clone().unwrap_or_else(not_ready)
            };
            s.pending = Some((done, every, reply, since + 1));
            return next;
        }
    }
    match s.script.pop_front() {
        Some(Reply::When(ready, reply)) => {
            if shot.is_some_and(ready) || s.waits_here >= PATIENCE {
                if s.waits_here >= PATIENCE {
                    s.problems
                        .push(format!("request {n}: the screen never became ready"));
                }
                s.waits_here = 0;
                *reply
            } else {
                s.waits += 1;
                s.waits_here += 1;
                s.script.push_front(Reply::When(ready, reply));
                s.wait.clone().unwrap_or_else(not_ready)
            }
        }
        Some(Reply::Until { done, every, reply }) => {
            s.pending = Some((done, every, reply.clone(), 0));
            *reply
        }
        Some(r) => r,
        None => {
            s.problems.push(format!("request {n}: the script ran out"));
            answer("the script ran out")
        }
    }
}

/// The model id the scripted server lists: runs without `--model` use it.
pub const SCRIPTED_MODEL: &str = "scripted";

async fn models(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let listing = inner.lock().unwrap().listing;
    match listing {
        // Gemini lists `models[].name`.
        Ok(id) if uri.path().starts_with("/v1beta") => axum::Json(serde_json::json!({
            "models": [{"name": format!("models/{id}"), "displayName": id}]
        }))
        .into_response(),
        Ok(id) => axum::Json(serde_json::json!({
            "object": "list",
            "data": [{"id": id, "object": "model", "owned_by": "selfagent-tests"}]
        }))
        .into_response(),
        Err(status) => {
            let key = headers
                .get("authorization")
                .or_else(|| headers.get("x-api-key"))
                .or_else(|| headers.get("x-goog-api-key"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            let body = format!(
                "{{\"error\":{{\"message\":\"Incorrect API key provided: {key}\",\"type\":\"invalid_request_error\"}}}}"
            );
            (StatusCode::from_u16(status).unwrap(), body).into_response()
        }
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let api = Api::of_path(uri.path());
    // The vendor's SDK types judge the request first, as the vendor's API would.
    if let (Some(api), Ok(req)) = (api, serde_json::from_str::<Value>(&body))
        && let Err(why) = sdk::judge(api, "request", &req).await
    {
        let mut s = inner.lock().unwrap();
        let n = s.requests.len() + 1;
        s.problems.push(format!(
            "request {n} ({}) is refused by the {api:?} SDK's types: {why}",
            uri.path()
        ));
        s.requests.push(req);
        let body = json!({"type": "error", "error": {"type": "invalid_request_error",
            "message": format!("the SDK's request types refuse this request: {why}")}});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    let reply = {
        let mut s = inner.lock().unwrap();
        let req: Value = match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(e) => {
                s.problems.push(format!("request is not JSON: {e}"));
                return (StatusCode::BAD_REQUEST, "not json").into_response();
            }
        };
        let expect = s.expect;
        let judging = req.get("tools").is_none() && !s.routes.is_empty();
        let problems = if judging {
            Vec::new()
        } else if s.no_screenshots {
            let mut all = Vec::new();
            pngs(&req, &mut all);
            if all.is_empty() {
                Vec::new()
            } else {
                vec![format!(
                    "{} screenshots in a run that shows none",
                    all.len()
                )]
            }
        } else if s.tools_protocol {
            check(&req, expect)
        } else {
            check_image(&req, expect)
        };
        let n = s.requests.len() + 1;
        s.problems
            .extend(problems.into_iter().map(|p| format!("request {n}: {p}")));
        s.auth.push(
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        if !s.routes.is_empty() {
            let text = req["messages"].to_string();
            let assistant: Vec<&str> = req["messages"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter(|m| m["role"] == "assistant")
                        .map(|m| m["content"].as_str().unwrap_or_default())
                        .collect()
                })
                .unwrap_or_default();
            let scripted = |c: &str| c != NOT_READY && c != RETRY;
            let turns = assistant.iter().filter(|c| scripted(c)).count();
            // Waits and retries since the last scripted reply.
            let since = assistant.iter().rev().take_while(|c| !scripted(c)).count();
            let shot = latest_screenshot(&req);
            s.requests.push(req);
            let found = s.routes.iter().find(|r| text.contains(&r.needle)).cloned();
            match (found, judging) {
                (None, _) => {
                    s.problems.push(format!("request {n}: no route matches"));
                    answer("no route")
                }
                (Some(r), true) => r.judge.clone().unwrap_or_else(|| {
                    s.problems.push(format!(
                        "request {n}: a judge request for {}, which has no judge reply",
                        r.needle
                    ));
                    answer("{\"passed\": false, \"reason\": \"no judge scripted\"}")
                }),
                (Some(r), false) => {
                    let pending = turns
                        .checked_sub(1)
                        .and_then(|i| r.replies.get(i))
                        .and_then(|prev| match prev {
                            Reply::Until { done, every, reply } => {
                                (!shot.as_ref().is_some_and(done)).then(|| (every, reply.clone()))
                            }
                            _ => None,
                        });
                    match (pending, r.replies.get(turns).cloned()) {
                        (Some(_), _) if since >= PATIENCE => {
                            s.problems.push(format!(
                                "request {n}: reply {turns} of {} never took effect on screen",
                                r.needle
                            ));
                            answer("gave up")
                        }
                        (Some((every, reply)), _) => {
                            if (since + 1) % (*every).max(1) == 0 {
                                retried(*reply)
                            } else {
                                not_ready()
                            }
                        }
                        (None, None) => answer("done"),
                        (None, Some(Reply::When(ready, reply))) => {
                            if shot.as_ref().is_some_and(ready) {
                                *reply
                            } else if since >= PATIENCE {
                                s.problems
                                    .push(format!("request {n}: the screen never became ready"));
                                *reply
                            } else {
                                not_ready()
                            }
                        }
                        (None, Some(reply)) => reply,
                    }
                }
            }
        } else {
            let shot = latest_screenshot(&req);
            s.requests.push(req);
            sequential(&mut s, n, shot.as_ref())
        }
    };
    if let Reply::EchoAuth(code) = reply {
        let echoed: Vec<String> = ["authorization", "x-api-key"]
            .iter()
            .filter_map(|h| {
                headers
                    .get(*h)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| format!("{h}: {v}"))
            })
            .collect();
        let body = json!({"error": {"message": format!("invalid credentials; you sent {}", echoed.join(", "))}});
        return (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response();
    }
    respond(reply, api, inner).await
}
