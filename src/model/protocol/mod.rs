//! Protocols: what each real computer-use model expects and emits, one file per wire
//! format, behind one trait the loop uses without knowing any of them.
//!
//! Each protocol's file declares everything about itself in a [`Spec`]: its name and
//! aliases, which model ids are its own (and in which coordinate space), its endpoint
//! (default base URL, key variables, how the key travels, where pre-flight lists models),
//! the size its model sees, how a judge asks it a question, its options, a typical reply
//! (for the bench and the fuzz tests), and the constructor of its conversation, a
//! [`Protocol`]. This module keeps the traits, [`Geometry`], images, and the list of
//! protocols ([`ALL`]), which everything else iterates: nothing outside `agent/protocol/`
//! branches on a protocol's name. Adding a protocol is one new file and one line in the
//! `protocols!` list below (docs/ARCHITECTURE.md shows it).
//!
//! A [`Protocol`] owns the system prompt or tool declaration, the conversation, how a
//! request is encoded ([`ModelRequest`]: path, headers, body; and the same body without
//! pixels for the recording), how a reply decodes into a [`Decision`] (a thought, calls
//! each holding an [`Action`] in screen pixels or the reason it is unusable, or a final
//! answer), and how results and the next screenshot go back. HTTP, retries and backoff are
//! the transport's (`model`). Coordinates: each protocol sends the screenshot at the
//! size its model really sees and maps the model's coordinates back with the same
//! arithmetic ([`Geometry`]); a coordinate outside the model's space is an unusable action,
//! never clamped.
//!
//! | name        | wire format                                      | coordinates                |
//! |-------------|--------------------------------------------------|----------------------------|
//! | `anthropic` | Messages API, `computer` tool or computer toolset | pixels of the sent image   |
//! | `openai`    | Responses API, the computer tool                 | pixels of the sent image   |
//! | `gemini`    | generateContent, the `computer_use` tool         | 0-999 grid                 |
//! | `uitars`    | chat completions, `Thought:`/`Action:` text      | smart-resize pixels, 0-1000|
//! | `qwen`      | chat completions, `computer_use`/`computer` call | smart-resize pixels, 0-1000|
//! | `fara`      | chat completions, `<tool_call>` after thoughts   | smart-resize pixels        |
//! | `glm`       | chat completions, `<\|begin_of_box\|>` actions    | 0-999 grid                 |
//! | `opencua`   | chat completions, `## Code` pyautogui blocks     | smart-resize pixels, 0-1   |
//! | `pyautogui` | chat completions, pyautogui code (OSWorld)       | pixels of the sent image   |
//! | `tools`     | chat completions, a `computer` function          | pixels of the sent image   |
//!
//! Facts per model family, with their sources: `docs/PROTOCOLS.md`.

/// The protocols, in the order detection asks them: the first whose [`Spec::detect`]
/// claims a model id wins, and `tools` claims every id, so it comes last. Each name is a
/// module whose `SPEC` static implements [`Spec`].
macro_rules! protocols {
    ($($module:ident),* $(,)?) => {
        $(pub mod $module;)*
        /// Every protocol, in detection order.
        pub static ALL: &[&dyn Spec] = &[$(&$module::SPEC),*];
    };
}

protocols! {
    anthropic,
    openai,
    gemini,
    uitars,
    qwen,
    fara,
    glm,
    opencua,
    pyautogui,
    tools,
}

mod chat;
pub mod grounding;
mod pycode;

pub use chat::{ChatReply, parse_chat};

use crate::action::{Action, InvalidAction, Point};
use crate::model::{Auth, Blobs, ModelRequest, Usage};
use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A model id as detection reads it: lower case, and its last path part
/// (`org/UI-TARS-1.5-7B` → `ui-tars-1.5-7b`).
#[derive(Debug, Clone)]
pub struct ModelId {
    /// The whole id, lower case.
    pub full: String,
    /// Its last path part, lower case.
    pub base: String,
}

impl ModelId {
    pub fn new(model: &str) -> Self {
        let full = model.trim().to_ascii_lowercase();
        let base = full.rsplit('/').next().unwrap_or(&full).to_owned();
        Self { full, base }
    }

    /// Whether the last path part contains `s`.
    pub fn has(&self, s: &str) -> bool {
        self.base.contains(s)
    }

    /// Whether the last path part contains any of `list`.
    pub fn has_any(&self, list: &[&str]) -> bool {
        list.iter().any(|s| self.has(s))
    }
}

/// Where a protocol's API lives and how the key travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The public API's base URL, used when none is given.
    pub default_base_url: Option<&'static str>,
    /// The environment variables the key is read from by default, the first that is set.
    pub key_variables: &'static [&'static str],
    pub auth: Auth,
    /// Appended to the base URL to list the served models (pre-flight, `doctor`).
    pub models_path: &'static str,
    /// Headers every request carries besides the key (`anthropic-version`).
    pub headers: &'static [(&'static str, &'static str)],
}

impl Endpoint {
    /// An OpenAI-compatible chat completions server: `{base}/chat/completions`, a bearer
    /// key from `OPENAI_API_KEY`, models at `{base}/models`.
    pub const CHAT: Self = Self {
        default_base_url: None,
        key_variables: &["OPENAI_API_KEY"],
        auth: Auth::Bearer,
        models_path: "/models",
        headers: &[],
    };

    /// The variable the key is read from: the first of them that is set, else the first
    /// (for messages).
    pub fn key_variable(&self) -> &'static str {
        self.key_variables
            .iter()
            .copied()
            .find(|v| std::env::var_os(v).is_some())
            .or_else(|| self.key_variables.first().copied())
            .unwrap_or("OPENAI_API_KEY")
    }
}

