//! Pure parsers for Linux's `/proc` files: meminfo, status, smaps_rollup, PSI, buddyinfo.
//!
//! Each takes the file's text and returns plain numbers in bytes. Unknown keys are skipped
//! (newer kernels add fields); a known key with a malformed value is an error, since
//! reading it as zero would hide a real problem.

use serde::{Deserialize, Serialize};

use crate::error::{ParseError, excerpt};

/// Parses the `N kB` or `N` value of a `Key:   value` line; `kB` means KiB.
pub(crate) fn parse_amount(
    input: &'static str,
    line: usize,
    key: &str,
    value: &str,
) -> Result<u64, ParseError> {
    let bad = || ParseError::BadNumber {
        input,
        line,
        field: key.to_owned(),
        found: excerpt(value.trim()),
    };
    let mut words = value.split_whitespace();
    let number: u64 = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    match words.next() {
        None => Ok(number),
        Some("kB") => number.checked_mul(1024).ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// Calls `f(line_no, key, value)` for each `Key: value` line whose key is in `wanted`.
fn for_each_field(
    text: &str,
    wanted: &[&str],
    mut f: impl FnMut(usize, &str, &str) -> Result<(), ParseError>,
) -> Result<(), ParseError> {
    for (index, raw) in text.lines().enumerate() {
        let Some((key, value)) = raw.split_once(':') else {
            continue;
        };
        let key = key.trim();
        if wanted.contains(&key) {
            f(index + 1, key, value)?;
        }
    }
    Ok(())
}

/// `/proc/meminfo`, in bytes. `None` where this kernel does not write the field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemInfo {
    /// `MemTotal`: usable RAM.
    pub total_bytes: u64,
    /// `MemFree`: RAM nobody uses, a poor measure of what can be had.
    pub free_bytes: u64,
    /// `MemAvailable` (Linux ≥ 3.14): the kernel's estimate of what can be allocated
    /// without swapping.
    pub available_bytes: Option<u64>,
    /// `Buffers`.
    pub buffers_bytes: Option<u64>,
    /// `Cached`: the page cache, shmem included.
    pub cached_bytes: Option<u64>,
    /// `SwapCached`.
    pub swap_cached_bytes: Option<u64>,
    /// `Active(file)`.
    pub active_file_bytes: Option<u64>,
    /// `Inactive(file)`.
    pub inactive_file_bytes: Option<u64>,
    /// `AnonPages`: anonymous memory mapped into page tables.
    pub anon_bytes: Option<u64>,
    /// `Mapped`: page cache mapped into some process (model files, libraries).
    pub mapped_bytes: Option<u64>,
    /// `Shmem`: tmpfs and shared anonymous memory.
    pub shmem_bytes: Option<u64>,
    /// `SReclaimable`.
    pub slab_reclaimable_bytes: Option<u64>,
    /// `SUnreclaim`.
    pub slab_unreclaimable_bytes: Option<u64>,
    /// `KernelStack`.
    pub kernel_stack_bytes: Option<u64>,
    /// `PageTables`.
    pub page_tables_bytes: Option<u64>,
    /// `SwapTotal`.
    pub swap_total_bytes: Option<u64>,
    /// `SwapFree`.
    pub swap_free_bytes: Option<u64>,
    /// `Dirty`.
    pub dirty_bytes: Option<u64>,
}

impl MemInfo {
    /// `MemAvailable`, or on kernels before 3.14 the old estimate free + buffers + cached.
    #[must_use]
    pub fn available_or_estimate(&self) -> u64 {
        self.available_bytes.unwrap_or_else(|| {
            let cache = self.buffers_bytes.unwrap_or(0) + self.cached_bytes.unwrap_or(0);
            (self.free_bytes + cache).min(self.total_bytes)
        })
    }

    /// Swap in use: `SwapTotal − SwapFree`, 0 where the kernel has no swap fields.
    #[must_use]
    pub fn swap_used_bytes(&self) -> u64 {
        let total = self.swap_total_bytes.unwrap_or(0);
        total.saturating_sub(self.swap_free_bytes.unwrap_or(total))
    }
}

/// Parses `/proc/meminfo`.
///
/// # Errors
/// A known field with a malformed value, or no `MemTotal`/`MemFree`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, ParseError> {
    const INPUT: &str = "meminfo";
    const KEYS: &[&str] = &[
        "MemTotal",
        "MemFree",
        "MemAvailable",
        "Buffers",
        "Cached",
        "SwapCached",
        "Active(file)",
        "Inactive(file)",
        "AnonPages",
        "Mapped",
        "Shmem",
        "SReclaimable",
        "SUnreclaim",
        "KernelStack",
        "PageTables",
        "SwapTotal",
        "SwapFree",
        "Dirty",
    ];
    let mut total = None;
    let mut free = None;
    let mut info = MemInfo::default();
    for_each_field(text, KEYS, |line, key, value| {
        let bytes = parse_amount(INPUT, line, key, value)?;
        let slot = match key {
            "MemTotal" => &mut total,
            "MemFree" => &mut free,
            "MemAvailable" => &mut info.available_bytes,
            "Buffers" => &mut info.buffers_bytes,
            "Cached" => &mut info.cached_bytes,
            "SwapCached" => &mut info.swap_cached_bytes,
            "Active(file)" => &mut info.active_file_bytes,
            "Inactive(file)" => &mut info.inactive_file_bytes,
            "AnonPages" => &mut info.anon_bytes,
            "Mapped" => &mut info.mapped_bytes,
            "Shmem" => &mut info.shmem_bytes,
            "SReclaimable" => &mut info.slab_reclaimable_bytes,
            "SUnreclaim" => &mut info.slab_unreclaimable_bytes,
            "KernelStack" => &mut info.kernel_stack_bytes,
            "PageTables" => &mut info.page_tables_bytes,
            "SwapTotal" => &mut info.swap_total_bytes,
            "SwapFree" => &mut info.swap_free_bytes,
            _ => &mut info.dirty_bytes,
        };
        *slot = Some(bytes);
        Ok(())
    })?;
    info.total_bytes = total.ok_or(ParseError::MissingField {
        input: INPUT,
        field: "MemTotal",
    })?;
    info.free_bytes = free.ok_or(ParseError::MissingField {
        input: INPUT,
        field: "MemFree",
    })?;
    Ok(info)
}

