//! The computer-use loop: observe, decide, act, settle, record.
//!
//! [`run`] owns the step cycle and reports everything as [`Event`]s through an
//! [`Emitter`]; the headless printer, the recorder and the TUI are consumers of those
//! events. It knows no wire format (the [`protocol::Protocol`] does) and no container (the
//! [`Computer`] does). A step is one model call and the actions it asked for. Mistakes in
//! an action (bad arguments, an unknown key, a point outside the model's space) go back to
//! the model as the action's result; a desktop that breaks ends the episode as the harness's
//! failure, with the step in progress recorded; a model server that keeps failing ends it
//! with status `error`. After acting, the loop settles (waits for the screen to stop
//! changing) instead of sleeping. The episode's deadline and a stop hold within moments,
//! also in the middle of an action.

pub mod a11y;
pub mod computer;
pub mod control;
pub mod grounder;

pub use crate::event::{Emitter, EndedBy, Event, Exchange, Frame, Outcome, SessionInfo, Status};
pub use crate::model::{EndpointConfig, HttpModel, Model};
pub use computer::Computer;
pub use control::Command;
pub use grounder::Grounder;

use crate::model::{self, price, protocol};

use crate::action::{Action, InvalidAction};
use crate::desktop::{ActionError, SettleOptions};
use control::{Controls, Stop};
use model::{RawReply, Retry};
use protocol::{CallResult, Decision, Protocol, ProtocolConfig, Shot};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub instruction: String,
    pub max_steps: u32,
    pub timeout: Duration,
    pub protocol: ProtocolConfig,
    pub settle: SettleOptions,
    /// Replies in a row with no usable action before the episode ends as an error.
    pub max_bad_replies: u32,
    /// Actions done per reply; more are refused (fed back to the model), so a reply of
    /// hundreds of calls does not run them all.
    pub max_actions: usize,
    /// A person can answer questions (the TUI): safety checks and `call_user` are asked.
    /// Headless, a safety check stops the episode unless acknowledged by `--ack-safety-checks`,
    /// and `call_user` ends it as `needs_user`.
    pub interactive: bool,
    /// Acknowledge the provider's safety checks without asking.
    pub ack_safety_checks: bool,
    /// The model's price, when known.
    pub price: Option<price::Priced>,
    /// Stop (status `stopped`, by `budget`) once this many dollars are spent.
    pub max_cost: Option<f64>,
    /// A grounding model for a planner's elements (`--grounder`).
    pub grounder: Option<Grounder>,
    /// The number of the first step: 1, or after the steps a re-run replayed when it hands
    /// the rest of the episode to the model (`rerun --on-drift model`).
    pub first_step: u32,
    /// A mark the steps carry in their `meta`: a re-run's model steps.
    pub step_mark: Option<StepMarks>,
}

/// What [`AgentConfig::step_mark`] puts in each step's `meta` under `key`: `first` on the
/// first step, `rest` on the others.
#[derive(Debug, Clone)]
pub struct StepMarks {
    pub key: String,
    pub first: Value,
    pub rest: Value,
}

/// The default of [`AgentConfig::max_actions`]: above what real models batch (Claude sends a
/// few `tool_use` blocks, OpenAI's GA batches a handful).
pub const DEFAULT_MAX_ACTIONS: usize = 16;

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            instruction: String::new(),
            max_steps: 50,
            timeout: Duration::from_secs(30 * 60),
            protocol: ProtocolConfig::default(),
            settle: SettleOptions::default(),
            max_bad_replies: 3,
            max_actions: DEFAULT_MAX_ACTIONS,
            interactive: false,
            ack_safety_checks: false,
            price: None,
            max_cost: None,
            grounder: None,
            first_step: 1,
            step_mark: None,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How an episode ends: status, who ended it, the answer, the error.
struct Ending {
    status: Status,
    ended_by: EndedBy,
    answer: Option<String>,
    error: Option<String>,
}

impl Ending {
    fn new(status: Status, ended_by: EndedBy) -> Self {
        Self {
            status,
            ended_by,
            answer: None,
            error: None,
        }
    }

    fn error(mut self, e: impl Into<String>) -> Self {
        self.error = Some(e.into());
        self
    }

    fn answer(mut self, a: Option<String>) -> Self {
        self.answer = a;
        self
    }
}

/// Something that ends the episode in the middle of a step.
enum Interrupt {
    Stopped,
    TimedOut,
    Aborted(String),
    /// The desktop stopped working under the action.
    DesktopGone,
}

/// What the calls of one reply did.
struct Acts {
    /// An action that may change the screen ran (so settle before looking).
    acted: bool,
    /// At least one call was a usable action (a reply with none counts as a bad one).
    usable: bool,
    /// One answer per call, for the protocol.
    results: Vec<CallResult>,
    /// An ending action (`done`, `fail`, ...) was among them.
    ending: Option<Ending>,
}

/// A screenshot as observed and as sent (with the marker of its accessibility tree when
/// the model observes the tree: `--observe`).
#[derive(Clone)]
struct Observed {
    frame: Frame,
    shot: Shot,
}

