//! `gemini`: Google's Gemini computer use over `generateContent`
//! (`POST {base}/v1beta/models/{model}:generateContent`, the key in `x-goog-api-key` from
//! `GEMINI_API_KEY` or `GOOGLE_API_KEY`), with the `computer_use` tool, both generations:
//!
//! - **3.x** (`gemini-3.5-flash` and later general models): `environment:
//!   ENVIRONMENT_DESKTOP`; actions `click`, `double_click`, `triple_click`, `middle_click`,
//!   `right_click`, `mouse_down`, `mouse_up`, `move`, `type(text, press_enter)`,
//!   `press_key(key)`, `key_down`, `key_up`, `hotkey(keys[])`,
//!   `drag_and_drop(start_x, start_y, end_x, end_y)`, `wait(seconds)`, `take_screenshot`,
//!   `scroll(x, y, direction, magnitude_in_pixels | magnitude_in_wheel_clicks)`, each with an
//!   `intent` (kept as the step's thought);
//! - **2.5** (`gemini-2.5-computer-use-preview-10-2025`): `environment:
//!   ENVIRONMENT_BROWSER`; `click_at`, `hover_at`,
//!   `type_text_at(x, y, text, press_enter, clear_before_typing)` (clicks, clears, types),
//!   `key_combination("Control+A")`, `scroll_document(direction)`,
//!   `scroll_at(x, y, direction, magnitude)`, `drag_and_drop(x, y, destination_x,
//!   destination_y)`, `wait_5_seconds`, and the browser's `open_web_browser`, `navigate`,
//!   `search`, `go_back`, `go_forward`, carried out in the desktop's browser.
//!
//! Either generation's names are read whatever the model (an app that kept the 2.5 names
//! on 3.x did nothing, silently; here they work). Coordinates are a 0-999 grid on both
//! axes, mapped as `v / 1000 × size`. Each call is answered by a `functionResponse` (its
//! error, if it failed) and the screen after the turn rides as inline PNG in the last
//! one; screenshots older than the last `--keep-images` turns are dropped, as the reference
//! loop does. A call whose args carry `safety_decision: {decision: "require_confirmation"}`
//! waits for a person (the TUI asks; headless runs need `--ack-safety-checks` or end as
//! `needs_user`); acknowledged, its response says `safety_acknowledgement: "true"`. A reply
//! with no call and no text whose finish reason is `MALFORMED_FUNCTION_CALL` is retried; a
//! turn without calls ends the episode with its text as the answer. The model's turns are
//! replayed as sent, thought signatures included (Gemini 3 requires them).

use super::{
    Call, CallResult, CoordSpace, DecodeError, Decision, Endpoint, Example, Geometry, Images,
    ModelId, OMITTED, OptionDoc, Protocol, ProtocolConfig, ProtocolName, SafetyCheck, Shot, Spec,
    prompt,
};
use crate::action::{Action, Button, InvalidAction, MAX_SCROLL_AMOUNT, MAX_TYPE_CHARS, Point};
use crate::model::{Auth, ModelField, ModelRequest, Usage};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use std::collections::HashSet;
use std::sync::Arc;

const PROMPT: &str = include_str!("../../../prompts/gemini.md");

/// What `gemini` is (see [`Spec`]).
pub struct GeminiSpec;

pub static SPEC: GeminiSpec = GeminiSpec;

/// The search engine `search` opens and `web_search` asks (Fara shares it).
pub const SEARCH_URL: &str = "https://duckduckgo.com/";

