//! `selfagent calibrate`: numbered targets on a fresh desktop, the model asked to click
//! each, the error of every click and a verdict (see [`crate::calibrate`]).

use crate::calibrate::{self, Verdict};
use crate::config;
use crate::episode;
use crate::sandbox::Engine;
use crate::settings::{CommonArgs, resolve};
use crate::task::Limits;
use anyhow::bail;
use clap::Args;
use std::process::ExitCode;

use super::run::{EXIT_CHECKS_FAILED, exit_code, headless_episode};

#[derive(Debug, Args)]
#[command(
    after_help = "The model is asked, one fresh conversation per target in its own \
protocol (--protocol, or detected from --model), to click each numbered target of a \
full-screen page. With --grounder, the grounding model alone is asked where each target \
is (in its own prompt and coordinate space; nothing is clicked), and a wrong space is \
named as the --grounder-coords to use. Reported: each click's error in screen pixels, the median, and the same \
numbers read in every other coordinate space; when another space fits, the verdict names \
the --coords to use. Recorded like any session (`selfagent replay` shows it).\n\
Exit codes: 0 usable (the median error is at most --max-error), 2 not usable or in the wrong \
coordinate space, 1 the model call failed, 4 the desktop failed, 5 the recording failed, \
130 stopped."
)]
pub struct CalibrateArgs {
    /// How many targets.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u16).range(1..=36))]
    pub targets: u16,
    /// The largest median error, in screen pixels, that is usable.
    #[arg(long, value_name = "PX", default_value_t = calibrate::DEFAULT_MAX_ERROR)]
    pub max_error: f64,
    /// The report as JSON on stdout (progress goes to stderr either way).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(mut args: CalibrateArgs) -> anyhow::Result<ExitCode> {
    if !(args.max_error.is_finite() && args.max_error > 0.0) {
        bail!("--max-error must be a positive number of pixels");
    }
    if args.common.observe.as_deref() == Some("a11y") {
        bail!(
            "calibrate measures where a model clicks on targets drawn on its screenshot: \
             --observe a11y shows it none (use screenshot or screenshot+a11y)"
        );
    }
    let file = config::load(args.common.config.as_deref())?;
    crate::preflight::before_desktop(&mut args.common, &file).await?;
    let cfg = resolve(&args.common, &file, String::new(), &Limits::default())?;
    let db = cfg.db.clone();
    let engine = Engine::connect().await?;
    let plan = episode::calibration_plan(
        cfg,
        args.common.spec(),
        usize::from(args.targets),
        args.max_error,
    );
    let end = headless_episode(&engine, plan, false, true, None).await?;
    eprintln!("recorded session {} in {}", end.session, db.display());
    let Some(report) = &end.calibration else {
        if let Some(e) = &end.outcome.error {
            eprintln!("error: the calibration did not finish: {e}");
        }
        return Ok(exit_code(&end));
    };
    if args.json {
        let mut v = serde_json::to_value(report)?;
        v["session"] = serde_json::json!(end.session);
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        crate::out!("{}", calibrate::render(report));
    }
    Ok(match report.verdict {
        Verdict::Usable => ExitCode::SUCCESS,
        Verdict::WrongSpace | Verdict::NotUsable => ExitCode::from(EXIT_CHECKS_FAILED),
    })
}
