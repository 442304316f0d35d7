//! Grading: a task's checks evaluated against evidence of the desktop's final state.
//!
//! [`Evidence`] answers the questions checks ask (run a command, read a file, list the
//! windows, ask a judge). Three kinds answer them:
//! - [`SandboxEvidence`] on a live desktop at the end of an episode, or on an inspector
//!   container started from the episode's snapshot image when re-grading;
//! - [`StoredEvidence`] from the [`FinalState`] recorded at the end of the episode (what the
//!   checks of that time read), when there is no snapshot image;
//! - [`Recorded`] wraps either, runs each distinct command or file read once, and keeps
//!   what it saw as the [`FinalState`] to store.
//!
//! A check that cannot be evaluated (the desktop is gone, a command was never recorded, the
//! judge's reply is unusable) is an *error*, not a failure: grading errors belong to the
//! harness, never to the agent.

use super::{Check, CheckKind};
use crate::desktop::Window;
use crate::model::protocol::{self, ProtocolName};
use crate::model::{HttpModel, Model};
use crate::sandbox::{ExecOptions, FileStat, Sandbox, SandboxError};
use base64::Engine as _;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a check's command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Files larger than this are not kept in the recorded final state (the snapshot has them).
const MAX_STORED_FILE: usize = 4 << 20;
/// The most a file check reads: a larger file (an agent can make a sparse file of any
/// size) is an error for checks of its content, and is never read into memory.
pub const MAX_CHECK_READ: u64 = 16 << 20;
/// Screenshots the judge sees: the first one and the last few.
const JUDGE_FRAMES: usize = 4;
/// The embedded judge prompt (prompts/judge.md).
const JUDGE_PROMPT: &str = include_str!("../../prompts/judge.md");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    Failed,
    /// Could not be evaluated.
    Error,
}

impl Verdict {
    /// `✓`, `✗` or `!`, as listings of checks show it.
    pub fn mark(self) -> &'static str {
        match self {
            Verdict::Passed => "✓",
            Verdict::Failed => "✗",
            Verdict::Error => "!",
        }
    }
}

/// The result of one check (and of its children, for `all`, `any` and `not`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check, in words.
    pub check: String,
    pub verdict: Verdict,
    /// 0 to 1: 1 or 0 for a leaf, the weighted mean (`all`) or best child (`any`).
    pub score: f64,
    pub weight: f64,
    /// What was seen, or why it could not be evaluated.
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<CheckResult>,
}

impl CheckResult {
    fn leaf(check: String, weight: f64, outcome: Result<(bool, String), String>) -> Self {
        let (verdict, score, detail) = match outcome {
            Ok((true, d)) => (Verdict::Passed, 1.0, d),
            Ok((false, d)) => (Verdict::Failed, 0.0, d),
            Err(e) => (Verdict::Error, 0.0, e),
        };
        Self {
            check,
            verdict,
            score,
            weight,
            detail,
            children: Vec::new(),
        }
    }

    /// The first error in the tree, for reports.
    pub fn first_error(&self) -> Option<String> {
        if self.verdict != Verdict::Error {
            return None;
        }
        self.children
            .iter()
            .find_map(CheckResult::first_error)
            .or_else(|| Some(format!("{}: {}", self.check, self.detail)))
    }

    /// Leaf checks and their verdicts, depth first, for one-line summaries.
    pub fn leaves(&self) -> Vec<&CheckResult> {
        if self.check == "all" || self.check == "any" {
            self.children.iter().flat_map(CheckResult::leaves).collect()
        } else {
            vec![self]
        }
    }
}

/// The grade of one episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    pub task_id: String,
    /// `None` when the checks could not be evaluated (a harness error).
    pub passed: Option<bool>,
    pub score: f64,
    /// Where the answers came from: `live`, `snapshot <image>` or `recorded`.
    pub evidence: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CheckResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The task's checks as they were applied (to tell a re-grade's checks apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Check>,
}

impl Grade {
    /// A grade that could not be made.
    pub fn error(task_id: &str, evidence: &str, error: String) -> Self {
        Self {
            task_id: task_id.to_owned(),
            passed: None,
            score: 0.0,
            evidence: evidence.to_owned(),
            result: None,
            error: Some(error),
            checks: None,
        }
    }

    /// `passed`, `FAILED`, or `error`, with the score.
    pub fn summary(&self) -> String {
        match self.passed {
            Some(true) => format!("passed (score {:.2})", self.score),
            Some(false) => format!("FAILED (score {:.2})", self.score),
            None => format!(
                "not graded: {}",
                self.error.as_deref().unwrap_or("grading error")
            ),
        }
    }
}

/// A command's result as a check saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub timed_out: bool,
}

/// A file as a check saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFile {
    pub exists: bool,
    pub bytes: u64,
    /// The content, unless the file was larger than the store keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// What the checks read at the end of an episode, kept with the recording so they can be
/// evaluated again without the desktop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    /// The snapshot image, when one was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Why no snapshot was committed, when one was wanted (too large, the commit failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_skipped: Option<String>,
    /// The windows when the episode ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<Window>>,
    /// By absolute path.
    #[serde(default)]
    pub files: BTreeMap<String, StoredFile>,
    /// By command line.
    #[serde(default)]
    pub commands: BTreeMap<String, CommandOutput>,
    /// Whether the agent gave up (declared the task infeasible), for OSWorld's checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<bool>,
}

