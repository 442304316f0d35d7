//! What the CLI prints on stdout. Listings are often piped into `head`, `grep -m1` or a
//! pager that quits early: then stdout is a closed pipe, and Rust's `println!` panics on
//! the write (the process ignores SIGPIPE, as it must: a dying Docker socket or model
//! connection is an error to report, not a signal to die of). [`outln!`] and [`out!`]
//! treat a closed stdout as the reader having seen enough: the process exits at once with
//! status 0, as `ls | head -1` does for `ls`, and nothing else changes.

use std::io::Write;

/// Writes to stdout; exits quietly if the reader has gone. Other errors (a full disk behind
/// a redirection) are reported on stderr and exit with status 1.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let result = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` for the CLI's output: see the module docs.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*), true)
    };
}

/// `print!` for the CLI's output: see the module docs.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*), false)
    };
}

/// `n` things in words: "1 step", "3 steps", "0 steps".
pub fn count(n: impl Into<i128>, one: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// How a status word reads: coloured on a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
}

/// When the CLI colours its status words (`--color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    #[default]
    Auto,
    Always,
    Never,
}

static COLOR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Decides once whether stdout gets colours (<https://no-color.org>: a non-empty NO_COLOR
/// turns them off unless `--color always`).
pub fn set_color(choice: ColorChoice) {
    use std::io::IsTerminal;
    let on = match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    };
    let _ = COLOR.set(on);
}

/// A status word, coloured when colours are on, and its width on screen.
pub struct Painted {
    pub text: String,
    pub width: usize,
}

impl std::fmt::Display for Painted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The tone of an episode's status word: succeeded is good; failed and error bad; the
/// rest (running, stopped, interrupted, needs_user) a warning.
pub fn status_tone(status: &str) -> Tone {
    match status {
        "succeeded" | "passed" | "PASS" | "ok" => Tone::Good,
        "failed" | "error" | "FAIL" | "ERROR" => Tone::Bad,
        _ => Tone::Warn,
    }
}

/// A status word painted by its tone and padded to `width` columns.
pub fn status(word: &str, width: usize) -> String {
    let p = paint(word, status_tone(word));
    format!("{}{}", p.text, " ".repeat(width.saturating_sub(p.width)))
}

pub fn paint(word: &str, tone: Tone) -> Painted {
    let width = word.chars().count();
    let text = if *COLOR.get().unwrap_or(&false) {
        let code = match tone {
            Tone::Good => "32",
            Tone::Warn => "33",
            Tone::Bad => "1;31",
        };
        format!("\x1b[{code}m{word}\x1b[0m")
    } else {
        word.to_owned()
    };
    Painted { text, width }
}
