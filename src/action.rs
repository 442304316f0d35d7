//! The canonical [`Action`] set and the adapter that turns model tool input into it.
//!
//! One enum covers Anthropic's computer tool (computer_20250124 and 20251124), OpenAI's
//! computer-use actions and OSWorld's computer_13 (see docs/ARCHITECTURE.md). Input is parsed
//! leniently (numbers as strings, floats for pixels, `key` or `text` for modifiers) because
//! open models are sloppy, but anything ambiguous or out of range is an [`InvalidAction`]
//! whose message is written to be fed back to the model.
//!
//! Key names are checked here, when the action is parsed, so an unknown key never reaches
//! the desktop: `{"action":"key","text":"ctrl+Foo"}` is an error, not a silent no-op.

use crate::keys;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;

/// Longest `wait` or `hold_key` accepted, as Anthropic's tool documents it.
pub const MAX_DURATION_SECS: f64 = 100.0;
/// Most wheel notches one scroll action may turn.
pub const MAX_SCROLL_AMOUNT: i32 = 100;
/// Longest text one `type` action may carry.
pub const MAX_TYPE_CHARS: usize = 10_000;
/// OpenAI's scroll actions give pixels; one wheel notch scrolls about this much.
pub const PIXELS_PER_NOTCH: f64 = 50.0;

/// A point in screen pixels: `[x, y]` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "[i32; 2]", into = "[i32; 2]")]
pub struct Point {
    pub x: i32,
    pub y: i32,
}

impl Point {
    pub const fn new(x: i32, y: i32) -> Self {
        Self { x, y }
    }
}

impl From<[i32; 2]> for Point {
    fn from([x, y]: [i32; 2]) -> Self {
        Self { x, y }
    }
}

impl From<Point> for [i32; 2] {
    fn from(p: Point) -> Self {
        [p.x, p.y]
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}

/// A rectangle given by two corners, `[x0, y0, x1, y1]` in JSON (Anthropic's `zoom` region).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "[i32; 4]", into = "[i32; 4]")]
pub struct Region {
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
}

impl From<[i32; 4]> for Region {
    fn from([x0, y0, x1, y1]: [i32; 4]) -> Self {
        Self { x0, y0, x1, y1 }
    }
}

impl From<Region> for [i32; 4] {
    fn from(r: Region) -> Self {
        [r.x0, r.y0, r.x1, r.y1]
    }
}

/// A mouse button. `back` and `forward` are X buttons 8 and 9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Button {
    #[default]
    Left,
    Right,
    Middle,
    Back,
    Forward,
}

impl Button {
    fn parse(name: &str) -> Result<Self, InvalidAction> {
        match name.to_ascii_lowercase().as_str() {
            "left" | "1" => Ok(Self::Left),
            "right" | "3" => Ok(Self::Right),
            "middle" | "wheel" | "2" => Ok(Self::Middle),
            "back" | "8" => Ok(Self::Back),
            "forward" | "9" => Ok(Self::Forward),
            other => Err(InvalidAction::new(format!(
                "unknown mouse button '{other}' (left, right, middle, back or forward)"
            ))),
        }
    }
}

/// Everything an agent (or a task's setup) can do to a desktop.
///
/// Serialized with an `action` tag in snake case; this is the form stored in recordings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    MouseMove {
        coordinate: Point,
    },
    Click {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Point>,
        #[serde(default)]
        button: Button,
        #[serde(default = "one")]
        count: u8,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        modifiers: Vec<String>,
    },
    MouseDown {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Point>,
        #[serde(default)]
        button: Button,
    },
    MouseUp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Point>,
        #[serde(default)]
        button: Button,
    },
    /// Press at the first point, move along the path, release at the last. A path of one
    /// point drags from where the pointer is.
    Drag {
        path: Vec<Point>,
        #[serde(default)]
        button: Button,
    },
    /// `dy > 0` scrolls down, `dx > 0` right, in wheel notches.
    Scroll {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        coordinate: Option<Point>,
        #[serde(default)]
        dx: i32,
        #[serde(default)]
        dy: i32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        modifiers: Vec<String>,
    },
    Type {
        text: String,
    },
    /// One or more key combos separated by spaces, xdotool style: `ctrl+a Delete`.
    Key {
        text: String,
    },
    HoldKey {
        text: String,
        duration: f64,
    },
    /// Presses keys and leaves them down (pyautogui `keyDown`, UI-TARS `press`).
    KeyDown {
        text: String,
    },
    /// Lets keys go (pyautogui `keyUp`, UI-TARS `release`).
    KeyUp {
        text: String,
    },
    Wait {
        duration: f64,
    },
    Screenshot,
    CursorPosition,
    Zoom {
        region: Region,
    },
    Done {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<String>,
    },
    Fail {
        reason: String,
    },
    /// The model asks the person for help (UI-TARS `call_user()`, a pending question): the
    /// TUI asks; a headless episode ends `needs_user`.
    CallUser {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        question: Option<String>,
    },
    /// Keeps a fact for the model to see again (Fara's `pause_and_memorize_fact`): nothing
    /// happens on the desktop.
    Memorize {
        fact: String,
    },
    /// Opens a web page in the desktop's browser (starting it if needed), or the browser
    /// alone: the browser actions of models trained in one (Gemini 2.5's `navigate`,
    /// Fara's `visit_url`). Only http(s) pages: see [`Action::navigate`].
    Navigate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    // Setup-only actions, not offered to models by default.
    Launch {
        app: String,
    },
    Open {
        target: String,
    },
    Exec {
        command: String,
        #[serde(default)]
        background: bool,
    },
    WriteFile {
        path: String,
        content: String,
    },
}