/// One option a protocol reads (`--option KEY=VALUE`, or the flag or file key that sets
/// it), for validation and help.
#[derive(Debug, Clone, Copy)]
pub struct OptionDoc {
    pub key: &'static str,
    pub help: &'static str,
}

/// A typical exchange of a protocol: a model id it is chosen for, and a reply of that
/// model clicking at (500, 300) in its own space. The bench measures decoding it; the fuzz
/// tests mutate it.
#[derive(Debug, Clone)]
pub struct Example {
    pub model: &'static str,
    pub reply: Value,
}

/// Everything a protocol declares about itself (see the module docs). Implemented by a
/// `SPEC` static in each protocol's file.
pub trait Spec: Send + Sync + 'static {
    /// The name `--protocol` takes and the recording keeps.
    fn name(&self) -> &'static str;

    /// Other names `--protocol` accepts.
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// The wire format, in a few words.
    fn wire(&self) -> &'static str;

    /// The coordinate space when this protocol is the one for `model`, `None` when the
    /// model is not its own.
    fn detect(&self, model: &ModelId) -> Option<CoordSpace>;

    /// Which model ids `detect` claims, in words (docs, `--help`).
    fn detects(&self) -> &'static str;

    /// The coordinate space when the protocol is chosen for a model it does not claim.
    fn default_space(&self, _model: &ModelId) -> CoordSpace {
        CoordSpace::Native
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::CHAT
    }

    /// The base URL as this API's paths expect it (given as users give it).
    fn base_url(&self, given: &str) -> String {
        given.to_owned()
    }

    /// The options this protocol reads.
    fn options(&self) -> &'static [OptionDoc] {
        &[]
    }

    /// The size of the screenshot its model sees of a `screen`-sized desktop (its own
    /// resize rule, so no server resizes it again): by default Qwen's smart resize for the
    /// `smart` space, else the target size.
    fn sent_size(&self, cfg: &ProtocolConfig, screen: (u32, u32)) -> (u32, u32) {
        match cfg.space {
            CoordSpace::Smart => smart_size(screen, 28, 3136, 12_845_056),
            _ => cfg.target.size(screen),
        }
    }

    /// A one-shot question about screenshots (a task's judge): the system prompt, the
    /// text, then the images.
    fn question(
        &self,
        _cfg: &ProtocolConfig,
        system: &str,
        text: &str,
        pngs: &[Arc<Vec<u8>>],
    ) -> ModelRequest {
        chat::question(system, text, pngs)
    }

    /// The text of a reply to [`Spec::question`].
    fn answer_text(&self, raw: &Value) -> Result<String, DecodeError> {
        chat::answer_text(raw)
    }

    /// A typical exchange (the bench, the fuzz tests).
    fn example(&self) -> Example;

    /// Whether this protocol's conversation can go without screenshots, each screen given
    /// as its accessibility tree (`--observe a11y`): the wire format takes text where the
    /// screen goes, and its models are general ones that can act from text (not GUI
    /// models trained to ground every action in pixels, nor APIs whose tool result must be
    /// an image).
    fn observes_text(&self) -> bool {
        false
    }

    /// Starts a conversation.
    fn create(&self, cfg: &ProtocolConfig, geometry: Geometry)
    -> Result<Box<dyn Protocol>, String>;
}

/// A protocol, by name: a handle on its [`Spec`]. Compares, prints and serializes as the
/// name.
#[derive(Clone, Copy)]
pub struct ProtocolName(&'static dyn Spec);

impl ProtocolName {
    pub const fn of(spec: &'static dyn Spec) -> Self {
        Self(spec)
    }

    pub fn spec(&self) -> &'static dyn Spec {
        self.0
    }

    pub fn as_str(&self) -> &'static str {
        self.0.name()
    }

    /// Every protocol, in detection order.
    pub fn all() -> impl Iterator<Item = Self> {
        ALL.iter().map(|s| Self(*s))
    }

    /// The endpoint's base URL when none is given.
    pub fn default_base_url(&self) -> Option<&'static str> {
        self.0.endpoint().default_base_url
    }

    /// The environment variable the key is read from by default (the first of them).
    pub fn key_variable(&self) -> &'static str {
        self.0.endpoint().key_variable()
    }
}

impl Default for ProtocolName {
    fn default() -> Self {
        Self(&tools::SPEC)
    }
}

impl ProtocolName {
    /// The protocol a planner speaks (`--grounder`): `tools`, whose `planner` option names
    /// elements instead of coordinates.
    pub fn planner() -> Self {
        Self(&tools::SPEC)
    }
}

impl PartialEq for ProtocolName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ProtocolName {}

