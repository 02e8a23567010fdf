//! Pure parsers for cgroup memory files and for finding this process's cgroup.
//!
//! cgroup v2 first; where the v2 hierarchy has no memory controller (a v1-only or hybrid
//! host, which many container hosts still are), the v1 memory controller's files:
//! `memory.limit_in_bytes`, `memory.usage_in_bytes` and `memory.stat`, whose `total_*`
//! lines cover the cgroup's subtree and whose `hierarchical_memory_limit` is the tightest
//! limit of the cgroup and its ancestors. v1 says "no limit" with a huge page-rounded
//! number (9223372036854771712 on x86-64) rather than `max`.

use serde::{Deserialize, Serialize};

use crate::error::{ParseError, excerpt};
use crate::parse::Psi;

/// Parses a file holding one decimal number (`memory.current`, `memory.swap.current`).
///
/// # Errors
/// Anything but one number.
pub fn parse_cgroup_value(input: &'static str, text: &str) -> Result<u64, ParseError> {
    let value = text.trim();
    value.parse().map_err(|_| ParseError::BadNumber {
        input,
        line: 1,
        field: input.to_owned(),
        found: excerpt(value),
    })
}

/// Parses `memory.max` or `memory.high`: a byte count, or `max` for no limit (`None`).
///
/// # Errors
/// Anything but `max` or one number.
pub fn parse_cgroup_limit(input: &'static str, text: &str) -> Result<Option<u64>, ParseError> {
    if text.trim() == "max" {
        return Ok(None);
    }
    parse_cgroup_value(input, text).map(Some)
}

/// A v1 limit at or above this is v1's "no limit" (`PAGE_COUNTER_MAX` pages, just under
/// 2^63 bytes; page-size dependent, so compared with a margin).
pub const CGROUP1_NO_LIMIT_BYTES: u64 = 1 << 62;

/// Parses a v1 limit (`memory.limit_in_bytes`, `hierarchical_memory_limit`): a byte
/// count, `None` for v1's "no limit" value or for a limit above `mem_total_bytes`, which
/// cannot bind (a limit the machine cannot reach is no limit to plan with).
///
/// # Errors
/// Anything but one number.
pub fn parse_cgroup1_limit(
    input: &'static str,
    text: &str,
    mem_total_bytes: u64,
) -> Result<Option<u64>, ParseError> {
    let bytes = parse_cgroup_value(input, text)?;
    Ok(cgroup1_limit(bytes, mem_total_bytes))
}

fn cgroup1_limit(bytes: u64, mem_total_bytes: u64) -> Option<u64> {
    let unreachable = mem_total_bytes > 0 && bytes > mem_total_bytes;
    (bytes < CGROUP1_NO_LIMIT_BYTES && !unreachable).then_some(bytes)
}

/// Parses `key value` lines, handing each known key's value to `f`.
fn for_each_pair(
    input: &'static str,
    text: &str,
    mut f: impl FnMut(&str, u64),
) -> Result<(), ParseError> {
    for (index, raw) in text.lines().enumerate() {
        let mut words = raw.split_whitespace();
        let (Some(key), Some(value), None) = (words.next(), words.next(), words.next()) else {
            if raw.trim().is_empty() {
                continue;
            }
            return Err(ParseError::BadLine {
                input,
                line: index + 1,
                expected: "`key value`",
                found: excerpt(raw),
            });
        };
        let value = value.parse().map_err(|_| ParseError::BadNumber {
            input,
            line: index + 1,
            field: key.to_owned(),
            found: excerpt(value),
        })?;
        f(key, value);
    }
    Ok(())
}

/// `memory.events`: how often the cgroup hit each boundary since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CgroupEvents {
    /// Reclaimed below `memory.low` despite the protection.
    pub low: u64,
    /// Throttled by `memory.high`.
    pub high: u64,
    /// Hit `memory.max` and had to reclaim (or fail) to allocate.
    pub max: u64,
    /// The OOM killer was invoked for this cgroup.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
}

