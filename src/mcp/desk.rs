//! A desktop in the MCP server's hands, with its recording: every `computer` call is a step
//! (the screen before, the action, the settle, the screen after) of one session per desktop,
//! written by the one-writer [`Recorder`] as an agent's steps are.

use super::ConnId;
use crate::action::Action;
use crate::desktop::{ActionError, ActionOutput, Desktop, SettleOptions, SettleReport};
use crate::event::{Emitter, EndedBy, Event, Frame, Outcome, SessionInfo, Status};
use crate::record::Recorder;
use crate::sandbox::Sandbox;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `source` of sessions recorded through MCP (sessions' `meta.source`).
pub const SOURCE: &str = "mcp";

/// Why a desktop left the server's hands.
#[derive(Debug, Clone)]
pub enum Ending {
    /// `sandbox_down`, with the outcome the host reported (default: stopped).
    Down {
        status: Status,
        answer: Option<String>,
    },
    ConnectionClosed,
    Idle,
    ServerStopped,
    /// It stopped working (the container exited or was removed).
    Died(String),
}

pub struct Desk {
    pub sandbox: Sandbox,
    pub desktop: Desktop,
    /// Made by this server (removed when released, unless `persist`); else attached.
    pub made_here: bool,
    pub persist: bool,
    /// The connection whose end releases it.
    pub owner: Option<ConnId>,
    pub since: Instant,
    pub image: String,
    last_used: Mutex<Instant>,
    /// Tool calls under way (a desktop in use is never idle).
    busy: AtomicUsize,
    /// The recording; the lock also puts one desktop's steps one after another.
    rec: tokio::sync::Mutex<Recording>,
}

struct Recording {
    session: String,
    emitter: Option<Emitter>,
    recorder: Option<Recorder>,
    steps: u32,
    started: Instant,
}

/// Marks a desktop in use while alive.
pub struct InUse<'a>(&'a Desk);

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one `computer` call did.
pub struct Done {
    pub output: ActionOutput,
    pub act_ms: f64,
    pub settle: Option<SettleReport>,
    pub step: u32,
    /// The screen after it.
    pub after: crate::desktop::Screenshot,
}

pub struct Made {
    pub sandbox: Sandbox,
    pub desktop: Desktop,
    pub made_here: bool,
    pub persist: bool,
    pub owner: Option<ConnId>,
    pub image: String,
    /// What the host said it will do (the session's instruction).
    pub instruction: Option<String>,
}