impl std::hash::Hash for ProtocolName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::fmt::Debug for ProtocolName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for ProtocolName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ProtocolName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::str::FromStr for ProtocolName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let want = s.trim();
        Self::all()
            .find(|p| {
                p.as_str().eq_ignore_ascii_case(want)
                    || p.0.aliases().iter().any(|a| a.eq_ignore_ascii_case(want))
            })
            .ok_or_else(|| {
                format!(
                    "'{s}' is not a protocol: {}",
                    Self::all()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// Why a reply cannot be read at all (the transport retries it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The server sent an error object where the reply should be.
    #[error("the server returned an error: {0}")]
    Server(String),
    /// Not this wire format: a field the format always has is missing or wrong.
    #[error("{0}")]
    Shape(String),
    /// The reply stopped at the output limit before it asked for anything.
    #[error("the reply was cut off at the output limit before it asked for an action")]
    CutOff,
    /// Nothing in it: no text, no call (an API may flag a malformed call this way).
    #[error("the reply is empty ({0})")]
    Empty(String),
}

impl DecodeError {
    pub fn shape(text: impl Into<String>) -> Self {
        Self::Shape(text.into())
    }
}

/// Options of the chosen protocol, as `KEY=VALUE` text: each protocol parses the keys it
/// declares ([`Spec::options`]) into its own typed options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options(BTreeMap<String, String>);

impl Options {
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.insert(key.to_owned(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// A yes/no option (absent: no).
    pub fn flag(&self, key: &str) -> Result<bool, String> {
        match self.get(key).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "no" | "0" | "off") => Ok(false),
            Some("" | "true" | "yes" | "1" | "on") => Ok(true),
            Some(other) => Err(format!("option {key} is yes or no, got '{other}'")),
        }
    }

    /// An option parsed by `parse` (absent: `None`).
    pub fn parsed<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        self.get(key).map(parse).transpose()
    }

    /// `KEY=VALUE` (a bare `KEY` is `KEY=true`).
    pub fn parse_pair(pair: &str) -> Result<(String, String), String> {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("'{pair}' is not KEY=VALUE"));
        }
        Ok((k.to_owned(), v.trim().to_owned()))
    }

    /// Checks the keys against what `protocol` reads: a key no protocol knows is an error
    /// (a typo); one that only another protocol reads is left alone (a config file may
    /// hold options for several models).
    pub fn check(&self, protocol: ProtocolName) -> Result<(), String> {
        for key in self.keys() {
            let known = |s: &&dyn Spec| s.options().iter().any(|o| o.key == key);
            if protocol.0.options().iter().any(|o| o.key == key) {
                continue;
            }
            if !ALL.iter().any(known) {
                let all: Vec<String> = ALL
                    .iter()
                    .flat_map(|s| {
                        s.options()
                            .iter()
                            .map(move |o| format!("{} ({})", o.key, s.name()))
                    })
                    .collect();
                return Err(format!(
                    "'{key}' is not an option of any protocol; the options are: {}",
                    all.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The size screenshots are sent at, for protocols whose model takes any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The screen's own size.
    Native,
    /// 1024x768 (XGA), as Anthropic recommends.
    Xga,
    /// 1280x800 (WXGA).
    Wxga,
    /// The longest side at most this many pixels, aspect ratio kept.
    MaxSide(u32),
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "native" => Ok(Self::Native),
            "xga" => Ok(Self::Xga),
            "wxga" => Ok(Self::Wxga),
            other => other
                .parse::<u32>()
                .ok()
                .filter(|n| (64..=8192).contains(n))
                .map(Self::MaxSide)
                .ok_or_else(|| {
                    format!(
                        "'{s}' is not a target size: native, xga, wxga, or a longest side in pixels"
                    )
                }),
        }
    }
}

impl Target {
    /// The size sent for a screen of `screen` pixels.
    pub fn size(self, screen: (u32, u32)) -> (u32, u32) {
        match self {
            Self::Native => screen,
            Self::Xga => (1024, 768),
            Self::Wxga => (1280, 800),
            Self::MaxSide(max) => {
                let longest = screen.0.max(screen.1);
                if longest <= max {
                    screen
                } else {
                    let f = f64::from(max) / f64::from(longest);
                    (
                        ((f64::from(screen.0) * f).round() as u32).max(1),
                        ((f64::from(screen.1) * f).round() as u32).max(1),
                    )
                }
            }
        }
    }
}

/// What a model's coordinates mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CoordSpace {
    /// Pixels of the image sent (whatever size that is).
    Native,
    /// Pixels of the image after Qwen's `smart_resize` (UI-TARS-1.5, Qwen2.5-VL, OpenCUA):
    /// the image is sent at that size.
    Smart,
    /// 0 to 1000 of the width and height (UI-TARS-1.0/2, Qwen3-VL, Doubao).
    #[serde(rename = "1000")]
    Thousand,
    /// 0 to 999 (GLM-4.5V, OSWorld's Qwen3-VL harness).
    #[serde(rename = "999")]
    NineNineNine,
    /// 0 to 1 (OpenCUA-Qwen2-7B, AgentNet data).
    Unit,
}

impl CoordSpace {
    pub const ALL: [Self; 5] = [
        Self::Native,
        Self::Smart,
        Self::Thousand,
        Self::NineNineNine,
        Self::Unit,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Smart => "smart",
            Self::Thousand => "1000",
            Self::NineNineNine => "999",
            Self::Unit => "unit",
        }
    }

    /// The largest coordinate of a relative space.
    fn relative_max(&self) -> Option<f64> {
        match self {
            Self::Thousand => Some(1000.0),
            Self::NineNineNine => Some(999.0),
            Self::Unit => Some(1.0),
            Self::Native | Self::Smart => None,
        }
    }
}

impl std::fmt::Display for CoordSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CoordSpace {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("'{s}' is not a coordinate space: native, smart, 1000, 999 or unit")
            })
    }
}

/// Qwen's `smart_resize` (height, width): both multiples of `factor`, the pixel count
/// between `min_pixels` and `max_pixels`, the aspect ratio nearly kept. Rounding is
/// Python's (half to even), as the models were trained with: `round(36.5) == 36`, where
/// JavaScript's `Math.round` gives 37 (a known off-by-a-row bug, UI-TARS-desktop#1730).
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> (u32, u32) {
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    let round_by = |n: f64| (n / f).round_ties_even() * f;
    let floor_by = |n: f64| (n / f).floor() * f;
    let ceil_by = |n: f64| (n / f).ceil() * f;
    let mut h_bar = f.max(round_by(h));
    let mut w_bar = f.max(round_by(w));
    if h_bar * w_bar > max_pixels as f64 {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = f.max(floor_by(h / beta));
        w_bar = f.max(floor_by(w / beta));
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = ceil_by(h * beta);
        w_bar = ceil_by(w * beta);
    }
    (h_bar as u32, w_bar as u32)
}

