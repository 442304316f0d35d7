//! Tasks: what to do, how to set the desktop up, and how to tell whether it was done.
//!
//! A task file is TOML (JSON is accepted too):
//!
//! ```toml
//! id = "editor-append"
//! instruction = "Add the line 'remember the milk' to the end of the open file and save it."
//! [limits]
//! max_steps = 20
//! timeout = 300
//! [[setup]]
//! write_file = { path = "~/notes.txt", content = "shopping\n" }
//! [[setup]]
//! launch = "mousepad /home/user/notes.txt"
//! [[setup]]
//! wait_for_window = { title = "notes.txt", timeout = 20 }
//! [check]
//! all = [
//!   { file = "~/notes.txt", contains = "remember the milk" },
//!   { command = "tail -n1 ~/notes.txt", stdout = "milk", weight = 0.5 },
//! ]
//! ```
//!
//! Setup steps: `exec`, `write_file`, `launch`, `open`, `wait_for_window`,
//! `activate_window`, `sleep` (a last resort); `post` steps (the same kinds) run after the
//! episode, before the checks. Checks run in the sandbox at the end: `command` (exit code,
//! stdout/stderr regexes), `file` (exists, contains, equals, matches), `window` (a title
//! and/or class regex present), combined with `all` / `any` (OSWorld's `conj`) and `not`,
//! each with a `weight`, and `judge` (a vision-language model looks at the recorded frames).
//! Structural mistakes are reported with the file, line and column.

pub mod check;
pub mod osworld;
pub mod setup;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("reading task file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse { path: String, error: String },
    #[error("{0}")]
    Invalid(String),
}

fn default_weight() -> f64 {
    1.0
}