impl Desk {
    /// Takes the desktop into the server's hands and starts its recording at `db`.
    pub async fn new(made: Made, db: &std::path::Path) -> Result<Self, String> {
        let Made {
            sandbox,
            desktop,
            made_here,
            persist,
            owner,
            image,
            instruction,
        } = made;
        let session = crate::record::new_session_id();
        let mut emitter = Emitter::new();
        let secrets = sandbox
            .secrets()
            .values()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let recorder = Recorder::start(db, secrets, emitter.subscribe(1024))
            .map_err(|e| format!("the recording: {e}"))?;
        let (width, height) = desktop.size();
        emitter
            .emit(Event::SessionStarted(SessionInfo {
                session: session.clone(),
                sandbox: sandbox.id().to_owned(),
                instruction: instruction
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| "driven by an MCP host".to_owned()),
                task_id: None,
                model: "mcp-host".to_owned(),
                base_url: String::new(),
                protocol: SOURCE.to_owned(),
                coords: "native".to_owned(),
                image: image.clone(),
                engine: sandbox.engine().url().to_owned(),
                width,
                height,
                sent_width: width,
                sent_height: height,
                max_steps: 0,
                timeout_s: 0.0,
                task: None,
                price: None,
                source: Some(SOURCE.to_owned()),
                rerun_of: None,
            }))
            .await;
        Ok(Self {
            sandbox,
            desktop,
            made_here,
            persist,
            owner,
            since: Instant::now(),
            image,
            last_used: Mutex::new(Instant::now()),
            busy: AtomicUsize::new(0),
            rec: tokio::sync::Mutex::new(Recording {
                session,
                emitter: Some(emitter),
                recorder: Some(recorder),
                steps: 0,
                started: Instant::now(),
            }),
        })
    }

    /// The recording's session id.
    pub async fn session(&self) -> String {
        self.rec.lock().await.session.clone()
    }

    /// Marks it in use until the guard drops.
    pub fn in_use(&self) -> InUse<'_> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InUse(self)
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    /// How long nobody used it (zero while a call is under way).
    pub fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Performs one action as a recorded step: the screen before it, the action, the
    /// settle (unless `settle` is false or the action cannot change the screen), the screen
    /// after. An invalid action is recorded as a failed one and returned as the error.
    pub async fn act(
        &self,
        action: &Action,
        input: &serde_json::Value,
        settle: bool,
    ) -> Result<Done, ActionError> {
        let mut rec = self.rec.lock().await;
        rec.steps += 1;
        let step = rec.steps;
        let started = Instant::now();
        let before = self.desktop.screenshot().await?;
        let emit = |e: Event| {
            let emitter = rec.emitter.clone();
            async move {
                if let Some(em) = emitter {
                    em.emit(e).await;
                }
            }
        };
        emit(Event::StepStarted { step }).await;
        emit(Event::Observation {
            step,
            frame: Frame::new(before.png.clone(), before.width, before.height),
        })
        .await;
        let mark = self.desktop.mark();
        let t0 = Instant::now();
        let result = self.desktop.act(action).await;
        let act_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let output = match result {
            Ok(o) => o,
            Err(e) => {
                emit(Event::ActionFailed {
                    step,
                    index: 0,
                    input: input.clone(),
                    error: e.to_string(),
                })
                .await;
                if let Ok(after) = self.desktop.screenshot().await {
                    emit(Event::StepFinished {
                        step,
                        frame: Frame::new(after.png.clone(), after.width, after.height),
                        step_ms: started.elapsed().as_secs_f64() * 1000.0,
                    })
                    .await;
                }
                return Err(e);
            }
        };
        emit(Event::ActionDone {
            step,
            index: 0,
            action: action.clone(),
            text: output.text.clone(),
            act_ms,
            image: output
                .image
                .as_ref()
                .map(|i| Frame::new(i.png.clone(), i.width, i.height)),
        })
        .await;
        let settle = if settle && action.may_change_screen() {
            let report = self.desktop.settle(mark, SettleOptions::default()).await;
            emit(Event::Settled { step, report }).await;
            Some(report)
        } else {
            None
        };
        let after = self.desktop.screenshot().await?;
        emit(Event::StepFinished {
            step,
            frame: Frame::new(after.png.clone(), after.width, after.height),
            step_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
        .await;
        Ok(Done {
            output,
            act_ms,
            settle,
            step,
            after,
        })
    }

    /// Records a call whose action could not even be read (an unknown key name, a bad
    /// field) as a failed step: the host's every call is in the recording.
    pub async fn refused(&self, input: &serde_json::Value, error: &str) {
        let mut rec = self.rec.lock().await;
        rec.steps += 1;
        let step = rec.steps;
        let Some(emitter) = rec.emitter.clone() else {
            return;
        };
        let started = Instant::now();
        let Ok(shot) = self.desktop.screenshot().await else {
            return;
        };
        let frame = Frame::new(shot.png.clone(), shot.width, shot.height);
        emitter.emit(Event::StepStarted { step }).await;
        emitter
            .emit(Event::Observation {
                step,
                frame: frame.clone(),
            })
            .await;
        emitter
            .emit(Event::ActionFailed {
                step,
                index: 0,
                input: input.clone(),
                error: error.to_owned(),
            })
            .await;
        emitter
            .emit(Event::StepFinished {
                step,
                frame,
                step_ms: started.elapsed().as_secs_f64() * 1000.0,
            })
            .await;
    }

    /// Ends its recording and, when this server made it and it was not made to persist,
    /// removes it.
    pub async fn release(&self, ending: Ending) {
        // `sandbox_down` removes even a persistent desktop's container (its home volume
        // stays, as with `selfagent sandbox down`); anything else leaves that one running.
        let remove = self.made_here && (!self.persist || matches!(ending, Ending::Down { .. }));
        let (status, ended_by, answer, error) = match ending {
            Ending::Down { status, answer } => (status, EndedBy::Host, answer, None),
            Ending::ConnectionClosed => (Status::Stopped, EndedBy::Host, None, None),
            Ending::Idle => (
                Status::Stopped,
                EndedBy::Host,
                None,
                Some("released after the idle timeout".to_owned()),
            ),
            Ending::ServerStopped => (Status::Stopped, EndedBy::User, None, None),
            Ending::Died(why) => (Status::Error, EndedBy::Harness, None, Some(why)),
        };
        let mut rec = self.rec.lock().await;
        if let Some(emitter) = rec.emitter.take() {
            emitter
                .emit(Event::Finished(Outcome {
                    status,
                    ended_by,
                    answer,
                    error,
                    steps: rec.steps,
                    tokens_in: 0,
                    tokens_out: 0,
                    wall_ms: rec.started.elapsed().as_millis() as u64,
                    cost: None,
                }))
                .await;
        }
        if let Some(recorder) = rec.recorder.take() {
            let stats = recorder.finish().await;
            if let Some(e) = stats.error {
                tracing::warn!("recording session {}: {e}", rec.session);
            }
        }
        drop(rec);
        if remove && let Err(e) = self.sandbox.kill().await {
            tracing::warn!("removing desktop {}: {e}", self.sandbox.short_id());
        }
    }
}