/// Runs one episode on `computer` with `model`, reporting through `emit`, until the model
/// finishes, a limit is reached, the desktop or model breaks, or a [`Command::Stop`]
/// arrives on `control`. The caller emits [`Event::SessionStarted`] first (it knows the
/// ids).
pub async fn run<C: Computer, M: Model>(
    cfg: &AgentConfig,
    computer: &C,
    model: &M,
    emit: &Emitter,
    control: mpsc::Receiver<Command>,
) -> Outcome {
    let started = Instant::now();
    let mut ep = Episode::new(cfg, computer, model, emit, control);
    let ending = ep.episode().await;
    ep.finish(ending, started).await
}

/// Probes for [`probe`]: what to ask, and when a reply has answered.
pub trait Prober: Send {
    /// The instruction of probe `index`, or `None` after the last.
    fn instruction(&self, index: usize) -> Option<String>;
    /// The reply of `step` to probe `index` (its raw body and what it decoded to); true
    /// when the probe is answered.
    fn reply(&mut self, index: usize, step: u32, raw: &Value, decision: &Decision) -> bool;
}

/// Runs probes instead of one task (`selfagent calibrate`): each probe is a fresh
/// conversation in the configured protocol with its own instruction, given at most `turns`
/// model calls until `prober` says it is answered. Everything else is an episode's:
/// the steps, their actions on the desktop, the events, the limits, stop and pause. Replies
/// with no usable action do not end it (a model in the wrong coordinate space has every
/// click refused, which is what a calibration must see). Ends `succeeded` once every probe
/// was asked.
pub async fn probe<C: Computer, M: Model>(
    cfg: &AgentConfig,
    computer: &C,
    model: &M,
    emit: &Emitter,
    control: mpsc::Receiver<Command>,
    prober: &mut dyn Prober,
    turns: u32,
) -> Outcome {
    let started = Instant::now();
    let mut ep = Episode::new(cfg, computer, model, emit, control);
    let ending = ep.probes(prober, turns.max(1)).await;
    ep.finish(ending, started).await
}

struct Episode<'a, C, M> {
    cfg: &'a AgentConfig,
    computer: &'a C,
    model: &'a M,
    emit: &'a Emitter,
    controls: Controls,
    deadline: tokio::time::Instant,
    totals: Outcome,
    /// The grounder's tokens (in and out), priced apart from the planner's.
    grounder_tokens: (u64, u64),
    /// The last step's reply and what it decoded to, kept for [`probe`] only.
    last_reply: Option<Option<(Value, Decision)>>,
    /// The accessibility trees shown so far (`--observe screenshot+a11y`).
    trees: a11y::Trees,
}

/// What one step came to: the next step, or the end.
enum Next {
    Continue(Observed),
    End(Ending),
}

impl<'a, C: Computer, M: Model> Episode<'a, C, M> {
    fn new(
        cfg: &'a AgentConfig,
        computer: &'a C,
        model: &'a M,
        emit: &'a Emitter,
        control: mpsc::Receiver<Command>,
    ) -> Self {
        Self {
            cfg,
            computer,
            model,
            emit,
            controls: Controls::new(control),
            deadline: tokio::time::Instant::now() + cfg.timeout,
            totals: Outcome {
                status: Status::Running,
                ended_by: EndedBy::Error,
                answer: None,
                error: None,
                steps: 0,
                tokens_in: 0,
                tokens_out: 0,
                wall_ms: 0,
                cost: None,
            },
            last_reply: None,
            trees: a11y::Trees::default(),
            grounder_tokens: (0, 0),
        }
    }

    /// The outcome, reported.
    async fn finish(self, ending: Ending, started: Instant) -> Outcome {
        let cost = self.spent();
        let mut outcome = self.totals;
        outcome.status = ending.status;
        outcome.ended_by = ending.ended_by;
        outcome.answer = ending.answer;
        outcome.error = ending.error;
        outcome.wall_ms = started.elapsed().as_millis() as u64;
        outcome.cost = cost;
        self.emit.emit(Event::Finished(outcome.clone())).await;
        outcome
    }

    /// Dollars spent so far, where the price is known (the grounder's tokens at its own
    /// price; unknown if a grounder was used and its price is not known).
    fn spent(&self) -> Option<f64> {
        let p = self.cfg.price.as_ref()?;
        let (gi, go) = self.grounder_tokens;
        let grounder = match self.cfg.grounder.as_ref() {
            Some(g) if gi + go > 0 => g.price.as_ref()?.price.cost(gi, go),
            _ => 0.0,
        };
        Some(
            p.price
                .cost(self.totals.tokens_in - gi, self.totals.tokens_out - go)
                + grounder,
        )
    }

    /// The cost limit, when it is reached: checked before each model call, so a run goes
    /// over it by at most one call. A call costs at least what the protocol sends every
    /// time (`fixed_input_tokens`: Anthropic's computer toolset, about 4,500 tokens): a
    /// budget that cannot pay for that is spent.
    fn over_budget(&self, protocol: &dyn Protocol) -> Option<Ending> {
        let max = self.cfg.max_cost?;
        let spent = self.spent()?;
        let floor = self
            .cfg
            .price
            .as_ref()
            .map_or(0.0, |p| p.price.cost(protocol.fixed_input_tokens(), 0));
        (spent + floor > max || spent >= max).then(|| {
            Ending::new(Status::Stopped, EndedBy::Budget).error(format!(
                "the cost limit ({}) was reached: {} spent{}",
                price::dollars(max),
                price::dollars(spent),
                if spent < max {
                    format!(
                        ", and a call costs at least {} (its tool definition)",
                        price::dollars(floor)
                    )
                } else {
                    String::new()
                }
            ))
        })
    }

