//! `tools`: OpenAI function calling (chat completions) with one `computer` function whose
//! arguments follow Anthropic's computer tool input (computer_20250124), screenshots as
//! image parts, coordinates in pixels of the screenshot the model saw.
//!
//! Screenshots go in as user messages after the tool results (OpenAI accepts images only
//! there; `image_in_tool` puts them in the tool message for servers that take that). Only
//! the last `keep_images` are sent as images; older ones become a note, as Anthropic's demo
//! does, so requests do not grow without bound.

use super::chat::{ToolCall, call_markup, parse_chat};
use super::grounding::Ground;
use super::{
    Call, CallResult, CoordSpace, DecodeError, Decision, Example, Geometry, Images, ModelId,
    OMITTED, OptionDoc, Protocol, ProtocolConfig, ProtocolName, Shot, Spec, prompt,
};
use crate::action::{Action, InvalidAction};
use crate::model::{Auth, ModelRequest};
use serde_json::{Value, json};

/// The embedded system prompt (prompts/system.md).
const SYSTEM_PROMPT: &str = include_str!("../../../prompts/system.md");
/// The planner's system prompt (prompts/planner.md), for `--grounder`.
const PLANNER_PROMPT: &str = include_str!("../../../prompts/planner.md");

/// Pointer actions that need a place: a planner must name an element for them.
const NEEDS_ELEMENT: [&str; 2] = ["mouse_move", "left_click_drag"];

/// What `tools` is (see [`Spec`]).
pub struct ToolsSpec;

pub static SPEC: ToolsSpec = ToolsSpec;

impl Spec for ToolsSpec {
    fn name(&self) -> &'static str {
        "tools"
    }

    fn wire(&self) -> &'static str {
        "chat completions, one `computer` function (Anthropic's input shape)"
    }

    /// Every model no other protocol claims: any OpenAI-compatible server.
    fn detect(&self, _model: &ModelId) -> Option<CoordSpace> {
        Some(CoordSpace::Native)
    }

    fn detects(&self) -> &'static str {
        "anything else"
    }

    fn options(&self) -> &'static [OptionDoc] {
        &[
            OptionDoc {
                key: "image-in-tool",
                help: "screenshots in the tool message (servers that accept it) instead of a user message (--image-in-tool)",
            },
            OptionDoc {
                key: "planner",
                help: "plan for a grounder: pointer actions name an `element` in words instead of coordinates (set by --grounder)",
            },
        ]
    }

    fn observes_text(&self) -> bool {
        true
    }

    fn example(&self) -> Example {
        Example {
            model: "gpt-4o",
            reply: json!({"choices": [{"message": {"role": "assistant", "content": "Clicking the button.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "computer",
            "arguments": "{\"action\": \"left_click\", \"coordinate\": [500, 300]}"}}]}}],
            "usage": {"prompt_tokens": 1500, "completion_tokens": 40}}),
        }
    }

    fn create(
        &self,
        cfg: &ProtocolConfig,
        geometry: Geometry,
    ) -> Result<Box<dyn Protocol>, String> {
        Ok(Box::new(Tools::new(cfg, geometry)?))
    }
}

