//! The Linux backend against the live machine: its numbers are the kernel's.
#![cfg(target_os = "linux")]

use std::fs;

use probe::{LinuxProbe, MemoryProbe};

const MIB: u64 = 1 << 20;

/// `Key:   N kB` from a /proc file, read independently of the crate's parser.
fn proc_kib(file: &str, key: &str) -> u64 {
    let text = fs::read_to_string(file).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} not in {file}"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn touching_n_mib_moves_rss_by_n() {
    const N: u64 = 256 * MIB;
    let probe = LinuxProbe::with_root("/");
    let before = probe.process().unwrap().rss_bytes;
    let mut buffer = vec![0_u8; usize::try_from(N).unwrap()];
    // One write per 4 KiB page makes every page resident.
    for page in buffer.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&mut buffer);
    let after = probe.process().unwrap().rss_bytes;
    let grown = after.saturating_sub(before);
    let tolerance = N / 20;
    assert!(
        grown.abs_diff(N) <= tolerance,
        "RSS grew by {} MiB for {} MiB touched",
        grown / MIB,
        N / MIB
    );
    let anon = probe.process().unwrap().rss_anon_bytes.unwrap();
    assert!(
        anon >= N - tolerance,
        "the buffer is anonymous memory: {anon}"
    );
    drop(buffer);
}

#[test]
fn totals_equal_proc_meminfo() {
    let probe = LinuxProbe::with_root("/");
    // MemAvailable moves with every allocation on the machine: bracket the probe's read
    // between two direct reads.
    let first = proc_kib("/proc/meminfo", "MemAvailable");
    let system = probe.system().unwrap();
    let second = proc_kib("/proc/meminfo", "MemAvailable");
    let slack = 32 * MIB;
    let (low, high) = (first.min(second), first.max(second));
    assert!(
        (low.saturating_sub(slack)..=high + slack).contains(&system.mem_available_bytes),
        "probe {} vs /proc/meminfo {first}..{second}",
        system.mem_available_bytes
    );
    assert_eq!(
        system.mem_total_bytes,
        proc_kib("/proc/meminfo", "MemTotal")
    );
    assert_eq!(
        probe.platform().unwrap().mem_total_bytes,
        system.mem_total_bytes
    );
    let swap = proc_kib("/proc/meminfo", "SwapTotal");
    assert_eq!(system.swap_total_bytes, swap);
}

#[test]
fn process_rss_equals_proc_status() {
    let probe = LinuxProbe::with_root("/");
    let first = proc_kib("/proc/self/status", "VmRSS");
    let process = probe.process().unwrap();
    let second = proc_kib("/proc/self/status", "VmRSS");
    // Other tests in this binary allocate concurrently; a few MiB of slack covers them.
    let slack = 8 * MIB;
    assert!(
        (first.min(second).saturating_sub(slack)..=first.max(second) + slack)
            .contains(&process.rss_bytes)
    );
    assert!(process.rss_peak_bytes.unwrap() >= process.rss_bytes.saturating_sub(slack));
}

#[test]
fn platform_facts_match_the_os() {
    let platform = LinuxProbe::with_root("/").platform().unwrap();
    assert_eq!(platform.page_size_bytes, libc_page_size());
    let online = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let expected = probe::parse::parse_cpu_list(&online).unwrap().len();
    assert_eq!(platform.logical_cores as usize, expected);
    assert!(platform.physical_cores.unwrap_or(1) <= platform.logical_cores);
    let allowed = std::thread::available_parallelism().unwrap().get();
    assert_eq!(platform.usable_cpus as usize, allowed.min(expected));
    assert!((1..=platform.usable_cpus).contains(&platform.default_threads()));
    assert!([32, 64, 128, 256].contains(&platform.cache_line_bytes));
}

/// The page size as the C library reports it.
fn libc_page_size() -> u64 {
    unsafe extern "C" {
        fn getpagesize() -> i32;
    }
    // SAFETY: getpagesize has no preconditions.
    u64::try_from(unsafe { getpagesize() }).unwrap()
}
