//! `openai`: the Responses API (`POST {base}/responses`) with OpenAI's computer tool: the
//! preview tool (`computer_use_preview` with the display size and `environment: "linux"`)
//! for `computer-use-preview`, the GA `{"type": "computer"}` tool for newer models. A
//! `computer_call` holds one `action` (preview) or a batch of `actions` (GA); each call gets
//! one `computer_call_output` with the screenshot after its last action. Turns chain with
//! `previous_response_id`; with `--no-store` nothing is stored at OpenAI and every item is
//! sent again (reasoning as encrypted content). Pending safety checks are the loop's to
//! decide (asked in the TUI, refused headless unless `--ack-safety-checks`); acknowledged
//! ones are echoed in the next outputs, as the API requires.

use super::{
    Call, CallResult, CoordSpace, DecodeError, Decision, Endpoint, Example, Geometry, Images,
    ModelId, OptionDoc, Protocol, ProtocolConfig, ProtocolName, SafetyCheck, Shot, Spec, prompt,
};
use crate::action::{Action, InvalidAction};
use crate::model::{Auth, ModelRequest, Usage};
use base64::Engine as _;
use serde_json::{Value, json};
use std::sync::Arc;

const SYSTEM_PROMPT: &str = include_str!("../../../prompts/openai.md");

/// What `openai` is (see [`Spec`]).
pub struct OpenAiSpec;

pub static SPEC: OpenAiSpec = OpenAiSpec;

impl Spec for OpenAiSpec {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["responses"]
    }

    fn wire(&self) -> &'static str {
        "Responses API, the computer tool (preview or GA)"
    }

    fn detect(&self, model: &ModelId) -> Option<CoordSpace> {
        (model.base.starts_with("computer-use-preview") || is_ga(&model.base))
            .then_some(CoordSpace::Native)
    }

    fn detects(&self) -> &'static str {
        "`computer-use-preview*`, `gpt-5.4` and later"
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            default_base_url: Some("https://api.openai.com/v1"),
            ..Endpoint::CHAT
        }
    }

    fn options(&self) -> &'static [OptionDoc] {
        &[OptionDoc {
            key: "no-store",
            help: "store nothing at OpenAI: no previous_response_id, every turn sent whole (--no-store)",
        }]
    }

    fn question(
        &self,
        _cfg: &ProtocolConfig,
        system: &str,
        text: &str,
        pngs: &[Arc<Vec<u8>>],
    ) -> ModelRequest {
        let b64 = |png: &Arc<Vec<u8>>| base64::engine::general_purpose::STANDARD.encode(png.as_slice());
        let mut content = vec![json!({"type": "input_text", "text": text})];
        content.extend(pngs.iter().map(|p| {
            json!({"type": "input_image", "image_url": format!("data:image/png;base64,{}", b64(p))})
        }));
        ModelRequest {
            path: "/responses".into(),
            body: json!({
                "instructions": system,
                "input": [{"role": "user", "content": content}],
                "store": false,
            }),
            headers: Vec::new(),
            auth: Auth::Bearer,
            blobs: Default::default(),
            model_field: Default::default(),
        }
    }

    fn answer_text(&self, raw: &Value) -> Result<String, DecodeError> {
        let text: Vec<&str> = output_of(raw)?
            .iter()
            .filter(|i| i["type"] == "message")
            .flat_map(|i| i["content"].as_array().into_iter().flatten())
            .filter_map(|p| p["text"].as_str())
            .collect();
        Some(text.join("\n"))
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| DecodeError::Empty("no text".into()))
    }

    fn example(&self) -> Example {
        Example {
            model: "computer-use-preview",
            reply: json!({"id": "resp_1", "object": "response", "output": [
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Clicking the button."}]},
                {"type": "computer_call", "id": "cu_1", "call_id": "call_1",
                 "action": {"type": "click", "button": "left", "x": 500, "y": 300},
                 "pending_safety_checks": [], "status": "completed"}],
                "usage": {"input_tokens": 1500, "output_tokens": 40}}),
        }
    }

    fn create(
        &self,
        cfg: &ProtocolConfig,
        geometry: Geometry,
    ) -> Result<Box<dyn Protocol>, String> {
        Ok(Box::new(OpenAi::new(cfg, geometry)?))
    }
}

