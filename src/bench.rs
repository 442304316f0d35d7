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
//!   bytes stored per step.

use crate::action::Action;
use crate::agent::model::{Check, Model, ModelError, ModelRequest, RawReply, Retry};
use crate::agent::{self, AgentConfig, Emitter, Event, SessionInfo};
use crate::desktop::{ConnectOptions, Desktop, SettleOptions, WindowMatch};
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

/// Summary statistics of one measurement, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stats {
    pub p50: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
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
        }
    }
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
    pub screenshot_ms: Stats,
    pub screenshot_bytes: usize,
    pub input_to_effect_ms: Stats,
    pub settle_after_key_ms: Stats,
    pub baseline_screenshot_ms: Stats,
    pub baseline_input_to_effect_ms: Stats,
    pub screenshot_speedup: f64,
    pub input_speedup: f64,
    pub steps: Vec<StepScenario>,
    /// Replaying a recorded 100-step episode (140x40, halfblocks): loaded and first drawn,
    /// and its first screenshot drawn.
    pub replay_first_paint_ms: f64,
    pub replay_first_screenshot_ms: f64,
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
        println!("{}", serde_json::to_string(&report)?);
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

    progress(args.json, &format!("keys into the terminal x{samples}"));
    let mut effect_ms = Vec::new();
    let mut settle_ms = Vec::new();
    for i in 0..samples {
        // Type a letter, then erase it: both change the screen.
        let key = if i % 2 == 0 {
            Action::Type { text: "x".into() }
        } else {
            Action::Key {
                text: "BackSpace".into(),
            }
        };
        let before = desktop.mark();
        let t = Instant::now();
        desktop.act(&key).await?;
        let seen = desktop
            .wait_for_change(before.stamp, Duration::from_secs(2))
            .await;
        if seen.is_none() {
            anyhow::bail!("a key typed into the terminal changed nothing on screen within 2 s");
        }
        effect_ms.push(ms(t.elapsed()));
        let report = desktop.settle(before, SettleOptions::default()).await;
        settle_ms.push(ms(t.elapsed()).max(report.waited_ms));
    }

    progress(
        args.json,
        &format!("baseline: docker exec import x{samples}"),
    );
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

    progress(
        args.json,
        &format!("baseline: docker exec xdotool x{samples}"),
    );
    let mut base_effect = Vec::new();
    for i in 0..samples {
        let key = if i % 2 == 0 { "x" } else { "BackSpace" };
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
            anyhow::bail!("xdotool key changed nothing on screen within 2 s");
        }
        base_effect.push(ms(t.elapsed()));
    }

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

    let screenshot_ms = Stats::of(&shot_ms);
    let input_to_effect_ms = Stats::of(&effect_ms);
    let baseline_screenshot_ms = Stats::of(&base_shot);
    let baseline_input_to_effect_ms = Stats::of(&base_effect);
    Ok(Report {
        x_server: args.x_server.clone(),
        width,
        height,
        ready_ms: Stats::of(&ready),
        drawn_ms: Stats::of(&drawn),
        screenshot_ms,
        screenshot_bytes: shot_bytes,
        input_to_effect_ms,
        settle_after_key_ms: Stats::of(&settle_ms),
        screenshot_speedup: round(baseline_screenshot_ms.p50 / screenshot_ms.p50.max(0.01)),
        input_speedup: round(baseline_input_to_effect_ms.p50 / input_to_effect_ms.p50.max(0.01)),
        baseline_screenshot_ms,
        baseline_input_to_effect_ms,
        steps,
        replay_first_paint_ms: round(ms(first_paint)),
        replay_first_screenshot_ms: round(ms(first_shot)),
    })
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
                Event::Settled { report, .. } => settles.push(report.waited_ms),
                _ => {}
            }
        }
        (starts, settles)
    });
    let (w, h) = desktop.size();
    emitter
        .emit(Event::SessionStarted(SessionInfo {
            session: session.clone(),
            sandbox: sandbox.id().to_owned(),
            instruction: format!("bench {name}"),
            task_id: None,
            model: "instant".into(),
            base_url: "in-process".into(),
            protocol: "tools".into(),
            coords: "native".into(),
            image: String::new(),
            width: w,
            height: h,
            sent_width: w,
            sent_height: h,
            max_steps: samples as u32 + 1,
            timeout_s: 600.0,
            task: None,
        }))
        .await;
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
    Ok((
        StepScenario {
            name: name.to_owned(),
            step_ms: Stats::of(&step_ms),
            settle_ms: Stats::of(&settles),
            record_write_ms: Stats::of(&stats.step_write_ms),
            bytes_per_step: stats.db_bytes / stats.steps.max(1),
        },
        session,
    ))
}

fn print_report(r: &Report) {
    let row = |name: &str, s: &Stats| {
        println!(
            "{name:<34} p50 {:>8.2}  p95 {:>8.2}  min {:>8.2}  max {:>8.2}  (n={})",
            s.p50, s.p95, s.min, s.max, s.n
        );
    };
    println!(
        "selfagent bench: {}x{} desktop, {} (milliseconds)",
        r.width, r.height, r.x_server
    );
    row("create to ready", &r.ready_ms);
    row("create to drawn", &r.drawn_ms);
    row("screenshot (fresh PNG)", &r.screenshot_ms);
    row("input to visible effect", &r.input_to_effect_ms);
    row("key + settle", &r.settle_after_key_ms);
    row("baseline: docker exec import", &r.baseline_screenshot_ms);
    row(
        "baseline: docker exec xdotool",
        &r.baseline_input_to_effect_ms,
    );
    println!(
        "screenshot PNG size                {} bytes",
        r.screenshot_bytes
    );
    println!(
        "speedup vs baseline                screenshot {:.1}x, input {:.1}x",
        r.screenshot_speedup, r.input_speedup
    );
    for sc in &r.steps {
        row(&format!("loop step, {}", sc.name), &sc.step_ms);
        row(&format!("  settle, {}", sc.name), &sc.settle_ms);
        row(
            &format!("  recorder write, {}", sc.name),
            &sc.record_write_ms,
        );
        println!(
            "  stored per step, {:<18} {} bytes",
            sc.name, sc.bytes_per_step
        );
    }
    println!(
        "replay of 100 steps                first paint {:.1} ms, first screenshot {:.1} ms",
        r.replay_first_paint_ms, r.replay_first_screenshot_ms
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_samples() {
        let s = Stats::of(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!(
            (s.p50, s.p95, s.min, s.max, s.n),
            (51.0, 95.0, 1.0, 100.0, 100)
        );
        assert_eq!(Stats::of(&[]).n, 0);
    }
}
