//! `uitars`: UI-TARS's text protocol over chat completions. The published prompt template
//! (prompts/uitars.md) goes in the first user message; replies are `Thought: ...` then
//! `Action: ...` with one or more calls in Python syntax (`click(start_box='(x,y)')`), read
//! with [`super::pycode`] (never executed).
//!
//! Boxes come in every form the reference parsers accept: `(x,y)`,
//! `<|box_start|>(x,y)<|box_end|>`, `[x1,y1,x2,y2]` and `<bbox>x1 y1 x2 y2</bbox>` (the
//! centre), `<point>x y</point>`. Coordinates: UI-TARS-1.5 answers in pixels of the
//! smart-resized image (factor 28), UI-TARS-1.0/2 and Doubao in 0-1000.
//!
//! `finished(content=...)` is the answer; `call_user()` asks the person (the TUI asks; a
//! headless episode ends `needs_user`). Earlier turns are replayed as the model wrote them,
//! with the box tokens put back, and the last N screenshots.

use super::chat::{ChatHistory, answer_text, parse_chat, result_lines};
use super::pycode::{Lit, PyCall, calls};
use super::{
    Call, CallResult, CoordSpace, DecodeError, Decision, Example, Geometry, ModelId, Protocol,
    ProtocolConfig, ProtocolName, Shot, Spec, prompt, smart_size,
};
use crate::action::{Action, Button, InvalidAction, MAX_TYPE_CHARS, Point};
use crate::model::ModelRequest;
use serde_json::Value;

const PROMPT: &str = include_str!("../../../prompts/uitars.md");

/// What `uitars` is (see [`Spec`]).
pub struct UiTarsSpec;

pub static SPEC: UiTarsSpec = UiTarsSpec;

impl Spec for UiTarsSpec {
    fn name(&self) -> &'static str {
        "uitars"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["ui-tars"]
    }

    fn wire(&self) -> &'static str {
        "chat completions, `Thought:`/`Action:` text"
    }

    /// UI-TARS-1.5: smart-resize pixels; 1.0 ids (`-7b-dpo`, `-72b-sft`, plain
    /// `ui-tars-72b`), UI-TARS-2 and Doubao: 0-1000.
    fn detect(&self, m: &ModelId) -> Option<CoordSpace> {
        if !m.has_any(&["ui-tars", "ui_tars", "uitars", "doubao"]) {
            return None;
        }
        let v15 = m.has_any(&["1.5", "1_5", "15-"]);
        let v1 = m.has_any(&["7b-dpo", "7b-sft", "72b-dpo", "72b-sft", "2b-sft"])
            || m.base.ends_with("ui-tars-72b")
            || m.base.ends_with("ui-tars-7b");
        Some(if v15 && !v1 {
            CoordSpace::Smart
        } else {
            CoordSpace::Thousand
        })
    }

    fn detects(&self) -> &'static str {
        "`*ui-tars*` (1.5: smart; 1.0, UI-TARS-2: 1000), `*doubao*`"
    }

    /// UI-TARS-1.5's processor limits for its smart resize.
    fn sent_size(&self, cfg: &ProtocolConfig, screen: (u32, u32)) -> (u32, u32) {
        match cfg.space {
            CoordSpace::Smart => smart_size(screen, 28, 100 * 28 * 28, 16384 * 28 * 28),
            _ => cfg.target.size(screen),
        }
    }

    fn example(&self) -> Example {
        Example {
            model: "ui-tars-1.5-7b",
            reply: serde_json::json!({"choices": [{"message": {"role": "assistant", "content":
                "Thought: I click the button.\nAction: click(start_box='<|box_start|>(500,300)<|box_end|>')"}}],
                "usage": {"prompt_tokens": 1500, "completion_tokens": 40}}),
        }
    }

    fn create(
        &self,
        cfg: &ProtocolConfig,
        geometry: Geometry,
    ) -> Result<Box<dyn Protocol>, String> {
        Ok(Box::new(UiTars::new(cfg, geometry)?))
    }
}

/// Wheel clicks of a `scroll` (OSWorld's UI-TARS harness scrolls by 5).
const SCROLL_CLICKS: i32 = 5;
/// Seconds of `wait()` (the prompt says 5 s).
const WAIT_SECS: f64 = 5.0;

pub struct UiTars {
    geometry: Geometry,
    history: ChatHistory,
    template: String,
}

