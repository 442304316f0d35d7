//! A batch's results: per-episode entries, per-task summaries (pass rate, pass@k, means),
//! and the files: `report.json`, `junit.xml` (failed checks are failures, harness errors are
//! errors, episodes not run are skipped) and `report.html` (a summary table and each
//! episode with a strip of its frames).

use crate::export::{self, CSS, Episode, html_escape, verdict_span};
use crate::record::Db;
use crate::task::Task;
use crate::task::check::Grade;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One episode of a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpisodeReport {
    pub task_id: String,
    /// 1-based.
    pub repeat: u32,
    pub session_id: String,
    /// The checks passed (false for harness errors).
    pub passed: bool,
    pub score: f64,
    /// How the agent's episode ended: succeeded, failed, stopped, error.
    pub status: String,
    pub ended_by: String,
    /// Set when the harness, not the agent, failed (desktop, setup, checks).
    pub harness_error: Option<String>,
    pub steps: u32,
    pub wall_ms: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub answer: Option<String>,
    /// The agent's episode error (the model server broke, ...), not a harness error.
    pub error: Option<String>,
    pub grade: Option<Grade>,
    /// The engine that ran it (batches over several engines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Dollars, where the model's price is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// The session of an earlier attempt that was cut short (the batch was killed), redone
    /// by this one after `batch --resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redone: Option<String>,
    /// Earlier attempts that ended in a harness error and were run again
    /// (`--retry-harness`): not the model's failures, and not in any rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub harness_retries: Vec<HarnessRetry>,
}

/// An attempt lost to the harness and retried.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HarnessRetry {
    pub session_id: String,
    pub error: String,
}

impl EpisodeReport {
    /// Stopped by the user (Ctrl-C, a signal): neither passed nor failed, and not counted in
    /// pass rates.
    pub fn stopped(&self) -> bool {
        // Out of budget is the agent's result (it did not finish for the money), not a stop.
        self.harness_error.is_none() && self.status == "stopped" && self.ended_by != "budget"
    }

    /// Counted in pass rates: neither a harness error nor stopped.
    pub fn graded(&self) -> bool {
        self.harness_error.is_none() && !self.stopped()
    }

    /// `PASS`, `FAIL`, `STOP` or `ERROR`.
    pub fn verdict(&self) -> &'static str {
        if self.harness_error.is_none() && self.stopped() {
            return "STOP";
        }
        match (&self.harness_error, self.passed) {
            (Some(_), _) => "ERROR",
            (None, true) => "PASS",
            (None, false) if self.stopped() => "STOP",
            (None, false) => "FAIL",
        }
    }

    /// One progress line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{:<5} {} #{}  score {:.2}  {}  {:.1} s  {} tok{}  session {}",
            self.verdict(),
            self.task_id,
            self.repeat,
            self.score,
            crate::output::count(self.steps, "step"),
            self.wall_ms as f64 / 1000.0,
            self.tokens_in + self.tokens_out,
            self.cost
                .map(|c| format!("  {}", crate::model::price::dollars(c)))
                .unwrap_or_default(),
            if self.session_id.is_empty() {
                "-"
            } else {
                &self.session_id
            }
        );
        if let Some(e) = &self.harness_error {
            s.push_str(&format!("\n      harness error: {e}"));
        } else if !self.passed
            && !self.stopped()
            && let Some(g) = &self.grade
        {
            let failed: Vec<String> = g
                .result
                .iter()
                .flat_map(|r| r.leaves())
                .filter(|l| l.verdict != crate::task::check::Verdict::Passed)
                .map(|l| format!("{} ({})", l.check, crate::task::check::excerpt(&l.detail)))
                .collect();
            if !failed.is_empty() {
                s.push_str(&format!("\n      failed: {}", failed.join("; ")));
            }
        }
        s
    }
}

