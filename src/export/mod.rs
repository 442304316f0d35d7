//! Recorded episodes as files other people and tools read: a self-contained HTML page, an
//! animated GIF, and trajectories others train on and compare with ([`training`]: ATIF,
//! AgentNet, OSWorld's `traj.jsonl`).
//!
//! The pictures here (frames with the actions drawn on them, thumbnails) are shared with the
//! batch report.

pub mod pycode;
pub mod training;

use crate::record::{Db, EventRow, GradeRow, SessionRow, StepRow};
use crate::task::check::Grade;
use crate::tui::app::ActionView;
use crate::tui::shot::draw_marks;
use anyhow::{Context, bail};
use base64::Engine as _;
use image::{DynamicImage, RgbImage, imageops::FilterType};
use std::fmt::Write as _;
use std::path::PathBuf;

/// A recorded episode, read once.
pub struct Episode {
    pub session: SessionRow,
    pub steps: Vec<StepRow>,
    /// The newest grade, if the episode was graded.
    pub grade: Option<GradeRow>,
    /// Interventions, safety checks, calls for help, setup steps.
    pub events: Vec<EventRow>,
}

impl Episode {
    pub fn load(db: &Db, id: &str) -> anyhow::Result<Self> {
        let session = db.session(id)?;
        let steps = db.steps(&session.id)?;
        let grade = db.latest_grade(&session.id)?;
        let events = db.events(&session.id)?;
        Ok(Self {
            session,
            steps,
            grade,
            events,
        })
    }

    /// What people (and the provider's safety checks) did at step `idx`, in words.
    pub fn notes(&self, idx: i64) -> Vec<String> {
        let last = self.steps.last().map_or(1, |s| s.idx);
        crate::record::notes_at(&self.events, idx, last)
    }

    /// The grade as the checks wrote it.
    pub fn checks_grade(&self) -> Option<Grade> {
        self.grade
            .as_ref()
            .and_then(|g| serde_json::from_value(g.details.clone()).ok())
    }

    /// The first screenshot (before step 1).
    pub fn first_frame(&self) -> Option<i64> {
        self.steps.first().and_then(|s| s.frame_before)
    }
}

/// The actions of a recorded step, as the TUI shows them.
pub fn step_actions(step: &StepRow) -> Vec<ActionView> {
    step.actions
        .as_array()
        .map(|list| list.iter().map(ActionView::from_recorded).collect())
        .unwrap_or_default()
}

/// A stored frame decoded, with `marks` drawn on it.
pub fn frame_image(db: &Db, id: i64, marks: &[ActionView]) -> anyhow::Result<RgbImage> {
    let row = db
        .frame(id)?
        .with_context(|| format!("frame {id} is missing from the recording"))?;
    let mut img = image::load_from_memory(&row.png)
        .with_context(|| format!("frame {id} is not a readable PNG"))?
        .to_rgb8();
    draw_marks(&mut img, marks);
    Ok(img)
}

/// Scaled down to at most `max_width` pixels wide (never up).
pub fn scaled(img: &RgbImage, max_width: u32) -> RgbImage {
    if img.width() <= max_width {
        return img.clone();
    }
    let h = (u64::from(img.height()) * u64::from(max_width) / u64::from(img.width())).max(1) as u32;
    // fast_image_resize (SIMD, the screenshots' own resizer): image's generic resize is
    // compiled with this crate's settings, 50x slower in a debug build.
    crate::model::protocol::resize_rgb(img.width(), img.height(), img.as_raw(), (max_width, h))
        .ok()
        .and_then(|px| RgbImage::from_raw(max_width, h, px))
        .unwrap_or_else(|| image::imageops::resize(img, max_width, h, FilterType::Triangle))
}

/// A JPEG `data:` URL of `img`, scaled to at most `max_width`.
pub fn jpeg_data_url(img: &RgbImage, max_width: u32, quality: u8) -> anyhow::Result<String> {
    let small = scaled(img, max_width);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&DynamicImage::ImageRgb8(small))
        .context("encoding a JPEG")?;
    Ok(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    ))
}

/// Escapes text for HTML content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Picks at most `n` indices of `len`, evenly, always the first and the last.
pub fn sample(len: usize, n: usize) -> Vec<usize> {
    if len <= n {
        return (0..len).collect();
    }
    if n <= 1 {
        return vec![len - 1];
    }
    let mut out: Vec<usize> = (0..n).map(|i| i * (len - 1) / (n - 1)).collect();
    out.dedup();
    out
}

