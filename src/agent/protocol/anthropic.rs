//! `anthropic`: the Messages API (`POST {base}/v1/messages`) with Anthropic's built-in
//! `computer` tool (`computer_20250124`, or `computer_20251124` with `zoom` for the newer
//! models; `--tool-version` chooses), `x-api-key` and `anthropic-version: 2023-06-01`, the
//! `anthropic-beta` flag of the tool version.
//!
//! The screenshot is pre-resized to what the API would resize it to (long edge at most
//! 1568 px and at most 1568 tiles of 28x28 px) and `display_width_px`/`display_height_px`
//! name that size, so the API never resizes again and coordinates map back exactly. Several
//! `tool_use` blocks per turn get one `tool_result` each (text, image, `is_error`); the
//! screenshot after the turn rides in the last one. `end_turn` without `tool_use` is the
//! answer. Thinking blocks are kept as the step's thought and replayed unchanged (with their
//! signatures), as the API requires. The system prompt and the tools are marked with
//! `cache_control`, as are the last two user turns, so a long episode does not pay for its
//! prefix every step; cache reads and writes are counted.

use super::{
    Call, CallResult, Decision, Geometry, Images, Protocol, ProtocolConfig, ProtocolName, Shot,
    prompt,
};
use crate::action::{Action, InvalidAction};
use crate::agent::model::{Auth, ModelRequest, Usage};
use serde_json::{Value, json};

const SYSTEM_PROMPT: &str = include_str!("../../../prompts/anthropic.md");

/// The Messages API's own limits on an image: what it would resize to.
pub const MAX_LONG_EDGE: u32 = 1568;
pub const MAX_PIXELS: u64 = 1568 * 28 * 28;

/// The size the API takes a `screen`-sized screenshot at without resizing it.
pub fn api_size(screen: (u32, u32)) -> (u32, u32) {
    let (w, h) = (f64::from(screen.0), f64::from(screen.1));
    let scale = 1f64
        .min(f64::from(MAX_LONG_EDGE) / w.max(h))
        .min((MAX_PIXELS as f64 / (w * h)).sqrt());
    if scale >= 1.0 {
        return screen;
    }
    (
        ((w * scale).floor() as u32).max(1),
        ((h * scale).floor() as u32).max(1),
    )
}

/// A version of the computer tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolVersion {
    V20241022,
    V20250124,
    V20251124,
}

impl ToolVersion {
    pub fn type_name(self) -> &'static str {
        match self {
            Self::V20241022 => "computer_20241022",
            Self::V20250124 => "computer_20250124",
            Self::V20251124 => "computer_20251124",
        }
    }

    pub fn beta(self) -> &'static str {
        match self {
            Self::V20241022 => "computer-use-2024-10-22",
            Self::V20250124 => "computer-use-2025-01-24",
            Self::V20251124 => "computer-use-2025-11-24",
        }
    }

    /// `--tool-version`: `20241022`, `20250124`, `20251124` (or the full type name).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().trim_start_matches("computer_") {
            "20241022" => Ok(Self::V20241022),
            "20250124" => Ok(Self::V20250124),
            "20251124" => Ok(Self::V20251124),
            other => Err(format!(
                "'{other}' is not a computer tool version: 20241022, 20250124 or 20251124"
            )),
        }
    }

    /// The version a model id uses, as Anthropic's reference demo chooses it:
    /// 20251124 for Opus 4.5 and later and Sonnet 4.6 and later, 20241022 for the Claude 3.5
    /// models, 20250124 otherwise.
    pub fn for_model(model: &str) -> Self {
        let m = model.to_ascii_lowercase();
        if m.contains("claude-3-5") || m.contains("claude-3.5") {
            return Self::V20241022;
        }
        let version = |family: &str| -> Option<(u32, u32)> {
            let rest = &m[m.find(&format!("{family}-"))? + family.len() + 1..];
            let mut parts = rest.split(['-', '.']);
            let major: u32 = parts.next()?.parse().ok().filter(|n| *n < 100)?;
            // A date (20250514) is not a minor version.
            let minor: u32 = parts
                .next()
                .and_then(|p| p.parse().ok())
                .filter(|n| *n < 100)
                .unwrap_or(0);
            Some((major, minor))
        };
        let newer = |v: Option<(u32, u32)>, since: (u32, u32)| v.is_some_and(|v| v >= since);
        if newer(version("opus"), (4, 5))
            || newer(version("sonnet"), (4, 6))
            || newer(version("haiku"), (4, 6))
        {
            Self::V20251124
        } else {
            Self::V20250124
        }
    }
}

