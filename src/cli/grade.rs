//! `selfagent grade`: grade recorded episodes again with new or fixed checks, without the
//! agent. The new grade joins the session's history; `sessions show` lists them all.

use super::sessions::DbArg;
use crate::config;
use crate::record::{Db, SessionRow};
use crate::regrade::{self, Graders, Regraded};
use crate::sandbox::Engine;
use crate::settings::{CommonArgs, db_path, judge_model};
use crate::task::{self, Task};
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(
    after_help = "Commands and files are read from the session's final-state snapshot \
image when it exists (an inspector container with no network is started from it), else \
from what the checks read when the episode ended; a check that needs something neither has \
is an error of that check, not a failure.\n\
Exit codes: 0 every session graded and passed, 2 some failed, 4 some could not be graded."
)]
pub struct GradeArgs {
    /// Session ids or unique prefixes.
    #[arg(required_unless_present = "all")]
    pub sessions: Vec<String>,
    /// Every session that ran a task (with --task: a task among those files).
    #[arg(long, conflicts_with = "sessions")]
    pub all: bool,
    /// Task files or directories whose checks to use (matched to sessions by task id);
    /// without: each session's recorded task.
    #[arg(long, value_name = "FILE")]
    pub task: Vec<PathBuf>,
    /// Only the recorded state, no snapshot images (no Docker needed).
    #[arg(long)]
    pub no_snapshot: bool,
    /// JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArg,
    /// The judge's endpoint, for checks that ask one.
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub base_url: Option<String>,
    /// The judge model.
    #[arg(long, env = "SELFAGENT_MODEL")]
    pub model: Option<String>,
    /// Read the judge's API key from this environment variable instead of OPENAI_API_KEY.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// The judge's protocol (chosen from the model id when not given).
    #[arg(long, value_name = "NAME")]
    pub protocol: Option<String>,
    /// The configuration file (default: ~/.config/selfagent/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn line(r: &Regraded) -> String {
    let before = r
        .before
        .as_ref()
        .map(|g| g.summary())
        .unwrap_or_else(|| "not graded".into());
    let mut s = format!(
        "{}  {}  {} -> {}  [{}]",
        r.session,
        r.task_id,
        before,
        r.after.summary(),
        r.after.evidence
    );
    for l in r.after.result.iter().flat_map(|x| x.leaves()) {
        s.push_str(&format!(
            "\n    {} {}: {}",
            l.verdict.mark(),
            l.check,
            crate::task::check::excerpt(&l.detail)
        ));
    }
    s
}

pub async fn run(args: GradeArgs) -> anyhow::Result<ExitCode> {
    let file = config::load(args.config.as_deref())?;
    let path = db_path(Some(&args.db.db), &file);
    if !path.exists() {
        return Err(crate::record::RecordError::Missing(path.display().to_string()).into());
    }
    let db = Db::open(&path)?;
    let tasks: Vec<Task> = if args.task.is_empty() {
        Vec::new()
    } else {
        task::load_all(&args.task)?
    };
    let sessions: Vec<SessionRow> = if args.all {
        let all = db.task_sessions()?;
        all.into_iter()
            .filter(|s| s.status != "running")
            .filter(|s| {
                tasks.is_empty() || tasks.iter().any(|t| s.task_id.as_deref() == Some(&t.id))
            })
            .collect()
    } else {
        args.sessions
            .iter()
            .map(|id| db.session(id).map_err(anyhow::Error::from))
            .collect::<anyhow::Result<_>>()?
    };
    if sessions.is_empty() {
        bail!("no recorded task sessions to grade");
    }
    // The task of each session, before anything is graded.
    let mut plan: Vec<(SessionRow, Task)> = Vec::new();
    for s in sessions {
        let t = if tasks.is_empty() {
            regrade::recorded_task(&s)?
        } else if tasks.len() == 1 && !args.all {
            tasks[0].clone()
        } else {
            tasks
                .iter()
                .find(|t| s.task_id.as_deref() == Some(&t.id))
                .cloned()
                .with_context(|| {
                    format!(
                        "session {} ran task {}, which none of the --task files defines",
                        s.id,
                        s.task_id.as_deref().unwrap_or("(none)")
                    )
                })?
        };
        plan.push((s, t));
    }
    let needs_judge = plan.iter().any(|(_, t)| {
        t.check
            .as_ref()
            .is_some_and(crate::task::Check::asks_a_judge)
    });
    let judge = if needs_judge {
        let common = CommonArgs {
            base_url: args.base_url.clone(),
            model: args.model.clone(),
            api_key_env: args.api_key_env.clone(),
            protocol: args.protocol.clone(),
            ..CommonArgs::default()
        };
        Some(judge_model(&common, &file).context("a check asks a judge model")?)
    } else {
        None
    };
    let engine = if args.no_snapshot {
        None
    } else {
        match Engine::connect().await {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("warning: no Docker engine ({e}); grading from the recorded state only");
                None
            }
        }
    };
    let graders = Graders {
        engine: engine.as_ref(),
        judge,
        prompts: file.prompts.clone(),
    };
    let mut results = Vec::new();
    for (s, t) in &plan {
        let r = regrade::regrade(&db, s, t, &graders)
            .await
            .with_context(|| format!("grading session {}", s.id))?;
        if !args.json {
            crate::outln!("{}", line(&r));
        }
        results.push(r);
    }
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&results)?);
    }
    let code = if results.iter().any(|r| r.after.passed.is_none()) {
        4
    } else if results.iter().any(|r| r.after.passed == Some(false)) {
        2
    } else {
        0
    };
    Ok(ExitCode::from(code))
}
