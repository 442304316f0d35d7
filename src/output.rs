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
