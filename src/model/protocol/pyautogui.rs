//! `pyautogui`: OSWorld's baseline protocol. The model answers with a fenced block of
//! pyautogui code, or `WAIT`, `DONE`, `FAIL`; coordinates are pixels of the screenshot sent.
//! The code is parsed ([`super::pycode`]), never executed: the calls models emit become
//! [`Action`]s ([`to_action`], shared with OpenCUA), anything else is an unusable action fed
//! back with the reason.

use super::chat::{ChatHistory, answer_text};
use super::pycode::{Lit, PyCall, calls};
use super::{
    Call, CallResult, CoordSpace, DecodeError, Decision, Example, Geometry, ModelId, Observe,
    Protocol, ProtocolConfig, ProtocolName, Shot, Spec, prompt,
};
use crate::action::{Action, Button, InvalidAction, MAX_SCROLL_AMOUNT, MAX_TYPE_CHARS};
use crate::model::ModelRequest;
use serde_json::Value;

const SYSTEM_PROMPT: &str = include_str!("../../../prompts/pyautogui.md");
/// OSWorld's prompts for the accessibility tree alone, and beside the screenshot.
const A11Y_PROMPT: &str = include_str!("../../../prompts/pyautogui-a11y.md");
const BOTH_PROMPT: &str = include_str!("../../../prompts/pyautogui-both.md");

/// What `pyautogui` is (see [`Spec`]).
pub struct PyAutoGuiSpec;

pub static SPEC: PyAutoGuiSpec = PyAutoGuiSpec;

impl Spec for PyAutoGuiSpec {
    fn name(&self) -> &'static str {
        "pyautogui"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["osworld"]
    }

    fn wire(&self) -> &'static str {
        "chat completions, pyautogui code (OSWorld's baseline)"
    }

    /// No model id: OSWorld's baseline is chosen by `--protocol pyautogui`.
    fn detect(&self, _model: &ModelId) -> Option<CoordSpace> {
        None
    }

    fn detects(&self) -> &'static str {
        "only by `--protocol pyautogui`"
    }

    /// OSWorld's `a11y_tree` setting is this protocol with the tree alone.
    fn observes_text(&self) -> bool {
        true
    }

    fn example(&self) -> Example {
        Example {
            model: "gpt-4o",
            reply: serde_json::json!({"choices": [{"message": {"role": "assistant", "content":
                "```python\npyautogui.click(500, 300)\n```"}}],
                "usage": {"prompt_tokens": 1500, "completion_tokens": 40}}),
        }
    }

    fn create(
        &self,
        cfg: &ProtocolConfig,
        geometry: Geometry,
    ) -> Result<Box<dyn Protocol>, String> {
        Ok(Box::new(PyAutoGui::new(cfg, geometry)?))
    }
}

/// Seconds `computer.wait()` and `WAIT` wait.
pub const WAIT_SECS: f64 = 3.0;

/// A pyautogui key name as one of ours (`enter` works as is; a space or `+` as a name).
fn key_name(k: &str) -> String {
    match k {
        " " => "space".into(),
        "+" => "plus".into(),
        "\n" | "\r" => "Return".into(),
        "\t" => "Tab".into(),
        k => k.trim().to_owned(),
    }
}

fn keys_of(lit: &Lit) -> Result<Vec<String>, InvalidAction> {
    match lit {
        Lit::Str(s) => Ok(vec![key_name(s)]),
        Lit::List(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(key_name)
                    .ok_or_else(|| InvalidAction::new("key names must be strings"))
            })
            .collect(),
        _ => Err(InvalidAction::new("key names must be strings")),
    }
}

fn button_of(call: &PyCall, default: Button) -> Result<Button, InvalidAction> {
    match call.arg("button", usize::MAX).and_then(Lit::as_str) {
        None => Ok(default),
        Some("left" | "primary") => Ok(Button::Left),
        Some("right" | "secondary") => Ok(Button::Right),
        Some("middle") => Ok(Button::Middle),
        Some(other) => Err(InvalidAction::new(format!(
            "button '{other}' is not left, right or middle"
        ))),
    }
}

