//! `selfagent export`: a recorded episode as an HTML page, a GIF or a trajectory.

use super::sessions::DbArg;
use crate::export::{self, Episode, Format};
use crate::record::Db;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("format").required(true).args(["html", "gif", "jsonl"]))]
pub struct ExportArgs {
    /// Session id or a unique prefix.
    pub session: String,
    /// A self-contained HTML page: every step's screenshot with its actions drawn, the
    /// thoughts, timings and the grade.
    #[arg(long)]
    pub html: bool,
    /// An animated GIF of the episode.
    #[arg(long)]
    pub gif: bool,
    /// An OSWorld-style trajectory: DIR/traj.jsonl (one line per action) and one
    /// screenshot per step.
    #[arg(long)]
    pub jsonl: bool,
    /// Where to write (a file; a directory for --jsonl). Default: named after the session.
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

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let db = Db::open_read(&args.db.db)?;
    let ep = Episode::load(&db, &args.session)?;
    let format = if args.html {
        Format::Html
    } else if args.gif {
        Format::Gif
    } else {
        Format::Jsonl
    };
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
        Format::Jsonl => {
            let n = export::trajectory(&db, &ep, &out)?;
            eprintln!("{n} actions");
        }
    }
    crate::outln!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}
