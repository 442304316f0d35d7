//! `selfagent doctor`: is everything a run needs in place? The configuration file, the
//! Docker engine, the desktop image, the recording, the model endpoint (reachable, key
//! accepted, model listed, the protocol it would use), each with the fix when it is not.

use crate::config::{self, FileConfig};
use crate::preflight::{self, Finding, Level};
use crate::record::Db;
use crate::sandbox::Engine;
use crate::settings::{CommonArgs, db_path};
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 nothing failed (notes are not failures), 1 something failed.\n\
The endpoint checks are the ones `run`, `batch` and `calibrate` make before a desktop starts."
)]
pub struct DoctorArgs {
    /// The findings as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn finding(what: &'static str, level: Level, text: String, fix: Option<&str>) -> Finding {
    Finding {
        what,
        level,
        text,
        fix: fix.map(str::to_owned),
    }
}

pub async fn run(mut args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut found = Vec::new();
    let file = match config::load(args.common.config.as_deref()) {
        Ok(file) => {
            let path = args.common.config.clone().or_else(config::default_path);
            let text = match path.filter(|p| p.exists()) {
                Some(p) => p.display().to_string(),
                None => "none (flags, environment and defaults)".into(),
            };
            found.push(finding("config", Level::Ok, text, None));
            file
        }
        Err(e) => {
            found.push(finding(
                "config",
                Level::Fail,
                e.to_string(),
                Some("fix the file, or name another with --config"),
            ));
            FileConfig::default()
        }
    };
    found.extend(engine_and_image(&args.common).await);
    found.push(recording(&args.common, &file));
    found.extend(preflight::check_endpoint(&mut args.common, &file).await);
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for f in &found {
            let word = match f.level {
                Level::Ok => crate::output::paint("ok", crate::output::Tone::Good),
                Level::Note => crate::output::paint("note", crate::output::Tone::Warn),
                Level::Fail => crate::output::paint("FAIL", crate::output::Tone::Bad),
            };
            // The word is padded by its visible width (colour codes take none).
            let pad = 6 - word.width;
            let word = word.text;
            crate::outln!("{word}{:pad$}{:<11}{}", "", f.what, f.text);
            if let Some(fix) = &f.fix {
                crate::outln!("{:17}fix: {fix}", "");
            }
        }
    }
    Ok(if found.iter().any(|f| f.level == Level::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn engine_and_image(common: &CommonArgs) -> Vec<Finding> {
    let engine = match Engine::connect().await {
        Ok(e) => e,
        Err(e) => {
            return vec![finding(
                "engine",
                Level::Fail,
                e.to_string(),
                Some(
                    "start the Docker engine (systemctl start docker, or dockerd &), or point \
                     DOCKER_HOST at one",
                ),
            )];
        }
    };
    let version = engine
        .provider()
        .version()
        .await
        .unwrap_or_else(|| "?".into());
    let mut found = vec![finding(
        "engine",
        Level::Ok,
        format!("Docker {version} at {}", engine.url()),
        None,
    )];
    let image = common.spec().image;
    found.push(match engine.provider().image(&image).await {
        Ok(Some(info)) => {
            let mb = info.size as f64 / 1e6;
            let built = info
                .created_at
                .as_deref()
                .and_then(|c| c.get(..16))
                .map(|c| format!(", built {}", c.replace('T', " ")))
                .unwrap_or_default();
            finding(
                "image",
                Level::Ok,
                format!("{image} ({mb:.0} MB{built})"),
                None,
            )
        }
        Ok(None) | Err(_) if common.from.is_some() => finding(
            "image",
            Level::Fail,
            format!(
                "no saved snapshot {}",
                common.from.as_deref().unwrap_or_default()
            ),
            Some("selfagent sandbox snapshots lists them"),
        ),
        Ok(None) | Err(_) => finding(
            "image",
            Level::Fail,
            format!("{image} is not built"),
            Some(
                "selfagent sandbox build (with no registry, first: bash sandbox/bootstrap-base.sh)",
            ),
        ),
    });
    found
}

fn recording(common: &CommonArgs, file: &FileConfig) -> Finding {
    let path = db_path(common.db.as_ref(), file);
    if !path.exists() {
        return finding(
            "recording",
            Level::Ok,
            format!("{} (the first run creates it)", path.display()),
            None,
        );
    }
    match Db::open_read(&path).and_then(|db| db.sessions(1_000_000)) {
        Ok(sessions) => finding(
            "recording",
            Level::Ok,
            format!(
                "{} ({})",
                path.display(),
                crate::output::count(sessions.len() as i64, "session")
            ),
            None,
        ),
        Err(e) => finding(
            "recording",
            Level::Fail,
            e.to_string(),
            Some("name another file with --db (the file is left as it is)"),
        ),
    }
}
