//! `selfagent export`: a recorded episode (or all of them) as an HTML page, a GIF, or a
//! trajectory others train on (ATIF, AgentNet, OSWorld).

use super::sessions::DbArg;
use crate::export::{self, Episode, Format, training};
use crate::record::Db;
use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(
    after_help = "Formats:\n  html      a self-contained page: every step's screenshot with its actions drawn, \
thoughts, timings, the grade\n  gif       an animated GIF\n  osworld   OSWorld's result directory: \
traj.jsonl (one line per action, pyautogui code in screen pixels), step_<n>_<time>.png, result.txt \
(--jsonl is the same)\n  atif      Harbor's Agent Trajectory Interchange Format (v1.7): \
DIR/trajectory.json, screenshots in DIR/images/\n  agentnet  OpenCUA's AgentNet records: \
DIR/agentnet.jsonl (one task a line, pyautogui code in 0-1 coordinates), screenshots in DIR/images/\n\n\
With --all, every session that passes the filters: ATIF and OSWorld as one directory per \
session under DIR, AgentNet as one line per session in DIR/agentnet.jsonl. Human \
demonstrations and agent episodes go out in the same shape; each step says who did it."
)]
pub struct ExportArgs {
    /// Session id or a unique prefix (or --all).
    #[arg(required_unless_present = "all")]
    pub session: Option<String>,
    /// html, gif, osworld, atif or agentnet.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format, conflicts_with_all = ["html", "gif", "jsonl"])]
    pub format: Option<Format>,
    /// The same as --format html.
    #[arg(long)]
    pub html: bool,
    /// The same as --format gif.
    #[arg(long)]
    pub gif: bool,
    /// The same as --format osworld.
    #[arg(long)]
    pub jsonl: bool,
    /// Every session of the recording (atif, agentnet, osworld), filtered by --source and
    /// --status.
    #[arg(long, conflicts_with = "session")]
    pub all: bool,
    /// With --all: only sessions of this source: agent (selfagent's loop), human
    /// (demonstrations), mcp (MCP hosts), rerun.
    #[arg(long, value_name = "SOURCE", requires = "all")]
    pub source: Option<String>,
    /// With --all: only sessions that ended so (succeeded, failed, stopped, error, ...).
    #[arg(long, value_name = "STATUS", requires = "all")]
    pub status: Option<String>,
    /// Where to write (a file for html and gif; a directory for the others). Default:
    /// named after the session (with --all: export-FORMAT).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// GIF width in pixels.
    #[arg(long, default_value_t = 640)]
    pub width: u32,
    /// GIF milliseconds per frame.
    #[arg(long, default_value_t = 800)]
    pub delay: u32,
    #[command(flatten)]
    pub db: DbArg,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

impl ExportArgs {
    fn format(&self) -> anyhow::Result<Format> {
        Ok(match (self.format, self.html, self.gif, self.jsonl) {
            (Some(f), ..) => f,
            (None, true, _, _) => Format::Html,
            (None, _, true, _) => Format::Gif,
            (None, _, _, true) => Format::Osworld,
            _ => bail!("say what to export: --format html|gif|osworld|atif|agentnet"),
        })
    }
}

/// Writes one episode in a trajectory format into `dir`; returns a count for the summary.
fn trajectory(db: &Db, ep: &Episode, format: Format, dir: &Path) -> anyhow::Result<usize> {
    match format {
        Format::Osworld => training::osworld(db, ep, dir),
        Format::Atif => training::atif(db, ep, dir),
        Format::Agentnet => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let record = training::agentnet(db, ep, dir)?;
            let n = record["traj"].as_array().map_or(0, Vec::len);
            let path = dir.join("agentnet.jsonl");
            append_line(&path, &record)?;
            Ok(n)
        }
        Format::Html | Format::Gif => unreachable!("pages are not trajectories"),
    }
}

fn append_line(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{v}").with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let format = args.format()?;
    let db = Db::open_read(&args.db.db)?;
    if args.all {
        return all(&db, &args, format);
    }
    let id = args.session.as_deref().unwrap_or_default();
    let ep = Episode::load(&db, id)?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| export::default_output(&ep.session.id, format));
    let write = |bytes: &[u8]| {
        std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))
    };
    match format {
        Format::Html => write(export::html(&db, &ep)?.as_bytes())?,
        Format::Gif => write(&export::gif(
            &db,
            &ep,
            args.width.max(64),
            args.delay.max(20),
        )?)?,
        Format::Agentnet => {
            // One session: the file holds just its line.
            let _ = std::fs::remove_file(out.join("agentnet.jsonl"));
            let n = trajectory(&db, &ep, format, &out)?;
            eprintln!("{n} steps");
        }
        Format::Osworld | Format::Atif => {
            let n = trajectory(&db, &ep, format, &out)?;
            eprintln!(
                "{n} {}",
                if format == Format::Osworld {
                    "actions"
                } else {
                    "steps"
                }
            );
        }
    }
    crate::outln!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn all(db: &Db, args: &ExportArgs, format: Format) -> anyhow::Result<ExitCode> {
    if matches!(format, Format::Html | Format::Gif) {
        bail!("--all writes trajectories: --format atif, agentnet or osworld");
    }
    let out = args.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "export-{}",
            match format {
                Format::Atif => "atif",
                Format::Agentnet => "agentnet",
                _ => "osworld",
            }
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if format == Format::Agentnet {
        let _ = std::fs::remove_file(out.join("agentnet.jsonl"));
    }
    let mut sessions = db.sessions(usize::MAX >> 1)?;
    sessions.reverse();
    let (mut written, mut skipped) = (0usize, 0usize);
    for s in sessions {
        if s.status == "running" {
            continue;
        }
        if args.status.as_deref().is_some_and(|want| s.status != want) {
            continue;
        }
        let ep = match Episode::load(db, &s.id) {
            Ok(ep) => ep,
            Err(e) => {
                eprintln!("skipping session {}: {e:#}", s.id);
                skipped += 1;
                continue;
            }
        };
        if args
            .source
            .as_deref()
            .is_some_and(|want| training::source(&ep) != want)
        {
            continue;
        }
        if ep.steps.is_empty() {
            continue;
        }
        let dir = match format {
            Format::Agentnet => out.clone(),
            _ => out.join(export::file_name(&s.id)),
        };
        match trajectory(db, &ep, format, &dir) {
            Ok(_) => written += 1,
            Err(e) => {
                eprintln!("skipping session {}: {e:#}", s.id);
                skipped += 1;
            }
        }
    }
    eprintln!(
        "{written} sessions written{}",
        if skipped > 0 {
            format!(", {skipped} skipped (see above)")
        } else {
            String::new()
        }
    );
    crate::outln!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}
