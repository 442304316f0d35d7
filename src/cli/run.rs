//! `selfagent run`: one episode: a fresh desktop, the loop, a recording.

use crate::config::{self, FileConfig};
use crate::episode::{self, End, Hooks, Plan};
use crate::sandbox::Engine;
use crate::settings::{CommonArgs, resolve};
use crate::task::{Limits, Task};
use anyhow::bail;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

pub use crate::episode::{
    EXIT_CHECKS_FAILED, EXIT_HARNESS, EXIT_LIMIT, EXIT_NEEDS_USER, EXIT_RECORDING, EXIT_STOPPED,
};

#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 the model finished (answered, done or fail; with --task: and the \
checks passed), 1 error, 2 with --task: the checks failed, 3 step, time or cost limit reached, \
4 the harness failed (the desktop did not start or died, a setup step failed, the checks \
could not run), 5 the recording could not be written (the episode stopped), 6 a person was \
needed and none could answer (the model called for help, or its provider raised a safety check \
without --ack-safety-checks), 130 stopped (Ctrl-C, SIGTERM, SIGHUP).\n\
The API key comes from OPENAI_API_KEY (or the variable --api-key-env names, or the \
config file); it is never recorded."
)]
pub struct RunArgs {
    /// The task, in words (or give a task file with --task).
    pub instruction: Option<String>,
    /// A task file (TOML or JSON): instruction, setup steps, limits and checks; the
    /// episode is graded and the grade recorded.
    #[arg(long, value_name = "FILE", conflicts_with = "instruction")]
    pub task: Option<PathBuf>,
    /// No terminal UI: progress lines (or JSON Lines with --json) on stdout.
    #[arg(long)]
    pub headless: bool,
    /// JSON Lines events on stdout (with --headless).
    #[arg(long)]
    pub json: bool,
    /// Keep the desktop after the episode (it still stops at its TTL).
    #[arg(long)]
    pub keep: bool,
    /// Run on this running desktop (an id or a name, e.g. a persistent one from `sandbox
    /// up --name N --persist`) instead of a fresh one; it is left running.
    #[arg(long, value_name = "NAME")]
    pub desktop: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl RunArgs {
    /// Where the desktop comes from.
    fn source(&self) -> crate::episode::Source {
        match &self.desktop {
            Some(name) => crate::episode::Source::Existing(name.clone()),
            None => self.common.source(),
        }
    }

    /// The arguments of a bare `selfagent run` (environment variables still apply).
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            run: RunArgs,
        }
        <Only as clap::Parser>::parse_from(["run"]).run
    }
}

pub async fn run(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    let task = args.task.as_deref().map(Task::load).transpose()?;
    let instruction = match &task {
        Some(t) => Some(t.instruction.clone()),
        None => args.instruction.clone().filter(|s| !s.trim().is_empty()),
    };
    let file = config::load(args.common.config.as_deref())?;
    let limits = task.as_ref().map(|t| t.limits.clone()).unwrap_or_default();
    if !args.headless {
        return ui(args, file, task, instruction, &limits).await;
    }
    let Some(instruction) = instruction else {
        bail!(
            "give the task as an argument or a file: selfagent run --headless \"open a terminal and ...\" (or --task FILE)"
        );
    };
    // A recording that cannot be opened, an endpoint that is not there or refuses the key:
    // each stops us before a desktop starts.
    args.common.check_sudo(task.iter())?;
    crate::preflight::before_desktop(&mut args.common, &file).await?;
    let cfg = resolve(&args.common, &file, instruction, &limits)?;
    let engine = Engine::connect().await?;
    let db = cfg.db.clone();

    let plan = Plan {
        cfg,
        spec: args.common.spec_for(task.as_ref()),
        task,
        keep: args.keep,
        snapshot: args.common.snapshot(),
        session: None,
        calibration: None,
        driver: crate::episode::Driver::Model,
        source: args.source(),
    };
    let end = headless_episode(&engine, plan, args.json, false, None).await?;
    match &end.recording_error {
        Some(e) => eprintln!(
            "error: the recording failed, so the episode was stopped: {e}\n  what was written before is intact in {} (session {})",
            db.display(),
            end.session
        ),
        None => eprintln!("recorded session {} in {}", end.session, db.display()),
    }
    Ok(exit_code(&end))
}

/// Runs an episode without the UI: its events printed (`json`: as JSON Lines; `quiet`:
/// progress only, on stderr), SIGINT, SIGTERM and SIGHUP stopping it cleanly.
pub(super) async fn headless_episode(
    engine: &Engine,
    plan: Plan,
    json: bool,
    quiet: bool,
    on_desktop: Option<crate::episode::OnDesktop>,
) -> anyhow::Result<End> {
    let (mut hooks, control) = Hooks::new();
    hooks.on_desktop = on_desktop;
    let (printer, printed) = crate::headless::spawn_printer(json, quiet);
    hooks.sinks.push(printer);
    let signals = crate::signals::stop_episode_on_signals(control, EXIT_STOPPED);
    let end = episode::run(engine, plan, hooks).await;
    signals.abort();
    let _ = printed.await;
    end
}

/// The exit code of a finished episode (see `run --help`): the same in the TUI.
pub fn exit_code(end: &End) -> ExitCode {
    ExitCode::from(end.exit_code())
}

/// With the terminal UI (the task is asked for when not given).
async fn ui(
    mut args: RunArgs,
    file: FileConfig,
    task: Option<Task>,
    instruction: Option<String>,
    limits: &Limits,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("the terminal UI needs a terminal: add --headless to run without one");
    }
    // Before the UI asks for the task: a missing endpoint is found now, not after typing.
    args.common.check_sudo(task.iter())?;
    crate::preflight::before_desktop(&mut args.common, &file).await?;
    let cfg = resolve(
        &args.common,
        &file,
        instruction.clone().unwrap_or_default(),
        limits,
    )?;
    drop(Engine::connect().await?);
    crate::tui::live(crate::tui::LiveSetup {
        cfg,
        spec: args.common.spec_for(task.as_ref()),
        keep: args.keep,
        instruction,
        task,
        snapshot: args.common.snapshot(),
        source: args.source(),
        driver: crate::episode::Driver::Model,
    })
    .await
    .map(ExitCode::from)
}