/// How the screen maps to what the model sees and says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Geometry {
    pub screen: (u32, u32),
    /// The size of the screenshot sent.
    pub sent: (u32, u32),
    pub space: CoordSpace,
    /// Maps points outside the space too, neither refused nor clamped: only to see where a
    /// model pointed (calibration), never to act.
    #[serde(skip)]
    pub lenient: bool,
}

impl Geometry {
    /// Pixels of an image of `sent` size (`Native`, or `Smart` with `sent` its result).
    pub fn pixels(screen: (u32, u32), sent: (u32, u32), space: CoordSpace) -> Self {
        Self {
            screen,
            sent,
            space,
            lenient: false,
        }
    }

    /// The largest numbers of the model's space (the image's size for pixels).
    pub fn model_range(&self) -> (f64, f64) {
        match self.space.relative_max() {
            Some(m) => (m, m),
            None => (f64::from(self.sent.0), f64::from(self.sent.1)),
        }
    }

    /// The model's coordinate space, in words, for prompts and errors.
    pub fn describe(&self) -> String {
        match self.space.relative_max() {
            Some(1.0) => "fractions 0 to 1 of the width and height".into(),
            Some(m) => format!("0 to {m} of the width and height"),
            None => format!("pixels of the {}x{} screenshot", self.sent.0, self.sent.1),
        }
    }

    /// A point the model gave, in screen pixels. The arithmetic: `x_screen = round(x *
    /// W / w)` for pixels of a `w`-wide image, `round(x * W / max)` for a relative space,
    /// rounding half up, the result at most `W - 1`. A point outside the model's space is
    /// refused, never clamped.
    pub fn to_screen(&self, x: f64, y: f64) -> Result<Point, InvalidAction> {
        let (sw, sh) = (f64::from(self.screen.0), f64::from(self.screen.1));
        let (mx, my) = self.model_range();
        if self.lenient && x.is_finite() && y.is_finite() {
            let map = |v: f64, from: f64, to: f64| (v * to / from + 0.5).floor();
            return Ok(Point::new(
                map(x, mx, sw).clamp(-1e9, 1e9) as i32,
                map(y, my, sh).clamp(-1e9, 1e9) as i32,
            ));
        }
        let inside = |v: f64, max: f64| {
            v.is_finite()
                && v >= 0.0
                && if self.space.relative_max().is_some() {
                    v <= max
                } else {
                    v < max
                }
        };
        if !inside(x, mx) || !inside(y, my) {
            return Err(InvalidAction::new(format!(
                "coordinate ({x}, {y}) is outside your coordinate space ({})",
                self.describe()
            )));
        }
        let map = |v: f64, from: f64, to: f64| ((v * to / from + 0.5).floor()).min(to - 1.0);
        Ok(Point::new(map(x, mx, sw) as i32, map(y, my, sh) as i32))
    }

    /// A screen point in the model's space (for `cursor_position` answers).
    pub fn to_model(&self, p: Point) -> (f64, f64) {
        let (sw, sh) = (f64::from(self.screen.0), f64::from(self.screen.1));
        let (mx, my) = self.model_range();
        let round = |v: f64| {
            if self.space == CoordSpace::Unit {
                (v * 1000.0).round() / 1000.0
            } else {
                v.round()
            }
        };
        (
            round(f64::from(p.x) * mx / sw),
            round(f64::from(p.y) * my / sh),
        )
    }

    /// An action the model gave in its space, in screen pixels (its integer points are in
    /// the model's space).
    pub fn action_to_screen(&self, action: Action) -> Result<Action, InvalidAction> {
        if self.is_identity() {
            return Ok(action);
        }
        action.try_map_points(|p| self.to_screen(f64::from(p.x), f64::from(p.y)))
    }

    pub fn is_identity(&self) -> bool {
        self.screen == self.sent && self.space == CoordSpace::Native && !self.lenient
    }

    /// The PNG to send for a screen PNG: the same bytes, or resized to `sent` (bilinear
    /// convolution, whose support widens with the scale so a downscale does not alias; SIMD
    /// through fast_image_resize: the image crate's resize took 90 ms a step here).
    pub fn image_for_model(&self, png: &[u8]) -> Result<Vec<u8>, String> {
        if self.screen == self.sent {
            return Ok(png.to_vec());
        }
        let img = image::load_from_memory_with_format(png, image::ImageFormat::Png)
            .map_err(|e| format!("decoding a screenshot: {e}"))?
            .to_rgb8();
        self.image_from_rgb(img.width(), img.height(), img.as_raw())
    }

    /// The PNG to send for the screen's packed RGB8 pixels, resized to `sent`.
    pub fn image_from_rgb(&self, width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, String> {
        let resized;
        let pixels = if (width, height) == self.sent {
            rgb
        } else {
            resized = resize_rgb(width, height, rgb, self.sent)?;
            &resized
        };
        crate::desktop::encode_png(self.sent.0, self.sent.1, pixels)
            .map_err(|e| format!("encoding a screenshot: {e}"))
    }
}

/// Resizes packed RGB pixels to `to`.
pub fn resize_rgb(width: u32, height: u32, rgb: &[u8], to: (u32, u32)) -> Result<Vec<u8>, String> {
    use fast_image_resize as fir;
    let src = fir::images::ImageRef::new(width, height, rgb, fir::PixelType::U8x3)
        .map_err(|e| format!("resizing a screenshot: {e}"))?;
    let mut dst = fir::images::Image::new(to.0, to.1, fir::PixelType::U8x3);
    fir::Resizer::new()
        .resize(
            &src,
            &mut dst,
            &fir::ResizeOptions::new()
                .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear)),
        )
        .map_err(|e| format!("resizing a screenshot: {e}"))?;
    Ok(dst.into_vec())
}

