//! One episode from start to end, the same for `run` (headless or in the TUI) and `batch`:
//! a fresh desktop, the task's setup, the loop, the task's post steps, a snapshot of the
//! final state, the checks, the recording, and the desktop's removal.
//!
//! Everything that happens is an [`Event`] on one stream, so the recording, the TUI, the
//! headless printers and the batch's progress all see the same episode. Failures of the
//! harness (the desktop does not come up, a setup step fails) are recorded as sessions that
//! ended by [`EndedBy::Harness`], never as the agent's failure.

use crate::agent::{self, Command, Emitter, EndedBy, Event, Outcome, SessionInfo, Status};
use crate::desktop::{ConnectOptions, Desktop};
use crate::model::protocol;
use crate::model::{HttpModel, redact_url};
use crate::record::{self, Recorder};
use crate::sandbox::{Engine, Sandbox, SandboxSpec};
use crate::task::check::{self, FinalState, Grade, Judge, Recorded, SandboxEvidence};
use crate::task::{SetupStep, Task, setup};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Everything an episode needs: the model's endpoint, the loop's settings, the recording
/// (made by `settings::resolve` from the file, the environment and the flags).
#[derive(Clone)]
pub struct Resolved {
    pub model: crate::model::EndpointConfig,
    pub agent: crate::agent::AgentConfig,
    pub db: std::path::PathBuf,
}

/// What to run.
pub struct Plan {
    pub cfg: Resolved,
    /// The desktop; `session`, `ttl` and `owned` are filled in here.
    pub spec: SandboxSpec,
    pub task: Option<Task>,
    /// Keep the desktop afterwards (until its TTL).
    pub keep: bool,
    /// Commit the final state to an image for re-grading (tasks with checks only), when
    /// the desktop changed at most this many bytes; `None`: never.
    pub snapshot: Option<u64>,
    /// The session id to record under (a fresh one when `None`).
    pub session: Option<String>,
    /// Calibrate instead of running the task's instruction (`task` shows the targets).
    pub calibration: Option<crate::calibrate::Calibration>,
    /// Where the desktop comes from.
    pub source: Source,
    /// Who acts: the model, a recording done again, or a person.
    pub driver: Driver,
}

/// Who acts in an episode.
#[derive(Default)]
pub enum Driver {
    /// The model, in its loop ([`agent::run`]).
    #[default]
    Model,
    /// A recording done again, the model asked only on drift (`selfagent rerun`).
    Rerun(crate::rerun::Replay),
    /// A person, through the recording proxy (`selfagent demo`).
    Demo(crate::demo::Demo),
}

impl Driver {
    /// The session's `source` (absent for the model's own episodes).
    fn source(&self) -> Option<String> {
        match self {
            Self::Model => None,
            Self::Rerun(_) => Some(crate::rerun::SOURCE.to_owned()),
            Self::Demo(_) => Some(crate::demo::SOURCE.to_owned()),
        }
    }
}

/// Where an episode's desktop comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A new desktop as `spec` says, leased from a matching warm pool when one has a desktop
    /// ready and `pool` allows it ([`crate::pool`]); removed after the episode unless kept.
    Fresh { pool: bool },
    /// A running desktop, by id or name (`run --desktop`): used as it is, left running.
    Existing(String),
}

impl Default for Source {
    fn default() -> Self {
        Self::Fresh { pool: true }
    }
}

/// Removes an episode's desktop however the episode ends, a panic included (a dropped
/// guard removes it from a thread of its own, since the runtime may be going away).
struct Release(Option<Sandbox>);

impl Release {
    /// Removes it now.
    async fn now(mut self) {
        if let Some(s) = self.0.take()
            && let Err(e) = s.kill().await
        {
            tracing::warn!("removing desktop {}: {e}", s.short_id());
        }
    }

    /// Leaves it running.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(sandbox) = self.0.take() else {
            return;
        };
        let removal = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(sandbox.kill());
            }
        });
        let _ = removal.join();
    }
}

/// The episode's desktop, from where `source` says.
async fn acquire(
    engine: &Engine,
    spec: &SandboxSpec,
    source: &Source,
) -> Result<Sandbox, crate::sandbox::SandboxError> {
    match source {
        Source::Existing(name) => engine.get(name).await,
        Source::Fresh { pool } => {
            // Pool members are ordinary desktops: one that grants sudo is always booted.
            if *pool && spec.name.is_none() && !spec.sudo {
                match crate::pool::lease(engine, spec, spec.ttl, Default::default()).await {
                    Ok(Some(sandbox)) => return Ok(sandbox),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("leasing from a warm pool: {e}"),
                }
            }
            engine.create(spec).await
        }
    }
}