/// A file as a check sees it: its size, and its bytes when they were asked for and it is
/// not larger than [`MAX_CHECK_READ`].
#[derive(Debug, Clone, PartialEq)]
pub struct FileSeen {
    pub size: u64,
    pub data: Option<Vec<u8>>,
}

/// A judge's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeVerdict {
    pub passed: bool,
    pub reason: String,
}

/// Answers to the questions checks ask. Errors are messages for the grade's details.
pub trait Evidence: Sync {
    fn command(&self, command: &str) -> impl Future<Output = Result<CommandOutput, String>> + Send;
    /// The file, `None` if it does not exist; its bytes only when `read` (and not too large).
    fn file(
        &self,
        path: &str,
        read: bool,
    ) -> impl Future<Output = Result<Option<FileSeen>, String>> + Send;
    fn windows(&self) -> impl Future<Output = Result<Vec<Window>, String>> + Send;
    fn judge(&self, question: &str) -> impl Future<Output = Result<JudgeVerdict, String>> + Send;
    /// Runs OSWorld's evaluator in the desktop (see [`osworld_request`]): its reply,
    /// `{"score": ..}` or `{"error": ..}`.
    fn osworld(&self, request: &Value) -> impl Future<Output = Result<Value, String>> + Send;
    /// Whether the agent gave up on the task (OSWorld's `FAIL`), when known.
    fn gave_up(&self) -> Option<bool>;
}

/// Where the office image keeps OSWorld's evaluator, and how it is run: as root (files are
/// read as the desktop's user by the evaluator itself), isolated from the user's site
/// packages and environment, so the agent can neither change nor shadow it.
pub const OSWORLD_EVALUATE: &[&str] = &[
    "/opt/osworld/bin/python",
    "-I",
    "/opt/selfagent/osworld/evaluate.py",
];
/// How long OSWorld's evaluator may take (some metrics render or compare media).
pub const OSWORLD_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest expected file sent to the evaluator.
const MAX_EXPECTED_FILE: u64 = 64 << 20;

/// Whether an episode's end means the agent gave up, as OSWorld counts it: it called
/// `fail` (or `call_user`, where the protocol has no fail), or answered that the task is
/// infeasible.
pub fn agent_gave_up(status: &str, answer: Option<&str>) -> bool {
    match status {
        "failed" | "needs_user" => true,
        "succeeded" => answer.is_some_and(|a| a.to_ascii_lowercase().contains("infeasible")),
        _ => false,
    }
}