/// Per task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task_id: String,
    pub runs: usize,
    pub passed: usize,
    pub harness_errors: usize,
    /// Episodes stopped by the user (not counted in the rates).
    pub stopped: usize,
    /// Passed over graded runs (harness errors and stopped episodes excluded); `None` when
    /// none were graded.
    pub pass_rate: Option<f64>,
    /// The Wilson 95% interval of `pass_rate` over the graded runs.
    pub ci95: Option<[f64; 2]>,
    /// The chance that at least one of `k` runs passes (the unbiased estimator over the
    /// graded runs), `k` being `--repeat`.
    pub pass_at_k: Option<f64>,
    pub k: u32,
    pub mean_score: Option<f64>,
    pub mean_steps: Option<f64>,
    pub mean_wall_ms: Option<f64>,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

impl TaskSummary {
    /// Column names of [`TaskSummary::cells`].
    pub fn headers(k: u32) -> [String; 11] {
        let k = format!("pass@{k}");
        [
            "task", "runs", "passed", "rate", "95% CI", &k, "score", "steps", "time", "tokens",
            "harness",
        ]
        .map(str::to_owned)
    }

    /// The row as the terminal table and the HTML show it.
    pub fn cells(&self) -> [String; 11] {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        [
            self.task_id.clone(),
            self.runs.to_string(),
            self.passed.to_string(),
            pct(self.pass_rate),
            interval(self.ci95),
            pct(self.pass_at_k),
            or_dash(self.mean_score.map(|v| format!("{v:.2}"))),
            or_dash(self.mean_steps.map(|v| format!("{v:.1}"))),
            or_dash(self.mean_wall_ms.map(|v| format!("{:.1} s", v / 1000.0))),
            (self.tokens_in + self.tokens_out).to_string(),
            self.harness_errors.to_string(),
        ]
    }
}

/// pass@k: 1 − C(n−c, k) / C(n, k), with `k` capped at `n`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let k = k.clamp(1, n);
    if n - c < k {
        return Some(1.0);
    }
    // C(n−c, k) / C(n, k) = Π_{i=0}^{k−1} (n−c−i) / (n−i)
    let ratio: f64 = (0..k)
        .map(|i| (n - c - i) as f64 / (n - i) as f64)
        .product();
    Some(1.0 - ratio)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl TaskSummary {
    fn new(task_id: &str, k: u32, episodes: &[&EpisodeReport]) -> Self {
        let graded: Vec<&&EpisodeReport> = episodes.iter().filter(|e| e.graded()).collect();
        let passed = graded.iter().filter(|e| e.passed).count();
        Self {
            task_id: task_id.to_owned(),
            runs: episodes.len(),
            passed,
            harness_errors: episodes
                .iter()
                .filter(|e| e.harness_error.is_some())
                .count(),
            stopped: episodes.iter().filter(|e| e.stopped()).count(),
            pass_rate: (!graded.is_empty()).then(|| passed as f64 / graded.len() as f64),
            ci95: super::stats::wilson(passed, graded.len()),
            pass_at_k: pass_at_k(graded.len(), passed, k as usize),
            k,
            mean_score: mean(graded.iter().map(|e| e.score)),
            mean_steps: mean(graded.iter().map(|e| f64::from(e.steps))),
            mean_wall_ms: mean(graded.iter().map(|e| e.wall_ms as f64)),
            tokens_in: episodes.iter().map(|e| e.tokens_in).sum(),
            tokens_out: episodes.iter().map(|e| e.tokens_out).sum(),
        }
    }
}

/// Memory while the batch ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    /// The machine's memory in use (MemTotal − MemAvailable) before the first episode.
    pub host_baseline_bytes: u64,
    /// Its highest value while the batch ran.
    pub host_peak_bytes: u64,
    /// The highest sum over the running containers (their cgroups, page cache included),
    /// when the cgroups are readable.
    pub containers_peak_bytes: Option<u64>,
    pub samples: u64,
}

impl Memory {
    /// How far the machine's memory use rose above its baseline.
    pub fn host_rise_bytes(&self) -> u64 {
        self.host_peak_bytes
            .saturating_sub(self.host_baseline_bytes)
    }
}

/// Samples memory every 250 ms on a thread until stopped.
pub struct MemorySampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Memory>>,
}

/// MemTotal − MemAvailable from /proc/meminfo.
fn host_used() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