/// The memory lines of `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcStatus {
    /// `VmRSS`: resident set.
    pub rss_bytes: u64,
    /// `VmHWM`: peak resident set (high-water mark).
    pub rss_peak_bytes: Option<u64>,
    /// `RssAnon` (Linux ≥ 4.5): resident anonymous memory.
    pub rss_anon_bytes: Option<u64>,
    /// `RssFile`: resident file-backed pages (mapped model files, code).
    pub rss_file_bytes: Option<u64>,
    /// `RssShmem`: resident shared memory.
    pub rss_shmem_bytes: Option<u64>,
    /// `VmSwap`: this process's pages in swap.
    pub swap_bytes: Option<u64>,
    /// `VmSize`: virtual size.
    pub virtual_bytes: Option<u64>,
}

/// Parses `/proc/<pid>/status`.
///
/// # Errors
/// A memory field with a malformed value, or no `VmRSS` (kernel threads have none).
pub fn parse_proc_status(text: &str) -> Result<ProcStatus, ParseError> {
    const INPUT: &str = "status";
    const KEYS: &[&str] = &[
        "VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSwap", "VmSize",
    ];
    let mut rss = None;
    let mut status = ProcStatus::default();
    for_each_field(text, KEYS, |line, key, value| {
        let bytes = parse_amount(INPUT, line, key, value)?;
        let slot = match key {
            "VmRSS" => &mut rss,
            "VmHWM" => &mut status.rss_peak_bytes,
            "RssAnon" => &mut status.rss_anon_bytes,
            "RssFile" => &mut status.rss_file_bytes,
            "RssShmem" => &mut status.rss_shmem_bytes,
            "VmSwap" => &mut status.swap_bytes,
            _ => &mut status.virtual_bytes,
        };
        *slot = Some(bytes);
        Ok(())
    })?;
    status.rss_bytes = rss.ok_or(ParseError::MissingField {
        input: INPUT,
        field: "VmRSS",
    })?;
    Ok(status)
}