/// The request the office image's evaluator reads: the evaluator, and the expected files
/// (read here, from the import cache).
pub fn osworld_request(
    evaluator: &Value,
    files: &BTreeMap<String, String>,
) -> Result<Value, String> {
    let mut sent = serde_json::Map::new();
    for (name, path) in files {
        let meta = std::fs::metadata(path).map_err(|e| {
            format!(
                "the expected file {name} is not in the import cache ({path}: {e}); import the task again with `selfagent tasks import-osworld --fetch`"
            )
        })?;
        if meta.len() > MAX_EXPECTED_FILE {
            return Err(format!(
                "the expected file {path} is larger than {MAX_EXPECTED_FILE} bytes"
            ));
        }
        let data = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        sent.insert(
            name.clone(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
        );
    }
    Ok(serde_json::json!({ "evaluator": evaluator, "files": sent }))
}

/// An OSWorld check: infeasible tasks pass when the agent gave up; feasible ones score 0
/// then (as OSWorld's harness does), else what OSWorld's metrics say.
async fn osworld_outcome<E: Evidence>(
    evaluator: &Value,
    files: &BTreeMap<String, String>,
    evidence: &E,
) -> Result<(f64, String), String> {
    let funcs = super::osworld_funcs(evaluator)?;
    let gave_up = evidence.gave_up();
    if funcs == ["infeasible"] {
        return match gave_up {
            Some(true) => Ok((1.0, "the agent declared the task infeasible".into())),
            Some(false) => Ok((0.0, "the agent did not declare the task infeasible".into())),
            None => Err("how the agent ended is not known".into()),
        };
    }
    if gave_up == Some(true) {
        return Ok((0.0, "the agent declared a feasible task infeasible".into()));
    }
    let request = osworld_request(evaluator, files)?;
    let reply = evidence.osworld(&request).await?;
    if let Some(e) = reply["error"].as_str() {
        return Err(format!("OSWorld's evaluator raised {e}"));
    }
    let score = reply["score"]
        .as_f64()
        .filter(|s| s.is_finite())
        .ok_or_else(|| {
            format!(
                "OSWorld's evaluator gave no score: {}",
                excerpt(&reply.to_string())
            )
        })?;
    let details = reply["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| format!("{} {}", x["func"].as_str().unwrap_or("?"), x["score"]))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    Ok((score.clamp(0.0, 1.0), format!("score {score}: {details}")))
}

/// Evaluates `check` (and its children) against `evidence`.
pub fn evaluate<'a, E: Evidence>(
    check: &'a Check,
    evidence: &'a E,
) -> Pin<Box<dyn Future<Output = CheckResult> + Send + 'a>> {
    Box::pin(async move {
        let w = check.weight;
        match &check.kind {
            CheckKind::Command {
                command,
                exit_code,
                stdout,
                stderr,
            } => {
                let what = describe(&check.kind);
                let outcome = evidence.command(command).await.map(|out| {
                    let mut problems = Vec::new();
                    if out.timed_out {
                        problems.push(format!("timed out after {} s", COMMAND_TIMEOUT.as_secs()));
                    }
                    if let Some(code) = exit_code
                        && out.exit_code != *code
                    {
                        problems.push(format!("exit code {} (wanted {code})", out.exit_code));
                    }
                    for (name, want, got) in [
                        ("stdout", stdout, &out.stdout),
                        ("stderr", stderr, &out.stderr),
                    ] {
                        // Like the shell's $(...): without the final newline, so that
                        // `^1$` matches what `wc -l` prints.
                        let got = got.strip_suffix('\n').unwrap_or(got);
                        let got = got.strip_suffix('\r').unwrap_or(got);
                        if let Some(re) = want
                            && !regex_matches(re, got)
                        {
                            problems.push(format!("{name} does not match /{re}/"));
                        }
                    }
                    let seen = format!(
                        "exit {}; stdout: {}; stderr: {}",
                        out.exit_code,
                        excerpt(&out.stdout),
                        excerpt(&out.stderr)
                    );
                    judged(&problems, seen)
                });
                CheckResult::leaf(what, w, outcome)
            }
            CheckKind::File {
                path,
                exists,
                contains,
                equals,
                matches,
            } => {
                let what = describe(&check.kind);
                let read = contains.is_some() || equals.is_some() || matches.is_some();
                let outcome = evidence.file(path, read).await.and_then(|seen| match (seen, exists) {
                    (None, false) => Ok((true, "does not exist".to_owned())),
                    (None, true) => Ok((false, "does not exist".to_owned())),
                    (Some(f), false) => Ok((false, format!("exists ({} bytes)", f.size))),
                    (Some(f), true) if !read => Ok((true, format!("exists ({} bytes)", f.size))),
                    (Some(FileSeen { size, data: None }), true) => match equals {
                        // Far longer than the expected text: not equal, whatever it holds.
                        Some(e) if size > e.len() as u64 + 2 && contains.is_none() && matches.is_none() => {
                            Ok((false, format!("is not {} ({size} bytes)", excerpt(e))))
                        }
                        _ => Err(format!(
                            "the file is {size} bytes; checks read at most {MAX_CHECK_READ} bytes"
                        )),
                    },
                    (Some(FileSeen { data: Some(d), .. }), true) => {
                        let text = String::from_utf8_lossy(&d);
                        let mut problems = Vec::new();
                        if let Some(c) = contains
                            && !text.contains(c.as_str())
                        {
                            problems.push(format!("does not contain {c:?}"));
                        }
                        if let Some(e) = equals
                            && trim_newlines(&text) != trim_newlines(e)
                        {
                            problems.push(format!("is not {}", excerpt(e)));
                        }
                        if let Some(re) = matches
                            && !regex_matches(re, &text)
                        {
                            problems.push(format!("does not match /{re}/"));
                        }
                        let seen = format!("{} bytes: {}", d.len(), excerpt(&text));
                        Ok(judged(&problems, seen))
                    }
                });
                CheckResult::leaf(what, w, outcome)
            }
            CheckKind::Window {
                title,
                class,
                present,
            } => {
                let what = describe(&check.kind);
                let outcome = evidence.windows().await.map(|windows| {
                    let found = windows
                        .iter()
                        .find(|win| window_matches(title.as_deref(), class.as_deref(), win));
                    let listed = windows
                        .iter()
                        .map(|w| format!("{:?} ({})", w.title, w.class))
                        .collect::<Vec<_>>()
                        .join(", ");
                    match found {
                        Some(win) => (*present, format!("found {:?}", win.title)),
                        None => (
                            !*present,
                            format!(
                                "windows: {}",
                                if listed.is_empty() {
                                    "none".into()
                                } else {
                                    listed
                                }
                            ),
                        ),
                    }
                });
                CheckResult::leaf(what, w, outcome)
            }
            CheckKind::Judge { question } => {
                let outcome = evidence.judge(question).await.map(|v| (v.passed, v.reason));
                CheckResult::leaf(describe(&check.kind), w, outcome)
            }
            CheckKind::Osworld { evaluator, files } => {
                let outcome = osworld_outcome(evaluator, files, evidence).await;
                let score = outcome.as_ref().map_or(0.0, |(s, _)| *s);
                let mut r = CheckResult::leaf(
                    describe(&check.kind),
                    w,
                    outcome.map(|(s, d)| (s >= 1.0, d)),
                );
                // OSWorld's partial scores count as they are; passing needs a full score.
                r.score = score;
                r
            }
            CheckKind::Not(inner) => {
                let child = evaluate(inner, evidence).await;
                let verdict = match child.verdict {
                    Verdict::Passed => Verdict::Failed,
                    Verdict::Failed => Verdict::Passed,
                    Verdict::Error => Verdict::Error,
                };
                CheckResult {
                    check: format!("not ({})", child.check),
                    verdict,
                    score: if verdict == Verdict::Passed { 1.0 } else { 0.0 },
                    weight: w,
                    detail: child.detail.clone(),
                    children: vec![child],
                }
            }
            CheckKind::All(children) | CheckKind::Any(children) => {
                let all = matches!(check.kind, CheckKind::All(_));
                let mut results = Vec::with_capacity(children.len());
                for c in children {
                    results.push(evaluate(c, evidence).await);
                }
                let has = |v: Verdict| results.iter().any(|r| r.verdict == v);
                let verdict = if all {
                    // One failure decides `all`; an error leaves it open otherwise.
                    if has(Verdict::Failed) {
                        Verdict::Failed
                    } else if has(Verdict::Error) {
                        Verdict::Error
                    } else {
                        Verdict::Passed
                    }
                } else if has(Verdict::Passed) {
                    Verdict::Passed
                } else if has(Verdict::Error) {
                    Verdict::Error
                } else {
                    Verdict::Failed
                };
                let score = if all {
                    let total: f64 = results.iter().map(|r| r.weight).sum();
                    if total > 0.0 {
                        results.iter().map(|r| r.score * r.weight).sum::<f64>() / total
                    } else {
                        f64::from(u8::from(verdict == Verdict::Passed))
                    }
                } else {
                    results.iter().map(|r| r.score).fold(0.0, f64::max)
                };
                let passed = results
                    .iter()
                    .filter(|r| r.verdict == Verdict::Passed)
                    .count();
                CheckResult {
                    check: if all { "all" } else { "any" }.into(),
                    verdict,
                    score,
                    weight: w,
                    detail: format!("{passed} of {} passed", results.len()),
                    children: results,
                }
            }
        }
    })
}

