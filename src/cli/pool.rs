//! `selfagent pool`: warm pools of desktops (see [`crate::pool`]).

use crate::pool::{self, PoolSpec};
use crate::sandbox::{DEFAULT_IMAGE, Engine, Network, SandboxSpec};
use anyhow::bail;
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Start desktops ahead of need, ready and drawn: `run`, `batch`, `calibrate` and
    /// `sandbox up` lease one (in milliseconds) instead of booting their own, when the
    /// image, size and limits match. Each is used once, then replaced in the background.
    Up(PoolUpArgs),
    /// The pools: their desktops' image and size, and how many are ready, warming, leased.
    Ls {
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a pool's waiting desktops (leased ones finish their episodes); all pools
    /// without KEY.
    Down {
        /// The pool's key (from `pool ls`).
        key: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct PoolUpArgs {
    /// Desktops kept ready.
    #[arg(long, default_value_t = 2)]
    size: usize,
    /// The desktop image (see `selfagent sandbox build`).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    image: String,
    /// Screen width in pixels.
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// Screen height in pixels.
    #[arg(long, default_value_t = 800)]
    height: u32,
    /// Screen DPI (scales fonts and toolkits).
    #[arg(long, default_value_t = 96)]
    dpi: u32,
    /// Memory limit of each (e.g. 2g).
    #[arg(long, default_value = "2g", value_parser = super::parse_size)]
    memory: i64,
    /// CPUs per desktop.
    #[arg(long, default_value_t = 2.0)]
    cpus: f64,
    /// Processes per desktop (a fork bomb stops there).
    #[arg(long, default_value_t = 1024)]
    pids: i64,
    /// Desktops with no network at all (for `--no-network` runs).
    #[arg(long)]
    no_network: bool,
    /// Seconds each desktop lives, leased or not.
    #[arg(long, default_value_t = pool::DEFAULT_TTL)]
    ttl: u64,
    /// JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: PoolCmd) -> anyhow::Result<ExitCode> {
    let engine = Engine::connect().await?;
    match cmd {
        PoolCmd::Up(args) => up(&engine, args).await,
        PoolCmd::Ls { json } => ls(&engine, json).await,
        PoolCmd::Down { key } => {
            let n = pool::down(&engine, key.as_deref()).await?;
            eprintln!(
                "removed {n} waiting desktop{}",
                if n == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn up(engine: &Engine, args: PoolUpArgs) -> anyhow::Result<ExitCode> {
    if args.size == 0 || args.size > 64 {
        bail!("--size must be 1 to 64");
    }
    if args.ttl < 600 {
        bail!("--ttl must be at least 600 s (a leased desktop lives on for its episode)");
    }
    let sandbox = SandboxSpec {
        image: args.image,
        width: args.width,
        height: args.height,
        dpi: args.dpi,
        memory: args.memory,
        cpus: args.cpus,
        pids: args.pids,
        network: if args.no_network {
            Network::None
        } else {
            Network::Bridge
        },
        ..SandboxSpec::default()
    };
    sandbox.validate()?;
    if !engine.image_exists(&sandbox.image).await? {
        bail!(
            "the desktop image {} is missing: run `selfagent sandbox build` first",
            sandbox.image
        );
    }
    let spec = PoolSpec::of(&sandbox);
    let json = args.json;
    let report = pool::fill(engine, &spec, args.size, args.size, args.ttl, &|line| {
        if !json {
            eprintln!("{line}");
        }
    })
    .await?;
    for e in &report.failed {
        eprintln!("error: a pool desktop did not start: {e}");
    }
    ls(engine, json).await?;
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn ls(engine: &Engine, json: bool) -> anyhow::Result<ExitCode> {
    let pools = pool::list(engine).await?;
    if json {
        crate::outln!("{}", serde_json::to_string(&pools)?);
        return Ok(ExitCode::SUCCESS);
    }
    if pools.is_empty() {
        crate::outln!("no pools (`selfagent pool up --size N` starts one)");
        return Ok(ExitCode::SUCCESS);
    }
    crate::outln!(
        "{:<13} {:<28} {:>9}  {:>4} {:>5} {:>7} {:>6}",
        "KEY",
        "IMAGE",
        "SIZE",
        "KEEP",
        "READY",
        "WARMING",
        "LEASED"
    );
    for p in pools {
        crate::outln!(
            "{:<13} {:<28} {:>9}  {:>4} {:>5} {:>7} {:>6}{}",
            p.key,
            p.spec.image,
            format!("{}x{}", p.spec.width, p.spec.height),
            p.size,
            p.ready,
            p.warming,
            p.leased,
            if p.spec.network == Network::None {
                "  (no network)"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