    fn ending(&self, i: Interrupt) -> Ending {
        match i {
            Interrupt::Stopped => {
                Ending::new(Status::Stopped, EndedBy::User).error("stopped by the user")
            }
            Interrupt::TimedOut => Ending::new(Status::Failed, EndedBy::TimeLimit).error(format!(
                "the time limit ({:.0} s) was reached",
                self.cfg.timeout.as_secs_f64()
            )),
            Interrupt::Aborted(reason) => {
                Ending::new(Status::Error, EndedBy::Recording).error(reason)
            }
            Interrupt::DesktopGone => {
                Ending::new(Status::Error, EndedBy::Harness).error("the desktop stopped working")
            }
        }
    }

    /// A take-over on a real desktop: the person's input goes through a recording proxy
    /// (its view is announced with [`Event::TakeOverView`]) and each gesture is a step from
    /// `step` on, until they hand back or stop. Returns what they did. Without a real desktop,
    /// or when no proxy can listen, the take-over is a plain pause (nothing recorded).
    async fn recorded_take_over(&mut self, step: u32) -> Vec<Action> {
        let computer = self.computer;
        let Some(desktop) = computer.desktop() else {
            return Vec::new();
        };
        let demo = match crate::demo::Demo::bind(([127, 0, 0, 1], 0).into(), false).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("the take-over is not recorded: no proxy could listen: {e}");
                return Vec::new();
            }
        };
        let link = demo.link();
        let emit = self.emit;
        emit.emit(Event::TakeOverView {
            step,
            vnc: link.addr.to_string(),
            view_url: link.view_url(desktop.sandbox()),
        })
        .await;
        emit.emit(Event::Paused {
            step,
            reason: "taken_over".into(),
        })
        .await;
        let controls = &mut self.controls;
        let stop: crate::demo::Stop<'_> = Box::pin(async move {
            while controls.taken_over && !controls.stop && !controls.closed {
                controls.next(step, emit).await;
            }
            controls.aborted.clone()
        });
        crate::demo::record(&demo, desktop, emit, stop, step)
            .await
            .actions
    }

    fn stop_reason(&self) -> Interrupt {
        match &self.controls.aborted {
            Some(r) => Interrupt::Aborted(r.clone()),
            None => Interrupt::Stopped,
        }
    }

    /// Runs `work` unless the deadline passes or a stop arrives first (commands that come
    /// meanwhile are applied: a pause takes effect after the step).
    async fn guarded<T>(
        &mut self,
        step: u32,
        work: impl Future<Output = T>,
    ) -> Result<T, Interrupt> {
        tokio::pin!(work);
        let computer = self.computer;
        let gone = computer.gone();
        tokio::pin!(gone);
        loop {
            tokio::select! {
                out = &mut work => return Ok(out),
                _ = &mut gone => return Err(Interrupt::DesktopGone),
                _ = self.controls.next(step, self.emit) => {
                    if self.controls.stop {
                        return Err(self.stop_reason());
                    }
                }
                _ = tokio::time::sleep_until(self.deadline) => return Err(Interrupt::TimedOut),
            }
        }
    }

    /// A desktop failure: the reason, said as what happened to the desktop when it is gone.
    async fn desktop_failed(&self, error: String) -> Ending {
        let why = self.computer.why_gone().await.unwrap_or(error);
        Ending::new(Status::Error, EndedBy::Harness).error(why)
    }

    async fn observe(&mut self, protocol: &dyn Protocol) -> Result<Observed, String> {
        let shot = self
            .computer
            .screenshot()
            .await
            .map_err(|e| e.to_string())?;
        let frame = Frame::new(shot.png.clone(), shot.width, shot.height);
        let geometry = protocol.geometry();
        // Without pixels (`--observe a11y`) the model never sees the image: not scaled.
        let png =
            if geometry.sent == (shot.width, shot.height) || !self.cfg.protocol.observe.pixels() {
                shot.png.clone()
            } else {
                // Resizing takes milliseconds of CPU: off the async threads.
                let scaled = tokio::task::spawn_blocking(move || match &shot.rgb {
                    Some(rgb) => geometry.image_from_rgb(shot.width, shot.height, rgb),
                    None => geometry.image_for_model(&shot.png),
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
                .map_err(|e| format!("scaling a screenshot: {e}"))?;
                Arc::new(scaled)
            };
        let tree = if self.cfg.protocol.observe.tree() {
            let desktop = self.computer.desktop().ok_or_else(|| {
                "the accessibility tree is read from a desktop, and this is a stand-in".to_owned()
            })?;
            let elements = desktop
                .sandbox()
                .accessibility_elements()
                .await
                .map_err(|e| format!("--observe: reading the accessibility tree: {e}"))?;
            let tree = a11y::render(&elements, &geometry, a11y::MAX_TREE_CHARS);
            // The marker goes beside the screen; the tree replaces it when a request is
            // sent ([`a11y::Trees::expand`]).
            Some(self.trees.add(tree))
        } else {
            None
        };
        Ok(Observed {
            shot: Shot {
                sha256: frame.sha256.clone(),
                png,
                tree,
            },
            frame,
        })
    }

    async fn episode(&mut self) -> Ending {
        let mut protocol = match protocol::create(&self.cfg.protocol, self.computer.size()) {
            Ok(p) => p,
            Err(e) => return Ending::new(Status::Error, EndedBy::Error).error(e),
        };
        let mut current = match self.observe(protocol.as_ref()).await {
            Ok(o) => o,
            Err(e) => return self.desktop_failed(e).await,
        };
        protocol.begin(&self.cfg.instruction, &current.shot);
        let mut bad_replies = 0;
        let first = self.cfg.first_step.max(1);
        // Steps a person made during take-overs: numbered among the model's, not counted
        // against its step limit.
        let mut by_person = 0u32;
        let mut person_did: Vec<Action> = Vec::new();
        for n in first..first.saturating_add(self.cfg.max_steps) {
            let mut step = n.saturating_add(by_person);
            if self.controls.drain(step, self.emit).await.is_err() {
                return self.ending(self.stop_reason());
            }
            if self.controls.taken_over {
                let did = self.recorded_take_over(step).await;
                by_person += did.len() as u32;
                step += did.len() as u32;
                person_did.extend(did);
            }
            if self
                .controls
                .wait_while_paused(step, self.emit)
                .await
                .is_err()
            {
                return self.ending(self.stop_reason());
            }
            if tokio::time::Instant::now() >= self.deadline {
                return self.ending(Interrupt::TimedOut);
            }
            if let Some(ending) = self.over_budget(protocol.as_ref()) {
                return ending;
            }
            if std::mem::take(&mut self.controls.handed_back) {
                // A person used the desktop: show the model what it looks like now.
                current = match self.observe(protocol.as_ref()).await {
                    Ok(o) => o,
                    Err(e) => return self.desktop_failed(e).await,
                };
                let did = std::mem::take(&mut person_did);
                let what = if did.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> = did.iter().map(person_action).collect();
                    format!(" They did: {}.", list.join("; "))
                };
                let note = format!(
                    "A person took control of the desktop for a while and has handed it back.{what} This is the screen now:"
                );
                protocol.results(&[], &current.shot, &note);
            }
            for message in std::mem::take(&mut self.controls.messages) {
                protocol.user_message(&format!("A message from the person watching: {message}"));
            }
            match self
                .step(step, protocol.as_mut(), current, &mut bad_replies)
                .await
            {
                Next::Continue(after) => current = after,
                Next::End(ending) => return ending,
            }
            if std::mem::take(&mut self.controls.single_step) {
                self.controls.paused = true;
            }
            if bad_replies >= self.cfg.max_bad_replies {
                return Ending::new(Status::Error, EndedBy::Error).error(format!(
                    "{bad_replies} replies in a row had no usable action (see the recorded errors)"
                ));
            }
        }
        Ending::new(Status::Failed, EndedBy::StepLimit).error(format!(
            "the step limit ({}) was reached",
            self.cfg.max_steps
        ))
    }

    /// The probes of [`probe`].
    async fn probes(&mut self, prober: &mut dyn Prober, turns: u32) -> Ending {
        self.last_reply = Some(None);
        let screen = self.computer.size();
        let mut current: Option<Observed> = None;
        let mut step = 0;
        let mut index = 0;
        while let Some(instruction) = prober.instruction(index) {
            let mut protocol = match protocol::create(&self.cfg.protocol, screen) {
                Ok(p) => p,
                Err(e) => return Ending::new(Status::Error, EndedBy::Error).error(e),
            };
            let mut now = match current.take() {
                Some(o) => o,
                None => match self.observe(protocol.as_ref()).await {
                    Ok(o) => o,
                    Err(e) => return self.desktop_failed(e).await,
                },
            };
            protocol.begin(&instruction, &now.shot);
            for _ in 0..turns {
                step += 1;
                if self
                    .controls
                    .wait_while_paused(step, self.emit)
                    .await
                    .is_err()
                {
                    return self.ending(self.stop_reason());
                }
                if tokio::time::Instant::now() >= self.deadline {
                    return self.ending(Interrupt::TimedOut);
                }
                let mut ignored = 0;
                let next = self
                    .step(step, protocol.as_mut(), now.clone(), &mut ignored)
                    .await;
                let answered = match self.last_reply.as_mut().and_then(Option::take) {
                    Some((raw, decision)) => prober.reply(index, step, &raw, &decision),
                    None => false,
                };
                match next {
                    Next::Continue(after) => now = after,
                    // An answer, `done` or `fail` ends this probe only.
                    Next::End(e) if e.ended_by == EndedBy::Model => break,
                    Next::End(e) => return e,
                }
                if answered {
                    break;
                }
            }
            current = Some(now);
            index += 1;
        }
        Ending::new(Status::Succeeded, EndedBy::Model)
    }

    /// Asks the model, with retries reported as events; a stop or the deadline interrupts.
    async fn decide(
        &mut self,
        step: u32,
        protocol: &dyn Protocol,
    ) -> Result<Result<(RawReply, Decision, Value), String>, Interrupt> {
        let (mut request, mut recorded) = protocol.request();
        // The trees the conversation refers to: the recent ones in full, older ones omitted.
        let keep = self.cfg.protocol.keep_images;
        self.trees.expand(&mut request.body, keep);
        self.trees.expand(&mut recorded, keep);
        let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Retry>();
        let on_retry = move |r: Retry| {
            let _ = retry_tx.send(r);
        };
        let check = |raw: &Value| protocol.decode(raw).map(|_| ()).map_err(|e| e.to_string());
        let model = self.model;
        let call = model.send(&request, &check, &on_retry);
        tokio::pin!(call);
        let reply = loop {
            tokio::select! {
                r = &mut call => break r,
                Some(r) = retry_rx.recv() => {
                    self.emit.emit(Event::ModelRetry {
                        step,
                        attempt: r.attempt,
                        error: r.error,
                        wait_ms: r.wait.as_millis() as u64,
                    })
                    .await;
                }
                _ = self.controls.next(step, self.emit) => {
                    if self.controls.stop {
                        return Err(self.stop_reason());
                    }
                }
                _ = tokio::time::sleep_until(self.deadline) => return Err(Interrupt::TimedOut),
            }
        };
        Ok(match reply {
            Err(e) => Err(format!("the model call of step {step} failed: {e}")),
            Ok(raw) => match protocol.decode(&raw.body) {
                Ok(decision) => Ok((raw, decision, recorded)),
                Err(e) => Err(format!(
                    "the model's reply of step {step} is not usable: {e}"
                )),
            },
        })
    }

    /// One step: decide, act, settle, observe.
    async fn step(
        &mut self,
        step: u32,
        protocol: &mut dyn Protocol,
        current: Observed,
        bad_replies: &mut u32,
    ) -> Next {
        let step_started = Instant::now();
        self.totals.steps = step;
        self.emit.emit(Event::StepStarted { step }).await;
        if let Some(marks) = &self.cfg.step_mark {
            let first = step == self.cfg.first_step.max(1);
            self.emit
                .emit(Event::StepMark {
                    step,
                    key: marks.key.clone(),
                    mark: if first { &marks.first } else { &marks.rest }.clone(),
                    expected: None,
                })
                .await;
        }
        self.emit
            .emit(Event::Observation {
                step,
                frame: current.frame.clone(),
            })
            .await;
        let finish = |frame: &Frame| Event::StepFinished {
            step,
            frame: frame.clone(),
            step_ms: ms(step_started.elapsed()),
        };

        let (raw, mut decision, recorded) = match self.decide(step, protocol).await {
            Err(i) => return Next::End(self.ending(i)),
            Ok(Err(e)) => return Next::End(Ending::new(Status::Error, EndedBy::Error).error(e)),
            Ok(Ok(d)) => d,
        };
        let grounded = match self.ground(step, &current, &mut decision).await {
            Ok(events) => events,
            Err(i) => return Next::End(self.ending(i)),
        };
        self.totals.tokens_in += decision.usage.input;
        self.totals.tokens_out += decision.usage.output;
        self.emit
            .emit(Event::ModelReply {
                step,
                thought: decision.thought.clone(),
                text: decision.text.clone(),
                calls: decision.calls.clone(),
                usage: decision.usage,
                model_ms: ms(raw.elapsed),
                attempts: raw.attempts,
                exchange: Some(Arc::new(Exchange {
                    request: recorded,
                    response: raw.body.clone(),
                })),
            })
            .await;
        for event in grounded {
            self.emit.emit(event).await;
        }
        protocol.assistant(&raw.body, &decision);
        if let Some(last) = &mut self.last_reply {
            *last = Some((raw.body.clone(), decision.clone()));
        }

        if decision.calls.is_empty() {
            self.emit.emit(finish(&current.frame)).await;
            return Next::End(
                Ending::new(Status::Succeeded, EndedBy::Model).answer(decision.text.clone()),
            );
        }
        if let Some(ending) = self
            .safety_gate(step, protocol, &decision, &current, &finish)
            .await
        {
            return Next::End(ending);
        }

        // Act.
        let mark = self.computer.mark();
        let Acts {
            acted,
            usable,
            results,
            ending,
        } = match self
            .act_all(step, protocol, &decision, &current, &finish)
            .await
        {
            Ok(acts) => acts,
            Err(ending) => return Next::End(ending),
        };
        if let Some(ending) = ending {
            self.emit.emit(finish(&current.frame)).await;
            return Next::End(ending);
        }

        // Settle, observe.
        if acted {
            let computer = self.computer;
            match self
                .guarded(step, computer.settle(mark, self.cfg.settle))
                .await
            {
                Ok(report) => self.emit.emit(Event::Settled { step, report }).await,
                Err(Interrupt::DesktopGone) => {
                    let broke = self
                        .step_broke(step, finish(&current.frame), "the desktop stopped working")
                        .await;
                    return Next::End(broke);
                }
                Err(i) => {
                    self.emit.emit(finish(&current.frame)).await;
                    return Next::End(self.ending(i));
                }
            }
        }
        let after = match self.observe(protocol).await {
            Ok(o) => o,
            Err(e) => return Next::End(self.step_broke(step, finish(&current.frame), &e).await),
        };
        protocol.results(&results, &after.shot, "The screen after your actions:");
        self.emit.emit(finish(&after.frame)).await;
        *bad_replies = if usable { 0 } else { *bad_replies + 1 };
        Next::Continue(after)
    }

    /// The provider's safety checks on a reply: acknowledged (by a person, or by the flag),
    /// or the episode ends here (`Some`).
    async fn safety_gate(
        &mut self,
        step: u32,
        protocol: &mut dyn Protocol,
        decision: &Decision,
        current: &Observed,
        finish: &(dyn Fn(&Frame) -> Event + Sync),
    ) -> Option<Ending> {
        if !decision.safety.is_empty() {
            match self.safety(step, &decision.safety).await {
                Ok(true) => protocol.acknowledge(&decision.safety),
                Ok(false) => {
                    self.emit.emit(finish(&current.frame)).await;
                    let codes: Vec<String> = decision
                        .safety
                        .iter()
                        .map(|c| format!("{}: {}", c.code, c.message))
                        .collect();
                    let how = if self.cfg.interactive {
                        "the person did not acknowledge it"
                    } else {
                        "pass --ack-safety-checks to acknowledge such checks, or run in the TUI to be asked"
                    };
                    // A check that asks for a person's confirmation, where nobody gave it,
                    // leaves the task waiting for a person.
                    let status =
                        if !self.cfg.interactive && decision.safety.iter().any(|c| c.confirm) {
                            Status::NeedsUser
                        } else {
                            Status::Stopped
                        };
                    return Some(Ending::new(status, EndedBy::Safety).error(format!(
                        "the model's provider raised a safety check ({}); {how}",
                        codes.join("; ")
                    )));
                }
                Err(Stop) => {
                    self.emit.emit(finish(&current.frame)).await;
                    return Some(self.ending(self.stop_reason()));
                }
            }
        }
        None
    }

    /// Runs a reply's calls in order: each one checked, approved when a person approves,
    /// acted, and answered (`results`); an ending action ends the episode after the turn.
    /// `Err`: the episode ended during the calls (stopped, timed out, the desktop gone).
    async fn act_all(
        &mut self,
        step: u32,
        protocol: &mut dyn Protocol,
        decision: &Decision,
        current: &Observed,
        finish: &(dyn Fn(&Frame) -> Event + Sync),
    ) -> Result<Acts, Ending> {
        let mut acted = false;
        let mut usable = false;
        let mut ending: Option<Ending> = None;
        let mut results = Vec::with_capacity(decision.calls.len());
        // The protocol wants the turn to stop at its first failure (Anthropic's toolset).
        let halts = protocol.stops_at_first_failure();
        let mut failed = false;
        for (index, call) in decision.calls.iter().enumerate() {
            let refuse = |text: String| CallResult {
                id: call.id.clone(),
                text,
                is_error: true,
                image: None,
            };
            if ending.is_some() {
                results.push(refuse("skipped: the episode had already ended".into()));
                continue;
            }
            if failed {
                let e = InvalidAction::new(protocol::NOT_EXECUTED);
                self.reject(step, index, &call.input, &e).await;
                results.push(refuse(e.to_string()));
                continue;
            }
            if index >= self.cfg.max_actions {
                let e = InvalidAction::new(format!(
                    "not done: at most {} actions are done per turn (this reply had {})",
                    self.cfg.max_actions,
                    decision.calls.len()
                ));
                self.reject(step, index, &call.input, &e).await;
                results.push(refuse(e.to_string()));
                failed = halts;
                continue;
            }
            let action = match &call.action {
                Ok(a) => a.clone(),
                Err(e) => {
                    self.reject(step, index, &call.input, e).await;
                    results.push(refuse(e.to_string()));
                    failed = halts;
                    continue;
                }
            };
            usable = true;
            if let Action::CallUser { question } = &action
                && self.cfg.interactive
            {
                // A person is there: ask, and give the model the answer.
                self.emit
                    .emit(Event::NeedsUser {
                        step,
                        question: question.clone(),
                    })
                    .await;
                let answer = match self.controls.reply(step, self.emit).await {
                    Ok(a) => a,
                    Err(Stop) => {
                        self.emit.emit(finish(&current.frame)).await;
                        return Err(self.ending(self.stop_reason()));
                    }
                };
                let text = match answer {
                    Some(a) => format!("The person answered: {a}"),
                    None => "The person looked at it and lets you go on.".to_owned(),
                };
                self.emit
                    .emit(Event::ActionDone {
                        step,
                        index,
                        action,
                        text: Some(text.clone()),
                        act_ms: 0.0,
                        image: None,
                    })
                    .await;
                acted = true;
                results.push(CallResult {
                    id: call.id.clone(),
                    text,
                    is_error: false,
                    image: None,
                });
                continue;
            }
            if action.is_end() {
                ending = Some(end_of(&action));
                self.emit
                    .emit(Event::ActionDone {
                        step,
                        index,
                        action,
                        text: None,
                        act_ms: 0.0,
                        image: None,
                    })
                    .await;
                results.push(CallResult::ok(&call.id));
                continue;
            }
            match self.controls.approve(step, index, &action, self.emit).await {
                Err(Stop) => return Err(self.ending(self.stop_reason())),
                Ok(false) => {
                    let denied =
                        InvalidAction::new("the person watching did not allow this action");
                    self.reject(step, index, &call.input, &denied).await;
                    results.push(refuse(denied.to_string()));
                    failed = halts;
                    continue;
                }
                Ok(true) => {}
            }
            let t = Instant::now();
            let computer = self.computer;
            let outcome = match self.guarded(step, computer.act(&action)).await {
                Ok(r) => r,
                Err(Interrupt::DesktopGone) => {
                    let ending = self
                        .desktop_failed("the desktop stopped working".into())
                        .await;
                    let reason = ending.error.clone().unwrap_or_default();
                    self.reject(step, index, &call.input, &InvalidAction::new(reason))
                        .await;
                    self.emit.emit(finish(&current.frame)).await;
                    return Err(ending);
                }
                Err(i) => {
                    // Cut short: nothing may stay pressed.
                    computer.release_input().await;
                    let reason = match &i {
                        Interrupt::TimedOut => "the time limit was reached during this action",
                        _ => "the episode was stopped during this action",
                    };
                    self.reject(step, index, &call.input, &InvalidAction::new(reason))
                        .await;
                    self.emit.emit(finish(&current.frame)).await;
                    return Err(self.ending(i));
                }
            };
            match outcome {
                Ok(out) => {
                    acted |= action.may_change_screen();
                    let mut text = out.text.clone();
                    if let Some(p) = out.cursor {
                        let (x, y) = protocol.geometry().to_model(p);
                        text = Some(format!("X={x},Y={y}"));
                    }
                    let image = match out.image {
                        Some(shot) if !matches!(action, Action::Screenshot) => {
                            Some(shown(protocol, shot).await)
                        }
                        _ => None,
                    };
                    results.push(CallResult {
                        id: call.id.clone(),
                        text: text.clone().unwrap_or_else(|| "ok".into()),
                        is_error: false,
                        image: image.as_ref().map(|f| Shot {
                            sha256: f.sha256.clone(),
                            png: f.png.clone(),
                            tree: None,
                        }),
                    });
                    self.emit
                        .emit(Event::ActionDone {
                            step,
                            index,
                            action,
                            text,
                            act_ms: ms(t.elapsed()),
                            image,
                        })
                        .await;
                }
                Err(ActionError::Invalid(e)) => {
                    self.reject(step, index, &call.input, &e).await;
                    results.push(refuse(e.to_string()));
                    failed = halts;
                }
                Err(ActionError::Desktop(e)) => {
                    // The step in progress is recorded with what broke it.
                    let ending = self.desktop_failed(e.to_string()).await;
                    let reason = ending.error.clone().unwrap_or_default();
                    self.reject(step, index, &call.input, &InvalidAction::new(reason))
                        .await;
                    self.emit.emit(finish(&current.frame)).await;
                    return Err(ending);
                }
            }
        }
        Ok(Acts {
            acted,
            usable,
            results,
            ending,
        })
    }

    /// Finds the elements a planner named (`decision.grounding`) with the grounder and puts
    /// the points into their calls; a call whose element was not found becomes unusable,
    /// with why (the planner hears it). Returns the events to report after the reply.
    async fn ground(
        &mut self,
        step: u32,
        current: &Observed,
        decision: &mut Decision,
    ) -> Result<Vec<Event>, Interrupt> {
        let wanted = std::mem::take(&mut decision.grounding);
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let Some(grounder) = self.cfg.grounder.clone() else {
            for g in &wanted {
                decision.calls[g.call].action = Err(InvalidAction::new(
                    "nothing can find elements here: name no `element` (no --grounder is set)",
                ));
            }
            return Ok(Vec::new());
        };
        let screen = (current.frame.width, current.frame.height);
        let mut events = Vec::with_capacity(wanted.len());
        for g in wanted {
            let Some(call) = decision.calls.get(g.call) else {
                continue;
            };
            if call.action.is_err() {
                continue;
            }
            let located = self
                .guarded(
                    step,
                    grounder.locate(
                        &g.element,
                        &current.frame.png,
                        screen,
                        &current.frame.sha256,
                    ),
                )
                .await?;
            self.totals.tokens_in += located.usage.input;
            self.totals.tokens_out += located.usage.output;
            self.grounder_tokens.0 += located.usage.input;
            self.grounder_tokens.1 += located.usage.output;
            let call = &mut decision.calls[g.call];
            match (&located.point, &call.action) {
                (Ok(p), Ok(a)) => call.action = Ok(with_point(a.clone(), g.point, *p)),
                (Err(e), _) => {
                    call.action = Err(InvalidAction::new(format!(
                        "the grounder did not find \"{}\": {e}",
                        g.element
                    )));
                }
                (Ok(_), Err(_)) => {}
            }
            events.push(Event::Grounded {
                step,
                index: g.call,
                element: g.element,
                point: located.point.as_ref().ok().copied(),
                error: located.point.as_ref().err().cloned(),
                model: grounder.name().to_owned(),
                usage: located.usage,
                model_ms: located.model_ms,
                exchange: Some(Arc::new(Exchange {
                    request: located.request,
                    response: located.response,
                })),
            });
        }
        Ok(events)
    }

    /// Decides about safety checks: acknowledged by flag, asked of the person (TUI), or
    /// refused where nobody can be asked. Every check and its answer is an event.
    async fn safety(&mut self, step: u32, checks: &[protocol::SafetyCheck]) -> Result<bool, Stop> {
        let (verdict, answer) = if self.cfg.ack_safety_checks {
            ("acknowledged", Ok(true))
        } else if self.cfg.interactive {
            ("asked", Ok(false))
        } else {
            ("refused", Ok(false))
        };
        self.emit
            .emit(Event::SafetyCheck {
                step,
                checks: checks.to_vec(),
                acknowledged: verdict.to_owned(),
            })
            .await;
        if verdict == "asked" {
            return self.controls.confirm(step, self.emit).await;
        }
        answer
    }

    /// The desktop broke after the step's actions: the step is recorded with why.
    async fn step_broke(&self, step: u32, finish: Event, error: &str) -> Ending {
        let ending = self.desktop_failed(error.to_owned()).await;
        self.emit
            .emit(Event::StepError {
                step,
                error: ending.error.clone().unwrap_or_default(),
            })
            .await;
        self.emit.emit(finish).await;
        ending
    }

    /// An action that did not happen: reported (its error goes back to the model with the
    /// results).
    async fn reject(&self, step: u32, index: usize, input: &Value, error: &InvalidAction) {
        self.emit
            .emit(Event::ActionFailed {
                step,
                index,
                input: input.clone(),
                error: error.to_string(),
            })
            .await;
    }
}

