//! What a person (or the harness) tells a running episode: the TUI's keys, Ctrl-C, a
//! recording that failed. The loop applies commands between and during its steps.

use crate::action::Action;
use crate::event::{Emitter, Event};
use tokio::sync::mpsc;

/// What a person can tell a running episode (the TUI's keys; Ctrl-C sends `Stop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Finish the current step, then wait.
    Pause,
    Resume,
    /// From a pause: run one step, then pause again.
    Step,
    /// End the episode (status `stopped`).
    Stop,
    /// A message for the model, sent with the next request.
    Message(String),
    /// Ask before every action (`true`) or not.
    ApproveMode(bool),
    /// Answers to an approval request.
    Approve,
    Deny,
    /// Pause so a person can use the desktop (through the view).
    TakeOver,
    /// Resume after a take-over: the next step starts from a fresh screenshot.
    HandBack,
    /// End the episode because of the harness (the recording cannot be written): status
    /// `error`, with this reason.
    Abort(String),
}

impl Command {
    fn kind(&self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Step => "step",
            Self::Stop => "stop",
            Self::Message(_) => "message",
            Self::ApproveMode(true) => "approve_on",
            Self::ApproveMode(false) => "approve_off",
            Self::Approve => "approve",
            Self::Deny => "deny",
            Self::TakeOver => "take_over",
            Self::HandBack => "hand_back",
            Self::Abort(_) => "abort",
        }
    }
}

/// The loop's view of the commands it has been sent.
pub(crate) struct Controls {
    pub(crate) rx: mpsc::Receiver<Command>,
    pub(crate) closed: bool,
    pub(crate) paused: bool,
    pub(crate) single_step: bool,
    pub(crate) approve: bool,
    pub(crate) stop: bool,
    pub(crate) taken_over: bool,
    pub(crate) handed_back: bool,
    pub(crate) messages: Vec<String>,
    pub(crate) answer: Option<bool>,
    /// Why the harness ended the episode.
    pub(crate) aborted: Option<String>,
}

/// The loop was told to stop.
pub(crate) struct Stop;

impl Controls {
    pub(crate) fn new(rx: mpsc::Receiver<Command>) -> Self {
        Self {
            rx,
            closed: false,
            paused: false,
            single_step: false,
            approve: false,
            stop: false,
            taken_over: false,
            handed_back: false,
            messages: Vec::new(),
            answer: None,
            aborted: None,
        }
    }

    async fn apply(&mut self, cmd: Command, step: u32, emit: &Emitter) {
        let text = match &cmd {
            Command::Message(m) => Some(m.clone()),
            _ => None,
        };
        match cmd {
            Command::Pause => self.paused = true,
            Command::Resume => {
                self.paused = false;
                self.single_step = false;
            }
            Command::Step => {
                self.paused = false;
                self.single_step = true;
            }
            Command::Stop => self.stop = true,
            Command::Message(ref m) => self.messages.push(m.clone()),
            Command::ApproveMode(on) => self.approve = on,
            Command::Approve => self.answer = Some(true),
            Command::Deny => self.answer = Some(false),
            Command::Abort(ref reason) => {
                self.aborted = Some(reason.clone());
                self.stop = true;
            }
            Command::TakeOver => {
                self.paused = true;
                self.taken_over = true;
            }
            Command::HandBack => {
                self.paused = false;
                self.single_step = false;
                if self.taken_over {
                    self.handed_back = true;
                }
                self.taken_over = false;
            }
        }
        emit.emit(Event::Intervention {
            step,
            kind: cmd.kind().to_owned(),
            text,
        })
        .await;
    }

    /// Applies the commands already sent, without waiting.
    pub(crate) async fn drain(&mut self, step: u32, emit: &Emitter) -> Result<(), Stop> {
        while !self.closed {
            match self.rx.try_recv() {
                Ok(cmd) => self.apply(cmd, step, emit).await,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.closed = true,
            }
        }
        if self.stop { Err(Stop) } else { Ok(()) }
    }

    /// Waits for the next command and applies it (never resolves once the sender is gone).
    pub(crate) async fn next(&mut self, step: u32, emit: &Emitter) {
        if self.closed {
            return std::future::pending().await;
        }
        match self.rx.recv().await {
            Some(cmd) => self.apply(cmd, step, emit).await,
            None => self.closed = true,
        }
    }

    /// While paused (or taken over), waits for resume, step, hand back or stop.
    pub(crate) async fn wait_while_paused(
        &mut self,
        step: u32,
        emit: &Emitter,
    ) -> Result<(), Stop> {
        self.drain(step, emit).await?;
        if self.paused {
            let reason = if self.taken_over {
                "taken_over"
            } else {
                "paused"
            };
            emit.emit(Event::Paused {
                step,
                reason: reason.into(),
            })
            .await;
            while self.paused && !self.stop {
                self.next(step, emit).await;
            }
        }
        if self.stop { Err(Stop) } else { Ok(()) }
    }

    /// Asks a yes-or-no question of the person (a safety check) and waits for the answer.
    pub(crate) async fn confirm(&mut self, step: u32, emit: &Emitter) -> Result<bool, Stop> {
        self.drain(step, emit).await?;
        self.answer = None;
        while self.answer.is_none() && !self.stop {
            self.next(step, emit).await;
        }
        if self.stop {
            return Err(Stop);
        }
        Ok(self.answer.take().unwrap_or(false))
    }

    /// Waits for the person to answer the model (a message), or to go on without an
    /// answer (resume, hand back); `None` then.
    pub(crate) async fn reply(
        &mut self,
        step: u32,
        emit: &Emitter,
    ) -> Result<Option<String>, Stop> {
        self.drain(step, emit).await?;
        self.paused = true;
        while self.paused && self.messages.is_empty() && !self.stop {
            self.next(step, emit).await;
        }
        if self.stop {
            return Err(Stop);
        }
        self.paused = false;
        self.taken_over = false;
        self.handed_back = false;
        let answer = std::mem::take(&mut self.messages);
        Ok((!answer.is_empty()).then(|| answer.join("\n")))
    }

    /// In approve mode, asks for this action and waits for the answer.
    pub(crate) async fn approve(
        &mut self,
        step: u32,
        index: usize,
        action: &Action,
        emit: &Emitter,
    ) -> Result<bool, Stop> {
        self.drain(step, emit).await?;
        if !self.approve {
            return Ok(true);
        }
        self.answer = None;
        emit.emit(Event::AwaitingApproval {
            step,
            index,
            action: action.clone(),
        })
        .await;
        while self.answer.is_none() && !self.stop {
            self.next(step, emit).await;
            // Approve mode turned off while waiting: go ahead.
            if !self.approve && self.answer.is_none() {
                self.answer = Some(true);
            }
        }
        if self.stop {
            return Err(Stop);
        }
        Ok(self.answer.take().unwrap_or(true))
    }
}
