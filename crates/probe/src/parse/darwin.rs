//! Pure conversions of what macOS reports: `vm.swapusage`, `host_statistics64` page
//! counts, the memorystatus pressure level. Compiled on every platform so that Linux CI
//! tests them; the thin calls that produce the inputs live in `macos.rs`.

use serde::{Deserialize, Serialize};

use crate::error::{ParseError, excerpt};

/// `vm.swapusage`, in bytes.
///
/// macOS grows and shrinks its swap files on demand, so `total_bytes` moves with use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SwapUsage {
    /// Swap file space allocated now.
    pub total_bytes: u64,
    /// Swap in use.
    pub used_bytes: u64,
    /// Allocated but unused.
    pub free_bytes: u64,
}

impl SwapUsage {
    /// From the fields of `struct xsw_usage` (`xsu_total`, `xsu_avail`, `xsu_used`), which
    /// the backend reads with `sysctlbyname("vm.swapusage")`.
    #[must_use]
    pub fn from_xsw(total_bytes: u64, avail_bytes: u64, used_bytes: u64) -> Self {
        Self {
            total_bytes,
            used_bytes,
            free_bytes: avail_bytes,
        }
    }
}

/// Parses the text form that `sysctl vm.swapusage` prints
/// (`vm.swapusage: total = 2048.00M  used = 1210.25M  free = 837.75M  (encrypted)`),
/// with or without the name in front. Recorded diagnostics from users' Macs come in this
/// form; the backend itself reads the binary `xsw_usage`.
///
/// # Errors
/// A missing `total`, `used` or `free`, or an amount without a K/M/G suffix.
pub fn parse_swapusage(text: &str) -> Result<SwapUsage, ParseError> {
    const INPUT: &str = "vm.swapusage";
    let body = text.trim();
    let body = body.strip_prefix("vm.swapusage:").unwrap_or(body);
    let words: Vec<&str> = body.split_whitespace().collect();
    let mut fields = [None; 3];
    for window in words.windows(3) {
        let [name, "=", amount] = window else {
            continue;
        };
        let slot = match *name {
            "total" => 0,
            "used" => 1,
            "free" => 2,
            _ => continue,
        };
        fields[slot] = Some(parse_sized(amount).ok_or_else(|| ParseError::BadNumber {
            input: INPUT,
            line: 1,
            field: (*name).to_owned(),
            found: excerpt(amount),
        })?);
    }
    let get = |slot: usize, field: &'static str| {
        fields[slot].ok_or(ParseError::MissingField {
            input: INPUT,
            field,
        })
    };
    Ok(SwapUsage {
        total_bytes: get(0, "total")?,
        used_bytes: get(1, "used")?,
        free_bytes: get(2, "free")?,
    })
}

/// `2048.00M` → bytes (K, M and G are powers of 1024, as the sysctl tool means them).
fn parse_sized(amount: &str) -> Option<u64> {
    let (number, unit) = amount.split_at(amount.len().checked_sub(1)?);
    let scale = match unit {
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked above
    Some((value * scale).round() as u64)
}

/// Page counts from `host_statistics64(HOST_VM_INFO64)` (`vm_statistics64`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MacVmCounts {
    /// `free_count` (speculative pages included, as XNU counts it).
    pub free: u64,
    /// `active_count`.
    pub active: u64,
    /// `inactive_count`.
    pub inactive: u64,
    /// `wire_count`: pages that cannot be paged out, GPU working set included.
    pub wired: u64,
    /// `compressor_page_count`: pages holding compressed memory.
    pub compressor: u64,
    /// `purgeable_count`: pages of purgeable objects the kernel may drop.
    pub purgeable: u64,
    /// `speculative_count`: read-ahead pages.
    pub speculative: u64,
    /// `internal_page_count`: anonymous pages.
    pub internal: u64,
    /// `external_page_count`: file-backed pages.
    pub external: u64,
}

