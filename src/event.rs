//! What the loop reports: one [`Event`] stream that the headless printer, the recorder and
//! (later) the TUI all consume, and that replay reproduces from a recording.

use crate::action::Action;
use crate::desktop::SettleReport;
use crate::model::Usage;
use crate::model::protocol::Call;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A screenshot as the episode saw it: identified by the SHA-256 of its PNG.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
    #[serde(skip)]
    pub png: Arc<Vec<u8>>,
}

/// The SHA-256 of `bytes` in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Frame {
    pub fn new(png: Arc<Vec<u8>>, width: u32, height: u32) -> Self {
        let sha256 = sha256_hex(png.as_slice());
        Self {
            sha256,
            width,
            height,
            bytes: png.len(),
            png,
        }
    }
}

/// How an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    /// The model finished: it answered, or called `done`.
    Succeeded,
    /// The model gave up (`fail`), or a step or time limit ended it.
    Failed,
    /// Stopped by the user.
    Stopped,
    /// The process died; found so the next time the recording was opened.
    Interrupted,
    /// The desktop or the model server broke.
    Error,
    /// The model asked a person for help (`call_user`) where nobody could answer.
    #[serde(rename = "needs_user", alias = "needsuser")]
    NeedsUser,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Interrupted => "interrupted",
            Self::Error => "error",
            Self::NeedsUser => "needs_user",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "stopped" => Self::Stopped,
            "interrupted" => Self::Interrupted,
            "error" => Self::Error,
            "needs_user" => Self::NeedsUser,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an episode is: written once, when it starts.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub session: String,
    pub sandbox: String,
    pub instruction: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub model: String,
    /// Without credentials.
    pub base_url: String,
    pub protocol: String,
    /// The model's coordinate space (`native`, `smart`, `1000`, `999`, `unit`).
    pub coords: String,
    pub image: String,
    /// The Docker engine the desktop ran on (`unix:///…`, `tcp://…`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub engine: String,
    pub width: u32,
    pub height: u32,
    /// The size screenshots are sent to the model at.
    pub sent_width: u32,
    pub sent_height: u32,
    pub max_steps: u32,
    pub timeout_s: f64,
    /// The task definition, for tasks (kept so the episode can be graded again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Value>,
    /// The model's price, when known: costs are tokens times this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<crate::model::price::Priced>,
    /// Who drove it when not selfagent's own loop: `mcp` (an MCP host's tool calls),
    /// `rerun` (a recording done again), `human` (a person's demonstration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The session this one re-runs (`selfagent rerun`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
}

/// What ended an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// The model answered, called `done`, or called `fail`.
    Model,
    StepLimit,
    TimeLimit,
    /// A person stopped it.
    User,
    /// The desktop or the model server broke.
    Error,
    /// The harness failed: the desktop did not come up or died, a task's setup step
    /// failed. Not the agent's doing.
    Harness,
    /// The recording could not be written (a full disk): the episode stopped rather than
    /// go on unrecorded.
    Recording,
    /// The model's provider raised a safety check that nobody acknowledged.
    Safety,
    /// The cost limit (`--max-cost`) was reached.
    Budget,
    /// An MCP host that drove the desktop let it go (`sandbox_down`, its connection's end,
    /// the idle timeout).
    Host,
    /// A re-run did every recorded step (`selfagent rerun`).
    Replayed,
    /// A re-run found the screen unlike the recording and halted (`--on-drift halt`).
    Drift,
    /// A person ended a demonstration (`selfagent demo`).
    Demonstrator,
}

/// How an episode ended, with its totals.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Status,
    pub ended_by: EndedBy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub steps: u32,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub wall_ms: u64,
    /// Dollars, where the model's price is known (see [`crate::model::price`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

impl Outcome {
    /// An episode that ended in error before or outside the loop (the desktop did not start,
    /// calibration could not run), after `wall_ms`.
    pub fn failed(ended_by: EndedBy, error: String, wall_ms: u64) -> Self {
        Self {
            status: Status::Error,
            ended_by,
            answer: None,
            error: Some(error),
            steps: 0,
            tokens_in: 0,
            tokens_out: 0,
            wall_ms,
            cost: None,
        }
    }
}