/// The point of a call's `x`/`y` (or a first argument `(x, y)`), in screen pixels; `None`
/// when it names none (act where the pointer is).
fn point_of(
    call: &PyCall,
    geometry: &Geometry,
    xi: usize,
) -> Result<Option<crate::action::Point>, InvalidAction> {
    if let Some(Lit::List(xy)) = call.args.first()
        && xy.len() == 2
    {
        let (x, y) = (xy[0].as_f64(), xy[1].as_f64());
        return match (x, y) {
            (Some(x), Some(y)) => geometry.to_screen(x, y).map(Some),
            _ => Err(InvalidAction::new("a point must be two numbers")),
        };
    }
    let x = call.arg("x", xi).map(|v| v.as_f64());
    let y = call.arg("y", xi + 1).map(|v| v.as_f64());
    match (x, y) {
        (None, None) => Ok(None),
        (Some(Some(x)), Some(Some(y))) => geometry.to_screen(x, y).map(Some),
        _ => Err(InvalidAction::new(format!(
            "`{}` needs both x and y as numbers",
            call.name
        ))),
    }
}

fn number(call: &PyCall, key: &str, index: usize) -> Result<Option<f64>, InvalidAction> {
    match call.arg(key, index) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| InvalidAction::new(format!("`{key}` must be a number"))),
    }
}

