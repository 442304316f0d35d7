//! Headless output: the loop's events as human-readable progress or as JSON Lines, behind
//! one small trait (the TUI is another consumer of the same events).

use crate::action::Action;
use crate::agent::Event;
use crate::task::check::Verdict;
use serde_json::{Value, json};
use std::io::Write;
use std::time::Instant;

pub trait EventPrinter: Send {
    fn print(&mut self, event: &Event, out: &mut dyn Write) -> std::io::Result<()>;
}

/// Prints an episode's events as they come, as JSON Lines or for people, on stdout or
/// stderr. Returns the sink for the episode's hooks and the task that ends with the stream.
pub fn spawn_printer(
    json: bool,
    stderr: bool,
) -> (
    tokio::sync::mpsc::Sender<std::sync::Arc<Event>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::sync::Arc<Event>>(4096);
    let task = tokio::spawn(async move {
        let mut printer: Option<Box<dyn EventPrinter>> = None;
        while let Some(event) = rx.recv().await {
            let p = printer.get_or_insert_with(|| match (&*event, json) {
                (Event::SessionStarted(s), true) => {
                    Box::new(JsonLines::new(&s.session, &s.sandbox)) as Box<dyn EventPrinter>
                }
                (_, true) => Box::new(JsonLines::new("", "")),
                (_, false) => Box::new(Human),
            });
            let _ = if stderr {
                p.print(&event, &mut std::io::stderr().lock())
            } else {
                p.print(&event, &mut std::io::stdout().lock())
            };
        }
    });
    (tx, task)
}

/// One JSON object per event, each naming the session and the sandbox, with the time in
/// milliseconds since the printer started.
pub struct JsonLines {
    session: String,
    sandbox: String,
    started: Instant,
}

impl JsonLines {
    pub fn new(session: &str, sandbox: &str) -> Self {
        Self {
            session: session.to_owned(),
            sandbox: sandbox.to_owned(),
            started: Instant::now(),
        }
    }
}

/// The longest string a JSON line carries; longer ones (a model's megabytes of text) are
/// cut, saying how much was left out (the recording has them whole).
const MAX_JSON_STRING: usize = 64 << 10;

/// Cuts every string longer than [`MAX_JSON_STRING`] bytes.
fn shorten_strings(v: &mut Value) {
    match v {
        Value::String(s) if s.len() > MAX_JSON_STRING => {
            let mut end = MAX_JSON_STRING;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            let left = s.len() - end;
            s.truncate(end);
            s.push_str(&format!("… [{left} more bytes; the recording has it all]"));
        }
        Value::Array(items) => items.iter_mut().for_each(shorten_strings),
        Value::Object(map) => map.values_mut().for_each(shorten_strings),
        _ => {}
    }
}

impl EventPrinter for JsonLines {
    fn print(&mut self, event: &Event, out: &mut dyn Write) -> std::io::Result<()> {
        let mut v = serde_json::to_value(event)
            .unwrap_or_else(|e| json!({"type": "unserializable", "error": e.to_string()}));
        shorten_strings(&mut v);
        if let Value::Object(map) = &mut v {
            map.insert("session".into(), json!(self.session));
            map.insert("sandbox".into(), json!(self.sandbox));
            map.insert(
                "t_ms".into(),
                json!(self.started.elapsed().as_millis() as u64),
            );
        }
        writeln!(out, "{v}")
    }
}

/// Progress for people: a line or a few per step.
#[derive(Default)]
pub struct Human;

/// `s` on one line, at most `max` characters and an ellipsis.
fn one_line(s: &str, max: usize) -> String {
    crate::text::one_line(s, max + 1)
}

/// At most `max` characters of `s`, saying how many were left out.
fn shortened(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        s.to_owned()
    } else {
        format!(
            "{}… [{} more characters; `selfagent sessions show` has it all]",
            s.chars().take(max).collect::<String>(),
            n - max
        )
    }
}

/// `left_click (640, 400)`, `type "hello"`, `key ctrl+s`.
pub fn describe(action: &Action) -> String {
    match action {
        Action::MouseMove { coordinate } => format!("mouse_move {coordinate}"),
        Action::Click {
            coordinate,
            button,
            count,
            modifiers,
        } => {
            let name = match count {
                2 => "double_click".to_owned(),
                3 => "triple_click".to_owned(),
                _ => format!(
                    "{}_click",
                    serde_json::to_value(button)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
            };
            let at = coordinate.map(|c| format!(" {c}")).unwrap_or_default();
            let mods = if modifiers.is_empty() {
                String::new()
            } else {
                format!(" +{}", modifiers.join("+"))
            };
            format!("{name}{at}{mods}")
        }
        Action::Drag { path, .. } => format!(
            "drag {}",
            path.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" → ")
        ),
        Action::Scroll {
            coordinate, dx, dy, ..
        } => {
            let at = coordinate.map(|c| format!(" at {c}")).unwrap_or_default();
            format!("scroll dx={dx} dy={dy}{at}")
        }
        Action::Type { text } => format!("type {:?}", one_line(text, 60)),
        Action::Key { text } => format!("key {text}"),
        Action::HoldKey { text, duration } => format!("hold_key {text} for {duration} s"),
        Action::Wait { duration } => format!("wait {duration} s"),
        Action::Done { answer } => format!(
            "done {}",
            answer
                .as_deref()
                .map(|a| one_line(a, 60))
                .unwrap_or_default()
        ),
        Action::Fail { reason } => format!("fail {}", one_line(reason, 60)),
        Action::Launch { app } => format!("launch {app}"),
        Action::Open { target } => format!("open {target}"),
        Action::Exec { command, .. } => format!("exec {}", one_line(command, 60)),
        other => other.name().to_owned(),
    }
}