/// Grades with `check` against `evidence`.
pub async fn grade<E: Evidence>(task_id: &str, check: &Check, evidence: &E, source: &str) -> Grade {
    let result = evaluate(check, evidence).await;
    let (passed, error) = match result.verdict {
        Verdict::Passed => (Some(true), None),
        Verdict::Failed => (Some(false), None),
        Verdict::Error => (None, result.first_error()),
    };
    Grade {
        task_id: task_id.to_owned(),
        passed,
        score: result.score,
        evidence: source.to_owned(),
        result: Some(result),
        error,
        checks: Some(check.clone()),
    }
}

/// Passed when nothing is wrong; the detail says what was seen, after what is wrong.
fn judged(problems: &[String], seen: String) -> (bool, String) {
    if problems.is_empty() {
        (true, seen)
    } else {
        (false, format!("{} ({seen})", problems.join(", ")))
    }
}

/// A check in words.
pub fn describe(kind: &CheckKind) -> String {
    match kind {
        CheckKind::Osworld { evaluator, .. } => {
            let funcs = super::osworld_funcs(evaluator)
                .unwrap_or_default()
                .join(", ");
            let getters: Vec<String> = match &evaluator["result"] {
                Value::Array(a) => a.clone(),
                other => vec![other.clone()],
            }
            .iter()
            .filter_map(|r| r["type"].as_str().map(str::to_owned))
            .collect();
            if getters.is_empty() {
                format!("OSWorld {funcs}")
            } else {
                format!("OSWorld {funcs} on {}", getters.join(", "))
            }
        }
        CheckKind::Command {
            command,
            exit_code,
            stdout,
            stderr,
        } => {
            let mut parts = vec![format!("`{command}`")];
            if let Some(c) = exit_code {
                parts.push(format!("exits {c}"));
            }
            if let Some(s) = stdout {
                parts.push(format!("stdout /{s}/"));
            }
            if let Some(s) = stderr {
                parts.push(format!("stderr /{s}/"));
            }
            parts.join(", ")
        }
        CheckKind::File {
            path,
            exists,
            contains,
            equals,
            matches,
        } => {
            if !exists {
                return format!("{path} does not exist");
            }
            let mut parts = vec![format!("{path} exists")];
            if let Some(c) = contains {
                parts.push(format!("contains {c:?}"));
            }
            if let Some(e) = equals {
                parts.push(format!("equals {}", excerpt(e)));
            }
            if let Some(m) = matches {
                parts.push(format!("matches /{m}/"));
            }
            parts.join(", ")
        }
        CheckKind::Window {
            title,
            class,
            present,
        } => {
            let mut what = Vec::new();
            if let Some(t) = title {
                what.push(format!("title /{t}/"));
            }
            if let Some(c) = class {
                what.push(format!("class /{c}/"));
            }
            format!(
                "a window with {} is {}",
                what.join(" and "),
                if *present { "open" } else { "not open" }
            )
        }
        CheckKind::Judge { question } => format!("judge: {question}"),
        CheckKind::Not(_) => "not".into(),
        CheckKind::All(_) => "all".into(),
        CheckKind::Any(_) => "any".into(),
    }
}

/// Whether `win` is the window a `window` check with `title` and `class` looks for.
pub fn window_matches(title: Option<&str>, class: Option<&str>, win: &Window) -> bool {
    title.is_none_or(|re| regex_matches(re, &win.title))
        && class.is_none_or(|re| regex_matches(re, &win.class) || regex_matches(re, &win.instance))
}

/// The windows a check expects to be open (`window` checks with `present`, outside `not`).
pub fn expected_windows(check: &Check) -> Vec<(Option<&str>, Option<&str>)> {
    match &check.kind {
        CheckKind::Window {
            title,
            class,
            present: true,
        } => vec![(title.as_deref(), class.as_deref())],
        CheckKind::All(list) | CheckKind::Any(list) => {
            list.iter().flat_map(expected_windows).collect()
        }
        _ => Vec::new(),
    }
}

