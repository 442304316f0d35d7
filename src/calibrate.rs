//! `selfagent calibrate`: do a model's clicks land where it meant, before a batch is spent
//! on it?
//!
//! A page of numbered targets fills the screen (Firefox in kiosk mode, so page pixels are
//! screen pixels); the model is asked, one fresh conversation per target in its own
//! protocol, to click each one ([`agent::probe`]). Each click's error is its distance in
//! screen pixels from the target's centre. The numbers the model wrote are also read with
//! every other coordinate space (pixels of the image sent, of its smart-resized size,
//! 0-1000, 0-999, 0-1): when another space fits far better, that is the advice ("these
//! look like 0-1000, not pixels: use --coords 1000"). The episode is recorded like any
//! other, with the report as a `calibration` event.

use crate::action::{Action, Point};
use crate::agent::{self, AgentConfig, Command, Computer, Emitter, EndedBy, Event, Model};
use crate::agent::{Outcome, Status};
use crate::model::protocol::{self, CoordSpace, Decision, Geometry, Protocol, ProtocolConfig};
use crate::task::{SetupStep, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The targets' radius in screen pixels: a click within it hits.
pub const RADIUS: i32 = 24;
/// Where the page is written in the desktop.
const PAGE: &str = "/tmp/selfagent-calibrate.html";
/// How long the page may take to show (a cold Firefox on a slow machine).
const PAGE_TIMEOUT: Duration = Duration::from_secs(90);
/// The targets' colour and the page's, as drawn.
const TARGET_RGB: [u8; 3] = [200, 16, 46];
const PAGE_RGB: [u8; 3] = [242, 242, 242];
/// The default largest median error (screen pixels) that is still usable.
pub const DEFAULT_MAX_ERROR: f64 = 10.0;

/// One numbered target and its centre in screen pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Target {
    pub n: usize,
    pub x: i32,
    pub y: i32,
}

/// Where `n` targets go on a `screen`: a grid over the whole screen, each moved off its
/// cell's centre by a fixed pattern so that no two share a row or a column (a mapping that
/// is wrong in one axis shows in every target).
pub fn layout(n: usize, screen: (u32, u32)) -> Vec<Target> {
    let n = n.max(1);
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let (w, h) = (f64::from(screen.0), f64::from(screen.1));
    let margin = f64::from(RADIUS + 8);
    // Offsets within a cell, in fractions of the cell: a fixed, irregular pattern.
    const JITTER: [(f64, f64); 7] = [
        (-0.21, 0.17),
        (0.13, -0.24),
        (0.27, 0.08),
        (-0.09, -0.15),
        (0.05, 0.26),
        (-0.26, -0.04),
        (0.19, 0.21),
    ];
    (0..n)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let (cw, ch) = (w / cols as f64, h / rows as f64);
            let (jx, jy) = JITTER[i % JITTER.len()];
            let x = (c as f64 + 0.5 + jx * 0.8) * cw;
            let y = (r as f64 + 0.5 + jy * 0.8) * ch;
            Target {
                n: i + 1,
                x: x.clamp(margin, w - margin).round() as i32,
                y: y.clamp(margin, h - margin).round() as i32,
            }
        })
        .collect()
}

