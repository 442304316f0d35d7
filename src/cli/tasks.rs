//! `selfagent tasks ...`: check task files, import OSWorld tasks, audit tasks with the no-op agent.

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
    /// Run every task with the no-op agent (no model, no action: each task's setup, post
    /// steps and checks) and list the broken ones: a task that passes without the agent
    /// doing anything checks nothing. Exit 1 when a task is broken, 4 when one could not
    /// be set up or checked (a harness error, e.g. a download missing from the cache).
    Audit {
        #[command(flatten)]
        batch: Box<crate::batch::BatchArgs>,
    },
    /// Convert OSWorld task JSONs into task files for the office desktop (`sandbox build
    /// --flavor office`), checked by OSWorld's own evaluator; every task not converted is
    /// listed with the reasons, and the coverage per app and reason ends the output.
    ImportOsworld {
        /// OSWorld task files (one task object each, or an array of them), or directories
        /// of them (searched recursively, e.g. evaluation_examples/examples: the folder
        /// a file is in names its app).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where the task files go (one <id>.toml per converted task), with coverage.json:
        /// converted and skipped per app and per reason.
        #[arg(long)]
        out: PathBuf,
        /// Download every file the tasks use (their `download` steps and the expected
        /// files their checks compare with) into OUT/cache, so runs are offline and
        /// repeatable; without it, a task whose file is not cached fails at setup, as a
        /// harness error that says so.
        #[arg(long)]
        fetch: bool,
    },
}

pub async fn run(cmd: TasksCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TasksCmd::Audit { batch } => audit(*batch).await,
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

/// JSON files under `paths` (directories searched recursively), sorted.
fn json_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        bail!("no .json task files found");
    }
    Ok(out)
}

/// One task's fate, for coverage.json.
#[derive(serde::Serialize)]
struct Fate {
    id: String,
    app: String,
    converted: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
}

#[derive(serde::Serialize, Default)]
struct AppCount {
    tasks: usize,
    converted: usize,
    needs_account: usize,
}

async fn import(files: &[PathBuf], out: &std::path::Path, fetch: bool) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files = json_files(files)?;
    let (mut converted, mut skipped) = (0, 0);
    let mut fates: Vec<Fate> = Vec::new();
    for f in &files {
        // OSWorld's layout: examples/<app>/<id>.json.
        let folder = f
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
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
            let app = if folder.is_empty() {
                t["related_apps"][0].as_str().unwrap_or("?").to_owned()
            } else {
                folder.clone()
            };
            if fetch {
                for (url, rel) in osworld::downloads(t) {
                    let path = out.join(&rel);
                    if path.exists() {
                        continue;
                    }
                    match download(&url, &path).await {
                        Ok(bytes) => eprintln!("fetched {url} ({bytes} bytes) -> {rel}"),
                        Err(e) => eprintln!("warning: fetching {url}: {e:#}"),
                    }
                }
            }
            match osworld::convert(t) {
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
                    fates.push(Fate {
                        id: imported.task.id.clone(),
                        app,
                        converted: true,
                        reasons: Vec::new(),
                    });
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
                    fates.push(Fate {
                        id: s.id.clone(),
                        app,
                        converted: false,
                        reasons: s.reasons,
                    });
                }
            }
        }
    }
    crate::outln!(
        "{converted} converted, {skipped} skipped, into {}",
        out.display()
    );
    coverage(&fates, out)?;
    Ok(ExitCode::SUCCESS)
}