/// Parses `memory.events`; unknown keys (`oom_group_kill`, …) are skipped.
///
/// # Errors
/// A line that is not `key number`.
pub fn parse_cgroup_events(text: &str) -> Result<CgroupEvents, ParseError> {
    let mut events = CgroupEvents::default();
    for_each_pair("memory.events", text, |key, value| match key {
        "low" => events.low = value,
        "high" => events.high = value,
        "max" => events.max = value,
        "oom" => events.oom = value,
        "oom_kill" => events.oom_kill = value,
        _ => {}
    })?;
    Ok(events)
}

/// The lines of `memory.stat` the probe uses, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CgroupStat {
    /// `anon`.
    pub anon_bytes: Option<u64>,
    /// `file`: page cache charged to the cgroup, mapped model files included.
    pub file_bytes: Option<u64>,
    /// `file_mapped`: the part of `file` mapped into a process.
    pub file_mapped_bytes: Option<u64>,
    /// `active_file`.
    pub active_file_bytes: Option<u64>,
    /// `inactive_file`: page cache the kernel reclaims first.
    pub inactive_file_bytes: Option<u64>,
    /// `shmem`.
    pub shmem_bytes: Option<u64>,
}

/// Parses `memory.stat`.
///
/// # Errors
/// A line that is not `key number`.
pub fn parse_cgroup_stat(text: &str) -> Result<CgroupStat, ParseError> {
    let mut stat = CgroupStat::default();
    for_each_pair("memory.stat", text, |key, value| {
        let slot = match key {
            "anon" => &mut stat.anon_bytes,
            "file" => &mut stat.file_bytes,
            "file_mapped" => &mut stat.file_mapped_bytes,
            "active_file" => &mut stat.active_file_bytes,
            "inactive_file" => &mut stat.inactive_file_bytes,
            "shmem" => &mut stat.shmem_bytes,
            _ => return,
        };
        *slot = Some(value);
    })?;
    Ok(stat)
}

/// Parses a v1 `memory.stat`: the subtree's counters (`total_*`) in v2's terms, and the
/// tightest limit of the cgroup and its ancestors (`hierarchical_memory_limit`, `None` when
/// unlimited or above `mem_total_bytes`).
///
/// # Errors
/// A line that is not `key number`.
pub fn parse_cgroup1_stat(
    text: &str,
    mem_total_bytes: u64,
) -> Result<(CgroupStat, Option<u64>), ParseError> {
    let mut stat = CgroupStat::default();
    let mut limit = None;
    for_each_pair("memory.stat", text, |key, value| {
        let slot = match key {
            "total_rss" => &mut stat.anon_bytes,
            "total_cache" => &mut stat.file_bytes,
            "total_mapped_file" => &mut stat.file_mapped_bytes,
            "total_active_file" => &mut stat.active_file_bytes,
            "total_inactive_file" => &mut stat.inactive_file_bytes,
            "total_shmem" => &mut stat.shmem_bytes,
            "hierarchical_memory_limit" => &mut limit,
            _ => return,
        };
        *slot = Some(value);
    })?;
    Ok((stat, limit.and_then(|l| cgroup1_limit(l, mem_total_bytes))))
}

/// Finds this process's cgroup in the v1 memory hierarchy in `/proc/self/cgroup` (the
/// `N:…memory…:/path` line); `None` on a v2-only host.
///
/// # Errors
/// A line that is not `id:controllers:path`.
pub fn parse_proc_cgroup1_memory(text: &str) -> Result<Option<String>, ParseError> {
    find_proc_cgroup(text, |_, controllers| {
        controllers.split(',').any(|c| c == "memory")
    })
}

/// Finds this process's cgroup v2 path in `/proc/self/cgroup` (the `0::/path` line).
/// `None` on a v1-only host.
///
/// # Errors
/// A line that is not `id:controllers:path`.
pub fn parse_proc_cgroup(text: &str) -> Result<Option<String>, ParseError> {
    find_proc_cgroup(text, |id, controllers| id == "0" && controllers.is_empty())
}