impl Spec for GeminiSpec {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["google", "generatecontent"]
    }

    fn wire(&self) -> &'static str {
        "generateContent, the `computer_use` tool (desktop for 3.x, browser for 2.5)"
    }

    fn detect(&self, m: &ModelId) -> Option<CoordSpace> {
        m.base
            .trim_start_matches("models/")
            .starts_with("gemini-")
            .then_some(CoordSpace::Thousand)
    }

    fn detects(&self) -> &'static str {
        "`gemini-*` (2.5 computer-use preview: browser actions; 3.x: desktop actions)"
    }

    fn default_space(&self, _model: &ModelId) -> CoordSpace {
        CoordSpace::Thousand
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            default_base_url: Some("https://generativelanguage.googleapis.com"),
            key_variables: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
            auth: Auth::Header("x-goog-api-key"),
            models_path: "/v1beta/models",
            headers: &[],
        }
    }

    /// The paths start at `/v1beta`: a base URL given with it works too.
    fn base_url(&self, given: &str) -> String {
        given
            .trim_end_matches('/')
            .trim_end_matches("/v1beta")
            .trim_end_matches("/v1")
            .to_owned()
    }

    fn options(&self) -> &'static [OptionDoc] {
        &[OptionDoc {
            key: "environment",
            help: "the computer_use tool's environment: desktop (3.x actions) or browser (2.5 actions); chosen by the model id",
        }]
    }

    fn question(
        &self,
        cfg: &ProtocolConfig,
        system: &str,
        text: &str,
        pngs: &[Arc<Vec<u8>>],
    ) -> ModelRequest {
        let b64 = |png: &Arc<Vec<u8>>| base64::engine::general_purpose::STANDARD.encode(png.as_slice());
        let mut parts = vec![json!({"text": text})];
        parts.extend(
            pngs.iter()
                .map(|p| json!({"inlineData": {"mimeType": "image/png", "data": b64(p)}})),
        );
        ModelRequest {
            path: generate_path(&cfg.model),
            body: json!({
                "systemInstruction": {"parts": [{"text": system}]},
                "contents": [{"role": "user", "parts": parts}],
            }),
            headers: Vec::new(),
            auth: self.endpoint().auth,
            blobs: Default::default(),
            model_field: ModelField::Path {
                extra_into: "generationConfig",
            },
        }
    }

    fn answer_text(&self, raw: &Value) -> Result<String, DecodeError> {
        let (parts, _) = candidate(raw)?;
        let text: Vec<&str> = parts
            .iter()
            .filter(|p| p["thought"] != true)
            .filter_map(|p| p["text"].as_str())
            .collect();
        Some(text.join("\n"))
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| DecodeError::Empty("no text".into()))
    }

    fn example(&self) -> Example {
        Example {
            model: "gemini-3.5-flash",
            reply: json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "I click the button."},
                {"functionCall": {"name": "click", "args": {"x": 390, "y": 375, "intent": "Click the button."}}}]},
                "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 1500, "candidatesTokenCount": 40}}),
        }
    }

    fn create(
        &self,
        cfg: &ProtocolConfig,
        geometry: Geometry,
    ) -> Result<Box<dyn Protocol>, String> {
        Ok(Box::new(Gemini::new(cfg, geometry)?))
    }
}

/// `models/{id}:generateContent` under `/v1beta`, for an id given with or without
/// `models/`.
fn generate_path(model: &str) -> String {
    format!(
        "/v1beta/models/{}:generateContent",
        model.trim().trim_start_matches("models/")
    )
}

/// The first candidate's parts and finish reason, or why there are none.
fn candidate(raw: &Value) -> Result<(Vec<Value>, Option<String>), DecodeError> {
    if let Some(e) = raw.get("error").filter(|e| !e.is_null()) {
        return Err(DecodeError::Server(e.to_string()));
    }
    let Some(first) = raw["candidates"].as_array().and_then(|c| c.first()) else {
        if let Some(reason) = raw["promptFeedback"]["blockReason"].as_str() {
            return Err(DecodeError::Server(format!("the prompt was blocked: {reason}")));
        }
        return Err(DecodeError::shape(
            "no `candidates` in the reply (not a generateContent reply?)",
        ));
    };
    let parts = first["content"]["parts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok((parts, first["finishReason"].as_str().map(str::to_owned)))
}

/// Which action set a conversation declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Gemini 3.x's desktop actions.
    Desktop,
    /// Gemini 2.5's browser actions.
    Browser,
}

