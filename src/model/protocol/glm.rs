//! `glm`: Zhipu's GLM-4.5V / GLM-4.6V in their PC agent format over chat completions.
//! Every request is one user turn: the prompt (prompts/glm.md: the task, the action rules,
//! the history of earlier steps and the model's current memory) and the latest
//! screenshots. A reply is an explanation, then one action between `<|begin_of_box|>` and
//! `<|end_of_box|>` written as a call (`left_click(start_box='[x,y]')`), then `Memory:` and
//! a JSON list the harness sends back next turn (after cua's `glm45v` loop and OSWorld's
//! GLM harness).
//!
//! Coordinates are thousandths of the screen (0-999). Actions: `left_click`,
//! `right_click`, `middle_click`, `hover`, `left_double_click` (`start_box`),
//! `left_drag(start_box, end_box)`, `key(keys='ctrl+c')` ('+' joins), `type(content=…)`,
//! `scroll(start_box, direction, step)` (`step` wheel clicks), `WAIT()` (5 s), `DONE()`,
//! `FAIL()`. A reply without an action is a mistake fed back, never an answer: the
//! episode ends at `DONE()`.

use super::chat::{answer_text, parse_chat};
use super::pycode::{Lit, PyCall, calls};
use super::uitars::point;
use super::{
    Call, CallResult, CoordSpace, DecodeError, Decision, Example, Geometry, Images, ModelId,
    OMITTED, Protocol, ProtocolConfig, ProtocolName, Shot, Spec, prompt,
};
use crate::action::{Action, Button, InvalidAction, MAX_SCROLL_AMOUNT, MAX_TYPE_CHARS};
use crate::model::{Auth, ModelRequest};
use serde_json::{Value, json};

const PROMPT: &str = include_str!("../../../prompts/glm.md");

/// Seconds `WAIT()` waits.
const WAIT_SECS: f64 = 5.0;

const BOX_OPEN: &str = "<|begin_of_box|>";
const BOX_CLOSE: &str = "<|end_of_box|>";

/// What `glm` is (see [`Spec`]).
pub struct GlmSpec;

pub static SPEC: GlmSpec = GlmSpec;

impl Spec for GlmSpec {
    fn name(&self) -> &'static str {
        "glm"
    }

    fn wire(&self) -> &'static str {
        "chat completions, an action between <|begin_of_box|> tokens, then Memory:"
    }

    /// The vision models: a version part ending in `v` (`glm-4.5v`, `GLM-4.6V-Flash`,
    /// `glm-4.1v-thinking`); the text-only GLMs cannot see a screen.
    fn detect(&self, m: &ModelId) -> Option<CoordSpace> {
        let vision = m
            .base
            .split(['-', '_'])
            .any(|p| p.ends_with('v') && p.starts_with(|c: char| c.is_ascii_digit()));
        (m.has("glm") && vision).then_some(CoordSpace::NineNineNine)
    }

    fn detects(&self) -> &'static str {
        "`*glm*v*` (GLM-4.5V, GLM-4.6V; 999)"
    }

    fn default_space(&self, _model: &ModelId) -> CoordSpace {
        CoordSpace::NineNineNine
    }

    fn example(&self) -> Example {
        Example {
            model: "zai-org/GLM-4.5V",
            reply: json!({"choices": [{"message": {"role": "assistant", "content":
                "The button is in the middle; I click it.\n<|begin_of_box|>left_click(start_box='[390,375]', element_info='button')<|end_of_box|>\nMemory:\n[]"}}],
                "usage": {"prompt_tokens": 1500, "completion_tokens": 40}}),
        }
    }

    fn create(
        &self,
        cfg: &ProtocolConfig,
        geometry: Geometry,
    ) -> Result<Box<dyn Protocol>, String> {
        Ok(Box::new(Glm::new(cfg, geometry)?))
    }
}

pub struct Glm {
    geometry: Geometry,
    template: String,
    instruction: String,
    /// Earlier steps, as the history section lists them.
    history: Vec<String>,
    /// The model's memory, as it last wrote it.
    memory: String,
    images: Images,
    /// The screenshots in order (references of `images`), each with the text that goes
    /// beside it.
    shots: Vec<(String, Option<String>)>,
    /// Notes for the next turn (a person's message, results that went wrong).
    notes: Vec<String>,
}