/// The path of the first `/proc/self/cgroup` line (`id:controllers:path`) whose id and
/// controllers `pick` accepts.
fn find_proc_cgroup(
    text: &str,
    pick: impl Fn(&str, &str) -> bool,
) -> Result<Option<String>, ParseError> {
    for (index, raw) in text.lines().enumerate() {
        if raw.is_empty() {
            continue;
        }
        let mut parts = raw.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ParseError::BadLine {
                input: "cgroup",
                line: index + 1,
                expected: "`id:controllers:path`",
                found: excerpt(raw),
            });
        };
        if pick(id, controllers) {
            return Ok(Some(path.to_owned()));
        }
    }
    Ok(None)
}

/// Where a cgroup hierarchy is mounted, from `/proc/self/mountinfo`: the v2 hierarchy, or
/// the v1 hierarchy of the memory controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// The directory of the hierarchy that is mounted (field 4; `/` unless a container
    /// bind-mounts a subtree).
    pub root: String,
    /// Where it is mounted (field 5), octal escapes decoded.
    pub mount_point: String,
}

impl Cgroup2Mount {
    /// The directory holding the files of the cgroup at `cgroup_path` (as in
    /// `/proc/self/cgroup`), relative to the file-system root, without a leading `/`.
    #[must_use]
    pub fn dir_of(&self, cgroup_path: &str) -> String {
        let inner = if self.root == "/" {
            cgroup_path
        } else {
            cgroup_path
                .strip_prefix(self.root.as_str())
                .unwrap_or(cgroup_path)
        };
        let joined = format!("{}/{}", self.mount_point, inner);
        let parts: Vec<&str> = joined.split('/').filter(|p| !p.is_empty()).collect();
        parts.join("/")
    }
}

