//! `selfagent rerun`: a recorded episode done again without its model.
//!
//! Each recorded step's actions are done again, in screen pixels as recorded, but only once
//! the live screen looks like the screen that step saw (its `frame_before`, compared with
//! [`compare`]): waiting on framebuffer changes, up to a timeout, for the previous step's
//! effects to show. A screen that does not come to match is **drift**: the re-run halts
//! (acts on nothing and says where), hands the rest to the model, or acts anyway, as
//! [`OnDrift`] says. Clicking blindly into a changed screen is how a replay does damage.
//!
//! The re-run is recorded as a session of its own (`meta.rerun_of`, source `rerun`), each
//! step marked in its `meta.rerun`: `replayed`, `ignored` (drifted, acted anyway),
//! `halted`, `healed` (the model's step at the drift) or `model` (the model's later steps),
//! with the recorded step it follows, the difference and how long it waited. No model is
//! called while the screen matches.

pub mod compare;

use crate::action::Action;
use crate::agent::{self, AgentConfig, Command, Emitter, EndedBy, Event, Outcome, Status};
use crate::desktop::Desktop;
use crate::event::Frame;
use crate::model::Model;
use crate::record::{Db, SessionRow};
use compare::{Difference, Reference};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The `source` of re-run sessions.
pub const SOURCE: &str = "rerun";
/// How long a step waits for the screen to match before it is drift.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(15);
/// A screen that matches only roughly must also have stopped changing this long.
pub const QUIET: Duration = Duration::from_millis(500);

/// What a re-run does when the screen does not match the recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrift {
    /// Act on nothing; the session ends `failed` by `drift`.
    Halt,
    /// Hand the rest of the episode to the model (the task and the recorded steps as
    /// context).
    Model,
    /// Act as recorded anyway.
    Ignore,
}

impl std::str::FromStr for OnDrift {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "halt" => Ok(Self::Halt),
            "model" => Ok(Self::Model),
            "ignore" => Ok(Self::Ignore),
            other => Err(format!(
                "unknown drift policy '{other}' (halt, model or ignore)"
            )),
        }
    }
}

/// One recorded step to do again.
pub struct Recorded {
    /// Its number in the recording.
    pub idx: i64,
    /// The actions that were done (observations, waits and ends left out).
    pub actions: Vec<Action>,
    /// The screen it saw, reduced for comparing, and as recorded.
    pub expected: Option<(Reference, Frame)>,
    pub thought: Option<String>,
}

/// A recording to do again, and how.
pub struct Replay {
    /// The session re-run.
    pub of: String,
    pub instruction: String,
    pub steps: Vec<Recorded>,
    /// The answer the recorded episode ended with.
    pub answer: Option<String>,
    pub on_drift: OnDrift,
    pub threshold: f64,
    pub wait: Duration,
}

/// Whether a recorded action is done again: what changes the desktop. Observations
/// (screenshot, zoom, cursor position), waits (a re-run waits on the screen instead),
/// memorized facts and the episode's end are not.
fn replayable(a: &Action) -> bool {
    a.is_setup_only() || (a.may_change_screen() && !a.is_end())
}

impl Replay {
    /// The steps of `session` as recorded in `db`.
    pub fn load(
        db: &Db,
        session: &SessionRow,
        on_drift: OnDrift,
        threshold: f64,
        wait: Duration,
    ) -> Result<Self, String> {
        let rows = db.steps(&session.id).map_err(|e| e.to_string())?;
        let mut steps = Vec::new();
        let mut answer = session.answer.clone();
        for row in rows {
            let mut actions = Vec::new();
            for entry in row.actions.as_array().into_iter().flatten() {
                if entry["ok"] != json!(true) {
                    continue;
                }
                let action: Action =
                    serde_json::from_value(entry["action"].clone()).map_err(|e| {
                        format!(
                            "step {} holds an action this selfagent cannot read: {e}",
                            row.idx
                        )
                    })?;
                if let Action::Done { answer: Some(a) } = &action {
                    answer.get_or_insert_with(|| a.clone());
                }
                if replayable(&action) {
                    actions.push(action);
                }
            }
            if actions.is_empty() {
                continue;
            }
            let target = actions.iter().find_map(|a| a.points().first().copied());
            let expected = match row.frame_before {
                Some(id) => match db.frame(id).map_err(|e| e.to_string())? {
                    Some(f) => {
                        let png = Arc::new(f.png);
                        let reference = Reference::from_png(&png, target)?;
                        Some((reference, Frame::new(png, f.width, f.height)))
                    }
                    None => None,
                },
                None => None,
            };
            steps.push(Recorded {
                idx: row.idx,
                actions,
                expected,
                thought: row.thought.clone(),
            });
        }
        if steps.is_empty() {
            return Err(format!(
                "session {} has no step that did anything on the desktop: nothing to re-run",
                session.id
            ));
        }
        Ok(Self {
            of: session.id.clone(),
            instruction: session.instruction.clone(),
            steps,
            answer,
            on_drift,
            threshold,
            wait,
        })
    }