/// One way to prepare the desktop before the agent starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSetup", into = "RawSetup")]
pub enum SetupStep {
    /// A shell command line; it must exit 0.
    Exec {
        command: String,
        timeout: Option<f64>,
    },
    WriteFile {
        path: String,
        content: String,
    },
    /// An application by name (terminal, browser, files, editor), .desktop id or command.
    Launch {
        app: String,
    },
    /// A path or URL, with the desktop's default application.
    Open {
        target: String,
    },
    WaitForWindow {
        title: Option<String>,
        class: Option<String>,
        timeout: Option<f64>,
    },
    /// Waits for a window like `wait_for_window`, then raises and focuses it.
    ActivateWindow {
        title: Option<String>,
        class: Option<String>,
        timeout: Option<f64>,
    },
    /// Seconds; prefer wait_for_window.
    Sleep {
        seconds: f64,
    },
    /// A file of this machine (an imported task's download cache) copied into the
    /// desktop; a relative `from` is relative to the task file.
    Upload {
        from: String,
        to: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSpec {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileContent {
    pub path: String,
    pub content: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

impl WindowSpec {
    fn validate(&self, step: &str) -> Result<(), String> {
        if self.title.is_none() && self.class.is_none() {
            return Err(format!("{step} needs a `title` or a `class` regex"));
        }
        for re in [&self.title, &self.class].into_iter().flatten() {
            regex::Regex::new(re).map_err(|e| format!("bad regex '{re}': {e}"))?;
        }
        if let Some(t) = self.timeout
            && !(t.is_finite() && t > 0.0 && t <= 3600.0)
        {
            return Err(format!(
                "{step}: `timeout` must be between 0 and 3600 seconds"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSetup {
    #[serde(skip_serializing_if = "Option::is_none")]
    exec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_file: Option<FileContent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    launch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    open: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_for_window: Option<WindowSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    activate_window: Option<WindowSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sleep: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upload: Option<UploadSpec>,
}

impl TryFrom<RawSetup> for SetupStep {
    type Error = String;
    fn try_from(r: RawSetup) -> Result<Self, String> {
        let given = [
            r.exec.is_some(),
            r.write_file.is_some(),
            r.launch.is_some(),
            r.open.is_some(),
            r.wait_for_window.is_some(),
            r.activate_window.is_some(),
            r.sleep.is_some(),
            r.upload.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            return Err("a setup step needs exactly one of exec, write_file, launch, open, wait_for_window, activate_window, sleep, upload".into());
        }
        if r.timeout.is_some() && r.exec.is_none() {
            return Err(
                "`timeout` belongs to an `exec` step (wait_for_window takes its own)".into(),
            );
        }
        Ok(if let Some(command) = r.exec {
            Self::Exec {
                command,
                timeout: r.timeout,
            }
        } else if let Some(f) = r.write_file {
            Self::WriteFile {
                path: f.path,
                content: f.content,
            }
        } else if let Some(app) = r.launch {
            Self::Launch { app }
        } else if let Some(target) = r.open {
            Self::Open { target }
        } else if let Some(w) = r.wait_for_window {
            w.validate("wait_for_window")?;
            Self::WaitForWindow {
                title: w.title,
                class: w.class,
                timeout: w.timeout,
            }
        } else if let Some(w) = r.activate_window {
            w.validate("activate_window")?;
            Self::ActivateWindow {
                title: w.title,
                class: w.class,
                timeout: w.timeout,
            }
        } else if let Some(u) = r.upload {
            if u.from.is_empty() || !u.to.starts_with('/') {
                return Err("`upload` needs `from` and an absolute `to`".into());
            }
            Self::Upload {
                from: u.from,
                to: u.to,
            }
        } else {
            let seconds = r.sleep.unwrap_or_default();
            if !(0.0..=600.0).contains(&seconds) {
                return Err("sleep must be between 0 and 600 seconds".into());
            }
            Self::Sleep { seconds }
        })
    }
}

impl From<SetupStep> for RawSetup {
    fn from(s: SetupStep) -> Self {
        match s {
            SetupStep::Exec { command, timeout } => Self {
                exec: Some(command),
                timeout,
                ..Default::default()
            },
            SetupStep::WriteFile { path, content } => Self {
                write_file: Some(FileContent { path, content }),
                ..Default::default()
            },
            SetupStep::Launch { app } => Self {
                launch: Some(app),
                ..Default::default()
            },
            SetupStep::Open { target } => Self {
                open: Some(target),
                ..Default::default()
            },
            SetupStep::WaitForWindow {
                title,
                class,
                timeout,
            } => Self {
                wait_for_window: Some(WindowSpec {
                    title,
                    class,
                    timeout,
                }),
                ..Default::default()
            },
            SetupStep::ActivateWindow {
                title,
                class,
                timeout,
            } => Self {
                activate_window: Some(WindowSpec {
                    title,
                    class,
                    timeout,
                }),
                ..Default::default()
            },
            SetupStep::Sleep { seconds } => Self {
                sleep: Some(seconds),
                ..Default::default()
            },
            SetupStep::Upload { from, to } => Self {
                upload: Some(UploadSpec { from, to }),
                ..Default::default()
            },
        }
    }
}

/// A check on the final state; every check has a weight (for partial credit in `all`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawCheck", into = "RawCheck")]
pub struct Check {
    pub kind: CheckKind,
    pub weight: f64,
}

impl Check {
    /// Whether the check (or one of its children) asks a judge.
    pub fn asks_a_judge(&self) -> bool {
        match &self.kind {
            CheckKind::Judge { .. } => true,
            CheckKind::All(c) | CheckKind::Any(c) => c.iter().any(Check::asks_a_judge),
            CheckKind::Not(c) => c.asks_a_judge(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Command {
        command: String,
        exit_code: Option<i64>,
        stdout: Option<String>,
        stderr: Option<String>,
    },
    File {
        path: String,
        exists: bool,
        contains: Option<String>,
        equals: Option<String>,
        matches: Option<String>,
    },
    Window {
        title: Option<String>,
        class: Option<String>,
        present: bool,
    },
    /// Every child must pass; the score is their weighted mean.
    All(Vec<Check>),
    /// One child must pass; the score is the best child's.
    Any(Vec<Check>),
    /// The child must fail (an error stays an error).
    Not(Box<Check>),
    /// A vision-language model judges the recorded frames against this question.
    Judge { question: String },
    /// OSWorld's own evaluator (`func`, `result`, `expected`, `options`, `conj`), run by
    /// the office image's copy of OSWorld's `desktop-env`; `files` are the expected files
    /// (OSWorld's `dest` name -> a file of this machine, relative to the task file).
    Osworld {
        evaluator: serde_json::Value,
        files: std::collections::BTreeMap<String, String>,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exists: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contains: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    equals: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    matches: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    present: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    all: Option<Vec<Check>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    any: Option<Vec<Check>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not: Option<Box<Check>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    judge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    osworld: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default = "default_weight")]
    weight: f64,
}

fn check_regex(field: &str, re: &Option<String>) -> Result<(), String> {
    if let Some(re) = re {
        regex::Regex::new(re).map_err(|e| format!("`{field}`: bad regex '{re}': {e}"))?;
    }
    Ok(())
}

impl TryFrom<RawCheck> for Check {
    type Error = String;
    fn try_from(r: RawCheck) -> Result<Self, String> {
        let kinds = [
            r.command.is_some(),
            r.file.is_some(),
            r.window.is_some() || r.window_class.is_some(),
            r.all.is_some(),
            r.any.is_some(),
            r.not.is_some(),
            r.judge.is_some(),
            r.osworld.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if kinds != 1 {
            return Err("a check needs exactly one of command, file, window (or window_class), all, any, not, judge, osworld".into());
        }
        if r.files.is_some() && r.osworld.is_none() {
            return Err("`files` belongs to an `osworld` check".into());
        }
        if !(r.weight.is_finite() && r.weight >= 0.0) {
            return Err(format!("`weight` must be a number >= 0, got {}", r.weight));
        }
        let stray = |fields: &[(&str, bool)]| -> Result<(), String> {
            match fields.iter().find(|(_, set)| *set) {
                Some((name, _)) => Err(format!("`{name}` does not belong to this kind of check")),
                None => Ok(()),
            }
        };
        let kind = if let Some(command) = r.command {
            stray(&[
                ("exists", r.exists.is_some()),
                ("contains", r.contains.is_some()),
                ("equals", r.equals.is_some()),
                ("matches", r.matches.is_some()),
                ("present", r.present.is_some()),
            ])?;
            check_regex("stdout", &r.stdout)?;
            check_regex("stderr", &r.stderr)?;
            CheckKind::Command {
                command,
                // With nothing else asked, a command check means "it succeeds".
                exit_code: r
                    .exit_code
                    .or((r.stdout.is_none() && r.stderr.is_none()).then_some(0)),
                stdout: r.stdout,
                stderr: r.stderr,
            }
        } else if let Some(path) = r.file {
            stray(&[
                ("exit_code", r.exit_code.is_some()),
                ("stdout", r.stdout.is_some()),
                ("stderr", r.stderr.is_some()),
                ("present", r.present.is_some()),
            ])?;
            check_regex("matches", &r.matches)?;
            let exists = r.exists.unwrap_or(true);
            if !exists && (r.contains.is_some() || r.equals.is_some() || r.matches.is_some()) {
                return Err("a file that must not exist cannot have contents to check".into());
            }
            CheckKind::File {
                path,
                exists,
                contains: r.contains,
                equals: r.equals,
                matches: r.matches,
            }
        } else if r.window.is_some() || r.window_class.is_some() {
            check_regex("window", &r.window)?;
            check_regex("window_class", &r.window_class)?;
            CheckKind::Window {
                title: r.window,
                class: r.window_class,
                present: r.present.unwrap_or(true),
            }
        } else if let Some(all) = r.all {
            if all.is_empty() {
                return Err("`all` needs at least one check".into());
            }
            CheckKind::All(all)
        } else if let Some(any) = r.any {
            if any.is_empty() {
                return Err("`any` needs at least one check".into());
            }
            CheckKind::Any(any)
        } else if let Some(not) = r.not {
            CheckKind::Not(not)
        } else if let Some(evaluator) = r.osworld {
            osworld_funcs(&evaluator)?;
            let files = r.files.unwrap_or_default();
            if let Some(bad) = files
                .keys()
                .find(|k| k.is_empty() || k.contains('/') || k.starts_with('.'))
            {
                return Err(format!("`files`: '{bad}' is not a plain file name"));
            }
            CheckKind::Osworld { evaluator, files }
        } else {
            let question = r.judge.unwrap_or_default();
            if question.trim().is_empty() {
                return Err("`judge` needs a question".into());
            }
            CheckKind::Judge { question }
        };
        Ok(Check {
            kind,
            weight: r.weight,
        })
    }
}

impl From<Check> for RawCheck {
    fn from(c: Check) -> Self {
        let base = RawCheck {
            weight: c.weight,
            ..Default::default()
        };
        match c.kind {
            CheckKind::Command {
                command,
                exit_code,
                stdout,
                stderr,
            } => RawCheck {
                command: Some(command),
                exit_code,
                stdout,
                stderr,
                ..base
            },
            CheckKind::File {
                path,
                exists,
                contains,
                equals,
                matches,
            } => RawCheck {
                file: Some(path),
                exists: Some(exists),
                contains,
                equals,
                matches,
                ..base
            },
            CheckKind::Window {
                title,
                class,
                present,
            } => RawCheck {
                window: title,
                window_class: class,
                present: Some(present),
                ..base
            },
            CheckKind::All(all) => RawCheck {
                all: Some(all),
                ..base
            },
            CheckKind::Any(any) => RawCheck {
                any: Some(any),
                ..base
            },
            CheckKind::Not(not) => RawCheck {
                not: Some(not),
                ..base
            },
            CheckKind::Judge { question } => RawCheck {
                judge: Some(question),
                ..base
            },
            CheckKind::Osworld { evaluator, files } => RawCheck {
                osworld: Some(evaluator),
                files: (!files.is_empty()).then_some(files),
                ..base
            },
        }
    }
}

/// The metric names of an OSWorld evaluator (`func`: one name or a list of them).
pub fn osworld_funcs(evaluator: &serde_json::Value) -> Result<Vec<String>, String> {
    let bad = || "`osworld` needs `func`: a metric name or a list of them".to_owned();
    let list = match &evaluator["func"] {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a
            .iter()
            .map(|f| f.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if list.is_empty() || list.iter().any(String::is_empty) {
        return Err(bad());
    }
    Ok(list)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// Seconds for the episode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: String,
    pub instruction: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<SetupStep>,
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// Steps run after the episode, before the checks (OSWorld's `postconfig`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post: Vec<SetupStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Where the task came from (`osworld:<id>`), for imported tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Start the desktop from this saved snapshot (`sandbox snapshot NAME TAG`): a setup
    /// that is expensive done once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The desktop image's flavour it needs: `office` (LibreOffice, GIMP, VLC, Chromium,
    /// OSWorld's evaluators: `sandbox build --flavor office`), or the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<String>,
    /// The screen size it was written for (`screen = { width = 1920, height = 1080 }`):
    /// set-up steps that click at coordinates need it. `--width`/`--height` still win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<Screen>,
    /// It needs the agent to have sudo (OSWorld's VM user has it, password `password`):
    /// it runs on the opt-in desktop that grants it, and only with `--allow-sudo`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sudo: bool,
}

/// A screen size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Screen {
    pub width: u32,
    pub height: u32,
}

impl Limits {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl Task {
    /// The image this task's desktop starts from, given the one asked for: a saved
    /// snapshot (`from`), the office image for `desktop = "office"` when the default image
    /// was asked for, else `image`.
    pub fn image(&self, image: &str) -> String {
        match (&self.from, self.desktop.as_deref()) {
            (Some(tag), _) => crate::sandbox::snapshot::saved_image(tag),
            (None, Some("office")) if image == crate::sandbox::DEFAULT_IMAGE => {
                crate::sandbox::image::OFFICE_IMAGE.to_owned()
            }
            _ => image.to_owned(),
        }
    }
    /// Parses task text; `name` (a file name) decides TOML or JSON.
    pub fn parse(text: &str, name: &str) -> Result<Self, TaskError> {
        let parsed: Result<Task, String> = if name.ends_with(".json") {
            serde_json::from_str(text).map_err(|e| {
                format!("line {}, column {}: {e}", e.line(), e.column())
                    .replace(&format!(" at line {} column {}", e.line(), e.column()), "")
            })
        } else {
            crate::config::parse_as::<Task>(text)
        };
        let task = parsed.map_err(|error| TaskError::Parse {
            path: name.to_owned(),
            error,
        })?;
        task.validate().map_err(|error| TaskError::Parse {
            path: name.to_owned(),
            error,
        })?;
        Ok(task)
    }

    /// The task as a TOML task file.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| format!("writing the task as TOML: {e}"))
    }

    pub fn load(path: &Path) -> Result<Self, TaskError> {
        let text = std::fs::read_to_string(path).map_err(|error| TaskError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let mut task = Self::parse(&text, &path.display().to_string())?;
        task.resolve_files(path.parent().unwrap_or(Path::new(".")));
        Ok(task)
    }

    /// Makes the task's files of this machine (uploads, OSWorld's expected files)
    /// relative to `dir`, the task file's folder, absolute.
    pub fn resolve_files(&mut self, dir: &Path) {
        let abs = |p: &mut String| {
            if !Path::new(p.as_str()).is_absolute() {
                *p = dir.join(p.as_str()).display().to_string();
            }
        };
        for step in self.setup.iter_mut().chain(self.post.iter_mut()) {
            if let SetupStep::Upload { from, .. } = step {
                abs(from);
            }
        }
        fn walk(c: &mut Check, abs: &dyn Fn(&mut String)) {
            match &mut c.kind {
                CheckKind::All(list) | CheckKind::Any(list) => {
                    list.iter_mut().for_each(|c| walk(c, abs));
                }
                CheckKind::Not(c) => walk(c, abs),
                CheckKind::Osworld { files, .. } => files.values_mut().for_each(abs),
                _ => {}
            }
        }
        if let Some(c) = &mut self.check {
            walk(c, &abs);
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.id.trim().is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Err(format!(
                "`id` '{}' may only use letters, digits, '-', '_', '.', ':'",
                self.id
            ));
        }
        if self.instruction.trim().is_empty() {
            return Err("`instruction` is empty".into());
        }
        if let Some(tag) = &self.from {
            crate::sandbox::snapshot::check_tag(tag).map_err(|e| format!("`from`: {e}"))?;
        }
        if let Some(d) = &self.desktop
            && d != "office"
            && d != "default"
        {
            return Err(format!("`desktop` '{d}' is not `office` or `default`"));
        }
        if let Some(t) = self.limits.timeout
            && !(t.is_finite() && t > 0.0)
        {
            return Err("`limits.timeout` must be a positive number of seconds".into());
        }
        if self.limits.max_steps == Some(0) {
            return Err("`limits.max_steps` must be at least 1".into());
        }
        if let Some(Screen { width, height }) = self.screen
            && !((320..=7680).contains(&width) && (200..=4320).contains(&height))
        {
            return Err(format!(
                "`screen` {width}x{height} is out of range (320x200 to 7680x4320)"
            ));
        }
        Ok(())
    }
}

/// Every task file named, directories searched for `*.toml` and `*.json` (sorted).
/// The report `tasks import-osworld` writes next to the tasks it converted.
pub const COVERAGE_FILE: &str = "coverage.json";

pub fn task_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, TaskError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|error| TaskError::Read {
                    path: p.display().to_string(),
                    error,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml" || x == "json"))
                // The OSWorld import's report, next to the tasks it wrote, is not a task.
                .filter(|f| f.file_name().is_none_or(|n| n != COVERAGE_FILE))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(TaskError::Invalid("no task files found".into()));
    }
    Ok(out)
}

/// Loads tasks; ids must be unique.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Task>, TaskError> {
    let mut tasks: Vec<Task> = Vec::new();
    for file in task_files(paths)? {
        let task = Task::load(&file)?;
        if tasks.iter().any(|t| t.id == task.id) {
            return Err(TaskError::Invalid(format!(
                "{}: task id '{}' is used twice",
                file.display(),
                task.id
            )));
        }
        tasks.push(task);
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    const GOOD: &str = r#"
id = "editor-append"
instruction = "Add a line and save."
tags = ["editor"]
[limits]
max_steps = 20
[[setup]]
write_file = { path = "~/notes.txt", content = "shopping\n" }
[[setup]]
launch = "mousepad /home/user/notes.txt"
[[setup]]
wait_for_window = { title = "notes.txt", timeout = 20 }
[[setup]]
exec = "true"
timeout = 5
[check]
all = [
  { file = "~/notes.txt", contains = "milk" },
  { command = "tail -n1 ~/notes.txt", stdout = "milk", weight = 0.5 },
  { any = [ { window = "Mousepad" }, { window_class = "(?i)mousepad", present = false } ] },
]
"#;

    #[test]
    fn a_task_file_parses() {
        let t = Task::parse(GOOD, "t.toml").unwrap();
        assert_eq!(t.setup.len(), 4);
        assert_eq!(
            t.setup[2],
            SetupStep::WaitForWindow {
                title: Some("notes.txt".into()),
                class: None,
                timeout: Some(20.0)
            }
        );
        let CheckKind::All(children) = &t.check.as_ref().unwrap().kind else {
            panic!()
        };
        assert_eq!(children.len(), 3);
        assert_eq!(children[1].weight, 0.5);
        assert_eq!(
            children[0].kind,
            CheckKind::File {
                path: "~/notes.txt".into(),
                exists: true,
                contains: Some("milk".into()),
                equals: None,
                matches: None
            }
        );
    }

    #[test]
    fn tasks_round_trip_through_json() {
        let t = Task::parse(GOOD, "t.toml").unwrap();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(Task::parse(&json, "t.json").unwrap(), t);
    }

    #[test]
    fn mistakes_name_file_line_and_column() {
        for (text, needle) in [
            (
                "id = \"x\"\ninstruction = \"y\"\n[[setup]]\nexec = \"a\"\nlaunch = \"b\"\n",
                "line 3",
            ),
            (
                "id = \"x\"\ninstruction = \"y\"\n[check]\nfile = \"a\"\nstdout = \"b\"\n",
                "`stdout` does not belong",
            ),
            (
                "id = \"x\"\ninstruction = \"y\"\n[check]\ncommand = \"a\"\nstdout = \"(\"\n",
                "bad regex",
            ),
            (
                "id = \"x\"\ninstruction = \"y\"\n[check]\nall = []\n",
                "at least one check",
            ),
            (
                "id = \"x\"\ninstruction = \"y\"\nlimits = { max_stesp = 3 }\n",
                "max_stesp",
            ),
            ("id = \"x y\"\ninstruction = \"y\"\n", "may only use"),
            ("instruction = \"y\"\n", "missing field `id`"),
        ] {
            let err = Task::parse(text, "bad.toml").unwrap_err().to_string();
            assert!(
                err.starts_with("bad.toml: ") && err.contains(needle),
                "{text:?}: {err}"
            );
        }
        let err = Task::parse("{\"id\": \"x\",\n \"instruction\": 3}", "bad.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.json: line 2, column"), "{err}");
    }

    #[test]
    fn a_bare_command_check_means_success() {
        let t = Task::parse(
            "id = \"x\"\ninstruction = \"y\"\n[check]\ncommand = \"test -d ~/a\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            t.check.unwrap().kind,
            CheckKind::Command {
                command: "test -d ~/a".into(),
                exit_code: Some(0),
                stdout: None,
                stderr: None
            }
        );
    }
}
