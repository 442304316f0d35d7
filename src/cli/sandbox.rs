//! `selfagent sandbox ...`: desktops by hand. Script-friendly: `--json` prints one JSON
//! value, errors go to stderr, `exec` passes the command's exit code through.

use crate::action::Action;
use crate::desktop::{ConnectOptions, Desktop, SettleOptions, WindowMatch};
use crate::sandbox::image::{self, BuildEvent, BuildOptions};
use crate::sandbox::{self as sb, Engine, ExecOptions, Network, SandboxSpec};
use crate::text::printable;
use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Build the desktop image from the context embedded in this binary (progress shown).
    Build(BuildArgs),
    /// Make the base image debian:bookworm-slim locally with debootstrap (no registry needed;
    /// needs root and debootstrap).
    Base {
        /// Rebuild it even if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Start a desktop and wait until it is ready; print its id, VNC address and view URL.
    Up(UpArgs),
    /// List selfagent desktops.
    Ls {
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
        /// List the desktops of these engines (repeat; default: `[[engines]]` in the config
        /// file, else the local engine), with the engine of each.
        #[arg(long = "engine", value_name = "URL")]
        engines: Vec<sb::EngineSpec>,
    },
    /// Stop and remove desktops (a persistent one keeps its home volume: see `rm`).
    Down {
        /// Ids (or unique prefixes) or names.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Every selfagent desktop but the persistent ones (remove those by name).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Remove desktops by name, with --volumes also a persistent one's home volume.
    Rm {
        /// The sandboxes: ids, unique id prefixes or names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Remove the home volumes too (everything the desktop kept is gone).
        #[arg(long)]
        volumes: bool,
    },
    /// Stop a desktop; a persistent one keeps its files for `start`.
    Stop {
        /// The sandbox: an id, a unique id prefix or a name.
        name: String,
    },
    /// Start a stopped desktop again and wait until it is ready.
    Start {
        /// The sandbox: an id, a unique id prefix or a name.
        name: String,
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Save a desktop's state (its files, its home directory) under TAG; `up --from TAG`,
    /// `run --from TAG` and a task's `from = "TAG"` start new desktops from it, each on its
    /// own. With --remove: remove the snapshot TAG.
    Snapshot {
        /// The desktop (id or name); not with --remove.
        #[arg(required_unless_present = "remove")]
        name: Option<String>,
        /// The snapshot's tag (lower-case letters, digits, '_', '.', '-').
        #[arg(required_unless_present = "remove")]
        tag: Option<String>,
        /// Remove this saved snapshot.
        #[arg(long, value_name = "TAG", conflicts_with_all = ["name", "tag"])]
        remove: Option<String>,
    },
    /// Remove desktops that are expired, stopped, or whose selfagent process is gone.
    Prune {
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Saved snapshots (`sandbox snapshot`), and the final-state snapshot images of graded
    /// episodes (what `grade` re-grades from; --prune removes those only). --json lists
    /// the final-state ones (`--saved` the saved ones).
    Snapshots {
        /// With --json: the saved snapshots.
        #[arg(long)]
        saved: bool,
        /// Remove them: all, or with --older-than only the older ones.
        #[arg(long)]
        prune: bool,
        /// With --prune: only those older than this many days.
        #[arg(long, value_name = "DAYS", requires = "prune")]
        older_than: Option<f64>,
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Save a screenshot (PNG) of a desktop.
    Shot {
        /// The sandbox: an id, a unique id prefix or a name.
        id: String,
        /// Write the PNG here.
        #[arg(short, long, value_name = "FILE.png")]
        output: PathBuf,
        /// Draw the mouse pointer in.
        #[arg(long)]
        cursor: bool,
    },
    /// Perform one action, given as Anthropic computer-tool input, and print the result as JSON.
    ///
    /// Examples: '{"action":"left_click","coordinate":[100,200]}', '{"action":"type","text":"hi"}',
    /// '{"action":"key","text":"ctrl+alt+t"}', '{"action":"scroll","scroll_direction":"down",
    /// "scroll_amount":3}', '{"action":"launch","app":"terminal"}', '{"action":"open","target":"https://..."}'.
    Act {
        /// The sandbox: an id, a unique id prefix or a name.
        id: String,
        /// The action as JSON.
        action: String,
        /// Do not wait for the screen to settle afterwards.
        #[arg(long)]
        no_settle: bool,
        /// Save the action's image (screenshot, zoom) here.
        #[arg(short, long, value_name = "FILE.png")]
        output: Option<PathBuf>,
    },
    /// Run a command in a desktop; its exit code becomes ours.
    Exec {
        /// The sandbox: an id, a unique id prefix or a name.
        id: String,
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Pass our stdin to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Run in the background; print the process id and log file.
        #[arg(short, long, conflicts_with = "interactive")]
        background: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy files or directories: `cp ./local ID:/path` or `cp ID:/path ./local`. Out of a
    /// desktop, what the agent made is treated as hostile: the copy stays below the local
    /// path (links leading elsewhere and special files are refused and listed), sparse
    /// files stay sparse, and more than --max-size of file data stops it. Exit code 2 when
    /// something was not copied (each is listed on stderr).
    Cp {
        /// From: a host path, or SANDBOX:PATH inside a desktop.
        src: String,
        /// To: a host path, or SANDBOX:PATH inside a desktop.
        dst: String,
        /// Most bytes of file data to copy out of a desktop (apparent sizes).
        #[arg(long, default_value = "1g", value_parser = crate::text::parse_size)]
        max_size: i64,
        /// Print what was copied as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the windows of a desktop.
    Windows {
        /// The sandbox: an id, a unique id prefix or a name.
        id: String,
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The screen's accessibility tree (AT-SPI) in OSWorld's linearized form: one element a
    /// line (tag, name, text, class, description, position, size), invisible and zero-size
    /// elements left out by OSWorld's own filter. Office desktops only.
    A11y {
        /// The sandbox: an id, a unique id prefix or a name.
        id: String,
        /// The elements as JSON objects.
        #[arg(long, conflicts_with = "xml")]
        json: bool,
        /// The whole tree as OSWorld's XML (what its `accessibility_tree` getter returns).
        #[arg(long)]
        xml: bool,
    },
    /// Wait until a window whose title (and/or class) matches appears.
    WaitWindow {
        /// The sandbox: an id, a unique id prefix or a name.
        id: String,
        /// Regex on the window title.
        #[arg(long, required_unless_present = "class")]
        title: Option<String>,
        /// Regex on the WM_CLASS class or instance.
        #[arg(long)]
        class: Option<String>,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the live view URL (noVNC in a browser; several viewers may watch at once).
    View {
        /// The sandbox: an id, a unique id prefix or a name.
        id: String,
        /// A URL to watch without control: the view proxy drops everything its viewers
        /// send but screen requests, and Xvnc ignores input from its password.
        #[arg(long)]
        view_only: bool,
        /// Only the first visible window whose title matches this regex, followed as it
        /// moves and resizes; each call adds a stream (several windows side by side).
        #[arg(long, value_name = "REGEX")]
        window: Option<String>,
        /// With --window: print the stream's number, window and title as JSON too.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Which desktop: `office` adds LibreOffice, GIMP, VLC, Thunderbird, Chromium and
    /// OSWorld's evaluators on top of the default image (built first if missing).
    #[arg(long, value_enum, default_value = "default")]
    flavor: image::Flavor,
    /// Image tag (default: selfagent-desktop:latest, or :office for --flavor office).
    #[arg(long)]
    tag: Option<String>,
    /// A certificate (PEM) to trust while building and in the image, for a
    /// TLS-inspecting proxy between this machine and PyPI or Debian; repeatable.
    /// Without it, the certificates this machine added itself
    /// (/usr/local/share/ca-certificates) are trusted too, as this machine trusts them.
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_certs: Vec<PathBuf>,
    /// Trust only the image's own certificates (and --ca-cert), not this machine's added ones.
    #[arg(long)]
    no_host_certs: bool,
    /// Build arguments, e.g. EXTRA_PACKAGES="gimp libreoffice-calc".
    #[arg(long = "build-arg", value_name = "KEY=VALUE", value_parser = super::parse_key_value)]
    build_args: Vec<(String, String)>,
    /// Rebuild every layer (fetch the packages again).
    #[arg(long)]
    no_cache: bool,
    /// If the base image is missing and cannot be pulled, make it locally first (as
    /// `selfagent sandbox base`; needs root and debootstrap).
    #[arg(long)]
    bootstrap_base: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NetworkArg {
    Bridge,
    None,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Screen width in pixels.
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// Screen height in pixels.
    #[arg(long, default_value_t = 800)]
    height: u32,
    /// Screen DPI (scales fonts and toolkits).
    #[arg(long, default_value_t = 96)]
    dpi: u32,
    /// Seconds until the desktop stops itself (0: never). Default: 3600; with --persist, never.
    #[arg(long)]
    ttl: Option<u64>,
    /// A name to find it by (letters, digits, '_', '.', '-').
    #[arg(long)]
    name: Option<String>,
    /// A desktop to come back to: its home directory on a volume, kept through `stop` and
    /// `start` and restarts of the Docker engine, never pruned (`rm --volumes` removes it).
    #[arg(long, requires = "name")]
    persist: bool,
    /// Start from a saved snapshot (`sandbox snapshot NAME TAG`) instead of the image.
    #[arg(long, value_name = "TAG")]
    from: Option<String>,
    /// The desktop image (see `selfagent sandbox build`).
    #[arg(long, default_value = sb::DEFAULT_IMAGE)]
    image: String,
    /// Memory limit (e.g. 2g).
    #[arg(long, default_value = "2g", value_parser = super::parse_size)]
    memory: i64,
    /// CPU limit.
    #[arg(long, default_value_t = 2.0)]
    cpus: f64,
    /// Process (and thread) limit.
    #[arg(long, default_value_t = 1024)]
    pids: i64,
    /// `none`: no network; VNC is then only reachable through selfagent itself.
    #[arg(long, value_enum, default_value = "bridge")]
    network: NetworkArg,
    /// Environment variables for the desktop.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = super::parse_key_value)]
    env: Vec<(String, String)>,
    /// Seconds to wait for the desktop to be ready.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Boot a new desktop even when a warm pool has a matching one ready (a pooled desktop
    /// keeps its pool's TTL, at least --ttl; one with --name is never pooled).
    #[arg(long)]
    no_pool: bool,
}

pub async fn run(cmd: SandboxCmd) -> anyhow::Result<ExitCode> {
    if let SandboxCmd::Base { force } = cmd {
        return bootstrap_base(force);
    }
    if let SandboxCmd::Ls { json, engines } = &cmd {
        let engines = if engines.is_empty() {
            crate::config::load(None)?.engines.unwrap_or_default()
        } else {
            engines.clone()
        };
        if !engines.is_empty() {
            return ls_engines(&engines, *json).await;
        }
    }
    let engine = Engine::connect().await?;
    match cmd {
        SandboxCmd::Base { .. } => unreachable!("handled above"),
        SandboxCmd::Build(args) => build(&engine, args).await,
        SandboxCmd::Up(args) => up(&engine, args).await,
        SandboxCmd::Ls { json, .. } => ls(&engine, json).await,
        SandboxCmd::Down { ids, all } => down(&engine, ids, all).await,
        SandboxCmd::Rm { names, volumes } => rm(&engine, names, volumes).await,
        SandboxCmd::Stop { name } => {
            engine.stop(&name).await?;
            crate::outln!("stopped {name}");
            Ok(ExitCode::SUCCESS)
        }
        SandboxCmd::Start { name, json } => start(&engine, name, json).await,
        SandboxCmd::Snapshot { name, tag, remove } => snapshot(&engine, name, tag, remove).await,
        SandboxCmd::Snapshots {
            saved,
            prune,
            older_than,
            json,
        } => snapshots(&engine, saved, prune, older_than, json).await,
        SandboxCmd::Prune { json } => prune(&engine, json).await,
        SandboxCmd::Shot { id, output, cursor } => shot(&engine, id, output, cursor).await,
        SandboxCmd::Act {
            id,
            action,
            no_settle,
            output,
        } => act(&engine, &id, &action, no_settle, output).await,
        SandboxCmd::Exec {
            id,
            timeout,
            interactive,
            background,
            command,
        } => exec(&engine, id, timeout, interactive, background, command).await,
        SandboxCmd::Cp {
            src,
            dst,
            max_size,
            json,
        } => cp(&engine, &src, &dst, max_size as u64, json).await,
        SandboxCmd::Windows { id, json } => windows(&engine, id, json).await,
        SandboxCmd::A11y { id, json, xml } => a11y(&engine, id, json, xml).await,
        SandboxCmd::WaitWindow {
            id,
            title,
            class,
            timeout,
            json,
        } => wait_window(&engine, id, title, class, timeout, json).await,
        SandboxCmd::View {
            id,
            view_only,
            window,
            json,
        } => view(&engine, id, view_only, window, json).await,
    }
}

async fn down(engine: &Engine, ids: Vec<String>, all: bool) -> anyhow::Result<ExitCode> {
    let ids = if all {
        engine
            .list()
            .await?
            .into_iter()
            .filter(|s| !s.persistent)
            .map(|s| s.id)
            .collect()
    } else {
        ids
    };
    for id in &ids {
        engine.remove(id).await?;
        crate::outln!("{}", crate::text::prefix(id, 12));
    }
    Ok(ExitCode::SUCCESS)
}

async fn rm(engine: &Engine, names: Vec<String>, volumes: bool) -> anyhow::Result<ExitCode> {
    for name in &names {
        let persistent = engine
            .list()
            .await?
            .into_iter()
            .find(|s| s.name == *name || s.id.starts_with(name.as_str()));
        match &persistent {
            Some(s) => {
                engine.remove(&s.id).await?;
                crate::outln!("removed {}", s.name);
            }
            None if !volumes => anyhow::bail!("no desktop named '{name}'"),
            None => {}
        }
        let home_name = persistent.map_or_else(|| name.clone(), |s| s.name);
        if volumes && engine.remove_home(&home_name).await? {
            crate::outln!("removed volume {}", sb::home_volume(&home_name));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn start(engine: &Engine, name: String, json: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let sandbox = engine.start(&name).await?;
    let desktop = Desktop::connect(sandbox.clone(), ConnectOptions::default()).await?;
    desktop.wait_drawn(Duration::from_secs(30)).await?;
    let ms = started.elapsed().as_millis();
    if json {
        crate::outln!(
            "{}",
            json!({"id": sandbox.id(), "name": sandbox.name(), "view_url": sandbox.view_url(), "ready_ms": ms})
        );
    } else {
        crate::outln!("started {} in {ms} ms", sandbox.name());
        if let Some(url) = sandbox.view_url() {
            crate::outln!("view      {url}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn snapshot(
    engine: &Engine,
    name: Option<String>,
    tag: Option<String>,
    remove: Option<String>,
) -> anyhow::Result<ExitCode> {
    if let Some(tag) = remove {
        engine.remove_saved(&tag).await?;
        crate::outln!("removed snapshot {tag}");
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(name), Some(tag)) = (name, tag) else {
        anyhow::bail!("give the desktop and the tag: sandbox snapshot NAME TAG");
    };
    let sandbox = engine.get(&name).await?;
    let started = Instant::now();
    let image = sandbox.save_snapshot(&tag).await?;
    crate::outln!(
        "saved {} as {tag} ({image}) in {:.1} s",
        sandbox.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

async fn snapshots(
    engine: &Engine,
    saved: bool,
    prune: bool,
    older_than: Option<f64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let kept = engine.saved_snapshots().await?;
    if json && saved {
        crate::outln!("{}", serde_json::to_string(&kept)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !json && !prune {
        for s in &kept {
            crate::outln!(
                "{}  saved from {}  {}  {:.1} MB",
                s.tag,
                if s.origin.is_empty() { "-" } else { &s.origin },
                crate::time::short(s.created * 1000),
                s.size as f64 / 1e6
            );
        }
    }
    let list = engine.snapshots().await?;
    let now = crate::time::now_ms() / 1000;
    let chosen: Vec<_> = list
        .into_iter()
        .filter(|s| match older_than {
            Some(days) => (now - s.created) as f64 > days * 86_400.0,
            None => true,
        })
        .collect();
    if prune {
        for s in &chosen {
            engine.remove_snapshot(&s.image).await?;
        }
    }
    if json {
        crate::outln!("{}", serde_json::to_string(&chosen)?);
    } else {
        let verb = if prune { "removed " } else { "" };
        for s in &chosen {
            crate::outln!(
                "{verb}{}  task {}  {}  {:.1} MB",
                s.image,
                if s.task.is_empty() { "-" } else { &s.task },
                crate::time::short(s.created * 1000),
                s.size as f64 / 1e6
            );
        }
        if chosen.is_empty() && (prune || kept.is_empty()) {
            crate::outln!("no snapshots");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn prune(engine: &Engine, json: bool) -> anyhow::Result<ExitCode> {
    let report = engine.prune().await?;
    if json {
        crate::outln!("{}", serde_json::to_string(&report)?);
    } else if report.removed.is_empty() && report.images.is_empty() {
        crate::outln!("nothing to prune");
    } else {
        for p in &report.removed {
            crate::outln!(
                "removed {} ({}): {}",
                crate::text::prefix(&p.id, 12),
                p.name,
                p.reason
            );
        }
        for id in &report.images {
            let id = id.trim_start_matches("sha256:");
            crate::outln!(
                "removed image {} (a removed snapshot's, used by no desktop now)",
                crate::text::prefix(id, 12)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn shot(
    engine: &Engine,
    id: String,
    output: PathBuf,
    cursor: bool,
) -> anyhow::Result<ExitCode> {
    let desktop = connect(engine, &id).await?;
    let shot = if cursor {
        desktop.screenshot_with_cursor().await?
    } else {
        desktop.screenshot().await?
    };
    std::fs::write(&output, shot.png.as_slice())
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "{}x{} PNG, {} bytes -> {}",
        shot.width,
        shot.height,
        shot.png.len(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn exec(
    engine: &Engine,
    id: String,
    timeout: Option<f64>,
    interactive: bool,
    background: bool,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let sandbox = engine.get(&id).await?;
    if background {
        let script = command
            .iter()
            .map(|a| crate::desktop::shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        let p = sandbox.spawn(&script).await?;
        crate::outln!("{}", serde_json::to_string(&p)?);
        return Ok(ExitCode::SUCCESS);
    }
    let stdin = if interactive {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        Some(buf)
    } else {
        None
    };
    let out = sandbox
        .exec(
            &command,
            &ExecOptions {
                stdin,
                timeout: timeout.map(Duration::from_secs_f64),
                ..Default::default()
            },
        )
        .await?;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    if out.timed_out {
        eprintln!("selfagent: `{}` timed out", command.join(" "));
    }
    Ok(ExitCode::from(out.exit_code.clamp(0, 255) as u8))
}

async fn a11y(engine: &Engine, id: String, json: bool, xml: bool) -> anyhow::Result<ExitCode> {
    let sandbox = engine.get(&id).await?;
    if xml {
        crate::outln!("{}", printable(&sandbox.accessibility_xml().await?));
    } else if json {
        // JSON escapes control characters itself.
        let rows = sandbox.accessibility_elements().await?;
        crate::outln!("{}", serde_json::to_string(&rows)?);
    } else {
        crate::out!("{}", printable(&sandbox.accessibility_tree().await?));
    }
    Ok(ExitCode::SUCCESS)
}

async fn windows(engine: &Engine, id: String, json: bool) -> anyhow::Result<ExitCode> {
    let desktop = connect(engine, &id).await?;
    let windows = desktop.windows().await?;
    if json {
        crate::outln!("{}", serde_json::to_string(&windows)?);
    } else {
        crate::outln!(
            "{:<10} {:>5} {:>5} {:>5}x{:<5} {:<24} TITLE",
            "ID",
            "X",
            "Y",
            "W",
            "H",
            "CLASS"
        );
        // Titles and classes are the apps' to set (the agent's): printed, never obeyed.
        for w in windows {
            let mark = if w.active { "*" } else { " " };
            crate::outln!(
                "0x{:<8x}{mark}{:>5} {:>5} {:>5}x{:<5} {:<24} {}",
                w.id,
                w.x,
                w.y,
                w.width,
                w.height,
                printable(&w.class),
                printable(&w.title)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_window(
    engine: &Engine,
    id: String,
    title: Option<String>,
    class: Option<String>,
    timeout: f64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let regex = |s: Option<String>| -> anyhow::Result<Option<regex::Regex>> {
        s.map(|s| regex::Regex::new(&s).with_context(|| format!("bad regex '{s}'")))
            .transpose()
    };
    let m = WindowMatch {
        title: regex(title)?,
        class: regex(class)?,
    };
    let desktop = connect(engine, &id).await?;
    let started = Instant::now();
    let w = desktop
        .wait_window(&m, Duration::from_secs_f64(timeout))
        .await?;
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string(
                &json!({ "window": w, "waited_ms": started.elapsed().as_millis() })
            )?
        );
    } else {
        crate::outln!(
            "0x{:x} {} ({}) after {} ms",
            w.id,
            printable(&w.title),
            printable(&w.class),
            started.elapsed().as_millis()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn view(
    engine: &Engine,
    id: String,
    view_only: bool,
    window: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let sandbox = engine.get(&id).await?;
    if sandbox.view_url().is_none() {
        bail!(
            "sandbox {} has no network, so it has no web view",
            sandbox.short_id()
        );
    }
    if let Some(regex) = window {
        let stream = sandbox.window_stream(&regex, view_only).await?;
        if json {
            crate::outln!("{}", serde_json::to_string(&stream)?);
        } else {
            crate::outln!("{}", stream.url);
            eprintln!(
                "stream {}: window {} \"{}\"",
                stream.stream,
                stream.window,
                printable(&stream.title)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let url = if view_only {
        sandbox.watch_url().with_context(|| {
            format!(
                "sandbox {} was made before view-only URLs existed: start a new one",
                sandbox.short_id()
            )
        })?
    } else {
        sandbox.view_url().unwrap_or_default()
    };
    crate::outln!("{url}");
    Ok(ExitCode::SUCCESS)
}

async fn connect(engine: &Engine, id: &str) -> anyhow::Result<Desktop> {
    let sandbox = engine.get(id).await?;
    Ok(Desktop::connect(
        sandbox,
        ConnectOptions {
            timeout: Duration::from_secs(20),
        },
    )
    .await?)
}

fn bootstrap_base(force: bool) -> anyhow::Result<ExitCode> {
    let dir = tempfile_dir()?;
    let script = dir.join("bootstrap-base.sh");
    std::fs::write(&script, image::bootstrap_script()).context("writing the bootstrap script")?;
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script);
    if force {
        cmd.arg("--force");
    }
    let status = cmd.status().context("running bash")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("selfagent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

async fn build(engine: &Engine, args: BuildArgs) -> anyhow::Result<ExitCode> {
    if args.bootstrap_base && !engine.image_exists(image::BASE_IMAGE).await? {
        eprintln!(
            "{} is missing: making it with debootstrap",
            image::BASE_IMAGE
        );
        if bootstrap_base(false)? != ExitCode::SUCCESS {
            bail!("making the base image failed (see above)");
        }
    }
    let mut ca_certs = Vec::new();
    let mut paths = args.ca_certs.clone();
    if !args.no_host_certs {
        paths.extend(host_certs(std::path::Path::new(HOST_CERTS)));
    }
    for (i, path) in paths.iter().enumerate() {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the certificate {}", path.display()))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            bail!("{} is not a PEM certificate", path.display());
        }
        ca_certs.push((format!("extra-{i}.crt"), pem));
    }
    if args.flavor == image::Flavor::Office
        && !args.build_args.iter().any(|(k, _)| k == "BASE")
        && !engine.image_exists(sb::DEFAULT_IMAGE).await?
    {
        eprintln!(
            "the office desktop is built on {}, which is missing: building it first",
            sb::DEFAULT_IMAGE
        );
        let base = BuildOptions {
            ca_certs: ca_certs.clone(),
            no_cache: args.no_cache,
            ..BuildOptions::default()
        };
        build_with_progress(engine, base).await?;
    }
    let opts = BuildOptions {
        tag: args
            .tag
            .unwrap_or_else(|| args.flavor.default_tag().to_owned()),
        flavor: args.flavor,
        build_args: args.build_args,
        no_cache: args.no_cache,
        ca_certs,
    };
    build_with_progress(engine, opts).await?;
    Ok(ExitCode::SUCCESS)
}

/// Where Debian keeps the certificates a machine added to its trust store.
const HOST_CERTS: &str = "/usr/local/share/ca-certificates";

/// The `.crt` files under `dir` (a TLS-inspecting proxy's certificate is usually there).
fn host_certs(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(host_certs(&p));
        } else if p.extension().is_some_and(|x| x == "crt") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// One image build, with a progress bar on a terminal and step lines otherwise.
async fn build_with_progress(engine: &Engine, opts: BuildOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(0);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{pos}/{len}] {elapsed:>4} {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut step = String::new();
    let result = image::build(engine, &opts, |event| match event {
        BuildEvent::Step { index, total, text } => {
            bar.set_length(u64::from(total));
            bar.set_position(u64::from(index));
            step = text.chars().take(100).collect();
            if tty {
                bar.set_message(step.clone());
            } else {
                eprintln!("[{index}/{total}] {step}");
            }
        }
        BuildEvent::Output(line) => {
            if tty {
                let line: String = line.chars().take(80).collect();
                bar.set_message(format!("{step}  | {line}"));
            }
        }
    })
    .await;
    bar.finish_and_clear();
    let id = result?;
    eprintln!(
        "built {} ({}) in {:.0} s",
        opts.tag,
        crate::text::prefix(id.trim_start_matches("sha256:"), 12),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn up(engine: &Engine, args: UpArgs) -> anyhow::Result<ExitCode> {
    let image = match &args.from {
        Some(tag) => engine.saved_snapshot_image(tag).await?,
        None => args.image,
    };
    let spec = SandboxSpec {
        image,
        persist: args.persist,
        name: args.name,
        width: args.width,
        height: args.height,
        dpi: args.dpi,
        memory: args.memory,
        cpus: args.cpus,
        pids: args.pids,
        network: match args.network {
            NetworkArg::Bridge => Network::Bridge,
            NetworkArg::None => Network::None,
        },
        ttl: args.ttl.unwrap_or(if args.persist { 0 } else { 3600 }),
        env: args.env,
        ..Default::default()
    };
    if let Ok(Some(hash)) = image::image_context(engine, &spec.image).await
        && hash != image::context_hash()
        && hash != image::context_hash_of(image::Flavor::Office)
    {
        eprintln!(
            "note: {} was built from another sandbox/ context than this binary's; \
             `selfagent sandbox build` updates it",
            spec.image
        );
    }
    let started = Instant::now();
    let leased = if args.no_pool || spec.name.is_some() || spec.ttl == 0 || spec.persist {
        None
    } else {
        crate::pool::lease(
            engine,
            &spec,
            spec.ttl,
            crate::pool::LeaseOptions {
                detached: true,
                ..Default::default()
            },
        )
        .await?
    };
    let pooled = leased.is_some();
    let sandbox = match leased {
        Some(s) => s,
        None => engine.create(&spec).await?,
    };
    let desktop = match Desktop::connect(
        sandbox.clone(),
        ConnectOptions {
            timeout: Duration::from_secs_f64(args.timeout),
        },
    )
    .await
    {
        Ok(d) => d,
        Err(e) => {
            let _ = sandbox.kill().await;
            return Err(e.into());
        }
    };
    let ready_ms = started.elapsed().as_millis();
    desktop.wait_drawn(Duration::from_secs(10)).await?;
    let drawn_ms = started.elapsed().as_millis();
    let (width, height) = desktop.size();
    let vnc = sandbox.vnc_address().map(|a| a.to_string());
    let view_url = sandbox.view_url();
    if args.json {
        let out = json!({
            "id": sandbox.id(),
            "name": sandbox.name(),
            "vnc": vnc,
            "vnc_password": sandbox.secrets().vnc_password,
            "view_url": view_url,
            "width": width,
            "height": height,
            "ttl": spec.ttl,
            "network": spec.network,
            "ready_ms": ready_ms,
            "drawn_ms": drawn_ms,
            "pooled": pooled,
        });
        crate::outln!("{}", serde_json::to_string(&out)?);
    } else {
        crate::outln!("id        {}", sandbox.id());
        crate::outln!("name      {}", sandbox.name());
        crate::outln!("screen    {width}x{height}");
        match vnc {
            Some(v) => crate::outln!(
                "vnc       {v} (password {})",
                sandbox.secrets().vnc_password
            ),
            None => crate::outln!("vnc       (no network: reachable through selfagent only)"),
        }
        if let Some(url) = view_url {
            crate::outln!("view      {url}");
        }
        crate::outln!(
            "ttl       {}",
            if spec.ttl == 0 {
                "none".to_owned()
            } else {
                format!("{} s", spec.ttl)
            }
        );
        crate::outln!(
            "ready in  {ready_ms} ms (drawn in {drawn_ms} ms){}",
            if pooled { ", from a warm pool" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sandbox ls` over several engines: every engine's desktops, each with its engine; an
/// engine that does not answer is said so (and the exit code is 1), the others are listed.
async fn ls_engines(engines: &[sb::EngineSpec], json: bool) -> anyhow::Result<ExitCode> {
    let mut list = Vec::new();
    let mut unreachable = Vec::new();
    for spec in engines {
        let listed = match Engine::connect_to(spec).await {
            Ok(engine) => engine.list().await,
            Err(e) => Err(e),
        };
        match listed {
            Ok(desktops) => list.extend(desktops.into_iter().map(|mut d| {
                d.engine = spec.url.clone();
                d
            })),
            Err(e) => unreachable.push(format!("{}: {e}", spec.url)),
        }
    }
    print_list(list, json, true)?;
    for u in &unreachable {
        eprintln!("error: engine {u}");
    }
    Ok(if unreachable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn ls(engine: &Engine, json: bool) -> anyhow::Result<ExitCode> {
    print_list(engine.list().await?, json, false)?;
    Ok(ExitCode::SUCCESS)
}

fn print_list(list: Vec<sb::SandboxInfo>, json: bool, engines: bool) -> anyhow::Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        crate::outln!("no selfagent desktops");
        return Ok(());
    }
    crate::outln!(
        "{}{:<12}  {:<16} {:<9} {:>5} {:>8}  {:<16} VIEW",
        if engines {
            format!("{:<28}  ", "ENGINE")
        } else {
            String::new()
        },
        "ID",
        "NAME",
        "STATE",
        "AGE",
        "EXPIRES",
        "VNC"
    );
    let now = sb::now_secs();
    for s in list {
        let expires = match s.expires {
            None => "never".to_owned(),
            Some(_) if s.expired => "expired".to_owned(),
            Some(e) => format!("in {}", sb::ago(e.saturating_sub(now))),
        };
        let state = if s.orphaned {
            format!("{}*", s.state)
        } else {
            s.state.clone()
        };
        crate::outln!(
            "{}{:<12}  {:<16} {:<9} {:>5} {:>8}  {:<16} {}",
            if engines {
                format!("{:<28}  ", s.engine)
            } else {
                String::new()
            },
            crate::text::prefix(&s.id, 12),
            s.name,
            state,
            sb::ago(now.saturating_sub(s.created)),
            expires,
            s.vnc.unwrap_or_else(|| "-".into()),
            s.view
                .map(|v| format!(
                    "http://{v}/ (the URL with its token: selfagent sandbox view {})",
                    crate::text::prefix(&s.id, 12)
                ))
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}

async fn act(
    engine: &Engine,
    id: &str,
    input: &str,
    no_settle: bool,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let value: serde_json::Value = match serde_json::from_str(input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: the action is not valid JSON: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let action = match Action::from_tool_input(&value) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let desktop = connect(engine, id).await?;
    let before = desktop.mark();
    let started = Instant::now();
    let result = match desktop.act(&action).await {
        Ok(out) => out,
        Err(crate::desktop::ActionError::Invalid(e)) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
        Err(crate::desktop::ActionError::Desktop(e)) => return Err(e.into()),
    };
    let act_ms = started.elapsed().as_secs_f64() * 1000.0;
    let settle = if no_settle || !action.may_change_screen() {
        None
    } else {
        Some(desktop.settle(before, SettleOptions::default()).await)
    };
    if let (Some(path), Some(image)) = (&output, &result.image) {
        std::fs::write(path, image.png.as_slice())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let out = json!({
        "ok": true,
        "action": action,
        "text": result.text,
        "cursor": result.cursor,
        "image": result.image.as_ref().map(|i| json!({"width": i.width, "height": i.height, "bytes": i.png.len(), "saved_to": output})),
        "act_ms": (act_ms * 10.0).round() / 10.0,
        "settle": settle,
    });
    crate::outln!("{}", serde_json::to_string(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// `ID:path` names a path in a sandbox; anything else is local.
fn split_remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (!id.is_empty() && !id.contains('/') && !path.is_empty()).then_some((id, path))
}

async fn cp(
    engine: &Engine,
    src: &str,
    dst: &str,
    max_size: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let report = match (split_remote(src), split_remote(dst)) {
        (None, Some((id, path))) => {
            let sandbox = engine.get(id).await?;
            let bytes = sandbox.upload(std::path::Path::new(src), path).await?;
            crate::sandbox::CopyReport {
                bytes,
                ..Default::default()
            }
        }
        (Some((id, path)), None) => {
            let sandbox = engine.get(id).await?;
            sandbox
                .download(path, std::path::Path::new(dst), max_size)
                .await?
        }
        (Some(_), Some(_)) => {
            bail!("copy between two sandboxes is not supported: copy through a local path")
        }
        (None, None) => bail!("one side must be a sandbox path, as ID:/path"),
    };
    if json {
        crate::outln!("{}", serde_json::to_string(&report)?);
    } else {
        // The paths are the agent's (names of files in its desktop).
        for r in &report.refused {
            eprintln!("not copied: {}", printable(&r.to_string()));
        }
        eprintln!(
            "{} bytes in {} ms",
            report.bytes,
            started.elapsed().as_millis()
        );
    }
    // Something was left out: say so in the exit code too.
    Ok(if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_are_recognised() {
        assert_eq!(split_remote("abc:/tmp/x"), Some(("abc", "/tmp/x")));
        assert_eq!(split_remote("./a:b/c"), None);
        assert_eq!(split_remote("/tmp/x"), None);
        assert_eq!(split_remote("abc:"), None);
    }
}