    /// The instruction the model gets when it takes over at recorded step `at` (an index
    /// into `steps`): the task, what was replayed, what the recording did next.
    fn handover(&self, at: usize, why: &str) -> String {
        let line = |s: &Recorded| {
            let what: Vec<String> = s.actions.iter().map(describe).collect();
            match &s.thought {
                Some(t) if !t.trim().is_empty() => {
                    format!("- {} ({})", what.join("; "), crate::text::one_line(t, 200))
                }
                _ => format!("- {}", what.join("; ")),
            }
        };
        let done: Vec<String> = self.steps[..at].iter().map(line).collect();
        let next: Vec<String> = self.steps[at..].iter().take(10).map(line).collect();
        format!(
            "{}\n\nThis task was done before, and that run was being repeated step by step. {} \
             of its steps were repeated:\n{}\nThen the screen no longer looked as it did in that \
             run ({why}), so the repetition stopped. The steps that run did next, for reference \
             (the screen may have changed, so do not repeat them blindly):\n{}\nContinue the task \
             from the screen as it is now.",
            self.instruction,
            at,
            if done.is_empty() {
                "- (none)".to_owned()
            } else {
                done.join("\n")
            },
            next.join("\n")
        )
    }
}

/// An action in a few words, for the model's hand-over note.
fn describe(a: &Action) -> String {
    let name = a.name();
    match a {
        Action::Type { text } | Action::Key { text } => {
            format!("{name} {:?}", crate::text::one_line(text, 80))
        }
        _ => match a.points().first() {
            Some(p) => format!("{name} at ({}, {})", p.x, p.y),
            None => name.to_owned(),
        },
    }
}

/// What waiting for a recorded screen came to.
struct Waited {
    live: crate::desktop::Screenshot,
    diff: Difference,
    waited_ms: f64,
    matched: bool,
}

/// Why a re-run stopped waiting.
enum Interrupted {
    Stop,
    Abort(String),
    Desktop(String),
}

/// Waits until the live screen matches `expected` and has been quiet for [`QUIET`] (a
/// screen still drawing can pass the threshold on its way: the terminal before its prompt),
/// or `wait` passes, or a command stops it.
async fn wait_for(
    desktop: &Desktop,
    expected: Option<&Reference>,
    threshold: f64,
    wait: Duration,
    control: &mut mpsc::Receiver<Command>,
) -> Result<Waited, Interrupted> {
    let started = Instant::now();
    let deadline = started + wait;
    loop {
        let stamp = desktop.frame_stamp();
        let (w, h, rgb) = desktop
            .frame_rgb()
            .map_err(|e| Interrupted::Desktop(e.to_string()))?;
        let diff = match expected {
            Some(r) => r.difference(w, h, &rgb),
            None => Difference {
                screen: 0.0,
                target: None,
            },
        };
        let close = diff.score() <= threshold;
        let quiet_for = stamp.at.elapsed();
        let matched = close && (diff.score() == 0.0 || quiet_for >= QUIET);
        let now = Instant::now();
        if matched || now >= deadline {
            let live = desktop
                .screenshot()
                .await
                .map_err(|e| Interrupted::Desktop(e.to_string()))?;
            return Ok(Waited {
                live,
                diff,
                waited_ms: started.elapsed().as_secs_f64() * 1000.0,
                matched: close,
            });
        }
        // The evidence to wait for: the next framebuffer change, or (when close) the end of
        // the quiet window, or the deadline.
        let left = deadline.saturating_duration_since(now);
        let until = if close {
            left.min(QUIET.saturating_sub(quiet_for) + Duration::from_millis(5))
        } else {
            left
        };
        tokio::select! {
            _ = desktop.wait_change(stamp.generation, until) => {}
            cmd = control.recv() => match cmd {
                Some(Command::Stop) => return Err(Interrupted::Stop),
                Some(Command::Abort(why)) => return Err(Interrupted::Abort(why)),
                _ => {}
            },
        }
    }
}

