//! `selfagent bench`: measured speed on this machine, against a baseline measured in the
//! same run, in the same container: the way the public demos drive a desktop
//! (`docker exec xdotool ...` for an action, `docker exec import -window root png:-` for a
//! screenshot).
//!
//! Numbers reported (milliseconds unless named otherwise):
//! - `ready_ms_*`: container create until the desktop is ready (VNC handshake, first frame,
//!   window manager up), over `--ready-runs` fresh containers; `drawn_ms_*` until the panel
//!   and backdrop are painted and the screen is quiet (what `sandbox up` waits for).
//! - `screenshot_ms_*`: a fresh PNG of the live framebuffer (copy and encode, no cache), on a
//!   screen full of terminal text.
//! - `input_to_effect_ms_*`: a key typed into the terminal until the framebuffer changes.
//! - `baseline_*`: the same two operations the demos' way; `*_speedup` is baseline / ours.
//! - `steps`: whole loop steps (observe, decide with an instant in-process model, act,
//!   settle, record) through the real loop and recorder, in three scenarios: `noop`
//!   (cursor_position: nothing to settle), `move` (a mouse move with no visible effect:
//!   settle waits its first-change window), `key` (a key into a terminal: settle waits for
//!   the redraw and the quiet window). With the recorder's write time per step and the
//!   bytes stored per step. Then `key via tunnels`: the key scenario with VNC and X11
//!   reached through the Docker API (how a remote engine's desktops are driven), and
//!   `tunnel_step_ratio`, its p50 over the direct one's.
//! - `pool_lease_ready_ms_*`: a warm pool's desktop leased until ready for the first
//!   screenshot; `fork_ready_ms_*`: a desktop started from a saved snapshot until ready.
//! - `protocols`: each wire format's own work per step of a 40-step conversation on the
//!   real screenshot (no network, no model): build the request and serialize its body,
//!   decode a typical reply, fold the reply and the results in; the request's bytes per
//!   step with the default history (the last 3 screenshots); resizing the screenshot to
//!   what that model sees, where it differs. The baseline: serializing the smallest request
//!   that carries one screenshot.
//! - `a11y` (office images): the accessibility tree read as `--observe` reads it (the lean
//!   walk, without elements' values and actions, then OSWorld's filter) against the whole
//!   XML OSWorld's server writes through the same filter; both must give the same elements.

use crate::action::Action;
use crate::agent::{self, AgentConfig, Emitter, Event, SessionInfo};
use crate::desktop::{ConnectOptions, Desktop, SettleOptions, WindowMatch};
use crate::model::{Check, Model, ModelError, ModelRequest, RawReply, Retry};
use crate::record::{self, Recorder};
use crate::sandbox::{Engine, ExecOptions, Sandbox, SandboxSpec};
use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Print one JSON object of named numbers.
    #[arg(long)]
    pub json: bool,
    /// Samples per measurement.
    #[arg(long, default_value_t = 40)]
    pub samples: usize,
    /// Fresh containers started to time create-to-ready.
    #[arg(long, default_value_t = 3)]
    pub ready_runs: usize,
    /// Desktop image.
    #[arg(long, default_value = crate::sandbox::DEFAULT_IMAGE)]
    pub image: String,
    /// X server in the container: xvnc (default) or xvfb (Xvfb + x11vnc; needs an image built
    /// with --build-arg EXTRA_PACKAGES="xvfb x11vnc").
    #[arg(long, default_value = "xvnc", value_parser = ["xvnc", "xvfb"])]
    pub x_server: String,
}

/// Summary statistics of one measurement, in milliseconds; or, when what the measurement
/// rests on did not hold (the screen never went quiet, so a "change" could be noise; the
/// effect never showed), why it failed: such a measurement is never printed as a number.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub p50: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Nothing to measure here, and why (a step that cannot change the screen is not
    /// settled after).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub none: Option<String>,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::failed("no samples");
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let pick = |q: f64| s[(((s.len() - 1) as f64) * q).round() as usize];
        Self {
            p50: round(pick(0.5)),
            p95: round(pick(0.95)),
            min: round(s[0]),
            max: round(s[s.len() - 1]),
            n: s.len(),
            failed: None,
            none: None,
        }
    }

    /// A measurement whose premise failed, and why.
    pub fn failed(why: impl Into<String>) -> Self {
        Self {
            failed: Some(why.into()),
            ..Self::default()
        }
    }

    /// The samples' statistics, unless some of them broke the premise: then the first
    /// reason, and how many of how many did.
    fn unless(samples: &[f64], broken: &[String], taken: usize) -> Self {
        match broken.first() {
            None => Self::of(samples),
            Some(why) => Self::failed(format!("{why} ({} of {taken} samples)", broken.len())),
        }
    }

    /// Nothing to measure, and why.
    pub fn none(why: impl Into<String>) -> Self {
        Self {
            none: Some(why.into()),
            ..Self::default()
        }
    }

    /// The median, when the measurement holds.
    pub fn median(&self) -> Option<f64> {
        (self.failed.is_none() && self.none.is_none()).then_some(self.p50)
    }
}

/// `a / b` of two medians; `None` when either measurement failed.
fn ratio(a: &Stats, b: &Stats) -> Option<f64> {
    Some(round(a.median()? / b.median()?.max(0.01)))
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub x_server: String,
    pub width: u32,
    pub height: u32,
    pub ready_ms: Stats,
    pub drawn_ms: Stats,
    /// A desktop leased from a warm pool until it is ready for the first screenshot (the
    /// lease, the handle, the VNC and X11 connections).
    pub pool_lease_ready_ms: Stats,
    /// Of which the claim (finding a ready member, renaming it, reading its details); the
    /// rest is connecting VNC and X11 to it.
    pub pool_claim_ms: Stats,
    /// `ready_ms` p50 / `pool_lease_ready_ms` p50.
    pub pool_speedup: Option<f64>,
    /// A desktop started from a saved snapshot of a used one, until ready.
    pub fork_ready_ms: Stats,
    /// Saving that snapshot.
    pub snapshot_save_ms: f64,
    pub screenshot_ms: Stats,
    pub screenshot_bytes: usize,
    pub input_to_effect_ms: Stats,
    pub settle_after_key_ms: Stats,
    pub baseline_screenshot_ms: Stats,
    pub baseline_input_to_effect_ms: Stats,
    pub screenshot_speedup: Option<f64>,
    pub input_speedup: Option<f64>,
    pub steps: Vec<StepScenario>,
    /// A key step's p50 through tunnels (the Docker API) / through the published ports.
    pub tunnel_step_ratio: Option<f64>,
    pub protocols: Vec<ProtocolCodec>,
    /// Serializing the smallest request that carries one screenshot.
    pub baseline_request_ms: Stats,
    /// Replaying a recorded 100-step episode (140x40, halfblocks): loaded and first drawn,
    /// and its first screenshot drawn.
    pub replay_first_paint_ms: f64,
    pub replay_first_screenshot_ms: f64,
    /// One window's stream (`sandbox view --window`) against the whole screen's view, both
    /// through the view proxy as a browser gets them.
    pub streams: Option<Streams>,
    /// Tool calls through `selfagent mcp` (stdio) against the CLI doing the same.
    pub mcp: Option<McpCalls>,
    /// `rerun`'s comparison of the live framebuffer with a recorded screen (the pixels
    /// copied out, the screen's cells and the target's patch compared).
    pub rerun_compare_ms: Stats,
    /// `rerun_compare_ms` p50 / `screenshot_ms` p50: what a comparison costs against the
    /// screenshot every step takes anyway.
    pub rerun_compare_vs_screenshot: Option<f64>,
    /// A 20-step key episode with an instant in-process model (no model latency at all),
    /// recorded, then the same episode done again by `rerun` without the model, on the same
    /// desktop: wall times, and the re-run's over the original's.
    pub rerun_episode: Option<RerunEpisode>,
    /// Reading the screen's accessibility tree as `--observe` does (office images only).
    pub a11y: Option<A11yRead>,
}