fn regex_matches(re: &str, text: &str) -> bool {
    // Task files are validated when loaded; a pattern that still fails matches nothing.
    Regex::new(re).is_ok_and(|r| r.is_match(text))
}

fn trim_newlines(s: &str) -> &str {
    s.trim_end_matches(['\n', '\r'])
}

/// The start of a text, on one line, for details.
pub fn excerpt(s: &str) -> String {
    const MAX: usize = 120;
    let one_line = s.trim_end().replace('\n', "⏎");
    let cut = crate::text::cut(&one_line, MAX + 1);
    // The ellipsis outside the quotes: the quoted text is the file's own.
    match cut.strip_suffix('…') {
        Some(kept) if cut != one_line => format!("{kept:?}…"),
        _ => format!("{one_line:?}"),
    }
}

/// Screenshots and the instruction, for a judge: a model asked through the same protocol
/// seam as the agent (its own wire format).
pub struct Judge {
    pub model: Arc<HttpModel>,
    pub protocol: ProtocolName,
    pub instruction: String,
    /// PNGs of the episode, in order.
    pub frames: Vec<Arc<Vec<u8>>>,
    /// A directory overriding the embedded prompts (`judge.md`).
    pub prompts: Option<std::path::PathBuf>,
}

impl Judge {
    /// The request to the judge: the prompt, the instruction, the question, and the first
    /// and last screenshots of the episode.
    pub fn request(&self, question: &str) -> Result<crate::model::ModelRequest, String> {
        let template = match self.prompts.as_ref().map(|d| d.join("judge.md")) {
            Some(p) if p.exists() => {
                std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))?
            }
            _ => JUDGE_PROMPT.to_owned(),
        };
        let n = self.frames.len();
        let picked: Vec<usize> = if n <= JUDGE_FRAMES {
            (0..n).collect()
        } else {
            std::iter::once(0)
                .chain(n - (JUDGE_FRAMES - 1)..n)
                .collect()
        };
        if picked.is_empty() {
            return Err("the episode has no screenshots to judge".into());
        }
        let text = format!(
            "Task given to the agent:\n{}\n\nQuestion:\n{question}\n\n{} screenshot(s) follow, oldest first (screenshots {} of {n}).",
            self.instruction,
            picked.len(),
            picked
                .iter()
                .map(|i| (i + 1).to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
        let pngs: Vec<Arc<Vec<u8>>> = picked.iter().map(|i| self.frames[*i].clone()).collect();
        let cfg = protocol::ProtocolConfig::for_model(self.protocol, &self.model.config().model);
        Ok(protocol::question(&cfg, &template, &text, &pngs))
    }

    pub async fn ask(&self, question: &str) -> Result<JudgeVerdict, String> {
        let request = self.request(question)?;
        let kind = self.protocol;
        let check = move |raw: &Value| {
            protocol::answer_text(kind, raw)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let raw = self
            .model
            .send(&request, &check, &|_| {})
            .await
            .map_err(|e| format!("the judge model: {e}"))?;
        parse_verdict(&protocol::answer_text(kind, &raw.body).map_err(|e| e.to_string())?)
    }
}

/// Reads `{"passed": true|false, "reason": "..."}` from a judge's reply (the first JSON
/// object in it, fenced or not).
pub fn parse_verdict(text: &str) -> Result<JudgeVerdict, String> {
    let bad = || {
        format!(
            "the judge did not answer with {{\"passed\": true|false, \"reason\": ...}}: {}",
            excerpt(text)
        )
    };
    let start = text.find('{').ok_or_else(bad)?;
    let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
    let v = stream.next().and_then(Result::ok).ok_or_else(bad)?;
    let passed = match &v["passed"] {
        Value::Bool(b) => *b,
        Value::String(s)
            if ["true", "yes", "pass", "passed"].contains(&s.to_ascii_lowercase().as_str()) =>
        {
            true
        }
        Value::String(s)
            if ["false", "no", "fail", "failed"].contains(&s.to_ascii_lowercase().as_str()) =>
        {
            false
        }
        _ => return Err(bad()),
    };
    Ok(JudgeVerdict {
        passed,
        reason: v["reason"].as_str().unwrap_or_default().to_owned(),
    })
}

/// Evidence from a running container: the live desktop, or an inspector started from a
/// snapshot (then `windows` are the recorded ones).
pub struct SandboxEvidence {
    pub sandbox: Sandbox,
    pub windows: Result<Vec<Window>, String>,
    pub judge: Option<Judge>,
    /// Whether the agent gave up (see [`agent_gave_up`]).
    pub gave_up: Option<bool>,
    /// An inspector started from a snapshot (no capabilities, no agent process alive),
    /// rather than the live desktop.
    pub inspector: bool,
}

impl Evidence for SandboxEvidence {
    async fn command(&self, command: &str) -> Result<CommandOutput, String> {
        let out = self
            .sandbox
            .sh(
                command,
                &ExecOptions {
                    timeout: Some(COMMAND_TIMEOUT),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(CommandOutput {
            exit_code: out.exit_code,
            stdout: out.stdout_text(),
            stderr: out.stderr_text(),
            timed_out: out.timed_out,
        })
    }

    async fn file(&self, path: &str, read: bool) -> Result<Option<FileSeen>, String> {
        if !read {
            match self.sandbox.stat(path).await.map_err(|e| e.to_string())? {
                None => return Ok(None),
                Some(FileStat::File { size }) => return Ok(Some(FileSeen { size, data: None })),
                Some(FileStat::Directory) => return Err(format!("{path} is a directory")),
                Some(FileStat::Special) => return Err(format!("{path} is not a regular file")),
                // Whether a link's target exists, and its size: read below (a large target
                // is refused by its size, unread).
                Some(FileStat::Link(_)) => {}
            }
        }
        match self.sandbox.read_file_limited(path, MAX_CHECK_READ).await {
            Ok(d) => Ok(Some(FileSeen {
                size: d.len() as u64,
                data: read.then_some(d),
            })),
            Err(SandboxError::NoSuchFile { .. }) => Ok(None),
            Err(SandboxError::TooLarge { size, .. }) => Ok(Some(FileSeen { size, data: None })),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn windows(&self) -> Result<Vec<Window>, String> {
        self.windows.clone()
    }

    async fn judge(&self, question: &str) -> Result<JudgeVerdict, String> {
        match &self.judge {
            Some(j) => j.ask(question).await,
            None => Err("no judge model is configured".into()),
        }
    }

    async fn osworld(&self, request: &Value) -> Result<Value, String> {
        let stdin = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        // On the live desktop as root, out of reach of the agent's processes (it reads the
        // agent's files as the agent's user); in an inspector, where no agent process runs
        // and root has no capability to change user, as the desktop's user.
        let user = if self.inspector { "user" } else { "root" };
        let out = self
            .sandbox
            .exec(
                OSWORLD_EVALUATE,
                &ExecOptions {
                    user: Some(user.into()),
                    stdin: Some(stdin),
                    timeout: Some(OSWORLD_TIMEOUT),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        if out.timed_out {
            return Err(format!(
                "OSWorld's evaluator did not finish in {} s",
                OSWORLD_TIMEOUT.as_secs()
            ));
        }
        let stdout = out.stdout_text();
        let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
        match last.map(serde_json::from_str::<Value>) {
            Some(Ok(v)) if v.is_object() => Ok(v),
            _ if out.exit_code == 126 || out.exit_code == 127 || stdout.is_empty() => Err(format!(
                "OSWorld's evaluator is not in this desktop's image (exit {}: {}): run the task on {} (`selfagent sandbox build --flavor office`)",
                out.exit_code,
                excerpt(&out.stderr_text()),
                crate::sandbox::image::OFFICE_IMAGE
            )),
            _ => Err(format!(
                "OSWorld's evaluator did not reply (exit {}): {}",
                out.exit_code,
                excerpt(&format!("{stdout}{}", out.stderr_text()))
            )),
        }
    }

    fn gave_up(&self) -> Option<bool> {
        self.gave_up
    }
}

/// Evidence from a recorded [`FinalState`] (no container).
pub struct StoredEvidence {
    pub state: FinalState,
    pub judge: Option<Judge>,
}

impl Evidence for StoredEvidence {
    async fn command(&self, command: &str) -> Result<CommandOutput, String> {
        self.state.commands.get(command).cloned().ok_or_else(|| {
            format!("`{command}` was not run when the episode ended, and there is no snapshot image to run it in")
        })
    }

    async fn file(&self, path: &str, read: bool) -> Result<Option<FileSeen>, String> {
        let key = crate::sandbox::sandbox_path(path).map_err(|e| e.to_string())?;
        let missing = || {
            format!(
                "{key} was not read when the episode ended, and there is no snapshot image to read it from"
            )
        };
        let stored = self.state.files.get(&key).ok_or_else(missing)?;
        if !stored.exists {
            return Ok(None);
        }
        if !read {
            return Ok(Some(FileSeen {
                size: stored.bytes,
                data: None,
            }));
        }
        let Some(b64) = stored.base64.as_ref() else {
            if stored.bytes > MAX_CHECK_READ {
                return Ok(Some(FileSeen {
                    size: stored.bytes,
                    data: None,
                }));
            }
            return Err(format!(
                "{key} ({} bytes) was not kept in the recording, and there is no snapshot image",
                stored.bytes
            ));
        };
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(|d| {
                Some(FileSeen {
                    size: stored.bytes,
                    data: Some(d),
                })
            })
            .map_err(|e| format!("the recorded copy of {key} is damaged: {e}"))
    }

    async fn windows(&self) -> Result<Vec<Window>, String> {
        self.state
            .windows
            .clone()
            .ok_or_else(|| "no window list was recorded when the episode ended".into())
    }

    async fn judge(&self, question: &str) -> Result<JudgeVerdict, String> {
        match &self.judge {
            Some(j) => j.ask(question).await,
            None => Err("no judge model is configured".into()),
        }
    }

    async fn osworld(&self, _request: &Value) -> Result<Value, String> {
        Err(
            "OSWorld's evaluator runs in the desktop, and there is no snapshot image to run it in"
                .into(),
        )
    }

    fn gave_up(&self) -> Option<bool> {
        self.state.gave_up
    }
}

/// Wraps evidence: each command runs and each file is read once per grading, and what was
/// seen is kept as a [`FinalState`].
pub struct Recorded<E> {
    inner: E,
    seen: Mutex<FinalState>,
}

impl<E: Evidence> Recorded<E> {
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            seen: Mutex::new(FinalState::default()),
        }
    }

    /// What the checks saw.
    pub fn into_state(self) -> FinalState {
        self.seen.into_inner().unwrap_or_default()
    }

    fn with_seen<T>(&self, f: impl FnOnce(&mut FinalState) -> T) -> T {
        match self.seen.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

impl<E: Evidence> Evidence for Recorded<E> {
    async fn command(&self, command: &str) -> Result<CommandOutput, String> {
        if let Some(out) = self.with_seen(|s| s.commands.get(command).cloned()) {
            return Ok(out);
        }
        let out = self.inner.command(command).await?;
        self.with_seen(|s| s.commands.insert(command.to_owned(), out.clone()));
        Ok(out)
    }

    async fn file(&self, path: &str, read: bool) -> Result<Option<FileSeen>, String> {
        let key = crate::sandbox::sandbox_path(path).map_err(|e| e.to_string())?;
        // Read once per grading: a content read answers later size-only questions too.
        if let Some(kept) = self.with_seen(|s| s.files.get(&key).cloned())
            && (!read || kept.base64.is_some() || !kept.exists)
        {
            return Ok(kept.exists.then(|| FileSeen {
                size: kept.bytes,
                data: kept
                    .base64
                    .filter(|_| read)
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()),
            }));
        }
        let seen = self.inner.file(&key, read).await?;
        let stored = StoredFile {
            exists: seen.is_some(),
            bytes: seen.as_ref().map_or(0, |f| f.size),
            base64: seen
                .as_ref()
                .and_then(|f| f.data.as_ref())
                .filter(|d| d.len() <= MAX_STORED_FILE)
                .map(|d| base64::engine::general_purpose::STANDARD.encode(d)),
        };
        self.with_seen(|s| s.files.insert(key, stored));
        Ok(seen)
    }

    async fn windows(&self) -> Result<Vec<Window>, String> {
        let windows = self.inner.windows().await?;
        self.with_seen(|s| s.windows = Some(windows.clone()));
        Ok(windows)
    }

    async fn judge(&self, question: &str) -> Result<JudgeVerdict, String> {
        self.inner.judge(question).await
    }

    async fn osworld(&self, request: &Value) -> Result<Value, String> {
        self.inner.osworld(request).await
    }

    fn gave_up(&self) -> Option<bool> {
        let gave_up = self.inner.gave_up();
        self.with_seen(|s| s.gave_up = gave_up);
        gave_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Task;
    use pretty_assertions::assert_eq;

    fn state() -> FinalState {
        let b64 = |s: &str| Some(base64::engine::general_purpose::STANDARD.encode(s));
        FinalState {
            snapshot: None,
            gave_up: None,
            snapshot_skipped: None,
            windows: Some(vec![Window {
                id: 1,
                title: "notes.txt - Mousepad".into(),
                class: "Mousepad".into(),
                instance: "mousepad".into(),
                pid: None,
                x: 0,
                y: 0,
                width: 10,
                height: 10,
                active: true,
                hidden: false,
            }]),
            files: BTreeMap::from([
                (
                    "/home/user/notes.txt".into(),
                    StoredFile {
                        exists: true,
                        bytes: 17,
                        base64: b64("shopping\nmilk\n"),
                    },
                ),
                (
                    "/home/user/gone.txt".into(),
                    StoredFile {
                        exists: false,
                        bytes: 0,
                        base64: None,
                    },
                ),
            ]),
            commands: BTreeMap::from([(
                "ls ~".into(),
                CommandOutput {
                    exit_code: 0,
                    stdout: "notes.txt\n".into(),
                    stderr: String::new(),
                    timed_out: false,
                },
            )]),
        }
    }

    async fn grade_text(check: &str) -> Grade {
        let task = Task::parse(
            &format!("id = \"t\"\ninstruction = \"x\"\n[check]\n{check}\n"),
            "t.toml",
        )
        .unwrap();
        let evidence = StoredEvidence {
            state: state(),
            judge: None,
        };
        grade("t", task.check.as_ref().unwrap(), &evidence, "recorded").await
    }

    #[tokio::test]
    async fn leaves_pass_and_fail_on_what_was_seen() {
        for (check, want) in [
            ("file = \"~/notes.txt\"\ncontains = \"milk\"", Some(true)),
            (
                "file = \"notes.txt\"\nequals = \"shopping\\nmilk\"",
                Some(true),
            ),
            (
                "file = \"/home/user/notes.txt\"\nmatches = \"^milk$\"",
                Some(false),
            ),
            (
                "file = \"/home/user/notes.txt\"\nmatches = \"(?m)^milk$\"",
                Some(true),
            ),
            ("file = \"~/gone.txt\"\nexists = false", Some(true)),
            ("file = \"~/gone.txt\"", Some(false)),
            ("command = \"ls ~\"\nstdout = \"notes\"", Some(true)),
            ("command = \"ls ~\"\nstdout = \"^notes.txt$\"", Some(true)),
            ("command = \"ls ~\"\nexit_code = 1", Some(false)),
            ("window = \"Mousepad$\"", Some(true)),
            ("window_class = \"(?i)firefox\"", Some(false)),
            (
                "window_class = \"(?i)firefox\"\npresent = false",
                Some(true),
            ),
            ("not = { file = \"~/gone.txt\" }", Some(true)),
            // Never recorded, no snapshot: an error, not a failure.
            ("command = \"pwd\"", None),
            ("file = \"~/other.txt\"", None),
            ("judge = \"is it done?\"", None),
        ] {
            let g = grade_text(check).await;
            assert_eq!(g.passed, want, "{check}: {g:?}");
        }
    }

    #[tokio::test]
    async fn all_and_any_combine_with_weights() {
        let g = grade_text(
            "all = [ { file = \"~/notes.txt\", contains = \"milk\", weight = 3 }, { file = \"~/notes.txt\", contains = \"eggs\" } ]",
        )
        .await;
        assert_eq!(g.passed, Some(false));
        assert!((g.score - 0.75).abs() < 1e-9, "{}", g.score);
        let g = grade_text("any = [ { command = \"pwd\" }, { window = \"Mousepad\" } ]").await;
        assert_eq!((g.passed, g.score), (Some(true), 1.0));
        // An error in `all` with nothing failed leaves the grade undecided.
        let g = grade_text("all = [ { command = \"pwd\" }, { window = \"Mousepad\" } ]").await;
        assert_eq!(g.passed, None);
        assert!(g.error.unwrap().contains("`pwd` was not run"));
        // A failure decides `all` even next to an error.
        let g = grade_text("all = [ { command = \"pwd\" }, { window = \"Nope\" } ]").await;
        assert_eq!(g.passed, Some(false));
    }

    /// OSWorld's FAIL, from each protocol: `fail`, `call_user` (UI-TARS has no fail), or an
    /// answer that says the task is infeasible (Claude and OpenAI answer in words).
    #[test]
    fn giving_up_is_read_from_each_protocols_ending() {
        assert!(agent_gave_up("failed", None));
        assert!(agent_gave_up("needs_user", None));
        assert!(agent_gave_up(
            "succeeded",
            Some("This task is INFEASIBLE: the screen has no 240 Hz mode.")
        ));
        assert!(!agent_gave_up("succeeded", Some("Done.")));
        assert!(!agent_gave_up("stopped", None));
        assert!(!agent_gave_up("error", None));
    }

    /// An OSWorld check: infeasible tasks are decided here, feasible ones score 0 when the
    /// agent gave up, and the evaluator's error is the check's error.
    #[tokio::test]
    async fn osworld_checks_follow_osworlds_rules() {
        use crate::task::{Check, CheckKind};
        struct Fake(Option<bool>, Value);
        impl Evidence for Fake {
            async fn command(&self, _: &str) -> Result<CommandOutput, String> {
                Err("unused".into())
            }
            async fn file(&self, _: &str, _: bool) -> Result<Option<FileSeen>, String> {
                Err("unused".into())
            }
            async fn windows(&self) -> Result<Vec<Window>, String> {
                Err("unused".into())
            }
            async fn judge(&self, _: &str) -> Result<JudgeVerdict, String> {
                Err("unused".into())
            }
            async fn osworld(&self, _: &Value) -> Result<Value, String> {
                Ok(self.1.clone())
            }
            fn gave_up(&self) -> Option<bool> {
                self.0
            }
        }
        let check = |func: &str| Check {
            kind: CheckKind::Osworld {
                evaluator: serde_json::json!({"func": func, "result": {"type": "vm_file", "path": "/x"}}),
                files: BTreeMap::new(),
            },
            weight: 1.0,
        };
        let half =
            serde_json::json!({"score": 0.5, "details": [{"func": "compare_table", "score": 0.5}]});
        let r = evaluate(&check("infeasible"), &Fake(Some(true), Value::Null)).await;
        assert_eq!((r.verdict, r.score), (Verdict::Passed, 1.0));
        let r = evaluate(&check("infeasible"), &Fake(None, Value::Null)).await;
        assert_eq!(r.verdict, Verdict::Error);
        let r = evaluate(&check("compare_table"), &Fake(Some(true), half.clone())).await;
        assert_eq!((r.verdict, r.score), (Verdict::Failed, 0.0));
        // A partial score counts as it is; passing needs all of it.
        let r = evaluate(&check("compare_table"), &Fake(Some(false), half)).await;
        assert_eq!((r.verdict, r.score), (Verdict::Failed, 0.5));
        let raised = serde_json::json!({"error": "BadZipFile: File is not a zip file"});
        let r = evaluate(&check("compare_table"), &Fake(Some(false), raised)).await;
        assert_eq!(r.verdict, Verdict::Error);
        assert!(r.detail.contains("BadZipFile"), "{}", r.detail);
        // An expected file missing from the import cache is an error that says what to do.
        let mut c = check("compare_table");
        if let CheckKind::Osworld { files, .. } = &mut c.kind {
            files.insert("gold.xlsx".into(), "/nonexistent/cache/gold.xlsx".into());
        }
        let r = evaluate(&c, &Fake(Some(false), Value::Null)).await;
        assert_eq!(r.verdict, Verdict::Error);
        assert!(r.detail.contains("--fetch"), "{}", r.detail);
    }

    #[test]
    fn judge_verdicts_are_read_leniently_but_not_guessed() {
        assert_eq!(
            parse_verdict("Sure.\n```json\n{\"passed\": true, \"reason\": \"saved\"}\n```")
                .unwrap(),
            JudgeVerdict {
                passed: true,
                reason: "saved".into()
            }
        );
        assert!(!parse_verdict("{\"passed\": \"no\"}").unwrap().passed);
        assert!(parse_verdict("I think it passed").is_err());
        assert!(parse_verdict("{\"passed\": 1}").is_err());
    }
}
