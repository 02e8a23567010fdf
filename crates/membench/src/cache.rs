//! Cache sizes, the default working-set sizes derived from them, and size parsing.

use serde::{Deserialize, Serialize};

use crate::error::ParseSizeError;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Smallest working set measured by default.
pub const MIN_SIZE_BYTES: u64 = 4 * KIB;

/// The cache hierarchy as seen by one core: the sizes that place the bandwidth steps.
///
/// Sizes are per core for private levels (L1d, L2) and per cluster or package for the
/// last level (L3, or Apple's system-level cache, whose size is unpublished and so usually
/// `None`). They are inputs: the caller (the probe) supplies them, or
/// [`CacheLevels::detect_linux`] reads them from sysfs. Wrong sizes only move the default
/// measurement points and the boundary marks on the plot; the measurements stay correct.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLevels {
    /// L1 data cache of one core, bytes.
    pub l1d: Option<u64>,
    /// L2 cache of one core (or of one Apple performance cluster), bytes.
    pub l2: Option<u64>,
    /// Last-level cache (L3 or system-level cache), bytes.
    pub l3: Option<u64>,
    /// Cache line, bytes (64 on x86-64, 128 on Apple silicon). `None`: the architecture's
    /// usual value is used for latency strides.
    pub line_bytes: Option<u64>,
}

/// A level of the memory hierarchy a working set falls into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fits in L1d.
    L1,
    /// Fits in L2.
    L2,
    /// Fits in the last-level cache.
    L3,
    /// Main memory.
    Dram,
}

impl Level {
    /// Short name for tables: `L1`, `L2`, `L3`, `DRAM`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Level::L1 => "L1",
            Level::L2 => "L2",
            Level::L3 => "L3",
            Level::Dram => "DRAM",
        }
    }
}

impl CacheLevels {
    /// Reads the cache sizes of CPU 0 from Linux sysfs
    /// (`/sys/devices/system/cpu/cpu0/cache/index*/`). A fallback for callers without a
    /// probe; returns all `None` where sysfs is absent (other systems, some containers).
    #[must_use]
    pub fn detect_linux() -> CacheLevels {
        let mut levels = CacheLevels::default();
        for index in 0..8 {
            let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
            let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            let Some(bytes) = parse_sysfs_size(&size) else {
                continue;
            };
            if levels.line_bytes.is_none() {
                levels.line_bytes = read("coherency_line_size").and_then(|s| s.trim().parse().ok());
            }
            match (level.trim(), kind.trim()) {
                ("1", "Data" | "Unified") => levels.l1d = Some(bytes),
                ("2", _) => levels.l2 = Some(bytes),
                ("3", _) => levels.l3 = Some(bytes),
                _ => {}
            }
        }
        levels
    }

    /// The level a working set of `bytes` spread over `threads` cores falls into. Private
    /// levels (L1d, L2) count once per thread; the last level is shared.
    #[must_use]
    pub fn level_of(&self, bytes: u64, threads: usize) -> Level {
        let per_core = |size: Option<u64>| size.map(|s| s.saturating_mul(threads as u64));
        if per_core(self.l1d).is_some_and(|s| bytes <= s) {
            Level::L1
        } else if per_core(self.l2).is_some_and(|s| bytes <= s) {
            Level::L2
        } else if self.l3.is_some_and(|s| bytes <= s) {
            Level::L3
        } else {
            Level::Dram
        }
    }

    /// Cache line used for the latency stride: the given size, else the architecture's
    /// usual one (128 B on Apple silicon, 64 B elsewhere).
    #[must_use]
    pub fn line_or_default(&self) -> u64 {
        let default = if cfg!(all(target_arch = "aarch64", target_vendor = "apple")) {
            128
        } else {
            64
        };
        self.line_bytes
            .filter(|l| l.is_power_of_two() && *l >= 16)
            .unwrap_or(default)
    }

    /// Default bandwidth working sets: every power of two from 4 KiB to
    /// max(1 GiB, 32 × last level), plus ¾ and 1½ of each known cache size, so each level
    /// has points well inside it and just beyond it.
    #[must_use]
    pub fn default_bandwidth_sizes(&self) -> Vec<u64> {
        let top = self.l3.map_or(GIB, |l3| (l3.saturating_mul(32)).max(GIB));
        self.sizes_up_to(top)
    }

