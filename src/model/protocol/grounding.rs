//! Grounding: a small model that finds an element on a screenshot, for a planner that names
//! elements in words (`--grounder MODEL`). The planner speaks the `tools` dialect with an
//! `element` description where pointer actions take coordinates (the `planner` option of
//! `tools`); each such action becomes a [`Ground`] of its [`super::Decision`], and the loop
//! asks the grounder, in the grounder's own prompt and coordinate space, where that element
//! is, then acts there. This is the split of Open Computer Use, the design selfagent grew
//! from: any chat model that reads images (or a strong text model) plans, and a specialised
//! grounder (OS-Atlas, UGround, UI-TARS, GTA1, Holo) does the pointing.
//!
//! | dialect   | answer                                              | coordinates              |
//! |-----------|-----------------------------------------------------|--------------------------|
//! | `osatlas` | `<\|box_start\|>(x1,y1),(x2,y2)<\|box_end\|>`: the box's centre | 0-1000          |
//! | `point`   | `(x,y)`, `click(start_box='(x,y)')`, `[x, y]`: the first two numbers | per model: 1000 (UGround, UI-TARS-1.0), smart (UI-TARS-1.5, GTA1) |
//! | `holo`    | `{"action": "click_absolute", "x": …, "y": …}`      | smart-resize pixels      |
//!
//! A grounder's answer that names no point, or a point outside its space, is an unusable
//! action for the planner to hear about, never a guess.

use super::{CoordSpace, Geometry, ModelId, Spec, smart_size};
use crate::action::Point;
use crate::model::{Auth, ModelRequest};
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

/// An element a planner's call names, to be found by the grounder: point `point` of call
/// `call`'s action (0 for a click; 0 and 1 for a drag's start and end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ground {
    pub call: usize,
    pub point: usize,
    pub element: String,
}

/// A grounding model's prompt and answer format.
pub trait Dialect: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// The coordinate space when this dialect is the model's, `None` when it is not.
    fn detect(&self, model: &ModelId) -> Option<CoordSpace>;

    /// The space when the dialect is chosen by name for a model it does not claim.
    fn default_space(&self) -> CoordSpace;

    /// The question for `element`, in words the model was trained on.
    fn prompt(&self, element: &str, geometry: &Geometry) -> String;

    /// The point an answer gives, in the model's space (the numbers as written).
    fn point(&self, text: &str) -> Result<(f64, f64), String>;
}

/// OS-Atlas: a box on 0-1000, its centre is the point.
pub struct OsAtlas;

impl Dialect for OsAtlas {
    fn name(&self) -> &'static str {
        "osatlas"
    }

    fn detect(&self, m: &ModelId) -> Option<CoordSpace> {
        m.has_any(&["os-atlas", "os_atlas", "osatlas"])
            .then_some(CoordSpace::Thousand)
    }

    fn default_space(&self) -> CoordSpace {
        CoordSpace::Thousand
    }

    fn prompt(&self, element: &str, _g: &Geometry) -> String {
        format!(
            "In this UI screenshot, what is the position of the element corresponding to the command \"{element}\" (with bbox)?"
        )
    }

    fn point(&self, text: &str) -> Result<(f64, f64), String> {
        let inner = match (text.find("<|box_start|>"), text.find("<|box_end|>")) {
            (Some(a), Some(b)) if b > a => &text[a + "<|box_start|>".len()..b],
            _ => text,
        };
        match numbers(inner).as_slice() {
            [x1, y1, x2, y2, ..] => Ok(((x1 + x2) / 2.0, (y1 + y2) / 2.0)),
            [x, y] => Ok((*x, *y)),
            _ => Err(format!(
                "no box (x1,y1),(x2,y2) in the answer: {}",
                short(text)
            )),
        }
    }
}

/// A point as text: UGround's `(x, y)`, UI-TARS's `click(start_box='(x,y)')`, GTA1's
/// `(x, y)`: the first two numbers.
pub struct PointText;

