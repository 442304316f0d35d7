//! `qwen`: the Qwen family's computer function over chat completions: `computer_use`
//! (Qwen2.5-VL, Qwen3-VL, EvoCUA, GUI-Owl 1.5) or `computer` (Qwen3.5 and its
//! derivatives), declared in the system prompt in the Hermes/Qwen-Agent form
//! (`<tools>...</tools>`), or through `tools` for servers that parse tool calls
//! (`--native-tools`, e.g. vLLM with `--tool-call-parser hermes`). A reply's call may come
//! any way: a parsed `tool_calls` entry, `<tool_call>{...}</tool_call>` JSON in the text
//! (the hermes parser hands malformed calls back as text), or Qwen3.5's XML-style text,
//! `<tool_call><function=computer><parameter=action>left_click</parameter>…`; either
//! function name is taken.
//!
//! Coordinates: Qwen2.5-VL answers in pixels of the smart-resized image (factor 28);
//! Qwen3-VL, Qwen3.5 and EvoCUA in 0-1000 (the image smart-resized with factor 32);
//! GUI-Owl 1.5 in pixels of its factor-32 smart resize. `terminate{status}` ends the
//! episode as a success or a failure; `answer{text}` answers; a reply with no call at all
//! is the answer, but one holding call markup that did not parse is a mistake fed back.

use super::chat::{ChatHistory, ToolCall, call_markup, parse_chat, result_lines};
use super::{
    Call, CallResult, CoordSpace, DecodeError, Decision, Example, Geometry, ModelId, OptionDoc,
    Protocol, ProtocolConfig, ProtocolName, Shot, Spec, prompt, smart_size,
};
use crate::action::{Action, Button, InvalidAction, MAX_SCROLL_AMOUNT, MAX_TYPE_CHARS};
use crate::model::ModelRequest;
use serde_json::{Value, json};

const PROMPT: &str = include_str!("../../../prompts/qwen.md");

/// What `qwen` is (see [`Spec`]).
pub struct QwenSpec;

pub static SPEC: QwenSpec = QwenSpec;

/// Qwen3.5-generation ids: the function is `computer`.
fn is_qwen35(m: &ModelId) -> bool {
    m.has_any(&["qwen3.5", "qwen3_5", "qwen35"])
}

/// Ids whose images are smart-resized with factor 32 (Qwen3-VL's processor and its
/// descendants).
fn factor32(m: &ModelId) -> bool {
    is_qwen35(m) || m.has_any(&["qwen3-vl", "qwen3_vl", "qwen3vl", "evocua", "gui-owl-1.5", "gui-owl-1_5", "gui-owl1.5"])
}

impl Spec for QwenSpec {
    fn name(&self) -> &'static str {
        "qwen"
    }

    fn wire(&self) -> &'static str {
        "chat completions, the `computer_use` / `computer` function (JSON or XML calls)"
    }

    fn detect(&self, m: &ModelId) -> Option<CoordSpace> {
        if is_qwen35(m)
            || m.has_any(&["qwen3-vl", "qwen3_vl", "qwen3vl", "evocua"])
        {
            Some(CoordSpace::Thousand)
        } else if m.has_any(&["qwen2.5-vl", "qwen2_5_vl", "qwen2.5vl", "qwen25-vl", "gui-owl"]) {
            Some(CoordSpace::Smart)
        } else {
            None
        }
    }

    fn detects(&self) -> &'static str {
        "`*qwen3.5*`, `*qwen3-vl*`, `*evocua*` (1000); `*qwen2.5-vl*`, `*gui-owl*` (smart)"
    }

    fn options(&self) -> &'static [OptionDoc] {
        &[
            OptionDoc {
                key: "native-tools",
                help: "declare the function through the request's `tools` (servers that parse tool calls, e.g. vLLM --tool-call-parser hermes) rather than the system prompt (--native-tools)",
            },
            OptionDoc {
                key: "function",
                help: "the function's name: computer (Qwen3.5) or computer_use (the others); chosen by the model id",
            },
        ]
    }

    fn sent_size(&self, cfg: &ProtocolConfig, screen: (u32, u32)) -> (u32, u32) {
        let m = ModelId::new(&cfg.model);
        match cfg.space {
            CoordSpace::Smart if factor32(&m) => smart_size(screen, 32, 3136, 13_107_200),
            CoordSpace::Smart => smart_size(screen, 28, 3136, 12_845_056),
            // Qwen3-VL's image: factor 32 (OSWorld's harness limits).
            CoordSpace::Thousand => smart_size(screen, 32, 3136, 13_107_200),
            _ => cfg.target.size(screen),
        }
    }

    fn example(&self) -> Example {
        Example {
            model: "qwen2.5-vl-7b-instruct",
            reply: json!({"choices": [{"message": {"role": "assistant", "content":
                "Action: click the button.\n<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"left_click\", \"coordinate\": [500, 300]}}\n</tool_call>"}}],
                "usage": {"prompt_tokens": 1500, "completion_tokens": 40}}),
        }
    }

    fn create(
        &self,
        cfg: &ProtocolConfig,
        geometry: Geometry,
    ) -> Result<Box<dyn Protocol>, String> {
        Ok(Box::new(Qwen::new(cfg, geometry)?))
    }
}