impl Glm {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let template = prompt(cfg.prompts.as_deref(), "glm.md", PROMPT, &geometry)
            .map_err(|e| format!("reading the prompts: {e}"))?;
        Ok(Self {
            geometry,
            template,
            instruction: String::new(),
            history: Vec::new(),
            memory: "[]".into(),
            images: Images::new(cfg.keep_images),
            shots: Vec::new(),
            notes: Vec::new(),
        })
    }

    fn text(&self) -> String {
        let history = if self.history.is_empty() {
            "(none yet)".to_owned()
        } else {
            self.history.join("\n")
        };
        let mut text = self
            .template
            .replace("{instruction}", &self.instruction)
            .replace("{history}", &history)
            .replace("{memory}", &self.memory);
        for n in &self.notes {
            text.push_str("\n\n");
            text.push_str(n);
        }
        text
    }

    fn body(&self, pixels: bool) -> Value {
        let mut content = vec![json!({"type": "text", "text": self.text()})];
        for (r, tree) in &self.shots {
            if !self.images.is_recent(r) {
                continue;
            }
            content.push(match (pixels, self.images.data_url(r)) {
                (true, Some(url)) => json!({"type": "image_url", "image_url": {"url": url}}),
                (true, None) => json!({"type": "text", "text": OMITTED}),
                (false, _) => json!({"type": "image_url", "image_url": {"url": r}}),
            });
            if let Some(tree) = tree {
                content.push(json!({"type": "text", "text": tree}));
            }
        }
        json!({"messages": [{"role": "user", "content": content}], "stream": false})
    }
}

/// The action text of a reply (between the box tokens), the explanation before it and the
/// memory after it.
fn split(text: &str) -> (Option<String>, Option<String>, Option<String>) {
    let (head, rest) = match text.find(BOX_OPEN) {
        Some(i) => (&text[..i], Some(&text[i + BOX_OPEN.len()..])),
        None => (text, None),
    };
    let (action, tail) = match rest {
        Some(r) => match r.find(BOX_CLOSE) {
            Some(j) => (Some(r[..j].trim().to_owned()), &r[j + BOX_CLOSE.len()..]),
            None => (Some(r.trim().to_owned()), ""),
        },
        None => (None, ""),
    };
    let memory = tail
        .find("Memory:")
        .map(|i| tail[i + "Memory:".len()..].trim().to_owned())
        .filter(|m| !m.is_empty());
    let head = head.split("Memory:").next().unwrap_or_default().trim();
    (
        Some(head.to_owned()).filter(|h| !h.is_empty()),
        action.filter(|a| !a.is_empty()),
        memory,
    )
}

fn str_arg<'a>(call: &'a PyCall, key: &str) -> Option<&'a str> {
    call.arg(key, 0).and_then(Lit::as_str)
}

