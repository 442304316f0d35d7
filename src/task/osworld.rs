//! Importing OSWorld task files (`evaluation_examples/examples/<domain>/<id>.json`) as
//! tasks for the office desktop (`sandbox build --flavor office`).
//!
//! Checks are OSWorld's own: the task's `evaluator` becomes an `osworld` check, which the
//! office image's copy of OSWorld's `desktop-env` evaluates (its getters and metrics; see
//! sandbox/office/rootfs/opt/selfagent/osworld/evaluate.py). Only metrics and getters the
//! image loads convert (src/task/osworld-metrics.txt and osworld-getters.txt, checked
//! against the image by a test), less those that cannot be answered faithfully here
//! ([`UNSUPPORTED_GETTERS`], [`UNSUPPORTED_METRICS`]).
//!
//! Setup (`config`) and `evaluator.postconfig` steps: `execute` / `command` (pyautogui
//! scripts run with the image's pyautogui), `launch`, `open`, `sleep`, `activate_window`,
//! `close_window` (wmctrl), `download` (from the import cache that `--fetch` fills: runs are
//! offline and repeatable), `chrome_open_tabs`, `chrome_close_tabs` and
//! `update_browse_history` (over Chromium's debugging port). Expected files (`cloud_file`)
//! come from the same cache. Tasks that sign in to Google are skipped as needing an account.

use super::{Check, CheckKind, Limits, SetupStep, Task};
use crate::desktop::shell_quote;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Programs OSWorld's Ubuntu image has and the office desktop does not.
const MISSING_APPS: &[(&str, &str)] = &[
    ("gnome-control-center", "GNOME Settings"),
    ("gsettings", "GNOME's settings store"),
];

/// OSWorld's programs and this desktop's equivalents (google-chrome and gnome-terminal
/// are wrappers in the image).
const EXEC_MAP: &[(&str, &str)] = &[
    ("nautilus", "thunar"),
    ("gedit", "mousepad"),
    ("firefox", "firefox-esr"),
];

/// The Python with pyautogui (OSWorld's setup scripts type and click with it).
pub const PYTHON: &str = "/opt/osworld/bin/python";

/// The metric functions and getters the office image loads.
const METRICS: &str = include_str!("osworld-metrics.txt");
const GETTERS: &str = include_str!("osworld-getters.txt");

/// Getters that load but cannot answer faithfully here, and why.
pub const UNSUPPORTED_GETTERS: &[(&str, &str)] = &[
    ("vm_wallpaper", "asks OSWorld's VM server for the wallpaper"),
    (
        "vm_window_size",
        "asks OSWorld's VM server for a window's size",
    ),
    ("googledrive_file", "needs a Google account"),
    ("replay", "replays OSWorld's own action log"),
    (
        "info_from_website",
        "reads a live website at grading (not repeatable offline)",
    ),
    (
        "page_info",
        "reads a live website at grading (not repeatable offline)",
    ),
    (
        "gotoRecreationPage_and_get_html_content",
        "reads a live website at grading (not repeatable offline)",
    ),
    (
        "pdf_from_url",
        "reads a live website at grading (not repeatable offline)",
    ),
];

/// Metrics that load but are not run here, and why.
pub const UNSUPPORTED_METRICS: &[(&str, &str)] = &[
    (
        "compare_image_text",
        "OCRs with easyocr, which needs torch (left out of the image)",
    ),
    (
        "check_python_file_by_test_suite",
        "runs the agent's code inside the grader",
    ),
    (
        "check_python_file_by_gold_file",
        "runs the agent's code inside the grader",
    ),
];

fn listed(list: &str, name: &str) -> bool {
    list.lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.trim() == name)
}

/// A converted task and what was approximated on the way.
#[derive(Debug, Clone)]
pub struct Imported {
    pub task: Task,
    pub notes: Vec<String>,
}

/// Why a task was not converted.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub id: String,
    pub reasons: Vec<String>,
}

/// The start of the reason of tasks that sign in to a Google account: left out of the
/// coverage's denominator (OSWorld's own harness needs the account's credentials).
pub const NEEDS_ACCOUNT: &str = "needs a Google account";

