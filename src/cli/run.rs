//! `selfagent run`: one episode: a fresh desktop, the loop, a recording.

use crate::agent::model::{OpenAiConfig, Secret, redact_url};
use crate::agent::protocol::Target;
use crate::agent::{self, AgentConfig, EndedBy, Event, Status};
use crate::config::{self, FileConfig};
use crate::episode::{self, End, Hooks, Plan};
use crate::headless::{EventPrinter, Human, JsonLines};
use crate::record::{self, Db};
use crate::sandbox::{Engine, Network, SandboxSpec};
use crate::task::{Limits, Task};
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Exit codes of `run`.
pub const EXIT_CHECKS_FAILED: u8 = 2;
pub const EXIT_LIMIT: u8 = 3;
pub const EXIT_HARNESS: u8 = 4;
pub const EXIT_STOPPED: u8 = 130;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 the model finished (answered, done or fail; with --task: and the \
checks passed), 1 error, 2 with --task: the checks failed, 3 step or time limit reached, \
4 the harness failed (the desktop did not start, a setup step failed, the checks could not \
run), 130 stopped with Ctrl-C.\n\
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
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Settings shared by `run` and `batch`: the model, the loop, the desktop, the recording.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// OpenAI-compatible endpoint, up to /v1.
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub base_url: Option<String>,
    #[arg(long, env = "SELFAGENT_MODEL")]
    pub model: Option<String>,
    /// Read the API key from this environment variable instead of OPENAI_API_KEY.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Steps per episode (beats a task's limit).
    #[arg(long)]
    pub max_steps: Option<u32>,
    /// Seconds per episode (beats a task's limit).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Seconds for one model call.
    #[arg(long)]
    pub model_timeout: Option<f64>,
    /// Retries of a model call on 429, 5xx, timeouts and unusable replies.
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Screenshot size sent to the model: native, xga (1024x768), wxga (1280x800), or a
    /// longest side in pixels; coordinates are mapped back.
    #[arg(long)]
    pub scale: Option<String>,
    /// Screenshots kept as images in each request (older ones become a note).
    #[arg(long)]
    pub keep_images: Option<usize>,
    /// Put screenshots in tool messages (servers that accept it) instead of user messages.
    #[arg(long)]
    pub image_in_tool: bool,
    /// Offer launch, open and exec to the model.
    #[arg(long)]
    pub allow_setup_actions: bool,
    /// JSON object merged into every request, e.g. '{"temperature":0,"max_tokens":512}'.
    #[arg(long, value_name = "JSON")]
    pub extra: Option<String>,
    /// A directory of prompts overriding the embedded ones (see prompts/README.md).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// The recording (SQLite).
    #[arg(long, env = "SELFAGENT_DB")]
    pub db: Option<PathBuf>,
    /// Do not commit the final state of graded episodes to an image (re-grading then uses
    /// only what the checks read at the end).
    #[arg(long)]
    pub no_snapshot: bool,
    /// Skip the final-state snapshot (and record why) when the desktop changed more than
    /// this (apparent sizes: a sparse file counts in full).
    #[arg(long, default_value = "1g", value_parser = crate::cli::parse_size)]
    pub snapshot_max_size: i64,
    /// The configuration file (default: ~/.config/selfagent/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, default_value_t = 1280)]
    pub width: u32,
    #[arg(long, default_value_t = 800)]
    pub height: u32,
    #[arg(long, default_value = crate::sandbox::DEFAULT_IMAGE)]
    pub image: String,
    /// Run the desktop with no network at all.
    #[arg(long)]
    pub no_network: bool,
}

impl CommonArgs {
    /// The snapshot limit of graded episodes, `None` with --no-snapshot.
    pub fn snapshot(&self) -> Option<u64> {
        (!self.no_snapshot).then_some(self.snapshot_max_size as u64)
    }

    /// The desktop these settings ask for.
    pub fn spec(&self) -> SandboxSpec {
        SandboxSpec {
            image: self.image.clone(),
            width: self.width,
            height: self.height,
            network: if self.no_network {
                Network::None
            } else {
                Network::Bridge
            },
            ..SandboxSpec::default()
        }
    }
}

