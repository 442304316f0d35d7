//! Error bars for batch results.
//!
//! Per task, the Wilson score interval of its pass rate over its repeats (it stays inside
//! 0–1 and is honest at 0 or all passes, where the normal approximation gives a zero width).
//! Overall, the mean over tasks (each task weighs the same, however many repeats it had)
//! with a standard error clustered by task: repeats of one task are not independent draws
//! (Miller 2024, "Adding Error Bars to Evals", the clustered standard error), so the
//! spread that counts is that of the task means,
//! `SE = sqrt(Σ_t (m_t − m̄)²) / T` for `T` tasks with means `m_t`; with equal repeats this is
//! Miller's formula over the episodes. Partial scores (OSWorld's 0–1) go the same way.

use serde::{Deserialize, Serialize};

/// The normal quantile of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score 95% interval of `passed` out of `n`; `None` for no runs.
pub fn wilson(passed: usize, n: usize) -> Option<[f64; 2]> {
    if n == 0 {
        return None;
    }
    let (n, p) = (n as f64, passed as f64 / n as f64);
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    // At none or all passed the bound is exactly 0 or 1; computed, it can miss by an ulp
    // and leave the rate outside its own interval.
    let lo = if passed == 0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let hi = if passed as f64 == n {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    Some([lo, hi])
}

/// A mean over tasks with its clustered standard error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Clustered {
    pub mean: f64,
    pub se: f64,
    pub ci95: [f64; 2],
    /// Tasks (clusters) and the episodes in them.
    pub tasks: usize,
    pub runs: usize,
}

/// The mean over tasks of each task's mean value, with the standard error clustered by
/// task; tasks without values are left out. `None` without any.
pub fn clustered(per_task: &[Vec<f64>]) -> Option<Clustered> {
    let means: Vec<f64> = per_task
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        .collect();
    if means.is_empty() {
        return None;
    }
    let t = means.len() as f64;
    let mean = means.iter().sum::<f64>() / t;
    let se = means.iter().map(|m| (m - mean).powi(2)).sum::<f64>().sqrt() / t;
    Some(Clustered {
        mean,
        se,
        ci95: [(mean - Z95 * se).max(0.0), (mean + Z95 * se).min(1.0)],
        tasks: means.len(),
        runs: per_task.iter().map(Vec::len).sum(),
    })
}

/// Two batches compared task by task: both means over the tasks they share and the mean of
/// the per-task differences, with its standard error computed like [`clustered`]'s over
/// those differences. Pairing removes the spread between tasks (easy ones pass in both), so
/// it is usually much narrower than the two intervals side by side (`unpaired_se`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Paired {
    pub a: f64,
    pub b: f64,
    /// `b − a`.
    pub diff: f64,
    pub se: f64,
    pub ci95: [f64; 2],
    /// The standard error the two means' own clustered errors would give, unpaired.
    pub unpaired_se: f64,
    pub tasks: usize,
}

impl Paired {
    /// Which side is better at 95%, `None` when the interval holds 0.
    pub fn better(&self) -> Option<char> {
        if self.ci95[0] > 0.0 {
            Some('B')
        } else if self.ci95[1] < 0.0 {
            Some('A')
        } else {
            None
        }
    }
}

/// The paired difference over `(a, b)` task means; `None` without any pair.
pub fn paired(pairs: &[(f64, f64)]) -> Option<Paired> {
    if pairs.is_empty() {
        return None;
    }
    let t = pairs.len() as f64;
    let spread = |values: &mut dyn Iterator<Item = f64>| -> (f64, f64) {
        let v: Vec<f64> = values.collect();
        let mean = v.iter().sum::<f64>() / t;
        let se = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>().sqrt() / t;
        (mean, se)
    };
    let (a, se_a) = spread(&mut pairs.iter().map(|p| p.0));
    let (b, se_b) = spread(&mut pairs.iter().map(|p| p.1));
    let (diff, se) = spread(&mut pairs.iter().map(|p| p.1 - p.0));
    Some(Paired {
        a,
        b,
        diff,
        se,
        ci95: [diff - Z95 * se, diff + Z95 * se],
        unpaired_se: (se_a * se_a + se_b * se_b).sqrt(),
        tasks: pairs.len(),
    })
}

