//! Lines for people on stderr that never stop the program.
//!
//! `eprintln!` panics when stderr is a closed pipe (`llmem … 2>&1 | head -c 0`); a
//! warning or a progress line is not worth a panic, so a failed write is dropped here.
//! Reports go to stdout through `write!` with `?`, so that a closed stdout becomes an
//! `io::Error` that [`crate::exit::report`] treats as success.

use std::io::Write;

/// `llmem: warning: MSG` on stderr.
pub fn warn(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "llmem: warning: {msg}");
}

/// One line on stderr (progress, where rates were saved).
pub fn note(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Text on stderr without a newline (a progress line redrawn with `\r`).
pub fn note_partial(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "{msg}");
    let _ = e.flush();
}
