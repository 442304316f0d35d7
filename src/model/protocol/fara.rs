//! `fara`: Microsoft's Fara-7B and Fara-1.5 over chat completions. The system prompt is
//! Qwen-Agent's function prompt around Fara's `computer_use` function (prompts/fara.md,
//! after microsoft/fara's `_prompts.py`); a reply is free "thoughts" text, then
//! `<tool_call>{"name": "computer_use", "arguments": {...}}</tool_call>`.
//!
//! Coordinates: pixels of the smart-resized screenshot (factor 28, at least 3,136 and at
//! most 12,845,056 pixels), sent at that size. Actions: `key(keys[])`, `type(text,
//! press_enter, delete_existing_text, coordinate?)` (clicks there first, clears, types;
//! Enter by default, as Fara's agent does), `mouse_move`, `left_click`, `scroll(pixels)`
//! (positive is up; page pixels, about 50 a wheel click), `visit_url`, `web_search`,
//! `history_back`, `refresh` (in the desktop's browser), `pause_and_memorize_fact` (kept
//! and shown to the model in every later turn), `wait(time)`, `terminate(status)`; and
//! Fara-1.5's `double_click`, `right_click`, `triple_click`, `left_click_drag`, `hscroll`
//! and `ask_user_question` (the TUI asks; headless it ends `needs_user`). At most three
//! screenshots are kept, as Fara's agent keeps them.

use super::chat::{ChatHistory, call_markup, parse_chat, result_lines};
use super::{
    Call, CallResult, CoordSpace, DecodeError, Decision, Example, Geometry, ModelId, Protocol,
    ProtocolConfig, ProtocolName, Shot, Spec, prompt, smart_size,
};
use crate::action::{Action, Button, InvalidAction, MAX_SCROLL_AMOUNT, MAX_TYPE_CHARS, Point};
use crate::model::ModelRequest;
use serde_json::{Value, json};

const PROMPT: &str = include_str!("../../../prompts/fara.md");

/// What `fara` is (see [`Spec`]).
pub struct FaraSpec;

pub static SPEC: FaraSpec = FaraSpec;

impl Spec for FaraSpec {
    fn name(&self) -> &'static str {
        "fara"
    }

    fn wire(&self) -> &'static str {
        "chat completions, thoughts then a `computer_use` <tool_call>"
    }

    fn detect(&self, m: &ModelId) -> Option<CoordSpace> {
        m.has("fara").then_some(CoordSpace::Smart)
    }

    fn detects(&self) -> &'static str {
        "`*fara*` (smart)"
    }

    fn default_space(&self, _model: &ModelId) -> CoordSpace {
        CoordSpace::Smart
    }

    fn sent_size(&self, cfg: &ProtocolConfig, screen: (u32, u32)) -> (u32, u32) {
        match cfg.space {
            CoordSpace::Smart => smart_size(screen, 28, 3136, 12_845_056),
            _ => cfg.target.size(screen),
        }
    }

    fn example(&self) -> Example {
        Example {
            model: "microsoft/Fara-7B",
            reply: json!({"choices": [{"message": {"role": "assistant", "content":
                "The button is there; I click it.\n<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"left_click\", \"coordinate\": [500, 300]}}\n</tool_call>"}}],
                "usage": {"prompt_tokens": 1500, "completion_tokens": 40}}),
        }
    }

    fn create(
        &self,
        cfg: &ProtocolConfig,
        geometry: Geometry,
    ) -> Result<Box<dyn Protocol>, String> {
        Ok(Box::new(Fara::new(cfg, geometry)?))
    }
}