    /// Default latency working sets: as for bandwidth, up to max(256 MiB, 8 × last level),
    /// far enough past the last-level cache (and the TLB's reach) for both steps to show.
    #[must_use]
    pub fn default_latency_sizes(&self) -> Vec<u64> {
        let top = self
            .l3
            .map_or(256 * MIB, |l3| (l3.saturating_mul(8)).max(256 * MIB));
        self.sizes_up_to(top)
    }

    /// Quick bandwidth working sets (the default): half of each known cache level, well
    /// inside it, and one main-memory point at 4 × the last level, at least 256 MiB, where
    /// the saved DRAM copy rate is read. The full sweep goes to 32 × the last level: 16 GiB
    /// and over fifteen minutes on a two-core machine with a 480 MiB last level.
    #[must_use]
    pub fn quick_bandwidth_sizes(&self) -> Vec<u64> {
        let dram = self.l3.unwrap_or(0).saturating_mul(4).max(256 * MIB);
        let mut sizes = self.halves();
        sizes.retain(|&s| s < dram);
        sizes.push(dram);
        sizes
    }

    /// Quick latency working sets (the default): half of each known cache level. Main
    /// memory is left to the full sweep: a pointer chase visits every line of its set on
    /// each of its ~8 laps, and at 4 × a 480 MiB last level that took seven minutes of a
    /// shared two-core machine for one point. 64 MiB when no level is known.
    #[must_use]
    pub fn quick_latency_sizes(&self) -> Vec<u64> {
        let sizes = self.halves();
        if sizes.is_empty() {
            vec![64 * MIB]
        } else {
            sizes
        }
    }

    /// Half of each known level, in 4 KiB steps, ascending, without repeats.
    fn halves(&self) -> Vec<u64> {
        let mut sizes: Vec<u64> = [self.l1d, self.l2, self.l3]
            .into_iter()
            .flatten()
            .map(|level| level / 2 / (4 * KIB) * (4 * KIB))
            .filter(|&s| s >= MIN_SIZE_BYTES)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    fn sizes_up_to(&self, top: u64) -> Vec<u64> {
        let top = top.min(1 << 40).next_power_of_two();
        let mut sizes: Vec<u64> = std::iter::successors(Some(MIN_SIZE_BYTES), |s| Some(s * 2))
            .take_while(|s| *s <= top)
            .collect();
        for level in [self.l1d, self.l2, self.l3].into_iter().flatten() {
            for point in [level / 4 * 3, level / 2 * 3] {
                let point = point / (4 * KIB) * (4 * KIB);
                if (MIN_SIZE_BYTES..=top).contains(&point) {
                    sizes.push(point);
                }
            }
        }
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }
}

/// Parses a sysfs cache size such as `32K`, `512K`, `32768K` or `16M`.
fn parse_sysfs_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => KIB,
        "M" => MIB,
        "G" => GIB,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Parses one size: a whole number with an optional binary unit, `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB` (case-insensitive; `B` alone means bytes). Units are powers of 1024.
///
/// # Errors
/// [`ParseSizeError`] when the text is empty, not a number with a known unit, or too large.
pub fn parse_size(text: &str) -> Result<u64, ParseSizeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ParseSizeError::Empty);
    }
    let at = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(at);
    let invalid = || ParseSizeError::Invalid {
        text: trimmed.to_owned(),
    };
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        _ => return Err(invalid()),
    };
    n.checked_mul(scale)
        .ok_or_else(|| ParseSizeError::Overflow {
            text: trimmed.to_owned(),
        })
}

/// Parses a comma-separated size list such as `4KiB,1MiB,1GiB` (see [`parse_size`]).
///
/// # Errors
/// The first entry's [`ParseSizeError`].
pub fn parse_sizes(list: &str) -> Result<Vec<u64>, ParseSizeError> {
    list.split(',').map(parse_size).collect()
}