/// The `computer` tool, described for a screen of `w`x`h` pixels; without `pixels`
/// (`--observe a11y`) its observations are the accessibility tree and it has no `zoom`.
pub fn computer_tool(w: u32, h: u32, allow_setup: bool, pixels: bool) -> Value {
    let mut actions = vec![
        "key",
        "type",
        "mouse_move",
        "left_click",
        "right_click",
        "middle_click",
        "double_click",
        "triple_click",
        "left_click_drag",
        "left_mouse_down",
        "left_mouse_up",
        "scroll",
        "hold_key",
        "wait",
        "screenshot",
        "cursor_position",
        "zoom",
        "done",
        "fail",
    ];
    if allow_setup {
        actions.extend(["launch", "open", "exec"]);
    }
    let (observe, returns, zoom) = if pixels {
        (
            ", and take screenshots",
            "a new screenshot, taken",
            "* `zoom` returns the region [x0, y0, x1, y1] at full resolution.\n",
        )
    } else {
        actions.retain(|a| *a != "zoom");
        ("", "the screen's accessibility tree, read", "")
    };
    let description = format!(
        "Use a mouse and keyboard to interact with a Linux desktop (XFCE){observe}.\n\
         * The screen is {w}x{h} pixels. Coordinates are [x, y] pixels in that space, (0, 0) at the top left.\n\
         * Every action returns {returns} once the screen has stopped changing.\n\
         * `key` takes xdotool key names and combos: \"Return\", \"ctrl+s\", \"alt+F4\", \"ctrl+a Delete\".\n\
         * `type` types text exactly as given (any language); use \\n for Enter.\n\
         * `scroll` needs scroll_direction (up, down, left, right) and scroll_amount (wheel clicks).\n\
         * `key` (or `text`) on clicks and scrolls names modifier keys to hold, e.g. \"shift\".\n\
         {zoom}\
         * When the task is complete, call `done` with your answer in `text`, or simply reply \
         without a tool call. If it cannot be done, call `fail` with the reason in `text`."
    );
    let mut tool = json!({
        "type": "function",
        "function": {
            "name": "computer",
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {
                    "action": {"type": "string", "enum": actions, "description": "What to do."},
                    "coordinate": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                        "description": format!("[x, y] in pixels (0..{w}, 0..{h}): where to click, move, scroll; the end of a drag.")},
                    "start_coordinate": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                        "description": "[x, y] where left_click_drag starts."},
                    "text": {"type": "string", "description": "Text to type, keys to press, or the answer/reason for done/fail."},
                    "scroll_direction": {"type": "string", "enum": ["up", "down", "left", "right"]},
                    "scroll_amount": {"type": "integer", "minimum": 0, "description": "Wheel clicks."},
                    "duration": {"type": "number", "description": "Seconds, for wait and hold_key."},
                    "key": {"type": "string", "description": "Modifier keys held during a click or scroll."},
                    "region": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
                        "description": "[x0, y0, x1, y1] for zoom."},
                    "app": {"type": "string", "description": "For launch: terminal, browser, files, editor, or a command."},
                    "target": {"type": "string", "description": "For open: a path or URL."},
                    "command": {"type": "string", "description": "For exec: a shell command line."}
                },
                "required": ["action"]
            }
        }
    });
    if !pixels && let Some(props) = tool["function"]["parameters"]["properties"].as_object_mut() {
        props.remove("region");
    }
    tool
}

/// The `computer` tool of a planner (`--grounder`): pointer actions name an `element`
/// (and a drag its `start_element`) instead of coordinates.
pub fn planner_tool(w: u32, h: u32) -> Value {
    let mut tool = computer_tool(w, h, false, true);
    let f = &mut tool["function"];
    f["description"] = json!(format!(
        "Use a mouse and keyboard to interact with a Linux desktop (XFCE), and take screenshots.\n\
         * The screen is {w}x{h} pixels, but you never give coordinates: pointer actions \
         (left_click, right_click, middle_click, double_click, triple_click, mouse_move, \
         left_click_drag, scroll) name the element in `element`, and a drag its start in \
         `start_element`; a grounding model finds them.\n\
         * `key` takes xdotool key names and combos: \"Return\", \"ctrl+s\", \"alt+F4\".\n\
         * `type` types text exactly as given; use \\n for Enter.\n\
         * When the task is complete, call `done` with your answer in `text`, or simply reply \
         without a tool call. If it cannot be done, call `fail` with the reason in `text`."
    ));
    if let Some(props) = f["parameters"]["properties"].as_object_mut() {
        props.remove("coordinate");
        props.remove("start_coordinate");
        props.remove("region");
        props.insert(
            "element".into(),
            json!({"type": "string", "description": "The element a pointer action targets, in words: its text or icon, its kind and where it is."}),
        );
        props.insert(
            "start_element".into(),
            json!({"type": "string", "description": "Where left_click_drag starts, in words."}),
        );
    }
    if let Some(actions) = f["parameters"]["properties"]["action"]["enum"].as_array_mut() {
        actions.retain(|a| a != "zoom");
    }
    tool
}

