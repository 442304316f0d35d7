//! `selfagent demo`: a person does the task on a desktop and every gesture is recorded as a
//! step (see `crate::demo`).

use crate::config;
use crate::demo::Demo;
use crate::episode::{Driver, Plan, Source};
use crate::sandbox::Engine;
use crate::settings::{CommonArgs, resolve};
use crate::task::Task;
use anyhow::{Context, bail};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(
    after_help = "Connect any VNC client to the printed address with the printed \
password (or open the printed browser view): everything done through it is recorded, each \
click, double or triple click, drag, scroll, key combination and run of typed text one step \
with the screen before and after. Input that does not pass through the proxy (the desktop's \
own view URL, `sandbox act`) is not recorded.\n\n\
With --json the first line on stdout is {\"session\", \"sandbox\", \"vnc\", \"vnc_password\", \
\"view_url\"}; the recorded steps follow as JSON Lines.\n\n\
Exit codes: 0 recorded (with --task: and its checks passed), 1 error, 2 the checks failed, 4 \
the harness failed (the desktop did not start or died, a setup step failed), 5 the recording \
could not be written. Ctrl-C (or q in the terminal UI) ends the demonstration."
)]
pub struct DemoArgs {
    /// What the demonstration does, in words (or a task file with --task).
    pub instruction: Option<String>,
    /// A task file: its setup is done first, its checks grade the demonstration.
    #[arg(long, value_name = "FILE", conflicts_with = "instruction")]
    pub task: Option<PathBuf>,
    /// No terminal UI: progress lines (or JSON Lines with --json) on stdout.
    #[arg(long)]
    pub headless: bool,
    /// The connection details, then JSON Lines events, on stdout (with --headless).
    #[arg(long)]
    pub json: bool,
    /// Where the recording proxy listens (loopback by default; it asks for its password
    /// wherever it listens).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// End when the last VNC client disconnects (after one has connected).
    #[arg(long)]
    pub until_disconnect: bool,
    /// Keep the desktop afterwards (it still stops at its TTL).
    #[arg(long)]
    pub keep: bool,
    /// Demonstrate on this running desktop (an id or a name) instead of a fresh one; it is
    /// left running.
    #[arg(long, value_name = "NAME")]
    pub desktop: Option<String>,
    /// Seconds the desktop lives at most (a fresh one is removed at the end anyway).
    #[arg(long, default_value_t = 4.0 * 3600.0, value_name = "SECS")]
    pub max_time: f64,
    /// The recording (SQLite).
    #[arg(long, env = "SELFAGENT_DB")]
    pub db: Option<PathBuf>,
    /// The configuration file (default: ~/.config/selfagent/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Screen width in pixels (default: the task's `screen`, else 1280).
    #[arg(long)]
    pub width: Option<u32>,
    /// Screen height in pixels (default: the task's `screen`, else 800).
    #[arg(long)]
    pub height: Option<u32>,
    /// The desktop image (see `selfagent sandbox build`); a task may name its own.
    #[arg(long, default_value = crate::sandbox::DEFAULT_IMAGE)]
    pub image: String,
    /// Boot a desktop of our own even when a warm pool has a matching one ready.
    #[arg(long)]
    pub no_pool: bool,
    /// Do not commit the final state of a graded demonstration to an image.
    #[arg(long)]
    pub no_snapshot: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let task = args.task.as_deref().map(Task::load).transpose()?;
    let instruction = match &task {
        Some(t) => t.instruction.clone(),
        None => match args.instruction.clone().filter(|s| !s.trim().is_empty()) {
            Some(i) => i,
            None => bail!(
                "say what the demonstration does: selfagent demo \"rename the file to ...\" (or --task FILE)"
            ),
        },
    };
    if !(args.max_time.is_finite() && args.max_time > 0.0) {
        bail!("--max-time must be a positive number of seconds");
    }
    let file = config::load(args.config.as_deref())?;
    // Nobody is asked anything: the settings a model would need are placeholders.
    let mut common = CommonArgs::defaults();
    common.base_url = Some("http://127.0.0.1:9/unused".into());
    common.model = Some("human".into());
    common.protocol = Some("tools".into());
    common.timeout = Some(args.max_time);
    common.db = args.db.clone();
    common.config = args.config.clone();
    common.width = args.width;
    common.height = args.height;
    common.image = args.image.clone();
    common.no_pool = args.no_pool;
    common.no_snapshot = args.no_snapshot;
    // A person, not an untrusted agent, drives a demonstration: a task that needs sudo gets
    // the desktop that grants it.
    common.allow_sudo = true;
    let limits = task.as_ref().map(|t| t.limits.clone()).unwrap_or_default();
    let mut cfg = resolve(&common, &file, instruction.clone(), &limits)?;
    cfg.model.model = "human".into();
    cfg.agent.timeout = std::time::Duration::from_secs_f64(args.max_time);
    crate::record::Db::open(&cfg.db)
        .with_context(|| format!("opening the recording {}", cfg.db.display()))?;
    let demo = Demo::bind(args.listen, args.until_disconnect)
        .await
        .with_context(|| format!("listening at {}", args.listen))?;
    let link = demo.link();
    let source = match &args.desktop {
        Some(name) => Source::Existing(name.clone()),
        None => common.source(),
    };
    let session = crate::record::new_session_id();
    let plan = Plan {
        cfg,
        spec: common.spec_for(task.as_ref()),
        task,
        keep: args.keep,
        snapshot: common.snapshot(),
        session: Some(session.clone()),
        calibration: None,
        source,
        driver: Driver::Demo(demo),
    };
    if !args.headless {
        use std::io::IsTerminal;
        if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
            bail!("the terminal UI needs a terminal: add --headless to demonstrate without one");
        }
        drop(Engine::connect().await?);
        return crate::tui::live(crate::tui::LiveSetup {
            cfg: plan.cfg,
            spec: plan.spec,
            keep: plan.keep,
            instruction: Some(instruction),
            task: plan.task,
            snapshot: plan.snapshot,
            source: plan.source,
            driver: plan.driver,
        })
        .await
        .map(ExitCode::from);
    }
    let engine = Engine::connect().await?;
    let db = plan.cfg.db.clone();
    let json = args.json;
    let on_desktop: crate::episode::OnDesktop = Box::new(move |sandbox| {
        // The first line: how to reach it. Printed before the session's first event.
        let view_url = link.view_url(sandbox);
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "session": session,
                    "sandbox": sandbox.id(),
                    "vnc": link.addr.to_string(),
                    "vnc_password": link.password,
                    "view_url": view_url,
                })
            );
        } else {
            println!("demonstration {session} on desktop {}", sandbox.short_id());
            println!("  VNC: {}  password {}", link.addr, link.password);
            if let Some(url) = view_url {
                println!("  browser: {url}");
            }
            println!("  Ctrl-C ends it");
        }
    });
    let end = super::run::headless_episode(&engine, plan, json, false, Some(on_desktop)).await?;
    match &end.recording_error {
        Some(e) => eprintln!(
            "error: the recording failed: {e}\n  what was written before is intact in {} (session {})",
            db.display(),
            end.session
        ),
        None => eprintln!(
            "recorded demonstration {} ({} steps) in {}",
            end.session,
            end.outcome.steps,
            db.display()
        ),
    }
    Ok(super::run::exit_code(&end))
}
