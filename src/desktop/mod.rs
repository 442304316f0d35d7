//! A desktop you can see and drive: one VNC session (framebuffer, pointer, keys) and one X11
//! connection (windows, pointer position, window manager) per sandbox.
//!
//! - [`Desktop::connect`] is the readiness check: it returns once the VNC handshake is done,
//!   the first full frame has arrived and the window manager has announced itself.
//! - [`Desktop::screenshot`] encodes the live framebuffer; it never runs anything in the
//!   container. Repeated calls without a screen change reuse the last PNG.
//! - [`Desktop::act`] performs one [`Action`] over VNC (XTEST for the back/forward buttons).
//! - [`Desktop::settle`] waits until the screen has been quiet for a short window, with a
//!   cap: used after actions instead of sleeps.

mod framebuffer;
mod vnc;
mod x11;

pub use framebuffer::{Rect, encode_png};
pub use vnc::FrameStamp;
pub use x11::Window;

use crate::action::{self, Action, Button, InvalidAction, Point};
use crate::keys;
use crate::sandbox::{Sandbox, SandboxError};
use regex::Regex;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vnc::{Input, VncError, VncSession};
use x11::{X11, X11Error};

#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    #[error("sandbox {id}: {error} (is the container still running? see `selfagent sandbox ls`)")]
    Vnc { id: String, error: VncError },
    #[error("sandbox {id}: {error}")]
    X11 { id: String, error: X11Error },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("encoding a screenshot: {0}")]
    Png(String),
    #[error("sandbox {id}: the desktop was not ready within {secs:.1} s: {reason}")]
    NotReady {
        id: String,
        secs: f64,
        reason: String,
    },
    #[error("timed out after {secs:.1} s waiting for {what}")]
    Timeout { what: String, secs: f64 },
}

/// Why an action did not happen: a mistake to report to the model, or a broken desktop.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Invalid(#[from] InvalidAction),
    #[error(transparent)]
    Desktop(#[from] DesktopError),
}

impl From<SandboxError> for ActionError {
    fn from(e: SandboxError) -> Self {
        Self::Desktop(e.into())
    }
}

/// A PNG of the whole screen (or a region, for `zoom`).
#[derive(Debug, Clone)]
pub struct Screenshot {
    pub png: Arc<Vec<u8>>,
    pub width: u32,
    pub height: u32,
    /// The framebuffer generation it shows.
    pub generation: u64,
    /// The pixels, packed RGB8, when the PNG was made from them here (a model that sees
    /// another size gets them resized without decoding the PNG again).
    pub rgb: Option<Arc<Vec<u8>>>,
}

impl Screenshot {
    /// Encodes packed RGB8 pixels as PNG on the blocking pool (a few ms of CPU).
    pub(crate) async fn encode(
        width: u32,
        height: u32,
        rgb: Vec<u8>,
        generation: u64,
    ) -> Result<Self, DesktopError> {
        let rgb = Arc::new(rgb);
        let pixels = rgb.clone();
        let png = tokio::task::spawn_blocking(move || encode_png(width, height, &pixels))
            .await
            .map_err(|e| DesktopError::Png(e.to_string()))?
            .map_err(|e| DesktopError::Png(e.to_string()))?;
        Ok(Self {
            png: Arc::new(png),
            width,
            height,
            generation,
            rgb: Some(rgb),
        })
    }
}

/// What an action produced besides its effect on the screen.
#[derive(Debug, Clone, Default)]
pub struct ActionOutput {
    /// Text for the model (cursor position, command output, ...).
    pub text: Option<String>,
    pub cursor: Option<Point>,
    /// An image for the model (`zoom`).
    pub image: Option<Screenshot>,
}

/// How [`Desktop::settle`] decides that the screen is done changing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SettleOptions {
    /// The screen must be unchanged this long.
    #[serde(with = "millis")]
    pub quiet: Duration,
    /// With no change at all since the action began, give up waiting for one after this.
    #[serde(with = "millis")]
    pub first_change: Duration,
    /// Never wait longer than this in total.
    #[serde(with = "millis")]
    pub max: Duration,
}

impl Default for SettleOptions {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(40),
            // The slowest common reaction measured here is VTE's 33 ms redraw timer; slower
            // desktops widen the window themselves (see `settle`).
            first_change: Duration::from_millis(45),
            max: Duration::from_secs(3),
        }
    }
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// What [`Desktop::settle`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SettleReport {
    pub waited_ms: f64,
    /// Framebuffer changes since the action began.
    pub changes: u64,
    /// False when the cap ran out before the screen went quiet.
    pub quiet: bool,
    /// From the mark to the first change, when settle saw it happen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reaction_ms: Option<f64>,
}

/// Where settling starts from: the framebuffer's stamp and when it was taken (just before
/// an action), from [`Desktop::mark`].
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub stamp: FrameStamp,
    pub taken: Instant,
}

/// Reaction times remembered for the first-change window.
const REACTION_HISTORY: usize = 16;
/// The first-change window never grows beyond this.
const FIRST_CHANGE_CAP: Duration = Duration::from_secs(1);

/// The quiet window never grows beyond this.
const QUIET_CAP: Duration = Duration::from_millis(500);