impl Environment {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().trim_start_matches("environment_") {
            "desktop" => Ok(Self::Desktop),
            "browser" => Ok(Self::Browser),
            other => Err(format!("option environment is desktop or browser, got '{other}'")),
        }
    }

    /// 2.5's computer-use preview works in a browser; 3.x on a desktop.
    fn for_model(model: &str) -> Self {
        let m = ModelId::new(model);
        if m.has_any(&["gemini-2.5", "gemini-2.0", "computer-use-preview"]) {
            Self::Browser
        } else {
            Self::Desktop
        }
    }

    fn wire(self) -> &'static str {
        match self {
            Self::Desktop => "ENVIRONMENT_DESKTOP",
            Self::Browser => "ENVIRONMENT_BROWSER",
        }
    }
}

/// The text that goes beside the screen `shot`, as a part.
fn tree_part(shot: &Shot) -> Option<Value> {
    shot.tree_text().map(|t| json!({"text": t}))
}

pub struct Gemini {
    geometry: Geometry,
    environment: Environment,
    path: String,
    system: String,
    contents: Vec<Value>,
    images: Images,
    /// Calls acknowledged by a person: their responses say so.
    acknowledged: HashSet<String>,
    /// The last turn's calls: (id the results use, the name and id to answer with).
    pending: Vec<(String, String, Option<String>)>,
}

impl Gemini {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let environment = cfg
            .options
            .parsed("environment", Environment::parse)?
            .unwrap_or_else(|| Environment::for_model(&cfg.model));
        let system = prompt(cfg.prompts.as_deref(), "gemini.md", PROMPT, &geometry)
            .map_err(|e| format!("reading the prompts: {e}"))?;
        Ok(Self {
            geometry,
            environment,
            path: generate_path(&cfg.model),
            system,
            contents: Vec::new(),
            images: Images::new(cfg.keep_images),
            acknowledged: HashSet::new(),
            pending: Vec::new(),
        })
    }

    fn image_part(&mut self, shot: &Shot) -> Value {
        let reference = self.images.add(shot);
        json!({"inlineData": {"mimeType": "image/png", "data": reference}})
    }

    /// The contents with images as pixels (`pixels`) or references; older ones become a
    /// note (in a function response, the response says so and its parts go).
    fn render(&self, pixels: bool) -> Vec<Value> {
        let image = |r: &str| -> Option<Value> {
            if !self.images.is_recent(r) {
                return None;
            }
            let data = if pixels {
                self.images.base64(r)?
            } else {
                r.to_owned()
            };
            Some(json!({"inlineData": {"mimeType": "image/png", "data": data}}))
        };
        let mut out = self.contents.clone();
        for content in &mut out {
            let Some(parts) = content["parts"].as_array_mut() else {
                continue;
            };
            for part in parts.iter_mut() {
                if let Some(r) = part["inlineData"]["data"].as_str().map(str::to_owned) {
                    *part = image(&r).unwrap_or_else(|| json!({"text": OMITTED}));
                }
                if let Some(inner) = part["functionResponse"]["parts"].as_array_mut() {
                    let kept: Vec<Value> = inner
                        .iter()
                        .filter_map(|p| p["inlineData"]["data"].as_str().and_then(image))
                        .collect();
                    if kept.is_empty() {
                        if let Some(fr) = part["functionResponse"].as_object_mut() {
                            fr.remove("parts");
                        }
                    } else {
                        *inner = kept;
                    }
                }
            }
        }
        out
    }

    fn body(&self, contents: Vec<Value>) -> Value {
        json!({
            "systemInstruction": {"parts": [{"text": self.system}]},
            "contents": contents,
            "tools": [{"computerUse": {"environment": self.environment.wire()}}],
        })
    }
}

/// A call's numbers on the 0-999 grid as screen pixels.
fn grid_point(
    args: &Map<String, Value>,
    kx: &str,
    ky: &str,
    g: &Geometry,
) -> Result<Point, InvalidAction> {
    let n = |k: &str| {
        args.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| InvalidAction::new(format!("`{k}` must be a number (0 to 999)")))
    };
    g.to_screen(n(kx)?, n(ky)?)
}

