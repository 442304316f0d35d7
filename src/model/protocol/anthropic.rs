//! `anthropic`: the Messages API (`POST {base}/v1/messages`, `x-api-key`,
//! `anthropic-version: 2023-06-01`) with one of Anthropic's computer tools, chosen by the
//! model id (`--tool-version` forces one):
//!
//! - the **computer toolset** (`computer_toolset_20260801`) for Fable, Mythos, Opus 4.8 and
//!   later, Sonnet 5 and later and every 5.5 model (Opus and Sonnet 5.5 refuse the older
//!   tool): one `tools[]` entry `{"type": "computer_toolset_20260801"}` and no beta header.
//!   Each action is its own `tool_use` block named after the member (`left_click`, `key`,
//!   `zoom`, …) with `"toolset_name": "computer"` and the member's parameters as its input.
//!   A turn's blocks run in order and stop at the first failure: it is answered
//!   `is_error`, and every later block `is_error` with [`super::NOT_EXECUTED`]. Every block is
//!   answered, each result echoing `toolset_name`; only screenshot and zoom results carry
//!   an image (the screen after the turn follows the results as an image of its own when
//!   no screenshot was asked for). `zoom` answers with the region scaled up to fill the
//!   image the model sees; its coordinates stay those of the full screenshot. Screenshots
//!   are pruned in batches (keep 3, prune every 25 turns) so the cached prefix holds;
//! - the **computer tool** (`computer_20250124`, or `computer_20251124` with `zoom` for Opus
//!   4.5-4.7 and Sonnet 4.6, `computer_20241022` for Claude 3.5) with its `anthropic-beta`
//!   flag, for older models and Bedrock (`anthropic.claude-…` ids keep it).
//!
//! The screenshot is pre-resized to what the API would take without resizing (long edge at
//! most 1568 px and at most 1568 tiles of 28x28 px; the toolset's API no longer resizes at
//! all and refuses larger images) and the tool's display size names that size, so
//! coordinates map back exactly. `end_turn` without `tool_use` is the answer. Thinking
//! blocks are kept as the step's thought and replayed unchanged (with their signatures), as
//! the API requires. The system prompt and the tools are marked with `cache_control`, as
//! are the last two user turns, so a long episode does not pay for its prefix every step;
//! cache reads and writes are counted.

use super::{
    Call, CallResult, CoordSpace, DecodeError, Decision, Endpoint, Example, Geometry, Images,
    ModelId, OptionDoc, Protocol, ProtocolConfig, ProtocolName, Shot, Spec, prompt,
};
use crate::action::{Action, InvalidAction, MAX_DURATION_SECS};
use crate::model::{Auth, ModelRequest, Usage};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;

const SYSTEM_PROMPT: &str = include_str!("../../../prompts/anthropic.md");

/// What `anthropic` is (see [`Spec`]).
pub struct AnthropicSpec;

pub static SPEC: AnthropicSpec = AnthropicSpec;

const VERSION_HEADER: (&str, &str) = ("anthropic-version", "2023-06-01");

