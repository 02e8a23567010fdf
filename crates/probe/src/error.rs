//! Errors of the probe: reading the platform, and parsing what it said.

use std::io;
use std::path::PathBuf;

/// Text from the kernel (or a recorded fixture) that could not be turned into numbers.
///
/// `input` names the file format (`"meminfo"`, `"psi"`, …), `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A line of a known field did not have the expected shape.
    #[error("{input}: line {line}: expected {expected}, found {found:?}")]
    BadLine {
        /// Which format was being parsed.
        input: &'static str,
        /// 1-based line number.
        line: usize,
        /// What the parser expected there.
        expected: &'static str,
        /// The offending text, cut to at most 80 bytes.
        found: String,
    },
    /// A field that must be a number was not (or did not fit in 64 bits).
    #[error("{input}: line {line}: field `{field}` is not a number: {found:?}")]
    BadNumber {
        /// Which format was being parsed.
        input: &'static str,
        /// 1-based line number.
        line: usize,
        /// The field's name.
        field: String,
        /// The offending text, cut to at most 80 bytes.
        found: String,
    },
    /// A field every kernel writes was absent.
    #[error("{input}: required field `{field}` is missing")]
    MissingField {
        /// Which format was being parsed.
        input: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

/// Keeps error messages short when a whole file is garbage.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX: usize = 80;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A reading of the platform failed.
///
/// Signals that a platform may simply lack (PSI, cgroup v2, NVML, a sysctl of a newer OS)
/// are never errors: they read as `None`. These variants are for what every supported
/// system has.
///
/// A variant with a cause shows it in its message and does not also return it from
/// `source()`: an error chain printed whole would show the OS's words twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// A file every supported kernel has could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: io::Error,
    },
    /// A file was read but its contents made no sense.
    #[error("cannot parse {}: {cause}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        cause: ParseError,
    },
    /// A sysctl that every supported macOS has failed.
    #[error("sysctl {name} failed: {cause}")]
    Sysctl {
        /// The sysctl's name.
        name: &'static str,
        /// The errno it failed with.
        cause: io::Error,
    },
    /// A Mach call returned an error code.
    #[error("{call} failed with kern_return_t {code}")]
    Mach {
        /// The call, e.g. `host_statistics64`.
        call: &'static str,
        /// Its `kern_return_t`.
        code: i32,
    },
    /// NVML was loaded but a query failed.
    #[cfg(all(feature = "nvml", target_os = "linux"))]
    #[error("NVML {call} failed: {cause}")]
    Nvml {
        /// The NVML call, e.g. `nvmlDeviceGetMemoryInfo`.
        call: &'static str,
        /// What NVML said.
        cause: nvml_wrapper::error::NvmlError,
    },
}
