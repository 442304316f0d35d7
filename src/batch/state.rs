//! A batch's state on disk, kept from its first moment so that a batch cut short (a crash,
//! SIGKILL, a reboot) can be finished with `batch --resume DIR`.
//!
//! `batch.json` holds the run's whole configuration: the flags as resolved when it started
//! (task paths made absolute, environment defaults filled in), the episode list and each
//! task's digest. No field holds a secret: keys are read from the environment by variable
//! name, and the resumed batch reads them again. `episodes.jsonl` is an append-only log: a
//! `segment` line each time the batch (re)starts, `started` when an episode gets its session
//! id, `retried` when a harness error is retried, `finished` with the episode's report line.
//! Appends are single `write` calls on an `O_APPEND` file, so a killed process leaves at most
//! one torn last line, which [`load`] skips.

use super::BatchArgs;
use super::report::{Calibrated, EpisodeReport, HarnessRetry};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const CONFIG: &str = "batch.json";
pub const LOG: &str = "episodes.jsonl";
pub const VERSION: u32 = 1;

/// `batch.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    pub version: u32,
    pub id: String,
    pub started_at_ms: i64,
    pub args: BatchArgs,
    /// The episodes in order: (task id, repeat); an episode's number is its index.
    pub jobs: Vec<(String, u32)>,
    pub task_digests: BTreeMap<String, String>,
    /// The calibration run before the first episode (not run again on resume).
    #[serde(default)]
    pub calibration: Option<Calibrated>,
}

/// One line of `episodes.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line {
    Segment {
        at_ms: i64,
        pid: u32,
    },
    Started {
        n: usize,
        task_id: String,
        repeat: u32,
        session: String,
        at_ms: i64,
    },
    Retried {
        n: usize,
        retry: HarnessRetry,
    },
    Finished {
        n: usize,
        at_ms: i64,
        episode: Box<EpisodeReport>,
    },
}

/// The append-only log, shared by the workers and the collector.
pub struct Log {
    file: Mutex<std::fs::File>,
    path: PathBuf,
}