/// Why an interval is too wide to mean much, if it is: fewer than 3 graded repeats of some
/// task, fewer than 10 tasks, or an interval wider than 30 points.
pub fn caveat(min_repeats: usize, overall: &Clustered) -> Option<String> {
    let mut why = Vec::new();
    if min_repeats < 3 {
        why.push(format!(
            "some task was graded only {min_repeats} time{} (3 or more repeats per task tell a \
             task's rate)",
            if min_repeats == 1 { "" } else { "s" }
        ));
    }
    if overall.tasks < 10 {
        why.push(format!("only {} tasks", overall.tasks));
    }
    let width = overall.ci95[1] - overall.ci95[0];
    if width > 0.30 {
        why.push(format!("the interval spans {:.0} points", width * 100.0));
    }
    (!why.is_empty()).then(|| format!("the interval is too wide to mean much: {}", why.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn wilson_matches_published_values_and_narrows_with_more_runs() {
        // 5 of 10: 0.2366–0.7634; 0 of 10: 0–0.2775 (Wilson 1927, as tabulated by Newcombe 1998).
        let [lo, hi] = wilson(5, 10).unwrap();
        assert!(close(lo, 0.2366) && close(hi, 0.7634), "{lo} {hi}");
        let [lo, hi] = wilson(0, 10).unwrap();
        assert!(close(lo, 0.0) && close(hi, 0.2775), "{lo} {hi}");
        // Exactly at the ends, so the rate is inside its interval.
        for n in 1..50 {
            assert_eq!(wilson(0, n).unwrap()[0], 0.0, "{n}");
            assert_eq!(wilson(n, n).unwrap()[1], 1.0, "{n}");
        }
        let [lo, hi] = wilson(10, 10).unwrap();
        assert!(close(lo, 0.7225) && close(hi, 1.0), "{lo} {hi}");
        assert_eq!(wilson(0, 0), None);
        let width = |n: usize| {
            let [lo, hi] = wilson(n / 2, n).unwrap();
            assert!(lo <= 0.5 && 0.5 <= hi);
            hi - lo
        };
        assert!(width(3) > width(6) && width(6) > width(30));
    }

    #[test]
    fn the_clustered_error_is_the_spread_of_task_means() {
        // By hand: task means 1, 1/3, 0 → mean 4/9; deviations 5/9, −1/9, −4/9;
        // squares 25/81 + 1/81 + 16/81 = 42/81; SE = sqrt(42/81) / 3 = 0.24003.
        let c = clustered(&[
            vec![1.0, 1.0, 1.0],
            vec![1.0, 0.0, 0.0],
            vec![0.0, 0.0, 0.0],
        ])
        .unwrap();
        assert!(close(c.mean, 4.0 / 9.0), "{c:?}");
        assert!(close(c.se, 0.240_03), "{c:?}");
        // 4/9 ∓ 1.96 × 0.24003, the lower end clipped at 0.
        assert!(
            close(c.ci95[0], 0.0) && close(c.ci95[1], 4.0 / 9.0 + Z95 * 0.240_03),
            "{c:?}"
        );
        assert_eq!((c.tasks, c.runs), (3, 9));
        // Repeats that agree within each task do not shrink it: clustering counts tasks.
        let more = clustered(&[
            vec![1.0; 30],
            vec![1.0; 10].into_iter().chain(vec![0.0; 20]).collect(),
            vec![0.0; 30],
        ])
        .unwrap();
        assert!(close(more.se, c.se), "{more:?}");
        // The same numbers treated as independent would claim a much narrower interval.
        let flat = (0.2469f64 / 9.0).sqrt();
        assert!(c.se > flat * 1.4, "{} vs {flat}", c.se);
        // Partial scores, and tasks with nothing graded left out.
        let s = clustered(&[vec![0.5, 0.7], vec![], vec![0.2]]).unwrap();
        assert!(close(s.mean, 0.4) && s.tasks == 2, "{s:?}");
        assert_eq!(clustered(&[vec![]]), None);
    }

    #[test]
    fn the_paired_difference_is_the_spread_of_per_task_differences() {
        // By hand: differences 0, 1, 0, −0.5 → mean 0.125; deviations −0.125, 0.875,
        // −0.125, −0.625; squares sum 0.015625 + 0.765625 + 0.015625 + 0.390625 = 1.1875;
        // SE = sqrt(1.1875) / 4 = 0.272431.
        let p = paired(&[(1.0, 1.0), (0.0, 1.0), (0.5, 0.5), (1.0, 0.5)]).unwrap();
        assert!(
            close(p.a, 0.625) && close(p.b, 0.75) && close(p.diff, 0.125),
            "{p:?}"
        );
        assert!(close(p.se, 0.272_431), "{p:?}");
        assert!(close(p.ci95[0], 0.125 - Z95 * 0.272_431), "{p:?}");
        assert_eq!(p.better(), None);
        // Tasks that move together: pairing sees the shift that the two intervals hide.
        let shifted: Vec<(f64, f64)> = (0..10)
            .map(|i| {
                let a = f64::from(i) / 10.0;
                (a * 0.8, a * 0.8 + 0.2)
            })
            .collect();
        let p = paired(&shifted).unwrap();
        assert!(close(p.diff, 0.2) && close(p.se, 0.0), "{p:?}");
        assert!(p.unpaired_se > 0.1, "{p:?}");
        assert_eq!(p.better(), Some('B'));
        assert_eq!(paired(&[]), None);
    }

    #[test]
    fn a_thin_batch_says_so() {
        let c = clustered(&[vec![1.0], vec![0.0]]).unwrap();
        let why = caveat(1, &c).unwrap();
        assert!(
            why.contains("only 1 time") && why.contains("only 2 tasks"),
            "{why}"
        );
        let solid = Clustered {
            mean: 0.5,
            se: 0.02,
            ci95: [0.46, 0.54],
            tasks: 40,
            runs: 200,
        };
        assert_eq!(caveat(5, &solid), None);
    }
}