/// Extended thinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking {
    /// `{"type": "enabled", "budget_tokens": N}` (Opus 4.5 and older).
    Budget(u32),
    /// `{"type": "adaptive"}` (4.6 and newer).
    Adaptive,
}

impl Thinking {
    /// `--thinking`: a token budget, or `adaptive`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("adaptive") {
            return Ok(Self::Adaptive);
        }
        s.parse::<u32>()
            .ok()
            .filter(|n| *n >= 1024)
            .map(Self::Budget)
            .ok_or_else(|| {
                format!("--thinking takes a token budget of at least 1024, or adaptive, got '{s}'")
            })
    }
}

pub struct Anthropic {
    geometry: Geometry,
    version: ToolVersion,
    thinking: Option<Thinking>,
    system: String,
    messages: Vec<Value>,
    images: Images,
    allow_setup: bool,
}

impl Anthropic {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let version = match &cfg.tool_version {
            Some(v) => ToolVersion::parse(v)?,
            None => ToolVersion::for_model(&cfg.model),
        };
        let system = prompt(
            cfg.prompts.as_deref(),
            "anthropic.md",
            SYSTEM_PROMPT,
            &geometry,
        )
        .map_err(|e| format!("reading the prompts: {e}"))?;
        Ok(Self {
            geometry,
            version,
            thinking: cfg.thinking,
            system,
            messages: Vec::new(),
            images: Images::new(cfg.keep_images),
            allow_setup: cfg.allow_setup_actions,
        })
    }

    fn tool(&self) -> Value {
        let mut t = json!({
            "type": self.version.type_name(),
            "name": "computer",
            "display_width_px": self.geometry.sent.0,
            "display_height_px": self.geometry.sent.1,
        });
        if self.version == ToolVersion::V20251124 {
            t["enable_zoom"] = json!(true);
        }
        t
    }

    fn image_block(&mut self, shot: &Shot) -> Value {
        let reference = self.images.add(shot);
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": reference}})
    }

    /// Appends blocks to the last user message, or starts one (the API wants turns to
    /// alternate).
    fn push_user(&mut self, blocks: Vec<Value>) {
        match self.messages.last_mut() {
            Some(m) if m["role"] == "user" => {
                if let Some(content) = m["content"].as_array_mut() {
                    content.extend(blocks);
                }
            }
            _ => self
                .messages
                .push(json!({"role": "user", "content": blocks})),
        }
    }

    /// The messages with images as pixels (`pixels`) or references, older images as notes,
    /// and cache breakpoints on the last two user turns.
    fn render(&self, pixels: bool) -> Vec<Value> {
        fn walk(v: &mut Value, f: &dyn Fn(&str) -> Option<Value>) {
            match v {
                Value::Object(map) => {
                    if map.get("type").and_then(Value::as_str) == Some("image")
                        && let Some(r) = map["source"]["data"].as_str().map(str::to_owned)
                        && let Some(replacement) = f(&r)
                    {
                        *v = replacement;
                        return;
                    }
                    for item in map.values_mut() {
                        walk(item, f);
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(|i| walk(i, f)),
                _ => {}
            }
        }
        let image = |r: &str| -> Option<Value> {
            if !self.images.is_recent(r) {
                return Some(json!({"type": "text", "text": super::OMITTED}));
            }
            if !pixels {
                return None;
            }
            let data = self.images.base64(r)?;
            Some(
                json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}),
            )
        };
        let mut out: Vec<Value> = self.messages.clone();
        for m in &mut out {
            walk(m, &image);
        }
        let users: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, m)| m["role"] == "user")
            .map(|(i, _)| i)
            .rev()
            .take(2)
            .collect();
        for i in users {
            if let Some(last) = out[i]["content"].as_array_mut().and_then(|c| c.last_mut()) {
                last["cache_control"] = json!({"type": "ephemeral"});
            }
        }
        out
    }

    fn body(&self, messages: Vec<Value>) -> Value {
        let mut tool = self.tool();
        tool["cache_control"] = json!({"type": "ephemeral"});
        let max_tokens = match self.thinking {
            Some(Thinking::Budget(n)) => n + 4096,
            Some(Thinking::Adaptive) => 16_384,
            None => 4096,
        };
        let mut body = json!({
            "max_tokens": max_tokens,
            "system": [{"type": "text", "text": self.system, "cache_control": {"type": "ephemeral"}}],
            "tools": [tool],
            "messages": messages,
        });
        match self.thinking {
            Some(Thinking::Budget(n)) => {
                body["thinking"] = json!({"type": "enabled", "budget_tokens": n});
            }
            Some(Thinking::Adaptive) => body["thinking"] = json!({"type": "adaptive"}),
            None => {}
        }
        body
    }

    fn action(&self, block: &Value) -> Result<Action, InvalidAction> {
        if block["name"] != "computer" {
            return Err(InvalidAction::new(format!(
                "there is no tool named '{}'; use the `computer` tool",
                block["name"].as_str().unwrap_or_default()
            )));
        }
        let input = &block["input"];
        if input["action"] == "zoom" && self.version != ToolVersion::V20251124 {
            return Err(InvalidAction::new(
                "`zoom` needs computer_20251124 (--tool-version 20251124)",
            ));
        }
        let action = Action::from_tool_input(input)?;
        if action.is_setup_only() && !self.allow_setup {
            return Err(InvalidAction::new(format!(
                "`{}` is not available; use the mouse and keyboard",
                action.name()
            )));
        }
        self.geometry.action_to_screen(action)
    }
}

