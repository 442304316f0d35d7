//! The loop against a fake screen and an in-process model: no Docker, so the loop's own
//! behaviour (limits, interruptions, failures, each protocol's conversation) is tested
//! directly. The end-to-end tests in tests/ run the same loop against real desktops.

use super::*;
use crate::agent::model::{Check, ModelError, ModelRequest, RawReply};
use crate::desktop::{ActionOutput, DesktopError, FrameStamp, Mark, Screenshot, SettleReport};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A screen that is one grey PNG; actions are counted; `wait` really waits; it can die.
pub(crate) struct FakeScreen {
    png: Arc<Vec<u8>>,
    pub acted: AtomicUsize,
    pub released: AtomicUsize,
    /// From this action on (0-based count), the desktop is broken.
    pub dies_at: Option<usize>,
    pub dead: AtomicBool,
}

impl FakeScreen {
    pub(crate) fn new() -> Self {
        let rgb = vec![128u8; 64 * 40 * 3];
        Self {
            png: Arc::new(crate::desktop::encode_png(64, 40, &rgb).unwrap()),
            acted: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            dies_at: None,
            dead: AtomicBool::new(false),
        }
    }
}

impl Computer for FakeScreen {
    fn size(&self) -> (u32, u32) {
        (64, 40)
    }

    async fn screenshot(&self) -> Result<Screenshot, DesktopError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(DesktopError::Timeout {
                what: "a frame".into(),
                secs: 0.0,
            });
        }
        Ok(Screenshot {
            png: self.png.clone(),
            width: 64,
            height: 40,
            generation: 1,
            rgb: None,
        })
    }

    fn mark(&self) -> Mark {
        let now = std::time::Instant::now();
        Mark {
            stamp: FrameStamp {
                generation: 1,
                at: now,
            },
            taken: now,
        }
    }

    async fn act(&self, action: &Action) -> Result<ActionOutput, ActionError> {
        let n = self.acted.fetch_add(1, Ordering::SeqCst);
        if self.dies_at.is_some_and(|d| n >= d) {
            self.dead.store(true, Ordering::SeqCst);
            return Err(ActionError::Desktop(DesktopError::Timeout {
                what: "the VNC connection".into(),
                secs: 0.0,
            }));
        }
        if let Action::Wait { duration } = action {
            tokio::time::sleep(Duration::from_secs_f64(*duration)).await;
        }
        Ok(ActionOutput::default())
    }

    async fn settle(&self, _since: Mark, _opts: SettleOptions) -> SettleReport {
        SettleReport {
            waited_ms: 0.0,
            changes: 0,
            quiet: true,
            reaction_ms: None,
        }
    }

    async fn release_input(&self) {
        self.released.fetch_add(1, Ordering::SeqCst);
    }

    async fn gone(&self) {
        while !self.dead.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn why_gone(&self) -> Option<String> {
        self.dead
            .load(Ordering::SeqCst)
            .then(|| "the desktop fake exited (exit code 137)".to_owned())
    }
}

/// Answers with the bodies given, in order, then a final answer; keeps the requests.
pub(crate) struct Script {
    bodies: Mutex<VecDeque<Value>>,
    pub requests: Mutex<Vec<ModelRequest>>,
}

impl Script {
    pub(crate) fn new(bodies: Vec<Value>) -> Self {
        Self {
            bodies: Mutex::new(bodies.into()),
            requests: Mutex::new(Vec::new()),
        }
    }
}

impl Model for Script {
    fn name(&self) -> &str {
        "script"
    }

    async fn send(
        &self,
        request: &ModelRequest,
        check: Check<'_>,
        _on_retry: &(dyn Fn(Retry) + Send + Sync),
    ) -> Result<RawReply, ModelError> {
        self.requests.lock().unwrap().push(request.clone());
        let body = self
            .bodies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| json!({"choices": [{"message": {"content": "finished"}}]}));
        check(&body).map_err(ModelError::Malformed)?;
        Ok(RawReply {
            body,
            attempts: 1,
            elapsed: Duration::ZERO,
        })
    }
}

/// A chat reply with these `computer` calls.
pub(crate) fn calls(actions: &[Value]) -> Value {
    let calls: Vec<Value> = actions
        .iter()
        .enumerate()
        .map(|(i, a)| json!({"id": format!("c{i}"), "function": {"name": "computer", "arguments": a.to_string()}}))
        .collect();
    json!({"choices": [{"message": {"content": null, "tool_calls": calls}}], "usage": {"prompt_tokens": 10, "completion_tokens": 1}})
}

