//! The macOS backend: sysctl, `host_statistics64`, `task_info(TASK_VM_INFO)` and Metal.
//! Thin: raw numbers go through [`crate::parse`]'s conversions. Type-checked on Linux CI
//! with `cargo check --target aarch64-apple-darwin`; docs/design/probe.md lists what still
//! needs checking on a real Mac.

use std::ffi::{CStr, c_void};
use std::io;
use std::mem;

use mach2::kern_return::KERN_SUCCESS;
use mach2::message::mach_msg_type_number_t;
use mach2::task_info::{TASK_VM_INFO, task_vm_info};
use mach2::vm_statistics::vm_statistics64;
use mach2::vm_types::natural_t;
use objc2::rc::Retained;
use objc2::runtime::ProtocolObject;
use objc2_metal::{MTLCreateSystemDefaultDevice, MTLDevice};

use crate::error::ProbeError;
use crate::memory_probe::MemoryProbe;
use crate::parse::{MacVmCounts, SwapUsage, wired_limit_from_mib};
use crate::snapshot::{
    CacheKind, CacheLevel, CoreKind, GpuMemorySource, GpuSnapshot, MacPressureLevel,
    MemoryCategory, PlatformInfo, PressureSignals, ProcessSnapshot, SystemSnapshot, WiredLimit,
};

/// Reads memory facts from macOS.
#[derive(Debug)]
pub struct MacProbe {
    /// The system GPU; `None` on a Mac without Metal (a VM, say).
    metal: Option<Retained<ProtocolObject<dyn MTLDevice>>>,
}

impl Default for MacProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl MacProbe {
    /// Opens the system's default Metal device, if there is one.
    #[must_use]
    pub fn new() -> Self {
        Self {
            metal: MTLCreateSystemDefaultDevice(),
        }
    }
}

/// Reads an integer sysctl of 4 or 8 bytes; `Ok(None)` when this macOS does not have it.
fn sysctl_int(name: &'static CStr) -> Result<Option<i64>, ProbeError> {
    let mut buf = [0_u8; 8];
    let mut len = buf.len();
    // SAFETY: `name` is NUL-terminated; `buf` is writable for `len` bytes and the kernel
    // writes at most `len` bytes, reporting how many in `len`; no new value is set.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            buf.as_mut_ptr().cast::<c_void>(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(sysctl_error(name, err));
    }
    match len {
        4 => Ok(Some(i64::from(i32::from_ne_bytes([
            buf[0], buf[1], buf[2], buf[3],
        ])))),
        8 => Ok(Some(i64::from_ne_bytes(buf))),
        _ => Err(sysctl_error(
            name,
            io::Error::new(io::ErrorKind::InvalidData, format!("{len}-byte value")),
        )),
    }
}

fn sysctl_error(name: &'static CStr, source: io::Error) -> ProbeError {
    ProbeError::Sysctl {
        name: name.to_str().unwrap_or("sysctl"),
        cause: source,
    }
}

/// A sysctl every supported macOS has, as a non-negative number.
fn sysctl_required(name: &'static CStr) -> Result<u64, ProbeError> {
    let value = sysctl_int(name)?
        .ok_or_else(|| sysctl_error(name, io::Error::from(io::ErrorKind::NotFound)))?;
    u64::try_from(value)
        .map_err(|_| sysctl_error(name, io::Error::new(io::ErrorKind::InvalidData, "negative")))
}

/// A sysctl some Macs lack (`hw.perflevel1.*` on Intel, `iogpu.*` before macOS 14).
fn sysctl_optional(name: &'static CStr) -> Result<Option<u64>, ProbeError> {
    Ok(sysctl_int(name)?.and_then(|v| u64::try_from(v).ok()))
}

fn swap_usage() -> Result<SwapUsage, ProbeError> {
    let name = c"vm.swapusage";
    // SAFETY: xsw_usage is plain integers; all-zero is a valid value.
    let mut usage: libc::xsw_usage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::xsw_usage>();
    // SAFETY: `usage` is writable for `len` bytes, the size of the struct the kernel
    // writes for this name; no new value is set.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            (&raw mut usage).cast::<c_void>(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return Err(sysctl_error(name, io::Error::last_os_error()));
    }
    Ok(SwapUsage::from_xsw(
        usage.xsu_total,
        usage.xsu_avail,
        usage.xsu_used,
    ))
}

