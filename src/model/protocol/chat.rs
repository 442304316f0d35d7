//! Chat completions (`POST {base}/chat/completions`), read leniently: the dialects vLLM,
//! Ollama, llama.cpp, LM Studio and OpenRouter send (tool calls without `type`, `arguments`
//! as an object, content as a list of parts, unknown `finish_reason`, no `created`,
//! reasoning in `reasoning_content` or `reasoning`, tool calls written as `<tool_call>`
//! text) all become one [`ChatReply`]. Shared by every protocol served over chat
//! completions.

use super::DecodeError;
use crate::model::{Auth, ModelRequest, Usage};
use serde::Serialize;
use serde_json::{Value, json};

/// The conversation of a text protocol over chat completions (UI-TARS, Qwen, OpenCUA,
/// OSWorld's pyautogui): a system prompt, user turns of text and a screenshot, the
/// assistant's replies as text. The last `keep` screenshots are sent as pixels, older ones
/// as a note.
#[derive(Debug, Clone)]
pub struct ChatHistory {
    messages: Vec<Value>,
    images: super::Images,
    /// Where the model takes its declaration (Qwen's `tools`), if anywhere.
    pub tools: Option<Vec<Value>>,
}

impl ChatHistory {
    pub fn new(system: Option<String>, keep: usize) -> Self {
        Self {
            messages: system
                .map(|s| vec![json!({"role": "system", "content": s})])
                .unwrap_or_default(),
            images: super::Images::new(keep),
            tools: None,
        }
    }

    pub fn user_text(&mut self, text: &str) {
        self.messages.push(json!({"role": "user", "content": text}));
    }

    /// A conversation that sends no screenshots (`--observe a11y`).
    pub fn without_pixels(mut self) -> Self {
        self.images = self.images.without_pixels();
        self
    }

    /// A user turn of text and a screenshot (either may be empty), with the text that goes
    /// beside the screen after it; without pixels, that text alone.
    pub fn user_text_image(&mut self, text: &str, shot: &super::Shot) {
        let mut content = Vec::new();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        if self.images.sends_pixels() {
            let reference = self.images.add(shot);
            content.push(json!({"type": "image_url", "image_url": {"url": reference}}));
        }
        if let Some(tree) = shot.tree_text() {
            content.push(json!({"type": "text", "text": tree}));
        }
        self.messages
            .push(json!({"role": "user", "content": content}));
    }

    pub fn assistant_text(&mut self, text: &str) {
        self.messages
            .push(json!({"role": "assistant", "content": text}));
    }

    /// A raw assistant message (with `tool_calls`), as the server sent it.
    pub fn assistant_message(&mut self, message: Value) {
        self.messages.push(message);
    }

    /// A tool result message (servers that take them).
    pub fn tool_result(&mut self, id: &str, text: &str) {
        self.messages
            .push(json!({"role": "tool", "tool_call_id": id, "content": text}));
    }

    fn render(&self, pixels: bool) -> Vec<Value> {
        self.messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some(parts) = m["content"].as_array_mut() {
                    for p in parts.iter_mut() {
                        let Some(r) = p["image_url"]["url"].as_str().map(str::to_owned) else {
                            continue;
                        };
                        *p = match (self.images.is_recent(&r), pixels) {
                            (true, true) => match self.images.data_url(&r) {
                                Some(url) => {
                                    json!({"type": "image_url", "image_url": {"url": url}})
                                }
                                None => json!({"type": "text", "text": super::OMITTED}),
                            },
                            (true, false) => json!({"type": "image_url", "image_url": {"url": r}}),
                            (false, _) => json!({"type": "text", "text": super::OMITTED}),
                        };
                    }
                }
                m
            })
            .collect()
    }

    fn body(&self, messages: Vec<Value>) -> Value {
        let mut body = json!({"messages": messages, "stream": false});
        if let Some(tools) = &self.tools {
            body["tools"] = json!(tools);
            body["tool_choice"] = json!("auto");
        }
        body
    }

    /// The request, and its body without pixels for the recording.
    pub fn request(&self) -> (ModelRequest, Value) {
        (
            ModelRequest {
                path: "/chat/completions".into(),
                body: self.body(self.render(true)),
                headers: Vec::new(),
                auth: Auth::Bearer,
                blobs: self.images.blobs(),
                model_field: Default::default(),
            },
            self.body(self.render(false)),
        )
    }
}

