//! What a probe reports: platform facts, a system snapshot, this process, GPUs.
//!
//! All sizes are bytes. Fields a platform cannot report are `None`, never 0.

use serde::{Deserialize, Serialize};

use crate::parse::{CgroupMemory, MacVmStats, Psi};

/// What a CPU cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    /// Data only.
    Data,
    /// Instructions only.
    Instruction,
    /// Both.
    Unified,
}

/// Which cores a cache belongs to, on machines with more than one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoreKind {
    /// All cores are alike (or the platform does not say).
    Any,
    /// Apple's performance cores (`hw.perflevel0`).
    Performance,
    /// Apple's efficiency cores (`hw.perflevel1`, and the unprefixed `hw.*cachesize`).
    Efficiency,
}

/// One cache level as the OS describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheLevel {
    /// 1, 2, 3.
    pub level: u8,
    /// Data, instruction or unified.
    pub kind: CacheKind,
    /// Size of one instance (per core for L1, per cluster or socket for L2/L3).
    pub size_bytes: u64,
    /// Line size where the OS reports it per level.
    pub line_bytes: Option<u64>,
    /// How many logical CPUs share one instance.
    pub shared_by_cpus: Option<u32>,
    /// Which cores it belongs to.
    pub cores: CoreKind,
}

impl CacheLevel {
    /// A cache of the given level, kind and size, shared by no one in particular.
    #[must_use]
    pub fn new(level: u8, kind: CacheKind, size_bytes: u64) -> Self {
        Self {
            level,
            kind,
            size_bytes,
            line_bytes: None,
            shared_by_cpus: None,
            cores: CoreKind::Any,
        }
    }
}

/// Facts that do not change while llmem runs (memory total aside, which a VM balloon can
/// move: [`SystemSnapshot`] carries the current one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlatformInfo {
    /// Base page size: 4 KiB on x86-64, 16 KiB on macOS arm64. Read at run time.
    pub page_size_bytes: u64,
    /// Cache line: 64 B on x86-64, 128 B on Apple silicon. Read at run time.
    pub cache_line_bytes: u64,
    /// The caches the OS describes, L1 first.
    pub caches: Vec<CacheLevel>,
    /// Physical memory.
    pub mem_total_bytes: u64,
    /// Physical cores, where the OS tells them apart from hardware threads.
    pub physical_cores: Option<u32>,
    /// Logical CPUs online.
    pub logical_cores: u32,
    /// Logical CPUs this process may run on: its affinity mask and cgroup CPU quota, as
    /// `std::thread::available_parallelism` reads them, at most `logical_cores`. The most
    /// compute threads that can run at once (issue 13: more are refused unless asked for).
    pub usable_cpus: u32,
}

impl PlatformInfo {
    /// The first cache of `level` holding data (data or unified) for the given cores.
    #[must_use]
    pub fn data_cache(&self, level: u8, cores: CoreKind) -> Option<&CacheLevel> {
        self.caches
            .iter()
            .find(|c| c.level == level && c.kind != CacheKind::Instruction && (c.cores == cores))
    }

    /// Compute threads to run when none are asked for: one per physical core (a second
    /// hardware thread on a core adds little to memory-bound kernels), within the CPUs
    /// this process may use.
    #[must_use]
    pub fn default_threads(&self) -> u32 {
        self.physical_cores
            .unwrap_or(self.usable_cpus)
            .min(self.usable_cpus)
            .max(1)
    }
}

/// [`PlatformInfo::usable_cpus`] for a machine with `logical_cores` online.
pub(crate) fn usable_cpus(logical_cores: u32) -> u32 {
    std::thread::available_parallelism()
        .map_or(logical_cores, |n| {
            u32::try_from(n.get()).unwrap_or(u32::MAX)
        })
        .clamp(1, logical_cores.max(1))
}

impl Default for PlatformInfo {
    fn default() -> Self {
        Self {
            page_size_bytes: 4096,
            cache_line_bytes: 64,
            caches: Vec::new(),
            mem_total_bytes: 0,
            physical_cores: None,
            logical_cores: 1,
            usable_cpus: 1,
        }
    }
}

/// One slice of memory as the OS categorizes it, for display ("anon", "wired", …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemoryCategory {
    /// Short snake_case name, stable across releases (a Prometheus label value).
    pub name: String,
    /// Bytes in it.
    pub bytes: u64,
}

impl MemoryCategory {
    /// A category.
    #[must_use]
    pub fn new(name: impl Into<String>, bytes: u64) -> Self {
        Self {
            name: name.into(),
            bytes,
        }
    }
}