/// The function names a Qwen model may call.
const FUNCTIONS: [&str; 2] = ["computer_use", "computer"];

/// The computer function, as Qwen's cookbook declares it (named `name`: `computer_use`, or
/// `computer` for Qwen3.5); `(w, h)` is the resolution the model is told (the
/// smart-resized image, or 1000x1000 for relative coordinates).
pub fn computer_use(name: &str, w: u32, h: u32) -> Value {
    let description = format!(
        "Use a mouse and keyboard to interact with a computer, and take screenshots.\n\
         * This is an interface to a desktop GUI. You do not have access to a terminal or applications menu. You must click on desktop icons to start applications.\n\
         * Some applications may take time to start or process actions, so you may need to wait and take successive screenshots to see the results of your actions. E.g. if you click on Firefox and a window doesn't open, try wait and taking another screenshot.\n\
         * The screen's resolution is {w}x{h}.\n\
         * Whenever you intend to move the cursor to click on an element like an icon, you should consult a screenshot to determine the coordinates of the element before moving the cursor.\n\
         * If you tried clicking on a program or link but it failed to load, even after waiting, try adjusting your cursor position so that the tip of the cursor visually falls on the element that you want to click.\n\
         * Make sure to click any buttons, links, icons, etc with the cursor tip in the center of the element. Don't click boxes on their edges."
    );
    json!({
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "properties": {
                    "action": {
                        "description": "The action to perform. The available actions are:\n\
    * `key`: Performs key down presses on the arguments passed in order, then performs key releases in reverse order.\n\
    * `type`: Type a string of text on the keyboard.\n\
    * `mouse_move`: Move the cursor to a specified (x, y) pixel coordinate on the screen.\n\
    * `left_click`: Click the left mouse button at a specified (x, y) pixel coordinate on the screen.\n\
    * `left_click_drag`: Click and drag the cursor to a specified (x, y) pixel coordinate on the screen.\n\
    * `right_click`: Click the right mouse button at a specified (x, y) pixel coordinate on the screen.\n\
    * `middle_click`: Click the middle mouse button at a specified (x, y) pixel coordinate on the screen.\n\
    * `double_click`: Double-click the left mouse button at a specified (x, y) pixel coordinate on the screen.\n\
    * `triple_click`: Triple-click the left mouse button at a specified (x, y) pixel coordinate on the screen.\n\
    * `scroll`: Performs a scroll of the mouse scroll wheel.\n\
    * `hscroll`: Performs a horizontal scroll.\n\
    * `wait`: Wait specified seconds for the change to happen.\n\
    * `terminate`: Terminate the current task and report its completion status.\n\
    * `answer`: Answer a question.",
                        "enum": ["key", "type", "mouse_move", "left_click", "left_click_drag", "right_click",
                                 "middle_click", "double_click", "triple_click", "scroll", "hscroll", "wait",
                                 "terminate", "answer"],
                        "type": "string"
                    },
                    "keys": {"description": "Required only by `action=key`.", "type": "array"},
                    "text": {"description": "Required only by `action=type` and `action=answer`.", "type": "string"},
                    "coordinate": {"description": "(x, y): The x (pixels from the left edge) and y (pixels from the top edge) coordinates to move the mouse to.", "type": "array"},
                    "pixels": {"description": "The amount of scrolling to perform. Positive values scroll up, negative values scroll down. Required only by `action=scroll` and `action=hscroll`.", "type": "number"},
                    "time": {"description": "The seconds to wait. Required only by `action=wait`.", "type": "number"},
                    "status": {"description": "The status of the task. Required only by `action=terminate`.", "type": "string", "enum": ["success", "failure"]}
                },
                "required": ["action"],
                "type": "object"
            }
        }
    })
}

