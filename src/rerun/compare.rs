//! Is the live screen the one a recorded step saw? A perceptual comparison cheap enough to
//! run on every framebuffer change while a re-run waits (bench: `rerun-compare`).
//!
//! Two numbers, each the share of small cells whose mean grey level moved by more than
//! [`CELL_TOLERANCE`]:
//! - `screen`: the whole screen in 8×8-pixel cells (sampled every other pixel). A clock, a
//!   blinking caret or another host name in a prompt moves a fraction of a percent; a
//!   window over the recorded screen moves most of it.
//! - `target`: the 96×96 pixels around the point the step acts on, in 4×4 cells at full
//!   resolution. A button that moved, or a field that is not there, changes a fifth or more
//!   of it while the screen as a whole barely changes.
//!
//! The step matches when `max(screen, target / TARGET_WEIGHT)` is at most the threshold
//! (`rerun --threshold`, default [`DEFAULT_THRESHOLD`]): 10% of the screen, or 20% around
//! the target. Averaging over cells first makes anti-aliasing and sub-pixel font rendering
//! noise, not change. Measured on the default desktop (tests/suite/rerun.rs): a terminal
//! caught while still drawing its menu bar and prompt differs by 4.8% of the screen, a
//! matching screen by 0%, a maximized window over the recorded one by more than half.

use crate::action::Point;

/// The default threshold: the share of the screen that may differ.
pub const DEFAULT_THRESHOLD: f64 = 0.10;
/// The target's patch may differ this many times more than the screen as a whole.
pub const TARGET_WEIGHT: f64 = 2.0;
/// A cell counts as changed when its mean grey level (0–255) moved by more than this.
pub const CELL_TOLERANCE: u32 = 10;

const SCREEN_CELL: u32 = 8;
const TARGET_CELL: u32 = 4;
const TARGET_HALF: i64 = 48;

/// A recorded screen, reduced to what comparing needs.
#[derive(Debug, Clone)]
pub struct Reference {
    width: u32,
    height: u32,
    grid: Vec<u8>,
    target: Option<Patch>,
}

#[derive(Debug, Clone)]
struct Patch {
    x0: u32,
    y0: u32,
    w: u32,
    h: u32,
    cells: Vec<u8>,
}

/// How far the live screen is from the recorded one.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Difference {
    /// The share of the screen's cells that changed (0–1).
    pub screen: f64,
    /// The share of the target patch's cells that changed, when the step acts on a point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
}

impl Difference {
    /// The one number compared with the threshold.
    pub fn score(&self) -> f64 {
        self.screen.max(self.target.unwrap_or(0.0) / TARGET_WEIGHT)
    }

    /// "12.5% of the screen, 40.0% around the target".
    pub fn describe(&self) -> String {
        match self.target {
            Some(t) => format!(
                "{:.1}% of the screen, {:.1}% around the target",
                self.screen * 100.0,
                t * 100.0
            ),
            None => format!("{:.1}% of the screen", self.screen * 100.0),
        }
    }
}

/// Grey level of packed RGB8 pixel `i` (ITU-R 601 weights in integers).
#[inline]
fn grey(rgb: &[u8], i: usize) -> u32 {
    (rgb[i] as u32 * 77 + rgb[i + 1] as u32 * 150 + rgb[i + 2] as u32 * 29) >> 8
}

/// Mean grey per `cell`×`cell` block of the region (`x0`, `y0`, `w`, `h`) of a
/// `width`-wide RGB8 image, reading every `stride`-th pixel in each direction.
fn cells(rgb: &[u8], width: u32, region: (u32, u32, u32, u32), cell: u32, stride: u32) -> Vec<u8> {
    let (x0, y0, w, h) = region;
    let (gw, gh) = (w.div_ceil(cell), h.div_ceil(cell));
    let mut sum = vec![0u32; (gw * gh) as usize];
    let mut count = vec![0u32; (gw * gh) as usize];
    let mut y = 0;
    while y < h {
        let row = ((y0 + y) * width) as usize * 3;
        let base = (y / cell * gw) as usize;
        let mut x = 0;
        while x < w {
            let i = row + (x0 + x) as usize * 3;
            let c = base + (x / cell) as usize;
            sum[c] += grey(rgb, i);
            count[c] += 1;
            x += stride;
        }
        y += stride;
    }
    sum.iter()
        .zip(&count)
        .map(|(s, n)| (s / (*n).max(1)) as u8)
        .collect()
}

fn changed(a: &[u8], b: &[u8]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 1.0;
    }
    let n = a
        .iter()
        .zip(b)
        .filter(|(x, y)| (**x as i32 - **y as i32).unsigned_abs() > CELL_TOLERANCE)
        .count();
    n as f64 / a.len() as f64
}

/// The patch around `p`, clipped to the screen.
fn patch_region(p: Point, width: u32, height: u32) -> Option<(u32, u32, u32, u32)> {
    let clip = |v: i64, max: u32| v.clamp(0, max as i64) as u32;
    let (x, y) = (p.x as i64, p.y as i64);
    let (x0, x1) = (clip(x - TARGET_HALF, width), clip(x + TARGET_HALF, width));
    let (y0, y1) = (clip(y - TARGET_HALF, height), clip(y + TARGET_HALF, height));
    (x1 > x0 && y1 > y0).then_some((x0, y0, x1 - x0, y1 - y0))
}