impl EventPrinter for Human {
    fn print(&mut self, event: &Event, out: &mut dyn Write) -> std::io::Result<()> {
        match event {
            Event::SessionStarted(s) => {
                writeln!(
                    out,
                    "session {}  sandbox {}",
                    s.session,
                    crate::text::prefix(&s.sandbox, 12)
                )?;
                writeln!(
                    out,
                    "model   {} at {}  protocol {}, coords {}  screen {}x{} (sent {}x{})  up to {} steps",
                    s.model,
                    s.base_url,
                    s.protocol,
                    s.coords,
                    s.width,
                    s.height,
                    s.sent_width,
                    s.sent_height,
                    s.max_steps
                )?;
                writeln!(out, "task    {}", one_line(&s.instruction, 200))?;
            }
            Event::StepStarted { .. } | Event::Observation { .. } | Event::StepFinished { .. } => {}
            Event::ModelRetry {
                step,
                attempt,
                error,
                wait_ms,
            } => {
                writeln!(
                    out,
                    "step {step}: retry {attempt} in {:.1} s: {}",
                    *wait_ms as f64 / 1000.0,
                    one_line(error, 160)
                )?;
            }
            Event::ModelReply {
                step,
                thought,
                text,
                calls,
                usage,
                model_ms,
                ..
            } => {
                writeln!(
                    out,
                    "step {step}: model {:.2} s, {} in / {} out tokens",
                    model_ms / 1000.0,
                    usage.input,
                    usage.output
                )?;
                if let Some(t) = thought {
                    writeln!(out, "        thought: {}", one_line(t, 160))?;
                }
                if calls.is_empty()
                    && let Some(t) = text
                {
                    writeln!(out, "        answer: {}", one_line(t, 300))?;
                }
            }
            Event::ActionDone {
                action,
                text,
                act_ms,
                ..
            } => {
                let extra = text
                    .as_deref()
                    .map(|t| format!(" → {}", one_line(t, 80)))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "        {}  ok {act_ms:.1} ms{extra}",
                    describe(action)
                )?;
            }
            Event::Grounded {
                element,
                point,
                error,
                model,
                model_ms,
                ..
            } => match (point, error) {
                (Some(p), _) => writeln!(
                    out,
                    "        found \"{}\" at {p} ({model}, {:.2} s)",
                    one_line(element, 80),
                    model_ms / 1000.0
                )?,
                (None, e) => writeln!(
                    out,
                    "        \"{}\" not found ({model}): {}",
                    one_line(element, 80),
                    one_line(e.as_deref().unwrap_or("no answer"), 160)
                )?,
            },
            Event::ActionFailed { input, error, .. } => {
                let name = crate::model::protocol::describe_input(input);
                writeln!(out, "        {name}  ERROR {}", one_line(error, 200))?;
            }
            Event::StepError { step, error } => {
                writeln!(out, "step {step}: ERROR {}", one_line(error, 300))?;
            }
            Event::Settled { report, .. } => {
                writeln!(
                    out,
                    "        settled in {:.0} ms ({} screen changes{})",
                    report.waited_ms,
                    report.changes,
                    if report.quiet { "" } else { ", still changing" }
                )?;
            }
            Event::StepMark {
                step, key, mark, ..
            } if key == "rerun" => {
                let mode = mark["mode"].as_str().unwrap_or("?");
                match mark["of"].as_i64() {
                    Some(of) => writeln!(
                        out,
                        "step {step}: {mode} (recorded step {of}; screen differed {:.1}%, waited {:.0} ms)",
                        mark["difference"].as_f64().unwrap_or(0.0) * 100.0,
                        mark["waited_ms"].as_f64().unwrap_or(0.0)
                    )?,
                    None => writeln!(out, "step {step}: {mode}")?,
                }
            }
            Event::StepMark { .. } => {}
            Event::Paused { step, reason } => writeln!(out, "step {step}: waiting ({reason})")?,
            // `calibrate` prints its report itself.
            Event::Calibration(_) => {}
            Event::SafetyCheck {
                step,
                checks,
                acknowledged,
            } => {
                for c in checks {
                    writeln!(
                        out,
                        "step {step}: SAFETY CHECK {} ({acknowledged}): {}",
                        c.code,
                        one_line(&c.message, 200)
                    )?;
                }
            }
            Event::NeedsUser { step, question } => writeln!(
                out,
                "step {step}: the model asks for help{}",
                question
                    .as_deref()
                    .map(|q| format!(": {}", one_line(q, 200)))
                    .unwrap_or_default()
            )?,
            Event::AwaitingApproval { step, action, .. } => {
                writeln!(
                    out,
                    "step {step}: waiting for approval of {}",
                    describe(action)
                )?;
            }
            Event::TakeOverView { step, vnc, .. } => {
                writeln!(out, "step {step}: taken over; recorded through {vnc}")?;
            }
            Event::Intervention { step, kind, text } => {
                writeln!(
                    out,
                    "step {step}: {kind}{}",
                    text.as_deref()
                        .map(|t| format!(": {t}"))
                        .unwrap_or_default()
                )?;
            }
            Event::Setup {
                phase,
                index,
                total,
                step,
                ms,
                error,
            } => match error {
                None => writeln!(out, "{phase} {index}/{total}: {step}  ok {ms:.0} ms")?,
                Some(e) => writeln!(
                    out,
                    "{phase} {index}/{total}: {step}  FAILED after {ms:.0} ms: {}",
                    one_line(e, 300)
                )?,
            },
            Event::Graded { grade, .. } => {
                writeln!(out, "grade: {}", grade.summary())?;
                if let Some(result) = &grade.result {
                    for leaf in result.leaves() {
                        let mark = match leaf.verdict {
                            Verdict::Passed => "ok   ",
                            Verdict::Failed => "FAIL ",
                            Verdict::Error => "ERROR",
                        };
                        writeln!(
                            out,
                            "  {mark} {}  ({})",
                            one_line(&leaf.check, 120),
                            one_line(&leaf.detail, 160)
                        )?;
                    }
                }
            }
            Event::Finished(o) => {
                writeln!(
                    out,
                    "{} after {} in {:.1} s ({} in / {} out tokens{})",
                    crate::output::status(&o.status.to_string(), 0),
                    crate::output::count(o.steps, "step"),
                    o.wall_ms as f64 / 1000.0,
                    o.tokens_in,
                    o.tokens_out,
                    o.cost
                        .map(|c| format!(", {}", crate::model::price::dollars(c)))
                        .unwrap_or_default()
                )?;
                if let Some(a) = &o.answer {
                    writeln!(out, "answer: {}", shortened(a, 4000))?;
                }
                if let Some(e) = &o.error {
                    writeln!(out, "reason: {}", shortened(e, 4000))?;
                }
            }
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Button, Point};