/// The resolution the model is told for a geometry.
fn told_size(g: &Geometry) -> (u32, u32) {
    if g.space == CoordSpace::Native || g.space == CoordSpace::Smart {
        g.sent
    } else {
        (1000, 1000)
    }
}

pub struct Qwen {
    geometry: Geometry,
    history: ChatHistory,
    /// The function declared through `tools` (and results sent as tool messages).
    native: bool,
    /// The function's name (`computer_use`, or `computer` for Qwen3.5).
    function: &'static str,
}

impl Qwen {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let (w, h) = told_size(&geometry);
        let function = match cfg.options.get("function") {
            Some(f) => FUNCTIONS
                .into_iter()
                .find(|n| n.eq_ignore_ascii_case(f.trim()))
                .ok_or_else(|| format!("option function is computer or computer_use, got '{f}'"))?,
            None if is_qwen35(&ModelId::new(&cfg.model)) => "computer",
            None => "computer_use",
        };
        let native = cfg.options.flag("native-tools")?;
        let tool = computer_use(function, w, h);
        let history = if native {
            let mut h = ChatHistory::new(None, cfg.keep_images);
            h.tools = Some(vec![tool]);
            h
        } else {
            let template = prompt(cfg.prompts.as_deref(), "qwen.md", PROMPT, &geometry)
                .map_err(|e| format!("reading the prompts: {e}"))?;
            let system = template.replace("{tools}", &tool.to_string());
            ChatHistory::new(Some(system), cfg.keep_images)
        };
        Ok(Self {
            geometry,
            history,
            native,
            function,
        })
    }
}