fn median(recent: &[Duration]) -> Option<Duration> {
    let mut sorted = recent.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

/// The first-change window: `floor`, or twice the median recent reaction when that is
/// longer (a loaded machine reacts slowly), capped at [`FIRST_CHANGE_CAP`].
fn adaptive_window(floor: Duration, recent: &[Duration]) -> Duration {
    median(recent).map_or(floor, |m| (m * 2).min(FIRST_CHANGE_CAP).max(floor))
}

/// The quiet window: `floor`, or the median recent reaction when that is longer, capped at
/// [`QUIET_CAP`].
fn adaptive_quiet(floor: Duration, recent: &[Duration]) -> Duration {
    median(recent).map_or(floor, |m| m.min(QUIET_CAP).max(floor))
}

/// Which window to wait for: regexes on the title and/or the WM_CLASS (class or instance).
#[derive(Debug, Clone, Default)]
pub struct WindowMatch {
    pub title: Option<Regex>,
    pub class: Option<Regex>,
}

impl WindowMatch {
    pub fn matches(&self, w: &Window) -> bool {
        self.title.as_ref().is_none_or(|r| r.is_match(&w.title))
            && self
                .class
                .as_ref()
                .is_none_or(|r| r.is_match(&w.class) || r.is_match(&w.instance))
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.title {
            parts.push(format!("title /{t}/"));
        }
        if let Some(c) = &self.class {
            parts.push(format!("class /{c}/"));
        }
        if parts.is_empty() {
            "any window".into()
        } else {
            format!("a window with {}", parts.join(" and "))
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// How long the desktop may take to become ready.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
        }
    }
}

/// Pointer state: where it is and which buttons are held (RFB sends both every time), and
/// where and when the last click ended.
#[derive(Debug, Default)]
struct InputState {
    x: u16,
    y: u16,
    buttons: u8,
    /// When the last click action was sent, and where.
    last_click: Option<(Instant, u16, u16)>,
}

/// One input step of an action.
enum Step {
    Send(Input),
    Pause(Duration),
}

fn pointer_at((x, y): (u16, u16), buttons: u8) -> Step {
    Step::Send(Input::Pointer { x, y, buttons })
}

/// The input an action sends, planned before anything is sent.
struct InputPlan {
    steps: Vec<Step>,
    /// Waited out first: the chain window of an earlier click at the same spot.
    wait_first: Duration,
    /// Where the pointer is afterwards, and which buttons stay down.
    pointer: (u16, u16),
    buttons: u8,
    /// Where a click ended (for the click chain).
    clicked_at: Option<(u16, u16)>,
}

enum Plan {
    Input(InputPlan),
    /// Back or forward: a move over VNC, then XTEST.
    XtestClick {
        x: u16,
        y: u16,
        button: Button,
        count: u8,
    },
    /// Not input (wait, screenshot, zoom, setup actions, ...).
    Other,
}

/// A short pause between press and motion in drags, so toolkits see a drag, not a jump.
const DRAG_PAUSE: Duration = Duration::from_millis(16);
/// How long the screen must stay unchanged for a fresh desktop to count as drawn.
const DRAWN_QUIET: Duration = Duration::from_millis(150);
/// Longest one X11 connection attempt may take before it is retried.
const X11_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a new connection waits for the server to take the drawn cursor out of the frame.
const CURSOR_UNDRAW_WAIT: Duration = Duration::from_millis(150);
/// How long a pointer question waits for the last move sent to be applied.
const POINTER_SETTLE_WAIT: Duration = Duration::from_millis(250);
/// GDK counts a press as the third of a chain when it comes within twice the double-click
/// time (2 x 400 ms) of the chain's first press at the same spot (5 px): a triple click right
/// after a double click read as a fourth and fifth click. Each click action starts a chain
/// of its own, so a click that soon after another at the same spot waits out the window.
/// Counted from when the last click was sent, with a margin for a busy X server that
/// timestamps input late.
const CLICK_CHAIN_WINDOW: Duration = Duration::from_millis(1000);
/// GDK's double-click distance: presses this near count as the same spot.
const CLICK_CHAIN_DISTANCE: i32 = 5;
/// Between the clicks of a double or triple click. Toolkits count clicks by their timestamps;
/// six events in the same millisecond were sometimes taken for fewer clicks (VTE).
const MULTI_CLICK_GAP: Duration = Duration::from_millis(30);
/// Between wheel notches. Notches sent back to back were sometimes merged by a busy app
/// (VTE scrolled 27 lines back after 30 up); xdotool's `click --repeat` waits 100 ms.
const SCROLL_GAP: Duration = Duration::from_millis(10);
/// Most pixels between the points of a drag that are sent.
const DRAG_STEP_PX: f64 = 24.0;

pub struct Desktop {
    sandbox: Sandbox,
    vnc: VncSession,
    x11: X11,
    input: tokio::sync::Mutex<InputState>,
    shot_cache: std::sync::Mutex<Option<Screenshot>>,
    reactions: std::sync::Mutex<std::collections::VecDeque<Duration>>,
    /// Keys sent down and not yet up.
    held: std::sync::Mutex<std::collections::BTreeSet<u32>>,
}

impl std::fmt::Debug for Desktop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desktop")
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

fn button_mask(button: Button) -> Option<u8> {
    match button {
        Button::Left => Some(1),
        Button::Middle => Some(2),
        Button::Right => Some(4),
        Button::Back | Button::Forward => None,
    }
}

fn x_button(button: Button) -> u8 {
    match button {
        Button::Left => 1,
        Button::Middle => 2,
        Button::Right => 3,
        Button::Back => 8,
        Button::Forward => 9,
    }
}

impl Desktop {
    /// Connects to a sandbox's desktop and waits until it is ready. A container that stops
    /// meanwhile is reported at once, with what it printed last.
    pub async fn connect(sandbox: Sandbox, opts: ConnectOptions) -> Result<Self, DesktopError> {
        let started = Instant::now();
        let watched = sandbox.clone();
        tokio::select! {
            ready = Self::connect_inner(sandbox, opts) => ready,
            _ = watched.wait_exit() => {
                tracing::debug!(secs = started.elapsed().as_secs_f64(), "the container stopped while starting");
                Err(watched.died().await.into())
            }
        }
    }

    async fn connect_inner(sandbox: Sandbox, opts: ConnectOptions) -> Result<Self, DesktopError> {
        let started = Instant::now();
        let deadline = started + opts.timeout;
        let id = sandbox.short_id().to_owned();
        let not_ready = |reason: String| DesktopError::NotReady {
            id: id.clone(),
            secs: started.elapsed().as_secs_f64(),
            reason,
        };
        let endpoints = sandbox.endpoints().await?;
        let vnc = VncSession::connect(endpoints.vnc, &sandbox.secrets().vnc_password, deadline)
            .await
            .map_err(|e| not_ready(e.to_string()))?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "VNC connected, first frame in"
        );
        // Xvnc is the X server, so X11 is up once VNC answers; retry briefly for other setups.
        let x11 = loop {
            let attempt = tokio::time::timeout(
                X11_CONNECT_TIMEOUT,
                X11::connect(endpoints.x11, sandbox.secrets().cookie_bytes()),
            )
            .await;
            match attempt {
                Ok(Ok(x11)) => break x11,
                Ok(Err(e)) if Instant::now() >= deadline => return Err(not_ready(e.to_string())),
                Err(_) if Instant::now() >= deadline => {
                    return Err(not_ready("the X11 connection setup hung".into()));
                }
                Ok(Err(_)) | Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        // TigerVNC draws the cursor into a client's frames while that client's last pointer
        // event differs from the pointer position (a new connection has sent none). It takes
        // it out when the pointer moves and it next writes an update. Input is applied in
        // the X server's next cycle, so: move one pixel away and back, each time until X11
        // sees the pointer there, then ask for an update.
        let (px, py) = x11.pointer().await.map_err(|e| not_ready(e.to_string()))?;
        let (px, py) = (
            px.clamp(0, i32::from(u16::MAX)) as u16,
            py.clamp(0, i32::from(u16::MAX)) as u16,
        );
        let before_pointer = *vnc.changes.borrow();
        let nudge = if px > 0 { px - 1 } else { px + 1 };
        for x in [nudge, px] {
            vnc.send(vec![Input::Pointer {
                x,
                y: py,
                buttons: 0,
            }])
            .await
            .map_err(|e| not_ready(e.to_string()))?;
            x11.wait_pointer_at(i32::from(x), i32::from(py), CURSOR_UNDRAW_WAIT)
                .await
                .map_err(|e| not_ready(e.to_string()))?;
        }
        vnc.send(vec![Input::Refresh])
            .await
            .map_err(|e| not_ready(e.to_string()))?;
        let mut changes = x11.changes();
        loop {
            changes.borrow_and_update();
            if x11
                .window_manager_running()
                .await
                .map_err(|e| not_ready(e.to_string()))?
            {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(not_ready("the X11 connection closed".into())),
                Err(_) => return Err(not_ready("no window manager announced itself".into())),
            }
        }
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "window manager up"
        );
        let desktop = Self {
            sandbox,
            vnc,
            x11,
            input: tokio::sync::Mutex::new(InputState {
                x: px,
                y: py,
                ..Default::default()
            }),
            shot_cache: std::sync::Mutex::new(None),
            reactions: std::sync::Mutex::new(std::collections::VecDeque::new()),
            held: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        };
        // The update without the drawn cursor normally came in while the window manager
        // started; on a desktop that was already up, wait briefly for it.
        let undraw_started = Instant::now();
        let undrawn = desktop
            .wait_for_change(before_pointer, CURSOR_UNDRAW_WAIT)
            .await;
        tracing::debug!(
            undrawn = undrawn.is_some(),
            waited_ms = undraw_started.elapsed().as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "cursor out of the frame"
        );
        Ok(desktop)
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Screen size in pixels, as the framebuffer has it.
    pub fn size(&self) -> (u32, u32) {
        self.vnc
            .shared
            .fb
            .lock()
            .map(|fb| (fb.width(), fb.height()))
            .unwrap_or_else(|_| self.sandbox.size())
    }

    fn vnc_err(&self, error: VncError) -> DesktopError {
        DesktopError::Vnc {
            id: self.sandbox.short_id().to_owned(),
            error,
        }
    }

    fn x11_err(&self, error: X11Error) -> DesktopError {
        DesktopError::X11 {
            id: self.sandbox.short_id().to_owned(),
            error,
        }
    }

    /// An error when the VNC session has ended.
    pub fn ensure_open(&self) -> Result<(), DesktopError> {
        match self.vnc.shared.closed_reason() {
            Some(reason) => Err(self.vnc_err(VncError::Closed(reason))),
            None => Ok(()),
        }
    }

    /// The current framebuffer change stamp.
    pub fn frame_stamp(&self) -> FrameStamp {
        *self.vnc.changes.borrow()
    }

    /// Waits until the framebuffer's generation is no longer `since`, for at most
    /// `timeout`: true when it changed.
    pub async fn wait_change(&self, since: u64, timeout: Duration) -> bool {
        let mut rx = self.vnc.changes.clone();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|s| s.generation != since)).await,
            Ok(Ok(_))
        )
    }

    /// Resolves when the VNC session ends: the desktop died, or was removed.
    pub async fn gone(&self) {
        let mut rx = self.vnc.changes.clone();
        while rx.changed().await.is_ok() {}
    }

    /// A mark to settle from: take it just before an action.
    pub fn mark(&self) -> Mark {
        Mark {
            stamp: self.frame_stamp(),
            taken: Instant::now(),
        }
    }

    /// The current screen as packed RGB8 pixels with its size.
    pub fn frame_rgb(&self) -> Result<(u32, u32, Vec<u8>), DesktopError> {
        self.ensure_open()?;
        let fb = self
            .vnc
            .shared
            .fb
            .lock()
            .map_err(|_| self.vnc_err(VncError::Closed("framebuffer lock poisoned".into())))?;
        Ok((fb.width(), fb.height(), fb.rgb().to_vec()))
    }

    /// A PNG of the screen as it is now.
    pub async fn screenshot(&self) -> Result<Screenshot, DesktopError> {
        self.ensure_open()?;
        let generation = self.frame_stamp().generation;
        if let Ok(cache) = self.shot_cache.lock()
            && let Some(shot) = cache.as_ref()
            && shot.generation == generation
        {
            return Ok(shot.clone());
        }
        let shot = self.encode_screenshot().await?;
        if let Ok(mut cache) = self.shot_cache.lock() {
            *cache = Some(shot.clone());
        }
        Ok(shot)
    }

    /// A freshly encoded PNG of the screen, bypassing the cache (what a screenshot costs
    /// when the screen has changed; `bench` measures this).
    pub async fn encode_screenshot(&self) -> Result<Screenshot, DesktopError> {
        let generation = self.frame_stamp().generation;
        let (width, height, rgb) = self.frame_rgb()?;
        Screenshot::encode(width, height, rgb, generation).await
    }

    /// A PNG of the screen with the pointer drawn in (screenshots leave it out).
    pub async fn screenshot_with_cursor(&self) -> Result<Screenshot, DesktopError> {
        self.ensure_open()?;
        let (x, y) = self.x11.pointer().await.map_err(|e| self.x11_err(e))?;
        let generation = self.frame_stamp().generation;
        let (width, height, rgb) = {
            let fb =
                self.vnc.shared.fb.lock().map_err(|_| {
                    self.vnc_err(VncError::Closed("framebuffer lock poisoned".into()))
                })?;
            (
                fb.width(),
                fb.height(),
                fb.with_cursor(x.max(0) as u32, y.max(0) as u32),
            )
        };
        Screenshot::encode(width, height, rgb, generation).await
    }

    /// Waits until the framebuffer has been unchanged for `opts.quiet`, counting changes
    /// since `since` (the mark taken just before the action). With no change yet, waits for
    /// a first one for the first-change window: `opts.first_change`, or longer when this
    /// desktop has been reacting slowly (twice the median of its recent reaction times, up
    /// to 1 s), so a loaded machine does not yield a screenshot taken before the app
    /// redrew. The quiet window likewise grows to the median reaction (up to 500 ms): a slow
    /// app also redraws in slow steps. Never longer than `opts.max`.
    pub async fn settle(&self, since: Mark, opts: SettleOptions) -> SettleReport {
        let start = Instant::now();
        let cap = start + opts.max;
        let mut rx = self.vnc.changes.clone();
        let mut reaction = None;
        let report = |rx: &tokio::sync::watch::Receiver<FrameStamp>,
                      quiet,
                      reaction: Option<Duration>| SettleReport {
            waited_ms: start.elapsed().as_secs_f64() * 1000.0,
            changes: rx
                .borrow()
                .generation
                .saturating_sub(since.stamp.generation),
            quiet,
            reaction_ms: reaction.map(|r| r.as_secs_f64() * 1000.0),
        };
        let recent = self.recent_reactions();
        let quiet = adaptive_quiet(opts.quiet, &recent);
        rx.borrow_and_update();
        if rx.borrow().generation == since.stamp.generation {
            let window = adaptive_window(opts.first_change, &recent);
            let until = (start + window).min(cap);
            match tokio::time::timeout_at(until.into(), rx.changed()).await {
                Ok(Ok(())) => {
                    let r = rx.borrow().at.saturating_duration_since(since.taken);
                    self.note_reaction(r);
                    reaction = Some(r);
                }
                Ok(Err(_)) => return report(&rx, false, None),
                Err(_) => return report(&rx, true, None),
            }
        }
        loop {
            let last = rx.borrow_and_update().at;
            let quiet_at = last + quiet;
            let now = Instant::now();
            if now >= quiet_at {
                return report(&rx, true, reaction);
            }
            if now >= cap {
                return report(&rx, false, reaction);
            }
            match tokio::time::timeout_at(quiet_at.min(cap).into(), rx.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => return report(&rx, false, reaction),
            }
            if self.vnc.is_closed() {
                return report(&rx, false, reaction);
            }
        }
    }

    fn note_reaction(&self, r: Duration) {
        if let Ok(mut recent) = self.reactions.lock() {
            if recent.len() == REACTION_HISTORY {
                recent.pop_front();
            }
            recent.push_back(r);
        }
    }

    fn recent_reactions(&self) -> Vec<Duration> {
        self.reactions
            .lock()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The first-change window settle uses now (see [`Desktop::settle`]).
    pub fn first_change_window(&self, floor: Duration) -> Duration {
        adaptive_window(floor, &self.recent_reactions())
    }

    /// Waits until a freshly started desktop has been drawn: the window manager lists a
    /// window, the backdrop is drawn (`_XROOTPMAP_ID`), the screen is not one flat colour,
    /// and then it stays quiet for 150 ms. Ready (what [`Desktop::connect`] waits for)
    /// comes earlier, with the panel and the desktop still painting. Waits at most
    /// `timeout` (an animated or blank custom desktop never qualifies) and reports what it
    /// saw; only a broken desktop is an error.
    pub async fn wait_drawn(&self, timeout: Duration) -> Result<SettleReport, DesktopError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut windows = self.x11.changes();
        loop {
            windows.borrow_and_update();
            let listed = !self.windows().await?.is_empty();
            let backdrop = self
                .x11
                .backdrop_drawn()
                .await
                .map_err(|e| self.x11_err(e))?;
            if listed && backdrop {
                break;
            }
            match tokio::time::timeout_at(deadline, windows.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.x11_err(X11Error::Closed)),
                Err(_) => break,
            }
        }
        let mut frames = self.vnc.changes.clone();
        loop {
            frames.borrow_and_update();
            if !self.frame_is_uniform() {
                break;
            }
            match tokio::time::timeout_at(deadline, frames.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.vnc_err(VncError::Closed("while drawing".into()))),
                Err(_) => break,
            }
        }
        // Every change since the first frame counts: wait for the painting to stop.
        let since = Mark {
            stamp: FrameStamp {
                generation: 0,
                at: started,
            },
            taken: started,
        };
        let opts = SettleOptions {
            quiet: DRAWN_QUIET,
            first_change: Duration::ZERO,
            max: timeout.saturating_sub(started.elapsed()),
        };
        Ok(self.settle(since, opts).await)
    }

    /// Whether every pixel on screen has the same colour (nothing drawn yet).
    fn frame_is_uniform(&self) -> bool {
        self.vnc
            .shared
            .fb
            .lock()
            .map(|fb| {
                let rgb = fb.rgb();
                rgb.chunks_exact(3).all(|p| p == &rgb[..3])
            })
            .unwrap_or(false)
    }

    /// Waits for the next framebuffer change after `since`, up to `timeout`. Returns the new
    /// stamp, or `None` on timeout.
    pub async fn wait_for_change(
        &self,
        since: FrameStamp,
        timeout: Duration,
    ) -> Option<FrameStamp> {
        let mut rx = self.vnc.changes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = *rx.borrow_and_update();
            if now.generation != since.generation {
                return Some(now);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    fn check_point(&self, p: Point) -> Result<(u16, u16), InvalidAction> {
        let (w, h) = self.size();
        if p.x < 0 || p.y < 0 || p.x >= w as i32 || p.y >= h as i32 {
            return Err(InvalidAction::new(format!(
                "coordinate {p} is outside the {w}x{h} screen (x must be 0..{}, y 0..{})",
                w - 1,
                h - 1
            )));
        }
        Ok((p.x as u16, p.y as u16))
    }

    async fn run_steps(&self, steps: Vec<Step>) -> Result<(), DesktopError> {
        let mut batch = Vec::new();
        for step in steps {
            match step {
                Step::Send(input) => batch.push(input),
                Step::Pause(d) => {
                    self.send_batch(std::mem::take(&mut batch)).await?;
                    tokio::time::sleep(d).await;
                }
            }
        }
        self.send_batch(batch).await
    }

    /// Sends input events, keeping track of the keys left down (for `release_input`).
    async fn send_batch(&self, batch: Vec<Input>) -> Result<(), DesktopError> {
        let keys: Vec<(u32, bool)> = batch
            .iter()
            .filter_map(|i| match i {
                Input::Key { keysym, down } => Some((*keysym, *down)),
                _ => None,
            })
            .collect();
        self.vnc.send(batch).await.map_err(|e| self.vnc_err(e))?;
        if let Ok(mut held) = self.held.lock() {
            for (keysym, down) in keys {
                if down {
                    held.insert(keysym);
                } else {
                    held.remove(&keysym);
                }
            }
        }
        Ok(())
    }

    /// The point an action targets: its own, or where the pointer is.
    fn target(
        &self,
        coordinate: Option<Point>,
        st: &InputState,
    ) -> Result<(u16, u16), InvalidAction> {
        coordinate.map_or(Ok((st.x, st.y)), |p| self.check_point(p))
    }

    fn modifier_keysyms(modifiers: &[String]) -> Result<Vec<u32>, InvalidAction> {
        modifiers
            .iter()
            .map(|m| keys::lookup(m).map_err(InvalidAction::new))
            .collect()
    }

    /// Performs one action. Mistakes in the action (an off-screen point, an unknown key)
    /// are [`ActionError::Invalid`] and nothing is sent; a broken desktop is
    /// [`ActionError::Desktop`]. Input actions are planned first (the events as data) and
    /// then sent; an action dropped half-way (an interrupted episode) leaves keys or
    /// buttons down, which [`Desktop::release_input`] lets go.
    pub async fn act(&self, action: &Action) -> Result<ActionOutput, ActionError> {
        self.ensure_open()?;
        let mut st = self.input.lock().await;
        match self.plan(action, &st)? {
            Plan::Input(plan) => {
                if !plan.wait_first.is_zero() {
                    tokio::time::sleep(plan.wait_first).await;
                }
                self.run_steps(plan.steps).await?;
                (st.x, st.y) = plan.pointer;
                st.buttons = plan.buttons;
                if let Some((x, y)) = plan.clicked_at {
                    st.last_click = Some((Instant::now(), x, y));
                }
                Ok(ActionOutput::default())
            }
            Plan::XtestClick {
                x,
                y,
                button,
                count,
            } => {
                // Buttons 8 and 9 have no RFB bits: move over VNC, click through XTEST.
                self.run_steps(vec![Step::Send(Input::Pointer {
                    x,
                    y,
                    buttons: st.buttons,
                })])
                .await?;
                self.x11
                    .click_button(x_button(button), x as i16, y as i16, count)
                    .await
                    .map_err(|e| self.x11_err(e))?;
                (st.x, st.y) = (x, y);
                Ok(ActionOutput::default())
            }
            Plan::Other => {
                let sent = (st.x, st.y);
                drop(st);
                if matches!(action, Action::CursorPosition) {
                    self.settle_pointer(sent).await?;
                }
                self.perform(action).await
            }
        }
    }

    /// The input events of an action, without sending anything (so that a mistake sends
    /// nothing); [`Plan::Other`] for actions that are not input.
    fn plan(&self, action: &Action, st: &InputState) -> Result<Plan, InvalidAction> {
        let mut steps = Vec::new();
        let mut pointer = (st.x, st.y);
        let mut buttons = st.buttons;
        let mut clicked_at = None;
        let mut wait_first = Duration::ZERO;
        match action {
            Action::MouseMove { coordinate } => {
                pointer = self.check_point(*coordinate)?;
                steps.push(pointer_at(pointer, buttons));
            }
            Action::Click {
                coordinate,
                button,
                count,
                modifiers,
            } => {
                let (x, y) = self.target(*coordinate, st)?;
                let count = (*count).clamp(1, 3);
                let Some(mask) = button_mask(*button) else {
                    if !modifiers.is_empty() {
                        return Err(InvalidAction::new(
                            "modifiers with the back/forward buttons are not supported",
                        ));
                    }
                    return Ok(Plan::XtestClick {
                        x,
                        y,
                        button: *button,
                        count,
                    });
                };
                let mods = Self::modifier_keysyms(modifiers)?;
                if let Some((at, lx, ly)) = st.last_click
                    && (i32::from(lx) - i32::from(x)).abs() <= CLICK_CHAIN_DISTANCE
                    && (i32::from(ly) - i32::from(y)).abs() <= CLICK_CHAIN_DISTANCE
                    && at.elapsed() < CLICK_CHAIN_WINDOW
                {
                    wait_first = CLICK_CHAIN_WINDOW - at.elapsed();
                }
                push_keys(&mut steps, &mods, true);
                steps.push(pointer_at((x, y), buttons));
                for i in 0..count {
                    if i > 0 {
                        steps.push(Step::Pause(MULTI_CLICK_GAP));
                    }
                    steps.push(pointer_at((x, y), buttons | mask));
                    steps.push(pointer_at((x, y), buttons & !mask));
                }
                push_keys(&mut steps, &mods, false);
                pointer = (x, y);
                clicked_at = Some((x, y));
            }
            Action::MouseDown { coordinate, button } | Action::MouseUp { coordinate, button } => {
                pointer = self.target(*coordinate, st)?;
                let Some(mask) = button_mask(*button) else {
                    return Err(InvalidAction::new(
                        "mouse_down/mouse_up support left, middle and right buttons",
                    ));
                };
                buttons = if matches!(action, Action::MouseDown { .. }) {
                    buttons | mask
                } else {
                    buttons & !mask
                };
                steps.push(pointer_at(pointer, buttons));
            }
            Action::Drag { path, button } => {
                let mut points: Vec<(u16, u16)> = path
                    .iter()
                    .map(|p| self.check_point(*p))
                    .collect::<Result<_, _>>()?;
                if points.len() == 1 {
                    // From where the pointer is (Qwen's left_click_drag, pyautogui's dragTo).
                    points.insert(0, (st.x, st.y));
                }
                let Some(mask) = button_mask(*button) else {
                    return Err(InvalidAction::new(
                        "drags support left, middle and right buttons",
                    ));
                };
                let (Some(&first), Some(&last)) = (points.first(), points.last()) else {
                    return Err(InvalidAction::new("a drag needs at least two points"));
                };
                let held = buttons | mask;
                steps.push(pointer_at(first, buttons));
                steps.push(pointer_at(first, held));
                steps.push(Step::Pause(DRAG_PAUSE));
                for pair in points.windows(2) {
                    let (a, b) = (pair[0], pair[1]);
                    let dist = f64::hypot(
                        f64::from(b.0) - f64::from(a.0),
                        f64::from(b.1) - f64::from(a.1),
                    );
                    let n = (dist / DRAG_STEP_PX).ceil().max(1.0) as u32;
                    for i in 1..=n {
                        let t = f64::from(i) / f64::from(n);
                        let lerp = |a: u16, b: u16| {
                            (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u16
                        };
                        steps.push(pointer_at((lerp(a.0, b.0), lerp(a.1, b.1)), held));
                        steps.push(Step::Pause(Duration::from_millis(4)));
                    }
                }
                steps.push(Step::Pause(DRAG_PAUSE));
                steps.push(pointer_at(last, buttons));
                pointer = last;
            }
            Action::Scroll {
                coordinate,
                dx,
                dy,
                modifiers,
            } => {
                let at = self.target(*coordinate, st)?;
                let mods = Self::modifier_keysyms(modifiers)?;
                push_keys(&mut steps, &mods, true);
                steps.push(pointer_at(at, buttons));
                // Wheel buttons: 4 up, 5 down, 6 left, 7 right (mask bits 8, 16, 32, 64).
                let vertical = if *dy < 0 { 8u8 } else { 16 };
                let horizontal = if *dx < 0 { 32u8 } else { 64 };
                for (bit, n) in [
                    (vertical, dy.unsigned_abs()),
                    (horizontal, dx.unsigned_abs()),
                ] {
                    for i in 0..n.min(action::MAX_SCROLL_AMOUNT as u32) {
                        if i > 0 {
                            steps.push(Step::Pause(SCROLL_GAP));
                        }
                        steps.push(pointer_at(at, buttons | bit));
                        steps.push(pointer_at(at, buttons));
                    }
                }
                push_keys(&mut steps, &mods, false);
                pointer = at;
            }
            Action::Type { text } => {
                for c in text.chars() {
                    let keysym = keys::char_keysym(c).map_err(InvalidAction::new)?;
                    steps.push(Step::Send(Input::Key { keysym, down: true }));
                    steps.push(Step::Send(Input::Key {
                        keysym,
                        down: false,
                    }));
                }
            }
            Action::Key { text } => {
                for combo in keys::parse_sequence(text).map_err(InvalidAction::new)? {
                    push_keys(&mut steps, &combo.keysyms, true);
                    push_keys(&mut steps, &combo.keysyms, false);
                }
            }
            Action::KeyDown { text } | Action::KeyUp { text } => {
                let down = matches!(action, Action::KeyDown { .. });
                for combo in keys::parse_sequence(text).map_err(InvalidAction::new)? {
                    push_keys(&mut steps, &combo.keysyms, down);
                }
            }
            Action::HoldKey { text, duration } => {
                let combos = keys::parse_sequence(text).map_err(InvalidAction::new)?;
                let syms: Vec<u32> = combos
                    .iter()
                    .flat_map(|c| c.keysyms.iter().copied())
                    .collect();
                push_keys(&mut steps, &syms, true);
                steps.push(Step::Pause(action::secs(*duration)));
                push_keys(&mut steps, &syms, false);
            }
            _ => return Ok(Plan::Other),
        }
        Ok(Plan::Input(InputPlan {
            steps,
            wait_first,
            pointer,
            buttons,
            clicked_at,
        }))
    }

    /// The actions that are not input: waiting, looking, and the setup actions.
    async fn perform(&self, action: &Action) -> Result<ActionOutput, ActionError> {
        let mut out = ActionOutput::default();
        match action {
            Action::Wait { duration } => tokio::time::sleep(action::secs(*duration)).await,
            Action::Screenshot => out.image = Some(self.screenshot().await?),
            Action::CursorPosition => {
                let (x, y) = self.x11.pointer().await.map_err(|e| self.x11_err(e))?;
                out.cursor = Some(Point::new(x, y));
                out.text = Some(format!("X={x},Y={y}"));
            }
            Action::Zoom { region } => out.image = Some(self.zoom(region).await?),
            Action::Done { answer } => out.text = answer.clone(),
            Action::Fail { reason } => out.text = Some(reason.clone()),
            Action::CallUser { question } => out.text = question.clone(),
            Action::Memorize { .. } => out.text = Some("memorized".into()),
            Action::Navigate { url } => {
                // Checked again here: an action may come from anywhere (a recording, a
                // task file), not only through `Action::navigate`.
                let url = match url {
                    Some(u) => match Action::navigate(Some(u))? {
                        Action::Navigate { url } => url,
                        _ => None,
                    },
                    None => None,
                };
                let command = match &url {
                    Some(u) => format!("selfagent-launch browser {}", shell_quote(u)),
                    None => "selfagent-launch browser".to_owned(),
                };
                let p = self.sandbox.spawn(&command).await?;
                out.text = Some(match url {
                    Some(u) => format!("opening {u} in the browser (pid {})", p.pid),
                    None => format!("started the browser (pid {})", p.pid),
                });
            }
            Action::Launch { app } => {
                let p = self.sandbox.spawn(&launch_command(app)).await?;
                out.text = Some(format!("started {app} (pid {})", p.pid));
            }
            Action::Open { target } => {
                let p = self.sandbox.spawn(&open_command(target)).await?;
                out.text = Some(format!("opening {target} (pid {})", p.pid));
            }
            Action::Exec {
                command,
                background,
            } => {
                if *background {
                    let p = self.sandbox.spawn(command).await?;
                    out.text = Some(format!("started in the background (pid {})", p.pid));
                } else {
                    let r = self
                        .sandbox
                        .sh(
                            command,
                            &crate::sandbox::ExecOptions {
                                timeout: Some(Duration::from_secs(120)),
                                ..Default::default()
                            },
                        )
                        .await?;
                    out.text = Some(format!(
                        "exit code {}\n{}{}",
                        r.exit_code,
                        r.stdout_text(),
                        r.stderr_text()
                    ));
                }
            }
            Action::WriteFile { path, content } => {
                self.sandbox.write_file(path, content.as_bytes()).await?;
                out.text = Some(format!("wrote {} bytes to {path}", content.len()));
            }
            // Input actions are planned and sent by `act`.
            Action::MouseMove { .. }
            | Action::Click { .. }
            | Action::MouseDown { .. }
            | Action::MouseUp { .. }
            | Action::Drag { .. }
            | Action::Scroll { .. }
            | Action::Type { .. }
            | Action::Key { .. }
            | Action::KeyDown { .. }
            | Action::KeyUp { .. }
            | Action::HoldKey { .. } => {}
        }
        Ok(out)
    }

    /// A region of the screen at full resolution.
    async fn zoom(&self, region: &action::Region) -> Result<Screenshot, ActionError> {
        let a = self.check_point(Point::new(region.x0, region.y0))?;
        let (w, h) = self.size();
        if region.x1 > w as i32 || region.y1 > h as i32 {
            return Err(InvalidAction::new(format!(
                "zoom region reaches outside the {w}x{h} screen"
            ))
            .into());
        }
        let rect = Rect {
            x: u32::from(a.0),
            y: u32::from(a.1),
            width: (region.x1 - region.x0) as u32,
            height: (region.y1 - region.y0) as u32,
        };
        let generation = self.frame_stamp().generation;
        let (cw, ch, rgb) = self
            .vnc
            .shared
            .fb
            .lock()
            .ok()
            .and_then(|fb| fb.crop(rect))
            .ok_or_else(|| InvalidAction::new("empty zoom region"))?;
        Ok(Screenshot::encode(cw, ch, rgb, generation).await?)
    }

    /// Lets go of every key and button still down (after an action was interrupted).
    pub async fn release_input(&self) {
        let mut st = self.input.lock().await;
        let keys: Vec<u32> = self
            .held
            .lock()
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
        let mut events: Vec<Input> = keys
            .into_iter()
            .map(|keysym| Input::Key {
                keysym,
                down: false,
            })
            .collect();
        events.push(Input::Pointer {
            x: st.x,
            y: st.y,
            buttons: 0,
        });
        st.buttons = 0;
        if self.vnc.send(events).await.is_ok()
            && let Ok(mut held) = self.held.lock()
        {
            held.clear();
        }
    }

    /// Waits briefly until the X server has applied the last pointer position sent over
    /// VNC: input arrives over one connection and the question over another, so without
    /// this a `cursor_position` right after a move can answer the position before it.
    /// Another viewer may have moved the pointer since, so not getting there is no error.
    async fn settle_pointer(&self, (x, y): (u16, u16)) -> Result<(), DesktopError> {
        self.x11
            .wait_pointer_at(i32::from(x), i32::from(y), POINTER_SETTLE_WAIT)
            .await
            .map_err(|e| self.x11_err(e))?;
        Ok(())
    }

    /// Where the pointer is (from the X server, so moves by other viewers count).
    pub async fn cursor_position(&self) -> Result<Point, DesktopError> {
        let sent = {
            let st = self.input.lock().await;
            (st.x, st.y)
        };
        self.settle_pointer(sent).await?;
        let (x, y) = self.x11.pointer().await.map_err(|e| self.x11_err(e))?;
        Ok(Point::new(x, y))
    }

    /// Top-level windows, as the window manager lists them.
    pub async fn windows(&self) -> Result<Vec<Window>, DesktopError> {
        self.x11.windows().await.map_err(|e| self.x11_err(e))
    }

    pub async fn active_window(&self) -> Result<Option<Window>, DesktopError> {
        Ok(self.windows().await?.into_iter().find(|w| w.active))
    }

    /// Raises and focuses a window; returns once the window manager reports it active.
    pub async fn focus(&self, window: u32, timeout: Duration) -> Result<Window, DesktopError> {
        self.x11
            .activate(window)
            .await
            .map_err(|e| self.x11_err(e))?;
        self.wait_windows(
            timeout,
            &format!("window 0x{window:x} to become active"),
            |ws| ws.iter().find(|w| w.id == window && w.active).cloned(),
        )
        .await
    }

    /// Asks a window to close.
    pub async fn close_window(&self, window: u32) -> Result<(), DesktopError> {
        self.x11.close(window).await.map_err(|e| self.x11_err(e))
    }

    /// Waits until a window matching `m` exists; woken by X events, not a poll.
    pub async fn wait_window(
        &self,
        m: &WindowMatch,
        timeout: Duration,
    ) -> Result<Window, DesktopError> {
        self.wait_windows(timeout, &m.describe(), |ws| {
            ws.iter().find(|w| m.matches(w)).cloned()
        })
        .await
    }

    /// Waits until `check` finds something in the window list; woken by X events, not a poll.
    pub async fn wait_windows<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&[Window]) -> Option<T>,
    ) -> Result<T, DesktopError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.x11.changes();
        loop {
            rx.borrow_and_update();
            if let Some(found) = check(&self.windows().await?) {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.x11_err(X11Error::Closed)),
                Err(_) => {
                    return Err(DesktopError::Timeout {
                        what: what.to_owned(),
                        secs: timeout.as_secs_f64(),
                    });
                }
            }
        }
    }
}