/// Wheel notches for a scroll of `pixels` screen pixels (at least one).
fn notches(pixels: f64) -> Result<i32, InvalidAction> {
    if !pixels.is_finite() || pixels < 0.0 {
        return Err(InvalidAction::new(format!(
            "the scroll's magnitude must be a positive number, got {pixels}"
        )));
    }
    let n = (pixels / crate::action::PIXELS_PER_NOTCH).round().max(1.0);
    if n > f64::from(MAX_SCROLL_AMOUNT) {
        return Err(InvalidAction::new(format!(
            "that scroll is {n} wheel clicks; at most {MAX_SCROLL_AMOUNT} at once"
        )));
    }
    Ok(n as i32)
}

/// `up`/`down`/`left`/`right` and an amount as (dx, dy).
fn direction(args: &Map<String, Value>, amount: i32) -> Result<(i32, i32), InvalidAction> {
    match args
        .get("direction")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("up") => Ok((0, -amount)),
        Some("down") => Ok((0, amount)),
        Some("left") => Ok((-amount, 0)),
        Some("right") => Ok((amount, 0)),
        other => Err(InvalidAction::new(format!(
            "`direction` must be up, down, left or right, got {other:?}"
        ))),
    }
}

/// Gemini's key names (`Control+A`, `Enter`, `Meta`) as a combo the desktop takes.
fn combo(keys: &str) -> Result<String, InvalidAction> {
    let names: Vec<&str> = keys.split('+').map(str::trim).collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(InvalidAction::new(format!("'{keys}' is not a key combination")));
    }
    for n in &names {
        crate::keys::lookup(n).map_err(InvalidAction::new)?;
    }
    Ok(names.join("+"))
}

fn text_arg<'a>(args: &'a Map<String, Value>, name: &str) -> Result<&'a str, InvalidAction> {
    let t = args
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| InvalidAction::new(format!("`{name}` needs `text`")))?;
    if t.chars().count() > MAX_TYPE_CHARS {
        return Err(InvalidAction::new(format!(
            "at most {MAX_TYPE_CHARS} characters are typed at once"
        )));
    }
    Ok(t)
}

fn flag(args: &Map<String, Value>, key: &str, default: bool) -> bool {
    match args.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => default,
    }
}