/// One call of the subset as an action in screen pixels.
pub fn to_action(call: &PyCall, geometry: &Geometry) -> Result<Action, InvalidAction> {
    let func = call.func();
    let module = call.module();
    let click = |count: u8, default: Button| -> Result<Action, InvalidAction> {
        let count = match number(call, "clicks", 2)? {
            Some(n) if func == "click" => {
                if !(1.0..=3.0).contains(&n) || n.fract() != 0.0 {
                    return Err(InvalidAction::new("`clicks` must be 1, 2 or 3"));
                }
                n as u8
            }
            _ => count,
        };
        Ok(Action::Click {
            coordinate: point_of(call, geometry, 0)?,
            button: button_of(call, default)?,
            count,
            modifiers: Vec::new(),
        })
    };
    match (module, func) {
        ("pyautogui" | "", "click") => click(1, Button::Left),
        ("pyautogui" | "", "doubleClick") => click(2, Button::Left),
        ("pyautogui" | "" | "computer", "tripleClick" | "triple_click") => click(3, Button::Left),
        ("pyautogui" | "", "rightClick") => click(1, Button::Right),
        ("pyautogui" | "", "middleClick") => click(1, Button::Middle),
        ("pyautogui" | "", "moveTo") => match point_of(call, geometry, 0)? {
            Some(p) => Ok(Action::MouseMove { coordinate: p }),
            None => Err(InvalidAction::new("`moveTo` needs x and y")),
        },
        ("pyautogui" | "", "dragTo") => match point_of(call, geometry, 0)? {
            Some(p) => Ok(Action::Drag {
                path: vec![p],
                button: button_of(call, Button::Left)?,
            }),
            None => Err(InvalidAction::new("`dragTo` needs x and y")),
        },
        ("pyautogui" | "", "mouseDown" | "mouseUp") => {
            let coordinate = point_of(call, geometry, 0)?;
            let button = button_of(call, Button::Left)?;
            Ok(if func == "mouseDown" {
                Action::MouseDown { coordinate, button }
            } else {
                Action::MouseUp { coordinate, button }
            })
        }
        ("pyautogui" | "", "scroll" | "hscroll" | "vscroll") => {
            let n = number(call, "clicks", 0)?
                .ok_or_else(|| InvalidAction::new("`scroll` needs a number of clicks"))?;
            if n.fract() != 0.0 || n.abs() > f64::from(MAX_SCROLL_AMOUNT) {
                return Err(InvalidAction::new(format!(
                    "scroll clicks must be whole numbers within ±{MAX_SCROLL_AMOUNT}, got {n}"
                )));
            }
            let coordinate = point_of(call, geometry, 1)?;
            // pyautogui: positive scrolls up (and right, for hscroll).
            let (dx, dy) = if func == "hscroll" {
                (n as i32, 0)
            } else {
                (0, -(n as i32))
            };
            Ok(Action::Scroll {
                coordinate,
                dx,
                dy,
                modifiers: Vec::new(),
            })
        }
        ("pyautogui" | "", "write" | "typewrite") => match call.arg("message", 0) {
            Some(Lit::Str(text)) if text.chars().count() <= MAX_TYPE_CHARS => {
                Ok(Action::Type { text: text.clone() })
            }
            Some(Lit::Str(_)) => Err(InvalidAction::new(format!(
                "at most {MAX_TYPE_CHARS} characters are typed at once"
            ))),
            // typewrite(['a', 'enter']) presses keys.
            Some(keys @ Lit::List(_)) => Ok(Action::Key {
                text: keys_of(keys)?.join(" "),
            }),
            _ => Err(InvalidAction::new("`write` needs the text as a string")),
        },
        ("pyautogui" | "", "press") => {
            let keys = keys_of(
                call.arg("keys", 0)
                    .ok_or_else(|| InvalidAction::new("`press` needs a key"))?,
            )?;
            let presses = number(call, "presses", 1)?.unwrap_or(1.0);
            if !(1.0..=50.0).contains(&presses) || presses.fract() != 0.0 {
                return Err(InvalidAction::new("`presses` must be 1 to 50"));
            }
            let one = keys.join(" ");
            Ok(Action::Key {
                text: vec![one; presses as usize].join(" "),
            })
        }
        ("pyautogui" | "", "hotkey") => {
            let keys: Vec<String> = call
                .args
                .iter()
                .map(|a| keys_of(a).map(|k| k.join("+")))
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                return Err(InvalidAction::new("`hotkey` needs keys"));
            }
            Ok(Action::Key {
                text: keys.join("+"),
            })
        }
        ("pyautogui" | "", "keyDown" | "keyUp") => {
            let key = keys_of(
                call.arg("key", 0)
                    .ok_or_else(|| InvalidAction::new(format!("`{func}` needs a key")))?,
            )?
            .join("+");
            Ok(if func == "keyDown" {
                Action::KeyDown { text: key }
            } else {
                Action::KeyUp { text: key }
            })
        }
        ("time" | "pyautogui", "sleep") => {
            let secs = number(call, "secs", 0)?.unwrap_or(1.0);
            if !(0.0..=crate::action::MAX_DURATION_SECS).contains(&secs) {
                return Err(InvalidAction::new("sleep 0 to 100 seconds"));
            }
            Ok(Action::Wait { duration: secs })
        }
        ("computer", "wait") => Ok(Action::Wait {
            duration: WAIT_SECS,
        }),
        ("computer", "terminate") => {
            let answer = call
                .arg("answer", 1)
                .and_then(Lit::as_str)
                .map(str::to_owned);
            match call.arg("status", 0).and_then(Lit::as_str) {
                Some("success") | None => Ok(Action::Done { answer }),
                Some("failure" | "fail") => Ok(Action::Fail {
                    reason: answer.unwrap_or_else(|| "the model gave up".into()),
                }),
                Some(other) => Err(InvalidAction::new(format!(
                    "terminate's status is 'success' or 'failure', not '{other}'"
                ))),
            }
        }
        _ => Err(InvalidAction::new(format!(
            "`{}` is not supported; use pyautogui.click, doubleClick, tripleClick, rightClick, \
             middleClick, moveTo, dragTo, mouseDown, mouseUp, scroll, hscroll, write, press, \
             hotkey, keyDown, keyUp, or time.sleep",
            call.name
        ))),
    }
}

