//! The TUI's state: fed by the loop's [`Event`]s (live) or by a recording (replay), and by
//! keys. Key handling returns [`Effect`]s for the runner to carry out; drawing
//! (`view.rs`) reads this state and never changes it.

use super::keys::{self, Cmd, View};
use crate::action::{Action, Point};
use crate::agent::{Command, Event, Status};
use crate::headless::describe;
use crate::record::{SessionRow, StepRow};
use crate::task::check::Grade;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use std::sync::Arc;

/// Which screen is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// A task prompt before a live run starts.
    Ask,
    Live,
    Replay,
    Browser,
}

/// A screenshot: in memory (live) or in the recording (replay).
#[derive(Debug, Clone)]
pub enum FrameRef {
    Png {
        sha: String,
        png: Arc<Vec<u8>>,
        width: u32,
        height: u32,
    },
    Stored {
        id: i64,
    },
}

impl FrameRef {
    /// Identifies the pixels, for the encode cache.
    pub fn key(&self) -> String {
        match self {
            Self::Png { sha, .. } => sha.clone(),
            Self::Stored { id } => format!("frame:{id}"),
        }
    }
}

/// One action in the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionView {
    pub desc: String,
    pub ok: bool,
    pub error: Option<String>,
    pub act_ms: Option<f64>,
    /// Points to mark on the screenshot (a click, the points of a drag).
    pub points: Vec<Point>,
}

impl ActionView {
    /// One entry of a recorded step's `actions` (see `record`).
    pub fn from_recorded(a: &serde_json::Value) -> Self {
        if a["ok"] == true {
            let action: Option<Action> = serde_json::from_value(a["action"].clone()).ok();
            Self {
                desc: action
                    .as_ref()
                    .map(describe)
                    .unwrap_or_else(|| a["action"].to_string()),
                ok: true,
                error: None,
                act_ms: a["act_ms"].as_f64(),
                points: action.as_ref().map(action_points).unwrap_or_default(),
            }
        } else {
            Self {
                desc: a["input"]["action"].as_str().unwrap_or("?").to_owned(),
                ok: false,
                error: a["error"].as_str().map(str::to_owned),
                act_ms: None,
                points: Vec::new(),
            }
        }
    }

    /// One line: the action, and its error if it failed.
    pub fn line(&self) -> String {
        match &self.error {
            Some(e) => format!("{}: {e}", self.desc),
            None => self.desc.clone(),
        }
    }
}

/// One step in the timeline.
#[derive(Debug, Clone, Default)]
pub struct StepView {
    pub idx: u32,
    pub actions: Vec<ActionView>,
    pub thought: Option<String>,
    pub text: Option<String>,
    pub model_ms: Option<f64>,
    pub settle_ms: Option<f64>,
    pub step_ms: Option<f64>,
    pub tokens: (u64, u64),
    pub retries: u32,
    pub before: Option<FrameRef>,
    pub after: Option<FrameRef>,
    /// Unix ms, for replay playback.
    pub started_at: Option<i64>,
    pub finished: bool,
    /// The episode ended while this step was still waiting for the model.
    pub cut_short: bool,
    /// Live: the run's clock (`App::elapsed_ms`) when the step began, for the running
    /// timer of the step in flight.
    pub began_ms: Option<u64>,
    /// What people (and the provider's safety checks) did at this step, in words.
    pub notes: Vec<String>,
}

impl StepView {
    pub fn ok(&self) -> bool {
        self.actions.iter().all(|a| a.ok)
    }

    /// What the timeline shows for the step.
    pub fn summary(&self) -> String {
        match (self.actions.as_slice(), &self.text) {
            ([], Some(t)) if self.finished => format!("answer: {t}"),
            ([], _) if self.cut_short => "(ended before the model answered)".to_owned(),
            ([], _) if !self.finished => "thinking…".to_owned(),
            ([], _) => "(no action)".to_owned(),
            ([one], _) => one.line(),
            (many, _) => format!("{} (+{} more)", many[0].line(), many.len() - 1),
        }
    }
}

/// What a key asks the runner to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send(Command),
    Quit,
    /// Replay this session (from the browser).
    OpenReplay(String),
    /// Back to the sessions list.
    OpenBrowser,
    /// The task typed on the Ask screen.
    Start(String),
    /// Put this text on the clipboard (OSC 52: works over ssh and in tmux with
    /// `set-clipboard on`); `what` names it for the notice.
    Copy {
        text: String,
        what: &'static str,
    },
    /// Open this URL in a browser, where there is one.
    OpenUrl(String),
    /// Delete this session from the recording (asked first).
    DeleteSession(String),
}

/// The order of the sessions list (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionSort {
    #[default]
    Newest,
    Status,
    Task,
    Longest,
}

impl SessionSort {
    pub fn label(self) -> &'static str {
        match self {
            Self::Newest => "newest",
            Self::Status => "status",
            Self::Task => "task",
            Self::Longest => "longest",
        }
    }

    fn next(self) -> Self {
        match self {
            Self::Newest => Self::Status,
            Self::Status => Self::Task,
            Self::Task => Self::Longest,
            Self::Longest => Self::Newest,
        }
    }
}