/// The conversation of one episode in the `tools` protocol.
pub struct Tools {
    geometry: Geometry,
    messages: Vec<Value>,
    images: Images,
    tools: Vec<Value>,
    image_in_tool: bool,
    allow_setup: bool,
    /// A planner's conversation: elements in words, found by a grounder.
    planner: bool,
}

impl Tools {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let planner = cfg.options.flag("planner")?;
        let (file, embedded) = if planner {
            ("planner.md", PLANNER_PROMPT)
        } else {
            ("system.md", SYSTEM_PROMPT)
        };
        let mut system = prompt(cfg.prompts.as_deref(), file, embedded, &geometry)
            .map_err(|e| format!("reading the prompts: {e}"))?;
        let tool = if planner {
            planner_tool(geometry.sent.0, geometry.sent.1)
        } else {
            computer_tool(
                geometry.sent.0,
                geometry.sent.1,
                cfg.allow_setup_actions,
                cfg.observe.pixels(),
            )
        };
        let mut images = Images::new(cfg.keep_images);
        if !cfg.observe.pixels() {
            let note = super::without_pixels_note(cfg.prompts.as_deref(), &geometry)
                .map_err(|e| format!("reading the prompts: {e}"))?;
            system = format!("{system}\n\n{note}");
            images = images.without_pixels();
        }
        Ok(Self {
            geometry,
            messages: vec![json!({"role": "system", "content": system})],
            images,
            tools: vec![tool],
            image_in_tool: cfg.options.flag("image-in-tool")?,
            allow_setup: cfg.allow_setup_actions && !planner,
            planner,
        })
    }

    /// The parts that show `shot`: its image (unless no pixels are sent), then the text
    /// that goes beside the screen.
    fn image_parts(&mut self, shot: &Shot) -> Vec<Value> {
        let mut parts = Vec::new();
        if self.images.sends_pixels() {
            let reference = self.images.add(shot);
            parts.push(json!({"type": "image_url", "image_url": {"url": reference}}));
        }
        if let Some(tree) = shot.tree_text() {
            parts.push(json!({"type": "text", "text": tree}));
        }
        parts
    }

    /// A user message of `text` and the parts of `shot`.
    fn user_with(&mut self, text: &str, shot: &Shot) -> Value {
        let mut content = vec![json!({"type": "text", "text": text})];
        content.extend(self.image_parts(shot));
        json!({"role": "user", "content": content})
    }

    /// The messages with each image part decided by `image(reference, recent)`.
    fn render(&self, image: impl Fn(&str) -> Value) -> Vec<Value> {
        self.messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some(parts) = m["content"].as_array_mut() {
                    for p in parts.iter_mut() {
                        if let Some(r) = p["image_url"]["url"].as_str().map(str::to_owned) {
                            *p = image(&r);
                        }
                    }
                }
                m
            })
            .collect()
    }

    fn body(&self, messages: Vec<Value>) -> Value {
        json!({"messages": messages, "tools": self.tools, "tool_choice": "auto", "stream": false})
    }

    /// A tool call as an action in screen pixels, or the reason it is not one.
    fn action(&self, call: &ToolCall) -> Result<Action, InvalidAction> {
        if call.name != "computer" {
            return Err(InvalidAction::new(format!(
                "there is no tool named '{}'; use the `computer` tool",
                call.name
            )));
        }
        if let Value::String(raw) = &call.arguments
            && serde_json::from_str::<Value>(raw).is_err()
        {
            return Err(InvalidAction::new(format!(
                "the arguments are not valid JSON: {}",
                raw.chars().take(200).collect::<String>()
            )));
        }
        self.checked(Action::from_tool_input(&call.arguments)?)
    }

    /// A planner's call: the action with a stand-in point for each element it names, and
    /// those elements for the grounder (as call `index`). Coordinates are refused: the
    /// planner names elements, the grounder points.
    fn planned(
        &self,
        call: &ToolCall,
        index: usize,
        grounding: &mut Vec<Ground>,
    ) -> Result<Action, InvalidAction> {
        if call.name != "computer" {
            return Err(InvalidAction::new(format!(
                "there is no tool named '{}'; use the `computer` tool",
                call.name
            )));
        }
        let Some(args) = call.arguments.as_object() else {
            return Action::from_tool_input(&call.arguments);
        };
        if args.contains_key("coordinate") || args.contains_key("start_coordinate") {
            return Err(InvalidAction::new(
                "give no coordinates: name the element in `element` (and a drag's start in `start_element`)",
            ));
        }
        let mut args = args.clone();
        let text = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_owned)).filter(|s| !s.trim().is_empty());
        let element = text(args.remove("element"));
        let start = text(args.remove("start_element"));
        let name = args.get("action").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut found = Vec::new();
        match (start, element) {
            (Some(s), Some(e)) => {
                args.insert("start_coordinate".into(), json!([0, 0]));
                args.insert("coordinate".into(), json!([0, 0]));
                found.push(s);
                found.push(e);
            }
            (None, Some(e)) => {
                args.insert("coordinate".into(), json!([0, 0]));
                found.push(e);
            }
            (Some(_), None) => {
                return Err(InvalidAction::new(format!(
                    "`{name}` names where it starts but not the `element` where it ends"
                )));
            }
            (None, None) if NEEDS_ELEMENT.contains(&name.as_str()) => {
                return Err(InvalidAction::new(format!(
                    "`{name}` needs `element`: the element to act on, in words"
                )));
            }
            (None, None) => {}
        }
        let action = Action::from_tool_input(&Value::Object(args))?;
        if action.points().len() != found.len() && !found.is_empty() {
            return Err(InvalidAction::new(format!(
                "`{name}` takes no element; use it without `element`"
            )));
        }
        if action.is_setup_only() {
            return Err(InvalidAction::new(format!(
                "`{}` is not available; use the mouse and keyboard",
                action.name()
            )));
        }
        grounding.extend(found.into_iter().enumerate().map(|(point, element)| Ground {
            call: index,
            point,
            element,
        }));
        // The stand-in points are replaced by the grounder's, in screen pixels.
        Ok(action)
    }

    /// A parsed action, refused when it is a setup action the model may not use, in screen
    /// pixels.
    fn checked(&self, action: Action) -> Result<Action, InvalidAction> {
        if action.is_setup_only() && !self.allow_setup {
            return Err(InvalidAction::new(format!(
                "`{}` is not available; use the mouse and keyboard",
                action.name()
            )));
        }
        self.geometry.action_to_screen(action)
    }
}