/// One `computer_use` call as an action in screen pixels.
pub fn to_action(args: &Value, g: &Geometry) -> Result<Action, InvalidAction> {
    let Some(args) = args.as_object() else {
        return Err(InvalidAction::new(
            "the arguments must be a JSON object like {\"action\": \"left_click\", \"coordinate\": [x, y]}",
        ));
    };
    let action = args
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| InvalidAction::new("`action` is missing"))?;
    let at = || -> Result<Option<crate::action::Point>, InvalidAction> {
        match args.get("coordinate") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(xy)) if xy.len() == 2 => match (xy[0].as_f64(), xy[1].as_f64()) {
                (Some(x), Some(y)) => g.to_screen(x, y).map(Some),
                _ => Err(InvalidAction::new("`coordinate` must be two numbers")),
            },
            Some(_) => Err(InvalidAction::new("`coordinate` must be [x, y]")),
        }
    };
    let needs_at =
        || at()?.ok_or_else(|| InvalidAction::new(format!("`{action}` needs `coordinate`")));
    // Qwen3.5 names modifier keys to hold in a click's `text` ("ctrl", "ctrl+shift").
    let modifiers = || -> Result<Vec<String>, InvalidAction> {
        let Some(t) = args.get("text").and_then(Value::as_str) else {
            return Ok(Vec::new());
        };
        let names: Vec<String> = t
            .split('+')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for n in &names {
            crate::keys::lookup(n).map_err(InvalidAction::new)?;
        }
        Ok(names)
    };
    let click = |button: Button, count: u8| -> Result<Action, InvalidAction> {
        Ok(Action::Click {
            coordinate: at()?,
            button,
            count,
            modifiers: modifiers()?,
        })
    };
    let text = || args.get("text").and_then(Value::as_str);
    let number = |k: &str| args.get(k).and_then(Value::as_f64);
    match action {
        "key" => {
            let keys: Vec<String> = match args.get("keys") {
                Some(Value::Array(ks)) => ks
                    .iter()
                    .map(|k| {
                        k.as_str()
                            .map(|k| {
                                if k == "+" {
                                    "plus".to_owned()
                                } else {
                                    k.to_owned()
                                }
                            })
                            .ok_or_else(|| InvalidAction::new("`keys` must be strings"))
                    })
                    .collect::<Result<_, _>>()?,
                Some(Value::String(k)) => vec![k.clone()],
                _ => {
                    return Err(InvalidAction::new(
                        "`key` needs `keys`, a list of key names",
                    ));
                }
            };
            if keys.is_empty() {
                return Err(InvalidAction::new("`keys` is empty"));
            }
            Ok(Action::Key {
                text: keys.join("+"),
            })
        }
        "type" => match text() {
            Some(t) if t.chars().count() <= MAX_TYPE_CHARS => Ok(Action::Type { text: t.into() }),
            Some(_) => Err(InvalidAction::new(format!(
                "at most {MAX_TYPE_CHARS} characters are typed at once"
            ))),
            None => Err(InvalidAction::new("`type` needs `text`")),
        },
        "mouse_move" => Ok(Action::MouseMove {
            coordinate: needs_at()?,
        }),
        "left_click" => click(Button::Left, 1),
        "right_click" => click(Button::Right, 1),
        "middle_click" => click(Button::Middle, 1),
        "double_click" => click(Button::Left, 2),
        "triple_click" => click(Button::Left, 3),
        "left_click_drag" => Ok(Action::Drag {
            path: vec![needs_at()?],
            button: Button::Left,
        }),
        "scroll" | "hscroll" => {
            let n = number("pixels")
                .ok_or_else(|| InvalidAction::new(format!("`{action}` needs `pixels`")))?;
            if n.fract() != 0.0 || n.abs() > f64::from(MAX_SCROLL_AMOUNT) {
                return Err(InvalidAction::new(format!(
                    "`pixels` is a whole number of wheel clicks within ±{MAX_SCROLL_AMOUNT}, got {n}"
                )));
            }
            // Positive scrolls up (and, for hscroll, right), as pyautogui does.
            let (dx, dy) = if action == "hscroll" {
                (n as i32, 0)
            } else {
                (0, -(n as i32))
            };
            Ok(Action::Scroll {
                coordinate: at()?,
                dx,
                dy,
                modifiers: Vec::new(),
            })
        }
        "wait" => {
            let t = number("time").unwrap_or(2.0);
            if !(0.0..=crate::action::MAX_DURATION_SECS).contains(&t) {
                return Err(InvalidAction::new("`time` must be 0 to 100 seconds"));
            }
            Ok(Action::Wait { duration: t })
        }
        "terminate" => match args.get("status").and_then(Value::as_str) {
            Some("success") => Ok(Action::Done { answer: None }),
            Some("failure") => Ok(Action::Fail {
                reason: "the model terminated with status failure".into(),
            }),
            other => Err(InvalidAction::new(format!(
                "`terminate` needs `status` success or failure, got {other:?}"
            ))),
        },
        "answer" => Ok(Action::Done {
            answer: text().map(str::to_owned),
        }),
        other => Err(InvalidAction::new(format!(
            "`{other}` is not an action of computer_use"
        ))),
    }
}