/// The live loop's state as the UI knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Starting,
    Running,
    /// Pause asked for; the current step finishes first.
    Pausing,
    Paused,
    TakenOver,
    Stopping,
    Finished,
}

#[derive(Debug, Clone, Default)]
pub struct Header {
    pub session: String,
    pub sandbox: String,
    pub model: String,
    /// The protocol and coordinate space: `uitars/smart`.
    pub dialect: String,
    pub instruction: String,
    pub max_steps: u32,
    pub width: u32,
    pub height: u32,
    /// The model's price, when known: the status bar shows dollars.
    pub price: Option<crate::model::price::Price>,
}

/// What a question the loop waits on is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskKind {
    /// Approve mode: allow this action? (y / n)
    Approve,
    /// The provider's safety check: acknowledge? (y / n)
    Safety,
    /// The model asks for help: answer with a message, take over, or stop.
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub step: u32,
    pub kind: AskKind,
    pub lines: Vec<String>,
}

pub struct App {
    pub screen: Screen,
    /// Where log lines go while the UI is on screen (shown in the help; empty: not shown).
    pub log_path: String,
    pub header: Header,
    pub steps: Vec<StepView>,
    /// The selected step; `None` follows the latest.
    pub cursor: Option<usize>,
    /// The newest screenshot (live).
    pub latest: Option<FrameRef>,
    /// Replay: show the screen before the step instead of after.
    pub show_before: bool,
    pub run: RunState,
    pub status: Option<Status>,
    pub outcome_text: Option<String>,
    pub approve_mode: bool,
    /// A question the loop waits on: an action to allow, a safety check to acknowledge,
    /// or the model asking for help.
    pub awaiting: Option<Ask>,
    /// The message being typed (`m`), or the task on the Ask screen.
    pub input: Option<String>,
    pub help: bool,
    pub fullscreen: bool,
    /// `q` was pressed while the agent runs: the next key says whether to stop it and quit.
    pub confirm_quit: bool,
    pub view_url: Option<String>,
    /// The view-only URL (to share for watching); goes with the desktop, as `view_url`.
    pub watch_url: Option<String>,
    pub tokens: (u64, u64),
    /// Shown in the status bar; the runner sets it from its clock.
    pub elapsed_ms: u64,
    /// The last problem or note, shown above the key hints.
    pub notice: Option<String>,
    /// What the last key did (copied, opened, why not), shown over everything else in the
    /// notice line until the next key.
    pub flash: Option<String>,
    pub sessions: Vec<SessionRow>,
    /// The selected row of the visible (filtered, sorted) list.
    pub session_cursor: usize,
    /// The sessions list's filter (`/`): rows whose id, status, task, model or error
    /// contain it, any case.
    pub filter: String,
    /// The filter is being typed.
    pub filtering: bool,
    pub sort: SessionSort,
    /// `d` was pressed on this session: the next key says whether to delete it.
    pub confirm_delete: Option<String>,
    /// Replay playback speed when playing.
    pub playing: Option<f64>,
    /// Replay: the speed space plays at (1, 2, 4, 8 or 16; +/- and the digits change it).
    pub speed: f64,
    /// The task's grade, once the checks ran (or the newest recorded one).
    pub grade: Option<Grade>,
}

/// Steps PgUp and PgDn move by.
const PAGE: isize = 10;

fn action_points(a: &Action) -> Vec<Point> {
    match a {
        Action::Zoom { .. } => Vec::new(),
        other => other.points(),
    }
}

impl App {
    pub fn new(screen: Screen) -> Self {
        Self {
            screen,
            log_path: String::new(),
            header: Header::default(),
            steps: Vec::new(),
            cursor: None,
            latest: None,
            show_before: false,
            run: RunState::Starting,
            status: None,
            outcome_text: None,
            approve_mode: false,
            awaiting: None,
            input: if screen == Screen::Ask {
                Some(String::new())
            } else {
                None
            },
            help: false,
            fullscreen: false,
            confirm_quit: false,
            view_url: None,
            watch_url: None,
            tokens: (0, 0),
            elapsed_ms: 0,
            notice: None,
            flash: None,
            sessions: Vec::new(),
            session_cursor: 0,
            filter: String::new(),
            filtering: false,
            sort: SessionSort::Newest,
            confirm_delete: None,
            playing: None,
            speed: 1.0,
            grade: None,
        }
    }

    fn step_mut(&mut self, idx: u32) -> &mut StepView {
        if let Some(pos) = self.steps.iter().position(|s| s.idx == idx) {
            return &mut self.steps[pos];
        }
        self.steps.push(StepView {
            idx,
            ..Default::default()
        });
        let last = self.steps.len() - 1;
        &mut self.steps[last]
    }

    /// The selected step (or the latest).
    pub fn selected(&self) -> Option<usize> {
        match self.cursor {
            Some(c) if c < self.steps.len() => Some(c),
            _ => self.steps.len().checked_sub(1),
        }
    }