impl UiTars {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let template = prompt(cfg.prompts.as_deref(), "uitars.md", PROMPT, &geometry)
            .map_err(|e| format!("reading the prompts: {e}"))?;
        Ok(Self {
            geometry,
            history: ChatHistory::new(Some("You are a helpful assistant.".into()), cfg.keep_images),
            template,
        })
    }
}

/// The numbers in a box or point, as written.
fn numbers(s: &str) -> Vec<f64> {
    let cleaned = s
        .replace("<|box_start|>", " ")
        .replace("<|box_end|>", " ")
        .replace("<|begin_of_box|>", " ")
        .replace("<|end_of_box|>", " ");
    let mut out = Vec::new();
    let mut cur = String::new();
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

/// A box argument as a point in screen pixels: a point, or the centre of a box.
pub(super) fn point(g: &Geometry, value: &str) -> Result<Point, InvalidAction> {
    let n = numbers(value);
    let (x, y) = match n.as_slice() {
        [x, y] => (*x, *y),
        [x1, y1, x2, y2] => ((x1 + x2) / 2.0, (y1 + y2) / 2.0),
        _ => {
            return Err(InvalidAction::new(format!(
                "'{value}' is not a point (x,y) or a box [x1,y1,x2,y2]"
            )));
        }
    };
    g.to_screen(x, y)
}

fn text_arg<'a>(call: &'a PyCall, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| call.arg(k, usize::MAX).and_then(Lit::as_str))
        .or_else(|| call.args.first().and_then(Lit::as_str))
}

/// The box of a call: `start_box`, `point` or `start_point`, or the first argument.
fn start(call: &PyCall) -> Option<&str> {
    text_arg(call, &["start_box", "point", "start_point"])
}

/// One UI-TARS call as an action in screen pixels.
pub fn to_action(call: &PyCall, g: &Geometry) -> Result<Action, InvalidAction> {
    let at = |call: &PyCall| -> Result<Point, InvalidAction> {
        point(
            g,
            start(call).ok_or_else(|| {
                InvalidAction::new(format!("`{}` needs start_box='(x,y)'", call.func()))
            })?,
        )
    };
    let click = |count: u8, button: Button| -> Result<Action, InvalidAction> {
        Ok(Action::Click {
            coordinate: Some(at(call)?),
            button,
            count,
            modifiers: Vec::new(),
        })
    };
    let key_arg = || {
        text_arg(call, &["key", "hotkey", "keys", "press"])
            .map(|k| k.split_whitespace().collect::<Vec<_>>().join("+"))
            .filter(|k| !k.is_empty())
            .ok_or_else(|| InvalidAction::new(format!("`{}` needs key='...'", call.func())))
    };
    match call.func() {
        "click" | "left_single" => click(1, Button::Left),
        "left_double" | "double_click" => click(2, Button::Left),
        "left_triple" | "triple_click" => click(3, Button::Left),
        "right_single" | "right_click" => click(1, Button::Right),
        "middle_single" | "middle_click" => click(1, Button::Middle),
        "hover" | "move_to" | "mouse_move" => Ok(Action::MouseMove {
            coordinate: at(call)?,
        }),
        "drag" | "select" => {
            let from = at(call)?;
            let to = text_arg(call, &["end_box", "end_point"])
                .filter(|_| {
                    call.arg("end_box", usize::MAX).is_some()
                        || call.arg("end_point", usize::MAX).is_some()
                })
                .ok_or_else(|| InvalidAction::new("`drag` needs end_box='(x,y)'"))?;
            Ok(Action::Drag {
                path: vec![from, point(g, to)?],
                button: Button::Left,
            })
        }
        "mouse_down" | "mouse_up" => {
            let coordinate = start(call).map(|b| point(g, b)).transpose()?;
            Ok(if call.func() == "mouse_down" {
                Action::MouseDown {
                    coordinate,
                    button: Button::Left,
                }
            } else {
                Action::MouseUp {
                    coordinate,
                    button: Button::Left,
                }
            })
        }
        "hotkey" => Ok(Action::Key { text: key_arg()? }),
        "press" | "keydown" | "key_down" => Ok(Action::KeyDown { text: key_arg()? }),
        "release" | "keyup" | "key_up" => Ok(Action::KeyUp { text: key_arg()? }),
        "type" => {
            let text = text_arg(call, &["content", "text"]).unwrap_or_default();
            if text.chars().count() > MAX_TYPE_CHARS {
                return Err(InvalidAction::new(format!(
                    "at most {MAX_TYPE_CHARS} characters are typed at once"
                )));
            }
            Ok(Action::Type {
                text: text.to_owned(),
            })
        }
        "scroll" => {
            let coordinate = start(call).map(|b| point(g, b)).transpose()?;
            let (dx, dy) = match text_arg(call, &["direction"]).map(str::trim) {
                Some("down") => (0, SCROLL_CLICKS),
                Some("up") => (0, -SCROLL_CLICKS),
                Some("right") => (SCROLL_CLICKS, 0),
                Some("left") => (-SCROLL_CLICKS, 0),
                other => {
                    return Err(InvalidAction::new(format!(
                        "scroll direction must be up, down, left or right, not {other:?}"
                    )));
                }
            };
            Ok(Action::Scroll {
                coordinate,
                dx,
                dy,
                modifiers: Vec::new(),
            })
        }
        "wait" => Ok(Action::Wait {
            duration: WAIT_SECS,
        }),
        "finished" => Ok(Action::Done {
            answer: text_arg(call, &["content"])
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
        }),
        "call_user" => Ok(Action::CallUser { question: None }),
        other => Err(InvalidAction::new(format!(
            "`{other}` is not in the desktop action space (click, left_double, right_single, \
             drag, hotkey, type, scroll, wait, finished, call_user)"
        ))),
    }
}