/// `/proc/<pid>/smaps_rollup` (Linux ≥ 4.14), in bytes.
///
/// Proportional set sizes split shared pages among the processes that map them, so they
/// add up across processes where RSS does not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SmapsRollup {
    /// `Rss`.
    pub rss_bytes: u64,
    /// `Pss`.
    pub pss_bytes: Option<u64>,
    /// `Pss_Anon` (Linux ≥ 5.7).
    pub pss_anon_bytes: Option<u64>,
    /// `Pss_File` (Linux ≥ 5.7).
    pub pss_file_bytes: Option<u64>,
    /// `Pss_Shmem` (Linux ≥ 5.7).
    pub pss_shmem_bytes: Option<u64>,
    /// `Anonymous`: resident anonymous pages.
    pub anonymous_bytes: Option<u64>,
    /// `Swap`.
    pub swap_bytes: Option<u64>,
}

/// Parses `/proc/<pid>/smaps_rollup`. Its first line (the address range) is skipped.
///
/// # Errors
/// A known field with a malformed value, or no `Rss`.
pub fn parse_smaps_rollup(text: &str) -> Result<SmapsRollup, ParseError> {
    const INPUT: &str = "smaps_rollup";
    const KEYS: &[&str] = &[
        "Rss",
        "Pss",
        "Pss_Anon",
        "Pss_File",
        "Pss_Shmem",
        "Anonymous",
        "Swap",
    ];
    let mut rss = None;
    let mut rollup = SmapsRollup::default();
    for_each_field(text, KEYS, |line, key, value| {
        let bytes = parse_amount(INPUT, line, key, value)?;
        let slot = match key {
            "Rss" => &mut rss,
            "Pss" => &mut rollup.pss_bytes,
            "Pss_Anon" => &mut rollup.pss_anon_bytes,
            "Pss_File" => &mut rollup.pss_file_bytes,
            "Pss_Shmem" => &mut rollup.pss_shmem_bytes,
            "Anonymous" => &mut rollup.anonymous_bytes,
            _ => &mut rollup.swap_bytes,
        };
        *slot = Some(bytes);
        Ok(())
    })?;
    rollup.rss_bytes = rss.ok_or(ParseError::MissingField {
        input: INPUT,
        field: "Rss",
    })?;
    Ok(rollup)
}

/// One line of a PSI file: the share of wall time in which tasks stalled on memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PsiWindow {
    /// Average over 10 s, in percent (0–100).
    pub avg10_pct: f64,
    /// Average over 60 s, in percent.
    pub avg60_pct: f64,
    /// Average over 300 s, in percent.
    pub avg300_pct: f64,
    /// Total stall time since boot, in microseconds.
    pub total_us: u64,
}

impl PsiWindow {
    /// A window with the three averages given in percent and no total.
    #[must_use]
    pub fn from_pct(avg10_pct: f64, avg60_pct: f64, avg300_pct: f64) -> Self {
        Self {
            avg10_pct,
            avg60_pct,
            avg300_pct,
            total_us: 0,
        }
    }
}

/// `/proc/pressure/memory` (Linux ≥ 4.20 with `CONFIG_PSI`), or a cgroup's
/// `memory.pressure`.
///
/// `some`: at least one task stalled on memory; `full`: all non-idle tasks stalled at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Psi {
    /// The `some` line.
    pub some: PsiWindow,
    /// The `full` line (every memory PSI file has one; `None` if it was absent).
    pub full: Option<PsiWindow>,
}