/// The page that shows the targets (no script: nothing on it reacts to a click).
pub fn page(targets: &[Target]) -> String {
    let [tr, tg, tb] = TARGET_RGB;
    let [pr, pg, pb] = PAGE_RGB;
    let d = RADIUS * 2;
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>selfagent calibration</title><style>\n\
         html,body{{margin:0;padding:0;width:100%;height:100%;overflow:hidden;background:rgb({pr},{pg},{pb});user-select:none}}\n\
         .t{{position:absolute;width:{d}px;height:{d}px;border-radius:50%;background:rgb({tr},{tg},{tb});color:#fff;\
         font:bold 22px/{d}px \"DejaVu Sans\",sans-serif;text-align:center}}\n\
         </style></head><body>\n"
    );
    for t in targets {
        html.push_str(&format!(
            "<div class=\"t\" style=\"left:{}px;top:{}px\">{}</div>\n",
            t.x - RADIUS,
            t.y - RADIUS,
            t.n
        ));
    }
    html.push_str("</body></html>\n");
    html
}

/// The episode's task: the page written and shown full screen. No checks: the report is
/// the calibration's result.
pub fn task(targets: &[Target]) -> Task {
    Task {
        id: "calibrate".into(),
        instruction: format!(
            "Calibration: click the centre of each of {} numbered targets, one at a time.",
            targets.len()
        ),
        setup: vec![
            SetupStep::WriteFile {
                path: PAGE.into(),
                content: page(targets),
            },
            SetupStep::Launch {
                app: format!("firefox --kiosk file://{PAGE}"),
            },
        ],
        limits: Default::default(),
        post: Vec::new(),
        check: None,
        tags: vec!["calibration".into()],
        source: None,
        from: None,
        desktop: None,
        screen: None,
        sudo: false,
    }
}

/// What the model is asked for one target.
pub fn instruction(t: &Target) -> String {
    format!(
        "The screen shows numbered red circles. Click the centre of the red circle labelled {} \
         (one click, nothing else).",
        t.n
    )
}

/// What to calibrate with.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub targets: Vec<Target>,
    /// Model calls per target before it counts as not clicked (a model may first ask for a
    /// screenshot or move the pointer).
    pub turns: u32,
    /// The largest median error, in screen pixels, that is usable.
    pub max_error: f64,
}

impl Calibration {
    pub fn new(count: usize, screen: (u32, u32), max_error: f64) -> Self {
        Self {
            targets: layout(count, screen),
            turns: 3,
            max_error,
        }
    }
}

/// One target's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetResult {
    pub n: usize,
    /// The target's centre.
    pub x: i32,
    pub y: i32,
    /// The numbers the model wrote for its click, in its coordinate space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<[f64; 2]>,
    /// Where the click landed on the screen (none when it was refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clicked: Option<[i32; 2]>,
    /// Screen pixels from the centre, as mapped in the configured space (also for a refused
    /// click: where it would have landed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_px: Option<f64>,
    /// The step (model call) that clicked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// Why there is no click, or why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How well the model's numbers fit one coordinate space.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpaceFit {
    /// The `--coords` value.
    pub coords: String,
    pub describe: String,
    /// `None`: fewer than half the targets have a click.
    pub median_px: Option<f64>,
    pub configured: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The clicks land.
    Usable,
    /// They would land in another coordinate space (see the suggestion).
    WrongSpace,
    /// They fit no space.
    NotUsable,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Usable => "usable",
            Self::WrongSpace => "wrong space",
            Self::NotUsable => "not usable",
        }
    }
}

/// The calibration's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub protocol: String,
    pub coords: String,
    pub screen: [u32; 2],
    /// The size of the screenshots sent.
    pub sent: [u32; 2],
    pub targets: Vec<TargetResult>,
    /// The median error in screen pixels (a target without a click counts as missed
    /// entirely); `None` when fewer than half the targets have a click.
    pub median_px: Option<f64>,
    /// Clicks within a target's radius.
    pub hits: usize,
    pub max_error: f64,
    /// Every space the numbers were read in, best first.
    pub spaces: Vec<SpaceFit>,
    pub verdict: Verdict,
    /// The flags to use instead (`--coords 1000`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
    pub message: String,
}

/// Collects each target's click from the replies.
struct Clicks<'a> {
    targets: &'a [Target],
    /// Decodes the same replies mapping every point, also outside the model's space.
    lenient: Box<dyn Protocol>,
    /// Where the pointer was last moved in the current probe, on the screen (or why that
    /// was refused) and as mapped leniently: a click without a point lands there.
    moved: Option<(Result<Point, String>, Point)>,
    found: Vec<Option<Found>>,
}

/// A target's click: on the screen (or why refused), and the numbers the model wrote
/// (times [`protocol::LENIENT_SCALE`]).
#[derive(Debug, Clone)]
struct Found {
    step: u32,
    screen: Result<Point, String>,
    lenient: Point,
}

impl Found {
    fn numbers(&self) -> (f64, f64) {
        (
            f64::from(self.lenient.x) / protocol::LENIENT_SCALE,
            f64::from(self.lenient.y) / protocol::LENIENT_SCALE,
        )
    }
}