/// The thought and the action text of a reply.
fn split_reply(text: &str) -> (Option<String>, Option<String>) {
    let mut thought = Vec::new();
    let mut rest = text.trim();
    // A reasoning block the server left in the text.
    if let Some(start) = rest.find("<think>")
        && let Some(end) = rest.find("</think>")
        && end > start
    {
        thought.push(rest[start + 7..end].trim().to_owned());
        rest = rest[end + 8..].trim();
    }
    let (head, action) = match rest.rfind("Action:") {
        Some(i) => (&rest[..i], Some(rest[i + 7..].trim().to_owned())),
        None => (rest, None),
    };
    for label in ["Thought:", "Reflection:", "Action_Summary:"] {
        if let Some(i) = head.find(label) {
            thought.push(head[i + label.len()..].trim().to_owned());
            break;
        }
    }
    if thought.is_empty() && !head.trim().is_empty() && action.is_some() {
        thought.push(head.trim().to_owned());
    }
    let thought = Some(thought.join("\n")).filter(|t| !t.is_empty());
    (thought, action)
}

/// The calls of an `Action:` section: several are separated by blank lines. A `type`
/// whose content holds unescaped quotes is repaired as the reference parser does.
fn action_calls(section: &str, g: &Geometry) -> Vec<Call> {
    let mut out = Vec::new();
    for (i, part) in section
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        let id = i.to_string();
        let input = Value::String(part.to_owned());
        let parsed = calls(part);
        // `type(content='it's')`: models leave quotes unescaped; the content runs to the
        // last `')`, as the reference parser reads it.
        let typed = part
            .strip_prefix("type(content='")
            .and_then(|r| r.rfind("')").map(|e| &r[..e]));
        let action = match (parsed.as_slice(), typed) {
            ([Ok(call)], _) => to_action(call, g),
            (_, Some(inner)) => Ok(Action::Type {
                text: unescape(inner),
            }),
            ([Err(e)], None) => Err(InvalidAction::new(format!(
                "{e}; write one call per action, like click(start_box='(x,y)')"
            ))),
            ([], None) => Err(InvalidAction::new(
                "no call found; write one call per action, like click(start_box='(x,y)')",
            )),
            _ => Err(InvalidAction::new(
                "one call per action; separate several actions with a blank line",
            )),
        };
        out.push(Call { id, input, action });
    }
    out
}