/// [`MacVmCounts`] in bytes, with the totals Activity Monitor shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MacVmStats {
    /// Free pages, speculative ones excluded (as `vm_stat` prints them).
    pub free_bytes: u64,
    /// Active pages.
    pub active_bytes: u64,
    /// Inactive pages.
    pub inactive_bytes: u64,
    /// Wired pages.
    pub wired_bytes: u64,
    /// Memory occupied by the compressor.
    pub compressed_bytes: u64,
    /// Purgeable pages.
    pub purgeable_bytes: u64,
    /// Speculative pages.
    pub speculative_bytes: u64,
    /// Activity Monitor's "App Memory": anonymous pages that are not purgeable.
    pub app_bytes: u64,
    /// Activity Monitor's "Cached Files": file-backed plus purgeable pages.
    pub cached_files_bytes: u64,
}

impl MacVmCounts {
    /// Converts to bytes with the page size read at run time (`hw.pagesize`: 16 KiB on
    /// Apple silicon, 4 KiB on Intel Macs).
    #[must_use]
    pub fn to_stats(&self, page_size_bytes: u64) -> MacVmStats {
        let b = |pages: u64| pages.saturating_mul(page_size_bytes);
        MacVmStats {
            free_bytes: b(self.free.saturating_sub(self.speculative)),
            active_bytes: b(self.active),
            inactive_bytes: b(self.inactive),
            wired_bytes: b(self.wired),
            compressed_bytes: b(self.compressor),
            purgeable_bytes: b(self.purgeable),
            speculative_bytes: b(self.speculative),
            app_bytes: b(self.internal.saturating_sub(self.purgeable)),
            cached_files_bytes: b(self.external.saturating_add(self.purgeable)),
        }
    }
}

impl MacVmStats {
    /// Activity Monitor's "Memory Used": app memory + wired + compressed.
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.app_bytes + self.wired_bytes + self.compressed_bytes
    }

    /// What can be had without paging: the total less [`MacVmStats::used_bytes`]. macOS
    /// keeps little memory truly free, so `free_bytes` alone would read as constant
    /// pressure.
    #[must_use]
    pub fn available_bytes(&self, total_bytes: u64) -> u64 {
        total_bytes.saturating_sub(self.used_bytes())
    }
}

/// `iogpu.wired_limit_mb` in bytes: `None` when it is 0, which means the OS default
/// (the GPU working set is then what Metal's `recommendedMaxWorkingSetSize` says).
#[must_use]
pub fn wired_limit_from_mib(mib: u64) -> Option<u64> {
    (mib != 0).then(|| mib.saturating_mul(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapusage_text() {
        let s = parse_swapusage(
            "vm.swapusage: total = 2048.00M  used = 1210.25M  free = 837.75M  (encrypted)\n",
        )
        .unwrap();
        assert_eq!(s.total_bytes, 2048 << 20);
        assert_eq!(s.used_bytes, 1_269_039_104);
        assert_eq!(s.free_bytes, 878_444_544);
        let none = parse_swapusage("total = 0.00M  used = 0.00M  free = 0.00M  ").unwrap();
        assert_eq!(none, SwapUsage::default());
        assert!(parse_swapusage("total = 1.00M used = 2.00X free = 0.00M").is_err());
        assert!(parse_swapusage("total = 1.00M").is_err());
    }

    #[test]
    fn vm_counts_follow_activity_monitor() {
        let counts = MacVmCounts {
            free: 1000,
            speculative: 200,
            internal: 5000,
            purgeable: 100,
            external: 700,
            wired: 3000,
            compressor: 400,
            ..MacVmCounts::default()
        };
        let stats = counts.to_stats(16384);
        assert_eq!(stats.free_bytes, 800 * 16384);
        assert_eq!(stats.app_bytes, 4900 * 16384);
        assert_eq!(stats.cached_files_bytes, 800 * 16384);
        assert_eq!(stats.used_bytes(), (4900 + 3000 + 400) * 16384);
        assert_eq!(stats.available_bytes(10_000 * 16384), 1700 * 16384);
        assert_eq!(wired_limit_from_mib(0), None);
        assert_eq!(wired_limit_from_mib(98_304), Some(96 << 30));
    }
}