impl agent::Prober for Clicks<'_> {
    fn instruction(&self, index: usize) -> Option<String> {
        self.targets.get(index).map(instruction)
    }

    fn reply(&mut self, index: usize, step: u32, raw: &Value, decision: &Decision) -> bool {
        let lenient = self
            .lenient
            .decode(raw)
            .map(|d| d.calls)
            .unwrap_or_default();
        if self.found.len() <= index {
            self.found.resize(index + 1, None);
            self.moved = None;
        }
        for (i, call) in decision.calls.iter().enumerate() {
            let loose = lenient.get(i).and_then(|c| c.action.as_ref().ok());
            let (clicks, point) = match loose {
                Some(Action::MouseMove { coordinate }) => (false, Some(*coordinate)),
                Some(Action::Click { coordinate, .. } | Action::MouseDown { coordinate, .. }) => {
                    (true, *coordinate)
                }
                _ => (false, None),
            };
            // Where it lands on the screen: the action's point, or why it was refused.
            let actual = |p: Point| match &call.action {
                Ok(a) => Ok(a.points().first().copied().unwrap_or(p)),
                Err(e) => Err(e.to_string()),
            };
            let (screen, lenient) = match (clicks, point) {
                (false, Some(p)) => {
                    self.moved = Some((actual(p), p));
                    continue;
                }
                (false, None) => continue,
                (true, Some(p)) => (actual(p), p),
                (true, None) => match &self.moved {
                    Some((screen, p)) => (screen.clone(), *p),
                    None => continue,
                },
            };
            self.found[index] = Some(Found {
                step,
                screen,
                lenient,
            });
            return true;
        }
        false
    }
}

/// Runs the calibration on a desktop that shows (or is about to show) the page of
/// [`task`]; the report is emitted as [`Event::Calibration`] and returned (`None` when
/// the episode ended before every target was asked).
pub async fn drive<C: Computer, M: Model>(
    cal: &Calibration,
    cfg: &AgentConfig,
    computer: &C,
    model: &M,
    emit: &Emitter,
    control: mpsc::Receiver<Command>,
) -> (Outcome, Option<Report>) {
    let started = Instant::now();
    let screen = computer.size();
    // Ended before any target was asked: no report.
    let failed =
        |ended_by, error| Outcome::failed(ended_by, error, started.elapsed().as_millis() as u64);
    if let Err(e) = wait_for_page(computer, &cal.targets).await {
        let outcome = failed(EndedBy::Harness, e);
        emit.emit(Event::Finished(outcome.clone())).await;
        return (outcome, None);
    }
    if let Some(grounder) = &cfg.grounder {
        return drive_grounder(cal, grounder, computer, emit, started).await;
    }
    let lenient = match protocol::create_lenient(&cfg.protocol, screen) {
        Ok(p) => p,
        Err(e) => {
            let outcome = failed(EndedBy::Error, e);
            emit.emit(Event::Finished(outcome.clone())).await;
            return (outcome, None);
        }
    };
    let geometry = protocol::geometry(&cfg.protocol, screen);
    let mut clicks = Clicks {
        targets: &cal.targets,
        lenient,
        moved: None,
        found: Vec::new(),
    };
    let outcome = agent::probe(cfg, computer, model, emit, control, &mut clicks, cal.turns).await;
    if outcome.status != Status::Succeeded {
        return (outcome, None);
    }
    let report = analyze(
        &cfg.protocol,
        geometry,
        &cal.targets,
        &clicks.found,
        cal.max_error,
    );
    if let Ok(json) = serde_json::to_value(&report) {
        emit.emit(Event::Calibration(json)).await;
    }
    (outcome, Some(report))
}

