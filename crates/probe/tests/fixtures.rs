//! Parsers and the Linux backend on recorded `/proc` and `/sys` trees (see
//! tests/fixtures/README.md for where each set comes from).

use std::fs;
use std::path::PathBuf;

use probe::parse::{
    HUGE_PAGE_ORDER, parse_buddyinfo, parse_cgroup_events, parse_cgroup_stat, parse_meminfo,
    parse_proc_status, parse_psi, parse_smaps_rollup,
};
use probe::{CacheKind, CoreKind, MemoryProbe, PressureLevel, PressureSource};

const KIB: u64 = 1024;

fn fixture(set: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(set)
}

fn read(set: &str, file: &str) -> String {
    let path = fixture(set).join(file);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const HOST: &str = "host-6.18-hybrid";
const EL8: &str = "el8-4.18-v1-nopsi";
const UBUNTU: &str = "ubuntu-6.8-v2-pressure";
const GPU_HOST: &str = "gpu-host-6.18-v2";

#[test]
fn meminfo_of_each_kernel_parses() {
    let host = parse_meminfo(&read(HOST, "proc/meminfo")).unwrap();
    assert_eq!(host.total_bytes, 24_683_656 * KIB);
    assert_eq!(host.available_bytes, Some(24_322_336 * KIB));
    assert_eq!(host.swap_total_bytes, Some(0));
    assert_eq!(host.swap_used_bytes(), 0);

    let el8 = parse_meminfo(&read(EL8, "proc/meminfo")).unwrap();
    assert_eq!(el8.total_bytes, 65_690_548 * KIB);
    assert_eq!(el8.inactive_file_bytes, Some(14_018_696 * KIB));
    assert_eq!(el8.swap_used_bytes(), (8_388_604 - 8_378_364) * KIB);

    let ubuntu = parse_meminfo(&read(UBUNTU, "proc/meminfo")).unwrap();
    assert_eq!(ubuntu.available_bytes, Some(1_423_576 * KIB));
    assert_eq!(ubuntu.mapped_bytes, Some(1_381_732 * KIB));
    assert_eq!(ubuntu.swap_used_bytes(), (8_388_604 - 2_197_504) * KIB);
}

#[test]
fn status_and_smaps_rollup_split_anon_and_file() {
    let status = parse_proc_status(&read(UBUNTU, "proc/self/status")).unwrap();
    assert_eq!(status.rss_bytes, 11_427_016 * KIB);
    assert_eq!(status.rss_anon_bytes, Some(10_068_864 * KIB));
    assert_eq!(status.rss_file_bytes, Some(1_353_640 * KIB));
    assert_eq!(status.rss_shmem_bytes, Some(4_512 * KIB));
    assert_eq!(status.rss_peak_bytes, Some(11_952_148 * KIB));
    assert_eq!(status.swap_bytes, Some(1_258_292 * KIB));
    // The three parts add up to the whole, as the kernel guarantees.
    let parts = status.rss_anon_bytes.unwrap()
        + status.rss_file_bytes.unwrap()
        + status.rss_shmem_bytes.unwrap();
    assert_eq!(parts, status.rss_bytes);

    let rollup = parse_smaps_rollup(&read(UBUNTU, "proc/self/smaps_rollup")).unwrap();
    assert_eq!(rollup.rss_bytes, status.rss_bytes);
    assert_eq!(rollup.pss_anon_bytes, Some(10_068_864 * KIB));
    assert_eq!(rollup.pss_file_bytes, Some(1_348_554 * KIB));

    // 4.18 has smaps_rollup but no Pss_Anon/Pss_File yet.
    let old = parse_smaps_rollup(&read(EL8, "proc/self/smaps_rollup")).unwrap();
    assert_eq!(old.pss_bytes, Some(8_931_215 * KIB));
    assert_eq!(old.pss_anon_bytes, None);
    assert_eq!(old.anonymous_bytes, Some(884_632 * KIB));

    // This machine's own files.
    let host = parse_proc_status(&read(HOST, "proc/self/status")).unwrap();
    assert_eq!(host.rss_bytes, 1_700 * KIB);
    assert!(parse_smaps_rollup(&read(HOST, "proc/self/smaps_rollup")).is_ok());
}

#[test]
fn psi_idle_and_under_pressure() {
    let idle = parse_psi(&read(HOST, "proc/pressure/memory")).unwrap();
    assert_eq!(idle.some.avg10_pct, 0.0);
    assert_eq!(idle.full.unwrap().total_us, 0);

    let busy = parse_psi(&read(UBUNTU, "proc/pressure/memory")).unwrap();
    assert_eq!(busy.some.avg10_pct, 23.51);
    assert_eq!(busy.some.avg300_pct, 7.40);
    assert_eq!(busy.some.total_us, 48_291_812);
    assert_eq!(busy.full.unwrap().avg60_pct, 6.13);
}

#[test]
fn cgroup_files_parse() {
    let dir = "sys/fs/cgroup/system.slice/llmem.service";
    let events = parse_cgroup_events(&read(UBUNTU, &format!("{dir}/memory.events"))).unwrap();
    assert_eq!((events.max, events.oom, events.oom_kill), (1843, 2, 2));
    let stat = parse_cgroup_stat(&read(UBUNTU, &format!("{dir}/memory.stat"))).unwrap();
    assert_eq!(stat.file_mapped_bytes, Some(1_386_127_360));
    assert_eq!(stat.inactive_file_bytes, Some(315_932_672));
    assert_eq!(stat.anon_bytes, Some(10_844_696_576));
}

#[test]
fn buddyinfo_measures_huge_page_fragmentation() {
    let el8 = parse_buddyinfo(&read(EL8, "proc/buddyinfo")).unwrap();
    assert_eq!(el8.zones.len(), 3);
    assert_eq!(el8.zones[2].zone, "Normal");
    assert_eq!(el8.zones[2].free_blocks.len(), 11);
    let calm = el8.unusable_free_index(HUGE_PAGE_ORDER).unwrap();
    let busy = parse_buddyinfo(&read(UBUNTU, "proc/buddyinfo"))
        .unwrap()
        .unusable_free_index(HUGE_PAGE_ORDER)
        .unwrap();
    assert!(calm < 0.3, "el8 has plenty of 4 MiB blocks: {calm}");
    assert!(busy > 0.9, "the pressured machine has almost none: {busy}");
}

#[test]
fn finding9_host_hybrid_cgroup_reads_v1() {
    // cgroup v2 is mounted but holds no memory controller; memory is under v1, with v1's
    // "no limit" value.
    let probe = probe::LinuxProbe::with_root(fixture(HOST));
    let system = probe.system().unwrap();
    let cgroup = system
        .signals
        .cgroup
        .clone()
        .expect("the v1 memory controller");
    assert_eq!(cgroup.version, probe::parse::CgroupVersion::V1);
    assert_eq!(cgroup.path, "/sandbox/6f0528b527030aefb34f912eb9a13b23");
    assert_eq!(cgroup.max_bytes, None);
    assert_eq!(cgroup.current_bytes, 1_672_699_904);
    // The memsw reading raced the usage one and came out lower: no swap, not a wrap.
    assert_eq!(cgroup.swap_current_bytes, Some(0));
    assert_eq!(cgroup.working_set_bytes(), 1_672_699_904 - 1_035_415_552);
    assert_eq!(system.memory_limit_bytes(), system.mem_total_bytes);
    assert_eq!(system.mem_total_bytes, 24_683_656 * KIB);
    assert_eq!(system.mem_available_bytes, 24_322_336 * KIB);
    assert!(system.signals.psi.is_some());
    assert!(system.fragmentation.is_some());
    let pressure = probe.pressure().unwrap();
    assert_eq!(pressure.level, PressureLevel::Normal);

    let platform = probe.platform().unwrap();
    assert_eq!(platform.cache_line_bytes, 64);
    assert_eq!(
        (platform.logical_cores, platform.physical_cores),
        (2, Some(2))
    );
    let l3 = platform.data_cache(3, CoreKind::Any).unwrap();
    assert_eq!((l3.size_bytes, l3.shared_by_cpus), (32 << 20, Some(2)));
    assert_eq!(platform.caches.len(), 4);
    assert_eq!(platform.caches[1].kind, CacheKind::Instruction);
}

#[test]
fn finding9_v1_host_reads_the_slice_limit_and_no_psi() {
    let probe = probe::LinuxProbe::with_root(fixture(EL8));
    let system = probe.system().unwrap();
    assert_eq!(system.signals.psi, None);
    // The scope has no limit of its own; its slice's 16 GiB binds, and is what a budget
    // taken from the machine starts from.
    let cgroup = system
        .signals
        .cgroup
        .clone()
        .expect("the v1 memory controller");
    assert_eq!(cgroup.max_bytes, Some(16 << 30));
    assert_eq!(cgroup.high_bytes, None);
    assert_eq!(cgroup.swap_current_bytes, Some(100 << 20));
    assert_eq!(cgroup.working_set_bytes(), (6 << 30) - (2 << 30));
    assert_eq!(cgroup.usage_ratio(), Some(0.25));
    assert_eq!(system.memory_limit_bytes(), 16 << 30);
    let pressure = probe.pressure().unwrap();
    assert_eq!(pressure.source, PressureSource::MemAvailable);
    assert_eq!(pressure.level, PressureLevel::Normal);

    // Before Linux 5.4 there is no core_cpus_list: thread_siblings_list stands in.
    let platform = probe.platform().unwrap();
    assert_eq!(
        (platform.logical_cores, platform.physical_cores),
        (8, Some(4))
    );
    assert_eq!(
        platform.data_cache(2, CoreKind::Any).unwrap().size_bytes,
        1 << 20
    );

    let process = probe.process().unwrap();
    assert_eq!(process.rss_file_bytes, Some(8_059_480 * KIB));
    assert_eq!(process.pss_bytes, Some(8_931_215 * KIB));
}

#[test]
fn v2_host_under_pressure() {
    let probe = probe::LinuxProbe::with_root(fixture(UBUNTU));
    let system = probe.system().unwrap();
    let cgroup = system.signals.cgroup.clone().unwrap();
    assert_eq!(cgroup.path, "/system.slice/llmem.service");
    // The service sets no limit; its parent slice does, and it binds.
    assert_eq!(cgroup.max_bytes, Some(12 << 30));
    assert_eq!(cgroup.high_bytes, None);
    assert_eq!(cgroup.current_bytes, 12_811_173_888);
    assert_eq!(cgroup.swap_current_bytes, Some(1_288_491_008));
    assert_eq!(cgroup.events.unwrap().oom_kill, 2);
    // Page cache of the mapped model is charged; only the inactive part is dropped.
    assert_eq!(cgroup.working_set_bytes(), 12_811_173_888 - 315_932_672);
    assert_eq!(cgroup.psi.unwrap().some.avg10_pct, 31.06);

    let pressure = probe.pressure().unwrap();
    assert_eq!(pressure.level, PressureLevel::Critical);
    assert_eq!(pressure.source, PressureSource::Cgroup);
    let expected = (12_811_173_888_u64 - 315_932_672) as f64 / (12u64 << 30) as f64;
    assert!((pressure.value - expected).abs() < 1e-12);
    assert!(pressure.signals.psi.is_some(), "raw signals are kept");

    assert_eq!(system.swap_used_bytes, (8_388_604 - 2_197_504) * KIB);
    assert!(system.swap_ratio() > 0.1);
    let names: Vec<&str> = system.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["anon", "page_cache", "shmem", "slab", "kernel", "free"]
    );
    let process = probe.process().unwrap();
    assert_eq!(process.swap_bytes, Some(1_258_292 * KIB));
    assert_eq!(probe.platform().unwrap().physical_cores, Some(8));
}