/// Reports how the re-run ended, and returns it.
async fn finish(emit: &Emitter, outcome: Outcome) -> Outcome {
    emit.emit(Event::Finished(outcome.clone())).await;
    outcome
}

fn mark(mode: &str, rec: &Recorded, w: &Waited) -> Value {
    json!({
        "mode": mode,
        "of": rec.idx,
        "difference": w.diff.score(),
        "screen": w.diff.screen,
        "target": w.diff.target,
        "waited_ms": w.waited_ms,
    })
}

/// Does `replay` on `desktop`, reporting through `emit` as an episode does; the model is
/// asked only after drift with [`OnDrift::Model`]. Emits [`Event::Finished`].
pub async fn drive<M: Model>(
    replay: &Replay,
    cfg: &AgentConfig,
    desktop: &Desktop,
    model: &M,
    emit: &Emitter,
    mut control: mpsc::Receiver<Command>,
) -> Outcome {
    let started = Instant::now();
    let end = |status, ended_by, answer: Option<String>, error: Option<String>, steps| Outcome {
        status,
        ended_by,
        answer,
        error,
        steps,
        tokens_in: 0,
        tokens_out: 0,
        wall_ms: started.elapsed().as_millis() as u64,
        cost: None,
    };
    let mut step = 0u32;
    for (i, rec) in replay.steps.iter().enumerate() {
        let waited = match wait_for(
            desktop,
            rec.expected.as_ref().map(|(r, _)| r),
            replay.threshold,
            replay.wait,
            &mut control,
        )
        .await
        {
            Ok(w) => w,
            Err(Interrupted::Stop) => {
                return finish(
                    emit,
                    end(
                        Status::Stopped,
                        EndedBy::User,
                        None,
                        Some("stopped by the user".into()),
                        step,
                    ),
                )
                .await;
            }
            Err(Interrupted::Abort(why)) => {
                return finish(
                    emit,
                    end(Status::Error, EndedBy::Recording, None, Some(why), step),
                )
                .await;
            }
            Err(Interrupted::Desktop(e)) => {
                let why = desktop.sandbox().why_gone().await.unwrap_or(e);
                return finish(
                    emit,
                    end(Status::Error, EndedBy::Harness, None, Some(why), step),
                )
                .await;
            }
        };
        let drift = (!waited.matched).then(|| {
            format!(
                "drift at recorded step {}: after {:.1} s the screen still differs from the recorded one by {} (threshold {:.1}%)",
                rec.idx,
                waited.waited_ms / 1000.0,
                waited.diff.describe(),
                replay.threshold * 100.0
            )
        });
        match (&drift, replay.on_drift) {
            (Some(why), OnDrift::Model) => {
                let mut cfg = cfg.clone();
                cfg.instruction = replay.handover(i, why);
                cfg.first_step = step + 1;
                cfg.step_mark = Some(agent::StepMarks {
                    key: "rerun".into(),
                    first: mark("healed", rec, &waited),
                    rest: json!({"mode": "model"}),
                });
                return agent::run(&cfg, desktop, model, emit, control).await;
            }
            (Some(why), OnDrift::Halt) => {
                step += 1;
                let started = Instant::now();
                let frame = Frame::new(
                    waited.live.png.clone(),
                    waited.live.width,
                    waited.live.height,
                );
                emit.emit(Event::StepStarted { step }).await;
                emit.emit(Event::Observation {
                    step,
                    frame: frame.clone(),
                })
                .await;
                emit.emit(Event::StepMark {
                    step,
                    key: "rerun".into(),
                    mark: mark("halted", rec, &waited),
                    expected: rec.expected.as_ref().map(|(_, f)| f.clone()),
                })
                .await;
                emit.emit(Event::StepError {
                    step,
                    error: why.clone(),
                })
                .await;
                emit.emit(Event::StepFinished {
                    step,
                    frame,
                    step_ms: started.elapsed().as_secs_f64() * 1000.0,
                })
                .await;
                return finish(
                    emit,
                    end(
                        Status::Failed,
                        EndedBy::Drift,
                        None,
                        Some(why.clone()),
                        step,
                    ),
                )
                .await;
            }
            _ => {}
        }
        step += 1;
        let mode = if drift.is_some() {
            "ignored"
        } else {
            "replayed"
        };
        if let Err(e) = replay_step(step, rec, waited, mode, cfg, desktop, emit).await {
            let why = desktop.sandbox().why_gone().await.unwrap_or(e);
            return finish(
                emit,
                end(Status::Error, EndedBy::Harness, None, Some(why), step),
            )
            .await;
        }
    }
    finish(
        emit,
        end(
            Status::Succeeded,
            EndedBy::Replayed,
            replay.answer.clone(),
            None,
            step,
        ),
    )
    .await
}

