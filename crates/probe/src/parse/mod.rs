//! Pure functions from the text (or raw numbers) a platform reports to typed readings.
//!
//! Everything here is platform-independent and tested on recorded fixtures; the backends
//! only fetch the inputs.

mod cgroup;
mod darwin;
mod procfs;
mod sysfs;

pub use cgroup::{
    CGROUP1_NO_LIMIT_BYTES, Cgroup2Mount, CgroupEvents, CgroupMemory, CgroupStat, CgroupVersion,
    parse_cgroup_events, parse_cgroup_limit, parse_cgroup_stat, parse_cgroup_value,
    parse_cgroup1_limit, parse_cgroup1_memory_mount, parse_cgroup1_stat, parse_cgroup2_mount,
    parse_proc_cgroup, parse_proc_cgroup1_memory,
};
pub use darwin::{MacVmCounts, MacVmStats, SwapUsage, parse_swapusage, wired_limit_from_mib};
pub use procfs::{
    BuddyInfo, BuddyZone, HUGE_PAGE_ORDER, MemInfo, ProcStatus, Psi, PsiWindow, SmapsRollup,
    parse_buddyinfo, parse_meminfo, parse_proc_status, parse_psi, parse_smaps_rollup,
};
pub use sysfs::{parse_cache_kind, parse_cache_size, parse_cpu_list};
