//! The Linux backend: `/proc`, PSI, cgroup v2 (v1's memory controller where v2 has none),
//! sysfs, and NVML when the `nvml` feature is on and a driver is present. Thin: it reads
//! files and hands them to [`crate::parse`].

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{ParseError, ProbeError};
use crate::memory_probe::MemoryProbe;
use crate::parse::{
    CgroupMemory, CgroupVersion, MemInfo, parse_buddyinfo, parse_cache_kind, parse_cache_size,
    parse_cgroup_events, parse_cgroup_limit, parse_cgroup_stat, parse_cgroup_value,
    parse_cgroup1_limit, parse_cgroup1_memory_mount, parse_cgroup1_stat, parse_cgroup2_mount,
    parse_cpu_list, parse_meminfo, parse_proc_cgroup, parse_proc_cgroup1_memory, parse_proc_status,
    parse_psi, parse_smaps_rollup,
};
use crate::snapshot::{
    CacheLevel, CoreKind, GpuSnapshot, MemoryCategory, PlatformInfo, PressureSignals,
    ProcessSnapshot, SystemSnapshot,
};

/// Reads memory facts from Linux's `/proc` and `/sys`.
///
/// [`LinuxProbe::with_root`] reads the same files under another directory: the tests run
/// the whole backend on recorded trees of real kernels that way.
#[derive(Debug)]
pub struct LinuxProbe {
    root: PathBuf,
    #[cfg(feature = "nvml")]
    nvml: Option<crate::nvml::NvmlGpus>,
}

impl Default for LinuxProbe {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the files of one CPU live, relative to the root.
const CPU_DIR: &str = "sys/devices/system/cpu";

impl LinuxProbe {
    /// Reads this machine's files; loads NVML if the `nvml` feature is on and a driver
    /// is installed.
    #[must_use]
    pub fn new() -> Self {
        Self {
            root: PathBuf::from("/"),
            #[cfg(feature = "nvml")]
            nvml: crate::nvml::NvmlGpus::load(),
        }
    }