/// One recorded step done again, recorded as a step: the live screen before, the marks,
/// each action, the settle, the screen after. An action that fails is recorded as failed
/// and the step goes on (as the loop does with a model's refused call); a desktop that
/// stops answering is the error.
async fn replay_step(
    step: u32,
    rec: &Recorded,
    waited: Waited,
    mode: &str,
    cfg: &AgentConfig,
    desktop: &Desktop,
    emit: &Emitter,
) -> Result<(), String> {
    let started = Instant::now();
    emit.emit(Event::StepStarted { step }).await;
    emit.emit(Event::Observation {
        step,
        frame: Frame::new(
            waited.live.png.clone(),
            waited.live.width,
            waited.live.height,
        ),
    })
    .await;
    emit.emit(Event::StepMark {
        step,
        key: "rerun".into(),
        mark: mark(mode, rec, &waited),
        expected: rec.expected.as_ref().map(|(_, f)| f.clone()),
    })
    .await;
    let since = desktop.mark();
    for (index, action) in rec.actions.iter().enumerate() {
        let t = Instant::now();
        match desktop.act(action).await {
            Ok(out) => {
                emit.emit(Event::ActionDone {
                    step,
                    index,
                    action: action.clone(),
                    text: out.text,
                    act_ms: t.elapsed().as_secs_f64() * 1000.0,
                    image: None,
                })
                .await
            }
            Err(e) => {
                emit.emit(Event::ActionFailed {
                    step,
                    index,
                    input: serde_json::to_value(action).unwrap_or(Value::Null),
                    error: e.to_string(),
                })
                .await;
                desktop.ensure_open().map_err(|e| e.to_string())?;
            }
        }
    }
    let report = desktop.settle(since, cfg.settle).await;
    emit.emit(Event::Settled { step, report }).await;
    let after = desktop.screenshot().await.map_err(|e| e.to_string())?;
    emit.emit(Event::StepFinished {
        step,
        frame: Frame::new(after.png.clone(), after.width, after.height),
        step_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_changes_the_desktop_is_done_again() {
        let p = crate::action::Point { x: 1, y: 2 };
        assert!(replayable(&Action::Type { text: "x".into() }));
        assert!(replayable(&Action::MouseMove { coordinate: p }));
        assert!(!replayable(&Action::Screenshot));
        assert!(!replayable(&Action::Wait { duration: 2.0 }));
        assert!(!replayable(&Action::Done { answer: None }));
        assert_eq!("model".parse::<OnDrift>(), Ok(OnDrift::Model));
        assert!(
            "retry"
                .parse::<OnDrift>()
                .unwrap_err()
                .contains("halt, model or ignore")
        );
    }
}