/// What the model needs to hear of a turn's results, one line each, for protocols without
/// a result per call: why an action was not done, and what one returned (a cursor
/// position, the person's answer); plain `ok`s are left out.
pub fn result_lines(results: &[super::CallResult]) -> String {
    results
        .iter()
        .filter(|r| r.is_error || r.text != "ok")
        .map(|r| {
            if r.is_error {
                format!("Action {} was not done: {}\n", r.id, r.text)
            } else {
                format!("Action {}: {}\n", r.id, r.text)
            }
        })
        .collect()
}

/// A one-shot chat request: a system prompt, then a user message of text and images.
pub fn question(system: &str, text: &str, pngs: &[std::sync::Arc<Vec<u8>>]) -> ModelRequest {
    use base64::Engine as _;
    let mut content = vec![json!({"type": "text", "text": text})];
    for png in pngs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(png.as_slice());
        content.push(json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}}));
    }
    ModelRequest {
        path: "/chat/completions".into(),
        body: json!({
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": content},
            ],
            "stream": false,
        }),
        headers: Vec::new(),
        auth: Auth::Bearer,
        blobs: Default::default(),
        model_field: Default::default(),
    }
}

/// The text of a chat reply (its reasoning when it has no visible text).
pub fn answer_text(raw: &Value) -> Result<String, DecodeError> {
    let reply = parse_chat(raw)?;
    reply
        .text
        .or(reply.reasoning)
        .ok_or_else(|| DecodeError::Empty("no text".into()))
}

/// Markup that only a tool call or an action is written in. A reply that holds one but
/// yielded no call is a call that did not parse: a mistake to send back to the model,
/// never a final answer.
const CALL_MARKUP: &[&str] = &[
    "<tool_call>",
    "</tool_call>",
    "<function=",
    "<parameter=",
    "<|begin_of_box|>",
    "<seed:tool_call>",
];

/// The markup of a call in `text`, if it holds any (see [`CALL_MARKUP`]).
pub fn call_markup(text: &str) -> Option<&'static str> {
    CALL_MARKUP.iter().copied().find(|m| text.contains(m))
}

/// One tool call of a chat reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments: an object, or the raw string when it was not valid JSON.
    pub arguments: Value,
}

/// What a chat completion said.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatReply {
    /// Visible text.
    pub text: Option<String>,
    /// Reasoning the server returned separately (`reasoning_content`, `reasoning`).
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<String>,
    pub usage: Usage,
}

fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        // A list of parts: join the text ones.
        Value::Array(parts) => {
            let text: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(o) => o.get("text").and_then(Value::as_str),
                    _ => None,
                })
                .collect();
            (!text.is_empty()).then(|| text.join(""))
        }
        _ => None,
    }
    .map(|s| s.trim().to_owned())
    .filter(|s| !s.is_empty())
}

fn arguments_of(v: Option<&Value>) -> Value {
    match v {
        // The usual case: a JSON string. Keep the raw string when it does not parse, so
        // the error can be fed back to the model.
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::String(s.clone())),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(Value::Null) | None => json!({}),
        Some(other) => other.clone(),
    }
}

/// Tool calls written into the text (when the server does not parse them): JSON,
/// `<tool_call>{"name":..,"arguments":..}</tool_call>` (Hermes, Qwen2.5/3, Fara), or
/// XML-style, `<tool_call><function=NAME><parameter=KEY>VALUE</parameter>…</function>
/// </tool_call>` (Qwen3.5, Yutori), where each value is JSON when it parses and text
/// otherwise. Returns the calls and the text around them.
pub fn tool_calls_in_text(text: &str) -> (Vec<ToolCall>, String) {
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut remaining = text;
    while let Some(start) = remaining.find("<tool_call>") {
        rest.push_str(&remaining[..start]);
        let after = &remaining[start + "<tool_call>".len()..];
        let (inner, tail) = after.split_once("</tool_call>").unwrap_or((after, ""));
        let parsed: Vec<(String, Value)> = match json_object_in(inner) {
            Some(o) => vec![(
                o.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                arguments_of(o.get("arguments").or(o.get("parameters"))),
            )],
            None => xml_calls(inner),
        };
        if parsed.is_empty() {
            rest.push_str(&remaining[start..start + "<tool_call>".len()]);
            rest.push_str(inner);
        }
        for (name, arguments) in parsed {
            calls.push(ToolCall {
                id: format!("call_{}", calls.len()),
                name,
                arguments,
            });
        }
        remaining = tail;
    }
    rest.push_str(remaining);
    (calls, rest)
}