impl Psi {
    /// PSI readings with the given `some` and `full` lines.
    #[must_use]
    pub fn new(some: PsiWindow, full: Option<PsiWindow>) -> Self {
        Self { some, full }
    }
}

/// Parses a PSI file (`some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a `full` line).
///
/// # Errors
/// A line that is not `some`/`full` followed by the four fields, or no `some` line.
pub fn parse_psi(text: &str) -> Result<Psi, ParseError> {
    const INPUT: &str = "psi";
    let mut some = None;
    let mut full = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let mut words = raw.split_whitespace();
        let slot = match words.next() {
            None => continue,
            Some("some") => &mut some,
            Some("full") => &mut full,
            Some(_) => {
                return Err(ParseError::BadLine {
                    input: INPUT,
                    line,
                    expected: "a line starting with `some` or `full`",
                    found: excerpt(raw),
                });
            }
        };
        let mut window = PsiWindow::default();
        let mut seen = 0_u8;
        for word in words {
            let Some((name, value)) = word.split_once('=') else {
                return Err(ParseError::BadLine {
                    input: INPUT,
                    line,
                    expected: "`name=value` fields",
                    found: excerpt(raw),
                });
            };
            let bad = || ParseError::BadNumber {
                input: INPUT,
                line,
                field: name.to_owned(),
                found: excerpt(value),
            };
            let pct = |v: &str| v.parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p));
            match name {
                "avg10" => window.avg10_pct = pct(value).ok_or_else(bad)?,
                "avg60" => window.avg60_pct = pct(value).ok_or_else(bad)?,
                "avg300" => window.avg300_pct = pct(value).ok_or_else(bad)?,
                "total" => window.total_us = value.parse().map_err(|_| bad())?,
                _ => continue,
            }
            seen += 1;
        }
        if seen < 4 {
            return Err(ParseError::BadLine {
                input: INPUT,
                line,
                expected: "avg10, avg60, avg300 and total",
                found: excerpt(raw),
            });
        }
        *slot = Some(window);
    }
    let some = some.ok_or(ParseError::MissingField {
        input: INPUT,
        field: "some",
    })?;
    Ok(Psi { some, full })
}

/// Free blocks per order for one zone of `/proc/buddyinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BuddyZone {
    /// NUMA node.
    pub node: u32,
    /// Zone name (`DMA`, `DMA32`, `Normal`, `Movable`).
    pub zone: String,
    /// `free_blocks[k]`: free blocks of 2^k pages.
    pub free_blocks: Vec<u64>,
}

/// `/proc/buddyinfo`: how the kernel's free memory is split into power-of-two blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BuddyInfo {
    /// One entry per zone line.
    pub zones: Vec<BuddyZone>,
}

/// The buddy order of a 2 MiB huge page with 4 KiB base pages.
pub const HUGE_PAGE_ORDER: u32 = 9;

impl BuddyInfo {
    /// The kernel's *unusable free space index* for blocks of 2^`order` pages, over all
    /// zones: the share of free pages that sit in blocks too small for such an allocation
    /// (Mel Gorman's fragmentation index, as `/sys/kernel/debug/extfrag/unusable_index`
    /// computes it). 0 = all free memory is in large blocks, 1 = none is. `None` when
    /// nothing is free.
    #[must_use]
    pub fn unusable_free_index(&self, order: u32) -> Option<f64> {
        let mut free_pages: u128 = 0;
        let mut usable_pages: u128 = 0;
        for zone in &self.zones {
            for (k, &blocks) in zone.free_blocks.iter().enumerate() {
                // Real kernels have at most a dozen orders; the caps keep garbage from
                // overflowing.
                let pages = u128::from(blocks) << k.min(64);
                free_pages = free_pages.saturating_add(pages);
                if k as u64 >= u64::from(order) {
                    usable_pages = usable_pages.saturating_add(pages);
                }
            }
        }
        if free_pages == 0 {
            return None;
        }
        Some((free_pages - usable_pages) as f64 / free_pages as f64)
    }
}