fn vm_counts() -> Result<MacVmCounts, ProbeError> {
    let mut stats = vm_statistics64::default();
    let mut count =
        (mem::size_of::<vm_statistics64>() / mem::size_of::<natural_t>()) as mach_msg_type_number_t;
    // SAFETY: `stats` is writable for `count` natural_t words, which the kernel is told
    // and never exceeds; mach_host_self returns a send right we only use for this call.
    let rc = unsafe {
        libc::host_statistics64(
            mach2::mach_init::mach_host_self(),
            libc::HOST_VM_INFO64,
            (&raw mut stats).cast::<libc::integer_t>(),
            &mut count,
        )
    };
    if rc != KERN_SUCCESS {
        return Err(ProbeError::Mach {
            call: "host_statistics64",
            code: rc,
        });
    }
    Ok(MacVmCounts {
        free: u64::from(stats.free_count),
        active: u64::from(stats.active_count),
        inactive: u64::from(stats.inactive_count),
        wired: u64::from(stats.wire_count),
        compressor: u64::from(stats.compressor_page_count),
        purgeable: u64::from(stats.purgeable_count),
        speculative: u64::from(stats.speculative_count),
        internal: u64::from(stats.internal_page_count),
        external: u64::from(stats.external_page_count),
    })
}

/// This task's VM info and whether the kernel filled in `phys_footprint` (older kernels
/// return a shorter struct and say so in the count).
fn task_vm() -> Result<(task_vm_info, bool), ProbeError> {
    let mut info = task_vm_info::default();
    let words = |bytes: usize| (bytes / mem::size_of::<natural_t>()) as mach_msg_type_number_t;
    let mut count = words(mem::size_of::<task_vm_info>());
    // SAFETY: `info` is writable for `count` natural_t words, which the kernel is told and
    // never exceeds; mach_task_self names this task.
    let rc = unsafe {
        mach2::task::task_info(
            mach2::traps::mach_task_self(),
            TASK_VM_INFO,
            (&raw mut info).cast(),
            &mut count,
        )
    };
    if rc != KERN_SUCCESS {
        return Err(ProbeError::Mach {
            call: "task_info(TASK_VM_INFO)",
            code: rc,
        });
    }
    let footprint_end = mem::offset_of!(task_vm_info, phys_footprint) + mem::size_of::<u64>();
    Ok((info, count >= words(footprint_end)))
}