/// A reply's `output`, or why it is not a Responses API reply.
fn output_of(raw: &Value) -> Result<&Vec<Value>, DecodeError> {
    if let Some(e) = raw.get("error").filter(|e| !e.is_null()) {
        return Err(DecodeError::Server(e.to_string()));
    }
    raw["output"].as_array().ok_or_else(|| {
        DecodeError::shape("no `output` in the reply (not a Responses API reply?)")
    })
}

/// Whether a model takes the GA `computer` tool (gpt-5.4 and later) rather than the preview.
pub fn is_ga(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    if m.starts_with("computer-use-preview") {
        return false;
    }
    gpt_version(&m).is_some_and(|v| v >= (5, 4))
}

/// `gpt-5.4-mini` → (5, 4).
pub fn gpt_version(model: &str) -> Option<(u32, u32)> {
    let rest = model.to_ascii_lowercase();
    let rest = rest.strip_prefix("gpt-")?;
    let mut parts = rest.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// The text that goes beside the screen `shot`, as a content part.
fn tree_part(shot: &Shot) -> Option<Value> {
    shot.tree_text()
        .map(|t| json!({"type": "input_text", "text": t}))
}

pub struct OpenAi {
    geometry: Geometry,
    ga: bool,
    /// Chain turns through `previous_response_id` (else send every item each time).
    chain: bool,
    instructions: String,
    previous: Option<String>,
    /// Every item so far (stateless mode), or the items since the last response (chained).
    items: Vec<Value>,
    images: Images,
    allow_setup: bool,
    /// Safety checks to acknowledge in the next outputs.
    acknowledged: Vec<Value>,
}

impl OpenAi {
    pub fn new(cfg: &ProtocolConfig, geometry: Geometry) -> Result<Self, String> {
        let instructions = prompt(
            cfg.prompts.as_deref(),
            "openai.md",
            SYSTEM_PROMPT,
            &geometry,
        )
        .map_err(|e| format!("reading the prompts: {e}"))?;
        let no_store = cfg.options.flag("no-store")?;
        Ok(Self {
            geometry,
            ga: is_ga(&cfg.model),
            chain: !no_store,
            instructions,
            previous: None,
            items: Vec::new(),
            // Stateless requests replay every output, screenshots included.
            images: Images::new(if no_store {
                usize::MAX
            } else {
                cfg.keep_images
            }),
            allow_setup: cfg.allow_setup_actions,
            acknowledged: Vec::new(),
        })
    }

    fn tool(&self) -> Value {
        if self.ga {
            json!({"type": "computer"})
        } else {
            json!({
                "type": "computer_use_preview",
                "display_width": self.geometry.sent.0,
                "display_height": self.geometry.sent.1,
                "environment": "linux",
            })
        }
    }

    fn image(&mut self, shot: &Shot) -> String {
        self.images.add(shot)
    }

    fn body(&self, items: Vec<Value>) -> Value {
        let mut body = json!({
            "instructions": self.instructions,
            "tools": [self.tool()],
            "input": items,
            "truncation": "auto",
            "reasoning": {"summary": "concise"},
        });
        if self.ga {
            body["parallel_tool_calls"] = json!(false);
        }
        if self.chain {
            if let Some(id) = &self.previous {
                body["previous_response_id"] = json!(id);
            }
        } else {
            body["store"] = json!(false);
            body["include"] = json!(["reasoning.encrypted_content"]);
        }
        body
    }

    /// Items with screenshot references as data URLs (`pixels`) or kept as references.
    fn render(&self, pixels: bool) -> Vec<Value> {
        fn walk(v: &mut Value, images: &Images, pixels: bool) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(url)) = map.get_mut("image_url")
                        && url.starts_with("sha256:")
                        && pixels
                        && let Some(data) = images.data_url(url)
                    {
                        *url = data;
                    }
                    map.values_mut().for_each(|i| walk(i, images, pixels));
                }
                Value::Array(items) => items.iter_mut().for_each(|i| walk(i, images, pixels)),
                _ => {}
            }
        }
        let mut items = self.items.clone();
        for i in &mut items {
            walk(i, &self.images, pixels);
        }
        items
    }

    fn action(&self, v: &Value) -> Result<Action, InvalidAction> {
        let action = Action::from_tool_input(v)?;
        if action.is_setup_only() && !self.allow_setup {
            return Err(InvalidAction::new(format!(
                "`{}` is not available",
                action.name()
            )));
        }
        self.geometry.action_to_screen(action)
    }

    fn image_part(&mut self, shot: &Shot) -> Value {
        let url = self.image(shot);
        let mut part = json!({"type": "input_image", "image_url": url});
        if self.ga {
            part["detail"] = json!("original");
        }
        part
    }
}