use serde_json::Value;

/// What a person did in a take-over, in words for the model (no coordinates: the model's
/// space may not be the screen's).
fn person_action(a: &Action) -> String {
    match a {
        Action::Click { count: 2, .. } => "double-clicked".into(),
        Action::Click { count: 3, .. } => "triple-clicked".into(),
        Action::Click { .. } => "clicked".into(),
        Action::Drag { .. } => "dragged".into(),
        Action::Scroll { dy, .. } if *dy < 0 => "scrolled up".into(),
        Action::Scroll { dy, .. } if *dy > 0 => "scrolled down".into(),
        Action::Scroll { .. } => "scrolled sideways".into(),
        Action::Type { text } => format!("typed {:?}", crate::text::cut(text, 200)),
        Action::Key { text } => format!("pressed {text}"),
        other => other.name().to_owned(),
    }
}

/// `action` with its point number `index` (in [`Action::points`] order) at `p`.
fn with_point(action: Action, index: usize, p: crate::action::Point) -> Action {
    let mut i = 0;
    action.map_points(|q| {
        let out = if i == index { p } else { q };
        i += 1;
        out
    })
}

/// An image an action produced (a zoom), at the size the protocol shows it (scaled up to
/// fill the model's image, for Anthropic's toolset), as the model sees it.
async fn shown(protocol: &dyn Protocol, shot: crate::desktop::Screenshot) -> Frame {
    let crop = (shot.width, shot.height);
    let size = protocol.zoom_size(crop);
    if size == crop {
        return Frame::new(shot.png, crop.0, crop.1);
    }
    let g = protocol::Geometry::pixels(crop, size, protocol::CoordSpace::Native);
    let (png, rgb) = (shot.png.clone(), shot.rgb.clone());
    let scaled = tokio::task::spawn_blocking(move || match rgb {
        Some(rgb) => g.image_from_rgb(crop.0, crop.1, &rgb),
        None => g.image_for_model(&png),
    })
    .await;
    match scaled {
        Ok(Ok(png)) => Frame::new(Arc::new(png), size.0, size.1),
        // Not worth failing the action over: the crop as it is.
        _ => Frame::new(shot.png, crop.0, crop.1),
    }
}

/// How an ending action ends the episode.
fn end_of(action: &Action) -> Ending {
    match action {
        Action::Fail { reason } => Ending::new(Status::Failed, EndedBy::Model)
            .answer(Some(reason.clone()))
            .error(format!("the model gave up: {reason}")),
        Action::CallUser { question } => Ending::new(Status::NeedsUser, EndedBy::Model)
            .answer(question.clone())
            .error(format!(
                "the model asks for help{}",
                question
                    .as_deref()
                    .map(|q| format!(": {q}"))
                    .unwrap_or_default()
            )),
        Action::Done { answer } => {
            Ending::new(Status::Succeeded, EndedBy::Model).answer(answer.clone())
        }
        _ => Ending::new(Status::Succeeded, EndedBy::Model),
    }
}

#[cfg(test)]
mod loop_tests;
