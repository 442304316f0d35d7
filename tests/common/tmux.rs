//! A terminal for the real binary's TUI: a tmux server of the test's own (send-keys,
//! capture-pane), waited on for what the screen shows, never for time.

use std::process::Command;
use std::time::Duration;

/// A tmux server of our own (its own socket), removed on drop.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn start(name: &str, cols: u16, rows: u16, command: &str) -> Self {
        let socket = format!("selfagent-test-{}-{name}", std::process::id());
        let t = Self { socket };
        let ok = t
            .cmd(&[
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
                command,
            ])
            .status
            .success();
        assert!(ok, "tmux did not start");
        t
    }

    pub fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is installed")
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    pub fn keys(&self, keys: &str) {
        self.cmd(&["send-keys", "-t", "t", keys]);
    }

    /// Waits until the screen satisfies `f`; panics with the screen after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&str) -> bool,
    ) -> String {
        super::wait::eventually(what, timeout, || {
            let s = self.screen();
            let holds = f(&s);
            async move {
                if holds {
                    Ok(s)
                } else {
                    Err(format!("the screen:\n{s}"))
                }
            }
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}