/// A screenshot in the conversation: its frame id (the SHA-256 of the screen PNG), the
/// PNG as the model sees it, and the text that goes with the screen (`--observe`: the
/// accessibility tree's marker, expanded when a request is sent). Wherever a protocol puts
/// the screen, it puts that text beside it ([`Shot::tree_text`]); without pixels
/// ([`Images::without_pixels`]) the text stands for the screen.
#[derive(Debug, Clone, Default)]
pub struct Shot {
    pub sha256: String,
    pub png: Arc<Vec<u8>>,
    pub tree: Option<String>,
}

impl Shot {
    /// The text that goes beside this screen, if any.
    pub fn tree_text(&self) -> Option<&str> {
        self.tree.as_deref()
    }

    /// A stand-in screenshot for protocol tests: frame id `name`, its bytes as the "PNG".
    #[cfg(test)]
    pub fn named(name: &str) -> Self {
        Self {
            sha256: name.into(),
            png: Arc::new(name.as_bytes().to_vec()),
            tree: None,
        }
    }
}

/// One action of a reply: the protocol's id for its result, the input as the model wrote
/// it (recorded, and shown when it is unusable), and the action in screen pixels or why
/// it cannot be done.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    pub id: String,
    pub input: Value,
    #[serde(serialize_with = "ser_action")]
    pub action: Result<Action, InvalidAction>,
}

fn ser_action<S: serde::Serializer>(
    a: &Result<Action, InvalidAction>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match a {
        Ok(action) => action.serialize(s),
        Err(e) => serde_json::json!({"error": e.to_string()}).serialize(s),
    }
}

/// A safety check the model's provider raised about a turn (OpenAI's
/// `pending_safety_checks`, Gemini's `safety_decision`): the turn's actions wait for a
/// person's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SafetyCheck {
    pub id: String,
    pub code: String,
    pub message: String,
    /// The provider asks a person to confirm (Gemini's `require_confirmation`): a run
    /// where nobody can be asked ends as `needs_user` rather than `stopped`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm: bool,
}

/// What a reply says, whatever the wire format.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Decision {
    /// Reasoning, thinking, `Thought:` text.
    pub thought: Option<String>,
    /// Visible text; with no calls, the final answer.
    pub text: Option<String>,
    pub calls: Vec<Call>,
    pub usage: Usage,
    /// Checks to acknowledge before the calls may run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub safety: Vec<SafetyCheck>,
    /// Elements the calls name in words, for the grounder to find (a planner's reply).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grounding: Vec<grounding::Ground>,
}

/// A short name for what a model asked for, from its raw input (an Anthropic-style object,
/// a line of text, a code fragment), for listings of unusable actions.
pub fn describe_input(input: &Value) -> String {
    let text = match input {
        Value::Object(o) => o
            .get("action")
            .or_else(|| o.get("type"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| input.to_string()),
        Value::String(s) => s.clone(),
        Value::Null => "?".to_owned(),
        other => other.to_string(),
    };
    crate::text::one_line(&text, 41)
}

/// What became of one call, for the next request.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub id: String,
    /// The text for the model (`ok`, a cursor position, an error).
    pub text: String,
    pub is_error: bool,
    /// An image the action produced (`zoom`), as the model sees it.
    pub image: Option<Shot>,
}

impl CallResult {
    /// The result of an action that went through with nothing to report.
    pub fn ok(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            text: "ok".into(),
            is_error: false,
            image: None,
        }
    }
}

impl Decision {
    /// Each call's result as [`CallResult::ok`] (the bench and the protocol tests).
    pub fn answered_ok(&self) -> Vec<CallResult> {
        self.calls.iter().map(|c| CallResult::ok(&c.id)).collect()
    }
}

/// One wire format's conversation (see the module docs). Object-safe: the loop holds a
/// `Box<dyn Protocol>`.
pub trait Protocol: Send + Sync {
    fn name(&self) -> ProtocolName;

    fn geometry(&self) -> Geometry;

    /// The task and the first screenshot.
    fn begin(&mut self, instruction: &str, shot: &Shot);

    /// A message from the person watching, with the next request.
    fn user_message(&mut self, text: &str);

    /// The next request, and its body with frame references instead of pixels (for the
    /// recording).
    fn request(&self) -> (ModelRequest, Value);

    /// What a reply says; `Err` when it cannot be read at all (the transport retries).
    fn decode(&self, raw: &Value) -> Result<Decision, DecodeError>;

    /// The model's turn, as the conversation keeps it.
    fn assistant(&mut self, raw: &Value, decision: &Decision);

    /// The results of the turn's calls, in order, and the screen after them (`note` says
    /// what it is).
    fn results(&mut self, results: &[CallResult], shot: &Shot, note: &str);

    /// Safety checks a person acknowledged: sent with the next results.
    fn acknowledge(&mut self, _checks: &[SafetyCheck]) {}

    /// Whether a turn's calls stop at the first that fails (Anthropic's computer
    /// toolset): every later one is answered [`NOT_EXECUTED`] without being done.
    fn stops_at_first_failure(&self) -> bool {
        false
    }

    /// Input tokens every request carries whatever the conversation (a tool definition the
    /// API adds): the least a call costs.
    fn fixed_input_tokens(&self) -> u64 {
        0
    }

    /// The size a `zoom` of `crop` pixels is shown to the model at (the crop itself, or
    /// scaled up to fill the image the model sees).
    fn zoom_size(&self, crop: (u32, u32)) -> (u32, u32) {
        crop
    }
}