/// A tool call as a [`Call`].
fn call_of(c: &ToolCall, g: &Geometry, function: &str) -> Call {
    let action = if !FUNCTIONS.contains(&c.name.as_str()) {
        Err(InvalidAction::new(format!(
            "there is no function named '{}'; use `{function}`",
            c.name
        )))
    } else if let Value::String(raw) = &c.arguments {
        Err(InvalidAction::new(format!(
            "the arguments are not valid JSON: {}",
            raw.chars().take(200).collect::<String>()
        )))
    } else {
        to_action(&c.arguments, g)
    };
    Call {
        id: c.id.clone(),
        input: c.arguments.clone(),
        action,
    }
}

impl Protocol for Qwen {
    fn name(&self) -> ProtocolName {
        ProtocolName::of(&SPEC)
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn begin(&mut self, instruction: &str, shot: &Shot) {
        self.history.user_text_image(instruction, shot);
    }

    fn user_message(&mut self, text: &str) {
        self.history.user_text(text);
    }

    fn request(&self) -> (ModelRequest, Value) {
        self.history.request()
    }

    fn decode(&self, raw: &Value) -> Result<Decision, DecodeError> {
        // parse_chat reads a parsed `tool_calls` entry, `<tool_call>` JSON and XML text.
        let reply = parse_chat(raw)?;
        let calls: Vec<Call> = reply
            .tool_calls
            .iter()
            .map(|c| call_of(c, &self.geometry, self.function))
            .collect();
        // Call markup the text holds but that did not parse: a mistake, not an answer.
        let calls = match reply.text.as_deref().and_then(call_markup) {
            Some(markup) if calls.is_empty() => vec![Call {
                id: "0".into(),
                input: Value::String(reply.text.clone().unwrap_or_default()),
                action: Err(InvalidAction::new(format!(
                    "the {markup} call did not parse; write <tool_call>{{\"name\": \"{}\", \"arguments\": {{...}}}}</tool_call>",
                    self.function
                ))),
            }],
            _ => calls,
        };
        let thought = reply.reasoning.clone().or_else(|| {
            reply
                .text
                .as_deref()
                .filter(|_| !calls.is_empty())
                .map(str::to_owned)
        });
        Ok(Decision {
            thought,
            text: reply.text,
            calls,
            usage: reply.usage,
            safety: Vec::new(),
            grounding: Vec::new(),
        })
    }

    fn assistant(&mut self, raw: &Value, decision: &Decision) {
        if self.native {
            let mut message = raw["choices"][0]["message"].clone();
            if message.is_null() {
                message = json!({"role": "assistant", "content": decision.text});
            }
            message["role"] = json!("assistant");
            self.history.assistant_message(message);
        } else {
            // As the model wrote it, tool call text included.
            let text = raw["choices"][0]["message"]["content"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    let mut t = decision.text.clone().unwrap_or_default();
                    for c in &decision.calls {
                        t.push_str(&format!(
                            "\n<tool_call>\n{}\n</tool_call>",
                            json!({"name": self.function, "arguments": c.input})
                        ));
                    }
                    t
                });
            self.history.assistant_text(&text);
        }
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, _note: &str) {
        if self.native {
            for r in results {
                let text = if r.is_error {
                    format!("error: {}", r.text)
                } else {
                    r.text.clone()
                };
                self.history.tool_result(&r.id, &text);
            }
            self.history.user_text_image("", shot);
        } else {
            self.history.user_text_image(&result_lines(results), shot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Point;
    use crate::model::protocol::geometry;
    use pretty_assertions::assert_eq;

    fn qwen(space: CoordSpace, native: bool) -> Qwen {
        let mut cfg = ProtocolConfig {
            name: ProtocolName::of(&SPEC),
            space,
            ..ProtocolConfig::default()
        };
        if native {
            cfg.options.set("native-tools", "true");
        }
        Qwen::new(&cfg, geometry(&cfg, (1280, 800))).unwrap()
    }

    #[test]
    fn both_reply_forms_decode() {
        let q = qwen(CoordSpace::Thousand, false);
        // The documented template, as text.
        let text = "Action: Click the search box.\n<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"left_click\", \"coordinate\": [500, 382]}}\n</tool_call>";
        let d = q
            .decode(&crate::model::protocol::chat::text_reply(text))
            .unwrap();
        assert_eq!(d.thought.as_deref(), Some("Action: Click the search box."));
        assert_eq!(
            d.calls[0].action.as_ref().unwrap().points(),
            vec![Point::new(640, 306)]
        );
        // As vLLM's hermes parser hands it over: arguments as a JSON string.
        let d = q
            .decode(
                &json!({"choices": [{"message": {"content": "Action: Click the search box.",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "computer_use",
                "arguments": "{\"action\": \"left_click\", \"coordinate\": [500, 382]}"}}]}}]}),
            )
            .unwrap();
        assert_eq!(
            d.calls[0].action.as_ref().unwrap().points(),
            vec![Point::new(640, 306)]
        );
    }

