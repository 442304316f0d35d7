//! `opencua`: OpenCUA's replies over chat completions: `## Thought`, `## Action` and
//! `## Code` sections ending in one fenced block of `pyautogui.*` and `computer.*` calls
//! (`computer.wait()`, `computer.terminate(status=..., answer=...)`), parsed like OSWorld's
//! pyautogui code (never executed). Coordinates: OpenCUA-7B/32B answer in pixels of the
//! smart-resized image (factor 28); OpenCUA-Qwen2-7B and the AgentNet data in 0-1
//! (`--coords unit`). No code block is an unusable reply, fed back.

use super::chat::{ChatHistory, answer_text, parse_chat, result_lines};
use super::pyautogui::code_calls;
use super::pycode::last_code_block;
use super::{
    Call, CallResult, CoordSpace, DecodeError, Decision, Example, Geometry, ModelId, Protocol,
    ProtocolConfig, ProtocolName, Shot, Spec, prompt,
};
use crate::action::InvalidAction;
use crate::model::ModelRequest;
use serde_json::Value;

const PROMPT: &str = include_str!("../../../prompts/opencua.md");

/// What `opencua` is (see [`Spec`]).
pub struct OpenCuaSpec;

pub static SPEC: OpenCuaSpec = OpenCuaSpec;

impl Spec for OpenCuaSpec {
    fn name(&self) -> &'static str {
        "opencua"
    }

    fn wire(&self) -> &'static str {
        "chat completions, `## Code` pyautogui blocks"
    }

    fn detect(&self, m: &ModelId) -> Option<CoordSpace> {
        m.has("opencua").then_some(CoordSpace::Smart)
    }

    fn detects(&self) -> &'static str {
        "`*opencua*` (smart; `--coords unit` for OpenCUA-Qwen2-7B)"
    }

    fn example(&self) -> Example {
        Example {
            model: "opencua-7b",
            reply: serde_json::json!({"choices": [{"message": {"role": "assistant", "content":
                "## Thought:\nThe button is there.\n## Action:\nClick it.\n## Code:\n```python\npyautogui.click(x=500, y=300)\n```"}}],
                "usage": {"prompt_tokens": 1500, "completion_tokens": 40}}),
        }
    }

    fn create(
        &self,
        cfg: &ProtocolConfig,
        geometry: Geometry,
    ) -> Result<Box<dyn Protocol>, String> {
        Ok(Box::new(OpenCua::new(cfg, geometry)?))
    }
}

pub struct OpenCua {
    geometry: Geometry,
    history: ChatHistory,
}

impl OpenCua {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let system = prompt(cfg.prompts.as_deref(), "opencua.md", PROMPT, &geometry)
            .map_err(|e| format!("reading the prompts: {e}"))?;
        Ok(Self {
            geometry,
            history: ChatHistory::new(Some(system), cfg.keep_images),
        })
    }
}

/// The text of a `## Name` section, up to the next `##` heading.
fn section(text: &str, name: &str) -> Option<String> {
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("##") {
            let heading = rest.trim().trim_end_matches(':').trim();
            if found.is_some() {
                break;
            }
            if heading.eq_ignore_ascii_case(name) {
                found = Some((i, String::new()));
            }
        } else if let Some((_, body)) = found.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    found
        .map(|(_, b)| b.trim().to_owned())
        .filter(|b| !b.is_empty())
}

impl Protocol for OpenCua {
    fn name(&self) -> ProtocolName {
        ProtocolName::of(&SPEC)
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn begin(&mut self, instruction: &str, shot: &Shot) {
        self.history.user_text_image(
            &format!(
                "# Task Instruction:\n{instruction}\n\nPlease generate the next move according to the screenshot, task instruction and previous steps (if provided).\n"
            ),
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
        let reply = parse_chat(raw)?;
        let text = reply.text.clone().unwrap_or_default();
        let thought = [section(&text, "Thought"), section(&text, "Action")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("\n");
        let calls = match last_code_block(&text) {
            Some(code) => code_calls(&code, &self.geometry, 0),
            None => vec![Call {
                id: "0".into(),
                input: Value::String(text.chars().take(200).collect()),
                action: Err(InvalidAction::new(
                    "no code block: end with ## Code: and one ```python``` block (computer.terminate(...) when done)",
                )),
            }],
        };
        Ok(Decision {
            thought: reply
                .reasoning
                .clone()
                .or(Some(thought).filter(|t| !t.is_empty())),
            text: reply.text,
            calls,
            usage: reply.usage,
            safety: Vec::new(),
            grounding: Vec::new(),
        })
    }

    fn assistant(&mut self, raw: &Value, _decision: &Decision) {
        self.history
            .assistant_text(&answer_text(raw).unwrap_or_default());
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, _note: &str) {
        self.history.user_text_image(&result_lines(results), shot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Action, Point};
    use crate::model::protocol::{CoordSpace, geometry};

    fn decode(text: &str, space: CoordSpace) -> Decision {
        let cfg = ProtocolConfig {
            name: ProtocolName::of(&SPEC),
            space,
            ..ProtocolConfig::default()
        };
        OpenCua::new(&cfg, geometry(&cfg, (1920, 1080)))
            .unwrap()
            .decode(&crate::model::protocol::chat::text_reply(text))
            .unwrap()
    }

    #[test]
    fn the_published_replies_decode() {
        // OpenCUA's README grounding example, 7B/32B: pixels of the smart-resized
        // 1932x1092 image of a 1920x1080 screen.
        let d = decode(
            "## Thought:\nThe button is top right.\n## Action:\nClick it.\n## Code:\n```python\npyautogui.click(x=1443, y=343)\n```",
            CoordSpace::Smart,
        );
        assert_eq!(
            d.thought.as_deref(),
            Some("The button is top right.\nClick it.")
        );
        assert_eq!(
            d.calls[0].action.as_ref().unwrap().points(),
            vec![Point::new(1434, 339)]
        );
        // AgentNet's 0-1 coordinates.
        let d = decode(
            "## Action:\nDrag.\n## Code:\n```python\npyautogui.moveTo(x=0.328, y=0.4697)\npyautogui.dragTo(x=0.5025, y=0.6039, button='left')\n```",
            CoordSpace::Unit,
        );
        assert_eq!(d.calls.len(), 2);
        assert_eq!(
            d.calls[1].action.as_ref().unwrap().points(),
            vec![Point::new(965, 652)]
        );
        let d = decode(
            "## Action:\nDone.\n## Code:\n```code\ncomputer.terminate(status=\"success\", answer='''The file is saved.''')\n```",
            CoordSpace::Smart,
        );
        assert_eq!(
            d.calls[0].action.as_ref().unwrap(),
            &Action::Done {
                answer: Some("The file is saved.".into())
            }
        );
        let d = decode("## Code:\n```code\ncomputer.wait()\n```", CoordSpace::Smart);
        assert!(matches!(d.calls[0].action, Ok(Action::Wait { .. })));
        let d = decode("## Thought:\nI am not sure.", CoordSpace::Smart);
        assert!(
            d.calls[0]
                .action
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("no code block")
        );
    }
}