impl RunArgs {
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

/// Everything `run` needs, with file < env < flags applied.
#[derive(Clone)]
pub struct Resolved {
    pub model: OpenAiConfig,
    pub agent: AgentConfig,
    pub db: PathBuf,
}

fn seconds(v: Option<f64>, default: f64, what: &str) -> anyhow::Result<Duration> {
    let s = v.unwrap_or(default);
    if !(s.is_finite() && s > 0.0) {
        bail!("{what} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// The model endpoint from flags, then the file (also the judge's, for `grade`).
pub fn model_config(args: &CommonArgs, file: &FileConfig) -> anyhow::Result<OpenAiConfig> {
    let base_url = args
        .base_url
        .clone()
        .or_else(|| file.base_url.clone())
        .context("no model endpoint: pass --base-url, set OPENAI_BASE_URL, or put base_url in the config file")?;
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        bail!(
            "--base-url must start with http:// or https://, got '{}'",
            redact_url(&base_url)
        );
    }
    let key_var = args
        .api_key_env
        .clone()
        .or_else(|| file.api_key_env.clone());
    let api_key = match &key_var {
        Some(var) => {
            std::env::var(var).with_context(|| format!("the API key variable {var} is not set"))?
        }
        None => std::env::var("OPENAI_API_KEY")
            .ok()
            .or_else(|| file.api_key.clone())
            .unwrap_or_default(),
    };
    let mut extra = file
        .extra
        .as_ref()
        .map(config::toml_to_json)
        .unwrap_or_default();
    if let Some(text) = &args.extra {
        let v: serde_json::Value =
            serde_json::from_str(text).context("--extra is not valid JSON")?;
        let Some(obj) = v.as_object() else {
            bail!("--extra must be a JSON object");
        };
        extra.extend(obj.clone());
    }
    Ok(OpenAiConfig {
        base_url,
        model: args
            .model
            .clone()
            .or_else(|| file.model.clone())
            .unwrap_or_else(|| "default".into()),
        api_key: Secret::new(api_key),
        timeout: seconds(
            args.model_timeout.or(file.model_timeout),
            120.0,
            "--model-timeout",
        )?,
        max_retries: args.max_retries.or(file.max_retries).unwrap_or(5),
        extra,
    })
}

/// Settings from flags, then a task's limits, then the file, then defaults.
pub fn resolve(
    args: &CommonArgs,
    file: &FileConfig,
    instruction: String,
    limits: &Limits,
) -> anyhow::Result<Resolved> {
    let model = model_config(args, file)?;
    let target: Target = match args.scale.clone().or_else(|| file.scale.clone()) {
        Some(s) => s.parse().map_err(anyhow::Error::msg)?,
        None => Target::Native,
    };
    let max_steps = args
        .max_steps
        .or(limits.max_steps)
        .or(file.max_steps)
        .unwrap_or(50);
    if max_steps == 0 {
        bail!("--max-steps must be at least 1");
    }
    Ok(Resolved {
        model,
        agent: AgentConfig {
            instruction,
            max_steps,
            timeout: seconds(
                args.timeout.or(limits.timeout).or(file.timeout),
                1800.0,
                "--timeout",
            )?,
            target,
            keep_images: args.keep_images.or(file.keep_images).unwrap_or(3),
            image_in_tool: args.image_in_tool || file.image_in_tool.unwrap_or(false),
            allow_setup_actions: args.allow_setup_actions,
            prompts: args.prompts.clone().or_else(|| file.prompts.clone()),
            ..AgentConfig::default()
        },
        db: db_path(args.db.as_ref(), file),
    })
}

/// The recording: the flag (or SELFAGENT_DB), the file, the default.
pub fn db_path(flag: Option<&PathBuf>, file: &FileConfig) -> PathBuf {
    flag.cloned()
        .or_else(|| file.db.clone())
        .unwrap_or_else(|| PathBuf::from(record::DEFAULT_DB))
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
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
    let cfg = resolve(&args.common, &file, instruction, &limits)?;
    // A recording that cannot be opened stops us before a desktop starts.
    drop(Db::open(&cfg.db)?);
    let engine = Engine::connect().await?;
    let db = cfg.db.clone();

    let (mut hooks, control) = Hooks::new();
    let (printer_tx, mut printer_rx) = tokio::sync::mpsc::channel::<Arc<Event>>(4096);
    hooks.sinks.push(printer_tx);
    let json = args.json;
    let printer_task = tokio::spawn(async move {
        let mut printer: Option<Box<dyn EventPrinter>> = None;
        while let Some(event) = printer_rx.recv().await {
            let p = printer.get_or_insert_with(|| match (&*event, json) {
                (Event::SessionStarted(s), true) => {
                    Box::new(JsonLines::new(&s.session, &s.sandbox)) as Box<dyn EventPrinter>
                }
                (_, true) => Box::new(JsonLines::new("", "")),
                (_, false) => Box::new(Human),
            });
            let mut out = std::io::stdout().lock();
            let _ = p.print(&event, &mut out);
        }
    });
    let signals = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping after the current action (Ctrl-C again to quit at once)");
            let _ = control.send(agent::Command::Stop).await;
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(EXIT_STOPPED));
            }
        }
    });
    let plan = Plan {
        cfg,
        spec: args.common.spec(),
        task,
        keep: args.keep,
        snapshot: args.common.snapshot(),
        session: None,
    };
    let end = episode::run(&engine, plan, hooks).await;
    signals.abort();
    let _ = printer_task.await;
    let end = end?;
    if let Some(e) = &end.recording_error {
        eprintln!("warning: the recording stopped early: {e}");
    }
    eprintln!("recorded session {} in {}", end.session, db.display());
    Ok(exit_code(&end))
}