/// `kern.memorystatus_vm_pressure_level` on macOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MacPressureLevel {
    /// 1.
    Normal,
    /// 2: the kernel asks apps to free memory.
    Warning,
    /// 4: the kernel is killing or about to kill processes.
    Critical,
}

impl MacPressureLevel {
    /// From the sysctl's value (the `DISPATCH_MEMORYPRESSURE_*` bits); `None` for values
    /// no macOS release has used.
    #[must_use]
    pub fn from_sysctl(value: i64) -> Option<Self> {
        match value {
            1 => Some(Self::Normal),
            2 => Some(Self::Warning),
            4 => Some(Self::Critical),
            _ => None,
        }
    }
}

/// Raw pressure signals, kept beside the level that [`crate::Pressure`] derives from them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PressureSignals {
    /// Linux PSI `/proc/pressure/memory`; `None` without `CONFIG_PSI` or before 4.20.
    pub psi: Option<Psi>,
    /// This process's cgroup v2; `None` on v1 or hybrid hosts, or at the root cgroup.
    pub cgroup: Option<CgroupMemory>,
    /// macOS's own verdict; `None` elsewhere.
    pub macos_level: Option<MacPressureLevel>,
}

/// `iogpu.wired_limit_mb`: how much memory the GPU may wire on Apple silicon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WiredLimit {
    /// 0: the OS default (Metal's `recommendedMaxWorkingSetSize` tells the effect).
    Default,
    /// Set by an administrator, in bytes.
    Bytes(u64),
}

/// The machine's memory at one moment.
///
/// On Linux "available" is `MemAvailable`; on macOS it is the total less Activity
/// Monitor's "Memory Used" (see [`MacVmStats::available_bytes`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SystemSnapshot {
    /// Physical memory.
    pub mem_total_bytes: u64,
    /// What can be allocated without swapping.
    pub mem_available_bytes: u64,
    /// Memory nobody uses at all.
    pub mem_free_bytes: u64,
    /// Page cache as `free(1)` counts it (Linux: buffers + cached + reclaimable slab;
    /// macOS: cached files).
    pub cached_bytes: u64,
    /// Swap configured (macOS: allocated now; it grows on demand).
    pub swap_total_bytes: u64,
    /// Swap in use.
    pub swap_used_bytes: u64,
    /// The OS's own breakdown, for display.
    pub categories: Vec<MemoryCategory>,
    /// Raw pressure signals.
    pub signals: PressureSignals,
    /// OS free-memory fragmentation in [0, 1]: on Linux the unusable free space index for
    /// 2 MiB blocks from `/proc/buddyinfo`; `None` where the OS does not tell.
    pub fragmentation: Option<f64>,
    /// macOS page counts in bytes.
    pub macos_vm: Option<MacVmStats>,
    /// macOS `iogpu.wired_limit_mb`.
    pub wired_limit: Option<WiredLimit>,
}

impl SystemSnapshot {
    /// A snapshot with the given total and available memory and nothing else known.
    /// Free memory is set to `available`; tests and fakes fill in the rest.
    #[must_use]
    pub fn new(mem_total_bytes: u64, mem_available_bytes: u64) -> Self {
        Self {
            mem_total_bytes,
            mem_available_bytes,
            mem_free_bytes: mem_available_bytes,
            ..Self::default()
        }
    }

    /// `total − available`.
    #[must_use]
    pub fn mem_used_bytes(&self) -> u64 {
        self.mem_total_bytes
            .saturating_sub(self.mem_available_bytes)
    }

    /// The most memory this process's group may hold: physical memory, or the cgroup's
    /// limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) where that is lower. A budget
    /// taken from "the machine" starts here: inside a container, physical memory is not
    /// what the kernel lets the container keep.
    #[must_use]
    pub fn memory_limit_bytes(&self) -> u64 {
        let cgroup = self.signals.cgroup.as_ref().and_then(|c| c.max_bytes);
        cgroup.map_or(self.mem_total_bytes, |limit| {
            limit.min(self.mem_total_bytes)
        })
    }

    /// `used / total` in [0, 1] (0 when the total is unknown).
    #[must_use]
    pub fn mem_used_ratio(&self) -> f64 {
        ratio(self.mem_used_bytes(), self.mem_total_bytes)
    }

