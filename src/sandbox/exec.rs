//! Running commands in a sandbox: foreground (exit code, stdout, stderr), background
//! (a process id and a log file), process listing and signals.

use super::provider::{ExecRequest, Output};
use super::{Sandbox, SandboxError};
use futures_util::StreamExt;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Most output kept per stream; the rest is dropped and `truncated` set.
const MAX_OUTPUT: usize = 64 << 20;

#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// User to run as (default: the desktop's user, uid 1000).
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub env: Vec<(String, String)>,
    /// Bytes written to the command's stdin, which is then closed.
    pub stdin: Option<Vec<u8>>,
    /// Kill the command after this long (TERM, then KILL 2 s later).
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecOutput {
    pub exit_code: i64,
    #[serde(serialize_with = "lossy")]
    pub stdout: Vec<u8>,
    #[serde(serialize_with = "lossy")]
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    pub truncated: bool,
    pub duration_ms: u64,
}

fn lossy<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0 && !self.timed_out
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A process running in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    pub command: String,
    /// Where a background command's output goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

impl Sandbox {
    /// Runs `argv` and waits for it. The exit code is the command's; a command killed by
    /// the timeout has `timed_out` set.
    pub async fn exec<S: AsRef<str>>(
        &self,
        argv: &[S],
        opts: &ExecOptions,
    ) -> Result<ExecOutput, SandboxError> {
        if argv.is_empty() {
            return Err(SandboxError::Invalid("no command given".into()));
        }
        let started = Instant::now();
        let mut cmd: Vec<String> = Vec::with_capacity(argv.len() + 4);
        if let Some(t) = opts.timeout {
            cmd.extend([
                "timeout".to_owned(),
                "--kill-after=2".to_owned(),
                format!("{:.3}", t.as_secs_f64()),
            ]);
        }
        cmd.extend(argv.iter().map(|s| s.as_ref().to_owned()));
        let shown = argv
            .first()
            .map(|s| s.as_ref().to_owned())
            .unwrap_or_default();
        let mut attached = self
            .engine
            .provider
            .exec(
                &self.id,
                ExecRequest {
                    cmd,
                    user: opts
                        .user
                        .clone()
                        .unwrap_or_else(|| super::DESKTOP_USER.to_owned()),
                    env: exec_env(&opts.env),
                    workdir: opts.workdir.clone(),
                    stdin: opts.stdin.is_some(),
                    stderr: true,
                },
            )
            .await?;
        let mut out = ExecOutput {
            exit_code: -1,
            stdout: Vec::new(),
            stderr: Vec::new(),
            timed_out: false,
            truncated: false,
            duration_ms: 0,
        };
        let mut input = attached.input;
        let writer = opts.stdin.clone().map(|data| {
            tokio::spawn(async move {
                let _ = input.write_all(&data).await;
                let _ = input.shutdown().await;
            })
        });
        while let Some(chunk) = attached.output.next().await {
            let (stream, bytes) = chunk?;
            let buf = match stream {
                Output::Stdout => &mut out.stdout,
                Output::Stderr => &mut out.stderr,
            };
            let room = MAX_OUTPUT.saturating_sub(buf.len());
            out.truncated |= bytes.len() > room;
            buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
        if let Some(writer) = writer {
            writer.abort();
        }
        let exit_code = self
            .engine
            .provider
            .exec_exit_code(&attached.id)
            .await
            .map_err(|e| SandboxError::Provider {
                doing: format!("reading the exit code of `{shown}`"),
                source: Box::new(e),
            })?;
        out.exit_code = exit_code.unwrap_or(-1);
        // `timeout` exits 124 (TERM) or 137 (KILL) when it had to stop the command.
        out.timed_out = opts.timeout.is_some() && matches!(out.exit_code, 124 | 137);
        out.duration_ms = started.elapsed().as_millis() as u64;
        Ok(out)
    }

    /// Runs a shell command line with `sh -c`.
    pub async fn sh(&self, script: &str, opts: &ExecOptions) -> Result<ExecOutput, SandboxError> {
        self.exec(&["sh", "-c", script], opts).await
    }

    /// Starts a shell command line in the background, in its own session, with its output
    /// going to a log file in the sandbox. Returns at once with the process.
    pub async fn spawn(&self, command: &str) -> Result<Process, SandboxError> {
        let log = format!("/home/user/.selfagent/bg/{}.log", rand::random::<u32>());
        let script = r#"mkdir -p "$(dirname "$2")" && cd "$HOME" && setsid sh -c "$1" > "$2" 2>&1 < /dev/null & echo $!"#;
        let out = self
            .exec(
                &["sh", "-c", script, "sh", command, &log],
                &ExecOptions::default(),
            )
            .await?;
        let pid = out.stdout_text().trim().parse::<u32>().map_err(|_| {
            SandboxError::io(
                format!("starting `{command}` in the background"),
                format!("exit {}: {}", out.exit_code, out.stderr_text().trim()),
            )
        })?;
        Ok(Process {
            pid,
            ppid: None,
            command: command.to_owned(),
            log: Some(log),
        })
    }

    /// Every process in the sandbox except the ones `ps` itself needs.
    pub async fn processes(&self) -> Result<Vec<Process>, SandboxError> {
        let out = self
            .exec(&["ps", "-eo", "pid=,ppid=,args="], &ExecOptions::default())
            .await?;
        let own = |cmd: &str| cmd.starts_with("ps -eo");
        Ok(out
            .stdout_text()
            .lines()
            .filter_map(|line| {
                let mut it = line.split_whitespace();
                let pid = it.next()?.parse().ok()?;
                let ppid = it.next()?.parse().ok();
                let command = it.collect::<Vec<_>>().join(" ");
                (!own(&command)).then_some(Process {
                    pid,
                    ppid,
                    command,
                    log: None,
                })
            })
            .collect())
    }

    /// Sends a signal (`TERM`, `KILL`, ...) to a process and its process group.
    pub async fn kill_process(&self, pid: u32, signal: &str) -> Result<(), SandboxError> {
        if !signal.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(SandboxError::Invalid(format!("bad signal name '{signal}'")));
        }
        let script = format!("kill -{signal} -- -{pid} 2>/dev/null || kill -{signal} {pid}");
        let out = self.sh(&script, &ExecOptions::default()).await?;
        if !out.success() {
            return Err(SandboxError::io(
                format!("sending {signal} to process {pid}"),
                out.stderr_text().trim(),
            ));
        }
        Ok(())
    }
}

/// The environment of every exec: the caller's variables (the container's own environment
/// holds no secret: the credentials never pass through it).
fn exec_env(extra: &[(String, String)]) -> Vec<String> {
    extra.iter().map(|(k, v)| format!("{k}={v}")).collect()
}
