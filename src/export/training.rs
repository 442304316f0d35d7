//! Trajectories in the forms others train on and compare with: Harbor's ATIF, OpenCUA's
//! AgentNet, OSWorld's result directory. Human and agent steps go out in the same shape:
//! a step a model decided carries its tokens and reasoning, one a person (or a re-run, or an
//! MCP host) did is marked as such (`llm_call_count: 0` in ATIF, `extra.actor`).
//!
//! Screenshots are written as PNG files beside the JSON, named by frame id, each once.

use super::Episode;
use super::pycode::{self, Coords};
use crate::action::Action;
use crate::record::{Db, StepRow};
use anyhow::Context;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Who did a step: `model`, or the session's source (`human`, `mcp`, `rerun`).
pub fn actor(ep: &Episode, st: &StepRow) -> &'static str {
    if st.model_ms.is_some() {
        return "model";
    }
    // A person's steps are marked so (a demonstration's, and a take-over's in a model's).
    if st.meta["source"].as_str() == Some(crate::demo::SOURCE) {
        return "human";
    }
    match ep.session.meta["source"].as_str() {
        Some("human") => "human",
        Some("mcp") => "mcp",
        Some("rerun") => "replay",
        _ => "harness",
    }
}

/// The session's source as the filters see it: `agent` (selfagent's own loop), `human`,
/// `mcp`, `rerun`.
pub fn source(ep: &Episode) -> &str {
    ep.session.meta["source"].as_str().unwrap_or("agent")
}

/// Writes frames into `dir/images` once each; returns their paths relative to `dir`.
struct Images {
    dir: PathBuf,
    written: BTreeSet<i64>,
}

impl Images {
    fn new(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("images");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir,
            written: BTreeSet::new(),
        })
    }

    fn name(id: i64) -> String {
        format!("frame-{id}.png")
    }

    fn put(&mut self, db: &Db, id: i64) -> anyhow::Result<String> {
        let name = Self::name(id);
        if self.written.insert(id) {
            let row = db
                .frame(id)?
                .with_context(|| format!("frame {id} is missing from the recording"))?;
            let path = self.dir.join(&name);
            std::fs::write(&path, &row.png)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(name)
    }
}