impl Spec for AnthropicSpec {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["claude", "messages"]
    }

    fn wire(&self) -> &'static str {
        "Messages API, the computer toolset or the `computer` tool"
    }

    fn detect(&self, model: &ModelId) -> Option<CoordSpace> {
        (model.base.starts_with("claude-") || model.base.contains("anthropic.claude"))
            .then_some(CoordSpace::Native)
    }

    fn detects(&self) -> &'static str {
        "`claude-*`, `anthropic.claude*`"
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            default_base_url: Some("https://api.anthropic.com"),
            key_variables: &["ANTHROPIC_API_KEY"],
            auth: Auth::Header("x-api-key"),
            models_path: "/v1/models",
            headers: &[VERSION_HEADER],
        }
    }

    /// The path is `/v1/messages`: a base URL given up to /v1 (as for OpenAI) works too.
    fn base_url(&self, given: &str) -> String {
        given
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_owned()
    }

    fn options(&self) -> &'static [OptionDoc] {
        &[
            OptionDoc {
                key: "tool-version",
                help: "the computer tool: toolset (computer_toolset_20260801), 20251124, 20250124 or 20241022; chosen by the model id when not given (--tool-version)",
            },
            OptionDoc {
                key: "thinking",
                help: "extended thinking: a token budget (at least 1024) or adaptive (--thinking)",
            },
            OptionDoc {
                key: "prune-every",
                help: "screenshots pile up for this many turns past --keep-images, then are cut back at once (toolset default 25; 0 drops one a turn)",
            },
            OptionDoc {
                key: "zoom",
                help: "offer the toolset's zoom (default yes; no saves about 410 input tokens a request)",
            },
        ]
    }

    fn sent_size(&self, cfg: &ProtocolConfig, screen: (u32, u32)) -> (u32, u32) {
        let t = cfg.target.size(screen);
        let a = api_size(screen);
        if u64::from(t.0) * u64::from(t.1) < u64::from(a.0) * u64::from(a.1) {
            t
        } else {
            a
        }
    }

    fn question(
        &self,
        _cfg: &ProtocolConfig,
        system: &str,
        text: &str,
        pngs: &[Arc<Vec<u8>>],
    ) -> ModelRequest {
        let b64 = |png: &Arc<Vec<u8>>| base64::engine::general_purpose::STANDARD.encode(png.as_slice());
        let mut content = vec![json!({"type": "text", "text": text})];
        content.extend(pngs.iter().map(|p| {
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(p)}})
        }));
        ModelRequest {
            path: "/v1/messages".into(),
            body: json!({
                "max_tokens": 1024,
                "system": system,
                "messages": [{"role": "user", "content": content}],
            }),
            headers: vec![(VERSION_HEADER.0.into(), VERSION_HEADER.1.into())],
            auth: self.endpoint().auth,
            blobs: Default::default(),
            model_field: Default::default(),
        }
    }

    fn answer_text(&self, raw: &Value) -> Result<String, DecodeError> {
        let text: Vec<&str> = content_of(raw)?
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect();
        Some(text.join("\n"))
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| DecodeError::Empty("no text".into()))
    }

    /// Claude works from text as well as pixels; the tool's results take text.
    fn observes_text(&self) -> bool {
        true
    }

    fn example(&self) -> Example {
        Example {
            model: "claude-sonnet-4-5",
            reply: json!({"id": "msg_1", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": "Clicking the button."},
                            {"type": "tool_use", "id": "toolu_1", "name": "computer",
                             "input": {"action": "left_click", "coordinate": [500, 300]}}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 1500, "output_tokens": 40}}),
        }
    }

    fn create(
        &self,
        cfg: &ProtocolConfig,
        geometry: Geometry,
    ) -> Result<Box<dyn Protocol>, String> {
        Ok(Box::new(Anthropic::new(cfg, geometry)?))
    }
}

/// A reply's `content`, or why it is not a Messages API reply.
fn content_of(raw: &Value) -> Result<&Vec<Value>, DecodeError> {
    if raw["type"] == "error" {
        return Err(DecodeError::Server(raw["error"].to_string()));
    }
    raw["content"].as_array().ok_or_else(|| {
        DecodeError::shape("no `content` in the reply (not a Messages API reply?)")
    })
}

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

/// Which computer tool a conversation declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolVersion {
    V20241022,
    V20250124,
    V20251124,
    /// `computer_toolset_20260801`: one tool per action.
    Toolset20260801,
}

/// The toolset's type name.
pub const TOOLSET: &str = "computer_toolset_20260801";

/// The toolset's members: one tool each, named after its action.
pub const TOOLSET_MEMBERS: [&str; 17] = [
    "key",
    "hold_key",
    "type",
    "cursor_position",
    "mouse_move",
    "left_mouse_down",
    "left_mouse_up",
    "left_click",
    "left_click_drag",
    "right_click",
    "middle_click",
    "double_click",
    "triple_click",
    "scroll",
    "wait",
    "screenshot",
    "zoom",
];