/// See [`Report::a11y`]: the tree read as `--observe` reads it (the lean walk, then OSWorld's
/// filter), against the baseline of the whole XML OSWorld's server writes (values and
/// actions of every element too) through the same filter, alternating, on the same screen
/// (the terminal full of text and the text editor).
#[derive(Debug, Serialize)]
pub struct A11yRead {
    pub elements: usize,
    pub lean_ms: Stats,
    pub full_ms: Stats,
    /// `full_ms` p50 / `lean_ms` p50.
    pub speedup: Option<f64>,
}

/// See [`Report::rerun_episode`].
#[derive(Debug, Serialize)]
pub struct RerunEpisode {
    pub steps: usize,
    pub original_ms: f64,
    pub rerun_ms: f64,
    pub rerun_vs_original: f64,
}

/// An MCP host's calls (`selfagent mcp` over stdio, through rmcp's client) against the same
/// work done one CLI command at a time, as a script without MCP would.
#[derive(Debug, Serialize)]
pub struct McpCalls {
    /// `tools/call screenshot` until its PNG is back.
    pub screenshot_ms: Stats,
    /// `selfagent sandbox shot ID -o FILE`.
    pub cli_shot_ms: Stats,
    pub screenshot_speedup: Option<f64>,
    /// `tools/call computer` with a key into the terminal, settled (and recorded).
    pub key_ms: Stats,
    /// `selfagent sandbox act ID '{"action":"key",...}'`, settled.
    pub cli_act_ms: Stats,
    pub key_speedup: Option<f64>,
}

/// Window stream against whole-screen view: pictures that differ from the last, per
/// second, while the window scrolls text; and the time from a key (sent over the desktop's
/// own VNC) until the picture a viewer holds has changed.
#[derive(Debug, Serialize)]
pub struct Streams {
    pub window_fps: f64,
    pub screen_fps: f64,
    pub window_key_to_update_ms: Stats,
    pub screen_key_to_update_ms: Stats,
    /// The window stream's framebuffer (the window's size) and the screen's.
    pub window_size: (u32, u32),
}

/// One scenario of whole loop steps.
#[derive(Debug, Serialize)]
pub struct StepScenario {
    pub name: String,
    /// From one step's start to the next one's.
    pub step_ms: Stats,
    /// Of which settling.
    pub settle_ms: Stats,
    /// The recorder writing one step (row, frame, totals; one transaction).
    pub record_write_ms: Stats,
    pub bytes_per_step: u64,
}

/// One protocol's work per step (see the module docs).
#[derive(Debug, Serialize)]
pub struct ProtocolCodec {
    pub protocol: String,
    pub coords: String,
    /// The size of the screenshot that model sees.
    pub sent: [u32; 2],
    /// Request built and serialized, reply decoded, both folded into the conversation.
    pub encode_decode_ms: Stats,
    /// Against the baseline's p50.
    pub ratio_to_baseline: f64,
    /// The serialized request body, per step.
    pub request_bytes_p50: u64,
    pub request_bytes_max: u64,
    /// Resizing the screen's pixels to `sent` and encoding them (when that is not the
    /// screen's size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_ms: Option<Stats>,
}

/// Each protocol's work per step on `png` (a `screen`-sized screenshot), `steps` steps.
pub fn protocol_codecs(
    png: &[u8],
    screen: (u32, u32),
    steps: usize,
) -> anyhow::Result<(Vec<ProtocolCodec>, Stats)> {
    use crate::model::protocol::{self, ProtocolConfig, ProtocolName, Shot};
    use base64::Engine as _;
    let png = std::sync::Arc::new(png.to_vec());
    // The baseline: one screenshot in the smallest request.
    let mut baseline = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        let url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png.as_slice())
        );
        let body = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}]}]});
        let bytes = serde_json::to_vec(&body)?;
        std::hint::black_box(bytes);
        baseline.push(ms(t.elapsed()));
    }
    let baseline = Stats::of(&baseline);
    let mut out = Vec::new();
    // Every protocol, with its own typical model and reply (one click).
    for name in ProtocolName::all() {
        let example = name.spec().example();
        let cfg = ProtocolConfig::for_model(name, example.model);
        let space = cfg.space;
        let geometry = protocol::geometry(&cfg, screen);
        let mut image_ms = Vec::new();
        let mut sent = png.clone();
        if geometry.sent != screen {
            // As the loop does it: from the screen's pixels, resized and encoded.
            let rgb = image::load_from_memory(&png)?.to_rgb8();
            for _ in 0..steps.min(10) {
                let t = Instant::now();
                let scaled = geometry
                    .image_from_rgb(rgb.width(), rgb.height(), rgb.as_raw())
                    .map_err(anyhow::Error::msg)?;
                image_ms.push(ms(t.elapsed()));
                sent = std::sync::Arc::new(scaled);
            }
        }
        let shot = |i: usize| Shot {
            sha256: format!("{i:064x}"),
            png: sent.clone(),
            tree: None,
        };
        let raw = example.reply;
        let mut p = protocol::create(&cfg, screen).map_err(anyhow::Error::msg)?;
        p.begin("Click the button that says OK.", &shot(0));
        let (mut times, mut bytes) = (Vec::new(), Vec::new());
        for i in 1..=steps {
            let t = Instant::now();
            let (request, recorded) = p.request();
            let body = request.to_bytes();
            let decision = p.decode(&raw).map_err(anyhow::Error::msg)?;
            p.assistant(&raw, &decision);
            p.results(
                &decision.answered_ok(),
                &shot(i),
                "The screen after your actions:",
            );
            times.push(ms(t.elapsed()));
            bytes.push(body.len() as u64);
            std::hint::black_box(recorded);
        }
        bytes.sort_unstable();
        let encode_decode_ms = Stats::of(&times);
        out.push(ProtocolCodec {
            protocol: name.to_string(),
            coords: space.to_string(),
            sent: [geometry.sent.0, geometry.sent.1],
            ratio_to_baseline: round(encode_decode_ms.p50 / baseline.p50.max(0.001)),
            encode_decode_ms,
            request_bytes_p50: bytes[bytes.len() / 2],
            request_bytes_max: bytes[bytes.len() - 1],
            image_ms: (!image_ms.is_empty()).then(|| Stats::of(&image_ms)),
        });
    }
    Ok((out, baseline))
}