/// The calls of a code block as [`Call`]s (ids `0`, `1`, ...).
pub fn code_calls(code: &str, geometry: &Geometry, first: usize) -> Vec<Call> {
    calls(code)
        .into_iter()
        .enumerate()
        .map(|(i, c)| match c {
            Ok(call) => Call {
                id: (first + i).to_string(),
                input: Value::String(call.source.clone()),
                action: to_action(&call, geometry),
            },
            Err(e) => Call {
                id: (first + i).to_string(),
                input: Value::String(e.clone()),
                action: Err(InvalidAction::new(format!(
                    "{e}; only calls with literal arguments are understood, and nothing is executed"
                ))),
            },
        })
        .collect()
}

/// OSWorld's baseline conversation.
pub struct PyAutoGui {
    geometry: Geometry,
    history: ChatHistory,
    observe: Observe,
}

impl PyAutoGui {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let (name, embedded) = match cfg.observe {
            Observe::Screenshot => ("pyautogui.md", SYSTEM_PROMPT),
            Observe::ScreenshotA11y => ("pyautogui-both.md", BOTH_PROMPT),
            Observe::A11y => ("pyautogui-a11y.md", A11Y_PROMPT),
        };
        let system = prompt(cfg.prompts.as_deref(), name, embedded, &geometry)
            .map_err(|e| format!("reading the prompts: {e}"))?;
        let history = ChatHistory::new(Some(system), cfg.keep_images);
        Ok(Self {
            geometry,
            history: if cfg.observe.pixels() {
                history
            } else {
                history.without_pixels()
            },
            observe: cfg.observe,
        })
    }

    /// A user turn: `lead`, then OSWorld's question about the observation in its words
    /// (the tree inline, as OSWorld's agent puts it), and the screenshot.
    fn observation(&mut self, lead: &str, shot: &Shot) {
        let tree = shot.tree_text().unwrap_or_default();
        let question = match self.observe {
            Observe::Screenshot => "Given the screenshot as below. ".to_owned(),
            Observe::ScreenshotA11y => {
                format!("Given the screenshot and info from accessibility tree as below:\n{tree}\n")
            }
            Observe::A11y => format!("Given the info from accessibility tree as below:\n{tree}\n"),
        };
        let text = format!(
            "{lead}{question}What's the next step that you will do to help with the task?"
        );
        // The tree is in the text already.
        let screen = Shot {
            tree: None,
            ..shot.clone()
        };
        self.history.user_text_image(&text, &screen);
    }
}

/// Reads an OSWorld-style reply: code blocks, or a special code (WAIT, DONE, FAIL).
pub fn decode_code_reply(text: &str, geometry: &Geometry) -> Vec<Call> {
    let special = |s: &str| -> Option<Action> {
        match s.trim().trim_matches('`').trim() {
            "WAIT" => Some(Action::Wait {
                duration: WAIT_SECS,
            }),
            "DONE" => Some(Action::Done { answer: None }),
            "FAIL" => Some(Action::Fail {
                reason: "the model answered FAIL".into(),
            }),
            _ => None,
        }
    };
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let Some(end) = after.find("```") else { break };
        let block = &after[..end];
        let body = match block.split_once('\n') {
            Some((tag, body)) if tag.trim().chars().all(|c| c.is_ascii_alphanumeric()) => {
                if special(tag).is_some() && body.trim().is_empty() {
                    tag
                } else {
                    body
                }
            }
            _ => block,
        };
        blocks.push(body.trim().to_owned());
        rest = &after[end + 3..];
    }
    if blocks.is_empty() {
        if let Some(a) = special(text) {
            return vec![Call {
                id: "0".into(),
                input: Value::String(text.trim().into()),
                action: Ok(a),
            }];
        }
        return vec![Call {
            id: "0".into(),
            input: Value::String(text.chars().take(200).collect()),
            action: Err(InvalidAction::new(
                "no code block: answer with ```python ... ``` code, or WAIT, DONE or FAIL",
            )),
        }];
    }
    let mut out = Vec::new();
    for b in blocks {
        match special(&b) {
            Some(a) => out.push(Call {
                id: out.len().to_string(),
                input: Value::String(b),
                action: Ok(a),
            }),
            None => {
                let first = out.len();
                out.extend(code_calls(&b, geometry, first));
            }
        }
    }
    out
}