    /// Reads `proc/…` and `sys/…` under `root` instead of `/`. Never loads NVML.
    #[must_use]
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            #[cfg(feature = "nvml")]
            nvml: None,
        }
    }

    /// Whether NVML was loaded (a driver library was found and initialized).
    #[must_use]
    pub fn has_nvml(&self) -> bool {
        #[cfg(feature = "nvml")]
        return self.nvml.is_some();
        #[cfg(not(feature = "nvml"))]
        false
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Reads a file every supported kernel has.
    fn read(&self, relative: &str) -> Result<String, ProbeError> {
        let path = self.path(relative);
        fs::read_to_string(&path).map_err(|source| ProbeError::Read {
            path,
            cause: source,
        })
    }

    /// Reads a file a kernel may lack. Absent, forbidden or disabled (PSI compiled in but
    /// off answers `EOPNOTSUPP`) all mean "unknown".
    fn read_optional(&self, relative: &Path) -> Result<Option<String>, ProbeError> {
        let path = self.root.join(relative);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(source) => Err(ProbeError::Read {
                path,
                cause: source,
            }),
        }
    }

    fn parse<T>(
        &self,
        relative: &str,
        parser: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, ProbeError> {
        let text = self.read(relative)?;
        parser(&text).map_err(|source| ProbeError::Parse {
            path: self.path(relative),
            cause: source,
        })
    }

    fn parse_optional<T>(
        &self,
        relative: impl AsRef<Path>,
        parser: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<Option<T>, ProbeError> {
        let relative = relative.as_ref();
        let Some(text) = self.read_optional(relative)? else {
            return Ok(None);
        };
        parser(&text).map(Some).map_err(|source| ProbeError::Parse {
            path: self.root.join(relative),
            cause: source,
        })
    }

    fn caches(&self) -> Result<Vec<CacheLevel>, ProbeError> {
        let mut caches = Vec::new();
        for index in 0.. {
            let dir = PathBuf::from(format!("{CPU_DIR}/cpu0/cache/index{index}"));
            let Some(level) = self.parse_optional(dir.join("level"), |t| {
                t.trim().parse::<u8>().map_err(|_| ParseError::BadNumber {
                    input: "cache level",
                    line: 1,
                    field: "level".into(),
                    found: crate::error::excerpt(t.trim()),
                })
            })?
            else {
                break;
            };
            let Some(kind) = self.parse_optional(dir.join("type"), parse_cache_kind)? else {
                break;
            };
            let Some(size_bytes) = self.parse_optional(dir.join("size"), parse_cache_size)? else {
                continue;
            };
            let mut cache = CacheLevel::new(level, kind, size_bytes);
            cache.line_bytes = self
                .parse_optional(dir.join("coherency_line_size"), parse_cache_size)?
                .filter(|&line| line > 0);
            cache.shared_by_cpus = self
                .parse_optional(dir.join("shared_cpu_list"), parse_cpu_list)?
                .and_then(|cpus| u32::try_from(cpus.len()).ok());
            cache.cores = CoreKind::Any;
            caches.push(cache);
        }
        Ok(caches)
    }

    /// Distinct cores among the online CPUs, told apart by their sibling lists.
    fn physical_cores(&self, online: &[u32]) -> Result<Option<u32>, ProbeError> {
        let mut cores = BTreeSet::new();
        for cpu in online {
            let topology = format!("{CPU_DIR}/cpu{cpu}/topology");
            let siblings =
                match self.read_optional(Path::new(&format!("{topology}/core_cpus_list")))? {
                    Some(list) => Some(list),
                    None => {
                        self.read_optional(Path::new(&format!("{topology}/thread_siblings_list")))?
                    }
                };
            let Some(siblings) = siblings else {
                return Ok(None);
            };
            cores.insert(siblings.trim().to_owned());
        }
        Ok(u32::try_from(cores.len()).ok().filter(|&n| n > 0))
    }

    /// This process's cgroup: v2 where its hierarchy has the memory controller, else v1's
    /// memory controller; `None` without either (or at a v2 root).
    fn cgroup(&self, mem_total_bytes: u64) -> Result<Option<CgroupMemory>, ProbeError> {
        match self.cgroup2()? {
            Some(cgroup) => Ok(Some(cgroup)),
            None => self.cgroup1(mem_total_bytes),
        }
    }

    /// The v1 memory controller's view of this process's cgroup. Its `memory.stat` gives
    /// the tightest limit over the ancestors (`hierarchical_memory_limit`), so no walk up
    /// is needed; v1's "no limit" value reads as `None`.
    fn cgroup1(&self, mem_total_bytes: u64) -> Result<Option<CgroupMemory>, ProbeError> {
        let Some(path) = self
            .parse_optional("proc/self/cgroup", parse_proc_cgroup1_memory)?
            .flatten()
        else {
            return Ok(None);
        };
        let Some(mount) = self
            .parse_optional("proc/self/mountinfo", parse_cgroup1_memory_mount)?
            .flatten()
        else {
            return Ok(None);
        };
        let mut dir = PathBuf::from(mount.dir_of(&path));
        // A container often sees its own cgroup at the hierarchy's mount point while
        // /proc/self/cgroup still names the host's path for it.
        if self
            .read_optional(&dir.join("memory.usage_in_bytes"))?
            .is_none()
        {
            dir = PathBuf::from(mount.dir_of(&mount.root));
        }
        let Some(current_bytes) = self.parse_optional(dir.join("memory.usage_in_bytes"), |t| {
            parse_cgroup_value("memory.usage_in_bytes", t)
        })?
        else {
            return Ok(None);
        };
        let limit = self
            .parse_optional(dir.join("memory.limit_in_bytes"), |t| {
                parse_cgroup1_limit("memory.limit_in_bytes", t, mem_total_bytes)
            })?
            .flatten();
        let stat = self.parse_optional(dir.join("memory.stat"), |t| {
            parse_cgroup1_stat(t, mem_total_bytes)
        })?;
        let memsw = self.parse_optional(dir.join("memory.memsw.usage_in_bytes"), |t| {
            parse_cgroup_value("memory.memsw.usage_in_bytes", t)
        })?;
        Ok(Some(CgroupMemory {
            version: CgroupVersion::V1,
            path,
            current_bytes,
            max_bytes: tighter(limit, stat.and_then(|(_, l)| l)),
            high_bytes: None,
            swap_current_bytes: memsw.map(|m| m.saturating_sub(current_bytes)),
            stat: stat.map(|(s, _)| s),
            events: None,
            psi: None,
        }))
    }

    /// The cgroup v2 this process is in, or `None` on v1-only hosts, where v2 has no
    /// memory controller, and at the root.
    fn cgroup2(&self) -> Result<Option<CgroupMemory>, ProbeError> {
        let Some(path) = self
            .parse_optional("proc/self/cgroup", parse_proc_cgroup)?
            .flatten()
        else {
            return Ok(None);
        };
        let Some(mount) = self
            .parse_optional("proc/self/mountinfo", parse_cgroup2_mount)?
            .flatten()
        else {
            return Ok(None);
        };
        let dir = PathBuf::from(mount.dir_of(&path));
        let Some(current_bytes) = self.parse_optional(dir.join("memory.current"), |t| {
            parse_cgroup_value("memory.current", t)
        })?
        else {
            // The root cgroup, or a v2 hierarchy without the memory controller.
            return Ok(None);
        };
        // A limit anywhere above us binds too: take the tightest.
        let top = PathBuf::from(mount.dir_of(&mount.root));
        let (mut max_bytes, mut high_bytes) = (None::<u64>, None::<u64>);
        let mut at = Some(dir.as_path());
        while let Some(d) = at {
            let max = self.parse_optional(d.join("memory.max"), |t| {
                parse_cgroup_limit("memory.max", t)
            })?;
            let high = self.parse_optional(d.join("memory.high"), |t| {
                parse_cgroup_limit("memory.high", t)
            })?;
            max_bytes = tighter(max_bytes, max.flatten());
            high_bytes = tighter(high_bytes, high.flatten());
            if d == top {
                break;
            }
            at = d.parent().filter(|p| p.starts_with(&top));
        }
        Ok(Some(CgroupMemory {
            version: CgroupVersion::V2,
            path,
            current_bytes,
            max_bytes,
            high_bytes,
            swap_current_bytes: self.parse_optional(dir.join("memory.swap.current"), |t| {
                parse_cgroup_value("memory.swap.current", t)
            })?,
            stat: self.parse_optional(dir.join("memory.stat"), parse_cgroup_stat)?,
            events: self.parse_optional(dir.join("memory.events"), parse_cgroup_events)?,
            psi: self.parse_optional(dir.join("memory.pressure"), parse_psi)?,
        }))
    }
}

fn tighter(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_absent(e: &io::Error) -> bool {
    const EOPNOTSUPP: i32 = 95;
    const ENODEV: i32 = 19;
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
    ) || matches!(e.raw_os_error(), Some(EOPNOTSUPP | ENODEV))
}

/// The base page size, from `sysconf`.
fn page_size_bytes() -> u64 {
    // SAFETY: sysconf takes a constant and touches no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The buddy order of a 2 MiB block with this page size (9 with 4 KiB pages).
fn huge_page_order(page_size_bytes: u64) -> u32 {
    let pages = (2_u64 << 20) / page_size_bytes.max(1);
    pages.max(1).ilog2()
}

/// The OS categories of `/proc/meminfo` shown beside llmem's pools.
fn categories(info: &MemInfo) -> Vec<MemoryCategory> {
    let mut out = Vec::new();
    let shmem = info.shmem_bytes.unwrap_or(0);
    if let Some(anon) = info.anon_bytes {
        out.push(MemoryCategory::new("anon", anon));
    }
    if let Some(cached) = info.cached_bytes {
        let cache = (cached + info.buffers_bytes.unwrap_or(0)).saturating_sub(shmem);
        out.push(MemoryCategory::new("page_cache", cache));
    }
    if info.shmem_bytes.is_some() {
        out.push(MemoryCategory::new("shmem", shmem));
    }
    if let (Some(r), Some(u)) = (info.slab_reclaimable_bytes, info.slab_unreclaimable_bytes) {
        out.push(MemoryCategory::new("slab", r + u));
    }
    if let (Some(stack), Some(tables)) = (info.kernel_stack_bytes, info.page_tables_bytes) {
        out.push(MemoryCategory::new("kernel", stack + tables));
    }
    out.push(MemoryCategory::new("free", info.free_bytes));
    out
}

impl MemoryProbe for LinuxProbe {
    fn platform(&self) -> Result<PlatformInfo, ProbeError> {
        let meminfo = self.parse("proc/meminfo", parse_meminfo)?;
        let online = self.parse_optional(format!("{CPU_DIR}/online"), parse_cpu_list)?;
        let logical_cores = match &online {
            Some(cpus) if !cpus.is_empty() => u32::try_from(cpus.len()).unwrap_or(u32::MAX),
            _ => std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        };
        let physical_cores = match &online {
            Some(cpus) => self.physical_cores(cpus)?,
            None => None,
        };
        let caches = self.caches()?;
        // Every level reports the same line size on the CPUs Linux runs on; 64 B is the
        // x86-64 value for a kernel that does not say.
        let cache_line_bytes = caches.iter().find_map(|c| c.line_bytes).unwrap_or(64);
        Ok(PlatformInfo {
            page_size_bytes: page_size_bytes(),
            cache_line_bytes,
            caches,
            mem_total_bytes: meminfo.total_bytes,
            physical_cores,
            logical_cores,
            usable_cpus: crate::snapshot::usable_cpus(logical_cores),
        })
    }

    fn system(&self) -> Result<SystemSnapshot, ProbeError> {
        let info = self.parse("proc/meminfo", parse_meminfo)?;
        let psi = self.parse_optional("proc/pressure/memory", parse_psi)?;
        let cgroup = self.cgroup(info.total_bytes)?;
        let order = huge_page_order(page_size_bytes());
        let fragmentation = self
            .parse_optional("proc/buddyinfo", parse_buddyinfo)?
            .and_then(|b| b.unusable_free_index(order));
        let cached_bytes = info.buffers_bytes.unwrap_or(0)
            + info.cached_bytes.unwrap_or(0)
            + info.slab_reclaimable_bytes.unwrap_or(0);
        Ok(SystemSnapshot {
            mem_total_bytes: info.total_bytes,
            mem_available_bytes: info.available_or_estimate(),
            mem_free_bytes: info.free_bytes,
            cached_bytes,
            swap_total_bytes: info.swap_total_bytes.unwrap_or(0),
            swap_used_bytes: info.swap_used_bytes(),
            categories: categories(&info),
            signals: PressureSignals {
                psi,
                cgroup,
                macos_level: None,
            },
            fragmentation,
            macos_vm: None,
            wired_limit: None,
        })
    }

    fn process(&self) -> Result<ProcessSnapshot, ProbeError> {
        let status = self.parse("proc/self/status", parse_proc_status)?;
        let rollup = self.parse_optional("proc/self/smaps_rollup", parse_smaps_rollup)?;
        Ok(ProcessSnapshot {
            rss_bytes: status.rss_bytes,
            rss_anon_bytes: status.rss_anon_bytes,
            rss_file_bytes: status.rss_file_bytes,
            rss_shmem_bytes: status.rss_shmem_bytes,
            rss_peak_bytes: status.rss_peak_bytes,
            swap_bytes: status.swap_bytes,
            pss_bytes: rollup.and_then(|r| r.pss_bytes),
            phys_footprint_bytes: None,
            virtual_bytes: status.virtual_bytes,
        })
    }

    fn gpus(&self, system: &SystemSnapshot) -> Result<Vec<GpuSnapshot>, ProbeError> {
        #[cfg(feature = "nvml")]
        if let Some(nvml) = &self.nvml {
            return nvml.snapshots(system);
        }
        let _ = system;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_orders() {
        assert_eq!(huge_page_order(4096), 9);
        assert_eq!(huge_page_order(16384), 7);
        assert_eq!(huge_page_order(65536), 5);
        assert_eq!(huge_page_order(4 << 20), 0);
    }

    #[test]
    fn limits_combine_to_the_tightest() {
        assert_eq!(tighter(None, Some(3)), Some(3));
        assert_eq!(tighter(Some(5), Some(3)), Some(3));
        assert_eq!(tighter(Some(5), None), Some(5));
        assert_eq!(tighter(None, None), None);
    }
}