/// The exit code of a finished episode (see `run --help`).
pub fn exit_code(end: &End) -> ExitCode {
    let o = &end.outcome;
    if o.ended_by == EndedBy::User {
        return ExitCode::from(EXIT_STOPPED);
    }
    if end.harness_error().is_some() {
        return ExitCode::from(EXIT_HARNESS);
    }
    if let Some(g) = &end.grade
        && g.passed == Some(false)
    {
        return ExitCode::from(EXIT_CHECKS_FAILED);
    }
    match (o.status, o.ended_by) {
        (Status::Succeeded, _) | (Status::Failed, EndedBy::Model) => ExitCode::SUCCESS,
        (_, EndedBy::StepLimit | EndedBy::TimeLimit) => ExitCode::from(EXIT_LIMIT),
        _ => ExitCode::FAILURE,
    }
}

/// With the terminal UI (the task is asked for when not given).
async fn ui(
    args: RunArgs,
    file: FileConfig,
    task: Option<Task>,
    instruction: Option<String>,
    limits: &Limits,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("the terminal UI needs a terminal: add --headless to run without one");
    }
    let cfg = resolve(
        &args.common,
        &file,
        instruction.clone().unwrap_or_default(),
        limits,
    )?;
    drop(Db::open(&cfg.db)?);
    drop(Engine::connect().await?);
    crate::tui::live(crate::tui::LiveSetup {
        cfg,
        spec: args.common.spec(),
        keep: args.keep,
        instruction,
        task,
        snapshot: args.common.snapshot(),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(list: &[&str]) -> RunArgs {
        Wrap::parse_from(std::iter::once("run").chain(list.iter().copied())).run
    }

    #[test]
    fn flags_beat_the_file_and_defaults_fill_in() {
        let file = config::parse("base_url = \"http://file/v1\"\nmodel = \"file-model\"\nmax_steps = 9\n[extra]\ntemperature = 1.0\n").unwrap();
        let a = args(&[
            "--base-url",
            "http://flag/v1",
            "--extra",
            "{\"top_p\":0.5}",
            "--scale",
            "xga",
            "task",
        ]);
        let r = resolve(&a.common, &file, "task".into(), &Limits::default()).unwrap();
        assert_eq!(r.model.base_url, "http://flag/v1");
        assert_eq!(r.model.model, "file-model");
        assert_eq!(r.agent.max_steps, 9);
        assert_eq!(r.agent.target, Target::Xga);
        assert_eq!(
            (
                r.model.extra["temperature"].as_f64(),
                r.model.extra["top_p"].as_f64()
            ),
            (Some(1.0), Some(0.5))
        );
        assert_eq!(r.db, PathBuf::from(record::DEFAULT_DB));
    }

    #[test]
    fn a_tasks_limits_beat_the_file_but_not_the_flags() {
        let file =
            config::parse("base_url = \"http://file/v1\"\nmax_steps = 9\ntimeout = 99\n").unwrap();
        let limits = Limits {
            max_steps: Some(4),
            timeout: Some(30.0),
        };
        let r = resolve(&args(&[]).common, &file, "t".into(), &limits).unwrap();
        assert_eq!((r.agent.max_steps, r.agent.timeout.as_secs()), (4, 30));
        let r = resolve(
            &args(&["--max-steps", "7"]).common,
            &file,
            "t".into(),
            &limits,
        )
        .unwrap();
        assert_eq!((r.agent.max_steps, r.agent.timeout.as_secs()), (7, 30));
    }

    #[test]
    fn bad_settings_are_explained() {
        let none = FileConfig::default();
        for (list, needle) in [
            (vec!["--base-url", "ftp://x"], "must start with http"),
            (
                vec!["--base-url", "http://x", "--extra", "[1]"],
                "JSON object",
            ),
            (
                vec!["--base-url", "http://x", "--scale", "huge"],
                "not a target size",
            ),
            (
                vec!["--base-url", "http://x", "--max-steps", "0"],
                "at least 1",
            ),
            (vec!["--base-url", "http://x", "--timeout=-1"], "positive"),
        ] {
            let e = resolve(&args(&list).common, &none, "t".into(), &Limits::default())
                .err()
                .expect("an error")
                .to_string();
            assert!(e.contains(needle), "{list:?}: {e}");
        }
    }
}