/// The step's actions as recorded: (ok, action or raw input, error, text output).
fn entries(st: &StepRow) -> Vec<(bool, Value, Option<String>, Option<String>)> {
    st.actions
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let ok = a["ok"] == true;
            let body = if ok {
                a["action"].clone()
            } else {
                a["input"].clone()
            };
            (
                ok,
                body,
                a["error"].as_str().map(str::to_owned),
                a["text"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn action_of(v: &Value) -> Option<Action> {
    serde_json::from_value(v.clone()).ok()
}

fn iso(ms: i64) -> String {
    crate::time::iso8601(ms)
}

/// The grade's pass and score, or the outcome when there is no grade.
fn verdict(ep: &Episode) -> (Option<bool>, Option<f64>) {
    match &ep.grade {
        Some(g) => (g.passed, g.score),
        None => match ep.session.status.as_str() {
            "succeeded" => (Some(true), None),
            "running" => (None, None),
            _ => (Some(false), None),
        },
    }
}

/// Writes the episode as an ATIF trajectory (Harbor's Agent Trajectory Interchange Format,
/// v1.7: multimodal steps, deterministic steps marked by `llm_call_count: 0`) into
/// `dir/trajectory.json`, its screenshots into `dir/images/`. Returns the steps written.
pub fn atif(db: &Db, ep: &Episode, dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut images = Images::new(dir)?;
    let s = &ep.session;
    let image_part = |path: String| json!({"type": "image", "source": {"media_type": "image/png", "path": format!("images/{path}")}});
    let mut first = vec![json!({"type": "text", "text": s.instruction})];
    if let Some(id) = ep.first_frame() {
        first.push(image_part(images.put(db, id)?));
    }
    let mut steps = vec![json!({
        "step_id": 1,
        "timestamp": iso(s.created_at),
        "source": "user",
        "message": first,
    })];
    for st in &ep.steps {
        let by = actor(ep, st);
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for (i, (ok, body, error, text)) in entries(st).into_iter().enumerate() {
            let id = format!("call-{}-{i}", st.idx);
            calls.push(json!({"tool_call_id": id, "function_name": "computer", "arguments": body}));
            let said = match (ok, error, text) {
                (false, Some(e), _) => format!("error: {e}"),
                (false, None, _) => "error".to_owned(),
                (true, _, Some(t)) => t,
                (true, _, None) => "done".to_owned(),
            };
            results
                .push(json!({"source_call_id": id, "content": [{"type": "text", "text": said}]}));
        }
        if let Some(id) = st.frame_after {
            let part = image_part(images.put(db, id)?);
            match results.last_mut() {
                Some(r) => r["content"]
                    .as_array_mut()
                    .into_iter()
                    .for_each(|c| c.push(part.clone())),
                None => results.push(json!({"content": [part]})),
            }
        }
        let mut step = json!({
            "step_id": steps.len() + 1,
            "timestamp": iso(st.started_at),
            "source": "agent",
            "message": st.text.clone().unwrap_or_default(),
            "llm_call_count": u8::from(by == "model"),
            "extra": {
                "actor": by,
                "selfagent_step": st.idx,
                "act_ms": st.act_ms,
                "settle_ms": st.settle_ms,
                "step_ms": st.step_ms,
                "error": st.error,
                "rerun": st.meta.get("rerun"),
            },
        });
        if !calls.is_empty() {
            step["tool_calls"] = json!(calls);
        }
        if !results.is_empty() {
            step["observation"] = json!({"results": results});
        }
        if by == "model" {
            if let Some(t) = st.thought.as_deref().filter(|t| !t.is_empty()) {
                step["reasoning_content"] = json!(t);
            }
            step["metrics"] = json!({
                "prompt_tokens": st.tokens_in,
                "completion_tokens": st.tokens_out,
                "extra": {"model_ms": st.model_ms},
            });
        }
        steps.push(step);
    }
    let (passed, score) = verdict(ep);
    let model = s.model.clone().filter(|m| !m.is_empty());
    let mut agent = json!({"name": "selfagent", "version": env!("CARGO_PKG_VERSION")});
    if let Some(m) = &model {
        agent["model_name"] = json!(m);
    }
    agent["extra"] = json!({"protocol": s.protocol, "coords": s.coords()});
    let n = steps.len();
    let doc = json!({
        "schema_version": "ATIF-v1.7",
        "session_id": s.id,
        "agent": agent,
        "steps": steps,
        "final_metrics": {
            "total_prompt_tokens": s.tokens_in,
            "total_completion_tokens": s.tokens_out,
            "total_cost_usd": s.cost(),
            "total_steps": n,
        },
        "extra": {
            "task_id": s.task_id,
            "status": s.status,
            "ended_by": s.meta.get("ended_by"),
            "answer": s.answer,
            "error": s.error,
            "passed": passed,
            "score": score,
            "source": source(ep),
            "rerun_of": s.meta.get("rerun_of"),
            "image": s.image,
            "screen": {"width": s.width, "height": s.height},
        },
    });
    let path = dir.join("trajectory.json");
    let text = serde_json::to_string_pretty(&strip_nulls(doc))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(n)
}

/// Without `null` members (ATIF's optional fields are absent, not null).
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// A step's actions in words (AgentNet's `action`).
fn words(a: &Action) -> String {
    let at = a
        .points()
        .first()
        .map(|p| format!(" at ({}, {})", p.x, p.y))
        .unwrap_or_default();
    match a {
        Action::Type { text } => format!("Type {:?}", crate::text::one_line(text, 120)),
        Action::Key { text } => format!("Press {text}"),
        Action::Done { .. } => "Finish the task".into(),
        Action::Fail { reason } => format!("Give up: {}", crate::text::one_line(reason, 120)),
        other => {
            let name = other.name().replace('_', " ");
            let mut c = name.chars();
            let name = c
                .next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or(name);
            format!("{name}{at}")
        }
    }
}

/// The episode as one AgentNet record (OpenCUA's training data: task, `traj` of steps with
/// pyautogui `code` in 0–1 coordinates, thought, action in words, the screenshot each step
/// saw), its screenshots written into `dir/images/`.
pub fn agentnet(db: &Db, ep: &Episode, dir: &Path) -> anyhow::Result<Value> {
    let mut images = Images::new(dir)?;
    let s = &ep.session;
    let coords = Coords::Unit {
        width: s.width.unwrap_or(1280).max(1) as u32,
        height: s.height.unwrap_or(800).max(1) as u32,
    };
    let mut traj = Vec::new();
    let mut last_frame = None;
    let mut ended = None;
    for st in &ep.steps {
        let mut code = Vec::new();
        let mut said = Vec::new();
        for (ok, body, _, _) in entries(st) {
            let Some(a) = action_of(&body).filter(|_| ok) else {
                continue;
            };
            if a.is_end() {
                ended = pycode::computer_code(&a);
                continue;
            }
            if let Some(c) = pycode::code(&a, coords).or_else(|| pycode::computer_code(&a)) {
                code.push(c);
                said.push(words(&a));
            }
        }
        last_frame = st.frame_after.or(last_frame);
        if code.is_empty() {
            continue;
        }
        let image = match st.frame_before {
            Some(id) => Value::String(images.put(db, id)?),
            None => Value::Null,
        };
        traj.push(json!({
            "index": traj.len(),
            "image": image,
            "value": {
                "observation": "",
                "thought": st.thought.clone().unwrap_or_default(),
                "action": said.join("; "),
                "code": code.join("\n"),
                "last_step_correct": st.error.is_none(),
                "last_step_redundant": false,
                "reflection": "",
            },
        }));
    }
    let (passed, score) = verdict(ep);
    // The end, as OpenCUA writes it: the model's own `done`/`fail`, or the outcome.
    let end = ended.or_else(|| match passed {
        Some(true) => Some("computer.terminate(status='success')".into()),
        Some(false) => Some("computer.terminate(status='failure')".into()),
        None => None,
    });
    if let (Some(code), Some(id)) = (end, last_frame) {
        traj.push(json!({
            "index": traj.len(),
            "image": images.put(db, id)?,
            "value": {
                "observation": "",
                "thought": s.answer.clone().unwrap_or_default(),
                "action": "End the task",
                "code": code,
                "last_step_correct": true,
                "last_step_redundant": false,
                "reflection": "",
            },
        }));
    }
    Ok(json!({
        "task_id": s.task_id.clone().unwrap_or_else(|| s.id.clone()),
        "instruction": s.instruction,
        "task_completed": passed,
        "alignment_score": null,
        "efficiency_score": null,
        "task_difficulty": null,
        "natural_language_task": s.instruction,
        "actual_task": s.instruction,
        "traj": traj,
        "selfagent": {
            "session": s.id,
            "source": source(ep),
            "model": s.model,
            "score": score,
            "screen": [s.width, s.height],
            "images": "images/",
        },
    }))
}

/// `20261122@043501`, the timestamp OSWorld puts in file names and `action_timestamp`.
pub fn osworld_timestamp(ms: i64) -> String {
    let iso = crate::time::iso8601(ms);
    format!(
        "{}{}{}@{}{}{}",
        &iso[0..4],
        &iso[5..7],
        &iso[8..10],
        &iso[11..13],
        &iso[14..16],
        &iso[17..19]
    )
}

/// Writes the episode as an OSWorld result directory: `traj.jsonl` with one line per action
/// as OSWorld's runner writes it (`step_num`, `action_timestamp`, `action` as pyautogui code
/// in screen pixels or `DONE`/`FAIL`/`WAIT`, `response`, `reward`, `done`, `info`,
/// `screenshot_file`), the screen after each step as `step_<n>_<timestamp>.png`, and
/// `result.txt` with the score when the episode was graded. Returns the lines written.
pub fn osworld(db: &Db, ep: &Episode, dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (_, score) = verdict(ep);
    let score = score.or_else(|| ep.checks_grade().map(|g| g.score));
    let mut lines = Vec::new();
    let n = ep.steps.len();
    for (i, st) in ep.steps.iter().enumerate() {
        let ts = osworld_timestamp(st.started_at);
        let shot = match st.frame_after.or(st.frame_before) {
            Some(id) => {
                let row = db
                    .frame(id)?
                    .with_context(|| format!("frame {id} is missing from the recording"))?;
                let name = format!("step_{}_{ts}.png", st.idx);
                std::fs::write(dir.join(&name), &row.png)
                    .with_context(|| format!("writing {}", dir.join(&name).display()))?;
                Value::String(name)
            }
            None => Value::Null,
        };
        let done_step = i + 1 == n;
        let mut list = entries(st);
        if list.is_empty() {
            // A step without actions: the model answered (or failed to).
            list.push((
                true,
                json!({"action": "done", "answer": st.text}),
                None,
                None,
            ));
        }
        let count = list.len();
        for (k, (ok, body, error, text)) in list.into_iter().enumerate() {
            let last = done_step && k + 1 == count;
            let parsed = action_of(&body);
            let code = parsed
                .as_ref()
                .and_then(|a| {
                    pycode::osworld_special(a)
                        .map(str::to_owned)
                        .or_else(|| pycode::code(a, Coords::Pixels))
                })
                .map(Value::String)
                .unwrap_or_else(|| body.clone());
            lines.push(json!({
                "step_num": st.idx,
                "action_timestamp": ts,
                "action": code,
                "response": st.thought.clone().or_else(|| st.text.clone()).unwrap_or_default(),
                "reward": if last { score.unwrap_or(0.0) } else { 0.0 },
                "done": last,
                "info": {
                    "ok": ok,
                    "error": error,
                    "output": text,
                    "selfagent_action": body,
                    "actor": actor(ep, st),
                    "text": st.text,
                    "model_ms": st.model_ms,
                    "settle_ms": st.settle_ms,
                    "tokens_in": st.tokens_in,
                    "tokens_out": st.tokens_out,
                },
                "screenshot_file": shot,
            }));
        }
    }
    let mut text = String::new();
    for l in &lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    let path = dir.join("traj.jsonl");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    if let Some(s) = score {
        std::fs::write(dir.join("result.txt"), format!("{s}\n"))
            .with_context(|| format!("writing {}", dir.join("result.txt").display()))?;
    }
    Ok(lines.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osworld_timestamps_look_like_theirs() {
        assert_eq!(osworld_timestamp(1_795_318_844_275), "20261122@034044");
    }

    #[test]
    fn nulls_are_left_out() {
        assert_eq!(
            strip_nulls(json!({"a": null, "b": [{"c": null, "d": 1}]})),
            json!({"b": [{"d": 1}]})
        );
        assert_eq!(
            words(&Action::Key {
                text: "ctrl+s".into()
            }),
            "Press ctrl+s"
        );
        assert_eq!(
            words(&Action::MouseMove {
                coordinate: crate::action::Point { x: 3, y: 4 }
            }),
            "Mouse move at (3, 4)"
        );
    }
}