    /// Swap in use over physical memory: the quantity of the seed's "swap critical 0.1".
    ///
    /// Over memory, not over swap size: macOS resizes its swap files on demand, so
    /// used/total swings with no change in behaviour, and a Linux swap partition's size
    /// is arbitrary.
    #[must_use]
    pub fn swap_ratio(&self) -> f64 {
        ratio(self.swap_used_bytes, self.mem_total_bytes)
    }
}

/// `part / whole` clamped to [0, 1]; 0 when `whole` is 0.
pub(crate) fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 / whole as f64).clamp(0.0, 1.0)
}

/// This process's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessSnapshot {
    /// Resident set.
    pub rss_bytes: u64,
    /// Resident anonymous memory (heap, KV cache, scratch).
    pub rss_anon_bytes: Option<u64>,
    /// Resident file-backed pages (mapped model files, code).
    pub rss_file_bytes: Option<u64>,
    /// Resident shared memory.
    pub rss_shmem_bytes: Option<u64>,
    /// Peak resident set (Linux `VmHWM`, macOS `resident_size_peak`).
    pub rss_peak_bytes: Option<u64>,
    /// This process's pages in swap (Linux `VmSwap`).
    pub swap_bytes: Option<u64>,
    /// Proportional set size (Linux `smaps_rollup`).
    pub pss_bytes: Option<u64>,
    /// macOS `phys_footprint`: what Activity Monitor and jetsam charge the process with,
    /// compressed and GPU-wired memory included.
    pub phys_footprint_bytes: Option<u64>,
    /// Virtual size.
    pub virtual_bytes: Option<u64>,
}

impl ProcessSnapshot {
    /// A snapshot with only the resident set known.
    #[must_use]
    pub fn new(rss_bytes: u64) -> Self {
        Self {
            rss_bytes,
            ..Self::default()
        }
    }

    /// The number llmem's ledger is reconciled against: `phys_footprint` where the OS has
    /// it (it counts compressed and GPU memory RSS misses), else RSS.
    #[must_use]
    pub fn footprint_bytes(&self) -> u64 {
        self.phys_footprint_bytes.unwrap_or(self.rss_bytes)
    }
}

/// Where a GPU's memory numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuMemorySource {
    /// The device's own memory, as its driver reports it.
    Device,
    /// The driver answered "not supported" (unified-memory parts): the system view.
    System,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GpuSnapshot {
    /// Index in the driver's enumeration.
    pub index: u32,
    /// Marketing name.
    pub name: String,
    /// Where the memory numbers come from.
    pub memory_source: GpuMemorySource,
    /// Memory the GPU can use.
    pub total_bytes: u64,
    /// In use, by every process.
    pub used_bytes: u64,
    /// Free.
    pub free_bytes: u64,
    /// Busy share of the last sample period, in [0, 1].
    pub utilization: Option<f64>,
    /// CPU and GPU share the same memory (Apple silicon, GH200/GB10).
    pub unified_memory: Option<bool>,
    /// Metal's `recommendedMaxWorkingSetSize`: the GPU's usable share of unified memory.
    pub working_set_bytes: Option<u64>,
    /// Metal's `currentAllocatedSize`: this process's GPU allocations.
    pub process_allocated_bytes: Option<u64>,
}

impl GpuSnapshot {
    /// A discrete GPU with the given memory numbers.
    #[must_use]
    pub fn new(index: u32, name: impl Into<String>, total_bytes: u64, used_bytes: u64) -> Self {
        Self {
            index,
            name: name.into(),
            memory_source: GpuMemorySource::Device,
            total_bytes,
            used_bytes,
            free_bytes: total_bytes.saturating_sub(used_bytes),
            utilization: None,
            unified_memory: None,
            working_set_bytes: None,
            process_allocated_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_threads_is_the_physical_cores_within_the_usable_cpus() {
        let mut p = PlatformInfo {
            physical_cores: Some(4),
            logical_cores: 8,
            usable_cpus: 8,
            ..PlatformInfo::default()
        };
        assert_eq!(p.default_threads(), 4);
        // A process pinned to 2 CPUs runs 2 threads, whatever the machine has.
        p.usable_cpus = 2;
        assert_eq!(p.default_threads(), 2);
        // Cores the OS cannot tell apart: every usable CPU.
        p.physical_cores = None;
        p.usable_cpus = 6;
        assert_eq!(p.default_threads(), 6);
    }

    #[test]
    fn usable_cpus_never_exceeds_the_online_count() {
        assert_eq!(usable_cpus(1), 1);
        assert!(usable_cpus(4096) >= 1);
        assert!(usable_cpus(2) <= 2);
        assert_eq!(usable_cpus(0), 1);
    }
}