/// The longest wait for the screen to be quiet before the checks run.
const FINAL_SETTLE: Duration = Duration::from_secs(5);
/// How long the windows a task's checks expect may take to show once the screen is quiet.
const WINDOW_GRACE: Duration = Duration::from_secs(3);

/// Called once with the live sandbox.
pub type OnDesktop = Box<dyn FnOnce(&Sandbox) + Send>;

/// Who else listens, and how to steer.
pub struct Hooks {
    /// More consumers of the event stream (the TUI, a printer, the batch's progress).
    pub sinks: Vec<mpsc::Sender<Arc<Event>>>,
    pub control: mpsc::Receiver<Command>,
    /// Called once the desktop is up (the TUI shows its view URL).
    pub on_desktop: Option<OnDesktop>,
}

impl Hooks {
    /// No listeners; the returned sender steers the episode.
    pub fn new() -> (Self, mpsc::Sender<Command>) {
        let (tx, rx) = mpsc::channel(64);
        (
            Self {
                sinks: Vec::new(),
                control: rx,
                on_desktop: None,
            },
            tx,
        )
    }
}

/// How it went.
#[derive(Debug, Clone)]
pub struct End {
    pub session: String,
    pub outcome: Outcome,
    pub grade: Option<Grade>,
    /// Set when the recording could not be written completely.
    pub recording_error: Option<String>,
    /// A calibration's report.
    pub calibration: Option<crate::calibrate::Report>,
}

/// Exit codes of an episode, the same for `run --headless` and the TUI (see `run --help`).
pub const EXIT_CHECKS_FAILED: u8 = 2;
pub const EXIT_LIMIT: u8 = 3;
pub const EXIT_HARNESS: u8 = 4;
pub const EXIT_RECORDING: u8 = 5;
pub const EXIT_NEEDS_USER: u8 = 6;
/// A re-run halted: the screen did not match the recording (`rerun --on-drift halt`).
pub const EXIT_DRIFT: u8 = 7;
pub const EXIT_STOPPED: u8 = 130;

impl End {
    /// The process's exit code for this end (see `run --help`).
    pub fn exit_code(&self) -> u8 {
        let o = &self.outcome;
        if o.ended_by == EndedBy::User {
            return EXIT_STOPPED;
        }
        if o.ended_by == EndedBy::Recording || self.recording_error.is_some() {
            return EXIT_RECORDING;
        }
        if o.ended_by == EndedBy::Drift {
            return EXIT_DRIFT;
        }
        if o.status == Status::NeedsUser || o.ended_by == EndedBy::Safety {
            return EXIT_NEEDS_USER;
        }
        if self.harness_error().is_some() {
            return EXIT_HARNESS;
        }
        if let Some(g) = &self.grade
            && g.passed == Some(false)
        {
            return EXIT_CHECKS_FAILED;
        }
        match (o.status, o.ended_by) {
            (Status::Succeeded, _) | (Status::Failed, EndedBy::Model) => 0,
            (_, EndedBy::StepLimit | EndedBy::TimeLimit | EndedBy::Budget) => EXIT_LIMIT,
            _ => 1,
        }
    }
}

impl End {
    /// Failed because of the harness (desktop, setup, grading), not the agent.
    pub fn harness_error(&self) -> Option<String> {
        if self.outcome.ended_by == EndedBy::Harness {
            return self.outcome.error.clone();
        }
        match &self.grade {
            Some(g) if g.passed.is_none() => Some(format!(
                "grading: {}",
                g.error
                    .as_deref()
                    .unwrap_or("the checks could not be evaluated")
            )),
            _ => None,
        }
    }
}

/// A calibration episode ([`crate::calibrate`]): `count` targets on the desktop `spec`
/// describes, each given a few model calls; never kept, never snapshotted.
pub fn calibration_plan(
    mut cfg: Resolved,
    spec: SandboxSpec,
    count: usize,
    max_error: f64,
) -> Plan {
    let calibration =
        crate::calibrate::Calibration::new(count, (spec.width, spec.height), max_error);
    let task = crate::calibrate::task(&calibration.targets);
    cfg.agent.instruction = task.instruction.clone();
    cfg.agent.max_steps = calibration.targets.len() as u32 * calibration.turns;
    Plan {
        cfg,
        spec,
        task: Some(task),
        keep: false,
        snapshot: None,
        session: None,
        calibration: Some(calibration),
        source: Source::default(),
        driver: Driver::Model,
    }
}

