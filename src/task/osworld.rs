//! Importing OSWorld task files (`evaluation_examples/examples/<domain>/<id>.json`).
//!
//! The subset that fits this desktop converts:
//! - setup (`config`) and `evaluator.postconfig` steps: `execute` / `command` (a command
//!   line), `launch`, `open`, `sleep`, `activate_window`, `close_window` (wmctrl), and
//!   `download` (fetched inside the desktop when the task runs, so it needs the network
//!   then);
//! - checks: a `vm_command_line` or `vm_file` result with `exact_match`,
//!   `check_include_exclude` or `compare_text_file`, several of them combined with `conj`.
//!
//! OSWorld's Ubuntu programs map to this desktop's (gnome-terminal to the terminal, nautilus
//! to the file manager, gedit to the editor). Everything else is skipped with a reason:
//! pyautogui scripts, sudo, programs the image does not have (Chrome, LibreOffice, ...),
//! other getters and metrics. A `compare_text_file` whose expected file is a download
//! converts only when that file was fetched at import time (`--fetch`).

use super::{Check, CheckKind, Limits, SetupStep, Task};
use crate::desktop::shell_quote;
use serde_json::Value;
use std::collections::HashMap;

/// Programs OSWorld's Ubuntu image has and this desktop does not.
const MISSING_APPS: &[(&str, &str)] = &[
    ("google-chrome", "Google Chrome"),
    ("chrome", "Google Chrome"),
    ("chromium", "Chromium"),
    ("chromium-browser", "Chromium"),
    ("libreoffice", "LibreOffice"),
    ("soffice", "LibreOffice"),
    ("code", "VS Code"),
    ("gimp", "GIMP"),
    ("vlc", "VLC"),
    ("thunderbird", "Thunderbird"),
    ("gnome-control-center", "GNOME Settings"),
];

/// OSWorld's programs and this desktop's equivalents.
const EXEC_MAP: &[(&str, &str)] = &[
    ("gnome-terminal", "xfce4-terminal"),
    ("nautilus", "thunar"),
    ("gedit", "mousepad"),
    ("firefox", "firefox-esr"),
];

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

/// The kind of a skip reason, for counting: the reason with what varies taken out
/// (`reads its result with `vlc_playing_info`` stays whole: the getter is the kind).
pub fn reason_kind(reason: &str) -> String {
    // Options and URLs differ per task; the function, getter or step named is the kind.
    if reason.starts_with(NEEDS_ACCOUNT) {
        return NEEDS_ACCOUNT.to_owned();
    }
    if let Some((head, _)) = reason.split_once(" options ") {
        return format!("{head} options are not supported");
    }
    match (reason.find(" (http"), reason.find(')')) {
        (Some(start), Some(end)) if end > start => {
            format!("{} (a URL){}", &reason[..start], &reason[end + 1..])
        }
        _ => reason.to_owned(),
    }
}

/// URLs of expected files (`cloud_file`) a task compares against, to fetch before
/// converting it with `--fetch`.
pub fn expected_downloads(v: &Value) -> Vec<String> {
    let ev = &v["evaluator"];
    let expected: Vec<&Value> = match &ev["expected"] {
        Value::Array(list) => list.iter().collect(),
        other => vec![other],
    };
    expected
        .into_iter()
        .filter(|e| e["type"] == "cloud_file")
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect()
}

struct Converter<'a> {
    reasons: Vec<String>,
    notes: Vec<String>,
    fetched: &'a HashMap<String, String>,
}