/// The toolset's longest `wait`, in seconds.
pub const TOOLSET_MAX_WAIT_SECS: f64 = 300.0;

impl ToolVersion {
    pub fn type_name(self) -> &'static str {
        match self {
            Self::V20241022 => "computer_20241022",
            Self::V20250124 => "computer_20250124",
            Self::V20251124 => "computer_20251124",
            Self::Toolset20260801 => TOOLSET,
        }
    }

    /// The `anthropic-beta` flag; the toolset needs none.
    pub fn beta(self) -> Option<&'static str> {
        match self {
            Self::V20241022 => Some("computer-use-2024-10-22"),
            Self::V20250124 => Some("computer-use-2025-01-24"),
            Self::V20251124 => Some("computer-use-2025-11-24"),
            Self::Toolset20260801 => None,
        }
    }

    pub fn is_toolset(self) -> bool {
        self == Self::Toolset20260801
    }

    /// `--tool-version`: `20241022`, `20250124`, `20251124`, `toolset` or `20260801` (or
    /// the full type name).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s
            .trim()
            .trim_start_matches("computer_toolset_")
            .trim_start_matches("computer_")
        {
            "20241022" => Ok(Self::V20241022),
            "20250124" => Ok(Self::V20250124),
            "20251124" => Ok(Self::V20251124),
            "toolset" | "20260801" => Ok(Self::Toolset20260801),
            other => Err(format!(
                "'{other}' is not a computer tool version: toolset (20260801), 20251124, 20250124 or 20241022"
            )),
        }
    }

    /// The tool a model id takes: the toolset for Fable, Mythos, Opus 4.8 and later, Sonnet
    /// 5 and later, and every 5.5 model (Opus and Sonnet 5.5 refuse the older tool), except
    /// on Bedrock (`anthropic.claude-…`), which keeps the older tool; then, as Anthropic's
    /// reference demo chooses: 20251124 for Opus 4.5 and later and Sonnet and Haiku 4.6
    /// and later, 20241022 for the Claude 3.5 models, 20250124 otherwise.
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
        let (opus, sonnet, haiku) = (version("opus"), version("sonnet"), version("haiku"));
        let toolset = m.contains("fable")
            || m.contains("mythos")
            || newer(opus, (4, 8))
            || newer(sonnet, (5, 0))
            || newer(haiku, (5, 5));
        let bedrock = m.contains("anthropic.claude");
        if toolset && !bedrock {
            Self::Toolset20260801
        } else if toolset
            || newer(opus, (4, 5))
            || newer(sonnet, (4, 6))
            || newer(haiku, (4, 6))
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

/// The toolset's default batch of turns between prunes.
const TOOLSET_PRUNE_EVERY: usize = 25;

pub struct Anthropic {
    geometry: Geometry,
    version: ToolVersion,
    thinking: Option<Thinking>,
    /// The toolset's zoom member is offered.
    zoom: bool,
    system: String,
    messages: Vec<Value>,
    images: Images,
    allow_setup: bool,
    /// The ids of the last turn's `screenshot` calls (their results carry the screen).
    screenshot_calls: HashSet<String>,
}