/// Fara's `computer_use` function, for a screenshot of `w`x`h` pixels.
fn function(w: u32, h: u32) -> Value {
    json!({
        "name": "computer_use",
        "description": format!("Use a mouse and keyboard to interact with a computer, and take screenshots.\n\
* This is an interface to a desktop GUI with a web browser.\n\
* The screen's resolution is {w}x{h}.\n\
* Whenever you intend to move the cursor to click on an element like an icon, you should consult a screenshot to determine the coordinates of the element before moving the cursor.\n\
* Make sure to click any buttons, links, icons, etc with the cursor tip in the center of the element.\n\
* If a popup window appears that you want to close, if left_click() on the 'X' or close button doesn't work, try key(keys=['Escape']) to close it."),
        "parameters": {
            "properties": {
                "action": {
                    "description": "The action to perform. The available actions are:\n\
* `key`: Performs key down presses on the arguments passed in order, then performs key releases in reverse order.\n\
* `type`: Type a string of text on the keyboard.\n\
* `mouse_move`: Move the cursor to a specified (x, y) pixel coordinate on the screen.\n\
* `left_click`: Click the left mouse button.\n\
* `double_click`, `right_click`, `triple_click`: Click at a specified (x, y) pixel coordinate.\n\
* `left_click_drag`: Drag from `start_coordinate` to `coordinate`.\n\
* `scroll`, `hscroll`: Scroll by `pixels` (positive up or right).\n\
* `visit_url`: Visit a specified URL.\n\
* `web_search`: Perform a web search with a specified query.\n\
* `history_back`: Go back to the previous page in the browser history.\n\
* `refresh`: Refresh the current webpage.\n\
* `pause_and_memorize_fact`: Pause and memorize a fact for future reference.\n\
* `ask_user_question`: Ask the user a question and wait for the answer.\n\
* `wait`: Wait specified number of seconds.\n\
* `terminate`: Terminate the current task and report its completion status.",
                    "enum": ["key", "type", "mouse_move", "left_click", "double_click", "right_click",
                             "triple_click", "left_click_drag", "scroll", "hscroll", "visit_url",
                             "web_search", "history_back", "refresh", "pause_and_memorize_fact",
                             "ask_user_question", "wait", "terminate"],
                    "type": "string"
                },
                "keys": {"description": "Required only by `action=key`.", "type": "array"},
                "text": {"description": "Required only by `action=type`.", "type": "string"},
                "press_enter": {"description": "Whether to press the Enter key after typing. Required only by `action=type`.", "type": "boolean"},
                "delete_existing_text": {"description": "Whether to delete existing text before typing. Required only by `action=type`.", "type": "boolean"},
                "coordinate": {"description": "(x, y): The x (pixels from the left edge) and y (pixels from the top edge) coordinates.", "type": "array"},
                "start_coordinate": {"description": "(x, y): Where `left_click_drag` starts.", "type": "array"},
                "pixels": {"description": "The amount of scrolling to perform. Positive values scroll up, negative values scroll down.", "type": "number"},
                "url": {"description": "The URL to visit. Required only by `action=visit_url`.", "type": "string"},
                "query": {"description": "The query to search for. Required only by `action=web_search`.", "type": "string"},
                "fact": {"description": "The fact to remember for the future. Required only by `action=pause_and_memorize_fact`.", "type": "string"},
                "question": {"description": "The question for the user. Required only by `action=ask_user_question`.", "type": "string"},
                "time": {"description": "The seconds to wait. Required only by `action=wait`.", "type": "number"},
                "status": {"description": "The status of the task. Required only by `action=terminate`.", "type": "string", "enum": ["success", "failure"]}
            },
            "required": ["action"],
            "type": "object"
        }
    })
}

pub struct Fara {
    geometry: Geometry,
    history: ChatHistory,
    /// Facts the model asked to keep (`pause_and_memorize_fact`), shown every turn.
    facts: Vec<String>,
}

impl Fara {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let template = prompt(cfg.prompts.as_deref(), "fara.md", PROMPT, &geometry)
            .map_err(|e| format!("reading the prompts: {e}"))?;
        let system = template.replace(
            "{tools}",
            &function(geometry.sent.0, geometry.sent.1).to_string(),
        );
        Ok(Self {
            geometry,
            history: ChatHistory::new(Some(system), cfg.keep_images.min(3)),
            facts: Vec::new(),
        })
    }

    /// The turn's text: what went wrong, and the facts kept so far.
    fn turn_text(&self, results: &[CallResult]) -> String {
        let mut text = result_lines(results);
        if !self.facts.is_empty() {
            text.push_str("Facts you memorized:\n");
            for f in &self.facts {
                text.push_str(&format!("- {f}\n"));
            }
        }
        text
    }
}