impl Skipped {
    /// Whether it was skipped because it needs a Google account.
    pub fn needs_account(&self) -> bool {
        self.reasons.iter().any(|r| r.starts_with(NEEDS_ACCOUNT))
    }
}

/// The kind of a skip reason, for counting: the reason with what varies taken out.
pub fn reason_kind(reason: &str) -> String {
    if reason.starts_with(NEEDS_ACCOUNT) {
        return NEEDS_ACCOUNT.to_owned();
    }
    match (reason.find(" (http"), reason.find(')')) {
        (Some(start), Some(end)) if end > start => {
            format!("{} (a URL){}", &reason[..start], &reason[end + 1..])
        }
        _ => reason.to_owned(),
    }
}

/// Where the import cache keeps a download: `cache/<hash of the URL>-<file name>`,
/// relative to the imported task files.
/// A path in OSWorld's VM as its server resolves it: `~` and `$HOME` expanded, and a
/// relative path taken from the server's working directory, the user's home. Our `upload`
/// and `open` steps want it absolute.
pub fn vm_path(path: &str) -> String {
    const HOME: &str = "/home/user";
    let path = path.trim();
    if let Some(rest) = path.strip_prefix("~/") {
        format!("{HOME}/{rest}")
    } else if path == "~" || path == "$HOME" {
        HOME.to_owned()
    } else if let Some(rest) = path
        .strip_prefix("$HOME/")
        .or_else(|| path.strip_prefix("${HOME}/"))
    {
        format!("{HOME}/{rest}")
    } else if path.starts_with('/') || path.contains("://") {
        path.to_owned()
    } else {
        format!("{HOME}/{}", path.trim_start_matches("./"))
    }
}