/// The frames that tell an episode's story: the first screenshot, then each step's result
/// with its actions marked.
pub fn story(ep: &Episode) -> Vec<(i64, Vec<ActionView>, String)> {
    let mut out = Vec::new();
    if let Some(id) = ep.first_frame() {
        out.push((id, Vec::new(), "start".to_owned()));
    }
    for s in &ep.steps {
        if let Some(id) = s.frame_after.or(s.frame_before) {
            out.push((id, step_actions(s), format!("step {}", s.idx)));
        }
    }
    out
}

/// A strip of `n` thumbnails of an episode (for reports), each `width` pixels wide.
pub fn thumbnail_strip(db: &Db, ep: &Episode, n: usize, width: u32) -> String {
    let frames = story(ep);
    let mut html = String::from("<div class=\"strip\">");
    for i in sample(frames.len(), n) {
        let (id, marks, label) = &frames[i];
        match frame_image(db, *id, marks).and_then(|img| jpeg_data_url(&img, width, 70)) {
            Ok(url) => {
                let _ = write!(
                    html,
                    "<figure><img src=\"{url}\" alt=\"{label}\" loading=\"lazy\"><figcaption>{label}</figcaption></figure>",
                    label = html_escape(label)
                );
            }
            Err(e) => {
                let _ = write!(
                    html,
                    "<figure class=\"missing\">{}</figure>",
                    html_escape(&e.to_string())
                );
            }
        }
    }
    html.push_str("</div>");
    html
}