impl Log {
    /// Opens `dir/episodes.jsonl` for appending; `fresh` empties it first. A torn last line
    /// (the process was killed mid-write) is cut off, so the next line starts clean.
    pub fn open(dir: &Path, fresh: bool) -> anyhow::Result<Self> {
        let path = dir.join(LOG);
        let context = || format!("opening the batch's state {}", path.display());
        if fresh {
            std::fs::write(&path, "").with_context(context)?;
        } else if let Ok(bytes) = std::fs::read(&path) {
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            if keep < bytes.len() {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(keep as u64))
                    .with_context(context)?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(context)?;
        Ok(Self {
            file: Mutex::new(file),
            path,
        })
    }

    /// Appends one line in one write. A failure is reported, not fatal: the batch goes on,
    /// it can only not be resumed as exactly.
    pub fn append(&self, line: &Line) {
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        let written = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(
                "could not write the batch state {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Writes `batch.json`.
pub fn save(dir: &Path, saved: &Saved) -> anyhow::Result<()> {
    let path = dir.join(CONFIG);
    let text = serde_json::to_string_pretty(saved)? + "\n";
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// What a batch directory says about the batch that ran there.
#[derive(Debug)]
pub struct Loaded {
    pub saved: Saved,
    /// Graded episodes by number: kept as they are.
    pub finished: BTreeMap<usize, EpisodeReport>,
    /// Episodes cut short (started, never finished) or stopped by the user, by number:
    /// their last session. Run again.
    pub cut: BTreeMap<usize, String>,
    /// Harness errors already retried, by episode number.
    pub retries: BTreeMap<usize, Vec<HarnessRetry>>,
    /// The wall time of the earlier segments (each from its start to its last line).
    pub wall_ms: u64,
    /// How many times it ran before.
    pub segments: u32,
}

/// Reads `dir/batch.json` and `dir/episodes.jsonl`.
pub fn load(dir: &Path) -> anyhow::Result<Loaded> {
    let config = dir.join(CONFIG);
    let text = std::fs::read_to_string(&config).with_context(|| {
        format!(
            "{} holds no batch to resume (no {CONFIG}: batches write it from their start)",
            dir.display()
        )
    })?;
    let saved: Saved = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a batch configuration", config.display()))?;
    if saved.version != VERSION {
        bail!(
            "{} is of version {} (this selfagent reads {VERSION})",
            config.display(),
            saved.version
        );
    }
    let log = dir.join(LOG);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut loaded = Loaded {
        saved,
        finished: BTreeMap::new(),
        cut: BTreeMap::new(),
        retries: BTreeMap::new(),
        wall_ms: 0,
        segments: 0,
    };
    let mut segment: Option<(i64, i64)> = None;
    let lines: Vec<&str> = text.lines().collect();
    for (i, raw) in lines.iter().enumerate() {
        let line: Line = match serde_json::from_str(raw) {
            Ok(l) => l,
            // The last line may be torn by the kill.
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => bail!(
                "{} line {} is not a batch state line: {e}",
                log.display(),
                i + 1
            ),
        };
        let at = match &line {
            Line::Segment { at_ms, .. }
            | Line::Started { at_ms, .. }
            | Line::Finished { at_ms, .. } => Some(*at_ms),
            Line::Retried { .. } => None,
        };
        match line {
            Line::Segment { at_ms, .. } => {
                if let Some((start, last)) = segment.take() {
                    loaded.wall_ms += last.saturating_sub(start).max(0) as u64;
                }
                segment = Some((at_ms, at_ms));
                loaded.segments += 1;
            }
            Line::Started { n, session, .. } => {
                loaded.cut.insert(n, session);
            }
            Line::Retried { n, retry } => loaded.retries.entry(n).or_default().push(retry),
            // Only a graded episode is done. One stopped by the user (Ctrl-C) is run again
            // like one cut short; one lost to the harness after its retries gets another
            // go, its attempts kept with the retried ones.
            Line::Finished { n, episode, .. } => {
                loaded.cut.remove(&n);
                loaded.finished.remove(&n);
                if episode.graded() {
                    loaded.finished.insert(n, *episode);
                } else if let Some(error) = &episode.harness_error {
                    let retries = loaded.retries.entry(n).or_default();
                    *retries = episode.harness_retries.clone();
                    retries.push(HarnessRetry {
                        session_id: episode.session_id.clone(),
                        error: error.clone(),
                    });
                } else {
                    loaded.cut.insert(n, episode.session_id.clone());
                }
            }
        }
        if let (Some(at), Some((_, last))) = (at, segment.as_mut()) {
            *last = (*last).max(at);
        }
    }
    if let Some((start, last)) = segment {
        loaded.wall_ms += last.saturating_sub(start).max(0) as u64;
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episode(task: &str, repeat: u32) -> EpisodeReport {
        serde_json::from_value(serde_json::json!({
            "task_id": task, "repeat": repeat, "session_id": format!("s-{task}-{repeat}"),
            "passed": true, "score": 1.0, "status": "succeeded", "ended_by": "model",
            "harness_error": null, "steps": 2, "wall_ms": 10, "tokens_in": 1, "tokens_out": 1,
            "answer": null, "error": null, "grade": null
        }))
        .unwrap()
    }

    #[test]
    fn a_log_cut_mid_line_reads_back_what_finished_and_what_was_cut() {
        let dir = tempfile::tempdir().unwrap();
        let args = BatchArgs::parse_from(["t.toml"]).unwrap();
        save(
            dir.path(),
            &Saved {
                version: VERSION,
                id: "b1".into(),
                started_at_ms: 1000,
                args,
                jobs: vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)],
                task_digests: BTreeMap::new(),
                calibration: None,
            },
        )
        .unwrap();
        let log = Log::open(dir.path(), true).unwrap();
        log.append(&Line::Segment {
            at_ms: 1000,
            pid: 1,
        });
        for (n, t) in ["a", "b", "c"].iter().enumerate() {
            log.append(&Line::Started {
                n,
                task_id: (*t).into(),
                repeat: 1,
                session: format!("s-{t}"),
                at_ms: 1000 + n as i64,
            });
        }
        log.append(&Line::Retried {
            n: 2,
            retry: HarnessRetry {
                session_id: "s-c0".into(),
                error: "desktop died".into(),
            },
        });
        log.append(&Line::Finished {
            n: 0,
            at_ms: 5000,
            episode: Box::new(episode("a", 1)),
        });
        drop(log);
        // The kill tore the last line.
        let path = dir.path().join(LOG);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"event\":\"finished\",\"n\":1,\"at_m");
        std::fs::write(&path, text).unwrap();

        let l = load(dir.path()).unwrap();
        assert_eq!(l.finished.keys().copied().collect::<Vec<_>>(), vec![0]);
        assert_eq!(
            l.cut.into_iter().collect::<Vec<_>>(),
            vec![(1, "s-b".to_owned()), (2, "s-c".to_owned())]
        );
        assert_eq!(l.retries[&2][0].error, "desktop died");
        assert_eq!((l.wall_ms, l.segments), (4000, 1));
        assert_eq!(l.saved.jobs.len(), 3);

        // A second segment adds its own span; a bad line inside the log is an error.
        let log = Log::open(dir.path(), false).unwrap();
        log.append(&Line::Segment {
            at_ms: 9000,
            pid: 2,
        });
        log.append(&Line::Finished {
            n: 1,
            at_ms: 9500,
            episode: Box::new(episode("b", 1)),
        });
        drop(log);
        let l = load(dir.path()).unwrap();
        assert_eq!((l.wall_ms, l.segments), (4500, 2));
        assert!(l.finished.contains_key(&1) && !l.cut.contains_key(&1));

        // Stopped by the user: run again; lost to the harness: run again, its attempt kept.
        let log = Log::open(dir.path(), false).unwrap();
        let mut stopped = episode("c", 1);
        (stopped.status, stopped.ended_by, stopped.session_id) =
            ("stopped".into(), "user".into(), "s-c-stopped".into());
        log.append(&Line::Finished {
            n: 2,
            at_ms: 9600,
            episode: Box::new(stopped),
        });
        let mut lost = episode("a", 1);
        (lost.harness_error, lost.session_id) = (Some("engine gone".into()), "s-a-lost".into());
        log.append(&Line::Finished {
            n: 0,
            at_ms: 9700,
            episode: Box::new(lost),
        });
        drop(log);
        let l = load(dir.path()).unwrap();
        assert_eq!(l.finished.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(l.cut.get(&2).map(String::as_str), Some("s-c-stopped"));
        assert_eq!(l.retries[&0][0].error, "engine gone");
        assert!(!l.cut.contains_key(&0));
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"segment\"", "\"nonsense\"");
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(err.contains("line 1 is not a batch state line"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = format!("{:#}", load(empty.path()).unwrap_err());
        assert!(err.contains("holds no batch to resume"), "{err}");
    }
}
