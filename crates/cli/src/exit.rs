//! Exit codes and how errors map to them: 0 ok, 1 runtime failure, 2 bad usage or input.

pub const OK: i32 = 0;
pub const RUNTIME: i32 = 1;
pub const USAGE: i32 = 2;

/// An error that says which exit code it deserves.
#[derive(Debug)]
pub enum CliError {
    /// The user's input is at fault (missing file, not GGUF, prompt too long, …).
    Input(anyhow::Error),
    /// Something failed while running.
    Runtime(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::Runtime(e.into())
    }
}

/// Builds an input error.
pub fn input(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Input(e.into())
}

/// Prints the error (one line, with its causes) and returns the exit code.
pub fn report(r: Result<(), CliError>) -> i32 {
    let (code, e) = match r {
        Ok(()) => return OK,
        Err(CliError::Input(e)) => (USAGE, e),
        Err(CliError::Runtime(e)) => (RUNTIME, e),
    };
    // A closed pipe (e.g. `llmem run … | head`) is not a failure.
    if e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) {
        return OK;
    }
    let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    crate::out::note(&format!("llmem: error: {}", msg.join(": ")));
    code
}