#[test]
fn recorded_v2_container_takes_its_limit_from_the_parent() {
    // Recorded on an H100 host: the process sits in a leaf cgroup with `memory.max` =
    // max; the 128 GiB limit is its parent's.
    let probe = probe::LinuxProbe::with_root(fixture(GPU_HOST));
    let system = probe.system().unwrap();
    let cgroup = system.signals.cgroup.clone().unwrap();
    assert_eq!(cgroup.path, "/sandbox/76da7ce29b8fc290f178a842b1d58cb6");
    assert_eq!(cgroup.max_bytes, Some(128 << 30));
    assert_eq!(cgroup.current_bytes, 6_541_312);
    assert_eq!(cgroup.working_set_bytes(), 6_541_312 - 98_304);
    assert_eq!(cgroup.events.unwrap().max, 0);
    assert_eq!(cgroup.psi.unwrap().some.avg10_pct, 0.0);
    assert_eq!(system.mem_total_bytes, 131_981_020 * KIB);
    assert_eq!(probe.pressure().unwrap().level, PressureLevel::Normal);
    let platform = probe.platform().unwrap();
    assert_eq!(
        (platform.logical_cores, platform.physical_cores),
        (16, Some(16))
    );
    assert_eq!(
        platform.data_cache(1, CoreKind::Any).unwrap().size_bytes,
        48 << 10
    );
    assert_eq!(
        platform
            .data_cache(3, CoreKind::Any)
            .unwrap()
            .shared_by_cpus,
        Some(16)
    );
}

#[test]
fn missing_required_files_are_errors_with_the_path() {
    let probe = probe::LinuxProbe::with_root(fixture("no-such-set"));
    let err = probe.system().unwrap_err();
    assert!(matches!(err, probe::ProbeError::Read { .. }));
    assert!(err.to_string().contains("proc/meminfo"), "{err}");
}
