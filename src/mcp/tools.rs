//! The MCP tools: their input schemas (what a model reads to use them unaided) and what
//! they do. A mistake (an unknown action, an off-screen point, an unknown desktop, one that
//! died) is a tool error (`isError`) with the reason; the server keeps serving.

use super::desk::{Desk, Ending, Made};
use super::{ConnId, Hub};
use crate::action::Action;
use crate::desktop::{ActionError, ConnectOptions, Desktop, DesktopError, WindowMatch};
use crate::event::{Event, Status};
use crate::sandbox::{ExecOptions, SandboxSpec};
use base64::Engine as _;
use rmcp::RoleServer;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, JsonObject, ProgressNotificationParam,
    Tool, ToolAnnotations,
};
use rmcp::schemars::JsonSchema;
use rmcp::service::RequestContext;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes of a command's stdout (and of its stderr) returned by `exec`.
const MAX_EXEC_OUTPUT: usize = 64 << 10;
/// `read_file`'s default and largest limits.
const READ_DEFAULT: u64 = 1 << 20;
const READ_MAX: u64 = 16 << 20;
/// How long a desktop may take to come up.
const READY: Duration = Duration::from_secs(60);
/// New desktops stop themselves after this long even if this server is killed and nobody
/// prunes them (persistent ones: never).
const DESKTOP_TTL: u64 = 12 * 3600;

/// A tool's failure, said to the model.
type Failed = String;

fn error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

fn structured<T: Serialize>(value: &T) -> CallToolResult {
    CallToolResult::structured(serde_json::to_value(value).unwrap_or(Value::Null))
}

// ----- inputs -----

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct SandboxUp {
    /// Screen width in pixels (default 1280).
    width: Option<u32>,
    /// Screen height in pixels (default 800).
    height: Option<u32>,
    /// The desktop image: selfagent-desktop:latest (browser, terminal, editor) or
    /// selfagent-desktop-office:latest (also LibreOffice, GIMP, VLC, Thunderbird).
    image: Option<String>,
    /// A name for the desktop (lower-case letters, digits, '-'); needed with `persist`.
    name: Option<String>,
    /// Keep the desktop, and its home directory, after this session ends (needs `name`).
    persist: Option<bool>,
    /// Start from a saved snapshot (a tag made with `selfagent sandbox snapshot`).
    from: Option<String>,
    /// What you are about to do on it, in words: recorded as the session's instruction.
    instruction: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct SandboxDown {
    /// The desktop: the `sandbox` id sandbox_up returned (or its name).
    sandbox: String,
    /// How the work on it went, recorded with the session: succeeded, failed or stopped
    /// (default).
    status: Option<DownStatus>,
    /// The answer or result to record with the session.
    answer: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "snake_case")]