    #[test]
    fn every_action_decodes() {
        let g = Geometry::pixels((1280, 800), (1288, 812), CoordSpace::Smart);
        let a = |v: Value| to_action(&v, &g);
        assert_eq!(
            a(json!({"action": "key", "keys": ["ctrl", "c"]})).unwrap(),
            Action::Key {
                text: "ctrl+c".into()
            }
        );
        assert_eq!(
            a(json!({"action": "type", "text": "héllo"})).unwrap(),
            Action::Type {
                text: "héllo".into()
            }
        );
        assert_eq!(
            a(json!({"action": "left_click", "coordinate": [644, 406]}))
                .unwrap()
                .points(),
            vec![Point::new(640, 400)]
        );
        assert!(matches!(
            a(json!({"action": "triple_click", "coordinate": [1, 1]})).unwrap(),
            Action::Click { count: 3, .. }
        ));
        assert!(matches!(
            a(json!({"action": "left_click_drag", "coordinate": [644, 406]})).unwrap(),
            Action::Drag { ref path, .. } if path.len() == 1
        ));
        assert!(matches!(
            a(json!({"action": "scroll", "pixels": -5})).unwrap(),
            Action::Scroll { dy: 5, dx: 0, .. }
        ));
        assert!(matches!(
            a(json!({"action": "hscroll", "pixels": 3})).unwrap(),
            Action::Scroll { dx: 3, dy: 0, .. }
        ));
        assert_eq!(
            a(json!({"action": "wait", "time": 1.5})).unwrap(),
            Action::Wait { duration: 1.5 }
        );
        assert_eq!(
            a(json!({"action": "terminate", "status": "success"})).unwrap(),
            Action::Done { answer: None }
        );
        assert!(matches!(
            a(json!({"action": "terminate", "status": "failure"})).unwrap(),
            Action::Fail { .. }
        ));
        assert_eq!(
            a(json!({"action": "answer", "text": "42"})).unwrap(),
            Action::Done {
                answer: Some("42".into())
            }
        );
        for (v, needle) in [
            (
                json!({"action": "left_click", "coordinate": [1288, 5]}),
                "outside",
            ),
            (json!({"action": "fly"}), "not an action"),
            (json!({"action": "terminate"}), "status"),
            (json!({"action": "key"}), "keys"),
            (json!({"action": "mouse_move"}), "coordinate"),
            (json!("left_click"), "JSON object"),
        ] {
            let e = a(v.clone()).unwrap_err().to_string();
            assert!(e.contains(needle), "{v}: {e}");
        }
    }

    #[test]
    fn the_declaration_names_the_space_the_model_answers_in() {
        let q25 = qwen(CoordSpace::Smart, false);
        let (req, _) = q25.request();
        assert!(req.body.to_string().contains("1288x812"));
        let q3 = qwen(CoordSpace::Thousand, true);
        let (req, _) = q3.request();
        assert!(req.body["tools"].to_string().contains("1000x1000"));
    }
}