/// Converted and skipped per app and per reason: printed, and written to coverage.json.
/// Tasks that need a Google account are counted apart and left out of the percentage.
fn coverage(fates: &[Fate], out: &std::path::Path) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let account = |f: &Fate| {
        f.reasons
            .iter()
            .any(|r| r.starts_with(osworld::NEEDS_ACCOUNT))
    };
    let mut apps: BTreeMap<&str, AppCount> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for f in fates {
        let a = apps.entry(f.app.as_str()).or_default();
        a.tasks += 1;
        a.converted += usize::from(f.converted);
        a.needs_account += usize::from(account(f));
        // Each kind of reason once per task.
        let kinds: std::collections::BTreeSet<String> =
            f.reasons.iter().map(|r| osworld::reason_kind(r)).collect();
        for k in kinds {
            *reasons.entry(k).or_default() += 1;
        }
    }
    let total = fates.len();
    let needs_account = fates.iter().filter(|f| account(f)).count();
    let converted = fates.iter().filter(|f| f.converted).count();
    let considered = total - needs_account;
    let percent = |n: usize, of: usize| {
        if of == 0 {
            0.0
        } else {
            (n as f64 * 1000.0 / of as f64).round() / 10.0
        }
    };
    crate::outln!("\ncoverage by app (tasks needing a Google account left out of the %):");
    crate::outln!(
        "{:<22} {:>5} {:>9} {:>7} {:>8}",
        "app",
        "tasks",
        "converted",
        "account",
        "%"
    );
    for (app, c) in &apps {
        crate::outln!(
            "{:<22} {:>5} {:>9} {:>7} {:>7}%",
            app,
            c.tasks,
            c.converted,
            c.needs_account,
            percent(c.converted, c.tasks - c.needs_account)
        );
    }
    crate::outln!(
        "{:<22} {:>5} {:>9} {:>7} {:>7}%",
        "all",
        total,
        converted,
        needs_account,
        percent(converted, considered)
    );
    let mut by_count: Vec<(&String, &usize)> = reasons.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    crate::outln!("\nwhy tasks were skipped (tasks per reason):");
    for (r, n) in &by_count {
        crate::outln!("{n:>5}  {r}");
    }
    let report = serde_json::json!({
        "tasks": total,
        "needs_account": needs_account,
        "considered": considered,
        "converted": converted,
        "percent": percent(converted, considered),
        "by_app": apps,
        "by_reason": reasons,
        "tasks_list": fates,
    });
    let path = out.join(task::COVERAGE_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    crate::outln!(
        "coverage: {converted} of {considered} tasks ({}%); {}",
        percent(converted, considered),
        path.display()
    );
    Ok(())
}

/// `tasks audit`: the batch with the no-op agent, and what it says about the tasks.
async fn audit(mut args: crate::batch::BatchArgs) -> anyhow::Result<ExitCode> {
    args.no_agent = true;
    let (_, report) = crate::batch::run_report(args).await?;
    let broken: Vec<_> = report
        .episodes
        .iter()
        .filter(|e| e.harness_error.is_none() && e.passed)
        .collect();
    let harness: Vec<_> = report
        .episodes
        .iter()
        .filter(|e| e.harness_error.is_some())
        .collect();
    let sound = report.episodes.len() - broken.len() - harness.len();
    crate::outln!(
        "\naudit: {} tasks with the no-op agent: {sound} fail as they should, {} broken (pass with no action), {} could not be set up or checked",
        report.episodes.len(),
        broken.len(),
        harness.len()
    );
    for e in &broken {
        crate::outln!("  broken  {}  (session {})", e.task_id, e.session_id);
    }
    for e in &harness {
        crate::outln!(
            "  harness {}: {}",
            e.task_id,
            e.harness_error.as_deref().unwrap_or_default()
        );
    }
    Ok(if !broken.is_empty() {
        ExitCode::from(1)
    } else if !harness.is_empty() {
        ExitCode::from(crate::batch::EXIT_HARNESS)
    } else {
        ExitCode::SUCCESS
    })
}

/// Downloads `url` into the import cache at `path` (through a temporary file, so a
/// broken download leaves nothing that looks cached).
async fn download(url: &str, path: &std::path::Path) -> anyhow::Result<usize> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(std::time::Duration::from_secs(600))
        .send()
        .await?
        .error_for_status()?;
    let body = resp.bytes().await?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let partial = path.with_extension("part");
    std::fs::write(&partial, &body).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(body.len())
}