impl Protocol for Anthropic {
    fn name(&self) -> ProtocolName {
        ProtocolName::Anthropic
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn begin(&mut self, instruction: &str, shot: &Shot) {
        let image = self.image_block(shot);
        self.push_user(vec![json!({"type": "text", "text": instruction}), image]);
    }

    fn user_message(&mut self, text: &str) {
        self.push_user(vec![json!({"type": "text", "text": text})]);
    }

    fn request(&self) -> (ModelRequest, Value) {
        let headers = vec![
            ("anthropic-version".to_owned(), "2023-06-01".to_owned()),
            ("anthropic-beta".to_owned(), self.version.beta().to_owned()),
        ];
        (
            ModelRequest {
                path: "/v1/messages".into(),
                body: self.body(self.render(true)),
                headers,
                auth: Auth::XApiKey,
                blobs: self.images.blobs(),
            },
            self.body(self.render(false)),
        )
    }

    fn decode(&self, raw: &Value) -> Result<Decision, String> {
        if raw["type"] == "error" {
            return Err(format!("the API returned an error: {}", raw["error"]));
        }
        let content = raw["content"]
            .as_array()
            .ok_or("no `content` in the reply (not a Messages API reply?)")?;
        let (mut text, mut thought, mut calls) = (Vec::new(), Vec::new(), Vec::new());
        for block in content {
            match block["type"].as_str() {
                Some("text") => text.extend(block["text"].as_str().map(str::to_owned)),
                Some("thinking") => thought.extend(block["thinking"].as_str().map(str::to_owned)),
                Some("tool_use") => calls.push(Call {
                    id: block["id"].as_str().unwrap_or_default().to_owned(),
                    input: block["input"].clone(),
                    action: self.action(block),
                }),
                _ => {}
            }
        }
        if calls.is_empty() && raw["stop_reason"] == "max_tokens" {
            return Err("the reply was cut off at max_tokens before it asked for an action".into());
        }
        let text = Some(text.join("\n")).filter(|t| !t.trim().is_empty());
        let thought = match (thought.is_empty(), calls.is_empty()) {
            (false, _) => Some(thought.join("\n")),
            // Text next to tool calls is the model's thinking aloud; alone, the answer.
            (true, false) => text.clone(),
            (true, true) => None,
        };
        let u = &raw["usage"];
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        Ok(Decision {
            thought,
            text,
            calls,
            usage: Usage {
                input: n("input_tokens")
                    + n("cache_read_input_tokens")
                    + n("cache_creation_input_tokens"),
                output: n("output_tokens"),
                cache_read: n("cache_read_input_tokens"),
                cache_write: n("cache_creation_input_tokens"),
            },
            safety: Vec::new(),
        })
    }

    fn assistant(&mut self, raw: &Value, _decision: &Decision) {
        // Replayed as sent, thinking signatures included.
        let content = raw["content"].clone();
        self.messages
            .push(json!({"role": "assistant", "content": content}));
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, note: &str) {
        let last = results.len().saturating_sub(1);
        let mut blocks = Vec::new();
        for (i, r) in results.iter().enumerate() {
            let mut content = vec![json!({"type": "text", "text": r.text})];
            if let Some(img) = &r.image {
                content.push(self.image_block(img));
            }
            if i == last {
                content.push(self.image_block(shot));
            }
            blocks.push(json!({
                "type": "tool_result",
                "tool_use_id": r.id,
                "content": content,
                "is_error": r.is_error,
            }));
        }
        if results.is_empty() {
            let image = self.image_block(shot);
            blocks.push(json!({"type": "text", "text": note}));
            blocks.push(image);
        }
        self.push_user(blocks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Point;
    use crate::agent::protocol::{CoordSpace, geometry};
    use pretty_assertions::assert_eq;
    use std::sync::Arc;

    fn claude(model: &str, screen: (u32, u32)) -> Anthropic {
        let cfg = ProtocolConfig {
            name: ProtocolName::Anthropic,
            model: model.into(),
            ..ProtocolConfig::default()
        };
        Anthropic::new(&cfg, geometry(&cfg, screen)).unwrap()
    }

    fn shot(s: &str) -> Shot {
        Shot {
            sha256: s.into(),
            png: Arc::new(s.as_bytes().to_vec()),
        }
    }

    #[test]
    fn tool_versions_follow_the_model() {
        for (model, want) in [
            ("claude-sonnet-4-20250514", ToolVersion::V20250124),
            ("claude-sonnet-4-5-20250929", ToolVersion::V20250124),
            ("claude-haiku-4-5", ToolVersion::V20250124),
            ("claude-opus-4-1-20250805", ToolVersion::V20250124),
            ("claude-opus-4-5-20251101", ToolVersion::V20251124),
            ("claude-opus-4-6", ToolVersion::V20251124),
            ("claude-opus-4-7", ToolVersion::V20251124),
            ("claude-sonnet-4-6", ToolVersion::V20251124),
            ("claude-3-5-sonnet-20241022", ToolVersion::V20241022),
            ("claude-3-7-sonnet-20250219", ToolVersion::V20250124),
        ] {
            assert_eq!(ToolVersion::for_model(model), want, "{model}");
        }
    }

    #[test]
    fn screenshots_are_sent_at_the_size_the_api_keeps() {
        assert_eq!(api_size((1280, 800)), (1280, 800));
        let (w, h) = api_size((1920, 1080));
        assert!(
            u64::from(w) * u64::from(h) <= MAX_PIXELS && w <= MAX_LONG_EDGE,
            "{w}x{h}"
        );
        assert_eq!((w, h), (1478, 831));
        let c = claude("claude-sonnet-4-5", (1920, 1080));
        let (req, _) = c.request();
        assert_eq!(req.body["tools"][0]["display_width_px"], 1478);
        assert_eq!(c.geometry().space, CoordSpace::Native);
        assert_eq!(
            c.geometry().to_screen(739.0, 415.0).unwrap(),
            Point::new(960, 539)
        );
    }

    #[test]
    fn the_recorded_replies_decode() {
        let c = claude("claude-sonnet-4-20250514", (1920, 1080));
        // charmbracelet/fantasy's cassette (claude-sonnet-4/computer_use.yaml).
        let raw = json!({"model":"claude-sonnet-4-20250514","id":"msg_01KHX677vLGXfeouAejAbGDD","type":"message","role":"assistant","content":[{"type":"text","text":"I'll take a screenshot of the desktop for you."},{"type":"tool_use","id":"toolu_01MpnnLwjqpqYWLUQ5F5SixE","name":"computer","input":{"action":"screenshot"},"caller":{"type":"direct"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":1200,"output_tokens":40,"cache_read_input_tokens":800,"cache_creation_input_tokens":0}});
        let d = c.decode(&raw).unwrap();
        assert_eq!(d.calls.len(), 1);
        assert_eq!(d.calls[0].id, "toolu_01MpnnLwjqpqYWLUQ5F5SixE");
        assert_eq!(d.calls[0].action.as_ref().unwrap(), &Action::Screenshot);
        assert_eq!((d.usage.input, d.usage.cache_read), (2000, 800));
        // claude-opus-4-6's final reply: end_turn, no tool_use: the answer.
        let raw = json!({"model":"claude-opus-4-6","id":"msg_01LNnzU2u6f7Gb7QsSWZFMqV","type":"message","role":"assistant","content":[{"type":"text","text":"The screenshot shows what appears to be a mostly blank/yellow desktop."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":5}});
        let d = c.decode(&raw).unwrap();
        assert!(d.calls.is_empty());
        assert!(d.text.unwrap().contains("mostly blank"));
        // Several tool_use blocks, thinking, a scroll and a bad tool.
        let raw = json!({"content": [
            {"type": "thinking", "thinking": "I should scroll.", "signature": "sig"},
            {"type": "tool_use", "id": "a", "name": "computer", "input": {"action": "scroll", "coordinate": [100, 100], "scroll_direction": "down", "scroll_amount": 3}},
            {"type": "tool_use", "id": "b", "name": "bash", "input": {"command": "ls"}}
        ], "stop_reason": "tool_use", "usage": {}});
        let d = c.decode(&raw).unwrap();
        assert_eq!(d.thought.as_deref(), Some("I should scroll."));
        assert!(matches!(
            d.calls[0].action,
            Ok(Action::Scroll { dy: 3, .. })
        ));
        assert!(
            d.calls[1]
                .action
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("bash")
        );
        assert!(
            c.decode(&json!({"content": [], "stop_reason": "max_tokens"}))
                .is_err()
        );
    }

    #[test]
    fn results_answer_every_tool_use_and_carry_the_screenshot() {
        let mut c = claude("claude-opus-4-6", (1280, 800));
        c.begin("do it", &shot("a"));
        let raw = json!({"content": [
            {"type": "thinking", "thinking": "t", "signature": "sig-1"},
            {"type": "tool_use", "id": "t1", "name": "computer", "input": {"action": "left_click", "coordinate": [1, 1]}},
            {"type": "tool_use", "id": "t2", "name": "computer", "input": {"action": "zoom", "region": [0, 0, 10, 10]}}
        ], "stop_reason": "tool_use"});
        let d = c.decode(&raw).unwrap();
        assert!(d.calls.iter().all(|c| c.action.is_ok()), "{:?}", d.calls);
        c.assistant(&raw, &d);
        c.results(
            &[
                CallResult {
                    id: "t1".into(),
                    text: "ok".into(),
                    is_error: false,
                    image: None,
                },
                CallResult {
                    id: "t2".into(),
                    text: "ok".into(),
                    is_error: false,
                    image: Some(shot("zoomed")),
                },
            ],
            &shot("b"),
            "after",
        );
        c.user_message("a note from the person");
        let (req, recorded) = c.request();
        let body = &req.resolved_body();
        assert_eq!(req.path, "/v1/messages");
        assert!(
            req.headers
                .contains(&("anthropic-beta".into(), "computer-use-2025-11-24".into()))
        );
        assert_eq!(body["tools"][0]["enable_zoom"], true);
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "user, assistant, user");
        assert_eq!(
            msgs[1]["content"][0]["signature"], "sig-1",
            "thinking replayed"
        );
        let results = msgs[2]["content"].as_array().unwrap();
        assert_eq!(results[0]["tool_use_id"], "t1");
        assert_eq!(
            results[1]["content"].as_array().unwrap().len(),
            3,
            "text, crop, screen"
        );
        assert_eq!(results[2]["text"], "a note from the person");
        assert!(results[2]["cache_control"].is_object());
        assert!(
            !recorded.to_string().contains("\"data\":\"Yg"),
            "pixels recorded"
        );
        assert!(
            body.to_string().contains("\"data\":\"Yg"),
            "pixels sent (b)"
        );
    }
}