impl Protocol for OpenAi {
    fn name(&self) -> ProtocolName {
        ProtocolName::of(&SPEC)
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn begin(&mut self, instruction: &str, shot: &Shot) {
        let image = self.image_part(shot);
        let mut content = vec![json!({"type": "input_text", "text": instruction}), image];
        content.extend(tree_part(shot));
        self.items.push(json!({"role": "user", "content": content}));
    }

    fn user_message(&mut self, text: &str) {
        self.items.push(json!({
            "role": "user",
            "content": [{"type": "input_text", "text": text}]
        }));
    }

    fn request(&self) -> (ModelRequest, Value) {
        (
            ModelRequest {
                path: "/responses".into(),
                body: self.body(self.render(true)),
                headers: Vec::new(),
                auth: Auth::Bearer,
                blobs: self.images.blobs(),
                model_field: Default::default(),
            },
            self.body(self.render(false)),
        )
    }

    fn decode(&self, raw: &Value) -> Result<Decision, DecodeError> {
        let output = output_of(raw)?;
        let (mut text, mut thought, mut calls, mut safety) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for item in output {
            match item["type"].as_str() {
                Some("message") => {
                    for part in item["content"].as_array().into_iter().flatten() {
                        text.extend(part["text"].as_str().map(str::to_owned));
                    }
                }
                Some("reasoning") => {
                    for part in item["summary"].as_array().into_iter().flatten() {
                        thought.extend(part["text"].as_str().map(str::to_owned));
                    }
                }
                Some("computer_call") => {
                    let id = item["call_id"].as_str().unwrap_or_default().to_owned();
                    let actions: Vec<Value> = match (&item["actions"], &item["action"]) {
                        (Value::Array(a), _) => a.clone(),
                        (_, a) if a.is_object() => vec![a.clone()],
                        _ => vec![],
                    };
                    if actions.is_empty() {
                        calls.push(Call {
                            id: id.clone(),
                            input: item.clone(),
                            action: Err(InvalidAction::new("a computer_call with no action")),
                        });
                    }
                    for a in actions {
                        calls.push(Call {
                            id: id.clone(),
                            action: self.action(&a),
                            input: a,
                        });
                    }
                    for check in item["pending_safety_checks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        safety.push(SafetyCheck {
                            id: check["id"].as_str().unwrap_or_default().to_owned(),
                            code: check["code"].as_str().unwrap_or_default().to_owned(),
                            message: check["message"].as_str().unwrap_or_default().to_owned(),
                            confirm: false,
                        });
                    }
                }
                _ => {}
            }
        }
        let u = &raw["usage"];
        Ok(Decision {
            thought: Some(thought.join("\n")).filter(|t| !t.is_empty()),
            text: Some(text.join("\n")).filter(|t| !t.trim().is_empty()),
            calls,
            usage: Usage {
                input: u["input_tokens"].as_u64().unwrap_or(0),
                output: u["output_tokens"].as_u64().unwrap_or(0),
                cache_read: u["input_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap_or(0),
                cache_write: 0,
            },
            safety,
            grounding: Vec::new(),
        })
    }

    fn assistant(&mut self, raw: &Value, _decision: &Decision) {
        if self.chain {
            // The server keeps the turn; the next request names it and sends what is new.
            self.previous = raw["id"].as_str().map(str::to_owned);
            self.items.clear();
        } else if let Some(output) = raw["output"].as_array() {
            self.items.extend(output.iter().cloned());
        }
    }