/// One function call as the actions it stands for, in screen pixels (most are one action;
/// `type_text_at` clicks, clears and types).
pub fn to_actions(name: &str, args: &Value, g: &Geometry) -> Result<Vec<Action>, InvalidAction> {
    let empty = Map::new();
    let args = match args {
        Value::Object(m) => m,
        Value::Null => &empty,
        _ => return Err(InvalidAction::new("the args must be a JSON object")),
    };
    let at = |kx: &str, ky: &str| grid_point(args, kx, ky, g);
    let click = |button: Button, count: u8| -> Result<Vec<Action>, InvalidAction> {
        Ok(vec![Action::Click {
            coordinate: Some(at("x", "y")?),
            button,
            count,
            modifiers: Vec::new(),
        }])
    };
    let key_arg = |k: &str| {
        args.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| InvalidAction::new(format!("`{name}` needs `{k}`")))
    };
    let typed = |text: &str, enter: bool| Action::Type {
        text: if enter {
            format!("{text}\n")
        } else {
            text.to_owned()
        },
    };
    Ok(match name {
        // 3.x, desktop.
        "click" | "click_at" => click(Button::Left, 1)?,
        "double_click" => click(Button::Left, 2)?,
        "triple_click" => click(Button::Left, 3)?,
        "middle_click" => click(Button::Middle, 1)?,
        "right_click" => click(Button::Right, 1)?,
        "mouse_down" | "mouse_up" => {
            let coordinate = if args.contains_key("x") {
                Some(at("x", "y")?)
            } else {
                None
            };
            let button = Button::Left;
            vec![if name == "mouse_down" {
                Action::MouseDown { coordinate, button }
            } else {
                Action::MouseUp { coordinate, button }
            }]
        }
        "move" | "hover_at" => vec![Action::MouseMove {
            coordinate: at("x", "y")?,
        }],
        "type" => vec![typed(text_arg(args, name)?, flag(args, "press_enter", false))],
        "press_key" => vec![Action::Key {
            text: combo(key_arg("key")?)?,
        }],
        "key_down" => vec![Action::KeyDown {
            text: combo(key_arg("key")?)?,
        }],
        "key_up" => vec![Action::KeyUp {
            text: combo(key_arg("key")?)?,
        }],
        "hotkey" => {
            let keys: Vec<&str> = match args.get("keys") {
                Some(Value::Array(ks)) => ks.iter().filter_map(Value::as_str).collect(),
                Some(Value::String(s)) => vec![s.as_str()],
                _ => vec![],
            };
            if keys.is_empty() {
                return Err(InvalidAction::new("`hotkey` needs `keys`, a list of key names"));
            }
            vec![Action::Key {
                text: combo(&keys.join("+"))?,
            }]
        }
        "key_combination" => vec![Action::Key {
            text: combo(key_arg("keys")?)?,
        }],
        "drag_and_drop" => {
            let (from, to) = if args.contains_key("start_x") {
                (at("start_x", "start_y")?, at("end_x", "end_y")?)
            } else {
                (at("x", "y")?, at("destination_x", "destination_y")?)
            };
            vec![Action::Drag {
                path: vec![from, to],
                button: Button::Left,
            }]
        }
        "wait" => {
            let secs = args.get("seconds").and_then(Value::as_f64).unwrap_or(1.0);
            if !(0.0..=crate::action::MAX_DURATION_SECS).contains(&secs) {
                return Err(InvalidAction::new(format!(
                    "`seconds` must be 0 to {} seconds",
                    crate::action::MAX_DURATION_SECS
                )));
            }
            vec![Action::Wait { duration: secs }]
        }
        "wait_5_seconds" => vec![Action::Wait { duration: 5.0 }],
        "take_screenshot" => vec![Action::Screenshot],
        "scroll" => {
            let amount = match (
                args.get("magnitude_in_wheel_clicks").and_then(Value::as_f64),
                args.get("magnitude_in_pixels").and_then(Value::as_f64),
            ) {
                (Some(c), _) if c.fract() == 0.0 && (1.0..=f64::from(MAX_SCROLL_AMOUNT)).contains(&c) => {
                    c as i32
                }
                (Some(c), _) => {
                    return Err(InvalidAction::new(format!(
                        "`magnitude_in_wheel_clicks` is a whole number from 1 to {MAX_SCROLL_AMOUNT}, got {c}"
                    )));
                }
                (None, px) => notches(px.unwrap_or(300.0))?,
            };
            let (dx, dy) = direction(args, amount)?;
            vec![Action::Scroll {
                coordinate: Some(at("x", "y")?),
                dx,
                dy,
                modifiers: Vec::new(),
            }]
        }
        // 2.5, browser.
        "type_text_at" => {
            let point = at("x", "y")?;
            let text = text_arg(args, name)?;
            let mut out = vec![Action::Click {
                coordinate: Some(point),
                button: Button::Left,
                count: 1,
                modifiers: Vec::new(),
            }];
            if flag(args, "clear_before_typing", true) {
                out.push(Action::Key {
                    text: "ctrl+a BackSpace".into(),
                });
            }
            out.push(typed(text, flag(args, "press_enter", false)));
            out
        }
        "scroll_at" => {
            // The magnitude is on the grid too: a share of the screen's height or width.
            let m = args.get("magnitude").and_then(Value::as_f64).unwrap_or(800.0);
            let vertical = matches!(
                args.get("direction").and_then(Value::as_str),
                Some("up" | "down")
            );
            let side = if vertical { g.screen.1 } else { g.screen.0 };
            let (dx, dy) = direction(args, notches(m / 1000.0 * f64::from(side))?)?;
            vec![Action::Scroll {
                coordinate: Some(at("x", "y")?),
                dx,
                dy,
                modifiers: Vec::new(),
            }]
        }
        "scroll_document" => {
            let key = match args.get("direction").and_then(Value::as_str) {
                Some("up") => "Prior",
                Some("down") => "Next",
                Some("left") => "Home",
                Some("right") => "End",
                other => {
                    return Err(InvalidAction::new(format!(
                        "`direction` must be up, down, left or right, got {other:?}"
                    )));
                }
            };
            vec![Action::Key { text: key.into() }]
        }
        "open_web_browser" => vec![Action::Navigate { url: None }],
        "navigate" => vec![Action::Navigate {
            url: Some(key_arg("url")?.to_owned()),
        }],
        "search" => vec![Action::Navigate {
            url: Some(SEARCH_URL.to_owned()),
        }],
        "go_back" => vec![Action::Key {
            text: "alt+Left".into(),
        }],
        "go_forward" => vec![Action::Key {
            text: "alt+Right".into(),
        }],
        other => {
            return Err(InvalidAction::new(format!(
                "`{other}` is not a computer use action"
            )));
        }
    })
}