enum DownStatus {
    Succeeded,
    Failed,
    Stopped,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct NoInput {}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct OnDesktop {
    /// The desktop: the `sandbox` id sandbox_up returned (or its name).
    sandbox: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct Screenshot {
    /// The desktop: the `sandbox` id sandbox_up returned (or its name).
    sandbox: String,
    /// Shrink the image by this factor (0.1 to 1; default 1). Coordinates for `computer`
    /// stay in screen pixels: divide the image's by the factor.
    #[schemars(range(min = 0.1, max = 1.0))]
    scale: Option<f64>,
}

/// Anthropic's computer-tool actions (one per call), and `launch` / `open`.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Read as the raw input (Action::from_tool_input); here for the schema.
enum ComputerAction {
    /// Press a key or combination (`text`: "Return", "ctrl+s", "alt+Tab").
    Key,
    /// Type `text`.
    Type,
    MouseMove,
    LeftClick,
    RightClick,
    MiddleClick,
    DoubleClick,
    TripleClick,
    /// Drag from `start_coordinate` to `coordinate`.
    LeftClickDrag,
    LeftMouseDown,
    LeftMouseUp,
    /// Scroll at `coordinate`: `scroll_direction` and `scroll_amount`.
    Scroll,
    /// Hold the key `text` for `duration` seconds.
    HoldKey,
    /// Wait `duration` seconds.
    Wait,
    Screenshot,
    CursorPosition,
    /// An image of `region` [x0, y0, x1, y1] at full resolution.
    Zoom,
    /// Start an application (`app`: terminal, browser, editor, files, or a command).
    Launch,
    /// Open `target` (a URL or a file) with its application.
    Open,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Read as the raw input; here for the schema.
enum Direction {
    Up,
    Down,
    Left,
    Right,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // The action is read from the raw input; this checks its types.
struct Computer {
    /// The desktop: the `sandbox` id sandbox_up returned (or its name).
    sandbox: String,
    /// The action.
    action: ComputerAction,
    /// [x, y] in screen pixels (clicks, mouse_move, scroll, the end of a drag).
    coordinate: Option<[i64; 2]>,
    /// [x, y] where left_click_drag starts.
    start_coordinate: Option<[i64; 2]>,
    /// The text to type, or the key for key and hold_key ("ctrl+c", "Return"); for
    /// clicks, keys to hold during the click ("shift").
    text: Option<String>,
    /// For scroll: up, down, left or right.
    scroll_direction: Option<Direction>,
    /// Scroll clicks (default 3).
    scroll_amount: Option<u32>,
    /// Seconds, for wait and hold_key.
    duration: Option<f64>,
    /// [x0, y0, x1, y1], for zoom.
    region: Option<[i64; 4]>,
    /// The application for launch.
    app: Option<String>,
    /// The URL or file for open.
    target: Option<String>,
    /// Return a screenshot of the screen after the action (default false).
    screenshot: Option<bool>,
    /// Wait for the screen to be quiet after the action (default true).
    settle: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct Exec {
    /// The desktop: the `sandbox` id sandbox_up returned (or its name).
    sandbox: String,
    /// A shell command (sh -c), run as the desktop's user in its home directory.
    command: String,
    /// Kill it after this many seconds (default 60).
    timeout: Option<f64>,
    /// Text written to its standard input.
    stdin: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct ReadFile {
    /// The desktop: the `sandbox` id sandbox_up returned (or its name).
    sandbox: String,
    /// An absolute path, or one relative to the home directory /home/user.
    path: String,
    /// Refuse files larger than this many bytes (default 1 MiB, at most 16 MiB).
    max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct WriteFile {
    /// The desktop: the `sandbox` id sandbox_up returned (or its name).
    sandbox: String,
    /// An absolute path, or one relative to the home directory /home/user; missing
    /// directories are made.
    path: String,
    /// The file's contents: text, or base64 with `encoding: "base64"`.
    content: String,
    /// utf8 (default) or base64.
    encoding: Option<Encoding>,
    /// Make it executable.
    executable: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(rename_all = "snake_case")]
enum Encoding {
    Utf8,
    Base64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct WaitWindow {
    /// The desktop: the `sandbox` id sandbox_up returned (or its name).
    sandbox: String,
    /// A regular expression the window's title must match.
    title: Option<String>,
    /// A regular expression the window's class must match (e.g. "xterm", "firefox").
    class: Option<String>,
    /// Seconds to wait (default 10, at most 120).
    timeout: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(deny_unknown_fields)]
struct RunTask {
    /// The task, in words.
    task: String,
    /// Run on this desktop (from sandbox_up); without it, on a fresh one removed afterwards.
    sandbox: Option<String>,
    /// The model id (default: the server's --model).
    model: Option<String>,
    /// The model's endpoint (default: the server's --base-url).
    base_url: Option<String>,
    /// The model's protocol (default: chosen from the model id; see `selfagent protocols`).
    protocol: Option<String>,
    /// Steps at most (default: the server's, 50).
    max_steps: Option<u32>,
    /// Seconds at most.
    timeout: Option<f64>,
}

// ----- outputs -----

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct DesktopInfo {
    /// The id to pass to the other tools.
    sandbox: String,
    name: String,
    width: u32,
    height: u32,
    /// The noVNC page to watch and drive it (its token inside).
    view_url: Option<String>,
    /// A page to watch it without control.
    view_only_url: Option<String>,
    /// The recording session of the computer calls on it.
    session: String,
    /// Made by this server (else attached by id).
    made_here: bool,
    persist: bool,
    /// Seconds since the server took it.
    age_s: f64,
    /// Seconds since it was last used.
    idle_s: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct Upped {
    #[serde(flatten)]
    desktop: DesktopInfo,
    /// From a warm pool (`selfagent pool up`).
    pooled: bool,
    /// Milliseconds until it was ready.
    ready_ms: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct Listed {
    desktops: Vec<DesktopInfo>,
    /// How many desktops this server may make at once.
    max_desktops: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct Executed {
    exit_code: i64,
    stdout: String,
    stderr: String,
    timed_out: bool,
    /// Output beyond 64 KiB per stream was left out.
    truncated: bool,
    duration_ms: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct WindowInfo {
    /// The X window id.
    id: u32,
    title: String,
    /// WM_CLASS class ("Xfce4-terminal", "firefox-esr").
    class: String,
    /// WM_CLASS instance ("xfce4-terminal", "Navigator").
    instance: String,
    x: i32,
    y: i32,
    width: u32,
    height: u32,
    /// It has the focus.
    active: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct Windows {
    windows: Vec<WindowInfo>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct Waited {
    window: WindowInfo,
    waited_ms: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct Acted {
    /// The step of the desktop's recording session.
    step: u32,
    /// The action done, in selfagent's form.
    action: Value,
    /// Text the action produced (cursor_position).
    text: Option<String>,
    act_ms: f64,
    /// How long the screen took to be quiet, when waited for.
    settle_ms: Option<f64>,
    /// The screen changed after the action.
    changed: Option<bool>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
struct TaskDone {
    /// The recording session of the episode.
    session: String,
    /// succeeded, failed, stopped, error or needs_user.
    status: String,
    /// What ended it: model, step_limit, time_limit, user, error, harness, ...
    ended_by: String,
    answer: Option<String>,
    error: Option<String>,
    steps: u32,
    tokens_in: u64,
    tokens_out: u64,
    wall_ms: u64,
}

// ----- the list -----

fn tool<I: JsonSchema + 'static>(name: &'static str, description: &'static str) -> Tool {
    Tool::new(name, description, Arc::new(JsonObject::new())).with_input_schema::<I>()
}

fn hints(read_only: bool, destructive: bool) -> ToolAnnotations {
    let mut a = ToolAnnotations::default();
    a.read_only_hint = Some(read_only);
    a.destructive_hint = Some(destructive);
    a.open_world_hint = Some(false);
    a
}

pub fn list() -> Vec<Tool> {
    vec![
        tool::<SandboxUp>(
            "sandbox_up",
            "Start a Linux desktop (Xvnc, a window manager, a browser, a terminal) in an isolated container and wait until it is drawn. Returns its `sandbox` id for the other tools, its size and a URL to watch it. Comes from a warm pool when one matches.",
        )
        .with_output_schema::<Upped>()
        .annotate(hints(false, false)),
        tool::<SandboxDown>(
            "sandbox_down",
            "Close a desktop: its recording ends (with the status and answer given) and, if this server made it, it is removed (a persistent one keeps its home directory).",
        )
        .annotate(hints(false, true)),
        tool::<NoInput>("sandbox_list", "The desktops this server holds.")
            .with_output_schema::<Listed>()
            .annotate(hints(true, false)),
        tool::<Screenshot>(
            "screenshot",
            "A PNG screenshot of the desktop, optionally scaled down; the text says its size.",
        )
        .annotate(hints(true, false)),
        tool::<Computer>(
            "computer",
            "Use the desktop's mouse and keyboard: one action of Anthropic's computer tool per call (key, type, mouse_move, left_click, right_click, middle_click, double_click, triple_click, left_click_drag, left_mouse_down, left_mouse_up, scroll, hold_key, wait, screenshot, cursor_position, zoom), plus launch and open. Coordinates are screen pixels. Waits until the screen is quiet afterwards; with screenshot=true returns the screen after it. Every call is recorded.",
        )
        .with_output_schema::<Acted>()
        .annotate(hints(false, true)),
        tool::<Exec>(
            "exec",
            "Run a shell command in the desktop as its user; returns the exit code, stdout and stderr (64 KiB each at most).",
        )
        .with_output_schema::<Executed>()
        .annotate(hints(false, true)),
        tool::<ReadFile>(
            "read_file",
            "Read a regular file from the desktop (a symbolic link is followed once; devices, pipes and files over the limit are refused). Text comes back as text, images as images, anything else as base64.",
        )
        .annotate(hints(true, false)),
        tool::<WriteFile>(
            "write_file",
            "Write a file in the desktop (text or base64), owned by the desktop's user.",
        )
        .annotate(hints(false, true)),
        tool::<OnDesktop>(
            "windows",
            "The desktop's top-level windows: id, title, class, position, size, and which has the focus.",
        )
        .with_output_schema::<Windows>()
        .annotate(hints(true, false)),
        tool::<WaitWindow>(
            "wait_window",
            "Wait until a window whose title and/or class match the regular expressions is shown; an error after the timeout.",
        )
        .with_output_schema::<Waited>()
        .annotate(hints(true, false)),
        tool::<RunTask>(
            "run_task",
            "Hand a task to selfagent's own agent loop (any model protocol: Anthropic, OpenAI, Gemini, UI-TARS, Qwen, ...) on a desktop; progress is reported per step, cancelling the call stops the episode. Returns the outcome, the answer and the recorded session.",
        )
        .with_output_schema::<TaskDone>()
        .annotate(hints(false, true)),
    ]
}

// ----- dispatch -----

fn parse<T: serde::de::DeserializeOwned>(args: &JsonObject) -> Result<T, Failed> {
    serde_json::from_value(Value::Object(args.clone())).map_err(|e| format!("bad arguments: {e}"))
}

pub async fn call(
    hub: &Arc<Hub>,
    owner: Option<ConnId>,
    request: CallToolRequestParams,
    ctx: RequestContext<RoleServer>,
) -> CallToolResult {
    let args = request.arguments.clone().unwrap_or_default();
    let name = request.name.as_ref();
    let started = Instant::now();
    let result = match name {
        "sandbox_up" => match parse(&args) {
            Ok(p) => sandbox_up(hub, owner, p).await,
            Err(e) => Err(e),
        },
        "sandbox_down" => match parse(&args) {
            Ok(p) => sandbox_down(hub, p).await,
            Err(e) => Err(e),
        },
        "sandbox_list" => match parse::<NoInput>(&args) {
            Ok(_) => sandbox_list(hub).await,
            Err(e) => Err(e),
        },
        "screenshot" => match parse(&args) {
            Ok(p) => screenshot(hub, owner, p).await,
            Err(e) => Err(e),
        },
        "computer" => match parse::<Computer>(&args) {
            Ok(p) => computer(hub, owner, &p.sandbox, args.clone()).await,
            Err(e) => Err(e),
        },
        "exec" => match parse(&args) {
            Ok(p) => exec(hub, owner, p).await,
            Err(e) => Err(e),
        },
        "read_file" => match parse(&args) {
            Ok(p) => read_file(hub, owner, p).await,
            Err(e) => Err(e),
        },
        "write_file" => match parse(&args) {
            Ok(p) => write_file(hub, owner, p).await,
            Err(e) => Err(e),
        },
        "windows" => match parse::<OnDesktop>(&args) {
            Ok(p) => windows(hub, owner, &p.sandbox).await,
            Err(e) => Err(e),
        },
        "wait_window" => match parse(&args) {
            Ok(p) => wait_window(hub, owner, p).await,
            Err(e) => Err(e),
        },
        "run_task" => match parse(&args) {
            Ok(p) => run_task(hub, owner, p, ctx).await,
            Err(e) => Err(e),
        },
        other => Err(format!(
            "no tool `{other}`: the tools are {}",
            list()
                .iter()
                .map(|t| t.name.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    };
    tracing::debug!(
        "{name} in {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    result.unwrap_or_else(|e| {
        tracing::info!("{name}: {e}");
        error(e)
    })
}

// ----- desktops -----

async fn info(desk: &Desk) -> DesktopInfo {
    let (width, height) = desk.desktop.size();
    DesktopInfo {
        sandbox: desk.sandbox.short_id().to_owned(),
        name: desk.sandbox.name().to_owned(),
        width,
        height,
        view_url: desk.sandbox.view_url(),
        view_only_url: desk.sandbox.watch_url(),
        session: desk.session().await,
        made_here: desk.made_here,
        persist: desk.persist,
        age_s: super::seconds(desk.since.elapsed()),
        idle_s: super::seconds(desk.idle_for()),
    }
}

/// The desktop `key` names: one this server holds, or a running selfagent desktop, which
/// is then attached (recorded, never removed by this server).
async fn desk(hub: &Arc<Hub>, owner: Option<ConnId>, key: &str) -> Result<Arc<Desk>, Failed> {
    if let Some(d) = hub.find(key) {
        return Ok(d);
    }
    let sandbox = hub.engine().get(key).await.map_err(|e| {
        format!("no desktop `{key}`: {e} (sandbox_list shows this server's; sandbox_up opens one)")
    })?;
    if let Some(d) = hub.find(sandbox.id()) {
        return Ok(d);
    }
    let desktop = Desktop::connect(sandbox.clone(), ConnectOptions { timeout: READY })
        .await
        .map_err(|e| format!("desktop `{key}`: {e}"))?;
    let desk = Desk::new(
        Made {
            sandbox,
            desktop,
            made_here: false,
            persist: false,
            owner,
            image: String::new(),
            instruction: None,
        },
        &hub.options().db,
    )
    .await?;
    let desk = Arc::new(desk);
    // Another call may have attached it meanwhile: keep the first.
    if let Some(first) = hub.find(desk.sandbox.id()) {
        desk.release(Ending::ConnectionClosed).await;
        return Ok(first);
    }
    hub.insert(desk.clone());
    Ok(desk)
}

/// What a failure of the desktop means: when the desktop is gone, it is released and the
/// message says so.
async fn broken(hub: &Hub, desk: &Desk, e: DesktopError) -> Failed {
    match desk.sandbox.why_gone().await {
        Some(why) => {
            if let Some(d) = hub.take(desk.sandbox.id()) {
                d.release(Ending::Died(why.clone())).await;
            }
            format!(
                "the desktop {} is gone ({why}); open another with sandbox_up",
                desk.sandbox.short_id()
            )
        }
        None => e.to_string(),
    }
}

async fn sandbox_up(
    hub: &Arc<Hub>,
    owner: Option<ConnId>,
    p: SandboxUp,
) -> Result<CallToolResult, Failed> {
    let persist = p.persist.unwrap_or(false);
    if persist && p.name.is_none() {
        return Err(
            "persist needs a name: sandbox_up {\"name\": \"work\", \"persist\": true}".into(),
        );
    }
    let slot = hub.reserve()?;
    let defaults = &hub.options().defaults;
    let mut spec = defaults.spec();
    if let Some(tag) = &p.from {
        spec.image = hub
            .engine()
            .saved_snapshot_image(tag)
            .await
            .map_err(|e| e.to_string())?;
    } else if let Some(image) = &p.image {
        spec.image = image.clone();
    }
    let spec = SandboxSpec {
        width: p.width.unwrap_or(spec.width),
        height: p.height.unwrap_or(spec.height),
        name: p.name.clone(),
        persist,
        ttl: if persist { 0 } else { DESKTOP_TTL },
        // Tied to this process: `sandbox prune` removes it if the server dies.
        owned: !persist,
        ..spec
    };
    spec.validate().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let leased = if defaults.no_pool || spec.name.is_some() || persist {
        None
    } else {
        crate::pool::lease(hub.engine(), &spec, 600, Default::default())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("leasing from a warm pool: {e}");
                None
            })
    };
    let pooled = leased.is_some();
    let sandbox = match leased {
        Some(s) => s,
        None => hub
            .engine()
            .create(&spec)
            .await
            .map_err(|e| e.to_string())?,
    };
    let ready = async {
        let desktop = Desktop::connect(sandbox.clone(), ConnectOptions { timeout: READY }).await?;
        desktop.wait_drawn(Duration::from_secs(10)).await?;
        Ok::<_, DesktopError>(desktop)
    };
    let desktop = match ready.await {
        Ok(d) => d,
        Err(e) => {
            let _ = sandbox.kill().await;
            return Err(format!("the desktop did not come up: {e}"));
        }
    };
    let ready_ms = started.elapsed().as_millis() as u64;
    let made = Made {
        sandbox: sandbox.clone(),
        desktop,
        made_here: true,
        persist,
        owner,
        image: spec.image.clone(),
        instruction: p.instruction,
    };
    let desk = match Desk::new(made, &hub.options().db).await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            let _ = sandbox.kill().await;
            return Err(e);
        }
    };
    hub.insert(desk.clone());
    drop(slot);
    Ok(structured(&Upped {
        desktop: info(&desk).await,
        pooled,
        ready_ms,
    }))
}

async fn sandbox_down(hub: &Arc<Hub>, p: SandboxDown) -> Result<CallToolResult, Failed> {
    let desk = hub.find(&p.sandbox).ok_or_else(|| {
        format!(
            "this server holds no desktop `{}` (sandbox_list shows what it holds)",
            p.sandbox
        )
    })?;
    let Some(desk) = hub.take(desk.sandbox.id()) else {
        return Err(format!("desktop `{}` is being closed already", p.sandbox));
    };
    let session = desk.session().await;
    let status = match p.status.unwrap_or(DownStatus::Stopped) {
        DownStatus::Succeeded => Status::Succeeded,
        DownStatus::Failed => Status::Failed,
        DownStatus::Stopped => Status::Stopped,
    };
    desk.release(Ending::Down {
        status,
        answer: p.answer,
    })
    .await;
    let removed = desk.made_here;
    Ok(CallToolResult::success(vec![ContentBlock::text(format!(
        "{} {}; its recording is session {session}",
        desk.sandbox.short_id(),
        if removed {
            "removed"
        } else {
            "let go (this server did not make it, so it keeps running)"
        }
    ))]))
}

async fn sandbox_list(hub: &Arc<Hub>) -> Result<CallToolResult, Failed> {
    let mut desktops = Vec::new();
    for d in hub.all() {
        desktops.push(info(&d).await);
    }
    Ok(structured(&Listed {
        desktops,
        max_desktops: hub.options().max_desktops,
    }))
}

async fn screenshot(
    hub: &Arc<Hub>,
    owner: Option<ConnId>,
    p: Screenshot,
) -> Result<CallToolResult, Failed> {
    let scale = p.scale.unwrap_or(1.0);
    if !(0.1..=1.0).contains(&scale) {
        return Err(format!("scale must be between 0.1 and 1, got {scale}"));
    }
    let desk = desk(hub, owner, &p.sandbox).await?;
    let _use = desk.in_use();
    let (w, h) = desk.desktop.size();
    let (png, iw, ih) = if scale >= 1.0 {
        let shot = match desk.desktop.screenshot().await {
            Ok(s) => s,
            Err(e) => return Err(broken(hub, &desk, e).await),
        };
        (shot.png.as_ref().clone(), shot.width, shot.height)
    } else {
        let (fw, fh, rgb) = match desk.desktop.frame_rgb() {
            Ok(f) => f,
            Err(e) => return Err(broken(hub, &desk, e).await),
        };
        let to = (
            ((fw as f64 * scale).round() as u32).max(1),
            ((fh as f64 * scale).round() as u32).max(1),
        );
        let png = tokio::task::spawn_blocking(move || {
            let small = crate::model::protocol::resize_rgb(fw, fh, &rgb, to)?;
            crate::desktop::encode_png(to.0, to.1, &small).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        (png, to.0, to.1)
    };
    let text = if scale >= 1.0 {
        format!("{iw}x{ih} PNG of the {w}x{h} screen")
    } else {
        format!(
            "{iw}x{ih} PNG of the {w}x{h} screen, scaled by {scale}: for `computer`, divide the image's coordinates by {scale}"
        )
    };
    Ok(CallToolResult::success(vec![
        ContentBlock::image(
            base64::engine::general_purpose::STANDARD.encode(&png),
            "image/png",
        ),
        ContentBlock::text(text),
    ]))
}

async fn computer(
    hub: &Arc<Hub>,
    owner: Option<ConnId>,
    key: &str,
    mut args: JsonObject,
) -> Result<CallToolResult, Failed> {
    args.remove("sandbox");
    let want_shot = args
        .remove("screenshot")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let settle = args
        .remove("settle")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let input = Value::Object(args);
    let desk = desk(hub, owner, key).await?;
    let _use = desk.in_use();
    let action = match Action::from_tool_input(&input) {
        Ok(a) => a,
        Err(e) => {
            desk.refused(&input, &e.to_string()).await;
            return Err(e.to_string());
        }
    };
    let done = match desk.act(&action, &input, settle).await {
        Ok(d) => d,
        Err(ActionError::Invalid(e)) => return Err(e.to_string()),
        Err(ActionError::Desktop(e)) => return Err(broken(hub, &desk, e).await),
    };
    let mut result = structured(&Acted {
        step: done.step,
        action: serde_json::to_value(&action).unwrap_or(Value::Null),
        text: done.output.text.clone(),
        act_ms: (done.act_ms * 10.0).round() / 10.0,
        settle_ms: done.settle.as_ref().map(|s| s.waited_ms.round()),
        changed: done.settle.as_ref().map(|s| s.changes > 0),
    });
    let image = match (&done.output.image, want_shot) {
        (Some(i), _) => Some(i.png.clone()),
        (None, true) => Some(done.after.png.clone()),
        (None, false) => None,
    };
    if let Some(png) = image {
        result.content.push(ContentBlock::image(
            base64::engine::general_purpose::STANDARD.encode(png.as_slice()),
            "image/png",
        ));
    }
    Ok(result)
}

async fn exec(hub: &Arc<Hub>, owner: Option<ConnId>, p: Exec) -> Result<CallToolResult, Failed> {
    let timeout = p.timeout.unwrap_or(60.0);
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 3600.0) {
        return Err("timeout must be between 0 and 3600 seconds".into());
    }
    let desk = desk(hub, owner, &p.sandbox).await?;
    let _use = desk.in_use();
    let out = desk
        .sandbox
        .sh(
            &p.command,
            &ExecOptions {
                stdin: p.stdin.map(String::into_bytes),
                timeout: Some(Duration::from_secs_f64(timeout)),
                ..Default::default()
            },
        )
        .await;
    let out = match out {
        Ok(o) => o,
        Err(e) => return Err(broken(hub, &desk, DesktopError::Sandbox(e)).await),
    };
    let cut = |b: &[u8]| {
        let keep = &b[..b.len().min(MAX_EXEC_OUTPUT)];
        String::from_utf8_lossy(keep).into_owned()
    };
    let truncated =
        out.truncated || out.stdout.len() > MAX_EXEC_OUTPUT || out.stderr.len() > MAX_EXEC_OUTPUT;
    let mut result = structured(&Executed {
        exit_code: out.exit_code,
        stdout: cut(&out.stdout),
        stderr: cut(&out.stderr),
        timed_out: out.timed_out,
        truncated,
        duration_ms: out.duration_ms,
    });
    // A command that failed is still a result the model reads, not a tool error.
    result.is_error = Some(false);
    Ok(result)
}

/// The MIME type of an image file by its first bytes.
fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF8") {
        Some("image/gif")
    } else {
        None
    }
}

async fn read_file(
    hub: &Arc<Hub>,
    owner: Option<ConnId>,
    p: ReadFile,
) -> Result<CallToolResult, Failed> {
    let limit = p.max_bytes.unwrap_or(READ_DEFAULT);
    if limit == 0 || limit > READ_MAX {
        return Err(format!("max_bytes must be between 1 and {READ_MAX}"));
    }
    let desk = desk(hub, owner, &p.sandbox).await?;
    let _use = desk.in_use();
    let bytes = desk
        .sandbox
        .read_file_limited(&p.path, limit)
        .await
        .map_err(|e| e.to_string())?;
    let size = bytes.len();
    let content = if let Some(mime) = image_type(&bytes) {
        vec![
            ContentBlock::image(
                base64::engine::general_purpose::STANDARD.encode(&bytes),
                mime,
            ),
            ContentBlock::text(format!("{}: {size} bytes, {mime}", p.path)),
        ]
    } else {
        match String::from_utf8(bytes) {
            Ok(text) => vec![ContentBlock::text(text)],
            Err(e) => vec![
                ContentBlock::text(format!(
                    "{}: {size} bytes, not UTF-8 text; base64 follows",
                    p.path
                )),
                ContentBlock::text(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
            ],
        }
    };
    Ok(CallToolResult::success(content))
}

async fn write_file(
    hub: &Arc<Hub>,
    owner: Option<ConnId>,
    p: WriteFile,
) -> Result<CallToolResult, Failed> {
    let bytes = match p.encoding.unwrap_or(Encoding::Utf8) {
        Encoding::Utf8 => p.content.into_bytes(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(p.content.trim())
            .map_err(|e| format!("content is not valid base64: {e}"))?,
    };
    let desk = desk(hub, owner, &p.sandbox).await?;
    let _use = desk.in_use();
    let mode = if p.executable.unwrap_or(false) {
        0o755
    } else {
        0o644
    };
    desk.sandbox
        .write_file_mode(&p.path, &bytes, mode)
        .await
        .map_err(|e| e.to_string())?;
    Ok(CallToolResult::success(vec![ContentBlock::text(format!(
        "wrote {} bytes to {}",
        bytes.len(),
        p.path
    ))]))
}

fn window_info(w: &crate::desktop::Window) -> WindowInfo {
    WindowInfo {
        id: w.id,
        title: w.title.clone(),
        class: w.class.clone(),
        instance: w.instance.clone(),
        x: w.x,
        y: w.y,
        width: w.width,
        height: w.height,
        active: w.active,
    }
}

async fn windows(
    hub: &Arc<Hub>,
    owner: Option<ConnId>,
    key: &str,
) -> Result<CallToolResult, Failed> {
    let desk = desk(hub, owner, key).await?;
    let _use = desk.in_use();
    match desk.desktop.windows().await {
        Ok(list) => Ok(structured(&Windows {
            windows: list.iter().map(window_info).collect(),
        })),
        Err(e) => Err(broken(hub, &desk, e).await),
    }
}

async fn wait_window(
    hub: &Arc<Hub>,
    owner: Option<ConnId>,
    p: WaitWindow,
) -> Result<CallToolResult, Failed> {
    let regex = |s: Option<String>| -> Result<Option<regex::Regex>, Failed> {
        s.map(|s| regex::Regex::new(&s).map_err(|e| format!("bad regular expression '{s}': {e}")))
            .transpose()
    };
    let m = WindowMatch {
        title: regex(p.title)?,
        class: regex(p.class)?,
    };
    if m.title.is_none() && m.class.is_none() {
        return Err("give a title or a class to wait for".into());
    }
    let timeout = p.timeout.unwrap_or(10.0);
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 120.0) {
        return Err("timeout must be between 0 and 120 seconds".into());
    }
    let desk = desk(hub, owner, &p.sandbox).await?;
    let _use = desk.in_use();
    let started = Instant::now();
    match desk
        .desktop
        .wait_window(&m, Duration::from_secs_f64(timeout))
        .await
    {
        Ok(w) => Ok(structured(&Waited {
            window: window_info(&w),
            waited_ms: started.elapsed().as_millis() as u64,
        })),
        Err(e @ DesktopError::Timeout { .. }) => Err(e.to_string()),
        Err(e) => Err(broken(hub, &desk, e).await),
    }
}

// ----- run_task -----

async fn run_task(
    hub: &Arc<Hub>,
    owner: Option<ConnId>,
    p: RunTask,
    ctx: RequestContext<RoleServer>,
) -> Result<CallToolResult, Failed> {
    use crate::episode::{Hooks, Plan, Source};
    if p.task.trim().is_empty() {
        return Err("the task is empty".into());
    }
    let opts = hub.options();
    let mut args = opts.defaults.clone();
    args.db = Some(opts.db.clone());
    if p.model.is_some() {
        args.model = p.model.clone();
    }
    if p.base_url.is_some() {
        args.base_url = p.base_url.clone();
    }
    if p.protocol.is_some() {
        args.protocol = p.protocol.clone();
    }
    if p.max_steps.is_some() {
        args.max_steps = p.max_steps;
    }
    if p.timeout.is_some() {
        args.timeout = p.timeout;
    }
    // An endpoint that is not there or refuses the key: said before a desktop starts.
    crate::preflight::endpoint(&mut args, &opts.file)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let cfg = crate::settings::resolve(&args, &opts.file, p.task.clone(), &Default::default())
        .map_err(|e| format!("{e:#}"))?;
    let max_steps = cfg.agent.max_steps;
    // On a held desktop: it stays; on a fresh one: it counts against the limit until the
    // episode removes it.
    let (source, held, _slot) = match &p.sandbox {
        Some(key) => {
            let d = desk(hub, owner, key).await?;
            (Source::Existing(d.sandbox.id().to_owned()), Some(d), None)
        }
        None => (args.source(), None, Some(hub.reserve()?)),
    };
    let _use = held.as_ref().map(|d| d.in_use());
    let (mut hooks, control) = Hooks::new();
    let (tx, mut events) = tokio::sync::mpsc::channel(256);
    hooks.sinks.push(tx);
    let token = ctx.meta.get_progress_token();
    let peer = ctx.peer.clone();
    let progress = tokio::spawn(async move {
        let mut last = String::new();
        while let Some(event) = events.recv().await {
            let Some(token) = &token else { continue };
            let message = match &*event {
                Event::ActionDone { action, .. } => {
                    last = crate::headless::describe(action);
                    continue;
                }
                Event::StepFinished { step, .. } => (*step, format!("step {step}: {last}")),
                _ => continue,
            };
            let _ = peer
                .notify_progress(
                    ProgressNotificationParam::new(token.clone(), f64::from(message.0))
                        .with_total(f64::from(max_steps))
                        .with_message(message.1),
                )
                .await;
            last.clear();
        }
    });
    let ct = ctx.ct.clone();
    let stopper = tokio::spawn(async move {
        ct.cancelled().await;
        tracing::info!("run_task cancelled by the client: stopping the episode");
        let _ = control.send(crate::agent::Command::Stop).await;
    });
    let plan = Plan {
        cfg,
        spec: args.spec(),
        task: None,
        keep: false,
        snapshot: None,
        session: None,
        calibration: None,
        driver: crate::episode::Driver::Model,
        source,
    };
    let end = crate::episode::run(hub.engine(), plan, hooks).await;
    stopper.abort();
    let _ = progress.await;
    let end = end.map_err(|e| format!("{e:#}"))?;
    let o = &end.outcome;
    let done = TaskDone {
        session: end.session.clone(),
        status: o.status.to_string(),
        ended_by: serde_json::to_value(o.ended_by)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        answer: o.answer.clone(),
        error: o.error.clone(),
        steps: o.steps,
        tokens_in: o.tokens_in,
        tokens_out: o.tokens_out,
        wall_ms: o.wall_ms,
    };
    Ok(structured(&done))
}