impl Protocol for PyAutoGui {
    fn name(&self) -> ProtocolName {
        ProtocolName::of(&SPEC)
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn begin(&mut self, instruction: &str, shot: &Shot) {
        self.observation(
            &format!("You are asked to complete the following task: {instruction}\n\n"),
            shot,
        );
    }

    fn user_message(&mut self, text: &str) {
        self.history.user_text(text);
    }

    fn request(&self) -> (ModelRequest, Value) {
        self.history.request()
    }

    fn decode(&self, raw: &Value) -> Result<Decision, DecodeError> {
        let reply = super::chat::parse_chat(raw)?;
        let text = reply.text.clone().unwrap_or_default();
        Ok(Decision {
            thought: reply.reasoning.clone().or_else(|| {
                let before = text.split("```").next().unwrap_or_default().trim();
                (!before.is_empty()).then(|| before.to_owned())
            }),
            calls: decode_code_reply(&text, &self.geometry),
            text: reply.text,
            usage: reply.usage,
            safety: Vec::new(),
            grounding: Vec::new(),
        })
    }

    fn assistant(&mut self, raw: &Value, _decision: &Decision) {
        self.history
            .assistant_text(&answer_text(raw).unwrap_or_default());
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, note: &str) {
        let errors = super::chat::result_lines(results);
        self.observation(&format!("{errors}{note}\n"), shot);
    }
}

/// A pyautogui call from a JSON-free literal, for tests of other protocols.
#[cfg(test)]
pub(crate) fn parse_one(code: &str, g: &Geometry) -> Result<Action, InvalidAction> {
    let call = calls(code).remove(0).map_err(InvalidAction::new)?;
    to_action(&call, g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Point;
    use crate::model::protocol::CoordSpace;
    use pretty_assertions::assert_eq;

    fn g() -> Geometry {
        Geometry::pixels((1280, 800), (1280, 800), CoordSpace::Native)
    }

    #[test]
    fn the_subset_models_emit_becomes_actions() {
        let g = g();
        let click = |x, y, button, count| Action::Click {
            coordinate: Some(Point::new(x, y)),
            button,
            count,
            modifiers: vec![],
        };
        for (code, want) in [
            (
                "pyautogui.click(100, 200)",
                click(100, 200, Button::Left, 1),
            ),
            (
                "pyautogui.click(x=100, y=200, clicks=2)",
                click(100, 200, Button::Left, 2),
            ),
            (
                "pyautogui.click(100, 200, button='right')",
                click(100, 200, Button::Right, 1),
            ),
            ("pyautogui.doubleClick(5, 6)", click(5, 6, Button::Left, 2)),
            (
                "pyautogui.tripleClick(x=5, y=6)",
                click(5, 6, Button::Left, 3),
            ),
            ("computer.triple_click(5, 6)", click(5, 6, Button::Left, 3)),
            ("pyautogui.rightClick(7, 8)", click(7, 8, Button::Right, 1)),
            (
                "pyautogui.middleClick((9, 10))",
                click(9, 10, Button::Middle, 1),
            ),
            (
                "pyautogui.moveTo(1, 2, duration=0.5)",
                Action::MouseMove {
                    coordinate: Point::new(1, 2),
                },
            ),
            (
                "pyautogui.dragTo(300, 400, button='left')",
                Action::Drag {
                    path: vec![Point::new(300, 400)],
                    button: Button::Left,
                },
            ),
            (
                "pyautogui.mouseDown()",
                Action::MouseDown {
                    coordinate: None,
                    button: Button::Left,
                },
            ),
            (
                "pyautogui.mouseUp(10, 20, button='right')",
                Action::MouseUp {
                    coordinate: Some(Point::new(10, 20)),
                    button: Button::Right,
                },
            ),
            (
                "pyautogui.scroll(-5)",
                Action::Scroll {
                    coordinate: None,
                    dx: 0,
                    dy: 5,
                    modifiers: vec![],
                },
            ),
            (
                "pyautogui.scroll(3, x=10, y=20)",
                Action::Scroll {
                    coordinate: Some(Point::new(10, 20)),
                    dx: 0,
                    dy: -3,
                    modifiers: vec![],
                },
            ),
            (
                "pyautogui.hscroll(2)",
                Action::Scroll {
                    coordinate: None,
                    dx: 2,
                    dy: 0,
                    modifiers: vec![],
                },
            ),
            (
                "pyautogui.write('héllo; world\\n', interval=0.1)",
                Action::Type {
                    text: "héllo; world\n".into(),
                },
            ),
            (
                "pyautogui.typewrite(['a', 'enter'])",
                Action::Key {
                    text: "a enter".into(),
                },
            ),
            (
                "pyautogui.press('enter')",
                Action::Key {
                    text: "enter".into(),
                },
            ),
            (
                "pyautogui.press(['down', 'down'])",
                Action::Key {
                    text: "down down".into(),
                },
            ),
            (
                "pyautogui.press('tab', presses=3)",
                Action::Key {
                    text: "tab tab tab".into(),
                },
            ),
            (
                "pyautogui.hotkey('ctrl', 'shift', 't')",
                Action::Key {
                    text: "ctrl+shift+t".into(),
                },
            ),
            (
                "pyautogui.hotkey('ctrl', '+')",
                Action::Key {
                    text: "ctrl+plus".into(),
                },
            ),
            (
                "pyautogui.keyDown('shift')",
                Action::KeyDown {
                    text: "shift".into(),
                },
            ),
            (
                "pyautogui.keyUp('shift')",
                Action::KeyUp {
                    text: "shift".into(),
                },
            ),
            ("time.sleep(0.5)", Action::Wait { duration: 0.5 }),
            (
                "computer.wait()",
                Action::Wait {
                    duration: WAIT_SECS,
                },
            ),
            (
                "computer.terminate(status='success', answer='42')",
                Action::Done {
                    answer: Some("42".into()),
                },
            ),
            (
                "computer.terminate(status=\"failure\")",
                Action::Fail {
                    reason: "the model gave up".into(),
                },
            ),
        ] {
            assert_eq!(parse_one(code, &g).unwrap(), want, "{code}");
        }
        for (code, needle) in [
            ("pyautogui.locateOnScreen('ok.png')", "not supported"),
            ("pyautogui.click(5000, 10)", "outside your coordinate space"),
            ("pyautogui.click(x=5)", "both x and y"),
            ("pyautogui.click(1, 2, clicks=7)", "1, 2 or 3"),
            ("pyautogui.scroll(1000)", "within"),
            ("os.system('id')", "not supported"),
        ] {
            let e = parse_one(code, &g).unwrap_err().to_string();
            assert!(e.contains(needle), "{code}: {e}");
        }
    }

    #[test]
    fn osworld_replies_decode() {
        let g = g();
        let calls = decode_code_reply(
            "The button is at the top.\n```python\nimport pyautogui\npyautogui.click(100, 200); time.sleep(0.5)\npyautogui.write('a;b')\n```",
            &g,
        );
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|c| c.action.is_ok()));
        assert_eq!(
            calls[2].action.as_ref().unwrap(),
            &Action::Type { text: "a;b".into() }
        );
        for (text, want) in [
            ("```WAIT```", "wait"),
            ("DONE", "done"),
            ("I cannot.\n```\nFAIL\n```", "fail"),
        ] {
            let c = decode_code_reply(text, &g);
            assert_eq!(c[0].action.as_ref().unwrap().name(), want, "{text}");
        }
        let c = decode_code_reply("I would click the button.", &g);
        assert!(
            c[0].action
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("no code block")
        );
        let c = decode_code_reply("```python\nx = 1\npyautogui.click(1, 1)\n```", &g);
        assert!(c[0].action.is_err() && c[1].action.is_ok());
    }
}
