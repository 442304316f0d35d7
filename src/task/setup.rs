//! Running a task's setup (and post) steps on a live desktop.
//!
//! Steps wait for their effect instead of sleeping: `launch` returns when the program's
//! window is there, `open` when a window appeared or changed its title, `wait_for_window`
//! and `activate_window` when the window manager lists (and focuses) the window. After the
//! last setup step the screen must go quiet before the agent's first screenshot, so the
//! agent never sees a half-painted application.

use super::SetupStep;
use crate::desktop::{Desktop, SettleOptions, Window, WindowMatch, launch_command, open_command};
use crate::sandbox::ExecOptions;
use regex::Regex;
use std::time::{Duration, Instant};

/// How long `launch` and `open` wait for a window, and the default of the window steps.
pub const WINDOW_TIMEOUT: Duration = Duration::from_secs(30);
/// The default timeout of an `exec` step.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// After setup: the screen must be unchanged this long before the agent looks.
const SETTLED_QUIET: Duration = Duration::from_millis(300);
/// The largest file an `upload` step copies (OSWorld's videos are tens of megabytes).
const MAX_UPLOAD: u64 = 512 << 20;

impl SetupStep {
    /// The step in words, for progress and recordings.
    pub fn describe(&self) -> String {
        let window = |title: &Option<String>, class: &Option<String>| {
            let mut parts = Vec::new();
            if let Some(t) = title {
                parts.push(format!("title /{t}/"));
            }
            if let Some(c) = class {
                parts.push(format!("class /{c}/"));
            }
            parts.join(" and ")
        };
        match self {
            Self::Exec { command, .. } => format!("exec `{command}`"),
            Self::WriteFile { path, content } => {
                format!("write {path} ({} bytes)", content.len())
            }
            Self::Launch { app } => format!("launch {app}"),
            Self::Open { target } => format!("open {target}"),
            Self::WaitForWindow { title, class, .. } => {
                format!("wait for a window with {}", window(title, class))
            }
            Self::ActivateWindow { title, class, .. } => {
                format!("activate the window with {}", window(title, class))
            }
            Self::Sleep { seconds } => format!("sleep {seconds} s"),
            Self::Upload { from, to } => format!("upload {from} to {to}"),
        }
    }
}

fn secs(timeout: Option<f64>, default: Duration) -> Duration {
    timeout.map_or(default, Duration::from_secs_f64)
}

fn window_match(title: &Option<String>, class: &Option<String>) -> Result<WindowMatch, String> {
    let re = |s: &Option<String>| {
        s.as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| e.to_string())
    };
    Ok(WindowMatch {
        title: re(title)?,
        class: re(class)?,
    })
}

/// Why a setup step failed, kept apart by whose fault it is: the episode's harness (the
/// desktop broke), the task file (it asks for something impossible), or the step itself
/// (its command failed, its window never came). The words are the desktop's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The desktop or its container did not do what was asked (gone, unreachable).
    #[error("{0}")]
    Desktop(String),
    /// The task asks for what cannot be (a bad regex, a file that is not there).
    #[error("{0}")]
    Task(String),
    /// The step ran and failed: an exit code, a timeout, no window.
    #[error("{0}")]
    Failed(String),
}

fn desktop_err(e: impl std::fmt::Display) -> SetupError {
    SetupError::Desktop(e.to_string())
}