/// The result of a call not done because an earlier one of its turn failed, in the words
/// Anthropic's computer toolset expects.
pub const NOT_EXECUTED: &str = "Not executed: an earlier computer action in this turn failed.";

/// Images a conversation refers to by frame id, with the most recent sent as pixels and
/// older ones replaced by a note (so a request does not grow without bound). By default the
/// last `keep` are sent; with `prune_every` set, images pile up to `keep + prune_every` and
/// are then cut back to the last `keep` at once, so the request's prefix stays the same for
/// many turns and a provider's prompt cache keeps hitting (Anthropic's advice for its
/// computer toolset: keep 3, prune every 25).
#[derive(Debug, Clone, Default)]
pub struct Images {
    /// Recent images by frame id, base64-encoded once (each request sends several).
    data: HashMap<String, Arc<str>>,
    /// Frame ids in the order they entered the conversation.
    order: Vec<String>,
    keep: usize,
    prune_every: usize,
    /// `order[cut..]` are sent as pixels.
    cut: usize,
    /// No image is sent at all (`--observe a11y`): the text beside each screen stands for
    /// it.
    text_only: bool,
}

/// The text that stands in for an older screenshot.
pub const OMITTED: &str = "[an earlier screenshot, omitted]";

impl Images {
    pub fn new(keep: usize) -> Self {
        Self {
            keep: keep.max(1),
            ..Self::default()
        }
    }

    /// Images kept in batches (see the type's docs).
    pub fn batched(keep: usize, prune_every: usize) -> Self {
        Self {
            prune_every,
            ..Self::new(keep)
        }
    }

    /// A conversation that shows the model no pixels (`--observe a11y`): every image is
    /// left out, and the text beside a screen ([`Shot::tree`]) is the observation.
    pub fn without_pixels(self) -> Self {
        Self {
            text_only: true,
            ..self
        }
    }

    /// Whether images are sent at all (see [`Self::without_pixels`]).
    pub fn sends_pixels(&self) -> bool {
        !self.text_only
    }

    /// Adds a screenshot; returns its reference (`sha256:<hex>`).
    pub fn add(&mut self, shot: &Shot) -> String {
        if self.text_only {
            return format!("sha256:{}", shot.sha256);
        }
        if !self.data.contains_key(&shot.sha256) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(shot.png.as_slice());
            self.data.insert(shot.sha256.clone(), b64.into());
        }
        self.order.push(shot.sha256.clone());
        if self.order.len() - self.cut > self.keep + self.prune_every {
            self.cut = self.order.len() - self.keep;
        }
        // Forget pixels no request will send again.
        let recent: std::collections::HashSet<&String> = self.order[self.cut..].iter().collect();
        self.data.retain(|sha, _| recent.contains(sha));
        format!("sha256:{}", shot.sha256)
    }

    /// Whether the reference is one of the images still sent.
    pub fn is_recent(&self, reference: &str) -> bool {
        reference.strip_prefix("sha256:").is_some_and(|sha| {
            self.data.contains_key(sha) && self.order[self.cut..].iter().any(|s| s == sha)
        })
    }

    /// The PNG of a recent reference, base64, as a marker of [`Self::blobs`].
    pub fn base64(&self, reference: &str) -> Option<String> {
        let sha = reference.strip_prefix("sha256:")?;
        self.data
            .contains_key(sha)
            .then(|| format!("@@selfagent-blob:b64:{sha}@@"))
    }

    /// The PNG of a recent reference as a data URL, as a marker of [`Self::blobs`].
    pub fn data_url(&self, reference: &str) -> Option<String> {
        let sha = reference.strip_prefix("sha256:")?;
        self.data
            .contains_key(sha)
            .then(|| format!("@@selfagent-blob:url:{sha}@@"))
    }

    /// What the markers of [`Self::base64`] and [`Self::data_url`] stand for, for the
    /// request (spliced in when it is serialized).
    pub fn blobs(&self) -> Blobs {
        let mut blobs = Blobs::default();
        for (sha, b64) in &self.data {
            blobs.add(&format!("b64:{sha}"), "", b64.clone());
            blobs.add(&format!("url:{sha}"), "data:image/png;base64,", b64.clone());
        }
        blobs
    }
}

/// The system prompt template `name` from `dir` when given and present, else the embedded
/// one, with `{width}`, `{height}`, `{date}` and `{coordinates}` filled in.
pub fn prompt(
    dir: Option<&std::path::Path>,
    name: &str,
    embedded: &str,
    geometry: &Geometry,
) -> std::io::Result<String> {
    let template = match dir.map(|d| d.join(name)) {
        Some(path) if path.exists() => std::fs::read_to_string(path)?,
        _ => embedded.to_owned(),
    };
    Ok(template
        .replace("{width}", &geometry.sent.0.to_string())
        .replace("{height}", &geometry.sent.1.to_string())
        .replace("{coordinates}", &geometry.describe())
        .replace("{date}", &crate::time::date(crate::time::now_ms())))
}

/// What a system prompt gains when the model is shown no screenshots (`--observe a11y`),
/// from `a11y.md` in the prompts folder or the embedded one.
pub fn without_pixels_note(
    dir: Option<&std::path::Path>,
    geometry: &Geometry,
) -> std::io::Result<String> {
    prompt(
        dir,
        "a11y.md",
        include_str!("../../../prompts/a11y.md"),
        geometry,
    )
}

/// Settings of a protocol: how to talk to the model, beyond the endpoint.
#[derive(Debug, Clone)]
pub struct ProtocolConfig {
    pub name: ProtocolName,
    /// The coordinate space (from the model id, or `--coords`).
    pub space: CoordSpace,
    /// For protocols whose model takes any size: the size sent.
    pub target: Target,
    /// Screenshots kept as images in each request.
    pub keep_images: usize,
    /// Offer launch, open and exec to the model.
    pub allow_setup_actions: bool,
    /// A directory overriding the embedded prompts.
    pub prompts: Option<std::path::PathBuf>,
    /// The model id (some protocols choose their tool by it).
    pub model: String,
    /// The protocol's own options ([`Spec::options`]).
    pub options: Options,
    /// What the model is shown of the screen (`--observe`).
    pub observe: Observe,
}