/// Runs one episode. Errors only when nothing could be recorded (the recording cannot be
/// opened, the model settings are unusable); everything later is in the recording.
pub async fn run(engine: &Engine, plan: Plan, hooks: Hooks) -> anyhow::Result<End> {
    let Plan {
        cfg,
        spec,
        task,
        keep,
        snapshot,
        session,
        calibration,
        source,
        driver,
    } = plan;
    // An existing desktop is someone's: never removed.
    let keep = keep || matches!(source, Source::Existing(_));
    let model = Arc::new(HttpModel::new(cfg.model.clone())?);
    let session = session.unwrap_or_else(record::new_session_id);
    let image = match &task {
        Some(t) => t.image(&spec.image),
        None => spec.image.clone(),
    };
    let spec = SandboxSpec {
        image,
        session: Some(session.clone()),
        // The desktop outlives the episode only by a margin, even if this process dies.
        ttl: cfg.agent.timeout.as_secs() + 900,
        owned: !keep,
        ..spec
    };
    let created = acquire(engine, &spec, &source).await;
    let release = Release(created.as_ref().ok().filter(|_| !keep).cloned());

    let mut emitter = Emitter::new();
    let mut secrets: Vec<String> = Vec::new();
    if let Ok(sandbox) = &created {
        secrets.extend(sandbox.secrets().values().iter().map(|s| (*s).to_owned()));
    }
    if !cfg.model.api_key.is_empty() {
        secrets.push(cfg.model.api_key.expose().to_owned());
    }
    let recorder = match Recorder::start(&cfg.db, secrets, emitter.subscribe(4096)) {
        Ok(r) => r,
        Err(e) => {
            release.now().await;
            return Err(e.into());
        }
    };
    for sink in hooks.sinks {
        emitter.add(sink);
    }
    // The loop hears the person's commands, and a recording that fails: an episode that
    // cannot be recorded stops rather than go on unrecorded.
    let control = {
        let (tx, rx) = mpsc::channel(64);
        let mut from_person = hooks.control;
        let mut failed = recorder.failure();
        tokio::spawn(async move {
            let (mut person, mut watching) = (true, true);
            while person || watching {
                tokio::select! {
                    cmd = from_person.recv(), if person => match cmd {
                        Some(c) => {
                            if tx.send(c).await.is_err() {
                                break;
                            }
                        }
                        None => person = false,
                    },
                    changed = failed.changed(), if watching => {
                        let gone = changed.is_err();
                        let reason = if gone { None } else { failed.borrow().clone() };
                        if let Some(r) = reason {
                            let _ = tx.send(Command::Abort(format!("the recording failed: {r}"))).await;
                            watching = false;
                        } else if gone {
                            watching = false;
                        }
                    }
                }
            }
        });
        rx
    };
    // Screenshots for a judge, if the task has one.
    let frames: Arc<Mutex<Vec<Arc<Vec<u8>>>>> = Arc::default();
    let collector = {
        let mut rx = emitter.subscribe(4096);
        let frames = frames.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let png = match &*e {
                    Event::Observation { step: 1, frame } => frame.png.clone(),
                    Event::StepFinished { frame, .. } => frame.png.clone(),
                    _ => continue,
                };
                if let Ok(mut f) = frames.lock() {
                    f.push(png);
                }
            }
        })
    };

    let info = |sandbox: &str, (w, h): (u32, u32)| {
        let geometry = protocol::geometry(&cfg.agent.protocol, (w, h));
        SessionInfo {
            session: session.clone(),
            sandbox: sandbox.to_owned(),
            instruction: cfg.agent.instruction.clone(),
            task_id: task.as_ref().map(|t| t.id.clone()),
            model: cfg.model.model.clone(),
            base_url: redact_url(&cfg.model.base_url),
            protocol: cfg.agent.protocol.name.to_string(),
            coords: cfg.agent.protocol.space.to_string(),
            image: spec.image.clone(),
            engine: engine.url().to_owned(),
            width: w,
            height: h,
            sent_width: geometry.sent.0,
            sent_height: geometry.sent.1,
            max_steps: cfg.agent.max_steps,
            timeout_s: cfg.agent.timeout.as_secs_f64(),
            task: task.as_ref().and_then(|t| serde_json::to_value(t).ok()),
            price: cfg.agent.price.clone(),
            source: driver.source(),
            rerun_of: match &driver {
                Driver::Rerun(r) => Some(r.of.clone()),
                _ => None,
            },
        }
    };

    let (outcome, grade, report) = match created {
        Err(e) => {
            emitter
                .emit(Event::SessionStarted(info("", (spec.width, spec.height))))
                .await;
            let outcome =
                harness_outcome(format!("the desktop did not start: {e}"), Instant::now());
            emitter.emit(Event::Finished(outcome.clone())).await;
            (outcome, None, None)
        }
        Ok(sandbox) => {
            let result = with_desktop(
                &sandbox,
                &cfg,
                task.as_ref(),
                calibration.as_ref(),
                &driver,
                snapshot,
                &session,
                &model,
                &frames,
                &emitter,
                control,
                hooks.on_desktop,
                &info,
            )
            .await;
            if keep {
                if matches!(source, Source::Fresh { .. }) {
                    eprintln!(
                        "kept desktop {} (until its TTL; `selfagent sandbox down {}` removes it)",
                        sandbox.short_id(),
                        sandbox.short_id()
                    );
                }
                release.keep();
            } else {
                release.now().await;
            }
            result
        }
    };
    drop(emitter);
    let _ = collector.await;
    let stats = recorder.finish().await;
    Ok(End {
        session,
        outcome,
        grade,
        recording_error: stats.error,
        calibration: report,
    })
}