impl Converter<'_> {
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
            && (first == "python" || first == "python3.10")
        {
            "python3".clone_into(first);
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
        if line.contains("pyautogui") {
            self.skip("a step scripts the mouse or keyboard with pyautogui (not in this desktop)");
        }
        if line
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
            .any(|w| w == "sudo")
        {
            self.skip("a step runs sudo (the desktop's user has no root)");
        }
        for word in
            line.split(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == ';' || c == '&')
        {
            let program = word.rsplit('/').next().unwrap_or(word);
            if let Some((_, name)) = MISSING_APPS.iter().find(|(p, _)| *p == program) {
                self.skip(format!(
                    "needs {name}, which the desktop image does not have"
                ));
            }
        }
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

    fn step(&mut self, step: &Value) -> Option<SetupStep> {
        let kind = step["type"].as_str().unwrap_or_default();
        let p = &step["parameters"];
        match kind {
            "execute" | "command" => {
                let command = self.command_line(&p["command"])?;
                Some(SetupStep::Exec {
                    command,
                    timeout: None,
                })
            }
            "launch" => {
                let app = self.command_line(&p["command"])?;
                Some(SetupStep::Launch { app })
            }
            "open" => match p["path"].as_str() {
                Some(path) => Some(SetupStep::Open {
                    target: path.to_owned(),
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
                let re = if p["strict"].as_bool().unwrap_or(false) {
                    format!("^{}$", regex::escape(name))
                } else {
                    regex::escape(name)
                };
                let by_class = p["by_class"].as_bool().unwrap_or(false);
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
                let mut lines = Vec::new();
                for f in files {
                    let (Some(url), Some(path)) = (f["url"].as_str(), f["path"].as_str()) else {
                        self.skip("a `download` step has a file without url or path");
                        return None;
                    };
                    lines.push(format!(
                        "mkdir -p \"$(dirname {p})\" && python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' {u} {p}",
                        u = shell_quote(url),
                        p = shell_quote(path)
                    ));
                }
                self.notes.push(
                    "downloads happen in the desktop when the task runs: it needs the network"
                        .into(),
                );
                Some(SetupStep::Exec {
                    command: lines.join(" && "),
                    timeout: Some(300.0),
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

    fn check(
        &mut self,
        func: &str,
        result: &Value,
        expected: &Value,
        options: &Value,
    ) -> Option<Check> {
        let leaf = |kind| Check { kind, weight: 1.0 };
        if options.as_object().is_some_and(|o| {
            o.values()
                .any(|v| !matches!(v, Value::Null | Value::Bool(false)))
        }) {
            self.skip(format!("`{func}` options {options} are not supported"));
            return None;
        }
        let rules = &expected["rules"];
        let getter = result["type"].as_str().unwrap_or_default();
        match (getter, func) {
            ("vm_command_line", "exact_match" | "check_include_exclude") => {
                let command = self.command_line(&result["command"])?;
                let stdout = |re: String| {
                    leaf(CheckKind::Command {
                        command: command.clone(),
                        exit_code: None,
                        stdout: Some(re),
                        stderr: None,
                    })
                };
                if func == "exact_match" {
                    let Some(want) = rules["expected"].as_str() else {
                        self.skip("`exact_match` has no expected text");
                        return None;
                    };
                    // Checks see stdout without its final newline.
                    let want = want.strip_suffix('\n').unwrap_or(want);
                    return Some(stdout(format!("(?s)\\A{}\\z", regex::escape(want))));
                }
                self.include_exclude(rules, |text, present| {
                    let c = stdout(regex::escape(text));
                    if present {
                        c
                    } else {
                        leaf(CheckKind::Not(Box::new(c)))
                    }
                })
            }
            ("vm_file", "exact_match" | "check_include_exclude" | "compare_text_file") => {
                let Some(path) = result["path"].as_str().map(str::to_owned) else {
                    self.skip("a `vm_file` result has no single path");
                    return None;
                };
                let file = |contains: Option<String>, equals: Option<String>| {
                    leaf(CheckKind::File {
                        path: path.clone(),
                        exists: true,
                        contains,
                        equals,
                        matches: None,
                    })
                };
                match func {
                    "exact_match" => {
                        let Some(want) = rules["expected"].as_str() else {
                            self.skip("`exact_match` has no expected text");
                            return None;
                        };
                        self.notes
                            .push(format!("exact_match on {path} compares the file's content"));
                        Some(file(None, Some(want.to_owned())))
                    }
                    "check_include_exclude" => self.include_exclude(rules, |text, present| {
                        let c = file(Some(text.to_owned()), None);
                        if present {
                            c
                        } else {
                            leaf(CheckKind::Not(Box::new(c)))
                        }
                    }),
                    _ => {
                        let want = match expected["type"].as_str() {
                            Some("cloud_file") => {
                                let url = expected["path"].as_str().unwrap_or_default();
                                match self.fetched.get(url) {
                                    Some(text) => text.clone(),
                                    None => {
                                        self.skip(format!(
                                            "`compare_text_file` compares with a download ({url}); import with --fetch to fetch it now"
                                        ));
                                        return None;
                                    }
                                }
                            }
                            Some("rule") if rules["expected"].is_string() => {
                                rules["expected"].as_str().unwrap_or_default().to_owned()
                            }
                            other => {
                                self.skip(format!(
                                    "`compare_text_file` expects a `{}` file, which is not supported",
                                    other.unwrap_or("?")
                                ));
                                return None;
                            }
                        };
                        self.notes
                            .push("compare_text_file ignores trailing newlines".into());
                        Some(file(None, Some(want)))
                    }
                }
            }
            ("vm_command_line" | "vm_file", _) => {
                self.skip(format!(
                    "checks with `{func}`, which selfagent cannot evaluate"
                ));
                None
            }
            ("", _) => {
                self.skip("the evaluator has no result getter");
                None
            }
            (other, _) => {
                self.skip(format!(
                    "reads its result with `{other}`, which selfagent cannot do"
                ));
                None
            }
        }
    }

    /// `check_include_exclude` rules: every include present, every exclude absent.
    fn include_exclude(
        &mut self,
        rules: &Value,
        make: impl Fn(&str, bool) -> Check,
    ) -> Option<Check> {
        let list = |k: &str| -> Vec<String> {
            rules[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut checks: Vec<Check> = list("include").iter().map(|t| make(t, true)).collect();
        checks.extend(list("exclude").iter().map(|t| make(t, false)));
        if checks.is_empty() {
            self.skip("`check_include_exclude` has neither include nor exclude rules");
            return None;
        }
        Some(if checks.len() == 1 {
            checks.remove(0)
        } else {
            Check {
                kind: CheckKind::All(checks),
                weight: 1.0,
            }
        })
    }
}

/// Converts one OSWorld task; `fetched` holds expected files downloaded at import time.
pub fn convert(v: &Value, fetched: &HashMap<String, String>) -> Result<Imported, Skipped> {
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    let mut c = Converter {
        reasons: Vec::new(),
        notes: Vec::new(),
        fetched,
    };
    let instruction = v["instruction"].as_str().unwrap_or_default().to_owned();
    if id.is_empty() || instruction.is_empty() {
        return Err(Skipped {
            id,
            reasons: vec!["not an OSWorld task (it needs `id` and `instruction`)".into()],
        });
    }
    let steps = |c: &mut Converter<'_>, list: &Value| -> Vec<SetupStep> {
        list.as_array()
            .map(|a| a.iter().filter_map(|s| c.step(s)).collect())
            .unwrap_or_default()
    };
    let setup = steps(&mut c, &v["config"]);
    let ev = &v["evaluator"];
    let post = steps(&mut c, &ev["postconfig"]);
    let as_list = |x: &Value| -> Vec<Value> {
        match x {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        }
    };
    let funcs: Vec<String> = as_list(&ev["func"])
        .iter()
        .map(|f| f.as_str().unwrap_or_default().to_owned())
        .collect();
    let mut check = None;
    if funcs.iter().any(|f| f == "infeasible") {
        c.skip("an infeasible task (graded on the agent giving up), which checks cannot express");
    } else if funcs.iter().all(String::is_empty) {
        c.skip("the evaluator has no `func`");
    } else {
        let (results, expected, options) = (
            as_list(&ev["result"]),
            as_list(&ev["expected"]),
            as_list(&ev["options"]),
        );
        if results.len() != funcs.len() {
            c.skip("the evaluator's `func` and `result` lists differ in length");
        } else {
            let mut checks = Vec::new();
            for (i, func) in funcs.iter().enumerate() {
                let e = expected.get(i).cloned().unwrap_or(Value::Null);
                let o = options.get(i).cloned().unwrap_or(Value::Null);
                if let Some(ch) = c.check(func, &results[i], &e, &o) {
                    checks.push(ch);
                }
            }
            check = match (checks.len(), ev["conj"].as_str().unwrap_or("and")) {
                (0, _) => None,
                (1, _) => checks.pop(),
                (_, "or") => Some(Check {
                    kind: CheckKind::Any(checks),
                    weight: 1.0,
                }),
                _ => Some(Check {
                    kind: CheckKind::All(checks),
                    weight: 1.0,
                }),
            };
        }
    }
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
        convert(&v, &HashMap::new())
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
                app: "xfce4-terminal".into()
            }]
        );
        let CheckKind::All(children) = &t.task.check.as_ref().unwrap().kind else {
            panic!("{:?}", t.task.check)
        };
        assert!(matches!(&children[1].kind, CheckKind::Not(_)));
        assert_eq!(
            t.task.source.as_deref(),
            Some("osworld:94d95f96-9699-4208-98ba-3c3119edf9c2")
        );
    }

    #[test]
    fn reasons_are_counted_by_kind() {
        assert_eq!(
            reason_kind("`compare_table` options {\"rules\": [1]} are not supported"),
            "`compare_table` options are not supported"
        );
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
        let lines: Vec<String> = t
            .task
            .setup
            .iter()
            .filter_map(|s| match s {
                SetupStep::Exec { command, .. } => Some(command.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                "wmctrl -F -c 'Untitled 1 - Mousepad'".to_owned(),
                "wmctrl -x -c Thunar".to_owned()
            ]
        );
    }

    #[test]
    fn unsupported_parts_are_skipped_with_every_reason() {
        let s = convert_json(json!({
            "id": "x1",
            "instruction": "Do it.",
            "config": [
                {"type": "execute", "parameters": {"command": ["python", "-c", "import pyautogui; pyautogui.click(1, 1)"]}},
                {"type": "chrome_open_tabs", "parameters": {"urls_to_open": ["https://example.com"]}},
                {"type": "launch", "parameters": {"command": ["google-chrome", "--remote-debugging-port=1337"]}}
            ],
            "evaluator": {"func": "compare_table", "result": {"type": "vm_file", "path": "/home/user/a.xlsx"}, "expected": {"type": "cloud_file", "path": "https://x/a.xlsx"}}
        }))
        .unwrap_err();
        assert_eq!(s.id, "x1");
        let all = s.reasons.join("\n");
        for needle in [
            "pyautogui",
            "chrome_open_tabs",
            "Google Chrome",
            "compare_table",
        ] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
    }
}