/// Shared look of the HTML pages.
pub const CSS: &str = r#"
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1.5em;color:#1d2330;background:#f6f7f9}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.2em 0 .4em}
.meta{color:#556;margin:.2em 0 1em}.meta span{margin-right:1.4em}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:1em;margin:1em 0}
.pass{color:#0a7d32;font-weight:600}.fail{color:#c0262d;font-weight:600}.err{color:#a45b00;font-weight:600}
table{border-collapse:collapse;background:#fff;width:100%}td,th{border:1px solid #dde1e7;padding:.35em .6em;text-align:left}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.strip{display:flex;gap:6px;overflow-x:auto;padding:.4em 0}.strip figure{margin:0;flex:none}
.strip img{display:block;border:1px solid #ccd;border-radius:3px}.strip figcaption{font-size:11px;color:#667;text-align:center}
.step img{max-width:100%;border:1px solid #ccd;border-radius:4px}
pre{white-space:pre-wrap;background:#f0f2f5;padding:.5em;border-radius:4px;margin:.3em 0}
ul.checks{margin:.3em 0;padding-left:1.3em}ul.notes{margin:.3em 0;padding-left:1.3em;color:#7a2b8f}code{background:#eef1f5;padding:0 .25em;border-radius:3px}
"#;

/// A grade's checks as a list.
pub fn checks_html(grade: &Grade) -> String {
    let mut html = format!(
        "<p>{}</p>",
        verdict_span(grade.passed, &html_escape(&grade.summary()))
    );
    if let Some(r) = &grade.result {
        html.push_str("<ul class=\"checks\">");
        for leaf in r.leaves() {
            let class = match leaf.verdict {
                crate::task::check::Verdict::Passed => "pass",
                crate::task::check::Verdict::Failed => "fail",
                crate::task::check::Verdict::Error => "err",
            };
            let mark = leaf.verdict.mark();
            let _ = write!(
                html,
                "<li><span class=\"{class}\">{mark}</span> <code>{}</code> — {}</li>",
                html_escape(&leaf.check),
                html_escape(&leaf.detail)
            );
        }
        html.push_str("</ul>");
    }
    html
}

/// `text` in the colour of a verdict (`None`: an error).
pub fn verdict_span(passed: Option<bool>, text: &str) -> String {
    let class = match passed {
        Some(true) => "pass",
        Some(false) => "fail",
        None => "err",
    };
    format!("<span class=\"{class}\">{text}</span>")
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} ms"))
        .unwrap_or_else(|| "–".into())
}

/// One self-contained HTML page: every step's screenshot with its actions drawn, the
/// thought, the actions, errors and timings, and the grade.
pub fn html(db: &Db, ep: &Episode) -> anyhow::Result<String> {
    let s = &ep.session;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>selfagent session {id}</title><style>{CSS}</style></head><body>\
         <h1>{instruction}</h1><div class=\"meta\"><span>session <code>{id}</code></span><span>{status}</span><span>model {model}</span>\
         <span>{steps}</span><span>{wall}</span><span>tokens {tin} in / {tout} out{cost}</span><span>{when}</span></div>",
        id = html_escape(&s.id),
        instruction = html_escape(&s.instruction),
        status = html_escape(&s.status),
        model = html_escape(s.model.as_deref().unwrap_or("?")),
        steps = crate::output::count(s.steps, "step"),
        wall = s
            .wall_ms
            .map(|w| format!("{:.1} s", w as f64 / 1000.0))
            .unwrap_or_default(),
        tin = s.tokens_in,
        tout = s.tokens_out,
        cost = s
            .cost()
            .map(|c| format!(" · {}", crate::model::price::dollars(c)))
            .unwrap_or_default(),
        when = crate::time::iso8601(s.created_at),
    );
    if let Some(a) = &s.answer {
        let _ = write!(
            out,
            "<div class=\"card\"><b>Answer</b><pre>{}</pre></div>",
            html_escape(a)
        );
    }
    if let Some(e) = &s.error {
        let _ = write!(
            out,
            "<div class=\"card\"><b class=\"err\">Error</b><pre>{}</pre></div>",
            html_escape(e)
        );
    }
    if let Some(g) = ep.checks_grade() {
        let _ = write!(
            out,
            "<div class=\"card\"><b>Grade</b>{}</div>",
            checks_html(&g)
        );
    }
    // The step index: a thumbnail of each step's result, linked to the step below.
    if !ep.steps.is_empty() {
        out.push_str("<nav class=\"card\"><b>Steps</b><div class=\"strip\">");
        for st in &ep.steps {
            let Some(id) = st.frame_after.or(st.frame_before) else {
                continue;
            };
            let thumb = frame_image(db, id, &step_actions(st))
                .and_then(|img| jpeg_data_url(&img, 160, 60))?;
            let marks = if ep.notes(st.idx).is_empty() {
                ""
            } else {
                " ✋"
            };
            let ok = step_actions(st).iter().all(|a| a.ok) && st.error.is_none();
            let _ = write!(
                out,
                "<figure><a href=\"#step-{idx}\"><img src=\"{thumb}\" alt=\"step {idx}\" loading=\"lazy\"></a><figcaption>{verdict} {idx}{marks}</figcaption></figure>",
                idx = st.idx,
                verdict = if ok { "✓" } else { "✗" },
            );
        }
        out.push_str("</div></nav>");
    }
    if let Some(id) = ep.first_frame() {
        let img = frame_image(db, id, &[])?;
        let _ = write!(
            out,
            "<div class=\"card step\"><h2>Start</h2><img src=\"{}\" alt=\"the desktop at the start\"></div>",
            jpeg_data_url(&img, 1024, 80)?
        );
    }
    for st in &ep.steps {
        let actions = step_actions(st);
        let _ = write!(
            out,
            "<div class=\"card step\" id=\"step-{idx}\"><h2>Step {idx}</h2><div class=\"meta\"><span>model {m}</span><span>actions {a}</span><span>settle {se}</span><span>step {t}</span><span>tokens {ti}/{to}</span></div>",
            idx = st.idx,
            m = ms(st.model_ms),
            a = ms(st.act_ms),
            se = ms(st.settle_ms),
            t = ms(st.step_ms),
            ti = st.tokens_in,
            to = st.tokens_out,
        );
        if let Some(t) = &st.thought {
            let _ = write!(out, "<p><b>Thought</b></p><pre>{}</pre>", html_escape(t));
        }
        if let Some(t) = &st.text {
            let _ = write!(out, "<p><b>Said</b></p><pre>{}</pre>", html_escape(t));
        }
        if !actions.is_empty() {
            out.push_str("<ul class=\"checks\">");
            for a in &actions {
                let _ = write!(
                    out,
                    "<li>{} <code>{}</code></li>",
                    verdict_span(Some(a.ok), if a.ok { "✓" } else { "✗" }),
                    html_escape(&a.line())
                );
            }
            out.push_str("</ul>");
        }
        let notes = ep.notes(st.idx);
        if !notes.is_empty() {
            out.push_str("<ul class=\"notes\">");
            for n in notes {
                let _ = write!(out, "<li>{}</li>", html_escape(&n));
            }
            out.push_str("</ul>");
        }
        if let Some(e) = &st.error {
            let _ = write!(out, "<pre class=\"err\">{}</pre>", html_escape(e));
        }
        // A re-run's step: what it was, and where the screen drifted, both screens.
        if let Some(mark) = st.meta.get("rerun") {
            let mode = mark["mode"].as_str().unwrap_or("?");
            let _ = write!(
                out,
                "<p class=\"rerun\"><b>Re-run: {}</b>{}</p>",
                html_escape(mode),
                match (mark["of"].as_i64(), mark["difference"].as_f64()) {
                    (Some(of), Some(d)) => format!(
                        " recorded step {of}; the screen differed by {:.1}% (waited {:.0} ms)",
                        d * 100.0,
                        mark["waited_ms"].as_f64().unwrap_or(0.0)
                    ),
                    _ => String::new(),
                }
            );
            if matches!(mode, "halted" | "ignored" | "healed")
                && let (Some(expected), Some(live)) =
                    (mark["expected_frame"].as_i64(), st.frame_before)
            {
                let _ = write!(
                    out,
                    "<div class=\"strip\"><figure><img src=\"{}\" alt=\"the recorded screen\"><figcaption>recorded</figcaption></figure><figure><img src=\"{}\" alt=\"the live screen\"><figcaption>live (drift)</figcaption></figure></div>",
                    jpeg_data_url(&frame_image(db, expected, &[])?, 640, 75)?,
                    jpeg_data_url(&frame_image(db, live, &[])?, 640, 75)?
                );
            }
        }
        if let Some(id) = st.frame_after.or(st.frame_before) {
            let img = frame_image(db, id, &actions)?;
            let _ = write!(
                out,
                "<img src=\"{}\" alt=\"the desktop after step {}\">",
                jpeg_data_url(&img, 1024, 80)?,
                st.idx
            );
        }
        out.push_str("</div>");
    }
    out.push_str("</body></html>\n");
    Ok(out)
}

/// An animated GIF of the episode's story, `width` pixels wide, `delay_ms` per frame (the
/// last frame stays three times as long).
pub fn gif(db: &Db, ep: &Episode, width: u32, delay_ms: u32) -> anyhow::Result<Vec<u8>> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame};
    let frames = story(ep);
    if frames.is_empty() {
        bail!("session {} has no screenshots", ep.session.id);
    }
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 20);
        enc.set_repeat(Repeat::Infinite)
            .context("writing the GIF")?;
        let last = frames.len() - 1;
        for (i, (id, marks, label)) in frames.iter().enumerate() {
            let mut img = scaled(&frame_image(db, *id, marks)?, width);
            caption(&mut img, &frame_caption(label, marks));
            let rgba = DynamicImage::ImageRgb8(img).to_rgba8();
            let d = if i == last { delay_ms * 3 } else { delay_ms };
            enc.encode_frame(Frame::from_parts(
                rgba,
                0,
                0,
                Delay::from_numer_denom_ms(d, 1),
            ))
            .context("writing the GIF")?;
        }
    }
    Ok(out)
}

/// A frame's caption: "step 3: click (640, 400)".
fn frame_caption(label: &str, marks: &[ActionView]) -> String {
    match marks {
        [] => label.to_owned(),
        [one] => format!("{label}: {}", one.line()),
        [first, rest @ ..] => format!("{label}: {} (+{} more)", first.line(), rest.len()),
    }
}

/// Writes `text` on a dark band across the bottom of `img` (an 8x8 bitmap font, doubled
/// on wide frames; characters outside ASCII become '?'; cut with "..." to fit).
pub fn caption(img: &mut RgbImage, text: &str) {
    use font8x8::UnicodeFonts;
    let (w, h) = img.dimensions();
    let scale = if w >= 800 { 2 } else { 1 };
    let glyph = 8 * scale;
    let band = glyph + 6;
    if h <= band || w < glyph * 4 {
        return;
    }
    for y in h - band..h {
        for x in 0..w {
            let p = img.get_pixel_mut(x, y);
            p.0 = p.0.map(|c| c / 5);
        }
    }
    let fits = ((w - 8) / glyph) as usize;
    let mut chars: Vec<char> = text
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if chars.len() > fits {
        chars.truncate(fits.saturating_sub(3));
        chars.extend(['.', '.', '.']);
    }
    let top = h - band + 3;
    for (i, c) in chars.iter().enumerate() {
        let Some(rows) = font8x8::BASIC_FONTS.get(*c) else {
            continue;
        };
        let left = 4 + i as u32 * glyph;
        for (ry, bits) in rows.iter().enumerate() {
            for rx in 0..8u32 {
                if bits & (1 << rx) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (x, y) = (left + rx * scale + dx, top + ry as u32 * scale + dy);
                        if x < w && y < h {
                            img.put_pixel(x, y, image::Rgb([255, 255, 255]));
                        }
                    }
                }
            }
        }
    }
}

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Gif,
    /// OSWorld's result directory (`traj.jsonl`, the screenshots, `result.txt`).
    Osworld,
    /// Harbor's Agent Trajectory Interchange Format.
    Atif,
    /// OpenCUA's AgentNet records (JSON Lines).
    Agentnet,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "html" => Self::Html,
            "gif" => Self::Gif,
            "osworld" | "jsonl" => Self::Osworld,
            "atif" => Self::Atif,
            "agentnet" => Self::Agentnet,
            other => {
                return Err(format!(
                    "unknown export format '{other}' (html, gif, osworld, atif, agentnet)"
                ));
            }
        })
    }
}