/// Parses `/proc/buddyinfo` (`Node 0, zone   Normal   12041   8082 …`).
///
/// # Errors
/// A line not of that shape.
pub fn parse_buddyinfo(text: &str) -> Result<BuddyInfo, ParseError> {
    const INPUT: &str = "buddyinfo";
    let mut info = BuddyInfo::default();
    for (index, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line = index + 1;
        let bad_line = || ParseError::BadLine {
            input: INPUT,
            line,
            expected: "`Node N, zone NAME counts…`",
            found: excerpt(raw),
        };
        let rest = raw.strip_prefix("Node ").ok_or_else(bad_line)?;
        let (node, rest) = rest.split_once(',').ok_or_else(bad_line)?;
        let node = node.trim().parse().map_err(|_| bad_line())?;
        let mut words = rest.split_whitespace();
        if words.next() != Some("zone") {
            return Err(bad_line());
        }
        let zone = words.next().ok_or_else(bad_line)?.to_owned();
        let free_blocks = words
            .map(|w| {
                w.parse().map_err(|_| ParseError::BadNumber {
                    input: INPUT,
                    line,
                    field: zone.clone(),
                    found: excerpt(w),
                })
            })
            .collect::<Result<Vec<u64>, _>>()?;
        info.zones.push(BuddyZone {
            node,
            zone,
            free_blocks,
        });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_in_kb_are_kib() {
        assert_eq!(
            parse_amount("t", 1, "MemTotal", "   24683656 kB").unwrap(),
            24_683_656 * 1024
        );
        assert_eq!(parse_amount("t", 1, "HugePages_Total", "   0").unwrap(), 0);
        assert!(parse_amount("t", 1, "X", " 12 MB").is_err());
        assert!(parse_amount("t", 1, "X", " ").is_err());
        assert!(parse_amount("t", 1, "X", "99999999999999999999 kB").is_err());
    }

    #[test]
    fn meminfo_before_3_14_estimates_available() {
        let text = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 200 kB\n";
        let info = parse_meminfo(text).unwrap();
        assert_eq!(info.available_bytes, None);
        assert_eq!(info.available_or_estimate(), 310 * 1024);
        assert_eq!(info.swap_used_bytes(), 0);
    }

    #[test]
    fn meminfo_without_total_is_an_error() {
        let err = parse_meminfo("MemFree: 1 kB\n").unwrap_err();
        assert_eq!(
            err,
            ParseError::MissingField {
                input: "meminfo",
                field: "MemTotal"
            }
        );
    }

    #[test]
    fn psi_rejects_out_of_range_and_partial_lines() {
        assert!(parse_psi("some avg10=101.00 avg60=0.00 avg300=0.00 total=0\n").is_err());
        assert!(parse_psi("some avg10=1.00 avg60=0.00\n").is_err());
        assert!(parse_psi("full avg10=1.00 avg60=0.00 avg300=0.00 total=5\n").is_err());
        assert!(parse_psi("none avg10=1.00\n").is_err());
    }

    #[test]
    fn unusable_index_counts_small_blocks() {
        // 8 free pages as 8 single pages, and one block of 2^3 = 8 pages.
        let info = parse_buddyinfo("Node 0, zone Normal 8 0 0 1\n").unwrap();
        assert_eq!(info.unusable_free_index(3), Some(0.5));
        assert_eq!(info.unusable_free_index(0), Some(0.0));
        assert_eq!(info.unusable_free_index(4), Some(1.0));
        assert_eq!(parse_buddyinfo("").unwrap().unusable_free_index(9), None);
    }
}
