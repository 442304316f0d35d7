//! The command line: argument types (clap) and dispatch. Each subcommand lives in its own
//! module; `anyhow` is used from here up, typed errors below.

mod calibrate;
mod compare;
mod demo;
mod doctor;
mod export;
mod grade;
mod mcp;
mod pool;
mod rerun;
pub mod run;
mod sandbox;
mod sessions;
mod tasks;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// Self-hosted runner for computer-use agents: local desktop sandboxes an agent can see and
/// drive, fast.
#[derive(Debug, Parser)]
#[command(name = "selfagent", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Without a command: the terminal UI asks for a task and runs it.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Colour the status words: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = crate::output::ColorChoice::Auto, value_name = "WHEN")]
    pub color: crate::output::ColorChoice,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one episode: a fresh desktop, the model loop, a recording.
    Run(Box<run::RunArgs>),
    /// Recorded sessions: list, show, frames.
    #[command(subcommand)]
    Sessions(sessions::SessionsCmd),
    /// Replay a recorded episode in the terminal UI (without SESSION: pick from the list).
    Replay {
        /// Session id or a unique prefix.
        session: Option<String>,
        #[command(flatten)]
        db: sessions::DbArg,
        /// Print how long the first paint and the first screenshot took.
        #[arg(long, hide = true)]
        timing: bool,
    },
    /// Desktop sandboxes by hand, E2B style: build, up, ls, act, shot, exec, cp, down, ...
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCmd),
    /// Run task files K times with N desktops at once; grade, summarize, report.
    Batch(Box<crate::batch::BatchArgs>),
    /// Two batch reports side by side: per task both rates and the difference, overall the
    /// paired difference with its 95% interval, flipped tasks, and what differed.
    Compare(compare::CompareArgs),
    /// Do a recorded episode again without its model: each step once the screen matches the
    /// recording; on drift halt, hand over to the model, or act anyway.
    Rerun(Box<rerun::RerunArgs>),
    /// Record a person doing a task: a desktop behind a recording VNC proxy, each click,
    /// drag, scroll, key and run of typing a step, as a model's would be.
    Demo(Box<demo::DemoArgs>),
    /// Grade recorded episodes again with new or fixed checks (no agent is run).
    Grade(grade::GradeArgs),
    /// A recorded episode as an HTML page, an animated GIF or a JSONL trajectory.
    Export(export::ExportArgs),
    /// Task files: check them, import OSWorld tasks.
    #[command(subcommand)]
    Tasks(tasks::TasksCmd),
    /// Measure speed on this machine against the way the public demos do it.
    Bench(crate::bench::BenchArgs),
    /// Do the model's clicks land? Numbered targets, each click's error, the coordinate
    /// space that fits, a verdict.
    Calibrate(Box<calibrate::CalibrateArgs>),
    /// Warm pools: desktops started ahead, leased in milliseconds, each used once.
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Is everything a run needs in place? The engine, the image, the recording, the model
    /// endpoint (reachable, key accepted, model listed, protocol), each with its fix.
    Doctor(Box<doctor::DoctorArgs>),
    /// Serve desktops to MCP hosts (Claude Code, Claude Desktop, Codex, Cursor, agent SDKs)
    /// as tools: over stdio, or streamable HTTP with --http. Every computer call is recorded.
    Mcp(Box<mcp::McpArgs>),
    /// The protocols selfagent speaks: the model ids each is chosen for, its wire format,
    /// endpoint, key variables and options; with a model id, the one it gets.
    Protocols {
        /// A model id: which protocol and coordinate space it gets.
        model: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shell completions on stdout: `selfagent completions bash > /etc/bash_completion.d/selfagent`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The manual page (roff) on stdout: `selfagent man | man -l -`.
    Man,
}

/// Runs the parsed command line; the exit code is the command's.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    crate::output::set_color(cli.color);
    let Some(command) = cli.command else {
        return run::run(run::RunArgs::defaults()).await;
    };
    match command {
        Command::Run(args) => run::run(*args).await,
        Command::Rerun(args) => rerun::run(*args).await,
        Command::Demo(args) => demo::run(*args).await,
        Command::Replay {
            session,
            db,
            timing,
        } => {
            crate::tui::replay(&db.db, session.as_deref(), timing).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions(cmd) => sessions::run(cmd),
        Command::Sandbox(cmd) => sandbox::run(cmd).await,
        Command::Batch(args) => crate::batch::run(*args).await,
        Command::Compare(args) => compare::run(args),
        Command::Grade(args) => grade::run(args).await,
        Command::Export(args) => export::run(args),
        Command::Tasks(cmd) => tasks::run(cmd).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Calibrate(args) => calibrate::run(*args).await,
        Command::Pool(cmd) => pool::run(cmd).await,
        Command::Doctor(args) => doctor::run(*args).await,
        Command::Mcp(args) => mcp::run(*args).await,
        Command::Protocols { model, json } => protocols(model.as_deref(), json),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "selfagent", &mut out);
            crate::out!("{}", String::from_utf8_lossy(&out));
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            crate::out!("{}", String::from_utf8_lossy(&out));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `selfagent protocols`: the list every protocol's file declares itself in.
fn protocols(model: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    use crate::model::protocol::{self, ProtocolName};
    if let Some(m) = model {
        let (name, space) = protocol::detect(m);
        if json {
            crate::outln!(
                "{}",
                serde_json::json!({"model": m, "protocol": name.as_str(), "coords": space.as_str()})
            );
        } else {
            crate::outln!("{m}: protocol {name}, coords {space}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let all: Vec<serde_json::Value> = ProtocolName::all()
        .map(|p| {
            let s = p.spec();
            let e = s.endpoint();
            serde_json::json!({
                "name": s.name(),
                "aliases": s.aliases(),
                "wire": s.wire(),
                "detects": s.detects(),
                "default_base_url": e.default_base_url,
                "key_variables": e.key_variables,
                "options": s.options().iter().map(|o| serde_json::json!({"key": o.key, "help": o.help})).collect::<Vec<_>>(),
            })
        })
        .collect();
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    for p in ProtocolName::all() {
        let s = p.spec();
        let e = s.endpoint();
        crate::outln!("{}  {}", s.name(), s.wire());
        crate::outln!("    chosen for  {}", s.detects());
        crate::outln!(
            "    endpoint    {}  key from {}",
            e.default_base_url
                .unwrap_or("--base-url (any OpenAI-compatible server)"),
            e.key_variables.join(" or ")
        );
        for o in s.options() {
            crate::outln!("    option      {}: {}", o.key, o.help);
        }
    }
    crate::outln!(
        "The first whose model ids match is chosen; --protocol NAME forces one, --option KEY=VALUE sets its options."
    );
    Ok(ExitCode::SUCCESS)
}

pub use crate::text::parse_size;

/// Parses `KEY=VALUE`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every option and argument says what it is for (`--help`, the man page, completions).
    #[test]
    fn every_option_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "selfagent", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:#?}");
    }
}
