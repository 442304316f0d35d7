//! Where log lines go. On a plain command they go to stderr. While the terminal UI owns the
//! screen, a line on stderr would be drawn across it (the status bar scrolled away, half a
//! line over the footer), so they go to a file instead, `$XDG_STATE_HOME/selfagent/tui.log`,
//! whose path the UI's help shows and the process prints at exit when something was logged.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static TO_FILE: AtomicBool = AtomicBool::new(false);
static LINES_IN_FILE: AtomicUsize = AtomicUsize::new(0);
static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// The log file used while the terminal UI is on screen.
pub fn file_path() -> PathBuf {
    crate::sandbox::leases::state_dir().join("tui.log")
}

/// From now on, log lines go to [`file_path`] (appended; created 0600).
pub fn divert_to_file() {
    let _ = divert_to(&file_path());
}

/// From now on, log lines go to `path` (appended; created 0600): `selfagent mcp --log`.
pub fn divert_to(path: &std::path::Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    if let Ok(mut slot) = FILE.lock() {
        *slot = Some(file);
        TO_FILE.store(true, Ordering::SeqCst);
    }
    Ok(())
}

/// Back to stderr; returns how many lines went to the file meanwhile.
pub fn restore() -> usize {
    TO_FILE.store(false, Ordering::SeqCst);
    if let Ok(mut slot) = FILE.lock() {
        *slot = None;
    }
    LINES_IN_FILE.swap(0, Ordering::SeqCst)
}

/// The `tracing_subscriber` writer: stderr, or the file while the UI is on screen.
#[derive(Clone, Copy, Default)]
pub struct Writer;

pub enum Sink {
    Stderr(std::io::Stderr),
    File,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stderr(e) => e.write(buf),
            Sink::File => {
                let mut slot = FILE
                    .lock()
                    .map_err(|_| std::io::Error::other("log file lock poisoned"))?;
                match slot.as_mut() {
                    Some(f) => {
                        LINES_IN_FILE.fetch_add(
                            buf.iter().filter(|b| **b == b'\n').count(),
                            Ordering::Relaxed,
                        );
                        f.write(buf)
                    }
                    // Diverted and restored between make_writer and write: drop the line
                    // rather than draw it over a screen that may still be the UI's.
                    None => Ok(buf.len()),
                }
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stderr(e) => e.flush(),
            Sink::File => Ok(()),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Sink;

    fn make_writer(&'a self) -> Self::Writer {
        if TO_FILE.load(Ordering::SeqCst) {
            Sink::File
        } else {
            Sink::Stderr(std::io::stderr())
        }
    }
}