/// The grounder alone (`calibrate --grounder`): asked where each target is, on the
/// screenshot, in its own prompt and space; nothing is clicked. Each answer is a step of
/// the recording (its screenshot and what the grounder said).
async fn drive_grounder<C: Computer>(
    cal: &Calibration,
    grounder: &agent::Grounder,
    computer: &C,
    emit: &Emitter,
    started: Instant,
) -> (Outcome, Option<Report>) {
    let screen = computer.size();
    let geometry = protocol::grounding::geometry(grounder.space, screen);
    let mut found = Vec::with_capacity(cal.targets.len());
    let (mut tokens_in, mut tokens_out) = (0, 0);
    for (i, t) in cal.targets.iter().enumerate() {
        let step = (i + 1) as u32;
        let shot = match computer.screenshot().await {
            Ok(s) => s,
            Err(e) => {
                let outcome = Outcome::failed(
                    EndedBy::Harness,
                    format!("the desktop stopped working: {e}"),
                    started.elapsed().as_millis() as u64,
                );
                emit.emit(Event::Finished(outcome.clone())).await;
                return (outcome, None);
            }
        };
        let frame = agent::Frame::new(shot.png.clone(), shot.width, shot.height);
        emit.emit(Event::StepStarted { step }).await;
        emit.emit(Event::Observation {
            step,
            frame: frame.clone(),
        })
        .await;
        let element = format!("the red circle labelled {}", t.n);
        let located = grounder
            .locate(&element, &frame.png, screen, &frame.sha256)
            .await;
        tokens_in += located.usage.input;
        tokens_out += located.usage.output;
        // The numbers as the grounder wrote them, for reading in every space.
        let numbers = protocol::parse_chat(&located.response)
            .ok()
            .and_then(|r| r.text)
            .and_then(|text| grounder.dialect.point(&text).ok());
        found.push(numbers.map(|(x, y)| Found {
            step,
            screen: located.point.clone(),
            lenient: Point::new(
                (x * protocol::LENIENT_SCALE).clamp(-1e9, 1e9) as i32,
                (y * protocol::LENIENT_SCALE).clamp(-1e9, 1e9) as i32,
            ),
        }));
        emit.emit(Event::Grounded {
            step,
            index: 0,
            element,
            point: located.point.as_ref().ok().copied(),
            error: located.point.as_ref().err().cloned(),
            model: grounder.name().to_owned(),
            usage: located.usage,
            model_ms: located.model_ms,
            exchange: Some(std::sync::Arc::new(agent::Exchange {
                request: located.request,
                response: located.response,
            })),
        })
        .await;
        emit.emit(Event::StepFinished {
            step,
            frame,
            step_ms: located.model_ms,
        })
        .await;
    }
    let cfg = ProtocolConfig {
        space: grounder.space,
        ..ProtocolConfig::default()
    };
    let mut report = analyze(&cfg, geometry, &cal.targets, &found, cal.max_error);
    report.protocol = format!("grounder {} ({})", grounder.dialect.name(), grounder.name());
    report.suggestion = report
        .suggestion
        .map(|s| s.replace("--coords", "--grounder-coords"));
    report.message = report.message.replace("--coords", "--grounder-coords");
    let outcome = Outcome {
        status: Status::Succeeded,
        ended_by: EndedBy::Model,
        answer: None,
        error: None,
        steps: cal.targets.len() as u32,
        tokens_in,
        tokens_out,
        wall_ms: started.elapsed().as_millis() as u64,
        cost: grounder
            .price
            .as_ref()
            .map(|p| p.price.cost(tokens_in, tokens_out)),
    };
    if let Ok(json) = serde_json::to_value(&report) {
        emit.emit(Event::Calibration(json)).await;
    }
    emit.emit(Event::Finished(outcome.clone())).await;
    (outcome, Some(report))
}