    #[test]
    fn actions_read_well() {
        let a = Action::Click {
            coordinate: Some(Point::new(3, 4)),
            button: Button::Right,
            count: 1,
            modifiers: vec!["ctrl".into()],
        };
        assert_eq!(describe(&a), "right_click (3, 4) +ctrl");
        let a = Action::Click {
            coordinate: None,
            button: Button::Left,
            count: 2,
            modifiers: vec![],
        };
        assert_eq!(describe(&a), "double_click");
        assert_eq!(
            describe(&Action::Type {
                text: "a\nb".into()
            }),
            "type \"a b\""
        );
    }

    #[test]
    fn long_text_is_printed_shortened() {
        let huge = "y".repeat(5 << 20);
        let mut out = Vec::new();
        JsonLines::new("s", "b")
            .print(
                &Event::StepError {
                    step: 1,
                    error: huge.clone(),
                },
                &mut out,
            )
            .unwrap();
        assert!(out.len() < 70_000, "{} bytes", out.len());
        assert!(String::from_utf8_lossy(&out).contains("more bytes"));
        let mut out = Vec::new();
        Human
            .print(
                &Event::Finished(crate::agent::Outcome {
                    status: crate::agent::Status::Succeeded,
                    ended_by: crate::agent::EndedBy::Model,
                    answer: Some(huge),
                    error: None,
                    steps: 1,
                    tokens_in: 0,
                    tokens_out: 0,
                    wall_ms: 0,
                    cost: None,
                }),
                &mut out,
            )
            .unwrap();
        assert!(out.len() < 5000, "{} bytes", out.len());
    }

    #[test]
    fn json_lines_name_session_and_sandbox() {
        let mut p = JsonLines::new("s1", "box1");
        let mut out = Vec::new();
        p.print(&Event::StepStarted { step: 3 }, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (
                v["type"].as_str(),
                v["session"].as_str(),
                v["sandbox"].as_str(),
                v["step"].as_u64()
            ),
            (Some("step_started"), Some("s1"), Some("box1"), Some(3))
        );
    }
}
