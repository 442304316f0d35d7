//! The loop against a fake screen and an in-process model: no Docker, so the loop's own
//! behaviour (limits, interruptions, failures, each protocol's conversation) is tested
//! directly. The end-to-end tests in tests/ run the same loop against real desktops.

use super::*;
use crate::desktop::{ActionOutput, DesktopError, FrameStamp, Mark, Screenshot, SettleReport};
use crate::model::{Check, ModelError, ModelRequest, RawReply};
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

fn anthropic_cfg(model: &str) -> AgentConfig {
    AgentConfig {
        protocol: protocol::ProtocolConfig::for_model("anthropic".parse().unwrap(), model),
        ..cfg()
    }
}

/// Anthropic's computer toolset: one block per action; the first that fails stops the
/// turn, and every later block is answered, not done, with the toolset's own words.
#[tokio::test]
async fn a_toolset_turn_stops_at_its_first_failure_and_answers_every_block() {
    let screen = FakeScreen::new();
    let block = |id: &str, name: &str, input: Value| json!({"type": "tool_use", "id": id, "name": name, "toolset_name": "computer", "input": input});
    let turn = json!({"content": [
        block("t1", "key", json!({"text": "Down", "repeat": 3})),
        block("t2", "key", json!({"text": "ctrl+NoSuchKey"})),
        block("t3", "type", json!({"text": "never typed"})),
        block("t4", "screenshot", json!({}))
    ], "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 2}});
    let done = json!({"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"});
    let model = Script::new(vec![turn, done]);
    let (outcome, events) =
        run_with(anthropic_cfg("claude-sonnet-5-5"), &screen, &model, vec![]).await;
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(screen.acted.load(Ordering::SeqCst), 1, "only the key ran");
    let done: Vec<&Action> = events
        .iter()
        .filter_map(|e| match e.as_ref() {
            Event::ActionDone { action, .. } => Some(action),
            _ => None,
        })
        .collect();
    assert_eq!(
        done,
        vec![&Action::Key {
            text: "Down Down Down".into()
        }]
    );
    let requests = model.requests.lock().unwrap();
    let first = requests[0].resolved_body();
    assert_eq!(
        first["tools"],
        json!([{"type": "computer_toolset_20260801", "cache_control": {"type": "ephemeral"}}])
    );
    assert!(
        !requests[0]
            .headers
            .iter()
            .any(|(k, _)| k == "anthropic-beta")
    );
    let second = requests[1].resolved_body();
    let results: Vec<&Value> = second["messages"][2]["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 4, "every block is answered");
    assert!(results.iter().all(|r| r["toolset_name"] == "computer"));
    assert_eq!(
        results
            .iter()
            .map(|r| r["is_error"] == true)
            .collect::<Vec<_>>(),
        vec![false, true, true, true]
    );
    assert!(
        results[1].to_string().contains("NoSuchKey"),
        "{}",
        results[1]
    );
    for r in &results[2..] {
        assert_eq!(r["content"][0]["text"], protocol::NOT_EXECUTED);
    }
    // No image in results that are not a screenshot or a zoom: the screen follows them.
    assert!(results.iter().all(|r| !r.to_string().contains("\"image\"")));
    assert!(
        second["messages"][2]["content"]
            .to_string()
            .contains("\"image\"")
    );
}

/// A 5.5 Claude never gets the older tool, and an older Claude never gets the toolset.
#[tokio::test]
async fn claude_models_get_their_own_computer_tool() {
    for (model, tool) in [
        ("claude-opus-5-5", "computer_toolset_20260801"),
        ("claude-sonnet-5", "computer_toolset_20260801"),
        ("claude-fable-5-1", "computer_toolset_20260801"),
        ("claude-opus-4-8", "computer_toolset_20260801"),
        ("claude-opus-4-7", "computer_20251124"),
        ("us.anthropic.claude-opus-5-5", "computer_20251124"),
        ("claude-sonnet-4-5-20250929", "computer_20250124"),
    ] {
        let screen = FakeScreen::new();
        let script = Script::new(vec![
            json!({"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"}),
        ]);
        let (outcome, _) = run_with(anthropic_cfg(model), &screen, &script, vec![]).await;
        assert_eq!(outcome.status, Status::Succeeded, "{model}");
        let body = script.requests.lock().unwrap()[0].resolved_body();
        assert_eq!(body["tools"].as_array().unwrap().len(), 1, "{model}");
        assert_eq!(body["tools"][0]["type"], tool, "{model}");
    }
}

/// A reply in another model's call format is never taken for the final answer.
#[tokio::test]
async fn call_markup_the_dialect_cannot_read_is_not_an_answer() {
    for text in [
        "<tool_call>\n<function=computer_use>\n<parameter=action>\nleft_click\n</parameter>\n</function>\n</tool_call>",
        "I click it.\n<|begin_of_box|>left_click(start_box='[500,500]')<|end_of_box|>\nMemory:\n[]",
        "<tool_call>{\"name\": \"computer\", \"arguments\": {\"action\": \"left_click\", \"coordinate\": [1, 1]</tool_call>",
    ] {
        let screen = FakeScreen::new();
        let reply = json!({"choices": [{"message": {"content": text}}]});
        let model = Script::new(vec![reply.clone(), reply.clone(), reply]);
        let (outcome, events) = run_with(cfg(), &screen, &model, vec![]).await;
        assert_eq!(
            (outcome.status, outcome.steps),
            (Status::Error, 3),
            "{text}: {:?}",
            outcome.error
        );
        assert!(!failed(&events).is_empty());
    }
}

/// Qwen3.5's XML-style call, in the text, drives the `qwen` protocol (the function is
/// `computer`, coordinates 0-1000).
#[tokio::test]
async fn a_qwen35_xml_call_is_done() {
    let screen = FakeScreen::new();
    let xml = "Action: click.\n<tool_call>\n<function=computer>\n<parameter=action>\nleft_click\n</parameter>\n<parameter=coordinate>\n[500, 500]\n</parameter>\n</function>\n</tool_call>";
    let model = Script::new(vec![
        json!({"choices": [{"message": {"content": xml}}]}),
        json!({"choices": [{"message": {"content": "The task is done."}}]}),
    ]);
    let cfg = AgentConfig {
        protocol: protocol::ProtocolConfig::for_model(
            "qwen".parse().unwrap(),
            "Qwen/Qwen3.5-35B-A3B",
        ),
        ..cfg()
    };
    let (outcome, events) = run_with(cfg, &screen, &model, vec![]).await;
    assert_eq!((outcome.status, outcome.steps), (Status::Succeeded, 2));
    let clicked = events.iter().any(|e| {
        matches!(e.as_ref(), Event::ActionDone { action: Action::Click { coordinate: Some(p), .. }, .. } if *p == crate::action::Point::new(32, 20))
    });
    assert!(clicked, "{:?}", failed(&events));
    let sent = model.requests.lock().unwrap()[0].body.to_string();
    assert!(
        sent.contains("\\\"name\\\":\\\"computer\\\""),
        "the function is `computer`"
    );
}

/// The toolset's definition (about 4,500 input tokens) is part of every call's cost: a
/// budget that cannot pay for it stops the episode before the call.
#[tokio::test]
async fn a_budget_counts_the_toolsets_definition() {
    let priced = |max: f64| AgentConfig {
        price: Some(price::Priced {
            price: price::Price {
                input: 5.0,
                output: 25.0,
            },
            source: "test".into(),
        }),
        max_cost: Some(max),
        ..anthropic_cfg("claude-opus-5-5")
    };
    let done = || json!({"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn", "usage": {"input_tokens": 5000, "output_tokens": 10}});
    // $0.0225 a call at least: a cent does not pay for one.
    let screen = FakeScreen::new();
    let model = Script::new(vec![done()]);
    let (outcome, _) = run_with(priced(0.01), &screen, &model, vec![]).await;
    assert_eq!(
        (outcome.status, outcome.ended_by),
        (Status::Stopped, EndedBy::Budget)
    );
    assert!(outcome.error.unwrap().contains("tool definition"));
    assert!(
        model.requests.lock().unwrap().is_empty(),
        "no call was made"
    );
    // A dollar does.
    let model = Script::new(vec![done()]);
    let (outcome, _) = run_with(priced(1.0), &screen, &model, vec![]).await;
    assert_eq!(outcome.status, Status::Succeeded);
}
