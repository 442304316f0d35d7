//! `selfagent compare A B`: two batch reports, task by task and paired overall.

use crate::batch::compare;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(
    after_help = "A and B are report directories (`batch --report DIR`, or \
<db dir>/batches/<id>/) or their report.json. The overall difference is paired by task: each \
task both graded counts once, its rate in B minus its rate in A, so tasks that are easy for \
both do not widen the interval. A task is flipped when its majority verdict changed (more \
than half its graded runs passed in one, fewer than half in the other)."
)]
pub struct CompareArgs {
    /// The baseline report.
    #[arg(value_name = "A")]
    pub a: PathBuf,
    /// The report compared with it.
    #[arg(value_name = "B")]
    pub b: PathBuf,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the comparison as an HTML page here.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let (a_path, a) = compare::load(&args.a)?;
    let (b_path, b) = compare::load(&args.b)?;
    let c = compare::compare(&a_path, &a, &b_path, &b);
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        crate::out!("{}", c.text());
    }
    if let Some(path) = &args.html {
        std::fs::write(path, c.html())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        eprintln!("comparison: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
