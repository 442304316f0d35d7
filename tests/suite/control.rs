//! Steering a running episode: approve/deny, messages, take over and hand back, through the
//! real loop on a real desktop, with an in-process scripted model that keeps its requests.

use crate::common::desktop;
use crate::common::sdk::python;
use selfagent::agent::{self, AgentConfig, Command, Emitter, Event, Status};
use selfagent::model::{Check, Model, ModelError, ModelRequest, RawReply, Retry};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Answers from a script (a tool call per entry, then a final answer), keeping requests.
struct Scripted {
    replies: Mutex<VecDeque<Value>>,
    requests: Mutex<Vec<Value>>,
}

impl Scripted {
    fn new(actions: Vec<Value>) -> Self {
        Self {
            replies: Mutex::new(actions.into()),
            requests: Mutex::new(Vec::new()),
        }
    }
}

impl Model for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn send(
        &self,
        request: &ModelRequest,
        _: Check<'_>,
        _: &(dyn Fn(Retry) + Send + Sync),
    ) -> Result<RawReply, ModelError> {
        self.requests.lock().unwrap().push(request.body.clone());
        let message = match self.replies.lock().unwrap().pop_front() {
            Some(a) => {
                json!({"tool_calls": [{"id": "c", "function": {"name": "computer", "arguments": a.to_string()}}]})
            }
            None => json!({"content": "finished"}),
        };
        Ok(RawReply {
            body: json!({"choices": [{"message": message}]}),
            attempts: 1,
            elapsed: Duration::ZERO,
        })
    }
}

fn texts(request: &Value) -> String {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| match &m["content"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str().map(str::to_owned))
                .collect(),
            _ => vec![],
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_deny_message_take_over_and_hand_back() {
    let d = desktop().await;
    let model = Scripted::new(vec![
        json!({"action": "mouse_move", "coordinate": [100, 100]}),
        json!({"action": "mouse_move", "coordinate": [200, 200]}),
        json!({"action": "mouse_move", "coordinate": [300, 300]}),
        json!({"action": "mouse_move", "coordinate": [400, 400]}),
    ]);
    let mut emitter = Emitter::new();
    let mut events = emitter.subscribe(1024);
    let (control, control_rx) = tokio::sync::mpsc::channel(16);
    let cfg = AgentConfig {
        instruction: "move".into(),
        max_steps: 10,
        ..AgentConfig::default()
    };
    // Approve mode from the start: the first action waits for an answer.
    control.send(Command::ApproveMode(true)).await.unwrap();
    let steer = async {
        let mut seen = Vec::new();
        while let Some(e) = events.recv().await {
            match e.as_ref() {
                Event::AwaitingApproval { step: 1, .. } => {
                    // Deny the first, then take over instead of answering the second.
                    control.send(Command::Deny).await.unwrap();
                }
                Event::AwaitingApproval { step: 2, .. } => {
                    control.send(Command::ApproveMode(false)).await.unwrap();
                    control
                        .send(Command::Message("only small moves, please".into()))
                        .await
                        .unwrap();
                    control.send(Command::TakeOver).await.unwrap();
                }
                Event::TakeOverView { vnc, view_url, .. } => {
                    // A person clicks and types through the recording proxy (vncdotool as
                    // their VNC client), then hands back.
                    let password = view_url
                        .as_deref()
                        .and_then(|u| u.split("&password=").nth(1))
                        .expect("the view URL carries the proxy's password");
                    let (host, port) = vnc.rsplit_once(':').unwrap();
                    let out = tokio::process::Command::new(python().with_file_name("vncdo"))
                        .args(["-s", &format!("{host}::{port}"), "-p", password])
                        .args([
                            "move", "777", "555", "click", "1", "pause", "0.6", "type", "abc",
                            "pause", "1.2",
                        ])
                        .stdin(std::process::Stdio::null())
                        .output()
                        .await
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    control.send(Command::HandBack).await.unwrap();
                }
                _ => {}
            }
            seen.push(e);
        }
        seen
    };
    let run = async {
        let outcome = agent::run(&cfg, &d.desktop, &model, &emitter, control_rx).await;
        drop(emitter);
        outcome
    };
    let (outcome, seen) = tokio::join!(run, steer);
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.error);

    // The denial reached the model as the tool's error, and was recorded as an event.
    let requests = model.requests.lock().unwrap().clone();
    assert!(
        texts(&requests[1]).contains("did not allow this action"),
        "{}",
        texts(&requests[1])
    );
    let kinds: Vec<String> = seen
        .iter()
        .filter_map(|e| match e.as_ref() {
            Event::Intervention { kind, .. } => Some(kind.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "approve_on",
            "deny",
            "approve_off",
            "message",
            "take_over",
            "hand_back"
        ]
    );
    // The message and the hand-back (with a fresh screenshot) went to the model.
    let later = texts(requests.last().unwrap());
    assert!(later.contains("only small moves, please"), "{later}");
    assert!(later.contains("took control of the desktop"), "{later}");
    // What the person did through the proxy: steps of their own, marked, told to the model.
    assert!(
        later.contains(r#"They did: clicked; typed "abc""#),
        "{later}"
    );
    let human: Vec<u32> = seen
        .iter()
        .filter_map(|e| match e.as_ref() {
            Event::StepMark {
                step, key, mark, ..
            } if key == "source" && mark == "human" => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(human.len(), 2, "{human:?}");
    let steps: Vec<u32> = seen
        .iter()
        .filter_map(|e| match e.as_ref() {
            Event::StepStarted { step } => Some(*step),
            _ => None,
        })
        .collect();
    let mut unique = steps.clone();
    unique.dedup();
    assert_eq!(
        steps, unique,
        "every step number once, the person's among the model's"
    );
    assert!(
        steps.contains(&(human[1] + 1)),
        "the model goes on after the person: {steps:?}"
    );
    // The second action ran once approve mode was off; the first did not run at all.
    let done: Vec<String> = seen
        .iter()
        .filter_map(|e| match e.as_ref() {
            Event::ActionDone { action, .. } => Some(serde_json::to_string(action).unwrap()),
            _ => None,
        })
        .collect();
    assert!(
        !done.iter().any(|a| a.contains("[100,100]")),
        "the denied action ran: {done:?}"
    );
    assert!(done.iter().any(|a| a.contains("[200,200]")), "{done:?}");
}