fn one() -> u8 {
    1
}

/// A tool input that is not a valid action. The message is meant for the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidAction {
    message: String,
}

impl InvalidAction {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl Action {
    /// A [`Action::Navigate`] to `url`: http or https only (a bare host gets `https://`),
    /// no spaces or control characters, at most 2048 bytes. Other schemes (`file:`,
    /// `javascript:`) are refused: the browser opens web pages, nothing else.
    pub fn navigate(url: Option<&str>) -> Result<Self, InvalidAction> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Self::Navigate { url: None });
        };
        if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidAction::new(
                "a URL has no spaces or control characters and at most 2048 bytes",
            ));
        }
        let lower = url.to_ascii_lowercase();
        let url = if lower.starts_with("http://") || lower.starts_with("https://") {
            url.to_owned()
        } else if url.contains("://")
            || lower.starts_with("javascript:")
            || lower.starts_with("file:")
            || lower.starts_with("data:")
        {
            return Err(InvalidAction::new(format!(
                "only http and https pages can be opened, not {url}"
            )));
        } else {
            format!("https://{url}")
        };
        Ok(Self::Navigate { url: Some(url) })
    }

    /// The action's name as stored and shown (`click`, `type`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::MouseMove { .. } => "mouse_move",
            Self::Click { .. } => "click",
            Self::MouseDown { .. } => "mouse_down",
            Self::MouseUp { .. } => "mouse_up",
            Self::Drag { .. } => "drag",
            Self::Scroll { .. } => "scroll",
            Self::Type { .. } => "type",
            Self::Key { .. } => "key",
            Self::HoldKey { .. } => "hold_key",
            Self::KeyDown { .. } => "key_down",
            Self::KeyUp { .. } => "key_up",
            Self::Wait { .. } => "wait",
            Self::Screenshot => "screenshot",
            Self::CursorPosition => "cursor_position",
            Self::Zoom { .. } => "zoom",
            Self::Done { .. } => "done",
            Self::Fail { .. } => "fail",
            Self::CallUser { .. } => "call_user",
            Self::Navigate { .. } => "navigate",
            Self::Memorize { .. } => "memorize",
            Self::Launch { .. } => "launch",
            Self::Open { .. } => "open",
            Self::Exec { .. } => "exec",
            Self::WriteFile { .. } => "write_file",
        }
    }

    /// Actions meant for task setup, not offered to a model unless allowed.
    pub fn is_setup_only(&self) -> bool {
        matches!(
            self,
            Self::Launch { .. } | Self::Open { .. } | Self::Exec { .. } | Self::WriteFile { .. }
        )
    }

    /// Whether the screen may change because of this action (and so is worth settling).
    pub fn may_change_screen(&self) -> bool {
        !matches!(
            self,
            Self::Screenshot
                | Self::CursorPosition
                | Self::Zoom { .. }
                | Self::Done { .. }
                | Self::Fail { .. }
                | Self::CallUser { .. }
                | Self::Wait { .. }
                | Self::WriteFile { .. }
                | Self::Memorize { .. }
        )
    }

    /// Whether the action ends the episode (done, fail) or hands it to a person.
    pub fn is_end(&self) -> bool {
        matches!(
            self,
            Self::Done { .. } | Self::Fail { .. } | Self::CallUser { .. }
        )
    }

    /// Every point the action touches, in order (for scaling and drawing).
    pub fn points(&self) -> Vec<Point> {
        match self {
            Self::MouseMove { coordinate } => vec![*coordinate],
            Self::Click { coordinate, .. }
            | Self::MouseDown { coordinate, .. }
            | Self::MouseUp { coordinate, .. }
            | Self::Scroll { coordinate, .. } => coordinate.iter().copied().collect(),
            Self::Drag { path, .. } => path.clone(),
            Self::Zoom { region } => vec![
                Point::new(region.x0, region.y0),
                Point::new(region.x1, region.y1),
            ],
            _ => Vec::new(),
        }
    }

    /// The same action with every point passed through `f`, which may refuse a point (one
    /// outside the model's coordinate space).
    pub fn try_map_points<E>(
        self,
        mut f: impl FnMut(Point) -> Result<Point, E>,
    ) -> Result<Self, E> {
        let mut error = None;
        let mapped = self.map_points(|p| match f(p) {
            Ok(q) => q,
            Err(e) => {
                error.get_or_insert(e);
                p
            }
        });
        match error {
            Some(e) => Err(e),
            None => Ok(mapped),
        }
    }

    /// The same action with every point passed through `f` (model space to screen space).
    pub fn map_points(mut self, mut f: impl FnMut(Point) -> Point) -> Self {
        match &mut self {
            Self::MouseMove { coordinate } => *coordinate = f(*coordinate),
            Self::Click { coordinate, .. }
            | Self::MouseDown { coordinate, .. }
            | Self::MouseUp { coordinate, .. }
            | Self::Scroll { coordinate, .. } => {
                if let Some(p) = coordinate {
                    *p = f(*p);
                }
            }
            Self::Drag { path, .. } => path.iter_mut().for_each(|p| *p = f(*p)),
            Self::Zoom { region } => {
                let a = f(Point::new(region.x0, region.y0));
                let b = f(Point::new(region.x1, region.y1));
                *region = Region::from([a.x, a.y, b.x, b.y]);
            }
            _ => {}
        }
        self
    }

    /// Parse tool input: Anthropic computer-tool input (`{"action":"left_click",...}`),
    /// OpenAI computer-use actions (`{"type":"click","x":..,"y":..}`) or this enum's own
    /// serialized form. A JSON string holding an object is accepted too.
    pub fn from_tool_input(input: &Value) -> Result<Self, InvalidAction> {
        match input {
            Value::String(s) => {
                let inner: Value = serde_json::from_str(s).map_err(|e| {
                    InvalidAction::new(format!("action arguments are not valid JSON: {e}"))
                })?;
                if inner.is_string() {
                    return Err(InvalidAction::new("action arguments must be a JSON object"));
                }
                Self::from_tool_input(&inner)
            }
            Value::Object(map) => {
                let args = Args(map);
                if let Some(name) = args.str_opt("action")? {
                    parse_named(name, &args)
                } else if let Some(name) = args.str_opt("type")? {
                    parse_openai(name, &args)
                } else {
                    Err(InvalidAction::new(
                        "missing `action`: give one of key, type, mouse_move, left_click, \
                         right_click, middle_click, double_click, triple_click, \
                         left_click_drag, left_mouse_down, left_mouse_up, scroll, hold_key, \
                         wait, screenshot, cursor_position, zoom",
                    ))
                }
            }
            other => Err(InvalidAction::new(format!(
                "action arguments must be a JSON object, got {}",
                kind_of(other)
            ))),
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed, lenient access to the fields of one tool input object.
struct Args<'a>(&'a Map<String, Value>);

impl Args<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn str_opt(&self, key: &str) -> Result<Option<&str>, InvalidAction> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(InvalidAction::new(format!(
                "`{key}` must be a string, got {}",
                kind_of(other)
            ))),
        }
    }

    fn str_req(&self, key: &str, action: &str) -> Result<&str, InvalidAction> {
        self.str_opt(key)?
            .ok_or_else(|| InvalidAction::new(format!("`{action}` needs `{key}`")))
    }

    fn number_opt(&self, key: &str) -> Result<Option<f64>, InvalidAction> {
        self.get(key).map(|v| number(v, key)).transpose()
    }

    fn point_opt(&self, key: &str) -> Result<Option<Point>, InvalidAction> {
        self.get(key).map(|v| point(v, key)).transpose()
    }

    fn point_req(&self, key: &str, action: &str) -> Result<Point, InvalidAction> {
        self.point_opt(key)?.ok_or_else(|| {
            InvalidAction::new(format!("`{action}` needs `{key}` as [x, y] in pixels"))
        })
    }

    /// Modifier keys held during a click or scroll: `key` (computer_20250124 clicks),
    /// `text` (its scroll), or `modifiers` (a list or a `+`-joined string).
    fn modifiers(&self, text_is_modifier: bool) -> Result<Vec<String>, InvalidAction> {
        let raw = match (self.get("modifiers"), self.get("key")) {
            (Some(Value::Array(items)), _) => {
                let names = key_names(items, "modifiers")?;
                return validate_modifiers(names.into_iter().map(str::to_owned).collect());
            }
            (Some(_), _) => self.str_opt("modifiers")?,
            (None, Some(_)) => self.str_opt("key")?,
            (None, None) if text_is_modifier => self.str_opt("text")?,
            (None, None) => None,
        };
        let names = raw
            .map(|s| {
                s.split('+')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        validate_modifiers(names)
    }

    fn duration(&self, action: &str, default: Option<f64>) -> Result<f64, InvalidAction> {
        let secs = match (self.number_opt("duration")?, default) {
            (Some(s), _) => s,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(InvalidAction::new(format!(
                    "`{action}` needs `duration` in seconds"
                )));
            }
        };
        if !(0.0..=MAX_DURATION_SECS).contains(&secs) {
            return Err(InvalidAction::new(format!(
                "`duration` must be between 0 and {MAX_DURATION_SECS} seconds, got {secs}"
            )));
        }
        Ok(secs)
    }
}

