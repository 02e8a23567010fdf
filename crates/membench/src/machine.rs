//! The machine description carried by every report.

use serde::{Deserialize, Serialize};

use crate::cache::CacheLevels;
use crate::kernels::Isa;
use crate::pool::Pinning;

/// What the numbers were measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo` "model name", or `machdep.cpu.brand_string` on macOS).
    pub cpu_model: String,
    /// CPUs the process may use.
    pub logical_cpus: usize,
    /// Operating system (`linux`, `macos`, ...).
    pub os: String,
    /// Kernel release (`uname -r`), where available.
    pub os_release: Option<String>,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Base page size, bytes.
    pub page_bytes: Option<u64>,
    /// Physical memory, bytes.
    pub memory_bytes: Option<u64>,
    /// Cache sizes the default points and plot marks came from.
    pub caches: CacheLevels,
    /// Kernel family used.
    pub isa: Isa,
    /// Whether the worker threads were bound to CPUs.
    pub pinning: Pinning,
}

impl Machine {
    /// The CPU model string a [`crate::TierThroughput`] written here would carry.
    #[must_use]
    pub fn this_cpu_model() -> String {
        cpu_model().unwrap_or_else(|| "unknown".to_owned())
    }

    /// Describes the running machine.
    pub(crate) fn describe(caches: CacheLevels, isa: Isa, pinning: Pinning) -> Machine {
        Machine {
            cpu_model: Machine::this_cpu_model(),
            logical_cpus: std::thread::available_parallelism().map_or(1, usize::from),
            os: std::env::consts::OS.to_owned(),
            os_release: os_release(),
            arch: std::env::consts::ARCH.to_owned(),
            page_bytes: page_bytes(),
            memory_bytes: memory_bytes(),
            caches,
            isa,
            pinning,
        }
    }
}

/// The first `model name` of a `/proc/cpuinfo` text, with the x86 family and model
/// numbers after it: a virtual machine's name is often just the vendor's brand ("AMD
/// EPYC"), which hides whether the host is one generation or the next, and figures
/// measured on one must not be taken for the other's.
#[cfg(any(target_os = "linux", test))]
fn cpuinfo_model(cpuinfo: &str) -> Option<String> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name)
                .then(|| value.trim().to_owned())
                .filter(|v| !v.is_empty())
        })
    };
    // aarch64 Linux has no "model name"; "Hardware" or "CPU part" are too cryptic, so
    // those systems report "unknown" unless the caller knows better.
    let name = field("model name")?;
    Some(match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) => format!("{name} (family {family}, model {model})"),
        _ => name,
    })
}

#[cfg(target_os = "linux")]
fn cpu_model() -> Option<String> {
    cpuinfo_model(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

#[cfg(target_os = "macos")]
fn cpu_model() -> Option<String> {
    sysctl::string("machdep.cpu.brand_string")
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn cpu_model() -> Option<String> {
    None
}

#[cfg(unix)]
fn os_release() -> Option<String> {
    // SAFETY: `utsname` is plain data; all-zero is a valid value for `uname` to fill.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid, writable `utsname`.
    if unsafe { libc::uname(&mut name) } != 0 {
        return None;
    }
    // SAFETY: on success `release` holds a NUL-terminated string within the array.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

#[cfg(not(unix))]
fn os_release() -> Option<String> {
    None
}

#[cfg(unix)]
fn page_bytes() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|n| *n > 0)
}

#[cfg(not(unix))]
fn page_bytes() -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
fn memory_bytes() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    u64::try_from(pages)
        .ok()?
        .checked_mul(u64::try_from(page).ok()?)
}

#[cfg(target_os = "macos")]
fn memory_bytes() -> Option<u64> {
    sysctl::u64("hw.memsize")
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn memory_bytes() -> Option<u64> {
    None
}

#[cfg(target_os = "macos")]
mod sysctl {
    use std::ffi::CString;

    pub(super) fn string(name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        let mut len: libc::size_t = 0;
        // SAFETY: a null buffer asks only for the length, written to `len`.
        let rc = unsafe {
            libc::sysctlbyname(
                name.as_ptr(),
                std::ptr::null_mut(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 || len == 0 {
            return None;
        }
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` has `len` writable bytes, the size passed in `len`.
        let rc = unsafe {
            libc::sysctlbyname(
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            return None;
        }
        buf.truncate(len);
        let text = String::from_utf8_lossy(&buf);
        Some(text.trim_end_matches('\0').trim().to_owned())
    }

    pub(super) fn u64(name: &str) -> Option<u64> {
        let name = CString::new(name).ok()?;
        let mut value: u64 = 0;
        let mut len: libc::size_t = std::mem::size_of::<u64>();
        // SAFETY: `value` is 8 writable bytes and `len` says so.
        let rc = unsafe {
            libc::sysctlbyname(
                name.as_ptr(),
                (&raw mut value).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0 && len == std::mem::size_of::<u64>()).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_model_name_from_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\
                    model\t\t: 17\nmodel name\t: AMD EPYC\nprocessor\t: 1\n\
                    model name\t: AMD EPYC\n";
        assert_eq!(
            cpuinfo_model(text).as_deref(),
            Some("AMD EPYC (family 25, model 17)")
        );
        let bare = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpuinfo_model(bare).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpuinfo_model("processor : 0\nHardware : BCM2835\n"), None);
    }

    #[test]
    fn describes_this_machine() {
        let m = Machine::describe(CacheLevels::default(), Isa::Portable, Pinning::Unsupported);
        assert!(m.logical_cpus >= 1);
        assert_eq!(m.arch, std::env::consts::ARCH);
        if cfg!(unix) {
            assert!(
                m.page_bytes
                    .is_some_and(|p| p.is_power_of_two() && p >= 4096)
            );
            assert!(m.memory_bytes.is_some_and(|b| b > 1 << 26));
        }
    }
}