/// The sum of the Docker containers' memory cgroups (v1 or v2 layouts).
fn containers_used() -> Option<u64> {
    let mut total = 0u64;
    let mut found = false;
    let mut add = |path: PathBuf| {
        if let Some(v) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            total += v;
            found = true;
        }
    };
    if let Ok(dir) = std::fs::read_dir("/sys/fs/cgroup/memory/docker") {
        for e in dir.flatten().filter(|e| e.path().is_dir()) {
            add(e.path().join("memory.usage_in_bytes"));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/fs/cgroup/system.slice") {
        for e in dir.flatten().filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("docker-") && n.ends_with(".scope"))
        }) {
            add(e.path().join("memory.current"));
        }
    }
    found.then_some(total)
}

impl MemorySampler {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let baseline = host_used().unwrap_or(0);
            let mut m = Memory {
                host_baseline_bytes: baseline,
                host_peak_bytes: baseline,
                ..Memory::default()
            };
            while !flag.load(Ordering::SeqCst) {
                if let Some(v) = host_used() {
                    m.host_peak_bytes = m.host_peak_bytes.max(v);
                }
                if let Some(c) = containers_used() {
                    m.containers_peak_bytes = Some(m.containers_peak_bytes.unwrap_or(0).max(c));
                }
                m.samples += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            m
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Memory {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// The batch as a whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchMeta {
    pub id: String,
    pub started_at: String,
    pub wall_ms: u64,
    pub parallel: usize,
    pub repeat: u32,
    pub model: String,
    /// The protocol and coordinate space the model was spoken to in.
    pub protocol: String,
    pub coords: String,
    pub base_url: String,
    /// The desktop image the episodes started from (tasks may name another, e.g. office).
    #[serde(default)]
    pub image: String,
    /// The settings the model was run with that change what it sees or may do (as given:
    /// scale, step and time limits, extra request fields, prompts, options…), for `compare`.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
    /// Each task's digest (its whole definition), so `compare` can tell a changed task.
    #[serde(default)]
    pub task_digests: std::collections::BTreeMap<String, String>,
    /// Tasks run on the desktop that grants the agent sudo (`sudo = true`, --allow-sudo).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sudo: Vec<String>,
    /// How many times the batch was resumed (`batch --resume`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed: u32,
    pub db: String,
    /// The calibration run before the batch (`--calibrate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibrated>,
    pub tasks: usize,
    pub episodes: usize,
    pub finished: usize,
    pub not_run: usize,
    /// The engines it ran on, when there were several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engines: Vec<super::placement::EngineSummary>,
    pub stopped: bool,
    /// Stopped because `--max-total-cost` was reached.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub over_budget: bool,
    pub memory: Memory,
}

/// A batch's calibration, in short.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibrated {
    pub session: String,
    pub median_px: Option<f64>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub batch: BatchMeta,
    pub passed: usize,
    pub failed: usize,
    pub harness_errors: usize,
    /// Episodes stopped by the user: neither passed nor failed.
    pub stopped: usize,
    /// Attempts lost to the harness and run again (`--retry-harness`), over all episodes.
    #[serde(default)]
    pub harness_retries: usize,
    pub summary: Vec<TaskSummary>,
    /// The pass rate and score over tasks with their clustered 95% intervals (`None` when
    /// nothing was graded).
    pub overall: Option<Overall>,
    pub episodes: Vec<EpisodeReport>,
    /// Dollars over the episodes whose model price is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// An interval in points: `24–76%`.
pub(crate) fn interval(ci: Option<[f64; 2]>) -> String {
    ci.map(|[lo, hi]| format!("{:.0}–{:.0}%", lo * 100.0, hi * 100.0))
        .unwrap_or_else(|| "–".into())
}

/// The batch's rates over tasks, with error bars clustered by task (see [`super::stats`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overall {
    /// Each task's pass rate (graded runs), averaged over tasks.
    pub pass_rate: super::stats::Clustered,
    /// Each task's mean score (0–1, partial credit), averaged over tasks.
    pub score: super::stats::Clustered,
    /// Why the interval is too wide to mean much, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caveat: Option<String>,
}

impl Overall {
    fn new(episodes: &[EpisodeReport], summary: &[TaskSummary]) -> Option<Self> {
        let graded = |task: &str| -> Vec<&EpisodeReport> {
            episodes
                .iter()
                .filter(|e| e.task_id == task && e.graded())
                .collect()
        };
        let passes: Vec<Vec<f64>> = summary
            .iter()
            .map(|s| {
                graded(&s.task_id)
                    .iter()
                    .map(|e| f64::from(u8::from(e.passed)))
                    .collect()
            })
            .collect();
        let scores: Vec<Vec<f64>> = summary
            .iter()
            .map(|s| graded(&s.task_id).iter().map(|e| e.score).collect())
            .collect();
        let pass_rate = super::stats::clustered(&passes)?;
        let score = super::stats::clustered(&scores)?;
        let min_repeats = passes
            .iter()
            .map(Vec::len)
            .filter(|n| *n > 0)
            .min()
            .unwrap_or(0);
        Some(Self {
            caveat: super::stats::caveat(min_repeats, &pass_rate),
            pass_rate,
            score,
        })
    }
}

/// A rate as a small bar (0–100%) with its 95% interval as a whisker, inline SVG.
pub fn rate_svg(rate: Option<f64>, ci: Option<[f64; 2]>) -> String {
    const W: f64 = 120.0;
    let mut svg = format!(
        "<svg width=\"{W}\" height=\"14\" viewBox=\"0 0 {W} 14\" role=\"img\" \
         style=\"vertical-align:middle\"><rect x=\"0\" y=\"3\" width=\"{W}\" height=\"8\" \
         fill=\"#e3e7ed\"/>"
    );
    if let Some(r) = rate {
        let _ = write!(
            svg,
            "<rect x=\"0\" y=\"3\" width=\"{:.1}\" height=\"8\" fill=\"#4c8bd6\"/>",
            r.clamp(0.0, 1.0) * W
        );
    }
    if let Some([lo, hi]) = ci {
        let (x0, x1) = (lo.clamp(0.0, 1.0) * W, hi.clamp(0.0, 1.0) * W);
        let _ = write!(
            svg,
            "<path d=\"M{x0:.1} 7H{x1:.1}M{x0:.1} 2V12M{x1:.1} 2V12\" stroke=\"#1d2330\" \
             stroke-width=\"1.5\" fill=\"none\"><title>95% CI {:.0}–{:.0}%</title></path>",
            lo * 100.0,
            hi * 100.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A difference (−1…+1) as a point with its 95% interval on an axis with 0 marked.
pub fn diff_svg(diff: f64, ci: [f64; 2]) -> String {
    const W: f64 = 400.0;
    let x = |v: f64| (v.clamp(-1.0, 1.0) + 1.0) / 2.0 * W;
    let colour = if ci[0] > 0.0 {
        "#0a7d32"
    } else if ci[1] < 0.0 {
        "#c0262d"
    } else {
        "#556"
    };
    format!(
        "<svg width=\"{W}\" height=\"34\" viewBox=\"0 -2 {W} 36\" role=\"img\">\
         <line x1=\"0\" y1=\"12\" x2=\"{W}\" y2=\"12\" stroke=\"#ccd\"/>\
         <line x1=\"{z:.1}\" y1=\"2\" x2=\"{z:.1}\" y2=\"22\" stroke=\"#889\"/>\
         <path d=\"M{lo:.1} 12H{hi:.1}M{lo:.1} 6V18M{hi:.1} 6V18\" stroke=\"{colour}\" stroke-width=\"2\"/>\
         <circle cx=\"{d:.1}\" cy=\"12\" r=\"4\" fill=\"{colour}\"/>\
         <text x=\"0\" y=\"32\" font-size=\"10\">−100</text><text x=\"{zt:.1}\" y=\"32\" font-size=\"10\">0</text>\
         <text x=\"{end:.1}\" y=\"32\" font-size=\"10\">+100</text></svg>",
        z = x(0.0),
        zt = x(0.0) - 3.0,
        end = W - 24.0,
        lo = x(ci[0]),
        hi = x(ci[1]),
        d = x(diff),
    )
}

pub(crate) fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.0}%", v * 100.0))
        .unwrap_or_else(|| "–".into())
}

impl Report {
    pub fn new(batch: BatchMeta, tasks: &[Arc<Task>], episodes: Vec<EpisodeReport>) -> Self {
        let summary: Vec<TaskSummary> = tasks
            .iter()
            .map(|t| {
                let eps: Vec<&EpisodeReport> =
                    episodes.iter().filter(|e| e.task_id == t.id).collect();
                TaskSummary::new(&t.id, batch.repeat, &eps)
            })
            .collect();
        let harness_errors = episodes
            .iter()
            .filter(|e| e.harness_error.is_some())
            .count();
        // A stopped episode is neither passed nor failed, whatever its checks said.
        let passed = episodes.iter().filter(|e| e.passed && e.graded()).count();
        let stopped = episodes.iter().filter(|e| e.stopped()).count();
        let costs: Vec<f64> = episodes.iter().filter_map(|e| e.cost).collect();
        let overall = Overall::new(&episodes, &summary);
        Self {
            overall,
            harness_retries: episodes.iter().map(|e| e.harness_retries.len()).sum(),
            cost: (!costs.is_empty()).then(|| costs.iter().sum()),
            passed,
            failed: episodes.len() - passed - harness_errors - stopped,
            harness_errors,
            stopped,
            summary,
            episodes,
            batch,
        }
    }

    /// The summary table for the terminal.
    pub fn table(&self) -> String {
        let b = &self.batch;
        let w = self
            .summary
            .iter()
            .map(|s| s.task_id.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let headers = TaskSummary::headers(b.repeat);
        let mut rows = vec![headers];
        rows.extend(self.summary.iter().map(|s| s.cells()));
        let mut out = String::new();
        for row in rows {
            let _ = write!(out, "{:<w$}", row[0]);
            for cell in &row[1..] {
                let _ = write!(out, "  {cell:>7}");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "\n{} episodes: {} passed, {} failed, {} harness errors{}{}{}; wall {:.1} s with {} at once; memory peak {} above a {} baseline{}",
            self.episodes.len(),
            self.passed,
            self.failed,
            self.harness_errors,
            if self.harness_retries > 0 {
                format!(
                    " (run again after the harness lost it: {})",
                    crate::output::count(self.harness_retries as u32, "attempt")
                )
            } else {
                String::new()
            },
            if self.stopped > 0 {
                format!(", {} stopped", self.stopped)
            } else {
                String::new()
            },
            if b.not_run > 0 {
                format!(
                    ", {} not run ({})",
                    b.not_run,
                    if b.engines.iter().all(|e| e.died) && !b.engines.is_empty() {
                        "no engine left"
                    } else if b.over_budget {
                        "the cost limit was reached"
                    } else {
                        "stopped"
                    }
                )
            } else {
                String::new()
            },
            b.wall_ms as f64 / 1000.0,
            b.parallel,
            gib(b.memory.host_rise_bytes()),
            gib(b.memory.host_baseline_bytes),
            b.memory
                .containers_peak_bytes
                .map(|c| format!(" (containers {})", gib(c)))
                .unwrap_or_default()
        );
        if let Some(o) = &self.overall {
            let _ = writeln!(
                out,
                "pass rate over {} tasks {:.0}% (95% CI {}, clustered by task; SE {:.1} points); mean score {:.2} ({})",
                o.pass_rate.tasks,
                o.pass_rate.mean * 100.0,
                interval(Some(o.pass_rate.ci95)),
                o.pass_rate.se * 100.0,
                o.score.mean,
                interval(Some(o.score.ci95)),
            );
            if let Some(c) = &o.caveat {
                let _ = writeln!(out, "note: {c}");
            }
        }
        let _ = writeln!(
            out,
            "model {} (protocol {}, coords {}){}",
            b.model,
            b.protocol,
            b.coords,
            self.cost
                .map(|c| format!("; cost {}", crate::model::price::dollars(c)))
                .unwrap_or_default()
        );
        if let Some(c) = &b.calibration {
            let _ = writeln!(out, "calibration: {} (session {})", c.message, c.session);
        }
        if !b.sudo.is_empty() {
            let _ = writeln!(
                out,
                "with sudo (the agent could become root in its container): {}",
                b.sudo.join(", ")
            );
        }
        for e in &b.engines {
            let _ = writeln!(
                out,
                "engine {}: {} episodes, {} harness errors{}",
                e.url,
                e.episodes,
                e.harness_errors,
                if e.died {
                    "; stopped answering during the batch"
                } else {
                    ""
                }
            );
        }
        out
    }

    /// JUnit XML: one test case per episode.
    pub fn junit(&self) -> String {
        let x = html_escape;
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"selfagent batch {}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            x(&self.batch.id),
            self.batch.episodes,
            self.failed,
            self.harness_errors,
            self.batch.not_run + self.stopped,
            self.batch.wall_ms as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "  <testsuite name=\"selfagent\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            self.batch.episodes,
            self.failed,
            self.harness_errors,
            self.batch.not_run + self.stopped,
            self.batch.wall_ms as f64 / 1000.0
        );
        for e in &self.episodes {
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{} #{}\" time=\"{:.3}\">",
                x(&e.task_id),
                x(&e.task_id),
                e.repeat,
                e.wall_ms as f64 / 1000.0
            );
            if let Some(h) = &e.harness_error {
                let _ = write!(
                    out,
                    "<error message=\"harness error\" type=\"harness\">{}</error>",
                    x(h)
                );
            } else if e.stopped() {
                let _ = write!(out, "<skipped message=\"stopped by the user\"/>");
            } else if !e.passed {
                let detail = e
                    .grade
                    .as_ref()
                    .map(|g| {
                        let mut s = g.summary();
                        for l in g.result.iter().flat_map(|r| r.leaves()) {
                            s.push_str(&format!("\n{:?} {}: {}", l.verdict, l.check, l.detail));
                        }
                        s
                    })
                    .unwrap_or_default();
                let _ = write!(
                    out,
                    "<failure message=\"checks failed (score {:.2})\" type=\"checks\">{}</failure>",
                    e.score,
                    x(&detail)
                );
            }
            let _ = writeln!(
                out,
                "<system-out>session {} · {} · ended by {}</system-out></testcase>",
                x(&e.session_id),
                crate::output::count(e.steps, "step"),
                x(&e.ended_by)
            );
        }
        out.push_str("  </testsuite>\n</testsuites>\n");
        out
    }

    /// The HTML report: the summary table, then each episode with a thumbnail strip.
    pub fn html(&self, db: &Db, tasks: &[Arc<Task>]) -> String {
        let b = &self.batch;
        let mut out = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>selfagent batch {id}</title><style>{CSS}</style></head><body>\
             <h1>Batch {id}</h1><div class=\"meta\"><span>{started}</span><span>model {model} ({protocol}, coords {coords})</span><span>{eps} episodes, {par} at once</span>\
             <span>wall {wall:.1} s</span><span>memory peak {mem}</span></div>\
             <div class=\"card\"><b>{passed} passed</b> · <b>{failed} failed</b> · <b>{harness} harness errors</b>{stopped}{not_run}</div>",
            id = html_escape(&b.id),
            started = html_escape(&b.started_at),
            model = html_escape(&b.model),
            protocol = html_escape(&b.protocol),
            coords = html_escape(&b.coords),
            eps = b.episodes,
            par = b.parallel,
            wall = b.wall_ms as f64 / 1000.0,
            mem = gib(b.memory.host_rise_bytes()),
            passed = self.passed,
            failed = self.failed,
            harness = self.harness_errors,
            stopped = if self.stopped > 0 {
                format!(" · <b>{} stopped</b>", self.stopped)
            } else {
                String::new()
            },
            not_run = if b.not_run > 0 {
                format!(" · {} not run (stopped)", b.not_run)
            } else {
                String::new()
            },
        );
        out.push_str("<h2>Tasks</h2><table><tr>");
        for h in TaskSummary::headers(b.repeat) {
            let _ = write!(out, "<th>{h}</th>");
        }
        out.push_str("</tr>");
        for s in &self.summary {
            let cells = s.cells();
            let _ = write!(
                out,
                "<tr><td><a href=\"#{id}\">{id}</a></td>",
                id = html_escape(&cells[0])
            );
            for (i, c) in cells.iter().enumerate().skip(1) {
                if i == 4 {
                    // The interval column carries the rate's bar.
                    let _ = write!(
                        out,
                        "<td class=num>{} {}</td>",
                        rate_svg(s.pass_rate, s.ci95),
                        html_escape(c)
                    );
                } else {
                    let _ = write!(out, "<td class=num>{}</td>", html_escape(c));
                }
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
        if let Some(o) = &self.overall {
            let _ = write!(
                out,
                "<div class=\"card\"><b>pass rate over {tasks} tasks</b> {bar} {rate:.0}% \
                 (95% CI {ci}, clustered by task; SE {se:.1} points) · <b>mean score</b> \
                 {sbar} {score:.2} ({sci}){caveat}</div>",
                tasks = o.pass_rate.tasks,
                bar = rate_svg(Some(o.pass_rate.mean), Some(o.pass_rate.ci95)),
                rate = o.pass_rate.mean * 100.0,
                ci = interval(Some(o.pass_rate.ci95)),
                se = o.pass_rate.se * 100.0,
                sbar = rate_svg(Some(o.score.mean), Some(o.score.ci95)),
                score = o.score.mean,
                sci = interval(Some(o.score.ci95)),
                caveat = o
                    .caveat
                    .as_ref()
                    .map(|c| format!("<p class=\"err\">note: {}</p>", html_escape(c)))
                    .unwrap_or_default(),
            );
        }
        out.push_str("<h2>Episodes</h2>");
        for e in &self.episodes {
            let instruction = tasks
                .iter()
                .find(|t| t.id == e.task_id)
                .map(|t| t.instruction.as_str())
                .unwrap_or_default();
            let passed = if e.harness_error.is_some() {
                None
            } else {
                Some(e.passed)
            };
            let _ = write!(
                out,
                "<div class=\"card\" id=\"{id}\"><b>{verdict}</b> <b>{id}</b> #{r} <span class=\"meta\"><span>score {score:.2}</span><span>{steps}</span><span>{wall:.1} s</span><span>{tok} tokens</span><span>ended by {by}</span><span>session <code>{session}</code></span></span><p>{instruction}</p>",
                verdict = verdict_span(passed, e.verdict()),
                id = html_escape(&e.task_id),
                r = e.repeat,
                score = e.score,
                steps = crate::output::count(e.steps, "step"),
                wall = e.wall_ms as f64 / 1000.0,
                tok = e.tokens_in + e.tokens_out,
                by = html_escape(&e.ended_by),
                session = html_escape(&e.session_id),
                instruction = html_escape(instruction),
            );
            if let Some(h) = &e.harness_error {
                let _ = write!(
                    out,
                    "<pre class=\"err\">harness error: {}</pre>",
                    html_escape(h)
                );
            } else if let Some(g) = &e.grade {
                out.push_str(&export::checks_html(g));
            }
            if !e.session_id.is_empty() {
                match Episode::load(db, &e.session_id) {
                    Ok(ep) => out.push_str(&export::thumbnail_strip(db, &ep, 8, 200)),
                    Err(err) => {
                        let _ = write!(
                            out,
                            "<p class=\"err\">{}</p>",
                            html_escape(&format!("{err:#}"))
                        );
                    }
                }
            }
            out.push_str("</div>");
        }
        out.push_str("</body></html>\n");
        out
    }

    /// Writes report.json, junit.xml and report.html into `dir`.
    pub fn write(&self, dir: &Path, db: &Db, tasks: &[Arc<Task>]) -> anyhow::Result<Vec<PathBuf>> {
        let files = [
            ("report.json", serde_json::to_string_pretty(self)? + "\n"),
            ("junit.xml", self.junit()),
            ("report.html", self.html(db, tasks)),
        ];
        let mut out = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            out.push(path);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn pass_at_k_is_the_unbiased_estimator() {
        assert_eq!(pass_at_k(0, 0, 1), None);
        assert_eq!(pass_at_k(4, 0, 2), Some(0.0));
        assert_eq!(pass_at_k(4, 4, 2), Some(1.0));
        // n=4, c=1, k=2: 1 − C(3,2)/C(4,2) = 1 − 3/6
        assert!((pass_at_k(4, 1, 2).unwrap() - 0.5).abs() < 1e-12);
        // k = 1 is the pass rate.
        assert!((pass_at_k(5, 2, 1).unwrap() - 0.4).abs() < 1e-12);
        // k above n is capped: any pass of 2 runs.
        assert_eq!(pass_at_k(2, 1, 5), Some(1.0));
    }

    pub(crate) fn ep(task: &str, repeat: u32, passed: bool, harness: bool) -> EpisodeReport {
        EpisodeReport {
            task_id: task.into(),
            repeat,
            session_id: format!("s-{task}-{repeat}"),
            passed,
            score: if passed { 1.0 } else { 0.0 },
            status: "succeeded".into(),
            ended_by: "model".into(),
            harness_error: harness.then(|| "setup step 1 of 1 (exec false) failed".into()),
            steps: 4,
            wall_ms: 2000,
            tokens_in: 100,
            tokens_out: 10,
            answer: None,
            error: None,
            grade: None,
            engine: None,
            cost: None,
            redone: None,
            harness_retries: Vec::new(),
        }
    }

    pub(crate) fn meta() -> BatchMeta {
        BatchMeta {
            id: "b1".into(),
            started_at: "2026-11-22T00:00:00Z".into(),
            wall_ms: 5000,
            parallel: 2,
            repeat: 2,
            model: "m".into(),
            protocol: "tools".into(),
            coords: "native".into(),
            base_url: "http://x/v1".into(),
            image: "selfagent-desktop:latest".into(),
            settings: Default::default(),
            task_digests: Default::default(),
            sudo: Vec::new(),
            resumed: 0,
            db: "db".into(),
            calibration: None,
            tasks: 2,
            episodes: 4,
            finished: 4,
            engines: Vec::new(),
            not_run: 0,
            stopped: false,
            over_budget: false,
            memory: Memory::default(),
        }
    }

    pub(crate) fn task(id: &str) -> Arc<Task> {
        Arc::new(
            Task::parse(
                &format!("id = \"{id}\"\ninstruction = \"do <it> & more\"\n"),
                "t.toml",
            )
            .unwrap(),
        )
    }

    #[test]
    fn summaries_keep_harness_errors_apart_and_junit_tells_them_from_failures() {
        let r = Report::new(
            meta(),
            &[task("a"), task("b")],
            vec![
                ep("a", 1, true, false),
                ep("a", 2, false, false),
                ep("b", 1, false, true),
                ep("b", 2, false, false),
            ],
        );
        assert_eq!((r.passed, r.failed, r.harness_errors), (1, 2, 1));
        let a = &r.summary[0];
        assert_eq!(
            (a.runs, a.passed, a.pass_rate, a.pass_at_k),
            (2, 1, Some(0.5), Some(1.0))
        );
        let b = &r.summary[1];
        assert_eq!(
            (b.runs, b.passed, b.harness_errors, b.pass_rate),
            (2, 0, 1, Some(0.0))
        );
        let xml = r.junit();
        assert_eq!(xml.matches("<testcase ").count(), 4);
        assert_eq!(xml.matches("<failure ").count(), 2);
        assert_eq!(xml.matches("<error ").count(), 1);
        assert!(xml.contains("failures=\"2\" errors=\"1\""), "{xml}");
        let table = r.table();
        assert!(table.contains("pass@2"), "{table}");
        assert!(table.lines().nth(1).unwrap().starts_with("a "), "{table}");
        assert!(
            table.contains("model m (protocol tools, coords native)"),
            "{table}"
        );
    }

    #[test]
    fn a_stopped_episode_is_neither_passed_nor_failed_and_out_of_budget_is_a_result() {
        let mut stopped = ep("a", 1, true, false);
        stopped.status = "stopped".into();
        stopped.ended_by = "user".into();
        let mut broke = ep("a", 2, false, false);
        broke.status = "stopped".into();
        broke.ended_by = "budget".into();
        let r = Report::new(meta(), &[task("a")], vec![stopped, broke]);
        assert_eq!((r.passed, r.failed, r.stopped), (0, 1, 1));
        assert_eq!(r.episodes[0].verdict(), "STOP");
        assert_eq!(r.episodes[1].verdict(), "FAIL");
        assert_eq!(r.summary[0].pass_rate, Some(0.0));
    }
}