/// Runs the loop; returns the outcome and every event.
pub(crate) async fn run_with(
    cfg: AgentConfig,
    screen: &FakeScreen,
    model: &Script,
    commands: Vec<(Duration, Command)>,
) -> (Outcome, Vec<Arc<Event>>) {
    let mut emitter = Emitter::new();
    let mut rx = emitter.subscribe(100_000);
    let (tx, control) = mpsc::channel(16);
    let steer = tokio::spawn(async move {
        for (after, c) in commands {
            tokio::time::sleep(after).await;
            let _ = tx.send(c).await;
        }
        // Keep the channel open for the rest of the run.
        std::future::pending::<()>().await;
    });
    let outcome = run(&cfg, screen, model, &emitter, control).await;
    steer.abort();
    drop(emitter);
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    (outcome, events)
}

fn cfg() -> AgentConfig {
    AgentConfig {
        instruction: "test".into(),
        max_steps: 10,
        ..AgentConfig::default()
    }
}

fn failed(events: &[Arc<Event>]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e.as_ref() {
            Event::ActionFailed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_reply_with_hundreds_of_actions_runs_only_the_first_ones() {
    let screen = FakeScreen::new();
    let many: Vec<Value> = (0..200)
        .map(|_| json!({"action": "mouse_move", "coordinate": [1, 1]}))
        .collect();
    let model = Script::new(vec![calls(&many)]);
    let (outcome, events) = run_with(cfg(), &screen, &model, vec![]).await;
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(screen.acted.load(Ordering::SeqCst), DEFAULT_MAX_ACTIONS);
    let refused = failed(&events);
    assert_eq!(refused.len(), 200 - DEFAULT_MAX_ACTIONS);
    assert!(refused[0].contains("at most 16 actions"), "{}", refused[0]);
    // The model hears why.
    let second = model.requests.lock().unwrap()[1].body.to_string();
    assert!(second.contains("at most 16 actions"));
}

#[tokio::test]
async fn the_deadline_holds_during_long_actions() {
    let screen = FakeScreen::new();
    let waits: Vec<Value> = (0..5)
        .map(|_| json!({"action": "wait", "duration": 100}))
        .collect();
    let model = Script::new(vec![calls(&waits)]);
    let started = std::time::Instant::now();
    let (outcome, events) = run_with(
        AgentConfig {
            timeout: Duration::from_millis(500),
            ..cfg()
        },
        &screen,
        &model,
        vec![],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (outcome.status, outcome.ended_by),
        (Status::Failed, EndedBy::TimeLimit)
    );
    assert_eq!(screen.released.load(Ordering::SeqCst), 1, "input released");
    // The step cut short is recorded.
    assert!(
        events
            .iter()
            .any(|e| matches!(e.as_ref(), Event::StepFinished { step: 1, .. }))
    );
}

#[tokio::test]
async fn a_stop_interrupts_the_current_action() {
    let screen = FakeScreen::new();
    let model = Script::new(vec![calls(&[json!({"action": "wait", "duration": 100})])]);
    let started = std::time::Instant::now();
    let (outcome, _) = run_with(
        cfg(),
        &screen,
        &model,
        vec![(Duration::from_millis(200), Command::Stop)],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (outcome.status, outcome.ended_by),
        (Status::Stopped, EndedBy::User)
    );
}

#[tokio::test]
async fn a_desktop_that_dies_mid_step_ends_as_the_harness_with_the_step_recorded() {
    let screen = FakeScreen {
        dies_at: Some(1),
        ..FakeScreen::new()
    };
    let model = Script::new(vec![
        calls(&[json!({"action": "mouse_move", "coordinate": [1, 1]})]),
        calls(&[json!({"action": "mouse_move", "coordinate": [2, 2]})]),
    ]);
    let (outcome, events) = run_with(cfg(), &screen, &model, vec![]).await;
    assert_eq!(
        (outcome.status, outcome.ended_by),
        (Status::Error, EndedBy::Harness)
    );
    let error = outcome.error.unwrap();
    assert!(error.contains("exited (exit code 137)"), "{error}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e.as_ref(), Event::StepFinished { step: 2, .. }))
    );
    assert!(failed(&events)[0].contains("exit code 137"));
}

#[tokio::test]
async fn an_abort_from_the_harness_ends_the_episode_as_a_recording_failure() {
    let screen = FakeScreen::new();
    let model = Script::new(vec![calls(&[json!({"action": "wait", "duration": 100})])]);
    let (outcome, _) = run_with(
        cfg(),
        &screen,
        &model,
        vec![(
            Duration::from_millis(100),
            Command::Abort("the recording failed: disk full".into()),
        )],
    )
    .await;
    assert_eq!(
        (outcome.status, outcome.ended_by),
        (Status::Error, EndedBy::Recording)
    );
    assert!(outcome.error.unwrap().contains("disk full"));
}
