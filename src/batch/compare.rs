//! `selfagent compare A B`: two batch reports side by side. Per task, both pass rates with
//! their Wilson intervals and the difference; overall, the **paired** difference over the
//! tasks both ran (its standard error from the per-task differences, see
//! [`super::stats::paired`]); the tasks whose majority verdict flipped; and warnings where
//! the two did not run the same thing (tasks, task definitions, image, model settings).

use super::report::{Report, TaskSummary, interval, pct};
use super::stats::{self, Paired};
use crate::export::{CSS, html_escape};
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A batch report read back: a report directory or its `report.json`.
pub fn load(path: &Path) -> anyhow::Result<(PathBuf, Report)> {
    let file = if path.is_dir() {
        path.join("report.json")
    } else {
        path.to_owned()
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading the batch report {}", file.display()))?;
    let report: Report = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a batch report (the report.json `selfagent batch` writes)",
            file.display()
        )
    })?;
    Ok((file, report))
}

/// One side, in short.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub report: String,
    pub batch: String,
    pub model: String,
    pub protocol: String,
    pub coords: String,
    pub image: String,
    pub repeat: u32,
    pub tasks: usize,
    pub episodes: usize,
}

/// One task's rate on one side.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    /// Graded runs (harness errors and stopped episodes left out) and passes among them.
    pub graded: usize,
    pub passed: usize,
    pub rate: f64,
    pub ci95: Option<[f64; 2]>,
    pub score: f64,
}

impl Rate {
    fn of(s: &TaskSummary) -> Option<Self> {
        let graded = s.runs.saturating_sub(s.harness_errors + s.stopped);
        Some(Self {
            graded,
            passed: s.passed,
            rate: s.pass_rate?,
            ci95: stats::wilson(s.passed, graded),
            score: s.mean_score.unwrap_or(0.0),
        })
    }

    /// The majority verdict: `Some(true)` above half, `Some(false)` below, `None` at half.
    fn majority(&self) -> Option<bool> {
        (self.rate != 0.5).then_some(self.rate > 0.5)
    }
}

/// A task whose majority verdict changed from A to B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flip {
    /// Failed in A, passed in B.
    Improved,
    /// Passed in A, failed in B.
    Regressed,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskDiff {
    pub task_id: String,
    pub a: Option<Rate>,
    pub b: Option<Rate>,
    /// B's rate minus A's, when both graded it.
    pub diff: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flip: Option<Flip>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: Side,
    pub b: Side,
    pub tasks: Vec<TaskDiff>,
    /// Pass rates over the tasks both graded, paired by task.
    pub pass_rate: Option<Paired>,
    /// Mean scores (0–1) likewise.
    pub score: Option<Paired>,
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
    /// Where the two did not run the same thing.
    pub warnings: Vec<String>,
}

fn side(path: &Path, r: &Report) -> Side {
    let b = &r.batch;
    Side {
        report: path.display().to_string(),
        batch: b.id.clone(),
        model: b.model.clone(),
        protocol: b.protocol.clone(),
        coords: b.coords.clone(),
        image: b.image.clone(),
        repeat: b.repeat,
        tasks: r.summary.len(),
        episodes: r.episodes.len(),
    }
}

/// The settings that differ, as `name: A vs B` (`–` where one side has none).
fn setting_differences(a: &Report, b: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, x: &str, y: &str| {
        if x != y {
            let show = |v: &str| {
                if v.is_empty() {
                    "–".to_owned()
                } else {
                    v.to_owned()
                }
            };
            out.push(format!("{name}: {} vs {}", show(x), show(y)));
        }
    };
    let (ma, mb) = (&a.batch, &b.batch);
    field("model", &ma.model, &mb.model);
    field("protocol", &ma.protocol, &mb.protocol);
    field("coords", &ma.coords, &mb.coords);
    field("endpoint", &ma.base_url, &mb.base_url);
    let keys: BTreeSet<&String> = ma.settings.keys().chain(mb.settings.keys()).collect();
    for k in keys {
        let get = |m: &std::collections::BTreeMap<String, String>| m.get(k).cloned();
        field(
            &format!("--{}", k.replace('_', "-")),
            &get(&ma.settings).unwrap_or_default(),
            &get(&mb.settings).unwrap_or_default(),
        );
    }
    out
}