/// Waits until the screen shows the targets as drawn: evidence, not a delay.
async fn wait_for_page<C: Computer>(computer: &C, targets: &[Target]) -> Result<(), String> {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        let last = match computer.screenshot().await {
            Ok(shot) => {
                let img = match &shot.rgb {
                    Some(rgb) => image::RgbImage::from_raw(shot.width, shot.height, rgb.to_vec())
                        .ok_or_else(|| "the screenshot's pixels do not fit its size".to_owned()),
                    None => image::load_from_memory(&shot.png)
                        .map(|i| i.to_rgb8())
                        .map_err(|e| format!("the screenshot did not decode: {e}")),
                };
                match img.and_then(|img| page_shown(&img, targets)) {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                }
            }
            Err(e) => return Err(format!("the desktop stopped working: {e}")),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "the calibration page did not show within {} s ({last})",
                PAGE_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether every target is drawn where it should be: its colour inside, the page's just
/// outside (so the page is neither shifted nor zoomed).
fn page_shown(img: &image::RgbImage, targets: &[Target]) -> Result<(), String> {
    let near = |x: i32, y: i32, rgb: [u8; 3]| {
        if x < 0 || y < 0 || x >= img.width() as i32 || y >= img.height() as i32 {
            return false;
        }
        let p = img.get_pixel(x as u32, y as u32).0;
        p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 24)
    };
    for t in targets {
        let inside = [
            (0, 6 - RADIUS),
            (6 - RADIUS, 0),
            (RADIUS - 6, 0),
            (0, RADIUS - 6),
        ];
        let outside = [
            (0, -RADIUS - 4),
            (-RADIUS - 4, 0),
            (RADIUS + 4, 0),
            (0, RADIUS + 4),
        ];
        if !inside
            .iter()
            .all(|(dx, dy)| near(t.x + dx, t.y + dy, TARGET_RGB))
            || !outside
                .iter()
                .all(|(dx, dy)| near(t.x + dx, t.y + dy, PAGE_RGB))
        {
            return Err(format!("target {} is not drawn at ({}, {})", t.n, t.x, t.y));
        }
    }
    Ok(())
}

/// Errors, fits and the verdict: the numbers first ([`target_results`], [`space_fits`]),
/// then what they mean ([`verdict`]).
fn analyze(
    cfg: &ProtocolConfig,
    geometry: Geometry,
    targets: &[Target],
    found: &[Option<Found>],
    max_error: f64,
) -> Report {
    let numbers: Vec<Option<(f64, f64)>> = targets
        .iter()
        .enumerate()
        .map(|(i, _)| found.get(i).and_then(Option::as_ref).map(Found::numbers))
        .collect();
    let results = target_results(geometry, targets, found, &numbers);
    let spaces = space_fits(cfg, geometry, targets, &numbers, &results);
    let errors: Vec<Option<f64>> = results.iter().map(|r| r.error_px).collect();
    let median_px = median(&errors).map(round1);
    let hits = results
        .iter()
        .filter(|r| r.clicked.is_some() && r.error_px.is_some_and(|e| e <= f64::from(RADIUS)))
        .count();
    let refused = results
        .iter()
        .filter(|r| r.note.as_deref().is_some_and(|n| n.starts_with("refused")))
        .count();
    let (verdict, suggestion, message) = verdict(
        geometry,
        &spaces,
        Tally {
            median_px,
            hits,
            refused,
            targets: targets.len(),
            max_error,
        },
    );
    Report {
        protocol: cfg.name.to_string(),
        coords: geometry.space.to_string(),
        screen: [geometry.screen.0, geometry.screen.1],
        sent: [geometry.sent.0, geometry.sent.1],
        targets: results,
        median_px,
        hits,
        max_error,
        spaces,
        verdict,
        suggestion,
        message,
    }
}

/// How far each click landed from its target, in the configured space.
fn target_results(
    geometry: Geometry,
    targets: &[Target],
    found: &[Option<Found>],
    numbers: &[Option<(f64, f64)>],
) -> Vec<TargetResult> {
    let (sw, sh) = (f64::from(geometry.screen.0), f64::from(geometry.screen.1));
    let distance = |t: &Target, x: f64, y: f64| (x - f64::from(t.x)).hypot(y - f64::from(t.y));
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let f = found.get(i).and_then(Option::as_ref);
            let mut r = TargetResult {
                n: t.n,
                x: t.x,
                y: t.y,
                model: numbers[i].map(|(x, y)| [round3(x), round3(y)]),
                clicked: None,
                error_px: None,
                step: f.map(|f| f.step),
                note: None,
            };
            match f {
                None => r.note = Some("no click".into()),
                Some(f) => {
                    // Where the configured space puts the model's numbers (unrounded).
                    let (x, y) = f.numbers();
                    let (mx, my) = geometry.model_range();
                    r.error_px = Some(round1(distance(t, x * sw / mx, y * sh / my)));
                    match &f.screen {
                        Ok(p) => r.clicked = Some([p.x, p.y]),
                        Err(e) => r.note = Some(format!("refused: {e}")),
                    }
                }
            }
            r
        })
        .collect()
}

