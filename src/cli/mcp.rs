//! `selfagent mcp`: serve selfagent's desktops to MCP hosts (see `crate::mcp`).

use crate::mcp::{self, Hub, Options};
use crate::sandbox::Engine;
use crate::settings::CommonArgs;
use anyhow::{Context, bail};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(
    after_help = "Tools: sandbox_up, sandbox_down, sandbox_list, screenshot, computer, exec, \
read_file, write_file, windows, wait_window, run_task. Resources: selfagent://sessions, \
selfagent://sessions/{id}, selfagent://frames/{id}.\n\
Claude Code: claude mcp add selfagent -- selfagent mcp\n\
Over HTTP: selfagent mcp --http 127.0.0.1:8765 prints the URL and a bearer token.\n\
Logs go to stderr (or --log FILE), never to stdout: over stdio that is the protocol's channel."
)]
pub struct McpArgs {
    /// Serve streamable HTTP at http://ADDR/mcp instead of stdio (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Let --http listen on an address other than loopback (the token still guards it).
    #[arg(long, requires = "http")]
    pub listen: bool,
    /// With --http: the bearer token is this environment variable's value (default: a new
    /// random token, printed at start).
    #[arg(long, value_name = "VAR", requires = "http")]
    pub token_env: Option<String>,
    /// With --http: print the URL (and a generated token) as one JSON line.
    #[arg(long, requires = "http")]
    pub json: bool,
    /// Desktops this server makes at most at once.
    #[arg(long, default_value_t = 4)]
    pub max_desktops: usize,
    /// Seconds a desktop may sit unused before it is removed (and an HTTP session closed).
    #[arg(long, default_value_t = 1800.0, value_name = "SECS")]
    pub idle_timeout: f64,
    /// Log lines to this file instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// New desktops' defaults (--width, --height, --image, --no-network, --no-pool) and
    /// run_task's model settings, as `run` takes them.
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: McpArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.log {
        crate::logs::divert_to(path).with_context(|| format!("opening {}", path.display()))?;
    }
    if !(args.idle_timeout.is_finite() && args.idle_timeout > 0.0) {
        bail!("--idle-timeout must be a positive number of seconds");
    }
    if args.max_desktops == 0 {
        bail!("--max-desktops must be at least 1");
    }
    let file = crate::config::load(args.common.config.as_deref())?;
    let db = crate::settings::db_path(args.common.db.as_ref(), &file);
    // A recording that cannot be opened is said now, not at the first tool call.
    drop(crate::record::Db::open(&db)?);
    let engine = Engine::connect().await?;
    let hub = Hub::new(
        engine,
        Options {
            defaults: args.common.clone(),
            file,
            max_desktops: args.max_desktops,
            idle_timeout: Duration::from_secs_f64(args.idle_timeout),
            db,
        },
    );
    let Some(addr) = args.http else {
        mcp::serve_stdio(hub).await?;
        return Ok(ExitCode::SUCCESS);
    };
    if !addr.ip().is_loopback() && !args.listen {
        bail!(
            "--http {addr} is not a loopback address: pass --listen too to serve other machines (the token guards it)"
        );
    }
    let (token, generated) = match &args.token_env {
        Some(var) => {
            let t = std::env::var(var).with_context(|| format!("--token-env: {var} is not set"))?;
            if t.len() < 16 {
                bail!("the token in {var} is too short: use at least 16 characters");
            }
            (t, false)
        }
        None => (mcp::new_token(), true),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr()?;
    let url = format!("http://{bound}/mcp");
    if args.json {
        let mut line = serde_json::json!({ "url": url });
        if generated {
            line["token"] = serde_json::json!(token);
        }
        crate::outln!("{line}");
    } else {
        crate::outln!("selfagent mcp: serving {url}");
        if generated {
            crate::outln!("token: {token}  (send it as: Authorization: Bearer <token>)");
        }
    }
    mcp::serve_http(
        hub,
        mcp::Http {
            listener,
            token,
            any_host: args.listen,
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