/// Formats bytes with a binary unit for tables and plots: `4K`, `1.5M`, `1G`.
#[must_use]
pub fn short_size(bytes: u64) -> String {
    let units = [(GIB, "G"), (MIB, "M"), (KIB, "K")];
    for (scale, name) in units {
        if bytes >= scale {
            let value = bytes as f64 / scale as f64;
            return if bytes.is_multiple_of(scale) {
                format!("{}{name}", bytes / scale)
            } else {
                format!("{value:.1}{name}")
            };
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zen3() -> CacheLevels {
        CacheLevels {
            l1d: Some(32 * KIB),
            l2: Some(512 * KIB),
            l3: Some(32 * MIB),
            line_bytes: None,
        }
    }

    #[test]
    fn default_sizes_cover_every_level() {
        let levels = zen3();
        let sizes = levels.default_bandwidth_sizes();
        assert_eq!(sizes.first(), Some(&(4 * KIB)));
        assert_eq!(sizes.last(), Some(&GIB));
        for level in [Level::L1, Level::L2, Level::L3, Level::Dram] {
            let n = sizes
                .iter()
                .filter(|s| levels.level_of(**s, 1) == level)
                .count();
            assert!(n >= 2, "{level:?} has {n} points");
        }
        assert!(sizes.contains(&(24 * KIB)) && sizes.contains(&(48 * MIB)));
        assert!(sizes.windows(2).all(|w| w[0] < w[1]));
        let latency = levels.default_latency_sizes();
        assert_eq!(latency.last(), Some(&(256 * MIB)));
    }

    #[test]
    fn quick_sizes_put_one_point_in_each_level_and_bandwidth_one_in_dram() {
        let levels = zen3();
        let sizes = levels.quick_bandwidth_sizes();
        let found: Vec<Level> = sizes.iter().map(|&s| levels.level_of(s, 1)).collect();
        assert_eq!(
            found,
            [Level::L1, Level::L2, Level::L3, Level::Dram],
            "{sizes:?}"
        );
        assert_eq!(sizes.last(), Some(&(256 * MIB)));
        assert_eq!(levels.quick_latency_sizes(), sizes[..3]);
        let big_l3 = CacheLevels {
            l3: Some(480 * MIB),
            ..zen3()
        };
        assert_eq!(big_l3.quick_bandwidth_sizes().last(), Some(&(1920 * MIB)));
        assert_eq!(CacheLevels::default().quick_bandwidth_sizes(), [256 * MIB]);
        assert_eq!(CacheLevels::default().quick_latency_sizes(), [64 * MIB]);
    }

    #[test]
    fn default_sizes_grow_with_a_large_last_level() {
        let levels = CacheLevels {
            l3: Some(96 * MIB),
            ..CacheLevels::default()
        };
        assert_eq!(levels.default_bandwidth_sizes().last(), Some(&(4 * GIB)));
        assert_eq!(
            CacheLevels::default().default_bandwidth_sizes().last(),
            Some(&GIB)
        );
    }

    #[test]
    fn level_of_counts_private_levels_per_thread() {
        let levels = zen3();
        assert_eq!(levels.level_of(32 * KIB, 1), Level::L1);
        assert_eq!(levels.level_of(64 * KIB, 1), Level::L2);
        assert_eq!(levels.level_of(64 * KIB, 2), Level::L1);
        assert_eq!(levels.level_of(32 * MIB, 2), Level::L3);
        assert_eq!(levels.level_of(64 * MIB, 2), Level::Dram);
        assert_eq!(CacheLevels::default().level_of(1, 1), Level::Dram);
    }

    #[test]
    fn parses_sizes_with_units() {
        assert_eq!(
            parse_sizes("4K,4KiB, 1MiB,1g,512"),
            Ok(vec![4096, 4096, MIB, GIB, 512])
        );
        assert_eq!(parse_size(""), Err(ParseSizeError::Empty));
        assert!(matches!(
            parse_size("4MB"),
            Err(ParseSizeError::Invalid { .. })
        ));
        assert!(matches!(
            parse_size("-1"),
            Err(ParseSizeError::Invalid { .. })
        ));
        assert!(matches!(
            parse_size("99999999999999G"),
            Err(ParseSizeError::Overflow { .. })
        ));
        assert_eq!(parse_sysfs_size("32768K\n"), Some(32 * MIB));
        assert_eq!(parse_sysfs_size("16M"), Some(16 * MIB));
        assert_eq!(parse_sysfs_size("x"), None);
    }

    #[test]
    fn short_sizes_read_well() {
        assert_eq!(short_size(4096), "4K");
        assert_eq!(short_size(384 * KIB), "384K");
        assert_eq!(short_size(3 * MIB / 2), "1.5M");
        assert_eq!(short_size(GIB), "1G");
        assert_eq!(short_size(100), "100B");
    }

    #[test]
    fn line_size_falls_back_to_the_architecture() {
        let given = CacheLevels {
            line_bytes: Some(128),
            ..CacheLevels::default()
        };
        assert_eq!(given.line_or_default(), 128);
        let bogus = CacheLevels {
            line_bytes: Some(3),
            ..CacheLevels::default()
        };
        assert!(matches!(bogus.line_or_default(), 64 | 128));
    }
}