/// The same numbers read in every coordinate space, best fit first.
fn space_fits(
    cfg: &ProtocolConfig,
    geometry: Geometry,
    targets: &[Target],
    numbers: &[Option<(f64, f64)>],
    results: &[TargetResult],
) -> Vec<SpaceFit> {
    let (sw, sh) = (f64::from(geometry.screen.0), f64::from(geometry.screen.1));
    let distance = |t: &Target, x: f64, y: f64| (x - f64::from(t.x)).hypot(y - f64::from(t.y));
    // The same numbers read in every space.
    let smart = protocol::geometry(
        &ProtocolConfig {
            space: CoordSpace::Smart,
            ..cfg.clone()
        },
        geometry.sent,
    )
    .sent;
    let (gx, gy) = geometry.sent;
    let candidates: Vec<(CoordSpace, String, f64, f64)> = vec![
        (
            CoordSpace::Native,
            format!("pixels of the {gx}x{gy} image sent"),
            f64::from(gx),
            f64::from(gy),
        ),
        (
            CoordSpace::Smart,
            format!(
                "pixels of the image smart-resized to {}x{} (as the model's processor does)",
                smart.0, smart.1
            ),
            f64::from(smart.0),
            f64::from(smart.1),
        ),
        (CoordSpace::Thousand, "0 to 1000".into(), 1000.0, 1000.0),
        (CoordSpace::NineNineNine, "0 to 999".into(), 999.0, 999.0),
        (CoordSpace::Unit, "fractions 0 to 1".into(), 1.0, 1.0),
    ];
    let (cx, cy) = geometry.model_range();
    let mut spaces: Vec<SpaceFit> = Vec::new();
    let mut seen: Vec<(f64, f64)> = Vec::new();
    for (space, describe, mx, my) in candidates {
        let configured = (mx - cx).abs() < 1e-9 && (my - cy).abs() < 1e-9;
        if seen
            .iter()
            .any(|(x, y)| (x - mx).abs() < 1e-9 && (y - my).abs() < 1e-9)
        {
            if configured && let Some(s) = spaces.iter_mut().find(|s| s.describe == describe) {
                s.configured = true;
            }
            continue;
        }
        seen.push((mx, my));
        let errors: Vec<Option<f64>> = targets
            .iter()
            .zip(numbers)
            .map(|(t, n)| n.map(|(x, y)| distance(t, x * sw / mx, y * sh / my)))
            .collect();
        spaces.push(SpaceFit {
            coords: if configured {
                geometry.space.to_string()
            } else {
                space.to_string()
            },
            describe,
            median_px: median(&errors).map(round1),
            configured,
        });
    }
    if !spaces.iter().any(|s| s.configured) {
        // A space none of the candidates is (cannot happen today): measured as mapped.
        let errors: Vec<Option<f64>> = results.iter().map(|r| r.error_px).collect();
        spaces.push(SpaceFit {
            coords: geometry.space.to_string(),
            describe: geometry.describe(),
            median_px: median(&errors).map(round1),
            configured: true,
        });
    }
    spaces.sort_by(|a, b| {
        let key = |s: &SpaceFit| s.median_px.unwrap_or(f64::INFINITY);
        key(a)
            .total_cmp(&key(b))
            .then(b.configured.cmp(&a.configured))
    });
    spaces
}

/// What a calibration counted, for the verdict.
struct Tally {
    median_px: Option<f64>,
    hits: usize,
    refused: usize,
    targets: usize,
    max_error: f64,
}

/// The verdict, its suggestion and its words.
fn verdict(
    geometry: Geometry,
    spaces: &[SpaceFit],
    tally: Tally,
) -> (Verdict, Option<String>, String) {
    let Tally {
        median_px,
        hits,
        refused,
        max_error,
        ..
    } = tally;
    let good = |m: Option<f64>| m.is_some_and(|m| m <= max_error);
    let best_other = spaces.iter().find(|s| !s.configured);
    let here = format!(
        "{} ({})",
        geometry.space,
        spaces
            .iter()
            .find(|s| s.configured)
            .map(|s| s.describe.clone())
            .unwrap_or_default()
    );
    let shown = |m: Option<f64>| m.map_or("none".to_owned(), |m| format!("{m} px"));
    let (verdict, suggestion, message) = if good(median_px) && refused * 2 < tally.targets {
        (
            Verdict::Usable,
            None,
            format!(
                "clicks land: median error {} over {} targets, {hits} on target, in {here}",
                shown(median_px),
                tally.targets
            ),
        )
    } else if let Some(other) = best_other.filter(|o| good(o.median_px)) {
        (
            Verdict::WrongSpace,
            Some(format!("--coords {}", other.coords)),
            format!(
                "these look like {}, not {here}: use --coords {} (median error {} there, {} as configured)",
                other.describe,
                other.coords,
                shown(other.median_px),
                shown(median_px)
            ),
        )
    } else {
        let best = spaces
            .first()
            .map(|s| {
                format!(
                    " (the closest: {}, median {})",
                    s.coords,
                    shown(s.median_px)
                )
            })
            .unwrap_or_default();
        (
            Verdict::NotUsable,
            None,
            format!(
                "not usable: median error {} in {here}, and the clicks fit no coordinate space{best}",
                shown(median_px)
            ),
        )
    };
    (verdict, suggestion, message)
}