/// One GLM call as an action in screen pixels.
pub fn to_action(call: &PyCall, g: &Geometry) -> Result<Action, InvalidAction> {
    let name = call.func();
    let at = |key: &str| -> Result<crate::action::Point, InvalidAction> {
        point(
            g,
            call.kwargs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .or_else(|| (key == "start_box").then(|| call.args.first()).flatten())
                .and_then(Lit::as_str)
                .ok_or_else(|| InvalidAction::new(format!("`{name}` needs {key}='[x,y]'")))?,
        )
    };
    let click = |button: Button, count: u8| -> Result<Action, InvalidAction> {
        Ok(Action::Click {
            coordinate: Some(at("start_box")?),
            button,
            count,
            modifiers: Vec::new(),
        })
    };
    match name {
        "left_click" | "click" => click(Button::Left, 1),
        "right_click" => click(Button::Right, 1),
        "middle_click" => click(Button::Middle, 1),
        "left_double_click" | "double_click" => click(Button::Left, 2),
        "left_triple_click" | "triple_click" => click(Button::Left, 3),
        "hover" => Ok(Action::MouseMove {
            coordinate: at("start_box")?,
        }),
        "left_drag" | "drag" => Ok(Action::Drag {
            path: vec![at("start_box")?, at("end_box")?],
            button: Button::Left,
        }),
        "key" | "hotkey" => {
            let keys = str_arg(call, "keys")
                .or_else(|| str_arg(call, "key"))
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .ok_or_else(|| InvalidAction::new("`key` needs keys='ctrl+c'"))?;
            crate::keys::parse_sequence(keys).map_err(InvalidAction::new)?;
            Ok(Action::Key {
                text: keys.to_owned(),
            })
        }
        "type" => {
            let text = str_arg(call, "content")
                .or_else(|| str_arg(call, "text"))
                .ok_or_else(|| InvalidAction::new("`type` needs content='…'"))?;
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
            let step = call
                .kwargs
                .iter()
                .find(|(k, _)| k == "step")
                .and_then(|(_, v)| v.as_f64())
                .unwrap_or(5.0);
            if step.fract() != 0.0 || !(1.0..=f64::from(MAX_SCROLL_AMOUNT)).contains(&step) {
                return Err(InvalidAction::new(format!(
                    "`step` is a whole number of wheel clicks from 1 to {MAX_SCROLL_AMOUNT}"
                )));
            }
            let n = step as i32;
            let (dx, dy) = match call
                .kwargs
                .iter()
                .find(|(k, _)| k == "direction")
                .and_then(|(_, v)| v.as_str())
            {
                Some("down") => (0, n),
                Some("up") => (0, -n),
                Some("left") => (-n, 0),
                Some("right") => (n, 0),
                other => {
                    return Err(InvalidAction::new(format!(
                        "scroll direction must be up or down, not {other:?}"
                    )));
                }
            };
            Ok(Action::Scroll {
                coordinate: Some(at("start_box")?),
                dx,
                dy,
                modifiers: Vec::new(),
            })
        }
        "screenshot" => Ok(Action::Screenshot),
        "WAIT" | "wait" => Ok(Action::Wait {
            duration: WAIT_SECS,
        }),
        "DONE" | "done" => Ok(Action::Done { answer: None }),
        "FAIL" | "fail" => Ok(Action::Fail {
            reason: "the model answered FAIL()".into(),
        }),
        other => Err(InvalidAction::new(format!(
            "`{other}` is not in the action space (left_click, right_click, middle_click, hover, \
             left_double_click, left_drag, key, type, scroll, WAIT, DONE, FAIL)"
        ))),
    }
}