/// Presses keys in order, or releases them in reverse order.
fn push_keys(steps: &mut Vec<Step>, keysyms: &[u32], down: bool) {
    let send = |&keysym: &u32| Step::Send(Input::Key { keysym, down });
    if down {
        steps.extend(keysyms.iter().map(send));
    } else {
        steps.extend(keysyms.iter().rev().map(send));
    }
}

/// The command that starts an application, as a task's `launch` and the model's `launch`
/// both give it: a friendly name, a `.desktop` id or a command, then its arguments as a shell
/// reads them (`mousepad ~/notes.txt`: the name is quoted, `~` in the arguments expands).
pub fn launch_command(app: &str) -> String {
    let (name, args) = app.trim().split_once(' ').unwrap_or((app.trim(), ""));
    format!("selfagent-launch {} {args}", shell_quote(name))
        .trim_end()
        .to_owned()
}

/// The command that opens a file or URL with its application (`xdg-open`).
pub fn open_command(target: &str) -> String {
    format!("xdg-open {}", shell_quote(target))
}

/// Quotes a string for `sh`.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,+@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_matching_uses_title_and_class() {
        let w = Window {
            id: 1,
            title: "Mozilla Firefox".into(),
            class: "Firefox-esr".into(),
            instance: "Navigator".into(),
            pid: None,
            x: 0,
            y: 0,
            width: 10,
            height: 10,
            active: false,
            hidden: false,
        };
        let m = |t: Option<&str>, c: Option<&str>| WindowMatch {
            title: t.map(|t| Regex::new(t).unwrap()),
            class: c.map(|c| Regex::new(c).unwrap()),
        };
        assert!(m(Some("Firefox"), None).matches(&w));
        assert!(m(None, Some("^Navigator$")).matches(&w));
        assert!(m(Some("Firefox"), Some("(?i)firefox")).matches(&w));
        assert!(!m(Some("Terminal"), None).matches(&w));
        assert!(!m(Some("Firefox"), Some("Thunar")).matches(&w));
    }

    #[test]
    fn the_first_change_window_follows_slow_reactions() {
        let ms = Duration::from_millis;
        assert_eq!(adaptive_window(ms(60), &[]), ms(60));
        // A fast desktop keeps the floor.
        assert_eq!(adaptive_window(ms(60), &[ms(20), ms(25), ms(30)]), ms(60));
        // A slow one widens the window; one slow outlier does not.
        assert_eq!(
            adaptive_window(ms(60), &[ms(120), ms(150), ms(140)]),
            ms(280)
        );
        assert_eq!(adaptive_window(ms(60), &[ms(20), ms(900), ms(25)]), ms(60));
        assert_eq!(adaptive_window(ms(60), &[ms(3000); 5]), FIRST_CHANGE_CAP);
        assert_eq!(adaptive_quiet(ms(40), &[ms(20), ms(30)]), ms(40));
        assert_eq!(
            adaptive_quiet(ms(40), &[ms(120), ms(150), ms(140)]),
            ms(140)
        );
        assert_eq!(adaptive_quiet(ms(40), &[ms(3000); 3]), QUIET_CAP);
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("/home/user/a-b.txt"), "/home/user/a-b.txt");
        assert_eq!(shell_quote("a=b"), "'a=b'");
        assert_eq!(shell_quote(""), "''");
    }
}