/// A JSON list of key names, as `modifiers` and OpenAI's `keys` give them.
fn key_names<'a>(items: &'a [Value], key: &str) -> Result<Vec<&'a str>, InvalidAction> {
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.as_str()),
            other => Err(InvalidAction::new(format!(
                "`{key}` must list key names, found {}",
                kind_of(other)
            ))),
        })
        .collect()
}

fn validate_modifiers(names: Vec<String>) -> Result<Vec<String>, InvalidAction> {
    for name in &names {
        keys::lookup(name).map_err(InvalidAction::new)?;
    }
    Ok(names)
}

fn number(v: &Value, key: &str) -> Result<f64, InvalidAction> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n.is_finite() => Ok(n),
        _ => Err(InvalidAction::new(format!(
            "`{key}` must be a number, got {v}"
        ))),
    }
}

fn pixel(n: f64, key: &str) -> Result<i32, InvalidAction> {
    let r = n.round();
    if r.abs() > 1.0e6 {
        return Err(InvalidAction::new(format!(
            "`{key}` value {n} is not a screen coordinate"
        )));
    }
    Ok(r as i32)
}

/// `[x, y]`, `{"x":..,"y":..}`, `"x,y"` or `"(x, y)"`.
fn point(v: &Value, key: &str) -> Result<Point, InvalidAction> {
    let bad = || InvalidAction::new(format!("`{key}` must be [x, y] in pixels, got {v}"));
    match v {
        Value::Array(items) if items.len() == 2 => Ok(Point::new(
            pixel(number(&items[0], key)?, key)?,
            pixel(number(&items[1], key)?, key)?,
        )),
        Value::Object(m) => match (m.get("x"), m.get("y")) {
            (Some(x), Some(y)) => Ok(Point::new(
                pixel(number(x, key)?, key)?,
                pixel(number(y, key)?, key)?,
            )),
            _ => Err(bad()),
        },
        Value::String(s) => {
            let inner = s
                .trim()
                .trim_start_matches(['(', '['])
                .trim_end_matches([')', ']']);
            let mut parts = inner.split(',').map(str::trim);
            match (parts.next(), parts.next(), parts.next()) {
                (Some(x), Some(y), None) => {
                    let x = x.parse::<f64>().map_err(|_| bad())?;
                    let y = y.parse::<f64>().map_err(|_| bad())?;
                    Ok(Point::new(pixel(x, key)?, pixel(y, key)?))
                }
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

fn non_empty_text<'a>(args: &'a Args<'_>, action: &str) -> Result<&'a str, InvalidAction> {
    let text = args.str_req("text", action)?;
    if text.is_empty() {
        return Err(InvalidAction::new(format!(
            "`{action}` needs non-empty `text`"
        )));
    }
    Ok(text)
}

fn key_text(args: &Args<'_>, action: &str) -> Result<String, InvalidAction> {
    let text = match (args.get("text"), args.get("keys")) {
        (Some(_), _) => args.str_req("text", action)?.to_owned(),
        // OpenAI style: {"keys": ["CTRL", "A"]}
        (None, Some(Value::Array(items))) => key_names(items, "keys")?.join("+"),
        (None, Some(_)) => args.str_req("keys", action)?.to_owned(),
        (None, None) => {
            return Err(InvalidAction::new(format!(
                "`{action}` needs `text` with a key or combo such as \"Return\" or \"ctrl+s\""
            )));
        }
    };
    keys::parse_sequence(&text).map_err(InvalidAction::new)?;
    Ok(text)
}

fn click(args: &Args<'_>, button: Button, count: u8) -> Result<Action, InvalidAction> {
    Ok(Action::Click {
        coordinate: args.point_opt("coordinate")?,
        button,
        count,
        modifiers: args.modifiers(true)?,
    })
}

fn parse_named(name: &str, args: &Args<'_>) -> Result<Action, InvalidAction> {
    let action = match name {
        "screenshot" => Action::Screenshot,
        "cursor_position" => Action::CursorPosition,
        "mouse_move" | "move" => Action::MouseMove {
            coordinate: args.point_req("coordinate", name)?,
        },
        "left_click" => click(args, Button::Left, 1)?,
        "right_click" => click(args, Button::Right, 1)?,
        "middle_click" => click(args, Button::Middle, 1)?,
        "double_click" => click(args, Button::Left, 2)?,
        "triple_click" => click(args, Button::Left, 3)?,
        "click" => {
            let button = args
                .str_opt("button")?
                .map(Button::parse)
                .transpose()?
                .unwrap_or_default();
            let count = match args.number_opt("count")?.or(args.number_opt("clicks")?) {
                None => 1,
                Some(n) if (1.0..=3.0).contains(&n) && n.fract() == 0.0 => n as u8,
                Some(n) => {
                    return Err(InvalidAction::new(format!(
                        "`count` must be 1, 2 or 3, got {n}"
                    )));
                }
            };
            click(args, button, count)?
        }
        "left_mouse_down" | "mouse_down" | "left_mouse_up" | "mouse_up" => {
            let coordinate = args.point_opt("coordinate")?;
            let button = args
                .str_opt("button")?
                .map(Button::parse)
                .transpose()?
                .unwrap_or_default();
            if name.ends_with("down") {
                Action::MouseDown { coordinate, button }
            } else {
                Action::MouseUp { coordinate, button }
            }
        }
        "left_click_drag" | "drag" => {
            let path = match args.get("path") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| point(v, "path"))
                    .collect::<Result<Vec<_>, _>>()?,
                Some(other) => {
                    return Err(InvalidAction::new(format!(
                        "`path` must be a list of [x, y] points, got {}",
                        kind_of(other)
                    )));
                }
                None => vec![
                    args.point_req("start_coordinate", name)?,
                    args.point_req("coordinate", name)?,
                ],
            };
            if path.len() < 2 {
                return Err(InvalidAction::new("a drag needs at least two points"));
            }
            let button = args
                .str_opt("button")?
                .map(Button::parse)
                .transpose()?
                .unwrap_or_default();
            Action::Drag { path, button }
        }
        "scroll" => {
            let coordinate = args.point_opt("coordinate")?;
            let modifiers = args.modifiers(true)?;
            let (dx, dy) = if let Some(direction) = args.str_opt("scroll_direction")? {
                let amount = match args.number_opt("scroll_amount")? {
                    None => 3,
                    Some(n)
                        if n.fract() == 0.0
                            && (0.0..=f64::from(MAX_SCROLL_AMOUNT)).contains(&n) =>
                    {
                        n as i32
                    }
                    Some(n) => {
                        return Err(InvalidAction::new(format!(
                            "`scroll_amount` must be a whole number of wheel clicks from 0 to {MAX_SCROLL_AMOUNT}, got {n}"
                        )));
                    }
                };
                match direction.to_ascii_lowercase().as_str() {
                    "up" => (0, -amount),
                    "down" => (0, amount),
                    "left" => (-amount, 0),
                    "right" => (amount, 0),
                    other => {
                        return Err(InvalidAction::new(format!(
                            "`scroll_direction` must be up, down, left or right, got '{other}'"
                        )));
                    }
                }
            } else {
                let notches = |key: &str| -> Result<i32, InvalidAction> {
                    match args.number_opt(key)? {
                        None => Ok(0),
                        Some(n) if n.fract() == 0.0 && n.abs() <= f64::from(MAX_SCROLL_AMOUNT) => {
                            Ok(n as i32)
                        }
                        Some(n) => Err(InvalidAction::new(format!(
                            "`{key}` must be a whole number of wheel clicks within ±{MAX_SCROLL_AMOUNT}, got {n}"
                        ))),
                    }
                };
                let (dx, dy) = (notches("dx")?, notches("dy")?);
                if dx == 0 && dy == 0 {
                    return Err(InvalidAction::new(
                        "`scroll` needs `scroll_direction` (up, down, left, right) and `scroll_amount`",
                    ));
                }
                (dx, dy)
            };
            Action::Scroll {
                coordinate,
                dx,
                dy,
                modifiers,
            }
        }
        "type" => {
            let text = non_empty_text(args, name)?;
            if text.chars().count() > MAX_TYPE_CHARS {
                return Err(InvalidAction::new(format!(
                    "`type` text is longer than {MAX_TYPE_CHARS} characters; split it up"
                )));
            }
            keys::check_typeable(text).map_err(InvalidAction::new)?;
            Action::Type {
                text: text.to_owned(),
            }
        }
        "key" | "keypress" => Action::Key {
            text: key_text(args, name)?,
        },
        "hold_key" => Action::HoldKey {
            text: key_text(args, name)?,
            duration: args.duration(name, None)?,
        },
        "wait" => Action::Wait {
            duration: args.duration(name, Some(1.0))?,
        },
        "zoom" => {
            let region = match args.get("region") {
                Some(Value::Array(items)) if items.len() == 4 => {
                    let mut c = [0i32; 4];
                    for (slot, v) in c.iter_mut().zip(items) {
                        *slot = pixel(number(v, "region")?, "region")?;
                    }
                    Region::from(c)
                }
                _ => {
                    return Err(InvalidAction::new(
                        "`zoom` needs `region` as [x0, y0, x1, y1] in pixels",
                    ));
                }
            };
            if region.x1 <= region.x0 || region.y1 <= region.y0 {
                return Err(InvalidAction::new("`region` must have x1 > x0 and y1 > y0"));
            }
            Action::Zoom { region }
        }
        "done" | "terminate" | "finish" => Action::Done {
            answer: args
                .str_opt("answer")?
                .or(args.str_opt("text")?)
                .map(str::to_owned),
        },
        "call_user" | "ask_user" => Action::CallUser {
            question: args
                .str_opt("question")?
                .or(args.str_opt("text")?)
                .map(str::to_owned),
        },
        "fail" => Action::Fail {
            reason: args
                .str_opt("reason")?
                .or(args.str_opt("text")?)
                .unwrap_or("the agent gave up")
                .to_owned(),
        },
        "launch" => Action::Launch {
            app: args.str_req("app", name)?.to_owned(),
        },
        "open" => Action::Open {
            target: args
                .str_opt("target")?
                .or(args.str_opt("path")?)
                .or(args.str_opt("url")?)
                .ok_or_else(|| InvalidAction::new("`open` needs `target` (a path or URL)"))?
                .to_owned(),
        },
        "exec" => Action::Exec {
            command: args.str_req("command", name)?.to_owned(),
            background: args
                .get("background")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
        "write_file" => Action::WriteFile {
            path: args.str_req("path", name)?.to_owned(),
            content: args.str_req("content", name)?.to_owned(),
        },
        other => {
            return Err(InvalidAction::new(format!(
                "unknown action '{other}': use key, type, mouse_move, left_click, right_click, \
                 middle_click, double_click, triple_click, left_click_drag, left_mouse_down, \
                 left_mouse_up, scroll, hold_key, wait, screenshot, cursor_position or zoom"
            )));
        }
    };
    Ok(action)
}

/// OpenAI computer-use actions: `{"type": "click", "x": 10, "y": 20, "button": "left"}`.
fn parse_openai(name: &str, args: &Args<'_>) -> Result<Action, InvalidAction> {
    let xy = |required: bool| -> Result<Option<Point>, InvalidAction> {
        match (args.get("x"), args.get("y")) {
            (Some(x), Some(y)) => Ok(Some(Point::new(
                pixel(number(x, "x")?, "x")?,
                pixel(number(y, "y")?, "y")?,
            ))),
            (None, None) if !required => Ok(None),
            _ => Err(InvalidAction::new(format!("`{name}` needs `x` and `y`"))),
        }
    };
    let action = match name {
        "click" => Action::Click {
            coordinate: xy(true)?,
            button: args
                .str_opt("button")?
                .map(Button::parse)
                .transpose()?
                .unwrap_or_default(),
            count: 1,
            modifiers: args.modifiers(false)?,
        },
        "double_click" => Action::Click {
            coordinate: xy(true)?,
            button: Button::Left,
            count: 2,
            modifiers: args.modifiers(false)?,
        },
        "move" => Action::MouseMove {
            coordinate: xy(true)?.unwrap_or(Point::new(0, 0)),
        },
        "scroll" => {
            let notches = |key: &str| -> Result<i32, InvalidAction> {
                let px = args.number_opt(key)?.unwrap_or(0.0);
                if px == 0.0 {
                    return Ok(0);
                }
                let n = (px.abs() / PIXELS_PER_NOTCH).round().max(1.0);
                Ok((n.min(f64::from(MAX_SCROLL_AMOUNT)) as i32) * px.signum() as i32)
            };
            Action::Scroll {
                coordinate: xy(false)?,
                dx: notches("scroll_x")?,
                dy: notches("scroll_y")?,
                modifiers: args.modifiers(false)?,
            }
        }
        "drag" => {
            let path = match args.get("path") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| point(v, "path"))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(InvalidAction::new("`drag` needs `path`: [{x, y}, ...]")),
            };
            if path.len() < 2 {
                return Err(InvalidAction::new("a drag needs at least two points"));
            }
            Action::Drag {
                path,
                button: Button::Left,
            }
        }
        "keypress" | "key" => Action::Key {
            text: key_text(args, name)?,
        },
        "type" => parse_named("type", args)?,
        "wait" => Action::Wait {
            duration: args
                .number_opt("ms")?
                .map(|ms| ms / 1000.0)
                .map_or_else(|| args.duration(name, Some(1.0)), Ok)?,
        },
        "screenshot" => Action::Screenshot,
        other => {
            return Err(InvalidAction::new(format!(
                "unknown action type '{other}': use click, double_click, move, scroll, drag, \
                 keypress, type, wait or screenshot"
            )));
        }
    };
    Ok(action)
}

/// Seconds as a `Duration`, for the validated durations of `wait` and `hold_key`.
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, MAX_DURATION_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn parse(v: Value) -> Result<Action, String> {
        Action::from_tool_input(&v).map_err(|e| e.to_string())
    }

    #[test]
    fn anthropic_clicks_map_to_buttons_counts_and_modifiers() {
        assert_eq!(
            parse(json!({"action":"left_click","coordinate":[100,200]})),
            Ok(Action::Click {
                coordinate: Some(Point::new(100, 200)),
                button: Button::Left,
                count: 1,
                modifiers: vec![]
            })
        );
        assert_eq!(
            parse(json!({"action":"triple_click","coordinate":["10", 20.4]})),
            Ok(Action::Click {
                coordinate: Some(Point::new(10, 20)),
                button: Button::Left,
                count: 3,
                modifiers: vec![]
            })
        );
        assert_eq!(
            parse(json!({"action":"right_click","coordinate":[1,2],"key":"ctrl+shift"})),
            Ok(Action::Click {
                coordinate: Some(Point::new(1, 2)),
                button: Button::Right,
                count: 1,
                modifiers: vec!["ctrl".into(), "shift".into()]
            })
        );
        assert_eq!(
            parse(json!({"action":"click","button":"forward","count":2})),
            Ok(Action::Click {
                coordinate: None,
                button: Button::Forward,
                count: 2,
                modifiers: vec![]
            })
        );
    }

    #[test]
    fn scroll_directions_become_signed_notches() {
        assert_eq!(
            parse(
                json!({"action":"scroll","coordinate":[5,5],"scroll_direction":"up","scroll_amount":4,"text":"ctrl"})
            ),
            Ok(Action::Scroll {
                coordinate: Some(Point::new(5, 5)),
                dx: 0,
                dy: -4,
                modifiers: vec!["ctrl".into()]
            })
        );
        assert_eq!(
            parse(json!({"action":"scroll","scroll_direction":"right","scroll_amount":2})),
            Ok(Action::Scroll {
                coordinate: None,
                dx: 2,
                dy: 0,
                modifiers: vec![]
            })
        );
        assert!(parse(json!({"action":"scroll","scroll_direction":"sideways"})).is_err());
        assert!(
            parse(json!({"action":"scroll","scroll_direction":"up","scroll_amount":1.5})).is_err()
        );
    }

    #[test]
    fn drag_from_start_coordinate_or_path() {
        assert_eq!(
            parse(json!({"action":"left_click_drag","start_coordinate":[1,2],"coordinate":[3,4]})),
            Ok(Action::Drag {
                path: vec![Point::new(1, 2), Point::new(3, 4)],
                button: Button::Left
            })
        );
        assert_eq!(
            parse(json!({"type":"drag","path":[{"x":1,"y":1},{"x":2,"y":2},{"x":3,"y":3}]})),
            Ok(Action::Drag {
                path: vec![Point::new(1, 1), Point::new(2, 2), Point::new(3, 3)],
                button: Button::Left
            })
        );
        assert!(parse(json!({"action":"left_click_drag","coordinate":[3,4]})).is_err());
    }

    #[test]
    fn keys_are_validated_when_parsed() {
        assert_eq!(
            parse(json!({"action":"key","text":"ctrl+alt+t"})),
            Ok(Action::Key {
                text: "ctrl+alt+t".into()
            })
        );
        assert_eq!(
            parse(json!({"type":"keypress","keys":["CTRL","A"]})),
            Ok(Action::Key {
                text: "CTRL+A".into()
            })
        );
        let err = parse(json!({"action":"key","text":"ctrl+Foo"})).unwrap_err();
        assert!(err.contains("unknown key 'Foo'"), "{err}");
        let err = parse(json!({"action":"left_click","key":"hyperdrive"})).unwrap_err();
        assert!(err.contains("unknown key 'hyperdrive'"), "{err}");
    }

    #[test]
    fn malformed_input_gets_a_message_for_the_model() {
        for (input, needle) in [
            (json!({"coordinate":[1,2]}), "missing `action`"),
            (json!({"action":"teleport"}), "unknown action 'teleport'"),
            (json!({"action":"mouse_move"}), "needs `coordinate`"),
            (
                json!({"action":"mouse_move","coordinate":[1]}),
                "must be [x, y]",
            ),
            (json!({"action":"type"}), "needs `text`"),
            (json!({"action":"type","text":""}), "non-empty"),
            (json!({"action":"wait","duration":-1}), "between 0 and"),
            (json!({"action":"hold_key","text":"a"}), "needs `duration`"),
            (json!({"action":"zoom","region":[10,10,5,5]}), "x1 > x0"),
            (json!([1, 2]), "must be a JSON object"),
            (json!("{not json"), "not valid JSON"),
        ] {
            let err = parse(input.clone()).unwrap_err();
            assert!(err.contains(needle), "{input} -> {err}");
        }
    }

    #[test]
    fn arguments_as_a_json_string_are_accepted() {
        assert_eq!(
            parse(json!("{\"action\":\"type\",\"text\":\"hi\"}")),
            Ok(Action::Type { text: "hi".into() })
        );
    }

    #[test]
    fn openai_actions_are_translated() {
        assert_eq!(
            parse(json!({"type":"scroll","x":10,"y":20,"scroll_x":0,"scroll_y":-120})),
            Ok(Action::Scroll {
                coordinate: Some(Point::new(10, 20)),
                dx: 0,
                dy: -2,
                modifiers: vec![]
            })
        );
        assert_eq!(
            parse(json!({"type":"click","x":3,"y":4,"button":"right"})),
            Ok(Action::Click {
                coordinate: Some(Point::new(3, 4)),
                button: Button::Right,
                count: 1,
                modifiers: vec![]
            })
        );
        assert_eq!(
            parse(json!({"type":"wait","ms":500})),
            Ok(Action::Wait { duration: 0.5 })
        );
    }

    #[test]
    fn canonical_form_round_trips_through_the_parser() {
        let actions = vec![
            Action::MouseMove {
                coordinate: Point::new(1, 2),
            },
            Action::Click {
                coordinate: Some(Point::new(1, 2)),
                button: Button::Middle,
                count: 2,
                modifiers: vec!["shift".into()],
            },
            Action::Drag {
                path: vec![Point::new(0, 0), Point::new(5, 5), Point::new(9, 1)],
                button: Button::Right,
            },
            Action::Scroll {
                coordinate: None,
                dx: -1,
                dy: 3,
                modifiers: vec![],
            },
            Action::Type {
                text: "héllo ✓".into(),
            },
            Action::Key {
                text: "ctrl+a Delete".into(),
            },
            Action::HoldKey {
                text: "shift".into(),
                duration: 0.5,
            },
            Action::Wait { duration: 2.0 },
            Action::Zoom {
                region: Region::from([0, 0, 10, 10]),
            },
            Action::Done {
                answer: Some("42".into()),
            },
            Action::Fail {
                reason: "stuck".into(),
            },
            Action::Exec {
                command: "ls".into(),
                background: true,
            },
        ];
        for action in actions {
            let json = serde_json::to_value(&action).unwrap();
            assert_eq!(Action::from_tool_input(&json), Ok(action.clone()), "{json}");
            let back: Action = serde_json::from_value(json).unwrap();
            assert_eq!(back, action);
        }
    }

    #[test]
    fn map_points_moves_every_point() {
        let a = Action::Drag {
            path: vec![Point::new(1, 1), Point::new(2, 2)],
            button: Button::Left,
        };
        let b = a.map_points(|p| Point::new(p.x * 2, p.y * 3));
        assert_eq!(b.points(), vec![Point::new(2, 3), Point::new(4, 6)]);
    }
}