/// Compares two reports.
pub fn compare(a_path: &Path, a: &Report, b_path: &Path, b: &Report) -> Comparison {
    let ids: Vec<String> = {
        let mut seen = BTreeSet::new();
        a.summary
            .iter()
            .chain(&b.summary)
            .filter(|s| seen.insert(s.task_id.clone()))
            .map(|s| s.task_id.clone())
            .collect()
    };
    let find = |r: &Report, id: &str| r.summary.iter().find(|s| s.task_id == id).cloned();
    let mut tasks = Vec::new();
    let (mut rate_pairs, mut score_pairs) = (Vec::new(), Vec::new());
    for id in &ids {
        let ra = find(a, id).as_ref().and_then(Rate::of);
        let rb = find(b, id).as_ref().and_then(Rate::of);
        let (diff, flip) = match (&ra, &rb) {
            (Some(x), Some(y)) => {
                rate_pairs.push((x.rate, y.rate));
                score_pairs.push((x.score, y.score));
                let flip = match (x.majority(), y.majority()) {
                    (Some(false), Some(true)) => Some(Flip::Improved),
                    (Some(true), Some(false)) => Some(Flip::Regressed),
                    _ => None,
                };
                (Some(y.rate - x.rate), flip)
            }
            _ => (None, None),
        };
        tasks.push(TaskDiff {
            task_id: id.clone(),
            a: ra,
            b: rb,
            diff,
            flip,
        });
    }
    let in_a = |id: &str| a.summary.iter().any(|s| s.task_id == id);
    let in_b = |id: &str| b.summary.iter().any(|s| s.task_id == id);
    let only_a: Vec<String> = ids.iter().filter(|i| !in_b(i)).cloned().collect();
    let only_b: Vec<String> = ids.iter().filter(|i| !in_a(i)).cloned().collect();

    let mut warnings = Vec::new();
    if !only_a.is_empty() || !only_b.is_empty() {
        warnings.push(format!(
            "the two ran different tasks ({} only in A, {} only in B): the overall \
             difference is over the {} both graded",
            only_a.len(),
            only_b.len(),
            rate_pairs.len()
        ));
    }
    let changed: Vec<&String> = ids
        .iter()
        .filter(
            |id| match (a.batch.task_digests.get(*id), b.batch.task_digests.get(*id)) {
                (Some(x), Some(y)) => x != y,
                _ => false,
            },
        )
        .collect();
    if !changed.is_empty() {
        warnings.push(format!(
            "tasks with the same id but a different definition (instruction, setup or \
             checks): {}",
            changed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if a.batch.image != b.batch.image {
        warnings.push(format!(
            "different desktop images: A {}, B {}",
            or_unknown(&a.batch.image),
            or_unknown(&b.batch.image)
        ));
    }
    let settings = setting_differences(a, b);
    if !settings.is_empty() {
        warnings.push(format!("different model settings: {}", settings.join("; ")));
    }
    if a.batch.repeat != b.batch.repeat {
        warnings.push(format!(
            "different repeats per task: A {}, B {}",
            a.batch.repeat, b.batch.repeat
        ));
    }
    for (name, r) in [("A", a), ("B", b)] {
        if r.harness_errors > 0 || r.batch.not_run > 0 || r.stopped > 0 {
            warnings.push(format!(
                "{name} is incomplete: {} harness errors, {} stopped, {} not run (left out \
                 of its rates)",
                r.harness_errors, r.stopped, r.batch.not_run
            ));
        }
    }
    Comparison {
        a: side(a_path, a),
        b: side(b_path, b),
        tasks,
        pass_rate: stats::paired(&rate_pairs),
        score: stats::paired(&score_pairs),
        only_a,
        only_b,
        warnings,
    }
}

fn or_unknown(v: &str) -> &str {
    if v.is_empty() { "(not recorded)" } else { v }
}

/// A difference in points, signed: `+15`, `−3`.
fn points(v: f64) -> String {
    let p = (v * 100.0).round();
    if p > 0.0 {
        format!("+{p:.0}")
    } else if p < 0.0 {
        format!("−{:.0}", -p)
    } else {
        "0".into()
    }
}

impl Paired {
    /// `B − A = +15 points (95% CI +3 to +27; paired over 12 tasks, SE 6.1): B is better`.
    fn sentence(&self, what: &str, as_points: bool) -> String {
        let fmt = |v: f64| {
            if as_points {
                points(v)
            } else {
                format!("{v:+.2}")
            }
        };
        let verdict = match self.better() {
            Some(side) => format!("{side} is better at 95%"),
            None => "not told apart from noise at 95% (the interval holds 0)".into(),
        };
        format!(
            "{what}: A {} → B {}, B − A = {}{} (95% CI {} to {}; paired over {} tasks, SE {}, \
             unpaired it would be {}): {verdict}",
            if as_points {
                pct(Some(self.a))
            } else {
                format!("{:.2}", self.a)
            },
            if as_points {
                pct(Some(self.b))
            } else {
                format!("{:.2}", self.b)
            },
            fmt(self.diff),
            if as_points { " points" } else { "" },
            fmt(self.ci95[0]),
            fmt(self.ci95[1]),
            self.tasks,
            if as_points {
                format!("{:.1} points", self.se * 100.0)
            } else {
                format!("{:.3}", self.se)
            },
            if as_points {
                format!("{:.1}", self.unpaired_se * 100.0)
            } else {
                format!("{:.3}", self.unpaired_se)
            },
        )
    }
}

impl Comparison {
    /// The terminal text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (name, s) in [("A", &self.a), ("B", &self.b)] {
            let _ = writeln!(
                out,
                "{name}: {} (batch {}, {} via {}, {} tasks × {}, image {})",
                s.report,
                s.batch,
                s.model,
                s.protocol,
                s.tasks,
                s.repeat,
                or_unknown(&s.image)
            );
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out.push('\n');
        let w = self
            .tasks
            .iter()
            .map(|t| t.task_id.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            out,
            "{:<w$}  {:>6}  {:>9}  {:>6}  {:>9}  {:>5}  flip",
            "task", "A", "A 95% CI", "B", "B 95% CI", "B−A"
        );
        for t in &self.tasks {
            let rate = |r: &Option<Rate>| {
                r.as_ref()
                    .map(|r| format!("{}/{}", r.passed, r.graded))
                    .unwrap_or_else(|| "–".into())
            };
            let ci = |r: &Option<Rate>| interval(r.as_ref().and_then(|r| r.ci95));
            let _ = writeln!(
                out,
                "{:<w$}  {:>6}  {:>9}  {:>6}  {:>9}  {:>5}  {}",
                t.task_id,
                rate(&t.a),
                ci(&t.a),
                rate(&t.b),
                ci(&t.b),
                t.diff.map(points).unwrap_or_else(|| "–".into()),
                match t.flip {
                    Some(Flip::Improved) => "improved",
                    Some(Flip::Regressed) => "regressed",
                    None => "",
                }
            );
        }
        out.push('\n');
        match &self.pass_rate {
            Some(p) => {
                let _ = writeln!(out, "{}", p.sentence("pass rate", true));
            }
            None => out.push_str("pass rate: no task was graded in both\n"),
        }
        if let Some(s) = &self.score {
            let _ = writeln!(out, "{}", s.sentence("mean score", false));
        }
        let flipped = |f: Flip| -> Vec<&str> {
            self.tasks
                .iter()
                .filter(|t| t.flip == Some(f))
                .map(|t| t.task_id.as_str())
                .collect()
        };
        for (f, name) in [(Flip::Improved, "improved"), (Flip::Regressed, "regressed")] {
            let ids = flipped(f);
            if !ids.is_empty() {
                let _ = writeln!(out, "{name} (majority verdict flipped): {}", ids.join(", "));
            }
        }
        if !self.only_a.is_empty() {
            let _ = writeln!(out, "only in A: {}", self.only_a.join(", "));
        }
        if !self.only_b.is_empty() {
            let _ = writeln!(out, "only in B: {}", self.only_b.join(", "));
        }
        out
    }

    /// The HTML page: both sides, the overall difference as an interval on a −100…+100
    /// axis, and per task both rates as bars with their intervals.
    pub fn html(&self) -> String {
        let mut out = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>selfagent \
             compare {a} vs {b}</title><style>{CSS}</style></head><body><h1>Compare {a} \
             (A) with {b} (B)</h1>",
            a = html_escape(&self.a.batch),
            b = html_escape(&self.b.batch),
        );
        for (name, s) in [("A", &self.a), ("B", &self.b)] {
            let _ = write!(
                out,
                "<div class=\"meta\"><b>{name}</b> <span><code>{}</code></span><span>model {} \
                 ({}, coords {})</span><span>{} tasks × {}</span><span>image {}</span></div>",
                html_escape(&s.report),
                html_escape(&s.model),
                html_escape(&s.protocol),
                html_escape(&s.coords),
                s.tasks,
                s.repeat,
                html_escape(or_unknown(&s.image))
            );
        }
        for w in &self.warnings {
            let _ = write!(out, "<p class=\"err\">warning: {}</p>", html_escape(w));
        }
        for (p, what, as_points) in [
            (&self.pass_rate, "pass rate", true),
            (&self.score, "mean score", false),
        ] {
            if let Some(p) = p {
                let _ = write!(
                    out,
                    "<div class=\"card\">{}<p>{}</p></div>",
                    super::report::diff_svg(p.diff, p.ci95),
                    html_escape(&p.sentence(what, as_points))
                );
            }
        }
        out.push_str(
            "<h2>Tasks</h2><table><tr><th>task</th><th>A</th><th>A rate</th><th>B</th>\
             <th>B rate</th><th>B−A</th><th>flip</th></tr>",
        );
        for t in &self.tasks {
            let cells = |r: &Option<Rate>| match r {
                Some(r) => format!(
                    "<td class=num>{}/{}</td><td>{} {}</td>",
                    r.passed,
                    r.graded,
                    super::report::rate_svg(Some(r.rate), r.ci95),
                    html_escape(&interval(r.ci95))
                ),
                None => "<td>–</td><td>–</td>".into(),
            };
            let flip = match t.flip {
                Some(Flip::Improved) => "<span class=\"pass\">improved</span>",
                Some(Flip::Regressed) => "<span class=\"fail\">regressed</span>",
                None => "",
            };
            let _ = write!(
                out,
                "<tr><td>{}</td>{}{}<td class=num>{}</td><td>{flip}</td></tr>",
                html_escape(&t.task_id),
                cells(&t.a),
                cells(&t.b),
                t.diff.map(points).unwrap_or_else(|| "–".into()),
            );
        }
        out.push_str("</table></body></html>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::report::BatchMeta;
    use crate::batch::report::tests::{ep, meta, task};

    fn report(id: &str, image: &str, results: &[(&str, &[bool])]) -> Report {
        let tasks: Vec<_> = results.iter().map(|(t, _)| task(t)).collect();
        let episodes = results
            .iter()
            .flat_map(|(t, runs)| {
                runs.iter()
                    .enumerate()
                    .map(|(i, p)| ep(t, i as u32 + 1, *p, false))
            })
            .collect();
        let meta = BatchMeta {
            id: id.into(),
            repeat: 3,
            image: image.into(),
            tasks: results.len(),
            ..meta()
        };
        Report::new(meta, &tasks, episodes)
    }

    #[test]
    fn one_task_that_differs_is_the_difference_and_flips() {
        let a = report(
            "a",
            "img",
            &[
                ("t1", &[true, true, true]),
                ("t2", &[false, false, true]),
                ("t3", &[false; 3]),
            ],
        );
        let b = report(
            "b",
            "img",
            &[
                ("t1", &[true, true, true]),
                ("t2", &[true, true, true]),
                ("t3", &[false; 3]),
            ],
        );
        // Read back as `compare` reads them.
        let back = |r: &Report| -> Report {
            serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap()
        };
        let c = compare(Path::new("A"), &back(&a), Path::new("B"), &back(&b));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let t2 = &c.tasks[1];
        assert_eq!(t2.flip, Some(Flip::Improved));
        assert!((t2.diff.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(c.tasks[0].flip, None);
        let p = c.pass_rate.as_ref().unwrap();
        // Differences 0, 2/3, 0: mean 2/9.
        assert!((p.diff - 2.0 / 9.0).abs() < 1e-9, "{p:?}");
        let text = c.text();
        assert!(text.contains("t2") && text.contains("improved"), "{text}");
        assert!(text.contains("B − A = +22 points"), "{text}");
        let html = c.html();
        assert!(html.contains("<svg") && html.contains("improved"), "{html}");
    }

    #[test]
    fn different_images_and_tasks_warn() {
        let a = report("a", "img:1", &[("t1", &[true]), ("t2", &[false])]);
        let mut b = report("b", "img:2", &[("t1", &[true]), ("t9", &[true])]);
        b.batch.settings.insert("max_steps".into(), "5".into());
        let c = compare(Path::new("A"), &a, Path::new("B"), &b);
        let all = c.warnings.join("\n");
        assert!(
            all.contains("different desktop images: A img:1, B img:2"),
            "{all}"
        );
        assert!(all.contains("1 only in A, 1 only in B"), "{all}");
        assert!(all.contains("--max-steps: – vs 5"), "{all}");
        assert_eq!(
            (c.only_a.clone(), c.only_b.clone()),
            (vec!["t2".to_owned()], vec!["t9".to_owned()])
        );
        assert_eq!(c.pass_rate.unwrap().tasks, 1);
    }
}