/// Runs one step; the error says what went wrong in the desktop's words.
pub async fn run_step(desktop: &Desktop, step: &SetupStep) -> Result<(), SetupError> {
    let sandbox = desktop.sandbox();
    match step {
        SetupStep::Exec { command, timeout } => {
            let limit = secs(*timeout, EXEC_TIMEOUT);
            let out = sandbox
                .sh(
                    command,
                    &ExecOptions {
                        timeout: Some(limit),
                        ..Default::default()
                    },
                )
                .await
                .map_err(desktop_err)?;
            if out.timed_out {
                return Err(SetupError::Failed(format!(
                    "did not finish in {} s",
                    limit.as_secs_f64()
                )));
            }
            if !out.success() {
                return Err(SetupError::Failed(format!(
                    "exit code {}: {}",
                    out.exit_code,
                    tail(&out.stderr_text(), &out.stdout_text())
                )));
            }
            Ok(())
        }
        SetupStep::WriteFile { path, content } => sandbox
            .write_file(path, content.as_bytes())
            .await
            .map_err(desktop_err),
        SetupStep::Launch { app } => {
            // `launch = "mousepad ~/notes.txt"`: the application, then its arguments.
            let command = launch_command(app);
            let before = ids(&desktop.windows().await.map_err(desktop_err)?);
            let process = sandbox.spawn(&command).await.map_err(desktop_err)?;
            let new_window = |ws: &[Window]| ws.iter().any(|w| !before.contains(&w.id));
            match wait_windows(desktop, WINDOW_TIMEOUT, new_window).await {
                Ok(()) => Ok(()),
                Err(e) => Err(SetupError::Failed(format!(
                    "{e}{}",
                    process_log(desktop, process.log.as_deref()).await
                ))),
            }
        }
        SetupStep::Open { target } => {
            let before: Vec<(u32, String)> = desktop
                .windows()
                .await
                .map_err(desktop_err)?
                .into_iter()
                .map(|w| (w.id, w.title))
                .collect();
            let process = sandbox
                .spawn(&open_command(target))
                .await
                .map_err(desktop_err)?;
            // A new window, or a running program showing it (a title changes).
            let changed = |ws: &[Window]| {
                ws.iter().any(|w| {
                    !before
                        .iter()
                        .any(|(id, title)| *id == w.id && *title == w.title)
                })
            };
            match wait_windows(desktop, WINDOW_TIMEOUT, changed).await {
                Ok(()) => Ok(()),
                Err(e) => Err(SetupError::Failed(format!(
                    "{e}{}",
                    process_log(desktop, process.log.as_deref()).await
                ))),
            }
        }
        SetupStep::WaitForWindow {
            title,
            class,
            timeout,
        } => {
            let m = window_match(title, class).map_err(SetupError::Task)?;
            desktop
                .wait_window(&m, secs(*timeout, WINDOW_TIMEOUT))
                .await
                .map(|_| ())
                .map_err(|e| SetupError::Failed(e.to_string()))
        }
        SetupStep::ActivateWindow {
            title,
            class,
            timeout,
        } => {
            let m = window_match(title, class).map_err(SetupError::Task)?;
            let w = desktop
                .wait_window(&m, secs(*timeout, WINDOW_TIMEOUT))
                .await
                .map_err(|e| SetupError::Failed(e.to_string()))?;
            desktop
                .focus(w.id, Duration::from_secs(5))
                .await
                .map(|_| ())
                .map_err(|e| SetupError::Failed(e.to_string()))
        }
        SetupStep::Sleep { seconds } => {
            tokio::time::sleep(Duration::from_secs_f64(*seconds)).await;
            Ok(())
        }
        SetupStep::Upload { from, to } => {
            let meta = std::fs::metadata(from).map_err(|e| {
                SetupError::Task(format!(
                    "{from} is not there ({e}): an imported task's downloads come from its \
                     import cache, made by `selfagent tasks import-osworld --fetch`"
                ))
            })?;
            if meta.len() > MAX_UPLOAD {
                return Err(SetupError::Task(format!(
                    "{from} is larger than {MAX_UPLOAD} bytes"
                )));
            }
            let data = std::fs::read(from)
                .map_err(|e| SetupError::Task(format!("reading {from}: {e}")))?;
            sandbox.write_file(to, &data).await.map_err(desktop_err)
        }
    }
}

/// Waits until the screen has been quiet for a moment (after setup, before the agent's
/// first look); at most `max`.
pub async fn settle_after(desktop: &Desktop, since: Instant, max: Duration) {
    let mark = desktop.mark();
    let since = crate::desktop::Mark {
        stamp: mark.stamp,
        taken: since.min(mark.taken),
    };
    desktop
        .settle(
            since,
            SettleOptions {
                quiet: SETTLED_QUIET,
                first_change: Duration::ZERO,
                max,
            },
        )
        .await;
}

fn ids(windows: &[Window]) -> Vec<u32> {
    windows.iter().map(|w| w.id).collect()
}

async fn wait_windows(
    desktop: &Desktop,
    timeout: Duration,
    check: impl Fn(&[Window]) -> bool,
) -> Result<(), String> {
    desktop
        .wait_windows(timeout, "a new window", |ws| check(ws).then_some(()))
        .await
        .map_err(|e| e.to_string())
}

/// The end of a background process's log, when it has one, for an error message.
async fn process_log(desktop: &Desktop, log: Option<&str>) -> String {
    let Some(log) = log else {
        return String::new();
    };
    match desktop.sandbox().read_file(log).await {
        Ok(bytes) if !bytes.is_empty() => {
            format!(
                "; the program printed: {}",
                tail(&String::from_utf8_lossy(&bytes), "")
            )
        }
        _ => String::new(),
    }
}

/// The last lines of a command's output, for error messages.
fn tail(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(5);
    let joined = lines[start..].join(" | ");
    if joined.is_empty() {
        "no output".into()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_describe_themselves() {
        let step = SetupStep::WaitForWindow {
            title: Some("notes".into()),
            class: None,
            timeout: None,
        };
        assert_eq!(step.describe(), "wait for a window with title /notes/");
        assert_eq!(
            SetupStep::Exec {
                command: "true".into(),
                timeout: None
            }
            .describe(),
            "exec `true`"
        );
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail("", "a\nb\n"), "a | b");
        assert_eq!(tail("1\n2\n3\n4\n5\n6\n7", "x"), "3 | 4 | 5 | 6 | 7");
        assert_eq!(tail(" ", ""), "no output");
    }
}