/// Page pixels of a Fara scroll as wheel clicks (at least one).
fn scroll_clicks(pixels: f64) -> Result<i32, InvalidAction> {
    if !pixels.is_finite() || pixels == 0.0 {
        return Err(InvalidAction::new("`pixels` must be a non-zero number"));
    }
    let n = (pixels.abs() / crate::action::PIXELS_PER_NOTCH).round().max(1.0);
    if n > f64::from(MAX_SCROLL_AMOUNT) {
        return Err(InvalidAction::new(format!(
            "scroll at most {} pixels at once",
            f64::from(MAX_SCROLL_AMOUNT) * crate::action::PIXELS_PER_NOTCH
        )));
    }
    Ok(n as i32 * pixels.signum() as i32)
}

/// One `computer_use` call as the actions it stands for, in screen pixels (`type` at a
/// point clicks and clears first).
pub fn to_actions(args: &Value, g: &Geometry) -> Result<Vec<Action>, InvalidAction> {
    let Some(args) = args.as_object() else {
        return Err(InvalidAction::new(
            "the arguments must be a JSON object like {\"action\": \"left_click\", \"coordinate\": [x, y]}",
        ));
    };
    let action = args
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| InvalidAction::new("`action` is missing"))?;
    let point = |key: &str| -> Result<Option<Point>, InvalidAction> {
        match args.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(xy)) if xy.len() == 2 => match (xy[0].as_f64(), xy[1].as_f64()) {
                (Some(x), Some(y)) => g.to_screen(x, y).map(Some),
                _ => Err(InvalidAction::new(format!("`{key}` must be two numbers"))),
            },
            Some(_) => Err(InvalidAction::new(format!("`{key}` must be [x, y]"))),
        }
    };
    let needs = |key: &str| {
        point(key)?.ok_or_else(|| InvalidAction::new(format!("`{action}` needs `{key}`")))
    };
    let click = |button: Button, count: u8| -> Result<Vec<Action>, InvalidAction> {
        Ok(vec![Action::Click {
            coordinate: point("coordinate")?,
            button,
            count,
            modifiers: Vec::new(),
        }])
    };
    let str_arg = |key: &str| -> Result<&str, InvalidAction> {
        args.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| InvalidAction::new(format!("`{action}` needs `{key}`")))
    };
    let flag = |key: &str, default: bool| match args.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => default,
    };
    let pixels = || {
        args.get("pixels")
            .and_then(Value::as_f64)
            .ok_or_else(|| InvalidAction::new(format!("`{action}` needs `pixels`")))
    };
    Ok(match action {
        "key" => {
            let keys: Vec<&str> = match args.get("keys") {
                Some(Value::Array(ks)) => ks.iter().filter_map(Value::as_str).collect(),
                Some(Value::String(k)) => vec![k.as_str()],
                _ => Vec::new(),
            };
            if keys.is_empty() {
                return Err(InvalidAction::new("`key` needs `keys`, a list of key names"));
            }
            let text = keys
                .iter()
                .map(|k| if *k == "+" { "plus" } else { k })
                .collect::<Vec<_>>()
                .join("+");
            crate::keys::parse_sequence(&text).map_err(InvalidAction::new)?;
            vec![Action::Key { text }]
        }
        "type" => {
            let text = str_arg("text")?;
            if text.chars().count() > MAX_TYPE_CHARS {
                return Err(InvalidAction::new(format!(
                    "at most {MAX_TYPE_CHARS} characters are typed at once"
                )));
            }
            let mut out = Vec::new();
            if let Some(at) = point("coordinate")? {
                out.push(Action::Click {
                    coordinate: Some(at),
                    button: Button::Left,
                    count: 1,
                    modifiers: Vec::new(),
                });
            }
            if flag("delete_existing_text", false) {
                out.push(Action::Key {
                    text: "ctrl+a BackSpace".into(),
                });
            }
            out.push(Action::Type {
                text: if flag("press_enter", true) {
                    format!("{text}\n")
                } else {
                    text.to_owned()
                },
            });
            out
        }
        "mouse_move" => vec![Action::MouseMove {
            coordinate: needs("coordinate")?,
        }],
        "left_click" => click(Button::Left, 1)?,
        "double_click" => click(Button::Left, 2)?,
        "triple_click" => click(Button::Left, 3)?,
        "right_click" => click(Button::Right, 1)?,
        "left_click_drag" => {
            let to = needs("coordinate")?;
            let path = match point("start_coordinate")? {
                Some(from) => vec![from, to],
                None => vec![to],
            };
            vec![Action::Drag {
                path,
                button: Button::Left,
            }]
        }
        "scroll" | "hscroll" => {
            let n = scroll_clicks(pixels()?)?;
            // Positive scrolls up (and, for hscroll, right).
            let (dx, dy) = if action == "hscroll" { (n, 0) } else { (0, -n) };
            vec![Action::Scroll {
                coordinate: point("coordinate")?,
                dx,
                dy,
                modifiers: Vec::new(),
            }]
        }
        "visit_url" => vec![Action::navigate(Some(str_arg("url")?))?],
        "web_search" => {
            let query: String = str_arg("query")?
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    b' ' => "+".into(),
                    other => format!("%{other:02X}"),
                })
                .collect();
            vec![Action::navigate(Some(&format!(
                "{}?q={query}",
                super::gemini::SEARCH_URL
            )))?]
        }
        "history_back" => vec![Action::Key {
            text: "alt+Left".into(),
        }],
        "refresh" => vec![Action::Key { text: "F5".into() }],
        "pause_and_memorize_fact" => vec![Action::Memorize {
            fact: str_arg("fact")?.to_owned(),
        }],
        "ask_user_question" => vec![Action::CallUser {
            question: args.get("question").and_then(Value::as_str).map(str::to_owned),
        }],
        "read_page_answer_question" => {
            return Err(InvalidAction::new(
                "read_page_answer_question is not available on this desktop; read the page from the screenshot",
            ));
        }
        "wait" => {
            let t = args.get("time").and_then(Value::as_f64).unwrap_or(3.0);
            if !(0.0..=crate::action::MAX_DURATION_SECS).contains(&t) {
                return Err(InvalidAction::new("`time` must be 0 to 100 seconds"));
            }
            vec![Action::Wait { duration: t }]
        }
        "terminate" => match args.get("status").and_then(Value::as_str) {
            Some("success") => vec![Action::Done {
                answer: args.get("answer").and_then(Value::as_str).map(str::to_owned),
            }],
            Some("failure") => vec![Action::Fail {
                reason: "the model terminated with status failure".into(),
            }],
            other => {
                return Err(InvalidAction::new(format!(
                    "`terminate` needs `status` success or failure, got {other:?}"
                )));
            }
        },
        other => {
            return Err(InvalidAction::new(format!(
                "`{other}` is not an action of computer_use"
            )));
        }
    })
}