impl Protocol for Glm {
    fn name(&self) -> ProtocolName {
        ProtocolName::of(&SPEC)
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn begin(&mut self, instruction: &str, shot: &Shot) {
        self.instruction = instruction.to_owned();
        let r = self.images.add(shot);
        self.shots.push((r, shot.tree.clone()));
    }

    fn user_message(&mut self, text: &str) {
        self.notes.push(text.to_owned());
    }

    fn request(&self) -> (ModelRequest, Value) {
        (
            ModelRequest {
                path: "/chat/completions".into(),
                body: self.body(true),
                headers: Vec::new(),
                auth: Auth::Bearer,
                blobs: self.images.blobs(),
                model_field: Default::default(),
            },
            self.body(false),
        )
    }

    fn decode(&self, raw: &Value) -> Result<Decision, DecodeError> {
        let reply = parse_chat(raw)?;
        let text = reply.text.clone().unwrap_or_default();
        let (explanation, action, _) = split(&text);
        let calls = match action {
            Some(a) => calls(&a)
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let (input, action) = match c {
                        Ok(call) => (
                            Value::String(call.source.clone()),
                            to_action(&call, &self.geometry),
                        ),
                        Err(e) => (Value::String(a.clone()), Err(InvalidAction::new(e))),
                    };
                    Call {
                        id: i.to_string(),
                        input,
                        action,
                    }
                })
                .collect(),
            // No boxed action: a mistake to report, never an answer.
            None => vec![Call {
                id: "0".into(),
                input: Value::String(text.chars().take(200).collect()),
                action: Err(InvalidAction::new(
                    "no action: write one action between <|begin_of_box|> and <|end_of_box|> (DONE() when the task is done)",
                )),
            }],
        };
        Ok(Decision {
            thought: reply.reasoning.clone().or(explanation),
            text: reply.text,
            calls,
            usage: reply.usage,
            safety: Vec::new(),
            grounding: Vec::new(),
        })
    }

    fn assistant(&mut self, raw: &Value, _decision: &Decision) {
        let text = answer_text(raw).unwrap_or_default();
        let (explanation, action, memory) = split(&text);
        if let Some(m) = memory {
            self.memory = m;
        }
        self.history.push(format!(
            "Step {}: {}{}",
            self.history.len() + 1,
            explanation.map(|e| format!("{e} ")).unwrap_or_default(),
            action.unwrap_or_else(|| "(no action)".into())
        ));
        self.notes.clear();
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, note: &str) {
        let problems = super::chat::result_lines(results);
        if !problems.is_empty() {
            self.notes.push(problems);
        }
        if results.is_empty() {
            self.notes.push(note.to_owned());
        }
        let r = self.images.add(shot);
        self.shots.push((r, shot.tree.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Point;
    use crate::model::protocol::geometry;
    use pretty_assertions::assert_eq;

    fn glm() -> Glm {
        let cfg = ProtocolConfig::for_model(ProtocolName::of(&SPEC), "zai-org/GLM-4.5V");
        Glm::new(&cfg, geometry(&cfg, (1280, 800))).unwrap()
    }

    use crate::model::protocol::chat::text_reply as chat;

    #[test]
    fn a_boxed_action_decodes_on_the_thousandths_grid() {
        let g = glm();
        assert_eq!(g.geometry().space, CoordSpace::NineNineNine);
        let d = g
            .decode(&chat("I click the middle.\n<|begin_of_box|>left_click(start_box='[500,500]', element_info='x')<|end_of_box|>\nMemory:\n[{\"seen\": \"menu\"}]"))
            .unwrap();
        assert_eq!(d.thought.as_deref(), Some("I click the middle."));
        assert_eq!(
            d.calls[0].action.as_ref().unwrap().points(),
            vec![Point::new(641, 400)]
        );
        for (text, want) in [
            ("<|begin_of_box|>key(keys='ctrl+c')<|end_of_box|>", Action::Key { text: "ctrl+c".into() }),
            ("<|begin_of_box|>type(content='hi\\n')<|end_of_box|>", Action::Type { text: "hi\n".into() }),
            ("<|begin_of_box|>WAIT()<|end_of_box|>", Action::Wait { duration: WAIT_SECS }),
            ("<|begin_of_box|>DONE()<|end_of_box|>", Action::Done { answer: None }),
        ] {
            assert_eq!(g.decode(&chat(text)).unwrap().calls[0].action, Ok(want), "{text}");
        }
        assert!(matches!(
            g.decode(&chat("<|begin_of_box|>scroll(start_box='[10,10]', direction='down', step=3)<|end_of_box|>"))
                .unwrap()
                .calls[0]
                .action,
            Ok(Action::Scroll { dy: 3, .. })
        ));
        // No action at all: not an answer.
        let d = g.decode(&chat("I think the task is complete.")).unwrap();
        assert!(d.calls[0].action.is_err());
        assert!(g.decode(&chat("<|begin_of_box|>left_click(start_box='[1000,5]')<|end_of_box|>")).unwrap().calls[0].action.is_err());
    }

    #[test]
    fn memory_and_history_go_back_to_the_model() {
        let mut g = glm();
        let shot = |s: &str| Shot::named(s);
        g.begin("open the menu", &shot("a"));
        let raw = chat("Opening it.\n<|begin_of_box|>left_click(start_box='[10,10]')<|end_of_box|>\nMemory:\n[{\"menu\": \"top left\"}]");
        let d = g.decode(&raw).unwrap();
        g.assistant(&raw, &d);
        g.results(&[], &shot("b"), "after");
        let (req, _) = g.request();
        let text = req.body["messages"][0]["content"][0]["text"].as_str().unwrap().to_owned();
        assert!(text.contains("open the menu"));
        assert!(text.contains("Step 1: Opening it. left_click(start_box='[10,10]')"));
        assert!(text.contains("[{\"menu\": \"top left\"}]"));
        assert_eq!(req.body["messages"].as_array().unwrap().len(), 1);
    }
}