/// The median, a missing value counting as infinitely far; `None` when that is where the
/// median falls.
fn median(values: &[Option<f64>]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().map(|e| e.unwrap_or(f64::INFINITY)).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    m.is_finite().then_some(m)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The report as a person reads it.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "calibration: {} protocol, --coords {} ({}x{} screen, {}x{} sent)\n",
        report.protocol,
        report.coords,
        report.screen[0],
        report.screen[1],
        report.sent[0],
        report.sent[1]
    );
    out.push_str("  target  centre        model said        landed        error\n");
    for t in &report.targets {
        let model = t
            .model
            .map(|[x, y]| format!("({x}, {y})"))
            .unwrap_or_else(|| "-".into());
        let landed = t
            .clicked
            .map(|[x, y]| format!("({x}, {y})"))
            .unwrap_or_else(|| "-".into());
        let error = t
            .error_px
            .map(|e| format!("{e} px"))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "  {:>6}  {:<12}  {:<16}  {:<12}  {:>8}{}\n",
            t.n,
            format!("({}, {})", t.x, t.y),
            model,
            landed,
            error,
            t.note
                .as_deref()
                .map(|n| format!("  {}", shorten(n, 70)))
                .unwrap_or_default()
        ));
    }
    out.push_str("  the same numbers read as:\n");
    for s in &report.spaces {
        out.push_str(&format!(
            "    --coords {:<6} median {:>10}  {}{}\n",
            s.coords,
            s.median_px
                .map(|m| if m > 99_999.0 {
                    "far off".to_owned()
                } else {
                    format!("{m} px")
                })
                .unwrap_or_else(|| "-".into()),
            s.describe,
            if s.configured { "  (configured)" } else { "" }
        ));
    }
    out.push_str(&format!(
        "verdict: {} (at most {} px median): {}\n",
        report.verdict.as_str().to_uppercase(),
        report.max_error,
        report.message
    ));
    out
}