impl Protocol for Fara {
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
        let reply = parse_chat(raw)?;
        let mut calls = Vec::new();
        for c in &reply.tool_calls {
            let input = c.arguments.clone();
            let actions = if c.name != "computer_use" {
                Err(InvalidAction::new(format!(
                    "there is no function named '{}'; use `computer_use`",
                    c.name
                )))
            } else {
                to_actions(&c.arguments, &self.geometry)
            };
            match actions {
                Ok(list) => calls.extend(list.into_iter().map(|a| Call {
                    id: c.id.clone(),
                    input: input.clone(),
                    action: Ok(a),
                })),
                Err(e) => calls.push(Call {
                    id: c.id.clone(),
                    input,
                    action: Err(e),
                }),
            }
        }
        if calls.is_empty()
            && let Some(markup) = reply.text.as_deref().and_then(call_markup)
        {
            calls.push(Call {
                id: "0".into(),
                input: Value::String(reply.text.clone().unwrap_or_default()),
                action: Err(InvalidAction::new(format!(
                    "the {markup} call did not parse; write <tool_call>{{\"name\": \"computer_use\", \"arguments\": {{...}}}}</tool_call>"
                ))),
            });
        }
        let thought = reply
            .reasoning
            .clone()
            .or_else(|| reply.text.clone().filter(|_| !calls.is_empty()));
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
        for c in &decision.calls {
            if let Ok(Action::Memorize { fact }) = &c.action {
                self.facts.push(fact.clone());
            }
        }
        let text = raw["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let mut t = decision.text.clone().unwrap_or_default();
                let mut seen: Vec<&str> = Vec::new();
                for c in &decision.calls {
                    if seen.contains(&c.id.as_str()) {
                        continue;
                    }
                    seen.push(&c.id);
                    t.push_str(&format!(
                        "\n<tool_call>\n{}\n</tool_call>",
                        json!({"name": "computer_use", "arguments": c.input})
                    ));
                }
                t
            });
        self.history.assistant_text(&text);
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, _note: &str) {
        let text = self.turn_text(results);
        self.history.user_text_image(&text, shot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::protocol::geometry;
    use pretty_assertions::assert_eq;

    fn fara() -> Fara {
        let cfg = ProtocolConfig::for_model(ProtocolName::of(&SPEC), "microsoft/Fara-7B");
        Fara::new(&cfg, geometry(&cfg, (1280, 800))).unwrap()
    }

    use crate::model::protocol::chat::text_reply as chat;

    #[test]
    fn thoughts_then_a_tool_call_decode_in_smart_pixels() {
        let f = fara();
        assert_eq!(f.geometry().sent, (1288, 812));
        let d = f
            .decode(&chat("I should type the address.\n<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"type\", \"text\": \"hello\", \"coordinate\": [644, 406], \"press_enter\": true, \"delete_existing_text\": true}}\n</tool_call>"))
            .unwrap();
        assert_eq!(d.thought.as_deref(), Some("I should type the address."));
        let actions: Vec<Action> = d.calls.iter().map(|c| c.action.clone().unwrap()).collect();
        assert_eq!(actions[0].points(), vec![Point::new(640, 400)]);
        assert_eq!(
            actions[1],
            Action::Key {
                text: "ctrl+a BackSpace".into()
            }
        );
        assert_eq!(
            actions[2],
            Action::Type {
                text: "hello\n".into()
            }
        );
        assert!(d.calls.iter().all(|c| c.id == d.calls[0].id));
    }

    #[test]
    fn every_action_decodes_or_says_why_not() {
        let g = fara().geometry();
        let a = |v: Value| to_actions(&v, &g);
        assert!(matches!(
            a(json!({"action": "scroll", "pixels": 200})).unwrap()[0],
            Action::Scroll { dy: -4, .. }
        ));
        assert!(matches!(
            a(json!({"action": "hscroll", "pixels": -100})).unwrap()[0],
            Action::Scroll { dx: -2, .. }
        ));
        assert_eq!(
            a(json!({"action": "visit_url", "url": "example.com"})).unwrap()[0],
            Action::Navigate {
                url: Some("https://example.com".into())
            }
        );
        assert!(
            a(json!({"action": "web_search", "query": "rust vnc"})).unwrap()[0]
                == Action::Navigate {
                    url: Some(format!("{}?q=rust+vnc", crate::model::protocol::gemini::SEARCH_URL))
                }
        );
        assert!(a(json!({"action": "visit_url", "url": "file:///etc/passwd"})).is_err());
        assert_eq!(
            a(json!({"action": "pause_and_memorize_fact", "fact": "the price is 10"})).unwrap()[0],
            Action::Memorize {
                fact: "the price is 10".into()
            }
        );
        assert!(matches!(
            a(json!({"action": "ask_user_question", "question": "which one?"})).unwrap()[0],
            Action::CallUser { .. }
        ));
        assert!(matches!(
            a(json!({"action": "terminate", "status": "failure"})).unwrap()[0],
            Action::Fail { .. }
        ));
        assert!(a(json!({"action": "left_click", "coordinate": [1288, 3]})).is_err());
        assert!(a(json!({"action": "read_page_answer_question"})).is_err());
    }

    #[test]
    fn memorized_facts_come_back_every_turn() {
        let mut f = fara();
        let shot = |s: &str| Shot::named(s);
        f.begin("find the price", &shot("a"));
        let raw = chat("Noting it.\n<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"pause_and_memorize_fact\", \"fact\": \"the price is 10\"}}\n</tool_call>");
        let d = f.decode(&raw).unwrap();
        f.assistant(&raw, &d);
        f.results(&[], &shot("b"), "");
        let (req, _) = f.request();
        assert!(req.body.to_string().contains("the price is 10"));
    }
}
