//! `selfagent rerun`: a recorded episode done again without its model (see `crate::rerun`).

use crate::config;
use crate::episode::{Plan, Source};
use crate::record::Db;
use crate::rerun::{OnDrift, Replay, compare};
use crate::sandbox::Engine;
use crate::settings::{CommonArgs, resolve};
use anyhow::{Context, bail};
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(
    after_help = "Each recorded step is done again once the screen looks as it did \
when that step was recorded: the share of 8×8-pixel cells whose grey level moved, over the \
screen and in the 96×96 pixels around the step's target (which may differ 2× more), at most \
--threshold. A screen that does not come to match within --wait seconds is drift.\n\n\
Exit codes: 0 every recorded step was done again (with a recorded task: and its checks \
passed), 1 error, 2 the checks failed, 4 the harness failed (the desktop did not start or died, \
a setup step failed), 5 the recording could not be written, 7 drift: the screen did not match \
and the re-run halted (--on-drift halt; nothing was done at that step), 130 stopped. With \
--on-drift model, after drift the model's episode ends it with `run`'s codes.\n\
Halting or ignoring drift needs no model: no model is called and no key is read. With \
--on-drift model, the model flags (or the config file) name the model, as for `run`."
)]
pub struct RerunArgs {
    /// The recorded session: an id or a unique prefix (see `selfagent sessions ls`).
    pub session: String,
    /// No terminal UI: progress lines (or JSON Lines with --json) on stdout.
    #[arg(long)]
    pub headless: bool,
    /// JSON Lines events on stdout (with --headless).
    #[arg(long)]
    pub json: bool,
    /// Keep the desktop afterwards (it still stops at its TTL).
    #[arg(long)]
    pub keep: bool,
    /// Re-run on this running desktop (an id or a name) instead of a fresh one made as the
    /// recorded episode had it; it is left running and the task's setup is not done again.
    #[arg(long, value_name = "NAME")]
    pub desktop: Option<String>,
    /// When the screen does not match the recording: halt (act on nothing, exit 7), model
    /// (hand the rest to the model, with the task and the recorded steps as context),
    /// ignore (act as recorded anyway).
    #[arg(long, default_value = "halt", value_name = "POLICY", value_parser = parse_on_drift)]
    pub on_drift: OnDrift,
    /// The share of the screen (0–1) that may differ from the recorded screen, e.g. a clock;
    /// twice as much may differ around the step's target.
    #[arg(long, default_value_t = compare::DEFAULT_THRESHOLD, value_name = "F")]
    pub threshold: f64,
    /// Seconds a step waits for the screen to match (its previous step's effects to show)
    /// before it is drift.
    #[arg(long, default_value_t = crate::rerun::DEFAULT_WAIT.as_secs_f64(), value_name = "SECS")]
    pub wait: f64,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_on_drift(s: &str) -> Result<OnDrift, String> {
    s.parse()
}

pub async fn run(mut args: RerunArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.threshold) {
        bail!(
            "--threshold is a share of the screen, from 0 to 1 (got {})",
            args.threshold
        );
    }
    if !(args.wait.is_finite() && args.wait > 0.0) {
        bail!("--wait must be a positive number of seconds");
    }
    let file = config::load(args.common.config.as_deref())?;
    let path = crate::settings::db_path(args.common.db.as_ref(), &file);
    if !path.exists() {
        return Err(crate::record::RecordError::Missing(path.display().to_string()).into());
    }
    let (session, replay, task) = {
        let db = Db::open(&path)?;
        let session = db.session(&args.session)?;
        if session.status == "running" {
            bail!(
                "session {} is still running: re-run it once it has ended",
                session.id
            );
        }
        let replay = Replay::load(
            &db,
            &session,
            args.on_drift,
            args.threshold,
            Duration::from_secs_f64(args.wait),
        )
        .map_err(anyhow::Error::msg)?;
        let task = match session.meta.get("task").filter(|v| !v.is_null()) {
            Some(_) => Some(crate::regrade::recorded_task(&session)?),
            None => None,
        };
        (session, replay, task)
    };
    let limits = task.as_ref().map(|t| t.limits.clone()).unwrap_or_default();
    if args.on_drift == OnDrift::Model {
        crate::preflight::endpoint(&mut args.common, &file).await?;
    } else {
        // No model is called: whatever the flags say, nothing is asked of an endpoint.
        args.common.base_url = Some("http://127.0.0.1:9/unused".into());
        args.common.model = Some(
            session
                .model
                .clone()
                .unwrap_or_else(|| "none".into())
                .replace('/', "-"),
        );
        args.common.protocol = Some("tools".into());
    }
    let mut cfg = resolve(&args.common, &file, session.instruction.clone(), &limits)?;
    if args.on_drift != OnDrift::Model {
        cfg.model.model = "none (replayed)".into();
    }
    let mut spec = args.common.spec();
    if let Some(image) = &session.image {
        spec.image = image.clone();
    }
    if let (Some(w), Some(h)) = (session.width, session.height) {
        spec.width = u32::try_from(w).context("the recorded screen width")?;
        spec.height = u32::try_from(h).context("the recorded screen height")?;
    }
    let source = match &args.desktop {
        Some(name) => Source::Existing(name.clone()),
        None => args.common.source(),
    };
    // On an existing desktop the task's setup is not done again: it is as the person left it.
    let task = match (&source, task) {
        (Source::Existing(_), Some(mut t)) => {
            t.setup.clear();
            Some(t)
        }
        (_, t) => t,
    };
    let db = cfg.db.clone();
    eprintln!(
        "re-running session {} ({} steps to do again, on drift: {})",
        session.id,
        replay.steps.len(),
        match args.on_drift {
            OnDrift::Halt => "halt",
            OnDrift::Model => "the model",
            OnDrift::Ignore => "act anyway",
        }
    );
    if !args.headless {
        use std::io::IsTerminal;
        if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
            bail!("the terminal UI needs a terminal: add --headless to re-run without one");
        }
        drop(Engine::connect().await?);
        return crate::tui::live(crate::tui::LiveSetup {
            cfg,
            spec,
            keep: args.keep,
            instruction: Some(session.instruction.clone()),
            task,
            snapshot: args.common.snapshot(),
            source,
            driver: crate::episode::Driver::Rerun(replay),
        })
        .await
        .map(ExitCode::from);
    }
    let engine = Engine::connect().await?;
    let plan = Plan {
        cfg,
        spec,
        task,
        keep: args.keep,
        snapshot: args.common.snapshot(),
        session: None,
        calibration: None,
        source,
        driver: crate::episode::Driver::Rerun(replay),
    };
    let end = super::run::headless_episode(&engine, plan, args.json, false, None).await?;
    match &end.recording_error {
        Some(e) => eprintln!(
            "error: the recording failed, so the re-run was stopped: {e}\n  what was written before is intact in {} (session {})",
            db.display(),
            end.session
        ),
        None => eprintln!(
            "recorded re-run {} of {} in {}",
            end.session,
            session.id,
            db.display()
        ),
    }
    Ok(super::run::exit_code(&end))
}