impl Anthropic {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let o = &cfg.options;
        let version = o
            .parsed("tool-version", ToolVersion::parse)?
            .unwrap_or_else(|| ToolVersion::for_model(&cfg.model));
        let thinking = o.parsed("thinking", Thinking::parse)?;
        let prune_every = o
            .parsed("prune-every", |v| {
                v.parse::<usize>()
                    .map_err(|_| format!("prune-every is a number of turns, got '{v}'"))
            })?
            .unwrap_or(if version.is_toolset() {
                TOOLSET_PRUNE_EVERY
            } else {
                0
            });
        // Without pixels there is nothing to zoom into.
        let zoom = cfg.observe.pixels() && (o.get("zoom").is_none() || o.flag("zoom")?);
        let mut system = prompt(
            cfg.prompts.as_deref(),
            "anthropic.md",
            SYSTEM_PROMPT,
            &geometry,
        )
        .map_err(|e| format!("reading the prompts: {e}"))?;
        let mut images = Images::batched(cfg.keep_images, prune_every);
        if !cfg.observe.pixels() {
            let note = super::without_pixels_note(cfg.prompts.as_deref(), &geometry)
                .map_err(|e| format!("reading the prompts: {e}"))?;
            system = format!("{system}\n\n{note}");
            images = images.without_pixels();
        }
        Ok(Self {
            geometry,
            version,
            thinking,
            zoom,
            system,
            messages: Vec::new(),
            images,
            allow_setup: cfg.allow_setup_actions,
            screenshot_calls: HashSet::new(),
        })
    }

    /// The `tools[]` entry: the toolset (with zoom switched off when asked), or the tool
    /// with its display size.
    fn tool(&self) -> Value {
        if self.version.is_toolset() {
            let mut t = json!({"type": TOOLSET});
            if !self.zoom {
                t["configs"] = json!({"zoom": {"enabled": false}});
            }
            return t;
        }
        let mut t = json!({
            "type": self.version.type_name(),
            "name": "computer",
            "display_width_px": self.geometry.sent.0,
            "display_height_px": self.geometry.sent.1,
        });
        if self.version == ToolVersion::V20251124 && self.zoom {
            t["enable_zoom"] = json!(true);
        }
        t
    }

    fn image_block(&mut self, shot: &Shot) -> Value {
        let reference = self.images.add(shot);
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": reference}})
    }

    /// The blocks that show the screen `shot`: its image (unless no pixels are sent), then
    /// the text that goes beside it.
    fn screen_blocks(&mut self, shot: &Shot) -> Vec<Value> {
        let mut blocks = Vec::new();
        if self.images.sends_pixels() {
            blocks.push(self.image_block(shot));
        }
        if let Some(tree) = shot.tree_text() {
            blocks.push(json!({"type": "text", "text": tree}));
        }
        blocks
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

    /// A `tool_use` block as an action in screen pixels.
    fn action(&self, block: &Value) -> Result<Action, InvalidAction> {
        let name = block["name"].as_str().unwrap_or_default();
        let action = if self.version.is_toolset() {
            toolset_action(name, &block["input"], self.zoom)?
        } else {
            if name != "computer" {
                return Err(InvalidAction::new(format!(
                    "there is no tool named '{name}'; use the `computer` tool"
                )));
            }
            let input = &block["input"];
            if input["action"] == "zoom" && self.version != ToolVersion::V20251124 {
                return Err(InvalidAction::new(
                    "`zoom` needs computer_20251124 (--tool-version 20251124)",
                ));
            }
            if input["action"] == "zoom" && !self.zoom {
                return Err(InvalidAction::new(
                    "`zoom` is not available: this run shows no screenshots",
                ));
            }
            Action::from_tool_input(input)?
        };
        if action.is_setup_only() && !self.allow_setup {
            return Err(InvalidAction::new(format!(
                "`{}` is not available; use the mouse and keyboard",
                action.name()
            )));
        }
        self.geometry.action_to_screen(action)
    }
}

