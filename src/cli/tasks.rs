//! `selfagent tasks ...`: check task files, import OSWorld tasks.

use crate::task::{self, osworld};
use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum TasksCmd {
    /// Parse and validate task files (errors name the file, line and column).
    Check {
        /// Task files or directories of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Convert OSWorld task JSONs into task files: the setup and checks this desktop can
    /// run; every task not converted is listed with the reasons.
    ImportOsworld {
        /// OSWorld task files (one task object each, or an array of them).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where the task files go (one <id>.toml per converted task).
        #[arg(long)]
        out: PathBuf,
        /// Download the expected files (`cloud_file`) that checks compare against.
        #[arg(long)]
        fetch: bool,
    },
}

pub async fn run(cmd: TasksCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TasksCmd::Check { files } => {
            let mut bad = 0;
            let list = task::task_files(&files)?;
            let mut ids: HashMap<String, PathBuf> = HashMap::new();
            for f in &list {
                match task::Task::load(f) {
                    Ok(t) => {
                        if let Some(first) = ids.insert(t.id.clone(), f.clone()) {
                            bad += 1;
                            crate::outln!(
                                "{}: task id '{}' is also used by {}",
                                f.display(),
                                t.id,
                                first.display()
                            );
                        } else {
                            crate::outln!(
                                "ok  {}  {} ({} setup steps, {})",
                                f.display(),
                                t.id,
                                t.setup.len(),
                                if t.check.is_some() {
                                    "checks"
                                } else {
                                    "no checks"
                                }
                            );
                        }
                    }
                    Err(e) => {
                        bad += 1;
                        crate::outln!("{e}");
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} of {} task files have problems", list.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        TasksCmd::ImportOsworld { files, out, fetch } => import(&files, &out, fetch).await,
    }
}

async fn import(files: &[PathBuf], out: &std::path::Path, fetch: bool) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (mut converted, mut skipped) = (0, 0);
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: line {}, column {}: not JSON: {e}",
                f.display(),
                e.line(),
                e.column()
            )
        })?;
        let list = match v {
            Value::Array(a) => a,
            v => vec![v],
        };
        for t in &list {
            let mut fetched = HashMap::new();
            if fetch {
                for url in osworld::expected_downloads(t) {
                    match download(&url).await {
                        Ok(body) => {
                            fetched.insert(url, body);
                        }
                        Err(e) => eprintln!("warning: fetching {url}: {e:#}"),
                    }
                }
            }
            match osworld::convert(t, &fetched) {
                Ok(imported) => {
                    let path = out.join(format!("{}.toml", imported.task.id));
                    let mut text = format!("# Imported from OSWorld ({}).\n", f.display());
                    for n in &imported.notes {
                        text.push_str(&format!("# note: {n}\n"));
                    }
                    text.push('\n');
                    text.push_str(&imported.task.to_toml().map_err(anyhow::Error::msg)?);
                    // What we write must load again.
                    task::Task::parse(&text, &path.display().to_string())
                        .context("the converted task does not load back (a bug)")?;
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    converted += 1;
                    crate::outln!("converted {} -> {}", imported.task.id, path.display());
                    for n in &imported.notes {
                        crate::outln!("    note: {n}");
                    }
                }
                Err(s) => {
                    skipped += 1;
                    crate::outln!("skipped {}:", s.id);
                    for r in &s.reasons {
                        crate::outln!("    - {r}");
                    }
                }
            }
        }
    }
    crate::outln!(
        "{converted} converted, {skipped} skipped, into {}",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn download(url: &str) -> anyhow::Result<String> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await?
        .error_for_status()?;
    Ok(resp.text().await?)
}