impl Protocol for Gemini {
    fn name(&self) -> ProtocolName {
        ProtocolName::of(&SPEC)
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn begin(&mut self, instruction: &str, shot: &Shot) {
        let image = self.image_part(shot);
        let mut parts = vec![json!({"text": instruction}), image];
        parts.extend(tree_part(shot));
        self.contents.push(json!({"role": "user", "parts": parts}));
    }

    fn user_message(&mut self, text: &str) {
        self.contents
            .push(json!({"role": "user", "parts": [{"text": text}]}));
    }

    fn request(&self) -> (ModelRequest, Value) {
        (
            ModelRequest {
                path: self.path.clone(),
                body: self.body(self.render(true)),
                headers: Vec::new(),
                auth: SPEC.endpoint().auth,
                blobs: self.images.blobs(),
                model_field: ModelField::Path {
                    extra_into: "generationConfig",
                },
            },
            self.body(self.render(false)),
        )
    }

    fn decode(&self, raw: &Value) -> Result<Decision, DecodeError> {
        let (parts, finish) = candidate(raw)?;
        let (mut text, mut thought, mut calls, mut safety) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, part) in parts.iter().enumerate() {
            if let Some(t) = part["text"].as_str() {
                if part["thought"] == true {
                    thought.push(t.to_owned());
                } else {
                    text.push(t.to_owned());
                }
            }
            let Some(call) = part["functionCall"].as_object() else {
                continue;
            };
            let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
            let args = call.get("args").cloned().unwrap_or(Value::Null);
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("{name}#{i}"), str::to_owned);
            if let Some(intent) = args["intent"].as_str() {
                thought.push(intent.to_owned());
            }
            if args["safety_decision"]["decision"] == "require_confirmation" {
                safety.push(SafetyCheck {
                    id: id.clone(),
                    code: "require_confirmation".into(),
                    message: args["safety_decision"]["explanation"]
                        .as_str()
                        .unwrap_or("the model asks for a person's confirmation")
                        .to_owned(),
                    confirm: true,
                });
            }
            let input = json!({"name": name, "args": args});
            match to_actions(name, &args, &self.geometry) {
                Ok(actions) => calls.extend(actions.into_iter().map(|a| Call {
                    id: id.clone(),
                    input: input.clone(),
                    action: Ok(a),
                })),
                Err(e) => calls.push(Call {
                    id,
                    input,
                    action: Err(e),
                }),
            }
        }
        let text = Some(text.join("\n")).filter(|t| !t.trim().is_empty());
        if calls.is_empty() && text.is_none() {
            return Err(match finish.as_deref() {
                Some("MAX_TOKENS") => DecodeError::CutOff,
                Some(reason) => DecodeError::Empty(format!("finish reason {reason}")),
                None => DecodeError::Empty("no parts".into()),
            });
        }
        let u = &raw["usageMetadata"];
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        Ok(Decision {
            thought: Some(thought.join("\n"))
                .filter(|t| !t.trim().is_empty())
                .or_else(|| text.clone().filter(|_| !calls.is_empty())),
            text,
            calls,
            usage: Usage {
                input: n("promptTokenCount"),
                output: n("candidatesTokenCount") + n("thoughtsTokenCount"),
                cache_read: n("cachedContentTokenCount"),
                cache_write: 0,
            },
            safety,
            grounding: Vec::new(),
        })
    }

    fn assistant(&mut self, raw: &Value, decision: &Decision) {
        // Replayed as sent: thought signatures must come back with their calls.
        if let Some(content) = raw["candidates"][0]["content"].as_object() {
            let mut content = Value::Object(content.clone());
            content["role"] = json!("model");
            self.contents.push(content);
        }
        self.pending.clear();
        for call in &decision.calls {
            if self.pending.iter().any(|(id, ..)| id == &call.id) {
                continue;
            }
            let name = call.input["name"].as_str().unwrap_or_default().to_owned();
            let wire_id = raw["candidates"][0]["content"]["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["functionCall"]["id"].as_str())
                .find(|i| *i == call.id)
                .map(str::to_owned);
            self.pending.push((call.id.clone(), name, wire_id));
        }
    }

    fn acknowledge(&mut self, checks: &[SafetyCheck]) {
        self.acknowledged
            .extend(checks.iter().map(|c| c.id.clone()));
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, note: &str) {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            let image = self.image_part(shot);
            let mut parts = vec![json!({"text": note}), image];
            parts.extend(tree_part(shot));
            self.contents.push(json!({"role": "user", "parts": parts}));
            return;
        }
        let last = pending.len() - 1;
        let mut parts = Vec::new();
        for (i, (id, name, wire_id)) in pending.iter().enumerate() {
            // A call's actions share its id: the first error among them, else done.
            let mine: Vec<&CallResult> = results.iter().filter(|r| &r.id == id).collect();
            let mut response = Map::new();
            match mine.iter().find(|r| r.is_error) {
                Some(e) => {
                    response.insert("error".into(), json!(e.text));
                }
                None => {
                    let text = mine
                        .iter()
                        .map(|r| r.text.as_str())
                        .filter(|t| *t != "ok")
                        .collect::<Vec<_>>()
                        .join("\n");
                    response.insert("status".into(), json!("done"));
                    if !text.is_empty() {
                        response.insert("output".into(), json!(text));
                    }
                }
            }
            if self.acknowledged.remove(id) {
                response.insert("safety_acknowledgement".into(), json!("true"));
            }
            let mut fr = json!({"name": name, "response": response});
            if let Some(w) = wire_id {
                fr["id"] = json!(w);
            }
            if i == last {
                fr["parts"] = json!([self.image_part(shot)]);
            }
            parts.push(json!({"functionResponse": fr}));
        }
        // A function response holds only images: the tree follows the responses.
        parts.extend(tree_part(shot));
        self.contents.push(json!({"role": "user", "parts": parts}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::protocol::geometry;
    use pretty_assertions::assert_eq;

    fn gemini(model: &str) -> Gemini {
        let cfg = ProtocolConfig::for_model(ProtocolName::of(&SPEC), model);
        Gemini::new(&cfg, geometry(&cfg, (1280, 800))).unwrap()
    }

    fn shot(s: &str) -> Shot {
        Shot::named(s)
    }

    fn reply(parts: Value) -> Value {
        json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}],
               "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 3, "thoughtsTokenCount": 2}})
    }

    #[test]
    fn the_generation_follows_the_model() {
        assert_eq!(
            Environment::for_model("gemini-2.5-computer-use-preview-10-2025"),
            Environment::Browser
        );
        assert_eq!(Environment::for_model("gemini-3.5-flash"), Environment::Desktop);
        let (req, _) = gemini("models/gemini-3.5-flash").request();
        assert_eq!(req.path, "/v1beta/models/gemini-3.5-flash:generateContent");
        assert_eq!(
            req.body["tools"][0]["computerUse"]["environment"],
            "ENVIRONMENT_DESKTOP"
        );
        assert!(req.body.get("model").is_none());
    }

    #[test]
    fn both_generations_decode_on_the_grid() {
        let g = gemini("gemini-3.5-flash");
        let d = g
            .decode(&reply(json!([
                {"text": "thinking", "thought": true},
                {"functionCall": {"name": "click", "args": {"x": 500, "y": 500, "intent": "Click the middle."}}},
                {"functionCall": {"name": "type_text_at", "args": {"x": 0, "y": 999, "text": "hi", "press_enter": true}}},
                {"functionCall": {"name": "scroll", "args": {"x": 500, "y": 500, "direction": "down", "magnitude_in_wheel_clicks": 4}}},
                {"functionCall": {"name": "scroll", "args": {"x": 500, "y": 500, "direction": "up", "magnitude_in_pixels": 300}}},
                {"functionCall": {"name": "hotkey", "args": {"keys": ["Control", "a"]}}},
                {"functionCall": {"name": "key_combination", "args": {"keys": "Control+Shift+T"}}},
                {"functionCall": {"name": "drag_and_drop", "args": {"start_x": 0, "start_y": 0, "end_x": 999, "end_y": 999}}},
                {"functionCall": {"name": "navigate", "args": {"url": "https://example.com"}}},
                {"functionCall": {"name": "fly", "args": {}}}
            ])))
            .unwrap();
        assert_eq!(d.thought.as_deref(), Some("thinking\nClick the middle."));
        let actions: Vec<_> = d.calls.iter().map(|c| c.action.clone()).collect();
        assert_eq!(
            actions[0].as_ref().unwrap().points(),
            vec![Point::new(640, 400)]
        );
        // type_text_at: click, clear, type (with Enter), one id.
        assert_eq!(d.calls[1].id, d.calls[3].id);
        assert_eq!(
            actions[3],
            Ok(Action::Type {
                text: "hi\n".into()
            })
        );
        assert_eq!(actions[1].as_ref().unwrap().points(), vec![Point::new(0, 799)]);
        assert!(matches!(actions[4], Ok(Action::Scroll { dy: 4, .. })));
        assert!(matches!(actions[5], Ok(Action::Scroll { dy: -6, .. })));
        assert_eq!(
            actions[6],
            Ok(Action::Key {
                text: "Control+a".into()
            })
        );
        assert!(matches!(actions[9], Ok(Action::Navigate { .. })));
        assert!(actions[10].is_err());
        assert_eq!(d.usage.output, 5);
        // Off the grid: refused, never clamped.
        let d = g
            .decode(&reply(json!([{"functionCall": {"name": "click_at", "args": {"x": 1200, "y": 5}}}])))
            .unwrap();
        assert!(d.calls[0].action.is_err());
    }

    #[test]
    fn an_empty_reply_is_retried_and_text_alone_is_the_answer() {
        let g = gemini("gemini-3.5-flash");
        let malformed = json!({"candidates": [{"content": {"parts": []}, "finishReason": "MALFORMED_FUNCTION_CALL"}]});
        assert!(matches!(g.decode(&malformed), Err(DecodeError::Empty(_))));
        assert!(g.decode(&json!({"promptFeedback": {"blockReason": "SAFETY"}})).is_err());
        let d = g.decode(&reply(json!([{"text": "All done."}]))).unwrap();
        assert!(d.calls.is_empty());
        assert_eq!(d.text.as_deref(), Some("All done."));
    }

    #[test]
    fn confirmations_are_asked_and_acknowledged_in_the_response() {
        let mut g = gemini("gemini-2.5-computer-use-preview-10-2025");
        g.begin("buy it", &shot("a"));
        let raw = reply(json!([
            {"functionCall": {"name": "click_at", "args": {"x": 10, "y": 10,
                "safety_decision": {"decision": "require_confirmation", "explanation": "This buys something."}}},
             "thoughtSignature": "sig"}
        ]));
        let d = g.decode(&raw).unwrap();
        assert_eq!(d.safety.len(), 1);
        assert!(d.safety[0].confirm);
        g.assistant(&raw, &d);
        g.acknowledge(&d.safety);
        g.results(
            &[CallResult::ok(&d.calls[0].id)],
            &shot("b"),
            "after",
        );
        let (req, recorded) = g.request();
        let body = req.resolved_body();
        let contents = body["contents"].as_array().unwrap();
        assert_eq!(contents[1]["parts"][0]["thoughtSignature"], "sig");
        let fr = &contents[2]["parts"][0]["functionResponse"];
        assert_eq!(fr["name"], "click_at");
        assert_eq!(fr["response"]["safety_acknowledgement"], "true");
        assert_eq!(fr["parts"][0]["inlineData"]["mimeType"], "image/png");
        assert!(!recorded.to_string().contains("\"data\":\"Yg"), "pixels recorded");
    }
}