fn harness_outcome(error: String, started: Instant) -> Outcome {
    Outcome::failed(
        EndedBy::Harness,
        error,
        started.elapsed().as_millis() as u64,
    )
}

#[allow(clippy::too_many_arguments)]
async fn with_desktop(
    sandbox: &Sandbox,
    cfg: &Resolved,
    task: Option<&Task>,
    calibration: Option<&crate::calibrate::Calibration>,
    driver: &Driver,
    snapshot: Option<u64>,
    session: &str,
    model: &Arc<HttpModel>,
    frames: &Arc<Mutex<Vec<Arc<Vec<u8>>>>>,
    emitter: &Emitter,
    control: mpsc::Receiver<Command>,
    on_desktop: Option<OnDesktop>,
    info: &(dyn Fn(&str, (u32, u32)) -> SessionInfo + Sync),
) -> (Outcome, Option<Grade>, Option<crate::calibrate::Report>) {
    let started = Instant::now();
    let desktop = match Desktop::connect(sandbox.clone(), ConnectOptions::default()).await {
        Ok(d) => d,
        Err(e) => {
            emitter
                .emit(Event::SessionStarted(info(sandbox.id(), sandbox.size())))
                .await;
            let outcome = harness_outcome(format!("the desktop did not start: {e}"), started);
            emitter.emit(Event::Finished(outcome.clone())).await;
            return (outcome, None, None);
        }
    };
    let drawn = desktop.wait_drawn(Duration::from_secs(15)).await;
    if let Some(f) = on_desktop {
        f(sandbox);
    }
    emitter
        .emit(Event::SessionStarted(info(sandbox.id(), desktop.size())))
        .await;
    if let Err(e) = drawn {
        let outcome = harness_outcome(format!("the desktop did not start: {e}"), started);
        emitter.emit(Event::Finished(outcome.clone())).await;
        return (outcome, None, None);
    }
    if let Some(task) = task
        && !task.setup.is_empty()
    {
        let setup_started = Instant::now();
        if let Err(e) = run_steps(&desktop, "setup", &task.setup, emitter).await {
            let outcome = harness_outcome(e, started);
            emitter.emit(Event::Finished(outcome.clone())).await;
            return (outcome, None, None);
        }
        setup::settle_after(&desktop, setup_started, Duration::from_secs(5)).await;
    }

    if let Some(calibration) = calibration {
        let (outcome, report) = crate::calibrate::drive(
            calibration,
            &cfg.agent,
            &desktop,
            model.as_ref(),
            emitter,
            control,
        )
        .await;
        return (outcome, None, report);
    }
    let outcome = match driver {
        Driver::Rerun(replay) => {
            crate::rerun::drive(
                replay,
                &cfg.agent,
                &desktop,
                model.as_ref(),
                emitter,
                control,
            )
            .await
        }
        Driver::Demo(demo) => {
            crate::demo::drive(demo, &desktop, emitter, until_stopped(control)).await
        }
        Driver::Model => agent::run(&cfg.agent, &desktop, model.as_ref(), emitter, control).await,
    };

    let Some((task, check)) = task.and_then(|t| t.check.as_ref().map(|c| (t, c))) else {
        return (outcome, None, None);
    };
    // The last action's effects may still be under way (a save, a page load, a rename):
    // the checks see the desktop once it has been quiet for a moment.
    setup::settle_after(&desktop, Instant::now(), FINAL_SETTLE).await;
    let grade = if let Err(e) = run_steps(&desktop, "post", &task.post, emitter).await {
        let g = Grade::error(&task.id, "live", e);
        emitter
            .emit(Event::Graded {
                grade: g.clone(),
                state: None,
            })
            .await;
        g
    } else {
        // The snapshot first: it is the state the agent left, before any check touched it.
        let (image, skipped) = match snapshot {
            Some(limit) => match take_snapshot(sandbox, session, &task.id, limit).await {
                Ok(image) => (Some(image), None),
                Err(why) => (None, Some(why)),
            },
            None => (None, None),
        };
        let judge = check.asks_a_judge().then(|| Judge {
            model: model.clone(),
            protocol: cfg.agent.protocol.name,
            instruction: task.instruction.clone(),
            frames: frames.lock().map(|f| f.clone()).unwrap_or_default(),
            prompts: cfg.agent.protocol.prompts.clone(),
        });
        // A window's title follows its content on its own time (a browser retitles the page
        // after painting it): windows the checks expect get up to WINDOW_GRACE to show, on
        // X11's property changes. One still missing then fails the check as before.
        let expected = check::expected_windows(check);
        if !expected.is_empty() {
            let _ = desktop
                .wait_windows(WINDOW_GRACE, "the windows the checks expect", |windows| {
                    expected
                        .iter()
                        .all(|(t, c)| windows.iter().any(|w| check::window_matches(*t, *c, w)))
                        .then_some(())
                })
                .await;
        }
        let evidence = Recorded::new(SandboxEvidence {
            sandbox: sandbox.clone(),
            windows: desktop.windows().await.map_err(|e| e.to_string()),
            judge,
            inspector: false,
            gave_up: Some(
                outcome.ended_by == agent::EndedBy::Model
                    && check::agent_gave_up(outcome.status.as_str(), outcome.answer.as_deref()),
            ),
        });
        let g = check::grade(&task.id, check, &evidence, "live").await;
        let state = FinalState {
            snapshot: image,
            snapshot_skipped: skipped,
            ..evidence.into_state()
        };
        emitter
            .emit(Event::Graded {
                grade: g.clone(),
                state: Some(state),
            })
            .await;
        g
    };
    (outcome, Some(grade), None)
}