/// Decodes mountinfo's octal escapes (`\040` is a space).
fn unescape_mount(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let octal = |d: u8| d.is_ascii_digit() && d < b'8';
        match bytes.get(i + 1..i + 4) {
            Some(&[a, b, c]) if byte == b'\\' && octal(a) && octal(b) && octal(c) => {
                let value =
                    (u32::from(a - b'0') << 6) | (u32::from(b - b'0') << 3) | u32::from(c - b'0');
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the cgroup2 mount in `/proc/self/mountinfo`; `None` when there is none.
///
/// # Errors
/// A line without the ` - ` separator or with too few fields.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Result<Option<Cgroup2Mount>, ParseError> {
    find_mount(mountinfo, |fstype, _| fstype == "cgroup2")
}

/// Finds the v1 hierarchy that holds the memory controller in `/proc/self/mountinfo`
/// (fstype `cgroup`, `memory` among its super options); `None` when there is none. The
/// result has the same shape as a v2 mount's ([`Cgroup2Mount`]).
///
/// # Errors
/// A line without the ` - ` separator or with too few fields.
pub fn parse_cgroup1_memory_mount(mountinfo: &str) -> Result<Option<Cgroup2Mount>, ParseError> {
    find_mount(mountinfo, |fstype, options| {
        fstype == "cgroup" && options.split(',').any(|opt| opt == "memory")
    })
}

/// The first mount whose fstype and super options `matches`.
fn find_mount(
    mountinfo: &str,
    matches: impl Fn(&str, &str) -> bool,
) -> Result<Option<Cgroup2Mount>, ParseError> {
    for (index, raw) in mountinfo.lines().enumerate() {
        if raw.is_empty() {
            continue;
        }
        let bad = || ParseError::BadLine {
            input: "mountinfo",
            line: index + 1,
            expected: "`id parent dev root mount-point options … - fstype source options`",
            found: excerpt(raw),
        };
        let (head, tail) = raw.split_once(" - ").ok_or_else(bad)?;
        let fields: Vec<&str> = head.split(' ').collect();
        if fields.len() < 6 {
            return Err(bad());
        }
        // ` - fstype source super-options`
        let mut tail_fields = tail.split(' ');
        let fstype = tail_fields.next().unwrap_or("");
        let options = tail_fields.nth(1).unwrap_or("");
        if matches(fstype, options) {
            return Ok(Some(Cgroup2Mount {
                root: unescape_mount(fields[3]),
                mount_point: unescape_mount(fields[4]),
            }));
        }
    }
    Ok(None)
}

/// Which cgroup interface a reading came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// v1's memory controller: `memory.limit_in_bytes`, `memory.usage_in_bytes`.
    V1,
    /// The unified hierarchy: `memory.max`, `memory.current`.
    #[default]
    V2,
}

/// The memory state of this process's cgroup (v2, or v1's memory controller), as the
/// probe read it.
///
/// `memory.current` charges the page cache to the cgroup, including the pages of mapped
/// model files, so a cgroup holding a 40 GiB mapped model shows 40 GiB "used" even though
/// the kernel can drop the clean pages. [`CgroupMemory::working_set_bytes`] subtracts
/// `inactive_file` (the convention of cAdvisor and the kubelet's eviction manager): those
/// pages are reclaimed before anything else. Active file pages, mapped weights among them,
/// stay counted: dropping them makes the next token re-read them from disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CgroupMemory {
    /// Which interface the numbers came from (v1 names in brackets below).
    #[serde(default)]
    pub version: CgroupVersion,
    /// The cgroup's path in the hierarchy (`/user.slice/…`).
    pub path: String,
    /// `memory.current` (`memory.usage_in_bytes`): everything charged, page cache
    /// included.
    pub current_bytes: u64,
    /// The tightest `memory.max` of this cgroup and its ancestors (the lower of
    /// `memory.limit_in_bytes` and `hierarchical_memory_limit`); `None` = no limit.
    pub max_bytes: Option<u64>,
    /// The tightest `memory.high` (throttling starts there); `None` = none (v1: no
    /// counterpart).
    pub high_bytes: Option<u64>,
    /// `memory.swap.current` (`memory.memsw.usage_in_bytes` − usage), where the kernel has
    /// swap accounting.
    pub swap_current_bytes: Option<u64>,
    /// `memory.stat`.
    pub stat: Option<CgroupStat>,
    /// `memory.events`.
    pub events: Option<CgroupEvents>,
    /// `memory.pressure`: PSI of this cgroup alone. Inside a container it is the one that
    /// matters; `/proc/pressure/memory` there shows the whole host.
    pub psi: Option<Psi>,
}

impl CgroupMemory {
    /// `memory.current − inactive_file`: what the cgroup needs to keep without thrashing.
    #[must_use]
    pub fn working_set_bytes(&self) -> u64 {
        let inactive = self.stat.and_then(|s| s.inactive_file_bytes).unwrap_or(0);
        self.current_bytes.saturating_sub(inactive)
    }

