//! Stop requests from outside: Ctrl-C (SIGINT), SIGTERM (a service manager, `kill`, a
//! container stop) and SIGHUP (a closed terminal or ssh session) all mean the same: stop
//! cleanly after the current action, record what happened, remove the desktops.

use tokio::signal::unix::{SignalKind, signal};

/// The signals that ask for a stop, listened to from the moment this is made.
pub struct StopSignals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    pub fn new() -> Self {
        Self {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Waits for the next stop request; returns the signal's name.
    pub async fn recv(&mut self) -> &'static str {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.int) => "SIGINT",
            _ = next(&mut self.term) => "SIGTERM",
            _ = next(&mut self.hup) => "SIGHUP",
        }
    }
}

impl Default for StopSignals {
    fn default() -> Self {
        Self::new()
    }
}

/// For one headless episode: the first stop request stops the agent after its current
/// action, a second one quits at once with `exit_code`. Abort the task when the episode ends.
pub fn stop_episode_on_signals(
    control: tokio::sync::mpsc::Sender<crate::agent::Command>,
    exit_code: u8,
) -> tokio::task::JoinHandle<()> {
    let mut stop_signals = StopSignals::new();
    tokio::spawn(async move {
        let name = stop_signals.recv().await;
        eprintln!("{name}: stopping after the current action (again to quit at once)");
        let _ = control.send(crate::agent::Command::Stop).await;
        stop_signals.recv().await;
        std::process::exit(i32::from(exit_code));
    })
}