pub fn cache_path(url: &str, name: &str) -> String {
    let hash: String = Sha256::digest(url.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = name.rsplit('/').next().unwrap_or(name);
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("cache/{hash}-{base}")
}

/// Every URL a task downloads (setup files and expected files), with its cache path, for
/// `--fetch`.
pub fn downloads(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let steps = v["config"]
        .as_array()
        .into_iter()
        .chain(v["evaluator"]["postconfig"].as_array())
        .flatten();
    for step in steps.filter(|s| s["type"] == "download") {
        for f in step["parameters"]["files"].as_array().into_iter().flatten() {
            if let (Some(url), Some(path)) = (f["url"].as_str(), f["path"].as_str()) {
                out.push((url.to_owned(), cache_path(url, path)));
            }
        }
    }
    let expected = match &v["evaluator"]["expected"] {
        Value::Array(list) => list.clone(),
        other => vec![other.clone()],
    };
    for e in expected.iter().filter(|e| e["type"] == "cloud_file") {
        for (url, dest) in cloud_files(e) {
            out.push((url.clone(), cache_path(&url, &dest)));
        }
    }
    out
}

/// A `cloud_file` getter's `(url, dest)` pairs (one, or lists with `multi`).
fn cloud_files(e: &Value) -> Vec<(String, String)> {
    match (&e["path"], &e["dest"]) {
        (Value::String(p), Value::String(d)) => vec![(p.clone(), d.clone())],
        (Value::Array(p), Value::Array(d)) => p
            .iter()
            .zip(d)
            .filter_map(|(p, d)| Some((p.as_str()?.to_owned(), d.as_str()?.to_owned())))
            .collect(),
        _ => Vec::new(),
    }
}

/// The evaluator as TOML can hold it: nulls become empty tables (OSWorld treats both as
/// "none").
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Null => Value::Object(Default::default()),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

struct Converter {
    reasons: Vec<String>,
    notes: Vec<String>,
    /// Steps one OSWorld step became beyond the first (a download of several files).
    pending: Vec<SetupStep>,
    /// Converting `postconfig` (after the agent) rather than `config`.
    in_post: bool,
    /// A step runs sudo: the task needs the desktop that grants it.
    sudo: bool,
}

/// A window name as a regex (`strict`: the whole title); Google Chrome's windows are
/// Chromium's here (and its class `Google-chrome` is `Chromium`).
fn window_regex(name: &str, strict: bool) -> String {
    let mut re = regex::escape(name)
        .replace("Google Chrome", "(?:Google Chrome|Chromium)")
        .replace("Google-chrome", "(?:Google-chrome|Chromium)")
        .replace("google-chrome", "(?:google-chrome|chromium)");
    if strict {
        re = format!("^{re}$");
    }
    re
}

impl Converter {
    fn skip(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        if !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
    }

    /// A command from OSWorld's `command` parameter (a string, or argv).
    fn command_line(&mut self, command: &Value) -> Option<String> {
        let argv: Vec<String> = match command {
            Value::String(s) => return Some(self.check_command(s.clone())),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .or_else(|| {
                    self.skip("a command is not a list of strings");
                    None
                })?,
            _ => {
                self.skip("a step has no command");
                return None;
            }
        };
        let mut argv = argv;
        if let Some(first) = argv.first_mut()
            && matches!(first.as_str(), "python" | "python3" | "python3.10")
        {
            // OSWorld's scripts import pyautogui, which the image's Python has.
            PYTHON.clone_into(first);
        }
        let line = argv
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        Some(self.check_command(line))
    }

    /// Notes what a command needs that this desktop lacks.
    fn check_command(&mut self, line: String) -> String {
        if !self.sudo
            && line
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .any(|w| w == "sudo")
        {
            self.sudo = true;
            self.notes.push(
                "a step runs sudo: `sudo = true`, run it with --allow-sudo (the agent can \
                 become root in its container)"
                    .into(),
            );
        }
        for word in
            line.split(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == ';' || c == '&')
        {
            let program = word.rsplit('/').next().unwrap_or(word);
            if let Some((_, name)) = MISSING_APPS.iter().find(|(p, _)| *p == program) {
                self.skip(format!(
                    "needs {name}, which the office image does not have"
                ));
            }
        }
        // A shell line that scripts pyautogui runs the image's Python.
        let line = match line.split_once(' ') {
            Some(("python" | "python3", rest)) if line.contains("pyautogui") => {
                format!("{PYTHON} {rest}")
            }
            _ => line,
        };
        // OSWorld's Ubuntu programs, run directly, become this desktop's.
        let (program, rest) = line.split_once(' ').unwrap_or((&line, ""));
        match EXEC_MAP.iter().find(|(from, _)| *from == program) {
            Some((from, to)) => {
                self.notes.push(format!("{from} became {to}"));
                format!("{to} {rest}").trim_end().to_owned()
            }
            None => line,
        }
    }

    /// A Chrome setup step over its debugging port: `selfagent-chrome VERB ITEM...`, the
    /// items from the list `key` of the step's parameters.
    fn chrome(
        &mut self,
        p: &Value,
        key: &str,
        verb: &str,
        item: impl Fn(&Value) -> Option<String>,
    ) -> Option<SetupStep> {
        let items: Vec<String> = p[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(item)
            .collect();
        if items.is_empty() {
            self.skip(format!("a Chrome step lists no `{key}`"));
            return None;
        }
        Some(SetupStep::Exec {
            command: format!("selfagent-chrome {verb} {}", items.join(" ")),
            timeout: Some(90.0),
        })
    }

    fn step(&mut self, step: &Value) -> Option<SetupStep> {
        let kind = step["type"].as_str().unwrap_or_default();
        let p = &step["parameters"];
        match kind {
            "execute" | "command" => {
                let command = self.command_line(&p["command"])?;
                // OSWorld's harness runs these and goes on whatever they exit with (a
                // `killall` of nothing, a pyautogui key press).
                Some(SetupStep::Exec {
                    command: format!("{{ {command}\n}} || true"),
                    timeout: None,
                })
            }
            "launch" => {
                let app = self.command_line(&p["command"])?;
                let program = app.split(' ').next().unwrap_or_default();
                // OSWorld starts and forgets; a program that opens no window (a port
                // forwarder, a script) must not be waited on for one.
                if matches!(
                    program,
                    "socat" | "python3" | "bash" | "sh" | "pkill" | "killall"
                ) || program == PYTHON
                {
                    return Some(SetupStep::Exec {
                        command: format!("setsid -f {app} > /dev/null 2>&1"),
                        timeout: Some(10.0),
                    });
                }
                Some(SetupStep::Launch { app })
            }
            "open" => match p["path"].as_str() {
                Some(path) => Some(SetupStep::Open {
                    target: vm_path(path),
                }),
                None => {
                    self.skip("an `open` step has no path");
                    None
                }
            },
            "sleep" => match p["seconds"].as_f64() {
                Some(seconds) if (0.0..=600.0).contains(&seconds) => {
                    Some(SetupStep::Sleep { seconds })
                }
                _ => {
                    self.skip("a `sleep` step has no usable seconds");
                    None
                }
            },
            "activate_window" => {
                let Some(name) = p["window_name"].as_str() else {
                    self.skip("an `activate_window` step has no window_name");
                    return None;
                };
                let strict = p["strict"].as_bool().unwrap_or(false);
                let by_class = p["by_class"].as_bool().unwrap_or(false);
                if self.in_post {
                    // After the agent, OSWorld raises the window if it is there and goes
                    // on if not (the agent may not have left it): so does wmctrl -a.
                    let mut flags = String::new();
                    if strict {
                        flags.push_str("-F ");
                    }
                    if by_class {
                        flags.push_str("-x ");
                    }
                    let mut names = vec![name.to_owned()];
                    if name.contains("Google Chrome") {
                        names.push(name.replace("Google Chrome", "Chromium"));
                    }
                    let tries: Vec<String> = names
                        .iter()
                        .map(|n| format!("wmctrl {flags}-a {}", shell_quote(n)))
                        .collect();
                    return Some(SetupStep::Exec {
                        command: format!("{{ {}; }} || true", tries.join(" || ")),
                        timeout: Some(10.0),
                    });
                }
                let re = window_regex(name, strict);
                Some(SetupStep::ActivateWindow {
                    title: (!by_class).then(|| re.clone()),
                    class: by_class.then_some(re),
                    timeout: None,
                })
            }
            "close_window" => {
                let Some(name) = p["window_name"].as_str() else {
                    self.skip("a `close_window` step has no window_name");
                    return None;
                };
                // wmctrl -c closes the first window whose title contains NAME (-F: is
                // exactly NAME; -x: NAME is the window's class); gracefully, as a click on
                // its close button would.
                let mut flags = String::new();
                if p["strict"].as_bool().unwrap_or(false) {
                    flags.push_str("-F ");
                }
                if p["by_class"].as_bool().unwrap_or(false) {
                    flags.push_str("-x ");
                }
                Some(SetupStep::Exec {
                    command: format!("wmctrl {flags}-c {}", shell_quote(name)),
                    timeout: Some(10.0),
                })
            }
            "download" => {
                let files = p["files"].as_array().cloned().unwrap_or_default();
                if files.is_empty() {
                    self.skip("a `download` step lists no files");
                    return None;
                }
                let mut uploads = Vec::new();
                for f in files {
                    let (Some(url), Some(path)) = (
                        f["url"].as_str().filter(|u| !u.trim().is_empty()),
                        f["path"].as_str().filter(|p| !p.trim().is_empty()),
                    ) else {
                        self.skip("a `download` step has a file without url or path");
                        return None;
                    };
                    uploads.push(SetupStep::Upload {
                        from: cache_path(url, path),
                        to: vm_path(path),
                    });
                }
                self.pending.extend(uploads);
                None
            }
            "chrome_open_tabs" => {
                self.chrome(p, "urls_to_open", "open", |u| u.as_str().map(shell_quote))
            }
            "chrome_close_tabs" => self.chrome(p, "urls_to_close", "close", |u| {
                u.as_u64().map(|i| i.to_string())
            }),
            "update_browse_history" => {
                let history = &p["history"];
                if !history.is_array() {
                    self.skip("an `update_browse_history` step has no history list");
                    return None;
                }
                Some(SetupStep::Exec {
                    command: format!(
                        "selfagent-chrome history {}",
                        shell_quote(&history.to_string())
                    ),
                    timeout: Some(60.0),
                })
            }
            "" => {
                self.skip("a step has no type");
                None
            }
            "googledrive" | "login" => {
                self.skip(format!(
                    "{NEEDS_ACCOUNT} (a `{kind}` setup step): not run here"
                ));
                None
            }
            other => {
                self.skip(format!("setup step `{other}` is not supported"));
                None
            }
        }
    }

    /// The evaluator as an `osworld` check, when every metric and getter it names runs
    /// here.
    fn check(&mut self, ev: &Value) -> Option<Check> {
        let as_list = |x: &Value| -> Vec<Value> {
            match x {
                Value::Array(a) => a.clone(),
                Value::Null => Vec::new(),
                other => vec![other.clone()],
            }
        };
        let funcs: Vec<String> = as_list(&ev["func"])
            .iter()
            .map(|f| f.as_str().unwrap_or_default().to_owned())
            .collect();
        if funcs.is_empty() || funcs.iter().any(String::is_empty) {
            self.skip("the evaluator has no `func`");
            return None;
        }
        let infeasible = funcs == ["infeasible"];
        for f in &funcs {
            if infeasible {
                break;
            }
            if let Some((_, why)) = UNSUPPORTED_METRICS.iter().find(|(m, _)| m == f) {
                self.skip(format!("checks with `{f}`, which {why}"));
            } else if !listed(METRICS, f) {
                self.skip(format!(
                    "checks with `{f}`, which OSWorld's desktop-env 1.0.2 does not have"
                ));
            }
        }
        let mut files = BTreeMap::new();
        for (side, getters) in [
            ("result", as_list(&ev["result"])),
            ("expected", as_list(&ev["expected"])),
        ] {
            if side == "result" && getters.is_empty() && !infeasible {
                self.skip("the evaluator has no result getter");
            }
            for g in getters
                .iter()
                .filter(|g| g.is_object() && g.as_object().is_some_and(|o| !o.is_empty()))
            {
                let kind = g["type"].as_str().unwrap_or_default();
                // What a checked command needs, the image must have.
                if kind.starts_with("vm_command") {
                    self.command_line(&g["command"]);
                }
                if let Some((_, why)) = UNSUPPORTED_GETTERS.iter().find(|(k, _)| *k == kind) {
                    if kind == "googledrive_file" {
                        self.skip(format!("{NEEDS_ACCOUNT} (the `googledrive_file` getter)"));
                    } else {
                        self.skip(format!("reads its {side} with `{kind}`, which {why}"));
                    }
                } else if !listed(GETTERS, kind) {
                    self.skip(format!("reads its {side} with `{kind}`, which OSWorld's desktop-env 1.0.2 does not have"));
                }
                if kind == "cloud_file" {
                    for (url, dest) in cloud_files(g) {
                        let name = dest.rsplit('/').next().unwrap_or(&dest).to_owned();
                        files.insert(name, cache_path(&url, &dest));
                    }
                }
            }
        }
        let mut evaluator = without_nulls(ev);
        if let Some(o) = evaluator.as_object_mut() {
            o.remove("postconfig");
        }
        Some(Check {
            kind: CheckKind::Osworld { evaluator, files },
            weight: 1.0,
        })
    }
}

/// Converts one OSWorld task for the office desktop.
pub fn convert(v: &Value) -> Result<Imported, Skipped> {
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    let mut c = Converter {
        reasons: Vec::new(),
        notes: Vec::new(),
        pending: Vec::new(),
        in_post: false,
        sudo: false,
    };
    let instruction = v["instruction"].as_str().unwrap_or_default().to_owned();
    if id.is_empty() || instruction.is_empty() {
        return Err(Skipped {
            id,
            reasons: vec!["not an OSWorld task (it needs `id` and `instruction`)".into()],
        });
    }
    let steps = |c: &mut Converter, list: &Value| -> Vec<SetupStep> {
        let mut out = Vec::new();
        for s in list.as_array().into_iter().flatten() {
            if let Some(step) = c.step(s) {
                out.push(step);
            }
            out.append(&mut c.pending);
        }
        out
    };
    let setup = steps(&mut c, &v["config"]);
    let ev = &v["evaluator"];
    c.in_post = true;
    let post = steps(&mut c, &ev["postconfig"]);
    let check = c.check(ev);
    if !c.reasons.is_empty() {
        return Err(Skipped {
            id,
            reasons: c.reasons,
        });
    }
    let task = Task {
        id: id.clone(),
        instruction,
        setup,
        limits: Limits::default(),
        post,
        check,
        tags: v["related_apps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        source: Some(format!("osworld:{id}")),
        from: None,
        desktop: Some("office".into()),
        // OSWorld's VM screen: its set-up steps click at coordinates of this size.
        screen: Some(crate::task::Screen {
            width: 1920,
            height: 1080,
        }),
        sudo: c.sudo,
    };
    // The result must be a task this version accepts (ids, regexes, limits).
    let text = task.to_toml().map_err(|e| Skipped {
        id: id.clone(),
        reasons: vec![e],
    })?;
    Task::parse(&text, "imported.toml").map_err(|e| Skipped {
        id: id.clone(),
        reasons: vec![e.to_string()],
    })?;
    Ok(Imported {
        task,
        notes: c.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn convert_json(v: Value) -> Result<Imported, Skipped> {
        convert(&v)
    }

    /// The command lines of the `exec` steps among `steps`.
    fn exec_lines(steps: &[SetupStep]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                SetupStep::Exec { command, .. } => Some(command.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn command_checks_with_include_exclude_convert() {
        let t = convert_json(json!({
            "id": "94d95f96-9699-4208-98ba-3c3119edf9c2",
            "instruction": "Install it.",
            "config": [{"type": "launch", "parameters": {"command": ["gnome-terminal"]}}],
            "evaluator": {
                "func": "check_include_exclude",
                "result": {"type": "vm_command_line", "command": "which spotify"},
                "expected": {"type": "rule", "rules": {"include": ["spotify"], "exclude": ["not found"]}}
            }
        }))
        .unwrap();
        assert_eq!(
            t.task.setup,
            vec![SetupStep::Launch {
                app: "gnome-terminal".into()
            }]
        );
        let CheckKind::Osworld { evaluator, files } = &t.task.check.as_ref().unwrap().kind else {
            panic!("{:?}", t.task.check)
        };
        assert_eq!(evaluator["func"], "check_include_exclude");
        assert_eq!(evaluator["result"]["command"], "which spotify");
        assert!(files.is_empty());
        assert_eq!(t.task.desktop.as_deref(), Some("office"));
        assert_eq!(
            t.task.screen,
            Some(crate::task::Screen {
                width: 1920,
                height: 1080
            })
        );
        assert_eq!(
            t.task.source.as_deref(),
            Some("osworld:94d95f96-9699-4208-98ba-3c3119edf9c2")
        );
    }

    #[test]
    fn downloads_to_home_relative_paths_land_where_osworlds_server_puts_them() {
        let t = convert_json(json!({
            "id": "rel-paths",
            "instruction": "Open them.",
            "config": [
                {"type": "download", "parameters": {"files": [
                    {"url": "https://x/a.docx", "path": "~/Desktop/a.docx"},
                    {"url": "https://x/b.xlsx", "path": "b.xlsx"},
                    {"url": "https://x/c.txt", "path": "$HOME/c.txt"},
                    {"url": "https://x/d.txt", "path": "/tmp/d.txt"}
                ]}},
                {"type": "open", "parameters": {"path": "~/Desktop/a.docx"}}
            ],
            "evaluator": {"func": "exact_match", "result": {"type": "vm_command_line", "command": "echo ok"}, "expected": {"type": "rule", "rules": {"expected": "ok"}}}
        }))
        .unwrap();
        let targets: Vec<String> = t
            .task
            .setup
            .iter()
            .map(|s| match s {
                SetupStep::Upload { to, .. } => to.clone(),
                SetupStep::Open { target } => format!("open {target}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            targets,
            [
                "/home/user/Desktop/a.docx",
                "/home/user/b.xlsx",
                "/home/user/c.txt",
                "/tmp/d.txt",
                "open /home/user/Desktop/a.docx"
            ]
        );
        // What the importer writes loads back.
        Task::parse(&t.task.to_toml().unwrap(), "t.toml").unwrap();
        // A file without a url is a reason to skip, not a task that does not load.
        let skipped = convert_json(json!({
            "id": "no-url", "instruction": "x",
            "config": [{"type": "download", "parameters": {"files": [{"url": "", "path": "a"}]}}],
            "evaluator": {"func": "exact_match", "result": {"type": "vm_command_line", "command": "echo ok"}, "expected": {"type": "rule", "rules": {"expected": "ok"}}}
        }))
        .unwrap_err();
        assert!(
            skipped.reasons[0].contains("without url or path"),
            "{skipped:?}"
        );
    }

    #[test]
    fn a_task_whose_steps_run_sudo_converts_for_the_sudo_desktop() {
        let t = convert_json(json!({
            "id": "s1",
            "instruction": "Install it. My password is 'password'.",
            "config": [{"type": "execute", "parameters": {"command": ["bash", "-c", "echo password | sudo -S apt-get update"]}}],
            "evaluator": {"func": "exact_match", "result": {"type": "vm_command_line", "command": "echo ok"}, "expected": {"type": "rule", "rules": {"expected": "ok"}}}
        }))
        .unwrap();
        assert!(t.task.sudo);
        assert!(
            t.notes.iter().any(|n| n.contains("--allow-sudo")),
            "{:?}",
            t.notes
        );
        let back = Task::parse(&t.task.to_toml().unwrap(), "t.toml").unwrap();
        assert!(back.sudo);
    }

    #[test]
    fn reasons_are_counted_by_kind() {
        assert_eq!(
            reason_kind(
                "`compare_text_file` compares with a download (https://x/y?id=1); import with --fetch"
            ),
            "`compare_text_file` compares with a download (a URL); import with --fetch"
        );
        let s = Skipped {
            id: "g".into(),
            reasons: vec![format!(
                "{NEEDS_ACCOUNT} (a `googledrive` setup step): not run here"
            )],
        };
        assert!(s.needs_account());
    }

    #[test]
    fn windows_are_awaited_in_setup_and_raised_if_there_after_the_agent() {
        let t = convert_json(json!({
            "id": "w1",
            "instruction": "Do it.",
            "config": [{"type": "activate_window", "parameters": {"window_name": "Google Chrome"}}],
            "evaluator": {
                "postconfig": [{"type": "activate_window", "parameters": {"window_name": "a.docx - LibreOffice Writer", "strict": true}}],
                "func": "exact_match", "result": {"type": "vm_command_line", "command": "echo ok"}, "expected": {"type": "rule", "rules": {"expected": "ok"}}}
        }))
        .unwrap();
        let SetupStep::ActivateWindow { title, .. } = &t.task.setup[0] else {
            panic!("{:?}", t.task.setup)
        };
        let re = regex::Regex::new(title.as_deref().unwrap()).unwrap();
        assert!(re.is_match("New Tab - Chromium") && re.is_match("New Tab - Google Chrome"));
        let SetupStep::Exec { command, .. } = &t.task.post[0] else {
            panic!("{:?}", t.task.post)
        };
        assert_eq!(
            command,
            "{ wmctrl -F -a 'a.docx - LibreOffice Writer'; } || true"
        );
    }

    #[test]
    fn close_window_steps_become_wmctrl() {
        let t = convert_json(json!({
            "id": "c1",
            "instruction": "Do it.",
            "config": [
                {"type": "close_window", "parameters": {"window_name": "Untitled 1 - Mousepad", "strict": true}},
                {"type": "close_window", "parameters": {"window_name": "Thunar", "by_class": true}}
            ],
            "evaluator": {"func": "exact_match", "result": {"type": "vm_command_line", "command": "echo ok"}, "expected": {"type": "rule", "rules": {"expected": "ok"}}}
        }))
        .unwrap();
        assert_eq!(
            exec_lines(&t.task.setup),
            vec![
                "wmctrl -F -c 'Untitled 1 - Mousepad'".to_owned(),
                "wmctrl -x -c Thunar".to_owned()
            ]
        );
    }

    #[test]
    fn downloads_come_from_the_import_cache_and_steps_map_to_the_office_desktop() {
        let t = convert_json(json!({
            "id": "x1",
            "instruction": "Do it.",
            "config": [
                {"type": "download", "parameters": {"files": [
                    {"url": "https://x/in.xlsx", "path": "/home/user/in.xlsx"},
                    {"url": "https://x/b.txt", "path": "/home/user/b.txt"}]}},
                {"type": "execute", "parameters": {"command": ["python", "-c", "import pyautogui; pyautogui.click(1, 1)"]}},
                {"type": "chrome_open_tabs", "parameters": {"urls_to_open": ["https://example.com"]}},
                {"type": "launch", "parameters": {"command": ["socat", "tcp-listen:9222,fork", "tcp:localhost:1337"]}}
            ],
            "evaluator": {"func": ["compare_table", "exact_match"], "conj": "and",
                "result": [{"type": "vm_file", "path": "/home/user/a.xlsx", "dest": "a.xlsx"}, {"type": "vm_command_line", "command": "echo 1"}],
                "expected": [{"type": "cloud_file", "path": "https://x/gold.xlsx", "dest": "gold.xlsx"}, null],
                "options": [{"rules": [{"type": "sheet_data", "sheet_idx0": 0, "sheet_idx1": "EI0"}]}, null]}
        }))
        .unwrap();
        let uploads: Vec<_> = t
            .task
            .setup
            .iter()
            .filter_map(|s| match s {
                SetupStep::Upload { from, to } => Some((from.clone(), to.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            uploads,
            vec![
                (
                    cache_path("https://x/in.xlsx", "/home/user/in.xlsx"),
                    "/home/user/in.xlsx".into()
                ),
                (
                    cache_path("https://x/b.txt", "/home/user/b.txt"),
                    "/home/user/b.txt".into()
                ),
            ]
        );
        assert!(cache_path("https://x/in.xlsx", "/home/user/in.xlsx").ends_with("-in.xlsx"));
        let commands = exec_lines(&t.task.setup);
        assert!(
            commands[0].starts_with("{ /opt/osworld/bin/python -c"),
            "{commands:?}"
        );
        assert!(commands[0].ends_with("} || true"), "{commands:?}");
        assert_eq!(commands[1], "selfagent-chrome open https://example.com");
        assert!(commands[2].starts_with("setsid -f socat"), "{commands:?}");
        let CheckKind::Osworld { evaluator, files } = &t.task.check.as_ref().unwrap().kind else {
            panic!("{:?}", t.task.check)
        };
        // Nulls become empty tables (TOML has no null); the gold file comes from the cache.
        assert_eq!(evaluator["expected"][1], json!({}));
        assert_eq!(
            files.get("gold.xlsx"),
            Some(&cache_path("https://x/gold.xlsx", "gold.xlsx"))
        );
        assert_eq!(downloads(&json!({"config": [], "evaluator": {"expected": {"type": "cloud_file", "path": "https://x/g", "dest": "g.txt"}}})).len(), 1);
        // It round-trips through TOML.
        let text = t.task.to_toml().unwrap();
        assert_eq!(Task::parse(&text, "t.toml").unwrap().check, t.task.check);
    }

    #[test]
    fn unsupported_parts_are_skipped_with_every_reason() {
        let s = convert_json(json!({
            "id": "x1",
            "instruction": "Do it.",
            "config": [
                {"type": "launch", "parameters": {"command": ["gnome-control-center"]}}
            ],
            "evaluator": {"func": ["compare_image_text", "no_such_metric"],
                "result": [{"type": "vm_wallpaper"}, {"type": "googledrive_file"}]}
        }))
        .unwrap_err();
        assert_eq!(s.id, "x1");
        let all = s.reasons.join("\n");
        for needle in ["GNOME Settings", "easyocr", "no_such_metric", "wallpaper"] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
        assert!(s.needs_account(), "{all}");
    }

    /// The importer's lists name only what the image's evaluator loads (the lists are made
    /// by `evaluate.py --list`; `tests/suite/osworld.rs` checks them against the image).
    #[test]
    fn the_unsupported_lists_name_loadable_functions() {
        for (g, _) in UNSUPPORTED_GETTERS {
            assert!(listed(GETTERS, g), "{g}");
        }
        for (m, _) in UNSUPPORTED_METRICS {
            assert!(listed(METRICS, m), "{m}");
        }
    }
}