/// A person's episode ends on `Stop` (Ctrl-C, `q`) or when nobody can send one any more;
/// `Abort` (the recording failed) ends it with the reason. Pausing means nothing to it.
fn until_stopped(mut control: mpsc::Receiver<Command>) -> crate::demo::Stop<'static> {
    Box::pin(async move {
        loop {
            match control.recv().await {
                Some(Command::Stop) | None => return None,
                Some(Command::Abort(why)) => return Some(why),
                Some(_) => {}
            }
        }
    })
}

/// Commits the final state, unless the desktop changed more than `limit` bytes (an agent can
/// fill its disk, or make a sparse file of any size, which a commit would store in full).
async fn take_snapshot(
    sandbox: &Sandbox,
    session: &str,
    task: &str,
    limit: u64,
) -> Result<String, String> {
    let changed = sandbox
        .changed_bytes()
        .await
        .map_err(|e| format!("the desktop's changes could not be measured: {e}"))?;
    if changed > limit {
        return Err(format!(
            "the desktop changed {changed} bytes, more than the snapshot limit of {limit} (--snapshot-max-size)"
        ));
    }
    sandbox
        .commit_snapshot(session, Some(task))
        .await
        .map_err(|e| format!("committing the snapshot failed: {e}"))
}

/// Runs steps in order, reporting each; stops at the first failure.
async fn run_steps(
    desktop: &Desktop,
    phase: &str,
    steps: &[SetupStep],
    emitter: &Emitter,
) -> Result<(), String> {
    for (i, step) in steps.iter().enumerate() {
        let t = Instant::now();
        let result = setup::run_step(desktop, step).await;
        let error = result.as_ref().err().map(ToString::to_string);
        emitter
            .emit(Event::Setup {
                phase: phase.to_owned(),
                index: i + 1,
                total: steps.len(),
                step: step.describe(),
                ms: t.elapsed().as_secs_f64() * 1000.0,
                error: error.clone(),
            })
            .await;
        if let Some(e) = error {
            return Err(format!(
                "{phase} step {} of {} ({}) failed: {e}",
                i + 1,
                steps.len(),
                step.describe()
            ));
        }
    }
    Ok(())
}