fn shorten(s: &str, max: usize) -> String {
    crate::text::cut(s, max + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A click whose model numbers are `p` (pixels of a screen-sized image, or 0-1000).
    fn found(step: u32, p: Point, refused: bool) -> Option<Found> {
        let scale = protocol::LENIENT_SCALE as i32;
        Some(Found {
            step,
            screen: if refused {
                Err("outside".into())
            } else {
                Ok(p)
            },
            lenient: Point::new(p.x * scale, p.y * scale),
        })
    }

    #[test]
    fn targets_are_on_screen_and_share_no_row_or_column() {
        for (n, screen) in [(9, (1280, 800)), (5, (1920, 1080)), (16, (1024, 768))] {
            let t = layout(n, screen);
            assert_eq!(t.len(), n);
            for a in &t {
                assert!(a.x >= RADIUS && a.x <= screen.0 as i32 - RADIUS, "{a:?}");
                assert!(a.y >= RADIUS && a.y <= screen.1 as i32 - RADIUS, "{a:?}");
                for b in &t {
                    if a != b {
                        assert!(
                            (a.x - b.x).abs() > 2 * RADIUS || (a.y - b.y).abs() > 2 * RADIUS,
                            "{a:?} and {b:?} overlap"
                        );
                    }
                }
            }
            let mut xs: Vec<i32> = t.iter().map(|a| a.x).collect();
            xs.sort();
            xs.dedup();
            assert_eq!(xs.len(), n, "a shared column in {t:?}");
        }
    }

    #[test]
    fn the_page_draws_what_the_check_expects() {
        let targets = layout(4, (400, 300));
        let mut img = image::RgbImage::from_pixel(400, 300, image::Rgb(PAGE_RGB));
        assert!(page_shown(&img, &targets).is_err(), "nothing drawn yet");
        for t in &targets {
            for y in t.y - RADIUS..t.y + RADIUS {
                for x in t.x - RADIUS..t.x + RADIUS {
                    if (x - t.x).pow(2) + (y - t.y).pow(2) < RADIUS * RADIUS {
                        img.put_pixel(x as u32, y as u32, image::Rgb(TARGET_RGB));
                    }
                }
            }
        }
        page_shown(&img, &targets).unwrap();
        // Shifted by 10 px (a bar above the page): not the page as drawn.
        let mut shifted = image::RgbImage::from_pixel(400, 300, image::Rgb(PAGE_RGB));
        image::imageops::overlay(&mut shifted, &img, 0, 10);
        assert!(page_shown(&shifted, &targets).is_err());
        let html = page(&targets);
        for t in &targets {
            assert!(html.contains(&format!(
                "left:{}px;top:{}px\">{}<",
                t.x - RADIUS,
                t.y - RADIUS,
                t.n
            )));
        }
    }

    fn cfg(space: CoordSpace) -> ProtocolConfig {
        ProtocolConfig {
            space,
            ..Default::default()
        }
    }

    #[test]
    fn clicks_in_the_configured_space_are_usable() {
        let screen = (1280, 800);
        let targets = layout(9, screen);
        let g = Geometry::pixels(screen, screen, CoordSpace::Native);
        let found: Vec<_> = targets
            .iter()
            .map(|t| found(1, Point::new(t.x + 2, t.y - 1), false))
            .collect();
        let r = analyze(&cfg(CoordSpace::Native), g, &targets, &found, 10.0);
        assert_eq!(r.verdict, Verdict::Usable, "{}", r.message);
        assert_eq!(r.median_px, Some(2.2));
        assert_eq!(r.hits, 9);
        assert!(r.spaces[0].configured);
    }

    #[test]
    fn numbers_of_another_space_are_named() {
        // The model answers 0-1000 while pixels are configured: what lands is far off, and
        // some answers are refused (outside the image).
        let screen = (1280, 800);
        let targets = layout(9, screen);
        let g = Geometry::pixels(screen, screen, CoordSpace::Native);
        let found: Vec<_> = targets
            .iter()
            .map(|t| {
                let x = (f64::from(t.x) * 1000.0 / 1280.0).round() as i32;
                let y = (f64::from(t.y) * 1000.0 / 800.0).round() as i32;
                found(1, Point::new(x, y), y >= 800)
            })
            .collect();
        let r = analyze(&cfg(CoordSpace::Native), g, &targets, &found, 10.0);
        assert_eq!(r.verdict, Verdict::WrongSpace, "{}", r.message);
        assert_eq!(r.suggestion.as_deref(), Some("--coords 1000"));
        assert!(r.message.contains("0 to 1000"), "{}", r.message);
        assert!(r.median_px.unwrap() > 50.0);
        assert_eq!(r.spaces[0].coords, "1000");
        let text = render(&r);
        assert!(text.contains("verdict: WRONG SPACE"), "{text}");
        assert!(text.contains("refused: outside"), "{text}");
        assert!(
            text.contains("--coords 1000   median     0.4 px  0 to 1000"),
            "{text}"
        );
    }

    #[test]
    fn random_clicks_fit_no_space() {
        let screen = (1280, 800);
        let targets = layout(9, screen);
        let g = Geometry::pixels(screen, screen, CoordSpace::Native);
        let mut seed = 7u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % m) as i32
        };
        let found: Vec<_> = targets
            .iter()
            .map(|_| found(1, Point::new(next(1280), next(800)), false))
            .collect();
        let r = analyze(&cfg(CoordSpace::Native), g, &targets, &found, 10.0);
        assert_eq!(r.verdict, Verdict::NotUsable, "{}", r.message);
        assert!(r.suggestion.is_none());
    }

    #[test]
    fn missing_clicks_count_as_missed() {
        assert_eq!(median(&[Some(1.0), None, None]), None);
        assert_eq!(median(&[Some(1.0), Some(3.0), None]), Some(3.0));
        assert_eq!(median(&[Some(1.0), Some(3.0)]), Some(2.0));
        assert_eq!(median(&[]), None);
    }
}