impl Protocol for Tools {
    fn name(&self) -> ProtocolName {
        ProtocolName::of(&SPEC)
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn begin(&mut self, instruction: &str, shot: &Shot) {
        let message = self.user_with(instruction, shot);
        self.messages.push(message);
    }

    fn user_message(&mut self, text: &str) {
        self.messages.push(json!({"role": "user", "content": text}));
    }

    fn request(&self) -> (ModelRequest, Value) {
        let sent = self.render(|r| match self.images.data_url(r) {
            Some(url) if self.images.is_recent(r) => {
                json!({"type": "image_url", "image_url": {"url": url}})
            }
            _ => json!({"type": "text", "text": OMITTED}),
        });
        let recorded = self.render(|r| {
            if self.images.is_recent(r) {
                json!({"type": "image_url", "image_url": {"url": r}})
            } else {
                json!({"type": "text", "text": OMITTED})
            }
        });
        (
            ModelRequest {
                path: "/chat/completions".into(),
                body: self.body(sent),
                headers: Vec::new(),
                auth: Auth::Bearer,
                blobs: self.images.blobs(),
                model_field: Default::default(),
            },
            self.body(recorded),
        )
    }

    fn decode(&self, raw: &Value) -> Result<Decision, DecodeError> {
        let reply = parse_chat(raw)?;
        // Text next to tool calls is the model's thinking; alone, it is the answer.
        let thought = match (&reply.reasoning, reply.tool_calls.is_empty()) {
            (Some(r), _) => Some(r.clone()),
            (None, false) => reply.text.clone(),
            (None, true) => None,
        };
        let mut grounding = Vec::new();
        let mut calls: Vec<Call> = Vec::new();
        for c in &reply.tool_calls {
            let action = if self.planner {
                self.planned(c, calls.len(), &mut grounding)
            } else {
                self.action(c)
            };
            calls.push(Call {
                id: c.id.clone(),
                input: c.arguments.clone(),
                action,
            });
        }
        // A call whose grounding was refused is not grounded.
        grounding.retain(|g| calls[g.call].action.is_ok());
        // A call written in markup this dialect could not read (another model's format):
        // a mistake for the model to mend, never its final answer.
        if calls.is_empty()
            && let Some(markup) = reply.text.as_deref().and_then(call_markup)
        {
            calls.push(Call {
                id: "call_0".into(),
                input: Value::String(reply.text.clone().unwrap_or_default()),
                action: Err(InvalidAction::new(format!(
                    "the reply holds a call in {markup} markup that is not a `computer` function call; call the `computer` function through the tools API"
                ))),
            });
        }
        Ok(Decision {
            thought,
            text: reply.text,
            calls,
            usage: reply.usage,
            safety: Vec::new(),
            grounding,
        })
    }

    fn assistant(&mut self, raw: &Value, decision: &Decision) {
        // Normalized to the OpenAI shape, whatever the server sent.
        let names: Vec<String> = parse_chat(raw)
            .map(|r| r.tool_calls.into_iter().map(|c| c.name).collect())
            .unwrap_or_default();
        let mut m = json!({"role": "assistant", "content": decision.text.as_deref().unwrap_or("")});
        if !decision.calls.is_empty() {
            m["tool_calls"] = decision
                .calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let args = match &c.input {
                        Value::String(s) => s.clone(),
                        v => v.to_string(),
                    };
                    let name = names.get(i).map_or("computer", String::as_str);
                    json!({"id": c.id, "type": "function", "function": {"name": name, "arguments": args}})
                })
                .collect();
        }
        self.messages.push(m);
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, note: &str) {
        let mut zooms = Vec::new();
        for r in results {
            let text = if r.is_error {
                format!("error: {}", r.text)
            } else {
                r.text.clone()
            };
            self.messages
                .push(json!({"role": "tool", "tool_call_id": r.id, "content": text}));
            zooms.extend(r.image.clone());
        }
        for z in &zooms {
            let message = self.user_with("The zoomed region, at full resolution:", z);
            self.messages.push(message);
        }
        let last_is_tool = self.messages.last().is_some_and(|m| m["role"] == "tool");
        if self.image_in_tool && last_is_tool {
            let parts = self.image_parts(shot);
            if let Some(last) = self.messages.last_mut() {
                let text = last["content"].as_str().unwrap_or_default().to_owned();
                let mut content = vec![json!({"type": "text", "text": text})];
                content.extend(parts);
                last["content"] = json!(content);
            }
        } else {
            let message = self.user_with(note, shot);
            self.messages.push(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Point;
    use crate::model::protocol::{CoordSpace, Target, geometry};
    use std::sync::Arc;

    fn shot(s: &str) -> Shot {
        Shot {
            sha256: s.into(),
            png: Arc::new(format!("png-{s}").into_bytes()),
            tree: None,
        }
    }

    fn tools(target: Target, keep: usize, in_tool: bool) -> Tools {
        let mut cfg = ProtocolConfig {
            target,
            keep_images: keep,
            ..ProtocolConfig::default()
        };
        if in_tool {
            cfg.options.set("image-in-tool", "true");
        }
        Tools::new(&cfg, geometry(&cfg, (1280, 800))).unwrap()
    }

    fn reply(calls: Value) -> Value {
        json!({"choices": [{"message": {"content": "thinking", "tool_calls": calls}}]})
    }

    #[test]
    fn calls_become_screen_actions_or_model_facing_errors() {
        let t = tools(Target::Xga, 3, false);
        assert_eq!(t.geometry().space, CoordSpace::Native);
        let d = t
            .decode(&reply(json!([
                {"id": "a", "function": {"name": "computer", "arguments": "{\"action\":\"left_click\",\"coordinate\":[512,384]}"}},
                {"id": "b", "function": {"name": "browser", "arguments": "{}"}},
                {"id": "c", "function": {"name": "computer", "arguments": "{\"action\":"}},
                {"id": "d", "function": {"name": "computer", "arguments": "{\"action\":\"exec\",\"command\":\"ls\"}"}},
                {"id": "e", "function": {"name": "computer", "arguments": "{\"action\":\"key\",\"text\":\"ctrl+Bogus\"}"}},
                {"id": "f", "function": {"name": "computer", "arguments": "{\"action\":\"left_click\",\"coordinate\":[1024,10]}"}}
            ])))
            .unwrap();
        assert_eq!(d.thought.as_deref(), Some("thinking"));
        assert_eq!(
            d.calls[0].action.as_ref().unwrap().points(),
            vec![Point::new(640, 400)]
        );
        for (call, needle) in [
            (1, "no tool named 'browser'"),
            (2, "not valid JSON"),
            (3, "not available"),
            (4, "unknown key"),
            (5, "outside your coordinate space"),
        ] {
            let e = d.calls[call].action.as_ref().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn only_recent_images_are_sent_and_none_are_recorded() {
        let mut c = tools(Target::Native, 2, false);
        c.begin("do it", &shot("aaa"));
        for (i, sha) in ["bbb", "ccc"].iter().enumerate() {
            let raw = reply(
                json!([{"id": format!("c{i}"), "function": {"name": "computer", "arguments": "{\"action\":\"screenshot\"}"}}]),
            );
            let d = c.decode(&raw).unwrap();
            c.assistant(&raw, &d);
            c.results(
                &[CallResult::ok(format!("c{i}"))],
                &shot(sha),
                "after",
            );
        }
        let (req, recorded) = c.request();
        let req = req.resolved_body().to_string();
        assert!(!req.contains("sha256:"), "placeholders leak into requests");
        assert!(
            !req.contains("@@selfagent-blob"),
            "markers leak into requests"
        );
        assert_eq!(req.matches("data:image/png;base64").count(), 2);
        assert!(req.contains(OMITTED));
        let rec = recorded.to_string();
        assert!(!rec.contains("base64"), "pixels in the recording");
        assert!(
            rec.contains("sha256:ccc") && rec.contains("sha256:bbb") && !rec.contains("sha256:aaa")
        );
    }

    #[test]
    fn images_can_ride_in_tool_messages() {
        let mut c = tools(Target::Native, 3, true);
        c.begin("t", &shot("a"));
        let raw = reply(json!([{"id": "c", "function": {"name": "computer", "arguments": "{}"}}]));
        let d = c.decode(&raw).unwrap();
        c.assistant(&raw, &d);
        c.results(
            &[CallResult {
                id: "c".into(),
                text: "done".into(),
                is_error: false,
                image: None,
            }],
            &shot("b"),
            "after",
        );
        let (req, _) = c.request();
        let last = req.body["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["role"], "tool");
        assert_eq!(last["content"][1]["type"], "image_url");
    }

    #[test]
    fn the_tool_names_the_screen_size() {
        let t = computer_tool(1024, 768, false, true).to_string();
        assert!(t.contains("1024x768") && !t.contains("\"launch\""));
        assert!(computer_tool(1, 1, true, true).to_string().contains("\"launch\""));
        let tree = computer_tool(1024, 768, false, false).to_string();
        assert!(!tree.contains("zoom") && !tree.contains("screenshots"), "{tree}");
        assert!(tree.contains("accessibility tree"), "{tree}");
    }
}