/// A toolset member's call as an action (in the model's pixels): the member's own
/// parameters, read as the computer tool's input with the member as its `action`; `key`
/// takes `repeat` (1 to 100), `wait` up to 300 s.
pub fn toolset_action(name: &str, input: &Value, zoom: bool) -> Result<Action, InvalidAction> {
    if !TOOLSET_MEMBERS.contains(&name) {
        return Err(InvalidAction::new(format!(
            "there is no computer tool named '{name}'; the computer tools are {}",
            TOOLSET_MEMBERS.join(", ")
        )));
    }
    if name == "zoom" && !zoom {
        return Err(InvalidAction::new("`zoom` is switched off here"));
    }
    let Some(fields) = input.as_object() else {
        return Err(InvalidAction::new(format!(
            "the input of `{name}` must be a JSON object"
        )));
    };
    if fields.contains_key("action") {
        return Err(InvalidAction::new(format!(
            "`{name}` takes its parameters alone, without `action`"
        )));
    }
    let mut with_action = fields.clone();
    with_action.insert("action".into(), json!(name));
    match name {
        "wait" => {
            let secs = fields
                .get("duration")
                .and_then(Value::as_f64)
                .ok_or_else(|| InvalidAction::new("`wait` needs `duration` in seconds"))?;
            if !(0.0..=TOOLSET_MAX_WAIT_SECS).contains(&secs) {
                return Err(InvalidAction::new(format!(
                    "`duration` must be between 0 and {TOOLSET_MAX_WAIT_SECS} seconds, got {secs}"
                )));
            }
            Ok(Action::Wait { duration: secs })
        }
        "hold_key" => {
            let secs = fields.get("duration").and_then(Value::as_f64).unwrap_or(0.0);
            if secs > MAX_DURATION_SECS {
                return Err(InvalidAction::new(format!(
                    "`duration` must be at most {MAX_DURATION_SECS} seconds, got {secs}"
                )));
            }
            Action::from_tool_input(&Value::Object(with_action))
        }
        "key" => {
            let repeat = match fields.get("repeat") {
                None | Some(Value::Null) => 1,
                Some(v) => match v.as_u64() {
                    Some(n @ 1..=100) => n as usize,
                    _ => {
                        return Err(InvalidAction::new(format!(
                            "`repeat` is a whole number from 1 to 100, got {v}"
                        )));
                    }
                },
            };
            with_action.remove("repeat");
            match Action::from_tool_input(&Value::Object(with_action))? {
                // Repeats are the same combo pressed again: a key sequence.
                Action::Key { text } if repeat > 1 => Ok(Action::Key {
                    text: vec![text.as_str(); repeat].join(" "),
                }),
                other => Ok(other),
            }
        }
        _ => Action::from_tool_input(&Value::Object(with_action)),
    }
}

impl Protocol for Anthropic {
    fn name(&self) -> ProtocolName {
        ProtocolName::of(&SPEC)
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn begin(&mut self, instruction: &str, shot: &Shot) {
        let mut blocks = vec![json!({"type": "text", "text": instruction})];
        blocks.extend(self.screen_blocks(shot));
        self.push_user(blocks);
    }

    fn user_message(&mut self, text: &str) {
        self.push_user(vec![json!({"type": "text", "text": text})]);
    }

    fn request(&self) -> (ModelRequest, Value) {
        let mut headers = vec![(VERSION_HEADER.0.to_owned(), VERSION_HEADER.1.to_owned())];
        if let Some(beta) = self.version.beta() {
            headers.push(("anthropic-beta".to_owned(), beta.to_owned()));
        }
        (
            ModelRequest {
                path: "/v1/messages".into(),
                body: self.body(self.render(true)),
                headers,
                auth: SPEC.endpoint().auth,
                blobs: self.images.blobs(),
                model_field: Default::default(),
            },
            self.body(self.render(false)),
        )
    }

    fn decode(&self, raw: &Value) -> Result<Decision, DecodeError> {
        let content = content_of(raw)?;
        let (mut text, mut thought, mut calls) = (Vec::new(), Vec::new(), Vec::new());
        for block in content {
            match block["type"].as_str() {
                Some("text") => text.extend(block["text"].as_str().map(str::to_owned)),
                Some("thinking") => thought.extend(block["thinking"].as_str().map(str::to_owned)),
                Some("tool_use") => calls.push(Call {
                    id: block["id"].as_str().unwrap_or_default().to_owned(),
                    input: if self.version.is_toolset() {
                        // What the model asked for, whole: the member is its name.
                        json!({"name": block["name"], "input": block["input"]})
                    } else {
                        block["input"].clone()
                    },
                    action: self.action(block),
                }),
                _ => {}
            }
        }
        if calls.is_empty() && raw["stop_reason"] == "max_tokens" {
            return Err(DecodeError::CutOff);
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
            grounding: Vec::new(),
        })
    }