fn caches(line: u64) -> Result<Vec<CacheLevel>, ProbeError> {
    // perflevel0 is the performance cluster; the unprefixed names describe the efficiency
    // cores on Apple silicon and the only kind on Intel Macs.
    let table: [(&'static CStr, u8, CacheKind, CoreKind); 8] = [
        (
            c"hw.perflevel0.l1dcachesize",
            1,
            CacheKind::Data,
            CoreKind::Performance,
        ),
        (
            c"hw.perflevel0.l1icachesize",
            1,
            CacheKind::Instruction,
            CoreKind::Performance,
        ),
        (
            c"hw.perflevel0.l2cachesize",
            2,
            CacheKind::Unified,
            CoreKind::Performance,
        ),
        (
            c"hw.perflevel0.l3cachesize",
            3,
            CacheKind::Unified,
            CoreKind::Performance,
        ),
        (c"hw.l1dcachesize", 1, CacheKind::Data, CoreKind::Efficiency),
        (
            c"hw.l1icachesize",
            1,
            CacheKind::Instruction,
            CoreKind::Efficiency,
        ),
        (
            c"hw.l2cachesize",
            2,
            CacheKind::Unified,
            CoreKind::Efficiency,
        ),
        (
            c"hw.l3cachesize",
            3,
            CacheKind::Unified,
            CoreKind::Efficiency,
        ),
    ];
    let has_perflevels = sysctl_optional(c"hw.nperflevels")?.is_some_and(|n| n > 1);
    let p_cpus_per_l2 = sysctl_optional(c"hw.perflevel0.cpusperl2")?;
    let mut out = Vec::new();
    for (name, level, kind, cores) in table {
        let Some(size_bytes) = sysctl_optional(name)?.filter(|&s| s > 0) else {
            continue;
        };
        let mut cache = CacheLevel::new(level, kind, size_bytes);
        cache.line_bytes = Some(line);
        cache.cores = if has_perflevels { cores } else { CoreKind::Any };
        if level == 2 && cores == CoreKind::Performance {
            cache.shared_by_cpus = p_cpus_per_l2.and_then(|n| u32::try_from(n).ok());
        }
        out.push(cache);
    }
    Ok(out)
}

impl MemoryProbe for MacProbe {
    fn platform(&self) -> Result<PlatformInfo, ProbeError> {
        let cache_line_bytes = sysctl_required(c"hw.cachelinesize")?;
        let count = |v: Option<u64>| v.and_then(|n| u32::try_from(n).ok());
        let logical_cores = count(sysctl_optional(c"hw.logicalcpu")?).unwrap_or(1);
        Ok(PlatformInfo {
            page_size_bytes: sysctl_required(c"hw.pagesize")?,
            cache_line_bytes,
            caches: caches(cache_line_bytes)?,
            mem_total_bytes: sysctl_required(c"hw.memsize")?,
            physical_cores: count(sysctl_optional(c"hw.physicalcpu")?),
            logical_cores,
            usable_cpus: crate::snapshot::usable_cpus(logical_cores),
        })
    }

    fn system(&self) -> Result<SystemSnapshot, ProbeError> {
        let total = sysctl_required(c"hw.memsize")?;
        let page = sysctl_required(c"hw.pagesize")?;
        let vm = vm_counts()?.to_stats(page);
        let swap = swap_usage()?;
        let level = sysctl_optional(c"kern.memorystatus_vm_pressure_level")?
            .and_then(|v| MacPressureLevel::from_sysctl(i64::try_from(v).ok()?));
        let wired_limit = sysctl_optional(c"iogpu.wired_limit_mb")?
            .map(|mib| wired_limit_from_mib(mib).map_or(WiredLimit::Default, WiredLimit::Bytes));
        Ok(SystemSnapshot {
            mem_total_bytes: total,
            mem_available_bytes: vm.available_bytes(total),
            mem_free_bytes: vm.free_bytes,
            cached_bytes: vm.cached_files_bytes,
            swap_total_bytes: swap.total_bytes,
            swap_used_bytes: swap.used_bytes,
            categories: vec![
                MemoryCategory::new("app", vm.app_bytes),
                MemoryCategory::new("wired", vm.wired_bytes),
                MemoryCategory::new("compressed", vm.compressed_bytes),
                MemoryCategory::new("cached_files", vm.cached_files_bytes),
                MemoryCategory::new("free", vm.free_bytes),
            ],
            signals: PressureSignals {
                psi: None,
                cgroup: None,
                macos_level: level,
            },
            fragmentation: None,
            macos_vm: Some(vm),
            wired_limit,
        })
    }

    fn process(&self) -> Result<ProcessSnapshot, ProbeError> {
        let (info, has_footprint) = task_vm()?;
        Ok(ProcessSnapshot {
            rss_bytes: info.resident_size,
            rss_anon_bytes: Some(info.internal),
            rss_file_bytes: Some(info.external),
            rss_shmem_bytes: None,
            rss_peak_bytes: Some(info.resident_size_peak),
            swap_bytes: None,
            pss_bytes: None,
            phys_footprint_bytes: has_footprint.then_some(info.phys_footprint),
            virtual_bytes: Some(info.virtual_size),
        })
    }

    fn gpus(&self, system: &SystemSnapshot) -> Result<Vec<GpuSnapshot>, ProbeError> {
        let Some(device) = &self.metal else {
            return Ok(Vec::new());
        };
        let unified = device.hasUnifiedMemory();
        let working_set = device.recommendedMaxWorkingSetSize();
        let allocated = u64::try_from(device.currentAllocatedSize()).unwrap_or(u64::MAX);
        // Metal reports no device-wide use; on unified memory the GPU's pool is the
        // system's, bounded by the working set.
        let (total, used, free) = if unified {
            let used = system.mem_used_bytes().min(working_set);
            let free = system
                .mem_available_bytes
                .min(working_set.saturating_sub(used));
            (working_set, used, free)
        } else {
            (
                working_set,
                allocated,
                working_set.saturating_sub(allocated),
            )
        };
        let mut gpu = GpuSnapshot::new(0, device.name().to_string(), total, used);
        gpu.free_bytes = free;
        gpu.memory_source = if unified {
            GpuMemorySource::System
        } else {
            GpuMemorySource::Device
        };
        gpu.unified_memory = Some(unified);
        gpu.working_set_bytes = Some(working_set);
        gpu.process_allocated_bytes = Some(allocated);
        Ok(vec![gpu])
    }
}