/// A session id as a file name: a recording is a file anyone may hand over, and an id that
/// is a path (`../x`) must not choose where an export lands.
pub fn file_name(session: &str) -> String {
    let name: String = session
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "session".into()
    } else {
        name
    }
}

/// The default output path of a format.
pub fn default_output(session: &str, format: Format) -> PathBuf {
    let session = file_name(session);
    PathBuf::from(match format {
        Format::Html => format!("{session}.html"),
        Format::Gif => format!("{session}.gif"),
        Format::Osworld => format!("{session}-traj"),
        Format::Atif => format!("{session}-atif"),
        Format::Agentnet => format!("{session}-agentnet"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_the_ends_and_spread_evenly() {
        assert_eq!(sample(3, 8), vec![0, 1, 2]);
        assert_eq!(sample(10, 4), vec![0, 3, 6, 9]);
        assert_eq!(sample(10, 1), vec![9]);
        assert_eq!(sample(0, 4), Vec::<usize>::new());
    }

    #[test]
    fn captions_are_drawn_in_a_band_at_the_bottom() {
        let mut img = RgbImage::from_pixel(400, 100, image::Rgb([200, 200, 200]));
        caption(&mut img, "step 1: click (5, 5)");
        // The band is dark, with white text in it; above it nothing changed.
        let band: Vec<_> = (86..100)
            .flat_map(|y| (0..400).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0)
            .collect();
        assert!(band.contains(&[255, 255, 255]), "no text");
        assert!(band.contains(&[40, 40, 40]), "no band");
        assert_eq!(img.get_pixel(10, 10).0, [200, 200, 200]);
        // Text beyond the width is cut, and nothing is drawn past the edge.
        let mut small = RgbImage::from_pixel(64, 40, image::Rgb([0, 0, 0]));
        caption(&mut small, &"x".repeat(100));
    }

    #[test]
    fn session_ids_never_make_paths() {
        assert_eq!(
            file_name("20261203-064411-deb4db"),
            "20261203-064411-deb4db"
        );
        assert_eq!(file_name("../../etc/x"), "______etc_x");
        assert_eq!(
            default_output("/tmp/a", Format::Atif),
            PathBuf::from("_tmp_a-atif")
        );
        assert_eq!(file_name(""), "session");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn thumbnails_scale_down_only() {
        let img = RgbImage::new(1280, 800);
        assert_eq!(scaled(&img, 160).dimensions(), (160, 100));
        assert_eq!(scaled(&img, 2000).dimensions(), (1280, 800));
        let url = jpeg_data_url(&img, 160, 70).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(url.strip_prefix("data:image/jpeg;base64,").unwrap())
            .unwrap();
        let back = image::load_from_memory(&bytes).unwrap();
        assert_eq!((back.width(), back.height()), (160, 100));
    }
}