/// What the model is shown of the screen (`--observe`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Observe {
    /// The screenshot.
    #[default]
    Screenshot,
    /// The screenshot and the accessibility tree beside it.
    ScreenshotA11y,
    /// The accessibility tree alone, no pixels (protocols whose [`Spec::observes_text`]).
    A11y,
}

impl Observe {
    /// Screenshots are sent.
    pub fn pixels(self) -> bool {
        self != Self::A11y
    }

    /// The accessibility tree is shown.
    pub fn tree(self) -> bool {
        self != Self::Screenshot
    }
}

impl std::str::FromStr for Observe {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "screenshot" => Ok(Self::Screenshot),
            "screenshot+a11y" => Ok(Self::ScreenshotA11y),
            "a11y" => Ok(Self::A11y),
            _ => Err("expected screenshot, screenshot+a11y or a11y".into()),
        }
    }
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self {
            name: ProtocolName::default(),
            space: CoordSpace::Native,
            target: Target::Native,
            keep_images: 3,
            allow_setup_actions: false,
            prompts: None,
            model: String::new(),
            options: Options::default(),
            observe: Observe::default(),
        }
    }
}

impl ProtocolConfig {
    /// The settings of `protocol` for `model`, in the space its model id implies.
    pub fn for_model(protocol: ProtocolName, model: &str) -> Self {
        let id = ModelId::new(model);
        let spec = protocol.spec();
        Self {
            name: protocol,
            space: spec.detect(&id).unwrap_or_else(|| spec.default_space(&id)),
            model: model.to_owned(),
            ..Self::default()
        }
    }
}

/// A one-shot question about screenshots (a task's judge), in the wire format of
/// `cfg.name`.
pub fn question(
    cfg: &ProtocolConfig,
    system: &str,
    text: &str,
    pngs: &[Arc<Vec<u8>>],
) -> ModelRequest {
    cfg.name.spec().question(cfg, system, text, pngs)
}

/// The text of a reply to [`question`].
pub fn answer_text(protocol: ProtocolName, raw: &Value) -> Result<String, DecodeError> {
    protocol.spec().answer_text(raw)
}

/// The protocol and coordinate space for a model id: the first protocol of [`ALL`] that
/// claims it (`tools`, in pixels, when none does). Each protocol's `detects` says which
/// ids it claims.
pub fn detect(model: &str) -> (ProtocolName, CoordSpace) {
    let id = ModelId::new(model);
    ALL.iter()
        .find_map(|s| s.detect(&id).map(|space| (ProtocolName(*s), space)))
        .unwrap_or((ProtocolName::default(), CoordSpace::Native))
}

/// The geometry a protocol uses on a `screen`-sized desktop: the size the model really sees
/// and its coordinate space.
pub fn geometry(cfg: &ProtocolConfig, screen: (u32, u32)) -> Geometry {
    Geometry::pixels(screen, cfg.name.spec().sent_size(cfg, screen), cfg.space)
}

/// The size of a `smart_resize`d `screen` (width, height).
pub fn smart_size(screen: (u32, u32), factor: u32, min: u64, max: u64) -> (u32, u32) {
    let (h, w) = smart_resize(screen.1, screen.0, factor, min, max);
    (w, h)
}

/// Starts a conversation in the configured protocol for a `screen`-sized desktop.
pub fn create(cfg: &ProtocolConfig, screen: (u32, u32)) -> Result<Box<dyn Protocol>, String> {
    if !cfg.observe.pixels() && !cfg.name.spec().observes_text() {
        return Err(without_screenshots(cfg.name));
    }
    cfg.name.spec().create(cfg, geometry(cfg, screen))
}

/// Why `protocol` cannot run with `--observe a11y`.
pub fn without_screenshots(protocol: ProtocolName) -> String {
    let takes: Vec<&str> = ALL
        .iter()
        .filter(|s| s.observes_text())
        .map(|s| s.name())
        .collect();
    format!(
        "--observe a11y: the {protocol} protocol's model acts on what it sees in the screenshot \
         (or its API takes only an image where the screen goes); the tree alone is for {}",
        takes.join(", ")
    )
}

/// What [`create_lenient`] multiplies the model's numbers by.
pub const LENIENT_SCALE: f64 = 1000.0;