    fn assistant(&mut self, raw: &Value, decision: &Decision) {
        // Replayed as sent, thinking signatures included.
        let content = raw["content"].clone();
        self.messages
            .push(json!({"role": "assistant", "content": content}));
        self.screenshot_calls = decision
            .calls
            .iter()
            .filter(|c| matches!(c.action, Ok(Action::Screenshot)))
            .map(|c| c.id.clone())
            .collect();
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, note: &str) {
        let mut blocks = Vec::new();
        if self.version.is_toolset() {
            // Only screenshot and zoom results carry an image; the screen after the turn
            // follows the results when nobody asked for it.
            let mut shown = false;
            for r in results {
                let mut content = Vec::new();
                if !r.text.is_empty() && (r.is_error || r.text != "ok") {
                    content.push(json!({"type": "text", "text": r.text}));
                }
                if let Some(img) = &r.image {
                    content.push(self.image_block(img));
                } else if !r.is_error && self.screenshot_calls.contains(&r.id) {
                    content.extend(self.screen_blocks(shot));
                    shown = true;
                }
                if content.is_empty() {
                    content.push(json!({"type": "text", "text": "OK"}));
                }
                blocks.push(json!({
                    "type": "tool_result",
                    "tool_use_id": r.id,
                    "toolset_name": "computer",
                    "content": content,
                    "is_error": r.is_error,
                }));
            }
            if !shown {
                blocks.push(json!({"type": "text", "text": note}));
                blocks.extend(self.screen_blocks(shot));
            }
            self.push_user(blocks);
            return;
        }
        let last = results.len().saturating_sub(1);
        for (i, r) in results.iter().enumerate() {
            let mut content = vec![json!({"type": "text", "text": r.text})];
            if let Some(img) = &r.image {
                content.push(self.image_block(img));
            }
            if i == last {
                content.extend(self.screen_blocks(shot));
            }
            blocks.push(json!({
                "type": "tool_result",
                "tool_use_id": r.id,
                "content": content,
                "is_error": r.is_error,
            }));
        }
        if results.is_empty() {
            blocks.push(json!({"type": "text", "text": note}));
            blocks.extend(self.screen_blocks(shot));
        }
        self.push_user(blocks);
    }

    fn stops_at_first_failure(&self) -> bool {
        self.version.is_toolset()
    }

    /// The toolset's definition: about 4,500 input tokens a request (about 410 fewer
    /// without zoom), by Anthropic's figures.
    fn fixed_input_tokens(&self) -> u64 {
        match (self.version.is_toolset(), self.zoom) {
            (true, true) => 4_500,
            (true, false) => 4_090,
            (false, _) => 0,
        }
    }

    /// The toolset scales a zoom up to fill the image the model sees; the older tool
    /// returns the crop as it is.
    fn zoom_size(&self, crop: (u32, u32)) -> (u32, u32) {
        if !self.version.is_toolset() || crop.0 == 0 || crop.1 == 0 {
            return crop;
        }
        let (sw, sh) = (f64::from(self.geometry.sent.0), f64::from(self.geometry.sent.1));
        let f = (sw / f64::from(crop.0)).min(sh / f64::from(crop.1));
        (
            ((f64::from(crop.0) * f).round() as u32).clamp(1, self.geometry.sent.0),
            ((f64::from(crop.1) * f).round() as u32).clamp(1, self.geometry.sent.1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Point;
    use crate::model::protocol::{CoordSpace, geometry};
    use pretty_assertions::assert_eq;

    fn claude(model: &str, screen: (u32, u32)) -> Anthropic {
        let cfg = ProtocolConfig {
            name: ProtocolName::of(&SPEC),
            model: model.into(),
            ..ProtocolConfig::default()
        };
        Anthropic::new(&cfg, geometry(&cfg, screen)).unwrap()
    }

    fn shot(s: &str) -> Shot {
        Shot::named(s)
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
                CallResult::ok("t1"),
                CallResult {
                    image: Some(shot("zoomed")),
                    ..CallResult::ok("t2")
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