/// The request as recorded (images as frame references) and the raw response.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub request: Value,
    pub response: Value,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    SessionStarted(SessionInfo),
    StepStarted {
        step: u32,
    },
    /// The screenshot the model is about to see.
    Observation {
        step: u32,
        frame: Frame,
    },
    ModelRetry {
        step: u32,
        attempt: u32,
        error: String,
        wait_ms: u64,
    },
    ModelReply {
        step: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        thought: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The actions the model asked for, each in screen pixels or with why it cannot
        /// be done.
        calls: Vec<Call>,
        usage: Usage,
        model_ms: f64,
        attempts: u32,
        #[serde(skip)]
        exchange: Option<Arc<Exchange>>,
    },
    /// A planner named an element and the grounder looked for it (`--grounder`): where it
    /// is in screen pixels, or why it was not found (then the action is not done).
    Grounded {
        step: u32,
        /// The call the element belongs to.
        index: usize,
        element: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        point: Option<crate::action::Point>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// The grounding model.
        model: String,
        usage: Usage,
        model_ms: f64,
        #[serde(skip)]
        exchange: Option<Arc<Exchange>>,
    },
    ActionDone {
        step: u32,
        index: usize,
        /// In screen pixels (after scaling back from the model's space).
        action: Action,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        act_ms: f64,
        /// An image the action produced (`zoom`).
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<Frame>,
    },
    ActionFailed {
        step: u32,
        index: usize,
        /// The tool input as the model gave it.
        input: Value,
        error: String,
    },
    /// Something broke the step as a whole (the desktop died after its actions): recorded
    /// with the step.
    StepError {
        step: u32,
        error: String,
    },
    Settled {
        step: u32,
        #[serde(flatten)]
        report: SettleReport,
    },
    /// What a step was, beyond the loop's own terms, kept in the step's `meta` under
    /// `key`: a re-run's `rerun` (replayed, healed, model, halted; the difference from the
    /// recorded screen), a demonstration's `human`. `expected` is a frame the step is
    /// compared with (a re-run's recorded screen), stored and named as `expected_frame`.
    StepMark {
        step: u32,
        key: String,
        mark: Value,
        #[serde(skip)]
        expected: Option<Frame>,
    },
    StepFinished {
        step: u32,
        /// The screen after the step.
        frame: Frame,
        step_ms: f64,
    },
    /// The loop is waiting: `paused` or `taken_over`.
    Paused {
        step: u32,
        reason: String,
    },
    /// In approve mode: the loop waits for a yes or no before this action.
    AwaitingApproval {
        step: u32,
        index: usize,
        action: Action,
    },
    /// The model's provider raised safety checks about the step's actions: they wait for a
    /// person to acknowledge them (`acknowledged` tells what became of them: `asked`,
    /// `acknowledged` by flag, or `refused` where nobody could be asked).
    SafetyCheck {
        step: u32,
        checks: Vec<crate::model::protocol::SafetyCheck>,
        acknowledged: String,
    },
    /// The model asks the person for help (`call_user`); the loop waits for a message.
    NeedsUser {
        step: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        question: Option<String>,
    },
    /// A take-over is recorded: the person's input goes through a recording proxy at `vnc`
    /// and becomes steps (source `human`) until they hand back. The browser view's URL holds
    /// the proxy's password, so it goes to the UI only, never into the recording.
    TakeOverView {
        step: u32,
        vnc: String,
        #[serde(skip)]
        view_url: Option<String>,
    },
    /// A person stepped in: pause, resume, step, message, approve, deny, take over,
    /// hand back, stop.
    Intervention {
        step: u32,
        kind: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// One step of a task's setup (before the agent starts) or post steps (after it ends),
    /// done or failed.
    Setup {
        /// `setup` or `post`.
        phase: String,
        index: usize,
        total: usize,
        step: String,
        ms: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Finished(Outcome),
    /// The task's checks ran on the final state (after `Finished`).
    Graded {
        grade: crate::task::check::Grade,
        /// What the checks read, kept for grading again later (not printed).
        #[serde(skip)]
        state: Option<crate::task::check::FinalState>,
    },
    /// A calibration's report (`selfagent calibrate`, after `Finished`).
    Calibration(serde_json::Value),
}

/// Sends events to every consumer, in order. Channels are bounded and large: a consumer
/// that falls far behind slows the loop down rather than losing events.
#[derive(Clone, Default)]
pub struct Emitter {
    sinks: Vec<mpsc::Sender<Arc<Event>>>,
}

impl Emitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new consumer, with its receiving end.
    pub fn subscribe(&mut self, capacity: usize) -> mpsc::Receiver<Arc<Event>> {
        let (tx, rx) = mpsc::channel(capacity);
        self.sinks.push(tx);
        rx
    }

    pub fn add(&mut self, sink: mpsc::Sender<Arc<Event>>) {
        self.sinks.push(sink);
    }

    pub async fn emit(&self, event: Event) {
        let event = Arc::new(event);
        for sink in &self.sinks {
            // A consumer that went away is not the loop's problem.
            let _ = sink.send(event.clone()).await;
        }
    }
}

/// What a person (or the provider) did to an episode, in words, from an event's kind and
/// data as recorded: interventions, safety checks, calls for help. `None` for other events.
/// One wording for the TUI's timeline, `sessions show` and the HTML export.
pub fn note(kind: &str, data: Option<&str>) -> Option<String> {
    let text = data.unwrap_or_default();
    Some(match kind {
        "pause" => "✋ paused by the person watching".into(),
        "resume" => "▶ resumed".into(),
        "step" => "▶ one step".into(),
        "stop" => "■ stopped by the person watching".into(),
        "message" => format!("✉ message from the person watching: {text}"),
        "approve_on" => "approve mode on: each action waits for a yes".into(),
        "approve_off" => "approve mode off".into(),
        "approve" => "✓ action approved".into(),
        "deny" => "✗ action denied".into(),
        "take_over" => "✋ taken over by the person watching".into(),
        "hand_back" => "↩ handed back to the agent".into(),
        "abort" => format!("■ aborted: {text}"),
        "needs_user" if text.is_empty() => "? the agent asked for help".into(),
        "needs_user" => format!("? the agent asked for help: {text}"),
        "safety_check" => {
            let v: Value = serde_json::from_str(text).unwrap_or_default();
            let codes: Vec<String> = v["checks"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|x| {
                            x["code"]
                                .as_str()
                                .or(x["message"].as_str())
                                .unwrap_or("check")
                                .to_owned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "⚠ the provider's safety check ({}): {}",
                codes.join(", "),
                v["acknowledged"].as_str().unwrap_or("asked")
            )
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::note;

    #[test]
    fn interventions_read_as_words() {
        assert_eq!(
            note("message", Some("use the menu")).as_deref(),
            Some("✉ message from the person watching: use the menu")
        );
        assert_eq!(
            note(
                "safety_check",
                Some(r#"{"checks":[{"code":"malicious_instructions"}],"acknowledged":"yes"}"#)
            )
            .as_deref(),
            Some("⚠ the provider's safety check (malicious_instructions): yes")
        );
        assert_eq!(note("setup", None), None);
    }
}