/// The JSON object a `<tool_call>` holds, if its text (trimmed) is one.
fn json_object_in(inner: &str) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_str::<Value>(inner.trim()) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}

/// XML-style calls: `<function=NAME>` with `<parameter=KEY>VALUE</parameter>`s. A
/// parameter named `type` stands for `action` when there is none (Qwen3.5 writes both).
fn xml_calls(inner: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut rest = inner;
    while let Some(at) = rest.find("<function=") {
        let after = &rest[at + "<function=".len()..];
        let Some((name, body)) = after.split_once('>') else {
            break;
        };
        let (body, tail) = body.split_once("</function>").unwrap_or((body, ""));
        let mut args = serde_json::Map::new();
        let mut params = body;
        while let Some(p) = params.find("<parameter=") {
            let after = &params[p + "<parameter=".len()..];
            let Some((key, value)) = after.split_once('>') else {
                break;
            };
            let (value, next) = value.split_once("</parameter>").unwrap_or((value, ""));
            // The line breaks around a value are the format's (`<parameter=text>\nhi\n`).
            let value = value.strip_prefix('\n').unwrap_or(value);
            let value = value.strip_suffix('\n').unwrap_or(value);
            let parsed = match serde_json::from_str::<Value>(value.trim()) {
                // Text the model meant as text stays text (a number typed, a key named).
                Ok(
                    v @ (Value::Array(_) | Value::Object(_) | Value::Number(_) | Value::Bool(_)),
                ) if key.trim() != "text" => v,
                _ => Value::String(value.to_owned()),
            };
            args.insert(key.trim().to_owned(), parsed);
            params = next;
        }
        if !args.contains_key("action")
            && let Some(t) = args.remove("type")
        {
            args.insert("action".into(), t);
        }
        out.push((name.trim().to_owned(), Value::Object(args)));
        rest = tail;
    }
    out
}

/// A chat-completions reply whose message is `text` (for the protocols' tests).
#[cfg(test)]
pub(crate) fn text_reply(text: &str) -> Value {
    serde_json::json!({"choices": [{"message": {"content": text}}]})
}