    /// The screenshot to show, and the actions to mark on it.
    pub fn shown_frame(&self) -> Option<(FrameRef, Vec<ActionView>)> {
        let step = self.selected().map(|i| &self.steps[i]);
        match (self.screen, step) {
            (Screen::Live, Some(s)) if self.cursor.is_none() => {
                // Following: the newest screen, marked with the last finished step's actions.
                let marks = if s.finished {
                    s.actions.clone()
                } else {
                    Vec::new()
                };
                self.latest.clone().map(|f| (f, marks))
            }
            (_, Some(s)) => {
                let frame = if self.show_before {
                    s.before.clone()
                } else {
                    s.after.clone().or_else(|| s.before.clone())
                };
                let marks = if self.show_before {
                    Vec::new()
                } else {
                    s.actions.clone()
                };
                frame.map(|f| (f, marks))
            }
            (_, None) => self.latest.clone().map(|f| (f, Vec::new())),
        }
    }

    /// Applies one event from the loop.
    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::SessionStarted(s) => {
                self.header = Header {
                    session: s.session.clone(),
                    sandbox: s.sandbox.clone(),
                    model: s.model.clone(),
                    dialect: format!("{}/{}", s.protocol, s.coords),
                    instruction: s.instruction.clone(),
                    max_steps: s.max_steps,
                    width: s.width,
                    height: s.height,
                    price: s.price.as_ref().map(|p| p.price),
                };
                self.run = RunState::Running;
                self.status = Some(Status::Running);
            }
            Event::StepStarted { step } => {
                let now = self.elapsed_ms;
                self.step_mut(*step).began_ms = Some(now);
                if self.run == RunState::Paused || self.run == RunState::TakenOver {
                    self.run = RunState::Running;
                }
            }
            Event::Observation { step, frame } => {
                let f = FrameRef::Png {
                    sha: frame.sha256.clone(),
                    png: frame.png.clone(),
                    width: frame.width,
                    height: frame.height,
                };
                self.latest = Some(f.clone());
                self.step_mut(*step).before = Some(f);
            }
            Event::StepMark {
                step, key, mark, ..
            } => {
                // A re-run's steps say what they were in place of a model's thought.
                if key == "rerun" {
                    let mode = mark["mode"].as_str().unwrap_or("?").to_owned();
                    let line = match mark["of"].as_i64() {
                        Some(of) => format!(
                            "{mode}: recorded step {of} (the screen differed {:.1}%)",
                            mark["difference"].as_f64().unwrap_or(0.0) * 100.0
                        ),
                        None => mode.clone(),
                    };
                    if mode == "halted" {
                        self.notice =
                            Some(format!("step {step}: {line}: drift, the re-run halted"));
                    }
                    let s = self.step_mut(*step);
                    if s.thought.is_none() {
                        s.thought = Some(line);
                    }
                }
            }
            Event::ModelRetry { step, error, .. } => {
                self.step_mut(*step).retries += 1;
                self.notice = Some(format!("step {step}: retrying the model: {error}"));
            }
            Event::ModelReply {
                step,
                thought,
                text,
                usage,
                model_ms,
                ..
            } => {
                self.tokens.0 += usage.input;
                self.tokens.1 += usage.output;
                let s = self.step_mut(*step);
                s.thought = thought.clone();
                s.text = text.clone();
                s.model_ms = Some(*model_ms);
                s.tokens = (usage.input, usage.output);
            }
            Event::Grounded {
                step,
                element,
                point,
                usage,
                ..
            } => {
                self.tokens.0 += usage.input;
                self.tokens.1 += usage.output;
                let s = self.step_mut(*step);
                s.tokens.0 += usage.input;
                s.tokens.1 += usage.output;
                if point.is_none() {
                    self.notice = Some(format!(
                        "step {step}: the grounder did not find \"{element}\""
                    ));
                }
            }
            Event::ActionDone {
                step,
                action,
                act_ms,
                text,
                ..
            } => {
                let desc = match text {
                    Some(t) if matches!(action, Action::CursorPosition) => {
                        format!("{} → {t}", describe(action))
                    }
                    _ => describe(action),
                };
                let points = action_points(action);
                self.step_mut(*step).actions.push(ActionView {
                    desc,
                    ok: true,
                    error: None,
                    act_ms: Some(*act_ms),
                    points,
                });
                self.awaiting = None;
            }
            Event::ActionFailed {
                step, input, error, ..
            } => {
                let name = crate::model::protocol::describe_input(input);
                self.step_mut(*step).actions.push(ActionView {
                    desc: name,
                    ok: false,
                    error: Some(error.clone()),
                    act_ms: None,
                    points: Vec::new(),
                });
                self.awaiting = None;
            }
            Event::StepError { step, error } => {
                self.step_mut(*step).actions.push(ActionView {
                    desc: "step".into(),
                    ok: false,
                    error: Some(error.clone()),
                    act_ms: None,
                    points: Vec::new(),
                });
            }
            Event::Settled { step, report } => {
                self.step_mut(*step).settle_ms = Some(report.waited_ms)
            }
            Event::StepFinished {
                step,
                frame,
                step_ms,
            } => {
                let f = FrameRef::Png {
                    sha: frame.sha256.clone(),
                    png: frame.png.clone(),
                    width: frame.width,
                    height: frame.height,
                };
                self.latest = Some(f.clone());
                let s = self.step_mut(*step);
                s.after = Some(f);
                s.step_ms = Some(*step_ms);
                s.finished = true;
            }
            Event::Paused { reason, .. } => {
                self.run = if reason == "taken_over" {
                    RunState::TakenOver
                } else {
                    RunState::Paused
                };
            }
            Event::AwaitingApproval { step, action, .. } => {
                self.awaiting = Some(Ask {
                    step: *step,
                    kind: AskKind::Approve,
                    lines: vec![describe(action)],
                });
            }
            Event::SafetyCheck {
                step,
                checks,
                acknowledged,
            } => {
                let data = serde_json::json!({"checks": checks, "acknowledged": acknowledged});
                if acknowledged != "asked"
                    && let Some(n) = crate::event::note("safety_check", Some(&data.to_string()))
                {
                    self.note_on(*step, n);
                }
                let lines: Vec<String> = checks
                    .iter()
                    .map(|c| format!("{}: {}", c.code, c.message))
                    .collect();
                if acknowledged == "asked" {
                    self.awaiting = Some(Ask {
                        step: *step,
                        kind: AskKind::Safety,
                        lines,
                    });
                } else {
                    self.notice = Some(format!(
                        "step {step}: safety check {acknowledged}: {}",
                        lines.join("; ")
                    ));
                }
            }
            Event::NeedsUser { step, question } => {
                if let Some(n) = crate::event::note("needs_user", question.as_deref()) {
                    self.note_on(*step, n);
                }
                self.awaiting = Some(Ask {
                    step: *step,
                    kind: AskKind::Help,
                    lines: vec![
                        question
                            .clone()
                            .unwrap_or_else(|| "The agent asks for your help.".into()),
                    ],
                });
            }
            Event::TakeOverView { view_url, vnc, .. } => {
                // The recording proxy's view: what the person uses, so their input is recorded.
                if self.run == RunState::TakenOver {
                    self.notice = Some(match view_url {
                        Some(url) => {
                            format!("take over in your browser (recorded): {url}  (t hands back)")
                        }
                        None => {
                            format!("take over with a VNC client at {vnc} (recorded); t hands back")
                        }
                    });
                }
            }
            Event::Intervention { step, kind, text } => {
                if let Some(n) = crate::event::note(kind, text.as_deref()) {
                    // Before the first step, it belongs to the first.
                    self.note_on(*step, n);
                }
                self.intervened(kind);
            }
            Event::Setup {
                phase,
                index,
                total,
                step,
                error,
                ..
            } => {
                self.notice = Some(match error {
                    None => format!("{phase} {index}/{total} done: {step}"),
                    Some(e) => format!("{phase} {index}/{total} failed: {step}: {e}"),
                });
            }
            Event::Calibration(report) => {
                let verdict = report["message"].as_str().unwrap_or("done");
                self.notice = Some(format!("calibration: {verdict}"));
            }
            Event::Graded { grade, .. } => {
                self.notice = Some(format!("grade: {}", grade.summary()));
                self.grade = Some(grade.clone());
            }
            Event::Finished(o) => {
                self.run = RunState::Finished;
                self.status = Some(o.status);
                // The step in flight never got its answer: say so instead of "thinking…".
                if let Some(last) = self.steps.last_mut()
                    && !last.finished
                    && last.actions.is_empty()
                {
                    last.cut_short = true;
                }
                self.awaiting = None;
                self.tokens = (o.tokens_in, o.tokens_out);
                self.outcome_text = Some(match (&o.answer, &o.error) {
                    (Some(a), _) if o.status == Status::Succeeded => format!("answer: {a}"),
                    (_, Some(e)) => e.clone(),
                    (Some(a), None) => a.clone(),
                    (None, None) => String::new(),
                });
            }
        }
    }

    /// The state an intervention leaves the run in.
    fn intervened(&mut self, kind: &str) {
        match kind {
            // An answer to the agent's call for help, or going on without one.
            "message" | "resume" | "hand_back" | "take_over" | "stop"
                if self
                    .awaiting
                    .as_ref()
                    .is_some_and(|a| a.kind == AskKind::Help) =>
            {
                self.awaiting = None;
                if kind == "resume" || kind == "hand_back" || kind == "message" {
                    self.run = RunState::Running;
                }
            }
            "approve_on" => self.approve_mode = true,
            "approve_off" => self.approve_mode = false,
            "resume" | "step" | "hand_back" if self.run != RunState::Finished => {
                self.run = RunState::Running
            }
            _ => {}
        }
    }

    /// Puts the recorded interventions, safety checks and calls for help on their steps.
    pub fn attach_events(&mut self, events: &[crate::record::EventRow]) {
        let last = self.steps.last().map_or(1, |s| i64::from(s.idx));
        for s in &mut self.steps {
            s.notes = crate::record::notes_at(events, i64::from(s.idx), last);
        }
    }

    /// A note on step `idx`; on the newest step when that one is not in the timeline (a
    /// question asked between steps), and kept for the first when there is none yet.
    fn note_on(&mut self, idx: u32, note: String) {
        match self.steps.iter().position(|s| s.idx == idx) {
            Some(i) => self.steps[i].notes.push(note),
            None if !self.steps.is_empty() => {
                let last = self.steps.len() - 1;
                self.steps[last].notes.push(note);
            }
            None => self.step_mut(idx.max(1)).notes.push(note),
        }
    }

    /// Loads a recorded session for replay.
    pub fn load_replay(&mut self, session: &SessionRow, steps: &[StepRow]) {
        self.screen = Screen::Replay;
        self.header = Header {
            session: session.id.clone(),
            sandbox: session.sandbox.clone().unwrap_or_default(),
            model: session.model.clone().unwrap_or_default(),
            dialect: session.dialect(),
            instruction: session.instruction.clone(),
            max_steps: session.meta["max_steps"].as_u64().unwrap_or(0) as u32,
            width: session.width.unwrap_or(0) as u32,
            height: session.height.unwrap_or(0) as u32,
            price: session.price().map(|p| p.price),
        };
        self.status = Status::parse(&session.status);
        self.run = RunState::Finished;
        self.tokens = (session.tokens_in as u64, session.tokens_out as u64);
        self.elapsed_ms = session.wall_ms.unwrap_or(0) as u64;
        self.outcome_text = session
            .answer
            .clone()
            .map(|a| format!("answer: {a}"))
            .or_else(|| session.error.clone());
        self.steps = steps
            .iter()
            .map(|st| StepView {
                idx: st.idx as u32,
                actions: st
                    .actions
                    .as_array()
                    .map(|list| list.iter().map(ActionView::from_recorded).collect())
                    .unwrap_or_default(),
                thought: st.thought.clone(),
                text: st.text.clone(),
                model_ms: st.model_ms,
                settle_ms: st.settle_ms,
                step_ms: st.step_ms,
                tokens: (st.tokens_in as u64, st.tokens_out as u64),
                retries: st.meta["retries"].as_array().map_or(0, |r| r.len() as u32),
                before: st.frame_before.map(|id| FrameRef::Stored { id }),
                after: st.frame_after.map(|id| FrameRef::Stored { id }),
                started_at: Some(st.started_at),
                finished: true,
                cut_short: false,
                began_ms: None,
                notes: Vec::new(),
            })
            .collect();
        self.cursor = if self.steps.is_empty() { None } else { Some(0) };
        self.playing = None;
    }

    /// Moves the replay (or live review) cursor; returns whether it moved.
    pub fn move_cursor(&mut self, delta: isize) -> bool {
        if self.steps.is_empty() {
            return false;
        }
        let last = self.steps.len() - 1;
        let current = self.selected().unwrap_or(last) as isize;
        let next = (current + delta).clamp(0, last as isize) as usize;
        let moved = next as isize != current || self.cursor.is_none();
        // Live: reaching the end again means following the newest step.
        self.cursor = if self.screen == Screen::Live && next == last && delta > 0 {
            None
        } else {
            Some(next)
        };
        moved
    }

    /// Handles a key; returns what the runner should do.
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        self.flash = None;
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        // Typing (a message, or the task on the Ask screen) takes every key but Ctrl-C.
        if let Some(text) = self.input.as_mut()
            && !ctrl_c
        {
            match key.code {
                KeyCode::Enter => {
                    let text = std::mem::take(text).trim().to_owned();
                    if self.screen == Screen::Ask {
                        if text.is_empty() {
                            return Vec::new();
                        }
                        self.input = None;
                        self.screen = Screen::Live;
                        return vec![Effect::Start(text)];
                    }
                    self.input = None;
                    if text.is_empty() {
                        return Vec::new();
                    }
                    self.notice = Some(format!("message sent: {text}"));
                    return vec![Effect::Send(Command::Message(text))];
                }
                KeyCode::Esc => {
                    if self.screen == Screen::Ask {
                        return vec![Effect::Quit];
                    }
                    self.input = None;
                }
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return Vec::new();
        }
        if self.help {
            self.help = false;
            if !matches!(key.code, KeyCode::Char('q')) {
                return Vec::new();
            }
        }
        if self.confirm_quit {
            self.confirm_quit = false;
            self.notice = None;
            if ctrl_c || matches!(key.code, KeyCode::Char('y') | KeyCode::Char('q')) {
                return vec![Effect::Quit];
            }
            return Vec::new();
        }
        if let Some(ask) = self.awaiting.clone()
            && ask.kind != AskKind::Help
        {
            match key.code {
                KeyCode::Char('y') | KeyCode::Enter => {
                    self.awaiting = None;
                    self.notice = Some(format!("step {}: approved", ask.step));
                    return vec![Effect::Send(Command::Approve)];
                }
                KeyCode::Char('n') | KeyCode::Esc => {
                    self.awaiting = None;
                    self.notice = Some(format!("step {}: denied", ask.step));
                    return vec![Effect::Send(Command::Deny)];
                }
                _ => {}
            }
        }
        match self.screen {
            Screen::Ask => Vec::new(),
            Screen::Live => self.live_key(key, ctrl_c),
            Screen::Replay => self.replay_key(key),
            Screen::Browser => self.browser_key(key),
        }
    }

    /// Which key set applies now (see `keys`).
    pub fn view(&self) -> View {
        match self.screen {
            Screen::Ask => View::Ask,
            Screen::Live if self.run == RunState::Finished => View::Finished,
            Screen::Live => View::Running,
            Screen::Replay => View::Replay,
            Screen::Browser => View::Browser,
        }
    }

    /// A key on the live or replay screen: the command it gives (`Ok`) for the screen to
    /// carry out, or what was done already (`Err`: Esc leaving full screen, a command both
    /// screens share, or a key bound to nothing).
    fn screen_command(&mut self, key: KeyEvent) -> Result<Cmd, Vec<Effect>> {
        // Esc goes back one level: out of full screen first.
        if key.code == KeyCode::Esc && self.fullscreen {
            self.fullscreen = false;
            return Err(Vec::new());
        }
        let Some(cmd) = keys::command(self.view(), key.code) else {
            return Err(Vec::new());
        };
        match self.common_command(cmd) {
            Some(effects) => Err(effects),
            None => Ok(cmd),
        }
    }

    /// What a command does on the live and replay screens alike; `None` when it is not one
    /// of theirs.
    fn common_command(&mut self, cmd: Cmd) -> Option<Vec<Effect>> {
        match cmd {
            Cmd::Help => self.help = true,
            Cmd::Full => self.fullscreen = !self.fullscreen,
            Cmd::Up => {
                self.move_cursor(-1);
            }
            Cmd::Down => {
                self.move_cursor(1);
            }
            Cmd::PageUp => {
                self.move_cursor(-PAGE);
            }
            Cmd::PageDown => {
                self.move_cursor(PAGE);
            }
            Cmd::First => self.cursor = (!self.steps.is_empty()).then_some(0),
            Cmd::CopyView | Cmd::CopyWatch | Cmd::CopyId | Cmd::OpenView => {
                return Some(self.share(cmd));
            }
            _ => return None,
        }
        Some(Vec::new())
    }

    /// `y` copies the view URL (or the session id when there is none), `w` the view-only
    /// URL, `Y` the session id, `o` opens the view in a browser.
    fn share(&mut self, cmd: Cmd) -> Vec<Effect> {
        let session = (!self.header.session.is_empty()).then(|| self.header.session.clone());
        let live = self.screen == Screen::Live;
        if cmd == Cmd::CopyWatch {
            return match self.watch_url.clone().filter(|_| live) {
                Some(text) => vec![Effect::Copy {
                    text,
                    what: "the view-only URL",
                }],
                None => {
                    self.flash = Some("no view-only URL (the desktop is gone)".into());
                    Vec::new()
                }
            };
        }
        let url = self.view_url.clone().filter(|_| live);
        let effect = match (cmd, url, session) {
            (Cmd::CopyView, Some(text), _) => Effect::Copy {
                text,
                what: "the view URL",
            },
            (Cmd::CopyView | Cmd::CopyId, _, Some(text)) => Effect::Copy {
                text,
                what: "the session id",
            },
            (Cmd::OpenView, Some(url), _) => Effect::OpenUrl(url),
            (Cmd::OpenView, None, _) => {
                self.flash = Some("no live view to open (the desktop is gone)".into());
                return Vec::new();
            }
            _ => return Vec::new(),
        };
        vec![effect]
    }

    fn live_key(&mut self, key: KeyEvent, ctrl_c: bool) -> Vec<Effect> {
        let running = !matches!(
            self.run,
            RunState::Finished | RunState::Stopping | RunState::Starting
        );
        if ctrl_c {
            if running {
                self.run = RunState::Stopping;
                return vec![Effect::Send(Command::Stop)];
            }
            return vec![Effect::Quit];
        }
        let cmd = match self.screen_command(key) {
            Ok(cmd) => cmd,
            Err(effects) => return effects,
        };
        match cmd {
            // Quitting stops the agent: asked first, as q is easy to press by mistake.
            Cmd::Quit if running || self.run == RunState::Starting => {
                self.confirm_quit = true;
                self.notice =
                    Some("stop the agent and quit? y or q quits, any other key goes on".into());
                Vec::new()
            }
            Cmd::Quit => vec![Effect::Quit],
            Cmd::Pause if running => match self.run {
                RunState::Paused | RunState::Pausing => {
                    self.run = RunState::Running;
                    vec![Effect::Send(Command::Resume)]
                }
                RunState::TakenOver => {
                    self.run = RunState::Running;
                    vec![Effect::Send(Command::HandBack)]
                }
                _ => {
                    self.run = RunState::Pausing;
                    vec![Effect::Send(Command::Pause)]
                }
            },
            Cmd::Step if running => {
                self.run = RunState::Running;
                vec![Effect::Send(Command::Step)]
            }
            Cmd::Approve if running => {
                self.approve_mode = !self.approve_mode;
                self.notice = Some(format!(
                    "approve each action: {}",
                    if self.approve_mode { "on" } else { "off" }
                ));
                vec![Effect::Send(Command::ApproveMode(self.approve_mode))]
            }
            Cmd::Message if running => {
                self.input = Some(String::new());
                Vec::new()
            }
            Cmd::TakeOver if running => {
                if self.run == RunState::TakenOver {
                    self.run = RunState::Running;
                    vec![Effect::Send(Command::HandBack)]
                } else {
                    self.run = RunState::TakenOver;
                    self.notice = Some(match &self.view_url {
                        Some(url) => format!("take over in your browser: {url}  (t hands back)"),
                        None => {
                            "taken over (no web view for this desktop); t hands back".to_owned()
                        }
                    });
                    vec![Effect::Send(Command::TakeOver)]
                }
            }
            Cmd::Stop if running => {
                self.run = RunState::Stopping;
                vec![Effect::Send(Command::Stop)]
            }
            Cmd::Last => {
                self.cursor = None;
                Vec::new()
            }
            Cmd::Sessions if self.run == RunState::Finished => vec![Effect::OpenBrowser],
            _ => Vec::new(),
        }
    }

    fn replay_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let cmd = match self.screen_command(key) {
            Ok(cmd) => cmd,
            Err(effects) => return effects,
        };
        match cmd {
            Cmd::Quit => return vec![Effect::Quit],
            Cmd::Sessions => return vec![Effect::OpenBrowser],
            Cmd::Next => {
                self.move_cursor(1);
            }
            Cmd::Prev => {
                self.move_cursor(-1);
            }
            Cmd::Last => self.cursor = self.steps.len().checked_sub(1),
            Cmd::BeforeAfter => self.show_before = !self.show_before,
            Cmd::Play => {
                self.playing = if self.playing.is_some() {
                    None
                } else {
                    // At the end, play from the start.
                    if self.selected() == self.steps.len().checked_sub(1) {
                        self.cursor = (!self.steps.is_empty()).then_some(0);
                    }
                    Some(self.speed)
                }
            }
            Cmd::Speed => {
                if let KeyCode::Char(c) = key.code {
                    self.speed = f64::from(c.to_digit(10).unwrap_or(1));
                    self.playing = Some(self.speed);
                }
            }
            Cmd::Faster => self.set_speed(self.speed * 2.0),
            Cmd::Slower => self.set_speed(self.speed / 2.0),
            _ => {}
        }
        Vec::new()
    }

    /// The sessions the list shows, filtered and sorted: indices into `sessions`.
    pub fn visible_sessions(&self) -> Vec<usize> {
        let needle = self.filter.to_lowercase();
        let mut shown: Vec<usize> = (0..self.sessions.len())
            .filter(|&i| {
                let s = &self.sessions[i];
                needle.is_empty()
                    || [
                        s.id.as_str(),
                        s.status.as_str(),
                        s.instruction.as_str(),
                        s.model.as_deref().unwrap_or_default(),
                        s.error.as_deref().unwrap_or_default(),
                        s.task_id.as_deref().unwrap_or_default(),
                    ]
                    .iter()
                    .any(|f| f.to_lowercase().contains(&needle))
            })
            .collect();
        let s = &self.sessions;
        match self.sort {
            SessionSort::Newest => shown.sort_by_key(|&i| std::cmp::Reverse(s[i].created_at)),
            SessionSort::Status => shown.sort_by(|&a, &b| {
                s[a].status
                    .cmp(&s[b].status)
                    .then(s[b].created_at.cmp(&s[a].created_at))
            }),
            SessionSort::Task => shown.sort_by(|&a, &b| {
                s[a].instruction
                    .to_lowercase()
                    .cmp(&s[b].instruction.to_lowercase())
                    .then(s[b].created_at.cmp(&s[a].created_at))
            }),
            SessionSort::Longest => {
                shown.sort_by_key(|&i| std::cmp::Reverse(s[i].wall_ms.unwrap_or(0)))
            }
        }
        shown
    }

    /// The session under the cursor in the list.
    pub fn selected_session(&self) -> Option<&SessionRow> {
        let shown = self.visible_sessions();
        shown.get(self.session_cursor).map(|&i| &self.sessions[i])
    }

    fn browser_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if self.filtering {
            match key.code {
                KeyCode::Enter => self.filtering = false,
                KeyCode::Esc => {
                    self.filtering = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                    self.filter.push(c)
                }
                _ => {}
            }
            self.session_cursor = 0;
            return Vec::new();
        }
        if let Some(id) = self.confirm_delete.take() {
            if key.code == KeyCode::Char('y') {
                return vec![Effect::DeleteSession(id)];
            }
            self.flash = Some(format!("kept {id}"));
            return Vec::new();
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return vec![Effect::Quit];
        }
        let shown = self.visible_sessions().len();
        let Some(cmd) = keys::command(self.view(), key.code) else {
            return Vec::new();
        };
        match cmd {
            Cmd::Filter => self.filtering = true,
            Cmd::ClearFilter if !self.filter.is_empty() => {
                self.filter.clear();
                self.session_cursor = 0;
            }
            Cmd::Sort => {
                self.sort = self.sort.next();
                self.session_cursor = 0;
            }
            Cmd::Delete => {
                if let Some(s) = self.selected_session() {
                    let id = s.id.clone();
                    self.flash = Some(format!(
                        "delete session {id} and its recording? y deletes, any other key keeps it"
                    ));
                    self.confirm_delete = Some(id);
                }
            }
            Cmd::Up => self.session_cursor = self.session_cursor.saturating_sub(1),
            Cmd::Down => {
                self.session_cursor = (self.session_cursor + 1).min(shown.saturating_sub(1))
            }
            Cmd::PageDown => {
                self.session_cursor =
                    (self.session_cursor + PAGE as usize).min(shown.saturating_sub(1));
            }
            Cmd::PageUp => {
                self.session_cursor = self.session_cursor.saturating_sub(PAGE as usize);
            }
            Cmd::First => self.session_cursor = 0,
            Cmd::Last => self.session_cursor = shown.saturating_sub(1),
            Cmd::Open => {
                return self
                    .selected_session()
                    .map(|s| vec![Effect::OpenReplay(s.id.clone())])
                    .unwrap_or_default();
            }
            Cmd::Help => self.help = true,
            Cmd::Quit => return vec![Effect::Quit],
            _ => {}
        }
        Vec::new()
    }

    /// Replay playback: how long until the next step at the current speed (recorded gaps,
    /// at least 150 ms, at most 3 s at 1x), or `None` when not playing or at the end.
    pub fn next_play_delay(&self) -> Option<std::time::Duration> {
        let speed = self.playing?;
        let i = self.selected()?;
        let next = self.steps.get(i + 1)?;
        let gap = match (self.steps[i].started_at, next.started_at) {
            (Some(a), Some(b)) => (b - a).max(0) as f64,
            _ => 1000.0,
        };
        Some(std::time::Duration::from_secs_f64(
            (gap.clamp(150.0, 3000.0) / speed) / 1000.0,
        ))
    }

    /// The mouse: the wheel scrolls the timeline (or the sessions list), a click selects
    /// the row under it. `areas` is the layout the screen was drawn with.
    pub fn on_mouse(&mut self, m: MouseEvent, areas: &super::view::Areas) {
        let inside = |r: ratatui::layout::Rect| {
            m.column >= r.x && m.column < r.x + r.width && m.row >= r.y && m.row < r.y + r.height
        };
        // The first row a list shows when `selected` must be visible in `rows` rows (as
        // ratatui scrolls a list drawn from offset 0).
        let first = |selected: usize, rows: usize| (selected + 1).saturating_sub(rows.max(1));
        if self.help || self.input.is_some() || self.filtering {
            return;
        }
        match (self.screen, m.kind) {
            (Screen::Browser, MouseEventKind::ScrollDown) => {
                let shown = self.visible_sessions().len();
                if self.session_cursor + 1 < shown {
                    self.session_cursor += 1;
                }
            }
            (Screen::Browser, MouseEventKind::ScrollUp) => {
                self.session_cursor = self.session_cursor.saturating_sub(1);
            }
            (Screen::Browser, MouseEventKind::Down(MouseButton::Left)) if inside(areas.shot) => {
                // Inside the border and below the header row.
                let rows = areas.shot.height.saturating_sub(3) as usize;
                let Some(line) = (m.row as usize).checked_sub(areas.shot.y as usize + 2) else {
                    return;
                };
                let i = first(self.session_cursor, rows) + line;
                if line < rows && i < self.visible_sessions().len() {
                    self.session_cursor = i;
                }
            }
            (Screen::Live | Screen::Replay, MouseEventKind::ScrollDown) => {
                self.move_cursor(1);
            }
            (Screen::Live | Screen::Replay, MouseEventKind::ScrollUp) => {
                self.move_cursor(-1);
            }
            (Screen::Live | Screen::Replay, MouseEventKind::Down(MouseButton::Left))
                if inside(areas.timeline) =>
            {
                let rows = areas.timeline.height.saturating_sub(2) as usize;
                let Some(line) = (m.row as usize).checked_sub(areas.timeline.y as usize + 1) else {
                    return;
                };
                let i = self.selected().map_or(0, |s| first(s, rows)) + line;
                if line < rows && i < self.steps.len() {
                    self.cursor = Some(i);
                }
            }
            _ => {}
        }
    }

    /// Replay: a new speed (1/4x to 16x), kept while playing.
    fn set_speed(&mut self, speed: f64) {
        self.speed = speed.clamp(0.25, 16.0);
        if self.playing.is_some() {
            self.playing = Some(self.speed);
        }
    }

    /// Replay playback: advance one step; stops at the end.
    pub fn play_tick(&mut self) {
        self.move_cursor(1);
        if self.selected() == self.steps.len().checked_sub(1) {
            self.playing = None;
        }
    }
}