    /// The working set over the limit (`memory.high` if lower than `memory.max`, since the
    /// kernel throttles there); `None` without a limit.
    #[must_use]
    pub fn usage_ratio(&self) -> Option<f64> {
        let limit = match (self.max_bytes, self.high_bytes) {
            (Some(max), Some(high)) => max.min(high),
            (limit, None) | (None, limit) => limit?,
        };
        if limit == 0 {
            return Some(1.0);
        }
        Some((self.working_set_bytes() as f64 / limit as f64).min(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_max_is_none() {
        assert_eq!(parse_cgroup_limit("memory.max", "max\n").unwrap(), None);
        assert_eq!(
            parse_cgroup_limit("memory.max", "8589934592\n").unwrap(),
            Some(8 << 30)
        );
        assert!(parse_cgroup_limit("memory.max", "8G\n").is_err());
    }

    #[test]
    fn cgroup_dir_strips_a_bind_mounted_root() {
        let mount = Cgroup2Mount {
            root: "/kubepods/pod1".into(),
            mount_point: "/sys/fs/cgroup".into(),
        };
        assert_eq!(mount.dir_of("/kubepods/pod1/ctr"), "sys/fs/cgroup/ctr");
        let plain = Cgroup2Mount {
            root: "/".into(),
            mount_point: "/sys/fs/cgroup".into(),
        };
        assert_eq!(plain.dir_of("/"), "sys/fs/cgroup");
        assert_eq!(
            plain.dir_of("/user.slice/a.scope"),
            "sys/fs/cgroup/user.slice/a.scope"
        );
    }

    #[test]
    fn mount_points_decode_octal_escapes() {
        let line = "41 31 0:38 / /mnt/cg\\040two rw,relatime - cgroup2 cgroup2 rw\n";
        let mount = parse_cgroup2_mount(line).unwrap().unwrap();
        assert_eq!(mount.mount_point, "/mnt/cg two");
        assert!(parse_cgroup2_mount("garbage\n").is_err());
    }

    #[test]
    fn working_set_subtracts_inactive_file_only() {
        let cg = CgroupMemory {
            current_bytes: 10 << 30,
            max_bytes: Some(16 << 30),
            high_bytes: Some(12 << 30),
            stat: Some(CgroupStat {
                inactive_file_bytes: Some(4 << 30),
                active_file_bytes: Some(3 << 30),
                ..CgroupStat::default()
            }),
            ..CgroupMemory::default()
        };
        assert_eq!(cg.working_set_bytes(), 6 << 30);
        assert_eq!(cg.usage_ratio(), Some(0.5));
        let unlimited = CgroupMemory::default();
        assert_eq!(unlimited.usage_ratio(), None);
    }

    #[test]
    fn finding9_v1_limits_read_unlimited_as_none() {
        const GIB: u64 = 1 << 30;
        let total = 24 * GIB;
        let limit = |text| parse_cgroup1_limit("memory.limit_in_bytes", text, total).unwrap();
        assert_eq!(limit("9223372036854771712\n"), None);
        // arm64 with 64 KiB pages rounds "no limit" lower.
        assert_eq!(limit("9223372036854710272\n"), None);
        assert_eq!(limit("8589934592\n"), Some(8 * GIB));
        // More than the machine has binds nothing.
        assert_eq!(limit("34359738368\n"), None);
        assert!(parse_cgroup1_limit("memory.limit_in_bytes", "-1\n", total).is_err());
    }

    #[test]
    fn v1_memory_is_found_in_proc_self_cgroup_and_mountinfo() {
        let cgroup = "12:pids:/a\n9:cpu,memory:/user.slice/s.scope\n0::/\n";
        assert_eq!(
            parse_proc_cgroup1_memory(cgroup).unwrap().as_deref(),
            Some("/user.slice/s.scope")
        );
        assert_eq!(parse_proc_cgroup1_memory("0::/x\n").unwrap(), None);
        let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let v1 = parse_cgroup1_memory_mount(mountinfo).unwrap().unwrap();
        assert_eq!(v1.mount_point, "/sys/fs/cgroup/memory");
        assert_eq!(v1.dir_of("/docker/abc"), "sys/fs/cgroup/memory");
        let v2 = parse_cgroup2_mount(mountinfo).unwrap().unwrap();
        assert_eq!(v2.mount_point, "/sys/fs/cgroup/unified");
    }

    #[test]
    fn v1_stat_reads_subtree_totals_and_the_hierarchical_limit() {
        let text = "cache 10\nrss 20\ninactive_file 3\nhierarchical_memory_limit 4096\n\
                    total_cache 100\ntotal_rss 200\ntotal_inactive_file 30\n\
                    total_active_file 40\ntotal_mapped_file 5\ntotal_shmem 6\n";
        let (stat, limit) = parse_cgroup1_stat(text, 1 << 20).unwrap();
        assert_eq!(limit, Some(4096));
        assert_eq!(
            (stat.file_bytes, stat.anon_bytes, stat.inactive_file_bytes),
            (Some(100), Some(200), Some(30))
        );
        assert_eq!(stat.file_mapped_bytes, Some(5));
        let unlimited = "hierarchical_memory_limit 9223372036854771712\n";
        assert_eq!(parse_cgroup1_stat(unlimited, 1 << 20).unwrap().1, None);
    }
}