/// Reads a chat completion response in any of the dialects servers speak.
pub fn parse_chat(raw: &Value) -> Result<ChatReply, DecodeError> {
    if let Some(err) = raw.get("error").filter(|e| !e.is_null()) {
        return Err(DecodeError::Server(err.to_string()));
    }
    let choice = raw
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| DecodeError::shape("no choices in the response"))?;
    let message = choice
        .get("message")
        .or_else(|| choice.get("delta"))
        .ok_or_else(|| DecodeError::shape("no message in the first choice"))?;
    let mut text = message.get("content").and_then(text_of);
    let reasoning = ["reasoning_content", "reasoning", "thinking"]
        .iter()
        .find_map(|k| message.get(*k).and_then(text_of));
    let mut tool_calls: Vec<ToolCall> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let f = c.get("function").unwrap_or(c);
                    ToolCall {
                        id: c
                            .get("id")
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                            .map_or_else(|| format!("call_{i}"), str::to_owned),
                        name: f
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        arguments: arguments_of(f.get("arguments").or(f.get("parameters"))),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    // The legacy single function call.
    if tool_calls.is_empty()
        && let Some(f) = message.get("function_call").filter(|f| f.is_object())
    {
        tool_calls.push(ToolCall {
            id: "call_0".into(),
            name: f
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            arguments: arguments_of(f.get("arguments")),
        });
    }
    if tool_calls.is_empty()
        && let Some(t) = &text
        && t.contains("<tool_call>")
    {
        let (calls, rest) = tool_calls_in_text(t);
        if !calls.is_empty() {
            tool_calls = calls;
            text = Some(rest.trim().to_owned()).filter(|s| !s.is_empty());
        }
    }
    let usage = raw.get("usage").map_or_else(Usage::default, |u| Usage {
        input: ["prompt_tokens", "input_tokens"]
            .iter()
            .find_map(|k| u.get(*k).and_then(Value::as_u64))
            .unwrap_or(0),
        output: ["completion_tokens", "output_tokens"]
            .iter()
            .find_map(|k| u.get(*k).and_then(Value::as_u64))
            .unwrap_or(0),
        cache_read: u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
        cache_write: 0,
    });
    Ok(ChatReply {
        text,
        reasoning,
        tool_calls,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn openai_replies_parse() {
        let raw = json!({
            "id": "x", "object": "chat.completion", "created": 1,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Clicking the button.",
                "tool_calls": [{"id": "call_a", "type": "function", "function": {
                    "name": "computer", "arguments": "{\"action\":\"left_click\",\"coordinate\":[1,2]}"}}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7}
        });
        let r = parse_chat(&raw).unwrap();
        assert_eq!(r.text.as_deref(), Some("Clicking the button."));
        assert_eq!(
            r.tool_calls,
            vec![ToolCall {
                id: "call_a".into(),
                name: "computer".into(),
                arguments: json!({"action": "left_click", "coordinate": [1, 2]}),
            }]
        );
        assert_eq!((r.usage.input, r.usage.output), (100, 7));
    }

    #[test]
    fn lenient_variants_parse() {
        // vLLM/Ollama style: no `type`, arguments as an object, reasoning_content, no
        // created, unknown finish_reason, content as parts.
        let raw = json!({
            "choices": [{"finish_reason": "eos_token", "message": {
                "content": [{"type": "text", "text": "ok"}],
                "reasoning_content": "I should type.",
                "tool_calls": [{"function": {"name": "computer", "arguments": {"action": "type", "text": "hi"}}}]}}]
        });
        let r = parse_chat(&raw).unwrap();
        assert_eq!(r.reasoning.as_deref(), Some("I should type."));
        assert_eq!(r.finish_reason.as_deref(), Some("eos_token"));
        assert_eq!(r.tool_calls[0].id, "call_0");
        assert_eq!(
            r.tool_calls[0].arguments,
            json!({"action": "type", "text": "hi"})
        );
        assert_eq!(r.usage, Usage::default());

        // Arguments that are not JSON are kept raw, to be fed back as an error.
        let raw = json!({"choices": [{"message": {"tool_calls": [
            {"function": {"name": "computer", "arguments": "{\"action\": left_click"}}]}}]});
        assert_eq!(
            parse_chat(&raw).unwrap().tool_calls[0].arguments,
            json!("{\"action\": left_click")
        );

        // Tool calls left in the text by the server.
        let raw = json!({"choices": [{"message": {"content":
            "Let me look.\n<tool_call>\n{\"name\": \"computer\", \"arguments\": {\"action\": \"screenshot\"}}\n</tool_call>"}}]});
        let r = parse_chat(&raw).unwrap();
        assert_eq!(r.text.as_deref(), Some("Let me look."));
        assert_eq!(r.tool_calls[0].arguments, json!({"action": "screenshot"}));

        // The legacy function_call.
        let raw = json!({"choices": [{"message": {"function_call": {"name": "computer", "arguments": "{\"action\":\"wait\"}"}}}]});
        assert_eq!(
            parse_chat(&raw).unwrap().tool_calls[0].arguments,
            json!({"action": "wait"})
        );
    }

    #[test]
    fn unusable_replies_are_errors() {
        for raw in [
            json!({}),
            json!({"choices": []}),
            json!({"choices": [{}]}),
            json!({"error": {"message": "overloaded"}}),
        ] {
            assert!(parse_chat(&raw).is_err(), "{raw}");
        }
    }
}
