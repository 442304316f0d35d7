//! `selfagent sessions ...`: what the recording holds.

use crate::record::{self, Db};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DbArg {
    /// The recording (SQLite).
    #[arg(long, env = "SELFAGENT_DB", default_value = record::DEFAULT_DB)]
    pub db: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// Recorded sessions, newest first.
    Ls {
        #[command(flatten)]
        db: DbArg,
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
        /// Show at most this many (the newest first).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One session: its steps, actions, errors, timings, interventions and grades.
    Show {
        /// Session id or a unique prefix.
        id: String,
        #[command(flatten)]
        db: DbArg,
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Save a step's screenshot (the one after the step, or --before it).
    Frame {
        /// Session id or a unique prefix.
        id: String,
        /// The step whose screenshot to write (1-based).
        step: i64,
        /// Write the PNG here.
        #[arg(short, long)]
        output: PathBuf,
        /// The screenshot the model saw before the step, not the one after.
        #[arg(long)]
        before: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// Delete sessions and what was recorded for them; screenshots another session shows
    /// too are kept. A running session is refused.
    Rm {
        /// Session ids or unique prefixes.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        db: DbArg,
    },
}

fn trunc(s: &str, n: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > n {
        format!(
            "{}…",
            flat.chars().take(n.saturating_sub(1)).collect::<String>()
        )
    } else {
        flat
    }
}

/// A step's actions as short text: `left_click [640,400] ok; key "Foo" ERROR ...`.
fn actions_summary(actions: &Value) -> String {
    actions
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| {
                    if a["ok"] == true {
                        let action = &a["action"];
                        let name = action["action"].as_str().unwrap_or("?");
                        match ["coordinate", "text", "path"]
                            .iter()
                            .find_map(|k| action.get(*k))
                        {
                            Some(arg) => format!("{name} {}", trunc(&arg.to_string(), 40)),
                            None => name.to_owned(),
                        }
                    } else {
                        let name = a["input"]["action"].as_str().unwrap_or("?");
                        format!(
                            "{name} ERROR {}",
                            trunc(a["error"].as_str().unwrap_or_default(), 60)
                        )
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

pub fn run(cmd: SessionsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SessionsCmd::Ls { db, json, limit } => {
            let db = Db::open_read(&db.db)?;
            let rows = db.sessions(limit)?;
            if json {
                crate::outln!("{}", serde_json::to_string(&rows)?);
            } else if rows.is_empty() {
                crate::outln!("no sessions in {}", db.path());
            } else {
                crate::outln!(
                    "{:<22}  {:<16}  {:<11} {:>5} {:>9}  {:<18} INSTRUCTION",
                    "ID",
                    "CREATED",
                    "STATUS",
                    "STEPS",
                    "TOKENS",
                    "MODEL"
                );
                for s in rows {
                    crate::outln!(
                        "{:<22}  {:<16}  {} {:>5} {:>9}  {:<18} {}",
                        s.id,
                        crate::time::short(s.created_at),
                        crate::output::status(&s.status, 11),
                        s.steps,
                        s.tokens_in + s.tokens_out,
                        trunc(s.model.as_deref().unwrap_or("-"), 18),
                        trunc(&s.instruction, 60)
                    );
                }
            }
        }
        SessionsCmd::Show { id, db, json } => {
            let db = Db::open_read(&db.db)?;
            let s = db.session(&id)?;
            let steps = db.steps(&s.id)?;
            let events = db.events(&s.id)?;
            let grades = db.grades(&s.id)?;
            if json {
                crate::outln!(
                    "{}",
                    json!({"session": s, "steps": steps, "events": events, "grades": grades})
                );
                return Ok(ExitCode::SUCCESS);
            }
            crate::outln!("session   {}", s.id);
            crate::outln!(
                "status    {}{}",
                s.status,
                s.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            crate::outln!("task      {}", s.instruction);
            crate::outln!(
                "model     {} at {} (protocol/coords {})",
                s.model.as_deref().unwrap_or("-"),
                s.base_url.as_deref().unwrap_or("-"),
                s.dialect()
            );
            crate::outln!("created   {}", crate::time::iso8601(s.created_at));
            if let Some(ms) = s.wall_ms {
                crate::outln!(
                    "took      {:.1} s, {}, {} in / {} out tokens",
                    ms as f64 / 1000.0,
                    crate::output::count(s.steps, "step"),
                    s.tokens_in,
                    s.tokens_out
                );
            }
            if let (Some(cost), Some(p)) = (s.cost(), s.price()) {
                crate::outln!(
                    "cost      {} (${}/${} per million tokens in/out, {})",
                    crate::model::price::dollars(cost),
                    p.price.input,
                    p.price.output,
                    p.source
                );
            }
            if let Some(a) = &s.answer {
                crate::outln!("answer    {a}");
            }
            for st in &steps {
                let what = match (actions_summary(&st.actions), &st.text) {
                    (a, Some(text)) if a.is_empty() => format!("answer: {}", trunc(text, 80)),
                    (a, _) => a,
                };
                crate::outln!(
                    "{:>4}  model {:>7.0} ms  act {:>6.1} ms  settle {:>5.0} ms  {what}",
                    st.idx,
                    st.model_ms.unwrap_or(0.0),
                    st.act_ms.unwrap_or(0.0),
                    st.settle_ms.unwrap_or(0.0),
                );
                if let Some(t) = &st.thought {
                    crate::outln!("      thought: {}", trunc(t, 120));
                }
            }
            for e in &events {
                if e.kind == "calibration"
                    && let Some(report) = e
                        .data
                        .as_deref()
                        .and_then(|d| serde_json::from_str::<crate::calibrate::Report>(d).ok())
                {
                    crate::out!("{}", crate::calibrate::render(&report));
                    continue;
                }
                crate::outln!(
                    "event {} step {} {}{}",
                    crate::time::short(e.at),
                    e.step.unwrap_or(0),
                    e.kind,
                    e.data
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
            }
            for g in &grades {
                crate::outln!(
                    "grade {}: score {:?} passed {:?}",
                    g.grader,
                    g.score,
                    g.passed
                );
            }
        }
        SessionsCmd::Rm { ids, db } => {
            if !db.db.exists() {
                anyhow::bail!(
                    "no recording at {} (run an episode first, or pass --db PATH)",
                    db.db.display()
                );
            }
            let mut rec = Db::open(&db.db)?;
            let mut failed = false;
            for id in ids {
                match rec.delete_session(&id) {
                    Ok((removed, kept)) => crate::outln!(
                        "deleted {id} ({} removed, {kept} shared with other sessions kept)",
                        crate::output::count(removed as i64, "screenshot")
                    ),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        SessionsCmd::Frame {
            id,
            step,
            output,
            before,
            db,
        } => {
            let db = Db::open_read(&db.db)?;
            let s = db.session(&id)?;
            let st = db
                .steps(&s.id)?
                .into_iter()
                .find(|x| x.idx == step)
                .with_context(|| format!("session {} has no step {step}", s.id))?;
            let frame_id = if before {
                st.frame_before
            } else {
                st.frame_after
            }
            .context("the step has no frame")?;
            let frame = db.frame(frame_id)?.context("the frame is missing")?;
            std::fs::write(&output, &frame.png)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "{}x{} PNG -> {}",
                frame.width,
                frame.height,
                output.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