impl Dialect for PointText {
    fn name(&self) -> &'static str {
        "point"
    }

    fn detect(&self, m: &ModelId) -> Option<CoordSpace> {
        if m.has("uground") {
            Some(CoordSpace::Thousand)
        } else if m.has("gta1") {
            Some(CoordSpace::Smart)
        } else if m.has_any(&["ui-tars", "uitars", "ui_tars"]) {
            super::uitars::SPEC.detect(m)
        } else {
            None
        }
    }

    fn default_space(&self) -> CoordSpace {
        CoordSpace::Thousand
    }

    fn prompt(&self, element: &str, g: &Geometry) -> String {
        format!(
            "Your task is to help the user identify the precise coordinates (x, y) of a specific area/element/object on the screen based on a description.\n\
             - Your response should aim to point to the center or a representative point within the described area/element/object as accurately as possible.\n\
             - The coordinates are {}.\n\
             - Answer with the point alone, as (x, y).\n\n\
             Description: {element}\n\nAnswer:",
            g.describe()
        )
    }

    fn point(&self, text: &str) -> Result<(f64, f64), String> {
        match numbers(text).as_slice() {
            [x, y, ..] => Ok((*x, *y)),
            _ => Err(format!("no point (x, y) in the answer: {}", short(text))),
        }
    }
}

/// Holo (H Company): a JSON click in pixels of the smart-resized image.
pub struct Holo;

impl Dialect for Holo {
    fn name(&self) -> &'static str {
        "holo"
    }

    fn detect(&self, m: &ModelId) -> Option<CoordSpace> {
        m.has("holo").then_some(CoordSpace::Smart)
    }

    fn default_space(&self) -> CoordSpace {
        CoordSpace::Smart
    }

    fn prompt(&self, element: &str, g: &Geometry) -> String {
        format!(
            "Localize an element on the GUI image according to the provided target and output a click position.\n\
             * You must output a valid JSON following the format: {{\"action\": \"click_absolute\", \"x\": <int>, \"y\": <int>}}\n\
             * The image is {}x{} pixels.\n\
             Your target is: {element}",
            g.sent.0, g.sent.1
        )
    }

    fn point(&self, text: &str) -> Result<(f64, f64), String> {
        let start = text.find('{');
        let end = text.rfind('}');
        let v: Value = match (start, end) {
            (Some(a), Some(b)) if b > a => serde_json::from_str(&text[a..=b])
                .map_err(|e| format!("the answer's JSON does not parse ({e}): {}", short(text)))?,
            _ => return Err(format!("no JSON click in the answer: {}", short(text))),
        };
        match (v["x"].as_f64(), v["y"].as_f64()) {
            (Some(x), Some(y)) => Ok((x, y)),
            _ => Err(format!("the click has no numbers x and y: {}", short(text))),
        }
    }
}

/// The grounding dialects, in detection order (`point` claims what the others do not).
pub static DIALECTS: &[&dyn Dialect] = &[&OsAtlas, &Holo, &PointText];

/// A dialect by name.
pub fn by_name(name: &str) -> Result<&'static dyn Dialect, String> {
    DIALECTS
        .iter()
        .copied()
        .find(|d| d.name().eq_ignore_ascii_case(name.trim()))
        .ok_or_else(|| {
            format!(
                "'{name}' is not a grounding dialect: {}",
                DIALECTS
                    .iter()
                    .map(|d| d.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The dialect and space for a grounding model id (`point` on 0-1000 when none claims it).
pub fn detect(model: &str) -> (&'static dyn Dialect, CoordSpace) {
    let id = ModelId::new(model);
    DIALECTS
        .iter()
        .find_map(|d| d.detect(&id).map(|s| (*d, s)))
        .unwrap_or((&PointText, CoordSpace::Thousand))
}

/// The geometry a grounder sees a `screen`-sized desktop in: the smart-resized image for
/// the `smart` space, else the screen's own size.
pub fn geometry(space: CoordSpace, screen: (u32, u32)) -> Geometry {
    let sent = match space {
        CoordSpace::Smart => smart_size(screen, 28, 3136, 12_845_056),
        _ => screen,
    };
    Geometry::pixels(screen, sent, space)
}

/// The grounding question: a chat completion with the dialect's prompt and the screenshot
/// (`png`, already at `geometry.sent`).
pub fn request(dialect: &dyn Dialect, element: &str, png: &[u8], g: &Geometry) -> ModelRequest {
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    ModelRequest {
        path: "/chat/completions".into(),
        body: json!({
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}},
                {"type": "text", "text": dialect.prompt(element, g)},
            ]}],
            "stream": false,
            "temperature": 0,
        }),
        headers: Vec::new(),
        auth: Auth::Bearer,
        blobs: Default::default(),
        model_field: Default::default(),
    }
}