impl Reference {
    /// From a recorded screen's packed RGB8 pixels and the point its step acts on.
    pub fn new(width: u32, height: u32, rgb: &[u8], target: Option<Point>) -> Self {
        let target = target
            .and_then(|p| patch_region(p, width, height))
            .map(|r| Patch {
                x0: r.0,
                y0: r.1,
                w: r.2,
                h: r.3,
                cells: cells(rgb, width, r, TARGET_CELL, 1),
            });
        Self {
            width,
            height,
            grid: cells(rgb, width, (0, 0, width, height), SCREEN_CELL, 2),
            target,
        }
    }

    /// From a recorded PNG.
    pub fn from_png(png: &[u8], target: Option<Point>) -> Result<Self, String> {
        let img = image::load_from_memory_with_format(png, image::ImageFormat::Png)
            .map_err(|e| format!("a recorded screenshot does not decode: {e}"))?
            .to_rgb8();
        Ok(Self::new(img.width(), img.height(), img.as_raw(), target))
    }

    /// How far the screen `rgb` (packed RGB8, `width`×`height`) is from this one. A screen
    /// of another size differs entirely.
    pub fn difference(&self, width: u32, height: u32, rgb: &[u8]) -> Difference {
        if (width, height) != (self.width, self.height) || rgb.len() < (width * height * 3) as usize
        {
            return Difference {
                screen: 1.0,
                target: self.target.as_ref().map(|_| 1.0),
            };
        }
        let grid = cells(rgb, width, (0, 0, width, height), SCREEN_CELL, 2);
        let target = self.target.as_ref().map(|p| {
            changed(
                &p.cells,
                &cells(rgb, width, (p.x0, p.y0, p.w, p.h), TARGET_CELL, 1),
            )
        });
        Difference {
            screen: changed(&self.grid, &grid),
            target,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(w: u32, h: u32, paint: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut out = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                out.extend_from_slice(&paint(x, y));
            }
        }
        out
    }

    fn desktop(x: u32, y: u32) -> [u8; 3] {
        // A grey desktop with a white window and a dark button at (400..480, 300..330).
        if (400..480).contains(&x) && (300..330).contains(&y) {
            [40, 40, 40]
        } else if (200..1000).contains(&x) && (150..650).contains(&y) {
            [250, 250, 250]
        } else {
            [90, 110, 130]
        }
    }

    const W: u32 = 1280;
    const H: u32 = 800;
    const BUTTON: Point = Point { x: 440, y: 315 };

    #[test]
    fn the_same_screen_matches_exactly() {
        let rgb = screen(W, H, desktop);
        let r = Reference::new(W, H, &rgb, Some(BUTTON));
        let d = r.difference(W, H, &rgb);
        assert_eq!(d.score(), 0.0);
        assert_eq!(d.target, Some(0.0));
    }

    #[test]
    fn a_clock_and_a_caret_are_not_drift() {
        let rgb = screen(W, H, desktop);
        let r = Reference::new(W, H, &rgb, Some(BUTTON));
        // Another time in the corner (60×16 px) and a caret next to the button.
        let live = screen(W, H, |x, y| {
            let clock = (1200..1260).contains(&x) && (780..796).contains(&y);
            let caret = (486..488).contains(&x) && (300..330).contains(&y);
            if clock || caret {
                [0, 0, 0]
            } else {
                desktop(x, y)
            }
        });
        let d = r.difference(W, H, &live);
        assert!(d.screen > 0.0 && d.screen < 0.01, "{d:?}");
        assert!(d.score() <= DEFAULT_THRESHOLD, "{d:?}");
    }

    #[test]
    fn a_window_over_the_screen_is_drift() {
        let rgb = screen(W, H, desktop);
        let r = Reference::new(W, H, &rgb, Some(BUTTON));
        let live = screen(W, H, |_, y| {
            if y < 30 {
                [20, 20, 60]
            } else {
                [255, 255, 255]
            }
        });
        let d = r.difference(W, H, &live);
        assert!(d.screen > 0.5, "{d:?}");
        assert!(d.score() > DEFAULT_THRESHOLD);
    }

    #[test]
    fn a_moved_button_is_drift_though_the_screen_barely_changed() {
        let rgb = screen(W, H, desktop);
        let r = Reference::new(W, H, &rgb, Some(BUTTON));
        // The button 100 px further right: 2 × 80×30 px of 1280×800 changed.
        let live = screen(W, H, |x, y| {
            let moved = (400..580).contains(&x) && (300..330).contains(&y);
            match (moved, (500..580).contains(&x)) {
                (true, true) => [40, 40, 40],
                (true, false) => [250, 250, 250],
                _ => desktop(x, y),
            }
        });
        let d = r.difference(W, H, &live);
        assert!(d.screen < DEFAULT_THRESHOLD, "{d:?}");
        assert!(
            d.target.unwrap() / TARGET_WEIGHT > DEFAULT_THRESHOLD,
            "{d:?}"
        );
        assert!(d.score() > DEFAULT_THRESHOLD);
    }

    #[test]
    fn another_size_differs_entirely_and_edges_clip() {
        let rgb = screen(W, H, desktop);
        let r = Reference::new(W, H, &rgb, Some(Point { x: 5, y: 795 }));
        assert!(
            r.target
                .as_ref()
                .is_some_and(|p| p.x0 == 0 && p.y0 + p.h == H)
        );
        let small = screen(640, 400, desktop);
        assert_eq!(r.difference(640, 400, &small).score(), 1.0);
        assert!(
            Reference::new(W, H, &rgb, Some(Point { x: -500, y: 10 }))
                .target
                .is_none()
        );
    }
}