fn spec(args: &BenchArgs) -> SandboxSpec {
    SandboxSpec {
        image: args.image.clone(),
        ttl: 900,
        owned: true,
        env: vec![("SELFAGENT_X_SERVER".into(), args.x_server.clone())],
        ..Default::default()
    }
}

/// Starts a desktop; returns it with the times to ready and to drawn.
async fn start(
    engine: &Engine,
    spec: &SandboxSpec,
) -> anyhow::Result<(Sandbox, Desktop, Duration, Duration)> {
    let t0 = Instant::now();
    let sandbox = engine.create(spec).await?;
    let desktop = match Desktop::connect(sandbox.clone(), ConnectOptions::default()).await {
        Ok(desktop) => desktop,
        Err(e) => {
            let _ = sandbox.kill().await;
            return Err(e.into());
        }
    };
    let ready = t0.elapsed();
    desktop.wait_drawn(Duration::from_secs(10)).await?;
    Ok((sandbox, desktop, ready, t0.elapsed()))
}

fn progress(json: bool, msg: &str) {
    if !json {
        eprintln!("bench: {msg}");
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let engine = Engine::connect().await?;
    let spec = spec(&args);
    let mut created: Vec<Sandbox> = Vec::new();
    let result = measure(&engine, &spec, &args, &mut created).await;
    for s in &created {
        let _ = s.kill().await;
    }
    let report = result?;
    if args.json {
        crate::outln!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    engine: &Engine,
    spec: &SandboxSpec,
    args: &BenchArgs,
    created: &mut Vec<Sandbox>,
) -> anyhow::Result<Report> {
    let samples = args.samples.max(5);
    progress(
        args.json,
        &format!(
            "starting {} desktops ({})",
            args.ready_runs.max(1),
            args.x_server
        ),
    );
    // Each start is timed alone: the previous desktop is removed first, so one booting
    // desktop does not slow the next one down. The last one stays for the measurements.
    let runs = args.ready_runs.max(1);
    let mut ready = Vec::new();
    let mut drawn = Vec::new();
    let mut main = None;
    for i in 0..runs {
        let (sandbox, desktop, to_ready, to_drawn) =
            start(engine, spec).await.context("starting a desktop")?;
        created.push(sandbox.clone());
        ready.push(ms(to_ready));
        drawn.push(ms(to_drawn));
        if i + 1 == runs {
            main = Some(desktop);
        } else {
            drop(desktop);
            sandbox.kill().await?;
        }
    }
    let Some(desktop) = main else {
        anyhow::bail!("no desktop started");
    };
    let (pool_lease, pool_claim) =
        pool_leases(engine, spec, runs.max(3), args.json, created).await?;
    let (fork_ready, snapshot_save) =
        forks(engine, spec, desktop.sandbox(), runs, args.json, created).await?;
    let sandbox = desktop.sandbox().clone();
    // A busy screen: a terminal full of text, focused.
    progress(args.json, "opening a terminal");
    desktop
        .act(&Action::Launch {
            app: "terminal".into(),
        })
        .await?;
    let m = WindowMatch {
        class: Some(regex::Regex::new("(?i)terminal")?),
        ..Default::default()
    };
    let term = desktop.wait_window(&m, Duration::from_secs(20)).await?;
    desktop.focus(term.id, Duration::from_secs(5)).await?;
    let fill = Action::Type {
        text: "ls -la /usr/bin | head -200\n".into(),
    };
    let before = desktop.mark();
    desktop.act(&fill).await?;
    desktop.settle(before, SettleOptions::default()).await;
    let (width, height) = desktop.size();

    progress(args.json, &format!("screenshots x{samples}"));
    let mut shot_ms = Vec::new();
    let mut shot_bytes = 0;
    for _ in 0..samples {
        let t = Instant::now();
        let shot = desktop.encode_screenshot().await?;
        shot_ms.push(ms(t.elapsed()));
        shot_bytes = shot.png.len();
    }

    progress(args.json, &format!("re-run frame comparisons x{samples}"));
    // What `rerun` does on every framebuffer change while it waits: the live pixels
    // against a recorded screen (here the screen itself, taken as a PNG and decoded, as a
    // recording gives it back).
    let recorded = desktop.screenshot().await?;
    let reference = crate::rerun::compare::Reference::from_png(
        &recorded.png,
        Some(crate::action::Point { x: 640, y: 400 }),
    )
    .map_err(anyhow::Error::msg)?;
    let mut compare_ms = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        let (w, h, rgb) = desktop.frame_rgb()?;
        std::hint::black_box(reference.difference(w, h, &rgb));
        compare_ms.push(ms(t.elapsed()));
    }

    progress(
        args.json,
        "a window stream against the whole screen, through the view",
    );
    let streams = match window_streams(&desktop, &sandbox, term.id, samples.min(20)).await {
        Ok(s) => Some(s),
        Err(e) => {
            progress(args.json, &format!("window streams not measured: {e:#}"));
            None
        }
    };
    desktop
        .settle(desktop.mark(), SettleOptions::default())
        .await;

    progress(
        args.json,
        "protocols: 40-step conversations on this screenshot",
    );
    let busy = desktop.encode_screenshot().await?;
    let (protocols, baseline_request_ms) = protocol_codecs(&busy.png, (width, height), 40)?;

    progress(args.json, &format!("keys into the terminal x{samples}"));
    let (input_to_effect_ms, settle_after_key_ms) = keys_into(&desktop, samples).await?;
    let (baseline_screenshot_ms, baseline_input_to_effect_ms) =
        baselines(&desktop, &sandbox, samples, args.json).await?;

    let mut steps = Vec::new();
    for (name, action) in [
        ("noop", json!({"action": "cursor_position"})),
        (
            "move",
            json!({"action": "mouse_move", "coordinate": [900, 300]}),
        ),
        ("key", json!({"action": "key", "text": "x"})),
    ] {
        progress(args.json, &format!("loop steps: {name} x{samples}"));
        // A fresh connection, as every episode starts with: no reaction history yet.
        let fresh = Desktop::connect(sandbox.clone(), ConnectOptions::default()).await?;
        steps.push(
            loop_steps(&fresh, &sandbox, name, action, samples, None)
                .await?
                .0,
        );
    }
    // The same key step with VNC and X11 through the Docker API, as a desktop on another
    // machine's engine is driven.
    progress(
        args.json,
        &format!("loop steps: key through tunnels x{samples}"),
    );
    let tunneled = sandbox.through_tunnels();
    let fresh = Desktop::connect(tunneled.clone(), ConnectOptions::default()).await?;
    let through_tunnels = loop_steps(
        &fresh,
        &tunneled,
        "key via tunnels",
        json!({"action": "key", "text": "x"}),
        samples,
        None,
    )
    .await?
    .0;
    drop(fresh);
    let tunnel_step_ratio = steps
        .iter()
        .find(|s| s.name == "key")
        .and_then(|s| ratio(&through_tunnels.step_ms, &s.step_ms));
    steps.push(through_tunnels);
    progress(args.json, "replay: recording 100 steps, then opening them");
    let dir = std::env::temp_dir().join(format!("selfagent-bench-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("replay.db");
    let (_, session) = loop_steps(
        &desktop,
        &sandbox,
        "replay",
        json!({"action": "key", "text": "x"}),
        100,
        Some(&db),
    )
    .await?;
    let measured = crate::tui::measure_replay(&db, &session, 140, 40).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (first_paint, first_shot) = measured?;
    progress(args.json, "MCP tool calls against CLI commands");
    let mcp = match mcp_calls(&sandbox, samples.min(20)).await {
        Ok(m) => Some(m),
        Err(e) => {
            progress(args.json, &format!("MCP calls not measured: {e:#}"));
            None
        }
    };

    progress(
        args.json,
        "a 20-step episode, then re-run without its model",
    );
    let rerun_episode = match rerun_episode(&desktop, &sandbox, 20).await {
        Ok(r) => Some(r),
        Err(e) => {
            progress(args.json, &format!("the re-run was not measured: {e:#}"));
            None
        }
    };

    progress(args.json, "the accessibility tree, lean and whole");
    let a11y = match a11y_reads(&desktop, samples.min(10)).await {
        Ok(r) => r,
        Err(e) => {
            progress(
                args.json,
                &format!("the accessibility tree was not measured: {e:#}"),
            );
            None
        }
    };

    let screenshot_ms = Stats::of(&shot_ms);
    let rerun_compare_ms = Stats::of(&compare_ms);
    let rerun_compare_vs_screenshot = ratio(&rerun_compare_ms, &screenshot_ms);
    let screenshot_speedup = ratio(&baseline_screenshot_ms, &screenshot_ms);
    let input_speedup = ratio(&baseline_input_to_effect_ms, &input_to_effect_ms);
    Ok(Report {
        x_server: args.x_server.clone(),
        width,
        height,
        pool_speedup: ratio(&Stats::of(&ready), &pool_lease),
        pool_lease_ready_ms: pool_lease,
        pool_claim_ms: pool_claim,
        fork_ready_ms: fork_ready,
        snapshot_save_ms: round(snapshot_save),
        ready_ms: Stats::of(&ready),
        drawn_ms: Stats::of(&drawn),
        screenshot_ms,
        screenshot_bytes: shot_bytes,
        input_to_effect_ms,
        settle_after_key_ms,
        screenshot_speedup,
        input_speedup,
        baseline_screenshot_ms,
        baseline_input_to_effect_ms,
        steps,
        tunnel_step_ratio,
        protocols,
        baseline_request_ms,
        replay_first_paint_ms: round(ms(first_paint)),
        replay_first_screenshot_ms: round(ms(first_shot)),
        streams,
        mcp,
        rerun_compare_ms,
        rerun_compare_vs_screenshot,
        rerun_episode,
        a11y,
    })
}

/// See [`A11yRead`]; `None` on an image without the walker (only the office image has it).
/// The text editor is opened beside the terminal first (a tree with menus, as an agent's
/// screen has). Both ways must give the same elements, or the lean walk is not measured as a
/// speedup but reported as an error.
async fn a11y_reads(desktop: &Desktop, samples: usize) -> anyhow::Result<Option<A11yRead>> {
    let sandbox = desktop.sandbox();
    if let Err(e) = sandbox.accessibility_elements().await {
        return if e.to_string().contains("office desktop") {
            Ok(None)
        } else {
            Err(e.into())
        };
    }
    desktop
        .act(&Action::Launch {
            app: "editor".into(),
        })
        .await?;
    let editor = WindowMatch {
        title: Some(regex::Regex::new("Mousepad")?),
        ..Default::default()
    };
    desktop
        .wait_window(&editor, Duration::from_secs(30))
        .await?;
    // The editor registers its elements after its window shows: read until two reads agree.
    let mut lean = sandbox.accessibility_elements().await?;
    for _ in 0..20 {
        let again = sandbox.accessibility_elements().await?;
        if again == lean {
            break;
        }
        lean = again;
    }
    let whole = async || -> anyhow::Result<Vec<crate::sandbox::a11y::Element>> {
        let xml = sandbox.accessibility_xml().await?;
        let rows = sandbox.a11y_of(&xml, "rows").await?;
        Ok(crate::sandbox::a11y::parse_rows(&rows)?)
    };
    let full = whole().await?;
    anyhow::ensure!(
        lean == full,
        "the lean walk's elements differ from the whole tree's ({} against {})",
        lean.len(),
        full.len()
    );
    let (mut lean_ms, mut full_ms) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let t = Instant::now();
        sandbox.accessibility_elements().await?;
        lean_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        whole().await?;
        full_ms.push(ms(t.elapsed()));
    }
    let (lean_ms, full_ms) = (Stats::of(&lean_ms), Stats::of(&full_ms));
    Ok(Some(A11yRead {
        elements: lean.len(),
        speedup: ratio(&full_ms, &lean_ms),
        lean_ms,
        full_ms,
    }))
}

/// Records `steps` key steps (x, BackSpace, ...) with the instant model, then does the
/// recording again with `rerun::drive` (halting on drift, recorded too), on the same desktop,
/// which ends as it began.
async fn rerun_episode(
    desktop: &Desktop,
    sandbox: &Sandbox,
    steps: usize,
) -> anyhow::Result<RerunEpisode> {
    use crate::rerun::{OnDrift, Replay, compare};
    let dir = std::env::temp_dir().join(format!("selfagent-bench-rerun-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("rerun.db");
    let result = async {
        let t = Instant::now();
        let (_, session) = loop_steps(
            desktop,
            sandbox,
            "rerun original",
            json!({"action": "key", "text": "x"}),
            steps,
            Some(&db),
        )
        .await?;
        let original_ms = ms(t.elapsed());
        let replay = {
            let rec = record::Db::open(&db)?;
            let row = rec.session(&session)?;
            Replay::load(
                &rec,
                &row,
                OnDrift::Halt,
                compare::DEFAULT_THRESHOLD,
                crate::rerun::DEFAULT_WAIT,
            )
            .map_err(anyhow::Error::msg)?
        };
        let t = Instant::now();
        let mut emitter = Emitter::new();
        let recorder = Recorder::start(&db, Vec::new(), emitter.subscribe(4096))?;
        let mut info = bench_session(desktop, sandbox, "rerun", steps);
        info.model = "none (replayed)".into();
        info.source = Some(crate::rerun::SOURCE.to_owned());
        info.rerun_of = Some(session);
        emitter.emit(Event::SessionStarted(info)).await;
        let unused = InstantModel {
            action: json!({}),
            steps: 0,
            calls: Default::default(),
        };
        let (_control_tx, control_rx) = tokio::sync::mpsc::channel(1);
        let outcome = crate::rerun::drive(
            &replay,
            &AgentConfig::default(),
            desktop,
            &unused,
            &emitter,
            control_rx,
        )
        .await;
        drop(emitter);
        recorder.finish().await;
        let rerun_ms = ms(t.elapsed());
        if outcome.status != agent::Status::Succeeded {
            anyhow::bail!("the re-run ended {}: {:?}", outcome.status, outcome.error);
        }
        Ok(RerunEpisode {
            steps,
            original_ms: round(original_ms),
            rerun_ms: round(rerun_ms),
            rerun_vs_original: round(rerun_ms / original_ms.max(f64::MIN_POSITIVE)),
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// See [`McpCalls`]: the desktop is attached to an MCP server of this binary by its id.
async fn mcp_calls(sandbox: &Sandbox, samples: usize) -> anyhow::Result<McpCalls> {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("selfagent-bench-mcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("mcp.db");
    let mut command = tokio::process::Command::new(&exe);
    command.arg("mcp").arg("--db").arg(&db);
    let client = ().serve(rmcp::transport::TokioChildProcess::new(command)?).await?;
    let id = sandbox.id().to_owned();
    let args = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
    let call = |name: &'static str, v: serde_json::Value| {
        CallToolRequestParams::new(name).with_arguments(args(v))
    };
    let key = json!({"action": "key", "text": "x"});
    let measured = async {
        // The first call attaches the desktop (its VNC and X11 connections): not timed.
        client
            .call_tool(call("screenshot", json!({"sandbox": id})))
            .await?;
        let mut shot = Vec::new();
        let mut keys = Vec::new();
        for _ in 0..samples {
            let t = Instant::now();
            let r = client
                .call_tool(call("screenshot", json!({"sandbox": id})))
                .await?;
            shot.push(ms(t.elapsed()));
            anyhow::ensure!(r.is_error != Some(true), "screenshot failed: {r:?}");
            let mut input = json!({"sandbox": id});
            input
                .as_object_mut()
                .into_iter()
                .for_each(|o| o.extend(args(key.clone())));
            let t = Instant::now();
            let r = client.call_tool(call("computer", input)).await?;
            keys.push(ms(t.elapsed()));
            anyhow::ensure!(r.is_error != Some(true), "computer failed: {r:?}");
        }
        anyhow::Ok((shot, keys))
    }
    .await;
    let _ = client.cancel().await;
    let (shot, keys) = measured?;
    let png = dir.join("shot.png");
    let mut cli_shot = Vec::new();
    let mut cli_act = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        let out = tokio::process::Command::new(&exe)
            .args(["sandbox", "shot", &id, "-o"])
            .arg(&png)
            .output()
            .await?;
        cli_shot.push(ms(t.elapsed()));
        anyhow::ensure!(
            out.status.success(),
            "sandbox shot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = Instant::now();
        let out = tokio::process::Command::new(&exe)
            .args(["sandbox", "act", &id, &key.to_string()])
            .output()
            .await?;
        cli_act.push(ms(t.elapsed()));
        anyhow::ensure!(
            out.status.success(),
            "sandbox act: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (screenshot_ms, cli_shot_ms) = (Stats::of(&shot), Stats::of(&cli_shot));
    let (key_ms, cli_act_ms) = (Stats::of(&keys), Stats::of(&cli_act));
    Ok(McpCalls {
        screenshot_speedup: ratio(&cli_shot_ms, &screenshot_ms),
        key_speedup: ratio(&cli_act_ms, &key_ms),
        screenshot_ms,
        cli_shot_ms,
        key_ms,
        cli_act_ms,
    })
}

/// Keys typed into the focused terminal: from each key to its visible effect, and to a
/// quiet screen after it.
async fn keys_into(desktop: &Desktop, samples: usize) -> anyhow::Result<(Stats, Stats)> {
    // The premise of both numbers: the screen is quiet before the key (else the first
    // "change" may be a cursor blink or output still scrolling) and again after it (else the
    // settle time is only the cap). A sample that breaks it fails the measurement.
    let mut effect_ms = Vec::new();
    let mut settle_ms = Vec::new();
    let (mut no_effect, mut never_quiet) = (Vec::new(), Vec::new());
    for i in 0..samples {
        // Type a letter, then erase it: both change the screen.
        let key = if i % 2 == 0 {
            Action::Type { text: "x".into() }
        } else {
            Action::Key {
                text: "BackSpace".into(),
            }
        };
        if let Some(why) = quiet_before(desktop).await {
            no_effect.push(why.clone());
            never_quiet.push(why);
            continue;
        }
        let before = desktop.mark();
        let t = Instant::now();
        desktop.act(&key).await?;
        let seen = desktop
            .wait_for_change(before.stamp, Duration::from_secs(2))
            .await;
        if seen.is_none() {
            no_effect
                .push("a key typed into the terminal changed nothing on screen within 2 s".into());
            continue;
        }
        effect_ms.push(ms(t.elapsed()));
        let report = desktop.settle(before, SettleOptions::default()).await;
        if report.quiet {
            settle_ms.push(ms(t.elapsed()).max(report.waited_ms));
        } else {
            never_quiet.push(format!(
                "the screen did not go quiet after the key (settle gave up after {:.0} ms)",
                report.waited_ms
            ));
        }
    }

    Ok((
        Stats::unless(&effect_ms, &no_effect, samples),
        Stats::unless(&settle_ms, &never_quiet, samples),
    ))
}

/// The demos' way, in the same desktop: a screenshot by `docker exec import`, a key by
/// `docker exec xdotool` until its effect shows.
async fn baselines(
    desktop: &Desktop,
    sandbox: &Sandbox,
    samples: usize,
    json: bool,
) -> anyhow::Result<(Stats, Stats)> {
    progress(json, &format!("baseline: docker exec import x{samples}"));
    let mut base_shot = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        let out = sandbox
            .exec(
                &["import", "-window", "root", "png:-"],
                &ExecOptions::default(),
            )
            .await?;
        if !out.success() || out.stdout.len() < 8 {
            anyhow::bail!("baseline screenshot failed: {}", out.stderr_text());
        }
        base_shot.push(ms(t.elapsed()));
    }

    progress(json, &format!("baseline: docker exec xdotool x{samples}"));
    let mut base_effect = Vec::new();
    let mut base_broken = Vec::new();
    for i in 0..samples {
        let key = if i % 2 == 0 { "x" } else { "BackSpace" };
        if let Some(why) = quiet_before(desktop).await {
            base_broken.push(why);
            continue;
        }
        let before = desktop.mark();
        let t = Instant::now();
        let out = sandbox
            .exec(&["xdotool", "key", key], &ExecOptions::default())
            .await?;
        if !out.success() {
            anyhow::bail!("baseline xdotool failed: {}", out.stderr_text());
        }
        // Done when the command has returned and the effect is on screen.
        if desktop
            .wait_for_change(before.stamp, Duration::from_secs(2))
            .await
            .is_none()
        {
            base_broken.push("xdotool key changed nothing on screen within 2 s".into());
            continue;
        }
        base_effect.push(ms(t.elapsed()));
    }

    Ok((
        Stats::of(&base_shot),
        Stats::unless(&base_effect, &base_broken, samples),
    ))
}

/// Waits (up to 3 s) for the screen to be quiet before a timed input; why not, when it
/// never was (a change seen after the input could then be noise).
async fn quiet_before(desktop: &Desktop) -> Option<String> {
    let report = desktop
        .settle(desktop.mark(), SettleOptions::default())
        .await;
    (!report.quiet).then(|| {
        format!(
            "the screen was never quiet before the input (still changing after {:.0} ms), so a change could not be told from noise",
            report.waited_ms
        )
    })
}

/// A VNC client through the view proxy, keeping the picture it is sent (to tell an update
/// that changes pixels from one that does not).
struct Watched {
    client: vnc::VncClient,
    size: (usize, usize),
    fb: Vec<u8>,
}

impl Watched {
    /// Connects through the view proxy at `path` (`/websockify?…`), as a browser would.
    async fn connect(sandbox: &Sandbox, path: String) -> anyhow::Result<Self> {
        use vnc::{PixelFormat, VncConnector, VncEncoding, VncEvent};
        let view = sandbox
            .endpoints()
            .await?
            .view
            .context("the desktop has no view")?;
        let bridge = crate::sandbox::viewsock::bridge(view, path).await?;
        let tcp = tokio::net::TcpStream::connect(bridge).await?;
        let password = sandbox.secrets().vnc_password.clone();
        let client = VncConnector::new(tcp)
            .set_auth_method(async move { Ok(password) })
            .allow_shared(true)
            .set_pixel_format(PixelFormat::bgra())
            .add_encoding(VncEncoding::Zrle)
            .add_encoding(VncEncoding::CopyRect)
            .add_encoding(VncEncoding::Raw)
            .add_encoding(VncEncoding::DesktopSizePseudo)
            .build()?
            .try_start()
            .await?
            .finish()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            anyhow::ensure!(Instant::now() < deadline, "no screen through the view");
            if let Ok(Ok(VncEvent::SetResolution(s))) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_event()).await
            {
                let size = (usize::from(s.width), usize::from(s.height));
                let mut w = Self {
                    client,
                    size,
                    fb: vec![0; size.0 * size.1 * 4],
                };
                w.frame(Duration::from_secs(2)).await;
                return Ok(w);
            }
        }
    }

    fn apply(&mut self, event: vnc::VncEvent) {
        let (w, h) = self.size;
        match event {
            vnc::VncEvent::RawImage(r, data) => {
                let (x, y, rw) = (usize::from(r.x), usize::from(r.y), usize::from(r.width));
                for row in 0..usize::from(r.height) {
                    let (dy, from) = (y + row, row * rw * 4);
                    if dy >= h || x >= w || from + rw * 4 > data.len() {
                        break;
                    }
                    let n = rw.min(w - x) * 4;
                    let at = (dy * w + x) * 4;
                    self.fb[at..at + n].copy_from_slice(&data[from..from + n]);
                }
            }
            vnc::VncEvent::Copy(dst, src) => {
                let old = self.fb.clone();
                for row in 0..usize::from(dst.height) {
                    let (sy, dy) = (usize::from(src.y) + row, usize::from(dst.y) + row);
                    let (sx, dx) = (usize::from(src.x), usize::from(dst.x));
                    let n = usize::from(dst.width).min(w.saturating_sub(sx.max(dx))) * 4;
                    if sy >= h || dy >= h {
                        break;
                    }
                    let (from, to) = ((sy * w + sx) * 4, (dy * w + dx) * 4);
                    self.fb[to..to + n].copy_from_slice(&old[from..from + n]);
                }
            }
            _ => {}
        }
    }

    /// Asks for an update and applies what comes until a short quiet gap (one update's
    /// rectangles), within `within`; returns whether anything came.
    async fn frame(&mut self, within: Duration) -> bool {
        if self.client.input(vnc::X11Event::Refresh).await.is_err() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + within;
        let mut got = false;
        loop {
            let wait = if got {
                Duration::from_millis(3)
            } else {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            };
            match tokio::time::timeout(wait, self.client.recv_event()).await {
                Ok(Ok(e)) => {
                    got |= matches!(e, vnc::VncEvent::RawImage(..) | vnc::VncEvent::Copy(..));
                    self.apply(e);
                }
                _ => return got,
            }
        }
    }

    /// Frames until the picture differs from `before`, within `within`.
    async fn until_changed(&mut self, before: &[u8], within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.frame(Duration::from_millis(200)).await;
            if self.fb != before {
                return true;
            }
        }
        false
    }
}

async fn window_streams(
    desktop: &Desktop,
    sandbox: &Sandbox,
    window: u32,
    samples: usize,
) -> anyhow::Result<Streams> {
    let token = sandbox.secrets().view_token.clone();
    let stream = sandbox.window_stream_of(window, false).await?;
    let mut window = Watched::connect(
        sandbox,
        format!("/websockify?stream={}&token={token}", stream.stream),
    )
    .await?;
    let mut screen = Watched::connect(sandbox, format!("/websockify?token={token}")).await?;
    let mut latency = [Vec::new(), Vec::new()];
    for i in 0..samples {
        for (which, view) in [&mut window, &mut screen].into_iter().enumerate() {
            // Settled first: what came before the key is not its effect.
            while view.frame(Duration::from_millis(150)).await {}
            let before = view.fb.clone();
            let key = if i % 2 == 0 {
                Action::Type { text: "x".into() }
            } else {
                Action::Key {
                    text: "BackSpace".into(),
                }
            };
            let t = Instant::now();
            desktop.act(&key).await?;
            if view.until_changed(&before, Duration::from_secs(2)).await {
                latency[which].push(ms(t.elapsed()));
            }
        }
    }
    // A line every 10 ms, steadily, while each view is watched for three seconds:
    // pictures that differ from the last, per second (at most 100 here).
    desktop
        .act(&Action::Type {
            text: "while :; do date +%T.%N; sleep 0.01; done\n".into(),
        })
        .await?;
    let mut fps = [0.0, 0.0];
    for (which, view) in [&mut window, &mut screen].into_iter().enumerate() {
        let t = Instant::now();
        let mut frames = 0u32;
        let mut last = view.fb.clone();
        while t.elapsed() < Duration::from_secs(3) {
            view.frame(Duration::from_millis(500)).await;
            if view.fb != last {
                frames += 1;
                last.clone_from(&view.fb);
            }
        }
        fps[which] = round(f64::from(frames) / t.elapsed().as_secs_f64());
    }
    desktop
        .act(&Action::Key {
            text: "ctrl+c".into(),
        })
        .await?;
    let window_size = (window.size.0 as u32, window.size.1 as u32);
    let _ = window.client.close().await;
    let _ = screen.client.close().await;
    Ok(Streams {
        window_fps: fps[0],
        screen_fps: fps[1],
        window_key_to_update_ms: Stats::of(&latency[0]),
        screen_key_to_update_ms: Stats::of(&latency[1]),
        window_size,
    })
}

/// Saves a snapshot of `from`, then starts `n` desktops from it one after another and times
/// each until ready; the snapshot is removed afterwards.
async fn forks(
    engine: &Engine,
    spec: &SandboxSpec,
    from: &Sandbox,
    n: usize,
    json: bool,
    created: &mut Vec<Sandbox>,
) -> anyhow::Result<(Stats, f64)> {
    progress(json, &format!("snapshot, then {n} desktops from it"));
    let tag = format!("bench-{}", std::process::id());
    let t = Instant::now();
    let image = from.save_snapshot(&tag).await?;
    let save_ms = ms(t.elapsed());
    let mut times = Vec::new();
    let result = async {
        for _ in 0..n {
            let fork = SandboxSpec {
                image: image.clone(),
                ..spec.clone()
            };
            let (sandbox, desktop, ready, _) = start(engine, &fork).await?;
            created.push(sandbox.clone());
            times.push(ms(ready));
            drop(desktop);
            sandbox.kill().await?;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = engine.remove_saved(&tag).await;
    result?;
    Ok((Stats::of(&times), save_ms))
}

/// Fills a warm pool of `n` desktops like `spec`, then leases each and times it until its
/// desktop is ready for a first screenshot.
async fn pool_leases(
    engine: &Engine,
    spec: &SandboxSpec,
    n: usize,
    json: bool,
    created: &mut Vec<Sandbox>,
) -> anyhow::Result<(Stats, Stats)> {
    use crate::pool::{self, LeaseOptions, PoolSpec};
    progress(json, &format!("warm pool: {n} desktops, then leasing each"));
    let pool_spec = PoolSpec::of(spec);
    let filled = pool::fill(engine, &pool_spec, n, n, pool::DEFAULT_TTL, &|_| {}).await;
    let mut times = Vec::new();
    let mut claims = Vec::new();
    let result = async {
        let filled = filled?;
        if let Some(e) = filled.failed.first() {
            anyhow::bail!("a pool desktop did not start: {e}");
        }
        for _ in 0..n {
            let t = Instant::now();
            let leased = pool::lease(
                engine,
                spec,
                60,
                LeaseOptions {
                    no_refill: true,
                    ..Default::default()
                },
            )
            .await?
            .context("the pool had no desktop to lease")?;
            claims.push(ms(t.elapsed()));
            created.push(leased.clone());
            let desktop = Desktop::connect(leased.clone(), ConnectOptions::default()).await?;
            times.push(ms(t.elapsed()));
            drop(desktop);
            leased.kill().await?;
        }
        Ok(())
    }
    .await;
    let _ = pool::down(engine, Some(&pool_spec.key())).await;
    result?;
    Ok((Stats::of(&times), Stats::of(&claims)))
}

/// A model that answers at once, replaying one action (the mouse alternates between two
/// points, a key alternates with BackSpace), then finishes.
struct InstantModel {
    action: Value,
    steps: usize,
    calls: std::sync::atomic::AtomicUsize,
}

impl Model for InstantModel {
    fn name(&self) -> &str {
        "instant"
    }

    async fn send(
        &self,
        _request: &ModelRequest,
        _check: Check<'_>,
        _on_retry: &(dyn Fn(Retry) + Send + Sync),
    ) -> Result<RawReply, ModelError> {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut action = self.action.clone();
        if n % 2 == 1 {
            if action["action"] == "mouse_move" {
                action["coordinate"] = json!([700, 500]);
            } else if action["action"] == "key" {
                action["text"] = json!("BackSpace");
            }
        }
        let message = if n < self.steps {
            json!({"tool_calls": [{"id": "c", "function": {"name": "computer", "arguments": action.to_string()}}]})
        } else {
            json!({"content": "done"})
        };
        Ok(RawReply {
            body: json!({"choices": [{"message": message}], "usage": {"prompt_tokens": 1000, "completion_tokens": 20}}),
            attempts: 1,
            elapsed: Duration::ZERO,
        })
    }
}

/// A bench episode's session: the instant model on `desktop`, native coordinates.
fn bench_session(desktop: &Desktop, sandbox: &Sandbox, name: &str, steps: usize) -> SessionInfo {
    let (w, h) = desktop.size();
    SessionInfo {
        session: record::new_session_id(),
        sandbox: sandbox.id().to_owned(),
        instruction: format!("bench {name}"),
        task_id: None,
        model: "instant".into(),
        base_url: "in-process".into(),
        protocol: "tools".into(),
        coords: "native".into(),
        image: String::new(),
        engine: String::new(),
        width: w,
        height: h,
        sent_width: w,
        sent_height: h,
        max_steps: steps as u32,
        timeout_s: 600.0,
        task: None,
        price: None,
        source: None,
        rerun_of: None,
    }
}

/// Runs `samples` loop steps of `action` through the loop and the recorder (into `keep`, or
/// a throwaway database); returns their numbers and the session id.
async fn loop_steps(
    desktop: &Desktop,
    sandbox: &Sandbox,
    name: &str,
    action: Value,
    samples: usize,
    keep: Option<&std::path::Path>,
) -> anyhow::Result<(StepScenario, String)> {
    let dir = std::env::temp_dir().join(format!("selfagent-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = keep.map_or_else(|| dir.join(format!("{name}.db")), std::path::Path::to_owned);
    let _ = std::fs::remove_file(&db);
    let session = record::new_session_id();
    let mut emitter = Emitter::new();
    let recorder = Recorder::start(&db, Vec::new(), emitter.subscribe(4096))?;
    let mut timing = emitter.subscribe(4096);
    let collector = tokio::spawn(async move {
        let (mut starts, mut settles) = (Vec::new(), Vec::new());
        while let Some(event) = timing.recv().await {
            match event.as_ref() {
                Event::StepStarted { .. } => starts.push(Instant::now()),
                Event::Settled { report, .. } => settles.push((report.waited_ms, report.quiet)),
                _ => {}
            }
        }
        (starts, settles)
    });
    let info = SessionInfo {
        session: session.clone(),
        ..bench_session(desktop, sandbox, name, samples + 1)
    };
    emitter.emit(Event::SessionStarted(info)).await;
    let model = InstantModel {
        action,
        steps: samples,
        calls: Default::default(),
    };
    let cfg = AgentConfig {
        instruction: format!("bench {name}"),
        max_steps: samples as u32 + 1,
        ..AgentConfig::default()
    };
    let (_control_tx, control_rx) = tokio::sync::mpsc::channel(1);
    let outcome = agent::run(&cfg, desktop, &model, &emitter, control_rx).await;
    drop(emitter);
    let (starts, settles) = collector.await?;
    let stats = recorder.finish().await;
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if outcome.status != agent::Status::Succeeded {
        anyhow::bail!(
            "the {name} loop ended {}: {:?}",
            outcome.status,
            outcome.error
        );
    }
    let step_ms: Vec<f64> = starts.windows(2).map(|w| ms(w[1] - w[0])).collect();
    // A settle that ran into its cap measured the cap, not the desktop.
    let loud: Vec<String> = settles
        .iter()
        .filter(|(_, quiet)| !quiet)
        .map(|(waited, _)| {
            format!(
                "the screen did not go quiet after the step (settle gave up after {waited:.0} ms)"
            )
        })
        .collect();
    let settled: Vec<f64> = settles.iter().map(|(waited, _)| *waited).collect();
    Ok((
        StepScenario {
            name: name.to_owned(),
            step_ms: Stats::of(&step_ms),
            settle_ms: if settles.is_empty() {
                Stats::none("this action cannot change the screen, so the loop does not settle")
            } else {
                Stats::unless(&settled, &loud, settles.len())
            },
            record_write_ms: Stats::of(&stats.step_write_ms),
            bytes_per_step: stats.db_bytes / stats.steps.max(1),
        },
        session,
    ))
}

fn print_report(r: &Report) {
    let row = |name: &str, s: &Stats| match (&s.failed, &s.none) {
        (Some(why), _) => crate::outln!("{name:<34} FAILED: {why}"),
        (None, Some(why)) => crate::outln!("{name:<34} none: {why}"),
        (None, None) => crate::outln!(
            "{name:<34} p50 {:>8.2}  p95 {:>8.2}  min {:>8.2}  max {:>8.2}  (n={})",
            s.p50,
            s.p95,
            s.min,
            s.max,
            s.n
        ),
    };
    let times =
        |r: Option<f64>| r.map_or_else(|| "not measured".to_owned(), |r| format!("{r:.1}x"));
    crate::outln!(
        "selfagent bench: {}x{} desktop, {} (milliseconds)",
        r.width,
        r.height,
        r.x_server
    );
    row("create to ready", &r.ready_ms);
    if let Some(s) = &r.streams {
        row("window stream: key to update", &s.window_key_to_update_ms);
        row("whole screen: key to update", &s.screen_key_to_update_ms);
        crate::outln!(
            "{:<34} {} fps window ({}x{}), {} fps whole screen",
            "view streams while text scrolls",
            s.window_fps,
            s.window_size.0,
            s.window_size.1,
            s.screen_fps
        );
    }
    row("warm pool: lease to ready", &r.pool_lease_ready_ms);
    row("  of which the claim", &r.pool_claim_ms);
    row("fork of a snapshot to ready", &r.fork_ready_ms);
    row("create to drawn", &r.drawn_ms);
    row("screenshot (fresh PNG)", &r.screenshot_ms);
    row("rerun: screen vs recorded", &r.rerun_compare_ms);
    if let Some(e) = &r.rerun_episode {
        crate::outln!(
            "rerun of a {}-step episode          {:.0} ms against {:.0} ms recorded with an instant model ({:.2}x)",
            e.steps,
            e.rerun_ms,
            e.original_ms,
            e.rerun_vs_original
        );
    }
    row("input to visible effect", &r.input_to_effect_ms);
    row("key + settle", &r.settle_after_key_ms);
    row("baseline: docker exec import", &r.baseline_screenshot_ms);
    row(
        "baseline: docker exec xdotool",
        &r.baseline_input_to_effect_ms,
    );
    crate::outln!(
        "screenshot PNG size                {} bytes",
        r.screenshot_bytes
    );
    crate::outln!(
        "speedup vs baseline                screenshot {}, input {}; pool lease vs create {}",
        times(r.screenshot_speedup),
        times(r.input_speedup),
        times(r.pool_speedup)
    );
    for sc in &r.steps {
        row(&format!("loop step, {}", sc.name), &sc.step_ms);
        row(&format!("  settle, {}", sc.name), &sc.settle_ms);
        row(
            &format!("  recorder write, {}", sc.name),
            &sc.record_write_ms,
        );
        crate::outln!(
            "  stored per step, {:<18} {} bytes",
            sc.name,
            sc.bytes_per_step
        );
    }
    crate::outln!(
        "key step through tunnels            {} the step through published ports",
        times(r.tunnel_step_ratio)
    );
    if let Some(m) = &r.mcp {
        row("MCP screenshot (stdio)", &m.screenshot_ms);
        row("  CLI: sandbox shot", &m.cli_shot_ms);
        row("MCP computer key, settled", &m.key_ms);
        row("  CLI: sandbox act", &m.cli_act_ms);
        crate::outln!(
            "MCP against the CLI                screenshot {}, key {}",
            times(m.screenshot_speedup),
            times(m.key_speedup)
        );
    }
    if let Some(a) = &r.a11y {
        row("a11y tree as --observe reads it", &a.lean_ms);
        row("  baseline: the whole XML", &a.full_ms);
        crate::outln!(
            "  {} elements; lean against whole   {}",
            a.elements,
            times(a.speedup)
        );
    }
    row("baseline: a request with 1 image", &r.baseline_request_ms);
    for p in &r.protocols {
        row(
            &format!("protocol {} ({})", p.protocol, p.coords),
            &p.encode_decode_ms,
        );
        crate::outln!(
            "  request bytes per step            p50 {} max {} ({:.1}x the baseline's time){}",
            p.request_bytes_p50,
            p.request_bytes_max,
            p.ratio_to_baseline,
            p.image_ms
                .as_ref()
                .map(|s| format!(
                    "; screenshot to {}x{}: p50 {:.2} ms",
                    p.sent[0], p.sent[1], s.p50
                ))
                .unwrap_or_default()
        );
    }
    crate::outln!(
        "replay of 100 steps                first paint {:.1} ms, first screenshot {:.1} ms",
        r.replay_first_paint_ms,
        r.replay_first_screenshot_ms
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_encodes_and_decodes_its_typical_step() {
        // A small real PNG: each protocol must decode its typical reply (a click, outside
        // this tiny screen: refused, which is still a decoded reply), and
        // its requests must carry the screenshot.
        let png = crate::desktop::encode_png(64, 40, &vec![200u8; 64 * 40 * 3]).unwrap();
        let (codecs, baseline) = protocol_codecs(&png, (64, 40), 5).unwrap();
        assert_eq!(codecs.len(), crate::model::protocol::ALL.len());
        assert_eq!(baseline.n, 5);
        for c in &codecs {
            assert_eq!(c.encode_decode_ms.n, 5, "{c:?}");
            assert!(c.request_bytes_p50 > png.len() as u64, "{c:?}");
        }
    }

    #[test]
    fn percentiles_pick_the_right_samples() {
        let s = Stats::of(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!(
            (s.p50, s.p95, s.min, s.max, s.n),
            (51.0, 95.0, 1.0, 100.0, 100)
        );
        assert_eq!(Stats::of(&[]).n, 0);
    }

    #[test]
    fn a_broken_premise_is_a_failure_not_a_number() {
        let fine = Stats::unless(&[30.0, 34.0, 35.0], &[], 3);
        assert_eq!((fine.median(), fine.failed.as_deref()), (Some(34.0), None));
        // One sample of three saw no quiet screen: the numbers of the other two are not shown.
        let broken = Stats::unless(&[4.2, 0.13], &["never quiet".to_owned()], 3);
        assert_eq!(broken.median(), None);
        assert_eq!(
            broken.failed.as_deref(),
            Some("never quiet (1 of 3 samples)")
        );
        let json = serde_json::to_value(&broken).unwrap();
        assert_eq!(json["failed"], "never quiet (1 of 3 samples)");
        // A ratio over a failed measurement is not measured; over two good ones it is.
        assert_eq!(ratio(&fine, &broken), None);
        assert_eq!(ratio(&broken, &fine), None);
        let baseline = Stats::of(&[68.0]);
        assert_eq!(ratio(&baseline, &fine), Some(2.0));
        assert!(Stats::of(&[]).failed.is_some(), "no samples is no number");
    }
}