    fn acknowledge(&mut self, checks: &[SafetyCheck]) {
        self.acknowledged.extend(
            checks
                .iter()
                .map(|c| json!({"id": c.id, "code": c.code, "message": c.message})),
        );
    }

    fn results(&mut self, results: &[CallResult], shot: &Shot, note: &str) {
        // One output per call, after its last action.
        let mut ids: Vec<&str> = Vec::new();
        for r in results {
            if !ids.contains(&r.id.as_str()) {
                ids.push(&r.id);
            }
        }
        let url = self.image(shot);
        let errors = super::chat::result_lines(results);
        let acknowledged = std::mem::take(&mut self.acknowledged);
        let mut outputs = Vec::new();
        for id in ids {
            // The SDK's screenshot output has no `detail` (Azure's docs show one): the SDK's
            // types are what the API takes.
            let output = json!({"type": "computer_screenshot", "image_url": url});
            let mut item = json!({"type": "computer_call_output", "call_id": id, "output": output});
            if !acknowledged.is_empty() {
                item["acknowledged_safety_checks"] = json!(acknowledged);
            }
            outputs.push(item);
        }
        let answered = !outputs.is_empty();
        self.items.extend(outputs);
        if !errors.is_empty() {
            self.user_message(&errors);
        }
        // A call's output holds only the screenshot: the tree follows as a message.
        if answered && let Some(tree) = shot.tree_text() {
            self.user_message(tree);
        }
        if results.is_empty() {
            // No call to answer (a hand-back): the screen as a message. With a chained
            // conversation an image may only ride in a call's output, so it goes as text.
            if self.chain && self.previous.is_some() {
                self.user_message(&format!("{note} (the next screenshot shows it)"));
                if let Some(tree) = shot.tree_text() {
                    self.user_message(tree);
                }
            } else {
                let image = self.image_part(shot);
                let mut content = vec![json!({"type": "input_text", "text": note}), image];
                content.extend(tree_part(shot));
                self.items.push(json!({"role": "user", "content": content}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Button, Point};
    use crate::model::protocol::geometry;
    use pretty_assertions::assert_eq;

    fn openai(model: &str, no_store: bool) -> OpenAi {
        let mut cfg = ProtocolConfig {
            name: ProtocolName::of(&SPEC),
            model: model.into(),
            ..ProtocolConfig::default()
        };
        if no_store {
            cfg.options.set("no-store", "true");
        }
        OpenAi::new(&cfg, geometry(&cfg, (1280, 800))).unwrap()
    }

    fn shot(s: &str) -> Shot {
        Shot::named(s)
    }

    #[test]
    fn models_choose_the_tool() {
        assert!(!is_ga("computer-use-preview-2025-03-11"));
        assert!(is_ga("gpt-5.4") && is_ga("gpt-5.4-mini") && is_ga("gpt-6"));
        assert!(!is_ga("gpt-4o") && !is_ga("gpt-5.2"));
        let (req, _) = openai("computer-use-preview", false).request();
        assert_eq!(req.body["tools"][0]["type"], "computer_use_preview");
        assert_eq!(req.body["tools"][0]["display_width"], 1280);
        assert_eq!(req.body["tools"][0]["environment"], "linux");
        let (req, _) = openai("gpt-5.4", false).request();
        assert_eq!(req.body["tools"][0], json!({"type": "computer"}));
        assert_eq!(req.path, "/responses");
    }

    #[test]
    fn the_documented_replies_decode() {
        let p = openai("computer-use-preview", false);
        // OpenAI's docs: a reasoning item and a click.
        let raw = json!({"id": "resp_1", "output": [
            {"type": "reasoning", "id": "rs_67cc", "summary": [{"type": "summary_text", "text": "Clicking on the browser address bar."}]},
            {"type": "computer_call", "id": "cu_67cc", "call_id": "call_zw3", "action": {"type": "click", "button": "left", "x": 156, "y": 50}, "pending_safety_checks": [], "status": "completed"}
        ], "usage": {"input_tokens": 900, "output_tokens": 20, "input_tokens_details": {"cached_tokens": 512}}});
        let d = p.decode(&raw).unwrap();
        assert_eq!(
            d.thought.as_deref(),
            Some("Clicking on the browser address bar.")
        );
        assert_eq!(
            d.calls[0].action.as_ref().unwrap(),
            &Action::Click {
                coordinate: Some(Point::new(156, 50)),
                button: Button::Left,
                count: 1,
                modifiers: vec![]
            }
        );
        assert_eq!(d.usage.cache_read, 512);
        // Azure's docs: a GA batch with a safety check.
        let p = openai("gpt-5.4", false);
        let raw = json!({"id": "resp_2", "output": [{"type": "computer_call", "id": "cu_67cb", "call_id": "call_nEJ",
            "actions": [{"type": "click", "button": "left", "x": 135, "y": 193}, {"type": "type", "text": "hi"}],
            "pending_safety_checks": [{"id": "cu_sc_67cb", "code": "malicious_instructions", "message": "We've detected instructions that may cause your application to perform malicious or unauthorized actions. Please acknowledge this warning if you'd like to proceed."}],
            "status": "completed"}]});
        let d = p.decode(&raw).unwrap();
        assert_eq!(d.calls.len(), 2);
        assert!(d.calls.iter().all(|c| c.id == "call_nEJ"));
        assert_eq!(d.safety[0].code, "malicious_instructions");
        // The first GA reply, with no pending_safety_checks key; a final message.
        let d = p
            .decode(&json!({"output": [{"id": "cu_x", "type": "computer_call", "status": "completed", "actions": [{"type": "screenshot"}], "call_id": "call_x"}]}))
            .unwrap();
        assert_eq!(d.calls[0].action.as_ref().unwrap(), &Action::Screenshot);
        let d = p
            .decode(&json!({"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "All done."}]}]}))
            .unwrap();
        assert!(d.calls.is_empty() && d.text.as_deref() == Some("All done."));
    }

    #[test]
    fn turns_chain_and_outputs_acknowledge_checks() {
        let mut p = openai("gpt-5.4", false);
        p.begin("do it", &shot("a"));
        let (req, recorded) = p.request();
        assert_eq!(req.body["input"][0]["content"][1]["detail"], "original");
        assert!(
            req.resolved_body()
                .to_string()
                .contains("data:image/png;base64,YQ==")
        );
        assert!(recorded.to_string().contains("sha256:a"));
        let raw = json!({"id": "resp_1", "output": [{"type": "computer_call", "call_id": "c1", "actions": [{"type": "click", "x": 1, "y": 1, "button": "left"}, {"type": "wait"}],
            "pending_safety_checks": [{"id": "sc1", "code": "irrelevant_domain", "message": "m"}]}]});
        let d = p.decode(&raw).unwrap();
        p.assistant(&raw, &d);
        p.acknowledge(&d.safety);
        p.results(&[CallResult::ok("c1"), CallResult::ok("c1")], &shot("b"), "after");
        let (req, _) = p.request();
        let body = req.resolved_body();
        assert_eq!(body["previous_response_id"], "resp_1");
        let input = body["input"].as_array().unwrap();
        assert_eq!(
            input.len(),
            1,
            "one output for the batch, nothing else: {input:?}"
        );
        assert_eq!(input[0]["type"], "computer_call_output");
        assert_eq!(input[0]["acknowledged_safety_checks"][0]["id"], "sc1");
        assert!(
            input[0]["output"]["image_url"]
                .as_str()
                .unwrap()
                .starts_with("data:image/png")
        );
        // Stateless: every item is sent again, nothing stored.
        let mut s = openai("gpt-5.4", true);
        s.begin("do it", &shot("a"));
        s.assistant(&raw, &d);
        s.results(&[CallResult::ok("c1")], &shot("b"), "after");
        let (req, _) = s.request();
        assert_eq!(req.body["store"], false);
        assert_eq!(req.body["input"].as_array().unwrap().len(), 3);
        assert!(req.body.get("previous_response_id").is_none());
    }
}