/// Python-style escapes in text a model wrote.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Puts the box tokens back that decoding strips, as the reference harness does for the
/// history: `start_box='(1,2)'` → `start_box='<|box_start|>(1,2)<|box_end|>'`.
fn add_box_tokens(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("_box='(") {
        let (head, tail) = rest.split_at(i + 6);
        out.push_str(head);
        match tail.find(")'") {
            Some(end) if !tail[..end].contains("<|box_start|>") => {
                out.push_str("<|box_start|>");
                out.push_str(&tail[..end + 1]);
                out.push_str("<|box_end|>'");
                rest = &tail[end + 2..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

impl Protocol for UiTars {
    fn name(&self) -> ProtocolName {
        ProtocolName::of(&SPEC)
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn begin(&mut self, instruction: &str, shot: &Shot) {
        let text = self.template.replace("{instruction}", instruction);
        self.history.user_text(&text);
        self.history.user_text_image("", shot);
    }

    fn user_message(&mut self, text: &str) {
        self.history.user_text(text);
    }

    fn request(&self) -> (ModelRequest, Value) {
        self.history.request()
    }

    fn decode(&self, raw: &Value) -> Result<Decision, DecodeError> {
        let reply = parse_chat(raw)?;
        let text = reply.text.clone().unwrap_or_default();
        let (thought, action) = split_reply(&text);
        let calls = match action {
            Some(section) => action_calls(&section, &self.geometry),
            // No action at all: not an answer (that is `finished`), a mistake to report.
            None => vec![Call {
                id: "0".into(),
                input: Value::String(text.chars().take(200).collect()),
                action: Err(InvalidAction::new(
                    "no `Action:` line; answer with Thought: ... then Action: ... (finished(content='...') when done)",
                )),
            }],
        };
        Ok(Decision {
            thought: reply.reasoning.clone().or(thought),
            text: reply.text,
            calls,
            usage: reply.usage,
            safety: Vec::new(),
            grounding: Vec::new(),
        })
    }

    fn assistant(&mut self, raw: &Value, _decision: &Decision) {
        let text = answer_text(raw).unwrap_or_default();
        let text = if self.geometry.space == CoordSpace::Smart {
            add_box_tokens(&text)
        } else {
            text
        };
        self.history.assistant_text(&text);
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, _note: &str) {
        self.history.user_text_image(&result_lines(results), shot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::protocol::geometry;
    use pretty_assertions::assert_eq;

    fn g15() -> Geometry {
        // 1280x800 sent smart-resized: 1288x812.
        geometry(
            &ProtocolConfig {
                name: ProtocolName::of(&SPEC),
                space: CoordSpace::Smart,
                ..ProtocolConfig::default()
            },
            (1280, 800),
        )
    }

    fn g1000() -> Geometry {
        Geometry::pixels((1280, 800), (1280, 800), CoordSpace::Thousand)
    }

    fn decode(text: &str, g: Geometry) -> Decision {
        let cfg = ProtocolConfig {
            name: ProtocolName::of(&SPEC),
            space: g.space,
            ..ProtocolConfig::default()
        };
        let p = UiTars::new(&cfg, g).unwrap();
        p.decode(&crate::model::protocol::chat::text_reply(text))
            .unwrap()
    }

    fn actions(d: &Decision) -> Vec<Action> {
        d.calls
            .iter()
            .map(|c| c.action.clone().unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    #[test]
    fn the_published_replies_decode() {
        // README_deploy.md's expected output (Chinese thought; 1.5 pixels).
        let d = decode(
            "Thought: 我看到Preferences窗口已经打开了，让我点击它看看里面有什么选项。\nAction: click(start_box='(177,549)')",
            g15(),
        );
        assert!(d.thought.as_deref().unwrap().starts_with("我看到"));
        // (177, 549) of 1288x812 → (175.9, 540.9) → (176, 541)
        assert_eq!(
            actions(&d),
            vec![Action::Click {
                coordinate: Some(Point::new(176, 541)),
                button: Button::Left,
                count: 1,
                modifiers: vec![]
            }]
        );
        // The action parser's fixtures.
        let d = decode(
            "Thought: 我已经点击了地址栏，现在需要输入网址doubao.com。\nAction: type(content='doubao.com\\n')",
            g15(),
        );
        assert_eq!(
            actions(&d),
            vec![Action::Type {
                text: "doubao.com\n".into()
            }]
        );
        let d = decode(
            "Action_Summary: 粘贴使用 ctrl+v。\nAction: hotkey(key='ctrl v')",
            g15(),
        );
        assert_eq!(d.thought.as_deref(), Some("粘贴使用 ctrl+v。"));
        assert_eq!(
            actions(&d),
            vec![Action::Key {
                text: "ctrl+v".into()
            }]
        );
        let d = decode(
            "<think>\nOkay, let's see. The user wants to search news.\n</think>\nThought: To search for news, first clear the existing text.\nAction: click(point='<point>510 150</point>')",
            g1000(),
        );
        assert!(
            d.thought
                .as_deref()
                .unwrap()
                .contains("The user wants to search news")
        );
        assert_eq!(
            actions(&d)[0].points(),
            vec![Point::new(653, 120)],
            "0-1000 of 1280x800"
        );
    }

    #[test]
    fn every_box_form_and_action_decodes() {
        let g = g1000();
        for (action, want) in [
            (
                "click(start_box='<|box_start|>(500,500)<|box_end|>')",
                vec![Point::new(640, 400)],
            ),
            (
                "click(start_box='[400,400,600,600]')",
                vec![Point::new(640, 400)],
            ),
            (
                "click(start_box='<bbox>400 400 600 600</bbox>')",
                vec![Point::new(640, 400)],
            ),
            (
                "left_double(start_box='(500,500)')",
                vec![Point::new(640, 400)],
            ),
            ("right_single(start_box='(0,0)')", vec![Point::new(0, 0)]),
            (
                "hover(start_box='(1000,1000)')",
                vec![Point::new(1279, 799)],
            ),
            (
                "drag(start_box='(0,0)', end_box='(500,500)')",
                vec![Point::new(0, 0), Point::new(640, 400)],
            ),
            (
                "select(start_box='(0,0)', end_box='[400,400,600,600]')",
                vec![Point::new(0, 0), Point::new(640, 400)],
            ),
            (
                "scroll(start_box='(500,500)', direction='down')",
                vec![Point::new(640, 400)],
            ),
        ] {
            let d = decode(&format!("Thought: t\nAction: {action}"), g);
            assert_eq!(actions(&d)[0].points(), want, "{action}");
        }
        let d = decode(
            "Thought: t\nAction: scroll(start_box='(1,1)', direction='up')",
            g,
        );
        assert!(matches!(actions(&d)[0], Action::Scroll { dy: -5, .. }));
        let d = decode(
            "Thought: t\nAction: type(content='it\\'s \"quoted\"\\n')",
            g,
        );
        assert_eq!(
            actions(&d),
            vec![Action::Type {
                text: "it's \"quoted\"\n".into()
            }]
        );
        // Unescaped quotes inside the content, as models write them.
        let d = decode("Thought: t\nAction: type(content='don't stop')", g);
        assert_eq!(
            actions(&d),
            vec![Action::Type {
                text: "don't stop".into()
            }]
        );
        let d = decode(
            "Thought: t\nAction: finished(content='The answer is 42.')",
            g,
        );
        assert_eq!(
            actions(&d),
            vec![Action::Done {
                answer: Some("The answer is 42.".into())
            }]
        );
        let d = decode("Thought: I need help\nAction: call_user()", g);
        assert_eq!(actions(&d), vec![Action::CallUser { question: None }]);
        let d = decode("Thought: t\nAction: wait()", g);
        assert_eq!(actions(&d), vec![Action::Wait { duration: 5.0 }]);
        let d = decode(
            "Thought: t\nAction: press(key='shift')\n\nrelease(key='shift')",
            g,
        );
        assert_eq!(
            actions(&d),
            vec![
                Action::KeyDown {
                    text: "shift".into()
                },
                Action::KeyUp {
                    text: "shift".into()
                }
            ]
        );
        // Several actions in one reply.
        let d = decode(
            "Thought: t\nAction: click(start_box='(1,1)')\n\ntype(content='hi')\n\nhotkey(key='enter')",
            g,
        );
        assert_eq!(d.calls.len(), 3);
    }

    #[test]
    fn mistakes_are_fed_back_not_guessed() {
        let g = g15();
        for (text, needle) in [
            ("I think the task is done.", "no `Action:` line"),
            (
                "Thought: t\nAction: click(start_box='(2000,100)')",
                "outside your coordinate space",
            ),
            (
                "Thought: t\nAction: long_press(start_box='(1,1)')",
                "not in the desktop action space",
            ),
            ("Thought: t\nAction: click(start_box='(1)')", "not a point"),
            (
                "Thought: t\nAction: scroll(start_box='(1,1)', direction='sideways')",
                "direction",
            ),
            ("Thought: t\nAction: import os", "no call found"),
            ("Thought: t\nAction: x = 1", "only calls"),
        ] {
            let d = decode(text, g);
            let e = d.calls[0].action.as_ref().unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn the_history_gets_its_box_tokens_back() {
        assert_eq!(
            add_box_tokens("Action: drag(start_box='(1,2)', end_box='(3,4)')"),
            "Action: drag(start_box='<|box_start|>(1,2)<|box_end|>', end_box='<|box_start|>(3,4)<|box_end|>')"
        );
        let kept = "click(start_box='<|box_start|>(1,2)<|box_end|>')";
        assert_eq!(add_box_tokens(kept), kept);
    }
}