/// The screen point an answer gives: the dialect's point, mapped from its space; a point
/// outside the space is refused.
pub fn point(dialect: &dyn Dialect, raw: &Value, g: &Geometry) -> Result<Point, String> {
    let text = super::chat::answer_text(raw).map_err(|e| e.to_string())?;
    let (x, y) = dialect.point(&text)?;
    g.to_screen(x, y).map_err(|e| e.to_string())
}

/// The numbers in a text, as written (signs kept, `<|…|>` tokens skipped).
fn numbers(s: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut rest = s;
    let mut cleaned = String::new();
    while let Some(a) = rest.find("<|") {
        cleaned.push_str(&rest[..a]);
        cleaned.push(' ');
        rest = rest[a..].find("|>").map_or("", |b| &rest[a + b + 2..]);
    }
    cleaned.push_str(rest);
    for c in cleaned.chars() {
        if c.is_ascii_digit() || c == '.' || (c == '-' && cur.is_empty()) {
            cur.push(c);
        } else if !cur.is_empty() {
            out.extend(cur.parse::<f64>().ok());
            cur.clear();
        }
    }
    out.extend(cur.parse::<f64>().ok());
    out
}

fn short(text: &str) -> String {
    crate::text::one_line(text, 120)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    use crate::model::protocol::chat::text_reply as chat;

    #[test]
    fn each_dialect_finds_its_point() {
        let g = geometry(CoordSpace::Thousand, (1280, 800));
        assert_eq!(
            point(
                &OsAtlas,
                &chat(
                    "<|object_ref_start|>Save<|object_ref_end|><|box_start|>(480,480),(520,520)<|box_end|>"
                ),
                &g
            ),
            Ok(Point::new(640, 400))
        );
        assert_eq!(
            point(&PointText, &chat("(250, 500)"), &g),
            Ok(Point::new(320, 400))
        );
        assert_eq!(
            point(
                &PointText,
                &chat("Action: click(start_box='<|box_start|>(250,500)<|box_end|>')"),
                &g
            ),
            Ok(Point::new(320, 400))
        );
        let s = geometry(CoordSpace::Smart, (1280, 800));
        assert_eq!(s.sent, (1288, 812));
        assert_eq!(
            point(
                &Holo,
                &chat("{\"action\": \"click_absolute\", \"x\": 644, \"y\": 406}"),
                &s
            ),
            Ok(Point::new(640, 400))
        );
        for bad in ["I cannot see it.", "(1200, 5)", "{\"x\": \"left\"}"] {
            assert!(
                point(&PointText, &chat(bad), &g).is_err() || point(&Holo, &chat(bad), &s).is_err(),
                "{bad}"
            );
        }
        assert!(
            point(&PointText, &chat("(1200, 5)"), &g).is_err(),
            "outside 0-1000"
        );
    }

    #[test]
    fn dialects_follow_the_model_id() {
        assert_eq!(detect("OS-Copilot/OS-Atlas-Base-7B").0.name(), "osatlas");
        assert_eq!(detect("Hcompany/Holo1.5-7B").0.name(), "holo");
        let (d, space) = detect("osunlp/UGround-V1-7B");
        assert_eq!((d.name(), space), ("point", CoordSpace::Thousand));
        assert_eq!(detect("ByteDance-Seed/UI-TARS-1.5-7B").1, CoordSpace::Smart);
        assert!(by_name("osatlas").is_ok() && by_name("nope").is_err());
    }
}