/// A protocol that decodes the points of a reply as the numbers the model wrote, times
/// [`LENIENT_SCALE`] (exact to three decimals), also those outside its space
/// ([`Geometry::lenient`]): to see where a model pointed, never to act.
pub fn create_lenient(
    cfg: &ProtocolConfig,
    screen: (u32, u32),
) -> Result<Box<dyn Protocol>, String> {
    let g = geometry(cfg, screen);
    let (mx, my) = g.model_range();
    cfg.name.spec().create(
        cfg,
        Geometry {
            screen: ((mx * LENIENT_SCALE) as u32, (my * LENIENT_SCALE) as u32),
            lenient: true,
            ..g
        },
    )
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn smart_resize_rounds_as_python_does() {
        // 1022 / 28 = 36.5: Python's round gives 36 (1008), JavaScript's 37 (1036).
        assert_eq!(smart_resize(1022, 1522, 28, 3136, 12_845_056).0, 1008);
        assert_eq!(
            smart_resize(800, 1280, 28, 100 * 28 * 28, 16384 * 28 * 28),
            (812, 1288)
        );
        assert_eq!(smart_resize(1080, 1920, 28, 3136, 12_845_056), (1092, 1932));
        assert_eq!(smart_resize(800, 1280, 32, 3136, 12_845_056), (800, 1280));
        // Above the pixel budget: scaled down, still multiples of the factor.
        let (h, w) = smart_resize(4320, 7680, 28, 3136, 1_003_520);
        assert!(h % 28 == 0 && w % 28 == 0 && u64::from(h) * u64::from(w) <= 1_003_520);
    }

    #[test]
    fn coordinates_map_back_and_refuse_what_is_outside() {
        let g = Geometry::pixels((1280, 800), (1024, 768), CoordSpace::Native);
        assert_eq!(g.to_screen(512.0, 384.0).unwrap(), Point::new(640, 400));
        assert_eq!(g.to_screen(1023.0, 767.0).unwrap(), Point::new(1279, 799));
        assert!(g.to_screen(1024.0, 10.0).is_err(), "x == width is outside");
        assert!(g.to_screen(-1.0, 10.0).is_err());
        assert_eq!(g.to_model(Point::new(640, 400)), (512.0, 384.0));

        let k = Geometry::pixels((1280, 800), (1280, 800), CoordSpace::Thousand);
        assert_eq!(k.to_screen(500.0, 500.0).unwrap(), Point::new(640, 400));
        assert_eq!(k.to_screen(1000.0, 1000.0).unwrap(), Point::new(1279, 799));
        assert!(k.to_screen(1001.0, 3.0).is_err());
        let u = Geometry::pixels((1920, 1080), (1920, 1080), CoordSpace::Unit);
        assert_eq!(u.to_screen(0.5, 0.5).unwrap(), Point::new(960, 540));
        assert!(u.to_screen(1.2, 0.5).is_err());
        // Half-pixel points round up, the same way every time.
        let s = Geometry::pixels((1280, 800), (1288, 812), CoordSpace::Smart);
        assert_eq!(s.to_screen(644.0, 406.0).unwrap(), Point::new(640, 400));
    }

    #[test]
    fn names_parse() {
        assert_eq!("TOOLS".parse::<ProtocolName>(), Ok(ProtocolName::default()));
        assert_eq!(
            "claude".parse::<ProtocolName>().map(|p| p.as_str()),
            Ok("anthropic")
        );
        assert!("smoke-signals".parse::<ProtocolName>().is_err());
        assert_eq!("1000".parse::<CoordSpace>(), Ok(CoordSpace::Thousand));
        assert_eq!("unit".parse::<CoordSpace>(), Ok(CoordSpace::Unit));
        assert_eq!("xga".parse::<Target>(), Ok(Target::Xga));
        assert_eq!("1024".parse::<Target>(), Ok(Target::MaxSide(1024)));
        assert!("huge".parse::<Target>().is_err());
        assert_eq!(Target::MaxSide(1280).size((1920, 1080)), (1280, 720));
    }

    #[test]
    fn only_recent_images_keep_their_pixels() {
        let mut im = Images::new(2);
        let shot = |s: &str| Shot::named(s);
        let a = im.add(&shot("a"));
        let b = im.add(&shot("b"));
        let c = im.add(&shot("c"));
        assert!(!im.is_recent(&a) && im.is_recent(&b) && im.is_recent(&c));
        assert_eq!(im.base64(&a), None);
        let body = serde_json::json!({"url": im.data_url(&c).unwrap()});
        let sent: Value = serde_json::from_slice(&im.blobs().serialize(&body)).unwrap();
        assert_eq!(sent["url"], "data:image/png;base64,Yw==");
    }

    /// Every protocol puts the text that goes with a screen (the accessibility tree's
    /// marker) beside it wherever the screen goes — the first turn, a turn's results, a
    /// hand-back — and only the protocols that observe text go without pixels, sending no
    /// image at all.
    #[test]
    fn every_protocol_shows_the_tree_beside_each_screen() {
        let shot = |s: &str| Shot {
            tree: Some(format!("TREE-{s}")),
            ..Shot::named(s)
        };
        for spec in ALL {
            let name = ProtocolName(*spec);
            for observe in [Observe::ScreenshotA11y, Observe::A11y] {
                let cfg = ProtocolConfig {
                    observe,
                    ..ProtocolConfig::for_model(name, spec.example().model)
                };
                let made = create(&cfg, (1280, 800));
                if !observe.pixels() && !spec.observes_text() {
                    let e = made.err().unwrap_or_else(|| panic!("{name} took a11y"));
                    assert!(
                        e.contains("--observe a11y") && e.contains("pyautogui"),
                        "{e}"
                    );
                    continue;
                }
                let mut p = made.unwrap_or_else(|e| panic!("{name}: {e}"));
                let sent = |p: &dyn Protocol, tree: &str| {
                    let (request, recorded) = p.request();
                    let body = request.body.to_string();
                    assert!(
                        body.contains(tree),
                        "{name} {observe:?}: no {tree} in {body}"
                    );
                    let recorded = recorded.to_string();
                    assert_eq!(
                        recorded.contains("sha256:"),
                        observe.pixels(),
                        "{name} {observe:?}: {recorded}"
                    );
                };
                p.begin("do it", &shot("1"));
                sent(p.as_ref(), "TREE-1");
                let raw = spec.example().reply;
                let decision = p.decode(&raw).unwrap();
                p.assistant(&raw, &decision);
                p.results(
                    &decision.answered_ok(),
                    &shot("2"),
                    "The screen after your actions:",
                );
                sent(p.as_ref(), "TREE-2");
                p.results(&[], &shot("3"), "A person handed the desktop back.");
                sent(p.as_ref(), "TREE-3");
            }
        }
    }
}
